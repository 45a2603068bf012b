//! Generated xentrace files (known content) imported, then read back by
//! babeltrace2: every record with its timestamp and field values, the
//! discarded counts where xentrace lost records, the cut last record.

mod common;

use std::collections::BTreeMap;

use common::*;
use hvtrace_xen::classes::CLASSES;
use hvtrace_xen::gen::{put_record, put_window, Scenario};
use hvtrace_xen::{ClassId, ImportOptions};

/// An event as babeltrace2 read it: timestamp, name, fields.
type Event = (u64, String, Vec<(String, u64)>);

#[test]
fn every_generated_record_reaches_babeltrace2_with_its_fields() {
    let test = "every_generated_record_reaches_babeltrace2_with_its_fields";
    let g = Scenario { cut: 7, ..Scenario::default() }.generate();
    // The scenario covers what the issue lists.
    assert!(g.wrap_fillers > 0 && g.windows_across_wrap > 0, "a window straddles a wrap");
    assert!(g.lost[0] > 0, "a lost-records record");
    assert!(g.cut > 0, "a truncated last record");
    let dir = tempfile::tempdir().unwrap();
    let (out, r) = import_generated(dir.path(), &g);
    assert_eq!(r.records(), g.records.len() as u64);
    assert_eq!(r.cpus.values().map(|c| c.wrap_fillers).sum::<u64>(), g.wrap_fillers);
    assert_eq!(r.cpus.values().map(|c| c.windows).sum::<u64>(), g.windows);
    assert_eq!(r.count(ClassId::xen_raw), 0, "every generated record has a typed class");
    let cut = r.cut.expect("the cut last record is reported");
    assert_eq!((cut.cpu, cut.missing), (Some(0), g.cut as u64));
    if !have_bt2(test) {
        return;
    }
    let mut events: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
    let mut discarded: BTreeMap<u32, u64> = BTreeMap::new();
    for m in read_bt2(&out) {
        match m {
            Msg::Event(cpu, ts, name, f) => events.entry(cpu).or_default().push((ts, name, f)),
            Msg::Discarded(cpu, n) => *discarded.entry(cpu).or_default() += n,
        }
    }
    for (cpu, lost) in g.lost.iter().enumerate() {
        assert_eq!(discarded.get(&(cpu as u32)).copied().unwrap_or(0), *lost, "discarded events of CPU {cpu}");
    }
    let mut checked_fields = 0;
    for cpu in 0..3 {
        let want: Vec<_> = g.records.iter().filter(|e| e.cpu == cpu).collect();
        let got = &events[&cpu];
        assert_eq!(got.len(), want.len(), "events of CPU {cpu}");
        for (i, (w, (ts, name, fields))) in want.iter().zip(got).enumerate() {
            assert_eq!((*ts, name.as_str()), (w.ts, CLASSES[w.class as usize].name), "CPU {cpu} event {i}");
            for (k, v) in &w.fields {
                let f = fields.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("{name} has no field {k}"));
                assert_eq!(f.1, *v, "CPU {cpu} event {i} ({name}) field {k}");
                checked_fields += 1;
            }
        }
    }
    assert!(checked_fields > 5000, "{checked_fields} field values compared");
}

/// Imports a file of one window of `cpu` holding `recs`.
fn import_window(
    cpu: i32,
    recs: &[u8],
    opts: ImportOptions,
) -> (tempfile::TempDir, std::path::PathBuf, hvtrace_xen::ImportReport) {
    let mut file = Vec::new();
    put_window(&mut file, cpu, recs.len() as u32);
    file.extend_from_slice(recs);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.xentrace");
    std::fs::write(&input, &file).unwrap();
    let out = dir.path().join("trace");
    let r = hvtrace_xen::import_file(&input, &out, opts).unwrap();
    (dir, out, r)
}

#[test]
fn records_of_no_class_become_xen_raw_with_their_words() {
    let mut recs = Vec::new();
    put_record(&mut recs, 0x0002_8001, Some(1000), &[7]);
    put_record(&mut recs, 0x00a0_1234, Some(2000), &[3, 4]);
    // A known event with a word count its class does not have.
    put_record(&mut recs, 0x0002_800a, None, &[1, 2]);
    let (_dir, out, r) = import_window(5, &recs, ImportOptions::default());
    assert_eq!((r.count(ClassId::sched_dom_add), r.count(ClassId::xen_raw), r.unexpected_words), (1, 2, 1));
    assert_eq!(r.cpus.keys().copied().collect::<Vec<_>>(), [5]);
    if !have_bt2("records_of_no_class_become_xen_raw_with_their_words") {
        return;
    }
    let msgs = read_bt2(&out);
    let raw: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Event(5, ts, n, f) if n == "xen_raw" => Some((*ts, f.clone())),
            _ => None,
        })
        .collect();
    let f =
        |e: u64, data: u64| vec![("event".to_string(), e), ("_data_length".to_string(), 8), ("data".to_string(), data)];
    // `data` is read back as the little-endian integer of its bytes.
    assert_eq!(raw, [(2000, f(0x00a0_1234, 3 | 4 << 32)), (2000, f(0x0002_800a, 1 | 2 << 32))]);
}

#[test]
fn the_clock_is_declared_with_the_given_frequency() {
    let g = Scenario { rounds: 2, lost: 0, ..Scenario::default() }.generate();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.xentrace");
    std::fs::write(&input, &g.bytes).unwrap();
    let out = dir.path().join("trace");
    let opts = ImportOptions { cpu_hz: Some(3_000_000_000), ..ImportOptions::default() };
    let r = hvtrace_xen::import_file(&input, &out, opts).unwrap();
    assert!(!r.cpu_hz_assumed);
    let md = std::fs::read_to_string(out.join("metadata")).unwrap();
    assert!(md.contains("freq = 3000000000;"), "{md}");
    let r = hvtrace_xen::import_file(&input, &dir.path().join("t2"), ImportOptions::default()).unwrap();
    assert!(r.cpu_hz_assumed && r.cpu_hz == 2_400_000_000);
}

#[test]
fn svm_hosts_get_svm_exit_names() {
    let mut recs = Vec::new();
    // 0x7b: VMEXIT_IOIO (123); 0x400: VMEXIT_NPF.
    put_record(&mut recs, 0x0008_1102, Some(10), &[123, 0x1000, 0]);
    put_record(&mut recs, 0x0008_1102, Some(20), &[0x400, 0x2000, 0]);
    let opts = ImportOptions { vendor: hvtrace_xen::Vendor::Svm, ..ImportOptions::default() };
    let (_dir, out, r) = import_window(0, &recs, opts);
    assert_eq!((r.count(ClassId::svm_exit64), r.count(ClassId::vmx_exit64)), (2, 0));
    if std::process::Command::new("babeltrace2").arg("--version").output().is_err() {
        println!("SKIP: svm_hosts_get_svm_exit_names: babeltrace2 not installed");
        return;
    }
    let bt = std::process::Command::new("babeltrace2").arg(&out).output().unwrap();
    let text = String::from_utf8(bt.stdout).unwrap();
    assert!(text.contains("svm_exit64") && text.contains("\"IOIO\"") && text.contains("\"NPF\""), "{text}");
}

#[test]
fn an_imported_trace_passes_hvtrace_check() {
    let g = Scenario { rounds: 200, cut: 3, ..Scenario::default() }.generate();
    let dir = tempfile::tempdir().unwrap();
    let (out, r) = import_generated(dir.path(), &g);
    assert!(r.cpus.values().all(|c| c.packets > 1), "several packets per stream: {:?}", r.cpus);
    let report = hvtrace_reader::check(&out).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.records(), g.records.len() as u64);
}
