//! `prefork jobs`: list and show jobs, retry failed ones, cancel queued or
//! running ones, hand back the jobs of children gone for good.

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Subcommand};
use fork_safe::queue::JobState;
use fork_safe::queue::admin::{self, JobInfo, JobsError, ListFilter, Which};

use super::{DbArgs, Fail, connect_command, runtime, schema};

#[derive(Args, Debug)]
pub(crate) struct JobsArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// The queue's jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long, value_parser = PossibleValuesParser::new(JobState::ALL.map(JobState::as_str))
            .try_map(|name| name.parse::<JobState>()))]
        state: Option<JobState>,
        /// At most this many.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One job: payload, state, attempts and each failed attempt's error,
    /// result, who ran it, timestamps.
    Show {
        /// The job's id.
        id: i64,
        /// One JSON object.
        #[arg(long)]
        json: bool,
        /// The whole payload, however long (else its first 4,096
        /// characters).
        #[arg(long)]
        whole: bool,
    },
    /// Queue failed or cancelled jobs again, their attempts reset.
    Retry {
        /// The jobs (each must be failed or cancelled; otherwise nothing
        /// changes).
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        ids: Vec<i64>,
        /// Every failed or cancelled job of the queue.
        #[arg(long)]
        failed: bool,
    },
    /// Cancel jobs: a queued one at once; a running one is marked and
    /// finishes as cancelled, never retried.
    Cancel {
        /// The jobs (each must be queued or running; otherwise nothing
        /// changes).
        #[arg(required_unless_present = "queued", conflicts_with = "queued")]
        ids: Vec<i64>,
        /// Every queued job of the queue.
        #[arg(long)]
        queued: bool,
    },
    /// Hand back the running jobs of a host's children that are gone for
    /// good (for fleets with --rescue-after forever, whose leases never
    /// lapse): their leases end now, and their jobs are queued again, their
    /// attempt given back, to run alone once (as suspects).
    Release {
        /// `HOST` (its every child, as `prefork status` lists them) or
        /// `HOST:PID` (one child).
        child: String,
        /// Even if a child renewed its lease within the last 30 s (it may
        /// be alive, and its jobs would then run twice at once).
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn jobs_main(db: &DbArgs, args: &JobsArgs) -> Result<(), Fail> {
    let schema = schema(db)?;
    connect_command(db, "jobs", &schema)?;
    let queue = db.queue.as_str();
    match &args.action {
        Action::List { state, limit, json } => {
            let filter = ListFilter {
                queue: Some(queue),
                state: *state,
                limit: *limit,
            };
            let jobs =
                fork_safe::with_client(|c| admin::list(c, &schema, &filter)).map_err(runtime)?;
            if *json {
                let all: Vec<serde_json::Value> = jobs.iter().map(to_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else if jobs.is_empty() {
                println!("no jobs on {queue:?}");
            } else {
                for j in &jobs {
                    println!("{}", one_line(j));
                }
            }
        }
        Action::Show { id, json, whole } => {
            let job = fork_safe::with_client(|c| Ok(admin::show(c, &schema, *id, *whole)))
                .map_err(runtime)?
                .map_err(refused)?;
            if *json {
                println!("{}", to_json(&job));
            } else {
                print_job(&job);
            }
        }
        Action::Retry { ids, failed } => {
            let which = match failed {
                true => Which::All { queue },
                false => Which::Ids(ids),
            };
            let queued = fork_safe::with_client(|c| Ok(admin::retry(c, &schema, which)))
                .map_err(runtime)?
                .map_err(refused)?;
            println!("queued {} job(s) again{}", queued.len(), id_list(&queued));
        }
        Action::Cancel { ids, queued } => {
            let which = match queued {
                true => Which::All { queue },
                false => Which::Ids(ids),
            };
            let done = fork_safe::with_client(|c| Ok(admin::cancel(c, &schema, which)))
                .map_err(runtime)?
                .map_err(refused)?;
            if !done.cancelled.is_empty() || done.stopping.is_empty() {
                println!(
                    "cancelled {} queued job(s){}",
                    done.cancelled.len(),
                    id_list(&done.cancelled)
                );
            }
            if !done.stopping.is_empty() {
                println!(
                    "marked {} running job(s) to finish as cancelled{}",
                    done.stopping.len(),
                    id_list(&done.stopping)
                );
            }
        }
        Action::Release { child, force } => {
            let released =
                fork_safe::with_client(|c| Ok(admin::release_children(c, &schema, child, *force)))
                    .map_err(runtime)?
                    .map_err(refused)?;
            match released.is_empty() {
                true => println!("ended the lease of {child}; it held no running job"),
                false => println!("ended the lease of {child}: {released}"),
            }
        }
    }
    Ok(())
}

/// A refused action (an unknown id, a job in the wrong state): exit 1.
fn refused(e: JobsError) -> Fail {
    runtime(format!("{e}; nothing was changed"))
}

/// `: 1, 2, 3` (at most 20 ids shown), or nothing.
fn id_list(ids: &[i64]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = ids.iter().take(20).map(i64::to_string).collect();
    let more = if ids.len() > 20 { ", ..." } else { "" };
    format!(": {}{more}", shown.join(", "))
}

fn one_line(j: &JobInfo) -> String {
    let mut payload: String = j.payload.chars().take(40).collect();
    if payload.len() < j.payload.len() {
        payload.push('…');
    }
    format!(
        "{:>8}  {:<9}  {:<14} p{:<3} attempt {}/{}  {}  {payload:?}",
        j.id,
        j.state,
        j.kind,
        j.priority,
        j.attempts,
        j.max_attempts,
        iso(j.created_at)
    )
}

fn print_job(j: &JobInfo) {
    println!("job {} on {:?}: {}", j.id, j.queue, j.state);
    println!("  kind:      {}", j.kind);
    match j.arguments {
        true => println!("  args:      {}", j.payload),
        false => println!("  payload:   {:?}", j.payload),
    }
    if (j.payload.len() as i64) < j.payload_bytes {
        println!(
            "             (its first {} of {} bytes; --whole for all)",
            j.payload.len(),
            j.payload_bytes
        );
    }
    println!(
        "  priority:  {}   attempts: {} of {}",
        j.priority, j.attempts, j.max_attempts
    );
    if let Some(key) = &j.unique_key {
        println!("  unique key: {key:?}");
    }
    if let Some(t) = j.timeout {
        println!("  timeout:   {}s", t.as_secs_f64());
    }
    println!("  queued:    {}", iso(j.created_at));
    println!("  run at:    {}", iso(j.run_at));
    if let Some(at) = j.finished_at {
        println!("  finished:  {}", iso(at));
    }
    if let Some(by) = &j.locked_by {
        println!("  ran by:    {by}");
    }
    if let Some(result) = &j.result {
        println!("  result:    {result:?}");
    }
    if j.cancel_requested && j.state == JobState::Running {
        println!("  cancel requested: finishes as cancelled");
    }
    if j.suspect && matches!(j.state, JobState::Queued | JobState::Running) {
        println!("  suspect:   running when its child died; runs alone");
    }
    for e in &j.errors {
        println!(
            "  attempt {} failed at {} ({}): {}",
            e.attempt,
            e.at.map_or_else(|| "?".to_owned(), iso),
            e.by.as_deref().unwrap_or("?"),
            e.error
        );
    }
}

fn to_json(j: &JobInfo) -> serde_json::Value {
    let errors: Vec<serde_json::Value> = j
        .errors
        .iter()
        .map(|e| {
            serde_json::json!({
                "attempt": e.attempt,
                "error": e.error,
                "at": e.at.map(iso),
                "by": e.by,
            })
        })
        .collect();
    serde_json::json!({
        "id": j.id,
        "queue": j.queue,
        "kind": j.kind,
        "args": j.arguments.then(|| serde_json::from_str::<serde_json::Value>(&j.payload).ok()).flatten(),
        "state": j.state.as_str(),
        "priority": j.priority,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "payload": j.payload,
        "payload_bytes": j.payload_bytes,
        "result": j.result,
        "last_error": j.last_error,
        "errors": errors,
        "ran_by": j.locked_by,
        "unique_key": j.unique_key,
        "timeout": j.timeout.map(|t| t.as_secs_f64()),
        "cancel_requested": j.cancel_requested,
        "suspect": j.suspect,
        "created_at": iso(j.created_at),
        "run_at": iso(j.run_at),
        "finished_at": j.finished_at.map(iso),
    })
}

/// A time as the job commands print it: UTC, ISO 8601, to the microsecond.
fn iso(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}
