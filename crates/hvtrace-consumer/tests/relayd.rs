//! Streaming to a real `lttng-relayd` on loopback (free ports, its own
//! output directory): the relay's trace against the local one and against
//! babeltrace2, a live viewer past a silent CPU, CPU hotplug, and the faults
//! (relay absent, killed, stalled). Every test prints `SKIP:` and returns
//! when lttng-relayd (or, for its part, babeltrace2) is not installed.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ConsumerError, ExitReason, RelayConfig, Report};
use hvtrace_ctl::Client;
use hvtrace_host::Host;
use hvtrace_proto::{ChannelConfig, Mode, Request};
use hvtrace_relayd::{LocalRelayd, RelaydUrl};

const HOST: &str = "testhost";

fn relayd(dir: &Path) -> Option<LocalRelayd> {
    match LocalRelayd::spawn(&dir.join("relay")).unwrap() {
        Some(r) => Some(r),
        None => {
            println!("SKIP: lttng-relayd is not installed (Debian: lttng-tools)");
            None
        }
    }
}

fn relay_cfg(url: RelaydUrl, session: &str) -> RelayConfig {
    RelayConfig {
        session: session.into(),
        hostname: HOST.into(),
        live_timer: Duration::from_millis(100),
        ..RelayConfig::new(url)
    }
}

/// A relay, and a host with rings for CPUs 0 and 1 (room for `max_cpus`)
/// whose channel `ch` is created and started; `None` after a SKIP line.
fn relay_and_host(name: &str, max_cpus: u32, ch: ChannelConfig) -> Option<(TempDir, LocalRelayd, Arc<Host>, Client)> {
    let dir = TempDir::new(name);
    let relay = relayd(&dir.0)?;
    let (host, sock) = host(&dir.0, &[0, 1], max_cpus);
    let ctl = create_and_start(&sock, ch);
    Some((dir, relay, host, ctl))
}

/// The consumer of [`relay_and_host`]'s channel, writing a local trace to
/// `DIR/local` and streaming to session `session`, with no live ticks (so no
/// empty packets for idle streams): the two traces compare byte for byte.
fn local_and_relay(dir: &TempDir, relay: &LocalRelayd, session: &str) -> ConsumerConfig {
    let mut rc = relay_cfg(relay.url.clone(), session);
    rc.live_timer = Duration::from_secs(3600);
    ConsumerConfig { relay: Some(rc), ..ConsumerConfig::new(dir.0.join("ctl.sock"), dir.0.join("local")) }
}

fn run_in_thread(consumer: Consumer) -> std::thread::JoinHandle<Result<Report, ConsumerError>> {
    std::thread::spawn(move || consumer.run())
}

/// babeltrace2's view of a trace: (events, discarded events it reports);
/// `None` after a SKIP line when it is not installed.
fn babeltrace2(dir: &Path) -> Option<(u64, u64)> {
    let o = match Command::new("babeltrace2").arg(dir).output() {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP: babeltrace2 ({e}); {} not read with it", dir.display());
            return None;
        }
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "babeltrace2 {}: {err}", dir.display());
    let events = o.stdout.iter().filter(|&&b| b == b'\n').count() as u64;
    let discarded = err
        .lines()
        .filter_map(|l| l.split("Tracer discarded ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();
    Some((events, discarded))
}

#[test]
fn the_relay_gets_the_local_trace_byte_for_byte_hotplugged_cpu_included() {
    // Tiny sub-buffers, and CPU 0 records before any consumer drains them:
    // losses to count, however fast the consumer is on this machine.
    let ch = ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard };
    let Some((dir, relay, host, mut ctl)) = relay_and_host("relay-both", 4, ch) else { return };
    let early = write_events(&host, 0, 0, 5_000);
    assert!(early.lost > 0, "16 KiB of ring cannot hold 5,000 records: {early:?}");
    let mut cfg = local_and_relay(&dir, &relay, "both");
    cfg.threads = 2;
    cfg.relay.as_mut().unwrap().queue = 1 << 30; // room for every packet: this test wants no miss
    let out = cfg.output.clone().unwrap();
    let run = run_in_thread(Consumer::attach(&cfg).unwrap());
    let host = &*host;
    std::thread::scope(|s| {
        let a = s.spawn(|| write_events(host, 0, 0, 20_000));
        let b = s.spawn(|| write_events(host, 1, 1, 20_000));
        host.add_cpu(3).unwrap();
        let c = s.spawn(|| write_events(host, 3, 3, 10_000));
        for h in [a, b, c] {
            h.join().unwrap();
        }
    });
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    assert_eq!(report.exit, ExitReason::Destroyed);
    let r = report.relay.as_ref().unwrap();
    assert_eq!((r.missed_packets(), &r.error), (0, &None), "{r:?}");
    assert!(report.events_discarded() > 0, "the test wants losses to count");
    let remote = relay.trace_dir(HOST, "both");
    assert_eq!(std::fs::read(remote.join("metadata")).unwrap(), std::fs::read(out.join("metadata")).unwrap());
    for ring in &report.per_ring {
        let name = ring.file.file_name().unwrap();
        let (here, there) = (std::fs::read(&ring.file).unwrap(), std::fs::read(remote.join(name)).unwrap());
        assert!(here == there, "CPU {}: {} bytes here, {} on the relay", ring.cpu, here.len(), there.len());
        let s = r.per_stream.iter().find(|s| s.cpu == ring.cpu).unwrap();
        assert_eq!((s.packets, s.trailer), (ring.packets + u64::from(ring.trailer), ring.trailer));
        // The relay wrote an index entry per packet (16-byte header, 72-byte entries).
        let idx = std::fs::metadata(remote.join("index").join(format!("{}.idx", name.to_string_lossy()))).unwrap();
        assert_eq!(idx.len(), 16 + 72 * s.packets, "CPU {}", ring.cpu);
    }
    assert!(remote.join(format!("{}_3", report.channel)).exists(), "the hotplugged CPU reached the relay");
    if let (Some(local), Some(there)) = (babeltrace2(&out), babeltrace2(&remote)) {
        assert_eq!(local, there);
        assert_eq!(there.1, report.events_discarded(), "babeltrace2 reports every loss the rings counted");
    }
}

/// Issue 16: classes the host registers while the consumer streams reach
/// the relay's metadata stream before the packets that use them; the
/// relay's `metadata` equals the local one, a class registered after the
/// last packet included, and babeltrace2 decodes the relay's trace.
#[test]
fn classes_registered_mid_session_reach_the_relay_trace() {
    use hvtrace_core::{Field, Sink};
    let ch = ChannelConfig { subbuf_size: 4096, num_subbuf: 8, mode: Mode::Discard };
    let Some((dir, relay, host, mut ctl)) = relay_and_host("relay-classes", 2, ch) else { return };
    let cfg = local_and_relay(&dir, &relay, "classes");
    let out = cfg.output.clone().unwrap();
    let run = run_in_thread(Consumer::attach(&cfg).unwrap());
    let mut recorded = 0;
    let remote = relay.trace_dir(HOST, "classes");
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    for round in 0..3u32 {
        let id = host.register_event(&format!("hotplug{round}"), &[("slot", <u32 as Field>::KIND)]).unwrap();
        let w = host.writer_for_cpu(round % 2);
        for slot in 0..50u32 {
            w.record(id, 4, |e| slot.encode(e)).unwrap();
            recorded += 1;
        }
        // Once the relay stored the packet, it had the class before it.
        let stream = remote.join(format!("channel0_{}", round % 2));
        let before = size(&stream);
        ctl.simple(&Request::Flush).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while size(&stream) == before {
            assert!(Instant::now() < deadline, "round {round}: no packet reached the relay");
            std::thread::sleep(Duration::from_millis(5));
        }
        let md = std::fs::read_to_string(remote.join("metadata")).unwrap();
        assert!(md.contains(&format!("name = \"hotplug{round}\";")), "round {round}: class after its packet");
    }
    host.register_event("after_the_last_packet", &[]).unwrap();
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    let r = report.relay.as_ref().unwrap();
    assert_eq!((r.missed_packets(), &r.error), (0, &None), "{r:?}");
    let local_md = std::fs::read_to_string(out.join("metadata")).unwrap();
    assert!(local_md.contains("name = \"after_the_last_packet\";"), "{local_md}");
    assert_eq!(std::fs::read_to_string(remote.join("metadata")).unwrap(), local_md);
    if let (Some(local), Some(there)) = (babeltrace2(&out), babeltrace2(&remote)) {
        assert_eq!(local, there);
        assert_eq!(there, (recorded, 0), "every record decoded from the relay's trace");
    }
}

/// A live viewer attached before any event reads events while the session
/// runs, although CPU 1 never records one (beacons), sees the session end,
/// and has then read every event recorded. Content, not timing: the
/// deadlines only bound a hang.
#[test]
fn a_live_viewer_moves_past_a_silent_cpu_and_reads_every_event() {
    let dir = TempDir::new("relay-live");
    let Some(relay) = relayd(&dir.0) else { return };
    if Command::new("babeltrace2").arg("--version").output().is_err() {
        println!("SKIP: babeltrace2 is not installed: no live viewer");
        return;
    }
    let (host, sock) = host(&dir.0, &[0, 1], 2);
    let mut ctl = client(&sock);
    ctl.simple(&Request::Create(ChannelConfig { subbuf_size: 64 * 1024, num_subbuf: 4, mode: Mode::Discard })).unwrap();
    // The relay is the only sink. The streams stay open 3 s after the last
    // packet: time for a viewer on a loaded machine to read to the end.
    let mut rc = relay_cfg(relay.url.clone(), "live");
    rc.linger = Some(Duration::from_secs(3));
    let cfg = ConsumerConfig { output: None, relay: Some(rc), ..ConsumerConfig::new(&sock, "") };
    let run = run_in_thread(Consumer::attach(&cfg).unwrap());
    // A viewer asks for the session once; it must exist by then.
    relay.wait_for_session("live", Duration::from_secs(60)).unwrap();
    let mut viewer = Command::new("babeltrace2")
        .arg(relay.live_url(HOST, "live"))
        .arg("--params=session-not-found-action=\"end\"")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.0.join("viewer.stderr")).unwrap())
        .spawn()
        .unwrap();
    let viewer_err = || std::fs::read_to_string(dir.0.join("viewer.stderr")).unwrap_or_default();
    let seen = Arc::new(AtomicU64::new(0));
    let out = viewer.stdout.take().unwrap();
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let l = l.unwrap();
                if l.contains("tick") {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Attached before start: a viewer starts at the last index it finds
    // (babeltrace2 seeks to the end), so it would skip earlier packets.
    relay.wait_for_viewer("live", Duration::from_secs(60)).unwrap();
    ctl.simple(&Request::Start).unwrap();
    // A few events at a time, on CPU 0 only: far less than a sub-buffer,
    // so only the live timer's flushes deliver them.
    let mut written = 0;
    let t = Instant::now();
    while seen.load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(60) {
        written += write_events(&host, 0, 0, 10).ok;
        std::thread::sleep(Duration::from_millis(20));
    }
    let live = seen.load(Ordering::Relaxed);
    println!("the viewer read {live} events {:?} after start, while the session ran", t.elapsed());
    // More after the viewer's first read: they reach it only through the
    // final flush, and the close must not cut them off.
    written += write_events(&host, 0, 0, 10).ok;
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    assert!(live > 0, "the live viewer read nothing in 60 s while CPU 1 was silent: {}", viewer_err());
    assert_eq!(report.events_discarded(), 0, "{report}");
    let r = report.relay.as_ref().unwrap();
    let cpu1 = r.per_stream.iter().find(|s| s.cpu == 1).unwrap();
    assert!(cpu1.beacons > 0 && cpu1.packets == 0, "{cpu1:?}");
    // The viewer sees the end (streams closed) and exits by itself.
    let t = Instant::now();
    let status = loop {
        if let Some(st) = viewer.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the viewer did not see the session end: {}", viewer_err());
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    assert!(status.success(), "babeltrace2: {status}: {}", viewer_err());
    let total = seen.load(Ordering::Relaxed);
    assert_eq!(babeltrace2(&relay.trace_dir(HOST, "live")).map(|c| c.0), Some(written), "the relay has them all");
    assert_eq!(total, written, "the live viewer read every event recorded: {}", viewer_err());
}

/// What every fault test checks of the local trace: every event written is
/// there, or counted as discarded by the ring.
fn local_trace_is_whole(report: &Report, emitted: &[Emitted]) {
    for r in &report.per_ring {
        let s = check_stream(&r.file, r.cpu);
        let want: u64 = emitted.iter().filter(|e| e.cpu == r.cpu).map(Emitted::emitted).sum();
        assert_eq!(s.records + r.counters.discarded, want, "CPU {}", r.cpu);
        assert_eq!(r.lost_packets, 0);
    }
}

fn write_some(host: &hvtrace_host::Host, rounds: u32, mut between: impl FnMut(u32)) -> Vec<Emitted> {
    let mut all = Vec::new();
    for i in 0..rounds {
        // A writer per round and CPU: each numbers its events from 0.
        all.push(write_events(host, 2 * i, 0, 2_000));
        all.push(write_events(host, 2 * i + 1, 1, 2_000));
        between(i);
        std::thread::sleep(Duration::from_millis(20));
    }
    all
}

#[test]
fn a_relay_killed_mid_session_costs_the_local_trace_nothing() {
    let dir = TempDir::new("relay-killed");
    let Some(mut relay) = relayd(&dir.0) else { return };
    let (host, sock) = host(&dir.0, &[0, 1], 2);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 16 * 1024, num_subbuf: 8, mode: Mode::Discard });
    let out = dir.0.join("local");
    let cfg =
        ConsumerConfig { relay: Some(relay_cfg(relay.url.clone(), "killed")), ..ConsumerConfig::new(&sock, &out) };
    let run = run_in_thread(Consumer::attach(&cfg).unwrap());
    let emitted = write_some(&host, 20, |i| {
        if i == 5 {
            relay.kill();
        }
    });
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    assert_eq!(report.exit, ExitReason::Destroyed, "recording went on locally");
    local_trace_is_whole(&report, &emitted);
    let r = report.relay.unwrap();
    let err = r.error.clone().expect("the relay's failure is reported");
    assert!(err.contains("went away") || err.contains("failed"), "{err}");
    assert!(r.packets() > 0 && r.missed_packets() > 0, "{r:?}");
    let local_packets: u64 = report.per_ring.iter().map(|p| p.packets + u64::from(p.trailer)).sum();
    assert_eq!(r.packets() + r.missed_packets(), local_packets, "every packet is relayed or counted as missed");
}

#[test]
fn a_stalled_relay_never_holds_the_local_sink_back() {
    let dir = TempDir::new("relay-stalled");
    let Some(relay) = relayd(&dir.0) else { return };
    let (host, sock) = host(&dir.0, &[0, 1], 2);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 16 * 1024, num_subbuf: 8, mode: Mode::Discard });
    let out = dir.0.join("local");
    let mut rc = relay_cfg(relay.url.clone(), "stalled");
    rc.queue = 4 * 16 * 1024; // four sub-buffers
    rc.timeout = Duration::from_secs(2);
    let cfg = ConsumerConfig { relay: Some(rc), ..ConsumerConfig::new(&sock, &out) };
    let run = run_in_thread(Consumer::attach(&cfg).unwrap());
    let emitted = write_some(&host, 40, |i| {
        if i == 3 {
            hvtrace_sys::proc::pause(relay.pid()).unwrap();
        }
    });
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    hvtrace_sys::proc::resume(relay.pid()).unwrap();
    println!("{report}");
    // The rings lost nothing: the local sink kept draining them while the
    // relay stalled.
    assert_eq!(report.events_discarded(), 0, "{report}");
    local_trace_is_whole(&report, &emitted);
    let r = report.relay.unwrap();
    assert!(r.missed_packets() > 0, "{r:?}");
    let local_packets: u64 = report.per_ring.iter().map(|p| p.packets + u64::from(p.trailer)).sum();
    assert_eq!(r.packets() + r.missed_packets(), local_packets, "every packet is relayed or counted as missed");
    assert!(r.error.unwrap().contains("in time"), "a stall is reported as one");
}

#[test]
fn no_relay_is_an_error_only_when_it_is_the_only_sink() {
    let dir = TempDir::new("relay-absent");
    let (host, sock) = host(&dir.0, &[0], 1);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard });
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url: RelaydUrl = format!("net://127.0.0.1:{port}:{port}").parse().unwrap();
    let only = ConsumerConfig {
        output: None,
        relay: Some(relay_cfg(url.clone(), "absent")),
        ..ConsumerConfig::new(&sock, "")
    };
    let e = Consumer::attach(&only).unwrap_err();
    assert!(matches!(e, ConsumerError::Relay { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("cannot connect") && msg.contains(&port.to_string()), "{msg}");

    let out = dir.0.join("local");
    let cfg = ConsumerConfig { relay: Some(relay_cfg(url, "absent")), ..ConsumerConfig::new(&sock, &out) };
    let run = run_in_thread(Consumer::attach(&cfg).unwrap());
    let e = write_events(&host, 0, 0, 5_000);
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    local_trace_is_whole(&report, &[e]);
    let r = report.relay.unwrap();
    assert!(r.error.as_ref().unwrap().contains("cannot connect"));
    assert_eq!(r.packets(), 0);
    assert_eq!(r.missed_packets(), report.per_ring[0].packets + u64::from(report.per_ring[0].trailer));
}

#[test]
fn a_relay_that_goes_away_ends_a_relay_only_session() {
    let dir = TempDir::new("relay-only-gone");
    let Some(mut relay) = relayd(&dir.0) else { return };
    let (host, sock) = host(&dir.0, &[0], 1);
    let _ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 16 * 1024, num_subbuf: 8, mode: Mode::Discard });
    let cfg = ConsumerConfig {
        output: None,
        relay: Some(relay_cfg(relay.url.clone(), "gone")),
        ..ConsumerConfig::new(&sock, "")
    };
    let run = run_in_thread(Consumer::attach(&cfg).unwrap());
    write_events(&host, 0, 0, 5_000);
    // Kill it only once it indexed two packets: killed during the
    // session's set-up (a loaded machine) it would test a refusal, not a
    // relay gone, and a stream file holding bytes is not enough (the kill
    // can still fall before the first SEND_INDEX reply); the relay answers
    // an index once it has both halves of its packet, so two index entries
    // mean the first packet's reply was sent.
    let index = relay.trace_dir(HOST, "gone").join("index").join("channel0_0.idx");
    let t = Instant::now();
    while std::fs::metadata(&index).map_or(0, |m| m.len()) < 16 + 2 * 72 {
        assert!(t.elapsed() < Duration::from_secs(20), "the relay indexed < 2 packets: {}", relay.log_text());
        write_events(&host, 0, 0, 1_000);
        std::thread::sleep(Duration::from_millis(20));
    }
    relay.kill();
    // The next live tick (100 ms) notices; writing more makes sure.
    let t = Instant::now();
    while !run.is_finished() {
        assert!(t.elapsed() < Duration::from_secs(20), "the consumer did not notice the relay went away");
        write_events(&host, 0, 0, 1_000);
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    assert_eq!(report.exit, ExitReason::RelayGone);
    let r = report.relay.unwrap();
    assert!(r.error.is_some() && r.packets() > 0, "{r:?}");
}

/// Relay only, both ring modes: workers copy each packet before they
/// release it, so a packet the producer takes back while it is read is
/// counted torn and never relayed. The relay's trace decodes whole and
/// accounts for every event emitted (recorded, or counted lost by the ring).
#[test]
fn relay_only_streams_whole_packets_in_both_modes() {
    for mode in [Mode::Discard, Mode::Overwrite] {
        let ch = ChannelConfig { subbuf_size: 4096, num_subbuf: 2, mode };
        let name = format!("relay-only-{mode}");
        let Some((dir, relay, host, mut ctl)) = relay_and_host(&name, 2, ch) else { return };
        let mut rc = relay_cfg(relay.url.clone(), &name);
        rc.live_timer = Duration::from_secs(3600); // no empty packets for idle streams
        let cfg = ConsumerConfig { output: None, relay: Some(rc), ..ConsumerConfig::new(dir.0.join("ctl.sock"), "") };
        let run = run_in_thread(Consumer::attach(&cfg).unwrap());
        let host = &*host;
        // Three writers on a ring of two 4 KiB sub-buffers: the producers lap
        // the consumer (overwrite) or fill the ring (discard) all the time.
        let emitted: Vec<Emitted> = write_concurrently(host, &[(0, 0), (1, 0), (2, 1)], 50_000);
        ctl.simple(&Request::Stop).unwrap();
        ctl.simple(&Request::Destroy).unwrap();
        let report = run.join().unwrap().unwrap();
        println!("{mode}: {report}");
        assert_eq!(report.exit, ExitReason::Destroyed, "{mode}");
        let r = report.relay.as_ref().unwrap();
        assert_eq!((r.missed_packets(), &r.error), (0, &None), "{mode}: {r:?}");
        let remote = relay.trace_dir(HOST, &name);
        for ring in &report.per_ring {
            assert_eq!(ring.lost_packets, 0, "{mode}: {ring:?}");
            let s = check_stream(&remote.join(format!("{}_{}", report.channel, ring.cpu)), ring.cpu);
            let want: u64 = emitted.iter().filter(|e| e.cpu == ring.cpu).map(Emitted::emitted).sum();
            assert_eq!(s.records + ring.counters.discarded, want, "{mode}: CPU {}: {ring:?}", ring.cpu);
            let sent = r.per_stream.iter().find(|x| x.cpu == ring.cpu).unwrap();
            assert_eq!(sent.packets, ring.packets + u64::from(ring.trailer), "{mode}: CPU {}", ring.cpu);
            assert_eq!(s.packets.len() as u64, sent.packets, "{mode}: CPU {}", ring.cpu);
            if mode == Mode::Discard {
                assert_eq!(ring.torn, 0, "discard mode: nothing takes a packet back");
            }
        }
    }
}
