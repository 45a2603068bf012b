//! `check_stream` on hand-built streams: each kind of damage is found at its
//! offset and every other packet stays readable.

use hvtrace_core::ctf::{empty_packet, header, packet, CTF_MAGIC};
use hvtrace_core::EventSet;
use hvtrace_reader::{check_stream, packets, Expect, OrderField, ProblemKind, StreamReport};

hvtrace_core::events! {
    /// A tiny event set.
    pub mod t ("t") {
        /// A counter.
        fn tick(n: u32);
        /// Text.
        fn note(text: &str);
    }
}

const UUID: [u8; 16] = [7; 16];
const P: usize = 512;
const CPU: u32 = 3;

/// A packet of `P` bytes: `seq`, timestamps from `seq * 1000`, `n` ticks
/// and a note.
fn packet(seq: u64, n: u32) -> Vec<u8> {
    let begin = seq * 1000 + 1;
    let mut b = vec![0u8; P];
    b[..packet::LEN].copy_from_slice(&empty_packet(&UUID, CPU, seq, begin, seq));
    let mut at = packet::LEN;
    let mut ts = begin;
    for i in 0..n {
        ts += 7;
        b[at..at + 4].copy_from_slice(&header::compact(0, ts));
        b[at + 4..at + 8].copy_from_slice(&(seq as u32 * 100 + i).to_le_bytes());
        at += 8;
    }
    ts += 1;
    b[at..at + 4].copy_from_slice(&header::compact(1, ts));
    b[at + 4..at + 10].copy_from_slice(b"hello\0");
    at += 10;
    b[packet::TIMESTAMP_END..][..8].copy_from_slice(&(ts + 5).to_le_bytes());
    b[packet::CONTENT_SIZE..][..8].copy_from_slice(&(at as u64 * 8).to_le_bytes());
    b[packet::PACKET_SIZE..][..8].copy_from_slice(&(P as u64 * 8).to_le_bytes());
    b[packet::EVENTS_DISCARDED..][..8].copy_from_slice(&seq.to_le_bytes());
    b
}

/// Five packets of 10 ticks + 1 note, then the empty trailer.
fn stream() -> Vec<u8> {
    let mut s: Vec<u8> = (0..5).flat_map(|seq| packet(seq, 10)).collect();
    s.extend_from_slice(&empty_packet(&UUID, CPU, 5, 4000 + 200, 9));
    s
}

fn run(b: &[u8]) -> StreamReport {
    let r = check_stream(b, t::Events::EVENTS, &Expect { uuid: Some(UUID), cpu: Some(CPU) });
    // Intact packets and problems tile the file exactly.
    let mut spans: Vec<(u64, u64)> =
        r.packets.iter().map(|p| (p.offset, p.len)).chain(r.problems.iter().map(|p| (p.offset, p.len))).collect();
    spans.sort();
    let mut at = 0;
    for (o, l) in spans {
        assert_eq!(o, at, "gap or overlap in {r:#?}");
        assert!(l > 0);
        at += l;
    }
    assert_eq!(at, b.len() as u64);
    r
}

fn seqs(r: &StreamReport) -> Vec<u64> {
    r.packets.iter().map(|p| p.seq).collect()
}

#[test]
fn an_intact_stream() {
    let s = stream();
    let r = run(&s);
    assert!(r.is_intact(), "{:?}", r.problems);
    assert_eq!(r.packet_size, Some(P as u64));
    assert_eq!(seqs(&r), [0, 1, 2, 3, 4, 5]);
    assert_eq!(r.records(), 55);
    assert_eq!(r.events_discarded(), 9);
    // The plain walk agrees, and values decode.
    let ps: Vec<_> = packets(&s).collect::<Result<_, _>>().unwrap();
    assert_eq!(ps.len(), 6);
    let recs: Vec<_> = ps[1].records(t::Events::EVENTS).collect::<Result<_, _>>().unwrap();
    assert_eq!(recs.len(), 11);
    let v: Vec<_> = recs[2].values(t::Events::EVENTS).collect();
    assert_eq!(v, [hvtrace_core::decode::Value::U(102)]);
    let intact: Vec<_> = r.intact_packets(&s).collect();
    assert_eq!(intact, ps);
    assert!(run(&[]).is_intact());
}

#[test]
fn a_cut_last_packet() {
    let mut s: Vec<u8> = (0..5).flat_map(|seq| packet(seq, 10)).collect();
    s.truncate(4 * P + 200);
    let r = run(&s);
    assert_eq!(seqs(&r), [0, 1, 2, 3]);
    assert_eq!(r.problems.len(), 1);
    let p = r.problems[0];
    assert_eq!((p.offset, p.len, p.seq), (4 * P as u64, 200, Some(4)));
    assert_eq!(p.kind, ProblemKind::CutPacket { expected: P as u64 });
    // Cut inside the header.
    s.truncate(4 * P + 30);
    let r = run(&s);
    assert_eq!(r.problems[0].kind, ProblemKind::CutPacket { expected: P as u64 });
    assert_eq!(r.problems[0].seq, None);
}

#[test]
fn flipped_bytes_cost_only_their_packet() {
    /// Byte offset in packet 2, bits to flip, the problem expected.
    type Case = (usize, u8, fn(&ProblemKind) -> bool);
    let cases: Vec<Case> = vec![
        (packet::MAGIC, 0x55, |k| *k == ProblemKind::BadMagic),
        (packet::UUID + 3, 0x01, |k| *k == ProblemKind::UuidMismatch),
        (packet::STREAM_ID, 0x01, |k| matches!(k, ProblemKind::WrongStreamClass { stream_id: 1, expected: 0 })),
        (packet::STREAM_INSTANCE_ID, 0x04, |k| matches!(k, ProblemKind::WrongCpu { .. })),
        (packet::CONTENT_SIZE + 1, 0x40, |k| matches!(k, ProblemKind::BadSizes { .. })),
        (packet::PACKET_SIZE + 1, 0x01, |k| matches!(k, ProblemKind::SizeMismatch { .. })),
        (packet::TIMESTAMP_BEGIN + 2, 0x10, |k| matches!(k, ProblemKind::TimestampsInverted { .. })),
        (packet::TIMESTAMP_END + 7, 0x80, |k| matches!(k, ProblemKind::OutOfOrder { .. })),
        (packet::LEN, 0x1f, |k| matches!(k, ProblemKind::BadRecord(_))),
        (packet::LEN + 8 * 10 + 9, 0xff, |k| matches!(k, ProblemKind::BadRecord(_))),
        (packet::LEN + 8 * 3 + 1, 0x80, |k| matches!(k, ProblemKind::RecordOutOfRange { .. })),
    ];
    for (i, (at, x, want)) in cases.into_iter().enumerate() {
        let mut s = stream();
        s[2 * P + at] ^= x;
        let r = run(&s);
        assert_eq!(seqs(&r), [0, 1, 3, 4, 5], "case {i}: {:?}", r.problems);
        assert_eq!(r.problems.len(), 1, "case {i}: {:?}", r.problems);
        let p = r.problems[0];
        assert_eq!((p.offset, p.len), (2 * P as u64, P as u64), "case {i}");
        assert!(want(&p.kind), "case {i}: {}", p.kind);
        assert_eq!(r.records(), 44, "case {i}");
    }
}

#[test]
fn a_damaged_first_packet_does_not_hide_the_packet_size() {
    let mut s = stream();
    s[0] ^= 0xff;
    s[packet::PACKET_SIZE + 1] ^= 0x10;
    let r = run(&s);
    assert_eq!(r.packet_size, Some(P as u64));
    assert_eq!(seqs(&r), [1, 2, 3, 4, 5]);
    assert_eq!(r.problems[0].kind, ProblemKind::BadMagic);
}

#[test]
fn sequence_outliers_are_blamed_on_the_right_packet() {
    // Packet 2's seq raised: packet 2 is the odd one, not packet 3.
    let mut s = stream();
    s[2 * P + packet::PACKET_SEQ_NUM + 2] ^= 1;
    let r = run(&s);
    assert_eq!(seqs(&r), [0, 1, 3, 4, 5]);
    assert!(matches!(
        r.problems[0].kind,
        ProblemKind::OutOfOrder { field: OrderField::Seq, value: 65538, prev: Some(1), next: Some(3) }
    ));
    // The first packet's seq raised: it is the odd one.
    let mut s = stream();
    s[packet::PACKET_SEQ_NUM] = 9;
    let r = run(&s);
    assert_eq!(seqs(&r), [1, 2, 3, 4, 5], "{:?}", r.problems);
    // A seq going backwards.
    let mut s = stream();
    s[3 * P + packet::PACKET_SEQ_NUM] = 1;
    let r = run(&s);
    assert_eq!(seqs(&r), [0, 1, 2, 4, 5]);
    // events_discarded going backwards.
    let mut s = stream();
    s[3 * P + packet::EVENTS_DISCARDED] = 0;
    let r = run(&s);
    assert_eq!(seqs(&r), [0, 1, 2, 4, 5]);
    assert!(matches!(r.problems[0].kind, ProblemKind::OutOfOrder { field: OrderField::Discarded, .. }));
}

#[test]
fn garbage() {
    // Appended.
    let mut s = stream();
    s.extend_from_slice(b"this is not a packet at all");
    let r = run(&s);
    assert_eq!(seqs(&r), [0, 1, 2, 3, 4, 5]);
    assert_eq!(r.problems.len(), 1);
    assert_eq!(r.problems[0].kind, ProblemKind::TrailingGarbage { zeros: false });
    assert_eq!(r.problems[0].offset, (5 * P + packet::LEN) as u64);
    // Zeros appended (a crash after the file was extended).
    let mut s = stream();
    s.extend_from_slice(&[0; 4096]);
    let r = run(&s);
    assert_eq!(r.problems[0].kind, ProblemKind::TrailingGarbage { zeros: true });
    // Inserted between packets: resync finds the next packet off its alignment.
    let mut s = stream();
    s.splice(2 * P..2 * P, [0xabu8; 37]);
    let r = run(&s);
    assert_eq!(seqs(&r), [0, 1, 2, 3, 4, 5]);
    assert_eq!(r.problems.len(), 1);
    assert_eq!((r.problems[0].offset, r.problems[0].len), (2 * P as u64, 37));
    assert_eq!(r.problems[0].kind, ProblemKind::Unrecognised { zeros: false });
    // A whole packet overwritten: one problem, the rest intact.
    let mut s = stream();
    s[P..2 * P].fill(0);
    let r = run(&s);
    assert_eq!(seqs(&r), [0, 2, 3, 4, 5]);
    assert_eq!(r.problems[0].kind, ProblemKind::Unrecognised { zeros: true });
    // Two packets lost from the middle (bytes removed): a seq gap is not damage.
    let mut s = stream();
    s.drain(P..3 * P);
    assert!(run(&s).is_intact());
    // A magic number inside a record payload does not fool the resync.
    let mut s = stream();
    s[P + packet::LEN + 4..][..4].copy_from_slice(&CTF_MAGIC.to_le_bytes());
    s[P] ^= 1;
    let r = run(&s);
    assert_eq!(seqs(&r), [0, 2, 3, 4, 5]);
}

/// Random damage never panics, and the report always tiles the file.
#[test]
fn random_damage() {
    let good = stream();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: usize| {
        if n == 0 {
            return 0;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    for _ in 0..2000 {
        let mut s = good.clone();
        for _ in 0..1 + rnd(6) {
            match rnd(4) {
                0 if !s.is_empty() => {
                    let at = rnd(s.len());
                    s[at] ^= 1 << rnd(8);
                }
                1 => s.truncate(rnd(s.len() + 1)),
                0 | 2 => {
                    let at = rnd(s.len() + 1);
                    s.splice(at..at, (0..rnd(100)).map(|i| i as u8));
                }
                _ => {
                    let at = rnd(s.len() + 1);
                    let end = (at + rnd(600)).min(s.len());
                    s.drain(at..end);
                }
            }
        }
        let r = run(&s);
        assert!(r.records() <= 55);
    }
}
