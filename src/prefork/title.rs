//! Process titles, so `ps` shows `prefork: child 3`.
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
    // The kernel keeps 15 bytes; a NUL inside the title would end it early.
    let bytes: Vec<u8> = title.bytes().take_while(|b| *b != 0).take(15).collect();
    if let Ok(name) = std::ffi::CString::new(bytes) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

fn set_cmdline(title: &str) {
    let Some((start, end)) = crate::procfs::argv_area() else {
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
