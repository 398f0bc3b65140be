//! The fields of `/proc/self/stat` the crate reads (proc(5)).

use std::fs;

/// One read of `/proc/self/stat`.
pub(crate) struct SelfStat(String);

impl SelfStat {
    pub(crate) fn read() -> Option<SelfStat> {
        fs::read_to_string("/proc/self/stat").ok().map(SelfStat)
    }

    /// Field `n`, numbered from 1 as in proc(5), for `n >= 3`.
    pub(crate) fn field(&self, n: usize) -> Option<u64> {
        // Field 2, the command name in parentheses, may hold spaces and
        // parentheses itself: the fields after it start past the last ')'.
        let rest = self.0.get(self.0.rfind(')')? + 2..)?;
        rest.split(' ')
            .nth(n.checked_sub(3)?)?
            .trim_end()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_after_a_command_name_with_spaces_and_parentheses() {
        let stat = SelfStat("42 (a b) c) S 1 2 3".to_owned());
        assert_eq!(stat.field(4), Some(1));
        assert_eq!(stat.field(6), Some(3));
        assert_eq!(stat.field(7), None);
        assert_eq!(stat.field(2), None);
        let own = SelfStat::read().unwrap();
        assert!(own.field(20).unwrap() >= 1, "num_threads");
    }
}
