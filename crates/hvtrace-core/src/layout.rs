//! Memory layout of one ring, shared between the producer (host) and the consumer.
//!
//! A ring lives in two regions that the caller provides:
//!
//! * the **data region** — written only by the producer, mapped read-only by the
//!   consumer. It starts with a [`RingHeader`] (geometry, write position, loss
//!   counters), then one [`SubbufState`] per sub-buffer (commit count, delivery
//!   count, record counts), then — page aligned — the sub-buffers themselves.
//! * the **control region** — the only memory a consumer may write: a
//!   [`RingCtrl`] (its consumed position) followed by one claim word per
//!   sub-buffer (used in overwrite mode). The producer treats every value it
//!   reads there as hostile: a bad value can only cost the consumer its own data.
//!
//! All words are little-endian `u64`s at fixed offsets, so the consumer can be a
//! different build (or language) than the producer; `LAYOUT_VERSION` changes when
//! any offset does.

use crate::sync::AtomicU64;

/// Magic at offset 0 of every data region.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"HVTRING\x01");
/// Version of this layout; bumped on any incompatible change.
pub const LAYOUT_VERSION: u32 = 3;
/// Page size the sub-buffer area is aligned to.
pub const PAGE_SIZE: u64 = 4096;
/// Smallest allowed sub-buffer.
pub const MIN_SUBBUF_SIZE: u64 = 4096;
/// Largest allowed sub-buffer.
pub const MAX_SUBBUF_SIZE: u64 = 64 << 20;
/// Fewest sub-buffers per ring (one being written, one being read).
pub const MIN_NUM_SUBBUF: u64 = 2;
/// Most sub-buffers per ring.
pub const MAX_NUM_SUBBUF: u64 = 1024;
/// Largest ring (all sub-buffers of one CPU).
pub const MAX_RING_SIZE: u64 = 1 << 30;

/// What a full ring does with a new event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Mode {
    /// Drop the new event and count it (the consumer is never overtaken).
    Discard = 0,
    /// Flight recorder: overwrite the oldest sub-buffer; overwritten events are counted.
    Overwrite = 1,
}

impl Mode {
    /// Decodes the value stored in a ring header.
    pub fn from_u32(v: u32) -> Option<Mode> {
        match v {
            0 => Some(Mode::Discard),
            1 => Some(Mode::Overwrite),
            _ => None,
        }
    }
}

/// Why a geometry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    /// `subbuf_size` is not a power of two within [`MIN_SUBBUF_SIZE`]..=[`MAX_SUBBUF_SIZE`].
    SubbufSize,
    /// `num_subbuf` is not a power of two within [`MIN_NUM_SUBBUF`]..=[`MAX_NUM_SUBBUF`].
    NumSubbuf,
    /// The whole ring exceeds [`MAX_RING_SIZE`].
    TooLarge,
    /// A region given to the ring is smaller than the geometry needs, or misaligned.
    Region,
    /// A data region's header does not describe a ring of this layout version.
    BadHeader,
}

impl core::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            GeometryError::SubbufSize => "sub-buffer size must be a power of two between 4 KiB and 64 MiB",
            GeometryError::NumSubbuf => "number of sub-buffers must be a power of two between 2 and 1024",
            GeometryError::TooLarge => "a ring (sub-buffer size x number of sub-buffers) may not exceed 1 GiB",
            GeometryError::Region => "memory region too small or misaligned for this ring geometry",
            GeometryError::BadHeader => "ring header is not a valid hvtrace ring of this layout version",
        })
    }
}

/// Sizes of one ring. Both are powers of two so positions split with shifts and masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Bytes per sub-buffer (= CTF packet size).
    pub subbuf_size: u64,
    /// Sub-buffers per ring.
    pub num_subbuf: u64,
}

impl Geometry {
    /// Checks the limits documented on the constants.
    pub fn new(subbuf_size: u64, num_subbuf: u64) -> Result<Geometry, GeometryError> {
        if !subbuf_size.is_power_of_two() || !(MIN_SUBBUF_SIZE..=MAX_SUBBUF_SIZE).contains(&subbuf_size) {
            return Err(GeometryError::SubbufSize);
        }
        if !num_subbuf.is_power_of_two() || !(MIN_NUM_SUBBUF..=MAX_NUM_SUBBUF).contains(&num_subbuf) {
            return Err(GeometryError::NumSubbuf);
        }
        if subbuf_size * num_subbuf > MAX_RING_SIZE {
            return Err(GeometryError::TooLarge);
        }
        Ok(Geometry { subbuf_size, num_subbuf })
    }

    /// Bytes of sub-buffer space in the ring.
    pub fn buf_size(&self) -> u64 {
        self.subbuf_size * self.num_subbuf
    }

    /// Offset of the first sub-buffer in the data region (page aligned).
    pub fn subbufs_offset(&self) -> u64 {
        let meta =
            core::mem::size_of::<RingHeader>() as u64 + self.num_subbuf * core::mem::size_of::<SubbufState>() as u64;
        meta.div_ceil(PAGE_SIZE) * PAGE_SIZE
    }

    /// Length of the data region.
    pub fn data_len(&self) -> u64 {
        self.subbufs_offset() + self.buf_size()
    }

    /// Length of the control region (a multiple of 64 bytes, so regions of
    /// several rings can be packed into one control page set).
    pub fn ctrl_len(&self) -> u64 {
        let len = core::mem::size_of::<RingCtrl>() as u64 + self.num_subbuf * 8;
        len.div_ceil(64) * 64
    }

    /// Index of the sub-buffer holding free-running position `pos`.
    // Shifts, not divisions: both sizes are powers of two, and a 64-bit
    // division costs ~3.5 ns on the record path (measured with callgrind).
    #[inline]
    pub fn index(&self, pos: u64) -> u64 {
        (pos >> self.subbuf_size.trailing_zeros()) & (self.num_subbuf - 1)
    }

    /// How many times the ring had wrapped when `pos` was written.
    #[inline]
    pub fn lap(&self, pos: u64) -> u64 {
        pos >> (self.subbuf_size.trailing_zeros() + self.num_subbuf.trailing_zeros())
    }

    /// Free-running sub-buffer number of `pos` (the packet sequence number).
    #[inline]
    pub fn subbuf_seq(&self, pos: u64) -> u64 {
        pos >> self.subbuf_size.trailing_zeros()
    }

    /// Offset of `pos` within its sub-buffer.
    #[inline]
    pub fn offset_in_subbuf(&self, pos: u64) -> u64 {
        pos & (self.subbuf_size - 1)
    }
}

/// Producer-owned header at the start of the data region.
///
/// Geometry words are written once before the region is shared. `write` and
/// `last_tsc` are the hot words; the counters below them are touched only on
/// the slow paths (loss, sub-buffer delivery).
#[repr(C, align(64))]
pub struct RingHeader {
    /// [`RING_MAGIC`].
    pub magic: AtomicU64,
    /// `LAYOUT_VERSION` in the low 32 bits, CPU number in the high 32 bits.
    pub version_cpu: AtomicU64,
    /// [`Geometry::subbuf_size`].
    pub subbuf_size: AtomicU64,
    /// [`Geometry::num_subbuf`].
    pub num_subbuf: AtomicU64,
    /// [`Mode`] as u32.
    pub mode: AtomicU64,
    _pad0: [u64; 3],
    /// Free-running write position in bytes; bit 63 ([`CLOSED`]) set while the
    /// ring refuses new records (stopped or destroyed). Only CAS / fetch_or /
    /// fetch_and touch it, so any change invalidates every in-flight reservation.
    pub write: AtomicU64,
    /// Timestamp of a recent reservation, stored after its CAS: never newer
    /// than the record a writer follows, so the compact-header test against
    /// it is conservative (see `ring`).
    pub last_tsc: AtomicU64,
    /// Largest timestamp handed out, raised (`fetch_max`) before each CAS:
    /// never older than the record a writer follows, so clamping to it keeps
    /// timestamps non-decreasing along the stream even when writers on
    /// different CPUs (TSC skew, `rdtsc` reordering) share the ring.
    pub max_tsc: AtomicU64,
    /// Single-writer ownership ([`OWNED`], [`REVOKED`], [`CLOSING`]): set once,
    /// before the ring is shared, when one thread is to be its only writer;
    /// `REVOKED` while another thread (stop, flush) needs the owner off its
    /// fast path; `CLOSING` while a stop waits for a busy owner to leave.
    pub excl: AtomicU64,
    /// 1 while the owner is on its fast path (stored before it checks `excl`).
    pub owner_busy: AtomicU64,
    // Offset 128 held the total of losses up to layout version 1; since 2
    // the total is the sum of the four counters below (one locked add per
    // lost event instead of two).
    _pad1: [u64; 4],
    /// Events dropped because the consumer had not freed the next sub-buffer (discard mode).
    pub discarded_full: AtomicU64,
    /// Events dropped because a writer was still inside a record one full ring ago.
    pub discarded_busy: AtomicU64,
    /// Events refused because they do not fit in one sub-buffer.
    pub discarded_too_big: AtomicU64,
    /// Events in sub-buffers overwritten before the consumer read them (overwrite mode).
    pub overwritten: AtomicU64,
    /// Sub-buffers delivered (completed and handed to the consumer).
    pub delivered_total: AtomicU64,
    _pad2: [u64; 2],
}

/// Bit of [`RingHeader::write`] that marks the ring closed to writers.
pub const CLOSED: u64 = 1 << 63;

/// Bit of [`RingHeader::excl`]: the ring has one owning writer; other writers are refused.
pub const OWNED: u64 = 1;
/// Bit of [`RingHeader::excl`]: the owner must use the shared (atomic) protocol.
pub const REVOKED: u64 = 2;
/// Bit of [`RingHeader::excl`]: the ring was stopped while its owner was
/// inside a fast-path record, so `write` could not be closed yet; the
/// owner's records are refused as closed meanwhile.
pub const CLOSING: u64 = 4;

/// Producer-owned words of one sub-buffer.
#[repr(C, align(64))]
pub struct SubbufState {
    /// Bytes committed, cumulative over laps: lap `L` is complete when this
    /// reaches `(L + 1) * subbuf_size`.
    pub commit: AtomicU64,
    /// Records committed, cumulative over laps (overwrite mode only).
    pub records: AtomicU64,
    /// Laps delivered: lap `L` is readable once this is `L + 1`.
    pub delivered: AtomicU64,
    /// Records in the last delivered lap (overwrite mode).
    pub lap_records: AtomicU64,
    /// `records` at the last delivery.
    pub records_snapshot: AtomicU64,
    _pad: [u64; 3],
}

/// Consumer-owned words of one ring, at the start of its control region.
#[repr(C, align(64))]
pub struct RingCtrl {
    /// Free-running position up to which the consumer has read (sub-buffer aligned).
    pub consumed: AtomicU64,
    /// Free for the consumer's own bookkeeping (e.g. its pid); never read by the producer.
    pub reader_state: AtomicU64,
    _pad: [u64; 6],
}

/// Claim word values (overwrite mode). `0` = nobody has claimed anything yet.
/// A claim names a lap of one sub-buffer and who took it: the consumer (it
/// read the lap) or the producer (it started overwriting the lap).
pub mod claim {
    /// The consumer took lap `lap`.
    #[inline]
    pub const fn consumer(lap: u64) -> u64 {
        (lap + 1) << 1
    }
    /// The producer took (is overwriting) lap `lap`.
    #[inline]
    pub const fn producer(lap: u64) -> u64 {
        ((lap + 1) << 1) | 1
    }
}

impl RingHeader {
    /// Events lost for any reason: the sum of the per-cause counters.
    #[inline]
    pub fn discarded(&self) -> u64 {
        self.events_discarded() + self.overwritten.load(crate::sync::Ordering::Relaxed)
    }

    /// Events lost that the trace itself counts: every cause but
    /// `overwritten` (snapshotted into each packet's `events_discarded`
    /// since layout version 3). An overwritten packet is reported once, by
    /// the gap it leaves in `packet_seq_num`, not twice. Each counter only
    /// grows, so successive sums never decrease.
    #[inline]
    pub fn events_discarded(&self) -> u64 {
        use crate::sync::Ordering::Relaxed;
        self.discarded_full.load(Relaxed) + self.discarded_busy.load(Relaxed) + self.discarded_too_big.load(Relaxed)
    }

    /// All words zero.
    pub fn zeroed() -> Self {
        let z = || AtomicU64::new(0);
        RingHeader {
            magic: z(),
            version_cpu: z(),
            subbuf_size: z(),
            num_subbuf: z(),
            mode: z(),
            _pad0: [0; 3],
            write: z(),
            last_tsc: z(),
            max_tsc: z(),
            excl: z(),
            owner_busy: z(),
            _pad1: [0; 4],
            discarded_full: z(),
            discarded_busy: z(),
            discarded_too_big: z(),
            overwritten: z(),
            delivered_total: z(),
            _pad2: [0; 2],
        }
    }
}

impl SubbufState {
    /// All words zero.
    pub fn zeroed() -> Self {
        let z = || AtomicU64::new(0);
        SubbufState { commit: z(), records: z(), delivered: z(), lap_records: z(), records_snapshot: z(), _pad: [0; 3] }
    }
}

impl RingCtrl {
    /// All words zero.
    pub fn zeroed() -> Self {
        RingCtrl { consumed: AtomicU64::new(0), reader_state: AtomicU64::new(0), _pad: [0; 6] }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_fixed() {
        assert_eq!(core::mem::size_of::<RingHeader>(), 192);
        assert_eq!(core::mem::size_of::<SubbufState>(), 64);
        assert_eq!(core::mem::size_of::<RingCtrl>(), 64);
        assert_eq!(core::mem::offset_of!(RingHeader, write), 64);
        assert_eq!(core::mem::offset_of!(RingHeader, discarded_full), 136);
    }

    #[test]
    fn geometry_limits() {
        assert!(Geometry::new(4096, 4).is_ok());
        assert_eq!(Geometry::new(4095, 4), Err(GeometryError::SubbufSize));
        assert_eq!(Geometry::new(2048, 4), Err(GeometryError::SubbufSize));
        assert_eq!(Geometry::new(4096, 3), Err(GeometryError::NumSubbuf));
        assert_eq!(Geometry::new(4096, 1), Err(GeometryError::NumSubbuf));
        assert_eq!(Geometry::new(64 << 20, 32), Err(GeometryError::TooLarge));
        let g = Geometry::new(4096, 4).unwrap();
        assert_eq!(g.subbufs_offset(), 4096);
        assert_eq!(g.data_len(), 4096 * 5);
        assert_eq!(g.index(4096 * 5 + 3), 1);
        assert_eq!(g.lap(4096 * 5), 1);
    }
}
