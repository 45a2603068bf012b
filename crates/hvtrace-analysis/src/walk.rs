//! One pass over a trace ([`hvtrace_reader::Merge`]): records in timestamp
//! order when the model needs cross-CPU order (a vCPU may move between
//! pCPUs), fed to the accumulators. The kernel's streams (stream class 1,
//! `hvtrace-ftrace`) are walked beside the VMM's, with their own ids and
//! bindings.

use hvtrace_model::{Bindings, Event};
use hvtrace_reader::{Item, Merge, Order, ReadError, TraceDir};

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
}

/// Where the window starts and ends, relative to the first record, in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Range {
    pub from: Option<u64>,
    pub to: Option<u64>,
}

/// Records between two progress reports.
const PROGRESS_EVERY: u32 = 1 << 16;

/// Walks the trace once, with the bindings of the VMM's and of the
/// kernel's event classes. `progress(done, total)` gets bytes.
pub(crate) fn pass(
    trace: &TraceDir,
    bindings: &[Bindings; 2],
    range: Range,
    progress: &mut dyn FnMut(u64, u64),
    observer: &mut dyn Observer,
) -> Result<Pass, ReadError> {
    // Cross-CPU order only matters to the model; counting does not need it.
    let order = if bindings.iter().all(Bindings::is_empty) { Order::Streams } else { Order::Time };
    let mut merge = Merge::with_kernel(trace, order)?;
    let begin = merge.first_timestamp().unwrap_or(0);
    let window = Window {
        from: begin.saturating_add(range.from.unwrap_or(0)),
        to: range.to.map_or(u64::MAX, |t| begin.saturating_add(t)),
    };
    let clock = Clock(trace.metadata.clock.freq.max(1));
    let mut acc = Acc::new(window, clock);
    observer.begin(merge.first_timestamp().map(|t| clock.ns(t)));
    let vmm_streams = trace.streams.len();
    let class_of = |stream: usize| u32::from(stream >= vmm_streams);
    let kernel_classes = trace.metadata.kernel.as_ref().map_or(0, |k| k.events.len());
    let mut by_class = [vec![0u64; trace.schema().events.len()], vec![0u64; kernel_classes]];
    let mut per_stream = vec![0u64; merge.streams().len()];
    let mut end = begin;
    let mut trailing = Vec::new();
    let mut tick = 0u32;
    while let Some(item) = merge.next_item() {
        let r = match item? {
            Item::Lost { stream, cpu, since, at: Some(at), count } => {
                acc.loss(cpu, since.unwrap_or(at), at, count);
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
        let (ts, id) = (r.record.timestamp, r.record.id);
        if window.holds(ts) {
            per_stream[r.stream] += 1;
            if let Some(n) = by_class[r.class as usize].get_mut(id as usize) {
                *n += 1;
            }
        }
        end = end.max(ts);
        let ns = clock.ns(ts);
        let mapped = r.map(&bindings[r.class as usize], |pcpu, e| {
            observer.event(r.class, ns, pcpu, e);
            match e {
                Event::Lost { count } => {
                    acc.lost_in_band += count;
                    acc.loss(pcpu, r.previous.unwrap_or(ts), ts, count);
                }
                e => acc.event(pcpu, ts, e),
            }
        });
        if !mapped {
            observer.unmapped(r.class, ns, r.cpu);
        }
        tick += 1;
        if tick == PROGRESS_EVERY {
            tick = 0;
            progress(merge.bytes_read(), merge.total_bytes());
        }
    }
    progress(merge.bytes_read(), merge.total_bytes());
    for (class, cpu, since, count) in trailing {
        acc.loss(cpu, since.unwrap_or(end), end, count);
        observer.lost(class, since.map(|t| clock.ns(t)), clock.ns(end), cpu, count);
    }
    acc.finish(end.min(window.to));
    let streams = merge
        .streams()
        .zip(per_stream)
        .map(|(s, events)| StreamCounts {
            name: s.name.clone(),
            cpu: s.cpu,
            events,
            packets: s.packets,
            discarded: s.events_discarded,
        })
        .collect();
    Ok(Pass { acc, begin, end, by_class, streams, warnings: merge.warnings().to_vec() })
}
