//! `hvtrace report`: one self-contained HTML page (no script, no font, no
//! network) with the `hvtrace analyze` tables, an exit-reason chart per
//! vCPU and an SVG timeline of the pCPUs.
//!
//! The timeline is downsampled to [`COLUMNS`] columns per pCPU whatever the
//! trace's size: each column is coloured by the vCPU that ran longest in
//! it (grey: idle), carries a mark whose height grows with the exits in it,
//! and is hatched where the pCPU lost events (its state between the last
//! record before a loss and the first after it is unknown). The page's
//! size depends on the numbers of pCPUs, vCPUs and reasons, not on the
//! number of events.
//!
//! One pass: the timeline is an [`hvtrace_analysis::Observer`] of the
//! analysis's own walk, so the trace is read once. Its length is known
//! only at the end, so the pass bins into twice as many columns over a
//! span that doubles as the trace grows (neighbours merged), and the page's
//! columns are then made of whole ones of those: no time is split, and a
//! column's edge is off by less than a column. It draws the VMM's streams
//! (stream class 0); the kernel's are in the tables.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use hvtrace_analysis::{Options, Report};
use hvtrace_model::{Event, Mapping, Runstate, Vcpu};

use crate::Error;

/// Columns of the timeline (one SVG rectangle each at most, per pCPU).
pub const COLUMNS: usize = 800;

/// What a report holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportSummary {
    /// Bytes of HTML written.
    pub bytes: u64,
    /// pCPU lanes in the timeline.
    pub pcpus: usize,
    /// vCPUs in the legend.
    pub vcpus: usize,
    /// What was skipped (damaged packets: the report covers every intact
    /// one) and other things to know, one line each (also on the page).
    pub warnings: Vec<String>,
}

/// Columns the pass bins into: twice the page's, because the trace's end
/// is known only after the pass (see [`Timeline::fit`]).
const FINE: usize = 2 * COLUMNS;

/// One pCPU's lane: per column, time per vCPU (few vCPUs per column, so a
/// short list), exits, and whether data is missing.
struct Lane {
    time: Vec<Vec<(Vcpu, u64)>>,
    exits: Vec<u32>,
    missing: Vec<bool>,
    running: Option<(Vcpu, u64)>,
    last: Option<u64>,
}

/// Adds `t` ns of `v` to a column's times.
fn add(times: &mut Vec<(Vcpu, u64)>, v: Vcpu, t: u64) {
    match times.iter_mut().find(|(x, _)| *x == v) {
        Some((_, n)) => *n += t,
        None => times.push((v, t)),
    }
}

impl Lane {
    fn new(columns: usize) -> Lane {
        Lane {
            time: vec![Vec::new(); columns],
            exits: vec![0; columns],
            missing: vec![false; columns],
            running: None,
            last: None,
        }
    }

    /// Folds column `from` into column `to`.
    fn fold(&mut self, from: usize, to: usize, into: &mut Lane) {
        for (v, t) in std::mem::take(&mut self.time[from]) {
            add(&mut into.time[to], v, t);
        }
        into.exits[to] = into.exits[to].saturating_add(std::mem::take(&mut self.exits[from]));
        into.missing[to] |= std::mem::take(&mut self.missing[from]);
    }

    /// Twice as wide columns: neighbours merged into the first half.
    fn halve(&mut self) {
        let mut merged = Lane::new(self.time.len());
        for c in 0..self.time.len() {
            self.fold(c, c / 2, &mut merged);
        }
        (self.time, self.exits, self.missing) = (merged.time, merged.exits, merged.missing);
    }
}

/// Bins the analysis's pass into lanes of [`FINE`] columns over `span` ns
/// from `begin`, doubled whenever a later time comes.
struct Timeline {
    begin: Option<u64>,
    span: u64,
    /// The VMM's last record.
    end: u64,
    lanes: BTreeMap<u32, Lane>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline { begin: None, span: FINE as u64, end: 0, lanes: BTreeMap::new() }
    }

    fn col(&self, ns: u64) -> usize {
        let rel = ns.saturating_sub(self.begin.unwrap_or(ns));
        ((u128::from(rel) * FINE as u128 / u128::from(self.span.max(1))) as usize).min(FINE - 1)
    }

    /// Makes the columns cover `ns`: the span doubles (neighbouring columns
    /// merged) until it does. A trace's span thus ends below twice its
    /// duration, so each of the page's columns is at least one of these
    /// ([`Timeline::page`]), and memory does not grow with the trace.
    fn fit(&mut self, ns: u64) {
        let begin = *self.begin.get_or_insert(ns);
        while ns.saturating_sub(begin) >= self.span && self.span < u64::MAX / 2 {
            self.lanes.values_mut().for_each(Lane::halve);
            self.span *= 2;
        }
    }

    fn lane(&mut self, ns: u64, pcpu: u32) -> &mut Lane {
        self.fit(ns);
        self.lanes.entry(pcpu).or_insert_with(|| Lane::new(FINE))
    }

    /// Credits the time from the running vCPU's start to `ns` to its columns.
    fn credit(&mut self, pcpu: u32, ns: u64) {
        let Some((v, since)) = self.lanes.get(&pcpu).and_then(|l| l.running) else { return };
        let (c0, c1) = (self.col(since), self.col(ns));
        let begin = self.begin.unwrap_or(0);
        let width = self.span.max(1) as u128;
        let lane = self.lanes.get_mut(&pcpu).expect("lane");
        for c in c0..=c1 {
            let start = begin + (width * c as u128 / FINE as u128) as u64;
            let stop = begin + (width * (c as u128 + 1) / FINE as u128) as u64;
            add(&mut lane.time[c], v, ns.min(stop).saturating_sub(since.max(start)));
        }
        lane.running = Some((v, ns));
    }

    fn runs(&mut self, ns: u64, pcpu: u32, v: Option<Vcpu>) {
        self.credit(pcpu, ns);
        self.lanes.get_mut(&pcpu).expect("lane").running = v.map(|v| (v, ns));
    }

    /// The lanes in [`COLUMNS`] columns over `duration` ns from the first
    /// record, after crediting every running vCPU up to the VMM's last
    /// record: each column gathers the fine columns that start in it
    /// (whole, so no time is split or lost; a boundary moves by less
    /// than a column).
    fn page(mut self, duration: u64) -> BTreeMap<u32, Lane> {
        let (end, pcpus): (u64, Vec<u32>) = (self.end, self.lanes.keys().copied().collect());
        self.fit(end);
        for c in pcpus {
            self.runs(end, c, None);
        }
        let width = |c: usize| u128::from(self.span) * c as u128 / FINE as u128;
        let duration = u128::from(duration.max(1));
        let to = |c: usize| ((width(c) * COLUMNS as u128 / duration) as usize).min(COLUMNS - 1);
        let mut page = BTreeMap::new();
        for (cpu, mut lane) in std::mem::take(&mut self.lanes) {
            let mut out = Lane::new(COLUMNS);
            for c in 0..FINE {
                lane.fold(c, to(c), &mut out);
            }
            page.insert(cpu, out);
        }
        page
    }
}

impl hvtrace_analysis::Observer for Timeline {
    fn begin(&mut self, ns: Option<u64>) {
        self.begin = ns;
    }

    fn event(&mut self, class: u32, ns: u64, pcpu: u32, e: Event<'_>) {
        // The VMM's streams: the kernel's half of each exit is in the tables.
        if class != 0 {
            return;
        }
        self.end = self.end.max(ns);
        self.lane(ns, pcpu).last = Some(ns);
        let running = self.lanes[&pcpu].running.map(|(v, _)| v);
        match e {
            Event::Exit { vcpu, .. } => {
                let c = self.col(ns);
                let lane = self.lanes.get_mut(&pcpu).expect("lane");
                lane.exits[c] = lane.exits[c].saturating_add(1);
                if running != Some(vcpu) {
                    self.runs(ns, pcpu, Some(vcpu));
                }
            }
            Event::Entry { vcpu } if running != Some(vcpu) => self.runs(ns, pcpu, Some(vcpu)),
            Event::Runstate { vcpu, new: Runstate::Running } if running != Some(vcpu) => {
                self.runs(ns, pcpu, Some(vcpu))
            }
            Event::Runstate { vcpu, .. } if running == Some(vcpu) => self.runs(ns, pcpu, None),
            Event::Lost { count } => self.lost(class, None, ns, pcpu, count),
            _ => {}
        }
    }

    fn unmapped(&mut self, class: u32, ns: u64, cpu: u32) {
        if class == 0 {
            self.end = self.end.max(ns);
            self.lane(ns, cpu).last = Some(ns);
        }
    }

    fn lost(&mut self, class: u32, since: Option<u64>, ns: u64, pcpu: u32, _count: u64) {
        if class != 0 {
            return;
        }
        let last = self.lane(ns, pcpu).last;
        // At most `ns`: in a trace whose packets are out of order, the
        // record before a loss can come after it.
        let since = since.or(last).unwrap_or(ns).min(ns);
        let (c0, c1) = (self.col(since), self.col(ns));
        let lane = self.lanes.get_mut(&pcpu).expect("lane");
        for m in &mut lane.missing[c0..=c1] {
            *m = true;
        }
    }
}

/// A colour per vCPU, far apart on the hue circle.
fn colour(i: usize) -> String {
    format!("hsl({}, 65%, 50%)", (i * 137) % 360)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A duration for people: `1.23 ms`.
fn time(ns: u64) -> String {
    match ns {
        n if n >= 1_000_000_000 => format!("{:.3} s", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.3} ms", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.3} µs", n as f64 / 1e3),
        n => format!("{n} ns"),
    }
}

/// Analyses the trace at `dir` and writes the report page to `out`, in
/// one pass: the timeline watches the analysis's
/// ([`hvtrace_analysis::analyze_with`]).
pub fn write_report(dir: &Path, mappings: &[&dyn Mapping], out: &mut dyn Write) -> Result<ReportSummary, Error> {
    let mut tl = Timeline::new();
    let report = hvtrace_analysis::analyze_with(dir, mappings, &Options::default(), &mut |_| {}, &mut tl).map_err(
        |e| match e {
            hvtrace_analysis::Error::Read(r) => Error::Read(r),
            e => Error::Analysis(e),
        },
    )?;
    let lanes = tl.page(report.duration_ns);
    let html = render(&report, &lanes);
    out.write_all(html.as_bytes()).map_err(Error::Write)?;
    out.flush().map_err(Error::Write)?;
    Ok(ReportSummary {
        bytes: html.len() as u64,
        pcpus: lanes.len(),
        vcpus: report.vcpus.len(),
        warnings: report.warnings,
    })
}

fn render(r: &Report, lanes: &BTreeMap<u32, Lane>) -> String {
    let mut h = String::with_capacity(1 << 20);
    let vcpus: Vec<Vcpu> = r.vcpus.iter().map(|v| Vcpu::new(v.domain, v.vcpu)).collect();
    let colours: HashMap<Vcpu, String> = vcpus.iter().enumerate().map(|(i, v)| (*v, colour(i))).collect();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>hvtrace report: {}</title><style>\
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}}\
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}\
th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}h2{{margin-top:1.5em}}\
.legend span{{display:inline-block;margin-right:1em}}.sw{{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px;border:1px solid #999}}\
.warn{{color:#a40}}</style></head><body>\n",
        esc(&r.trace)
    );
    let _ = write!(
        h,
        "<h1>hvtrace report</h1><p>Trace <code>{}</code>: {} events over {}, {} discarded; event sets: {}.</p>",
        esc(&r.trace),
        r.events,
        time(r.duration_ns),
        r.events_discarded,
        if r.event_sets.is_empty() { "none (generic tables only)".into() } else { esc(&r.event_sets.join(", ")) }
    );
    for w in &r.warnings {
        let _ = write!(h, "<p class=\"warn\">Warning: {}</p>", esc(w));
    }
    timeline(&mut h, r, lanes, &vcpus, &colours);
    exit_charts(&mut h, r);
    tables(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

fn timeline(h: &mut String, r: &Report, tl: &BTreeMap<u32, Lane>, vcpus: &[Vcpu], colours: &HashMap<Vcpu, String>) {
    let (left, lane_h, gap, w) = (70usize, 22usize, 6usize, COLUMNS);
    let lanes = tl.len().max(1);
    let height = 20 + lanes * (lane_h + gap) + 40;
    let _ = write!(h, "<h2>Timeline</h2><p>A lane per pCPU, coloured by the vCPU that ran longest in each of {COLUMNS} columns of {}; black marks: VM exits (taller: more); hatched: events lost, state unknown.</p>", time(r.duration_ns / COLUMNS as u64));
    let _ = write!(
        h,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"pCPU timeline\">\
<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">\
<rect width=\"6\" height=\"6\" fill=\"#fff\"/><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#c00\" stroke-width=\"3\"/></pattern></defs>",
        left + w + 50
    );
    let max_exits = tl.values().flat_map(|l| l.exits.iter()).copied().max().unwrap_or(0).max(1);
    for (i, (cpu, lane)) in tl.iter().enumerate() {
        let y = 20 + i * (lane_h + gap);
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"12\">pCPU {cpu}</text>",
            left - 6,
            y + 15
        );
        let _ = write!(h, "<rect x=\"{left}\" y=\"{y}\" width=\"{w}\" height=\"{lane_h}\" fill=\"#eee\"/>");
        // Runs of equal columns become one rectangle.
        let top = |c: usize| lane.time[c].iter().filter(|(_, t)| *t > 0).max_by_key(|(_, t)| *t).map(|(v, _)| *v);
        let mut c = 0;
        while c < COLUMNS {
            let v = top(c);
            let mut e = c + 1;
            while e < COLUMNS && top(e) == v {
                e += 1;
            }
            if let Some(v) = v {
                let fill = colours.get(&v).cloned().unwrap_or_else(|| "#888".into());
                let _ = write!(h, "<rect x=\"{}\" y=\"{y}\" width=\"{}\" height=\"{lane_h}\" fill=\"{fill}\"><title>d{}v{}</title></rect>", left + c, e - c, v.domain, v.vcpu);
            }
            c = e;
        }
        let mut c = 0;
        while c < COLUMNS {
            if !lane.missing[c] {
                c += 1;
                continue;
            }
            let mut e = c + 1;
            while e < COLUMNS && lane.missing[e] {
                e += 1;
            }
            let _ = write!(h, "<rect x=\"{}\" y=\"{y}\" width=\"{}\" height=\"{lane_h}\" fill=\"url(#hatch)\"><title>events lost</title></rect>", left + c, e - c);
            c = e;
        }
        let mut path = String::new();
        for (c, &n) in lane.exits.iter().enumerate().filter(|(_, n)| **n > 0) {
            let len = 2 + (n as usize * (lane_h - 2)) / max_exits as usize;
            let _ = write!(path, "M{} {}v{}", left + c, y + lane_h - len.min(lane_h), len.min(lane_h));
        }
        if !path.is_empty() {
            let _ = write!(h, "<path d=\"{path}\" stroke=\"#000\" stroke-width=\"1\" opacity=\"0.6\"/>");
        }
    }
    let axis_y = 20 + lanes * (lane_h + gap);
    let _ = write!(h, "<line x1=\"{left}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"#444\"/>", left + w);
    for k in 0..=4 {
        let x = left + w * k / 4;
        let _ = write!(h, "<line x1=\"{x}\" y1=\"{axis_y}\" x2=\"{x}\" y2=\"{}\" stroke=\"#444\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>", axis_y + 4, axis_y + 16, time(r.duration_ns * k as u64 / 4));
    }
    let _ = write!(
        h,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">time since the first record</text></svg>",
        left + w / 2,
        axis_y + 32
    );
    h.push_str("<p class=\"legend\">");
    for v in vcpus {
        let _ =
            write!(h, "<span><i class=\"sw\" style=\"background:{}\"></i>d{}v{}</span>", colours[v], v.domain, v.vcpu);
    }
    h.push_str("<span><i class=\"sw\" style=\"background:#eee\"></i>idle / no vCPU</span><span><svg width=\"14\" height=\"14\"><rect width=\"14\" height=\"14\" fill=\"url(#hatch)\"/></svg> events lost</span><span><i class=\"sw\" style=\"background:#000;width:2px\"></i>VM exits</span></p>");
}

fn exit_charts(h: &mut String, r: &Report) {
    h.push_str("<h2>Exit reasons per vCPU</h2><p>Exits by reason (count; bar length relative to the vCPU's most frequent reason).</p>");
    for v in &r.vcpus {
        if v.exits.is_empty() {
            continue;
        }
        let max = v.exits.iter().map(|e| e.count).max().unwrap_or(1).max(1);
        let (row, label_w, bar_w) = (18usize, 180usize, 420usize);
        let height = v.exits.len() * row + 24;
        let _ = write!(h, "<h3>vCPU d{}v{}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"exit reasons of d{}v{}\">", v.domain, v.vcpu, label_w + bar_w + 120, v.domain, v.vcpu);
        for (i, e) in v.exits.iter().enumerate() {
            let y = i * row;
            let len = (e.count as usize * bar_w / max as usize).max(1);
            let _ = write!(h, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"12\">{}</text><rect x=\"{label_w}\" y=\"{}\" width=\"{len}\" height=\"{}\" fill=\"#4a7ab8\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{} ({:.1}%)</text>", label_w - 6, y + 13, esc(&e.reason), y + 2, row - 4, label_w + len + 4, y + 13, e.count, e.count_pct);
        }
        let y = v.exits.len() * row + 16;
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{y}\" text-anchor=\"middle\" font-size=\"11\">exits (count)</text></svg>",
            label_w + bar_w / 2
        );
    }
}

fn tables(h: &mut String, r: &Report) {
    h.push_str("<h2>Exits</h2><table><tr><th>vCPU</th><th>reason</th><th>code</th><th>count</th><th>count %</th><th>total</th><th>time %</th><th>min</th><th>avg</th><th>max</th></tr>");
    for v in &r.vcpus {
        for e in &v.exits {
            let _ = write!(h, "<tr><td>d{}v{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>", v.domain, v.vcpu, esc(&e.reason), e.code, e.count, e.count_pct, time(e.total_ns), e.time_pct, time(e.min_ns), time(e.avg_ns), time(e.max_ns));
        }
    }
    h.push_str("</table><h2>Runstates</h2><table><tr><th>vCPU</th><th>state</th><th>count</th><th>total</th><th>%</th><th>avg</th><th>max</th></tr>");
    for v in &r.vcpus {
        let s = &v.runstates;
        for (name, row) in [
            ("running", &s.running),
            ("runnable", &s.runnable),
            ("blocked", &s.blocked),
            ("offline", &s.offline),
            ("lost (unknown)", &s.lost),
        ] {
            if row.count == 0 && row.total_ns == 0 {
                continue;
            }
            let _ = write!(
                h,
                "<tr><td>d{}v{}</td><td>{name}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
                v.domain,
                v.vcpu,
                row.count,
                time(row.total_ns),
                row.pct,
                time(row.avg_ns),
                time(row.max_ns)
            );
        }
    }
    h.push_str("</table><h2>Hypercalls</h2><table><tr><th>vCPU</th><th>hypercall</th><th>nr</th><th>count</th><th>total</th><th>avg</th><th>max</th></tr>");
    for v in &r.vcpus {
        for c in &v.hypercalls {
            let _ = write!(
                h,
                "<tr><td>d{}v{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                v.domain,
                v.vcpu,
                esc(&c.name),
                c.nr,
                c.count,
                time(c.total_ns),
                time(c.avg_ns),
                time(c.max_ns)
            );
        }
    }
    h.push_str("</table><h2>pCPUs</h2><table><tr><th>pCPU</th><th>busy</th><th>idle</th><th>missing data</th><th>events discarded</th></tr>");
    for p in &r.pcpus {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.cpu,
            time(p.busy_ns),
            time(p.idle_ns),
            time(p.missing_ns),
            p.events_discarded
        );
    }
    h.push_str("</table><h2>Events per CPU</h2><table><tr><th>stream</th><th>CPU</th><th>events</th><th>events/s</th><th>discarded</th><th>packets</th></tr>");
    for c in &r.cpus {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.stream),
            c.cpu,
            c.events,
            c.events_per_s,
            c.events_discarded,
            c.packets
        );
    }
    h.push_str("</table><h2>Event classes</h2><table><tr><th>event</th><th>id</th><th>count</th><th>per s</th></tr>");
    for c in &r.event_classes {
        let _ =
            write!(h, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr>", esc(&c.name), c.id, c.count, c.per_s);
    }
    h.push_str("</table><p>Figures as <code>hvtrace analyze</code> computes them (docs/analysis.md).</p>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvtrace_analysis::Observer;

    #[test]
    fn lost_events_hatch_the_time_since_the_pcpus_last_record_and_no_more() {
        let mut tl = Timeline::new();
        tl.begin(Some(0));
        let v = Vcpu::new(1, 0);
        tl.event(0, 0, 0, Event::Entry { vcpu: v });
        tl.event(0, 1600, 0, Event::Entry { vcpu: v });
        tl.lost(0, None, 4800, 0, 5);
        // Out of order (the record before the loss after it): only the
        // loss's own column, no panic.
        tl.lost(0, Some(9600), 8000, 0, 1);
        tl.event(0, 11200, 0, Event::Entry { vcpu: v });
        tl.lost(0, None, 10400, 0, 1);
        // The kernel's streams are not drawn.
        tl.lost(1, None, 12000, 0, 1);
        // 16 ns per column.
        let page = tl.page(COLUMNS as u64 * 16);
        let missing: Vec<usize> = (0..COLUMNS).filter(|&c| page[&0].missing[c]).collect();
        assert_eq!(missing, (100..=300).chain([500, 650]).collect::<Vec<_>>());
    }

    #[test]
    fn a_column_is_credited_to_the_vcpu_that_ran_in_it() {
        let mut tl = Timeline::new();
        tl.begin(Some(0));
        let (a, b) = (Vcpu::new(0, 0), Vcpu::new(0, 1));
        tl.event(0, 0, 3, Event::Runstate { vcpu: a, new: Runstate::Running });
        tl.event(0, 14, 3, Event::Runstate { vcpu: b, new: Runstate::Running });
        tl.event(0, 30, 3, Event::Runstate { vcpu: b, new: Runstate::Blocked });
        // 10 ns per column.
        let page = tl.page(COLUMNS as u64 * 10);
        let lane = &page[&3];
        assert_eq!(lane.time[0], [(a, 10)]);
        assert_eq!(lane.time[1], [(a, 4), (b, 6)]);
        assert_eq!(lane.time[2], [(b, 10)]);
        assert!(lane.time[3..].iter().flatten().all(|(_, t)| *t == 0));
    }

    #[test]
    fn widening_the_columns_as_the_trace_grows_keeps_every_ns_and_exit() {
        let mut tl = Timeline::new();
        tl.begin(Some(1_000));
        let (a, b) = (Vcpu::new(0, 0), Vcpu::new(0, 1));
        let exit = |vcpu| Event::Exit {
            vcpu,
            exit: hvtrace_model::Exit { code: 1, name: "x", detail: hvtrace_model::ExitDetail::None },
        };
        // a runs 1 µs, b 1 ms, a 1 s, with an exit at each switch: the
        // span doubles some 20 times on the way.
        tl.event(0, 1_000, 0, exit(a));
        tl.event(0, 2_000, 0, exit(b));
        tl.event(0, 1_002_000, 0, exit(a));
        tl.event(0, 1_001_002_000, 0, Event::Runstate { vcpu: a, new: Runstate::Offline });
        let page = tl.page(1_001_001_000);
        let lane = &page[&0];
        let total = |v| lane.time.iter().flatten().filter(|(x, _)| *x == v).map(|(_, t)| t).sum::<u64>();
        assert_eq!((total(a), total(b)), (1_000 + 1_000_000_000, 1_000_000));
        assert_eq!(lane.exits.iter().sum::<u32>(), 3);
        // The last second is a's, in the last columns.
        assert_eq!(lane.time[COLUMNS - 1].iter().map(|(v, _)| *v).collect::<Vec<_>>(), [a]);
    }
}
