//! `prefork bench`: the queue measured on the user's own server, as River's
//! `river bench` does. It queues jobs in a scratch schema of its own,
//! drains them with a fleet of the shape asked for, prints what it saw, and
//! drops the schema.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use fork_safe::Database;
use fork_safe::prefork::Prefork;
use fork_safe::queue::{self, Handler, QueueApp, QueueConfig, Schema};
use postgres::types::Type;

use super::{DbArgs, Fail, runtime, usage};

/// What runs each benchmark job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchHandler {
    /// A built-in Rust no-op: what the queue itself costs.
    Noop,
    /// `--sql`'s statement, with the payload as $1.
    Sql,
    /// A resident program (`--worker`, given by `--program`): each worker
    /// runs one long-lived copy, fed the jobs over its channel.
    #[value(alias = "worker")]
    Resident,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Child processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    procs: u32,
    /// Worker threads per child.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// Jobs to queue, then drain.
    #[arg(long, default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    jobs: u64,
    /// What runs each job.
    #[arg(long, value_enum, default_value_t = BenchHandler::Noop)]
    handler: BenchHandler,
    /// The statement of `--handler sql`; the payload, a number, is $1.
    #[arg(long, default_value = "SELECT $1")]
    sql: String,
    /// The program of `--handler resident` and its arguments, split on
    /// spaces.
    #[arg(long, default_value = "python3 examples/resident/resident.py")]
    program: String,
    /// Finished jobs' history, as the fleet's option: "forever" (kept), or
    /// 0 (done jobs deleted as they complete).
    #[arg(long, default_value = "forever", value_parser = super::parse_keep)]
    keep_finished: super::Keep,
    /// Jobs one worker runs at once, at least (it takes more from a deep
    /// local queue).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..=1000))]
    batch: i64,
}

/// CPU time, from `/proc/stat` (the machine's, busy) or `getrusage`.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: all but idle and
    // iowait, in clock ticks.
    let busy: u64 = fields.iter().sum::<u64>() - fields.get(3)? - fields.get(4)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Some(Duration::from_secs_f64(busy as f64 / hz as f64))
}

/// This process's CPU time and that of its reaped children (the fleet).
fn fleet_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let time = |who| {
        getrusage(who).map_or(Duration::ZERO, |u| {
            let (user, system) = (u.user_time(), u.system_time());
            let micros = |t: nix::sys::time::TimeVal| {
                Duration::from_micros(t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64)
            };
            micros(user) + micros(system)
        })
    };
    time(UsageWho::RUSAGE_SELF) + time(UsageWho::RUSAGE_CHILDREN)
}

fn per_job(cpu: Duration, jobs: u64) -> String {
    format!("{:.0} µs", cpu.as_secs_f64() * 1e6 / jobs.max(1) as f64)
}

/// A count or a rate, rounded, thousands separated by commas.
fn count(n: f64) -> String {
    super::progress::thousands(n.max(0.0).round() as u64)
}

/// Runs the benchmark against `url`; `own_cluster`: a throwaway cluster of
/// its own that preloads `pg_stat_statements`, where the extension may be
/// created (never on the user's server).
pub fn run(db: &DbArgs, args: &BenchArgs, url: &str, own_cluster: bool) -> Result<(), Fail> {
    let _ = db;
    let schema = Schema::new(&format!("prefork_bench_{}", std::process::id())).map_err(usage)?;
    fork_safe::set_role("master");
    let database =
        Database::new("default", url).map_err(|e| usage(format!("invalid --database-url: {e}")))?;
    fork_safe::configure([database]).map_err(runtime)?;
    if own_cluster {
        let created = fork_safe::with_client(|c| {
            c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        });
        if let Err(e) = created {
            log::warn!("pg_stat_statements: {e}");
        }
    }
    let outcome = measure(&schema, args);
    // The scratch schema goes whatever happened.
    let dropped = fork_safe::with_client(|c| {
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.name()))
    });
    fork_safe::close_all();
    if let Err(e) = dropped {
        log::warn!("dropping the scratch schema {}: {e}", schema.name());
    }
    outcome
}

fn measure(schema: &Schema, args: &BenchArgs) -> Result<(), Fail> {
    let handler = match args.handler {
        BenchHandler::Noop => Handler::Rust(std::sync::Arc::new(|_, _| Ok(String::new()))),
        BenchHandler::Sql => Handler::Sql(args.sql.clone()),
        BenchHandler::Resident => {
            let argv: Vec<String> = args.program.split_whitespace().map(str::to_owned).collect();
            match argv.first() {
                Some(program) if super::find_program(program) => Handler::Resident { argv },
                _ => {
                    return Err(super::usage(format!(
                        "--program {:?}: not found or not executable",
                        args.program
                    )));
                }
            }
        }
    };
    let queued = fork_safe::with_client(|c| {
        queue::migrate(c, schema)?;
        let how = queue::Enqueue::default();
        let queued = queue::enqueue_copies(c, schema, &how, "1", args.jobs)?;
        c.batch_execute(&format!("VACUUM ANALYZE {}.jobs_live", schema.name()))?;
        Ok(queued)
    })
    .map_err(runtime)?;
    // pg_stat_statements, if the server has it and lets us reset it.
    let statements = fork_safe::with_client(|c| {
        let row = c.query_typed_one("SELECT to_regclass('pg_stat_statements') IS NOT NULL", &[])?;
        if !row.get::<_, bool>(0) {
            return Ok(false);
        }
        Ok(c.batch_execute("SELECT pg_stat_statements_reset()").is_ok())
    })
    .unwrap_or(false);
    fork_safe::close_all();
    let config = QueueConfig {
        schema: schema.clone(),
        batch: args.batch,
        drain: true,
        keep_finished: args.keep_finished.0,
        ..QueueConfig::default()
    };
    let fleet = Prefork::new()
        .procs(args.procs as usize)
        .threads(args.threads as usize)
        .graceful_timeout(Duration::from_secs(10));
    let keeps = config.keeps_history();
    let mut app = QueueApp::new(config, handler);
    let bounds = fleet.connection_bounds(&app);
    let mut line = None;
    if let Some(progress) = super::progress::Progress::jobs(queued) {
        let (shown, update) = progress.in_master();
        app = app.on_progress(update);
        line = Some(shown);
    }
    let stats = app.stats();
    let (machine0, fleet0) = (machine_busy(), fleet_cpu());
    let started = Instant::now();
    let ran = fleet.run(app).map_err(runtime);
    drop(line);
    ran?;
    let elapsed = started.elapsed();
    let (machine1, fleet1) = (machine_busy(), fleet_cpu());
    let (done, p50, p99, middle, claim_ms, run_ms) = fork_safe::with_client(|c| {
        let s = schema.name();
        let row = c.query_typed_one(
            &format!(
                "SELECT $1 - (SELECT count(*) FROM {s}.jobs_live)
                        - count(*) FILTER (WHERE state = 'failed'),
                        coalesce(percentile_cont(0.5) WITHIN GROUP
                            (ORDER BY extract(epoch FROM finished_at - created_at)), 0)::float8,
                        coalesce(percentile_cont(0.99) WITHIN GROUP
                            (ORDER BY extract(epoch FROM finished_at - created_at)), 0)::float8,
                        coalesce(extract(epoch FROM
                            percentile_disc(0.9) WITHIN GROUP (ORDER BY finished_at)
                            - percentile_disc(0.1) WITHIN GROUP (ORDER BY finished_at)), 0)::float8
                 FROM {s}.jobs_finished"
            ),
            &[(&(queued as i64), Type::INT8)],
        )?;
        let (mut claim, mut run): (f64, f64) = (0.0, 0.0);
        if statements {
            let row = c.query_typed_one(
                "SELECT coalesce(sum(total_exec_time) FILTER (WHERE query LIKE $1), 0)::float8,
                        coalesce(sum(total_exec_time) FILTER (WHERE query LIKE $2 OR query LIKE $3), 0)::float8
                 FROM pg_stat_statements",
                &[
                    (&format!("%{s}.claim(%"), Type::TEXT),
                    (&format!("%{s}.run_sql(%"), Type::TEXT),
                    (&format!("%{s}.complete_jobs(%"), Type::TEXT),
                ],
            )?;
            (claim, run) = (row.get(0), row.get(1));
        }
        Ok((
            row.get::<_, i64>(0),
            row.get::<_, f64>(1),
            row.get::<_, f64>(2),
            row.get::<_, f64>(3),
            claim,
            run,
        ))
    })
    .map_err(runtime)?;
    fork_safe::close_all();
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let handler = match args.handler {
        BenchHandler::Noop => "a Rust no-op".to_owned(),
        BenchHandler::Sql => format!("--sql {:?}", args.sql),
        BenchHandler::Resident => format!("--worker {}", args.program),
    };
    println!(
        "prefork bench: {} children x {} workers, {} jobs queued, {handler}, batch {}, {}",
        args.procs,
        args.threads,
        count(queued as f64),
        args.batch,
        if keeps { "history kept" } else { "no history" }
    );
    println!(
        "  drained {} jobs in {:.2?}: {} jobs/s",
        count(done as f64),
        elapsed,
        count(rate)
    );
    // The drain's start (the fleet's connections, a `--worker` program's
    // boot in every worker) and its end (the last batches, with fewer
    // workers busy) are paid once; the middle is what a fleet working a
    // backlog keeps up.
    if keeps && middle > 0.0 {
        println!(
            "  steady: {} jobs/s over the middle 80% of the jobs (start and end excluded)",
            count(done as f64 * 0.8 / middle)
        );
    }
    let jobs = done.max(1) as u64;
    let fleet_cpu = fleet1.saturating_sub(fleet0);
    match (machine0, machine1) {
        (Some(m0), Some(m1)) => {
            let machine = m1.saturating_sub(m0);
            println!(
                "  machine CPU per job {} (the fleet {}, the rest of the machine, the server if it is local, {})",
                per_job(machine, jobs),
                per_job(fleet_cpu, jobs),
                per_job(machine.saturating_sub(fleet_cpu), jobs)
            );
        }
        _ => println!("  fleet CPU per job {}", per_job(fleet_cpu, jobs)),
    }
    if statements {
        // Summed over the backends, waits for a CPU included: the split
        // is what tells, not the sum against the drain's wall time.
        let both = (claim_ms + run_ms).max(1e-9);
        println!(
            "  statement time (pg_stat_statements, summed over backends): claims {:.1} s ({:.0}%), \
             running and completing {:.1} s ({:.0}%)",
            claim_ms / 1e3,
            claim_ms / both * 100.0,
            run_ms / 1e3,
            run_ms / both * 100.0
        );
    } else {
        println!("  statement shares: install pg_stat_statements on the server to see them");
    }
    println!(
        "  peak backends {} (bound {}, {} while a child is replaced)",
        stats
            .peak_backends
            .load(std::sync::atomic::Ordering::Relaxed),
        bounds.steady,
        bounds.replacing
    );
    if keeps {
        println!(
            "  enqueue to done: p50 {p50:.3} s, p99 {p99:.3} s (all jobs queued before the start)"
        );
    } else {
        println!("  enqueue to done: not kept (--keep-finished 0 keeps no history)");
    }
    Ok(())
}
