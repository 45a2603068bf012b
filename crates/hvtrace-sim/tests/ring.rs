//! The simulation recorded into real rings (hvtrace-core's heap rings) and
//! decoded back against `xen::Events::EVENTS`: every record decodes, is
//! byte-identical to what the simulation encoded, and the decoded traces
//! satisfy the scheduling invariants; with a ring too small and never read,
//! recorded + discarded == emitted.

mod common;

use std::cell::Cell;
use std::sync::atomic::AtomicBool;

use common::{check, decode, CaptureSink, Ev};
use hvtrace_core::decode::records;
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{EventSet, Geometry, Mode, Poll, RingReader, RingSink, StreamId};
use hvtrace_sim::xen;
use hvtrace_sim::{PcpuSim, RunConfig, SimConfig, SimStats};

/// Reads every delivered packet; returns its records as (id, payload).
fn drain(reader: &RingReader<'_>, buf: &mut [u8], out: &mut Vec<(u32, Vec<u8>)>, last_ts: &mut u64) -> u64 {
    let mut packets = 0;
    while let Poll::Ready(p) = reader.next_packet() {
        reader.copy_packet(&p, buf);
        assert!(reader.release(&p), "discard mode never takes a packet back");
        let (info, recs) = records(buf, xen::Events::EVENTS).expect("packet header");
        assert_eq!(info.cpu_id, reader.cpu());
        for r in recs {
            let r = r.expect("record decodes");
            assert!(r.compact, "all xen events have ids below 31: compact headers");
            assert!(r.timestamp >= *last_ts);
            *last_ts = r.timestamp;
            out.push((r.id, r.payload.to_vec()));
        }
        packets += 1;
    }
    packets
}

#[test]
fn every_record_decodes_back_identical_and_consistent() {
    let cfg = SimConfig { pcpus: 2, domains: 5, vcpus_per_domain: 2, seed: 2024 };
    let steps = 60_000u64;
    let geo = Geometry::new(16 << 10, 8).unwrap();
    let mut traces: Vec<Vec<Ev>> = Vec::new();
    for cpu in 0..cfg.pcpus {
        let mem = HeapRing::new(geo);
        let ring = mem.producer(Mode::Discard, StreamId { uuid: [9; 16], cpu });
        let reader = mem.reader();
        let t = Cell::new(0u64);
        let sink = RingSink { ring: &ring, clock: || t.replace(t.get() + 17) };
        let mut sim = PcpuSim::new(cpu, &cfg);
        let (mut got, mut buf, mut last_ts, mut st) =
            (Vec::new(), vec![0u8; geo.subbuf_size as usize], 0, SimStats::default());
        let mut packets = 0;
        for i in 0..steps {
            st.add(&sim.step(&sink));
            if i % 256 == 0 {
                packets += drain(&reader, &mut buf, &mut got, &mut last_ts);
            }
        }
        ring.close();
        ring.flush(&sink.clock);
        packets += drain(&reader, &mut buf, &mut got, &mut last_ts);
        assert!(packets > 10);
        // After close, the sink refuses without loss.
        let s = sim.step(&sink);
        assert_eq!((s.emitted, s.refused, s.closed), (1, 0, 1));

        let c = ring.counters();
        assert_eq!((st.emitted, st.refused, c.discarded), (steps, 0, 0), "{c:?}");
        assert_eq!(got.len() as u64, steps);
        // Byte for byte what the same simulation encodes into a plain sink.
        let capture = CaptureSink::default();
        let mut twin = PcpuSim::new(cpu, &cfg);
        for _ in 0..steps {
            twin.step(&capture);
        }
        assert!(got == *capture.records.borrow(), "cpu {cpu}: ring contents differ from the encoded events");
        traces.push(got.iter().map(|(id, p)| decode(*id, p)).collect());
    }
    let rep = check(&traces);
    assert_eq!(rep.events, steps * cfg.pcpus as u64);
    assert!(rep.switches > 100 && rep.hypercall_pairs > 1000, "{rep:?}");
}

#[test]
fn a_full_ring_discards_and_counts_exactly() {
    let geo = Geometry::new(4096, 4).unwrap();
    let mem = HeapRing::new(geo);
    let ring = mem.producer(Mode::Discard, StreamId { uuid: [1; 16], cpu: 0 });
    let reader = mem.reader();
    let t = Cell::new(0u64);
    let sink = RingSink { ring: &ring, clock: || t.replace(t.get() + 1) };
    let stop = AtomicBool::new(false);
    let st = PcpuSim::new(0, &SimConfig::default())
        .run(&sink, RunConfig { events: Some(20_000), rate_per_sec: None, stop: &stop });
    ring.close();
    ring.flush(&sink.clock);
    let (mut got, mut buf, mut ts) = (Vec::new(), vec![0u8; 4096], 0);
    drain(&reader, &mut buf, &mut got, &mut ts);
    let c = ring.counters();
    assert_eq!(st.emitted, 20_000);
    assert!(st.refused > 0);
    assert_eq!(st.refused, c.discarded, "{c:?}");
    assert_eq!(got.len() as u64 + c.discarded, st.emitted, "recorded + discarded == emitted");
    assert_eq!(got.len() as u64, st.recorded());
}
