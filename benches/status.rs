//! The status endpoint's figures: `cargo bench --bench status`.
//!
//! A master of 64 children (one worker each, no database) serving its
//! status on a Unix socket:
//! - scrape latency of `/metrics` and `/status` (connect to last byte),
//!   median, p99 and max over 500 scrapes each;
//! - respawn latency after SIGKILL of a child (until the replacement is
//!   ready), 64 kills without a scraper and 64 with one hitting `/metrics`
//!   100 times a second: the endpoint must not slow supervision.
//!
//! The bench re-runs itself as the master; the children report their
//! CLOCK_MONOTONIC start and ready times on an inherited pipe.

#[path = "common/reporter.rs"]
mod reporter;

use reporter::{Events, Reporter, monotonic_nanos, percentile};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fork_safe::prefork::{Prefork, StatusAddr};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PROCS: usize = 64;
const SCRAPES: usize = 500;

fn master(fd: i32, socket: &str) -> ! {
    let addr: StatusAddr = socket.parse().unwrap();
    let result = Prefork::new()
        .procs(PROCS)
        .threads(1)
        .status_addr(Some(addr))
        .run(Reporter { fd });
    std::process::exit(i32::from(result.is_err()));
}

/// One GET over a fresh connection: milliseconds to the last byte, and
/// the body's size.
fn scrape(socket: &str, path: &str) -> (f64, usize) {
    let started = Instant::now();
    let mut s = UnixStream::connect(socket).expect("the status socket");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{path} failed");
    (started.elapsed().as_secs_f64() * 1e3, answer.len())
}

fn main() {
    if let Ok(fd) = std::env::var("BENCH_MASTER_FD") {
        master(fd.parse().unwrap(), &std::env::var("BENCH_SOCKET").unwrap());
    }
    let socket = std::env::temp_dir()
        .join(format!(
            "fork_safe-status-bench-{}.sock",
            std::process::id()
        ))
        .to_string_lossy()
        .into_owned();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe just returned these descriptors, owned only here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut master = Command::new(std::env::current_exe().unwrap())
        .env("BENCH_MASTER_FD", write_end.as_raw_fd().to_string())
        .env("BENCH_SOCKET", &socket)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(write_end);
    let mut events = Events(BufReader::new(fs::File::from(read_end)).lines());
    let mut children = events.wait_ready(PROCS);
    let mut next = move || events.next();
    std::thread::sleep(Duration::from_millis(500));

    let scrapes = |path: &str| {
        let mut took: Vec<f64> = Vec::with_capacity(SCRAPES);
        let mut size = 0;
        for _ in 0..SCRAPES {
            let (ms, bytes) = scrape(&socket, path);
            took.push(ms);
            size = bytes;
        }
        took.sort_by(f64::total_cmp);
        (
            percentile(&took, 0.5),
            percentile(&took, 0.99),
            took[took.len() - 1],
            size,
        )
    };
    let metrics = scrapes("/metrics");
    let status = scrapes("/status");

    // Respawns, each slot killed once per round; a slot's child has lived
    // for seconds by its next kill, so backoff never engages.
    let mut respawn = |children: &mut Vec<u32>| {
        let mut to_ready = Vec::with_capacity(PROCS);
        for _ in 0..PROCS {
            let victim = children.remove(0);
            std::thread::sleep(Duration::from_millis(30));
            let killed_at = monotonic_nanos();
            kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
            let new_pid = loop {
                if let ('S', pid, _) = next() {
                    break pid;
                }
            };
            let ready_at = loop {
                if let ('R', pid, at) = next() {
                    if pid == new_pid {
                        break at;
                    }
                }
            };
            children.push(new_pid);
            to_ready.push(ready_at.saturating_sub(killed_at) as f64 / 1e6);
        }
        to_ready.sort_by(f64::total_cmp);
        (percentile(&to_ready, 0.5), percentile(&to_ready, 0.99))
    };
    let quiet = respawn(&mut children);
    let stop = Arc::new(AtomicBool::new(false));
    let scraped = Arc::new(AtomicUsize::new(0));
    let scraper = {
        let (stop, scraped, socket) = (stop.clone(), scraped.clone(), socket.clone());
        std::thread::spawn(move || {
            let mut at = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                scrape(&socket, "/metrics");
                scraped.fetch_add(1, Ordering::Relaxed);
                at += Duration::from_millis(10);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
        })
    };
    let scraping_started = Instant::now();
    let busy = respawn(&mut children);
    stop.store(true, Ordering::Relaxed);
    scraper.join().unwrap();
    let rate = scraped.load(Ordering::Relaxed) as f64 / scraping_started.elapsed().as_secs_f64();

    let _ = kill(Pid::from_raw(master.id() as i32), Signal::SIGTERM);
    let _ = master.wait();

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("status endpoint benchmark: {PROCS} children x 1 thread, {cpus} CPUs, Unix socket");
    println!();
    println!(
        "scrape, connect to last byte ({SCRAPES} each), ms   median      p99      max    bytes"
    );
    println!(
        "  /metrics                                      {:>8.3} {:>8.3} {:>8.3} {:>8}",
        metrics.0, metrics.1, metrics.2, metrics.3
    );
    println!(
        "  /status                                       {:>8.3} {:>8.3} {:>8.3} {:>8}",
        status.0, status.1, status.2, status.3
    );
    println!("  (the first scrape of a second reads every child's memory: the max)");
    println!();
    println!("respawn after SIGKILL, until ready ({PROCS} kills), ms  median      p99");
    println!(
        "  no scraper                                    {:>8.3} {:>8.3}",
        quiet.0, quiet.1
    );
    println!(
        "  /metrics scraped {rate:>5.1} times a second         {:>8.3} {:>8.3}",
        busy.0, busy.1
    );
    println!(
        "  median with the scraper / without: {:.2}",
        busy.0 / quiet.0
    );
    let _ = std::io::stdout().flush();
}
