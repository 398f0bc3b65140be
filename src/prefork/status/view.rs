//! The fleet as the status endpoint shows it: one snapshot, built by the
//! master when a request needs it, rendered as Prometheus text, as JSON,
//! or as a probe's verdict.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::super::app::Gauge;
use super::super::exit::ExitReason;
use super::super::metrics::{header, sample};
use crate::Pid;

/// The master's part of a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct MasterView {
    pub(crate) pid: Pid,
    pub(crate) uptime: Duration,
    /// How long the master's last turn took, from its planned wake-up to
    /// its next sleep: what supervision was late by.
    pub(crate) loop_lag: Duration,
    /// The fleet's settings, as `/status` shows them.
    pub(crate) settings: Value,
}

/// One child's part of a snapshot.
#[derive(Debug, Clone)]
pub(crate) struct ChildView {
    pub(crate) index: usize,
    pub(crate) pid: Pid,
    /// `booting`, `ready`, `retiring` or `stopping`.
    pub(crate) state: &'static str,
    pub(crate) age: Duration,
    pub(crate) jobs: u64,
    /// Workers inside a unit of work.
    pub(crate) busy: usize,
    /// The longest such unit: its label, and for how long.
    pub(crate) current: Option<(String, Duration)>,
    pub(crate) open_connections: u32,
    /// Backends of its workers' programs, as it last counted them.
    pub(crate) program_connections: u32,
    pub(crate) rss: Option<u64>,
    pub(crate) pss: Option<u64>,
    /// Children of its slot that died and were replaced.
    pub(crate) restarts: u64,
    /// How the slot's previous child ended.
    pub(crate) last_exit: Option<ExitReason>,
}

/// A snapshot of the fleet.
#[derive(Debug, Clone)]
pub(crate) struct FleetView {
    pub(crate) master: MasterView,
    pub(crate) children: Vec<ChildView>,
    pub(crate) target: usize,
    /// Children that must be ready for `/readyz` (at most `target`).
    pub(crate) min_ready: usize,
    pub(crate) stopping: bool,
    pub(crate) quiet: bool,
    /// A child the master is killing for a stuck job, if any: its label.
    pub(crate) stuck: Option<String>,
    pub(crate) exits: BTreeMap<&'static str, u64>,
    pub(crate) restarts: u64,
    /// The master's own connections (the children's are theirs).
    pub(crate) master_connections: u32,
    /// The app's counters and histograms, rendered.
    pub(crate) app_metrics: String,
    pub(crate) gauges: Vec<Gauge>,
}

const CHILD_STATES: [&str; 4] = ["booting", "ready", "retiring", "stopping"];

impl FleetView {
    /// Children serving: ready, or retiring (still working until their
    /// replacement is ready, as in a rolling reload).
    fn ready_children(&self) -> usize {
        self.children
            .iter()
            .filter(|c| c.state == "ready" || c.state == "retiring")
            .count()
    }

    /// `/livez`: the master's loop answers (or there would be no answer),
    /// and no child is being killed for a stuck job.
    pub(crate) fn live(&self) -> Result<(), String> {
        match &self.stuck {
            Some(label) => Err(format!("a child is stuck in {label}")),
            None => Ok(()),
        }
    }

    /// `/readyz`: `min_ready` children serve (all of them by default), and
    /// the fleet neither stops nor is quiet (TSTP).
    pub(crate) fn ready(&self) -> Result<(), String> {
        if self.stopping {
            Err("stopping".into())
        } else if self.quiet {
            Err("quiet (TSTP)".into())
        } else if self.ready_children() < self.min_ready.min(self.target).max(1) {
            Err(format!(
                "{} of {} children ready, {} needed",
                self.ready_children(),
                self.target,
                self.min_ready.min(self.target).max(1)
            ))
        } else {
            Ok(())
        }
    }

    /// `/metrics`: the fleet's metrics, then the app's.
    pub(crate) fn metrics(&self) -> String {
        let mut out = String::new();
        header(&mut out, "prefork_children", "Children by state.", "gauge");
        for state in CHILD_STATES {
            let n = self.children.iter().filter(|c| c.state == state).count();
            sample(&mut out, "prefork_children", &[("state", state)], n as f64);
        }
        header(
            &mut out,
            "prefork_children_target",
            "Children the fleet should have.",
            "gauge",
        );
        sample::<&str, &str>(&mut out, "prefork_children_target", &[], self.target as f64);
        header(
            &mut out,
            "prefork_workers_busy",
            "Workers inside a unit of work.",
            "gauge",
        );
        let busy: usize = self.children.iter().map(|c| c.busy).sum();
        sample::<&str, &str>(&mut out, "prefork_workers_busy", &[], busy as f64);
        header(
            &mut out,
            "prefork_child_exits_total",
            "Children that exited, by reason.",
            "counter",
        );
        for reason in ExitReason::LABELS {
            let n = self.exits.get(reason).copied().unwrap_or(0);
            sample(
                &mut out,
                "prefork_child_exits_total",
                &[("reason", reason)],
                n as f64,
            );
        }
        header(
            &mut out,
            "prefork_child_restarts_total",
            "Children that died unasked and were replaced.",
            "counter",
        );
        sample::<&str, &str>(
            &mut out,
            "prefork_child_restarts_total",
            &[],
            self.restarts as f64,
        );
        header(
            &mut out,
            "prefork_backends",
            "Database connections the fleet holds (children, their programs and the master).",
            "gauge",
        );
        let backends: u64 = self
            .children
            .iter()
            .map(|c| u64::from(c.open_connections) + u64::from(c.program_connections))
            .sum();
        let backends = backends + u64::from(self.master_connections);
        sample::<&str, &str>(&mut out, "prefork_backends", &[], backends as f64);
        header(
            &mut out,
            "prefork_master_loop_lag_seconds",
            "How long the master's last turn took past its planned wake-up.",
            "gauge",
        );
        sample::<&str, &str>(
            &mut out,
            "prefork_master_loop_lag_seconds",
            &[],
            self.master.loop_lag.as_secs_f64(),
        );
        header(
            &mut out,
            "prefork_child_memory_bytes",
            "Children's memory: resident (rss) and proportional (pss).",
            "gauge",
        );
        for c in &self.children {
            let slot = c.index.to_string();
            for (kind, bytes) in [("rss", c.rss), ("pss", c.pss)] {
                if let Some(bytes) = bytes {
                    let labels = [("child", slot.as_str()), ("kind", kind)];
                    sample(
                        &mut out,
                        "prefork_child_memory_bytes",
                        &labels,
                        bytes as f64,
                    );
                }
            }
        }
        out.push_str(&self.app_metrics);
        let mut named: Vec<&'static str> = Vec::new();
        for gauge in &self.gauges {
            if !named.contains(&gauge.name) {
                named.push(gauge.name);
                header(&mut out, gauge.name, gauge.help, "gauge");
                for g in self.gauges.iter().filter(|g| g.name == gauge.name) {
                    sample(&mut out, g.name, &g.labels, g.value);
                }
            }
        }
        out
    }

    /// `/status`: the master, every child, and the app's gauges.
    pub(crate) fn status_json(&self) -> String {
        let children: Vec<Value> = self
            .children
            .iter()
            .map(|c| {
                json!({
                    "slot": c.index,
                    "pid": c.pid.as_raw(),
                    "state": c.state,
                    "age_seconds": secs(c.age),
                    "jobs": c.jobs,
                    "busy_workers": c.busy,
                    "current": c.current.as_ref().map(|(label, took)| json!({
                        "label": label,
                        "seconds": secs(*took),
                    })),
                    "open_connections": c.open_connections,
                    "program_connections": c.program_connections,
                    "rss_bytes": c.rss,
                    "pss_bytes": c.pss,
                    "restarts": c.restarts,
                    "last_exit": c.last_exit.map(|r| json!({
                        "reason": r.label(),
                        "detail": r.to_string(),
                    })),
                })
            })
            .collect();
        let gauges: Vec<Value> = self
            .gauges
            .iter()
            .map(|g| {
                let labels: serde_json::Map<String, Value> = g
                    .labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Value::from(v.as_str())))
                    .collect();
                json!({"name": g.name, "labels": labels, "value": g.value})
            })
            .collect();
        let status = json!({
            "master": {
                "pid": self.master.pid.as_raw(),
                "uptime_seconds": secs(self.master.uptime),
                "version": env!("CARGO_PKG_VERSION"),
                "loop_lag_seconds": secs(self.master.loop_lag),
                "settings": self.master.settings,
            },
            "target": self.target,
            "stopping": self.stopping,
            "quiet": self.quiet,
            "ready": self.ready().is_ok(),
            "live": self.live().is_ok(),
            "restarts": self.restarts,
            "exits": self.exits,
            "children": children,
            "gauges": gauges,
        });
        let mut text = status.to_string();
        text.push('\n');
        text
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(states: &[&'static str], min_ready: usize) -> FleetView {
        let children = states
            .iter()
            .enumerate()
            .map(|(i, state)| ChildView {
                index: i + 1,
                pid: Pid::from_raw(100 + i as i32),
                state,
                age: Duration::ZERO,
                jobs: 0,
                busy: 0,
                current: None,
                open_connections: 0,
                program_connections: 0,
                rss: None,
                pss: None,
                restarts: 0,
                last_exit: None,
            })
            .collect();
        FleetView {
            master: MasterView {
                pid: Pid::from_raw(1),
                uptime: Duration::ZERO,
                loop_lag: Duration::ZERO,
                settings: Value::Null,
            },
            children,
            target: 2,
            min_ready,
            stopping: false,
            quiet: false,
            stuck: None,
            exits: BTreeMap::new(),
            restarts: 0,
            master_connections: 0,
            app_metrics: String::new(),
            gauges: Vec::new(),
        }
    }

    #[test]
    fn ready_needs_its_minimum_serving_and_neither_quiet_nor_stopping() {
        assert!(view(&["ready", "ready"], 2).ready().is_ok());
        // A rolling reload: the retiring child works until its
        // replacement is ready.
        assert!(view(&["retiring", "ready", "booting"], 2).ready().is_ok());
        let short = view(&["ready", "booting"], 2).ready().unwrap_err();
        assert_eq!(short, "1 of 2 children ready, 2 needed");
        assert!(view(&["ready", "booting"], 1).ready().is_ok());
        assert!(view(&["booting", "booting"], 1).ready().is_err());
        let mut quiet = view(&["ready", "ready"], 2);
        quiet.quiet = true;
        assert!(quiet.ready().is_err() && quiet.live().is_ok());
        let mut stuck = view(&["ready", "ready"], 2);
        stuck.stuck = Some("child 1 (pid 100)".into());
        assert!(stuck.live().is_err());
    }
}
