//! Programs a worker runs for its jobs, started and ended as whole process
//! groups.
//!
//! # The start
//!
//! [`Worker::spawn`](super::Worker::spawn) starts a [`Command`] the caller
//! set up (arguments, environment, pipes) as the leader of a new process
//! group, with the default signal dispositions and an empty signal mask (a
//! child blocks TERM and QUIT and ignores the master's other signals; a
//! program must not inherit that, or `kill -TERM` would do nothing to it),
//! with descriptors 0, 1 and 2 and no other (anything the launcher
//! inherited from its caller closes at `exec`), and dying with the worker
//! thread that started it (`PR_SET_PDEATHSIG`). Before it execs, the
//! program writes its group id into its worker's slot on the child's
//! scoreboard, so it never runs a line of its own code unrecorded.
//!
//! # The end
//!
//! [`Program::stop`] sends TERM to the group, then KILL after a grace.
//! [`Program::finish`] (and `Drop`) kills whatever is left of the group (a
//! background process that kept the pipes open cannot hold the job), clears
//! the record, and reaps the leader, in that order: the leader's zombie
//! keeps its pid, the group id, from being reused until the record is
//! gone, so a record never names a stranger's group.
//!
//! # A child that dies
//!
//! When a child dies with programs running (SIGKILL, a crash), its workers
//! cannot end them: PDEATHSIG kills each leader, but not what the leader
//! started. The master reads the dead child's scoreboard when it reaps the
//! child and kills every recorded group (`Fleet::on_exit`), before the
//! child's jobs are handed back ([`App::children_lost`](super::App::children_lost)):
//! a job never runs again beside what is left of its previous attempt.
//! What remains is a race of milliseconds: if, between the child's death
//! and the master's kill, a recorded group emptied and a new process took
//! its id as a group of its own, that process is killed. That needs the
//! system's pids to wrap around in those milliseconds.
//!
//! Waiting uses a pidfd (Linux 5.3 and later), so a deadline costs no
//! polling and nothing is reaped before its time.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};

use crate::Pid;

/// How long a program's group sent TERM has before KILL, when it was
/// stopped at a limit (a job's `--timeout`, a stopping child's graceful
/// timeout): half the limit, at most 5 seconds, so it is gone well before
/// whatever watches that limit acts.
pub(crate) fn kill_grace(limit: Duration) -> Duration {
    (limit / 2).min(Duration::from_secs(5))
}

/// A program a worker runs: the leader of its own process group.
///
/// Dropping it ends the group and reaps the leader, like
/// [`Program::finish`].
#[must_use = "a program runs until it is finished; finish() reaps it and reports its exit"]
#[derive(Debug)]
pub struct Program<'w> {
    child: Child,
    group: Pid,
    pidfd: OwnedFd,
    record: &'w AtomicI32,
    reaped: bool,
}

/// Starts `command` as a program recorded in `record` (see the module
/// docs), keeping descriptor `keep` open across its exec if given (a
/// channel of its own, beside 0, 1 and 2), and with `named` (a variable
/// and a prefix) set to the prefix and the program's own pid, if given
/// (see [`NamedExec`]).
pub(super) fn spawn<'w>(
    command: &mut Command,
    record: &'w AtomicI32,
    keep: Option<RawFd>,
    named: Option<(&str, &str)>,
) -> io::Result<Program<'w>> {
    if record.load(Ordering::Acquire) != 0 {
        return Err(io::Error::other(
            "this worker already runs a program; finish it first",
        ));
    }
    // systemd's notification socket and watchdog are the master's: a
    // program must not speak for it (see `notify`).
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        command.env_remove(var);
    }
    let parent = Pid::this();
    let address = record as *const AtomicI32 as usize;
    let mut exec = named
        .map(|(var, prefix)| NamedExec::new(command, var, prefix))
        .transpose()?;
    // SAFETY: `prepare` runs in the forked process before exec and makes
    // only async-signal-safe system calls and one atomic store; it
    // allocates nothing and takes no lock. `address` points into the
    // scoreboard, a shared mapping the forked process inherits and keeps
    // until exec. `NamedExec::exec` writes into memory it owns and execs
    // (see there).
    unsafe {
        command.pre_exec(move || {
            prepare(parent, address, keep)?;
            match exec.as_mut() {
                Some(exec) => Err(exec.exec()),
                None => Ok(()),
            }
        })
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            // The forked process may have recorded itself before its exec
            // failed; std has reaped it.
            record.store(0, Ordering::Release);
            return Err(e);
        }
    };
    let group = Pid::from_raw(child.id() as i32);
    // What `prepare` stored, stored again: the same value.
    record.store(group.as_raw(), Ordering::Release);
    match pidfd(group) {
        Ok(pidfd) => Ok(Program {
            child,
            group,
            pidfd,
            record,
            reaped: false,
        }),
        Err(e) => {
            let _ = killpg(group, Signal::SIGKILL);
            record.store(0, Ordering::Release);
            let _ = child.wait();
            Err(io::Error::new(
                e.kind(),
                format!("cannot watch the program: {e}"),
            ))
        }
    }
}

impl Program<'_> {
    /// The program's pid, which is also its process group's id.
    pub fn id(&self) -> Pid {
        self.group
    }

    /// Its standard input, if piped and not yet taken.
    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Its standard output, if piped and not yet taken.
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Its standard error, if piped and not yet taken.
    pub fn stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits until the program (the group's leader) exits, for at most
    /// `limit` (`None`: no limit), without reaping it; whether it exited.
    pub fn wait_exit(&mut self, limit: Option<Duration>) -> bool {
        let deadline = limit.map(|limit| Instant::now() + limit);
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
                }
            };
            // A pidfd turns readable when its process exits.
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return false,
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => return true,
                // Cannot watch it any more: call it exited, and let the
                // reap in `finish` block instead.
                Err(_) => return true,
            }
        }
    }

    /// Stops the whole group: TERM, then KILL if the program has not exited
    /// within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = killpg(self.group, Signal::SIGTERM);
        if !self.wait_exit(Some(grace)) {
            let _ = killpg(self.group, Signal::SIGKILL);
        }
    }

    /// Ends what is left of the group (KILL), clears the record and reaps
    /// the program; its exit status.
    ///
    /// # Errors
    ///
    /// Waiting for the program failed.
    pub fn finish(mut self) -> io::Result<ExitStatus> {
        self.end()
    }

    fn end(&mut self) -> io::Result<ExitStatus> {
        // Order matters (see the module docs): the group is killed and the
        // record cleared while the leader's zombie still holds the id.
        let _ = killpg(self.group, Signal::SIGKILL);
        self.record.store(0, Ordering::Release);
        self.reaped = true;
        loop {
            match self.child.wait() {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                waited => return waited,
            }
        }
    }
}

impl Drop for Program<'_> {
    /// Never leaves a group running or a zombie behind.
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.end();
        }
    }
}

/// The forked process's own exec, for a program whose environment names it
/// by its pid (`PGAPPNAME=prefork:program:<pid>`, so that its libpq
/// clients' backends are its own in `pg_stat_activity`).
///
/// std's `Command` builds the environment before the fork, when the
/// program's pid is not known, and the forked process may not allocate.
/// So the environment is built here before the fork (the parent's, with
/// the command's changes; a command whose environment was cleared is not
/// supported), with room in one entry for the pid; the forked process
/// writes its pid there and execs by itself, from its `pre_exec`, and
/// std's own exec never runs. A failed exec returns its error to std,
/// which reports it from `spawn` as its own.
struct NamedExec {
    /// The program and its arguments; `argv` points into them.
    _args: Vec<CString>,
    /// The environment but the named entry; `envp` points into them.
    _env: Vec<CString>,
    /// `NAME=prefix`, then room for the pid and its NUL.
    named: Vec<u8>,
    /// Where the pid goes in `named`.
    at: usize,
    /// Null-ended arrays of the strings' addresses (as integers, so that
    /// the closure holding them is `Send`): heap buffers that do not move
    /// when their owners do.
    argv: Vec<usize>,
    envp: Vec<usize>,
}

impl NamedExec {
    fn new(command: &Command, var: &str, prefix: &str) -> io::Result<NamedExec> {
        use std::os::unix::ffi::OsStrExt;
        let c_string = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a NUL byte in the program's arguments or environment",
                )
            })
        };
        let mut args = vec![c_string(command.get_program().as_bytes())?];
        for arg in command.get_args() {
            args.push(c_string(arg.as_bytes())?);
        }
        let mut vars: std::collections::BTreeMap<OsString, OsString> =
            std::env::vars_os().collect();
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => vars.insert(key.to_owned(), value.to_owned()),
                None => vars.remove(key),
            };
        }
        vars.remove(std::ffi::OsStr::new(var));
        let env = vars
            .iter()
            .map(|(key, value)| c_string(&[key.as_bytes(), b"=", value.as_bytes()].concat()))
            .collect::<io::Result<Vec<CString>>>()?;
        let mut named = format!("{var}={prefix}").into_bytes();
        let at = named.len();
        // A pid has at most 10 digits; the rest stays NUL.
        named.resize(at + 12, 0);
        let pointers = |strings: &[CString]| strings.iter().map(|s| s.as_ptr() as usize).collect();
        let argv: Vec<usize> = [pointers(&args), vec![0]].concat();
        let envp: Vec<usize> = [pointers(&env), vec![named.as_ptr() as usize, 0]].concat();
        Ok(NamedExec {
            _args: args,
            _env: env,
            named,
            at,
            argv,
            envp,
        })
    }

    /// In the forked process: writes its pid into the named entry and
    /// execs (searching PATH as std does); returns only if the exec
    /// failed. Allocates nothing.
    fn exec(&mut self) -> io::Error {
        let mut pid = nix::unistd::getpid().as_raw().unsigned_abs();
        let mut digits = [0u8; 10];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (pid % 10) as u8;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let digits = &digits[start..];
        self.named[self.at..self.at + digits.len()].copy_from_slice(digits);
        // SAFETY: `argv` and `envp` are null-ended arrays of addresses of
        // NUL-ended strings this struct owns, whose heap buffers have not
        // moved or changed since they were taken but for the pid's digits
        // written into `named` (its NUL follows them: it had 12 bytes of
        // room, 10 at most are used).
        unsafe {
            libc::execvpe(
                self.argv[0] as *const libc::c_char,
                self.argv.as_ptr().cast::<*const libc::c_char>(),
                self.envp.as_ptr().cast::<*const libc::c_char>(),
            )
        };
        io::Error::last_os_error()
    }
}

/// A pidfd for `pid`.
fn pidfd(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Runs in the forked process before `exec`: async-signal-safe calls only.
fn prepare(parent: Pid, record: usize, keep: Option<RawFd>) -> io::Result<()> {
    // Its own process group, so a timeout or a stop ends the whole group.
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    // Recorded before it runs anything of its own, so a master that finds
    // its child dead finds this group too.
    // SAFETY: `record` is the address of an AtomicI32 in the scoreboard,
    // a shared mapping this process inherited and keeps until exec.
    let record = unsafe { &*(record as *const AtomicI32) };
    record.store(nix::unistd::getpid().as_raw(), Ordering::Release);
    // Die with the worker thread that started it, and not run on if that
    // thread is already gone.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid() != parent {
        // No allocation here (another thread may have held the allocator's
        // lock at the fork): an errno, not a message.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // Default dispositions and an empty mask. Every signal, the real-time
    // ones included (libc refuses to touch the two it reserves, so this is
    // the raw system call): the kernel's sigaction is handler, flags,
    // restorer and mask, and all zeros is SIG_DFL with nothing else.
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
        return Err(io::Error::last_os_error());
    }
    if let Some(fd) = keep {
        // The program's channel stays open across the exec, where the
        // program finds it by the number in its environment.
        // SAFETY: fcntl takes integers only.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_is_half_the_limit_at_most_five_seconds() {
        assert_eq!(
            kill_grace(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(kill_grace(Duration::from_secs(60)), Duration::from_secs(5));
    }

    #[test]
    fn a_named_program_sees_its_own_pid_and_the_commands_environment() {
        use std::io::Read;
        let record = AtomicI32::new(0);
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo \"$PGAPPNAME $$ $KEPT ${HOME-unset}\""])
            .env("KEPT", "yes")
            .env_remove("HOME")
            .stdout(std::process::Stdio::piped());
        let named = Some(("PGAPPNAME", "prefork:program:"));
        let mut program = spawn(&mut command, &record, None, named).unwrap();
        let mut out = String::new();
        program.stdout().unwrap().read_to_string(&mut out).unwrap();
        let pid = program.id();
        assert!(program.finish().unwrap().success());
        assert_eq!(out.trim(), format!("prefork:program:{pid} {pid} yes unset"));
        assert_eq!(record.load(Ordering::Acquire), 0);

        let mut missing = Command::new("/nonexistent/program");
        let e = spawn(&mut missing, &record, None, named).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert_eq!(record.load(Ordering::Acquire), 0);
    }
}
