//! Schedules: jobs queued on a cron expression, by whichever fleet runs.
//!
//! A schedule is a row: its cron expression and time zone, the job it
//! queues, and `next_at`, its next tick. Every running child looks for
//! due schedules ([`fire_due`], among its duties: see `keeper`) and fires each in one
//! transaction that locks the row (`FOR UPDATE SKIP LOCKED`), queues the
//! job and moves `next_at` to the first tick after now. So:
//!
//! 1. **Several children, of several masters.** Only one of them holds a due row; the others
//!    skip it, and once it commits the row is no longer due. Each tick
//!    queues exactly one job.
//! 2. **No fleet for a while.** The next tick is counted from now, not
//!    from the missed one: ticks missed while nothing ran are fired once,
//!    late, not once each.
//! 3. **A child dies mid-fire.** Its transaction rolls back; the row is
//!    still due and the next child fires it.
//! 4. **The previous run is not over.** A schedule with a unique key
//!    queues its jobs under it: while the last one is queued or running,
//!    a tick queues nothing (and moves `next_at` on), so runs never
//!    overlap and a backlog of ticks never builds up.
//!
//! Times come from the server's clock (`now()`), so the hosts' clocks
//! need not agree.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use postgres::Client;
use postgres::types::Type;

use super::store::timeout_column;
use super::{Enqueue, Schema};

/// When a schedule ticks: a cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct When {
    cron: Cron,
    zone: Tz,
}

impl When {
    /// Parses a cron expression of five fields (minute, hour, day of month,
    /// month, day of week) or six (seconds first), in `zone` (an IANA name
    /// such as `Europe/Paris`; `None`: UTC).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::Cron`] or [`ScheduleError::TimeZone`], with what is
    /// wrong.
    pub fn parse(cron: &str, zone: Option<&str>) -> Result<When, ScheduleError> {
        let fields = cron.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ScheduleError::Cron(format!(
                "{cron:?}: {fields} field(s); a cron expression has 5 (minute hour day month \
                 weekday) or 6 (seconds first)"
            )));
        }
        let parsed = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(cron)
            .map_err(|e| ScheduleError::Cron(format!("{cron:?}: {e}")))?;
        let zone = match zone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| {
                ScheduleError::TimeZone(format!(
                    "{name:?}: not an IANA time zone (such as UTC or Europe/Paris)"
                ))
            })?,
        };
        Ok(When { cron: parsed, zone })
    }

    /// The first tick strictly after `after`; `None` if there is none (an
    /// expression that never matches, such as February 30th).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Its name, unique in the schema.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// Its time zone (`None`: UTC).
    pub timezone: Option<String>,
    /// The queue its jobs go to.
    pub queue: String,
    /// Their kind.
    pub kind: String,
    /// Their input: their arguments (JSON) if they have any, else their
    /// payload.
    pub payload: String,
    /// Their priority.
    pub priority: i32,
    /// Their attempts.
    pub max_attempts: i32,
    /// Their own time limit.
    pub timeout: Option<Duration>,
    /// Their unique key: a tick while a job holds it queues nothing.
    pub unique_key: Option<String>,
    /// The next tick.
    pub next_at: DateTime<Utc>,
    /// The last tick fired, and the job it queued.
    pub last: Option<(DateTime<Utc>, i64)>,
}

/// Why a schedule command did nothing.
#[derive(Debug)]
pub enum ScheduleError {
    /// The server's error.
    Db(postgres::Error),
    /// A bad cron expression.
    Cron(String),
    /// An unknown time zone.
    TimeZone(String),
    /// The expression never ticks.
    Never(String),
    /// A schedule has this name already.
    Exists(String),
    /// No schedule has this name.
    NoSuchSchedule(String),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::Db(e) => write!(f, "{e}"),
            ScheduleError::Cron(why) => write!(f, "invalid cron expression {why}"),
            ScheduleError::TimeZone(why) => write!(f, "invalid time zone {why}"),
            ScheduleError::Never(cron) => write!(f, "cron expression {cron:?} never ticks"),
            ScheduleError::Exists(name) => {
                write!(f, "a schedule named {name:?} exists (remove it first)")
            }
            ScheduleError::NoSuchSchedule(name) => write!(f, "no schedule named {name:?}"),
        }
    }
}

impl std::error::Error for ScheduleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScheduleError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<postgres::Error> for ScheduleError {
    fn from(e: postgres::Error) -> ScheduleError {
        ScheduleError::Db(e)
    }
}

/// Adds a schedule named `name` ticking at `cron` in `timezone`, queueing
/// `payload` as `how` says (its queue, kind, priority, attempts, timeout
/// and unique key, and whether the payload is the jobs' arguments; a
/// run-at is not kept: each tick is the run's time);
/// returns its first tick.
///
/// # Errors
///
/// A bad expression or time zone, one that never ticks, a name taken
/// ([`ScheduleError`]); nothing is then added. Or the server's error.
pub fn add(
    client: &mut Client,
    schema: &Schema,
    name: &str,
    cron: &str,
    timezone: Option<&str>,
    how: &Enqueue<'_>,
    payload: &str,
) -> Result<DateTime<Utc>, ScheduleError> {
    let when = When::parse(cron, timezone)?;
    let s = schema.name();
    let mut tx = client.transaction()?;
    let now: DateTime<Utc> = tx.query_typed_one("SELECT now()", &[])?.get(0);
    let next = when
        .next_after(now)
        .ok_or_else(|| ScheduleError::Never(cron.to_owned()))?;
    let timeout = how.timeout_secs();
    let added = tx.execute_typed(
        &format!(
            "INSERT INTO {s}.schedules (name, cron, timezone, queue, payload, priority,
                                        max_attempts, timeout, next_at, unique_key, kind, args)
             VALUES ($1, $2, $3, $4, CASE WHEN $12 THEN '' ELSE $5 END, $6, $7, $8, $9, $10,
                     $11, CASE WHEN $12 THEN $5::jsonb END)
             ON CONFLICT (name) DO NOTHING"
        ),
        &[
            (&name, Type::TEXT),
            (&cron, Type::TEXT),
            (&timezone, Type::TEXT),
            (&how.queue, Type::TEXT),
            (&payload, Type::TEXT),
            (&how.priority, Type::INT4),
            (&how.max_attempts, Type::INT4),
            (&timeout, Type::FLOAT8),
            (&next, Type::TIMESTAMPTZ),
            (&how.unique_key, Type::TEXT),
            (&how.kind, Type::TEXT),
            (&how.arguments, Type::BOOL),
        ],
    )?;
    if added == 0 {
        return Err(ScheduleError::Exists(name.to_owned()));
    }
    tx.commit()?;
    Ok(next)
}

/// Every schedule, by name.
///
/// # Errors
///
/// The server's error.
pub fn list(client: &mut Client, schema: &Schema) -> Result<Vec<Schedule>, postgres::Error> {
    let s = schema.name();
    let rows = client.query_typed(
        &format!(
            "SELECT name, cron, timezone, queue, coalesce(args::text, payload), priority,
                    max_attempts, timeout, next_at, last_at, last_job, unique_key, kind
             FROM {s}.schedules ORDER BY name"
        ),
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| Schedule {
            name: r.get(0),
            cron: r.get(1),
            timezone: r.get(2),
            queue: r.get(3),
            kind: r.get(12),
            payload: r.get(4),
            priority: r.get(5),
            max_attempts: r.get(6),
            timeout: timeout_column(r.get(7)),
            unique_key: r.get(11),
            next_at: r.get(8),
            last: r
                .get::<_, Option<DateTime<Utc>>>(9)
                .zip(r.get::<_, Option<i64>>(10)),
        })
        .collect())
}

/// Removes the schedule `name` (the jobs it queued stay).
///
/// # Errors
///
/// [`ScheduleError::NoSuchSchedule`], or the server's error.
pub fn remove(client: &mut Client, schema: &Schema, name: &str) -> Result<(), ScheduleError> {
    let s = schema.name();
    let removed = client.execute_typed(
        &format!("DELETE FROM {s}.schedules WHERE name = $1"),
        &[(&name, Type::TEXT)],
    )?;
    match removed {
        0 => Err(ScheduleError::NoSuchSchedule(name.to_owned())),
        _ => Ok(()),
    }
}

/// What [`fire_due`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fired {
    /// The schedules fired and the jobs they queued.
    pub fired: Vec<(String, i64)>,
    /// How long until the next schedule is due (`None`: there is none).
    pub next_due: Option<Duration>,
}

/// Fires every due schedule not being fired by another child (see the
/// module's scenarios), [`FIRE_CHUNK`] at a time, each chunk in one
/// transaction of three statements whatever its size: the due rows, their
/// jobs queued and their next ticks set together (10,000 schedules due at
/// once took 20,000 round trips).
///
/// # Errors
///
/// The server's error; the chunk being fired was not.
pub fn fire_due(client: &mut Client, schema: &Schema) -> Result<Fired, postgres::Error> {
    let s = schema.name();
    let mut fired = Vec::new();
    loop {
        let (chunk, full) = fire_chunk(client, schema)?;
        fired.extend(chunk);
        if !full {
            break;
        }
    }
    let next: Option<f64> = client
        .query_typed_one(
            &format!("SELECT extract(epoch FROM min(next_at) - now())::float8 FROM {s}.schedules"),
            &[],
        )?
        .get(0);
    Ok(Fired {
        fired,
        next_due: next
            .map(|secs| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)),
    })
}

/// Most due schedules one transaction fires.
pub const FIRE_CHUNK: i64 = 1000;

/// Fires up to [`FIRE_CHUNK`] due schedules in one transaction: those
/// fired and their jobs, and whether the chunk was full (more may be due).
fn fire_chunk(
    client: &mut Client,
    schema: &Schema,
) -> Result<(Vec<(String, i64)>, bool), postgres::Error> {
    let s = schema.name();
    let mut tx = client.transaction()?;
    tx.batch_execute(super::store::DUTY_TX)?;
    let due = tx.query_typed(
        &format!(
            "SELECT now(), name, cron, timezone, queue, payload, priority, max_attempts,
                    timeout, unique_key
             FROM {s}.schedules WHERE next_at <= now() ORDER BY next_at
             LIMIT $1 FOR UPDATE SKIP LOCKED"
        ),
        &[(&FIRE_CHUNK, Type::INT8)],
    )?;
    let full = due.len() as i64 >= FIRE_CHUNK;
    if due.is_empty() {
        tx.commit()?;
        return Ok((Vec::new(), false));
    }
    let now: DateTime<Utc> = due[0].get(0);
    let mut names: Vec<String> = Vec::with_capacity(due.len());
    let mut nexts: Vec<DateTime<Utc>> = Vec::with_capacity(due.len());
    for row in &due {
        let name: String = row.get(1);
        let cron: String = row.get(2);
        let timezone: Option<String> = row.get(3);
        // A row this version cannot parse (edited by hand) is put off a
        // day, rather than retried at every turn.
        let next = match When::parse(&cron, timezone.as_deref()) {
            Ok(when) => when.next_after(now),
            Err(e) => {
                log::error!("schedule {name:?}: {e}; put off a day");
                None
            }
        }
        .unwrap_or(now + chrono::Duration::days(1));
        names.push(name);
        nexts.push(next);
    }
    // Each due row's job queued (a tick whose unique key the previous run
    // still holds queues nothing: scenario 4), and its next tick set.
    let rows = tx.query_typed(
        &format!(
            "WITH due AS (
                 SELECT d.name, d.next_at, s.queue, s.payload, s.priority, s.max_attempts,
                        s.timeout, s.unique_key, s.kind, s.args
                 FROM unnest($1::text[], $2::timestamptz[]) AS d(name, next_at)
                 JOIN {s}.schedules AS s ON s.name = d.name
             ), queued AS (
                 SELECT due.name, due.next_at, q.job_id, q.created
                 FROM due CROSS JOIN LATERAL {s}.enqueue_job(
                     due.queue, due.payload, due.max_attempts, now(), due.priority,
                     due.unique_key, due.timeout, due.kind, due.args) AS q
             ), ticked AS (
                 UPDATE {s}.schedules AS s
                 SET next_at = q.next_at,
                     last_at = CASE WHEN q.created THEN now() ELSE s.last_at END,
                     last_job = CASE WHEN q.created THEN q.job_id ELSE s.last_job END
                 FROM queued AS q WHERE s.name = q.name
             )
             SELECT name, job_id, created FROM queued"
        ),
        &[
            (&names, Type::TEXT_ARRAY),
            (&nexts, Type::TIMESTAMPTZ_ARRAY),
        ],
    )?;
    tx.commit()?;
    let mut fired = Vec::new();
    for row in &rows {
        let (name, job, created): (String, i64, bool) = (row.get(0), row.get(1), row.get(2));
        match created {
            true => fired.push((name, job)),
            false => {
                log::debug!("schedule {name:?}: tick skipped, job {job} still holds its unique key")
            }
        }
    }
    Ok((fired, full))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_fields() {
        let hourly = When::parse("0 * * * *", None).unwrap();
        assert_eq!(
            hourly.next_after(at("2026-11-23T10:00:00Z")),
            Some(at("2026-11-23T11:00:00Z"))
        );
        let every_second = When::parse("* * * * * *", None).unwrap();
        assert_eq!(
            every_second.next_after(at("2026-11-23T10:00:00.5Z")),
            Some(at("2026-11-23T10:00:01Z"))
        );
    }

    #[test]
    fn in_a_time_zone() {
        // 09:00 in Paris is 08:00 UTC in winter.
        let nine = When::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        assert_eq!(
            nine.next_after(Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap()),
            Some(at("2026-11-24T08:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_and_zones() {
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "* * * * Funday",
        ] {
            assert!(
                matches!(When::parse(bad, None), Err(ScheduleError::Cron(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            When::parse("* * * * *", Some("Mars/Olympus")),
            Err(ScheduleError::TimeZone(_))
        ));
    }
}
