//! Job kinds, in real processes against a real server: jobs queued with a
//! kind and JSON arguments (from the command line and from SQL), fleets
//! that serve some kinds only, and the bad input of kinds and arguments.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use cli::{Master, count, prefork, reset};
use common::{Ctx, Observer};

fn main() {
    common::main(
        fork_safe::cluster::Builder::new().max_connections(60),
        |_| {},
        &[
            (
                "two_fleets_serve_their_own_kinds_and_drain_them",
                two_fleets,
            ),
            ("bad_kinds_and_arguments_are_one_line_and_exit_2", bad_input),
            ("a_schedule_queues_jobs_of_its_kind", schedule),
        ],
        &[],
    )
}

/// `prefork enqueue ARGS` with `input` on its standard input.
fn enqueue(ctx: &Ctx, args: &[&str], input: &str) -> Output {
    let mut all = vec!["enqueue"];
    all.extend_from_slice(args);
    let mut child = prefork(&ctx.url, &all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Three kinds and a payload job, two fleets: a program serving `mail`
/// and `resize`, a `--sql` fleet serving `report`. Each runs only its
/// kinds, with their arguments as input, and each `--drain` ends once its
/// own kinds are done though the payload job, which neither serves, waits.
fn two_fleets(ctx: &mut Ctx) {
    let mut obs: Observer = reset(&ctx.url);
    let lines = |key: &str, n: usize| -> String {
        (1..=n).map(|i| format!("{{\"{key}\": {i}}}\n")).collect()
    };
    for (kind, key) in [("mail", "to"), ("resize", "width")] {
        let out = enqueue(ctx, &["--kind", kind, "--args", "-"], &lines(key, 20));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // From SQL, in the application's transaction.
    obs.client()
        .batch_execute(
            "SELECT prefork.enqueue('default', p_kind => 'report',
                                    p_args => jsonb_build_object('n', i))
             FROM generate_series(1, 20) AS i",
        )
        .unwrap();
    let out = enqueue(ctx, &["a plain payload"], "");
    assert!(out.status.success(), "{}", stderr(&out));

    let log = ctx.socket_dir.join("kinds-programs.log");
    let _ = std::fs::remove_file(&log);
    let program = format!("echo \"$PREFORK_KIND $(cat)\" >> {}", log.display());
    let mut programs = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--kinds",
            "mail,resize",
            "--drain",
            "--exec",
            "sh",
            "-c",
            &program,
        ],
    );
    let mut sql = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--kinds",
            "report",
            "--drain",
            "--sql",
            "INSERT INTO effects SELECT ($1::jsonb ->> 'n')::int",
        ],
    );
    for master in [&mut programs, &mut sql] {
        let (code, err) = master.wait(Duration::from_secs(60));
        assert_eq!(code, 0, "{err}");
    }
    let ran = std::fs::read_to_string(&log).unwrap();
    let mut seen: Vec<String> = ran.lines().map(str::to_owned).collect();
    seen.sort();
    let mut want: Vec<String> = (1..=20)
        .map(|i| format!("mail {{\"to\": {i}}}"))
        .chain((1..=20).map(|i| format!("resize {{\"width\": {i}}}")))
        .collect();
    want.sort();
    assert_eq!(
        seen, want,
        "the program ran its kinds' jobs, each once, with their arguments"
    );
    assert_eq!(count(&mut obs, "SELECT count(DISTINCT v) FROM effects"), 20);
    assert_eq!(count(&mut obs, "SELECT count(*) FROM effects"), 20);
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done' AND kind <> 'default'"
        ),
        60
    );
    let waiting = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs_live
         WHERE state = 'queued' AND kind = 'default' AND payload = 'a plain payload'",
    );
    assert_eq!(waiting, 1, "a kind no fleet serves waits");
    // `jobs show` names the kind and shows the arguments.
    let id = count(
        &mut obs,
        "SELECT min(id) FROM prefork.jobs WHERE kind = 'mail'",
    );
    let out = prefork(&ctx.url, &["jobs", "show", &id.to_string()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("kind:      mail"), "{shown}");
    assert!(shown.contains("args:      {\"to\": 1}"), "{shown}");

    // `status` says which kinds wait with no live fleet to serve them.
    let mut mail = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "1",
            "--kinds",
            "mail",
            "--sql",
            "SELECT 1",
        ],
    );
    let status = || {
        let out = prefork(&ctx.url, &["status"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    common::wait_until("the mail fleet's child", Duration::from_secs(20), || {
        status().contains(", kinds mail")
    });
    let shown = status();
    assert!(
        shown.contains(
            "kind \"default\": 1 queued, 0 running (no live fleet serves this kind: its jobs wait)"
        ),
        "{shown}"
    );
    let out = prefork(&ctx.url, &["status", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kinds"][0]["kind"], "default");
    assert_eq!(json["kinds"][0]["served"], false);
    nix::sys::signal::kill(mail.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, err) = mail.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
}

/// `schedule add --kind --args`: each tick queues a job of that kind with
/// those arguments, which the fleet serving the kind runs.
fn schedule(ctx: &mut Ctx) {
    let mut obs: Observer = reset(&ctx.url);
    let add = [
        "schedule",
        "add",
        "ticks",
        "--cron",
        "* * * * * *",
        "--kind",
        "tick",
        "--args",
        "{\"n\": 5}",
    ];
    let out = prefork(&ctx.url, &add).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = prefork(&ctx.url, &["schedule", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("kind tick"), "{listed}");
    let mut fleet = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "1",
            "--kinds",
            "tick",
            "--sql",
            "INSERT INTO effects SELECT ($1::jsonb ->> 'n')::int",
        ],
    );
    common::wait_until("a tick's job run", Duration::from_secs(20), || {
        count(&mut obs, "SELECT count(*) FROM effects WHERE v = 5") >= 1
    });
    nix::sys::signal::kill(fleet.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (code, err) = fleet.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    let wrong = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE kind <> 'tick' OR args->>'n' <> '5'",
    );
    assert_eq!(
        wrong, 0,
        "every job the schedule queued is a tick with its arguments"
    );
}

fn bad_input(ctx: &mut Ctx) {
    let mut obs: Observer = reset(&ctx.url);
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--kind", "mail", "--args", "not json"],
            "",
            "--args: not JSON",
        ),
        (
            &["--kind", "mail", "--args", "[1, 2]"],
            "",
            "not a JSON object",
        ),
        (&["--kind", "bad kind!", "x"], "", "invalid job kind"),
        (&["--args", "{}", "x"], "", "cannot be used with"),
    ];
    for (args, input, says) in cases {
        let out = enqueue(ctx, args, input);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            err.trim_end().lines().count() <= 3,
            "{args:?}: one line (and clap's usage): {err}"
        );
    }
    // A bad line of arguments queues nothing, and names its line.
    let out = enqueue(
        ctx,
        &["--kind", "mail", "--args", "-"],
        "{\"to\": 1}\n{\"to\": 2\n",
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("line 2: not JSON"), "{err}");
    assert_eq!(count(&mut obs, "SELECT count(*) FROM prefork.jobs"), 0);
    let out = prefork(&ctx.url, &["--kinds", "a,b c", "--sql", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid job kind \"b c\""),
        "{}",
        stderr(&out)
    );
}
