//! The pin directory on bpffs: maps and XDP links live there, so the data plane keeps
//! forwarding while the controller restarts, and a restart picks up where it left off.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};

use super::DatapathError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `dir` exists on a bpffs, mounting bpffs on /sys/fs/bpf if nothing is
/// mounted there (systemd normally does; minimal hosts and containers may not).
pub fn prepare_dir(dir: &Path) -> Result<(), DatapathError> {
    let base = Path::new("/sys/fs/bpf");
    if dir.starts_with(base) && !is_bpffs(base) {
        let target = CString::new("/sys/fs/bpf").expect("no NUL");
        let fstype = CString::new("bpf").expect("no NUL");
        // SAFETY: plain mount(2) with valid C strings.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(DatapathError::BpfFs {
                path: base.into(),
                detail: format!(
                    "not mounted and mounting failed ({}); run `mount -t bpf bpf /sys/fs/bpf`",
                    std::io::Error::last_os_error()
                ),
            });
        }
        tracing::info!("mounted bpffs on /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir).map_err(|e| DatapathError::BpfFs {
        path: dir.into(),
        detail: format!("cannot create the pin directory: {e}"),
    })?;
    if !is_bpffs(dir) {
        return Err(DatapathError::BpfFs {
            path: dir.into(),
            detail: "not on a bpffs mount; choose a pin directory under /sys/fs/bpf".into(),
        });
    }
    Ok(())
}

/// What a pinned map must look like to be reused by this build.
pub struct Expect {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Checks a pinned map left by an earlier run before the loader reuses it: aya reuses
/// any map found at the path, and a layout change would corrupt the data plane.
pub fn check_compatible(path: &Path, e: &Expect) -> Result<(), DatapathError> {
    if !path.exists() {
        return Ok(());
    }
    let info = MapInfo::from_pin(path).map_err(|cause| DatapathError::Map {
        name: e.name,
        cause,
    })?;
    let mut diffs = Vec::new();
    match info.map_type() {
        Ok(t) if t == e.map_type => {}
        Ok(t) => diffs.push(format!("type {t:?}, expected {:?}", e.map_type)),
        Err(cause) => diffs.push(format!("type unknown ({cause}), expected {:?}", e.map_type)),
    }
    for (what, found, want) in [
        ("key size", info.key_size(), e.key_size),
        ("value size", info.value_size(), e.value_size),
        ("max entries", info.max_entries(), e.max_entries),
    ] {
        if found != want {
            diffs.push(format!("{what} {found}, expected {want}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(DatapathError::IncompatiblePin {
            path: path.into(),
            detail: diffs.join(", "),
        })
    }
}

/// How a pinned map this build replaces differs from what it wants.
pub enum Outdated {
    /// Only its number of entries (`DROPS` after reasons were added).
    Entries,
    /// Only its value size, which was this (`SESSION_STATS` before the slot copies).
    ValueSize(u32),
}

/// Removes a pinned map that matches `e` but for the difference `how`, so that the
/// loader creates it anew as this build wants it: its contents are lost (counts
/// restart from zero; the running program keeps using the old map until its link
/// gets the new program). Anything else is left to [`check_compatible`].
pub fn replace_if_outdated(path: &Path, e: &Expect, how: Outdated) -> Result<(), DatapathError> {
    if !path.exists() {
        return Ok(());
    }
    let info = MapInfo::from_pin(path).map_err(|cause| DatapathError::Map {
        name: e.name,
        cause,
    })?;
    let same_type = matches!(info.map_type(), Ok(t) if t == e.map_type);
    let (value, entries) = (info.value_size(), info.max_entries());
    let outdated = match how {
        Outdated::Entries => value == e.value_size && entries != e.max_entries,
        Outdated::ValueSize(old) => value == old && entries == e.max_entries,
    };
    if same_type && info.key_size() == e.key_size && outdated {
        std::fs::remove_file(path).map_err(|err| DatapathError::Pin {
            path: path.into(),
            detail: format!("removing the outdated map: {err}"),
        })?;
        tracing::warn!(
            map = e.name,
            value_size = value,
            max_entries = entries,
            "pinned map of an older layout: created anew, its counts restart from zero"
        );
    }
    Ok(())
}

/// Pinned XDP links are named `<LINK_PREFIX><iface>`.
pub const LINK_PREFIX: &str = "link_";

pub fn link_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{iface}"))
}
