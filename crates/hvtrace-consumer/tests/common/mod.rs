//! Shared by the consumer's integration tests: an in-process host, writer
//! threads that count what they emit, and a checker that decodes every
//! packet of a trace directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hvtrace_core::decode::{packet_info, records, PacketInfo, Value};
use hvtrace_core::{EventSet, RecordError};
use hvtrace_ctl::Client;
use hvtrace_host::{Host, HostConfig};
use hvtrace_proto::{ChannelConfig, Request};

hvtrace_core::events! {
    /// Test events.
    pub mod ev ("test") {
        /// A record naming its writer and its sequence number.
        fn tick(writer: u32, n: u64, note: &str);
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("hvtrace-consumer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An in-process host with rings for `cpus`, room for `max_cpus`.
pub fn host(dir: &Path, cpus: &[u32], max_cpus: u32) -> (Arc<Host>, PathBuf) {
    let sock = dir.join("ctl.sock");
    let mut cfg = HostConfig::new(&sock, "test");
    cfg.cpus = cpus.to_vec();
    cfg.max_cpus = max_cpus;
    (Host::serve(cfg, ev::Events::EVENTS).unwrap(), sock)
}

pub fn client(sock: &Path) -> Client {
    Client::connect(sock, Some(Duration::from_secs(20))).unwrap()
}

/// Creates and starts a channel.
pub fn create_and_start(sock: &Path, cfg: ChannelConfig) -> Client {
    let mut c = client(sock);
    c.simple(&Request::Create(cfg)).unwrap();
    c.simple(&Request::Start).unwrap();
    c
}

/// Waits until the host holds no consumer reference (one that gave up
/// has dropped its own).
pub fn wait_refcount_zero(c: &mut Client) {
    let t = std::time::Instant::now();
    while c.status().unwrap().refcount != 0 {
        assert!(t.elapsed() < Duration::from_secs(3), "the failed consumer's reference was not dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where a child host (this test binary re-executed) serves: the child
/// process sees its socket path in this variable.
pub const CHILD_HOST_SOCKET: &str = "HVTRACE_CONSUMER_TEST_HOST_SOCKET";

/// In a child process (a test that returns at once unless
/// [`CHILD_HOST_SOCKET`] is set): serves a host with rings for `cpus`, one
/// writer thread each, and records until killed.
pub fn serve_child_host(cpus: &[u32]) {
    let Ok(sock) = std::env::var(CHILD_HOST_SOCKET) else { return };
    let mut cfg = HostConfig::new(&sock, "test");
    cfg.cpus = cpus.to_vec();
    cfg.max_cpus = cpus.iter().max().map_or(1, |m| m + 1);
    let host = Host::serve(cfg, ev::Events::EVENTS).unwrap();
    let hs: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let host = host.clone();
            std::thread::spawn(move || {
                let w = host.writer_for_cpu(cpu);
                let mut n = 0u64;
                loop {
                    let _ = ev::tick(&w, cpu, n, "from the child host");
                    n += 1;
                    if n.is_multiple_of(64) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

/// Starts this test binary's test `test` (which calls [`serve_child_host`])
/// as a child host serving `sock`; returns once the socket exists.
pub fn spawn_child_host(test: &str, sock: &Path) -> std::process::Child {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_HOST_SOCKET, sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "the child host did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// What one writer did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Emitted {
    pub cpu: u32,
    pub ok: u64,
    /// Lost and counted by the ring (full / busy / too big).
    pub lost: u64,
}

impl Emitted {
    pub fn emitted(&self) -> u64 {
        self.ok + self.lost
    }
}

/// Records `n` events on `cpu`'s ring as writer `writer`, yielding now and
/// then so the consumer runs too.
pub fn write_events(host: &Host, writer: u32, cpu: u32, n: u64) -> Emitted {
    let w = host.writer_for_cpu(cpu);
    let mut e = Emitted { cpu, ..Default::default() };
    for i in 0..n {
        let note = if i % 7 == 0 { "a longer note to vary the record size" } else { "x" };
        match ev::tick(&w, writer, i, note) {
            Ok(()) => e.ok += 1,
            Err(RecordError::Closed) => panic!("ring of CPU {cpu} closed while writing"),
            Err(_) => e.lost += 1,
        }
        if i % 512 == 0 {
            std::thread::yield_now();
        }
    }
    e
}

/// Runs one [`write_events`] thread per `(writer, cpu)` pair, `n` events
/// each, and returns what each emitted, in `plan`'s order.
pub fn write_concurrently(host: &Host, plan: &[(u32, u32)], n: u64) -> Vec<Emitted> {
    std::thread::scope(|s| {
        let hs: Vec<_> = plan.iter().map(|&(w, cpu)| s.spawn(move || write_events(host, w, cpu, n))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// What a stream file holds.
#[derive(Debug, Default)]
pub struct StreamCheck {
    pub packets: Vec<PacketInfo>,
    pub records: u64,
    /// Per writer, the sequence numbers found (stream order).
    pub per_writer: std::collections::BTreeMap<u32, Vec<u64>>,
    /// Records whose timestamp is before the previous record's.
    pub backwards: u64,
}

/// Decodes every packet and record of a stream file; panics on anything
/// malformed or out of order.
pub fn check_stream(path: &Path, cpu: u32) -> StreamCheck {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema = ev::Events::EVENTS;
    let mut out = StreamCheck::default();
    let mut at = 0;
    let mut last_ts = 0;
    while at < data.len() {
        let info = packet_info(&data[at..]).unwrap_or_else(|e| panic!("{} at {at}: {e}", path.display()));
        assert_eq!((info.cpu_id, info.stream_instance_id), (cpu, u64::from(cpu)));
        if let Some(prev) = out.packets.last() {
            assert!(info.seq > prev.seq, "packet seq must increase");
            assert!(info.events_discarded >= prev.events_discarded);
        }
        let (_, recs) = records(&data[at..at + info.packet_len], schema).unwrap();
        for r in recs {
            let r = r.unwrap_or_else(|e| panic!("{} packet at {at}: {e}", path.display()));
            // Timestamp order is the producer's business (not checked
            // here): two writer threads on one ring from different CPUs can
            // step back by a little TSC skew, which a compact header turns
            // into a jump of 2^27 ticks. Counted and printed.
            if r.timestamp < last_ts {
                out.backwards += 1;
                eprintln!(
                    "{}: timestamp goes back at packet seq {} record +{}: {} < {} ({})",
                    path.display(),
                    info.seq,
                    r.offset,
                    r.timestamp,
                    last_ts,
                    if r.compact { "compact" } else { "extended" }
                );
            }
            last_ts = r.timestamp;
            let v: Vec<Value> = r.values(schema).collect();
            let [Value::U(w), Value::U(n), Value::Str(_)] = v[..] else { panic!("bad fields {v:?}") };
            out.per_writer.entry(w as u32).or_default().push(n);
            out.records += 1;
        }
        at += info.packet_len;
        out.packets.push(info);
    }
    assert_eq!(at, data.len(), "the file ends with a whole packet");
    for seqs in out.per_writer.values() {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "a writer's records stay in order");
    }
    out
}

/// `/proc/self/maps` lines of hvtrace data memfds.
pub fn data_maps() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("hvtrace-data"))
        .map(str::to_string)
        .collect()
}

/// Permission field (`r--s`, `rw-s`) of a maps line.
pub fn perms(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap()
}

/// Voluntary context switches of this process's threads whose name starts
/// with `prefix` (`/proc/self/task/*/comm`).
pub fn thread_switches(prefix: &str) -> (usize, u64) {
    let mut threads = 0;
    let mut total = 0;
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = e.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else { continue };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else { continue };
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap();
        threads += 1;
        total += v;
    }
    (threads, total)
}
