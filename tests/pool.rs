//! The close-on-exit thread pool against a real server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Ctx, Observer, backend_pid};
use fork_safe::{Database, MaxAge, ThreadPool};
use fork_safe::{ShutdownTimeout, TaskError};

fn configure(url: &str) {
    fork_safe::configure([
        Database::new("default", url)
            .unwrap()
            .max_age(MaxAge::Forever),
        Database::new("per_task", url)
            .unwrap()
            .max_age(MaxAge::EndOfTask),
        Database::new("idle", url)
            .unwrap()
            .max_age(MaxAge::Forever)
            .max_idle(Some(Duration::from_millis(100))),
    ])
    .unwrap();
}

fn main() {
    common::main(
        fork_safe::cluster::Builder::new(),
        configure,
        &[
            ("ten_thousand_tasks_never_exceed_eight_backends", bounded),
            ("end_of_task_returns_to_zero_between_tasks", end_of_task),
            ("panic_in_transaction_is_rolled_back", panic_in_transaction),
            (
                "panic_after_raw_begin_is_rolled_back",
                panic_after_raw_begin,
            ),
            ("failed_task_result_is_reported", task_error_result),
            ("idle_workers_close_idled_out_connections", idle_workers),
            ("shutdown_times_out_on_a_stuck_task", shutdown_timeout),
            ("drop_runs_queued_tasks_and_joins", drop_joins),
        ],
        &[],
    )
}

/// Samples the process's backends (server side) and open connections
/// (registry) on a helper thread until stopped; returns both peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(i64, usize, usize)>,
}

impl Sampler {
    fn start(url: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let mut obs = Observer::new(url);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut server, mut registry, mut samples) = (0, 0, 0);
            while !flag.load(Ordering::Relaxed) {
                server = server.max(obs.own());
                registry = registry.max(fork_safe::stats().open);
                samples += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (server, registry, samples)
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> (i64, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn bounded(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let pool = ThreadPool::new(8).unwrap();
    let sampler = Sampler::start(&ctx.url);
    let tasks: Vec<_> = (0..10_000)
        .map(|i: i32| {
            pool.submit(move || {
                fork_safe::with_client(|c| {
                    Ok(c.query_one("SELECT $1::int4", &[&i])?.get::<_, i32>(0))
                })
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.join().unwrap().unwrap(), i as i32);
    }
    let (server, registry, samples) = sampler.finish();
    eprintln!("    peak backends {server}, peak registry {registry}, {samples} samples");
    assert!(samples > 10, "too few samples to mean anything");
    assert!(server <= 8, "backends exceeded the pool size: {server}");
    assert!(
        registry <= 8,
        "open connections exceeded the pool size: {registry}"
    );
    assert!(server >= 1);
    pool.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(fork_safe::stats().open, 0);
    assert_eq!(obs.wait_own(0), 0, "backends left after shutdown");
}

fn end_of_task(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let pool = ThreadPool::new(8).unwrap();
    let sampler = Sampler::start(&ctx.url);
    for _ in 0..25 {
        let batch: Vec<_> = (0..8)
            .map(|_| pool.submit(|| backend_pid("per_task")))
            .collect();
        let pids: Vec<i32> = batch.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(pids.len(), 8);
        // Between tasks: every connection closed again.
        assert_eq!(obs.wait_own(0), 0, "backends left between tasks");
    }
    let (_, registry, _) = sampler.finish();
    assert!(
        registry <= 8,
        "open connections exceeded the pool size: {registry}"
    );
    pool.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(obs.wait_own(0), 0);
}

/// Runs `panicking` then a probe on a one-worker pool (so both run on the
/// same worker) and checks the worker survived with a clean connection.
fn survives_panic(ctx: &Ctx, panicking: fn()) {
    let mut obs = Observer::new(&ctx.url);
    fork_safe::with_client(|c| c.batch_execute("CREATE TABLE IF NOT EXISTS t (x int)")).unwrap();
    fork_safe::close_all();
    let pool = ThreadPool::new(1).unwrap();
    let before = pool.submit(|| backend_pid("default")).join().unwrap();
    let outcome = pool.submit(panicking).join();
    assert_eq!(
        outcome,
        Err(TaskError::Panicked("boom inside a transaction".into()))
    );
    // The result is delivered before the worker's close_old() runs, so
    // give the rollback a moment; it must happen without any further task.
    let in_transaction = |obs: &mut Observer| {
        obs.states()
            .iter()
            .any(|s| s.starts_with("idle in transaction"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while in_transaction(&mut obs) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !in_transaction(&mut obs),
        "a backend was left idle in transaction: {:?}",
        obs.states()
    );
    let after = pool.submit(|| {
        let pid = backend_pid("default");
        let rows: i64 =
            fork_safe::with_client(|c| Ok(c.query_one("SELECT count(*) FROM t", &[])?.get(0)))
                .unwrap();
        (pid, rows)
    });
    let (pid, rows) = after.join().unwrap();
    assert_eq!(pid, before, "the worker kept its connection");
    assert_eq!(rows, 0, "the panicked task's insert was rolled back");
    pool.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(obs.wait_own(0), 0);
}

fn panic_in_transaction(ctx: &mut Ctx) {
    survives_panic(ctx, || {
        let _: Result<(), _> = fork_safe::with_client(|c| {
            let mut tx = c.transaction()?;
            tx.execute("INSERT INTO t VALUES (1)", &[])?;
            panic!("boom inside a transaction");
        });
    });
}

fn panic_after_raw_begin(ctx: &mut Ctx) {
    survives_panic(ctx, || {
        let _: Result<(), _> = fork_safe::with_client(|c| {
            c.batch_execute("BEGIN; INSERT INTO t VALUES (1)")?;
            panic!("boom inside a transaction");
        });
    });
}

fn task_error_result(_: &mut Ctx) {
    let pool = ThreadPool::new(2).unwrap();
    let failing = pool.submit(|| fork_safe::with_client(|c| c.execute("SELEC 1", &[])));
    let err = failing.join().unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{err}");
    let ok = pool.submit(|| backend_pid("default"));
    assert!(ok.join().unwrap() > 0);
    pool.shutdown(Duration::from_secs(10)).unwrap();
}

fn idle_workers(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let pool = ThreadPool::builder()
        .threads(2)
        .idle_check(Duration::from_millis(20))
        .build()
        .unwrap();
    pool.submit(|| backend_pid("idle")).join().unwrap();
    // No further task: the idle worker wakes up and closes it.
    assert_eq!(
        obs.wait_own(0),
        0,
        "an idle worker kept an idled-out connection"
    );
    assert_eq!(fork_safe::stats().open, 0);
    drop(pool);
}

fn shutdown_timeout(_: &mut Ctx) {
    let pool = ThreadPool::new(2).unwrap();
    let (started, running) = std::sync::mpsc::channel();
    let slow = pool.submit(move || {
        started.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    });
    running.recv().unwrap(); // the task is under way
    let err = pool.shutdown(Duration::from_millis(100)).unwrap_err();
    assert_eq!(err, ShutdownTimeout { running: 1 });
    slow.join().unwrap(); // the detached worker still finishes its task
}

fn drop_joins(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let pool = ThreadPool::new(3).unwrap();
        for _ in 0..30 {
            let done = done.clone();
            pool.execute(move || {
                backend_pid("default");
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
    }
    assert_eq!(
        done.load(Ordering::Relaxed),
        30,
        "drop ran every queued task"
    );
    assert_eq!(fork_safe::stats().open, 0);
    assert_eq!(obs.wait_own(0), 0);
}
