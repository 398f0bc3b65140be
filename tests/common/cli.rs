//! Helpers for tests that drive the `prefork` binary (needs the `cli`
//! feature, so only those test binaries include this module).

#![allow(dead_code)]

use std::io::{Read, Write};
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
/// dropping it kills the master and its children.
pub struct Master(Child);

impl Master {
    pub fn start(url: &str, args: &[&str]) -> Master {
        let child = prefork(url, args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running prefork");
        Master(child)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }

    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    /// Waits for the master to exit by itself; returns its exit code and
    /// standard error.
    pub fn wait(&mut self, within: Duration) -> (i32, String) {
        let deadline = Instant::now() + within;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "the master did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.0.wait().unwrap();
        let mut err = String::new();
        if let Some(mut stderr) = self.0.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        (status.code().unwrap_or(-1), err)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.running() {
            for child in children(self.pid()) {
                let _ = kill(child, Signal::SIGKILL);
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
