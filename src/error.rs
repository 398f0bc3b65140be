//! The crate's error type.

use std::error;
use std::fmt;

use postgres::error::SqlState;

/// Errors returned by the connection registry, the thread helpers and the
/// fork guard.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No database has been configured in this process; call
    /// [`configure`](crate::configure) first.
    NotConfigured,
    /// The alias names no configured database.
    UnknownAlias(String),
    /// A database's settings are invalid (for example an unparsable
    /// connection string, or a duplicate alias).
    Config {
        /// The alias of the offending database.
        alias: String,
        /// What is wrong with it.
        message: String,
    },
    /// [`configure`](crate::configure) was called while connections were
    /// still open somewhere in the process.
    Busy {
        /// How many connections were open.
        open: usize,
    },
    /// The calling thread is already inside
    /// [`with_client`](crate::with_client) for this alias; a thread has one
    /// connection per alias and cannot lend it out twice.
    Reentrant(String),
    /// Opening a connection failed. [`Error::code`] carries the SQLSTATE the
    /// server sent, for example `53300` when its connection slots ran out.
    Connect {
        /// The alias being connected.
        alias: String,
        /// The driver's error.
        source: postgres::Error,
    },
    /// A statement failed. If the error meant the connection was unusable
    /// (SQLSTATE class 08, 57P01, 57P02, 57P03, 57P05, or a closed socket)
    /// the connection has been discarded and the next access reconnects.
    Query {
        /// The alias the statement ran on.
        alias: String,
        /// The driver's error.
        source: postgres::Error,
        /// Whether the connection was discarded because of it.
        discarded: bool,
    },
}

impl Error {
    /// The SQLSTATE the server attached to this error, if any.
    pub fn code(&self) -> Option<&SqlState> {
        self.postgres().and_then(postgres::Error::code)
    }

    /// The underlying driver error, if this error wraps one.
    pub fn postgres(&self) -> Option<&postgres::Error> {
        match self {
            Error::Connect { source, .. } | Error::Query { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Formats a driver error as "SEVERITY: message (SQLSTATE xxxxx)" when the
/// server sent one, otherwise as the driver's own text plus its cause.
pub(crate) struct DisplayPg<'a>(pub(crate) &'a postgres::Error);

impl fmt::Display for DisplayPg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(db) = self.0.as_db_error() {
            return write!(
                f,
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
        }
        write!(f, "{}", self.0)?;
        if let Some(cause) = error::Error::source(self.0) {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotConfigured => f.write_str("no database is configured in this process"),
            Error::UnknownAlias(alias) => write!(f, "no database is configured as {alias:?}"),
            Error::Config { alias, message } => write!(f, "database {alias:?}: {message}"),
            Error::Busy { open } => write!(
                f,
                "cannot reconfigure databases while {open} connection(s) are open"
            ),
            Error::Reentrant(alias) => write!(
                f,
                "the connection {alias:?} of this thread is already in use further up the stack"
            ),
            Error::Connect { alias, source } => {
                write!(f, "connecting to {alias:?} failed: {}", DisplayPg(source))
            }
            Error::Query {
                alias,
                source,
                discarded,
            } => {
                write!(f, "query on {alias:?} failed: {}", DisplayPg(source))?;
                if *discarded {
                    f.write_str(" (connection discarded; the next use reconnects)")?;
                }
                Ok(())
            }
        }
    }
}

impl error::Error for Error {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self.postgres() {
            Some(e) => Some(e),
            None => None,
        }
    }
}
