//! The metadata log: a channel's TSDL text in shared memory, append-only,
//! with a published length, so that event classes registered while a
//! consumer is attached reach it without a message and without a lock.
//!
//! ```text
//! offset size  field
//!      0    8  magic       b"HVTRMETA" (written at creation, before hand-out)
//!      8    8  capacity    bytes of text the log can hold (informative: a
//!                          reader trusts the size of its own mapping)
//!     16    8  published   bytes of text that are whole and final (AtomicU64)
//!     24   40  (zero)
//!     64  ...  text        TSDL, UTF-8; bytes `0..published` never change
//! ```
//!
//! One writer (the host, under its registry lock) appends whole top-level
//! blocks and only then stores the new length (Release). A reader loads the
//! length (Acquire) and copies `text[seen..published]`. The writer never
//! rewrites a published byte and never publishes part of a block, so every
//! published prefix is valid TSDL. A hostile writer can publish anything:
//! readers bound the length by their mapping and validate the text.

use core::sync::atomic::{AtomicU64, Ordering};

/// The eight bytes a metadata log starts with.
pub const META_MAGIC: [u8; 8] = *b"HVTRMETA";

/// Bytes before the text (the header, padded to a cache line).
pub const META_HEADER_LEN: usize = 64;

/// Why a region cannot hold (or is not) a metadata log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaLogError {
    /// Smaller than the header, or not 8-byte aligned.
    Region,
    /// The region does not start with [`META_MAGIC`].
    BadMagic,
}

impl core::fmt::Display for MetaLogError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MetaLogError::Region => "metadata log region too small or misaligned",
            MetaLogError::BadMagic => "not a metadata log (bad magic)",
        })
    }
}

/// The text did not fit: the log holds `capacity` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaLogFull {
    /// Text bytes the log can hold.
    pub capacity: u64,
}

/// The header words, as both sides view them.
#[repr(C)]
struct Header {
    magic: AtomicU64,
    capacity: AtomicU64,
    published: AtomicU64,
}

/// Checks a region and views its header.
///
/// # Safety
/// `base` must be valid for reads of `len` bytes for `'a`.
unsafe fn header<'a>(base: *const u8, len: usize) -> Result<&'a Header, MetaLogError> {
    if len < META_HEADER_LEN || !(base as usize).is_multiple_of(8) {
        return Err(MetaLogError::Region);
    }
    // SAFETY: size and alignment checked; every bit pattern is a valid
    // AtomicU64; the caller vouches for validity.
    Ok(unsafe { &*(base as *const Header) })
}

/// The writing side of a metadata log (the host's). Not `Sync`: one writer,
/// which the owner serializes (the host's registry lock).
pub struct MetaLog<'a> {
    hdr: &'a Header,
    text: *mut u8,
    capacity: usize,
    /// The writer's own copy of `published`: it never reads back what a
    /// reader could have written into shared memory.
    len: usize,
}

// SAFETY: the log only holds pointers into memory lent for 'a; moving it to
// another thread moves the only writer.
unsafe impl Send for MetaLog<'_> {}

impl<'a> MetaLog<'a> {
    /// Formats an empty log in `len` bytes at `base`: header, nothing published.
    ///
    /// # Safety
    /// `base` must be valid for reads and writes of `len` bytes for `'a`, and
    /// nothing else in this process may write them while the log exists.
    pub unsafe fn create(base: *mut u8, len: usize) -> Result<MetaLog<'a>, MetaLogError> {
        // SAFETY: forwarded caller guarantee.
        let hdr = unsafe { header(base, len)? };
        let capacity = len - META_HEADER_LEN;
        hdr.capacity.store(capacity as u64, Ordering::Relaxed);
        hdr.published.store(0, Ordering::Relaxed);
        // Release: pairs with the reader's Acquire load of the magic; in
        // practice the descriptor hand-off over the socket orders it too.
        hdr.magic.store(u64::from_ne_bytes(META_MAGIC), Ordering::Release);
        // SAFETY: the text area starts inside the region (len >= header).
        let text = unsafe { base.add(META_HEADER_LEN) };
        Ok(MetaLog { hdr, text, capacity, len: 0 })
    }

    /// Appends `text` and publishes it: the bytes first, then the length
    /// (Release), so a reader that sees the length sees the bytes. `text`
    /// must be whole top-level TSDL blocks. Returns the new published length.
    pub fn append(&mut self, text: &[u8]) -> Result<u64, MetaLogFull> {
        if text.len() > self.capacity - self.len {
            return Err(MetaLogFull { capacity: self.capacity as u64 });
        }
        // SAFETY: `len + text.len() <= capacity`: inside the text area, past
        // every published byte (which readers may be copying), written by
        // no one else in this process (`create`'s contract).
        unsafe { core::ptr::copy_nonoverlapping(text.as_ptr(), self.text.add(self.len), text.len()) };
        self.len += text.len();
        // Pairs with the Acquire load in `MetaLogReader::published`: whoever
        // reads this length reads the bytes before it.
        self.hdr.published.store(self.len as u64, Ordering::Release);
        Ok(self.len as u64)
    }
}

/// The reading side of a metadata log (a consumer's), over a mapping it
/// may only read. Trusts nothing in it but its own size.
pub struct MetaLogReader<'a> {
    hdr: &'a Header,
    text: *const u8,
    capacity: usize,
}

// SAFETY: shared reads of memory lent for 'a, through atomics and volatile
// loads only.
unsafe impl Send for MetaLogReader<'_> {}
// SAFETY: as above; no interior state of its own.
unsafe impl Sync for MetaLogReader<'_> {}

impl<'a> MetaLogReader<'a> {
    /// Attaches to a log made by [`MetaLog::create`]; checks its magic.
    ///
    /// # Safety
    /// `base` must be valid for reads of `len` bytes for `'a`.
    pub unsafe fn attach(base: *const u8, len: usize) -> Result<MetaLogReader<'a>, MetaLogError> {
        // SAFETY: forwarded caller guarantee.
        let hdr = unsafe { header(base, len)? };
        if hdr.magic.load(Ordering::Acquire) != u64::from_ne_bytes(META_MAGIC) {
            return Err(MetaLogError::BadMagic);
        }
        // SAFETY: inside the region (len >= header).
        let text = unsafe { base.add(META_HEADER_LEN) };
        Ok(MetaLogReader { hdr, text, capacity: len - META_HEADER_LEN })
    }

    /// The published length as the writer stored it (Acquire: pairs with
    /// the Release store in [`MetaLog::append`]). Unchecked: it may exceed
    /// [`capacity`](Self::capacity) or go backwards if the writer is hostile.
    pub fn published(&self) -> u64 {
        self.hdr.published.load(Ordering::Acquire)
    }

    /// Bytes of text this reader's region holds (its size, not the header's
    /// claim).
    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// Copies `text[from..from + out.len()]` into `out` with volatile loads
    /// (a hostile writer may be changing them: the caller validates the
    /// copy, never the shared bytes). Returns false, copying nothing, if
    /// the range is not inside the text area.
    pub fn copy(&self, from: u64, out: &mut [u8]) -> bool {
        let end = from.checked_add(out.len() as u64);
        if end.is_none_or(|e| e > self.capacity as u64) {
            return false;
        }
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `from + i < capacity` (checked above): inside the
            // region the caller lent for 'a.
            *b = unsafe { core::ptr::read_volatile(self.text.add(from as usize + i)) };
        }
        true
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;

    #[test]
    fn appends_are_published_whole_and_bounded() {
        let mut mem = vec![0u64; 16]; // 128 bytes: 64 of text
        let base = mem.as_mut_ptr().cast::<u8>();
        // SAFETY: `mem` outlives both views and is only written through `log`.
        let mut log = unsafe { MetaLog::create(base, 128) }.unwrap();
        // SAFETY: as above.
        let r = unsafe { MetaLogReader::attach(base, 128) }.unwrap();
        assert_eq!((r.published(), r.capacity()), (0, 64));
        assert_eq!(log.append(b"event { };\n"), Ok(11));
        assert_eq!(r.published(), 11);
        let mut out = [0u8; 11];
        assert!(r.copy(0, &mut out));
        assert_eq!(&out, b"event { };\n");
        assert_eq!(log.append(&[b'x'; 54]), Err(MetaLogFull { capacity: 64 }));
        assert_eq!(r.published(), 11, "a refused append publishes nothing");
        assert_eq!(log.append(&[b'x'; 53]), Ok(64));
        assert!(!r.copy(60, &mut [0u8; 5]), "a copy past the region is refused");
        assert!(r.copy(60, &mut [0u8; 4]));
    }

    #[test]
    fn a_region_without_the_magic_is_refused() {
        let mut mem = vec![0u64; 16];
        // SAFETY: `mem` is 128 bytes, alive for the call.
        let e = unsafe { MetaLogReader::attach(mem.as_mut_ptr().cast::<u8>(), 128) }.err();
        assert_eq!(e, Some(MetaLogError::BadMagic));
        // SAFETY: as above, but shorter than a header.
        let e = unsafe { MetaLogReader::attach(mem.as_mut_ptr().cast::<u8>(), 63) }.err();
        assert_eq!(e, Some(MetaLogError::Region));
    }
}
