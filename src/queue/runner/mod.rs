//! Handlers as runners: what runs a batch of jobs, one module per
//! [`Handler`], behind one small trait.
//!
//! A worker gets its own [`Runner`] from its handler when it starts
//! ([`Handler::runner`]), runs each batch it takes through it, and ends it
//! when it stops. A runner runs the batch and says how each job fared
//! ([`Ran`]); it counts each job for the status endpoint and holds it to
//! its time limit through the [`Context`]. What a handler needs of its
//! child is said once, before the workers start ([`Handler::needs`]): how
//! batches are sized (and whether claims prefetch for all the workers),
//! and whether jobs are statements cancelled at their deadline.
//!
//! | module | handler | a batch is |
//! |---|---|---|
//! | `sql` | [`Handler::Sql`] | one statement that runs and records the whole batch |
//! | `exec` | [`Handler::Exec`] | one program per job, a job at a time |
//! | `resident` | [`Handler::Resident`] | jobs fed to the worker's own resident program (`--worker`) |
//! | `rust` | [`Handler::Rust`] | a Rust function per job, on the worker's connection |
//!
//! A new handler is a new module with a [`Needs`] and a [`Runner`], and a
//! line in each of [`Handler::needs`] and [`Handler::runner`].

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use postgres::Client;
use postgres::error::SqlState;

use super::config::QueueConfig;
use super::deadline::Deadlines;
use super::metrics::{QueueMetrics, Verdict};
use super::prefetch::{Batch, Sizing};
use super::store::{self, Finished, Job, Outcome};
use crate::prefork::{BoxError, Worker};

mod exec;
mod resident;
mod rust;
mod sql;

/// A job handler in Rust: the job and the worker thread's own connection
/// in, the result to store out, or any error: the attempt fails with its
/// message (`Err("no such account".into())`, or `?` on a statement).
pub type RustHandler = Arc<dyn Fn(&Job, &mut Client) -> Result<String, BoxError> + Send + Sync>;

/// What runs a job.
#[derive(Clone)]
pub enum Handler {
    /// A statement run with the payload as `$1` (a `text` parameter: cast it,
    /// `$1::int`), in the same transaction that marks the job done, so its
    /// effect commits exactly once per successful attempt. An error fails
    /// the attempt with the server's message and SQLSTATE.
    Sql(String),
    /// A program run directly (no shell), the payload on its standard input
    /// and `PREFORK_JOB_ID`, `PREFORK_QUEUE`, `PREFORK_KIND`, `PREFORK_ATTEMPT` in its
    /// environment. Exit 0: done, standard output (first 64 KiB) kept as the
    /// result. Otherwise a failed attempt with the tail of standard error.
    Exec {
        /// The program and its arguments.
        argv: Vec<String>,
    },
    /// A resident program: each worker thread runs one long-lived copy,
    /// fed one job at a time over a channel of its own (`--worker`; see the
    /// README's protocol): the program and its interpreter load once, not
    /// per job.
    Resident {
        /// The program and its arguments.
        argv: Vec<String>,
    },
    /// Rust code, given the job and the worker thread's own connection.
    Rust(RustHandler),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handler::Sql(sql) => f.debug_tuple("Sql").field(sql).finish(),
            Handler::Exec { argv } => f.debug_struct("Exec").field("argv", argv).finish(),
            Handler::Resident { argv } => f.debug_struct("Resident").field("argv", argv).finish(),
            Handler::Rust(_) => f.write_str("Rust(..)"),
        }
    }
}

/// What a handler needs of the child its workers run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Needs {
    /// How batches are sized, and whether claims prefetch for all the
    /// workers (see `prefetch::pace`).
    pub(super) sizing: Sizing,
    /// Jobs are statements on the worker's connection, cancelled on the
    /// server at their time limit by the child's watchdog (`deadline`).
    pub(super) deadlines: bool,
}

/// How a batch fared in its runner.
pub(super) enum Ran {
    /// The outcomes of the batch's first jobs, in order, for the child to
    /// record; the jobs past them never started and are handed back.
    Outcomes(Vec<Outcome>),
    /// The batch ran and recorded itself: its effects and outcomes
    /// committed together.
    Recorded,
}

/// Runs one worker's batches, one at a time.
pub(super) trait Runner<'a> {
    /// Runs `batch`.
    ///
    /// # Errors
    ///
    /// A failure that leaves the batch's outcome unknown (a broken
    /// connection): the whole batch is handed back.
    fn run(&mut self, cx: &Context<'a>, batch: &Batch) -> Result<Ran, crate::Error>;

    /// The worker stops: ends what the runner keeps running.
    fn end(&mut self, cx: &Context<'a>) {
        let _ = cx;
    }
}

impl Handler {
    /// What this handler needs of its child.
    pub(super) fn needs(&self) -> Needs {
        match self {
            Handler::Sql(_) => sql::NEEDS,
            Handler::Exec { .. } => exec::NEEDS,
            Handler::Resident { .. } => resident::NEEDS,
            Handler::Rust(_) => rust::NEEDS,
        }
    }

    /// A runner for one worker thread.
    pub(super) fn runner<'a>(&'a self, config: &QueueConfig) -> Box<dyn Runner<'a> + 'a> {
        match self {
            Handler::Sql(statement) => Box::new(sql::Sql::new(statement)),
            Handler::Exec { argv } => Box::new(exec::Exec::new(argv, config.withhold_credentials)),
            Handler::Resident { argv } => Box::new(resident::Resident::new(
                argv.clone(),
                config.resident_boot_timeout,
                config.resident_max_jobs,
                config.resident_memory,
                config.withhold_credentials,
            )),
            Handler::Rust(f) => Box::new(rust::Rust::new(f)),
        }
    }
}

/// The fleet's database settings a program does not inherit with
/// [`QueueConfig::withhold_credentials`].
const CREDENTIALS: &[&str] = &[
    "DATABASE_URL",
    "PREFORK_LISTEN_URL",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICEFILE",
];

/// A program's environment: the fleet's, less its database settings when
/// they are withheld.
fn program_env(command: &mut std::process::Command, withhold_credentials: bool) {
    if withhold_credentials {
        for name in CREDENTIALS {
            command.env_remove(name);
        }
    }
}

/// What a runner works with: its worker, the fleet's settings, the
/// child's counters and its watchdog.
pub(super) struct Context<'a> {
    pub(super) worker: &'a Worker,
    pub(super) config: &'a QueueConfig,
    pub(super) metrics: &'a QueueMetrics,
    /// The child's job watchdog, if the handler needs one.
    pub(super) deadlines: Option<&'a Deadlines>,
}

impl Context<'_> {
    /// A job's time limit: its own, or else the fleet's.
    pub(super) fn limit(&self, job: &Job) -> Option<Duration> {
        job.timeout.or(self.config.timeout)
    }

    /// A batch's time limit, for one statement that runs it all: the
    /// shortest of its jobs' (none if none has one). Past it the batch runs
    /// again job by job, each with its own limit, so only a job slow by
    /// itself fails.
    pub(super) fn batch_limit(&self, jobs: &[Job]) -> Option<Duration> {
        jobs.iter().filter_map(|j| self.limit(j)).min()
    }

    /// Counts a finished job for the status endpoint.
    pub(super) fn count(&self, job: &Job, verdict: Verdict, took: Duration) {
        self.metrics.count(self.worker, &job.queue, verdict, took);
    }

    /// Records `finished` in one statement, on this worker's connection.
    ///
    /// # Errors
    ///
    /// The statement's failure: the outcomes are not recorded.
    pub(super) fn record(&self, finished: &[Finished]) -> Result<(), crate::Error> {
        let c = self.config;
        self.worker.watched("recording outcomes", || {
            crate::with_client(|client| {
                store::complete(client, &c.schema, finished, c.keeps_history()).map(drop)
            })
        })
    }

    /// Whether `job` was cancelled while it ran (its program was stopped
    /// for it, or ended by a signal at the same time).
    pub(super) fn cancelled(&self, job: &Job) -> bool {
        crate::with_client(|c| store::cancelled_among(c, &self.config.schema, &[job.id]))
            .is_ok_and(|ids| !ids.is_empty())
    }

    /// Runs `f` on the worker's connection with `timeout` as its deadline
    /// (see `deadline`); `None` if it was cancelled there.
    ///
    /// # Errors
    ///
    /// `f`'s error, or the connection's.
    pub(super) fn on_deadline<T>(
        &self,
        timeout: Option<Duration>,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<Option<T>, crate::Error> {
        let (Some(deadlines), Some(timeout)) = (self.deadlines, timeout) else {
            return crate::with_client(f).map(Some);
        };
        let fired = Cell::new(false);
        let ran = crate::conn::with_client_cancellable(|client, canceller| {
            let armed = deadlines.arm(self.worker.index(), timeout, canceller);
            let ran = f(client);
            fired.set(armed.disarm());
            ran
        });
        if !fired.get() {
            return ran.map(Some);
        }
        // A cancel was sent, and may still land on this session's next
        // statement: retire it (see `deadline`, "the late cancel").
        crate::close_all();
        match ran {
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => Ok(None),
            other => other.map(Some),
        }
    }
}

/// A finished job of the claim `owner`.
fn finished(owner: &str, job: &Job, outcome: Outcome) -> Finished {
    Finished {
        owner: Arc::from(owner),
        job: job.clone(),
        outcome,
    }
}

/// A batch's label on the scoreboard: `job 17`, or `jobs 17..80`.
fn batch_label(jobs: &[Job]) -> String {
    match jobs {
        [one] => job_label(one.id),
        many => format!("jobs {}..{}", many[0].id, many[many.len() - 1].id),
    }
}

/// The time limit per job the master holds a batch to: the jobs' own if
/// they all have one (the longest), else the fleet's (`None`).
fn own_limit(jobs: &[Job]) -> Option<Duration> {
    let own = jobs.iter().map(|j| j.timeout).collect::<Option<Vec<_>>>();
    own.and_then(|limits| limits.into_iter().max())
}

/// The label of a job's unit of work on the scoreboard.
fn job_label(id: i64) -> String {
    format!("job {id}")
}

/// The error of a job whose statement was cancelled at its time limit.
fn timed_out(limit: Option<Duration>) -> String {
    let limit = limit.unwrap_or_default();
    format!("timed out after {limit:?} (its statement was cancelled: SQLSTATE 57014)")
}
