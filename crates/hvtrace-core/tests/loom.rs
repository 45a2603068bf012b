//! Model checking of the ring protocol with loom: every interleaving (up to a
//! preemption bound) of reserve / commit / deliver / consume / close / flush
//! on the smallest ring (2 sub-buffers of 4 KiB).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p hvtrace-core --test loom --release`
//! (`LOOM_MAX_PREEMPTIONS=N` overrides the bound each model picks).
//!
//! loom models the ring's atomic words; the sub-buffer bytes are plain memory
//! it does not see, so each model checks them by decoding every packet read
//! once its threads have joined: each record intact, each writer's records
//! in order, timestamps never backwards, and the loss accounting exact.
#![cfg(loom)]

use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering::SeqCst};

use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{EventSet, Geometry, Mode, Poll, RecordError, Ring, RingCounters, RingReader, RingSink, StreamId};
use loom::sync::Arc;
use loom::thread;

mod common;

hvtrace_core::events! {
    /// One event: who wrote it, its number, and a pad derived from both.
    mod ev ("loom") {
        /// `pad` is `pad_len(writer, n)` bytes of `pad_byte(writer, n, i)`.
        fn rec(writer: u32, n: u32, pad: &[u8]);
    }
}

fn pad_byte(writer: u32, n: u32, i: usize) -> u8 {
    (writer as u8).wrapping_mul(31).wrapping_add(n as u8).wrapping_add(i as u8) | 1
}

fn make_pad(writer: u32, n: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| pad_byte(writer, n, i)).collect()
}

/// Ring memory and the producer over it, shared by the model's threads.
///
/// loom threads must be `'static`, and `HeapRing::producer` resets the ring,
/// so the one `Ring` borrows the heap ring for `'static`; `Shared` is kept
/// alive (in an `Arc`) by every thread that uses the ring, and the heap ring
/// is dropped only after the ring, when the last `Arc` goes.
struct Shared {
    ring: Ring<'static>,
    mem: *mut HeapRing,
    /// A clock that ticks on every read: loom runs one thread at a time, so
    /// a plain (unmodelled) atomic counter is a global monotonic clock.
    clock: StdAtomicU64,
}

// SAFETY: `mem` is only dereferenced to build the ring and reader (shared
// references) and freed in `Drop`, when no thread holds the `Shared` anymore.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(mode: Mode) -> Arc<Shared> {
        let mem = Box::into_raw(Box::new(HeapRing::new(Geometry::new(4096, 2).unwrap())));
        // SAFETY: `mem` lives until `Drop`, after `ring` (and every reader,
        // which borrow `Shared`) are gone.
        let ring = unsafe { &*mem }.producer(mode, StreamId { uuid: [9; 16], cpu: 0 });
        Arc::new(Shared { ring, mem, clock: StdAtomicU64::new(1) })
    }

    fn reader(&self) -> RingReader<'_> {
        // SAFETY: see `new`.
        unsafe { &*self.mem }.reader()
    }

    fn now(&self) -> u64 {
        self.clock.fetch_add(1, SeqCst)
    }

    fn sink(&self) -> RingSink<'_, 'static, impl Fn() -> u64 + '_> {
        RingSink { ring: &self.ring, clock: move || self.now() }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: allocated by `Box::into_raw` in `new`; `ring` only borrows
        // it and is not used by anything anymore (we hold the last reference).
        drop(unsafe { Box::from_raw(self.mem) });
    }
}

/// How each `record` call ended, per writer.
#[derive(Default, Debug, Clone)]
struct Outcome {
    ok: Vec<u32>,
    lost: u64,
    closed: Vec<u32>,
}

/// Writer `w` records `pads.len()` events with those pad lengths.
fn write(sh: &Shared, w: u32, pads: &[usize]) -> Outcome {
    let sink = sh.sink();
    let mut out = Outcome::default();
    for (n, &len) in pads.iter().enumerate() {
        let n = n as u32;
        match ev::rec(&sink, w, n, &make_pad(w, n, len)) {
            Ok(()) => out.ok.push(n),
            Err(RecordError::Closed) => out.closed.push(n),
            Err(RecordError::TooBig) => panic!("model records must fit"),
            Err(_) => out.lost += 1,
        }
    }
    out
}

/// Reads one packet if one is ready; `Some(None)` for a copy the producer
/// overwrote meanwhile (thrown away).
fn read_one(r: &RingReader<'_>) -> Option<Option<Vec<u8>>> {
    match r.next_packet() {
        Poll::Empty => None,
        Poll::Ready(p) => {
            let mut copy = vec![0u8; r.geometry().subbuf_size as usize];
            r.copy_packet(&p, &mut copy);
            Some(r.release(&p).then_some(copy))
        }
    }
}

/// Reads everything ready (used after the writers joined, so it terminates).
fn drain(r: &RingReader<'_>, packets: &mut Vec<Vec<u8>>, torn: &mut u64) {
    while let Some(p) = read_one(r) {
        match p {
            Some(p) => packets.push(p),
            None => *torn += 1,
        }
    }
}

/// What the packets read contain.
#[derive(Debug, Default)]
struct Found {
    per_writer: Vec<Vec<u32>>,
    records: u64,
    last_discarded: u64,
}

/// Decodes packets in stream order and checks every record byte (the
/// shared checker, with this model's pads).
fn check(packets: &[Vec<u8>], pads: &[&[usize]]) -> Found {
    let c = common::check_packets_with(packets, pads.len(), ev::Events::EVENTS, |w, n, pad| {
        pad.len() == pads[w as usize][n as usize] && pad.iter().enumerate().all(|(i, &b)| b == pad_byte(w, n as u32, i))
    });
    Found {
        per_writer: c.per_writer.iter().map(|s| s.iter().map(|&n| n as u32).collect()).collect(),
        records: c.records,
        last_discarded: c.last_discarded,
    }
}

fn builder(bound: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        b.preemption_bound = Some(bound);
    }
    b
}

fn check_counters(c: &RingCounters) {
    assert_eq!(c.discarded, c.discarded_full + c.discarded_busy + c.discarded_too_big + c.overwritten, "{c:?}");
}

/// Pad lengths: a 2500-byte pad fills a packet alone (84 + 2 x 2516 > 4096),
/// so three records need three packets and the 2-sub-buffer ring laps: the
/// third packet reopens sub-buffer 0, which the consumer may or may not have
/// read (discard: `Full`; overwrite: overwritten or torn copy) and whose
/// writer may still be inside its record (`Busy`).
const PADS_A: &[usize] = &[2500, 2500];
const PADS_B: &[usize] = &[2500];

/// Outcomes seen over all executions of a model, to prove it is not vacuous.
#[derive(Default)]
struct Coverage(std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl Coverage {
    fn hit(&self, what: &'static str, cond: bool) {
        if cond {
            *self.0.lock().unwrap().entry(what).or_default() += 1;
        }
    }
    fn require(&self, whats: &[&'static str]) {
        let m = self.0.lock().unwrap();
        eprintln!("coverage: {m:?}");
        for w in whats {
            assert!(m.contains_key(w), "no execution reached `{w}`: the model is too small");
        }
    }
}

/// Two writers and a concurrent consumer; after they join: close, quiescent,
/// flush, drain. Returns (outcomes, packets read, copies thrown away, whether
/// the final flush delivered a packet).
fn two_writers_and_consumer(sh: &Arc<Shared>, polls: usize) -> (Vec<Outcome>, Vec<Vec<u8>>, u64, bool) {
    let writers: Vec<_> = [PADS_A, PADS_B]
        .into_iter()
        .enumerate()
        .map(|(w, pads)| {
            let sh = sh.clone();
            thread::spawn(move || write(&sh, w as u32, pads))
        })
        .collect();
    let consumer = {
        let sh = sh.clone();
        thread::spawn(move || {
            let r = sh.reader();
            let (mut packets, mut torn) = (Vec::new(), 0);
            for _ in 0..polls {
                match read_one(&r) {
                    Some(Some(p)) => packets.push(p),
                    Some(None) => torn += 1,
                    None => thread::yield_now(),
                }
            }
            (packets, torn)
        })
    };
    let outcomes: Vec<Outcome> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    let (mut packets, mut torn) = consumer.join().unwrap();
    sh.ring.close();
    assert!(sh.ring.is_quiescent(), "all writers joined, yet a record is uncommitted");
    let flushed = sh.ring.flush(&|| sh.now());
    assert!(sh.ring.is_quiescent());
    drain(&sh.reader(), &mut packets, &mut torn);
    (outcomes, packets, torn, flushed)
}

/// (a) Discard mode: nothing read is damaged, nothing written is lost
/// unaccounted: every `Ok` record is read, every loss is counted, and the
/// packets' `events_discarded` never exceeds the count. It equals it when the
/// final flush closed a packet: losses happen only while `write` waits at a
/// sub-buffer boundary, so a packet opened later carries them. (Losses after
/// the last packet opened appear in no packet, only in the ring counters.)
#[test]
fn discard_two_writers_and_consumer() {
    let cov = std::sync::Arc::new(Coverage::default());
    let cov2 = cov.clone();
    builder(2).check(move || {
        let sh = Shared::new(Mode::Discard);
        let (outcomes, packets, torn, flushed) = two_writers_and_consumer(&sh, 1);
        assert_eq!(torn, 0, "discard mode never takes a packet back");
        let f = check(&packets, &[PADS_A, PADS_B]);
        let c = sh.ring.counters();
        check_counters(&c);
        let emitted = (PADS_A.len() + PADS_B.len()) as u64;
        assert_eq!(f.records + c.discarded, emitted, "recorded + discarded != emitted ({c:?})");
        for (w, o) in outcomes.iter().enumerate() {
            assert_eq!(f.per_writer[w], o.ok, "writer {w}: the records read are exactly those accepted");
        }
        assert_eq!(c.discarded, outcomes.iter().map(|o| o.lost).sum::<u64>());
        assert_eq!(c.overwritten, 0);
        assert!(f.last_discarded <= c.discarded);
        if flushed {
            assert_eq!(f.last_discarded, c.discarded, "a packet opened after the last loss carries the final count");
        }
        cov2.hit("lost: full", c.discarded_full > 0);
        cov2.hit("lost: busy", c.discarded_busy > 0);
        cov2.hit("nothing lost", c.discarded == 0);
        cov2.hit("loss not in any packet", f.last_discarded < c.discarded);
    });
    cov.require(&["lost: full", "lost: busy", "nothing lost", "loss not in any packet"]);
}

/// (b) Overwrite mode: a copy is kept only when `release` says it is intact,
/// and records read + records lost (refused or overwritten) == emitted.
#[test]
fn overwrite_two_writers_and_consumer() {
    let cov = std::sync::Arc::new(Coverage::default());
    let cov2 = cov.clone();
    builder(2).check(move || {
        let sh = Shared::new(Mode::Overwrite);
        let (outcomes, packets, torn, _) = two_writers_and_consumer(&sh, 1);
        let f = check(&packets, &[PADS_A, PADS_B]);
        let c = sh.ring.counters();
        check_counters(&c);
        let emitted = (PADS_A.len() + PADS_B.len()) as u64;
        assert_eq!(f.records + c.discarded, emitted, "recorded + discarded != emitted ({c:?})");
        let refused: u64 = outcomes.iter().map(|o| o.lost).sum();
        assert_eq!(c.discarded - c.overwritten, refused);
        for (w, o) in outcomes.iter().enumerate() {
            assert!(f.per_writer[w].iter().all(|n| o.ok.contains(n)), "writer {w}: read a record never accepted");
        }
        cov2.hit("torn copy thrown away", torn > 0);
        cov2.hit("overwritten", c.overwritten > 0);
        cov2.hit("lost: busy", c.discarded_busy > 0);
        cov2.hit("all read", c.discarded == 0);
    });
    cov.require(&["torn copy thrown away", "overwritten", "lost: busy", "all read"]);
}

/// (c) A writer racing `close` → wait for `is_quiescent` → `flush`: once
/// quiescent, no record is reserved any more, every reserved byte was
/// committed, the flush delivers the partial packet, and the records read
/// are exactly the ones `record` accepted.
#[test]
fn close_quiesce_flush_races_a_writer() {
    const PADS: &[usize] = &[1500, 2500, 200];
    let cov = std::sync::Arc::new(Coverage::default());
    let cov2 = cov.clone();
    builder(3).check(move || {
        let sh = Shared::new(Mode::Discard);
        let writer = {
            let sh = sh.clone();
            thread::spawn(move || write(&sh, 0, PADS))
        };
        let stopper = {
            let sh = sh.clone();
            thread::spawn(move || {
                sh.ring.close();
                let mut waited = false;
                while !sh.ring.is_quiescent() {
                    waited = true;
                    thread::yield_now();
                }
                let at_quiescence = sh.ring.counters();
                let delivered = sh.ring.flush(&|| sh.now());
                (at_quiescence, delivered, waited)
            })
        };
        let o = writer.join().unwrap();
        let (q, delivered, waited) = stopper.join().unwrap();
        let c = sh.ring.counters();
        check_counters(&c);
        assert!(c.closed && sh.ring.is_quiescent());
        // Nothing reserved after quiescence; the flush only moved `write`
        // to the end of the packet it closed.
        let sbs = 4096;
        assert_eq!(c.produced_bytes, q.produced_bytes.div_ceil(sbs) * sbs, "write moved after quiescence");
        assert_eq!(delivered, q.produced_bytes % sbs != 0, "flush of a quiescent ring delivers its partial packet");
        let (mut packets, mut torn) = (Vec::new(), 0);
        drain(&sh.reader(), &mut packets, &mut torn);
        let f = check(&packets, &[PADS]);
        assert_eq!(f.per_writer[0], o.ok, "read exactly the accepted records");
        assert_eq!(c.discarded, o.lost);
        assert_eq!(o.ok.len() + o.closed.len() + o.lost as usize, PADS.len());
        // Once refused, every later record is refused too.
        assert!(o.closed.iter().all(|n| o.ok.iter().all(|k| k < n)), "record accepted after one was refused: {o:?}");
        assert_eq!(c.produced_bytes, c.delivered_subbufs * sbs, "every reserved packet delivered");
        cov2.hit("waited for a writer inside a record", waited);
        cov2.hit("flush delivered", delivered);
        cov2.hit("closed before any record", o.ok.is_empty());
        cov2.hit("closed between records", !o.ok.is_empty() && !o.closed.is_empty());
        cov2.hit("closed after all records", o.closed.is_empty());
    });
    cov.require(&[
        "waited for a writer inside a record",
        "flush delivered",
        "closed before any record",
        "closed between records",
        "closed after all records",
    ]);
}

/// No loss without a cause: two writers whose records fit in the ring's two
/// sub-buffers without reusing one (no consumer needed), so no record may be
/// dropped as "full" or "busy", whatever the interleaving.
#[test]
fn no_spurious_loss_when_the_ring_has_room() {
    const PADS_SMALL: &[usize] = &[100];
    const PADS_BIG: &[usize] = &[2500, 2500];
    builder(2).check(|| {
        let sh = Shared::new(Mode::Discard);
        let a = {
            let sh = sh.clone();
            thread::spawn(move || write(&sh, 0, PADS_SMALL))
        };
        let b = {
            let sh = sh.clone();
            thread::spawn(move || write(&sh, 1, PADS_BIG))
        };
        let (oa, ob) = (a.join().unwrap(), b.join().unwrap());
        let c = sh.ring.counters();
        assert_eq!(c.discarded, 0, "lost a record although the ring had room: {c:?} {oa:?} {ob:?}");
        sh.ring.flush(&|| sh.now());
        let (mut packets, mut torn) = (Vec::new(), 0);
        drain(&sh.reader(), &mut packets, &mut torn);
        let f = check(&packets, &[PADS_SMALL, PADS_BIG]);
        assert_eq!(f.records, 3);
    });
}
