//! `hvtrace-bench poll-consume`: the xentrace-style baseline consumer. It
//! maps the same rings as `hvtrace consume` (data read-only through
//! [`MappedReader`]) but ignores the eventfds: it wakes every
//! `--interval-ms`, writes every delivered packet to `<channel>_<cpu>` and
//! releases it. SIGTERM / SIGINT: one last drain, then exit. A benchmark
//! baseline only, not a product feature.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hvtrace_consumer::{MappedMetaLog, MappedReader};
use hvtrace_core::decode::packet_info;
use hvtrace_core::{Geometry, Poll};
use hvtrace_ctl::Client;
use hvtrace_proto::{Reply, Request};
use hvtrace_sys::SharedMapping;

/// Arguments of `hvtrace-bench poll-consume`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The host's control socket.
    #[arg(long)]
    socket: PathBuf,
    /// Trace directory (may exist, empty).
    #[arg(long)]
    output: PathBuf,
    /// Poll period, ms.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut ctl = Client::connect(&a.socket, Some(Duration::from_secs(30)))?;
    let (reply, fds) = ctl.call(&Request::Map)?;
    let Reply::Mapped(info) = reply else { bail!("`map` answered with {reply:?}") };
    let geo = Geometry::new(info.config.subbuf_size, u64::from(info.config.num_subbuf))
        .map_err(|e| anyhow::anyhow!("geometry: {e}"))?;
    let mut fds = fds.into_iter();
    let (Some(ctrl_fd), Some(_changed)) = (fds.next(), fds.next()) else { bail!("`map` sent too few descriptors") };
    let ctrl = Arc::new(SharedMapping::map_rw(&ctrl_fd, info.ctrl_len as usize)?);
    std::fs::create_dir_all(&a.output)?;
    // The metadata log, read once: the bench's host registers no class
    // mid-session (`hvtrace consume` follows the log).
    let meta_fd = fds.as_slice().get(info.metadata_fd_index() - 2).context("`map` sent too few descriptors")?;
    let meta = MappedMetaLog::attach(SharedMapping::map_ro_lazy(meta_fd, info.metadata_len as usize)?)?;
    let mut text = vec![0u8; meta.reader().published() as usize];
    if !meta.reader().copy(0, &mut text) {
        bail!("the metadata log's published length is beyond it");
    }
    std::fs::write(a.output.join("metadata"), &text)?;
    let mut rings = Vec::new();
    for r in &info.rings {
        let (Some(data), Some(_wake)) = (fds.next(), fds.next()) else { bail!("`map` sent too few descriptors") };
        let m = SharedMapping::map_ro(&data, r.data_len as usize)?;
        let reader = MappedReader::attach(m, ctrl.clone(), r.ctrl_offset, geo.ctrl_len())?;
        let path = a.output.join(format!("{}_{}", info.channel, r.cpu));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        rings.push((reader, file));
    }
    // The bench waits for this line (`host::READY`) before it measures.
    eprintln!("hvtrace-bench poll-consume: recording channel {} into {}", info.channel, a.output.display());
    let mut buf = vec![0u8; geo.subbuf_size as usize];
    let mut drain = |rings: &mut Vec<(MappedReader, File)>| -> Result<()> {
        for (m, f) in rings.iter_mut() {
            let r = m.reader();
            while let Poll::Ready(p) = r.next_packet() {
                r.copy_packet(&p, &mut buf);
                if r.release(&p) {
                    // A flushed packet is shorter than its sub-buffer: write
                    // what its header declares, as `hvtrace consume` does.
                    let len = packet_info(&buf).map_or(buf.len(), |i| i.packet_len.min(buf.len()));
                    f.write_all(&buf[..len])?;
                }
            }
        }
        Ok(())
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(a.interval_ms));
        drain(&mut rings)?;
    }
    drain(&mut rings)?;
    for (_, f) in &rings {
        f.sync_all()?;
    }
    let _ = ctl.call(&Request::Unmap);
    Ok(())
}
