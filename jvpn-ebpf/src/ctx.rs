//! Bounds-checked access to the frame of an XDP context: [`Frame`] for the shared
//! parser, and writable views for the programs that edit headers.

use aya_ebpf::programs::XdpContext;
use jvpn_common::{
    frame::{Frame, FrameMut},
    headers::Wire,
};

pub struct Ctx<'a>(pub &'a XdpContext);

impl Frame for Ctx<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn at<T: Wire>(&self, off: usize) -> Option<&T> {
        let start = self.0.data();
        if start + off + core::mem::size_of::<T>() > self.0.data_end() {
            return None;
        }
        // SAFETY: bounds checked against data_end just above; T has alignment 1.
        Some(unsafe { &*((start + off) as *const T) })
    }
}

impl FrameMut for Ctx<'_> {
    #[inline(always)]
    fn at_mut<T: Wire>(&mut self, off: usize) -> Option<&mut T> {
        // SAFETY: bounds-checked by `ptr_mut`; T has alignment 1 and takes any bytes,
        // and `&mut self` keeps other views of this context from being used meanwhile.
        self.ptr_mut::<T>(off).map(|p| unsafe { &mut *p })
    }
}

impl Ctx<'_> {
    /// Writable pointer to a `T` at `off`, bounds-checked like [`Frame::at`] (several
    /// may be held at once, unlike [`FrameMut::at_mut`]).
    #[inline(always)]
    pub fn ptr_mut<T: Wire>(&self, off: usize) -> Option<*mut T> {
        let start = self.0.data();
        if start + off + core::mem::size_of::<T>() > self.0.data_end() {
            return None;
        }
        Some((start + off) as *mut T)
    }
}
