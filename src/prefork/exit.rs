//! Why a child exited: one reason for every exit, logged with it and
//! counted in the fleet's [`Report`](super::Report).
//!
//! The master knows the reason when it ended the child itself (stuck,
//! boot timeout, recycling, reload, scale-down). Otherwise the wait status
//! says it (an exit code, a signal), and a SIGKILL nobody in the fleet
//! sent is the kernel's OOM killer when the memory cgroup counted one more
//! `oom_kill` since the master last looked (cgroup v2's `memory.events`,
//! v1's `memory.oom_control`).

use std::fmt;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

/// Why a child exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited by itself, with this code.
    Exited(i32),
    /// A signal ended it (not the master's decision, not the OOM killer).
    Signal(Signal),
    /// The kernel's OOM killer ended it.
    Oom,
    /// The master killed it: a worker was stuck in one unit of work past
    /// twice its time limit.
    Stuck,
    /// The master killed it: not ready within the boot timeout.
    BootTimeout,
    /// Replaced after `--max-requests` jobs.
    RecycledRequests,
    /// Replaced after `--max-lifetime`.
    RecycledLifetime,
    /// Replaced for its memory (`--reload-on-rss`).
    RecycledMemory,
    /// Stopped because the fleet shrank (TTOU).
    ScaledDown,
    /// Replaced by a rolling reload (HUP).
    Reload,
}

impl ExitReason {
    /// Every [`ExitReason::label`], so a metric can show each from zero.
    pub const LABELS: [&'static str; 10] = [
        "exited",
        "signal",
        "oom",
        "stuck",
        "boot_timeout",
        "recycled_requests",
        "recycled_lifetime",
        "recycled_memory",
        "scaled_down",
        "reload",
    ];

    /// The reason as a metrics label: `exited`, `signal`, `oom`, `stuck`,
    /// `boot_timeout`, `recycled_requests`, `recycled_lifetime`,
    /// `recycled_memory`, `scaled_down` or `reload`.
    pub fn label(&self) -> &'static str {
        match self {
            ExitReason::Exited(_) => "exited",
            ExitReason::Signal(_) => "signal",
            ExitReason::Oom => "oom",
            ExitReason::Stuck => "stuck",
            ExitReason::BootTimeout => "boot_timeout",
            ExitReason::RecycledRequests => "recycled_requests",
            ExitReason::RecycledLifetime => "recycled_lifetime",
            ExitReason::RecycledMemory => "recycled_memory",
            ExitReason::ScaledDown => "scaled_down",
            ExitReason::Reload => "reload",
        }
    }

    /// The reason a wait status gives, when the master did not end the
    /// child itself; `oom`: the cgroup counted an OOM kill meanwhile.
    pub(crate) fn of_status(status: &WaitStatus, oom: bool) -> ExitReason {
        match status {
            WaitStatus::Exited(_, code) => ExitReason::Exited(*code),
            WaitStatus::Signaled(_, Signal::SIGKILL, _) if oom => ExitReason::Oom,
            WaitStatus::Signaled(_, signal, _) => ExitReason::Signal(*signal),
            _ => ExitReason::Exited(0),
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Exited(code) => write!(f, "exited with status {code}"),
            ExitReason::Signal(signal) => write!(f, "killed by {signal}"),
            ExitReason::Oom => f.write_str("killed by the kernel's OOM killer"),
            ExitReason::Stuck => f.write_str("killed: stuck past its time limit"),
            ExitReason::BootTimeout => f.write_str("killed: not ready within the boot timeout"),
            ExitReason::RecycledRequests => f.write_str("recycled after --max-requests"),
            ExitReason::RecycledLifetime => f.write_str("recycled after --max-lifetime"),
            ExitReason::RecycledMemory => f.write_str("recycled for its memory"),
            ExitReason::ScaledDown => f.write_str("stopped: the fleet shrank"),
            ExitReason::Reload => f.write_str("replaced by a reload"),
        }
    }
}
