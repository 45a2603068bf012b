//! `hvtrace-bench idle`: wake-ups of a consumer attached to a started but
//! idle session (`hvtrace sim --rate 0`): voluntary context switches of the
//! consumer process, all threads, over `--seconds`, from /proc.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hvtrace_ctl::Client;
use hvtrace_proto::{ChannelConfig, Mode, Request};

use crate::host::{hvtrace_exe, spawn_consumer, temp_dir, ConsumerKind, Reaped};
use crate::util;

/// Arguments of `hvtrace-bench idle`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Consumer process.
    #[arg(long, value_enum, default_value = "hvtrace")]
    consumer: ConsumerKind,
    /// Seconds to count over.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The `hvtrace` binary (default: next to this one).
    #[arg(long)]
    hvtrace: Option<PathBuf>,
    /// Poll period of the polling baseline, ms.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let tmp = temp_dir("idle")?;
    let sock = tmp.path().join("ctl.sock");
    let out = tmp.path().join("trace");
    let exe = hvtrace_exe(a.hvtrace.as_deref())?;
    let mut sim = Reaped(
        Command::new(&exe)
            .args(["sim", "--cpus", "2", "--rate", "0", "--socket"])
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ctl = loop {
        if let Ok(c) = Client::connect(&sock, Some(Duration::from_secs(30))) {
            break c;
        }
        if let Some(st) = sim.0.try_wait()? {
            bail!("hvtrace sim exited at start-up ({st})");
        }
        if Instant::now() > deadline {
            bail!("hvtrace sim did not open its socket within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    ctl.simple(&Request::Create(ChannelConfig { subbuf_size: 4 << 20, num_subbuf: 8, mode: Mode::Discard }))?;
    let mut consumer = spawn_consumer(a.consumer, a.hvtrace.as_deref(), a.poll_ms, &sock, &out, None, &mut ctl)?;
    let pid = consumer.0.id();
    ctl.simple(&Request::Start)?;
    // Let start-up settle (the consumer's reaction to `start`).
    std::thread::sleep(Duration::from_millis(300));
    let (v0, c0, t0) = (hvtrace_sys::proc::voluntary_ctxt_switches(pid)?, util::schedstat_ns(pid), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(a.seconds));
    let (v1, c1, dt) = (hvtrace_sys::proc::voluntary_ctxt_switches(pid)?, util::schedstat_ns(pid), t0.elapsed());
    let recorded: u64 = ctl.status()?.rings.iter().map(|r| r.produced_bytes).sum();
    ctl.simple(&Request::Stop)?;
    ctl.simple(&Request::Destroy)?;
    consumer.finish(Duration::from_secs(10));
    sim.finish(Duration::from_secs(5));
    let j = serde_json::json!({
        "consumer": format!("{:?}", a.consumer).to_lowercase(),
        "seconds": dt.as_secs_f64(),
        "wakeups": v1 - v0,
        "wakeups_per_s": util::round2((v1 - v0) as f64 / dt.as_secs_f64()),
        "consumer_cpu_us": (c1 - c0) as f64 / 1e3,
        "produced_bytes_while_idle": recorded,
        "loadavg": util::loadavg(),
    });
    println!("{}", serde_json::to_string(&j)?);
    Ok(())
}
