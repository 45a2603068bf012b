//! `hvtrace report`: one HTML page of a trace (the work is
//! `hvtrace_view::write_report`; this parses and writes the file).

use std::path::PathBuf;

use anyhow::Result;

use super::analyze::MAPPINGS;
use crate::out::{note, to_file};
use crate::Status;

/// Write one self-contained HTML page of a trace (no script, no network):
/// the `analyze` tables, an exit-reason chart per vCPU, and a timeline
/// with a lane per pCPU coloured by vCPU, exits as marks and lost data
/// hatched, downsampled so its size does not grow with the trace.
///
/// A damaged trace is reported over its intact packets, with a warning per
/// stretch skipped (on stderr and on the page): exit status 0. A trace that cannot be read
/// is exit status 2 (as for `check`), any other failure 1; a failed command
/// leaves no output file.
#[derive(clap::Args)]
pub struct Args {
    /// Trace directory (holding `metadata` and the stream files).
    pub dir: PathBuf,
    /// Output file (`.html`).
    #[arg(long, short)]
    pub output: PathBuf,
}

/// Runs `hvtrace report`.
pub fn run(a: Args) -> Result<Status> {
    let s = to_file(&a.output, |f| Ok(hvtrace_view::write_report(&a.dir, MAPPINGS, f)?))?;
    note(format_args!(
        "hvtrace report: {} bytes, {} pCPUs, {} vCPUs to {}",
        s.bytes,
        s.pcpus,
        s.vcpus,
        a.output.display()
    ));
    for w in &s.warnings {
        note(format_args!("hvtrace report: warning: {w}"));
    }
    Ok(Status::Ok)
}
