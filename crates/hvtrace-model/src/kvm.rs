//! KVM's architectural names, shared by both halves of a KVM trace: the VMM's
//! `vm_exit` (`hvtrace-kvm`) and the kernel's `kvm_userspace_exit`
//! (`hvtrace-ftrace`) name an exit alike without the kernel's half depending
//! on the VMM.

/// Every `KVM_EXIT_*` number (the kernel's stable ABI, `linux/kvm.h`) with its
/// name (lower case, without the prefix), in number order. `hvtrace-kvm`
/// checks each number against `kvm-bindings`.
pub const EXIT_REASONS: &[(u32, &str)] = &[
    (0, "unknown"),
    (1, "exception"),
    (2, "io"),
    (3, "hypercall"),
    (4, "debug"),
    (5, "hlt"),
    (6, "mmio"),
    (7, "irq_window_open"),
    (8, "shutdown"),
    (9, "fail_entry"),
    (10, "intr"),
    (11, "set_tpr"),
    (12, "tpr_access"),
    (13, "s390_sieic"),
    (14, "s390_reset"),
    (15, "dcr"),
    (16, "nmi"),
    (17, "internal_error"),
    (18, "osi"),
    (19, "papr_hcall"),
    (20, "s390_ucontrol"),
    (21, "watchdog"),
    (22, "s390_tsch"),
    (23, "epr"),
    (24, "system_event"),
    (25, "s390_stsi"),
    (26, "ioapic_eoi"),
    (27, "hyperv"),
    (28, "arm_nisv"),
    (29, "x86_rdmsr"),
    (30, "x86_wrmsr"),
    (31, "dirty_ring_full"),
    (32, "ap_reset_hold"),
    (33, "x86_bus_lock"),
    (34, "xen"),
    (35, "riscv_sbi"),
    (36, "riscv_csr"),
    (37, "notify"),
    (38, "loongarch_iocsr"),
    (39, "memory_fault"),
];

/// The name of a `KVM_EXIT_*` number, as in [`EXIT_REASONS`] (`"other"` if
/// the table does not know it). One index, not a search: it names every
/// `kvm_userspace_exit` an analysis reads, and the numbers are dense.
pub fn exit_name(code: u64) -> &'static str {
    let entry = usize::try_from(code).ok().and_then(|i| EXIT_REASONS.get(i));
    entry.filter(|(c, _)| u64::from(*c) == code).map_or("other", |(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_table_is_dense_and_unique() {
        for (i, (code, name)) in EXIT_REASONS.iter().enumerate() {
            assert_eq!(*code as usize, i, "{name}: exit_name indexes by number");
        }
        let mut names: Vec<_> = EXIT_REASONS.iter().map(|(_, n)| n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EXIT_REASONS.len());
    }

    #[test]
    fn names_by_number() {
        assert_eq!(exit_name(2), "io");
        assert_eq!(exit_name(10), "intr");
        assert_eq!(exit_name(39), "memory_fault");
        assert_eq!(exit_name(40), "other");
        // A u64 field whose low 32 bits match a known code is still unknown.
        assert_eq!(exit_name((1 << 32) | 2), "other");
    }
}
