//! One pass over a trace ([`hvtrace_reader::Merge`]): records in timestamp
//! order when the model needs cross-CPU order (a vCPU may move between
//! pCPUs), fed to the accumulators. The kernel's streams (stream class 1,
//! `hvtrace-ftrace`) are walked beside the VMM's, with their own ids and
//! bindings. With several threads, the pass is cut into time windows read
//! apart and merged ([`crate::parallel`]); one thread, or a trace that
//! cannot be cut, is read whole here.

use hvtrace_model::{Bindings, Event};
use hvtrace_reader::{Item, Merge, Order, ReadError, StreamWalk, TraceDir};

use crate::acc::{Acc, Window};
use crate::report::Clock;
use crate::Observer;

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
    /// Records per event id, per stream class (0 the VMM's, 1 the kernel's).
    pub by_class: [Vec<u64>; 2],
    pub streams: Vec<StreamCounts>,
    /// What the walk skipped (damage) or found wanting (a trace cut short).
    pub warnings: Vec<String>,
    /// Time windows read apart (1: the whole trace at once).
    pub windows: usize,
}

/// Where the window starts and ends, relative to the first record, in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Range {
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// Records between two progress reports.
const PROGRESS_EVERY: u32 = 1 << 16;

/// What the accumulators take from the walk.
pub(crate) trait Feed<'m> {
    /// A model event at `t` on `pcpu` (borrowed where the mapping built it: see [`hvtrace_reader::Rec::map`]).
    fn event(&mut self, pcpu: u32, t: u64, e: &Event<'m>);
    /// `count` events of `pcpu` lost between `from` and `to`.
    fn loss(&mut self, pcpu: u32, from: u64, to: u64, count: u64);
    /// In-band loss records' counts.
    fn lost_in_band(&mut self, count: u64);
}

impl<'m> Feed<'m> for Acc {
    #[inline]
    fn event(&mut self, pcpu: u32, t: u64, e: &Event<'m>) {
        Acc::event(self, pcpu, t, e);
    }
    fn loss(&mut self, pcpu: u32, from: u64, to: u64, count: u64) {
        Acc::loss(self, pcpu, from, to, count);
    }
    fn lost_in_band(&mut self, count: u64) {
        self.lost_in_band += count;
    }
}

/// What a walk (of the whole trace or of a time window) counted, beside
/// what it fed the accumulators.
pub(crate) struct Walked {
    /// The last record's time (at least the trace's first).
    pub end: u64,
    pub by_class: [Vec<u64>; 2],
    /// Records in the window, per stream.
    pub per_stream: Vec<u64>,
    pub streams: Vec<StreamWalk>,
    pub warnings: Vec<String>,
    /// Losses after the streams' last records: `(class, cpu, since,
    /// count)`, placed once the end is known.
    pub trailing: Vec<(u32, u32, Option<u64>, u64)>,
}

/// The order the model needs: cross-CPU order only matters to it; counting does not need it.
pub(crate) fn order(bindings: &[Bindings; 2]) -> Order {
    if bindings.iter().all(Bindings::is_empty) {
        Order::Streams
    } else {
        Order::Time
    }
}

/// The window `range` of a trace whose first record is at `begin`.
pub(crate) fn window(range: Range, begin: u64) -> Window {
    Window {
        from: begin.saturating_add(range.from.unwrap_or(0)),
        to: range.to.map_or(u64::MAX, |t| begin.saturating_add(t)),
    }
}

/// Feeds `merge`'s records and losses to `feed` (and shows them to
/// `observer`, times in ns by `clock`); `progress(bytes)` now and then.
/// For an observer that looks at nothing ([`Observer::sees`]), the times
/// it would be shown are not computed (a 128-bit division a record).
#[allow(clippy::too_many_arguments)]
pub(crate) fn walk<'m, F: Feed<'m>, O: Observer + ?Sized>(
    trace: &TraceDir,
    merge: &mut Merge,
    bindings: &'m [Bindings; 2],
    window: Window,
    begin: u64,
    feed: &mut F,
    progress: &mut dyn FnMut(u64),
    observer: &mut O,
) -> Result<Walked, ReadError> {
    let clock = Clock(trace.metadata.clock.freq.max(1));
    let vmm_streams = trace.streams.len();
    let class_of = |stream: usize| u32::from(stream >= vmm_streams);
    let kernel_classes = trace.metadata.kernel.as_ref().map_or(0, |k| k.events.len());
    let classes = [trace.schema().events.len(), kernel_classes];
    // Records per stream and event id in one table, one increment a record
    // (the per-stream and per-class counts are its rows and columns); the
    // last column of a row counts ids its stream class does not declare.
    let stride = classes[0].max(classes[1]) + 1;
    let streams = merge.streams().len();
    let mut counts = vec![0u64; streams * stride];
    let mut end = begin;
    let mut trailing = Vec::new();
    let mut tick = 0u32;
    let sees = observer.sees();
    let mut events = Vec::new();
    while let Some(item) = merge.next_item() {
        let r = match item? {
            Item::Lost { stream, cpu, since, at: Some(at), count } => {
                feed.loss(cpu, since.unwrap_or(at), at, count);
                observer.lost(class_of(stream), since.map(|t| clock.ns(t)), clock.ns(at), cpu, count);
                continue;
            }
            // After every record: the end is known once they are all read.
            Item::Lost { stream, cpu, since, at: None, count } => {
                trailing.push((class_of(stream), cpu, since, count));
                continue;
            }
            Item::Record(r) => r,
        };
        let (ts, id) = (r.timestamp(), r.id());
        if window.holds(ts) {
            if let Some(n) = counts.get_mut(r.stream() * stride + (id as usize).min(stride - 1)) {
                *n += 1;
            }
        }
        end = end.max(ts);
        let ns = if sees { clock.ns(ts) } else { 0 };
        let mapped = r.map(&bindings[r.class() as usize], &mut events, |pcpu, e| {
            observer.event(r.class(), ns, pcpu, *e);
            match *e {
                Event::Lost { count } => {
                    feed.lost_in_band(count);
                    feed.loss(pcpu, r.previous().unwrap_or(ts), ts, count);
                }
                _ => feed.event(pcpu, ts, e),
            }
        });
        if !mapped {
            observer.unmapped(r.class(), ns, r.cpu());
        }
        tick += 1;
        if tick == PROGRESS_EVERY {
            tick = 0;
            progress(merge.bytes_read());
        }
    }
    progress(merge.bytes_read());
    let mut by_class = classes.map(|n| vec![0u64; n]);
    let mut per_stream = vec![0u64; streams];
    for (stream, row) in counts.chunks_exact(stride).enumerate() {
        per_stream[stream] = row.iter().sum();
        let class = &mut by_class[class_of(stream) as usize];
        class.iter_mut().zip(row).for_each(|(n, k)| *n += k);
    }
    Ok(Walked {
        end,
        by_class,
        per_stream,
        streams: merge.streams().cloned().collect(),
        warnings: merge.warnings().to_vec(),
        trailing,
    })
}

/// Places the trailing losses (showing them to `observer`), closes what
/// is open and makes the pass.
pub(crate) fn finish<O: Observer + ?Sized>(
    mut acc: Acc,
    w: Walked,
    begin: u64,
    windows: usize,
    observer: &mut O,
) -> Pass {
    let clock = acc.clk;
    for &(class, cpu, since, count) in &w.trailing {
        acc.loss(cpu, since.unwrap_or(w.end), w.end, count);
        observer.lost(class, since.map(|t| clock.ns(t)), clock.ns(w.end), cpu, count);
    }
    acc.finish(w.end.min(acc.window.to));
    let streams = w
        .streams
        .into_iter()
        .zip(w.per_stream)
        .map(|(s, events)| StreamCounts {
            name: s.name,
            cpu: s.cpu,
            events,
            packets: s.packets,
            discarded: s.events_discarded,
        })
        .collect();
    Pass { acc, begin, end: w.end, by_class: w.by_class, streams, warnings: w.warnings, windows }
}

/// Walks the trace once, with the bindings of the VMM's and of the
/// kernel's event classes, on up to `threads` threads in `windows` time
/// windows (0: a default; then `observer` sees nothing: pass it only with
/// one thread). `progress(done, total)` gets bytes.
pub(crate) fn pass<O: Observer + ?Sized>(
    trace: &TraceDir,
    bindings: &[Bindings; 2],
    range: Range,
    (threads, windows): (usize, usize),
    progress: &mut dyn FnMut(u64, u64),
    observer: &mut O,
) -> Result<Pass, ReadError> {
    if threads > 1 {
        if let Some(p) = crate::parallel::pass(trace, bindings, range, threads, windows, progress) {
            return Ok(p);
        }
    }
    let mut merge = Merge::with_kernel(trace, order(bindings))?;
    let begin = merge.first_timestamp().unwrap_or(0);
    let window = window(range, begin);
    let clock = Clock(trace.metadata.clock.freq.max(1));
    let mut acc = Acc::new(window, clock);
    observer.begin(merge.first_timestamp().map(|t| clock.ns(t)));
    let total = merge.total_bytes();
    let walked =
        walk(trace, &mut merge, bindings, window, begin, &mut acc, &mut |done| progress(done, total), observer)?;
    Ok(finish(acc, walked, begin, 1, observer))
}
