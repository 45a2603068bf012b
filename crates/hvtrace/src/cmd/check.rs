//! `hvtrace check`: find damage in a trace directory (cut or corrupted
//! stream files, garbage, notes in the way of CTF readers), say what and
//! where, and optionally write a repaired copy babeltrace2 reads.

use std::path::PathBuf;

use anyhow::Result;
use hvtrace_reader::{CheckReport, ReadError, RepairReport};
use serde::Serialize;

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

fn print_human(c: &CheckReport) {
    println!("trace {}", c.dir.display());
    for s in &c.streams {
        let r = &s.report;
        let size = r.packet_size.map_or(String::new(), |p| format!(" of {p} bytes"));
        println!(
            "  {} (cpu {}): {} intact packets{size}, {} records, {} events discarded{}",
            s.name,
            s.cpu,
            r.packets.len(),
            r.records(),
            r.events_discarded(),
            if r.is_intact() { "" } else { " — DAMAGED" }
        );
        for p in &r.problems {
            let seq = p.seq.map_or(String::new(), |s| format!(", packet seq {s}"));
            println!("    {} byte {} (+{} bytes{seq}): {}", s.name, p.offset, p.len, p.kind);
        }
    }
    for n in &c.notes {
        println!("  {}{n}", if n.in_the_way() { "" } else { "note: " });
    }
    let damaged = c.streams.iter().filter(|s| !s.report.is_intact()).count();
    let problems: usize = c.streams.iter().map(|s| s.report.problems.len()).sum();
    if c.is_intact() {
        println!("intact: {} streams, {} records", c.streams.len(), c.records());
    } else {
        println!(
            "DAMAGED: {problems} damaged stretch(es) in {damaged} of {} streams, {} file(s) in the way; \
             {} records in intact packets",
            c.streams.len(),
            c.notes.iter().filter(|n| n.in_the_way()).count(),
            c.records()
        );
    }
}

/// Flushes stdout and exits with `code`.
fn exit(code: i32) -> ! {
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(code)
}

/// Runs the check; exits with 1 on damage and 2 on errors.
pub fn run(a: Args) -> Result<()> {
    let outcome = match &a.repair {
        Some(out) => hvtrace_reader::repair(&a.dir, out).map(|r| (r.check.clone(), Some(r))),
        None => hvtrace_reader::check(&a.dir).map(|c| (c, None)),
    };
    let (check, repaired) = match outcome {
        Ok(x) => x,
        Err(ReadError::Metadata { path, error }) => {
            let why = format!("{}: {error}", path.display());
            if a.json {
                println!("{}", serde_json::to_string(&json(&a, None, Some(why), None))?);
            } else {
                println!("DAMAGED: {why}");
                println!("(the stream files cannot be checked or repaired without the metadata)");
            }
            exit(1);
        }
        Err(e) => {
            eprintln!("hvtrace check: error: {e}");
            exit(2);
        }
    };
    if a.json {
        println!("{}", serde_json::to_string(&json(&a, Some(&check), None, repaired.as_ref()))?);
    } else {
        print_human(&check);
        if let Some(r) = &repaired {
            println!(
                "repaired copy: {} ({} stream files, {} packets, {} records)",
                r.out.display(),
                r.files.len(),
                r.packets,
                r.records
            );
        } else if !check.is_intact() {
            println!("`hvtrace check {} --repair OUT` writes a copy of the intact packets", a.dir.display());
        }
    }
    if !check.is_intact() {
        exit(1);
    }
    Ok(())
}
