//! Helpers shared by the import tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hvtrace_xen::gen::Generated;
use hvtrace_xen::{ImportOptions, ImportReport};

/// Writes `g` to `dir/in.xentrace` and imports it into `dir/trace`.
pub fn import_generated(dir: &Path, g: &Generated) -> (PathBuf, ImportReport) {
    let input = dir.join("in.xentrace");
    std::fs::write(&input, &g.bytes).unwrap();
    let out = dir.join("trace");
    let r = hvtrace_xen::import_file(&input, &out, ImportOptions::default()).expect("import");
    (out, r)
}

/// Python with the babeltrace2 bindings (Debian's python3-bt2 installs for
/// /usr/bin/python3 only).
pub const PYTHON: &str = "/usr/bin/python3";

/// Whether babeltrace2 and its Python bindings are there; prints `SKIP:` when not.
pub fn have_bt2(test: &str) -> bool {
    let ok = Command::new(PYTHON).args(["-c", "import bt2"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIP: {test}: python3-bt2 (babeltrace2's bindings) not installed; the CTF output was not read");
    }
    ok
}

/// One message babeltrace2 gave: an event or a discarded-events notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// `(cpu, timestamp in cycles, name, fields)`; integers and enumerations by value.
    Event(u32, u64, String, Vec<(String, u64)>),
    /// `(stream instance id = cpu, count)`.
    Discarded(u32, u64),
}

const DUMP: &str = r#"
import sys, bt2
def val(f):
    if isinstance(f, bt2._ArrayFieldConst) or isinstance(f, bt2._StaticArrayFieldConst) or isinstance(f, bt2._DynamicArrayFieldConst):
        return int.from_bytes(bytes(int(x) for x in f), "little") if len(f) <= 8 else len(f)
    return int(f)
for m in bt2.TraceCollectionMessageIterator(sys.argv[1]):
    if type(m) is bt2._EventMessageConst:
        e = m.event
        cpu = int(e.packet.context_field["cpu_id"])
        fs = " ".join("%s=%d" % (k, val(v)) for k, v in e.payload_field.items())
        print("E", cpu, m.default_clock_snapshot.value, e.name, fs)
    elif type(m) is bt2._DiscardedEventsMessageConst:
        print("D", m.stream.id, m.count)
"#;

/// Every message of the trace at `dir`, as babeltrace2's Python bindings read it.
pub fn read_bt2(dir: &Path) -> Vec<Msg> {
    let o = Command::new(PYTHON).args(["-c", DUMP]).arg(dir).output().expect("run python3");
    assert!(o.status.success(), "babeltrace2 failed to read {}: {}", dir.display(), String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    text.lines()
        .map(|l| {
            let mut w = l.split(' ');
            match w.next() {
                Some("E") => {
                    let cpu = w.next().unwrap().parse().unwrap();
                    let ts = w.next().unwrap().parse().unwrap();
                    let name = w.next().unwrap().to_string();
                    let fields = w
                        .filter(|s| !s.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            (k.to_string(), v.parse().unwrap())
                        })
                        .collect();
                    Msg::Event(cpu, ts, name, fields)
                }
                _ => {
                    let stream = w.next().unwrap().parse().unwrap();
                    Msg::Discarded(stream, w.next().unwrap().parse().unwrap())
                }
            }
        })
        .collect()
}
