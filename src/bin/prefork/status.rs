//! `prefork status`: a queue's jobs by state, its live children, and the
//! fleet's backends (programs' included), as text or one JSON object.

use clap::Args;
use fork_safe::queue;
use postgres::types::Type;

use super::{DbArgs, Fail, connect_command, runtime, schema};

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Prints the queue's counts, live children and the fleet's backends.
pub(crate) fn status_main(db: &DbArgs, args: &StatusArgs) -> Result<(), Fail> {
    let schema = schema(db)?;
    connect_command(db, "status", &schema)?;
    let counts =
        fork_safe::with_client(|c| queue::counts(c, &schema, &db.queue)).map_err(runtime)?;
    let backends: Vec<(String, i64)> = fork_safe::with_client(|c| {
        // This database's backends of the fleets (master, children), not
        // of status or enqueue commands.
        let rows = c.query_typed(
            "SELECT application_name, count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE $1
               AND application_name NOT LIKE $2
             GROUP BY 1 ORDER BY 1",
            &[
                (
                    &format!("{}%", fork_safe::APPLICATION_NAME_PREFIX),
                    Type::TEXT,
                ),
                (
                    &format!("{}cli:%", fork_safe::APPLICATION_NAME_PREFIX),
                    Type::TEXT,
                ),
            ],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
    .map_err(runtime)?;
    let children =
        fork_safe::with_client(|c| queue::live_children(c, &schema, &db.queue)).map_err(runtime)?;
    let kinds =
        fork_safe::with_client(|c| queue::kind_counts(c, &schema, &db.queue)).map_err(runtime)?;
    fork_safe::close_all();
    if args.json {
        let children: Vec<serde_json::Value> = children
            .iter()
            .map(|c| {
                serde_json::json!({
                    "host": c.host,
                    "pid": c.pid.as_raw(),
                    "master_pid": c.master_pid.as_raw(),
                    // Seconds since the epoch, as before the field was a time.
                    "since": c.since.timestamp_micros() as f64 / 1e6,
                    "jobs": c.jobs,
                    "kinds": c.kinds,
                })
            })
            .collect();
        let backends: serde_json::Map<String, serde_json::Value> = backends
            .into_iter()
            .map(|(name, n)| (name, n.into()))
            .collect();
        let status = serde_json::json!({
            "queue": db.queue,
            "queued": counts.queued,
            "running": counts.running,
            "done": counts.done,
            "failed": counts.failed,
            "cancelled": counts.cancelled,
            "kinds": kinds.iter().map(|k| serde_json::json!({
                "kind": k.kind,
                "queued": k.queued,
                "running": k.running,
                "served": k.served,
            })).collect::<Vec<_>>(),
            "children": children,
            "backends": backends,
        });
        println!("{status}");
    } else {
        println!(
            "queue {:?}: {} queued, {} running, {} done, {} failed, {} cancelled",
            db.queue, counts.queued, counts.running, counts.done, counts.failed, counts.cancelled
        );
        for k in &kinds {
            let waits = match k.served {
                true => "",
                false => " (no live fleet serves this kind: its jobs wait)",
            };
            println!(
                "  kind {:?}: {} queued, {} running{waits}",
                k.kind, k.queued, k.running
            );
        }
        let now = chrono::Utc::now();
        for c in &children {
            let serves = match &c.kinds {
                Some(kinds) => format!(", kinds {}", kinds.join(",")),
                None => String::new(),
            };
            println!(
                "  child {}:{} (master {}) up {:.0}s, {} job(s) done{serves}",
                c.host,
                c.pid,
                c.master_pid,
                ((now - c.since).num_milliseconds() as f64 / 1000.0).max(0.0),
                c.jobs
            );
        }
        for (name, n) in backends {
            println!("  {name}: {n} backend(s)");
        }
    }
    Ok(())
}
