//! The prefork master in real processes: the test binary re-runs itself as
//! a master (the library API with a test app, configured through the
//! environment), and the tests signal it and its children and read the
//! fleet from /proc and pg_stat_activity.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{Ctx, Observer};
use fork_safe::prefork::{App, BoxError, ChildInfo, Prefork, Worker};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn main() {
    common::main(
        fork_safe::cluster::Builder::new(),
        common::configure_default,
        &[
            ("children_are_named_and_ready", named),
            (
                "sigkill_of_a_child_is_replaced_and_its_backend_ended",
                kill_child,
            ),
            (
                "twenty_kills_in_two_seconds_back_off_then_recover",
                crash_loop,
            ),
            ("crash_limit_exits_non_zero", crash_limit),
            (
                "a_refused_fork_stops_and_reaps_the_fleet_first",
                refused_fork,
            ),
            ("term_finishes_in_flight_tasks_and_exits_zero", graceful),
            ("sigkill_of_the_master_takes_the_fleet_down", master_killed),
            ("hup_replaces_every_child_without_failing_a_task", reload),
            ("ttin_and_ttou_change_the_fleet_size", scale),
            (
                "systemd_hears_ready_reloading_stopping_and_the_watchdog",
                systemd_notify,
            ),
            ("max_requests_recycles_children", max_requests),
            ("timeout_kills_a_child_stuck_in_a_task", stuck),
            (
                "a_units_own_limit_kills_a_stuck_child_with_no_fleet_timeout",
                stuck_own_limit,
            ),
            ("boot_timeout_kills_a_hung_child", hung_boot),
            ("http_example_serves_through_a_reload", http_example),
            ("max_lifetime_recycles_children", max_lifetime),
            ("reload_on_rss_recycles_children", reload_on_rss),
            (
                "max_memory_recycles_by_pss_after_consecutive_readings",
                max_memory,
            ),
            ("ctrl_c_to_the_process_group_stops_the_fleet_once", ctrl_c),
        ],
        &[("master", master_main)],
    )
}

// ---- the master process -------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

struct TestApp {
    task_ms: u64,
    stuck: bool,
    /// The stuck job's own time limit (`Worker::jobs_within`).
    stuck_limit: Option<Duration>,
    hang_boot: bool,
    fail_boot: bool,
    /// Start a thread in the master at its first tick, so that its next
    /// fork is refused.
    thread_in_master: bool,
}

impl App for TestApp {
    type Child = ();

    fn init_child(&self, _: &ChildInfo) -> Result<(), BoxError> {
        if self.fail_boot {
            return Err("configured to fail".into());
        }
        if self.hang_boot {
            std::thread::sleep(Duration::from_secs(3600));
        }
        if let Some(mb) = env_u64("PF_BALLAST_MB") {
            // Memory of the child's own, touched so that it is resident.
            let ballast = vec![1u8; mb as usize * 1024 * 1024];
            std::hint::black_box(&ballast);
            std::mem::forget(ballast);
        }
        Ok(())
    }

    fn master_tick(&self, _: &[fork_safe::prefork::ChildStatus]) {
        static STARTED: std::sync::Once = std::sync::Once::new();
        if self.thread_in_master {
            STARTED.call_once(|| {
                std::thread::spawn(|| std::thread::sleep(Duration::from_secs(3600)));
            });
        }
    }

    fn run_worker(&self, _: &(), worker: &Worker) {
        let pid = std::process::id() as i32;
        let secs = self.task_ms as f64 / 1000.0;
        while !worker.stopping() {
            if self.stuck {
                worker.jobs_within(1, "stuck job", self.stuck_limit, || {
                    std::thread::sleep(Duration::from_secs(3600))
                });
            }
            worker.job("sleepy job", || {
                let outcome = fork_safe::with_client(|c| {
                    let id: i32 = c
                        .query_one(
                            "INSERT INTO tasks (pid, state) VALUES ($1, 'started') RETURNING id",
                            &[&pid],
                        )?
                        .get(0);
                    c.execute("SELECT pg_sleep($1)", &[&secs])?;
                    c.execute("UPDATE tasks SET state = 'finished' WHERE id = $1", &[&id])
                });
                if let Err(e) = outcome {
                    log::error!("task failed: {e}");
                    let _ = fork_safe::with_client(|c| {
                        c.execute(
                            "INSERT INTO tasks (pid, state) VALUES ($1, 'failed')",
                            &[&pid],
                        )
                    });
                }
            });
        }
    }
}

fn master_main(_url: &str) -> i32 {
    common::init_logger();
    let secs = |name| env_u64(name).map(Duration::from_secs);
    let fleet = Prefork::new()
        .procs(env_u64("PF_PROCS").unwrap_or(2) as usize)
        .threads(env_u64("PF_THREADS").unwrap_or(2) as usize)
        .timeout(secs("PF_TIMEOUT"))
        .boot_timeout(secs("PF_BOOT_TIMEOUT").unwrap_or(Duration::from_secs(30)))
        .graceful_timeout(secs("PF_GRACEFUL_TIMEOUT").unwrap_or(Duration::from_secs(30)))
        .max_requests(env_u64("PF_MAX_REQUESTS"), 0)
        .max_lifetime(secs("PF_MAX_LIFETIME"), Duration::ZERO)
        .reload_on_rss(env_u64("PF_RELOAD_ON_RSS"))
        .max_memory(env_u64("PF_MAX_MEMORY"), 2)
        .crash_limit(env_u64("PF_CRASH_LIMIT").map(|n| n as u32));
    let app = TestApp {
        task_ms: env_u64("PF_TASK_MS").unwrap_or(100),
        stuck: std::env::var("PF_STUCK").is_ok(),
        stuck_limit: env_u64("PF_STUCK_LIMIT_MS").map(Duration::from_millis),
        hang_boot: std::env::var("PF_HANG_BOOT").is_ok(),
        fail_boot: std::env::var("PF_FAIL_BOOT").is_ok(),
        thread_in_master: std::env::var("PF_THREAD_IN_MASTER").is_ok(),
    };
    match fleet.run(app) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("master: {e}");
            1
        }
    }
}

// ---- helpers --------------------------------------------------------------

struct Fleet {
    master: Child,
    log: PathBuf,
}

impl Fleet {
    fn start(ctx: &Ctx, env: &[(&str, &str)]) -> Fleet {
        let mut obs = Observer::new(&ctx.url);
        obs.client()
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS tasks (id serial PRIMARY KEY, pid int, state text);
                 TRUNCATE tasks",
            )
            .unwrap();
        // Start clean even after a failed test: its fleet's children may
        // still be finishing tasks.
        assert_eq!(
            wait_fleet_backends(&mut obs, 0),
            0,
            "an earlier fleet is still connected"
        );
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log =
            std::env::temp_dir().join(format!("fork_safe-master-{}-{seq}.log", std::process::id()));
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let master = common::spawn_child("master", &ctx.url, &env, &log);
        Fleet { master, log }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.master.id() as i32)
    }

    /// Live (non-zombie) children of the master.
    fn children(&self) -> Vec<Pid> {
        children_of(self.pid())
            .into_iter()
            .filter(|(_, state)| *state != 'Z')
            .map(|(pid, _)| pid)
            .collect()
    }

    fn wait_children(&self, n: usize, within: Duration) -> Vec<Pid> {
        let deadline = Instant::now() + within;
        loop {
            let children = self.children();
            if children.len() == n || Instant::now() > deadline {
                assert_eq!(children.len(), n, "fleet size; log:\n{}", self.log_text());
                return children;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the log has `needle` `count` times.
    fn wait_log(&self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.log_text().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "log never had {count} x {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// No child stays a zombie: sampled every 5 ms for a second, a child
    /// seen as Z must be gone within 300 ms (the master reaps on every
    /// wake-up, at least every 100 ms).
    fn assert_no_zombies(&self) {
        let until = Instant::now() + Duration::from_secs(1);
        let mut seen: Vec<(Pid, Instant)> = Vec::new();
        while Instant::now() < until {
            let now = Instant::now();
            let zombies: Vec<Pid> = children_of(self.pid())
                .into_iter()
                .filter(|(_, state)| *state == 'Z')
                .map(|(pid, _)| pid)
                .collect();
            seen.retain(|(pid, _)| zombies.contains(pid));
            for pid in zombies {
                match seen.iter().find(|(p, _)| *p == pid) {
                    Some((_, since)) => assert!(
                        now.duration_since(*since) < Duration::from_millis(300),
                        "child {pid} left a zombie"
                    ),
                    None => seen.push((pid, now)),
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    /// Sends TERM and waits for the master to exit; returns its code.
    fn stop(mut self) -> Option<i32> {
        let _ = kill(self.pid(), Signal::SIGTERM);
        let status = wait_exit(&mut self.master, Duration::from_secs(30));
        let _ = fs::remove_file(&self.log);
        status
    }

    /// Sends QUIT (fast stop) and waits for the master to exit.
    fn quit(mut self) -> Option<i32> {
        let _ = kill(self.pid(), Signal::SIGQUIT);
        wait_exit(&mut self.master, Duration::from_secs(30))
    }
}

impl Drop for Fleet {
    /// A test that fails half-way must not leave its fleet running; its
    /// master's log is shown.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- master log ----\n{}----", self.log_text());
        }
        let _ = fs::remove_file(&self.log);
        if self.master.try_wait().ok().flatten().is_none() {
            for child in self.children() {
                let _ = kill(child, Signal::SIGKILL);
            }
            let _ = self.master.kill();
            let _ = self.master.wait();
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("master did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (pid, state) of every process whose parent is `parent`.
fn children_of(parent: Pid) -> Vec<(Pid, char)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut fields = rest.split(' ');
            let state = fields.next()?.chars().next()?;
            let ppid: i32 = fields.next()?.parse().ok()?;
            (ppid == parent.as_raw()).then_some((Pid::from_raw(pid), state))
        })
        .collect()
}

fn alive(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s[s.rfind(')')? + 2..].chars().next())
        .is_some_and(|state| state != 'Z')
}

fn count_tasks(obs: &mut Observer, state: &str) -> i64 {
    obs.client()
        .query_one("SELECT count(*) FROM tasks WHERE state = $1", &[&state])
        .unwrap()
        .get(0)
}

fn fleet_backends(obs: &mut Observer) -> i64 {
    obs.client()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'prefork:%'",
            &[],
        )
        .unwrap()
        .get(0)
}

fn wait_fleet_backends(obs: &mut Observer, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = fleet_backends(obs);
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- tests ----------------------------------------------------------------

fn named(ctx: &mut Ctx) {
    let fleet = Fleet::start(ctx, &[("PF_PROCS", "3")]);
    fleet.wait_log("ready in", 3, Duration::from_secs(10));
    let children = fleet.wait_children(3, Duration::from_secs(5));
    let mut titles: Vec<String> = children
        .iter()
        .map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            String::from_utf8_lossy(&raw)
                .trim_end_matches('\0')
                .to_owned()
        })
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        ["prefork: child 1", "prefork: child 2", "prefork: child 3"]
    );
    let raw = fs::read(format!("/proc/{}/cmdline", fleet.pid())).unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("prefork: master"));
    assert_eq!(fleet.stop(), Some(0));
}

fn kill_child(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    // Long tasks: a killed child's backend is busy in pg_sleep and would
    // outlive it by seconds unless the master ends it.
    let fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "3"),
            ("PF_THREADS", "1"),
            ("PF_TASK_MS", "20000"),
        ],
    );
    let before = fleet.wait_children(3, Duration::from_secs(10));
    fleet.wait_log("ready in", 3, Duration::from_secs(10));
    let victim = before[0];
    let name = format!("prefork:child:{victim}");
    assert_eq!(obs.wait_for(&name, 1), 1, "the victim connected");
    // Kill it only once its backend is inside pg_sleep: killed earlier (an
    // idle backend between statements), the backend sees the socket close
    // and exits by itself, and the master has nothing to end.
    let deadline = Instant::now() + Duration::from_secs(10);
    while obs
        .client()
        .query_opt(
            "SELECT 1 FROM pg_stat_activity
             WHERE application_name = $1 AND state = 'active' AND query LIKE '%pg_sleep%'",
            &[&name],
        )
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the victim's task never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(victim, Signal::SIGKILL).unwrap();
    // The victim can still be listed for a moment after the kill.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet.children().contains(&victim) {
        assert!(Instant::now() < deadline, "the victim never died");
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = fleet.wait_children(3, Duration::from_secs(5));
    assert!(!after.contains(&victim));
    fleet.assert_no_zombies();
    assert_eq!(
        obs.wait_for(&name, 0),
        0,
        "the dead child's backend was ended"
    );
    fleet.wait_log("left by dead children", 1, Duration::from_secs(10));
    fleet.wait_log(
        "reason: signal (killed by SIGKILL)",
        1,
        Duration::from_secs(10),
    );
    assert_eq!(fleet.quit(), Some(0));
}

fn crash_loop(ctx: &mut Ctx) {
    let fleet = Fleet::start(
        ctx,
        &[("PF_PROCS", "2"), ("PF_THREADS", "1"), ("PF_TASK_MS", "50")],
    );
    fleet.wait_children(2, Duration::from_secs(10));
    let started = Instant::now();
    let mut kills = 0;
    while kills < 20 && started.elapsed() < Duration::from_secs(2) {
        for pid in fleet.children() {
            if kills < 20 && kill(pid, Signal::SIGKILL).is_ok() {
                kills += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("    {kills} kills in {:.1?}", started.elapsed());
    assert!(kills >= 10, "too few children to kill: {kills}");
    assert!(
        fleet.log_text().contains("respawning too fast"),
        "no backoff:\n{}",
        fleet.log_text()
    );
    let mut fleet = fleet;
    assert!(
        fleet.master.try_wait().unwrap().is_none(),
        "the master died"
    );
    // The backoff is capped at 5 s: the fleet is whole again soon after.
    fleet.wait_children(2, Duration::from_secs(8));
    fleet.assert_no_zombies();
    assert_eq!(fleet.stop(), Some(0));
}

fn crash_limit(ctx: &mut Ctx) {
    let mut fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "1"),
            ("PF_FAIL_BOOT", "1"),
            ("PF_CRASH_LIMIT", "3"),
        ],
    );
    let code = wait_exit(&mut fleet.master, Duration::from_secs(20));
    assert_eq!(code, Some(1), "log:\n{}", fleet.log_text());
    assert!(
        fleet.log_text().contains("crash limit"),
        "{}",
        fleet.log_text()
    );
}

fn refused_fork(ctx: &mut Ctx) {
    let mut fleet = Fleet::start(ctx, &[("PF_PROCS", "2"), ("PF_THREAD_IN_MASTER", "1")]);
    let children = fleet.wait_children(2, Duration::from_secs(10));
    // The master now has a second thread: replacing a child is refused.
    kill(children[0], Signal::SIGKILL).unwrap();
    let code = wait_exit(&mut fleet.master, Duration::from_secs(30));
    // Checked at once: the survivor was stopped and reaped by the master
    // before it exited, not left to PDEATHSIG.
    let survivor_alive = alive(children[1]);
    assert_eq!(code, Some(1), "log:\n{}", fleet.log_text());
    assert!(!survivor_alive, "the master exited before its child");
    assert!(
        fleet.log_text().contains("stopping the fleet"),
        "{}",
        fleet.log_text()
    );
}

fn graceful(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "2"),
            ("PF_THREADS", "2"),
            ("PF_TASK_MS", "700"),
        ],
    );
    fleet.wait_children(2, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_tasks(&mut obs, "started") < 4 {
        assert!(Instant::now() < deadline, "tasks never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fleet.stop(), Some(0));
    assert_eq!(
        count_tasks(&mut obs, "started"),
        0,
        "an in-flight task was cut short"
    );
    assert_eq!(count_tasks(&mut obs, "failed"), 0);
    assert!(count_tasks(&mut obs, "finished") >= 4);
    assert_eq!(
        wait_fleet_backends(&mut obs, 0),
        0,
        "backends left after exit"
    );
}

fn master_killed(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let mut fleet = Fleet::start(ctx, &[("PF_PROCS", "3"), ("PF_TASK_MS", "300")]);
    let children = fleet.wait_children(3, Duration::from_secs(10));
    fleet.wait_log("ready in", 3, Duration::from_secs(10));
    fleet.master.kill().unwrap(); // SIGKILL
    fleet.master.wait().unwrap();
    // PDEATHSIG stops them gracefully: each finishes its job (300 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    let orphans = loop {
        let orphans: Vec<_> = children.iter().filter(|pid| alive(**pid)).collect();
        if orphans.is_empty() || Instant::now() > deadline {
            break orphans;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        orphans.is_empty(),
        "children outlived the master: {orphans:?}"
    );
    assert_eq!(
        wait_fleet_backends(&mut obs, 0),
        0,
        "backends outlived the fleet"
    );
}

fn reload(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "2"),
            ("PF_THREADS", "2"),
            ("PF_TASK_MS", "100"),
        ],
    );
    let old = fleet.wait_children(2, Duration::from_secs(10));
    fleet.wait_log("ready in", 2, Duration::from_secs(10));
    fleet.signal(Signal::SIGHUP);
    // Capacity never drops: at every sample at least 2 children are alive.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = fleet.children();
        assert!(
            now.len() >= 2,
            "capacity dropped during the reload: {now:?}"
        );
        if now.len() == 2 && now.iter().all(|pid| !old.contains(pid)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reload did not finish:\n{}",
            fleet.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fleet.assert_no_zombies();
    assert_eq!(fleet.stop(), Some(0));
    assert_eq!(
        count_tasks(&mut obs, "failed"),
        0,
        "a task failed during the reload"
    );
    assert_eq!(count_tasks(&mut obs, "started"), 0, "a task was cut short");
}

fn scale(ctx: &mut Ctx) {
    let fleet = Fleet::start(ctx, &[("PF_PROCS", "2"), ("PF_THREADS", "1")]);
    fleet.wait_children(2, Duration::from_secs(10));
    fleet.signal(Signal::SIGTTIN);
    fleet.wait_children(3, Duration::from_secs(5));
    fleet.signal(Signal::SIGTTOU);
    // Two deliveries of one signal before the master reads it are one.
    fleet.wait_log("SIGTTOU: 2 children", 1, Duration::from_secs(5));
    fleet.signal(Signal::SIGTTOU);
    fleet.wait_children(1, Duration::from_secs(10));
    fleet.signal(Signal::SIGUSR1);
    fleet.wait_log("open connections", 1, Duration::from_secs(5));
    fleet.assert_no_zombies();
    assert_eq!(fleet.stop(), Some(0));
}

fn max_requests(ctx: &mut Ctx) {
    let fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "2"),
            ("PF_THREADS", "1"),
            ("PF_TASK_MS", "10"),
            ("PF_MAX_REQUESTS", "20"),
        ],
    );
    let first = fleet.wait_children(2, Duration::from_secs(10));
    fleet.wait_log("will be recycled: max requests", 2, Duration::from_secs(15));
    fleet.wait_log("replaced (max requests)", 2, Duration::from_secs(15));
    fleet.wait_log("reason: recycled_requests", 2, Duration::from_secs(15));
    let later = fleet.children();
    assert!(
        later.iter().any(|pid| !first.contains(pid)),
        "no child was replaced"
    );
    fleet.assert_no_zombies();
    assert_eq!(fleet.stop(), Some(0));
}

fn stuck(ctx: &mut Ctx) {
    let env = [
        ("PF_PROCS", "1"),
        ("PF_THREADS", "2"),
        ("PF_STUCK", "1"),
        ("PF_TIMEOUT", "1"),
    ];
    stuck_child_replaced(ctx, &env, &["stuck in \"stuck job\"", "reason: stuck"]);
}

/// A unit of work with a time limit of its own (a job's `--timeout`) is
/// held to it by the master even when the fleet has none.
fn stuck_own_limit(ctx: &mut Ctx) {
    let env = [
        ("PF_PROCS", "1"),
        ("PF_THREADS", "1"),
        ("PF_STUCK", "1"),
        ("PF_STUCK_LIMIT_MS", "300"),
    ];
    stuck_child_replaced(ctx, &env, &["(timeout 300ms); killing"]);
}

/// Starts a fleet of one child that gets stuck; waits for the master's log
/// lines `says` and for the child's replacement; no zombie is left.
fn stuck_child_replaced(ctx: &mut Ctx, env: &[(&str, &str)], says: &[&str]) {
    let fleet = Fleet::start(ctx, env);
    let first = fleet.wait_children(1, Duration::from_secs(10));
    for line in says {
        fleet.wait_log(line, 1, Duration::from_secs(10));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet.children().first() == first.first() {
        assert!(Instant::now() < deadline, "stuck child not replaced");
        std::thread::sleep(Duration::from_millis(20));
    }
    fleet.assert_no_zombies();
    assert_eq!(fleet.quit(), Some(0));
}

/// A fake systemd: the master, with `NOTIFY_SOCKET` and `WATCHDOG_USEC`
/// set, says READY once its children are up, RELOADING then READY around a
/// HUP, STOPPING on TERM, and WATCHDOG all along.
fn systemd_notify(ctx: &mut Ctx) {
    use std::os::unix::net::UnixDatagram;
    let path = std::env::temp_dir().join(format!("prefork-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "2"),
            ("PF_THREADS", "1"),
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut heard: Vec<String> = Vec::new();
    let listen_until = |heard: &mut Vec<String>, want: &str, within: Duration| {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = message.lines().any(|l| l == want);
                heard.push(message);
                if found {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no {want} in {heard:?}");
        }
    };
    listen_until(&mut heard, "READY=1", Duration::from_secs(10));
    assert_eq!(fleet.children().len(), 2, "READY before the children");
    listen_until(&mut heard, "WATCHDOG=1", Duration::from_secs(2));
    fleet.signal(Signal::SIGHUP);
    listen_until(&mut heard, "RELOADING=1", Duration::from_secs(5));
    listen_until(&mut heard, "READY=1", Duration::from_secs(15));
    listen_until(&mut heard, "WATCHDOG=1", Duration::from_secs(2));
    fleet.signal(Signal::SIGTERM);
    listen_until(&mut heard, "STOPPING=1", Duration::from_secs(5));
    let status = heard
        .iter()
        .any(|m| m.contains("STATUS=2/2 children ready"));
    assert!(status, "no STATUS line: {heard:?}");
    assert_eq!(fleet.stop(), Some(0));
    let _ = std::fs::remove_file(&path);
}

fn hung_boot(ctx: &mut Ctx) {
    let fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "1"),
            ("PF_HANG_BOOT", "1"),
            ("PF_BOOT_TIMEOUT", "1"),
        ],
    );
    let first = fleet.wait_children(1, Duration::from_secs(10));
    fleet.wait_log("boot timeout", 1, Duration::from_secs(10));
    fleet.wait_log("reason: boot_timeout", 1, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet.children().first() == first.first() {
        assert!(Instant::now() < deadline, "hung child not replaced");
        std::thread::sleep(Duration::from_millis(20));
    }
    fleet.assert_no_zombies();
    assert_eq!(fleet.quit(), Some(0));
}

/// examples/http_server.rs: the master binds, the children accept; every
/// request is answered, during a HUP reload too; TERM exits 0.
fn http_example(ctx: &mut Ctx) {
    use std::io::{BufRead, BufReader, Read, Write};
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/http_server");
    let mut server = std::process::Command::new(&example)
        .args(["127.0.0.1:0", "--procs", "2", "--threads", "2"])
        .env("DATABASE_URL", &ctx.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("running {example:?}: {e}"));
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("the address")
        .to_owned();
    let get = |path: &str| -> String {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    let pid = Pid::from_raw(server.id() as i32);
    for i in 0..60 {
        if i == 20 {
            kill(pid, Signal::SIGHUP).unwrap();
        }
        let response = get(&format!("/r{i}"));
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "request {i}: {response}"
        );
        assert!(response.contains(&format!("path /r{i}")) && response.contains("prefork:child:"));
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(pid, Signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(&mut server, Duration::from_secs(30)), Some(0));
}

fn max_lifetime(ctx: &mut Ctx) {
    let fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "2"),
            ("PF_THREADS", "1"),
            ("PF_MAX_LIFETIME", "1"),
        ],
    );
    let first = fleet.wait_children(2, Duration::from_secs(10));
    fleet.wait_log("will be recycled: max lifetime", 2, Duration::from_secs(10));
    fleet.wait_log("replaced (max lifetime)", 2, Duration::from_secs(10));
    assert!(fleet.children().iter().any(|pid| !first.contains(pid)));
    fleet.assert_no_zombies();
    assert_eq!(fleet.stop(), Some(0));
}

fn reload_on_rss(ctx: &mut Ctx) {
    // 1 MB: every child is over it as soon as it is ready.
    let fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "1"),
            ("PF_THREADS", "1"),
            ("PF_RELOAD_ON_RSS", "1"),
        ],
    );
    fleet.wait_log("memory over its limit", 2, Duration::from_secs(10));
    fleet.wait_log(
        "replaced (memory over its limit)",
        1,
        Duration::from_secs(10),
    );
    fleet.assert_no_zombies();
    assert_eq!(fleet.stop(), Some(0));
}

fn max_memory(ctx: &mut Ctx) {
    // 1 MB of PSS (each child holds 4 of its own), two readings a second
    // apart: a child is recycled a second or more after it is ready, not
    // at once.
    let fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "1"),
            ("PF_THREADS", "1"),
            ("PF_MAX_MEMORY", "1"),
            ("PF_BALLAST_MB", "4"),
        ],
    );
    fleet.wait_log("ready in", 1, Duration::from_secs(10));
    let ready = std::time::Instant::now();
    fleet.wait_log("memory over its limit", 1, Duration::from_secs(10));
    let took = ready.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "recycled {took:?} after ready: one reading was enough"
    );
    fleet.wait_log("reason: recycled_memory", 1, Duration::from_secs(10));
    fleet.assert_no_zombies();
    assert_eq!(fleet.stop(), Some(0));
}

/// Ctrl-C in a terminal sends INT to the whole foreground process group:
/// the children ignore it, the master stops the fleet gracefully, once.
fn ctrl_c(ctx: &mut Ctx) {
    let mut obs = Observer::new(&ctx.url);
    let mut fleet = Fleet::start(
        ctx,
        &[
            ("PF_PROCS", "2"),
            ("PF_THREADS", "2"),
            ("PF_TASK_MS", "500"),
        ],
    );
    fleet.wait_children(2, Duration::from_secs(10));
    fleet.wait_log("ready in", 2, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_tasks(&mut obs, "started") < 2 {
        assert!(Instant::now() < deadline, "tasks never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let group = Pid::from_raw(-fleet.pid().as_raw());
    kill(group, Signal::SIGINT).unwrap();
    fleet.wait_log("SIGINT: graceful stop", 1, Duration::from_secs(5));
    kill(group, Signal::SIGINT).unwrap(); // an impatient second Ctrl-C
    assert_eq!(
        wait_exit(&mut fleet.master, Duration::from_secs(30)),
        Some(0)
    );
    let log = fleet.log_text();
    assert_eq!(log.matches("SIGINT: graceful stop").count(), 1, "{log}");
    assert_eq!(
        count_tasks(&mut obs, "started"),
        0,
        "an in-flight task was cut short"
    );
    assert_eq!(count_tasks(&mut obs, "failed"), 0);
}
