//! The fork guard: fork only when the process is single-threaded and holds
//! no open connection.
//!
//! A child that inherits an open connection shares the parent's session:
//! its queries interleave with the parent's on one socket, and its `Drop`
//! sends Terminate and ends the parent's session. A child that inherits
//! other threads inherits their locks but not the threads (a mutex held by a
//! thread that does not exist in the child is held forever). [`fork`] refuses
//! both situations with an error that says what is open.
//!
//! Programs that fork by other means can still be safe:
//! [`install_atfork_handlers`] (done automatically when the first connection
//! opens) makes every child point the sockets it inherited at `/dev/null`,
//! and every connection is stamped with its owner pid, so a child never uses
//! or closes its parent's sessions and reconnects lazily instead.

use std::fmt;
use std::io;
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::unistd::ForkResult;

use crate::Pid;
use crate::conn::registry;
use crate::conn::socket;
use crate::conn::{Stats, close_all};

/// Which side of a successful [`fork`] the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// The parent; the child's pid.
    Parent(Pid),
    /// The child: its registry starts empty and connects lazily.
    Child,
}

/// Why [`fork`] refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum ForkError {
    /// Other threads exist. Join them (and shut down thread pools) first.
    Threads {
        /// Threads in the process, the caller included.
        count: usize,
    },
    /// Connections are still open on other threads, or were left behind by
    /// threads that are gone.
    OpenConnections(Stats),
    /// `fork()` itself failed.
    Os(io::Error),
}

impl fmt::Display for ForkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForkError::Threads { count } => write!(
                f,
                "refusing to fork: the process has {count} threads (a child would inherit their \
                 locks but not the threads); join them first"
            ),
            ForkError::OpenConnections(stats) => {
                write!(
                    f,
                    "refusing to fork: {} database connection(s) still open",
                    stats.open
                )?;
                for thread in &stats.by_thread {
                    let name = thread.name.as_deref().unwrap_or("unnamed");
                    write!(f, "; {} on thread {name:?}", thread.open)?;
                }
                if stats.orphaned > 0 {
                    write!(f, "; {} left by ended threads", stats.orphaned)?;
                }
                Ok(())
            }
            ForkError::Os(e) => write!(f, "fork failed: {e}"),
        }
    }
}

impl std::error::Error for ForkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ForkError::Os(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks, without changing anything, that [`fork`] would go ahead: no
/// connection open anywhere in the process and no other thread.
///
/// # Errors
///
/// [`ForkError::OpenConnections`] or [`ForkError::Threads`].
pub fn ready_to_fork() -> Result<(), ForkError> {
    // The full stats (allocations) only for the error.
    if registry::open_count() > 0 {
        return Err(ForkError::OpenConnections(registry::stats()));
    }
    let count = thread_count();
    if count > 1 {
        return Err(ForkError::Threads { count });
    }
    Ok(())
}

/// Forks the process safely.
///
/// Closes the calling thread's connections (and those left by ended
/// threads), then refuses if any connection is still open or any other
/// thread exists; otherwise forks. In the child the registry starts clean:
/// the same databases are configured, no connection is open, and each
/// thread connects again on its first query.
///
/// # Errors
///
/// [`ForkError::OpenConnections`] or [`ForkError::Threads`] as for
/// [`ready_to_fork`] (nothing is forked), or [`ForkError::Os`] if the
/// system call fails.
pub fn fork() -> Result<Fork, ForkError> {
    close_all();
    ready_to_fork()?;
    install_atfork_handlers();
    // SAFETY: the process has exactly one thread (checked just above, and
    // only this thread could have started another since), so the child
    // inherits no lock held by a missing thread and may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(Fork::Parent(child)),
        Ok(ForkResult::Child) => Ok(Fork::Child),
        Err(errno) => Err(ForkError::Os(io::Error::from(errno))),
    }
}

/// Threads in this process (`num_threads` in `/proc/self/stat`; one read,
/// cheaper than listing `/proc/self/task`).
///
/// A thread that was just joined can stay counted for a moment while the
/// kernel finishes tearing it down, so a count above one is re-read for up
/// to 100 ms before it is believed.
pub fn thread_count() -> usize {
    let deadline = Instant::now() + Duration::from_millis(100);
    loop {
        let count = crate::procfs::thread_count().unwrap_or(usize::MAX);
        if count <= 1 || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Registers the `pthread_atfork` handlers that protect programs forking
/// without [`fork`] (raw `fork()`, `libc::fork`, a C library). Idempotent;
/// [`configure`](crate::configure), which every connection needs first,
/// installs them too.
///
/// In every child they point the sockets of the parent's connections at
/// `/dev/null` (async-signal-safe, nothing sent to the server). The
/// inherited connections are foreign to the child by their owner pid: the
/// child never uses or closes them, and opens its own on first use.
pub fn install_atfork_handlers() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions with no
        // arguments that never unwind; registering them has no other
        // precondition.
        let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        if rc != 0 {
            log::warn!("pthread_atfork failed ({rc}): raw forks will not be neutralised");
        }
    });
}

extern "C" fn prepare() {
    socket::before_fork();
    registry::lock_for_fork();
}

extern "C" fn parent() {
    // SAFETY: `prepare` took the lock in this thread just before the fork.
    unsafe { registry::unlock_after_fork() };
}

extern "C" fn child() {
    // SAFETY: the child's only thread is the copy of the one that ran
    // `prepare`, so it holds the lock.
    unsafe { registry::unlock_after_fork() };
    socket::neutralise_inherited();
}
