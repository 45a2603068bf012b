//! [`ExclusiveWriter`]: the one writer of a CPU's ring, recording without a
//! locked instruction. The one place in the host that uses the core's owner
//! fast path, whose safety rests on the claim kept here.

use std::io;
use std::sync::Arc;

use hvtrace_core::{Encoder, RecordError, Sink};

use crate::{ChannelCache, Shared};

/// Records into one CPU's ring as its only writer, for a thread pinned to
/// that CPU (a vCPU thread). Its records skip the reserve CAS, the atomic
/// commit add and the timestamp `fetch_max` of the shared protocol; stop
/// and flush take the ring back with `membarrier` (see `docs/ring.md`).
///
/// One per CPU at a time ([`crate::Host::exclusive_writer`] refuses a
/// second); `Send`, not `Sync`. Dropping it releases the CPU: its ring goes
/// back to the shared protocol.
pub struct ExclusiveWriter {
    channel: ChannelCache,
    cpu: u32,
}

impl ExclusiveWriter {
    pub(crate) fn claim(shared: Arc<Shared>, cpu: u32) -> io::Result<ExclusiveWriter> {
        if cpu >= shared.cfg.max_cpus {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} >= max_cpus ({})", shared.cfg.max_cpus),
            ));
        }
        hvtrace_sys::membarrier::register().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "membarrier unavailable ({e}): an exclusive writer cannot be taken back; use Host::writer_for_cpu"
                ),
            )
        })?;
        let _current = shared.current.lock().unwrap();
        let mut claimed = shared.claimed.lock().unwrap();
        if claimed.contains(&cpu) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("CPU {cpu} already has an exclusive writer"),
            ));
        }
        claimed.push(cpu);
        drop(claimed);
        drop(_current);
        Ok(ExclusiveWriter { channel: ChannelCache::new(shared), cpu })
    }

    /// The CPU whose ring this writer owns.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }
}

impl Sink for ExclusiveWriter {
    #[inline]
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        self.channel.record_on(
            || self.cpu,
            // SAFETY: the claim makes this writer the only one recording
            // through owner handles of `cpu`'s rings, and `!Sync` keeps it on
            // one thread at a time; the channel brackets its own flush /
            // close / open of owned rings with revoke and restore.
            |mem, clock| unsafe { mem.ring().owner() }.record(clock, id, len, fill),
        )
    }
}

impl Drop for ExclusiveWriter {
    fn drop(&mut self) {
        // No record of ours is in progress (we are being dropped), so the
        // rings can leave the owned protocol without a revoke. With the
        // claim gone (under `current`, as `add_cpu` reads it), a ring of
        // this CPU created later is a shared one.
        let shared = &self.channel.shared;
        let current = shared.current.lock().unwrap();
        shared.claimed.lock().unwrap().retain(|&c| c != self.cpu);
        let retired = shared.retired.lock().unwrap();
        for ch in current.iter().chain(retired.iter()) {
            ch.release_owner(self.cpu, &shared.clock);
        }
    }
}
