//! How each database is reached and how long its connections live.
//!
//! The settings follow Django's `DATABASES`: a connection string plus the
//! lifetime rules `CONN_MAX_AGE` ([`MaxAge`]), an idle limit and
//! `CONN_HEALTH_CHECKS`.

use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::app_name::application_name;
use crate::Pid;
use crate::duration::ParseDurationError;
use crate::error::Error;

/// How long a connection may be reused, Django's `CONN_MAX_AGE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxAge {
    /// Keep the connection until it breaks, idles out or the thread ends
    /// (Django's `None`).
    Forever,
    /// Close the connection at the end of every task (Django's `0`): each
    /// task that touches the database opens a fresh connection.
    EndOfTask,
    /// Close the connection at the first task boundary after it is this old.
    After(Duration),
}

impl MaxAge {
    /// Whether a connection opened `age` ago must be closed at a task
    /// boundary.
    pub(crate) fn expired(self, age: Duration) -> bool {
        match self {
            MaxAge::Forever => false,
            MaxAge::EndOfTask => true,
            MaxAge::After(limit) => age >= limit,
        }
    }
}

impl FromStr for MaxAge {
    type Err = ParseDurationError;

    /// Parses `forever`, or a duration in the crate's one grammar
    /// ([`crate::duration`]: `30m`, `600`), `0` meaning
    /// [`MaxAge::EndOfTask`].
    fn from_str(s: &str) -> Result<MaxAge, ParseDurationError> {
        if s.trim() == "forever" {
            return Ok(MaxAge::Forever);
        }
        Ok(match crate::duration::parse(s)? {
            Duration::ZERO => MaxAge::EndOfTask,
            age => MaxAge::After(age),
        })
    }
}

/// How long connecting may take, unless the connection string says
/// (`connect_timeout`).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long data sent may stay unacknowledged before the connection is
/// given up, unless the connection string says (`tcp_user_timeout`).
pub(crate) const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a connection idles before the first keepalive probe, unless
/// the connection string says (`keepalives_idle`; libpq's default is the
/// kernel's two hours).
pub(crate) const KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
/// The time between keepalive probes (`keepalives_interval`).
pub(crate) const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(3);
/// Probes unanswered before an idle connection is given up
/// (`keepalives_retries`).
pub(crate) const KEEPALIVES_RETRIES: u32 = 3;

/// Sets the network limits of [`Database::new`] that `given`, the
/// connection string, does not set itself.
fn network_limits(pg: &mut postgres::Config, given: &str) {
    let unset = |key: &str| !given.contains(key);
    if unset("connect_timeout") {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    if unset("tcp_user_timeout") {
        pg.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if unset("keepalives_idle") {
        pg.keepalives_idle(KEEPALIVES_IDLE);
    }
    if unset("keepalives_interval") {
        pg.keepalives_interval(KEEPALIVES_INTERVAL);
    }
    if unset("keepalives_retries") {
        pg.keepalives_retries(KEEPALIVES_RETRIES);
    }
}

/// One configured database: a connection string plus lifetime rules.
///
/// The defaults are those of r2d2 and psycopg_pool: connections are kept
/// for at most 30 minutes and closed after 10 idle minutes; health checks
/// are off.
#[derive(Clone)]
pub struct Database {
    alias: Arc<str>,
    pg: postgres::Config,
    /// The TLS connector; `None` for `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
    max_age: MaxAge,
    max_idle: Option<Duration>,
    health_checks: bool,
    health_check_timeout: Duration,
    application_name: Option<String>,
}

impl fmt::Debug for Database {
    /// Leaves the connection string out: it may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("alias", &self.alias)
            .field("max_age", &self.max_age)
            .field("max_idle", &self.max_idle)
            .field("health_checks", &self.health_checks)
            .field("application_name", &self.application_name)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// A database reached through `connection_string`, a URL
    /// (`postgresql://user@host/db`) or libpq `key=value` pairs.
    ///
    /// An `application_name` given in the string is kept; otherwise every
    /// connection is named `prefork:<role>:<pid>` (see
    /// [`set_role`](crate::set_role)). `sslmode` (`disable`, `allow`,
    /// `prefer` (the default), `require`, `verify-ca`, `verify-full`) and
    /// `sslrootcert` (a PEM file, or `system`) mean what they mean to libpq;
    /// TLS is rustls.
    ///
    /// Over TCP a dead network is noticed in seconds, not after the
    /// kernel's minutes of retransmissions: unless the string sets its own,
    /// connecting gives up after 10 s (`connect_timeout`), a statement
    /// whose data the server has not acknowledged for 15 s fails
    /// (`tcp_user_timeout`), and an idle connection is probed after 10 s
    /// (`keepalives_idle`), then every 3 s (`keepalives_interval`), and
    /// given up after 3 unanswered probes (`keepalives_retries`). A frozen
    /// server whose kernel still answers is not caught so; the fleet's
    /// leases are what see it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the alias is empty, the string does not parse,
    /// or its TLS settings cannot be used (an unknown `sslmode`, an
    /// unreadable `sslrootcert`).
    pub fn new(alias: &str, connection_string: &str) -> Result<Database, Error> {
        let config_error = |message: String| Error::Config {
            alias: alias.to_owned(),
            message,
        };
        if alias.is_empty() {
            return Err(config_error("the alias is empty".to_owned()));
        }
        let (connection_string, tls) = super::tls::split(connection_string)
            .map_err(|e| config_error(format!("invalid connection string: {e}")))?;
        let mut pg = postgres::Config::from_str(&connection_string).map_err(|e| {
            config_error(format!("invalid connection string: {}", parse_detail(&e)))
        })?;
        network_limits(&mut pg, &connection_string);
        // libpq ignores sslmode on Unix sockets, where PostgreSQL never
        // speaks TLS; asking would cost every connect a round trip.
        let unix_only =
            !pg.get_hosts().is_empty() && pg.get_hosts().iter().all(|h| !matches!(h, Host::Tcp(_)));
        let tls = if unix_only {
            pg.ssl_mode(postgres::config::SslMode::Disable);
            None
        } else {
            pg.ssl_mode(tls.mode.driver());
            super::tls::connector(&tls).map_err(config_error)?
        };
        let application_name = pg.get_application_name().map(str::to_owned);
        Ok(Database {
            alias: Arc::from(alias),
            pg,
            tls,
            max_age: MaxAge::After(Duration::from_secs(30 * 60)),
            max_idle: Some(Duration::from_secs(10 * 60)),
            health_checks: false,
            health_check_timeout: Duration::from_secs(5),
            application_name,
        })
    }

    /// How long a connection may be reused. Default: 30 minutes.
    pub fn max_age(mut self, max_age: MaxAge) -> Database {
        self.max_age = max_age;
        self
    }

    /// Close a connection left unused this long; `None` keeps idle
    /// connections. Default: 10 minutes.
    ///
    /// # Panics
    ///
    /// If the duration is zero.
    pub fn max_idle(mut self, max_idle: Option<Duration>) -> Database {
        assert!(
            max_idle != Some(Duration::ZERO),
            "max_idle must be non-zero"
        );
        self.max_idle = max_idle;
        self
    }

    /// Validate a reused connection (`Client::is_valid`) before its first
    /// use in each task, and reconnect transparently if it is dead.
    /// Default: off.
    pub fn health_checks(mut self, on: bool) -> Database {
        self.health_checks = on;
        self
    }

    /// How long a health check may wait for the server. Default: 5 seconds.
    ///
    /// # Panics
    ///
    /// If the duration is zero.
    pub fn health_check_timeout(mut self, timeout: Duration) -> Database {
        assert!(!timeout.is_zero(), "health_check_timeout must be non-zero");
        self.health_check_timeout = timeout;
        self
    }

    /// A fixed `application_name` instead of `prefork:<role>:<pid>`.
    pub fn application_name(mut self, name: &str) -> Database {
        self.application_name = Some(name.to_owned());
        self
    }

    /// The alias this database is configured under.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    pub(crate) fn alias_arc(&self) -> Arc<str> {
        self.alias.clone()
    }

    /// The lifetime rule of its connections.
    pub fn get_max_age(&self) -> MaxAge {
        self.max_age
    }

    /// The idle limit of its connections.
    pub fn get_max_idle(&self) -> Option<Duration> {
        self.max_idle
    }

    pub(crate) fn get_health_checks(&self) -> Option<Duration> {
        self.health_checks.then_some(self.health_check_timeout)
    }

    /// Opens a connection named for `role` and the calling process.
    pub(crate) fn connect(&self, role: &str) -> Result<postgres::Client, postgres::Error> {
        let mut pg = self.pg.clone();
        match &self.application_name {
            Some(name) => pg.application_name(name),
            None => pg.application_name(&application_name(role, Pid::this())),
        };
        resolve_hosts(&mut pg);
        pg.notice_callback(|notice| {
            log::debug!("server notice: {}: {}", notice.severity(), notice.message())
        });
        match &self.tls {
            Some(tls) => pg.connect(tls.clone()),
            None => pg.connect(postgres::NoTls),
        }
    }

    /// What cancels the statement running on `client`, a connection to
    /// this database.
    pub(crate) fn canceller(&self, client: &postgres::Client) -> Canceller {
        Canceller {
            token: client.cancel_token(),
            tls: self.tls.clone(),
        }
    }
}

/// What is wrong with a connection string: the driver's own error says
/// only "invalid connection string", and keeps the detail (the option, the
/// unexpected end) as its source.
fn parse_detail(e: &postgres::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(detail) => detail.to_string(),
        None => e.to_string(),
    }
}

/// What cancels the statement running on one connection, from another
/// thread: the connection's cancel key, and the TLS settings a cancel
/// request must be sent with. Given by [`with_client_cancellable`](crate::with_client_cancellable).
#[derive(Clone)]
pub struct Canceller {
    token: postgres::CancelToken,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Canceller {
    /// Asks the server to cancel the statement running on the connection,
    /// as `pg_cancel_backend` would: it fails with SQLSTATE 57014 and the
    /// session goes on.
    ///
    /// # Errors
    ///
    /// The cancel request could not be delivered.
    pub fn cancel(&self) -> Result<(), postgres::Error> {
        match &self.tls {
            Some(tls) => self.token.cancel_query(tls.clone()),
            None => self.token.cancel_query(postgres::NoTls),
        }
    }
}

/// Resolves TCP host names to addresses on the calling thread.
///
/// tokio-postgres resolves names on its runtime's blocking pool, and that
/// thread lingers for ~10 s after the connect: long enough to make the
/// process look multi-threaded to the fork guard. Resolving here keeps each
/// connection thread-free. Nothing changes when the string already has
/// `hostaddr`, mixes in Unix sockets, or a name does not resolve (the driver
/// then reports the failure itself).
fn resolve_hosts(pg: &mut postgres::Config) {
    if !pg.get_hostaddrs().is_empty() {
        return;
    }
    let ports = pg.get_ports().to_vec();
    let mut addrs = Vec::new();
    for (i, host) in pg.get_hosts().iter().enumerate() {
        let Host::Tcp(name) = host else { return };
        if name.parse::<IpAddr>().is_ok() {
            return;
        }
        let port = match ports.as_slice() {
            [] => 5432,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(5432),
        };
        match (name.as_str(), port).to_socket_addrs() {
            Ok(mut found) => match found.next() {
                Some(addr) => addrs.push(addr.ip()),
                None => return,
            },
            Err(_) => return,
        }
    }
    for addr in addrs {
        pg.hostaddr(addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_network_is_noticed_in_seconds_unless_the_string_says() {
        let db = Database::new("a", "host=db.example user=u").unwrap();
        assert_eq!(db.pg.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(db.pg.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(db.pg.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(db.pg.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(db.pg.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
        let own = Database::new(
            "a",
            "postgresql://u@db.example/app?connect_timeout=3&keepalives_idle=60",
        )
        .unwrap();
        assert_eq!(own.pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(own.pg.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(own.pg.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
    }

    #[test]
    fn max_age_parses_django_style() {
        assert_eq!("forever".parse(), Ok(MaxAge::Forever));
        assert_eq!("0".parse(), Ok(MaxAge::EndOfTask));
        assert_eq!("60".parse(), Ok(MaxAge::After(Duration::from_secs(60))));
        assert_eq!("30m".parse(), Ok(MaxAge::After(Duration::from_secs(1800))));
        assert!("soon".parse::<MaxAge>().is_err());
    }

    #[test]
    fn bad_connection_strings_are_config_errors() {
        let err = Database::new("default", "host=/tmp port=notaport").unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
        assert!(Database::new("", "host=/tmp").is_err());
    }

    #[test]
    fn unix_sockets_never_ask_for_tls() {
        for url in ["host=/tmp", "host=/tmp sslmode=require"] {
            let db = Database::new("default", url).unwrap();
            assert!(db.tls.is_none(), "{url}");
            assert_eq!(db.pg.get_ssl_mode(), postgres::config::SslMode::Disable);
        }
        let tcp = Database::new("default", "host=db.example sslmode=require").unwrap();
        assert!(tcp.tls.is_some());
        assert_eq!(tcp.pg.get_ssl_mode(), postgres::config::SslMode::Require);
    }

    #[test]
    fn localhost_is_resolved_before_connecting() {
        let mut pg: postgres::Config = "host=localhost port=5432".parse().unwrap();
        resolve_hosts(&mut pg);
        assert_eq!(pg.get_hostaddrs().len(), 1);
        let mut unix: postgres::Config = "host=/tmp".parse().unwrap();
        resolve_hosts(&mut unix);
        assert!(unix.get_hostaddrs().is_empty());
    }
}
