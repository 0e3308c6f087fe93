//! A tmpfs mounted for one test or benchmark: a state directory that can be filled
//! for real, or one whose fsync costs nothing (to tell the disk's share of a figure
//! from the rest).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use jvpn_ctl::lab::stack::Stack;

/// A tmpfs on a directory, unmounted (lazily: a process may still hold a file in it)
/// when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()?;
        if !st.success() {
            return Err(std::io::Error::other(format!(
                "mount -t tmpfs on {} failed ({st})",
                dir.display()
            )));
        }
        Ok(Self(dir.to_owned()))
    }

    /// Writes a file until the filesystem is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("creating the filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Moves the lab gateway's state directory (store and key) onto a tmpfs of `size`:
/// stops the gateway (its sessions are kept), copies the files over, starts it again.
pub fn state_on_tmpfs(stack: &mut Stack, size: &str) -> std::io::Result<Tmpfs> {
    stack.stop("gateway");
    let state = stack.dir.join("state");
    let saved = stack.dir.join("state.saved");
    std::fs::rename(&state, &saved)?;
    let fs = Tmpfs::mount(&state, size)?;
    for f in std::fs::read_dir(&saved)? {
        let f = f?.path();
        if let Some(name) = f.file_name() {
            std::fs::copy(&f, state.join(name))?;
        }
    }
    stack.restart("gateway", false)?;
    Ok(fs)
}
