//! A queue fleet's settings: [`QueueConfig`].

use std::time::Duration;

use super::schema::Schema;
use crate::prefork::MemoryLimits;

/// Settings of a [`QueueApp`](super::QueueApp).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Where the tables live. Default: `prefork`.
    pub schema: Schema,
    /// The queues to work, in order of preference: a runnable job of the
    /// first before one of the second, and so on (by priority within a
    /// queue). Default: `["default"]`.
    pub queues: Vec<String>,
    /// Jobs one worker runs and records at once, at least: from a deep
    /// local queue it takes a fair share, up to 64; a child claims up to 8
    /// batches per worker at once (one batch for `Exec`, whose jobs are
    /// slow and run one at a time). Default: 8 (1 for `Exec`).
    pub batch: i64,
    /// How long a claim holds its jobs by itself, for a child that holds
    /// no lease (a claim of an older version's child; see `lease`). A
    /// child's own lease ([`QueueConfig::rescue_after`]) is what keeps its
    /// jobs. Default: 5 minutes.
    pub lease: Duration,
    /// How long one job may take; `None`: no limit. Past it, a job's
    /// statement (`Sql`, or the statements of a `Rust` handler) is
    /// cancelled on the server and an `Exec` program's process group is
    /// stopped, and that job alone fails with "timed out after ...". A
    /// `Sql` batch that runs past it is cancelled and its jobs run again
    /// one by one, so only a job that takes this long by itself fails.
    /// Default: `None`.
    pub timeout: Option<Duration>,
    /// Stop the fleet once nothing is queued or running. Default: off.
    pub drain: bool,
    /// How often each child looks for work that came without a
    /// notification (retries coming due, a missed notification), for dead
    /// rows to vacuum, expired leases and finished jobs to delete. Default:
    /// 1 second.
    pub poll: Duration,
    /// The database alias a child's leader `LISTEN`s (and claims) on;
    /// `None`: the first configured one, like the jobs. Give a direct (or
    /// session-pooled) connection here when the jobs go through PgBouncer
    /// in transaction mode, where `LISTEN` does not reach the session and
    /// pickup would fall back to the poll. A leader with its own alias
    /// closes its other connections while it leads, and this one when it
    /// stops leading, so the connection bounds hold. Default: `None`.
    pub listen: Option<String>,
    /// Delete finished jobs (done or failed) of this queue this long after
    /// they finished, a batch per `poll`; `None` keeps them. Zero keeps no
    /// history: a done job is deleted as it completes (which costs the
    /// server a third less per job), a failed one is kept to be looked at
    /// (delete it by hand). Default: `None`.
    pub keep_finished: Option<Duration>,
    /// The length of each child's lease on the jobs it claimed, which a
    /// thread of its own renews every third of it, however long its jobs
    /// run and whatever its master does: a child that dies, freezes or is
    /// cut off from the server loses its running jobs to the other
    /// children this long after its last renewal (attempt counted).
    /// `None`: leases never lapse. Default: 15 seconds.
    pub rescue_after: Option<Duration>,
    /// A [`Handler::Resident`](super::Handler::Resident) program is started afresh after this many
    /// jobs. Default: `None` (never).
    pub resident_max_jobs: Option<u64>,
    /// How long a [`Handler::Resident`](super::Handler::Resident) program may take to say it is ready.
    /// Default: 30 seconds.
    pub resident_boot_timeout: Duration,
    /// The memory limits a [`Handler::Resident`](super::Handler::Resident) program is held to, as a
    /// child is (`--max-memory`, `--reload-on-rss`). Default: none.
    pub resident_memory: MemoryLimits,
    /// Programs ([`Handler::Exec`](super::Handler::Exec),
    /// [`Handler::Resident`](super::Handler::Resident)) start without the
    /// fleet's database settings in their environment (`DATABASE_URL`,
    /// `PREFORK_LISTEN_URL`, `PGPASSWORD`, `PGPASSFILE`, `PGSERVICEFILE`),
    /// so a job's code cannot use the fleet's role; they bring their own.
    /// Default: `false` (programs inherit the fleet's environment).
    pub withhold_credentials: bool,
    /// Connections each [`Handler::Exec`](super::Handler::Exec) or
    /// [`Handler::Resident`](super::Handler::Resident) program may hold at
    /// once (a Django program's: one per thread it runs). They count in the
    /// fleet's [`ConnectionBounds`](crate::prefork::ConnectionBounds) and
    /// its slot check; the programs' backends, found by their
    /// `application_name`, count in the summary's peak and the status
    /// endpoint's `prefork_backends`. Default: 1.
    pub program_connections: usize,
    /// The kinds of jobs the fleet serves (see
    /// [`Enqueue::kind`](super::Enqueue::kind)): it claims only those.
    /// `None`: every kind. Default: `None`.
    pub kinds: Option<Vec<String>>,
}

impl QueueConfig {
    /// What the fleet claims: its queues and kinds.
    pub(crate) fn serving(&self) -> super::store::Serving<'_> {
        super::store::Serving {
            queues: &self.queues,
            kinds: self.kinds.as_deref(),
        }
    }

    /// Whether done jobs are kept as history (see
    /// [`QueueConfig::keep_finished`]).
    pub fn keeps_history(&self) -> bool {
        self.keep_finished != Some(Duration::ZERO)
    }
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            schema: Schema::default(),
            queues: vec!["default".to_owned()],
            batch: 8,
            lease: Duration::from_secs(300),
            timeout: None,
            drain: false,
            poll: Duration::from_secs(1),
            listen: None,
            keep_finished: None,
            rescue_after: Some(Duration::from_secs(15)),
            resident_max_jobs: None,
            resident_boot_timeout: Duration::from_secs(30),
            resident_memory: MemoryLimits::default(),
            withhold_credentials: false,
            program_connections: 1,
            kinds: None,
        }
    }
}
