//! The command line people expect, in real processes against a real
//! server: `--config FILE` and its precedence (flag > environment > file >
//! default), a bad file's one line, `prefork config`'s report with the
//! password masked, the live progress line on a terminal and not in a
//! pipe, and the completion scripts and man page.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use cli::{BIN, count, enqueue_lines, reset};
use common::{Ctx, Observer};

fn main() {
    common::main(
        fork_safe::cluster::Builder::new(),
        |_| {},
        &[
            (
                "precedence_is_flag_then_environment_then_file_then_default",
                precedence,
            ),
            ("a_fleet_runs_from_its_file_alone", runs_from_file),
            ("a_bad_file_is_one_line_naming_its_line_and_key", bad_files),
            ("progress_shows_on_a_terminal_and_not_in_a_pipe", progress),
            ("completions_parse_and_the_man_page_renders", manual),
        ],
        &[],
    )
}

/// `prefork ARGS` with nothing from the test's own environment that the
/// command line reads: only `env` is set.
fn bare(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("RUST_LOG", "warn");
    for (key, _) in std::env::vars() {
        if key.starts_with("PREFORK_") || key.starts_with("PG") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

fn output(args: &[&str], env: &[(&str, &str)]) -> Output {
    bare(args, env).output().expect("running prefork")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes `contents` to a file of its own under the cluster's directory.
fn file(ctx: &Ctx, name: &str, contents: &str) -> PathBuf {
    // Removed with the cluster, whatever the test's end.
    let path = ctx.socket_dir.join(format!("prefork-config-{name}"));
    std::fs::write(&path, contents).unwrap();
    path
}

/// `key`'s line in `prefork config`'s report: its value and its source.
fn setting(report: &str, key: &str) -> (String, String) {
    let line = report
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key}:")))
        .unwrap_or_else(|| panic!("no {key} in:\n{report}"));
    if let Some(rest) = line.strip_prefix(&format!("# {key}: ")) {
        return (String::new(), rest.to_owned());
    }
    let rest = &line[key.len() + 3..];
    let (value, source) = rest.split_once("  # ").expect("a source");
    (value.trim().to_owned(), source.trim().to_owned())
}

fn precedence(ctx: &mut Ctx) {
    let path = file(
        ctx,
        "precedence.toml",
        "# one option of each kind\n\
         database-url = \"postgres://app:file-secret@filehost/app\"\n\
         procs = 4\n\
         timeout = \"5m\"\n\
         health-checks = true\n\
         sql = \"SELECT $1\"\n",
    );
    let config = path.to_str().unwrap();
    let mut reports = Vec::new();
    let mut report = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["config", "--config", config];
        all.extend_from_slice(args);
        let out = output(&all, env);
        assert!(out.status.success(), "{}", text(&out.stderr));
        reports.push(text(&out.stdout));
        text(&out.stdout)
    };
    let line = |n: usize| format!("file {config}:{n}");

    // The file over the defaults.
    let r = report(&[], &[]);
    assert_eq!(setting(&r, "procs"), ("4".into(), line(3)));
    assert_eq!(setting(&r, "timeout"), ("\"5m\"".into(), line(4)));
    assert_eq!(setting(&r, "health-checks"), ("true".into(), line(5)));
    assert_eq!(
        setting(&r, "database-url"),
        ("\"postgres://app:****@filehost/app\"".into(), line(2))
    );
    assert_eq!(setting(&r, "threads"), ("1".into(), "default".into()));

    // The environment over the file.
    let env = [
        ("PREFORK_PROCS", "6"),
        ("PREFORK_TIMEOUT", "7m"),
        ("PREFORK_HEALTH_CHECKS", "false"),
        ("DATABASE_URL", "postgres://app:env-secret@envhost/app"),
    ];
    let r = report(&[], &env);
    assert_eq!(
        setting(&r, "procs"),
        ("6".into(), "environment PREFORK_PROCS".into())
    );
    assert_eq!(
        setting(&r, "timeout"),
        ("\"7m\"".into(), "environment PREFORK_TIMEOUT".into())
    );
    assert_eq!(
        setting(&r, "health-checks"),
        ("false".into(), "environment PREFORK_HEALTH_CHECKS".into())
    );
    assert_eq!(
        setting(&r, "database-url"),
        (
            "\"postgres://app:****@envhost/app\"".into(),
            "environment DATABASE_URL".into()
        )
    );

    // A flag over the environment.
    let r = report(
        &[
            "--procs",
            "8",
            "--timeout",
            "9m",
            "--health-checks",
            "--database-url",
            "postgres://app:flag-secret@flaghost/app",
        ],
        &env,
    );
    assert_eq!(setting(&r, "procs"), ("8".into(), "flag".into()));
    assert_eq!(setting(&r, "timeout"), ("\"9m\"".into(), "flag".into()));
    assert_eq!(setting(&r, "health-checks"), ("true".into(), "flag".into()));
    assert_eq!(
        setting(&r, "database-url"),
        ("\"postgres://app:****@flaghost/app\"".into(), "flag".into())
    );
    // The file named by the environment, and a handler on the command
    // line replacing the file's.
    let out = output(
        &["config", "--worker", "python3", "w.py"],
        &[("PREFORK_CONFIG", config)],
    );
    let r = text(&out.stdout);
    assert_eq!(setting(&r, "procs"), ("4".into(), line(3)));
    assert_eq!(
        setting(&r, "worker"),
        ("[\"python3\", \"w.py\"]".into(), "flag".into())
    );
    assert_eq!(
        setting(&r, "sql"),
        (
            String::new(),
            "replaced by --worker on the command line".into()
        )
    );

    // Without a file: the defaults.
    let r = text(&output(&["config"], &[]).stdout);
    assert_eq!(setting(&r, "timeout"), (String::new(), "not set".into()));
    assert_eq!(
        setting(&r, "health-checks"),
        ("false".into(), "default".into())
    );
    for r in &reports {
        for secret in ["file-secret", "env-secret", "flag-secret"] {
            assert!(!r.contains(secret), "{r}");
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Everything from the file: the URL, the shape, `drain`, the handler.
fn runs_from_file(ctx: &mut Ctx) {
    // The example shipped with the sources parses, every key of it.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/prefork.toml");
    let out = output(&["--config", example, "config"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = text(&out.stdout);
    assert_eq!(setting(&r, "threads").0, "8", "{r}");
    assert!(r.contains("worker = [\"python3\""), "{r}");
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "1\n2\n3\n4\n5\n", &[]);
    let path = file(
        ctx,
        "run.toml",
        &format!(
            "database-url = {:?}\nprocs = 1\nthreads = 2\ndrain = true\n\
             worker = [\"/bin/false\"]\n",
            ctx.url
        ),
    );
    // The command line's --sql replaces the file's program.
    let out = output(
        &[
            "--config",
            path.to_str().unwrap(),
            "--sql",
            "INSERT INTO effects SELECT $1::int",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(count(&mut obs, "SELECT count(*) FROM effects"), 5);
    // `enqueue` reads the file's database too, with --config before it.
    let out = output(&["--config", path.to_str().unwrap(), "enqueue", "6"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'queued'"
        ),
        1
    );
    let _ = std::fs::remove_file(&path);
}

fn bad_files(ctx: &mut Ctx) {
    let cases: &[(&str, &str)] = &[
        (
            "procs = 4\nthreads = \"many\"\n",
            ":2: threads: invalid value 'many'",
        ),
        ("procs = 4\n\nprcs = 4\n", ":3: unknown key \"prcs\""),
        (
            "max_age = \"1m\"\n",
            ":1: unknown key \"max_age\" (the flag's name is \"max-age\")",
        ),
        (
            "health-checks = \"yes\"\n",
            ":1: health-checks: expected true or false, found a string",
        ),
        ("procs = 4.5\n", ":1: procs: invalid value '4.5'"),
        ("timeout = \"soon\"\n", ":1: timeout: invalid value 'soon'"),
        (
            "procs = [1]\n",
            ":1: procs: expected a string or a number, found an array",
        ),
        ("threads = 2\nprocs = = 4\n", ":2:"),
        ("[fleet]\nprocs = 4\n", ":1: fleet: a table"),
        ("worker = []\n", ":1: worker: the array is empty"),
        (
            "worker = [\"a\"]\nexec = [\"b\"]\n",
            ":2: exec: give one handler",
        ),
    ];
    for (contents, says) in cases {
        let path = file(ctx, "bad.toml", contents);
        let name = path.to_str().unwrap();
        let out = output(&["--config", name, "--sql", "SELECT 1"], &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{contents:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{contents:?}: {err}");
        assert!(
            err.contains(&format!("{name}{says}")),
            "{contents:?}: {err}"
        );
    }
    let out = output(&["--config", "/nonexistent/prefork.toml", "config"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--config /nonexistent/prefork.toml: No such file"),
        "{}",
        text(&out.stderr)
    );
}

/// What `prefork ARGS` writes to its standard error when that is a
/// pseudo-terminal, with `stdin` as its input.
fn on_a_terminal(ctx: &Ctx, args: &[&str], stdin: Stdio) -> (i32, String) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut child = bare(args, &[("DATABASE_URL", &ctx.url), ("TERM", "xterm")])
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    // Read as it comes (a full terminal would block the program); the
    // read ends with EIO once the program, the slave's last holder, exits.
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), text(&reader.join().unwrap()))
}

fn progress(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let lines: String = (1..=20_000).map(|i| format!("{i}\n")).collect();
    let input = file(ctx, "lines.txt", &lines);
    let stdin = || Stdio::from(std::fs::File::open(&input).unwrap());

    // `enqueue -` counts the lines it reads.
    let (code, seen) = on_a_terminal(ctx, &["enqueue", "-"], stdin());
    assert_eq!(code, 0, "{seen}");
    assert!(
        seen.contains("lines read") && seen.contains("\x1b["),
        "{seen:?}"
    );
    // A drain shows jobs finished of the total.
    let mut drain: Vec<&str> = "--procs 2 --threads 2 --drain --sql".split(' ').collect();
    drain.push("SELECT $1");
    let (code, seen) = on_a_terminal(ctx, &drain, Stdio::null());
    assert_eq!(code, 0, "{seen}");
    assert!(
        seen.contains("/20,000 jobs") && seen.contains("ETA") && seen.contains("failed"),
        "{seen:?}"
    );
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'"
        ),
        20_000
    );

    // In a pipe: the same work, plain.
    let out = bare(&["enqueue", "-"], &[("DATABASE_URL", &ctx.url)])
        .stdin(stdin())
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = output(&drain, &[("DATABASE_URL", &ctx.url)]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        !err.contains('\x1b') && !err.contains('\r') && !err.contains("ETA"),
        "{err:?}"
    );
    assert!(err.contains("20000 job(s) done"), "{err}");
    let _ = std::fs::remove_file(&input);
}

fn manual(_: &mut Ctx) {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = output(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains("procs"), "{shell}");
        // The shells at hand check the script's syntax; bash always is.
        let check = match shell {
            "bash" | "zsh" => Some((shell, "-n")),
            "fish" => Some(("fish", "--no-execute")),
            _ => None,
        };
        let Some((program, flag)) = check else {
            continue;
        };
        let path = std::env::temp_dir().join(format!("prefork-completion.{shell}"));
        std::fs::write(&path, &script).unwrap();
        match Command::new(program).arg(flag).arg(&path).output() {
            Ok(checked) => assert!(
                checked.status.success(),
                "{shell} -n: {}",
                text(&checked.stderr)
            ),
            Err(_) if shell != "bash" => {}
            Err(e) => panic!("bash: {e}"),
        }
        let _ = std::fs::remove_file(&path);
    }
    let bad = output(&["completions", "tcsh"], &[]);
    assert_eq!(bad.status.code(), Some(2));

    let page = text(&output(&["man"], &[]).stdout);
    assert!(page.contains(".TH prefork 1"), "{page}");
    assert!(page.contains("\\-\\-procs"), "{page}");
    // --help's examples, as lines of their own.
    let examples = page.split(".SH EXAMPLES\n.nf\n").nth(1).expect("EXAMPLES");
    assert!(examples.contains("\\&prefork \\-\\-procs 4"), "{page}");
    let page = text(&output(&["man", "enqueue"], &[]).stdout);
    assert!(
        page.contains(".TH prefork\\-enqueue 1") || page.contains(".TH prefork-enqueue 1"),
        "{page}"
    );
    assert!(page.contains("\\-\\-unique\\-key"), "{page}");
    let bad = output(&["man", "nope"], &[]);
    assert_eq!(bad.status.code(), Some(2));

    let help = text(&output(&["--help"], &[]).stdout);
    let examples = help.split("Examples:").nth(1).expect("examples at the end");
    assert!(examples.matches("\n  prefork").count() >= 4, "{help}");
}
