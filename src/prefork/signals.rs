//! The master's signals, read from a `signalfd`.
//!
//! The master blocks the signals it handles for its whole run and reads
//! them from a signalfd that its loop `poll`s with everything else, so they
//! are handled in ordinary code and no thread is needed (the master must
//! stay single-threaded to fork). Unlike a self-pipe written by a handler,
//! nothing can fill up and drop a signal: each is pending in the kernel
//! until read. (The kernel still merges two deliveries of one standard
//! signal that arrive before the first is read; that is how standard
//! signals work, whoever reads them.)
//!
//! A forked child starts with the same signals blocked, so one sent to it
//! before it set itself up stays pending instead of reaching the master's
//! code in the child.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals the master handles.
pub(crate) const HANDLED: [Signal; 10] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGCHLD,
    Signal::SIGTSTP,
    Signal::SIGCONT,
];

fn set_of(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for signal in signals {
        set.add(*signal);
    }
    set
}

/// The master's signals: blocked, and read from a signalfd.
pub(crate) struct Signals {
    fd: SignalFd,
    /// The mask to restore when the master returns.
    previous: SigSet,
}

impl Signals {
    /// Blocks [`HANDLED`] in the calling thread and opens a signalfd for
    /// them (non-blocking, close-on-exec).
    pub(crate) fn install() -> io::Result<Signals> {
        let set = set_of(&HANDLED);
        let previous = set.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC);
        match fd {
            Ok(fd) => Ok(Signals { fd, previous }),
            Err(e) => {
                let _ = previous.thread_set_mask();
                Err(e.into())
            }
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The signals received since the last call, in the order read.
    pub(crate) fn drain(&mut self) -> Vec<Signal> {
        let mut signals = Vec::new();
        loop {
            match self.fd.read_signal() {
                Ok(Some(info)) => {
                    if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                        signals.push(signal);
                    }
                }
                Ok(None) => return signals,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("reading the master's signals: {e}");
                    return signals;
                }
            }
        }
    }

    /// In a forked child: TERM and QUIT get their default action but stay
    /// blocked (the child takes them from a signalfd of its own), the
    /// master's other signals are ignored (a terminal's Ctrl-C reaches the
    /// whole process group; the master stops the fleet once) and unblocked,
    /// and the master's signalfd is closed.
    pub(crate) fn reset_in_child(self) {
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        for signal in HANDLED {
            let action = match signal {
                Signal::SIGTERM | Signal::SIGQUIT | Signal::SIGCHLD => &default,
                _ => &ignore,
            };
            // SAFETY: default and ignore dispositions install no handler.
            let _ = unsafe { sigaction(signal, action) };
        }
        let _ = child_mask().thread_set_mask();
        drop(self.fd);
    }

    /// Restores the mask the master had, once its loop is over. Signals
    /// still pending are read and dropped first: restoring the mask would
    /// otherwise deliver a late TERM with its default action and kill the
    /// returning master.
    pub(crate) fn uninstall(mut self) {
        let late = self.drain();
        if !late.is_empty() {
            log::debug!("signals after the fleet stopped, ignored: {late:?}");
        }
        let _ = self.previous.thread_set_mask();
    }
}

/// Blocks, in the calling thread (and the threads it starts later), the
/// master's signals whose default action would end or stop the process
/// (HUP, TTIN, TTOU, USR1), so that one arriving before
/// [`Prefork::run`](super::Prefork::run) (while the program connects and
/// migrates, say, or while a deploy tool already sends its first reload)
/// waits, pending, for the master to read it, instead of killing the
/// process. TERM, INT and QUIT keep their default action until then: a
/// program stuck starting up can still be stopped.
///
/// # Errors
///
/// The system's error from `pthread_sigmask`.
pub fn hold_signals() -> io::Result<()> {
    set_of(&[
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGUSR1,
    ])
    .thread_block()?;
    Ok(())
}

/// The signals a child keeps blocked and reads from its own signalfd.
pub(crate) fn child_mask() -> SigSet {
    set_of(&[Signal::SIGTERM, Signal::SIGQUIT])
}
