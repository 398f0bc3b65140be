//! Statement deadlines: a job's statement is cancelled at its timeout, and
//! only that statement.
//!
//! A `--sql` job (or a Rust job's statements) runs on its worker's own
//! connection while the worker waits for the answer, so someone else must
//! end it: one watchdog thread per child. Before a worker sends a job's
//! statement it arms its slot with the deadline and the connection's
//! canceller (its cancel key and TLS settings); after the answer it
//! disarms it. At a deadline the
//! watchdog sends the server a cancel request for that one connection (what
//! `pg_cancel_backend` does), which ends the statement with SQLSTATE 57014
//! and rolls back what it did; neighbours on other connections never notice.
//!
//! # The late cancel
//!
//! The server handles a cancel request asynchronously: it may arrive after
//! the statement ended, while the connection already runs the worker's next
//! statement (recording outcomes, say), and cancel that one. So a worker
//! whose slot fired ([`Armed::disarm`] returns `true`) discards the
//! connection as soon as its statement returns, whatever it returned; a
//! late cancel then reaches a session nobody uses.
//!
//! # Scenarios
//!
//! - The statement ends first: disarm takes the slot back; no cancel.
//! - The deadline passes first: the watchdog marks the slot fired, sends
//!   the cancel outside the lock, and the statement fails with 57014; the
//!   worker sees "fired" and the code, and calls it a timeout.
//! - Both at once: the statement's own answer (done, or its own error) is
//!   the outcome; the fired flag still retires the connection.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::conn::Canceller;

/// A child's statement deadlines and the watchdog thread that enforces
/// them.
pub(super) struct Deadlines {
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
}

struct Shared {
    slots: Mutex<Slots>,
    changed: Condvar,
}

struct Slots {
    /// One per worker.
    armed: Vec<Option<Slot>>,
    stop: bool,
}

struct Slot {
    deadline: Instant,
    canceller: Canceller,
    fired: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Deadlines {
    /// Deadlines for `workers` workers, and the watchdog thread.
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    pub(super) fn start(workers: usize) -> std::io::Result<Deadlines> {
        let shared = Arc::new(Shared {
            slots: Mutex::new(Slots {
                armed: (0..workers).map(|_| None).collect(),
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let watched = shared.clone();
        let watchdog = std::thread::Builder::new()
            .name("deadlines".to_owned())
            .spawn(move || watch(&watched))?;
        Ok(Deadlines {
            shared,
            watchdog: Some(watchdog),
        })
    }

    /// Arms `worker`'s slot: cancel the statement running on the
    /// connection `canceller` belongs to if it still runs `timeout` from
    /// now.
    pub(super) fn arm(&self, worker: usize, timeout: Duration, canceller: Canceller) -> Armed<'_> {
        let mut slots = self.shared.lock();
        slots.armed[worker] = Some(Slot {
            deadline: Instant::now() + timeout,
            canceller,
            fired: false,
        });
        drop(slots);
        self.shared.changed.notify_one();
        Armed {
            deadlines: self,
            worker,
        }
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_one();
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

/// An armed deadline; disarm it once the statement returned.
#[must_use = "disarm it when the statement returns, to learn whether it was cancelled"]
pub(super) struct Armed<'a> {
    deadlines: &'a Deadlines,
    worker: usize,
}

impl Armed<'_> {
    /// Takes the slot back; `true` if the watchdog sent a cancel for it (the
    /// connection must then be discarded: see the module docs).
    pub(super) fn disarm(self) -> bool {
        let fired = self.take();
        std::mem::forget(self);
        fired
    }

    fn take(&self) -> bool {
        let mut slots = self.deadlines.shared.lock();
        slots.armed[self.worker].take().is_some_and(|s| s.fired)
    }
}

impl Drop for Armed<'_> {
    /// A statement that panicked leaves no deadline behind.
    fn drop(&mut self) {
        self.take();
    }
}

/// The watchdog: sleeps until the earliest deadline, then cancels every
/// statement past its own.
fn watch(shared: &Shared) {
    let mut slots = shared.lock();
    loop {
        if slots.stop {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for slot in slots.armed.iter_mut().flatten().filter(|s| !s.fired) {
            if slot.deadline <= now {
                slot.fired = true;
                due.push(slot.canceller.clone());
            } else {
                next = Some(next.map_or(slot.deadline, |n| n.min(slot.deadline)));
            }
        }
        if !due.is_empty() {
            // A cancel request is a connection to the server: never under
            // the lock, which workers take to arm and disarm.
            drop(slots);
            for canceller in due {
                if let Err(e) = canceller.cancel() {
                    log::warn!("cancelling a statement past its job's timeout: {e}");
                }
            }
            slots = shared.lock();
            continue;
        }
        slots = match next {
            Some(at) => {
                shared
                    .changed
                    .wait_timeout(slots, at.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared
                .changed
                .wait(slots)
                .unwrap_or_else(|e| e.into_inner()),
        };
    }
}
