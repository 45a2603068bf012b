//! Decoding checked against the kernel's own rendering of the same events:
//! a KVM guest runs in this process under a private instance; the
//! instance's `trace` file (the kernel's text, read without consuming) is
//! read first, then the same events are consumed through `trace_pipe_raw`,
//! written as CTF, decoded by babeltrace2 (python3-bt2), and rendered with
//! each event's print format. Every line of the kernel's text must be the
//! rendering of the CTF event at the same place: same CPU, thread, TSC
//! timestamp and fields. Needs root, tracefs, /dev/kvm and python3-bt2.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use hvtrace_core::metadata::{ClockDesc, TraceDesc};
use hvtrace_ftrace::{InstanceConfig, KernelSource};
use hvtrace_kvm::{NullObserver, Vmm, VmmConfig, Workload};
use serde_json::Value;

fn ready() -> Result<(), String> {
    hvtrace_kvm::kvm_available()?;
    let st = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !st.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")) {
        return Err("not root".into());
    }
    let bt2 = Command::new("/usr/bin/python3").args(["-c", "import bt2"]).output();
    if !bt2.is_ok_and(|o| o.status.success()) {
        return Err("python3-bt2 not installed".into());
    }
    Ok(())
}

/// `KVM_EXIT_*` names by number, as `kvm_userspace_exit` prints them.
const EXIT_NAMES: &[&str] = &[
    "UNKNOWN",
    "EXCEPTION",
    "IO",
    "HYPERCALL",
    "DEBUG",
    "HLT",
    "MMIO",
    "IRQ_WINDOW_OPEN",
    "SHUTDOWN",
    "FAIL_ENTRY",
    "INTR",
    "SET_TPR",
    "TPR_ACCESS",
    "S390_SIEIC",
    "S390_RESET",
    "DCR",
    "NMI",
    "INTERNAL_ERROR",
    "OSI",
    "PAPR_HCALL",
    "S390_UCONTROL",
    "WATCHDOG",
    "S390_TSCH",
    "EPR",
    "SYSTEM_EVENT",
    "S390_STSI",
    "IOAPIC_EOI",
    "HYPERV",
    "ARM_NISV",
    "X86_RDMSR",
    "X86_WRMSR",
];

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not unsigned: {v}"))
}

fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// The event's text as the kernel's print format (`format` file) renders it.
fn render(name: &str, f: &Value) -> String {
    match name {
        "kvm_pio" => format!(
            "pio_{} at 0x{:x} size {} count {} val 0x{:x} {}",
            if u(&f["rw"]) != 0 { "write" } else { "read" },
            u(&f["port"]),
            u(&f["size"]),
            u(&f["count"]),
            u(&f["val"]),
            if u(&f["count"]) > 1 { "(...)" } else { "" }
        ),
        "kvm_userspace_exit" => {
            let (reason, errno) = (u(&f["reason"]), i(&f["errno"]));
            let what = match errno {
                -4 => "restart".to_string(),
                e if e < 0 => "error".to_string(),
                _ => format!("KVM_EXIT_{}", EXIT_NAMES.get(reason as usize).unwrap_or(&"?")),
            };
            format!("reason {what} ({})", if errno < 0 { -errno } else { reason as i64 })
        }
        "kvm_mmio" => format!(
            "mmio {} len {} gpa 0x{:x} val 0x{:x}",
            ["unsatisfied-read", "read", "write"].get(u(&f["type"]) as usize).unwrap_or(&"?"),
            u(&f["len"]),
            u(&f["gpa"]),
            u(&f["val"])
        ),
        "kvm_emulate_insn" => {
            let insn: Vec<String> = f["insn"]
                .as_array()
                .unwrap()
                .iter()
                .take(u(&f["len"]) as usize)
                .map(|b| format!("{:02x}", u(b)))
                .collect();
            let mode = match u(&f["flags"]) {
                0 => "real",
                3 => "vm16",
                1 => "prot16",
                5 => "prot32",
                9 => "prot64",
                _ => "?",
            };
            let failed = if u(&f["failed"]) != 0 { " failed" } else { "" };
            format!("{:x}:{:x}:{} ({mode}){failed}", u(&f["csbase"]), u(&f["rip"]), insn.join(" "))
        }
        "sched_switch" => {
            let state = i(&f["prev_state"]) as u64;
            let letters = ["S", "D", "T", "t", "X", "Z", "P", "I"];
            let set: Vec<&str> = (0..8).filter(|b| state & 0xff & (1 << b) != 0).map(|b| letters[b]).collect();
            let s = if set.is_empty() { "R".to_string() } else { set.join("|") };
            format!(
                "prev_comm={} prev_pid={} prev_prio={} prev_state={s}{} ==> next_comm={} next_pid={} next_prio={}",
                f["prev_comm"].as_str().unwrap(),
                i(&f["prev_pid"]),
                i(&f["prev_prio"]),
                if state & 0x100 != 0 { "+" } else { "" },
                f["next_comm"].as_str().unwrap(),
                i(&f["next_pid"]),
                i(&f["next_prio"])
            )
        }
        other => panic!("no rendering for {other}"),
    }
}

/// One line of the `trace` file: `comm-pid [cpu] flags timestamp: event: text`.
#[derive(Debug, PartialEq, Eq)]
struct TextEvent {
    pid: u64,
    cpu: u64,
    ts: u64,
    name: String,
    text: String,
}

fn parse_text(line: &str) -> Option<TextEvent> {
    let (task, rest) = line.split_once(" [")?;
    let pid = task.trim().rsplit_once('-')?.1.parse().ok()?;
    let (cpu, rest) = rest.split_once("] ")?;
    let mut it = rest.trim_start().splitn(2, ' ');
    let _flags = it.next()?;
    let rest = it.next()?.trim_start();
    let (ts, rest) = rest.split_once(": ")?;
    let (name, text) = rest.split_once(": ")?;
    Some(TextEvent {
        pid,
        cpu: cpu.parse().ok()?,
        ts: ts.parse().ok()?,
        name: name.to_string(),
        text: text.trim_end().to_string(),
    })
}

#[test]
fn decoded_records_equal_the_kernels_own_text_rendering() {
    if let Err(why) = ready() {
        eprintln!("SKIP: {why}");
        return;
    }
    let events =
        ["kvm:kvm_pio", "kvm:kvm_userspace_exit", "kvm:kvm_mmio", "kvm:kvm_emulate_insn", "sched:sched_switch"];
    let cfg = InstanceConfig {
        events: events.iter().map(|s| s.to_string()).collect(),
        buffer_kb: 8192,
        ..InstanceConfig::new(Some(std::process::id()))
    };
    let source = KernelSource::open(&cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let uuid = [7u8; 16];
    let desc = TraceDesc {
        uuid,
        hostname: "test",
        domain: "kvm-kernel",
        tracer_version: (0, 1, 0),
        clock: ClockDesc { name: "tsc", description: "TSC", freq: 1_000_000_000, offset_s: 0, offset: 0, precision: 0 },
    };
    std::fs::write(dir.path().join("metadata"), source.table().standalone_metadata(&desc)).unwrap();

    assert_eq!(source.instance().read("tracing_on").unwrap().trim(), "1", "open records");
    let cfg = VmmConfig { vcpus: 1, iterations: 20, workload: Workload::default() };
    Vmm::run(&cfg, &NullObserver).unwrap();
    // Paused, so that the kernel's text and the reader see the same events.
    source.instance().set_tracing(false).unwrap();
    let text = source.instance().read("trace").unwrap();
    let report = source.start(&mut |n| std::fs::File::create_new(dir.path().join(n)), uuid).unwrap().stop().unwrap();
    assert_eq!(report.total(|c| c.counts.discarded), 0);

    let kernel: Vec<TextEvent> = text.lines().filter(|l| !l.starts_with('#')).filter_map(parse_text).collect();
    assert!(kernel.len() > 200, "too few events in the kernel's text: {}", kernel.len());
    for name in ["kvm_pio", "kvm_userspace_exit", "kvm_mmio", "kvm_emulate_insn"] {
        assert!(kernel.iter().any(|e| e.name == name), "no {name} in the kernel's text");
    }

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ctf-events.py");
    let out = Command::new("/usr/bin/python3").arg(script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "bt2: {}", String::from_utf8_lossy(&out.stderr));
    let mut ours: BTreeMap<u64, Vec<TextEvent>> = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let e: Value = serde_json::from_str(l).unwrap();
        let name = e["name"].as_str().unwrap().to_string();
        ours.entry(u(&e["cpu"])).or_default().push(TextEvent {
            pid: u(&e["ctx"]["common_pid"]),
            cpu: u(&e["cpu"]),
            ts: u(&e["ts"]),
            text: render(&name, &e["f"]).trim_end().to_string(),
            name,
        });
    }
    // Per CPU, the kernel's text is a prefix of ours (recording was turned
    // on again briefly when the reader started).
    let mut by_cpu: BTreeMap<u64, Vec<&TextEvent>> = BTreeMap::new();
    for e in &kernel {
        by_cpu.entry(e.cpu).or_default().push(e);
    }
    for (cpu, theirs) in by_cpu {
        let ours = ours.get(&cpu).map(Vec::as_slice).unwrap_or(&[]);
        assert!(
            ours.len() >= theirs.len(),
            "cpu {cpu}: {} in the trace, {} in the kernel's text",
            ours.len(),
            theirs.len()
        );
        for (n, (k, o)) in theirs.iter().zip(ours).enumerate() {
            assert_eq!(*k, o, "cpu {cpu}, event {n}");
        }
    }
}
