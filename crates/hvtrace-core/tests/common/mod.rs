//! Shared by the core's integration tests: a test event set and a checker
//! that decodes packets and proves every record intact.
#![allow(dead_code)]

#[cfg(loom)]
pub mod loom;

use hvtrace_core::decode::{records, Value};
use hvtrace_core::{EventDesc, EventSet};

hvtrace_core::events! {
    /// Events used by the stress tests.
    pub mod test_events ("test") {
        /// A record carrying its writer and sequence number, and a pad whose
        /// bytes are derived from both, so corruption is detected.
        fn seq(writer: u32, n: u64, pad: &[u8]);
    }
}

/// Pad content for (writer, n): variable length, recognisable bytes.
pub fn pad(writer: u32, n: u64, buf: &mut [u8; 64]) -> &[u8] {
    let len = ((n.wrapping_mul(7) + writer as u64) % 41) as usize;
    for (i, b) in buf[..len].iter_mut().enumerate() {
        *b = (n as u8).wrapping_add(i as u8).wrapping_add(writer as u8);
    }
    &buf[..len]
}

/// What a checker found in a stream of packets.
#[derive(Default, Debug)]
pub struct Checked {
    /// Records found, per writer: the sequence numbers in stream order.
    pub per_writer: Vec<Vec<u64>>,
    /// Records found.
    pub records: u64,
    /// Last `events_discarded` seen.
    pub last_discarded: u64,
}

/// Decodes packets in stream order, asserting intact records and non-decreasing timestamps.
pub fn check_packets(packets: &[Vec<u8>], writers: usize) -> Checked {
    check_packets_with(packets, writers, test_events::Events::EVENTS, |w, n, got| got == pad(w, n, &mut [0; 64]))
}

/// [`check_packets`] for any event set whose one event is `(writer, n, pad)`:
/// `pad_ok(writer, n, pad)` says whether a record's pad is intact. Also
/// asserts that each writer's records come in order, without duplicates.
pub fn check_packets_with(
    packets: &[Vec<u8>],
    writers: usize,
    schema: &[EventDesc],
    pad_ok: impl Fn(u32, u64, &[u8]) -> bool,
) -> Checked {
    let mut out = Checked { per_writer: vec![Vec::new(); writers], ..Default::default() };
    let mut last_ts = 0u64;
    let mut last_seq = None;
    for p in packets {
        let (info, recs) = records(p, schema).expect("packet header");
        assert_eq!(info.stream_instance_id, 0);
        if let Some(s) = last_seq {
            assert!(info.seq > s, "packet sequence numbers must increase: {} after {}", info.seq, s);
        }
        last_seq = Some(info.seq);
        assert!(info.timestamp_begin >= last_ts, "packet begins before the previous record");
        assert!(info.events_discarded >= out.last_discarded, "events_discarded went backwards");
        out.last_discarded = info.events_discarded;
        let mut any = false;
        for r in recs {
            let r = r.expect("record decodes");
            any = true;
            assert!(r.timestamp >= last_ts, "timestamp went backwards: {} < {}", r.timestamp, last_ts);
            last_ts = r.timestamp;
            let v: Vec<Value> = r.values(schema).collect();
            let [Value::U(w), Value::U(n), Value::Bytes(got)] = v[..] else { panic!("bad fields {v:?}") };
            assert!(pad_ok(w as u32, n, got), "pad of writer {w} record {n} corrupted");
            out.per_writer[w as usize].push(n);
            out.records += 1;
        }
        assert!(any, "a delivered packet holds at least one record");
        assert!(info.timestamp_end >= last_ts, "timestamp_end before the packet's last record");
    }
    for (w, s) in out.per_writer.iter().enumerate() {
        assert!(s.windows(2).all(|p| p[0] < p[1]), "writer {w}: records out of order or duplicated: {s:?}");
    }
    out
}
