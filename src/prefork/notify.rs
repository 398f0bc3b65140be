//! systemd's service notifications (`sd_notify(3)`), sent by the master when
//! `NOTIFY_SOCKET` is set (a `Type=notify` unit).
//!
//! The master's loop reads the fleet's state every turn and sends what
//! changed, as datagrams on the socket systemd gave it:
//!
//! - `READY=1` once every child of the target is ready, the first time;
//! - `RELOADING=1` when a rolling reload (HUP) begins, and `READY=1` again
//!   once every child has been replaced and the fleet is whole;
//! - `STOPPING=1` when the fleet starts stopping, then
//!   `EXTEND_TIMEOUT_USEC` every second while the children finish their
//!   jobs, so a long graceful stop is not cut short;
//! - `WATCHDOG=1` every half of `WATCHDOG_USEC` (`WatchdogSec=`): sent by
//!   the loop itself, so it stops when the loop stops, and systemd
//!   restarts a master whose loop hangs;
//! - `STATUS=` with a one-line summary, every few seconds.
//!
//! Sending never blocks the loop (a datagram, non-blocking) and a failure
//! is only logged: supervision does not depend on systemd listening. The
//! loop turns at least every 100 ms, which is the notifications' precision.
//! Programs a worker runs do not inherit `NOTIFY_SOCKET` (see `program`),
//! so they cannot speak for the master.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How much each `EXTEND_TIMEOUT_USEC` of a stop asks for.
const EXTEND_BY: Duration = Duration::from_secs(5);

/// What the notifications are about: the fleet as the master's loop sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Health {
    /// Children ready and not being replaced or stopped.
    pub(crate) ready: usize,
    /// Children the fleet should have.
    pub(crate) target: usize,
    /// A rolling reload is under way.
    pub(crate) reloading: bool,
    /// The fleet is stopping.
    pub(crate) stopping: bool,
    /// The fleet is quiet (TSTP): it takes no new jobs.
    pub(crate) quiet: bool,
    /// Jobs finished by the live children.
    pub(crate) jobs: u64,
}

/// The master's end of the notification socket.
pub(crate) struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    watchdog: Option<Duration>,
    next_watchdog: Instant,
    next_status: Instant,
    next_extend: Instant,
    ready_sent: bool,
    reloading: bool,
    stopping: bool,
}

impl Notifier {
    /// The notifier for this process, if systemd asked for notifications
    /// (`NOTIFY_SOCKET`: a path, or `@name` in the abstract namespace).
    /// `WATCHDOG_USEC` turns on the watchdog unless `WATCHDOG_PID` names
    /// another process.
    pub(crate) fn from_env(now: Instant) -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_str()?;
        let to = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => SocketAddr::from_pathname(path),
        };
        let to = match to {
            Ok(to) => to,
            Err(e) => {
                log::warn!("NOTIFY_SOCKET {path:?}: {e}; not notifying systemd");
                return None;
            }
        };
        let socket = match UnixDatagram::unbound().and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        }) {
            Ok(socket) => socket,
            Err(e) => {
                log::warn!("a socket for systemd's notifications: {e}; not notifying");
                return None;
            }
        };
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && ours)
            .map(|usec| Duration::from_micros(usec) / 2);
        Some(Notifier {
            socket,
            to,
            watchdog,
            next_watchdog: now,
            next_status: now,
            next_extend: now,
            ready_sent: false,
            reloading: false,
            stopping: false,
        })
    }

    /// Sends what changed since the last turn, and what is due.
    pub(crate) fn update(&mut self, health: Health, now: Instant) {
        let whole = health.ready >= health.target && !health.reloading;
        if health.stopping && !self.stopping {
            self.stopping = true;
            self.send("STOPPING=1\nSTATUS=stopping");
        }
        if !self.stopping {
            if !self.ready_sent && whole {
                self.ready_sent = true;
                self.send(&format!("READY=1\n{}", status(health)));
            }
            if health.reloading && !self.reloading {
                self.reloading = true;
                self.send(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
                    monotonic_usec()
                ));
            } else if self.reloading && whole {
                self.reloading = false;
                self.send(&format!("READY=1\n{}", status(health)));
            }
        }
        if self.stopping && now >= self.next_extend {
            self.next_extend = now + Duration::from_secs(1);
            self.send(&format!("EXTEND_TIMEOUT_USEC={}", EXTEND_BY.as_micros()));
        }
        if let Some(every) = self.watchdog {
            if now >= self.next_watchdog {
                self.next_watchdog = now + every;
                self.send("WATCHDOG=1");
            }
        }
        if !self.stopping && now >= self.next_status {
            self.next_status = now + STATUS_EVERY;
            self.send(&status(health));
        }
    }

    fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to) {
            log::debug!("notifying systemd ({message:?}): {e}");
        }
    }
}

/// `STATUS=4/4 children ready, 1234 jobs done` (and `, quiet`).
fn status(health: Health) -> String {
    let quiet = if health.quiet { ", quiet" } else { "" };
    format!(
        "STATUS={}/{} children ready, {} jobs done{quiet}",
        health.ready, health.target, health.jobs
    )
}

/// CLOCK_MONOTONIC in microseconds, as systemd wants with `RELOADING=1`.
fn monotonic_usec() -> u64 {
    super::board::monotonic_nanos() / 1000
}
