//! `prefork schedule`: jobs queued on a cron expression by whichever fleet
//! runs.

use std::time::Duration;

use clap::{Args, Subcommand};
use fork_safe::queue;
use fork_safe::queue::schedule::{self, ScheduleError};

use super::enqueue::{check_args, check_payload};
use super::{DbArgs, Fail, connect_command, parse_positive_duration, runtime, schema, usage};

#[derive(Args, Debug)]
pub(crate) struct ScheduleArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Add a schedule: every tick of --cron queues PAYLOAD on --queue.
    Add {
        /// The schedule's name.
        name: String,
        /// Five fields (minute hour day-of-month month day-of-week) or six
        /// (seconds first), e.g. "*/5 * * * *" or "0 0 9 * * mon-fri".
        #[arg(long)]
        cron: String,
        /// An IANA time zone, e.g. Europe/Paris [default: UTC].
        #[arg(long)]
        timezone: Option<String>,
        /// The jobs' priority (0, the default, is the most urgent).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true,
              value_parser = clap::value_parser!(i32).range(0..))]
        priority: i32,
        /// The jobs' attempts.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
        max_attempts: i32,
        /// The jobs' own time limit [default: the fleet's --timeout].
        #[arg(long, value_parser = parse_positive_duration)]
        timeout: Option<Duration>,
        /// The jobs' unique key: a tick while the last run's job is still
        /// queued or running queues nothing, so runs never overlap.
        #[arg(long)]
        unique_key: Option<String>,
        /// The jobs' kind [default: default].
        #[arg(long, value_parser = super::enqueue::parse_kind)]
        kind: Option<String>,
        /// The jobs' arguments, a JSON object (instead of a payload).
        #[arg(long)]
        args: Option<String>,
        /// The jobs' payload (none with --args).
        #[arg(required_unless_present = "args", conflicts_with = "args")]
        payload: Option<String>,
    },
    /// The schedules, by name.
    List {
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule (the jobs it queued stay).
    Remove {
        /// The schedule's name.
        name: String,
    },
}

pub(crate) fn schedule_main(db: &DbArgs, args: &ScheduleArgs) -> Result<(), Fail> {
    let schema = schema(db)?;
    if let Action::Add {
        name,
        cron,
        timezone,
        payload,
        args: arguments,
        ..
    } = &args.action
    {
        // Bad input is refused before any connection.
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(usage(format!("invalid schedule name {name:?}")));
        }
        if let Some(payload) = payload {
            check_payload(payload.as_bytes()).map_err(|why| usage(format!("PAYLOAD: {why}")))?;
        }
        if let Some(json) = arguments {
            check_payload(json.as_bytes()).map_err(|why| usage(format!("--args: {why}")))?;
            check_args(json).map_err(|why| usage(format!("--args: {why}")))?;
        }
        schedule::When::parse(cron, timezone.as_deref()).map_err(|e| usage(e.to_string()))?;
    }
    connect_command(db, "schedule", &schema)?;
    match &args.action {
        Action::Add {
            name,
            cron,
            timezone,
            priority,
            max_attempts,
            timeout,
            unique_key,
            kind,
            args: arguments,
            payload,
        } => {
            let how = queue::Enqueue {
                queue: &db.queue,
                priority: *priority,
                max_attempts: *max_attempts,
                timeout: *timeout,
                unique_key: unique_key.as_deref(),
                kind: kind.as_deref().unwrap_or("default"),
                arguments: arguments.is_some(),
                ..queue::Enqueue::default()
            };
            let payload = payload
                .as_deref()
                .or(arguments.as_deref())
                .unwrap_or_default();
            let next = fork_safe::with_client(|c| {
                Ok(schedule::add(
                    c,
                    &schema,
                    name,
                    cron,
                    timezone.as_deref(),
                    &how,
                    payload,
                ))
            })
            .map_err(runtime)?
            .map_err(refused)?;
            println!(
                "schedule {name:?} added: queues on {:?}, next at {}",
                db.queue,
                next.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            );
        }
        Action::List { json } => {
            let all = fork_safe::with_client(|c| schedule::list(c, &schema)).map_err(runtime)?;
            if *json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name,
                            "cron": s.cron,
                            "timezone": s.timezone,
                            "queue": s.queue,
                            "kind": s.kind,
                            "payload": s.payload,
                            "priority": s.priority,
                            "max_attempts": s.max_attempts,
                            "timeout": s.timeout.map(|t| t.as_secs_f64()),
                            "unique_key": s.unique_key,
                            "next_at": s.next_at.to_rfc3339(),
                            "last_at": s.last.map(|(at, _)| at.to_rfc3339()),
                            "last_job": s.last.map(|(_, job)| job),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else if all.is_empty() {
                println!("no schedules");
            } else {
                for s in &all {
                    let zone = s.timezone.as_deref().unwrap_or("UTC");
                    let last = s.last.map_or(String::from("never fired"), |(at, job)| {
                        format!("last {} (job {job})", at.format("%Y-%m-%dT%H:%M:%SZ"))
                    });
                    let unique = s
                        .unique_key
                        .as_ref()
                        .map_or(String::new(), |k| format!("  unique key {k:?}"));
                    println!(
                        "{:<20} {:<18} {zone:<14} queue {:?}  kind {}  next {}  {last}{unique}",
                        s.name,
                        s.cron,
                        s.queue,
                        s.kind,
                        s.next_at.format("%Y-%m-%dT%H:%M:%SZ")
                    );
                }
            }
        }
        Action::Remove { name } => {
            fork_safe::with_client(|c| Ok(schedule::remove(c, &schema, name)))
                .map_err(runtime)?
                .map_err(refused)?;
            println!("schedule {name:?} removed");
        }
    }
    Ok(())
}

/// A refused action (a name taken or unknown): exit 1.
fn refused(e: ScheduleError) -> Fail {
    match e {
        ScheduleError::Cron(_) | ScheduleError::TimeZone(_) | ScheduleError::Never(_) => {
            usage(e.to_string())
        }
        _ => runtime(format!("{e}; nothing was changed")),
    }
}
