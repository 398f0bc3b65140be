//! A child's suspects run alone: one at a time in the child, each in a
//! batch of its own, so that when the child dies while one runs, no other
//! suspect was running beside it and the death is charged to that one job
//! (the rule is in `lease`, "Attempts when a holder dies").
//!
//! A worker whose batch holds suspects runs the others first, then waits
//! for the child's one turn for each suspect. While it waits its suspects
//! are not running (the board does not hold them, see
//! [`Worker::hold_jobs`](crate::prefork::Worker::hold_jobs)): if the child
//! dies then, they go back with their attempt given back. A stop ends the
//! wait, and the suspects are handed back unstarted.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The child's one turn to run a suspect.
#[derive(Debug, Default)]
pub(super) struct Alone {
    taken: Mutex<bool>,
    freed: Condvar,
}

/// The turn, held while a suspect runs; given up when dropped.
#[must_use = "the turn is given up when dropped"]
pub(super) struct Turn<'a>(&'a Alone);

/// How often a waiting worker looks whether its child is stopping.
const LOOK: Duration = Duration::from_millis(100);

impl Alone {
    /// Waits for the turn; `None` once `stopping` says the child stops.
    pub(super) fn turn(&self, stopping: impl Fn() -> bool) -> Option<Turn<'_>> {
        let mut taken = self.lock();
        while *taken {
            if stopping() {
                return None;
            }
            taken = self
                .freed
                .wait_timeout(taken, LOOK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *taken = true;
        Some(Turn(self))
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        // A panic while holding this lock leaves a plain flag behind.
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.0.lock() = false;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn one_turn_at_a_time() {
        let alone = Arc::new(Alone::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (alone, inside, most) = (alone.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let _turn = alone.turn(|| false).unwrap();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_stop_ends_the_wait() {
        let alone = Alone::default();
        let _held = alone.turn(|| false).unwrap();
        let stopping = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| alone.turn(|| stopping.load(Ordering::SeqCst)).is_none());
            std::thread::sleep(Duration::from_millis(50));
            stopping.store(true, Ordering::SeqCst);
            assert!(waiter.join().unwrap());
        });
    }
}
