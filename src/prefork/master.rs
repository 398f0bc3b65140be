//! The master's supervision loop.
//!
//! One thread, one loop: reap, check the children against their deadlines
//! and limits, start or stop children until the fleet has the right shape,
//! then sleep in `poll` on the signal pipe and the children's ready pipes
//! (at most 100 ms, so deadlines are checked even when nothing happens).
//!
//! Children live in numbered slots (`prefork: worker 3`). A slot whose child
//! dies is refilled at once the first time and with growing delays while its
//! children keep dying young (see `backoff`). Recycling (HUP, max requests,
//! max lifetime, RSS) marks a child as retiring; one retiring child at a
//! time gets a replacement in the same slot, and only once the replacement
//! is ready is the old child told to stop, so capacity never drops.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::backoff::{Backoff, YOUNG};
use super::board::SharedBoard;
use super::signals::{Blocked, SignalPipe};
use super::{App, ChildStatus, PreforkError, Report, Settings, child, io_error, title};
use crate::fork::Fork;

const TICK: Duration = Duration::from_millis(100);

struct Child {
    index: usize,
    pid: Pid,
    board: SharedBoard,
    /// Read end of the ready pipe until the child reports (or dies).
    ready_pipe: Option<OwnedFd>,
    born: Instant,
    born_at: std::time::SystemTime,
    ready_at: Option<Instant>,
    /// Set once the master told it to stop (TERM) or killed it.
    stop: Option<Stop>,
    /// Why it should be replaced, if it should.
    retire: Option<&'static str>,
    /// The retiring child this one replaces, until it is ready.
    replaces: Option<Pid>,
    /// Killed for a fault (boot timeout, stuck task): its death counts.
    faulted: bool,
    max_requests: Option<u64>,
    max_lifetime: Option<Duration>,
}

#[derive(Clone, Copy)]
struct Stop {
    since: Instant,
    /// Told to stop at once (QUIT) or killed: it did not close its own
    /// connections.
    abrupt: bool,
    killed: bool,
}

impl Child {
    /// Serving or booting as a regular member of its slot.
    fn active(&self) -> bool {
        self.stop.is_none() && self.replaces.is_none()
    }
}

struct Slot {
    backoff: Backoff,
    next_start: Instant,
}

enum Phase {
    Running,
    Stopping { fast: bool },
}

struct Master<A: App> {
    settings: Settings,
    app: Arc<A>,
    signals: Option<SignalPipe>,
    children: Vec<Child>,
    slots: Vec<Slot>,
    target: usize,
    phase: Phase,
    /// Children that died abruptly, whose backends must be ended, and when.
    leftovers: Vec<(Pid, Instant)>,
    use_database: bool,
    outcome: Result<(), PreforkError>,
    report: Report,
    rng: u64,
}

pub(crate) fn run<A: App>(settings: Settings, app: Arc<A>) -> Result<Report, PreforkError> {
    let pidfile = settings
        .pidfile
        .as_ref()
        .map(|path| Pidfile::create(path.clone()))
        .transpose()?;
    crate::set_role("master");
    let use_database = crate::registry::databases().is_some();
    if use_database {
        check_slots(&settings)?;
    }
    let signals = SignalPipe::install().map_err(io_error("installing signal handlers"))?;
    title::set(&format!("{}: master", settings.name));
    let mut master = Master {
        target: settings.procs,
        settings,
        app,
        signals: Some(signals),
        children: Vec::new(),
        slots: Vec::new(),
        phase: Phase::Running,
        leftovers: Vec::new(),
        use_database,
        outcome: Ok(()),
        report: Report::default(),
        rng: seed(),
    };
    log::info!(
        "master {} starting {} children x {} threads",
        std::process::id(),
        master.target,
        master.settings.threads
    );
    let result = master.supervise();
    if let Some(signals) = master.signals.take() {
        signals.uninstall();
    }
    // A last tick with no children, so the app can clear its accounting.
    master.app.master_tick(&[]);
    crate::close_all();
    drop(pidfile);
    result.map(|()| master.report)
}

impl<A: App> Master<A> {
    fn supervise(&mut self) -> Result<(), PreforkError> {
        loop {
            self.reap();
            if matches!(self.phase, Phase::Stopping { .. }) && self.children.is_empty() {
                self.end_leftover_backends();
                log::info!("master {}: all children gone; exiting", std::process::id());
                return std::mem::replace(&mut self.outcome, Ok(()));
            }
            let now = Instant::now();
            self.check_deadlines(now);
            if let Phase::Running = self.phase {
                self.check_recycling(now);
                if let Err(e) = self.shape(now) {
                    // The fork guard refused (the app started a thread in
                    // the master) or the system did. Returning now would
                    // leave the children to PDEATHSIG, unreaped and with
                    // their backends unchecked: stop them like a TERM
                    // would, and report the error once they are gone.
                    log::error!("{e}; stopping the fleet");
                    if self.outcome.is_ok() {
                        self.outcome = Err(e);
                    }
                    self.stop_fleet(false);
                }
            }
            if self.leftovers_due(now) {
                self.end_leftover_backends();
            }
            self.tick();
            self.wait(now);
        }
    }

    /// Reaps every child that has exited. Runs after each wake-up, not only
    /// on SIGCHLD: signals coalesce, and a missed one must not leave a
    /// zombie.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    return;
                }
                Ok(status) => status,
            };
            let (pid, clean) = match status {
                WaitStatus::Exited(pid, code) => (pid, code == 0),
                WaitStatus::Signaled(pid, _, _) => (pid, false),
                _ => continue, // stopped/continued: not an exit
            };
            let Some(i) = self.children.iter().position(|c| c.pid == pid) else {
                log::debug!("reaped unknown child {pid}");
                continue;
            };
            let child = self.children.swap_remove(i);
            self.on_exit(child, clean, describe(&status));
        }
    }

    fn on_exit(&mut self, child: Child, clean: bool, how: String) {
        let lifetime = child.born.elapsed();
        let requested = child.stop.is_some() && !child.faulted;
        // Only a clean exit after a graceful stop means the child closed its
        // connections; after anything else a backend may still be busy (a
        // killed child's socket closes, but the server notices only when
        // the running statement ends).
        if !(clean && child.stop.is_some_and(|s| !s.abrupt)) {
            self.leftovers.push((child.pid, Instant::now()));
        }
        if requested {
            log::info!(
                "worker {} (pid {}) stopped: {how} after {lifetime:.1?}",
                child.index,
                child.pid
            );
            return;
        }
        log::warn!(
            "worker {} (pid {}) died: {how} after {lifetime:.1?}",
            child.index,
            child.pid
        );
        self.report.restarts += 1;
        let Some(slot) = self.slots.get_mut(child.index - 1) else {
            return;
        };
        let did_work = child.board.tasks.load(std::sync::atomic::Ordering::Relaxed) > 0;
        let delay = slot.backoff.on_death(
            lifetime,
            child.ready_at.is_some() && !child.faulted,
            did_work,
        );
        slot.next_start = Instant::now() + delay;
        let deaths = slot.backoff.young_deaths;
        if !delay.is_zero() {
            log::warn!(
                "worker {} respawning too fast: {deaths} young deaths in a row; next start in {delay:.1?}",
                child.index
            );
        }
        if let Some(limit) = self.settings.crash_limit {
            if deaths >= limit && self.outcome.is_ok() {
                log::error!(
                    "worker {} reached the crash limit ({limit}); stopping",
                    child.index
                );
                self.outcome = Err(PreforkError::CrashLimit {
                    index: child.index,
                    deaths,
                });
                self.stop_fleet(true);
            }
        }
    }

    /// Boot timeouts, stuck tasks, and stopping children that overstay.
    fn check_deadlines(&mut self, now: Instant) {
        let settings = &self.settings;
        for child in &mut self.children {
            match child.stop {
                Some(stop) if !stop.killed => {
                    if now.duration_since(stop.since) >= settings.graceful_timeout {
                        log::warn!(
                            "worker {} (pid {}) still running after the graceful timeout; killing",
                            child.index,
                            child.pid
                        );
                        kill_child(child, Signal::SIGKILL, now);
                    }
                }
                Some(_) => {}
                None if child.ready_at.is_none() => {
                    if now.duration_since(child.born) >= settings.boot_timeout {
                        log::warn!(
                            "worker {} (pid {}) not ready after {:?} (boot timeout); killing",
                            child.index,
                            child.pid,
                            settings.boot_timeout
                        );
                        child.faulted = true;
                        kill_child(child, Signal::SIGKILL, now);
                    }
                }
                None => {
                    let Some(timeout) = settings.timeout else {
                        continue;
                    };
                    let Some(busy) = child.board.longest_busy(settings.threads) else {
                        continue;
                    };
                    if Duration::from_nanos(busy.nanos) >= timeout {
                        log::warn!(
                            "worker {} (pid {}) thread {} stuck in task {:?} for {:.1?} (timeout {timeout:?}); killing",
                            child.index,
                            child.pid,
                            busy.worker,
                            busy.label,
                            Duration::from_nanos(busy.nanos)
                        );
                        child.faulted = true;
                        kill_child(child, Signal::SIGKILL, now);
                    }
                }
            }
        }
    }

    /// Marks children for replacement by task count, age or memory.
    fn check_recycling(&mut self, now: Instant) {
        let rss_limit = self.settings.reload_on_rss.map(|mb| mb * 1024 * 1024);
        for child in &mut self.children {
            if child.stop.is_some() || child.ready_at.is_none() {
                continue;
            }
            // A child that has lived long enough, or finished a task, clears
            // its slot's record of young deaths.
            let tasks = child.board.tasks.load(std::sync::atomic::Ordering::Relaxed);
            if now.duration_since(child.born) >= YOUNG || tasks > 0 {
                if let Some(slot) = self.slots.get_mut(child.index - 1) {
                    slot.backoff.reset();
                }
            }
            if child.replaces.is_some() || child.retire.is_some() {
                continue;
            }
            child.retire = if child.max_requests.is_some_and(|max| tasks >= max) {
                Some("max requests")
            } else if child
                .max_lifetime
                .is_some_and(|max| now.duration_since(child.born) >= max)
            {
                Some("max lifetime")
            } else if rss_limit.is_some_and(|limit| rss(child.pid).is_some_and(|r| r >= limit)) {
                Some("memory over reload-on-rss")
            } else {
                None
            };
            if let Some(reason) = child.retire {
                log::info!(
                    "worker {} (pid {}) will be recycled: {reason} ({tasks} tasks)",
                    child.index,
                    child.pid
                );
            }
        }
    }

    /// Starts and stops children until every slot up to the target has one
    /// active child and at most one retiring child is being replaced.
    fn shape(&mut self, now: Instant) -> Result<(), PreforkError> {
        while self.slots.len() < self.target {
            self.slots.push(Slot {
                backoff: Backoff::default(),
                next_start: now,
            });
        }
        // Slots above the target (after TTOU): stop their children.
        for child in &mut self.children {
            if child.index > self.target && child.stop.is_none() {
                log::info!(
                    "worker {} (pid {}): fleet shrinks; stopping",
                    child.index,
                    child.pid
                );
                kill_child(child, Signal::SIGTERM, now);
            }
        }
        // Empty slots: start a child once the slot's backoff allows.
        for index in 1..=self.target {
            let filled = self.children.iter().any(|c| c.index == index && c.active());
            if !filled && self.slots[index - 1].next_start <= now {
                self.spawn(index, None)?;
            }
        }
        // One replacement at a time for retiring children.
        let replacing = self.children.iter().any(|c| c.replaces.is_some());
        if !replacing {
            let oldest = self
                .children
                .iter()
                .filter(|c| c.active() && c.retire.is_some() && c.ready_at.is_some())
                .min_by_key(|c| c.born)
                .map(|c| (c.index, c.pid));
            if let Some((index, old)) = oldest {
                self.spawn(index, Some(old))?;
            }
        }
        Ok(())
    }

    fn spawn(&mut self, index: usize, replaces: Option<Pid>) -> Result<(), PreforkError> {
        let board = SharedBoard::new().map_err(io_error("mapping a scoreboard"))?;
        let (ready_read, ready_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| PreforkError::Io {
                context: "creating a ready pipe".into(),
                source: e.into(),
            })?;
        let master = Pid::this();
        let forking = Instant::now();
        let blocked = Blocked::new().map_err(io_error("blocking signals"))?;
        let forked = crate::fork::fork();
        match forked {
            Ok(Fork::Child) => {
                // Still blocked: the child's own dispositions go in first.
                std::mem::forget(blocked);
                drop(ready_read);
                // Let go of everything that is the master's: the other
                // children's boards and pipes, and the signal pipe.
                drop(std::mem::take(&mut self.children));
                if let Some(signals) = self.signals.take() {
                    signals.reset_in_child();
                }
                child::run(
                    self.app.clone(),
                    &self.settings,
                    index,
                    board,
                    ready_write,
                    master,
                )
            }
            Ok(Fork::Parent(pid)) => {
                drop(blocked);
                log::debug!(
                    "worker {index}: fork took {:?}; pid {pid} exists at {}",
                    forking.elapsed(),
                    super::board::monotonic_nanos()
                );
                drop(ready_write);
                let (max_requests, max_lifetime) = self.limits();
                log::info!(
                    "worker {index} started: pid {pid}{}",
                    replaces.map_or(String::new(), |old| format!(" (replacing pid {old})"))
                );
                self.report.started += 1;
                self.children.push(Child {
                    index,
                    pid,
                    board,
                    ready_pipe: Some(ready_read),
                    born: Instant::now(),
                    born_at: std::time::SystemTime::now(),
                    ready_at: None,
                    stop: None,
                    retire: None,
                    replaces,
                    faulted: false,
                    max_requests,
                    max_lifetime,
                });
                Ok(())
            }
            Err(crate::ForkError::Os(e)) => {
                // Out of processes or memory: retry this slot later.
                log::error!("fork failed: {e}; retrying worker {index} in 1 s");
                if let Some(slot) = self.slots.get_mut(index - 1) {
                    slot.next_start = Instant::now() + Duration::from_secs(1);
                }
                Ok(())
            }
            Err(e) => Err(PreforkError::Fork(e)),
        }
    }

    /// This child's recycling thresholds, jittered.
    fn limits(&mut self) -> (Option<u64>, Option<Duration>) {
        let requests = self.settings.max_requests.map(|max| {
            let jitter = self.settings.max_requests_jitter;
            max + if jitter > 0 {
                self.random() % (jitter + 1)
            } else {
                0
            }
        });
        let lifetime = self.settings.max_lifetime.map(|max| {
            let jitter = self.settings.max_lifetime_jitter.as_millis() as u64;
            max + Duration::from_millis(if jitter > 0 {
                self.random() % (jitter + 1)
            } else {
                0
            })
        });
        (requests, lifetime)
    }

    fn random(&mut self) -> u64 {
        // xorshift64: jitter only needs to differ between children.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn tick(&self) {
        let children: Vec<ChildStatus> = self
            .children
            .iter()
            .map(|c| ChildStatus {
                index: c.index,
                pid: c.pid.as_raw() as u32,
                started: c.born_at,
                ready: c.ready_at.is_some(),
                tasks: c.board.tasks.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        self.app.master_tick(&children);
    }

    /// Whether to end dead children's backends now. Not while a
    /// replacement boots (up to 100 ms): the master's connect and query
    /// would compete with it for the CPU and delay the respawn.
    fn leftovers_due(&self, now: Instant) -> bool {
        let Some(&(_, oldest)) = self.leftovers.first() else {
            return false;
        };
        let booting = self
            .children
            .iter()
            .any(|c| c.ready_at.is_none() && c.stop.is_none());
        !booting || now.duration_since(oldest) >= Duration::from_millis(100)
    }

    /// Ends the backends of children that died abruptly, so no lock holder
    /// lingers "idle in transaction", and closes the master's connection
    /// again right away (the next fork needs none open).
    fn end_leftover_backends(&mut self) {
        if self.leftovers.is_empty() {
            return;
        }
        let pids: Vec<Pid> = self.leftovers.drain(..).map(|(pid, _)| pid).collect();
        if !self.use_database {
            let raw: Vec<u32> = pids.iter().map(|p| p.as_raw() as u32).collect();
            self.app.children_lost(&raw);
            return;
        }
        let started = Instant::now();
        let names: Vec<String> = pids
            .iter()
            .map(|pid| format!("prefork:worker:{pid}"))
            .collect();
        let ended = crate::with_client(|c| {
            let rows = c.query_typed(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = ANY($1) AND pid <> pg_backend_pid()",
                &[(&names, postgres::types::Type::TEXT_ARRAY)],
            )?;
            Ok(rows.len())
        });
        let raw: Vec<u32> = pids.iter().map(|p| p.as_raw() as u32).collect();
        self.app.children_lost(&raw);
        crate::close_all();
        log::debug!("leftover backend check took {:?}", started.elapsed());
        match ended {
            Ok(0) => {}
            Ok(n) => log::warn!("ended {n} backend(s) left by dead children {pids:?}"),
            Err(e) => log::warn!("could not end the backends of dead children {pids:?}: {e}"),
        }
    }

    /// Sleeps until a signal, a ready child, or the next tick.
    fn wait(&mut self, now: Instant) {
        let mut timeout = TICK;
        if let Phase::Running = self.phase {
            for (i, slot) in self.slots.iter().enumerate().take(self.target) {
                let empty = !self.children.iter().any(|c| c.index == i + 1 && c.active());
                if empty {
                    timeout = timeout.min(slot.next_start.saturating_duration_since(now));
                }
            }
        }
        let Some(signal_fd) = self.signals.as_ref().map(|s| s.fd().as_raw_fd()) else {
            return;
        };
        let mut fds = vec![libc::pollfd {
            fd: signal_fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        let booting: Vec<usize> = (0..self.children.len())
            .filter(|&i| self.children[i].ready_pipe.is_some())
            .collect();
        for &i in &booting {
            let fd = self.children[i]
                .ready_pipe
                .as_ref()
                .map_or(-1, AsRawFd::as_raw_fd);
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if n <= 0 {
            return; // timeout, or EINTR from a signal: the pipe has it
        }
        for (slot, &i) in fds[1..].iter().zip(&booting) {
            if slot.revents != 0 {
                self.on_ready_pipe(i);
            }
        }
        if fds[0].revents != 0 {
            let received = self
                .signals
                .as_ref()
                .map(SignalPipe::drain)
                .unwrap_or_default();
            for signal in received {
                self.on_signal(signal);
            }
        }
    }

    fn on_ready_pipe(&mut self, i: usize) {
        let child = &mut self.children[i];
        let Some(pipe) = child.ready_pipe.take() else {
            return;
        };
        let mut byte = [0u8; 1];
        let got = fs::File::from(pipe).read(&mut byte).unwrap_or(0);
        if got == 0 {
            return; // closed without a word: the child died; reap handles it
        }
        child.ready_at = Some(Instant::now());
        log::info!(
            "worker {} (pid {}) ready in {:.1?}",
            child.index,
            child.pid,
            child.born.elapsed()
        );
        if let Some(old) = child.replaces.take() {
            let now = Instant::now();
            if let Some(old) = self.children.iter_mut().find(|c| c.pid == old) {
                if old.stop.is_none() {
                    log::info!(
                        "worker {} (pid {}) replaced ({}); stopping",
                        old.index,
                        old.pid,
                        old.retire.unwrap_or("reload")
                    );
                    kill_child(old, Signal::SIGTERM, now);
                }
            }
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::SIGCHLD => {} // the loop reaps on every wake-up
            Signal::SIGTERM | Signal::SIGINT => match self.phase {
                Phase::Running => {
                    log::info!("{signal}: graceful stop");
                    self.stop_fleet(false);
                }
                Phase::Stopping { .. } => log::info!("{signal}: already stopping"),
            },
            Signal::SIGQUIT => match self.phase {
                Phase::Stopping { fast: true } => {}
                _ => {
                    log::info!("SIGQUIT: fast stop");
                    self.stop_fleet(true);
                }
            },
            Signal::SIGHUP if matches!(self.phase, Phase::Running) => {
                log::info!("SIGHUP: rolling reload of {} children", self.children.len());
                for child in self.children.iter_mut().filter(|c| c.active()) {
                    child.retire.get_or_insert("reload");
                }
            }
            Signal::SIGTTIN if matches!(self.phase, Phase::Running) => {
                self.target += 1;
                log::info!("SIGTTIN: {} children", self.target);
            }
            Signal::SIGTTOU if matches!(self.phase, Phase::Running) => {
                if self.target > 1 {
                    self.target -= 1;
                }
                log::info!("SIGTTOU: {} children", self.target);
            }
            Signal::SIGUSR1 => self.log_status(),
            _ => {}
        }
    }

    fn stop_fleet(&mut self, fast: bool) {
        self.phase = Phase::Stopping { fast };
        let now = Instant::now();
        let signal = if fast {
            Signal::SIGQUIT
        } else {
            Signal::SIGTERM
        };
        for child in &mut self.children {
            if fast || child.stop.is_none() {
                kill_child(child, signal, now);
            }
            if fast {
                // A fast stop waits for nobody: SIGKILL at the next check.
                if let Some(stop) = child.stop.as_mut() {
                    stop.since = now - self.settings.graceful_timeout;
                }
            }
        }
    }

    fn log_status(&self) {
        log::info!(
            "master {}: {} children (target {})",
            std::process::id(),
            self.children.len(),
            self.target
        );
        for c in &self.children {
            let state = match (c.stop, c.ready_at, c.retire) {
                (Some(_), _, _) => "stopping",
                (None, None, _) => "booting",
                (None, Some(_), Some(_)) => "retiring",
                (None, Some(_), None) => "ready",
            };
            log::info!(
                "worker {} pid {} {state} age {:.1?} tasks {} open connections {}",
                c.index,
                c.pid,
                c.born.elapsed(),
                c.board.tasks.load(std::sync::atomic::Ordering::Relaxed),
                c.board
                    .open_connections
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
        }
    }
}

/// Signals a child and records that it was told to stop. A child that has
/// already exited but is not yet reaped is still a zombie with this pid, so
/// the pid cannot have been reused: kill() cannot hit a stranger.
fn kill_child(child: &mut Child, signal: Signal, now: Instant) {
    let _ = kill(child.pid, signal);
    let killed = signal == Signal::SIGKILL;
    let abrupt = signal != Signal::SIGTERM;
    match &mut child.stop {
        Some(stop) => {
            stop.killed |= killed;
            stop.abrupt |= abrupt;
        }
        None => {
            child.stop = Some(Stop {
                since: now,
                abrupt,
                killed,
            })
        }
    }
}

fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

/// Resident memory of a process in bytes, from /proc/<pid>/statm.
fn rss(pid: Pid) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page)
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Warns (or with `strict`, refuses) when the fleet's connections cannot
/// fit in the server's free slots. Closes the master's connection after.
fn check_slots(settings: &Settings) -> Result<(), PreforkError> {
    let free = crate::with_client(|c| {
        let row = c.query_typed_one(
            "SELECT current_setting('max_connections')::int8 \
                  - current_setting('superuser_reserved_connections')::int8 \
                  - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') \
                  + 1",
            &[],
        )?;
        Ok(row.get::<_, i64>(0))
    });
    crate::close_all();
    let free = free.map_err(PreforkError::Database)?;
    let needed = (settings.procs * settings.threads + 1) as i64;
    if needed > free {
        if settings.strict {
            return Err(PreforkError::NotEnoughSlots { needed, free });
        }
        log::warn!("{}", PreforkError::NotEnoughSlots { needed, free });
    }
    Ok(())
}

/// The master's pidfile: refused if it names a live process, removed when
/// the master returns (never by a child).
struct Pidfile {
    path: PathBuf,
    owner: u32,
}

impl Pidfile {
    fn create(path: PathBuf) -> Result<Pidfile, PreforkError> {
        if let Ok(text) = fs::read_to_string(&path) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                let alive = pid > 0 && kill(Pid::from_raw(pid), None).is_ok();
                if alive && pid as u32 != std::process::id() {
                    return Err(PreforkError::AlreadyRunning { pidfile: path, pid });
                }
            }
        }
        fs::write(&path, format!("{}\n", std::process::id()))
            .map_err(io_error(format!("writing {}", path.display())))?;
        Ok(Pidfile {
            path,
            owner: std::process::id(),
        })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if self.owner == std::process::id() {
            let _ = fs::remove_file(&self.path);
        }
    }
}
