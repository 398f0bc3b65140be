//! [`QueueApp`]: the job queue as a prefork app. Each child builds what its
//! workers share ([`QueueChild`]); each worker thread runs the loop below
//! (a [`Shift`]); the master's duties are `master`'s.
//!
//! # A worker's loop
//!
//! 1. **Hand back** what an earlier failure left stamped but unrecorded
//!    (`stranded`), and record outcomes a failed recorder left waiting.
//! 2. **Take a batch** from the child's local queue, claiming for the
//!    whole child when it is empty, or ahead when it runs low after a full
//!    claim (`prefetch`; its sizes from the child's pace, `prefetch::pace`).
//! 3. **Run it** through the worker's runner (`runner`), and leave its
//!    outcomes to be recorded: by this worker if no other is recording,
//!    else by that one, in one statement for all that wait
//!    (`completions`). A `--sql` batch records itself.
//! 4. **Nothing to take**: go idle, as the leader of the child's idle
//!    workers (`LISTEN`, claim on notification, the poll, housekeeping) or
//!    a follower asleep without a connection (`idle`).
//! 5. **A failure** (a broken connection): log it, close the connections,
//!    wait a second, and look for a claim whose answer was lost.
//! 6. **Stop**: end the runner, record what waits, and hand back at once
//!    whatever the child still holds unstarted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::Client;
use postgres::fallible_iterator::FallibleIterator;

use super::alone::Alone;
use super::claims::Claims;
use super::claims::{hostname, process_of};
use super::completions::{Completions, Recording};
use super::deadline::Deadlines;
use super::failing::Failing;
use super::floors::Floors;
use super::housekeeping::Housekeeping;
use super::idle::{Idle, Leadership, Woken};
use super::keeper::Keeper;
use super::lease::Holder;
use super::metrics::{FinishedJobs, FleetStats, QueueMetrics};
use super::prefetch::{Batch, Claiming, Pace, Prefetch, Sizing, Take};
use super::runner::{Context, Needs, Ran, Runner};
use super::store::{self, Finished};
use super::stranded::Stranded;
use super::{Handler, Job, QueueConfig};
use crate::Pid;
use crate::prefork::{App, BoxError, ChildInfo, ChildStatus, Counted, LostChild, Worker};

/// A prefork app that works a job queue.
pub struct QueueApp {
    config: QueueConfig,
    handler: Handler,
    needs: Needs,
    stats: Arc<FleetStats>,
    /// What the status endpoint serves of the queue.
    metrics: QueueMetrics,
    /// The master's count of failing attempts, for its log (see
    /// `failing`).
    failing: Mutex<Failing>,
    /// Told, in the master, what the fleet finished (see `on_progress`).
    progress: Option<OnFinished>,
}

/// A callback of [`QueueApp::on_progress`].
type OnFinished = Box<dyn Fn(FinishedJobs) + Send + Sync>;

/// What a queue child's workers share, built after the fork
/// ([`App::init_child`]).
pub struct QueueChild {
    /// The child's idle workers: leader and followers.
    idle: Idle,
    /// The child's periodic duties.
    housekeeping: Housekeeping,
    /// Set once this child asked the master to stop (`drain`).
    drained: AtomicBool,
    /// The child's local queue (see `prefetch`), and the pace that sizes
    /// its claims and batches.
    prefetch: Prefetch,
    pace: Pace,
    /// Outcomes waiting to be recorded (see `completions`).
    completions: Completions,
    /// The owner stamps of the child's claims, and what it holds of each.
    claims: Claims,
    /// The child's worker threads.
    threads: usize,
    /// The job timeouts' watchdog, for handlers whose jobs are statements.
    deadlines: Option<Deadlines>,
    /// The child's lease duties and its keeper thread (`keeper`).
    keeper: Keeper,
    /// The child's one turn to run a suspect (see `alone`).
    alone: Alone,
    /// Where its claims start in each priority level (see `floors`).
    floors: Arc<Floors>,
}

impl QueueApp {
    /// An app working `config.queues` with `handler`.
    pub fn new(config: QueueConfig, handler: Handler) -> QueueApp {
        let mut config = config;
        let needs = handler.needs();
        if needs.sizing == Sizing::One {
            config.batch = 1;
        }
        let stats = Arc::<FleetStats>::default();
        QueueApp {
            metrics: QueueMetrics::new(&config.queues),
            failing: Mutex::default(),
            config,
            handler,
            needs,
            stats,
            progress: None,
        }
    }

    /// Calls `progress` in the master on every turn of its loop (at least
    /// every 100 ms) with the jobs the fleet finished so far: for a live
    /// progress line. It runs in the master's loop, which forks: it must
    /// be quick and start no thread. Default: none.
    #[must_use]
    pub fn on_progress(mut self, progress: impl Fn(FinishedJobs) + Send + Sync + 'static) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// What the master observes while the fleet runs; read it after
    /// [`Prefork::run`](crate::prefork::Prefork::run) returns.
    pub fn stats(&self) -> Arc<FleetStats> {
        self.stats.clone()
    }
}

impl App for QueueApp {
    type Child = QueueChild;

    fn metrics(&self) -> Option<&crate::prefork::Metrics> {
        Some(self.metrics.declared())
    }

    fn gauges(&self, published: Option<&[f64]>) -> Vec<crate::prefork::Gauge> {
        self.metrics.gauges(published)
    }

    fn init_child(&self, child: &ChildInfo) -> Result<QueueChild, BoxError> {
        let c = &self.config;
        let threads = child.threads();
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let holder = Holder {
            host: hostname(),
            pid: Pid::this().as_raw(),
            master_pid: nix::unistd::getppid().as_raw(),
            since,
        };
        let floors = Arc::new(Floors::default());
        Ok(QueueChild {
            keeper: Keeper::start(c, holder, child, floors.clone())?,
            floors,
            alone: Alone::default(),
            idle: Idle::new(child.waker()),
            housekeeping: Housekeeping::new(),
            drained: AtomicBool::new(false),
            prefetch: Prefetch::new(threads),
            pace: Pace::new(self.needs.sizing, threads, c.batch, c.lease),
            completions: Completions::default(),
            claims: Claims::new(process_of(Pid::this())),
            threads,
            deadlines: match self.needs.deadlines {
                true => Some(Deadlines::start(threads)?),
                false => None,
            },
        })
    }

    /// The keeper's (`keeper`).
    fn child_connections(&self) -> usize {
        1
    }

    /// The worker's own, and what its program may hold
    /// ([`QueueConfig::program_connections`]) if the handler runs programs.
    fn worker_connections(&self) -> usize {
        match self.handler {
            Handler::Exec { .. } | Handler::Resident { .. } => 1 + self.config.program_connections,
            _ => 1,
        }
    }

    fn end_child(&self, child: QueueChild) {
        child.keeper.end();
    }

    fn children_lost(&self, lost: &[LostChild]) {
        super::stranded::release_lost(&self.config, lost);
    }

    /// The fleet's connections, its programs' included, for the summary's
    /// peak.
    fn master_tick(&self, children: &[ChildStatus]) {
        let open: u64 = children
            .iter()
            .map(|c| u64::from(c.open_connections) + u64::from(c.program_connections))
            .sum();
        self.stats
            .peak_backends
            .fetch_max(open, std::sync::atomic::Ordering::Relaxed);
    }

    fn master_counted(&self, counted: &Counted<'_>) {
        let attempts = self.metrics.attempts(counted);
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(line) = failing.tick(Instant::now(), attempts) {
            log::warn!("{line}");
        }
        drop(failing);
        let finished = self.metrics.finished(counted);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.stats.done.store(finished.done, relaxed);
        self.stats.failed.store(finished.failed, relaxed);
        if let Some(progress) = &self.progress {
            progress(finished);
        }
    }

    fn run_worker(&self, child: &QueueChild, worker: &Worker) {
        let cx = Context {
            worker,
            config: &self.config,
            metrics: &self.metrics,
            deadlines: child.deadlines.as_ref(),
        };
        Shift {
            config: &self.config,
            child,
            runner: self.handler.runner(&self.config),
            cx,
            stranded: Vec::new(),
        }
        .run();
    }
}

/// One worker thread's loop, and what it works with.
struct Shift<'a> {
    config: &'a QueueConfig,
    child: &'a QueueChild,
    /// Runs the batches (one per worker: a resident program is its own).
    runner: Box<dyn Runner<'a> + 'a>,
    cx: Context<'a>,
    /// What a failure left stamped but unrecorded, to hand back.
    stranded: Vec<Stranded>,
}

impl Shift<'_> {
    fn worker(&self) -> &Worker {
        self.cx.worker
    }

    /// The loop: rounds until the child stops, then the stop's hand-back.
    fn run(mut self) {
        let mut claimed: Option<Batch> = None;
        while !self.worker().stopping() {
            // Jobs in hand were claimed as the leader, on the worker's own
            // connection unless the lead has an alias of its own: that
            // connection still LISTENs.
            let listening = claimed.is_some() && self.config.listen.is_none();
            let ran = self.round(claimed.take());
            let outcome = match ran {
                Ok(0) => self.idle().map(|batch| claimed = batch),
                Ok(n) => {
                    if n as i64 >= self.config.batch {
                        // A full batch: there is probably more, so bring in
                        // another worker (which brings in the next).
                        self.child.idle.wake_one_more();
                    }
                    crate::with_client(|client| {
                        if listening {
                            client.batch_execute("UNLISTEN *")?;
                        }
                        self.child.keeper.run_due(client)?;
                        self.child
                            .housekeeping
                            .run(client, self.config, &self.child.floors)
                            .map(drop)
                    })
                }
                Err(e) => Err(e),
            };
            if let Err(e) = outcome {
                // A claim of this worker's may have committed while its
                // answer was lost: look for one once reconnected.
                if !self.stranded.iter().any(|s| matches!(s, Stranded::Lost)) {
                    self.stranded.push(Stranded::Lost);
                }
                let worker = self.worker();
                log::warn!(
                    "child {} worker {}: {e}",
                    worker.child_index(),
                    worker.index()
                );
                crate::close_all();
                worker.wait(Duration::from_secs(1));
            }
        }
        self.runner.end(&self.cx);
        // Record outcomes left waiting by a failed recorder; then hand back,
        // at once rather than at lease expiry, what a failure left, jobs
        // claimed as the leader just as the child was told to stop, and the
        // jobs still waiting in the local queue.
        let _ = self.record_waiting();
        self.stranded.extend(claimed.map(Stranded::Unstarted));
        for batch in self.child.prefetch.drain() {
            self.child.claims.let_go(&batch.owner, batch.jobs.len());
            self.stranded.push(Stranded::Unstarted(batch));
        }
        if !self.stranded.is_empty() {
            let _ = self.hand_back();
        }
    }

    /// One round: a batch from the child's local queue (claiming for the
    /// child when it is empty: see `prefetch`), run and recorded; returns
    /// how many jobs it ran. Runs `claimed` instead if given (jobs the
    /// worker claimed as the leader).
    ///
    /// After a failure the round first hands back what the failure left
    /// stamped but unrecorded (see `stranded`).
    fn round(&mut self, claimed: Option<Batch>) -> Result<usize, crate::Error> {
        if !self.stranded.is_empty() {
            let released = self.hand_back()?;
            if !released.is_empty() {
                log::warn!("{released} whose outcome could not be recorded");
            }
            self.stranded.clear();
        }
        self.record_waiting()?;
        let child = self.child;
        let quiet = self.worker().quiet();
        let size = child.pace.take_size();
        let batch = match claimed {
            Some(batch) => batch,
            None => match child.prefetch.take(size) {
                Take::Batch(batch, None) => batch,
                Take::Batch(batch, Some(_)) if quiet => batch,
                Take::Batch(batch, Some(ahead)) => {
                    // Claim ahead first, while the other workers still
                    // have jobs; this batch waits a round trip.
                    if let Err(e) = self.claim(ahead, 0) {
                        self.stranded.push(Stranded::Unstarted(batch));
                        return Err(e);
                    }
                    batch
                }
                Take::Empty => return Ok(0),
                // Quiet: what the local queue holds is run, nothing more
                // is claimed (dropping the turn ends it like an empty claim).
                Take::Claim(_) if quiet => return Ok(0),
                Take::Claim(claiming) => match self.claim(claiming, size.min)? {
                    Some(mine) => mine,
                    None => return Ok(0),
                },
            },
        };
        let count = batch.jobs.len();
        if count == 0 {
            return Ok(0);
        }
        let started = Instant::now();
        self.run_batch(batch)?;
        child.pace.observe(count, started.elapsed());
        Ok(count)
    }

    /// Releases what `stranded` names, each by its own stamp; what it
    /// released.
    fn hand_back(&self) -> Result<store::Released, crate::Error> {
        let own = self.child.claims.own(self.worker());
        crate::with_client(|client| {
            let mut released = store::Released::default();
            for what in &self.stranded {
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
    fn claim(&self, claiming: Claiming<'_>, keep: usize) -> Result<Option<Batch>, crate::Error> {
        let (owner, jobs, full) = self.worker().watched("claim", || {
            crate::with_client(|client| self.claim_on(client))
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
    fn claim_on(&self, client: &mut Client) -> Result<(Arc<str>, Vec<Job>, bool), postgres::Error> {
        let c = self.config;
        let owner = self.child.claims.next_owner(self.worker());
        let size = self.child.pace.claim_size();
        let floors = &self.child.floors;
        let started = Instant::now();
        let jobs = store::claim(
            client,
            &c.schema,
            c.serving(),
            size,
            &owner,
            c.lease,
            floors,
        )?;
        self.cx.metrics.claimed(self.worker(), started.elapsed());
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
        self.child.claims.hold(owner, jobs.len());
        let (mine, queued) = match claiming {
            Some((claiming, full)) => claiming.fill(owner, jobs, keep, full),
            None => self.child.prefetch.put(owner, jobs, keep),
        };
        // A worker for every batch the rest make, but this one.
        let batches = queued.div_ceil(self.config.batch.max(1) as usize);
        for _ in 0..batches.min(self.child.threads.saturating_sub(1)) {
            self.child.idle.wake_one_more();
        }
        mine
    }

    /// Runs a batch: its suspects (see `alone`) each alone in the child's
    /// turn, after the others. What a failure or a stop leaves unstarted
    /// is handed back so.
    fn run_batch(&mut self, batch: Batch) -> Result<(), crate::Error> {
        let Batch { owner, jobs } = batch;
        let (suspects, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.suspect);
        let mut ran = match jobs.is_empty() {
            true => Ok(()),
            false => self.run_together(Batch {
                owner: owner.clone(),
                jobs,
            }),
        };
        let mut waiting = VecDeque::from(suspects);
        let worker = self.cx.worker;
        while ran.is_ok() && !waiting.is_empty() {
            let Some(_turn) = self.child.alone.turn(|| worker.stopping()) else {
                break;
            };
            let jobs = waiting.pop_front().into_iter().collect();
            ran = self.run_together(Batch {
                owner: owner.clone(),
                jobs,
            });
        }
        if !waiting.is_empty() {
            self.child.claims.let_go(&owner, waiting.len());
            let jobs = Vec::from(waiting);
            self.stranded
                .push(Stranded::Unstarted(Batch { owner, jobs }));
        }
        ran
    }

    /// Runs a batch through the worker's runner and has its outcomes
    /// recorded (see `completions`: by this worker if no other is
    /// recording, else by that one). A batch that fails to run is stranded
    /// whole; the jobs a runner did not start are handed back unstarted.
    fn run_together(&mut self, batch: Batch) -> Result<(), crate::Error> {
        let claims = &self.child.claims;
        // If the child dies now, these ran; what else it holds did not.
        let ids: Vec<i64> = batch.jobs.iter().map(|j| j.id).collect();
        let held = self.cx.worker.hold_jobs(&ids);
        let ran = self.runner.run(&self.cx, &batch);
        drop(held);
        let outcomes = match ran {
            Ok(Ran::Recorded) => {
                claims.let_go(&batch.owner, batch.jobs.len());
                return Ok(());
            }
            Ok(Ran::Outcomes(outcomes)) => outcomes,
            Err(e) => {
                claims.let_go(&batch.owner, batch.jobs.len());
                self.stranded.push(Stranded::Batch(batch));
                return Err(e);
            }
        };
        let Batch { owner, mut jobs } = batch;
        if outcomes.len() < jobs.len() {
            let rest = jobs.split_off(outcomes.len());
            claims.let_go(&owner, rest.len());
            self.stranded.push(Stranded::Unstarted(Batch {
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
        match self.child.completions.add(finished) {
            Some(turn) => self.record(turn),
            None => Ok(()),
        }
    }

    /// Records, in this worker's turn, the child's waiting outcomes until
    /// none wait, letting go of each job recorded; a group it could not
    /// record is stranded, to be handed back.
    fn record(&mut self, mut turn: Recording<'_>) -> Result<(), crate::Error> {
        while let Some(group) = turn.next() {
            let recorded = self.cx.record(&group);
            for claim in group.chunk_by(|a, b| a.owner == b.owner) {
                self.child.claims.let_go(&claim[0].owner, claim.len());
            }
            if let Err(e) = recorded {
                self.stranded.extend(Stranded::unrecorded(group));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Records outcomes waiting with no worker recording them (their
    /// recorder failed), if any.
    fn record_waiting(&mut self) -> Result<(), crate::Error> {
        match self.child.completions.turn() {
            Some(turn) => self.record(turn),
            None => Ok(()),
        }
    }

    /// Nothing to claim: end a drain if everything is finished, then lead
    /// the child's idle workers if none does, or else sleep without a
    /// connection until woken. Returns jobs claimed as the leader.
    fn idle(&self) -> Result<Option<Batch>, crate::Error> {
        let child = self.child;
        // Only when the child's last claim came back short: a busy child's
        // workers go idle many times a second between claims, and the
        // idle leader looks at every poll anyway.
        if self.config.drain && !child.drained.load(Ordering::Acquire) && child.prefetch.ran_short()
        {
            if let Err(e) = crate::with_client(|client| self.stop_if_drained(client)) {
                log::warn!("checking the queue: {e}");
            }
        }
        if let Some(leadership) = child.idle.try_lead() {
            return self.lead_then_hand_off(leadership);
        }
        // A follower: asleep until there is something to do, its connection
        // closed after a moment (see `idle`).
        match child.idle.follow(self.worker(), crate::close_all) {
            Woken::Claim | Woken::Stop => Ok(None),
            Woken::Lead(leadership) => self.lead_then_hand_off(leadership),
        }
    }

    /// With `drain`: once nothing of the queue is queued or running in the
    /// database, whoever ran it (this fleet, another one, a master that
    /// failed a dead child's last attempt), asks the master to stop the
    /// fleet. A worker going idle looks, and so does the idle leader at
    /// every `poll`, so a fleet with nothing left to do notices even when
    /// the last change was not its own.
    fn stop_if_drained(&self, client: &mut Client) -> Result<(), postgres::Error> {
        let c = self.config;
        let drained = &self.child.drained;
        if !c.drain || drained.load(Ordering::Acquire) {
            return Ok(());
        }
        // Jobs in this child's hands are pending, whatever the table says
        // (and the table's look for running jobs of some kinds is a scan).
        if self.child.claims.holds_any() {
            return Ok(());
        }
        if store::pending(client, &c.schema, c.serving())? {
            return Ok(());
        }
        if !drained.swap(true, Ordering::AcqRel) {
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
    ) -> Result<Option<Batch>, crate::Error> {
        if self.config.listen.is_some() {
            // It leads on its own connection: hold only that one.
            crate::close_all();
        }
        let led = self.lead();
        if led.as_ref().is_ok_and(Option::is_some) {
            leadership.hand_off();
        } else {
            drop(leadership);
        }
        // A lead on its own alias closes that connection. A lead on the
        // worker's connection leaves it LISTENing: the worker UNLISTENs
        // after running the jobs, off the pickup path (see `run`).
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
    fn lead(&self) -> Result<Option<Batch>, crate::Error> {
        /// How long the leader waits for a notification before it looks at
        /// the stop flag again.
        const SLICE: Duration = Duration::from_millis(100);
        let c = self.config;
        let worker = self.worker();
        let lead = |client: &mut Client| {
            client.batch_execute(&format!("LISTEN {}", c.schema.channel()))?;
            // Work queued before we listened.
            let mut look = true;
            while !worker.stopping() {
                let quiet = worker.quiet();
                if look && !quiet {
                    let (owner, jobs, _) = worker.watched("claim", || self.claim_on(client))?;
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
                self.child.keeper.run_due(client)?;
                if let Some(probe) = self.child.housekeeping.run(client, c, &self.child.floors)? {
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
}

/// `queue "a"` or `queues "a", "b"`, for the log.
fn queue_list(queues: &[String]) -> String {
    let names: Vec<String> = queues.iter().map(|q| format!("{q:?}")).collect();
    match names.as_slice() {
        [one] => format!("queue {one}"),
        many => format!("queues {}", many.join(", ")),
    }
}
