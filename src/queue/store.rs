//! The statements the queue runs against its tables.
//!
//! Queued and running jobs live in `<schema>.jobs_live`, finished ones (done,
//! or failed after their last attempt) in `<schema>.jobs_finished`, and the
//! view `<schema>.jobs` shows both. A claim is a committed lease: the job turns
//! `running`, its attempt is counted and it is stamped with the claim
//! (`host:pid/worker.seq`, one stamp per claim) and a lease deadline.
//! Completion is guarded by that stamp and the attempt, so a worker whose
//! lease was taken over can never mark the job twice. A job whose worker died is requeued at once by the master that saw
//! it die, or by anyone once its lease expires (a dead host).
//!
//! Only queued jobs are in the claim index (a partial index), and finished
//! jobs leave the live table, so a long history slows neither claiming nor
//! the live table's vacuums.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use postgres::Client;
use postgres::types::{ToSql, Type};

use super::floors::Floors;
use crate::Pid;

pub use super::schema::{NameError, Schema, check_kind_name, check_queue_name, migrate};

/// Most jobs one enqueue statement inserts.
const INSERT_BATCH: usize = 10_000;

/// How to enqueue.
#[derive(Debug, Clone)]
pub struct Enqueue<'a> {
    /// The queue. Default: `default`.
    pub queue: &'a str,
    /// Attempts before a job is `failed`. Default: 3.
    pub max_attempts: i32,
    /// When the jobs become runnable (`None`: now). Default: `None`.
    pub run_at: Option<DateTime<Utc>>,
    /// This long after `run_at` (or now). Default: `None`.
    pub run_in: Option<Duration>,
    /// Smaller runs first; never negative. Within a priority, the oldest
    /// first. Default: 0.
    pub priority: i32,
    /// At most one unfinished (queued or running) job of the queue has
    /// this key: enqueueing another returns the existing job instead.
    /// Default: `None`.
    pub unique_key: Option<&'a str>,
    /// This job's time limit (`None`: the fleet's `--timeout`). Default:
    /// `None`.
    pub timeout: Option<Duration>,
    /// What the jobs do: fleets that serve some kinds only (`--kinds`)
    /// claim only theirs. Default: `default`.
    pub kind: &'a str,
    /// Each payload given is the job's arguments, a JSON object (stored as
    /// `jsonb`: one that is not JSON fails the enqueue), rather than its
    /// text payload. A job's handler is given its arguments if it has
    /// any, else its payload. Default: `false`.
    pub arguments: bool,
}

impl Default for Enqueue<'_> {
    fn default() -> Self {
        Enqueue {
            queue: "default",
            max_attempts: 3,
            run_at: None,
            run_in: None,
            priority: 0,
            unique_key: None,
            timeout: None,
            kind: "default",
            arguments: false,
        }
    }
}

/// A job's (or a schedule's) `timeout` column, seconds as `float8`, as a
/// time limit: `None` for none (or one no `Duration` holds).
pub(crate) fn timeout_column(secs: Option<f64>) -> Option<Duration> {
    secs.and_then(|t| Duration::try_from_secs_f64(t).ok())
}

impl Enqueue<'_> {
    pub(crate) fn timeout_secs(&self) -> Option<f64> {
        self.timeout.map(|t| t.as_secs_f64())
    }

    fn run_in_secs(&self) -> f64 {
        self.run_in.map_or(0.0, |d| d.as_secs_f64())
    }
}

/// What [`enqueue_one`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id: the new job's, or the one holding the unique key.
    pub id: i64,
    /// Whether a job was queued (false: the unique key was held).
    pub created: bool,
}

/// Queues one job, or, when its unique key is held by an unfinished job of
/// the queue, returns that job. Safe under concurrent enqueues from many
/// processes (the server's unique index decides). Runs on `client` as is:
/// inside its transaction if it is one.
///
/// # Errors
///
/// The server's error; nothing was queued.
pub fn enqueue_one(
    client: &mut impl postgres::GenericClient,
    schema: &Schema,
    how: &Enqueue<'_>,
    payload: &str,
) -> Result<Enqueued, postgres::Error> {
    let s = schema.name();
    let row = client.query_typed_one(
        &format!(
            "SELECT job_id, created FROM {s}.enqueue_job($1,
                 CASE WHEN $10 THEN '' ELSE $2 END, $3,
                 coalesce($4::timestamptz, now()) + make_interval(secs => $8), $5, $6, $7, $9,
                 CASE WHEN $10 THEN $2::jsonb END)"
        ),
        &[
            (&how.queue, Type::TEXT),
            (&payload, Type::TEXT),
            (&how.max_attempts, Type::INT4),
            (&how.run_at, Type::TIMESTAMPTZ),
            (&how.priority, Type::INT4),
            (&how.unique_key, Type::TEXT),
            (&how.timeout_secs(), Type::FLOAT8),
            (&how.run_in_secs(), Type::FLOAT8),
            (&how.kind, Type::TEXT),
            (&how.arguments, Type::BOOL),
        ],
    )?;
    Ok(Enqueued {
        id: row.get(0),
        created: row.get(1),
    })
}

/// Queues `payloads`, all or none: one transaction, committed once every
/// payload is in (listening workers hear of them at that commit). Returns
/// how many were queued.
///
/// # Errors
///
/// The server's error; nothing was queued.
pub fn enqueue(
    client: &mut Client,
    schema: &Schema,
    how: &Enqueue<'_>,
    payloads: &[String],
) -> Result<u64, postgres::Error> {
    let mut tx = client.transaction()?;
    let queued = enqueue_in(&mut tx, schema, how, payloads)?;
    tx.commit()?;
    Ok(queued)
}

/// Queues `payloads` inside the caller's transaction, so that jobs fed in
/// pieces (a stream too big to hold, say) are queued together, or not at
/// all when the transaction rolls back. Listening workers hear of them at
/// its commit. Returns how many it inserted. With a unique key, each
/// payload is enqueued as by [`enqueue_one`]: the first queues a job (if
/// the key is free), the others find it.
///
/// # Errors
///
/// The server's error; the transaction is then aborted.
pub fn enqueue_in(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    how: &Enqueue<'_>,
    payloads: &[String],
) -> Result<u64, postgres::Error> {
    let s = schema.name();
    if how.unique_key.is_some() {
        let mut queued = 0;
        for payload in payloads {
            queued += u64::from(enqueue_one(tx, schema, how, payload)?.created);
        }
        return Ok(queued);
    }
    let insert = format!(
        "INSERT INTO {s}.jobs_live (queue, payload, max_attempts, run_at, priority, timeout,
                                    kind, args)
         SELECT $1, CASE WHEN $9 THEN '' ELSE p END, $2,
                coalesce($3::timestamptz, now()) + make_interval(secs => $7), $5, $6, $8,
                CASE WHEN $9 THEN p::jsonb END
         FROM unnest($4::text[]) AS p"
    );
    let mut queued = 0;
    for batch in payloads.chunks(INSERT_BATCH) {
        queued += tx.execute_typed(
            &insert,
            &[
                (&how.queue, Type::TEXT),
                (&how.max_attempts, Type::INT4),
                (&how.run_at, Type::TIMESTAMPTZ),
                (&batch, Type::TEXT_ARRAY),
                (&how.priority, Type::INT4),
                (&how.timeout_secs(), Type::FLOAT8),
                (&how.run_in_secs(), Type::FLOAT8),
                (&how.kind, Type::TEXT),
                (&how.arguments, Type::BOOL),
            ],
        )?;
    }
    notify(tx, schema, how.queue)?;
    Ok(queued)
}

/// Queues `count` copies of `payload` in one statement, the rows made on
/// the server: nothing the size of `count` is held on this side. All or
/// none, as [`enqueue`]. Returns how many were queued (with a unique key,
/// at most one).
///
/// # Errors
///
/// The server's error; nothing was queued.
pub fn enqueue_copies(
    client: &mut Client,
    schema: &Schema,
    how: &Enqueue<'_>,
    payload: &str,
    count: u64,
) -> Result<u64, postgres::Error> {
    let s = schema.name();
    if how.unique_key.is_some() {
        return Ok(u64::from(
            enqueue_one(client, schema, how, payload)?.created,
        ));
    }
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    let mut tx = client.transaction()?;
    let queued = tx.execute_typed(
        &format!(
            "INSERT INTO {s}.jobs_live (queue, payload, max_attempts, run_at, priority, timeout,
                                        kind, args)
             SELECT $1, CASE WHEN $10 THEN '' ELSE $4 END, $2,
                    coalesce($3::timestamptz, now()) + make_interval(secs => $8), $6, $7, $9,
                    a.args
             FROM (SELECT CASE WHEN $10 THEN $4::jsonb END AS args) AS a,
                  generate_series(1::int8, $5::int8)"
        ),
        &[
            (&how.queue, Type::TEXT),
            (&how.max_attempts, Type::INT4),
            (&how.run_at, Type::TIMESTAMPTZ),
            (&payload, Type::TEXT),
            (&count, Type::INT8),
            (&how.priority, Type::INT4),
            (&how.timeout_secs(), Type::FLOAT8),
            (&how.run_in_secs(), Type::FLOAT8),
            (&how.kind, Type::TEXT),
            (&how.arguments, Type::BOOL),
        ],
    )?;
    notify(&mut tx, schema, how.queue)?;
    tx.commit()?;
    Ok(queued)
}

/// Tells listening workers there are jobs, of `queue` or (`""`) any: at
/// once, or at the commit of the transaction `client` is in.
fn notify(
    client: &mut impl postgres::GenericClient,
    schema: &Schema,
    queue: &str,
) -> Result<(), postgres::Error> {
    client
        .execute_typed(
            "SELECT pg_notify($1, $2)",
            &[(&schema.channel(), Type::TEXT), (&queue, Type::TEXT)],
        )
        .map(drop)
}

/// What a fleet claims: its queues, in order of preference, and the kinds
/// it serves (`None`: every kind).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Serving<'a> {
    pub(crate) queues: &'a [String],
    pub(crate) kinds: Option<&'a [String]>,
}

impl<'a> Serving<'a> {
    /// Every kind of `queues`.
    #[cfg(test)]
    pub(crate) fn all(queues: &'a [String]) -> Serving<'a> {
        Serving {
            queues,
            kinds: None,
        }
    }
}

/// A claimed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The job's id.
    pub id: i64,
    /// The queue it came from.
    pub queue: String,
    /// What it does (`default` for a job queued with a payload alone).
    pub kind: String,
    /// Its input: its arguments (JSON) if it has any, else its payload.
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// Its priority (smaller runs first).
    pub priority: i32,
    /// Its own time limit, if it has one (else the fleet's).
    pub timeout: Option<Duration>,
    /// Attempts it may take: a failure of the last one is final.
    pub max_attempts: i32,
    /// Whether it was running when a child died, its attempt given back: it
    /// runs alone, one such job at a time in a child, so a death while it
    /// runs is its own and counts an attempt (see the queue's README
    /// section on what an attempt is).
    pub suspect: bool,
}

/// Claims up to `limit` runnable jobs of the queues and kinds `serving`
/// names (a job of the first queue before one of the second, and so on;
/// by priority within a queue, oldest first whatever its kind) for
/// `owner` with a lease of `lease`, in the order they are to run.
///
/// The claim commits without waiting for its WAL flush
/// (`synchronous_commit = off` for this transaction only). That is safe:
/// WAL is flushed in order, so the claim is durable as soon as anything
/// after it is, such as the batch's completion. A claim lost in a server
/// crash only returns its jobs to `queued`, together with anything their
/// unflushed completion did. It saves one disk flush per batch.
///
/// Claims of one queue take turns (an advisory lock per queue, held to the
/// commit; see migration 10), so a claim never walks rows another claim
/// holds and does not lock rows before updating them.
///
/// Each level's scan starts at the child's `floors`, which the jobs
/// claimed raise (see `floors`).
pub(crate) fn claim(
    client: &mut Client,
    schema: &Schema,
    serving: Serving<'_>,
    limit: i64,
    owner: &str,
    lease: Duration,
    floors: &Floors,
) -> Result<Vec<Job>, postgres::Error> {
    let s = schema.name();
    let limit = i32::try_from(limit).unwrap_or(i32::MAX);
    let from = floors.args();
    let rows = client.query_typed(
        &format!(
            "SELECT job_id, job_payload, job_attempt, job_queue, job_priority, job_timeout,
                    job_max_attempts, job_suspect, job_run_at, job_kind
             FROM {s}.claim($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        &[
            (&serving.queues, Type::TEXT_ARRAY),
            (&limit, Type::INT4),
            (&owner, Type::TEXT),
            (&lease.as_secs_f64(), Type::FLOAT8),
            (&from.queues, Type::TEXT_ARRAY),
            (&from.levels, Type::INT4_ARRAY),
            (&from.starts, Type::FLOAT8_ARRAY),
            (&serving.kinds, Type::TEXT_ARRAY),
        ],
    )?;
    Ok(rows
        .iter()
        .map(|r| {
            let job = Job {
                id: r.get(0),
                kind: r.get(9),
                payload: r.get(1),
                attempt: r.get(2),
                queue: r.get(3),
                priority: r.get(4),
                timeout: timeout_column(r.get(5)),
                max_attempts: r.get(6),
                suspect: r.get(7),
            };
            floors.raise(&job.queue, job.priority, r.get(8));
            job
        })
        .collect())
}

/// Lowers `floors` to the first queued job of each level of the queues and
/// kinds `serving` names, for
/// jobs that became visible below them (see `floors`). Walks each level
/// from its start: under a pinned horizon, as slow as a claim without
/// floors; never inside a claim.
///
/// # Errors
///
/// The server's error.
pub(crate) fn rescan(
    client: &mut Client,
    schema: &Schema,
    serving: Serving<'_>,
    floors: &Floors,
) -> Result<(), postgres::Error> {
    let s = schema.name();
    let rows = client.query_typed(
        &format!("SELECT queue, priority, run_at FROM {s}.first_queued($1, $2)"),
        &[
            (&serving.queues, Type::TEXT_ARRAY),
            (&serving.kinds, Type::TEXT_ARRAY),
        ],
    )?;
    for r in &rows {
        floors.lower(r.get(0), r.get(1), r.get(2));
    }
    Ok(())
}

/// What a child's periodic look at the queue found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    /// One of the queues has a job runnable now.
    pub(crate) runnable: bool,
    /// Dead row versions in the jobs table, as the statistics collector
    /// last counted them (0 if it does not count).
    pub(crate) dead_rows: i64,
    /// Live rows in the jobs table, as the statistics collector last
    /// counted them (0 if it does not count).
    pub(crate) live_rows: i64,
    /// This role may vacuum the jobs table (it owns it, or is a superuser).
    pub(crate) may_vacuum: bool,
}

/// Looks for a runnable job of what `serving` names (a few index descents, from the
/// child's `floors`) and at the jobs table's dead rows, in one round trip.
pub(crate) fn probe(
    client: &mut Client,
    schema: &Schema,
    serving: Serving<'_>,
    floors: &Floors,
) -> Result<Probe, postgres::Error> {
    let s = schema.name();
    let from = floors.args();
    let row = client.query_typed_one(
        &format!(
            "SELECT {s}.runnable($1, $2, $3, $4, $5),
                    coalesce((SELECT n_dead_tup FROM pg_stat_user_tables
                              WHERE relid = '{s}.jobs_live'::regclass), 0),
                    coalesce((SELECT n_live_tup FROM pg_stat_user_tables
                              WHERE relid = '{s}.jobs_live'::regclass), 0),
                    pg_has_role((SELECT relowner FROM pg_class
                                 WHERE oid = '{s}.jobs_live'::regclass), 'USAGE')"
        ),
        &[
            (&serving.queues, Type::TEXT_ARRAY),
            (&from.queues, Type::TEXT_ARRAY),
            (&from.levels, Type::INT4_ARRAY),
            (&from.starts, Type::FLOAT8_ARRAY),
            (&serving.kinds, Type::TEXT_ARRAY),
        ],
    )?;
    Ok(Probe {
        runnable: row.get(0),
        dead_rows: row.get(1),
        live_rows: row.get(2),
        may_vacuum: row.get(3),
    })
}

/// Vacuums the jobs table, unless another session is already at it.
///
/// Every claim and every completion leaves a dead row version, and the
/// claim index keeps an entry for each claimed job until a vacuum removes
/// it. A claim's index scan starts at the oldest entry, so between vacuums
/// it walks over every job claimed since the last one: at thousands of jobs
/// a second, autovacuum (a minute apart by default, and throttled) lets
/// that walk grow to thousands of index pages per claim. The fleet's
/// children call this once dead rows pile up, which keeps the walk short.
/// Only for a role that owns the table (see [`Probe::may_vacuum`]); for
/// others the server would skip it with a warning.
pub(crate) fn vacuum(client: &mut Client, schema: &Schema) -> Result<(), postgres::Error> {
    let s = schema.name();
    // INDEX_CLEANUP ON: with few dead rows in a big backlog, PostgreSQL
    // would skip the indexes (under 2% of the pages), and the claim index's
    // dead entries are the point. The live table holds the backlog only,
    // so its indexes stay as small as the backlog.
    client.batch_execute(&format!(
        "VACUUM (SKIP_LOCKED, PARALLEL 0, INDEX_CLEANUP ON) {s}.jobs_live"
    ))
}

/// A job's outcome: `Ok(result)` or `Err(error)`.
pub(crate) type Outcome = Result<String, String>;

/// A job a worker ran, its outcome, and the claim it ran under.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    /// The owner stamp of the claim that brought the job in.
    pub(crate) owner: Arc<str>,
    pub(crate) job: Job,
    pub(crate) outcome: Outcome,
}

/// Records the outcomes of finished jobs, of any number of claims, in one
/// statement: done (moved to the finished jobs, or with `keep` false only
/// deleted), or queued again after a backoff (`retry_delay`: 0.2 s x 4^(attempt-1), at
/// most an hour), or failed after the last attempt. A job its claim no
/// longer holds at the attempt it claimed (its lease was taken over) is
/// left alone. Returns how many it recorded.
pub(crate) fn complete(
    client: &mut Client,
    schema: &Schema,
    finished: &[Finished],
    keep: bool,
) -> Result<i64, postgres::Error> {
    let s = schema.name();
    let owners: Vec<&str> = finished.iter().map(|f| &*f.owner).collect();
    let ids: Vec<i64> = finished.iter().map(|f| f.job.id).collect();
    let attempts: Vec<i32> = finished.iter().map(|f| f.job.attempt).collect();
    let (oks, texts): (Vec<bool>, Vec<std::borrow::Cow<'_, str>>) =
        finished.iter().map(|f| recordable(&f.outcome)).unzip();
    let row = client.query_typed_one(
        &format!("SELECT {s}.complete_jobs($1, $2, $3, $4, $5, $6)"),
        &[
            (&owners, Type::TEXT_ARRAY),
            (&ids, Type::INT8_ARRAY),
            (&attempts, Type::INT4_ARRAY),
            (&oks, Type::BOOL_ARRAY),
            (&texts, Type::TEXT_ARRAY),
            (&keep, Type::BOOL),
        ],
    )?;
    Ok(row.get(0))
}

/// An outcome as it can be recorded: PostgreSQL's `text` holds no NUL
/// byte, and one in a single outcome would fail the statement that records
/// a whole group's. Such an outcome fails its own job, with the reason and
/// the text, its NULs written `\u0000`.
fn recordable(outcome: &Result<String, String>) -> (bool, std::borrow::Cow<'_, str>) {
    let (ok, text) = match outcome {
        Ok(text) => (true, text.as_str()),
        Err(text) => (false, text.as_str()),
    };
    if !text.contains('\0') {
        return (ok, std::borrow::Cow::Borrowed(text));
    }
    let escaped = text.replace('\0', "\\u0000");
    let text = match ok {
        true => format!("its result holds a NUL byte, which a text column cannot store: {escaped}"),
        false => escaped,
    };
    (false, std::borrow::Cow::Owned(text))
}

/// Runs `sql` once per job with the payload as `$1` (a `text`), and records
/// the outcomes as [`complete`] does, all in one transaction and one round
/// trip: a statement's effect commits exactly when its job is marked done.
/// A failing statement fails only its own job, with the server's message
/// and SQLSTATE.
///
/// The claim fences the effect: only jobs `owner` still holds at the
/// attempt it claimed run, and they stay locked until the commit (see
/// migration 7). A job whose lease was taken over while this worker was
/// away runs nothing here. Returns how many jobs ran and were recorded, and which of them failed.
pub(crate) fn run_sql(
    client: &mut Client,
    schema: &Schema,
    sql: &str,
    owner: &str,
    jobs: &[Job],
    keep: bool,
) -> Result<SqlRan, postgres::Error> {
    let s = schema.name();
    let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.attempt).collect();
    let payloads: Vec<&str> = jobs.iter().map(|j| j.payload.as_str()).collect();
    let row = client.query_typed_one(
        &format!("SELECT recorded, failed FROM {s}.run_sql_outcomes($1, $2, $3, $4, $5, $6)"),
        &[
            (&sql, Type::TEXT),
            (&owner, Type::TEXT),
            (&ids, Type::INT8_ARRAY),
            (&attempts, Type::INT4_ARRAY),
            (&payloads, Type::TEXT_ARRAY),
            (&keep, Type::BOOL),
        ],
    )?;
    Ok(SqlRan {
        recorded: row.get(0),
        failed: row.get(1),
    })
}

/// What [`run_sql`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SqlRan {
    /// Jobs that ran and were recorded (the others' claims were lost).
    pub(crate) recorded: i64,
    /// Of those, the ones whose statement failed.
    pub(crate) failed: Vec<i64>,
}

/// Which running jobs [`release`] gives back.
#[derive(Debug, Clone, Copy)]
pub enum Release<'a> {
    /// Those of these processes, children that died: of the jobs `running`
    /// (their workers ran them), a suspect counts the attempt and the
    /// others become suspects, their attempt given back (see `lease`); the
    /// jobs never started are queued again with their attempt given back.
    Died {
        /// The children, `host:pid`.
        processes: &'a [String],
        /// The jobs their workers were running.
        running: &'a [i64],
    },
    /// Those of these processes, which the master stopped before they
    /// finished (a graceful stop past its timeout): queued again at once,
    /// their attempt given back, as if never started.
    Interrupted(&'a [String]),
    /// Those stamped by one worker's claims (`prefix` is
    /// `host:pid/worker.`) but none of `live`, the claims whose jobs its
    /// child still holds: claims that committed but whose answer was lost.
    /// Never started: queued again a second or two later, their attempt
    /// given back.
    Lost {
        /// The worker's stamp prefix.
        prefix: &'a str,
        /// Its claims still live in the child.
        live: &'a [String],
    },
    /// These jobs of the claim `owner`, if still held at these attempts,
    /// that never started (a stopping child's local queue): queued again
    /// where they were, their attempt given back.
    Unstarted {
        /// The claim's owner stamp.
        owner: &'a str,
        /// The jobs.
        jobs: &'a [Job],
    },
    /// These jobs of the claim `owner`, if still held at these attempts: a
    /// batch whose outcome could not be recorded (the fleet's failure, not
    /// the jobs'): queued again a second or two later, their attempt given
    /// back. (A `--sql` batch's effects rolled back with the statement;
    /// other handlers' may have committed: at least once.)
    Jobs {
        /// The claim's owner stamp.
        owner: &'a str,
        /// The jobs.
        jobs: &'a [Job],
    },
    /// Those of children whose lease lapsed (see `lease`): the lapsed
    /// leases are ended in the same statement, each by exactly one of the
    /// children sweeping.
    Lapsed,
    /// Those whose child holds no live lease and whose claim's own hold
    /// (`locked_until`) ran out: claims of an older version's children, or
    /// made as their child's lease was swept.
    Unleased,
}

/// What [`release`] did with the jobs it took back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    /// Queued again: at once, or a second or two later.
    pub requeued: u64,
    /// Failed: that was their last attempt.
    pub failed: u64,
    /// Of the requeued, running jobs that became suspects, their attempt
    /// given back: they run alone next (see `lease`).
    pub suspects: u64,
    /// For [`Release::Lapsed`]: the children (`host:pid`) whose lease
    /// lapsed.
    pub lapsed: Vec<String>,
}

impl Released {
    /// Whether it released no job.
    pub fn is_empty(&self) -> bool {
        self.requeued == 0 && self.failed == 0
    }
}

impl std::fmt::Display for Released {
    /// `requeued 3 job(s)`, `failed 1 job(s) (out of attempts)`, or both;
    /// with how many of the requeued became suspects.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.requeued, self.failed) {
            (r, 0) => write!(f, "requeued {r} job(s)")?,
            (0, x) => write!(f, "failed {x} job(s) (out of attempts)")?,
            (r, x) => write!(f, "requeued {r} job(s) and failed {x} (out of attempts)")?,
        }
        match self.suspects {
            0 => Ok(()),
            n => write!(
                f,
                " ({n} running as their child died: suspects now, each to run alone)"
            ),
        }
    }
}

/// Requeues (or fails, after their last attempt) running jobs.
///
/// # Errors
///
/// The server's error.
pub fn release(
    client: &mut Client,
    schema: &Schema,
    which: Release<'_>,
) -> Result<Released, postgres::Error> {
    let s = schema.name();
    // Jobs that never started, were interrupted by a stop, or met a
    // failure of the fleet's own (a connection lost, a completion that
    // could not be recorded): queued again where they were, their attempt
    // given back. After a failure (`later`), not before a second or two
    // (jittered): what failed is likely still failing.
    let give_back = |client: &mut Client,
                     condition: &str,
                     params: &[(&(dyn ToSql + Sync), Type)],
                     later: bool|
     -> Result<Released, postgres::Error> {
        let run_at = match later {
            true => "greatest(j.run_at, now() + make_interval(secs => 1 + random()))",
            false => "j.run_at",
        };
        // Locked in id order, as everywhere (see below).
        let requeued = client.execute_typed(
            &format!(
                "UPDATE {s}.jobs_live AS j
                 SET state = 'queued', attempts = j.attempts - 1, run_at = {run_at},
                     locked_by = NULL, locked_until = NULL
                 FROM (SELECT id FROM {s}.jobs_live
                       WHERE state = 'running' AND {condition}
                       ORDER BY id FOR UPDATE) AS t
                 WHERE j.id = t.id"
            ),
            params,
        )?;
        if requeued > 0 {
            notify(client, schema, "")?;
        }
        Ok(Released {
            requeued,
            ..Released::default()
        })
    };
    match which {
        // Never started (`Unstarted`), or ran but its outcome could not
        // be recorded (`Jobs`: the fleet's failure, retried later).
        Release::Unstarted { owner, jobs } | Release::Jobs { owner, jobs } => {
            let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
            let attempts: Vec<i32> = jobs.iter().map(|j| j.attempt).collect();
            return give_back(
                client,
                "id = ANY($2) AND locked_by = $1
                 AND (id, attempts) IN (SELECT * FROM unnest($2::int8[], $3::int4[]))",
                &[
                    (&owner, Type::TEXT),
                    (&ids, Type::INT8_ARRAY),
                    (&attempts, Type::INT4_ARRAY),
                ],
                matches!(which, Release::Jobs { .. }),
            );
        }
        Release::Interrupted(processes) => {
            let patterns: Vec<String> = processes.iter().map(|p| format!("{p}/%")).collect();
            return give_back(
                client,
                "locked_by LIKE ANY($1)",
                &[(&patterns, Type::TEXT_ARRAY)],
                false,
            );
        }
        // A failure of the fleet's own: the jobs' code did not fail.
        Release::Lost { prefix, live } => {
            let pattern = format!(
                "{}%",
                prefix
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            return give_back(
                client,
                "locked_by LIKE $1 AND locked_by <> ALL($2)",
                &[(&pattern, Type::TEXT), (&live, Type::TEXT_ARRAY)],
                true,
            );
        }
        _ => {}
    }
    // The running jobs that match, locked, taken from a holder that died
    // or lapsed as they ran (see lease.rs, "Attempts when a holder dies"):
    // a suspect's attempt counts (it ran alone, so the death was its own):
    // queued again at once, or failed after its last attempt; any other
    // job's attempt is given back and it becomes a suspect, queued again a
    // second or two later (jittered: its child is likely being replaced).
    // A job asked to be cancelled finishes cancelled.
    // Rows are locked in id order, as run_sql's fence locks them, so the
    // two never deadlock. The expiry sweep skips locked rows: a job locked
    // now is being completed by the worker that holds it (its lease ran
    // out, but it is still there), and taking it would only wait.
    // `prelude`: common table expressions the condition reads (ending
    // with a comma); `lapsed`, if it is the lapsed leases, whose children
    // the statement returns.
    let release = |prelude: &str, condition: &str, skip_locked: bool| {
        let wait = if skip_locked { " SKIP LOCKED" } else { "" };
        let lapsed = match prelude.is_empty() {
            true => "NULL::text[]",
            false => "ARRAY(SELECT process FROM lapsed)",
        };
        format!(
            "WITH {prelude} target AS (
                 SELECT id FROM {s}.jobs_live WHERE state = 'running' AND {condition}
                 ORDER BY id FOR UPDATE{wait}
             ), moved AS (
                 DELETE FROM {s}.jobs_live AS j USING target AS t
                 WHERE j.id = t.id
                   AND (j.cancel_requested OR (j.suspect AND j.attempts >= j.max_attempts))
                 RETURNING j AS job
             ), failed AS (
                 INSERT INTO {s}.jobs_finished
                 SELECT r.*
                 FROM moved AS m,
                      LATERAL {s}.finished_row(m.job,
                                               CASE WHEN (m.job).cancel_requested THEN 'cancelled'
                                                    ELSE 'failed' END,
                                               NULL, '{INTERRUPTED}', now()) AS r
                 RETURNING 1
             ), requeued AS (
                 UPDATE {s}.jobs_live AS j
                 SET state = 'queued', last_error = '{INTERRUPTED}', run_at = now(),
                     errors = j.errors || jsonb_build_object('attempt', j.attempts,
                                                             'error', '{INTERRUPTED}',
                                                             'at', now(), 'by', j.locked_by),
                     locked_by = NULL, locked_until = NULL
                 FROM target AS t
                 WHERE j.id = t.id AND j.suspect AND j.attempts < j.max_attempts
                   AND NOT j.cancel_requested
                 RETURNING 1
             ), suspected AS (
                 UPDATE {s}.jobs_live AS j
                 SET state = 'queued', attempts = j.attempts - 1, suspect = true,
                     run_at = greatest(j.run_at, now() + make_interval(secs => 1 + random())),
                     locked_by = NULL, locked_until = NULL
                 FROM target AS t
                 WHERE j.id = t.id AND NOT j.suspect AND NOT j.cancel_requested
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM requeued), (SELECT count(*) FROM failed), {lapsed},
                    (SELECT count(*) FROM suspected)"
        )
    };
    // The children whose lease lapsed, their rows deleted (locked, so that
    // two sweeps never both take one), and the condition for their jobs.
    let lapsed_leases = format!(
        "lapsed AS (
             DELETE FROM {s}.children AS c USING (
                 SELECT host, pid FROM {s}.children WHERE lease_until < now()
                 FOR UPDATE SKIP LOCKED
             ) AS d
             WHERE c.host = d.host AND c.pid = d.pid
             RETURNING c.host || ':' || c.pid AS process
         ),"
    );
    let of_lapsed = "split_part(locked_by, '/', 1) IN (SELECT process FROM lapsed)";
    let unleased = format!(
        "locked_until < now() AND NOT EXISTS (
             SELECT 1 FROM {s}.children AS c
             WHERE c.host || ':' || c.pid = split_part(locked_by, '/', 1)
               AND c.lease_until >= now())"
    );
    let row = match which {
        Release::Unstarted { .. }
        | Release::Interrupted(_)
        | Release::Lost { .. }
        | Release::Jobs { .. } => unreachable!("handled above"),
        Release::Died { processes, running } => {
            let patterns: Vec<String> = processes.iter().map(|p| format!("{p}/%")).collect();
            let row = client.query_typed_one(
                &release("", "locked_by LIKE ANY($1) AND id = ANY($2)", false),
                &[(&patterns, Type::TEXT_ARRAY), (&running, Type::INT8_ARRAY)],
            )?;
            let unstarted = give_back(
                client,
                "locked_by LIKE ANY($1)",
                &[(&patterns, Type::TEXT_ARRAY)],
                false,
            )?;
            let suspects = row.get::<_, i64>(3) as u64;
            let requeued = row.get::<_, i64>(0) as u64 + suspects;
            if requeued > 0 {
                notify(client, schema, "")?;
            }
            return Ok(Released {
                requeued: requeued + unstarted.requeued,
                failed: row.get::<_, i64>(1) as u64,
                suspects,
                lapsed: Vec::new(),
            });
        }

        Release::Lapsed => {
            client.query_typed_one(&release(&lapsed_leases, of_lapsed, true), &[])?
        }
        Release::Unleased => client.query_typed_one(&release("", &unleased, true), &[])?,
    };
    let suspects = row.get::<_, i64>(3) as u64;
    let released = Released {
        requeued: row.get::<_, i64>(0) as u64 + suspects,
        failed: row.get::<_, i64>(1) as u64,
        suspects,
        lapsed: row.get::<_, Option<Vec<String>>>(2).unwrap_or_default(),
    };
    if released.requeued > 0 {
        notify(client, schema, "")?;
    }
    Ok(released)
}

/// Deletes up to `limit` jobs of `queues` that finished (done, failed or
/// cancelled) more than `older_than` ago. Jobs another session is deleting are skipped, so
/// several children can prune at once. Returns how many it deleted.
pub(crate) fn prune(
    client: &mut Client,
    schema: &Schema,
    queues: &[String],
    older_than: Duration,
    limit: i64,
) -> Result<u64, postgres::Error> {
    let s = schema.name();
    client.execute_typed(
        &format!(
            "DELETE FROM {s}.jobs_finished WHERE id IN (
                 SELECT id FROM {s}.jobs_finished
                 WHERE finished_at < now() - make_interval(secs => $2) AND queue = ANY($1)
                 LIMIT $3 FOR UPDATE SKIP LOCKED)"
        ),
        &[
            (&queues, Type::TEXT_ARRAY),
            (&older_than.as_secs_f64(), Type::FLOAT8),
            (&limit, Type::INT8),
        ],
    )
}

/// The error recorded for an attempt whose worker died or lost the database.
const INTERRUPTED: &str = "the attempt was interrupted (its worker died or lost the database)";

/// Jobs per state in `queue`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Waiting to run (including retries not yet due).
    pub queued: i64,
    /// Claimed by a worker.
    pub running: i64,
    /// Finished successfully.
    pub done: i64,
    /// Out of attempts.
    pub failed: i64,
    /// Cancelled before they finished.
    pub cancelled: i64,
}

impl std::ops::AddAssign for Counts {
    /// Adds another queue's counts, state by state.
    fn add_assign(&mut self, other: Counts) {
        self.queued += other.queued;
        self.running += other.running;
        self.done += other.done;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
    }
}

impl Counts {
    /// Whether nothing is left to run or running.
    pub fn drained(&self) -> bool {
        self.queued == 0 && self.running == 0
    }
}

/// Counts `queue`'s jobs by state.
///
/// # Errors
///
/// The server's error.
pub fn counts(
    client: &mut Client,
    schema: &Schema,
    queue: &str,
) -> Result<Counts, postgres::Error> {
    let s = schema.name();
    let mut counts = Counts::default();
    for row in client.query_typed(
        &format!("SELECT state, count(*) FROM {s}.jobs WHERE queue = $1 GROUP BY state"),
        &[(&queue, Type::TEXT)],
    )? {
        let n: i64 = row.get(1);
        match row.get::<_, &str>(0) {
            "queued" => counts.queued = n,
            "running" => counts.running = n,
            "done" => counts.done = n,
            "failed" => counts.failed = n,
            "cancelled" => counts.cancelled = n,
            _ => {}
        }
    }
    Ok(counts)
}

/// Whether the queues and kinds `serving` names have a job queued (due or
/// not) or running: what is left to drain. Looks at the live table only.
/// For some kinds, a queued one is looked up in the index by kind; only
/// once none is left does it scan the table for a running one, with one
/// backend (no index keeps running jobs: that would cost every claim an
/// index entry).
pub(crate) fn pending(
    client: &mut Client,
    schema: &Schema,
    serving: Serving<'_>,
) -> Result<bool, postgres::Error> {
    let s = schema.name();
    // The scan for running jobs is one backend's, not a parallel plan's:
    // it runs while the fleet's other workers still work.
    let mut tx = client.transaction()?;
    if serving.kinds.is_some() {
        tx.batch_execute("SET LOCAL max_parallel_workers_per_gather = 0")?;
    }
    let row = tx.query_typed_one(
        &format!(
            "SELECT CASE
                 WHEN $2::text[] IS NULL THEN
                     EXISTS (SELECT 1 FROM {s}.jobs_live WHERE queue = ANY($1))
                 WHEN EXISTS (SELECT 1 FROM unnest($2::text[]) AS u(kind)
                              CROSS JOIN LATERAL (
                                  SELECT 1 FROM {s}.jobs_live AS j
                                  WHERE j.queue = ANY($1) AND j.kind = u.kind
                                    AND j.state = 'queued'
                                  LIMIT 1) AS q) THEN true
                 ELSE EXISTS (SELECT 1 FROM {s}.jobs_live
                              WHERE state = 'running' AND queue = ANY($1) AND kind = ANY($2))
             END"
        ),
        &[
            (&serving.queues, Type::TEXT_ARRAY),
            (&serving.kinds, Type::TEXT_ARRAY),
        ],
    )?;
    tx.commit()?;
    Ok(row.get(0))
}

/// A live child process, as its master last recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRow {
    /// Its host.
    pub host: String,
    /// Its pid.
    pub pid: Pid,
    /// Its master's pid.
    pub master_pid: Pid,
    /// When it started.
    pub since: DateTime<Utc>,
    /// Jobs it finished.
    pub jobs: i64,
    /// The kinds it serves (`None`: every kind).
    pub kinds: Option<Vec<String>>,
}

/// One kind's unfinished jobs in a queue, for `prefork status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindCount {
    /// The kind.
    pub kind: String,
    /// Its jobs queued (due or not).
    pub queued: i64,
    /// Its jobs running.
    pub running: i64,
    /// Whether a live child (seen in the last 10 s) serves it: if not, its
    /// jobs wait until one does.
    pub served: bool,
}

/// `queue`'s unfinished jobs by kind, and whether a live child serves
/// each. Reads the queue's live jobs.
///
/// # Errors
///
/// The server's error.
pub fn kind_counts(
    client: &mut Client,
    schema: &Schema,
    queue: &str,
) -> Result<Vec<KindCount>, postgres::Error> {
    let s = schema.name();
    let rows = client.query_typed(
        &format!(
            "SELECT j.kind, count(*) FILTER (WHERE j.state = 'queued'),
                    count(*) FILTER (WHERE j.state = 'running'),
                    EXISTS (SELECT 1 FROM {s}.children AS c
                            WHERE $1 = ANY(string_to_array(c.queue, ','))
                              AND c.seen_at > now() - interval '10 seconds'
                              AND (c.kinds IS NULL OR j.kind = ANY(c.kinds)))
             FROM {s}.jobs_live AS j WHERE j.queue = $1 GROUP BY j.kind ORDER BY j.kind"
        ),
        &[(&queue, Type::TEXT)],
    )?;
    Ok(rows
        .iter()
        .map(|r| KindCount {
            kind: r.get(0),
            queued: r.get(1),
            running: r.get(2),
            served: r.get(3),
        })
        .collect())
}

/// Set first in the transactions of a child's duties (firing schedules): a
/// child frozen (a host stopped, a VM paused) between two statements of
/// one would hold its row locks
/// indefinitely; the server ends the session instead once it sits idle in
/// the transaction this long. `SET LOCAL`, so it holds behind PgBouncer in
/// transaction mode, and ends with the transaction.
pub(crate) const DUTY_TX: &str = "SET LOCAL idle_in_transaction_session_timeout = '2s'";

/// Those of the running jobs `ids` that were asked to be cancelled
/// (`prefork jobs cancel`).
///
/// # Errors
///
/// The server's error.
pub(crate) fn cancelled_among(
    client: &mut Client,
    schema: &Schema,
    ids: &[i64],
) -> Result<Vec<i64>, postgres::Error> {
    let s = schema.name();
    let rows = client.query_typed(
        &format!(
            "SELECT id FROM {s}.jobs_live
             WHERE id = ANY($1) AND state = 'running' AND cancel_requested"
        ),
        &[(&ids, Type::INT8_ARRAY)],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Children working `queue` (among others, perhaps) whose master recorded
/// them in the last 10 seconds.
///
/// # Errors
///
/// The server's error.
pub fn live_children(
    client: &mut Client,
    schema: &Schema,
    queue: &str,
) -> Result<Vec<ChildRow>, postgres::Error> {
    let s = schema.name();
    let rows = client.query_typed(
        &format!(
            "SELECT host, pid, master_pid, since, jobs, kinds FROM {s}.children
             WHERE $1 = ANY(string_to_array(queue, ','))
               AND seen_at > now() - interval '10 seconds' ORDER BY host, pid"
        ),
        &[(&queue, Type::TEXT)],
    )?;
    Ok(rows
        .iter()
        .map(|r| ChildRow {
            host: r.get(0),
            pid: Pid::from_raw(r.get(1)),
            master_pid: Pid::from_raw(r.get(2)),
            since: r.get(3),
            jobs: r.get(4),
            kinds: r.get(5),
        })
        .collect())
}

#[cfg(all(test, feature = "cluster"))]
mod tests {
    use super::super::schema::at_version;
    use super::*;
    use crate::cluster::TempCluster;

    fn count(client: &mut Client, sql: &str) -> i64 {
        client.query_one(sql, &[]).unwrap().get(0)
    }

    /// A worker whose lease was taken over (it was stopped, the sweep
    /// requeued its jobs, another worker claimed them) runs no effect when
    /// it resumes; the new holder's effects commit once.
    /// Index entries the claims of this session have read so far from the
    /// queued-jobs index (its statistics flushed first).
    fn queued_index_reads(client: &mut Client, schema: &Schema) -> i64 {
        client
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .unwrap();
        let row = client
            .query_one(
                "SELECT idx_tup_read FROM pg_stat_user_indexes
                 WHERE schemaname = $1 AND indexrelname = 'jobs_queued'",
                &[&schema.name()],
            )
            .unwrap();
        row.get(0)
    }

    /// Under a pinned horizon, the entries of the jobs claimed stay in the
    /// queued-jobs index; a claim from its child's floors starts past
    /// them, one without floors walks them all (see `floors`).
    #[test]
    fn claims_start_past_the_jobs_claimed_under_a_pinned_horizon() {
        let cluster = TempCluster::start().unwrap();
        let url = cluster.connection_string();
        let mut client = Client::connect(&url, postgres::NoTls).unwrap();
        let schema = Schema::new("pinned").unwrap();
        migrate(&mut client, &schema).unwrap();
        let how = Enqueue {
            queue: "q",
            ..Enqueue::default()
        };
        let payloads: Vec<String> = (1..=2100).map(|i| i.to_string()).collect();
        enqueue(&mut client, &schema, &how, &payloads).unwrap();
        // Queued 10 ms apart, as a steady stream over 21 s would be.
        client
            .batch_execute(
                "UPDATE pinned.jobs_live SET run_at = now() - interval '1 hour'
                                                    + id * interval '10 ms'",
            )
            .unwrap();
        let mut pin = Client::connect(&url, postgres::NoTls).unwrap();
        pin.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
            .unwrap();
        let (queues, lease) = (["q".to_owned()], Duration::from_secs(60));
        let floors = Floors::default();
        for n in 0..200 {
            let owner = format!("h:1/{n}");
            let jobs = claim(
                &mut client,
                &schema,
                Serving::all(&queues),
                10,
                &owner,
                lease,
                &floors,
            )
            .unwrap();
            assert_eq!(jobs.len(), 10);
        }
        let before = queued_index_reads(&mut client, &schema);
        let jobs = claim(
            &mut client,
            &schema,
            Serving::all(&queues),
            10,
            "h:1/a",
            lease,
            &floors,
        )
        .unwrap();
        assert_eq!(jobs.len(), 10);
        let from_floors = queued_index_reads(&mut client, &schema) - before;
        let fresh = Floors::default();
        let jobs = claim(
            &mut client,
            &schema,
            Serving::all(&queues),
            10,
            "h:2/a",
            lease,
            &fresh,
        )
        .unwrap();
        assert_eq!(jobs.len(), 10);
        let walked = queued_index_reads(&mut client, &schema) - before - from_floors;
        eprintln!("index entries read: {from_floors} from floors, {walked} without");
        // The margin's 2 s are 200 claimed jobs at this spacing.
        assert!(
            from_floors <= 300,
            "a claim from its floors read {from_floors} index entries"
        );
        assert!(walked >= 2000, "a claim without floors read only {walked}");
        pin.batch_execute("COMMIT").unwrap();
    }

    /// What a floor passes over: a job visible below it waits for the
    /// rescan; new levels, above and between the known ones, are found by
    /// the claim's walk.
    #[test]
    fn a_job_below_the_floors_is_claimed_after_a_rescan() {
        let cluster = TempCluster::start().unwrap();
        let mut client = Client::connect(&cluster.connection_string(), postgres::NoTls).unwrap();
        let schema = Schema::new("floors").unwrap();
        migrate(&mut client, &schema).unwrap();
        let (queues, lease) = (["q".to_owned()], Duration::from_secs(60));
        let floors = Floors::default();
        let queue = |client: &mut Client, payload: &str, priority: i32, ago: Option<i64>| {
            let how = Enqueue {
                queue: "q",
                priority,
                run_at: ago.map(|s| Utc::now() - chrono::Duration::seconds(s)),
                ..Enqueue::default()
            };
            enqueue(client, &schema, &how, &[payload.to_owned()]).unwrap();
        };
        let take = |client: &mut Client| -> Vec<String> {
            let jobs = claim(
                client,
                &schema,
                Serving::all(&queues),
                10,
                "h:1/0",
                lease,
                &floors,
            )
            .unwrap();
            jobs.into_iter().map(|j| j.payload).collect()
        };
        queue(&mut client, "now", 2, None);
        assert_eq!(take(&mut client), ["now"]);
        queue(&mut client, "an hour late", 2, Some(3600));
        queue(&mut client, "above", 5, None);
        queue(&mut client, "below", 0, None);
        assert_eq!(
            take(&mut client),
            ["below", "above"],
            "new levels are found; the late job is below the floor"
        );
        queue(&mut client, "between", 3, None);
        assert_eq!(take(&mut client), ["between"]);
        rescan(&mut client, &schema, Serving::all(&queues), &floors).unwrap();
        assert_eq!(take(&mut client), ["an hour late"]);
        assert!(take(&mut client).is_empty());
    }

    /// A result holding a NUL (which `text` cannot store) fails its own
    /// job, with the reason; its batch-mates recorded in the same
    /// statement are done.
    #[test]
    fn a_nul_in_one_result_fails_that_job_alone() {
        let cluster = TempCluster::start().unwrap();
        let mut client = Client::connect(&cluster.connection_string(), postgres::NoTls).unwrap();
        let schema = Schema::new("nul").unwrap();
        migrate(&mut client, &schema).unwrap();
        let how = Enqueue {
            queue: "q",
            max_attempts: 1,
            ..Enqueue::default()
        };
        let payloads: Vec<String> = (1..=3).map(|i| i.to_string()).collect();
        enqueue(&mut client, &schema, &how, &payloads).unwrap();
        let owner: Arc<str> = Arc::from("a:1/0.0");
        let jobs = claim(
            &mut client,
            &schema,
            Serving::all(&["q".to_owned()]),
            8,
            &owner,
            Duration::from_secs(60),
            &Floors::default(),
        )
        .unwrap();
        let results = ["fine", "bad\0result", "fine too"];
        let finished: Vec<Finished> = jobs
            .iter()
            .zip(results)
            .map(|(job, text)| Finished {
                owner: owner.clone(),
                job: job.clone(),
                outcome: Ok(text.to_owned()),
            })
            .collect();
        assert_eq!(complete(&mut client, &schema, &finished, true).unwrap(), 3);
        let rows = client
            .query(
                "SELECT state, coalesce(last_error, '') FROM nul.jobs_finished ORDER BY id",
                &[],
            )
            .unwrap();
        let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(seen[0].0, "done");
        assert_eq!(seen[1].0, "failed");
        assert!(
            seen[1].1.contains("NUL byte") && seen[1].1.contains("bad\\u0000result"),
            "{seen:?}"
        );
        assert_eq!(seen[2].0, "done");
    }

    /// Lease rule 7: a death gives a running job its attempt back once, as
    /// a suspect; a suspect running at a death spends it. Unstarted jobs
    /// keep what they were.
    #[test]
    fn a_death_counts_an_attempt_only_of_a_suspect() {
        let cluster = TempCluster::start().unwrap();
        let mut client = Client::connect(&cluster.connection_string(), postgres::NoTls).unwrap();
        let schema = Schema::new("deaths").unwrap();
        migrate(&mut client, &schema).unwrap();
        let how = Enqueue {
            queue: "q",
            max_attempts: 1,
            ..Enqueue::default()
        };
        let payloads = ["a".to_owned(), "b".to_owned()];
        enqueue(&mut client, &schema, &how, &payloads).unwrap();
        let queues = ["q".to_owned()];
        let lease = Duration::from_secs(60);
        let jobs = claim(
            &mut client,
            &schema,
            Serving::all(&queues),
            8,
            "h:1/0",
            lease,
            &Floors::default(),
        )
        .unwrap();
        assert!(jobs.iter().all(|j| !j.suspect && j.attempt == 1));
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let died = |pid: &str, running: &[i64]| {
            let processes = [format!("h:{pid}")];
            let which = Release::Died {
                processes: &processes,
                running,
            };
            let mut client =
                Client::connect(&cluster.connection_string(), postgres::NoTls).unwrap();
            release(&mut client, &schema, which).unwrap()
        };
        let first = died("1", &ids);
        assert_eq!((first.requeued, first.suspects, first.failed), (2, 2, 0));
        client
            .batch_execute("UPDATE deaths.jobs_live SET run_at = now()")
            .unwrap();
        let again = claim(
            &mut client,
            &schema,
            Serving::all(&queues),
            8,
            "h:2/0",
            lease,
            &Floors::default(),
        )
        .unwrap();
        assert!(
            again.iter().all(|j| j.suspect && j.attempt == 1),
            "{again:?}"
        );
        // The child dies running the first alone; the second waited.
        let second = died("2", &ids[..1]);
        assert_eq!((second.requeued, second.suspects, second.failed), (1, 0, 1));
        let rows = client
            .query(
                "SELECT id, state, attempts, suspect FROM deaths.jobs ORDER BY id",
                &[],
            )
            .unwrap();
        let seen: Vec<(String, i32, bool)> = rows
            .iter()
            .map(|r| (r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(
            seen,
            [
                ("failed".to_owned(), 1, true),
                ("queued".to_owned(), 0, true)
            ]
        );
    }

    #[test]
    fn run_sql_runs_nothing_for_a_lost_lease() {
        let cluster = TempCluster::start().unwrap();
        let mut client = Client::connect(&cluster.connection_string(), postgres::NoTls).unwrap();
        let schema = Schema::new("fence").unwrap();
        migrate(&mut client, &schema).unwrap();
        client.batch_execute("CREATE TABLE res (k int)").unwrap();
        let how = Enqueue {
            queue: "q",
            max_attempts: 5,
            ..Enqueue::default()
        };
        let payloads: Vec<String> = (1..=3).map(|i| i.to_string()).collect();
        enqueue(&mut client, &schema, &how, &payloads).unwrap();
        let lost = claim(
            &mut client,
            &schema,
            Serving::all(&["q".to_owned()]),
            8,
            "a:1/0",
            Duration::from_millis(1),
            &Floors::default(),
        )
        .unwrap();
        assert_eq!(lost.len(), 3);
        std::thread::sleep(Duration::from_millis(20));
        let released = release(&mut client, &schema, Release::Unleased).unwrap();
        assert_eq!(released.requeued, 3);
        assert_eq!(released.suspects, 3);
        // Suspects wait a second or two; they are due now.
        client
            .batch_execute("UPDATE fence.jobs_live SET run_at = now()")
            .unwrap();
        let taken = claim(
            &mut client,
            &schema,
            Serving::all(&["q".to_owned()]),
            8,
            "b:2/0",
            Duration::from_secs(60),
            &Floors::default(),
        )
        .unwrap();
        assert_eq!(taken.len(), 3);
        let effect = "INSERT INTO res VALUES ($1::int)";
        assert_eq!(
            run_sql(&mut client, &schema, effect, "a:1/0", &lost, true)
                .unwrap()
                .recorded,
            0
        );
        assert_eq!(count(&mut client, "SELECT count(*) FROM res"), 0);
        // The same owner with a stale attempt runs nothing either.
        let stale: Vec<Job> = taken
            .iter()
            .map(|j| Job {
                kind: "default".to_owned(),
                attempt: j.attempt - 1,
                ..j.clone()
            })
            .collect();
        assert_eq!(
            run_sql(&mut client, &schema, effect, "b:2/0", &stale, true)
                .unwrap()
                .recorded,
            0
        );
        assert_eq!(count(&mut client, "SELECT count(*) FROM res"), 0);
        assert_eq!(
            run_sql(&mut client, &schema, effect, "b:2/0", &taken, true)
                .unwrap()
                .recorded,
            3
        );
        assert_eq!(count(&mut client, "SELECT count(DISTINCT k) FROM res"), 3);
        assert_eq!(count(&mut client, "SELECT count(*) FROM res"), 3);
    }

    /// A version-3 queue with history moves its finished jobs out of the
    /// live table on upgrade, and keeps working.
    #[test]
    fn migration_4_moves_finished_jobs_out_of_the_live_table() {
        let cluster = TempCluster::start().unwrap();
        let mut client = Client::connect(&cluster.connection_string(), postgres::NoTls).unwrap();
        let schema = Schema::new("upgrade").unwrap();
        at_version(&mut client, &schema, 3);
        client
            .batch_execute(
                "INSERT INTO upgrade.jobs (queue, payload, state, finished_at)
                 SELECT 'q', g::text, CASE WHEN g <= 6 THEN 'done' WHEN g <= 8 THEN 'failed'
                                           WHEN g = 9 THEN 'running' ELSE 'queued' END,
                        CASE WHEN g <= 8 THEN now() END
                 FROM generate_series(1, 10) g",
            )
            .unwrap();
        migrate(&mut client, &schema).unwrap();
        assert_eq!(
            count(&mut client, "SELECT count(*) FROM upgrade.jobs_live"),
            2
        );
        assert_eq!(
            count(&mut client, "SELECT count(*) FROM upgrade.jobs_finished"),
            8
        );
        assert_eq!(
            count(
                &mut client,
                "SELECT count(*) FROM upgrade.jobs WHERE state = 'done'"
            ),
            6
        );
        // Idempotent, and the queue works on the new tables.
        migrate(&mut client, &schema).unwrap();
        let jobs = claim(
            &mut client,
            &schema,
            Serving::all(&["q".to_owned()]),
            8,
            "t:1/0",
            Duration::from_secs(60),
            &Floors::default(),
        )
        .unwrap();
        assert_eq!(jobs.len(), 1);
        let finished = [Finished {
            owner: Arc::from("t:1/0"),
            job: jobs[0].clone(),
            outcome: Ok("fine".to_owned()),
        }];
        assert_eq!(complete(&mut client, &schema, &finished, true).unwrap(), 1);
        assert_eq!(
            count(&mut client, "SELECT count(*) FROM upgrade.jobs_live"),
            1
        );
        assert_eq!(
            count(
                &mut client,
                "SELECT count(*) FROM upgrade.jobs WHERE state = 'done'"
            ),
            7
        );
        // The running job of a dead worker comes back.
        let dead = ["localhost:0".to_owned()];
        client
            .batch_execute(
                "UPDATE upgrade.jobs_live SET locked_by = 'localhost:0/1' WHERE state = 'running'",
            )
            .unwrap();
        let running = [count(
            &mut client,
            "SELECT id FROM upgrade.jobs_live WHERE state = 'running'",
        )];
        let died = Release::Died {
            processes: &dead,
            running: &running,
        };
        assert_eq!(
            release(&mut client, &schema, died).unwrap(),
            Released {
                requeued: 1,
                suspects: 1,
                ..Released::default()
            }
        );
        assert!(pending(&mut client, &schema, Serving::all(&["q".to_owned()])).unwrap());
        assert_eq!(
            count(
                &mut client,
                "SELECT count(*) FROM upgrade.jobs_live WHERE state = 'queued'"
            ),
            1
        );
    }
}
