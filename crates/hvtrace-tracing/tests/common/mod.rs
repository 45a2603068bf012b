//! Shared by the layer's tests: an in-process host with a started channel,
//! a consumer attached when the test says so, and two independent readers
//! of the trace it writes (hvtrace-reader, and babeltrace2 through its
//! Python bindings).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hvtrace_consumer::{Consumer, ConsumerConfig, ConsumerError, Report};
use hvtrace_core::decode::Value;
use hvtrace_ctl::Client;
use hvtrace_host::{Host, HostConfig};
use hvtrace_proto::{ChannelConfig, Mode, Request};
use hvtrace_reader::{packets, TraceDir};
use hvtrace_tracing::{Counters, HvtraceLayer};

/// A host serving a started channel (64 KiB × 8 sub-buffers per CPU, room
/// for the largest record the layer makes), and its trace directory.
pub struct Session {
    pub dir: tempfile::TempDir,
    pub host: Arc<Host>,
    ctl: Client,
    sock: PathBuf,
    consumer: Option<JoinHandle<Result<Report, ConsumerError>>>,
}

impl Session {
    pub fn start() -> Session {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl.sock");
        let host = Host::serve(HostConfig::new(&sock, "tracing-test"), &[]).unwrap();
        let mut ctl = Client::connect(&sock, Some(Duration::from_secs(20))).unwrap();
        ctl.simple(&Request::Create(ChannelConfig { subbuf_size: 64 << 10, num_subbuf: 8, mode: Mode::Discard }))
            .unwrap();
        ctl.simple(&Request::Start).unwrap();
        Session { dir, host, ctl, sock, consumer: None }
    }

    pub fn trace(&self) -> PathBuf {
        self.dir.path().join("trace")
    }

    /// Attaches a consumer, which drains the rings from now on.
    pub fn attach(&mut self) {
        let c = Consumer::attach(&ConsumerConfig::new(&self.sock, self.trace())).unwrap();
        self.consumer = Some(std::thread::spawn(move || c.run()));
    }

    /// Stops and destroys the channel; the consumer (attached now if it was
    /// not) writes the last packets and exits. The host keeps serving.
    pub fn end(&mut self) {
        if self.consumer.is_none() {
            self.attach();
        }
        self.ctl.simple(&Request::Stop).unwrap();
        self.ctl.simple(&Request::Destroy).unwrap();
        self.consumer.take().unwrap().join().unwrap().unwrap();
    }

    /// [`Session::end`], and the trace directory (with the temporary
    /// directory that holds it).
    pub fn finish(mut self) -> (tempfile::TempDir, PathBuf) {
        self.end();
        let t = self.trace();
        (self.dir, t)
    }
}

/// Runs `emit` on this thread with an [`HvtraceLayer`] (recording spans
/// too if `spans`) on a fresh [`Session`] as the default subscriber, then
/// ends the session: the trace (with the directory that holds it), the
/// layer's counters and what `emit` returned.
pub fn traced<R>(spans: bool, emit: impl FnOnce() -> R) -> (tempfile::TempDir, PathBuf, Arc<Counters>, R) {
    use tracing_subscriber::layer::SubscriberExt;
    let s = Session::start();
    let layer = HvtraceLayer::new(s.host.clone()).with_spans(spans);
    let counters = layer.counters();
    let out = tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
    let (dir, trace) = s.finish();
    (dir, trace, counters, out)
}

/// A decoded field value, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    I(i64),
    U(u64),
    F(f64),
    S(String),
    B(Vec<u8>),
    /// Enumeration: value and label.
    E(i64, String),
}

/// One event as hvtrace-reader decodes it.
#[derive(Clone, Debug)]
pub struct Ev {
    pub ts: u64,
    pub cpu: u32,
    pub name: String,
    pub fields: Vec<(String, Val)>,
}

impl Ev {
    pub fn get_opt(&self, name: &str) -> Option<&Val> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    pub fn get(&self, name: &str) -> &Val {
        &self
            .fields
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{} has no {name}: {self:?}", self.name))
            .1
    }
}

/// Every event of the trace, in timestamp order, decoded by hvtrace-reader;
/// panics on any undecodable packet or record. Also returns the sum of the
/// last `events_discarded` of each stream.
pub fn read(trace: &Path) -> (Vec<Ev>, u64) {
    let t = TraceDir::open(trace).unwrap();
    let schema = t.schema();
    let mut out = Vec::new();
    let mut discarded = 0;
    for s in &t.streams {
        let bytes = s.read().unwrap();
        let mut last = 0;
        for p in packets(&bytes) {
            let p = p.unwrap();
            last = p.info.events_discarded;
            for r in p.records(schema) {
                let r = r.unwrap();
                let class = schema.event(r.id).unwrap();
                let fields = class
                    .fields
                    .iter()
                    .zip(r.values(schema))
                    .map(|(f, v)| {
                        let v = match v {
                            Value::I(i) => Val::I(i),
                            Value::U(u) => Val::U(u),
                            Value::F(x) => Val::F(x),
                            Value::Str(b) => Val::S(String::from_utf8(b.to_vec()).unwrap()),
                            Value::Bytes(b) => Val::B(b.to_vec()),
                            Value::Enum(e) => Val::E(e, f.label_of(e).unwrap_or("?").to_string()),
                        };
                        (f.name.clone(), v)
                    })
                    .collect();
                out.push(Ev { ts: r.timestamp, cpu: s.cpu, name: class.name.clone(), fields });
            }
        }
        discarded += last;
    }
    out.sort_by_key(|e| e.ts);
    (out, discarded)
}

/// The trace's events as babeltrace2 decodes them (`scripts/ctf-events.py`,
/// one JSON object each), or `None` after printing `SKIP` when python3-bt2
/// is not installed.
pub fn read_bt2(trace: &Path) -> Option<Vec<serde_json::Value>> {
    let ok = Command::new("/usr/bin/python3").args(["-c", "import bt2"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIP: python3-bt2 not installed: the trace was not read by babeltrace2");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ctf-events.py");
    let out = Command::new("/usr/bin/python3").arg(script).arg(trace).output().unwrap();
    assert!(out.status.success(), "bt2: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

/// The events babeltrace2 reports discarded (its discarded-events messages).
pub fn bt_discarded(bt: &[serde_json::Value]) -> u64 {
    let counts: Vec<&serde_json::Value> = bt.iter().filter_map(|b| b.get("discarded")).collect();
    // babeltrace2 gives no count ("may have discarded") for losses it sees
    // in a stream's first packet: a test records more than a packet first.
    counts.iter().map(|d| d.as_u64().unwrap_or_else(|| panic!("a count babeltrace2 does not know: {counts:?}"))).sum()
}

/// Pins the calling thread to its CPU, so that every event and loss it
/// counts lands in one ring; false (and a note) if that fails.
pub fn pin_to_one_cpu() -> bool {
    let cpu = hvtrace_sys::cpu::current_cpu();
    match hvtrace_sys::cpu::pin_current_thread(cpu) {
        Ok(()) => true,
        Err(e) => {
            println!("SKIP (part): cannot pin to CPU {cpu} ({e}): babeltrace2's loss count not compared");
            false
        }
    }
}

/// babeltrace2's text output, or `None` after printing `SKIP`.
pub fn babeltrace2_text(trace: &Path) -> Option<String> {
    match Command::new("babeltrace2").arg(trace).output() {
        Ok(o) => {
            assert!(o.status.success(), "babeltrace2 failed: {}", String::from_utf8_lossy(&o.stderr));
            Some(String::from_utf8_lossy(&o.stdout).into_owned())
        }
        Err(e) => {
            println!("SKIP: babeltrace2 not runnable ({e})");
            None
        }
    }
}
