//! Exact interleavings of the ring protocol, one per defect of issue 11
//! (found by review at 7b37ad3): a thread is stopped at a protocol point
//! (`hvtrace_core::hooks`, feature `test-hooks`) while this thread runs the
//! other side of the race, then let go. Each test failed on the code it
//! names and passes since the fix.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::Duration;

use common::{check_packets, pad, test_events};
use hvtrace_core::decode::records;
use hvtrace_core::layout::claim;
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{
    hooks, EventSet, Geometry, HookPoint, Mode, Poll, RecordError, Ring, RingReader, RingSink, StreamId,
};

const SBS: u64 = 4096;
const BUF: u64 = 2 * SBS;

/// A two-sub-buffer ring on the heap, for the life of the test process
/// (hooks are `'static` closures that may look at it).
fn ring_mem() -> &'static HeapRing {
    Box::leak(Box::new(HeapRing::new(Geometry::new(SBS, 2).unwrap())))
}

fn producer(mem: &'static HeapRing, mode: Mode) -> Ring<'static> {
    mem.producer(mode, StreamId { uuid: [5; 16], cpu: 0 })
}

/// A clock that ticks on every read.
fn ticks() -> impl Fn() -> u64 + Copy + Send + Sync {
    static T: AtomicU64 = AtomicU64::new(1);
    || T.fetch_add(1, Relaxed)
}

/// Writer `w` records until the write position passes `until`; returns how
/// many records it made, and stops at the first refusal (returned).
fn record_until(ring: &Ring<'_>, w: u32, until: u64) -> (u64, Option<RecordError>) {
    let sink = RingSink { ring, clock: ticks() };
    let mut buf = [0; 64];
    let mut n = 0;
    while ring.counters().produced_bytes <= until {
        if let Err(e) = test_events::seq(&sink, w, n, pad(w, n, &mut buf)) {
            return (n, Some(e));
        }
        n += 1;
    }
    (n, None)
}

/// Runs `work` on a thread that stops the first time it passes `point`;
/// once it stopped (or finished without passing it), runs `meanwhile`
/// here, then lets the thread go. Returns both results and whether the
/// thread stopped.
fn interleave<T: Send, U>(
    point: HookPoint,
    work: impl FnOnce() -> T + Send,
    meanwhile: impl FnOnce() -> U,
) -> (T, U, bool) {
    let (arrived_tx, arrived) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let mut once = Some((arrived_tx, go_rx));
            hooks::set(move |p| {
                if p == point {
                    if let Some((tx, rx)) = once.take() {
                        tx.send(()).unwrap();
                        rx.recv().unwrap();
                    }
                }
            });
            let r = work();
            hooks::clear();
            r
        });
        // Err: the thread finished (its hook dropped) without stopping.
        let stopped = arrived.recv_timeout(Duration::from_secs(60)).is_ok();
        let u = meanwhile();
        let _ = go.send(());
        (h.join().unwrap(), u, stopped)
    })
}

/// One read: the packet's position, whether `release` accepted the copy, the copy.
fn read_one(r: &RingReader<'_>) -> Option<(u64, bool, Vec<u8>)> {
    match r.next_packet() {
        Poll::Empty => None,
        Poll::Ready(p) => {
            let mut copy = vec![0; SBS as usize];
            r.copy_packet(&p, &mut copy);
            Some((p.pos, r.release(&p), copy))
        }
    }
}

/// Every packet ready, as (position, accepted, bytes).
fn drain(r: &RingReader<'_>) -> Vec<(u64, bool, Vec<u8>)> {
    std::iter::from_fn(|| read_one(r)).collect()
}

fn seq_of(packet: &[u8]) -> u64 {
    records(packet, test_events::Events::EVENTS).expect("packet header").0.seq
}

/// Defect 1 (fails at 7b37ad3: `release` accepted packet 4 read at position
/// 0). A consumer stalled between its loads of `delivered` and of the claim
/// word while writers lap the sub-buffer twice: the claim then names a
/// later lap than the consumer's, and the packet must be skipped (or its
/// release refused), never accepted.
#[test]
fn overwrite_a_consumer_stalled_while_writers_lap_twice_accepts_no_packet_being_rewritten() {
    let mem = ring_mem();
    let ring = producer(mem, Mode::Overwrite);
    record_until(&ring, 0, SBS + 100); // packet 0 delivered, packet 1 open
    let reader = mem.reader();
    let (got, _, stopped) = interleave(
        HookPoint::ReaderDelivered,
        || read_one(&reader),
        // Sub-buffer 0 is reopened (lap 1), delivered, and reopened again
        // (lap 2): its bytes are being rewritten.
        || record_until(&ring, 0, 2 * BUF + 100),
    );
    assert!(stopped, "the consumer passed the hook");
    let (pos, accepted, bytes) = got.expect("a packet was delivered at the consumer's position");
    if accepted {
        assert_eq!(seq_of(&bytes), pos / SBS, "release accepted packet {} read at position {pos}", seq_of(&bytes));
        check_packets(&[bytes], 1);
    }
}

/// Defect 3 (fails at 7b37ad3: packet 0 carried 1, packet 1 carried 0).
/// Writer A closes packet 0 and stalls before writing its end fields; B
/// fills packet 1, closes it and is refused packet 2 (`Busy`: A has not
/// committed). `events_discarded` must still never decrease along the stream.
#[test]
fn events_discarded_never_decreases_when_a_closer_stalls() {
    let mem = ring_mem();
    let ring = producer(mem, Mode::Discard);
    let (a, b, stopped) =
        interleave(HookPoint::PacketCloseCas, || record_until(&ring, 0, u64::MAX), || record_until(&ring, 1, u64::MAX));
    assert!(stopped);
    assert_eq!(b.1, Some(RecordError::Busy), "B is refused packet 2 while A is inside packet 0's close");
    assert_eq!(a.1, Some(RecordError::Full), "A then finds the ring full (no consumer)");
    let read = drain(&mem.reader());
    assert_eq!(read.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(0, true), (SBS, true)]);
    let packets: Vec<_> = read.into_iter().map(|r| r.2).collect();
    let checked = check_packets(&packets, 2); // asserts events_discarded never decreases
    assert_eq!(checked.per_writer, [(0..a.0).collect::<Vec<_>>(), (0..b.0).collect()]);
    assert!(checked.last_discarded <= 2, "two records were refused");
}

/// Defect 4 (fails at 7b37ad3: the stalled writer took sub-buffer 0's claim
/// and counted its lap as overwritten after the stop; the consumer then
/// skipped it). A writer that loaded `write` before a stop holds no
/// reservation: once the ring is quiescent it must change nothing.
#[test]
fn overwrite_a_writer_stalled_before_its_reservation_changes_nothing_after_quiescence() {
    let mem = ring_mem();
    let ring = producer(mem, Mode::Overwrite);
    let (n, _) = record_until(&ring, 0, SBS + 100);
    assert!(ring.flush(&ticks()), "packet 1 flushed: `write` waits at sub-buffer 0, lap 1");
    let claims = || mem.claims.iter().map(|c| c.load(Relaxed)).collect::<Vec<_>>();
    let (res, at_quiescence, stopped) = interleave(
        HookPoint::ReserveLoaded,
        || test_events::seq(&RingSink { ring: &ring, clock: ticks() }, 1, 0, b"late"),
        || {
            ring.close();
            assert!(ring.is_quiescent(), "no writer holds a reservation");
            assert!(!ring.flush(&ticks()), "nothing to flush");
            (ring.counters(), claims())
        },
    );
    assert!(stopped);
    assert_eq!(res, Err(RecordError::Closed));
    assert_eq!((ring.counters(), claims()), at_quiescence, "the ring changed after quiescence");
    let read = drain(&mem.reader());
    assert_eq!(read.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(0, true), (SBS, true)], "both packets intact");
    let packets: Vec<_> = read.into_iter().map(|r| r.2).collect();
    assert_eq!(check_packets(&packets, 2).per_writer, [(0..n).collect::<Vec<_>>(), vec![]]);
}

/// Defect 6 (fails at 7b37ad3: the opener retried its claim once per flip,
/// as long as the consumer kept flipping). A consumer that changes the
/// claim word whenever the opener is about to take it must not keep the
/// record path retrying: one read-modify-write per opened lap.
#[test]
fn overwrite_a_consumer_flipping_the_claim_word_cannot_make_the_writer_retry() {
    let mem = ring_mem();
    let ring = producer(mem, Mode::Overwrite);
    let sink = RingSink { ring: &ring, clock: ticks() };
    let mut buf = [0; 64];
    // Packet 0 full, packet 1 flushed: the next record opens lap 1 of
    // sub-buffer 0, overwriting the records wholly inside packet 0.
    let (mut n, mut in_packet0) = (0, 0);
    while ring.counters().produced_bytes <= SBS + 100 {
        test_events::seq(&sink, 0, n, pad(0, n, &mut buf)).unwrap();
        n += 1;
        in_packet0 += (ring.counters().produced_bytes < SBS) as u64;
    }
    assert!(ring.flush(&ticks()));
    let flips = Rc::new(Cell::new(0u64));
    let seen = flips.clone();
    hooks::set(move |p| {
        if p == HookPoint::OpenClaim && seen.get() < 10_000 {
            seen.set(seen.get() + 1);
            // Neither "read by the consumer" nor "taken by the producer".
            mem.claims[0].store(claim::consumer(100 + seen.get()), Relaxed);
        }
    });
    let res = test_events::seq(&sink, 0, n, pad(0, n, &mut buf));
    hooks::clear();
    assert_eq!(res, Ok(()));
    assert_eq!(flips.get(), 1, "the writer retried its claim {} times", flips.get());
    assert_eq!(ring.counters().overwritten, in_packet0, "packet 0's records counted once as overwritten");
}

/// A stopped ring refuses every record as `Closed`, which is not a loss:
/// neither a record too big for a sub-buffer nor one refused by an owned
/// ring may count one (both did at 7b37ad3).
#[test]
fn a_stopped_ring_counts_no_loss() {
    let mem = ring_mem();
    let ring = producer(mem, Mode::Discard);
    ring.close();
    let sink = RingSink { ring: &ring, clock: ticks() };
    assert_eq!(test_events::seq(&sink, 0, 0, &[1; 5000]), Err(RecordError::Closed), "too big, while stopped");
    let mem = ring_mem();
    let owned = producer(mem, Mode::Discard);
    // SAFETY: no writer has seen the ring yet.
    unsafe { owned.make_owned() };
    assert!(owned.revoke_owner());
    owned.close();
    owned.restore_owner();
    let other = RingSink { ring: &owned, clock: ticks() };
    assert_eq!(test_events::seq(&other, 1, 0, b"x"), Err(RecordError::Closed), "not the owner, while stopped");
    assert_eq!((ring.counters().discarded, owned.counters().discarded), (0, 0));
}
