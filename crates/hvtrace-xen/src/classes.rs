//! The CTF event classes of an imported xentrace file: names and field
//! names from Xen's `public/trace.h`, one class per event id and payload
//! form (the 64-bit variants, `TRC_64_FLAG`, are classes of their own).
//!
//! Most classes are *verbatim*: their CTF fields, read in order, are exactly
//! the record's little-endian data words (a 64-bit field is a low/high word
//! pair, two 16-bit fields share a word low half first), so the payload is
//! the data bytes unchanged and the metadata alone gives them types. A
//! record whose word count does not match its class becomes `xen_raw`.

use hvtrace_core::event::{EventDesc, FieldDesc};
use hvtrace_core::field::{EnumLabel, FieldKind};
use hvtrace_sim::{Hypercall, Runstate, VmxExitReason};

use crate::abi::*;

const U16: FieldKind = FieldKind::Int { bits: 16, signed: false, hex: false };
const U32: FieldKind = FieldKind::Int { bits: 32, signed: false, hex: false };
const X32: FieldKind = FieldKind::Int { bits: 32, signed: false, hex: true };
const U64: FieldKind = FieldKind::Int { bits: 64, signed: false, hex: false };
const X64: FieldKind = FieldKind::Int { bits: 64, signed: false, hex: true };
const RUNSTATE: FieldKind = FieldKind::Enum { bits: 8, signed: false, labels: Runstate::LABELS };
const VMX_EXIT: FieldKind = FieldKind::Enum { bits: 32, signed: false, labels: VmxExitReason::LABELS };
const SVM_EXIT: FieldKind = FieldKind::Enum { bits: 32, signed: false, labels: SVM_EXIT_LABELS };
const HYPERCALL: FieldKind = FieldKind::Enum { bits: 32, signed: false, labels: Hypercall::LABELS };
const ARG_PRESENCE: FieldKind = FieldKind::Int { bits: 16, signed: false, hex: true };
const BYTES: FieldKind = FieldKind::Bytes;

/// How a record's payload becomes a class's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The data words unchanged, for records of this event id.
    Verbatim(u32),
    /// The vCPU running on the pCPU (two `u16`: domid, vcpu; tracked by the
    /// importer), then the data words unchanged: for the HVM and PV records,
    /// whose vCPU is the current one and which do not name it.
    Current(u32),
    /// The data word, then the old and new runstates from the event id.
    Runstate,
    /// The current vCPU, hypercall number, argument presence, six 64-bit arguments.
    Hypercall,
    /// Event id and data words of any record no other class takes.
    Raw,
}

/// Which vendor's exit codes `TRC_HVM_VMEXIT` carries (the record does not say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Vendor {
    /// Intel VMX basic exit reasons (xenalyze's default).
    #[default]
    Vmx,
    /// AMD SVM exit codes (xenalyze `--svm-mode`).
    Svm,
}

macro_rules! classes {
    ($( $(#[$m:meta])* $name:ident = $form:expr, $vendor:expr, [ $( $f:ident : $k:expr ),* ]; )*) => {
        /// Class ids (positions in [`CLASSES`]), most frequent first: ids up to 30
        /// get the 4-byte CTF event header.
        #[allow(non_camel_case_types, missing_docs)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ClassId { $( $(#[$m])* $name ),* }

        impl ClassId {
            /// Every class, in id order.
            pub const ALL: &'static [ClassId] = &[ $( ClassId::$name ),* ];
        }

        /// The event classes, in id order.
        pub const CLASSES: &[EventDesc] = &[ $( EventDesc {
            name: stringify!($name),
            fields: &[ $( FieldDesc { name: stringify!($f), kind: $k } ),* ],
        } ),* ];

        /// How each class is filled, and for which vendor only (if any).
        pub const FORMS: &[(Form, Option<Vendor>)] = &[ $( ($form, $vendor) ),* ];
    };
}

use Form::Current as C;
use Form::Verbatim as V;
const ANY: Option<Vendor> = None;
const VMX: Option<Vendor> = Some(Vendor::Vmx);
const SVM: Option<Vendor> = Some(Vendor::Svm);

classes! {
    /// `TRC_HVM_VMEXIT64` on Intel.
    vmx_exit64 = C(with_64(TRC_HVM_VMEXIT)), VMX, [domid: U16, vcpu: U16, exit_reason: VMX_EXIT, rip: X64];
    /// `TRC_HVM_VMENTRY`.
    vmentry = C(TRC_HVM_VMENTRY), ANY, [domid: U16, vcpu: U16];
    /// `TRC_SCHED_RUNSTATE_CHANGE`.
    runstate_change = Form::Runstate, ANY, [vcpu: U16, domid: U16, old: RUNSTATE, new: RUNSTATE];
    /// `TRC_SCHED_SWITCH`.
    sched_switch = V(TRC_SCHED_SWITCH), ANY, [prev_domid: U32, prev_vcpu: U32, next_domid: U32, next_vcpu: U32];
    /// `TRC_SCHED_SWITCH_INFPREV`: `runtime` in ns.
    sched_switch_infprev = V(TRC_SCHED_SWITCH_INFPREV), ANY, [domid: U32, vcpu: U32, runtime: U32];
    /// `TRC_SCHED_SWITCH_INFNEXT`: `waited` in ns.
    sched_switch_infnext = V(TRC_SCHED_SWITCH_INFNEXT), ANY, [domid: U32, vcpu: U32, waited: U32, next_time: U32];
    /// `TRC_SCHED_WAKE`.
    sched_wake = V(TRC_SCHED_WAKE), ANY, [domid: U32, vcpu: U32];
    /// `TRC_SCHED_BLOCK`.
    sched_block = V(TRC_SCHED_BLOCK), ANY, [domid: U32, vcpu: U32];
    /// `TRC_SCHED_SLEEP`.
    sched_sleep = V(TRC_SCHED_SLEEP), ANY, [domid: U32, vcpu: U32];
    /// `TRC_SCHED_YIELD`.
    sched_yield = V(TRC_SCHED_YIELD), ANY, [domid: U32, vcpu: U32];
    /// `TRC_PV_HYPERCALL_V2`: `args_present` holds two bits per argument
    /// (01 32-bit, 10 64-bit, 00 absent); absent arguments are 0.
    pv_hypercall = Form::Hypercall, ANY, [domid: U16, vcpu: U16, op: HYPERCALL, args_present: ARG_PRESENCE, a0: X64, a1: X64, a2: X64, a3: X64, a4: X64, a5: X64];
    /// `TRC_HVM_IOPORT_READ`.
    hvm_ioport_read = C(TRC_HVM_IOPORT_READ), ANY, [domid: U16, vcpu: U16, port: X32, data: X32];
    /// `TRC_HVM_IOPORT_WRITE`.
    hvm_ioport_write = C(TRC_HVM_IOPORT_WRITE), ANY, [domid: U16, vcpu: U16, port: X32, data: X32];
    /// `TRC_HVM_IOMEM_READ`.
    hvm_iomem_read = C(TRC_HVM_IOMEM_READ), ANY, [domid: U16, vcpu: U16, addr: X32, data: X32];
    /// `TRC_HVM_IOMEM_WRITE`.
    hvm_iomem_write = C(TRC_HVM_IOMEM_WRITE), ANY, [domid: U16, vcpu: U16, addr: X32, data: X32];
    /// `TRC_HVM_CR_READ64`.
    hvm_cr_read64 = C(with_64(TRC_HVM_CR_READ)), ANY, [domid: U16, vcpu: U16, cr: U32, value: X64];
    /// `TRC_HVM_CR_WRITE64`.
    hvm_cr_write64 = C(with_64(TRC_HVM_CR_WRITE)), ANY, [domid: U16, vcpu: U16, cr: U32, value: X64];
    /// `TRC_HVM_MSR_READ`.
    hvm_msr_read = C(TRC_HVM_MSR_READ), ANY, [domid: U16, vcpu: U16, msr: X32, value: X64];
    /// `TRC_HVM_MSR_WRITE`.
    hvm_msr_write = C(TRC_HVM_MSR_WRITE), ANY, [domid: U16, vcpu: U16, msr: X32, value: X64];
    /// `TRC_HVM_CPUID`.
    hvm_cpuid = C(TRC_HVM_CPUID), ANY, [domid: U16, vcpu: U16, input: X32, eax: X32, ebx: X32, ecx: X32, edx: X32];
    /// `TRC_HVM_INTR`.
    hvm_intr = C(TRC_HVM_INTR), ANY, [domid: U16, vcpu: U16, vector: U32];
    /// `TRC_HVM_HLT`.
    hvm_hlt = C(TRC_HVM_HLT), ANY, [domid: U16, vcpu: U16, intr_pending: U32];
    /// `TRC_HVM_VMMCALL`.
    hvm_vmmcall = C(TRC_HVM_VMMCALL), ANY, [domid: U16, vcpu: U16, eax: U32];
    /// `TRC_HVM_NPF`.
    hvm_npf = C(TRC_HVM_NPF), ANY, [domid: U16, vcpu: U16, gpa: X64, mfn: X64, qualification: X32, p2mt: U32];
    /// `TRC_HVM_PF_XEN64`.
    hvm_pf_xen64 = C(with_64(TRC_HVM_PF_XEN)), ANY, [domid: U16, vcpu: U16, va: X64, error_code: X32];
    /// `TRC_HVM_INJ_VIRQ`.
    hvm_inj_virq = C(TRC_HVM_INJ_VIRQ), ANY, [domid: U16, vcpu: U16, vector: U32, fake: U32];
    /// `TRC_HVM_INTR_WINDOW`.
    hvm_intr_window = C(TRC_HVM_INTR_WINDOW), ANY, [domid: U16, vcpu: U16, vector: U32, source: U32, intr: U32];
    /// `TRC_HVM_VMEXIT` (32-bit guest) on Intel.
    vmx_exit = C(TRC_HVM_VMEXIT), VMX, [domid: U16, vcpu: U16, exit_reason: VMX_EXIT, eip: X32];
    /// `TRC_HVM_VMEXIT64` on AMD.
    svm_exit64 = C(with_64(TRC_HVM_VMEXIT)), SVM, [domid: U16, vcpu: U16, exit_reason: SVM_EXIT, rip: X64];
    /// `TRC_HVM_VMEXIT` (32-bit guest) on AMD.
    svm_exit = C(TRC_HVM_VMEXIT), SVM, [domid: U16, vcpu: U16, exit_reason: SVM_EXIT, eip: X32];
    /// `TRC_LOST_RECORDS`: `lost` records were not written from `first_tsc`
    /// on; `domid`/`vcpu` ran when the loss began.
    lost_records = V(TRC_LOST_RECORDS), ANY, [lost: U32, domid: U16, vcpu: U16, first_tsc: U64];
    /// Any record no other class takes: its event id and data words.
    xen_raw = Form::Raw, ANY, [event: X32, data: BYTES];
    /// `TRC_PV_HYPERCALL_SUBCALL`: one call of a multicall, as `pv_hypercall`.
    pv_hypercall_subcall = Form::Hypercall, ANY, [domid: U16, vcpu: U16, op: HYPERCALL, args_present: ARG_PRESENCE, a0: X64, a1: X64, a2: X64, a3: X64, a4: X64, a5: X64];
    /// `TRC_PV_PAGE_FAULT`.
    pv_page_fault = C(TRC_PV_PAGE_FAULT), ANY, [domid: U16, vcpu: U16, eip: X32, addr: X32, error_code: X32];
    /// `TRC_PV_PAGE_FAULT64`.
    pv_page_fault64 = C(with_64(TRC_PV_PAGE_FAULT)), ANY, [domid: U16, vcpu: U16, rip: X64, addr: X64, error_code: X32];
    /// `TRC_SCHED_DOM_ADD`.
    sched_dom_add = V(TRC_SCHED_DOM_ADD), ANY, [domid: U32];
    /// `TRC_SCHED_DOM_REM`.
    sched_dom_rem = V(TRC_SCHED_DOM_REM), ANY, [domid: U32];
    /// `TRC_HVM_CR_READ`.
    hvm_cr_read = C(TRC_HVM_CR_READ), ANY, [domid: U16, vcpu: U16, cr: U32, value: X32];
    /// `TRC_HVM_CR_WRITE`.
    hvm_cr_write = C(TRC_HVM_CR_WRITE), ANY, [domid: U16, vcpu: U16, cr: U32, value: X32];
    /// `TRC_HVM_IOPORT_READ` with a 64-bit address.
    hvm_ioport_read64 = C(with_64(TRC_HVM_IOPORT_READ)), ANY, [domid: U16, vcpu: U16, port: X64, data: X64];
    /// `TRC_HVM_IOPORT_WRITE` with a 64-bit address.
    hvm_ioport_write64 = C(with_64(TRC_HVM_IOPORT_WRITE)), ANY, [domid: U16, vcpu: U16, port: X64, data: X64];
    /// `TRC_HVM_IOMEM_READ` with a 64-bit address.
    hvm_iomem_read64 = C(with_64(TRC_HVM_IOMEM_READ)), ANY, [domid: U16, vcpu: U16, addr: X64, data: X64];
    /// `TRC_HVM_IOMEM_WRITE` with a 64-bit address.
    hvm_iomem_write64 = C(with_64(TRC_HVM_IOMEM_WRITE)), ANY, [domid: U16, vcpu: U16, addr: X64, data: X64];
    /// `TRC_HVM_PF_XEN`.
    hvm_pf_xen = C(TRC_HVM_PF_XEN), ANY, [domid: U16, vcpu: U16, va: X32, error_code: X32];
    /// `TRC_HVM_INJ_EXC`.
    hvm_inj_exc = C(TRC_HVM_INJ_EXC), ANY, [domid: U16, vcpu: U16, vector: U32, error_code: X32];
    /// `TRC_HVM_REINJ_VIRQ`.
    hvm_reinj_virq = C(TRC_HVM_REINJ_VIRQ), ANY, [domid: U16, vcpu: U16, vector: U32];
    /// `TRC_HVM_NMI`.
    hvm_nmi = C(TRC_HVM_NMI), ANY, [domid: U16, vcpu: U16];
    /// `TRC_HVM_INVLPG`.
    hvm_invlpg = C(TRC_HVM_INVLPG), ANY, [domid: U16, vcpu: U16, is_invlpga: U32, va: X32];
    /// `TRC_HVM_INVLPG64`.
    hvm_invlpg64 = C(with_64(TRC_HVM_INVLPG)), ANY, [domid: U16, vcpu: U16, is_invlpga: U32, va: X64];
    /// `TRC_HVM_CLTS`.
    hvm_clts = C(TRC_HVM_CLTS), ANY, [domid: U16, vcpu: U16];
    /// `TRC_HVM_LMSW`.
    hvm_lmsw = C(TRC_HVM_LMSW), ANY, [domid: U16, vcpu: U16, value: X32];
    /// `TRC_HVM_LMSW64`.
    hvm_lmsw64 = C(with_64(TRC_HVM_LMSW)), ANY, [domid: U16, vcpu: U16, value: X64];
    /// `TRC_HVM_RDTSC`.
    hvm_rdtsc = C(TRC_HVM_RDTSC), ANY, [domid: U16, vcpu: U16, tsc: U64];
    /// `TRC_HVM_TRAP`.
    hvm_trap = C(TRC_HVM_TRAP), ANY, [domid: U16, vcpu: U16, vector: U32];
    /// `TRC_HVM_TRAP_DEBUG`.
    hvm_trap_debug = C(TRC_HVM_TRAP_DEBUG), ANY, [domid: U16, vcpu: U16, exit_qualification: X32];
    /// `TRC_MEM_PAGE_GRANT_MAP`.
    mem_page_grant_map = V(TRC_MEM_PAGE_GRANT_MAP), ANY, [domid: U32];
    /// `TRC_MEM_PAGE_GRANT_UNMAP`.
    mem_page_grant_unmap = V(TRC_MEM_PAGE_GRANT_UNMAP), ANY, [domid: U32];
    /// `TRC_MEM_PAGE_GRANT_TRANSFER`.
    mem_page_grant_transfer = V(TRC_MEM_PAGE_GRANT_TRANSFER), ANY, [domid: U32];
}

/// Payload bytes of a verbatim class (the sum of its fixed field sizes).
pub const fn fixed_len(desc: &EventDesc) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < desc.fields.len() {
        n += match desc.fields[i].kind.fixed_len() {
            Some(l) => l,
            None => 0,
        };
        i += 1;
    }
    n
}

/// Bytes of the current-vCPU prefix of [`Form::Current`] classes.
pub const CURRENT_LEN: usize = 4;

/// Event id → class, for the verbatim classes of one vendor.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// `(event id, class id, data words, current-vCPU prefix?)`, sorted by event id.
    table: Vec<(u32, u16, u8, bool)>,
}

impl Lookup {
    /// The table for `vendor`'s exit codes.
    pub fn new(vendor: Vendor) -> Self {
        let mut table: Vec<(u32, u16, u8, bool)> = FORMS
            .iter()
            .zip(CLASSES)
            .enumerate()
            .filter_map(|(id, ((form, only), desc))| match form {
                Form::Verbatim(event) if only.is_none_or(|v| v == vendor) => {
                    Some((*event, id as u16, (fixed_len(desc) / 4) as u8, false))
                }
                Form::Current(event) if only.is_none_or(|v| v == vendor) => {
                    Some((*event, id as u16, ((fixed_len(desc) - CURRENT_LEN) / 4) as u8, true))
                }
                _ => None,
            })
            .collect();
        table.sort_unstable();
        Lookup { table }
    }

    /// The verbatim or current-vCPU class of `event`, the data words it
    /// takes, and whether the current vCPU comes first.
    #[inline]
    pub fn verbatim(&self, event: u32) -> Option<(u16, usize, bool)> {
        let i = self.table.binary_search_by_key(&event, |e| e.0).ok()?;
        let (_, class, words, current) = self.table[i];
        Some((class, words as usize, current))
    }
}

/// The six arguments of a `TRC_PV_HYPERCALL_V2` record, or `None` when its
/// presence bits and word count disagree: `(op, presence, args)`.
pub fn hypercall_args(words: &[u32]) -> Option<(u32, u16, [u64; 6])> {
    let (&first, mut rest) = words.split_first()?;
    let presence = (first >> 20) as u16;
    let mut args = [0u64; 6];
    for (i, a) in args.iter_mut().enumerate() {
        match (presence >> (2 * i)) & 3 {
            0 => {}
            1 => {
                let (&w, r) = rest.split_first()?;
                *a = w as u64;
                rest = r;
            }
            2 => match rest {
                [lo, hi, r @ ..] => {
                    *a = *lo as u64 | (*hi as u64) << 32;
                    rest = r;
                }
                _ => return None,
            },
            _ => return None,
        }
    }
    rest.is_empty().then_some((first & 0xf_ffff, presence, args))
}

/// AMD SVM exit codes (AMD64 APM vol. 2, appendix C; `VMEXIT_*` in Xen's
/// `svm/vmcb.h`).
pub const SVM_EXIT_LABELS: &[EnumLabel] = &[
    EnumLabel { label: "CR0_READ", value: 0 },
    EnumLabel { label: "CR1_READ", value: 1 },
    EnumLabel { label: "CR2_READ", value: 2 },
    EnumLabel { label: "CR3_READ", value: 3 },
    EnumLabel { label: "CR4_READ", value: 4 },
    EnumLabel { label: "CR5_READ", value: 5 },
    EnumLabel { label: "CR6_READ", value: 6 },
    EnumLabel { label: "CR7_READ", value: 7 },
    EnumLabel { label: "CR8_READ", value: 8 },
    EnumLabel { label: "CR9_READ", value: 9 },
    EnumLabel { label: "CR10_READ", value: 10 },
    EnumLabel { label: "CR11_READ", value: 11 },
    EnumLabel { label: "CR12_READ", value: 12 },
    EnumLabel { label: "CR13_READ", value: 13 },
    EnumLabel { label: "CR14_READ", value: 14 },
    EnumLabel { label: "CR15_READ", value: 15 },
    EnumLabel { label: "CR0_WRITE", value: 16 },
    EnumLabel { label: "CR1_WRITE", value: 17 },
    EnumLabel { label: "CR2_WRITE", value: 18 },
    EnumLabel { label: "CR3_WRITE", value: 19 },
    EnumLabel { label: "CR4_WRITE", value: 20 },
    EnumLabel { label: "CR5_WRITE", value: 21 },
    EnumLabel { label: "CR6_WRITE", value: 22 },
    EnumLabel { label: "CR7_WRITE", value: 23 },
    EnumLabel { label: "CR8_WRITE", value: 24 },
    EnumLabel { label: "CR9_WRITE", value: 25 },
    EnumLabel { label: "CR10_WRITE", value: 26 },
    EnumLabel { label: "CR11_WRITE", value: 27 },
    EnumLabel { label: "CR12_WRITE", value: 28 },
    EnumLabel { label: "CR13_WRITE", value: 29 },
    EnumLabel { label: "CR14_WRITE", value: 30 },
    EnumLabel { label: "CR15_WRITE", value: 31 },
    EnumLabel { label: "DR0_READ", value: 32 },
    EnumLabel { label: "DR1_READ", value: 33 },
    EnumLabel { label: "DR2_READ", value: 34 },
    EnumLabel { label: "DR3_READ", value: 35 },
    EnumLabel { label: "DR4_READ", value: 36 },
    EnumLabel { label: "DR5_READ", value: 37 },
    EnumLabel { label: "DR6_READ", value: 38 },
    EnumLabel { label: "DR7_READ", value: 39 },
    EnumLabel { label: "DR8_READ", value: 40 },
    EnumLabel { label: "DR9_READ", value: 41 },
    EnumLabel { label: "DR10_READ", value: 42 },
    EnumLabel { label: "DR11_READ", value: 43 },
    EnumLabel { label: "DR12_READ", value: 44 },
    EnumLabel { label: "DR13_READ", value: 45 },
    EnumLabel { label: "DR14_READ", value: 46 },
    EnumLabel { label: "DR15_READ", value: 47 },
    EnumLabel { label: "DR0_WRITE", value: 48 },
    EnumLabel { label: "DR1_WRITE", value: 49 },
    EnumLabel { label: "DR2_WRITE", value: 50 },
    EnumLabel { label: "DR3_WRITE", value: 51 },
    EnumLabel { label: "DR4_WRITE", value: 52 },
    EnumLabel { label: "DR5_WRITE", value: 53 },
    EnumLabel { label: "DR6_WRITE", value: 54 },
    EnumLabel { label: "DR7_WRITE", value: 55 },
    EnumLabel { label: "DR8_WRITE", value: 56 },
    EnumLabel { label: "DR9_WRITE", value: 57 },
    EnumLabel { label: "DR10_WRITE", value: 58 },
    EnumLabel { label: "DR11_WRITE", value: 59 },
    EnumLabel { label: "DR12_WRITE", value: 60 },
    EnumLabel { label: "DR13_WRITE", value: 61 },
    EnumLabel { label: "DR14_WRITE", value: 62 },
    EnumLabel { label: "DR15_WRITE", value: 63 },
    EnumLabel { label: "EXCEPTION_0", value: 64 },
    EnumLabel { label: "EXCEPTION_1", value: 65 },
    EnumLabel { label: "EXCEPTION_2", value: 66 },
    EnumLabel { label: "EXCEPTION_3", value: 67 },
    EnumLabel { label: "EXCEPTION_4", value: 68 },
    EnumLabel { label: "EXCEPTION_5", value: 69 },
    EnumLabel { label: "EXCEPTION_6", value: 70 },
    EnumLabel { label: "EXCEPTION_7", value: 71 },
    EnumLabel { label: "EXCEPTION_8", value: 72 },
    EnumLabel { label: "EXCEPTION_9", value: 73 },
    EnumLabel { label: "EXCEPTION_10", value: 74 },
    EnumLabel { label: "EXCEPTION_11", value: 75 },
    EnumLabel { label: "EXCEPTION_12", value: 76 },
    EnumLabel { label: "EXCEPTION_13", value: 77 },
    EnumLabel { label: "EXCEPTION_14", value: 78 },
    EnumLabel { label: "EXCEPTION_15", value: 79 },
    EnumLabel { label: "EXCEPTION_16", value: 80 },
    EnumLabel { label: "EXCEPTION_17", value: 81 },
    EnumLabel { label: "EXCEPTION_18", value: 82 },
    EnumLabel { label: "EXCEPTION_19", value: 83 },
    EnumLabel { label: "EXCEPTION_20", value: 84 },
    EnumLabel { label: "EXCEPTION_21", value: 85 },
    EnumLabel { label: "EXCEPTION_22", value: 86 },
    EnumLabel { label: "EXCEPTION_23", value: 87 },
    EnumLabel { label: "EXCEPTION_24", value: 88 },
    EnumLabel { label: "EXCEPTION_25", value: 89 },
    EnumLabel { label: "EXCEPTION_26", value: 90 },
    EnumLabel { label: "EXCEPTION_27", value: 91 },
    EnumLabel { label: "EXCEPTION_28", value: 92 },
    EnumLabel { label: "EXCEPTION_29", value: 93 },
    EnumLabel { label: "EXCEPTION_30", value: 94 },
    EnumLabel { label: "EXCEPTION_31", value: 95 },
    EnumLabel { label: "INTR", value: 96 },
    EnumLabel { label: "NMI", value: 97 },
    EnumLabel { label: "SMI", value: 98 },
    EnumLabel { label: "INIT", value: 99 },
    EnumLabel { label: "VINTR", value: 100 },
    EnumLabel { label: "CR0_SEL_WRITE", value: 101 },
    EnumLabel { label: "IDTR_READ", value: 102 },
    EnumLabel { label: "GDTR_READ", value: 103 },
    EnumLabel { label: "LDTR_READ", value: 104 },
    EnumLabel { label: "TR_READ", value: 105 },
    EnumLabel { label: "IDTR_WRITE", value: 106 },
    EnumLabel { label: "GDTR_WRITE", value: 107 },
    EnumLabel { label: "LDTR_WRITE", value: 108 },
    EnumLabel { label: "TR_WRITE", value: 109 },
    EnumLabel { label: "RDTSC", value: 110 },
    EnumLabel { label: "RDPMC", value: 111 },
    EnumLabel { label: "PUSHF", value: 112 },
    EnumLabel { label: "POPF", value: 113 },
    EnumLabel { label: "CPUID", value: 114 },
    EnumLabel { label: "RSM", value: 115 },
    EnumLabel { label: "IRET", value: 116 },
    EnumLabel { label: "SWINT", value: 117 },
    EnumLabel { label: "INVD", value: 118 },
    EnumLabel { label: "PAUSE", value: 119 },
    EnumLabel { label: "HLT", value: 120 },
    EnumLabel { label: "INVLPG", value: 121 },
    EnumLabel { label: "INVLPGA", value: 122 },
    EnumLabel { label: "IOIO", value: 123 },
    EnumLabel { label: "MSR", value: 124 },
    EnumLabel { label: "TASK_SWITCH", value: 125 },
    EnumLabel { label: "FERR_FREEZE", value: 126 },
    EnumLabel { label: "SHUTDOWN", value: 127 },
    EnumLabel { label: "VMRUN", value: 128 },
    EnumLabel { label: "VMMCALL", value: 129 },
    EnumLabel { label: "VMLOAD", value: 130 },
    EnumLabel { label: "VMSAVE", value: 131 },
    EnumLabel { label: "STGI", value: 132 },
    EnumLabel { label: "CLGI", value: 133 },
    EnumLabel { label: "SKINIT", value: 134 },
    EnumLabel { label: "RDTSCP", value: 135 },
    EnumLabel { label: "ICEBP", value: 136 },
    EnumLabel { label: "WBINVD", value: 137 },
    EnumLabel { label: "MONITOR", value: 138 },
    EnumLabel { label: "MWAIT", value: 139 },
    EnumLabel { label: "MWAIT_CONDITIONAL", value: 140 },
    EnumLabel { label: "XSETBV", value: 141 },
    EnumLabel { label: "RDPRU", value: 142 },
    EnumLabel { label: "NPF", value: 1024 },
    EnumLabel { label: "AVIC_INCOMPLETE_IPI", value: 1025 },
    EnumLabel { label: "AVIC_NOACCEL", value: 1026 },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verbatim_class_is_whole_words_a_record_can_hold() {
        for (desc, (form, _)) in CLASSES.iter().zip(FORMS) {
            if let Form::Verbatim(event) | Form::Current(event) = form {
                let len = fixed_len(desc) - if matches!(form, Form::Current(_)) { CURRENT_LEN } else { 0 };
                assert!(len % 4 == 0 && len <= 4 * TRC_MAX_WORDS, "{}: {len} bytes", desc.name);
                assert_eq!(event & !TRC_HD_EVENT_MASK, 0, "{}: not a 28-bit event id", desc.name);
                assert!(desc.fields.iter().all(|f| f.kind.fixed_len().is_some()), "{}", desc.name);
            }
        }
    }

    #[test]
    fn each_vendor_maps_each_event_to_one_class() {
        for vendor in [Vendor::Vmx, Vendor::Svm] {
            let l = Lookup::new(vendor);
            let mut ids: Vec<u32> = l.table.iter().map(|e| e.0).collect();
            ids.dedup();
            assert_eq!(ids.len(), l.table.len(), "{vendor:?}: an event id with two classes");
        }
        let exit = |v| CLASSES[Lookup::new(v).verbatim(with_64(TRC_HVM_VMEXIT)).unwrap().0 as usize].name;
        assert_eq!((exit(Vendor::Vmx), exit(Vendor::Svm)), ("vmx_exit64", "svm_exit64"));
    }

    #[test]
    fn hypercall_arguments_follow_their_presence_bits() {
        // op 29, a0 32-bit, a1 absent, a2 64-bit.
        let w = [29 | (0b10_00_01 << 20), 7, 0x89ab_cdef, 0x0123_4567];
        assert_eq!(hypercall_args(&w), Some((29, 0b10_00_01, [7, 0, 0x0123_4567_89ab_cdef, 0, 0, 0])));
        assert_eq!(hypercall_args(&w[..3]), None, "a missing word");
        assert_eq!(hypercall_args(&[29 | (0b11 << 20), 1]), None, "presence 11 is not a width");
        assert_eq!(hypercall_args(&[29, 1]), None, "a word no argument claims");
        assert_eq!(hypercall_args(&[]), None);
    }
}
