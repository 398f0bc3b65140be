//! Running the server out of connection slots: a clear error with SQLSTATE
//! 53300, no panic, and recovery once a slot frees up.

mod common;

use std::sync::mpsc;
use std::thread::JoinHandle;

use common::{Ctx, Observer};
use fork_safe::{Database, Error, MaxAge};

fn app_url(url: &str) -> String {
    url.replace("user=postgres", "user=app")
}

fn configure(url: &str) {
    fork_safe::configure([Database::new("default", &app_url(url))
        .unwrap()
        .max_age(MaxAge::Forever)])
    .unwrap();
}

fn main() {
    common::main(
        // 6 slots, 3 of them reserved for superusers: an ordinary role gets
        // "remaining connection slots are reserved" (53300) early.
        fork_safe::cluster::Builder::new().max_connections(6),
        configure,
        &[("exhausted_slots_give_53300_then_recover", exhausted)],
        &[],
    )
}

/// A thread that connects and, if that worked, holds the connection until
/// released.
struct Holder {
    release: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

fn try_hold() -> Result<Holder, Error> {
    let (result_tx, result_rx) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let thread = fork_safe::thread::spawn(move || {
        let outcome = fork_safe::with_client(|c| c.execute("SELECT 1", &[]));
        let ok = outcome.is_ok();
        result_tx.send(outcome).unwrap();
        if ok {
            let _ = release_rx.recv();
        }
    });
    match result_rx.recv().unwrap() {
        Ok(_) => Ok(Holder { release, thread }),
        Err(e) => {
            thread.join().unwrap();
            Err(e)
        }
    }
}

fn exhausted(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    obs.client().batch_execute("CREATE ROLE app LOGIN").unwrap();

    let mut holders = Vec::new();
    let err = loop {
        match try_hold() {
            Ok(holder) => holders.push(holder),
            Err(e) => break e,
        }
        assert!(holders.len() < 10, "the server never ran out of slots");
    };
    eprintln!("    after {} connections: {err}", holders.len());
    assert!(!holders.is_empty());
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err}");
    let text = err.to_string();
    assert!(text.contains("SQLSTATE 53300"), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert_eq!(
        fork_safe::stats().open,
        holders.len(),
        "the failed attempt left nothing open"
    );

    // Free one slot: the next attempt works.
    let freed = holders.pop().unwrap();
    freed.release.send(()).unwrap();
    freed.thread.join().unwrap();
    let app = format!("prefork:app:{}", std::process::id());
    obs.wait_for(&app, holders.len() as i64);
    let again = try_hold().expect("a freed slot is usable again");
    holders.push(again);

    for holder in holders {
        holder.release.send(()).unwrap();
        holder.thread.join().unwrap();
    }
    assert_eq!(obs.wait_for(&app, 0), 0);
}
