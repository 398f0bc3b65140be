//! The [`Prefork`] builder: the fleet's settings, set one by one, and the
//! run.

use std::path::PathBuf;
use std::time::Duration;

use super::app::{App, Report};
use super::board::MAX_THREADS;
use super::error::PreforkError;
use super::memory::MemoryLimits;
use super::settings::{ConnectionBounds, Settings};
use super::supervise;
#[cfg(doc)]
use super::worker::Worker;

/// Builds and runs a supervised fleet of prefork children.
#[derive(Debug, Clone)]
pub struct Prefork {
    pub(super) settings: Settings,
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
                child_connections: 0,
                worker_connections: 1,
                timeout: None,
                boot_timeout: Duration::from_secs(30),
                graceful_timeout: Duration::from_secs(30),
                max_requests: None,
                max_requests_jitter: 0,
                max_lifetime: None,
                max_lifetime_jitter: Duration::ZERO,
                memory: MemoryLimits::default(),
                crash_limit: None,
                strict: false,
                pidfile: None,
                status_addr: None,
                min_ready: None,
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

    /// The name in process titles (`<name>: master`, `<name>: child 3`).
    /// Default: `prefork`.
    pub fn name(mut self, name: &str) -> Prefork {
        self.settings.name = name.to_owned();
        self
    }

    /// How long one job may take (uWSGI's harakiri). Default: off.
    ///
    /// The rule, in one place: a worker stops what it can itself once a
    /// job is past `timeout` (the queue kills an `--exec` program and fails
    /// its job), and the master kills and replaces the child when a worker
    /// is still in one job at twice `timeout`, which only
    /// happens to work that a worker cannot stop. A unit of work covering
    /// several jobs ([`Worker::jobs`]) gets `timeout` per job; a claim or
    /// other watched work ([`Worker::watched`]) gets one.
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

    /// How long a stopping child may take to finish its jobs before it is
    /// killed. Default: 30 seconds.
    pub fn graceful_timeout(mut self, timeout: Duration) -> Prefork {
        self.settings.graceful_timeout = timeout;
        self
    }

    /// Recycle a child after this many jobs, plus a random extra of up to
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
        self.settings.memory.rss = MemoryLimits::from_megabytes(megabytes, None, 1).rss;
        self
    }

    /// Recycle a child whose proportional memory (PSS: a page shared with N
    /// processes counts 1/N, so memory still shared with the master after
    /// the fork is not counted in full in every child, as resident memory
    /// is) exceeds this many megabytes in `readings` consecutive readings,
    /// one a second, so a brief peak does not recycle it. Default: never.
    ///
    /// # Panics
    ///
    /// If `readings` is 0.
    pub fn max_memory(mut self, megabytes: Option<u64>, readings: u32) -> Prefork {
        assert!(readings > 0, "max_memory needs at least one reading");
        let limits = MemoryLimits::from_megabytes(None, megabytes, readings);
        self.settings.memory.pss = limits.pss;
        self.settings.memory.readings = limits.readings;
        self
    }

    /// Exit with [`PreforkError::CrashLimit`] after this many consecutive
    /// young deaths of one child slot, for systemd or Kubernetes to handle.
    /// Default: never; a crash loop only slows down (backoff, capped at 5 s).
    pub fn crash_limit(mut self, limit: Option<u32>) -> Prefork {
        self.settings.crash_limit = limit.filter(|n| *n > 0);
        self
    }

    /// The most connections the fleet of `app` holds at once: what each
    /// worker holds ([`App::worker_connections`]), what each child holds
    /// besides ([`App::child_connections`]), and the master's (see
    /// [`ConnectionBounds`]).
    pub fn connection_bounds<A: App>(&self, app: &A) -> ConnectionBounds {
        let mut settings = self.settings.clone();
        take_connections_of(&mut settings, app);
        settings.connection_bounds()
    }

    /// Refuse to start when the fleet's connections
    /// ([`ConnectionBounds::replacing`]) do not fit in the server's free
    /// slots, instead of warning. Default: warn.
    pub fn strict(mut self, strict: bool) -> Prefork {
        self.settings.strict = strict;
        self
    }

    /// Serve the fleet's status from the master at this address: `GET
    /// /metrics` (Prometheus), `/status` (JSON), `/livez` and `/readyz`
    /// (see the `status` module). Default: none.
    ///
    /// The address is bound before the first fork; a loopback address
    /// (`127.0.0.1:9187`) or a Unix socket path keeps it off the network.
    pub fn status_addr(mut self, addr: Option<super::StatusAddr>) -> Prefork {
        self.settings.status_addr = addr;
        self
    }

    /// Children that must be ready (or retiring, still at work until their
    /// replacement is ready) for the status endpoint's `/readyz` to say
    /// 200; at least one, at most the fleet's size. Default: all of them,
    /// so a child that keeps dying holds a rollout back.
    pub fn min_ready(mut self, children: Option<usize>) -> Prefork {
        self.settings.min_ready = children;
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
        let mut settings = self.settings;
        take_connections_of(&mut settings, &app);
        supervise::run(settings, std::sync::Arc::new(app))
    }
}

/// What `app`'s children and workers hold besides, for the bounds.
fn take_connections_of<A: App>(settings: &mut Settings, app: &A) {
    settings.child_connections = app.child_connections();
    settings.worker_connections = app.worker_connections();
}
