//! `Merge` on hand-built traces: records come in timestamp order across
//! streams (checked against a sort of every stream's own decode), each loss
//! before the record it precedes, and damage costs only the packets
//! `check_stream` rejects, with a warning naming them.

use std::path::Path;

use hvtrace_core::ctf::{empty_packet, header, packet};
use hvtrace_core::metadata::{render, ClockDesc, TraceDesc};
use hvtrace_core::EventSet;
use hvtrace_reader::{check, packets, Item, Merge, Order, TraceDir};

hvtrace_core::events! {
    /// A tiny event set.
    pub mod t ("t") {
        /// A counter.
        fn tick(n: u32);
    }
}

const UUID: [u8; 16] = [9; 16];
const P: usize = 256;

/// A packet of `P` bytes on `cpu`: `n` ticks from `begin`, `step` apart,
/// each carrying `cpu << 16 | seq << 8 | i`; `discarded` cumulative losses.
fn packet(cpu: u32, seq: u64, begin: u64, step: u64, n: u32, discarded: u64) -> Vec<u8> {
    let mut b = vec![0u8; P];
    b[..packet::LEN].copy_from_slice(&empty_packet(&UUID, cpu, seq, begin, discarded));
    let (mut at, mut ts) = (packet::LEN, begin);
    for i in 0..n {
        b[at..at + 4].copy_from_slice(&header::compact(0, ts));
        b[at + 4..at + 8].copy_from_slice(&(cpu << 16 | (seq as u32) << 8 | i).to_le_bytes());
        at += 8;
        ts += step;
    }
    b[packet::TIMESTAMP_END..][..8].copy_from_slice(&(ts - step).to_le_bytes());
    b[packet::CONTENT_SIZE..][..8].copy_from_slice(&(at as u64 * 8).to_le_bytes());
    b[packet::PACKET_SIZE..][..8].copy_from_slice(&(P as u64 * 8).to_le_bytes());
    b
}

/// Two CPUs whose records interleave: CPU 0 every 10 ticks, CPU 1 every 7
/// from tick 3, 6 packets of 20 records each; CPU 1 loses 4 events before
/// its packet 2 and 5 after its last record (an empty trailer).
fn trace(dir: &Path) {
    let clock = ClockDesc { name: "c", description: "test", freq: 1_000_000_000, offset_s: 0, offset: 0, precision: 0 };
    let desc = TraceDesc { uuid: UUID, hostname: "test", domain: "t", tracer_version: (0, 1, 0), clock };
    let mut md = String::new();
    render(&mut md, &desc, t::Events::EVENTS).unwrap();
    std::fs::write(dir.join("metadata"), md).unwrap();
    let s0: Vec<u8> = (0..6).flat_map(|s| packet(0, s, s * 200, 10, 20, 0)).collect();
    let mut s1: Vec<u8> = (0..6).flat_map(|s| packet(1, s, 3 + s * 140, 7, 20, if s >= 2 { 4 } else { 0 })).collect();
    s1.extend_from_slice(&empty_packet(&UUID, 1, 6, 3 + 6 * 140, 9));
    std::fs::write(dir.join("channel0_0"), s0).unwrap();
    std::fs::write(dir.join("channel0_1"), s1).unwrap();
}

/// Rewrites stream file `name` of the trace in `dir` with `f`; gives the new bytes.
fn edit(dir: &Path, name: &str, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let path = dir.join(name);
    let mut b = std::fs::read(&path).unwrap();
    f(&mut b);
    std::fs::write(&path, &b).unwrap();
    b
}

/// What a walk hands out: records as (ts, stream, payload word), losses as
/// (ts or MAX, stream, count + 1_000_000).
#[derive(Debug, Default)]
struct Walk {
    records: Vec<(u64, usize, u32)>,
    losses: Vec<(Option<u64>, Option<u64>, usize, u64)>,
    warnings: Vec<String>,
}

fn walk(dir: &Path, order: Order) -> Walk {
    let trace = TraceDir::open(dir).unwrap();
    let mut m = Merge::new(&trace, order).unwrap();
    let mut w = Walk::default();
    while let Some(item) = m.next_item() {
        match item.unwrap() {
            Item::Record(r) => {
                let word = u32::from_le_bytes(r.payload().try_into().unwrap());
                w.records.push((r.timestamp(), r.stream(), word));
            }
            Item::Lost { stream, since, at, count, .. } => w.losses.push((since, at, stream, count)),
        }
    }
    w.warnings = m.warnings().to_vec();
    w
}

/// Every record of the packets `check` finds intact, sorted by (ts, stream).
fn oracle(dir: &Path) -> Vec<(u64, usize, u32)> {
    let trace = TraceDir::open(dir).unwrap();
    let report = check(dir).unwrap();
    let mut all = Vec::new();
    for (i, s) in report.streams.iter().enumerate() {
        let bytes = trace.streams[i].read().unwrap();
        for p in s.report.intact_packets(&bytes) {
            for r in p.records(t::Events::EVENTS) {
                let r = r.unwrap();
                all.push((r.timestamp, i, u32::from_le_bytes(r.payload.try_into().unwrap())));
            }
        }
    }
    all.sort_by_key(|&(ts, s, _)| (ts, s));
    all
}

#[test]
fn records_come_in_time_order_with_each_loss_before_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    trace(tmp.path());
    let w = walk(tmp.path(), Order::Time);
    assert_eq!(w.records.len(), 240);
    assert_eq!(w.records, oracle(tmp.path()));
    assert!(w.warnings.is_empty(), "{:?}", w.warnings);
    // CPU 1's packet 2 starts at tick 283, after its record at 276; the
    // trailer's 5 come after every record.
    assert_eq!(w.losses, [(Some(276), Some(283), 1, 4), (Some(3 + 5 * 140 + 19 * 7), None, 1, 5)]);
    // Counted in stream order, the same records and losses.
    let mut s = walk(tmp.path(), Order::Streams);
    assert_ne!(s.records, w.records);
    s.records.sort_by_key(|&(ts, st, _)| (ts, st));
    assert_eq!(s.records, w.records);
    assert_eq!(s.losses, w.losses);
}

#[test]
fn a_damaged_packet_costs_itself_a_gap_and_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    trace(tmp.path());
    edit(tmp.path(), "channel0_0", |b| {
        b[2 * P + packet::MAGIC] ^= 0xff;
        // A record header that names no event, in packet 4.
        b[4 * P + packet::LEN + 8] = 0x1f;
    });
    let w = walk(tmp.path(), Order::Time);
    assert_eq!(w.records, oracle(tmp.path()));
    assert_eq!(w.records.len(), 240 - 40);
    assert!(w.warnings.iter().any(|x| x.starts_with("channel0_0: skipped bytes 512..768")), "{:?}", w.warnings);
    assert!(w.warnings.iter().any(|x| x.starts_with("channel0_0: skipped bytes 1024..1280")), "{:?}", w.warnings);
    // Each skip is a gap of unknown size on stream 0, before the record
    // after it (packet 3 starts at 600, packet 5 at 1000).
    let gaps: Vec<_> = w.losses.iter().filter(|l| l.2 == 0).collect();
    assert_eq!(gaps, [&(Some(390), Some(600), 0, 0), &(Some(790), Some(1000), 0, 0)]);
}

/// Packets 2 and 4 of stream 0 swapped (seq 0, 1, 4, 3, 2, 5): each decodes,
/// but read as they lie, time would run backwards in the walk (it did, and
/// the views drew it). The walk reads 0, 1 and 4, then skips what cannot
/// follow 4 (3 and 2, with warnings; the gap shows before 4) and goes on
/// with 5: every stream's records still come in time order.
#[test]
fn packets_out_of_order_are_skipped_and_time_never_goes_back() {
    let tmp = tempfile::tempdir().unwrap();
    trace(tmp.path());
    edit(tmp.path(), "channel0_0", |b| {
        let (head, tail) = b.split_at_mut(4 * P);
        head[2 * P..3 * P].swap_with_slice(&mut tail[..P]);
    });
    let w = walk(tmp.path(), Order::Time);
    assert!(w.records.windows(2).all(|r| r[0].0 <= r[1].0), "time goes back: {:?}", w.records);
    // Stream 0 holds packets 0, 1, 4, 5 (the payload word carries the seq).
    let seqs: std::collections::BTreeSet<u32> =
        w.records.iter().filter(|r| r.1 == 0).map(|r| (r.2 >> 8) & 0xff).collect();
    assert_eq!(seqs, [0, 1, 4, 5].into_iter().collect());
    assert_eq!(w.records.iter().filter(|r| r.1 == 1).count(), 120);
    assert!(
        w.warnings
            .iter()
            .any(|x| x.starts_with("channel0_0: skipped the packet at byte 1024") && x.contains("out of order")),
        "{:?}",
        w.warnings
    );
    // The two packets not read are a gap of unknown size before packet 4 (at 800).
    let gaps: Vec<_> = w.losses.iter().filter(|l| l.2 == 0).collect();
    assert_eq!(gaps, [&(Some(390), Some(800), 0, 0)]);
}

#[test]
fn a_cut_stream_and_trailing_garbage_keep_every_intact_packet() {
    let tmp = tempfile::tempdir().unwrap();
    trace(tmp.path());
    // Cut inside packet 5 (the trailer goes too).
    edit(tmp.path(), "channel0_1", |b| b.truncate(5 * P + 100));
    let b = edit(tmp.path(), "channel0_0", |b| b.extend_from_slice(&[0xa5; 50]));
    let w = walk(tmp.path(), Order::Time);
    assert_eq!(w.records, oracle(tmp.path()));
    assert_eq!(w.records.len(), 240 - 20);
    assert!(w.warnings.iter().any(|x| x.starts_with("channel0_1: skipped") && x.contains("cut")), "{:?}", w.warnings);
    assert!(w.warnings.iter().any(|x| x.starts_with("channel0_0: skipped")), "{:?}", w.warnings);
    // What the packets read say was lost is all that is reported lost.
    assert_eq!(w.losses, [(Some(276), Some(283), 1, 4)]);
    assert!(packets(&b).count() > 6);
}

#[test]
fn a_stream_of_garbage_gives_the_other_streams_and_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    trace(tmp.path());
    std::fs::write(tmp.path().join("channel0_0"), vec![0x5a; 3000]).unwrap();
    let w = walk(tmp.path(), Order::Time);
    assert_eq!(w.records, oracle(tmp.path()));
    assert_eq!(w.records.len(), 120);
    assert!(w.warnings.iter().any(|x| x.starts_with("channel0_0: damage at byte 0")), "{:?}", w.warnings);
}

/// Every item of a walk, in order, with where it came from: records as
/// (ts, stream, payload word, previous ts), losses with their fields.
fn items(m: &mut Merge) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(item) = m.next_item() {
        out.push(match item.unwrap() {
            Item::Record(r) => {
                let word = u32::from_le_bytes(r.payload().try_into().unwrap());
                format!("rec {} {} {word:#x} prev {:?}", r.timestamp(), r.stream(), r.previous())
            }
            Item::Lost { stream, since, at, count, .. } => format!("lost {stream} {since:?} {at:?} {count}"),
        });
    }
    out
}

/// The first place two walks differ.
fn diff(a: &[String], b: &[String]) -> String {
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    format!("item {i}: {:?} against {:?} ({} and {} items)", a.get(i), b.get(i), a.len(), b.len())
}

#[test]
fn windows_between_marks_hand_out_the_whole_walk_in_turn() {
    let tmp = tempfile::tempdir().unwrap();
    trace(tmp.path());
    let t = TraceDir::open(tmp.path()).unwrap();
    let mut m = Merge::new(&t, Order::Time).unwrap();
    let whole = items(&mut m);
    let (whole_packets, whole_lost): (Vec<u64>, Vec<u64>) =
        m.streams().map(|s| (s.packets, s.events_discarded)).unzip();
    let split = hvtrace_reader::Splitter::new(&t, true).unwrap().expect("an intact trace can be cut");
    // Cuts inside packets, at their first records, between packets, before
    // and after every record: each pair, and three windows.
    let mut cuts: Vec<u64> = (0..1000).step_by(3).chain([0, 1, 3, 200, 203, 843, 999, 5000]).collect();
    cuts.sort();
    cuts.dedup();
    for (i, &a) in cuts.iter().enumerate() {
        for &b in cuts[i..].iter().step_by(7) {
            let (ma, mb) = (split.mark(a).unwrap().unwrap(), split.mark(b).unwrap().unwrap());
            let mut parts = Vec::new();
            let mut packets = vec![0; 2];
            let mut lost = vec![0; 2];
            for (from, to) in [(None, Some(&ma)), (Some(&ma), Some(&mb)), (Some(&mb), None)] {
                let mut m = Merge::between(&t, Order::Time, true, from, to).unwrap();
                parts.extend(items(&mut m));
                assert!(m.warnings().is_empty(), "{:?}", m.warnings());
                for (k, s) in m.streams().enumerate() {
                    packets[k] += s.packets;
                    lost[k] = lost[k].max(s.events_discarded);
                }
            }
            assert!(parts == whole, "cut at {a} and {b}: {}", diff(&parts, &whole));
            assert_eq!((&packets, &lost), (&whole_packets, &whole_lost), "cut at {a} and {b}");
        }
    }
    // Even shares of the bytes: increasing times inside the trace.
    let times = split.times_by(&[1; 3]);
    assert_eq!(times.len(), 2, "{times:?}");
    assert!(times[0] > 0 && times[0] < times[1] && times[1] < 843, "{times:?}");
    // Uneven shares: the cuts are the first packet starts (0 3 143 200 283
    // 400 423 563 600 703 800 843 1000: all of P bytes but the empty one at
    // 843) with at least that share of the bytes before them.
    assert_eq!(split.times_by(&[2, 1, 1]), [563, 800]);
    assert_eq!(split.times_by(&[1; 4]), [283, 563, 800]);
    // What the whole walk starts with, from the headers.
    let whole = Merge::with_kernel(&t, Order::Time).unwrap();
    assert_eq!(split.first_time().unwrap(), whole.first_timestamp());
    assert_eq!(split.total_bytes(), whole.total_bytes());
}

#[test]
fn a_trace_with_a_damaged_header_is_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    trace(tmp.path());
    edit(tmp.path(), "channel0_1", |b| b[2 * P + packet::MAGIC] ^= 0xff);
    let t = TraceDir::open(tmp.path()).unwrap();
    assert!(hvtrace_reader::Splitter::new(&t, true).unwrap().is_none());
    // Nor one whose packets are swapped.
    trace(tmp.path());
    edit(tmp.path(), "channel0_1", |b| {
        let (a, c) = b.split_at_mut(2 * P);
        a[P..].swap_with_slice(&mut c[..P]);
    });
    assert!(hvtrace_reader::Splitter::new(&t, true).unwrap().is_none());
}

#[test]
fn each_record_names_its_streams_previous_record() {
    // Across packets and across switches between streams, in both orders.
    let tmp = tempfile::tempdir().unwrap();
    trace(tmp.path());
    let t = TraceDir::open(tmp.path()).unwrap();
    for order in [Order::Time, Order::Streams] {
        let mut m = Merge::new(&t, order).unwrap();
        let mut last = vec![None; t.streams.len()];
        let mut n = 0;
        while let Some(item) = m.next_item() {
            if let Item::Record(r) = item.unwrap() {
                assert_eq!(r.previous(), last[r.stream()], "{order:?} record {n} at {}", r.timestamp());
                last[r.stream()] = Some(r.timestamp());
                n += 1;
            }
        }
        assert_eq!(n, 240);
    }
}
