//! What a child does after the master forks it.
//!
//! It ties its life to the master's, resets the master's signal handling,
//! names itself, runs the app's worker threads, tells the master it is
//! ready, and then waits on its main thread for the master's word:
//! TERM (or the master's death) stops it gracefully, QUIT at once.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;

use super::board::SharedBoard;
use super::{App, ChildInfo, ChildShared, Settings, Waker, Worker, title};

/// Exit status of a child whose `init_child` failed.
pub(crate) const EXIT_INIT_FAILED: i32 = 3;
/// Exit status of a child one of whose worker threads ended on its own.
pub(crate) const EXIT_WORKER_DIED: i32 = 4;

pub(crate) fn run<A: App>(
    app: Arc<A>,
    settings: &Settings,
    index: usize,
    board: SharedBoard,
    ready: OwnedFd,
    master: Pid,
) -> ! {
    // Die with the master. The master may have died between fork and
    // prctl, in which case no signal will come: check by hand.
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    if nix::unistd::getppid() != master {
        std::process::exit(0);
    }
    title::set(&format!("{}: worker {index}", settings.name));
    crate::set_role("worker");

    // TERM and QUIT stay blocked in every thread (the workers inherit the
    // mask that `SignalPipe::reset_in_child` set) and are taken by
    // sigtimedwait below; the master's other signals are ignored.
    let wait_set = super::signals::child_mask();

    let shared = Arc::new(ChildShared::new(board, settings.threads));
    let info = ChildInfo {
        index,
        threads: settings.threads,
        waker: Waker(shared.clone()),
    };
    if let Err(e) = app.init_child(&info) {
        log::error!("worker {index}: init failed: {e}");
        std::process::exit(EXIT_INIT_FAILED);
    }

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
        let done = Done(done_tx.clone(), w);
        let spawned = crate::thread::Builder::new()
            .name(format!("worker-{index}.{w}"))
            .spawn(move || {
                let _done = done;
                app.run_worker(&worker);
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                log::error!("worker {index}: cannot start thread {w}: {e}");
                std::process::exit(EXIT_INIT_FAILED);
            }
        }
    }

    let mut ready = std::fs::File::from(ready);
    if ready.write_all(b"R").is_err() {
        // The master is gone; PDEATHSIG is on its way. Stop gracefully.
        log::debug!("worker {index}: master did not take the ready signal");
    }
    drop(ready);

    let mut code = 0;
    loop {
        shared
            .board
            .open_connections
            .store(crate::stats().open as u32, Ordering::Relaxed);
        match wait_signal(&wait_set, Duration::from_millis(100)) {
            Some(Signal::SIGQUIT) => {
                // Fast stop: the kernel closes every socket; the master
                // ends any backend still busy.
                // SAFETY: ends the process at once, as QUIT asks.
                unsafe { libc::_exit(0) }
            }
            Some(_) => break,
            None => {}
        }
        if nix::unistd::getppid() != master {
            log::warn!("worker {index}: master died; stopping");
            break;
        }
        if let Ok(w) = done_rx.try_recv() {
            log::error!("worker {index}: thread {w} ended on its own; restarting the child");
            code = EXIT_WORKER_DIED;
            break;
        }
    }

    shared.stop();
    for thread in threads {
        let _ = thread.join();
    }
    crate::close_all();
    std::process::exit(code);
}

/// Tells the main thread that a worker thread ended (returned or panicked).
struct Done(crossbeam_channel::Sender<usize>, usize);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

/// Waits up to `timeout` for a signal in `set`, which must be blocked.
fn wait_signal(set: &SigSet, timeout: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid sigset_t, `ts` a valid timespec; a null
    // siginfo pointer is allowed.
    let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if n > 0 {
        Signal::try_from(n).ok()
    } else {
        None
    }
}
