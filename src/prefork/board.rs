//! The scoreboard: a page of shared memory per child, written by the child's
//! workers and read by the master (uWSGI's design).
//!
//! The master maps it before forking, so both processes see the same
//! physical memory. It holds only atomics, so an all-zero page is a valid,
//! empty board, and neither side ever blocks the other: a stuck worker
//! cannot stop the master from seeing that it is stuck.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// Most threads a child may run (`--threads`).
pub const MAX_THREADS: usize = 1024;
const LABEL: usize = 64;

#[repr(C)]
pub(crate) struct Board {
    /// Tasks finished by all workers of the child.
    pub(crate) tasks: AtomicU64,
    /// Connections open in the child, refreshed by its main thread.
    pub(crate) open_connections: AtomicU32,
    workers: [Slot; MAX_THREADS],
}

#[repr(C)]
struct Slot {
    /// CLOCK_MONOTONIC nanoseconds when the current task began; 0 when idle.
    started: AtomicU64,
    /// Odd while the label is being written (a sequence lock).
    seq: AtomicU32,
    label: [AtomicU8; LABEL],
}

/// A worker that has been inside one task for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busy {
    pub(crate) worker: usize,
    pub(crate) nanos: u64,
    pub(crate) label: String,
}

/// Nanoseconds on CLOCK_MONOTONIC, which is the same clock in every process.
pub(crate) fn monotonic_nanos() -> u64 {
    // SAFETY: all-zero bytes are a valid timespec, which clock_gettime fills.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is writable; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Board {
    pub(crate) fn begin(&self, worker: usize, label: &str) {
        let Some(slot) = self.workers.get(worker) else {
            return;
        };
        slot.seq.fetch_add(1, Ordering::AcqRel);
        let bytes = label.as_bytes();
        for (i, cell) in slot.label.iter().enumerate() {
            cell.store(bytes.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
        slot.seq.fetch_add(1, Ordering::Release);
        slot.started
            .store(monotonic_nanos().max(1), Ordering::Release);
    }

    pub(crate) fn end(&self, worker: usize) {
        if let Some(slot) = self.workers.get(worker) {
            slot.started.store(0, Ordering::Release);
        }
        self.tasks.fetch_add(1, Ordering::Relaxed);
    }

    /// The worker that has been in its current task longest, if any.
    pub(crate) fn longest_busy(&self, threads: usize) -> Option<Busy> {
        let now = monotonic_nanos();
        let (worker, started) = self.workers[..threads.min(MAX_THREADS)]
            .iter()
            .map(|s| s.started.load(Ordering::Acquire))
            .enumerate()
            .filter(|(_, started)| *started != 0)
            .min_by_key(|(_, started)| *started)?;
        Some(Busy {
            worker,
            nanos: now.saturating_sub(started),
            label: self.label(worker),
        })
    }

    fn label(&self, worker: usize) -> String {
        let slot = &self.workers[worker];
        for _ in 0..100 {
            let before = slot.seq.load(Ordering::Acquire);
            let bytes: Vec<u8> = slot
                .label
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .take_while(|b| *b != 0)
                .collect();
            if before % 2 == 0 && slot.seq.load(Ordering::Acquire) == before {
                return String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        String::from("(label being written)")
    }
}

/// A board in an anonymous shared mapping, unmapped on drop.
pub(crate) struct SharedBoard {
    ptr: NonNull<Board>,
}

// SAFETY: the board holds only atomics, which may be used from any thread.
unsafe impl Send for SharedBoard {}
// SAFETY: as above; `&Board` only exposes atomic operations.
unsafe impl Sync for SharedBoard {}

impl SharedBoard {
    pub(crate) fn new() -> io::Result<SharedBoard> {
        let len = std::mem::size_of::<Board>();
        // SAFETY: an anonymous shared mapping with no address hint has no
        // preconditions; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<Board>()).ok_or_else(io::Error::last_os_error)?;
        Ok(SharedBoard { ptr })
    }
}

impl std::ops::Deref for SharedBoard {
    type Target = Board;

    fn deref(&self) -> &Board {
        // SAFETY: the mapping is live until drop, page-aligned, zero-filled
        // by the kernel (a valid Board: atomics only), and never freed while
        // `self` exists.
        unsafe { self.ptr.as_ref() }
    }
}

impl Drop for SharedBoard {
    fn drop(&mut self) {
        // SAFETY: `ptr` and the size are exactly what mmap returned and was
        // given; nothing borrows the board past `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), std::mem::size_of::<Board>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_longest_task_and_counts_finished_ones() {
        let board = SharedBoard::new().unwrap();
        assert_eq!(board.longest_busy(4), None);
        board.begin(2, "job 17");
        std::thread::sleep(std::time::Duration::from_millis(5));
        board.begin(1, "job 18");
        let busy = board.longest_busy(4).unwrap();
        assert_eq!((busy.worker, busy.label.as_str()), (2, "job 17"));
        assert!(busy.nanos >= 5_000_000);
        board.end(2);
        board.end(1);
        assert_eq!(board.longest_busy(4), None);
        assert_eq!(board.tasks.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn is_shared_with_a_forked_child() {
        let board = SharedBoard::new().unwrap();
        // SAFETY: the child only touches atomics and calls _exit.
        match unsafe { libc::fork() } {
            0 => {
                board.end(0);
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) }
            }
            pid => {
                let mut status = 0;
                // SAFETY: `pid` is our child; `status` is writable.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert_eq!(board.tasks.load(Ordering::Relaxed), 1);
            }
        }
    }
}
