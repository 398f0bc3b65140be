//! The master's supervision loop, and the system calls behind the fleet's
//! decisions (see `fleet`).
//!
//! One thread, one loop: reap, let the fleet apply its rules (forking
//! children, and handovers for the dead ones: see `handover`), tell the
//! app, then sleep in `poll` on the signalfd and the ready pipes of
//! booting children (at most 100 ms, so deadlines are checked even when
//! nothing happens). The loop never waits on the database: only the start
//! (the slot check) and a stopped fleet's last handover touch it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use super::app::{App, LostChild, Report};
use super::backends;
use super::board::SharedBoard;
use super::child;
use super::error::{PreforkError, io_error};
use super::fleet::{Effects, Fleet, Now, SharedBoardPid, SpawnError};
use super::handover::{self, Launcher};
use super::notify::Notifier;
use super::pidfile::Pidfile;
use super::settings::Settings;
use super::signals::Signals;
use super::status::{FleetView, MasterView, StatusServer};
use super::title;
use crate::Pid;
use crate::fork::{Fork, ForkError};

pub(crate) fn run<A: App>(settings: Settings, app: Arc<A>) -> Result<Report, PreforkError> {
    let pidfile = settings
        .pidfile
        .as_deref()
        .map(Pidfile::create)
        .transpose()?;
    crate::set_role("master");
    let use_database = crate::is_configured();
    if use_database {
        backends::check_slots(&settings)?;
    }
    let status = settings
        .status_addr
        .as_ref()
        .map(|addr| {
            StatusServer::bind(addr).map_err(|e| PreforkError::Io {
                context: format!("binding the status endpoint {addr}"),
                source: e,
            })
        })
        .transpose()?;
    if let Some(addr) = &settings.status_addr {
        log::info!("status endpoint at {addr} (/metrics, /status, /livez, /readyz)");
    }
    let signals = Signals::install().map_err(io_error("setting up the master's signals"))?;
    title::set(&format!("{}: master", settings.name));
    log::info!(
        "master {} starting {} children x {} workers",
        Pid::this(),
        settings.procs,
        settings.threads
    );
    let mut master = Master {
        os: Os {
            settings: settings.clone(),
            app,
            signals: Some(signals),
            pidfile,
            ready: Vec::new(),
            status,
        },
        fleet: Fleet::new(settings),
        notifier: Notifier::from_env(Instant::now()),
        started: Instant::now(),
        lag: Duration::ZERO,
        wake_at: None,
        memory: std::cell::RefCell::new(std::collections::HashMap::new()),
    };
    let result = master.supervise();
    if let Some(signals) = master.os.signals.take() {
        signals.uninstall();
    }
    // A last tick with no children, so the app can clear its accounting.
    master.os.app.master_tick(&[]);
    crate::close_all();
    drop(master.os.pidfile.take());
    result.map(|()| master.fleet.report)
}

struct Master<A: App> {
    fleet: Fleet,
    os: Os<A>,
    /// systemd's notifications, when it asked for them.
    notifier: Option<Notifier>,
    started: Instant,
    /// How long the last turn took past its planned wake-up (see
    /// `status`'s `prefork_master_loop_lag_seconds`).
    lag: Duration,
    /// When the loop planned to wake, if a timeout (not an event) woke it.
    wake_at: Option<Instant>,
    /// The children's memory as the status endpoint last read it: RSS and
    /// PSS, and when (PSS walks every mapping of a child: 64 children
    /// take about 5 ms, too much for every scrape).
    memory: std::cell::RefCell<std::collections::HashMap<Pid, Memory>>,
}

/// A child's memory, read at `at`.
#[derive(Clone, Copy)]
struct Memory {
    at: Instant,
    rss: Option<u64>,
    pss: Option<u64>,
}

/// How long the status endpoint shows a child's memory reading.
const MEMORY_FRESH: Duration = Duration::from_secs(1);

/// What the fleet's decisions are carried out with.
struct Os<A: App> {
    app: Arc<A>,
    settings: Settings,
    /// `None` only while the master returns.
    signals: Option<Signals>,
    pidfile: Option<Pidfile>,
    /// The read ends of booting children's ready pipes.
    ready: Vec<(Pid, OwnedFd)>,
    /// The status endpoint, if asked for.
    status: Option<StatusServer>,
}

impl<A: App> Master<A> {
    fn supervise(&mut self) -> Result<(), PreforkError> {
        loop {
            let now = Now::read();
            self.reap(now.at);
            if self.fleet.finished() {
                log::info!("master {}: all children gone; exiting", Pid::this());
                return self.fleet.take_outcome();
            }
            self.fleet.turn(now, &mut self.os);
            if let Some(notifier) = self.notifier.as_mut() {
                notifier.update(self.fleet.health(), now.at);
            }
            self.os.app.master_tick(&self.fleet.statuses());
            if self.os.app.metrics().is_some() {
                let sums = self.fleet.counters();
                self.os.app.master_counted(&super::Counted(&sums));
            }
            let planned = self.wake_at.take().unwrap_or(now.at);
            self.lag = Instant::now().saturating_duration_since(planned);
            self.wait(now.at);
        }
    }

    /// Reaps every child that has exited. Runs after each wake-up, not only
    /// on SIGCHLD: signals merge, and a missed one must not leave a zombie.
    /// It reaps any process that is its child (`waitpid(-1)`): as PID 1 in a
    /// container, orphans are re-parented to the master, and they must not
    /// stay zombies either.
    fn reap(&mut self, now: Instant) {
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
            if let Some(pid) = status.pid() {
                // A child that died booting: its ready pipe goes with it.
                self.os.ready.retain(|(p, _)| *p != pid);
            }
            if !self.fleet.on_exit(status, now, &mut self.os) {
                // An orphan the master adopted: as PID 1 (a container),
                // or as a subreaper, a program's daemonised grandchild
                // comes here when its parent dies.
                let pid = status.pid().map_or(0, Pid::as_raw);
                let how = super::fleet::describe(&status);
                log::info!(pid = pid; "reaped a stranger: pid {pid} ({how}), not one of the fleet's children");
            }
        }
    }

    /// Sleeps until a signal, a ready child, a status request, or the next
    /// tick; serves the status endpoint's connections that are ready.
    fn wait(&mut self, now: Instant) {
        let mut timeout = self.fleet.sleep_for(now);
        if let Some(deadline) = self
            .os
            .status
            .as_ref()
            .and_then(StatusServer::next_deadline)
        {
            timeout = timeout.min(deadline.saturating_duration_since(now));
        }
        let Some(signals) = self.os.signals.as_mut() else {
            return;
        };
        let (ready, signalled, served) = {
            let mut fds = Vec::with_capacity(1 + self.os.ready.len());
            fds.push(PollFd::new(signals.fd(), PollFlags::POLLIN));
            for (_, pipe) in &self.os.ready {
                fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
            }
            let interests = self.os.status.as_ref().map(StatusServer::interests);
            for (fd, flags) in interests.iter().flatten() {
                fds.push(PollFd::new(*fd, *flags));
            }
            let millis = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
            let polled = poll(&mut fds, millis);
            let hit = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let pipes = 1 + self.os.ready.len();
            let served: Vec<bool> = fds[pipes..].iter().map(hit).collect();
            match polled {
                Ok(0) => self.wake_at = Some(now + timeout),
                Ok(_) => {}
                // EINTR: a signal not in the signalfd's set; look again.
                Err(_) => return,
            }
            let ready: Vec<Pid> = fds[1..pipes]
                .iter()
                .zip(&self.os.ready)
                .filter(|(fd, _)| hit(fd))
                .map(|(_, (pid, _))| *pid)
                .collect();
            (ready, hit(&fds[0]), served)
        };
        self.serve_status(&served);
        for pid in ready {
            self.on_ready_pipe(pid);
        }
        if signalled {
            let received = self
                .os
                .signals
                .as_mut()
                .map(Signals::drain)
                .unwrap_or_default();
            for signal in received {
                self.fleet.on_signal(signal, Instant::now(), &mut self.os);
            }
        }
    }

    /// Serves the status endpoint's connections poll found ready (`ready`:
    /// one flag per [`StatusServer::interests`] entry) and closes those
    /// done or out of time.
    fn serve_status(&mut self, ready: &[bool]) {
        let Some(mut status) = self.os.status.take() else {
            return;
        };
        let now = Instant::now();
        status.turn(ready, now, || self.view());
        self.os.status = Some(status);
    }

    /// A snapshot of the fleet for the status endpoint.
    fn view(&self) -> FleetView {
        let now = Now::read();
        let master = MasterView {
            pid: Pid::this(),
            uptime: now.at.saturating_duration_since(self.started),
            loop_lag: self.lag,
            settings: self.os.settings.describe(),
        };
        let mut view = self.fleet.view(now, master);
        let mut memory = self.memory.borrow_mut();
        memory.retain(|pid, _| view.children.iter().any(|c| c.pid == *pid));
        for child in &mut view.children {
            let read = match memory.get(&child.pid) {
                Some(m) if now.at.saturating_duration_since(m.at) < MEMORY_FRESH => *m,
                _ => {
                    let m = Memory {
                        at: now.at,
                        rss: crate::procfs::resident_bytes(child.pid),
                        pss: crate::procfs::proportional_bytes(child.pid),
                    };
                    memory.insert(child.pid, m);
                    m
                }
            };
            child.rss = read.rss;
            child.pss = read.pss;
        }
        drop(memory);
        view.master_connections = crate::conn::registry::open_count() as u32;
        if let Some(metrics) = self.os.app.metrics() {
            metrics.render(&self.fleet.counters(), &mut view.app_metrics);
        }
        let published = self.fleet.gauges(now);
        view.gauges = self.os.app.gauges(published.as_deref());
        view
    }

    /// A booting child wrote its ready byte, or closed the pipe by dying.
    fn on_ready_pipe(&mut self, pid: Pid) {
        let Some(i) = self.os.ready.iter().position(|(p, _)| *p == pid) else {
            return;
        };
        let (_, pipe) = self.os.ready.swap_remove(i);
        let mut byte = [0u8; 1];
        let got = loop {
            match nix::unistd::read(pipe.as_raw_fd(), &mut byte) {
                Err(Errno::EINTR) => continue,
                other => break other.unwrap_or(0),
            }
        };
        if got == 0 {
            return; // closed without a word: the child died; reap handles it
        }
        self.fleet.on_ready(pid, Instant::now(), &mut self.os);
    }
}

impl<A: App> Os<A> {
    /// In a process just forked: lets go of what is the master's, the
    /// children's ready pipes, the signalfd and the pidfile. (The
    /// children's scoreboards stay mapped, unused, until it exits.)
    fn forget_in_child(&mut self) {
        self.ready.clear();
        if let Some(status) = self.status.take() {
            status.forget_in_child();
        }
        if let Some(signals) = self.signals.take() {
            signals.reset_in_child();
        }
        if let Some(pidfile) = self.pidfile.take() {
            pidfile.forget_in_child();
        }
    }
}

impl<A: App> Launcher for Os<A> {
    fn hand_over(&mut self, lost: &[LostChild]) -> std::io::Result<Pid> {
        match crate::fork::fork() {
            Ok(Fork::Child) => {
                self.forget_in_child();
                let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
                title::set(&format!("{}: handover", self.settings.name));
                crate::set_role("handover");
                handover::run(&*self.app, lost, crate::is_configured())
            }
            Ok(Fork::Parent(pid)) => Ok(pid),
            Err(ForkError::Os(e)) => Err(e),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    fn kill_handover(&mut self, pid: Pid) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

impl<A: App> Effects for Os<A> {
    fn spawn(&mut self, index: usize, quiet: bool) -> Result<SharedBoardPid, SpawnError> {
        let retry = |context: &str| {
            let context = context.to_owned();
            move |e: Errno| SpawnError::Retry(std::io::Error::other(format!("{context}: {e}")))
        };
        let board = SharedBoard::new().map_err(|e| {
            SpawnError::Retry(std::io::Error::other(format!("mapping a scoreboard: {e}")))
        })?;
        // Before the fork: a child of a quiet fleet never sees it otherwise.
        board
            .quiet
            .store(quiet, std::sync::atomic::Ordering::Release);
        let (ready_read, ready_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(retry("creating a ready pipe"))?;
        let master = Pid::this();
        let forking = Instant::now();
        match crate::fork::fork() {
            Ok(Fork::Child) => {
                drop(ready_read);
                self.forget_in_child();
                let start = child::Start {
                    index,
                    board,
                    ready: ready_write,
                    master,
                };
                child::run(self.app.clone(), &self.settings, start)
            }
            Ok(Fork::Parent(pid)) => {
                log::debug!(
                    "child {index}: fork took {:?}; pid {pid} exists at {}",
                    forking.elapsed(),
                    super::board::monotonic_nanos()
                );
                drop(ready_write);
                self.ready.push((pid, ready_read));
                Ok((pid, board))
            }
            // Out of processes or memory: retry this slot later.
            Err(ForkError::Os(e)) => Err(SpawnError::Retry(e)),
            Err(e) => Err(SpawnError::Fatal(PreforkError::Fork(e))),
        }
    }

    fn signal(&mut self, pid: Pid, signal: Signal) {
        let _ = kill(pid, signal);
    }

    fn resident_bytes(&mut self, pid: Pid) -> Option<u64> {
        crate::procfs::resident_bytes(pid)
    }

    fn proportional_bytes(&mut self, pid: Pid) -> Option<u64> {
        crate::procfs::proportional_bytes(pid)
    }

    fn oom_kills(&mut self) -> Option<u64> {
        crate::procfs::cgroup_oom_kills()
    }

    fn signal_group(&mut self, group: Pid, signal: Signal) {
        let _ = nix::sys::signal::killpg(group, signal);
    }
}
