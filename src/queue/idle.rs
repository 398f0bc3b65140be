//! The idle workers of one child: one leader, the rest followers.
//!
//! A child whose workers have nothing to do should hold one connection, not
//! one per worker, and still start a new job within a round trip of its
//! enqueue. So its idle workers split the roles:
//!
//! - the **leader** keeps its connection, `LISTEN`s for new jobs and claims
//!   them on that connection the moment a notification comes (no connect on
//!   the way), polls every `--poll` for work that came without one (retries
//!   coming due), and does the child's housekeeping;
//! - the **followers** sleep until woken, and close their connections
//!   once they have slept [`LINGER`]: the workers of a busy child go idle
//!   and are woken again many times a second, and each new connection
//!   costs the server a process started cold (its caches, its plans).
//!
//! There is at most one leader ([`Idle::try_lead`] hands out one
//! [`Leadership`] at a time; dropping it, on any path, frees the lead).
//!
//! # Scenarios
//!
//! 1. **A job comes to an idle child.** The leader's notification arrives;
//!    it claims on its connection and, holding jobs, hands the lead off
//!    ([`Leadership::hand_off`]): the lead is `HandedOff` and one follower
//!    is woken to stand by.
//! 2. **The job is short** (the common case). The old leader finishes
//!    within [`HANDOFF_GRACE`], finds nothing more to claim, and retakes
//!    the lead on the connection it still has, which wakes the standing-by
//!    follower at once ([`Idle::try_lead`] notifies it); the follower goes
//!    back to sleep without ever connecting. One connection throughout.
//! 3. **The job is long.** [`HANDOFF_GRACE`] passes with the lead still
//!    handed off: the standing-by follower takes it, connects and listens,
//!    so the child hears of new jobs while its old leader works. When the
//!    old leader is done, the lead is held: it becomes a follower and
//!    closes its connection.
//! 4. **A burst.** A worker that claimed a full batch wakes one more worker
//!    ([`Idle::wake_one_more`]); a follower woken that way (the lead is not
//!    handed off) goes to claim, and if it too fills a batch, it wakes the
//!    next. The burst spreads over the threads one claim at a time, and
//!    ends with the workers finding nothing and going back to sleep.
//! 5. **The leader fails** (its connection breaks, the server restarts).
//!    Its [`Leadership`] is dropped with the error: the lead is free, and
//!    the next worker to go idle takes it.
//! 6. **Stop.** The child's stop wakes every worker; the leader sees the
//!    stop flag within its 100 ms listening slice, the followers at once; a
//!    follower standing by for a handoff waits at most [`HANDOFF_GRACE`].
//!
//! Waiting is on condition variables throughout: a follower standing by
//! returns the moment the lead is retaken, and no worker sleeps for a fixed
//! time to let another act.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::prefork::{Wake, Waker, Worker};

/// How long a follower woken by a handoff stands by for the old leader to
/// come back before it takes the lead itself: longer than a short job,
/// short enough that a long one leaves the child deaf only briefly.
pub(super) const HANDOFF_GRACE: Duration = Duration::from_millis(20);

/// How long a follower keeps its connection while asleep.
pub(super) const LINGER: Duration = Duration::from_secs(1);

/// Who has the lead of a child's idle workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    /// Nobody: the next idle worker takes it.
    Free,
    /// An idle worker leads.
    Held,
    /// The leader took jobs at this moment; a follower stands by.
    HandedOff(Instant),
}

/// The protocol's state for one child.
pub(super) struct Idle {
    lead: Mutex<Lead>,
    /// Signalled whenever the lead stops being handed off.
    settled: Condvar,
    waker: Waker,
}

/// What a follower woke up to.
pub(super) enum Woken<'a> {
    /// Work for one more worker: go and claim.
    Claim,
    /// The lead, taken after a handoff nobody came back for.
    Lead(Leadership<'a>),
    /// The child is stopping.
    Stop,
}

impl Idle {
    pub(super) fn new(waker: Waker) -> Idle {
        Idle {
            lead: Mutex::new(Lead::Free),
            settled: Condvar::new(),
            waker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lead> {
        // Nothing panics while holding it: a poisoned lock holds a
        // consistent value.
        self.lead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the lead if nobody holds it, including one handed off and not
    /// yet taken (the old leader coming back: scenario 2).
    pub(super) fn try_lead(&self) -> Option<Leadership<'_>> {
        let mut lead = self.lock();
        match *lead {
            Lead::Held => None,
            Lead::Free | Lead::HandedOff(_) => {
                let handed_off = matches!(*lead, Lead::HandedOff(_));
                *lead = Lead::Held;
                drop(lead);
                if handed_off {
                    self.settled.notify_all();
                }
                Some(Leadership(self))
            }
        }
    }

    /// A worker claimed a full batch: there is probably more, so one more
    /// worker should claim (scenario 4).
    pub(super) fn wake_one_more(&self) {
        self.waker.wake_one();
    }

    /// Sleeps as a follower until there is something to do, calling
    /// `let_go` (which closes the worker's connection) once it has slept
    /// [`LINGER`].
    pub(super) fn follow(&self, worker: &Worker, let_go: impl FnOnce()) -> Woken<'_> {
        let mut let_go = Some(let_go);
        loop {
            let nap = match let_go {
                Some(_) => LINGER,
                None => Duration::from_secs(3600),
            };
            match worker.sleep(nap) {
                Wake::Stopping => return Woken::Stop,
                Wake::TimedOut => {
                    if let Some(let_go) = let_go.take() {
                        let_go();
                    }
                    continue;
                }
                Wake::Woken => {}
            }
            let lead = self.lock();
            let Lead::HandedOff(since) = *lead else {
                return Woken::Claim;
            };
            if let Some(leadership) = self.stand_by(lead, since) {
                return Woken::Lead(leadership);
            }
        }
    }

    /// Waits for the old leader to retake the lead it handed off at
    /// `since`; takes it if it has not by the end of the grace.
    fn stand_by(&self, lead: MutexGuard<'_, Lead>, since: Instant) -> Option<Leadership<'_>> {
        let left = HANDOFF_GRACE.saturating_sub(since.elapsed());
        let (mut lead, _) = self
            .settled
            .wait_timeout_while(lead, left, |l| *l == Lead::HandedOff(since))
            .unwrap_or_else(|e| e.into_inner());
        if *lead == Lead::HandedOff(since) {
            *lead = Lead::Held;
            return Some(Leadership(self));
        }
        None
    }
}

/// The lead of a child's idle workers. Dropped on any path (jobs found,
/// stop, error, panic), it frees the lead.
#[must_use = "dropping the leadership frees the lead at once"]
pub(super) struct Leadership<'a>(&'a Idle);

impl Leadership<'_> {
    /// The leader took jobs: the lead is handed off and a follower stands
    /// by to take it unless the leader is back first (scenarios 1-3).
    pub(super) fn hand_off(self) {
        let idle = self.0;
        std::mem::forget(self);
        *idle.lock() = Lead::HandedOff(Instant::now());
        idle.waker.wake_one();
    }
}

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        *self.0.lock() = Lead::Free;
        self.0.settled.notify_all();
    }
}
