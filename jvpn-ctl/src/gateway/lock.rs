//! One controller per data plane: an exclusive `flock` on the pin directory, taken
//! before any map is opened. A second `jvpn-ctl gateway` on the same pins stops at
//! once, naming the holder, and changes nothing (it used to purge the live
//! controller's map entries first and fail afterwards).
//!
//! The directory itself is locked because bpffs holds no regular files; the kernel
//! drops the lock when the holder exits, `kill -9` included, so nothing goes stale.
//! The holder's pid comes from `/proc/locks`, not from a pid file that could lie.

use std::{
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another controller{} holds the data plane pinned at {}: stop it first \
         (one controller per data plane)",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        dir.display()
    )]
    Held { dir: PathBuf, holder: Option<u32> },
    #[error("locking the pin directory {}: {cause}", dir.display())]
    Io { dir: PathBuf, cause: io::Error },
}

/// Held for as long as the controller runs; released when dropped or at exit.
#[derive(Debug)]
pub struct ControllerLock {
    _dir: File,
}

impl ControllerLock {
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io_err = |cause| LockError::Io {
            dir: dir.to_path_buf(),
            cause,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let f = File::open(dir).map_err(io_err)?;
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(Self { _dir: f });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = f.metadata().ok().and_then(|m| holder_of(m.dev(), m.ino()));
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(io_err(e))
    }
}

/// The pid holding a FLOCK on inode `ino` of device `dev`, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF`).
fn holder_of(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // A waiting lock shows as "1: -> FLOCK ...": skip those.
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_names_this_process() {
        let dir = std::env::temp_dir().join(format!("jvpn-lock-{}", std::process::id()));
        let first = ControllerLock::acquire(&dir).unwrap();
        let err = ControllerLock::acquire(&dir).unwrap_err();
        match &err {
            LockError::Held { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
            e => panic!("{e}"),
        }
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id()))
        );
        drop(first);
        let again = ControllerLock::acquire(&dir);
        assert!(again.is_ok(), "released on drop");
        drop(again);
        let _ = std::fs::remove_dir(&dir);
    }
}
