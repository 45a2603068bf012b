//! The imported xentrace classes mapped onto the hypervisor model
//! (`hvtrace-model`).
//!
//! | xentrace class | model |
//! |---|---|
//! | `vmx_exit64`, `vmx_exit`, `svm_exit64`, `svm_exit` | exit of the running vCPU (`domid`, `vcpu`: the importer's attribution), code the exit reason, named from the VMX or SVM table |
//! | `vmentry` | entry of the running vCPU |
//! | `runstate_change(vcpu, domid, old, new)` | runstate `new` |
//! | `pv_hypercall` | hypercall entry, named from `__HYPERVISOR_*` (xentrace records no hypercall return) |
//! | `hvm_intr` | interrupt `vector` for the running vCPU |
//! | `pv_page_fault`, `pv_page_fault64` | guest event `page_fault`, value the address |
//! | `hvm_ioport_read`, `hvm_ioport_write` (and `…64`) | exit detail of the vCPU's open exit: I/O `port`, `in` / `out`, size 0 (Xen does not record it) |
//! | `hvm_iomem_read`, `hvm_iomem_write` (and `…64`) | exit detail: MMIO at `addr`, load / store, size 0 |
//! | `hvm_npf` | exit detail: MMIO at `gpa`, a store if bit 1 of `qualification` (the EPT qualification's and the NPF error code's write bit) is set |
//! | `hvm_msr_read`, `hvm_msr_write` | exit detail: MSR `msr`, read / write |
//!
//! The idle domain's vCPUs are not vCPUs of the model (a pCPU running one is
//! idle), nor is a record before the importer knew which vCPU ran
//! (`DOMID_INVALID`). Not mapped: the scheduler's own records (`sched_*`,
//! every state change has its `runstate_change`), the other HVM handler
//! records (CR, CPUID: the model has no detail for them), multicall
//! entries (`pv_hypercall_subcall`: counted within their `multicall`), and
//! `xen_raw`, and `lost_records`: its count is already in the next packet's
//! `events_discarded`, which the reader reports (mapping it too would count
//! each loss twice).

use hvtrace_model::{
    class, hit, Access, Catalog, Event, Exit, ExitDetail, Field, Mapper, Mapping, Payload, Runstate, Vcpu,
};

use crate::classes::{CLASSES, SVM_EXIT_LABELS};
use hvtrace_core::field::{EnumLabel, FieldKind};
use hvtrace_sim::{Hypercall, VmxExitReason, DOMID_IDLE};

/// `DOMID_INVALID`: the importer did not know the running vCPU.
const DOMID_INVALID: u64 = 0x7ff4;

/// The xentrace classes' [`Mapping`].
#[derive(Clone, Copy, Debug, Default)]
pub struct XentraceMapping;

/// The xentrace classes' mapping, for a list of `&dyn Mapping`.
pub static MAPPING: XentraceMapping = XentraceMapping;

/// `(event id, fields)` of each mapped class.
struct Bound {
    /// The exit classes present, with their reason names.
    exits: Vec<(u32, [Field; 3], &'static [EnumLabel])>,
    entry: (u32, [Field; 2]),
    runstate: (u32, [Field; 3]),
    hypercall: Option<(u32, [Field; 3])>,
    intr: Option<(u32, [Field; 3])>,
    faults: Vec<(u32, [Field; 3])>,
    /// The handler records of port I/O and emulated memory: which, and its direction.
    accesses: Vec<(u32, [Field; 3], bool, Access)>,
    msrs: Vec<(u32, [Field; 3], Access)>,
    npf: Option<(u32, [Field; 4])>,
}

impl Mapping for XentraceMapping {
    fn name(&self) -> &'static str {
        "xentrace"
    }

    fn bind(&self, c: &dyn Catalog) -> Option<Box<dyn Mapper>> {
        // `xen_raw` is this set's own: a trace without it is not an import.
        class(c, "xen_raw", ["event", "data"])?;
        let exits = [
            ("vmx_exit64", VmxExitReason::LABELS),
            ("vmx_exit", VmxExitReason::LABELS),
            ("svm_exit64", SVM_EXIT_LABELS),
            ("svm_exit", SVM_EXIT_LABELS),
        ]
        .into_iter()
        .filter_map(|(name, labels)| class(c, name, ["domid", "vcpu", "exit_reason"]).map(|(id, f)| (id, f, labels)))
        .collect();
        Some(Box::new(Bound {
            exits,
            entry: class(c, "vmentry", ["domid", "vcpu"])?,
            runstate: class(c, "runstate_change", ["domid", "vcpu", "new"])?,
            hypercall: class(c, "pv_hypercall", ["domid", "vcpu", "op"]),
            intr: class(c, "hvm_intr", ["domid", "vcpu", "vector"]),
            faults: ["pv_page_fault", "pv_page_fault64"]
                .into_iter()
                .filter_map(|n| class(c, n, ["domid", "vcpu", "addr"]))
                .collect(),
            accesses: [
                ("hvm_ioport_read", "port", true, Access::Read),
                ("hvm_ioport_read64", "port", true, Access::Read),
                ("hvm_ioport_write", "port", true, Access::Write),
                ("hvm_ioport_write64", "port", true, Access::Write),
                ("hvm_iomem_read", "addr", false, Access::Read),
                ("hvm_iomem_read64", "addr", false, Access::Read),
                ("hvm_iomem_write", "addr", false, Access::Write),
                ("hvm_iomem_write64", "addr", false, Access::Write),
            ]
            .into_iter()
            .filter_map(|(n, at, io, access)| class(c, n, ["domid", "vcpu", at]).map(|(id, f)| (id, f, io, access)))
            .collect(),
            npf: class(c, "hvm_npf", ["domid", "vcpu", "gpa", "qualification"]),
            msrs: [("hvm_msr_read", Access::Read), ("hvm_msr_write", Access::Write)]
                .into_iter()
                .filter_map(|(n, access)| class(c, n, ["domid", "vcpu", "msr"]).map(|(id, f)| (id, f, access)))
                .collect(),
        }))
    }
}

/// The vCPU named by fields `d` and `v`, unless it is idle or unknown.
/// Inlined: nearly every record reads one, and the call cost as much as its two reads.
#[inline(always)]
fn vcpu(f: &Payload<'_, '_>, d: Field, v: Field) -> Option<Vcpu> {
    let domid = f.uint(d)?;
    (domid != u64::from(DOMID_IDLE) && domid != DOMID_INVALID).then_some(Vcpu::new(domid as u32, f.uint(v)? as u32))
}

fn label(labels: &'static [EnumLabel], v: u64) -> Option<&'static str> {
    labels.iter().find(|l| l.value as u64 == v).map(|l| l.label)
}

impl Mapper for Bound {
    fn maps(&self, id: u32) -> bool {
        self.exits.iter().any(|e| e.0 == id)
            || id == self.entry.0
            || id == self.runstate.0
            || [self.hypercall.map(|c| c.0), self.intr.map(|c| c.0)].contains(&Some(id))
            || self.faults.iter().any(|c| c.0 == id)
            || self.accesses.iter().any(|c| c.0 == id)
            || self.npf.is_some_and(|c| c.0 == id)
            || self.msrs.iter().any(|c| c.0 == id)
    }

    fn map<'m>(&'m self, id: u32, f: &Payload<'_, '_>, out: &mut Vec<Event<'m>>) {
        if let Some(&(_, [d, v, reason], labels)) = self.exits.iter().find(|e| e.0 == id) {
            let (Some(vcpu), Some(code)) = (vcpu(f, d, v), f.uint(reason)) else { return };
            let name = label(labels, code).unwrap_or("other");
            out.push(Event::Exit { vcpu, exit: Exit { code: code as u32, name, detail: ExitDetail::None } });
        } else if id == self.entry.0 {
            if let Some(vcpu) = vcpu(f, self.entry.1[0], self.entry.1[1]) {
                out.push(Event::Entry { vcpu });
            }
        } else if id == self.runstate.0 {
            let [d, v, new] = self.runstate.1;
            let Some(new) = f.uint(new).and_then(Runstate::from_xen) else { return };
            if let Some(vcpu) = vcpu(f, d, v) {
                out.push(Event::Runstate { vcpu, new });
            }
        } else if let Some([d, v, op]) = hit(self.hypercall, id) {
            let (Some(vcpu), Some(nr)) = (vcpu(f, d, v), f.uint(op)) else { return };
            let name = label(Hypercall::LABELS, nr).unwrap_or("unknown");
            out.push(Event::HypercallEntry { vcpu, nr: nr as u32, name });
        } else if let Some([d, v, vector]) = hit(self.intr, id) {
            let (Some(vcpu), Some(vector)) = (vcpu(f, d, v), f.uint(vector)) else { return };
            out.push(Event::Interrupt { vector: vector as u32, domain: Some(vcpu.domain), vcpu: Some(vcpu.vcpu) });
        } else if let Some(&(_, [d, v, addr])) = self.faults.iter().find(|c| c.0 == id) {
            if let Some(vcpu) = vcpu(f, d, v) {
                out.push(Event::GuestEvent { vcpu, kind: id, name: "page_fault", value: f.uint(addr).unwrap_or(0) });
            }
        } else if let Some(&(_, [d, v, at], io, access)) = self.accesses.iter().find(|c| c.0 == id) {
            let (Some(vcpu), Some(at)) = (vcpu(f, d, v), f.uint(at)) else { return };
            let detail = match u16::try_from(at) {
                Ok(port) if io => ExitDetail::Io { port, size: 0, access },
                // A port above 16 bits is no port: the record is damaged, say nothing.
                Err(_) if io => return,
                _ => ExitDetail::Mmio { gpa: at, size: 0, access },
            };
            out.push(Event::ExitDetail { vcpu, detail });
        } else if let Some([d, v, gpa, q]) = hit(self.npf, id) {
            let (Some(vcpu), Some(gpa)) = (vcpu(f, d, v), f.uint(gpa)) else { return };
            let access = if f.uint(q).unwrap_or(0) & 2 != 0 { Access::Write } else { Access::Read };
            out.push(Event::ExitDetail { vcpu, detail: ExitDetail::Mmio { gpa, size: 0, access } });
        } else if let Some(&(_, [d, v, msr], access)) = self.msrs.iter().find(|c| c.0 == id) {
            let (Some(vcpu), Some(index)) = (vcpu(f, d, v), f.uint(msr)) else { return };
            out.push(Event::ExitDetail { vcpu, detail: ExitDetail::Msr { index: index as u32, access } });
        }
    }
}

/// The imported classes as a [`Catalog`] (the importer's own tables: what
/// a trace written by it declares).
#[derive(Clone, Copy, Debug, Default)]
pub struct Classes;

impl Catalog for Classes {
    fn event_count(&self) -> u32 {
        CLASSES.len() as u32
    }
    fn event_name(&self, id: u32) -> Option<&str> {
        CLASSES.get(id as usize).map(|c| c.name)
    }
    fn field_count(&self, id: u32) -> usize {
        CLASSES.get(id as usize).map_or(0, |c| c.fields.len())
    }
    fn field_name(&self, id: u32, i: usize) -> Option<&str> {
        Some(CLASSES.get(id as usize)?.fields.get(i)?.name)
    }
    fn enum_labels(&self, id: u32, i: usize) -> Vec<(i64, String)> {
        match CLASSES.get(id as usize).and_then(|c| c.fields.get(i)).map(|f| f.kind) {
            Some(FieldKind::Enum { labels, .. }) => labels.iter().map(|l| (l.value, l.label.to_string())).collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClassId;
    use hvtrace_model::{Bindings, FieldValue};

    fn map<const N: usize>(id: ClassId, f: &[FieldValue<'_>; N]) -> Vec<String> {
        let b = Bindings::bind(&[&MAPPING], &Classes);
        let mut got = Vec::new();
        b.map(id as u32, f, &mut got);
        got.iter().map(|e| format!("{e:?}")).collect()
    }

    #[test]
    fn an_exit_is_the_running_vcpus_by_reason_name() {
        use FieldValue::Int;
        let got = map(ClassId::vmx_exit64, &[Int(3), Int(1), Int(30), Int(0xffff_8000)]);
        assert_eq!(
            got,
            [format!(
                "{:?}",
                Event::Exit {
                    vcpu: Vcpu::new(3, 1),
                    exit: Exit { code: 30, name: "IO_INSTRUCTION", detail: ExitDetail::None }
                }
            )]
        );
        let got = map(ClassId::svm_exit, &[Int(3), Int(1), Int(0x400), Int(0)]);
        assert!(got[0].contains("\"NPF\""), "{got:?}");
        // The idle vCPU, or one the importer could not name, is no vCPU.
        assert!(map(ClassId::vmx_exit64, &[Int(0x7fff), Int(0), Int(12), Int(0)]).is_empty());
        assert!(map(ClassId::vmentry, &[Int(0x7ff4), Int(0xffff)]).is_empty());
    }

    #[test]
    fn runstates_hypercalls_and_losses_map() {
        use FieldValue::Int;
        // runstate_change(vcpu, domid, old, new)
        let got = map(ClassId::runstate_change, &[Int(1), Int(2), Int(1), Int(2)]);
        assert_eq!(got, [format!("{:?}", Event::Runstate { vcpu: Vcpu::new(2, 1), new: Runstate::Blocked })]);
        let mut hc = [Int(0); 10];
        hc[0] = Int(4);
        hc[2] = Int(29);
        assert_eq!(
            map(ClassId::pv_hypercall, &hc),
            [format!("{:?}", Event::HypercallEntry { vcpu: Vcpu::new(4, 0), nr: 29, name: "sched_op" })]
        );
        // Its count is in the packet context already: not a second loss.
        assert!(map(ClassId::lost_records, &[Int(17), Int(0), Int(0), Int(0)]).is_empty());
        assert!(map(ClassId::sched_switch, &[Int(1), Int(0), Int(2), Int(0)]).is_empty());
    }

    #[test]
    fn handler_records_detail_the_open_exit() {
        use FieldValue::Int;
        let detail = |detail| [format!("{:?}", Event::ExitDetail { vcpu: Vcpu::new(3, 1), detail })];
        let got = map(ClassId::hvm_ioport_write, &[Int(3), Int(1), Int(0x3f8), Int(0x41)]);
        assert_eq!(got, detail(ExitDetail::Io { port: 0x3f8, size: 0, access: Access::Write }));
        let got = map(ClassId::hvm_ioport_read64, &[Int(3), Int(1), Int(0x70), Int(0)]);
        assert_eq!(got, detail(ExitDetail::Io { port: 0x70, size: 0, access: Access::Read }));
        // A port wider than 16 bits is a damaged record, not port 0.
        assert!(map(ClassId::hvm_ioport_read64, &[Int(3), Int(1), Int(0x1_0070), Int(0)]).is_empty());
        let got = map(ClassId::hvm_iomem_read64, &[Int(3), Int(1), Int(0xfed0_0000), Int(0)]);
        assert_eq!(got, detail(ExitDetail::Mmio { gpa: 0xfed0_0000, size: 0, access: Access::Read }));
        // hvm_npf(domid, vcpu, gpa, mfn, qualification, p2mt): bit 1 is a write.
        let npf = |q| map(ClassId::hvm_npf, &[Int(3), Int(1), Int(0xfee0_0030), Int(9), Int(q), Int(4)]);
        assert_eq!(npf(0x181), detail(ExitDetail::Mmio { gpa: 0xfee0_0030, size: 0, access: Access::Read }));
        assert_eq!(npf(0x182), detail(ExitDetail::Mmio { gpa: 0xfee0_0030, size: 0, access: Access::Write }));
        let got = map(ClassId::hvm_msr_write, &[Int(3), Int(1), Int(0x6e0), Int(5)]);
        assert_eq!(got, detail(ExitDetail::Msr { index: 0x6e0, access: Access::Write }));
    }

    #[test]
    fn a_trace_of_another_set_does_not_bind() {
        struct Other;
        impl Catalog for Other {
            fn event_count(&self) -> u32 {
                1
            }
            fn event_name(&self, _: u32) -> Option<&str> {
                Some("runstate_change")
            }
            fn field_count(&self, _: u32) -> usize {
                3
            }
            fn field_name(&self, _: u32, i: usize) -> Option<&str> {
                ["domid", "vcpu", "new"].get(i).copied()
            }
            fn enum_labels(&self, _: u32, _: usize) -> Vec<(i64, String)> {
                Vec::new()
            }
        }
        assert!(MAPPING.bind(&Other).is_none());
        assert!(MAPPING.bind(&Classes).is_some());
    }
}
