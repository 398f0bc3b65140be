//! The connection registry against a real server: laziness, lifetime rules,
//! error handling, and recovery from killed sessions and server restarts.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::{Ctx, Observer, backend_pid};
use fork_safe::{Database, Error, MaxAge};

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
            .max_idle(Some(Duration::from_millis(200))),
        Database::new("aged", url)
            .unwrap()
            .max_age(MaxAge::After(Duration::from_millis(300))),
        Database::new("checked", url)
            .unwrap()
            .max_age(MaxAge::Forever)
            .health_checks(true),
    ])
    .unwrap();
}

fn main() {
    common::main(
        fork_safe::cluster::Builder::new(),
        configure,
        &[
            ("thread_that_never_queries_opens_nothing", never_queries),
            (
                "first_query_opens_exactly_one_and_reuses_it",
                first_query_opens_one,
            ),
            ("end_of_task_closes_at_every_boundary", end_of_task),
            ("idle_and_age_limits_close_at_the_boundary", idle_and_age),
            ("statement_error_keeps_connection", statement_error),
            ("open_transaction_rolled_back_at_boundary", open_transaction),
            ("reentrant_use_is_an_error", reentrant),
            ("unknown_alias_is_an_error", unknown_alias),
            ("reconfigure_refused_while_open", reconfigure_busy),
            ("application_name_names_role_and_pid", application_name),
            ("stats_count_per_alias_and_thread", stats),
            (
                "terminated_backend_with_and_without_health_checks",
                terminated,
            ),
            ("server_restart_with_and_without_health_checks", restart),
        ],
        &[],
    )
}

fn never_queries(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let thread = fork_safe::thread::spawn(move || {
        started_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    started_rx.recv().unwrap();
    assert_eq!(obs.own(), 0, "an idle thread opened a backend");
    assert_eq!(fork_safe::stats().open, 0);
    go_tx.send(()).unwrap();
    thread.join().unwrap();
    assert_eq!(obs.own(), 0);
}

fn first_query_opens_one(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    assert_eq!(obs.own(), 0);
    let first = backend_pid("default");
    assert_eq!(obs.own(), 1);
    assert_eq!(backend_pid("default"), first, "a second query must reuse");
    fork_safe::close_old();
    assert_eq!(
        backend_pid("default"),
        first,
        "max_age forever survives a boundary"
    );
    assert_eq!(obs.own(), 1);
    fork_safe::close_all();
    assert_eq!(obs.wait_own(0), 0);
    assert_eq!(fork_safe::stats().open, 0);
}

fn end_of_task(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let a = backend_pid("per_task");
    assert_eq!(backend_pid("per_task"), a, "reused within a task");
    fork_safe::close_old();
    assert_eq!(obs.wait_own(0), 0, "closed at the boundary");
    assert_ne!(
        backend_pid("per_task"),
        a,
        "a new task gets a new connection"
    );
    fork_safe::close_old();
    assert_eq!(obs.wait_own(0), 0);
}

fn idle_and_age(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let idle = backend_pid("idle");
    let aged = backend_pid("aged");
    fork_safe::close_old();
    assert_eq!(
        obs.own(),
        2,
        "young and fresh connections survive a boundary"
    );
    assert_eq!(backend_pid("idle"), idle);
    assert_eq!(backend_pid("aged"), aged);
    std::thread::sleep(Duration::from_millis(350));
    fork_safe::close_old();
    assert_eq!(
        obs.wait_own(0),
        0,
        "idle and old connections close at the boundary"
    );
    // Past the limits at the first use after a boundary: reconnects.
    let idle2 = backend_pid("idle");
    assert_ne!(idle2, idle);
    fork_safe::close_old();
    std::thread::sleep(Duration::from_millis(250));
    assert_ne!(backend_pid("idle"), idle2, "idled out before its next use");
    fork_safe::close_all();
}

fn statement_error(_: &mut Ctx) {
    let before = backend_pid("default");
    let err =
        fork_safe::with_client(|c| c.execute("SELECT * FROM no_such_table", &[])).unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"), "{err}");
    assert!(
        matches!(
            err,
            Error::Query {
                discarded: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no_such_table"), "{err}");
    assert_eq!(
        backend_pid("default"),
        before,
        "an ordinary error keeps the connection"
    );
    fork_safe::close_old();
    assert_eq!(backend_pid("default"), before);
    fork_safe::close_all();
}

fn open_transaction(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let before = backend_pid("default");
    // A raw BEGIN the closure never ends, then a failing statement.
    let err = fork_safe::with_client(|c| {
        c.batch_execute("BEGIN; CREATE TEMP TABLE t(x int)")?;
        c.batch_execute("SELECT 1/0")
    })
    .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    assert_eq!(obs.states(), ["idle in transaction (aborted)"]);
    fork_safe::close_old();
    assert_eq!(
        obs.states(),
        ["idle"],
        "the boundary rolled the transaction back"
    );
    assert_eq!(backend_pid("default"), before, "and kept the connection");
    let exists: bool = fork_safe::with_client(|c| {
        Ok(
            c.query_one("SELECT to_regclass('pg_temp.t') IS NOT NULL", &[])?
                .get(0),
        )
    })
    .unwrap();
    assert!(!exists, "the transaction's work was rolled back");
    fork_safe::close_all();
}

fn reentrant(_: &mut Ctx) {
    let outcome = fork_safe::with_client(|_| {
        let inner = fork_safe::with_client(|c| c.execute("SELECT 1", &[]));
        assert!(matches!(inner, Err(Error::Reentrant(ref a)) if a == "default"));
        // Another alias is another connection: fine.
        let other = fork_safe::with_client_for("checked", |c| c.execute("SELECT 1", &[]));
        assert!(other.is_ok());
        Ok(())
    });
    assert!(outcome.is_ok());
    // The connection came back to the slot.
    assert!(fork_safe::with_client(|c| c.execute("SELECT 1", &[])).is_ok());
    fork_safe::close_all();
}

fn unknown_alias(_: &mut Ctx) {
    let err = fork_safe::with_client_for("nope", |c| c.execute("SELECT 1", &[])).unwrap_err();
    assert!(matches!(err, Error::UnknownAlias(ref a) if a == "nope"));
    assert_eq!(err.to_string(), "no database is configured as \"nope\"");
}

fn reconfigure_busy(ctx: &mut Ctx) {
    backend_pid("default");
    let err = fork_safe::configure([Database::new("default", &ctx.url).unwrap()]).unwrap_err();
    assert!(matches!(err, Error::Busy { open: 1 }), "{err}");
    let dup = fork_safe::configure([
        Database::new("a", &ctx.url).unwrap(),
        Database::new("a", &ctx.url).unwrap(),
    ])
    .unwrap_err();
    assert!(matches!(dup, Error::Config { .. }), "{dup}");
    fork_safe::close_all();
    configure(&ctx.url); // allowed again once nothing is open
}

fn application_name(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let name: String = fork_safe::with_client(|c| {
        Ok(
            c.query_one("SELECT current_setting('application_name')", &[])?
                .get(0),
        )
    })
    .unwrap();
    assert_eq!(name, format!("prefork:app:{}", std::process::id()));
    fork_safe::close_all();
    fork_safe::set_role("worker");
    backend_pid("default");
    assert_eq!(
        obs.backends(&common::app_name("worker", std::process::id())),
        1
    );
    fork_safe::close_all();
    fork_safe::set_role("app");
}

fn stats(_: &mut Ctx) {
    backend_pid("default");
    backend_pid("checked");
    let handle = fork_safe::thread::Builder::new()
        .name("stats-helper".into())
        .spawn(|| {
            backend_pid("default");
            fork_safe::stats()
        })
        .unwrap();
    let during = handle.join().unwrap();
    assert_eq!(during.open, 3);
    assert_eq!(during.by_alias[0], ("default".to_owned(), 2));
    let helper = during
        .by_thread
        .iter()
        .find(|t| t.name.as_deref() == Some("stats-helper"))
        .expect("the helper thread is listed");
    assert_eq!(helper.open, 1);
    assert_eq!(
        fork_safe::stats().open,
        2,
        "the helper closed its connection on exit"
    );
    assert_eq!(fork_safe::thread_open_count(), 2);
    fork_safe::close_all();
    assert_eq!(fork_safe::stats().open, 0);
}

fn kill_own_backends(obs: &mut Observer) {
    let name = common::app_name("app", std::process::id());
    obs.client()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .unwrap();
    assert_eq!(obs.wait_own(0), 0);
}

/// With health checks the next task reconnects silently; without, the first
/// use fails clearly (and discards) and the one after reconnects.
fn check_recovery(checked_before: i32, plain_before: i32) {
    fork_safe::close_old(); // a task boundary
    let checked_after = backend_pid("checked");
    assert_ne!(
        checked_after, checked_before,
        "health check replaced the connection"
    );

    let err = fork_safe::with_client(|c| c.execute("SELECT 1", &[])).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Query {
                discarded: true,
                ..
            }
        ),
        "{err}"
    );
    eprintln!("    first use after the loss: {err}");
    assert_ne!(
        backend_pid("default"),
        plain_before,
        "the next use reconnected"
    );
    fork_safe::close_all();
}

fn terminated(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let checked = backend_pid("checked");
    let plain = backend_pid("default");
    fork_safe::close_old();
    kill_own_backends(&mut obs);
    check_recovery(checked, plain);
}

fn restart(ctx: &mut Ctx) {
    let checked = backend_pid("checked");
    let plain = backend_pid("default");
    fork_safe::close_old();
    ctx.restart_server();
    check_recovery(checked, plain);
    let mut obs = Observer::new(&ctx.url);
    assert_eq!(obs.wait_own(0), 0);
}
