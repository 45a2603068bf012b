//! `hvtrace import xentrace`: a generated xentrace file in, a trace
//! babeltrace2 reads out, the warnings and the exit status as documented.

use std::process::Command;

use hvtrace_xen::gen::{put_window, Scenario};

mod views;

fn hvtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hvtrace"))
}

#[test]
fn an_imported_xentrace_file_is_read_by_babeltrace2() {
    let g = Scenario { cut: 5, ..Scenario::default() }.generate();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("gen.xentrace");
    std::fs::write(&input, &g.bytes).unwrap();
    let out = dir.path().join("trace");
    let o =
        hvtrace().args(["import", "xentrace"]).arg(&input).arg("--output").arg(&out).arg("--json").output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("does not carry the TSC frequency"), "{stderr}");
    assert!(stderr.contains("ends inside CPU 0's window"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["records"], g.records.len() as u64);
    assert_eq!(report["lost"], g.lost.iter().sum::<u64>());
    assert_eq!(report["classes"]["xen_raw"], serde_json::Value::Null, "no generated record is raw");
    if Command::new("babeltrace2").arg("--version").output().is_err() {
        println!("SKIP: an_imported_xentrace_file_is_read_by_babeltrace2: babeltrace2 not installed");
        return;
    }
    let bt = Command::new("babeltrace2").arg(&out).output().unwrap();
    assert!(bt.status.success(), "{}", String::from_utf8_lossy(&bt.stderr));
    let text = String::from_utf8(bt.stdout).unwrap();
    assert_eq!(text.lines().count(), g.records.len());
    let vmexit = text.lines().find(|l| l.contains("vmx_exit64:")).expect("a 64-bit VM exit");
    assert!(vmexit.contains("exit_reason = ( \""), "the exit reason is an enumeration: {vmexit}");
    // babeltrace2 reports xentrace's lost records as discarded events, with the count.
    let warnings = String::from_utf8_lossy(&bt.stderr);
    let lost = g.lost[0];
    assert!(
        warnings.contains(&format!("Tracer discarded {lost} events")),
        "no discarded events for {lost} lost records: {warnings}"
    );
}

#[test]
fn damage_is_an_error_after_the_records_before_it_are_imported() {
    let g = Scenario { rounds: 3, cut: 0, lost: 0, ..Scenario::default() }.generate();
    let mut bytes = g.bytes.clone();
    put_window(&mut bytes, 70_000, 0);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.xentrace");
    std::fs::write(&input, &bytes).unwrap();
    let out = dir.path().join("trace");
    let o = hvtrace()
        .args(["import", "xentrace"])
        .arg(&input)
        .args(["--cpu-hz", "2000000000", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("CPU 70000, beyond any machine"), "{stderr}");
    assert!(!stderr.contains("TSC frequency"), "--cpu-hz given: no warning: {stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("imported {} records", g.records.len())), "{stdout}");
}

/// A generated file (3 pCPUs, 5 domains × 2 vCPUs, 300 rounds) written as
/// `gen.xentrace` in a new directory, imported at xenalyze's 2.4 GHz, and
/// `hvtrace analyze --json` of the import.
fn import_and_analyze() -> (hvtrace_xen::gen::Generated, tempfile::TempDir, serde_json::Value) {
    let g = Scenario { pcpus: 3, domains: 5, vcpus: 2, rounds: 300, ..Scenario::default() }.generate();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("gen.xentrace");
    std::fs::write(&input, &g.bytes).unwrap();
    let out = dir.path().join("trace");
    let o =
        hvtrace().args(["import", "xentrace", "--cpu-hz", "2400000000", "-o"]).arg(&out).arg(&input).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = hvtrace().arg("analyze").arg(&out).arg("--json").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    views::same_on_every_thread_count(&out, &[], true);
    (g, dir, serde_json::from_slice(&o.stdout).unwrap())
}

/// `hvtrace analyze --json` on an imported file against `xenalyze --summary`
/// on the same file: per domain, vCPU and exit reason the same counts, and
/// total exit times within 0.5 % (xenalyze's cycles at its 2.4 GHz).
#[test]
fn analyze_of_an_import_agrees_with_xenalyze() {
    let test = "analyze_of_an_import_agrees_with_xenalyze";
    let (g, dir, j) = import_and_analyze();
    let input = dir.path().join("gen.xentrace");
    assert_eq!(j["event_sets"], serde_json::json!(["xentrace"]));
    assert_eq!(j["events_discarded"].as_u64(), Some(g.lost.iter().sum()), "each lost record counted once");
    let mut ours = std::collections::BTreeMap::new();
    for v in j["vcpus"].as_array().unwrap() {
        for x in v["exits"].as_array().unwrap() {
            let key = (
                v["domain"].as_u64().unwrap() as u32,
                v["vcpu"].as_u64().unwrap() as u32,
                x["code"].as_u64().unwrap() as u32,
            );
            ours.insert(key, (x["count"].as_u64().unwrap(), x["total_ns"].as_u64().unwrap()));
        }
    }
    assert!(ours.len() > 50, "{} (domain, vCPU, reason) cells", ours.len());
    if Command::new("xenalyze").arg("--help").output().is_err() {
        println!("SKIP: {test}: xenalyze not installed (apt-get install xen-utils-4.17)");
        return;
    }
    let o = Command::new("xenalyze").arg("--summary").arg(&input).output().unwrap();
    let theirs = hvtrace_xen::xenalyze::exits(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>());
    for (k, (n, ns)) in &ours {
        let (xn, xcyc) = theirs[k];
        assert_eq!(*n, xn, "exits of d{}v{} reason {}", k.0, k.1, k.2);
        let xns = xcyc as f64 / 2.4;
        assert!(
            (*ns as f64 - xns).abs() <= 0.005 * xns,
            "d{}v{} reason {}: {ns} ns against xenalyze's {xns}",
            k.0,
            k.1,
            k.2
        );
    }
}

/// The handler records after an exit (`hvm_ioport_*`, `hvm_npf`, `hvm_msr_*`)
/// give it its detail: `hvtrace analyze --json`'s exit sub-tables by port and
/// direction, guest-physical address and MSR count what the generator wrote.
#[test]
fn analyze_details_imported_exits_by_port_and_address() {
    use hvtrace_xen::ClassId;
    let (g, dir, j) = import_and_analyze();
    let input = dir.path().join("gen.xentrace");

    // (domain, vCPU, reason, kind, target, access) -> exits
    type Cells = std::collections::BTreeMap<(u64, u64, u64, String, u64, String), u64>;
    let mut ours = Cells::new();
    let mut ours_ns = std::collections::BTreeMap::new();
    for v in j["vcpus"].as_array().unwrap() {
        for x in v["exit_details"].as_array().unwrap() {
            let s = |k: &str| x[k].as_str().unwrap().to_string();
            let key = (
                v["domain"].as_u64().unwrap(),
                v["vcpu"].as_u64().unwrap(),
                x["code"].as_u64().unwrap(),
                s("kind"),
                x["target"].as_u64().unwrap(),
                s("access"),
            );
            assert_eq!(x["size"].as_u64(), Some(0), "Xen records no access size: {x}");
            *ours.entry(key.clone()).or_default() += x["count"].as_u64().unwrap();
            ours_ns.insert(key, x["total_ns"].as_u64().unwrap());
        }
    }
    let mut truth = Cells::new();
    for r in &g.records {
        let field = |n: &str| r.fields.iter().find(|f| f.0 == n).map(|f| f.1).unwrap();
        let (code, kind, target, access) = match r.class {
            ClassId::hvm_ioport_read => (30, "io", field("port"), "read"),
            ClassId::hvm_ioport_write => (30, "io", field("port"), "write"),
            // The generator's qualification 0x181 is a read.
            ClassId::hvm_npf => (48, "mmio", field("gpa"), "read"),
            ClassId::hvm_msr_read => (31, "msr", field("msr"), "read"),
            ClassId::hvm_msr_write => (32, "msr", field("msr"), "write"),
            _ => continue,
        };
        let key = (field("domid"), field("vcpu"), code, kind.to_string(), target, access.to_string());
        *truth.entry(key).or_default() += 1;
    }
    assert!(truth.keys().filter(|k| k.3 == "io").count() > 50, "{} cells", truth.len());
    assert!(truth.keys().any(|k| k.3 == "mmio") && truth.keys().any(|k| k.3 == "msr"), "{} cells", truth.len());
    assert_eq!(ours, truth, "the exit details are the generator's handler records");

    if Command::new("xenalyze").arg("--help").output().is_err() {
        println!("SKIP: analyze_details_imported_exits_by_port_and_address: xenalyze not installed");
        return;
    }
    let o = Command::new("xenalyze").arg("--summary").arg(&input).output().unwrap();
    assert!(o.status.success(), "xenalyze failed: {}", String::from_utf8_lossy(&o.stderr));
    let theirs = hvtrace_xen::xenalyze::io_ports(&String::from_utf8_lossy(&o.stdout)).unwrap();
    let ours_io: Vec<_> = ours.iter().filter(|(k, _)| k.3 == "io").collect();
    assert_eq!(ours_io.len(), theirs.len(), "the same (domain, vCPU, port, direction) cells as xenalyze");
    let mut worst = 0f64;
    for (k, n) in &ours_io {
        let (xn, xcyc) = theirs[&(k.0 as u32, k.1 as u32, k.4 as u16, k.5.as_str())];
        assert_eq!(**n, xn, "exits of d{}v{} port {:#x} {}", k.0, k.1, k.4, k.5);
        // xenalyze prints the average rounded down: totals agree to count cycles.
        let (ns, xns) = (ours_ns[*k] as f64, xcyc as f64 / 2.4);
        worst = worst.max((ns - xns).abs() / xns);
        assert!(
            (ns - xns).abs() <= 0.005 * xns,
            "d{}v{} port {:#x} {}: {ns} ns against xenalyze's {xns}",
            k.0,
            k.1,
            k.4,
            k.5
        );
    }
    let n = ours_io.len();
    println!("{n} (domain, vCPU, port, direction) cells: counts equal, largest time difference {:.5} %", worst * 100.0);
}
