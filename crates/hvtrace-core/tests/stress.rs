//! N writers x M records on a small ring, a consumer reading concurrently:
//! every record read is intact, timestamps never go backwards, and
//! recorded + discarded == emitted exactly, in both modes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::{check_packets, pad, test_events};
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{Geometry, Mode, Poll, RecordError, RingSink, Sink, StreamId};

fn run(mode: Mode, writers: u32, per_writer: u64, geo: Geometry) {
    let mem = HeapRing::new(geo);
    let ring = mem.producer(mode, StreamId { uuid: [7; 16], cpu: 0 });
    let reader = mem.reader();
    let t0 = Instant::now();
    let clock = move || t0.elapsed().as_nanos() as u64;
    let done = AtomicBool::new(false);
    let mut packets = Vec::new();
    let mut torn = 0u64;
    let mut emitted = 0u64;
    let mut closed_last = false;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let ring = &ring;
                s.spawn(move || {
                    let sink = RingSink { ring, clock };
                    let mut buf = [0; 64];
                    for n in 0..per_writer {
                        let _ = test_events::seq(&sink, w, n, pad(w, n, &mut buf));
                        if n % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                    per_writer
                })
            })
            .collect();
        let consumer = s.spawn(|| {
            let mut copy = vec![0u8; geo.subbuf_size as usize];
            loop {
                let finished = done.load(Ordering::Acquire);
                match reader.next_packet() {
                    Poll::Ready(p) => {
                        reader.copy_packet(&p, &mut copy);
                        if reader.release(&p) {
                            packets.push(copy.clone());
                        } else {
                            torn += 1;
                        }
                    }
                    Poll::Empty if finished => break,
                    Poll::Empty => std::thread::yield_now(),
                }
            }
        });
        for h in handles {
            emitted += h.join().unwrap();
        }
        ring.close();
        assert!(ring.is_quiescent(), "all writers joined, yet a record is uncommitted");
        closed_last = ring.flush(&clock);
        done.store(true, Ordering::Release);
        consumer.join().unwrap();
    });
    let c = ring.counters();
    let checked = check_packets(&packets, writers as usize);
    assert_eq!(
        checked.records + c.discarded,
        emitted,
        "{mode:?}: recorded {} + discarded {} != emitted {emitted} (torn copies {torn}, counters {c:?})",
        checked.records,
        c.discarded
    );
    assert_eq!(c.discarded, c.discarded_full + c.discarded_busy + c.discarded_too_big + c.overwritten);
    // A packet closed by the final flush (after every writer joined) carries
    // the final loss count. If the ring ended full at a sub-buffer boundary,
    // there was nothing to flush and losses after the last packet are in no
    // packet: that is what the consumer's trailer packet is for.
    if closed_last {
        assert_eq!(checked.last_discarded, c.discarded, "the flushed last packet carries the final loss count");
    } else {
        assert!(checked.last_discarded <= c.discarded);
    }
    eprintln!(
        "{mode:?} {writers}x{per_writer}: recorded {} discarded {} ({c:?}) torn {torn}",
        checked.records, c.discarded
    );
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
