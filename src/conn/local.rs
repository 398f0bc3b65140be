//! Each thread's own connections: opened lazily, lent out one closure at a
//! time, and closed explicitly, never by a thread-local destructor.

use std::cell::RefCell;
use std::sync::Arc;

use postgres::Client;

use super::config::{Canceller, Database};
use super::record::Conn;
use super::registry::{self, Databases};
use crate::error::Error;

struct Local {
    /// The thread's idle connections, at most one per alias.
    conns: Vec<Conn>,
    /// Aliases whose connection is lent out right now.
    lent: Vec<Arc<str>>,
    /// The database list, cached with the generation it came from.
    databases: Option<(u64, Databases)>,
}

impl Drop for Local {
    /// Runs when a thread ends with connections still open, i.e. it was not
    /// wrapped by [`crate::thread::spawn`] or a [`crate::CloseOnExit`] guard.
    /// Dropping a `Client` here would abort the process (its tokio context
    /// is already gone), so the connections are handed to the registry, and
    /// the next `close_all`/`close_old` on any thread closes them.
    fn drop(&mut self) {
        if self.conns.is_empty() {
            return;
        }
        let conns = std::mem::take(&mut self.conns);
        if conns.iter().any(Conn::is_own) {
            log::warn!(
                "a thread ended with {} open database connection(s); they stay open until the \
                 next close_all()/close_old() (wrap threads with fork_safe::thread::spawn)",
                conns.len()
            );
        }
        adopt(conns);
    }
}

/// Hands connections to the registry, which closes them at the next
/// `close_all`/`close_old` on any thread.
fn adopt(conns: impl IntoIterator<Item = Conn>) {
    let orphans = conns
        .into_iter()
        .map(|conn| (conn.id(), Box::new(conn) as registry::Orphan))
        .collect();
    registry::adopt_orphans(orphans);
}

thread_local! {
    static LOCAL: RefCell<Local> = const {
        RefCell::new(Local { conns: Vec::new(), lent: Vec::new(), databases: None })
    };
}

/// The configured database named `alias` (`None`: the first one).
fn database(local: &mut Local, alias: Option<&str>) -> Result<Arc<Database>, Error> {
    let generation = registry::generation();
    if local
        .databases
        .as_ref()
        .is_none_or(|(g, _)| *g != generation)
    {
        let databases = registry::databases().ok_or(Error::NotConfigured)?;
        local.databases = Some((generation, databases));
    }
    let (_, databases) = local.databases.as_ref().ok_or(Error::NotConfigured)?;
    match alias {
        None => databases.first().cloned().ok_or(Error::NotConfigured),
        Some(alias) => databases
            .iter()
            .find(|db| db.alias() == alias)
            .cloned()
            .ok_or_else(|| Error::UnknownAlias(alias.to_owned())),
    }
}

/// Runs `f` with the calling thread's connection to the first configured
/// database (normally `"default"`), opening it if this thread has none yet.
///
/// # Errors
///
/// See [`with_client_for`].
pub fn with_client<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce(&mut Client) -> Result<T, postgres::Error>,
{
    lend(None, |client, _| f(client))
}

/// [`with_client`], with a [`Canceller`] for the statement `f` runs: another
/// thread may cancel it on the server (the queue's statement deadlines do),
/// and the connection goes on.
///
/// # Errors
///
/// See [`with_client_for`].
pub fn with_client_cancellable<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce(&mut Client, Canceller) -> Result<T, postgres::Error>,
{
    lend(None, |client, db| {
        let canceller = db.canceller(client);
        f(client, canceller)
    })
}

/// Runs `f` with the calling thread's connection to the database configured
/// as `alias`, opening it if this thread has none yet.
///
/// The connection is the thread's own: it is never shared with another
/// thread, and it stays open for the thread's next call until a task
/// boundary ([`close_old`]) retires it or the thread closes it
/// ([`close_all`], or the end of a [`crate::thread::spawn`]ed thread).
///
/// If `f` fails with an error that leaves the connection unusable (SQLSTATE
/// class 08, 57P01 admin shutdown, 57P02, 57P03, 57P05 idle-session timeout,
/// or a closed socket), the connection is discarded and the next call
/// reconnects. If `f` fails otherwise or panics, the connection is rolled
/// back at the next [`close_old`].
///
/// # Errors
///
/// - [`Error::NotConfigured`] or [`Error::UnknownAlias`] if there is no such
///   database;
/// - [`Error::Reentrant`] if called from inside another `with_client` for
///   the same alias on this thread;
/// - [`Error::Connect`] if a new connection cannot be opened (for example
///   SQLSTATE 53300 when the server's slots are exhausted);
/// - [`Error::Query`] wrapping the error `f` returned.
pub fn with_client_for<T, F>(alias: &str, f: F) -> Result<T, Error>
where
    F: FnOnce(&mut Client) -> Result<T, postgres::Error>,
{
    lend(Some(alias), |client, _| f(client))
}

fn lend<T, F>(alias: Option<&str>, f: F) -> Result<T, Error>
where
    F: FnOnce(&mut Client, &Database) -> Result<T, postgres::Error>,
{
    let mut lease = checkout(alias)?;
    let conn = lease
        .conn
        .as_mut()
        .expect("a lease holds its connection until dropped");
    let (client, db) = conn.client_and_db();
    let result = f(client, db);
    conn.touch();
    match result {
        Ok(value) => {
            if conn.client().is_closed() {
                conn.broken = true;
            }
            Ok(value)
        }
        Err(source) => {
            let discarded = is_fatal(&source) || conn.client().is_closed();
            conn.broken |= discarded;
            conn.needs_rollback = true;
            let alias = conn.alias().to_owned();
            if discarded {
                // Drop it now (outside any borrow of the thread's slot), so
                // the next call reconnects.
                drop(lease.conn.take());
            }
            Err(Error::Query {
                alias,
                source,
                discarded,
            })
        }
    }
}

/// A connection lent out to a closure. Returns it to the thread's slot when
/// dropped, including while unwinding from a panic in the closure.
struct Lease {
    conn: Option<Conn>,
    alias: Arc<str>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut conn = self.conn.take();
        if std::thread::panicking() {
            if let Some(conn) = conn.as_mut() {
                conn.needs_rollback = true;
            }
        }
        let returned = LOCAL.try_with(|local| {
            let mut local = local.borrow_mut();
            if let Some(i) = local.lent.iter().position(|a| *a == self.alias) {
                local.lent.swap_remove(i);
            }
            match conn.take() {
                Some(c) if !c.broken => local.conns.push(c),
                broken => conn = broken,
            }
        });
        if returned.is_err() {
            // The thread's slot is being destroyed; never drop a client here.
            adopt(conn);
        }
        // A broken connection is closed here, outside the slot's borrow.
    }
}

/// Takes the thread's connection for `alias` out of its slot, opening,
/// expiring or health-checking as needed.
fn checkout(alias: Option<&str>) -> Result<Lease, Error> {
    let (db, existing) = LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let db = database(&mut local, alias)?;
        let alias = db.alias();
        if local.lent.iter().any(|a| **a == *alias) {
            return Err(Error::Reentrant(alias.to_owned()));
        }
        let existing = match local.conns.iter().position(|c| c.alias() == alias) {
            Some(i) => Some(local.conns.swap_remove(i)),
            None => None,
        };
        local.lent.push(db.alias_arc());
        Ok((db, existing))
    })?;
    // From here on the alias is marked as lent: the lease un-marks it on
    // every path, including errors and panics below.
    let mut lease = Lease {
        conn: None,
        alias: db.alias_arc(),
    };
    lease.conn = existing.and_then(revalidate);
    if lease.conn.is_none() {
        let role = registry::role();
        let conn = Conn::open(db.clone(), &role).map_err(|source| Error::Connect {
            alias: db.alias().to_owned(),
            source,
        })?;
        lease.conn = Some(conn);
    }
    Ok(lease)
}

/// Decides whether a connection taken from the slot may be used; `None`
/// means it was discarded and a fresh one is needed.
fn revalidate(mut conn: Conn) -> Option<Conn> {
    if !conn.is_own() {
        // Inherited across a fork that bypassed the guard. Dropping a
        // foreign `Conn` forgets its client without sending anything.
        log::debug!(
            "discarding connection {} inherited from the parent",
            conn.id()
        );
        return None;
    }
    if !conn.reused {
        return Some(conn);
    }
    conn.reused = false;
    if let Some(reason) = conn.expiry() {
        log::debug!("reconnecting {:?}: {reason}", conn.alias());
        return None;
    }
    if let Some(timeout) = conn.db().get_health_checks() {
        if let Err(e) = conn.client().is_valid(timeout) {
            log::info!("reconnecting {:?}: health check failed: {e}", conn.alias());
            conn.broken = true;
            return None;
        }
    }
    Some(conn)
}

/// Whether an error means the connection can no longer be used.
fn is_fatal(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "57P05")
        }
        // No SQLSTATE and not a server error: an I/O failure or a timeout.
        None => e.as_db_error().is_none() && std::error::Error::source(e).is_some(),
    }
}

/// Closes every connection of the calling thread, and any connection left
/// behind by a thread that ended without closing its own.
///
/// Call it before a thread ends (the helpers in [`crate::thread`] and the
/// pool do) and before forking (the fork guard does). Connections inherited
/// from a parent process are let go without a byte sent to the server.
pub fn close_all() {
    let conns = LOCAL.with(|local| std::mem::take(&mut local.borrow_mut().conns));
    drop(conns);
    drop(registry::take_orphans());
}

/// Closes the calling thread's connection to `alias`, if it has one; its
/// other connections stay open.
pub fn close(alias: &str) {
    let conn = LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let i = local.conns.iter().position(|c| c.alias() == alias)?;
        Some(local.conns.swap_remove(i))
    });
    drop(conn);
}

/// Django's `close_old_connections`: run it at every task boundary.
///
/// For each connection of the calling thread it:
/// - closes it if it is broken, past its [`MaxAge`](crate::MaxAge)
///   ([`MaxAge::EndOfTask`](crate::MaxAge::EndOfTask) closes it every time),
///   or idle past its `max_idle`;
/// - rolls it back if a statement failed or a closure panicked while it was
///   lent out, and closes it if the rollback fails;
/// - otherwise marks it for a health check (if enabled) at its next use.
///
/// It also closes connections left behind by threads that ended without
/// closing theirs.
pub fn close_old() {
    // Sort out, under the borrow and without I/O, the connections that need
    // work; the common case (all fine) allocates nothing.
    let retired = LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let mut retired = Vec::new();
        let mut i = 0;
        while i < local.conns.len() {
            let conn = &mut local.conns[i];
            if conn.is_own() && !conn.needs_rollback && conn.expiry().is_none() {
                conn.reused = true;
                i += 1;
            } else {
                retired.push(local.conns.swap_remove(i));
            }
        }
        retired
    });
    for mut conn in retired {
        // Foreign connections (inherited by a fork) are dropped unused, which
        // forgets them; expired ones are closed.
        if !conn.is_own() {
            continue;
        }
        if let Some(reason) = conn.expiry() {
            log::trace!("closing {:?}: {reason}", conn.alias());
            continue;
        }
        conn.needs_rollback = false;
        if let Err(e) = conn.client().batch_execute("ROLLBACK") {
            log::debug!("closing {:?}: rollback failed: {e}", conn.alias());
            continue;
        }
        conn.reused = true;
        LOCAL.with(|local| local.borrow_mut().conns.push(conn));
    }
    drop(registry::take_orphans());
}

/// How many connections the calling thread holds open (lent or idle).
pub fn thread_open_count() -> usize {
    LOCAL.with(|local| {
        let local = local.borrow();
        local.conns.iter().filter(|c| c.is_own()).count() + local.lent.len()
    })
}
