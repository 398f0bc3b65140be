//! Memory limits: one policy for children and for the resident programs
//! their workers run.
//!
//! A process is recycled (replaced by a fresh one, gracefully) when its
//! resident memory (RSS) passes `rss` at one reading, or its proportional
//! memory (PSS: shared pages split between their sharers, so copy-on-write
//! pages a child shares with the master are not counted in full) passes
//! `pss` at `readings` readings in a row, a second apart: PSS walks every
//! mapping of the process, and a single peak (a big job) should not recycle
//! it.

/// Limits in bytes; `None`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Resident memory over which the process is recycled at once
    /// (`--reload-on-rss`).
    pub rss: Option<u64>,
    /// Proportional memory over which it is recycled after `readings`
    /// readings in a row (`--max-memory`).
    pub pss: Option<u64>,
    /// Readings over `pss` in a row that recycle it (at least 1).
    pub readings: u32,
}

impl Default for MemoryLimits {
    fn default() -> MemoryLimits {
        MemoryLimits {
            rss: None,
            pss: None,
            readings: 3,
        }
    }
}

impl MemoryLimits {
    /// Limits given in megabytes, as the command line gives them (0 or
    /// `None`: no limit).
    pub fn from_megabytes(rss: Option<u64>, pss: Option<u64>, readings: u32) -> MemoryLimits {
        let bytes = |mb: Option<u64>| mb.filter(|n| *n > 0).map(|mb| mb * 1024 * 1024);
        MemoryLimits {
            rss: bytes(rss),
            pss: bytes(pss),
            readings: readings.max(1),
        }
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.rss.is_some() || self.pss.is_some()
    }

    /// Whether `bytes` of resident memory (`None`: not read) pass `rss`.
    pub(crate) fn rss_over(&self, bytes: Option<u64>) -> bool {
        matches!((self.rss, bytes), (Some(limit), Some(bytes)) if bytes >= limit)
    }
}

/// A process's standing against its PSS limit: readings over it in a row.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PssReadings {
    over: u32,
}

impl PssReadings {
    /// Counts a reading of `bytes` (`None`: unreadable, as under): one more
    /// over the limit, or a fresh start; whether it is now over for
    /// `readings` in a row.
    pub(crate) fn read(&mut self, limits: &MemoryLimits, bytes: Option<u64>) -> bool {
        let over = matches!((limits.pss, bytes), (Some(limit), Some(bytes)) if bytes >= limit);
        self.over = if over { self.over + 1 } else { 0 };
        self.over >= limits.readings.max(1)
    }

    /// Starts over (the process was recycled).
    #[cfg(feature = "queue")]
    pub(crate) fn reset(&mut self) {
        self.over = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_recycles_after_readings_in_a_row_rss_at_once() {
        let limits = MemoryLimits::from_megabytes(Some(200), Some(100), 3);
        let mb = |n: u64| Some(n * 1024 * 1024);
        let mut pss = PssReadings::default();
        assert!(!pss.read(&limits, mb(150)));
        assert!(!pss.read(&limits, mb(150)));
        assert!(!pss.read(&limits, mb(50)), "a reading under starts over");
        assert!(!pss.read(&limits, mb(150)));
        assert!(!pss.read(&limits, mb(150)));
        assert!(pss.read(&limits, mb(150)));
        assert!(limits.rss_over(mb(200)) && !limits.rss_over(mb(199)));
        assert!(!limits.rss_over(None));
        let none = MemoryLimits::from_megabytes(Some(0), None, 0);
        assert!(!none.any());
        assert_eq!(none.readings, 1);
    }
}
