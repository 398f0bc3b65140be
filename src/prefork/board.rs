//! The scoreboard: a page of shared memory per child, written by the child's
//! workers and read by the master (uWSGI's design).
//!
//! The master maps it before forking, so both processes see the same
//! physical memory. It holds only atomics, so an all-zero page is a valid,
//! empty board, and neither side ever blocks the other: a stuck worker
//! cannot stop the master from seeing that it is stuck.

use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering,
};
use std::time::Duration;

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};

use super::metrics::MAX_COUNTERS;
use crate::Pid;

/// A program a worker runs, as the master sees it on the scoreboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningProgram {
    /// The worker, from 0.
    pub worker: usize,
    /// The label of the worker's unit of work ([`Worker::job`](super::Worker::job)).
    pub label: String,
    /// The program's process group.
    pub group: Pid,
}

/// Most threads a child may run (`--threads`).
pub const MAX_THREADS: usize = 1024;
const LABEL: usize = 64;

#[repr(C)]
pub(crate) struct Board {
    /// Jobs finished by all workers of the child.
    pub(crate) jobs: AtomicU64,
    /// Connections open in the child, refreshed by its main thread.
    pub(crate) open_connections: AtomicU32,
    /// Backends of its workers' programs, as the app last counted them.
    pub(crate) program_connections: AtomicU32,
    /// The fleet is quiet (TSTP): take no new work, finish what is in hand.
    pub(crate) quiet: AtomicBool,
    workers: [Slot; MAX_THREADS],
    /// The app's metrics (see `metrics`): added to by the workers, summed
    /// by the master.
    counters: [AtomicU64; MAX_COUNTERS],
    /// CLOCK_MONOTONIC nanoseconds when the master last asked this child
    /// for the app's gauges (a scrape of the status endpoint); 0: never.
    asked: AtomicU64,
    /// The app's gauges as this child last published them.
    gauges: Gauges,
}

/// Gauges a child publishes for the master (see [`Board::publish`]).
#[repr(C)]
struct Gauges {
    /// Odd while they are being written (a sequence lock).
    seq: AtomicU32,
    /// CLOCK_MONOTONIC nanoseconds when they were published; 0: never.
    at: AtomicU64,
    len: AtomicU32,
    /// The values, as `f64` bits.
    values: [AtomicU64; MAX_GAUGES],
}

/// Most gauge values a child publishes.
pub const MAX_GAUGES: usize = 64;

#[repr(C)]
struct Slot {
    /// CLOCK_MONOTONIC nanoseconds when the current unit of work began; 0
    /// when idle.
    started: AtomicU64,
    /// How many time limits the current unit may take: one per job it
    /// covers, at least one.
    budget: AtomicU32,
    /// The current unit's own time limit per job, in milliseconds; 0: the
    /// fleet's `--timeout`.
    limit_ms: AtomicU64,
    /// Odd while the label is being written (a sequence lock).
    seq: AtomicU32,
    label: [AtomicU8; LABEL],
    /// The process group of the program the worker runs, 0 if none:
    /// written by the program itself before it execs, cleared by the
    /// worker before it reaps the program (see `program`).
    program: AtomicI32,
    /// How many of `held` are the jobs the worker runs now (see
    /// [`Board::hold`]); 0 when none.
    held_len: AtomicU32,
    held: [AtomicI64; MAX_HELD],
}

/// Most job ids a worker's slot records (a batch's first ones).
pub const MAX_HELD: usize = 64;

/// A worker that has been inside one unit of work for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busy {
    pub(crate) worker: usize,
    /// How long it has been busy.
    pub(crate) nanos: u64,
    /// How many time limits the unit may take.
    pub(crate) budget: u32,
    /// The time limit per job it was held to: its own, or the fleet's.
    pub(crate) limit: Duration,
    pub(crate) label: String,
}

impl Busy {
    /// How long it has been busy.
    pub(crate) fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos)
    }
}

/// Nanoseconds on CLOCK_MONOTONIC, which is the same clock in every process.
pub(crate) fn monotonic_nanos() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    // CLOCK_MONOTONIC always exists on Linux; zero only if it somehow did
    // not, which makes every worker look idle rather than stuck.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

impl Board {
    /// Worker `worker` starts a unit of work that may take `budget` time
    /// limits (at least one), each `limit` (`None`: the fleet's
    /// `--timeout`).
    pub(crate) fn begin(&self, worker: usize, label: &str, budget: u32, limit: Option<Duration>) {
        self.begin_at(worker, label, budget, limit, monotonic_nanos());
    }

    /// [`Board::begin`] at a given time, for tests of the master's
    /// decisions with a clock of their own.
    pub(crate) fn begin_at(
        &self,
        worker: usize,
        label: &str,
        budget: u32,
        limit: Option<Duration>,
        nanos: u64,
    ) {
        let Some(slot) = self.workers.get(worker) else {
            return;
        };
        slot.seq.fetch_add(1, Ordering::AcqRel);
        let bytes = label.as_bytes();
        for (i, cell) in slot.label.iter().enumerate() {
            cell.store(bytes.get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
        slot.seq.fetch_add(1, Ordering::Release);
        slot.budget.store(budget.max(1), Ordering::Relaxed);
        let limit_ms = limit.map_or(0, |l| (l.as_millis() as u64).max(1));
        slot.limit_ms.store(limit_ms, Ordering::Relaxed);
        slot.started.store(nanos.max(1), Ordering::Release);
    }

    /// Worker `worker` finished its unit of work, which completed `jobs`
    /// jobs.
    pub(crate) fn end(&self, worker: usize, jobs: u64) {
        if let Some(slot) = self.workers.get(worker) {
            slot.started.store(0, Ordering::Release);
        }
        self.jobs.fetch_add(jobs, Ordering::Relaxed);
    }

    /// Worker `worker` runs the jobs `ids` now (the first [`MAX_HELD`]);
    /// empty: none. Read by the master only once the child is dead, when
    /// nothing writes any more.
    pub(crate) fn hold(&self, worker: usize, ids: &[i64]) {
        let Some(slot) = self.workers.get(worker) else {
            return;
        };
        slot.held_len.store(0, Ordering::Release);
        let ids = &ids[..ids.len().min(MAX_HELD)];
        for (cell, id) in slot.held.iter().zip(ids) {
            cell.store(*id, Ordering::Relaxed);
        }
        slot.held_len.store(ids.len() as u32, Ordering::Release);
    }

    /// The jobs the child's first `threads` workers were running, as they
    /// recorded them.
    pub(crate) fn held(&self, threads: usize) -> Vec<i64> {
        self.workers[..threads.min(MAX_THREADS)]
            .iter()
            .flat_map(|slot| {
                let len = (slot.held_len.load(Ordering::Acquire) as usize).min(MAX_HELD);
                slot.held[..len].iter().map(|id| id.load(Ordering::Relaxed))
            })
            .collect()
    }

    /// The master asks for the app's gauges, at `now` (CLOCK_MONOTONIC
    /// nanoseconds).
    pub(crate) fn ask(&self, now: u64) {
        self.asked.store(now.max(1), Ordering::Relaxed);
    }

    /// When the master last asked for the app's gauges; 0: never.
    pub(crate) fn asked(&self) -> u64 {
        self.asked.load(Ordering::Relaxed)
    }

    /// Publishes the app's gauges (beyond [`MAX_GAUGES`]: cut).
    pub(crate) fn publish(&self, values: &[f64]) {
        let g = &self.gauges;
        g.seq.fetch_add(1, Ordering::AcqRel);
        let values = &values[..values.len().min(MAX_GAUGES)];
        for (cell, value) in g.values.iter().zip(values) {
            cell.store(value.to_bits(), Ordering::Relaxed);
        }
        g.len.store(values.len() as u32, Ordering::Relaxed);
        g.at.store(monotonic_nanos().max(1), Ordering::Relaxed);
        g.seq.fetch_add(1, Ordering::Release);
    }

    /// The gauges as last published, and when; `None` if never, or if
    /// they were being written at every try.
    pub(crate) fn published(&self) -> Option<(u64, Vec<f64>)> {
        let g = &self.gauges;
        for _ in 0..100 {
            let before = g.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let at = g.at.load(Ordering::Relaxed);
            let len = (g.len.load(Ordering::Relaxed) as usize).min(MAX_GAUGES);
            let values: Vec<f64> = g.values[..len]
                .iter()
                .map(|v| f64::from_bits(v.load(Ordering::Relaxed)))
                .collect();
            std::sync::atomic::fence(Ordering::Acquire);
            if g.seq.load(Ordering::Relaxed) == before {
                return (at != 0).then_some((at, values));
            }
        }
        None
    }

    /// Adds `n` to the app's metric slot `slot` (out of range: nothing).
    pub(crate) fn add(&self, slot: usize, n: u64) {
        if let Some(counter) = self.counters.get(slot) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds the app's metric slots to `sums`, slot by slot.
    pub(crate) fn add_counters_to(&self, sums: &mut [u64]) {
        for (sum, counter) in sums.iter_mut().zip(&self.counters) {
            *sum = sum.wrapping_add(counter.load(Ordering::Relaxed));
        }
    }

    /// How many of the first `threads` workers are inside a unit of work,
    /// and the longest such unit as of `now`: its label and how long.
    pub(crate) fn busy(&self, threads: usize, now: u64) -> (usize, Option<(String, Duration)>) {
        let busy: Vec<(usize, u64)> = self.workers[..threads.min(MAX_THREADS)]
            .iter()
            .enumerate()
            .filter_map(|(worker, slot)| {
                let started = slot.started.load(Ordering::Acquire);
                (started != 0).then(|| (worker, now.saturating_sub(started)))
            })
            .collect();
        let longest = busy.iter().max_by_key(|(_, nanos)| *nanos);
        let longest =
            longest.map(|(worker, nanos)| (self.label(*worker), Duration::from_nanos(*nanos)));
        (busy.len(), longest)
    }

    /// Where worker `worker` records the process group of the program it
    /// runs.
    pub(crate) fn program_record(&self, worker: usize) -> Option<&AtomicI32> {
        self.workers.get(worker).map(|slot| &slot.program)
    }

    /// The process groups of the programs the child's first `threads`
    /// workers run, as recorded.
    pub(crate) fn programs(&self, threads: usize) -> Vec<Pid> {
        self.workers[..threads.min(MAX_THREADS)]
            .iter()
            .map(|slot| slot.program.load(Ordering::Acquire))
            .filter(|group| *group > 0)
            .map(Pid::from_raw)
            .collect()
    }

    /// The programs the child's first `threads` workers run, each with the
    /// label of its worker's unit of work.
    pub(crate) fn running(&self, threads: usize) -> Vec<RunningProgram> {
        (0..threads.min(MAX_THREADS))
            .filter_map(|worker| {
                let group = self.workers[worker].program.load(Ordering::Acquire);
                (group > 0).then(|| RunningProgram {
                    worker,
                    label: self.label(worker),
                    group: Pid::from_raw(group),
                })
            })
            .collect()
    }

    /// Jobs finished so far.
    pub(crate) fn jobs(&self) -> u64 {
        self.jobs.load(Ordering::Relaxed)
    }

    /// A worker stuck in its current unit of work as of `now`
    /// (CLOCK_MONOTONIC nanoseconds): busy for twice its budget of time
    /// limits (its unit's own limit, or `fleet`), if any; the longest busy
    /// of those.
    pub(crate) fn stuck(&self, threads: usize, now: u64, fleet: Option<Duration>) -> Option<Busy> {
        self.workers[..threads.min(MAX_THREADS)]
            .iter()
            .enumerate()
            .filter_map(|(worker, slot)| {
                let started = slot.started.load(Ordering::Acquire);
                if started == 0 {
                    return None;
                }
                let limit = match slot.limit_ms.load(Ordering::Relaxed) {
                    0 => fleet?,
                    ms => Duration::from_millis(ms),
                };
                let busy = Busy {
                    worker,
                    nanos: now.saturating_sub(started),
                    budget: slot.budget.load(Ordering::Relaxed).max(1),
                    limit,
                    label: String::new(),
                };
                (busy.elapsed() >= super::settings::stuck_after(limit, busy.budget)).then_some(busy)
            })
            .max_by_key(|busy| busy.nanos)
            .map(|busy| Busy {
                label: self.label(busy.worker),
                ..busy
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
        let len = NonZeroUsize::new(std::mem::size_of::<Board>()).expect("a board has a size");
        // SAFETY: a new anonymous shared mapping with no address hint
        // aliases no existing memory.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }?;
        Ok(SharedBoard { ptr: ptr.cast() })
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
        let _ = unsafe { munmap(self.ptr.cast(), std::mem::size_of::<Board>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_units_past_twice_their_limits_and_counts_finished_jobs() {
        const MS: u64 = 1_000_000;
        let fleet = Some(Duration::from_millis(10));
        let board = SharedBoard::new().unwrap();
        assert_eq!(board.stuck(4, monotonic_nanos(), fleet), None);
        board.begin_at(2, "job 17", 1, None, 1);
        board.begin_at(1, "jobs 18..25", 8, None, 1);
        board.begin_at(3, "job 26", 1, Some(Duration::from_millis(100)), 1);
        // 25 ms: job 17 is past twice the fleet's 10 ms; the batch has 8 x 2 x 10.
        let stuck = board.stuck(4, 25 * MS, fleet).unwrap();
        assert_eq!((stuck.worker, stuck.label.as_str()), (2, "job 17"));
        assert_eq!((stuck.budget, stuck.limit), (1, Duration::from_millis(10)));
        board.end(2, 1);
        assert_eq!(board.stuck(4, 25 * MS, fleet), None);
        // Job 26 has its own 100 ms: stuck at 200 ms, with or without a
        // fleet timeout; the batch at 160 ms only with one.
        assert_eq!(board.stuck(4, 190 * MS, None), None);
        assert_eq!(board.stuck(4, 190 * MS, fleet).unwrap().worker, 1);
        assert_eq!(board.stuck(4, 210 * MS, None).unwrap().worker, 3);
        board.end(1, 8);
        board.end(3, 1);
        assert_eq!(board.stuck(4, 1_000 * MS, fleet), None);
        assert_eq!(board.jobs(), 10);
    }

    #[test]
    fn is_shared_with_a_forked_child() {
        let board = SharedBoard::new().unwrap();
        // SAFETY: the test binary's other threads may hold locks, but the
        // child only touches atomics and calls _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                board.end(0, 1);
                // SAFETY: ends the child at once, running nothing inherited.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(board.jobs(), 1);
            }
        }
    }
}
