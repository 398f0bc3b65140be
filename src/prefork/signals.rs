//! The master's signals, turned into bytes on a pipe (the self-pipe trick).
//!
//! The handler only `write`s the signal number (async-signal-safe); the
//! master's loop `poll`s the pipe with everything else and acts on the
//! signals in ordinary code. No thread is needed, which matters: the master
//! must stay single-threaded to fork.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The signals the master handles.
pub(crate) const HANDLED: [Signal; 8] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGCHLD,
];

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: errno is thread-local; saving and restoring it keeps the
    // interrupted code's errno intact. write() is async-signal-safe; a full
    // pipe (EAGAIN) just drops a duplicate wake-up.
    unsafe {
        let errno = *libc::__errno_location();
        let byte = signal as u8;
        libc::write(fd, (&raw const byte).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

pub(crate) struct SignalPipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl SignalPipe {
    /// Installs handlers for [`HANDLED`] that write to a new pipe.
    pub(crate) fn install() -> io::Result<SignalPipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        WRITE_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
            SigSet::empty(),
        );
        for signal in HANDLED {
            // SAFETY: `on_signal` is async-signal-safe (see above).
            unsafe { sigaction(signal, &action) }?;
        }
        // Unblock them, in case the master itself inherited a mask.
        let mut set = SigSet::empty();
        for signal in HANDLED {
            set.add(signal);
        }
        set.thread_unblock()?;
        Ok(SignalPipe { read, write })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.read.as_fd()
    }

    /// The signals received since the last call, in order.
    pub(crate) fn drain(&self) -> Vec<Signal> {
        let mut signals = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EAGAIN) => break,
                Ok(n) => signals.extend(
                    buf[..n]
                        .iter()
                        .filter_map(|b| Signal::try_from(i32::from(*b)).ok()),
                ),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        signals
    }

    /// In a forked child, which starts with [`Blocked`] signals: TERM and
    /// QUIT get their default action but stay blocked (the child takes them
    /// with `sigtimedwait`), the master's other signals are ignored (a
    /// terminal's Ctrl-C reaches the whole group; the master stops the fleet
    /// once), and the master's pipe is closed. A signal sent to the child
    /// before this point stays pending rather than running the master's
    /// handler in the child.
    pub(crate) fn reset_in_child(self) {
        WRITE_FD.store(-1, Ordering::Relaxed);
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
        drop(self);
    }

    /// Restores the default dispositions in the master, when `run` returns.
    pub(crate) fn uninstall(self) {
        WRITE_FD.store(-1, Ordering::Relaxed);
        reset_dispositions();
        drop((self.read, self.write));
    }
}

/// The signals a child keeps blocked for `sigtimedwait`.
pub(crate) fn child_mask() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGQUIT);
    set
}

/// The master's signals blocked until dropped; held across `fork()` so that
/// a signal meant for the new child cannot run the master's handler in it.
pub(crate) struct Blocked(SigSet);

impl Blocked {
    pub(crate) fn new() -> std::io::Result<Blocked> {
        let mut set = SigSet::empty();
        for signal in HANDLED {
            set.add(signal);
        }
        let old = set.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
        Ok(Blocked(old))
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        let _ = self.0.thread_set_mask();
    }
}

fn reset_dispositions() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in HANDLED {
        // SAFETY: restoring the default disposition installs no handler.
        let _ = unsafe { sigaction(signal, &default) };
    }
    let _ = SigSet::empty().thread_set_mask();
}
