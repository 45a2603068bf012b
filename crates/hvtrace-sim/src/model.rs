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
    class, Access, Catalog, Event, Exit, ExitDetail, Field, Labels, Mapper, Mapping, Payload, Runstate, Vcpu,
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

/// What records of one event id map to, with the indices of the fields
/// read: resolved once at bind, so a record finds its case in one load
/// and one jump, where a chain of id tests cost a compare and a
/// mispredicted branch per case passed.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Not mapped.
    None,
    Exit([Field; 4]),
    Entry([Field; 2]),
    Runstate([Field; 3]),
    HypercallEntry([Field; 3]),
    HypercallExit([Field; 3]),
    Interrupt([Field; 2]),
    Fault([Field; 3]),
    Console([Field; 2]),
    Create([Field; 2]),
    Destroy([Field; 1]),
}

/// The mapping bound to one trace: by event id, its [`Kind`].
struct Bound {
    kinds: Vec<Kind>,
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
        let required = [
            (exit.0, Kind::Exit(exit.1)),
            (hc_entry.0, Kind::HypercallEntry(hc_entry.1)),
            class(c, "vm_entry", ["domid", "vcpu"]).map(|(id, f)| (id, Kind::Entry(f)))?,
            class(c, "runstate_change", ["domid", "vcpu", "new"]).map(|(id, f)| (id, Kind::Runstate(f)))?,
            class(c, "hypercall_exit", ["domid", "vcpu", "nr"]).map(|(id, f)| (id, Kind::HypercallExit(f)))?,
        ];
        let optional = [
            class(c, "interrupt", ["vector", "domid"]).map(|(id, f)| (id, Kind::Interrupt(f))),
            class(c, "page_fault", ["domid", "vcpu", "addr"]).map(|(id, f)| (id, Kind::Fault(f))),
            class(c, "console_write", ["domid", "text"]).map(|(id, f)| (id, Kind::Console(f))),
            class(c, "domain_create", ["domid", "vcpus"]).map(|(id, f)| (id, Kind::Create(f))),
            class(c, "domain_destroy", ["domid"]).map(|(id, f)| (id, Kind::Destroy(f))),
        ];
        let mut kinds = vec![Kind::None; c.event_count() as usize];
        for (id, kind) in required.into_iter().chain(optional.into_iter().flatten()) {
            kinds[id as usize] = kind;
        }
        Some(Box::new(Bound {
            kinds,
            reasons: Labels::of(c, exit.0, exit.1[2]),
            hypercalls: Labels::of(c, hc_entry.0, hc_entry.1[2]),
        }))
    }
}

/// The vCPU named by fields `d` and `v`, unless it is an idle vCPU.
/// Inlined: nearly every record reads one, and the call cost as much as its two reads.
#[inline(always)]
fn vcpu(f: &Payload<'_, '_>, d: Field, v: Field) -> Option<Vcpu> {
    let domid = f.uint(d)?;
    (domid != u64::from(DOMID_IDLE)).then_some(Vcpu::new(domid as u32, f.uint(v)? as u32))
}

impl Mapper for Bound {
    fn maps(&self, id: u32) -> bool {
        !matches!(self.kinds.get(id as usize), None | Some(Kind::None))
    }

    fn map<'m>(&'m self, id: u32, f: &Payload<'_, '_>, out: &mut Vec<Event<'m>>) {
        // Fields bound by reference: loaded where read, not all copied out first.
        let Some(kind) = self.kinds.get(id as usize) else { return };
        match kind {
            Kind::Exit([d, v, reason, qual]) => {
                let (Some(vcpu), Some(code)) = (vcpu(f, *d, *v), f.uint(*reason)) else { return };
                let detail = match (code, f.uint(*qual)) {
                    (IO_INSTRUCTION, Some(q)) => ExitDetail::Io {
                        port: (q >> 16) as u16,
                        size: (q & 7) as u8 + 1,
                        access: if q & 8 != 0 { Access::Read } else { Access::Write },
                    },
                    _ => ExitDetail::None,
                };
                let name = self.reasons.get(code as i64).unwrap_or("other");
                out.push(Event::Exit { vcpu, exit: Exit { code: code as u32, name, detail } });
            }
            Kind::Entry([d, v]) => {
                if let Some(vcpu) = vcpu(f, *d, *v) {
                    out.push(Event::Entry { vcpu });
                }
            }
            Kind::Runstate([d, v, new]) => {
                let Some(new) = f.uint(*new).and_then(Runstate::from_xen) else { return };
                if let Some(vcpu) = vcpu(f, *d, *v) {
                    out.push(Event::Runstate { vcpu, new });
                }
            }
            Kind::HypercallEntry([d, v, nr]) => {
                let (Some(vcpu), Some(nr)) = (vcpu(f, *d, *v), f.uint(*nr)) else { return };
                let name = self.hypercalls.get(nr as i64).unwrap_or("unknown");
                out.push(Event::HypercallEntry { vcpu, nr: nr as u32, name });
            }
            Kind::HypercallExit([d, v, nr]) => {
                let (Some(vcpu), Some(nr)) = (vcpu(f, *d, *v), f.uint(*nr)) else { return };
                let name = self.hypercalls.get(nr as i64).unwrap_or("unknown");
                out.push(Event::HypercallExit { vcpu, nr: nr as u32, name });
            }
            Kind::Interrupt([vector, d]) => {
                let (Some(vector), Some(domid)) = (f.uint(*vector), f.uint(*d)) else { return };
                let domain = (domid != u64::from(DOMID_XEN)).then_some(domid as u32);
                out.push(Event::Interrupt { vector: vector as u32, domain, vcpu: None });
            }
            Kind::Fault([d, v, addr]) => {
                if let Some(vcpu) = vcpu(f, *d, *v) {
                    out.push(Event::GuestEvent {
                        vcpu,
                        kind: id,
                        name: "page_fault",
                        value: f.uint(*addr).unwrap_or(0),
                    });
                }
            }
            Kind::Console([d, text]) => {
                let Some(domid) = f.uint(*d) else { return };
                let len = f.bytes(*text).map_or(0, |t| t.len() as u64);
                out.push(Event::GuestEvent {
                    vcpu: Vcpu::new(domid as u32, 0),
                    kind: id,
                    name: "console_write",
                    value: len,
                });
            }
            Kind::Create([d, n]) => {
                let (Some(domid), Some(n)) = (f.uint(*d), f.uint(*n)) else { return };
                for v in 0..n.min(MAX_DOMAIN_VCPUS) {
                    out.push(Event::Runstate { vcpu: Vcpu::new(domid as u32, v as u32), new: Runstate::Offline });
                }
            }
            Kind::Destroy([d]) => {
                if let Some(domid) = f.uint(*d) {
                    out.push(Event::DomainGone { domain: domid as u32 });
                }
            }
            Kind::None => {}
        }
    }
}
