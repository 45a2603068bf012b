//! One CTF stream file per pCPU, written packet by packet with the core's
//! packet header ([`hvtrace_core::ctf::empty_packet`]) and event headers
//! ([`hvtrace_core::ctf::header`]): the same bytes the rings write, so the
//! same metadata describes them.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use hvtrace_core::ctf::{empty_packet, header, packet};

/// Bytes of a packet, at most: small enough for a reader to hold, large
/// enough that headers cost < 0.2 % of a packet.
pub const MAX_PACKET: usize = 64 << 10;
/// A packet closed before it is full is padded to a multiple of this.
const PAGE: usize = 4096;

/// A stream being written.
pub struct StreamWriter {
    /// Written a whole packet at a time (no buffer of its own: at most
    /// 4096 streams, each holding only its packet in progress).
    out: File,
    uuid: [u8; 16],
    cpu: u32,
    /// The packet being filled; its first [`packet::LEN`] bytes are the header, written on close.
    buf: Vec<u8>,
    seq: u64,
    begin: u64,
    /// Timestamp of the last record (the compact header's reference).
    last: u64,
    /// Events lost so far on this stream (CTF's cumulative `events_discarded`).
    discarded: u64,
    /// `discarded` as the last packet written carries it.
    discarded_written: u64,
    packets: u64,
}

impl StreamWriter {
    /// Creates `path` (which must not exist).
    pub fn create(path: &Path, uuid: [u8; 16], cpu: u32) -> io::Result<Self> {
        let f = File::options().write(true).create_new(true).open(path)?;
        let mut buf = Vec::with_capacity(MAX_PACKET);
        // Records go after the header, written when the packet closes.
        buf.resize(packet::LEN, 0);
        Ok(StreamWriter {
            out: f,
            uuid,
            cpu,
            buf,
            seq: 0,
            begin: 0,
            last: 0,
            discarded: 0,
            discarded_written: 0,
            packets: 0,
        })
    }

    fn is_empty(&self) -> bool {
        self.buf.len() == packet::LEN
    }

    /// Appends record `id` at `ts` (not below the previous record's), its
    /// payload of `len` bytes appended by `fill`.
    #[inline]
    pub fn record(&mut self, id: u32, ts: u64, len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        debug_assert!(ts >= self.last, "timestamps of a stream never go back");
        if self.buf.len() + header::EXTENDED_LEN + len > MAX_PACKET {
            self.close_packet()?;
        }
        if self.is_empty() {
            self.begin = ts;
            self.last = ts;
        }
        // The compact header holds 27 bits of timestamp: a reader rebuilds the
        // rest from the previous record, so the gap must be below 2^27.
        if id <= header::MAX_COMPACT_ID && ts - self.last <= header::COMPACT_TS_MASK {
            self.buf.extend_from_slice(&header::compact(id, ts));
        } else {
            self.buf.extend_from_slice(&header::extended(id, ts));
        }
        self.last = ts;
        let at = self.buf.len();
        fill(&mut self.buf);
        debug_assert_eq!(self.buf.len() - at, len);
        Ok(())
    }

    /// Counts `n` lost events. The packet in progress is closed first, so
    /// the next packet's larger `events_discarded` tells readers the loss
    /// came between the two.
    pub fn lose(&mut self, n: u64) -> io::Result<()> {
        self.close_packet()?;
        self.discarded += n;
        Ok(())
    }

    /// Writes the packet in progress, if it holds records.
    fn close_packet(&mut self) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let content = self.buf.len();
        // The sizes hvtrace's own streams have (what `hvtrace check` expects):
        // the first packet and every full one MAX_PACKET, one closed early
        // (a loss, the end) its content rounded up to a page.
        let size = if self.seq == 0 { MAX_PACKET } else { content.next_multiple_of(PAGE) };
        let mut head = empty_packet(&self.uuid, self.cpu, self.seq, self.begin, self.discarded);
        head[packet::TIMESTAMP_END..][..8].copy_from_slice(&self.last.to_le_bytes());
        head[packet::CONTENT_SIZE..][..8].copy_from_slice(&(content as u64 * 8).to_le_bytes());
        head[packet::PACKET_SIZE..][..8].copy_from_slice(&(size as u64 * 8).to_le_bytes());
        self.buf[..packet::LEN].copy_from_slice(&head);
        self.buf.resize(size, 0);
        self.out.write_all(&self.buf)?;
        self.buf.truncate(packet::LEN);
        self.seq += 1;
        self.packets += 1;
        self.discarded_written = self.discarded;
        Ok(())
    }

    /// Writes what is left; a loss after the last record still gets a
    /// packet (empty) to carry its count, and so does a stream without
    /// records. Returns the packets written.
    pub fn finish(mut self) -> io::Result<u64> {
        self.close_packet()?;
        if self.packets == 0 || self.discarded > self.discarded_written {
            let p = empty_packet(&self.uuid, self.cpu, self.seq, self.last, self.discarded);
            self.out.write_all(&p)?;
            self.packets += 1;
        }
        // No fsync: an import can be run again from its source file.
        Ok(self.packets)
    }
}
