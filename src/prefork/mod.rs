//! The prefork master: N child processes x M worker threads, supervised.
//!
//! ```no_run
//! use fork_safe::prefork::{App, BoxError, ChildInfo, Prefork, Worker};
//! use std::time::Duration;
//!
//! struct Hello;
//!
//! impl App for Hello {
//!     type Child = ();
//!
//!     fn init_child(&self, _: &ChildInfo) -> Result<(), BoxError> {
//!         Ok(())
//!     }
//!
//!     fn run_worker(&self, _: &(), worker: &Worker) {
//!         while !worker.stopping() {
//!             worker.job("hello", || {
//!                 let _ = fork_safe::with_client(|c| c.execute("SELECT 1", &[]));
//!             });
//!             worker.wait(Duration::from_secs(1));
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), fork_safe::prefork::PreforkError> {
//! let report = Prefork::new().procs(4).threads(8).run(Hello)?;
//! println!("{} restarts", report.restarts);
//! # Ok(())
//! # }
//! ```
//!
//! The master forks every child through [`crate::fork()`]: it must be
//! single-threaded and it closes its own connections first (it may use the
//! database between forks; its connections reopen lazily). Each child dies
//! with the master, runs `threads` worker threads that close their
//! connections when they end, and reports ready through a pipe. The master
//! restarts children that die (with backoff for crash loops), kills children
//! that hang at boot or in a job, recycles them by job count, age or
//! memory one at a time, ends the backends of children that died abruptly,
//! and answers signals:
//!
//! | signal | effect |
//! |---|---|
//! | TERM, INT | graceful stop: children finish the jobs at hand, close their connections and exit; past the graceful timeout their programs get TERM, and the children (and the programs' groups) SIGKILL half the graceful timeout later (at most 5 s) |
//! | QUIT | fast stop |
//! | HUP | rolling reload: each child is replaced by a new one, which is ready before the old one stops |
//! | TTIN, TTOU | one child more, one fewer |
//! | TSTP, CONT | quiet (children take no new work, see [`Worker::quiet`]), and back |
//! | USR1 | log a status line per child |
//!
//! The master reaps every child of its process (`waitpid(-1)`), so a program
//! that runs it should not start other child processes of its own meanwhile.
//!
//! # Modules
//!
//! | module | what it is |
//! |---|---|
//! | `app` | the [`App`] trait: what a fleet runs |
//! | `builder` | the [`Prefork`] builder |
//! | `settings` | the fleet's settings, as the master and its children read them |
//! | `worker` | a worker thread's handle: stop flag, wake-ups, job accounting |
//! | `program` | programs a worker runs, started and ended as whole process groups |
//! | `supervise` | the master's loop and the system calls behind its decisions |
//! | `fleet` | the master's decisions (deadlines, backoff, recycling, one-at-a-time replacement), free of system calls |
//! | `child` | what a child does after the fork |
//! | `board` | the scoreboard each child's workers write and the master reads |
//! | `signals` | the master's signals, read from a signalfd |
//! | `exit` | why a child exited ([`ExitReason`]), counted in the [`Report`] |
//! | `status` | the status endpoint: `/metrics`, `/status`, `/livez`, `/readyz`, served from the master's loop |
//! | `metrics` | the app's counters and histograms ([`Metrics`]), kept on the scoreboards and summed by the master |
//! | `notify` | systemd's notifications (`READY`, `RELOADING`, `STOPPING`, `WATCHDOG`) |
//! | `backoff` | when a slot's next child (or a worker's next resident program) starts after its last one died |
//! | `memory` | the memory limits children and resident programs are held to ([`MemoryLimits`]) |
//! | `backends` | the master's database duties: the slot check, dead children's backends |
//! | `pidfile` | the master's pidfile, held with `flock` |
//! | `title` | process titles |
//! | `error` | [`PreforkError`] |

mod app;
mod backends;
mod backoff;
mod board;
mod builder;
mod child;
mod error;
mod exit;
mod fleet;
mod handover;
mod memory;
mod metrics;
mod notify;
mod pidfile;
mod program;
mod settings;
mod signals;
mod status;
mod supervise;
mod title;
mod worker;

pub use app::{App, BoxError, ChildInfo, ChildStatus, Gauge, LostChild, Report};
// The one supervision policy, used by the queue's resident programs too.
#[cfg(feature = "queue")]
pub(crate) use backends::{count_backends, end_backends};
#[cfg(feature = "queue")]
pub(crate) use backoff::{PROGRAM_CAP, restart_delay};
pub use board::RunningProgram;
pub use board::{MAX_GAUGES, MAX_HELD, MAX_THREADS};
pub use builder::Prefork;
pub use error::PreforkError;
pub use exit::ExitReason;
#[cfg(feature = "queue")]
pub(crate) use handover::pid_list as list;
pub use memory::MemoryLimits;
#[cfg(feature = "queue")]
pub(crate) use memory::PssReadings;
pub use metrics::{Counted, Counter, Histogram, MAX_COUNTERS, Metrics};
pub use program::Program;
pub(crate) use program::kill_grace;
pub use settings::ConnectionBounds;
pub use signals::hold_signals;
pub use status::StatusAddr;
pub use worker::{HeldJobs, Wake, Waker, Worker};
