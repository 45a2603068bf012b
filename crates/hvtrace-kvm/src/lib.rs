//! A small KVM micro-VMM, built to be traced.
//!
//! `hvtrace-kvm` boots a fixed, hand-assembled guest program on N vCPUs (one OS
//! thread each) and reports everything interesting that happens to a
//! [`VmmObserver`]: every `KVM_RUN` entry, every VM exit, every paravirtual
//! hypercall (entry and exit) and every guest event. The VMM knows nothing
//! about the tracer: [`kvm`] is the event set a tracing observer records
//! (`hvtrace kvm` implements [`VmmObserver`] over the host's rings), and
//! [`MAPPING`] maps that set onto the hypervisor model for `hvtrace analyze`.
//!
//! The VMM keeps its own counts ([`RunReport`]), independent of the observer, so a
//! test can compare what a trace recorded with what really happened.
//!
//! # Guest ABI
//!
//! The guest runs in 32-bit protected mode (flat segments, no paging). Every vCPU
//! runs the same code at [`guest::CODE_ADDR`]; `EBP` points at the vCPU's own
//! parameter block ([`guest::param_addr`]) and `ESP` at the top of its own stack page.
//!
//! | port | name | access | meaning |
//! |---|---|---|---|
//! | [`guest::DATA_PORT`] `0x400` | console/data | `out dx, al` | plain port I/O: only [`VmmObserver::vm_exit`] |
//! | [`guest::HYPERCALL_PORT`] `0x500` | hypercall | `out dx, eax` | `EAX` = number, `EBX`, `ECX`, `ESI`, `EDI` = args 0..3 (32-bit); the return value is put in `EAX` |
//! | [`guest::GUEST_EVENT_PORT`] `0x501` | guest event | `out dx, eax` | `EAX` = event id, value = `ECX:EBX` (high:low) |
//! | [`guest::DONE_PORT`] `0x502` | done | `out dx, eax` | the guest finished; `EAX` = sum of all hypercall return values (wrapping) |
//!
//! MMIO writes go to [`guest::MMIO_ADDR`] (`0xd000_0000`), which no memory backs, so
//! every write exits to the VMM.
//!
//! # Performance note
//!
//! On hardware virtualization (VMX/SVM) the guest runs natively between exits. On
//! KVM-PVM (`kvm_pvm` module: KVM with shadow paging and no VMX/SVM, as inside the
//! project's Firecracker build VMs) this non-PVM-aware guest is run by KVM's
//! instruction emulator at about 1.3 µs per instruction, and `KVM_GET_REGS` /
//! `KVM_SET_REGS` cost about 6 µs each, so a hypercall (one get, one set) costs
//! about 4 times a plain port write.
//!
//! Hypercalls ([`hypercall`]): 0 = version ([`hypercall::VERSION`]), 1 = yield
//! (returns this vCPU's yield count so far, this one included), 2 = console write
//! byte (arg 0's low byte; returns 1), 3 = get vCPU id. Any other number returns
//! [`hypercall::ENOSYS`].

mod events;
mod exit;
pub mod guest;
mod model;
mod vmm;

pub use events::{exit_fields, kvm, Access, ExitReason, Gpa, HypercallNr, Port, HYPERCALLS};
pub use exit::{Exit, EXIT_REASONS};
pub use model::{KvmMapping, MAPPING};
pub use vmm::{kvm_available, RunReport, VcpuReport, Vmm, VmmConfig, VmmError, Workload, CONSOLE_KEEP};

/// Hypercall numbers and well-known return values of the paravirtual interface.
pub mod hypercall {
    /// `nop`/version: returns [`VERSION`].
    pub const VERSION_NR: u32 = 0;
    /// `yield`: counts a yield, returns the vCPU's yield count including this one.
    pub const YIELD_NR: u32 = 1;
    /// `console write byte`: appends the low byte of arg 0 to the vCPU's console, returns 1.
    pub const CONSOLE_WRITE_NR: u32 = 2;
    /// `get vcpu id`: returns the vCPU's index.
    pub const GET_VCPU_ID_NR: u32 = 3;
    /// The interface version returned by hypercall 0 (major 1, minor 0).
    pub const VERSION: u64 = 0x0001_0000;
    /// Returned for an unknown hypercall number.
    pub const ENOSYS: u64 = u64::MAX;
    /// Name of a hypercall number, for recording as an enum.
    pub fn name(nr: u32) -> &'static str {
        match nr {
            VERSION_NR => "version",
            YIELD_NR => "yield",
            CONSOLE_WRITE_NR => "console_write",
            GET_VCPU_ID_NR => "get_vcpu_id",
            _ => "unknown",
        }
    }
}

/// Receives what happens inside the VMM. Called from the vCPU threads, so it must
/// be [`Sync`]; every call names the vCPU it comes from.
///
/// Order of calls for one `KVM_RUN`: [`run_entry`](Self::run_entry), then
/// [`vm_exit`](Self::vm_exit) for the exit it returned with, then for a hypercall exit
/// [`hypercall_entry`](Self::hypercall_entry) and
/// [`hypercall_exit`](Self::hypercall_exit), or for a guest-event exit
/// [`guest_event`](Self::guest_event).
pub trait VmmObserver: Sync {
    /// The vCPU is about to enter the guest (`KVM_RUN`).
    fn run_entry(&self, vcpu: u32);
    /// `KVM_RUN` returned with this exit (every exit, hypercall and guest-event port
    /// exits included).
    fn vm_exit(&self, vcpu: u32, exit: &Exit);
    /// The guest made hypercall `nr` with these arguments; the VMM is about to handle it.
    fn hypercall_entry(&self, vcpu: u32, nr: u32, args: [u64; 4]);
    /// Hypercall `nr` was handled and `ret` was put in the guest's return register.
    fn hypercall_exit(&self, vcpu: u32, nr: u32, ret: u64);
    /// The guest signalled event `id` with `value`.
    fn guest_event(&self, vcpu: u32, id: u32, value: u64);
}

/// An observer that ignores everything (the untraced baseline).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullObserver;

impl VmmObserver for NullObserver {
    #[inline]
    fn run_entry(&self, _vcpu: u32) {}
    #[inline]
    fn vm_exit(&self, _vcpu: u32, _exit: &Exit) {}
    #[inline]
    fn hypercall_entry(&self, _vcpu: u32, _nr: u32, _args: [u64; 4]) {}
    #[inline]
    fn hypercall_exit(&self, _vcpu: u32, _nr: u32, _ret: u64) {}
    #[inline]
    fn guest_event(&self, _vcpu: u32, _id: u32, _value: u64) {}
}
