//! A channel: one ring per CPU in memfds, the consumer control memfd, the
//! wake-up eventfds, and the life cycle (start / stop with quiescence / flush).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hvtrace_core::metalog::MetaLogFull;
use hvtrace_core::{Geometry, Mode, StreamId};
use hvtrace_proto::{ChannelConfig, ChannelState, RingInfo, RingStatus};
use hvtrace_sys::eventfd::EventFd;
use hvtrace_sys::memfd;
use hvtrace_sys::mmap::SharedMapping;

use crate::clock::HostClock;
use crate::metamem::MetaMem;
use crate::notice::{Notice, Notices};
use crate::ringmem::RingMem;
use crate::HostConfig;

/// How long `stop` waits for writers to leave their records, unless the
/// host is configured otherwise ([`crate::HostConfig::quiesce_timeout`]).
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

/// The life cycle, and the rings a stop could not close.
struct Lifecycle {
    state: ChannelState,
    /// CPUs whose owner was still inside a fast-path record when the last
    /// stop gave up on it: their rings are marked closing, not closed nor
    /// flushed, until the owner is seen out (see [`Channel::flush`]).
    held: Vec<u32>,
}

/// One trace channel.
pub struct Channel {
    // Rings borrow `ctrl_map`: declared (so dropped) first.
    rings: Box<[OnceLock<RingMem>]>,
    ctrl_map: SharedMapping,
    ctrl_fd: OwnedFd,
    notices: Arc<Notices>,
    /// Channel name (stream files are `<name>_<cpu>`).
    pub name: String,
    /// Trace UUID.
    pub uuid: [u8; 16],
    /// Geometry and mode as requested.
    pub config: ChannelConfig,
    geo: Geometry,
    mode: Mode,
    /// CTF metadata text, in the memfd consumers map; grows by the classes
    /// registered while the channel lives. The lock serializes appends
    /// (registrations hold the host's registry lock anyway); readers never
    /// take it.
    metadata: Mutex<MetaMem>,
    /// Signalled when rings appear or the state changes (stop, destroy).
    pub changed: EventFd,
    recording: AtomicBool,
    quiesce_timeout: Duration,
    /// Live `map` references.
    pub refs: AtomicU32,
    life: Mutex<Lifecycle>,
}

impl Channel {
    /// Creates the channel named and sized by `host` with rings for `cpus`
    /// (each `< max_cpus`), not recording. The rings of CPUs in `owned` are
    /// reserved for one owning writer each; `metadata` is its metadata log.
    /// What goes wrong later off the record path is said through `notices`.
    pub(crate) fn new(
        notices: Arc<Notices>,
        host: &HostConfig,
        config: ChannelConfig,
        cpus: &[u32],
        owned: &[u32],
        metadata: MetaMem,
        uuid: [u8; 16],
    ) -> io::Result<Channel> {
        let (name, max_cpus) = (host.channel.as_str(), host.max_cpus);
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let geo = Geometry::new(config.subbuf_size, config.num_subbuf as u64).map_err(|e| invalid(e.to_string()))?;
        let mode = match config.mode {
            hvtrace_proto::Mode::Discard => Mode::Discard,
            hvtrace_proto::Mode::Overwrite => Mode::Overwrite,
        };
        let ctrl_len = geo.ctrl_len() * max_cpus as u64;
        let ctrl_fd = memfd::create_memfd(&format!("hvtrace-ctrl-{name}"), ctrl_len)?;
        let ctrl_map = SharedMapping::map_rw(&ctrl_fd, ctrl_len as usize)?;
        // The consumer may write the contents, never resize it under our mapping.
        memfd::seal_size(&ctrl_fd)?;
        let ch = Channel {
            notices,
            rings: (0..max_cpus).map(|_| OnceLock::new()).collect(),
            ctrl_map,
            ctrl_fd,
            name: name.to_string(),
            uuid,
            config,
            geo,
            mode,
            metadata: Mutex::new(metadata),
            changed: EventFd::new()?,
            recording: AtomicBool::new(false),
            quiesce_timeout: host.quiesce_timeout,
            refs: AtomicU32::new(0),
            life: Mutex::new(Lifecycle { state: ChannelState::Created, held: Vec::new() }),
        };
        for &cpu in cpus {
            ch.add_ring(cpu, owned.contains(&cpu))?;
        }
        Ok(ch)
    }

    /// Takes the one consumer reference (0 -> 1); false if another
    /// consumer holds it (one consumer at a time).
    pub(crate) fn take_consumer_ref(&self) -> bool {
        self.refs.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Appends whole TSDL blocks to the metadata log and publishes them:
    /// a consumer mapping it (now or later) reads them before any packet
    /// recorded after this returns. Never waits for a consumer.
    pub(crate) fn append_metadata(&self, blocks: &str) -> Result<u64, MetaLogFull> {
        self.metadata.lock().unwrap().append(blocks)
    }

    /// A read-only descriptor of the metadata log and its size, for a consumer.
    pub(crate) fn metadata_fd(&self) -> io::Result<(OwnedFd, u64)> {
        let md = self.metadata.lock().unwrap();
        Ok((md.fd_read_only()?, md.len()))
    }

    /// The ring of `cpu`, if that CPU has one. Lock-free.
    #[inline]
    pub fn ring(&self, cpu: u32) -> Option<&RingMem> {
        self.rings.get(cpu as usize)?.get()
    }

    /// Every ring, in CPU order.
    pub fn rings(&self) -> impl Iterator<Item = &RingMem> {
        self.rings.iter().filter_map(|r| r.get())
    }

    /// Offset of `cpu`'s consumer words in the control memfd.
    pub fn ctrl_offset(&self, cpu: u32) -> u64 {
        cpu as u64 * self.geo.ctrl_len()
    }

    /// Length of the control memfd.
    pub fn ctrl_len(&self) -> u64 {
        self.ctrl_map.len() as u64
    }

    /// A new descriptor of the control memfd (read-write) for a consumer.
    pub fn ctrl_fd(&self) -> io::Result<OwnedFd> {
        self.ctrl_fd.try_clone()
    }

    /// What a consumer needs to know of `ring`.
    pub fn ring_info(&self, ring: &RingMem) -> RingInfo {
        RingInfo { cpu: ring.cpu, data_len: ring.data_len(), ctrl_offset: self.ctrl_offset(ring.cpu) }
    }

    /// Adds the ring of a CPU that came online; recording if the channel is,
    /// reserved for one owning writer if `owned` (the CPU is claimed by an
    /// [`crate::ExclusiveWriter`] now: the claims of the moment, not of the
    /// channel's creation, decide). Returns false if it already had one.
    pub fn add_ring(&self, cpu: u32, owned: bool) -> io::Result<bool> {
        let slot = self.rings.get(cpu as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond the channel's {} CPUs", self.rings.len()),
            )
        })?;
        let _lifecycle = self.life.lock().unwrap();
        if slot.get().is_some() {
            return Ok(false);
        }
        let offset = self.ctrl_offset(cpu) as usize;
        // SAFETY: `offset + ctrl_len` lies inside the control mapping (sized
        // for every slot), which outlives the rings (field order of Channel).
        let mem = unsafe {
            RingMem::new(
                &self.name,
                self.geo,
                self.mode,
                StreamId { uuid: self.uuid, cpu },
                self.ctrl_map.as_mut_ptr().add(offset),
            )?
        };
        let recording = self.recording.load(Ordering::Acquire);
        if !recording {
            mem.ring().close();
        }
        if owned {
            // SAFETY: no writer has seen the ring: it is published below.
            unsafe { mem.ring().make_owned() };
            if !recording {
                // A stopped channel's owned rings stay revoked (see `stop`).
                mem.ring().revoke_owner();
            }
        }
        let _ = slot.set(mem);
        self.changed.signal()?;
        Ok(true)
    }

    /// Current life-cycle state.
    pub fn state(&self) -> ChannelState {
        self.life.lock().unwrap().state
    }

    /// Starts recording. Allowed from Created and Stopped.
    pub fn start(&self) -> Result<(), String> {
        let mut life = self.life.lock().unwrap();
        match life.state {
            ChannelState::Created | ChannelState::Stopped => {}
            s => return Err(format!("cannot start a {s} channel")),
        }
        self.recording.store(true, Ordering::Release);
        for r in self.rings() {
            r.ring().open();
            // Owners get their fast path back (revoked since stop or
            // creation); a held ring's deferred close is called off.
            r.ring().restore_owner();
        }
        life.held.clear();
        life.state = ChannelState::Started;
        Ok(())
    }

    /// Stops recording: closes every ring, waits until no writer is inside
    /// a record (quiescent state), flushes partial sub-buffers and wakes the
    /// consumer. `to` is Stopped or Destroyed.
    pub fn stop(&self, clock: &HostClock, to: ChannelState) -> Result<(), String> {
        let mut life = self.life.lock().unwrap();
        if life.state == ChannelState::Destroyed {
            return Err("the channel is already destroyed".into());
        }
        if to == ChannelState::Stopped && life.state != ChannelState::Started {
            return Err(format!("cannot stop a {} channel (start it first)", life.state));
        }
        self.recording.store(false, Ordering::Release);
        let deadline = Instant::now() + self.quiesce_timeout;
        // Owners off their fast path first: only then may this thread touch
        // their rings' producer words. An owner still busy at the deadline
        // (a stalled thread) would undo a close with its plain stores: its
        // ring is only marked closing (the owner is refused from its next
        // record on) and held, to be closed and flushed once the owner is
        // seen out of its record (a later flush or stop, or its writer's drop).
        let held = self.revoke_owners(deadline);
        for r in self.rings() {
            if held.contains(&r.cpu) {
                r.ring().defer_close();
            } else {
                r.ring().close();
            }
        }
        let mut busy = held.clone();
        for r in self.rings().filter(|r| !held.contains(&r.cpu)) {
            while !r.ring().is_quiescent() {
                if Instant::now() > deadline {
                    busy.push(r.cpu);
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        life.state = to;
        life.held = held;
        // Still under the lock: a `start` in between would give owners their
        // fast path back under the flush.
        self.flush_rings(clock, &busy);
        drop(life);
        self.changed.signal().map_err(|e| e.to_string())?;
        if busy.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "stopped, but writers on CPU(s) {busy:?} were still inside a record after {:?}: \
                 their sub-buffers stay undelivered until they leave it",
                self.quiesce_timeout
            ))
        }
    }

    /// Closes partial sub-buffers and wakes the consumer of every ring.
    /// While recording, owned rings are taken from their owners for the
    /// flush and given back after it. While stopped, a ring the stop had to
    /// leave to an owner inside a record is closed and flushed if the owner
    /// has left the record since, and left alone if not.
    pub fn flush(&self, clock: &HostClock) {
        let mut life = self.life.lock().unwrap();
        if life.state != ChannelState::Started {
            // Stopped or never started: owned rings are revoked already (and
            // stay so while we hold the lock: `start` takes it).
            self.close_held(&mut life);
            return self.flush_rings(clock, &life.held);
        }
        let busy = self.revoke_owners(Instant::now() + self.quiesce_timeout);
        self.flush_rings(clock, &busy);
        for r in self.rings() {
            r.ring().restore_owner();
        }
    }

    /// Closes the held rings whose owner has left its record since the stop
    /// (after a fresh barrier, one look at each busy flag); they are no
    /// longer held, so the next flush delivers their partial packet.
    fn close_held(&self, life: &mut Lifecycle) {
        if life.held.is_empty() {
            return;
        }
        let still = self.revoke_owners(Instant::now());
        life.held.retain(|cpu| {
            if still.contains(cpu) {
                return true;
            }
            if let Some(r) = self.ring(*cpu) {
                r.ring().close();
            }
            false
        });
    }

    /// The exclusive writer of `cpu` is gone (dropped, so not inside a
    /// record): its ring goes back to the shared protocol for good; if the
    /// last stop had to leave that writer inside a record, the ring is
    /// closed and flushed now, as the stop would have done.
    pub(crate) fn release_owner(&self, cpu: u32, clock: &HostClock) {
        let mut life = self.life.lock().unwrap();
        let Some(mem) = self.ring(cpu) else { return };
        let held = life.held.iter().position(|&c| c == cpu).map(|i| life.held.swap_remove(i)).is_some();
        if held {
            // Closed before it is disowned, so no shared writer slips in.
            mem.ring().close();
        }
        mem.ring().disown();
        if held {
            mem.ring().flush(clock);
            let _ = mem.wake.signal();
        }
    }

    /// Flushes every ring not in `skip` (whose owner could not be revoked)
    /// and wakes its consumer.
    fn flush_rings(&self, clock: &HostClock, skip: &[u32]) {
        for r in self.rings() {
            if !skip.contains(&r.cpu) {
                r.ring().flush(clock);
            }
            // Always wake: the consumer drains what is ready and sleeps again.
            let _ = r.wake.signal();
        }
    }

    /// Takes every owned ring off its owner's fast path (REVOKED, then one
    /// `membarrier`, then wait until no owner is inside a fast-path record).
    /// Returns the CPUs whose owner was still busy at `deadline`.
    fn revoke_owners(&self, deadline: Instant) -> Vec<u32> {
        let mut owned = false;
        for r in self.rings() {
            owned |= r.ring().revoke_owner();
        }
        if !owned {
            return Vec::new();
        }
        // Registered when the claim was granted, so this cannot fail short of
        // the kernel changing its mind. Without the barrier the busy flags
        // prove nothing (the owner's flag store may sit in its store buffer):
        // leave every owned ring alone, as if its owner were stuck.
        if let Err(e) = hvtrace_sys::membarrier::barrier() {
            self.notices.say(Notice::MembarrierFailed(e.to_string()));
            return self.rings().filter(|r| r.ring().revoke_owner()).map(|r| r.cpu).collect();
        }
        let mut busy = Vec::new();
        for r in self.rings() {
            while r.ring().owner_busy() {
                if Instant::now() > deadline {
                    busy.push(r.cpu);
                    break;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        busy
    }

    /// Per-ring counters.
    pub fn ring_status(&self) -> Vec<RingStatus> {
        self.rings()
            .map(|r| {
                let c = r.ring().counters();
                RingStatus {
                    cpu: r.cpu,
                    produced_bytes: c.produced_bytes,
                    consumed_bytes: c.consumed_bytes,
                    delivered_subbufs: c.delivered_subbufs,
                    events_discarded: c.discarded,
                    discarded_full: c.discarded_full,
                    discarded_too_big: c.discarded_too_big,
                    discarded_busy: c.discarded_busy,
                    overwritten: c.overwritten,
                }
            })
            .collect()
    }
}
