//! A PostgreSQL job queue worked by a prefork fleet.
//!
//! [`QueueApp`] is a [`prefork::App`](crate::prefork::App): in every child
//! one worker at a time claims jobs for all of them (the claims of a queue
//! take turns on the server) into the child's local queue (`prefetch`);
//! each worker takes a batch from it, runs it through a [`Handler`], and
//! leaves the outcomes to be recorded: one worker at a time records all
//! that wait, in one statement and one commit (`completions`). The hot path
//! is server-side functions
//! called with unnamed statements: a `--sql` batch runs and completes in
//! one round trip, and nothing in it depends on session state.
//!
//! A child's idle workers are leader and followers (the protocol is
//! written down in `idle`): one of them, the leader, keeps its connection,
//! `LISTEN`s for new jobs and claims them the moment a notification comes
//! (no connect on the way), with a slow fallback poll; the followers hold
//! no connection and sleep until woken. A worker that claimed a full batch
//! wakes another, so a burst spreads over the threads. So an idle fleet
//! holds one connection per child, and a busy one at most one per thread
//! (plus the master's).
//!
//! | module | what it is |
//! |---|---|
//! | `schema` | the schema's name, the queue names it accepts, the migrations |
//! | [`admin`] | looking at jobs, retrying and cancelling them (`prefork jobs`) |
//! | [`schedule`] | jobs queued on a cron expression, each tick exactly once |
//! | `store` | every statement the queue runs |
//! | `app` | [`QueueApp`] and a worker's loop |
//! | `runner` | what runs a batch: one module per [`Handler`] |
//! | `prefetch` | a child's local queue: one claim for all its workers, sized by the child's pace |
//! | `claims` | the owner stamps of a child's claims, and what it holds of each |
//! | `completions` | a child's outcomes, recorded together |
//! | `stranded` | what a failure left stamped but unrecorded, handed back by its stamp |
//! | `idle` | the protocol of a child's idle workers (leader and followers) |
//! | `housekeeping` | a child's periodic duties: vacuum, pruning, expired leases |
//! | `deadline` | a job's statement cancelled at its timeout, by a watchdog per child |
//! | `master` | the queue's duties in the master: heartbeat, rescue, schedules, cancels |
//! | `metrics` | the queue's counters and gauges for the status endpoint |

pub mod admin;
mod app;
mod claims;
mod completions;
mod deadline;
mod housekeeping;
mod idle;
mod master;
mod metrics;
mod prefetch;
mod runner;
pub mod schedule;
mod schema;
mod store;
mod stranded;

use std::sync::Arc;
use std::time::Duration;

use postgres::Client;

pub use app::{QueueApp, QueueChild};
pub use master::FleetStats;
pub use metrics::FinishedJobs;
pub use store::{
    ChildRow, Counts, Enqueue, Enqueued, Job, Release, Released, Schema, check_queue_name, counts,
    enqueue, enqueue_copies, enqueue_in, enqueue_one, live_children, migrate, release,
};

/// A job handler in Rust: the job and the worker thread's own connection
/// in, the result to store (or the error) out.
pub type RustHandler = Arc<dyn Fn(&Job, &mut Client) -> Result<String, String> + Send + Sync>;

/// What runs a job.
#[derive(Clone)]
pub enum Handler {
    /// A statement run with the payload as `$1` (a `text` parameter: cast it,
    /// `$1::int`), in the same transaction that marks the job done, so its
    /// effect commits exactly once per successful attempt. An error fails
    /// the attempt with the server's message and SQLSTATE.
    Sql(String),
    /// A program run directly (no shell), the payload on its standard input
    /// and `PREFORK_JOB_ID`, `PREFORK_QUEUE`, `PREFORK_ATTEMPT` in its
    /// environment. Exit 0: done, standard output (first 64 KiB) kept as the
    /// result. Otherwise a failed attempt with the tail of standard error.
    Exec {
        /// The program and its arguments.
        argv: Vec<String>,
    },
    /// A long-lived program per worker thread, fed one job at a time over
    /// a channel of its own (see the README's protocol): the program and
    /// its interpreter load once, not per job.
    Worker {
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
            Handler::Worker { argv } => f.debug_struct("Worker").field("argv", argv).finish(),
            Handler::Rust(_) => f.write_str("Rust(..)"),
        }
    }
}

/// Settings of a [`QueueApp`].
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Where the tables live. Default: `prefork`.
    pub schema: Schema,
    /// The queues to work, in order of preference: a runnable job of the
    /// first before one of the second, and so on (by priority within a
    /// queue). Default: `["default"]`.
    pub queues: Vec<String>,
    /// Jobs one worker runs and records at once, at least: from a deep
    /// local queue it takes a fair share, up to 64; a child claims up to 8
    /// batches per worker at once (one batch for `Exec`, whose jobs are
    /// slow and run one at a time). Default: 8 (1 for `Exec`).
    pub batch: i64,
    /// How long a claim lasts before others may take the job over (a dead
    /// host's jobs). Default: 5 minutes; keep it above the longest job.
    pub lease: Duration,
    /// How long one job may take; `None`: no limit. Past it, a job's
    /// statement (`Sql`, or the statements of a `Rust` handler) is
    /// cancelled on the server and an `Exec` program's process group is
    /// stopped, and that job alone fails with "timed out after ...". A
    /// `Sql` batch that runs past it is cancelled and its jobs run again
    /// one by one, so only a job that takes this long by itself fails.
    /// Default: `None`.
    pub timeout: Option<Duration>,
    /// Stop the fleet once nothing is queued or running. Default: off.
    pub drain: bool,
    /// How often each child looks for work that came without a
    /// notification (retries coming due, a missed notification), for dead
    /// rows to vacuum, expired leases and finished jobs to delete. Default:
    /// 1 second.
    pub poll: Duration,
    /// The database alias a child's leader `LISTEN`s (and claims) on;
    /// `None`: the first configured one, like the jobs. Give a direct (or
    /// session-pooled) connection here when the jobs go through PgBouncer
    /// in transaction mode, where `LISTEN` does not reach the session and
    /// pickup would fall back to the poll. A leader with its own alias
    /// closes its other connections while it leads, and this one when it
    /// stops leading, so the connection bounds hold. Default: `None`.
    pub listen: Option<String>,
    /// Delete finished jobs (done or failed) of this queue this long after
    /// they finished, a batch per `poll`; `None` keeps them. Zero keeps no
    /// history: a done job is deleted as it completes (which costs the
    /// server a third less per job), a failed one is kept to be looked at
    /// (delete it by hand). Default: `None`.
    pub keep_finished: Option<Duration>,
    /// How long a master's heartbeat (every second, from its loop) may be
    /// missing before another master takes it for dead and hands its
    /// children's running jobs back (attempt counted); `None`: only the
    /// lease brings them back. Default: 15 seconds.
    pub rescue_after: Option<Duration>,
    /// A [`Handler::Worker`] program is started afresh after this many
    /// jobs. Default: `None` (never).
    pub worker_max_jobs: Option<u64>,
    /// How long a [`Handler::Worker`] program may take to say it is ready.
    /// Default: 30 seconds.
    pub worker_boot_timeout: Duration,
    /// The memory limits a [`Handler::Worker`] program is held to, as a
    /// child is (`--max-memory`, `--reload-on-rss`). Default: none.
    pub worker_memory: MemoryLimits,
}

/// Memory limits for a long-lived program: it is started afresh past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryLimits {
    /// Proportional memory (PSS), in bytes, over which it is recycled after
    /// `readings` consecutive readings a second apart.
    pub pss: Option<u64>,
    /// Consecutive readings over `pss` (at least 1).
    pub readings: u32,
    /// Resident memory (RSS), in bytes, over which it is recycled at once.
    pub rss: Option<u64>,
}

impl QueueConfig {
    /// Whether done jobs are kept as history (see
    /// [`QueueConfig::keep_finished`]).
    pub fn keeps_history(&self) -> bool {
        self.keep_finished != Some(Duration::ZERO)
    }
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            schema: Schema::default(),
            queues: vec!["default".to_owned()],
            batch: 8,
            lease: Duration::from_secs(300),
            timeout: None,
            drain: false,
            poll: Duration::from_secs(1),
            listen: None,
            keep_finished: None,
            rescue_after: Some(Duration::from_secs(15)),
            worker_max_jobs: None,
            worker_boot_timeout: Duration::from_secs(30),
            worker_memory: MemoryLimits::default(),
        }
    }
}
