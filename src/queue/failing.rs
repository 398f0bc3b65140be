//! The master's log line while jobs keep failing: every [`WINDOW`] in
//! which attempts failed, one warning that says how many, of how many, in
//! which queues, and where to read their errors. It reads the workers'
//! counters (`metrics`), never the database, so it is written from the
//! master's loop; sans-IO, tested with its own clock.
//!
//! A job's error is stored with it (`prefork jobs show ID`); a line per
//! failure would flood the log at thousands of failing jobs a second, and
//! none at all (as before) hid a fleet failing everything for minutes.

use std::time::{Duration, Instant};

/// How often the line is written while attempts fail.
pub(super) const WINDOW: Duration = Duration::from_secs(10);

/// One queue's attempts so far, by how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Attempts {
    pub(super) done: u64,
    /// Failed on their last attempt.
    pub(super) failed: u64,
    /// Failed, to run again.
    pub(super) retried: u64,
    /// Ran past their time limit (retried or not).
    pub(super) timed_out: u64,
    pub(super) cancelled: u64,
}

impl Attempts {
    fn since(&self, earlier: &Attempts) -> Attempts {
        Attempts {
            done: self.done.saturating_sub(earlier.done),
            failed: self.failed.saturating_sub(earlier.failed),
            retried: self.retried.saturating_sub(earlier.retried),
            timed_out: self.timed_out.saturating_sub(earlier.timed_out),
            cancelled: self.cancelled.saturating_sub(earlier.cancelled),
        }
    }

    fn unsuccessful(&self) -> u64 {
        self.failed + self.retried + self.timed_out
    }

    fn all(&self) -> u64 {
        self.done + self.unsuccessful() + self.cancelled
    }
}

/// The window under way: when it started, and the counts then.
#[derive(Debug, Default)]
pub(super) struct Failing {
    window: Option<(Instant, Vec<(String, Attempts)>)>,
}

impl Failing {
    /// The counts so far, by queue, at `now`: the line to log if a window
    /// ended with failed attempts in it.
    pub(super) fn tick(&mut self, now: Instant, counts: Vec<(String, Attempts)>) -> Option<String> {
        let Some((started, at_start)) = &self.window else {
            self.window = Some((now, counts));
            return None;
        };
        if now.saturating_duration_since(*started) < WINDOW {
            return None;
        }
        let took = now.saturating_duration_since(*started);
        let mut parts = Vec::new();
        let mut total = Attempts::default();
        for (queue, count) in &counts {
            let earlier = at_start
                .iter()
                .find(|(q, _)| q == queue)
                .map(|(_, c)| *c)
                .unwrap_or_default();
            let d = count.since(&earlier);
            if d.unsuccessful() > 0 {
                parts.push(describe(queue, &d));
            }
            total.done += d.done;
            total.failed += d.failed;
            total.retried += d.retried;
            total.timed_out += d.timed_out;
            total.cancelled += d.cancelled;
        }
        self.window = Some((now, counts));
        if total.unsuccessful() == 0 {
            return None;
        }
        Some(format!(
            "jobs are failing: {} of {} attempt(s) in the last {:.0?} ({}); \
             their errors: prefork jobs list --state failed, prefork jobs show ID",
            total.unsuccessful(),
            total.all(),
            Duration::from_secs(took.as_secs()),
            parts.join("; ")
        ))
    }
}

/// `queue "mail": 12 failed for good, 30 to be retried, 2 timed out, 5 done`.
fn describe(queue: &str, d: &Attempts) -> String {
    let mut what = Vec::new();
    for (n, label) in [
        (d.failed, "failed for good"),
        (d.retried, "to be retried"),
        (d.timed_out, "timed out"),
        (d.done, "done"),
    ] {
        if n > 0 {
            what.push(format!("{n} {label}"));
        }
    }
    format!("queue {queue:?}: {}", what.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(queue: &str, done: u64, failed: u64, retried: u64) -> Vec<(String, Attempts)> {
        vec![(
            queue.to_owned(),
            Attempts {
                done,
                failed,
                retried,
                ..Attempts::default()
            },
        )]
    }

    #[test]
    fn one_line_a_window_while_attempts_fail_and_none_when_they_do_not() {
        let t0 = Instant::now();
        let mut failing = Failing::default();
        assert_eq!(failing.tick(t0, counts("q", 0, 0, 0)), None);
        assert_eq!(failing.tick(t0 + WINDOW / 2, counts("q", 0, 0, 40)), None);
        let line = failing
            .tick(t0 + WINDOW, counts("q", 5, 2, 90))
            .expect("a window with failures");
        assert!(
            line.starts_with("jobs are failing: 92 of 97 attempt(s) in the last 10s"),
            "{line}"
        );
        assert!(
            line.contains("queue \"q\": 2 failed for good, 90 to be retried, 5 done"),
            "{line}"
        );
        // The next window counts from this one's end.
        let line = failing
            .tick(t0 + WINDOW * 2, counts("q", 5, 3, 90))
            .unwrap();
        assert!(line.contains("1 of 1 attempt(s)"), "{line}");
        // Only successes: no line.
        assert_eq!(failing.tick(t0 + WINDOW * 3, counts("q", 500, 3, 90)), None);
    }

    #[test]
    fn names_only_the_queues_that_failed() {
        let t0 = Instant::now();
        let mut failing = Failing::default();
        let both = |a: u64, b: u64| {
            let mut c = counts("a", 10, 0, a);
            c.extend(counts("b", 10, 0, b));
            c
        };
        failing.tick(t0, both(0, 0));
        let line = failing.tick(t0 + WINDOW, both(0, 7)).unwrap();
        assert!(line.contains("queue \"b\": 7 to be retried"), "{line}");
        assert!(!line.contains("queue \"a\""), "{line}");
    }
}
