//! What the whole-session commands (`demo`, `kvm`) share: the consumer
//! child process (spawned, waited for until it maps the channel, reaped),
//! the end of a session (stop, destroy, the consumer's last drain), and the
//! per-CPU accounting of the trace on disk.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hvtrace_core::EventDesc;
use hvtrace_ctl::Client;
use hvtrace_proto::{Request, StatusInfo};
use hvtrace_reader::{check_stream, stream_cpu, Expect};

use crate::trace::count_stream;

/// Kills a child process on drop (so no host or consumer outlives a failed session).
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = hvtrace_sys::proc::terminate(self.0.id());
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.0.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A private directory for the session's control socket: `<tmp>/hvtrace-<what>-<pid>`.
pub fn run_dir(what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("hvtrace-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Fails if `output` already holds a trace.
pub fn check_output(output: &Path) -> Result<()> {
    if output.join("metadata").exists() {
        bail!("{} already holds a trace; choose another --output", output.display());
    }
    Ok(())
}

/// The running `hvtrace` executable (to spawn its subcommands).
pub fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the hvtrace executable")
}

/// Starts `hvtrace consume` on `sock` (the channel must exist), writing to
/// `output`; its JSON report goes to a pipe ([`finish`] reads it), its
/// progress to our stderr unless `quiet`.
pub fn spawn_consumer(exe: &Path, sock: &Path, output: &Path, threads: usize, quiet: bool) -> Result<Reaped> {
    let child = Command::new(exe)
        .arg("consume")
        .arg("--socket")
        .arg(sock)
        .arg("--output")
        .arg(output)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
        .spawn()
        .context("cannot start hvtrace consume")?;
    Ok(Reaped(child))
}

/// Waits (up to 20 s) until the consumer has mapped the channel.
pub fn wait_attached(ctl: &mut Client, consumer: &mut Reaped) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctl.status()?.refcount == 0 {
        if let Some(st) = consumer.0.try_wait()? {
            bail!("the consumer exited before attaching ({st})");
        }
        if Instant::now() > deadline {
            bail!("the consumer did not attach within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Ends the session: stop (writers quiesce, partial sub-buffers are
/// delivered), take the final counters, destroy. Returns those counters.
pub fn stop_and_destroy(ctl: &mut Client) -> Result<StatusInfo> {
    ctl.simple(&Request::Stop)?;
    let status = ctl.status()?;
    ctl.simple(&Request::Destroy)?;
    Ok(status)
}

/// Lets the consumer finish its last drain and exit; fails if it failed.
/// Returns its report (one JSON line).
pub fn finish(mut consumer: Reaped) -> Result<String> {
    let mut out = String::new();
    consumer.0.stdout.take().context("consumer stdout")?.read_to_string(&mut out)?;
    let st = consumer.0.wait()?;
    if st.code() == Some(crate::cmd::consume::EXIT_CUT_SHORT) {
        bail!("the consumer lost its host mid-session: the trace is cut short");
    }
    if !st.success() {
        bail!("the consumer failed ({st})");
    }
    Ok(out)
}

/// What one CPU's stream file holds, with the ring's own discard count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingCount {
    /// CPU number.
    pub cpu: u32,
    /// Records decoded from the stream file.
    pub recorded: u64,
    /// Events the ring discarded (its counter).
    pub discarded: u64,
    /// Packets in the file.
    pub packets: u64,
    /// File size.
    pub bytes: u64,
    /// Records per event id (empty unless asked for).
    pub by_event: Vec<u64>,
}

/// Decodes every ring's stream file `<output>/channel0_<cpu>`; fails on any
/// packet that does not decode. With `by_event`, also counts records per event id.
pub fn count_rings(output: &Path, status: &StatusInfo, events: &[EventDesc], by_event: bool) -> Result<Vec<RingCount>> {
    let mut rings = Vec::new();
    for r in &status.rings {
        let file = output.join(format!("channel0_{}", r.cpu));
        let c = count_stream(&file, events)?;
        if c.bad_packets > 0 {
            bail!("{}: {} packets do not decode", file.display(), c.bad_packets);
        }
        let by_event = if by_event { count_by_event(&file, events)? } else { Vec::new() };
        if !by_event.is_empty() && by_event.iter().sum::<u64>() != c.records {
            bail!("{}: {} records by event, {} in all", file.display(), by_event.iter().sum::<u64>(), c.records);
        }
        rings.push(RingCount {
            cpu: r.cpu,
            recorded: c.records,
            discarded: r.events_discarded,
            packets: c.packets,
            bytes: std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
            by_event,
        });
    }
    Ok(rings)
}

/// Records per event id in the intact packets of one stream file (the
/// reader's walk, as [`count_stream`] does).
fn count_by_event(file: &Path, events: &[EventDesc]) -> Result<Vec<u64>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let cpu = file.file_name().and_then(|n| stream_cpu(&n.to_string_lossy()));
    let report = check_stream(&bytes, events, &Expect { uuid: None, cpu });
    let mut counts = vec![0u64; events.len()];
    for packet in report.intact_packets(&bytes) {
        for rec in packet.records(events) {
            let rec = rec.map_err(|e| anyhow::anyhow!("{}: packet at byte {}: {e}", file.display(), packet.offset))?;
            if let Some(c) = counts.get_mut(rec.id as usize) {
                *c += 1;
            }
        }
    }
    Ok(counts)
}

/// The sum of one column over all rings.
pub fn total(rings: &[RingCount], f: impl Fn(&RingCount) -> u64) -> u64 {
    rings.iter().map(f).sum()
}

/// Prints the per-CPU table and its `all` line. `emitted`: the host's own
/// count per ring (in `rings` order) and in all, when it has one.
pub fn print_rings(rings: &[RingCount], emitted: Option<(&[u64], u64)>) {
    let row =
        |cpu: &dyn std::fmt::Display, emitted: Option<u64>, recorded: u64, discarded: u64, packets: u64, bytes: u64| {
            let e = emitted.map(|e| format!(" {e:>12}")).unwrap_or_default();
            println!("{cpu:>4}{e} {recorded:>12} {discarded:>10} {packets:>8} {bytes:>12}");
        };
    let e = emitted.map(|_| format!(" {:>12}", "emitted")).unwrap_or_default();
    println!("{:>4}{e} {:>12} {:>10} {:>8} {:>12}", "cpu", "recorded", "discarded", "packets", "bytes");
    for (i, r) in rings.iter().enumerate() {
        let e = emitted.map(|(per_ring, _)| per_ring.get(i).copied().unwrap_or(0));
        row(&r.cpu, e, r.recorded, r.discarded, r.packets, r.bytes);
    }
    row(
        &"all",
        emitted.map(|(_, all)| all),
        total(rings, |r| r.recorded),
        total(rings, |r| r.discarded),
        total(rings, |r| r.packets),
        total(rings, |r| r.bytes),
    );
}

/// Prints where the trace is and how to open it.
pub fn print_open_hints(trace: &Path) {
    println!("trace: {}", trace.display());
    println!("open it:  babeltrace2 {} | less", trace.display());
    println!("          Trace Compass: File > Open Trace..., pick {}/metadata", trace.display());
}
