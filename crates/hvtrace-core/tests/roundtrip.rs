//! Encode → ring → decode round trips for every field type and both event
//! header forms, and the decoder's robustness: a truncated or garbled packet
//! is an `Err`, never a panic.

use std::cell::Cell;

use hvtrace_core::ctf::{header, packet};
use hvtrace_core::decode::{decode_field, packet_info, records, DecodeError, Value};
use hvtrace_core::field::{MAX_BYTES, MAX_STRING};
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{EventSet, FieldKind, Geometry, Mode, OwnerSink, Poll, RingReader, RingSink, StreamId};
use proptest::prelude::*;

hvtrace_core::ctf_enum! {
    /// Unsigned 8-bit enumeration.
    enum Color: u8 { Red = 0, Green = 1, Blue = 200 }
}

hvtrace_core::ctf_enum! {
    /// Signed 32-bit enumeration with negative and large values.
    enum Delta: i32 { Down = -5, Zero = 0, Up = 7, Far = 100_000 }
}

hvtrace_core::events! {
    /// Every field type; ids 0..=30 get compact headers, 31 and 32 extended ones.
    mod rt ("rt") {
        fn ints(a: u8, b: u16, c: u32, d: u64, e: i8, f: i16, g: i32, h: i64);
        fn floats(x: f32, y: f64);
        fn flags(b: bool, c: Color, d: Delta);
        fn text(s: &str, t: &str);
        fn blob(b: &[u8], tail: u8);
        fn empty();
        fn f06(); fn f07(); fn f08(); fn f09(); fn f10(); fn f11(); fn f12(); fn f13();
        fn f14(); fn f15(); fn f16(); fn f17(); fn f18(); fn f19(); fn f20(); fn f21();
        fn f22(); fn f23(); fn f24(); fn f25(); fn f26(); fn f27(); fn f28(); fn f29();
        /// The last id with a compact header.
        fn last_compact(v: u32);
        /// The first id with an extended header.
        fn far_ints(a: u64, b: i64);
        fn far_mix(s: &str, b: &[u8], x: f64, e: Delta, f: bool);
    }
}

const DELTAS: [Delta; 4] = [Delta::Down, Delta::Zero, Delta::Up, Delta::Far];
const COLORS: [Color; 3] = [Color::Red, Color::Green, Color::Blue];

/// One event to record, with owned values.
#[derive(Clone, Debug)]
enum Op {
    Ints(u8, u16, u32, u64, i8, i16, i32, i64),
    Floats(f32, f64),
    Flags(bool, Color, Delta),
    Text(String, String),
    Blob(Vec<u8>, u8),
    Empty,
    LastCompact(u32),
    FarInts(u64, i64),
    FarMix(String, Vec<u8>, f64, Delta, bool),
}

/// A decoded value in comparable form (floats by bits, NaN == NaN).
#[derive(Clone, Debug, PartialEq)]
enum V {
    U(u64),
    I(i64),
    F(u64),
    Str(Vec<u8>),
    Bytes(Vec<u8>),
    Enum(i64),
}

fn float(x: f64) -> V {
    V::F(if x.is_nan() { f64::NAN.to_bits() } else { x.to_bits() })
}

impl From<Value<'_>> for V {
    fn from(v: Value<'_>) -> V {
        match v {
            Value::U(x) => V::U(x),
            Value::I(x) => V::I(x),
            Value::F(x) => float(x),
            Value::Str(s) => V::Str(s.to_vec()),
            Value::Bytes(b) => V::Bytes(b.to_vec()),
            Value::Enum(x) => V::Enum(x),
        }
    }
}

/// What a string field keeps: up to the first NUL, at most MAX_STRING bytes,
/// cut at a character boundary.
fn kept_str(s: &str) -> V {
    let mut n = s.len().min(MAX_STRING);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    let b = &s.as_bytes()[..n];
    V::Str(b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n]).to_vec())
}

fn kept_bytes(b: &[u8]) -> V {
    V::Bytes(b[..b.len().min(MAX_BYTES)].to_vec())
}

impl Op {
    fn id(&self) -> u32 {
        (match self {
            Op::Ints(..) => rt::Id::ints,
            Op::Floats(..) => rt::Id::floats,
            Op::Flags(..) => rt::Id::flags,
            Op::Text(..) => rt::Id::text,
            Op::Blob(..) => rt::Id::blob,
            Op::Empty => rt::Id::empty,
            Op::LastCompact(..) => rt::Id::last_compact,
            Op::FarInts(..) => rt::Id::far_ints,
            Op::FarMix(..) => rt::Id::far_mix,
        }) as u32
    }

    fn record<S: hvtrace_core::Sink>(&self, s: &S) -> Result<(), hvtrace_core::RecordError> {
        match self {
            Op::Ints(a, b, c, d, e, f, g, h) => rt::ints(s, *a, *b, *c, *d, *e, *f, *g, *h),
            Op::Floats(x, y) => rt::floats(s, *x, *y),
            Op::Flags(b, c, d) => rt::flags(s, *b, *c, *d),
            Op::Text(a, b) => rt::text(s, a, b),
            Op::Blob(b, t) => rt::blob(s, b, *t),
            Op::Empty => rt::empty(s),
            Op::LastCompact(v) => rt::last_compact(s, *v),
            Op::FarInts(a, b) => rt::far_ints(s, *a, *b),
            Op::FarMix(a, b, x, e, f) => rt::far_mix(s, a, b, *x, *e, *f),
        }
    }

    fn expected(&self) -> Vec<V> {
        match self {
            Op::Ints(a, b, c, d, e, f, g, h) => vec![
                V::U(*a as u64),
                V::U(*b as u64),
                V::U(*c as u64),
                V::U(*d),
                V::I(*e as i64),
                V::I(*f as i64),
                V::I(*g as i64),
                V::I(*h),
            ],
            Op::Floats(x, y) => vec![float(*x as f64), float(*y)],
            Op::Flags(b, c, d) => vec![V::Enum(*b as i64), V::Enum(*c as u8 as i64), V::Enum(*d as i32 as i64)],
            Op::Text(a, b) => vec![kept_str(a), kept_str(b)],
            Op::Blob(b, t) => vec![kept_bytes(b), V::U(*t as u64)],
            Op::Empty => vec![],
            Op::LastCompact(v) => vec![V::U(*v as u64)],
            Op::FarInts(a, b) => vec![V::U(*a), V::I(*b)],
            Op::FarMix(a, b, x, e, f) => {
                vec![kept_str(a), kept_bytes(b), float(*x), V::Enum(*e as i32 as i64), V::Enum(*f as i64)]
            }
        }
    }
}

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-zA-Z0-9 é€\u{0}\u{1F600}\"\\\\]{0,24}",
        1 => prop::collection::vec(any::<char>(), (MAX_STRING / 4)..(MAX_STRING + 40)).prop_map(String::from_iter),
        1 => (MAX_STRING - 2..MAX_STRING + 3).prop_map(|n| "x".repeat(n)),
    ]
}

fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..48),
        1 => (MAX_BYTES - 1..MAX_BYTES + 3).prop_map(|n| (0..n).map(|i| (i * 7) as u8).collect()),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    let delta = (0..DELTAS.len()).prop_map(|i| DELTAS[i]);
    prop_oneof![
        3 => any::<(u8, u16, u32, u64, i8, i16, i32, i64)>()
            .prop_map(|(a, b, c, d, e, f, g, h)| Op::Ints(a, b, c, d, e, f, g, h)),
        2 => any::<(f32, f64)>().prop_map(|(x, y)| Op::Floats(x, y)),
        2 => (any::<bool>(), 0..COLORS.len(), delta.clone()).prop_map(|(b, c, d)| Op::Flags(b, COLORS[c], d)),
        2 => (any_string(), any_string()).prop_map(|(a, b)| Op::Text(a, b)),
        2 => (any_bytes(), any::<u8>()).prop_map(|(b, t)| Op::Blob(b, t)),
        1 => Just(Op::Empty),
        1 => any::<u32>().prop_map(Op::LastCompact),
        1 => any::<(u64, i64)>().prop_map(|(a, b)| Op::FarInts(a, b)),
        1 => (any_string(), any_bytes(), any::<f64>(), delta, any::<bool>())
            .prop_map(|(a, b, x, e, f)| Op::FarMix(a, b, x, e, f)),
    ]
}

/// Clock steps around the compact header's 27-bit reach.
fn any_step() -> impl Strategy<Value = u64> {
    let m = header::COMPACT_TS_MASK;
    prop_oneof![
        Just(0),
        1..1000u64,
        Just(m - 1),
        Just(m),
        Just(m + 1),
        Just(m + 2),
        m..(m * 5),
        (1u64 << 32)..(1u64 << 44),
    ]
}

/// Reads every delivered packet, as a consumer writes it: `packet_size`
/// bytes (a flushed packet declares its content rounded up to a page).
fn drain(r: &RingReader<'_>, out: &mut Vec<Vec<u8>>) {
    while let Poll::Ready(p) = r.next_packet() {
        let mut b = vec![0; r.geometry().subbuf_size as usize];
        r.copy_packet(&p, &mut b);
        assert!(r.release(&p));
        let info = hvtrace_core::decode::packet_info(&b).expect("packet header");
        assert!(
            info.packet_len == b.len() || info.packet_len == info.content_len.next_multiple_of(4096),
            "a packet is its sub-buffer, or its content rounded up to a page"
        );
        b.truncate(info.packet_len);
        out.push(b);
    }
}

/// Records `ops` at the given timestamps on one ring (128 KiB sub-buffers,
/// big enough for the largest byte array), read as it goes; returns the packets.
fn record_all(ops: &[(Op, u64)]) -> Vec<Vec<u8>> {
    record_all_as(ops, false)
}

/// [`record_all`], through the ring's owner (the single-writer fast path and
/// its fallbacks) when `owned`.
fn record_all_as(ops: &[(Op, u64)], owned: bool) -> Vec<Vec<u8>> {
    let mem = HeapRing::new(Geometry::new(128 << 10, 2).unwrap());
    let ring = mem.producer(Mode::Discard, StreamId { uuid: [3; 16], cpu: 1 });
    let reader = mem.reader();
    let now = Cell::new(0u64);
    let mut packets = Vec::new();
    if owned {
        // SAFETY: not used by any writer yet; this thread is its only writer.
        let owner = unsafe {
            ring.make_owned();
            ring.owner()
        };
        let sink = OwnerSink { owner: &owner, clock: || now.get() };
        for (op, ts) in ops {
            now.set(*ts);
            op.record(&sink).expect("recorded");
            drain(&reader, &mut packets);
        }
        // The owner is this thread, so taking the ring back needs no barrier.
        assert!(ring.revoke_owner());
    } else {
        let sink = RingSink { ring: &ring, clock: || now.get() };
        for (op, ts) in ops {
            now.set(*ts);
            op.record(&sink).expect("recorded");
            drain(&reader, &mut packets);
        }
    }
    ring.flush(&|| now.get());
    drain(&reader, &mut packets);
    assert_eq!(ring.counters().discarded, 0);
    packets
}

/// Decodes `packets` and checks them against `ops` (recorded at their timestamps).
fn check_round_trip(ops: &[(Op, u64)], packets: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let schema = rt::Events::EVENTS;
    let mut want = ops.iter();
    let mut prev_ts = None;
    for p in packets {
        let (info, recs) = records(p, schema).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(info.cpu_id, 1);
        prop_assert_eq!(info.stream_instance_id, 1);
        prop_assert_eq!(info.uuid, [3; 16]);
        prop_assert_eq!(info.packet_len, p.len());
        for (i, r) in recs.enumerate() {
            let r = r.map_err(|e| TestCaseError::fail(format!("{e}")))?;
            let (op, ts) = want.next().expect("more records than recorded");
            prop_assert_eq!(r.id, op.id());
            prop_assert_eq!(r.timestamp, *ts, "rebuilt timestamp of {:?}", op);
            if i == 0 {
                prop_assert_eq!(info.timestamp_begin, *ts);
            }
            // Compact exactly when a reader can rebuild the timestamp: small
            // id, and first in its packet or less than 2^27 after the last.
            let near = i == 0 || prev_ts.is_some_and(|p| ts - p <= header::COMPACT_TS_MASK);
            prop_assert_eq!(r.compact, op.id() <= header::MAX_COMPACT_ID && near, "header form of {:?}", op);
            for v in r.values(schema) {
                if let Value::Str(b) = v {
                    prop_assert!(std::str::from_utf8(b).is_ok(), "a string field must stay valid UTF-8");
                }
            }
            let got: Vec<V> = r.values(schema).map(V::from).collect();
            prop_assert_eq!(got, op.expected());
            prev_ts = Some(*ts);
        }
        prop_assert!(info.timestamp_end >= prev_ts.unwrap_or(0));
    }
    prop_assert!(want.next().is_none(), "records missing");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Every field type and header form, written through a real ring and read back.
    #[test]
    fn fields_and_headers_round_trip(
        start in prop_oneof![Just(0u64), 0..u64::MAX / 4],
        ops in prop::collection::vec((any_op(), any_step()), 1..40),
    ) {
        let mut ts = start;
        let ops: Vec<(Op, u64)> = ops.into_iter().map(|(op, step)| { ts += step; (op, ts) }).collect();
        let packets = record_all(&ops);
        check_round_trip(&ops, &packets)?;
        // The owner's fast path writes the same bytes.
        prop_assert_eq!(record_all_as(&ops, true), packets);
    }

    /// Any prefix of a packet shorter than the packet is refused, and what
    /// decodes before a cut inside the content is what was written.
    #[test]
    fn truncated_packets_are_errors(
        ops in prop::collection::vec((any_op(), any_step()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut ts = 1;
        let ops: Vec<(Op, u64)> = ops.into_iter().map(|(op, step)| { ts += step; (op, ts) }).collect();
        let packets = record_all(&ops);
        let p = &packets[0];
        let info = packet_info(p).unwrap();
        // A short buffer: refused as a whole.
        let n = cut.index(p.len());
        prop_assert!(records(&p[..n], rt::Events::EVENTS).is_err());
        // A content_size cut inside the records: every record before the cut
        // decodes intact, the one across it is an error.
        let mut q = p.clone();
        let at = packet::LEN + cut.index(info.content_len - packet::LEN + 1);
        q[packet::CONTENT_SIZE..][..8].copy_from_slice(&(at as u64 * 8).to_le_bytes());
        let full: Vec<_> = records(p, rt::Events::EVENTS).unwrap().1.collect();
        let boundaries: Vec<usize> = full.iter().map(|r| r.as_ref().unwrap().offset).chain([info.content_len]).collect();
        let (_, recs) = records(&q, rt::Events::EVENTS).unwrap();
        let got: Vec<_> = recs.collect();
        for (i, r) in got.iter().enumerate() {
            match r {
                Ok(r) => prop_assert_eq!(Ok(*r), full[i]),
                Err(_) => {
                    prop_assert_eq!(i, got.len() - 1, "iteration stops at the first error");
                    prop_assert!(!boundaries.contains(&at), "cut at a record boundary is not an error");
                }
            }
        }
        if boundaries.contains(&at) {
            prop_assert!(got.iter().all(|r| r.is_ok()));
        } else {
            prop_assert!(got.last().unwrap().is_err(), "a record cut by content_size must be an error");
        }
    }

    /// Bytes flipped anywhere in a real packet: decoding returns values or
    /// errors, never panics, never reads past the content.
    #[test]
    fn garbled_packets_never_panic(
        ops in prop::collection::vec((any_op(), any_step()), 1..8),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..12),
    ) {
        let mut ts = 1;
        let ops: Vec<(Op, u64)> = ops.into_iter().map(|(op, step)| { ts += step; (op, ts) }).collect();
        let mut p = record_all(&ops).swap_remove(0);
        let content = packet_info(&p).unwrap().content_len;
        for (i, x) in flips {
            let i = i.index(content);
            p[i] ^= x;
        }
        decode_everything(&p);
    }

    /// Arbitrary bytes behind a valid-looking header: never a panic.
    #[test]
    fn random_records_never_panic(body in prop::collection::vec(any::<u8>(), 0..600), extra in 0..64usize) {
        let content = packet::LEN + body.len();
        let mut p = vec![0u8; content + extra];
        p[packet::MAGIC..][..4].copy_from_slice(&hvtrace_core::ctf::CTF_MAGIC.to_le_bytes());
        p[packet::CONTENT_SIZE..][..8].copy_from_slice(&(content as u64 * 8).to_le_bytes());
        let total = p.len() as u64;
        p[packet::PACKET_SIZE..][..8].copy_from_slice(&(total * 8).to_le_bytes());
        p[packet::LEN..content].copy_from_slice(&body);
        decode_everything(&p);
        for kind in kinds() {
            let _ = decode_field(&kind, &body);
        }
    }

    /// Any bytes at all: never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(p in prop::collection::vec(any::<u8>(), 0..300)) {
        decode_everything(&p);
    }
}

/// Every field kind the declared set uses.
fn kinds() -> Vec<FieldKind> {
    rt::Events::EVENTS.iter().flat_map(|e| e.fields.iter().map(|f| f.kind)).collect()
}

/// Walks every record and value; errors are fine, panics are not.
fn decode_everything(p: &[u8]) {
    if let Ok((info, recs)) = records(p, rt::Events::EVENTS) {
        assert!(info.content_len <= info.packet_len && info.packet_len <= p.len());
        for r in recs.flatten() {
            assert!(r.offset + r.payload.len() <= info.content_len);
            let _ = r.values(rt::Events::EVENTS).count();
        }
    }
}

/// Packet-level malformations each give their own error.
#[test]
fn malformed_packet_headers() {
    let ops = vec![(Op::Ints(1, 2, 3, 4, -5, -6, -7, -8), 10), (Op::Text("hi".into(), String::new()), 20)];
    let p = record_all(&ops).swap_remove(0);
    let ev = rt::Events::EVENTS;
    assert!(records(&p, ev).is_ok());
    let with = |at: usize, bytes: &[u8]| {
        let mut q = p.clone();
        q[at..at + bytes.len()].copy_from_slice(bytes);
        records(&q, ev).err()
    };
    assert_eq!(records(&p[..packet::LEN - 1], ev).err(), Some(DecodeError::ShortHeader));
    assert_eq!(with(packet::MAGIC, &[0, 0, 0, 0]), Some(DecodeError::BadMagic));
    let bits = |n: u64| (n * 8).to_le_bytes();
    let plen = p.len() as u64;
    // content_size: not a byte multiple, larger than the packet, smaller than the header.
    assert_eq!(with(packet::CONTENT_SIZE, &(101u64).to_le_bytes()), Some(DecodeError::BadSizes));
    assert_eq!(with(packet::CONTENT_SIZE, &bits(plen + 1)), Some(DecodeError::BadSizes));
    assert_eq!(with(packet::CONTENT_SIZE, &bits(packet::LEN as u64 - 1)), Some(DecodeError::BadSizes));
    // packet_size larger than the bytes given.
    assert_eq!(with(packet::PACKET_SIZE, &bits(plen + 8)), Some(DecodeError::BadSizes));
    assert_eq!(with(packet::PACKET_SIZE, &u64::MAX.to_le_bytes()), Some(DecodeError::BadSizes));
    // An undeclared event id (compact: 29 is declared, so use an extended header with id 1000).
    let mut q = p.clone();
    q[packet::LEN..packet::LEN + header::EXTENDED_LEN].copy_from_slice(&header::extended(1000, 10));
    let first = records(&q, ev).unwrap().1.next().unwrap();
    assert_eq!(first, Err(DecodeError::UnknownEvent { at: packet::LEN, id: 1000 }));
    // A byte array longer than MAX_BYTES is a bad field, not an allocation.
    let blob = vec![(Op::Blob(vec![1, 2, 3], 9), 5)];
    let mut q = record_all(&blob).swap_remove(0);
    let len_at = packet::LEN + header::COMPACT_LEN;
    q[len_at..len_at + 4].copy_from_slice(&(MAX_BYTES as u32 + 1).to_le_bytes());
    assert_eq!(records(&q, ev).unwrap().1.next().unwrap(), Err(DecodeError::BadField { at: packet::LEN }));
    // An unterminated string is a bad field.
    let s = vec![(Op::Text("abc".into(), "d".into()), 5)];
    let mut q = record_all(&s).swap_remove(0);
    let content = packet_info(&q).unwrap().content_len;
    q[packet::LEN + header::COMPACT_LEN..content].fill(b'z');
    assert_eq!(records(&q, ev).unwrap().1.next().unwrap(), Err(DecodeError::BadField { at: packet::LEN }));
}

/// The header-form boundaries, deterministically.
#[test]
fn header_forms_at_the_boundaries() {
    let m = header::COMPACT_TS_MASK;
    let t0 = (7u64 << 40) | 123;
    let ops = vec![
        (Op::Empty, t0),                             // first in packet: compact
        (Op::Empty, t0 + m),                         // gap 2^27 - 1: compact
        (Op::Empty, t0 + m + (m + 1)),               // gap 2^27: extended
        (Op::LastCompact(1), t0 + 2 * m + 2),        // id 30, gap 1: compact
        (Op::FarInts(1, -1), t0 + 2 * m + 3),        // id 31: extended
        (Op::Empty, t0 + 2 * m + 3),                 // gap 0: compact
        (Op::Empty, t0 + 2 * m + 3 + (1 << 27) + 5), // wraps the 27 low bits: extended
        (Op::Empty, u64::MAX - 1),                   // far future: extended
        (Op::Empty, u64::MAX),                       // gap 1 at the top: compact
    ];
    let packets = record_all(&ops);
    assert_eq!(packets.len(), 1);
    let forms: Vec<bool> = records(&packets[0], rt::Events::EVENTS).unwrap().1.map(|r| r.unwrap().compact).collect();
    assert_eq!(forms, [true, true, false, true, false, true, false, false, true]);
    check_round_trip(&ops, &packets).unwrap();
}

/// A string longer than MAX_STRING is cut at a character boundary, so the
/// field stays valid UTF-8 (the TSDL declares `encoding = UTF8`).
#[test]
fn long_strings_are_cut_at_a_character_boundary() {
    let s = format!("{}é", "a".repeat(MAX_STRING - 1)); // é straddles the limit
    let ops = vec![(Op::Text(s.clone(), "€".repeat(400)), 1)];
    let packets = record_all(&ops);
    let (_, mut recs) = records(&packets[0], rt::Events::EVENTS).unwrap();
    let r = recs.next().unwrap().unwrap();
    let v: Vec<Value> = r.values(rt::Events::EVENTS).collect();
    assert_eq!(v[0], Value::Str(&s.as_bytes()[..MAX_STRING - 1]));
    assert_eq!(v[1], Value::Str("€".repeat(341).as_bytes())); // 341 x 3 = 1023 bytes
    check_round_trip(&ops, &packets).unwrap();
}
