//! `hvtrace analyze` through the built binary: on a KVM micro-VMM trace its
//! exit counts per vCPU and reason equal the VMM's own counts and the
//! `vm_exit` records babeltrace2 decodes; on a simulated Xen trace it writes
//! the tables, the JSON object and the CSV files.

use std::collections::BTreeMap;
use std::path::PathBuf;

mod views;
use views::{babeltrace_exits, demo, hvtrace, last_json, stderr};

fn tempdir(what: &str) -> PathBuf {
    views::tempdir("analyze", what)
}

#[test]
fn kvm_exits_per_vcpu_and_reason_match_the_vmm_and_babeltrace2() {
    if let Err(why) = hvtrace_kvm::kvm_available() {
        eprintln!("SKIP: /dev/kvm not usable: {why}");
        return;
    }
    let tmp = tempdir("kvm");
    let dir = tmp.join("trace");
    let d = dir.to_str().unwrap();
    // Small sub-buffers: packets enough to read in time windows.
    let out =
        hvtrace(&["kvm", "--output", d, "--vcpus", "2", "--iterations", "300", "--subbuf-size", "4096", "--json"]);
    assert!(out.status.success(), "hvtrace kvm failed: {}", stderr(&out));
    let vmm = last_json(&out);
    assert_eq!(vmm["events_discarded"].as_u64(), Some(0), "the comparison needs a lossless trace");

    let out = hvtrace(&["analyze", d, "--json"]);
    assert!(out.status.success(), "hvtrace analyze failed: {}", stderr(&out));
    let a = last_json(&out);
    assert_eq!(a["event_sets"], serde_json::json!(["kvm"]));
    // (vcpu, code) → (name, count) from analyze.
    let mut analyzed = BTreeMap::new();
    for v in a["vcpus"].as_array().unwrap() {
        assert_eq!(v["domain"].as_u64(), Some(0), "the KVM VMM is domain 0");
        for x in v["exits"].as_array().unwrap() {
            let key = (v["vcpu"].as_u64().unwrap(), x["code"].as_u64().unwrap());
            analyzed.insert(key, (x["reason"].as_str().unwrap().to_string(), x["count"].as_u64().unwrap()));
        }
    }
    // The VMM's own counts.
    let mut counted = BTreeMap::new();
    for v in vmm["per_vcpu"].as_array().unwrap() {
        for (code, n) in v["exits_by_reason"].as_object().unwrap() {
            counted.insert((v["vcpu"].as_u64().unwrap(), code.parse::<u64>().unwrap()), n.as_u64().unwrap());
        }
    }
    assert!(counted.len() >= 2 * 3, "io, mmio and hlt exits on both vCPUs: {counted:?}");
    let analyzed_counts: BTreeMap<_, _> = analyzed.iter().map(|(k, (_, n))| (*k, *n)).collect();
    assert_eq!(analyzed_counts, counted, "analyze vs the VMM's own counts");
    assert_eq!(analyzed[&(0, 2)].0, "io");
    assert_eq!(analyzed[&(1, 6)].0, "mmio");

    if let Some(bt) = babeltrace_exits(&dir) {
        let by_name: BTreeMap<_, _> = analyzed.iter().map(|((v, _), (name, n))| ((*v, name.clone()), *n)).collect();
        assert_eq!(by_name, bt, "analyze vs babeltrace2's vm_exit records");
    }
    views::same_on_every_thread_count(&dir, &[], true);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_sim_trace_gives_tables_json_and_csv() {
    let tmp = tempdir("sim");
    let dir = demo(&tmp, &["--cpus", "2", "--events-per-cpu", "20000"]);
    let d = dir.to_str().unwrap();

    let csv = tmp.join("csv");
    let out = hvtrace(&["analyze", d, "--csv", csv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["Event sets: xen", "VM-EXIT", "Samples%", "runnable", "  wake", "lost", "Per pCPU"] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    for f in ["cpus", "event_classes", "exits", "exit_details", "runstates", "hypercalls", "guest_events", "pcpus"] {
        let body = std::fs::read_to_string(csv.join(format!("{f}.csv"))).unwrap();
        assert!(body.lines().count() > 1, "{f}.csv holds no row");
    }

    let out = hvtrace(&["analyze", d, "--json"]);
    let j = last_json(&out);
    assert_eq!(j["events"].as_u64(), Some(40_000));
    let exits: u64 = j["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["exits"].as_array().unwrap().iter().map(|x| x["count"].as_u64().unwrap()))
        .sum();
    let vm_exit = j["event_classes"].as_array().unwrap().iter().find(|c| c["name"] == "vm_exit").unwrap();
    assert_eq!(Some(exits), vm_exit["count"].as_u64(), "every vm_exit record is an exit of some vCPU");

    let out = hvtrace(&["analyze", d, "--from", "2s", "--to", "1s"]);
    assert!(!out.status.success() && stderr(&out).contains("empty window"), "{}", stderr(&out));
    let out = hvtrace(&["analyze", tmp.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("not a trace directory"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&tmp);
}

hvtrace_core::events! {
    /// A VMM's own events, for the grown-metadata trace.
    pub mod vmm ("vmm") {
        /// A periodic event.
        fn beat(n: u64);
    }
}

/// Issue 16: event classes registered while a consumer records are appended
/// to `metadata` mid-session; `hvtrace analyze` reads that trace whole, and
/// counts per class what was recorded (and what babeltrace2 decodes).
#[test]
fn a_trace_whose_metadata_grew_mid_session_is_analyzed_whole() {
    use hvtrace_core::{EventSet, Field, Sink};
    use hvtrace_proto::{ChannelConfig, Mode, Request};
    let tmp = tempdir("grown");
    let sock = tmp.join("ctl.sock");
    let mut cfg = hvtrace_host::HostConfig::new(&sock, "test");
    cfg.cpus = vec![0];
    cfg.max_cpus = 1;
    let host = hvtrace_host::Host::serve(cfg, vmm::Events::EVENTS).unwrap();
    let mut ctl = hvtrace_ctl::Client::connect(&sock, Some(std::time::Duration::from_secs(20))).unwrap();
    ctl.simple(&Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 8, mode: Mode::Discard })).unwrap();
    ctl.simple(&Request::Start).unwrap();
    let dir = tmp.join("trace");
    let consumer = hvtrace_consumer::Consumer::attach(&hvtrace_consumer::ConsumerConfig::new(&sock, &dir)).unwrap();
    let run = std::thread::spawn(move || consumer.run());
    let w = host.writer_for_cpu(0);
    let mut want = BTreeMap::new();
    for round in 0..4u64 {
        let name = format!("device{round}");
        let id = host.register_event(&name, &[("value", <u64 as Field>::KIND)]).unwrap();
        for n in 0..=round * 100 {
            w.record(id, 8, |e| n.encode(e)).unwrap();
            vmm::beat(&w, n).unwrap();
        }
        want.insert(name, round * 100 + 1);
        *want.entry("beat".to_string()).or_insert(0) += round * 100 + 1;
        ctl.simple(&Request::Flush).unwrap();
    }
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    assert!(report.is_whole() && report.events_discarded() == 0, "{report}");
    // Four classes, taken in one to four appends (as the consumer woke).
    assert!((1..=4).contains(&report.metadata.appends), "{:?}", report.metadata);

    let out = hvtrace(&["analyze", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "hvtrace analyze failed: {}", stderr(&out));
    let a = last_json(&out);
    assert_eq!(a["warnings"], serde_json::json!([]));
    let counted: BTreeMap<String, u64> = a["event_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["count"].as_u64().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(counted, want, "analyze per class vs what was recorded");
    match std::process::Command::new("babeltrace2").arg(&dir).output() {
        Ok(o) => {
            assert!(o.status.success(), "babeltrace2: {}", String::from_utf8_lossy(&o.stderr));
            let mut bt = BTreeMap::new();
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let head = line.split_once(": ").unwrap().0;
                *bt.entry(head.rsplit(' ').next().unwrap().to_string()).or_insert(0u64) += 1;
            }
            assert_eq!(bt, want, "babeltrace2 per class vs what was recorded");
        }
        Err(e) => println!("SKIP: babeltrace2 not runnable ({e})"),
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
