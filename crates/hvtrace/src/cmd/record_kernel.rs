//! `hvtrace record-kernel`: the kernel's half of any running VMM (QEMU,
//! Firecracker, Cloud Hypervisor, `hvtrace kvm`), through ftrace.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use hvtrace_consumer::{Access, OutputDir};
use hvtrace_core::metadata::TraceDesc;
use hvtrace_ftrace::{InstanceConfig, KernelReport, KernelSource, TraceClock};
use hvtrace_host::clock::{ClockSource, HostClock};
use serde::Serialize;

use crate::out::note;
use crate::Status;

/// Record the kernel's events (KVM's tracepoints, the scheduler) of a
/// running process into a CTF trace, until SIGINT or SIGTERM, or until the
/// process exits.
///
/// Creates a private tracefs instance (mounting tracefs if needed), enables
/// EVENTS for PID's threads, and threads or children it starts later
/// (`set_event_pid` with `event-fork`), on the TSC (`x86-tsc`, the clock
/// of hvtrace's own traces). Each CPU's `trace_pipe_raw` is read as the
/// kernel fills it (woken by poll) and written as CTF packets to
/// `OUTPUT/kernel_<cpu>`; events the kernel lost are counted in each
/// packet's `events_discarded`. On SIGINT/SIGTERM, or when PID exits,
/// recording stops, every CPU is drained, and the instance is removed.
/// Needs root.
#[derive(clap::Args)]
pub struct Args {
    /// The process to trace (all its threads).
    #[arg(long)]
    pub pid: u32,
    /// Trace directory to write (must not already hold a trace).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Events (`system:name` or `system:*`), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = hvtrace_ftrace::DEFAULT_EVENTS.iter().map(|s| s.to_string()))]
    pub events: Vec<String>,
    /// Per-CPU kernel buffer, KiB.
    #[arg(long, default_value_t = 1024)]
    pub buffer_kb: u32,
    /// Let this group read the trace (directory 0750, files 0640, owned by
    /// the group), as `consume --group`; without it, the owner only (0700 / 0600).
    #[arg(long, value_parser = super::consume::parse_group)]
    pub group: Option<u32>,
    /// Print the final report as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The `--json` report.
#[derive(Serialize)]
pub struct Summary {
    /// The trace directory.
    pub trace: PathBuf,
    /// Records written, all CPUs.
    pub events_recorded: u64,
    /// Events lost (the kernel's count) or not convertible, all CPUs.
    pub events_discarded: u64,
    /// The kernel's own count of lost events (`per_cpu/cpuN/stats`), all CPUs.
    pub kernel_lost: u64,
    /// Per event name: records.
    pub per_event: Vec<(String, u64)>,
    /// Per CPU: `[cpu, records, discarded, packets]`.
    pub per_cpu: Vec<[u64; 4]>,
    /// Per thread (`common_pid`), per event name: records.
    pub per_thread: BTreeMap<u32, BTreeMap<String, u64>>,
    /// Stale instances of killed runs removed at the start.
    pub removed_stale: Vec<String>,
}

impl Summary {
    /// The report of a finished recording into `trace`.
    pub fn new(trace: PathBuf, r: &KernelReport, removed_stale: Vec<String>) -> Summary {
        Summary {
            trace,
            events_recorded: r.total(|c| c.counts.records),
            events_discarded: r.total(|c| c.counts.discarded),
            kernel_lost: r.total(|c| c.kernel_lost),
            per_event: r.events.iter().map(|e| (e.clone(), r.count(e))).filter(|(_, n)| *n > 0).collect(),
            per_cpu: r
                .per_cpu
                .iter()
                .map(|c| [c.cpu as u64, c.counts.records, c.counts.discarded, c.counts.packets])
                .collect(),
            per_thread: r.per_cpu.iter().flat_map(|c| &c.counts.by_thread).fold(
                BTreeMap::new(),
                |mut acc: BTreeMap<u32, BTreeMap<String, u64>>, (tid, counts)| {
                    for (id, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                        *acc.entry(*tid).or_default().entry(r.events[id].clone()).or_default() += n;
                    }
                    acc
                },
            ),
            removed_stale,
        }
    }

    /// Writes the table (or the JSON line).
    pub fn print(&self, out: &mut impl Write, json: bool) -> Result<()> {
        if json {
            writeln!(out, "{}", serde_json::to_string(self)?)?;
            return Ok(());
        }
        writeln!(out, "{:>4} {:>12} {:>10} {:>8}", "cpu", "recorded", "discarded", "packets")?;
        for [cpu, rec, disc, packets] in &self.per_cpu {
            writeln!(out, "{cpu:>4} {rec:>12} {disc:>10} {packets:>8}")?;
        }
        for (name, n) in &self.per_event {
            writeln!(out, "{name:<28} {n:>10}")?;
        }
        writeln!(out, "{} kernel events recorded, {} discarded", self.events_recorded, self.events_discarded)?;
        Ok(())
    }
}

/// The instance settings for `pid` and `events`, on the kernel clock that
/// matches `clock` (hvtrace's own).
pub fn instance_config(pid: u32, events: &[String], buffer_kb: u32, clock: ClockSource) -> InstanceConfig {
    InstanceConfig {
        events: events.to_vec(),
        buffer_kb,
        clock: match clock {
            ClockSource::Tsc => TraceClock::X86Tsc,
            ClockSource::Monotonic => TraceClock::Mono,
        },
        ..InstanceConfig::new(Some(pid))
    }
}

pub fn run(a: Args) -> Result<Status> {
    crate::session::check_output(&a.output)?;
    // Woken by SIGINT/SIGTERM (through a socket the handler writes to) or
    // by the traced process's exit (its pidfd), in one epoll.
    let (wake, wake_tx) = std::os::unix::net::UnixStream::pair()?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::low_level::pipe::register(sig, wake_tx.try_clone()?)?;
    }
    let exited = hvtrace_sys::proc::exit_fd(a.pid).with_context(|| format!("no process {} to trace", a.pid))?;
    let clock = HostClock::detect(Duration::from_millis(50));
    // Recording from here on, before `metadata` appears (which says it has begun).
    let source = KernelSource::open(&instance_config(a.pid, &a.events, a.buffer_kb, clock.source()))?;
    let removed_stale = source.removed_stale().to_vec();
    for s in &removed_stale {
        note(format_args!("hvtrace record-kernel: removed the stale tracefs instance {s} of a run that was killed"));
    }
    let uuid = *uuid::Uuid::new_v4().as_bytes();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let desc = TraceDesc {
        uuid,
        hostname: hostname.trim(),
        domain: "kvm-kernel",
        tracer_version: (0, 1, 0),
        clock: clock.desc(),
    };
    let metadata = source.table().standalone_metadata(&desc);
    // Created as the consumer creates its traces: one directory descriptor,
    // O_CREAT | O_EXCL | O_NOFOLLOW, the trace's mode and group.
    let (dir, _metadata) =
        OutputDir::prepare(&a.output, hvtrace_ftrace::STREAM_PREFIX, &metadata, Access::new(a.group))?;
    let recorder = source.start(&mut |name| dir.create(name), uuid)?;
    note(format_args!(
        "hvtrace record-kernel: recording {} of pid {} into {} until SIGINT or its exit",
        a.events.join(","),
        a.pid,
        a.output.display()
    ));
    let mut poller = hvtrace_sys::Poller::new()?;
    poller.add(&wake, 0)?;
    poller.add(&exited, 1)?;
    let mut ready = Vec::new();
    while poller.wait(&mut ready, None)? == 0 {}
    if ready.iter().any(|e| e.token == 1) {
        note(format_args!("hvtrace record-kernel: pid {} exited", a.pid));
    }
    let report = recorder.stop()?;
    for e in &report.write_errors {
        note(format_args!("hvtrace record-kernel: write error: {e}"));
    }
    let mut out = std::io::stdout().lock();
    Summary::new(a.output.clone(), &report, removed_stale).print(&mut out, a.json)?;
    out.flush()?;
    anyhow::ensure!(report.write_errors.is_empty(), "the trace is incomplete (write errors above)");
    Ok(Status::Ok)
}
