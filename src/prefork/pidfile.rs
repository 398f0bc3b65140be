//! The master's pidfile, held with `flock` while the master runs.
//!
//! A lock, not a check: reading the file and asking whether its pid lives
//! races with a second master doing the same, and a stale pid can name an
//! unrelated process. The kernel drops the lock when the master's process
//! ends, however it ends, so a file left behind by a SIGKILLed master is
//! taken over by the next one. The descriptor is close-on-exec and the
//! children never touch it: the lock belongs to the open file, which the
//! children share, so it is released only when the master and every child
//! holding the descriptor are gone (a child closes it as it starts).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::{PreforkError, io_error};
use crate::Pid;

/// A pidfile this master holds; removed when dropped in the master.
pub(super) struct Pidfile {
    path: PathBuf,
    lock: Option<Flock<File>>,
    owner: Pid,
}

impl Pidfile {
    /// Locks `path` (created if missing) and writes this process's pid.
    ///
    /// # Errors
    ///
    /// [`PreforkError::AlreadyRunning`] if another master holds it;
    /// [`PreforkError::Io`] if it cannot be opened or written.
    pub(super) fn create(path: &Path) -> Result<Pidfile, PreforkError> {
        let context = || format!("pidfile {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(io_error(context()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = text.trim().parse().ok().map(Pid::from_raw);
                return Err(PreforkError::AlreadyRunning {
                    pidfile: path.to_owned(),
                    pid,
                });
            }
            Err((_, errno)) => return Err(io_error(context())(errno.into())),
        };
        let owner = Pid::this();
        let written = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{owner}"));
        written.map_err(io_error(context()))?;
        Ok(Pidfile {
            path: path.to_owned(),
            lock: Some(lock),
            owner,
        })
    }

    /// In a forked child: closes the child's copy of the descriptor without
    /// unlocking (the lock is the master's) and without removing the file.
    pub(super) fn forget_in_child(mut self) {
        if let Some(lock) = self.lock.take() {
            // Dropping the `Flock` would unlock the master's lock (the open
            // file is shared), so forget it and close only this process's
            // descriptor.
            let fd = lock.as_raw_fd();
            std::mem::forget(lock);
            let _ = nix::unistd::close(fd);
        }
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if self.owner == Pid::this() && self.lock.is_some() {
            // Remove the name first, then unlock by closing: a master
            // starting now either finds no file or finds ours locked.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
