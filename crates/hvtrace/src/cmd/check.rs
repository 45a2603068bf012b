//! `hvtrace check`: find damage in a trace directory (cut or corrupted
//! stream files, garbage, notes in the way of CTF readers), say what and
//! where, and optionally write a repaired copy babeltrace2 reads.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use hvtrace_reader::{CheckReport, ReadError, RepairReport};
use serde::Serialize;

use crate::Status;

/// Check a trace directory for damage and optionally write a repaired copy.
///
/// Walks every stream file packet by packet: magic, trace UUID, stream
/// class, CPU, packet sizes, every record decoded against the metadata,
/// record timestamps within the packet's, and packet order (sequence
/// numbers, time, loss counts). After damage it resynchronises on the next
/// valid packet header, so one bad packet costs only itself.
///
/// Exit status: 0 when the trace is intact, 1 when damage was found (each
/// finding names the file, byte offset, packet seq and reason), 2 on usage
/// or I/O errors.
#[derive(clap::Args)]
pub struct Args {
    /// Trace directory (holding `metadata` and the stream files).
    pub dir: PathBuf,
    /// Write to this new (or empty) directory a copy holding the metadata and
    /// only the intact packets.
    #[arg(long, value_name = "OUT")]
    pub repair: Option<PathBuf>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct JsonProblem {
    offset: u64,
    len: u64,
    seq: Option<u64>,
    kind: &'static str,
    reason: String,
}

#[derive(Serialize)]
struct JsonStream {
    file: String,
    cpu: u32,
    bytes: u64,
    packet_size: Option<u64>,
    packets_intact: usize,
    records: u64,
    events_discarded: u64,
    problems: Vec<JsonProblem>,
}

#[derive(Serialize)]
struct JsonNote {
    file: String,
    /// CTF readers fail on the file.
    in_the_way: bool,
    reason: String,
}

#[derive(Serialize)]
struct JsonRepair {
    out: PathBuf,
    files: Vec<String>,
    packets: u64,
    records: u64,
}

#[derive(Serialize)]
struct JsonReport {
    dir: PathBuf,
    intact: bool,
    metadata_error: Option<String>,
    records: u64,
    streams: Vec<JsonStream>,
    notes: Vec<JsonNote>,
    repair: Option<JsonRepair>,
}

fn json(a: &Args, c: Option<&CheckReport>, metadata_error: Option<String>, r: Option<&RepairReport>) -> JsonReport {
    JsonReport {
        dir: a.dir.clone(),
        intact: c.is_some_and(CheckReport::is_intact),
        metadata_error,
        records: c.map_or(0, CheckReport::records),
        streams: c
            .iter()
            .flat_map(|c| &c.streams)
            .map(|s| JsonStream {
                file: s.name.clone(),
                cpu: s.cpu,
                bytes: s.report.len,
                packet_size: s.report.packet_size,
                packets_intact: s.report.packets.len(),
                records: s.report.records(),
                events_discarded: s.report.events_discarded(),
                problems: s
                    .report
                    .problems
                    .iter()
                    .map(|p| JsonProblem {
                        offset: p.offset,
                        len: p.len,
                        seq: p.seq,
                        kind: p.kind.code(),
                        reason: p.kind.to_string(),
                    })
                    .collect(),
            })
            .collect(),
        notes: c
            .iter()
            .flat_map(|c| &c.notes)
            .map(|n| JsonNote { file: n.file().to_string(), in_the_way: n.in_the_way(), reason: n.to_string() })
            .collect(),
        repair: r.map(|r| JsonRepair {
            out: r.out.clone(),
            files: r.files.clone(),
            packets: r.packets,
            records: r.records,
        }),
    }
}

fn print_human(out: &mut impl Write, c: &CheckReport) -> std::io::Result<()> {
    writeln!(out, "trace {}", c.dir.display())?;
    for s in &c.streams {
        let r = &s.report;
        let size = r.packet_size.map_or(String::new(), |p| format!(" of {p} bytes"));
        writeln!(
            out,
            "  {} (cpu {}): {} intact packets{size}, {} records, {} events discarded{}",
            s.name,
            s.cpu,
            r.packets.len(),
            r.records(),
            r.events_discarded(),
            if r.is_intact() { "" } else { " — DAMAGED" }
        )?;
        for p in &r.problems {
            let seq = p.seq.map_or(String::new(), |s| format!(", packet seq {s}"));
            writeln!(out, "    {} byte {} (+{} bytes{seq}): {}", s.name, p.offset, p.len, p.kind)?;
        }
    }
    for n in &c.notes {
        writeln!(out, "  {}{n}", if n.in_the_way() { "" } else { "note: " })?;
    }
    let damaged = c.streams.iter().filter(|s| !s.report.is_intact()).count();
    let problems: usize = c.streams.iter().map(|s| s.report.problems.len()).sum();
    if c.is_intact() {
        writeln!(out, "intact: {} streams, {} records", c.streams.len(), c.records())
    } else {
        writeln!(
            out,
            "DAMAGED: {problems} damaged stretch(es) in {damaged} of {} streams, {} file(s) in the way; \
             {} records in intact packets",
            c.streams.len(),
            c.notes.iter().filter(|n| n.in_the_way()).count(),
            c.records()
        )
    }
}

/// Runs the check: [`Status::Failed`] on damage; an I/O error reading the
/// trace is a [`hvtrace_reader::ReadError`], which `main` turns into
/// [`Status::CheckIo`]. The status is the verdict: a reader that went away
/// (`hvtrace check DIR | head -1`) does not change it.
pub fn run(a: Args) -> Result<Status> {
    let outcome = match &a.repair {
        Some(out) => hvtrace_reader::repair(&a.dir, out).map(|r| (r.check.clone(), Some(r))),
        None => hvtrace_reader::check(&a.dir).map(|c| (c, None)),
    };
    let mut out = std::io::stdout().lock();
    let (verdict, printed) = match outcome {
        Ok((check, repaired)) => {
            let verdict = if check.is_intact() { Status::Ok } else { Status::Failed };
            (verdict, print_report(&mut out, &a, &check, repaired.as_ref()))
        }
        Err(ReadError::Metadata { path, error }) => {
            let why = format!("{}: {error}", path.display());
            (Status::Failed, print_metadata_error(&mut out, &a, why))
        }
        Err(e) => return Err(e.into()),
    };
    match printed.and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(verdict),
    }
}

fn print_metadata_error(out: &mut impl Write, a: &Args, why: String) -> std::io::Result<()> {
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&json(a, None, Some(why), None))?)
    } else {
        writeln!(out, "DAMAGED: {why}")?;
        writeln!(out, "(the stream files cannot be checked or repaired without the metadata)")
    }
}

fn print_report(
    out: &mut impl Write,
    a: &Args,
    check: &CheckReport,
    repaired: Option<&RepairReport>,
) -> std::io::Result<()> {
    if a.json {
        return writeln!(out, "{}", serde_json::to_string(&json(a, Some(check), None, repaired))?);
    }
    print_human(out, check)?;
    if let Some(r) = repaired {
        writeln!(
            out,
            "repaired copy: {} ({} stream files, {} packets, {} records)",
            r.out.display(),
            r.files.len(),
            r.packets,
            r.records
        )
    } else if !check.is_intact() {
        writeln!(out, "`hvtrace check {} --repair OUT` writes a copy of the intact packets", a.dir.display())
    } else {
        Ok(())
    }
}
