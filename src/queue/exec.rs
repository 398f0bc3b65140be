//! The `--exec` handler: one program run per job, no shell.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Job;

/// Runs one job through an external program.
pub(super) fn run(argv: &[String], timeout: Option<Duration>, job: &Job) -> Result<String, String> {
    const OUTPUT_CAP: usize = 64 * 1024;
    const ERROR_TAIL: usize = 4 * 1024;
    let (program, args) = argv.split_first().ok_or("no program given")?;
    let mut child = Command::new(program)
        .args(args)
        .env("PREFORK_JOB_ID", job.id.to_string())
        .env("PREFORK_QUEUE", &job.queue)
        .env("PREFORK_ATTEMPT", job.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    // Feed stdin and drain stdout/stderr on their own threads, so a program
    // that writes before it reads cannot deadlock against us.
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let payload = job.payload.clone();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(payload.as_bytes());
    });
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout).take(OUTPUT_CAP as u64).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        buf
    });
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = timeout.map(|t| Instant::now() + t);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("timed out after {:?}", timeout.unwrap_or_default()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => break Err(format!("waiting for {program:?}: {e}")),
        }
    };
    let _ = feeder.join();
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let status = status?;
    if status.success() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        let tail = &err[err.len().saturating_sub(ERROR_TAIL)..];
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(tail).trim_end()
        ))
    }
}
