//! `hvtrace kvm` end to end, through the built binary: the VMM traced by a
//! consumer child process, the trace checked against the VMM's own counts
//! (by the command itself, by this test from its JSON, and by babeltrace2).
//! Without a usable /dev/kvm the tests print why they skip, and check that
//! the command says so clearly.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_hvtrace");

/// `Err(why)` when /dev/kvm cannot be used (the same check as the VMM's).
fn kvm_usable() -> Result<(), String> {
    hvtrace_kvm::kvm_available()
}

fn hvtrace(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().expect("run hvtrace")
}

/// The JSON object on the last line of stdout.
fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| panic!("no output; stderr: {}", stderr(out)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// Counts of `name:` events in babeltrace2's text output, or `None` (after
/// saying so loudly) when babeltrace2 is not installed.
fn babeltrace_counts(dir: &Path, names: &[&str]) -> Option<Vec<u64>> {
    let out = match Command::new("babeltrace2").arg(dir).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIP: babeltrace2 not installed: the trace was not opened with it");
            return None;
        }
        Err(e) => panic!("babeltrace2: {e}"),
    };
    assert!(out.status.success(), "babeltrace2 {} failed: {}", dir.display(), stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = vec![0u64; names.len()];
    for line in text.lines() {
        // `[time] (+delta) host event: { cpu_id = N }, { ... }`
        let Some(event) = line.split(": {").next().and_then(|head| head.rsplit(' ').next()) else { continue };
        if let Some(i) = names.iter().position(|n| *n == event) {
            counts[i] += 1;
        }
    }
    Some(counts)
}

#[test]
fn kvm_session_trace_matches_the_vmm() {
    if let Err(why) = kvm_usable() {
        eprintln!("SKIP: /dev/kvm not usable: {why}");
        return;
    }
    let tmp = tempdir("session");
    let dir = tmp.join("trace");
    let out = hvtrace(&["kvm", "--output", dir.to_str().unwrap(), "--vcpus", "2", "--iterations", "300", "--json"]);
    assert!(out.status.success(), "hvtrace kvm failed: {}", stderr(&out));
    let s = last_json(&out);

    // The workload: per vCPU, 300 iterations x (2 io + 1 mmio + 4 hypercalls
    // + 2 guest events) + the done write + hlt (+ rare EINTR exits).
    let (exits, hypercalls, events) = (num(&s, "vm_exits"), num(&s, "hypercalls"), num(&s, "guest_events"));
    assert_eq!(num(&s, "vcpus"), 2);
    assert!(exits >= 2 * (300 * 9 + 2), "{s}");
    assert_eq!(hypercalls, 2 * 300 * 4);
    assert_eq!(events, 2 * 300 * 2);
    assert_eq!(num(&s, "events_discarded"), 0, "default buffers hold this run: {s}");
    assert_eq!(num(&s, "events_recorded"), 2 * exits + 2 * hypercalls + events);
    assert!(s["exits_per_second"].as_f64().unwrap() > 0.0);
    let per_event: Vec<(String, u64, u64)> = s["per_event"]
        .as_array()
        .expect("per_event")
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_string(), num(e, "recorded"), num(e, "expected")))
        .collect();
    let expect = [
        ("vm_exit", exits),
        ("vcpu_run", exits),
        ("hypercall_entry", hypercalls),
        ("hypercall_exit", hypercalls),
        ("guest_event", events),
    ];
    assert_eq!(per_event.len(), expect.len());
    for ((name, recorded, expected), (want_name, want)) in per_event.iter().zip(expect) {
        assert_eq!((name.as_str(), *recorded, *expected), (want_name, want, want));
    }
    let trace = s["trace"].as_str().expect("trace path");
    assert_eq!(Path::new(trace), dir.canonicalize().unwrap());

    // The tracing overhead, measured inside the VMM: a share of vCPU time.
    let overhead = s["tracing_overhead"].as_f64().unwrap_or_else(|| panic!("tracing_overhead in {s}"));
    assert!((0.0..=1.0).contains(&overhead), "tracing_overhead {overhead}: {s}");
    let per_exit = s["observer_ns_per_exit"].as_f64().unwrap_or_else(|| panic!("observer_ns_per_exit in {s}"));
    assert!(per_exit > 0.0, "observer_ns_per_exit {per_exit}: {s}");
    assert!(s["observer_floor_ns_per_exit"].as_f64().is_some(), "traced runs measure the timing floor: {s}");

    // An independent reader agrees.
    let names = ["vm_exit", "hypercall_entry", "hypercall_exit", "vcpu_run", "guest_event"];
    if let Some(c) = babeltrace_counts(&dir, &names) {
        assert_eq!(c, [exits, hypercalls, hypercalls, exits, events], "babeltrace2 counts of {names:?}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn kvm_untraced_reports_exits() {
    if let Err(why) = kvm_usable() {
        eprintln!("SKIP: /dev/kvm not usable: {why}");
        return;
    }
    let out = hvtrace(&["kvm", "--no-trace", "--vcpus", "1", "--iterations", "100", "--json"]);
    assert!(out.status.success(), "hvtrace kvm --no-trace failed: {}", stderr(&out));
    let s = last_json(&out);
    assert!(s["trace"].is_null(), "{s}");
    assert!(num(&s, "vm_exits") >= 100 * 9 + 2, "{s}");
    assert_eq!(num(&s, "hypercalls"), 400);
    assert_eq!(num(&s, "events_recorded"), 0);
    assert_eq!(num(&s, "events_discarded"), 0);
    assert!(s["exits_per_second"].as_f64().unwrap() > 0.0, "{s}");
    // Untraced, the observer share is the timing's own floor.
    let floor = s["tracing_overhead"].as_f64().unwrap_or_else(|| panic!("tracing_overhead in {s}"));
    assert!((0.0..=1.0).contains(&floor), "{s}");
    assert!(s["observer_floor_ns_per_exit"].is_null(), "{s}");
}

#[test]
fn kvm_small_rings_account_for_every_event() {
    if let Err(why) = kvm_usable() {
        eprintln!("SKIP: /dev/kvm not usable: {why}");
        return;
    }
    // 2 x 4 KiB per CPU: the consumer may fall behind; whatever is lost is counted.
    let tmp = tempdir("small");
    let dir = tmp.join("trace");
    let out = hvtrace(&[
        "kvm",
        "--output",
        dir.to_str().unwrap(),
        "--vcpus",
        "2",
        "--iterations",
        "300",
        "--subbuf-size",
        "4k",
        "--num-subbuf",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "hvtrace kvm failed: {}", stderr(&out));
    let s = last_json(&out);
    let traced = 2 * num(&s, "vm_exits") + 2 * num(&s, "hypercalls") + num(&s, "guest_events");
    assert_eq!(num(&s, "events_recorded") + num(&s, "events_discarded"), traced, "{s}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn kvm_without_dev_kvm_says_so() {
    let tmp = tempdir("nokvm");
    let dir = tmp.join("trace");
    let out = hvtrace(&["kvm", "--output", dir.to_str().unwrap(), "--iterations", "10"]);
    match kvm_usable() {
        Ok(()) => {
            eprintln!("SKIP: /dev/kvm is usable here, so the no-KVM message cannot be checked");
            assert!(out.status.success(), "{}", stderr(&out));
        }
        Err(why) => {
            eprintln!("SKIP: /dev/kvm not usable: {why} (checking the command's message)");
            assert!(!out.status.success());
            let err = stderr(&out);
            assert!(err.contains("KVM is not usable here") && err.contains(&why), "unclear message: {err}");
            assert!(!dir.join("metadata").exists());
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hvtrace-kvm-test-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
