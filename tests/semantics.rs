//! Job semantics, from the command line and SQL, in real processes against
//! a real server: priorities, several queues in order, unique keys under
//! concurrent enqueuers, cancel and retry, a job's own timeout, and the bad
//! input of `prefork jobs`.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::process::Output;
use std::time::Duration;

use cli::{Master, count, prefork, reset};
use common::{Ctx, Observer, wait_until};

fn main() {
    common::main(
        fork_safe::cluster::Builder::new().max_connections(60),
        |_| {},
        &[
            (
                "priorities_then_queues_in_the_order_given",
                priorities_and_queues,
            ),
            (
                "a_unique_key_queues_one_job_under_eight_enqueuers",
                unique_keys,
            ),
            ("cancel_a_queued_job_and_stop_a_running_program", cancel),
            (
                "an_urgent_job_overtakes_a_backlog_being_worked",
                urgent_overtakes,
            ),
            ("retry_queues_failed_jobs_again", retry),
            ("a_schedule_ticks_once_per_tick_with_two_masters", schedules),
            ("a_jobs_own_timeout_stops_it_alone", own_timeout),
            (
                "a_frozen_fleets_jobs_are_rescued_and_its_late_effects_refused",
                rescue,
            ),
            (
                "jobs_commands_refuse_bad_input_and_change_nothing",
                bad_input,
            ),
            (
                "jobs_list_and_show_fetch_a_preview_of_a_long_payload",
                long_payload,
            ),
            ("finished_at_comes_after_what_the_job_did", finished_at),
        ],
        &[],
    )
}

/// Runs `prefork ARGS`; its output.
fn run(ctx: &Ctx, args: &[&str]) -> Output {
    prefork(&ctx.url, args).output().unwrap()
}

/// Runs `prefork ARGS`, which must succeed; its standard output.
fn ok(ctx: &Ctx, args: &[&str]) -> String {
    let out = run(ctx, args);
    assert!(
        out.status.success(),
        "prefork {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn state(obs: &mut Observer, id: i64) -> String {
    obs.client()
        .query_one("SELECT state FROM prefork.jobs WHERE id = $1", &[&id])
        .unwrap()
        .get(0)
}

fn priorities_and_queues(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    obs.client()
        .batch_execute("DROP TABLE IF EXISTS ran; CREATE TABLE ran (n serial, v text NOT NULL)")
        .unwrap();
    // A deep low-priority backlog on `a`, urgent jobs behind it, and jobs
    // of `b`, which come after everything of `a`.
    let backlog: String = (1..=200).map(|i| format!("low{i}\n")).collect();
    cli::enqueue_lines(&ctx.url, &backlog, &["--queue", "a", "--priority", "5"]);
    for i in 1..=3 {
        // The options every command takes go before the subcommand too.
        ok(ctx, &["--queue", "b", "enqueue", &format!("b{i}")]);
        ok(ctx, &["enqueue", &format!("urgent{i}"), "--queue", "a"]);
        ok(
            ctx,
            &[
                "enqueue",
                &format!("mid{i}"),
                "--queue",
                "a",
                "--priority",
                "2",
            ],
        );
    }
    let mut master = Master::start(
        &ctx.url,
        &[
            "--queue",
            "a,b",
            "--procs",
            "1",
            "--threads",
            "1",
            "--batch",
            "1",
            "--drain",
            "--sql",
            "INSERT INTO ran (v) VALUES ($1)",
        ],
    );
    let (code, err) = master.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    let order: Vec<String> = obs
        .client()
        .query("SELECT v FROM ran ORDER BY n", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order.len(), 209);
    assert_eq!(
        order[..6],
        ["urgent1", "urgent2", "urgent3", "mid1", "mid2", "mid3"]
    );
    assert!(
        order[6..206].iter().all(|v| v.starts_with("low")),
        "{order:?}"
    );
    assert_eq!(order[206..], ["b1", "b2", "b3"]);
}

/// A fleet already working a backlog of slow jobs: an urgent job queued
/// now waits only for what its child claimed ahead (about a second of
/// work), not for the backlog.
fn urgent_overtakes(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    obs.client()
        .batch_execute("DROP TABLE IF EXISTS ran; CREATE TABLE ran (n serial, v text NOT NULL)")
        .unwrap();
    let backlog: String = (1..=100).map(|i| format!("{i}\n")).collect();
    cli::enqueue_lines(&ctx.url, &backlog, &["--priority", "5"]);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--batch",
            "8",
            "--drain",
            "--sql",
            "INSERT INTO ran (v) SELECT $1 FROM pg_sleep(0.05)",
        ],
    );
    wait_until(
        "the backlog is being worked",
        Duration::from_secs(10),
        || count(&mut obs, "SELECT count(*) FROM ran") >= 10,
    );
    ok(ctx, &["enqueue", "urgent"]);
    let at_enqueue = count(&mut obs, "SELECT count(*) FROM ran");
    let (code, err) = master.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    let position = count(&mut obs, "SELECT n::int8 FROM ran WHERE v = 'urgent'");
    // 2 workers x 1 s / 50 ms = 40 jobs claimed ahead at most, plus the
    // ones running and the few done while the enqueue ran. (Claims of 8
    // batches per worker, with no window, would take the whole backlog.)
    assert!(
        position < at_enqueue + 60,
        "the urgent job ran {position}th of 101, queued after {at_enqueue}"
    );
}

fn unique_keys(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    ok(ctx, &["status"]); // migrated before the race
    let outputs: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let url = ctx.url.clone();
                scope.spawn(move || {
                    let out = prefork(
                        &url,
                        &["enqueue", &format!("p{i}"), "--unique-key", "nightly"],
                    )
                    .output()
                    .unwrap();
                    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                    // 0: queued; 3: the key is held, nothing queued.
                    let want = if stdout.starts_with("queued job") {
                        0
                    } else {
                        3
                    };
                    assert_eq!(
                        out.status.code(),
                        Some(want),
                        "{stdout} {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    stdout
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(count(&mut obs, "SELECT count(*) FROM prefork.jobs"), 1);
    let id = count(&mut obs, "SELECT id FROM prefork.jobs");
    let queued = outputs
        .iter()
        .filter(|o| o.starts_with("queued job"))
        .count();
    let held = outputs
        .iter()
        .filter(|o| o.contains(&format!("job {id} on \"default\" already holds unique key")))
        .count();
    assert_eq!((queued, held), (1, 7), "{outputs:?}");
    // From SQL, the same key names the same job; another queue is free.
    let again: i64 = obs
        .client()
        .query_one(
            "SELECT prefork.enqueue('default', 'sql', p_unique_key => 'nightly')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(again, id);
    ok(
        ctx,
        &[
            "enqueue",
            "other",
            "--unique-key",
            "nightly",
            "--queue",
            "other",
        ],
    );
    assert_eq!(count(&mut obs, "SELECT count(*) FROM prefork.jobs"), 2);
    // Once the job is finished the key is free again.
    let mut master = Master::start(&ctx.url, &["--procs", "1", "--drain", "--sql", "SELECT $1"]);
    assert_eq!(master.wait(Duration::from_secs(30)).0, 0);
    let out = ok(ctx, &["enqueue", "p9", "--unique-key", "nightly"]);
    assert!(out.starts_with("queued job"), "{out}");
}

fn cancel(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    ok(ctx, &["enqueue", "queued"]);
    let queued = count(&mut obs, "SELECT max(id) FROM prefork.jobs");
    let out = ok(ctx, &["jobs", "cancel", &queued.to_string()]);
    assert!(out.contains("cancelled 1 queued job(s)"), "{out}");
    assert_eq!(state(&mut obs, queued), "cancelled");
    // A running program: stopped, and the job cancelled, not retried.
    ok(ctx, &["enqueue", "long", "--max-attempts", "5"]);
    let long = count(&mut obs, "SELECT max(id) FROM prefork.jobs");
    let mut master = Master::start(&ctx.url, &["--procs", "1", "--exec", "sleep", "60"]);
    wait_until("the program starts", Duration::from_secs(10), || {
        state(&mut obs, long) == "running"
    });
    let out = ok(ctx, &["jobs", "cancel", &long.to_string()]);
    assert!(out.contains("marked 1 running job(s)"), "{out}");
    wait_until(
        "the running job is cancelled",
        Duration::from_secs(10),
        || state(&mut obs, long) == "cancelled",
    );
    let attempts = count(
        &mut obs,
        &format!("SELECT attempts::int8 FROM prefork.jobs WHERE id = {long}"),
    );
    assert_eq!(attempts, 1, "a cancelled job is not retried");
    let status = ok(ctx, &["status", "--json"]);
    assert!(status.contains("\"cancelled\":2"), "{status}");
    nix::sys::signal::kill(master.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(master.wait(Duration::from_secs(30)).0, 0);
}

fn retry(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    for i in 1..=3 {
        ok(ctx, &["enqueue", &i.to_string(), "--max-attempts", "1"]);
    }
    // Jobs 1 and 2 fail (division by zero), job 3 succeeds.
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--drain",
            "--sql",
            "SELECT 1 / ($1::int / 3)",
        ],
    );
    assert_eq!(master.wait(Duration::from_secs(30)).0, 0);
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'failed'"
        ),
        2
    );
    let shown = ok(ctx, &["jobs", "show", "1"]);
    assert!(
        shown.contains("attempt 1 failed") && shown.contains("division by zero"),
        "{shown}"
    );
    // Each failed attempt's time and claim are read back, not lost.
    assert!(
        !shown.contains("failed at ?") && !shown.contains("(?)"),
        "{shown}"
    );
    let out = ok(ctx, &["jobs", "retry", "--failed"]);
    assert!(out.starts_with("queued 2 job(s) again: 1, 2"), "{out}");
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'queued' AND attempts = 0"
        ),
        2
    );
    // They run again (and succeed now).
    let mut master = Master::start(&ctx.url, &["--procs", "1", "--drain", "--sql", "SELECT $1"]);
    assert_eq!(master.wait(Duration::from_secs(30)).0, 0);
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'"
        ),
        3
    );
    let json = ok(ctx, &["jobs", "show", "1", "--json"]);
    assert!(
        json.contains("\"state\":\"done\"") && json.contains("division by zero"),
        "{json}"
    );
}

/// Two masters fire a schedule of every second: one job per tick, never
/// two; ticks missed while no fleet ran are fired once, late.
fn schedules(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let out = ok(
        ctx,
        &["schedule", "add", "tick", "--cron", "* * * * * *", "hello"],
    );
    assert!(out.starts_with("schedule \"tick\" added"), "{out}");
    // Every second too, on a queue no fleet works, under a unique key: the
    // first tick's job holds it, so the other ticks queue nothing.
    ok(
        ctx,
        &[
            "schedule",
            "add",
            "solo",
            "--cron",
            "* * * * * *",
            "--queue",
            "idle",
            "--unique-key",
            "solo",
            "once",
        ],
    );
    let fleet = ["--procs", "1", "--sql", "SELECT $1"];
    let mut a = Master::start(&ctx.url, &fleet);
    let mut b = Master::start(&ctx.url, &fleet);
    // Both masters up (their heartbeats), then five ticks: a load that
    // slows the masters' start makes the test longer, not wrong.
    wait_until("both masters' heartbeats", Duration::from_secs(30), || {
        count(&mut obs, "SELECT count(*) FROM prefork.masters") >= 2
    });
    let from = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE queue = 'default'",
    );
    wait_until("five ticks", Duration::from_secs(30), || {
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE queue = 'default'",
        ) >= from + 5
    });
    for m in [&mut a, &mut b] {
        nix::sys::signal::kill(m.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
        assert_eq!(m.wait(Duration::from_secs(30)).0, 0);
    }
    let jobs = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE queue = 'default'",
    );
    let seconds = count(
        &mut obs,
        "SELECT count(DISTINCT date_trunc('second', created_at)) FROM prefork.jobs
         WHERE queue = 'default'",
    );
    assert_eq!(jobs, seconds, "two jobs for one tick");
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE queue = 'idle'"
        ),
        1,
        "a tick queued a second job under the unique key"
    );
    let list = ok(ctx, &["schedule", "list"]);
    assert!(list.contains("unique key \"solo\""), "{list}");
    ok(ctx, &["schedule", "remove", "solo"]);
    // Three seconds with no fleet, then one: the missed ticks make one job.
    std::thread::sleep(Duration::from_secs(3));
    let before = jobs;
    let last: String = obs
        .client()
        .query_one(
            "SELECT max(created_at)::text FROM prefork.jobs WHERE queue = 'default'",
            &[],
        )
        .unwrap()
        .get(0);
    let mut c = Master::start(&ctx.url, &fleet);
    wait_until("the late tick", Duration::from_secs(10), || {
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE queue = 'default'",
        ) > before
    });
    // Missed ticks would be fired in one transaction, whose jobs share its
    // created_at: the first firing after the pause queued one job. (A
    // window of time before the newest job raced the next on-time tick.)
    let late = count(
        &mut obs,
        &format!(
            "SELECT count(*) FROM prefork.jobs WHERE queue = 'default'
               AND created_at = (SELECT min(created_at) FROM prefork.jobs
                                 WHERE queue = 'default' AND created_at > '{last}')"
        ),
    );
    assert_eq!(late, 1, "the missed ticks were fired more than once");
    nix::sys::signal::kill(c.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(c.wait(Duration::from_secs(30)).0, 0);
    let list = ok(ctx, &["schedule", "list", "--json"]);
    assert!(
        list.contains("\"name\":\"tick\"") && list.contains("\"last_job\""),
        "{list}"
    );
    ok(ctx, &["schedule", "remove", "tick"]);
    assert_eq!(ok(ctx, &["schedule", "list"]).trim(), "no schedules");
}

fn own_timeout(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    // No fleet timeout: only the job with its own is stopped.
    ok(
        ctx,
        &["enqueue", "2", "--timeout", "500ms", "--max-attempts", "1"],
    );
    ok(ctx, &["enqueue", "1", "--max-attempts", "1"]);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--drain",
            "--sql",
            "SELECT pg_sleep($1::float8)",
        ],
    );
    assert_eq!(master.wait(Duration::from_secs(30)).0, 0);
    let failed: String = obs
        .client()
        .query_one(
            "SELECT last_error FROM prefork.jobs WHERE state = 'failed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(failed.contains("timed out after 500ms"), "{failed}");
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'"
        ),
        1
    );
}

/// A whole fleet (master and child) frozen while its statements run on the
/// server, its children's leases 3 s long: a second fleet hands its jobs back and
/// runs them within seconds; when the frozen statements end, their
/// outcomes are refused and their effects rolled back with them; thawed,
/// the first fleet runs nothing twice.
fn rescue(ctx: &mut Ctx) {
    use nix::sys::signal::{Signal, kill};
    let mut obs = reset(&ctx.url);
    obs.client()
        .batch_execute(
            "DROP TABLE IF EXISTS gate; CREATE TABLE gate (); INSERT INTO gate DEFAULT VALUES",
        )
        .unwrap();
    let lines: String = (1..=6).map(|i| format!("{i}\n")).collect();
    cli::enqueue_lines(&ctx.url, &lines, &[]);
    // The frozen fleet's jobs wait on the server for the gate, which the
    // test holds until the rescue is over: their statements end only then,
    // with the client still stopped, whatever the machine's speed. (A fixed
    // sleep raced the rescue on a slow machine: statements that ended
    // first committed as the frozen fleet's, and nothing was rescued.)
    let mut gatekeeper = Observer::new(&ctx.url);
    gatekeeper
        .client()
        .batch_execute("BEGIN; SELECT FROM gate FOR UPDATE")
        .unwrap();
    let gated = "INSERT INTO effects SELECT $1::int FROM gate FOR SHARE";
    let mut frozen = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--batch",
            "1",
            "--rescue-after",
            "3s",
            "--sql",
            gated,
        ],
    );
    let gated_statements = "SELECT count(*) FROM pg_stat_activity
         WHERE state = 'active' AND query LIKE '%run_sql%' AND pid <> pg_backend_pid()";
    wait_until("two statements running", Duration::from_secs(30), || {
        count(&mut obs, gated_statements) == 2
    });
    let mut stopped = vec![frozen.pid()];
    stopped.extend(common::children_of(frozen.pid()));
    for pid in &stopped {
        kill(*pid, Signal::SIGSTOP).unwrap();
    }
    let froze = std::time::Instant::now();
    let mut rescuer = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--rescue-after",
            "3s",
            "--sql",
            "INSERT INTO effects SELECT $1::int",
        ],
    );
    wait_until(
        "the frozen fleet's jobs run again",
        Duration::from_secs(60),
        || count(&mut obs, "SELECT count(DISTINCT v) FROM effects") == 6,
    );
    println!(
        "    the frozen fleet's jobs done again {:.1?} after the freeze",
        froze.elapsed()
    );
    // The frozen statements end on the server: their outcomes are
    // refused, and their effects rolled back with them.
    gatekeeper.client().batch_execute("COMMIT").unwrap();
    wait_until(
        "the frozen statements end on the server",
        Duration::from_secs(30),
        || count(&mut obs, gated_statements) == 0,
    );
    for pid in &stopped {
        kill(*pid, Signal::SIGCONT).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    for m in [&mut frozen, &mut rescuer] {
        kill(m.pid(), Signal::SIGTERM).unwrap();
        assert_eq!(m.wait(Duration::from_secs(30)).0, 0);
    }
    assert_eq!(
        count(&mut obs, "SELECT count(*) FROM effects"),
        6,
        "an effect ran twice"
    );
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'"
        ),
        6
    );
    // The two running, and any the child had claimed ahead, came back as
    // suspects, their attempt given back.
    let rescued = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE suspect AND errors = '[]'",
    );
    assert!(
        (2..=6).contains(&rescued),
        "the rescued jobs are suspects: {rescued}"
    );
}

fn bad_input(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    ok(ctx, &["enqueue", "a"]);
    ok(ctx, &["enqueue", "b"]);
    let refused = |args: &[&str], code: i32, says: &str| {
        let out = run(ctx, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(&["jobs", "show", "99"], 1, "no job 99");
    refused(
        &["jobs", "retry", "1"],
        1,
        "job 1 is queued, not failed or cancelled",
    );
    refused(
        &["jobs", "cancel", "2", "99"],
        1,
        "no job 99; nothing was changed",
    );
    refused(&["jobs", "cancel"], 2, "required");
    refused(&["jobs", "list", "--state", "lost"], 2, "invalid value");
    refused(&["enqueue", "x", "--priority", "-1"], 2, "-1 is not in 0");
    refused(
        &["enqueue", "x", "--in", "5m", "--run-at", "2030-01-01"],
        2,
        "cannot be used",
    );
    refused(&["enqueue", "x", "--queue", "a,b"], 2, "one queue here");
    refused(&["--queue", "a,a", "--sql", "SELECT $1"], 2, "named twice");
    refused(
        &["schedule", "add", "s", "--cron", "* * *", "x"],
        2,
        "invalid cron expression",
    );
    refused(
        &["schedule", "add", "s", "--cron", "61 * * * *", "x"],
        2,
        "invalid cron expression",
    );
    refused(
        &[
            "schedule",
            "add",
            "s",
            "--cron",
            "* * * * *",
            "--timezone",
            "Mars/Olympus",
            "x",
        ],
        2,
        "invalid time zone",
    );
    ok(ctx, &["schedule", "add", "s", "--cron", "0 * * * *", "x"]);
    refused(
        &["schedule", "add", "s", "--cron", "0 * * * *", "x"],
        1,
        "exists",
    );
    refused(&["schedule", "remove", "nope"], 1, "no schedule named");
    // Nothing changed.
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'queued'"
        ),
        2
    );
}

/// A 10 MB payload: `jobs list` and `jobs show` fetch a preview of it,
/// saying how long it is; `jobs show --whole` all of it.
fn long_payload(ctx: &mut Ctx) {
    let _obs = reset(&ctx.url);
    let long = "y".repeat(10 * 1024 * 1024);
    cli::enqueue_lines(&ctx.url, &format!("{long}\n"), &[]);
    let list = ok(ctx, &["jobs", "list"]);
    assert!(list.len() < 1000, "jobs list printed {} bytes", list.len());
    let shown = ok(ctx, &["jobs", "show", "1"]);
    assert!(
        shown.len() < 10_000,
        "jobs show printed {} bytes",
        shown.len()
    );
    assert!(
        shown.contains("its first 4096 of 10485760 bytes"),
        "{shown}"
    );
    let whole = ok(ctx, &["jobs", "show", "1", "--whole", "--json"]);
    assert!(whole.len() > 10 * 1024 * 1024, "{}", whole.len());
}

/// A `--sql` job's finished_at is when its outcome was recorded, after
/// what it did (it was the start of the batch's statement, before).
fn finished_at(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    obs.client()
        .batch_execute("DROP TABLE IF EXISTS stamps; CREATE TABLE stamps (at timestamptz)")
        .unwrap();
    ok(ctx, &["enqueue", "1"]);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "1",
            "--drain",
            "--sql",
            "INSERT INTO stamps SELECT clock_timestamp() FROM pg_sleep(0.5)",
        ],
    );
    let (code, err) = master.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    let after: bool = obs
        .client()
        .query_one(
            "SELECT (SELECT finished_at FROM prefork.jobs) >= (SELECT at FROM stamps)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(after, "finished_at came before the job's own effect");
}
