//! `hvtrace import`: other tracers' files into hvtrace CTF traces.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use hvtrace_xen::{ImportOptions, ImportReport, Vendor};
use serde::Serialize;

use crate::out::note;
use crate::Status;

/// Import a trace recorded by another tracer into a CTF trace directory.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub format: Format,
}

/// The formats imported.
#[derive(clap::Subcommand)]
pub enum Format {
    Xentrace(XentraceArgs),
}

/// Import a xentrace file (Xen's `xentrace` output) into CTF.
///
/// One stream per pCPU; records without a TSC take their pCPU's last;
/// lost records become `lost_records` events and the packets' discarded
/// counts; records of no known class become `xen_raw` events. A file cut
/// mid-record imports every complete record. Exit status: 0 when the whole
/// file was imported (a cut last record included), 1 on damage or errors.
#[derive(clap::Args)]
pub struct XentraceArgs {
    /// The xentrace file.
    pub file: PathBuf,
    /// Trace directory to create (or an empty one).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// TSC frequency of the traced host in Hz: the file does not carry it
    /// (default 2.4 GHz, as xenalyze assumes).
    #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u64).range(1..))]
    pub cpu_hz: Option<u64>,
    /// The VM-exit records carry AMD SVM exit codes (xenalyze's --svm-mode);
    /// default Intel VMX.
    #[arg(long)]
    pub svm: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct JsonCpu {
    cpu: u32,
    records: u64,
    lost: u64,
    windows: u64,
    wrap_fillers: u64,
    tsc_backwards: u64,
    before_first_tsc: u64,
    packets: u64,
}

#[derive(Serialize)]
struct JsonReport {
    output: PathBuf,
    records: u64,
    lost: u64,
    cpu_hz: u64,
    cpu_hz_assumed: bool,
    bytes_imported: u64,
    unexpected_words: u64,
    /// Records per event class (classes with none left out).
    classes: std::collections::BTreeMap<&'static str, u64>,
    cpus: Vec<JsonCpu>,
    cut: Option<String>,
    damage: Option<String>,
}

fn json(r: &ImportReport) -> JsonReport {
    JsonReport {
        output: r.output.clone(),
        records: r.records(),
        lost: r.lost(),
        cpu_hz: r.cpu_hz,
        cpu_hz_assumed: r.cpu_hz_assumed,
        bytes_imported: r.bytes_imported,
        unexpected_words: r.unexpected_words,
        classes: hvtrace_xen::classes::CLASSES
            .iter()
            .zip(&r.by_class)
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (c.name, *n))
            .collect(),
        cpus: r
            .cpus
            .iter()
            .map(|(&cpu, c)| JsonCpu {
                cpu,
                records: c.records,
                lost: c.lost,
                windows: c.windows,
                wrap_fillers: c.wrap_fillers,
                tsc_backwards: c.tsc_backwards,
                before_first_tsc: c.before_first_tsc,
                packets: c.packets,
            })
            .collect(),
        cut: r.cut.map(|c| c.to_string()),
        damage: r.damage.as_ref().map(|d| d.to_string()),
    }
}

/// Runs `hvtrace import`.
pub fn run(a: Args) -> Result<Status> {
    let Format::Xentrace(a) = a.format;
    let opts = ImportOptions { cpu_hz: a.cpu_hz, vendor: if a.svm { Vendor::Svm } else { Vendor::Vmx } };
    let r = hvtrace_xen::import_file(&a.file, &a.output, opts)?;
    if r.cpu_hz_assumed {
        note(format_args!(
            "hvtrace: warning: the file does not carry the TSC frequency: assumed {} Hz (xenalyze's default); \
             give --cpu-hz for true times",
            r.cpu_hz
        ));
    }
    if let Some(c) = &r.cut {
        note(format_args!("hvtrace: warning: {c}"));
    }
    let backwards: u64 = r.cpus.values().map(|c| c.tsc_backwards).sum();
    if backwards > 0 {
        note(format_args!(
            "hvtrace: warning: {backwards} records had a TSC below an earlier one of their pCPU: kept at the earlier time"
        ));
    }
    if r.unexpected_words > 0 {
        note(format_args!(
            "hvtrace: warning: {} records of known events had an unexpected word count: kept as xen_raw",
            r.unexpected_words
        ));
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&json(&r))?)?;
    } else {
        writeln!(
            out,
            "imported {} records from {} pCPUs into {} ({} lost by xentrace, {} unknown kept as xen_raw)",
            r.records(),
            r.cpus.len(),
            r.output.display(),
            r.lost(),
            r.count(hvtrace_xen::ClassId::xen_raw)
        )?;
    }
    out.flush()?;
    if let Some(d) = &r.damage {
        note(format_args!(
            "hvtrace: error: {}: {d}; every record before it was imported, none after",
            a.file.display()
        ));
        return Ok(Status::Failed);
    }
    Ok(Status::Ok)
}
