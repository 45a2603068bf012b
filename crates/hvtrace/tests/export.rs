//! `hvtrace export --format perfetto` through the built binary, each export
//! decoded by `scripts/check-perfetto` with Perfetto's own protobuf
//! definitions (PyPI `perfetto`): balanced slices per track, time never
//! backwards on a track, interned ids resolve; and on a KVM trace, one
//! slice per `vm_exit` record (counted by babeltrace2), reason by reason;
//! on an imported xentrace file, one per exit record, as babeltrace2 and
//! xenalyze count them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod views;
use views::{babeltrace_count, babeltrace_exits, damaged_demo, demo, hvtrace, imported_xentrace, stderr, vmx_reason};

fn tempdir(what: &str) -> PathBuf {
    views::tempdir("export", what)
}

/// The Python with Perfetto's definitions: `$HVTRACE_PERFETTO_PYTHON`
/// (`.ci/run` sets it to its venv), else `python3`.
fn python() -> String {
    std::env::var("HVTRACE_PERFETTO_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Exports `dir` and checks the file; `None` (said loudly) without the
/// `perfetto` package.
fn export_and_check(dir: &Path) -> Option<Value> {
    let file = dir.with_extension("pftrace");
    let out = hvtrace(&["export", dir.to_str().unwrap(), "--format", "perfetto", "--output", file.to_str().unwrap()]);
    assert!(out.status.success(), "hvtrace export failed: {}", stderr(&out));
    check(&file)
}

/// `scripts/check-perfetto FILE`'s findings; `None` (said loudly) without
/// the `perfetto` package.
fn check(file: &Path) -> Option<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check-perfetto");
    let out = match Command::new(python()).arg(&script).arg(file).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIP: {} cannot run ({e}): the export was not decoded with Perfetto's definitions", python());
            return None;
        }
    };
    if out.status.code() == Some(2) {
        eprintln!("{}", stderr(&out).trim());
        eprintln!("SKIP: the export was not decoded with Perfetto's definitions");
        return None;
    }
    assert!(out.status.success(), "check-perfetto: {}", stderr(&out));
    Some(serde_json::from_slice(&out.stdout).expect("check-perfetto prints JSON"))
}

/// Whether a slice is one the export makes besides exits: a hypercall, a
/// vCPU running on a pCPU (`d1v0`), or missing data.
fn not_an_exit(name: &str) -> bool {
    name.starts_with("hypercall ")
        || name.starts_with('d')
            && name[1..].split_once('v').is_some_and(|(d, v)| d.parse::<u32>().is_ok() && v.parse::<u32>().is_ok())
        || name == "events lost"
        || name == "packets skipped (damaged)"
}

#[test]
fn a_kvm_export_has_one_slice_per_vm_exit_record_named_by_its_reason() {
    if let Err(why) = hvtrace_kvm::kvm_available() {
        eprintln!("SKIP: /dev/kvm not usable: {why}");
        return;
    }
    let tmp = tempdir("kvm");
    let dir = tmp.join("trace");
    let out = hvtrace(&["kvm", "--output", dir.to_str().unwrap(), "--vcpus", "2", "--iterations", "200", "--json"]);
    assert!(out.status.success(), "hvtrace kvm failed: {}", stderr(&out));
    let Some(check) = export_and_check(&dir) else { return };
    let Some(per_vcpu) = babeltrace_exits(&dir) else { return };
    let mut exits = BTreeMap::<String, u64>::new();
    for ((_, reason), n) in per_vcpu {
        *exits.entry(reason).or_default() += n;
    }
    assert!(exits.values().sum::<u64>() > 0, "the KVM trace has no vm_exit records");
    let slices = check["slices"].as_object().unwrap();
    for (reason, n) in &exits {
        assert_eq!(slices.get(reason).and_then(Value::as_u64), Some(*n), "slices named {reason}");
    }
    // Every other slice is a hypercall or a pCPU's vCPU: no exit slice that
    // babeltrace2 did not see.
    for (name, n) in slices {
        assert!(exits.contains_key(name) || not_an_exit(name), "{n} slices named {name}, which is no vm_exit reason");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_simulated_xen_export_decodes_balanced_with_exits_hypercalls_and_pcpus() {
    let tmp = tempdir("sim");
    let dir = demo(&tmp, &["--cpus", "2", "--events-per-cpu", "20000"]);
    let Some(check) = export_and_check(&dir) else { return };
    let slices = check["slices"].as_object().unwrap();
    let count =
        |p: &dyn Fn(&str) -> bool| slices.iter().filter(|(k, _)| p(k)).map(|(_, v)| v.as_u64().unwrap()).sum::<u64>();
    assert!(count(&|k| k.starts_with("hypercall ")) > 0, "no hypercall slices: {slices:?}");
    assert!(count(&|k| k == "VMCALL" || k == "IO_INSTRUCTION") > 0, "no exit slices: {slices:?}");
    let tracks: Vec<&str> = check["tracks"].as_object().unwrap().values().filter_map(Value::as_str).collect();
    for want in ["pCPU 0", "pCPU 1", "pCPU 0 lost events", "pCPU 1 missing data"] {
        assert!(tracks.contains(&want), "no track {want}: {tracks:?}");
    }
    assert!(tracks.iter().any(|t| t.starts_with("vCPU d0v")), "no vCPU track: {tracks:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The exit record classes of an imported xentrace file.
const XEN_EXITS: [&str; 4] = ["vmx_exit64", "vmx_exit", "svm_exit64", "svm_exit"];

#[test]
fn an_imported_xentrace_export_has_one_slice_per_exit_as_babeltrace2_and_xenalyze_count() {
    let tmp = tempdir("xentrace");
    let (input, dir, g) = imported_xentrace(&tmp);
    let Some(check) = export_and_check(&dir) else { return };
    let slices = check["slices"].as_object().unwrap();
    let slice_count = |name: &str| slices.get(name).and_then(Value::as_u64).unwrap_or(0);
    // The lost records (one TRC_LOST_RECORDS) are one stretch of missing data.
    assert_eq!(slice_count("events lost"), 1, "{slices:?}");
    let Some(records) = babeltrace_count(&dir, &XEN_EXITS, &["domid", "exit_reason"]) else { return };
    // The generator's exits are all of real domains (not idle, not unknown:
    // the model leaves those out), so every exit record is one of the model's.
    let mut exits = BTreeMap::<String, u64>::new();
    for (k, n) in &records {
        let domid: u32 = k[0].parse().unwrap();
        assert!((1..=5).contains(&domid), "an exit of domain {domid}");
        *exits.entry(k[1].clone()).or_default() += n;
    }
    assert_eq!(exits.values().sum::<u64>(), g.exits.len() as u64, "babeltrace2's exit records are the generator's");
    for (reason, n) in &exits {
        assert_eq!(slice_count(reason), *n, "slices named {reason}");
    }
    for (name, n) in slices {
        assert!(exits.contains_key(name) || not_an_exit(name), "{n} slices named {name}, which is no exit reason");
    }
    if Command::new("xenalyze").arg("--help").output().is_err() {
        eprintln!("SKIP: xenalyze not installed (apt-get install xen-utils-4.17): its exit counts were not compared");
        return;
    }
    let o = Command::new("xenalyze").arg("--summary").arg(&input).output().unwrap();
    assert!(o.status.success(), "xenalyze failed: {}", stderr(&o));
    let mut theirs = BTreeMap::<String, u64>::new();
    for ((_, _, code), (n, _)) in hvtrace_xen::xenalyze::exits(&String::from_utf8_lossy(&o.stdout)).unwrap() {
        let name = vmx_reason(code);
        *theirs.entry(name.to_string()).or_default() += n;
    }
    assert_eq!(theirs, exits, "xenalyze's exits per reason");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_damaged_trace_exports_every_intact_packet_with_a_warning() {
    let tmp = tempdir("damaged");
    let (dir, intact) = damaged_demo(&tmp);
    let file = tmp.join("damaged.pftrace");
    let out = hvtrace(&["export", dir.to_str().unwrap(), "--output", file.to_str().unwrap()]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "a damaged trace exports, with warnings: {log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("warning") && log.contains("channel0_0: skipped bytes 49152..65536"), "{log}");
    assert!(log.contains("warning") && log.contains("channel0_1: skipped"), "{log}");
    let Some(check) = check(&file) else { return };
    // The skipped packet is a stretch of missing data on pCPU 0's track.
    assert_eq!(check["slices"]["packets skipped (damaged)"], 1, "{}", check["slices"]);
    // Every exit record of the intact packets, as babeltrace2 reads the
    // repaired copy, is a slice named by its reason; none more.
    let Some(records) = babeltrace_count(&intact, &["vm_exit"], &["reason"]) else { return };
    let slices = check["slices"].as_object().unwrap();
    assert!(records.values().sum::<u64>() > 1000, "{records:?}");
    for (k, n) in &records {
        assert_eq!(slices.get(&k[0]).and_then(Value::as_u64), Some(*n), "slices named {}", k[0]);
    }
    for (name, n) in slices {
        assert!(records.contains_key(&vec![name.clone()]) || not_an_exit(name), "{n} slices named {name}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_missing_trace_is_a_clear_error_and_leaves_no_output_file() {
    let tmp = tempdir("missing");
    let missing = tmp.join("nothing");
    for (cmd, file) in [("export", "x.pftrace"), ("report", "x.html")] {
        let file = tmp.join(file);
        let out = hvtrace(&[cmd, missing.to_str().unwrap(), "--output", file.to_str().unwrap()]);
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd}: a trace that cannot be read is status 2: {log}");
        assert!(log.contains("nothing") && !log.contains("panicked"), "{cmd}: {log}");
        assert!(!file.exists(), "{cmd} left an output file behind");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Two packets of a stream swapped: time runs backwards in it, and a loss's
/// last record before it comes after it. Both views still write their file
/// (they panicked on it: `clamp` and a reversed column range), and the
/// export is sound.
#[test]
fn packets_out_of_order_are_exported_and_reported_without_a_panic() {
    let tmp = tempdir("swapped");
    let dir = demo(&tmp, &["--cpus", "1", "--events-per-cpu", "20000", "--subbuf-size", "16384"]);
    let d = dir.to_str().unwrap();
    let f = dir.join("channel0_0");
    let mut b = std::fs::read(&f).unwrap();
    assert!(b.len() >= 6 * 16384, "{} bytes", b.len());
    let (head, tail) = b.split_at_mut(5 * 16384);
    head[3 * 16384..4 * 16384].swap_with_slice(&mut tail[..16384]);
    std::fs::write(&f, &b).unwrap();
    for (cmd, file) in [("export", "x.pftrace"), ("report", "x.html")] {
        let file = tmp.join(file);
        let out = hvtrace(&[cmd, d, "--output", file.to_str().unwrap()]);
        let log = stderr(&out);
        assert!(!log.contains("panicked"), "{cmd}: {log}");
        assert_eq!(out.status.code(), Some(0), "{cmd}: {log}");
        assert!(std::fs::metadata(&file).unwrap().len() > 0, "{cmd} wrote nothing");
        // The walk reads no packet that cannot follow the one before it.
        assert!(log.contains("cannot follow the packet read before it"), "{cmd}: {log}");
    }
    // So time never goes back on a track (check-perfetto found 12 places
    // where it did while the walk read the packets as they lay).
    check(&tmp.join("x.pftrace"));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A full disk is a clear error, status 1, saying its cause once.
#[test]
fn an_output_that_cannot_be_written_says_why_once() {
    let tmp = tempdir("full");
    let dir = demo(&tmp, &["--cpus", "1", "--events-per-cpu", "2000"]);
    let d = dir.to_str().unwrap();
    for cmd in ["export", "report"] {
        let out = hvtrace(&[cmd, d, "--output", "/dev/full"]);
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {log}");
        assert!(log.contains("cannot write the output"), "{cmd}: {log}");
        assert_eq!(log.matches("No space left on device").count(), 1, "{cmd}: {log}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
