//! Claim pacing: how many jobs one claim brings into the child's local
//! queue, and how many a worker takes from it, both from the pace the
//! child's jobs have been running at.
//!
//! # Scenarios
//!
//! 1. **A fresh child.** The pace is unknown: a claim brings one batch per
//!    worker, a worker takes a `--batch` (a `--sql` batch too).
//! 2. **Quick jobs.** A claim brings up to [`PREFETCH_BATCHES`] batches per
//!    worker (at most [`MAX_CLAIM`]), never more than the workers start
//!    within [`PREFETCH_WINDOW`] (or a quarter of the lease): a job claimed
//!    ahead never waits out its lease in the local queue, and an urgent
//!    job queued behind a backlog waits at most that window of claimed
//!    work. A worker takes a fair share of a deep local queue, up to
//!    [`MAX_TAKE`].
//! 3. **A `--sql` batch** is one statement and one commit, whose jobs run
//!    one after another however many workers share them: it takes as many
//!    as run in [`SQL_TAKE_TIME`], up to [`MAX_SQL_TAKE`], so a fast
//!    statement is not paid for by a commit every few jobs (8 x 64 against
//!    256 jobs per batch: 25,000-30,000 against 41,800-42,200 jobs/s for
//!    `SELECT $1`, 4 x 8).
//! 4. **Slow jobs, one at a time** (`--exec`): no prefetch; the worker
//!    that claims runs what it claimed, a job at a time.
//! 5. **Slow `--sql` statements** (a job takes [`SLOW_STATEMENT`] or
//!    more), and any before the pace is known: a worker takes its fair
//!    share of what waits, down to one job, so the workers run the
//!    statements side by side rather than one batch carrying them all
//!    (3 jobs of 2 s at 1 x 3 ran at 0.5 jobs/s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a worker's batches are sized: what its handler needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::queue) enum Sizing {
    /// Outcomes are recorded apart from the run, grouped across the
    /// child's workers: a fair share of the local queue (scenario 2).
    Shared,
    /// The batch runs and records in one statement (scenario 3).
    Timed,
    /// One job at a time, claimed by the worker that runs it (scenario 4).
    One,
}

/// How many jobs a worker takes from the local queue.
#[derive(Debug, Clone, Copy)]
pub(in crate::queue) struct Size {
    /// At least this many, if they wait (fewer wait: all of them), and the
    /// local queue runs low below this many per worker.
    pub(in crate::queue) min: usize,
    /// At most this many (never under `min`).
    pub(in crate::queue) most: usize,
    /// Whether a worker takes only its fair share of what waits (its
    /// length over the workers), so a deep queue is worked in bigger
    /// batches (fewer commits) and a shallow one spreads over the workers;
    /// else up to `most`, for batches that run as one statement on the
    /// server however many workers share them.
    pub(in crate::queue) share: bool,
}

/// A child's pace and the sizes it sets.
pub(in crate::queue) struct Pace {
    sizing: Sizing,
    threads: usize,
    /// The fleet's `--batch` (1 for [`Sizing::One`]).
    batch: i64,
    lease: Duration,
    /// How long a job has been taking, in nanoseconds (a moving average
    /// over batches; 0 before the first).
    job_nanos: AtomicU64,
}

impl Pace {
    /// The pace of a child of `threads` workers, not yet known.
    pub(in crate::queue) fn new(
        sizing: Sizing,
        threads: usize,
        batch: i64,
        lease: Duration,
    ) -> Pace {
        Pace {
            sizing,
            threads: threads.max(1),
            batch: batch.max(1),
            lease,
            job_nanos: AtomicU64::new(0),
        }
    }

    /// Whether claims bring in batches for all the child's workers.
    pub(in crate::queue) fn prefetching(&self) -> bool {
        self.sizing != Sizing::One
    }

    /// Jobs one claim brings in for the child (scenarios 1, 2 and 4).
    pub(in crate::queue) fn claim_size(&self) -> i64 {
        if !self.prefetching() {
            return self.batch;
        }
        let threads = self.threads as i64;
        let most = (threads * self.batch * PREFETCH_BATCHES).min(MAX_CLAIM);
        let per_job = self.job_nanos.load(Ordering::Relaxed);
        if per_job == 0 {
            return (threads * self.batch).min(most);
        }
        let window = (self.lease / 4).min(PREFETCH_WINDOW);
        let startable = (window.as_nanos() * self.threads as u128 / u128::from(per_job))
            .min(i64::MAX as u128) as i64;
        most.min(startable).max(self.batch)
    }

    /// How many jobs a worker takes from the local queue: at least a
    /// `--batch`, and a fair share (scenario 2) or a timed batch
    /// (scenario 3) above it.
    pub(in crate::queue) fn take_size(&self) -> Size {
        let min = self.batch as usize;
        if self.sizing != Sizing::Timed {
            return Size {
                min,
                most: MAX_TAKE,
                share: true,
            };
        }
        // Before the pace is known, a fair share of what waits, up to a
        // batch: slow statements spread over the workers from the first.
        let per_job = self.job_nanos.load(Ordering::Relaxed);
        if per_job == 0 {
            return Size {
                min: 1,
                most: min,
                share: true,
            };
        }
        if u128::from(per_job) >= SLOW_STATEMENT.as_nanos() {
            // Slow statements: one job a statement, each worker its share,
            // so the workers run them side by side (scenario 5).
            return Size {
                min: 1,
                most: 1,
                share: true,
            };
        }
        let most = (SQL_TAKE_TIME.as_nanos() / u128::from(per_job)).clamp(1, MAX_SQL_TAKE as u128)
            as usize;
        Size {
            min,
            most,
            share: false,
        }
    }

    /// Folds a batch's pace into the child's average (a moving average
    /// weighted 1/8 to the newest).
    pub(in crate::queue) fn observe(&self, jobs: usize, took: Duration) {
        let sample = (took.as_nanos() / jobs.max(1) as u128).min(u64::MAX as u128) as u64;
        let old = self.job_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.job_nanos.store(new.max(1), Ordering::Relaxed);
    }
}

/// Batches per worker one claim brings into a child's local queue.
const PREFETCH_BATCHES: i64 = 8;

/// The most work, in time at the jobs' pace, one claim brings in: what an
/// urgent job queued behind a backlog may wait for.
const PREFETCH_WINDOW: Duration = Duration::from_secs(1);

/// Most jobs one claim brings in.
const MAX_CLAIM: i64 = 1000;

/// Most jobs a worker takes at once from a deep local queue: past this, a
/// bigger batch saves little and holds its row locks longer.
const MAX_TAKE: usize = 64;

/// The time a `--sql` batch is sized to run in: what a job queued behind
/// it waits for at most, and long enough that its commit is a small share.
const SQL_TAKE_TIME: Duration = Duration::from_millis(20);

/// A `--sql` job this slow by itself runs alone in its statement, side by
/// side with others (scenario 5). Not lower: under a loaded server a fast
/// batch's time per job rises with its commit's, and smaller batches for
/// it would only add commits (a threshold of a batch per 20 ms took a
/// fleet at 4 x 8 from 24,000-29,000 down to 6,700-12,500 jobs/s).
const SLOW_STATEMENT: Duration = Duration::from_millis(100);

/// Most jobs one `--sql` batch takes.
const MAX_SQL_TAKE: i64 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_follow_the_pace_within_the_window() {
        let pace = Pace::new(Sizing::Shared, 8, 8, Duration::from_secs(300));
        assert_eq!(pace.claim_size(), 64, "unknown pace: a batch per worker");
        pace.observe(1, Duration::from_millis(10));
        // 8 workers start 800 jobs of 10 ms in a second; at most 8 x 8 x 8.
        assert_eq!(pace.claim_size(), 512);
        let slow = Pace::new(Sizing::Shared, 8, 8, Duration::from_secs(300));
        slow.observe(1, Duration::from_secs(2));
        assert_eq!(slow.claim_size(), 8, "never under a batch");
        let one = Pace::new(Sizing::One, 8, 1, Duration::from_secs(300));
        assert_eq!(one.claim_size(), 1);
        assert!(!one.prefetching());
    }

    #[test]
    fn slow_statements_are_shared_one_at_a_time() {
        let pace = Pace::new(Sizing::Timed, 3, 8, Duration::from_secs(300));
        let size = pace.take_size();
        assert_eq!(
            (size.min, size.most, size.share),
            (1, 8, true),
            "unknown pace: shared"
        );
        pace.observe(1, Duration::from_secs(2));
        let size = pace.take_size();
        assert_eq!((size.min, size.most, size.share), (1, 1, true));
        // A loaded server's fast statements keep their batches (at least
        // a --batch: the take raises `most` to `min`).
        let middling = Pace::new(Sizing::Timed, 3, 8, Duration::from_secs(300));
        middling.observe(1, Duration::from_millis(5));
        let size = middling.take_size();
        assert_eq!((size.min, size.most, size.share), (8, 4, false));
    }

    #[test]
    fn a_timed_batch_runs_in_its_time() {
        let pace = Pace::new(Sizing::Timed, 8, 8, Duration::from_secs(300));
        assert_eq!(pace.take_size().most, 8, "unknown pace: up to a batch");
        pace.observe(100, Duration::from_millis(10));
        // 100 us a job: 200 in 20 ms.
        let size = pace.take_size();
        assert_eq!((size.min, size.most, size.share), (8, 200, false));
        pace.observe(1, Duration::ZERO);
        assert!(pace.take_size().most <= 256);
    }
}
