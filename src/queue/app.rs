//! [`QueueApp`]: what each worker thread of a queue fleet does, and what
//! the master keeps account of.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use postgres::Client;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;

use super::completions::{Completions, Recording};
use super::deadline::Deadlines;
use super::idle::{Idle, Leadership, Woken};
use super::master::{FleetStats, process_of};
use super::metrics::{FinishedJobs, QueueMetrics, Verdict};
use super::prefetch::{Batch, Claiming, Prefetch, Size, Take};
use super::resident::{Ran, Resident};
use super::store::Finished;
use super::{Handler, Job, QueueConfig, exec, store};
use crate::Pid;
use crate::prefork::{App, BoxError, ChildInfo, ChildStatus, Counted, LostChild, Worker};

/// A prefork app that works a job queue.
pub struct QueueApp {
    pub(super) config: QueueConfig,
    handler: Handler,
    pub(super) stats: Arc<FleetStats>,
    /// What the status endpoint serves of the queue.
    pub(super) metrics: QueueMetrics,
    /// Per-child state, set in `init_child` (each child has its own copy of
    /// the app, so this is per process).
    child: OnceLock<ChildState>,
    /// Told, in the master, what the fleet finished (see `on_progress`).
    progress: Option<Progress>,
}

/// A callback of [`QueueApp::on_progress`].
type Progress = Box<dyn Fn(FinishedJobs) + Send + Sync>;

struct ChildState {
    /// `host:pid`; claims are stamped `host:pid/worker.seq`.
    process: String,
    /// The child's idle workers: leader and followers.
    idle: Idle,
    /// When the child's periodic duties (vacuum, pruning, expired leases)
    /// are due.
    housekeeping: Mutex<Housekeeping>,
    /// Set once this child asked the master to stop (`drain`).
    drained: AtomicBool,
    /// The child's local queue (see `prefetch`).
    prefetch: Prefetch,
    /// Outcomes waiting to be recorded (see `completions`).
    completions: Completions,
    /// Whether claims bring in batches for all workers (fast handlers), or
    /// one batch for the claimer (`Exec`, whose jobs are slow).
    prefetching: bool,
    /// The child's worker threads.
    threads: usize,
    /// Claims so far, for their owner stamps.
    claims: AtomicU64,
    /// How long a job has been taking, in nanoseconds (a moving average
    /// over batches; 0 before the first), which bounds the claims.
    job_nanos: AtomicU64,
    /// Claims with jobs still in the child (waiting in the local queue or
    /// in a worker's hands), by owner stamp: how many. A worker recovering
    /// from a failure hands back whatever else carries its stamps: claims
    /// whose answer was lost.
    live: Mutex<HashMap<Arc<str>, usize>>,
    /// The job timeouts' watchdog, for handlers whose jobs are statements
    /// (`None` for `Exec`, whose worker stops its own program).
    deadlines: Option<Deadlines>,
}

struct Housekeeping {
    next: Instant,
    next_sweep: Instant,
}

impl QueueApp {
    /// An app working `config.queues` with `handler`.
    pub fn new(config: QueueConfig, handler: Handler) -> QueueApp {
        let mut config = config;
        if matches!(handler, Handler::Exec { .. }) {
            config.batch = 1;
        }
        QueueApp {
            metrics: QueueMetrics::new(&config.queues),
            config,
            handler,
            stats: Arc::default(),
            child: OnceLock::new(),
            progress: None,
        }
    }

    /// Calls `progress` in the master on every turn of its loop (at least
    /// every 100 ms) with the jobs the fleet finished so far: for a live
    /// progress line. It runs in the master's loop, which forks: it must
    /// be quick and start no thread. Default: none.
    pub fn on_progress(mut self, progress: impl Fn(FinishedJobs) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// What the master observes while the fleet runs; read it after
    /// [`Prefork::run`](crate::prefork::Prefork::run) returns.
    pub fn stats(&self) -> Arc<FleetStats> {
        self.stats.clone()
    }

    fn state(&self) -> &ChildState {
        self.child.get().expect("init_child ran first")
    }

    /// One round: a batch from the child's local queue (claiming for the
    /// child when it is empty: see `prefetch`), run and recorded; returns
    /// how many jobs it ran. Runs `claimed` instead if given (jobs the
    /// worker claimed as the leader).
    ///
    /// After a failure the round first hands back what the failure left
    /// stamped but unrecorded (`stranded`): a batch whose outcome could not
    /// be recorded, or a claim that committed although its answer never
    /// arrived. Each is released by its claim's own stamp (and a batch by
    /// its jobs' ids and attempts), so nothing another worker holds is
    /// taken from under it.
    fn round<'w>(
        &self,
        worker: &'w Worker,
        stranded: &mut Vec<Stranded>,
        claimed: Option<Batch>,
        resident: &mut Option<Resident<'w>>,
    ) -> Result<usize, crate::Error> {
        if !stranded.is_empty() {
            let released = self.hand_back(worker, stranded)?;
            if !released.is_empty() {
                log::warn!("{released} whose outcome could not be recorded");
            }
            stranded.clear();
        }
        self.record_waiting(worker, stranded)?;
        let batch = match claimed {
            Some(batch) => batch,
            None => match self.state().prefetch.take(self.take_size()) {
                Take::Batch(batch, None) => batch,
                Take::Batch(batch, Some(_)) if worker.quiet() => batch,
                Take::Batch(batch, Some(ahead)) => {
                    // Claim ahead first, while the other workers still
                    // have jobs; this batch waits a round trip.
                    if let Err(e) = self.claim(worker, ahead, 0) {
                        stranded.push(Stranded::Unstarted(batch));
                        return Err(e);
                    }
                    batch
                }
                Take::Empty => return Ok(0),
                // Quiet: what the local queue holds is run, nothing more
                // is claimed (dropping the turn ends it like an empty claim).
                Take::Claim(_) if worker.quiet() => return Ok(0),
                Take::Claim(claiming) => {
                    match self.claim(worker, claiming, self.take_size().min)? {
                        Some(mine) => mine,
                        None => return Ok(0),
                    }
                }
            },
        };
        let count = batch.jobs.len();
        if count == 0 {
            return Ok(0);
        }
        let started = Instant::now();
        self.run_batch(worker, batch, stranded, resident)?;
        self.observe_pace(count, started.elapsed());
        Ok(count)
    }

    /// Releases what `stranded` names, each by its own stamp (see
    /// [`Stranded`]); what it released.
    fn hand_back(
        &self,
        worker: &Worker,
        stranded: &[Stranded],
    ) -> Result<store::Released, crate::Error> {
        let own = self.own_claims(worker);
        crate::with_client(|client| {
            let mut released = store::Released::default();
            for what in stranded {
                let r = store::release(client, &self.config.schema, what.release(&own))?;
                released.requeued += r.requeued;
                released.failed += r.failed;
            }
            Ok(released)
        })
    }

    /// Claims for the child, fills its local queue, keeps `keep` jobs for
    /// this worker and wakes others for the rest; what it kept, or `None`
    /// if the claim found nothing.
    fn claim(
        &self,
        worker: &Worker,
        claiming: Claiming<'_>,
        keep: usize,
    ) -> Result<Option<Batch>, crate::Error> {
        let (owner, jobs, full) = worker.watched("claim", || {
            crate::with_client(|client| self.claim_on(client, worker))
        })?;
        if jobs.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.bring_in(
            &owner,
            jobs,
            keep,
            Some((claiming, full)),
        )))
    }

    /// One claim for the child on `client`, under a fresh stamp: the stamp,
    /// the jobs, and whether it brought all it asked for.
    fn claim_on(
        &self,
        client: &mut Client,
        worker: &Worker,
    ) -> Result<(Arc<str>, Vec<Job>, bool), postgres::Error> {
        let c = &self.config;
        let owner = self.next_owner(worker);
        let size = self.claim_size();
        let jobs = store::claim(client, &c.schema, &c.queues, size, &owner, c.lease)?;
        let full = jobs.len() as i64 >= size;
        Ok((owner, jobs, full))
    }

    /// Puts what a claim by `owner` brought into the child's local queue
    /// (ending `claiming`, the worker's turn to claim, if it had one), keeps
    /// `keep` jobs for this worker and wakes others for the rest; what it
    /// kept.
    fn bring_in(
        &self,
        owner: &Arc<str>,
        jobs: Vec<Job>,
        keep: usize,
        claiming: Option<(Claiming<'_>, bool)>,
    ) -> Batch {
        self.hold(owner, jobs.len());
        let prefetch = &self.state().prefetch;
        let (mine, queued) = match claiming {
            Some((claiming, full)) => claiming.fill(owner, jobs, keep, full),
            None => prefetch.put(owner, jobs, keep),
        };
        self.wake_for(queued);
        mine
    }

    /// Jobs one claim brings in for the child. Without prefetching (`Exec`,
    /// whose jobs are slow) one batch. Otherwise up to
    /// [`PREFETCH_BATCHES`] batches per worker (at most [`MAX_CLAIM`]): one
    /// claim statement and its index walk then serve many batches, and
    /// workers take bigger batches from a deep local queue. But never more
    /// than the workers start within [`PREFETCH_WINDOW`] (or a quarter of
    /// the lease, if shorter) at the pace jobs have been taking: a job
    /// claimed ahead never waits out its lease in the local queue, and an
    /// urgent job queued behind a backlog waits for at most that window of
    /// claimed work. Before the pace is known, one batch per worker.
    fn claim_size(&self) -> i64 {
        let state = self.state();
        let c = &self.config;
        if !state.prefetching {
            return c.batch;
        }
        let threads = state.threads as i64;
        let most = (threads * c.batch * PREFETCH_BATCHES).min(MAX_CLAIM);
        let per_job = state.job_nanos.load(Ordering::Relaxed);
        if per_job == 0 {
            return (threads * c.batch).min(most);
        }
        let window = (c.lease / 4).min(PREFETCH_WINDOW);
        let startable = (window.as_nanos() * state.threads as u128 / u128::from(per_job))
            .min(i64::MAX as u128) as i64;
        most.min(startable).max(c.batch)
    }

    /// How many jobs a worker takes from the child's local queue: at least
    /// a `--batch`, and a fair share of a deep queue up to [`MAX_TAKE`].
    /// But a `--sql` batch is one statement and one commit on the server,
    /// whose jobs run one after another however many workers share them:
    /// it takes as many as run in [`SQL_TAKE_TIME`] at the child's pace,
    /// up to [`MAX_SQL_TAKE`], so a fast statement is not paid for by a
    /// commit every few jobs (8 x 64 against 256 jobs per batch: 25,000-
    /// 30,000 against 41,800-42,200 jobs/s for `SELECT $1`, 4 x 8).
    fn take_size(&self) -> Size {
        let min = self.config.batch as usize;
        if !matches!(self.handler, Handler::Sql(_)) {
            return Size {
                min,
                most: MAX_TAKE,
                share: true,
            };
        }
        // Before the pace is known, a batch.
        let most = match self.state().job_nanos.load(Ordering::Relaxed) {
            0 => min,
            per_job => {
                (SQL_TAKE_TIME.as_nanos() / u128::from(per_job)).min(MAX_SQL_TAKE as u128) as usize
            }
        };
        Size {
            min,
            most,
            share: false,
        }
    }

    /// Folds a batch's pace into the child's average (a moving average
    /// weighted 1/8 to the newest).
    fn observe_pace(&self, jobs: usize, took: Duration) {
        let sample = (took.as_nanos() / jobs.max(1) as u128).min(u64::MAX as u128) as u64;
        let pace = &self.state().job_nanos;
        let old = pace.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        pace.store(new.max(1), Ordering::Relaxed);
    }

    /// `count` jobs claimed by `owner` are now in the child.
    fn hold(&self, owner: &Arc<str>, count: usize) {
        let mut live = self.state().live.lock().unwrap_or_else(|p| p.into_inner());
        *live.entry(owner.clone()).or_default() += count;
    }

    /// `count` jobs claimed by `owner` left the child's hands (recorded,
    /// failed to record, or handed back).
    fn let_go(&self, owner: &Arc<str>, count: usize) {
        let mut live = self.state().live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = live.get_mut(owner) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                live.remove(owner);
            }
        }
    }

    /// This worker's stamp prefix, `host:pid/worker.`, and its claims the
    /// child still holds jobs of: what a recovery must not hand back.
    fn own_claims(&self, worker: &Worker) -> (String, Vec<String>) {
        let state = self.state();
        let prefix = format!("{}/{}.", state.process, worker.index());
        let live = state.live.lock().unwrap_or_else(|p| p.into_inner());
        let held = live
            .keys()
            .filter(|owner| owner.starts_with(&prefix))
            .map(|owner| owner.to_string())
            .collect();
        (prefix, held)
    }

    /// A fresh owner stamp for a claim: `host:pid/worker.seq`.
    fn next_owner(&self, worker: &Worker) -> Arc<str> {
        let state = self.state();
        let seq = state.claims.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}/{}.{seq}", state.process, worker.index()))
    }

    /// Wakes a worker for every batch `queued` jobs in the local queue make,
    /// but this one.
    fn wake_for(&self, queued: usize) {
        let state = self.state();
        let batches = queued.div_ceil(self.config.batch.max(1) as usize);
        for _ in 0..batches.min(state.threads.saturating_sub(1)) {
            state.idle.wake_one_more();
        }
    }

    /// Runs a batch and has its outcomes recorded (see `completions`: by
    /// this worker if no other is recording, else by that one). Each job is
    /// one unit of work for the master (its `--timeout`, its count toward
    /// `--max-requests`), except a `--sql` batch, which runs and records in
    /// one statement and is one unit covering all its jobs. A batch that
    /// fails to run is stranded whole.
    fn run_batch<'w>(
        &self,
        worker: &'w Worker,
        batch: Batch,
        stranded: &mut Vec<Stranded>,
        resident: &mut Option<Resident<'w>>,
    ) -> Result<(), crate::Error> {
        let outcomes: Result<Vec<store::Outcome>, crate::Error> = match &self.handler {
            Handler::Sql(sql) => {
                let ran = self.run_sql(worker, &batch.jobs, &batch.owner, sql);
                return match ran {
                    Ok(()) => {
                        self.let_go(&batch.owner, batch.jobs.len());
                        Ok(())
                    }
                    Err(e) => Err(self.strand(batch, stranded, e)),
                };
            }
            Handler::Exec { argv } => {
                let mut outcomes = Vec::new();
                for j in &batch.jobs {
                    let started = Instant::now();
                    let ran = worker.jobs_within(1, &job_label(j.id), j.timeout, || {
                        exec::run(worker, argv, self.limit(j), j)
                    });
                    let verdict = match ran.ending {
                        exec::Ending::TimedOut => Verdict::TimedOut,
                        exec::Ending::Signalled if self.cancelled(j) => Verdict::Cancelled,
                        // The master ended the program because the child's
                        // graceful stop ran out: interrupted, not failed.
                        // It and the rest of the batch are handed back.
                        exec::Ending::Signalled if worker.stopping() => break,
                        _ => Verdict::of(ran.outcome.is_ok(), j.attempt, j.max_attempts),
                    };
                    self.metrics
                        .count(worker, &j.queue, verdict, started.elapsed());
                    outcomes.push(ran.outcome);
                }
                Ok(outcomes)
            }
            Handler::Worker { .. } => {
                let mut outcomes = Vec::new();
                if let Some(resident) = resident.as_mut() {
                    let jobs = &batch.jobs;
                    let ran = worker.jobs_within(
                        jobs.len() as u32,
                        &batch_label(jobs),
                        own_limit(jobs),
                        || resident.run_batch(worker, jobs, |j| self.limit(j)),
                    );
                    for (j, (ran, took)) in jobs.iter().zip(ran) {
                        let (verdict, outcome) = match ran {
                            Ran::Outcome(o) => {
                                (Verdict::of(o.is_ok(), j.attempt, j.max_attempts), o)
                            }
                            Ran::TimedOut(e) => (Verdict::TimedOut, Err(e)),
                            // No program ran it: it and the rest of the
                            // batch are handed back unstarted.
                            Ran::NotStarted => break,
                        };
                        self.metrics.count(worker, &j.queue, verdict, took);
                        outcomes.push(outcome);
                    }
                }
                Ok(outcomes)
            }
            Handler::Rust(f) => batch
                .jobs
                .iter()
                .map(|j| {
                    let started = Instant::now();
                    let outcome = worker.jobs_within(1, &job_label(j.id), j.timeout, || {
                        self.on_deadline(worker, self.limit(j), |client| Ok(f(j, client)))
                    })?;
                    let verdict = match &outcome {
                        None => Verdict::TimedOut,
                        Some(o) => Verdict::of(o.is_ok(), j.attempt, j.max_attempts),
                    };
                    self.metrics
                        .count(worker, &j.queue, verdict, started.elapsed());
                    Ok(outcome.unwrap_or_else(|| Err(timed_out(self.limit(j)))))
                })
                .collect(),
        };
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(e) => return Err(self.strand(batch, stranded, e)),
        };
        let Batch { owner, mut jobs } = batch;
        if outcomes.len() < jobs.len() {
            let rest = jobs.split_off(outcomes.len());
            self.let_go(&owner, rest.len());
            stranded.push(Stranded::Unstarted(Batch {
                owner: owner.clone(),
                jobs: rest,
            }));
        }
        let finished = jobs
            .into_iter()
            .zip(outcomes)
            .map(|(job, outcome)| Finished {
                owner: owner.clone(),
                job,
                outcome,
            })
            .collect();
        match self.state().completions.add(finished) {
            Some(turn) => self.record(worker, turn, stranded),
            None => Ok(()),
        }
    }

    /// A batch whose run failed with `e`: it leaves the child's hands and
    /// is stranded whole, to be handed back; `e` to return.
    fn strand(&self, batch: Batch, stranded: &mut Vec<Stranded>, e: crate::Error) -> crate::Error {
        self.let_go(&batch.owner, batch.jobs.len());
        stranded.push(Stranded::Batch(batch));
        e
    }

    /// Records, in this worker's turn, the child's waiting outcomes until
    /// none wait, letting go of each job recorded; a group it could not
    /// record is stranded, to be handed back.
    fn record(
        &self,
        worker: &Worker,
        mut turn: Recording<'_>,
        stranded: &mut Vec<Stranded>,
    ) -> Result<(), crate::Error> {
        while let Some(group) = turn.next() {
            let recorded = self.record_now(worker, &group);
            for claim in group.chunk_by(|a, b| a.owner == b.owner) {
                self.let_go(&claim[0].owner, claim.len());
            }
            if let Err(e) = recorded {
                stranded.extend(Stranded::unrecorded(group));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Records outcomes waiting with no worker recording them (their
    /// recorder failed), if any.
    fn record_waiting(
        &self,
        worker: &Worker,
        stranded: &mut Vec<Stranded>,
    ) -> Result<(), crate::Error> {
        match self.state().completions.turn() {
            Some(turn) => self.record(worker, turn, stranded),
            None => Ok(()),
        }
    }

    /// Records `finished` in one statement, on this worker's connection.
    fn record_now(&self, worker: &Worker, finished: &[Finished]) -> Result<(), crate::Error> {
        let c = &self.config;
        worker.watched("recording outcomes", || {
            crate::with_client(|client| {
                store::complete(client, &c.schema, finished, c.keeps_history()).map(drop)
            })
        })
    }

    /// Runs a `--sql` batch in one statement, its effects and outcomes
    /// committed together. Past the job timeout the statement is cancelled
    /// (which rolls the whole batch back) and the jobs run again one by one,
    /// each with its own timeout: only a job slow by itself fails.
    fn run_sql(
        &self,
        worker: &Worker,
        jobs: &[Job],
        owner: &str,
        sql: &str,
    ) -> Result<(), crate::Error> {
        let c = &self.config;
        let label = batch_label(jobs);
        let own = own_limit(jobs);
        let started = Instant::now();
        let ran = worker.jobs_within(jobs.len() as u32, &label, own, || {
            self.on_deadline(worker, self.batch_limit(jobs), |client| {
                store::run_sql(client, &c.schema, sql, owner, jobs, c.keeps_history())
            })
        })?;
        match ran {
            Some(ran) => {
                self.count_sql(worker, jobs, &ran, started.elapsed());
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
                    .try_for_each(|job| self.run_sql(worker, std::slice::from_ref(job), owner, sql))
            }
            None => {
                log::warn!(job = jobs[0].id; "{label} timed out; its statement was cancelled");
                let finished = [Finished {
                    owner: Arc::from(owner),
                    job: jobs[0].clone(),
                    outcome: Err(timed_out(self.limit(&jobs[0]))),
                }];
                let job = &jobs[0];
                self.metrics
                    .count(worker, &job.queue, Verdict::TimedOut, started.elapsed());
                self.record_now(worker, &finished)
            }
        }
    }

    /// A job's time limit: its own, or else the fleet's.
    /// Counts a `--sql` batch's jobs for the status endpoint: each took the
    /// batch's time over its size. Jobs whose claim was lost ran nothing
    /// and are not counted (they are the batch's last, as far as the count
    /// goes: which ones is not known, and they are rare).
    fn count_sql(&self, worker: &Worker, jobs: &[Job], ran: &store::SqlRan, took: Duration) {
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
            self.metrics.count(worker, &job.queue, verdict, each);
        }
    }

    /// Whether `job` was cancelled while it ran (its program was stopped
    /// for it, or ended by a signal at the same time).
    fn cancelled(&self, job: &Job) -> bool {
        crate::with_client(|client| store::cancel_requested(client, &self.config.schema, job.id))
            .unwrap_or(false)
    }

    fn limit(&self, job: &Job) -> Option<Duration> {
        job.timeout.or(self.config.timeout)
    }

    /// A batch's time limit, for the one statement that runs it all: the
    /// shortest of its jobs' (none if none has one). Past it the batch runs
    /// again job by job, each with its own limit, so only a job slow by
    /// itself fails.
    fn batch_limit(&self, jobs: &[Job]) -> Option<Duration> {
        jobs.iter().filter_map(|j| self.limit(j)).min()
    }

    /// Runs `f` on the worker's connection with `timeout` as its deadline
    /// (see `deadline`); `None` if it was cancelled there.
    fn on_deadline<T>(
        &self,
        worker: &Worker,
        timeout: Option<Duration>,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<Option<T>, crate::Error> {
        let (Some(deadlines), Some(timeout)) = (&self.state().deadlines, timeout) else {
            return crate::with_client(f).map(Some);
        };
        let fired = Cell::new(false);
        let ran = crate::conn::with_client_cancellable(|client, canceller| {
            let armed = deadlines.arm(worker.index(), timeout, canceller);
            let ran = f(client);
            fired.set(armed.disarm());
            ran
        });
        if !fired.get() {
            return ran.map(Some);
        }
        // A cancel was sent, and may still land on this session's next
        // statement: retire it (see `deadline`, "the late cancel").
        crate::close_all();
        match ran {
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Nothing to claim: end a drain if everything is finished, then lead
    /// the child's idle workers if none does, or else sleep without a
    /// connection until woken. Returns jobs claimed as the leader.
    fn idle(&self, worker: &Worker) -> Result<Option<Batch>, crate::Error> {
        let state = self.state();
        // Only when the child's last claim came back short: a busy child's
        // workers go idle many times a second between claims, and the
        // idle leader looks at every poll anyway.
        if self.config.drain && !state.drained.load(Ordering::Acquire) && state.prefetch.ran_short()
        {
            if let Err(e) = crate::with_client(|client| self.stop_if_drained(client)) {
                log::warn!("checking the queue: {e}");
            }
        }
        if let Some(leadership) = state.idle.try_lead() {
            return self.lead_then_hand_off(leadership, worker);
        }
        // A follower: asleep until there is something to do, its connection
        // closed after a moment (see `idle`).
        match state.idle.follow(worker, crate::close_all) {
            Woken::Claim | Woken::Stop => Ok(None),
            Woken::Lead(leadership) => self.lead_then_hand_off(leadership, worker),
        }
    }

    /// With `drain`: once nothing of the queue is queued or running in the
    /// database, whoever ran it (this fleet, another one, a master that
    /// failed a dead child's last attempt), asks the master to stop the
    /// fleet. A worker going idle looks, and so does the idle leader at
    /// every `poll`, so a fleet with nothing left to do notices even when
    /// the last change was not its own.
    fn stop_if_drained(&self, client: &mut Client) -> Result<(), postgres::Error> {
        let c = &self.config;
        let state = self.state();
        if !c.drain || state.drained.load(Ordering::Acquire) {
            return Ok(());
        }
        if store::pending(client, &c.schema, &c.queues)? {
            return Ok(());
        }
        if !state.drained.swap(true, Ordering::AcqRel) {
            log::info!("{} drained; stopping the fleet", queue_list(&c.queues));
            let _ =
                nix::sys::signal::kill(nix::unistd::getppid(), nix::sys::signal::Signal::SIGTERM);
        }
        Ok(())
    }

    /// Leads until there is work, then hands the lead off if it took work
    /// (a follower stands by), or frees it (stop, error).
    fn lead_then_hand_off(
        &self,
        leadership: Leadership<'_>,
        worker: &Worker,
    ) -> Result<Option<Batch>, crate::Error> {
        if self.config.listen.is_some() {
            // It leads on its own connection: hold only that one.
            crate::close_all();
        }
        let led = self.lead(worker);
        if led.as_ref().is_ok_and(Option::is_some) {
            leadership.hand_off();
        } else {
            drop(leadership);
        }
        // A lead on its own alias closes that connection. A lead on the
        // worker's connection leaves it LISTENing: the worker UNLISTENs
        // after running the jobs, off the pickup path (see `run_worker`).
        if let Some(alias) = &self.config.listen {
            crate::close(alias);
        }
        led
    }

    /// The leader of a child's idle workers: the only one that keeps its
    /// connection while idle, LISTENing for new jobs.
    ///
    /// It claims as soon as a notification comes, on the connection it
    /// already has, so an idle fleet picks a job up within a round trip or
    /// two instead of a connect. It also looks for work every `poll` without
    /// one (retries coming due, a missed notification) and does the child's
    /// housekeeping. Returns the jobs it claimed, or none if the child is
    /// stopping. Followers hold no connection, so an idle child holds one.
    fn lead(&self, worker: &Worker) -> Result<Option<Batch>, crate::Error> {
        /// How long the leader waits for a notification before it looks at
        /// the stop flag again.
        const SLICE: Duration = Duration::from_millis(100);
        let c = &self.config;
        let lead = |client: &mut Client| {
            client.batch_execute(&format!("LISTEN {}", c.schema.channel()))?;
            // Work queued before we listened.
            let mut look = true;
            while !worker.stopping() {
                let quiet = worker.quiet();
                if look && !quiet {
                    let (owner, jobs, _) =
                        worker.watched("claim", || self.claim_on(client, worker))?;
                    if !jobs.is_empty() {
                        return Ok(Some(self.bring_in(&owner, jobs, c.batch as usize, None)));
                    }
                }
                let notified = {
                    let mut notifications = client.notifications();
                    let notified = notifications.timeout_iter(SLICE).next()?.is_some();
                    // One claim answers any number of notifications.
                    while notifications.iter().next()?.is_some() {}
                    notified
                };
                // While quiet, what there was to look at still is.
                look = notified || (look && quiet);
                if let Some(probe) = self.housekeeping(client)? {
                    look |= probe.runnable;
                    self.stop_if_drained(client)?;
                }
            }
            Ok(None)
        };
        match &c.listen {
            Some(alias) => crate::with_client_for(alias, lead),
            None => crate::with_client(lead),
        }
    }

    /// The child's periodic duties, done by whichever worker finds them due
    /// (the leader when idle, any worker when busy): vacuum the live table
    /// if dead rows piled up, delete finished jobs past `keep_finished`,
    /// release expired leases. Returns what it saw of the queue, or `None`
    /// if nothing was due.
    fn housekeeping(&self, client: &mut Client) -> Result<Option<store::Probe>, postgres::Error> {
        let c = &self.config;
        let sweep = {
            let mut due = match self.state().housekeeping.try_lock() {
                Ok(due) => due,
                Err(_) => return Ok(None),
            };
            let now = Instant::now();
            if now < due.next {
                return Ok(None);
            }
            due.next = now + c.poll;
            let sweep = now >= due.next_sweep;
            if sweep {
                due.next_sweep = now + sweep_every(c.lease);
            }
            sweep
        };
        let probe = store::probe(client, &c.schema, &c.queues)?;
        // Every vacuum scans the whole of each index, so a deep backlog is
        // vacuumed after proportionally more dead rows: a tenth of it.
        let due = VACUUM_AFTER_DEAD_ROWS.max(probe.live_rows / 10);
        if probe.dead_rows >= due && probe.may_vacuum {
            let started = Instant::now();
            store::vacuum(client, &c.schema)?;
            log::debug!(
                "vacuumed the jobs table ({} dead rows) in {:.1?}",
                probe.dead_rows,
                started.elapsed()
            );
        }
        if let Some(keep) = c.keep_finished.filter(|keep| !keep.is_zero()) {
            let n = store::prune(client, &c.schema, &c.queues, keep, PRUNE_BATCH)?;
            if n > 0 {
                log::debug!("deleted {n} finished job(s) older than {keep:?}");
            }
        }
        if sweep {
            let released = store::release(client, &c.schema, store::Release::Expired)?;
            if !released.is_empty() {
                log::warn!("{released} whose lease expired");
            }
        }
        Ok(Some(probe))
    }
}

/// How often a child looks for expired leases.
fn sweep_every(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

impl App for QueueApp {
    fn metrics(&self) -> Option<&crate::prefork::Metrics> {
        Some(self.metrics.declared())
    }

    fn gauges(&self) -> Vec<crate::prefork::Gauge> {
        self.metrics.gauges()
    }

    fn init_child(&self, child: &ChildInfo) -> Result<(), BoxError> {
        let now = Instant::now();
        let state = ChildState {
            process: process_of(Pid::this()),
            idle: Idle::new(child.waker()),
            housekeeping: Mutex::new(Housekeeping {
                next: now,
                next_sweep: now,
            }),
            drained: AtomicBool::new(false),
            prefetch: Prefetch::new(child.threads()),
            completions: Completions::default(),
            prefetching: !matches!(self.handler, Handler::Exec { .. }),
            threads: child.threads(),
            claims: AtomicU64::new(0),
            job_nanos: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            // Any job may have a timeout of its own.
            deadlines: match &self.handler {
                Handler::Sql(_) | Handler::Rust(_) => Some(Deadlines::start(child.threads())?),
                Handler::Exec { .. } | Handler::Worker { .. } => None,
            },
        };
        if self.child.set(state).is_err() {
            return Err("init_child ran twice".into());
        }
        Ok(())
    }

    fn children_lost(&self, lost: &[LostChild]) {
        self.release_lost(lost);
    }

    fn master_tick(&self, children: &[ChildStatus]) {
        self.tick(children);
    }

    fn master_counted(&self, counted: &Counted<'_>) {
        if let Some(progress) = &self.progress {
            progress(self.metrics.finished(counted));
        }
    }

    fn run_worker(&self, worker: &Worker) {
        // What a failure left stamped but unrecorded, to hand back.
        let mut stranded: Vec<Stranded> = Vec::new();
        let mut claimed: Option<Batch> = None;
        // A `--worker` program of this worker's own, started on its first job.
        let mut resident = match &self.handler {
            Handler::Worker { argv } => Some(Resident::new(
                argv.clone(),
                self.config.worker_boot_timeout,
                self.config.worker_max_jobs,
                self.config.worker_memory,
            )),
            _ => None,
        };
        while !worker.stopping() {
            // Jobs in hand were claimed as the leader, on the worker's own
            // connection unless the lead has an alias of its own: that
            // connection still LISTENs.
            let listening = claimed.is_some() && self.config.listen.is_none();
            let ran = self.round(worker, &mut stranded, claimed.take(), &mut resident);
            let outcome = match ran {
                Ok(0) => self.idle(worker).map(|batch| claimed = batch),
                Ok(n) => {
                    if n as i64 >= self.config.batch {
                        // A full batch: there is probably more, so bring in
                        // another worker (which brings in the next).
                        self.state().idle.wake_one_more();
                    }
                    crate::with_client(|client| {
                        if listening {
                            client.batch_execute("UNLISTEN *")?;
                        }
                        self.housekeeping(client).map(drop)
                    })
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                // A claim of this worker's may have committed while its
                // answer was lost: look for one once reconnected.
                if !stranded.iter().any(|s| matches!(s, Stranded::Lost)) {
                    stranded.push(Stranded::Lost);
                }
                log::warn!(
                    "child {} worker {}: {e}",
                    worker.child_index(),
                    worker.index()
                );
                crate::close_all();
                worker.wait(Duration::from_secs(1));
            }
        }
        // Stopping: a `--worker` program reads the end of its input and exits.
        if let Some(resident) = resident.as_mut() {
            resident.end(worker, None);
        }
        // Record outcomes left waiting by a failed recorder; then
        // hand back, at once rather than at lease expiry, what a failure
        // left, jobs claimed as the leader just as the child was told to
        // stop, and the jobs still waiting in the local queue.
        let _ = self.record_waiting(worker, &mut stranded);
        stranded.extend(claimed.map(Stranded::Unstarted));
        for batch in self.state().prefetch.drain() {
            self.let_go(&batch.owner, batch.jobs.len());
            stranded.push(Stranded::Unstarted(batch));
        }
        if !stranded.is_empty() {
            let _ = self.hand_back(worker, &stranded);
        }
    }
}

/// What a failure (or a stop) left stamped with a claim's owner but not
/// recorded: to be handed back by exactly that stamp.
enum Stranded {
    /// Claims of this worker whose answer never arrived (they may have
    /// committed): whatever carries its stamps but is not in the child.
    Lost,
    /// A batch whose outcome could not be recorded.
    Batch(Batch),
    /// A batch that never started (claimed as the leader, or left in the
    /// local queue, as the child stops): its attempts are given back.
    Unstarted(Batch),
}

impl Stranded {
    /// Finished jobs whose outcomes could not be recorded, one batch per
    /// claim (outcomes arrive a batch at a time, so a claim's jobs are
    /// together).
    fn unrecorded(group: Vec<Finished>) -> impl Iterator<Item = Stranded> {
        let mut batches: Vec<Batch> = Vec::new();
        for f in group {
            match batches.last_mut() {
                Some(batch) if batch.owner == f.owner => batch.jobs.push(f.job),
                _ => batches.push(Batch {
                    owner: f.owner,
                    jobs: vec![f.job],
                }),
            }
        }
        batches.into_iter().map(Stranded::Batch)
    }

    /// What to release, given this worker's stamp prefix and its claims
    /// still live in the child ([`QueueApp::own_claims`]).
    fn release<'a>(&'a self, own: &'a (String, Vec<String>)) -> store::Release<'a> {
        match self {
            Stranded::Lost => store::Release::Lost {
                prefix: &own.0,
                live: &own.1,
            },
            Stranded::Batch(batch) => store::Release::Jobs {
                owner: &batch.owner,
                jobs: &batch.jobs,
            },
            Stranded::Unstarted(batch) => store::Release::Unstarted {
                owner: &batch.owner,
                jobs: &batch.jobs,
            },
        }
    }
}

/// A batch's label on the scoreboard: `job 17`, or `jobs 17..80`.
fn batch_label(jobs: &[Job]) -> String {
    match jobs {
        [one] => job_label(one.id),
        many => format!("jobs {}..{}", many[0].id, many[many.len() - 1].id),
    }
}

/// The time limit per job the master holds a batch to: the jobs' own if
/// they all have one (the longest), else the fleet's (`None`).
fn own_limit(jobs: &[Job]) -> Option<Duration> {
    let own = jobs.iter().map(|j| j.timeout).collect::<Option<Vec<_>>>();
    own.and_then(|limits| limits.into_iter().max())
}

/// The label of a job's unit of work on the scoreboard.
fn job_label(id: i64) -> String {
    format!("job {id}")
}

/// The error of a job whose statement was cancelled at its time limit.
fn timed_out(limit: Option<Duration>) -> String {
    let limit = limit.unwrap_or_default();
    format!("timed out after {limit:?} (its statement was cancelled: SQLSTATE 57014)")
}

/// `queue "a"` or `queues "a", "b"`, for the log.
fn queue_list(queues: &[String]) -> String {
    let names: Vec<String> = queues.iter().map(|q| format!("{q:?}")).collect();
    match names.as_slice() {
        [one] => format!("queue {one}"),
        many => format!("queues {}", many.join(", ")),
    }
}

/// Batches per worker one claim brings into a child's local queue.
const PREFETCH_BATCHES: i64 = 8;

/// The most work, in time at the jobs' pace, one claim brings in: what an
/// urgent job queued behind a backlog may wait for.
const PREFETCH_WINDOW: Duration = Duration::from_secs(1);

/// Most jobs one claim brings in.
const MAX_CLAIM: i64 = 1000;

/// Most jobs a worker takes at once from a deep local queue: past this, a
/// bigger batch saves little and holds its row locks longer.
const MAX_TAKE: usize = 64;

/// The time a `--sql` batch is sized to run in (see
/// [`QueueApp::take_size`]): what a job queued behind it waits for at
/// most, and long enough that its commit is a small share.
const SQL_TAKE_TIME: Duration = Duration::from_millis(20);

/// Most jobs one `--sql` batch takes.
const MAX_SQL_TAKE: i64 = 256;

/// Most finished jobs a child deletes per `poll` (see
/// [`QueueConfig::keep_finished`]): more than a busy fleet finishes.
const PRUNE_BATCH: i64 = 20_000;

/// Dead rows in the jobs table at which a child vacuums it (see
/// [`store::vacuum`]): about a second of a busy fleet's work.
const VACUUM_AFTER_DEAD_ROWS: i64 = 20_000;
