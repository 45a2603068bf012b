//! The `kvm` event set mapped onto the hypervisor model (`hvtrace-model`).
//!
//! | `kvm` record | model |
//! |---|---|
//! | `vcpu_run(vcpu)` | runstate running, then entry of vCPU `(0, vcpu)` |
//! | `vm_exit(vcpu, reason, direction, size, port, addr, data)` | exit with code `reason` (`KVM_EXIT_*`) named by the trace's own enum label; `io` → port, size, direction; `mmio` → address, size, direction. `hlt` also makes the vCPU blocked: the guest waits for an interrupt (this VMM's guest halts when it is done, and its thread ends) |
//! | `hypercall_entry` / `hypercall_exit(vcpu, nr, …)` | hypercall `nr`, named by the trace's enum label |
//! | `guest_event(vcpu, id, value)` | guest event of kind `id` |
//!
//! The VMM runs one VM, so the domain is always 0; the pCPU is the host CPU
//! whose stream holds the record (the vCPU thread's CPU at that moment).

use hvtrace_model::{
    class, Access, Catalog, Event, Exit, ExitDetail, Field, Labels, Mapper, Mapping, Payload, Runstate, Vcpu,
};

/// The `kvm` set's [`Mapping`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KvmMapping;

/// The `kvm` set's mapping, for a list of `&dyn Mapping`.
pub static MAPPING: KvmMapping = KvmMapping;

/// `KVM_EXIT_IO`, `KVM_EXIT_HLT`, `KVM_EXIT_MMIO`.
const IO: u64 = 2;
const HLT: u64 = 5;
const MMIO: u64 = 6;

struct Bound {
    run: (u32, [Field; 1]),
    exit: (u32, [Field; 6]),
    hc_entry: (u32, [Field; 2]),
    hc_exit: (u32, [Field; 2]),
    guest: Option<(u32, [Field; 3])>,
    /// Names of the exit reasons and hypercalls, from the trace's metadata.
    reasons: Labels,
    hypercalls: Labels,
}

impl Mapping for KvmMapping {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn bind(&self, c: &dyn Catalog) -> Option<Box<dyn Mapper>> {
        let exit = class(c, "vm_exit", ["vcpu", "reason", "direction", "size", "port", "addr"])?;
        let run = class(c, "vcpu_run", ["vcpu"])?;
        let hc_entry = class(c, "hypercall_entry", ["vcpu", "nr"])?;
        let hc_exit = class(c, "hypercall_exit", ["vcpu", "nr"])?;
        let guest = class(c, "guest_event", ["vcpu", "id", "value"]);
        let reasons = Labels::of(c, exit.0, exit.1[1]);
        let hypercalls = Labels::of(c, hc_entry.0, hc_entry.1[1]);
        Some(Box::new(Bound { run, exit, hc_entry, hc_exit, guest, reasons, hypercalls }))
    }
}

impl Mapper for Bound {
    fn maps(&self, id: u32) -> bool {
        id == self.run.0
            || id == self.exit.0
            || id == self.hc_entry.0
            || id == self.hc_exit.0
            || self.guest.is_some_and(|g| g.0 == id)
    }

    fn map<'m>(&'m self, id: u32, f: &Payload<'_, '_>, out: &mut Vec<Event<'m>>) {
        let vcpu = |i: Field| f.uint(i).map(|v| Vcpu::new(0, v as u32));
        if id == self.exit.0 {
            let [v, reason, dir, size, port, addr] = self.exit.1;
            let (Some(vcpu), Some(code)) = (vcpu(v), f.uint(reason)) else { return };
            let access = match f.uint(dir) {
                Some(1) => Some(Access::Read),
                Some(2) => Some(Access::Write),
                _ => None,
            };
            let size = f.uint(size).unwrap_or(0) as u8;
            let detail = match (code, access) {
                (IO, Some(access)) => ExitDetail::Io { port: f.uint(port).unwrap_or(0) as u16, size, access },
                (MMIO, Some(access)) => ExitDetail::Mmio { gpa: f.uint(addr).unwrap_or(0), size, access },
                _ => ExitDetail::None,
            };
            let exit = Exit { code: code as u32, name: self.reasons.get(code as i64).unwrap_or("other"), detail };
            out.push(Event::Exit { vcpu, exit });
            if code == HLT {
                out.push(Event::Runstate { vcpu, new: Runstate::Blocked });
            }
        } else if id == self.run.0 {
            let Some(vcpu) = vcpu(self.run.1[0]) else { return };
            out.push(Event::Runstate { vcpu, new: Runstate::Running });
            out.push(Event::Entry { vcpu });
        } else if id == self.hc_entry.0 || id == self.hc_exit.0 {
            let [v, nr] = if id == self.hc_entry.0 { self.hc_entry.1 } else { self.hc_exit.1 };
            let (Some(vcpu), Some(nr)) = (vcpu(v), f.uint(nr)) else { return };
            let name = self.hypercalls.get(nr as i64).unwrap_or("unknown");
            out.push(if id == self.hc_entry.0 {
                Event::HypercallEntry { vcpu, nr: nr as u32, name }
            } else {
                Event::HypercallExit { vcpu, nr: nr as u32, name }
            });
        } else if let Some((_, [v, kind, value])) = self.guest.filter(|g| g.0 == id) {
            let (Some(vcpu), Some(kind)) = (vcpu(v), f.uint(kind)) else { return };
            let value = f.uint(value).unwrap_or(0);
            out.push(Event::GuestEvent { vcpu, kind: kind as u32, name: "guest_event", value });
        }
    }
}
