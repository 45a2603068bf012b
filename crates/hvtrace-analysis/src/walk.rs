//! One pass over a trace: each stream's packets a window at a time, its
//! records merged by timestamp across streams when the model needs
//! cross-CPU order (a vCPU may move between pCPUs), fed to the accumulators.

use hvtrace_core::decode::Record;
use hvtrace_model::{Bindings, Event};
use hvtrace_reader::{Layouts, PacketReader, ReadError, RecordFields, TraceDir};

use crate::acc::{Acc, Window};
use crate::report::Clock;

/// A record of the current packet: where its payload is in the packet.
#[derive(Clone, Copy)]
struct Rec {
    ts: u64,
    id: u32,
    offset: u32,
    compact: bool,
    start: u32,
    len: u32,
}

/// Why a pass stopped early.
pub(crate) enum Stop {
    /// A packet or record that does not decode: rerun on the intact packets.
    Damage { stream: String, offset: u64, what: String },
    /// The trace cannot be read.
    Read(ReadError),
}

/// One stream's walk.
struct Cursor {
    name: String,
    cpu: u32,
    reader: PacketReader,
    recs: Vec<Rec>,
    next: usize,
    /// Cumulative `events_discarded` so far.
    discarded: u64,
    /// A loss before the next record: since when (the last record), how many.
    pending_loss: Option<(Option<u64>, u64)>,
    last_ts: Option<u64>,
    last_seq: Option<u64>,
    events: u64,
    packets: u64,
}

impl Cursor {
    /// Loads the next packet that holds records; `false` at the end.
    fn load(&mut self, schema: &Layouts) -> Result<bool, Stop> {
        loop {
            let p = match self.reader.next_packet() {
                None => return Ok(false),
                Some(Err(source)) => {
                    return Err(Stop::Read(ReadError::Io { path: self.name.clone().into(), what: "read", source }))
                }
                Some(Ok(Err(e))) => {
                    return Err(Stop::Damage {
                        stream: self.name.clone(),
                        offset: e.offset as u64,
                        what: e.error.to_string(),
                    })
                }
                Some(Ok(Ok(p))) => p,
            };
            self.packets += 1;
            // A packet that does not follow the previous one (the ones
            // between were damaged and skipped) is a gap of unknown count.
            let skipped = self.last_seq.is_some_and(|s| p.info.seq != s.wrapping_add(1));
            self.last_seq = Some(p.info.seq);
            let lost = p.info.events_discarded.saturating_sub(self.discarded);
            self.discarded = self.discarded.max(p.info.events_discarded);
            if lost > 0 || skipped {
                let (since, n) = self.pending_loss.unwrap_or((self.last_ts, 0));
                self.pending_loss = Some((since, n + lost));
            }
            self.recs.clear();
            self.next = 0;
            let base = p.bytes.as_ptr() as usize;
            for r in p.records(schema) {
                let r = r.map_err(|e| Stop::Damage {
                    stream: self.name.clone(),
                    offset: p.offset as u64,
                    what: format!("packet at byte {}: {e}", p.offset),
                })?;
                let start = (r.payload.as_ptr() as usize - base) as u32;
                self.recs.push(Rec {
                    ts: r.timestamp,
                    id: r.id,
                    offset: r.offset as u32,
                    compact: r.compact,
                    start,
                    len: r.payload.len() as u32,
                });
            }
            if !self.recs.is_empty() {
                return Ok(true);
            }
        }
    }

    #[inline]
    fn head(&self) -> Option<u64> {
        self.recs.get(self.next).map(|r| r.ts)
    }
}

/// Per stream, what the generic analyses count.
pub(crate) struct StreamCounts {
    pub name: String,
    pub cpu: u32,
    pub events: u64,
    pub packets: u64,
    pub discarded: u64,
}

/// The outcome of a pass.
pub(crate) struct Pass {
    pub acc: Acc,
    pub begin: u64,
    pub end: u64,
    pub events: u64,
    pub by_class: Vec<u64>,
    pub streams: Vec<StreamCounts>,
}

/// Where the window starts and ends, relative to the first record, in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Range {
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// Walks the trace once. `only[i]`, if given, lists the intact packets of
/// stream `i` (the rest is skipped). `progress(done, total)` gets bytes.
pub(crate) fn pass(
    trace: &TraceDir,
    bindings: &Bindings,
    only: Option<Vec<Vec<(u64, u64)>>>,
    range: Range,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Pass, Stop> {
    let schema = trace.schema();
    let layouts = Layouts::new(schema);
    let mut only = only.map(|o| o.into_iter());
    let mut cursors = Vec::new();
    for s in &trace.streams {
        let mut reader = PacketReader::open(&s.path).map_err(Stop::Read)?;
        if let Some(o) = only.as_mut() {
            reader = reader.only(o.next().unwrap_or_default());
        }
        cursors.push(Cursor {
            name: s.name.clone(),
            cpu: s.cpu,
            reader,
            recs: Vec::new(),
            next: 0,
            discarded: 0,
            pending_loss: None,
            last_ts: None,
            last_seq: None,
            events: 0,
            packets: 0,
        });
    }
    let total: u64 = cursors.iter().map(|c| c.reader.len()).sum();
    for c in &mut cursors {
        c.load(&layouts)?;
    }
    let begin = cursors.iter().filter_map(Cursor::head).min().unwrap_or(0);
    let window = Window {
        from: begin.saturating_add(range.from.unwrap_or(0)),
        to: range.to.map_or(u64::MAX, |t| begin.saturating_add(t)),
    };
    let mut acc = Acc::new(window, Clock(trace.metadata.clock.freq.max(1)));
    let mut by_class = vec![0u64; schema.events.len()];
    let (mut events, mut end) = (0u64, begin);
    // Cross-CPU order only matters to the model; counting does not need it.
    let merge = !bindings.is_empty();
    let mut current = 0;
    let mut done = 0u64;
    loop {
        let i = if merge {
            let mut best: Option<(usize, u64)> = None;
            for (i, c) in cursors.iter().enumerate() {
                if let Some(ts) = c.head() {
                    if best.is_none_or(|(_, b)| ts < b) {
                        best = Some((i, ts));
                    }
                }
            }
            match best {
                Some((i, _)) => i,
                None => break,
            }
        } else {
            while current < cursors.len() && cursors[current].head().is_none() {
                current += 1;
            }
            if current == cursors.len() {
                break;
            }
            current
        };
        let c = &mut cursors[i];
        let rec = c.recs[c.next];
        let (ts, cpu) = (rec.ts, c.cpu);
        if let Some((since, n)) = c.pending_loss.take() {
            acc.loss(cpu, since.unwrap_or(ts), ts, n);
        }
        if window.holds(ts) {
            events += 1;
            c.events += 1;
            if let Some(n) = by_class.get_mut(rec.id as usize) {
                *n += 1;
            }
        }
        end = end.max(ts);
        if bindings.maps(rec.id) {
            let bytes = c.reader.current();
            let record = Record {
                offset: rec.offset as usize,
                id: rec.id,
                timestamp: ts,
                compact: rec.compact,
                payload: &bytes[rec.start as usize..(rec.start + rec.len) as usize],
            };
            let fields = RecordFields::new(&layouts, &record);
            let last = c.last_ts;
            let mut pcpu = cpu;
            bindings.map(rec.id, &fields, &mut |e| match e {
                Event::OnPcpu { pcpu: p } => pcpu = p,
                Event::Lost { count } => {
                    acc.lost_in_band += count;
                    acc.loss(pcpu, last.unwrap_or(ts), ts, count);
                }
                e => acc.event(pcpu, ts, e),
            });
        }
        c.last_ts = Some(ts);
        c.next += 1;
        if c.next == c.recs.len() {
            let before = c.reader.position();
            c.load(&layouts)?;
            done += c.reader.position() - before;
            progress(done, total);
        }
    }
    for c in &mut cursors {
        if let Some((since, n)) = c.pending_loss.take() {
            acc.loss(c.cpu, since.unwrap_or(end), end, n);
        }
    }
    acc.finish(end.min(window.to));
    let streams = cursors
        .into_iter()
        .map(|c| StreamCounts {
            name: c.name,
            cpu: c.cpu,
            events: c.events,
            packets: c.packets,
            discarded: c.discarded,
        })
        .collect();
    Ok(Pass { acc, begin, end, events, by_class, streams })
}
