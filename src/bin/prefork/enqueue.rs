//! `prefork enqueue`: one job, N copies of one, or one per line of
//! standard input, all or nothing.

use std::io::BufRead;
use std::time::Duration;

use clap::Args;
use fork_safe::queue::{self, Schema};

use super::{
    DbArgs, Fail, connect_command, parse_duration, parse_positive_duration, progress, runtime,
    schema, usage,
};

#[derive(Args, Debug)]
pub(crate) struct EnqueueArgs {
    /// The payload, or `-` for one payload per line of standard input
    /// (none with --args).
    #[arg(required_unless_present = "args", conflicts_with = "args")]
    payload: Option<String>,
    /// What the job does: fleets with --kinds claim only their kinds
    /// [default: default].
    #[arg(long, value_parser = parse_kind)]
    kind: Option<String>,
    /// The job's arguments, a JSON object (its handler is given them as
    /// its payload), or `-` for one JSON object per line of standard input.
    #[arg(long)]
    args: Option<String>,
    /// Queue this many copies of PAYLOAD (at most 10,000,000 at once).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
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

/// A job kind's name, as `--kind` and `--kinds` take it.
pub(crate) fn parse_kind(name: &str) -> Result<String, String> {
    queue::check_kind_name(name).map_err(|e| e.to_string())?;
    Ok(name.to_owned())
}

/// Queues what `args` says on `db`'s queue, and says what was queued.
pub(crate) fn enqueue_main(db: &DbArgs, args: &EnqueueArgs) -> Result<(), Fail> {
    let schema = schema(db)?;
    let arguments = args.args.is_some();
    let Some(payload) = args.payload.as_deref().or(args.args.as_deref()) else {
        return Err(usage("give a PAYLOAD or --args"));
    };
    let stdin = payload == "-";
    if stdin && args.count != 1 {
        return Err(usage(
            "--count applies to one PAYLOAD, not to standard input",
        ));
    }
    if !stdin {
        check_payload(payload.as_bytes()).map_err(|why| usage(format!("PAYLOAD: {why}")))?;
        if arguments {
            check_args(payload).map_err(|why| usage(format!("--args: {why}")))?;
        }
    }
    connect_command(db, "enqueue", &schema)?;
    // Read by the server, as any timestamp it takes (`2027-01-01 09:00`,
    // `tomorrow`), in the session's time zone.
    let run_at = match &args.run_at {
        None => None,
        Some(at) => Some(
            fork_safe::with_client(|c| {
                c.query_typed_one(
                    "SELECT $1::text::timestamptz",
                    &[(at, postgres::types::Type::TEXT)],
                )
                .and_then(|row| row.try_get::<_, chrono::DateTime<chrono::Utc>>(0))
            })
            .map_err(|e| usage(format!("invalid --run-at {at:?}: {e}")))?,
        ),
    };
    let how = queue::Enqueue {
        queue: &db.queue,
        max_attempts: args.max_attempts,
        run_at,
        run_in: args.in_,
        priority: args.priority,
        unique_key: args.unique_key.as_deref(),
        timeout: args.timeout,
        kind: args.kind.as_deref().unwrap_or("default"),
        arguments,
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
        let done = fork_safe::with_client(|c| queue::enqueue_one(c, &schema, &how, payload))
            .map_err(nothing)?;
        match (done.created, &args.unique_key) {
            (true, _) => println!("queued job {} on {:?}", done.id, db.queue),
            (false, key) => {
                println!(
                    "job {} on {:?} already holds unique key {:?}; nothing was queued",
                    done.id,
                    db.queue,
                    key.as_deref().unwrap_or_default()
                );
                fork_safe::close_all();
                return Err(Fail(super::UNIQUE_KEY_HELD, String::new()));
            }
        }
    } else {
        let queued = fork_safe::with_client(|c| {
            queue::enqueue_copies(c, &schema, &how, payload, args.count)
        })
        .map_err(nothing)?;
        println!("queued {queued} job(s) on {:?}", db.queue);
    }
    fork_safe::close_all();
    Ok(())
}

/// Lines of standard input sent to the server at once, at most: memory
/// stays bounded by this many payloads, or [`BYTES_PER_INSERT`],
/// whatever the input's length.
const LINES_PER_INSERT: usize = 10_000;

/// Payload bytes sent to the server at once, at most (one payload more
/// may pass it).
const BYTES_PER_INSERT: usize = 64 * 1024 * 1024;

/// The largest payload `enqueue` takes: what a `--worker` program's line
/// can carry (16 MiB, JSON-escaped), far below what a `--sql` batch's
/// statement or a row can hold (1 GB).
pub(crate) const MAX_PAYLOAD: usize = 16 * 1024 * 1024 - 1024;

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
        let mut chunk_bytes = 0;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // A line is read up to the limit and a little: a longer one is
            // refused without holding it (nor the rest of it).
            let most = (MAX_PAYLOAD + 2) as u64;
            let read = match std::io::Read::take(&mut input, most).read_until(b'\n', &mut buf) {
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
                let checked = check_payload(&buf).and_then(|payload| match how.arguments {
                    true => check_args(payload).map(|()| payload),
                    false => Ok(payload),
                });
                match checked {
                    Ok(payload) => {
                        chunk_bytes += payload.len();
                        chunk.push(payload.to_owned());
                    }
                    Err(why) => return Ok(Err(format!("line {line}: {why}"))),
                }
            }
            let full = chunk.len() == LINES_PER_INSERT || chunk_bytes >= BYTES_PER_INSERT;
            if full || (read == 0 && !chunk.is_empty()) {
                queued += queue::enqueue_in(&mut tx, schema, how, &chunk)?;
                chunk.clear();
                chunk_bytes = 0;
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

/// Arguments as a job takes them: one JSON object.
pub(crate) fn check_args(text: &str) -> Result<(), String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err("not a JSON object".to_owned()),
        Err(e) => Err(format!("not JSON ({e})")),
    }
}

/// A payload as PostgreSQL can store it in `text` (UTF-8 without NUL)
/// and within [`MAX_PAYLOAD`].
pub(crate) fn check_payload(bytes: &[u8]) -> Result<&str, String> {
    if bytes.len() > MAX_PAYLOAD {
        return Err(format!(
            "a payload over the limit of {MAX_PAYLOAD} bytes (16 MiB, less the job's framing)"
        ));
    }
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
