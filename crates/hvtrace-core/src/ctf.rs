//! The CTF 1.8 binary format the ring writes: packet header + context at the
//! start of every sub-buffer, then records, each a compact or extended event
//! header followed by its payload. Everything is little-endian and byte
//! aligned (no padding between fields), which keeps records small and lets
//! the encoder write with plain stores.
//!
//! The matching TSDL is rendered by [`crate::metadata`]; the two must agree,
//! which the babeltrace2 tests check.

/// CTF packet magic.
pub const CTF_MAGIC: u32 = 0xC1FC_1FC1;

/// Byte offsets of the packet header and context fields.
///
/// The fields the opener of a packet writes come first (`[0, 48)`), those the
/// closer writes last (`[48, 84)`), so the two never touch the same bytes.
pub mod packet {
    /// `uint32_t magic`.
    pub const MAGIC: usize = 0;
    /// `uint8_t uuid[16]`: the trace UUID.
    pub const UUID: usize = 4;
    /// `uint32_t stream_id`.
    pub const STREAM_ID: usize = 20;
    /// `uint64_t stream_instance_id`: the CPU.
    pub const STREAM_INSTANCE_ID: usize = 24;
    /// `uint64_t timestamp_begin` (clock).
    pub const TIMESTAMP_BEGIN: usize = 32;
    /// `uint64_t packet_seq_num`: free-running sub-buffer number in the stream.
    pub const PACKET_SEQ_NUM: usize = 40;
    /// `uint64_t timestamp_end` (clock).
    pub const TIMESTAMP_END: usize = 48;
    /// `uint64_t content_size` in bits.
    pub const CONTENT_SIZE: usize = 56;
    /// `uint64_t packet_size` in bits.
    pub const PACKET_SIZE: usize = 64;
    /// `uint64_t events_discarded`: cumulative events lost on this stream.
    pub const EVENTS_DISCARDED: usize = 72;
    /// `uint32_t cpu_id`.
    pub const CPU_ID: usize = 80;
    /// Header + context length; the first record starts here.
    pub const LEN: usize = 84;
    /// Bytes written by the packet's opener.
    pub const OPENER_FIELDS: core::ops::Range<usize> = 0..48;
    /// Bytes written by the packet's closer.
    pub const CLOSER_FIELDS: core::ops::Range<usize> = 48..84;
}

/// An empty packet (header and context only) that carries a stream's final
/// `events_discarded` count when no later packet would: written by the
/// consumer after the last delivered packet if events were lost after it.
pub fn empty_packet(uuid: &[u8; 16], cpu: u32, seq: u64, timestamp: u64, events_discarded: u64) -> [u8; packet::LEN] {
    let mut b = [0u8; packet::LEN];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(packet::MAGIC, &CTF_MAGIC.to_le_bytes());
    put(packet::UUID, uuid);
    put(packet::STREAM_INSTANCE_ID, &(cpu as u64).to_le_bytes());
    put(packet::TIMESTAMP_BEGIN, &timestamp.to_le_bytes());
    put(packet::PACKET_SEQ_NUM, &seq.to_le_bytes());
    put(packet::TIMESTAMP_END, &timestamp.to_le_bytes());
    put(packet::CONTENT_SIZE, &(packet::LEN as u64 * 8).to_le_bytes());
    put(packet::PACKET_SIZE, &(packet::LEN as u64 * 8).to_le_bytes());
    put(packet::EVENTS_DISCARDED, &events_discarded.to_le_bytes());
    put(packet::CPU_ID, &cpu.to_le_bytes());
    b
}

/// Event header forms.
pub mod header {
    /// Id value announcing the extended form.
    pub const EXTENDED_ID: u32 = 31;
    /// Largest id the compact form can carry.
    pub const MAX_COMPACT_ID: u32 = 30;
    /// Bits of timestamp in the compact form.
    pub const COMPACT_TS_BITS: u32 = 27;
    /// Mask of the compact timestamp.
    pub const COMPACT_TS_MASK: u64 = (1 << COMPACT_TS_BITS) - 1;
    /// Compact header: `id:5 | timestamp:27` in one little-endian u32.
    pub const COMPACT_LEN: usize = 4;
    /// Extended header: `31:5, pad:3`, `u32 id`, `u64 timestamp`.
    pub const EXTENDED_LEN: usize = 13;

    /// The length of a header of the compact form or the extended one.
    #[inline(always)]
    pub const fn len(compact: bool) -> usize {
        if compact {
            COMPACT_LEN
        } else {
            EXTENDED_LEN
        }
    }

    /// Encodes a compact header.
    #[inline]
    pub fn compact(id: u32, ts: u64) -> [u8; COMPACT_LEN] {
        (id | (((ts & COMPACT_TS_MASK) as u32) << 5)).to_le_bytes()
    }

    /// Encodes an extended header.
    #[inline]
    pub fn extended(id: u32, ts: u64) -> [u8; EXTENDED_LEN] {
        let mut b = [0u8; EXTENDED_LEN];
        b[0] = EXTENDED_ID as u8;
        b[1..5].copy_from_slice(&id.to_le_bytes());
        b[5..13].copy_from_slice(&ts.to_le_bytes());
        b
    }

    /// A decoded header: `(id, timestamp bits, header length, compact?)`.
    /// For a compact header the timestamp holds only the low 27 bits.
    #[inline]
    pub fn decode(b: &[u8]) -> Option<(u32, u64, usize, bool)> {
        let first = u32::from_le_bytes(b.get(..4)?.try_into().ok()?);
        let id = first & 0x1f;
        if id != EXTENDED_ID {
            return Some((id, (first >> 5) as u64, COMPACT_LEN, true));
        }
        let id = u32::from_le_bytes(b.get(1..5)?.try_into().ok()?);
        let ts = u64::from_le_bytes(b.get(5..13)?.try_into().ok()?);
        Some((id, ts, EXTENDED_LEN, false))
    }

    /// Rebuilds a full timestamp from the previous one and 27 low bits, as a
    /// CTF reader does: the clock moved forward by less than 2^27 cycles.
    #[inline]
    pub fn expand(prev: u64, low: u64) -> u64 {
        let mut ts = (prev & !COMPACT_TS_MASK) | low;
        if ts < prev {
            ts += 1 << COMPACT_TS_BITS;
        }
        ts
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::header::*;

    #[test]
    fn compact_round_trip() {
        let b = compact(7, 0x1234_5678_9abc);
        let (id, ts, len, c) = decode(&b).unwrap();
        assert_eq!((id, ts, len, c), (7, 0x1234_5678_9abc & COMPACT_TS_MASK, 4, true));
    }

    #[test]
    fn extended_round_trip() {
        let b = extended(1000, u64::MAX - 3);
        assert_eq!(decode(&b), Some((1000, u64::MAX - 3, EXTENDED_LEN, false)));
        assert_eq!(decode(&b[..12]), None);
    }

    #[test]
    fn expand_wraps_forward() {
        let prev = (5 << 27) | 100;
        assert_eq!(expand(prev, 200), (5 << 27) | 200);
        assert_eq!(expand(prev, 50), (6 << 27) | 50);
        assert_eq!(expand(prev, 100), prev);
    }
}
