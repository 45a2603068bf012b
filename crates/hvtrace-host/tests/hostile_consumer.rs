//! A hostile consumer: while writer threads record, a thread writes random
//! and extreme values into the consumer's control words (the consumed
//! position, the overwrite-mode claim words, the reader's own word) in a
//! loop. The producer must not crash, must not write outside its buffers,
//! must keep its own invariants and counters exact, and `stop` must still
//! reach quiescence. What a lying consumer may cost is its own data.
//!
//! Two variants: a real [`Host`] whose control memfd the test maps through
//! the control client (the hostile writes go through the memfd, as another
//! process's would), and a bare [`HeapRing`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvtrace_consumer::MappedReader;
use hvtrace_core::decode::{packet_info, records, Value};
use hvtrace_core::layout::{claim, RingCtrl, RingHeader, SubbufState, CLOSED};
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{EventSet, Geometry, Mode, Poll, RecordError, RingCounters, RingReader, Sink, StreamId};
use hvtrace_ctl::Client;
use hvtrace_proto::{ChannelConfig, ChannelState, Reply, Request};
use hvtrace_sys::SharedMapping;

mod common;

use common::*;

hvtrace_core::events! {
    /// Test events.
    pub mod ev ("test") {
        /// A record naming its writer and its sequence number.
        fn tick(writer: u32, n: u64, note: &str);
    }
}

const SUBBUF: u64 = 4096;
const NUM_SUBBUF: u64 = 4;
/// How long the consumer lies while writers record.
const HOSTILE_FOR: Duration = Duration::from_millis(1200);

/// A hostile consumed position, given the producer's write position.
fn hostile_consumed(rng: &mut Rng, write: u64) -> u64 {
    let w = write & !CLOSED;
    let buf = SUBBUF * NUM_SUBBUF;
    let aligned = w & !(SUBBUF - 1);
    match rng.below(14) {
        0 => 0,
        1 => u64::MAX,
        2 => w + SUBBUF * (1 + rng.below(8)),          // beyond the write head
        3 => w.wrapping_sub(buf * (1 + rng.below(4))), // backwards
        4 => 1 << 63,                                  // huge / the CLOSED bit
        5 => aligned + 1 + rng.below(SUBBUF - 1),      // unaligned
        6 => rng.next(),                               // garbage
        7 => u64::MAX - rng.below(SUBBUF),             // wraps when added to
        8 => aligned.wrapping_sub(SUBBUF),             // plausible, a bit behind
        // "everything is read" (lets the producer lap freely): most often,
        // so packets keep flowing and laps wrap.
        _ => aligned,
    }
}

/// A hostile claim word for sub-buffer `idx` (overwrite mode).
fn hostile_claim(rng: &mut Rng, write: u64, idx: u64) -> u64 {
    let lap = (write & !CLOSED) / (SUBBUF * NUM_SUBBUF);
    let _ = idx;
    match rng.below(8) {
        0 => 0,
        1 => u64::MAX,
        2 => claim::consumer(lap.saturating_sub(1)), // "I read it" (maybe a lie)
        3 => claim::producer(lap.saturating_sub(1)), // pretend to be the producer
        4 => claim::consumer(lap + 5),               // a future lap
        5 => claim::producer(u64::MAX >> 2),
        _ => rng.next(),
    }
}

/// What the writers did, by outcome.
#[derive(Default, Debug, Clone, Copy)]
struct Outcomes {
    ok: u64,
    full: u64,
    busy: u64,
    too_big: u64,
}

impl Outcomes {
    fn add(&mut self, o: &Outcomes) {
        self.ok += o.ok;
        self.full += o.full;
        self.busy += o.busy;
        self.too_big += o.too_big;
    }
}

/// Records until `stop`, as writer `writer`, through `sink`; every 97th
/// record is larger than a sub-buffer (refused and counted as too big).
fn write_until<S: Sink>(sink: &S, writer: u32, stop: &AtomicBool) -> Outcomes {
    let mut o = Outcomes::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let note = if n.is_multiple_of(5) { "a longer note to vary the record size" } else { "x" };
        let r = if n.is_multiple_of(97) {
            sink.record(ev::Id::tick as u32, SUBBUF as usize, |_| unreachable!("a too-big record is never reserved"))
        } else {
            ev::tick(sink, writer, n, note)
        };
        match r {
            Ok(()) => o.ok += 1,
            Err(RecordError::Full) => o.full += 1,
            Err(RecordError::Busy) => o.busy += 1,
            Err(RecordError::TooBig) => o.too_big += 1,
            Err(RecordError::Closed) => panic!("writer {writer}: ring closed while the test records"),
        }
        n += 1;
        if n.is_multiple_of(256) {
            std::thread::yield_now();
        }
    }
    o
}

/// A ring as the test sees it after the writers stopped: its reader, and
/// ways to read producer words and to set consumer words.
struct View<'a> {
    reader: &'a RingReader<'a>,
    /// `(commit, delivered)` of sub-buffer `i`.
    sb: Box<dyn Fn(usize) -> (u64, u64) + 'a>,
    set_consumed: Box<dyn Fn(u64) + 'a>,
    clear_claims: Box<dyn Fn() + 'a>,
}

/// The ring's own invariants once stopped and flushed, and every delivered
/// packet still in the ring decodes. Returns the records found.
fn check_ring(v: &View<'_>, cpu: u32, writers: &Outcomes) -> u64 {
    let c: RingCounters = v.reader.counters();
    let mode = v.reader.mode();
    assert!(c.closed, "cpu {cpu}: stopped ring must be closed");
    // Exact: every refusal a writer saw is counted once by its cause, and
    // the total is those refusals plus the overwritten records, nothing else.
    assert_eq!(
        c.discarded,
        writers.full + writers.busy + writers.too_big + c.overwritten,
        "cpu {cpu}: losses {c:?} vs writers {writers:?}"
    );
    assert_eq!(c.discarded_full, writers.full, "cpu {cpu}: full {c:?} vs writers {writers:?}");
    assert_eq!(c.discarded_busy, writers.busy, "cpu {cpu}: busy {c:?} vs writers {writers:?}");
    assert_eq!(c.discarded_too_big, writers.too_big, "cpu {cpu}: too big {c:?} vs writers {writers:?}");
    assert!(writers.too_big > 0, "cpu {cpu}: the writers tried too-big records: {writers:?}");
    if mode == Mode::Discard {
        assert_eq!(c.overwritten, 0, "cpu {cpu}: nothing is overwritten in discard mode");
    }
    assert!(writers.ok > 0, "cpu {cpu}: some records went through: {writers:?}");
    // Quiescent and flushed: every reserved byte is committed, every opened
    // sub-buffer delivered, nothing half-open.
    assert_eq!(c.produced_bytes % SUBBUF, 0, "cpu {cpu}: flushed to a sub-buffer boundary");
    assert_eq!(c.delivered_subbufs, c.produced_bytes / SUBBUF, "cpu {cpu}: every opened sub-buffer delivered");
    let mut commits = 0;
    (v.clear_claims)();
    let mut found = 0;
    let mut buf = vec![0u8; SUBBUF as usize];
    for i in 0..NUM_SUBBUF as usize {
        let (commit, delivered) = (v.sb)(i);
        assert_eq!(commit, delivered * SUBBUF, "cpu {cpu} sub-buffer {i}: commit count matches deliveries");
        commits += commit;
        if delivered == 0 {
            continue;
        }
        let pos = ((delivered - 1) * NUM_SUBBUF + i as u64) * SUBBUF;
        (v.set_consumed)(pos);
        let Poll::Ready(p) = v.reader.next_packet() else { panic!("cpu {cpu}: delivered lap at {pos} not readable") };
        assert_eq!(p.pos, pos);
        v.reader.copy_packet(&p, &mut buf);
        let info = packet_info(&buf).unwrap_or_else(|e| panic!("cpu {cpu} sub-buffer {i}: {e}"));
        assert_eq!((info.seq, info.cpu_id, info.packet_len), (pos / SUBBUF, cpu, SUBBUF as usize));
        assert!(info.events_discarded <= c.discarded);
        let (_, recs) = records(&buf, ev::Events::EVENTS).unwrap();
        let mut last: std::collections::BTreeMap<u64, u64> = Default::default();
        for r in recs {
            let r = r.unwrap_or_else(|e| panic!("cpu {cpu} packet seq {}: {e}", info.seq));
            let vals: Vec<Value> = r.values(ev::Events::EVENTS).collect();
            let [Value::U(w), Value::U(n), Value::Str(_)] = vals[..] else { panic!("bad fields {vals:?}") };
            if let Some(prev) = last.insert(w, n) {
                assert!(n > prev, "cpu {cpu}: writer {w} out of order in a packet");
            }
            found += 1;
        }
    }
    assert_eq!(commits, c.produced_bytes, "cpu {cpu}: commits add up to the write position");
    found
}

// ---------------------------------------------------------------------------
// Bare ring

fn heap_variant(mode: Mode, seed: u64) {
    let geo = Geometry::new(SUBBUF, NUM_SUBBUF).unwrap();
    let heap = HeapRing::new(geo);
    let ring = heap.producer(mode, StreamId { uuid: [9; 16], cpu: 0 });
    let clock = AtomicU64::new(1);
    let now = || clock.fetch_add(3, Ordering::Relaxed);
    let stop = AtomicBool::new(false);
    let lies = AtomicU64::new(0);
    let outcomes = std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u32)
            .map(|w| {
                let (ring, stop, now) = (&ring, &stop, &now);
                s.spawn(move || write_until(&hvtrace_core::RingSink { ring, clock: now }, w, stop))
            })
            .collect();
        // The consumer's words (the data bytes are not shared with it).
        let (hdr, ctrl, claims, stop, lies) = (&*heap.hdr, &*heap.ctrl, &*heap.claims, &stop, &lies);
        s.spawn(move || {
            let mut rng = Rng(seed);
            let t = Instant::now();
            while t.elapsed() < HOSTILE_FOR {
                let w = hdr.write.load(Ordering::Relaxed);
                ctrl.consumed.store(hostile_consumed(&mut rng, w), Ordering::Release);
                ctrl.reader_state.store(rng.next(), Ordering::Relaxed);
                let i = rng.below(NUM_SUBBUF) as usize;
                claims[i].store(hostile_claim(&mut rng, w, i as u64), Ordering::Release);
                lies.fetch_add(1, Ordering::Relaxed);
                if rng.below(64) == 0 {
                    std::thread::yield_now();
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        let mut all = Outcomes::default();
        for w in writers {
            all.add(&w.join().unwrap());
        }
        all
    });
    // Lie once more, then stop: close, wait for quiescence, flush.
    heap.ctrl.consumed.store(u64::MAX, Ordering::Release);
    ring.close();
    let t = Instant::now();
    while !ring.is_quiescent() {
        assert!(t.elapsed() < Duration::from_secs(2), "stop never reached quiescence");
        std::thread::yield_now();
    }
    ring.flush(&now);
    // The header the producer owns is intact.
    assert_eq!(heap.hdr.subbuf_size.load(Ordering::Relaxed), SUBBUF);
    assert_eq!(heap.hdr.num_subbuf.load(Ordering::Relaxed), NUM_SUBBUF);
    assert_eq!(heap.hdr.mode.load(Ordering::Relaxed), mode as u64);
    let reader = heap.reader();
    let view = View {
        reader: &reader,
        sb: Box::new(|i| (heap.sb[i].commit.load(Ordering::Acquire), heap.sb[i].delivered.load(Ordering::Acquire))),
        set_consumed: Box::new(|p| heap.ctrl.consumed.store(p, Ordering::Release)),
        clear_claims: Box::new(|| heap.claims.iter().for_each(|c| c.store(0, Ordering::Release))),
    };
    let found = check_ring(&view, 0, &outcomes);
    println!(
        "heap ring, {mode:?}: {} lies, writers {outcomes:?}, counters {:?}, {found} records readable at the end",
        lies.load(Ordering::Relaxed),
        reader.counters()
    );
}

#[test]
fn heap_ring_survives_a_lying_consumer_discard() {
    heap_variant(Mode::Discard, 0x1234_5678_9abc_def1);
}

#[test]
fn heap_ring_survives_a_lying_consumer_overwrite() {
    heap_variant(Mode::Overwrite, 0x0fed_cba9_8765_4321);
}

// ---------------------------------------------------------------------------
// Host, through the control memfd

const CANARY: u8 = 0xA5;

fn u64_at(f: &File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_le_bytes(b)
}

fn host_variant(mode: hvtrace_proto::Mode, seed: u64) {
    let (host, sock, _dir) = common::serve(&format!("hostile-{mode}"), ev::Events::EVENTS, 4);
    let mut c = Client::connect(&sock, Some(Duration::from_secs(20))).unwrap();
    c.simple(&Request::Create(ChannelConfig { subbuf_size: SUBBUF, num_subbuf: NUM_SUBBUF as u32, mode })).unwrap();
    let (reply, fds) = c.call(&Request::Map).unwrap();
    let Reply::Mapped(info) = reply else { panic!("{reply:?}") };
    let geo = Geometry::new(SUBBUF, NUM_SUBBUF).unwrap();
    let ctrl_file = File::from(fds[0].try_clone().unwrap());
    let ctrl = Arc::new(SharedMapping::map_rw(&fds[0], info.ctrl_len as usize).unwrap());
    // The control slots of CPUs without a ring are nobody's: a canary there
    // shows the host writes nothing outside its rings' words.
    let canary_from = 2 * geo.ctrl_len();
    let canary = vec![CANARY; (info.ctrl_len - canary_from) as usize];
    ctrl_file.write_all_at(&canary, canary_from).unwrap();
    let mut rings = Vec::new();
    for (k, r) in info.rings.iter().enumerate() {
        let data_fd = &fds[2 + 2 * k];
        let data = SharedMapping::map_ro(data_fd, r.data_len as usize).unwrap();
        let reader = MappedReader::attach(data, ctrl.clone(), r.ctrl_offset, geo.ctrl_len()).unwrap();
        rings.push((r.cpu, r.ctrl_offset, File::from(data_fd.try_clone().unwrap()), reader, r.data_len));
    }
    c.simple(&Request::Start).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, cpu) in [(0u32, 0u32), (1, 1), (2, 0)] {
        let (host, stop) = (host.clone(), stop.clone());
        writers.push((cpu, std::thread::spawn(move || write_until(&host.writer_for_cpu(cpu), w, &stop))));
    }
    let mut rng = Rng(seed);
    let mut lies = 0u64;
    let t = Instant::now();
    while t.elapsed() < HOSTILE_FOR {
        for (_, off, _, reader, _) in &rings {
            let w = reader.reader().counters().produced_bytes;
            ctrl_file.write_all_at(&hostile_consumed(&mut rng, w).to_le_bytes(), *off).unwrap();
            ctrl_file.write_all_at(&rng.next().to_le_bytes(), off + 8).unwrap();
            let i = rng.below(NUM_SUBBUF);
            let cl = hostile_claim(&mut rng, w, i);
            ctrl_file.write_all_at(&cl.to_le_bytes(), off + size_of::<RingCtrl>() as u64 + 8 * i).unwrap();
            // Unaligned and straddling garbage over the ring's words.
            let at = off + rng.below(geo.ctrl_len() - 3);
            ctrl_file.write_all_at(&rng.next().to_le_bytes()[..3], at).unwrap();
            lies += 1;
        }
        // Resizing the control memfd under the host's mapping is refused.
        if lies.is_multiple_of(1024) {
            assert!(ctrl_file.set_len(0).is_err(), "control memfd could be shrunk");
            assert!(ctrl_file.set_len(info.ctrl_len * 2).is_err(), "control memfd could be grown");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut per_cpu = std::collections::BTreeMap::<u32, Outcomes>::new();
    for (cpu, h) in writers {
        per_cpu.entry(cpu).or_default().add(&h.join().unwrap());
    }
    // A last lie, then stop: it must reach quiescence and succeed.
    for (_, off, ..) in &rings {
        ctrl_file.write_all_at(&u64::MAX.to_le_bytes(), *off).unwrap();
    }
    let t = Instant::now();
    c.simple(&Request::Stop).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "stop took {:?}", t.elapsed());
    let st = c.status().unwrap();
    assert_eq!(st.state, ChannelState::Stopped);

    let mut after = vec![0u8; canary.len()];
    ctrl_file.read_exact_at(&mut after, canary_from).unwrap();
    assert!(after == canary, "the host wrote into control slots of CPUs without a ring");

    for (cpu, off, data_file, reader, data_len) in &rings {
        let o = per_cpu[cpu];
        assert_eq!(data_file.metadata().unwrap().len(), *data_len, "data memfd size changed");
        // The producer-owned header is intact.
        assert_eq!(u64_at(data_file, std::mem::offset_of!(RingHeader, subbuf_size) as u64), SUBBUF);
        assert_eq!(u64_at(data_file, std::mem::offset_of!(RingHeader, num_subbuf) as u64), NUM_SUBBUF);
        let ring_status = st.rings.iter().find(|r| r.cpu == *cpu).unwrap();
        let rc = reader.reader().counters();
        assert_eq!(
            (ring_status.events_discarded, ring_status.discarded_full, ring_status.overwritten),
            (rc.discarded, rc.discarded_full, rc.overwritten),
            "status and the mapped header agree"
        );
        let sb_at = |i: usize| (size_of::<RingHeader>() + i * size_of::<SubbufState>()) as u64;
        let view = View {
            reader: reader.reader(),
            sb: Box::new(|i| {
                let base = sb_at(i);
                (
                    u64_at(data_file, base + std::mem::offset_of!(SubbufState, commit) as u64),
                    u64_at(data_file, base + std::mem::offset_of!(SubbufState, delivered) as u64),
                )
            }),
            set_consumed: Box::new(|p| ctrl_file.write_all_at(&p.to_le_bytes(), *off).unwrap()),
            clear_claims: Box::new(|| {
                let zeros = vec![0u8; 8 * NUM_SUBBUF as usize];
                ctrl_file.write_all_at(&zeros, off + size_of::<RingCtrl>() as u64).unwrap();
            }),
        };
        let found = check_ring(&view, *cpu, &o);
        println!("host, {mode}, cpu {cpu}: {lies} lies, writers {o:?}, counters {rc:?}, {found} records readable");
    }
    // The host still serves and cleans up.
    c.simple(&Request::Destroy).unwrap();
    c.simple(&Request::Unmap).unwrap();
    let st = c.status().unwrap();
    assert_eq!((st.state, st.refcount), (ChannelState::Destroyed, 0));
    drop(rings);
    host.shutdown();
}

#[test]
fn host_survives_a_lying_consumer_discard() {
    host_variant(hvtrace_proto::Mode::Discard, 0x5eed_0001);
}

#[test]
fn host_survives_a_lying_consumer_overwrite() {
    host_variant(hvtrace_proto::Mode::Overwrite, 0x5eed_0002);
}
