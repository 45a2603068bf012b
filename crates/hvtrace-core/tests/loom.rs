//! Model checking of the ring protocol with loom: every interleaving (up to a
//! preemption bound) of reserve / commit / deliver / consume / close / flush
//! on the smallest ring (2 sub-buffers of 4 KiB).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p hvtrace-core --test loom --release`
//! (`LOOM_MAX_PREEMPTIONS=N` overrides the bound each model picks).
//!
//! loom models the ring's atomic words; the sub-buffer bytes are plain memory
//! it does not see (a load there always returns the newest store). So every
//! piece of data a writer stores (record, opener fields, closer fields) has
//! a *witness*, a modelled atomic holding its hash, stored `Relaxed` after
//! the bytes (`hvtrace_core::Witness`); the consumer loads them right after
//! its copy, and each packet it keeps is checked against them: a missing
//! Release/Acquire on the protocol's words lets loom show a stale witness,
//! and the model fails (the table in `docs/ring.md` lists which). Then each
//! model decodes every packet read once its threads have joined: each record
//! intact, each writer's records in order, timestamps never backwards, and
//! the loss accounting exact against what the writers were told.
//!
//! The owned-ring models (`owner_*`) check the single-writer fast path
//! against a thread that takes the ring back (revoke, heavy barrier, wait
//! while the owner is busy). loom cannot model `membarrier`; the revoker's
//! `fence(SeqCst)` stands for it, and the owner's light fence is a `SeqCst`
//! fence under loom, which gives the same store-buffering guarantee.
#![cfg(loom)]

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering::SeqCst};

use hvtrace_core::ctf::packet;
use hvtrace_core::decode::records;
use hvtrace_core::layout::claim;
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{
    Encoder, EventSet, Geometry, Mode, OwnerSink, Poll, RecordError, Ring, RingCounters, RingReader, RingSink, Sink,
    StreamId, Witness,
};
use loom::sync::atomic::fence;
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

    /// A ring whose one writer records through [`Ring::owner`].
    fn new_owned(mode: Mode) -> Arc<Shared> {
        let sh = Shared::new(mode);
        // SAFETY: no thread has seen the ring yet.
        unsafe { sh.ring.make_owned() };
        sh
    }

    /// The owner's busy flag, read without a modelled access. Only for the
    /// owner's own thread: it is the only thread that stores the flag, so
    /// its last store is the value (loom checks there is no race).
    fn owner_busy_unsync(&self) -> bool {
        // SAFETY: see `new`; the caller is the only thread storing the flag.
        unsafe { (*self.mem).hdr.owner_busy.unsync_load() != 0 }
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
/// overwrote meanwhile (thrown away). A copy kept is checked against the
/// witnesses loaded with it.
fn read_one(r: &RingReader<'_>) -> Option<Option<Vec<u8>>> {
    match r.next_packet() {
        Poll::Empty => None,
        Poll::Ready(p) => {
            let mut copy = vec![0u8; r.geometry().subbuf_size as usize];
            r.copy_packet(&p, &mut copy);
            let seen = r.witnessed(&p);
            let kept = r.release(&p).then_some(copy);
            if let Some(copy) = &kept {
                check_witnesses(p.pos, copy, &seen);
            }
            Some(kept)
        }
    }
}

/// Every piece of a packet kept (opener fields, closer fields, each record)
/// hashes to the witness the consumer loaded with its copy: the writer's
/// stores were visible to it, as the protocol's orderings must make them.
fn check_witnesses(pos: u64, copy: &[u8], seen: &[(u64, u64)]) {
    let at = |o: usize| seen.iter().find(|w| w.0 == o as u64).map_or(0, |w| w.1);
    let piece = |what: &str, o: usize, end: usize| {
        assert_eq!(
            at(o),
            Witness::hash(&copy[o..end]),
            "packet at {pos}: {what} at offset {o} kept although its writer's stores were not visible to the consumer"
        );
    };
    piece("opener fields", 0, packet::OPENER_FIELDS.end);
    piece("closer fields", packet::CLOSER_FIELDS.start, packet::CLOSER_FIELDS.end);
    let (info, recs) = records(copy, ev::Events::EVENTS).expect("packet header");
    let starts: Vec<usize> = recs.map(|r| r.expect("record decodes").offset).collect();
    for (i, &o) in starts.iter().enumerate() {
        piece("record", o, starts.get(i + 1).copied().unwrap_or(info.content_len));
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
    // Each witness is a modelled atomic (a branch point): longer executions
    // than loom's default of 1000 branches, though none spins unboundedly.
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        b.max_branches = 4000;
    }
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        b.preemption_bound = Some(bound);
    }
    b
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
    writers_and_consumer(sh, &[PADS_A, PADS_B], polls)
}

/// [`two_writers_and_consumer`] with writer `w` recording `pads[w]`.
fn writers_and_consumer(
    sh: &Arc<Shared>,
    pads: &[&'static [usize]],
    polls: usize,
) -> (Vec<Outcome>, Vec<Vec<u8>>, u64, bool) {
    let writers: Vec<_> = pads
        .iter()
        .copied()
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
        let emitted = (PADS_A.len() + PADS_B.len()) as u64;
        assert_eq!(f.records + c.discarded, emitted, "recorded + discarded != emitted ({c:?})");
        let refused: u64 = outcomes.iter().map(|o| o.lost).sum();
        let accepted: u64 = outcomes.iter().map(|o| o.ok.len() as u64).sum();
        assert_eq!(c.events_discarded(), refused, "every refusal counted, nothing else");
        assert_eq!(c.overwritten, accepted - f.records, "accepted but not read == overwritten ({c:?})");
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
        // Once refused, every later record is refused too.
        assert!(o.closed.iter().all(|n| o.ok.iter().all(|k| k < n)), "record accepted after one was refused: {o:?}");
        assert_eq!(c.produced_bytes, c.delivered_subbufs * sbs, "every reserved packet delivered");
        cov2.hit("waited for a writer inside a record", waited);
        cov2.hit("flush delivered", delivered);
        close_coverage(&cov2, &o.ok, &o.closed);
    });
    cov.require(&[&["waited for a writer inside a record", "flush delivered"][..], CLOSE_POINTS].concat());
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

impl Shared {
    /// The claim words, as the producer's thread sees them now.
    fn claims(&self) -> Vec<u64> {
        // SAFETY: see `new`.
        unsafe { &*self.mem }.claims.iter().map(|c| c.load(SeqCst)).collect()
    }
}

/// (f) Overwrite mode, one writer lapping the ring (five packets on two
/// sub-buffers: three laps of sub-buffer 0) and a consumer polling between laps: a
/// consumer stalled anywhere in `next_packet` or its copy while the writer
/// laps its sub-buffer keeps no packet being rewritten (issue 11, defect 1),
/// and every record is read or counted overwritten, once.
#[test]
fn overwrite_three_laps_consumer_polls_between() {
    const PADS: &[usize] = &[2500; 5];
    let cov = std::sync::Arc::new(Coverage::default());
    let cov2 = cov.clone();
    builder(1).check(move || {
        let sh = Shared::new(Mode::Overwrite);
        let (outcomes, packets, torn, _) = writers_and_consumer(&sh, &[PADS], 2);
        let f = check(&packets, &[PADS]);
        let c = sh.ring.counters();
        assert_eq!(outcomes[0].ok.len(), PADS.len(), "overwrite mode never refuses a lone writer");
        assert_eq!(c.events_discarded(), 0);
        assert_eq!(c.overwritten, PADS.len() as u64 - f.records, "accepted but not read == overwritten ({c:?})");
        let seqs: Vec<u64> = packets.iter().map(|p| records(p, ev::Events::EVENTS).unwrap().0.seq).collect();
        cov2.hit("torn copy thrown away", torn > 0);
        cov2.hit(
            "read a packet of lap 1 or later before the writer finished",
            seqs.iter().any(|&s| (2..4).contains(&s)),
        );
        cov2.hit("read nothing while writing", packets.len() <= 2 && torn == 0);
    });
    cov.require(&["torn copy thrown away", "read a packet of lap 1 or later before the writer finished"]);
}

/// (g) Two writers closing packets concurrently (each record fills a packet,
/// so each writer's second record closes one), refused `Busy` or `Full`:
/// `events_discarded` never decreases (`check` asserts it) and the records
/// read are exactly those accepted. NB: with the snapshot moved back after
/// the closing CAS (issue 11, defect 3) this model still passed (mutation
/// table in docs/ring.md); `interleave.rs` pins that defect.
#[test]
fn two_writers_closing_concurrently() {
    const PADS: &[usize] = &[2500, 2500];
    let cov = std::sync::Arc::new(Coverage::default());
    let cov2 = cov.clone();
    builder(2).check(move || {
        let sh = Shared::new(Mode::Discard);
        let (outcomes, packets, torn, _) = writers_and_consumer(&sh, &[PADS, PADS], 0);
        assert_eq!(torn, 0);
        let f = check(&packets, &[PADS, PADS]);
        let c = sh.ring.counters();
        for (w, o) in outcomes.iter().enumerate() {
            assert_eq!(f.per_writer[w], o.ok, "writer {w}: the records read are exactly those accepted");
        }
        assert_eq!(c.discarded, outcomes.iter().map(|o| o.lost).sum::<u64>());
        // Busy: a writer found the sub-buffer's previous lap undelivered,
        // i.e. the other writer stalled inside its record or its close.
        cov2.hit("lost: busy", c.discarded_busy > 0);
        cov2.hit("lost: full", c.discarded_full > 0);
    });
    cov.require(&["lost: busy", "lost: full"]);
}

/// (h) Overwrite mode, a writer lapping the ring races a stop: close, wait
/// for quiescence, flush. Once quiescent, nothing the writer does changes
/// the counters or the claim words (issue 11, defect 4), and every record
/// accepted is read or counted overwritten.
#[test]
fn overwrite_stop_quiesce_flush_races_a_lapping_writer() {
    const PADS: &[usize] = &[2500; 4];
    let cov = std::sync::Arc::new(Coverage::default());
    let cov2 = cov.clone();
    builder(2).check(move || {
        let sh = Shared::new(Mode::Overwrite);
        let writer = {
            let sh = sh.clone();
            thread::spawn(move || write(&sh, 0, PADS))
        };
        let stopper = {
            let sh = sh.clone();
            thread::spawn(move || {
                sh.ring.close();
                while !sh.ring.is_quiescent() {
                    thread::yield_now();
                }
                let q = (sh.ring.counters(), sh.claims());
                sh.ring.flush(&|| sh.now());
                q
            })
        };
        let o = writer.join().unwrap();
        let (q, claims) = stopper.join().unwrap();
        let c = sh.ring.counters();
        let sbs = 4096;
        assert_eq!(
            RingCounters {
                produced_bytes: q.produced_bytes.div_ceil(sbs) * sbs,
                delivered_subbufs: c.delivered_subbufs,
                ..q
            },
            c,
            "the ring changed after quiescence"
        );
        assert_eq!(sh.claims(), claims, "a claim word changed after quiescence");
        let (mut packets, mut torn) = (Vec::new(), 0);
        drain(&sh.reader(), &mut packets, &mut torn);
        assert_eq!(torn, 0, "nothing rewrites a stopped ring");
        let f = check(&packets, &[PADS]);
        assert_eq!(c.overwritten, o.ok.len() as u64 - f.records, "accepted but not read == overwritten ({c:?})");
        assert!(o.closed.iter().all(|n| o.ok.iter().all(|k| k < n)), "accepted after a refusal: {o:?}");
        cov2.hit("stopped after a lap", o.ok.len() > 2);
        cov2.hit("overwritten", c.overwritten > 0);
        close_coverage(&cov2, &o.ok, &o.closed);
    });
    cov.require(&[&["stopped after a lap", "overwritten"][..], CLOSE_POINTS].concat());
}

/// (i) A hostile consumer rewriting its claim word and its consumed
/// position while a writer laps the ring in overwrite mode: the writer is
/// never refused and always finishes (loom bounds every execution's
/// length), what an honest read then keeps is intact, and the producer's
/// own counters stay exact (issue 11, defect 6).
#[test]
fn overwrite_hostile_consumer_flipping_its_words() {
    const PADS: &[usize] = &[2500; 4];
    builder(2).check(|| {
        let sh = Shared::new(Mode::Overwrite);
        let writer = {
            let sh = sh.clone();
            thread::spawn(move || write(&sh, 0, PADS))
        };
        let hostile = {
            let sh = sh.clone();
            thread::spawn(move || {
                // SAFETY: see `Shared::new`.
                let mem = unsafe { &*sh.mem };
                for lie in [claim::consumer(0), claim::producer(1), 12345] {
                    mem.claims[0].store(lie, SeqCst);
                    mem.ctrl.consumed.store(lie, SeqCst);
                }
            })
        };
        let o = writer.join().unwrap();
        hostile.join().unwrap();
        assert_eq!((o.ok.len(), o.lost), (PADS.len(), 0), "the writer was refused: {o:?}");
        let c = sh.ring.counters();
        assert_eq!(c.events_discarded(), 0, "{c:?}");
        assert!(c.overwritten <= PADS.len() as u64, "{c:?}");
        sh.ring.close();
        assert!(sh.ring.is_quiescent());
        sh.ring.flush(&|| sh.now());
        // SAFETY: see `Shared::new`.
        unsafe { &*sh.mem }.ctrl.consumed.store(0, SeqCst);
        let (mut packets, mut torn) = (Vec::new(), 0);
        drain(&sh.reader(), &mut packets, &mut torn);
        check(&packets, &[PADS]);
    });
}

/// The owner's pads: the first record opens packet 0 (shared protocol), the
/// second fits behind it (fast path), the third does not fit (closes packet
/// 0 and opens packet 1: shared), the fourth fits behind it (fast path). A
/// flush moves every later record one packet on, so the last one may need
/// sub-buffer 0 again: full (discard) or overwritten (overwrite mode).
const PADS_OWNER: &[usize] = &[1000, 1000, 2500, 500];

/// How the owner's records went.
#[derive(Default, Debug)]
struct OwnerRun {
    out: Outcome,
    /// Per record: it found the ring revoked (never got past the owner's
    /// `excl` check, so never read the clock with `owner_busy` set).
    saw_revoked: Vec<bool>,
    /// Fast-path records, as clock ticks: from the clock read (after the
    /// `excl` check) to the end of the payload (before the commit). Each
    /// lies outside every revoker's critical section.
    fast: Vec<(u64, u64)>,
}

/// A sink that notes the clock tick at which each record's payload was written.
struct NoteFill<'s, S> {
    inner: S,
    sh: &'s Shared,
    filled: Cell<u64>,
}

impl<S: Sink> Sink for NoteFill<'_, S> {
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        self.inner.record(id, len, |e| {
            fill(e);
            self.filled.set(self.sh.now());
        })
    }
}

/// The owner records `pads` through [`Ring::owner`]. Its clock also notes
/// whether `owner_busy` was set when it was read: the fast path reads the
/// clock with the flag set (after its `excl` check), the shared protocol
/// with it clear, so a record took the fast path when it succeeded and its
/// last clock read saw the flag set.
fn write_owned(sh: &Shared, w: u32, pads: &[usize]) -> OwnerRun {
    // SAFETY: this thread is the ring's only owner.
    let owner = unsafe { sh.ring.owner() };
    let log = RefCell::new(Vec::new());
    let clock = || {
        let t = sh.now();
        log.borrow_mut().push((t, sh.owner_busy_unsync()));
        t
    };
    let sink = NoteFill { inner: OwnerSink { owner: &owner, clock }, sh, filled: Cell::new(0) };
    let mut run = OwnerRun::default();
    for (n, &len) in pads.iter().enumerate() {
        let n = n as u32;
        let from = log.borrow().len();
        let res = ev::rec(&sink, w, n, &make_pad(w, n, len));
        let calls = log.borrow()[from..].to_vec();
        run.saw_revoked.push(!calls.iter().any(|&(_, busy)| busy));
        if let (Ok(()), Some(&(t, true))) = (res, calls.last()) {
            run.fast.push((t, sink.filled.get()));
        }
        match res {
            Ok(()) => run.out.ok.push(n),
            Err(RecordError::Closed) => run.out.closed.push(n),
            Err(RecordError::TooBig) => panic!("model records must fit"),
            Err(_) => run.out.lost += 1,
        }
    }
    run
}

/// What the revoking thread saw.
#[derive(Debug)]
struct Revoker {
    /// It found `owner_busy` set (the owner past its store of the flag,
    /// not yet done with the record) and waited.
    waited: bool,
    /// Clock ticks bounding its critical section: from the end of the wait
    /// to `restore_owner` (`u64::MAX` for a stop, which never restores).
    section: (u64, u64),
    /// Its flush delivered a packet.
    flushed: bool,
    /// Counters at quiescence (stop only).
    at_quiescence: Option<RingCounters>,
}

/// Takes the ring from its owner: REVOKED, the heavy barrier (modelled as a
/// `SeqCst` fence), then wait while the owner is on its fast path.
fn revoke(sh: &Shared) -> bool {
    assert!(sh.ring.revoke_owner(), "the ring is owned");
    fence(SeqCst);
    let mut waited = false;
    while sh.ring.owner_busy() {
        waited = true;
        thread::yield_now();
    }
    waited
}

/// Flush while running (revoke, flush, restore), or stop (revoke, close,
/// wait for quiescence, flush).
fn control(sh: &Shared, stop: bool) -> Revoker {
    let waited = revoke(sh);
    let begin = sh.now();
    if !stop {
        let flushed = sh.ring.flush(&|| sh.now());
        let end = sh.now();
        sh.ring.restore_owner();
        return Revoker { waited, section: (begin, end), flushed, at_quiescence: None };
    }
    sh.ring.close();
    while !sh.ring.is_quiescent() {
        thread::yield_now();
    }
    let q = sh.ring.counters();
    let flushed = sh.ring.flush(&|| sh.now());
    Revoker { waited, section: (begin, u64::MAX), flushed, at_quiescence: Some(q) }
}

/// The owner, a controlling thread and a consumer (`polls` polls). After
/// they join: stop (if the controller did not), drain. Returns what the
/// owner and the controller saw, the packets read and the copies thrown away.
fn owner_control_consumer(sh: &Arc<Shared>, stop: bool, polls: usize) -> (OwnerRun, Revoker, Vec<Vec<u8>>, u64) {
    let owner = {
        let sh = sh.clone();
        thread::spawn(move || write_owned(&sh, 0, PADS_OWNER))
    };
    let ctl = {
        let sh = sh.clone();
        thread::spawn(move || control(&sh, stop))
    };
    let (mut packets, mut torn) = (Vec::new(), 0);
    {
        let r = sh.reader();
        for _ in 0..polls {
            match read_one(&r) {
                Some(Some(p)) => packets.push(p),
                Some(None) => torn += 1,
                None => thread::yield_now(),
            }
        }
    }
    let run = owner.join().unwrap();
    let rv = ctl.join().unwrap();
    // Mutual exclusion: no fast-path record overlaps the revoker's critical
    // section (loom runs one thread at a time, so clock ticks order events).
    let (begin, end) = rv.section;
    assert!(
        run.fast.iter().all(|&(a, b)| b < begin || a > end),
        "the owner was on its fast path ({:?}) inside the revoker's critical section {begin}..{end}",
        run.fast
    );
    if !stop {
        revoke(sh);
        sh.ring.close();
        assert!(sh.ring.is_quiescent(), "the owner joined, yet a record is uncommitted");
        sh.ring.flush(&|| sh.now());
    }
    assert!(sh.ring.is_quiescent());
    drain(&sh.reader(), &mut packets, &mut torn);
    (run, rv, packets, torn)
}

/// Checks common to the owner models; returns the records found.
fn check_owner_run(sh: &Shared, run: &OwnerRun, rv: &Revoker, packets: &[Vec<u8>]) -> Found {
    let f = check(packets, &[PADS_OWNER]);
    let c = sh.ring.counters();
    let o = &run.out;
    let emitted = (o.ok.len() as u64) + o.lost;
    assert_eq!(f.records + c.discarded, emitted, "recorded + discarded != emitted ({c:?}, {run:?})");
    assert_eq!(c.overwritten, o.ok.len() as u64 - f.records, "accepted but not read == overwritten ({c:?})");
    assert!(f.per_writer[0].iter().all(|n| o.ok.contains(n)), "read a record never accepted: {run:?}");
    match sh.ring.mode() {
        Mode::Discard => {
            assert_eq!(f.per_writer[0], o.ok, "the records read are exactly those accepted");
            assert_eq!((c.discarded, c.overwritten), (o.lost, 0));
        }
        Mode::Overwrite => assert_eq!(c.events_discarded(), o.lost),
    }
    if let Some(q) = rv.at_quiescence {
        // Stop: nothing reserved after quiescence, the flush only moved
        // `write` to the end of the packet it closed (a fast-path store of
        // `write` racing the stop would have cleared CLOSED or moved it).
        let sbs = 4096;
        assert!(c.closed);
        assert_eq!(c.produced_bytes, q.produced_bytes.div_ceil(sbs) * sbs, "write moved after quiescence");
        assert_eq!(rv.flushed, q.produced_bytes % sbs != 0, "flush of a quiescent ring delivers its partial packet");
        assert_eq!(c.produced_bytes, c.delivered_subbufs * sbs, "every reserved packet delivered");
        assert!(o.closed.iter().all(|n| o.ok.iter().all(|k| k < n)), "accepted after a refusal: {run:?}");
    } else {
        assert!(o.closed.is_empty(), "a flush never closes the ring: {run:?}");
    }
    f
}

/// Records coverage common to the owner models.
/// Where a stop's close fell among one writer's records (`ok`: accepted,
/// `closed`: refused as closed).
const CLOSE_POINTS: &[&str] = &["closed before any record", "closed between records", "closed after all records"];

fn close_coverage<T>(cov: &Coverage, ok: &[T], closed: &[T]) {
    cov.hit(CLOSE_POINTS[0], ok.is_empty());
    cov.hit(CLOSE_POINTS[1], !ok.is_empty() && !closed.is_empty());
    cov.hit(CLOSE_POINTS[2], closed.is_empty());
}

fn owner_coverage(cov: &Coverage, run: &OwnerRun, rv: &Revoker) {
    cov.hit("owner took the fast path", !run.fast.is_empty());
    cov.hit("owner found the ring revoked", run.saw_revoked.iter().any(|&r| r));
    cov.hit("revoker waited for a busy owner", rv.waited);
    cov.hit("fast path after the revoker's section", run.fast.iter().any(|&(a, _)| a > rv.section.1));
    cov.hit("revoker's flush delivered", rv.flushed);
}

/// (d) Owned ring, flush while running: the owner's fast path never
/// overlaps the revoker's flush, the flush and the owner's shared-protocol
/// records (packet boundaries, revoked periods) interleave safely, and the
/// owner gets its fast path back after `restore_owner`.
fn owner_flush_model(mode: Mode, bound: usize, extra: &'static [&'static str]) {
    let cov = std::sync::Arc::new(Coverage::default());
    let cov2 = cov.clone();
    builder(bound).check(move || {
        let sh = Shared::new_owned(mode);
        let (run, rv, packets, torn) = owner_control_consumer(&sh, false, 1);
        if mode == Mode::Discard {
            assert_eq!(torn, 0);
        }
        check_owner_run(&sh, &run, &rv, &packets);
        let c = sh.ring.counters();
        owner_coverage(&cov2, &run, &rv);
        cov2.hit("lost: full", c.discarded_full > 0);
        cov2.hit("overwritten", c.overwritten > 0);
        cov2.hit("nothing lost", c.discarded == 0);
    });
    let mut want = vec![
        "owner took the fast path",
        "owner found the ring revoked",
        "revoker waited for a busy owner",
        "fast path after the revoker's section",
        "revoker's flush delivered",
        "nothing lost",
    ];
    want.extend_from_slice(extra);
    cov.require(&want);
}

#[test]
fn owner_flush_discard() {
    owner_flush_model(Mode::Discard, 2, &["lost: full"]);
}

#[test]
fn owner_flush_overwrite() {
    owner_flush_model(Mode::Overwrite, 2, &["overwritten"]);
}

/// (e) Owned ring, stop: revoke, heavy barrier, wait for the owner, close,
/// wait for quiescence, flush. Once quiescent nothing more is reserved, and
/// the owner's records are exactly those read.
fn owner_stop_model(mode: Mode, bound: usize) {
    let cov = std::sync::Arc::new(Coverage::default());
    let cov2 = cov.clone();
    builder(bound).check(move || {
        let sh = Shared::new_owned(mode);
        let (run, rv, packets, _) = owner_control_consumer(&sh, true, 1);
        check_owner_run(&sh, &run, &rv, &packets);
        owner_coverage(&cov2, &run, &rv);
        let o = &run.out;
        close_coverage(&cov2, &o.ok, &o.closed);
    });
    cov.require(
        &[
            &[
                "owner took the fast path",
                "owner found the ring revoked",
                "revoker waited for a busy owner",
                "revoker's flush delivered",
            ][..],
            CLOSE_POINTS,
        ]
        .concat(),
    );
}

#[test]
fn owner_stop_discard() {
    owner_stop_model(Mode::Discard, 2);
}

#[test]
fn owner_stop_overwrite() {
    owner_stop_model(Mode::Overwrite, 2);
}

// ===========================================================================
// Channel stop with a busy owner, then flush (issue 11, defect 2)
// ===========================================================================
//
// The host's `stop` waits a bounded time for an exclusive owner to leave its
// fast-path record. An owner still busy then (a stalled vCPU thread) must
// not have its ring closed or flushed under it: its plain stores would
// clear `CLOSED`, move `write` back, or complete the lap with a commit that
// never delivers. So the stop only marks the ring closing
// (`Ring::defer_close`) and holds it; the consumer's later flush closes and
// flushes it if the owner is seen out of its record (after a fresh barrier),
// and the owner's drop does it otherwise. These are the per-ring steps of
// `Channel::stop`, `Channel::flush` (`close_held`) and
// `Channel::release_owner`; the bounded wait is one look at `owner_busy`,
// so loom reaches both outcomes.

/// The first record opens packet 0 (shared protocol); the next two fit
/// behind it (fast path): the stop can find the owner inside a fast-path
/// record, before or after its store of `write`, before or after its commit.
const PADS_HELD: &[usize] = &[1000, 1000, 500];

/// How the owner's records went.
#[derive(Debug, Default)]
struct HeldRun {
    ok: Vec<u32>,
    closed: Vec<u32>,
    lost: u64,
    /// Per record, the clock tick just before `record` was called.
    started: Vec<u64>,
}

fn write_held(sh: &Shared) -> HeldRun {
    // SAFETY: this thread is the ring's only owner.
    let owner = unsafe { sh.ring.owner() };
    let sink = OwnerSink { owner: &owner, clock: || sh.now() };
    let mut run = HeldRun::default();
    for (n, &len) in PADS_HELD.iter().enumerate() {
        let n = n as u32;
        run.started.push(sh.now());
        match ev::rec(&sink, 0, n, &make_pad(0, n, len)) {
            Ok(()) => run.ok.push(n),
            Err(RecordError::Closed) => run.closed.push(n),
            Err(RecordError::TooBig) => panic!("model records must fit"),
            Err(_) => run.lost += 1,
        }
    }
    run
}

/// What the controlling thread did.
#[derive(Debug)]
struct HeldStop {
    /// The stop found the owner busy and held the ring.
    held: bool,
    /// Clock tick once the stop took effect: no record started later may
    /// be accepted.
    stopped_at: u64,
    /// The later flush found the owner out and closed the ring.
    closed_by_flush: bool,
}

/// `Channel::stop`, then `Channel::flush` while stopped, for one owned ring.
fn stop_then_flush(sh: &Shared) -> HeldStop {
    assert!(sh.ring.revoke_owner(), "the ring is owned");
    fence(SeqCst); // membarrier
    let held = sh.ring.owner_busy(); // the bounded wait, given up at once
    if held {
        sh.ring.defer_close();
    } else {
        sh.ring.close();
    }
    let stopped_at = sh.now();
    if !held {
        while !sh.ring.is_quiescent() {
            thread::yield_now();
        }
        sh.ring.flush(&|| sh.now());
    }
    // The consumer's flush: a held ring is closed if its owner is out.
    let mut closed_by_flush = false;
    if held {
        fence(SeqCst); // membarrier
        if !sh.ring.owner_busy() {
            sh.ring.close();
            sh.ring.flush(&|| sh.now());
            closed_by_flush = true;
        }
    }
    HeldStop { held, stopped_at, closed_by_flush }
}

/// The owner records while a controller stops the channel (giving up on a
/// busy owner) and then flushes it; after both join, a ring still held is
/// closed and flushed as the owner's drop does. Then: every record accepted
/// is read, whole and in order, and nothing else (no packet is left
/// undelivered by a commit the owner completed under a flush); no record
/// that started after the stop took effect is accepted; the ring stays
/// closed; nothing is counted lost (a stopped ring refuses, it does not lose).
fn owner_held_model(mode: Mode, bound: usize) {
    let cov = std::sync::Arc::new(Coverage::default());
    let cov2 = cov.clone();
    builder(bound).check(move || {
        let sh = Shared::new_owned(mode);
        let owner = {
            let sh = sh.clone();
            thread::spawn(move || write_held(&sh))
        };
        let ctl = {
            let sh = sh.clone();
            thread::spawn(move || stop_then_flush(&sh))
        };
        let run = owner.join().unwrap();
        let st = ctl.join().unwrap();
        if st.held && !st.closed_by_flush {
            // `Channel::release_owner`: the owner's writer is dropped.
            sh.ring.close();
            sh.ring.flush(&|| sh.now());
        }
        let (mut packets, mut torn) = (Vec::new(), 0);
        drain(&sh.reader(), &mut packets, &mut torn);
        let f = check(&packets, &[PADS_HELD]);
        let c = sh.ring.counters();
        assert_eq!(f.per_writer[0], run.ok, "the records read are not those accepted ({run:?}, {st:?}, {c:?})");
        assert!(
            run.ok.iter().all(|&n| run.started[n as usize] < st.stopped_at),
            "a record started after the stop was accepted ({run:?}, {st:?})"
        );
        assert!(c.closed, "the stopped ring is open again ({run:?}, {st:?}, {c:?})");
        assert_eq!((run.lost, c.discarded), (0, 0), "a loss in a ring with room ({run:?}, {c:?})");
        cov2.hit("stop found the owner busy", st.held);
        cov2.hit("stop found the owner out", !st.held);
        cov2.hit("flush found the held owner out", st.closed_by_flush);
        cov2.hit("flush found the held owner busy", st.held && !st.closed_by_flush);
        cov2.hit("held owner refused after the stop", st.held && !run.closed.is_empty());
        cov2.hit("held owner's record accepted", st.held && run.ok.len() >= 2);
    });
    cov.require(&[
        "stop found the owner busy",
        "stop found the owner out",
        "flush found the held owner out",
        "flush found the held owner busy",
        "held owner refused after the stop",
        "held owner's record accepted",
    ]);
}

#[test]
fn owner_held_stop_then_flush_discard() {
    owner_held_model(Mode::Discard, 2);
}

#[test]
fn owner_held_stop_then_flush_overwrite() {
    owner_held_model(Mode::Overwrite, 2);
}
