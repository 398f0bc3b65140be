//! The `prefork` command line against a real server, in real processes.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::process::Output;
use std::time::Duration;

use cli::{Master, assert_all_done_once, count, enqueue_lines, reset};
use common::{Ctx, Observer};

fn main() {
    common::main(
        fork_safe::cluster::Builder::new(),
        |_| {},
        &[
            ("bad_input_is_one_line_and_exit_2", bad_input),
            ("unreachable_database_is_exit_1", unreachable),
            ("enqueue_from_stdin_then_drain_with_sql", drain_sql),
            (
                "bad_payload_fails_alone_with_the_server_message",
                bad_payload,
            ),
            ("a_slow_sql_job_times_out_alone", sql_timeout),
            ("a_fleet_whose_jobs_keep_failing_says_so", failing_log),
            ("exec_handler_gets_payload_and_environment", exec_handler),
            ("exec_programs_start_clean_and_time_out_alone", exec_clean),
            (
                "a_killed_childs_programs_end_before_their_job_runs_again",
                killed_child_programs,
            ),
            (
                "a_stop_ends_programs_that_ignore_term",
                stop_ignoring_programs,
            ),
            ("a_second_master_on_one_pidfile_refuses", pidfile_lock),
            ("status_json_counts_states", status_json),
            ("bench_measures_and_leaves_nothing_behind", bench),
            (
                "enqueue_is_all_or_nothing_and_names_the_bad_line",
                enqueue_atomic,
            ),
            (
                "a_role_with_grants_only_enqueues_works_and_reads_status",
                least_privilege,
            ),
            ("strict_refuses_a_fleet_too_big_for_the_server", strict),
            ("quick_start_runs_on_an_embedded_database", quick_start),
            ("a_hup_while_the_master_starts_waits_for_it", hup_at_startup),
            (
                "as_pid_1_the_master_reaps_orphans_as_strangers",
                pid_1_reaps_strangers,
            ),
        ],
        &[],
    )
}

fn run(ctx: &Ctx, args: &[&str]) -> Output {
    cli::prefork(&ctx.url, args)
        .output()
        .expect("running prefork")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn bad_input(ctx: &mut Ctx) {
    let cases: &[&[&str]] = &[
        &["--procs", "0", "--sql", "SELECT 1"],
        &["--threads", "many", "--sql", "SELECT 1"],
        &["--timeout", "soon", "--sql", "SELECT 1"],
        &["--max-age", "old", "--sql", "SELECT 1"],
        &[
            "--sql",
            "SELECT 1",
            "--database-url",
            "host=/tmp port=notaport",
        ],
        &["--sql", "SELECT 1", "--exec", "true"],
        &["--sql", "SELECT 1", "--poll", "0"],
        &["--sql", "SELECT 1", "--keep-finished", "soon"],
        &["--sql", "SELEC $1"],
        &["--sql", ""],
        &["--sql", "  -- only a comment"],
        &["--sql", "SELECT $2::int"],
        &["--sql", "COMMIT"],
        &["--sql", "/* maintenance */ VACUUM effects"],
        &["--schema", "information_schema", "--sql", "SELECT 1"],
        &["--schema", "pg_catalog", "--sql", "SELECT 1"],
        &["enqueue"],
        &["--sql", "SELECT 1", "--lease", "10000000000000s"],
        &["--sql", "SELECT 1", "--timeout", "10000000000000s"],
        &["--sql", "SELECT 1", "--poll", "10000000000000s"],
        &["--sql", "INSERT INTO no_such_table VALUES ($1)"],
        &[
            "--sql",
            "SELECT 1",
            "--listen-url",
            "host=/tmp port=notaport",
        ],
        &[],
        &["--exec"],
        &["--exec", "/no/such/program"],
        &["--queue", "no spaces", "--sql", "SELECT 1"],
        &["--schema", "Bad-Schema", "--sql", "SELECT 1"],
        &["enqueue", "x", "--run-at", "not a time"],
        &["enqueue", "x", "--run-at", "infinity"],
        &["enqueue", "x", "--count", "0"],
        &["enqueue", "x", "--count", "100000000"],
        &["--no-such-flag"],
        &["--procs", "2", "status"],
        &["--threads", "2", "--sql", "SELECT 1", "enqueue", "x"],
        &["status", "--procs", "2"],
        // A configuration file of 4 GB was read whole.
        &["--config", "/dev/zero", "--sql", "SELECT 1"],
    ];
    for args in cases {
        let out = run(ctx, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // Every message names what is wrong, not only that something is.
        assert!(!err.trim_end().ends_with(':'), "{args:?}: cut short: {err}");
    }
    let named = |args: &[&str], what: &str| {
        let err = stderr(&run(ctx, args));
        assert!(err.contains(what), "{args:?}: {err} does not name {what:?}");
    };
    named(&["enqueue"], "<PAYLOAD>");
    named(&["--procs", "2", "status"], "--procs");
    named(&["--sql", "SELECT $2::int"], "$2");
    named(
        &[
            "--sql",
            "SELECT 1",
            "--database-url",
            "host=/tmp port=notaport",
        ],
        "port",
    );
    // An argument that is not UTF-8: one line, exit 2 (it panicked, 101).
    {
        use std::os::unix::ffi::OsStrExt;
        let out = cli::prefork(&ctx.url, &["status"])
            .arg(std::ffi::OsStr::from_bytes(b"\xff"))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("not valid UTF-8"), "{err}");
    }
    // A payload over the limit (16 MiB): one line naming it, nothing
    // queued, and the line is not held whole.
    {
        use std::io::Write;
        let mut child = cli::prefork(&ctx.url, &["enqueue", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(b"small\n");
            let _ = stdin.write_all(&vec![b'x'; 17 * 1024 * 1024]);
            let _ = stdin.write_all(b"\n");
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("line 2") && err.contains("over the limit"),
            "{err}"
        );
    }
    // Boolean environment variables read 1/0, yes/no, true/false, and a
    // fleet's one does not break another command (`man` exited 2).
    for value in ["1", "0", "yes", "no", "true", "false", "on", "off"] {
        let out = cli::prefork(&ctx.url, &["man"])
            .env("PREFORK_STRICT", value)
            .env("PREFORK_DRAIN", value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{value}: {}", stderr(&out));
    }
    // Nothing was queued by any of them.
    let mut obs = Observer::new(&ctx.url);
    let exists: bool = obs
        .client()
        .query_one("SELECT to_regclass('prefork.jobs') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    if exists {
        assert_eq!(count(&mut obs, "SELECT count(*) FROM prefork.jobs"), 0);
    }
}

fn unreachable(ctx: &mut Ctx) {
    let out = cli::prefork(&ctx.url, &["--sql", "SELECT 1"])
        .env(
            "DATABASE_URL",
            "host=/nonexistent-dir port=5432 user=x dbname=x",
        )
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

fn drain_sql(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let lines: String = (1..=500).map(|i| format!("{i}\n")).collect();
    enqueue_lines(&ctx.url, &lines, &[]);
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'queued'"
        ),
        500
    );
    let out = run(
        ctx,
        &[
            "--procs",
            "2",
            "--threads",
            "4",
            "--drain",
            "--sql",
            "INSERT INTO effects VALUES ($1::int)",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_all_done_once(&mut obs, 500);
    let backends = count(
        &mut obs,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'prefork:%'",
    );
    assert_eq!(backends, 0, "backends left after the master exited");
}

/// One job in 50 sleeps past `--timeout`: those fail with "timed out",
/// their statements cancelled on the server; their neighbours, in the same
/// batches, run once and are done.
fn sql_timeout(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let lines: String = (1..=200).map(|i| format!("{i}\n")).collect();
    enqueue_lines(&ctx.url, &lines, &["--max-attempts", "1"]);
    let out = run(
        ctx,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--timeout",
            "1s",
            "--drain",
            "--sql",
            "INSERT INTO effects SELECT $1::int \
             FROM pg_sleep(CASE WHEN $1::int % 50 = 0 THEN 3 ELSE 0 END)",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let failed: Vec<(String, String)> = obs
        .client()
        .query(
            "SELECT payload, last_error FROM prefork.jobs WHERE state = 'failed' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let payloads: Vec<&str> = failed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(payloads, ["50", "100", "150", "200"], "{failed:?}");
    for (_, error) in &failed {
        assert!(error.starts_with("timed out after 1s"), "{error}");
    }
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'"
        ),
        196
    );
    assert_eq!(count(&mut obs, "SELECT count(*) FROM effects"), 196);
    assert_eq!(
        count(&mut obs, "SELECT count(DISTINCT v) FROM effects"),
        196
    );
    assert_eq!(
        count(&mut obs, "SELECT count(*) FROM effects WHERE v % 50 = 0"),
        0
    );
}

/// Processes whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

/// A child SIGKILLed while its program runs background processes: the
/// master ends the program's whole group before the job is handed back,
/// so the retry never runs beside the previous attempt, and a stop ends
/// the retry's group too.
fn killed_child_programs(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "x\n", &["--max-attempts", "5"]);
    // Each run starts two background sleeps named for the run (a run
    // after a death keeps its attempt's number, given back).
    let runs = ctx.socket_dir.join("killed-child-runs");
    let _ = std::fs::remove_file(&runs);
    let script = format!(
        "n=$(($(cat {runs} 2>/dev/null || echo 0) + 1)); echo $n > {runs}; \
         sleep 41.$n & sleep 41.$n & wait",
        runs = runs.display()
    );
    let mut master = cli::Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "1",
            "--graceful-timeout",
            "1s",
            "--exec",
            "sh",
            "-c",
            &script,
        ],
    );
    let within = |what: &str, done: &mut dyn FnMut() -> bool| {
        common::wait_until(what, std::time::Duration::from_secs(20), done)
    };
    within("the first attempt's sleeps", &mut || {
        processes(&["sleep", "41.1"]).len() == 2
    });
    let child = cli::first_child(master.pid()).expect("a child");
    nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
    // The retry starts; by then nothing of the first attempt may be left.
    within("the second attempt's sleeps", &mut || {
        let retry = processes(&["sleep", "41.2"]);
        if !retry.is_empty() {
            let left = processes(&["sleep", "41.1"]);
            assert!(
                left.is_empty(),
                "the retry runs beside {left:?} of the first attempt"
            );
        }
        retry.len() == 2
    });
    nix::sys::signal::kill(master.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, err) = master.wait(std::time::Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    within("the retry's sleeps to end with the fleet", &mut || {
        processes(&["sleep", "41.2"]).is_empty()
    });
    // The run the killed child ran gave its attempt back (the job is a
    // suspect now); the retry, interrupted by the stop, is handed back
    // uncounted too.
    let attempts = count(
        &mut obs,
        "SELECT max(attempts)::int8 FROM prefork.jobs WHERE state = 'queued' AND suspect",
    );
    assert_eq!(attempts, 0);
}

/// A program that ignores TERM (and so do the processes it starts) does not
/// hold a stopping fleet: past the graceful timeout its group gets TERM,
/// then KILL after half the graceful timeout, and nothing is left.
fn stop_ignoring_programs(ctx: &mut Ctx) {
    reset(&ctx.url);
    enqueue_lines(&ctx.url, "x\ny\n", &[]);
    let mut master = cli::Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--graceful-timeout",
            "1s",
            "--exec",
            "sh",
            "-c",
            "trap '' TERM; sleep 41.7 & sleep 41.7; wait",
        ],
    );
    common::wait_until(
        "the programs to start",
        std::time::Duration::from_secs(20),
        || processes(&["sleep", "41.7"]).len() >= 4,
    );
    nix::sys::signal::kill(master.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, err) = master.wait(std::time::Duration::from_secs(10));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sending its programs TERM"), "{err}");
    common::wait_until(
        "the programs to end with the fleet",
        std::time::Duration::from_secs(5),
        || processes(&["sleep", "41.7"]).is_empty(),
    );
}

/// `prefork bench` drains its jobs, prints its figures, and drops its
/// scratch schema; the queue's own schema is untouched.
fn bench(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    for handler in ["noop", "sql"] {
        let out = run(
            ctx,
            &[
                "bench",
                "--procs",
                "1",
                "--threads",
                "2",
                "--jobs",
                "500",
                "--handler",
                handler,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(text.contains("drained 500 jobs"), "{text}");
        assert!(
            text.contains("jobs/s") && text.contains("CPU per job"),
            "{text}"
        );
    }
    let left = count(
        &mut obs,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'prefork_bench_%'",
    );
    assert_eq!(left, 0, "a scratch schema was left behind");
    let out = run(ctx, &["bench", "--handler", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `prefork enqueue -` fed `input`: its exit code and standard error.
fn enqueue_bytes(ctx: &Ctx, input: &[u8]) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = cli::prefork(&ctx.url, &["enqueue", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The command may stop reading at the bad line: a broken pipe is fine.
    let _ = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), stderr(&out))
}

/// A bad line queues nothing, and the message names it; a good stream is
/// queued whole.
fn enqueue_atomic(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let jobs = |obs: &mut Observer| count(obs, "SELECT count(*) FROM prefork.jobs");
    let mut lines: Vec<Vec<u8>> = (1..=25_000).map(|i| format!("{i}").into_bytes()).collect();
    lines[14_999] = b"15\x0000".to_vec();
    let (code, err) = enqueue_bytes(ctx, &lines.join(&b'\n'));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 15000") && err.contains("NUL"), "{err}");
    assert!(err.contains("nothing was queued"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(jobs(&mut obs), 0, "a failed enqueue left jobs queued");
    lines[14_999] = b"15\xff00".to_vec();
    let (code, err) = enqueue_bytes(ctx, &lines.join(&b'\n'));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 15000") && err.contains("UTF-8"), "{err}");
    assert_eq!(jobs(&mut obs), 0);
    lines[14_999] = b"15000".to_vec();
    let (code, err) = enqueue_bytes(ctx, &lines.join(&b'\n'));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(jobs(&mut obs), 25_000);
    assert_eq!(
        count(&mut obs, "SELECT count(DISTINCT payload) FROM prefork.jobs"),
        25_000
    );
    let out = run(ctx, &["enqueue", "copy", "--count", "30000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE payload = 'copy'"
        ),
        30_000
    );
}

/// The grants the README lists for a role that runs the queue but may
/// create nothing, applied after the schema's owner migrated it.
const GRANTS: &str = "
    GRANT USAGE ON SCHEMA prefork TO queue_worker;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA prefork TO queue_worker;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA prefork TO queue_worker;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA prefork TO queue_worker;";

/// A role with privileges on the schema's objects only (no CREATE on the
/// database or the schema) enqueues, works the queue and reads status.
fn least_privilege(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let out = run(ctx, &["status"]);
    assert!(out.status.success(), "migrating: {}", stderr(&out));
    obs.client()
        .batch_execute(&format!(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'queue_worker') THEN
                     CREATE ROLE queue_worker LOGIN;
                 END IF;
             END $$;
             REVOKE CREATE ON DATABASE postgres FROM PUBLIC;
             GRANT INSERT ON effects TO queue_worker;
             {GRANTS}"
        ))
        .unwrap();
    let url = format!("{} user=queue_worker", ctx.url);
    let may_create: bool = obs
        .client()
        .query_one(
            "SELECT has_database_privilege('queue_worker', current_database(), 'CREATE')
                 OR has_schema_privilege('queue_worker', 'prefork', 'CREATE')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!may_create, "the role must not be able to create anything");
    enqueue_lines(
        &url,
        &(1..=100).map(|i| format!("{i}\n")).collect::<String>(),
        &[],
    );
    let out = cli::prefork(
        &url,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--drain",
            "--sql",
            "INSERT INTO effects VALUES ($1::int)",
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "the fleet: {}", stderr(&out));
    let out = cli::prefork(&url, &["status", "--json"]).output().unwrap();
    assert!(out.status.success(), "status: {}", stderr(&out));
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains(r#""done":100"#), "{status}");
    assert_all_done_once(&mut obs, 100);
}

/// Every job fails, and keeps being retried: the master says so every
/// 10 s, with how many attempts of how many, in which queue.
fn failing_log(ctx: &mut Ctx) {
    let _obs = reset(&ctx.url);
    let lines: String = (1..=40).map(|i| format!("{i}\n")).collect();
    enqueue_lines(&ctx.url, &lines, &["--max-attempts", "100"]);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--sql",
            "SELECT 1 / ($1::int * 0)",
        ],
    );
    common::wait_until("the failing line", Duration::from_secs(15), || {
        master.stderr_so_far().contains("jobs are failing:")
    });
    let err = master.stderr_so_far();
    let line = err
        .lines()
        .find(|l| l.contains("jobs are failing:"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("queue \"default\": ") && line.contains("to be retried"),
        "{line}"
    );
    assert!(line.contains("prefork jobs show ID"), "{line}");
    nix::sys::signal::kill(master.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, err) = master.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
}

fn bad_payload(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "1\nabc\n3\n", &["--max-attempts", "2"]);
    let out = run(
        ctx,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--drain",
            "--sql",
            "INSERT INTO effects VALUES ($1::int)",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'"
        ),
        2
    );
    let row = obs
        .client()
        .query_one(
            "SELECT state, attempts, last_error FROM prefork.jobs WHERE payload = 'abc'",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "failed");
    assert_eq!(row.get::<_, i32>(1), 2, "retried up to --max-attempts");
    let error: &str = row.get(2);
    assert!(
        error.contains("invalid input syntax") && error.contains("22P02"),
        "{error}"
    );
    assert_eq!(count(&mut obs, "SELECT count(*) FROM effects"), 2);
}

fn exec_handler(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "hello\nworld\n", &["--max-attempts", "1"]);
    let script = "read x; if [ \"$x\" = world ]; then echo 'no world' >&2; exit 3; fi; \
                  echo \"$x from job $PREFORK_JOB_ID attempt $PREFORK_ATTEMPT on $PREFORK_QUEUE\"";
    let out = run(
        ctx,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--drain",
            "--exec",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = obs
        .client()
        .query(
            "SELECT payload, state, result, last_error FROM prefork.jobs ORDER BY id",
            &[],
        )
        .unwrap();
    let hello_result: &str = rows[0].get(2);
    assert_eq!(rows[0].get::<_, &str>(1), "done");
    assert!(
        hello_result.starts_with("hello from job ")
            && hello_result.contains("attempt 1 on default")
    );
    assert_eq!(rows[1].get::<_, &str>(1), "failed");
    assert!(rows[1].get::<_, &str>(3).contains("no world"));
}

/// A program starts in its own process group with default signals, an
/// empty mask and only descriptors 0-2 (not fd 10, which the launcher's
/// caller left open); past --timeout its group is stopped and its job fails
/// alone, without the master killing the child.
fn exec_clean(ctx: &mut Ctx) {
    use std::os::unix::process::CommandExt;
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "look\nhang\n", &["--max-attempts", "1"]);
    let script = "read x; if [ \"$x\" = hang ]; then sleep 30; fi; \
                  grep -E '^Sig(Blk|Ign)' /proc/self/status; ls -m /proc/$$/fd; \
                  echo pid $$ pgid $(cut -d' ' -f5 /proc/$$/stat)";
    let mut cmd = cli::prefork(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--drain",
            "--timeout",
            "1s",
            "--exec",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    // SAFETY: dup2 is async-signal-safe and touches only descriptors.
    unsafe {
        cmd.pre_exec(|| {
            if libc::dup2(2, 10) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = cmd.output().expect("running prefork");
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = obs
        .client()
        .query(
            "SELECT state, coalesce(result, ''), coalesce(last_error, '') FROM prefork.jobs ORDER BY id",
            &[],
        )
        .unwrap();
    let (state, result): (&str, &str) = (rows[0].get(0), rows[0].get(1));
    assert_eq!(state, "done", "{result}");
    assert!(result.contains("SigBlk:\t0000000000000000"), "{result}");
    assert!(result.contains("SigIgn:\t0000000000000000"), "{result}");
    let fds = result.lines().nth(2).unwrap_or_default();
    // `ls -m` with no pipeline: a pipe the shell opened for `| tr` could
    // still be open in it while `ls` reads its descriptors.
    assert_eq!(fds.trim(), "0, 1, 2", "{result}");
    let ids: Vec<&str> = result
        .lines()
        .last()
        .unwrap_or_default()
        .split(' ')
        .collect();
    assert_eq!(ids[1], ids[3], "own process group: {result}");
    let (state, error): (&str, &str) = (rows[1].get(0), rows[1].get(2));
    assert_eq!(state, "failed");
    assert!(error.contains("timed out after 1s"), "{error}");
    assert!(
        !stderr(&out).contains("killing"),
        "the master killed the child:\n{}",
        stderr(&out)
    );
}

/// The pidfile is held with flock: a second master on it refuses with one
/// line naming the first, and the first removes it when it stops.
fn pidfile_lock(ctx: &mut Ctx) {
    reset(&ctx.url);
    let dir = std::env::temp_dir().join(format!("prefork-pidfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("master.pid");
    let path = pidfile.to_str().unwrap();
    let args = ["--procs", "1", "--pidfile", path, "--sql", "SELECT $1"];
    let mut first = cli::Master::start(&ctx.url, &args);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let written = format!("{}\n", first.pid());
    while std::fs::read_to_string(&pidfile).ok().as_deref() != Some(written.as_str()) {
        assert!(std::time::Instant::now() < deadline, "no pidfile written");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let second = run(ctx, &args);
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "already running: {path} is held by master {}",
            first.pid()
        )),
        "{err}"
    );
    nix::sys::signal::kill(first.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, log) = first.wait(std::time::Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert!(!pidfile.exists(), "the pidfile outlived its master");
    let _ = std::fs::remove_dir_all(&dir);
}

fn status_json(ctx: &mut Ctx) {
    reset(&ctx.url);
    enqueue_lines(&ctx.url, "a\nb\n", &[]);
    let out = run(ctx, &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    for key in [
        "\"queued\":2",
        "\"running\":0",
        "\"done\":0",
        "\"failed\":0",
    ] {
        assert!(text.contains(key), "{key} missing: {text}");
    }
}

fn strict(ctx: &mut Ctx) {
    // (60 + 1) x (2 + 1) + 1 connections (a worker's each, a child's
    // keeper's each) cannot fit in a 100-connection server.
    let out = run(
        ctx,
        &[
            "--procs",
            "60",
            "--threads",
            "2",
            "--strict",
            "--sql",
            "SELECT 1",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("184 connections") && err.contains("free slots"),
        "{err}"
    );
    // Programs may hold a connection each: (20 + 1) x (2 x 2 + 1) + 1,
    // unless they say they hold none: (20 + 1) x (2 + 1) + 1 fits.
    let fleet = ["--procs", "20", "--threads", "2", "--strict"];
    let program = ["--exec", "true"];
    let out = run(ctx, &[&fleet[..], &program[..]].concat());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("106 connections"), "{err}");
    let none = ["--program-connections", "0", "--drain"];
    let out = run(ctx, &[&fleet[..], &none[..], &program[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The README's quick start: no database configured at all, so the fleet
/// starts a throwaway cluster, works a sample batch, drains, summarises,
/// and removes the cluster.
fn quick_start(_: &mut Ctx) {
    let out = std::process::Command::new(cli::BIN)
        .args([
            "--procs",
            "2",
            "--threads",
            "2",
            "--drain",
            "--sample",
            "300",
        ])
        .args(["--sql", "SELECT $1::int"])
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .env_remove("PGHOST")
        .env_remove("PGDATABASE")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("starting a throwaway PostgreSQL cluster"),
        "{err}"
    );
    assert!(err.contains("300 job(s) done, 0 failed"), "{err}");
    let dir = err
        .lines()
        .find_map(|l| l.strip_prefix("prefork: throwaway cluster at "))
        .expect("the cluster's directory is reported");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was not removed");
}

/// A reload sent while the master still starts up (here: while it queues
/// a big sample before forking) waits for it, rather than killing it with
/// HUP's default action.
fn hup_at_startup(ctx: &mut Ctx) {
    use nix::sys::signal::{Signal, kill};
    let mut obs = reset(&ctx.url);
    let mut master = cli::Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--drain",
            "--sample",
            "20000",
            "--sql",
            "SELECT $1",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(30));
    kill(master.pid(), Signal::SIGHUP).unwrap();
    let (code, err) = master.wait(std::time::Duration::from_secs(120));
    assert_eq!(code, 0, "the master died of an early HUP: {err}");
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'"
        ),
        20_000
    );
}

/// The master as PID 1 of a new PID namespace (a container's init): a
/// program's daemonised grandchild (`setsid`, so outside the program's
/// group) is re-parented to it when the program exits; the master reaps
/// it, logs it as a stranger, and neither counts it as a child nor
/// restarts anything for it.
fn pid_1_reaps_strangers(ctx: &mut Ctx) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    reset(&ctx.url);
    enqueue_lines(&ctx.url, "1\n2\n", &[]);
    let mut unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child=SIGTERM",
            cli::BIN,
            "--procs",
            "1",
            "--threads",
            "1",
            "--exec",
            "sh",
            "-c",
            "setsid sleep 0.3 & exit 0",
        ])
        .env("DATABASE_URL", &ctx.url)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs");
    let mut pipe = unshare.stderr.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let log = || seen.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while log().matches("reaped a stranger").count() < 2 {
        if let Ok(Some(status)) = unshare.try_wait() {
            panic!("the master in a PID namespace ended ({status}):\n{}", log());
        }
        assert!(Instant::now() < deadline, "no stranger reaped:\n{}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // unshare ignores TERM while it waits: the master, its child, gets it.
    let master = cli::first_child(nix::unistd::Pid::from_raw(unshare.id() as i32))
        .expect("the master under unshare");
    nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = unshare.wait().unwrap();
    reader.join().unwrap();
    let log = log();
    assert!(
        log.contains("master 1 starting"),
        "the master was not PID 1:\n{log}"
    );
    assert!(
        log.contains("0 restart(s)"),
        "a stranger counted as a child:\n{log}"
    );
    assert!(
        !log.contains("died:"),
        "a stranger was taken for a dying child:\n{log}"
    );
    assert!(
        status.success() || status.code().is_none(),
        "{status}: {log}"
    );
}
