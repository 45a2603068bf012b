//! Rings placed in caller-provided memory (a memfd mapping, hypervisor pages).
//!
//! This is where raw regions become typed views; the casts are sound because
//! every shared word is an `AtomicU64` (any bit pattern is valid), the regions
//! are checked for size and 64-byte alignment, and the reader never stores
//! into the data region (which the consumer maps read-only).

use core::ptr::NonNull;

use crate::layout::{Geometry, GeometryError, Mode, RingCtrl, RingHeader, SubbufState};
use crate::ring::{Ring, RingReader, RingWords, StreamId};
use crate::sync::AtomicU64;

/// Checks a region and returns typed views of its words.
///
/// # Safety
/// `data` must be valid for reads of `data_len` bytes and `ctrl` for reads and
/// writes of `ctrl_len` bytes, for `'a`.
unsafe fn words<'a>(
    data: *const u8,
    data_len: usize,
    ctrl: *mut u8,
    ctrl_len: usize,
    geo: Geometry,
) -> Result<(RingWords<'a>, NonNull<u8>), GeometryError> {
    if (data_len as u64) < geo.data_len()
        || (ctrl_len as u64) < geo.ctrl_len()
        || !(data as usize).is_multiple_of(64)
        || !(ctrl as usize).is_multiple_of(64)
    {
        return Err(GeometryError::Region);
    }
    let n = geo.num_subbuf as usize;
    // SAFETY: sizes and alignment checked above; all fields are AtomicU64 or
    // padding integers, valid for any bytes; the caller vouches for validity.
    unsafe {
        let hdr = &*(data as *const RingHeader);
        let sb = core::slice::from_raw_parts(data.add(core::mem::size_of::<RingHeader>()) as *const SubbufState, n);
        let rc = &*(ctrl as *const RingCtrl);
        let claims = core::slice::from_raw_parts(ctrl.add(core::mem::size_of::<RingCtrl>()) as *const AtomicU64, n);
        let bytes = NonNull::new(data.add(geo.subbufs_offset() as usize) as *mut u8).ok_or(GeometryError::Region)?;
        Ok((RingWords { hdr, sb, ctrl: rc, claims }, bytes))
    }
}

impl<'a> Ring<'a> {
    /// Formats an empty ring in `data` (producer-owned) and `ctrl` (consumer-writable).
    ///
    /// # Safety
    /// `data` must be valid for reads and writes of `data_len` bytes and `ctrl`
    /// of `ctrl_len` bytes for `'a`; nothing else in this process may write
    /// `data` while the ring exists.
    pub unsafe fn create(
        data: *mut u8,
        data_len: usize,
        ctrl: *mut u8,
        ctrl_len: usize,
        geo: Geometry,
        mode: Mode,
        id: StreamId,
    ) -> Result<Ring<'a>, GeometryError> {
        // SAFETY: forwarded caller guarantees.
        let (w, bytes) = unsafe { words(data, data_len, ctrl, ctrl_len, geo)? };
        // SAFETY: `bytes` covers the sub-buffer area of a region the caller lent us.
        unsafe { Ring::from_parts(w, bytes, geo, mode, id) }
    }
}

impl<'a> RingReader<'a> {
    /// Attaches to a ring formatted by [`Ring::create`]; validates its header.
    ///
    /// # Safety
    /// `data` must be valid for reads of `data_len` bytes and `ctrl` for reads
    /// and writes of `ctrl_len` bytes, for `'a`.
    pub unsafe fn attach(
        data: *const u8,
        data_len: usize,
        ctrl: *mut u8,
        ctrl_len: usize,
    ) -> Result<RingReader<'a>, GeometryError> {
        if data_len < core::mem::size_of::<RingHeader>() || !(data as usize).is_multiple_of(64) {
            return Err(GeometryError::Region);
        }
        // SAFETY: size and alignment checked; the caller vouches for validity.
        let hdr = unsafe { &*(data as *const RingHeader) };
        let geo = Geometry::new(
            hdr.subbuf_size.load(core::sync::atomic::Ordering::Relaxed),
            hdr.num_subbuf.load(core::sync::atomic::Ordering::Relaxed),
        )?;
        // SAFETY: forwarded caller guarantees.
        let (w, bytes) = unsafe { words(data, data_len, ctrl, ctrl_len, geo)? };
        // SAFETY: `bytes` is the sub-buffer area of the region.
        unsafe { RingReader::from_parts(w, bytes) }
    }
}
