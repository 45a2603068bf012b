//! `hvtrace-bench host`: producer threads recording through a real
//! [`Host`]'s [`Writer`](hvtrace_host::Writer) (generation check + current
//! CPU + ring: what a VMM pays), with a real consumer process (`hvtrace
//! consume`, or the 100 ms polling baseline) writing the trace. Reports
//! producer cost, what reached the disk, the consumer's CPU time and,
//! with `--latency`, sub-buffer delivery latency.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hvtrace_core::{Clock, EventSet};
use hvtrace_ctl::Client;
use hvtrace_host::{Host, HostClock, HostConfig};
use hvtrace_proto::{ChannelConfig, Mode, Request};

use crate::util::{self, hvbench, EventKind, Load};

/// Which consumer records the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ConsumerKind {
    /// `hvtrace consume`: sleeps in epoll, woken once per delivered sub-buffer.
    Hvtrace,
    /// The xentrace-style baseline (`hvtrace-bench poll-consume`): wakes every `--poll-ms`.
    Poll,
}

/// How the producer threads record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum WriterKind {
    /// `Host::writer()`: the ring of the current CPU, shared protocol (CAS reserve, atomic commit).
    Shared,
    /// `Host::exclusive_writer(cpu)`: each pinned thread owns its CPU's ring (no locked instruction).
    Exclusive,
}

/// Arguments of `hvtrace-bench host`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    load: Load,
    /// Event recorded.
    #[arg(long, value_enum, default_value = "full")]
    event: EventKind,
    /// Ring mode.
    #[arg(long, default_value = "discard")]
    mode: Mode,
    /// How producer threads record.
    #[arg(long, value_enum, default_value = "shared")]
    writer: WriterKind,
    /// Sub-buffer size in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    subbuf_size: u64,
    /// Sub-buffers per ring.
    #[arg(long, default_value_t = 8)]
    num_subbuf: u32,
    /// Consumer process.
    #[arg(long, value_enum, default_value = "hvtrace")]
    consumer: ConsumerKind,
    /// The `hvtrace` binary (default: next to this one).
    #[arg(long)]
    hvtrace: Option<PathBuf>,
    /// Poll period of the polling baseline, ms.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Measure delivery latency (sub-buffer close to bytes in the file).
    #[arg(long)]
    latency: bool,
    /// Keep the trace in this directory (default: a temporary one, removed).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Stream to an lttng-relayd started on free loopback ports (writing
    /// under the temporary directory) instead of a local trace directory;
    /// what reached the relay's trace is counted.
    #[arg(long, conflicts_with_all = ["latency", "keep"])]
    relayd: bool,
    /// With `--relayd`: the consumer's live timer, ms (its default: 1000).
    #[arg(long, requires = "relayd")]
    live_timer_ms: Option<u64>,
}

/// Kills a child on drop.
pub(crate) struct Reaped(pub Child);

impl Reaped {
    /// SIGTERM, then wait up to `grace`, then SIGKILL.
    pub(crate) fn finish(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.0.try_wait() {
            return Some(st);
        }
        let _ = hvtrace_sys::proc::terminate(self.0.id());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.0.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.0.kill();
        self.0.wait().ok()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        self.finish(Duration::from_secs(5));
    }
}

/// A private temporary directory `hvtrace-bench-<tag>-*`, removed on drop.
pub(crate) fn temp_dir(tag: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("hvtrace-bench-{tag}-"))
        .tempdir()
        .context("creating a temporary directory")
}

/// The `hvtrace` executable: `explicit`, else the one beside this binary.
pub(crate) fn hvtrace_exe(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe()?;
    let p = me.with_file_name("hvtrace");
    if !p.exists() {
        bail!("{} not found; build it (cargo build --release -p hvtrace) or pass --hvtrace", p.display());
    }
    Ok(p)
}

/// What both consumers print on stderr once attached (rings mapped, stream
/// files created), just before they start waiting for packets.
pub(crate) const READY: &str = ": recording channel ";

/// Starts the consumer process on `sock`, writing `out`, and waits until it
/// is attached: the host counts its reference *and* it has said [`READY`].
/// The host counts the reference as soon as it answers `map`, before the
/// consumer has mapped (and populated) its rings, written `metadata` and
/// created its files: milliseconds of CPU that would otherwise land in a
/// measurement started right after this returns.
pub(crate) fn spawn_consumer(
    kind: ConsumerKind,
    hvtrace: Option<&Path>,
    poll_ms: u64,
    sock: &Path,
    out: &Path,
    relayd: Option<(&hvtrace_relayd::RelaydUrl, Option<u64>)>,
    ctl: &mut Client,
) -> Result<Reaped> {
    let mut cmd = match kind {
        ConsumerKind::Hvtrace => {
            let mut c = Command::new(hvtrace_exe(hvtrace)?);
            c.arg("consume").arg("--json");
            c
        }
        ConsumerKind::Poll => {
            let mut c = Command::new(std::env::current_exe()?);
            c.arg("poll-consume").arg("--interval-ms").arg(poll_ms.to_string());
            c
        }
    };
    cmd.arg("--socket").arg(sock);
    match relayd {
        // The relay as the only sink.
        Some((url, live_timer_ms)) => {
            if let Some(ms) = live_timer_ms {
                cmd.arg("--live-timer").arg(ms.to_string());
            }
            cmd.arg("--relayd").arg(url.to_string()).args(["--session", RELAY_SESSION])
        }
        None => cmd.arg("--output").arg(out),
    };
    let mut child = Reaped(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("spawning the consumer")?);
    // Read stderr for the whole run (so the consumer never blocks on a full
    // pipe), noting when the ready line comes.
    let stderr = child.0.stderr.take().context("the consumer's stderr")?;
    let ready = Arc::new(AtomicBool::new(false));
    let (log, said) = (Arc::new(std::sync::Mutex::new(String::new())), ready.clone());
    let reader_log = log.clone();
    let mut reader = Some(std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr);
        let mut line = String::new();
        while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
            if line.contains(READY) {
                said.store(true, Ordering::Release);
            }
            let mut l = reader_log.lock().unwrap_or_else(|e| e.into_inner());
            if l.len() < 1 << 16 {
                l.push_str(&line);
            }
            line.clear();
        }
    }));
    let attached = util::wait_for(Duration::from_secs(20), Duration::from_millis(2), || {
        if let Some(st) = child.0.try_wait()? {
            // It exited: its stderr is at end of file, the reader ends.
            if let Some(r) = reader.take() {
                let _ = r.join();
            }
            let err = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
            bail!("the consumer exited before attaching ({st}): {err}");
        }
        Ok(ready.load(Ordering::Acquire) && ctl.status()?.refcount > 0)
    })?;
    if !attached {
        bail!("the consumer did not attach within 20 s");
    }
    Ok(child)
}

/// Session name of `--relayd` runs.
const RELAY_SESSION: &str = "hvtrace-bench";

/// Sub-buffer delivery latency, seen from outside the consumer: an inotify
/// watch on the trace directory wakes on every write; each stream file's
/// newly complete packets are read back, and `now - timestamp_end` (the
/// packet's close time, same TSC) is one sample. Conservative: includes the
/// watcher's own wake-up.
struct LatencyWatch {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<Vec<f64>>>,
}

impl LatencyWatch {
    fn start(dir: PathBuf, channel: String, packet: u64, clock: HostClock) -> Result<LatencyWatch> {
        // SAFETY: plain syscalls; the fd is closed by the thread below.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_init1");
        }
        let cpath = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd, cpath.as_ptr(), libc::IN_MODIFY | libc::IN_CREATE) } < 0 {
            return Err(std::io::Error::last_os_error()).context("inotify_add_watch");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen: std::collections::HashMap<String, (std::fs::File, u64)> = Default::default();
            let mut lat = Vec::new();
            let mut buf = [0u8; 4096];
            let freq = clock.freq().max(1) as f64;
            let mut last_round = false;
            loop {
                let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 20) };
                let now = clock.now();
                // SAFETY: reads into a local buffer; non-blocking fd.
                while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
                for e in std::fs::read_dir(&dir)?.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.starts_with(&format!("{channel}_")) {
                        continue;
                    }
                    if !seen.contains_key(&name) {
                        seen.insert(name.clone(), (std::fs::File::open(e.path())?, 0));
                    }
                    let (f, done) = seen.get_mut(&name).unwrap();
                    let full = f.metadata()?.len() / packet;
                    while *done < full {
                        let mut ts = [0u8; 8];
                        f.read_exact_at(&mut ts, *done * packet + hvtrace_core::ctf::packet::TIMESTAMP_END as u64)?;
                        let end = u64::from_le_bytes(ts);
                        lat.push(now.saturating_sub(end) as f64 * 1e9 / freq);
                        *done += 1;
                    }
                }
                if last_round {
                    break;
                }
                if st.load(Ordering::Acquire) {
                    last_round = true;
                }
            }
            // SAFETY: our fd, closed once.
            unsafe { libc::close(fd) };
            Ok(lat)
        });
        Ok(LatencyWatch { stop, handle })
    }

    fn finish(self) -> Result<Vec<f64>> {
        self.stop.store(true, Ordering::Release);
        self.handle.join().map_err(|_| anyhow::anyhow!("latency watcher panicked"))?
    }
}

pub(crate) fn run(a: Args) -> Result<()> {
    let tmp = temp_dir("host")?;
    let sock = tmp.path().join("ctl.sock");
    let out = a.keep.clone().unwrap_or_else(|| tmp.path().join("trace"));
    std::fs::create_dir_all(&out)?;
    let mut cfg = HostConfig::new(&sock, "bench");
    cfg.channel = "hvbench".into();
    let host = Host::serve(cfg, hvbench::Events::EVENTS)?;
    // Exclusive writers are claimed before the channel exists, so its rings
    // are created owned (thread i runs pinned on online CPU i).
    let cpus = hvtrace_sys::cpu::online_cpus();
    let owners: Vec<std::sync::Mutex<Option<hvtrace_host::ExclusiveWriter>>> = match a.writer {
        WriterKind::Shared => Vec::new(),
        WriterKind::Exclusive => (0..a.load.threads)
            .map(|i| Ok(std::sync::Mutex::new(Some(host.exclusive_writer(cpus[i % cpus.len()] as u32)?))))
            .collect::<Result<_>>()?,
    };
    let mut ctl = Client::connect(&sock, Some(Duration::from_secs(30)))?;
    let ch = ChannelConfig { subbuf_size: a.subbuf_size, num_subbuf: a.num_subbuf, mode: a.mode };
    ctl.simple(&Request::Create(ch))?;
    let watch = if a.latency {
        Some(LatencyWatch::start(out.clone(), "hvbench".into(), a.subbuf_size, *host.clock())?)
    } else {
        None
    };
    let relay = if a.relayd {
        if a.consumer != ConsumerKind::Hvtrace {
            bail!("--relayd needs --consumer hvtrace");
        }
        Some(hvtrace_relayd::LocalRelayd::spawn(&tmp.path().join("relay"))?.context("lttng-relayd is not installed")?)
    } else {
        None
    };
    let relay_url = relay.as_ref().map(|r| r.url.clone());
    let mut consumer = spawn_consumer(
        a.consumer,
        a.hvtrace.as_deref(),
        a.poll_ms,
        &sock,
        &out,
        relay_url.as_ref().map(|u| (u, a.live_timer_ms)),
        &mut ctl,
    )?;
    let cpid = consumer.0.id();
    ctl.simple(&Request::Start)?;
    let load = a.load;
    let la0 = util::loadavg();
    let c0 = util::schedstat_by_thread(cpid);
    let r0 = relay.as_ref().map(|r| util::schedstat_ns(r.pid()));
    let kind = a.event;
    let rs = util::run_threads(load, |i| match owners.get(i) {
        Some(slot) => {
            let w = slot.lock().unwrap().take().expect("one exclusive writer per thread");
            Box::new(move |first, n| util::emit(&w, kind, first, n))
        }
        None => {
            let w = host.writer();
            Box::new(move |first, n| util::emit(&w, kind, first, n))
        }
    });
    // Stop (quiesces and flushes), then wait until the consumer has released everything.
    ctl.simple(&Request::Stop)?;
    let drained = util::wait_for(Duration::from_secs(60), Duration::from_micros(500), || {
        Ok(ctl.status()?.rings.iter().all(|r| r.consumed_bytes >= r.produced_bytes))
    })?;
    let status = ctl.status()?;
    // Relay runs: the consumer's queue may still hold packets once the rings
    // are drained, so both processes' CPU is read once the relay has indexed
    // every packet delivered (an index entry is written once both the data
    // and the index of a packet are in), or the consumer gave up on the relay
    // (it exits: the run is then lossy, its trace short).
    let relay_indexed = match &relay {
        Some(r) => {
            let index = r.trace_dir(&hvtrace_sys::hostname(), RELAY_SESSION).join("index");
            let want: u64 = status.rings.iter().map(|x| x.delivered_subbufs).sum();
            util::wait_for(Duration::from_secs(60), Duration::from_millis(1), || {
                Ok(util::relay_index_entries(&index) >= want || consumer.0.try_wait()?.is_some())
            })?;
            Some(util::relay_index_entries(&index))
        }
        None => None,
    };
    let c1 = util::schedstat_by_thread(cpid);
    let r1 = relay.as_ref().map(|r| util::schedstat_ns(r.pid()));
    ctl.simple(&Request::Destroy)?;
    let exit = match a.consumer {
        // Exits by itself once the session is destroyed.
        ConsumerKind::Hvtrace => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(st) = consumer.0.try_wait()? {
                    break Some(st);
                }
                if Instant::now() > deadline {
                    break consumer.finish(Duration::from_secs(5));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        ConsumerKind::Poll => consumer.finish(Duration::from_secs(10)),
    };
    let latencies = watch.map(LatencyWatch::finish).transpose()?;
    drop(ctl);
    host.shutdown();

    // Relay runs: the relay's copy of the trace is what counts.
    let trace_dir = relay.as_ref().map_or(out.clone(), |r| r.trace_dir(&hvtrace_sys::hostname(), RELAY_SESSION));
    let tc = util::count_trace(&trace_dir, "hvbench")?;
    let emitted = (a.load.events + a.load.warmup) * a.load.threads as u64;
    let discarded: u64 = status.rings.iter().map(|r| r.events_discarded).sum();
    let overwritten: u64 = status.rings.iter().map(|r| r.overwritten).sum();
    let by_thread: serde_json::Map<String, serde_json::Value> = c1
        .iter()
        .map(|(name, ns)| (name.clone(), ns.saturating_sub(c0.get(name).copied().unwrap_or(0))))
        .filter(|&(_, ns)| ns > 0)
        .map(|(name, ns)| (name, serde_json::json!(util::round2(ns as f64 / tc.events_recorded.max(1) as f64))))
        .collect();
    let consumer_ns = c1.values().sum::<u64>().saturating_sub(c0.values().sum::<u64>());
    let relayd_ns = r0.zip(r1).map(|(r0, r1)| r1.saturating_sub(r0));
    let mut j = util::thread_summary(load, &rs);
    let o = j.as_object_mut().unwrap();
    let rec = tc.events_recorded.max(1) as f64;
    let extra = serde_json::json!({
        "tracer": "hvtrace",
        "path": match a.writer { WriterKind::Shared => "host_writer", WriterKind::Exclusive => "host_exclusive_writer" },
        "event": kind,
        "mode": a.mode.to_string(),
        "subbuf_size": a.subbuf_size,
        "num_subbuf": a.num_subbuf,
        "consumer": format!("{:?}", a.consumer).to_lowercase(),
        "sink": if a.relayd { "relayd" } else { "local" },
        "live_timer_ms": a.live_timer_ms,
        "consumer_pid": cpid,
        "consumer_exit_ok": exit.is_some_and(|s| s.success()),
        "drained": drained,
        "clock": format!("{:?}", host.clock().source()).to_lowercase(),
        "events_recorded": tc.events_recorded,
        "events_discarded": discarded,
        "events_overwritten": overwritten,
        "lossless": discarded == 0 && tc.events_recorded == emitted && tc.bad_packets == 0,
        "packets": tc.packets,
        "bad_packets": tc.bad_packets,
        "trace_bytes": tc.trace_bytes,
        "content_bytes": tc.content_bytes,
        "metadata_bytes": tc.metadata_bytes,
        "bytes_per_event": util::round2(tc.trace_bytes as f64 / rec),
        "content_bytes_per_event": util::round2(tc.content_bytes as f64 / rec),
        "consumer_cpu_s": consumer_ns as f64 / 1e9,
        "consumer_ns_per_event": util::round2(consumer_ns as f64 / rec),
        "consumer_cpu_s_per_million_events": consumer_ns as f64 / 1e3 / rec,
        // The same by thread: `hvtrace` (main: control, live timer), the
        // workers (`hvtrace-consume`), the relay's sender (`hvtrace-relay`).
        "consumer_ns_per_event_by_thread": by_thread,
        // lttng-relayd's CPU over the same window (all its threads).
        "relayd_cpu_s": relayd_ns.map(|n| n as f64 / 1e9),
        "relayd_ns_per_event": relayd_ns.map(|n| util::round2(n as f64 / rec)),
        "relayd_indexed_packets": relay_indexed,
        "delivered_packets": status.rings.iter().map(|x| x.delivered_subbufs).sum::<u64>(),
        "loadavg": la0,
    });
    o.extend(extra.as_object().unwrap().clone());
    if let Some(mut l) = latencies {
        l.sort_by(|x, y| x.total_cmp(y));
        o.insert(
            "latency".into(),
            serde_json::json!({
                "samples": l.len(),
                "p50_us": util::round2(util::quantile(&l, 0.5) / 1e3),
                "p99_us": util::round2(util::quantile(&l, 0.99) / 1e3),
                "max_us": util::round2(l.last().copied().unwrap_or(f64::NAN) / 1e3),
                "min_us": util::round2(l.first().copied().unwrap_or(f64::NAN) / 1e3),
            }),
        );
    }
    println!("{}", serde_json::to_string(&j)?);
    Ok(())
}
