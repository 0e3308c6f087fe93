//! A shared mapping of a `BPF_F_MMAPABLE` array's values: how the controller reads
//! `SESSION_STATS` and writes `NEXT_HOPS` without a system call per element.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::{IterableMap as _, MapData, array::Array};

/// `len` values of `T`, mapped for as long as this lives (the map's memory stays
/// allocated while a mapping or a reference holds it).
pub struct Mapping<T> {
    base: NonNull<T>,
    len: u32,
    bytes: usize,
}

// SAFETY: plain shared memory; the views on top say how it is accessed.
unsafe impl<T> Send for Mapping<T> {}

impl<T: aya::Pod> Mapping<T> {
    pub fn new(map: &Array<MapData, T>, writable: bool) -> std::io::Result<Self> {
        let len = map.len();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = (len as usize * size_of::<T>()).div_ceil(page) * page;
        let fd = map.map().fd().as_fd().as_raw_fd();
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the size
        // and the flags (MMAPABLE, writable) against the array and fails otherwise.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), bytes, prot, libc::MAP_SHARED, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<T>())
            .ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(Self { base, len, bytes })
    }
}

impl<T> Mapping<T> {
    /// Values in the array.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Element `i` (None beyond the array), to be read or written through volatile
    /// or atomic accesses only: the kernel uses the same memory.
    pub fn get(&self, i: u32) -> Option<*mut T> {
        // SAFETY: `i` < len, so the element lies inside the mapping.
        (i < self.len).then(|| unsafe { self.base.as_ptr().add(i as usize) })
    }
}

impl<T> Drop for Mapping<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
