//! Helpers for tests that drive the `prefork` binary (needs the `cli`
//! feature, so only those test binaries include this module).

#![allow(dead_code)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Observer;

pub const BIN: &str = env!("CARGO_BIN_EXE_prefork");

/// `prefork ARGS` against `url`, quiet unless something goes wrong.
pub fn prefork(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env_remove("PGHOST")
        .env_remove("PGDATABASE");
    cmd
}

/// Drops the queue schema and recreates an empty `effects` table.
pub fn reset(url: &str) -> Observer {
    let mut obs = Observer::new(url);
    obs.client()
        .batch_execute(
            "DROP SCHEMA IF EXISTS prefork CASCADE;
             DROP TABLE IF EXISTS effects;
             CREATE TABLE effects (v int NOT NULL)",
        )
        .unwrap();
    obs
}

/// `prefork enqueue [extra] -` with `lines` on its standard input.
pub fn enqueue_lines(url: &str, lines: &str, extra: &[&str]) {
    let mut args = vec!["enqueue"];
    args.extend_from_slice(extra);
    args.push("-");
    let mut child = prefork(url, &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "enqueue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn count(obs: &mut Observer, sql: &str) -> i64 {
    obs.client().query_one(sql, &[]).unwrap().get(0)
}

/// The first child process of `parent`, if any.
pub fn first_child(parent: Pid) -> Option<Pid> {
    children(parent).into_iter().next()
}

fn children(parent: Pid) -> Vec<Pid> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// A running `prefork` master that a failing test must not leave behind:
/// dropping it kills the master and its children. Its standard error is
/// read as it comes (a full pipe would block the fleet's logging).
pub struct Master {
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Master {
    pub fn start(url: &str, args: &[&str]) -> Master {
        Master::spawn(prefork(url, args))
    }

    /// A master started by `command` (`prefork` itself, or a wrapper that
    /// execs it, such as `ip netns exec`).
    pub fn spawn(mut command: Command) -> Master {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running prefork");
        let mut pipe = child.stderr.take().expect("piped");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = seen.clone();
        let stderr = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut pipe, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            sink.lock().unwrap().clone()
        });
        Master {
            child,
            stderr: Some(stderr),
            seen,
        }
    }

    /// What the master wrote to its standard error so far.
    pub fn stderr_so_far(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the master to exit by itself; returns its exit code and
    /// standard error.
    pub fn wait(&mut self, within: Duration) -> (i32, String) {
        let deadline = Instant::now() + within;
        while self.running() {
            if Instant::now() >= deadline {
                let seen = self.seen.lock().unwrap().clone();
                let tail: Vec<&str> = seen.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "the master did not exit in {within:?}; its stderr ends:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait().unwrap();
        // The children may hold the pipe a moment longer than the master;
        // a stray one holding it for good must not hang the test.
        let reader = self.stderr.take().expect("waited once");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = if reader.is_finished() {
            reader.join().unwrap_or_default()
        } else {
            self.seen.lock().unwrap().clone()
        };
        (status.code().unwrap_or(-1), err)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.running() {
            for child in children(self.pid()) {
                let _ = kill(child, Signal::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every job done, each effect exactly once.
pub fn assert_all_done_once(obs: &mut Observer, n: i64) {
    assert_eq!(
        count(
            obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'"
        ),
        n
    );
    assert_eq!(
        count(obs, "SELECT count(*) FROM effects"),
        n,
        "effects != jobs"
    );
    assert_eq!(
        count(obs, "SELECT count(DISTINCT v) FROM effects"),
        n,
        "a job ran twice"
    );
}
