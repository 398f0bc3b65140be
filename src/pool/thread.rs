//! Threads that close their connections when they end: the `DbSafeThread`
//! of the Python world.
//!
//! A connection opened by a thread belongs to that thread. If the thread
//! ends without closing it, the server keeps the backend until the process
//! exits, and many short-lived threads run the server out of slots. The
//! helpers here close the thread's connections when its closure returns and
//! when it panics.

use std::io;
use std::marker::PhantomData;
use std::thread::JoinHandle;

use crate::conn::close_all;

/// Closes the calling thread's connections when dropped, on return and on
/// panic alike.
///
/// Create one at the top of a thread you spawn some other way (a
/// `std::thread::scope`, another crate's pool):
///
/// ```
/// std::thread::spawn(|| {
///     let _close = fork_safe::thread::CloseOnExit::new();
///     // ... fork_safe::with_client(...) ...
/// })
/// .join()
/// .unwrap();
/// ```
#[must_use = "the guard closes connections when it is dropped; bind it to a variable"]
#[derive(Debug)]
pub struct CloseOnExit {
    // Tied to the thread whose connections it closes.
    _not_send: PhantomData<*const ()>,
}

impl CloseOnExit {
    /// A guard for the calling thread.
    pub fn new() -> CloseOnExit {
        CloseOnExit {
            _not_send: PhantomData,
        }
    }
}

impl Default for CloseOnExit {
    fn default() -> CloseOnExit {
        CloseOnExit::new()
    }
}

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        close_all();
    }
}

/// Spawns a thread whose connections are closed when `f` returns or panics.
///
/// # Panics
///
/// Like [`std::thread::spawn`], if the operating system cannot create a
/// thread; use [`Builder::spawn`] to get the error instead.
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Builder::new().spawn(f).expect("failed to spawn thread")
}

/// [`std::thread::Builder`] for threads that close their connections when
/// they end.
#[derive(Debug)]
pub struct Builder {
    inner: std::thread::Builder,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder::new()
    }
}

impl Builder {
    /// A builder with the standard library's defaults.
    pub fn new() -> Builder {
        Builder {
            inner: std::thread::Builder::new(),
        }
    }

    /// Names the thread (shown in panics, `/proc` and [`crate::stats`]).
    pub fn name(self, name: String) -> Builder {
        Builder {
            inner: self.inner.name(name),
        }
    }

    /// Sets the thread's stack size in bytes.
    pub fn stack_size(self, size: usize) -> Builder {
        Builder {
            inner: self.inner.stack_size(size),
        }
    }

    /// Spawns the thread.
    ///
    /// # Errors
    ///
    /// If the operating system cannot create a thread.
    pub fn spawn<F, T>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.inner.spawn(move || {
            let _close = CloseOnExit::new();
            f()
        })
    }
}
