//! `SESSION_STATS` read through a shared mapping of the array (`BPF_F_MMAPABLE`)
//! instead of one `bpf(BPF_MAP_LOOKUP_ELEM)` per session: the controller polls 8192
//! sessions a tick, 20 ticks a second, and those system calls were ~40 % of its CPU
//! under keepalive load (docs/gateway.md, "Keepalives at scale").

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::{IterableMap as _, MapData, array::Array};
use jvpn_common::maps::SessionStats;

/// A read-only view of the whole array, valid while the mapping lives (the map's
/// memory stays allocated as long as some mapping or reference holds it).
pub struct StatsView {
    base: NonNull<SessionStats>,
    len: u32,
    bytes: usize,
}

// SAFETY: the mapping is plain shared memory, only ever read through volatile loads.
unsafe impl Send for StatsView {}

impl StatsView {
    pub fn new(stats: &Array<MapData, SessionStats>) -> std::io::Result<Self> {
        let len = stats.len();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len as usize * size_of::<SessionStats>()).div_ceil(page) * page;
        let fd = stats.map().fd().as_fd().as_raw_fd();
        // SAFETY: a fresh read-only shared mapping of the map's fd; the kernel checks
        // the size against the array and the flag (MMAPABLE) and fails otherwise.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<SessionStats>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self { base, len, bytes })
    }

    /// The counters in `slot` (None beyond the array). Each field is read once; the
    /// relay adds to them concurrently, so fields may be from slightly different
    /// instants, as with a lookup.
    pub fn get(&self, slot: u32) -> Option<SessionStats> {
        if slot >= self.len {
            return None;
        }
        // SAFETY: `slot` < len, so the element lies inside the mapping; volatile loads
        // because the kernel writes it behind our back; the type is plain integers.
        Some(unsafe { self.base.as_ptr().add(slot as usize).read_volatile() })
    }
}

impl Drop for StatsView {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
