//! The fleet itself (`prefork [OPTIONS] --sql|--exec|--worker ...`): its
//! handler checked before anything starts, the queue's settings and the
//! master's, the run, and its one-line summary.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use fork_safe::Database;
use fork_safe::prefork::Prefork;
use fork_safe::queue::{self, Handler, QueueApp, QueueConfig, Schema};

use super::{
    Fail, FleetArgs, config, connect, connection_string, database, find_program, progress, queues,
    runtime, throwaway_cluster, usage,
};

/// The job timeout, if any.
fn timeout(args: &FleetArgs) -> Option<Duration> {
    args.timeout.and_then(|l| l.0)
}

/// Runs the fleet `args` describe with `program` (a `--exec` or `--worker`
/// handler, from the command line or the config file) until it is stopped
/// or, with `--drain`, until nothing is left; then prints its summary.
pub(crate) fn fleet_main(
    args: FleetArgs,
    program: Option<config::ProgramHandler>,
) -> Result<(), Fail> {
    // A reload or a scaling signal sent while the master still starts up
    // waits for it.
    fork_safe::prefork::hold_signals().map_err(runtime)?;
    let queues = queues(&args.db)?;
    let schema = Schema::new(&args.db.schema).map_err(usage)?;
    let handler = match (&args.sql, program) {
        (Some(_), Some(t)) => {
            return Err(usage(format!(
                "give one handler: --sql or {}, not both",
                t.flag
            )));
        }
        (None, None) => {
            return Err(usage(
                "a handler is required: --sql STATEMENT, --exec PROGRAM [ARGS...] or --worker PROGRAM [ARGS...]",
            ));
        }
        (None, Some(t)) if t.argv.is_empty() => {
            return Err(usage(format!("{} needs a PROGRAM", t.flag)));
        }
        (None, Some(config::ProgramHandler { flag, argv, .. })) => {
            if !find_program(&argv[0]) {
                return Err(usage(format!(
                    "{flag}: program {:?} not found or not executable",
                    argv[0]
                )));
            }
            match flag {
                "--worker" => Handler::Resident { argv },
                _ => Handler::Exec { argv },
            }
        }
        (Some(sql), None) => {
            check_statement_text(sql)?;
            Handler::Sql(sql.clone())
        }
    };
    let given = connection_string(&args.db);
    if let Some(url) = &given {
        database(url)?;
    }
    let listen = args
        .listen_url
        .as_deref()
        .map(|url| {
            Database::new("listen", url).map_err(|e| usage(format!("invalid --listen-url: {e}")))
        })
        .transpose()?;
    let _cluster;
    let url = match given {
        Some(url) => url,
        None => {
            eprintln!("prefork: no database configured; starting a throwaway PostgreSQL cluster");
            let cluster = throwaway_cluster(|builder| builder)?;
            eprintln!(
                "prefork: throwaway cluster at {}",
                cluster.socket_dir().display()
            );
            let url = cluster.connection_string();
            _cluster = cluster;
            url
        }
    };
    fork_safe::set_role("master");
    let database = database(&url)?
        .max_age(args.max_age)
        .max_idle(args.max_idle.0)
        .health_checks(args.health_checks);
    let listen_alias = listen.as_ref().map(|db| db.alias().to_owned());
    connect([database].into_iter().chain(listen), &schema)?;
    if let Handler::Sql(sql) = &handler {
        check_statement(sql)?;
    }
    if let Some(n) = args.sample {
        let payloads: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        let how = queue::Enqueue {
            queue: &queues[0],
            ..queue::Enqueue::default()
        };
        let queued = fork_safe::with_client(|c| queue::enqueue(c, &schema, &how, &payloads))
            .map_err(runtime)?;
        fork_safe::close_all();
        eprintln!("prefork: queued {queued} sample job(s)");
    }
    let before = counts(&schema, &queues)?;
    let mut lease = args.lease;
    if let Some(timeout) = timeout(&args) {
        lease = lease.max(timeout + Duration::from_secs(60));
    }
    let config = QueueConfig {
        schema: schema.clone(),
        queues: queues.clone(),
        batch: args.batch,
        lease,
        timeout: timeout(&args),
        drain: args.drain,
        listen: listen_alias,
        poll: args.poll,
        keep_finished: args.keep_finished.0,
        rescue_after: args.rescue_after.0,
        resident_max_jobs: args.worker_max_jobs,
        resident_boot_timeout: args.boot_timeout,
        resident_memory: fork_safe::prefork::MemoryLimits::from_megabytes(
            args.reload_on_rss,
            args.max_memory,
            args.max_memory_readings,
        ),
        withhold_credentials: args.withhold_credentials,
        program_connections: args.program_connections as usize,
        kinds: args.kinds.clone(),
    };
    let procs = args.procs.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let fleet = Prefork::new()
        .procs(procs)
        .threads(args.threads as usize)
        .timeout(timeout(&args))
        .boot_timeout(args.boot_timeout)
        .graceful_timeout(args.graceful_timeout)
        .max_requests(args.max_requests, args.max_requests_jitter)
        .max_lifetime(
            args.max_lifetime.and_then(|l| l.0),
            args.max_lifetime_jitter,
        )
        .reload_on_rss(args.reload_on_rss)
        .max_memory(args.max_memory, args.max_memory_readings)
        .crash_limit(args.crash_limit)
        .strict(args.strict)
        .pidfile(args.pidfile.clone())
        .status_addr(args.status_addr.clone())
        .min_ready(args.min_ready.map(|n| n as usize));
    let mut app = QueueApp::new(config, handler);
    let bounds = fleet.connection_bounds(&app);
    // A drain watched on a terminal: a live line of the jobs finished.
    let mut line = None;
    if args.drain {
        if let Some(progress) = progress::Progress::jobs((before.queued + before.running) as u64) {
            let (shown, update) = progress.in_master();
            app = app.on_progress(update);
            line = Some(shown);
        }
    }
    let stats = app.stats();
    let started = Instant::now();
    let report = fleet.run(app).map_err(runtime);
    drop(line);
    let report = report?;
    let elapsed = started.elapsed();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let (done, failed) = (stats.done.load(relaxed), stats.failed.load(relaxed));
    // What is left, if the server answers in a moment: a stop never waits
    // on a frozen or unreachable server.
    let left = match counts_within(&schema, &queues, SUMMARY_WAIT) {
        Some(after) => format!("{} queued, {} running left", after.queued, after.running),
        None => "the server did not say what is left".to_owned(),
    };
    let summary = format!(
        "prefork: {done} job(s) done, {failed} failed in {elapsed:.1?} ({:.0} jobs/s); \
         {left}; peak backends {} (bound {}, {} while a child is replaced); \
         {} restart(s)",
        done as f64 / elapsed.as_secs_f64().max(1e-9),
        stats.peak_backends.load(relaxed),
        // One connection per worker thread (a child's idle leader is one of
        // them) and what its programs may hold, each child's keeper's, and
        // the master's.
        bounds.steady,
        bounds.replacing,
        report.restarts
    );
    if std::io::stderr().is_terminal() || args.drain || args.sample.is_some() {
        eprintln!("{summary}");
    } else {
        log::info!("{summary}");
    }
    Ok(())
}

/// Refuses a `--sql` statement that could not work as a job before anything
/// starts, rather than failing (or passing) every job: an empty one, or one
/// that controls the transaction (each job's statement runs inside the
/// transaction that records its outcome). The server's part comes in
/// [`check_statement`].
fn check_statement_text(sql: &str) -> Result<(), Fail> {
    let words = leading_words(sql, 2);
    let Some(first) = words.first() else {
        return Err(usage("invalid --sql: the statement is empty"));
    };
    let second = words.get(1).map_or("", String::as_str);
    let controls = matches!(
        first.as_str(),
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"
    ) || (first == "PREPARE" && second == "TRANSACTION");
    if controls || first == "VACUUM" {
        return Err(usage(format!(
            "invalid --sql: {first} cannot run in a job, whose statement runs inside \
             the transaction that records the job's outcome"
        )));
    }
    Ok(())
}

/// Refuses a `--sql` statement the server cannot prepare (a syntax error,
/// an unknown table), or one that wants more than `$1`. Prepared inside a
/// transaction, so behind PgBouncer the statement is created and closed on
/// one server connection.
fn check_statement(sql: &str) -> Result<(), Fail> {
    let checked = fork_safe::with_client(|c| {
        let mut tx = c.transaction()?;
        let prepared = tx
            .prepare_typed(sql, &[postgres::types::Type::TEXT])
            .map(|statement| statement.params().len());
        tx.rollback()?;
        Ok(prepared)
    });
    fork_safe::close_all();
    let e = match checked.map_err(runtime)? {
        Ok(params) if params > 1 => {
            return Err(usage(format!(
                "invalid --sql: it uses ${params}, but a job gives only $1 (its payload)"
            )));
        }
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    match e.as_db_error() {
        Some(db) => Err(usage(format!(
            "invalid --sql: {} (SQLSTATE {})",
            db.message(),
            db.code().code()
        ))),
        None => Err(runtime(e)),
    }
}

/// The first `n` words of a statement, upper-cased, past white space,
/// comments, parentheses and semicolons.
fn leading_words(sql: &str, n: usize) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = sql;
    while words.len() < n {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(' || c == ';');
        if let Some(comment) = rest.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = rest.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(rest.len());
            if end == 0 {
                // Not a word (a `$1`, a quote): nothing more to learn here.
                if !rest.is_empty() && words.is_empty() {
                    words.push(String::new());
                }
                break;
            }
            words.push(rest[..end].to_ascii_uppercase());
            rest = &rest[end..];
        }
    }
    words
}

/// Counts of `queues`, summed.
/// How long the summary waits for the server to say what is left.
const SUMMARY_WAIT: Duration = Duration::from_secs(2);

/// [`counts`], if the server answers within `wait`: on a thread of its
/// own (the fleet has stopped, so the master forks no more), left behind
/// otherwise.
fn counts_within(schema: &Schema, queues: &[String], wait: Duration) -> Option<queue::Counts> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (schema, queues) = (schema.clone(), queues.to_vec());
    fork_safe::thread::spawn(move || {
        let _ = tx.send(counts(&schema, &queues).ok());
    });
    rx.recv_timeout(wait).ok().flatten()
}

fn counts(schema: &Schema, queues: &[String]) -> Result<queue::Counts, Fail> {
    let counts = fork_safe::with_client(|c| {
        let mut sum = queue::Counts::default();
        for q in queues {
            sum += queue::counts(c, schema, q)?;
        }
        Ok(sum)
    })
    .map_err(runtime);
    fork_safe::close_all();
    counts
}
