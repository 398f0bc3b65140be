//! `prefork`: a supervised fleet of children x workers (processes x threads)
//! working a PostgreSQL job queue, and the commands around it.
//!
//! This file is the command line: its definitions, the parse (with the
//! config file's values, see `config`), the options' value parsers and the
//! connection helpers every command shares. Each command is a module of
//! its own: `fleet` (the fleet itself), `enqueue`, `status`, `jobs`,
//! `schedule`, `bench`, `config` (`prefork config`), `manual`
//! (completions, man page); `progress` and `logging` serve them all.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use fork_safe::cluster::TempCluster;
use fork_safe::queue::{self, Schema};
use fork_safe::{Database, MaxAge};

mod bench;
mod config;
mod enqueue;
mod jobs;
mod logging;
mod manual;
mod progress;
mod run;
mod schedule;
mod status;

/// Exit status for bad usage (clap's convention).
const USAGE: u8 = 2;

/// Exit status of `enqueue` when the job's unique key is held by an
/// unfinished job, so nothing was queued (a script can tell it from a
/// failure, 1, and from a job queued, 0).
const UNIQUE_KEY_HELD: u8 = 3;

/// A prefork master: N children (processes) x M workers (threads) working a PostgreSQL job queue.
///
/// Run the fleet with `--sql STATEMENT`, `--exec PROGRAM [ARGS...]` (a
/// program per job) or `--worker PROGRAM [ARGS...]` (each worker runs
/// PROGRAM as its resident program: loaded once, fed one job at a time;
/// see the README's protocol); `--exec`
/// and `--worker` take everything after them, so put them last. The
/// subcommands take the options every command takes (`--config`,
/// `--database-url`, `--schema`, `--queue`, `--log-format`) before or after
/// their name, and none of the fleet's others. With no database
/// configured at all (no --database-url, DATABASE_URL, PGHOST or
/// PGDATABASE) the fleet runs on a throwaway PostgreSQL cluster. Settings
/// may come from a TOML file (`--config`): a flag beats its environment
/// variable, which beats the file, which beats the default.
#[derive(Parser, Debug)]
#[command(
    name = "prefork",
    version,
    override_usage = USAGE_LINES,
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
    Enqueue(enqueue::EnqueueArgs),
    /// Jobs by state, and the fleet's backends.
    Status(status::StatusArgs),
    /// List and show jobs; retry failed ones; cancel queued or running ones;
    /// hand back the jobs of children gone for good (`release`).
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

/// The two ways to run `prefork`: a fleet, or a command.
const USAGE_LINES: &str = "\
prefork [OPTIONS] (--sql STATEMENT | --exec PROGRAM [ARGS]... | --worker PROGRAM [ARGS]...)
       prefork [--config FILE] [--database-url URL] [--schema NAME] [--queue NAME] <COMMAND>";

/// `--help`'s closing examples.
const EXAMPLES: &str = "\
Examples:
  # 4 children x 8 workers, each job's payload as $1 of a statement:
  prefork --procs 4 --threads 8 --sql 'UPDATE accounts SET seen = now() WHERE id = $1::int'

  # Each worker runs a resident Python program, loaded once, fed one job at a time:
  prefork --procs 4 --threads 8 --timeout 5m --worker python3 examples/resident/resident.py

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
    /// Run PROGRAM [ARGS...] once per job, the payload on its standard
    /// input; exit 0 is done, anything else fails the job. Takes everything
    /// after it: put it last.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM")]
    exec: Option<Vec<String>>,
    /// Each worker runs PROGRAM [ARGS...] as its resident program: started
    /// once, fed one job at a time (the README's protocol). Takes everything
    /// after it: put it last.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM")]
    worker: Option<Vec<String>>,
    /// Connection max age: a duration, 0 (close after every job) or "forever".
    #[arg(long, env = "PREFORK_MAX_AGE", default_value = "30m", value_parser = parse_max_age)]
    max_age: MaxAge,
    /// Close connections idle this long: a duration, or 0/"forever" to keep them.
    #[arg(long, env = "PREFORK_MAX_IDLE", default_value = "10m", value_parser = parse_limit)]
    max_idle: Limit,
    /// Check a reused connection before its first use in each job.
    #[arg(long, env = "PREFORK_HEALTH_CHECKS", value_parser = clap::builder::BoolishValueParser::new())]
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
    #[arg(long, env = "PREFORK_STRICT", value_parser = clap::builder::BoolishValueParser::new())]
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
    /// A resident program (--worker) is started afresh after this many jobs.
    #[arg(long, env = "PREFORK_WORKER_MAX_JOBS",
          value_parser = clap::value_parser!(u64).range(1..))]
    worker_max_jobs: Option<u64>,
    /// Exit 0 once nothing is queued or running.
    #[arg(long, env = "PREFORK_DRAIN", value_parser = clap::builder::BoolishValueParser::new())]
    drain: bool,
    /// Start --exec and --worker programs without the fleet's database
    /// settings (DATABASE_URL, PREFORK_LISTEN_URL, PGPASSWORD, PGPASSFILE,
    /// PGSERVICEFILE): they bring their own credentials.
    #[arg(long, env = "PREFORK_WITHHOLD_CREDENTIALS",
          value_parser = clap::builder::BoolishValueParser::new())]
    withhold_credentials: bool,
    /// Connections each --exec or --worker program may hold at once (a
    /// Django program's: one per thread it runs; 0 for programs that never
    /// connect). They count in the fleet's connection bound and --strict's
    /// check; the programs' backends (by their application_name,
    /// prefork:program:PID) count in the summary's peak and
    /// prefork_backends.
    #[arg(long, env = "PREFORK_PROGRAM_CONNECTIONS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    program_connections: u32,
    /// Serve only jobs of these kinds (comma-separated: `send_email,resize`;
    /// `default` is the kind of jobs queued with a payload alone): the
    /// fleet claims no other, and --drain ends once these are done
    /// [default: every kind].
    #[arg(long, env = "PREFORK_KINDS", value_delimiter = ',', value_parser = enqueue::parse_kind)]
    kinds: Option<Vec<String>>,
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
    /// How long a child's lease on its running jobs lasts: each child
    /// renews it every third of this from a thread of its own, however long
    /// its jobs run; a child that dies, freezes or loses the server loses
    /// its jobs to the others this long after: a duration, or "forever".
    #[arg(long, env = "PREFORK_RESCUE_AFTER", default_value = "15s", value_parser = parse_limit)]
    rescue_after: Limit,
    /// How long a claim holds by itself, for a child that holds no lease
    /// (one of an older version): the children's own leases (--rescue-after)
    /// keep their jobs.
    #[arg(long, env = "PREFORK_LEASE", default_value = "300s", value_parser = parse_duration)]
    lease: Duration,
    /// Queue this many sample jobs (payloads 1..N) before starting.
    #[arg(long)]
    sample: Option<u64>,
}

/// A failure: exit status and one line.
struct Fail(u8, String);

fn usage(message: impl std::fmt::Display) -> Fail {
    Fail(USAGE, message.to_string())
}

fn runtime(message: impl std::fmt::Display) -> Fail {
    Fail(1, message.to_string())
}

fn main() -> ExitCode {
    // An argument that is not UTF-8 is refused in one line, not a panic
    // (`std::env::args` panics on one).
    let mut args: Vec<String> = Vec::new();
    for (i, arg) in std::env::args_os().enumerate() {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!(
                    "error: argument {i} is not valid UTF-8: {}",
                    arg.to_string_lossy()
                );
                return ExitCode::from(USAGE);
            }
        }
    }
    let (mut cli, matches, file) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    logging::init(cli.log_format);
    let program = match &mut cli.command {
        Some(Command::Config(fleet)) => {
            let level = matches.subcommand_matches("config").unwrap_or(&matches);
            handler(fleet, level, file.as_ref())
        }
        _ => handler(&mut cli.fleet, &matches, file.as_ref()),
    };
    let result = match cli.command {
        Some(Command::Enqueue(args)) => enqueue::enqueue_main(&cli.fleet.db, &args),
        Some(Command::Status(args)) => status::status_main(&cli.fleet.db, &args),
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
        None => run::fleet_main(cli.fleet, program),
    };
    // Every path, including errors, ends with no connection open.
    fork_safe::close_all();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, message)) => {
            // An empty message: the command said what happened itself.
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            ExitCode::from(code)
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
    fleet_options_only_without_subcommand(&matches).map_err(clap_exit)?;
    let cli = Cli::from_arg_matches(&matches).map_err(clap_exit)?;
    Ok((cli, matches, file))
}

/// Refuses a fleet's option given with a subcommand (`prefork --procs 2
/// status`): the subcommand would ignore it. The options every command
/// takes (clap's global ones) may come before the subcommand's name.
fn fleet_options_only_without_subcommand(matches: &clap::ArgMatches) -> Result<(), clap::Error> {
    use clap::parser::ValueSource;
    let Some((name, _)) = matches.subcommand() else {
        return Ok(());
    };
    let mut command = Cli::command();
    command.build();
    let given = command.get_arguments().find(|arg| {
        !arg.is_global_set()
            && matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
    });
    match given {
        None => Ok(()),
        Some(arg) => {
            let flag = arg
                .get_long()
                .map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"));
            Err(command.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "the subcommand '{name}' cannot be used with '{flag}': it is a fleet's option"
                ),
            ))
        }
    }
}

/// The handler that takes a program, deciding between the command line's
/// and the file's as for any option: a handler given as a flag (or `--sql`
/// in the environment) replaces the file's.
fn handler(
    fleet: &mut FleetArgs,
    matches: &clap::ArgMatches,
    file: Option<&config::File>,
) -> Option<config::ProgramHandler> {
    use clap::parser::ValueSource;
    // One of the two takes the other with the rest of the line.
    let given = match (fleet.exec.take(), fleet.worker.take()) {
        (Some(argv), _) => Some(config::ProgramHandler::from_flag("--exec", argv)),
        (None, Some(argv)) => Some(config::ProgramHandler::from_flag("--worker", argv)),
        (None, None) => None,
    };
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
    program: Option<&config::ProgramHandler>,
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

/// Connects a command (`status`, `jobs`, ...) to the database `db` names,
/// as role `cli`, with `schema` migrated. Called once the command's own
/// arguments are checked: bad input is refused before any connection.
fn connect_command(db: &DbArgs, command: &str, schema: &Schema) -> Result<(), Fail> {
    let url = needs_database(db, command)?;
    let database = database(&url)?;
    fork_safe::set_role("cli");
    connect([database], schema)
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
