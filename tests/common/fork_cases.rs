//! The fork guard, and raw forks that bypass it, in real processes: the
//! cases `tests/fork.rs` runs over the Unix socket and `tests/tls.rs` over
//! TLS.
//!
//! Runs on the main thread only: each test forks from a single-threaded
//! process (the guard checks `/proc/self/task`).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{Ctx, Observer, Test, app_name, backend_pid};
use fork_safe::{Fork, ForkError};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// Every case, by name.
pub const CASES: &[Test] = &[
    (
        "guard_refuses_while_another_thread_holds_a_connection",
        refuses_open,
    ),
    ("guard_refuses_while_another_thread_exists", refuses_threads),
    (
        "guard_closes_the_callers_connections_and_forks",
        closes_callers,
    ),
    ("raw_fork_child_gets_its_own_backend", raw_fork_new_backend),
    (
        "raw_fork_child_dropping_the_registry_spares_the_parent",
        raw_fork_drop,
    ),
    (
        "raw_fork_child_lets_go_of_inherited_sockets",
        raw_fork_sockets,
    ),
];

/// Runs `body` in a forked child and `_exit`s with its result (101 on
/// panic), never returning into the test runner.
pub fn child(body: impl FnOnce() -> i32) -> ! {
    let code = panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(101);
    // SAFETY: _exit ends the process at once, skipping the parent's
    // atexit handlers and buffers, which belong to the parent's test run.
    unsafe { libc::_exit(code) }
}

pub fn exit_code(pid: Pid) -> i32 {
    match waitpid(pid, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child did not exit normally: {other:?}"),
    }
}

pub fn raw_fork() -> Option<Pid> {
    // SAFETY: the test process is single-threaded here (the runner uses the
    // main thread only, and every test joins its threads).
    match unsafe { libc::fork() } {
        -1 => panic!("fork failed: {}", std::io::Error::last_os_error()),
        0 => None,
        pid => Some(Pid::from_raw(pid)),
    }
}

/// In a child: the registry is clean and connects with the child's pid.
fn child_connects_fresh(parent_backend: Option<i32>) -> i32 {
    if fork_safe::stats().open != 0 {
        return 2;
    }
    let (pid, name): (i32, String) = match fork_safe::with_client(|c| {
        let row = c.query_one(
            "SELECT pg_backend_pid(), current_setting('application_name')",
            &[],
        )?;
        Ok((row.get(0), row.get(1)))
    }) {
        Ok(v) => v,
        Err(_) => return 3,
    };
    if Some(pid) == parent_backend {
        return 4;
    }
    if name != app_name("app", std::process::id()) {
        return 5;
    }
    fork_safe::close_all();
    0
}

fn refuses_open(_: &mut Ctx) {
    let (opened_tx, opened_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = fork_safe::thread::Builder::new()
        .name("holder".into())
        .spawn(move || {
            backend_pid("default");
            opened_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        })
        .unwrap();
    opened_rx.recv().unwrap();
    let err = fork_safe::fork().unwrap_err();
    assert!(
        matches!(err, ForkError::OpenConnections(ref s) if s.open == 1),
        "{err}"
    );
    assert!(err.to_string().contains("\"holder\""), "{err}");
    release_tx.send(()).unwrap();
    holder.join().unwrap();

    match fork_safe::fork().expect("fork after the holder closed") {
        Fork::Child => child(|| child_connects_fresh(None)),
        Fork::Parent(pid) => assert_eq!(exit_code(pid), 0),
    }
}

fn refuses_threads(_: &mut Ctx) {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let idle = std::thread::spawn(move || release_rx.recv().unwrap());
    let err = fork_safe::fork().unwrap_err();
    assert!(matches!(err, ForkError::Threads { count: 2 }), "{err}");
    assert!(fork_safe::ready_to_fork().is_err());
    release_tx.send(()).unwrap();
    idle.join().unwrap();
    fork_safe::ready_to_fork().expect("single-threaded again");
}

fn closes_callers(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let before = backend_pid("default");
    let err = fork_safe::ready_to_fork().unwrap_err();
    assert!(matches!(err, ForkError::OpenConnections(_)), "{err}");
    match fork_safe::fork().expect("the guard closes the caller's connection") {
        Fork::Child => child(|| child_connects_fresh(Some(before))),
        Fork::Parent(pid) => {
            assert_eq!(exit_code(pid), 0);
            assert_eq!(fork_safe::stats().open, 0);
            assert_ne!(
                backend_pid("default"),
                before,
                "the parent reconnected lazily"
            );
            fork_safe::close_all();
            assert_eq!(obs.wait_own(0), 0);
        }
    }
}

fn raw_fork_new_backend(_: &mut Ctx) {
    let before = backend_pid("default");
    match raw_fork() {
        None => child(|| child_connects_fresh(Some(before))),
        Some(pid) => {
            assert_eq!(exit_code(pid), 0);
            assert_eq!(
                backend_pid("default"),
                before,
                "the parent's session survived"
            );
            fork_safe::close_all();
        }
    }
}

fn raw_fork_drop(_: &mut Ctx) {
    let before = backend_pid("default");
    match raw_fork() {
        None => child(|| {
            // Everything a child could do to inherited state: none of it
            // may send Terminate on the parent's session.
            fork_safe::close_old();
            fork_safe::close_all();
            0
        }),
        Some(pid) => {
            assert_eq!(exit_code(pid), 0);
            let answer =
                fork_safe::with_client(|c| Ok(c.query_one("SELECT 41 + 1", &[])?.get::<_, i32>(0)));
            assert_eq!(answer.unwrap(), 42, "the parent's connection still answers");
            assert_eq!(backend_pid("default"), before);
            fork_safe::close_all();
        }
    }
}

/// B opens a connection, raw-forks C, and dies without closing. Because C's
/// copy of the socket was pointed at /dev/null, the server sees B's socket
/// close and ends the backend while C is still alive.
fn raw_fork_sockets(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe just returned these open descriptors, owned only here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let b = match raw_fork() {
        None => child(|| {
            drop(read_end);
            backend_pid("default");
            let c = match raw_fork() {
                None => child(|| {
                    std::thread::sleep(Duration::from_secs(30));
                    0
                }),
                Some(c) => c,
            };
            let mut pipe = std::fs::File::from(write_end);
            pipe.write_all(&c.as_raw().to_le_bytes()).unwrap();
            // Crash without closing: _exit skips every destructor.
            // SAFETY: ends this child process immediately.
            unsafe { libc::_exit(0) }
        }),
        Some(b) => b,
    };
    drop(write_end);
    let mut buf = [0u8; 4];
    std::fs::File::from(read_end).read_exact(&mut buf).unwrap();
    let c = Pid::from_raw(i32::from_le_bytes(buf));
    assert_eq!(exit_code(b), 0);

    let b_name = app_name("app", b.as_raw() as u32);
    let left = obs.wait_for(&b_name, 0);
    let c_alive = kill(c, None).is_ok();
    let _ = kill(c, Signal::SIGKILL);
    // C was re-parented to init (or a subreaper), which reaps it.
    assert!(
        c_alive,
        "the grandchild should still be alive during the check"
    );
    assert_eq!(
        left, 0,
        "the crashed parent's backend lingers while its child lives"
    );
}
