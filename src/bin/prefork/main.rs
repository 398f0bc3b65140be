//! `prefork`: a supervised fleet of children x workers (processes x threads)
//! working a PostgreSQL job queue, plus `enqueue` and `status`.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use fork_safe::cluster::TempCluster;
use fork_safe::prefork::Prefork;
use fork_safe::queue::{self, Handler, QueueApp, QueueConfig, Schema};
use fork_safe::{Database, MaxAge};
use postgres::types::Type;

mod bench;
mod config;
mod jobs;
mod logging;
mod manual;
mod progress;
mod schedule;

/// Exit status for bad usage (clap's convention).
const USAGE: u8 = 2;

/// A prefork master: N children (processes) x M workers (threads) working a PostgreSQL job queue.
///
/// Run the fleet with `--sql STATEMENT`, `--exec PROGRAM [ARGS...]` (a
/// program per job) or `--worker PROGRAM [ARGS...]` (a long-lived program
/// per worker, fed one job at a time: see the README's protocol); `--exec`
/// and `--worker` take everything after them, so put them last. With no database
/// configured at all (no --database-url, DATABASE_URL, PGHOST or
/// PGDATABASE) the fleet runs on a throwaway PostgreSQL cluster. Settings
/// may come from a TOML file (`--config`): a flag beats its environment
/// variable, which beats the file, which beats the default.
#[derive(Parser, Debug)]
#[command(
    name = "prefork",
    version,
    args_conflicts_with_subcommands = true,
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Read settings from this TOML file: the fleet's options by their
    /// flags' names (`procs = 4`, `health-checks = true`, `timeout =
    /// "5m"`), `database-url`, and the handler (`sql = "..."`, or `exec` or
    /// `worker` = [PROGRAM, ARGS...]). A flag or environment variable
    /// overrides the file; `prefork config` shows what is in effect.
    #[arg(long, global = true, env = "PREFORK_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// How log lines are written: text, or one JSON object per line (time,
    /// level, target, message, process, role, and fields such as child,
    /// pid, reason and job) for log shippers.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "PREFORK_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: logging::LogFormat,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Queue jobs: one PAYLOAD (N copies with --count), or one per line of
    /// standard input with `-`.
    Enqueue(EnqueueArgs),
    /// Jobs by state, and the fleet's backends.
    Status(StatusArgs),
    /// List and show jobs; retry failed ones; cancel queued or running ones.
    Jobs(jobs::JobsArgs),
    /// Queue jobs on a cron expression: add, list, remove schedules (every
    /// running fleet fires them, each tick once).
    Schedule(schedule::ScheduleArgs),
    /// Measure the queue on this server: queue jobs in a scratch schema,
    /// drain them with a fleet of the shape given, print jobs/s, CPU per
    /// job, peak backends and latency, and drop the schema.
    Bench(bench::BenchArgs),
    /// Print the fleet's settings in effect and where each came from (flag,
    /// environment, file, default), as a TOML file `--config` reads;
    /// passwords are masked. Takes the fleet's options.
    Config(Box<FleetArgs>),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell): `prefork completions bash > /etc/bash_completion.d/prefork`.
    Completions(manual::CompletionsArgs),
    /// Print the man page (roff): `prefork man | man -l -`; `prefork man
    /// enqueue` for a subcommand's.
    Man(manual::ManArgs),
}

/// `--help`'s closing examples.
const EXAMPLES: &str = "\
Examples:
  # 4 children x 8 workers, each job's payload as $1 of a statement:
  prefork --procs 4 --threads 8 --sql 'UPDATE accounts SET seen = now() WHERE id = $1::int'

  # A Python program per worker, loaded once, fed one job at a time:
  prefork --procs 4 --threads 8 --timeout 5m --worker python3 examples/workers/worker.py

  # Queue a file's lines as jobs, then work them until none is left:
  prefork enqueue - < ids.txt && prefork --drain --sql 'SELECT process($1)'

  # The settings kept in a file; see what is in effect, then run:
  prefork --config prefork.toml config && prefork --config prefork.toml";

#[derive(Args, Debug, Clone)]
struct DbArgs {
    /// PostgreSQL URL or libpq key=value string; sslmode (disable, allow,
    /// prefer, require, verify-ca, verify-full) and sslrootcert (a PEM file,
    /// or "system") as in libpq.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Schema holding the queue's tables.
    #[arg(long, env = "PREFORK_SCHEMA", default_value = "prefork", global = true)]
    schema: String,
    /// The queue; a fleet may work several, in order of preference
    /// (`a,b,c`: a job of `a` before one of `b`).
    #[arg(long, env = "PREFORK_QUEUE", default_value = "default", global = true)]
    queue: String,
}

#[derive(Args, Debug, Clone)]
struct FleetArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Child processes [default: number of CPUs].
    #[arg(long, env = "PREFORK_PROCS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    procs: Option<u32>,
    /// Worker threads per child.
    #[arg(long, env = "PREFORK_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// Run each job's payload as $1 of this SQL statement (a text parameter).
    #[arg(long, env = "PREFORK_SQL")]
    sql: Option<String>,
    /// Connection max age: a duration, 0 (close after every job) or "forever".
    #[arg(long, env = "PREFORK_MAX_AGE", default_value = "30m", value_parser = parse_max_age)]
    max_age: MaxAge,
    /// Close connections idle this long: a duration, or 0/"forever" to keep them.
    #[arg(long, env = "PREFORK_MAX_IDLE", default_value = "10m", value_parser = parse_limit)]
    max_idle: Limit,
    /// Check a reused connection before its first use in each job.
    #[arg(long, env = "PREFORK_HEALTH_CHECKS")]
    health_checks: bool,
    /// How long one job may take [default: no limit]: past it, a --sql job's
    /// statement is cancelled or an --exec program's process group stopped,
    /// and that job alone fails; a child still in one job at twice this is
    /// killed and replaced.
    #[arg(long, env = "PREFORK_TIMEOUT", value_parser = parse_limit)]
    timeout: Option<Limit>,
    /// Kill a child not ready this long after it started.
    #[arg(long, env = "PREFORK_BOOT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    boot_timeout: Duration,
    /// On stop, SIGKILL children still busy after this long.
    #[arg(long, env = "PREFORK_GRACEFUL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    graceful_timeout: Duration,
    /// Recycle a child after this many jobs.
    #[arg(long, env = "PREFORK_MAX_REQUESTS")]
    max_requests: Option<u64>,
    /// Add up to this many jobs at random to --max-requests, per child.
    #[arg(long, env = "PREFORK_MAX_REQUESTS_JITTER", default_value_t = 0)]
    max_requests_jitter: u64,
    /// Recycle a child after it lived this long [default: never].
    #[arg(long, env = "PREFORK_MAX_LIFETIME", value_parser = parse_limit)]
    max_lifetime: Option<Limit>,
    /// Add up to this much at random to --max-lifetime, per child.
    #[arg(long, env = "PREFORK_MAX_LIFETIME_JITTER", default_value = "0s", value_parser = parse_duration)]
    max_lifetime_jitter: Duration,
    /// Recycle a child whose resident memory exceeds this many MB (counts
    /// pages shared with the master in full: see --max-memory).
    #[arg(long, env = "PREFORK_RELOAD_ON_RSS")]
    reload_on_rss: Option<u64>,
    /// Recycle a child whose proportional memory (PSS: a page shared by N
    /// processes counts 1/N) exceeds this many MB in --max-memory-readings
    /// consecutive readings, one a second.
    #[arg(long, env = "PREFORK_MAX_MEMORY", value_name = "MB")]
    max_memory: Option<u64>,
    /// Consecutive readings over --max-memory before a recycle.
    #[arg(long, env = "PREFORK_MAX_MEMORY_READINGS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    max_memory_readings: u32,
    /// Exit non-zero after this many consecutive early deaths of a child.
    #[arg(long, env = "PREFORK_CRASH_LIMIT")]
    crash_limit: Option<u32>,
    /// Refuse to start if procs x threads + 1 connections exceed the free slots.
    #[arg(long, env = "PREFORK_STRICT")]
    strict: bool,
    /// Write the master's pid here.
    #[arg(long, env = "PREFORK_PIDFILE")]
    pidfile: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /status (JSON), /livez and /readyz from
    /// the master at IP:PORT (`127.0.0.1:9187`, `[::1]:9187`) or a Unix socket
    /// path. Off by default; keep it on loopback unless a scraper needs it.
    #[arg(long, env = "PREFORK_STATUS_ADDR", value_name = "ADDR")]
    status_addr: Option<fork_safe::prefork::StatusAddr>,
    /// Children that must be ready for /readyz to say 200 [default: all].
    #[arg(long, env = "PREFORK_MIN_READY",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    min_ready: Option<u32>,
    /// A --worker program is started afresh after this many jobs.
    #[arg(long, env = "PREFORK_WORKER_MAX_JOBS",
          value_parser = clap::value_parser!(u64).range(1..))]
    worker_max_jobs: Option<u64>,
    /// Exit 0 once nothing is queued or running.
    #[arg(long, env = "PREFORK_DRAIN")]
    drain: bool,
    /// Jobs one worker runs and commits at once, at least: from a deep
    /// local queue it takes a fair share, up to 64, and a --sql batch what
    /// runs in 20 ms, up to 256 (a child claims for all its workers, up to
    /// 8 batches each).
    #[arg(long, env = "PREFORK_BATCH", default_value_t = 8,
          value_parser = clap::value_parser!(i64).range(1..=1000))]
    batch: i64,
    /// How often a child looks for work that came without a notification
    /// (retries coming due), for dead rows to vacuum, expired leases and
    /// finished jobs to delete.
    #[arg(long, env = "PREFORK_POLL", default_value = "1s", value_parser = parse_positive_duration)]
    poll: Duration,
    /// Delete finished jobs this long after they finished: a duration,
    /// "forever" to keep them, or 0 to keep no history (done jobs are
    /// deleted as they complete, which is cheaper; failed ones are kept).
    #[arg(long, env = "PREFORK_KEEP_FINISHED", default_value = "forever", value_parser = parse_keep)]
    keep_finished: Keep,
    /// Where each child's idle leader LISTENs for new jobs: a direct or
    /// session-pooled URL, for jobs that go through PgBouncer in transaction
    /// mode [default: the database URL].
    #[arg(long, env = "PREFORK_LISTEN_URL", hide_env_values = true)]
    listen_url: Option<String>,
    /// How long a master's heartbeat (every second) may be missing before
    /// another master takes it for dead and hands its children's running
    /// jobs back: a duration, or "forever" to leave them to --lease.
    #[arg(long, env = "PREFORK_RESCUE_AFTER", default_value = "15s", value_parser = parse_limit)]
    rescue_after: Limit,
    /// How long a claim holds before a dead host's jobs are taken over.
    #[arg(long, env = "PREFORK_LEASE", default_value = "300s", value_parser = parse_duration)]
    lease: Duration,
    /// Queue this many sample jobs (payloads 1..N) before starting.
    #[arg(long)]
    sample: Option<u64>,
}

#[derive(Args, Debug)]
struct EnqueueArgs {
    /// The payload, or `-` for one payload per line of standard input.
    payload: String,
    /// Queue this many copies of PAYLOAD.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// Attempts before a job is failed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    max_attempts: i32,
    /// When the jobs become runnable (a PostgreSQL timestamp).
    #[arg(long, conflicts_with = "in_")]
    run_at: Option<String>,
    /// Runnable this long from now.
    #[arg(long = "in", id = "in_", value_parser = parse_duration)]
    in_: Option<Duration>,
    /// Smaller runs first (0, the default, is the most urgent); within a
    /// priority, the oldest first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    priority: i32,
    /// At most one unfinished (queued or running) job of the queue has
    /// this key: another enqueue with it queues nothing and names the job
    /// that holds it (with `-`, each line is such an enqueue).
    #[arg(long)]
    unique_key: Option<String>,
    /// This job's time limit [default: the fleet's --timeout].
    #[arg(long, value_parser = parse_positive_duration)]
    timeout: Option<Duration>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// A failure: exit status and one line.
struct Fail(u8, String);

fn usage(message: impl Into<String>) -> Fail {
    Fail(USAGE, message.into())
}

fn runtime(message: impl std::fmt::Display) -> Fail {
    Fail(1, message.to_string())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    // `--exec PROGRAM [ARGS...]` or `--worker PROGRAM [ARGS...]`, whichever
    // comes first, owns everything after it.
    let program = args
        .iter()
        .position(|a| a == "--exec" || a == "--worker")
        .map(|i| {
            let rest = args.split_off(i);
            let flag = if rest[0] == "--worker" {
                "--worker"
            } else {
                "--exec"
            };
            config::Program::from_flag(flag, rest[1..].to_vec())
        });
    globals_after_subcommand(&mut args);
    let (mut cli, matches, file) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    logging::init(cli.log_format);
    let program = match &mut cli.command {
        Some(Command::Config(fleet)) => {
            let level = matches.subcommand_matches("config").unwrap_or(&matches);
            handler(fleet, level, program, file.as_ref())
        }
        _ => handler(&mut cli.fleet, &matches, program, file.as_ref()),
    };
    let result = match cli.command {
        Some(Command::Enqueue(args)) => enqueue_main(&cli.fleet.db, &args),
        Some(Command::Status(args)) => status_main(&cli.fleet.db, &args),
        Some(Command::Jobs(args)) => jobs::jobs_main(&cli.fleet.db, &args),
        Some(Command::Schedule(args)) => schedule::schedule_main(&cli.fleet.db, &args),
        Some(Command::Bench(args)) => bench_main(&cli.fleet.db, &args),
        Some(Command::Config(fleet)) => {
            config_main(&fleet, &matches, file.as_ref(), program.as_ref())
        }
        Some(Command::Completions(args)) => manual::completions(Cli::command(), args.shell)
            .map_err(|e| runtime(format!("writing the completion script: {e}"))),
        Some(Command::Man(args)) => {
            manual::man(Cli::command(), args.subcommand.as_deref()).map_err(usage)
        }
        None => fleet_main(cli.fleet, program),
    };
    // Every path, including errors, ends with no connection open.
    fork_safe::close_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// Options every command takes, with a value.
const GLOBAL_OPTIONS: [&str; 5] = [
    "--config",
    "--database-url",
    "--schema",
    "--queue",
    "--log-format",
];

/// Moves the options every command takes from before a subcommand to
/// after it (`prefork --config f.toml enqueue x` as `prefork enqueue
/// --config f.toml x`): the fleet's own options conflict with subcommands,
/// and clap counts a global option given at the top as one of them. Only
/// when nothing else comes before the subcommand.
fn globals_after_subcommand(args: &mut Vec<String>) {
    let command = Cli::command();
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        if GLOBAL_OPTIONS
            .iter()
            .any(|o| arg.starts_with(&format!("{o}=")))
        {
            i += 1;
        } else if GLOBAL_OPTIONS.contains(&arg.as_str()) {
            i += 2;
        } else {
            if i > 1 && command.find_subcommand(arg).is_some() {
                let sub = args.remove(i);
                args.insert(1, sub);
            }
            return;
        }
    }
}

/// Parses the command line, with the config file's values as defaults
/// when `--config` or `PREFORK_CONFIG` names one (see `config`): the
/// options, their matches (for where each value came from), and the file.
/// On bad usage, the exit status, with the one line said.
fn parse(args: &[String]) -> Result<(Cli, clap::ArgMatches, Option<config::File>), ExitCode> {
    let first = Cli::command()
        .try_get_matches_from(args)
        .map_err(clap_exit)?;
    let file = match config::path(&first) {
        None => None,
        Some(path) => match config::File::load(&path, &Cli::command()) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("error: {e}");
                return Err(ExitCode::from(USAGE));
            }
        },
    };
    let matches = match &file {
        None => first,
        Some(file) => file
            .apply(Cli::command())
            .try_get_matches_from(args)
            .map_err(clap_exit)?,
    };
    let cli = Cli::from_arg_matches(&matches).map_err(clap_exit)?;
    Ok((cli, matches, file))
}

/// The handler that takes a program, deciding between the command line's
/// and the file's as for any option: a handler given as a flag (or `--sql`
/// in the environment) replaces the file's.
fn handler(
    fleet: &mut FleetArgs,
    matches: &clap::ArgMatches,
    given: Option<config::Program>,
    file: Option<&config::File>,
) -> Option<config::Program> {
    use clap::parser::ValueSource;
    let sql_from_file = matches!(
        matches
            .try_get_raw("sql")
            .ok()
            .flatten()
            .and(matches.value_source("sql")),
        Some(ValueSource::DefaultValue)
    );
    if given.is_some() {
        if sql_from_file {
            fleet.sql = None;
        }
        return given;
    }
    if fleet.sql.is_some() && !sql_from_file {
        return None;
    }
    file.and_then(config::File::program)
}

/// Help and version print and exit 0; anything else is one line and exit 2.
fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    eprintln!("{}", one_line(&e.to_string()));
    ExitCode::from(USAGE)
}

/// `prefork config`: the settings in effect, and where each came from.
fn config_main(
    fleet: &FleetArgs,
    matches: &clap::ArgMatches,
    file: Option<&config::File>,
    program: Option<&config::Program>,
) -> Result<(), Fail> {
    // Built, so that the options every command takes (`--log-format`) are
    // the subcommand's too.
    let mut command = Cli::command();
    command.build();
    let sub = command
        .find_subcommand("config")
        .ok_or_else(|| runtime("no config subcommand"))?;
    let sub_matches = matches
        .subcommand_matches("config")
        .ok_or_else(|| runtime("no config subcommand matches"))?;
    let fallback = connection_string(&fleet.db);
    print!(
        "{}",
        config::report(sub, sub_matches, file, program, fallback.as_deref())
    );
    Ok(())
}

/// A clap error on one line: its first paragraph (what is wrong, with the
/// lines that list the arguments concerned), without the usage and tips.
fn one_line(text: &str) -> String {
    let line = text
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        "error: bad arguments".to_owned()
    } else {
        line
    }
}

/// Every duration option takes the crate's one grammar
/// ([`fork_safe::duration`]).
fn parse_duration(text: &str) -> Result<Duration, String> {
    fork_safe::duration::parse(text).map_err(|e| e.to_string())
}

/// A limit: a duration, or `forever`/`0` for none.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<Duration>);

fn parse_limit(text: &str) -> Result<Limit, String> {
    fork_safe::duration::parse_limit(text)
        .map(Limit)
        .map_err(|e| e.to_string())
}

/// How long finished jobs are kept: `None` forever, zero not at all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keep(pub(crate) Option<Duration>);

/// `forever`, or a duration, 0 meaning "keep no history".
pub(crate) fn parse_keep(text: &str) -> Result<Keep, String> {
    if text.trim() == "forever" {
        return Ok(Keep(None));
    }
    parse_duration(text).map(|d| Keep(Some(d)))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("invalid duration {text:?}: must be above zero")),
        d => Ok(d),
    }
}

fn parse_max_age(text: &str) -> Result<MaxAge, String> {
    text.parse()
        .map_err(|e: fork_safe::duration::ParseDurationError| e.to_string())
}

/// The connection string: the flag/DATABASE_URL, else libpq's environment
/// variables, else `None` (use a throwaway cluster).
fn connection_string(db: &DbArgs) -> Option<String> {
    if let Some(url) = &db.database_url {
        return Some(url.clone());
    }
    let vars = [
        ("PGHOST", "host"),
        ("PGPORT", "port"),
        ("PGUSER", "user"),
        ("PGDATABASE", "dbname"),
        ("PGPASSWORD", "password"),
        ("PGSSLMODE", "sslmode"),
        ("PGSSLROOTCERT", "sslrootcert"),
    ];
    if std::env::var_os("PGHOST").is_none() && std::env::var_os("PGDATABASE").is_none() {
        return None;
    }
    let parts: Vec<String> = vars
        .iter()
        .filter_map(|(var, key)| {
            let value = std::env::var(var).ok()?;
            Some(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ))
        })
        .collect();
    Some(parts.join(" "))
}

/// The schema, checking the one queue a command other than the fleet
/// works on.
fn schema(db: &DbArgs) -> Result<Schema, Fail> {
    if db.queue.contains(',') {
        return Err(usage(format!(
            "--queue {:?}: one queue here (only a fleet works several)",
            db.queue
        )));
    }
    queue::check_queue_name(&db.queue).map_err(usage)?;
    Schema::new(&db.schema).map_err(usage)
}

/// A fleet's queues, in order of preference: `a,b,c`.
fn queues(db: &DbArgs) -> Result<Vec<String>, Fail> {
    let mut queues: Vec<String> = Vec::new();
    for name in db.queue.split(',') {
        queue::check_queue_name(name).map_err(usage)?;
        if queues.iter().any(|q| q == name) {
            return Err(usage(format!("--queue: {name:?} is named twice")));
        }
        queues.push(name.to_owned());
    }
    Ok(queues)
}

/// Configures the registry and migrates the schema.
fn connect(databases: impl IntoIterator<Item = Database>, schema: &Schema) -> Result<(), Fail> {
    fork_safe::configure(databases).map_err(runtime)?;
    fork_safe::with_client(|c| queue::migrate(c, schema)).map_err(runtime)?;
    fork_safe::close_all();
    Ok(())
}

fn database(url: &str) -> Result<Database, Fail> {
    Database::new("default", url).map_err(|e| usage(format!("invalid --database-url: {e}")))
}

fn needs_database(db: &DbArgs, command: &str) -> Result<String, Fail> {
    connection_string(db).ok_or_else(|| {
        usage(format!(
            "{command} needs a database: set --database-url or DATABASE_URL \
             (a throwaway database lives only as long as a fleet)"
        ))
    })
}

fn enqueue_main(db: &DbArgs, args: &EnqueueArgs) -> Result<(), Fail> {
    let schema = schema(db)?;
    let url = needs_database(db, "enqueue")?;
    let database = database(&url)?;
    let stdin = args.payload == "-";
    if stdin && args.count != 1 {
        return Err(usage(
            "--count applies to one PAYLOAD, not to standard input",
        ));
    }
    if !stdin {
        check_payload(args.payload.as_bytes()).map_err(|why| usage(format!("PAYLOAD: {why}")))?;
    }
    fork_safe::set_role("cli");
    connect([database], &schema)?;
    if let Some(at) = &args.run_at {
        fork_safe::with_client(|c| {
            c.execute_typed(
                "SELECT $1::text::timestamptz",
                &[(at, postgres::types::Type::TEXT)],
            )
        })
        .map_err(|e| usage(format!("invalid --run-at {at:?}: {e}")))?;
    }
    let how = queue::Enqueue {
        queue: &db.queue,
        max_attempts: args.max_attempts,
        run_at: args.run_at.as_deref(),
        run_in: args.in_,
        priority: args.priority,
        unique_key: args.unique_key.as_deref(),
        timeout: args.timeout,
    };
    let nothing = |e: fork_safe::Error| runtime(format!("{e}; nothing was queued"));
    if stdin {
        // A regular file's size is known: the line shows how much is read.
        let size = std::fs::metadata("/dev/stdin")
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len());
        let line = progress::Progress::lines(size);
        let (lines, queued) = enqueue_lines(&schema, &how, std::io::stdin().lock(), line.as_ref())?;
        drop(line);
        match &args.unique_key {
            Some(key) if lines > queued => println!(
                "queued {queued} job(s) on {:?}; {} line(s) found unique key {key:?} held",
                db.queue,
                lines - queued
            ),
            _ => println!("queued {queued} job(s) on {:?}", db.queue),
        }
    } else if args.count == 1 {
        let done = fork_safe::with_client(|c| queue::enqueue_one(c, &schema, &how, &args.payload))
            .map_err(nothing)?;
        match (done.created, &args.unique_key) {
            (true, _) => println!("queued job {} on {:?}", done.id, db.queue),
            (false, key) => println!(
                "job {} on {:?} already holds unique key {:?}; nothing was queued",
                done.id,
                db.queue,
                key.as_deref().unwrap_or_default()
            ),
        }
    } else {
        let queued = fork_safe::with_client(|c| {
            queue::enqueue_copies(c, &schema, &how, &args.payload, args.count)
        })
        .map_err(nothing)?;
        println!("queued {queued} job(s) on {:?}", db.queue);
    }
    fork_safe::close_all();
    Ok(())
}

/// Lines of standard input sent to the server at once: memory stays
/// bounded by this many payloads, whatever the input's length.
const LINES_PER_INSERT: usize = 10_000;

/// Queues one job per line of `input`, all in one transaction: a bad line
/// (not UTF-8, a NUL byte), a read error or a server error queues nothing,
/// and says which line. Returns the lines read and the jobs queued (fewer
/// when a unique key was held).
fn enqueue_lines(
    schema: &Schema,
    how: &queue::Enqueue<'_>,
    mut input: impl BufRead,
    progress: Option<&progress::Progress>,
) -> Result<(u64, u64), Fail> {
    let streamed = fork_safe::with_client(|c| {
        let mut tx = c.transaction()?;
        let mut line = 0u64;
        let mut bytes = 0u64;
        let mut queued = 0;
        let mut chunk = Vec::with_capacity(LINES_PER_INSERT);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let read = match input.read_until(b'\n', &mut buf) {
                Ok(read) => read,
                Err(e) => {
                    let why = format!("reading standard input after line {line}: {e}");
                    return Ok(Err(why));
                }
            };
            if read > 0 {
                line += 1;
                bytes += read as u64;
                if let Some(p) = progress.filter(|_| line % progress::READ_STRIDE == 0) {
                    p.read(line, bytes);
                }
                // As `BufRead::lines`: the line ends at "\n" or "\r\n".
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                match check_payload(&buf) {
                    Ok(payload) => chunk.push(payload.to_owned()),
                    Err(why) => return Ok(Err(format!("line {line}: {why}"))),
                }
            }
            if chunk.len() == LINES_PER_INSERT || (read == 0 && !chunk.is_empty()) {
                queued += queue::enqueue_in(&mut tx, schema, how, &chunk)?;
                chunk.clear();
            }
            if read == 0 {
                break;
            }
        }
        tx.commit()?;
        Ok(Ok((line, queued)))
    });
    match streamed {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(why)) => Err(runtime(format!("{why}; nothing was queued"))),
        Err(e) => Err(runtime(format!("{e}; nothing was queued"))),
    }
}

/// A payload as PostgreSQL can store it in `text`: UTF-8 without NUL.
fn check_payload(bytes: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("not UTF-8 (byte {})", e.valid_up_to() + 1))?;
    match text.find('\0') {
        Some(at) => Err(format!(
            "a NUL byte (byte {}), which text cannot hold",
            at + 1
        )),
        None => Ok(text),
    }
}

fn status_main(db: &DbArgs, args: &StatusArgs) -> Result<(), Fail> {
    let schema = schema(db)?;
    let url = needs_database(db, "status")?;
    let database = database(&url)?;
    fork_safe::set_role("cli");
    connect([database], &schema)?;
    let counts =
        fork_safe::with_client(|c| queue::counts(c, &schema, &db.queue)).map_err(runtime)?;
    let backends: Vec<(String, i64)> = fork_safe::with_client(|c| {
        // This database's backends of the fleets (master, children), not
        // of status or enqueue commands.
        let rows = c.query_typed(
            "SELECT application_name, count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE $1
               AND application_name NOT LIKE $2
             GROUP BY 1 ORDER BY 1",
            &[
                (
                    &format!("{}%", fork_safe::APPLICATION_NAME_PREFIX),
                    Type::TEXT,
                ),
                (
                    &format!("{}cli:%", fork_safe::APPLICATION_NAME_PREFIX),
                    Type::TEXT,
                ),
            ],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
    .map_err(runtime)?;
    let children =
        fork_safe::with_client(|c| queue::live_children(c, &schema, &db.queue)).map_err(runtime)?;
    fork_safe::close_all();
    if args.json {
        let children: Vec<serde_json::Value> = children
            .iter()
            .map(|c| {
                serde_json::json!({
                    "host": c.host,
                    "pid": c.pid.as_raw(),
                    "master_pid": c.master_pid.as_raw(),
                    "since": c.since,
                    "jobs": c.jobs,
                })
            })
            .collect();
        let backends: serde_json::Map<String, serde_json::Value> = backends
            .into_iter()
            .map(|(name, n)| (name, n.into()))
            .collect();
        let status = serde_json::json!({
            "queue": db.queue,
            "queued": counts.queued,
            "running": counts.running,
            "done": counts.done,
            "failed": counts.failed,
            "cancelled": counts.cancelled,
            "children": children,
            "backends": backends,
        });
        println!("{status}");
    } else {
        println!(
            "queue {:?}: {} queued, {} running, {} done, {} failed, {} cancelled",
            db.queue, counts.queued, counts.running, counts.done, counts.failed, counts.cancelled
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for c in &children {
            println!(
                "  child {}:{} (master {}) up {:.0}s, {} job(s) done",
                c.host,
                c.pid,
                c.master_pid,
                (now - c.since).max(0.0),
                c.jobs
            );
        }
        for (name, n) in backends {
            println!("  {name}: {n} backend(s)");
        }
    }
    Ok(())
}

/// The throwaway cluster of a command run with no database configured:
/// durable (fsync on, as a real server is) with room for big fleets, plus
/// what `more` adds.
fn throwaway_cluster(
    more: impl FnOnce(fork_safe::cluster::Builder) -> fork_safe::cluster::Builder,
) -> Result<TempCluster, Fail> {
    more(TempCluster::builder().durable(true).max_connections(200))
        .start()
        .map_err(runtime)
}

/// `prefork bench`: on the configured database, or on a throwaway cluster
/// when none is.
fn bench_main(db: &DbArgs, args: &bench::BenchArgs) -> Result<(), Fail> {
    let _cluster;
    let (url, own) = match connection_string(db) {
        Some(url) => (url, false),
        None => {
            eprintln!(
                "prefork: no database configured; benchmarking a throwaway PostgreSQL cluster"
            );
            // Statement times, when the server has the module to load.
            let module = fork_safe::cluster::find_bindir()
                .map(|bin| bin.join("../lib/pg_stat_statements.so"))
                .is_ok_and(|lib| lib.exists());
            let cluster = throwaway_cluster(|builder| {
                if module {
                    builder.setting("shared_preload_libraries", "pg_stat_statements")
                } else {
                    builder
                }
            })?;
            let url = cluster.connection_string();
            _cluster = cluster;
            (url, module)
        }
    };
    bench::run(db, args, &url, own)
}

/// Whether `program` can be run: a path to an executable file, or a name
/// found on PATH.
fn find_program(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// The job timeout, if any.
fn timeout(args: &FleetArgs) -> Option<Duration> {
    args.timeout.and_then(|l| l.0)
}

fn fleet_main(args: FleetArgs, program: Option<config::Program>) -> Result<(), Fail> {
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
        (None, Some(config::Program { flag, argv, .. })) => {
            if !find_program(&argv[0]) {
                return Err(usage(format!(
                    "{flag}: program {:?} not found or not executable",
                    argv[0]
                )));
            }
            match flag {
                "--worker" => Handler::Worker { argv },
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
        worker_max_jobs: args.worker_max_jobs,
        worker_boot_timeout: args.boot_timeout,
        worker_memory: queue::MemoryLimits {
            pss: args.max_memory.map(|mb| mb * 1024 * 1024),
            readings: args.max_memory_readings,
            rss: args.reload_on_rss.map(|mb| mb * 1024 * 1024),
        },
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
    let bounds = fleet.connection_bounds();
    let mut app = QueueApp::new(config, handler);
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
    let after = counts(&schema, &queues)?;
    let done = after.done - before.done;
    let failed = after.failed - before.failed;
    let summary = format!(
        "prefork: {done} job(s) done, {failed} failed in {elapsed:.1?} ({:.0} jobs/s); \
         {} queued, {} running left; peak backends {} (bound {}, {} while a child is replaced); \
         {} restart(s)",
        done as f64 / elapsed.as_secs_f64().max(1e-9),
        after.queued,
        after.running,
        stats
            .peak_backends
            .load(std::sync::atomic::Ordering::Relaxed),
        // One connection per worker thread (a child's idle leader is one of
        // them), plus the master's.
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
