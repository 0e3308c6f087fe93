//! Bounds-checked access to frame bytes, the one primitive the parser is built on.
//!
//! The XDP program implements [`Frame`] over its context (`data`/`data_end`, the check
//! the verifier wants to see); userspace tests implement it over a byte slice. The
//! parser is generic over it, so both run the same code.

use crate::headers::Wire;

pub trait Frame {
    /// Bytes from the start of the frame to its end.
    fn len(&self) -> usize;

    /// The `T` at byte `off`, if the frame holds all of it.
    fn at<T: Wire>(&self, off: usize) -> Option<&T>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Frame for [u8] {
    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline(always)]
    fn at<T: Wire>(&self, off: usize) -> Option<&T> {
        let end = off.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(off..end)?;
        // SAFETY: `T: Wire` has alignment 1 and accepts any bytes; `bytes` is exactly
        // `size_of::<T>()` long and borrowed for the returned lifetime.
        Some(unsafe { &*bytes.as_ptr().cast::<T>() })
    }
}

/// A [`Frame`] whose bytes can be rewritten in place (the COOKIE reply is built where
/// the HELLO was).
pub trait FrameMut: Frame {
    /// The `T` at byte `off`, writable, if the frame holds all of it.
    fn at_mut<T: Wire>(&mut self, off: usize) -> Option<&mut T>;
}

impl FrameMut for [u8] {
    #[inline(always)]
    fn at_mut<T: Wire>(&mut self, off: usize) -> Option<&mut T> {
        let end = off.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get_mut(off..end)?;
        // SAFETY: as in `at`; the borrow is exclusive for the returned lifetime.
        Some(unsafe { &mut *bytes.as_mut_ptr().cast::<T>() })
    }
}
