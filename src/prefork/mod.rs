//! The prefork master: N child processes x M worker threads, supervised.
//!
//! ```no_run
//! use fork_safe::prefork::{App, Prefork, Worker};
//! use std::time::Duration;
//!
//! struct Hello;
//!
//! impl App for Hello {
//!     fn run_worker(&self, worker: &Worker) {
//!         while !worker.stopping() {
//!             worker.task("hello", || {
//!                 let _ = fork_safe::with_client(|c| c.execute("SELECT 1", &[]));
//!             });
//!             worker.wait(Duration::from_secs(1));
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), fork_safe::prefork::PreforkError> {
//! let report = Prefork::new().procs(4).threads(8).run(Hello)?;
//! println!("{} restarts", report.restarts);
//! # Ok(())
//! # }
//! ```
//!
//! The master forks every child through [`crate::fork()`]: it must be
//! single-threaded and it closes its own connections first (it may use the
//! database between forks; its connections reopen lazily). Each child dies
//! with the master, runs `threads` worker threads that close their
//! connections when they end, and reports ready through a pipe. The master
//! restarts children that die (with backoff for crash loops), kills children
//! that hang at boot or in a task, recycles them by task count, age or
//! memory one at a time, ends the backends of children that died abruptly,
//! and answers signals:
//!
//! | signal | effect |
//! |---|---|
//! | TERM, INT | graceful stop: children finish in-flight tasks, close their connections and exit; SIGKILL after the graceful timeout |
//! | QUIT | fast stop |
//! | HUP | rolling reload: each child is replaced by a new one, which is ready before the old one stops |
//! | TTIN, TTOU | one child more, one fewer |
//! | USR1 | log a status line per child |
//!
//! The master reaps every child of its process (`waitpid(-1)`), so a program
//! that runs it should not start other child processes of its own meanwhile.

mod backoff;
mod board;
mod child;
mod master;
mod signals;
mod title;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub use board::MAX_THREADS;

use crate::error::Error;
use crate::fork::ForkError;
use board::SharedBoard;

/// An error an app reports from [`App::init_child`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the children of a [`Prefork`] fleet do.
///
/// The master holds one instance and each child gets a copy of it through
/// `fork()`, so anything the app set up before [`Prefork::run`] (a bound
/// listener, a parsed configuration) is shared by all children. Do not open
/// database connections or start threads before `run`: the fork guard
/// refuses to fork a process with either.
pub trait App: Send + Sync + 'static {
    /// Runs once in each child, after the fork and before its workers start.
    ///
    /// # Errors
    ///
    /// An error is logged and the child exits; the master counts it as a
    /// child that died young and restarts it with backoff.
    fn init_child(&self, child: &ChildInfo) -> Result<(), BoxError> {
        let _ = child;
        Ok(())
    }

    /// Runs in the master after children died abruptly (killed, crashed, or
    /// stopped fast), with their pids, once their leftover backends have
    /// been ended. A job queue requeues their claimed work here.
    ///
    /// It may use the database: the master's connections are closed again
    /// before its next fork.
    fn children_lost(&self, pids: &[u32]) {
        let _ = pids;
    }

    /// Runs in the master on every turn of its loop (at least every 100 ms)
    /// with the children's status, for accounting: a job queue records its
    /// live workers and samples its backends here. Keep it quick; any
    /// database use is closed again before the master's next fork.
    fn master_tick(&self, children: &[ChildStatus]) {
        let _ = children;
    }

    /// The body of each worker thread: take work until
    /// [`Worker::stopping`], wrapping each unit in [`Worker::task`].
    ///
    /// Returning (or panicking) before the child is told to stop is treated
    /// as a fault: the child stops and the master replaces it.
    fn run_worker(&self, worker: &Worker);
}

/// A child as the master sees it, for [`App::master_tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    /// The slot number, from 1.
    pub index: usize,
    /// The child's pid.
    pub pid: u32,
    /// When it was forked.
    pub started: std::time::SystemTime,
    /// Whether it reported ready.
    pub ready: bool,
    /// Tasks it finished.
    pub tasks: u64,
}

/// What a fleet did, returned by [`Prefork::run`] once it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Children forked, replacements included.
    pub started: u64,
    /// Children that died without being asked to stop (killed, crashed,
    /// stuck or hung at boot) and were replaced.
    pub restarts: u64,
}

/// About the child an [`App::init_child`] runs in.
#[derive(Debug, Clone)]
pub struct ChildInfo {
    index: usize,
    threads: usize,
    waker: Waker,
}

impl ChildInfo {
    /// The child's slot number, 1-based (`prefork: worker 3`).
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
}

/// What all worker threads of one child share.
struct ChildShared {
    board: SharedBoard,
    threads: usize,
    stopping: AtomicBool,
    wakes: Mutex<Wakes>,
    wake: Condvar,
}

/// Wake-ups not yet taken by a worker.
#[derive(Default)]
struct Wakes {
    /// Bumped by every wake-all, so a worker notices one that came while it
    /// was busy.
    generation: u64,
    /// Wake-ups for one worker each, at most one per thread.
    tokens: usize,
}

impl ChildShared {
    fn new(board: SharedBoard, threads: usize) -> ChildShared {
        ChildShared {
            board,
            threads,
            stopping: AtomicBool::new(false),
            wakes: Mutex::default(),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wakes> {
        self.wakes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_all(&self) {
        self.lock().generation += 1;
        self.wake.notify_all();
    }

    fn wake_one(&self) {
        {
            let mut wakes = self.lock();
            wakes.tokens = (wakes.tokens + 1).min(self.threads);
        }
        self.wake.notify_one();
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake_all();
    }
}

/// Wakes the workers of one child out of [`Worker::wait`].
#[derive(Clone)]
pub struct Waker(std::sync::Arc<ChildShared>);

impl fmt::Debug for Waker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waker").finish_non_exhaustive()
    }
}

impl Waker {
    /// Wakes them all; a worker that is busy returns at once from its next
    /// `wait`.
    pub fn wake(&self) {
        self.0.wake_all();
    }

    /// Wakes one of them: one waiting worker returns from `wait`, or, if
    /// none waits, the next worker to call it returns at once. Wake-ups
    /// beyond one per thread are not kept.
    pub fn wake_one(&self) {
        self.0.wake_one();
    }
}

/// Why [`Worker::sleep`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A [`Waker`] woke this worker.
    Woken,
    /// The timeout passed.
    TimedOut,
    /// The child was told to stop.
    Stopping,
}

/// A worker thread's handle on its child: the stop flag, and task
/// accounting that the master watches.
pub struct Worker {
    index: usize,
    child: usize,
    shared: std::sync::Arc<ChildShared>,
    /// The wake-up generation this worker has seen.
    seen: std::cell::Cell<u64>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("child", &self.child)
            .field("stopping", &self.stopping())
            .finish()
    }
}

impl Worker {
    /// The thread's number within its child, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The child's slot number, from 1.
    pub fn child_index(&self) -> usize {
        self.child
    }

    /// Whether the child has been told to stop: finish the task at hand and
    /// return from [`App::run_worker`].
    pub fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Sleeps until `timeout` passes, a [`Waker`] wakes this worker, or the
    /// child is told to stop; returns [`Worker::stopping`]. A wake-up that
    /// came since this worker's previous `wait` returned (or a wake-one no
    /// other worker took) makes it return at once, so none is lost while the
    /// worker was busy.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.sleep(timeout);
        self.stopping()
    }

    /// Like [`Worker::wait`], and says why it returned.
    pub fn sleep(&self, timeout: Duration) -> Wake {
        let seen = self.seen.get();
        let wakes = self.shared.lock();
        let (mut wakes, _) = self
            .shared
            .wake
            .wait_timeout_while(wakes, timeout, |w| {
                w.generation == seen && w.tokens == 0 && !self.stopping()
            })
            .unwrap_or_else(|e| e.into_inner());
        let woken = if wakes.generation != seen {
            true
        } else if wakes.tokens > 0 {
            wakes.tokens -= 1;
            true
        } else {
            false
        };
        self.seen.set(wakes.generation);
        drop(wakes);
        if self.stopping() {
            Wake::Stopping
        } else if woken {
            Wake::Woken
        } else {
            Wake::TimedOut
        }
    }

    /// Runs one unit of work, the equivalent of a request.
    ///
    /// While `f` runs, the master sees the task and its `label` (for
    /// `--timeout`, which kills a child stuck in one task, and for status).
    /// Afterwards the task is counted (for `--max-requests`) and
    /// [`close_old`](crate::close_old) recycles the thread's connections, as
    /// at the end of a request; this also happens if `f` panics.
    pub fn task<T>(&self, label: &str, f: impl FnOnce() -> T) -> T {
        struct End<'a>(&'a Worker);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                self.0.shared.board.end(self.0.index);
                crate::close_old();
            }
        }
        self.shared.board.begin(self.index, label);
        let _end = End(self);
        f()
    }
}

/// Settings of a fleet; see the [`Prefork`] setters.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) procs: usize,
    pub(crate) threads: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) boot_timeout: Duration,
    pub(crate) graceful_timeout: Duration,
    pub(crate) max_requests: Option<u64>,
    pub(crate) max_requests_jitter: u64,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) max_lifetime_jitter: Duration,
    pub(crate) reload_on_rss: Option<u64>,
    pub(crate) crash_limit: Option<u32>,
    pub(crate) strict: bool,
    pub(crate) pidfile: Option<PathBuf>,
}

/// Builds and runs a supervised fleet of prefork children.
#[derive(Debug, Clone)]
pub struct Prefork {
    settings: Settings,
}

impl Default for Prefork {
    fn default() -> Prefork {
        Prefork::new()
    }
}

impl Prefork {
    /// A fleet with the defaults given at each setter.
    pub fn new() -> Prefork {
        Prefork {
            settings: Settings {
                name: "prefork".to_owned(),
                procs: std::thread::available_parallelism().map_or(1, |n| n.get()),
                threads: 1,
                timeout: None,
                boot_timeout: Duration::from_secs(30),
                graceful_timeout: Duration::from_secs(30),
                max_requests: None,
                max_requests_jitter: 0,
                max_lifetime: None,
                max_lifetime_jitter: Duration::ZERO,
                reload_on_rss: None,
                crash_limit: None,
                strict: false,
                pidfile: None,
            },
        }
    }

    /// Child processes. Default: the number of CPUs.
    ///
    /// # Panics
    ///
    /// If `procs` is zero.
    pub fn procs(mut self, procs: usize) -> Prefork {
        assert!(procs > 0, "procs must be at least 1");
        self.settings.procs = procs;
        self
    }

    /// Worker threads per child. Default: 1.
    ///
    /// # Panics
    ///
    /// If `threads` is zero or above [`MAX_THREADS`].
    pub fn threads(mut self, threads: usize) -> Prefork {
        assert!(
            (1..=MAX_THREADS).contains(&threads),
            "threads must be between 1 and {MAX_THREADS}"
        );
        self.settings.threads = threads;
        self
    }

    /// The name in process titles (`<name>: master`, `<name>: worker 3`).
    /// Default: `prefork`.
    pub fn name(mut self, name: &str) -> Prefork {
        self.settings.name = name.to_owned();
        self
    }

    /// Kill and replace a child whose worker has been in one task longer
    /// than this (uWSGI's harakiri). Default: off.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Prefork {
        self.settings.timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Kill and replace a child not ready this long after its fork.
    /// Default: 30 seconds.
    pub fn boot_timeout(mut self, timeout: Duration) -> Prefork {
        self.settings.boot_timeout = timeout;
        self
    }

    /// How long a stopping child may take to finish its tasks before it is
    /// killed. Default: 30 seconds.
    pub fn graceful_timeout(mut self, timeout: Duration) -> Prefork {
        self.settings.graceful_timeout = timeout;
        self
    }

    /// Recycle a child after this many tasks, plus a random extra of up to
    /// `jitter` so children do not all recycle at once. Default: never.
    pub fn max_requests(mut self, max: Option<u64>, jitter: u64) -> Prefork {
        self.settings.max_requests = max.filter(|n| *n > 0);
        self.settings.max_requests_jitter = jitter;
        self
    }

    /// Recycle a child after it has lived this long, plus a random extra of
    /// up to `jitter`. Default: never.
    pub fn max_lifetime(mut self, max: Option<Duration>, jitter: Duration) -> Prefork {
        self.settings.max_lifetime = max.filter(|d| !d.is_zero());
        self.settings.max_lifetime_jitter = jitter;
        self
    }

    /// Recycle a child whose resident memory exceeds this many megabytes.
    /// Default: never.
    pub fn reload_on_rss(mut self, megabytes: Option<u64>) -> Prefork {
        self.settings.reload_on_rss = megabytes.filter(|n| *n > 0);
        self
    }

    /// Exit with [`PreforkError::CrashLimit`] after this many consecutive
    /// young deaths of one child slot, for systemd or Kubernetes to handle.
    /// Default: never; a crash loop only slows down (backoff, capped at 5 s).
    pub fn crash_limit(mut self, limit: Option<u32>) -> Prefork {
        self.settings.crash_limit = limit.filter(|n| *n > 0);
        self
    }

    /// Refuse to start when procs x threads + 1 connections do not fit in
    /// the server's free slots, instead of warning. Default: warn.
    pub fn strict(mut self, strict: bool) -> Prefork {
        self.settings.strict = strict;
        self
    }

    /// Write the master's pid to this file while it runs. Default: none.
    pub fn pidfile(mut self, path: Option<PathBuf>) -> Prefork {
        self.settings.pidfile = path;
        self
    }

    /// Runs the fleet until it is stopped by a signal; reports what it did.
    ///
    /// Call it from the main thread of a single-threaded process with no
    /// connection open (threads and connections are refused by the fork
    /// guard). If a database is [configured](crate::configure), the master
    /// checks the server's free connection slots first, and ends the
    /// backends of children that die abruptly.
    ///
    /// # Errors
    ///
    /// - [`PreforkError::Database`] if the start-up slot check cannot reach
    ///   the database;
    /// - [`PreforkError::NotEnoughSlots`] with [`Prefork::strict`];
    /// - [`PreforkError::AlreadyRunning`] if the pidfile names a live
    ///   process;
    /// - [`PreforkError::Fork`] if the process has other threads or open
    ///   connections held elsewhere;
    /// - [`PreforkError::CrashLimit`] after the fleet stopped because of it;
    /// - [`PreforkError::Io`] for pipes, mappings, signals or the pidfile.
    pub fn run<A: App>(self, app: A) -> Result<Report, PreforkError> {
        master::run(self.settings, std::sync::Arc::new(app))
    }
}

/// Why a fleet could not start or had to stop.
#[derive(Debug)]
#[non_exhaustive]
pub enum PreforkError {
    /// An operating-system call failed.
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// The fork guard refused (other threads, or connections held by them).
    Fork(ForkError),
    /// The database could not be asked about its free slots.
    Database(Error),
    /// procs x threads + 1 connections do not fit in the server's free
    /// slots ([`Prefork::strict`]).
    NotEnoughSlots {
        /// Connections the fleet may open.
        needed: i64,
        /// Free connection slots for ordinary roles.
        free: i64,
    },
    /// The pidfile names a live process.
    AlreadyRunning {
        /// The pidfile.
        pidfile: PathBuf,
        /// The pid in it.
        pid: i32,
    },
    /// A child slot died young this many times in a row.
    CrashLimit {
        /// The slot.
        index: usize,
        /// Consecutive young deaths.
        deaths: u32,
    },
}

impl fmt::Display for PreforkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreforkError::Io { context, source } => write!(f, "{context}: {source}"),
            PreforkError::Fork(e) => write!(f, "{e}"),
            PreforkError::Database(e) => write!(f, "{e}"),
            PreforkError::NotEnoughSlots { needed, free } => write!(
                f,
                "the fleet may open {needed} connections but the server has {free} free slots \
                 (max_connections minus reserved and in use); lower --procs or --threads"
            ),
            PreforkError::AlreadyRunning { pidfile, pid } => write!(
                f,
                "already running: {} names live process {pid}",
                pidfile.display()
            ),
            PreforkError::CrashLimit { index, deaths } => write!(
                f,
                "worker {index} died young {deaths} times in a row (crash limit reached)"
            ),
        }
    }
}

impl std::error::Error for PreforkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PreforkError::Io { source, .. } => Some(source),
            PreforkError::Fork(e) => Some(e),
            PreforkError::Database(e) => Some(e),
            _ => None,
        }
    }
}

pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> PreforkError {
    let context = context.into();
    move |source| PreforkError::Io { context, source }
}
