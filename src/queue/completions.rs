//! A child's finished jobs waiting to be recorded: its workers record their
//! outcomes together, many claims' in one statement and one commit.
//!
//! Per job, recording costs the server less the more jobs one statement
//! records (measured with pgbench, 4 clients: 58 µs of machine CPU per job
//! in statements of 16 jobs, 30 µs in statements of 128). Each worker
//! recording its own batch makes many small statements; so a worker that
//! finishes a batch adds its outcomes here and goes on to its next batch,
//! and one worker at a time, the recorder, records everything waiting.
//! Under load, batches pile up while a statement is in flight and the next
//! statement records them all: the busier the child, the bigger the groups.
//!
//! A job stays in the child's hands (its claim stays live, see
//! `QueueApp::let_go`) until its outcome is recorded or handed back.
//!
//! # Scenarios
//!
//! 1. **Nobody recording.** A worker adding outcomes ([`Completions::add`])
//!    becomes the recorder: it records in a loop ([`Recording::next`])
//!    until nothing waits, then its turn ends.
//! 2. **A recorder at work.** A worker adding outcomes leaves them to it.
//!    The recorder looks for more under the same lock that ends its turn,
//!    so outcomes added while its statement was in flight are never left
//!    behind: either it sees them, or their adder sees no recorder and
//!    records them itself.
//! 3. **The recorder fails** (its connection is lost). The group it took
//!    is its to hand back, like a batch whose outcome could not be recorded;
//!    dropping the [`Recording`] ends its turn. Outcomes that arrived
//!    meanwhile wait for the next adder, or for the failed worker's next
//!    round, which records what waits with no recorder
//!    ([`Completions::turn`]).
//! 4. **Stop.** A worker leaving records what waits with no recorder; a
//!    recorder at work finishes its loop before its own worker leaves, so
//!    nothing waits when the last worker is gone.

use std::sync::{Mutex, MutexGuard};

use super::store::Finished;

/// Most jobs one statement records; the rest wait for the next.
const MAX_GROUP: usize = 2000;

/// One child's outcomes waiting to be recorded.
#[derive(Default)]
pub(super) struct Completions {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Finished>,
    recording: bool,
}

impl Completions {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent state (a push
        // or a swap), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds outcomes to record; the turn to record them if no one is
    /// recording.
    pub(super) fn add(&self, finished: Vec<Finished>) -> Option<Recording<'_>> {
        let mut state = self.lock();
        state.waiting.extend(finished);
        self.claim_turn(&mut state)
    }

    /// The turn to record what waits, if something waits and no one is
    /// recording it (a recorder failed).
    pub(super) fn turn(&self) -> Option<Recording<'_>> {
        let mut state = self.lock();
        if state.waiting.is_empty() {
            return None;
        }
        self.claim_turn(&mut state)
    }

    fn claim_turn(&self, state: &mut State) -> Option<Recording<'_>> {
        if state.recording {
            return None;
        }
        state.recording = true;
        Some(Recording {
            completions: self,
            ended: false,
        })
    }
}

/// A worker's turn to record the child's waiting outcomes; dropping it ends
/// the turn.
#[must_use = "outcomes wait for this turn to record them"]
pub(super) struct Recording<'a> {
    completions: &'a Completions,
    ended: bool,
}

impl Recording<'_> {
    /// The next group to record (at most [`MAX_GROUP`] jobs), or `None`
    /// when nothing waits, which ends the turn.
    pub(super) fn next(&mut self) -> Option<Vec<Finished>> {
        if self.ended {
            return None;
        }
        let mut state = self.completions.lock();
        if state.waiting.is_empty() {
            state.recording = false;
            self.ended = true;
            return None;
        }
        // The oldest first: they have waited longest.
        let group = if state.waiting.len() <= MAX_GROUP {
            std::mem::take(&mut state.waiting)
        } else {
            state.waiting.drain(..MAX_GROUP).collect()
        };
        Some(group)
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.completions.lock().recording = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::queue::Job;

    fn finished(owner: &str, ids: std::ops::Range<i64>) -> Vec<Finished> {
        let owner: Arc<str> = Arc::from(owner);
        ids.map(|id| Finished {
            owner: owner.clone(),
            job: Job {
                kind: "default".to_owned(),
                id,
                queue: "q".to_owned(),
                payload: String::new(),
                attempt: 1,
                priority: 0,
                timeout: None,
                max_attempts: 5,
                suspect: false,
            },
            outcome: Ok(String::new()),
        })
        .collect()
    }

    fn ids(group: &[Finished]) -> Vec<i64> {
        group.iter().map(|f| f.job.id).collect()
    }

    #[test]
    fn the_recorder_takes_what_others_add_meanwhile() {
        let completions = Completions::default();
        let mut turn = completions
            .add(finished("a", 0..2))
            .expect("nobody records");
        assert!(
            completions.add(finished("b", 2..3)).is_none(),
            "one recorder"
        );
        assert_eq!(ids(&turn.next().unwrap()), [0, 1, 2]);
        assert!(completions.add(finished("c", 3..4)).is_none());
        assert_eq!(ids(&turn.next().unwrap()), [3]);
        assert!(turn.next().is_none(), "the turn ends when nothing waits");
        assert!(turn.next().is_none());
        drop(turn);
        assert!(completions.add(finished("d", 4..5)).is_some());
    }

    #[test]
    fn a_failed_recorder_leaves_the_rest_to_the_next_turn() {
        let completions = Completions::default();
        let mut turn = completions.add(finished("a", 0..2)).unwrap();
        let _lost = turn.next().unwrap();
        assert!(completions.add(finished("b", 2..4)).is_none());
        drop(turn); // the recorder failed
        let mut turn = completions.turn().expect("outcomes wait with no recorder");
        assert_eq!(ids(&turn.next().unwrap()), [2, 3]);
        assert!(turn.next().is_none());
        drop(turn);
        assert!(completions.turn().is_none(), "nothing waits");
    }

    #[test]
    fn a_group_is_the_oldest_max_group() {
        let completions = Completions::default();
        let mut turn = completions
            .add(finished("a", 0..(MAX_GROUP as i64 + 5)))
            .unwrap();
        let first = turn.next().unwrap();
        assert_eq!(first.len(), MAX_GROUP);
        assert_eq!(first[0].job.id, 0);
        assert_eq!(
            ids(&turn.next().unwrap()),
            (MAX_GROUP as i64..MAX_GROUP as i64 + 5).collect::<Vec<_>>()
        );
        assert!(turn.next().is_none());
    }

    /// Scenario 2 under contention: whatever is added is recorded exactly
    /// once, and nothing waits once every adder is done.
    #[test]
    fn nothing_is_left_behind_by_concurrent_adders() {
        let completions = Completions::default();
        let recorded = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for t in 0..8 {
                let (completions, recorded) = (&completions, &recorded);
                scope.spawn(move || {
                    for i in 0..2000 {
                        let start = (t * 10_000 + i * 3) as i64;
                        if let Some(mut turn) = completions.add(finished("w", start..start + 3)) {
                            while let Some(group) = turn.next() {
                                recorded.fetch_add(group.len(), Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(recorded.load(Ordering::Relaxed), 8 * 2000 * 3);
        assert!(completions.turn().is_none());
    }
}
