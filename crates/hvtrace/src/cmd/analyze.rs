//! `hvtrace analyze`: exits, runstates, hypercalls and pCPU time of a trace
//! (the work is `hvtrace_analysis::analyze`; this parses and prints).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hvtrace_analysis::{analyze, write_csv, write_text, Options, Progress};
use hvtrace_model::Mapping;

use crate::out::{note, stdout_buffered};
use crate::Status;

/// Every event set whose mapping onto the hypervisor model `analyze` knows.
pub const MAPPINGS: &[&dyn Mapping] =
    &[&hvtrace_sim::MAPPING, &hvtrace_kvm::MAPPING, &hvtrace_xen::MAPPING, &hvtrace_ftrace::MAPPING];

/// Analyse a trace: VM exits by reason (count, time, percentiles), runstates
/// (with wake / preempt, and time lost to missing data), hypercalls, guest
/// events and pCPU time, per domain and vCPU.
///
/// Works on the traces of `hvtrace sim`/`demo` (the `xen` event set) and of
/// `hvtrace kvm`; any other trace gets the generic part (events per CPU and
/// event class, losses, duration). A damaged trace is analysed over its
/// intact packets, with a warning naming what was skipped. Figures are
/// defined in docs/analysis.md.
#[derive(clap::Args)]
pub struct Args {
    /// Trace directory (holding `metadata` and the stream files).
    pub dir: PathBuf,
    /// Start of the window, after the trace's first record (`1.5s`, `200ms`, `30us`, `100ns`).
    #[arg(long, value_parser = parse_time)]
    pub from: Option<u64>,
    /// End of the window, after the trace's first record.
    #[arg(long, value_parser = parse_time)]
    pub to: Option<u64>,
    /// Print the report as one JSON object on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write one CSV file per table into this directory.
    #[arg(long, value_name = "DIR")]
    pub csv: Option<PathBuf>,
    /// Threads to read with (default: one per available core, at most 2,
    /// which keeps a 1 GiB trace under 64 MiB of memory). The trace is
    /// cut into time windows at packet boundaries, which the threads read in
    /// turn, merged into exactly the report of `--threads 1`, which reads it
    /// whole on one thread (as are, whatever this says, a damaged trace and
    /// one with the kernel's events).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Time windows to cut the trace into, which the threads read in turn
    /// (default: 4 per thread; fewer in a trace of few packets), shorter
    /// and shorter, so the threads end together; each costs a cut and a
    /// merge.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub windows: Option<u32>,
}

/// A time after the trace's first record, in ns: a number with a unit
/// (`s`, `ms`, `us`, `ns`; no unit: ns).
fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a time (examples: 1.5s, 200ms, 30us, 100ns)"))?;
    let mul = match unit.trim() {
        "" | "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        u => return Err(format!("unknown time unit {u:?} in {s:?} (use s, ms, us or ns)")),
    };
    let ns = (n * mul).round();
    if !(0.0..1.8e19).contains(&ns) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(ns as u64)
}

/// A progress bar on stderr once the analysis has taken a second, and only
/// when stderr is a terminal.
fn progress_bar() -> impl FnMut(Progress) {
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut bar: Option<indicatif::ProgressBar> = None;
    move |p: Progress| {
        if !tty || start.elapsed() < Duration::from_secs(1) {
            return;
        }
        let b = bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(p.total);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .expect("valid template"),
            );
            b
        });
        b.set_position(p.done);
        if p.done >= p.total {
            b.finish_and_clear();
        }
    }
}

/// Runs `hvtrace analyze`: a trace that cannot be read at all is exit
/// status 2 (a `ReadError`, as for `check`), any other error 1; a damaged
/// trace is analysed, with warnings, and is 0.
pub fn run(a: Args) -> Result<Status> {
    let opts = Options {
        from_ns: a.from,
        to_ns: a.to,
        threads: a.threads.map_or(0, |n| n as usize),
        windows: a.windows.map_or(0, |n| n as usize),
    };
    let mut progress = progress_bar();
    let report = analyze(&a.dir, MAPPINGS, &opts, &mut progress)?;
    if let Some(dir) = &a.csv {
        write_csv(&report, dir).with_context(|| format!("cannot write CSV files into {}", dir.display()))?;
    }
    let mut out = stdout_buffered();
    if a.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write_text(&report, &mut out)?;
    }
    out.flush()?;
    for w in &report.warnings {
        note(format_args!("hvtrace analyze: warning: {w}"));
    }
    if opts.threads > 1 && report.windows == 1 {
        note(format_args!(
            "hvtrace analyze: note: read on one thread: the trace cannot be cut into time windows (damage, too few packets, or the kernel's events, whose mapping learns which threads are vCPUs as it goes)"
        ));
    }
    Ok(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::{parse_time, Args};
    use clap::Args as _;

    /// The help of `--threads` and `--windows` states the library's
    /// defaults by hand: it must say what the constants say.
    #[test]
    fn help_states_the_defaults() {
        let cmd = Args::augment_args(clap::Command::new("analyze"));
        let help = |id: &str| {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id).expect("argument exists");
            arg.get_help().expect("documented").to_string()
        };
        let threads = format!("at most {},", hvtrace_analysis::DEFAULT_MAX_THREADS);
        assert!(help("threads").contains(&threads), "--threads help lacks {threads:?}: {}", help("threads"));
        let windows = format!("default: {} per thread", hvtrace_analysis::WINDOWS_PER_THREAD);
        assert!(help("windows").contains(&windows), "--windows help lacks {windows:?}: {}", help("windows"));
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_time("200ms"), Ok(200_000_000));
        assert_eq!(parse_time("30us"), Ok(30_000));
        assert_eq!(parse_time("100"), Ok(100));
        assert!(parse_time("3h").is_err());
        assert!(parse_time("-1s").is_err());
        assert!(parse_time("").is_err());
    }
}
