//! The job queue's figures: `cargo bench --bench queue`.
//!
//! On a throwaway cluster with PostgreSQL's default durability (fsync on):
//! - no-op jobs (`--sql 'SELECT $1'`) per second at 4 x 8 and 2 x 4, from
//!   the jobs' own finish times;
//! - the server's own ceilings measured in the same run by `pgbench`: the
//!   queue's claim-and-complete SQL at the same concurrency, and a one-row
//!   UPDATE by primary key at 32 clients (the commit ceiling);
//! - enqueue rate; idle pickup latency (enqueue of one job until it is
//!   done, into an idle fleet), median and p99; an idle fleet's CPU use;
//! - decay: the rate of the last 10% of a long run against the first 10%.
//!
//! Sizes scale with `FORK_SAFE_BENCH_SCALE` (default 1.0: 100,000 jobs per
//! rate run, 1,000,000 for the decay run).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fork_safe::cluster::TempCluster;
use fork_safe::queue::{self, Enqueue, Schema};
use fork_safe::{Database, MaxAge};

const BIN: &str = env!("CARGO_BIN_EXE_prefork");
const NOOP: &str = "SELECT $1";

fn scaled(n: u64) -> u64 {
    let scale: f64 = std::env::var("FORK_SAFE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as u64).max(100)
}

fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(&format!("{url} application_name=bench"), postgres::NoTls).unwrap()
}

fn reset(url: &str) {
    client(url)
        .batch_execute("DROP SCHEMA IF EXISTS prefork CASCADE")
        .unwrap();
    fork_safe::with_client(|c| queue::migrate(c, &Schema::default())).unwrap();
    fork_safe::close_all();
}

fn enqueue(n: u64) -> Duration {
    let payloads: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let how = Enqueue::default();
    let started = Instant::now();
    fork_safe::with_client(|c| queue::enqueue(c, &Schema::default(), &how, &payloads)).unwrap();
    fork_safe::close_all();
    started.elapsed()
}

fn fleet(url: &str, procs: u32, threads: u32, drain: bool) -> std::process::Child {
    let procs = procs.to_string();
    let threads = threads.to_string();
    let mut args = vec!["--procs", &procs, "--threads", &threads, "--sql", NOOP];
    if drain {
        args.push("--drain");
    }
    prefork(url, &args)
}

/// `prefork ARGS` on `url`, quiet.
fn prefork(url: &str, args: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Jobs per second over the jobs finished with ids in `range`.
fn rate(url: &str, from_id: i64, to_id: i64) -> f64 {
    let row = client(url)
        .query_one(
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(finished_at))::float8
             FROM prefork.jobs WHERE state = 'done' AND id BETWEEN $1 AND $2",
            &[&from_id, &to_id],
        )
        .unwrap();
    let (n, secs): (i64, Option<f64>) = (row.get(0), row.get(1));
    n as f64 / secs.unwrap_or(f64::NAN).max(1e-6)
}

fn drain_run(url: &str, procs: u32, threads: u32, n: u64) -> f64 {
    reset(url);
    enqueue(n);
    let status = fleet(url, procs, threads, true).wait().unwrap();
    assert!(status.success(), "the fleet failed");
    rate(url, 1, n as i64)
}

/// Runs a pgbench script; returns transactions per second.
fn pgbench(cluster: &TempCluster, script: &str, clients: u32, secs: u32) -> Option<f64> {
    let bin = fork_safe::cluster::find_bindir().ok()?.join("pgbench");
    if !bin.exists() {
        eprintln!("pgbench not found at {}", bin.display());
        return None;
    }
    let path = std::env::temp_dir().join(format!("fork_safe-bench-{}.sql", std::process::id()));
    std::fs::write(&path, script).ok()?;
    let out = Command::new(bin)
        .args(["-n", "-M", "prepared", "-f"])
        .arg(&path)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
        ])
        .args(["-h"])
        .arg(cluster.socket_dir())
        .args(["-p", "5432", "-U", "postgres", "postgres"])
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok());
    if tps.is_none() {
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("pgbench failed: {}", err.lines().last().unwrap_or(""));
    }
    tps
}

/// CPU time (user + system, in clock ticks) of process `pid` and its
/// children, threads included.
fn fleet_cpu_ticks(pid: u32) -> u64 {
    let ticks = |pid: &str| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(close) = stat.rfind(')') else {
            return 0;
        };
        // utime and stime are fields 14 and 15; the text after ") " starts
        // at field 3.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        field(14).unwrap_or(0) + field(15).unwrap_or(0)
    };
    let me = pid.to_string();
    let children =
        std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default();
    ticks(&me) + children.split_whitespace().map(ticks).sum::<u64>()
}

/// One frozen-host rescue (see its caller); seconds from the freeze to the
/// job done by the other fleet.
fn rescue_once(url: &str) -> f64 {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    reset(url);
    enqueue(1);
    let start = |args: &[&str]| prefork(url, args);
    let mut c = client(url);
    let state = |c: &mut postgres::Client| -> String {
        c.query_one("SELECT state FROM prefork.jobs", &[])
            .unwrap()
            .get(0)
    };
    let mut frozen = start(&[
        "--procs",
        "1",
        "--graceful-timeout",
        "1s",
        "--exec",
        "sleep",
        "600",
    ]);
    while state(&mut c) != "running" {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut rescuer = start(&["--procs", "1", "--rescue-after", "3s", "--sql", NOOP]);
    std::thread::sleep(Duration::from_millis(500));
    let master = Pid::from_raw(frozen.id() as i32);
    let children: Vec<Pid> =
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(Pid::from_raw)
            .collect();
    let mut stopped = vec![master];
    stopped.extend(children);
    for pid in &stopped {
        kill(*pid, Signal::SIGSTOP).unwrap();
    }
    let froze = Instant::now();
    let limit = Duration::from_secs(60);
    while state(&mut c) != "done" && froze.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = froze.elapsed();
    // Thawed and stopped whatever happened, so no frozen fleet outlives a
    // failed run.
    for pid in &stopped {
        let _ = kill(*pid, Signal::SIGCONT);
    }
    for child in [&mut frozen, &mut rescuer] {
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let _ = child.wait();
    }
    assert!(took < limit, "the frozen fleet's job was never rescued");
    took.as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let cluster = TempCluster::builder()
        .durable(true)
        .max_connections(200)
        .start()
        .expect("starting PostgreSQL");
    let url = cluster.connection_string();
    fork_safe::set_role("cli");
    fork_safe::configure([Database::new("default", &url)
        .unwrap()
        .max_age(MaxAge::Forever)])
    .unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("prefork queue benchmark: {cpus} CPUs, PostgreSQL with fsync on, Unix socket");
    println!();

    let n = scaled(100_000);
    let r48 = drain_run(&url, 4, 8, n);
    let r24 = drain_run(&url, 2, 4, n);

    // The server's ceilings, measured now on the same server.
    reset(&url);
    enqueue(scaled(2_000_000).min(3_000_000));
    // 8-job rounds, as one worker sent them before children claimed for
    // all their workers: the claim, then the statements and the completion
    // in one call.
    let claim_complete = "\\set owner random(1, 1000000)\n\
        SELECT array_agg(job_id) AS ids, array_agg(job_attempt) AS attempts, \
               array_agg(job_payload) AS payloads \
          FROM prefork.claim(ARRAY['default'], 8, 'bench/' || :owner, 300) \\gset\n\
        SELECT prefork.run_sql('SELECT $1', 'bench/' || :owner, :ids::int8[], :attempts::int[], \
                               :payloads::text[], true);\n";
    let pg48 = pgbench(&cluster, claim_complete, 32, 10).map(|tps| tps * 8.0);
    let pg24 = pgbench(&cluster, claim_complete, 8, 10).map(|tps| tps * 8.0);
    client(&url)
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_rows (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO bench_rows SELECT g, 0 FROM generate_series(1, 100000) g ON CONFLICT DO NOTHING",
        )
        .unwrap();
    let commit_ceiling = pgbench(
        &cluster,
        "\\set id random(1, 100000)\nUPDATE bench_rows SET v = v + 1 WHERE id = :id;\n",
        32,
        10,
    );

    // The pgbench column runs what a worker sent before children claimed
    // for all their workers (claim 8, then run and complete them): the
    // per-worker pattern's ceiling, which the local queue now exceeds.
    println!(
        "no-op jobs (--sql '{NOOP}'), {n} per run          jobs/s   pgbench 8-job rounds   ratio"
    );
    let show = |label: &str, ours: f64, theirs: Option<f64>| match theirs {
        Some(t) => println!("  {label:<42}{ours:>8.0}   {t:>16.0}   {:>5.2}", ours / t),
        None => println!("  {label:<42}{ours:>8.0}   (pgbench unavailable)"),
    };
    show("4 procs x 8 threads", r48, pg48);
    show("2 procs x 4 threads", r24, pg24);
    match commit_ceiling {
        Some(c) => println!(
            "  commit ceiling (1-row UPDATE, 32 clients)  {c:>8.0} tps; 4 x 8 reaches {:.2} of it",
            r48 / c
        ),
        None => println!("  commit ceiling: pgbench unavailable"),
    }
    println!();

    // Enqueue rate.
    reset(&url);
    let m = scaled(100_000);
    let took = enqueue(m);
    println!(
        "enqueue: {m} jobs in {took:.2?} ({:.0} jobs/s)",
        m as f64 / took.as_secs_f64()
    );

    // Idle pickup latency.
    reset(&url);
    let mut idle = fleet(&url, 2, 4, false);
    std::thread::sleep(Duration::from_secs(2));
    let mut latencies = Vec::new();
    let mut observer = client(&url);
    for i in 0..100 {
        let id: i64 = observer
            .query_one(
                "INSERT INTO prefork.jobs_live (queue, payload) VALUES ('default', $1) RETURNING id",
                &[&i.to_string()],
            )
            .unwrap()
            .get(0);
        let enqueued = Instant::now();
        observer
            .execute("SELECT pg_notify('prefork_jobs', 'default')", &[])
            .unwrap();
        loop {
            let state: String = observer
                .query_one("SELECT state FROM prefork.jobs WHERE id = $1", &[&id])
                .unwrap()
                .get(0);
            if state == "done" {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        latencies.push(enqueued.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(idle.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = idle.wait();
    latencies.sort_by(f64::total_cmp);
    println!(
        "idle pickup (enqueue until done, 2 x 4 fleet, 100 jobs): median {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    // What an idle fleet costs: CPU of the master and its children while
    // nothing is queued, and the backends it holds.
    reset(&url);
    let mut idle = fleet(&url, 4, 8, false);
    std::thread::sleep(Duration::from_secs(2));
    let master = idle.id();
    let (ticks_before, secs) = (fleet_cpu_ticks(master), 10);
    std::thread::sleep(Duration::from_secs(secs));
    let ticks = fleet_cpu_ticks(master) - ticks_before;
    let backends: i64 = client(&url)
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'prefork:%'",
            &[],
        )
        .unwrap()
        .get(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(master as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = idle.wait();
    println!(
        "idle fleet (4 x 8, {secs} s): {:.2}% of one CPU, {backends} backends",
        ticks as f64 / hz / secs as f64 * 100.0
    );

    // Rescue after a frozen host: a fleet holding a job is frozen (master
    // and child SIGSTOPped); another fleet with --rescue-after 3s hands the
    // job back and runs it. From the freeze to the job done, 10 times.
    let mut rescues: Vec<f64> = (0..10).map(|_| rescue_once(&url)).collect();
    rescues.sort_by(f64::total_cmp);
    println!(
        "rescue after a frozen host (--rescue-after 3s, 10 runs): median {:.2} s, min {:.2} s, max {:.2} s",
        percentile(&rescues, 0.5),
        rescues[0],
        rescues[rescues.len() - 1]
    );

    // Decay over a long run, three times (FORK_SAFE_BENCH_DECAY_RUNS): the
    // last tenth must keep pace with the first in every run, not on average.
    let big = scaled(1_000_000);
    let tenth = (big / 10) as i64;
    let runs: usize = std::env::var("FORK_SAFE_BENCH_DECAY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for run in 1..=runs {
        reset(&url);
        enqueue(big);
        let started = Instant::now();
        let status = fleet(&url, 4, 8, true).wait().unwrap();
        assert!(status.success());
        // Ids restart with every reset: the first tenth is 1..tenth.
        let first = rate(&url, 1, tenth);
        let last = rate(&url, big as i64 - tenth + 1, big as i64);
        println!(
            "decay run {run} of {runs}, {big} jobs at 4 x 8 ({:.0?}): first 10% {first:.0} jobs/s, last 10% {last:.0} jobs/s, ratio {:.2}",
            started.elapsed(),
            last / first
        );
    }
    let _ = std::io::stdout().flush();
}
