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
//! | `state` | [`JobState`]: where a job is in its life |
//! | `args` | [`JobArgs`]: a kind and its arguments as one Rust type |
//! | `schema` | the schema's name, the queue names it accepts; its migrations and functions as SQL files |
//! | [`admin`] | looking at jobs, retrying and cancelling them (`prefork jobs`) |
//! | [`schedule`] | jobs queued on a cron expression, each tick exactly once |
//! | `store` | every statement the queue runs |
//! | `config` | [`QueueConfig`]: a queue fleet's settings |
//! | `app` | [`QueueApp`] and a worker's loop |
//! | `runner` | what runs a batch: one module per [`Handler`] |
//! | `prefetch` | a child's local queue: one claim for all its workers, sized by the child's pace |
//! | `claims` | the owner stamps of a child's claims, and what it holds of each |
//! | `floors` | where a child's claims start in each priority level, past the jobs claimed there |
//! | `completions` | a child's outcomes, recorded together |
//! | `stranded` | what a failure left stamped but unrecorded, handed back by its stamp |
//! | `idle` | the protocol of a child's idle workers (leader and followers) |
//! | `lease` | the rule: a running job is held while its child holds a live lease |
//! | `keeper` | a child's thread that renews its lease and sweeps for lapsed ones |
//! | `housekeeping` | a child's periodic duties: vacuum, pruning |
//! | `deadline` | a job's statement cancelled at its timeout, by a watchdog per child |
//! | `metrics` | the queue's counters and gauges for the status endpoint |
//! | `failing` | the master's log line while jobs keep failing |

pub mod admin;
mod alone;
mod app;
mod args;
mod claims;
mod completions;
mod config;
mod deadline;
mod failing;
mod floors;
mod housekeeping;
mod idle;
mod keeper;
mod lease;
mod metrics;
mod prefetch;
mod runner;
pub mod schedule;
mod schema;
mod state;
mod store;
mod stranded;

pub use app::{QueueApp, QueueChild};
pub use args::{ArgsError, JobArgs, enqueue_args};
pub use config::QueueConfig;
pub use metrics::FinishedJobs;
pub use metrics::FleetStats;
pub use runner::{Handler, RustHandler};
pub use state::{JobState, UnknownState};
pub use store::{
    ChildRow, Counts, Enqueue, Enqueued, Job, KindCount, NameError, Release, Released, Schema,
    check_kind_name, check_queue_name, counts, enqueue, enqueue_copies, enqueue_in, enqueue_one,
    kind_counts, live_children, migrate, release,
};
