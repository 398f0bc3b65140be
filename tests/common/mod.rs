//! A small runner for `harness = false` tests, plus PostgreSQL helpers.
//!
//! libtest runs tests on threads, which the fork guard (rightly) refuses to
//! fork from, so these binaries run their tests one after another on the
//! main thread. Each binary starts its own throwaway cluster. Tests that
//! must crash or fork re-run the binary as a child with
//! `FORK_SAFE_TEST_CHILD=<name>`.

#![allow(dead_code)]

use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use fork_safe::cluster::TempCluster;

pub struct Ctx {
    pub cluster: TempCluster,
    pub url: String,
}

pub type Test = (&'static str, fn(&mut Ctx));
pub type Child = (&'static str, fn(&str) -> i32);

const CHILD_ENV: &str = "FORK_SAFE_TEST_CHILD";
const URL_ENV: &str = "FORK_SAFE_TEST_URL";

/// Runs the child named in the environment, if any, otherwise every test
/// whose name contains the first command-line argument. Exits the process.
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
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let cluster = builder.start().unwrap_or_else(|e| {
        eprintln!("cannot start a PostgreSQL cluster: {e}");
        std::process::exit(1);
    });
    let url = cluster.connection_string();
    configure(&url);
    let mut ctx = Ctx { cluster, url };
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        eprintln!("running {name}");
        let started = Instant::now();
        match panic::catch_unwind(AssertUnwindSafe(|| test(&mut ctx))) {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.2?})", started.elapsed());
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED");
            }
        }
        // Whatever a test did, the next one starts with nothing open here.
        fork_safe::close_all();
    }
    drop(ctx);
    println!();
    println!("test result: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 })
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
