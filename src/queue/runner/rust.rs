//! The Rust handler: a function given each job and the worker's own
//! connection, whose statements are cancelled on the server at the job's
//! time limit.

use std::time::Instant;

use super::{Context, Needs, Ran, Runner, job_label, timed_out};
use crate::queue::RustHandler;
use crate::queue::metrics::Verdict;
use crate::queue::prefetch::{Batch, Sizing};

/// Outcomes are recorded with the child's others; the function's
/// statements are cancelled at the job's deadline.
pub(super) const NEEDS: Needs = Needs {
    sizing: Sizing::Shared,
    deadlines: true,
};

/// Runs batches through a function, a job at a time.
pub(super) struct Rust<'a> {
    f: &'a RustHandler,
}

impl<'a> Rust<'a> {
    pub(super) fn new(f: &'a RustHandler) -> Rust<'a> {
        Rust { f }
    }
}

impl<'a> Runner<'a> for Rust<'_> {
    fn run(&mut self, cx: &Context<'a>, batch: &Batch) -> Result<Ran, crate::Error> {
        let outcomes = batch
            .jobs
            .iter()
            .map(|j| {
                let started = Instant::now();
                let limit = cx.limit(j);
                let outcome = cx.worker.jobs_within(1, &job_label(j.id), j.timeout, || {
                    cx.on_deadline(limit, |client| {
                        Ok((self.f)(j, client).map_err(|e| e.to_string()))
                    })
                })?;
                let verdict = match &outcome {
                    None => Verdict::TimedOut,
                    Some(o) => Verdict::of(o.is_ok(), j.attempt, j.max_attempts),
                };
                cx.count(j, verdict, started.elapsed());
                Ok(outcome.unwrap_or_else(|| Err(timed_out(limit))))
            })
            .collect::<Result<_, crate::Error>>()?;
        Ok(Ran::Outcomes(outcomes))
    }
}
