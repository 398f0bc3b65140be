//! Recovery: what a failure (or a stop) left stamped with a claim's owner
//! but not recorded, to be handed back by exactly that stamp, so nothing
//! another worker holds is taken from under it.
//!
//! # Scenarios
//!
//! 1. **A batch's outcome could not be recorded** (the connection broke
//!    while recording): [`Stranded::Batch`], released by its claim's stamp
//!    and its jobs' ids and attempts once the worker reconnects.
//! 2. **A claim committed but its answer never arrived**: the worker does
//!    not know its jobs, only that its stamps may be on some:
//!    [`Stranded::Lost`] releases whatever carries this worker's stamps
//!    and is not in the child ([`Own`]).
//! 3. **A batch never started** (claimed as the leader just as the child
//!    stops, left in the local queue, or handed back by a runner that
//!    could not start it): [`Stranded::Unstarted`], queued again with its
//!    attempt given back.
//! 4. **A child died** (killed, crashed, or stopped past the graceful
//!    timeout): its jobs are handed back by a handover process the master
//!    forks ([`release_lost`]): attempt counted, or, for a child the
//!    master stopped, given back.

use super::QueueConfig;
use super::claims::{Own, process_of};
use super::prefetch::Batch;
use super::store::{self, Finished};

/// What to hand back, each by its own stamp.
pub(super) enum Stranded {
    /// Claims of this worker whose answer never arrived (scenario 2).
    Lost,
    /// A batch whose outcome could not be recorded (scenario 1).
    Batch(Batch),
    /// A batch that never started (scenario 3).
    Unstarted(Batch),
}

impl Stranded {
    /// Finished jobs whose outcomes could not be recorded, one batch per
    /// claim (outcomes arrive a batch at a time, so a claim's jobs are
    /// together).
    pub(super) fn unrecorded(group: Vec<Finished>) -> impl Iterator<Item = Stranded> {
        let mut batches: Vec<Batch> = Vec::new();
        for f in group {
            match batches.last_mut() {
                Some(batch) if batch.owner == f.owner => batch.jobs.push(f.job),
                _ => batches.push(Batch {
                    owner: f.owner,
                    jobs: vec![f.job],
                }),
            }
        }
        batches.into_iter().map(Stranded::Batch)
    }

    /// What to release, given this worker's own stamps.
    pub(super) fn release<'a>(&'a self, own: &'a Own) -> store::Release<'a> {
        match self {
            Stranded::Lost => store::Release::Lost {
                prefix: &own.prefix,
                live: &own.live,
            },
            Stranded::Batch(batch) => store::Release::Jobs {
                owner: &batch.owner,
                jobs: &batch.jobs,
            },
            Stranded::Unstarted(batch) => store::Release::Unstarted {
                owner: &batch.owner,
                jobs: &batch.jobs,
            },
        }
    }
}

/// In a handover process (see `prefork::App::children_lost`): hands back
/// the jobs of children that died: those their workers were running with
/// the attempt counted, those they had not started with it given back;
/// and all those of children the master stopped before they finished
/// with it given back.
pub(super) fn release_lost(config: &QueueConfig, lost: &[crate::prefork::LostChild]) {
    for interrupted in [false, true] {
        let of: Vec<&crate::prefork::LostChild> = lost
            .iter()
            .filter(|l| l.interrupted == interrupted)
            .collect();
        if of.is_empty() {
            continue;
        }
        let pids: Vec<crate::Pid> = of.iter().map(|l| l.pid).collect();
        let running: Vec<i64> = of.iter().flat_map(|l| l.running.iter().copied()).collect();
        let processes: Vec<String> = pids.iter().map(|pid| process_of(*pid)).collect();
        let which = match interrupted {
            false => store::Release::Died {
                processes: &processes,
                running: &running,
            },
            true => store::Release::Interrupted(&processes),
        };
        let list = crate::prefork::list(&pids);
        match crate::with_client(|c| store::release(c, &config.schema, which)) {
            Ok(released) if released.is_empty() => {}
            Ok(released) if interrupted => {
                log::info!("{released} of children stopped before they finished ({list})");
            }
            Ok(released) => log::warn!(
                "{released} of dead children {list} ({} running, the others never started)",
                running.len()
            ),
            Err(e) => log::warn!("releasing the jobs of dead children {list}: {e}"),
        }
    }
}
