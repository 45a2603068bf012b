//! The `kvm` event set (what `hvtrace kvm` records for its micro-VMM) and
//! [`TraceObserver`], the [`VmmObserver`] that records it through the host's
//! per-CPU rings. `hvtrace-kvm` itself knows nothing of the tracer.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hvtrace_core::field::{EnumLabel, Field, FieldKind};
use hvtrace_core::{Encoder, RecordError, Sink};
use hvtrace_host::{ExclusiveWriter, Host, Writer};
use hvtrace_kvm::{hypercall, Exit, VmmObserver, EXIT_REASONS};
use std::sync::Mutex;

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
    /// [`hvtrace_kvm::EXIT_REASONS`].
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
fn exit_fields(exit: &Exit) -> (ExitReason, Access, u8, Port, Gpa, u64) {
    let reason = ExitReason(exit.reason_code());
    match *exit {
        Exit::IoOut { port, size, data } => (reason, Access::write, size, Port(port), Gpa(0), u64::from(data)),
        Exit::IoIn { port, size } => (reason, Access::read, size, Port(port), Gpa(0), 0),
        Exit::MmioWrite { addr, size, data } => (reason, Access::write, size, Port(0), Gpa(addr), data),
        Exit::MmioRead { addr, size } => (reason, Access::read, size, Port(0), Gpa(addr), 0),
        Exit::Hlt | Exit::Shutdown | Exit::Other { .. } => (reason, Access::none, 0, Port(0), Gpa(0), 0),
    }
}

/// A vCPU thread's writer: the exclusive writer of the CPU it is pinned to,
/// or the shared per-CPU [`Writer`].
pub enum VcpuWriter {
    /// Owns its CPU's ring (no locked instruction per record).
    Exclusive(ExclusiveWriter),
    /// Records into the ring of whatever CPU it runs on.
    Shared(Writer),
}

impl Sink for VcpuWriter {
    #[inline]
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        match self {
            VcpuWriter::Exclusive(w) => w.record(id, len, fill),
            VcpuWriter::Shared(w) => w.record(id, len, fill),
        }
    }
}

thread_local! {
    /// This thread's writer, tagged with the [`TraceObserver`] it belongs to.
    static WRITER: RefCell<Option<(u64, VcpuWriter)>> = const { RefCell::new(None) };
}

/// Tags observers so a thread never uses a writer of another one.
static NEXT_OBSERVER: AtomicU64 = AtomicU64::new(1);

/// Records the VMM's events into the host's rings. Each vCPU thread gets its
/// own writer, kept in a thread-local: the [`ExclusiveWriter`] handed over for
/// its vCPU (see [`TraceObserver::with_exclusive`] and [`TraceObserver::adopt`]),
/// else a shared [`Writer`] created on its first event, which records into
/// the ring of the CPU the thread runs on.
pub struct TraceObserver {
    host: Arc<Host>,
    id: u64,
    closed: AtomicU64,
    /// Exclusive writers not yet adopted by their vCPU thread, by vCPU.
    exclusive: Mutex<Vec<Option<ExclusiveWriter>>>,
}

impl TraceObserver {
    /// An observer recording into `host`'s channel: vCPU `i` through
    /// `exclusive[i]` once its thread has called [`TraceObserver::adopt`],
    /// every other vCPU through a shared writer.
    pub fn with_exclusive(host: Arc<Host>, exclusive: Vec<ExclusiveWriter>) -> TraceObserver {
        TraceObserver {
            host,
            id: NEXT_OBSERVER.fetch_add(1, Ordering::Relaxed),
            closed: AtomicU64::new(0),
            exclusive: Mutex::new(exclusive.into_iter().map(Some).collect()),
        }
    }

    /// Called on vCPU `vcpu`'s thread (pinned to the writer's CPU) before it
    /// runs: takes that vCPU's exclusive writer, if there is one.
    pub fn adopt(&self, vcpu: u32) {
        if let Some(w) = self.take_exclusive(vcpu) {
            WRITER.with(|slot| *slot.borrow_mut() = Some((self.id, VcpuWriter::Exclusive(w))));
        }
    }

    /// Gives up vCPU `vcpu`'s exclusive writer (its thread could not be
    /// pinned): the CPU's ring goes back to the shared protocol, so the
    /// shared writers that land on it are not refused.
    pub fn release(&self, vcpu: u32) {
        drop(self.take_exclusive(vcpu));
    }

    fn take_exclusive(&self, vcpu: u32) -> Option<ExclusiveWriter> {
        self.exclusive.lock().unwrap().get_mut(vcpu as usize).and_then(Option::take)
    }

    /// Events that found no started channel (neither recorded nor counted as
    /// discarded by a ring).
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    #[inline]
    fn record(&self, f: impl FnOnce(&VcpuWriter) -> Result<(), RecordError>) {
        let r = WRITER.with(|slot| {
            let mut slot = slot.borrow_mut();
            let w = match &mut *slot {
                Some((id, w)) if *id == self.id => w,
                other => &mut other.insert((self.id, VcpuWriter::Shared(self.host.writer()))).1,
            };
            f(w)
        });
        // Any other error is a loss the ring has counted as discarded.
        if let Err(RecordError::Closed) = r {
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl VmmObserver for TraceObserver {
    fn run_entry(&self, vcpu: u32) {
        self.record(|w| kvm::vcpu_run(w, vcpu));
    }

    fn vm_exit(&self, vcpu: u32, exit: &Exit) {
        let (reason, direction, size, port, addr, data) = exit_fields(exit);
        self.record(|w| kvm::vm_exit(w, vcpu, reason, direction, size, port, addr, data));
    }

    fn hypercall_entry(&self, vcpu: u32, nr: u32, args: [u64; 4]) {
        let [a0, a1, a2, a3] = args;
        self.record(|w| kvm::hypercall_entry(w, vcpu, HypercallNr(nr), a0, a1, a2, a3));
    }

    fn hypercall_exit(&self, vcpu: u32, nr: u32, ret: u64) {
        self.record(|w| kvm::hypercall_exit(w, vcpu, HypercallNr(nr), ret));
    }

    fn guest_event(&self, vcpu: u32, id: u32, value: u64) {
        self.record(|w| kvm::guest_event(w, vcpu, id, value));
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

    /// A vCPU thread that could not be pinned gives its exclusive writer
    /// up; until it does, the shared writers landing on that CPU's ring are
    /// refused (and counted), which is what the release avoids.
    #[test]
    fn a_released_exclusive_writer_leaves_its_ring_to_shared_writers() {
        use hvtrace_host::HostConfig;
        use hvtrace_proto::{ChannelConfig, Mode, Request};
        use std::time::Duration;
        for release in [false, true] {
            let dir = std::env::temp_dir().join(format!("hvtrace-kvm-release-{}-{release}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let sock = dir.join("ctl.sock");
            let mut cfg = HostConfig::new(&sock, "test");
            cfg.cpus = vec![0];
            cfg.max_cpus = 1;
            let host = Host::serve(cfg, kvm::Events::EVENTS).unwrap();
            let observer = TraceObserver::with_exclusive(Arc::clone(&host), vec![host.exclusive_writer(0).unwrap()]);
            if release {
                observer.release(0);
            }
            let mut c = hvtrace_ctl::Client::connect(&sock, Some(Duration::from_secs(10))).unwrap();
            c.simple(&Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard }))
                .unwrap();
            c.simple(&Request::Start).unwrap();
            let got = kvm::vcpu_run(&host.writer_for_cpu(0), 0);
            assert_eq!(got, if release { Ok(()) } else { Err(RecordError::Busy) }, "released: {release}");
            let busy = host.status().rings[0].discarded_busy;
            assert_eq!(busy, u64::from(!release));
            drop(observer);
            host.shutdown();
            let _ = std::fs::remove_dir_all(&dir);
        }
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
