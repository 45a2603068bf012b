//! ftrace pages → CTF packets of stream class 1, and the TSDL of that stream
//! class and its event classes, generated from the events' format files.
//!
//! The packet header, packet context and event headers are hvtrace's own
//! (`hvtrace_core::ctf`), so the kernel's streams sit in the same trace as
//! the VMM's rings (stream class 0) under one metadata file and one clock.
//! One page becomes one packet; the kernel's common fields but
//! `common_type` (which is the event id) become the stream's event context.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::ops::Range;

use hvtrace_core::ctf::{empty_packet, header, packet};
use hvtrace_core::field::FieldKind;
use hvtrace_core::metadata::write_field;

use crate::format::{EventFormat, FieldType, FormatField};
use crate::page::{Missed, Page, PageError};
use crate::FtraceError;

/// The CTF stream class id of kernel streams (the VMM's rings are 0).
pub const KERNEL_STREAM_ID: u32 = 1;

/// First line of the kernel's part of a metadata file; everything after it
/// describes stream class 1.
pub use hvtrace_core::metadata::KERNEL_STREAMS_MARKER as METADATA_MARKER;

/// Events that get the smallest ids (and so the 4-byte event header) when
/// enabled, most frequent on KVM hosts first.
const FREQUENT: &[&str] = &[
    "kvm_exit",
    "kvm_entry",
    "kvm_userspace_exit",
    "kvm_pio",
    "kvm_mmio",
    "kvm_emulate_insn",
    "kvm_fpu",
    "sched_switch",
    "kvm_hypercall",
    "kvm_msr",
    "kvm_cpuid",
    "kvm_page_fault",
    "kvm_inj_virq",
    "kvm_apic_accept_irq",
    "kvm_eoi",
    "kvm_set_irq",
];

const NO_ID: u32 = u32::MAX;

/// One step of encoding a record.
#[derive(Clone, Debug)]
enum Step {
    /// Bytes copied as they are: adjacent integer and array fields in one run.
    Copy(Range<usize>),
    /// A string or dynamic field, re-encoded.
    Field(FormatField),
}

/// How one event's records become payloads, worked out once per event:
/// most KVM events are a single copy.
#[derive(Clone, Debug)]
struct Plan {
    min_len: usize,
    steps: Vec<Step>,
}

impl Plan {
    fn new(common: &[FormatField], e: &EventFormat) -> Plan {
        let mut steps: Vec<Step> = Vec::new();
        for f in common.iter().chain(&e.fields) {
            let range = f.offset..f.offset + f.size;
            match (f.ty, steps.last_mut()) {
                (FieldType::Int { .. } | FieldType::Array { .. }, Some(Step::Copy(r))) if r.end == range.start => {
                    r.end = range.end
                }
                (FieldType::Int { .. } | FieldType::Array { .. }, _) => steps.push(Step::Copy(range)),
                _ => steps.push(Step::Field(f.clone())),
            }
        }
        Plan { min_len: e.min_len(), steps }
    }
}

/// The enabled events: their record layouts and CTF ids.
#[derive(Clone, Debug)]
pub struct EventTable {
    events: Vec<EventFormat>,
    /// How each event's records are encoded, by CTF id.
    plans: Vec<Plan>,
    /// CTF id by the kernel's id (`common_type`); [`NO_ID`] for others.
    by_kernel_id: Vec<u32>,
    common: Vec<FormatField>,
    /// Offset of the 4-byte `common_pid`, if the kernel has one.
    pid_at: Option<usize>,
}

impl EventTable {
    /// Orders `events` (frequent KVM events first, then by name) and checks
    /// that they share one set of common fields.
    pub fn new(mut events: Vec<EventFormat>) -> Result<EventTable, FtraceError> {
        let rank = |e: &EventFormat| FREQUENT.iter().position(|n| *n == e.name).unwrap_or(FREQUENT.len());
        events.sort_by(|a, b| (rank(a), &a.system, &a.name).cmp(&(rank(b), &b.system, &b.name)));
        events.dedup_by_key(|e| e.id);
        let common: Vec<FormatField> = match events.first() {
            Some(e) => e.common.iter().filter(|f| f.name != "common_type").cloned().collect(),
            None => return Err(FtraceError::NoEvents),
        };
        let mut by_kernel_id = vec![NO_ID; events.iter().map(|e| e.id as usize + 1).max().unwrap_or(0)];
        for (i, e) in events.iter().enumerate() {
            if !e.common.iter().filter(|f| f.name != "common_type").eq(common.iter()) {
                return Err(FtraceError::Format {
                    event: format!("{}:{}", e.system, e.name),
                    line: 0,
                    why: "its common fields differ from the other events'".into(),
                });
            }
            by_kernel_id[e.id as usize] = i as u32;
        }
        let pid_at = common.iter().find(|f| f.name == "common_pid" && f.size == 4).map(|f| f.offset);
        let plans = events.iter().map(|e| Plan::new(&common, e)).collect();
        Ok(EventTable { events, plans, by_kernel_id, common, pid_at })
    }

    /// The events, in CTF id order.
    pub fn events(&self) -> &[EventFormat] {
        &self.events
    }

    /// The fields every record carries in its event context (the common
    /// fields but `common_type`).
    pub fn context_fields(&self) -> &[FormatField] {
        &self.common
    }

    /// The CTF id of the event named `name`.
    pub fn id_of(&self, name: &str) -> Option<u32> {
        self.events.iter().position(|e| e.name == name).map(|i| i as u32)
    }

    /// The TSDL of stream class 1 and its event classes, to be appended to
    /// a metadata file rendered by `hvtrace_core::metadata::render` (whose
    /// packet context, event header and clock it uses).
    pub fn metadata(&self) -> String {
        let mut w = String::new();
        self.write_metadata(&mut w).expect("formatting into a String cannot fail");
        w
    }

    /// A whole metadata file for a trace holding only kernel streams: the
    /// trace, clock and packet layout as `hvtrace_core::metadata::render`
    /// writes them (with no VMM events), then [`EventTable::metadata`].
    pub fn standalone_metadata(&self, trace: &hvtrace_core::metadata::TraceDesc<'_>) -> String {
        let mut w = String::new();
        hvtrace_core::metadata::render(&mut w, trace, &[]).expect("formatting into a String cannot fail");
        w.push_str(&self.metadata());
        w
    }

    fn write_metadata(&self, w: &mut String) -> std::fmt::Result {
        writeln!(w, "{METADATA_MARKER}")?;
        writeln!(w, "stream {{\n\tid = {KERNEL_STREAM_ID};")?;
        writeln!(w, "\tevent.header := struct event_header_compact;")?;
        writeln!(w, "\tpacket.context := struct packet_context;")?;
        write_struct(w, "event.context", &self.common)?;
        writeln!(w, "}};\n")?;
        for (id, e) in self.events.iter().enumerate() {
            writeln!(w, "event {{\n\tname = \"{}\";\n\tid = {id};\n\tstream_id = {KERNEL_STREAM_ID};", e.name)?;
            write_struct(w, "fields", &e.fields)?;
            writeln!(w, "}};\n")?;
        }
        Ok(())
    }
}

/// `\t{what} := struct { … };`, one field a line (the form `hvtrace-core` renders).
fn write_struct(w: &mut String, what: &str, fields: &[FormatField]) -> std::fmt::Result {
    writeln!(w, "\t{what} := struct {{")?;
    for f in fields {
        w.push_str("\t\t");
        write_ctf_field(w, f)?;
        w.push('\n');
    }
    writeln!(w, "\t}};")
}

fn int_kind(bytes: usize, signed: bool, hex: bool) -> FieldKind {
    FieldKind::Int { bits: (bytes * 8) as u8, signed, hex }
}

/// One field's CTF declaration: scalars as `hvtrace_core` renders them; a
/// fixed array as its element type with `[N]` after the name, which is the
/// TSDL array syntax.
fn write_ctf_field(w: &mut dyn std::fmt::Write, f: &FormatField) -> std::fmt::Result {
    match f.ty {
        FieldType::Int { signed } => write_field(w, &f.name, &int_kind(f.size, signed, false)),
        FieldType::Array { elem, len, signed } => {
            write_field(w, &format!("{}[{len}]", f.name), &int_kind(elem, signed, true))
        }
        FieldType::Chars | FieldType::DynString { .. } => write_field(w, &f.name, &FieldKind::Str),
        FieldType::DynBytes { .. } => write_field(w, &f.name, &FieldKind::Bytes),
    }
}

/// Why one record could not be converted (it is counted as discarded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRecord {
    /// Its `common_type` is no enabled event.
    UnknownType(u16),
    /// Shorter than its event's fields, or a dynamic field points outside it.
    Short,
}

/// Appends a string field: the bytes up to the first NUL, as valid UTF-8
/// (the metadata says so), NUL-terminated.
fn put_string(out: &mut Vec<u8>, raw: &[u8]) {
    let raw = raw.split(|&b| b == 0).next().unwrap_or(&[]);
    out.extend_from_slice(String::from_utf8_lossy(raw).as_bytes());
    out.push(0);
}

/// `__data_loc` / `__rel_loc`: the slice of the record the field points at.
fn dynamic<'a>(rec: &'a [u8], f: &FormatField, rel: bool) -> Option<&'a [u8]> {
    let loc = u32::from_le_bytes(rec.get(f.offset..f.offset + 4)?.try_into().ok()?);
    let (mut off, len) = ((loc & 0xffff) as usize, (loc >> 16) as usize);
    if rel {
        off += f.offset + 4;
    }
    rec.get(off..off + len)
}

impl EventTable {
    /// Encodes one record's payload (common fields but `common_type`, then
    /// the event's fields) after `out`; returns the CTF event id.
    pub fn encode_record(&self, rec: &[u8], out: &mut Vec<u8>) -> Result<u32, BadRecord> {
        let id = self.lookup(rec)?;
        self.encode_payload(id, rec, out)?;
        Ok(id)
    }

    /// The CTF id of a record, from its `common_type`.
    fn lookup(&self, rec: &[u8]) -> Result<u32, BadRecord> {
        let kernel_id = u16::from_le_bytes(rec.get(..2).ok_or(BadRecord::Short)?.try_into().unwrap_or([0; 2]));
        let id = self.by_kernel_id.get(kernel_id as usize).copied().unwrap_or(NO_ID);
        if id == NO_ID {
            return Err(BadRecord::UnknownType(kernel_id));
        }
        Ok(id)
    }

    /// Appends the payload of record `rec` of CTF event `id`; on error
    /// `out` is as it was.
    fn encode_payload(&self, id: u32, rec: &[u8], out: &mut Vec<u8>) -> Result<(), BadRecord> {
        let plan = &self.plans[id as usize];
        if rec.len() < plan.min_len {
            return Err(BadRecord::Short);
        }
        let start = out.len();
        for step in &plan.steps {
            let f = match step {
                Step::Copy(r) => {
                    out.extend_from_slice(&rec[r.clone()]);
                    continue;
                }
                Step::Field(f) => f,
            };
            match f.ty {
                FieldType::Int { .. } | FieldType::Array { .. } => {
                    out.extend_from_slice(&rec[f.offset..f.offset + f.size])
                }
                FieldType::Chars => put_string(out, &rec[f.offset..f.offset + f.size]),
                FieldType::DynString { rel } | FieldType::DynBytes { rel } => {
                    let Some(data) = dynamic(rec, f, rel) else {
                        out.truncate(start);
                        return Err(BadRecord::Short);
                    };
                    if matches!(f.ty, FieldType::DynString { .. }) {
                        put_string(out, data);
                    } else {
                        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
                        out.extend_from_slice(data);
                    }
                }
            }
        }
        Ok(())
    }
}

/// What converting pages produced, per stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamCounts {
    /// Packets written.
    pub packets: u64,
    /// Records written.
    pub records: u64,
    /// Records written, by CTF event id.
    pub by_event: Vec<u64>,
    /// Records the kernel reported lost (page headers and `stats`), plus
    /// records that could not be converted: the stream's `events_discarded`.
    pub discarded: u64,
    /// Records that could not be converted (also in `discarded`).
    pub bad_records: u64,
    /// Pages whose header or records were damaged (the records of a page
    /// after a damaged one cannot be counted).
    pub bad_pages: u64,
    /// Pages saying events were lost without saying how many.
    pub unknown_losses: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Records by thread (`common_pid`), by CTF event id.
    pub by_thread: BTreeMap<u32, Vec<u64>>,
}

/// The packet writer of one CPU's kernel stream.
#[derive(Clone, Debug)]
pub struct KernelStream {
    cpu: u32,
    uuid: [u8; 16],
    seq: u64,
    last_ts: u64,
    /// Page-reported losses so far (the per-CPU `stats` may know more).
    page_losses: u64,
    /// What the file's last packet says.
    counts: StreamCounts,
}

impl KernelStream {
    /// A stream for `cpu` of the trace `uuid`.
    pub fn new(cpu: u32, uuid: [u8; 16]) -> Self {
        KernelStream { cpu, uuid, seq: 0, last_ts: 0, page_losses: 0, counts: StreamCounts::default() }
    }

    /// The counts so far.
    pub fn counts(&self) -> &StreamCounts {
        &self.counts
    }

    /// The end time of the last packet, if any was written.
    pub fn last_timestamp(&self) -> Option<u64> {
        (self.counts.packets > 0).then_some(self.last_ts)
    }

    /// Events lost as the page headers said (the lower bound of the losses).
    pub fn page_losses(&self) -> u64 {
        self.page_losses
    }

    fn open(&mut self, ts: u64) -> Vec<u8> {
        let mut p = empty_packet(&self.uuid, self.cpu, self.seq, ts, 0).to_vec();
        p[packet::STREAM_ID..packet::STREAM_ID + 4].copy_from_slice(&KERNEL_STREAM_ID.to_le_bytes());
        p
    }

    fn close(&mut self, mut p: Vec<u8>, end_ts: u64, out: &mut Vec<u8>) {
        let bits = (p.len() as u64 * 8).to_le_bytes();
        let mut put = |at: usize, v: &[u8]| p[at..at + v.len()].copy_from_slice(v);
        put(packet::TIMESTAMP_END, &end_ts.to_le_bytes());
        put(packet::CONTENT_SIZE, &bits);
        put(packet::PACKET_SIZE, &bits);
        put(packet::EVENTS_DISCARDED, &self.counts.discarded.to_le_bytes());
        self.seq += 1;
        self.last_ts = end_ts;
        self.counts.packets += 1;
        self.counts.bytes += p.len() as u64;
        out.extend_from_slice(&p);
    }

    /// Converts one page read from `trace_pipe_raw` into a packet appended
    /// to `out`, having first raised the discarded count to `lost_before`
    /// (losses the `stats` file reported since the previous page). Pages
    /// holding nothing and losing nothing write nothing.
    pub fn page(&mut self, table: &EventTable, page: &[u8], lost_before: u64, out: &mut Vec<u8>) {
        self.counts.by_event.resize(table.events.len(), 0);
        self.counts.discarded = self.counts.discarded.max(lost_before);
        let page = match Page::parse(page) {
            Ok(p) => p,
            Err(_) => {
                self.counts.bad_pages += 1;
                return;
            }
        };
        match page.missed {
            Missed::None => {}
            Missed::Count(n) => {
                self.page_losses += n;
                self.counts.discarded += n;
            }
            Missed::Unknown => self.counts.unknown_losses += 1,
        }
        let begin = page.timestamp.max(self.last_ts);
        let mut p = self.open(begin);
        // Records grow by at most the header difference: one allocation a page.
        p.reserve(page.data.len() * 2);
        let mut prev = begin;
        let mut any = page.missed != Missed::None;
        for r in page.records() {
            let r = match r {
                Ok(r) => r,
                Err(PageError::Record { .. }) | Err(_) => {
                    self.counts.bad_pages += 1;
                    break;
                }
            };
            let mark = p.len();
            let ts = r.timestamp.max(prev);
            let written = table.lookup(r.payload).and_then(|id| {
                // The compact header carries 27 bits: readers rebuild the
                // time from the previous one (`header::expand`).
                if id <= header::MAX_COMPACT_ID && ts - prev <= header::COMPACT_TS_MASK {
                    p.extend_from_slice(&header::compact(id, ts));
                } else {
                    p.extend_from_slice(&header::extended(id, ts));
                }
                table.encode_payload(id, r.payload, &mut p).map(|()| id)
            });
            let id = match written {
                Ok(id) => id,
                Err(_) => {
                    p.truncate(mark);
                    self.counts.bad_records += 1;
                    self.counts.discarded += 1;
                    any = true;
                    continue;
                }
            };
            prev = ts;
            self.counts.records += 1;
            self.counts.by_event[id as usize] += 1;
            if let Some(at) = table.pid_at {
                let pid = u32::from_le_bytes(r.payload[at..at + 4].try_into().unwrap_or_default());
                let per = self.counts.by_thread.entry(pid).or_default();
                per.resize(table.events.len(), 0);
                per[id as usize] += 1;
            }
            any = true;
        }
        if any {
            self.close(p, prev, out);
        }
    }

    /// Ends the stream: if `total_lost` (the kernel's final count for this
    /// CPU) exceeds what the last packet says, an empty packet carries it,
    /// stamped with the stream's last time (or `fallback_ts` if it has none).
    pub fn finish(&mut self, total_lost: u64, fallback_ts: u64, out: &mut Vec<u8>) {
        if total_lost > self.counts.discarded {
            self.counts.discarded = total_lost;
            let ts = if self.counts.packets == 0 { fallback_ts } else { self.last_ts };
            let p = self.open(ts);
            self.close(p, ts, out);
        }
    }
}
