//! Reserve / commit / deliver on one per-CPU ring, and the consumer's view of it.
//!
//! # Protocol (LTTng's, adapted to a read-only consumer)
//!
//! Positions are free-running byte counts; a position's sub-buffer index and
//! lap follow from the power-of-two geometry.
//!
//! * **Reserve**: load `write` (at a packet boundary, check that the packet
//!   may be opened before reading the clock), read the clock, compute the
//!   record's place, CAS `write` forward. A record never straddles sub-buffers: a record that does
//!   not fit *closes* the packet (the space left becomes padding) and the
//!   loop retries to *open* the next one. The clock is read after `write`
//!   is loaded and clamped to `max_tsc`, which every writer raises before its
//!   CAS: timestamps never go backwards along a stream, even when writers on
//!   two CPUs share a ring (TSC skew, `rdtsc` executing early).
//! * **Open** (a reservation at a sub-buffer boundary) needs the previous lap
//!   of that sub-buffer delivered (else a writer is still inside a record one
//!   ring ago: drop, `discarded_busy`) and, in discard mode, read by the
//!   consumer (else drop, `discarded_full`). In overwrite mode the opener
//!   takes the previous lap by swapping its claim word; if the consumer had
//!   not claimed it first, its records are counted as overwritten — exactly
//!   once, whoever wins the swap.
//! * **Commit**: add the reserved length to the sub-buffer's cumulative commit
//!   count. The one commit that completes a lap (there is exactly one, since
//!   `fetch_add` totally orders them) *delivers* it: in overwrite mode it
//!   snapshots the lap's record count, then publishes `delivered = lap + 1`.
//!   The caller is told, so it can wake the consumer (the only thing that
//!   leaves the fast path).
//! * **Close**: the closer writes the packet's end fields (end timestamp,
//!   content size, discarded-event snapshot) before committing the padding,
//!   so they are complete when the lap is delivered.
//! * **Stop**: setting [`CLOSED`] in `write` (an RMW that changes the value)
//!   makes every in-flight CAS fail, so once the commits catch up with `write`
//!   no writer is inside a record ([`Ring::is_quiescent`]).
//!
//! A late commit (a writer preempted or migrated between reserve and commit)
//! only delays delivery of its sub-buffer; it never corrupts it.
//!
//! A ring may instead have a single owner ([`Ring::make_owned`],
//! [`RingOwner`]) whose records inside a packet skip every locked
//! instruction; other threads take the ring back with an asymmetric fence
//! before touching it (`docs/ring.md`, "Single-writer (owned) rings").

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::ctf::{header, packet, CTF_MAGIC};
use crate::layout::{
    claim, Geometry, GeometryError, Mode, RingCtrl, RingHeader, SubbufState, CLOSED, CLOSING, LAYOUT_VERSION, OWNED,
    PAGE_SIZE, REVOKED, RING_MAGIC,
};
use crate::sync::{fence, hook, light_fence, spin_hint, AtomicU64, HookPoint, Ordering::*};

/// A source of timestamps (TSC cycles, or nanoseconds of CLOCK_MONOTONIC).
/// Must never go backwards across CPUs.
pub trait Clock {
    /// The current time in clock units.
    fn now(&self) -> u64;
}

impl<F: Fn() -> u64> Clock for F {
    #[inline]
    fn now(&self) -> u64 {
        self()
    }
}

/// Why a record was not written. All but `Closed` are counted in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The ring is stopped or destroyed; not a loss.
    Closed,
    /// Discard mode: the consumer has not freed the next sub-buffer.
    Full,
    /// A writer was still inside a record in the sub-buffer one ring ago.
    Busy,
    /// The record does not fit in one sub-buffer.
    TooBig,
}

/// Writes a record's payload into its reserved space.
///
/// Writes past the reserved length are cut off (never out of bounds) and
/// bytes left unwritten are zeroed, so a wrong length in a field encoder can
/// garble its own record but never another one.
pub struct Encoder<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Encoder<'a> {
    /// An encoder over `buf`.
    #[inline]
    pub fn new(buf: &'a mut [u8]) -> Self {
        Encoder { buf, pos: 0 }
    }

    /// Appends `bytes` (truncated at the end of the reservation).
    #[inline]
    pub fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if end <= self.buf.len() {
            copy(&mut self.buf[self.pos..end], bytes);
            self.pos = end;
        } else {
            let n = self.buf.len() - self.pos;
            self.buf[self.pos..].copy_from_slice(&bytes[..n]);
            self.pos = self.buf.len();
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.pos
    }

    #[inline]
    fn finish(self) {
        if self.pos < self.buf.len() {
            self.buf[self.pos..].fill(0);
        }
    }
}

/// `dst.copy_from_slice(src)`, without a `memcpy` call for the short,
/// variable lengths of typical string fields (names, short messages) and
/// of small payloads encoded elsewhere first (hvtrace-tracing's): the call
/// costs more than the copy there. Overlapping fixed-size moves cover
/// every length from 4 to 32.
#[inline(always)]
fn copy(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    debug_assert_eq!(dst.len(), n);
    if (8..=16).contains(&n) {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    } else if (17..=32).contains(&n) {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..].copy_from_slice(&src[n - 16..]);
    } else if (4..8).contains(&n) {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else {
        dst.copy_from_slice(src);
    }
}

/// Snapshot of a ring's counters (for status and summaries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Bytes reserved so far (write position).
    pub produced_bytes: u64,
    /// Bytes the consumer says it has read (untrusted).
    pub consumed_bytes: u64,
    /// Sub-buffers delivered.
    pub delivered_subbufs: u64,
    /// Events lost, all causes (the sum of the four below).
    pub discarded: u64,
    /// Dropped: ring full (discard mode).
    pub discarded_full: u64,
    /// Dropped: writer still inside a record a ring ago.
    pub discarded_busy: u64,
    /// Refused: larger than a sub-buffer.
    pub discarded_too_big: u64,
    /// Overwritten before being read (overwrite mode).
    pub overwritten: u64,
    /// Whether the ring refuses new records.
    pub closed: bool,
}

/// The shared words of a ring, found either in caller memory or (tests) on the heap.
#[derive(Clone, Copy)]
pub struct RingWords<'a> {
    /// Producer-owned header.
    pub hdr: &'a RingHeader,
    /// Producer-owned per-sub-buffer words.
    pub sb: &'a [SubbufState],
    /// Consumer-owned words.
    pub ctrl: &'a RingCtrl,
    /// Consumer/producer claim words (overwrite mode), consumer region.
    pub claims: &'a [AtomicU64],
    /// loom only: what the model checker sees of the sub-buffer bytes.
    #[cfg(loom)]
    pub witness: &'a crate::sync::Witness,
}

impl RingCounters {
    /// Events lost that the trace's packets count in `events_discarded`:
    /// all causes but `overwritten`, which shows as a `packet_seq_num` gap.
    pub fn events_discarded(&self) -> u64 {
        self.discarded - self.overwritten
    }
}

impl<'a> RingWords<'a> {
    fn counters(&self) -> RingCounters {
        let w = self.hdr.write.load(Relaxed);
        RingCounters {
            produced_bytes: w & !CLOSED,
            consumed_bytes: self.ctrl.consumed.load(Relaxed),
            delivered_subbufs: self.hdr.delivered_total.load(Relaxed),
            discarded: self.hdr.discarded(),
            discarded_full: self.hdr.discarded_full.load(Relaxed),
            discarded_busy: self.hdr.discarded_busy.load(Relaxed),
            discarded_too_big: self.hdr.discarded_too_big.load(Relaxed),
            overwritten: self.hdr.overwritten.load(Relaxed),
            closed: w & CLOSED != 0,
        }
    }
}

/// Identity of the stream a ring writes, stamped into every packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamId {
    /// Trace UUID (same as in the metadata).
    pub uuid: [u8; 16],
    /// CPU the ring belongs to (`stream_instance_id` and `cpu_id`).
    pub cpu: u32,
}

/// Room for one record: `[begin, end)`, committed as `[start, end)` (an
/// opener's reservation starts with the packet header).
#[derive(Clone, Copy)]
struct Reservation {
    start: u64,
    begin: u64,
    end: u64,
    compact: bool,
    tsc: u64,
}

/// The producer side of one ring.
pub struct Ring<'a> {
    w: RingWords<'a>,
    data: NonNull<u8>,
    geo: Geometry,
    mode: Mode,
    id: StreamId,
    _data: PhantomData<&'a [u8]>,
}

// SAFETY: all shared state is atomics; the sub-buffer bytes are written only
// inside a reservation, which the CAS on `write` makes exclusive.
unsafe impl Send for Ring<'_> {}
// SAFETY: as above.
unsafe impl Sync for Ring<'_> {}

impl<'a> Ring<'a> {
    /// Builds a ring from its shared words and sub-buffer memory, and resets
    /// them to an empty, open ring.
    ///
    /// # Safety
    /// `data` must point to `geo.buf_size()` bytes valid for writes for `'a`,
    /// not accessed by anything else in this process except through this ring
    /// (and read-only [`RingReader`]s). `sb` and `claims` must have
    /// `geo.num_subbuf` entries.
    pub unsafe fn from_parts(
        words: RingWords<'a>,
        data: NonNull<u8>,
        geo: Geometry,
        mode: Mode,
        id: StreamId,
    ) -> Result<Self, GeometryError> {
        let RingWords { hdr, sb, ctrl, claims, .. } = words;
        if sb.len() as u64 != geo.num_subbuf || claims.len() as u64 != geo.num_subbuf {
            return Err(GeometryError::Region);
        }
        hdr.magic.store(RING_MAGIC, Relaxed);
        hdr.version_cpu.store(LAYOUT_VERSION as u64 | ((id.cpu as u64) << 32), Relaxed);
        hdr.subbuf_size.store(geo.subbuf_size, Relaxed);
        hdr.num_subbuf.store(geo.num_subbuf, Relaxed);
        hdr.mode.store(mode as u64, Relaxed);
        for a in [
            &hdr.write,
            &hdr.last_tsc,
            &hdr.max_tsc,
            &hdr.excl,
            &hdr.owner_busy,
            &hdr.discarded_full,
            &hdr.discarded_busy,
            &hdr.discarded_too_big,
            &hdr.overwritten,
            &hdr.delivered_total,
            &ctrl.consumed,
            &ctrl.reader_state,
        ] {
            a.store(0, Relaxed);
        }
        for s in sb {
            for a in [&s.commit, &s.records, &s.delivered, &s.lap_records, &s.records_snapshot] {
                a.store(0, Relaxed);
            }
        }
        for c in claims {
            c.store(0, Relaxed);
        }
        // Publish the initialised words before the ring is used elsewhere.
        hdr.write.store(0, Release);
        Ok(Ring { w: words, data, geo, mode, id, _data: PhantomData })
    }

    /// The ring's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The ring's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The CPU this ring belongs to.
    pub fn cpu(&self) -> u32 {
        self.id.cpu
    }

    /// Counters for status reports.
    pub fn counters(&self) -> RingCounters {
        self.w.counters()
    }

    /// Writes one record: event `id`, `payload_len` bytes produced by `fill`.
    ///
    /// Returns whether a sub-buffer was delivered by this call (the caller
    /// should wake the consumer), or why the record was not written.
    ///
    /// A ring with an owner ([`Ring::make_owned`]) refuses every other writer
    /// (counted as `discarded_busy`: the host routed a writer wrongly; while
    /// the ring is closed, or closing, the refusal is `Closed`, not a loss).
    #[inline]
    pub fn record<C: Clock + ?Sized>(
        &self,
        clock: &C,
        id: u32,
        payload_len: usize,
        fill: impl FnOnce(&mut Encoder<'_>),
    ) -> Result<bool, RecordError> {
        let excl = self.w.hdr.excl.load(Acquire);
        if excl & OWNED != 0 {
            return Err(self.refuse_intruder(excl));
        }
        self.record_shared(clock, id, payload_len, fill)
    }

    /// A writer that is not the owner of an owned ring: a loss (the host
    /// routed it wrongly), unless the ring is stopped, which refuses every
    /// writer alike without losing anything.
    #[cold]
    fn refuse_intruder(&self, excl: u64) -> RecordError {
        if excl & CLOSING != 0 || self.w.hdr.write.load(Acquire) & CLOSED != 0 {
            return RecordError::Closed;
        }
        self.lose(&self.w.hdr.discarded_busy, RecordError::Busy)
    }

    /// The multi-writer protocol: any number of writers, any interleaving.
    #[inline(always)]
    fn record_shared<C: Clock + ?Sized>(
        &self,
        clock: &C,
        id: u32,
        payload_len: usize,
        fill: impl FnOnce(&mut Encoder<'_>),
    ) -> Result<bool, RecordError> {
        // Two inlined copies of the encoder: the common case (a compact
        // record inside the current packet, one CAS) with everything known,
        // and the rest, reserved out of line.
        if let Some(res) = self.reserve_in_packet(clock, id, payload_len) {
            return self.write_and_commit(&res, false, id, payload_len, fill);
        }
        let mut delivered = false;
        let res = self.reserve_shared(clock, id, payload_len, &mut delivered)?;
        self.write_and_commit(&res, delivered, id, payload_len, fill)
    }

    /// The common reservation of the shared protocol: a record with a
    /// compact header inside the current packet, on the first CAS. `None`
    /// (anything else, or a lost race) sends the caller to
    /// [`Ring::reserve_shared`], which retries and handles every case.
    #[inline(always)]
    fn reserve_in_packet<C: Clock + ?Sized>(&self, clock: &C, id: u32, payload_len: usize) -> Option<Reservation> {
        let hdr = self.w.hdr;
        let old = hdr.write.load(Acquire);
        let off = self.geo.offset_in_subbuf(old);
        let rec = (header::COMPACT_LEN as u64).saturating_add(payload_len as u64);
        if off == 0 || rec >= self.geo.subbuf_size - off || old & CLOSED != 0 {
            return None;
        }
        // As in `reserve_shared`: both loads after `write`, `max_tsc` raised
        // before the CAS.
        let last = hdr.last_tsc.load(Relaxed);
        let max = hdr.max_tsc.load(Relaxed);
        let tsc = clock.now().max(max);
        if tsc > max {
            hdr.max_tsc.fetch_max(tsc, Relaxed);
        }
        if id > header::MAX_COMPACT_ID || tsc.wrapping_sub(last) > header::COMPACT_TS_MASK {
            return None;
        }
        hdr.write.compare_exchange(old, old + rec, AcqRel, Relaxed).ok()?;
        // As in `reserve_shared`: the bytes after the move (free on x86).
        fence(Release);
        hdr.last_tsc.store(tsc, Relaxed);
        Some(Reservation { start: old, begin: old, end: old + rec, compact: true, tsc })
    }

    /// Writes the record of a reservation made under the shared protocol and
    /// commits it.
    #[inline(always)]
    fn write_and_commit(
        &self,
        res: &Reservation,
        delivered: bool,
        id: u32,
        payload_len: usize,
        fill: impl FnOnce(&mut Encoder<'_>),
    ) -> Result<bool, RecordError> {
        let (compact, extended);
        let head: &[u8] = if res.compact {
            compact = header::compact(id, res.tsc);
            &compact
        } else {
            extended = header::extended(id, res.tsc);
            &extended
        };
        // SAFETY: the reservation is this writer's until its commit.
        unsafe { self.write_record(res.begin, head, payload_len, fill) };
        Ok(delivered | self.commit(res.start, res.end - res.start, true))
    }

    /// Reserves room for a record under the multi-writer protocol (opening
    /// and closing packets on the way; `delivered` is set when a close
    /// delivered a sub-buffer). Every case, including the common one that
    /// [`Ring::reserve_in_packet`] takes inline; out of line, and without the
    /// encoder, which stays inlined in the caller (its payload's values in
    /// registers, not a closure in memory).
    #[cold]
    #[inline(never)]
    fn reserve_shared<C: Clock + ?Sized>(
        &self,
        clock: &C,
        id: u32,
        payload_len: usize,
        delivered: &mut bool,
    ) -> Result<Reservation, RecordError> {
        let sbs = self.geo.subbuf_size;
        let hdr = self.w.hdr;
        if ((header::EXTENDED_LEN + packet::LEN) as u64).saturating_add(payload_len as u64) >= sbs {
            return Err(self.lose(&hdr.discarded_too_big, RecordError::TooBig));
        }
        loop {
            let old = hdr.write.load(Acquire);
            if old & CLOSED != 0 {
                return Err(RecordError::Closed);
            }
            hook(HookPoint::ReserveLoaded);
            let off = self.geo.offset_in_subbuf(old);
            // A packet that may not be opened refuses the record before the
            // clock is read: under overload (a full ring) a lost event costs
            // no timestamp.
            if off == 0 {
                if let Err(e) = self.check_open(old) {
                    // A stale `old` (other writers moved on since we loaded it)
                    // proves nothing about the ring: retry with a fresh one.
                    // Evidence of their progress (a later `delivered`, a
                    // `consumed` past `old`) was published after `write`
                    // moved, so the acquire loads make the move visible here.
                    if hdr.write.load(Acquire) != old {
                        spin_hint();
                        continue;
                    }
                    let cause = match e {
                        RecordError::Full => &hdr.discarded_full,
                        _ => &hdr.discarded_busy,
                    };
                    return Err(self.lose(cause, e));
                }
            }
            // Both loads after `write` (acquire): the record we would follow
            // published `max_tsc` before its CAS and `last_tsc` after it.
            let last = hdr.last_tsc.load(Relaxed);
            let max = hdr.max_tsc.load(Relaxed);
            let tsc = clock.now().max(max);
            if tsc > max {
                hdr.max_tsc.fetch_max(tsc, Relaxed);
            }
            // Compact header when a reader can rebuild the timestamp from the
            // previous one: `last` is never newer than the record before ours,
            // so this test is conservative. The first record of a packet is
            // measured from the packet's timestamp_begin, which is its own.
            let compact =
                id <= header::MAX_COMPACT_ID && (off == 0 || tsc.wrapping_sub(last) <= header::COMPACT_TS_MASK);
            let hlen = header::len(compact);
            let rec = (hlen + payload_len) as u64;
            let (new, begin) = if off == 0 {
                (old + packet::LEN as u64 + rec, old + packet::LEN as u64)
            } else if off + rec < sbs {
                (old + rec, old)
            } else {
                // Close this packet; the retry opens the next one.
                let boundary = old - off + sbs;
                // Snapshot before the CAS: every later packet's closer moves
                // `write` after this one and so loads the counters after
                // these loads (coherence): `events_discarded` never decreases
                // along the stream, however long this closer stalls.
                let lost = hdr.events_discarded();
                if hdr.write.compare_exchange_weak(old, boundary, AcqRel, Relaxed).is_ok() {
                    hook(HookPoint::PacketCloseCas);
                    *delivered |= self.close_packet(old, tsc, lost, false);
                } else {
                    spin_hint();
                }
                continue;
            };
            if hdr.write.compare_exchange_weak(old, new, AcqRel, Relaxed).is_err() {
                spin_hint();
                continue;
            }
            // Seqlock writer (overwrite mode): the record's bytes are
            // stored after `write` moved, so a consumer whose copy saw one
            // of them sees the move in `release` and throws the copy away.
            fence(Release);
            hdr.last_tsc.store(tsc, Relaxed);
            if off == 0 {
                // Only now, holding a reservation: a writer stalled before
                // it must change nothing after a stop found the ring quiescent.
                self.take_previous_lap(old);
                self.write_opener_fields(old, tsc);
            }
            // [begin, new) lies inside one sub-buffer (checked above) and the
            // successful CAS gave this writer exclusive use of it until commit.
            return Ok(Reservation { start: old, begin, end: new, compact, tsc });
        }
    }

    /// Writes a record's header and payload at `at`.
    ///
    /// # Safety
    /// The caller holds `[at, at + head.len() + payload_len)` (a
    /// reservation, until it commits it).
    // Always inlined: with the payload length and the encoder known at the
    // call site, the field copies become a few moves with no bounds checks.
    #[inline(always)]
    unsafe fn write_record(&self, at: u64, head: &[u8], payload_len: usize, fill: impl FnOnce(&mut Encoder<'_>)) {
        // SAFETY: the caller's promise.
        let buf = unsafe { self.bytes_mut(at, head.len() + payload_len) };
        let (h, payload) = buf.split_at_mut(head.len());
        copy(h, head);
        let mut enc = Encoder::new(payload);
        fill(&mut enc);
        enc.finish();
        #[cfg(loom)]
        self.w.witness.mark(at & (self.geo.buf_size() - 1), self.geo.lap(at), buf);
    }

    /// Reserves the ring for one owning writer, which then records through
    /// [`Ring::owner`] without a single locked instruction; every other
    /// writer is refused.
    ///
    /// # Safety
    /// No writer may have used the ring yet (call it right after
    /// [`Ring::from_parts`], before the ring is shared): a writer of the
    /// shared protocol still inside a record would race the owner.
    pub unsafe fn make_owned(&self) {
        self.w.hdr.excl.store(OWNED, Release);
    }

    /// The owner's handle (free to make: build one per record if that is
    /// simpler). Recording through it takes the single-writer fast path while
    /// the ring is owned and not revoked, the shared protocol otherwise.
    ///
    /// # Safety
    /// Only one thread at a time may record through owner handles of this
    /// ring (the host gives each owned ring to one `!Sync` writer). Anything
    /// else that changes the ring while it is owned ([`Ring::flush`],
    /// [`Ring::close`], [`Ring::open`]) must be bracketed by
    /// [`Ring::revoke_owner`] and [`Ring::restore_owner`].
    pub unsafe fn owner(&self) -> RingOwner<'_, 'a> {
        RingOwner { ring: self, _not_sync: PhantomData }
    }

    /// Gives an owned ring back to the shared protocol, for good (its owner
    /// is gone). Call it with the owner revoked, or from the owner's thread.
    pub fn disown(&self) {
        self.w.hdr.excl.fetch_and(!OWNED, Release);
    }

    /// Whether the ring has an owner that may be on its fast path (not revoked).
    pub fn owner_active(&self) -> bool {
        self.w.hdr.excl.load(Acquire) == OWNED
    }

    /// First half of taking the ring back from its owner: sets [`REVOKED`].
    /// Returns whether the ring has an owner. Then the caller runs the heavy
    /// barrier (`membarrier`: a full fence on every CPU running this
    /// process) and waits while [`Ring::owner_busy`]. After that the owner
    /// is off its fast path and stays off until [`Ring::restore_owner`]:
    /// it either was seen busy (and is waited for) or it will see `REVOKED`.
    pub fn revoke_owner(&self) -> bool {
        self.w.hdr.excl.fetch_or(REVOKED, SeqCst) & OWNED != 0
    }

    /// True while the owner is on its fast path (see [`Ring::revoke_owner`]).
    pub fn owner_busy(&self) -> bool {
        self.w.hdr.owner_busy.load(Acquire) != 0
    }

    /// Stops an owned ring whose owner is still busy after the revoke (a
    /// thread stalled inside a fast-path record). [`Ring::close`] would race
    /// the owner's plain stores (its store of `write` can clear `CLOSED` or
    /// move `write` back; its commit store can lose a flush's padding), so
    /// this leaves the producer words alone and sets [`CLOSING`]: from its
    /// next record on, the owner is refused as [`RecordError::Closed`]. Once
    /// [`Ring::owner_busy`] is seen false, the ring may be closed and flushed
    /// for real; [`Ring::restore_owner`] clears the mark.
    pub fn defer_close(&self) {
        self.w.hdr.excl.fetch_or(CLOSING, SeqCst);
    }

    /// Lets the owner use its fast path again: the revoking thread is done
    /// with the ring's producer words (and a deferred close is called off).
    pub fn restore_owner(&self) {
        self.w.hdr.excl.fetch_and(!(REVOKED | CLOSING), Release);
    }

    /// Misuse of the owner protocol would let two threads write one record.
    #[inline]
    fn assert_not_owned(&self, what: &str) {
        assert!(!self.owner_active(), "Ring::{what} on an owned ring without revoke_owner first");
    }

    /// Closes the current packet if it holds any record, so the consumer can
    /// read it now. Returns whether a sub-buffer was delivered.
    ///
    /// # Panics
    /// On an owned ring whose owner was not revoked first.
    pub fn flush<C: Clock + ?Sized>(&self, clock: &C) -> bool {
        self.assert_not_owned("flush");
        let hdr = self.w.hdr;
        loop {
            let old = hdr.write.load(Acquire);
            let pos = old & !CLOSED;
            let off = self.geo.offset_in_subbuf(pos);
            if off == 0 {
                return false;
            }
            // timestamp_end: no earlier than the packet's records, no later
            // than the next packet's first one.
            let tsc = clock.now().max(hdr.max_tsc.load(Relaxed));
            hdr.max_tsc.fetch_max(tsc, Relaxed);
            let new = (pos - off + self.geo.subbuf_size) | (old & CLOSED);
            let lost = hdr.events_discarded(); // before the CAS, as in `reserve_shared`
            if hdr.write.compare_exchange_weak(old, new, AcqRel, Relaxed).is_ok() {
                return self.close_packet(pos, tsc, lost, true);
            }
            spin_hint();
        }
    }

    /// Refuses new records from now on (in-flight reservations fail their CAS).
    ///
    /// # Panics
    /// On an owned ring whose owner was not revoked first.
    pub fn close(&self) {
        self.assert_not_owned("close");
        self.w.hdr.write.fetch_or(CLOSED, AcqRel);
    }

    /// Accepts records again.
    ///
    /// # Panics
    /// On an owned ring whose owner was not revoked first.
    pub fn open(&self) {
        self.assert_not_owned("open");
        self.w.hdr.write.fetch_and(!CLOSED, AcqRel);
    }

    /// True when every reserved byte is committed: no writer is inside a
    /// record. Meaningful after [`Ring::close`], when no new reservation can start.
    pub fn is_quiescent(&self) -> bool {
        let pos = self.w.hdr.write.load(Acquire) & !CLOSED;
        let n = self.geo.num_subbuf;
        let cur = self.geo.subbuf_seq(pos);
        let off = self.geo.offset_in_subbuf(pos);
        self.w.sb.iter().enumerate().all(|(i, s)| {
            let i = i as u64;
            let spans = (cur + n - 1 - i) / n; // sub-buffers before `cur` with index i
            let expected = spans * self.geo.subbuf_size + if cur % n == i { off } else { 0 };
            s.commit.load(Acquire) == expected
        })
    }

    /// Counts a refused record under `cause`, unless the ring is stopped:
    /// then the record is refused as `Closed`, which is not a loss.
    fn lose(&self, cause: &AtomicU64, e: RecordError) -> RecordError {
        if self.w.hdr.write.load(Relaxed) & CLOSED != 0 {
            return RecordError::Closed;
        }
        cause.fetch_add(1, Relaxed);
        e
    }

    /// May a packet be opened at `pos` (a sub-buffer boundary)? A refusal is
    /// not counted here: the caller first checks that `pos` is still current.
    #[inline]
    fn check_open(&self, pos: u64) -> Result<(), RecordError> {
        let idx = self.geo.index(pos) as usize;
        let lap = self.geo.lap(pos);
        let s = &self.w.sb[idx];
        if s.delivered.load(Acquire) != lap {
            return Err(RecordError::Busy);
        }
        if self.mode == Mode::Discard {
            // Untrusted: any value that does not prove the previous lap read means "full".
            let consumed = self.w.ctrl.consumed.load(Acquire);
            if pos.wrapping_sub(consumed) >= self.geo.buf_size() {
                return Err(RecordError::Full);
            }
        }
        // Overwrite mode takes the previous lap only once it holds the
        // reservation (`take_previous_lap`): nothing here has a side effect.
        Ok(())
    }

    /// Overwrite mode: the opener of lap *L* > 0 of a sub-buffer (it holds
    /// the reservation at `pos`, so it is the only one) takes lap *L* − 1
    /// from the consumer with one `swap` of the claim word: wait-free
    /// against a consumer that keeps changing the word. Unless the consumer
    /// had claimed that lap (read it), its records are counted as
    /// overwritten — once: the consumer's `release` CAS and this swap
    /// are ordered on the one word.
    #[inline]
    fn take_previous_lap(&self, pos: u64) {
        let lap = self.geo.lap(pos);
        if self.mode != Mode::Overwrite || lap == 0 {
            return;
        }
        let idx = self.geo.index(pos) as usize;
        // Written before `delivered = lap` (Release), which `check_open`
        // loaded with Acquire before the reservation.
        let n = self.w.sb[idx].lap_records.load(Relaxed);
        hook(HookPoint::OpenClaim);
        // Relaxed: who counts the lap needs only the word's one modification
        // order; a kept copy is guarded by the seqlock on `write`, not by
        // this word (docs/ring.md, "Why some orderings are Relaxed").
        if self.w.claims[idx].swap(claim::producer(lap - 1), Relaxed) != claim::consumer(lap - 1) {
            self.w.hdr.overwritten.fetch_add(n, Relaxed);
        }
    }

    /// Adds `len` committed bytes at `pos`; delivers the sub-buffer if that completes it.
    #[inline]
    fn commit(&self, pos: u64, len: u64, is_record: bool) -> bool {
        let idx = self.geo.index(pos) as usize;
        let lap = self.geo.lap(pos);
        let s = &self.w.sb[idx];
        if is_record && self.mode == Mode::Overwrite {
            s.records.fetch_add(1, Relaxed);
        }
        let before = s.commit.fetch_add(len, AcqRel);
        if before + len != (lap + 1) * self.geo.subbuf_size {
            return false;
        }
        // This commit completed the lap: no other writer can touch it until
        // `delivered` says so, which makes the record snapshot exact.
        if self.mode == Mode::Overwrite {
            let total = s.records.load(Relaxed);
            s.lap_records.store(total - s.records_snapshot.load(Relaxed), Relaxed);
            s.records_snapshot.store(total, Relaxed);
        }
        self.w.hdr.delivered_total.fetch_add(1, Relaxed);
        s.delivered.store(lap + 1, Release);
        true
    }

    /// Writes the end fields of the packet containing `pos` (whose used part
    /// ends at `pos`) and commits the padding. A flushed packet (`trim`)
    /// declares its size as its content rounded up to a page, so the consumer
    /// writes only that much: a session's last packets are usually flushed
    /// partial ones, and writing whole sub-buffers of padding bloats the trace.
    fn close_packet(&self, pos: u64, tsc: u64, lost: u64, trim: bool) -> bool {
        // Seqlock writer, as after a reservation: the closer fields are
        // stored after `write` moved past the packet. The closing CAS's
        // Release orders what came before it, not these stores: without the
        // fence a consumer copying the previous lap could see them and still
        // load the old `write` (free on x86; found by the loom model
        // `overwrite_seqlock_the_closer_of_the_reopened_packet`).
        fence(Release);
        let off = self.geo.offset_in_subbuf(pos);
        let start = pos - off;
        let mut f = [0u8; packet::CLOSER_FIELDS.end - packet::CLOSER_FIELDS.start];
        let at = |field: usize| field - packet::CLOSER_FIELDS.start;
        f[at(packet::TIMESTAMP_END)..][..8].copy_from_slice(&tsc.to_le_bytes());
        f[at(packet::CONTENT_SIZE)..][..8].copy_from_slice(&(off * 8).to_le_bytes());
        let size = if trim { off.next_multiple_of(PAGE_SIZE).min(self.geo.subbuf_size) } else { self.geo.subbuf_size };
        f[at(packet::PACKET_SIZE)..][..8].copy_from_slice(&(size * 8).to_le_bytes());
        f[at(packet::EVENTS_DISCARDED)..][..8].copy_from_slice(&lost.to_le_bytes());
        f[at(packet::CPU_ID)..][..4].copy_from_slice(&self.id.cpu.to_le_bytes());
        // SAFETY: the closer fields belong to whoever moved `write` past the
        // packet's last byte, which this caller just did.
        unsafe { self.bytes_mut(start + packet::CLOSER_FIELDS.start as u64, f.len()) }.copy_from_slice(&f);
        #[cfg(loom)]
        self.w.witness.mark(
            (start + packet::CLOSER_FIELDS.start as u64) & (self.geo.buf_size() - 1),
            self.geo.lap(start),
            &f,
        );
        self.commit(pos, self.geo.subbuf_size - off, false)
    }

    fn write_opener_fields(&self, start: u64, tsc: u64) {
        let mut f = [0u8; packet::OPENER_FIELDS.end];
        f[packet::MAGIC..][..4].copy_from_slice(&CTF_MAGIC.to_le_bytes());
        f[packet::UUID..][..16].copy_from_slice(&self.id.uuid);
        f[packet::STREAM_ID..][..4].copy_from_slice(&0u32.to_le_bytes());
        f[packet::STREAM_INSTANCE_ID..][..8].copy_from_slice(&(self.id.cpu as u64).to_le_bytes());
        f[packet::TIMESTAMP_BEGIN..][..8].copy_from_slice(&tsc.to_le_bytes());
        let seq = self.geo.subbuf_seq(start);
        f[packet::PACKET_SEQ_NUM..][..8].copy_from_slice(&seq.to_le_bytes());
        // SAFETY: the opener reserved the packet header together with its record.
        unsafe { self.bytes_mut(start, f.len()) }.copy_from_slice(&f);
        #[cfg(loom)]
        self.w.witness.mark(start & (self.geo.buf_size() - 1), self.geo.lap(start), &f);
    }

    /// # Safety
    /// `[pos, pos + len)` must lie in one sub-buffer and be owned by the caller
    /// under the reservation protocol.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, pos: u64, len: usize) -> &mut [u8] {
        let at = (pos & (self.geo.buf_size() - 1)) as usize;
        debug_assert!(at + len <= self.geo.buf_size() as usize);
        // SAFETY: in bounds of the sub-buffer area (masked position, length
        // within one sub-buffer); exclusivity is the caller's promise.
        unsafe { core::slice::from_raw_parts_mut(self.data.as_ptr().add(at), len) }
    }
}

/// The single writer of an owned ring (see [`Ring::make_owned`]).
///
/// Its fast path — a record that neither opens nor closes a packet — uses
/// plain loads and stores and one release store per commit: no CAS, no
/// atomic add, no `fetch_max`. It is guarded by an asymmetric fence: the
/// owner announces itself in `owner_busy` and then checks `excl` with only a
/// compiler fence between, while a thread that needs the ring (stop, flush)
/// sets `REVOKED`, runs a heavy barrier and waits until the owner is not busy.
/// Packet boundaries, losses and revoked periods go through the shared
/// protocol, which is always safe. `Send` but not `Sync`: one thread at a time.
pub struct RingOwner<'r, 'a> {
    ring: &'r Ring<'a>,
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

impl RingOwner<'_, '_> {
    /// The ring.
    pub fn ring(&self) -> &Ring<'_> {
        self.ring
    }

    /// Writes one record, as [`Ring::record`] does.
    ///
    /// The fast path takes a record that fits in the current packet with a
    /// compact header; anything else (opening or closing a packet, a long
    /// gap or a large id needing the extended header, a revoked or closed
    /// ring) goes through the shared protocol, out of line.
    #[inline]
    pub fn record<C: Clock + ?Sized>(
        &self,
        clock: &C,
        id: u32,
        payload_len: usize,
        fill: impl FnOnce(&mut Encoder<'_>),
    ) -> Result<bool, RecordError> {
        let r = self.ring;
        let hdr = r.w.hdr;
        hdr.owner_busy.store(1, Relaxed);
        light_fence();
        // Acquire: pairs with `restore_owner`, so what a revoking thread
        // wrote (a flush moved `write`, raised `max_tsc`) is seen here.
        let excl = hdr.excl.load(Acquire);
        let owned = excl == OWNED;
        // Nobody else writes these words now: the owner's own last values.
        let old = hdr.write.load(Relaxed);
        let off = r.geo.offset_in_subbuf(old);
        let rec = (header::COMPACT_LEN as u64).saturating_add(payload_len as u64);
        // Everything up to the clock test depends on `write` only, never on
        // the clock: the reservation's place and the payload's stores go
        // ahead while `rdtsc` (the slowest instruction here) completes, and
        // the next record's position does not wait for this one's timestamp.
        if owned && off != 0 && rec < r.geo.subbuf_size - off && old & CLOSED == 0 {
            let tsc = clock.now().max(hdr.max_tsc.load(Relaxed));
            // A branch (predicted), not a data dependency on the timestamp.
            if id <= header::MAX_COMPACT_ID && tsc.wrapping_sub(hdr.last_tsc.load(Relaxed)) <= header::COMPACT_TS_MASK {
                let end = old + rec;
                hdr.write.store(end, Relaxed);
                // Seqlock writer, as in `reserve_shared` (free on x86).
                fence(Release);
                hdr.last_tsc.store(tsc, Relaxed);
                hdr.max_tsc.store(tsc, Relaxed);
                // SAFETY: `[old, end)` lies in the current packet (tested
                // above) and the owner is the ring's only writer while it is
                // busy and not revoked.
                unsafe { r.write_record(old, &header::compact(id, tsc), payload_len, fill) };
                let s = &r.w.sb[r.geo.index(old) as usize];
                if r.mode == Mode::Overwrite {
                    s.records.store(s.records.load(Relaxed) + 1, Relaxed);
                }
                // Cannot complete the lap (the record ends before the
                // sub-buffer does): the closing padding, committed on the
                // shared path, delivers. Relaxed: any other thread reading
                // `commit` first acquires `owner_busy = 0` (next line) or
                // `excl` after `disown`, both after this store (docs/ring.md,
                // "Why some orderings are Relaxed").
                s.commit.store(s.commit.load(Relaxed) + rec, Relaxed);
                hdr.owner_busy.store(0, Release);
                return Ok(false);
            }
        }
        // Everything else: the shared protocol, always safe, reserved out of line.
        hdr.owner_busy.store(0, Release);
        if excl & CLOSING != 0 {
            // Stopped while this owner was inside a record: the ring is not
            // closed yet, but it is not recording either.
            return Err(RecordError::Closed);
        }
        let mut delivered = false;
        let res = r.reserve_shared(clock, id, payload_len, &mut delivered)?;
        r.write_and_commit(&res, delivered, id, payload_len, fill)
    }
}

/// A packet the consumer may read: see [`RingReader::next_packet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketRef {
    /// Free-running position of the packet's first byte.
    pub pos: u64,
    /// Claim word seen before reading (overwrite mode).
    claim: u64,
}

/// The consumer's view of a ring: the data region read-only, its own control words writable.
pub struct RingReader<'a> {
    w: RingWords<'a>,
    data: NonNull<u8>,
    geo: Geometry,
    mode: Mode,
    cpu: u32,
    _data: PhantomData<&'a [u8]>,
}

// SAFETY: reads shared memory through atomics and raw pointers only.
unsafe impl Send for RingReader<'_> {}
// SAFETY: as above.
unsafe impl Sync for RingReader<'_> {}

/// What the consumer finds at its position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// A delivered packet to read, then [`RingReader::release`].
    Ready(PacketRef),
    /// Nothing delivered yet at the consumer's position.
    Empty,
}

impl<'a> RingReader<'a> {
    /// Attaches to a ring whose header is in `hdr`, validating what the producer wrote there.
    ///
    /// # Safety
    /// `data` must point to `geo.buf_size()` readable bytes for `'a` (the
    /// sub-buffer area of the same ring).
    pub unsafe fn from_parts(words: RingWords<'a>, data: NonNull<u8>) -> Result<Self, GeometryError> {
        let RingWords { hdr, sb, claims, .. } = words;
        if hdr.magic.load(Acquire) != RING_MAGIC || hdr.version_cpu.load(Relaxed) as u32 != LAYOUT_VERSION {
            return Err(GeometryError::BadHeader);
        }
        let geo = Geometry::new(hdr.subbuf_size.load(Relaxed), hdr.num_subbuf.load(Relaxed))?;
        let mode = Mode::from_u32(hdr.mode.load(Relaxed) as u32).ok_or(GeometryError::BadHeader)?;
        if sb.len() as u64 != geo.num_subbuf || claims.len() as u64 != geo.num_subbuf {
            return Err(GeometryError::Region);
        }
        let cpu = (hdr.version_cpu.load(Relaxed) >> 32) as u32;
        Ok(RingReader { w: words, data, geo, mode, cpu, _data: PhantomData })
    }

    /// The ring's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The ring's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The CPU the ring belongs to.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Counters for status reports.
    pub fn counters(&self) -> RingCounters {
        self.w.counters()
    }

    /// The consumed position (free-running bytes).
    pub fn consumed(&self) -> u64 {
        self.w.ctrl.consumed.load(Relaxed)
    }

    /// Puts the consumed position back to `pos`, for a consumer that keeps
    /// its own position (the shared word can be written by any process that
    /// mapped the channel's control memfd) and finds the word moved, or a
    /// value no honest consumer leaves there at attach.
    pub fn set_consumed(&self, pos: u64) {
        // Release, as in `release`: pairs with the producer's Acquire load
        // of `consumed` before it reopens a sub-buffer.
        self.w.ctrl.consumed.store(pos, Release);
    }

    /// Looks for the next delivered packet at the consumed position, skipping
    /// (overwrite mode) packets the producer has taken back.
    pub fn next_packet(&self) -> Poll {
        let sbs = self.geo.subbuf_size;
        loop {
            let c = self.w.ctrl.consumed.load(Relaxed);
            let w = self.w.hdr.write.load(Acquire) & !CLOSED;
            if c >= w {
                return Poll::Empty;
            }
            // Overwrite mode, lapped: only the ring ending with the sub-buffer
            // holding the last written byte (w - 1) can still be there.
            let last = w - 1;
            let oldest = (last - self.geo.offset_in_subbuf(last) + sbs).saturating_sub(self.geo.buf_size());
            if self.mode == Mode::Overwrite && c < oldest {
                self.w.ctrl.consumed.store(oldest, Release);
                continue;
            }
            let idx = self.geo.index(c) as usize;
            let lap = self.geo.lap(c);
            let d = self.w.sb[idx].delivered.load(Acquire);
            hook(HookPoint::ReaderDelivered);
            if d < lap + 1 {
                return Poll::Empty;
            }
            let claim = match self.mode {
                Mode::Discard => 0,
                // Relaxed: only compared, never a guard for the bytes (the
                // `delivered` load above is; docs/ring.md, "Why some orderings are Relaxed").
                Mode::Overwrite => self.w.claims[idx].load(Relaxed),
            };
            // Skipped: a later lap was delivered, or the claim names this lap
            // or a later one (`claim >> 1` is lap + 1): a producer took it,
            // or writers lapped it while this thread stalled between the
            // two loads (then the claim is `producer(lap + 1)` or later).
            if d > lap + 1 || claim >> 1 > lap {
                self.w.ctrl.consumed.store(c + sbs, Release);
                continue;
            }
            return Poll::Ready(PacketRef { pos: c, claim });
        }
    }

    /// The packet's bytes in the read-only mapping.
    ///
    /// In overwrite mode they may change while being read; [`RingReader::release`]
    /// says whether what was read is intact.
    pub fn packet_ptr(&self, p: &PacketRef) -> (*const u8, usize) {
        let at = (p.pos & (self.geo.buf_size() - 1)) as usize;
        // SAFETY: `at` is a sub-buffer start within the sub-buffer area.
        (unsafe { self.data.as_ptr().add(at) }, self.geo.subbuf_size as usize)
    }

    /// The packet's bytes, to be written out as they are (handed to
    /// `write(2)`: the kernel copies them).
    ///
    /// # Safety
    /// No thread of *this* process may write these bytes while the slice
    /// lives: either the producer is another process (in overwrite mode it
    /// may rewrite them meanwhile, outside this program's memory model;
    /// [`RingReader::release`] then refuses the copy), or the ring is in
    /// discard mode (a delivered packet is not reopened before its
    /// release). Otherwise use [`RingReader::copy_packet`].
    pub unsafe fn packet_bytes(&self, p: &PacketRef) -> &[u8] {
        let (ptr, len) = self.packet_ptr(p);
        // SAFETY: `ptr..ptr+len` is one sub-buffer of the mapping borrowed
        // for 'a, not written by this process (the caller's promise).
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }

    /// Copies the packet into `out` (up to `subbuf_size` bytes).
    ///
    /// In overwrite mode the producer may be rewriting the bytes: this is
    /// the read side of a seqlock (as crossbeam's `AtomicCell` fallback),
    /// volatile loads that the compiler may neither elide nor tear into
    /// assumptions, checked afterwards by [`RingReader::release`] (Acquire
    /// fence, then the producer's `write` and the claim word). A torn copy
    /// is thrown away, never used.
    pub fn copy_packet(&self, p: &PacketRef, out: &mut [u8]) {
        let (ptr, len) = self.packet_ptr(p);
        let len = len.min(out.len());
        // Word loads where the memory allows them (mappings are page
        // aligned; a test's heap ring may not be), bytes otherwise.
        let words = if ptr.align_offset(8) == 0 { len / 8 } else { 0 };
        let src = ptr.cast::<u64>();
        for (i, chunk) in out[..words * 8].chunks_exact_mut(8).enumerate() {
            // SAFETY: `ptr` is 8-byte aligned (tested above) and valid for
            // `len` bytes; word `i` lies inside them.
            let w = unsafe { core::ptr::read_volatile(src.add(i)) };
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        for (i, b) in out[words * 8..len].iter_mut().enumerate() {
            // SAFETY: as above, byte by byte for a tail shorter than a word.
            *b = unsafe { core::ptr::read_volatile(ptr.add(words * 8 + i)) };
        }
    }

    /// loom only: the pieces of the packet's sub-buffer as this thread's
    /// loads of their witnesses found them. Call it right after
    /// [`RingReader::copy_packet`]: together they model the copy's loads,
    /// and in overwrite mode they, not the copy, are what a real copy may
    /// have read (see `Witness`).
    #[cfg(loom)]
    pub fn witnessed(&self, p: &PacketRef) -> std::vec::Vec<crate::sync::SeenPiece> {
        let tracked = self.mode == Mode::Discard;
        self.w.witness.snapshot(p.pos & (self.geo.buf_size() - 1), self.geo.subbuf_size, tracked)
    }

    /// Marks the packet read and advances the consumed position. Returns
    /// `false` when the producer started overwriting it meanwhile (overwrite
    /// mode): the bytes read must be thrown away — they are counted as lost.
    pub fn release(&self, p: &PacketRef) -> bool {
        let ok = match self.mode {
            Mode::Discard => true,
            Mode::Overwrite => {
                // Seqlock reader: the copy's loads come before the checks.
                // If the copy saw a byte stored after a producer's move of
                // `write` (each writer fences with Release after it), this
                // load sees the move.
                fence(Acquire);
                let write = self.w.hdr.write.load(Relaxed);
                let next_lap = p.pos + self.geo.buf_size();
                if write & !CLOSED > next_lap {
                    // Someone reserved in the next lap of this sub-buffer:
                    // the copy may hold its bytes. Not claimed, so the
                    // opener of that lap counts these records as overwritten.
                    false
                } else {
                    let idx = self.geo.index(p.pos) as usize;
                    let lap = self.geo.lap(p.pos);
                    // The first of this CAS and the opener's `swap` on the
                    // word owns the lap. Relaxed: the copy is judged by the
                    // `write` check above (docs/ring.md, "Why some orderings are Relaxed").
                    self.w.claims[idx].compare_exchange(p.claim, claim::consumer(lap), Relaxed, Relaxed).is_ok()
                }
            }
        };
        self.w.ctrl.consumed.store(p.pos + self.geo.subbuf_size, Release);
        ok
    }
}

/// Heap-allocated ring memory, for tests and model checking.
#[cfg(any(test, loom, feature = "std"))]
pub mod heap {
    extern crate std;
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    /// A ring's words and sub-buffers on the heap.
    pub struct HeapRing {
        /// Header.
        pub hdr: Box<RingHeader>,
        /// Per-sub-buffer words.
        pub sb: Box<[SubbufState]>,
        /// Consumer words.
        pub ctrl: Box<RingCtrl>,
        /// Claim words.
        pub claims: Box<[AtomicU64]>,
        /// Sub-buffer bytes.
        pub data: Box<[core::cell::UnsafeCell<u8>]>,
        /// Geometry.
        pub geo: Geometry,
        /// What loom sees of `data` (see `Witness`).
        #[cfg(loom)]
        pub witness: crate::sync::Witness,
    }

    impl HeapRing {
        /// Allocates zeroed memory for `geo`.
        pub fn new(geo: Geometry) -> Self {
            let n = geo.num_subbuf as usize;
            HeapRing {
                hdr: Box::new(RingHeader::zeroed()),
                sb: (0..n).map(|_| SubbufState::zeroed()).collect::<Vec<_>>().into_boxed_slice(),
                ctrl: Box::new(RingCtrl::zeroed()),
                claims: (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>().into_boxed_slice(),
                data: (0..geo.buf_size())
                    .map(|_| core::cell::UnsafeCell::new(0))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
                geo,
                #[cfg(loom)]
                witness: Default::default(),
            }
        }

        fn words(&self) -> RingWords<'_> {
            RingWords {
                hdr: &self.hdr,
                sb: &self.sb,
                ctrl: &self.ctrl,
                claims: &self.claims,
                #[cfg(loom)]
                witness: &self.witness,
            }
        }

        fn data_ptr(&self) -> NonNull<u8> {
            NonNull::new(self.data.as_ptr() as *mut u8).unwrap()
        }

        /// The producer side.
        pub fn producer(&self, mode: Mode, id: StreamId) -> Ring<'_> {
            // SAFETY: the heap buffer lives as long as the borrow and is only
            // reached through the ring and its readers.
            unsafe { Ring::from_parts(self.words(), self.data_ptr(), self.geo, mode, id) }.unwrap()
        }

        /// The consumer side (after `producer` initialised the header).
        pub fn reader(&self) -> RingReader<'_> {
            // SAFETY: as above.
            unsafe { RingReader::from_parts(self.words(), self.data_ptr()) }.unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    #[test]
    fn the_encoder_copies_every_length_whole_at_its_place() {
        // Every branch of `copy` (below 4, 4–7, 8–16, 17–32, above), after
        // an odd offset, and the cut at the end of the reservation.
        for n in 0..=70usize {
            let src: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(7).wrapping_add(1)).collect();
            let mut buf = vec![0xeeu8; 3 + n + 5];
            let mut e = Encoder::new(&mut buf[..3 + n]);
            e.put(&[1, 2, 3]);
            e.put(&src);
            assert_eq!(e.written(), 3 + n);
            assert_eq!(&buf[..3], &[1, 2, 3]);
            assert_eq!(&buf[3..3 + n], &src[..], "length {n}");
            assert!(buf[3 + n..].iter().all(|&b| b == 0xee), "length {n}: written past the slice");
            let mut short = vec![0u8; n / 2];
            let mut e = Encoder::new(&mut short);
            e.put(&src);
            assert_eq!(e.written(), n / 2);
            assert_eq!(&short[..], &src[..n / 2], "length {n}, cut");
        }
    }
}
