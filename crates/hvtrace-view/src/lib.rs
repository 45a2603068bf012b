//! # hvtrace-view — traces as pictures
//!
//! Two views over the hypervisor model: [`write_report`], one
//! self-contained HTML page (see its module), and the Perfetto export.
//!
//! [`export_perfetto`] writes a trace directory as a Perfetto trace in its
//! native protobuf form (a stream of `TracePacket`s with `TrackEvent`s),
//! which ui.perfetto.dev and `trace_processor` open. It reads the trace
//! once, merging the streams by timestamp, and maps records onto the
//! hypervisor model (`hvtrace-model`) with the event sets' mappings, so it
//! knows nothing of where a trace came from. Layout:
//!
//! * a process per domain, a thread track per vCPU; on it a slice per stay
//!   in the hypervisor, named by the exit reason (exit → next entry), with
//!   hypercall slices nested in it (`hypercall <name>`), and guest events
//!   as instants;
//! * a track per pCPU (`pCPU N`) with a slice per vCPU that runs there
//!   (`d<domain>v<vcpu>`), interrupts as instants, and every record no
//!   mapping takes as an instant named by its event class, with its fields
//!   as debug annotations;
//! * counter tracks: exits per second per vCPU (over [`RATE_WINDOW_NS`]
//!   windows) and events lost per pCPU (cumulative; packet-context and
//!   in-band losses);
//! * a `pCPU N missing data` track with a slice over each stretch whose
//!   records are missing: `events lost` (with the count) from the pCPU's
//!   last record before a loss to its first after, and `packets skipped
//!   (damaged)` where damaged packets were left out (a gap of unknown size
//!   the counter cannot show).
//!
//! A damaged trace is exported over its intact packets (the reader's
//! merge walk skips what `hvtrace check` would report);
//! [`Summary::warnings`] names each stretch skipped.
//!
//! Event and annotation names are interned on one packet sequence
//! (sequence-scoped incremental state), so a name is written once. Packets
//! are encoded one at a time into a reused buffer and written out: memory
//! grows with the numbers of vCPUs, pCPUs and names, not with the trace.
//!
//! Slices are always balanced: an exit that finds the vCPU still in the
//! hypervisor (its entry was lost) ends the open slice first, and slices
//! open at the end of the trace end at its last timestamp.
#![forbid(unsafe_code)]

pub mod proto;
mod report;
mod walk;

pub use report::{write_report, ReportSummary, COLUMNS};

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use hvtrace_model::{Event, Mapping, Runstate, Vcpu};
use hvtrace_reader::ReadError;

use proto::*;

/// Width of the windows exits per second are counted over, in ns.
pub const RATE_WINDOW_NS: u64 = 10_000_000;

/// The packet sequence every packet of the export is on.
const SEQUENCE: u32 = 1;

/// Why a trace cannot be exported.
#[derive(Debug)]
pub enum Error {
    /// The directory or a stream cannot be read.
    Read(ReadError),
    /// The report's analysis failed otherwise (damage is no error: the
    /// walk skips damaged packets and says so in the warnings).
    Analysis(hvtrace_analysis::Error),
    /// The output cannot be written.
    Write(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The causes follow in the source chain (anyhow prints them).
            Error::Read(_) => f.write_str("cannot read the trace"),
            Error::Analysis(e) => e.fmt(f),
            Error::Write(_) => f.write_str("cannot write the output"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Read(e) => Some(e),
            Error::Write(e) => Some(e),
            Error::Analysis(e) => std::error::Error::source(e),
        }
    }
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read.
    pub records: u64,
    /// `TracePacket`s written.
    pub packets: u64,
    /// Slices (begin/end pairs) written.
    pub slices: u64,
    /// Instants written.
    pub instants: u64,
    /// Events the trace says were lost.
    pub lost: u64,
    /// What was skipped (damaged packets: the export holds every intact
    /// one) and other things to know, one line each.
    pub warnings: Vec<String>,
}

/// Writes the trace at `dir` to `out` as a Perfetto protobuf trace, with
/// the event sets' `mappings` (see the crate doc for the layout).
pub fn export_perfetto(dir: &Path, mappings: &[&dyn Mapping], out: &mut dyn Write) -> Result<Summary, Error> {
    let mut x = Exporter::new(out);
    let walked = walk::walk(dir, mappings, &mut x)?;
    x.finish(walked.end)?;
    x.out.flush().map_err(Error::Write)?;
    x.summary.warnings = walked.warnings;
    Ok(std::mem::take(&mut x.summary))
}

/// One field of an unmapped record, for its debug annotations.
pub(crate) enum FieldOut<'a> {
    Uint(u64),
    Int(i64),
    Float(f64),
    Text(&'a [u8]),
}

/// What the walk hands the exporter, in timestamp order (ns).
pub(crate) trait Sink {
    fn model(&mut self, ns: u64, pcpu: u32, e: Event<'_>) -> io::Result<()>;
    fn unmapped(&mut self, ns: u64, pcpu: u32, class: &str, fields: &[(&str, FieldOut<'_>)]) -> io::Result<()>;
    /// `count` events of `pcpu` lost between `since` (its last record
    /// before them, if any) and `ns`; 0: a gap of unknown size (damaged
    /// packets skipped).
    fn lost(&mut self, since: Option<u64>, ns: u64, pcpu: u32, count: u64) -> io::Result<()>;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Exit,
    Hypercall,
}

#[derive(Default)]
struct VcpuTrack {
    open: Vec<Open>,
    /// Index of the rate window being counted, and its exits.
    window: u64,
    exits: u64,
}

#[derive(Default)]
struct PcpuTrack {
    running: Option<Vcpu>,
    lost: u64,
    /// End of the last missing-data slice (they must not overlap: two
    /// streams, `<channel>_<cpu>` of two channels, may share a pCPU; the
    /// views do not read the kernel's streams).
    missing_until: u64,
}

fn domain_uuid(d: u32) -> u64 {
    1 << 56 | u64::from(d)
}
fn vcpu_uuid(v: Vcpu) -> u64 {
    2 << 56 | u64::from(v.domain) << 24 | u64::from(v.vcpu)
}
fn pcpu_uuid(c: u32) -> u64 {
    3 << 56 | u64::from(c)
}
fn rate_uuid(v: Vcpu) -> u64 {
    4 << 56 | u64::from(v.domain) << 24 | u64::from(v.vcpu)
}
fn lost_uuid(c: u32) -> u64 {
    5 << 56 | u64::from(c)
}
fn missing_uuid(c: u32) -> u64 {
    6 << 56 | u64::from(c)
}

struct Exporter<'w> {
    out: io::BufWriter<&'w mut dyn Write>,
    buf: Vec<u8>,
    names: HashMap<String, u64>,
    annotation_names: HashMap<String, u64>,
    /// Names interned since the last packet, sent with the next one.
    pending: InternedData,
    first: bool,
    domains: HashMap<u32, ()>,
    vcpus: HashMap<Vcpu, VcpuTrack>,
    pcpus: HashMap<u32, PcpuTrack>,
    summary: Summary,
}

impl<'w> Exporter<'w> {
    fn new(out: &'w mut dyn Write) -> Exporter<'w> {
        Exporter {
            out: io::BufWriter::with_capacity(1 << 20, out),
            buf: Vec::with_capacity(256),
            names: HashMap::new(),
            annotation_names: HashMap::new(),
            pending: InternedData::default(),
            first: true,
            domains: HashMap::new(),
            vcpus: HashMap::new(),
            pcpus: HashMap::new(),
            summary: Summary::default(),
        }
    }

    /// Writes one packet as a `Trace.packet` (field 1) element.
    fn write(&mut self, mut p: TracePacket) -> io::Result<()> {
        p.trusted_packet_sequence_id = Some(SEQUENCE);
        let mut flags = 0;
        if self.first {
            flags |= SEQ_INCREMENTAL_STATE_CLEARED;
            self.first = false;
        }
        if p.track_event.is_some() {
            flags |= SEQ_NEEDS_INCREMENTAL_STATE;
        }
        if flags != 0 {
            p.sequence_flags = Some(flags);
        }
        if !self.pending.event_names.is_empty() || !self.pending.debug_annotation_names.is_empty() {
            p.interned_data = Some(std::mem::take(&mut self.pending));
        }
        self.buf.clear();
        prost::encoding::message::encode(1, &p, &mut self.buf);
        self.summary.packets += 1;
        self.out.write_all(&self.buf)
    }

    fn name_iid(&mut self, name: &str) -> u64 {
        if let Some(&iid) = self.names.get(name) {
            return iid;
        }
        let iid = self.names.len() as u64 + 1;
        self.names.insert(name.to_string(), iid);
        self.pending.event_names.push(InternedName { iid: Some(iid), name: Some(name.to_string()) });
        iid
    }

    fn annotation_iid(&mut self, name: &str) -> u64 {
        if let Some(&iid) = self.annotation_names.get(name) {
            return iid;
        }
        let iid = self.annotation_names.len() as u64 + 1;
        self.annotation_names.insert(name.to_string(), iid);
        self.pending.debug_annotation_names.push(InternedName { iid: Some(iid), name: Some(name.to_string()) });
        iid
    }

    fn descriptor(&mut self, d: TrackDescriptor) -> io::Result<()> {
        self.write(TracePacket { track_descriptor: Some(d), ..Default::default() })
    }

    fn event(
        &mut self,
        ns: u64,
        track: u64,
        kind: i32,
        name: Option<&str>,
        ann: Vec<DebugAnnotation>,
    ) -> io::Result<()> {
        let name_iid = name.map(|n| self.name_iid(n));
        match kind {
            TYPE_SLICE_BEGIN => self.summary.slices += 1,
            TYPE_INSTANT => self.summary.instants += 1,
            _ => {}
        }
        let ev = TrackEvent {
            debug_annotations: ann,
            r#type: Some(kind),
            name_iid,
            track_uuid: Some(track),
            counter_value: None,
        };
        self.write(TracePacket { timestamp: Some(ns), track_event: Some(ev), ..Default::default() })
    }

    fn counter(&mut self, ns: u64, track: u64, value: i64) -> io::Result<()> {
        let ev = TrackEvent {
            r#type: Some(TYPE_COUNTER),
            track_uuid: Some(track),
            counter_value: Some(value),
            ..Default::default()
        };
        self.write(TracePacket { timestamp: Some(ns), track_event: Some(ev), ..Default::default() })
    }

    fn uint_annotation(&mut self, name: &str, v: u64) -> DebugAnnotation {
        DebugAnnotation { name_iid: Some(self.annotation_iid(name)), uint_value: Some(v), ..Default::default() }
    }

    /// The vCPU's track, described (with its domain's) when first seen.
    fn vcpu(&mut self, v: Vcpu) -> io::Result<()> {
        if self.vcpus.contains_key(&v) {
            return Ok(());
        }
        let pid = v.domain as i32 + 1;
        if self.domains.insert(v.domain, ()).is_none() {
            let process = ProcessDescriptor { pid: Some(pid), process_name: Some(format!("domain {}", v.domain)) };
            self.descriptor(TrackDescriptor {
                uuid: Some(domain_uuid(v.domain)),
                process: Some(process),
                ..Default::default()
            })?;
        }
        let name = format!("d{}v{}", v.domain, v.vcpu);
        let thread = ThreadDescriptor {
            pid: Some(pid),
            tid: Some(pid.saturating_mul(10_000).saturating_add(v.vcpu as i32 + 1)),
            thread_name: Some(format!("vCPU {name}")),
        };
        self.descriptor(TrackDescriptor {
            uuid: Some(vcpu_uuid(v)),
            parent_uuid: Some(domain_uuid(v.domain)),
            thread: Some(thread),
            ..Default::default()
        })?;
        let counter = CounterDescriptor { unit: Some(UNIT_COUNT), unit_name: Some("exits/s".into()) };
        self.descriptor(TrackDescriptor {
            uuid: Some(rate_uuid(v)),
            parent_uuid: Some(domain_uuid(v.domain)),
            name: Some(format!("{name} exits/s")),
            counter: Some(counter),
            ..Default::default()
        })?;
        self.vcpus.insert(v, VcpuTrack::default());
        Ok(())
    }

    /// The pCPU's tracks, described when first seen.
    fn pcpu(&mut self, c: u32) -> io::Result<()> {
        if self.pcpus.contains_key(&c) {
            return Ok(());
        }
        self.descriptor(TrackDescriptor {
            uuid: Some(pcpu_uuid(c)),
            name: Some(format!("pCPU {c}")),
            ..Default::default()
        })?;
        let counter = CounterDescriptor { unit: Some(UNIT_COUNT), unit_name: Some("events".into()) };
        self.descriptor(TrackDescriptor {
            uuid: Some(lost_uuid(c)),
            name: Some(format!("pCPU {c} lost events")),
            counter: Some(counter),
            ..Default::default()
        })?;
        self.descriptor(TrackDescriptor {
            uuid: Some(missing_uuid(c)),
            name: Some(format!("pCPU {c} missing data")),
            ..Default::default()
        })?;
        self.pcpus.insert(c, PcpuTrack::default());
        Ok(())
    }

    /// Ends the vCPU's open slices (hypercalls, then its exit).
    fn close(&mut self, ns: u64, v: Vcpu) -> io::Result<()> {
        while let Some(_o) = self.vcpus.get_mut(&v).and_then(|t| t.open.pop()) {
            self.event(ns, vcpu_uuid(v), TYPE_SLICE_END, None, Vec::new())?;
        }
        Ok(())
    }

    /// Counts an exit into the vCPU's rate window, writing the windows it closes.
    fn count_exit(&mut self, ns: u64, v: Vcpu) -> io::Result<()> {
        let w = ns / RATE_WINDOW_NS;
        let t = self.vcpus.get_mut(&v).expect("described");
        if t.exits > 0 && w != t.window {
            let (old, n) = (t.window, t.exits);
            t.exits = 0;
            self.rate(v, old, n)?;
            if w > old + 1 {
                self.counter((old + 1) * RATE_WINDOW_NS, rate_uuid(v), 0)?;
            }
        }
        let t = self.vcpus.get_mut(&v).expect("described");
        t.window = w;
        t.exits += 1;
        Ok(())
    }

    fn rate(&mut self, v: Vcpu, window: u64, exits: u64) -> io::Result<()> {
        let per_s = exits.saturating_mul(1_000_000_000 / RATE_WINDOW_NS);
        self.counter(window * RATE_WINDOW_NS, rate_uuid(v), per_s as i64)
    }

    /// The vCPU runs on the pCPU from `ns` (a slice of its name there).
    fn runs(&mut self, ns: u64, c: u32, v: Vcpu) -> io::Result<()> {
        self.pcpu(c)?;
        let running = self.pcpus[&c].running;
        if running == Some(v) {
            return Ok(());
        }
        if running.is_some() {
            self.event(ns, pcpu_uuid(c), TYPE_SLICE_END, None, Vec::new())?;
        }
        self.event(ns, pcpu_uuid(c), TYPE_SLICE_BEGIN, Some(&format!("d{}v{}", v.domain, v.vcpu)), Vec::new())?;
        self.pcpus.get_mut(&c).expect("described").running = Some(v);
        Ok(())
    }

    fn finish(&mut self, end: u64) -> Result<(), Error> {
        let mut vcpus: Vec<Vcpu> = self.vcpus.keys().copied().collect();
        vcpus.sort();
        for v in vcpus {
            self.close(end, v).map_err(Error::Write)?;
            let t = &self.vcpus[&v];
            if t.exits > 0 {
                let (w, n) = (t.window, t.exits);
                self.rate(v, w, n).map_err(Error::Write)?;
            }
        }
        let mut pcpus: Vec<u32> = self.pcpus.keys().copied().collect();
        pcpus.sort();
        for c in pcpus {
            if self.pcpus[&c].running.is_some() {
                self.event(end, pcpu_uuid(c), TYPE_SLICE_END, None, Vec::new()).map_err(Error::Write)?;
            }
        }
        Ok(())
    }
}

impl Sink for Exporter<'_> {
    fn model(&mut self, ns: u64, pcpu: u32, e: Event<'_>) -> io::Result<()> {
        match e {
            Event::Exit { vcpu, exit } => {
                self.vcpu(vcpu)?;
                self.runs(ns, pcpu, vcpu)?;
                self.close(ns, vcpu)?;
                let ann = vec![self.uint_annotation("reason", u64::from(exit.code))];
                self.event(ns, vcpu_uuid(vcpu), TYPE_SLICE_BEGIN, Some(exit.name), ann)?;
                self.vcpus.get_mut(&vcpu).expect("described").open.push(Open::Exit);
                self.count_exit(ns, vcpu)?;
            }
            Event::Entry { vcpu } => {
                self.vcpu(vcpu)?;
                self.runs(ns, pcpu, vcpu)?;
                self.close(ns, vcpu)?;
            }
            Event::HypercallEntry { vcpu, nr, name } => {
                self.vcpu(vcpu)?;
                if self.vcpus[&vcpu].open.last() == Some(&Open::Hypercall) {
                    self.vcpus.get_mut(&vcpu).expect("described").open.pop();
                    self.event(ns, vcpu_uuid(vcpu), TYPE_SLICE_END, None, Vec::new())?;
                }
                let ann = vec![self.uint_annotation("nr", u64::from(nr))];
                self.event(ns, vcpu_uuid(vcpu), TYPE_SLICE_BEGIN, Some(&format!("hypercall {name}")), ann)?;
                self.vcpus.get_mut(&vcpu).expect("described").open.push(Open::Hypercall);
            }
            Event::HypercallExit { vcpu, .. } => {
                self.vcpu(vcpu)?;
                if self.vcpus[&vcpu].open.last() == Some(&Open::Hypercall) {
                    self.vcpus.get_mut(&vcpu).expect("described").open.pop();
                    self.event(ns, vcpu_uuid(vcpu), TYPE_SLICE_END, None, Vec::new())?;
                }
            }
            Event::Runstate { vcpu, new } => {
                self.vcpu(vcpu)?;
                self.pcpu(pcpu)?;
                if new == Runstate::Running {
                    self.runs(ns, pcpu, vcpu)?;
                } else if self.pcpus[&pcpu].running == Some(vcpu) {
                    self.event(ns, pcpu_uuid(pcpu), TYPE_SLICE_END, None, Vec::new())?;
                    self.pcpus.get_mut(&pcpu).expect("described").running = None;
                }
            }
            Event::GuestEvent { vcpu, kind, name, value } => {
                self.vcpu(vcpu)?;
                let ann = vec![self.uint_annotation("kind", u64::from(kind)), self.uint_annotation("value", value)];
                self.event(ns, vcpu_uuid(vcpu), TYPE_INSTANT, Some(name), ann)?;
            }
            Event::Interrupt { vector, domain, vcpu } => {
                self.pcpu(pcpu)?;
                let mut ann = vec![self.uint_annotation("vector", u64::from(vector))];
                if let Some(d) = domain {
                    ann.push(self.uint_annotation("domain", u64::from(d)));
                }
                if let Some(v) = vcpu {
                    ann.push(self.uint_annotation("vcpu", u64::from(v)));
                }
                self.event(ns, pcpu_uuid(pcpu), TYPE_INSTANT, Some("interrupt"), ann)?;
            }
            Event::Lost { count } => self.lost(None, ns, pcpu, count)?,
            _ => {}
        }
        Ok(())
    }

    fn unmapped(&mut self, ns: u64, pcpu: u32, class: &str, fields: &[(&str, FieldOut<'_>)]) -> io::Result<()> {
        self.pcpu(pcpu)?;
        let mut ann = Vec::with_capacity(fields.len());
        for (name, v) in fields {
            let mut a = DebugAnnotation { name_iid: Some(self.annotation_iid(name)), ..Default::default() };
            match v {
                FieldOut::Uint(u) => a.uint_value = Some(*u),
                FieldOut::Int(i) => a.int_value = Some(*i),
                FieldOut::Float(f) => a.double_value = Some(*f),
                FieldOut::Text(b) => a.string_value = Some(String::from_utf8_lossy(b).into_owned()),
            }
            ann.push(a);
        }
        self.event(ns, pcpu_uuid(pcpu), TYPE_INSTANT, Some(class), ann)
    }

    fn lost(&mut self, since: Option<u64>, ns: u64, pcpu: u32, count: u64) -> io::Result<()> {
        self.pcpu(pcpu)?;
        self.summary.lost += count;
        let t = self.pcpus.get_mut(&pcpu).expect("described");
        t.lost += count;
        let total = t.lost;
        // What happened on the pCPU between its last record and `ns` is
        // unknown: a slice says so where the counter cannot (a gap of
        // damaged packets has no count). Not `clamp`: in a trace whose
        // packets are out of order, time runs backwards (`ns` before
        // `since`, or before the last slice's end), and `clamp` panics.
        let begin = since.unwrap_or(ns).max(t.missing_until).min(ns);
        t.missing_until = t.missing_until.max(ns);
        if count > 0 {
            self.counter(ns, lost_uuid(pcpu), total as i64)?;
        }
        let (name, ann) = if count > 0 {
            ("events lost", vec![self.uint_annotation("count", count)])
        } else {
            ("packets skipped (damaged)", Vec::new())
        };
        self.event(begin, missing_uuid(pcpu), TYPE_SLICE_BEGIN, Some(name), ann)?;
        self.event(ns, missing_uuid(pcpu), TYPE_SLICE_END, None, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvtrace_model::{Exit, ExitDetail};
    use prost::Message;

    fn exit(v: Vcpu, name: &str) -> Event<'_> {
        Event::Exit { vcpu: v, exit: Exit { code: 1, name, detail: ExitDetail::None } }
    }

    /// Feeds `events` (ns, pCPU, event) to an exporter; the decoded packets.
    fn export(events: &[(u64, u32, Event<'_>)], losses: &[(Option<u64>, u64, u32, u64)]) -> Vec<TracePacket> {
        let mut bytes = Vec::new();
        {
            let mut x = Exporter::new(&mut bytes);
            for &(since, ns, c, n) in losses {
                x.lost(since, ns, c, n).unwrap();
            }
            for &(ns, c, e) in events {
                x.model(ns, c, e).unwrap();
            }
            let end = events.iter().map(|e| e.0).max().unwrap_or(0);
            x.finish(end).unwrap();
            x.out.flush().unwrap();
        }
        Trace::decode(&bytes[..]).expect("a Trace").packet
    }

    fn on(packets: &[TracePacket], track: u64) -> Vec<(u64, i32)> {
        packets
            .iter()
            .filter_map(|p| {
                Some((p.timestamp?, p.track_event.as_ref().filter(|e| e.track_uuid == Some(track))?.r#type?))
            })
            .collect()
    }

    /// The values of counter `track`.
    fn counter(packets: &[TracePacket], track: u64) -> Vec<i64> {
        packets
            .iter()
            .filter_map(|p| p.track_event.as_ref().filter(|e| e.track_uuid == Some(track))?.counter_value)
            .collect()
    }

    #[test]
    fn an_exit_whose_entry_was_lost_ends_the_open_slice_first() {
        let v = Vcpu::new(0, 1);
        let p = export(&[(10, 0, exit(v, "io")), (20, 0, exit(v, "hlt")), (30, 0, Event::Entry { vcpu: v })], &[]);
        assert_eq!(
            on(&p, vcpu_uuid(v)),
            [(10, TYPE_SLICE_BEGIN), (20, TYPE_SLICE_END), (20, TYPE_SLICE_BEGIN), (30, TYPE_SLICE_END)]
        );
    }

    #[test]
    fn hypercalls_nest_in_their_exit_and_open_slices_end_with_the_trace() {
        let v = Vcpu::new(2, 0);
        let call = Event::HypercallEntry { vcpu: v, nr: 3, name: "yield" };
        let p = export(
            &[(10, 1, exit(v, "VMCALL")), (12, 1, call), (40, 1, Event::Runstate { vcpu: v, new: Runstate::Blocked })],
            &[],
        );
        assert_eq!(
            on(&p, vcpu_uuid(v)),
            [(10, TYPE_SLICE_BEGIN), (12, TYPE_SLICE_BEGIN), (40, TYPE_SLICE_END), (40, TYPE_SLICE_END)]
        );
        // The pCPU showed the vCPU until it blocked.
        assert_eq!(on(&p, pcpu_uuid(1)), [(10, TYPE_SLICE_BEGIN), (40, TYPE_SLICE_END)]);
    }

    #[test]
    fn missing_data_is_a_slice_from_the_last_record_and_slices_never_overlap() {
        let p = export(
            &[],
            &[
                (Some(100), 200, 0, 0), // a gap of damaged packets
                (Some(150), 300, 0, 4), // another stream of pCPU 0, overlapping
                (None, 400, 0, 2),      // an in-band loss: no known start
            ],
        );
        assert_eq!(
            on(&p, missing_uuid(0)),
            [
                (100, TYPE_SLICE_BEGIN),
                (200, TYPE_SLICE_END),
                (200, TYPE_SLICE_BEGIN),
                (300, TYPE_SLICE_END),
                (400, TYPE_SLICE_BEGIN),
                (400, TYPE_SLICE_END)
            ]
        );
        // The counter moves only with counted losses.
        assert_eq!(counter(&p, lost_uuid(0)), [4, 6]);
    }

    #[test]
    fn a_loss_back_in_time_is_an_empty_slice_not_a_panic() {
        let p = export(
            &[],
            &[
                (Some(500), 600, 0, 1),
                (Some(600), 300, 0, 1), // packets out of order: since after ns
                (None, 400, 0, 1),      // before the last slice's end
                (Some(650), 700, 0, 1),
            ],
        );
        assert_eq!(
            on(&p, missing_uuid(0)),
            [
                (500, TYPE_SLICE_BEGIN),
                (600, TYPE_SLICE_END),
                (300, TYPE_SLICE_BEGIN),
                (300, TYPE_SLICE_END),
                (400, TYPE_SLICE_BEGIN),
                (400, TYPE_SLICE_END),
                (650, TYPE_SLICE_BEGIN),
                (700, TYPE_SLICE_END)
            ]
        );
    }

    #[test]
    fn names_are_interned_once_and_losses_add_up_on_their_pcpu() {
        let v = Vcpu::new(0, 0);
        let evs = [
            (10, 0, exit(v, "io")),
            (11, 0, Event::Entry { vcpu: v }),
            (12, 0, exit(v, "io")),
            (13, 0, Event::Entry { vcpu: v }),
        ];
        let p = export(&evs, &[(None, 5, 0, 3), (None, 8, 0, 4)]);
        let interned: Vec<_> = p
            .iter()
            .filter_map(|p| p.interned_data.as_ref())
            .flat_map(|d| &d.event_names)
            .filter(|n| n.name.as_deref() == Some("io"))
            .collect();
        assert_eq!(interned.len(), 1);
        assert_eq!(counter(&p, lost_uuid(0)), [3, 7]);
        assert_eq!(p[0].sequence_flags, Some(SEQ_INCREMENTAL_STATE_CLEARED));
    }
}
