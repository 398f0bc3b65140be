//! PostgreSQL connections that survive threads and `fork()`.
//!
//! Programs that run many threads and processes against PostgreSQL leak or
//! corrupt connections: a thread that ends never closes its connection, a
//! connection opened before `fork()` is shared by parent and child (and the
//! child's `Drop` ends the parent's session), and workers without a
//! "request finished" moment never recycle anything. `fork_safe` makes the
//! right behaviour structural:
//!
//! - **Lazy, per-thread connections** ([`with_client`]): a thread opens no
//!   connection until its first query, then reuses its own. A `Client` is
//!   never shared between threads.
//! - **Close on exit** ([`thread::spawn`], [`thread::CloseOnExit`], [`ThreadPool`]):
//!   a thread that ends, normally or by panic, closes its connections.
//! - **Recycling at task boundaries** ([`close_old`], run by the pool after
//!   every task): max age, idle limit, health checks, rollback after a
//!   failed or panicked task, as Django's `close_old_connections`.
//! - **A fork guard** ([`fork()`](fork())): forks only a single-threaded
//!   process with no open connection; the child reconnects lazily.
//!
//! # Layers
//!
//! Each layer uses only the layers above it in this table (a test,
//! `tests/layers.rs`, reads the sources and fails on any other import):
//!
//! | layer | modules | what it is | feature |
//! |---|---|---|---|
//! | helpers | `procfs`, [`duration`], `error` | every `/proc` read; the one duration grammar; the core's [`Error`] | |
//! | connection core | `conn` | databases, per-thread connections ([`with_client`]), the process registry, socket neutralising | |
//! | fork guard | `fork` | [`fork()`](fork()): forks only a single-threaded process with nothing open; the atfork handlers | |
//! | threads | `pool` | [`thread`] and [`ThreadPool`]: threads that close their connections when they end | |
//! | supervision | [`prefork`] | the master: N child processes x M worker threads, supervised | `supervisor` |
//! | job queue | [`queue`] | a PostgreSQL job queue, a [`prefork::App`] | `queue` |
//! | launcher | the `prefork` binary | the command line over the queue | `cli` |
//!
//! `cluster` (feature `cluster`) stands aside: throwaway PostgreSQL
//! clusters for tests, benchmarks and the launcher's default database.
//!
//! # Features
//!
//! The core (the first four layers) is always built, and its items are at
//! the crate root; each feature adds a module:
//!
//! - `default-features = false`: the core alone, for a program that
//!   manages its own processes and threads. It depends on postgres, nix,
//!   libc, log, the TLS stack (rustls) and two small channel crates
//!   (crossbeam-channel, oneshot).
//! - `supervisor`: [`prefork`], a master that forks and supervises
//!   children for a [`prefork::App`] of your own, with its status endpoint.
//! - `queue` (implies `supervisor`): [`queue`], the job queue, to enqueue
//!   from a program or run a fleet with Rust handlers.
//! - `cluster`: throwaway clusters, for tests.
//! - `cli` (the default; implies `queue` and `cluster`): the `prefork`
//!   launcher.
//!
//! Linux only: the guard counts threads in `/proc/self/stat` and finds
//! sockets in `/proc/self/fd`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use fork_safe::{Database, MaxAge, ThreadPool};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let cluster = fork_safe::cluster::TempCluster::start()?;
//! # let url = cluster.connection_string();
//! // Once per process, before any thread queries.
//! fork_safe::configure([Database::new("default", &url)?
//!     .max_age(MaxAge::After(Duration::from_secs(600)))
//!     .health_checks(true)])?;
//!
//! let pool = ThreadPool::new(4)?;
//! let tasks: Vec<_> = (0..8)
//!     .map(|i| {
//!         pool.submit(move || {
//!             // The worker's own connection, opened on first use.
//!             fork_safe::with_client(|client| {
//!                 let row = client.query_one("SELECT $1::int * 2", &[&i])?;
//!                 Ok(row.get::<_, i32>(0))
//!             })
//!         })
//!     })
//!     .collect();
//! for (i, task) in tasks.into_iter().enumerate() {
//!     assert_eq!(task.join()??, 2 * i as i32);
//! }
//! pool.shutdown(Duration::from_secs(5))?; // workers close their connections
//! assert_eq!(fork_safe::stats().open, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Fork safety
//!
//! The rules, and what the crate does about each:
//!
//! 1. **Never fork with a connection open.** Parent and child would share
//!    one session; their messages interleave, and whichever closes it ends
//!    it for both. [`fork()`](fork()) closes the calling thread's
//!    connections and refuses while any other connection is open.
//! 2. **Never fork with other threads running.** The child gets copies of
//!    their locks but not the threads; each `postgres::Client` also owns a
//!    tokio runtime that does not survive a fork. [`fork()`](fork())
//!    refuses unless `/proc/self/task` lists only the caller, so shut pools
//!    down and join threads first.
//! 3. **A child never uses or drops a connection it inherited.** Every
//!    connection is stamped with its owner pid and checked on every access;
//!    a foreign one is forgotten without a byte sent and a new one is opened
//!    lazily. Even a raw `fork()` that bypasses the guard is covered: the
//!    `pthread_atfork` child handler ([`install_atfork_handlers`]) points the
//!    inherited sockets at `/dev/null`.
//! 4. **Never let a thread-local destructor drop a `Client`.** It aborts the
//!    process (tokio's context is already gone). Close connections
//!    explicitly before a thread ends: [`thread::spawn`], [`thread::CloseOnExit`]
//!    and the pool do. A thread that ends without doing so has its
//!    connections adopted by the registry, and the next [`close_all`] or
//!    [`close_old`] on any thread closes them.
//! 5. **Connect with an IP address or a Unix socket, or let the crate
//!    resolve the name.** tokio-postgres resolves host names on a helper
//!    thread that lingers for seconds; `fork_safe` resolves them on the
//!    calling thread before connecting.
//!
//! # Errors and broken connections
//!
//! A connect that fails returns [`Error::Connect`] with the server's message
//! and SQLSTATE (for example `53300` when slots run out); nothing panics.
//! A statement error of class 08 or 57P01/57P02/57P03/57P05 discards the
//! connection, and the next access reconnects. With health checks on, a
//! reused connection is validated before its first use in each task and
//! replaced transparently if the server has dropped it.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::missing_errors_doc)]

#[cfg(feature = "cluster")]
pub mod cluster;
mod conn;
pub mod duration;
mod error;
mod fork;
mod pool;
#[cfg(feature = "supervisor")]
pub mod prefork;
mod procfs;
#[cfg(feature = "queue")]
pub mod queue;

// The core's items have one path each: here, at the root. The modules that
// hold them are private; the features' modules are public and re-export
// nothing of each other's.
pub use conn::{
    APPLICATION_NAME_PREFIX, Canceller, Database, MaxAge, Stats, ThreadStats, application_name,
    close, close_all, close_old, is_configured, parse_application_name, stats, thread_open_count,
    with_client, with_client_cancellable, with_client_for,
};
pub use error::Error;
pub use fork::{Fork, ForkError, fork, install_atfork_handlers, ready_to_fork};
pub use pool::{ShutdownTimeout, TaskError, TaskHandle, ThreadPool, ThreadPoolBuilder, thread};
pub use procfs::Pid;

/// Configures the process's databases, replacing any earlier configuration.
///
/// The first database is the one [`with_client`] uses; call it `"default"`.
/// Forked children keep the configuration. It also installs the fork
/// guard's `pthread_atfork` handlers ([`install_atfork_handlers`]), so that
/// every connection opened from now on is let go of in a forked child.
///
/// # Errors
///
/// - [`Error::NotConfigured`] if `databases` is empty;
/// - [`Error::Config`] if two databases share an alias;
/// - [`Error::Busy`] if connections are open anywhere in the process (close
///   them first: a configuration change never strands a live connection).
pub fn configure<I>(databases: I) -> Result<(), Error>
where
    I: IntoIterator<Item = Database>,
{
    install_atfork_handlers();
    conn::registry::configure(databases.into_iter().collect())
}

/// Sets the role in the `application_name` of connections opened from now
/// on: `prefork:<role>:<pid>` (see [`application_name`]). Default: `app`.
///
/// The prefork launcher uses `master`, `child` and `cli`, so every backend
/// in `pg_stat_activity` can be traced to its process.
pub fn set_role(role: &str) {
    conn::registry::set_role(role);
}

/// The role [`set_role`] set (`master`, `child`, ...), `app` by default.
pub fn role() -> String {
    conn::registry::role()
}
