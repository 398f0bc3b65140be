//! Counters and histograms an app keeps in its children, summed over the
//! fleet by the master (which serves them: see `status`).
//!
//! Prometheus' client libraries keep a registry per process. Under prefork
//! that is one set of series per child, reset whenever a child is replaced,
//! or a multiprocess mode of files on disk. Here the app declares its
//! metrics once, in the master, before the first fork ([`Metrics`]): each
//! declared series is a range of slots in every child's scoreboard (shared
//! memory, atomics only). Workers add to their child's slots
//! ([`Worker::count`](super::Worker::count),
//! [`Worker::observe`](super::Worker::observe)); the master reads the live
//! boards and adds what the children that exited had counted, folded in
//! when each was reaped, so a counter never goes back when a child is
//! replaced.

use std::fmt::Write as _;

/// Slots a child's scoreboard has for an app's metrics: a counter takes
/// one, a histogram one per bucket plus two (its sum and its count).
pub const MAX_COUNTERS: usize = 512;

/// Fixed-point scale of a histogram's sum: observations are summed in
/// millionths.
const SUM_SCALE: f64 = 1e6;

/// The metrics an app declares (see the module doc). Build it before
/// [`Prefork::run`](super::Prefork::run) and return it from
/// [`App::metrics`](super::App::metrics).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    families: Vec<Family>,
    used: usize,
}

#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Counter,
    Histogram(&'static [f64]),
}

#[derive(Debug, Clone)]
struct Series {
    labels: Vec<(String, String)>,
    first: usize,
}

/// One counter series, to add to with [`Worker::count`](super::Worker::count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(pub(crate) usize);

/// The app's counters summed over the fleet (the live children's and what
/// the exited ones had counted), for [`App::master_counted`](super::App::master_counted).
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a>(pub(crate) &'a [u64]);

impl Counted<'_> {
    /// `counter`'s sum over the fleet.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0.get(counter.0).copied().unwrap_or(0)
    }
}

/// One histogram series, to record into with
/// [`Worker::observe`](super::Worker::observe).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Histogram {
    pub(crate) first: usize,
    pub(crate) bounds: &'static [f64],
}

impl Histogram {
    /// The slots an observation of `value` adds to: its bucket's, the sum's
    /// (by how much) and the count's.
    pub(crate) fn slots(&self, value: f64) -> [(usize, u64); 3] {
        let bucket = self.bounds.iter().take_while(|b| value > **b).count();
        let buckets = self.bounds.len() + 1;
        let scaled = (value.max(0.0) * SUM_SCALE).round() as u64;
        [
            (self.first + bucket, 1),
            (self.first + buckets, scaled),
            (self.first + buckets + 1, 1),
        ]
    }
}

impl Metrics {
    /// No metrics yet.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Declares a counter series: `name` (a Prometheus metric name, ending
    /// in `_total` by convention) with these labels. Series of one name
    /// share its help text and type.
    ///
    /// # Panics
    ///
    /// If the name or a label name is not a valid Prometheus name, the name
    /// was declared as a histogram, or the board's [`MAX_COUNTERS`] slots
    /// are used up.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        Counter(self.declare(name, help, Kind::Counter, labels, 1))
    }

    /// Declares a histogram series with these bucket upper bounds
    /// (ascending; `+Inf` is added).
    ///
    /// # Panics
    ///
    /// As [`Metrics::counter`], and if the bounds are not ascending or
    /// differ from the name's other series.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &'static [f64],
    ) -> Histogram {
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram {name}: bounds must ascend"
        );
        let first = self.declare(
            name,
            help,
            Kind::Histogram(bounds),
            labels,
            bounds.len() + 3,
        );
        Histogram { first, bounds }
    }

    fn declare(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        slots: usize,
    ) -> usize {
        assert!(valid_name(name), "metric name {name:?} is not valid");
        for (label, _) in labels {
            assert!(valid_name(label), "label name {label:?} is not valid");
        }
        assert!(
            self.used + slots <= MAX_COUNTERS,
            "metric {name}: the scoreboard's {MAX_COUNTERS} slots are used up"
        );
        let first = self.used;
        self.used += slots;
        let series = Series {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            first,
        };
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(family) => {
                assert!(
                    family.kind == kind,
                    "metric {name} declared twice, differently"
                );
                family.series.push(series);
            }
            None => self.families.push(Family {
                name: name.to_owned(),
                help: help.to_owned(),
                kind,
                series: vec![series],
            }),
        }
        first
    }

    /// Writes every family in Prometheus' text format, with `values` the
    /// fleet's sums of the board's slots.
    pub(crate) fn render(&self, values: &[u64], out: &mut String) {
        let at = |i: usize| values.get(i).copied().unwrap_or(0);
        for family in &self.families {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Histogram(_) => "histogram",
            };
            header(out, &family.name, &family.help, kind);
            for series in &family.series {
                let labels = &series.labels;
                match family.kind {
                    Kind::Counter => sample(out, &family.name, labels, at(series.first) as f64),
                    Kind::Histogram(bounds) => {
                        let bucket = format!("{}_bucket", family.name);
                        let mut total = 0;
                        for (i, bound) in bounds.iter().map(Some).chain([None]).enumerate() {
                            total += at(series.first + i);
                            let le = bound.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                            let mut with_le = labels.clone();
                            with_le.push(("le".to_owned(), le));
                            sample(out, &bucket, &with_le, total as f64);
                        }
                        let sum = at(series.first + bounds.len() + 1) as f64 / SUM_SCALE;
                        sample(out, &format!("{}_sum", family.name), labels, sum);
                        let count = at(series.first + bounds.len() + 2) as f64;
                        sample(out, &format!("{}_count", family.name), labels, count);
                    }
                }
            }
        }
    }
}

/// A metric or label name as Prometheus allows: `[a-zA-Z_:][a-zA-Z0-9_:]*`
/// (labels may not have colons, nor start with `__`; checked loosely).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A family's `# HELP` and `# TYPE` lines.
pub(crate) fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', r"\\").replace('\n', r"\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line: `name{label="value",...} value`.
pub(crate) fn sample<K: AsRef<str>, V: AsRef<str>>(
    out: &mut String,
    name: &str,
    labels: &[(K, V)],
    value: f64,
) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let v = v
                .as_ref()
                .replace('\\', r"\\")
                .replace('"', "\\\"")
                .replace('\n', r"\n");
            let _ = write!(out, "{}=\"{v}\"", k.as_ref());
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// A sample value as Prometheus reads it.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_from_summed_slots() {
        let mut m = Metrics::new();
        let done = m.counter(
            "jobs_total",
            "Jobs.",
            &[("queue", "a"), ("outcome", "done")],
        );
        let failed = m.counter(
            "jobs_total",
            "Jobs.",
            &[("queue", "a\"b"), ("outcome", "failed")],
        );
        let took = m.histogram("took_seconds", "Time.", &[("queue", "a")], &[0.1, 1.0]);
        let mut values = vec![0u64; MAX_COUNTERS];
        values[done.0] = 7;
        values[failed.0] = 2;
        for v in [0.05, 0.5, 0.5, 3.0] {
            for (slot, n) in took.slots(v) {
                values[slot] += n;
            }
        }
        let mut out = String::new();
        m.render(&values, &mut out);
        assert_eq!(
            out,
            "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\n\
             jobs_total{queue=\"a\",outcome=\"done\"} 7\n\
             jobs_total{queue=\"a\\\"b\",outcome=\"failed\"} 2\n\
             # HELP took_seconds Time.\n# TYPE took_seconds histogram\n\
             took_seconds_bucket{queue=\"a\",le=\"0.1\"} 1\n\
             took_seconds_bucket{queue=\"a\",le=\"1\"} 3\n\
             took_seconds_bucket{queue=\"a\",le=\"+Inf\"} 4\n\
             took_seconds_sum{queue=\"a\"} 4.05\n\
             took_seconds_count{queue=\"a\"} 4\n"
        );
    }

    #[test]
    #[should_panic(expected = "slots are used up")]
    fn declaring_past_the_board_panics() {
        let mut m = Metrics::new();
        for i in 0..=MAX_COUNTERS {
            m.counter("c_total", "C.", &[("n", &i.to_string())]);
        }
    }

    #[test]
    #[should_panic(expected = "is not valid")]
    fn a_bad_name_panics() {
        Metrics::new().counter("jobs-total", "Jobs.", &[]);
    }
}
