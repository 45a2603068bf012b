//! The `kvm` event set: what a tracing [`crate::VmmObserver`] records for
//! the micro-VMM (`hvtrace kvm` does it through the host's per-CPU rings),
//! and [`exit_fields`], the `vm_exit` fields of an [`Exit`]. The VMM itself
//! does not record anything.

use hvtrace_core::field::{EnumLabel, Field, FieldKind};
use hvtrace_core::Encoder;

use crate::{hypercall, Exit, EXIT_REASONS};

/// Enumeration labels from a `(value, name)` table, at compile time.
const fn labels<const N: usize>(table: &[(u32, &'static str)]) -> [EnumLabel; N] {
    let mut out = [EnumLabel { label: "", value: 0 }; N];
    let mut i = 0;
    while i < N {
        out[i] = EnumLabel { label: table[i].1, value: table[i].0 as i64 };
        i += 1;
    }
    out
}

/// A `u32` code recorded as a CTF enumeration whose labels come from a
/// `(value, name)` table. Unlike [`hvtrace_core::ctf_enum!`] (a closed Rust
/// enum with identifier labels), any code can be recorded as is — KVM may
/// return exit numbers newer than the table — and there is no conversion on
/// the record path.
macro_rules! coded_enum {
    ($(#[$meta:meta])* pub struct $name:ident = $table:expr;) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name(pub u32);

        impl $name {
            /// The labels, as recorded in the trace metadata.
            pub const LABELS: [EnumLabel; $table.len()] = labels($table);
        }

        impl Field for $name {
            const KIND: FieldKind = FieldKind::Enum { bits: 32, signed: false, labels: &Self::LABELS };
            #[inline]
            fn encoded_len(&self) -> usize {
                4
            }
            #[inline]
            fn encode(&self, e: &mut Encoder<'_>) {
                e.put(&self.0.to_le_bytes())
            }
        }
    };
}

coded_enum! {
    /// A `KVM_EXIT_*` number ([`Exit::reason_code`]), labelled from
    /// [`EXIT_REASONS`].
    pub struct ExitReason = EXIT_REASONS;
}

/// The VMM's hypercall numbers with their names ([`hypercall::name`]).
pub const HYPERCALLS: &[(u32, &str)] = &[
    (hypercall::VERSION_NR, "version"),
    (hypercall::YIELD_NR, "yield"),
    (hypercall::CONSOLE_WRITE_NR, "console_write"),
    (hypercall::GET_VCPU_ID_NR, "get_vcpu_id"),
];

coded_enum! {
    /// A hypercall number of the micro-VMM's paravirtual interface
    /// (unknown numbers are recorded too; the VMM answers them `ENOSYS`).
    pub struct HypercallNr = HYPERCALLS;
}

/// Unsigned integers shown in hexadecimal by readers (CTF `base = 16`).
macro_rules! hex_int {
    ($($(#[$meta:meta])* pub struct $name:ident($t:ty);)*) => {$(
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name(pub $t);

        impl Field for $name {
            const KIND: FieldKind = FieldKind::Int { bits: <$t>::BITS as u8, signed: false, hex: true };
            #[inline]
            fn encoded_len(&self) -> usize {
                core::mem::size_of::<$t>()
            }
            #[inline]
            fn encode(&self, e: &mut Encoder<'_>) {
                e.put(&self.0.to_le_bytes())
            }
        }
    )*};
}

hex_int! {
    /// An I/O port number, shown in hex.
    pub struct Port(u16);
    /// A guest-physical address, shown in hex.
    pub struct Gpa(u64);
}

hvtrace_core::ctf_enum! {
    /// Direction of a port I/O or MMIO access (`in` = read, `out` = write).
    #[allow(non_camel_case_types)]
    pub enum Access: u8 {
        /// Not an access (HLT, shutdown, ...).
        none = 0,
        /// `in` / MMIO read.
        read = 1,
        /// `out` / MMIO write.
        write = 2,
    }
}

hvtrace_core::events! {
    /// The events of the KVM micro-VMM, most frequent first. Every event
    /// names the vCPU (its index in the VM); the stream it lands in is the
    /// host CPU the vCPU thread ran on.
    pub mod kvm ("kvm") {
        /// `KVM_RUN` returned (every exit). `reason` is the `KVM_EXIT_*`
        /// number. Port I/O (`io`): `port`, `size`, `direction`, `data`
        /// (written value; 0 for `in`). MMIO (`mmio`): `addr`, `size`,
        /// `direction`, `data`. Fields that do not apply are zero.
        fn vm_exit(vcpu: u32, reason: ExitReason, direction: Access, size: u8, port: Port, addr: Gpa, data: u64);
        /// The vCPU enters the guest (`KVM_RUN`).
        fn vcpu_run(vcpu: u32);
        /// The guest made hypercall `nr` (arguments `a0`..`a3`); the VMM
        /// handles it next.
        fn hypercall_entry(vcpu: u32, nr: HypercallNr, a0: u64, a1: u64, a2: u64, a3: u64);
        /// Hypercall `nr` returned `ret` to the guest.
        fn hypercall_exit(vcpu: u32, nr: HypercallNr, ret: u64);
        /// The guest emitted its own event `id` with `value` through the
        /// paravirtual interface; timestamped by the VMM.
        fn guest_event(vcpu: u32, id: u32, value: u64);
    }
}

/// The fields of a `vm_exit`: `(reason, direction, size, port, addr, data)`.
pub fn exit_fields(exit: &Exit) -> (ExitReason, Access, u8, Port, Gpa, u64) {
    let reason = ExitReason(exit.reason_code());
    match *exit {
        Exit::IoOut { port, size, data } => (reason, Access::write, size, Port(port), Gpa(0), u64::from(data)),
        Exit::IoIn { port, size } => (reason, Access::read, size, Port(port), Gpa(0), 0),
        Exit::MmioWrite { addr, size, data } => (reason, Access::write, size, Port(0), Gpa(addr), data),
        Exit::MmioRead { addr, size } => (reason, Access::read, size, Port(0), Gpa(addr), 0),
        Exit::Hlt | Exit::Shutdown | Exit::Other { .. } => (reason, Access::none, 0, Port(0), Gpa(0), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvtrace_core::EventSet;

    #[test]
    fn names_and_order() {
        let names: Vec<_> = kvm::Events::EVENTS.iter().map(|e| e.name).collect();
        assert_eq!(names, ["vm_exit", "vcpu_run", "hypercall_entry", "hypercall_exit", "guest_event"]);
        assert!(kvm::Events::EVENTS.len() <= 31, "every id gets the compact header");
    }

    #[test]
    fn exit_labels_are_the_kvm_table() {
        assert_eq!(ExitReason::LABELS.len(), EXIT_REASONS.len());
        for (l, (code, name)) in ExitReason::LABELS.iter().zip(EXIT_REASONS) {
            assert_eq!((l.value, l.label), (i64::from(*code), *name));
        }
        assert!(ExitReason::LABELS.iter().any(|l| (l.value, l.label) == (2, "io")));
    }

    #[test]
    fn hypercall_labels_match_the_vmm() {
        for l in &HypercallNr::LABELS {
            assert_eq!(l.label, hypercall::name(l.value as u32));
        }
        assert_eq!(hypercall::name(HypercallNr::LABELS.len() as u32), "unknown", "a hypercall is missing");
    }

    #[test]
    fn exit_fields_by_kind() {
        let io = exit_fields(&Exit::IoOut { port: 0x400, size: 1, data: 7 });
        assert_eq!(io, (ExitReason(2), Access::write, 1, Port(0x400), Gpa(0), 7));
        let io_in = exit_fields(&Exit::IoIn { port: 0x60, size: 2 });
        assert_eq!(io_in, (ExitReason(2), Access::read, 2, Port(0x60), Gpa(0), 0));
        let mmio = exit_fields(&Exit::MmioWrite { addr: 0xd000_0000, size: 4, data: 9 });
        assert_eq!(mmio, (ExitReason(6), Access::write, 4, Port(0), Gpa(0xd000_0000), 9));
        assert_eq!(exit_fields(&Exit::Hlt), (ExitReason(5), Access::none, 0, Port(0), Gpa(0), 0));
        assert_eq!(exit_fields(&Exit::Other { reason: 999 }).0, ExitReason(999));
    }
}
