//! Threads that close their connections when they end, and the hazards of
//! threads that do not.

mod common;

use std::cell::RefCell;
use std::os::unix::process::ExitStatusExt;

use common::{Ctx, Observer, backend_pid};

fn main() {
    common::main(
        fork_safe::cluster::Builder::new(),
        common::configure_default,
        &[
            ("thousand_threads_one_after_another", thousand_sequential),
            ("thousand_threads_32_at_a_time", thousand_concurrent),
            ("panicking_thread_closes_its_connection", panicking_thread),
            ("close_on_exit_guard_in_a_scoped_thread", scoped_guard),
            (
                "plain_threads_leave_connections_until_reaped",
                plain_threads,
            ),
            (
                "naive_thread_local_client_aborts_or_leaks",
                naive_thread_local,
            ),
        ],
        &[
            ("naive_tls", naive_tls_child),
            ("wrapped_tls", wrapped_tls_child),
        ],
    )
}

fn query_once() {
    backend_pid("default");
}

fn thousand_sequential(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    for _ in 0..1000 {
        fork_safe::thread::spawn(query_once).join().unwrap();
        assert_eq!(
            fork_safe::stats().open,
            0,
            "a finished thread left a connection"
        );
    }
    assert_eq!(obs.wait_own(0), 0, "backends left after 1,000 threads");
}

fn thousand_concurrent(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let (mut peak, mut peak_backends, mut samples) = (0, 0, 0);
    for _ in 0..(1000 / 32 + 1) {
        let batch: Vec<_> = (0..32)
            .map(|_| fork_safe::thread::spawn(query_once))
            .collect();
        // Sampled until every thread of the batch has finished: the
        // registry's count and the server's.
        loop {
            let done = batch.iter().all(|t| t.is_finished());
            peak = peak.max(fork_safe::stats().open);
            peak_backends = peak_backends.max(obs.own());
            samples += 1;
            if done {
                break;
            }
        }
        for t in batch {
            t.join().unwrap();
        }
        assert_eq!(fork_safe::stats().open, 0);
    }
    assert!(peak <= 32, "more connections than threads: {peak}");
    assert!(
        peak_backends <= 32,
        "more backends than threads: {peak_backends}"
    );
    eprintln!("    peak {peak} connections, {peak_backends} backends over {samples} samples");
    assert_eq!(obs.wait_own(0), 0, "backends left after 32-wide batches");
}

fn panicking_thread(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let outcome = fork_safe::thread::spawn(|| {
        query_once();
        panic!("boom after a query");
    })
    .join();
    assert!(outcome.is_err());
    assert_eq!(fork_safe::stats().open, 0);
    assert_eq!(obs.wait_own(0), 0);
}

fn scoped_guard(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let _close = fork_safe::thread::CloseOnExit::new();
                query_once();
            });
        }
    });
    assert_eq!(fork_safe::stats().open, 0);
    assert_eq!(obs.wait_own(0), 0);
}

/// Threads that are not wrapped: their connections cannot be closed by a
/// thread-local destructor (that would abort), so they stay open, adopted by
/// the registry, until any thread's close_all/close_old reaps them.
fn plain_threads(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    for _ in 0..50 {
        std::thread::spawn(query_once).join().unwrap();
    }
    let stats = fork_safe::stats();
    assert_eq!(stats.open, 50);
    assert_eq!(stats.orphaned, 50);
    assert_eq!(
        obs.own(),
        50,
        "the server still holds the ended threads' backends"
    );
    fork_safe::close_old();
    assert_eq!(fork_safe::stats().open, 0);
    assert_eq!(obs.wait_own(0), 0, "reaped by the next close_old");
}

/// The hazard the crate exists for: a thread keeping its `Client` in its own
/// `thread_local!`. When the thread ends, the TLS destructor drops the
/// client after tokio's context is gone: the process aborts (or, if it did
/// not, the connection would stay open). Run in a child process.
fn naive_thread_local(ctx: &mut Ctx) {
    let status = common::run_child("naive_tls", &ctx.url);
    eprintln!("    naive thread-local client: {status}");
    let aborted = status.signal() == Some(libc::SIGABRT);
    let leaked = status.code() == Some(1);
    assert!(
        aborted || leaked,
        "expected an abort or a leak, got {status}"
    );

    let status = common::run_child("wrapped_tls", &ctx.url);
    assert_eq!(status.code(), Some(0), "the fork_safe equivalent: {status}");
}

fn naive_tls_child(url: &str) -> i32 {
    thread_local! {
        static CLIENT: RefCell<Option<postgres::Client>> = const { RefCell::new(None) };
    }
    let name = format!("naive:{}", std::process::id());
    let conn = format!("{url} application_name={name}");
    std::thread::spawn(move || {
        // The usual lazy pattern: look in the slot, connect if empty. The
        // slot's destructor is registered before tokio's context exists, so
        // it runs after tokio's context is destroyed.
        CLIENT.with(|c| {
            let mut c = c.borrow_mut();
            let client =
                c.get_or_insert_with(|| postgres::Client::connect(&conn, postgres::NoTls).unwrap());
            client.execute("SELECT 1", &[]).unwrap();
        });
    })
    .join()
    .unwrap();
    // Only reached if the thread's exit did not abort the process.
    let mut obs = Observer::new(url);
    if obs.wait_for(&name, 0) == 0 { 0 } else { 1 }
}

fn wrapped_tls_child(url: &str) -> i32 {
    fork_safe::thread::spawn(query_once).join().unwrap();
    let mut obs = Observer::new(url);
    if obs.wait_own(0) == 0 { 0 } else { 1 }
}
