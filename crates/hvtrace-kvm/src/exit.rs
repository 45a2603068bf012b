//! VM exits, borrow-free.

use kvm_bindings as kb;

/// Why `KVM_RUN` returned. Borrow-free and `Copy`, so an observer can keep it.
///
/// [`reason_code`](Self::reason_code) is the kernel's stable `KVM_EXIT_*` number
/// (`IoOut` and `IoIn` are both `KVM_EXIT_IO` = 2; the variant keeps the direction),
/// and [`reason_name`](Self::reason_name) its name, so a trace can record the exit
/// as an integer plus an enum mapping built from [`EXIT_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// An `out` instruction: `size` bytes (1, 2 or 4) of `data` to `port`.
    IoOut {
        /// I/O port.
        port: u16,
        /// Access size in bytes.
        size: u8,
        /// The value written (little-endian, zero-extended).
        data: u32,
    },
    /// An `in` instruction from `port`. The VMM answers all ones.
    IoIn {
        /// I/O port.
        port: u16,
        /// Access size in bytes.
        size: u8,
    },
    /// A write to guest-physical `addr` that no memory backs.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// Access size in bytes (1..=8).
        size: u8,
        /// The value written (little-endian, zero-extended).
        data: u64,
    },
    /// A read of guest-physical `addr` that no memory backs. The VMM answers all ones.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Access size in bytes (1..=8).
        size: u8,
    },
    /// The guest executed `hlt` (no in-kernel irqchip, so it exits to the VMM).
    Hlt,
    /// The guest triple-faulted (or otherwise shut down).
    Shutdown,
    /// Any other exit, by its `KVM_EXIT_*` number. A `KVM_RUN` interrupted by a
    /// signal (`EINTR`) is reported as `Other { reason: 10 }` (`KVM_EXIT_INTR`).
    Other {
        /// The `KVM_EXIT_*` number.
        reason: u32,
    },
}

/// Every `KVM_EXIT_*` number with its name: the enum mapping for
/// [`Exit::reason_code`]. The table lives in the model so the kernel's half
/// names exits alike without depending on this VMM.
pub use hvtrace_model::kvm::EXIT_REASONS;

impl Exit {
    /// The kernel's `KVM_EXIT_*` number for this exit (stable ABI).
    pub fn reason_code(&self) -> u32 {
        match *self {
            Exit::IoOut { .. } | Exit::IoIn { .. } => kb::KVM_EXIT_IO,
            Exit::MmioWrite { .. } | Exit::MmioRead { .. } => kb::KVM_EXIT_MMIO,
            Exit::Hlt => kb::KVM_EXIT_HLT,
            Exit::Shutdown => kb::KVM_EXIT_SHUTDOWN,
            Exit::Other { reason } => reason,
        }
    }

    /// The name of [`reason_code`](Self::reason_code), as in [`EXIT_REASONS`].
    pub fn reason_name(&self) -> &'static str {
        Self::name_of(self.reason_code())
    }

    /// The name of a `KVM_EXIT_*` number (`"other"` if this crate does not know it).
    pub fn name_of(code: u32) -> &'static str {
        hvtrace_model::kvm::exit_name(code.into())
    }
}

/// Little-endian value of up to the first 8 bytes of `bytes`.
pub(crate) fn le_value(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model's numbers are literals: each must be the `kvm-bindings`
    /// constant of the same name, and the table must reach the last one.
    #[test]
    fn reason_table_matches_kvm_bindings() {
        let bindings: &[(u32, &str)] = &[
            (kb::KVM_EXIT_UNKNOWN, "unknown"),
            (kb::KVM_EXIT_EXCEPTION, "exception"),
            (kb::KVM_EXIT_IO, "io"),
            (kb::KVM_EXIT_HYPERCALL, "hypercall"),
            (kb::KVM_EXIT_DEBUG, "debug"),
            (kb::KVM_EXIT_HLT, "hlt"),
            (kb::KVM_EXIT_MMIO, "mmio"),
            (kb::KVM_EXIT_IRQ_WINDOW_OPEN, "irq_window_open"),
            (kb::KVM_EXIT_SHUTDOWN, "shutdown"),
            (kb::KVM_EXIT_FAIL_ENTRY, "fail_entry"),
            (kb::KVM_EXIT_INTR, "intr"),
            (kb::KVM_EXIT_SET_TPR, "set_tpr"),
            (kb::KVM_EXIT_TPR_ACCESS, "tpr_access"),
            (kb::KVM_EXIT_S390_SIEIC, "s390_sieic"),
            (kb::KVM_EXIT_S390_RESET, "s390_reset"),
            (kb::KVM_EXIT_DCR, "dcr"),
            (kb::KVM_EXIT_NMI, "nmi"),
            (kb::KVM_EXIT_INTERNAL_ERROR, "internal_error"),
            (kb::KVM_EXIT_OSI, "osi"),
            (kb::KVM_EXIT_PAPR_HCALL, "papr_hcall"),
            (kb::KVM_EXIT_S390_UCONTROL, "s390_ucontrol"),
            (kb::KVM_EXIT_WATCHDOG, "watchdog"),
            (kb::KVM_EXIT_S390_TSCH, "s390_tsch"),
            (kb::KVM_EXIT_EPR, "epr"),
            (kb::KVM_EXIT_SYSTEM_EVENT, "system_event"),
            (kb::KVM_EXIT_S390_STSI, "s390_stsi"),
            (kb::KVM_EXIT_IOAPIC_EOI, "ioapic_eoi"),
            (kb::KVM_EXIT_HYPERV, "hyperv"),
            (kb::KVM_EXIT_ARM_NISV, "arm_nisv"),
            (kb::KVM_EXIT_X86_RDMSR, "x86_rdmsr"),
            (kb::KVM_EXIT_X86_WRMSR, "x86_wrmsr"),
            (kb::KVM_EXIT_DIRTY_RING_FULL, "dirty_ring_full"),
            (kb::KVM_EXIT_AP_RESET_HOLD, "ap_reset_hold"),
            (kb::KVM_EXIT_X86_BUS_LOCK, "x86_bus_lock"),
            (kb::KVM_EXIT_XEN, "xen"),
            (kb::KVM_EXIT_RISCV_SBI, "riscv_sbi"),
            (kb::KVM_EXIT_RISCV_CSR, "riscv_csr"),
            (kb::KVM_EXIT_NOTIFY, "notify"),
            (kb::KVM_EXIT_LOONGARCH_IOCSR, "loongarch_iocsr"),
            (kb::KVM_EXIT_MEMORY_FAULT, "memory_fault"),
        ];
        assert_eq!(EXIT_REASONS, bindings);
    }

    #[test]
    fn codes_and_names() {
        let io = Exit::IoOut { port: 0x400, size: 1, data: 7 };
        assert_eq!((io.reason_code(), io.reason_name()), (2, "io"));
        let r = Exit::MmioRead { addr: 0, size: 4 };
        assert_eq!((r.reason_code(), r.reason_name()), (6, "mmio"));
        assert_eq!(Exit::Hlt.reason_code(), 5);
        assert_eq!(Exit::Shutdown.reason_name(), "shutdown");
        assert_eq!(Exit::Other { reason: 10 }.reason_name(), "intr");
        assert_eq!(Exit::Other { reason: 999 }.reason_name(), "other");
    }

    #[test]
    fn le_values() {
        assert_eq!(le_value(&[0x34, 0x12]), 0x1234);
        assert_eq!(le_value(&[]), 0);
        assert_eq!(le_value(&[1, 0, 0, 0, 0, 0, 0, 0, 9]), 1);
    }
}
