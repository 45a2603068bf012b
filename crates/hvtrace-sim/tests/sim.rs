//! The simulation against in-test sinks: scheduling invariants across pCPUs,
//! hypercall and VM exit/entry pairing, exact counts, determinism, pacing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{check, AtomicCountingSink, CaptureSink, CountingSink, Ev};
use hvtrace_core::{EventSet, RecordError};
use hvtrace_sim::xen::{self, Id};
use hvtrace_sim::{PcpuSim, RunConfig, SimConfig, SimStats, EVENT_COUNT};

fn trace(cpu: u32, cfg: &SimConfig, steps: u64) -> (Vec<Ev>, SimStats) {
    let sink = CaptureSink::default();
    let mut sim = PcpuSim::new(cpu, cfg);
    let mut st = SimStats::default();
    for _ in 0..steps {
        let s = sim.step(&sink);
        assert_eq!((s.emitted, s.refused, s.closed), (1, 0, 0));
        st.add(&s);
    }
    let evs = sink.events();
    assert_eq!(evs.len() as u64, steps);
    for (i, &n) in st.by_event.iter().enumerate() {
        assert_eq!(evs.iter().filter(|e| e.id as usize == i).count() as u64, n);
    }
    (evs, st)
}

#[test]
fn invariants_hold_across_pcpus_and_every_event_occurs() {
    let cfg = SimConfig { pcpus: 3, domains: 7, vcpus_per_domain: 3, seed: 11 };
    let traces: Vec<Vec<Ev>> = (0..3).map(|c| trace(c, &cfg, 300_000).0).collect();
    let rep = check(&traces);
    eprintln!("{rep:?}");
    assert_eq!(rep.events, 900_000);
    for (i, &n) in rep.by_id.iter().enumerate() {
        assert!(n > 0, "event {} never emitted", xen::Events::EVENTS[i].name);
    }
    assert!(rep.switches > 1000 && rep.hypercall_pairs > 10_000 && rep.vm_exits > 10_000, "{rep:?}");
    assert!(rep.destroyed >= 2, "{rep:?}");
    // A hypercall is left open only by a vCPU descheduled inside it (at most one per vCPU).
    assert!(rep.open_at_end <= 7 * 3, "{rep:?}");
    assert!(rep.announced_at_end <= 3, "{rep:?}");
}

#[test]
fn shapes_from_one_vcpu_to_more_pcpus_than_domains() {
    for (pcpus, domains, vcpus) in [(1, 1, 1), (1, 2, 1), (4, 2, 4), (2, 5, 128), (8, 3, 2)] {
        let cfg = SimConfig { pcpus, domains, vcpus_per_domain: vcpus, seed: 3 };
        let traces: Vec<Vec<Ev>> = (0..pcpus + 1).map(|c| trace(c, &cfg, 20_000).0).collect();
        let rep = check(&traces);
        assert_eq!(rep.events, 20_000 * (pcpus as u64 + 1));
        // A pCPU without a domain (and a hot-plugged one, cpu == pcpus) only takes timer interrupts.
        assert!(traces[pcpus as usize].iter().all(|e| e.id == Id::interrupt as u32));
    }
}

#[test]
fn the_same_seed_gives_the_same_events() {
    let cfg = SimConfig { pcpus: 2, domains: 4, vcpus_per_domain: 2, seed: 99 };
    let run = |cpu, cfg: &SimConfig| {
        let sink = CaptureSink::default();
        let mut sim = PcpuSim::new(cpu, cfg);
        for _ in 0..50_000 {
            sim.step(&sink);
        }
        sink.records.into_inner()
    };
    assert_eq!(run(1, &cfg), run(1, &cfg));
    assert_ne!(run(0, &cfg), run(1, &cfg), "pCPUs differ");
    assert_ne!(run(1, &cfg), run(1, &SimConfig { seed: 100, ..cfg }), "seeds differ");
}

#[test]
fn run_emits_exactly_the_count_asked_and_counts_refusals() {
    let stop = AtomicBool::new(false);
    let cfg = SimConfig::new(2);
    for n in [0u64, 1, 7, 10_000, 123_457] {
        let sink = CountingSink::new();
        let mut sim = PcpuSim::new(1, &cfg);
        let st = sim.run(&sink, RunConfig { events: Some(n), rate_per_sec: None, stop: &stop });
        assert_eq!(st.emitted, n);
        assert_eq!(sink.calls.get(), n);
        assert_eq!((st.refused, st.closed, st.recorded()), (0, 0, n));
        assert_eq!(st.by_event, *sink.by_id.borrow());
        assert_eq!(st.by_event.iter().sum::<u64>(), n);
    }
    // A sink that refuses every third record as full, then one that is closed.
    let sink = CountingSink::refusing(3, RecordError::Full);
    let st = PcpuSim::new(0, &cfg).run(&sink, RunConfig { events: Some(30_001), rate_per_sec: None, stop: &stop });
    assert_eq!((st.emitted, st.refused, st.closed), (30_001, 10_000, 0));
    assert_eq!(st.recorded(), sink.accepted.get());
    let sink = CountingSink::refusing(1, RecordError::Closed);
    let st = PcpuSim::new(0, &cfg).run(&sink, RunConfig { events: Some(500), rate_per_sec: None, stop: &stop });
    assert_eq!((st.emitted, st.refused, st.closed, st.recorded()), (500, 0, 500, 0));
    // Counts merge.
    let mut total = SimStats::default();
    total.merge(&st);
    total.merge(&st);
    assert_eq!((total.emitted, total.closed, total.by_event.len()), (1000, 1000, EVENT_COUNT));
}

#[test]
fn run_stops_when_told() {
    let stop = AtomicBool::new(true);
    let sink = CountingSink::new();
    let st =
        PcpuSim::new(0, &SimConfig::default()).run(&sink, RunConfig { events: None, rate_per_sec: None, stop: &stop });
    assert_eq!(st.emitted, 0);
    let stop = AtomicBool::new(false);
    let sink = AtomicCountingSink::default();
    let st = std::thread::scope(|s| {
        let h = s.spawn(|| {
            PcpuSim::new(0, &SimConfig::default())
                .run(&sink, RunConfig { events: None, rate_per_sec: None, stop: &stop })
        });
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });
    assert!(st.emitted > 0);
    assert_eq!(st.emitted, sink.0.load(Ordering::Relaxed));
}

fn timed(rate: Option<u64>, events: Option<u64>, for_ms: u64) -> (SimStats, Duration) {
    let stop = AtomicBool::new(false);
    let sink = AtomicCountingSink::default();
    let t0 = Instant::now();
    let st = std::thread::scope(|s| {
        let h = s.spawn(|| {
            PcpuSim::new(0, &SimConfig::default()).run(&sink, RunConfig { events, rate_per_sec: rate, stop: &stop })
        });
        std::thread::sleep(Duration::from_millis(for_ms));
        stop.store(true, Ordering::Relaxed);
        h.thread().unpark();
        h.join().unwrap()
    });
    assert_eq!(st.emitted, sink.0.load(Ordering::Relaxed));
    (st, t0.elapsed())
}

#[test]
fn rate_is_roughly_honoured() {
    let (st, _) = timed(Some(1000), None, 300);
    assert!((150..=600).contains(&st.emitted), "1000 ev/s for 0.3 s gave {}", st.emitted);
    let (st, _) = timed(Some(100_000), None, 300);
    assert!((15_000..=60_000).contains(&st.emitted), "100k ev/s for 0.3 s gave {}", st.emitted);
    // A count at a rate takes about count / rate.
    let t0 = Instant::now();
    let stop = AtomicBool::new(false);
    let st = PcpuSim::new(0, &SimConfig::default())
        .run(&CountingSink::new(), RunConfig { events: Some(200), rate_per_sec: Some(1000), stop: &stop });
    assert_eq!(st.emitted, 200);
    let el = t0.elapsed();
    assert!(el >= Duration::from_millis(150) && el < Duration::from_secs(2), "200 events at 1000/s took {el:?}");
}

#[test]
fn rate_zero_emits_nothing_and_returns_on_stop() {
    let (st, el) = timed(Some(0), None, 300);
    assert_eq!(st, SimStats::default());
    assert!(el < Duration::from_secs(2), "{el:?}");
    let (st, _) = timed(Some(0), Some(1000), 150);
    assert_eq!(st.emitted, 0);
}

/// A sink that raises the stop flag once it has taken `after` records.
struct StopAfter<'a> {
    inner: CountingSink,
    after: u64,
    stop: &'a AtomicBool,
}

impl hvtrace_core::Sink for StopAfter<'_> {
    fn record<F: FnOnce(&mut hvtrace_core::Encoder<'_>)>(
        &self,
        id: u32,
        len: usize,
        fill: F,
    ) -> Result<(), RecordError> {
        if self.inner.calls.get() + 1 == self.after {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.inner.record(id, len, fill)
    }
}

// Issue 17 item 8: at `--rate 1000000000000` one burst was 10^9 events
// emitted without a look at the stop flag (28 s after SIGTERM), and at
// u64::MAX the run never stopped.
#[test]
fn a_paced_run_sees_the_stop_flag_inside_a_burst() {
    for rate in [hvtrace_sim::MAX_RATE, 1_000_000_000_000, u64::MAX] {
        let stop = AtomicBool::new(false);
        let sink = StopAfter { inner: CountingSink::new(), after: 10, stop: &stop };
        let st = PcpuSim::new(0, &SimConfig::default())
            .run(&sink, RunConfig { events: None, rate_per_sec: Some(rate), stop: &stop });
        assert!(st.emitted >= 10, "rate {rate}: {} events", st.emitted);
        assert!(st.emitted <= 1024, "rate {rate}: {} events after the stop at the 10th", st.emitted);
        assert_eq!(st.emitted, sink.inner.calls.get());
    }
}
