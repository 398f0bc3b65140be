//! The `--sql` handler: a statement run with each job's payload as `$1`,
//! the whole batch in one server-side call that also records it, so a
//! job's effect commits with its outcome, exactly once per successful
//! attempt (`store::run_sql`).
//!
//! Past the job timeout the statement is cancelled (which rolls the whole
//! batch back) and the jobs run again one by one, each with its own
//! timeout: only a job slow by itself fails.

use std::time::{Duration, Instant};

use super::{Context, Needs, Ran, Runner, batch_label, finished, own_limit, timed_out};
use crate::queue::Job;
use crate::queue::metrics::Verdict;
use crate::queue::prefetch::{Batch, Sizing};
use crate::queue::store;

/// A batch is one statement: sized by time, its jobs cancelled at their
/// deadline on the server.
pub(super) const NEEDS: Needs = Needs {
    sizing: Sizing::Timed,
    deadlines: true,
};

/// Runs batches through one statement.
pub(super) struct Sql<'a> {
    statement: &'a str,
}

impl<'a> Sql<'a> {
    pub(super) fn new(statement: &'a str) -> Sql<'a> {
        Sql { statement }
    }

    /// Runs `jobs` of the claim `owner` in one statement, and again one by
    /// one if it ran past the batch's limit.
    fn run_jobs(&self, cx: &Context<'_>, jobs: &[Job], owner: &str) -> Result<(), crate::Error> {
        let c = cx.config;
        let label = batch_label(jobs);
        let started = Instant::now();
        let ran = cx
            .worker
            .jobs_within(jobs.len() as u32, &label, own_limit(jobs), || {
                cx.on_deadline(cx.batch_limit(jobs), |client| {
                    store::run_sql(
                        client,
                        &c.schema,
                        self.statement,
                        owner,
                        jobs,
                        c.keeps_history(),
                    )
                })
            })?;
        match ran {
            Some(ran) => {
                count(cx, jobs, &ran, started.elapsed());
                let lost = jobs.len() as i64 - ran.recorded;
                if lost > 0 {
                    log::warn!(
                        "skipped {lost} job(s) of {label}: their lease was taken over by another worker"
                    );
                }
                Ok(())
            }
            None if jobs.len() > 1 => {
                log::info!("{label} ran past the job timeout; running them one by one");
                jobs.iter()
                    .try_for_each(|job| self.run_jobs(cx, std::slice::from_ref(job), owner))
            }
            None => {
                let job = &jobs[0];
                log::warn!(job = job.id; "{label} timed out; its statement was cancelled");
                cx.count(job, Verdict::TimedOut, started.elapsed());
                cx.record(&[finished(owner, job, Err(timed_out(cx.limit(job))))])
            }
        }
    }
}

impl<'a> Runner<'a> for Sql<'_> {
    fn run(&mut self, cx: &Context<'a>, batch: &Batch) -> Result<Ran, crate::Error> {
        self.run_jobs(cx, &batch.jobs, &batch.owner)?;
        Ok(Ran::Recorded)
    }
}

/// Counts a batch's jobs for the status endpoint: each took the batch's
/// time over its size. Jobs whose claim was lost ran nothing and are not
/// counted (they are the batch's last, as far as the count goes: which
/// ones is not known, and they are rare).
fn count(cx: &Context<'_>, jobs: &[Job], ran: &store::SqlRan, took: Duration) {
    let each = took / jobs.len().max(1) as u32;
    let mut done = ran.recorded - ran.failed.len() as i64;
    for job in jobs {
        let verdict = if ran.failed.contains(&job.id) {
            Verdict::of(false, job.attempt, job.max_attempts)
        } else if done > 0 {
            done -= 1;
            Verdict::Done
        } else {
            continue;
        };
        cx.count(job, verdict, each);
    }
}
