//! The `--exec` handler: one program run per job, no shell.
//!
//! The program is started and ended by the worker as a whole process group
//! ([`Worker::spawn`]; see [`Program`](crate::prefork::Program) for how it
//! starts clean and why a dead child's programs end too). Its payload goes
//! to its standard input; what it writes is read as it comes, the head of
//! its output and the tail of its errors kept in bounded memory.
//!
//! # Its end
//!
//! The worker waits for the program's exit with `--timeout` as the
//! deadline. Past it the group is sent TERM, then KILL after
//! [`kill_grace`]; the job fails with "timed out after ...". This is the
//! worker's half of the rule in
//! [`Prefork::timeout`](crate::prefork::Prefork::timeout): the grace is at
//! most half the timeout, so the program is gone and the outcome recorded
//! well before the master would kill the whole child. Once the program has
//! exited, whatever is left of its group is killed, so a background process
//! that kept its standard output open cannot hold the job.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Context, Needs, Ran, Runner, job_label};
use crate::prefork::{Worker, kill_grace};
use crate::queue::Job;
use crate::queue::metrics::Verdict;
use crate::queue::prefetch::{Batch, Sizing};

/// Jobs are slow and run one at a time, each by the worker that claimed
/// it; the worker stops the program itself at its limit.
pub(super) const NEEDS: Needs = Needs {
    sizing: Sizing::One,
    deadlines: false,
};

/// Runs each job of a batch through a program of its own.
pub(super) struct Exec<'a> {
    argv: &'a [String],
    withhold_credentials: bool,
}

impl<'a> Exec<'a> {
    pub(super) fn new(argv: &'a [String], withhold_credentials: bool) -> Exec<'a> {
        Exec {
            argv,
            withhold_credentials,
        }
    }
}

impl<'a> Runner<'a> for Exec<'_> {
    fn run(&mut self, cx: &Context<'a>, batch: &Batch) -> Result<Ran, crate::Error> {
        let worker = cx.worker;
        let mut outcomes = Vec::new();
        for j in &batch.jobs {
            let started = Instant::now();
            let ran = worker.jobs_within(1, &job_label(j.id), j.timeout, || {
                run(worker, self.argv, self.withhold_credentials, cx.limit(j), j)
            });
            let verdict = match ran.ending {
                Ending::TimedOut => Verdict::TimedOut,
                Ending::Signalled if cx.cancelled(j) => Verdict::Cancelled,
                // The master ended the program because the child's
                // graceful stop ran out: interrupted, not failed. It and
                // the rest of the batch are handed back.
                Ending::Signalled if worker.stopping() => break,
                _ => Verdict::of(ran.outcome.is_ok(), j.attempt, j.max_attempts),
            };
            cx.count(j, verdict, started.elapsed());
            outcomes.push(ran.outcome);
        }
        Ok(Ran::Outcomes(outcomes))
    }
}

/// What of standard output is kept as the job's result.
const OUTPUT_CAP: usize = 64 * 1024;
/// What of standard error is kept for a failed attempt's error.
const ERROR_TAIL: usize = 4 * 1024;

/// How a job's program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// It exited (with any code), or could not start.
    Exited,
    /// A signal ended it, not this worker's time limit: perhaps the master
    /// stopping a cancelled job.
    Signalled,
    /// It ran past its time limit and was stopped.
    TimedOut,
}

/// What one job's program did: the job's outcome, and how it ended.
struct Attempt {
    outcome: Result<String, String>,
    ending: Ending,
}

/// Runs one job through an external program.
fn run(
    worker: &Worker,
    argv: &[String],
    withhold_credentials: bool,
    timeout: Option<Duration>,
    job: &Job,
) -> Attempt {
    let mut ending = Ending::Exited;
    let outcome = run_program(
        worker,
        argv,
        withhold_credentials,
        timeout,
        job,
        &mut ending,
    );
    Attempt { outcome, ending }
}

fn run_program(
    worker: &Worker,
    argv: &[String],
    withhold_credentials: bool,
    timeout: Option<Duration>,
    job: &Job,
    ending: &mut Ending,
) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("no program given")?;
    let mut command = Command::new(program);
    super::program_env(&mut command, withhold_credentials);
    command
        .args(args)
        .env("PREFORK_JOB_ID", job.id.to_string())
        .env("PREFORK_QUEUE", &job.queue)
        .env("PREFORK_KIND", &job.kind)
        .env("PREFORK_ATTEMPT", job.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut running = worker
        .spawn(&mut command)
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    // Feed stdin and drain stdout/stderr on their own threads, so a program
    // that writes before it reads cannot deadlock against us.
    let mut stdin = running.stdin().ok_or("no stdin")?;
    let payload = job.payload.clone();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(payload.as_bytes());
    });
    let stdout = running.stdout().ok_or("no stdout")?;
    let out = std::thread::spawn(move || head(stdout, OUTPUT_CAP));
    let stderr = running.stderr().ok_or("no stderr")?;
    let err = std::thread::spawn(move || tail(stderr, ERROR_TAIL));

    let exited = running.wait_exit(timeout);
    if !exited {
        running.stop(kill_grace(timeout.unwrap_or_default()));
    }
    // The rest of the group goes with the program, and with it the last
    // writers of the pipes: the readers end.
    let status = running.finish();
    let _ = feeder.join();
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if !exited {
        *ending = Ending::TimedOut;
        return Err(format!("timed out after {:?}", timeout.unwrap_or_default()));
    }
    let status = status.map_err(|e| format!("waiting for {program:?}: {e}"))?;
    if std::os::unix::process::ExitStatusExt::signal(&status).is_some() {
        *ending = Ending::Signalled;
    }
    if status.success() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&err).trim_end()
        ))
    }
}

/// The first `cap` bytes of `r`; the rest is read and dropped, so the
/// program never blocks on a full pipe.
fn head(mut r: impl Read, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// The last `cap` bytes of `r`, in bounded memory however much it writes.
fn tail(mut r: impl Read, cap: usize) -> Vec<u8> {
    let mut kept: Vec<u8> = Vec::with_capacity(2 * cap);
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * cap {
                    kept.drain(..kept.len() - cap);
                }
            }
        }
    }
    let start = kept.len().saturating_sub(cap);
    kept.split_off(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_tail_keep_bounded_ends() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(head(&data[..], 10), data[..10]);
        assert_eq!(tail(&data[..], 10), data[data.len() - 10..]);
        assert_eq!(tail(&b"short"[..], 10), b"short");
    }
}
