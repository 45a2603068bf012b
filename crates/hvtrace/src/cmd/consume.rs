//! `hvtrace consume`: the consumer daemon (the seed's lttd).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use hvtrace_consumer::{Consumer, ConsumerConfig};

use crate::size::parse_size;

/// Record a host's channel into a CTF trace directory.
///
/// Maps the host's ring buffers read-only, sleeps until the host signals a
/// sub-buffer switch, and writes each delivered sub-buffer unchanged to
/// `OUTPUT/<channel>_<cpu>`, with the CTF `metadata` beside them. Exits when
/// the session is destroyed, when the host goes away, or on SIGINT/SIGTERM
/// (after a final flush and drain). The channel must have been created.
///
/// Exit status: 0 when the session ended normally (destroyed, or
/// SIGINT/SIGTERM); 3 when the host went away in the middle of it (the
/// trace holds every sub-buffer delivered until then, plus an empty
/// `INCOMPLETE` marker); 1 on any error.
#[derive(clap::Args)]
pub struct Args {
    /// The host's control socket.
    #[arg(long, short = 's')]
    pub socket: PathBuf,
    /// Trace directory to write (created; must not already hold a trace).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Worker threads; rings are spread over them (any number of CPUs).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the final report as one JSON line on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Packets of at least this size go from the rings to the device with
    /// direct I/O (O_DIRECT: no copy, no page-cache pages) where the file
    /// system allows it; smaller ones are copied into the page cache.
    #[arg(long, default_value = "512k", value_parser = parse_size)]
    pub direct_min: u64,
    /// Copy every packet into the page cache (no direct I/O).
    #[arg(long)]
    pub buffered: bool,
}

pub fn run(a: Args) -> Result<()> {
    let direct_min = (!a.buffered).then(|| usize::try_from(a.direct_min).unwrap_or(usize::MAX));
    let cfg = ConsumerConfig { socket: a.socket, output: a.output, threads: a.threads.max(1), direct_min };
    let consumer = Consumer::attach(&cfg)?;
    eprintln!(
        "hvtrace consume: recording channel {} (CPUs {:?}) into {} (pid {})",
        consumer.channel(),
        consumer.cpus(),
        consumer.output().display(),
        std::process::id()
    );
    let report = consumer.run()?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    if report.cut_short {
        eprintln!("hvtrace consume: warning: the host went away; the trace holds what was delivered until then");
        std::io::stdout().flush()?;
        std::process::exit(EXIT_CUT_SHORT);
    }
    Ok(())
}

/// Exit status of a consumer whose host went away mid-session: the trace
/// is valid but cut short (scripts can tell it from a complete one).
pub const EXIT_CUT_SHORT: i32 = 3;
