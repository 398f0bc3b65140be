//! A small runner for `harness = false` tests, plus PostgreSQL helpers.
//!
//! libtest runs tests on threads, which the fork guard (rightly) refuses to
//! fork from. Here each binary starts its own throwaway cluster, then runs
//! each test in a process of its own: the binary re-run with
//! `FORK_SAFE_TEST_RUN=<name>`. That gives every test a time limit that
//! can be enforced ([`LIMIT`], or `FORK_SAFE_TEST_LIMIT` seconds): past it
//! the runner kills the test process and everything it started, and the
//! test fails. The runner is a child subreaper, so whatever a test started
//! and left behind (a fleet whose test panicked) comes back to it and is
//! killed when the test ends, passed or failed. A test that must restart
//! the server asks the runner ([`Ctx::restart_server`]), which owns it.
//! Tests that must crash or fork re-run the binary as a child with
//! `FORK_SAFE_TEST_CHILD=<name>`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use fork_safe::cluster::TempCluster;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// What a test gets: the server's URL and socket directory, and a line to
/// the runner that owns the server.
pub struct Ctx {
    pub url: String,
    pub socket_dir: PathBuf,
    /// Over TCP with TLS, for a cluster built with `Builder::tls` (no
    /// `sslmode` in it yet).
    pub tcp_url: Option<String>,
    control: Option<(std::fs::File, BufReader<std::fs::File>)>,
}

impl Ctx {
    /// Restarts the server (fast shutdown, then start) and waits until it
    /// accepts connections again.
    pub fn restart_server(&mut self) {
        let (to_runner, from_runner) = self.control.as_mut().expect("run by the runner");
        to_runner
            .write_all(b"restart\n")
            .expect("asking the runner");
        let mut answer = String::new();
        from_runner
            .read_line(&mut answer)
            .expect("the runner's answer");
        assert_eq!(answer.trim(), "ok", "restart failed: {answer}");
    }
}

/// Polls `done` every 10 ms until it holds; fails the test, naming `what`,
/// if it does not within `within`.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub type Test = (&'static str, fn(&mut Ctx));
pub type Child = (&'static str, fn(&str) -> i32);

const CHILD_ENV: &str = "FORK_SAFE_TEST_CHILD";
const RUN_ENV: &str = "FORK_SAFE_TEST_RUN";
const URL_ENV: &str = "FORK_SAFE_TEST_URL";
const SOCKET_ENV: &str = "FORK_SAFE_TEST_SOCKET_DIR";
/// The cluster's TCP connection string, if it serves TLS.
pub const TCP_URL_ENV: &str = "FORK_SAFE_TEST_TCP_URL";
const LIMIT_ENV: &str = "FORK_SAFE_TEST_LIMIT";
/// The test process's ends of its line to the runner.
const TO_RUNNER_FD: i32 = 100;
const FROM_RUNNER_FD: i32 = 101;

/// How long one test may take.
pub const LIMIT: Duration = Duration::from_secs(120);

/// Runs the child or the test named in the environment, if any; otherwise
/// the runner: a libtest-compatible front end (`--list`, filters,
/// `--exact`, `--skip`, `--ignored`, so `cargo nextest run` works too) over
/// the per-process runner, each test in its own process. Exits the
/// process.
///
/// The tests share one cluster, started by the first test that runs (none
/// for `--list`), and hold it in turn, so they run one at a time whatever
/// `--test-threads` says: some restart the server or count its backends.
/// nextest runs each test as a process of its own, with a cluster of its
/// own.
pub fn main(
    builder: fork_safe::cluster::Builder,
    configure: fn(&str),
    tests: &[Test],
    children: &[Child],
) -> ! {
    if let Ok(name) = std::env::var(CHILD_ENV) {
        let url = std::env::var(URL_ENV).expect("child without a URL");
        configure(&url);
        let child = children.iter().find(|(n, _)| *n == name);
        let code = child.map_or(101, |(_, f)| f(&url));
        std::process::exit(code);
    }
    if let Ok(name) = std::env::var(RUN_ENV) {
        run_one(&name, configure, tests);
    }
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let limit = std::env::var(LIMIT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(LIMIT, Duration::from_secs);
    // Orphans of a test come back to the runner, to be killed.
    nix::sys::prctl::set_child_subreaper(true).expect("becoming a subreaper");
    let cluster = std::sync::Arc::new(SharedCluster {
        builder: std::sync::Mutex::new(Some(builder)),
        cluster: std::sync::Mutex::new(None),
    });
    let trials = tests
        .iter()
        .map(|&(name, _)| {
            let cluster = cluster.clone();
            libtest_mimic::Trial::test(name, move || {
                let mut slot = cluster.started()?;
                let cluster = slot.as_mut().expect("started");
                supervise_test(name, cluster, limit).map_err(Into::into)
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // The server stops before the process exits.
    drop(
        cluster
            .cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(),
    );
    conclusion.exit()
}

/// The tests' one cluster, started by the first test that runs.
struct SharedCluster {
    builder: std::sync::Mutex<Option<fork_safe::cluster::Builder>>,
    cluster: std::sync::Mutex<Option<TempCluster>>,
}

impl SharedCluster {
    /// The cluster, started if this is the first test.
    fn started(&self) -> Result<std::sync::MutexGuard<'_, Option<TempCluster>>, String> {
        let mut slot = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let builder = self
                .builder
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let builder = builder.ok_or("the cluster failed to start for an earlier test")?;
            let started = builder
                .start()
                .map_err(|e| format!("cannot start a PostgreSQL cluster: {e}"))?;
            *slot = Some(started);
        }
        Ok(slot)
    }
}

/// In the test's own process: runs it, exits 0 if it passed.
fn run_one(name: &str, configure: fn(&str), tests: &[Test]) -> ! {
    let url = std::env::var(URL_ENV).expect("test without a URL");
    configure(&url);
    // The line to the runner is this process's own: no program it starts
    // inherits it.
    for fd in [TO_RUNNER_FD, FROM_RUNNER_FD] {
        use nix::fcntl::{F_SETFD, FdFlag, fcntl};
        fcntl(fd, F_SETFD(FdFlag::FD_CLOEXEC)).expect("the runner's descriptors");
    }
    // SAFETY: the runner put these descriptors in place for this process,
    // and nothing else here owns them.
    let control = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(TO_RUNNER_FD),
            BufReader::new(std::fs::File::from_raw_fd(FROM_RUNNER_FD)),
        )
    };
    let mut ctx = Ctx {
        url,
        socket_dir: std::env::var_os(SOCKET_ENV).expect("a socket dir").into(),
        tcp_url: std::env::var(TCP_URL_ENV).ok(),
        control: Some(control),
    };
    let Some((_, test)) = tests.iter().find(|(n, _)| *n == name) else {
        eprintln!("no test named {name:?}");
        std::process::exit(101);
    };
    let passed = panic::catch_unwind(AssertUnwindSafe(|| test(&mut ctx))).is_ok();
    fork_safe::close_all();
    std::process::exit(if passed { 0 } else { 1 })
}

/// Runs one test in its own process, answering its restart requests, and
/// enforcing the time limit; kills whatever the test left behind.
fn supervise_test(name: &str, cluster: &mut TempCluster, limit: Duration) -> Result<(), String> {
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string());
    let (to_runner_r, to_runner_w) = pipe()?;
    let (from_runner_r, from_runner_w) = pipe()?;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(RUN_ENV, name)
        .env(URL_ENV, cluster.connection_string())
        .env(SOCKET_ENV, cluster.socket_dir());
    if let Some(tcp) = cluster.tcp_connection_string() {
        cmd.env(TCP_URL_ENV, tcp);
    }
    let (w, r) = (to_runner_w.as_raw_fd(), from_runner_r.as_raw_fd());
    // SAFETY: dup2 is async-signal-safe and touches only descriptors; the
    // duplicates are not close-on-exec, so the test process gets them.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(w, TO_RUNNER_FD) < 0 || libc::dup2(r, FROM_RUNNER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the test: {e}"))?;
    drop((to_runner_w, from_runner_r));
    let mut requests = BufReader::new(std::fs::File::from(to_runner_r));
    let mut answers = std::fs::File::from(from_runner_w);
    let pid = Pid::from_raw(child.id() as i32);
    let pidfd = pidfd(pid);
    let deadline = Instant::now() + limit;
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(format!("no result within {limit:?}: killed"));
        }
        let (request, exited) = {
            let mut fds = [
                PollFd::new(requests.get_ref().as_fd(), PollFlags::POLLIN),
                PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            ];
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            if poll(&mut fds, timeout).unwrap_or(0) == 0 {
                continue;
            }
            let hit = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (hit(&fds[0]), hit(&fds[1]))
        };
        if request {
            let mut line = String::new();
            if requests.read_line(&mut line).unwrap_or(0) > 0 {
                let answer = match line.trim() {
                    "restart" => match cluster.restart() {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => e.to_string().replace('\n', " "),
                    },
                    other => format!("unknown request {other:?}"),
                };
                let _ = writeln!(answers, "{answer}");
                continue;
            }
        }
        if exited {
            break match child.wait() {
                Ok(status) if status.success() => Ok(()),
                Ok(status) => Err(format!("the test process ended with {status}")),
                Err(e) => Err(format!("waiting for the test: {e}")),
            };
        }
    };
    // Whatever the test started and left, passed or failed: its process
    // and every descendant, then every orphan that came back to the
    // runner (but the server).
    let server = cluster.server_pid().map(|p| Pid::from_raw(p as i32));
    kill_tree(pid);
    let _ = child.wait();
    for orphan in children_of(Pid::this()) {
        if Some(orphan) != server {
            kill_tree(orphan);
            let _ = waitpid(orphan, None);
        }
    }
    outcome
}

/// A pidfd for `pid`, readable once it exits.
fn pidfd(pid: Pid) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The children of `pid`, from every one of its threads.
pub fn children_of(pid: Pid) -> Vec<Pid> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let path = task.path().join("children");
        for p in std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
        {
            if let Ok(p) = p.parse() {
                found.push(Pid::from_raw(p));
            }
        }
    }
    found
}

/// SIGKILLs `pid` and all its descendants, the children first stopped so
/// that none can start more meanwhile.
fn kill_tree(pid: Pid) {
    let _ = kill(pid, Signal::SIGSTOP);
    for child in children_of(pid) {
        kill_tree(child);
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// Logs to stderr with the pid, for child processes whose stderr the tests
/// read. Level from `FORK_SAFE_TEST_LOG` (default: info).
pub fn init_logger() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                eprintln!(
                    "[{} {}] {}",
                    std::process::id(),
                    record.level(),
                    record.args()
                );
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    let level = match std::env::var("FORK_SAFE_TEST_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Starts this test binary as a child running `name` with extra
/// environment, its stderr going to `log`.
pub fn spawn_child(
    name: &str,
    url: &str,
    env: &[(&str, String)],
    log: &std::path::Path,
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    // Its own process group, as a terminal would give it: a test can send
    // the group a Ctrl-C without hitting the test runner.
    cmd.env(CHILD_ENV, name).env(URL_ENV, url).process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stderr(std::fs::File::create(log).unwrap());
    cmd.spawn().expect("re-running the test binary")
}

/// Configures one database, `default`, whose connections live until closed.
pub fn configure_default(url: &str) {
    fork_safe::configure([fork_safe::Database::new("default", url)
        .unwrap()
        .max_age(fork_safe::MaxAge::Forever)])
    .unwrap();
}

/// Re-runs this test binary as a child running `name`; returns its status.
pub fn run_child(name: &str, url: &str) -> ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, name)
        .env(URL_ENV, url)
        .status()
        .expect("re-running the test binary")
}

/// The application_name of connections opened by `pid` with `role`.
pub fn app_name(role: &str, pid: u32) -> String {
    format!("prefork:{role}:{pid}")
}

/// A connection of the test itself, outside the registry, for looking at
/// `pg_stat_activity`.
pub struct Observer {
    client: postgres::Client,
}

impl Observer {
    pub fn new(url: &str) -> Observer {
        let url = format!("{url} application_name=observer");
        Observer {
            client: postgres::Client::connect(&url, postgres::NoTls).expect("observer connects"),
        }
    }

    /// Backends whose application_name is `name`.
    pub fn backends(&mut self, name: &str) -> i64 {
        self.client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .expect("counting backends")
            .get(0)
    }

    /// Backends of this process (role `app`).
    pub fn own(&mut self) -> i64 {
        self.backends(&app_name("app", std::process::id()))
    }

    /// Polls until `count()` equals `want` (a closed backend takes a moment
    /// to leave pg_stat_activity); returns the last count seen.
    pub fn wait_for(&mut self, name: &str, want: i64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = self.backends(name);
            if n == want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_own(&mut self, want: i64) -> i64 {
        self.wait_for(&app_name("app", std::process::id()), want)
    }

    /// States of this process's backends.
    pub fn states(&mut self) -> Vec<String> {
        let name = app_name("app", std::process::id());
        self.client
            .query(
                "SELECT coalesce(state, '') FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .expect("reading states")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    pub fn client(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

/// The backend pid of the calling thread's connection to `alias`.
pub fn backend_pid(alias: &str) -> i32 {
    fork_safe::with_client_for(alias, |c| {
        Ok(c.query_one("SELECT pg_backend_pid()", &[])?.get(0))
    })
    .expect("querying the backend pid")
}
