//! `hvtrace export`: a trace in another tool's format (the work is
//! `hvtrace_view`; this parses and writes the file).

use std::path::PathBuf;

use anyhow::Result;

use super::analyze::MAPPINGS;
use crate::out::{note, to_file};
use crate::Status;

/// Formats `export` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// Perfetto's native protobuf trace: open it in ui.perfetto.dev.
    Perfetto,
}

/// Write a trace in another tool's format: `--format perfetto` gives a
/// Perfetto protobuf trace (a process per domain, a track per vCPU with a
/// slice per exit named by its reason, a track per pCPU, counters of exits
/// per second and lost events) to open in ui.perfetto.dev.
///
/// A damaged trace is exported over its intact packets, with a warning per
/// stretch skipped (as `hvtrace check` finds them): exit status 0. A trace that cannot be read
/// is exit status 2 (as for `check`), any other failure 1; a failed command
/// leaves no output file.
#[derive(clap::Args)]
pub struct Args {
    /// Trace directory (holding `metadata` and the stream files).
    pub dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "perfetto")]
    pub format: Format,
    /// Output file (`.pftrace` by convention).
    #[arg(long, short)]
    pub output: PathBuf,
}

/// Runs `hvtrace export`.
pub fn run(a: Args) -> Result<Status> {
    let Format::Perfetto = a.format;
    let s = to_file(&a.output, |out| Ok(hvtrace_view::export_perfetto(&a.dir, MAPPINGS, out)?))?;
    note(format_args!(
        "hvtrace export: {} packets ({} slices, {} instants) to {}; {} events lost in the trace",
        s.packets,
        s.slices,
        s.instants,
        a.output.display(),
        s.lost
    ));
    for w in &s.warnings {
        note(format_args!("hvtrace export: warning: {w}"));
    }
    Ok(Status::Ok)
}
