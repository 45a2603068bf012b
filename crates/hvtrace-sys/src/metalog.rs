//! [`MappedMetaLog`]: a consumer's reader of a channel's metadata log over a
//! read-only mapping it owns, so consumers follow the log without `unsafe`.

use std::io;

use hvtrace_core::metalog::MetaLogReader;

use crate::SharedMapping;

/// A [`MetaLogReader`] over a read-only mapping of the metadata memfd,
/// which it keeps alive.
pub struct MappedMetaLog {
    // Declared first: dropped before the mapping it points into.
    reader: MetaLogReader<'static>,
    _map: SharedMapping,
}

impl MappedMetaLog {
    /// Attaches to the log in `map` (the whole memfd, mapped read-only);
    /// fails with `InvalidData` if it is not a metadata log.
    pub fn attach(map: SharedMapping) -> io::Result<Self> {
        if map.is_writable() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the metadata log must be mapped read-only"));
        }
        // SAFETY: `map` is readable for `map.len()` bytes and owned by the
        // returned value (moving a `SharedMapping` does not move the mapped
        // memory), which lends the reader out only borrowed from itself and
        // drops it first. The writer stores through another mapping;
        // `MetaLogReader` reads only through atomics and volatile loads.
        let reader = unsafe { MetaLogReader::attach(map.as_ptr(), map.len()) }
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Self { reader, _map: map })
    }

    /// The reader, borrowed from the mapping it reads.
    pub fn reader(&self) -> &MetaLogReader<'_> {
        &self.reader
    }
}
