//! Leases and liveness, in real processes against a real server: a job
//! runs once however long it runs, and a master stopped alone loses none
//! of its children's jobs (see `queue/lease.rs`).

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use cli::{Master, count, reset};
use common::{Ctx, Observer, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn main() {
    common::main(
        fork_safe::cluster::Builder::new().max_connections(60),
        |_| {},
        &[
            (
                "a_job_longer_than_its_lease_runs_once_with_two_fleets",
                longer_than_lease,
            ),
            (
                "a_master_stopped_alone_keeps_its_childrens_jobs",
                master_stopped_alone,
            ),
            (
                "with_the_server_frozen_the_master_replaces_a_child_and_stops_at_once",
                frozen_server,
            ),
            (
                "children_killed_35_times_fail_no_job_that_never_ran",
                killed_children,
            ),
            ("slow_sql_jobs_run_on_every_worker", slow_sql),
            (
                "ten_thousand_due_schedules_fire_once_each_with_the_loop_live",
                many_schedules,
            ),
            (
                "a_role_limited_to_6_connections_fails_no_job_at_one_attempt",
                connection_limit,
            ),
            (
                "terminated_backends_fail_no_job_at_one_attempt",
                terminated_backends,
            ),
            (
                "programs_start_without_the_fleets_credentials_if_asked",
                withheld_credentials,
            ),
            ("a_job_that_kills_its_child_fails_alone", poison_job),
            (
                "a_dead_hosts_jobs_under_rescue_after_forever_come_back_on_release",
                released_by_hand,
            ),
            (
                "with_the_network_partitioned_the_master_stays_live_and_connections_give_up",
                partitioned,
            ),
        ],
        &[],
    )
}

/// A program that notes each start of its job in `log`, then sleeps
/// `secs`.
fn sleeper(log: &Path, secs: u32) -> String {
    format!(
        "echo \"start $PREFORK_JOB_ID\" >> {}; sleep {secs}",
        log.display()
    )
}

/// How many times each job started, by the log.
fn starts(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn fleet(ctx: &Ctx, extra: &[&str], program: &str) -> Master {
    let mut args = vec!["--procs", "1", "--threads", "4"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--exec", "sh", "-c", program]);
    Master::start(&ctx.url, &args)
}

fn done(obs: &mut Observer) -> i64 {
    count(
        obs,
        "SELECT count(*) FROM prefork.jobs WHERE state = 'done'",
    )
}

fn stop(master: &mut Master) {
    kill(master.pid(), Signal::SIGTERM).unwrap();
    let (code, err) = master.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
}

/// Two jobs of 8 s under `--lease 3s`, worked by two fleets: the claim's
/// own hold runs out while they run, but their child's lease is renewed,
/// so the other fleet takes neither; each runs once and is done.
fn longer_than_lease(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let log = ctx.socket_dir.join("lease-starts.log");
    let _ = std::fs::remove_file(&log);
    cli::enqueue_lines(&ctx.url, "1\n2\n", &[]);
    let program = sleeper(&log, 8);
    let lease = ["--lease", "3s", "--rescue-after", "3s"];
    let mut first = fleet(ctx, &lease, &program);
    wait_until("both jobs start", Duration::from_secs(30), || {
        starts(&log).len() == 2
    });
    let mut second = fleet(ctx, &lease, &program);
    wait_until("both jobs done", Duration::from_secs(60), || {
        done(&mut obs) == 2
    });
    stop(&mut first);
    stop(&mut second);
    assert_eq!(starts(&log).len(), 2, "a job ran twice: {:?}", starts(&log));
    // Stopped cleanly, the fleets leave no lease and no master behind.
    for table in ["children", "masters"] {
        let left = count(&mut obs, &format!("SELECT count(*) FROM prefork.{table}"));
        assert_eq!(left, 0, "rows left in {table}");
    }
}

/// The master alone is stopped for 12 s while its child runs 4 jobs of
/// 6 s; a second fleet with `--rescue-after 3s` works the same queue. The
/// child renews its own lease, so nothing runs twice.
fn master_stopped_alone(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let log = ctx.socket_dir.join("stopped-starts.log");
    let _ = std::fs::remove_file(&log);
    cli::enqueue_lines(&ctx.url, "1\n2\n3\n4\n", &[]);
    let program = sleeper(&log, 6);
    let rescue = ["--rescue-after", "3s"];
    let mut first = fleet(ctx, &rescue, &program);
    wait_until("four jobs start", Duration::from_secs(30), || {
        starts(&log).len() == 4
    });
    kill(first.pid(), Signal::SIGSTOP).unwrap();
    let mut second = fleet(ctx, &rescue, &program);
    std::thread::sleep(Duration::from_secs(12));
    kill(first.pid(), Signal::SIGCONT).unwrap();
    wait_until("four jobs done", Duration::from_secs(60), || {
        done(&mut obs) == 4
    });
    stop(&mut first);
    stop(&mut second);
    assert_eq!(starts(&log).len(), 4, "a job ran twice: {:?}", starts(&log));
}

/// Under `--rescue-after forever` leases never lapse: a fleet killed whole
/// (its master stopped first, so no handover runs) keeps its jobs
/// running until `prefork jobs release HOST` hands them back, which
/// refuses while the children's leases were renewed lately, unless
/// `--force`.
fn released_by_hand(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let log = ctx.socket_dir.join("forever-starts.log");
    let _ = std::fs::remove_file(&log);
    cli::enqueue_lines(&ctx.url, "1\n2\n3\n", &[]);
    let mut first = fleet(ctx, &["--rescue-after", "forever"], &sleeper(&log, 60));
    wait_until("three jobs start", Duration::from_secs(30), || {
        starts(&log).len() == 3
    });
    kill(first.pid(), Signal::SIGSTOP).unwrap();
    for child in common::children_of(first.pid()) {
        let _ = kill(child, Signal::SIGKILL);
    }
    kill(first.pid(), Signal::SIGKILL).unwrap();
    let _ = first.wait(Duration::from_secs(10));
    let host: String = obs
        .client()
        .query_one("SELECT host FROM prefork.children LIMIT 1", &[])
        .unwrap()
        .get(0);
    let running = |obs: &mut Observer| {
        count(
            obs,
            "SELECT count(*) FROM prefork.jobs_live WHERE state = 'running'",
        )
    };
    assert_eq!(running(&mut obs), 3, "nothing lapses under forever");
    let release = |extra: &[&str]| {
        let mut args = vec!["jobs", "release"];
        args.extend_from_slice(extra);
        cli::prefork(&ctx.url, &args).output().unwrap()
    };
    let out = release(&["no-such-host"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no child of any fleet is no-such-host"),
        "{err}"
    );
    let out = release(&[&host]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("it may be alive (--force if it is not)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(running(&mut obs), 3, "a refusal changes nothing");
    let out = release(&[&host, "--force"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("requeued 3 job(s)"), "{said}");
    let back = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs_live
         WHERE state = 'queued' AND suspect AND attempts = 0",
    );
    assert_eq!(
        back, 3,
        "queued again as suspects, their attempt given back"
    );
    assert_eq!(
        count(&mut obs, "SELECT count(*) FROM prefork.children"),
        0,
        "the dead children's rows went with their leases"
    );
}

/// A fleet of 2 x 2 working 5 ms `--sql` jobs, with a short graceful
/// timeout and its status at `addr`: what the frozen-server and partition
/// tests supervise.
fn busy_fleet(addr: &str) -> [&str; 10] {
    [
        "--procs",
        "2",
        "--threads",
        "2",
        "--graceful-timeout",
        "1s",
        "--status-addr",
        addr,
        "--sql",
        "INSERT INTO effects SELECT $1::int FROM pg_sleep(0.005)",
    ]
}

/// The server's processes (the postmaster and every process it forked)
/// stopped with SIGSTOP; continued when dropped, whatever the test did.
struct Frozen(Vec<Pid>);

impl Frozen {
    fn freeze(obs: &mut Observer) -> Frozen {
        let backend: i32 = obs
            .client()
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).unwrap();
        // The fields after the command's closing parenthesis: state, ppid.
        let ppid: i32 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let postmaster = Pid::from_raw(ppid);
        kill(postmaster, Signal::SIGSTOP).unwrap();
        let mut pids = vec![postmaster];
        for pid in common::children_of(postmaster) {
            if kill(pid, Signal::SIGSTOP).is_ok() {
                pids.push(pid);
            }
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in self.0.iter().rev() {
            let _ = kill(*pid, Signal::SIGCONT);
        }
    }
}

/// `/status` of a fleet serving it on the Unix socket `socket`, within a
/// second, or `None`.
fn status(socket: &Path) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    serde_json::from_str(answer.split_once("\r\n\r\n")?.1).ok()
}

/// The pid of each child in `/status`, by slot.
fn children(status: &serde_json::Value) -> Vec<(u64, i64)> {
    status["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["slot"].as_u64().unwrap(), c["pid"].as_i64().unwrap()))
        .collect()
}

/// Waits up to `within` for `/status` to satisfy `done`; how long it took.
fn status_until(
    socket: &Path,
    what: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if status(socket).is_some_and(|s| done(&s)) {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The master behind `socket` answers `/status` within a second, and
/// replaces a child killed now within a second, with `under` (what is
/// wrong with the server) said in the figures it prints.
fn supervises_at_once(socket: &Path, under: &str) {
    let took = status_until(socket, "status answers", Duration::from_secs(1), |_| true);
    println!("    /status answered in {took:.1?} with {under}");
    let (slot, victim) = children(&status(socket).expect("status"))[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let took = status_until(
        socket,
        "the killed child replaced",
        Duration::from_secs(1),
        |s| {
            children(s)
                .iter()
                .any(|(sl, pid)| *sl == slot && *pid != victim)
        },
    );
    println!("    the killed child was replaced in {took:.1?}");
}

/// The server frozen (its postmaster and backends stopped) under a busy
/// fleet: the master's loop does not wait on it. Its status endpoint
/// answers, a killed child is replaced within a second, TERM is taken
/// within a second, and the master exits within its graceful timeout and
/// the last handover's limit (5 s), the server still frozen. Thawed,
/// nothing ran twice.
fn frozen_server(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let lines: String = (1..=5_000).map(|i| format!("{i}\n")).collect();
    cli::enqueue_lines(&ctx.url, &lines, &[]);
    let socket = ctx.socket_dir.join("frozen.sock");
    let addr = socket.to_string_lossy().into_owned();
    let mut master = Master::start(&ctx.url, &busy_fleet(&addr));
    wait_until("the fleet works", Duration::from_secs(30), || {
        count(&mut obs, "SELECT count(*) FROM effects") >= 100
    });
    let frozen = Frozen::freeze(&mut obs);
    std::thread::sleep(Duration::from_secs(1));
    supervises_at_once(&socket, "the server frozen");
    kill(master.pid(), Signal::SIGTERM).unwrap();
    let took = status_until(&socket, "TERM taken", Duration::from_secs(1), |s| {
        s["stopping"] == serde_json::Value::Bool(true)
    });
    println!("    TERM was taken in {took:.1?}");
    let stopping = Instant::now();
    let (code, err) = master.wait(Duration::from_secs(20));
    println!(
        "    the master exited {:.1?} after TERM, the server still frozen",
        stopping.elapsed()
    );
    assert_eq!(code, 0, "{err}");
    drop(frozen);
    // Thawed, the backends of the children killed while the server was
    // frozen may still be there: they end with the test (the next one's
    // reset deadlocked with one).
    obs.client()
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name LIKE 'prefork:%'",
        )
        .unwrap();
    wait_until("the fleet's backends gone", Duration::from_secs(30), || {
        count(
            &mut obs,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'prefork:%'",
        ) == 0
    });
    let twice = count(&mut obs, "SELECT count(*) - count(DISTINCT v) FROM effects");
    assert_eq!(twice, 0, "an effect ran twice");
}

/// 20,000 jobs of 10 ms at the default three attempts, a child SIGKILLed
/// every 150 ms, 35 times or more: the jobs a killed child had claimed but
/// not started get their attempt back (only those its workers were
/// running count one), so no job fails, and every effect is there once.
fn killed_children(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let lines: String = (1..=20_000).map(|i| format!("{i}\n")).collect();
    cli::enqueue_lines(&ctx.url, &lines, &[]);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "4",
            "--threads",
            "8",
            "--drain",
            "--sql",
            "INSERT INTO effects SELECT $1::int FROM pg_sleep(0.01)",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut kills = 0;
    while master.running() {
        assert!(Instant::now() < deadline, "the fleet never drained");
        std::thread::sleep(Duration::from_millis(150));
        if kills < 60 {
            if let Some(child) = fleet_child(master.pid()) {
                if kill(child, Signal::SIGKILL).is_ok() {
                    kills += 1;
                }
            }
        }
    }
    let (code, err) = master.wait(Duration::from_secs(5));
    assert_eq!(code, 0, "{err}");
    let spent = count(
        &mut obs,
        "SELECT count(*) FILTER (WHERE attempts > 1 OR suspect) FROM prefork.jobs",
    );
    println!("    {kills} children killed; {spent} job(s) ran more than once");
    assert!(kills >= 35, "too few kills: {kills}");
    let failed = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE state = 'failed'",
    );
    assert_eq!(failed, 0, "jobs failed that their code never failed");
    cli::assert_all_done_once(&mut obs, 20_000);
}

/// A child of the fleet of `master` (not a handover process), by its
/// title.
fn fleet_child(master: Pid) -> Option<Pid> {
    common::children_of(master).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(": child"))
    })
}

/// Three `--sql` jobs of 3 s at 1 x 3: the three statements run at once,
/// one per worker (one batch carried them all, one after another).
fn slow_sql(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    cli::enqueue_lines(&ctx.url, "1\n2\n3\n", &[]);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "3",
            "--drain",
            "--sql",
            "INSERT INTO effects SELECT $1::int FROM pg_sleep(3)",
        ],
    );
    let mut most = 0;
    while master.running() {
        let active = count(
            &mut obs,
            "SELECT count(*) FROM pg_stat_activity
             WHERE state = 'active' AND query LIKE '%run_sql%' AND pid <> pg_backend_pid()",
        );
        most = most.max(active);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, err) = master.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    println!("    at most {most} statements at once");
    assert_eq!(most, 3, "the slow statements did not run side by side");
    cli::assert_all_done_once(&mut obs, 3);
}

/// 10,000 schedules due at once, on a queue no fleet works: each fires
/// exactly once, and the master's loop stays live meanwhile (the
/// schedules fire in the children, in chunks: it lagged 5.7 to 56 s when
/// the master fired them a round trip each).
fn many_schedules(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let out = cli::prefork(
        &ctx.url,
        &[
            "schedule",
            "add",
            "s0",
            "--cron",
            "0 0 1 1 *",
            "--queue",
            "later",
            "x",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    obs.client()
        .batch_execute(
            "INSERT INTO prefork.schedules (name, cron, queue, payload, next_at)
             SELECT 's' || i, '0 0 1 1 *', 'later', i::text, now() - interval '1 second'
             FROM generate_series(1, 10000) AS i",
        )
        .unwrap();
    let socket = ctx.socket_dir.join("schedules.sock");
    let addr = socket.to_string_lossy().into_owned();
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--status-addr",
            &addr,
            "--sql",
            "SELECT 1",
        ],
    );
    let started = Instant::now();
    let mut worst_lag = 0.0f64;
    let queued = |obs: &mut Observer| {
        count(
            obs,
            "SELECT count(*) FROM prefork.jobs WHERE queue = 'later'",
        )
    };
    while queued(&mut obs) < 10_000 {
        assert!(started.elapsed() < Duration::from_secs(60), "not all fired");
        if let Some(s) = status(&socket) {
            worst_lag = worst_lag.max(s["master"]["loop_lag_seconds"].as_f64().unwrap_or(0.0));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "    10,000 due schedules queued in {:.1?}; the master's loop lagged {:.1} ms at most",
        started.elapsed(),
        worst_lag * 1e3
    );
    std::thread::sleep(Duration::from_secs(1));
    stop(&mut master);
    assert_eq!(queued(&mut obs), 10_000, "a schedule fired twice");
    assert!(worst_lag < 0.1, "the master's loop lagged {worst_lag} s");
    let ticked = count(
        &mut obs,
        "SELECT count(*) FROM prefork.schedules WHERE last_job IS NOT NULL AND next_at > now()",
    );
    assert_eq!(ticked, 10_000);
}

/// What a role needs to work the queue (as the README lists).
const GRANTS: &str = "GRANT USAGE ON SCHEMA prefork TO limited;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA prefork TO limited;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA prefork TO limited;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA prefork TO limited;
    GRANT INSERT ON effects TO limited;";

/// 3,000 jobs at one attempt each, worked at 4 x 8 by a role allowed 6
/// connections: the refused connections are the fleet's failure, not the
/// jobs', so none fails (192 failed "interrupted", never having run).
fn connection_limit(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let out = cli::prefork(&ctx.url, &["status"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    obs.client()
        .batch_execute(&format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'limited') THEN
                     CREATE ROLE limited LOGIN CONNECTION LIMIT 6;
                 END IF;
             END $$;
             {GRANTS}"
        ))
        .unwrap();
    let lines: String = (1..=3_000).map(|i| format!("{i}\n")).collect();
    cli::enqueue_lines(&ctx.url, &lines, &["--max-attempts", "1"]);
    let url = format!("{} user=limited", ctx.url);
    let mut master = Master::start(
        &url,
        &[
            "--procs",
            "4",
            "--threads",
            "8",
            "--drain",
            "--sql",
            "INSERT INTO effects SELECT $1::int FROM pg_sleep(0.001)",
        ],
    );
    let (code, err) = master.wait(Duration::from_secs(240));
    assert_eq!(code, 0, "{}", err.lines().last().unwrap_or(""));
    let failed = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE state = 'failed'",
    );
    assert_eq!(failed, 0, "jobs failed that never ran");
    cli::assert_all_done_once(&mut obs, 3_000);
}

/// 3,000 jobs at one attempt each while the fleet's backends are
/// terminated twice a second (pg_terminate_backend): none fails.
fn terminated_backends(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let lines: String = (1..=3_000).map(|i| format!("{i}\n")).collect();
    cli::enqueue_lines(&ctx.url, &lines, &["--max-attempts", "1"]);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "4",
            "--drain",
            "--sql",
            "INSERT INTO effects SELECT $1::int FROM pg_sleep(0.005)",
        ],
    );
    let mut killer = Observer::new(&ctx.url);
    let mut terminated = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while master.running() {
        assert!(Instant::now() < deadline, "the fleet never drained");
        std::thread::sleep(Duration::from_millis(500));
        terminated += count(
            &mut killer,
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name LIKE 'prefork:child:%') AS t",
        );
    }
    let (code, err) = master.wait(Duration::from_secs(5));
    assert_eq!(code, 0, "{err}");
    println!("    {terminated} backends terminated");
    assert!(terminated >= 10, "too few terminations: {terminated}");
    let failed = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE state = 'failed'",
    );
    assert_eq!(failed, 0, "jobs failed that their code never failed");
    cli::assert_all_done_once(&mut obs, 3_000);
}

/// A program inherits the fleet's environment, its `DATABASE_URL`
/// (password included) too; with `--withhold-credentials` it gets none of
/// the fleet's database settings.
fn withheld_credentials(ctx: &mut Ctx) {
    for withhold in [false, true] {
        let _obs = reset(&ctx.url);
        let file = ctx.socket_dir.join(format!("env-{withhold}.txt"));
        cli::enqueue_lines(&ctx.url, "1\n", &[]);
        let program = format!("env > {}", file.display());
        let mut args = vec!["--procs", "1", "--threads", "1", "--drain"];
        if withhold {
            args.push("--withhold-credentials");
        }
        args.extend_from_slice(&["--exec", "sh", "-c", &program]);
        let out = cli::prefork(&ctx.url, &args)
            .env("PGPASSWORD", "secret")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(&file).unwrap();
        let has = |name: &str| env.lines().any(|l| l.starts_with(&format!("{name}=")));
        assert_eq!(has("DATABASE_URL"), !withhold, "withhold {withhold}: {env}");
        assert_eq!(has("PGPASSWORD"), !withhold, "withhold {withhold}: {env}");
        assert!(has("PREFORK_JOB_ID"), "{env}");
    }
}

/// One job of 61 kills its child each time it runs, the others take
/// 200 ms, at 2 x 4 with 3 attempts: the first death gives every job
/// running then its attempt back, as a suspect; suspects run alone, so
/// the poison job spends its 3 attempts on deaths of its own and fails,
/// and no other job loses an attempt (lease rules 7 and 8).
fn poison_job(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let lines: String = (1..=61)
        .map(|i| match i {
            30 => "poison\n".to_owned(),
            i => format!("{i}\n"),
        })
        .collect();
    cli::enqueue_lines(&ctx.url, &lines, &["--max-attempts", "3"]);
    let program = "read p; if [ \"$p\" = poison ]; then kill -9 $PPID; sleep 5; fi; sleep 0.2";
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "4",
            "--drain",
            "--exec",
            "sh",
            "-c",
            program,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while master.running() {
        assert!(Instant::now() < deadline, "the fleet never drained");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, err) = master.wait(Duration::from_secs(5));
    assert_eq!(code, 0, "{err}");
    let rows = obs
        .client()
        .query(
            "SELECT payload, state, attempts, jsonb_array_length(errors)::int8
             FROM prefork.jobs WHERE payload = 'poison' OR state <> 'done'
                OR attempts <> 1 OR errors <> '[]'
             ORDER BY id",
            &[],
        )
        .unwrap();
    let seen: Vec<(String, String, i32, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        seen,
        [("poison".to_owned(), "failed".to_owned(), 3, 3)],
        "only the poison job may lose attempts"
    );
    let done = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE state = 'done'",
    );
    assert_eq!(done, 60);
}

/// A network namespace joined to this one by a veth pair: `10.77.0.1` on
/// this side, `10.77.0.2` inside. Removed when dropped.
struct Partition {
    ns: String,
    link: String,
    peer: String,
}

impl Partition {
    /// The namespace and its link, or `None` where they cannot be made
    /// (not root, no `ip`).
    fn create() -> Option<Partition> {
        let n = std::process::id() % 100_000;
        let p = Partition {
            ns: format!("pfpart{n}"),
            link: format!("pfh{n}"),
            peer: format!("pfn{n}"),
        };
        p.remove();
        let (ns, link, peer) = (p.ns.as_str(), p.link.as_str(), p.peer.as_str());
        let steps: [&[&str]; 8] = [
            &["netns", "add", ns],
            &["link", "add", link, "type", "veth", "peer", "name", peer],
            &["link", "set", peer, "netns", ns],
            &["addr", "add", "10.77.0.1/30", "dev", link],
            &["link", "set", link, "up"],
            &["-n", ns, "addr", "add", "10.77.0.2/30", "dev", peer],
            &["-n", ns, "link", "set", peer, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if !ip(step) {
                eprintln!("    cannot make a network namespace (ip {step:?} failed)");
                return None;
            }
        }
        Some(p)
    }

    /// Cuts the link (`false`) or heals it. Cut, whatever the namespace
    /// sends vanishes without an answer, as on a dead network: its frames
    /// go to a hardware address nobody has (a permanent neighbour entry),
    /// which the other side drops. (Taking the link down instead makes new
    /// connections fail at once, "no route to host".)
    fn link(&self, up: bool) {
        let (ns, peer) = (self.ns.as_str(), self.peer.as_str());
        let nobody = "02:00:00:00:00:01";
        let done = match up {
            false => ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                "10.77.0.1",
                "lladdr",
                nobody,
                "dev",
                peer,
                "nud",
                "permanent",
            ]),
            true => ip(&["-n", ns, "neigh", "del", "10.77.0.1", "dev", peer]),
        };
        assert!(done, "link {}", if up { "healed" } else { "cut" });
    }

    /// `program` with `args`, run inside the namespace.
    fn command(&self, program: &str, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, program]).args(args);
        cmd
    }

    fn remove(&self) {
        ip(&["link", "del", &self.link]);
        ip(&["netns", "del", &self.ns]);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.remove();
    }
}

fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fleet in a network namespace, its server across a veth link that is
/// then cut (a partition: packets vanish, nothing answers). The
/// master's loop does not wait on the server: a killed child is replaced
/// within a second and TERM is taken within a second. The client side
/// gives up in seconds, not after the kernel's minutes: a command's
/// connect fails within the connect timeout (10 s), and the workers'
/// statements in flight fail within `tcp_user_timeout` (15 s).
fn partitioned(ctx: &mut Ctx) {
    let Some(partition) = Partition::create() else {
        panic!("this test needs root and iproute2 (network namespaces)");
    };
    // A server of its own, listening on this side of the link.
    let hba = ctx.socket_dir.join("partition-hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all all 10.77.0.0/30 trust\n",
    )
    .unwrap();
    std::fs::set_permissions(&hba, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cluster = fork_safe::cluster::Builder::new()
        .setting("listen_addresses", "10.77.0.1")
        .setting("hba_file", &hba.to_string_lossy())
        .start()
        .expect("a cluster on the link");
    let local = cluster.connection_string();
    let across = local.replacen(
        &format!("host={}", cluster.socket_dir().display()),
        "host=10.77.0.1",
        1,
    );
    let mut obs = reset(&local);
    let lines: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    cli::enqueue_lines(&local, &lines, &[]);
    let socket = ctx.socket_dir.join("partition.sock");
    let addr = socket.to_string_lossy().into_owned();
    let mut fleet = partition.command(cli::BIN, &busy_fleet(&addr));
    fleet
        .env("DATABASE_URL", &across)
        .env("RUST_LOG", "warn")
        .env_remove("PGHOST")
        .env_remove("PGDATABASE");
    let mut master = Master::spawn(fleet);
    wait_until("the fleet works", Duration::from_secs(30), || {
        count(&mut obs, "SELECT count(*) FROM effects") >= 100
    });
    partition.link(false);
    let cut = Instant::now();
    supervises_at_once(&socket, "the network cut");
    // A command across the cut link gives up at its connect timeout.
    let started = Instant::now();
    let mut command = partition.command(cli::BIN, &["status"]);
    command
        .env("DATABASE_URL", &across)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut status_command = command.spawn().unwrap();
    let ended = loop {
        if let Some(code) = status_command.try_wait().unwrap() {
            break code;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = status_command.kill();
            panic!("prefork status across the cut link still connecting after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "    prefork status gave up after {:.1?} ({ended})",
        started.elapsed()
    );
    assert!(!ended.success());
    // The workers' statements in flight fail at tcp_user_timeout.
    wait_until(
        "the workers' statements time out",
        Duration::from_secs(25).saturating_sub(cut.elapsed()),
        || master.stderr_so_far().contains("Connection timed out"),
    );
    let said = master.stderr_so_far();
    let line = said
        .lines()
        .find(|l| l.contains("Connection timed out"))
        .unwrap_or("");
    println!(
        "    the workers' statements failed {:.1?} after the cut: {line}",
        cut.elapsed()
    );
    kill(master.pid(), Signal::SIGTERM).unwrap();
    let took = status_until(&socket, "TERM taken", Duration::from_secs(1), |s| {
        s["stopping"] == serde_json::Value::Bool(true)
    });
    println!("    TERM was taken in {took:.1?}");
    let (code, err) = master.wait(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
    partition.link(true);
}
