//! `hvtrace-bench relay-replay`: what lttng-relayd alone can ingest here.
//! Packets already recorded (a trace directory, e.g. from `hvtrace-bench
//! host --keep DIR`) are loaded into memory and sent to a fresh local
//! lttng-relayd as fast as the client allows, through the consumer's relay
//! client (`hvtrace-relayd`) and index builder: no host, no producer, no
//! ring. The relay's CPU per event is its ingest cost; the events per second
//! with a free sender, its ceiling on this machine (the sender's own CPU,
//! which includes the loopback's receive path, is reported beside it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use hvtrace_core::decode::{packet_info, PacketInfo};
use hvtrace_relayd::{LocalRelayd, Relayd, SessionParams};

use crate::host::temp_dir;
use crate::util;

/// Arguments of `hvtrace-bench relay-replay`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Trace directory to replay (stream files `CHANNEL_CPU` and `metadata`).
    #[arg(long)]
    trace: PathBuf,
    /// Channel name of the stream files.
    #[arg(long, default_value = "hvbench")]
    channel: String,
    /// Sends the whole trace this many times (one session; the relay numbers
    /// packets itself, so repeated packets are stored like new ones).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Where lttng-relayd writes (default: a temporary directory under
    /// `TMPDIR`); give a tmpfs path to take the disk out.
    #[arg(long)]
    relay_output: Option<PathBuf>,
    /// Paces the sending at this many events per second over all streams
    /// (0: as fast as the relay takes them), to compare the sender's CPU
    /// with the consumer's at the same rate.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

/// One packet of the replayed trace.
struct Packet {
    stream: usize,
    at: usize,
    info: PacketInfo,
}

/// Session name of replay runs.
const SESSION: &str = "hvtrace-replay";

pub(crate) fn run(a: Args) -> Result<()> {
    ensure!(a.repeat > 0, "--repeat must be at least 1");
    let metadata = std::fs::read_to_string(a.trace.join("metadata"))
        .with_context(|| format!("reading {}/metadata", a.trace.display()))?;
    // Stream files in CPU order, whole in memory: the sender reads nothing.
    let mut files: Vec<(u32, Vec<u8>)> = Vec::new();
    for e in std::fs::read_dir(&a.trace)? {
        let e = e?;
        let Some(cpu) = util::stream_cpu(&e.file_name().to_string_lossy(), &a.channel) else { continue };
        files.push((cpu, std::fs::read(e.path())?));
    }
    files.sort_by_key(|f| f.0);
    // Counted from the bytes loaded, not read again.
    let mut count = util::TraceCount::default();
    files.iter().for_each(|(_, bytes)| count.count_stream(bytes));
    ensure!(count.bad_packets == 0, "{}: {} bad packets", a.trace.display(), count.bad_packets);
    // Packets interleaved across streams, as the consumer's workers queue them.
    let mut per_stream: Vec<Vec<Packet>> = Vec::new();
    for (i, (_, bytes)) in files.iter().enumerate() {
        let mut v = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let info = packet_info(&bytes[at..]).map_err(|e| anyhow::anyhow!("stream {i}: {e}"))?;
            v.push(Packet { stream: i, at, info });
            at += info.packet_len;
        }
        per_stream.push(v);
    }
    let longest = per_stream.iter().map(Vec::len).max().unwrap_or(0);
    let order: Vec<&Packet> = (0..longest).flat_map(|k| per_stream.iter().filter_map(move |s| s.get(k))).collect();
    if order.is_empty() {
        bail!("{}: no packets of channel {}", a.trace.display(), a.channel);
    }
    let bytes_once: u64 = order.iter().map(|p| p.info.packet_len as u64).sum();

    let tmp = temp_dir("replay")?;
    let out =
        a.relay_output.clone().map_or_else(|| tmp.path().join("relay"), |p| p.join(format!("{}", std::process::id())));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let relay = LocalRelayd::spawn(&out)?.context("lttng-relayd is not installed")?;
    let hostname = hvtrace_sys::hostname();
    let params = SessionParams {
        session: SESSION.into(),
        hostname: hostname.clone(),
        live_timer_us: hvtrace_relayd::DEFAULT_LIVE_TIMER_US,
        pathname: format!("{hostname}/{SESSION}"),
    };
    let mut conn = Relayd::connect(&relay.url, &params, Duration::from_secs(30))?;
    conn.send_metadata(&metadata)?;
    let mut streams =
        files.iter().map(|(cpu, _)| conn.add_stream(&format!("{}_{cpu}", a.channel))).collect::<Result<Vec<_>, _>>()?;
    conn.streams_sent()?;
    let index_dir = relay.trace_dir(&hostname, SESSION).join("index");
    let packets = order.len() as u64 * u64::from(a.repeat);
    let events = count.events_recorded * u64::from(a.repeat);

    let la0 = util::loadavg();
    let (t0, s0, r0) = (util::now_ns(), util::thread_cpu_ns(), util::schedstat_ns(relay.pid()));
    let events_per_byte = count.events_recorded as f64 / bytes_once as f64;
    let mut sent_bytes = 0u64;
    for _ in 0..a.repeat {
        for p in &order {
            if a.rate > 0.0 {
                // A packet goes once the events before it are due.
                let due = t0 + (sent_bytes as f64 * events_per_byte / a.rate * 1e9) as u64;
                let now = util::now_ns();
                if due > now {
                    std::thread::sleep(Duration::from_nanos(due - now));
                }
                sent_bytes += p.info.packet_len as u64;
            }
            let bytes = &files[p.stream].1[p.at..p.at + p.info.packet_len];
            conn.send_packet(&mut streams[p.stream], bytes, &hvtrace_consumer::relay_index_of(&p.info))?;
        }
    }
    conn.read_acks(0)?;
    let (t_sent, s1) = (util::now_ns(), util::thread_cpu_ns());
    // An index entry is written once both halves of a packet are in: the
    // relay has stored everything when every entry is there.
    let done = util::wait_for(Duration::from_secs(60), Duration::from_micros(500), || {
        Ok(util::relay_index_entries(&index_dir) >= packets)
    })?;
    let (t1, r1) = (util::now_ns(), util::schedstat_ns(relay.pid()));
    let indexed = util::relay_index_entries(&index_dir);
    for s in streams {
        conn.close_stream(s)?;
    }
    conn.close()?;
    let stored: u64 = std::fs::read_dir(relay.trace_dir(&hostname, SESSION))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{}_", a.channel)))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let wall = (t1 - t0) as f64;
    let ev = events.max(1) as f64;
    let j = serde_json::json!({
        "trace": a.trace,
        "relay_output": out,
        "repeat": a.repeat,
        "rate": a.rate,
        "streams": files.len(),
        "packets": packets,
        "events": events,
        "bytes": bytes_once * u64::from(a.repeat),
        "relay_indexed_packets": indexed,
        "relay_stored_bytes": stored,
        "complete": done && indexed == packets && stored == bytes_once * u64::from(a.repeat),
        "wall_s": wall / 1e9,
        "send_s": (t_sent - t0) as f64 / 1e9,
        "events_per_s": (ev / (wall / 1e9)).round(),
        "mib_per_s": util::round2((bytes_once * u64::from(a.repeat)) as f64 / (1 << 20) as f64 / (wall / 1e9)),
        // The sending thread, loopback receive path included (it runs in the sender's context).
        "sender_ns_per_event": util::round2((s1 - s0) as f64 / ev),
        "relayd_ns_per_event": util::round2(r1.saturating_sub(r0) as f64 / ev),
        "relayd_cpus": util::round2(r1.saturating_sub(r0) as f64 / wall),
        "loadavg": la0,
    });
    println!("{}", serde_json::to_string(&j)?);
    if a.relay_output.is_some() {
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_file(out.with_extension("log"));
    }
    Ok(())
}
