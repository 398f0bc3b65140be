//! Long-lived programs (`--worker`): each worker thread runs one copy of a
//! program, started on its first job and fed one job at a time, so an
//! interpreter and the application it loads start once per worker, not
//! once per job (uWSGI's and gunicorn's answer for web requests, here for
//! jobs).
//!
//! # Protocol, version 1
//!
//! Newline-delimited JSON over a channel of its own: a Unix stream socket
//! whose descriptor number is in `PREFORK_WORKER_FD` (the program's stdout
//! and stderr go to the log, so a stray `print` corrupts nothing). One
//! object per line, UTF-8, no line longer than [`MAX_LINE`].
//!
//! 1. The program loads, then says `{"ready":true,"protocol":1}`, within
//!    `--boot-timeout` (its load is not job time).
//! 2. prefork sends jobs: `{"id":17,"queue":"default","kind":"default","attempt":1,
//!    "max_attempts":3,"priority":0,"payload":"...","timeout":30.0}`
//!    (`timeout`: seconds the job may take, or `null`), one per line. The
//!    next ones may already wait in the channel while the program works on
//!    one (see [`Resident::run_batch`]).
//! 3. The program answers each job, one at a time and in the order they
//!    came: `{"id":17,"ok":true,"result":"..."}` or
//!    `{"id":17,"ok":false,"error":"..."}`.
//! 4. At a stop prefork shuts its side down: the program reads the end of
//!    its input and exits.
//!
//! # Scenarios
//!
//! 1. **A job.** One line out, one line back within the job's limit; the
//!    answer is checked (JSON, this job's id, `ok` with `result` or
//!    `error`).
//! 2. **The program fails mid-job**: it exits, closes its channel, answers
//!    something else (not JSON, another id, a line past [`MAX_LINE`]). The
//!    attempt fails with the reason (and the end of the program's stderr),
//!    the program is stopped, its leftover backends are ended, and the next
//!    job starts a fresh copy.
//! 3. **Past the job's limit.** The program's group gets TERM, then KILL
//!    after a grace; the job fails as timed out; a fresh copy follows.
//! 4. **It cannot start** (not found, exits or never says ready within
//!    `--boot-timeout`): the job is handed back unstarted (no attempt is
//!    spent on a broken deploy), and the worker waits before the next try,
//!    longer each time (`prefork::backoff`'s schedule, at most 10 s), saying so in the log.
//! 5. **`--worker-max-jobs`.** After that many jobs the program is ended
//!    (as at a stop) and the next job starts a fresh copy.
//! 6. **Stop.** The channel's write side is shut down and the program given
//!    until the master's graceful timeout to exit; the master's escalation
//!    (TERM, then KILL) ends one that does not. Whatever happens, a program
//!    dies with its worker thread (see `prefork::program`), and so with its
//!    child and its master.
//!
//! The program inherits descriptors 0, 1, 2 and its channel, nothing else;
//! `PGAPPNAME` names it `prefork:program:<its own pid>` (set in the forked
//! process, the one place its pid is known before it runs: see
//! `prefork::program`), so the backends of libpq-based clients show in
//! `pg_stat_activity` as its own, and those left when it is killed are
//! ended by that name.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::{Value, json};

use super::{Context, Needs, Ran, Runner, batch_label, own_limit};
use crate::prefork::{
    MemoryLimits, PROGRAM_CAP, Program, PssReadings, Worker, kill_grace, restart_delay,
};
use crate::queue::Job;
use crate::queue::metrics::Verdict;
use crate::queue::prefetch::{Batch, Sizing};

/// Outcomes are recorded with the child's others; the worker holds its
/// program to each job's limit itself.
pub(super) const NEEDS: Needs = Needs {
    sizing: Sizing::Shared,
    deadlines: false,
};

/// The protocol's version, in the ready line.
pub const PROTOCOL: u64 = 1;

/// The longest line either side may send.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// Most bytes of jobs sent to a program and not yet answered (beyond the
/// one it works on): well within a socket's buffer, so a write never
/// waits for a program that is itself waiting to write an answer.
const PIPELINE_BYTES: usize = 64 * 1024;

/// How long a worker waits before it looks for the next answers of a
/// quick program that still has jobs in hand: it then reads a bunch of
/// them on one wakeup instead of waking for each (a wakeup per answer cost
/// 2 cores more than the Python example's jobs: 28,600-29,000 against
/// 30,300-30,600 jobs/s drained, 42,000 against 46,000-47,600 steady, 4 x
/// 8). The program never waits for it (its next jobs are already in its
/// channel), a batch ends at most this much later, and a job's clock
/// starts at most this much late.
const GATHER: Duration = Duration::from_micros(500);

/// How long a program recycled between jobs (`--worker-max-jobs`, memory)
/// has to exit at the end of its input before it is killed.
const RECYCLE_EXIT: Duration = Duration::from_secs(10);

/// The end of a program's stderr kept for a failed attempt's error.
const STDERR_TAIL: usize = 4 * 1024;

/// How a job fared in a program.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fared {
    /// It ran: the outcome the program gave (or the failure it caused).
    Outcome(Result<String, String>),
    /// It ran past its limit and the program was stopped.
    TimedOut(String),
    /// No program could be started for it: hand it back unstarted.
    NotStarted,
}

/// The program a worker runs, and what it needs to run it again.
pub(super) struct Resident<'w> {
    argv: Vec<String>,
    boot_timeout: Duration,
    max_jobs: Option<u64>,
    memory: MemoryLimits,
    /// Start it without the fleet's database settings.
    withhold_credentials: bool,
    /// Readings over `memory.pss` in a row, and when the last was taken.
    pss: PssReadings,
    memory_read_at: Option<Instant>,
    /// The program running now, if any.
    running: Option<Running<'w>>,
    /// Starts and jobs that failed in a row (a program that crashed,
    /// answered garbage, or could not start), and when the next program
    /// may start: at once after one failure, then later each time.
    failures: u32,
    next_start: Instant,
}

struct Running<'w> {
    program: Program<'w>,
    channel: BufReader<UnixStream>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    jobs: u64,
}

impl<'w> Resident<'w> {
    pub(super) fn new(
        argv: Vec<String>,
        boot_timeout: Duration,
        max_jobs: Option<u64>,
        memory: MemoryLimits,
        withhold_credentials: bool,
    ) -> Self {
        Resident {
            argv,
            boot_timeout,
            max_jobs,
            memory,
            withhold_credentials,
            pss: PssReadings::default(),
            memory_read_at: None,
            running: None,
            failures: 0,
            next_start: Instant::now(),
        }
    }

    /// Runs `jobs` in the program (started first if none runs), each within
    /// its limit, and says how each fared (and how long it took), in
    /// order: [`Fared::NotStarted`] for those no program ran.
    ///
    /// The jobs are pipelined: while the program works on one, the next
    /// ones wait in its channel (at most [`PIPELINE_BYTES`] of them
    /// unanswered, so neither side can block the other on a full socket),
    /// and it answers them in order. A program still handles one job at a
    /// time, but a quick one is woken once per batch, not twice per job.
    /// A job's limit runs from the previous answer (the moment the program
    /// could start it).
    pub(super) fn run_batch(
        &mut self,
        worker: &'w Worker,
        jobs: &[Job],
        limit: impl Fn(&Job) -> Option<Duration>,
    ) -> Vec<(Fared, Duration)> {
        let mut ran: Vec<(Fared, Duration)> = Vec::with_capacity(jobs.len());
        while ran.len() < jobs.len() {
            let budget = self.max_jobs.map_or(usize::MAX, |max| {
                let done = self.running.as_ref().map_or(0, |r| r.jobs);
                max.saturating_sub(done).max(1) as usize
            });
            let end = jobs.len().min(ran.len().saturating_add(budget));
            let before = ran.len();
            self.run_some(worker, &jobs[before..end], &limit, &mut ran);
            if ran.len() == before {
                break;
            }
            self.recycle_if_due(worker);
        }
        while ran.len() < jobs.len() {
            ran.push((Fared::NotStarted, Duration::ZERO));
        }
        self.check_memory(worker);
        ran
    }

    /// Ends the program if its memory is over the limits: its RSS at once,
    /// its PSS after `readings` readings in a row, one a second at most
    /// (PSS walks every mapping of the program).
    fn check_memory(&mut self, worker: &Worker) {
        let Some(running) = &self.running else {
            return;
        };
        let limits = self.memory;
        if !limits.any() {
            return;
        }
        if self
            .memory_read_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.memory_read_at = Some(Instant::now());
        let pid = running.program.id();
        let rss = limits.rss.and_then(|_| crate::procfs::resident_bytes(pid));
        let pss = limits
            .pss
            .and_then(|_| crate::procfs::proportional_bytes(pid));
        let pss_over = self.pss.read(&limits, pss);
        let over = if limits.rss_over(rss) {
            Some(("resident", rss, limits.rss))
        } else if pss_over {
            Some(("proportional", pss, limits.pss))
        } else {
            None
        };
        if let Some((kind, Some(bytes), Some(limit))) = over {
            log::info!(
                "child {} worker {}: resident program {pid} recycled: {kind} memory {} MB over {} MB",
                worker.child_index(),
                worker.index(),
                bytes / (1024 * 1024),
                limit / (1024 * 1024)
            );
            self.pss.reset();
            self.end(worker, Some(RECYCLE_EXIT));
        }
    }

    /// [`Resident::run_batch`] for jobs the current program may all run
    /// (within `--worker-max-jobs`); pushes what it ran to `ran`, stopping
    /// at the first failure (the program is then gone, and the rest were
    /// never started).
    fn run_some(
        &mut self,
        worker: &'w Worker,
        jobs: &[Job],
        limit: &impl Fn(&Job) -> Option<Duration>,
        ran: &mut Vec<(Fared, Duration)>,
    ) {
        if self.running.is_none() && self.start(worker).is_err() {
            return;
        }
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let lines: Vec<Vec<u8>> = jobs.iter().map(|job| job_line(job, limit(job))).collect();
        // Jobs sent, and bytes sent but not answered.
        let (mut sent, mut in_flight) = (0, 0);
        let mut started = Instant::now();
        for (i, job) in jobs.iter().enumerate() {
            // A job whose line passes the protocol's limit is never sent
            // (pipelining stops before it): it fails alone, and the
            // program goes on with the next.
            if lines[i].len() > MAX_LINE + 1 {
                let why = format!(
                    "its job line is {} bytes, past the protocol's {MAX_LINE}: a payload \
                     that large cannot go to a --worker program",
                    lines[i].len()
                );
                ran.push((Fared::Outcome(Err(why)), Duration::ZERO));
                sent = i + 1;
                started = Instant::now();
                continue;
            }
            let mut out = Vec::new();
            while sent < jobs.len()
                && lines[sent].len() <= MAX_LINE + 1
                && (sent == i || in_flight + lines[sent].len() <= PIPELINE_BYTES)
            {
                out.extend_from_slice(&lines[sent]);
                in_flight += lines[sent].len();
                sent += 1;
            }
            let deadline = limit(job).map(|l| started + l);
            // A quick program with more jobs in hand: gather its answers
            // (see GATHER), never past the job's deadline.
            if i > 0 && sent > i + 1 && running.channel.buffer().is_empty() {
                let last_took = ran.last().map_or(Duration::MAX, |(_, took)| *took);
                if last_took < GATHER {
                    let nap = deadline.map_or(GATHER, |d| {
                        GATHER.min(d.saturating_duration_since(Instant::now()))
                    });
                    std::thread::sleep(nap);
                }
            }
            // The job's time limit covers writing it too: a program that
            // does not read is as stuck as one that does not answer.
            let stream = running.channel.get_mut();
            let _ = stream.set_write_timeout(deadline.map(|d| {
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
            }));
            let written = stream.write_all(&out);
            let answer = match written {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(format!("the program's channel: {e}")),
                Ok(()) => read_line(&mut running.channel, deadline),
            };
            in_flight -= lines[i].len();
            let took = started.elapsed();
            match answer.map(|line| line.map(|line| parse_answer(&line, job.id))) {
                Ok(Some(Ok(outcome))) => {
                    running.jobs += 1;
                    self.failures = 0;
                    ran.push((Fared::Outcome(outcome), took));
                    started = Instant::now();
                }
                Ok(None) => {
                    let limit = limit(job).unwrap_or_default();
                    self.stop(Some(kill_grace(limit)));
                    ran.push((Fared::TimedOut(format!("timed out after {limit:?}")), took));
                    return;
                }
                // The program died as the child stops (TERM from the
                // master past the graceful timeout, or its own way of
                // stopping): interrupted, not failed; the job and the rest
                // are handed back, their attempt given back.
                Err(e) if worker.stopping() => {
                    let e = self.fail(worker, &e);
                    log::info!(
                        "child {} worker {}: job {} handed back, its program ended as the child stops: {e}",
                        worker.child_index(),
                        worker.index(),
                        job.id
                    );
                    return;
                }
                Ok(Some(Err(e))) | Err(e) => {
                    let e = self.fail(worker, &e);
                    ran.push((Fared::Outcome(Err(e)), took));
                    return;
                }
            }
        }
    }

    /// Ends the program once it ran `--worker-max-jobs`.
    fn recycle_if_due(&mut self, worker: &Worker) {
        let Some(running) = &self.running else {
            return;
        };
        if self.max_jobs.is_some_and(|max| running.jobs >= max) {
            log::info!(
                "child {} worker {}: resident program recycled after {} jobs",
                worker.child_index(),
                worker.index(),
                running.jobs
            );
            self.end(worker, Some(RECYCLE_EXIT));
        }
    }

    /// How long the worker should wait before its program may be started
    /// again (after failed starts).
    pub(super) fn backoff(&self) -> Duration {
        self.next_start.saturating_duration_since(Instant::now())
    }

    /// Ends the program as at a stop: end of input, then `within` for it
    /// to exit (`None`: as long as it takes; the master's escalation, or an
    /// orphaned child's own, ends one that does not), then it is killed.
    pub(super) fn end(&mut self, worker: &Worker, within: Option<Duration>) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        let _ = running
            .channel
            .get_ref()
            .shutdown(std::net::Shutdown::Write);
        let exited = running.program.wait_exit(within);
        let pid = running.program.id();
        let status = running.program.finish();
        if !exited || !status.as_ref().is_ok_and(|s| s.success()) {
            log::warn!(
                "child {} worker {}: resident program {pid} ended at end of input: {}",
                worker.child_index(),
                worker.index(),
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            );
        }
        end_backends(pid);
    }

    fn start(&mut self, worker: &'w Worker) -> Result<(), String> {
        let wait = self.backoff();
        if !wait.is_zero() {
            // Interrupted by a stop: the caller hands the job back.
            if worker.wait(wait) {
                return Err("the child is stopping".into());
            }
        }
        match self.try_start(worker) {
            Ok(running) => {
                self.running = Some(running);
                Ok(())
            }
            Err(e) => {
                let backoff = self.failed();
                log::error!(
                    "child {} worker {}: resident program {:?} failed to start ({} failure(s) in a row): {e}; next try in {backoff:.1?}",
                    worker.child_index(),
                    worker.index(),
                    self.argv[0],
                    self.failures
                );
                Err(e)
            }
        }
    }

    fn try_start(&self, worker: &'w Worker) -> Result<Running<'w>, String> {
        let (program, args) = self.argv.split_first().ok_or("no program given")?;
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("creating the program's channel: {e}"))?;
        let mut command = Command::new(program);
        super::program_env(&mut command, self.withhold_credentials);
        command
            .args(args)
            .env("PREFORK_WORKER_FD", theirs.as_raw_fd().to_string())
            .env("PREFORK_PROTOCOL", PROTOCOL.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut program = worker
            .spawn_with_channel(&mut command, theirs.as_fd())
            .map_err(|e| format!("cannot run {program:?}: {e}"))?;
        drop(theirs);
        let label = format!("child {} worker {}", worker.child_index(), worker.index());
        if let Some(out) = program.stdout() {
            forward(out, label.clone(), None);
        }
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = program.stderr() {
            forward(err, label, Some(stderr.clone()));
        }
        let mut channel = BufReader::new(UnixStream::from(ours));
        let ready = read_line(&mut channel, Some(Instant::now() + self.boot_timeout));
        let ready = match ready {
            Ok(Some(line)) => serde_json::from_slice::<Value>(&line)
                .ok()
                .filter(|v| v["ready"] == true)
                .ok_or_else(|| format!("said {} instead of ready", shorten(&line))),
            Ok(None) => Err(format!(
                "not ready within the boot timeout ({:?})",
                self.boot_timeout
            )),
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            let mut running = Running {
                program,
                channel,
                stderr,
                jobs: 0,
            };
            running.program.stop(Duration::from_secs(1));
            let status = running.program.finish();
            return Err(with_stderr(&running.stderr, e, status.ok()));
        }
        Ok(Running {
            program,
            channel,
            stderr,
            jobs: 0,
        })
    }

    /// The program failed its job (`e`): stopped and reaped, its leftover
    /// backends ended; the attempt's error, with the end of its stderr.
    fn fail(&mut self, worker: &Worker, e: &str) -> String {
        let backoff = self.failed();
        if !backoff.is_zero() {
            log::warn!(
                "child {} worker {}: resident program failed {} time(s) in a row; next start in {backoff:.1?}",
                worker.child_index(),
                worker.index(),
                self.failures
            );
        }
        let Some(mut running) = self.running.take() else {
            return e.to_owned();
        };
        running.program.stop(Duration::from_secs(1));
        let pid = running.program.id();
        let status = running.program.finish().ok();
        end_backends(pid);
        with_stderr(&running.stderr, e.to_owned(), status)
    }

    /// Counts a failure in a row; the wait before the next start.
    fn failed(&mut self) -> Duration {
        self.failures += 1;
        let backoff = restart_delay(self.failures, PROGRAM_CAP);
        self.next_start = Instant::now() + backoff;
        backoff
    }

    /// Stops the program (TERM, then KILL after `grace`).
    fn stop(&mut self, grace: Option<Duration>) {
        if let Some(mut running) = self.running.take() {
            running
                .program
                .stop(grace.unwrap_or(Duration::from_secs(1)));
            let pid = running.program.id();
            let _ = running.program.finish();
            end_backends(pid);
        }
    }
}

/// Ends the backends the program `program` left (by its `PGAPPNAME`).
fn end_backends(program: crate::Pid) {
    match crate::prefork::end_backends("program", &[program]) {
        Ok(0) => {}
        Ok(n) => log::warn!("ended {n} backend(s) left by resident program {program}"),
        Err(e) => log::warn!("could not end the backends of resident program {program}: {e}"),
    }
}

/// A job's line, newline included.
fn job_line(job: &Job, limit: Option<Duration>) -> Vec<u8> {
    let mut line = json!({
        "id": job.id,
        "queue": job.queue,
        "kind": job.kind,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "payload": job.payload,
        "timeout": limit.map(|l| l.as_secs_f64()),
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

/// Reads one line by `deadline`: `Ok(None)` past it; an error if the
/// channel closed or the line is longer than [`MAX_LINE`].
fn read_line(
    channel: &mut BufReader<UnixStream>,
    deadline: Option<Instant>,
) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::new();
    loop {
        if channel.buffer().is_empty() {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(channel.get_ref().as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("waiting for the program: {e}")),
            }
        }
        let buf = channel
            .fill_buf()
            .map_err(|e| format!("reading from the program: {e}"))?;
        if buf.is_empty() {
            return Err("the program closed its channel".into());
        }
        let (used, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..used]);
        channel.consume(used);
        if line.len() > MAX_LINE + 1 {
            return Err(format!(
                "the program sent a line longer than {MAX_LINE} bytes"
            ));
        }
        if done {
            line.pop();
            return Ok(Some(line));
        }
    }
}

/// The outcome an answer gives for job `id`.
fn parse_answer(line: &[u8], id: i64) -> Result<Result<String, String>, String> {
    let answer: Value = serde_json::from_slice(line)
        .map_err(|e| format!("the program answered {} (not JSON: {e})", shorten(line)))?;
    if answer["id"].as_i64() != Some(id) {
        return Err(format!(
            "the program answered for job {} while it ran job {id}",
            answer["id"]
        ));
    }
    let text = |key: &str| match &answer[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match answer["ok"].as_bool() {
        Some(true) => Ok(Ok(text("result"))),
        Some(false) => Ok(Err(text("error"))),
        None => Err(format!(
            "the program's answer has no \"ok\": {}",
            shorten(line)
        )),
    }
}

/// The first 200 bytes of a line, for an error message.
fn shorten(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
    if line.len() > 200 {
        format!("{text:?}...")
    } else {
        format!("{text:?}")
    }
}

/// `e`, with the program's exit status and the end of its stderr.
fn with_stderr(
    tail: &Mutex<VecDeque<u8>>,
    e: String,
    status: Option<std::process::ExitStatus>,
) -> String {
    // The forwarding thread may still be reading the last lines.
    std::thread::sleep(Duration::from_millis(20));
    let tail = tail.lock().unwrap_or_else(|p| p.into_inner());
    let tail = String::from_utf8_lossy(&tail.iter().copied().collect::<Vec<u8>>()).into_owned();
    let status = status.map_or(String::new(), |s| format!(" ({s})"));
    match tail.trim_end() {
        "" => format!("{e}{status}"),
        tail => format!("{e}{status}: {tail}"),
    }
}

/// Logs what a program writes, a line at a time, prefixed with its worker;
/// keeps the end of it in `tail`, if given.
fn forward(
    from: impl Read + Send + 'static,
    label: String,
    tail: Option<Arc<Mutex<VecDeque<u8>>>>,
) {
    let spawned = std::thread::Builder::new()
        .name("program-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(from);
            let mut line = Vec::new();
            loop {
                line.clear();
                // A line of at most 64 KiB at a time: a program writing
                // without newlines cannot grow this without bound.
                match (&mut reader).take(64 * 1024).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                log::info!(target: "prefork::program", "{label}: {}", text.trim_end());
                if let Some(tail) = &tail {
                    let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                    tail.extend(line.iter().copied());
                    while tail.len() > STDERR_TAIL {
                        tail.pop_front();
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot forward a resident program's output: {e}");
    }
}

impl<'a> Runner<'a> for Resident<'a> {
    fn run(&mut self, cx: &Context<'a>, batch: &Batch) -> Result<Ran, crate::Error> {
        let jobs = &batch.jobs;
        let fared = cx.worker.jobs_within(
            jobs.len() as u32,
            &batch_label(jobs),
            own_limit(jobs),
            || self.run_batch(cx.worker, jobs, |j| cx.limit(j)),
        );
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (j, (fared, took)) in jobs.iter().zip(fared) {
            let (verdict, outcome) = match fared {
                Fared::Outcome(o) => (Verdict::of(o.is_ok(), j.attempt, j.max_attempts), o),
                Fared::TimedOut(e) => (Verdict::TimedOut, Err(e)),
                // No program ran it: it and the rest of the batch are
                // handed back unstarted.
                Fared::NotStarted => break,
            };
            cx.count(j, verdict, took);
            outcomes.push(outcome);
        }
        Ok(Ran::Outcomes(outcomes))
    }

    fn end(&mut self, cx: &Context<'a>) {
        // Stopping: the program reads the end of its input and exits.
        Resident::end(self, cx.worker, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_wait_longer_after_each_failure_in_a_row() {
        let waits: Vec<u64> = (1..=10)
            .map(|n| restart_delay(n, PROGRAM_CAP).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [0, 100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
    }

    #[test]
    fn answers_are_checked() {
        assert_eq!(
            parse_answer(br#"{"id":7,"ok":true,"result":"r"}"#, 7),
            Ok(Ok("r".into()))
        );
        assert_eq!(
            parse_answer(br#"{"id":7,"ok":false,"error":"bad"}"#, 7),
            Ok(Err("bad".into()))
        );
        assert_eq!(
            parse_answer(br#"{"id":7,"ok":true,"result":{"n":1}}"#, 7),
            Ok(Ok(r#"{"n":1}"#.into()))
        );
        assert!(parse_answer(b"hello", 7).unwrap_err().contains("not JSON"));
        assert!(
            parse_answer(br#"{"id":8,"ok":true}"#, 7)
                .unwrap_err()
                .contains("for job 8 while it ran job 7")
        );
        assert!(
            parse_answer(br#"{"id":7}"#, 7)
                .unwrap_err()
                .contains("no \"ok\"")
        );
    }
}
