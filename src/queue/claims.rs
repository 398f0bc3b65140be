//! A child's claim bookkeeping: the owner stamp of every claim it makes,
//! and how many jobs of each it still holds.
//!
//! Every claim is stamped `host:pid/worker.seq` (the child's process, the
//! claiming worker, a sequence number), and the server keeps the stamp on
//! each job it claimed. A worker recovering from a failure hands back what
//! carries its stamps but is not in the child (a claim whose answer was
//! lost): so the child counts, per stamp, the jobs still waiting in its
//! local queue or in a worker's hands, and such a recovery spares those.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::prefork::Worker;

/// This host's name, as claims and leases carry it.
pub(super) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `host:pid`: how a process's claims are stamped (this host's).
pub(super) fn process_of(pid: crate::Pid) -> String {
    process_on(&hostname(), pid.as_raw())
}

/// `host:pid`, for process `pid` on `host`: the one place the stamp's
/// process part is written.
pub(super) fn process_on(host: &str, pid: i32) -> String {
    format!("{host}:{pid}")
}

/// The claims of one child.
pub(super) struct Claims {
    /// `host:pid`; claims are stamped `host:pid/worker.seq`.
    process: String,
    /// Claims so far, for their stamps.
    seq: AtomicU64,
    /// Claims with jobs still in the child, by stamp: how many.
    live: Mutex<HashMap<Arc<str>, usize>>,
}

/// A worker's own stamps, for a recovery: its stamp prefix,
/// `host:pid/worker.`, and its claims the child still holds jobs of (which
/// the recovery must not hand back).
pub(super) struct Own {
    pub(super) prefix: String,
    pub(super) live: Vec<String>,
}

impl Claims {
    /// The claims of the child `process` (`host:pid`).
    pub(super) fn new(process: String) -> Claims {
        Claims {
            process,
            seq: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> MutexGuard<'_, HashMap<Arc<str>, usize>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh stamp for a claim by `worker`: `host:pid/worker.seq`.
    pub(super) fn next_owner(&self, worker: &Worker) -> Arc<str> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}/{}.{seq}", self.process, worker.index()))
    }

    /// `count` jobs claimed by `owner` are now in the child.
    pub(super) fn hold(&self, owner: &Arc<str>, count: usize) {
        *self.live().entry(owner.clone()).or_default() += count;
    }

    /// `count` jobs claimed by `owner` left the child's hands (recorded,
    /// failed to record, or handed back).
    pub(super) fn let_go(&self, owner: &Arc<str>, count: usize) {
        let mut live = self.live();
        if let Some(held) = live.get_mut(owner) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                live.remove(owner);
            }
        }
    }

    /// Whether the child holds jobs of any claim.
    pub(super) fn holds_any(&self) -> bool {
        !self.live().is_empty()
    }

    /// `worker`'s stamp prefix and its claims still live in the child.
    pub(super) fn own(&self, worker: &Worker) -> Own {
        let prefix = format!("{}/{}.", self.process, worker.index());
        let live = self
            .live()
            .keys()
            .filter(|owner| owner.starts_with(&prefix))
            .map(|owner| owner.to_string())
            .collect();
        Own { prefix, live }
    }
}
