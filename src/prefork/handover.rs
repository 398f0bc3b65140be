//! Handovers: what children that died abruptly left behind (backends
//! still busy on the server, work in hand) is dealt with by a short-lived
//! process the master forks for it, so the master's loop never waits on
//! the database. The handover ends the dead children's leftover backends,
//! then runs [`App::children_lost`](super::App::children_lost), and exits.
//!
//! The rules, decided here without system calls (the fleet's `Effects`
//! fork and signal):
//!
//! - One handover at a time; children lost while it runs wait for the
//!   next. A handover that fails (exits non-zero, or is killed) hands its
//!   children to the next one, a second later.
//! - Not while a replacement child boots, for up to [`BOOT_WAIT`] (a
//!   turn of the master's loop): the handover's connect and statements
//!   would compete with it for the CPU.
//! - One that runs past [`LIMIT`] (a frozen or unreachable server) is
//!   killed and its children handed to the next. The queue's leases bring
//!   back whatever no handover could.
//! - Once the fleet has stopped, the master waits for the last handover
//!   at most [`FINAL_LIMIT`], so a stop is never held up by the database.
//!
//! # Scenarios
//!
//! 1. **A child is killed** (OOM, SIGKILL): the master reaps it, forks its
//!    replacement and, a tick later or once the replacement is ready, a
//!    handover for it.
//! 2. **The server is frozen**: the handover hangs, the master's loop does
//!    not; at [`LIMIT`] it is killed and the next one tries again.
//! 3. **A stop past the graceful timeout**: the children killed are
//!    handed over after the last one exited, within [`FINAL_LIMIT`].

use std::time::{Duration, Instant};

use super::app::{App, LostChild};
use crate::Pid;

/// How long a handover may run before it is killed.
pub(super) const LIMIT: Duration = Duration::from_secs(30);

/// How long a stopped fleet's master waits for its last handover.
pub(super) const FINAL_LIMIT: Duration = Duration::from_secs(5);

/// How long a handover waits for a replacement child that boots.
const BOOT_WAIT: Duration = Duration::from_millis(100);

/// How long after a failed handover the next one starts.
const RETRY: Duration = Duration::from_secs(1);

/// What the handovers need of the system.
pub(super) trait Launcher {
    /// Forks a handover of `lost`; its pid.
    ///
    /// # Errors
    ///
    /// The fork failed.
    fn hand_over(&mut self, lost: &[LostChild]) -> std::io::Result<Pid>;
    /// Kills the handover `pid`.
    fn kill_handover(&mut self, pid: Pid);
}

/// The children lost and not yet handed over, and the handover running.
#[derive(Debug, Default)]
pub(super) struct Handovers {
    /// Lost, and since when.
    pending: Vec<(LostChild, Instant)>,
    running: Option<Running>,
    /// When the next may start, after a failed one.
    not_before: Option<Instant>,
    /// When the fleet stopped with handovers left (see [`FINAL_LIMIT`]).
    stopped_at: Option<Instant>,
}

#[derive(Debug)]
struct Running {
    pid: Pid,
    lost: Vec<LostChild>,
    since: Instant,
    killed: bool,
}

impl Handovers {
    /// A child died with work perhaps in hand.
    pub(super) fn lost(&mut self, lost: LostChild, now: Instant) {
        self.pending.push((lost, now));
    }

    /// Nothing pending and nothing running.
    pub(super) fn idle(&self) -> bool {
        self.pending.is_empty() && self.running.is_none()
    }

    /// Starts a handover if one is due, and kills one past its limit.
    /// `booting`: a replacement child is booting. `stopped`: the fleet has
    /// no children left and is stopping.
    pub(super) fn turn(
        &mut self,
        now: Instant,
        booting: bool,
        stopped: bool,
        fx: &mut impl Launcher,
    ) {
        if stopped && self.stopped_at.is_none() && !self.idle() {
            self.stopped_at = Some(now);
        }
        let final_past = self
            .stopped_at
            .is_some_and(|at| now.saturating_duration_since(at) >= FINAL_LIMIT);
        if let Some(running) = &mut self.running {
            let limit = match self.stopped_at {
                Some(_) => FINAL_LIMIT,
                None => LIMIT,
            };
            let past = now.saturating_duration_since(running.since) >= limit || final_past;
            if !running.killed && past {
                log::warn!(
                    "the handover of dead children {} (pid {}) ran past {limit:?}; killing it",
                    list(&running.lost),
                    running.pid
                );
                fx.kill_handover(running.pid);
                running.killed = true;
            }
            return;
        }
        if final_past {
            if !self.pending.is_empty() {
                log::warn!(
                    "dead children {} not handed over before the master exits; \
                     their leases bring their work back",
                    list(
                        &self
                            .pending
                            .iter()
                            .map(|(l, _)| l.clone())
                            .collect::<Vec<_>>()
                    )
                );
            }
            self.pending.clear();
            return;
        }
        let Some(&(_, oldest)) = self.pending.first() else {
            return;
        };
        if self.not_before.is_some_and(|at| now < at) {
            return;
        }
        if booting && !stopped && now.saturating_duration_since(oldest) < BOOT_WAIT {
            return;
        }
        let lost: Vec<LostChild> = self.pending.drain(..).map(|(l, _)| l).collect();
        match fx.hand_over(&lost) {
            Ok(pid) => {
                self.running = Some(Running {
                    pid,
                    lost,
                    since: now,
                    killed: false,
                });
            }
            Err(e) => {
                log::warn!("forking a handover of dead children {}: {e}", list(&lost));
                self.pending = lost.into_iter().map(|l| (l, now)).collect();
                self.not_before = Some(now + RETRY);
            }
        }
    }

    /// A process exited: `true` if it was the handover. One that failed
    /// gives its children back to the next.
    pub(super) fn on_exit(&mut self, pid: Pid, clean: bool, now: Instant) -> bool {
        if self.running.as_ref().is_none_or(|r| r.pid != pid) {
            return false;
        }
        let running = self.running.take().expect("checked");
        if !clean {
            log::warn!(
                "the handover of dead children {} failed; trying again",
                list(&running.lost)
            );
            let mut again: Vec<(LostChild, Instant)> =
                running.lost.into_iter().map(|l| (l, now)).collect();
            again.append(&mut self.pending);
            self.pending = again;
            self.not_before = Some(now + RETRY);
        }
        true
    }

    /// The children not yet handed over (for tests).
    #[cfg(test)]
    fn pending(&self) -> Vec<Pid> {
        self.pending.iter().map(|(l, _)| l.pid).collect()
    }
}

/// The children's pids as `4721, 4722`.
fn list(lost: &[LostChild]) -> String {
    let pids: Vec<Pid> = lost.iter().map(|l| l.pid).collect();
    pid_list(&pids)
}

/// Pids as `4721, 4722`.
pub(crate) fn pid_list(pids: &[Pid]) -> String {
    pids.iter()
        .map(Pid::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The body of a handover process: ends the leftover backends of `lost`,
/// hands their work back through the app, and exits (0 if it could end
/// the backends, or had none to end).
pub(super) fn run<A: App>(app: &A, lost: &[LostChild], use_database: bool) -> ! {
    let pids: Vec<Pid> = lost.iter().map(|l| l.pid).collect();
    let mut code = 0;
    if use_database {
        match super::backends::end_backends("child", &pids) {
            Ok(0) => {}
            Ok(n) => log::warn!("ended {n} backend(s) left by dead children {}", list(lost)),
            Err(e) => {
                log::warn!(
                    "could not end the backends of dead children {}: {e}",
                    list(lost)
                );
                code = 1;
            }
        }
    }
    if code == 0 {
        app.children_lost(lost);
    }
    crate::close_all();
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = BOOT_WAIT;

    #[derive(Default)]
    struct Fake {
        log: Vec<String>,
        next: i32,
        refuse: bool,
    }

    impl Launcher for Fake {
        fn hand_over(&mut self, lost: &[LostChild]) -> std::io::Result<Pid> {
            if self.refuse {
                return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
            }
            self.next += 1;
            let pids: Vec<String> = lost.iter().map(|l| l.pid.to_string()).collect();
            self.log.push(format!(
                "hand over {} -> {}",
                pids.join(","),
                900 + self.next
            ));
            Ok(Pid::from_raw(900 + self.next))
        }
        fn kill_handover(&mut self, pid: Pid) {
            self.log.push(format!("SIGKILL {pid}"));
        }
    }

    fn lost(pid: i32) -> LostChild {
        LostChild {
            pid: Pid::from_raw(pid),
            interrupted: false,
            running: Vec::new(),
        }
    }

    #[test]
    fn one_at_a_time_after_the_replacement_boots_or_a_tick() {
        let (mut h, mut fx, t0) = (Handovers::default(), Fake::default(), Instant::now());
        h.lost(lost(1), t0);
        h.turn(t0, true, false, &mut fx);
        assert!(fx.log.is_empty(), "not while a replacement boots");
        h.turn(t0 + TICK, true, false, &mut fx);
        assert_eq!(fx.log, ["hand over 1 -> 901"]);
        // Lost while one runs: waits for it.
        h.lost(lost(2), t0 + TICK);
        h.turn(t0 + TICK * 2, false, false, &mut fx);
        assert_eq!(fx.log.len(), 1);
        assert!(h.on_exit(Pid::from_raw(901), true, t0 + TICK * 3));
        assert!(!h.on_exit(Pid::from_raw(901), true, t0 + TICK * 3));
        h.turn(t0 + TICK * 3, false, false, &mut fx);
        assert_eq!(fx.log[1], "hand over 2 -> 902");
        assert!(h.on_exit(Pid::from_raw(902), true, t0 + TICK * 4));
        assert!(h.idle());
    }

    #[test]
    fn a_hung_handover_is_killed_and_its_children_tried_again() {
        let (mut h, mut fx, t0) = (Handovers::default(), Fake::default(), Instant::now());
        h.lost(lost(1), t0);
        h.turn(t0, false, false, &mut fx);
        h.turn(t0 + LIMIT - Duration::from_millis(1), false, false, &mut fx);
        assert_eq!(fx.log, ["hand over 1 -> 901"]);
        h.turn(t0 + LIMIT, false, false, &mut fx);
        assert_eq!(fx.log[1], "SIGKILL 901");
        h.turn(t0 + LIMIT + TICK, false, false, &mut fx);
        assert_eq!(fx.log.len(), 2, "killed once");
        let reaped = t0 + LIMIT + TICK;
        assert!(h.on_exit(Pid::from_raw(901), false, reaped));
        assert_eq!(h.pending(), [Pid::from_raw(1)]);
        h.turn(
            reaped + RETRY - Duration::from_millis(1),
            false,
            false,
            &mut fx,
        );
        assert_eq!(fx.log.len(), 2, "a second between tries");
        h.turn(reaped + RETRY, false, false, &mut fx);
        assert_eq!(fx.log[2], "hand over 1 -> 902");
    }

    #[test]
    fn a_stopped_fleet_waits_for_its_last_handover_a_few_seconds_at_most() {
        let (mut h, mut fx, t0) = (Handovers::default(), Fake::default(), Instant::now());
        h.lost(lost(1), t0);
        h.turn(t0, false, true, &mut fx);
        assert_eq!(fx.log, ["hand over 1 -> 901"]);
        assert!(!h.idle());
        h.turn(t0 + FINAL_LIMIT, false, true, &mut fx);
        assert_eq!(fx.log[1], "SIGKILL 901");
        assert!(h.on_exit(Pid::from_raw(901), false, t0 + FINAL_LIMIT));
        h.turn(t0 + FINAL_LIMIT + RETRY, false, true, &mut fx);
        assert_eq!(fx.log.len(), 2, "no new try past the final limit");
        assert!(h.idle());
    }

    #[test]
    fn a_refused_fork_is_tried_again_a_second_later() {
        let (mut h, mut fx, t0) = (Handovers::default(), Fake::default(), Instant::now());
        fx.refuse = true;
        h.lost(lost(1), t0);
        h.turn(t0, false, false, &mut fx);
        assert_eq!(h.pending(), [Pid::from_raw(1)]);
        fx.refuse = false;
        h.turn(t0 + Duration::from_millis(500), false, false, &mut fx);
        assert!(fx.log.is_empty());
        h.turn(t0 + RETRY, false, false, &mut fx);
        assert_eq!(fx.log, ["hand over 1 -> 901"]);
    }
}
