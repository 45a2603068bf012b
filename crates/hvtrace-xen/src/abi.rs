//! Numbers of the xentrace format, from Xen's `xen/include/public/trace.h`
//! (SPDX MIT) and the layout `tools/xentrace/xentrace.c` writes.
//!
//! An event id is `class (bits 16-27) | sub-class (12-15) | event (0-11)`;
//! [`TRC_64_FLAG`] marks the variant whose payload carries 64-bit values.

/// Header bit 31: the record carries a 64-bit TSC after the header.
pub const TRC_HD_CYCLE_FLAG: u32 = 1 << 31;
/// Header bits 28-30: number of 32-bit data words (0-7).
pub const TRC_HD_EXTRA_SHIFT: u32 = 28;
/// Header bits 0-27: the event id.
pub const TRC_HD_EVENT_MASK: u32 = 0x0fff_ffff;
/// Most data words a record can carry.
pub const TRC_MAX_WORDS: usize = 7;
/// Largest record: header, TSC, seven words.
pub const TRC_MAX_RECORD: usize = 4 + 8 + 4 * TRC_MAX_WORDS;
/// Event bit of the 64-bit payload variants.
pub const TRC_64_FLAG: u32 = 0x100;

/// `TRC_LOST_RECORDS`: `{u32 lost, u16 domid, u16 vcpu, u64 first_tsc}`.
pub const TRC_LOST_RECORDS: u32 = 0x0001_f001;
/// `TRC_TRACE_WRAP_BUFFER`: filler up to the end of the ring; garbage data.
pub const TRC_TRACE_WRAP_BUFFER: u32 = 0x0001_f002;
/// `TRC_TRACE_CPU_CHANGE`: `{i32 cpu, u32 window bytes}`, opens each window.
pub const TRC_TRACE_CPU_CHANGE: u32 = 0x0001_f003;
/// The whole header xentrace writes for a CPU change (two words, no TSC).
pub const CPU_CHANGE_HEADER: u32 = TRC_TRACE_CPU_CHANGE | (2 << TRC_HD_EXTRA_SHIFT);
/// Bytes of a CPU-change record.
pub const CPU_CHANGE_LEN: usize = 12;

/// `TRC_SCHED_RUNSTATE_CHANGE`: `| old << 8 | new << 4`, `{u16 vcpu, u16 domid}`.
pub const TRC_SCHED_RUNSTATE_CHANGE: u32 = 0x0002_1001;
/// `TRC_SCHED_CONTINUE_RUNNING`.
pub const TRC_SCHED_CONTINUE_RUNNING: u32 = 0x0002_1002;
/// `TRC_SCHED_DOM_ADD`: `{domid}`.
pub const TRC_SCHED_DOM_ADD: u32 = 0x0002_8001;
/// `TRC_SCHED_DOM_REM`: `{domid}`.
pub const TRC_SCHED_DOM_REM: u32 = 0x0002_8002;
/// `TRC_SCHED_SLEEP`: `{domid, vcpu}`.
pub const TRC_SCHED_SLEEP: u32 = 0x0002_8003;
/// `TRC_SCHED_WAKE`: `{domid, vcpu}`.
pub const TRC_SCHED_WAKE: u32 = 0x0002_8004;
/// `TRC_SCHED_YIELD`: `{domid, vcpu}`.
pub const TRC_SCHED_YIELD: u32 = 0x0002_8005;
/// `TRC_SCHED_BLOCK`: `{domid, vcpu}`.
pub const TRC_SCHED_BLOCK: u32 = 0x0002_8006;
/// `TRC_SCHED_SWITCH`: `{prev domid, prev vcpu, next domid, next vcpu}`.
pub const TRC_SCHED_SWITCH: u32 = 0x0002_800a;
/// `TRC_SCHED_SWITCH_INFPREV`: `{domid, vcpu, runtime}`.
pub const TRC_SCHED_SWITCH_INFPREV: u32 = 0x0002_800e;
/// `TRC_SCHED_SWITCH_INFNEXT`: `{domid, vcpu, waited, next_time}`.
pub const TRC_SCHED_SWITCH_INFNEXT: u32 = 0x0002_800f;

/// `TRC_MEM_PAGE_GRANT_MAP`: `{domid}`.
pub const TRC_MEM_PAGE_GRANT_MAP: u32 = 0x0010_f001;
/// `TRC_MEM_PAGE_GRANT_UNMAP`: `{domid}`.
pub const TRC_MEM_PAGE_GRANT_UNMAP: u32 = 0x0010_f002;
/// `TRC_MEM_PAGE_GRANT_TRANSFER`: `{domid}`.
pub const TRC_MEM_PAGE_GRANT_TRANSFER: u32 = 0x0010_f003;

/// `TRC_PV_PAGE_FAULT`: `{eip, addr, error_code}` (64: `{rip, addr, error_code}`).
pub const TRC_PV_PAGE_FAULT: u32 = 0x0020_1004;
/// `TRC_PV_HYPERCALL_V2`: `{op | arg presence << 20, args...}`.
pub const TRC_PV_HYPERCALL_V2: u32 = 0x0020_100d;
/// `TRC_PV_HYPERCALL_SUBCALL`: as V2, for a multicall's entries.
pub const TRC_PV_HYPERCALL_SUBCALL: u32 = 0x0020_200e;

/// `TRC_HVM_VMENTRY`: no data.
pub const TRC_HVM_VMENTRY: u32 = 0x0008_1001;
/// `TRC_HVM_VMEXIT`: `{exit_reason, eip}` (64: `{exit_reason, rip}`). VMX
/// and SVM write the same id: only the exit codes tell them apart.
pub const TRC_HVM_VMEXIT: u32 = 0x0008_1002;
/// `TRC_HVM_PF_XEN`: `{va, error_code}` (64: `{va, error_code}`).
pub const TRC_HVM_PF_XEN: u32 = 0x0008_2001;
/// `TRC_HVM_INJ_EXC`: `{vector, error_code}`.
pub const TRC_HVM_INJ_EXC: u32 = 0x0008_2003;
/// `TRC_HVM_INJ_VIRQ`: `{vector, fake}`.
pub const TRC_HVM_INJ_VIRQ: u32 = 0x0008_2004;
/// `TRC_HVM_REINJ_VIRQ`: `{vector}`.
pub const TRC_HVM_REINJ_VIRQ: u32 = 0x0008_2005;
/// `TRC_HVM_CR_READ`: `{cr, value}`.
pub const TRC_HVM_CR_READ: u32 = 0x0008_2008;
/// `TRC_HVM_CR_WRITE`: `{cr, value}`.
pub const TRC_HVM_CR_WRITE: u32 = 0x0008_2009;
/// `TRC_HVM_MSR_READ`: `{msr, u64 value}`.
pub const TRC_HVM_MSR_READ: u32 = 0x0008_200c;
/// `TRC_HVM_MSR_WRITE`: `{msr, u64 value}`.
pub const TRC_HVM_MSR_WRITE: u32 = 0x0008_200d;
/// `TRC_HVM_CPUID`: `{input, eax, ebx, ecx, edx}`.
pub const TRC_HVM_CPUID: u32 = 0x0008_200e;
/// `TRC_HVM_INTR`: `{vector}`.
pub const TRC_HVM_INTR: u32 = 0x0008_200f;
/// `TRC_HVM_NMI`: no data.
pub const TRC_HVM_NMI: u32 = 0x0008_2010;
/// `TRC_HVM_VMMCALL`: `{eax}`.
pub const TRC_HVM_VMMCALL: u32 = 0x0008_2012;
/// `TRC_HVM_HLT`: `{intr_pending}`.
pub const TRC_HVM_HLT: u32 = 0x0008_2013;
/// `TRC_HVM_INVLPG`: `{is_invlpga, va}`.
pub const TRC_HVM_INVLPG: u32 = 0x0008_2014;
/// `TRC_HVM_IOPORT_READ`: `{port, data}`.
pub const TRC_HVM_IOPORT_READ: u32 = 0x0008_2016;
/// `TRC_HVM_IOMEM_READ`: `{addr, data}`.
pub const TRC_HVM_IOMEM_READ: u32 = 0x0008_2017;
/// `TRC_HVM_CLTS`: no data.
pub const TRC_HVM_CLTS: u32 = 0x0008_2018;
/// `TRC_HVM_LMSW`: `{value}`.
pub const TRC_HVM_LMSW: u32 = 0x0008_2019;
/// `TRC_HVM_RDTSC`: `{u64 tsc}`.
pub const TRC_HVM_RDTSC: u32 = 0x0008_201a;
/// `TRC_HVM_INTR_WINDOW`: `{vector, source, intr}`.
pub const TRC_HVM_INTR_WINDOW: u32 = 0x0008_2020;
/// `TRC_HVM_NPF`: `{u64 gpa, u64 mfn, qualification, p2mt}`.
pub const TRC_HVM_NPF: u32 = 0x0008_2021;
/// `TRC_HVM_TRAP`: `{vector}`.
pub const TRC_HVM_TRAP: u32 = 0x0008_2023;
/// `TRC_HVM_TRAP_DEBUG`: `{exit_qualification}`.
pub const TRC_HVM_TRAP_DEBUG: u32 = 0x0008_2024;
/// `TRC_HVM_IOPORT_WRITE`: `{port, data}`.
pub const TRC_HVM_IOPORT_WRITE: u32 = 0x0008_2216;
/// `TRC_HVM_IOMEM_WRITE`: `{addr, data}`.
pub const TRC_HVM_IOMEM_WRITE: u32 = 0x0008_2217;

/// Most pCPUs a window may name: Xen's largest `NR_CPUS` is 4096; a larger
/// id is damage, not a CPU.
pub const MAX_PCPUS: u32 = 4096;

/// The 64-bit variant of `event`.
pub const fn with_64(event: u32) -> u32 {
    event | TRC_64_FLAG
}

/// A runstate-change event id: `old` and `new` are `RUNSTATE_*` (0-3).
pub const fn runstate_change(old: u32, new: u32) -> u32 {
    TRC_SCHED_RUNSTATE_CHANGE | (old & 3) << 8 | (new & 3) << 4
}

/// The `(old, new)` runstates of a runstate-change event id, or `None` for
/// any other event.
pub const fn runstates_of(event: u32) -> Option<(u8, u8)> {
    if event & !0x330 == TRC_SCHED_RUNSTATE_CHANGE {
        Some((((event >> 8) & 3) as u8, ((event >> 4) & 3) as u8))
    } else {
        None
    }
}

/// The record header for `event` with `words` data words, with or without TSC.
pub const fn header(event: u32, words: usize, tsc: bool) -> u32 {
    (event & TRC_HD_EVENT_MASK) | ((words as u32 & 7) << TRC_HD_EXTRA_SHIFT) | if tsc { TRC_HD_CYCLE_FLAG } else { 0 }
}
