//! `--worker` programs in real processes against a real server: long-lived
//! Python programs (examples/resident/resident.py) fed one job at a time, and
//! programs that misbehave.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cli::{Master, count, enqueue_lines, reset};
use common::{Ctx, Observer};
use nix::sys::signal::{Signal, kill};

fn main() {
    common::main(
        fork_safe::cluster::Builder::new().max_connections(80),
        |_| {},
        &[
            (
                "twenty_thousand_jobs_through_one_program_per_worker",
                twenty_thousand,
            ),
            (
                "a_program_that_crashes_fails_its_job_alone_and_is_replaced",
                crashes,
            ),
            ("a_hung_program_times_out_and_is_replaced", hangs),
            (
                "max_jobs_recycles_and_output_goes_to_the_log",
                max_jobs_and_output,
            ),
            (
                "a_program_sees_its_channel_and_name_and_nothing_else",
                environment,
            ),
            ("garbage_and_wrong_answers_fail_the_attempt", garbage),
            (
                "a_program_that_never_says_ready_spends_no_attempt",
                never_ready,
            ),
            ("master_sigkill_leaves_no_program_running", master_killed),
            (
                "a_program_that_dies_on_term_at_a_stop_spends_no_attempt",
                dies_on_term,
            ),
            (
                "a_program_that_stops_reading_times_out_its_job_alone",
                slow_reader,
            ),
            (
                "a_killed_programs_leftover_backend_is_ended",
                leftover_backend,
            ),
            ("a_program_over_max_memory_is_recycled", program_memory),
            (
                "the_node_example_answers_with_the_payload_and_exits_at_a_stop",
                node_example,
            ),
        ],
        &[],
    )
}

/// `python3 -c CODE` with the example library importable: CODE calls
/// `resident.run(handler)`.
fn python(code: &str) -> Vec<String> {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/resident");
    let code = format!("import sys, os\nsys.path.insert(0, {lib:?})\nimport resident\n{code}");
    vec!["python3".into(), "-c".into(), code]
}

fn fleet(ctx: &Ctx, shape: &[&str], program: &[String]) -> Master {
    let mut args: Vec<&str> = shape.to_vec();
    args.push("--worker");
    args.extend(program.iter().map(String::as_str));
    Master::start(&ctx.url, &args)
}

fn stop(mut master: Master) -> String {
    kill(master.pid(), Signal::SIGTERM).unwrap();
    let (code, err) = master.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    err
}

fn lines(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

fn results(obs: &mut Observer, state: &str) -> Vec<String> {
    obs.client()
        .query(
            "SELECT coalesce(result, last_error, '') FROM prefork.jobs WHERE state = $1",
            &[&state],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn wait_finished(obs: &mut Observer, within: Duration) {
    common::wait_until("every job finished", within, || {
        count(obs, "SELECT count(*) FROM prefork.jobs_live") == 0
    });
}

fn twenty_thousand(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, &lines(20_000), &[]);
    let mut args = vec!["--procs", "4", "--threads", "8", "--drain"];
    let program = python("resident.run(lambda job: str(os.getpid()))");
    args.push("--worker");
    args.extend(program.iter().map(String::as_str));
    let mut master = Master::start(&ctx.url, &args);
    let (code, err) = master.wait(Duration::from_secs(100));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'"
        ),
        20_000
    );
    let pids: BTreeSet<String> = results(&mut obs, "done").into_iter().collect();
    // One program per worker that got a job: at most 32, not one per job.
    assert!(
        (1..=32).contains(&pids.len()),
        "{} programs ran 20,000 jobs",
        pids.len()
    );
}

fn crashes(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, &lines(1000), &["--max-attempts", "1"]);
    let program = python(
        "def handle(job):\n    if int(job['payload']) % 100 == 0:\n        \
         print('crashing on', job['payload'], file=sys.stderr, flush=True)\n        \
         os._exit(3)\n    return 'ok'\nresident.run(handle)",
    );
    let master = fleet(ctx, &["--procs", "2", "--threads", "2"], &program);
    wait_finished(&mut obs, Duration::from_secs(60));
    let failed = results(&mut obs, "failed");
    assert_eq!(failed.len(), 10, "{failed:?}");
    for e in &failed {
        assert!(
            e.contains("closed its channel") && e.contains("exit status: 3"),
            "{e}"
        );
        assert!(e.contains("crashing on"), "no stderr tail in {e:?}");
    }
    assert_eq!(results(&mut obs, "done").len(), 990);
    stop(master);
}

fn hangs(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "1\nhang\n2\n3\n", &["--max-attempts", "1"]);
    let program = python(
        "import time\ndef handle(job):\n    if job['payload'] == 'hang':\n        \
         time.sleep(3600)\n    return 'ok'\nresident.run(handle)",
    );
    let master = fleet(
        ctx,
        &["--procs", "1", "--threads", "1", "--timeout", "1s"],
        &program,
    );
    wait_finished(&mut obs, Duration::from_secs(30));
    let failed = results(&mut obs, "failed");
    assert_eq!(failed.len(), 1);
    assert!(failed[0].contains("timed out after 1s"), "{failed:?}");
    assert_eq!(
        results(&mut obs, "done").len(),
        3,
        "the next copy ran the rest"
    );
    stop(master);
}

fn max_jobs_and_output(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, &lines(100), &[]);
    let program = python(
        "def handle(job):\n    print('said between answers', job['payload'], flush=True)\n    \
         return str(os.getpid())\nresident.run(handle)",
    );
    let mut args = vec![
        "--procs",
        "1",
        "--threads",
        "1",
        "--worker-max-jobs",
        "10",
        "--drain",
        "--worker",
    ];
    args.extend(program.iter().map(String::as_str));
    let mut master = Master::start(&ctx.url, &args);
    let (code, _) = master.wait(Duration::from_secs(60));
    assert_eq!(code, 0);
    let pids: BTreeSet<String> = results(&mut obs, "done").into_iter().collect();
    assert_eq!(pids.len(), 10, "100 jobs, a fresh program every 10");
    // A second run, logging at info, shows the program's output.
    reset(&ctx.url);
    enqueue_lines(&ctx.url, "77\n", &[]);
    let mut verbose = cli::prefork(&ctx.url, &args);
    verbose.env("RUST_LOG", "info");
    let out = verbose.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("child 1 worker 0: said between answers 77"),
        "{log}"
    );
}

fn environment(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "x\n", &[]);
    let program = python(
        "import json\ndef handle(job):\n    fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))\n    \
         return json.dumps({'fds': fds, 'channel': int(os.environ['PREFORK_WORKER_FD']), 'pid': os.getpid(),\n        \
         'app': os.environ.get('PGAPPNAME'), 'protocol': os.environ.get('PREFORK_PROTOCOL')})\n\
         resident.run(handle)",
    );
    let master = fleet(ctx, &["--procs", "1", "--threads", "1"], &program);
    wait_finished(&mut obs, Duration::from_secs(30));
    let done = results(&mut obs, "done");
    let seen: serde_json::Value = serde_json::from_str(&done[0]).unwrap();
    let channel = seen["channel"].as_i64().unwrap();
    let fds: Vec<i64> = seen["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    // 0, 1, 2, the channel, and the directory listdir had open: no
    // socket of the child's, no listener, nothing else.
    assert_eq!(fds.len(), 5, "{fds:?}");
    assert!(
        fds.starts_with(&[0, 1, 2]) && fds.contains(&channel),
        "{fds:?}"
    );
    // prefork names the program by its own pid, set in the forked process
    // before its exec (the example library leaves it as it is).
    let app = seen["app"].as_str().unwrap();
    assert_eq!(app, format!("prefork:program:{}", seen["pid"]), "{seen}");
    assert_eq!(seen["protocol"], "1");
    stop(master);
}

fn garbage(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "garbage\nwrong\nfine\n", &["--max-attempts", "1"]);
    // A program of its own, without the library: it answers what it is
    // told to, badly.
    let raw = "import json, os\nfd = int(os.environ['PREFORK_WORKER_FD'])\n\
         os.write(fd, b'{\"ready\": true, \"protocol\": 1}\\n')\n\
         buf = b''\nwhile True:\n    chunk = os.read(fd, 65536)\n    if not chunk: break\n    buf += chunk\n    \
         while b'\\n' in buf:\n        line, buf = buf.split(b'\\n', 1)\n        job = json.loads(line)\n        \
         if job['payload'] == 'garbage': out = b'this is not json\\n'\n        \
         elif job['payload'] == 'wrong': out = json.dumps({'id': job['id'] + 1000, 'ok': True}).encode() + b'\\n'\n        \
         else: out = json.dumps({'id': job['id'], 'ok': True, 'result': 'fine'}).encode() + b'\\n'\n        \
         os.write(fd, out)\n";
    let raw = raw.replace(
        "        elif job['payload'] == 'wrong'",
        "        elif job['payload'] == 'huge': out = b'x' * (20 * 1024 * 1024) + b'\\n'\n        \
         elif job['payload'] == 'wrong'",
    );
    enqueue_lines(&ctx.url, "huge\n", &["--max-attempts", "1"]);
    let program = vec!["python3".to_owned(), "-c".to_owned(), raw];
    let master = fleet(ctx, &["--procs", "1", "--threads", "1"], &program);
    wait_finished(&mut obs, Duration::from_secs(30));
    let mut failed = results(&mut obs, "failed");
    failed.sort();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(
        failed
            .iter()
            .any(|e| e.contains("longer than 16777216 bytes")),
        "{failed:?}"
    );
    assert!(failed.iter().any(|e| e.contains("not JSON")), "{failed:?}");
    assert!(
        failed.iter().any(|e| e.contains("while it ran job")),
        "{failed:?}"
    );
    assert_eq!(results(&mut obs, "done"), ["fine"]);
    stop(master);
}

fn never_ready(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "1\n2\n", &["--max-attempts", "1"]);
    let program = vec![
        "python3".to_owned(),
        "-c".to_owned(),
        "import time; time.sleep(3600)".to_owned(),
    ];
    let master = fleet(
        ctx,
        &["--procs", "1", "--threads", "1", "--boot-timeout", "1s"],
        &program,
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(master_running(&master), "the fleet gave up");
    // Nothing failed: the jobs wait, their attempts unspent.
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'failed' OR attempts > 1"
        ),
        0
    );
    let err = stop(master);
    assert!(err.contains("failed to start"), "{err}");
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'queued' AND attempts = 0"
        ),
        2
    );
}

fn master_running(master: &Master) -> bool {
    kill(master.pid(), None).is_ok()
}

/// A graceful stop past its timeout, with programs in the middle of their
/// jobs that die of the TERM they get (Python's default): every job is
/// queued again with its attempt given back, none marked with an error
/// (the attempt was counted, and at one attempt the job failed).
fn dies_on_term(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "1\n2\n3\n4\n", &["--max-attempts", "1"]);
    let program =
        python("import time\ndef handle(job):\n    time.sleep(3600)\nresident.run(handle)");
    let master = fleet(
        ctx,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--batch",
            "1",
            "--graceful-timeout",
            "1s",
        ],
        &program,
    );
    common::wait_until("two jobs running", Duration::from_secs(20), || {
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'running'",
        ) >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    stop(master);
    let given_back = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs
         WHERE state = 'queued' AND attempts = 0 AND last_error IS NULL",
    );
    assert_eq!(
        given_back,
        4,
        "a job's attempt was counted: {:?}",
        obs.states()
    );
}

/// A program that answers a job, then stops reading its channel: the next
/// job, 4 MB, cannot be written; its `--timeout` covers the writing, so it
/// alone fails as timed out after 3 s, and the job after it runs on a
/// fresh copy. (The write blocked until the lease ran out, and the batch
/// failed "interrupted".)
fn slow_reader(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let big = "x".repeat(4 * 1024 * 1024);
    enqueue_lines(
        &ctx.url,
        &format!("stall\n{big}\nafter\n"),
        &["--max-attempts", "1"],
    );
    let code = "import os, socket, json, time
s = socket.socket(fileno=int(os.environ['PREFORK_WORKER_FD']))
s.sendall(b'{\"ready\":true,\"protocol\":1}\\n')
f = s.makefile('rb')
for line in f:
    job = json.loads(line)
    s.sendall(json.dumps({'id': job['id'], 'ok': True, 'result': job['payload'][:5]}).encode() + b'\\n')
    if job['payload'] == 'stall':
        time.sleep(60)
";
    let program = vec!["python3".to_owned(), "-c".to_owned(), code.to_owned()];
    let mut master = fleet(
        ctx,
        &[
            "--procs",
            "1",
            "--threads",
            "1",
            "--batch",
            "3",
            "--timeout",
            "3s",
            "--drain",
        ],
        &program,
    );
    let (code, err) = master.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    let rows = obs
        .client()
        .query(
            "SELECT state, coalesce(last_error, '') FROM prefork.jobs ORDER BY id",
            &[],
        )
        .unwrap();
    let seen: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(seen[0].0, "done", "{seen:?}");
    assert_eq!(seen[1].0, "failed", "{seen:?}");
    assert!(seen[1].1.contains("timed out"), "{:?}", seen[1]);
    assert_eq!(seen[2].0, "done", "{seen:?}");
}

fn master_killed(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "1\n2\n3\n4\n", &[]);
    let program =
        python("import time\ndef handle(job):\n    time.sleep(3600)\nresident.run(handle)");
    let master = fleet(
        ctx,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--batch",
            "1",
            "--graceful-timeout",
            "30s",
        ],
        &program,
    );
    let programs = || -> Vec<String> {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "time.sleep\\(3600\\)"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    // Programs at work in both children (a child's claim may bring in
    // several jobs for one worker: at least two programs, not four).
    common::wait_until("programs at work", Duration::from_secs(20), || {
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'running'",
        ) == 4
            && programs().len() >= 2
    });
    // The orphaned children stop their programs at once (TERM, and KILL
    // after a grace), not at the graceful timeout (30 s here): see
    // `prefork::child`.
    kill(master.pid(), Signal::SIGKILL).unwrap();
    common::wait_until("no program left", Duration::from_secs(5), || {
        programs().is_empty()
    });
    drop(master);
}

/// A program that opened its own connection (psql here: libpq, with the
/// PGAPPNAME it inherited) and hangs in a statement: when it is killed at
/// the timeout, the server would keep the backend until the statement
/// ends; the worker ends it.
fn leftover_backend(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "x\n", &["--max-attempts", "1"]);
    let program = python(
        "import subprocess, time\ndef handle(job):\n    \
         subprocess.Popen(['psql', os.environ['DATABASE_URL'], '-qc', 'SELECT pg_sleep(3600)'])\n    \
         time.sleep(3600)\nresident.run(handle)",
    );
    let master = fleet(
        ctx,
        &["--procs", "1", "--threads", "1", "--timeout", "2s"],
        &program,
    );
    let sleeping = |obs: &mut Observer| {
        count(
            obs,
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name LIKE 'prefork:program:%' AND query LIKE '%pg_sleep(3600)%'",
        )
    };
    common::wait_until("the program's own backend", Duration::from_secs(20), || {
        sleeping(&mut obs) == 1
    });
    // `prefork status` shows the program's backend beside the fleet's.
    let out = cli::prefork(&ctx.url, &["status"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("prefork:program:") && shown.contains("prefork:child:"),
        "{shown}"
    );
    wait_finished(&mut obs, Duration::from_secs(20));
    common::wait_until("its backend ended", Duration::from_secs(10), || {
        sleeping(&mut obs) == 0
    });
    assert_eq!(results(&mut obs, "failed").len(), 1);
    stop(master);
}

/// `--max-memory` holds a program to it as it holds a child: one holding
/// 40 MB of its own against 20 MB (one reading) is started afresh.
fn program_memory(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, &lines(40), &[]);
    let program = python(
        "import time\nballast = b'x' * (40 * 1024 * 1024)\ndef handle(job):\n    \
         time.sleep(0.1)\n    return str(os.getpid())\nresident.run(handle)",
    );
    let mut args = vec![
        "--procs",
        "1",
        "--threads",
        "1",
        "--batch",
        "1",
        "--max-memory",
        "20",
        "--max-memory-readings",
        "1",
        "--drain",
        "--worker",
    ];
    args.extend(program.iter().map(String::as_str));
    let mut verbose = cli::prefork(&ctx.url, &args);
    verbose.env("RUST_LOG", "info");
    let out = verbose.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("recycled: proportional memory"),
        "no recycle in the log:\n{log}"
    );
    let pids: BTreeSet<String> = results(&mut obs, "done").into_iter().collect();
    assert!(
        pids.len() >= 2,
        "one program ran all 40 jobs over its limit"
    );
}

fn node_example(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, &lines(2000), &[]);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/resident/resident.js");
    let master = fleet(
        ctx,
        &["--procs", "2", "--threads", "4"],
        &["node".into(), example.into()],
    );
    wait_finished(&mut obs, Duration::from_secs(60));
    let mut done: Vec<i64> = results(&mut obs, "done")
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    done.sort_unstable();
    assert_eq!(done, (1..=2000).collect::<Vec<i64>>());
    // At the stop each program reads the end of its input and exits.
    let log = stop(master);
    assert!(!log.contains("ended at end of input"), "{log}");
}
