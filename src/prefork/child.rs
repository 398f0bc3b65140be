//! What a child does after the master forks it.
//!
//! It ties its life to the master's, resets the master's signal handling,
//! names itself, runs the app's worker threads, tells the master it is
//! ready, and then waits on its main thread for the master's word:
//! TERM (or the master's death) stops it gracefully, QUIT at once.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::app::{App, ChildInfo};
use super::board::SharedBoard;
use super::settings::Settings;
use super::title;
use super::worker::{ChildShared, Waker, Worker};
use crate::Pid;

/// Exit status of a child whose `init_child` failed.
pub(crate) const EXIT_INIT_FAILED: i32 = 3;
/// Exit status of a child one of whose worker threads ended on its own.
pub(crate) const EXIT_WORKER_DIED: i32 = 4;

/// What the master hands a new child.
pub(super) struct Start {
    /// The child's slot, from 1.
    pub(super) index: usize,
    pub(super) board: SharedBoard,
    /// The write end of the ready pipe.
    pub(super) ready: OwnedFd,
    /// The master's pid.
    pub(super) master: Pid,
}

pub(super) fn run<A: App>(app: Arc<A>, settings: &Settings, start: Start) -> ! {
    let Start {
        index,
        board,
        ready,
        master,
    } = start;
    // Die with the master. The master may have died between fork and
    // prctl, in which case no signal will come: check by hand.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    if nix::unistd::getppid() != master {
        std::process::exit(0);
    }
    title::set(&format!("{}: child {index}", settings.name));
    crate::set_role("child");

    // TERM and QUIT stay blocked in every thread (the workers inherit the
    // mask that `Signals::reset_in_child` set) and are read here.
    let signals = match SignalFd::with_flags(
        &super::signals::child_mask(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("child {index}: cannot read its signals: {e}");
            std::process::exit(EXIT_INIT_FAILED);
        }
    };

    let shared = Arc::new(ChildShared::new(board, settings.threads));
    let info = ChildInfo {
        index,
        threads: settings.threads,
        waker: Waker(shared.clone()),
    };
    let state = match app.init_child(&info) {
        Ok(state) => Arc::new(state),
        Err(e) => {
            log::error!("child {index}: init failed: {e}");
            std::process::exit(EXIT_INIT_FAILED);
        }
    };

    let (done_tx, done_rx) = crossbeam_channel::unbounded::<usize>();
    let mut threads = Vec::with_capacity(settings.threads);
    for w in 0..settings.threads {
        let worker = Worker {
            index: w,
            child: index,
            shared: shared.clone(),
            seen: std::cell::Cell::new(0),
        };
        let app = app.clone();
        let state = state.clone();
        let done = Done(done_tx.clone(), w);
        let spawned = crate::thread::Builder::new()
            .name(format!("worker-{index}.{w}"))
            .spawn(move || {
                let _done = done;
                app.run_worker(&state, &worker);
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                log::error!("child {index}: cannot start worker {w}: {e}");
                std::process::exit(EXIT_INIT_FAILED);
            }
        }
    }

    if nix::unistd::write(&ready, b"R").is_err() {
        // The master is gone; PDEATHSIG is on its way. Stop gracefully.
        log::debug!("child {index}: the master did not take the ready byte");
    }
    drop(ready);

    let mut code = 0;
    loop {
        shared
            .board
            .open_connections
            .store(crate::stats().open as u32, Ordering::Relaxed);
        match wait_signal(&signals, Duration::from_millis(100)) {
            Some(Signal::SIGQUIT) => {
                // Fast stop: the kernel closes every socket; the master
                // ends any backend still busy.
                // SAFETY: ends the process at once, as QUIT asks; no
                // destructor of this process needs to run.
                unsafe { libc::_exit(0) }
            }
            Some(_) => break,
            None => {}
        }
        if nix::unistd::getppid() != master {
            log::warn!("child {index}: the master died; stopping");
            break;
        }
        if let Ok(w) = done_rx.try_recv() {
            log::error!("child {index}: worker {w} ended on its own; restarting the child");
            code = EXIT_WORKER_DIED;
            break;
        }
    }

    shared.stop();
    wait_for_workers(threads, &shared, settings, master, index);
    // The workers are gone, and with them their copies of the state.
    if let Ok(state) = Arc::try_unwrap(state) {
        app.end_child(state);
    }
    crate::close_all();
    std::process::exit(code);
}

/// Waits for the workers to finish what they hold. While the master
/// lives, it enforces the graceful timeout (TERM to the programs, then
/// KILL). An orphan (its master killed) has nobody to do that, and its
/// programs die with their master, as the README promises: it sends them
/// TERM at once, then KILL after the grace, and exits, so no program
/// outlives its master by more than a grace.
fn wait_for_workers(
    threads: Vec<std::thread::JoinHandle<()>>,
    shared: &ChildShared,
    settings: &Settings,
    master: Pid,
    index: usize,
) {
    let mut told: Option<std::time::Instant> = None;
    while threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if nix::unistd::getppid() == master {
            continue;
        }
        let grace = super::kill_grace(settings.graceful_timeout);
        let groups = shared.board.programs(settings.threads);
        match told {
            None => {
                log::warn!("child {index}: orphaned while its programs run; sending them TERM");
                for group in &groups {
                    let _ = nix::sys::signal::killpg(*group, Signal::SIGTERM);
                }
                told = Some(std::time::Instant::now());
            }
            Some(at) if at.elapsed() >= grace => {
                for group in &groups {
                    let _ = nix::sys::signal::killpg(*group, Signal::SIGKILL);
                }
                log::warn!("child {index}: orphaned past its grace; exiting");
                // SAFETY: ends the process at once; the workers still
                // running hold nothing a destructor must release (the
                // kernel closes their sockets; PDEATHSIG ends what is left
                // of their programs).
                unsafe { libc::_exit(1) }
            }
            _ => {}
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
}

/// Tells the main thread that a worker thread ended (returned or panicked).
struct Done(crossbeam_channel::Sender<usize>, usize);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// Waits up to `timeout` for TERM or QUIT.
fn wait_signal(signals: &SignalFd, timeout: Duration) -> Option<Signal> {
    let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(n) if n > 0 => {}
        Ok(_) | Err(Errno::EINTR) => return None,
        Err(e) => {
            log::error!("waiting for signals: {e}");
            return None;
        }
    }
    match signals.read_signal() {
        Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
        _ => None,
    }
}
