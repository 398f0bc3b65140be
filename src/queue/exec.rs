//! The `--exec` handler: one program run per job, no shell.
//!
//! # The program's start
//!
//! Each program starts as a new process group, with the default signal
//! dispositions and an empty signal mask (a child blocks TERM and QUIT and
//! ignores the master's other signals; a program must not inherit that, or
//! `kill -TERM` would do nothing to it), with standard input, output and
//! error and no other descriptor (anything else the launcher inherited
//! from its caller is closed at `exec`), and dies with the worker thread
//! that started it (`PR_SET_PDEATHSIG`).
//!
//! # Its end
//!
//! The worker waits for the program's exit on a pidfd, with `--timeout` as
//! the deadline, without polling. Past the deadline the program's group is
//! sent TERM, then KILL after [`kill_grace`]; the job fails with "timed out
//! after ...". This is the worker's half of the rule in
//! [`Prefork::timeout`](crate::prefork::Prefork::timeout): the grace is at
//! most half the timeout, so the program is gone and the outcome recorded
//! well before the master would kill the whole child. Once the program has
//! exited, whatever is left of its group is killed, so a background process
//! that kept its standard output open cannot hold the job.

use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};

use super::Job;
use crate::Pid;

/// What of standard output is kept as the job's result.
const OUTPUT_CAP: usize = 64 * 1024;
/// What of standard error is kept for a failed attempt's error.
const ERROR_TAIL: usize = 4 * 1024;

/// How long a program sent TERM at its timeout has before KILL: half the
/// timeout, at most 5 seconds.
pub(super) fn kill_grace(timeout: Duration) -> Duration {
    (timeout / 2).min(Duration::from_secs(5))
}

/// Runs one job through an external program.
pub(super) fn run(argv: &[String], timeout: Option<Duration>, job: &Job) -> Result<String, String> {
    let (program, args) = argv.split_first().ok_or("no program given")?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("PREFORK_JOB_ID", job.id.to_string())
        .env("PREFORK_QUEUE", &job.queue)
        .env("PREFORK_ATTEMPT", job.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let parent = Pid::this();
    // SAFETY: `prepare` runs in the forked process before exec and makes
    // only async-signal-safe system calls; it allocates nothing and takes
    // no lock.
    unsafe { command.pre_exec(move || prepare(parent)) };
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {program:?}: {e}"))?;
    let group = Pid::from_raw(child.id() as i32);
    let outcome = supervise(&mut child, group, timeout, job, program);
    // Whatever is left of the group (a background process holding the
    // pipes) goes with the program.
    let _ = killpg(group, Signal::SIGKILL);
    outcome
}

/// Feeds the payload, collects the output, and waits for the program.
fn supervise(
    child: &mut Child,
    group: Pid,
    timeout: Option<Duration>,
    job: &Job,
    program: &str,
) -> Result<String, String> {
    // Feed stdin and drain stdout/stderr on their own threads, so a program
    // that writes before it reads cannot deadlock against us.
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let payload = job.payload.clone();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(payload.as_bytes());
    });
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let out = std::thread::spawn(move || head(stdout, OUTPUT_CAP));
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let err = std::thread::spawn(move || tail(stderr, ERROR_TAIL));

    let exited = wait(child, group, timeout, program);
    // The readers end once the group is gone and the pipes close.
    let _ = killpg(group, Signal::SIGKILL);
    let _ = feeder.join();
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let status = exited?;
    if status.success() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&err).trim_end()
        ))
    }
}

/// Waits for the program to exit, stopping its group past `timeout`.
fn wait(
    child: &mut Child,
    group: Pid,
    timeout: Option<Duration>,
    program: &str,
) -> Result<std::process::ExitStatus, String> {
    let waited = |child: &mut Child| {
        child
            .wait()
            .map_err(|e| format!("waiting for {program:?}: {e}"))
    };
    let Some(timeout) = timeout else {
        return waited(child);
    };
    let pidfd = match pidfd(group) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = child.wait();
            return Err(format!("cannot watch {program:?}: {e}"));
        }
    };
    if exits_within(&pidfd, timeout) {
        return waited(child);
    }
    let _ = killpg(group, Signal::SIGTERM);
    if !exits_within(&pidfd, kill_grace(timeout)) {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.wait();
    Err(format!("timed out after {timeout:?}"))
}

/// Whether the process behind `pidfd` exits within `limit` (a pidfd turns
/// readable when its process exits).
fn exits_within(pidfd: &OwnedFd, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let millis = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, millis) {
            Ok(0) if left.is_zero() => return false,
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return true,
            // Cannot watch it: treat it as exited, and let wait() block.
            Err(_) => return true,
        }
    }
}

/// A pidfd for `pid` (Linux 5.3 and later).
fn pidfd(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The first `cap` bytes of `r`; the rest is read and dropped, so the
/// program never blocks on a full pipe.
fn head(mut r: impl Read, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// The last `cap` bytes of `r`, in bounded memory however much it writes.
fn tail(mut r: impl Read, cap: usize) -> Vec<u8> {
    let mut kept: Vec<u8> = Vec::with_capacity(2 * cap);
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * cap {
                    kept.drain(..kept.len() - cap);
                }
            }
        }
    }
    let start = kept.len().saturating_sub(cap);
    kept.split_off(start)
}

/// Runs in the forked process before `exec`: async-signal-safe calls only.
fn prepare(parent: Pid) -> std::io::Result<()> {
    // Its own process group, so a timeout or a stop ends the whole group.
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    // Die with the worker thread that started it, and not run on if that
    // thread is already gone.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid() != parent {
        // No allocation here (another thread may have held the allocator's
        // lock at the fork): an errno, not a message.
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // Default dispositions and an empty mask: what the child blocks or
    // ignores is the child's business, not the program's.
    // Every signal, the real-time ones included (libc refuses to touch
    // the two it reserves, so this is the raw system call): the kernel's
    // sigaction is handler, flags, restorer and mask, and all zeros is
    // SIG_DFL with nothing else.
    let default = [0u64; 4];
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a valid kernel sigaction (SIG_DFL) that
        // outlives the call; no old action is asked for; 8 is the size of
        // the kernel's signal set.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
    }
    nix::sys::signal::SigSet::empty().thread_set_mask()?;
    // Every descriptor but 0, 1 and 2 closes at exec (CLOSE_RANGE_CLOEXEC
    // marks rather than closes, so std's own error pipe still reports a
    // failed exec).
    // SAFETY: close_range takes integers only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_tail_keep_bounded_ends() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(head(&data[..], 10), data[..10]);
        assert_eq!(tail(&data[..], 10), data[data.len() - 10..]);
        assert_eq!(tail(&b"short"[..], 10), b"short");
        assert_eq!(
            kill_grace(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(kill_grace(Duration::from_secs(60)), Duration::from_secs(5));
    }
}
