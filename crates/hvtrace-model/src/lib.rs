//! # hvtrace-model — one hypervisor model, many event sets
//!
//! The analyses (`hvtrace analyze`) and views (Perfetto, reports) know
//! nothing of where a trace came from. Each source — the simulated Xen host,
//! the KVM micro-VMM, imported xentrace files, KVM's kernel tracepoints —
//! maps its own records onto this small vocabulary ([`Event`]):
//!
//! | model | meaning |
//! |---|---|
//! | [`Vcpu`] `{domain, vcpu}` | a virtual CPU (the KVM VMM: domain 0, vCPU index) |
//! | pCPU | the CPU of the record's stream, unless [`Event::OnPcpu`] says otherwise |
//! | [`Event::Exit`] | guest → hypervisor: reason `code` (VMX/SVM/`KVM_EXIT_*` number), `name`, [`ExitDetail`] (I/O port, size, direction; MMIO address; MSR; vector; hypercall number) |
//! | [`Event::Entry`] | hypervisor → guest |
//! | [`Event::KernelExit`] / [`Event::KernelDetail`] / [`Event::ToVmm`] | on a split hypervisor (KVM): the kernel handles an exit (what it is about), then perhaps hands it to the VMM in user space |
//! | [`Event::Runstate`] | now [`Runstate`] running / runnable / blocked / offline |
//! | [`Event::HypercallEntry`] / [`Event::HypercallExit`] | hypercall `nr` with its name |
//! | [`Event::Interrupt`] | an interrupt injected into a domain, or taken by the hypervisor |
//! | [`Event::GuestEvent`] | something the guest itself reported |
//! | [`Event::Lost`] | an in-band loss record (packet-context losses come from the reader) |
//! | [`Event::Unattributed`] | a record about a vCPU the source cannot name yet: counted, not dropped |
//! | [`Event::DomainGone`] | a domain was destroyed: its vCPUs end |
//!
//! Times are the records' timestamps: a model event has no clock of its own.
//!
//! Names a hypervisor's two halves share live here too, so neither half
//! depends on the other: [`kvm::EXIT_REASONS`] for KVM's `KVM_EXIT_*` numbers.
//!
//! ## How an event set declares its mapping
//!
//! Next to its event set (the `events!` module, or an importer's tables),
//! a source implements [`Mapping`]: `bind` looks the set's events and fields
//! up by name in the trace's [`Catalog`] ([`class`] does it in one call) and,
//! if they are all there, returns a [`Mapper`] that holds the resolved ids,
//! [`Field`]s and name tables. Per record, [`Mapper::map`] reads the
//! fields it needs from its [`Payload`] (decoded in place, no
//! allocation: an integer at a fixed offset inline, any other field
//! through the source's [`Fields`]) and pushes zero or more [`Event`]s onto a buffer. [`Bindings`] binds a list
//! of mappings to one trace and dispatches each record to the mapper of
//! its event id; a trace none of them recognises still gets the generic
//! analyses (counts per CPU and event class, losses, duration).
//!
//! ```
//! use hvtrace_model::{class, Bindings, Catalog, Event, Exit, ExitDetail, Field, FieldValue, Mapper, Mapping, Payload, Vcpu};
//!
//! /// A set with one event: `exit(vcpu: u32, reason: u32)`.
//! struct Toy;
//! struct ToyMapper { exit: u32, vcpu: Field, reason: Field }
//!
//! impl Mapping for Toy {
//!     fn name(&self) -> &'static str { "toy" }
//!     fn bind(&self, c: &dyn Catalog) -> Option<Box<dyn Mapper>> {
//!         let (exit, [vcpu, reason]) = class(c, "exit", ["vcpu", "reason"])?;
//!         Some(Box::new(ToyMapper { exit, vcpu, reason }))
//!     }
//! }
//!
//! impl Mapper for ToyMapper {
//!     fn maps(&self, id: u32) -> bool { id == self.exit }
//!     fn map<'m>(&'m self, _id: u32, f: &Payload<'_, '_>, out: &mut Vec<Event<'m>>) {
//!         let (Some(v), Some(code)) = (f.uint(self.vcpu), f.uint(self.reason)) else { return };
//!         let name = if code == 12 { "HLT" } else { "other" };
//!         let exit = Exit { code: code as u32, name, detail: ExitDetail::None };
//!         out.push(Event::Exit { vcpu: Vcpu::new(0, v as u32), exit });
//!     }
//! }
//!
//! # struct C;
//! # impl Catalog for C {
//! #     fn event_count(&self) -> u32 { 2 }
//! #     fn event_name(&self, id: u32) -> Option<&str> { ["other", "exit"].get(id as usize).copied() }
//! #     fn field_count(&self, id: u32) -> usize { if id == 1 { 2 } else { 0 } }
//! #     fn field_name(&self, _: u32, i: usize) -> Option<&str> { ["vcpu", "reason"].get(i).copied() }
//! #     fn enum_labels(&self, _: u32, _: usize) -> Vec<(i64, String)> { vec![] }
//! # }
//! let b = Bindings::bind(&[&Toy], &C);
//! assert!(!b.maps(0) && b.maps(1));
//! let mut got = vec![];
//! b.map(1, &[FieldValue::Int(3), FieldValue::Int(12)], &mut got);
//! assert_eq!(got, [Event::Exit { vcpu: Vcpu::new(0, 3), exit: Exit { code: 12, name: "HLT", detail: ExitDetail::None } }]);
//! ```
#![forbid(unsafe_code)]

mod event;
pub mod kvm;
mod map;

pub use event::{Access, Event, Exit, ExitDetail, Runstate, Vcpu};
pub use map::{class, hit, Bindings, Catalog, Field, FieldValue, Fields, FixedInt, Labels, Mapper, Mapping, Payload};
