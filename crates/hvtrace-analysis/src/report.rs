//! The report: every figure of every analysis, in nanoseconds, ready for
//! the text tables, the JSON object (`docs/analysis.md` is its contract)
//! and the CSV files.

use serde::Serialize;

use hvtrace_model::{Access, ExitDetail};

use crate::acc::{Durations, VcpuAcc, Window, LOST, OTHER, PREEMPT, WAKE};
use crate::walk::Pass;

/// Everything `hvtrace analyze` found in a trace. Field names are the JSON
/// keys; see `docs/analysis.md` for each figure's definition.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The trace directory.
    pub trace: String,
    /// From the first record to the last one inside the window, in ns.
    pub duration_ns: u64,
    /// Records inside the window.
    pub events: u64,
    /// Events the tracer counted as lost (packet contexts and in-band loss records).
    pub events_discarded: u64,
    /// Records about a vCPU their source could not name (KVM's kernel events
    /// of a thread not yet known as a vCPU): in no vCPU's figures.
    pub events_unattributed: u64,
    /// The window, in ns from the first record of the trace.
    pub from_ns: u64,
    /// End of the window (the last record's time when not limited).
    pub to_ns: u64,
    /// Clock ticks per second.
    pub clock_freq: u64,
    /// Event sets whose mapping onto the model recognised the trace.
    pub event_sets: Vec<String>,
    /// What was skipped or is doubtful (damage, a cut-short trace).
    pub warnings: Vec<String>,
    /// Per stream (CPU): the generic counts.
    pub cpus: Vec<CpuReport>,
    /// Per event class: the generic counts.
    pub event_classes: Vec<ClassReport>,
    /// Per vCPU, by domain then vCPU.
    pub vcpus: Vec<VcpuReport>,
    /// Per pCPU.
    pub pcpus: Vec<PcpuReport>,
    /// Interrupts by target domain and vector.
    pub interrupts: Vec<InterruptReport>,
    /// Time windows the trace was read in (1: whole, on one thread). Not
    /// part of the output, which is the same however it was read.
    #[serde(skip)]
    pub windows: usize,
}

/// One stream's generic counts.
#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    /// CPU.
    pub cpu: u32,
    /// Stream file name.
    pub stream: String,
    /// Records in the window.
    pub events: u64,
    /// `events / duration`.
    pub events_per_s: f64,
    /// Events lost on this stream (its last packet's cumulative count).
    pub events_discarded: u64,
    /// Packets read.
    pub packets: u64,
}

/// One event class's generic counts.
#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    /// Event id (within its stream class).
    pub id: u32,
    /// Stream class: 0 the VMM's events, 1 the kernel's (`hvtrace-ftrace`).
    pub stream: u32,
    /// Event name.
    pub name: String,
    /// Records in the window.
    pub count: u64,
    /// `count / duration`.
    pub per_s: f64,
}

/// One vCPU.
#[derive(Clone, Debug, Serialize)]
pub struct VcpuReport {
    /// Domain (VM) id.
    pub domain: u32,
    /// vCPU index.
    pub vcpu: u32,
    /// From when its state is first known (its first event, for a source
    /// without runstates) to the end of the window, in ns: what its
    /// runstates add up to.
    pub tracked_ns: u64,
    /// Exits by reason, most frequent first.
    pub exits: Vec<ExitRow>,
    /// Exits whose entry the trace does not hold (it ended, or data was lost).
    pub exits_unmatched: u64,
    /// Exits by reason and detail (port, address, …).
    pub exit_details: Vec<DetailRow>,
    /// Time in each runstate.
    pub runstates: Runstates,
    /// Hypercalls by number.
    pub hypercalls: Vec<CallRow>,
    /// Guest events by kind.
    pub guest_events: Vec<GuestRow>,
    /// Running time per pCPU.
    pub pcpu_ns: Vec<PcpuTime>,
    /// The kernel/VMM split of its exits, if the trace holds the kernel's
    /// events for it (absent from the JSON otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_split: Option<crate::KernelSplit>,
}

/// One exit reason of one vCPU.
#[derive(Clone, Debug, Serialize)]
pub struct ExitRow {
    /// Reason name in its source.
    pub reason: String,
    /// Reason number in its source.
    pub code: u32,
    /// Exits in the window.
    pub count: u64,
    /// `count` over the vCPU's exits, in percent.
    pub count_pct: f64,
    /// Exit-to-entry time, summed.
    pub total_ns: u64,
    /// `total_ns` over the vCPU's `tracked_ns`, in percent.
    pub time_pct: f64,
    /// Shortest.
    pub min_ns: u64,
    /// `total_ns / timed`.
    pub avg_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 95th percentile.
    pub p95_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Longest.
    pub max_ns: u64,
    /// Exits with an entry (the intervals behind the times).
    pub timed: u64,
}

/// Exits of one reason with one detail.
#[derive(Clone, Debug, Serialize)]
pub struct DetailRow {
    /// Reason name.
    pub reason: String,
    /// Reason number.
    pub code: u32,
    /// `io`, `mmio`, `msr`, `vector`, `hypercall`.
    pub kind: &'static str,
    /// Port, address, MSR index, vector or hypercall number.
    pub target: u64,
    /// Access size in bytes (0 when not known).
    pub size: u8,
    /// `read`, `write` or empty.
    pub access: &'static str,
    /// Timed exits.
    pub count: u64,
    /// Their total exit-to-entry time.
    pub total_ns: u64,
    /// Average.
    pub avg_ns: u64,
    /// Longest.
    pub max_ns: u64,
}

/// Intervals in one state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StateRow {
    /// Intervals (that overlap the window).
    pub count: u64,
    /// Their time inside the window.
    pub total_ns: u64,
    /// `total_ns` over the vCPU's `tracked_ns`, in percent.
    pub pct: f64,
    /// Average.
    pub avg_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 95th percentile.
    pub p95_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Longest.
    pub max_ns: u64,
}

/// The runstate table of one vCPU.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Runstates {
    /// On a pCPU.
    pub running: StateRow,
    /// Waiting for a pCPU (all of it: `wake + preempt + other`).
    pub runnable: StateRow,
    /// Waiting for an event.
    pub blocked: StateRow,
    /// Down.
    pub offline: StateRow,
    /// Unknown because events of its pCPU were lost.
    pub lost: StateRow,
    /// Runnable after blocked or offline (woken, waiting to run).
    pub runnable_wake: StateRow,
    /// Runnable after running (preempted, yielded).
    pub runnable_preempt: StateRow,
    /// Runnable after an unknown or lost state.
    pub runnable_other: StateRow,
}

impl Runstates {
    /// The rows by their JSON names, in table order (the runnable split
    /// right after runnable).
    pub fn rows(&self) -> [(&'static str, &StateRow); 8] {
        [
            ("running", &self.running),
            ("runnable", &self.runnable),
            ("runnable_wake", &self.runnable_wake),
            ("runnable_preempt", &self.runnable_preempt),
            ("runnable_other", &self.runnable_other),
            ("blocked", &self.blocked),
            ("offline", &self.offline),
            ("lost", &self.lost),
        ]
    }
}

/// One hypercall number of one vCPU.
#[derive(Clone, Debug, Serialize)]
pub struct CallRow {
    /// Number in its source.
    pub nr: u32,
    /// Name.
    pub name: String,
    /// Calls in the window.
    pub count: u64,
    /// Entry-to-exit time, summed (a blocking call includes its wait).
    pub total_ns: u64,
    /// `total_ns / timed`.
    pub avg_ns: u64,
    /// 95th percentile.
    pub p95_ns: u64,
    /// Longest.
    pub max_ns: u64,
    /// Calls with an exit.
    pub timed: u64,
}

/// One kind of guest event of one vCPU.
#[derive(Clone, Debug, Serialize)]
pub struct GuestRow {
    /// Kind number in its source.
    pub kind: u32,
    /// Kind name.
    pub name: String,
    /// Events in the window.
    pub count: u64,
}

/// Time on one pCPU.
#[derive(Clone, Debug, Serialize)]
pub struct PcpuTime {
    /// The pCPU.
    pub cpu: u32,
    /// Running time there.
    pub ns: u64,
}

/// One pCPU.
#[derive(Clone, Debug, Serialize)]
pub struct PcpuReport {
    /// The pCPU.
    pub cpu: u32,
    /// Time some vCPU was running on it.
    pub busy_ns: u64,
    /// The rest of the window, less `missing_ns`.
    pub idle_ns: u64,
    /// Time between the last record before a loss and the first after it.
    pub missing_ns: u64,
    /// Events lost on it.
    pub events_discarded: u64,
    /// Running time per vCPU.
    pub vcpus: Vec<VcpuTime>,
}

/// A vCPU's time on a pCPU.
#[derive(Clone, Debug, Serialize)]
pub struct VcpuTime {
    /// Domain.
    pub domain: u32,
    /// vCPU.
    pub vcpu: u32,
    /// Running time.
    pub ns: u64,
}

/// Interrupts of one vector for one domain.
#[derive(Clone, Debug, Serialize)]
pub struct InterruptReport {
    /// Target domain; `null`: the hypervisor's own.
    pub domain: Option<u32>,
    /// Vector.
    pub vector: u32,
    /// Count.
    pub count: u64,
}

/// Clock ticks → ns.
#[derive(Clone, Copy)]
pub(crate) struct Clock(pub u64);

impl Clock {
    pub fn ns(self, ticks: u64) -> u64 {
        if self.0 == 1_000_000_000 {
            return ticks;
        }
        (u128::from(ticks) * 1_000_000_000 / u128::from(self.0.max(1))) as u64
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10000.0 / whole as f64).round() / 100.0
    }
}

fn state_row(d: &Durations, clk: Clock, tracked: u64) -> StateRow {
    // hdrhistogram answers with its bucket's highest equivalent value, which
    // may pass the true extremes: keep percentiles within [min, max].
    let h = d.histogram();
    let q = |p: f64| if d.count == 0 { 0 } else { clk.ns(h.value_at_quantile(p).clamp(d.min, d.max)) };
    StateRow {
        count: d.count,
        total_ns: clk.ns(d.total),
        pct: pct(clk.ns(d.total), tracked),
        avg_ns: clk.ns(d.total.checked_div(d.count).unwrap_or(0)),
        p50_ns: q(0.5),
        p95_ns: q(0.95),
        p99_ns: q(0.99),
        max_ns: clk.ns(d.max),
    }
}

fn detail_fields(d: ExitDetail) -> (&'static str, u64, u8, &'static str) {
    let acc = |a: Access| a.name();
    match d {
        ExitDetail::Io { port, size, access } => ("io", u64::from(port), size, acc(access)),
        ExitDetail::Mmio { gpa, size, access } => ("mmio", gpa, size, acc(access)),
        ExitDetail::Msr { index, access } => ("msr", u64::from(index), 0, acc(access)),
        ExitDetail::Vector(v) => ("vector", u64::from(v), 0, ""),
        ExitDetail::Hypercall(nr) => ("hypercall", u64::from(nr), 0, ""),
        _ => ("", 0, 0, ""),
    }
}

/// One vCPU's rows, its times clipped to the window and its tracking
/// ending at `end` (the end of the window, or when its domain went away).
pub(crate) fn vcpu_report(v: &VcpuAcc, clk: Clock, w: Window, end: u64) -> VcpuReport {
    let tracked = clk.ns(w.clip(v.known_since.unwrap_or(v.first), end));
    let n_exits: u64 = v.exits.iter().map(|x| x.count).sum();
    let mut exits: Vec<ExitRow> = v
        .exits
        .iter()
        .filter(|x| x.count > 0 || x.times.count > 0)
        .map(|x| {
            let s = state_row(&x.times, clk, tracked);
            ExitRow {
                reason: x.name.clone(),
                code: x.code,
                count: x.count,
                count_pct: pct(x.count, n_exits),
                total_ns: s.total_ns,
                time_pct: s.pct,
                min_ns: if x.times.count == 0 { 0 } else { clk.ns(x.times.min) },
                avg_ns: s.avg_ns,
                p50_ns: s.p50_ns,
                p95_ns: s.p95_ns,
                p99_ns: s.p99_ns,
                max_ns: s.max_ns,
                timed: x.times.count,
            }
        })
        .collect();
    exits.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
    // In key order first (the sort below is stable): rows of equal count,
    // code and target keep one order whatever the map's.
    let mut details: Vec<_> = v.details.iter().collect();
    details.sort_unstable_by_key(|(k, _)| **k);
    let mut exit_details: Vec<DetailRow> = details
        .into_iter()
        .map(|((code, detail), d)| {
            let (kind, target, size, access) = detail_fields(*detail);
            let reason = v.exits.iter().find(|x| x.code == *code).map_or(String::new(), |x| x.name.clone());
            DetailRow {
                reason,
                code: *code,
                kind,
                target,
                size,
                access,
                count: d.count,
                total_ns: clk.ns(d.total),
                avg_ns: clk.ns(d.total.checked_div(d.count).unwrap_or(0)),
                max_ns: clk.ns(d.max),
            }
        })
        .collect();
    exit_details.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)).then(a.target.cmp(&b.target)));
    let st = |i: usize| state_row(&v.states[i], clk, tracked);
    let runnable = Durations::merged(&[&v.states[WAKE], &v.states[PREEMPT], &v.states[OTHER]]);
    let runstates = Runstates {
        running: st(0),
        runnable: state_row(&runnable, clk, tracked),
        blocked: st(2),
        offline: st(3),
        lost: st(LOST),
        runnable_wake: st(WAKE),
        runnable_preempt: st(PREEMPT),
        runnable_other: st(OTHER),
    };
    let mut hypercalls: Vec<CallRow> = v
        .calls
        .iter()
        .filter(|(_, c)| c.count > 0 || c.times.count > 0)
        .map(|(nr, c)| CallRow {
            nr: *nr,
            name: c.name.clone(),
            count: c.count,
            total_ns: clk.ns(c.times.total),
            avg_ns: clk.ns(c.times.total.checked_div(c.times.count).unwrap_or(0)),
            p95_ns: state_row(&c.times, clk, 0).p95_ns,
            max_ns: clk.ns(c.times.max),
            timed: c.times.count,
        })
        .collect();
    hypercalls.sort_by_key(|c| c.nr);
    let guest_events = v
        .guest
        .iter()
        .map(|(kind, (name, count))| GuestRow { kind: *kind, name: name.clone(), count: *count })
        .collect();
    let pcpu_ns = v.on_pcpu.iter().map(|(cpu, t)| PcpuTime { cpu: *cpu, ns: clk.ns(*t) }).collect();
    VcpuReport {
        domain: v.id.domain,
        vcpu: v.id.vcpu,
        tracked_ns: tracked,
        exits,
        exits_unmatched: v.exits_unmatched,
        exit_details,
        runstates,
        hypercalls,
        guest_events,
        pcpu_ns,
        kernel_split: v.split.report(clk),
    }
}

/// Builds the report of a pass.
pub(crate) fn build(trace: String, pass: Pass, freq: u64, sets: Vec<String>) -> Report {
    let clk = Clock(freq);
    let Pass { acc, begin, end, by_class, streams, warnings, windows } = pass;
    let events = streams.iter().map(|s| s.events).sum();
    let w = acc.window;
    let win_end = end.min(w.to);
    let span = win_end.saturating_sub(w.from.max(begin));
    let duration_ns = clk.ns(span);
    let secs = duration_ns as f64 / 1e9;
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let cpus: Vec<CpuReport> = streams
        .iter()
        .map(|s| CpuReport {
            cpu: s.cpu,
            stream: s.name.clone(),
            events: s.events,
            events_per_s: rate(s.events),
            events_discarded: s.discarded,
            packets: s.packets,
        })
        .collect();
    let events_discarded = streams.iter().map(|s| s.discarded).sum::<u64>() + acc.lost_in_band;
    let event_classes = (0..2)
        .flat_map(|stream| by_class[stream].iter().enumerate().map(move |(id, &n)| (stream as u32, id as u32, n)))
        .filter(|(_, _, n)| *n > 0)
        .map(|(stream, id, count)| ClassReport { id, stream, name: String::new(), count, per_s: rate(count) })
        .collect();

    let mut vcpus: Vec<VcpuReport> = acc
        .vcpus
        .iter()
        .map(|v| v.gone.as_deref().cloned().unwrap_or_else(|| vcpu_report(v, clk, w, win_end)))
        .collect();
    vcpus.sort_by_key(|v| (v.domain, v.vcpu));

    let ran_on = acc.vcpus.iter().flat_map(|v| v.on_pcpu.keys().copied());
    let mut pcpu_ids: Vec<u32> = streams.iter().map(|s| s.cpu).chain(acc.pcpus.keys().copied()).chain(ran_on).collect();
    pcpu_ids.sort();
    pcpu_ids.dedup();
    let pcpus = pcpu_ids
        .into_iter()
        .map(|cpu| {
            let p = acc.pcpus.get(&cpu);
            let busy = acc.vcpus.iter().filter_map(|v| v.on_pcpu.get(&cpu)).sum();
            let busy_ns = clk.ns(busy);
            let missing_ns = clk.ns(p.map_or(0, |p| p.missing));
            let mut on: Vec<VcpuTime> = acc
                .vcpus
                .iter()
                .filter_map(|v| {
                    v.on_pcpu.get(&cpu).map(|t| VcpuTime { domain: v.id.domain, vcpu: v.id.vcpu, ns: clk.ns(*t) })
                })
                .collect();
            on.sort_by_key(|v| (v.domain, v.vcpu));
            let stream_lost = streams.iter().filter(|s| s.cpu == cpu).map(|s| s.discarded).sum::<u64>();
            PcpuReport {
                cpu,
                busy_ns,
                idle_ns: duration_ns.saturating_sub(busy_ns + missing_ns),
                missing_ns,
                events_discarded: stream_lost.max(p.map_or(0, |p| p.discarded)),
                vcpus: on,
            }
        })
        .collect();
    let mut interrupts: Vec<InterruptReport> = acc
        .interrupts
        .iter()
        .map(|((domain, vector), count)| InterruptReport { domain: *domain, vector: *vector, count: *count })
        .collect();
    interrupts.sort_by_key(|i| (i.domain, i.vector));
    Report {
        trace,
        duration_ns,
        events,
        events_discarded,
        events_unattributed: acc.unattributed,
        from_ns: clk.ns(w.from.saturating_sub(begin)),
        to_ns: clk.ns(win_end.saturating_sub(begin)),
        clock_freq: freq,
        event_sets: sets,
        warnings,
        cpus,
        event_classes,
        vcpus,
        pcpus,
        interrupts,
        windows,
    }
}
