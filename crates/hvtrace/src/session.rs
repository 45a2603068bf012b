//! What the whole-session commands (`demo`, `kvm`) share: the consumer
//! child process (spawned, waited for until it maps the channel, reaped),
//! the end of a session (stop, destroy, the consumer's last drain), and the
//! per-CPU accounting of the trace on disk.

use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// A private directory for a session's control socket, `hvtrace-<what>-XXXXXX`:
/// made fresh with a random name and mode 0700 (`mkdtemp(3)`: a name that
/// exists is never taken, whoever made it), under `$XDG_RUNTIME_DIR` when
/// that is a private directory of ours, else under the temp dir. Removed when
/// dropped, so on every return, error or panic; the commands drop it as soon
/// as the consumer has attached (nobody connects by path after that), which
/// leaves nothing behind even when a signal ends the session later.
pub fn run_dir(what: &str) -> Result<tempfile::TempDir> {
    let base = runtime_base();
    tempfile::Builder::new()
        .prefix(&format!("hvtrace-{what}-"))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a private run directory in {}", base.display()))
}

/// `$XDG_RUNTIME_DIR` if it is a directory we own that nobody else may
/// write (under `sudo` it may still name the invoking user's), else the
/// temp dir (shared, but sticky: nobody else can rename our directory).
fn runtime_base() -> PathBuf {
    let private = |p: &Path| {
        std::fs::symlink_metadata(p)
            .is_ok_and(|m| m.is_dir() && m.uid() == hvtrace_sys::proc::euid() && m.permissions().mode() & 0o022 == 0)
    };
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() && private(&p) => p,
        _ => std::env::temp_dir(),
    }
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
/// progress to our stderr unless `quiet`. `extra` are further `consume`
/// arguments (the kernel source's).
pub fn spawn_consumer(
    exe: &Path,
    sock: &Path,
    output: &Path,
    threads: u32,
    quiet: bool,
    extra: &[String],
) -> Result<Reaped> {
    let child = Command::new(exe)
        .arg("consume")
        .arg("--socket")
        .arg(sock)
        .arg("--output")
        .arg(output)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--json")
        .args(extra)
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
    if st.code() == Some(crate::Status::CutShort as i32) {
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
    /// Events the ring lost, all causes (its counters).
    pub discarded: u64,
    /// Of those, events overwritten before they were read (overwrite mode):
    /// the trace reports them as missing packets, not in `events_discarded`.
    pub overwritten: u64,
    /// The file's last `events_discarded` (all losses but the overwritten:
    /// what babeltrace2 sums in its "discarded N events" warnings).
    pub trace_discarded: u64,
    /// Packets missing in the file (`packet_seq_num` gaps between packets:
    /// babeltrace2's "discarded N packets").
    pub packets_missing: u64,
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
            overwritten: r.overwritten,
            trace_discarded: c.events_discarded,
            packets_missing: c.packets_missing,
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

/// Writes the per-CPU table and its `all` line. `emitted`: the host's own
/// count per ring (in `rings` order) and in all, when it has one.
pub fn print_rings(out: &mut impl Write, rings: &[RingCount], emitted: Option<(&[u64], u64)>) -> io::Result<()> {
    let e = emitted.map(|_| format!(" {:>12}", "emitted")).unwrap_or_default();
    writeln!(out, "{:>4}{e} {:>12} {:>10} {:>8} {:>12}", "cpu", "recorded", "discarded", "packets", "bytes")?;
    let mut row = |cpu: &dyn std::fmt::Display, emitted: Option<u64>, r: [u64; 4]| {
        let e = emitted.map(|e| format!(" {e:>12}")).unwrap_or_default();
        writeln!(out, "{cpu:>4}{e} {:>12} {:>10} {:>8} {:>12}", r[0], r[1], r[2], r[3])
    };
    for (i, r) in rings.iter().enumerate() {
        let e = emitted.map(|(per_ring, _)| per_ring.get(i).copied().unwrap_or(0));
        row(&r.cpu, e, [r.recorded, r.discarded, r.packets, r.bytes])?;
    }
    row(
        &"all",
        emitted.map(|(_, all)| all),
        [
            total(rings, |r| r.recorded),
            total(rings, |r| r.discarded),
            total(rings, |r| r.packets),
            total(rings, |r| r.bytes),
        ],
    )
}

/// Writes where the trace is and how to open it.
pub fn print_open_hints(out: &mut impl Write, trace: &Path) -> io::Result<()> {
    writeln!(out, "trace: {}", trace.display())?;
    writeln!(out, "open it:  babeltrace2 {} | less", trace.display())?;
    writeln!(out, "          Trace Compass: File > Open Trace..., pick {}/metadata", trace.display())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    // Issue 17 item 3: `hvtrace kvm` used `create_dir_all("/tmp/hvtrace-kvm-<pid>")`,
    // which took a directory someone else had made there, mode and all.
    #[test]
    fn a_run_dir_is_fresh_private_and_removed_when_dropped() {
        let a = super::run_dir("test").unwrap();
        let b = super::run_dir("test").unwrap();
        assert_ne!(a.path(), b.path());
        for d in [&a, &b] {
            let name = d.path().file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("hvtrace-test-") && name.len() > "hvtrace-test-".len() + 3, "{name}");
            assert_eq!(std::fs::metadata(d.path()).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let path = a.path().to_path_buf();
        std::fs::write(path.join("ctl.sock"), b"").unwrap();
        drop(a);
        assert!(!path.exists());
    }
}
