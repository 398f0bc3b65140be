//! The status endpoint of a real fleet: `/metrics` parsed strictly and held
//! against the database, `/readyz` through TSTP and CONT, a killed child's
//! reason, and clients that misbehave.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use cli::{Master, count, enqueue_lines, first_child, reset};
use common::{Ctx, Observer};
use nix::sys::signal::{Signal, kill};

const EFFECT: &str = "INSERT INTO effects SELECT $1::int";

fn main() {
    common::main(
        fork_safe::cluster::Builder::new().max_connections(80),
        |_| {},
        &[
            (
                "metrics_agree_with_the_jobs_and_survive_a_killed_child",
                metrics_agree,
            ),
            ("readyz_follows_tstp_and_cont", readyz_quiet),
            (
                "slow_clients_neither_lock_out_a_scraper_nor_delay_a_respawn",
                slowloris,
            ),
            ("bad_requests_get_an_answer_and_nothing_else", bad_requests),
            (
                "programs_connections_count_in_the_bound_and_the_peak",
                program_connections,
            ),
        ],
        &[],
    )
}

/// Where a test's fleet serves its status: a Unix socket of its own, in
/// the cluster's directory (removed with the cluster).
fn socket(ctx: &Ctx, name: &str) -> String {
    ctx.socket_dir.join(name).to_string_lossy().into_owned()
}

/// A free TCP port on loopback (free a moment ago).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `request` as it is and reads the whole answer: code and body.
fn raw(addr: &str, request: &[u8]) -> Option<(u16, String)> {
    let mut answer = Vec::new();
    if addr.contains('/') {
        let mut s = UnixStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(request).ok()?;
        s.read_to_end(&mut answer).ok()?;
    } else {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(request).ok()?;
        s.read_to_end(&mut answer).ok()?;
    }
    let text = String::from_utf8(answer).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))?
        .parse()
        .ok()?;
    assert_eq!(length, body.len(), "Content-Length disagrees with the body");
    Some((code, body.to_owned()))
}

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// A scrape, parsed strictly: every sample of a family announced by `#
/// TYPE` (histograms by their `_bucket`, `_sum` and `_count`), every label
/// quoted, every value a number. Samples by `name{labels}`.
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (code, body) = get(addr, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{name} typed twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no # TYPE before it");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("labels of {line:?}"));
                for pair in inner.split("\",") {
                    let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(!v.trim_end_matches('"').contains('"') || v.contains("\\\""));
                }
            }
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

fn at(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

fn ready_children(addr: &str) -> f64 {
    match get(addr, "/metrics") {
        Some((200, _)) => at(&scrape(addr), "prefork_children{state=\"ready\"}"),
        _ => 0.0,
    }
}

fn metrics_agree(ctx: &mut Ctx) {
    let mut obs: Observer = reset(&ctx.url);
    let addr = socket(ctx, "agree.sock");
    // 3,000 jobs that succeed, 5 that fail both their attempts.
    let mut lines: String = (1..=3000).map(|i| format!("{i}\n")).collect();
    lines.push_str("x\nx\nx\nx\nx\n");
    enqueue_lines(&ctx.url, &lines, &["--max-attempts", "2"]);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--batch",
            "1",
            "--sql",
            "INSERT INTO effects SELECT $1::int FROM pg_sleep(0.001)",
            "--status-addr",
            &addr,
        ],
    );
    common::wait_until("both children ready", Duration::from_secs(20), || {
        ready_children(&addr) == 2.0
    });
    let done = "prefork_jobs_total{queue=\"default\",outcome=\"done\"}";
    // Counters grow while the fleet works...
    common::wait_until("some jobs done", Duration::from_secs(20), || {
        at(&scrape(&addr), done) >= 200.0
    });
    // ...and, once it is done, agree with the database exactly.
    common::wait_until("every job finished", Duration::from_secs(60), || {
        count(&mut obs, "SELECT count(*) FROM prefork.jobs_live") == 0
    });
    let end = scrape(&addr);
    let mut in_db = |state: &str| {
        count(
            &mut obs,
            &format!("SELECT count(*) FROM prefork.jobs WHERE state = '{state}'"),
        ) as f64
    };
    let (done_jobs, failed_jobs) = (in_db("done"), in_db("failed"));
    assert_eq!((done_jobs, failed_jobs), (3000.0, 5.0));
    assert_eq!(at(&end, done), done_jobs);
    assert_eq!(
        at(
            &end,
            "prefork_jobs_total{queue=\"default\",outcome=\"failed\"}"
        ),
        failed_jobs
    );
    assert_eq!(
        at(
            &end,
            "prefork_jobs_total{queue=\"default\",outcome=\"retried\"}"
        ),
        5.0
    );
    let count_series = "prefork_job_duration_seconds_count{queue=\"default\"}";
    let jobs_total: f64 = ["done", "failed", "retried", "timed_out", "cancelled"]
        .iter()
        .map(|o| {
            at(
                &end,
                &format!("prefork_jobs_total{{queue=\"default\",outcome=\"{o}\"}}"),
            )
        })
        .sum();
    assert_eq!(at(&end, count_series), jobs_total);
    assert!(at(&end, "prefork_claim_duration_seconds_count") >= 1.0);
    assert!(at(&end, "prefork_claim_duration_seconds_bucket{le=\"+Inf\"}") >= 1.0);
    assert_eq!(
        at(
            &end,
            "prefork_job_duration_seconds_bucket{queue=\"default\",le=\"+Inf\"}"
        ),
        jobs_total
    );
    // The queues' counts come from the database, read after a scrape asks.
    common::wait_until("the queue gauge", Duration::from_secs(5), || {
        scrape(&addr)
            .get("prefork_queue_jobs{queue=\"default\",state=\"queued\"}")
            .is_some_and(|v| *v == 0.0)
    });
    // While scrapes come, the counts are kept fresh without being asked:
    // jobs queued after a scrape (and after the read it asked for) show in
    // the next one 7.5 s later (one scrape behind, it would still say 0).
    scrape(&addr);
    std::thread::sleep(Duration::from_millis(1500));
    let later = cli::prefork(
        &ctx.url,
        &["enqueue", "later", "--in", "1h", "--count", "7"],
    )
    .output()
    .unwrap();
    assert!(later.status.success());
    std::thread::sleep(Duration::from_millis(7500));
    assert_eq!(
        at(
            &scrape(&addr),
            "prefork_queue_jobs{queue=\"default\",state=\"queued\"}"
        ),
        7.0
    );
    obs.client()
        .batch_execute("DELETE FROM prefork.jobs_live WHERE payload = 'later'")
        .unwrap();
    // A child killed mid-run: its exit is counted under "signal", and what
    // it had counted stays in the fleet's sums.
    let lines: String = (3001..=6000).map(|i| format!("{i}\n")).collect();
    enqueue_lines(&ctx.url, &lines, &[]);
    common::wait_until("more jobs done", Duration::from_secs(20), || {
        at(&scrape(&addr), done) >= 3200.0
    });
    let before = at(&scrape(&addr), done);
    let child = first_child(master.pid()).expect("a child");
    kill(child, Signal::SIGKILL).unwrap();
    common::wait_until("the kill is counted", Duration::from_secs(10), || {
        at(
            &scrape(&addr),
            "prefork_child_exits_total{reason=\"signal\"}",
        ) == 1.0
    });
    let after = scrape(&addr);
    assert!(
        at(&after, done) >= before,
        "the done counter went back from {before} to {} when a child died",
        at(&after, done)
    );
    assert_eq!(at(&after, "prefork_child_restarts_total"), 1.0);
    // /status: one JSON object with both children, one of them replaced.
    let (code, status) = get(&addr, "/status").unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["children"].as_array().unwrap().len(), 2);
    assert_eq!(status["exits"]["signal"], 1);
    assert!(
        status["children"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["last_exit"]["reason"] == "signal" && c["restarts"] == 1)
    );
    assert!(status["children"][0]["pss_bytes"].as_u64().unwrap() > 0);
    kill(master.pid(), Signal::SIGTERM).unwrap();
    let (code, err) = master.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    assert!(
        !std::path::Path::new(&addr).exists(),
        "the socket file outlived the master"
    );
}

/// Programs' own connections (psql here, under a shell: the PGAPPNAME
/// each program inherits names its pid) count in `prefork_backends`, in
/// `/status`, in the summary's peak, and in the bound.
fn program_connections(ctx: &mut Ctx) {
    let mut obs: Observer = reset(&ctx.url);
    let addr = socket(ctx, "programs.sock");
    enqueue_lines(&ctx.url, "1\n2\n3\n4\n", &[]);
    let psql = fork_safe::cluster::find_bindir().unwrap().join("psql");
    let script = format!(
        "{} \"$DATABASE_URL\" -qAtc 'SELECT pg_sleep(4)'",
        psql.display()
    );
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--batch",
            "1",
            "--drain",
            "--status-addr",
            &addr,
            "--exec",
            "sh",
            "-c",
            &script,
        ],
    );
    let programs = |obs: &mut Observer| {
        count(
            obs,
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name LIKE 'prefork:program:%'",
        )
    };
    common::wait_until("4 programs' backends", Duration::from_secs(20), || {
        programs(&mut obs) == 4
    });
    common::wait_until("the children to count them", Duration::from_secs(3), || {
        let Some((200, body)) = get(&addr, "/status") else {
            return false;
        };
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let counted: u64 = status["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["program_connections"].as_u64().unwrap())
            .sum();
        counted == 4
    });
    let backends = at(&scrape(&addr), "prefork_backends");
    assert!(
        backends >= 5.0,
        "prefork_backends {backends}: the programs' 4 and more"
    );
    let (code, err) = master.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    let summary = err
        .lines()
        .find(|l| l.contains("peak backends"))
        .unwrap_or_else(|| panic!("no summary: {err}"));
    // 2 x (2 x (1 + 1) + 1) + 1: each worker and its program, each child's
    // keeper, the master.
    assert!(summary.contains("(bound 11, 16 while"), "{summary}");
    let peak: u32 = summary
        .split("peak backends ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((5..=11).contains(&peak), "{summary}");
}

fn readyz_quiet(ctx: &mut Ctx) {
    reset(&ctx.url);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "1",
            "--sql",
            EFFECT,
            "--status-addr",
            &addr,
        ],
    );
    common::wait_until("/readyz says ready", Duration::from_secs(20), || {
        get(&addr, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert_eq!(get(&addr, "/livez").unwrap().0, 200);
    kill(master.pid(), Signal::SIGTSTP).unwrap();
    common::wait_until("/readyz says quiet", Duration::from_secs(5), || {
        get(&addr, "/readyz").is_some_and(|(code, body)| code == 503 && body.contains("quiet"))
    });
    assert_eq!(get(&addr, "/livez").unwrap().0, 200, "quiet is still live");
    kill(master.pid(), Signal::SIGCONT).unwrap();
    common::wait_until("/readyz ready again", Duration::from_secs(5), || {
        get(&addr, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    kill(master.pid(), Signal::SIGTERM).unwrap();
    let (code, err) = master.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
}

/// How long a SIGKILLed child takes to be replaced and ready, as the
/// endpoint shows it.
fn respawn(master: &Master, addr: &str) -> Duration {
    let child = first_child(master.pid()).expect("a child");
    let restarts = at(&scrape(addr), "prefork_child_restarts_total");
    let killed = Instant::now();
    kill(child, Signal::SIGKILL).unwrap();
    common::wait_until("the child replaced", Duration::from_secs(20), || {
        let s = scrape(addr);
        at(&s, "prefork_child_restarts_total") > restarts
            && at(&s, "prefork_children{state=\"ready\"}") == 2.0
    });
    killed.elapsed()
}

fn slowloris(ctx: &mut Ctx) {
    reset(&ctx.url);
    let addr = format!("127.0.0.1:{}", free_port());
    let master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "1",
            "--sql",
            EFFECT,
            "--status-addr",
            &addr,
        ],
    );
    common::wait_until("both children ready", Duration::from_secs(20), || {
        ready_children(&addr) == 2.0
    });
    let quiet = respawn(&master, &addr);
    // 200 clients that connect, send half a request line, and wait.
    let held: Vec<TcpStream> = (0..200)
        .filter_map(|_| {
            let mut s = TcpStream::connect(&addr).ok()?;
            s.write_all(b"GET /metr").ok()?;
            Some(s)
        })
        .collect();
    assert_eq!(held.len(), 200, "the kernel refused the slow clients");
    // A scraper is still answered at once.
    let started = Instant::now();
    assert_eq!(get(&addr, "/metrics").map(|(c, _)| c), Some(200));
    let scrape_took = started.elapsed();
    let busy = respawn(&master, &addr);
    eprintln!("respawn {quiet:?} quiet, {busy:?} with 200 slow clients; scrape {scrape_took:?}");
    assert!(
        scrape_took < Duration::from_secs(1),
        "a scrape waited {scrape_took:?} behind slow clients"
    );
    // A master that waited on a slow client would be 5 s late.
    assert!(
        busy < quiet + Duration::from_secs(2),
        "the respawn took {busy:?} with slow clients, {quiet:?} without"
    );
    drop(held);
}

fn bad_requests(ctx: &mut Ctx) {
    reset(&ctx.url);
    let addr = socket(ctx, "bad.sock");
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "1",
            "--sql",
            EFFECT,
            "--status-addr",
            &addr,
        ],
    );
    common::wait_until("the endpoint answers", Duration::from_secs(20), || {
        get(&addr, "/livez").is_some()
    });
    assert_eq!(get(&addr, "/nope").unwrap().0, 404);
    assert_eq!(
        raw(&addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .0,
        405
    );
    assert_eq!(raw(&addr, b"\x16\x03\x01\x02\x00\r\n\r\n").unwrap().0, 400);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 9 * 1024));
    assert_eq!(raw(&addr, &huge).map(|(c, _)| c), Some(431));
    // HEAD: the headers of a GET, no body.
    let mut s = UnixStream::connect(&addr).unwrap();
    s.write_all(b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"));
    // A second master cannot take a live socket.
    let second = cli::prefork(
        &ctx.url,
        &["--procs", "1", "--sql", EFFECT, "--status-addr", &addr],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        err.contains("status endpoint") && !err.contains("panicked"),
        "{err}"
    );
    assert!(master.running(), "the second master hurt the first");
    kill(master.pid(), Signal::SIGTERM).unwrap();
    let (code, err) = master.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
}
