//! The socket behind each connection, so a forked child can let go of it.
//!
//! `postgres::Client` does not expose its socket. We find it by listing the
//! process's sockets (`/proc/self/fd`, by fd and inode) before and after the
//! connect. A candidate must be a new socket (an inode not seen before: each
//! tokio runtime `dup`s the signal driver's socketpair, which is not new)
//! connected to a named peer (a server address, not a socketpair). When
//! exactly one candidate remains, it is ours. When another thread connected
//! at the same moment the answer is ambiguous and we record nothing; the
//! connection is then protected by its owner pid alone.
//!
//! Known sockets go into a fixed table of atomics, each entry tagged with the
//! pid that registered it. The `pthread_atfork` child handler walks the table
//! with async-signal-safe calls only, and points every socket of its parent
//! at `/dev/null` (`dup3`, keeping close-on-exec). The child then holds no
//! reference to the parent's sessions: a write goes nowhere, and when the
//! parent dies the server sees the socket close even while the child lives.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::procfs;

/// More connections than this in one process still work; their sockets are
/// just not pointed at /dev/null in a child.
const SLOTS: usize = 1024;

const EMPTY: u64 = 0;

static TABLE: [AtomicU64; SLOTS] = [const { AtomicU64::new(EMPTY) }; SLOTS];

/// The pid of the process that is forking, written by the atfork prepare
/// handler. The child cannot use `getppid()` instead: if the parent exits
/// before the child's handler runs, the child is already re-parented.
static FORKING_PID: AtomicU32 = AtomicU32::new(0);

/// The sockets open in this process, as (fd, inode) pairs.
pub(crate) fn snapshot() -> Vec<(i32, u64)> {
    procfs::sockets()
}

/// The single new server connection since `before`, if there is exactly one.
pub(crate) fn appeared_since(before: &[(i32, u64)]) -> Option<i32> {
    let mut new = snapshot()
        .into_iter()
        .filter(|(_, inode)| !before.iter().any(|(_, old)| old == inode))
        .filter(|(fd, _)| has_named_peer(*fd));
    match (new.next(), new.next()) {
        (Some((fd, inode)), None) if still_same(fd, inode) => Some(fd),
        _ => None,
    }
}

/// Whether `fd` is connected to an address (TCP, or a Unix socket path or
/// abstract name), as a server connection is; a socketpair's peer has none.
fn has_named_peer(fd: i32) -> bool {
    use nix::sys::socket::{SockaddrLike, SockaddrStorage, getpeername};
    match getpeername::<SockaddrStorage>(fd) {
        Ok(peer) => match peer.as_unix_addr() {
            Some(unix) => !unix.is_unnamed(),
            None => peer.family().is_some(),
        },
        Err(_) => false,
    }
}

fn still_same(fd: i32, inode: u64) -> bool {
    procfs::fd_inode(fd) == Some(inode)
}

fn pack(pid: u32, fd: i32) -> u64 {
    (u64::from(pid) << 32) | u64::from(fd as u32)
}

/// Remembers `fd` as a connection socket of this process; returns the slot
/// to pass to [`unregister`], or `None` if the table is full.
pub(crate) fn register(fd: i32) -> Option<usize> {
    let entry = pack(std::process::id(), fd);
    TABLE.iter().position(|slot| {
        slot.compare_exchange(EMPTY, entry, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

/// Forgets a socket before its connection closes it.
pub(crate) fn unregister(slot: usize) {
    TABLE[slot].store(EMPTY, Ordering::Release);
}

/// Notes the pid about to fork; runs in the atfork prepare handler.
pub(crate) fn before_fork() {
    FORKING_PID.store(std::process::id(), Ordering::Release);
}

/// Points every socket the parent registered at /dev/null, and empties the
/// table. Runs in the atfork child handler: async-signal-safe calls only
/// (`open`, `dup3`, `close`, atomics), no allocation, no locks.
pub(crate) fn neutralise_inherited() {
    let parent = FORKING_PID.load(Ordering::Acquire);
    let mut devnull = -1;
    for slot in &TABLE {
        let entry = slot.swap(EMPTY, Ordering::AcqRel);
        if entry == EMPTY || (entry >> 32) as u32 != parent {
            // Empty, or a stale entry of an older generation whose fd number
            // may since have been reused: leave that fd alone.
            continue;
        }
        let fd = entry as u32 as i32;
        if devnull < 0 {
            // SAFETY: the path is a NUL-terminated literal; open is
            // async-signal-safe.
            devnull = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            if devnull < 0 {
                return;
            }
        }
        // SAFETY: both fds are open in this process; dup3 atomically
        // replaces `fd` and is a plain system call.
        unsafe { libc::dup3(devnull, fd, libc::O_CLOEXEC) };
    }
    if devnull >= 0 {
        // SAFETY: we opened `devnull` above and nothing else refers to it.
        unsafe { libc::close(devnull) };
    }
}
