//! TLS against a throwaway cluster that serves it with a certificate from a
//! CA generated for the run: `sslmode` and `sslrootcert` mean what they mean
//! to libpq, the fork cases hold over TLS, and a fleet works its queue
//! over TLS.
//!
//! The famous failure of forking with TLS, "SSL error: decryption failed or
//! bad record mac", comes from a child writing on the session it inherited:
//! both processes then advance one TLS state each. The fork guard's rule
//! (a child never uses or closes an inherited connection) rules it out;
//! these tests run the fork cases over TLS to show it.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/fork_cases.rs"]
mod fork_cases;

use std::time::{Duration, Instant};

use common::{Ctx, Observer, Test, backend_pid};
use fork_safe::{Database, MaxAge};
use nix::sys::signal::{Signal, kill};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// The run's certificates, PEM, handed from the runner to every test
/// process: the CA that signed the server's certificate, a CA that did not,
/// and the server's certificate and key.
const CA_ENV: &str = "FORK_SAFE_TEST_TLS_CA";
const STRANGER_ENV: &str = "FORK_SAFE_TEST_TLS_STRANGER";
const CERT_ENV: &str = "FORK_SAFE_TEST_TLS_CERT";
const KEY_ENV: &str = "FORK_SAFE_TEST_TLS_KEY";

fn main() {
    if std::env::var_os(CA_ENV).is_none() {
        let (ca, cert, key) = certificates("fork_safe test CA", true);
        let (stranger, _, _) = certificates("a stranger's CA", false);
        for (name, value) in [
            (CA_ENV, ca),
            (STRANGER_ENV, stranger),
            (CERT_ENV, cert),
            (KEY_ENV, key),
        ] {
            // SAFETY: the runner is single-threaded here, before any test
            // runs; the test processes inherit the variables.
            unsafe { std::env::set_var(name, value) };
        }
    }
    let mut tests: Vec<Test> = fork_cases::CASES.to_vec();
    tests.extend_from_slice(&[
        ("sessions_are_encrypted_and_verified", encrypted),
        (
            "sslmode_and_sslrootcert_mean_what_they_mean_to_libpq",
            modes,
        ),
        (
            "a_child_killed_mid_query_leaves_the_parents_tls_session",
            killed_mid_query,
        ),
        ("a_fleet_works_its_queue_over_tls", fleet),
    ]);
    let env = |name| std::env::var(name).expect("the run's certificates");
    common::main(
        fork_safe::cluster::Builder::new().tls(&env(CERT_ENV), &env(KEY_ENV)),
        configure,
        &tests,
        &[],
    )
}

/// A CA (PEM), and if `serve`, a server certificate it signed for
/// `localhost` (not for 127.0.0.1) and its key.
fn certificates(name: &str, serve: bool) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    if !serve {
        return (ca_cert.pem(), String::new(), String::new());
    }
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Writes the PEM in `var` into the cluster's directory (removed with the
/// cluster); its path.
fn pem_file(var: &str, name: &str) -> String {
    let dir = std::env::var("FORK_SAFE_TEST_SOCKET_DIR").expect("the cluster's directory");
    let path = std::path::Path::new(&dir).join(name);
    std::fs::write(&path, std::env::var(var).expect("the run's certificates")).unwrap();
    path.display().to_string()
}

/// The server over TCP with `options` added.
fn tcp(options: &str) -> String {
    let url = std::env::var(common::TCP_URL_ENV).expect("a cluster that serves TLS");
    format!("{url} {options}")
}

/// The strictest mode, against the run's CA.
fn verified() -> String {
    tcp(&format!(
        "sslmode=verify-full sslrootcert={}",
        pem_file(CA_ENV, "ca.pem")
    ))
}

/// Every test's default database: verified TLS.
fn configure(_: &str) {
    fork_safe::configure([Database::new("default", &verified())
        .unwrap()
        .max_age(MaxAge::Forever)])
    .unwrap();
}

/// Whether the session of `alias` is encrypted.
fn ssl(alias: &str) -> Result<bool, fork_safe::Error> {
    fork_safe::with_client_for(alias, |c| {
        Ok(c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )?
        .get(0))
    })
}

fn encrypted(_: &mut Ctx) {
    assert!(
        ssl("default").unwrap(),
        "a verify-full session in clear text"
    );
    fork_safe::close_all();
}

fn modes(_: &mut Ctx) {
    let ca = pem_file(CA_ENV, "ca.pem");
    let stranger = pem_file(STRANGER_ENV, "stranger.pem");
    let by_ip = |options: &str| tcp(options).replacen("host=localhost", "host=127.0.0.1", 1);
    let databases = [
        (
            "full",
            tcp(&format!("sslmode=verify-full sslrootcert={ca}")),
        ),
        (
            "stranger",
            tcp(&format!("sslmode=verify-full sslrootcert={stranger}")),
        ),
        (
            "ip_full",
            by_ip(&format!("sslmode=verify-full sslrootcert={ca}")),
        ),
        (
            "ip_ca",
            by_ip(&format!("sslmode=verify-ca sslrootcert={ca}")),
        ),
        (
            "ip_ca_stranger",
            by_ip(&format!("sslmode=verify-ca sslrootcert={stranger}")),
        ),
        ("require", tcp("sslmode=require")),
        ("prefer", tcp("")),
        ("disable", tcp("sslmode=disable")),
    ];
    fork_safe::close_all();
    fork_safe::configure(
        databases
            .iter()
            .map(|(alias, url)| Database::new(alias, url).unwrap()),
    )
    .unwrap();
    assert!(ssl("full").unwrap());
    let refused = ssl("stranger").unwrap_err().to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let refused = ssl("ip_full").unwrap_err().to_string();
    assert!(refused.contains("not valid for name"), "{refused}");
    assert!(
        ssl("ip_ca").unwrap(),
        "verify-ca checks the chain, not the name"
    );
    let refused = ssl("ip_ca_stranger").unwrap_err().to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    assert!(ssl("require").unwrap());
    assert!(
        ssl("prefer").unwrap(),
        "libpq's default encrypts when it can"
    );
    assert!(!ssl("disable").unwrap());
    assert!(
        Database::new("bad", &tcp("sslmode=verify")).is_err(),
        "an sslmode libpq would refuse"
    );
    fork_safe::close_all();
}

/// A raw-forked child opens its own TLS session and is SIGKILLed in the
/// middle of a query on it; the parent's session, opened before the fork,
/// still answers, on the same backend, still encrypted.
fn killed_mid_query(ctx: &mut Ctx) {
    let before = backend_pid("default");
    let child = match fork_cases::raw_fork() {
        None => fork_cases::child(|| {
            let slept = fork_safe::with_client(|c| c.batch_execute("SELECT pg_sleep(60)"));
            i32::from(slept.is_err())
        }),
        Some(child) => child,
    };
    let mut obs = Observer::new(&ctx.url);
    let name = common::app_name("app", child.as_raw() as u32);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sleeping: i64 = obs
            .client()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.application_name = $1 AND a.query LIKE '%pg_sleep%' AND s.ssl",
                &[&name],
            )
            .unwrap()
            .get(0);
        if sleeping == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the child's query never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(child, Signal::SIGKILL).unwrap();
    let _ = nix::sys::wait::waitpid(child, None);
    let answer =
        fork_safe::with_client(|c| Ok(c.query_one("SELECT 41 + 1", &[])?.get::<_, i32>(0)));
    assert_eq!(answer.unwrap(), 42, "the parent's TLS session broke");
    assert_eq!(backend_pid("default"), before);
    assert!(ssl("default").unwrap());
    fork_safe::close_all();
}

/// `prefork` over verified TLS: every job's effect is written only if its
/// own session is encrypted, and a job past `--timeout` is cancelled (a
/// cancel request sent over TLS too) and fails alone.
fn fleet(ctx: &mut Ctx) {
    let mut obs = cli::reset(&ctx.url);
    let url = verified();
    let lines: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    cli::enqueue_lines(&url, &lines, &["--max-attempts", "1"]);
    let out = cli::prefork(
        &url,
        &[
            "--procs",
            "2",
            "--threads",
            "4",
            "--timeout",
            "1s",
            "--drain",
            "--sql",
            "INSERT INTO effects SELECT $1::int \
             FROM pg_stat_ssl, pg_sleep(CASE WHEN $1::int = 500 THEN 3 ELSE 0 END) \
             WHERE pid = pg_backend_pid() AND ssl",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = cli::count(
        &mut obs,
        "SELECT count(*) FROM prefork.jobs WHERE state = 'done'",
    );
    assert_eq!(done, 999);
    assert_eq!(cli::count(&mut obs, "SELECT count(*) FROM effects"), 999);
    let error: String = obs
        .client()
        .query_one(
            "SELECT last_error FROM prefork.jobs WHERE state = 'failed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(error.starts_with("timed out after 1s"), "{error}");
}
