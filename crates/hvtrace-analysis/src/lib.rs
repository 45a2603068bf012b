//! # hvtrace-analysis — from a trace to answers
//!
//! [`analyze`] reads a trace directory once and reports, per vCPU, per
//! pCPU and for the whole trace (or a window of it):
//!
//! * **exits** by reason: count, share, exit-to-entry time (total, share of
//!   the vCPU's time, min / avg / p50 / p95 / p99 / max), and by detail
//!   (I/O port and direction, MMIO address, …);
//! * **runstates**: count, total, share, avg and percentiles of the intervals
//!   in running / runnable / blocked / offline, runnable split into wake and
//!   preempt (xenalyze's split), and *lost*: time a vCPU's state is unknown
//!   because events of its pCPU were lost, never given to another state;
//! * **hypercalls** by number (count, entry-to-exit time); **guest events**
//!   by kind; **interrupts** by domain and vector;
//! * **kernel/VMM split** (KVM traces holding the kernel's events): per
//!   vCPU, exits handed to the VMM by reason with the time in the kernel
//!   and in the VMM, and exits that never reached user space;
//! * **pCPUs**: time per vCPU, idle, time with data missing, events lost;
//! * and, for any trace, even one whose events map to nothing: events per
//!   CPU and per event class, rates, losses, duration.
//!
//! The analyses see only the hypervisor model (`hvtrace-model`): the caller
//! passes the event sets' mappings (`hvtrace_sim::MAPPING`,
//! `hvtrace_kvm::MAPPING`, …). Percentiles come from `hdrhistogram` (2
//! significant figures). Every figure is defined in `docs/analysis.md`.
//!
//! ## Speed and memory
//!
//! Each stream is read a window of packets at a time
//! ([`hvtrace_reader::PacketReader`]); records are decoded in place and
//! only those a mapping takes have their fields decoded. Streams are merged
//! by timestamp only when some mapping bound (a vCPU may move between
//! pCPUs); otherwise they are counted one after the other. Memory grows
//! with the number of vCPUs, reasons and streams, not with the trace.
//!
//! With [`Options::threads`] above 1, the trace is cut into time windows
//! that the threads read in turn, merged into exactly the report of one
//! thread (`docs/analysis.md` § "Threads").
//!
//! ## Damage
//!
//! The walk ([`hvtrace_reader::Merge`]) goes on past a packet or record
//! that does not decode over the packets `hvtrace check`'s walker finds
//! intact in that stream, with one warning per skipped stretch. A skipped
//! stretch is a gap: its time is *lost* for the vCPUs of that pCPU.
#![forbid(unsafe_code)]

mod acc;
mod durations;
mod output;
mod parallel;
mod report;
mod split;
mod walk;

use std::fmt;
use std::path::Path;

use hvtrace_model::{Bindings, Event, Mapping};
use hvtrace_reader::{ReadError, TraceDir};

pub use output::{write_csv, write_text};
pub use parallel::WINDOWS_PER_THREAD;
pub use report::{
    CallRow, ClassReport, CpuReport, DetailRow, ExitRow, GuestRow, InterruptReport, PcpuReport, PcpuTime, Report,
    Runstates, StateRow, VcpuReport, VcpuTime,
};
pub use split::{InKernelRow, KernelSplit, ToVmmRow};

/// The most threads `analyze` takes by itself: each thread holds its own
/// read buffers and each window the vCPUs whose domain ended in it until
/// the merge (38 MB peak at two on a 1 GiB sim trace, 44 MB at four),
/// against a bound of 64 MiB (docs/analysis.md); `--threads N` asks for more.
pub const DEFAULT_MAX_THREADS: usize = 2;

/// What to analyse.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Start of the window, in ns after the trace's first record.
    pub from_ns: Option<u64>,
    /// End of the window, in ns after the trace's first record.
    pub to_ns: Option<u64>,
    /// Threads to read with (0: one per available core, at most
    /// [`DEFAULT_MAX_THREADS`]). With more than one, the trace is cut into
    /// time windows that the threads read in turn, merged into exactly the
    /// report one thread makes.
    pub threads: usize,
    /// Time windows to cut the trace into when read on several threads
    /// (0: [`WINDOWS_PER_THREAD`] per thread; fewer in a trace of few packets).
    pub windows: usize,
}

/// Why a trace cannot be analysed.
#[derive(Debug)]
pub enum Error {
    /// The directory or a stream cannot be read.
    Read(ReadError),
    /// `--from` is not before `--to`.
    Window {
        /// Start, ns.
        from: u64,
        /// End, ns.
        to: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The cause follows in the source chain (anyhow prints it).
            Error::Read(_) => f.write_str("cannot read the trace"),
            Error::Window { from, to } => write!(f, "empty window: from {from} ns is not before to {to} ns"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Read(e) => Some(e),
            Error::Window { .. } => None,
        }
    }
}

/// Progress of [`analyze`]: bytes of stream files read so far, of `total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes read.
    pub done: u64,
    /// Bytes of all stream files.
    pub total: u64,
}

/// What a view sees of [`analyze_with`]'s pass, as it goes: the model
/// events, the records that map to none, and the losses, in the pass's
/// order (timestamp order when some mapping binds), times in ns, over the
/// whole trace whatever the window. `class` is the stream class (0 the
/// VMM's rings, 1 the kernel's events); `cpu` the stream's, `pcpu` the one
/// a mapping names. So a view that needs the whole trace (`hvtrace report`'s
/// timeline) needs no second pass.
pub trait Observer {
    /// Whether it looks at all: one that does not is not handed times (a
    /// 128-bit division a record, which the optimiser does not drop).
    fn sees(&self) -> bool {
        true
    }
    /// Before anything else: the trace's first record's time (ns), if any.
    fn begin(&mut self, _ns: Option<u64>) {}
    /// A model event of a record at `ns`.
    fn event(&mut self, class: u32, ns: u64, pcpu: u32, e: Event<'_>);
    /// A record at `ns` that maps to no model event.
    fn unmapped(&mut self, class: u32, ns: u64, cpu: u32);
    /// `count` events (0: unknown) of a stream lost between its record at
    /// `since` and `at` (the trace's last time, for a loss after the
    /// stream's last record).
    fn lost(&mut self, class: u32, since: Option<u64>, at: u64, cpu: u32, count: u64);
}

/// An [`Observer`] that looks at nothing.
struct Blind;

impl Observer for Blind {
    fn sees(&self) -> bool {
        false
    }
    fn event(&mut self, _: u32, _: u64, _: u32, _: Event<'_>) {}
    fn unmapped(&mut self, _: u32, _: u64, _: u32) {}
    fn lost(&mut self, _: u32, _: Option<u64>, _: u64, _: u32, _: u64) {}
}

/// Analyses the trace at `dir` over the hypervisor model, with the event
/// sets' `mappings`; `progress` is called after each packet.
pub fn analyze(
    dir: &Path,
    mappings: &[&dyn Mapping],
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Report, Error> {
    pass(dir, mappings, opts, progress, None)
}

/// [`analyze`], showing `observer` what the pass sees (see [`Observer`]):
/// on one thread, whatever [`Options::threads`] says.
pub fn analyze_with(
    dir: &Path,
    mappings: &[&dyn Mapping],
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
    observer: &mut dyn Observer,
) -> Result<Report, Error> {
    pass(dir, mappings, opts, progress, Some(observer))
}

fn pass(
    dir: &Path,
    mappings: &[&dyn Mapping],
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
    observer: Option<&mut dyn Observer>,
) -> Result<Report, Error> {
    if let (Some(from), Some(to)) = (opts.from_ns, opts.to_ns) {
        if from >= to {
            return Err(Error::Window { from, to });
        }
    }
    let trace = TraceDir::open(dir).map_err(Error::Read)?;
    let freq = trace.metadata.clock.freq.max(1);
    let ticks = |ns: u64| (u128::from(ns) * u128::from(freq) / 1_000_000_000) as u64;
    let range = walk::Range { from: opts.from_ns.map(ticks), to: opts.to_ns.map(ticks) };
    let no_kernel = hvtrace_reader::TraceSchema::default();
    let kernel = trace.metadata.kernel.as_ref().unwrap_or(&no_kernel);
    let bindings = [Bindings::bind(mappings, trace.schema()), Bindings::bind(mappings, kernel)];
    let mut report_progress = |done, total| progress(Progress { done, total });
    // An observer sees the pass in order: one walk.
    let threads = match opts.threads {
        _ if observer.is_some() => 1,
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(DEFAULT_MAX_THREADS)),
        n => n,
    };
    let pass = match observer {
        Some(o) => walk::pass(&trace, &bindings, range, (threads, opts.windows), &mut report_progress, o),
        None => walk::pass(&trace, &bindings, range, (threads, opts.windows), &mut report_progress, &mut Blind),
    }
    .map_err(Error::Read)?;
    let sets = bindings.iter().flat_map(|b| b.names()).map(|s| s.to_string()).collect();
    let mut report = report::build(dir.display().to_string(), pass, freq, sets);
    for c in &mut report.event_classes {
        let schema = if c.stream == 1 { kernel } else { trace.schema() };
        c.name = schema.event(c.id).map_or_else(String::new, |e| e.name.clone());
    }
    Ok(report)
}
