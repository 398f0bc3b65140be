//! The job queue at fleet scale, in real processes against a real server:
//! nothing lost, nothing run twice, connections within their bound.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use cli::{Master, assert_all_done_once, count, enqueue_lines, first_child, reset};
use common::{Ctx, Observer};
use nix::sys::signal::{Signal, kill};

const EFFECT: &str = "INSERT INTO effects SELECT $1::int";

fn main() {
    common::main(
        fork_safe::cluster::Builder::new().max_connections(120),
        |_| {},
        &[
            (
                "twenty_thousand_jobs_within_the_connection_bound",
                twenty_thousand,
            ),
            (
                "hup_reloads_stay_within_one_child_of_the_bound",
                reloads_within_bound,
            ),
            (
                "jobs_survive_a_child_killed_every_200ms",
                killed_every_200ms,
            ),
            (
                "a_child_stopped_past_its_lease_repeats_no_effect",
                stopped_past_lease,
            ),
            ("jobs_survive_a_server_restart", server_restart),
            ("two_masters_share_one_queue", two_masters),
            (
                "a_graceful_stop_hands_back_unstarted_jobs_at_once",
                stop_hands_back,
            ),
            (
                "term_past_the_graceful_timeout_hands_back_unfinished_jobs_uncounted",
                term_interrupts,
            ),
            (
                "drain_ends_when_someone_else_finishes_the_last_job",
                drain_by_others,
            ),
            (
                "idle_fleet_holds_one_connection_per_child_and_picks_up_on_it",
                idle_fleet,
            ),
            ("enqueue_takes_100000_lines_from_stdin", enqueue_many),
            (
                "fleet_behind_pgbouncer_transaction_pooling",
                behind_pgbouncer,
            ),
            (
                "a_claim_whose_answer_was_lost_is_released_on_reconnect",
                lost_claim,
            ),
            ("keep_finished_deletes_old_finished_jobs", keep_finished),
            ("sql_enqueue_in_the_application_transaction", sql_enqueue),
            ("tstp_quiets_the_fleet_and_cont_resumes_it", quiet),
        ],
        &[],
    )
}

fn enqueue(ctx: &Ctx, n: usize) {
    let lines: String = (1..=n).map(|i| format!("{i}\n")).collect();
    enqueue_lines(&ctx.url, &lines, &["--max-attempts", "100"]);
}

/// Waits for a draining fleet and checks it exited 0.
fn drained(master: &mut Master, within: Duration) {
    let (code, err) = master.wait(within);
    assert_eq!(code, 0, "the fleet failed: {err}");
}

fn fleet_backends(obs: &mut Observer) -> i64 {
    count(
        obs,
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name LIKE 'prefork:master:%' OR application_name LIKE 'prefork:child:%'",
    )
}

/// Samples the fleet's backends on a thread until stopped; the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Sampler {
    fn start(url: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicI64::new(0));
        let mut obs = Observer::new(url);
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            let mut samples = 0;
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(fleet_backends(&mut obs), Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            samples
        });
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (i64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.take().unwrap().join().unwrap();
        (self.peak.load(Ordering::Relaxed), samples)
    }
}

fn twenty_thousand(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue(ctx, 20_000);
    let sampler = Sampler::start(&ctx.url);
    let mut master = Master::start(
        &ctx.url,
        &["--procs", "4", "--threads", "8", "--drain", "--sql", EFFECT],
    );
    drained(&mut master, Duration::from_secs(300));
    let (peak, samples) = sampler.finish();
    // One connection per thread (a child's leader is one of its workers),
    // each child's keeper's, and the master's: 4 x (8 + 1) + 1.
    eprintln!("    peak fleet backends {peak} over {samples} samples (bound 4 x (8 + 1) + 1 = 37)");
    assert!(samples > 20);
    assert!(peak <= 37, "the fleet held {peak} connections");
    assert_all_done_once(&mut obs, 20_000);
    assert_eq!(
        fleet_backends(&mut obs),
        0,
        "backends left after the master exited"
    );
}

/// Forty HUPs while every job takes a while (so a retired child finishes
/// its batch long after its replacement is ready): the fleet never holds
/// more than one child beyond its steady bound, `(procs + 1) x threads + 1`,
/// and loses or repeats nothing.
fn reloads_within_bound(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue(ctx, 3_000);
    let sampler = Sampler::start(&ctx.url);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "4",
            "--drain",
            "--sql",
            "INSERT INTO effects SELECT $1::int FROM pg_sleep(0.02)",
        ],
    );
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        if !master.running() {
            break;
        }
        let _ = kill(master.pid(), Signal::SIGHUP);
    }
    drained(&mut master, Duration::from_secs(300));
    let (peak, samples) = sampler.finish();
    eprintln!("    peak fleet backends {peak} over {samples} samples (bound (2 + 1) x 4 + 1 = 13)");
    assert!(samples > 20);
    assert!(
        peak <= 13,
        "the fleet held {peak} connections while reloading"
    );
    assert_all_done_once(&mut obs, 3_000);
}

fn killed_every_200ms(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue(ctx, 20_000);
    let mut master = Master::start(
        &ctx.url,
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
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut kills = 0;
    while master.running() {
        assert!(Instant::now() < deadline, "the fleet never drained");
        std::thread::sleep(Duration::from_millis(200));
        if let Some(child) = first_child(master.pid()) {
            if kill(child, Signal::SIGKILL).is_ok() {
                kills += 1;
            }
        }
    }
    eprintln!("    {kills} children killed");
    drained(&mut master, Duration::from_secs(1));
    assert!(kills >= 5, "too few kills: {kills}");
    assert_all_done_once(&mut obs, 20_000);
}

/// A child SIGSTOPped for three of its leases (`--rescue-after 1s`): its
/// workers hold claims (a claim
/// the server committed while the child was stopped included), the other
/// child's sweep requeues them and works them, and when the stopped child
/// resumes, its workers run nothing for the jobs they lost. Every effect
/// exactly once.
fn stopped_past_lease(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue(ctx, 20_000);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "4",
            "--rescue-after",
            "1s",
            "--drain",
            "--sql",
            EFFECT,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let child = loop {
        let done = count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'",
        );
        if done >= 1_000 {
            if let Some(child) = first_child(master.pid()) {
                break child;
            }
        }
        assert!(Instant::now() < deadline, "the fleet did not get going");
        std::thread::sleep(Duration::from_millis(10));
    };
    kill(child, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // Taken over: given back as suspects (their attempt too), or, past
    // that, charged.
    let taken_over = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE suspect OR attempts > 1",
    );
    kill(child, Signal::SIGCONT).unwrap();
    drained(&mut master, Duration::from_secs(120));
    eprintln!("    {taken_over} job(s) taken over from the stopped child");
    assert!(
        taken_over > 0,
        "nothing was taken over: the test proves nothing"
    );
    assert_all_done_once(&mut obs, 20_000);
}

fn server_restart(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue(ctx, 10_000);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "4",
            "--drain",
            "--sql",
            "INSERT INTO effects SELECT $1::int FROM pg_sleep(0.001)",
        ],
    );
    // Restart once some, but not all, of the work is done: a fixed sleep
    // can be outrun by a fast fleet.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&mut obs, "SELECT count(*) FROM effects") < 1_000 {
        assert!(Instant::now() < deadline, "the fleet made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let done_before = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE state = 'done'",
    );
    assert!(done_before < 10_000, "drained before the restart");
    drop(obs);
    ctx.restart_server();
    drained(&mut master, Duration::from_secs(300));
    let mut obs = Observer::new(&ctx.url);
    assert_all_done_once(&mut obs, 10_000);
}

fn two_masters(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue(ctx, 10_000);
    let args = ["--procs", "2", "--threads", "4", "--drain", "--sql", EFFECT];
    let mut a = Master::start(&ctx.url, &args);
    let mut b = Master::start(&ctx.url, &args);
    drained(&mut a, Duration::from_secs(300));
    drained(&mut b, Duration::from_secs(300));
    assert_all_done_once(&mut obs, 10_000);
}

/// A fleet stopped while its children's local queues hold claimed jobs they
/// have not started: those are queued again as the children stop, not at
/// lease expiry, with their attempt given back; the jobs in hand finish.
fn stop_hands_back(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue(ctx, 5_000);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--sql",
            "INSERT INTO effects SELECT $1::int FROM pg_sleep(0.005)",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let running = loop {
        let done = count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'done'",
        );
        let running = count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'running'",
        );
        if done >= 100 {
            break running;
        }
        assert!(Instant::now() < deadline, "the fleet did not get going");
        std::thread::sleep(Duration::from_millis(10));
    };
    // More claimed than the 4 workers have in hand: the local queues.
    assert!(
        running > 4 * 8,
        "only {running} jobs claimed: nothing prefetched"
    );
    kill(master.pid(), Signal::SIGTERM).unwrap();
    drained(&mut master, Duration::from_secs(30));
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'running'"
        ),
        0,
        "claimed jobs left waiting for their lease"
    );
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'queued' AND attempts > 0"
        ),
        0,
        "an unstarted job lost an attempt"
    );
    let done = count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE state = 'done'",
    );
    assert_eq!(count(&mut obs, "SELECT count(*) FROM effects"), done);
    assert_eq!(
        count(&mut obs, "SELECT count(DISTINCT v) FROM effects"),
        done
    );
}

/// TERM with jobs longer than the graceful timeout, Kubernetes style: the
/// fleet exits 0 soon after the timeout, and every job it had not finished
/// is queued again at once with its attempt given back: a program that
/// takes TERM (handed back by its worker), a program that ignores it and a
/// statement (their child killed, handed back by the master).
fn term_interrupts(ctx: &mut Ctx) {
    for handler in [
        ["--exec", "sleep 30"],
        ["--exec", "trap '' TERM; sleep 30"],
        ["--sql", "SELECT pg_sleep(30)"],
    ] {
        let mut obs = reset(&ctx.url);
        enqueue_lines(&ctx.url, "1\n2\n3\n4\n5\n6\n", &["--max-attempts", "1"]);
        let command = handler[1].to_owned();
        let exec = ["sh".to_owned(), "-c".to_owned(), command.clone()];
        let mut args: Vec<&str> =
            vec!["--procs", "2", "--threads", "2", "--graceful-timeout", "1s"];
        match handler[0] {
            "--exec" => {
                args.push("--exec");
                args.extend(exec.iter().map(String::as_str));
            }
            _ => args.extend(handler),
        }
        let mut master = Master::start(&ctx.url, &args);
        // Four running, one per worker (a --sql child claims the rest for
        // its local queue too).
        common::wait_until("four jobs running", Duration::from_secs(20), || {
            count(
                &mut obs,
                "SELECT count(*) FROM prefork.jobs WHERE state = 'running'",
            ) >= 4
        });
        std::thread::sleep(Duration::from_millis(300));
        let termed = Instant::now();
        kill(master.pid(), Signal::SIGTERM).unwrap();
        drained(&mut master, Duration::from_secs(20));
        let took = termed.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "{command}: the stop took {took:?} with a 1 s graceful timeout"
        );
        let queued = count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'queued' AND attempts = 0",
        );
        assert_eq!(
            queued, 6,
            "{command}: not every job is queued again with its attempt given back"
        );
        assert_eq!(
            count(
                &mut obs,
                "SELECT count(*) FROM prefork.jobs_live WHERE last_error IS NOT NULL"
            ),
            0,
            "{command}: an interrupted job was marked with an error"
        );
    }
}

/// A draining fleet whose last job is held elsewhere (another fleet's
/// worker) exits once that job is finished there: it looks at the
/// database, not at its own work.
fn drain_by_others(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue(ctx, 1);
    let id: i64 = obs
        .client()
        .query_one(
            "SELECT job_id FROM prefork.claim(ARRAY['default'], 1, 'elsewhere:1/0', 600)",
            &[],
        )
        .unwrap()
        .get(0);
    let args = [
        "--procs",
        "1",
        "--threads",
        "2",
        "--drain",
        "--poll",
        "100ms",
        "--sql",
        EFFECT,
    ];
    let mut master = Master::start(&ctx.url, &args);
    // Its leader is up and has looked at the queue (and found the job
    // running).
    common::wait_until("a child to connect", Duration::from_secs(30), || {
        count(
            &mut obs,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'prefork:child:%'",
        ) > 0
    });
    assert!(
        master.running(),
        "the fleet stopped with a job still running"
    );
    obs.client()
        .execute(
            "SELECT prefork.complete('elsewhere:1/0', ARRAY[$1::int8], ARRAY[1], ARRAY[true],
                                     ARRAY['ran elsewhere'], true)",
            &[&id],
        )
        .unwrap();
    drained(&mut master, Duration::from_secs(30));
    assert_eq!(count(&mut obs, "SELECT count(*) FROM effects"), 0);
}

fn idle_fleet(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    obs.client()
        .batch_execute("CREATE TABLE pickups (v int NOT NULL, pid int NOT NULL)")
        .unwrap();
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "3",
            "--threads",
            "4",
            "--sql",
            "INSERT INTO pickups SELECT $1::int, pg_backend_pid()",
        ],
    );
    // Booted and settled: every worker connects once to look for work,
    // then all but each child's leader let go. Settled means one
    // connection per child, seen in 20 samples in a row.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 20 {
        let children = count(
            &mut obs,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'prefork:child:%'",
        );
        in_a_row = if children == 3 { in_a_row + 1 } else { 0 };
        assert!(
            Instant::now() < deadline,
            "the fleet did not settle: {children}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Sample across more than one fallback-poll interval (1 s): idle
    // workers must not reconnect to look for work.
    let mut peak = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        peak = peak.max(fleet_backends(&mut obs));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(master.running());
    assert!(peak <= 3 + 1, "an idle fleet of 3 held {peak} connections");
    assert!(peak >= 3, "each child has a leader: {peak}");
    // status lists the three live children, recorded by their master.
    let out = cli::prefork(&ctx.url, &["status", "--json"])
        .output()
        .unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let master_pid = format!("\"master_pid\":{}", master.pid());
    assert_eq!(
        json.matches(&master_pid).count(),
        3,
        "live children: {json}"
    );
    // Jobs enqueued into the idle fleet are picked up by a leader, on the
    // connection it already had: no connect on the way. (The lead may move
    // to another worker while a job runs, so the leaders are read again,
    // once settled, before each job.)
    let leaders = |obs: &mut Observer| -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last: Vec<i32> = Vec::new();
        loop {
            let now: Vec<i32> = obs
                .client()
                .query_one(
                    "SELECT coalesce(array_agg(pid ORDER BY pid), '{}') FROM pg_stat_activity
                     WHERE application_name LIKE 'prefork:child:%'",
                    &[],
                )
                .unwrap()
                .get(0);
            if now.len() == 3 && now == last {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "the idle fleet never settled to a leader per child: {now:?}"
            );
            last = now;
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut latencies = Vec::new();
    for i in 1..=20 {
        let leaders = leaders(&mut obs);
        let enqueued = Instant::now();
        cli::enqueue_lines(&ctx.url, &format!("{i}\n"), &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            let row = obs
                .client()
                .query_opt("SELECT pid FROM pickups WHERE v = $1", &[&i])
                .unwrap();
            if let Some(row) = row {
                break row.get::<_, i32>(0);
            }
            assert!(
                Instant::now() < deadline,
                "the idle fleet never picked job {i} up"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        latencies.push(enqueued.elapsed());
        assert!(
            leaders.contains(&pid),
            "job {i} ran on backend {pid}, not on an idle leader's {leaders:?}"
        );
    }
    latencies.sort();
    eprintln!(
        "    idle pickup, enqueue command to effect: median {:.1?} (the command's own start-up included)",
        latencies[latencies.len() / 2]
    );
    kill(master.pid(), Signal::SIGTERM).unwrap();
    drained(&mut master, Duration::from_secs(30));
}

fn enqueue_many(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let started = Instant::now();
    enqueue(ctx, 100_000);
    eprintln!("    100,000 jobs enqueued in {:.2?}", started.elapsed());
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'queued'"
        ),
        100_000
    );
}

/// A PgBouncer in front of the test cluster, in transaction pooling mode
/// with fewer server connections than the fleet has threads. Stopped on drop.
struct PgBouncer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

impl PgBouncer {
    const POOL_SIZE: usize = 4;

    fn start(ctx: &Ctx) -> PgBouncer {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let bin = ["pgbouncer", "/usr/sbin/pgbouncer"]
            .into_iter()
            .find(|b| {
                std::process::Command::new(b)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("pgbouncer not found: scripts/test installs it (apt-get install pgbouncer)");
        let dir = std::env::temp_dir().join(format!("fork_safe-bouncer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Like the server, PgBouncer will not run as root.
        let user = nix::unistd::geteuid()
            .is_root()
            .then(|| nix::unistd::User::from_name("postgres").unwrap().unwrap());
        if let Some(user) = &user {
            nix::unistd::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
        }
        let d = dir.display();
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n\
                 postgres = host={} port=5432 dbname=postgres\n\
                 [pgbouncer]\n\
                 listen_addr =\n\
                 listen_port = 6432\n\
                 unix_socket_dir = {d}\n\
                 auth_type = trust\n\
                 auth_file = {d}/users.txt\n\
                 pool_mode = transaction\n\
                 default_pool_size = {}\n\
                 max_client_conn = 200\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {d}/pgbouncer.log\n\
                 pidfile = {d}/pgbouncer.pid\n",
                ctx.socket_dir.display(),
                Self::POOL_SIZE,
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(dir.join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(user) = &user {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let child = cmd.spawn().unwrap();
        let url = format!("host={d} port=6432 user=postgres dbname=postgres");
        let bouncer = PgBouncer { child, dir, url };
        let deadline = Instant::now() + Duration::from_secs(10);
        while postgres::Client::connect(&bouncer.url, postgres::NoTls).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        bouncer
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Through PgBouncer in transaction mode (a server connection per
/// transaction, four for eight threads), with the leaders LISTENing on a
/// direct connection: every job done once, and an idle fleet whose fallback
/// poll is a minute away still picks a job up, so the notification reached
/// a leader.
fn behind_pgbouncer(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let bouncer = PgBouncer::start(ctx);
    let lines: String = (1..=5_000).map(|i| format!("{i}\n")).collect();
    enqueue_lines(&bouncer.url, &lines, &[]);
    let mut master = Master::start(
        &bouncer.url,
        &[
            "--procs",
            "2",
            "--threads",
            "4",
            "--listen-url",
            &ctx.url,
            "--poll",
            "60s",
            "--sql",
            EFFECT,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&mut obs, "SELECT count(*) FROM effects") < 5_000 {
        assert!(master.running(), "the fleet died");
        assert!(Instant::now() < deadline, "the fleet did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_all_done_once(&mut obs, 5_000);
    // Idle now: one more job, enqueued through the pooler.
    // Idle now (the last job's completion has committed; give the
    // workers a moment to go idle): one more job, through the pooler.
    std::thread::sleep(Duration::from_millis(500));
    enqueue_lines(&bouncer.url, "5001\n", &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&mut obs, "SELECT count(*) FROM effects") < 5_001 {
        assert!(
            Instant::now() < deadline,
            "the idle fleet behind PgBouncer never picked the job up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(master.pid(), Signal::SIGTERM).unwrap();
    drained(&mut master, Duration::from_secs(30));
    assert_all_done_once(&mut obs, 5_001);
}

/// A claim can commit and its answer be lost with the connection; the
/// worker then holds a job it never heard of. After reconnecting it
/// releases every job stamped with its name, so the job runs now rather
/// than after its lease (5 minutes).
fn lost_claim(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let mut master = Master::start(
        &ctx.url,
        &["--procs", "1", "--threads", "1", "--sql", EFFECT],
    );
    // The only worker, idle, leads: once settled (the same one backend
    // for half a second), its backend is the fleet's only one. (The
    // child's first lease is taken on a connection of the child's main
    // thread, closed before its workers start: the same name, for a
    // moment; taking that one for the leader's made the test flaky.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen: Option<(i32, String)> = None;
    let mut same = 0;
    let (backend, name) = loop {
        let rows = obs
            .client()
            .query(
                "SELECT pid, application_name FROM pg_stat_activity
                 WHERE application_name LIKE 'prefork:child:%'",
                &[],
            )
            .unwrap();
        let row = match rows.as_slice() {
            [row] => Some((row.get::<_, i32>(0), row.get::<_, String>(1))),
            _ => None,
        };
        same = if row.is_some() && row == seen {
            same + 1
        } else {
            0
        };
        seen = row;
        if same >= 10 {
            break seen.expect("seen");
        }
        assert!(Instant::now() < deadline, "no leader settled");
        std::thread::sleep(Duration::from_millis(50));
    };
    let child = name.rsplit(':').next().unwrap();
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    // What the server holds after a claim by worker 0 whose answer was
    // lost (claims are stamped `host:pid/worker.seq`; this one is none the
    // child knows of).
    obs.client()
        .execute(
            "INSERT INTO prefork.jobs_live (queue, payload, state, attempts, locked_by, locked_until)
             VALUES ('default', '7', 'running', 1, $1, now() + interval '5 minutes')",
            &[&format!("{host}:{child}/0.999999")],
        )
        .unwrap();
    obs.client()
        .execute("SELECT pg_terminate_backend($1)", &[&backend])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while count(&mut obs, "SELECT count(*) FROM effects") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stranded job was not released"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_all_done_once(&mut obs, 1);
    kill(master.pid(), Signal::SIGTERM).unwrap();
    drained(&mut master, Duration::from_secs(30));
}

/// `--keep-finished`: finished jobs of the queue are deleted once older,
/// queued ones and other queues' are not.
fn keep_finished(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    enqueue_lines(&ctx.url, "1\n2\n3\n", &["--queue", "other"]);
    let mut other = Master::start(
        &ctx.url,
        &[
            "--procs", "1", "--queue", "other", "--drain", "--sql", EFFECT,
        ],
    );
    drained(&mut other, Duration::from_secs(30));
    enqueue(ctx, 100);
    enqueue_lines(&ctx.url, "500\n", &["--run-at", "2100-01-01"]);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--keep-finished",
            "1s",
            "--poll",
            "100ms",
            "--sql",
            EFFECT,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE queue = 'default'",
        );
        if left == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} jobs left, want only the future one"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(&mut obs, "SELECT count(*) FROM effects"), 103);
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE queue = 'other' AND state = 'done'"
        ),
        3,
        "another queue's jobs were deleted"
    );
    assert_eq!(
        count(
            &mut obs,
            "SELECT count(*) FROM prefork.jobs WHERE state = 'queued'"
        ),
        1
    );
    kill(master.pid(), Signal::SIGTERM).unwrap();
    drained(&mut master, Duration::from_secs(30));
}

/// `prefork.enqueue()` from the application's own transaction: a rolled
/// back job never exists, a committed one is picked up through its
/// notification (the fallback poll is a minute away).
fn sql_enqueue(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "1",
            "--threads",
            "2",
            "--poll",
            "60s",
            "--sql",
            EFFECT,
        ],
    );
    // The fleet has migrated the schema once its leader listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &mut obs,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'prefork:child:%'",
    ) < 1
    {
        assert!(Instant::now() < deadline, "the fleet did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut tx = obs.client().transaction().unwrap();
    tx.execute("SELECT prefork.enqueue('default', '41')", &[])
        .unwrap();
    tx.rollback().unwrap();
    let mut tx = obs.client().transaction().unwrap();
    tx.execute("INSERT INTO effects VALUES (0)", &[]).unwrap();
    tx.execute("SELECT prefork.enqueue('default', '42')", &[])
        .unwrap();
    tx.commit().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&mut obs, "SELECT count(*) FROM effects WHERE v = 42") == 0 {
        assert!(
            Instant::now() < deadline,
            "the committed job was not picked up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count(&mut obs, "SELECT count(*) FROM prefork.jobs"), 1);
    assert_eq!(count(&mut obs, "SELECT count(*) FROM effects"), 2);
    kill(master.pid(), Signal::SIGTERM).unwrap();
    drained(&mut master, Duration::from_secs(30));
}

/// TSTP: the fleet takes no new jobs (the master stays up, the children
/// stay connected to nothing new); CONT: it takes them again.
fn quiet(ctx: &mut Ctx) {
    let mut obs = reset(&ctx.url);
    let mut master = Master::start(
        &ctx.url,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--poll",
            "200ms",
            "--sql",
            EFFECT,
        ],
    );
    common::wait_until("the children listen", Duration::from_secs(10), || {
        count(
            &mut obs,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'prefork:child:%'",
        ) >= 2
    });
    kill(master.pid(), Signal::SIGTSTP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    enqueue(ctx, 10);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(master.running(), "TSTP stopped the master itself");
    assert_eq!(
        count(&mut obs, "SELECT count(*) FROM effects"),
        0,
        "a quiet fleet took jobs"
    );
    kill(master.pid(), Signal::SIGCONT).unwrap();
    common::wait_until("the jobs run after CONT", Duration::from_secs(10), || {
        count(&mut obs, "SELECT count(*) FROM effects") == 10
    });
    kill(master.pid(), Signal::SIGTERM).unwrap();
    drained(&mut master, Duration::from_secs(30));
}
