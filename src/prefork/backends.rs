//! The fleet's database duties outside its workers: checking, before the
//! master starts, that the fleet fits in the server's free connection
//! slots (on the master's own connection, closed again at once: it forks
//! next, and the fork guard refuses with a connection open), and ending
//! the backends that children which died abruptly left behind (in a
//! handover process: see `handover`) or, for a worker, those of a
//! resident program it killed.

use postgres::types::Type;

use super::error::PreforkError;
use super::settings::Settings;
use crate::{Pid, application_name};

/// Warns (or with `strict`, refuses) when the fleet's connections cannot
/// fit in the server's free slots.
pub(super) fn check_slots(settings: &Settings) -> Result<(), PreforkError> {
    let free = crate::with_client(|c| {
        let row = c.query_typed_one(
            "SELECT current_setting('max_connections')::int8 \
                  - current_setting('superuser_reserved_connections')::int8 \
                  - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') \
                  + 1",
            &[],
        )?;
        Ok(row.get::<_, i64>(0))
    });
    crate::close_all();
    let free = free.map_err(PreforkError::Database)?;
    let needed = settings.connection_bounds().replacing as i64;
    if needed > free {
        if settings.strict {
            return Err(PreforkError::NotEnoughSlots { needed, free });
        }
        log::warn!("{}", PreforkError::NotEnoughSlots { needed, free });
    }
    Ok(())
}

/// Counts the backends of processes `pids` of `role` (`program`), found
/// by their `application_name` ([`application_name`]): what a child's
/// programs hold, for the fleet's count of its backends.
#[cfg(feature = "queue")]
pub(crate) fn count_backends(role: &str, pids: &[Pid]) -> Result<u32, crate::Error> {
    let names: Vec<String> = pids.iter().map(|p| application_name(role, *p)).collect();
    crate::with_client(|c| {
        let row = c.query_typed_one(
            "SELECT count(*)::int4 FROM pg_stat_activity WHERE application_name = ANY($1)",
            &[(&names, Type::TEXT_ARRAY)],
        )?;
        Ok(row.get::<_, i32>(0).unsigned_abs())
    })
}

/// Ends the backends that processes `pids` of `role` (`child`, `program`)
/// left, found by their `application_name` ([`application_name`]): what
/// a dead child, or a resident program that was killed, leaves behind.
/// Returns how many it ended.
pub(crate) fn end_backends(role: &str, pids: &[Pid]) -> Result<usize, crate::Error> {
    let names: Vec<String> = pids.iter().map(|p| application_name(role, *p)).collect();
    crate::with_client(|c| {
        let rows = c.query_typed(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = ANY($1) AND pid <> pg_backend_pid()",
            &[(&names, Type::TEXT_ARRAY)],
        )?;
        Ok(rows.len())
    })
}
