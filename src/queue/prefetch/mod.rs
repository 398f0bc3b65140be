//! A child's local queue: the jobs one claim brought in for all its
//! workers.
//!
//! Claiming is the server's most expensive step per job, and the claims
//! of a queue take turns on the server. So a child claims for all its
//! workers at once, a few batches' worth, and its
//! workers take their batches from here; one worker claims at a time and
//! the others wait for it rather than claim beside it.
//!
//! Every job keeps the owner stamp of the claim that brought it in (one
//! per claim, `host:pid/worker.seq`), and a batch never mixes claims, so a
//! batch's outcome is recorded, and a lost claim released, by exactly the
//! stamp the server holds.
//!
//! # Scenarios
//!
//! 1. **Work in the queue.** A worker takes a batch ([`Prefetch::take`]).
//! 2. **Empty, nobody claiming.** The worker becomes the claimer
//!    ([`Prefetch::take`] says [`Take::Claim`]), claims outside the lock,
//!    keeps a batch and puts the rest here ([`Claiming::fill`]), which
//!    wakes the workers waiting.
//! 3. **Empty, another worker claiming.** The worker waits for that claim
//!    (a condition variable, at most [`CLAIM_WAIT`]) and takes from it.
//! 4. **The claim finds nothing.** The claimer fills nothing; the waiting
//!    workers wake to an empty queue and nobody claiming, and go idle
//!    ([`Take::Empty`]) rather than claim again at once.
//! 5. **The claimer fails or panics.** Dropping its [`Claiming`] ends the
//!    claim like an empty one.
//! 6. **Stop.** Whatever is left is handed back at once
//!    ([`Prefetch::drain`]), not at lease expiry.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::store::Job;

mod pace;

pub(super) use pace::{Pace, Size, Sizing};

/// Longest a worker waits for another worker's claim.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// A batch: jobs of one claim, and that claim's owner stamp.
#[derive(Debug, Clone, Default)]
pub(super) struct Batch {
    pub(super) owner: Arc<str>,
    pub(super) jobs: Vec<Job>,
}

/// One child's local queue.
pub(super) struct Prefetch {
    state: Mutex<State>,
    filled: Condvar,
    /// The child's workers, who share what waits here.
    workers: usize,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<(Arc<str>, Job)>,
    claiming: bool,
    /// Bumped by every claim that ends, so a waiter knows one did.
    claims: u64,
    /// The last claim brought all it asked for: there is probably more.
    full: bool,
}

/// What [`Prefetch::take`] found.
pub(super) enum Take<'a> {
    /// A batch to run, and, when what is left here runs low while the last
    /// claim came back full, the right to claim ahead first (so the next
    /// claim is in flight while the other workers still have jobs).
    Batch(Batch, Option<Claiming<'a>>),
    /// Nothing here and nobody claiming: this worker claims.
    Claim(Claiming<'a>),
    /// A claim just found nothing: go idle.
    Empty,
}

impl Prefetch {
    pub(super) fn new(workers: usize) -> Prefetch {
        Prefetch {
            state: Mutex::new(State::default()),
            filled: Condvar::new(),
            workers: workers.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch of one claim, sized by `size` (see [`Size`]); or the right
    /// to claim, or the news that a claim just found nothing.
    pub(super) fn take(&self, size: Size) -> Take<'_> {
        let mut state = self.lock();
        let min = size.min;
        let max = match size.share {
            true => min.max(state.jobs.len() / self.workers),
            false => usize::MAX,
        }
        .min(size.most.max(min));
        if state.jobs.is_empty() && state.claiming {
            let seen = state.claims;
            state = self
                .filled
                .wait_timeout_while(state, CLAIM_WAIT, |s| s.claiming && s.claims == seen)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if state.jobs.is_empty() && state.claims != seen {
                return Take::Empty;
            }
        }
        if let Some(batch) = take_batch(&mut state, max) {
            let low = state.jobs.len() < self.workers * min;
            let ahead = (low && state.full && !state.claiming).then(|| {
                state.claiming = true;
                Claiming { prefetch: self }
            });
            return Take::Batch(batch, ahead);
        }
        if state.claiming {
            // Still claiming after the wait: let this worker go idle and
            // come back, rather than claim beside it.
            return Take::Empty;
        }
        state.claiming = true;
        Take::Claim(Claiming { prefetch: self })
    }

    /// Puts what the idle leader's claim by `owner` brought in (a claim
    /// outside [`Prefetch::take`]'s turns: it claims the moment a
    /// notification comes), keeps the first `keep` for the leader, and
    /// wakes the waiting workers; how many remain queued here.
    pub(super) fn put(&self, owner: &Arc<str>, mut jobs: Vec<Job>, keep: usize) -> (Batch, usize) {
        let rest = jobs.split_off(keep.min(jobs.len()));
        let queued = {
            let mut state = self.lock();
            state
                .jobs
                .extend(rest.into_iter().map(|job| (owner.clone(), job)));
            state.jobs.len()
        };
        self.filled.notify_all();
        (
            Batch {
                owner: owner.clone(),
                jobs,
            },
            queued,
        )
    }

    /// Whether the last claim brought less than it asked for (or none was
    /// made yet): the queue may be running dry.
    pub(super) fn ran_short(&self) -> bool {
        !self.lock().full
    }

    /// Every job still here, by claim: to hand back.
    pub(super) fn drain(&self) -> Vec<Batch> {
        let mut state = self.lock();
        let mut batches = Vec::new();
        while let Some(batch) = take_batch(&mut state, usize::MAX) {
            batches.push(batch);
        }
        batches
    }
}

/// Takes up to `max` jobs, all of the first job's claim.
fn take_batch(state: &mut State, max: usize) -> Option<Batch> {
    let owner = state.jobs.front()?.0.clone();
    let mut jobs = Vec::new();
    while jobs.len() < max && state.jobs.front().is_some_and(|(o, _)| *o == owner) {
        if let Some((_, job)) = state.jobs.pop_front() {
            jobs.push(job);
        }
    }
    Some(Batch { owner, jobs })
}

/// The right to claim for the child; dropping it without filling ends the
/// claim as one that found nothing.
#[must_use = "fill it with what the claim brought, or drop it if the claim failed"]
pub(super) struct Claiming<'a> {
    prefetch: &'a Prefetch,
}

impl Claiming<'_> {
    /// Puts what a claim by `owner` brought in (`full`: all it asked for),
    /// keeps the first `keep` jobs for the claimer, and wakes the waiting
    /// workers; how many remain queued here.
    pub(super) fn fill(
        self,
        owner: &Arc<str>,
        jobs: Vec<Job>,
        keep: usize,
        full: bool,
    ) -> (Batch, usize) {
        self.prefetch.lock().full = full;
        // Dropping `self` right after ends the claim and wakes the waiters.
        self.prefetch.put(owner, jobs, keep)
    }
}

impl Drop for Claiming<'_> {
    /// Ends the claim; one that did not fill found nothing (or failed).
    fn drop(&mut self) {
        let mut state = self.prefetch.lock();
        if state.claiming && state.jobs.is_empty() {
            state.full = false;
        }
        state.claiming = false;
        state.claims += 1;
        drop(state);
        self.prefetch.filled.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(min: usize) -> Size {
        Size {
            min,
            most: 64,
            share: true,
        }
    }

    fn job(id: i64) -> Job {
        Job {
            kind: "default".to_owned(),
            id,
            queue: "q".into(),
            payload: String::new(),
            attempt: 1,
            priority: 0,
            timeout: None,
            max_attempts: 5,
            suspect: false,
        }
    }

    #[test]
    fn the_claimer_keeps_a_batch_and_the_rest_is_taken_in_batches() {
        let prefetch = Prefetch::new(8);
        let Take::Claim(claiming) = prefetch.take(shared(2)) else {
            panic!("an empty queue makes the first worker the claimer");
        };
        let a: Arc<str> = Arc::from("h:1/0.1");
        let (mine, queued) = claiming.fill(&a, (1..=5).map(job).collect(), 2, false);
        assert_eq!((mine.jobs.len(), queued), (2, 3));
        let ids = |take: Take<'_>| match take {
            Take::Batch(b, _) => b.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
            _ => panic!("a batch was expected"),
        };
        assert_eq!(ids(prefetch.take(shared(2))), [3, 4]);
        assert_eq!(ids(prefetch.take(shared(2))), [5]);
        assert!(
            matches!(prefetch.take(shared(2)), Take::Claim(_)),
            "empty again"
        );
    }

    #[test]
    fn a_deep_queue_is_taken_in_fair_shares() {
        let prefetch = Prefetch::new(2);
        let Take::Claim(claiming) = prefetch.take(shared(2)) else {
            panic!("the first worker claims");
        };
        let owner: Arc<str> = Arc::from("h:1/0.1");
        let _ = claiming.fill(&owner, (1..=300).map(job).collect(), 0, false);
        let sizes: Vec<usize> = std::iter::from_fn(|| match prefetch.take(shared(2)) {
            Take::Batch(b, ahead) => {
                assert!(ahead.is_none(), "the claim was not full: no claim ahead");
                Some(b.jobs.len())
            }
            _ => None,
        })
        .collect();
        // Half of what waits, at most 64, never under the minimum.
        assert_eq!(sizes[..5], [64, 64, 64, 54, 27]);
        assert_eq!(sizes.iter().sum::<usize>(), 300);
        assert!(sizes.iter().all(|n| *n >= 1));
    }

    #[test]
    fn a_statement_batch_takes_up_to_its_most_whatever_the_share() {
        let prefetch = Prefetch::new(8);
        let whole = Size {
            min: 8,
            most: 256,
            share: false,
        };
        let Take::Claim(claiming) = prefetch.take(whole) else {
            panic!("the first worker claims");
        };
        let owner: Arc<str> = Arc::from("h:1/0.1");
        let _ = claiming.fill(&owner, (1..=300).map(job).collect(), 8, false);
        let sizes: Vec<usize> = std::iter::from_fn(|| match prefetch.take(whole) {
            Take::Batch(b, _) => Some(b.jobs.len()),
            _ => None,
        })
        .collect();
        // A fair share would be 292 / 8 = 36.
        assert_eq!(sizes, [256, 36]);
    }

    #[test]
    fn a_full_claim_running_low_claims_ahead_once() {
        let prefetch = Prefetch::new(2);
        let Take::Claim(claiming) = prefetch.take(shared(2)) else {
            panic!("the first worker claims");
        };
        let owner: Arc<str> = Arc::from("h:1/0.1");
        let _ = claiming.fill(&owner, (1..=8).map(job).collect(), 0, true);
        // 8 waiting, low water 2 x 2 = 4: the first take leaves 4.
        let Take::Batch(_, None) = prefetch.take(shared(2)) else {
            panic!("not low yet");
        };
        let Take::Batch(_, Some(ahead)) = prefetch.take(shared(2)) else {
            panic!("low after a full claim: claim ahead");
        };
        let Take::Batch(_, None) = prefetch.take(shared(2)) else {
            panic!("one claim ahead at a time");
        };
        drop(ahead);
    }

    #[test]
    fn batches_never_mix_claims() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("h:1/0.1"), Arc::from("h:1/1.1"));
        let mut state = State::default();
        state.jobs.extend([
            (a.clone(), job(1)),
            (a.clone(), job(2)),
            (b.clone(), job(3)),
        ]);
        let first = take_batch(&mut state, 10).unwrap();
        assert_eq!((first.owner, first.jobs.len()), (a, 2));
        let second = take_batch(&mut state, 10).unwrap();
        assert_eq!((second.owner, second.jobs.len()), (b, 1));
        assert!(take_batch(&mut state, 10).is_none());
    }

    #[test]
    fn a_claim_that_found_nothing_sends_the_waiters_idle() {
        let prefetch = Arc::new(Prefetch::new(1));
        let Take::Claim(claiming) = prefetch.take(shared(8)) else {
            panic!("the first worker claims");
        };
        let waiter = {
            let prefetch = prefetch.clone();
            std::thread::spawn(move || matches!(prefetch.take(shared(8)), Take::Empty))
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(claiming);
        assert!(waiter.join().unwrap(), "the waiter goes idle");
    }
}
