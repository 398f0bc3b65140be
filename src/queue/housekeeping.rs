//! A child's periodic duties, done by whichever worker finds them due
//! (the idle leader when the child is idle, any worker when it is busy):
//! vacuum the live table if dead rows piled up, delete finished jobs past
//! `keep_finished`. (Lapsed leases are the keeper's: `keeper`.)

use std::sync::Mutex;
use std::time::Instant;

use postgres::Client;

use super::floors::Floors;
use super::{QueueConfig, store};

/// When a child's duties are next due.
pub(super) struct Housekeeping {
    due: Mutex<Due>,
}

struct Due {
    next: Instant,
}

impl Housekeeping {
    /// Duties due at once.
    pub(super) fn new() -> Housekeeping {
        let now = Instant::now();
        Housekeeping {
            due: Mutex::new(Due { next: now }),
        }
    }

    /// Does the duties if they are due (every `poll`) and no other worker
    /// is doing them;
    /// what it saw of the queue, or `None` if nothing was due.
    ///
    /// # Errors
    ///
    /// The first statement that failed.
    pub(super) fn run(
        &self,
        client: &mut Client,
        c: &QueueConfig,
        floors: &Floors,
    ) -> Result<Option<store::Probe>, postgres::Error> {
        {
            let Ok(mut due) = self.due.try_lock() else {
                return Ok(None);
            };
            let now = Instant::now();
            if now < due.next {
                return Ok(None);
            }
            due.next = now + c.poll;
        }
        let probe = store::probe(client, &c.schema, c.serving(), floors)?;
        // Every vacuum scans the whole of each index, so a deep backlog is
        // vacuumed after proportionally more dead rows: a tenth of it.
        let due = VACUUM_AFTER_DEAD_ROWS.max(probe.live_rows / 10);
        if probe.dead_rows >= due && probe.may_vacuum {
            let started = Instant::now();
            store::vacuum(client, &c.schema)?;
            log::debug!(
                "vacuumed the jobs table ({} dead rows) in {:.1?}",
                probe.dead_rows,
                started.elapsed()
            );
        }
        if let Some(keep) = c.keep_finished.filter(|keep| !keep.is_zero()) {
            let n = store::prune(client, &c.schema, &c.queues, keep, PRUNE_BATCH)?;
            if n > 0 {
                log::debug!("deleted {n} finished job(s) older than {keep:?}");
            }
        }
        Ok(Some(probe))
    }
}

/// Most finished jobs a child deletes per `poll` (see
/// [`QueueConfig::keep_finished`]): more than a busy fleet finishes.
const PRUNE_BATCH: i64 = 20_000;

/// Dead rows in the jobs table at which a child vacuums it (see
/// [`store::vacuum`]): about a second of a busy fleet's work.
const VACUUM_AFTER_DEAD_ROWS: i64 = 20_000;
