//! `hvtrace kvm`: trace a real hypervisor — the KVM micro-VMM of
//! `hvtrace-kvm`, one thread per vCPU. This process is the host: it serves
//! the control socket and records the VMM's events into its per-CPU rings;
//! `hvtrace consume` (a child process) writes the trace; this process also
//! drives the session like `demo`, then checks the trace against the VMM's
//! own counts.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hvtrace_core::EventSet;
use hvtrace_ctl::Client;
use hvtrace_ftrace::KernelSource;
use hvtrace_host::{Host, HostConfig};
use hvtrace_kvm::{NullObserver, RunReport, Vmm, VmmConfig, Workload, EXIT_REASONS};
use hvtrace_proto::Request;

use crate::cmd::consume::consumer_threads;
use crate::cmd::control::ChannelArgs;
use crate::cmd::record_kernel::instance_config;
use crate::kvm_events::TraceObserver;
use crate::out::{host_logger, note};
use crate::session::{self, RingCount};
use crate::Status;
use hvtrace_kvm::kvm;

/// Run a KVM micro-VMM whose VM exits, hypercalls and guest events are traced.
///
/// Boots a built-in guest program on VCPUS vCPUs (one thread each); each runs
/// ITERATIONS iterations of port I/O, MMIO, hypercalls and guest events. The
/// VMM records `vcpu_run` and `vm_exit` for every KVM_RUN, `hypercall_entry`
/// / `hypercall_exit` around each hypercall it handles, and `guest_event`
/// for each event the guest emits, into the ring of the host CPU the vCPU
/// thread runs on. This process serves the control socket; `hvtrace
/// consume` records the trace. Then the trace is decoded and compared with
/// the VMM's own counts: the command fails on any mismatch.
///
/// The tracing overhead is measured inside the VMM, not from exits/s (which
/// varies far more from run to run than tracing costs): every observer call
/// is timed (rdtsc), and `tracing_overhead` is the share of the vCPU
/// threads' time spent in the tracer, less the timing's own floor measured
/// by a short untraced warm-up run (NullObserver) in the same process.
///
/// Needs a usable /dev/kvm (root or the kvm group).
#[derive(clap::Args)]
pub struct Args {
    /// Trace directory to write (must not already hold a trace).
    #[arg(long, short = 'o', required_unless_present = "no_trace")]
    pub output: Option<PathBuf>,
    /// vCPUs.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// Guest workload iterations per vCPU (9 VM exits each).
    #[arg(long, default_value_t = 2000)]
    pub iterations: u64,
    #[command(flatten)]
    pub channel: ChannelArgs,
    /// Consumer worker threads (1 to 1024).
    #[arg(long, default_value_t = 1, value_parser = consumer_threads())]
    pub consumer_threads: u32,
    /// Run the VMM untraced (no host, no consumer; the baseline for the
    /// tracing overhead). --output is not needed.
    #[arg(long)]
    pub no_trace: bool,
    /// Print the summary as JSON: the last line of stdout is one object.
    #[arg(long)]
    pub json: bool,
    /// Also record the kernel's half: KVM's tracepoints (and the scheduler's)
    /// of this VMM's threads, read by the consumer from a private tracefs
    /// instance into the same trace (`kernel_<cpu>` streams, same metadata,
    /// same clock). Optionally the events, comma-separated (by default
    /// those of `record-kernel --events`). Then, per vCPU, the kernel's
    /// `kvm_userspace_exit` and `kvm_pio` counts must equal the VMM's KVM_RUN
    /// returns and port-I/O exits. Needs root.
    #[arg(long, num_args = 0..=1, value_delimiter = ',', value_name = "EVENTS",
          default_missing_values = hvtrace_ftrace::DEFAULT_EVENTS.iter().copied())]
    pub kernel_events: Option<Vec<String>>,
    /// Record through shared per-CPU writers instead of pinning each vCPU
    /// thread to its own CPU and giving it that CPU's ring (the default when
    /// there are no more vCPUs than online CPUs).
    #[arg(long)]
    pub shared_writers: bool,
    /// Make this process (the host) non-dumpable (PR_SET_DUMPABLE 0): a
    /// consumer of the same uid that is not root can then neither ptrace
    /// it nor write its ring counters through /proc/PID/mem.
    #[arg(long)]
    pub not_dumpable: bool,
}

#[derive(serde::Serialize)]
struct RingSummary {
    cpu: u32,
    recorded: u64,
    discarded: u64,
    packets: u64,
    bytes: u64,
}

/// What the trace holds per event vs what the VMM counted.
#[derive(serde::Serialize)]
struct EventCount {
    event: &'static str,
    /// Decoded from the trace.
    recorded: u64,
    /// Calls the VMM made to its observer (from its own counts).
    expected: u64,
}

#[derive(serde::Serialize)]
struct Summary {
    /// The trace directory (`null` with `--no-trace`).
    trace: Option<PathBuf>,
    traced: bool,
    vcpus: u32,
    iterations: u64,
    /// The VMM's own exit count.
    vm_exits: u64,
    exits_per_second: f64,
    elapsed_s: f64,
    /// Time inside observer calls per VM exit, ns (timed around each call, timing included).
    observer_ns_per_exit: f64,
    /// Observer time / vCPU thread time (raw, timing floor included).
    observer_share: f64,
    /// The timing floor, ns per exit: observer time per exit of an untraced
    /// (NullObserver) warm-up run in this process; `null` with `--no-trace`.
    observer_floor_ns_per_exit: Option<f64>,
    /// Share of vCPU thread time spent tracing: (observer time - floor per exit
    /// x exits) / vCPU thread time, at least 0. With `--no-trace` this is the
    /// untraced observer share, i.e. the timing's own floor.
    tracing_overhead: f64,
    /// Hypercalls the VMM handled.
    hypercalls: u64,
    /// Guest events the VMM received.
    guest_events: u64,
    /// Events the VMM handed to the tracer (0 untraced).
    events_traced: u64,
    events_recorded: u64,
    events_discarded: u64,
    mode: Option<String>,
    bytes: u64,
    packets: u64,
    per_event: Vec<EventCount>,
    per_cpu: Vec<RingSummary>,
    /// Per vCPU, the VMM's own counts (its exits per `KVM_EXIT_*` reason:
    /// what `hvtrace analyze` must find in the trace) and, with
    /// --kernel-events, the kernel's.
    per_vcpu: Vec<VcpuSummary>,
    /// With --kernel-events: the kernel source's summary (`record-kernel --json`).
    kernel: Option<serde_json::Value>,
}

/// One vCPU: the VMM's own counts beside the kernel's events of its thread.
#[derive(serde::Serialize)]
struct VcpuSummary {
    vcpu: u32,
    /// `KVM_EXIT_*` number (as a string: a JSON key) → exits.
    exits_by_reason: std::collections::BTreeMap<u32, u64>,
    /// Its thread's id (the kernel's `common_pid`).
    tid: Option<u32>,
    /// KVM_RUN returns the VMM counted.
    kvm_run_returns: u64,
    /// Of those, `KVM_EXIT_IO` (port I/O).
    io_exits: u64,
    /// Of those, `KVM_EXIT_MMIO`.
    mmio_exits: u64,
    /// The kernel's `kvm_userspace_exit` events of the thread (with --kernel-events).
    kernel_userspace_exits: Option<u64>,
    /// The kernel's `kvm_pio` events of the thread (with --kernel-events).
    kernel_pio: Option<u64>,
}

pub fn run(a: Args) -> Result<Status> {
    // Everything that can be refused is refused before anything runs.
    hvtrace_kvm::kvm_available().map_err(|e| anyhow!("KVM is not usable here: {e}"))?;
    let vmm_cfg = VmmConfig { vcpus: a.vcpus, iterations: a.iterations, workload: Workload::default() };
    vmm_cfg.validate()?;
    let progress = |m: &str| {
        if !a.json {
            note(format_args!("kvm: {m}"));
        }
    };

    // Each vCPU thread's id: the kernel's events name threads, not vCPUs.
    let tids = Mutex::new(vec![None; a.vcpus as usize]);
    let note_tid = |vcpu: u32| tids.lock().unwrap()[vcpu as usize] = Some(hvtrace_sys::tracefs::gettid());

    let Some(output) = a.output.as_ref().filter(|_| !a.no_trace) else {
        anyhow::ensure!(a.kernel_events.is_none(), "--kernel-events needs a traced run (not --no-trace)");
        progress(&format!("running {} vCPUs x {} iterations untraced", a.vcpus, a.iterations));
        let report = Vmm::run_with_thread_hook(&vmm_cfg, &NullObserver, &note_tid)?;
        let s = summary(&a, &report, None, &[], None, &tids.lock().unwrap(), None);
        let mut out = std::io::stdout().lock();
        print_summary(&mut out, &s, &[], a.json)?;
        out.flush()?;
        return Ok(Status::Ok);
    };

    let cfg = a.channel.config()?;
    session::check_output(output)?;

    // 0. The timing floor: a short untraced run (also warms up KVM and the page cache).
    let floor_cfg = VmmConfig { vcpus: 1, iterations: FLOOR_ITERATIONS.min(a.iterations.max(1)), ..vmm_cfg };
    let floor = Vmm::run(&floor_cfg, &NullObserver)?.observer_ns_per_exit();
    progress(&format!("timing floor: {floor:.0} ns per exit (untraced warm-up run)"));
    let exe = session::exe()?;
    let run_dir = session::run_dir("kvm")?;
    let sock = run_dir.path().join("ctl.sock");

    // 1. This process is the host.
    let mut host_cfg = HostConfig::new(&sock, "kvm");
    host_cfg.log = host_logger("hvtrace kvm");
    host_cfg.dumpable = !a.not_dumpable;
    let host = Host::serve(host_cfg, kvm::Events::EVENTS)
        .with_context(|| format!("cannot serve the control socket {}", sock.display()))?;
    progress(&format!("host: this process (pid {}), serving {}", std::process::id(), sock.display()));
    let mut ctl = Client::connect(&sock, Some(Duration::from_secs(30)))?;

    // vCPU i runs pinned to online CPU i and owns its ring: the claims come
    // before the channel, whose rings are then created owned.
    let cpus = hvtrace_sys::cpu::online_cpus();
    let exclusive = if a.shared_writers || a.vcpus as usize > cpus.len() {
        Vec::new()
    } else {
        (0..a.vcpus as usize)
            .map(|i| host.exclusive_writer(cpus[i] as u32))
            .collect::<std::io::Result<Vec<_>>>()
            .unwrap_or_else(|e| {
                progress(&format!("exclusive writers unavailable ({e}): shared writers"));
                Vec::new()
            })
    };
    let pinned: Vec<usize> = if exclusive.is_empty() { Vec::new() } else { cpus[..a.vcpus as usize].to_vec() };
    progress(&if pinned.is_empty() {
        "writers: shared per-CPU rings".to_string()
    } else {
        format!("writers: vCPU i pinned to CPU {pinned:?}[i], each the exclusive writer of its ring")
    });

    // 2. The channel, 3. the consumer daemon (with the kernel source: this
    // process is the VMM, whose threads it follows).
    let kernel_args = match &a.kernel_events {
        Some(events) => {
            // Fails here, with the reason, if tracefs or root is missing
            // (the consumer's stderr is not shown with --json).
            let clock = hvtrace_host::ClockSource::detect();
            drop(KernelSource::open(&instance_config(std::process::id(), events, 1024, clock))?);
            vec!["--kernel-pid".into(), std::process::id().to_string(), "--kernel-events".into(), events.join(",")]
        }
        None => Vec::new(),
    };
    ctl.simple(&Request::Create(cfg))?;
    progress(&format!("created: {}", a.channel));
    let mut consumer = session::spawn_consumer(&exe, &sock, output, a.consumer_threads, a.json, &kernel_args)?;
    session::wait_attached(&mut ctl, &mut consumer)?;
    progress(&format!("consumer: hvtrace consume (pid {}) attached", consumer.0.id()));
    // Both ends are connected: nobody needs the socket's path any more.
    run_dir.close().with_context(|| format!("cannot remove {}", sock.display()))?;

    // 4. Record while the VM runs.
    ctl.simple(&Request::Start)?;
    progress(&format!("started; running {} vCPUs x {} iterations", a.vcpus, a.iterations));
    let observer = TraceObserver::with_exclusive(Arc::clone(&host), exclusive);
    let on_vcpu_thread = |vcpu: u32| {
        note_tid(vcpu);
        if let Some(&cpu) = pinned.get(vcpu as usize) {
            match hvtrace_sys::cpu::pin_current_thread(cpu) {
                Ok(()) => observer.adopt(vcpu),
                Err(e) => {
                    // Unpinned, it records through a shared writer: the ring
                    // it lands on must not stay reserved for an absent owner.
                    progress(&format!("vCPU {vcpu}: cannot pin to CPU {cpu} ({e}): shared writer"));
                    observer.release(vcpu);
                }
            }
        }
    };
    let report = Vmm::run_with_thread_hook(&vmm_cfg, &observer, &on_vcpu_thread);
    let status = session::stop_and_destroy(&mut ctl)?;
    let report = report?;
    progress(&format!("stopped and destroyed after {:.2} s of guest time", report.elapsed.as_secs_f64()));

    // 5. The consumer finishes its drain and exits (its last line is the
    // kernel's summary with --kernel-events).
    let consumer_out = session::finish(consumer)?;
    let kernel = match a.kernel_events {
        Some(_) => Some(
            consumer_out
                .lines()
                .last()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .context("the consumer gave no kernel summary")?,
        ),
        None => None,
    };
    drop(ctl);
    host.shutdown();

    // 6. Check the trace against the VMM's own counts.
    let rings = session::count_rings(output, &status, kvm::Events::EVENTS, true)?;
    let s = summary(&a, &report, Some(output), &rings, Some(floor), &tids.lock().unwrap(), kernel);
    let mut out = std::io::stdout().lock();
    print_summary(&mut out, &s, &rings, a.json)?;
    out.flush()?;
    check(&s, observer.closed())?;
    Ok(Status::Ok)
}

/// Iterations of the untraced warm-up run that measures the timing floor
/// (1 vCPU, 9 exits each: about 0.1 s where the guest is emulated).
const FLOOR_ITERATIONS: u64 = 300;

/// What the VMM handed to the tracer, by event id (from its own counts).
fn expected(r: &RunReport) -> [u64; 5] {
    let sum = |f: fn(&hvtrace_kvm::VcpuReport) -> u64| r.per_vcpu.iter().map(f).sum::<u64>();
    let (exits, hypercalls, events) = (r.total_exits(), sum(|v| v.hypercalls), sum(|v| v.guest_events));
    let mut e = [0; 5];
    e[kvm::Id::vm_exit as usize] = exits;
    e[kvm::Id::vcpu_run as usize] = exits;
    e[kvm::Id::hypercall_entry as usize] = hypercalls;
    e[kvm::Id::hypercall_exit as usize] = hypercalls;
    e[kvm::Id::guest_event as usize] = events;
    e
}

/// `tracing_overhead`: the observer's share of vCPU time, less `floor` ns per exit.
fn tracing_overhead(r: &RunReport, floor_ns_per_exit: Option<f64>) -> f64 {
    let Some(floor) = floor_ns_per_exit else { return r.observer_share() };
    let run = r.vcpu_run_ns();
    if run == 0 {
        return 0.0;
    }
    let traced = r.observer_ns() as f64 - floor * r.total_exits() as f64;
    (traced / run as f64).clamp(0.0, 1.0)
}

/// The VMM's count of exits named `reason` (as in [`EXIT_REASONS`]) on one vCPU.
fn exits_named(v: &hvtrace_kvm::VcpuReport, reason: &str) -> u64 {
    let code = EXIT_REASONS.iter().find(|(_, n)| *n == reason).map(|(c, _)| *c);
    code.and_then(|c| v.exits_by_reason.get(&c).copied()).unwrap_or(0)
}

fn per_vcpu(r: &RunReport, tids: &[Option<u32>], kernel: Option<&serde_json::Value>) -> Vec<VcpuSummary> {
    let kernel_count = |tid: Option<u32>, event: &str| {
        let k = kernel?;
        Some(k["per_thread"][tid?.to_string()][event].as_u64().unwrap_or(0))
    };
    r.per_vcpu
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let tid = tids.get(i).copied().flatten();
            VcpuSummary {
                vcpu: i as u32,
                exits_by_reason: v.exits_by_reason.clone(),
                tid,
                kvm_run_returns: v.exits,
                io_exits: exits_named(v, "io"),
                mmio_exits: exits_named(v, "mmio"),
                kernel_userspace_exits: kernel_count(tid, "kvm_userspace_exit"),
                kernel_pio: kernel_count(tid, "kvm_pio"),
            }
        })
        .collect()
}

fn summary(
    a: &Args,
    r: &RunReport,
    trace: Option<&PathBuf>,
    rings: &[RingCount],
    floor_ns_per_exit: Option<f64>,
    tids: &[Option<u32>],
    kernel: Option<serde_json::Value>,
) -> Summary {
    let expected = expected(r);
    let per_event = kvm::Events::EVENTS
        .iter()
        .enumerate()
        .map(|(id, ev)| EventCount {
            event: ev.name,
            recorded: session::total(rings, |c| c.by_event.get(id).copied().unwrap_or(0)),
            expected: expected[id],
        })
        .filter(|_| trace.is_some())
        .collect();
    Summary {
        trace: trace.map(|t| std::fs::canonicalize(t).unwrap_or(t.clone())),
        traced: trace.is_some(),
        vcpus: a.vcpus,
        iterations: a.iterations,
        vm_exits: r.total_exits(),
        exits_per_second: r.exits_per_second(),
        elapsed_s: r.elapsed.as_secs_f64(),
        observer_ns_per_exit: r.observer_ns_per_exit(),
        observer_share: r.observer_share(),
        observer_floor_ns_per_exit: floor_ns_per_exit,
        tracing_overhead: tracing_overhead(r, floor_ns_per_exit),
        hypercalls: expected[kvm::Id::hypercall_entry as usize],
        guest_events: expected[kvm::Id::guest_event as usize],
        events_traced: if trace.is_some() { expected.iter().sum() } else { 0 },
        events_recorded: session::total(rings, |c| c.recorded),
        events_discarded: session::total(rings, |c| c.discarded),
        mode: trace.map(|_| a.channel.mode.to_string()),
        bytes: session::total(rings, |c| c.bytes),
        packets: session::total(rings, |c| c.packets),
        per_event,
        per_cpu: rings
            .iter()
            .map(|c| RingSummary {
                cpu: c.cpu,
                recorded: c.recorded,
                discarded: c.discarded,
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect(),
        per_vcpu: per_vcpu(r, tids, kernel.as_ref()),
        kernel,
    }
}

/// The trace must account for every event the VMM handed over; with nothing
/// discarded, every event type must match the VMM's own count exactly.
fn check(s: &Summary, closed: u64) -> Result<()> {
    if closed > 0 {
        bail!("{closed} events found no started channel (recorded before start or after stop?)");
    }
    if s.events_recorded + s.events_discarded != s.events_traced {
        bail!(
            "accounting mismatch: recorded {} + discarded {} != traced {}",
            s.events_recorded,
            s.events_discarded,
            s.events_traced
        );
    }
    // The kernel's half: every KVM_RUN return passed kvm_userspace_exit, every
    // port-I/O exit kvm_pio, on the vCPU's own thread (unless the kernel lost events).
    let kernel_lost = s.kernel.as_ref().map_or(0, |k| k["events_discarded"].as_u64().unwrap_or(0));
    if kernel_lost == 0 {
        for v in &s.per_vcpu {
            for (what, kernel, vmm) in [
                ("kvm_userspace_exit", v.kernel_userspace_exits, v.kvm_run_returns),
                ("kvm_pio", v.kernel_pio, v.io_exits),
            ] {
                if let Some(k) = kernel.filter(|k| *k != vmm) {
                    bail!(
                        "vCPU {} (thread {:?}): {k} {what} in the kernel's trace, but the VMM counted {vmm}",
                        v.vcpu,
                        v.tid
                    );
                }
            }
        }
    }
    if s.events_discarded == 0 {
        for e in &s.per_event {
            if e.recorded != e.expected {
                bail!("{}: {} in the trace, but the VMM counted {}", e.event, e.recorded, e.expected);
            }
        }
    }
    Ok(())
}

fn print_summary(out: &mut impl Write, s: &Summary, rings: &[RingCount], json: bool) -> io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::to_string(s)?);
    }
    writeln!(out)?;
    if s.traced {
        session::print_rings(out, rings, None)?;
        writeln!(out)?;
        writeln!(out, "{:<16} {:>12} {:>12}", "event", "in trace", "VMM count")?;
        for e in &s.per_event {
            writeln!(out, "{:<16} {:>12} {:>12}", e.event, e.recorded, e.expected)?;
        }
        writeln!(out)?;
        if s.kernel.is_some() {
            writeln!(
                out,
                "{:>4} {:>8} {:>10} {:>12} {:>10} {:>10}",
                "vcpu", "thread", "KVM_RUN", "kernel exits", "io exits", "kvm_pio"
            )?;
            for v in &s.per_vcpu {
                let n = |x: Option<u64>| x.map_or("-".to_string(), |x| x.to_string());
                writeln!(
                    out,
                    "{:>4} {:>8} {:>10} {:>12} {:>10} {:>10}",
                    v.vcpu,
                    n(v.tid.map(u64::from)),
                    v.kvm_run_returns,
                    n(v.kernel_userspace_exits),
                    v.io_exits,
                    n(v.kernel_pio)
                )?;
            }
            writeln!(out)?;
        }
    }
    writeln!(
        out,
        "{} vCPUs x {} iterations: {} VM exits in {:.3} s = {:.0} exits/s ({}), {} hypercalls, {} guest events",
        s.vcpus,
        s.iterations,
        s.vm_exits,
        s.elapsed_s,
        s.exits_per_second,
        if s.traced { "traced" } else { "untraced" },
        s.hypercalls,
        s.guest_events
    )?;
    match s.observer_floor_ns_per_exit {
        Some(floor) => writeln!(
            out,
            "tracing overhead: {:.3} % of vCPU time ({:.0} ns per exit in the observer, {:.0} ns of it the timing floor)",
            s.tracing_overhead * 100.0,
            s.observer_ns_per_exit,
            floor
        )?,
        None => writeln!(
            out,
            "observer (timing floor, untraced): {:.3} % of vCPU time, {:.0} ns per exit",
            s.tracing_overhead * 100.0,
            s.observer_ns_per_exit
        )?,
    }
    if let Some(trace) = &s.trace {
        writeln!(
            out,
            "{} events recorded, {} discarded, {:.1} bytes/event, {} mode",
            s.events_recorded,
            s.events_discarded,
            s.bytes as f64 / s.events_recorded.max(1) as f64,
            s.mode.as_deref().unwrap_or("-")
        )?;
        session::print_open_hints(out, trace)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kvm: super::Args,
    }

    fn kernel_events(args: &[&str]) -> Option<Vec<String>> {
        Cli::try_parse_from(["kvm", "--output", "t"].iter().chain(args)).unwrap().kvm.kernel_events
    }

    #[test]
    fn kernel_events_alone_are_the_libraries_default_events() {
        assert_eq!(kernel_events(&[]), None);
        assert_eq!(kernel_events(&["--kernel-events"]).unwrap(), hvtrace_ftrace::DEFAULT_EVENTS);
        assert_eq!(kernel_events(&["--kernel-events", "--vcpus", "1"]).unwrap(), hvtrace_ftrace::DEFAULT_EVENTS);
        assert_eq!(kernel_events(&["--kernel-events", "kvm:kvm_pio,sched:*"]).unwrap(), ["kvm:kvm_pio", "sched:*"]);
    }
}
