//! The [`xen`](crate::xen) event set mapped onto the hypervisor model
//! (`hvtrace-model`).
//!
//! | `xen` record | model |
//! |---|---|
//! | `vm_exit(domid, vcpu, reason, rip, qualification)` | exit with the VMX basic reason as code, named by the trace's enum label (`HLT`, `IO_INSTRUCTION`, …); `IO_INSTRUCTION` → port, size, direction from the qualification (SDM table 28-5) |
//! | `vm_entry(domid, vcpu)` | entry |
//! | `runstate_change(domid, vcpu, old, new)` | runstate `new` |
//! | `hypercall_entry` / `hypercall_exit(domid, vcpu, nr, …)` | hypercall `nr`, named by the trace's enum label |
//! | `interrupt(vector, domid)` | interrupt for `domid` (`DOMID_XEN`: the hypervisor's own) |
//! | `page_fault(domid, vcpu, addr, …)` | guest event `page_fault`, value `addr` |
//! | `console_write(domid, text)` | guest event `console_write` of vCPU 0, value the text's length |
//! | `domain_create(domid, vcpus, hvm)` | runstate offline for each of its vCPUs |
//! | `domain_destroy(domid, reason)` | the domain is gone (a rebuilt guest gets a new id) |
//!
//! `sched_switch`, `vcpu_wake`, `vcpu_block`, `vcpu_yield`, `vcpu_sleep`,
//! `sched_credit` and `grant_copy` add nothing the records
//! above do not say (every state change has its `runstate_change`). The idle
//! domain's vCPUs are not vCPUs of the model: a pCPU running one is idle.

use hvtrace_model::{
    class, hit, Access, Catalog, Event, Exit, ExitDetail, Labels, Mapper, Mapping, Payload, Runstate, Vcpu,
};

use crate::{DOMID_IDLE, DOMID_XEN};

/// The `xen` set's [`Mapping`].
#[derive(Clone, Copy, Debug, Default)]
pub struct XenMapping;

/// The `xen` set's mapping, for a list of `&dyn Mapping`.
pub static MAPPING: XenMapping = XenMapping;

/// VMX basic exit reason `IO_INSTRUCTION`.
const IO_INSTRUCTION: u64 = 30;
/// More vCPUs than a domain can have: a `domain_create` claiming more is damaged.
const MAX_DOMAIN_VCPUS: u64 = 4096;

/// `(event id, field indices)` of each mapped event.
struct Bound {
    exit: (u32, [usize; 4]),
    entry: (u32, [usize; 2]),
    runstate: (u32, [usize; 3]),
    hc_entry: (u32, [usize; 3]),
    hc_exit: (u32, [usize; 3]),
    interrupt: Option<(u32, [usize; 2])>,
    fault: Option<(u32, [usize; 3])>,
    console: Option<(u32, [usize; 2])>,
    create: Option<(u32, [usize; 2])>,
    destroy: Option<(u32, [usize; 1])>,
    reasons: Labels,
    hypercalls: Labels,
}

impl Mapping for XenMapping {
    fn name(&self) -> &'static str {
        "xen"
    }

    fn bind(&self, c: &dyn Catalog) -> Option<Box<dyn Mapper>> {
        let exit = class(c, "vm_exit", ["domid", "vcpu", "reason", "qualification"])?;
        let hc_entry = class(c, "hypercall_entry", ["domid", "vcpu", "nr"])?;
        Some(Box::new(Bound {
            entry: class(c, "vm_entry", ["domid", "vcpu"])?,
            runstate: class(c, "runstate_change", ["domid", "vcpu", "new"])?,
            hc_exit: class(c, "hypercall_exit", ["domid", "vcpu", "nr"])?,
            interrupt: class(c, "interrupt", ["vector", "domid"]),
            fault: class(c, "page_fault", ["domid", "vcpu", "addr"]),
            console: class(c, "console_write", ["domid", "text"]),
            create: class(c, "domain_create", ["domid", "vcpus"]),
            destroy: class(c, "domain_destroy", ["domid"]),
            reasons: Labels::of(c, exit.0, exit.1[2]),
            hypercalls: Labels::of(c, hc_entry.0, hc_entry.1[2]),
            exit,
            hc_entry,
        }))
    }
}

impl Bound {
    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        [self.exit.0, self.entry.0, self.runstate.0, self.hc_entry.0, self.hc_exit.0].into_iter().chain(
            [
                self.interrupt.map(|c| c.0),
                self.fault.map(|c| c.0),
                self.console.map(|c| c.0),
                self.create.map(|c| c.0),
                self.destroy.map(|c| c.0),
            ]
            .into_iter()
            .flatten(),
        )
    }
}

/// The vCPU named by fields `d` and `v`, unless it is an idle vCPU.
/// Inlined: nearly every record reads one, and the call cost as much as its two reads.
#[inline(always)]
fn vcpu(f: &Payload<'_, '_>, d: usize, v: usize) -> Option<Vcpu> {
    let domid = f.uint(d)?;
    (domid != u64::from(DOMID_IDLE)).then_some(Vcpu::new(domid as u32, f.uint(v)? as u32))
}

impl Mapper for Bound {
    fn maps(&self, id: u32) -> bool {
        self.ids().any(|i| i == id)
    }

    fn map<'m>(&'m self, id: u32, f: &Payload<'_, '_>, out: &mut dyn FnMut(Event<'m>)) {
        if id == self.exit.0 {
            let [d, v, reason, qual] = self.exit.1;
            let (Some(vcpu), Some(code)) = (vcpu(f, d, v), f.uint(reason)) else { return };
            let detail = match (code, f.uint(qual)) {
                (IO_INSTRUCTION, Some(q)) => ExitDetail::Io {
                    port: (q >> 16) as u16,
                    size: (q & 7) as u8 + 1,
                    access: if q & 8 != 0 { Access::Read } else { Access::Write },
                },
                _ => ExitDetail::None,
            };
            let name = self.reasons.get(code as i64).unwrap_or("other");
            out(Event::Exit { vcpu, exit: Exit { code: code as u32, name, detail } });
        } else if id == self.entry.0 {
            if let Some(vcpu) = vcpu(f, self.entry.1[0], self.entry.1[1]) {
                out(Event::Entry { vcpu });
            }
        } else if id == self.runstate.0 {
            let [d, v, new] = self.runstate.1;
            let Some(new) = f.uint(new).and_then(Runstate::from_xen) else { return };
            if let Some(vcpu) = vcpu(f, d, v) {
                out(Event::Runstate { vcpu, new });
            }
        } else if id == self.hc_entry.0 || id == self.hc_exit.0 {
            let [d, v, nr] = if id == self.hc_entry.0 { self.hc_entry.1 } else { self.hc_exit.1 };
            let (Some(vcpu), Some(nr)) = (vcpu(f, d, v), f.uint(nr)) else { return };
            let name = self.hypercalls.get(nr as i64).unwrap_or("unknown");
            out(if id == self.hc_entry.0 {
                Event::HypercallEntry { vcpu, nr: nr as u32, name }
            } else {
                Event::HypercallExit { vcpu, nr: nr as u32, name }
            });
        } else if let Some([vector, d]) = hit(self.interrupt, id) {
            let (Some(vector), Some(domid)) = (f.uint(vector), f.uint(d)) else { return };
            let domain = (domid != u64::from(DOMID_XEN)).then_some(domid as u32);
            out(Event::Interrupt { vector: vector as u32, domain, vcpu: None });
        } else if let Some([d, v, addr]) = hit(self.fault, id) {
            if let Some(vcpu) = vcpu(f, d, v) {
                out(Event::GuestEvent { vcpu, kind: id, name: "page_fault", value: f.uint(addr).unwrap_or(0) });
            }
        } else if let Some([d, text]) = hit(self.console, id) {
            let Some(domid) = f.uint(d) else { return };
            let len = f.bytes(text).map_or(0, |t| t.len() as u64);
            out(Event::GuestEvent { vcpu: Vcpu::new(domid as u32, 0), kind: id, name: "console_write", value: len });
        } else if let Some([d, n]) = hit(self.create, id) {
            let (Some(domid), Some(n)) = (f.uint(d), f.uint(n)) else { return };
            for v in 0..n.min(MAX_DOMAIN_VCPUS) {
                out(Event::Runstate { vcpu: Vcpu::new(domid as u32, v as u32), new: Runstate::Offline });
            }
        } else if let Some([d]) = hit(self.destroy, id) {
            if let Some(domid) = f.uint(d) {
                out(Event::DomainGone { domain: domid as u32 });
            }
        }
    }
}
