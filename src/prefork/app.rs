//! What a fleet runs: the [`App`] trait and what the master tells it.

use std::time::SystemTime;

use super::board::RunningProgram;
use super::worker::{Waker, Worker};
use crate::Pid;

/// An error an app reports from [`App::init_child`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the children of a [`Prefork`](super::Prefork) fleet do.
///
/// The master holds one instance and each child gets a copy of it through
/// `fork()`, so anything the app set up before
/// [`Prefork::run`](super::Prefork::run) (a bound listener, a parsed
/// configuration) is shared by all children. Do not open database
/// connections or start threads before `run`: the fork guard refuses to
/// fork a process with either.
pub trait App: Send + Sync + 'static {
    /// What a child sets up for its workers in [`App::init_child`], owned
    /// by the child and shared by its workers (`()` if nothing).
    type Child: Send + Sync + 'static;

    /// Runs once in each child, after the fork and before its workers
    /// start: builds what they share (a local queue, a watchdog thread).
    ///
    /// # Errors
    ///
    /// An error is logged and the child exits; the master counts it as a
    /// child that died young and restarts it with backoff.
    fn init_child(&self, child: &ChildInfo) -> Result<Self::Child, BoxError>;

    /// Connections each child holds besides one per worker: those of
    /// threads the app starts itself (a job queue's keeper holds one).
    /// They count in [`ConnectionBounds`](super::ConnectionBounds) and
    /// the slots a fleet checks for before it starts. Default: 0.
    fn child_connections(&self) -> usize {
        0
    }

    /// Connections each worker holds at most: its own, and those of the
    /// programs it runs ([`Worker::spawn`]: a job queue's `--exec` and
    /// `--worker` programs). They count in
    /// [`ConnectionBounds`](super::ConnectionBounds) and the slots a fleet
    /// checks for before it starts. Default: 1.
    fn worker_connections(&self) -> usize {
        1
    }

    /// Runs once in each child after its workers ended, before it exits
    /// (not when it is killed, nor when it is orphaned past its grace):
    /// stops the threads [`App::init_child`] started and closes what they
    /// hold. Default: drops `child`.
    fn end_child(&self, child: Self::Child) {
        drop(child);
    }

    /// Runs in a handover process the master forks after children died
    /// abruptly (killed, crashed, or stopped fast), once their leftover
    /// backends have been ended: a job queue requeues their claimed jobs
    /// here, as failed attempts, or, for children the master itself
    /// stopped ([`LostChild::interrupted`]), as attempts that never
    /// happened. It may use the database, and take its time: the master's
    /// loop does not wait for it (a handover running past 30 s is killed
    /// and the children handed to the next).
    fn children_lost(&self, lost: &[LostChild]) {
        let _ = lost;
    }

    /// Runs in the master on every turn of its loop (at least every 100 ms)
    /// with the children's status, for accounting (a job queue keeps the
    /// fleet's peak connections here). Keep it quick, and never use the
    /// database: the master's loop must stay live whatever the server
    /// does (the app's database duties belong in its children).
    fn master_tick(&self, children: &[ChildStatus]) {
        let _ = children;
    }

    /// Runs in the master after [`App::master_tick`], when the app has
    /// [`App::metrics`]: its counters summed over the fleet, for progress
    /// (a `--drain` run's live line counts finished jobs here).
    fn master_counted(&self, counted: &super::Counted<'_>) {
        let _ = counted;
    }

    /// The counters and histograms the app's workers keep (see
    /// [`Metrics`](super::Metrics)), served summed over the fleet by the
    /// status endpoint ([`Prefork::status_addr`](super::Prefork::status_addr)).
    /// Called in the master and in each child; it must return the same
    /// declarations every time (declare them before
    /// [`Prefork::run`](super::Prefork::run)).
    fn metrics(&self) -> Option<&super::Metrics> {
        None
    }

    /// Gauges the master serves on the status endpoint (a job queue's
    /// counts by state), from `published`: the values a child last
    /// published with [`ChildInfo::publish_gauges`] (the freshest of any
    /// child's), `None` if none did. Runs in the master's loop when it
    /// answers a request, which never waits for the database: a child
    /// reads them (it sees [`ChildInfo::gauges_asked`]).
    fn gauges(&self, published: Option<&[f64]>) -> Vec<Gauge> {
        let _ = published;
        Vec::new()
    }

    /// The body of each worker thread: take work until
    /// [`Worker::stopping`], running each job in [`Worker::job`] (or a
    /// batch of jobs in [`Worker::jobs`]). `child` is what
    /// [`App::init_child`] built in this child.
    ///
    /// Returning (or panicking) before the child is told to stop is treated
    /// as a fault: the child stops and the master replaces it.
    fn run_worker(&self, child: &Self::Child, worker: &Worker);
}

/// A child that died with work perhaps in hand, for [`App::children_lost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostChild {
    /// Its pid.
    pub pid: Pid,
    /// The master had told it to stop (a graceful stop, reload or recycle
    /// that ran past the graceful timeout, or a fast stop): what it had in
    /// hand was interrupted by the operator, not failed by the work.
    pub interrupted: bool,
    /// The jobs its workers were running when it died, as they recorded
    /// them ([`Worker::hold_jobs`]): what it had in hand besides was not
    /// started.
    pub running: Vec<i64>,
}

/// A child as the master sees it, for [`App::master_tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    /// The slot number, from 1.
    pub index: usize,
    /// The child's pid.
    pub pid: Pid,
    /// When it was forked.
    pub started: SystemTime,
    /// Whether it reported ready.
    pub ready: bool,
    /// Jobs it finished.
    pub jobs: u64,
    /// The programs its workers run now (see
    /// [`Worker::spawn`](super::Worker::spawn)).
    pub programs: Vec<RunningProgram>,
    /// Connections it holds open, as it last counted them.
    pub open_connections: u32,
    /// Backends of the programs its workers run, as it last counted them
    /// ([`ChildInfo::publish_program_connections`]).
    pub program_connections: u32,
}

/// One gauge sample for the status endpoint (see [`App::gauges`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    /// The metric's name (`prefork_queue_jobs`).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Its labels, as name and value.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

/// What a fleet did, returned by [`Prefork::run`](super::Prefork::run) once
/// it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Children forked, replacements included.
    pub started: u64,
    /// Children that died without being asked to stop (killed, crashed,
    /// stuck or hung at boot) and were replaced.
    pub restarts: u64,
    /// Every child's exit, counted by reason ([`ExitReason::label`](super::ExitReason::label)).
    pub exits: std::collections::BTreeMap<&'static str, u64>,
}

/// About the child an [`App::init_child`] runs in.
#[derive(Debug, Clone)]
pub struct ChildInfo {
    pub(super) index: usize,
    pub(super) threads: usize,
    pub(super) waker: Waker,
}

impl ChildInfo {
    /// The child's slot number, 1-based (`prefork: child 3`).
    pub fn index(&self) -> usize {
        self.index
    }

    /// How many worker threads the child runs.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Wakes the child's workers out of [`Worker::wait`]; for a thread the
    /// app starts itself (a LISTEN connection, an acceptor).
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Jobs the child's workers finished so far, as the master counts them
    /// ([`Worker::job`], [`Worker::jobs`]).
    pub fn jobs(&self) -> u64 {
        self.waker.0.board.jobs()
    }

    /// The programs the child's workers run now (see [`Worker::spawn`]).
    pub fn programs(&self) -> Vec<RunningProgram> {
        self.waker.0.board.running(self.threads)
    }

    /// How long ago the master last asked this child for the app's gauges
    /// (a scrape of the status endpoint: the master asks one ready child
    /// at a time); `None` if it never did.
    pub fn gauges_asked(&self) -> Option<std::time::Duration> {
        let asked = self.waker.0.board.asked();
        (asked != 0).then(|| {
            std::time::Duration::from_nanos(super::board::monotonic_nanos().saturating_sub(asked))
        })
    }

    /// Publishes the app's gauges for the master, which hands the freshest
    /// any child published to [`App::gauges`] (at most
    /// [`MAX_GAUGES`](super::MAX_GAUGES) values; more are cut).
    pub fn publish_gauges(&self, values: &[f64]) {
        self.waker.0.board.publish(values);
    }

    /// Publishes how many backends the programs of this child's workers
    /// hold (the app counts them: a job queue, by their
    /// `application_name`), for the status endpoint's `prefork_backends`
    /// and [`ChildStatus::program_connections`].
    pub fn publish_program_connections(&self, n: u32) {
        self.waker
            .0
            .board
            .program_connections
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }
}
