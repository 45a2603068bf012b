//! The channel's metadata log in a memfd (`hvtrace-meta-<channel>`): the
//! host's writable mapping, sealed so nobody else can ever map it writable
//! (as the data memfds), and the [`MetaLog`] laid over it. Consumers map it
//! read-only and follow the published length; see `hvtrace_core::metalog`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use hvtrace_core::metalog::{MetaLog, MetaLogFull, META_HEADER_LEN};
use hvtrace_proto::MAX_METADATA_LEN;
use hvtrace_sys::memfd;
use hvtrace_sys::mmap::SharedMapping;

/// A metadata log, its memory and its descriptor.
pub(crate) struct MetaMem {
    // Declared first: `log` borrows `map` and must be dropped before it.
    log: MetaLog<'static>,
    map: SharedMapping,
    fd: OwnedFd,
}

impl MetaMem {
    /// Creates the log holding `initial` (the channel's metadata as it
    /// stands) with room for `room` more bytes of TSDL: the memfd is that
    /// size rounded up to a page, and its pages cost memory only once
    /// written. Fails if that would pass [`MAX_METADATA_LEN`], which a
    /// consumer refuses.
    pub(crate) fn new(channel: &str, initial: &str, room: usize) -> io::Result<MetaMem> {
        let len = (META_HEADER_LEN + initial.len()).saturating_add(room).next_multiple_of(4096) as u64;
        if len > MAX_METADATA_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the metadata log would need {len} bytes, a consumer maps at most {MAX_METADATA_LEN}"),
            ));
        }
        let fd = memfd::create_memfd(&format!("hvtrace-meta-{channel}"), len)?;
        let map = SharedMapping::map_rw(&fd, len as usize)?;
        memfd::seal_for_readers(&fd)?;
        // SAFETY: the mapping is `len` bytes, page aligned, lives as long as
        // `self` (and the log is dropped first, see the field order);
        // nothing else in this process writes it.
        let mut log = unsafe { MetaLog::create(map.as_mut_ptr(), len as usize) }
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        log.append(initial.as_bytes()).map_err(|_| io::Error::other("the metadata log cannot hold its own start"))?;
        Ok(MetaMem { log, map, fd })
    }

    /// Appends whole TSDL blocks and publishes them (see [`MetaLog::append`]).
    pub(crate) fn append(&mut self, text: &str) -> Result<u64, MetaLogFull> {
        self.log.append(text.as_bytes())
    }

    /// A read-only descriptor of the memfd, for a consumer.
    pub(crate) fn fd_read_only(&self) -> io::Result<OwnedFd> {
        memfd::reopen_read_only(self.fd.as_fd())
    }

    /// Size of the memfd in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }
}
