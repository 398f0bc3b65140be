//! The `application_name` every connection carries: `prefork:<role>:<pid>`.
//!
//! It is how a backend in `pg_stat_activity` is traced to its process: the
//! master ends a dead child's leftover backends by it, and `prefork status`
//! counts the fleet's backends by it. Built by [`application_name`] and read
//! by [`parse_application_name`], nowhere else.

use crate::Pid;

/// What every name built here starts with, for `LIKE 'prefork:%'`.
pub const APPLICATION_NAME_PREFIX: &str = "prefork:";

/// The application name of a connection opened by process `pid` in `role`
/// (`master`, `child`, `cli`, or the role given to
/// [`set_role`](crate::set_role)).
pub fn application_name(role: &str, pid: Pid) -> String {
    format!("{APPLICATION_NAME_PREFIX}{role}:{pid}")
}

/// The role and pid in an application name built by [`application_name`];
/// `None` for any other name.
pub fn parse_application_name(name: &str) -> Option<(&str, Pid)> {
    let rest = name.strip_prefix(APPLICATION_NAME_PREFIX)?;
    let (role, pid) = rest.rsplit_once(':')?;
    let pid: i32 = pid.parse().ok().filter(|p| *p > 0)?;
    (!role.is_empty()).then_some((role, Pid::from_raw(pid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_names_parse_back() {
        let pid = Pid::from_raw(4721);
        let name = application_name("child", pid);
        assert_eq!(name, "prefork:child:4721");
        assert_eq!(parse_application_name(&name), Some(("child", pid)));
        for other in [
            "psql",
            "prefork:child",
            "prefork::1",
            "prefork:x:0",
            "prefork:x:-3",
        ] {
            assert_eq!(parse_application_name(other), None, "{other}");
        }
    }
}
