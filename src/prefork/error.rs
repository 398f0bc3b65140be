//! Why a fleet could not start or had to stop.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::Pid;
use crate::error::Error;
use crate::fork::ForkError;

/// Why a fleet could not start or had to stop.
#[derive(Debug)]
#[non_exhaustive]
pub enum PreforkError {
    /// An operating-system call failed.
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
    /// The fork guard refused (other threads, or connections held by them).
    Fork(ForkError),
    /// The database could not be asked about its free slots.
    Database(Error),
    /// procs x threads + 1 connections do not fit in the server's free
    /// slots ([`Prefork::strict`](super::Prefork::strict)).
    NotEnoughSlots {
        /// Connections the fleet may open.
        needed: i64,
        /// Free connection slots for ordinary roles.
        free: i64,
    },
    /// Another master holds the pidfile (its lock is taken).
    AlreadyRunning {
        /// The pidfile.
        pidfile: PathBuf,
        /// The pid written in it, if it could be read.
        pid: Option<Pid>,
    },
    /// A child slot died young this many times in a row.
    CrashLimit {
        /// The slot.
        index: usize,
        /// Consecutive young deaths.
        deaths: u32,
    },
}

impl fmt::Display for PreforkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreforkError::Io { context, source } => write!(f, "{context}: {source}"),
            PreforkError::Fork(e) => write!(f, "{e}"),
            PreforkError::Database(e) => write!(f, "{e}"),
            PreforkError::NotEnoughSlots { needed, free } => write!(
                f,
                "the fleet may open {needed} connections (one per worker, each child's own, \
                 one child more while a child is replaced, and the master's) but the server has {free} free \
                 slots (max_connections minus reserved and in use); lower --procs or --threads"
            ),
            PreforkError::AlreadyRunning { pidfile, pid } => {
                write!(f, "already running: {} is held", pidfile.display())?;
                match pid {
                    Some(pid) => write!(f, " by master {pid}"),
                    None => write!(f, " by another master"),
                }
            }
            PreforkError::CrashLimit { index, deaths } => write!(
                f,
                "child {index} died young {deaths} times in a row (crash limit reached)"
            ),
        }
    }
}

impl std::error::Error for PreforkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PreforkError::Io { source, .. } => Some(source),
            PreforkError::Fork(e) => Some(e),
            PreforkError::Database(e) => Some(e),
            _ => None,
        }
    }
}

pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> PreforkError {
    let context = context.into();
    move |source| PreforkError::Io { context, source }
}
