//! A minimal spin lock that can be held across `fork()`.
//!
//! `std::sync::Mutex` cannot be locked in a `pthread_atfork` prepare handler
//! and released in the parent and child handlers, because its guard is a
//! value on one stack. This lock can: [`SpinLock::lock_raw`] and
//! [`SpinLock::unlock_raw`] are plain atomic operations, and the unlock is
//! async-signal-safe. Critical sections under it are a few instructions long
//! and never do I/O, so spinning (then yielding) is cheap.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked`, so sharing the lock
// between threads only ever hands `&mut T` to one thread at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    pub(crate) const fn new(value: T) -> SpinLock<T> {
        SpinLock {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        self.lock_raw();
        SpinGuard { lock: self }
    }

    /// Takes the lock without a guard; pair with [`SpinLock::unlock_raw`].
    pub(crate) fn lock_raw(&self) {
        let mut spins = 0u32;
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Releases a lock taken by [`SpinLock::lock_raw`]. Async-signal-safe.
    ///
    /// # Safety
    ///
    /// The caller must hold the lock through `lock_raw`, in this process (a
    /// forked child inherits its parent's holding of it).
    pub(crate) unsafe fn unlock_raw(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub(crate) struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard was created by `lock`, which took the lock.
        unsafe { self.lock.unlock_raw() }
    }
}
