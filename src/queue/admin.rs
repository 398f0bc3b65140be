//! Looking at jobs, retrying and cancelling them by hand: the statements
//! behind `prefork jobs`.
//!
//! Acting on jobs named by id is all or nothing: every id is checked (it
//! exists, and is in a state the action applies to) under a lock, in one
//! transaction, before anything changes, so a typo in a list of ids changes
//! nothing.

use std::fmt;
use std::time::Duration;

use postgres::Client;
use postgres::types::Type;

use chrono::{DateTime, Utc};

use super::store::timeout_column;
use super::{JobState, Schema};

/// A job as `prefork jobs` shows it, from the live or the finished table.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    /// Its id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// What it does.
    pub kind: String,
    /// Whether [`JobInfo::payload`] is its arguments (JSON) rather than a
    /// text payload.
    pub arguments: bool,
    /// Where it is in its life.
    pub state: JobState,
    /// Smaller runs first.
    pub priority: i32,
    /// Attempts made (the running one included).
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Its input (its arguments if it has any, else its payload), or its
    /// first [`PAYLOAD_PREVIEW`] characters where only a preview was asked
    /// for ([`list`], [`show`] without `whole`).
    pub payload: String,
    /// The whole input's length in bytes.
    pub payload_bytes: i64,
    /// A done job's result.
    pub result: Option<String>,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// Every failed attempt, oldest first.
    pub errors: Vec<FailedAttempt>,
    /// The claim that runs (or last ran) it: `host:pid/worker.seq`.
    pub locked_by: Option<String>,
    /// Its unique key.
    pub unique_key: Option<String>,
    /// Its own time limit (none: the fleet's).
    pub timeout: Option<Duration>,
    /// A cancel was asked for while it ran.
    pub cancel_requested: bool,
    /// It was running when its child died: it runs alone until an
    /// outcome of its own is recorded, and a death as it runs counts an
    /// attempt (see the README, "An attempt is spent only by the job's own
    /// code").
    pub suspect: bool,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it is (or was) runnable.
    pub run_at: DateTime<Utc>,
    /// When it finished, if it has.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One failed attempt of a job, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    /// Which attempt (1 is the first).
    pub attempt: i32,
    /// Its error.
    pub error: String,
    /// When it failed.
    pub at: Option<DateTime<Utc>>,
    /// The claim that ran it: `host:pid/worker.seq`.
    pub by: Option<String>,
}

impl FailedAttempt {
    /// The history's entries (the `errors` column, a JSON array of
    /// `{attempt, error, at, by}`); an entry that is not such an object
    /// is kept with what it has.
    fn parse_all(json: &str) -> Vec<FailedAttempt> {
        let entries: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
        entries
            .iter()
            .map(|e| FailedAttempt {
                attempt: e["attempt"]
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .unwrap_or(0),
                error: e["error"].as_str().unwrap_or_default().to_owned(),
                at: e["at"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                by: e["by"].as_str().map(str::to_owned),
            })
            .collect()
    }
}

/// What [`list`] shows.
#[derive(Debug, Clone)]
pub struct ListFilter<'a> {
    /// Jobs of this queue only (`None`: every queue).
    pub queue: Option<&'a str>,
    /// Jobs in this state only.
    pub state: Option<JobState>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// Why an action on jobs did nothing.
#[derive(Debug)]
pub enum JobsError {
    /// The server's error.
    Db(postgres::Error),
    /// No job has this id.
    NoSuchJob(i64),
    /// The job is not in a state the action applies to.
    WrongState {
        /// The job.
        id: i64,
        /// Its state.
        state: JobState,
        /// What the action needs, for the message ("failed or cancelled").
        wanted: &'static str,
    },
    /// No child of the fleets matches what [`release_children`] was given.
    NoSuchChild(String),
    /// A child [`release_children`] was given renewed its lease lately:
    /// it may be alive (pass `force` if it is not).
    StillSeen {
        /// The child, `host:pid`.
        process: String,
        /// How long ago it last renewed its lease.
        ago: Duration,
    },
    /// Retrying would queue a second unfinished job with a unique key.
    KeyHeld {
        /// The job to retry.
        id: i64,
        /// Its key.
        key: String,
        /// The unfinished job holding the key.
        holder: i64,
    },
}

impl fmt::Display for JobsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobsError::Db(e) => write!(f, "{e}"),
            JobsError::NoSuchJob(id) => write!(f, "no job {id}"),
            JobsError::NoSuchChild(which) => write!(f, "no child of any fleet is {which}"),
            JobsError::StillSeen { process, ago } => write!(
                f,
                "child {process} renewed its lease {:.0?} ago: it may be alive \
                 (--force if it is not)",
                Duration::from_secs(ago.as_secs())
            ),
            JobsError::WrongState { id, state, wanted } => {
                write!(f, "job {id} is {state}, not {wanted}")
            }
            JobsError::KeyHeld { id, key, holder } => write!(
                f,
                "job {id} cannot be queued again: job {holder} holds its unique key {key:?}"
            ),
        }
    }
}

impl std::error::Error for JobsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobsError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<postgres::Error> for JobsError {
    fn from(e: postgres::Error) -> JobsError {
        JobsError::Db(e)
    }
}

/// The columns of [`JobInfo`], in order, from the view `jobs` as `j`.
/// How much of a payload [`list`] (and [`show`], unless asked for the
/// whole) fetches: a listing next to a 1 GB payload read all of it.
pub const PAYLOAD_PREVIEW: i32 = 4096;

/// The columns [`info`] reads; `$P` is how much of the payload (NULL:
/// all of it).
const COLUMNS: &str = "j.id, j.queue, j.state, j.priority, j.attempts, j.max_attempts,
     CASE WHEN $P::int IS NULL THEN coalesce(j.args::text, j.payload)
          ELSE left(coalesce(j.args::text, j.payload), $P::int) END,
     j.result, j.last_error, j.errors::text, j.locked_by, j.unique_key, j.timeout,
     j.cancel_requested, j.created_at, j.run_at, j.finished_at,
     octet_length(coalesce(j.args::text, j.payload))::int8, j.suspect, j.kind,
     j.args IS NOT NULL";

fn info(row: &postgres::Row) -> JobInfo {
    JobInfo {
        id: row.get(0),
        queue: row.get(1),
        state: row.get(2),
        priority: row.get(3),
        attempts: row.get(4),
        max_attempts: row.get(5),
        payload: row.get(6),
        result: row.get(7),
        last_error: row.get(8),
        errors: FailedAttempt::parse_all(row.get(9)),
        locked_by: row.get(10),
        unique_key: row.get(11),
        timeout: timeout_column(row.get(12)),
        cancel_requested: row.get(13),
        created_at: row.get(14),
        run_at: row.get(15),
        finished_at: row.get(16),
        payload_bytes: row.get(17),
        suspect: row.get(18),
        kind: row.get(19),
        arguments: row.get(20),
    }
}

/// Jobs, newest first.
///
/// # Errors
///
/// The server's error.
pub fn list(
    client: &mut Client,
    schema: &Schema,
    filter: &ListFilter<'_>,
) -> Result<Vec<JobInfo>, postgres::Error> {
    let s = schema.name();
    // Newest first from each table by its primary key, then merged: the
    // history can be millions of rows.
    let columns = COLUMNS.replace("$P", "$4");
    let rows = client.query_typed(
        &format!(
            "SELECT {columns} FROM (
                 (SELECT * FROM {s}.jobs_live WHERE ($1::text IS NULL OR queue = $1)
                    AND ($2::text IS NULL OR state = $2) ORDER BY id DESC LIMIT $3)
                 UNION ALL
                 (SELECT * FROM {s}.jobs_finished WHERE ($1::text IS NULL OR queue = $1)
                    AND ($2::text IS NULL OR state = $2) ORDER BY id DESC LIMIT $3)
             ) AS j ORDER BY j.id DESC LIMIT $3"
        ),
        &[
            (&filter.queue, Type::TEXT),
            (&filter.state.map(JobState::as_str), Type::TEXT),
            (&filter.limit, Type::INT8),
            (&PAYLOAD_PREVIEW, Type::INT4),
        ],
    )?;
    Ok(rows.iter().map(info).collect())
}

/// One job, its whole payload with `whole`, else its first
/// [`PAYLOAD_PREVIEW`] characters.
///
/// # Errors
///
/// [`JobsError::NoSuchJob`], or the server's error.
pub fn show(
    client: &mut Client,
    schema: &Schema,
    id: i64,
    whole: bool,
) -> Result<JobInfo, JobsError> {
    let s = schema.name();
    let columns = COLUMNS.replace("$P", "$2");
    let preview = (!whole).then_some(PAYLOAD_PREVIEW);
    let row = client.query_typed_opt(
        &format!("SELECT {columns} FROM {s}.jobs AS j WHERE j.id = $1"),
        &[(&id, Type::INT8), (&preview, Type::INT4)],
    )?;
    row.as_ref().map(info).ok_or(JobsError::NoSuchJob(id))
}

/// Which jobs an action applies to.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    /// These, every one of which must be in a state the action applies to.
    Ids(&'a [i64]),
    /// Every job of this queue the action applies to.
    All {
        /// The queue.
        queue: &'a str,
    },
}

/// Queues failed or cancelled jobs again, their attempts reset (their
/// errors kept); returns the ids queued.
///
/// # Errors
///
/// For ids: [`JobsError::NoSuchJob`], [`JobsError::WrongState`] (not failed
/// or cancelled), [`JobsError::KeyHeld`]; nothing is then changed. Or the
/// server's error.
pub fn retry(
    client: &mut Client,
    schema: &Schema,
    which: Which<'_>,
) -> Result<Vec<i64>, JobsError> {
    let s = schema.name();
    let mut tx = client.transaction()?;
    let ids = targets(
        &mut tx,
        schema,
        which,
        &[JobState::Failed, JobState::Cancelled],
        "failed or cancelled",
        "jobs_finished",
    )?;
    if let Some(row) = tx.query_typed_opt(
        &format!(
            "SELECT f.id, f.unique_key, l.id FROM {s}.jobs_finished AS f
             JOIN {s}.jobs_live AS l ON l.queue = f.queue AND l.unique_key = f.unique_key
             WHERE f.id = ANY($1) ORDER BY f.id LIMIT 1"
        ),
        &[(&ids, Type::INT8_ARRAY)],
    )? {
        return Err(JobsError::KeyHeld {
            id: row.get(0),
            key: row.get(1),
            holder: row.get(2),
        });
    }
    let queued: Vec<i64> = tx
        .query_typed(
            &format!(
                "WITH again AS (
                     DELETE FROM {s}.jobs_finished AS f WHERE id = ANY($1) RETURNING f AS job
                 )
                 INSERT INTO {s}.jobs_live
                 SELECT r.*
                 FROM again AS a, LATERAL {s}.queued_again(a.job, now()) AS r
                 ORDER BY r.id
                 RETURNING id"
            ),
            &[(&ids, Type::INT8_ARRAY)],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !queued.is_empty() {
        tx.execute_typed(
            "SELECT pg_notify($1, '')",
            &[(&schema.channel(), Type::TEXT)],
        )?;
    }
    tx.commit()?;
    Ok(queued)
}

/// What [`cancel`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cancelled {
    /// Queued jobs, now `cancelled`.
    pub cancelled: Vec<i64>,
    /// Running jobs, marked: each finishes as `cancelled` (never retried)
    /// when its attempt ends.
    pub stopping: Vec<i64>,
}

/// Cancels queued jobs at once, and marks running ones to finish as
/// cancelled rather than be retried.
///
/// # Errors
///
/// For ids: [`JobsError::NoSuchJob`], [`JobsError::WrongState`] (already
/// finished); nothing is then changed. Or the server's error.
pub fn cancel(
    client: &mut Client,
    schema: &Schema,
    which: Which<'_>,
) -> Result<Cancelled, JobsError> {
    let s = schema.name();
    let mut tx = client.transaction()?;
    // A whole queue: its queued jobs (running ones are cancelled by id).
    let states: &[JobState] = match which {
        Which::Ids(_) => &[JobState::Queued, JobState::Running],
        Which::All { .. } => &[JobState::Queued],
    };
    let ids = targets(
        &mut tx,
        schema,
        which,
        states,
        "queued or running",
        "jobs_live",
    )?;
    let cancelled: Vec<i64> = tx
        .query_typed(
            &format!(
                "WITH gone AS (
                     DELETE FROM {s}.jobs_live AS j
                     WHERE id = ANY($1) AND state = 'queued' RETURNING j AS job
                 )
                 INSERT INTO {s}.jobs_finished
                 SELECT r.*
                 FROM gone AS g,
                      LATERAL {s}.finished_row(g.job, 'cancelled', NULL, NULL, now()) AS r
                 ORDER BY r.id
                 RETURNING id"
            ),
            &[(&ids, Type::INT8_ARRAY)],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stopping: Vec<i64> = tx
        .query_typed(
            &format!(
                "UPDATE {s}.jobs_live SET cancel_requested = true
                 WHERE id = ANY($1) AND state = 'running' RETURNING id"
            ),
            &[(&ids, Type::INT8_ARRAY)],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.commit()?;
    let mut stopping = stopping;
    stopping.sort_unstable();
    Ok(Cancelled {
        cancelled,
        stopping,
    })
}

/// The jobs `which` names, locked: ids each checked to exist and be in one
/// of `states` (`wanted` says which, for the message); a whole queue, its
/// jobs in `states` in `table` (where jobs in those states are).
fn targets(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    which: Which<'_>,
    states: &[JobState],
    wanted: &'static str,
    table: &str,
) -> Result<Vec<i64>, JobsError> {
    match which {
        Which::Ids(ids) => {
            check(tx, schema, ids, states, wanted)?;
            Ok(ids.to_vec())
        }
        Which::All { queue } => {
            let s = schema.name();
            let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            let rows = tx.query_typed(
                &format!(
                    "SELECT id FROM {s}.{table} WHERE queue = $1 AND state = ANY($2)
                     ORDER BY id FOR UPDATE"
                ),
                &[(&queue, Type::TEXT), (&names, Type::TEXT_ARRAY)],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        }
    }
}

/// Locks the jobs `ids` (live ones; finished ones cannot change but by
/// this module) and checks each exists and is in one of `states`.
fn check(
    tx: &mut postgres::Transaction<'_>,
    schema: &Schema,
    ids: &[i64],
    states: &[JobState],
    wanted: &'static str,
) -> Result<(), JobsError> {
    let s = schema.name();
    let rows = tx.query_typed(
        &format!("SELECT id, state FROM {s}.jobs_live WHERE id = ANY($1) ORDER BY id FOR UPDATE;"),
        &[(&ids, Type::INT8_ARRAY)],
    )?;
    let mut found: std::collections::HashMap<i64, JobState> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for r in tx.query_typed(
        &format!(
            "SELECT id, state FROM {s}.jobs_finished WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        ),
        &[(&ids, Type::INT8_ARRAY)],
    )? {
        found.insert(r.get(0), r.get(1));
    }
    for &id in ids {
        match found.get(&id) {
            None => return Err(JobsError::NoSuchJob(id)),
            Some(state) if !states.contains(state) => {
                return Err(JobsError::WrongState {
                    id,
                    state: *state,
                    wanted,
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// How recently a child may have renewed its lease for
/// [`release_children`] to take it for gone without `force`.
pub const SEEN_LATELY: Duration = Duration::from_secs(30);

/// Ends the leases of the children `which` names (`host`, every child on
/// it, or `host:pid`) and hands their running jobs back as a lapsed lease
/// does (`queue/lease.rs`): queued again as suspects, their attempt
/// given back. For hosts that are gone for good under `--rescue-after
/// forever`, whose leases never lapse by themselves.
///
/// # Errors
///
/// [`JobsError::NoSuchChild`] if no child matches;
/// [`JobsError::StillSeen`] if one renewed its lease within
/// [`SEEN_LATELY`] and not `force`; nothing is then changed. Or the
/// server's error.
pub fn release_children(
    client: &mut Client,
    schema: &Schema,
    which: &str,
    force: bool,
) -> Result<super::Released, JobsError> {
    let s = schema.name();
    let (host, pid) = match which.rsplit_once(':') {
        Some((host, pid)) if pid.parse::<i32>().is_ok() => (host, pid.parse::<i32>().ok()),
        _ => (which, None),
    };
    let mut tx = client.transaction()?;
    let rows = tx.query_typed(
        &format!(
            "SELECT host || ':' || pid, extract(epoch FROM now() - seen_at)::float8
             FROM {s}.children WHERE host = $1 AND ($2::int4 IS NULL OR pid = $2)
             ORDER BY seen_at DESC FOR UPDATE"
        ),
        &[(&host, Type::TEXT), (&pid, Type::INT4)],
    )?;
    let Some(latest) = rows.first() else {
        return Err(JobsError::NoSuchChild(which.to_owned()));
    };
    let ago = Duration::from_secs_f64(latest.get::<_, f64>(1).max(0.0));
    if ago < SEEN_LATELY && !force {
        return Err(JobsError::StillSeen {
            process: latest.get(0),
            ago,
        });
    }
    tx.execute_typed(
        &format!(
            "UPDATE {s}.children SET lease_until = now() - interval '1 second'
             WHERE host = $1 AND ($2::int4 IS NULL OR pid = $2)"
        ),
        &[(&host, Type::TEXT), (&pid, Type::INT4)],
    )?;
    tx.commit()?;
    Ok(super::release(client, schema, super::Release::Lapsed)?)
}
