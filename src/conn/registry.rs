//! Process-wide bookkeeping: the configured databases, the process role, and
//! a record of every open connection.
//!
//! Connections themselves live with the thread that opened them (see
//! `local`); this module only knows that they exist, so the fork guard and
//! [`stats`] can count them. Every record belongs to the pid that made it:
//! the first access in a forked child finds a stale pid and starts the child
//! clean, without ever touching the parent's clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::ThreadId;

use super::config::Database;
use super::spin::{SpinGuard, SpinLock};
use crate::Pid;
use crate::error::Error;

/// The configured databases, "default" (or the first one) first.
pub(crate) type Databases = Arc<[Arc<Database>]>;

/// A connection whose thread ended without closing it, held without naming
/// its type: dropping it closes it (or, in a forked child, forgets it).
pub(crate) type Orphan = Box<dyn Send>;

struct State {
    /// The process these records describe.
    pid: u32,
    role: Option<String>,
    databases: Option<Databases>,
    records: Vec<Record>,
    /// Connections whose thread ended without closing them; closed by the
    /// next `close_all`/`close_old` on any thread (never by a thread-local
    /// destructor, which would abort the process).
    orphans: Vec<Orphan>,
    next_id: u64,
}

struct Record {
    id: u64,
    alias: Arc<str>,
    thread: ThreadId,
    thread_name: Option<Arc<str>>,
    orphaned: bool,
}

static STATE: SpinLock<State> = SpinLock::new(State {
    pid: 0,
    role: None,
    databases: None,
    records: Vec::new(),
    orphans: Vec::new(),
    next_id: 0,
});

/// How many orphans wait in the state: lets `take_orphans` (run after every
/// pool task) skip the lock in the common case of none.
static ORPHANS: AtomicUsize = AtomicUsize::new(0);

/// Bumped by every `configure`, so threads can cache the database list and
/// notice a change with one relaxed load.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Locks the state, first discarding records inherited from a parent.
fn state() -> SpinGuard<'static, State> {
    let mut state = STATE.lock();
    let pid = std::process::id();
    if state.pid != pid {
        // The records and orphans are the parent's. Its clients must be
        // neither used nor dropped here (Drop would send Terminate on the
        // parent's session), so the orphans are forgotten outright.
        state.pid = pid;
        state.records.clear();
        std::mem::forget(std::mem::take(&mut state.orphans));
        ORPHANS.store(0, Ordering::Release);
    }
    state
}

/// Installs the process's databases. See [`crate::configure`].
pub(crate) fn configure(databases: Vec<Database>) -> Result<(), Error> {
    if databases.is_empty() {
        return Err(Error::NotConfigured);
    }
    for (i, db) in databases.iter().enumerate() {
        if databases[..i].iter().any(|d| d.alias() == db.alias()) {
            return Err(Error::Config {
                alias: db.alias().to_owned(),
                message: "the alias is configured twice".to_owned(),
            });
        }
    }
    let databases: Databases = databases.into_iter().map(Arc::new).collect();
    let mut state = state();
    if !state.records.is_empty() {
        return Err(Error::Busy {
            open: state.records.len(),
        });
    }
    state.databases = Some(databases);
    GENERATION.fetch_add(1, Ordering::Release);
    Ok(())
}

/// The configuration generation; changes whenever `configure` succeeds.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

pub(crate) fn databases() -> Option<Databases> {
    state().databases.clone()
}

/// Whether [`configure`](crate::configure) has given this process its
/// databases.
pub fn is_configured() -> bool {
    state().databases.is_some()
}

pub(crate) fn set_role(role: &str) {
    state().role = Some(role.to_owned());
}

pub(crate) fn role() -> String {
    state().role.clone().unwrap_or_else(|| "app".to_owned())
}

/// Records a new connection of the calling thread; returns its id.
pub(crate) fn opened(alias: Arc<str>) -> u64 {
    let thread = std::thread::current();
    let thread_name = thread.name().map(Arc::from);
    let mut state = state();
    state.next_id += 1;
    let id = state.next_id;
    state.records.push(Record {
        id,
        alias,
        thread: thread.id(),
        thread_name,
        orphaned: false,
    });
    id
}

/// Forgets the record of a connection that has been closed.
pub(crate) fn closed(id: u64) {
    let mut state = state();
    if let Some(i) = state.records.iter().position(|r| r.id == id) {
        state.records.swap_remove(i);
    }
}

/// Adopts the connections, given with their ids, of a thread that is
/// ending without closing them.
pub(crate) fn adopt_orphans(conns: Vec<(u64, Orphan)>) {
    let mut state = state();
    for (id, conn) in conns {
        if let Some(record) = state.records.iter_mut().find(|r| r.id == id) {
            record.orphaned = true;
        }
        state.orphans.push(conn);
    }
    ORPHANS.store(state.orphans.len(), Ordering::Release);
}

/// Takes the orphaned connections, for the caller to close outside the lock.
pub(crate) fn take_orphans() -> Vec<Orphan> {
    // A stale zero (an orphan adopted a moment ago) only delays its closing
    // to the next call.
    if ORPHANS.load(Ordering::Acquire) == 0 {
        return Vec::new();
    }
    let mut state = state();
    ORPHANS.store(0, Ordering::Release);
    std::mem::take(&mut state.orphans)
}

/// How many connections are open in this process, on any thread.
pub(crate) fn open_count() -> usize {
    state().records.len()
}

/// Held by the `pthread_atfork` prepare handler so that no thread is inside
/// the state at the moment of a fork.
pub(crate) fn lock_for_fork() {
    STATE.lock_raw();
}

/// Releases [`lock_for_fork`] in the parent or the child. Async-signal-safe.
///
/// # Safety
///
/// Only after [`lock_for_fork`], from the atfork parent or child handler.
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: the prepare handler took the lock in this thread (the child's
    // only thread is the copy of the forking thread).
    unsafe { STATE.unlock_raw() }
}

/// Open connections in this process, as seen by the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// The process the figures describe.
    pub pid: Pid,
    /// Every open connection, on any thread.
    pub open: usize,
    /// Open connections per alias, in configuration order; aliases with none
    /// are listed with 0.
    pub by_alias: Vec<(String, usize)>,
    /// Open connections per thread that holds any.
    pub by_thread: Vec<ThreadStats>,
    /// Connections whose thread ended without closing them, waiting for the
    /// next `close_all`/`close_old` on any thread.
    pub orphaned: usize,
}

/// One thread's share of [`Stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadStats {
    /// The thread's id.
    pub id: ThreadId,
    /// The thread's name, if it has one.
    pub name: Option<String>,
    /// Connections the thread holds open.
    pub open: usize,
}

/// A snapshot of the connections open in this process.
pub fn stats() -> Stats {
    let state = state();
    let mut by_alias: Vec<(String, usize)> = state
        .databases
        .iter()
        .flat_map(|dbs| dbs.iter())
        .map(|db| (db.alias().to_owned(), 0))
        .collect();
    let mut by_thread: Vec<ThreadStats> = Vec::new();
    let mut orphaned = 0;
    for record in &state.records {
        match by_alias.iter_mut().find(|(a, _)| **a == *record.alias) {
            Some((_, n)) => *n += 1,
            None => by_alias.push((record.alias.to_string(), 1)),
        }
        if record.orphaned {
            orphaned += 1;
            continue;
        }
        match by_thread.iter_mut().find(|t| t.id == record.thread) {
            Some(t) => t.open += 1,
            None => by_thread.push(ThreadStats {
                id: record.thread,
                name: record.thread_name.as_deref().map(str::to_owned),
                open: 1,
            }),
        }
    }
    Stats {
        pid: Pid::from_raw(state.pid as i32),
        open: state.records.len(),
        by_alias,
        by_thread,
        orphaned,
    }
}
