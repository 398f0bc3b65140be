//! One open connection, stamped with the process and thread that own it.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::Client;

use super::config::Database;
use super::registry;
use super::socket;

/// A `postgres::Client` plus what the registry needs to decide its fate.
///
/// Dropping a `Conn` closes the session (Terminate) only in the process that
/// opened it. In any other process, i.e. in a child after `fork()`, it is
/// forgotten without a byte sent, because the session is the parent's.
pub(crate) struct Conn {
    client: ManuallyDrop<Client>,
    db: Arc<Database>,
    alias: Arc<str>,
    id: u64,
    owner_pid: u32,
    socket_slot: Option<usize>,
    opened: Instant,
    last_used: Instant,
    /// The connection hit an error after which it cannot be trusted.
    pub(crate) broken: bool,
    /// A statement failed or a closure panicked while it was lent out: a
    /// transaction may be open, so roll back before reusing it.
    pub(crate) needs_rollback: bool,
    /// A task boundary has passed since its last use: the next use checks
    /// age, idleness and (if enabled) health first.
    pub(crate) reused: bool,
}

impl Conn {
    /// Opens a connection to `db` for the calling thread.
    pub(crate) fn open(db: Arc<Database>, role: &str) -> Result<Conn, postgres::Error> {
        let before = socket::snapshot();
        let client = db.connect(role)?;
        let socket_slot = socket::appeared_since(&before).and_then(socket::register);
        let alias = db.alias_arc();
        let id = registry::opened(alias.clone());
        let now = Instant::now();
        log::debug!("opened connection {id} to {alias:?}");
        Ok(Conn {
            client: ManuallyDrop::new(client),
            db,
            alias,
            id,
            owner_pid: std::process::id(),
            socket_slot,
            opened: now,
            last_used: now,
            broken: false,
            needs_rollback: false,
            reused: false,
        })
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn alias(&self) -> &str {
        &self.alias
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    pub(crate) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub(crate) fn client_and_db(&mut self) -> (&mut Client, &Database) {
        (&mut self.client, &self.db)
    }

    /// Whether this process opened the connection (false in a forked child).
    pub(crate) fn is_own(&self) -> bool {
        self.owner_pid == std::process::id()
    }

    pub(crate) fn touch(&mut self) {
        self.last_used = Instant::now();
    }

    pub(crate) fn age(&self) -> Duration {
        self.opened.elapsed()
    }

    pub(crate) fn idle(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// Why the connection must be closed at a task boundary, if it must.
    pub(crate) fn expiry(&self) -> Option<&'static str> {
        if self.broken || self.client.is_closed() {
            Some("broken")
        } else if self.db.get_max_age().expired(self.age()) {
            Some("max age reached")
        } else if self
            .db
            .get_max_idle()
            .is_some_and(|limit| self.idle() >= limit)
        {
            Some("idle too long")
        } else {
            None
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.is_own() {
            // SAFETY: `client` is never used again; forgetting it keeps its
            // Drop from sending Terminate on the parent's session.
            let client = unsafe { ManuallyDrop::take(&mut self.client) };
            std::mem::forget(client);
            return;
        }
        if let Some(slot) = self.socket_slot {
            socket::unregister(slot);
        }
        registry::closed(self.id);
        // SAFETY: `client` is taken once, here, and never touched again.
        let client = unsafe { ManuallyDrop::take(&mut self.client) };
        if let Err(e) = client.close() {
            log::debug!("closing connection {} to {:?}: {e}", self.id, self.alias);
        } else {
            log::debug!("closed connection {} to {:?}", self.id, self.alias);
        }
    }
}
