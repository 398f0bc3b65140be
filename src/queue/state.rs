//! The states a job is in, as the schema spells them (`jobs.state`).
//!
//! A job is `queued` (waiting, or waiting for a retry), `running` (claimed
//! by a worker), then finished: `done`, `failed` (its last attempt failed)
//! or `cancelled`. The first two live in `jobs_live`, the finished ones in
//! `jobs_finished`.

use std::error::Error;
use std::fmt;
use std::str::FromStr;

use postgres::types::{FromSql, Type};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Waiting to run: new, scheduled for later, or waiting for a retry.
    Queued,
    /// Claimed by a worker, which is running it.
    Running,
    /// Finished: an attempt succeeded.
    Done,
    /// Finished: its last attempt failed.
    Failed,
    /// Finished: cancelled before or while it ran.
    Cancelled,
}

impl JobState {
    /// Every state, in the order of a job's life.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name the schema stores: `queued`, `running`, `done`, `failed`,
    /// `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A name that is no [`JobState`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown job state {:?} (queued, running, done, failed, cancelled)",
            self.0
        )
    }
}

impl std::error::Error for UnknownState {}

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(name: &str) -> Result<JobState, UnknownState> {
        JobState::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| UnknownState(name.to_owned()))
    }
}

/// Read from the schema's `text` column.
impl<'a> FromSql<'a> for JobState {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<JobState, Box<dyn Error + Sync + Send>> {
        let name = <&str as FromSql>::from_sql(ty, raw)?;
        Ok(name.parse()?)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("finished".parse::<JobState>().is_err());
        assert_eq!(format!("{:<9}|", JobState::Done), "done     |");
    }
}
