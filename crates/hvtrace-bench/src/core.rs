//! `hvtrace-bench core`: the producer core alone (no host, no syscall):
//! one heap ring per thread, `Ring::record` with the TSC as clock, an
//! in-process drainer thread releasing packets every millisecond; or the
//! discard path of a full ring; or the floor (TSC read + 24-byte store).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{Geometry, Mode, Poll, RingSink, StreamId};

use crate::util::{self, EventKind, Load};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum What {
    /// `Ring::record` into a ring kept drained by a consumer thread.
    Core,
    /// `Ring::record` into a full ring (every event dropped: the discard path).
    CoreFull,
    /// TSC read + 24-byte store into a 4 MiB per-thread buffer (Rust twin of bench/lttng-ust/floor.c).
    Floor,
}

/// Arguments of `hvtrace-bench core`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "core")]
    what: What,
    // Thread i records into ring i.
    #[command(flatten)]
    load: Load,
    /// Event recorded.
    #[arg(long, value_enum, default_value = "full")]
    event: EventKind,
    /// Ring mode.
    #[arg(long, default_value = "discard")]
    mode: hvtrace_proto::Mode,
    /// Sub-buffer size in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    subbuf_size: u64,
    /// Sub-buffers per ring.
    #[arg(long, default_value_t = 8)]
    num_subbuf: u64,
}

const FLOOR_BUF: usize = 4 << 20;

pub(crate) fn run(a: Args) -> Result<()> {
    let load = a.load;
    let geo = Geometry::new(a.subbuf_size, a.num_subbuf).map_err(|e| anyhow::anyhow!("geometry: {e}"))?;
    let mode = match a.mode {
        hvtrace_proto::Mode::Discard => Mode::Discard,
        hvtrace_proto::Mode::Overwrite => Mode::Overwrite,
    };
    let la = util::loadavg();
    let (rs, discarded) = match a.what {
        What::Floor => {
            let rs = util::run_threads(load, |_| {
                let mut buf = vec![0u8; FLOOR_BUF];
                let mut off = 0usize;
                Box::new(move |first, n| {
                    for i in first..first + n {
                        let mut r = [0u8; 24];
                        r[..8].copy_from_slice(&util::rdtsc().to_le_bytes());
                        r[8..12].copy_from_slice(&1u32.to_le_bytes());
                        r[12..16].copy_from_slice(&(i as i32).to_le_bytes());
                        r[16..].copy_from_slice(&i.to_le_bytes());
                        buf[off..off + 24].copy_from_slice(&r);
                        off += 24;
                        if off > FLOOR_BUF - 24 {
                            off = 0;
                        }
                    }
                    std::hint::black_box(&mut buf);
                    0
                })
            });
            (rs, 0)
        }
        What::Core | What::CoreFull => {
            let heaps: Vec<HeapRing> = (0..a.load.threads).map(|_| HeapRing::new(geo)).collect();
            let rings: Vec<_> = heaps
                .iter()
                .enumerate()
                .map(|(i, h)| h.producer(mode, StreamId { uuid: [7; 16], cpu: i as u32 }))
                .collect();
            let readers: Vec<_> = heaps.iter().map(|h| h.reader()).collect();
            let clock = util::rdtsc;
            if a.what == What::CoreFull {
                // Fill every ring (no consumer): from now on each record is refused.
                for r in &rings {
                    let s = RingSink { ring: r, clock };
                    while util::emit(&s, a.event, 0, 1) == 0 {}
                }
            }
            let stop = AtomicBool::new(false);
            let rs = std::thread::scope(|sc| {
                if a.what == What::Core {
                    sc.spawn(|| {
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(1));
                            for r in &readers {
                                while let Poll::Ready(p) = r.next_packet() {
                                    r.release(&p);
                                }
                            }
                        }
                    });
                }
                let rs = util::run_threads(load, |i| {
                    let s = RingSink { ring: &rings[i], clock };
                    let kind = a.event;
                    Box::new(move |first, n| util::emit(&s, kind, first, n))
                });
                stop.store(true, Ordering::Relaxed);
                rs
            });
            (rs, rings.iter().map(|r| r.counters().discarded).sum::<u64>())
        }
    };
    let mut j = util::thread_summary(load, &rs);
    let o = j.as_object_mut().unwrap();
    o.insert("tracer".into(), format!("{:?}", a.what).to_lowercase().into());
    o.insert("event".into(), serde_json::to_value(a.event)?);
    o.insert("mode".into(), a.mode.to_string().into());
    o.insert("events_discarded".into(), discarded.into());
    o.insert("loadavg".into(), la.into());
    println!("{}", serde_json::to_string(&j)?);
    Ok(())
}
