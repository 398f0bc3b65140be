//! Claims under a pinned horizon: `cargo bench --bench pinned`.
//!
//! A fleet of 2 x 4 works a steady 500 jobs/s (`--sql 'SELECT $1'`) on a
//! throwaway cluster while another session holds a REPEATABLE READ
//! transaction open: nothing the claims leave dead can be vacuumed, and
//! each claimed job's entry stays in the queued-jobs index (see
//! `src/queue/floors.rs`). Every minute it prints the claims' latency from
//! the fleet's own `prefork_claim_duration_seconds` histogram (scraped from
//! its status endpoint): how many, their mean, and the bucket bounds under
//! which half, 99 % and all of them fell; and the jobs table's dead rows
//! and the queued backlog. The first minute is before the pin.
//!
//! `PINNED_MINUTES` sets how long the horizon is pinned (default 10);
//! `PINNED_RATE` the jobs per second (default 500).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fork_safe::cluster::TempCluster;
use fork_safe::queue::{self, Enqueue, Schema};

const BIN: &str = env!("CARGO_BIN_EXE_prefork");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn client(url: &str) -> postgres::Client {
    postgres::Client::connect(&format!("{url} application_name=bench"), postgres::NoTls).unwrap()
}

/// The claim histogram's cumulative buckets (upper bound, count), and its
/// sum, from one scrape of `/metrics`.
fn claims(socket: &str) -> (Vec<(f64, f64)>, f64) {
    let mut s = UnixStream::connect(socket).expect("the status socket");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let mut buckets = Vec::new();
    let mut sum = 0.0;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("prefork_claim_duration_seconds") else {
            continue;
        };
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if let Some(le) = rest.strip_prefix("_bucket{le=\"") {
            let bound = le.split('"').next().unwrap_or("+Inf");
            let bound = bound.parse().unwrap_or(f64::INFINITY);
            buckets.push((bound, value));
        } else if rest.starts_with("_sum") {
            sum = value;
        }
    }
    (buckets, sum)
}

/// The least bucket bound under which `q` of the claims between two
/// scrapes fell.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let total = after.last().map_or(0.0, |b| b.1) - before.last().map_or(0.0, |b| b.1);
    for (i, (bound, n)) in after.iter().enumerate() {
        let earlier = before.get(i).map_or(0.0, |b| b.1);
        if n - earlier >= q * total {
            return *bound;
        }
    }
    f64::INFINITY
}

fn ms(bound: f64) -> String {
    match bound.is_finite() {
        true => format!("{:.1}", bound * 1e3),
        false => "inf".to_owned(),
    }
}

fn main() {
    let minutes = env_or("PINNED_MINUTES", 10);
    let rate = env_or("PINNED_RATE", 500).max(10);
    let cluster = TempCluster::start().unwrap();
    let url = cluster.connection_string();
    queue::migrate(&mut client(&url), &Schema::default()).unwrap();

    let socket = std::env::temp_dir().join(format!("pinned-bench-{}.sock", std::process::id()));
    let socket = socket.to_string_lossy().into_owned();
    let mut fleet = Command::new(BIN)
        .args(["--procs", "2", "--threads", "4", "--sql", "SELECT $1"])
        .args(["--status-addr", &socket])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The producer: a tenth of a second's jobs, ten times a second.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            let mut c = client(&url);
            let how = Enqueue::default();
            let per_tick = (rate / 10) as usize;
            let payloads: Vec<String> = (0..per_tick).map(|i| i.to_string()).collect();
            let started = Instant::now();
            let mut tick = 0u32;
            while !stop.load(Ordering::Relaxed) {
                queue::enqueue(&mut c, &Schema::default(), &how, &payloads).unwrap();
                tick += 1;
                let next = started + Duration::from_millis(100) * tick;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&socket).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(5));

    println!(
        "claims under a pinned horizon: 2 x 4, {rate} jobs/s, pinned for {minutes} min \
         (latency in ms: bucket bounds)"
    );
    println!(
        "{:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "minute", "claims", "mean", "p50<=", "p99<=", "max<=", "dead rows", "queued"
    );
    let mut pin: Option<postgres::Client> = None;
    let (mut before, mut sum_before) = claims(&socket);
    let mut watch = client(&url);
    for minute in 0..=minutes {
        if minute == 1 {
            let mut c = client(&url);
            c.batch_execute(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM prefork.jobs_live",
            )
            .unwrap();
            pin = Some(c);
        }
        std::thread::sleep(Duration::from_secs(60));
        let (after, sum_after) = claims(&socket);
        let n = after.last().map_or(0.0, |b| b.1) - before.last().map_or(0.0, |b| b.1);
        let row = watch
            .query_one(
                "SELECT coalesce((SELECT n_dead_tup FROM pg_stat_user_tables
                                  WHERE relid = 'prefork.jobs_live'::regclass), 0),
                        (SELECT count(*) FROM prefork.jobs_live WHERE state = 'queued')",
                &[],
            )
            .unwrap();
        let (dead, queued): (i64, i64) = (row.get(0), row.get(1));
        let label = match minute {
            0 => "unpinned".to_owned(),
            m => format!("{m}"),
        };
        println!(
            "{label:>8} {n:>8} {:>8.2} {:>8} {:>8} {:>8} {dead:>10} {queued:>8}",
            (sum_after - sum_before) / n.max(1.0) * 1e3,
            ms(quantile(&before, &after, 0.5)),
            ms(quantile(&before, &after, 0.99)),
            ms(quantile(&before, &after, 1.0)),
        );
        (before, sum_before) = (after, sum_after);
    }
    drop(pin);
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fleet.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = fleet.wait();
    let _ = std::fs::remove_file(&socket);
}
