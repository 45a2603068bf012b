//! `kvm_exit` / `kvm_entry` (which never fire on this machine's nested
//! KVM-PVM) decoded from their recorded format files and synthetic pages
//! built the way the kernel writes them: time extensions, the long record
//! form, lost-event counts. The packets are checked with hvtrace-core's
//! packet decoder, the events with babeltrace2 (python3-bt2) when present.

use std::path::Path;
use std::process::Command;

use hvtrace_core::decode::packet_info;
use hvtrace_core::metadata::{ClockDesc, TraceDesc};
use hvtrace_ftrace::format::parse_format;
use hvtrace_ftrace::page::synth::PageBuilder;
use hvtrace_ftrace::page::Missed;
use hvtrace_ftrace::{EventTable, KernelStream, KERNEL_STREAM_ID};
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

fn table() -> EventTable {
    EventTable::new(vec![
        parse_format("kvm", &fixture("kvm_exit.format")).unwrap(),
        parse_format("kvm", &fixture("kvm_entry.format")).unwrap(),
        parse_format("kvm", &fixture("kvm_userspace_exit.format")).unwrap(),
    ])
    .unwrap()
}

/// A record laid out by hand at the offsets the format files state
/// (not through this crate's parser): common fields, then `fields`.
fn record(len: usize, kernel_id: u16, pid: i32, fields: &[(usize, &[u8])]) -> Vec<u8> {
    let mut r = vec![0u8; len];
    r[0..2].copy_from_slice(&kernel_id.to_le_bytes());
    r[2] = 1; // common_flags
    r[3] = 2; // common_preempt_count
    r[4..8].copy_from_slice(&pid.to_le_bytes());
    for (at, v) in fields {
        r[*at..*at + v.len()].copy_from_slice(v);
    }
    r
}

/// kvm_exit (ID 103): exit_reason@8 u32, guest_rip@16 u64, isa@24 u32,
/// info1@32, info2@40 u64, intr_info@48, error_code@52, vcpu_id@56 u32, requests@64 u64.
fn kvm_exit(pid: i32, reason: u32, rip: u64, vcpu: u32) -> Vec<u8> {
    record(
        72,
        103,
        pid,
        &[
            (8, &reason.to_le_bytes()),
            (16, &rip.to_le_bytes()),
            (24, &1u32.to_le_bytes()),
            (32, &0x1111u64.to_le_bytes()),
            (40, &0x2222u64.to_le_bytes()),
            (48, &0x80000030u32.to_le_bytes()),
            (52, &7u32.to_le_bytes()),
            (56, &vcpu.to_le_bytes()),
            (64, &u64::MAX.to_le_bytes()),
        ],
    )
}

/// kvm_entry (ID 115): vcpu_id@8 u32, rip@16 u64, immediate_exit@24 bool, intr_info@28, error_code@32 u32.
fn kvm_entry(pid: i32, vcpu: u32, rip: u64) -> Vec<u8> {
    record(40, 115, pid, &[(8, &vcpu.to_le_bytes()), (16, &rip.to_le_bytes()), (24, &[1]), (28, &5u32.to_le_bytes())])
}

const T0: u64 = 5_000_000_000;

/// Two pages: exits and entries of two vCPUs, a gap over 2^27 cycles, a
/// record in the long form; 5 events lost before the second page, 4 more
/// counted by the kernel at the end. Returns the stream file's bytes.
fn stream() -> (Vec<u8>, KernelStream) {
    let t = table();
    let p1 = PageBuilder::new(T0)
        .record(T0 + 10, &kvm_entry(100, 0, 0xfff0), false)
        .record(T0 + 500, &kvm_exit(100, 30, 0xfff2, 0), false)
        .record(T0 + 600 + (3 << 27), &kvm_entry(101, 1, 0x1000), true)
        .build(4096);
    let p2 = PageBuilder::new(T0 + (4 << 27))
        .missed(Missed::Count(5))
        .record(T0 + (4 << 27) + 1, &kvm_exit(101, 48, 0x1004, 1), false)
        .build(4096);
    let mut s = KernelStream::new(3, [9; 16]);
    let mut out = Vec::new();
    s.page(&t, &p1, 0, &mut out);
    s.page(&t, &p2, 0, &mut out);
    s.finish(9, 0, &mut out);
    (out, s)
}

/// A trace directory holding only the kernel stream `name` (uuid 9…, a
/// TSC of `freq` Hz).
fn trace_dir(t: &EventTable, freq: u64, name: &str, stream: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let desc = TraceDesc {
        uuid: [9; 16],
        hostname: "synthetic",
        domain: "kvm-kernel",
        tracer_version: (0, 1, 0),
        clock: ClockDesc { name: "tsc", description: "TSC", freq, offset_s: 0, offset: 0, precision: 0 },
    };
    std::fs::write(dir.path().join("metadata"), t.standalone_metadata(&desc)).unwrap();
    std::fs::write(dir.path().join(name), stream).unwrap();
    dir
}

#[test]
fn synthetic_pages_become_packets_of_the_kernel_stream_with_their_losses() {
    let (bytes, s) = stream();
    let mut at = 0;
    let mut packets = Vec::new();
    while at < bytes.len() {
        let p = packet_info(&bytes[at..]).unwrap();
        at += p.packet_len;
        packets.push(p);
    }
    assert_eq!(at, bytes.len());
    let seen: Vec<_> =
        packets.iter().map(|p| (p.stream_id, p.cpu_id, p.seq, p.timestamp_begin, p.events_discarded)).collect();
    assert_eq!(
        seen,
        [
            (KERNEL_STREAM_ID, 3, 0, T0, 0),
            (KERNEL_STREAM_ID, 3, 1, T0 + (4 << 27), 5),
            (KERNEL_STREAM_ID, 3, 2, T0 + (4 << 27) + 1, 9),
        ]
    );
    assert_eq!(packets[0].timestamp_end, T0 + 600 + (3 << 27));
    let t = table();
    let c = s.counts();
    assert_eq!((c.records, c.discarded, c.packets, c.bad_records, c.bad_pages), (4, 9, 3, 0, 0));
    assert_eq!(c.by_event[t.id_of("kvm_exit").unwrap() as usize], 2);
    assert_eq!(c.by_event[t.id_of("kvm_entry").unwrap() as usize], 2);
    assert_eq!(c.by_thread[&101], {
        let mut v = vec![0; 3];
        v[t.id_of("kvm_exit").unwrap() as usize] = 1;
        v[t.id_of("kvm_entry").unwrap() as usize] = 1;
        v
    });
}

#[test]
fn an_unknown_or_short_record_is_counted_as_discarded_not_written() {
    let t = table();
    let page = PageBuilder::new(T0)
        .record(T0 + 1, &record(16, 999, 1, &[]), false)
        .record(T0 + 2, &kvm_exit(1, 30, 0, 0)[..40], false)
        .record(T0 + 3, &kvm_entry(1, 0, 0), false)
        .build(4096);
    let mut s = KernelStream::new(0, [0; 16]);
    let mut out = Vec::new();
    s.page(&t, &page, 0, &mut out);
    let c = s.counts();
    assert_eq!((c.records, c.bad_records, c.discarded), (1, 2, 2));
    assert_eq!(packet_info(&out).unwrap().events_discarded, 2);
}

#[test]
fn babeltrace2_reads_kvm_exit_and_kvm_entry_as_the_format_files_define_them() {
    let bt2 = Command::new("/usr/bin/python3").args(["-c", "import bt2"]).output();
    if !bt2.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIP: python3-bt2 not installed: the synthetic trace was not read by babeltrace2");
        return;
    }
    let dir = trace_dir(&table(), 2_000_000_000, "kernel_3", &stream().0);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ctf-events.py");
    let out = Command::new("/usr/bin/python3").arg(script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "bt2: {}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ctx = |pid: i64| json!({"common_flags": 1, "common_preempt_count": 2, "common_pid": pid});
    let exit = |pid, ts: u64, reason: u64, rip: u64, vcpu: u64| {
        json!({"ts": ts, "name": "kvm_exit", "stream": 1, "cpu": 3, "ctx": ctx(pid), "f": {
            "exit_reason": reason, "guest_rip": rip, "isa": 1, "info1": 0x1111, "info2": 0x2222,
            "intr_info": 0x80000030u32, "error_code": 7, "vcpu_id": vcpu, "requests": u64::MAX}})
    };
    let entry = |pid, ts: u64, vcpu: u64, rip: u64| {
        json!({"ts": ts, "name": "kvm_entry", "stream": 1, "cpu": 3, "ctx": ctx(pid), "f": {
            "vcpu_id": vcpu, "rip": rip, "immediate_exit": 1, "intr_info": 5, "error_code": 0}})
    };
    let want = vec![
        entry(100, T0 + 10, 0, 0xfff0),
        exit(100, T0 + 500, 30, 0xfff2, 0),
        entry(101, T0 + 600 + (3 << 27), 1, 0x1000),
        json!({"discarded": 5, "stream": 1, "cpu": 3}),
        exit(101, T0 + (4 << 27) + 1, 48, 0x1004, 1),
        json!({"discarded": 4, "stream": 1, "cpu": 3}),
    ];
    assert_eq!(got, want);
}

/// babeltrace2's events of the trace at `dir` (python3-bt2), or its error.
fn bt2_events(dir: &Path) -> Result<Vec<Value>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ctf-events.py");
    let out = Command::new("/usr/bin/python3").arg(script).arg(dir).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

/// `hvtrace check` and `check --repair` (hvtrace-reader) take a kernel
/// stream as any other: its damage found and named, its intact packets
/// kept; and the walk `analyze` shares reads on past the damage.
#[test]
fn a_damaged_kernel_stream_is_found_by_check_and_repaired_for_babeltrace2() {
    use hvtrace_core::ctf::packet;
    let t = table();
    let (bytes, _) = stream();
    let ok = trace_dir(&t, 2_000_000_000, "kernel_3", &bytes);
    let c = hvtrace_reader::check(ok.path()).unwrap();
    let [s] = &c.streams[..] else { panic!("{c:?}") };
    assert!(c.is_intact(), "{c:?}");
    assert_eq!((s.name.as_str(), s.report.packets.len(), s.report.records()), ("kernel_3", 3, 4));
    assert_eq!((s.report.events_discarded(), s.report.packet_size), (9, None));

    // The first packet's end before its begin; garbage after the last.
    let first_len = packet_info(&bytes).unwrap().packet_len;
    let mut bad = bytes.clone();
    bad[packet::TIMESTAMP_END..packet::TIMESTAMP_END + 8].copy_from_slice(&0u64.to_le_bytes());
    bad.extend_from_slice(&[0xee; 100]);
    let damaged = trace_dir(&t, 2_000_000_000, "kernel_3", &bad);
    let c = hvtrace_reader::check(damaged.path()).unwrap();
    assert!(!c.is_intact());
    let problems: Vec<_> = c.streams[0].report.problems.iter().map(|p| (p.offset, p.len, p.kind.code())).collect();
    assert_eq!(
        problems,
        [(0, first_len as u64, "timestamps-inverted"), (bytes.len() as u64, 100, "trailing-garbage")],
        "{c:?}"
    );
    assert_eq!(c.records(), 1, "the second packet's kvm_exit");

    // The walk skips the damage and reads the packets after it.
    let r = hvtrace_analysis::analyze(damaged.path(), &[&hvtrace_ftrace::MAPPING], &Default::default(), &mut |_| {})
        .unwrap();
    assert_eq!((r.events, r.events_discarded), (1, 9));
    assert!(r.warnings.iter().any(|w| w.starts_with("kernel_3: skipped bytes 0..")), "{:?}", r.warnings);

    // A cut last packet is found too.
    let cut = trace_dir(&t, 2_000_000_000, "kernel_3", &bytes[..bytes.len() - 10]);
    let c = hvtrace_reader::check(cut.path()).unwrap();
    let kinds: Vec<_> = c.streams[0].report.problems.iter().map(|p| p.kind.code()).collect();
    assert_eq!(kinds, ["cut-packet"]);

    // Metadata without the kernel's part: the stream is in babeltrace2's way.
    let md = std::fs::read_to_string(cut.path().join("metadata")).unwrap();
    let vmm_only = &md[..md.find(hvtrace_core::metadata::KERNEL_STREAMS_MARKER).unwrap()];
    std::fs::write(cut.path().join("metadata"), vmm_only).unwrap();
    let c = hvtrace_reader::check(cut.path()).unwrap();
    assert!(c.streams.is_empty() && !c.is_intact(), "{c:?}");
    assert_eq!(c.notes, [hvtrace_reader::DirNote::Undeclared("kernel_3".into())]);

    let out = tempfile::tempdir().unwrap();
    let repaired = out.path().join("repaired");
    let rep = hvtrace_reader::repair(damaged.path(), &repaired).unwrap();
    assert_eq!((rep.files.as_slice(), rep.packets, rep.records), (&["kernel_3".to_string()][..], 2, 1));
    let c = hvtrace_reader::check(&repaired).unwrap();
    assert!(c.is_intact(), "{c:?}");
    let bt2 = Command::new("/usr/bin/python3").args(["-c", "import bt2"]).output();
    if !bt2.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIP: python3-bt2 not installed: the repaired kernel stream was not read by babeltrace2");
        return;
    }
    assert!(bt2_events(damaged.path()).is_err(), "babeltrace2 reads the damaged stream");
    let names: Vec<_> = bt2_events(&repaired).unwrap().into_iter().filter_map(|e| e.get("name").cloned()).collect();
    assert_eq!(names, ["kvm_exit"]);
}

/// kvm_userspace_exit (ID 42): reason@8 u32, errno@12 i32.
fn kvm_userspace_exit(pid: i32, reason: u32) -> Vec<u8> {
    record(16, 42, pid, &[(8, &reason.to_le_bytes())])
}

/// The kvm_exit / kvm_entry path of the kernel/VMM split, on a synthetic
/// trace of one vCPU (clock 1 GHz: ticks are ns), read back through
/// hvtrace-reader by `hvtrace analyze`'s library: two I/O exits handed to
/// the VMM, one EPT violation the kernel handled alone.
#[test]
fn analyze_splits_kvm_exits_between_kernel_and_vmm_from_kvm_exit_and_kvm_entry() {
    let t = table();
    let page = PageBuilder::new(T0)
        .record(T0, &kvm_entry(100, 0, 0x1000), false)
        .record(T0 + 1000, &kvm_exit(100, 30, 0x1002, 0), false)
        .record(T0 + 1400, &kvm_userspace_exit(100, 2), false)
        .record(T0 + 5400, &kvm_entry(100, 0, 0x1004), false)
        .record(T0 + 6000, &kvm_exit(100, 48, 0x1006, 0), false)
        .record(T0 + 6250, &kvm_entry(100, 0, 0x1006), false)
        .record(T0 + 7000, &kvm_exit(100, 30, 0x1008, 0), false)
        .record(T0 + 7300, &kvm_userspace_exit(100, 2), false)
        .record(T0 + 9300, &kvm_entry(100, 0, 0x100a), true)
        .build(4096);
    let mut s = KernelStream::new(0, [9; 16]);
    let mut bytes = Vec::new();
    s.page(&t, &page, 0, &mut bytes);
    s.finish(0, 0, &mut bytes);
    let dir = trace_dir(&t, 1_000_000_000, "kernel_0", &bytes);
    // Damage after the packet: named, and the packet's records still read.
    let mut damaged = bytes.clone();
    damaged.extend_from_slice(&[0xee; 100]);
    let bad = trace_dir(&t, 1_000_000_000, "kernel_0", &damaged);
    let r =
        hvtrace_analysis::analyze(bad.path(), &[&hvtrace_ftrace::MAPPING], &Default::default(), &mut |_| {}).unwrap();
    assert_eq!(r.events, 9);
    assert!(r.warnings.iter().any(|w| w.contains("kernel_0: damage at byte")), "{:?}", r.warnings);
    let r =
        hvtrace_analysis::analyze(dir.path(), &[&hvtrace_ftrace::MAPPING], &Default::default(), &mut |_| {}).unwrap();
    assert_eq!(r.event_sets, ["kvm-kernel"]);
    assert_eq!((r.events, r.events_discarded), (9, 0));
    let [v] = &r.vcpus[..] else { panic!("one vCPU: {:?}", r.vcpus) };
    // The exits table: exit to entry, whoever handled it.
    let exits: Vec<_> = v.exits.iter().map(|x| (x.reason.as_str(), x.count, x.total_ns)).collect();
    assert_eq!(exits, [("IO_INSTRUCTION", 2, 4400 + 2300), ("EPT_VIOLATION", 1, 250)]);
    // The split: the kernel until kvm_userspace_exit, the VMM until kvm_entry.
    let k = v.kernel_split.as_ref().unwrap();
    let to_vmm: Vec<_> = k
        .to_vmm
        .iter()
        .map(|x| (x.reason.as_str(), x.code, x.count, x.kernel_ns, x.kernel_timed, x.vmm_ns, x.vmm_timed))
        .collect();
    assert_eq!(to_vmm, [("io", 2, 2, 400 + 300, 2, 4000 + 2000, 2)]);
    assert!((k.to_vmm[0].kernel_pct - 100.0 * 700.0 / 6700.0).abs() < 1e-9);
    let in_kernel: Vec<_> = k.in_kernel.iter().map(|x| (x.reason.as_str(), x.count, x.total_ns, x.timed)).collect();
    assert_eq!(in_kernel, [("EPT_VIOLATION", 1, 250, 1)]);
    assert_eq!(k.exits_in_kernel, 1);
    // The same figures in the text tables and in kernel_split.csv.
    let mut text = Vec::new();
    hvtrace_analysis::write_text(&r, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    let row = |first: &str| rows.iter().find(|r| r.first() == Some(&first)).cloned();
    assert_eq!(row("io"), Some(vec!["io", "2", "2", "0.70", "2", "6.00", "2", "10.45%"]), "{text}");
    assert_eq!(row("EPT_VIOLATION").map(|r| r.len()), Some(11), "the exits table's row: {text}");
    assert!(text.contains("Exits that never reached user space: 1"), "{text}");
    let in_kernel_row = rows.iter().rfind(|r| r.first() == Some(&"EPT_VIOLATION")).cloned();
    assert_eq!(in_kernel_row, Some(vec!["EPT_VIOLATION", "48", "1", "0.25", "1"]), "{text}");
    let csv = tempfile::tempdir().unwrap();
    hvtrace_analysis::write_csv(&r, csv.path()).unwrap();
    let split = std::fs::read_to_string(csv.path().join("kernel_split.csv")).unwrap();
    assert_eq!(
        split.lines().collect::<Vec<_>>(),
        [
            "domain,vcpu,side,reason,code,count,kernel_ns,kernel_timed,vmm_ns,vmm_timed",
            "0,0,to_vmm,io,2,2,700,2,6000,2",
            "0,0,in_kernel,EPT_VIOLATION,48,1,250,1,0,0",
        ]
    );
    // From inside the first exit's kernel half: both hand-overs are in the
    // window, so both are counted and timed whole (counted out and timed
    // in, the first one made vmm_timed exceed count).
    let opts = hvtrace_analysis::Options { from_ns: Some(1200), to_ns: None, ..Default::default() };
    let r = hvtrace_analysis::analyze(dir.path(), &[&hvtrace_ftrace::MAPPING], &opts, &mut |_| {}).unwrap();
    let x = &r.vcpus[0].kernel_split.as_ref().unwrap().to_vmm[0];
    assert_eq!((x.count, x.kernel_ns, x.kernel_timed, x.vmm_ns, x.vmm_timed), (2, 700, 2, 6000, 2));
}

/// A thread's KVM events before it is known as a vCPU (here: before its
/// first `kvm_entry`, which names it) are in no vCPU's figures, and
/// `analyze` counts them in text and JSON: none is dropped silently.
#[test]
fn events_of_a_thread_not_yet_known_as_a_vcpu_are_counted() {
    let t = table();
    let page = PageBuilder::new(T0)
        .record(T0, &kvm_userspace_exit(300, 2), false)
        .record(T0 + 100, &kvm_userspace_exit(300, 2), false)
        .record(T0 + 200, &kvm_entry(300, 1, 0x1000), false)
        .record(T0 + 300, &kvm_exit(300, 30, 0x1002, 1), false)
        .record(T0 + 400, &kvm_userspace_exit(300, 2), false)
        .record(T0 + 900, &kvm_entry(300, 1, 0x1004), false)
        // Never named: no kvm_entry, no vCPU thread name.
        .record(T0 + 1000, &kvm_userspace_exit(301, 6), false)
        .build(4096);
    let mut s = KernelStream::new(0, [9; 16]);
    let mut bytes = Vec::new();
    s.page(&t, &page, 0, &mut bytes);
    let dir = trace_dir(&t, 1_000_000_000, "kernel_0", &bytes);
    let r =
        hvtrace_analysis::analyze(dir.path(), &[&hvtrace_ftrace::MAPPING], &Default::default(), &mut |_| {}).unwrap();
    assert_eq!((r.events, r.events_unattributed), (7, 3));
    let [v] = &r.vcpus[..] else { panic!("{:?}", r.vcpus) };
    let handed: Vec<_> = v.kernel_split.as_ref().unwrap().to_vmm.iter().map(|x| (x.count, x.vmm_ns)).collect();
    assert_eq!(handed, [(1, 500)], "only the hand-over after the thread was known");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["events_unattributed"], 3);
    let mut text = Vec::new();
    hvtrace_analysis::write_text(&r, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("3 events of threads not yet known as vCPUs"), "{text}");
}
