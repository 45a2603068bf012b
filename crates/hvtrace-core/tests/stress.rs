//! N writers x M records on a small ring, a consumer reading concurrently:
//! every record read is intact, timestamps never go backwards, and
//! recorded + discarded == emitted exactly, in both modes. The owned-ring
//! tests do the same with one owner on its fast path and a controlling
//! thread that keeps taking the ring back (real `membarrier`) to flush it,
//! then stops it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{check_packets, pad, test_events};
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{
    Encoder, Geometry, Mode, OwnerSink, Poll, RecordError, Ring, RingCounters, RingReader, RingSink, Sink, StreamId,
};

fn run(mode: Mode, writers: u32, per_writer: u64, geo: Geometry) {
    let mem = HeapRing::new(geo);
    let ring = mem.producer(mode, StreamId { uuid: [7; 16], cpu: 0 });
    let reader = mem.reader();
    let t0 = Instant::now();
    let clock = move || t0.elapsed().as_nanos() as u64;
    let done = AtomicBool::new(false);
    let mut packets = Vec::new();
    let mut torn = 0u64;
    let (mut accepted, mut lost) = (0u64, 0u64);
    let mut closed_last = false;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let ring = &ring;
                s.spawn(move || {
                    let sink = RingSink { ring, clock };
                    let mut buf = [0; 64];
                    let (mut ok, mut lost) = (0u64, 0u64);
                    for n in 0..per_writer {
                        match test_events::seq(&sink, w, n, pad(w, n, &mut buf)) {
                            Ok(()) => ok += 1,
                            Err(RecordError::Closed | RecordError::TooBig) => panic!("the ring is open, records fit"),
                            Err(_) => lost += 1,
                        }
                        if n % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                    (ok, lost)
                })
            })
            .collect();
        let consumer = s.spawn(|| consume(&reader, &done, &mut packets, &mut torn));
        for h in handles {
            let (ok, l) = h.join().unwrap();
            (accepted, lost) = (accepted + ok, lost + l);
        }
        ring.close();
        assert!(ring.is_quiescent(), "all writers joined, yet a record is uncommitted");
        closed_last = ring.flush(&clock);
        done.store(true, Ordering::Release);
        consumer.join().unwrap();
    });
    let c = ring.counters();
    // `accepted + lost` is every record emitted (each writer's loop counts
    // each outcome once): the independent count the ring's are checked against.
    let checked = check_accounting(mode, &packets, writers as usize, accepted, lost, torn, &c);
    // A packet closed by the final flush (after every writer joined) carries
    // the final loss count (overwritten records excepted: they leave a
    // sequence gap instead). If the ring ended full at a sub-buffer boundary,
    // there was nothing to flush and losses after the last packet are in no
    // packet: that is what the consumer's trailer packet is for.
    if closed_last {
        assert_eq!(
            checked.last_discarded,
            c.events_discarded(),
            "the flushed last packet carries the final loss count"
        );
    } else {
        assert!(checked.last_discarded <= c.events_discarded());
    }
    eprintln!(
        "{mode:?} {writers}x{per_writer}: recorded {} discarded {} ({c:?}) torn {torn}",
        checked.records, c.discarded
    );
}

/// Decodes every packet (each record intact, per-writer order, timestamps)
/// and checks the loss accounting against what the writers saw (`accepted`
/// and `refused` records): recorded + discarded == emitted; the refusals
/// are exactly the counted full/busy/too-big losses; the records accepted
/// but not read are exactly the overwritten ones (none in discard mode).
fn check_accounting(
    mode: Mode,
    packets: &[Vec<u8>],
    writers: usize,
    accepted: u64,
    refused: u64,
    torn: u64,
    c: &RingCounters,
) -> common::Checked {
    let checked = check_packets(packets, writers);
    assert_eq!(
        checked.records + c.discarded,
        accepted + refused,
        "{mode:?}: recorded {} + discarded {} != emitted {} (torn copies {torn}, counters {c:?})",
        checked.records,
        c.discarded,
        accepted + refused
    );
    assert_eq!(c.events_discarded(), refused, "{mode:?}: refusals counted {c:?}");
    assert_eq!(c.overwritten, accepted - checked.records, "{mode:?}: accepted but not read {c:?}");
    if mode == Mode::Discard {
        assert_eq!((checked.records, c.overwritten, torn), (accepted, 0, 0));
    }
    checked
}

#[test]
fn discard_mode_many_writers_tiny_ring() {
    run(Mode::Discard, 4, 20_000, Geometry::new(4096, 4).unwrap());
}

#[test]
fn overwrite_mode_many_writers_tiny_ring() {
    run(Mode::Overwrite, 4, 20_000, Geometry::new(4096, 4).unwrap());
}

#[test]
fn discard_mode_two_writers_roomy_ring_loses_nothing_when_read() {
    run(Mode::Discard, 2, 5_000, Geometry::new(1 << 16, 16).unwrap());
}

#[test]
fn too_big_records_are_refused_and_counted() {
    let geo = Geometry::new(4096, 2).unwrap();
    let mem = HeapRing::new(geo);
    let ring = mem.producer(Mode::Discard, StreamId { uuid: [0; 16], cpu: 3 });
    let sink = RingSink { ring: &ring, clock: || 1u64 };
    let big = vec![1u8; 5000];
    assert_eq!(test_events::seq(&sink, 0, 0, &big), Err(RecordError::TooBig));
    assert_eq!(sink.record(0, 4096, |_| {}), Err(RecordError::TooBig));
    let c = ring.counters();
    assert_eq!((c.discarded_too_big, c.discarded), (2, 2));
}

#[test]
fn a_full_ring_refuses_records_without_reading_the_clock() {
    let geo = Geometry::new(4096, 2).unwrap();
    let mem = HeapRing::new(geo);
    let ring = mem.producer(Mode::Discard, StreamId { uuid: [0; 16], cpu: 0 });
    let reads = std::cell::Cell::new(0u64);
    let clock = || {
        reads.set(reads.get() + 1);
        reads.get()
    };
    let sink = RingSink { ring: &ring, clock };
    // No consumer: the ring fills, then refuses.
    let mut n = 0;
    while test_events::seq(&sink, 0, n, b"x").is_ok() {
        n += 1;
    }
    assert!(n > 100, "{n} records fit in 8 KiB");
    let before = reads.get();
    for k in 0..100 {
        assert_eq!(test_events::seq(&sink, 0, k, b"x"), Err(RecordError::Full));
    }
    assert_eq!(reads.get(), before, "a refused record must not pay for a timestamp");
    let c = ring.counters();
    assert_eq!((c.discarded_full, c.discarded), (101, 101));
}

/// Registers the process for the heavy barrier; `false` (after a loud
/// message) when the kernel or a seccomp filter refuses.
fn membarrier_available(test: &str) -> bool {
    match hvtrace_sys::membarrier::register() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIP {test}: membarrier unavailable ({e})");
            false
        }
    }
}

/// Takes the ring from its owner: REVOKED, the heavy barrier, then wait
/// while the owner is inside a fast-path record. Returns whether it waited.
fn revoke(ring: &Ring<'_>) -> bool {
    assert!(ring.revoke_owner(), "the ring is owned");
    hvtrace_sys::membarrier::barrier().expect("membarrier (registered)");
    let mut waited = false;
    let t0 = Instant::now();
    while ring.owner_busy() {
        waited = true;
        assert!(t0.elapsed() < HANG, "the owner stayed busy for {HANG:?}");
        std::hint::spin_loop();
    }
    waited
}

/// Longest wait for the owner or for quiescence before calling the ring broken.
const HANG: Duration = Duration::from_secs(20);

/// The owner's sink, which notes the records that took the fast path (their
/// payload is written with `owner_busy` set) and, every 256th of them,
/// dawdles 50 µs (longer than a `membarrier`) in the middle of the payload,
/// so that revokers find the owner busy and must wait for it.
struct SlowFill<'r, 'a, S> {
    inner: S,
    ring: &'r Ring<'a>,
    fast: std::cell::Cell<u64>,
}

impl<S: Sink> Sink for SlowFill<'_, '_, S> {
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        self.inner.record(id, len, |e| {
            fill(e);
            if self.ring.owner_busy() {
                let n = self.fast.get();
                self.fast.set(n + 1);
                let t = Instant::now();
                while n.is_multiple_of(256) && t.elapsed() < Duration::from_micros(50) {
                    std::hint::spin_loop();
                }
            }
        })
    }
}

/// Sets its flag when dropped (also while unwinding).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Drains `reader` until `done` is set and nothing is left.
fn consume(reader: &RingReader<'_>, done: &AtomicBool, packets: &mut Vec<Vec<u8>>, torn: &mut u64) {
    let mut copy = vec![0u8; reader.geometry().subbuf_size as usize];
    loop {
        let finished = done.load(Ordering::Acquire);
        match reader.next_packet() {
            Poll::Ready(p) => {
                reader.copy_packet(&p, &mut copy);
                if reader.release(&p) {
                    packets.push(copy.clone());
                } else {
                    *torn += 1;
                }
            }
            Poll::Empty if finished => break,
            Poll::Empty => std::thread::yield_now(),
        }
    }
}

/// One owner records `records` events on an owned ring; a controlling thread
/// takes the ring back (revoke, membarrier, wait) to flush it and gives it
/// back, over and over, then stops it (revoke, close, quiescence, flush)
/// once the owner is three quarters through, racing its last records; a
/// consumer reads throughout.
fn run_owned(mode: Mode, records: u64, geo: Geometry, test: &str) {
    if !membarrier_available(test) {
        return;
    }
    // One owned-ring test at a time: with more busy threads than CPUs, threads
    // switch mostly where they yield, and revokers seldom find the owner busy.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mem = HeapRing::new(geo);
    let ring = mem.producer(mode, StreamId { uuid: [7; 16], cpu: 0 });
    // SAFETY: no writer has seen the ring yet.
    unsafe { ring.make_owned() };
    let reader = mem.reader();
    let t0 = Instant::now();
    let clock = move || t0.elapsed().as_nanos() as u64;
    let done = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let (mut packets, mut torn) = (Vec::new(), 0u64);
    let (mut ok, mut lost, mut closed, mut fast) = (Vec::new(), 0u64, 0u64, 0u64);
    let (mut cycles, mut waits) = (0u64, 0u64);
    std::thread::scope(|s| {
        let owner = s.spawn(|| {
            // SAFETY: this thread is the ring's only owner.
            let owner = unsafe { ring.owner() };
            let sink = SlowFill { inner: OwnerSink { owner: &owner, clock }, ring: &ring, fast: Default::default() };
            let mut buf = [0; 64];
            let (mut ok, mut lost, mut closed) = (Vec::new(), 0u64, 0u64);
            for n in 0..records {
                match test_events::seq(&sink, 0, n, pad(0, n, &mut buf)) {
                    Ok(()) => ok.push(n),
                    Err(RecordError::Closed) => closed += 1,
                    Err(RecordError::TooBig) => panic!("records fit"),
                    Err(e) => {
                        lost += 1;
                        if e == RecordError::Full {
                            // Let the consumer catch up (the CPUs may be shared).
                            std::thread::yield_now();
                        }
                    }
                }
                progress.store(n + 1, Ordering::Relaxed);
                if n.is_multiple_of(1024) {
                    std::thread::yield_now();
                }
            }
            (ok, lost, closed, sink.fast.get())
        });
        let consumer = s.spawn(|| consume(&reader, &done, &mut packets, &mut torn));
        // Lets the consumer finish even when an assertion below fails.
        let _done = SetOnDrop(&done);
        // Flush while running, until the owner is three quarters through.
        while progress.load(Ordering::Relaxed) < records / 4 * 3 {
            waits += revoke(&ring) as u64;
            ring.flush(&clock);
            ring.restore_owner();
            cycles += 1;
            // Leave the owner its fast path for a while (0 to 30 µs).
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(cycles % 4 * 10) {
                std::hint::spin_loop();
            }
        }
        // Stop, racing the owner's last records.
        waits += revoke(&ring) as u64;
        ring.close();
        let t0 = Instant::now();
        while !ring.is_quiescent() {
            assert!(t0.elapsed() < HANG, "not quiescent after {HANG:?}: a commit was lost");
            std::hint::spin_loop();
        }
        let q = ring.counters();
        ring.flush(&clock);
        let c = ring.counters();
        let sbs = geo.subbuf_size;
        assert_eq!(c.produced_bytes, q.produced_bytes.div_ceil(sbs) * sbs, "write moved after quiescence");
        (ok, lost, closed, fast) = owner.join().unwrap();
        let after = ring.counters();
        assert_eq!(
            RingCounters { consumed_bytes: 0, ..after },
            RingCounters { consumed_bytes: 0, ..c },
            "the owner changed the ring after the stop"
        );
        drop(_done);
        consumer.join().unwrap();
    });
    let c = ring.counters();
    let checked = check_accounting(mode, &packets, 1, ok.len() as u64, lost, torn, &c);
    assert_eq!(c.produced_bytes, c.delivered_subbufs * geo.subbuf_size, "every reserved packet delivered");
    match mode {
        Mode::Discard => assert_eq!(checked.per_writer[0], ok, "the records read are exactly those accepted"),
        Mode::Overwrite => {
            assert!(checked.per_writer[0].iter().all(|n| ok.binary_search(n).is_ok()), "read a record never accepted")
        }
    }
    // Refused as closed only after the stop, and from then on: the last ones.
    assert!(ok.iter().all(|&n| n < records - closed), "a record accepted after one refused as closed");
    eprintln!(
        "{mode:?} owned 1x{records}: accepted {} ({fast} on the fast path) lost {lost} refused after stop {closed}, \
         read {}, {cycles} flush cycles ({waits} waited for a busy owner), torn {torn}, {c:?}",
        ok.len(),
        checked.records
    );
}

#[test]
fn discard_mode_owned_ring_revoked_and_flushed_while_recording() {
    run_owned(Mode::Discard, 1_000_000, Geometry::new(4096, 4).unwrap(), "discard_mode_owned_ring");
}

#[test]
fn overwrite_mode_owned_ring_revoked_and_flushed_while_recording() {
    run_owned(Mode::Overwrite, 1_000_000, Geometry::new(4096, 4).unwrap(), "overwrite_mode_owned_ring");
}

/// Other writers are refused while the ring has an owner (and counted as
/// `discarded_busy`); after `disown` they record again, and so does the
/// former owner, through the shared protocol.
#[test]
fn owned_ring_refuses_other_writers_until_disowned() {
    let geo = Geometry::new(4096, 2).unwrap();
    let mem = HeapRing::new(geo);
    let ring = mem.producer(Mode::Discard, StreamId { uuid: [0; 16], cpu: 0 });
    // SAFETY: no writer has seen the ring yet.
    unsafe { ring.make_owned() };
    // SAFETY: this thread is the only owner.
    let owner = unsafe { ring.owner() };
    let tick = AtomicU64::new(1);
    let clock = || tick.fetch_add(1, Ordering::Relaxed);
    let owner_sink = OwnerSink { owner: &owner, clock };
    let other = RingSink { ring: &ring, clock };
    let mut buf = [0; 64];
    assert!(ring.owner_active());
    test_events::seq(&owner_sink, 0, 0, pad(0, 0, &mut buf)).unwrap();
    test_events::seq(&owner_sink, 0, 1, pad(0, 1, &mut buf)).unwrap();
    assert_eq!(test_events::seq(&other, 1, 0, pad(1, 0, &mut buf)), Err(RecordError::Busy));
    let c = ring.counters();
    assert_eq!((c.discarded_busy, c.discarded), (1, 1), "{c:?}");
    // Revoked, the ring still refuses other writers: it still has an owner.
    assert!(ring.revoke_owner());
    assert!(!ring.owner_active() && !ring.owner_busy());
    assert_eq!(test_events::seq(&other, 1, 1, pad(1, 1, &mut buf)), Err(RecordError::Busy));
    // ... and its owner records through the shared protocol meanwhile.
    test_events::seq(&owner_sink, 0, 2, pad(0, 2, &mut buf)).unwrap();
    ring.restore_owner();
    assert!(ring.owner_active());
    ring.disown();
    assert!(!ring.owner_active());
    assert!(!ring.revoke_owner(), "no owner any more");
    ring.restore_owner();
    test_events::seq(&other, 1, 2, pad(1, 2, &mut buf)).unwrap();
    test_events::seq(&owner_sink, 0, 3, pad(0, 3, &mut buf)).unwrap();
    test_events::seq(&other, 1, 3, pad(1, 3, &mut buf)).unwrap();
    assert!(ring.flush(&clock));
    let c = ring.counters();
    assert_eq!((c.discarded_busy, c.discarded), (2, 2), "{c:?}");
    let reader = mem.reader();
    let (mut packets, mut torn) = (Vec::new(), 0);
    consume(&reader, &AtomicBool::new(true), &mut packets, &mut torn);
    let checked = check_packets(&packets, 2);
    assert_eq!(checked.per_writer, [vec![0, 1, 2, 3], vec![2, 3]]);
    assert_eq!(checked.last_discarded, 2);
}

/// Touching an owned ring without taking it from its owner first is a bug
/// in the caller, caught before it can corrupt the ring.
#[test]
#[should_panic(expected = "without revoke_owner first")]
fn flush_of_an_owned_ring_without_revoke_panics() {
    let mem = HeapRing::new(Geometry::new(4096, 2).unwrap());
    let ring = mem.producer(Mode::Discard, StreamId { uuid: [0; 16], cpu: 0 });
    // SAFETY: no writer has seen the ring yet.
    unsafe { ring.make_owned() };
    ring.flush(&|| 1u64);
}
