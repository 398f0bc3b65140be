//! The master's decisions: which child to start, stop, kill or replace, and
//! when. No system call is made here: forking, signalling and reading
//! memory go through [`Effects`], and the time comes in as [`Now`], so the
//! rules are tested without forking, on a clock of the tests' own.
//!
//! Children live in numbered slots (`prefork: child 3`). A slot whose child
//! dies is refilled at once the first time and with growing delays while
//! its children keep dying young (see `backoff`). Recycling (HUP, max
//! requests, max lifetime, memory) marks a child as retiring; one retiring
//! child at a time gets a replacement in the same slot, and only once the
//! replacement is ready is the old child told to stop, so capacity never
//! drops; the next replacement starts once the old child has exited, so at
//! most one child beyond the target is alive.

use std::io;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::app::{ChildStatus, LostChild, Report};
use super::backoff::{Backoff, YOUNG};
use super::board::SharedBoard;
use super::error::PreforkError;
use super::exit::ExitReason;
use super::handover::{Handovers, Launcher};
use super::memory::PssReadings;
use super::metrics::MAX_COUNTERS;
use super::notify::Health;
use super::program::kill_grace;
use super::settings::Settings;
use super::status::{ChildView, FleetView, MasterView};
use crate::Pid;

/// How often the children's PSS is read for `--max-memory`.
const MEMORY_READ_EVERY: Duration = Duration::from_secs(1);

/// The master's turn of its loop never sleeps longer than this, so
/// deadlines are checked even when nothing happens.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// The time, on both clocks the master reads: `at` for its own deadlines,
/// `mono` (CLOCK_MONOTONIC nanoseconds) for the scoreboards the children
/// write.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    pub(super) at: Instant,
    pub(super) mono: u64,
}

impl Now {
    pub(super) fn read() -> Now {
        Now {
            at: Instant::now(),
            mono: super::board::monotonic_nanos(),
        }
    }
}

/// What the fleet asks of the system (handovers included).
pub(super) trait Effects: Launcher {
    /// Forks a child for slot `index`, its scoreboard saying whether the
    /// fleet is `quiet` from its first instruction.
    fn spawn(&mut self, index: usize, quiet: bool) -> Result<SharedBoardPid, SpawnError>;
    /// Sends `signal` to the child `pid`.
    fn signal(&mut self, pid: Pid, signal: Signal);
    /// The child's resident memory in bytes.
    fn resident_bytes(&mut self, pid: Pid) -> Option<u64>;
    /// The child's proportional memory (PSS) in bytes.
    fn proportional_bytes(&mut self, pid: Pid) -> Option<u64>;
    /// Sends `signal` to a process group a child's worker runs (a
    /// program).
    fn signal_group(&mut self, group: Pid, signal: Signal);
    /// OOM kills the kernel counted in the master's cgroup (and those
    /// below it), if it can tell.
    fn oom_kills(&mut self) -> Option<u64>;
}

/// A new child: its pid and its scoreboard.
pub(super) type SharedBoardPid = (Pid, SharedBoard);

/// Why a child could not be started.
pub(super) enum SpawnError {
    /// The system is out of processes or memory: try the slot again later.
    Retry(io::Error),
    /// The fork guard refused (threads or connections in the master).
    Fatal(PreforkError),
}

struct Child {
    index: usize,
    pid: Pid,
    board: SharedBoard,
    born: Instant,
    born_at: SystemTime,
    ready_at: Option<Instant>,
    /// Set once the master told it to stop (TERM) or killed it.
    stop: Option<Stop>,
    /// Why it should be replaced, if it should: a reload, or one of the
    /// recycling reasons (the reason its exit is counted under).
    retire: Option<ExitReason>,
    /// Why the master itself ends it, once it decided to.
    why: Option<ExitReason>,
    /// The retiring child this one replaces, until it is ready.
    replaces: Option<Pid>,
    /// Killed for a fault (boot timeout, stuck job): its death counts.
    faulted: bool,
    max_requests: Option<u64>,
    max_lifetime: Option<Duration>,
    /// Its readings of PSS over `--max-memory` in a row.
    pss: PssReadings,
}

#[derive(Clone, Copy)]
struct Stop {
    since: Instant,
    /// When its workers' programs were sent TERM for overstaying the
    /// graceful timeout.
    programs_told: Option<Instant>,
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

    fn state(&self) -> &'static str {
        match (self.stop, self.ready_at, self.retire) {
            (Some(_), _, _) => "stopping",
            (None, None, _) => "booting",
            (None, Some(_), Some(_)) => "retiring",
            (None, Some(_), None) => "ready",
        }
    }

    /// Signals the child and records that it was told to stop. A child that
    /// has already exited but is not yet reaped is still a zombie with this
    /// pid, so the pid cannot have been reused: the signal cannot hit a
    /// stranger.
    fn tell(&mut self, fx: &mut impl Effects, signal: Signal, now: Instant) {
        fx.signal(self.pid, signal);
        let killed = signal == Signal::SIGKILL;
        let abrupt = signal != Signal::SIGTERM;
        match &mut self.stop {
            Some(stop) => {
                stop.killed |= killed;
                stop.abrupt |= abrupt;
            }
            None => {
                self.stop = Some(Stop {
                    since: now,
                    programs_told: None,
                    abrupt,
                    killed,
                })
            }
        }
    }
}

struct Slot {
    backoff: Backoff,
    next_start: Instant,
    /// Its children that died unasked and were replaced.
    restarts: u64,
    /// How its last child ended.
    last_exit: Option<ExitReason>,
}

enum Phase {
    Running,
    Stopping { fast: bool },
}

/// The fleet as the master sees it, and every rule it follows.
pub(super) struct Fleet {
    settings: Settings,
    children: Vec<Child>,
    slots: Vec<Slot>,
    target: usize,
    phase: Phase,
    /// Quiet (TSTP): children take no new work until CONT.
    quiet: bool,
    /// The cgroup's OOM kill count when last read (outer `None`: not yet
    /// read; inner: unreadable).
    oom_seen: Option<Option<u64>>,
    /// Children that died abruptly, whose backends must be ended and work
    /// handed back (see `handover`).
    handovers: Handovers,
    outcome: Result<(), PreforkError>,
    pub(super) report: Report,
    /// What the children that exited had added to the app's metrics (see
    /// `metrics`), so the fleet's sums never go back.
    retired: Vec<u64>,
    /// When the children's PSS was last read (for `--max-memory`).
    memory_read_at: Option<Instant>,
}

impl Fleet {
    pub(super) fn new(settings: Settings) -> Fleet {
        Fleet {
            target: settings.procs,
            settings,
            children: Vec::new(),
            slots: Vec::new(),
            phase: Phase::Running,
            quiet: false,
            oom_seen: None,
            handovers: Handovers::default(),
            outcome: Ok(()),
            report: Report::default(),
            retired: vec![0; MAX_COUNTERS],
            memory_read_at: None,
        }
    }

    /// Whether the fleet was told to stop and every child is gone.
    /// Stopping, every child gone, and the last handover over (see
    /// `handover`).
    pub(super) fn finished(&self) -> bool {
        self.stopped() && self.handovers.idle()
    }

    fn stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. }) && self.children.is_empty()
    }

    /// How the run ended: `Ok`, or the error that stopped it.
    pub(super) fn take_outcome(&mut self) -> Result<(), PreforkError> {
        std::mem::replace(&mut self.outcome, Ok(()))
    }

    /// One turn of the rules: deadlines, then (while running) recycling
    /// and the fleet's shape.
    pub(super) fn turn(&mut self, now: Now, fx: &mut impl Effects) {
        if self.oom_seen.is_none() {
            self.oom_seen = Some(fx.oom_kills());
        }
        self.check_deadlines(now, fx);
        if let Phase::Running = self.phase {
            self.check_recycling(now, fx);
            if let Err(e) = self.shape(now.at, fx) {
                // The fork guard refused (the app started a thread in the
                // master). Returning now would leave the children to
                // PDEATHSIG, unreaped and with their backends unchecked:
                // stop them like a TERM would, and report the error once
                // they are gone.
                log::error!("{e}; stopping the fleet");
                if self.outcome.is_ok() {
                    self.outcome = Err(e);
                }
                self.stop(false, now.at, fx);
            }
        }
        // After the shape: a replacement forked this turn goes first.
        let booting = self
            .children
            .iter()
            .any(|c| c.ready_at.is_none() && c.stop.is_none());
        self.handovers.turn(now.at, booting, self.stopped(), fx);
    }

    /// A child was reaped. Returns `false` for a pid that is not one of
    /// the fleet's children (a stranger the master reaped).
    pub(super) fn on_exit(
        &mut self,
        status: WaitStatus,
        now: Instant,
        fx: &mut impl Effects,
    ) -> bool {
        let (pid, clean) = match status {
            WaitStatus::Exited(pid, code) => (pid, code == 0),
            WaitStatus::Signaled(pid, _, _) => (pid, false),
            _ => return true, // stopped or continued: not an exit
        };
        if self.handovers.on_exit(pid, clean, now) {
            return true;
        }
        let Some(i) = self.children.iter().position(|c| c.pid == pid) else {
            return false;
        };
        let child = self.children.swap_remove(i);
        // Programs its workers ran, which outlive it (PDEATHSIG ended their
        // leaders, not what those started): ended now, before the child's
        // jobs are handed back (see `program`).
        for group in child.board.programs(self.settings.threads) {
            log::warn!(
                child = child.index, pid = child.pid.as_raw();
                "child {} (pid {}) left program group {group} running; killing it",
                child.index,
                child.pid
            );
            fx.signal_group(group, Signal::SIGKILL);
        }
        let how = describe(&status);
        let lifetime = now.saturating_duration_since(child.born);
        let requested = child.stop.is_some() && !child.faulted;
        let reason = match (&child.why, &child.retire) {
            (Some(why), _) => *why,
            (None, Some(retire)) if requested => *retire,
            _ => {
                let killed = matches!(status, WaitStatus::Signaled(_, Signal::SIGKILL, _));
                ExitReason::of_status(&status, killed && self.oom_killed(fx))
            }
        };
        *self.report.exits.entry(reason.label()).or_default() += 1;
        child.board.add_counters_to(&mut self.retired);
        if let Some(slot) = self.slots.get_mut(child.index - 1) {
            slot.last_exit = Some(reason);
            slot.restarts += u64::from(!requested);
        }
        // Only a clean exit after a graceful stop means the child closed its
        // connections; after anything else a backend may still be busy (a
        // killed child's socket closes, but the server notices only when
        // the running statement ends).
        if !(clean && child.stop.is_some_and(|s| !s.abrupt)) {
            let lost = LostChild {
                pid: child.pid,
                interrupted: requested,
                running: child.board.held(self.settings.threads),
            };
            self.handovers.lost(lost, now);
        }
        if requested {
            log::info!(
                child = child.index, pid = child.pid.as_raw(), reason = reason.label();
                "child {} (pid {}) stopped: {how} after {lifetime:.1?}; reason: {} ({reason})",
                child.index,
                child.pid,
                reason.label()
            );
            return true;
        }
        log::warn!(
            child = child.index, pid = child.pid.as_raw(), reason = reason.label();
            "child {} (pid {}) died: {how} after {lifetime:.1?}; reason: {} ({reason})",
            child.index,
            child.pid,
            reason.label()
        );
        self.report.restarts += 1;
        let Some(slot) = self.slots.get_mut(child.index - 1) else {
            return true;
        };
        let did_work = child.board.jobs() > 0;
        let delay = slot.backoff.on_death(
            lifetime,
            child.ready_at.is_some() && !child.faulted,
            did_work,
        );
        slot.next_start = now + delay;
        let deaths = slot.backoff.young_deaths;
        if !delay.is_zero() {
            log::warn!(
                "child {} respawning too fast: {deaths} young deaths in a row; next start in {delay:.1?}",
                child.index
            );
        }
        if let Some(limit) = self.settings.crash_limit {
            if deaths >= limit && self.outcome.is_ok() {
                log::error!(
                    "child {} reached the crash limit ({limit}); stopping",
                    child.index
                );
                self.outcome = Err(PreforkError::CrashLimit {
                    index: child.index,
                    deaths,
                });
                self.stop(true, now, fx);
            }
        }
        true
    }

    /// The child `pid` reported ready. If it replaces a retiring child,
    /// that one is told to stop now.
    pub(super) fn on_ready(&mut self, pid: Pid, now: Instant, fx: &mut impl Effects) {
        let Some(child) = self.children.iter_mut().find(|c| c.pid == pid) else {
            return;
        };
        child.ready_at = Some(now);
        log::info!(
            child = child.index, pid = child.pid.as_raw();
            "child {} (pid {}) ready in {:.1?}",
            child.index,
            child.pid,
            now.saturating_duration_since(child.born)
        );
        let Some(old) = child.replaces.take() else {
            return;
        };
        if let Some(old) = self.children.iter_mut().find(|c| c.pid == old) {
            if old.stop.is_none() {
                log::info!(
                    "child {} (pid {}) replaced ({}); stopping",
                    old.index,
                    old.pid,
                    old.retire.as_ref().map_or("reload", retire_text)
                );
                old.tell(fx, Signal::SIGTERM, now);
            }
        }
    }

    /// What a signal to the master means for the fleet.
    pub(super) fn on_signal(&mut self, signal: Signal, now: Instant, fx: &mut impl Effects) {
        match signal {
            Signal::SIGCHLD => {} // the loop reaps on every wake-up
            Signal::SIGTERM | Signal::SIGINT => match self.phase {
                Phase::Running => {
                    log::info!("{signal}: graceful stop");
                    self.stop(false, now, fx);
                }
                Phase::Stopping { .. } => log::info!("{signal}: already stopping"),
            },
            Signal::SIGQUIT => match self.phase {
                Phase::Stopping { fast: true } => {}
                _ => {
                    log::info!("SIGQUIT: fast stop");
                    self.stop(true, now, fx);
                }
            },
            Signal::SIGHUP if matches!(self.phase, Phase::Running) => {
                log::info!("SIGHUP: rolling reload of {} children", self.children.len());
                for child in self.children.iter_mut().filter(|c| c.active()) {
                    child.retire.get_or_insert(ExitReason::Reload);
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
            Signal::SIGUSR1 => self.log_status(now),
            Signal::SIGTSTP if matches!(self.phase, Phase::Running) && !self.quiet => {
                log::info!("SIGTSTP: quiet: children finish what they hold and take no new jobs");
                self.set_quiet(true);
            }
            Signal::SIGCONT if self.quiet => {
                log::info!("SIGCONT: taking jobs again");
                self.set_quiet(false);
            }
            _ => {}
        }
    }

    /// Whether the kernel's OOM killer struck since the master last looked
    /// (the cgroup's count went up). Read at the first turn, then at each
    /// SIGKILL death nobody in the fleet asked for.
    fn oom_killed(&mut self, fx: &mut impl Effects) -> bool {
        let before = self.oom_seen.flatten();
        let now = fx.oom_kills();
        self.oom_seen = Some(now);
        matches!((before, now), (Some(a), Some(b)) if b > a)
    }

    /// Quiet (TSTP) or not: every child's scoreboard says it, and children
    /// started meanwhile are born knowing it.
    fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
        for child in &self.children {
            child
                .board
                .quiet
                .store(quiet, std::sync::atomic::Ordering::Release);
        }
    }

    /// Tells every child to stop: TERM (finish the jobs at hand) or, when
    /// `fast`, QUIT and a SIGKILL at the next turn.
    pub(super) fn stop(&mut self, fast: bool, now: Instant, fx: &mut impl Effects) {
        self.phase = Phase::Stopping { fast };
        let signal = if fast {
            Signal::SIGQUIT
        } else {
            Signal::SIGTERM
        };
        for child in &mut self.children {
            if fast || child.stop.is_none() {
                child.tell(fx, signal, now);
            }
            if fast {
                // A fast stop waits for nobody: SIGKILL at the next check.
                if let Some(stop) = child.stop.as_mut() {
                    stop.since = now
                        .checked_sub(self.settings.graceful_timeout)
                        .unwrap_or(stop.since);
                }
            }
        }
    }

    /// Boot timeouts, stuck jobs, and stopping children that overstay.
    fn check_deadlines(&mut self, now: Now, fx: &mut impl Effects) {
        let settings = &self.settings;
        for child in &mut self.children {
            match &mut child.stop {
                Some(stop) if !stop.killed => {
                    if now.at.saturating_duration_since(stop.since) < settings.graceful_timeout {
                        continue;
                    }
                    // Programs still running get TERM and a grace of their
                    // own before the child, and with it their groups, are
                    // killed (see `program`).
                    let programs = child.board.programs(settings.threads);
                    let grace = kill_grace(settings.graceful_timeout);
                    match stop.programs_told {
                        None if !programs.is_empty() => {
                            log::warn!(
                                child = child.index, pid = child.pid.as_raw();
                                "child {} (pid {}) still running after the graceful timeout; \
                                 sending its programs TERM",
                                child.index,
                                child.pid
                            );
                            for group in programs {
                                fx.signal_group(group, Signal::SIGTERM);
                            }
                            stop.programs_told = Some(now.at);
                            continue;
                        }
                        Some(told) if now.at.saturating_duration_since(told) < grace => continue,
                        _ => {}
                    }
                    log::warn!(
                        child = child.index, pid = child.pid.as_raw();
                        "child {} (pid {}) still running after the graceful timeout; killing",
                        child.index,
                        child.pid
                    );
                    child.tell(fx, Signal::SIGKILL, now.at);
                }
                Some(_) => {}
                None if child.ready_at.is_none() => {
                    if now.at.saturating_duration_since(child.born) >= settings.boot_timeout {
                        log::warn!(
                            child = child.index, pid = child.pid.as_raw();
                            "child {} (pid {}) not ready after {:?} (boot timeout); killing",
                            child.index,
                            child.pid,
                            settings.boot_timeout
                        );
                        child.faulted = true;
                        child.why = Some(ExitReason::BootTimeout);
                        child.tell(fx, Signal::SIGKILL, now.at);
                    }
                }
                None => {
                    let Some(busy) =
                        child
                            .board
                            .stuck(settings.threads, now.mono, settings.timeout)
                    else {
                        continue;
                    };
                    log::warn!(
                        child = child.index, pid = child.pid.as_raw(), job = busy.label.as_str();
                        "child {} (pid {}) worker {} stuck in {:?} for {:.1?} (timeout {:?}); killing",
                        child.index,
                        child.pid,
                        busy.worker,
                        busy.label,
                        busy.elapsed(),
                        busy.limit
                    );
                    child.faulted = true;
                    child.why = Some(ExitReason::Stuck);
                    child.tell(fx, Signal::SIGKILL, now.at);
                }
            }
        }
    }

    /// Marks children for replacement by job count, age or memory.
    fn check_recycling(&mut self, now: Now, fx: &mut impl Effects) {
        let limits = self.settings.memory;
        // PSS walks every mapping of the child: read once a second, not
        // every turn.
        let read_pss = limits.pss.is_some()
            && self
                .memory_read_at
                .is_none_or(|t| now.at.saturating_duration_since(t) >= MEMORY_READ_EVERY);
        if read_pss {
            self.memory_read_at = Some(now.at);
        }
        for child in &mut self.children {
            if child.stop.is_some() || child.ready_at.is_none() {
                continue;
            }
            // A child that has lived long enough, or finished a job, clears
            // its slot's record of young deaths.
            let jobs = child.board.jobs();
            let age = now.at.saturating_duration_since(child.born);
            if age >= YOUNG || jobs > 0 {
                if let Some(slot) = self.slots.get_mut(child.index - 1) {
                    slot.backoff.reset();
                }
            }
            if child.replaces.is_some() || child.retire.is_some() {
                continue;
            }
            let pss_over = read_pss && child.pss.read(&limits, fx.proportional_bytes(child.pid));
            child.retire = if child.max_requests.is_some_and(|max| jobs >= max) {
                Some(ExitReason::RecycledRequests)
            } else if child.max_lifetime.is_some_and(|max| age >= max) {
                Some(ExitReason::RecycledLifetime)
            } else if pss_over
                || (limits.rss.is_some() && limits.rss_over(fx.resident_bytes(child.pid)))
            {
                Some(ExitReason::RecycledMemory)
            } else {
                None
            };
            if let Some(reason) = &child.retire {
                log::info!(
                    child = child.index, pid = child.pid.as_raw();
                    "child {} (pid {}) will be recycled: {} ({jobs} jobs)",
                    child.index,
                    child.pid,
                    retire_text(reason)
                );
            }
        }
    }

    /// Starts and stops children until every slot up to the target has one
    /// active child and at most one retiring child is being replaced.
    fn shape(&mut self, now: Instant, fx: &mut impl Effects) -> Result<(), PreforkError> {
        while self.slots.len() < self.target {
            self.slots.push(Slot {
                backoff: Backoff::default(),
                next_start: now,
                restarts: 0,
                last_exit: None,
            });
        }
        // Slots above the target (after TTOU): stop their children.
        for child in &mut self.children {
            if child.index > self.target && child.stop.is_none() {
                log::info!(
                    child = child.index, pid = child.pid.as_raw();
                    "child {} (pid {}): fleet shrinks; stopping",
                    child.index,
                    child.pid
                );
                child.why = Some(ExitReason::ScaledDown);
                child.tell(fx, Signal::SIGTERM, now);
            }
        }
        // Empty slots: start a child once the slot's backoff allows.
        for index in 1..=self.target {
            let filled = self.children.iter().any(|c| c.index == index && c.active());
            if !filled && self.slots[index - 1].next_start <= now {
                self.spawn(index, None, now, fx)?;
            }
        }
        // One replacement at a time for retiring children, oldest first,
        // and the next only once the child it replaced has exited: a
        // retired child finishing its jobs still holds its connections, so
        // starting the next replacement then would put two extra children
        // on the server. This is what keeps a rolling replacement within one
        // child's connections of the fleet's bound.
        let replacing = self
            .children
            .iter()
            .any(|c| c.replaces.is_some() || (c.retire.is_some() && c.stop.is_some()));
        if !replacing {
            let oldest = self
                .children
                .iter()
                .filter(|c| c.active() && c.retire.is_some() && c.ready_at.is_some())
                .min_by_key(|c| c.born)
                .map(|c| (c.index, c.pid));
            if let Some((index, old)) = oldest {
                self.spawn(index, Some(old), now, fx)?;
            }
        }
        Ok(())
    }

    fn spawn(
        &mut self,
        index: usize,
        replaces: Option<Pid>,
        now: Instant,
        fx: &mut impl Effects,
    ) -> Result<(), PreforkError> {
        let (pid, board) = match fx.spawn(index, self.quiet) {
            Ok(spawned) => spawned,
            Err(SpawnError::Retry(e)) => {
                log::error!("fork failed: {e}; retrying child {index} in 1 s");
                if let Some(slot) = self.slots.get_mut(index - 1) {
                    slot.next_start = now + Duration::from_secs(1);
                }
                return Ok(());
            }
            Err(SpawnError::Fatal(e)) => return Err(e),
        };
        log::info!(
            child = index, pid = pid.as_raw();
            "child {index} started: pid {pid}{}",
            replaces.map_or(String::new(), |old| format!(" (replacing pid {old})"))
        );
        self.report.started += 1;
        let settings = &self.settings;
        let max_requests = settings
            .max_requests
            .map(|max| max + jitter(settings.max_requests_jitter));
        let max_lifetime = settings.max_lifetime.map(|max| {
            let jitter_ms = jitter(settings.max_lifetime_jitter.as_millis() as u64);
            max + Duration::from_millis(jitter_ms)
        });
        self.children.push(Child {
            index,
            pid,
            board,
            born: now,
            born_at: SystemTime::now(),
            ready_at: None,
            stop: None,
            retire: None,
            why: None,
            replaces,
            faulted: false,
            max_requests,
            max_lifetime,
            pss: PssReadings::default(),
        });
        Ok(())
    }

    /// How long the loop may sleep: until the next tick, or sooner if an
    /// empty slot's backoff ends first.
    pub(super) fn sleep_for(&self, now: Instant) -> Duration {
        let mut timeout = TICK;
        if let Phase::Running = self.phase {
            for (i, slot) in self.slots.iter().enumerate().take(self.target) {
                let empty = !self.children.iter().any(|c| c.index == i + 1 && c.active());
                if empty {
                    timeout = timeout.min(slot.next_start.saturating_duration_since(now));
                }
            }
        }
        timeout
    }

    /// What systemd hears of the fleet (see `notify`): children ready and
    /// staying (not stopping, not retiring), whether a reload is under way
    /// (a child still marked for it), whether the fleet stops.
    pub(super) fn health(&self) -> Health {
        Health {
            quiet: self.quiet,
            ready: self
                .children
                .iter()
                .filter(|c| c.stop.is_none() && c.ready_at.is_some() && c.retire.is_none())
                .count(),
            target: self.target,
            reloading: self
                .children
                .iter()
                .any(|c| c.retire == Some(ExitReason::Reload)),
            stopping: matches!(self.phase, Phase::Stopping { .. }),
            jobs: self.children.iter().map(|c| c.board.jobs()).sum(),
        }
    }

    /// The children's status, for [`App::master_tick`](super::App::master_tick).
    pub(super) fn statuses(&self) -> Vec<ChildStatus> {
        self.children
            .iter()
            .map(|c| ChildStatus {
                index: c.index,
                pid: c.pid,
                started: c.born_at,
                ready: c.ready_at.is_some(),
                jobs: c.board.jobs(),
                programs: c.board.running(self.settings.threads),
                open_connections: c
                    .board
                    .open_connections
                    .load(std::sync::atomic::Ordering::Relaxed),
                program_connections: c
                    .board
                    .program_connections
                    .load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect()
    }

    /// A scrape wants the app's gauges, at `now`: the first ready child
    /// that is not stopping is asked to publish them, and the freshest any
    /// child published are returned.
    pub(super) fn gauges(&self, now: Now) -> Option<Vec<f64>> {
        let asked = self
            .children
            .iter()
            .filter(|c| c.ready_at.is_some() && c.stop.is_none())
            .min_by_key(|c| c.index);
        if let Some(child) = asked {
            child.board.ask(now.mono);
        }
        self.children
            .iter()
            .filter_map(|c| c.board.published())
            .max_by_key(|(at, _)| *at)
            .map(|(_, values)| values)
    }

    /// The app's metric slots summed over the fleet: the live children's
    /// boards and what the exited ones had counted.
    pub(super) fn counters(&self) -> Vec<u64> {
        let mut sums = self.retired.clone();
        for child in &self.children {
            child.board.add_counters_to(&mut sums);
        }
        sums
    }

    /// A snapshot for the status endpoint, with the master's part given
    /// and the parts that need system calls or the app (memory, the app's
    /// metrics) left for the caller to fill in.
    pub(super) fn view(&self, now: Now, master: MasterView) -> FleetView {
        let children = self
            .children
            .iter()
            .map(|c| {
                let (busy, current) = c.board.busy(self.settings.threads, now.mono);
                let slot = self.slots.get(c.index - 1);
                ChildView {
                    index: c.index,
                    pid: c.pid,
                    state: c.state(),
                    age: now.at.saturating_duration_since(c.born),
                    jobs: c.board.jobs(),
                    busy,
                    current,
                    open_connections: c
                        .board
                        .open_connections
                        .load(std::sync::atomic::Ordering::Relaxed),
                    program_connections: c
                        .board
                        .program_connections
                        .load(std::sync::atomic::Ordering::Relaxed),
                    rss: None,
                    pss: None,
                    restarts: slot.map_or(0, |s| s.restarts),
                    last_exit: slot.and_then(|s| s.last_exit),
                }
            })
            .collect();
        let stuck = self
            .children
            .iter()
            .find(|c| c.why == Some(ExitReason::Stuck))
            .map(|c| format!("child {} (pid {})", c.index, c.pid));
        FleetView {
            master,
            children,
            target: self.target,
            min_ready: self.settings.min_ready.unwrap_or(self.target),
            stopping: matches!(self.phase, Phase::Stopping { .. }),
            quiet: self.quiet,
            stuck,
            exits: self.report.exits.clone(),
            restarts: self.report.restarts,
            master_connections: 0,
            app_metrics: String::new(),
            gauges: Vec::new(),
        }
    }

    fn log_status(&self, now: Instant) {
        log::info!(
            "master {}: {} children (target {})",
            Pid::this(),
            self.children.len(),
            self.target
        );
        for c in &self.children {
            log::info!(
                "child {} pid {} {} age {:.1?} jobs {} open connections {}",
                c.index,
                c.pid,
                c.state(),
                now.saturating_duration_since(c.born),
                c.board.jobs(),
                c.board
                    .open_connections
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
        }
    }
}

/// A random extra of 0 to `max`, so that children do not all recycle at
/// once.
fn jitter(max: u64) -> u64 {
    if max == 0 { 0 } else { fastrand::u64(0..=max) }
}

/// Why a child is retired, as the master's log says it.
fn retire_text(reason: &ExitReason) -> &'static str {
    match reason {
        ExitReason::RecycledRequests => "max requests",
        ExitReason::RecycledLifetime => "max lifetime",
        ExitReason::RecycledMemory => "memory over its limit",
        _ => "reload",
    }
}

pub(super) fn describe(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    //! The rules on a clock of the tests' own: no fork, no sleep. The fake
    //! system logs what the fleet asked of it.

    use std::sync::atomic::Ordering;

    use super::*;
    use crate::prefork::Prefork;

    #[derive(Default)]
    struct Fake {
        next_pid: i32,
        log: Vec<String>,
        /// Resident bytes reported for every child.
        rss: Option<u64>,
        /// Proportional bytes reported for every child.
        pss: Option<u64>,
        /// Fail the next spawns with a retryable error.
        refuse: usize,
        /// The cgroup's OOM kill count.
        oom: Option<u64>,
        /// Handovers started (see `handover`): pid, and the children.
        handed: Vec<(Pid, String)>,
    }

    impl Launcher for Fake {
        fn hand_over(&mut self, lost: &[LostChild]) -> io::Result<Pid> {
            let pid = Pid::from_raw(900 + self.handed.len() as i32);
            let lost: Vec<String> = lost
                .iter()
                .map(|l| format!("{}{}", l.pid, if l.interrupted { "i" } else { "" }))
                .collect();
            self.handed.push((pid, lost.join(",")));
            Ok(pid)
        }
        fn kill_handover(&mut self, pid: Pid) {
            Effects::signal(self, pid, Signal::SIGKILL);
        }
    }

    impl Fake {
        /// The handovers started since the last call, each reported
        /// exited cleanly to `fleet`: the children each handed over.
        fn handovers_done(&mut self, fleet: &mut Fleet, now: Instant) -> Vec<String> {
            let started: Vec<(Pid, String)> = self.handed.drain(..).collect();
            for (pid, _) in &started {
                assert!(fleet.on_exit(WaitStatus::Exited(*pid, 0), now, self));
            }
            started.into_iter().map(|(_, lost)| lost).collect()
        }
    }

    impl Effects for Fake {
        fn oom_kills(&mut self) -> Option<u64> {
            self.oom
        }

        fn spawn(&mut self, index: usize, _quiet: bool) -> Result<SharedBoardPid, SpawnError> {
            if self.refuse > 0 {
                self.refuse -= 1;
                self.log.push(format!("refused {index}"));
                return Err(SpawnError::Retry(io::Error::from_raw_os_error(
                    libc::EAGAIN,
                )));
            }
            self.next_pid += 1;
            let pid = Pid::from_raw(100 + self.next_pid);
            self.log.push(format!("spawn {index} -> {pid}"));
            Ok((pid, SharedBoard::new().unwrap()))
        }
        fn signal(&mut self, pid: Pid, signal: Signal) {
            self.log.push(format!("{signal} {pid}"));
        }
        fn resident_bytes(&mut self, _: Pid) -> Option<u64> {
            self.rss
        }
        fn proportional_bytes(&mut self, _: Pid) -> Option<u64> {
            self.pss
        }
        fn signal_group(&mut self, group: Pid, signal: Signal) {
            self.log.push(format!("{signal} group {group}"));
        }
    }

    impl Fake {
        fn take(&mut self) -> Vec<String> {
            std::mem::take(&mut self.log)
        }
    }

    /// A clock that only moves when told.
    struct Clock {
        base: Instant,
        offset: Duration,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                base: Instant::now(),
                offset: Duration::ZERO,
            }
        }
        fn now(&self) -> Now {
            Now {
                at: self.base + self.offset,
                mono: 1_000_000_000 + self.offset.as_nanos() as u64,
            }
        }
        fn advance(&mut self, by: Duration) -> Now {
            self.offset += by;
            self.now()
        }
    }

    fn fleet(build: impl FnOnce(Prefork) -> Prefork) -> Fleet {
        Fleet::new(build(Prefork::new().procs(2).threads(2)).settings)
    }

    fn pid(n: i32) -> Pid {
        Pid::from_raw(100 + n)
    }

    /// Starts the fleet and reports every child ready.
    fn boot(fleet: &mut Fleet, fx: &mut Fake, clock: &Clock) {
        fleet.turn(clock.now(), fx);
        let pids: Vec<Pid> = fleet.children.iter().map(|c| c.pid).collect();
        for p in pids {
            fleet.on_ready(p, clock.now().at, fx);
        }
        fx.take();
    }

    #[test]
    fn fills_every_slot_then_refills_a_dead_child_at_once_then_with_backoff() {
        let (mut fx, clock) = (Fake::default(), Clock::new());
        let mut fleet = fleet(|p| p);
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fx.take(), ["spawn 1 -> 101", "spawn 2 -> 102"]);
        // Slot 1's child dies before it is ready: refilled at once ...
        let dead = WaitStatus::Exited(pid(1), 1);
        assert!(fleet.on_exit(dead, clock.now().at, &mut fx));
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fx.take(), ["spawn 1 -> 103"]);
        // ... then, dying young again, after 100 ms, then 200 ms.
        fleet.on_exit(WaitStatus::Exited(pid(3), 1), clock.now().at, &mut fx);
        fleet.turn(clock.now(), &mut fx);
        assert!(fx.take().is_empty());
        assert_eq!(fleet.sleep_for(clock.now().at), Duration::from_millis(100));
        let mut clock = clock;
        fleet.turn(clock.advance(Duration::from_millis(100)), &mut fx);
        assert_eq!(fx.take(), ["spawn 1 -> 104"]);
        fleet.on_exit(WaitStatus::Exited(pid(4), 1), clock.now().at, &mut fx);
        fleet.turn(clock.advance(Duration::from_millis(150)), &mut fx);
        assert!(fx.take().is_empty());
        fleet.turn(clock.advance(Duration::from_millis(50)), &mut fx);
        assert_eq!(fx.take(), ["spawn 1 -> 105"]);
        assert_eq!(fleet.report.restarts, 3);
        // A pid that is not a child is a stranger.
        assert!(!fleet.on_exit(WaitStatus::Exited(pid(99), 0), clock.now().at, &mut fx));
    }

    #[test]
    fn every_exit_has_a_reason() {
        let (mut fx, clock) = (Fake::default(), Clock::new());
        fx.oom = Some(3);
        let mut fleet = fleet(|p| p.procs(3));
        boot(&mut fleet, &mut fx, &clock);
        let kill = |n| WaitStatus::Signaled(pid(n), Signal::SIGKILL, false);
        // A SIGKILL while the cgroup's OOM count went up: the OOM killer.
        fx.oom = Some(4);
        fleet.on_exit(kill(1), clock.now().at, &mut fx);
        // A SIGKILL with the count unchanged: someone's signal.
        fleet.on_exit(kill(2), clock.now().at, &mut fx);
        fleet.on_exit(WaitStatus::Exited(pid(3), 3), clock.now().at, &mut fx);
        // A reload's replacement: the old child stops with its reason.
        fleet.turn(clock.now(), &mut fx);
        let pids: Vec<Pid> = fleet.children.iter().map(|c| c.pid).collect();
        for p in &pids {
            fleet.on_ready(*p, clock.now().at, &mut fx);
        }
        fleet.on_signal(Signal::SIGHUP, clock.now().at, &mut fx);
        fleet.turn(clock.now(), &mut fx);
        let new = fleet
            .children
            .iter()
            .find(|c| c.replaces.is_some())
            .unwrap()
            .pid;
        fleet.on_ready(new, clock.now().at, &mut fx);
        let old = fleet
            .children
            .iter()
            .find(|c| c.stop.is_some())
            .unwrap()
            .pid;
        fleet.on_exit(WaitStatus::Exited(old, 0), clock.now().at, &mut fx);
        let exits: Vec<(&str, u64)> = fleet.report.exits.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            exits,
            [("exited", 1), ("oom", 1), ("reload", 1), ("signal", 1)]
        );
    }

    #[test]
    fn a_dead_childs_program_groups_are_killed_when_it_is_reaped() {
        let (mut fx, clock) = (Fake::default(), Clock::new());
        let mut fleet = fleet(|p| p.procs(1).threads(4));
        fleet.turn(clock.now(), &mut fx);
        fx.take();
        let board = &fleet.children[0].board;
        board
            .program_record(1)
            .unwrap()
            .store(4242, Ordering::Release);
        board
            .program_record(3)
            .unwrap()
            .store(4343, Ordering::Release);
        let dead = WaitStatus::Signaled(pid(1), Signal::SIGKILL, false);
        fleet.on_exit(dead, clock.now().at, &mut fx);
        assert_eq!(fx.take(), ["SIGKILL group 4242", "SIGKILL group 4343"]);
    }

    #[test]
    fn programs_overstaying_a_graceful_stop_get_term_then_a_grace() {
        let (mut fx, mut clock) = (Fake::default(), Clock::new());
        let mut fleet = fleet(|p| {
            p.procs(1)
                .threads(2)
                .graceful_timeout(Duration::from_secs(4))
        });
        fleet.turn(clock.now(), &mut fx);
        fleet.on_ready(pid(1), clock.now().at, &mut fx);
        let record = fleet.children[0].board.program_record(1).unwrap();
        record.store(4242, Ordering::Release);
        fx.take();
        fleet.on_signal(Signal::SIGTERM, clock.now().at, &mut fx);
        assert_eq!(fx.take(), ["SIGTERM 101"]);
        fleet.turn(clock.advance(Duration::from_secs(4)), &mut fx);
        assert_eq!(fx.take(), ["SIGTERM group 4242"]);
        // Half the graceful timeout (at most 5 s) before the KILL.
        fleet.turn(clock.advance(Duration::from_millis(1999)), &mut fx);
        assert!(fx.take().is_empty());
        fleet.turn(clock.advance(Duration::from_millis(1)), &mut fx);
        assert_eq!(fx.take(), ["SIGKILL 101"]);
        let killed = WaitStatus::Signaled(pid(1), Signal::SIGKILL, false);
        fleet.on_exit(killed, clock.now().at, &mut fx);
        assert_eq!(fx.take(), ["SIGKILL group 4242"]);
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fx.handovers_done(&mut fleet, clock.now().at), ["101i"]);
        assert!(fleet.finished());
    }

    #[test]
    fn a_failed_fork_retries_the_slot_a_second_later() {
        let (mut fx, mut clock) = (Fake::default(), Clock::new());
        fx.refuse = 1;
        let mut fleet = fleet(|p| p.procs(1));
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fx.take(), ["refused 1"]);
        fleet.turn(clock.advance(Duration::from_millis(999)), &mut fx);
        assert!(fx.take().is_empty());
        fleet.turn(clock.advance(Duration::from_millis(1)), &mut fx);
        assert_eq!(fx.take(), ["spawn 1 -> 101"]);
    }

    #[test]
    fn deadlines_boot_stuck_and_graceful() {
        let (mut fx, mut clock) = (Fake::default(), Clock::new());
        let mut fleet = fleet(|p| {
            p.boot_timeout(Duration::from_secs(5))
                .timeout(Some(Duration::from_secs(1)))
                .graceful_timeout(Duration::from_secs(3))
        });
        fleet.turn(clock.now(), &mut fx);
        fleet.on_ready(pid(1), clock.now().at, &mut fx);
        fx.take();
        // Child 2 never reports ready: killed at the boot timeout.
        fleet.turn(clock.advance(Duration::from_millis(4999)), &mut fx);
        assert!(fx.take().is_empty());
        fleet.turn(clock.advance(Duration::from_millis(1)), &mut fx);
        // A killed child no longer fills its slot: the replacement starts
        // at once, while the killed one dies.
        assert_eq!(fx.take(), ["SIGKILL 102", "spawn 2 -> 103"]);
        fleet.on_ready(pid(3), clock.now().at, &mut fx);
        // Child 1's worker 1 starts a batch of 3 jobs: it may take 3
        // timeouts, and the master kills it at twice that.
        let start = clock.now().mono;
        fleet.children[0]
            .board
            .begin_at(1, "jobs 1..3", 3, None, start);
        fleet.turn(clock.advance(Duration::from_millis(5999)), &mut fx);
        assert!(fx.take().is_empty());
        fleet.turn(clock.advance(Duration::from_millis(1)), &mut fx);
        assert_eq!(fx.take(), ["SIGKILL 101", "spawn 1 -> 104"]);
        // Both deaths were faults: both slots count a young death.
        let now = clock.now().at;
        fleet.on_exit(
            WaitStatus::Signaled(pid(2), Signal::SIGKILL, false),
            now,
            &mut fx,
        );
        fleet.on_exit(
            WaitStatus::Signaled(pid(1), Signal::SIGKILL, false),
            now,
            &mut fx,
        );
        assert_eq!(fleet.report.restarts, 2);
        // A graceful stop: TERM, then SIGKILL at the graceful timeout.
        fleet.turn(clock.now(), &mut fx);
        assert!(fx.take().is_empty(), "both slots are filled already");
        fleet.on_signal(Signal::SIGTERM, clock.now().at, &mut fx);
        assert_eq!(fx.take(), ["SIGTERM 103", "SIGTERM 104"]);
        // Meanwhile the two killed for faults are handed over (failed
        // work), by a process of its own, once no replacement boots.
        fleet.turn(clock.advance(Duration::from_millis(2999)), &mut fx);
        assert!(fx.take().is_empty());
        assert_eq!(fx.handovers_done(&mut fleet, clock.now().at), ["102,101"]);
        fleet.turn(clock.advance(Duration::from_millis(1)), &mut fx);
        assert_eq!(fx.take(), ["SIGKILL 103", "SIGKILL 104"]);
        assert!(!fleet.finished());
        let now = clock.now().at;
        fleet.on_exit(
            WaitStatus::Signaled(pid(3), Signal::SIGKILL, false),
            now,
            &mut fx,
        );
        fleet.on_exit(WaitStatus::Exited(pid(4), 0), now, &mut fx);
        // Requested stops are not restarts.
        assert_eq!(fleet.report.restarts, 2);
        // Every one of these children was killed (an exit status of 0
        // after SIGKILL was sent proves nothing), so each one is handed
        // over; the two stopped past the graceful timeout as interrupted.
        // The fleet is finished once that handover is over.
        assert!(!fleet.finished());
        fleet.turn(clock.now(), &mut fx);
        assert!(!fleet.finished());
        assert_eq!(fx.handovers_done(&mut fleet, now), ["103i,104i"]);
        assert!(fleet.finished());
    }

    #[test]
    fn hup_replaces_one_child_at_a_time_oldest_first_each_new_one_ready_first() {
        let (mut fx, mut clock) = (Fake::default(), Clock::new());
        let mut fleet = fleet(|p| p.procs(3));
        fleet.turn(clock.now(), &mut fx);
        for n in [2, 1, 3] {
            // Ready in another order than forked: age decides, not readiness.
            fleet.on_ready(pid(n), clock.advance(Duration::from_millis(10)).at, &mut fx);
        }
        fx.take();
        fleet.on_signal(Signal::SIGHUP, clock.now().at, &mut fx);
        let mut order = Vec::new();
        for round in 0..3 {
            fleet.turn(clock.now(), &mut fx);
            let log = fx.take();
            assert_eq!(log.len(), 1, "one replacement at a time: {log:?}");
            order.push(log[0].clone());
            // Nothing else starts or stops until the replacement is ready.
            fleet.turn(clock.advance(Duration::from_millis(50)), &mut fx);
            assert!(fx.take().is_empty());
            let new = pid(4 + round);
            fleet.on_ready(new, clock.now().at, &mut fx);
            assert_eq!(fx.take(), [format!("SIGTERM {}", pid(1 + round))]);
            // The next replacement waits until the stopped one is gone.
            fleet.turn(clock.advance(Duration::from_millis(50)), &mut fx);
            assert!(fx.take().is_empty(), "two children beyond the target");
            let old = WaitStatus::Exited(pid(1 + round), 0);
            fleet.on_exit(old, clock.now().at, &mut fx);
        }
        assert_eq!(
            order,
            ["spawn 1 -> 104", "spawn 2 -> 105", "spawn 3 -> 106"]
        );
        fleet.turn(clock.advance(Duration::from_secs(1)), &mut fx);
        assert!(fx.take().is_empty());
        assert_eq!(fleet.report.restarts, 0);
        assert!(
            fleet.handovers.idle(),
            "a clean stop leaves nothing to hand over"
        );
    }

    #[test]
    fn recycling_by_jobs_lifetime_and_memory() {
        let (mut fx, mut clock) = (Fake::default(), Clock::new());
        let mut fleet = fleet(|p| {
            p.procs(1)
                .max_requests(Some(10), 0)
                .max_lifetime(Some(Duration::from_secs(60)), Duration::ZERO)
                .reload_on_rss(Some(100))
        });
        boot(&mut fleet, &mut fx, &clock);
        fleet.children[0].board.end(0, 9);
        fleet.turn(clock.advance(Duration::from_secs(1)), &mut fx);
        assert!(fx.take().is_empty());
        fleet.children[0].board.end(0, 1);
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fleet.children[0].retire, Some(ExitReason::RecycledRequests));
        assert_eq!(fx.take(), ["spawn 1 -> 102"]);

        let mut fleet = fleet_with_one(&mut fx, &clock, |p| {
            p.max_lifetime(Some(Duration::from_secs(60)), Duration::ZERO)
        });
        fleet.turn(clock.advance(Duration::from_secs(59)), &mut fx);
        assert!(fx.take().is_empty());
        fleet.turn(clock.advance(Duration::from_secs(1)), &mut fx);
        assert_eq!(fleet.children[0].retire, Some(ExitReason::RecycledLifetime));

        let mut fleet = fleet_with_one(&mut fx, &clock, |p| p.reload_on_rss(Some(100)));
        fx.rss = Some(99 * 1024 * 1024);
        fleet.turn(clock.now(), &mut fx);
        assert!(fleet.children[0].retire.is_none());
        fx.rss = Some(100 * 1024 * 1024);
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fleet.children[0].retire, Some(ExitReason::RecycledMemory));
        fx.rss = None;

        // PSS: three readings over the limit in a row, one a second; a
        // reading under it starts the count again.
        let mut fleet = fleet_with_one(&mut fx, &clock, |p| p.max_memory(Some(100), 3));
        let over = Some(100 * 1024 * 1024);
        for pss in [over, over, Some(1), over, over] {
            fx.pss = pss;
            fleet.turn(clock.advance(Duration::from_secs(1)), &mut fx);
            // Turns in between read nothing.
            fleet.turn(clock.advance(Duration::from_millis(100)), &mut fx);
            assert!(fleet.children[0].retire.is_none());
        }
        fleet.turn(clock.advance(Duration::from_secs(1)), &mut fx);
        assert_eq!(fleet.children[0].retire, Some(ExitReason::RecycledMemory));
    }

    fn fleet_with_one(
        fx: &mut Fake,
        clock: &Clock,
        build: impl FnOnce(Prefork) -> Prefork,
    ) -> Fleet {
        let mut fleet = fleet(|p| build(p.procs(1)));
        boot(&mut fleet, fx, clock);
        fleet
    }

    #[test]
    fn ttou_stops_the_highest_slot_and_ttin_refills_it() {
        let (mut fx, clock) = (Fake::default(), Clock::new());
        let mut fleet = fleet(|p| p.procs(2));
        boot(&mut fleet, &mut fx, &clock);
        fleet.on_signal(Signal::SIGTTOU, clock.now().at, &mut fx);
        fleet.on_signal(Signal::SIGTTOU, clock.now().at, &mut fx);
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fx.take(), ["SIGTERM 102"], "never below one child");
        fleet.on_exit(WaitStatus::Exited(pid(2), 0), clock.now().at, &mut fx);
        fleet.on_signal(Signal::SIGTTIN, clock.now().at, &mut fx);
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fx.take(), ["spawn 2 -> 103"]);
    }

    #[test]
    fn crash_limit_stops_the_fleet_fast() {
        let (mut fx, clock) = (Fake::default(), Clock::new());
        let mut fleet = fleet(|p| p.procs(2).crash_limit(Some(2)));
        boot(&mut fleet, &mut fx, &clock);
        let now = clock.now().at;
        fleet.on_exit(WaitStatus::Exited(pid(1), 3), now, &mut fx);
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fx.take(), ["spawn 1 -> 103"]);
        fleet.on_exit(WaitStatus::Exited(pid(3), 3), now, &mut fx);
        assert_eq!(fx.take(), ["SIGQUIT 102"]);
        // The fast stop kills at the next turn, without waiting.
        fleet.turn(clock.now(), &mut fx);
        assert_eq!(fx.take(), ["SIGKILL 102"]);
        fleet.on_exit(
            WaitStatus::Signaled(pid(2), Signal::SIGKILL, false),
            now,
            &mut fx,
        );
        for _ in 0..2 {
            fleet.turn(clock.now(), &mut fx);
            fx.handovers_done(&mut fleet, now);
        }
        assert!(fleet.finished());
        assert!(matches!(
            fleet.take_outcome(),
            Err(PreforkError::CrashLimit {
                index: 1,
                deaths: 2
            })
        ));
    }
}
