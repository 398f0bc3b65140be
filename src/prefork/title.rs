//! Process titles, so `ps` shows `prefork: worker 3`.
//!
//! `ps` shows a process's command line, which lives in its original argv
//! memory (`/proc/self/stat` fields `arg_start`..`arg_end`). Overwriting that
//! area in place changes the title without any privilege; the thread name
//! (`comm`, 15 bytes, shown by `ps -o comm` and `top`) is set with prctl.

/// Sets the title as far as the platform allows; never fails.
pub(crate) fn set(title: &str) {
    set_comm(title);
    set_cmdline(title);
}

fn set_comm(title: &str) {
    let mut name = [0u8; 16];
    for (dst, src) in name.iter_mut().zip(title.bytes().take(15)) {
        *dst = src;
    }
    // SAFETY: `name` is NUL-terminated and outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

fn set_cmdline(title: &str) {
    let Some((start, end)) = argv_area() else {
        return;
    };
    let len = end.saturating_sub(start);
    if len < 2 {
        return;
    }
    let bytes = title.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: [start, end) is this process's argv string area, mapped
    // read-write on the initial stack for the life of the process. Nothing
    // in this crate keeps references into it; std reads it only through
    // `env::args()`, which afterwards sees the new title.
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, len);
        area[..n].copy_from_slice(&bytes[..n]);
        area[n..].fill(0);
    }
}

/// `arg_start` and `arg_end` from `/proc/self/stat` (fields 48 and 49).
fn argv_area() -> Option<(usize, usize)> {
    let stat = crate::procfs::SelfStat::read()?;
    Some((stat.field(48)? as usize, stat.field(49)? as usize))
}
