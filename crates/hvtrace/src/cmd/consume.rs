//! `hvtrace consume`: the consumer daemon (the seed's lttd).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use hvtrace_consumer::{Consumer, ConsumerConfig, ExitReason, RelayConfig, RelaydUrl};
use hvtrace_ftrace::KernelSource;

use crate::cmd::record_kernel::{instance_config, Summary};

use crate::out::note;
use crate::size::parse_size;
use crate::Status;

/// Record a host's channel into a CTF trace directory.
///
/// Maps the host's ring buffers read-only, sleeps until the host signals a
/// sub-buffer switch, and writes each delivered sub-buffer unchanged to
/// `OUTPUT/<channel>_<cpu>`, with the CTF `metadata` beside them. Exits when
/// the session is destroyed, when the host goes away, or on SIGINT/SIGTERM
/// (after a final flush and drain). The channel must have been created.
///
/// The trace is private to its owner (directory 0700, files 0600) unless
/// `--group` names a group that may read it (0750 / 0640).
///
/// With `--relayd`, every packet also goes to an lttng-relayd, which stores
/// the trace under `HOSTNAME/SESSION/` of its output directory and serves it
/// live (`babeltrace2 net://RELAY/host/HOSTNAME/SESSION`); without
/// `--output` the relay is the only sink.
///
/// Exit status: 0 when the session ended normally (destroyed, or
/// SIGINT/SIGTERM; with `--output`, also when the relay failed: the local
/// trace is whole and the report counts what the relay missed); 3 when the
/// host went away in the middle of it (the trace holds every sub-buffer
/// delivered until then, plus an empty `INCOMPLETE` marker); 4 when the
/// relay, the only sink, failed mid-session; 1 on any other error
/// (including a relay that refuses the session with no `--output`), and
/// when packets handed to the consumer are not in the trace (write errors,
/// a full disk, files removed under it: the trace's `.hvtrace-consumer`
/// account names them, and `hvtrace check` reports them).
#[derive(clap::Args)]
pub struct Args {
    /// The host's control socket.
    #[arg(long, short = 's')]
    pub socket: PathBuf,
    /// Trace directory to write (created; must not already hold a trace).
    /// Optional with --relayd.
    #[arg(long, short = 'o', required_unless_present = "relayd")]
    pub output: Option<PathBuf>,
    /// Stream to an lttng-relayd at net://HOST[:CONTROL_PORT[:DATA_PORT]]
    /// (ports default to 5342 and 5343).
    #[arg(long, value_name = "URL")]
    pub relayd: Option<RelaydUrl>,
    /// Session name on the relay [default: hvtrace-HOSTNAME-YYYYMMDD-HHMMSS].
    #[arg(long, requires = "relayd")]
    pub session: Option<String>,
    /// Live timer in milliseconds: how often partial sub-buffers are flushed
    /// and idle streams get a beacon, so live viewers keep moving.
    #[arg(long, value_name = "MS", default_value_t = 1000, requires = "relayd",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub live_timer: u64,
    /// How long, in milliseconds, the relay's streams stay open after the
    /// last packet so live viewers read to the end (closed, lttng-relayd
    /// 2.13 no longer serves what a viewer had not read) [default: two live
    /// timers, 1 to 5 s].
    #[arg(long, value_name = "MS", requires = "relayd")]
    pub linger: Option<u64>,
    /// Longest, in milliseconds, any connect, send or reply to the relay may
    /// take before the relay counts as gone (from then on its packets are
    /// counted as missed). Also what a stalled relay can add to the end of a
    /// session, Ctrl-C included: about one timeout (docs/architecture.md).
    #[arg(long, value_name = "MS", default_value_t = hvtrace_consumer::RELAY_TIMEOUT.as_millis() as u64,
          requires = "relayd", value_parser = clap::value_parser!(u64).range(1..))]
    pub relay_timeout: u64,
    /// Worker threads, 1 to 1024; rings are spread over them (any number of CPUs).
    #[arg(long, default_value_t = 1, value_parser = consumer_threads())]
    pub threads: u32,
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
    /// Group (name or number) that may read the trace, like LTTng's
    /// `tracing` group: the directory is made 0750 and its files 0640, owned
    /// by that group. Without it only the owner can read the trace (it holds
    /// guest addresses and hypercall arguments).
    #[arg(long, value_parser = parse_group)]
    pub group: Option<u32>,
    /// Also record the kernel's events of this process (as `hvtrace
    /// record-kernel --pid` does) into the same trace: streams
    /// `kernel_<cpu>`, described in the same metadata, on the same clock.
    #[arg(long)]
    pub kernel_pid: Option<u32>,
    /// With --kernel-pid: the kernel events, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = hvtrace_ftrace::DEFAULT_EVENTS.iter().map(|s| s.to_string()))]
    pub kernel_events: Vec<String>,
    /// With --kernel-pid: per-CPU kernel buffer, KiB.
    #[arg(long, default_value_t = 1024)]
    pub kernel_buffer_kb: u32,
}

pub(crate) fn parse_group(s: &str) -> Result<u32, String> {
    match hvtrace_sys::fs::group_id(s) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(format!("no group called {s:?}")),
        Err(e) => Err(format!("cannot look group {s:?} up: {e}")),
    }
}

/// The relay sink `a` asks for, if any.
fn relay_config(a: &Args) -> Option<RelayConfig> {
    let url = a.relayd.clone()?;
    let mut r = RelayConfig::new(url);
    if let Some(s) = &a.session {
        r.session = s.clone();
    }
    r.live_timer = std::time::Duration::from_millis(a.live_timer);
    r.linger = a.linger.map(std::time::Duration::from_millis);
    r.timeout = std::time::Duration::from_millis(a.relay_timeout);
    Some(r)
}

pub fn run(a: Args) -> Result<Status> {
    let direct_min = (!a.buffered).then(|| usize::try_from(a.direct_min).unwrap_or(usize::MAX));
    let relay = relay_config(&a);
    // The kernel source first: its event classes go into the metadata the
    // consumer writes, a missing tracefs or root fails before anything is
    // written, and it records from now on, before the attach after which
    // the host may start the VMM (the kernel's buffers hold the events
    // until the reader runs; what they cannot hold is counted).
    let kernel = match a.kernel_pid {
        Some(_) if a.output.is_none() => anyhow::bail!("--kernel-pid writes kernel streams: it needs --output"),
        Some(pid) => {
            let clock = hvtrace_host::ClockSource::detect();
            Some(KernelSource::open(&instance_config(pid, &a.kernel_events, a.kernel_buffer_kb, clock))?)
        }
        None => None,
    };
    let metadata_suffix = kernel.as_ref().map(KernelSource::metadata).unwrap_or_default();
    let cfg = ConsumerConfig {
        socket: a.socket,
        output: a.output,
        threads: a.threads as usize,
        direct_min,
        relay: relay.clone(),
        group: a.group,
        metadata_suffix,
    };
    let consumer = Consumer::attach(&cfg)?;
    let output = consumer.output().map(Path::to_path_buf);
    let kernel = match (kernel, &output) {
        (Some(k), Some(_)) => Some(k.start(&mut |name| consumer.create_file(name), consumer.trace_uuid())?),
        _ => None,
    };
    let mut sinks = Vec::new();
    if let Some(o) = consumer.output() {
        sinks.push(o.display().to_string());
    }
    if let Some(r) = &relay {
        sinks.push(format!("relay {} as /host/{}/{}", r.url, r.hostname, r.session));
    }
    note(format_args!(
        "hvtrace consume: recording channel {} (CPUs {:?}) into {} (pid {})",
        consumer.channel(),
        consumer.cpus(),
        sinks.join(" and "),
        std::process::id()
    ));
    // The library prints nothing: what it met at attach is shown now (and
    // is in the final report too).
    for n in consumer.notes() {
        note(format_args!("hvtrace consume: warning: {n}"));
    }
    let report = consumer.run();
    // The kernel's streams end after the VMM's (and also when the VMM's failed).
    let kernel = kernel.map(|k| k.stop()).transpose()?;
    let report = report?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{report}")?;
    }
    if let (Some(k), Some(output)) = (&kernel, output) {
        // With --json, a second line: the kernel's summary.
        Summary::new(output, k, Vec::new()).print(&mut out, a.json)?;
    }
    out.flush()?;
    if let Some(r) = report.relay.as_ref().filter(|r| r.error.is_some() || r.missed_packets() > 0) {
        note(format_args!(
            "hvtrace consume: warning: the relay missed {} packets{}",
            r.missed_packets(),
            r.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
        ));
    }
    if report.exit == ExitReason::RelayGone {
        note(format_args!("hvtrace consume: error: the relay, the only sink, failed; the session was ended"));
        return Ok(Status::RelayGone);
    }
    if !report.is_whole() {
        note(format_args!(
            "hvtrace consume: error: {} packets handed to the consumer are not in the trace",
            report.consumer_lost()
        ));
        return Ok(Status::Failed);
    }
    if report.cut_short {
        note(format_args!(
            "hvtrace consume: warning: the host went away; the trace holds what was delivered until then"
        ));
        return Ok(Status::CutShort);
    }
    Ok(Status::Ok)
}

/// The most consumer worker threads: more than rings is waste, and a number
/// the system cannot start should be refused before a session starts.
pub const MAX_THREADS: u32 = 1024;

/// `--threads` / `--consumer-threads`: 1 to [`MAX_THREADS`], checked at parse time.
pub fn consumer_threads() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_THREADS))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use std::time::Duration;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        consume: super::Args,
    }

    fn relay_timeout(args: &[&str]) -> Option<Duration> {
        let cli = Cli::try_parse_from(["consume", "--socket", "s", "--relayd", "net://127.0.0.1"].iter().chain(args));
        super::relay_config(&cli.unwrap().consume).map(|r| r.timeout)
    }

    #[test]
    fn the_relay_timeout_is_the_users_to_set() {
        assert_eq!(relay_timeout(&[]), Some(hvtrace_consumer::RELAY_TIMEOUT));
        assert_eq!(relay_timeout(&["--relay-timeout", "1500"]), Some(Duration::from_millis(1500)));
        assert!(
            Cli::try_parse_from(["consume", "--socket", "s", "--relay-timeout", "5", "-o", "d"]).is_err(),
            "needs --relayd"
        );
        assert!(
            Cli::try_parse_from(["consume", "--socket", "s", "--relayd", "net://h", "--relay-timeout", "0"]).is_err()
        );
    }
}
