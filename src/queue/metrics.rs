//! What the queue tells the status endpoint: jobs by queue and outcome, and
//! how long they took, counted by the workers (see `prefork::Metrics`);
//! and the queues' jobs by state, read by the master.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use postgres::types::Type;

use super::Schema;
use super::failing::Attempts;
use crate::prefork::{Counted, Counter, Gauge, Histogram, Metrics, Worker};

/// Jobs a fleet finished for good since it started (as its workers count
/// them: a job that timed out on its last attempt is not among them), for
/// [`QueueApp::on_progress`](super::QueueApp::on_progress).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FinishedJobs {
    /// Jobs that succeeded.
    pub done: u64,
    /// Jobs whose last attempt failed.
    pub failed: u64,
    /// Jobs cancelled while they ran.
    pub cancelled: u64,
}

/// What the master observed of its fleet, for a summary.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// The most connections the fleet's children held at once, as they
    /// count them on their scoreboards (every 100 ms).
    pub peak_backends: AtomicU64,
    /// Jobs the fleet finished as done, by its workers' counters (which a
    /// fleet that keeps no history has no other record of).
    pub done: AtomicU64,
    /// Jobs whose last attempt failed, likewise.
    pub failed: AtomicU64,
}

/// Queues with series of their own; a fleet working more counts the rest
/// under `queue="other"` (each queue takes 19 of the scoreboard's slots).
const NAMED_QUEUES: usize = 16;

/// `prefork_job_duration_seconds`' buckets: a millisecond to five minutes.
const BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Least time between two reads of the queues' counts: a scrape more
/// often than this gets the last read.
pub(super) const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// While the endpoint is scraped (a scrape within [`SCRAPED_FOR`]), the
/// counts are also read this often without being asked, so that a scrape
/// gets counts at most this old rather than those of the scrape before
/// (15 s old at Prometheus's default interval). Not faster: on a backlog
/// of millions the read is a scan of the live table.
pub(super) const KEEP_FRESH_EVERY: Duration = Duration::from_secs(5);

/// How long after a scrape the counts are kept fresh.
pub(super) const SCRAPED_FOR: Duration = Duration::from_secs(120);

/// `prefork_claim_duration_seconds`' buckets: half a millisecond to five
/// seconds.
const CLAIM_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// How a job's attempt ended, as `prefork_jobs_total`'s `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It succeeded.
    Done,
    /// It failed for good: its last attempt.
    Failed,
    /// It failed and will run again.
    Retried,
    /// It ran past its time limit (and is retried if attempts are left).
    TimedOut,
    /// It was cancelled while it ran, and its program stopped.
    Cancelled,
}

impl Verdict {
    const ALL: [Verdict; 5] = [
        Verdict::Done,
        Verdict::Failed,
        Verdict::Retried,
        Verdict::TimedOut,
        Verdict::Cancelled,
    ];

    fn label(self) -> &'static str {
        match self {
            Verdict::Done => "done",
            Verdict::Failed => "failed",
            Verdict::Retried => "retried",
            Verdict::TimedOut => "timed_out",
            Verdict::Cancelled => "cancelled",
        }
    }

    /// A finished attempt's verdict: `ok`, else by whether it was the last.
    pub(super) fn of(ok: bool, attempt: i32, max_attempts: i32) -> Verdict {
        match (ok, attempt >= max_attempts) {
            (true, _) => Verdict::Done,
            (false, true) => Verdict::Failed,
            (false, false) => Verdict::Retried,
        }
    }
}

/// The queue's metrics: declared once in the master, counted in the
/// children (the handles are plain indices, valid in every fork).
pub(super) struct QueueMetrics {
    declared: Metrics,
    queues: Vec<String>,
    /// Per named queue (and `other` last): a counter per verdict, and the
    /// duration histogram.
    series: Vec<([Counter; 5], Histogram)>,
    /// How long claims took, round trip included.
    claims: Histogram,
}

impl QueueMetrics {
    /// Declares the series of `queues`.
    pub(super) fn new(queues: &[String]) -> QueueMetrics {
        let mut declared = Metrics::new();
        let mut names: Vec<&str> = queues
            .iter()
            .take(NAMED_QUEUES)
            .map(String::as_str)
            .collect();
        if queues.len() > NAMED_QUEUES {
            names.push("other");
        }
        let series = names
            .iter()
            .map(|queue| {
                let counters = Verdict::ALL.map(|v| {
                    declared.counter(
                        "prefork_jobs_total",
                        "Job attempts finished, by queue and outcome.",
                        &[("queue", queue), ("outcome", v.label())],
                    )
                });
                let took = declared.histogram(
                    "prefork_job_duration_seconds",
                    "How long jobs ran (a --sql batch's jobs: its time over its size).",
                    &[("queue", queue)],
                    BOUNDS,
                );
                (counters, took)
            })
            .collect();
        let claims = declared.histogram(
            "prefork_claim_duration_seconds",
            "How long claims took, round trip included: the time a worker waits \
             for jobs when some are queued.",
            &[],
            CLAIM_BOUNDS,
        );
        QueueMetrics {
            declared,
            queues: queues.to_vec(),
            series,
            claims,
        }
    }

    pub(super) fn declared(&self) -> &Metrics {
        &self.declared
    }

    /// Counts one job of `queue` that ended as `verdict` after `took`.
    pub(super) fn count(&self, worker: &Worker, queue: &str, verdict: Verdict, took: Duration) {
        let named = self
            .queues
            .iter()
            .take(NAMED_QUEUES)
            .position(|q| q == queue);
        let Some((counters, histogram)) = self
            .series
            .get(named.unwrap_or(NAMED_QUEUES))
            .or_else(|| self.series.last())
        else {
            return;
        };
        let i = Verdict::ALL.iter().position(|v| *v == verdict).unwrap_or(0);
        worker.count(counters[i], 1);
        worker.observe(*histogram, took.as_secs_f64());
    }

    /// Counts one claim that took `took`.
    pub(super) fn claimed(&self, worker: &Worker, took: Duration) {
        worker.observe(self.claims, took.as_secs_f64());
    }

    /// The fleet's attempts so far by queue (the named ones, then
    /// `other`), for the log line while they fail (see `failing`).
    pub(super) fn attempts(&self, counted: &Counted<'_>) -> Vec<(String, Attempts)> {
        let names = self
            .queues
            .iter()
            .take(NAMED_QUEUES)
            .map(String::as_str)
            .chain(std::iter::once("other"));
        names
            .zip(&self.series)
            .map(|(queue, (counters, _))| {
                let n = |v: Verdict| {
                    let i = Verdict::ALL.iter().position(|x| *x == v).unwrap_or(0);
                    counted.get(counters[i])
                };
                let attempts = Attempts {
                    done: n(Verdict::Done),
                    failed: n(Verdict::Failed),
                    retried: n(Verdict::Retried),
                    timed_out: n(Verdict::TimedOut),
                    cancelled: n(Verdict::Cancelled),
                };
                (queue.to_owned(), attempts)
            })
            .collect()
    }

    /// The jobs the fleet finished for good, summed over its queues.
    pub(super) fn finished(&self, counted: &Counted<'_>) -> FinishedJobs {
        let mut finished = FinishedJobs::default();
        for (counters, _) in &self.series {
            for (verdict, counter) in Verdict::ALL.iter().zip(counters) {
                let n = counted.get(*counter);
                match verdict {
                    Verdict::Done => finished.done += n,
                    Verdict::Failed => finished.failed += n,
                    Verdict::Cancelled => finished.cancelled += n,
                    Verdict::Retried | Verdict::TimedOut => {}
                }
            }
        }
        finished
    }

    /// The queues' counts for the status endpoint, from what a child
    /// published (see [`read_counts`]): none until one did.
    pub(super) fn gauges(&self, published: Option<&[f64]>) -> Vec<Gauge> {
        let Some(values) = published else {
            return Vec::new();
        };
        let mut gauges = Vec::new();
        for (queue, pair) in self.queues.iter().zip(values.chunks(2)) {
            for (state, value) in ["queued", "running"].iter().zip(pair) {
                gauges.push(Gauge {
                    name: "prefork_queue_jobs",
                    help: "Jobs in the queue by state, read from the database.",
                    labels: vec![("queue", queue.clone()), ("state", (*state).to_owned())],
                    value: *value,
                });
            }
        }
        gauges
    }
}

/// Reads the jobs of `queues` by state, for the status endpoint (in a
/// child: see `keeper`): queued and running of each queue in turn, for as
/// many queues as a scoreboard holds. Reads only the live table (the
/// finished ones are counters), bounded by a statement timeout, so a slow
/// read never holds the keeper long.
///
/// # Errors
///
/// The server's error.
pub(super) fn read_counts(
    client: &mut postgres::Client,
    schema: &Schema,
    queues: &[String],
) -> Result<Vec<f64>, postgres::Error> {
    let s = schema.name();
    let queues = &queues[..queues.len().min(crate::prefork::MAX_GAUGES / 2)];
    let mut tx = client.transaction()?;
    tx.batch_execute("SET LOCAL statement_timeout = '500ms'")?;
    let rows = tx.query_typed(
        &format!(
            "SELECT queue, state, count(*) FROM {s}.jobs_live
             WHERE queue = ANY($1) GROUP BY 1, 2"
        ),
        &[(&queues, Type::TEXT_ARRAY)],
    )?;
    tx.commit()?;
    let mut values = Vec::with_capacity(queues.len() * 2);
    for queue in queues {
        for state in ["queued", "running"] {
            let n: i64 = rows
                .iter()
                .filter(|r| r.get::<_, &str>(0) == queue && r.get::<_, &str>(1) == state)
                .map(|r| r.get::<_, i64>(2))
                .sum();
            values.push(n as f64);
        }
    }
    Ok(values)
}
