//! What the analyze, export and report tests share: running the built
//! binary in a fresh temporary directory, reading its JSON, and counting
//! `vm_exit` records with babeltrace2. Each suite uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hvtrace_sim::VmxExitReason;
use hvtrace_xen::gen::{Generated, Scenario};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_hvtrace");

/// Runs `hvtrace ARGS`.
pub fn hvtrace(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().expect("run hvtrace")
}

/// A command's stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An empty directory of its own for test `what` of suite `suite`.
pub fn tempdir(suite: &str, what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hvtrace-{suite}-test-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `hvtrace demo --output tmp/trace ARGS`, which must succeed; the trace.
pub fn demo(tmp: &Path, args: &[&str]) -> PathBuf {
    let dir = tmp.join("trace");
    let out = hvtrace(&[&["demo", "--output", dir.to_str().unwrap()], args].concat());
    assert!(out.status.success(), "hvtrace demo failed: {}", stderr(&out));
    dir
}

/// The last line of a command's stdout, as JSON.
pub fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no output; stderr: {}", stderr(out)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

/// `(vcpu, reason label) → vm_exit records` as babeltrace2 decodes them, or
/// `None` (said loudly) without babeltrace2.
pub fn babeltrace_exits(dir: &Path) -> Option<BTreeMap<(u64, String), u64>> {
    let n = babeltrace_count(dir, &["vm_exit"], &["vcpu", "reason"])?;
    Some(n.into_iter().map(|(k, n)| ((k[0].parse().unwrap(), k[1].clone()), n)).collect())
}

/// Records of the event `classes` as babeltrace2 decodes them, counted by
/// the values of `fields` (an enumeration by its label), or `None` (said
/// loudly) without babeltrace2.
pub fn babeltrace_count(dir: &Path, classes: &[&str], fields: &[&str]) -> Option<BTreeMap<Vec<String>, u64>> {
    let out = match Command::new("babeltrace2").arg(dir).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIP: babeltrace2 not installed: the {classes:?} records were not counted with it");
            return None;
        }
        Err(e) => panic!("babeltrace2: {e}"),
    };
    assert!(out.status.success(), "babeltrace2 failed: {}", stderr(&out));
    let mut n = BTreeMap::new();
    let heads: Vec<String> = classes.iter().map(|c| format!(" {c}: {{")).collect();
    for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| heads.iter().any(|h| l.contains(h))) {
        // `... vm_exit: { cpu_id = 0 }, { vcpu = 1, reason = ( "io" : container = 2 ), ... }`
        let key = fields
            .iter()
            .map(|name| {
                let v = line.split(&format!(" {name} = ")).nth(1).unwrap_or_else(|| panic!("no {name} in {line}"));
                match v.strip_prefix("( \"") {
                    Some(enumeration) => enumeration.split('"').next().unwrap().to_string(),
                    None => v.split([',', ' ']).next().unwrap().to_string(),
                }
            })
            .collect();
        *n.entry(key).or_default() += 1;
    }
    Some(n)
}

/// A simulated trace with 16 KiB packets in `tmp/trace`, damaged: packet 3
/// of `channel0_0` has a flipped magic and `channel0_1` is cut 3000 bytes
/// short. Returns the trace and `tmp/intact`, the copy `hvtrace check
/// --repair` makes of its intact packets (babeltrace2 reads that one).
/// Each ring (64 packets, 1 MiB) holds all of its CPU's ~0.5 MB, so no
/// event is discarded however loaded the machine: every gap is the damage.
pub fn damaged_demo(tmp: &Path) -> (PathBuf, PathBuf) {
    let dir = tmp.join("trace");
    let d = dir.to_str().unwrap();
    let out = hvtrace(&[
        "demo",
        "--output",
        d,
        "--cpus",
        "2",
        "--events-per-cpu",
        "20000",
        "--subbuf-size",
        "16384",
        "--num-subbuf",
        "64",
        "--json",
    ]);
    assert!(out.status.success(), "hvtrace demo failed: {}", stderr(&out));
    assert_eq!(last_json(&out)["events_discarded"], 0, "the demo discarded events");
    let f0 = dir.join("channel0_0");
    let mut b = std::fs::read(&f0).unwrap();
    b[3 * 16384] ^= 0xff; // the magic, the packet's first word
    std::fs::write(&f0, &b).unwrap();
    let f1 = dir.join("channel0_1");
    let b = std::fs::read(&f1).unwrap();
    std::fs::write(&f1, &b[..b.len() - 3000]).unwrap();
    let intact = tmp.join("intact");
    let out = hvtrace(&["check", d, "--repair", intact.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "check finds the damage: {}", stderr(&out));
    (dir, intact)
}

/// A generated Xen host (3 pCPUs, 5 domains of 2 vCPUs, 17 lost records)
/// written to `tmp/gen.xentrace` and imported by `hvtrace import xentrace`
/// (at xenalyze's 2.4 GHz) into `tmp/trace`: the file, the trace, and what
/// the generator wrote.
pub fn imported_xentrace(tmp: &Path) -> (PathBuf, PathBuf, Generated) {
    let g = Scenario { pcpus: 3, domains: 5, vcpus: 2, rounds: 300, lost: 17, ..Scenario::default() }.generate();
    let input = tmp.join("gen.xentrace");
    std::fs::write(&input, &g.bytes).unwrap();
    let dir = tmp.join("trace");
    let (i, d) = (input.to_str().unwrap(), dir.to_str().unwrap());
    let out = hvtrace(&["import", "xentrace", "--cpu-hz", "2400000000", "-o", d, i]);
    assert!(out.status.success(), "hvtrace import failed: {}", stderr(&out));
    (input, dir, g)
}

/// The name of VMX basic exit reason `code`.
pub fn vmx_reason(code: u32) -> &'static str {
    VmxExitReason::LABELS.iter().find(|l| l.value == i64::from(code)).expect("a VMX reason").label
}

/// `hvtrace analyze DIR ARGS` (JSON, then text) on 2, 3 and 4 threads
/// prints exactly what it prints on one; with `cut`, each read in time
/// windows (no note that it fell back to one thread).
pub fn same_on_every_thread_count(dir: &Path, args: &[&str], cut: bool) {
    let d = dir.to_str().unwrap();
    for json in [true, false] {
        let run = |threads: &str| {
            let mut a = vec!["analyze", d, "--threads", threads];
            a.extend_from_slice(args);
            if json {
                a.push("--json");
            }
            let out = hvtrace(&a);
            assert!(out.status.success(), "hvtrace {a:?}: {}", stderr(&out));
            out
        };
        let one = run("1");
        for n in ["2", "3", "4"] {
            let out = run(n);
            assert!(out.stdout == one.stdout, "{d} {args:?} json {json}: {n} threads print another report than one");
            let fell_back = stderr(&out).contains("read on one thread");
            assert_eq!(fell_back, !cut, "{d}, {n} threads: {}", stderr(&out));
        }
    }
}
