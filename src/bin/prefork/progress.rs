//! The live progress line of long work watched on a terminal: `enqueue -`
//! (lines read), a `--drain` run and `bench` (jobs finished of those
//! queued, jobs/s, failed, ETA).
//!
//! Only when standard error is a terminal: in a pipe, a file or a journal
//! nothing of it is written, so logs stay plain and scripts and CI see no
//! control characters.
//!
//! # In a fleet
//!
//! The line is the master's. The master forks, so it is drawn from the
//! master's loop ([`QueueApp::on_progress`], at least every 100 ms, the
//! crate throttling redraws) and never from a thread of its own; children
//! inherit the bar but never draw it (`owner`). The master's log lines
//! clear the line, print, and redraw it ([`suspended`]); a child's log
//! line, from another process, may land on it, and the next redraw puts
//! the line back below.
//!
//! [`QueueApp::on_progress`]: fork_safe::queue::QueueApp::on_progress

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// The bar drawn now, if any, and the process that draws it.
static ACTIVE: Mutex<Option<(ProgressBar, u32)>> = Mutex::new(None);

/// Redraws per second at most.
const REFRESH_HZ: u8 = 10;

/// A live line on standard error; cleared when dropped.
#[must_use = "the line is cleared when the Progress is dropped"]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A line counting jobs finished out of `total` (jobs/s, failed,
    /// ETA), or `None` if standard error is not a terminal.
    pub fn jobs(total: u64) -> Option<Progress> {
        let style =
            ProgressStyle::with_template("{bar:24} {done}/{total} jobs, {rate}, {msg}, ETA {eta}")
                .ok()?
                .with_key(
                    "done",
                    |s: &ProgressState, out: &mut dyn std::fmt::Write| {
                        let _ = out.write_str(&thousands(s.pos()));
                    },
                )
                .with_key(
                    "total",
                    |s: &ProgressState, out: &mut dyn std::fmt::Write| {
                        let _ = out.write_str(&thousands(s.len().unwrap_or(0)));
                    },
                )
                .with_key("rate", rate);
        let bar = ProgressBar::new(total)
            .with_style(style)
            .with_message("0 failed");
        Progress::start(bar)
    }

    /// A line counting lines read (and, when the input's size is known,
    /// `bytes` of it: a bar with an ETA), or `None` if standard error is
    /// not a terminal.
    pub fn lines(bytes: Option<u64>) -> Option<Progress> {
        let (bar, template) = match bytes {
            Some(total) => (
                ProgressBar::new(total),
                "{bar:24} {msg} lines read, {binary_bytes}/{binary_total_bytes}, ETA {eta}",
            ),
            None => (ProgressBar::new_spinner(), "{spinner} {msg} lines read"),
        };
        let style = ProgressStyle::with_template(template).ok()?;
        Progress::start(bar.with_style(style))
    }

    fn start(bar: ProgressBar) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(REFRESH_HZ));
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some((bar.clone(), std::process::id()));
        Some(Progress { bar })
    }

    /// Jobs finished so far, `failed` of them failed.
    pub fn finished(&self, finished: u64, failed: u64) {
        if self.bar.length().is_some_and(|len| finished > len) {
            // Jobs queued during the run.
            self.bar.set_length(finished);
        }
        self.bar.set_position(finished);
        self.bar
            .set_message(format!("{} failed", thousands(failed)));
    }

    /// Lines read so far, and bytes.
    pub fn read(&self, lines: u64, bytes: u64) {
        self.bar.set_message(thousands(lines));
        if self.bar.length().is_some() {
            self.bar.set_position(bytes);
        } else {
            self.bar.tick();
        }
    }

    /// A callback for [`QueueApp::on_progress`](fork_safe::queue::QueueApp::on_progress)
    /// that draws this line in the master only.
    pub fn in_master(self) -> (Arc<Progress>, impl Fn(fork_safe::queue::FinishedJobs)) {
        let line = Arc::new(self);
        let owner = std::process::id();
        let shared = line.clone();
        (line, move |f: fork_safe::queue::FinishedJobs| {
            if std::process::id() == owner {
                shared.finished(f.done + f.failed + f.cancelled, f.failed);
            }
        })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let mut active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner());
        if active
            .as_ref()
            .is_some_and(|(_, pid)| *pid == std::process::id())
        {
            *active = None;
            self.bar.finish_and_clear();
        }
    }
}

/// Runs `print` (a log line being written) with the line cleared, in the
/// process that draws it; as it is elsewhere.
pub fn suspended<R>(print: impl FnOnce() -> R) -> R {
    let bar = match &*ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) {
        Some((bar, pid)) if *pid == std::process::id() => Some(bar.clone()),
        _ => None,
    };
    match bar {
        Some(bar) => bar.suspend(print),
        None => print(),
    }
}

/// `{rate}`: jobs a second, with thousands separated.
fn rate(state: &ProgressState, out: &mut dyn std::fmt::Write) {
    let _ = write!(out, "{} jobs/s", thousands(state.per_sec() as u64));
}

/// Thousands separated by commas.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Lines `enqueue -` reads between two updates of its count.
pub const READ_STRIDE: u64 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
