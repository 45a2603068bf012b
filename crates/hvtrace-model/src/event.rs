//! The vocabulary: what a hypervisor trace says, whatever wrote it.

/// A virtual CPU: its domain (Xen domid; the VM's id for a single-VM
/// source such as the KVM micro-VMM, which uses 0) and its index in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vcpu {
    /// Domain or VM id.
    pub domain: u32,
    /// vCPU index within the domain.
    pub vcpu: u32,
}

impl Vcpu {
    /// vCPU `vcpu` of `domain`.
    pub const fn new(domain: u32, vcpu: u32) -> Vcpu {
        Vcpu { domain, vcpu }
    }
}

/// A vCPU's scheduling state (Xen's `RUNSTATE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runstate {
    /// On a pCPU: in the guest, or in the hypervisor on its behalf.
    Running,
    /// Ready, waiting for a pCPU.
    Runnable,
    /// Waiting for an event (halted, blocked in a hypercall).
    Blocked,
    /// Down, or its domain is being built or torn down.
    Offline,
}

impl Runstate {
    /// All states, in the order tables print them.
    pub const ALL: [Runstate; 4] = [Runstate::Running, Runstate::Runnable, Runstate::Blocked, Runstate::Offline];

    /// The state numbered `code` in Xen's `RUNSTATE_*` (0 running,
    /// 1 runnable, 2 blocked, 3 offline), which the simulated host and
    /// imported xentrace files both record; `None` for any other number.
    pub const fn from_xen(code: u64) -> Option<Runstate> {
        match code {
            0 => Some(Runstate::Running),
            1 => Some(Runstate::Runnable),
            2 => Some(Runstate::Blocked),
            3 => Some(Runstate::Offline),
            _ => None,
        }
    }

    /// Lower-case name (`running`, `runnable`, `blocked`, `offline`).
    pub const fn name(self) -> &'static str {
        match self {
            Runstate::Running => "running",
            Runstate::Runnable => "runnable",
            Runstate::Blocked => "blocked",
            Runstate::Offline => "offline",
        }
    }
}

/// Direction of an access the guest made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// `in`, a load, `RDMSR`, a read of a control register.
    Read,
    /// `out`, a store, `WRMSR`, a write of a control register.
    Write,
}

impl Access {
    /// `read` or `write`.
    pub const fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// What an exit was about, where the source says (the sub-tables of the
/// exit analysis group by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ExitDetail {
    /// Nothing more than the reason.
    None,
    /// Port I/O.
    Io {
        /// I/O port.
        port: u16,
        /// Bytes (1, 2, 4).
        size: u8,
        /// `in` or `out`.
        access: Access,
    },
    /// An access to guest-physical memory the hypervisor emulates (MMIO),
    /// or a nested page fault at that address.
    Mmio {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes (0 when the source does not say).
        size: u8,
        /// Load or store.
        access: Access,
    },
    /// `RDMSR` / `WRMSR`.
    Msr {
        /// MSR index.
        index: u32,
        /// Read or write.
        access: Access,
    },
    /// An external interrupt or exception, by vector.
    Vector(u32),
    /// A hypercall instruction (`VMCALL`), by hypercall number.
    Hypercall(u32),
}

/// A guest → hypervisor transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit<'m> {
    /// The reason's number in its source (VMX basic exit reason, SVM exit
    /// code, `KVM_EXIT_*`): the key tables join on.
    pub code: u32,
    /// The reason's name in its source (`io`, `HLT`, `EPT_VIOLATION`, …).
    pub name: &'m str,
    /// What it was about.
    pub detail: ExitDetail,
}

/// One model event. Its time is the timestamp of the record it came from,
/// and its pCPU the CPU of that record's stream (or the source's own pCPU
/// field, when a mapping knows better and says so in [`Event::OnPcpu`]).
///
/// `'m` is the lifetime of the [`crate::Mapper`] that produced it: names
/// are borrowed from its tables, never allocated per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'m> {
    /// The vCPU left the guest (a VM exit). Its time until the vCPU's next
    /// [`Event::Entry`] is the exit's cost.
    Exit {
        /// Which vCPU.
        vcpu: Vcpu,
        /// Why.
        exit: Exit<'m>,
    },
    /// The vCPU (re-)entered the guest.
    Entry {
        /// Which vCPU.
        vcpu: Vcpu,
    },
    /// On a hypervisor split between a kernel and a VMM in user space
    /// (KVM): the kernel took the vCPU out of the guest for an exit it
    /// handles itself, at least at first (`kvm_exit`; on hosts without
    /// hardware virtualisation, `kvm_emulate_insn`: one instruction
    /// emulated). It ends at the vCPU's next [`Event::Entry`], or goes on
    /// to the VMM ([`Event::ToVmm`]).
    KernelExit {
        /// Which vCPU.
        vcpu: Vcpu,
        /// Why, in the kernel's terms (VMX/SVM reason, `emulate_insn`).
        exit: Exit<'m>,
    },
    /// What the exit the kernel is handling is about (KVM's `kvm_pio`,
    /// `kvm_mmio`, `kvm_hypercall`); it begins a [`Event::KernelExit`] of
    /// its own if none is in progress (a host recording neither `kvm_exit`
    /// nor `kvm_emulate_insn`).
    KernelDetail {
        /// Which vCPU.
        vcpu: Vcpu,
        /// What, named as a reason (`pio`, `mmio`, `hypercall`) with its detail.
        exit: Exit<'m>,
    },
    /// What the vCPU's open [`Event::Exit`] is about, said by a record of
    /// its own after the exit's (Xen's handler records: `TRC_HVM_IOPORT_*`,
    /// `TRC_HVM_IOMEM_*`, `TRC_HVM_NPF`, `TRC_HVM_MSR_*`): it replaces that exit's detail.
    /// Without an open exit it says nothing.
    ExitDetail {
        /// Which vCPU.
        vcpu: Vcpu,
        /// What the exit was about.
        detail: ExitDetail,
    },
    /// The kernel hands the vCPU's exit to the VMM in user space (KVM's
    /// `kvm_userspace_exit`: KVM_RUN returns). Until the vCPU's next
    /// [`Event::Entry`] the exit is the VMM's.
    ToVmm {
        /// Which vCPU.
        vcpu: Vcpu,
        /// Why: the `KVM_EXIT_*` reason, as the VMM's own `vm_exit` names it.
        exit: Exit<'m>,
    },
    /// The vCPU's runstate is now `new` (the previous one is whatever the
    /// vCPU's last runstate event said).
    Runstate {
        /// Which vCPU.
        vcpu: Vcpu,
        /// The state it is in from now on.
        new: Runstate,
    },
    /// The vCPU issued hypercall `nr`.
    HypercallEntry {
        /// Which vCPU.
        vcpu: Vcpu,
        /// Hypercall number in its source.
        nr: u32,
        /// Its name (`sched_op`, `yield`, …; `unknown` if the source has none).
        name: &'m str,
    },
    /// Hypercall `nr` of the vCPU returned to the guest.
    HypercallExit {
        /// Which vCPU.
        vcpu: Vcpu,
        /// Hypercall number in its source.
        nr: u32,
        /// Its name.
        name: &'m str,
    },
    /// An interrupt was injected into (or, for `domain: None`, taken by) the
    /// hypervisor on behalf of a domain.
    Interrupt {
        /// Vector.
        vector: u32,
        /// Target domain; `None` for the hypervisor's own (timer, IPIs).
        domain: Option<u32>,
        /// Target vCPU within `domain`, where the source says.
        vcpu: Option<u32>,
    },
    /// Something the guest itself reported (a marker, a console line, a
    /// fault the hypervisor handled for it).
    GuestEvent {
        /// Which vCPU (vCPU 0 of the domain when the source names only the domain).
        vcpu: Vcpu,
        /// Kind, by number in its source.
        kind: u32,
        /// Kind, by name.
        name: &'m str,
        /// A value that goes with it.
        value: u64,
    },
    /// `count` events of this pCPU were lost just before this one (an
    /// in-band loss record, as xentrace's `LOST_RECORDS`). Losses a packet
    /// context counts (`events_discarded`) are the reader's to report.
    Lost {
        /// Events lost.
        count: u64,
    },
    /// The domain was destroyed: its vCPUs end here. A domain id used again
    /// later is a new domain (Xen gives a rebuilt guest a new id anyway).
    DomainGone {
        /// The domain.
        domain: u32,
    },
    /// A record about a vCPU its source cannot name yet (KVM's kernel
    /// events of a thread not yet known as a vCPU): attributed to none,
    /// and counted, so that no event is dropped silently.
    Unattributed,
    /// The record's source names the pCPU it happened on, which is not the
    /// stream's CPU (merged or re-homed streams): the events that follow
    /// from the same record happened on `pcpu`.
    OnPcpu {
        /// The pCPU.
        pcpu: u32,
    },
}

impl Event<'_> {
    /// The vCPU the event is about, if it is about one.
    pub fn vcpu(&self) -> Option<Vcpu> {
        match *self {
            Event::Exit { vcpu, .. }
            | Event::Entry { vcpu }
            | Event::KernelExit { vcpu, .. }
            | Event::KernelDetail { vcpu, .. }
            | Event::ExitDetail { vcpu, .. }
            | Event::ToVmm { vcpu, .. }
            | Event::Runstate { vcpu, .. }
            | Event::HypercallEntry { vcpu, .. }
            | Event::HypercallExit { vcpu, .. }
            | Event::GuestEvent { vcpu, .. } => Some(vcpu),
            Event::Interrupt { domain: Some(d), vcpu: Some(v), .. } => Some(Vcpu::new(d, v)),
            Event::Interrupt { .. }
            | Event::Lost { .. }
            | Event::Unattributed
            | Event::OnPcpu { .. }
            | Event::DomainGone { .. } => None,
        }
    }
}
