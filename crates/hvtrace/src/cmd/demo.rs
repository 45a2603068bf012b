//! `hvtrace demo`: a whole session in separate processes — a simulated
//! Xen-like host (`hvtrace sim`), the consumer daemon (`hvtrace consume`),
//! and this process as the control tool — then a summary checked against
//! the trace on disk.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hvtrace_core::EventSet;
use hvtrace_ctl::Client;
use hvtrace_proto::Request;
use hvtrace_sim::{xen, MAX_RATE};

use crate::cmd::consume::consumer_threads;
use crate::cmd::control::ChannelArgs;
use crate::cmd::sim::{self, SimDone};
use crate::out::note;
use crate::session::{self, Reaped};
use crate::Status;

/// Run a complete tracing session on a simulated Xen-like host and summarise it.
///
/// Starts `hvtrace sim` (the host), creates the channel, starts `hvtrace
/// consume` (the daemon), starts recording, lets every simulated CPU record
/// EVENTS_PER_CPU events, stops, destroys, and prints per CPU what was
/// emitted, recorded (decoded back from the trace files) and discarded.
/// recorded + discarded always equals emitted; the command fails otherwise.
#[derive(clap::Args)]
pub struct Args {
    /// Trace directory to write (must not already hold a trace).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Simulated physical CPUs, 1 to 512.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=i64::from(sim::MAX_CPUS)))]
    pub cpus: u32,
    /// Events each simulated CPU records.
    #[arg(long, default_value_t = 200_000)]
    pub events_per_cpu: u64,
    #[command(flatten)]
    pub channel: ChannelArgs,
    /// Events per second per simulated CPU (at most 10^9), or `max` for as fast as the
    /// host can (then the consumer may fall behind and events are discarded
    /// — and counted).
    #[arg(long, default_value = "1000000")]
    pub rate: Rate,
    /// Consumer worker threads (1 to 1024).
    #[arg(long, default_value_t = 1, value_parser = consumer_threads())]
    pub consumer_threads: u32,
    /// Print the summary as JSON: the last line of stdout is one object.
    #[arg(long)]
    pub json: bool,
}

/// Events per second, or unpaced (`max`).
#[derive(Clone, Copy, Debug)]
pub struct Rate(pub Option<u64>);

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        match s {
            "max" => Ok(Rate(None)),
            n => match n.parse::<u64>() {
                Ok(0) => Err("--rate must be positive (or `max`)".into()),
                Ok(r) if r > MAX_RATE => Err(format!("--rate {r} is above the most a simulated CPU takes, {MAX_RATE}")),
                Ok(r) => Ok(Rate(Some(r))),
                Err(_) => Err(format!("{n:?} is not a rate: give events per second, or `max`")),
            },
        }
    }
}

#[derive(serde::Serialize)]
struct CpuSummary {
    cpu: u32,
    emitted: u64,
    recorded: u64,
    discarded: u64,
    overwritten: u64,
    packets: u64,
    packets_missing: u64,
    bytes: u64,
}

#[derive(serde::Serialize)]
struct Summary {
    trace: PathBuf,
    cpus: u32,
    mode: String,
    events_emitted: u64,
    events_recorded: u64,
    /// All causes: `events_recorded + events_discarded == events_emitted`.
    events_discarded: u64,
    /// Of those, overwritten (overwrite mode): in the trace as missing packets.
    events_overwritten: u64,
    /// What the trace's `events_discarded` says (babeltrace2's "discarded N
    /// events" warnings add up to it, or to less when a stream's first
    /// packet already carries losses: babeltrace2 gives no count for those).
    trace_events_discarded: u64,
    /// `packet_seq_num` gaps (babeltrace2's "discarded N packets").
    packets_missing: u64,
    bytes: u64,
    packets: u64,
    elapsed_s: f64,
    events_per_second: f64,
    per_cpu: Vec<CpuSummary>,
}

pub fn run(a: Args) -> Result<Status> {
    let cfg = a.channel.config()?;
    session::check_output(&a.output)?;
    let exe = session::exe()?;
    let run_dir = session::run_dir("demo")?;
    let sock = run_dir.path().join("ctl.sock");
    let progress = |m: &str| {
        if !a.json {
            note(format_args!("demo: {m}"));
        }
    };

    // 1. The host.
    let mut sim_cmd = Command::new(&exe);
    sim_cmd.arg("sim").arg("--socket").arg(&sock).arg("--cpus").arg(a.cpus.to_string());
    sim_cmd.arg("--events-per-cpu").arg(a.events_per_cpu.to_string());
    if let Rate(Some(r)) = a.rate {
        sim_cmd.arg("--rate").arg(r.to_string());
    }
    let mut sim = Reaped(sim_cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?);
    progress(&format!("host: hvtrace sim (pid {}), {} CPUs", sim.0.id(), a.cpus));
    let mut ctl = connect_when_ready(&sock, &mut sim)?;

    // 2. The channel, 3. the consumer daemon.
    ctl.simple(&Request::Create(cfg))?;
    progress(&format!("created: {}", a.channel));
    let mut consumer = session::spawn_consumer(&exe, &sock, &a.output, a.consumer_threads, a.json, &[])?;
    session::wait_attached(&mut ctl, &mut consumer)?;
    progress(&format!("consumer: hvtrace consume (pid {}) attached", consumer.0.id()));
    // Both ends are connected: nobody needs the socket's path any more.
    run_dir.close().with_context(|| format!("cannot remove {}", sock.display()))?;

    // 4. Record.
    let t0 = Instant::now();
    ctl.simple(&Request::Start)?;
    progress(&format!("started; each CPU records {} events", a.events_per_cpu));
    let done = read_sim_done(&mut sim)?;
    let elapsed = t0.elapsed();
    let status = session::stop_and_destroy(&mut ctl)?;
    progress(&format!("stopped and destroyed after {:.2} s", elapsed.as_secs_f64()));

    // 5. The consumer finishes its drain and exits.
    session::finish(consumer)?;
    drop(sim);

    // 6. Check the trace on disk against what the host emitted and counted.
    let rings = session::count_rings(&a.output, &status, xen::Events::EVENTS, false)?;
    let emitted = |cpu: u32| done.per_cpu.iter().find(|p| p.0 == cpu).map_or(0, |p| p.1);
    let per_cpu: Vec<CpuSummary> = rings
        .iter()
        .map(|r| CpuSummary {
            cpu: r.cpu,
            emitted: emitted(r.cpu),
            recorded: r.recorded,
            discarded: r.discarded,
            overwritten: r.overwritten,
            packets: r.packets,
            packets_missing: r.packets_missing,
            bytes: r.bytes,
        })
        .collect();
    let s = Summary {
        trace: std::fs::canonicalize(&a.output).unwrap_or(a.output.clone()),
        cpus: a.cpus,
        mode: a.channel.mode.to_string(),
        events_emitted: done.emitted,
        events_recorded: session::total(&rings, |r| r.recorded),
        events_discarded: session::total(&rings, |r| r.discarded),
        events_overwritten: session::total(&rings, |r| r.overwritten),
        trace_events_discarded: session::total(&rings, |r| r.trace_discarded),
        packets_missing: session::total(&rings, |r| r.packets_missing),
        bytes: session::total(&rings, |r| r.bytes),
        packets: session::total(&rings, |r| r.packets),
        elapsed_s: elapsed.as_secs_f64(),
        events_per_second: done.emitted as f64 / elapsed.as_secs_f64().max(1e-9),
        per_cpu,
    };
    let mut out = std::io::stdout().lock();
    print_summary(&mut out, &s, &rings, a.json)?;
    out.flush()?;
    for r in &rings {
        if r.trace_discarded != r.discarded - r.overwritten {
            bail!(
                "cpu {}: the trace's events_discarded is {}, the host counted {} lost ({} of them overwritten)",
                r.cpu,
                r.trace_discarded,
                r.discarded,
                r.overwritten
            );
        }
    }
    if s.events_recorded + s.events_discarded != s.events_emitted {
        bail!(
            "accounting mismatch: recorded {} + discarded {} != emitted {}",
            s.events_recorded,
            s.events_discarded,
            s.events_emitted
        );
    }
    Ok(Status::Ok)
}

fn connect_when_ready(sock: &Path, sim: &mut Reaped) -> Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = Client::connect(sock, Some(Duration::from_secs(30))) {
            return Ok(c);
        }
        if let Some(st) = sim.0.try_wait()? {
            bail!("the simulated host exited at start-up ({st})");
        }
        if Instant::now() > deadline {
            bail!("the simulated host did not open {} within 20 s", sock.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_sim_done(sim: &mut Reaped) -> Result<SimDone> {
    let out = sim.0.stdout.take().context("sim stdout")?;
    for line in BufReader::new(out).lines() {
        let line = line?;
        if let Ok(d) = serde_json::from_str::<SimDone>(&line) {
            return Ok(d);
        }
    }
    bail!("the simulated host exited before reporting its events ({:?})", sim.0.try_wait()?)
}

fn print_summary(out: &mut impl Write, s: &Summary, rings: &[session::RingCount], json: bool) -> io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::to_string(s)?);
    }
    writeln!(out)?;
    let emitted: Vec<u64> = s.per_cpu.iter().map(|c| c.emitted).collect();
    session::print_rings(out, rings, Some((&emitted, s.events_emitted)))?;
    writeln!(out)?;
    writeln!(
        out,
        "{} events in {:.2} s ({:.1} M events/s), {:.1} bytes/event, {} mode",
        s.events_emitted,
        s.elapsed_s,
        s.events_per_second / 1e6,
        s.bytes as f64 / s.events_recorded.max(1) as f64,
        s.mode
    )?;
    writeln!(
        out,
        "in the trace: {} events discarded (events_discarded: babeltrace2's \"discarded N events\"), \
         {} packets missing (packet_seq_num gaps: its \"discarded N packets\") holding the {} events overwritten",
        s.trace_events_discarded, s.packets_missing, s.events_overwritten
    )?;
    session::print_open_hints(out, &s.trace)
}
