//! Every read of `/proc` the crate makes (proc(5)), in one place.
//!
//! Each reader returns `None` (or nothing) when the file cannot be read or
//! parsed: a process that is gone, or a kernel without the file, is an
//! answer the callers handle, never a panic.

use std::fs;
use std::os::unix::fs::MetadataExt;

/// A process id, the one pid type of the public API (nix's, re-exported so
/// that callers need not depend on nix).
pub use nix::unistd::Pid;

/// One read of a process's `stat` file.
pub(crate) struct Stat(String);

impl Stat {
    /// `/proc/self/stat`.
    pub(crate) fn of_self() -> Option<Stat> {
        fs::read_to_string("/proc/self/stat").ok().map(Stat)
    }

    /// Field `n`, numbered from 1 as in proc(5), for `n >= 3`.
    pub(crate) fn field(&self, n: usize) -> Option<u64> {
        // Field 2, the command name in parentheses, may hold spaces and
        // parentheses itself: the fields after it start past the last ')'.
        let rest = self.0.get(self.0.rfind(')')? + 2..)?;
        rest.split(' ')
            .nth(n.checked_sub(3)?)?
            .trim_end()
            .parse()
            .ok()
    }
}

/// Threads in this process (`num_threads`, field 20 of `stat`): one read,
/// cheaper than listing `/proc/self/task`.
pub(crate) fn thread_count() -> Option<usize> {
    Some(Stat::of_self()?.field(20)? as usize)
}

/// Where this process's argv strings live (`arg_start` and `arg_end`,
/// fields 48 and 49 of `stat`).
#[cfg(feature = "supervisor")]
pub(crate) fn argv_area() -> Option<(usize, usize)> {
    let stat = Stat::of_self()?;
    Some((stat.field(48)? as usize, stat.field(49)? as usize))
}

/// Resident memory of process `pid` in bytes (`statm`, second field).
#[cfg(feature = "supervisor")]
pub(crate) fn resident_bytes(pid: Pid) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page)
}

/// Proportional memory of process `pid` in bytes (`smaps_rollup`'s `Pss`):
/// each page shared with N processes counts 1/N, so the fleet's sum is its
/// real footprint (resident memory counts pages shared with the master
/// once in every child).
#[cfg(feature = "supervisor")]
pub(crate) fn proportional_bytes(pid: Pid) -> Option<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The sockets open in this process, as (fd, inode) pairs.
pub(crate) fn sockets() -> Vec<(i32, u64)> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd: i32 = entry.file_name().to_str()?.parse().ok()?;
        let link = fs::read_link(entry.path()).ok()?;
        let inode = link.to_str()?.strip_prefix("socket:[")?;
        let inode = inode.strip_suffix(']')?.parse().ok()?;
        Some((fd, inode))
    })
    .collect()
}

/// The inode behind this process's descriptor `fd`.
pub(crate) fn fd_inode(fd: i32) -> Option<u64> {
    fs::metadata(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|m| m.ino())
}

/// OOM kills counted in this process's memory cgroup and those below it:
/// `oom_kill` in cgroup v2's `memory.events`, or in cgroup v1's
/// `memory.oom_control`; `None` where neither can be read.
#[cfg(feature = "supervisor")]
pub(crate) fn cgroup_oom_kills() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let oom_kill = |file: String| -> Option<u64> {
        std::fs::read_to_string(file)
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))?
            .trim()
            .parse()
            .ok()
    };
    // Lines are `id:controllers:path`: `0::path` for v2, `n:memory:path`
    // for v1's memory controller.
    cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        match controllers {
            "" => oom_kill(format!("/sys/fs/cgroup{path}/memory.events")),
            c if c.split(',').any(|c| c == "memory") => {
                oom_kill(format!("/sys/fs/cgroup/memory{path}/memory.oom_control"))
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_after_a_command_name_with_spaces_and_parentheses() {
        let stat = Stat("42 (a b) c) S 1 2 3".to_owned());
        assert_eq!(stat.field(4), Some(1));
        assert_eq!(stat.field(6), Some(3));
        assert_eq!(stat.field(7), None);
        assert_eq!(stat.field(2), None);
        assert!(thread_count().unwrap() >= 1);
        let (start, end) = argv_area().unwrap();
        assert!(start < end);
        assert!(resident_bytes(Pid::this()).unwrap() > 0);
        assert_eq!(resident_bytes(Pid::from_raw(i32::MAX)), None);
    }
}
