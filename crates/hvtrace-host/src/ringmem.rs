//! One CPU ring in memfds: the producer's writable mapping of its data memfd
//! (sealed so nobody else can ever map it writable), and the [`Ring`] laid
//! over it. The one place in the host where a ring borrows raw memory.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use hvtrace_core::{Geometry, Mode, Ring, StreamId};
use hvtrace_sys::eventfd::EventFd;
use hvtrace_sys::memfd;
use hvtrace_sys::mmap::SharedMapping;

/// A ring, its memory and its wake-up eventfd.
pub struct RingMem {
    // Field order matters: `ring` borrows `data_map` (and the channel's
    // control mapping) and must be dropped before them.
    ring: Ring<'static>,
    data_map: SharedMapping,
    data_fd: OwnedFd,
    /// Signalled when a sub-buffer is delivered.
    pub wake: EventFd,
    /// CPU number.
    pub cpu: u32,
}

impl RingMem {
    /// Creates the data memfd `hvtrace-data-<channel>-cpu<N>`, maps it, seals
    /// it against any future writable mapping, and formats the ring; its
    /// consumer words go at `ctrl_ptr` (inside the channel's control mapping).
    ///
    /// # Safety
    /// `ctrl_ptr` must point to `geo.ctrl_len()` bytes of a mapping that
    /// outlives the returned value.
    pub unsafe fn new(
        channel: &str,
        geo: Geometry,
        mode: Mode,
        id: StreamId,
        ctrl_ptr: *mut u8,
    ) -> io::Result<RingMem> {
        let len = geo.data_len();
        let data_fd = memfd::create_memfd(&format!("hvtrace-data-{channel}-cpu{}", id.cpu), len)?;
        let data_map = SharedMapping::map_rw(&data_fd, len as usize)?;
        memfd::seal_for_readers(&data_fd)?;
        // Fault every page in now: a first touch on the record path costs
        // ~30k cycles (measured on the KVM host), once per page per channel.
        for page in (0..len as usize).step_by(4096) {
            // SAFETY: `page` < len, inside the mapping; nothing else uses it yet.
            unsafe { data_map.as_mut_ptr().add(page).write_volatile(0) };
        }
        // SAFETY: the mapping is `len` bytes, lives as long as `self` (and the
        // ring is dropped first, see the field order); `ctrl_ptr` is the
        // caller's promise. Nothing else in this process writes the data.
        let ring = unsafe {
            Ring::create(data_map.as_mut_ptr(), len as usize, ctrl_ptr, geo.ctrl_len() as usize, geo, mode, id)
        }
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(RingMem { ring, data_map, data_fd, wake: EventFd::new()?, cpu: id.cpu })
    }

    /// The ring.
    #[inline]
    pub fn ring(&self) -> &Ring<'static> {
        &self.ring
    }

    /// A read-only descriptor of the data memfd, for a consumer.
    pub fn data_fd_read_only(&self) -> io::Result<OwnedFd> {
        memfd::reopen_read_only(self.data_fd.as_fd())
    }

    /// Length of the data memfd.
    pub fn data_len(&self) -> u64 {
        self.data_map.len() as u64
    }
}
