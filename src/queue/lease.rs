//! Leases: how long a child holds the jobs it claimed, and when they go
//! back to the queue.
//!
//! # The rule
//!
//! **A running job is held while the child that claimed it holds a live
//! lease.** Each child has one lease, its row in `children`
//! (`lease_until`), which its keeper thread (`keeper`) renews every third
//! of `--rescue-after` with one statement, however long the child's jobs
//! run and whatever its master does. A job whose child's lease lapsed is
//! handed back by whichever child sweeps first ([`Release::Lapsed`]: the
//! lapsed rows are deleted in the same statement, so each is taken once).
//! A claim carries its own hold too (`locked_until`, `--lease` from the
//! claim): it matters only for a job whose child holds no lease at all
//! ([`Release::Unleased`]), a claim by an older version's child or one
//! made as its child's lease was being swept.
//!
//! Times are the server's (`now()`), so the hosts' clocks do not matter,
//! and renewing costs a statement per child per interval, not per job.
//!
//! # Scenarios
//!
//! 1. **A job runs longer than any lease.** Its child's keeper renews the
//!    lease meanwhile; nobody sweeps the job; it runs once.
//! 2. **The master alone is stopped** (SIGSTOP, a stalled loop). The
//!    children renew their own leases and keep their jobs.
//! 3. **A child, or its whole host, is frozen, dies or is cut off from the
//!    server.** Its lease lapses within `--rescue-after`; another child
//!    sweeps and hands its jobs back. If it comes back, its late outcomes
//!    are refused (the claim's owner and attempt no longer match), and a
//!    `--sql` job's effects roll back with them; its keeper finds its row
//!    gone, says so, and takes a fresh lease for what it claims next.
//! 4. **A child stops cleanly.** Its workers hand back what they hold; its
//!    keeper hands back anything still stamped with the child (attempt
//!    given back) and ends the lease.
//! 5. **An older master's children** (no lease, `lease_until` NULL): their
//!    jobs come back when their claim's hold runs out, as before leases.
//! 6. **`--rescue-after forever`.** Leases never lapse: a dead host's jobs
//!    stay running until `prefork jobs release HOST` ends its children's
//!    leases (`admin::release_children`, which refuses children that
//!    renewed theirs in the last 30 s unless forced); the next sweep, or
//!    the command itself, hands the jobs back as for a lapse.
//!
//! # Attempts when a holder dies
//!
//! **A death counts an attempt only of a suspect running alone.** A job
//! taken back from a child that died as it ran (the master saw it die:
//! `Release::Died`), or whose lease lapsed, was perhaps the death's cause
//! (a crash, the memory limit, a kill for being stuck) and perhaps not
//! (the OOM killer chose, an operator killed, a batch-mate crashed, the
//! host lost power). The first time, its attempt is given back and it
//! becomes a *suspect* (`jobs_live.suspect`), queued again a second or two
//! later. A child runs its suspects alone, one at a time, each in a batch
//! of its own (`alone`): a death while one runs is that job's own, and
//! counts its attempt (failed after its last). An outcome recorded ends
//! the suspicion. Jobs a dead child held but had not started go back
//! with their attempt given back, and stay as they were.
//!
//! 7. **A poison job** (it crashes its child) **in a batch of 8.** The
//!    first crash gives all 8 their attempt back, as suspects. The 7 run
//!    alone, one at a time, and are done. The poison job crashes its
//!    child each time it runs alone and fails after its attempts; none of
//!    the 7 lost one.
//! 8. **A child killed by the OOM killer for another job's memory.** Its
//!    running jobs come back free, as suspects; they run alone once and
//!    are no longer suspects.
//! 9. **A host that dies with its children's local queues full.** The
//!    lapsed lease gives every job it held back, free: which of them ran
//!    is not known. They run alone once each.

use std::time::Duration;

use postgres::Client;
use postgres::types::Type;

use super::store::{self, Release, Released};
use super::{QueueConfig, Schema};

/// Who holds a lease: a child, on its host, under its master.
#[derive(Debug, Clone)]
pub(super) struct Holder {
    pub(super) host: String,
    pub(super) pid: i32,
    pub(super) master_pid: i32,
    /// When the child was forked, in seconds since the epoch.
    pub(super) since: f64,
}

impl Holder {
    /// `host:pid`, the prefix of the child's claim stamps.
    pub(super) fn process(&self) -> String {
        super::claims::process_on(&self.host, self.pid)
    }
}

/// How often a child renews its lease of `length` (`None`: it never
/// lapses, and is renewed only as the heartbeat): a third of it, so that
/// two renewals may fail before it lapses.
pub(super) fn renew_every(length: Option<Duration>) -> Duration {
    length.map_or(Duration::from_secs(5), |l| {
        (l / 3).clamp(Duration::from_millis(100), Duration::from_secs(5))
    })
}

/// How often a child sweeps for lapsed leases: a quarter of the lease, so
/// a lapsed one is taken within `length` and a quarter.
pub(super) fn sweep_every(length: Option<Duration>) -> Duration {
    length.map_or(Duration::from_secs(15), |l| {
        (l / 4).clamp(Duration::from_millis(250), Duration::from_secs(15))
    })
}

/// How often a child looks for claims held by no lease (scenario 5): they
/// are rare, and finding them scans the live jobs.
pub(super) const UNLEASED_EVERY: Duration = Duration::from_secs(60);

/// Renews `holder`'s lease for `config.rescue_after` (taking it if it has
/// none), with the child's heartbeat (`jobs` done) and its master's.
/// Returns `true` if the lease was taken afresh: the child's first, or
/// one that had lapsed and been swept (scenario 3).
///
/// # Errors
///
/// The server's error.
pub(super) fn renew(
    client: &mut Client,
    config: &QueueConfig,
    holder: &Holder,
    jobs: u64,
) -> Result<bool, postgres::Error> {
    let s = config.schema.name();
    let length = config.rescue_after.map(|l| l.as_secs_f64());
    let queues = config.queues.join(",");
    let row = client.query_typed_one(
        &format!(
            "WITH child AS (
                 INSERT INTO {s}.children AS c
                     (host, pid, master_pid, queue, since, jobs, seen_at, lease_until, kinds)
                 VALUES ($1, $2, $3, $4, to_timestamp($5), $6, now(),
                         COALESCE(now() + make_interval(secs => $7), 'infinity'), $8)
                 ON CONFLICT (host, pid) DO UPDATE
                 SET master_pid = EXCLUDED.master_pid, queue = EXCLUDED.queue,
                     kinds = EXCLUDED.kinds,
                     since = EXCLUDED.since, jobs = EXCLUDED.jobs, seen_at = now(),
                     lease_until = EXCLUDED.lease_until
                 RETURNING xmax = 0 AS fresh
             ), master AS (
                 INSERT INTO {s}.masters (host, pid, queues) VALUES ($1, $3, $4)
                 ON CONFLICT (host, pid) DO UPDATE
                 SET heartbeat_at = now(), queues = EXCLUDED.queues
             )
             SELECT fresh FROM child"
        ),
        &[
            (&holder.host, Type::TEXT),
            (&holder.pid, Type::INT4),
            (&holder.master_pid, Type::INT4),
            (&queues, Type::TEXT),
            (&holder.since, Type::FLOAT8),
            (&(jobs as i64), Type::INT8),
            (&length, Type::FLOAT8),
            (&config.kinds, Type::TEXT_ARRAY),
        ],
    )?;
    Ok(row.get(0))
}

/// Ends `holder`'s lease as its child stops (scenario 4): hands back what
/// is still stamped with it, its attempt given back, then deletes its row.
///
/// # Errors
///
/// The server's error.
pub(super) fn end(
    client: &mut Client,
    schema: &Schema,
    holder: &Holder,
) -> Result<Released, postgres::Error> {
    let released = store::release(
        client,
        schema,
        Release::Interrupted(std::slice::from_ref(&holder.process())),
    )?;
    let s = schema.name();
    // The master's row goes with its last child: a fleet that stopped
    // cleanly leaves nothing behind.
    client.execute_typed(
        &format!(
            "WITH child AS (
                 DELETE FROM {s}.children WHERE host = $1 AND pid = $2
             )
             DELETE FROM {s}.masters AS m
             WHERE m.host = $1 AND m.pid = $3 AND NOT EXISTS (
                 SELECT 1 FROM {s}.children AS c
                 WHERE c.host = m.host AND c.master_pid = m.pid AND c.pid <> $2)"
        ),
        &[
            (&holder.host, Type::TEXT),
            (&holder.pid, Type::INT4),
            (&holder.master_pid, Type::INT4),
        ],
    )?;
    Ok(released)
}

/// Hands back the jobs of children whose lease lapsed, and, with
/// `unleased`, those held by no lease whose claim ran out.
///
/// # Errors
///
/// The server's error.
pub(super) fn sweep(
    client: &mut Client,
    schema: &Schema,
    unleased: bool,
) -> Result<Released, postgres::Error> {
    let mut released = store::release(client, schema, Release::Lapsed)?;
    if unleased {
        let more = store::release(client, schema, Release::Unleased)?;
        released.requeued += more.requeued;
        released.failed += more.failed;
        // Masters whose children are all gone, the last one without a
        // word (killed with its master).
        let s = schema.name();
        client.execute_typed(
            &format!(
                "DELETE FROM {s}.masters AS m
                 WHERE m.heartbeat_at < now() - interval '1 minute' AND NOT EXISTS (
                     SELECT 1 FROM {s}.children AS c
                     WHERE c.host = m.host AND c.master_pid = m.pid)"
            ),
            &[],
        )?;
    }
    Ok(released)
}
