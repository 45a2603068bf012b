//! # hvtrace-sim — a simulated Xen-like host
//!
//! The workload of `hvtrace sim` and `hvtrace demo`: per physical CPU, a
//! deterministic state machine modelled on Xen's credit scheduler runs the
//! vCPUs of a few PV and HVM domains. While a vCPU runs it makes hypercalls,
//! takes page faults and (HVM) VM exits, receives interrupts; it then
//! blocks, yields, goes offline or is preempted at the end of its slice, and
//! the pCPU switches to the next runnable vCPU (or to its idle vCPU). Domains
//! are occasionally shut down and rebuilt under a new domain id.
//!
//! Everything is written through [`hvtrace_core::Sink`] as the [`xen`] event
//! set — the information of xentrace's `TRC_SCHED_*`, `TRC_PV_*` and
//! `TRC_HVM_*` records, as typed, variable-size records. The host side
//! provides one sink per CPU; this crate knows nothing of rings, memfds or
//! sockets.
//!
//! * [`PcpuSim`] — one pCPU: [`PcpuSim::step`] emits exactly one event,
//!   [`PcpuSim::run`] emits a count or runs until stopped, paced to a rate.
//! * [`MAPPING`] — the `xen` set mapped onto the hypervisor model
//!   (`hvtrace-model`), for `hvtrace analyze`.
//! * [`SimConfig`] — domains, vCPUs per domain, pCPUs, seed. vCPUs are
//!   partitioned: domain `d` (and all its vCPUs) lives on pCPU `d % pcpus`,
//!   as in a cpupool, so the pCPU simulations share no state and a vCPU can
//!   never run on two pCPUs.
//!
//! ```
//! use hvtrace_sim::{PcpuSim, SimConfig};
//! # struct Null;
//! # impl hvtrace_core::Sink for Null {
//! #     fn record<F: FnOnce(&mut hvtrace_core::Encoder<'_>)>(&self, _: u32, len: usize, fill: F)
//! #         -> Result<(), hvtrace_core::RecordError> {
//! #         let mut buf = vec![0; len];
//! #         fill(&mut hvtrace_core::Encoder::new(&mut buf));
//! #         Ok(())
//! #     }
//! # }
//! let cfg = SimConfig { pcpus: 2, domains: 4, vcpus_per_domain: 2, seed: 1 };
//! let mut cpu0 = PcpuSim::new(0, &cfg);
//! let st = cpu0.step(&Null);
//! assert_eq!(st.emitted, 1);
//! assert_eq!(st.id, hvtrace_sim::xen::Id::domain_create);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod model;
mod rng;
mod run;
mod sim;
mod types;

pub use model::{XenMapping, MAPPING};
pub use run::{RunConfig, SimStats, MAX_RATE};
pub use sim::{PcpuSim, SimConfig, StepStats, MAX_DOMAINS, MAX_PCPUS, MAX_VCPUS};
pub use types::*;

hvtrace_core::events! {
    /// The events of the simulated Xen-like host, most frequent first (all
    /// ids are below 31, so every record gets the compact 4-byte header).
    ///
    /// `domid` is Xen's `domid_t`; `vcpu` is the vCPU id within its domain.
    /// The idle vCPU of pCPU `n` is `(DOMID_IDLE, n)`.
    pub mod xen ("xen") {
        /// An HVM vCPU left guest mode (`TRC_HVM_VMEXIT`): the exit reason,
        /// the guest's instruction pointer, and the exit qualification.
        fn vm_exit(domid: u16, vcpu: u32, reason: VmxExitReason, rip: u64, qualification: u64);
        /// An HVM vCPU re-entered guest mode (`TRC_HVM_VMENTRY`).
        fn vm_entry(domid: u16, vcpu: u32);
        /// A hypercall began (`TRC_PV_HYPERCALL_V2`; from an HVM guest, after a
        /// `VMCALL` exit). `a0`..`a4` are the arguments in x86-64 ABI order
        /// (rdi, rsi, rdx, r10, r8), unused ones zero.
        fn hypercall_entry(domid: u16, vcpu: u32, nr: Hypercall, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64);
        /// The hypercall `nr` of this vCPU returned `ret` (a negative errno on
        /// failure). A hypercall that blocks or deschedules the vCPU
        /// (`SCHEDOP_block`, `SCHEDOP_yield`, `VCPUOP_down`) returns when the
        /// vCPU runs again; `SCHEDOP_shutdown` never returns.
        fn hypercall_exit(domid: u16, vcpu: u32, nr: Hypercall, ret: i64);
        /// A page fault Xen handled for the running vCPU (`TRC_PV_PAGE_FAULT`;
        /// for HVM, the EPT violation's guest-physical address, `TRC_HVM_NPF`).
        fn page_fault(domid: u16, vcpu: u32, addr: u64, rip: u64, error_code: u32);
        /// A physical interrupt on this pCPU: `domid` is the domain it is
        /// delivered to, `DOMID_XEN` for Xen's own (timer, IPIs).
        fn interrupt(vector: u8, domid: u16);
        /// A vCPU changed runstate (`TRC_SCHED_RUNSTATE_CHANGE`).
        fn runstate_change(domid: u16, vcpu: u32, old: Runstate, new: Runstate);
        /// The pCPU switched vCPUs (`TRC_SCHED_SWITCH`): `prev` leaves in
        /// `prev_state` (runnable when preempted or yielding, blocked,
        /// offline); `next` was in `next_state` (runnable) and is now running.
        /// Each switch's `prev` is the previous switch's `next` on that pCPU.
        fn sched_switch(prev_domid: u16, prev_vcpu: u32, prev_state: Runstate, next_domid: u16, next_vcpu: u32, next_state: Runstate);
        /// A vCPU was woken (`TRC_SCHED_WAKE`): from blocked, or brought up from offline.
        fn vcpu_wake(domid: u16, vcpu: u32);
        /// The running vCPU blocked (`TRC_SCHED_BLOCK`).
        fn vcpu_block(domid: u16, vcpu: u32);
        /// Credit accounting at the end of the running vCPU's slice
        /// (`TRC_CSCHED_ACCOUNT_*`): credit left and resulting priority.
        fn sched_credit(domid: u16, vcpu: u32, credit: i32, prio: CreditPrio);
        /// The running vCPU yielded (`TRC_SCHED_YIELD`).
        fn vcpu_yield(domid: u16, vcpu: u32);
        /// A grant copy done by `domid` (a backend) for `peer`: `len` bytes
        /// copied, the first of which are in `sample`.
        fn grant_copy(domid: u16, peer: u16, len: u32, sample: &[u8]);
        /// A line `domid` wrote to the Xen console (`CONSOLEIO_write`).
        fn console_write(domid: u16, text: &str);
        /// A vCPU was put to sleep (`TRC_SCHED_SLEEP`): going offline.
        fn vcpu_sleep(domid: u16, vcpu: u32);
        /// A domain was created (`TRC_SCHED_DOM_ADD`) with `vcpus` vCPUs, all offline.
        fn domain_create(domid: u16, vcpus: u32, hvm: bool);
        /// A domain was destroyed (`TRC_SCHED_DOM_REM`); all its vCPUs were offline.
        fn domain_destroy(domid: u16, reason: ShutdownReason);
    }
}

/// Number of events in [`xen`] (the length of [`SimStats::by_event`]).
pub const EVENT_COUNT: usize = 17;

const _: () = assert!(<xen::Events as hvtrace_core::EventSet>::EVENTS.len() == EVENT_COUNT);
