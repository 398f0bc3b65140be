//! The connection core: lazy per-thread connections that never cross a
//! thread or a `fork()`.
//!
//! One concept per module, each using only those listed before it:
//!
//! | module | what it is |
//! |---|---|
//! | `spin` | a lock that can be held across `fork()` (the atfork handlers take it) |
//! | `socket` | each connection's socket, so a forked child can point it at `/dev/null` |
//! | `tls` | `sslmode` and `sslrootcert` over rustls, and why TLS sessions never cross a fork |
//! | `config` | how a database is reached and how long its connections live |
//! | `app_name` | the `prefork:<role>:<pid>` application name, built and parsed in one place |
//! | `registry` | process-wide records: the configured databases, the role, every open connection |
//! | `record` | one open connection, stamped with the pid that owns it |
//! | `local` | each thread's own connections, lent out one closure at a time |
//!
//! The registry never names the connection type: it keeps the connections
//! of threads that ended as opaque values whose `Drop` closes them, so the
//! dependencies run one way only (`local` -> `record` -> `registry`).
//! Nothing here forks or knows who forks: the fork guard (`crate::fork`)
//! sits on top and calls into `registry` and `socket` from its atfork
//! handlers.

mod app_name;
mod config;
mod local;
mod record;
pub(crate) mod registry;
pub(crate) mod socket;
mod spin;
mod tls;

pub use app_name::{APPLICATION_NAME_PREFIX, application_name, parse_application_name};
pub use config::{Canceller, Database, MaxAge};
pub use local::{
    close, close_all, close_old, thread_open_count, with_client, with_client_cancellable,
    with_client_for,
};
pub use registry::{Stats, ThreadStats, is_configured, stats};
