//! Shared by the host's integration tests: a scratch directory, a host
//! serving a test event set on it, a started session with its rings mapped
//! as a consumer maps them, and a small deterministic PRNG.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hvtrace_consumer::MappedReader;
use hvtrace_core::decode::{records, Value};
use hvtrace_core::{EventDesc, Geometry, Poll};
use hvtrace_ctl::Client;
use hvtrace_host::{Host, HostConfig};
use hvtrace_proto::{ChannelConfig, Mode, Reply, Request};
use hvtrace_sys::SharedMapping;
pub use tempfile::TempDir;

/// A fresh directory `hvtrace-host-<name>-*` under the system temp dir,
/// removed on drop.
pub fn scratch(name: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("hvtrace-host-{name}-")).tempdir().unwrap()
}

/// A host with rings for CPUs 0 and 1 (room for `max_cpus`) serving
/// `events` on `<scratch>/ctl.sock`.
pub fn serve(name: &str, events: &'static [EventDesc], max_cpus: u32) -> (Arc<Host>, PathBuf, TempDir) {
    serve_with(name, events, max_cpus, |_| {})
}

/// [`serve`], with `tune` changing the configuration first.
pub fn serve_with(
    name: &str,
    events: &'static [EventDesc],
    max_cpus: u32,
    tune: impl FnOnce(&mut HostConfig),
) -> (Arc<Host>, PathBuf, TempDir) {
    let dir = scratch(name);
    let sock = dir.path().join("ctl.sock");
    let mut cfg = HostConfig::new(&sock, "test");
    cfg.cpus = vec![0, 1];
    cfg.max_cpus = max_cpus;
    tune(&mut cfg);
    (Host::serve(cfg, events).unwrap(), sock, dir)
}

/// xorshift64*: deterministic, good enough to make garbage.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Up to `max - 1` random bytes.
    pub fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Reads every packet delivered so far by `reader` (releasing each, which
/// must succeed) and hands each record's field values to `f`, in order.
pub fn for_each_record(reader: &MappedReader, events: &[EventDesc], mut f: impl FnMut(&[Value<'_>])) {
    let r = reader.reader();
    let mut buf = vec![0u8; r.geometry().subbuf_size as usize];
    while let Poll::Ready(p) = r.next_packet() {
        r.copy_packet(&p, &mut buf);
        assert!(r.release(&p));
        let (_, recs) = records(&buf, events).unwrap();
        for rec in recs {
            let rec = rec.expect("every delivered record decodes");
            let v: Vec<Value> = rec.values(events).collect();
            f(&v);
        }
    }
}

/// Maps every ring of the live channel read-only, as a consumer does (index
/// = position in the host's map reply).
pub fn map_rings(c: &mut Client, geo: Geometry) -> Vec<MappedReader> {
    let (reply, fds) = c.call(&Request::Map).unwrap();
    let Reply::Mapped(info) = reply else { panic!("{reply:?}") };
    let ctrl = Arc::new(SharedMapping::map_rw(&fds[0], info.ctrl_len as usize).unwrap());
    info.rings
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let data = SharedMapping::map_ro(&fds[2 + 2 * k], r.data_len as usize).unwrap();
            MappedReader::attach(data, ctrl.clone(), r.ctrl_offset, geo.ctrl_len()).unwrap()
        })
        .collect()
}

/// Connects to the host at `sock`, creates a channel of 4 KiB x 4
/// sub-buffers in discard mode, maps its rings and starts it.
pub fn started_session(sock: &Path) -> (Client, Vec<MappedReader>) {
    let mut c = Client::connect(sock, Some(Duration::from_secs(20))).unwrap();
    c.simple(&Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard })).unwrap();
    let readers = map_rings(&mut c, Geometry::new(4096, 4).unwrap());
    c.simple(&Request::Start).unwrap();
    (c, readers)
}
