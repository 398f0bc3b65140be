//! Floors: where a child's claims start in each queue's priority levels,
//! so that a claim never walks the index entries of jobs already claimed.
//!
//! # Why
//!
//! A claim takes the oldest due jobs of a level, one ordered descent of the
//! queued-jobs index. Claiming a job leaves its old row version dead, and
//! its index entry with it, at the front of the level, until vacuum, or the
//! next scan once no snapshot can see the old version, removes it. While a
//! transaction pins the horizon (an idle session in a transaction, a
//! REPEATABLE READ report, a replica's feedback), nothing removes them:
//! every claim walked every job claimed since, a heap fetch each. Measured
//! at 500 jobs/s (2 x 4, PostgreSQL 15): claims that took 0.2 ms took
//! 140 ms on average after two minutes of a pinned horizon, 235 ms at
//! worst, and would pass a second after ten; and since claims of a queue
//! take turns, each slow one held up all the others.
//!
//! # The rule
//!
//! **A child's floor of a level is the `run_at` of the newest job its
//! claims there took; its claims start the level's scan a [`MARGIN`]
//! earlier.** Claims take a level's due jobs in `run_at` order, and take
//! turns, so once a claim took jobs up to a floor, every job of the level
//! queued below it was taken, by this claim or an earlier one: a scan from
//! the floor passes over nothing it could claim, and over at most the
//! margin's worth of claimed jobs' entries. A level the child holds no
//! floor of is walked from its start, as before; its first claim there sets
//! one.
//!
//! What a floor misses is a job that becomes visible below it: one queued
//! in a transaction that committed more than the margin after it queued it
//! (its `run_at` is its transaction's start), or queued with a `run_at` in
//! the past. Every [`RESCAN_EVERY`] (a shared duty of the `keeper`, not in a
//! claim, so it never holds up the claims' turns) a child reads the first
//! queued job of each level and lowers its floors to them: such a job is
//! claimed within that time. Floors are the child's own, in memory: no
//! statement writes them, so they cost the server nothing and cannot bloat
//! under the same pinned horizon.
//!
//! # Scenarios
//!
//! 1. **No pinned horizon.** Claims start a level near its front; what they
//!    pass over is the last [`MARGIN`] of claimed jobs, whose entries the
//!    scans themselves mark dead as soon as the horizon passes them.
//! 2. **A horizon pinned for ten minutes at 500 jobs/s.** 300,000 claimed
//!    jobs' entries pile up at the level's front; each claim starts past
//!    them, at its floor, and passes over about a thousand.
//! 3. **A job committed late** (its transaction queued it, worked for 10 s,
//!    then committed) into a level whose jobs are being claimed as they
//!    come. Its `run_at` is 10 s older than the floor: the next rescan
//!    finds it and lowers the floor, and the next claim takes it.
//! 4. **A new priority level.** A job queued at a level the child holds no
//!    floor of is found by the claim's walk between the levels it knows
//!    (`claim.sql`), and the claim that takes it sets the level's floor.
//! 5. **Another child claims in between.** Its claims are not this child's
//!    floors: this child's next claim passes over the entries of what the
//!    other took since, a few batches.
//! 6. **A job queued for later.** It is not due, so no claim takes it and
//!    no floor passes it: floors are the `run_at` of jobs claimed, which
//!    were due, and a rescan lowers a floor but never raises one past the
//!    server's clock.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How far before its floor a claim starts a level's scan: room for jobs
/// whose transactions committed a little after others queued later.
pub(super) const MARGIN: Duration = Duration::from_secs(2);

/// How often a child rescans its queues' levels for jobs below its floors
/// (at least: a rescan that took long waits ten times its time).
pub(super) const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// A queue and a priority level of it.
type Level = (String, i32);

/// One child's floors, shared by its workers and its keeper.
#[derive(Debug, Default)]
pub(super) struct Floors {
    /// Per level, the floor: a `run_at` in seconds since the epoch.
    levels: Mutex<HashMap<Level, f64>>,
}

/// Floors as a claim's arguments: three arrays, a level per index.
#[derive(Debug, Default, PartialEq)]
pub(super) struct FloorArgs {
    pub(super) queues: Vec<String>,
    pub(super) levels: Vec<i32>,
    /// Where each level's scan starts (its floor less the [`MARGIN`]).
    pub(super) starts: Vec<f64>,
}

impl Floors {
    fn lock(&self) -> MutexGuard<'_, HashMap<Level, f64>> {
        // Every change is one insert; a panic cannot leave it half made.
        self.levels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the child holds any floor (there is nothing to rescan for
    /// until it does).
    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The floors, as a claim takes them.
    pub(super) fn args(&self) -> FloorArgs {
        let levels = self.lock();
        let mut args = FloorArgs::default();
        for ((queue, level), floor) in levels.iter() {
            args.queues.push(queue.clone());
            args.levels.push(*level);
            args.starts.push(floor - MARGIN.as_secs_f64());
        }
        args
    }

    /// A claim took jobs of `queue` at `level` up to `run_at`: the floor
    /// rises to it.
    pub(super) fn raise(&self, queue: &str, level: i32, run_at: f64) {
        let mut levels = self.lock();
        let floor = levels.entry((queue.to_owned(), level)).or_insert(run_at);
        *floor = floor.max(run_at);
    }

    /// A rescan found the first queued job of `queue` at `level` at
    /// `run_at` (at most the server's clock): the floor falls to it, or
    /// is set if the child had none.
    pub(super) fn lower(&self, queue: &str, level: i32, run_at: f64) {
        let mut levels = self.lock();
        let floor = levels.entry((queue.to_owned(), level)).or_insert(run_at);
        *floor = floor.min(run_at);
    }
}

/// When the rescan after one that took `took` is due, from its end.
pub(super) fn rescan_after(took: Duration) -> Duration {
    RESCAN_EVERY.max(took.saturating_mul(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(floors: &Floors, queue: &str, level: i32) -> Option<f64> {
        let args = floors.args();
        (0..args.queues.len())
            .find(|&i| args.queues[i] == queue && args.levels[i] == level)
            .map(|i| args.starts[i])
    }

    #[test]
    fn claims_raise_floors_and_rescans_lower_them() {
        let floors = Floors::default();
        assert!(floors.is_empty());
        assert_eq!(
            start(&floors, "a", 0),
            None,
            "no floor: walked from the start"
        );
        floors.raise("a", 0, 100.0);
        floors.raise("a", 0, 90.0);
        assert_eq!(
            start(&floors, "a", 0),
            Some(98.0),
            "the newest claimed, less the margin"
        );
        floors.raise("a", 0, 105.0);
        assert_eq!(start(&floors, "a", 0), Some(103.0));
        floors.lower("a", 0, 50.0);
        assert_eq!(start(&floors, "a", 0), Some(48.0), "a late job found below");
        floors.lower("a", 0, 70.0);
        assert_eq!(start(&floors, "a", 0), Some(48.0), "a rescan never raises");
        floors.lower("b", 3, 10.0);
        assert_eq!(
            start(&floors, "b", 3),
            Some(8.0),
            "a level first seen by a rescan"
        );
        assert_eq!(start(&floors, "a", 3), None);
    }

    #[test]
    fn a_slow_rescan_waits_ten_times_its_time() {
        assert_eq!(rescan_after(Duration::from_millis(20)), RESCAN_EVERY);
        assert_eq!(
            rescan_after(Duration::from_secs(2)),
            Duration::from_secs(20)
        );
    }
}
