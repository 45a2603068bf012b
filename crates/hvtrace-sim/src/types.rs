//! The enumerations recorded in `xen` events (real Xen / VMX numbering) and
//! Xen's reserved domain ids.

/// `DOMID_SELF`: "the calling domain" in hypercall arguments.
pub const DOMID_SELF: u16 = 0x7FF0;
/// `DOMID_XEN`: the hypervisor itself (target of Xen-internal interrupts).
pub const DOMID_XEN: u16 = 0x7FF2;
/// `DOMID_IDLE`: the idle domain; pCPU `n` runs idle vCPU `n`.
pub const DOMID_IDLE: u16 = 0x7FFF;
/// First reserved domain id: real domains are below it.
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;

/// Xen's `LOCAL_TIMER_VECTOR`.
pub const TIMER_VECTOR: u8 = 0xfa;
/// Xen's `EVENT_CHECK_VECTOR` (the IPI that kicks a pCPU to reschedule).
pub const EVENT_CHECK_VECTOR: u8 = 0xfc;

hvtrace_core::ctf_enum! {
    /// A vCPU's runstate (`RUNSTATE_*` in `xen/include/public/vcpu.h`).
    #[allow(non_camel_case_types)]
    pub enum Runstate: u8 {
        /// On a pCPU.
        running = 0,
        /// Ready, waiting in a runqueue.
        runnable = 1,
        /// Waiting for an event (`SCHEDOP_block`, `HLT`).
        blocked = 2,
        /// Down (`VCPUOP_down`), or the domain is being built or destroyed.
        offline = 3,
    }
}

hvtrace_core::ctf_enum! {
    /// Credit-scheduler priority (`CSCHED_PRI_*` in `xen/common/sched/credit.c`).
    #[allow(non_camel_case_types)]
    pub enum CreditPrio: i8 {
        /// Just woken from a block: runs before any `under`.
        boost = 0,
        /// Has credit left.
        under = -1,
        /// Has used up its credit.
        over = -2,
        /// The idle vCPU.
        idle = -64,
    }
}

hvtrace_core::ctf_enum! {
    /// Why a domain went away (`SHUTDOWN_*` in `xen/include/public/sched.h`).
    #[allow(non_camel_case_types)]
    pub enum ShutdownReason: u8 {
        /// Halted.
        poweroff = 0,
        /// Restart requested.
        reboot = 1,
        /// Suspended (to be resumed).
        suspend = 2,
        /// Crashed.
        crash = 3,
        /// Watchdog fired.
        watchdog = 4,
        /// Soft reset (kexec).
        soft_reset = 5,
    }
}

hvtrace_core::ctf_enum! {
    /// Hypercall numbers (`__HYPERVISOR_*` in `xen/include/public/xen.h`).
    #[allow(non_camel_case_types)]
    pub enum Hypercall: u16 {
        /// 0
        set_trap_table = 0,
        /// 1: PV page-table updates.
        mmu_update = 1,
        /// 2
        set_gdt = 2,
        /// 3
        stack_switch = 3,
        /// 4
        set_callbacks = 4,
        /// 5
        fpu_taskswitch = 5,
        /// 6
        sched_op_compat = 6,
        /// 7
        platform_op = 7,
        /// 8
        set_debugreg = 8,
        /// 9
        get_debugreg = 9,
        /// 10
        update_descriptor = 10,
        /// 12: memory reservation, physmap.
        memory_op = 12,
        /// 13: a batch of hypercalls.
        multicall = 13,
        /// 14
        update_va_mapping = 14,
        /// 15
        set_timer_op = 15,
        /// 16
        event_channel_op_compat = 16,
        /// 17
        xen_version = 17,
        /// 18: console read / write.
        console_io = 18,
        /// 19
        physdev_op_compat = 19,
        /// 20: grant map / unmap / copy.
        grant_table_op = 20,
        /// 21
        vm_assist = 21,
        /// 22
        update_va_mapping_otherdomain = 22,
        /// 23
        iret = 23,
        /// 24: vCPU up / down / timers.
        vcpu_op = 24,
        /// 25
        set_segment_base = 25,
        /// 26
        mmuext_op = 26,
        /// 27
        xsm_op = 27,
        /// 28
        nmi_op = 28,
        /// 29: yield, block, shutdown.
        sched_op = 29,
        /// 30
        callback_op = 30,
        /// 31
        xenoprof_op = 31,
        /// 32: event-channel send / bind / close.
        event_channel_op = 32,
        /// 33
        physdev_op = 33,
        /// 34: HVM parameters and controls.
        hvm_op = 34,
        /// 35
        sysctl = 35,
        /// 36
        domctl = 36,
        /// 37
        kexec_op = 37,
        /// 38
        tmem_op = 38,
        /// 39
        argo_op = 39,
        /// 40
        xenpmu_op = 40,
        /// 41
        dm_op = 41,
        /// 42
        hypfs_op = 42,
    }
}

hvtrace_core::ctf_enum! {
    /// VMX basic exit reasons (Intel SDM vol. 3, appendix C; `EXIT_REASON_*` in Xen's `vmx.h`).
    #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
    pub enum VmxExitReason: u16 {
        /// 0: exception or NMI.
        EXCEPTION_NMI = 0,
        /// 1
        EXTERNAL_INTERRUPT = 1,
        /// 2
        TRIPLE_FAULT = 2,
        /// 3
        INIT = 3,
        /// 4
        SIPI = 4,
        /// 5
        IO_SMI = 5,
        /// 6
        OTHER_SMI = 6,
        /// 7: interrupt window.
        PENDING_VIRT_INTR = 7,
        /// 8: NMI window.
        PENDING_VIRT_NMI = 8,
        /// 9
        TASK_SWITCH = 9,
        /// 10
        CPUID = 10,
        /// 11
        GETSEC = 11,
        /// 12
        HLT = 12,
        /// 13
        INVD = 13,
        /// 14
        INVLPG = 14,
        /// 15
        RDPMC = 15,
        /// 16
        RDTSC = 16,
        /// 17
        RSM = 17,
        /// 18: a hypercall from an HVM guest.
        VMCALL = 18,
        /// 19
        VMCLEAR = 19,
        /// 20
        VMLAUNCH = 20,
        /// 21
        VMPTRLD = 21,
        /// 22
        VMPTRST = 22,
        /// 23
        VMREAD = 23,
        /// 24
        VMRESUME = 24,
        /// 25
        VMWRITE = 25,
        /// 26
        VMXOFF = 26,
        /// 27
        VMXON = 27,
        /// 28
        CR_ACCESS = 28,
        /// 29
        DR_ACCESS = 29,
        /// 30
        IO_INSTRUCTION = 30,
        /// 31
        MSR_READ = 31,
        /// 32
        MSR_WRITE = 32,
        /// 33
        INVALID_GUEST_STATE = 33,
        /// 34
        MSR_LOADING = 34,
        /// 36
        MWAIT_INSTRUCTION = 36,
        /// 37
        MONITOR_TRAP_FLAG = 37,
        /// 39
        MONITOR_INSTRUCTION = 39,
        /// 40: pause-loop exiting.
        PAUSE_INSTRUCTION = 40,
        /// 41
        MCE_DURING_VMENTRY = 41,
        /// 43
        TPR_BELOW_THRESHOLD = 43,
        /// 44
        APIC_ACCESS = 44,
        /// 45
        EOI_INDUCED = 45,
        /// 46
        ACCESS_GDTR_OR_IDTR = 46,
        /// 47
        ACCESS_LDTR_OR_TR = 47,
        /// 48: nested page fault.
        EPT_VIOLATION = 48,
        /// 49
        EPT_MISCONFIG = 49,
        /// 50
        INVEPT = 50,
        /// 51
        RDTSCP = 51,
        /// 52
        VMX_PREEMPTION_TIMER_EXPIRED = 52,
        /// 53
        INVVPID = 53,
        /// 54
        WBINVD = 54,
        /// 55
        XSETBV = 55,
        /// 56
        APIC_WRITE = 56,
        /// 57
        RDRAND = 57,
        /// 58
        INVPCID = 58,
        /// 59
        VMFUNC = 59,
        /// 60
        ENCLS = 60,
        /// 61
        RDSEED = 61,
        /// 62
        PML_FULL = 62,
        /// 63
        XSAVES = 63,
        /// 64
        XRSTORS = 64,
    }
}
