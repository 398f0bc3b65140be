//! A fixed-size thread pool whose workers treat every task as a request:
//! the `DbSafeThreadPoolExecutor` of the Python world.
//!
//! After each task the worker runs [`close_old`], Django's end-of-request
//! hook: connections past their age or idle limit are closed, a connection
//! whose task failed or panicked is rolled back. While idle, workers wake up
//! now and then to close connections that idled out. A worker that exits
//! closes its connections.

use std::any::Any;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::conn::close_old;
use thread::CloseOnExit;

pub mod thread;

type Task = Box<dyn FnOnce() + Send + 'static>;

/// Configures a [`ThreadPool`].
#[derive(Debug, Clone)]
pub struct ThreadPoolBuilder {
    threads: usize,
    name: String,
    idle_check: Duration,
}

impl Default for ThreadPoolBuilder {
    fn default() -> ThreadPoolBuilder {
        ThreadPoolBuilder {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            name: "fork_safe-worker".to_owned(),
            idle_check: Duration::from_secs(1),
        }
    }
}

impl ThreadPoolBuilder {
    /// A builder with the defaults below.
    pub fn new() -> ThreadPoolBuilder {
        ThreadPoolBuilder::default()
    }

    /// The number of worker threads. Default: the number of CPUs.
    ///
    /// # Panics
    ///
    /// If `threads` is zero.
    pub fn threads(mut self, threads: usize) -> ThreadPoolBuilder {
        assert!(threads > 0, "a pool needs at least one thread");
        self.threads = threads;
        self
    }

    /// The prefix of the workers' thread names; worker `i` is named
    /// `"{name}-{i}"`. Default: `fork_safe-worker`.
    pub fn name(mut self, name: &str) -> ThreadPoolBuilder {
        self.name = name.to_owned();
        self
    }

    /// How often an idle worker wakes up to close connections that have
    /// idled out. Default: 1 second.
    ///
    /// # Panics
    ///
    /// If the duration is zero.
    pub fn idle_check(mut self, every: Duration) -> ThreadPoolBuilder {
        assert!(!every.is_zero(), "idle_check must be non-zero");
        self.idle_check = every;
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    ///
    /// If the operating system cannot create a thread; the workers already
    /// started are stopped and joined first.
    pub fn build(self) -> io::Result<ThreadPool> {
        let (sender, receiver) = crossbeam_channel::unbounded::<Task>();
        let live = Arc::new(Live::default());
        let mut pool = ThreadPool {
            sender: Some(sender),
            workers: Vec::with_capacity(self.threads),
            live: live.clone(),
        };
        for i in 0..self.threads {
            let receiver = receiver.clone();
            let worker_live = live.clone();
            let idle_check = self.idle_check;
            *live.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || work(&receiver, idle_check, &worker_live));
            match spawned {
                Ok(handle) => pool.workers.push(handle),
                Err(e) => {
                    live.exited();
                    return Err(e); // `pool` drops here: its workers are joined
                }
            }
        }
        Ok(pool)
    }
}

/// Counts the workers still running, for `shutdown`'s deadline.
#[derive(Default)]
struct Live {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Live {
    fn exited(&self) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.changed.notify_all();
    }
}

/// Marks its worker as exited, even if the worker unwinds.
struct Exit<'a>(&'a Live);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        self.0.exited();
    }
}

fn work(receiver: &Receiver<Task>, idle_check: Duration, live: &Live) {
    let _exit = Exit(live);
    let _close = CloseOnExit::new();
    loop {
        match receiver.recv_timeout(idle_check) {
            Ok(job) => {
                job();
                close_old();
            }
            Err(RecvTimeoutError::Timeout) => close_old(),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// A fixed set of worker threads running submitted closures.
///
/// Dropping the pool lets the workers finish every task already submitted,
/// then joins them.
pub struct ThreadPool {
    sender: Option<Sender<Task>>,
    workers: Vec<JoinHandle<()>>,
    live: Arc<Live>,
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.workers.len())
            .field("queued", &self.queued())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `threads` workers with the other [`ThreadPoolBuilder`] defaults.
    ///
    /// # Errors
    ///
    /// If the operating system cannot create a thread.
    ///
    /// # Panics
    ///
    /// If `threads` is zero.
    pub fn new(threads: usize) -> io::Result<ThreadPool> {
        ThreadPoolBuilder::new().threads(threads).build()
    }

    /// A [`ThreadPoolBuilder`] for a pool with other settings.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::new()
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Tasks submitted and not yet picked up by a worker.
    pub fn queued(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    /// Runs `f` on a worker; its result (or its panic) comes back through
    /// the returned handle.
    ///
    /// A panic in `f` does not take the worker down: it is caught, reported
    /// through [`TaskHandle::join`], and the worker's connections are rolled
    /// back before its next task.
    pub fn submit<F, T>(&self, f: F) -> TaskHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Box::new(move || {
            let outcome = panic::catch_unwind(AssertUnwindSafe(f)).map_err(panic_message);
            // The submitter may have dropped its handle; that is fine.
            let _ = tx.send(outcome);
        }));
        TaskHandle { rx }
    }

    /// Runs `f` on a worker without a handle; a panic is logged.
    pub fn execute<F>(&self, f: F)
    where
        F: FnOnce() + Send + 'static,
    {
        self.send(Box::new(move || {
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
                log::error!("task panicked: {}", panic_message(payload));
            }
        }));
    }

    fn send(&self, job: Task) {
        let sender = self.sender.as_ref().expect("the sender lives until drop");
        // The workers hold the receivers until the sender is gone, and they
        // survive panicking tasks, so the channel cannot be disconnected.
        sender
            .send(job)
            .expect("pool workers outlive the pool's sender");
    }

    /// Stops the pool gracefully: no new tasks, every task already submitted
    /// runs to completion, and the workers close their connections and exit.
    ///
    /// # Errors
    ///
    /// [`ShutdownTimeout`] if workers are still running after `timeout`
    /// (a task is stuck). Threads cannot be killed: those workers are left
    /// to finish on their own, detached, and still close their connections
    /// when they do.
    pub fn shutdown(mut self, timeout: Duration) -> Result<(), ShutdownTimeout> {
        self.sender = None;
        let deadline = Instant::now() + timeout;
        let mut count = self.live.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let running = *count;
                drop(count);
                // Detach: dropping a JoinHandle does not wait.
                self.workers.clear();
                return Err(ShutdownTimeout { running });
            }
            count = self
                .live
                .changed
                .wait_timeout(count, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(count);
        self.join_workers();
        Ok(())
    }

    fn join_workers(&mut self) {
        for worker in self.workers.drain(..) {
            // A worker only unwinds if close_old/close_all panicked, which
            // they do not; the task's own panics are caught.
            let _ = worker.join();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.sender = None;
        self.join_workers();
    }
}

/// The eventual result of a task submitted with [`ThreadPool::submit`].
#[must_use = "dropping the handle discards the task's result"]
pub struct TaskHandle<T> {
    rx: oneshot::Receiver<Result<T, String>>,
}

impl<T> fmt::Debug for TaskHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle").finish_non_exhaustive()
    }
}

impl<T> TaskHandle<T> {
    /// Waits for the task to finish.
    ///
    /// # Errors
    ///
    /// [`TaskError::Panicked`] with the panic message if the task panicked.
    pub fn join(self) -> Result<T, TaskError> {
        match self.rx.recv() {
            Ok(outcome) => outcome.map_err(TaskError::Panicked),
            // Only reachable if the job was dropped unrun, which the pool
            // never does; report it rather than hang or panic.
            Err(_) => Err(TaskError::Lost),
        }
    }

    /// The result, if the task has finished; otherwise the handle back.
    ///
    /// # Errors
    ///
    /// `Err(Ok(handle))` while the task is still running;
    /// `Err(Err(error))` as for [`TaskHandle::join`].
    pub fn try_join(self) -> Result<T, Result<TaskHandle<T>, TaskError>> {
        match self.rx.try_recv() {
            Ok(outcome) => outcome.map_err(|m| Err(TaskError::Panicked(m))),
            Err(oneshot::TryRecvError::Empty) => Err(Ok(self)),
            Err(oneshot::TryRecvError::Disconnected) => Err(Err(TaskError::Lost)),
        }
    }
}

/// Why a task produced no result.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; the panic message.
    Panicked(String),
    /// The task was dropped without running.
    Lost,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Panicked(message) => write!(f, "task panicked: {message}"),
            TaskError::Lost => f.write_str("task was dropped without running"),
        }
    }
}

impl std::error::Error for TaskError {}

/// [`ThreadPool::shutdown`] ran out of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownTimeout {
    /// Workers still running their task when the time ran out.
    pub running: usize,
}

impl fmt::Display for ShutdownTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pool worker(s) still busy at the shutdown deadline",
            self.running
        )
    }
}

impl std::error::Error for ShutdownTimeout {}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(non-string panic payload)".to_owned(),
        },
    }
}
