//! The queue's duties in the master, run from its loop
//! ([`App::master_tick`](crate::prefork::App::master_tick)) between forks
//! (their connections are closed before the next one): the heartbeat
//! with the children, rescuing dead masters' jobs, firing schedules,
//! stopping cancelled jobs' programs, sampling backends for the summary,
//! the status endpoint's queue counts; and handing back the jobs of
//! children that died.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::QueueConfig;
use super::metrics::QueueMetrics;
use super::store;
use crate::prefork::{ChildStatus, LostChild};
use crate::{Pid, application_name};

/// What the master observed of its fleet, for a summary.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// The most backends the fleet (master and children) held at once, as
    /// sampled in `pg_stat_activity` every 250 ms.
    pub peak_backends: AtomicU64,
}

/// The queue's duties in the master, and when each is next due.
pub(super) struct Duties {
    config: QueueConfig,
    stats: Arc<FleetStats>,
    last_sample: Mutex<Option<Instant>>,
    last_record: Mutex<Option<Instant>>,
    last_cancel_check: Mutex<Option<Instant>>,
    /// Programs of cancelled jobs sent TERM, by process group: when they
    /// get KILL if still there.
    cancelling: Mutex<HashMap<Pid, Instant>>,
    /// When the master next looks for due schedules.
    next_schedules: Mutex<Option<Instant>>,
    /// The children last recorded with the heartbeat.
    recorded: Mutex<Vec<Pid>>,
}

/// This host's name, as claims and heartbeats carry it.
pub(super) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `host:pid`: how a process's claims are stamped.
pub(super) fn process_of(pid: Pid) -> String {
    format!("{}:{pid}", hostname())
}

impl Duties {
    /// The duties of a fleet working `config`, whose observations go to
    /// `stats`.
    pub(super) fn new(config: QueueConfig, stats: Arc<FleetStats>) -> Duties {
        Duties {
            config,
            stats,
            last_sample: Mutex::default(),
            last_record: Mutex::default(),
            last_cancel_check: Mutex::default(),
            cancelling: Mutex::default(),
            next_schedules: Mutex::default(),
            recorded: Mutex::default(),
        }
    }

    /// [`App::children_lost`](crate::prefork::App::children_lost): hands
    /// back the jobs of children that died (attempt counted) or that the
    /// master stopped before they finished (attempt given back).
    pub(super) fn release_lost(&self, lost: &[LostChild]) {
        for interrupted in [false, true] {
            let pids: Vec<Pid> = lost
                .iter()
                .filter(|l| l.interrupted == interrupted)
                .map(|l| l.pid)
                .collect();
            if pids.is_empty() {
                continue;
            }
            let processes: Vec<String> = pids.iter().map(|pid| process_of(*pid)).collect();
            let which = match interrupted {
                false => store::Release::Processes(&processes),
                true => store::Release::Interrupted(&processes),
            };
            let list = crate::prefork::list(&pids);
            match crate::with_client(|c| store::release(c, &self.config.schema, which)) {
                Ok(released) if released.is_empty() => {}
                Ok(released) if interrupted => {
                    log::info!("{released} of children stopped before they finished ({list})");
                }
                Ok(released) => log::warn!("{released} of dead children {list}"),
                Err(e) => log::warn!("releasing the jobs of dead children {list}: {e}"),
            }
        }
    }

    /// [`App::master_tick`](crate::prefork::App::master_tick): the
    /// master's duties, each at its own pace.
    pub(super) fn tick(&self, children: &[ChildStatus], metrics: &QueueMetrics) {
        let due = |last: &Mutex<Option<Instant>>, every: Duration| {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= every) || children.is_empty();
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        let master = Pid::this();
        let programs: Vec<(i64, Pid)> = children
            .iter()
            .flat_map(|c| &c.programs)
            .filter_map(|p| Some((job_of_label(&p.label)?, p.group)))
            .collect();
        let check = !programs.is_empty() && due(&self.last_cancel_check, Duration::from_secs(1));
        self.stop_cancelled(&programs, check);
        self.fire_schedules();
        if !children.is_empty() && due(&self.last_sample, Duration::from_millis(250)) {
            let mut names: Vec<String> = children
                .iter()
                .map(|c| application_name("child", c.pid))
                .collect();
            names.push(application_name("master", master));
            let sampled = crate::with_client(|c| {
                let row = c.query_typed_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY($1)",
                    &[(&names, postgres::types::Type::TEXT_ARRAY)],
                )?;
                Ok(row.get::<_, i64>(0) as u64)
            });
            if let Ok(n) = sampled {
                self.stats.peak_backends.fetch_max(n, Ordering::Relaxed);
            }
        }
        // The heartbeat, with the children: every second, and at once when
        // a child is new, so that its jobs can be rescued with it.
        let pids: Vec<Pid> = children.iter().map(|c| c.pid).collect();
        let changed = *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) != pids;
        if due(&self.last_record, Duration::from_secs(1)) || changed {
            let rows: Vec<(i32, f64, i64)> = children
                .iter()
                .map(|c| {
                    let since = c
                        .started
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64());
                    (c.pid.as_raw(), since, c.jobs as i64)
                })
                .collect();
            let c = &self.config;
            if let Err(e) = crate::with_client(|client| {
                store::record_children(
                    client,
                    &c.schema,
                    &hostname(),
                    master.as_raw(),
                    &c.queues.join(","),
                    &rows,
                )
            }) {
                log::debug!("recording the children: {e}");
            } else {
                *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) = pids;
            }
            if let Some(after) = c.rescue_after {
                self.rescue(after, master);
            }
        }
        metrics.refresh(&self.config.schema);
    }

    /// In the master: stops the programs of running jobs cancelled with
    /// `prefork jobs cancel` (`programs` are the running programs' jobs and
    /// process groups, from the scoreboard). `check`: look in the database
    /// for newly cancelled ones (once a second, and only while programs
    /// run). A program gets TERM, then KILL after [`CANCEL_GRACE`]; its
    /// worker sees it die, and the attempt is recorded as cancelled (never
    /// retried). `Sql` and `Rust` jobs are not stopped: a cancelled one
    /// finishes its attempt and is recorded as cancelled if it fails.
    fn stop_cancelled(&self, programs: &[(i64, Pid)], check: bool) {
        use nix::sys::signal::{Signal, killpg};
        let mut cancelling = self.cancelling.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        cancelling.retain(|group, kill_at| {
            let running = programs.iter().any(|(_, g)| g == group);
            if running && now >= *kill_at {
                log::warn!("process group {group} outlived its grace: KILL");
                let _ = killpg(*group, Signal::SIGKILL);
                return false;
            }
            running
        });
        if !check {
            return;
        }
        let ids: Vec<i64> = programs.iter().map(|(id, _)| *id).collect();
        let s = self.config.schema.name();
        let cancelled = crate::with_client(|c| {
            let rows = c.query_typed(
                &format!(
                    "SELECT id FROM {s}.jobs_live
                     WHERE id = ANY($1) AND state = 'running' AND cancel_requested"
                ),
                &[(&ids, postgres::types::Type::INT8_ARRAY)],
            )?;
            Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
        });
        let cancelled = match cancelled {
            Ok(ids) => ids,
            Err(e) => {
                log::debug!("looking for cancelled jobs: {e}");
                return;
            }
        };
        for (id, group) in programs {
            if cancelled.contains(id) && !cancelling.contains_key(group) {
                log::info!("job {id} was cancelled: stopping its program (process group {group})");
                let _ = killpg(*group, Signal::SIGTERM);
                cancelling.insert(*group, now + CANCEL_GRACE);
            }
        }
    }

    /// In the master: fires the schedules that are due (see `schedule`),
    /// then sleeps until the next is due, looking again at least every
    /// [`SCHEDULE_LOOK`] for schedules added meanwhile.
    fn fire_schedules(&self) {
        let mut next = self
            .next_schedules
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if next.is_some_and(|at| now < at) {
            return;
        }
        let fired = crate::with_client(|c| super::schedule::fire_due(c, &self.config.schema));
        let wait = match fired {
            Ok(fired) => {
                for (name, job) in &fired.fired {
                    log::info!("schedule {name:?} queued job {job}");
                }
                fired
                    .next_due
                    .map_or(SCHEDULE_LOOK, |d| d.min(SCHEDULE_LOOK))
            }
            Err(e) => {
                log::debug!("firing schedules: {e}");
                SCHEDULE_LOOK
            }
        };
        *next = Some(now + wait);
    }

    /// In the master: hands back the running jobs of masters taken for
    /// dead (see [`store::rescue`] for the rules).
    fn rescue(&self, after: Duration, master: Pid) {
        let c = &self.config;
        match crate::with_client(|client| {
            store::rescue(client, &c.schema, after, &hostname(), master.as_raw())
        }) {
            Ok(rescued) => {
                for r in rescued {
                    if r.released.is_empty() {
                        log::info!("master {} stopped heartbeating; it held no jobs", r.master);
                    } else {
                        log::warn!(
                            "master {} stopped heartbeating for {after:?}: {} of its children",
                            r.master,
                            r.released
                        );
                    }
                }
            }
            Err(e) => log::debug!("looking for dead masters: {e}"),
        }
    }
}

/// How often a master looks for schedules added since it last looked.
const SCHEDULE_LOOK: Duration = Duration::from_secs(5);

/// How long a cancelled job's program has between TERM and KILL.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// The job a unit of work's label names (`job 17`), if it names one.
fn job_of_label(label: &str) -> Option<i64> {
    label.strip_prefix("job ")?.parse().ok()
}
