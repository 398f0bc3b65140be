//! A worker thread's handle on its child: the stop flag, wake-ups, and the
//! job accounting the master watches.
//!
//! # Wake-ups
//!
//! All workers of a child share one condition variable. A wake-all
//! ([`Waker::wake`]) bumps a generation number; a worker that was busy when
//! it happened sees a generation it has not seen and returns from its next
//! [`Worker::sleep`] at once, so none is lost. A wake-one
//! ([`Waker::wake_one`]) leaves a token that exactly one sleeping (or the
//! next) worker takes; tokens beyond one per thread are not kept, because
//! more could never be taken before the workers look for work again.
//! Stopping is a wake-all with the stop flag set.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::board::SharedBoard;

/// What all worker threads of one child share.
pub(super) struct ChildShared {
    pub(super) board: SharedBoard,
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
    pub(super) fn new(board: SharedBoard, threads: usize) -> ChildShared {
        ChildShared {
            board,
            threads,
            stopping: AtomicBool::new(false),
            wakes: Mutex::default(),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Wakes> {
        // Nothing panics while holding it, so a poisoned lock holds a
        // consistent value.
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

    /// Tells every worker to stop.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake_all();
    }
}

/// Wakes the workers of one child out of [`Worker::wait`].
#[derive(Clone)]
pub struct Waker(pub(super) Arc<ChildShared>);

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

/// A worker thread's handle on its child.
pub struct Worker {
    pub(super) index: usize,
    pub(super) child: usize,
    pub(super) shared: Arc<ChildShared>,
    /// The wake-up generation this worker has seen.
    pub(super) seen: Cell<u64>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resident")
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

    /// Whether the child has been told to stop: finish the job at hand and
    /// return from [`App::run_worker`](super::App::run_worker).
    pub fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Whether the fleet is quiet (the master got TSTP): take no new work,
    /// finish what is in hand; until CONT.
    pub fn quiet(&self) -> bool {
        self.shared.board.quiet.load(Ordering::Acquire)
    }

    /// A [`Waker`] for this worker's child.
    pub fn waker(&self) -> Waker {
        Waker(self.shared.clone())
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

    /// Runs one job, the equivalent of a request.
    ///
    /// While `f` runs, the master sees the job and its `label` (for status,
    /// and for `--timeout`: see [`Prefork::timeout`](super::Prefork::timeout)).
    /// Afterwards the job is counted (for `--max-requests`) and
    /// [`close_old`](crate::close_old) recycles the thread's connections, as
    /// at the end of a request; this also happens if `f` panics.
    pub fn job<T>(&self, label: &str, f: impl FnOnce() -> T) -> T {
        self.jobs_within(1, label, None, f)
    }

    /// Runs `count` jobs as one unit of work (a batch run in one statement,
    /// whose jobs cannot be told apart while it runs): like [`Worker::job`],
    /// but the unit may take `count` timeouts and counts as `count` jobs.
    pub fn jobs<T>(&self, count: u32, label: &str, f: impl FnOnce() -> T) -> T {
        self.jobs_within(count, label, None, f)
    }

    /// [`Worker::jobs`] with a time limit per job of their own, in place of
    /// [`Prefork::timeout`](super::Prefork::timeout) (`None`: that one):
    /// the master kills the child if the unit is still running at twice
    /// `count` such limits.
    pub fn jobs_within<T>(
        &self,
        count: u32,
        label: &str,
        limit: Option<Duration>,
        f: impl FnOnce() -> T,
    ) -> T {
        struct End<'a>(&'a Worker, u32);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                self.0.shared.board.end(self.0.index, u64::from(self.1));
                crate::close_old();
            }
        }
        self.shared.board.begin(self.index, label, count, limit);
        let _end = End(self, count);
        f()
    }

    /// Records the jobs `ids` (a job queue's) as the ones this worker runs
    /// now, until the guard is dropped: if the child dies meanwhile, the
    /// master reports them in [`LostChild::running`](super::LostChild::running),
    /// so that what else the child held can be told apart as never started.
    /// At most [`MAX_HELD`](super::MAX_HELD) ids are kept (a batch's first).
    pub fn hold_jobs(&self, ids: &[i64]) -> HeldJobs<'_> {
        self.shared.board.hold(self.index, ids);
        HeldJobs(self)
    }

    /// Starts `command` as a program for this worker's job: the leader of
    /// a process group of its own, started clean (default signals, empty
    /// mask, descriptors 0 to 2 only), dying with this thread, and recorded
    /// on the scoreboard so that the master ends the whole group if the
    /// child dies (see [`Program`](super::Program)). One program at a time
    /// per worker. Its environment has `PGAPPNAME=prefork:program:<its own
    /// pid>`, so that the backends of its libpq clients (and its own
    /// programs') show as its own in `pg_stat_activity`: the fleet counts
    /// them, and ends those a killed program left.
    ///
    /// # Errors
    ///
    /// The program could not be started (or watched), this worker already
    /// runs one, or a NUL byte is in the command's arguments or
    /// environment.
    pub fn spawn(
        &self,
        command: &mut std::process::Command,
    ) -> std::io::Result<super::Program<'_>> {
        let name = program_name_prefix();
        super::program::spawn(
            command,
            self.program_record()?,
            None,
            Some(("PGAPPNAME", &name)),
        )
    }

    /// [`Worker::spawn`], and the program also keeps `channel` open (a
    /// socket or pipe of its own, at the same descriptor number: tell the
    /// program which, in its environment).
    ///
    /// # Errors
    ///
    /// As [`Worker::spawn`].
    pub fn spawn_with_channel(
        &self,
        command: &mut std::process::Command,
        channel: std::os::fd::BorrowedFd<'_>,
    ) -> std::io::Result<super::Program<'_>> {
        use std::os::fd::AsRawFd;
        let name = program_name_prefix();
        super::program::spawn(
            command,
            self.program_record()?,
            Some(channel.as_raw_fd()),
            Some(("PGAPPNAME", &name)),
        )
    }

    /// This worker's slot for the program it runs, on the scoreboard.
    fn program_record(&self) -> std::io::Result<&std::sync::atomic::AtomicI32> {
        self.shared
            .board
            .program_record(self.index)
            .ok_or_else(|| std::io::Error::other("no scoreboard slot for this worker"))
    }

    /// Adds `n` to one of the app's counters (see [`Metrics`]), in this
    /// child's share of the fleet's sum.
    ///
    /// [`Metrics`]: super::Metrics
    pub fn count(&self, counter: super::Counter, n: u64) {
        self.shared.board.add(counter.0, n);
    }

    /// Records `value` (seconds, say) in one of the app's histograms (see
    /// [`Metrics`](super::Metrics)).
    pub fn observe(&self, histogram: super::Histogram, value: f64) {
        for (slot, n) in histogram.slots(value) {
            self.shared.board.add(slot, n);
        }
    }

    /// Runs work that is not a job but must not hang either (claiming jobs,
    /// recording their outcomes): the master sees it as one job's worth of
    /// work, for status and `--timeout`, but it is not counted and the
    /// thread's connections are left as they are.
    pub fn watched<T>(&self, label: &str, f: impl FnOnce() -> T) -> T {
        struct End<'a>(&'a Worker);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                self.0.shared.board.end(self.0.index, 0);
            }
        }
        self.shared.board.begin(self.index, label, 1, None);
        let _end = End(self);
        f()
    }
}

/// `PGAPPNAME`'s value for a program, but its pid (which only the forked
/// process knows: see `program`).
fn program_name_prefix() -> String {
    format!("{}program:", crate::APPLICATION_NAME_PREFIX)
}

/// The jobs a worker runs, as recorded by [`Worker::hold_jobs`]; cleared
/// when dropped.
#[must_use = "the record is cleared when the guard is dropped"]
#[derive(Debug)]
pub struct HeldJobs<'a>(&'a Worker);

impl Drop for HeldJobs<'_> {
    fn drop(&mut self) {
        self.0.shared.board.hold(self.0.index, &[]);
    }
}
