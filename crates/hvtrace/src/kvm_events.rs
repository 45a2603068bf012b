//! [`TraceObserver`], the [`VmmObserver`] that records the micro-VMM's
//! `kvm` event set ([`hvtrace_kvm::kvm`]) through the host's per-CPU rings.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hvtrace_core::{Encoder, RecordError, Sink};
use hvtrace_host::{ExclusiveWriter, Host, Writer};
use hvtrace_kvm::{exit_fields, kvm, Exit, HypercallNr, VmmObserver};

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
}
