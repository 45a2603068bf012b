//! The report as aligned text tables (the columns `perf kvm stat` users
//! know) and as one CSV file per table.

use std::io::{self, Write};
use std::path::Path;

use crate::report::{Report, StateRow};

/// A table: a header row and rows of cells, printed with each column as
/// wide as its widest cell; the first column left-aligned, the rest right.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Table {
        Table { head: head.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn write(&self, w: &mut dyn Write, indent: &str) -> io::Result<()> {
        let mut width: Vec<usize> = self.head.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                width[i] = width[i].max(c.len());
            }
        }
        for r in std::iter::once(&self.head).chain(&self.rows) {
            write!(w, "{indent}")?;
            for (i, c) in r.iter().enumerate() {
                if i == 0 {
                    write!(w, "{c:<0$}", width[0])?;
                } else {
                    write!(w, "  {c:>0$}", width[i])?;
                }
            }
            writeln!(w)?;
        }
        Ok(())
    }
}

/// ns as µs with two decimals (perf kvm stat prints exit times in µs).
fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1e3)
}

/// ns as seconds with six decimals.
fn s(ns: u64) -> String {
    format!("{:.6}", ns as f64 / 1e9)
}

fn pct(p: f64) -> String {
    format!("{p:.2}%")
}

fn state_cells(name: &str, r: &StateRow) -> Vec<String> {
    vec![
        name.to_string(),
        r.count.to_string(),
        s(r.total_ns),
        pct(r.pct),
        us(r.avg_ns),
        us(r.p50_ns),
        us(r.p95_ns),
        us(r.p99_ns),
        us(r.max_ns),
    ]
}

/// Writes the report as text tables.
pub fn write_text(r: &Report, w: &mut dyn Write) -> io::Result<()> {
    writeln!(w, "Trace: {}", r.trace)?;
    let secs = r.duration_ns as f64 / 1e9;
    writeln!(
        w,
        "Duration: {} s ({} .. {} ns after the first record), {} events ({:.0}/s), {} discarded",
        s(r.duration_ns),
        r.from_ns,
        r.to_ns,
        r.events,
        if secs > 0.0 { r.events as f64 / secs } else { 0.0 },
        r.events_discarded
    )?;
    if r.event_sets.is_empty() {
        writeln!(w, "Event sets: none recognised (generic analyses only)")?;
    } else {
        writeln!(w, "Event sets: {}", r.event_sets.join(", "))?;
    }
    for warn in &r.warnings {
        writeln!(w, "warning: {warn}")?;
    }
    if r.events_unattributed > 0 {
        writeln!(w, "{} events of threads not yet known as vCPUs: in no vCPU's figures", r.events_unattributed)?;
    }

    writeln!(w, "\nPer CPU:")?;
    let mut t = Table::new(&["CPU", "Stream", "Events", "Events/s", "Discarded", "Packets"]);
    for c in &r.cpus {
        t.row(vec![
            c.cpu.to_string(),
            c.stream.clone(),
            c.events.to_string(),
            format!("{:.0}", c.events_per_s),
            c.events_discarded.to_string(),
            c.packets.to_string(),
        ]);
    }
    t.write(w, "  ")?;

    writeln!(w, "\nPer event class:")?;
    let mut t = Table::new(&["Event", "Count", "Per s"]);
    for c in &r.event_classes {
        t.row(vec![c.name.clone(), c.count.to_string(), format!("{:.0}", c.per_s)]);
    }
    t.write(w, "  ")?;

    for v in &r.vcpus {
        writeln!(w, "\n== domain {} vCPU {} ({} s tracked) ==", v.domain, v.vcpu, s(v.tracked_ns))?;
        if !v.exits.is_empty() {
            writeln!(w, "VM exits (times in µs, exit to next entry):")?;
            let mut t = Table::new(&[
                "VM-EXIT", "Code", "Samples", "Samples%", "Time%", "Min", "Max", "Avg", "p50", "p95", "p99",
            ]);
            for x in &v.exits {
                t.row(vec![
                    x.reason.clone(),
                    x.code.to_string(),
                    x.count.to_string(),
                    pct(x.count_pct),
                    pct(x.time_pct),
                    us(x.min_ns),
                    us(x.max_ns),
                    us(x.avg_ns),
                    us(x.p50_ns),
                    us(x.p95_ns),
                    us(x.p99_ns),
                ]);
            }
            t.write(w, "  ")?;
            if v.exits_unmatched > 0 {
                writeln!(w, "  ({} exits without a following entry are counted but not timed)", v.exits_unmatched)?;
            }
        }
        if !v.exit_details.is_empty() {
            writeln!(w, "Exit details:")?;
            let mut t =
                Table::new(&["VM-EXIT", "Kind", "Target", "Size", "Access", "Samples", "Total µs", "Avg", "Max"]);
            for d in &v.exit_details {
                t.row(vec![
                    d.reason.clone(),
                    d.kind.to_string(),
                    format!("{:#x}", d.target),
                    d.size.to_string(),
                    d.access.to_string(),
                    d.count.to_string(),
                    us(d.total_ns),
                    us(d.avg_ns),
                    us(d.max_ns),
                ]);
            }
            t.write(w, "  ")?;
        }
        if let Some(k) = &v.kernel_split {
            writeln!(w, "Kernel/VMM split of exits handed to the VMM (µs, summed):")?;
            let mut t = Table::new(&["KVM_EXIT", "Code", "Count", "Kernel", "Timed", "VMM", "Timed", "Kernel%"]);
            for x in &k.to_vmm {
                t.row(vec![
                    x.reason.clone(),
                    x.code.to_string(),
                    x.count.to_string(),
                    us(x.kernel_ns),
                    x.kernel_timed.to_string(),
                    us(x.vmm_ns),
                    x.vmm_timed.to_string(),
                    pct(x.kernel_pct),
                ]);
            }
            t.write(w, "  ")?;
            writeln!(w, "Exits that never reached user space: {}", k.exits_in_kernel)?;
            let mut t = Table::new(&["Kernel reason", "Code", "Count", "Total µs", "Timed"]);
            for x in &k.in_kernel {
                t.row(vec![
                    x.reason.clone(),
                    x.code.to_string(),
                    x.count.to_string(),
                    us(x.total_ns),
                    x.timed.to_string(),
                ]);
            }
            t.write(w, "  ")?;
        }
        writeln!(w, "Runstates (interval times in µs):")?;
        let mut t = Table::new(&["State", "Count", "Total s", "Share", "Avg", "p50", "p95", "p99", "Max"]);
        for (name, row) in v.runstates.rows() {
            // The runnable split, indented under runnable.
            let shown = name.strip_prefix("runnable_").map_or(name.to_string(), |sub| format!("  {sub}"));
            t.row(state_cells(&shown, row));
        }
        t.write(w, "  ")?;
        if !v.hypercalls.is_empty() {
            writeln!(w, "Hypercalls (times in µs, entry to exit):")?;
            let mut t = Table::new(&["Hypercall", "Nr", "Count", "Total", "Avg", "p95", "Max"]);
            for c in &v.hypercalls {
                t.row(vec![
                    c.name.clone(),
                    c.nr.to_string(),
                    c.count.to_string(),
                    us(c.total_ns),
                    us(c.avg_ns),
                    us(c.p95_ns),
                    us(c.max_ns),
                ]);
            }
            t.write(w, "  ")?;
        }
        if !v.guest_events.is_empty() {
            writeln!(w, "Guest events:")?;
            let mut t = Table::new(&["Kind", "Id", "Count"]);
            for g in &v.guest_events {
                t.row(vec![g.name.clone(), g.kind.to_string(), g.count.to_string()]);
            }
            t.write(w, "  ")?;
        }
    }

    if !r.vcpus.is_empty() {
        writeln!(w, "\nPer pCPU (s):")?;
        let mut t = Table::new(&["pCPU", "Busy", "Idle", "Missing", "Discarded", "vCPUs (domain.vcpu: s)"]);
        for p in &r.pcpus {
            let on: Vec<String> = p.vcpus.iter().map(|v| format!("{}.{}: {}", v.domain, v.vcpu, s(v.ns))).collect();
            t.row(vec![
                p.cpu.to_string(),
                s(p.busy_ns),
                s(p.idle_ns),
                s(p.missing_ns),
                p.events_discarded.to_string(),
                on.join(", "),
            ]);
        }
        t.write(w, "  ")?;
    }
    if !r.interrupts.is_empty() {
        writeln!(w, "\nInterrupts:")?;
        let mut t = Table::new(&["Domain", "Vector", "Count"]);
        for i in &r.interrupts {
            t.row(vec![
                i.domain.map_or("hypervisor".to_string(), |d| d.to_string()),
                format!("{:#x}", i.vector),
                i.count.to_string(),
            ]);
        }
        t.write(w, "  ")?;
    }
    Ok(())
}

fn csv_file(dir: &Path, name: &str, head: &[&str], rows: Vec<Vec<String>>) -> io::Result<()> {
    let mut w = csv::Writer::from_path(dir.join(name)).map_err(io::Error::other)?;
    w.write_record(head).map_err(io::Error::other)?;
    for r in rows {
        w.write_record(&r).map_err(io::Error::other)?;
    }
    w.flush()
}

/// Writes one CSV file per table into `dir` (created if missing):
/// `cpus.csv`, `event_classes.csv`, `exits.csv`, `exit_details.csv`,
/// `runstates.csv`, `hypercalls.csv`, `guest_events.csv`,
/// `kernel_split.csv`, `pcpus.csv`, `interrupts.csv`. Times in ns.
pub fn write_csv(r: &Report, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let n = |v: u64| v.to_string();
    csv_file(
        dir,
        "cpus.csv",
        &["cpu", "stream", "events", "events_per_s", "events_discarded", "packets"],
        r.cpus
            .iter()
            .map(|c| {
                vec![
                    n(c.cpu.into()),
                    c.stream.clone(),
                    n(c.events),
                    c.events_per_s.to_string(),
                    n(c.events_discarded),
                    n(c.packets),
                ]
            })
            .collect(),
    )?;
    csv_file(
        dir,
        "event_classes.csv",
        &["id", "name", "count", "per_s", "stream"],
        r.event_classes
            .iter()
            .map(|c| vec![n(c.id.into()), c.name.clone(), n(c.count), c.per_s.to_string(), n(c.stream.into())])
            .collect(),
    )?;
    let mut exits = Vec::new();
    let mut details = Vec::new();
    let mut states = Vec::new();
    let mut calls = Vec::new();
    let mut guest = Vec::new();
    let mut split = Vec::new();
    for v in &r.vcpus {
        let id = [n(v.domain.into()), n(v.vcpu.into())];
        for x in &v.exits {
            let mut row = id.to_vec();
            row.extend([
                x.reason.clone(),
                n(x.code.into()),
                n(x.count),
                x.count_pct.to_string(),
                n(x.total_ns),
                x.time_pct.to_string(),
                n(x.min_ns),
                n(x.avg_ns),
                n(x.p50_ns),
                n(x.p95_ns),
                n(x.p99_ns),
                n(x.max_ns),
                n(x.timed),
            ]);
            exits.push(row);
        }
        for d in &v.exit_details {
            let mut row = id.to_vec();
            row.extend([
                d.reason.clone(),
                n(d.code.into()),
                d.kind.to_string(),
                n(d.target),
                n(d.size.into()),
                d.access.to_string(),
                n(d.count),
                n(d.total_ns),
                n(d.avg_ns),
                n(d.max_ns),
            ]);
            details.push(row);
        }
        for (name, s) in v.runstates.rows() {
            let mut row = id.to_vec();
            row.extend([
                name.to_string(),
                n(s.count),
                n(s.total_ns),
                s.pct.to_string(),
                n(s.avg_ns),
                n(s.p50_ns),
                n(s.p95_ns),
                n(s.p99_ns),
                n(s.max_ns),
            ]);
            states.push(row);
        }
        for c in &v.hypercalls {
            let mut row = id.to_vec();
            row.extend([
                n(c.nr.into()),
                c.name.clone(),
                n(c.count),
                n(c.total_ns),
                n(c.avg_ns),
                n(c.p95_ns),
                n(c.max_ns),
                n(c.timed),
            ]);
            calls.push(row);
        }
        for g in &v.guest_events {
            let mut row = id.to_vec();
            row.extend([n(g.kind.into()), g.name.clone(), n(g.count)]);
            guest.push(row);
        }
        // One row per reason: `to_vmm` (handed to the VMM) or `in_kernel` (never reached user space).
        if let Some(k) = &v.kernel_split {
            for x in &k.to_vmm {
                let mut row = id.to_vec();
                row.extend(["to_vmm".into(), x.reason.clone(), n(x.code.into()), n(x.count)]);
                row.extend([n(x.kernel_ns), n(x.kernel_timed), n(x.vmm_ns), n(x.vmm_timed)]);
                split.push(row);
            }
            for x in &k.in_kernel {
                let mut row = id.to_vec();
                row.extend(["in_kernel".into(), x.reason.clone(), n(x.code.into()), n(x.count)]);
                row.extend([n(x.total_ns), n(x.timed), n(0), n(0)]);
                split.push(row);
            }
        }
    }
    let ex_head = [
        "domain",
        "vcpu",
        "reason",
        "code",
        "count",
        "count_pct",
        "total_ns",
        "time_pct",
        "min_ns",
        "avg_ns",
        "p50_ns",
        "p95_ns",
        "p99_ns",
        "max_ns",
        "timed",
    ];
    csv_file(dir, "exits.csv", &ex_head, exits)?;
    let det_head = [
        "domain", "vcpu", "reason", "code", "kind", "target", "size", "access", "count", "total_ns", "avg_ns", "max_ns",
    ];
    csv_file(dir, "exit_details.csv", &det_head, details)?;
    let st_head =
        ["domain", "vcpu", "state", "count", "total_ns", "pct", "avg_ns", "p50_ns", "p95_ns", "p99_ns", "max_ns"];
    csv_file(dir, "runstates.csv", &st_head, states)?;
    let hc_head = ["domain", "vcpu", "nr", "name", "count", "total_ns", "avg_ns", "p95_ns", "max_ns", "timed"];
    csv_file(dir, "hypercalls.csv", &hc_head, calls)?;
    csv_file(dir, "guest_events.csv", &["domain", "vcpu", "kind", "name", "count"], guest)?;
    let split_head =
        ["domain", "vcpu", "side", "reason", "code", "count", "kernel_ns", "kernel_timed", "vmm_ns", "vmm_timed"];
    csv_file(dir, "kernel_split.csv", &split_head, split)?;
    csv_file(
        dir,
        "pcpus.csv",
        &["cpu", "busy_ns", "idle_ns", "missing_ns", "events_discarded"],
        r.pcpus
            .iter()
            .map(|p| vec![n(p.cpu.into()), n(p.busy_ns), n(p.idle_ns), n(p.missing_ns), n(p.events_discarded)])
            .collect(),
    )?;
    csv_file(
        dir,
        "interrupts.csv",
        &["domain", "vector", "count"],
        r.interrupts
            .iter()
            .map(|i| vec![i.domain.map_or(String::new(), |d| d.to_string()), n(i.vector.into()), n(i.count)])
            .collect(),
    )
}
