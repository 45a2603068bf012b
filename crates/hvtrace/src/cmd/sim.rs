//! `hvtrace sim`: a simulated Xen-like host. Each simulated physical CPU is
//! a thread that schedules vCPUs of several domains and records what Xen's
//! xentrace would (scheduler, hypercalls, page faults, interrupts, VM exits)
//! into its CPU's ring; the control socket serves the session.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hvtrace_core::EventSet;
use hvtrace_host::{Host, HostConfig};
use hvtrace_proto::ChannelState;
use hvtrace_sim::{xen, PcpuSim, RunConfig, SimConfig, SimStats, MAX_RATE};

use crate::out::{host_logger, note};
use crate::Status;

/// Serve a simulated Xen-like host until killed (SIGINT / SIGTERM).
///
/// Threads wait for the channel to be created and started (`hvtrace create`
/// / `hvtrace start`), then record. With `--events-per-cpu`, each simulated
/// CPU records exactly that many events, then the host prints one JSON line
/// `{"sim_done":true,"emitted":…,"refused":…,"per_cpu":[…]}` and keeps
/// serving until killed.
#[derive(clap::Args)]
pub struct Args {
    /// Control socket to create (mode 0600).
    #[arg(long, short = 's')]
    pub socket: PathBuf,
    /// Simulated physical CPUs (one ring and one thread each), 1 to 512.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=MAX_CPUS as i64))]
    pub cpus: u32,
    /// Events per second per CPU, at most 10^9; 0 = an idle host that
    /// records nothing. Default: as fast as possible.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=MAX_RATE))]
    pub rate: Option<u64>,
    /// Record exactly this many events per CPU, then report and idle.
    #[arg(long)]
    pub events_per_cpu: Option<u64>,
    /// Bring one more CPU online this many seconds after recording starts.
    #[arg(long, value_parser = parse_seconds)]
    pub hotplug_after: Option<f64>,
    /// Guest domains (dom0 included); default: two per CPU.
    #[arg(long)]
    pub domains: Option<u32>,
    /// Seed of the simulation (same seed, same events).
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
    /// Make the host process non-dumpable (PR_SET_DUMPABLE 0): a consumer
    /// of the same uid that is not root can then neither ptrace it nor
    /// write its ring counters through /proc/PID/mem. For production hosts.
    #[arg(long)]
    pub not_dumpable: bool,
}

/// The most simulated CPUs: real hypervisor hosts reach 512. Beyond some 700
/// rings the `status` reply may outgrow one control message (64 KiB).
pub const MAX_CPUS: u32 = 512;

/// A number of seconds: finite, not negative (`nan`, `inf`, `-1` are refused).
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        Ok(_) => Err(format!("{s:?} is not a number of seconds (finite, 0 or more)")),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// What the sim prints when `--events-per-cpu` is done.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct SimDone {
    /// Always true (marks the line).
    pub sim_done: bool,
    /// Events attempted, all CPUs.
    pub emitted: u64,
    /// Events the rings refused (counted by them as discarded).
    pub refused: u64,
    /// Per CPU: `[cpu, emitted, refused]`.
    pub per_cpu: Vec<(u32, u64, u64)>,
}

pub fn run(a: Args) -> Result<Status> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut cfg = HostConfig::new(&a.socket, "xen-sim");
    cfg.cpus = (0..a.cpus).collect();
    cfg.max_cpus = a.cpus + 1;
    cfg.log = host_logger("hvtrace sim");
    cfg.dumpable = !a.not_dumpable;
    let host = Host::serve(cfg, xen::Events::EVENTS)
        .with_context(|| format!("cannot serve the control socket {}", a.socket.display()))?;
    let mut sim_cfg = SimConfig::new(a.cpus + a.hotplug_after.is_some() as u32);
    if let Some(d) = a.domains {
        sim_cfg.domains = d;
    }
    sim_cfg.seed = a.seed;
    note(format_args!(
        "hvtrace sim: {} CPUs, clock {:?} at {} Hz, serving {} (pid {}{})",
        a.cpus,
        host.clock().source(),
        host.clock().freq(),
        a.socket.display(),
        std::process::id(),
        if a.not_dumpable { ", not dumpable" } else { "" }
    ));

    let real_cpus = hvtrace_sys::cpu::online_cpus();
    let spawn = |cpu: u32| {
        let host = host.clone();
        let stop = stop.clone();
        let (rate, events) = (a.rate, a.events_per_cpu);
        let pin = real_cpus.get(cpu as usize % real_cpus.len().max(1)).copied();
        std::thread::Builder::new().name(format!("pcpu{cpu}")).spawn(move || {
            if let Some(p) = pin {
                let _ = hvtrace_sys::cpu::pin_current_thread(p);
            }
            let w = host.writer_for_cpu(cpu);
            let mut sim = PcpuSim::new(cpu, &sim_cfg);
            if !wait_started(&host, &stop) {
                return SimStats::default();
            }
            sim.run(&w, RunConfig { events, rate_per_sec: rate, stop: &stop })
        })
    };
    let mut threads: Vec<(u32, std::thread::JoinHandle<SimStats>)> = Vec::new();
    for cpu in 0..a.cpus {
        threads.push((cpu, spawn(cpu)?));
    }
    if let Some(after) = a.hotplug_after {
        if wait_started(&host, &stop) {
            let t0 = Instant::now();
            while t0.elapsed().as_secs_f64() < after && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            host.add_cpu(a.cpus)?;
            note(format_args!("hvtrace sim: CPU {} came online", a.cpus));
            threads.push((a.cpus, spawn(a.cpus)?));
        }
    }
    let mut per_cpu = Vec::new();
    let mut total = SimStats::default();
    for (cpu, t) in threads {
        let st = t.join().map_err(|_| anyhow::anyhow!("CPU {cpu} thread panicked"))?;
        total.merge(&st);
        per_cpu.push((cpu, st.emitted, st.refused));
    }
    let done = SimDone { sim_done: true, emitted: total.emitted, refused: total.refused, per_cpu };
    if a.events_per_cpu.is_some() {
        let mut out = std::io::stdout().lock();
        let line = serde_json::to_string(&done)?;
        // A host does not stop serving its consumers because nobody reads its report.
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            note(format_args!("hvtrace sim: cannot print the report ({e}); serving on"));
        }
    }
    // Keep serving (consumers drain, control commands run) until killed.
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    note(format_args!("hvtrace sim: emitted {} events, {} refused by full rings", done.emitted, done.refused));
    host.shutdown();
    Ok(Status::Ok)
}

/// Host-side wait for the first `start` (the host's own state: no consumer involved).
fn wait_started(host: &Host, stop: &AtomicBool) -> bool {
    while !stop.load(Ordering::Relaxed) {
        if host.status().state == ChannelState::Started {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}
