//! A child's keeper: the queue's duties that are not running jobs, done
//! in the child so that the master's loop never waits on the database.
//!
//! # The duties
//!
//! - **Shared**, done by whoever comes first when due: renewing the
//!   child's lease (`lease`), sweeping for lapsed ones, firing the
//!   schedules that are due (`schedule`). The workers do them on their own
//!   connections as they pass through their loop (a busy worker after each
//!   batch, the idle leader every slice), so a child whose jobs are short
//!   needs no connection more. The keeper thread does one still undone
//!   half a renewal interval after it was due: when every worker is inside
//!   a long job, or stalled, the lease is renewed all the same.
//! - **The keeper's own**: stopping the programs of jobs cancelled with
//!   `prefork jobs cancel` (the child's workers are busy running them),
//!   counting the backends those programs hold (by their
//!   `application_name`) for the fleet's count of its connections, and
//!   reading the queues' counts when the master asks for them (a
//!   scrape of the status endpoint), published on the child's scoreboard.
//!
//! The keeper keeps its connection while it used it in the last
//! [`KEEP_CONNECTION`], and closes it otherwise, so an idle child, or one
//! of short jobs, holds none for it.
//!
//! It starts with the child (`init_child`), having taken the child's lease
//! before any worker claims, and ends after the workers (`end_child`), so
//! the lease holds while they finish at a stop; then it hands back what is
//! still stamped with the child and ends the lease.
//!
//! A duty whose statement failed is due again at its next turn: a lease
//! renewed every third of its length survives two misses.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;

use super::QueueConfig;
use super::floors::{self, Floors};
use super::lease::{self, Holder};
use crate::Pid;
use crate::prefork::ChildInfo;

/// A child's duties, and its keeper thread.
pub(super) struct Keeper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    config: QueueConfig,
    holder: Holder,
    child: ChildInfo,
    floors: Arc<Floors>,
    due: Mutex<Due>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// When each shared duty is next due.
struct Due {
    renewal: Instant,
    sweep: Instant,
    unleased: Instant,
    schedules: Instant,
    rescan: Instant,
    /// Whether the child has held a lease yet (a fresh one after that
    /// means it had lapsed and been swept).
    leased: bool,
}

impl Due {
    /// The first duty due.
    fn next(&self, config: &QueueConfig) -> Instant {
        let due = self
            .renewal
            .min(self.unleased)
            .min(self.schedules)
            .min(self.rescan);
        match config.rescue_after {
            Some(_) => due.min(self.sweep),
            None => due,
        }
    }
}

/// How often the keeper thread looks at its duties.
const TICK: Duration = Duration::from_millis(250);

/// How long the keeper keeps a connection it no longer uses.
const KEEP_CONNECTION: Duration = Duration::from_secs(5);

/// How often the keeper looks for cancelled jobs while programs run.
const CANCEL_CHECK: Duration = Duration::from_secs(1);

/// How long a cancelled job's program has between TERM and KILL.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How often a child looks for schedules added since it last looked.
const SCHEDULE_LOOK: Duration = Duration::from_secs(5);

impl Keeper {
    /// The duties of the child `holder` (described by `child`, claiming
    /// from `floors`), its lease taken, and its keeper thread.
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    pub(super) fn start(
        config: &QueueConfig,
        holder: Holder,
        child: &ChildInfo,
        floors: Arc<Floors>,
    ) -> std::io::Result<Keeper> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            config: config.clone(),
            holder,
            child: child.clone(),
            floors,
            due: Mutex::new(Due {
                renewal: now,
                sweep: now,
                unleased: now,
                schedules: now,
                rescan: now + floors::RESCAN_EVERY,
                leased: false,
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        // The lease is taken before any worker claims, so that no claim
        // of this child is ever held by its own hold alone (scenario 5 of
        // `lease`). If the server cannot be reached, the workers cannot
        // claim either; the keeper takes it at its first turn.
        {
            let mut due = shared.due();
            if let Err(e) = crate::with_client(|c| shared.run(c, &mut due)) {
                log::warn!("child {}: taking its lease: {e}", shared.holder.process());
            }
            crate::close_all();
        }
        let inner = shared.clone();
        let thread = crate::thread::Builder::new()
            .name(format!("keeper-{}", child.index()))
            .spawn(move || inner.keep())?;
        Ok(Keeper {
            shared,
            thread: Some(thread),
        })
    }

    /// On a worker's connection: the shared duties that are due, unless
    /// another thread is doing them.
    ///
    /// # Errors
    ///
    /// The first statement that failed.
    pub(super) fn run_due(&self, client: &mut Client) -> Result<(), postgres::Error> {
        let Ok(mut due) = self.shared.due.try_lock() else {
            return Ok(());
        };
        self.shared.run(client, &mut due)
    }

    /// Stops the keeper once the workers ended: joins its thread, hands
    /// back what is still stamped with the child and ends its lease.
    pub(super) fn end(mut self) {
        *self.shared.stop() = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let s = &self.shared;
        match crate::with_client(|c| lease::end(c, &s.config.schema, &s.holder)) {
            Ok(released) if released.is_empty() => {}
            Ok(released) => log::info!("{released} still held as the child stopped"),
            Err(e) => log::warn!(
                "ending the lease of child {}: {e}; it lapses by itself",
                s.holder.process()
            ),
        }
        crate::close_all();
    }
}

/// The keeper thread's own state.
#[derive(Default)]
struct Own {
    /// When it last used its connection.
    used_at: Option<Instant>,
    /// When it last looked for cancelled jobs and counted the programs'
    /// backends.
    cancel_checked: Option<Instant>,
    /// Programs of cancelled jobs sent TERM, by process group: when they
    /// get KILL if still there.
    cancelling: HashMap<Pid, Instant>,
    /// When it last read the queues' counts.
    counted_at: Option<Instant>,
}

impl Shared {
    fn stop(&self) -> MutexGuard<'_, bool> {
        self.stop.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn due(&self) -> MutexGuard<'_, Due> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keeper thread: every [`TICK`], the shared duties no worker did
    /// in time, and its own.
    fn keep(&self) {
        let slack = lease::renew_every(self.config.rescue_after) / 2;
        let mut own = Own::default();
        loop {
            {
                let mut stop = self.stop();
                if !*stop {
                    stop = self
                        .wake
                        .wait_timeout(stop, TICK)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                if *stop {
                    return;
                }
            }
            let now = Instant::now();
            if let Ok(mut due) = self.due.try_lock() {
                if now >= due.next(&self.config) + slack {
                    own.used_at = Some(now);
                    if let Err(e) = crate::with_client(|c| self.run(c, &mut due)) {
                        log::warn!("child {}: its duties: {e}", self.holder.process());
                        crate::close_all();
                    }
                }
            }
            self.watch_programs(&mut own, now);
            self.count(&mut own, now);
            if own
                .used_at
                .is_none_or(|at| now.saturating_duration_since(at) >= KEEP_CONNECTION)
            {
                crate::close_all();
            }
        }
    }

    /// The shared duties that are due, on `client`. A failed one stays due.
    fn run(&self, client: &mut Client, due: &mut Due) -> Result<(), postgres::Error> {
        let now = Instant::now();
        let length = self.config.rescue_after;
        if now >= due.renewal {
            let fresh = lease::renew(client, &self.config, &self.holder, self.child.jobs())?;
            if fresh && due.leased {
                log::warn!(
                    "child {}: its lease had lapsed and its jobs were handed back; \
                     it holds a new one",
                    self.holder.process()
                );
            }
            due.leased = true;
            due.renewal = now + lease::renew_every(length);
        }
        let unleased = now >= due.unleased;
        if (length.is_some() && now >= due.sweep) || unleased {
            let released = lease::sweep(client, &self.config.schema, unleased)?;
            for child in &released.lapsed {
                log::warn!("the lease of child {child} lapsed");
            }
            if !released.is_empty() {
                log::warn!("{released} whose child's lease lapsed");
            }
            due.sweep = now + lease::sweep_every(length);
            if unleased {
                due.unleased = now + lease::UNLEASED_EVERY;
            }
        }
        if now >= due.schedules {
            let fired = super::schedule::fire_due(client, &self.config.schema)?;
            for (name, job) in &fired.fired {
                log::info!("schedule {name:?} queued job {job}");
            }
            let wait = fired
                .next_due
                .map_or(SCHEDULE_LOOK, |d| d.min(SCHEDULE_LOOK));
            due.schedules = now + wait;
        }
        if now >= due.rescan {
            // Nothing to lower before the first claim sets a floor.
            let started = Instant::now();
            if !self.floors.is_empty() {
                let c = &self.config;
                super::store::rescan(client, &c.schema, c.serving(), &self.floors)?;
            }
            due.rescan = Instant::now() + floors::rescan_after(started.elapsed());
        }
        Ok(())
    }

    /// Stops the programs of running jobs cancelled with `prefork jobs
    /// cancel`: TERM, then KILL after [`CANCEL_GRACE`]; the worker sees
    /// its program die, and the attempt is recorded as cancelled (never
    /// retried). Looks in the database every [`CANCEL_CHECK`], only while
    /// programs run jobs, and counts the programs' backends then. `Sql` and
    /// `Rust` jobs are not stopped: a cancelled one finishes its attempt
    /// and is recorded as cancelled if it fails.
    fn watch_programs(&self, own: &mut Own, now: Instant) {
        use nix::sys::signal::{Signal, killpg};
        let running = self.child.programs();
        let programs: Vec<(i64, Pid)> = running
            .iter()
            .filter_map(|p| Some((job_of_label(&p.label)?, p.group)))
            .collect();
        own.cancelling.retain(|group, kill_at| {
            let running = programs.iter().any(|(_, g)| g == group);
            if running && now >= *kill_at {
                log::warn!("process group {group} outlived its grace: KILL");
                let _ = killpg(*group, Signal::SIGKILL);
                return false;
            }
            running
        });
        if running.is_empty() {
            self.child.publish_program_connections(0);
        }
        // Between jobs, a resident program keeps what it held: so does
        // the count.
        if programs.is_empty() {
            return;
        }
        let due = own
            .cancel_checked
            .is_none_or(|at| now.saturating_duration_since(at) >= CANCEL_CHECK);
        if !due {
            return;
        }
        own.cancel_checked = Some(now);
        own.used_at = Some(now);
        let groups: Vec<Pid> = running.iter().map(|p| p.group).collect();
        match crate::prefork::count_backends("program", &groups) {
            Ok(n) => self.child.publish_program_connections(n),
            Err(e) => log::debug!("counting the programs' backends: {e}"),
        }
        let ids: Vec<i64> = programs.iter().map(|(id, _)| *id).collect();
        let cancelled =
            crate::with_client(|c| super::store::cancelled_among(c, &self.config.schema, &ids));
        let cancelled = match cancelled {
            Ok(ids) => ids,
            Err(e) => {
                log::debug!("looking for cancelled jobs: {e}");
                crate::close_all();
                return;
            }
        };
        for (id, group) in &programs {
            if cancelled.contains(id) && !own.cancelling.contains_key(group) {
                log::info!("job {id} was cancelled: stopping its program (process group {group})");
                let _ = killpg(*group, Signal::SIGTERM);
                own.cancelling.insert(*group, now + CANCEL_GRACE);
            }
        }
    }

    /// Reads the queues' counts and publishes them on the scoreboard when
    /// the master asked for them since the last read (at most every
    /// [`COUNTS_EVERY`](super::metrics::COUNTS_EVERY)), or, while it keeps
    /// asking, every [`KEEP_FRESH_EVERY`](super::metrics::KEEP_FRESH_EVERY).
    fn count(&self, own: &mut Own, now: Instant) {
        use super::metrics::{COUNTS_EVERY, KEEP_FRESH_EVERY, SCRAPED_FOR};
        let Some(asked) = self.child.gauges_asked() else {
            return;
        };
        let age = own
            .counted_at
            .map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        let asked_since = asked < age;
        let due = (asked_since && age >= COUNTS_EVERY)
            || (asked < SCRAPED_FOR && age >= KEEP_FRESH_EVERY);
        if !due {
            return;
        }
        own.counted_at = Some(now);
        own.used_at = Some(now);
        match crate::with_client(|c| {
            super::metrics::read_counts(c, &self.config.schema, &self.config.queues)
        }) {
            Ok(values) => self.child.publish_gauges(&values),
            Err(e) => {
                log::debug!("reading the queues' counts for the status endpoint: {e}");
                crate::close_all();
            }
        }
    }
}

/// The job a unit of work's label names (`job 17`), if it names one.
fn job_of_label(label: &str) -> Option<i64> {
    label.strip_prefix("job ")?.parse().ok()
}
