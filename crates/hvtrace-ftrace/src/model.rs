//! The kernel's KVM events on the hypervisor model (`hvtrace-model`),
//! declared here next to the events, as every event set does.
//!
//! | kernel event | model |
//! |---|---|
//! | `kvm_exit` (hardware virtualisation) | [`Event::Exit`] and [`Event::KernelExit`]: VMX basic exit reason or SVM exit code, by name where known |
//! | `kvm_entry` | [`Event::Entry`] |
//! | `kvm_emulate_insn` (hosts without hardware virtualisation: each emulated instruction is an exit) | [`Event::KernelExit`] `emulate_insn` |
//! | `kvm_pio`, `kvm_mmio` | [`Event::KernelDetail`] `pio` / `mmio`: port, size, direction; address, size, direction |
//! | `kvm_userspace_exit` | [`Event::ToVmm`]: the `KVM_EXIT_*` reason, named by `hvtrace_model::kvm` as the VMM's `vm_exit` names it |
//! | `kvm_hypercall` | [`Event::HypercallEntry`] (KVM's own hypercalls, `nr`) and [`Event::KernelDetail`] `hypercall` |
//! | `sched_switch` of a vCPU thread | [`Event::Runstate`]: switched in → running; switched out runnable (`R`, preempted by the host: Trace Compass's VCPU_PREEMPT) → runnable, sleeping → blocked |
//!
//! vCPUs are `Vcpu::new(0, index)`, as the `kvm` set of `hvtrace kvm`
//! names them, so both halves of one trace name the same vCPU. The kernel's
//! events name threads (`common_pid`), so the mapper learns which thread
//! is which vCPU: from `kvm_entry`/`kvm_exit`'s `vcpu_id` where they fire,
//! otherwise from vCPU thread names (`vcpu0` for `hvtrace kvm`, `CPU 0/KVM`
//! for QEMU, `fc_vcpu 0` for Firecracker) in `task_rename` (the VMM names
//! a thread it started: recorded by default) or `sched_switch` (threads
//! named before the recording began). A KVM event of a thread not yet
//! known (a VMM whose vCPU threads were named before the recording, until
//! each is switched) maps to [`Event::Unattributed`]: counted, not
//! attributed. A `sched_switch` of an unknown thread maps to nothing: the
//! VMM's other threads switch too.
//!
//! The catalog must present each kernel event's context fields (`common_pid`)
//! by name beside its payload fields, as `hvtrace-reader` does for stream
//! class 1. `hvtrace analyze` turns these into the kernel/VMM split of
//! each vCPU's exits (`docs/analysis.md`).

use std::collections::HashMap;
use std::sync::Mutex;

use hvtrace_model::{
    class, hit, kvm, Access, Catalog, Event, Exit, ExitDetail, Field, Mapper, Mapping, Payload, Runstate, Vcpu,
};

/// The kernel's KVM events' [`Mapping`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMapping;

/// The kernel's mapping, for a list of `&dyn Mapping`.
pub static MAPPING: KernelMapping = KernelMapping;

/// VMX basic exit reasons by number (Intel SDM, appendix C), the common ones.
const VMX_REASONS: &[(u32, &str)] = &[
    (0, "EXCEPTION_NMI"),
    (1, "EXTERNAL_INTERRUPT"),
    (7, "INTERRUPT_WINDOW"),
    (10, "CPUID"),
    (12, "HLT"),
    (18, "VMCALL"),
    (28, "CR_ACCESS"),
    (30, "IO_INSTRUCTION"),
    (31, "MSR_READ"),
    (32, "MSR_WRITE"),
    (40, "PAUSE_INSTRUCTION"),
    (44, "APIC_ACCESS"),
    (48, "EPT_VIOLATION"),
    (49, "EPT_MISCONFIG"),
    (52, "PREEMPTION_TIMER"),
];

/// SVM exit codes (AMD APM vol. 2, appendix C), the common ones.
const SVM_REASONS: &[(u32, &str)] = &[
    (0x060, "interrupt"),
    (0x064, "vintr"),
    (0x072, "cpuid"),
    (0x077, "pause"),
    (0x078, "hlt"),
    (0x07b, "io"),
    (0x07c, "msr"),
    (0x081, "hypercall"),
    (0x400, "npf"),
];

/// The vCPU index in a vCPU thread's name, if it is one.
pub fn vcpu_of_thread_name(name: &[u8]) -> Option<u32> {
    let name = std::str::from_utf8(name).ok()?;
    let digits = name
        .strip_prefix("vcpu")
        .or_else(|| name.strip_prefix("fc_vcpu "))
        .or_else(|| name.strip_prefix("CPU ").and_then(|r| r.strip_suffix("/KVM")))?;
    digits.parse().ok()
}

impl Mapping for KernelMapping {
    fn name(&self) -> &'static str {
        "kvm-kernel"
    }

    fn bind(&self, c: &dyn Catalog) -> Option<Box<dyn Mapper>> {
        let m = KernelMapper {
            exit: class(c, "kvm_exit", ["common_pid", "exit_reason", "isa", "vcpu_id"]),
            entry: class(c, "kvm_entry", ["common_pid", "vcpu_id"]),
            hypercall: class(c, "kvm_hypercall", ["common_pid", "nr"]),
            switch: class(c, "sched_switch", ["prev_comm", "prev_pid", "prev_state", "next_comm", "next_pid"]),
            user: class(c, "kvm_userspace_exit", ["common_pid", "reason"]),
            emulate: class(c, "kvm_emulate_insn", ["common_pid"]),
            pio: class(c, "kvm_pio", ["common_pid", "rw", "port", "size"]),
            mmio: class(c, "kvm_mmio", ["common_pid", "type", "len", "gpa"]),
            rename: class(c, "task_rename", ["pid", "newcomm"]),
            threads: Mutex::new(HashMap::new()),
        };
        let any = m.ids().iter().any(Option::is_some);
        any.then(|| Box::new(m) as Box<dyn Mapper>)
    }
}

struct KernelMapper {
    exit: Option<(u32, [Field; 4])>,
    entry: Option<(u32, [Field; 2])>,
    hypercall: Option<(u32, [Field; 2])>,
    switch: Option<(u32, [Field; 5])>,
    user: Option<(u32, [Field; 2])>,
    emulate: Option<(u32, [Field; 1])>,
    pio: Option<(u32, [Field; 4])>,
    mmio: Option<(u32, [Field; 4])>,
    rename: Option<(u32, [Field; 2])>,
    /// Thread id → vCPU index, as learned.
    threads: Mutex<HashMap<u32, u32>>,
}

/// `kvm_mmio`'s `type`: `KVM_TRACE_MMIO_READ_UNSATISFIED`, `_READ`, `_WRITE`.
const MMIO_WRITE: u64 = 2;

impl KernelMapper {
    /// The event ids this mapper takes (`None`: not in the trace).
    fn ids(&self) -> [Option<u32>; 9] {
        [
            self.exit.map(|c| c.0),
            self.entry.map(|c| c.0),
            self.hypercall.map(|c| c.0),
            self.switch.map(|c| c.0),
            self.user.map(|c| c.0),
            self.emulate.map(|c| c.0),
            self.pio.map(|c| c.0),
            self.mmio.map(|c| c.0),
            self.rename.map(|c| c.0),
        ]
    }

    /// The vCPU of thread `tid`, learning `vcpu_id` if the record has one.
    fn vcpu(&self, tid: Option<u64>, vcpu_id: Option<u64>) -> Option<Vcpu> {
        let tid = tid? as u32;
        let mut t = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = vcpu_id {
            t.insert(tid, v as u32);
        }
        t.get(&tid).map(|&v| Vcpu::new(0, v))
    }

    /// The vCPU of a thread in a `sched_switch`, learning it from its name.
    fn switched(&self, tid: Option<u64>, name: Option<&[u8]>) -> Option<Vcpu> {
        self.vcpu(tid, name.and_then(vcpu_of_thread_name).map(u64::from))
    }
}

impl Mapper for KernelMapper {
    fn maps(&self, id: u32) -> bool {
        self.ids().contains(&Some(id))
    }

    /// Threads are learnt to be vCPUs from earlier records.
    fn learns(&self) -> bool {
        true
    }

    fn map<'m>(&'m self, id: u32, f: &Payload<'_, '_>, out: &mut Vec<Event<'m>>) {
        // A KVM event's thread not (yet) known as a vCPU: counted, not
        // attributed (`Event::Unattributed`).
        if let Some([pid, reason, isa, vcpu]) = hit(self.exit, id) {
            let Some(v) = self.vcpu(f.uint(pid), f.uint(vcpu)) else { return out.push(Event::Unattributed) };
            let Some(code) = f.uint(reason) else { return };
            // isa 1 is VMX (basic reason in the low 16 bits), else SVM.
            let (code, table) = if f.uint(isa) == Some(1) { (code & 0xffff, VMX_REASONS) } else { (code, SVM_REASONS) };
            let name = table.iter().find(|(c, _)| u64::from(*c) == code).map_or("other", |(_, n)| n);
            let exit = Exit { code: code as u32, name, detail: ExitDetail::None };
            out.push(Event::Exit { vcpu: v, exit });
            out.push(Event::KernelExit { vcpu: v, exit });
        } else if let Some([pid, vcpu]) = hit(self.entry, id) {
            let Some(v) = self.vcpu(f.uint(pid), f.uint(vcpu)) else { return out.push(Event::Unattributed) };
            out.push(Event::Entry { vcpu: v });
        } else if let Some([pid, nr]) = hit(self.hypercall, id) {
            let Some(v) = self.vcpu(f.uint(pid), None) else { return out.push(Event::Unattributed) };
            let Some(nr) = f.uint(nr) else { return };
            out.push(Event::HypercallEntry { vcpu: v, nr: nr as u32, name: "kvm" });
            let exit = Exit { code: 0, name: "hypercall", detail: ExitDetail::Hypercall(nr as u32) };
            out.push(Event::KernelDetail { vcpu: v, exit });
        } else if let Some([pid, reason]) = hit(self.user, id) {
            let Some(v) = self.vcpu(f.uint(pid), None) else { return out.push(Event::Unattributed) };
            let Some(code) = f.uint(reason) else { return };
            let exit = Exit { code: code as u32, name: kvm::exit_name(code), detail: ExitDetail::None };
            out.push(Event::ToVmm { vcpu: v, exit });
        } else if let Some([pid]) = hit(self.emulate, id) {
            let Some(v) = self.vcpu(f.uint(pid), None) else { return out.push(Event::Unattributed) };
            let exit = Exit { code: 0, name: "emulate_insn", detail: ExitDetail::None };
            out.push(Event::KernelExit { vcpu: v, exit });
        } else if let Some([pid, rw, port, size]) = hit(self.pio, id) {
            let Some(v) = self.vcpu(f.uint(pid), None) else { return out.push(Event::Unattributed) };
            let access = if f.uint(rw) == Some(0) { Access::Read } else { Access::Write };
            let (port, size) = (f.uint(port).unwrap_or(0) as u16, f.uint(size).unwrap_or(0) as u8);
            let exit = Exit { code: 0, name: "pio", detail: ExitDetail::Io { port, size, access } };
            out.push(Event::KernelDetail { vcpu: v, exit });
        } else if let Some([pid, ty, len, gpa]) = hit(self.mmio, id) {
            let Some(v) = self.vcpu(f.uint(pid), None) else { return out.push(Event::Unattributed) };
            let access = if f.uint(ty) == Some(MMIO_WRITE) { Access::Write } else { Access::Read };
            let (gpa, size) = (f.uint(gpa).unwrap_or(0), f.uint(len).unwrap_or(0) as u8);
            let exit = Exit { code: 0, name: "mmio", detail: ExitDetail::Mmio { gpa, size, access } };
            out.push(Event::KernelDetail { vcpu: v, exit });
        } else if let Some([pid, name]) = hit(self.rename, id) {
            // Only learnt: a name says which vCPU a thread is.
            self.switched(f.uint(pid), f.bytes(name));
        } else if let Some([prev_comm, prev_pid, prev_state, next_comm, next_pid]) = hit(self.switch, id) {
            if let Some(v) = self.switched(f.uint(prev_pid), f.bytes(prev_comm)) {
                // Only the task-state bits: 0 is TASK_RUNNING (preempted).
                let preempted = f.uint(prev_state).is_some_and(|s| s & 0xff == 0);
                out.push(Event::Runstate {
                    vcpu: v,
                    new: if preempted { Runstate::Runnable } else { Runstate::Blocked },
                });
            }
            if let Some(v) = self.switched(f.uint(next_pid), f.bytes(next_comm)) {
                out.push(Event::Runstate { vcpu: v, new: Runstate::Running });
            }
        }
    }
}

/// The kernel's event classes as a model [`Catalog`]: each event's fields
/// are its context fields (`common_flags`, `common_preempt_count`,
/// `common_pid`) followed by its own, as a reader presents a kernel record.
impl Catalog for crate::EventTable {
    fn event_count(&self) -> u32 {
        self.events().len() as u32
    }
    fn event_name(&self, id: u32) -> Option<&str> {
        self.events().get(id as usize).map(|e| e.name.as_str())
    }
    fn field_count(&self, id: u32) -> usize {
        self.events().get(id as usize).map_or(0, |e| self.context_fields().len() + e.fields.len())
    }
    fn field_name(&self, id: u32, i: usize) -> Option<&str> {
        let e = self.events().get(id as usize)?;
        let ctx = self.context_fields();
        match ctx.get(i) {
            Some(f) => Some(&f.name),
            None => e.fields.get(i - ctx.len()).map(|f| f.name.as_str()),
        }
    }
    fn enum_labels(&self, _: u32, _: usize) -> Vec<(i64, String)> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use hvtrace_model::{Bindings, FieldValue};

    use super::*;
    use crate::format::parse_format;
    use crate::EventTable;

    fn table() -> EventTable {
        let f = |n: &str| std::fs::read_to_string(format!("{}/tests/fixtures/{n}.format", env!("CARGO_MANIFEST_DIR")));
        let e = ["kvm_exit", "kvm_entry", "kvm_userspace_exit", "sched_switch"]
            .map(|n| parse_format(if n == "sched_switch" { "sched" } else { "kvm" }, &f(n).unwrap()).unwrap());
        EventTable::new(e.to_vec()).unwrap()
    }

    fn map<const N: usize>(b: &Bindings, t: &EventTable, name: &str, fields: &[FieldValue<'_>; N]) -> Vec<String> {
        let mut got = Vec::new();
        b.map(t.id_of(name).unwrap(), fields, &mut got);
        got.iter().map(|e| format!("{e:?}")).collect()
    }

    #[test]
    fn exits_entries_and_vcpu_preemption_map_onto_the_model() {
        use FieldValue::{Bytes, Int};
        let t = table();
        let b = Bindings::bind(&[&MAPPING], &t);
        assert_eq!(b.names(), ["kvm-kernel"]);
        // kvm_entry: flags, preempt, pid | vcpu_id, rip, immediate_exit, intr_info, error_code
        let entry = [Int(0), Int(0), Int(500), Int(2), Int(0xfff0), Int(0), Int(0), Int(0)];
        assert_eq!(map(&b, &t, "kvm_entry", &entry), ["Entry { vcpu: Vcpu { domain: 0, vcpu: 2 } }"]);
        // kvm_exit: … | exit_reason, guest_rip, isa, info1, info2, intr_info, error_code, vcpu_id, requests
        let exit = [Int(0), Int(0), Int(500), Int(30), Int(0), Int(1), Int(0), Int(0), Int(0), Int(0), Int(2), Int(0)];
        let io = "vcpu: Vcpu { domain: 0, vcpu: 2 }, exit: Exit { code: 30, name: \"IO_INSTRUCTION\", detail: None }";
        assert_eq!(map(&b, &t, "kvm_exit", &exit), [format!("Exit {{ {io} }}"), format!("KernelExit {{ {io} }}")]);
        let svm = [Int(0), Int(0), Int(500), Int(0x78), Int(0), Int(2), Int(0), Int(0), Int(0), Int(0), Int(2), Int(0)];
        assert!(map(&b, &t, "kvm_exit", &svm)[0].contains("name: \"hlt\""));
        // sched_switch: … | prev_comm, prev_pid, prev_prio, prev_state, next_comm, next_pid, next_prio.
        // Thread 500 was learned from kvm_entry; thread 600 from its QEMU name.
        let sw = |prev: &'static [u8], pp, state, next: &'static [u8], np| {
            [Int(0), Int(0), Int(pp), Bytes(prev), Int(pp), Int(120), Int(state), Bytes(next), Int(np), Int(120)]
        };
        assert_eq!(
            map(&b, &t, "sched_switch", &sw(b"worker", 500, 0, b"CPU 1/KVM", 600)),
            [
                "Runstate { vcpu: Vcpu { domain: 0, vcpu: 2 }, new: Runnable }",
                "Runstate { vcpu: Vcpu { domain: 0, vcpu: 1 }, new: Running }"
            ]
        );
        assert_eq!(
            map(&b, &t, "sched_switch", &sw(b"CPU 1/KVM", 600, 1, b"bash", 700)),
            ["Runstate { vcpu: Vcpu { domain: 0, vcpu: 1 }, new: Blocked }"]
        );
        // An unknown thread maps to nothing.
        assert!(map(&b, &t, "sched_switch", &sw(b"bash", 700, 0, b"sshd", 800)).is_empty());
    }

    #[test]
    fn the_kernels_half_of_an_exit_maps_to_kernel_exit_detail_and_hand_over() {
        use FieldValue::Int;
        let f = |n: &str| std::fs::read_to_string(format!("{}/tests/fixtures/{n}.format", env!("CARGO_MANIFEST_DIR")));
        let t = EventTable::new(
            ["kvm_entry", "kvm_userspace_exit", "kvm_emulate_insn", "kvm_pio", "kvm_mmio"]
                .map(|n| parse_format("kvm", &f(n).unwrap()).unwrap())
                .to_vec(),
        )
        .unwrap();
        let b = Bindings::bind(&[&MAPPING], &t);
        // Thread 500 is vCPU 1 (learned from kvm_entry).
        let entry = [Int(0), Int(0), Int(500), Int(1), Int(0), Int(0), Int(0), Int(0)];
        assert_eq!(map(&b, &t, "kvm_entry", &entry).len(), 1);
        let v = "vcpu: Vcpu { domain: 0, vcpu: 1 }";
        // kvm_emulate_insn: … | rip, csbase, len, insn (one array field here), flags, failed
        let emulate = [Int(0), Int(0), Int(500), Int(0x1000), Int(0), Int(1), Int(0), Int(0), Int(0)];
        assert_eq!(
            map(&b, &t, "kvm_emulate_insn", &emulate),
            [format!("KernelExit {{ {v}, exit: Exit {{ code: 0, name: \"emulate_insn\", detail: None }} }}")]
        );
        // kvm_pio: … | rw, port, size, count, val
        let pio = [Int(0), Int(0), Int(500), Int(1), Int(0x500), Int(4), Int(1), Int(7)];
        assert_eq!(
            map(&b, &t, "kvm_pio", &pio),
            [format!(
                "KernelDetail {{ {v}, exit: Exit {{ code: 0, name: \"pio\", detail: Io {{ port: 1280, size: 4, access: Write }} }} }}"
            )]
        );
        // kvm_mmio: … | type (1 read), len, gpa, val
        let mmio = [Int(0), Int(0), Int(500), Int(1), Int(4), Int(0xd000_0000), Int(0)];
        assert!(map(&b, &t, "kvm_mmio", &mmio)[0].contains("Mmio { gpa: 3489660928, size: 4, access: Read }"));
        // kvm_userspace_exit: … | reason (KVM_EXIT_IO), errno
        let user = [Int(0), Int(0), Int(500), Int(2), Int(0)];
        assert_eq!(
            map(&b, &t, "kvm_userspace_exit", &user),
            [format!("ToVmm {{ {v}, exit: Exit {{ code: 2, name: \"io\", detail: None }} }}")]
        );
        // A thread not known to be a vCPU: counted as unattributed.
        let other = [Int(0), Int(0), Int(501), Int(2), Int(0)];
        assert_eq!(map(&b, &t, "kvm_userspace_exit", &other), ["Unattributed"]);
        let other = [Int(0), Int(0), Int(501), Int(0), Int(0x60), Int(1), Int(1), Int(0)];
        assert_eq!(map(&b, &t, "kvm_pio", &other), ["Unattributed"]);
    }

    #[test]
    fn vcpu_thread_names_of_the_usual_vmms() {
        assert_eq!(vcpu_of_thread_name(b"vcpu3"), Some(3));
        assert_eq!(vcpu_of_thread_name(b"CPU 12/KVM"), Some(12));
        assert_eq!(vcpu_of_thread_name(b"fc_vcpu 0"), Some(0));
        assert_eq!(vcpu_of_thread_name(b"CPU 1/TCG"), None);
        assert_eq!(vcpu_of_thread_name(b"qemu-system-x86"), None);
    }
}
