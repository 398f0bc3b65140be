//! A fleet serving one kind among many: `cargo bench --bench kinds`.
//!
//! On a throwaway cluster, a fleet of 2 x 4 (`--sql 'SELECT 1'`,
//! `--kinds k7 --drain`) drains the 10,000 jobs of its kind:
//! - alone in the queue;
//! - beside 990,000 jobs of 99 other kinds, queued interleaved with its
//!   own, first in another queue, then in its own (the same rows on the
//!   same pages: what differs is only whether the other jobs share its
//!   queue);
//!
//! and, for the cost of kinds to a fleet that serves every kind, a fleet
//! without `--kinds` drains 100,000 jobs of one kind. Each line: the
//! steady rate, from the jobs' finish times over the middle 80% of them,
//! and the whole drain's time (its end is found by a look for running
//! jobs of its kinds, a scan of the live table: about half a second
//! beside a million jobs). `KINDS_BACKLOG` sets the backlog (default
//! 1,000,000).

use std::process::{Command, Stdio};
use std::time::Instant;

use fork_safe::cluster::TempCluster;
use fork_safe::queue::{self, Schema};

const BIN: &str = env!("CARGO_BIN_EXE_prefork");

fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(&format!("{url} application_name=bench"), postgres::NoTls).unwrap()
}

fn reset(url: &str) {
    let mut c = client(url);
    c.batch_execute("DROP SCHEMA IF EXISTS prefork CASCADE")
        .unwrap();
    queue::migrate(&mut c, &Schema::default()).unwrap();
}

/// Queues `n` jobs spread over `kinds` kinds (`k0`, `k1`, ...), one of
/// each kind in turn, all in queue `default` or (`apart`) each kind but
/// `k7` in queue `other`; and analyses the table.
fn queue_jobs(url: &str, n: u64, kinds: u64, apart: bool) {
    let queue = match apart {
        true => "CASE WHEN i % {kinds} = 7 THEN 'default' ELSE 'other' END",
        false => "'default'",
    }
    .replace("{kinds}", &kinds.to_string());
    let mut c = client(url);
    c.batch_execute(&format!(
        "INSERT INTO prefork.jobs_live (queue, payload, kind, run_at)
         SELECT {queue}, i::text, 'k' || (i % {kinds}),
                now() - interval '1 hour' + i * interval '1 microsecond'
         FROM generate_series(1, {n}) AS i;
         ANALYZE prefork.jobs_live"
    ))
    .unwrap();
}

/// Drains with a fleet of `extra` options: its steady jobs/s (over the
/// middle 80% of the jobs it finished, by their finish times), and how
/// long the whole drain took, start-up and the drain's last look
/// included.
fn drain(url: &str, extra: &[&str]) -> String {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["--procs", "2", "--threads", "4", "--drain"])
        .args(extra)
        .args(["--sql", "SELECT 1"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = started.elapsed();
    let row = client(url)
        .query_one(
            "WITH f AS (SELECT finished_at, row_number() OVER (ORDER BY finished_at) AS n,
                               count(*) OVER () AS total
                        FROM prefork.jobs_finished)
             SELECT (max(n) - min(n))::float8
                    / greatest(extract(epoch FROM max(finished_at) - min(finished_at)), 1e-6)
             FROM f WHERE n > total / 10 AND n <= total - total / 10",
            &[],
        )
        .unwrap();
    let steady: Option<f64> = row.get(0);
    format!(
        "{:>7.0} jobs/s steady, {took:.1?} in all",
        steady.unwrap_or(0.0)
    )
}

fn main() {
    let backlog: u64 = std::env::var("KINDS_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let cluster = TempCluster::builder().max_connections(100).start().unwrap();
    let url = cluster.connection_string();
    println!("a fleet serving one kind (2 x 4, --sql 'SELECT 1', --kinds k7)");

    reset(&url);
    queue_jobs(&url, 10_000, 1, false);
    client(&url)
        .batch_execute("UPDATE prefork.jobs_live SET kind = 'k7'")
        .unwrap();
    println!(
        "  its 10,000 jobs alone:                         {}",
        drain(&url, &["--kinds", "k7"])
    );

    // The same rows, the same heap: the other kinds' jobs in another
    // queue, then in the fleet's own.
    reset(&url);
    queue_jobs(&url, backlog, 100, true);
    println!(
        "  its {} with {} of other kinds in another queue: {}",
        backlog / 100,
        backlog - backlog / 100,
        drain(&url, &["--kinds", "k7"])
    );
    reset(&url);
    queue_jobs(&url, backlog, 100, false);
    println!(
        "  its {} among {} of 99 other kinds in its queue: {}",
        backlog / 100,
        backlog - backlog / 100,
        drain(&url, &["--kinds", "k7"])
    );

    reset(&url);
    queue_jobs(&url, 100_000, 1, false);
    println!(
        "a fleet serving every kind, 100,000 jobs:        {}",
        drain(&url, &[])
    );
}
