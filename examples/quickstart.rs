//! A pool of worker threads, each with its own lazily opened connection.
//!
//! `cargo run --example quickstart` uses `DATABASE_URL` if set, otherwise a
//! throwaway cluster started from the PostgreSQL server binaries.

use std::time::{Duration, Instant};

use fork_safe::cluster::TempCluster;
use fork_safe::{Database, MaxAge, ThreadPool};

fn main() {
    if let Err(e) = run() {
        eprintln!("quickstart: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (_cluster, url) = match std::env::var("DATABASE_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            eprintln!("quickstart: no DATABASE_URL; starting a throwaway PostgreSQL cluster");
            let cluster = TempCluster::start()?;
            let url = cluster.connection_string();
            (Some(cluster), url)
        }
    };
    fork_safe::configure([Database::new("default", &url)?
        .max_age(MaxAge::After(Duration::from_secs(600)))
        .max_idle(Some(Duration::from_secs(60)))
        .health_checks(true)])?;

    let pool = ThreadPool::new(8)?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..10_000)
        .map(|i: i64| {
            pool.submit(move || {
                fork_safe::with_client(|client| {
                    let row = client.query_one("SELECT $1::int8 * $1::int8", &[&i])?;
                    Ok(row.get::<_, i64>(0))
                })
            })
        })
        .collect();
    let mut sum = 0i64;
    for task in tasks {
        sum += task.join()??;
    }
    let elapsed = started.elapsed();
    let during = fork_safe::stats();
    pool.shutdown(Duration::from_secs(10))?;
    println!(
        "10000 tasks on 8 threads in {elapsed:.2?} (sum of squares {sum}); \
         connections open during the run: {}, after shutdown: {}",
        during.open,
        fork_safe::stats().open
    );
    Ok(())
}
