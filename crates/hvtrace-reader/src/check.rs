//! Checking stream files for damage and writing repaired copies.
//!
//! A stream file is a sequence of packets, all of one size (the ring's
//! sub-buffer size) except perhaps the consumer's empty trailer packet
//! (header only) at the end. [`check_stream`] walks it, keeps every packet
//! whose header, records and order are sound, and reports everything else
//! with its byte offset: a damaged region is skipped by scanning forward for
//! the next valid packet header (magic, trace UUID, stream class and the
//! stream's packet size), so one bad packet costs only itself.
//!
//! The kernel's streams (`kernel_<cpu>`, stream class 1, written by
//! `hvtrace-ftrace`: one packet per tracefs page) are checked alike
//! ([`check_kernel_stream`]), against the kernel's event classes; their
//! packets have no common size, each is exactly its content.

use std::fmt;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use hvtrace_core::ctf::{packet, CTF_MAGIC};
use hvtrace_core::decode::{records, DecodeError, Schema};
use hvtrace_sys::fs;

use crate::account::{StreamAccount, ACCOUNT};
use crate::dir::{io_err, stream_cpu, Packet, ReadError, TraceDir, INCOMPLETE};

/// What a stream is expected to hold; `None` learns the value from the
/// first intact packet instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// The trace UUID (from the metadata).
    pub uuid: Option<[u8; 16]>,
    /// The CPU (from the file name): `stream_instance_id` and `cpu_id`.
    pub cpu: Option<u32>,
}

/// An intact packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketSummary {
    /// Byte offset in the stream file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// `packet_seq_num`.
    pub seq: u64,
    /// Records it holds.
    pub records: u64,
    /// `timestamp_begin`.
    pub timestamp_begin: u64,
    /// `timestamp_end`.
    pub timestamp_end: u64,
    /// Cumulative `events_discarded`.
    pub events_discarded: u64,
}

/// Which packet header field is out of order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderField {
    /// `packet_seq_num` must increase.
    Seq,
    /// `timestamp_begin` must not precede the previous packet's `timestamp_end`.
    Time,
    /// `events_discarded` (cumulative) must not decrease.
    Discarded,
}

impl fmt::Display for OrderField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OrderField::Seq => "packet_seq_num",
            OrderField::Time => "timestamp_begin",
            OrderField::Discarded => "events_discarded",
        })
    }
}

/// What is wrong with a stretch of a stream file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A packet whose magic number is wrong (its UUID is right).
    BadMagic,
    /// A packet whose UUID is not the trace's.
    UuidMismatch,
    /// A packet of another stream class than the stream file's.
    WrongStreamClass {
        /// The `stream_id` read.
        stream_id: u32,
        /// The stream file's class: 0 a ring's, 1 the kernel's.
        expected: u32,
    },
    /// A packet of another CPU than the stream's.
    WrongCpu {
        /// `stream_instance_id` read.
        stream_instance_id: u64,
        /// `cpu_id` read.
        cpu_id: u32,
        /// The stream's CPU.
        expected: u32,
    },
    /// `content_size` / `packet_size` are not byte multiples, inverted, or
    /// smaller than the header; or, in a kernel stream, not equal.
    BadSizes {
        /// `content_size` in bits.
        content_bits: u64,
        /// `packet_size` in bits.
        packet_bits: u64,
    },
    /// A packet whose size is not the stream's packet size.
    SizeMismatch {
        /// Bytes the header says.
        packet_len: u64,
        /// The stream's packet size.
        expected: u64,
    },
    /// `timestamp_begin > timestamp_end`.
    TimestampsInverted {
        /// `timestamp_begin`.
        begin: u64,
        /// `timestamp_end`.
        end: u64,
    },
    /// A record that does not decode.
    BadRecord(DecodeError),
    /// A record whose timestamp is outside the packet's `[begin, end]`.
    RecordOutOfRange {
        /// Offset of the record in the packet.
        at: usize,
        /// Its timestamp.
        timestamp: u64,
        /// `timestamp_begin`.
        begin: u64,
        /// `timestamp_end`.
        end: u64,
    },
    /// A packet out of order with its neighbours.
    OutOfOrder {
        /// The field.
        field: OrderField,
        /// Its value in this packet.
        value: u64,
        /// The previous intact packet's value (its `timestamp_end` for [`OrderField::Time`]).
        prev: Option<u64>,
        /// The next packet's value, when that is what disagrees.
        next: Option<u64>,
    },
    /// The file ends inside this packet.
    CutPacket {
        /// Bytes the packet should have.
        expected: u64,
    },
    /// Bytes that hold no packet header, followed by a packet.
    Unrecognised {
        /// They are all zero.
        zeros: bool,
    },
    /// Bytes after the last packet that hold no packet header.
    TrailingGarbage {
        /// They are all zero.
        zeros: bool,
    },
    /// Packets missing from the sequence (`packet_seq_num` skips them, or
    /// the consumer's account says it was handed them): see
    /// [`sequence_gaps`] for which gaps count.
    MissingPackets {
        /// First missing sequence number.
        first: u64,
        /// Last missing sequence number.
        last: u64,
        /// The consumer's account says it was handed them and lost them
        /// (its `lost` lines say why).
        consumer_lost: bool,
    },
}

impl ProblemKind {
    /// A short stable name for machines (`bad-magic`, `cut-packet`, …).
    pub fn code(&self) -> &'static str {
        match self {
            ProblemKind::BadMagic => "bad-magic",
            ProblemKind::UuidMismatch => "uuid-mismatch",
            ProblemKind::WrongStreamClass { .. } => "wrong-stream-class",
            ProblemKind::WrongCpu { .. } => "wrong-cpu",
            ProblemKind::BadSizes { .. } => "bad-sizes",
            ProblemKind::SizeMismatch { .. } => "size-mismatch",
            ProblemKind::TimestampsInverted { .. } => "timestamps-inverted",
            ProblemKind::BadRecord(_) => "bad-record",
            ProblemKind::RecordOutOfRange { .. } => "record-out-of-range",
            ProblemKind::OutOfOrder { .. } => "out-of-order",
            ProblemKind::CutPacket { .. } => "cut-packet",
            ProblemKind::Unrecognised { .. } => "unrecognised-bytes",
            ProblemKind::TrailingGarbage { .. } => "trailing-garbage",
            ProblemKind::MissingPackets { .. } => "missing-packets",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let zeros = |z: &bool| if *z { " (all zero)" } else { "" };
        match self {
            ProblemKind::BadMagic => write!(f, "bad packet magic"),
            ProblemKind::UuidMismatch => write!(f, "packet UUID differs from the metadata's"),
            ProblemKind::WrongStreamClass { stream_id, expected } => {
                write!(f, "stream_id {stream_id}, but this stream file's packets are of stream {expected}")
            }
            ProblemKind::WrongCpu { stream_instance_id, cpu_id, expected } => write!(
                f,
                "packet of another CPU (stream_instance_id {stream_instance_id}, cpu_id {cpu_id}) in the stream of CPU {expected}"
            ),
            ProblemKind::BadSizes { content_bits, packet_bits } => {
                write!(f, "impossible sizes (content_size {content_bits} bits, packet_size {packet_bits} bits)")
            }
            ProblemKind::SizeMismatch { packet_len, expected } => {
                write!(f, "packet_size {packet_len} bytes, but this stream's packets are {expected} bytes")
            }
            ProblemKind::TimestampsInverted { begin, end } => {
                write!(f, "timestamp_begin {begin} > timestamp_end {end}")
            }
            ProblemKind::BadRecord(e) => write!(f, "record does not decode: {e}"),
            ProblemKind::RecordOutOfRange { at, timestamp, begin, end } => {
                write!(f, "record at byte {at} has timestamp {timestamp} outside the packet's [{begin}, {end}]")
            }
            ProblemKind::OutOfOrder { field, value, prev, next } => {
                write!(f, "{field} {value} out of order")?;
                match (prev, next) {
                    (Some(p), Some(n)) => write!(f, " (previous packet {p}, next packet {n})"),
                    (Some(p), None) if *field == OrderField::Time => {
                        write!(f, " (previous packet ends at {p})")
                    }
                    (Some(p), None) => write!(f, " (previous packet {p})"),
                    (None, Some(n)) => write!(f, " (next packet {n})"),
                    (None, None) => Ok(()),
                }
            }
            ProblemKind::CutPacket { expected } => {
                write!(f, "file ends inside a packet of {expected} bytes (cut last packet)")
            }
            ProblemKind::Unrecognised { zeros: z } => write!(f, "bytes that hold no packet{}", zeros(z)),
            ProblemKind::TrailingGarbage { zeros: z } => {
                write!(f, "trailing bytes after the last packet{}", zeros(z))
            }
            ProblemKind::MissingPackets { first, last, consumer_lost } => {
                let n = last - first + 1;
                let s = if n == 1 { "" } else { "s" };
                if first == last {
                    write!(f, "packet seq {first} missing")?;
                } else {
                    write!(f, "packet seqs {first}..={last} missing ({n} packet{s})")?;
                }
                if *consumer_lost {
                    write!(f, "; the consumer was handed and lost them (see its {ACCOUNT})")?;
                }
                Ok(())
            }
        }
    }
}

/// A damaged stretch of a stream file: left out by [`repair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Byte offset in the stream file.
    pub offset: u64,
    /// Bytes it spans.
    pub len: u64,
    /// `packet_seq_num` as read from the damaged header, when there is one.
    pub seq: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes {}..{}", self.offset, self.offset + self.len)?;
        if let Some(s) = self.seq {
            write!(f, " (packet seq {s})")?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// The verdict on one stream file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// File size.
    pub len: u64,
    /// The stream's packet size (from the first intact full packet).
    pub packet_size: Option<u64>,
    /// Intact packets, in file order.
    pub packets: Vec<PacketSummary>,
    /// Damage, in file order.
    pub problems: Vec<Problem>,
}

impl StreamReport {
    /// Records in the intact packets.
    pub fn records(&self) -> u64 {
        self.packets.iter().map(|p| p.records).sum()
    }

    /// The last intact packet's cumulative `events_discarded`.
    pub fn events_discarded(&self) -> u64 {
        self.packets.last().map_or(0, |p| p.events_discarded)
    }

    /// Packets missing between intact packets: the sum of the gaps in
    /// `packet_seq_num` (overwrite mode: packets overwritten before they
    /// were read; babeltrace2 reports each gap as discarded packets). A gap
    /// before the first packet is not counted, as no reader reports it.
    pub fn packets_missing(&self) -> u64 {
        self.packets.windows(2).map(|w| w[1].seq.saturating_sub(w[0].seq + 1)).sum()
    }

    /// Whether nothing is damaged.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    /// The intact packets of `bytes` (the file this report is about).
    pub fn intact_packets<'b>(&self, bytes: &'b [u8]) -> impl Iterator<Item = Packet<'b>> + use<'b, '_> {
        self.packets.iter().filter_map(move |p| {
            let b = bytes.get(p.offset as usize..(p.offset + p.len) as usize)?;
            let info = hvtrace_core::decode::packet_info(b).ok()?;
            Some(Packet { offset: p.offset as usize, info, bytes: b })
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Header fields read without any check (`b` holds at least a header).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Raw {
    pub magic: u32,
    pub uuid: [u8; 16],
    pub stream_id: u32,
    pub instance: u64,
    pub begin: u64,
    pub seq: u64,
    pub end: u64,
    pub content_bits: u64,
    pub packet_bits: u64,
    pub discarded: u64,
    pub cpu_id: u32,
}

pub(crate) fn raw(b: &[u8]) -> Raw {
    let mut uuid = [0; 16];
    uuid.copy_from_slice(&b[packet::UUID..packet::UUID + 16]);
    Raw {
        magic: u32_at(b, packet::MAGIC),
        uuid,
        stream_id: u32_at(b, packet::STREAM_ID),
        instance: u64_at(b, packet::STREAM_INSTANCE_ID),
        begin: u64_at(b, packet::TIMESTAMP_BEGIN),
        seq: u64_at(b, packet::PACKET_SEQ_NUM),
        end: u64_at(b, packet::TIMESTAMP_END),
        content_bits: u64_at(b, packet::CONTENT_SIZE),
        packet_bits: u64_at(b, packet::PACKET_SIZE),
        discarded: u64_at(b, packet::EVENTS_DISCARDED),
        cpu_id: u32_at(b, packet::CPU_ID),
    }
}

/// The order of packets in a stream: `packet_seq_num` increases, time does
/// not go back, the cumulative loss count does not shrink.
/// The merge walk holds its packets to the same order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Order {
    pub(crate) seq: u64,
    pub(crate) begin: u64,
    pub(crate) end: u64,
    pub(crate) discarded: u64,
}

impl Order {
    fn of(r: &Raw) -> Order {
        Order { seq: r.seq, begin: r.begin, end: r.end, discarded: r.discarded }
    }

    /// The first field in which `next` cannot follow `self`.
    pub(crate) fn breaks(&self, next: &Order) -> Option<OrderField> {
        if next.seq <= self.seq {
            Some(OrderField::Seq)
        } else if next.begin < self.end {
            Some(OrderField::Time)
        } else if next.discarded < self.discarded {
            Some(OrderField::Discarded)
        } else {
            None
        }
    }

    pub(crate) fn value(&self, f: OrderField, as_prev: bool) -> u64 {
        match f {
            OrderField::Seq => self.seq,
            OrderField::Time if as_prev => self.end,
            OrderField::Time => self.begin,
            OrderField::Discarded => self.discarded,
        }
    }
}

/// What was found at an offset.
enum Found {
    /// A sound packet (order not yet judged).
    Packet(PacketSummary, Order),
    /// A damaged packet; `len` when its header can be trusted for its extent.
    Damaged { kind: ProblemKind, len: Option<u64>, seq: Option<u64> },
    /// A packet header whose packet runs past the end of the file.
    Cut { expected: u64, seq: Option<u64> },
    /// No packet header here.
    Nothing,
}

/// The kernel's stream class (`hvtrace-ftrace`'s `KERNEL_STREAM_ID`).
const KERNEL_CLASS: u32 = 1;

struct Walker<'b, 's, S: ?Sized> {
    b: &'b [u8],
    schema: &'s S,
    uuid: Option<[u8; 16]>,
    cpu: Option<u32>,
    /// The stream class every packet must have.
    class: u32,
    /// The size every packet has (a ring's sub-buffer); never known for a
    /// kernel stream, whose packets are each exactly their content.
    packet_size: Option<u64>,
}

impl<S: Schema + ?Sized> Walker<'_, '_, S> {
    /// Could a packet header start at `at`? (Its magic, or the trace UUID where it belongs.)
    fn header_like(&self, at: usize) -> bool {
        let b = &self.b[at..];
        let magic = CTF_MAGIC.to_le_bytes();
        let n = b.len().min(4);
        b[..n] == magic[..n]
            || (b.len() >= packet::UUID + 16 && self.uuid.is_some_and(|u| b[packet::UUID..packet::UUID + 16] == u))
    }

    /// The header at `at`, if it is a plausible one of this stream: right
    /// magic, UUID and stream class, sizes consistent and the stream's.
    /// The packet may run past the end of the file.
    fn header(&self, at: usize) -> Result<Raw, ProblemKind> {
        let r = raw(&self.b[at..]);
        if r.magic != CTF_MAGIC {
            return Err(ProblemKind::BadMagic);
        }
        if self.uuid.is_some_and(|u| u != r.uuid) {
            return Err(ProblemKind::UuidMismatch);
        }
        if r.stream_id != self.class {
            return Err(ProblemKind::WrongStreamClass { stream_id: r.stream_id, expected: self.class });
        }
        let (c, p) = (r.content_bits, r.packet_bits);
        let unpadded = self.class != KERNEL_CLASS || c == p;
        if c % 8 != 0 || p % 8 != 0 || c > p || c < packet::LEN as u64 * 8 || !unpadded {
            return Err(ProblemKind::BadSizes { content_bits: c, packet_bits: p });
        }
        let empty = p == packet::LEN as u64 * 8 && c == p;
        // A flushed packet is its content rounded up to a page.
        let flushed = |size: u64| p / 8 < size && (p / 8) % 4096 == 0;
        match self.packet_size {
            Some(size) if p / 8 != size && !empty && !flushed(size) => {
                Err(ProblemKind::SizeMismatch { packet_len: p / 8, expected: size })
            }
            _ => Ok(r),
        }
    }

    /// The first offset at or after `from` where a plausible header starts.
    fn resync(&self, from: usize) -> Option<usize> {
        let magic = CTF_MAGIC.to_le_bytes();
        let mut at = from;
        while at + packet::LEN <= self.b.len() {
            let i = self.b[at..].windows(4).position(|w| w == magic)?;
            at += i;
            if at + packet::LEN <= self.b.len() && self.header(at).is_ok() {
                return Some(at);
            }
            at += 1;
        }
        None
    }

    fn examine(&self, at: usize) -> Found {
        let rem = self.b.len() - at;
        if rem < packet::LEN {
            return if self.header_like(at) {
                Found::Cut { expected: self.packet_size.unwrap_or(packet::LEN as u64), seq: None }
            } else {
                Found::Nothing
            };
        }
        let r = raw(&self.b[at..]);
        let seq = Some(r.seq);
        if let Err(kind) = self.header(at) {
            if kind == ProblemKind::BadMagic && !self.header_like(at) {
                return Found::Nothing;
            }
            return Found::Damaged { kind, len: None, seq };
        }
        let len = r.packet_bits / 8;
        if len > rem as u64 {
            return Found::Cut { expected: len, seq };
        }
        let damaged = |kind| Found::Damaged { kind, len: Some(len), seq };
        if let Some(cpu) = self.cpu {
            if r.instance != cpu as u64 || r.cpu_id != cpu {
                return damaged(ProblemKind::WrongCpu {
                    stream_instance_id: r.instance,
                    cpu_id: r.cpu_id,
                    expected: cpu,
                });
            }
        }
        if r.begin > r.end {
            return damaged(ProblemKind::TimestampsInverted { begin: r.begin, end: r.end });
        }
        let bytes = &self.b[at..at + len as usize];
        let it = match records(bytes, self.schema) {
            Ok((_, it)) => it,
            Err(e) => return damaged(ProblemKind::BadRecord(e)),
        };
        let mut n = 0;
        for rec in it {
            match rec {
                Ok(rec) if rec.timestamp < r.begin || rec.timestamp > r.end => {
                    return damaged(ProblemKind::RecordOutOfRange {
                        at: rec.offset,
                        timestamp: rec.timestamp,
                        begin: r.begin,
                        end: r.end,
                    });
                }
                Ok(_) => n += 1,
                Err(e) => return damaged(ProblemKind::BadRecord(e)),
            }
        }
        let summary = PacketSummary {
            offset: at as u64,
            len,
            seq: r.seq,
            records: n,
            timestamp_begin: r.begin,
            timestamp_end: r.end,
            events_discarded: r.discarded,
        };
        Found::Packet(summary, Order::of(&r))
    }

    /// The order fields of a plausible, complete packet at `at`.
    fn order_at(&self, at: usize) -> Option<Order> {
        if at + packet::LEN > self.b.len() {
            return None;
        }
        let r = self.header(at).ok()?;
        (at as u64 + r.packet_bits / 8 <= self.b.len() as u64).then(|| Order::of(&r))
    }

    /// Learns the stream's packet size, UUID and CPU from its packets that
    /// are sound on their own (scanning forward past damage). The size is
    /// the one most sound packets have — not the first: flushed packets
    /// (a stop, a flush request) are shorter.
    fn learn(&mut self) {
        let mut sizes: Vec<(u64, usize)> = Vec::new();
        let mut at = 0;
        while at + packet::LEN <= self.b.len() {
            let Some(found) = self.resync(at) else { break };
            at = found + 1;
            if let Found::Packet(p, _) = self.examine(found) {
                let r = raw(&self.b[found..]);
                self.uuid.get_or_insert(r.uuid);
                self.cpu.get_or_insert(r.cpu_id);
                if p.len > packet::LEN as u64 {
                    match sizes.iter_mut().find(|s| s.0 == p.len) {
                        Some(s) => s.1 += 1,
                        None => sizes.push((p.len, 1)),
                    }
                    at = found + p.len as usize;
                }
            }
        }
        if self.class != KERNEL_CLASS {
            self.packet_size = sizes.iter().max_by_key(|&&(len, n)| (n, len)).map(|s| s.0);
        }
    }
}

/// Checks one stream file's bytes against `schema` (see the module doc).
pub fn check_stream<S: Schema + ?Sized>(bytes: &[u8], schema: &S, expect: &Expect) -> StreamReport {
    walk(bytes, schema, expect, 0)
}

/// Checks one kernel stream file's bytes (`kernel_<cpu>`, stream class 1)
/// against the kernel's event classes `schema` ([`crate::Metadata::kernel`]).
pub fn check_kernel_stream<S: Schema + ?Sized>(bytes: &[u8], schema: &S, expect: &Expect) -> StreamReport {
    walk(bytes, schema, expect, KERNEL_CLASS)
}

fn walk<S: Schema + ?Sized>(bytes: &[u8], schema: &S, expect: &Expect, class: u32) -> StreamReport {
    let mut w = Walker { b: bytes, schema, uuid: expect.uuid, cpu: expect.cpu, class, packet_size: None };
    w.learn();
    let mut rep = StreamReport { len: bytes.len() as u64, packet_size: w.packet_size, ..Default::default() };
    let n = bytes.len();
    let mut prev: Option<Order> = None;
    let mut at = 0;
    while at < n {
        let problem = match w.examine(at) {
            Found::Packet(p, order) => {
                let end = at + p.len as usize;
                match out_of_order(&w, prev, order, end) {
                    None => {
                        rep.packets.push(p);
                        prev = Some(order);
                    }
                    Some(kind) => {
                        rep.problems.push(Problem { offset: at as u64, len: p.len, seq: Some(p.seq), kind });
                    }
                }
                at = end;
                continue;
            }
            Found::Damaged { kind, len: Some(len), seq } => Problem { offset: at as u64, len, seq, kind },
            Found::Damaged { kind, len: None, seq } => {
                let next = w.resync(at + 1).unwrap_or(n);
                let end = w.packet_size.map_or(next, |p| next.min(at.saturating_add(p as usize)));
                Problem { offset: at as u64, len: (end - at) as u64, seq, kind }
            }
            Found::Cut { expected, seq } => {
                Problem { offset: at as u64, len: (n - at) as u64, seq, kind: ProblemKind::CutPacket { expected } }
            }
            Found::Nothing => {
                let next = w.resync(at + 1);
                let end = next.unwrap_or(n);
                let zeros = bytes[at..end].iter().all(|&b| b == 0);
                let kind = match next {
                    Some(_) => ProblemKind::Unrecognised { zeros },
                    None => ProblemKind::TrailingGarbage { zeros },
                };
                Problem { offset: at as u64, len: (end - at) as u64, seq: None, kind }
            }
        };
        at += problem.len as usize;
        rep.problems.push(problem);
    }
    rep
}

/// Whether a sound packet with order fields `this`, ending at `end`, is out
/// of order. A packet that cannot follow the previous intact one is; so is
/// one the next packet cannot follow when the next could follow the
/// previous (or, first in the stream, when the one after the next can
/// follow the next): then this packet is the odd one out.
fn out_of_order<S: Schema + ?Sized>(
    w: &Walker<'_, '_, S>,
    prev: Option<Order>,
    this: Order,
    end: usize,
) -> Option<ProblemKind> {
    if let Some(p) = prev {
        if let Some(field) = p.breaks(&this) {
            return Some(ProblemKind::OutOfOrder {
                field,
                value: this.value(field, false),
                prev: Some(p.value(field, true)),
                next: None,
            });
        }
    }
    let next = w.order_at(end)?;
    let field = this.breaks(&next)?;
    let next_is_odd = match prev {
        Some(p) => p.breaks(&next).is_some(),
        None => {
            let next_len = (w.b.len() - end).min(u64_at(w.b, end + packet::PACKET_SIZE) as usize / 8);
            match w.order_at(end + next_len) {
                Some(after) => next.breaks(&after).is_some(),
                None => true,
            }
        }
    };
    (!next_is_odd).then(|| ProblemKind::OutOfOrder {
        field,
        value: this.value(field, true),
        prev: prev.map(|p| p.value(field, true)),
        next: Some(next.value(field, false)),
    })
}

/// The packets missing from a stream's sequence, as problems (offset: the
/// packet after the gap, or the end of the file; length 0).
///
/// Sequence numbers are the ring's sub-buffer numbers, so a stream without
/// loss numbers its packets one by one. Which gaps count as damage:
/// * with no `account` (an older trace): every gap between two intact
///   packets;
/// * in discard mode: every gap between the first packet the consumer was
///   handed and the last (`first..next` in the account), at either end too;
/// * in overwrite mode: only packets the account says the consumer lost.
///   Other gaps are the flight recorder's overwritten packets, which the
///   trace accounts for in `events_discarded` (the producer counted their
///   events as overwritten).
///
/// Sequence numbers named by a damaged packet are left out: that packet is
/// reported already.
pub fn sequence_gaps(report: &StreamReport, account: Option<(&StreamAccount, bool)>) -> Vec<Problem> {
    let damaged: Vec<u64> = report.problems.iter().filter_map(|p| p.seq).collect();
    let mut present: Vec<(u64, u64)> = report.packets.iter().map(|p| (p.seq, p.offset)).collect();
    present.sort_unstable();
    let lost_by_consumer = |seq: u64| account.is_some_and(|(a, _)| a.lost.iter().any(|r| r.contains(seq)));
    let counts = |seq: u64| match account {
        Some((_, true)) => lost_by_consumer(seq),
        _ => !damaged.contains(&seq),
    };
    // Holes: between intact packets, and (with an account) before the first
    // and after the last packet the consumer was handed.
    let mut holes: Vec<(u64, u64, u64)> = Vec::new(); // first, end (excluded), offset
    let mut expected: Option<u64> = account.map(|(a, _)| a.first);
    for &(seq, offset) in &present {
        if let Some(from) = expected.filter(|&from| seq > from) {
            holes.push((from, seq, offset));
        }
        let after = seq.saturating_add(1);
        expected = Some(expected.map_or(after, |e| e.max(after)));
    }
    if let Some((a, _)) = account {
        let from = expected.unwrap_or(a.first);
        if a.next > from {
            holes.push((from, a.next, report.len));
        }
    }
    // Within a hole, whether a number counts and who lost it change only at
    // the ends of the account's `lost` ranges and around damaged packets:
    // walk those stretches (a crafted file can make a hole 2^64 long).
    let mut cuts: Vec<u64> = damaged.iter().flat_map(|&d| [d, d.saturating_add(1)]).collect();
    if let Some((a, _)) = account {
        cuts.extend(a.lost.iter().flat_map(|r| [r.first, r.last.saturating_add(1)]));
    }
    let mut out: Vec<Problem> = Vec::new();
    for (first, end, offset) in holes {
        let mut bounds: Vec<u64> = cuts.iter().copied().filter(|&c| c > first && c < end).collect();
        bounds.push(end);
        bounds.sort_unstable();
        bounds.dedup();
        let mut start = first;
        for stop in bounds {
            if counts(start) {
                let by = lost_by_consumer(start);
                match out.last_mut() {
                    Some(Problem { kind: ProblemKind::MissingPackets { last, consumer_lost, .. }, .. })
                        if *last + 1 == start && *consumer_lost == by =>
                    {
                        *last = stop - 1
                    }
                    _ => out.push(Problem {
                        offset,
                        len: 0,
                        seq: Some(start),
                        kind: ProblemKind::MissingPackets { first: start, last: stop - 1, consumer_lost: by },
                    }),
                }
            }
            start = stop;
        }
    }
    out
}

/// A file of the trace directory besides the metadata and the streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirNote {
    /// The consumer's `INCOMPLETE` marker, with its text: the trace was cut
    /// short. Empty (as the consumer writes it) it is only news; with text,
    /// babeltrace2 takes it for a stream file and fails.
    Incomplete(String),
    /// A non-empty file that is neither the metadata nor a stream file:
    /// babeltrace2 takes it for a stream file and fails.
    Foreign(String),
    /// A kernel stream file (`kernel_<cpu>`) in a trace whose metadata
    /// does not describe the kernel's streams: babeltrace2 fails on it.
    Undeclared(String),
    /// A stream file's name on something that is not a regular file (a
    /// directory, FIFO, symbolic link, socket or device): the stream it
    /// should hold is gone.
    NotAFile {
        /// The name.
        name: String,
        /// What it is.
        kind: &'static str,
    },
    /// The consumer's account names a stream whose file is missing.
    MissingStream {
        /// The CPU.
        cpu: u32,
    },
    /// The consumer's account (`.hvtrace-consumer`) cannot be read: which
    /// packets the trace should hold is unknown.
    BadAccount(String),
    /// The consumer's account has no `end` line: the consumer did not finish
    /// (killed); the packets it wrote may all be intact.
    Unfinished,
}

impl DirNote {
    /// Whether CTF readers fail on the file (so the trace is not intact).
    pub fn in_the_way(&self) -> bool {
        match self {
            DirNote::Incomplete(text) => !text.is_empty(),
            DirNote::Foreign(_)
            | DirNote::Undeclared(_)
            | DirNote::NotAFile { .. }
            | DirNote::MissingStream { .. }
            | DirNote::BadAccount(_) => true,
            DirNote::Unfinished => false,
        }
    }

    /// The file's name.
    pub fn file(&self) -> &str {
        match self {
            DirNote::Incomplete(_) => INCOMPLETE,
            DirNote::Foreign(name) | DirNote::Undeclared(name) | DirNote::NotAFile { name, .. } => name,
            DirNote::MissingStream { .. } | DirNote::BadAccount(_) | DirNote::Unfinished => ACCOUNT,
        }
    }
}

impl fmt::Display for DirNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirNote::Incomplete(why) if why.is_empty() => {
                write!(f, "{INCOMPLETE}: the trace was cut short (the packets written may all be intact)")
            }
            DirNote::Incomplete(why) => write!(
                f,
                "{INCOMPLETE}: the trace was cut short ({why}); babeltrace2 takes this non-empty note for a stream file and fails"
            ),
            DirNote::Foreign(name) => {
                write!(f, "{name}: not a stream file; babeltrace2 takes it for one and fails")
            }
            DirNote::Undeclared(name) => write!(
                f,
                "{name}: a kernel stream, but the metadata does not describe the kernel's streams; babeltrace2 fails on it"
            ),
            DirNote::NotAFile { name, kind } => {
                write!(f, "{name}: a {kind} where a stream file should be; the stream's packets are gone")
            }
            DirNote::MissingStream { cpu } => {
                write!(f, "{ACCOUNT}: the consumer wrote a stream for CPU {cpu}, but its file is missing")
            }
            DirNote::BadAccount(why) => {
                write!(f, "{ACCOUNT}: the consumer's account cannot be read ({why}); missing packets may go unnoticed")
            }
            DirNote::Unfinished => {
                write!(f, "{ACCOUNT}: the consumer did not finish (killed?); the packets written may all be intact")
            }
        }
    }
}

/// One stream file's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamCheck {
    /// File name.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// CPU from the file name.
    pub cpu: u32,
    /// The verdict.
    pub report: StreamReport,
}

/// The verdict on a whole trace directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The directory.
    pub dir: PathBuf,
    /// Every stream file: the rings', then the kernel's (when the metadata
    /// describes them).
    pub streams: Vec<StreamCheck>,
    /// Other files: the `INCOMPLETE` marker, files in the way of CTF readers.
    pub notes: Vec<DirNote>,
}

impl CheckReport {
    /// Whether nothing is damaged and nothing is in the way.
    pub fn is_intact(&self) -> bool {
        !self.notes.iter().any(DirNote::in_the_way) && self.streams.iter().all(|s| s.report.is_intact())
    }

    /// Records in intact packets, all streams.
    pub fn records(&self) -> u64 {
        self.streams.iter().map(|s| s.report.records()).sum()
    }
}

/// Checks every stream file of the trace at `dir`.
pub fn check(dir: &Path) -> Result<CheckReport, ReadError> {
    let t = TraceDir::open(dir)?;
    check_dir(&t).map(|(r, _)| r)
}

/// Checks an opened trace; also returns the stream files' bytes.
fn check_dir(t: &TraceDir) -> Result<(CheckReport, Vec<Vec<u8>>), ReadError> {
    let mut streams = Vec::new();
    let mut contents = Vec::new();
    let mut notes: Vec<DirNote> = t.incomplete.iter().cloned().map(DirNote::Incomplete).collect();
    let account = match &t.account {
        Some(Ok(a)) => Some(a),
        Some(Err(why)) => {
            notes.push(DirNote::BadAccount(why.clone()));
            None
        }
        None => None,
    };
    // The kernel's streams after the rings': the consumer's account is not
    // theirs (every gap between their packets is damage), and without the
    // kernel's classes in the metadata they are in the way of CTF readers.
    let kernel = t.metadata.kernel.as_ref();
    let rings = t.streams.iter().map(|s| (s, None));
    let kernel_streams = kernel.into_iter().flat_map(|k| t.kernel_streams.iter().map(move |s| (s, Some(k))));
    for (s, kernel_classes) in rings.chain(kernel_streams) {
        let bytes = s.read()?;
        let expect = Expect { uuid: Some(t.metadata.uuid), cpu: Some(s.cpu) };
        let (mut report, acc) = match kernel_classes {
            Some(k) => (check_kernel_stream(&bytes, k, &expect), None),
            None => (check_stream(&bytes, t.schema(), &expect), account),
        };
        let of_stream = acc.and_then(|a| a.stream(s.cpu).map(|st| (st, a.overwrite)));
        // A killed consumer's account names no stream: the mode still says
        // whether gaps between packets are the flight recorder's.
        let gaps = match (of_stream, acc) {
            (None, Some(a)) if a.overwrite => Vec::new(),
            _ => sequence_gaps(&report, of_stream),
        };
        report.problems.extend(gaps);
        report.problems.sort_by_key(|p| p.offset);
        streams.push(StreamCheck { name: s.name.clone(), path: s.path.clone(), cpu: s.cpu, report });
        contents.push(bytes);
    }
    if kernel.is_none() {
        notes.extend(t.kernel_streams.iter().map(|s| DirNote::Undeclared(s.name.clone())));
    }
    notes.extend(t.foreign.iter().cloned().map(DirNote::Foreign));
    notes.extend(t.not_files.iter().map(|(name, kind)| DirNote::NotAFile { name: name.clone(), kind }));
    if let Some(a) = account {
        for st in &a.streams {
            if !t.streams.iter().any(|s| s.cpu == st.cpu)
                && !t.not_files.iter().any(|(n, _)| stream_cpu(n) == Some(st.cpu))
            {
                notes.push(DirNote::MissingStream { cpu: st.cpu });
            }
        }
        if a.end.is_none() {
            notes.push(DirNote::Unfinished);
        }
    }
    Ok((CheckReport { dir: t.path.clone(), streams, notes }, contents))
}

/// What [`repair`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// The check of the source trace.
    pub check: CheckReport,
    /// The output directory.
    pub out: PathBuf,
    /// Stream files written (a stream without intact packets is left out).
    pub files: Vec<String>,
    /// Packets written.
    pub packets: u64,
    /// Records in them.
    pub records: u64,
}

/// Checks the trace at `dir` and writes to `out` (a new or empty directory)
/// a copy holding its metadata and only its intact packets, in order, an
/// empty `INCOMPLETE` marker if the source had one, and the consumer's
/// account if it had a readable one (so a check of the copy still knows
/// which packets are missing). Foreign files, and kernel streams the
/// metadata does not describe, are not copied: CTF readers
/// fail on them.
///
/// Every file is created in the directory opened once (`O_NOFOLLOW`),
/// `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600 (a new directory 0700): no
/// name someone else placed there, a symbolic link included, is followed.
/// Any write, `fsync` or create failure (a full disk) is an error.
pub fn repair(dir: &Path, out: &Path) -> Result<RepairReport, ReadError> {
    let t = TraceDir::open(dir)?;
    match fs::create_dir(out, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Missing parents: made as `create_dir_all` would, then `out` itself.
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent).map_err(io_err(out, "create"))?;
            }
            fs::create_dir(out, 0o700).map_err(io_err(out, "create"))?;
        }
        Err(e) => return Err(io_err(out, "create")(e)),
    }
    let outdir = fs::open_dir(out).map_err(io_err(out, "open (as a directory, not through a link)"))?;
    let mut entries = std::fs::read_dir(out).map_err(io_err(out, "open"))?;
    if entries.next().is_some() {
        return Err(ReadError::Output { path: out.into(), why: "exists and is not empty".into() });
    }
    let (check, contents) = check_dir(&t)?;
    let write = |name: &str, parts: &[&[u8]]| write_file(&outdir, out, name, parts);
    write("metadata", &[t.metadata_text.as_bytes()])?;
    // The account before the streams: a copy cut short by a full disk then
    // names the streams and packets it lacks.
    if let Some(Ok(a)) = &t.account {
        write(ACCOUNT, &[a.to_string().as_bytes()])?;
    }
    let (mut files, mut packets, mut records) = (Vec::new(), 0, 0);
    for (s, bytes) in check.streams.iter().zip(&contents) {
        if s.report.packets.is_empty() {
            continue;
        }
        let parts: Vec<&[u8]> =
            s.report.packets.iter().map(|p| &bytes[p.offset as usize..(p.offset + p.len) as usize]).collect();
        write(&s.name, &parts)?;
        files.push(s.name.clone());
        packets += s.report.packets.len() as u64;
        records += s.report.records();
    }
    if t.incomplete.is_some() {
        write(INCOMPLETE, &[])?;
    }
    sync_dir(&outdir).map_err(io_err(out, "sync"))?;
    Ok(RepairReport { check, out: out.into(), files, packets, records })
}

/// `fsync` of the directory through its descriptor.
fn sync_dir(dir: &OwnedFd) -> std::io::Result<()> {
    std::fs::File::from(dir.try_clone()?).sync_all()
}

fn write_file(dir: &OwnedFd, out: &Path, name: &str, parts: &[&[u8]]) -> Result<(), ReadError> {
    let path = out.join(name);
    let mut f = fs::create_at(dir, name, 0o600).map_err(io_err(&path, "create"))?;
    for p in parts {
        f.write_all(p).map_err(io_err(&path, "write"))?;
    }
    f.sync_all().map_err(io_err(&path, "sync"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::SeqRange;

    fn report(seqs: &[u64]) -> StreamReport {
        let packets = seqs
            .iter()
            .enumerate()
            .map(|(k, &seq)| PacketSummary {
                offset: k as u64 * 4096,
                len: 4096,
                seq,
                records: 1,
                timestamp_begin: 0,
                timestamp_end: 0,
                events_discarded: 0,
            })
            .collect();
        StreamReport { len: seqs.len() as u64 * 4096, packet_size: Some(4096), packets, problems: Vec::new() }
    }

    fn missing(p: &[Problem]) -> Vec<(u64, u64, bool)> {
        p.iter()
            .map(|p| match p.kind {
                ProblemKind::MissingPackets { first, last, consumer_lost } => (first, last, consumer_lost),
                k => panic!("{k:?}"),
            })
            .collect()
    }

    #[test]
    fn which_gaps_are_damage() {
        // No account: gaps between packets only.
        assert_eq!(missing(&sequence_gaps(&report(&[2, 3, 7, 8]), None)), [(4, 6, false)]);
        assert!(sequence_gaps(&report(&[5, 6]), None).is_empty());
        // Discard mode: both ends too; the consumer's losses named.
        let lost = vec![SeqRange { first: 4, last: 5, why: "disk full".into() }];
        let acc = StreamAccount { cpu: 0, first: 0, next: 11, lost, torn: vec![] };
        assert_eq!(
            missing(&sequence_gaps(&report(&[2, 3, 7, 8]), Some((&acc, false)))),
            [(0, 1, false), (4, 5, true), (6, 6, false), (9, 10, false)]
        );
        // Overwrite mode: only what the consumer lost.
        assert_eq!(missing(&sequence_gaps(&report(&[2, 3, 7, 8]), Some((&acc, true)))), [(4, 5, true)]);
        // A damaged packet is not missing as well.
        let mut r = report(&[2, 3, 7, 8]);
        r.problems.push(Problem { offset: 0, len: 4096, seq: Some(5), kind: ProblemKind::BadMagic });
        assert_eq!(missing(&sequence_gaps(&r, None)), [(4, 4, false), (6, 6, false)]);
        // A crafted sequence number makes a hole of 2^63: one problem, at once.
        let g = sequence_gaps(&report(&[0, 1 << 63, u64::MAX]), None);
        assert_eq!(missing(&g), [(1, (1 << 63) - 1, false), ((1 << 63) + 1, u64::MAX - 1, false)]);
    }
}
