//! The fork guard in a program that forks on its own.
//!
//! The parent uses the database, then forks three children through
//! `fork_safe::fork()`: the guard closes the parent's connection first (and
//! would refuse if another thread or connection were open). Each child
//! connects lazily with its own pid in `application_name`.
//!
//! `cargo run --example fork_guard` uses `DATABASE_URL` if set, otherwise a
//! throwaway cluster.

use fork_safe::cluster::TempCluster;
use fork_safe::{Database, Fork};
use nix::sys::wait::waitpid;

fn backend() -> Result<(i32, String), fork_safe::Error> {
    fork_safe::with_client(|c| {
        let row = c.query_one(
            "SELECT pg_backend_pid(), current_setting('application_name')",
            &[],
        )?;
        Ok((row.get(0), row.get(1)))
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("fork_guard: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (_cluster, url) = match std::env::var("DATABASE_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let cluster = TempCluster::start()?;
            let url = cluster.connection_string();
            (Some(cluster), url)
        }
    };
    fork_safe::configure([Database::new("default", &url)?])?;

    let (pid, name) = backend()?;
    println!("parent {}: backend {pid} as {name}", std::process::id());

    // A thread that is still running makes the guard refuse.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let helper = fork_safe::thread::spawn(move || rx.recv());
    match fork_safe::fork() {
        Err(e) => println!("guard: {e}"),
        Ok(_) => unreachable!("the guard must refuse while a thread runs"),
    }
    drop(tx);
    let _ = helper.join();

    let mut children = Vec::new();
    for _ in 0..3 {
        match fork_safe::fork()? {
            Fork::Child => {
                let code = match backend() {
                    Ok((pid, name)) => {
                        println!("child {}: backend {pid} as {name}", std::process::id());
                        0
                    }
                    Err(e) => {
                        eprintln!("child: {e}");
                        1
                    }
                };
                fork_safe::close_all();
                // exit() skips destructors; the cluster's drop would be a
                // no-op here anyway (it belongs to the parent's pid).
                std::process::exit(code);
            }
            Fork::Parent(child) => children.push(child),
        }
    }
    for child in children {
        println!("{:?}", waitpid(child, None)?);
    }
    let (pid, _) = backend()?;
    println!("parent reconnected lazily: backend {pid}");
    fork_safe::close_all();
    Ok(())
}
