//! The fleet's settings, as the [`Prefork`](super::Prefork) builder sets
//! them and the master and its children read them.

use std::path::PathBuf;
use std::time::Duration;

use super::memory::MemoryLimits;
use super::status::addr::StatusAddr;

/// How long a worker may stay in one unit of work that may take `budget`
/// timeouts before the master kills its child: twice the budget, so that a
/// worker that stops a job itself at its timeout (killing a program, say)
/// has the time to do so and to record the outcome.
pub(crate) fn stuck_after(timeout: Duration, budget: u32) -> Duration {
    timeout.saturating_mul(budget.max(1)).saturating_mul(2)
}

/// The most connections a fleet holds at once, the master's and its
/// workers' programs' included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBounds {
    /// While every slot has its one child: `procs x (threads x w + c) + 1`,
    /// where `w` is what a worker holds, its programs' included
    /// ([`App::worker_connections`](super::App::worker_connections)), `c`
    /// what a child holds besides its workers'
    /// ([`App::child_connections`](super::App::child_connections)) and the
    /// one is the master's, at start and exit.
    pub steady: usize,
    /// While a retiring child (HUP, `--max-requests`, lifetime, memory) is
    /// being replaced: one child more, `(procs + 1) x (threads x w + c) +
    /// 1`. The replacement is ready before the old child is told to stop,
    /// and the next replacement starts only once the old child has exited.
    pub replacing: usize,
}

/// Settings of a fleet; see the [`Prefork`](super::Prefork) setters.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) procs: usize,
    pub(crate) threads: usize,
    /// Connections a child holds besides its workers'
    /// ([`App::child_connections`](super::App::child_connections)).
    pub(crate) child_connections: usize,
    /// Connections a worker holds, its programs' included
    /// ([`App::worker_connections`](super::App::worker_connections)).
    pub(crate) worker_connections: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) boot_timeout: Duration,
    pub(crate) graceful_timeout: Duration,
    pub(crate) max_requests: Option<u64>,
    pub(crate) max_requests_jitter: u64,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) max_lifetime_jitter: Duration,
    /// `--reload-on-rss` and `--max-memory`, in bytes.
    pub(crate) memory: MemoryLimits,
    pub(crate) crash_limit: Option<u32>,
    pub(crate) strict: bool,
    pub(crate) pidfile: Option<PathBuf>,
    pub(crate) status_addr: Option<StatusAddr>,
    pub(crate) min_ready: Option<usize>,
}

impl Settings {
    /// The settings as the status endpoint's `/status` shows them.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        serde_json::json!({
            "name": self.name,
            "procs": self.procs,
            "threads": self.threads,
            "timeout_seconds": secs(self.timeout),
            "boot_timeout_seconds": self.boot_timeout.as_secs_f64(),
            "graceful_timeout_seconds": self.graceful_timeout.as_secs_f64(),
            "max_requests": self.max_requests,
            "max_lifetime_seconds": secs(self.max_lifetime),
            "reload_on_rss_megabytes": self.memory.rss.map(|b| b / (1024 * 1024)),
            "max_memory_megabytes": self.memory.pss.map(|b| b / (1024 * 1024)),
            "max_memory_readings": self.memory.readings,
            "crash_limit": self.crash_limit,
            "status_addr": self.status_addr.as_ref().map(ToString::to_string),
            "min_ready": self.min_ready,
        })
    }

    pub(crate) fn connection_bounds(&self) -> ConnectionBounds {
        let child = self.threads * self.worker_connections + self.child_connections;
        ConnectionBounds {
            steady: self.procs * child + 1,
            replacing: (self.procs + 1) * child + 1,
        }
    }
}
