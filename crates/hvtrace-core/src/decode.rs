//! Decoding packets and records: the inverse of the ring's encoder, used by
//! the consumer's checks, `hvtrace check` / `view` and the tests. Never
//! panics on any input: every malformation is a [`DecodeError`].

use crate::ctf::{header, packet, CTF_MAGIC};
use crate::event::EventDesc;
use crate::field::FieldKind;

/// What is wrong with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a packet header.
    ShortHeader,
    /// The magic number is wrong.
    BadMagic,
    /// content_size / packet_size are not byte multiples, inverted, or exceed the bytes given.
    BadSizes,
    /// A record's id names no declared event.
    UnknownEvent {
        /// Offset of the record in the packet.
        at: usize,
        /// The id read.
        id: u32,
    },
    /// A record runs past the packet content.
    Truncated {
        /// Offset of the record in the packet.
        at: usize,
    },
    /// A field holds an impossible value (an unterminated string, an oversized array).
    BadField {
        /// Offset of the record in the packet.
        at: usize,
    },
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::ShortHeader => {
                write!(f, "packet shorter than its {}-byte header", packet::LEN)
            }
            DecodeError::BadMagic => write!(f, "bad packet magic (not a CTF packet)"),
            DecodeError::BadSizes => write!(f, "inconsistent content_size / packet_size"),
            DecodeError::UnknownEvent { at, id } => write!(f, "unknown event id {id} at byte {at}"),
            DecodeError::Truncated { at } => {
                write!(f, "record at byte {at} runs past the packet content")
            }
            DecodeError::BadField { at } => write!(f, "malformed field in record at byte {at}"),
        }
    }
}

/// The packet header and context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// Trace UUID.
    pub uuid: [u8; 16],
    /// Stream class id.
    pub stream_id: u32,
    /// Stream instance (the CPU).
    pub stream_instance_id: u64,
    /// First timestamp.
    pub timestamp_begin: u64,
    /// Last timestamp.
    pub timestamp_end: u64,
    /// Bytes of header + records.
    pub content_len: usize,
    /// Bytes of the whole packet (with padding).
    pub packet_len: usize,
    /// Sequence number in the stream.
    pub seq: u64,
    /// Cumulative events lost on the stream when the packet was closed.
    pub events_discarded: u64,
    /// CPU id.
    pub cpu_id: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Parses the header of the packet starting at `b[0]`; `b` may hold more
/// bytes than the packet (a whole stream file) or fewer (a cut file), which
/// `BadSizes` reports when the packet does not fit.
pub fn packet_info(b: &[u8]) -> Result<PacketInfo, DecodeError> {
    if b.len() < packet::LEN {
        return Err(DecodeError::ShortHeader);
    }
    if u32_at(b, packet::MAGIC) != CTF_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let content_bits = u64_at(b, packet::CONTENT_SIZE);
    let packet_bits = u64_at(b, packet::PACKET_SIZE);
    if !content_bits.is_multiple_of(8)
        || !packet_bits.is_multiple_of(8)
        || content_bits > packet_bits
        || content_bits < packet::LEN as u64 * 8
        || packet_bits / 8 > b.len() as u64
    {
        return Err(DecodeError::BadSizes);
    }
    let mut uuid = [0; 16];
    uuid.copy_from_slice(&b[packet::UUID..packet::UUID + 16]);
    Ok(PacketInfo {
        uuid,
        stream_id: u32_at(b, packet::STREAM_ID),
        stream_instance_id: u64_at(b, packet::STREAM_INSTANCE_ID),
        timestamp_begin: u64_at(b, packet::TIMESTAMP_BEGIN),
        timestamp_end: u64_at(b, packet::TIMESTAMP_END),
        content_len: (content_bits / 8) as usize,
        packet_len: (packet_bits / 8) as usize,
        seq: u64_at(b, packet::PACKET_SEQ_NUM),
        events_discarded: u64_at(b, packet::EVENTS_DISCARDED),
        cpu_id: u32_at(b, packet::CPU_ID),
    })
}

/// Field layouts by event id: a declared set, or one parsed from metadata.
pub trait Schema {
    /// Number of fields of event `id`, `None` if no such event.
    fn field_count(&self, id: u32) -> Option<usize>;
    /// Kind of field `i` of event `id` (`i < field_count`).
    fn field_kind(&self, id: u32, i: usize) -> FieldKind;
    /// The payload length of event `id` when all its fields have a fixed
    /// size: the decoder then skips the payload without a field walk (and
    /// without a look at [`Schema::field_count`]). `None` for an unknown
    /// event. The default says nothing (every record's fields are walked).
    #[inline]
    fn fixed_payload_len(&self, _id: u32) -> Option<usize> {
        None
    }
}

impl Schema for [EventDesc] {
    fn field_count(&self, id: u32) -> Option<usize> {
        self.get(id as usize).map(|e| e.fields.len())
    }
    fn field_kind(&self, id: u32, i: usize) -> FieldKind {
        self[id as usize].fields[i].kind
    }
}

/// A decoded field value, borrowing from the packet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'p> {
    /// Unsigned integer.
    U(u64),
    /// Signed integer.
    I(i64),
    /// Float (widened).
    F(f64),
    /// String bytes without the NUL.
    Str(&'p [u8]),
    /// Byte array.
    Bytes(&'p [u8]),
    /// Enumeration value.
    Enum(i64),
}

/// Decodes one field at `b[0..]`, returning it and its length.
#[inline]
pub fn decode_field<'p>(kind: &FieldKind, b: &'p [u8]) -> Option<(Value<'p>, usize)> {
    let int = |bits: u8, signed: bool| -> Option<(i128, usize)> {
        let n = bits as usize / 8;
        let raw = b.get(..n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(raw);
        let u = u64::from_le_bytes(v);
        let val = if signed && n < 8 {
            let shift = 64 - bits as u32;
            (((u << shift) as i64) >> shift) as i128
        } else if signed {
            u as i64 as i128
        } else {
            u as i128
        };
        Some((val, n))
    };
    match *kind {
        FieldKind::Int { bits, signed, .. } => {
            let (v, n) = int(bits, signed)?;
            Some((if signed { Value::I(v as i64) } else { Value::U(v as u64) }, n))
        }
        FieldKind::Enum { bits, signed, .. } => {
            let (v, n) = int(bits, signed)?;
            Some((Value::Enum(v as i64), n))
        }
        FieldKind::Float { bits: 32 } => Some((Value::F(f32::from_le_bytes(b.get(..4)?.try_into().ok()?) as f64), 4)),
        FieldKind::Float { .. } => Some((Value::F(f64::from_le_bytes(b.get(..8)?.try_into().ok()?)), 8)),
        FieldKind::Str => {
            let n = b.iter().take(crate::field::MAX_STRING + 1).position(|&c| c == 0)?;
            Some((Value::Str(&b[..n]), n + 1))
        }
        FieldKind::Bytes => {
            let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
            if n > crate::field::MAX_BYTES {
                return None;
            }
            Some((Value::Bytes(b.get(4..4 + n)?), 4 + n))
        }
    }
}

/// One record of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'p> {
    /// Offset in the packet.
    pub offset: usize,
    /// Event id.
    pub id: u32,
    /// Full timestamp (rebuilt from the compact form).
    pub timestamp: u64,
    /// Whether the header was compact.
    pub compact: bool,
    /// Payload bytes.
    pub payload: &'p [u8],
}

impl<'p> Record<'p> {
    /// Offset in the packet of the byte after the record (the next one's).
    #[inline]
    pub fn end(&self) -> usize {
        self.offset + header::len(self.compact) + self.payload.len()
    }

    /// The payload's field values, in order.
    pub fn values<'s, S: Schema + ?Sized>(&self, schema: &'s S) -> Values<'p, 's, S> {
        Values { schema, id: self.id, i: 0, rest: self.payload }
    }
}

/// Iterator over a record's values.
pub struct Values<'p, 's, S: ?Sized> {
    schema: &'s S,
    id: u32,
    i: usize,
    rest: &'p [u8],
}

impl<'p, S: Schema + ?Sized> Iterator for Values<'p, '_, S> {
    type Item = Value<'p>;
    fn next(&mut self) -> Option<Value<'p>> {
        if self.i >= self.schema.field_count(self.id)? {
            return None;
        }
        let (v, n) = decode_field(&self.schema.field_kind(self.id, self.i), self.rest)?;
        self.i += 1;
        self.rest = &self.rest[n..];
        Some(v)
    }
}

/// Iterator over the records of one packet.
pub struct Records<'p, 's, S: ?Sized> {
    /// The packet up to the end of its content.
    content: &'p [u8],
    /// The next record's offset; past the content after an error.
    at: usize,
    ts: u64,
    schema: &'s S,
}

/// Iterates the records of the packet `b` (which starts with its header).
pub fn records<'p, 's, S: Schema + ?Sized>(
    b: &'p [u8],
    schema: &'s S,
) -> Result<(PacketInfo, Records<'p, 's, S>), DecodeError> {
    let info = packet_info(b)?;
    let it = Records { content: &b[..info.content_len], at: packet::LEN, ts: info.timestamp_begin, schema };
    Ok((info, it))
}

impl<'p, S: Schema + ?Sized> Iterator for Records<'p, '_, S> {
    type Item = Result<Record<'p>, DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.content.len() {
            return None;
        }
        let r = self.decode_one();
        if r.is_err() {
            self.at = usize::MAX;
        }
        Some(r)
    }
}

impl<'p, S: Schema + ?Sized> Records<'p, '_, S> {
    #[inline]
    fn decode_one(&mut self) -> Result<Record<'p>, DecodeError> {
        let r = record_at(self.content, self.at, self.ts, self.schema)?;
        self.ts = r.timestamp;
        self.at = r.end();
        Ok(r)
    }
}

/// Decodes the record at byte `at` of `content` (a packet up to the end of
/// its content), `prev` the timestamp of the record before it (the
/// packet's `timestamp_begin` for its first): one step of [`Records`], for
/// a reader that takes the common records a faster way of its own.
///
/// Inlined into the caller's loop: this is every reader's per-record path,
/// so one table lookup for a fixed-size payload, no more.
#[inline]
pub fn record_at<'p, S: Schema + ?Sized>(
    content: &'p [u8],
    at: usize,
    prev: u64,
    schema: &S,
) -> Result<Record<'p>, DecodeError> {
    let (id, ts_bits, hlen, compact) =
        content.get(at..).and_then(header::decode).ok_or(DecodeError::Truncated { at })?;
    let ts = if compact { header::expand(prev, ts_bits) } else { ts_bits };
    let start = at + hlen;
    let p = match schema.fixed_payload_len(id) {
        Some(n) if start + n <= content.len() => start + n,
        Some(_) => return Err(DecodeError::Truncated { at }),
        None => walk_fields(schema, content, id, at, start)?,
    };
    Ok(Record { offset: at, id, timestamp: ts, compact, payload: &content[start..p] })
}

/// The end of the payload of event `id` at `start` of `content` (its
/// record at `at`), found field by field. Out of line, and not a method:
/// a borrow of the iterator would keep its state out of registers.
#[cold]
#[inline(never)]
fn walk_fields<S: Schema + ?Sized>(
    schema: &S,
    content: &[u8],
    id: u32,
    at: usize,
    start: usize,
) -> Result<usize, DecodeError> {
    let count = schema.field_count(id).ok_or(DecodeError::UnknownEvent { at, id })?;
    let mut p = start;
    for i in 0..count {
        let kind = schema.field_kind(id, i);
        let rest = &content[p.min(content.len())..];
        match decode_field(&kind, rest) {
            Some((_, n)) => p += n,
            None if kind.fixed_len().is_some() => return Err(DecodeError::Truncated { at }),
            None => return Err(DecodeError::BadField { at }),
        }
    }
    Ok(p)
}
