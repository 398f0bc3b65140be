//! Throughput of the close-on-exit pool: `cargo bench --bench pool`.
//!
//! Prints figures, asserts nothing:
//! - tasks/s of an 8-thread pool running `SELECT 1` with persistent
//!   connections vs a new connection per task (`MaxAge::EndOfTask`);
//! - the pool's per-task overhead against plain threads running the same
//!   closures inline, with no database, and a thread spawned per task for
//!   comparison.
//!
//! Sizes scale with `FORK_SAFE_BENCH_SCALE` (default 1.0).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fork_safe::cluster::TempCluster;
use fork_safe::{Database, MaxAge, ThreadPool};

const THREADS: usize = 8;

fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("FORK_SAFE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(THREADS)
}

/// CPU time (user + system) of the whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: all-zero bytes are a valid rusage; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Run {
    wall: Duration,
    cpu: Duration,
}

fn measure(f: impl FnOnce()) -> Run {
    let (cpu0, t0) = (cpu_time(), Instant::now());
    f();
    Run {
        wall: t0.elapsed(),
        cpu: cpu_time() - cpu0,
    }
}

fn select_one_tasks(pool: &ThreadPool, alias: &'static str, n: usize) -> Run {
    measure(|| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                pool.submit(move || {
                    fork_safe::with_client_for(alias, |c| c.simple_query("SELECT 1").map(drop))
                })
            })
            .collect();
        for task in tasks {
            task.join().unwrap().unwrap();
        }
    })
}

fn main() {
    let cluster = TempCluster::start().unwrap_or_else(|e| {
        eprintln!("cannot start PostgreSQL: {e}");
        std::process::exit(1);
    });
    let url = cluster.connection_string();
    fork_safe::configure([
        Database::new("persistent", &url)
            .unwrap()
            .max_age(MaxAge::Forever),
        Database::new("per_task", &url)
            .unwrap()
            .max_age(MaxAge::EndOfTask),
    ])
    .unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("fork_safe pool benchmark: {THREADS} worker threads, {cpus} CPUs, Unix-socket server");
    println!();

    let pool = ThreadPool::new(THREADS).unwrap();
    // Warm up: every worker opens its persistent connection.
    select_one_tasks(&pool, "persistent", THREADS * 10);

    let n_persistent = scaled(100_000);
    let persistent = select_one_tasks(&pool, "persistent", n_persistent);
    let n_per_task = scaled(2_000);
    let per_task = select_one_tasks(&pool, "per_task", n_per_task);
    let rate = |n: usize, run: &Run| n as f64 / run.wall.as_secs_f64();
    let (p, c) = (rate(n_persistent, &persistent), rate(n_per_task, &per_task));
    println!("SELECT 1 on an {THREADS}-thread pool");
    println!("  persistent connections     {p:>10.0} tasks/s  ({n_persistent} tasks)");
    println!("  connection per task (age 0){c:>10.0} tasks/s  ({n_per_task} tasks)");
    println!("  persistent / per-task      {:>10.1} x", p / c);
    println!();
    pool.shutdown(Duration::from_secs(30)).unwrap();

    // Pool overhead without a database.
    let n = scaled(1_000_000);
    let work = |i: usize| black_box(black_box(i).wrapping_mul(2_654_435_761));
    let inline = measure(|| {
        let per_thread = n / THREADS;
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    (t * per_thread..(t + 1) * per_thread).fold(0usize, |acc, i| acc ^ work(i))
                })
            })
            .collect();
        for t in threads {
            black_box(t.join().unwrap());
        }
    });
    let pool = ThreadPool::new(THREADS).unwrap();
    let submitted = measure(|| {
        let tasks: Vec<_> = (0..n).map(|i| pool.submit(move || work(i))).collect();
        for task in tasks {
            black_box(task.join().unwrap());
        }
    });
    let done = Arc::new(AtomicUsize::new(0));
    let executed = measure(|| {
        for i in 0..n {
            let done = done.clone();
            pool.execute(move || {
                black_box(work(i));
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        while done.load(Ordering::Relaxed) < n {
            std::thread::yield_now();
        }
    });
    pool.shutdown(Duration::from_secs(30)).unwrap();
    let n_spawn = scaled(20_000);
    let spawned = measure(|| {
        for i in 0..n_spawn {
            black_box(fork_safe::thread::spawn(move || work(i)).join().unwrap());
        }
    });

    let per = |run: &Run, n: usize| {
        (
            run.wall.as_nanos() as f64 / n as f64 / 1000.0,
            run.cpu.as_nanos() as f64 / n as f64 / 1000.0,
        )
    };
    let (iw, ic) = per(&inline, n);
    let (sw, sc) = per(&submitted, n);
    let (ew, ec) = per(&executed, n);
    let (pw, pc) = per(&spawned, n_spawn);
    println!("No database: {n} trivial tasks (µs per task: wall-clock, CPU)");
    println!("  plain threads, inline      {iw:>8.3} {ic:>8.3}");
    println!(
        "  pool.submit + join         {sw:>8.3} {sc:>8.3}   overhead {:.3} µs/task",
        sw - iw
    );
    println!(
        "  pool.execute               {ew:>8.3} {ec:>8.3}   overhead {:.3} µs/task",
        ew - iw
    );
    println!("  thread::spawn per task     {pw:>8.3} {pc:>8.3}   ({n_spawn} tasks)");
}
