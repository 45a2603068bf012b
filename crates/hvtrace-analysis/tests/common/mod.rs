//! Traces written by script: each CPU's records go through a real ring
//! (hvtrace-core's heap ring, the producer and consumer code a live session
//! runs) with a clock the script sets, so every time is known exactly; the
//! delivered packets are written to `channel0_<cpu>` beside the metadata.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::path::Path;

use hvtrace_core::decode::packet_info;
use hvtrace_core::metadata::{render, ClockDesc, TraceDesc};
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{EventDesc, Geometry, Mode, Poll, RecordError, RingReader, RingSink, StreamId};

pub const UUID: [u8; 16] = [0x5c; 16];

/// The clock: whatever the script last set (ns; the metadata says 1 GHz).
pub struct ScriptClock<'a>(pub &'a Cell<u64>);

impl hvtrace_core::Clock for ScriptClock<'_> {
    fn now(&self) -> u64 {
        self.0.get()
    }
}

/// One CPU's recording: set the time with [`Cpu::at`], record through
/// [`Cpu::sink`], hand delivered packets to the stream file with [`Cpu::drain`].
pub struct Cpu<'a> {
    t: &'a Cell<u64>,
    pub sink: &'a RingSink<'a, 'a, ScriptClock<'a>>,
    reader: &'a RingReader<'a>,
    out: &'a RefCell<Vec<u8>>,
    subbuf: usize,
    /// Records the ring took, and refused (counted as discarded).
    pub recorded: Cell<u64>,
    pub refused: Cell<u64>,
}

impl Cpu<'_> {
    /// Sets the clock to `t` ns and returns the sink to record with.
    pub fn at(&self, t: u64) -> &RingSink<'_, '_, ScriptClock<'_>> {
        self.t.set(t);
        self.sink
    }

    /// Records at `t` ns with `f`, counting whether the ring took it.
    pub fn rec(&self, t: u64, f: impl FnOnce(&RingSink<'_, '_, ScriptClock<'_>>) -> Result<(), RecordError>) {
        match f(self.at(t)) {
            Ok(()) => self.recorded.set(self.recorded.get() + 1),
            Err(RecordError::Closed) => panic!("the ring is closed"),
            Err(_) => self.refused.set(self.refused.get() + 1),
        }
    }

    /// Moves every delivered packet to the stream file (what the consumer does).
    pub fn drain(&self) {
        let mut buf = vec![0u8; self.subbuf];
        while let Poll::Ready(p) = self.reader.next_packet() {
            self.reader.copy_packet(&p, &mut buf);
            self.reader.release(&p);
            let len = packet_info(&buf).expect("a delivered packet decodes").packet_len;
            self.out.borrow_mut().extend_from_slice(&buf[..len]);
        }
    }
}

/// Records CPU `cpu`'s stream by `script` into a ring of `geo` (discard
/// mode); the ring is flushed and drained at the end, at time `end`.
/// Returns the stream file and the records taken and refused.
pub fn record_cpu(cpu: u32, geo: Geometry, end: u64, script: impl FnOnce(&Cpu<'_>)) -> (Vec<u8>, u64, u64) {
    let mem = HeapRing::new(geo);
    let ring = mem.producer(Mode::Discard, StreamId { uuid: UUID, cpu });
    let reader = mem.reader();
    let t = Cell::new(0);
    let sink = RingSink { ring: &ring, clock: ScriptClock(&t) };
    let out = RefCell::new(Vec::new());
    let (recorded, refused) = {
        let c = Cpu {
            t: &t,
            sink: &sink,
            reader: &reader,
            out: &out,
            subbuf: geo.subbuf_size as usize,
            recorded: Cell::new(0),
            refused: Cell::new(0),
        };
        script(&c);
        t.set(end);
        ring.flush(&sink.clock);
        c.drain();
        (c.recorded.get(), c.refused.get())
    };
    // As the consumer does: losses after the last packet go in an empty trailer.
    let mut out = out.into_inner();
    let last = hvtrace_reader::packets(&out).filter_map(Result::ok).last().map(|p| p.info);
    let discarded = ring.counters().discarded;
    if discarded > last.map_or(0, |l| l.events_discarded) {
        let (seq, ts) = last.map_or((0, end), |l| (l.seq + 1, l.timestamp_end));
        out.extend_from_slice(&hvtrace_core::ctf::empty_packet(&UUID, cpu, seq, ts, discarded));
    }
    (out, recorded, refused)
}

/// Writes a trace directory: metadata for `events` at 1 GHz, one stream per CPU.
pub fn write_trace(dir: &Path, domain: &str, events: &[EventDesc], streams: &[(u32, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let clock = ClockDesc {
        name: "script",
        description: "set by the test",
        freq: 1_000_000_000,
        offset_s: 0,
        offset: 0,
        precision: 0,
    };
    let desc = TraceDesc { uuid: UUID, hostname: "test", domain, tracer_version: (0, 1, 0), clock };
    let mut md = String::new();
    render(&mut md, &desc, events).unwrap();
    std::fs::write(dir.join("metadata"), md).unwrap();
    for (cpu, bytes) in streams {
        std::fs::write(dir.join(format!("channel0_{cpu}")), bytes).unwrap();
    }
}

/// Whether babeltrace2 is installed (tests that compare with it skip loudly without).
pub fn babeltrace2() -> bool {
    std::process::Command::new("babeltrace2").arg("--version").output().is_ok_and(|o| o.status.success())
}
