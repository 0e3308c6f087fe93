//! Secret and configuration files: the few file-system rules the protocol's files share
//! (private modes, warnings about exposed secrets, replace-by-rename so a crash never
//! leaves half a file).

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::ProtoError;

/// Logs a warning if a secret file can be read by group or others: not fatal (the
/// operator may have reasons), but worth knowing.
fn warn_if_exposed(path: &Path, meta: &fs::Metadata) {
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:04o}", mode & 0o7777),
            "secret file is accessible by group or others; chmod 600 it"
        );
    }
}

/// Reads a whole secret file and parses it with `parse`; warns if the file's mode
/// exposes it (only once it parsed: a file that is no secret needs no such warning).
pub(crate) fn read_secret<T>(
    path: &Path,
    parse: impl FnOnce(&[u8]) -> Result<T, ProtoError>,
) -> Result<T, ProtoError> {
    let bytes = fs::read(path).map_err(|e| ProtoError::io(path, e))?;
    let value = parse(&bytes)?;
    if let Ok(meta) = fs::metadata(path) {
        warn_if_exposed(path, &meta);
    }
    Ok(value)
}

/// A temporary name beside `path` for writing it whole before it takes `path`'s place.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `contents` to `tmp` with mode 0600 and fsyncs it. `mode` applies only to a
/// file it creates, so a stale temporary from a crashed run gets 0600 set as well.
pub(crate) fn write_private(tmp: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Replaces `path` with `contents` atomically (temporary file in the same directory,
/// mode 0600, fsync, rename).
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ProtoError> {
    let tmp = tmp_path(path);
    let result = write_private(&tmp, contents).and_then(|()| fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ProtoError::io(path, e)
    })
}

#[cfg(test)]
pub(crate) mod testdir {
    use std::path::{Path, PathBuf};

    /// A unique directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "jvpn-proto-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
