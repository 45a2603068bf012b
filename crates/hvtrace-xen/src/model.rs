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
//!
//! The idle domain's vCPUs are not vCPUs of the model (a pCPU running one is
//! idle), nor is a record before the importer knew which vCPU ran
//! (`DOMID_INVALID`). Not mapped: the scheduler's own records (`sched_*`,
//! every state change has its `runstate_change`), the HVM handler records
//! (their detail follows the exit in a record of its own), multicall
//! entries (`pv_hypercall_subcall`: counted within their `multicall`), and
//! `xen_raw`, and `lost_records`: its count is already in the next packet's
//! `events_discarded`, which the reader reports (mapping it too would count
//! each loss twice).

use hvtrace_model::{class, hit, Catalog, Event, Exit, ExitDetail, Fields, Mapper, Mapping, Runstate, Vcpu};

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

/// `(event id, field indices)` of each mapped class.
struct Bound {
    /// The exit classes present, with their reason names.
    exits: Vec<(u32, [usize; 3], &'static [EnumLabel])>,
    entry: (u32, [usize; 2]),
    runstate: (u32, [usize; 3]),
    hypercall: Option<(u32, [usize; 3])>,
    intr: Option<(u32, [usize; 3])>,
    faults: Vec<(u32, [usize; 3])>,
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
        }))
    }
}

/// The vCPU named by fields `d` and `v`, unless it is idle or unknown.
fn vcpu(f: &dyn Fields<'_>, d: usize, v: usize) -> Option<Vcpu> {
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
    }

    fn map<'m>(&'m self, id: u32, f: &dyn Fields<'_>, out: &mut dyn FnMut(Event<'m>)) {
        if let Some(&(_, [d, v, reason], labels)) = self.exits.iter().find(|e| e.0 == id) {
            let (Some(vcpu), Some(code)) = (vcpu(f, d, v), f.uint(reason)) else { return };
            let name = label(labels, code).unwrap_or("other");
            out(Event::Exit { vcpu, exit: Exit { code: code as u32, name, detail: ExitDetail::None } });
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
        } else if let Some([d, v, op]) = hit(self.hypercall, id) {
            let (Some(vcpu), Some(nr)) = (vcpu(f, d, v), f.uint(op)) else { return };
            let name = label(Hypercall::LABELS, nr).unwrap_or("unknown");
            out(Event::HypercallEntry { vcpu, nr: nr as u32, name });
        } else if let Some([d, v, vector]) = hit(self.intr, id) {
            let (Some(vcpu), Some(vector)) = (vcpu(f, d, v), f.uint(vector)) else { return };
            out(Event::Interrupt { vector: vector as u32, domain: Some(vcpu.domain), vcpu: Some(vcpu.vcpu) });
        } else if let Some(&(_, [d, v, addr])) = self.faults.iter().find(|c| c.0 == id) {
            if let Some(vcpu) = vcpu(f, d, v) {
                out(Event::GuestEvent { vcpu, kind: id, name: "page_fault", value: f.uint(addr).unwrap_or(0) });
            }
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
        b.map(id as u32, f, &mut |e| got.push(format!("{e:?}")));
        got
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
