//! The prefork master's figures: `cargo bench --bench prefork`.
//!
//! - respawn latency over 100 SIGKILLs of a child: until the replacement
//!   process runs (its first instruction after fork, a hair after its pid
//!   exists) and until it is ready (its worker threads run), median and p99;
//! - resident memory of the master plus 4 idle children (RSS, and PSS which
//!   splits pages shared after fork fairly);
//! - how long the master's guarded fork takes (its own debug log).
//!
//! The bench re-runs itself as the master; the children report their
//! CLOCK_MONOTONIC start and ready times on an inherited pipe.

#[path = "common/reporter.rs"]
mod reporter;

use reporter::{Events, Reporter, monotonic_nanos, percentile};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fork_safe::cluster::TempCluster;
use fork_safe::prefork::Prefork;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const KILLS: usize = 100;
const PROCS: usize = 4;

fn master(fd: i32) -> ! {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            eprintln!("{}", record.args());
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Debug);
    if let Ok(url) = std::env::var("BENCH_URL") {
        fork_safe::configure([fork_safe::Database::new("default", &url).unwrap()]).unwrap();
    }
    let result = Prefork::new().procs(PROCS).threads(1).run(Reporter { fd });
    std::process::exit(i32::from(result.is_err()));
}

/// Resident and proportional set size of a process, in kB.
fn memory(pid: u32) -> (u64, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field(&rollup, "Rss:"), field(&rollup, "Pss:"))
}

fn main() {
    if let Ok(fd) = std::env::var("BENCH_MASTER_FD") {
        master(fd.parse().unwrap());
    }
    let cluster = TempCluster::start().expect("starting PostgreSQL");
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe just returned these descriptors, owned only here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let log_path = std::env::temp_dir().join(format!("fork_safe-bench-{}.log", std::process::id()));
    let mut master = Command::new(std::env::current_exe().unwrap())
        .env("BENCH_MASTER_FD", write_end.as_raw_fd().to_string())
        .env("BENCH_URL", cluster.connection_string())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    drop(write_end);
    let mut events = Events(BufReader::new(fs::File::from(read_end)).lines());

    // Wait for the fleet: PROCS children, each started and ready.
    let mut children = events.wait_ready(PROCS);
    let mut next = move || events.next();
    std::thread::sleep(Duration::from_millis(500));
    let (mut rss, mut pss) = memory(master.id());
    for &pid in &children {
        let (r, p) = memory(pid);
        rss += r;
        pss += p;
    }
    let (master_rss, master_pss) = memory(master.id());

    let mut kills = Vec::with_capacity(KILLS);
    let mut to_started = Vec::with_capacity(KILLS);
    let mut to_ready = Vec::with_capacity(KILLS);
    for i in 0..KILLS {
        // Kill one child after the fleet settled, so the slot's backoff
        // never engages (a slot's child must live 2 s to reset it: rotate
        // over the 4 slots and pause between rounds).
        let victim = children.remove(0);
        if i > 0 && i % PROCS == 0 {
            std::thread::sleep(Duration::from_millis(2100));
        }
        // Let the master finish with the previous death (it ends the dead
        // child's backends, a database round trip) so each respawn is
        // measured on its own; that cleanup's cost is reported below.
        std::thread::sleep(Duration::from_millis(50));
        let killed_at = monotonic_nanos();
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        let (started, new_pid) = loop {
            if let ('S', pid, at) = next() {
                break (at, pid);
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
        kills.push((killed_at, new_pid));
        to_started.push(started.saturating_sub(killed_at) as f64 / 1e6);
        to_ready.push(ready_at.saturating_sub(killed_at) as f64 / 1e6);
    }
    let stopped = Instant::now();
    let _ = kill(Pid::from_raw(master.id() as i32), Signal::SIGTERM);
    let _ = master.wait();
    let stop_time = stopped.elapsed();

    let log = fs::read_to_string(&log_path).unwrap_or_default();
    let _ = fs::remove_file(&log_path);
    let timings = |marker: &str| -> Vec<f64> {
        let mut v: Vec<f64> = log
            .lines()
            .filter_map(|l| l.split(marker).nth(1))
            .filter_map(|d| parse_duration_ms(d.trim()))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let forks = timings("fork took ");
    // When fork() returned in the master, per new pid (from its log).
    let exists: std::collections::HashMap<u32, u64> = log
        .lines()
        .filter_map(|l| {
            let rest = l.split("; pid ").nth(1)?;
            let (pid, at) = rest.split_once(" exists at ")?;
            Some((pid.parse().ok()?, at.trim().parse().ok()?))
        })
        .collect();
    let mut to_exists: Vec<f64> = kills
        .iter()
        .filter_map(|(killed, pid)| Some(exists.get(pid)?.saturating_sub(*killed) as f64 / 1e6))
        .collect();
    to_exists.sort_by(f64::total_cmp);
    let cleanups = timings("leftover backend check took ");
    to_started.sort_by(f64::total_cmp);
    to_ready.sort_by(f64::total_cmp);

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("prefork master benchmark: {PROCS} children x 1 thread, {cpus} CPUs");
    println!();
    println!("respawn after SIGKILL of a child ({KILLS} kills), ms     median      p99");
    if !to_exists.is_empty() {
        println!(
            "  until the replacement's pid exists (fork returns) {:>8.3} {:>8.3}",
            percentile(&to_exists, 0.5),
            percentile(&to_exists, 0.99)
        );
    }
    println!(
        "  until the replacement runs                        {:>8.3} {:>8.3}",
        percentile(&to_started, 0.5),
        percentile(&to_started, 0.99)
    );
    println!(
        "  until the replacement is ready                    {:>8.3} {:>8.3}",
        percentile(&to_ready, 0.5),
        percentile(&to_ready, 0.99)
    );
    if !forks.is_empty() {
        println!(
            "  master's guarded fork ({} forks)                 {:>8.3} {:>8.3}",
            forks.len(),
            percentile(&forks, 0.5),
            percentile(&forks, 0.99)
        );
    }
    if !cleanups.is_empty() {
        println!(
            "  master ends a dead child's backends ({} times)   {:>8.3} {:>8.3}",
            cleanups.len(),
            percentile(&cleanups, 0.5),
            percentile(&cleanups, 0.99)
        );
    }
    println!();
    println!("memory, master + {PROCS} idle children               RSS MB   PSS MB");
    println!(
        "  master                                            {:>8.1} {:>8.1}",
        master_rss as f64 / 1024.0,
        master_pss as f64 / 1024.0
    );
    println!(
        "  total                                             {:>8.1} {:>8.1}",
        rss as f64 / 1024.0,
        pss as f64 / 1024.0
    );
    println!();
    println!("graceful stop of the idle fleet: {stop_time:.1?}");
    let _ = std::io::stdout().flush();
}

/// Parses a Debug-formatted duration at the start of `text` (`123.4µs`,
/// `1.2ms`) into milliseconds.
fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, rest) = text.split_at(split);
    let unit: String = rest.chars().take_while(|c| c.is_alphabetic()).collect();
    let unit = unit.as_str();
    let value: f64 = number.parse().ok()?;
    Some(match unit {
        "ns" => value / 1e6,
        "µs" => value / 1e3,
        "ms" => value,
        "s" => value * 1e3,
        _ => return None,
    })
}
