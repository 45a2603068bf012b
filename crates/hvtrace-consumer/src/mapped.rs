//! Readers over mappings the consumer owns: [`MappedReader`], a ring's
//! [`RingReader`], and [`MappedMetaLog`], the channel's metadata log's
//! [`MetaLogReader`]. The one module of the consumer with `unsafe`: the
//! core's readers borrow raw memory, and these tie that borrow to a
//! [`SharedMapping`] (`hvtrace-sys`, which knows nothing of rings) kept
//! alive beside them, so the rest of the consumer, the benchmarks and the
//! host's tests attach without `unsafe`.
#![warn(clippy::undocumented_unsafe_blocks)]

use std::io;
use std::sync::Arc;

use hvtrace_core::metalog::MetaLogReader;
use hvtrace_core::ring::PacketRef;
use hvtrace_core::RingReader;
use hvtrace_sys::SharedMapping;

/// A [`RingReader`] attached to a ring's data mapping (usually read-only)
/// and its part of a channel's control mapping (read-write, shared by all
/// rings of the channel), which it keeps alive.
pub struct MappedReader {
    // Declared first: dropped before the mappings it points into.
    reader: RingReader<'static>,
    data: SharedMapping,
    _ctrl: Arc<SharedMapping>,
}

impl MappedReader {
    /// Attaches to the ring in `data`, whose consumer words are the
    /// `ctrl_len` bytes at `ctrl_offset` of `ctrl`; validates the ring header
    /// (magic, layout version, geometry) and the region sizes.
    ///
    /// Fails with `InvalidInput` if `ctrl` is not writable or the control
    /// range is outside it, and `InvalidData` if the data region does not
    /// hold a valid ring of this layout or a region is too small or
    /// misaligned for its geometry.
    pub fn attach(data: SharedMapping, ctrl: Arc<SharedMapping>, ctrl_offset: u64, ctrl_len: u64) -> io::Result<Self> {
        if !ctrl.is_writable() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the control mapping must be writable"));
        }
        let end = ctrl_offset.checked_add(ctrl_len);
        if ctrl_len == 0 || end.is_none_or(|e| e > ctrl.len() as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("control range {ctrl_offset}+{ctrl_len} is outside the {}-byte control mapping", ctrl.len()),
            ));
        }
        // SAFETY: `data` is mapped readable for `data.len()` bytes and `ctrl`
        // readable and writable (checked above) for `ctrl_offset + ctrl_len`
        // bytes; both mappings are owned by the returned value (moving a
        // `SharedMapping` does not move the mapped memory), which hands the
        // reader out only borrowed from itself, and drops it first. Concurrent
        // writes by the producer are what `RingReader` is built for.
        let reader = unsafe {
            RingReader::attach(
                data.as_ptr(),
                data.len(),
                ctrl.as_mut_ptr().add(ctrl_offset as usize),
                ctrl_len as usize,
            )
        }
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Self { reader, data, _ctrl: ctrl })
    }

    /// The reader, borrowed from the mappings it reads.
    pub fn reader(&self) -> &RingReader<'_> {
        &self.reader
    }

    /// The bytes of a packet [`MappedReader::reader`] found ready, to be
    /// written out as they are; [`RingReader::release`] then says whether
    /// they were intact (overwrite mode).
    pub fn packet_bytes(&self, p: &PacketRef) -> &[u8] {
        // SAFETY: this mapping is read-only (`attach` got a read-only
        // descriptor): the ring's writer stores through another mapping,
        // normally in another process, so no Rust reference of this process
        // covers the stores; the bytes may change under the slice only in
        // overwrite mode, which `release` detects afterwards.
        unsafe { self.reader.packet_bytes(p) }
    }

    /// The ring's data mapping.
    pub fn data(&self) -> &SharedMapping {
        &self.data
    }
}

impl std::fmt::Debug for MappedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedReader").field("cpu", &self.reader.cpu()).field("data", &self.data).finish()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use hvtrace_core::ring::{Poll, Ring, StreamId};
    use hvtrace_core::{Geometry, Mode};
    use hvtrace_sys::memfd::{create_memfd, reopen_read_only};

    #[test]
    fn attaches_read_only_and_reads_packets() {
        let geo = Geometry::new(4096, 4).unwrap();
        let dfd = create_memfd("hvtrace-data-mapped-reader", geo.data_len()).unwrap();
        let cfd = create_memfd("hvtrace-ctrl-mapped-reader", 4096).unwrap();
        let pdata = SharedMapping::map_rw(&dfd, geo.data_len() as usize).unwrap();
        let pctrl = SharedMapping::map_rw(&cfd, 4096).unwrap();
        // SAFETY: both mappings outlive `ring` and nothing else writes them here.
        let ring = unsafe {
            Ring::create(
                pdata.as_mut_ptr(),
                pdata.len(),
                pctrl.as_mut_ptr().add(128),
                geo.ctrl_len() as usize,
                geo,
                Mode::Discard,
                StreamId { uuid: [1; 16], cpu: 3 },
            )
        }
        .unwrap();
        let clock = || 5u64;
        ring.record(&clock, 0, 8, |e| e.put(&[9; 8])).unwrap();
        assert!(ring.flush(&clock));

        let ro = SharedMapping::map_ro(reopen_read_only(&dfd).unwrap(), geo.data_len() as usize).unwrap();
        let ctrl = Arc::new(SharedMapping::map_rw(&cfd, 4096).unwrap());
        let m = MappedReader::attach(ro, ctrl.clone(), 128, geo.ctrl_len()).unwrap();
        let r = m.reader();
        assert_eq!(r.cpu(), 3);
        let Poll::Ready(p) = r.next_packet() else { panic!("a packet was flushed") };
        assert_eq!(&m.packet_bytes(&p)[..4], &0xC1FC_1FC1u32.to_le_bytes());
        assert!(r.release(&p));
        assert_eq!(r.next_packet(), Poll::Empty);
        assert_eq!(ring.counters().consumed_bytes, 4096);

        // Bad control ranges and a read-only control mapping are refused.
        let ro = || SharedMapping::map_ro(reopen_read_only(&dfd).unwrap(), geo.data_len() as usize).unwrap();
        let e = MappedReader::attach(ro(), ctrl.clone(), 4096 - 64, geo.ctrl_len()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = MappedReader::attach(ro(), ctrl.clone(), u64::MAX, 64).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = MappedReader::attach(ro(), ctrl, 100, geo.ctrl_len()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "misaligned control words");
        let ctrl_ro = Arc::new(SharedMapping::map_ro(&cfd, 4096).unwrap());
        let e = MappedReader::attach(ro(), ctrl_ro, 128, geo.ctrl_len()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // Not a ring.
        let junk = create_memfd("hvtrace-data-junk", geo.data_len()).unwrap();
        let junk = SharedMapping::map_ro(&junk, geo.data_len() as usize).unwrap();
        let ctrl = Arc::new(SharedMapping::map_rw(&cfd, 4096).unwrap());
        let e = MappedReader::attach(junk, ctrl, 128, geo.ctrl_len()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
