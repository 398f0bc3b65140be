//! What the prefork benchmarks share: a fleet whose children report, on an
//! inherited pipe, when each starts (`S pid nanos`) and when its worker
//! runs (`R pid nanos`), on CLOCK_MONOTONIC, which every process shares.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufReader, Lines};
use std::time::Duration;

use fork_safe::prefork::{App, BoxError, ChildInfo, Worker};

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn monotonic_nanos() -> u64 {
    // SAFETY: all-zero bytes are a valid timespec, which clock_gettime fills.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is writable; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The app: each child says when it starts and when its worker runs.
pub struct Reporter {
    pub fd: i32,
}

impl Reporter {
    fn say(&self, line: String) {
        // One write per line: atomic on a pipe (shorter than PIPE_BUF).
        // SAFETY: `fd` is the inherited pipe; the buffer is valid.
        unsafe { libc::write(self.fd, line.as_ptr().cast(), line.len()) };
    }
}

impl App for Reporter {
    type Child = ();

    fn init_child(&self, _: &ChildInfo) -> Result<(), BoxError> {
        self.say(format!("S {} {}\n", std::process::id(), monotonic_nanos()));
        Ok(())
    }

    fn run_worker(&self, _: &(), worker: &Worker) {
        self.say(format!("R {} {}\n", std::process::id(), monotonic_nanos()));
        while !worker.wait(Duration::from_secs(60)) {}
    }
}

/// The children's reports, read from the pipe.
pub struct Events(pub Lines<BufReader<File>>);

impl Events {
    /// The next report: its kind (`S` or `R`), the child's pid, and when.
    pub fn next(&mut self) -> (char, u32, u64) {
        let line = self.0.next().expect("master gone").unwrap();
        let mut parts = line.split(' ');
        let kind = parts.next().unwrap().chars().next().unwrap();
        let pid = parts.next().unwrap().parse().unwrap();
        let at = parts.next().unwrap().parse().unwrap();
        (kind, pid, at)
    }
}

impl Events {
    /// Waits until `procs` children have started and are ready; their pids.
    pub fn wait_ready(&mut self, procs: usize) -> Vec<u32> {
        let mut children = Vec::new();
        let mut ready = 0;
        while ready < procs {
            match self.next() {
                ('S', pid, _) => children.push(pid),
                ('R', _, _) => ready += 1,
                _ => {}
            }
        }
        children
    }
}

/// The value at fraction `p` of `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
