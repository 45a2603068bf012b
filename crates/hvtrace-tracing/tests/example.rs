//! The `vmm` example (`examples/vmm.rs`) records a trace that hvtrace
//! analyze and babeltrace2 read, with the counts its loops make.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use common::*;

/// The example's binary, built by `cargo test` next to the test binaries.
fn example() -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent()?.parent()?.join("examples").join("vmm");
    p.exists().then_some(p)
}

#[test]
fn the_vmm_example_is_read_by_hvtrace_analyze_and_babeltrace2_with_its_counts() {
    let Some(bin) = example() else {
        println!("SKIP: the vmm example is not built (cargo test builds it; a filtered build may not)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let (vcpus, exits) = (3u64, 1000u64);
    let out = Command::new(bin)
        .arg(&trace)
        .args([vcpus.to_string(), exits.to_string()])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // What the loops emit: per vCPU, `exits` vm_exit (4 callsites, a
    // quarter each), a detail event for 3 reasons in 4, a halted span for
    // 1 in 4, a warning every 500.
    let (evs, discarded) = read(&trace);
    assert_eq!(discarded, 0);
    let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &evs {
        *by_name.entry(e.name.as_str()).or_default() += 1;
    }
    assert_eq!(by_name["vmm:vm_exit"], vcpus * exits);
    for detail in ["vmm:pio", "vmm:mmio", "vmm:cpuid", "vmm:wake", "span vmm:halted"] {
        assert_eq!(by_name[detail], vcpus * exits / 4, "{detail}");
    }
    assert_eq!(by_name["span vmm:vcpu_run"], vcpus);
    let spans = vcpus + vcpus * exits / 4;
    for s in ["span_enter", "span_exit", "span_close"] {
        assert_eq!(by_name[s], spans, "{s}");
    }

    // hvtrace analyze's generic part counts the same per class.
    let report = hvtrace_analysis::analyze(&trace, &[], &hvtrace_analysis::Options::default(), &mut |_| {}).unwrap();
    assert_eq!(report.events, evs.len() as u64);
    assert_eq!(report.events_discarded, 0);
    let mut analyzed: BTreeMap<&str, u64> = BTreeMap::new();
    for c in &report.event_classes {
        *analyzed.entry(c.name.as_str()).or_default() += c.count;
    }
    assert_eq!(analyzed, by_name);

    // babeltrace2 too.
    let Some(bt) = read_bt2(&trace) else { return };
    let mut bt_names: BTreeMap<String, u64> = BTreeMap::new();
    for b in &bt {
        *bt_names.entry(b["name"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let mine: BTreeMap<String, u64> = by_name.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(bt_names, mine);
}
