//! Model checking of the ring protocol with loom: every interleaving (up to a
//! preemption bound) of reserve / commit / deliver / consume / close / flush
//! on the smallest ring (2 sub-buffers of 4 KiB).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p hvtrace-core --test loom --release`
//! (`LOOM_MAX_PREEMPTIONS=N` overrides the bound each model picks).
//! `scripts/loom-mutations` weakens one ordering at a time and says which
//! model fails (the table in `docs/ring.md`).
//!
//! loom models the ring's atomic words; the sub-buffer bytes are plain memory
//! it does not see (a load there always returns the newest store). So every
//! piece of data a writer stores (record, opener fields, closer fields) has
//! a *witness* (`hvtrace_core::Witness`): a modelled atomic holding its
//! version (the bytes and the lap that stored them), stored `Relaxed` after
//! the bytes, which the consumer loads right after its copy; each packet it
//! keeps is rebuilt from the versions its loads found, and must be whole
//! and of its own lap (a stale version: the writer's stores were not
//! visible to it; a later lap's: the copy raced a rewrite and was kept
//! anyway); and a loom cell standing for
//! the piece's memory, written by the writer and (discard mode) read by the
//! consumer's copy, on which loom itself reports any two accesses that
//! nothing orders (two writers on one place, a read of stores not published
//! to the reader, a rewrite of a piece the consumer may still be reading).
//! Then each model decodes every packet read once its threads have joined:
//! each record intact, each writer's records in order, timestamps never
//! backwards, and the loss accounting exact against what the writers were
//! told. The harness is `tests/common/loom.rs`.
//!
//! loom's DPOR keeps only the last access to each atomic and so never
//! reverses some races (a stalled closer's load of a counter and another
//! writer's increment, with a third load between): a model may make every
//! thread yield at one protocol point (`hvtrace_core::loom_yield`), a switch
//! loom always explores at no preemption cost.
//!
//! The owned-ring models (`owner_*`) check the single-writer fast path
//! against a thread that takes the ring back (revoke, heavy barrier, wait
//! while the owner is busy). loom cannot model `membarrier`; the revoker's
//! `fence(SeqCst)` stands for it, and the owner's light fence is a `SeqCst`
//! fence under loom, which gives the same store-buffering guarantee.
#![cfg(loom)]

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering::SeqCst;

use hvtrace_core::ctf::packet;
use hvtrace_core::decode::{records, Value};
use hvtrace_core::layout::claim;
use hvtrace_core::{loom_yield, Encoder, EventSet, HookPoint, Mode, OwnerSink, RecordError, RingCounters, Sink};
use loom::sync::atomic::fence;
use loom::sync::Arc;
use loom::thread;

mod common;
use common::loom::*;

/// Pad lengths: a 2500-byte pad fills a packet alone (84 + 2 x 2516 > 4096),
/// so three records need three packets and the 2-sub-buffer ring laps: the
/// third packet reopens sub-buffer 0, which the consumer may or may not have
/// read (discard: `Full`; overwrite: overwritten or torn copy) and whose
/// writer may still be inside its record (`Busy`).
const PADS_A: &[usize] = &[2500, 2500];
const PADS_B: &[usize] = &[2500];

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
    let writers: Vec<_> =
        pads.iter().copied().enumerate().map(|(w, pads)| spawn(sh, move |sh| write(sh, w as u32, pads))).collect();
    let consumer = spawn(sh, move |sh| Read::default().polls(&sh.reader(), polls));
    let outcomes: Vec<Outcome> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    let read = consumer.join().unwrap();
    sh.ring.close();
    assert!(sh.ring.is_quiescent(), "all writers joined, yet a record is uncommitted");
    let flushed = sh.ring.flush(&|| sh.now());
    assert!(sh.ring.is_quiescent(), "the flush left its padding uncommitted");
    let read = read.drain(&sh.reader());
    (outcomes, read.packets, read.torn, flushed)
}

/// (a) Discard mode: nothing read is damaged, nothing written is lost
/// unaccounted: every `Ok` record is read, every loss is counted, and the
/// packets' `events_discarded` never exceeds the count. It equals it when the
/// final flush closed a packet: losses happen only while `write` waits at a
/// sub-buffer boundary, so a packet opened later carries them. (Losses after
/// the last packet opened appear in no packet, only in the ring counters.)
#[test]
fn discard_two_writers_and_consumer() {
    explore(2, &["lost: full", "lost: busy", "nothing lost", "loss not in any packet"], move |cov| {
        let sh = Shared::new(Mode::Discard);
        // (`torn` is 0 by construction: a discard-mode release never fails.)
        let (outcomes, packets, _, flushed) = two_writers_and_consumer(&sh, 1);
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
        cov.hit("lost: full", c.discarded_full > 0);
        cov.hit("lost: busy", c.discarded_busy > 0);
        cov.hit("nothing lost", c.discarded == 0);
        cov.hit("loss not in any packet", f.last_discarded < c.discarded);
    });
}

/// (b) Overwrite mode: a copy is kept only when `release` says it is intact,
/// and records read + records lost (refused or overwritten) == emitted.
#[test]
fn overwrite_two_writers_and_consumer() {
    explore(2, &["torn copy thrown away", "overwritten", "lost: busy", "all read"], move |cov| {
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
        cov.hit("torn copy thrown away", torn > 0);
        cov.hit("overwritten", c.overwritten > 0);
        cov.hit("lost: busy", c.discarded_busy > 0);
        cov.hit("all read", c.discarded == 0);
    });
}

/// (c) A writer racing `close` → wait for `is_quiescent` → `flush`: once
/// quiescent, no record is reserved any more, every reserved byte was
/// committed, the flush delivers the partial packet, and the records read
/// are exactly the ones `record` accepted.
#[test]
fn close_quiesce_flush_races_a_writer() {
    const PADS: &[usize] = &[1500, 2500, 200];
    explore(3, &[&["waited for a writer inside a record", "flush delivered"][..], CLOSE_POINTS].concat(), move |cov| {
        let sh = Shared::new(Mode::Discard);
        let writer = spawn(&sh, |sh| write(sh, 0, PADS));
        let stopper = spawn(&sh, |sh| {
            let waited = close_and_quiesce(sh);
            let at_quiescence = sh.ring.counters();
            let delivered = sh.ring.flush(&|| sh.now());
            (at_quiescence, delivered, waited)
        });
        let o = writer.join().unwrap();
        let (q, delivered, waited) = stopper.join().unwrap();
        let c = sh.ring.counters();
        assert!(c.closed && sh.ring.is_quiescent());
        // Nothing reserved after quiescence; the flush only moved `write`
        // to the end of the packet it closed.
        let sbs = 4096;
        assert_eq!(c.produced_bytes, q.produced_bytes.div_ceil(sbs) * sbs, "write moved after quiescence");
        assert_eq!(delivered, q.produced_bytes % sbs != 0, "flush of a quiescent ring delivers its partial packet");
        let f = check(&Read::default().drain(&sh.reader()).packets, &[PADS]);
        assert_eq!(f.per_writer[0], o.ok, "read exactly the accepted records");
        assert_eq!(c.discarded, o.lost);
        // Once refused, every later record is refused too.
        assert!(o.closed.iter().all(|n| o.ok.iter().all(|k| k < n)), "record accepted after one was refused: {o:?}");
        assert_eq!(c.produced_bytes, c.delivered_subbufs * sbs, "every reserved packet delivered");
        cov.hit("waited for a writer inside a record", waited);
        cov.hit("flush delivered", delivered);
        close_coverage(cov, &o.ok, &o.closed);
    });
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
        let a = spawn(&sh, |sh| write(sh, 0, PADS_SMALL));
        let b = spawn(&sh, |sh| write(sh, 1, PADS_BIG));
        let (oa, ob) = (a.join().unwrap(), b.join().unwrap());
        let c = sh.ring.counters();
        assert_eq!(c.discarded, 0, "lost a record although the ring had room: {c:?} {oa:?} {ob:?}");
        sh.ring.flush(&|| sh.now());
        let f = check(&Read::default().drain(&sh.reader()).packets, &[PADS_SMALL, PADS_BIG]);
        assert_eq!(f.records, 3);
    });
}

/// (f) Overwrite mode, one writer lapping the ring (five packets on two
/// sub-buffers: three laps of sub-buffer 0) and a consumer polling between laps: a
/// consumer stalled anywhere in `next_packet` or its copy while the writer
/// laps its sub-buffer keeps no packet being rewritten (issue 11, defect 1),
/// and every record is read or counted overwritten, once.
#[test]
fn overwrite_three_laps_consumer_polls_between() {
    const PADS: &[usize] = &[2500; 5];
    explore(1, &["torn copy thrown away", "read a packet of lap 1 or later before the writer finished"], move |cov| {
        let sh = Shared::new(Mode::Overwrite);
        let (outcomes, packets, torn, _) = writers_and_consumer(&sh, &[PADS], 2);
        let f = check(&packets, &[PADS]);
        let c = sh.ring.counters();
        assert_eq!(outcomes[0].ok.len(), PADS.len(), "overwrite mode never refuses a lone writer");
        assert_eq!(c.events_discarded(), 0);
        assert_eq!(c.overwritten, PADS.len() as u64 - f.records, "accepted but not read == overwritten ({c:?})");
        let seqs: Vec<u64> = packets.iter().map(|p| records(p, ev::Events::EVENTS).unwrap().0.seq).collect();
        cov.hit("torn copy thrown away", torn > 0);
        cov.hit(
            "read a packet of lap 1 or later before the writer finished",
            seqs.iter().any(|&s| (2..4).contains(&s)),
        );
        cov.hit("read nothing while writing", packets.len() <= 2 && torn == 0);
    });
}

/// (g) Two writers closing packets concurrently (each record fills a packet,
/// so each writer's second record closes one), refused `Busy` or `Full`:
/// `events_discarded` never decreases (`check` asserts it) and the records
/// read are exactly those accepted.
#[test]
fn two_writers_closing_concurrently() {
    closing_model(None, &["lost: busy", "lost: full"]);
}

/// (g') The same, with every closer yielding right after its closing CAS:
/// the schedule of issue 11's defect 3 (writer A closes packet 0 and
/// stalls; B fills packet 1, closes it and is refused packet 2, `Busy`;
/// A then writes its `events_discarded`). loom never tries it otherwise,
/// at any preemption bound (see `hvtrace_core::loom_yield`); with the
/// counters loaded after the closing CAS, packet 0 then carries 1 and
/// packet 1 carries 0.
#[test]
fn two_writers_closing_concurrently_a_closer_stalls() {
    closing_model(Some(HookPoint::PacketCloseCas), &["lost: busy", "lost: full"]);
}

fn closing_model(yield_at: Option<HookPoint>, reach: &'static [&'static str]) {
    const PADS: &[usize] = &[2500, 2500];
    loom_yield::set(yield_at);
    explore(2, reach, move |cov| {
        let sh = Shared::new(Mode::Discard);
        let (outcomes, packets, _, _) = writers_and_consumer(&sh, &[PADS, PADS], 0);
        let f = check(&packets, &[PADS, PADS]);
        let c = sh.ring.counters();
        for (w, o) in outcomes.iter().enumerate() {
            assert_eq!(f.per_writer[w], o.ok, "writer {w}: the records read are exactly those accepted");
        }
        assert_eq!(c.discarded, outcomes.iter().map(|o| o.lost).sum::<u64>());
        // Busy: a writer found the sub-buffer's previous lap undelivered,
        // i.e. the other writer stalled inside its record or its close.
        cov.hit("lost: busy", c.discarded_busy > 0);
        cov.hit("lost: full", c.discarded_full > 0);
    });
    loom_yield::set(None);
}

/// (j) Overwrite mode, the seqlock: the model's thread copies packet 0
/// while sub-buffer 0 is reopened (lap 1) by writer 1 and written by writer
/// 2, in the same packet. Packets 0 and 1 are written and delivered first,
/// so the next record opens lap 1 of sub-buffer 0.
///
/// The opener's own stores come after its claim `swap`, so in loom (one
/// thread at a time, no load buffering) a copy that saw one of them fails
/// its claim CAS whatever the fences say; the other
/// writer's stores (its record, or the closer fields when its record does
/// not fit) may land before the opener's swap, and only the seqlock (each
/// writer's `fence(Release)` after moving `write`, the consumer's
/// `fence(Acquire)` after its copy, and the `write` check) refuses a copy
/// that saw them. The consumer's copy is the versions its loads found (see
/// `hvtrace_core::Witness`), so a kept packet holding a piece of lap 1 fails
/// the model. The schedule: the consumer finds packet 0 ready, writer 1
/// reserves, writer 2 writes, the consumer copies: two preemptions.
/// `lead`: writer 2's clock runs that far ahead, so its record needs the
/// extended header and takes the out-of-line reservation (`reserve_shared`).
fn seqlock_model(other: &'static [usize], lead: u64, reach: &'static str) {
    const FIRST: &[usize] = &[2500, 2500];
    const OPENER: &[usize] = &[100];
    explore(2, &["torn copy thrown away", "packet 0 kept", reach], move |cov| {
        let sh = Shared::new(Mode::Overwrite);
        // Where packet 2's records may start (either writer first, either
        // header form: 4 or 13 bytes, and 12 bytes of fields before the pad).
        let recs = [OPENER[0], other[0]].into_iter().flat_map(|p| [4 + 12 + p as u64, 13 + 12 + p as u64]);
        sh.mem().witness.prepare(recs.map(|r| packet::LEN as u64 + r));
        let first = write(&sh, 0, FIRST);
        assert!(sh.ring.flush(&|| sh.now()));
        let opener = spawn(&sh, |sh| write(sh, 1, OPENER));
        let second = spawn(&sh, move |sh| write_ahead(sh, 2, other, lead));
        let mut read = Read::default();
        read.poll(&sh.reader());
        let outcomes = [first, opener.join().unwrap(), second.join().unwrap()];
        sh.ring.close();
        assert!(sh.ring.is_quiescent(), "all writers joined, yet a record is uncommitted");
        sh.ring.flush(&|| sh.now());
        let kept_first = read.packets.len();
        let Read { packets, torn } = read.drain(&sh.reader());
        let f = check(&packets, &[FIRST, OPENER, other]);
        let c = sh.ring.counters();
        assert!(outcomes.iter().all(|o| o.lost == 0 && o.closed.is_empty()), "overwrite mode refused: {outcomes:?}");
        let emitted = (FIRST.len() + OPENER.len() + other.len()) as u64;
        assert_eq!(c.overwritten, emitted - f.records, "accepted but not read == overwritten ({c:?}, torn {torn})");
        let seqs: Vec<u64> = packets.iter().map(|p| records(p, ev::Events::EVENTS).unwrap().0.seq).collect();
        cov.hit("torn copy thrown away", torn > 0);
        cov.hit("packet 0 kept", kept_first == 1 && seqs[0] == 0);
        // Packet 2 (lap 1 of sub-buffer 0) holds the opener's record first.
        let p2 = seqs.iter().position(|&s| s == 2).map(|i| writers_in(&packets[i]));
        cov.hit("writer 2's record behind the opener's", p2.as_deref() == Some(&[1, 2]));
        cov.hit("writer 2 closed the packet writer 1 opened", p2.as_deref() == Some(&[1]) && f.per_writer[2] == [0]);
    });
}

/// The writer of each record of `packet`, in order.
fn writers_in(packet: &[u8]) -> Vec<u64> {
    let recs = records(packet, ev::Events::EVENTS).unwrap().1;
    recs.map(|r| match r.unwrap().values(ev::Events::EVENTS).next() {
        Some(Value::U(w)) => w,
        v => panic!("bad first field {v:?}"),
    })
    .collect()
}

/// Writer 2's record behind the opener's: its reservation inline (`reserve_in_packet`).
#[test]
fn overwrite_seqlock_a_record_behind_the_opener() {
    seqlock_model(&[100], 0, "writer 2's record behind the opener's");
}

/// The same, out of line (`reserve_shared`): more than the compact
/// header's 2^27 ticks since the previous record.
#[test]
fn overwrite_seqlock_a_record_behind_the_opener_out_of_line() {
    seqlock_model(&[100], 1 << 28, "writer 2's record behind the opener's");
}

/// Writer 2's record does not fit behind the opener's: it closes the packet
/// (the closer fields are its stores) and opens the next one.
#[test]
fn overwrite_seqlock_the_closer_of_the_reopened_packet() {
    // 84 + 116 + 3966 > 4096.
    seqlock_model(&[3950], 0, "writer 2 closed the packet writer 1 opened");
}

/// (h) Overwrite mode, a writer lapping the ring races a stop: close, wait
/// for quiescence, flush. Once quiescent, nothing the writer does changes
/// the counters or the claim words (issue 11, defect 4), and every record
/// accepted is read or counted overwritten.
#[test]
fn overwrite_stop_quiesce_flush_races_a_lapping_writer() {
    overwrite_stop_model(&[&[2500; 4]], 2, &[&["stopped after a lap", "overwritten"][..], CLOSE_POINTS].concat());
}

/// (h') The same with two writers lapping the ring (two records each, one
/// packet per record: the ring's two sub-buffers are each reopened once)
/// while a third thread stops it. A writer may now be refused `Busy` (the
/// other is still inside its record a ring ago), and such a loss decided
/// before the close may be counted after quiescence (docs/ring.md, Stop).
/// Bound 1: 6-12 s in release at load 2.5; bound 2 took 395 s (docs/ring.md).
#[test]
fn overwrite_stop_quiesce_flush_races_two_lapping_writers() {
    overwrite_stop_model(
        &[&[2500; 2], &[2500; 2]],
        1,
        &[
            "stopped after a lap",
            "overwritten",
            "closed after a lap, a writer refused",
            "lost: busy",
            "a loss counted after quiescence",
        ],
    );
}

/// Writer `w` records `pads[w]` on an overwrite ring while another thread
/// stops it (close, quiescence, flush). After quiescence only the flush
/// (`write` to the end of its packet, its delivery) and `Busy` losses
/// decided before the close move; no claim word changes; nothing read is
/// torn; every refusal is counted and every accepted record not read is
/// counted overwritten.
fn overwrite_stop_model(pads: &'static [&'static [usize]], bound: usize, reach: &[&'static str]) {
    explore(bound, reach, move |cov| {
        let sh = Shared::new(Mode::Overwrite);
        let writers: Vec<_> =
            pads.iter().enumerate().map(|(w, &p)| spawn(&sh, move |sh| write(sh, w as u32, p))).collect();
        let stopper = spawn(&sh, |sh| {
            close_and_quiesce(sh);
            let q = (sh.ring.counters(), sh.claims());
            sh.ring.flush(&|| sh.now());
            q
        });
        let outcomes: Vec<Outcome> = writers.into_iter().map(|h| h.join().unwrap()).collect();
        let (q, claims) = stopper.join().unwrap();
        let c = sh.ring.counters();
        let sbs = 4096;
        let refused: u64 = outcomes.iter().map(|o| o.lost).sum();
        assert_eq!(c.events_discarded(), refused, "every refusal counted, nothing else ({c:?})");
        // `Busy` losses (and so the total) may move after quiescence, even
        // between the snapshot's loads: the check above counts them.
        assert_eq!(
            RingCounters {
                produced_bytes: q.produced_bytes.div_ceil(sbs) * sbs,
                delivered_subbufs: c.delivered_subbufs,
                discarded: c.discarded,
                discarded_busy: c.discarded_busy,
                ..q
            },
            c,
            "the ring changed after quiescence"
        );
        assert_eq!(sh.claims(), claims, "a claim word changed after quiescence");
        let Read { packets, torn } = Read::default().drain(&sh.reader());
        assert_eq!(torn, 0, "nothing rewrites a stopped ring");
        let f = check(&packets, pads);
        let accepted: u64 = outcomes.iter().map(|o| o.ok.len() as u64).sum();
        assert_eq!(c.overwritten, accepted - f.records, "accepted but not read == overwritten ({c:?})");
        for (w, o) in outcomes.iter().enumerate() {
            assert!(f.per_writer[w].iter().all(|n| o.ok.contains(n)), "writer {w}: read a record never accepted");
            assert!(o.closed.iter().all(|n| o.ok.iter().all(|k| k < n)), "writer {w} accepted after a refusal: {o:?}");
        }
        cov.hit("stopped after a lap", accepted > 2);
        cov.hit("overwritten", c.overwritten > 0);
        cov.hit("closed after a lap, a writer refused", accepted > 2 && outcomes.iter().any(|o| !o.closed.is_empty()));
        cov.hit("lost: busy", refused > 0);
        cov.hit("a loss counted after quiescence", c.discarded_busy > q.discarded_busy);
        if let [o] = &outcomes[..] {
            close_coverage(cov, &o.ok, &o.closed);
        }
    });
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
        let writer = spawn(&sh, |sh| write(sh, 0, PADS));
        let hostile = spawn(&sh, |sh| {
            for lie in [claim::consumer(0), claim::producer(1), 12345] {
                sh.mem().claims[0].store(lie, SeqCst);
                sh.mem().ctrl.consumed.store(lie, SeqCst);
            }
        });
        let o = writer.join().unwrap();
        hostile.join().unwrap();
        assert_eq!((o.ok.len(), o.lost), (PADS.len(), 0), "the writer was refused: {o:?}");
        let c = sh.ring.counters();
        assert_eq!(c.events_discarded(), 0, "{c:?}");
        // Packets 2 and 3 reopen packets 0 and 1 (one record each): packet
        // 1's claim word is untouched, so it is counted; packet 0's is not
        // if the lie `consumer(0)` was there when packet 2 took it.
        assert!((1..=2).contains(&c.overwritten), "{c:?}");
        sh.ring.close();
        assert!(sh.ring.is_quiescent());
        sh.ring.flush(&|| sh.now());
        sh.mem().ctrl.consumed.store(0, SeqCst);
        let f = check(&Read::default().drain(&sh.reader()).packets, &[PADS]);
        // A lying consumer may hide its own losses, never make the producer
        // count a record it kept: packet 3 is always read (its claim word
        // is the producer's), packet 2 unless a lie made it look taken.
        assert!(f.records >= 1 && f.records + c.overwritten <= PADS.len() as u64, "read {}, {c:?}", f.records);
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
        run.out.note(n, res);
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
    // The controlling thread's clock lags the owner's (another CPU's TSC):
    // the flush's `timestamp_end` is then right only if it loads the
    // owner's last `max_tsc`, which only the owner's Release store of
    // `owner_busy = 0` publishes to the wait (its commit store is Relaxed).
    let clock = || sh.now() - SKEW;
    let waited = revoke(sh);
    let begin = sh.now();
    if !stop {
        let flushed = sh.ring.flush(&clock);
        let end = sh.now();
        sh.ring.restore_owner();
        return Revoker { waited, section: (begin, end), flushed, at_quiescence: None };
    }
    close_and_quiesce(sh);
    let q = sh.ring.counters();
    let flushed = sh.ring.flush(&clock);
    Revoker { waited, section: (begin, u64::MAX), flushed, at_quiescence: Some(q) }
}

/// The owner, a controlling thread and a consumer (`polls` polls). After
/// they join: stop (if the controller did not), drain. Returns what the
/// owner and the controller saw, the packets read and the copies thrown away.
fn owner_control_consumer(sh: &Arc<Shared>, stop: bool, polls: usize) -> (OwnerRun, Revoker, Vec<Vec<u8>>, u64) {
    let owner = spawn(sh, |sh| write_owned(sh, 0, PADS_OWNER));
    let ctl = spawn(sh, move |sh| control(sh, stop));
    let read = Read::default().polls(&sh.reader(), polls);
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
    assert!(sh.ring.is_quiescent(), "the flush left its padding uncommitted");
    let read = read.drain(&sh.reader());
    (run, rv, read.packets, read.torn)
}

/// Checks common to the owner models; returns the records found.
fn check_owner_run(sh: &Shared, run: &OwnerRun, rv: &Revoker, packets: &[Vec<u8>]) -> Found {
    let f = check(packets, &[PADS_OWNER]);
    let c = sh.ring.counters();
    let o = &run.out;
    // Refused records (their causes) and accepted ones never read
    // (overwritten) against what the owner was told; with the first two,
    // recorded + discarded == emitted follows.
    assert_eq!(c.events_discarded(), o.lost, "refusals counted != refusals told ({c:?}, {run:?})");
    assert_eq!(c.overwritten, o.ok.len() as u64 - f.records, "accepted but not read == overwritten ({c:?})");
    match sh.ring.mode() {
        Mode::Discard => assert_eq!(f.per_writer[0], o.ok, "the records read are exactly those accepted"),
        Mode::Overwrite => {
            assert!(f.per_writer[0].iter().all(|n| o.ok.contains(n)), "read a record never accepted: {run:?}")
        }
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
    let reach = [
        &[
            "owner took the fast path",
            "owner found the ring revoked",
            "revoker waited for a busy owner",
            "fast path after the revoker's section",
            "revoker's flush delivered",
            "nothing lost",
        ][..],
        extra,
    ]
    .concat();
    explore(bound, &reach, move |cov| {
        let sh = Shared::new_owned(mode);
        let (run, rv, packets, _) = owner_control_consumer(&sh, false, 1);
        check_owner_run(&sh, &run, &rv, &packets);
        let c = sh.ring.counters();
        owner_coverage(cov, &run, &rv);
        cov.hit("lost: full", c.discarded_full > 0);
        cov.hit("overwritten", c.overwritten > 0);
        cov.hit("nothing lost", c.discarded == 0);
    });
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
    let reach = [
        &[
            "owner took the fast path",
            "owner found the ring revoked",
            "revoker waited for a busy owner",
            "revoker's flush delivered",
        ][..],
        CLOSE_POINTS,
    ]
    .concat();
    explore(bound, &reach, move |cov| {
        let sh = Shared::new_owned(mode);
        let (run, rv, packets, _) = owner_control_consumer(&sh, true, 1);
        check_owner_run(&sh, &run, &rv, &packets);
        owner_coverage(cov, &run, &rv);
        let o = &run.out;
        close_coverage(cov, &o.ok, &o.closed);
    });
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
    out: Outcome,
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
        run.out.note(n, ev::rec(&sink, 0, n, &make_pad(0, n, len)));
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
    let reach = [
        "stop found the owner busy",
        "stop found the owner out",
        "flush found the held owner out",
        "flush found the held owner busy",
        "held owner refused after the stop",
        "held owner's record accepted",
    ];
    explore(bound, &reach, move |cov| {
        let sh = Shared::new_owned(mode);
        let owner = spawn(&sh, write_held);
        let ctl = spawn(&sh, stop_then_flush);
        let run = owner.join().unwrap();
        let st = ctl.join().unwrap();
        if st.held && !st.closed_by_flush {
            // `Channel::release_owner`: the owner's writer is dropped.
            sh.ring.close();
            sh.ring.flush(&|| sh.now());
        }
        let f = check(&Read::default().drain(&sh.reader()).packets, &[PADS_HELD]);
        let c = sh.ring.counters();
        assert_eq!(f.per_writer[0], run.out.ok, "the records read are not those accepted ({run:?}, {st:?}, {c:?})");
        assert!(
            run.out.ok.iter().all(|&n| run.started[n as usize] < st.stopped_at),
            "a record started after the stop was accepted ({run:?}, {st:?})"
        );
        assert!(c.closed, "the stopped ring is open again ({run:?}, {st:?}, {c:?})");
        assert_eq!((run.out.lost, c.discarded), (0, 0), "a loss in a ring with room ({run:?}, {c:?})");
        cov.hit("stop found the owner busy", st.held);
        cov.hit("stop found the owner out", !st.held);
        cov.hit("flush found the held owner out", st.closed_by_flush);
        cov.hit("flush found the held owner busy", st.held && !st.closed_by_flush);
        cov.hit("held owner refused after the stop", st.held && !run.out.closed.is_empty());
        cov.hit("held owner's record accepted", st.held && run.out.ok.len() >= 2);
    });
}

#[test]
fn owner_held_stop_then_flush_discard() {
    owner_held_model(Mode::Discard, 2);
}

#[test]
fn owner_held_stop_then_flush_overwrite() {
    owner_held_model(Mode::Overwrite, 2);
}
