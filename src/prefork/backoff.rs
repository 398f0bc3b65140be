//! When to start a worker slot's next child after its last one died, and
//! a worker's next resident program after its last one failed: one
//! schedule for both ([`restart_delay`]), with a cap each.
//!
//! The first death restarts at once. A child that dies young again and
//! again is restarted after an exponentially growing delay, capped, so a
//! crash loop neither spins the CPU nor kills the master. "Young" means it
//! never became ready, or died within [`YOUNG`] without finishing a single
//! task: a child that did useful work is not crash-looping (a killed or
//! recycled worker is replaced at once), and one that lives long enough or
//! finishes a task resets the slot.

use std::time::Duration;

/// A child that dies before this age without finishing a task, or before it
/// is ready, "died young".
pub(crate) const YOUNG: Duration = Duration::from_secs(2);
const BASE: Duration = Duration::from_millis(100);
/// The longest wait before a slot's next child.
const CAP: Duration = Duration::from_secs(5);
/// The longest wait before a worker's next resident program: longer than
/// a child's, since the worker hands its jobs back meanwhile and the fleet
/// goes on without it.
#[cfg(feature = "queue")]
pub(crate) const PROGRAM_CAP: Duration = Duration::from_secs(10);

/// How long to wait before the next start after `failures` in a row: none
/// after the first (one crash, one bad job, costs nothing more), then
/// 100 ms, doubling, at most `cap`.
pub(crate) fn restart_delay(failures: u32, cap: Duration) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => BASE.saturating_mul(1 << (n - 2).min(16)).min(cap),
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Backoff {
    /// Consecutive young deaths in this slot.
    pub(crate) young_deaths: u32,
}

impl Backoff {
    /// Records a death; returns how long to wait before respawning.
    pub(crate) fn on_death(
        &mut self,
        lifetime: Duration,
        was_ready: bool,
        did_work: bool,
    ) -> Duration {
        if was_ready && (lifetime >= YOUNG || did_work) {
            self.young_deaths = 0;
            return Duration::ZERO;
        }
        self.young_deaths += 1;
        restart_delay(self.young_deaths, CAP)
    }

    /// A child of this slot has lived long enough: forget past deaths.
    pub(crate) fn reset(&mut self) {
        self.young_deaths = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_death_is_immediate_then_doubles_to_a_cap() {
        let mut b = Backoff::default();
        let young = Duration::from_millis(10);
        let delays: Vec<_> = (0..8).map(|_| b.on_death(young, true, false)).collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[1], Duration::from_millis(100));
        assert_eq!(delays[2], Duration::from_millis(200));
        assert_eq!(delays[7], CAP);
        assert_eq!(b.young_deaths, 8);
    }

    #[test]
    fn a_long_life_resets() {
        let mut b = Backoff::default();
        b.on_death(Duration::ZERO, false, false);
        b.on_death(Duration::ZERO, false, false);
        assert_eq!(
            b.on_death(Duration::from_secs(60), true, false),
            Duration::ZERO
        );
        assert_eq!(b.young_deaths, 0);
        // Never becoming ready is young whatever the age (boot timeout).
        assert_eq!(
            b.on_death(Duration::from_secs(60), false, false),
            Duration::ZERO
        );
        assert_eq!(b.young_deaths, 1);
    }

    #[test]
    fn a_child_that_did_work_is_not_crash_looping() {
        let mut b = Backoff::default();
        b.on_death(Duration::ZERO, false, false);
        b.on_death(Duration::ZERO, false, false);
        let short = Duration::from_millis(50);
        assert_eq!(b.on_death(short, true, true), Duration::ZERO);
        assert_eq!(b.young_deaths, 0);
    }
}
