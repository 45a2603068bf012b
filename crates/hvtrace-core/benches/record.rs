//! Cost of one event on the producer core: `Ring::record` of (i32, u64,
//! "hello") with the TSC as clock, 1 and 2 threads pinned, discard mode,
//! the ring kept drained by a consumer thread that releases packets every
//! millisecond; then the discard path alone (a full ring refuses every
//! record); and, in the same run, the floor: a TSC read + a 24-byte store.
//!
//! `cargo bench -p hvtrace-core --bench record`. With 2 threads a sample's
//! time is the mean of the two threads' times, so the figure stays per event
//! per thread (perfect scaling = the 1-thread figure).
//! The host path (`hvtrace_host::Writer`) is measured by `scripts/bench`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{Geometry, Mode, OwnerSink, Poll, RecordError, Ring, RingReader, RingSink, StreamId};

hvtrace_core::events! {
    /// Same payload as bench/lttng-ust's `hvbench:event`.
    mod hvbench ("hvbench") {
        /// (int32, uint64, "hello").
        fn event(a: i32, b: u64, s: &str);
    }
}

#[inline]
fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

fn pin(i: usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Err(e) = hvtrace_sys::cpu::pin_current_thread(i % n) {
        eprintln!("note: cannot pin a bench thread to CPU {} ({e}): figures are unpinned", i % n);
    }
}

/// 4 MiB x 8, as in the LTTng-UST comparison.
fn geo() -> Geometry {
    Geometry::new(4 << 20, 8).unwrap()
}

/// Runs `iters` records on each of `threads` pinned threads (one ring each) and
/// returns the mean per-thread time. `drained`: a consumer thread releases packets.
/// `owned`: each thread is its ring's owner (single-writer fast path).
fn run_rings(readers: &[RingReader<'_>], rings: &[Ring<'_>], iters: u64, drained: bool, owned: bool) -> Duration {
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(rings.len());
    std::thread::scope(|s| {
        if drained {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                    for r in readers {
                        while let Poll::Ready(p) = r.next_packet() {
                            r.release(&p);
                        }
                    }
                }
            });
        }
        let hs: Vec<_> = rings
            .iter()
            .enumerate()
            .map(|(i, ring)| {
                let barrier = &barrier;
                s.spawn(move || {
                    pin(i);
                    if owned {
                        // SAFETY: one owner per ring: this thread is its only writer.
                        let owner = unsafe { ring.owner() };
                        let sink = OwnerSink { owner: &owner, clock: tsc };
                        barrier.wait();
                        let t0 = Instant::now();
                        for k in 0..iters {
                            let _: Result<(), RecordError> = black_box(hvbench::event(&sink, k as i32, k, "hello"));
                        }
                        return t0.elapsed();
                    }
                    let sink = RingSink { ring, clock: tsc };
                    barrier.wait();
                    let t0 = Instant::now();
                    for k in 0..iters {
                        let _: Result<(), RecordError> = black_box(hvbench::event(&sink, k as i32, k, "hello"));
                    }
                    t0.elapsed()
                })
            })
            .collect();
        let total: Duration = hs.into_iter().map(|h| h.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        total / rings.len() as u32
    })
}

fn record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    for threads in [1usize, 2] {
        let heaps: Vec<HeapRing> = (0..threads).map(|_| HeapRing::new(geo())).collect();
        let rings: Vec<Ring<'_>> = heaps
            .iter()
            .enumerate()
            .map(|(i, h)| h.producer(Mode::Discard, StreamId { uuid: [1; 16], cpu: i as u32 }))
            .collect();
        let readers: Vec<RingReader<'_>> = heaps.iter().map(|h| h.reader()).collect();
        g.bench_function(format!("core_discard_drained/{threads}t"), |b| {
            b.iter_custom(|iters| run_rings(&readers, &rings, iters, true, false))
        });
        // The same, each thread the owner of its ring (single-writer fast path).
        let owned_heaps: Vec<HeapRing> = (0..threads).map(|_| HeapRing::new(geo())).collect();
        let owned: Vec<Ring<'_>> = owned_heaps
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let r = h.producer(Mode::Discard, StreamId { uuid: [1; 16], cpu: i as u32 });
                // SAFETY: not used by any writer yet.
                unsafe { r.make_owned() };
                r
            })
            .collect();
        let owned_readers: Vec<RingReader<'_>> = owned_heaps.iter().map(|h| h.reader()).collect();
        g.bench_function(format!("core_owned_discard_drained/{threads}t"), |b| {
            b.iter_custom(|iters| run_rings(&owned_readers, &owned, iters, true, true))
        });
        let discarded: u64 = rings.iter().map(|r| r.counters().discarded).sum();
        if discarded > 0 {
            eprintln!("note: {discarded} events discarded with {threads} thread(s): the drainer fell behind");
        }
    }
    // The discard path: a full ring (no consumer), every record refused.
    let heap = HeapRing::new(geo());
    let ring = heap.producer(Mode::Discard, StreamId { uuid: [1; 16], cpu: 0 });
    {
        let sink = RingSink { ring: &ring, clock: tsc };
        while hvbench::event(&sink, 0, 0, "hello").is_ok() {}
    }
    g.bench_function("core_discard_full_ring/1t", |b| {
        b.iter_custom(|iters| run_rings(&[], std::slice::from_ref(&ring), iters, false, false))
    });
    // The floor: TSC read + 24-byte store into a 4 MiB per-thread buffer.
    for threads in [1usize, 2] {
        g.bench_function(format!("floor/{threads}t"), |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(threads);
                std::thread::scope(|s| {
                    let hs: Vec<_> = (0..threads)
                        .map(|i| {
                            let barrier = &barrier;
                            s.spawn(move || {
                                pin(i);
                                let mut buf = vec![0u8; 4 << 20];
                                let mut off = 0usize;
                                barrier.wait();
                                let t0 = Instant::now();
                                for k in 0..iters {
                                    let mut r = [0u8; 24];
                                    r[..8].copy_from_slice(&tsc().to_le_bytes());
                                    r[8..12].copy_from_slice(&1u32.to_le_bytes());
                                    r[12..16].copy_from_slice(&(k as i32).to_le_bytes());
                                    r[16..].copy_from_slice(&k.to_le_bytes());
                                    buf[off..off + 24].copy_from_slice(&r);
                                    off += 24;
                                    if off > buf.len() - 24 {
                                        off = 0;
                                    }
                                }
                                let t = t0.elapsed();
                                black_box(&buf);
                                t
                            })
                        })
                        .collect();
                    let total: Duration = hs.into_iter().map(|h| h.join().unwrap()).sum();
                    total / threads as u32
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = record
}
criterion_main!(benches);
