//! # hvtrace-host — the traced side
//!
//! What a hypervisor or VMM links to be traced: a [`Host`] owns the trace
//! channel (one ring per CPU in `hvtrace-data-*` memfds, the consumer's
//! `hvtrace-ctrl-*` control memfd, one eventfd per ring) and serves the
//! control socket — the "hypercalls" create / start / stop / destroy / map /
//! unmap / status / flush. Threads record through a [`Writer`], which picks
//! the ring of the CPU it runs on (or a fixed one) without taking a lock.
//!
//! ```no_run
//! # use hvtrace_host::{Host, HostConfig};
//! use hvtrace_core::EventSet;
//! hvtrace_core::events! {
//!     /// My VMM's events.
//!     pub mod vmm ("vmm") { fn vm_exit(vcpu: u32, reason: u32); }
//! }
//! let host = Host::serve(HostConfig::new("/tmp/vmm.sock", "vmm"), vmm::Events::EVENTS).unwrap();
//! let w = host.writer();
//! let _ = vmm::vm_exit(&w, 0, 30);
//! ```

mod channel;
pub mod clock;
mod exclusive;
mod metamem;
mod notice;
mod registry;
mod ringmem;
mod server;

use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hvtrace_core::metadata::{self, TraceDesc};
use hvtrace_core::{Encoder, EventDesc, FieldKind, RecordError, Sink};
use hvtrace_proto::{ChannelConfig, ChannelState, StatusInfo};
use hvtrace_sys::eventfd::EventFd;
use metamem::MetaMem;
use notice::Notices;
use registry::Registry;
use ringmem::RingMem;

pub use channel::{Channel, QUIESCE_TIMEOUT};
pub use clock::{ClockSource, HostClock};
pub use exclusive::ExclusiveWriter;
pub use notice::{Logger, Notice};
pub use registry::{RegisterError, MAX_EVENT_CLASSES, MAX_REGISTERED_TSDL};

/// How a host is set up.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Control socket path.
    pub socket: PathBuf,
    /// Channel name (stream files are `<channel>_<cpu>`).
    pub channel: String,
    /// What is traced, for the trace's `env.domain` (`xen-sim`, `kvm`, …).
    pub domain: String,
    /// CPUs that have a ring from the start.
    pub cpus: Vec<u32>,
    /// Highest CPU number + 1 that may ever come online (hotplug).
    pub max_cpus: u32,
    /// Permissions of the socket file.
    pub socket_mode: u32,
    /// A group whose members may also control the host (besides our own uid and root).
    pub allow_gid: Option<u32>,
    /// How long `stop` waits for writers to leave their records before it
    /// gives up on them ([`QUIESCE_TIMEOUT`] by default).
    pub quiesce_timeout: Duration,
    /// Where the host's [`Notice`]s go (default: nowhere; they are counted
    /// by [`Host::notices`]).
    pub log: Logger,
    /// Whether the process stays dumpable. `false` sets `PR_SET_DUMPABLE`
    /// to 0 when the host starts serving, so that a process of the host's
    /// uid that is not root (a consumer, say) cannot `ptrace` the host nor
    /// open `/proc/PID/mem` to write the producer-only ring words (see
    /// docs/threat-model.md). It also stops core dumps and makes
    /// `/proc/PID/*` root-owned. Default `true` (the kernel's default).
    pub dumpable: bool,
}

impl HostConfig {
    /// Defaults: the online CPUs, room for every possible CPU, mode 0600.
    pub fn new(socket: impl Into<PathBuf>, domain: &str) -> HostConfig {
        let online: Vec<u32> = hvtrace_sys::cpu::online_cpus().into_iter().map(|c| c as u32).collect();
        let possible = hvtrace_sys::cpu::possible_cpus().into_iter().max().map_or(1, |c| c as u32 + 1);
        HostConfig {
            socket: socket.into(),
            channel: "channel0".into(),
            domain: domain.into(),
            max_cpus: possible.max(online.iter().max().map_or(1, |c| c + 1)),
            cpus: online,
            socket_mode: 0o600,
            allow_gid: None,
            quiesce_timeout: QUIESCE_TIMEOUT,
            log: Logger::default(),
            dumpable: true,
        }
    }
}

/// State shared by the host, its writers and its control server.
pub(crate) struct Shared {
    pub(crate) cfg: HostConfig,
    pub(crate) events: &'static [EventDesc],
    /// Classes registered at run time. Lock order: `registry`, then
    /// `current`, so a channel's metadata misses no registration.
    pub(crate) registry: Mutex<Registry>,
    pub(crate) clock: HostClock,
    /// The live channel (None before create and after destroy).
    pub(crate) current: Mutex<Option<Arc<Channel>>>,
    /// Bumped whenever `current` changes, so writers refresh their cache.
    pub(crate) generation: AtomicU64,
    /// A destroyed channel still mapped by consumers.
    pub(crate) retired: Mutex<Option<Arc<Channel>>>,
    /// State to report when no channel is live.
    pub(crate) last_state: Mutex<ChannelState>,
    pub(crate) online: Mutex<Vec<u32>>,
    /// CPUs claimed by an [`ExclusiveWriter`]. Changed only with `current`
    /// locked, so a channel's rings and the claims agree.
    pub(crate) claimed: Mutex<Vec<u32>>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) shutdown_fd: EventFd,
    pub(crate) notices: Arc<Notices>,
}

/// A traced host: the channel and its control socket.
pub struct Host {
    shared: Arc<Shared>,
    server: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Host {
    /// Binds the control socket and serves it from a background thread.
    /// `events` are the event classes the host records (ids = positions).
    ///
    /// With `cfg.dumpable` false, the process is made non-dumpable first
    /// (and stays so); failing that is an error.
    pub fn serve(cfg: HostConfig, events: &'static [EventDesc]) -> io::Result<Arc<Host>> {
        if !cfg.dumpable {
            hvtrace_sys::proc::set_not_dumpable()?;
        }
        let listener = hvtrace_sys::seqpacket::Listener::bind(&cfg.socket, cfg.socket_mode)?;
        let shared = Arc::new(Shared {
            notices: Arc::new(Notices::new(cfg.log.clone())),
            online: Mutex::new(cfg.cpus.clone()),
            claimed: Mutex::new(Vec::new()),
            cfg,
            events,
            registry: Mutex::new(Registry::new(events)),
            clock: HostClock::detect(Duration::from_millis(50)),
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            retired: Mutex::new(None),
            last_state: Mutex::new(ChannelState::Empty),
            shutdown: AtomicBool::new(false),
            shutdown_fd: EventFd::new()?,
        });
        let s = shared.clone();
        let server =
            std::thread::Builder::new().name("hvtrace-ctl".into()).spawn(move || server::serve(s, listener))?;
        Ok(Arc::new(Host { shared, server: Mutex::new(Some(server)) }))
    }

    /// A writer that records into the ring of whatever CPU it runs on.
    pub fn writer(&self) -> Writer {
        Writer { channel: ChannelCache::new(self.shared.clone()), cpu: None }
    }

    /// A writer bound to `cpu`'s ring (for threads pinned to that CPU, or one ring per vCPU).
    pub fn writer_for_cpu(&self, cpu: u32) -> Writer {
        Writer { channel: ChannelCache::new(self.shared.clone()), cpu: Some(cpu) }
    }

    /// Claims `cpu`'s ring for one writer: the fast path of its records has
    /// no locked instruction (see [`ExclusiveWriter`]). For a thread pinned
    /// to `cpu`, e.g. a vCPU thread. Rings of `cpu` created from now on (a
    /// new channel's, or the live channel's when `cpu` comes online) are
    /// reserved for it; a ring that already exists stays shared, and the
    /// exclusive writer writes it like any writer. [`Writer`]s that land on
    /// a reserved ring are refused and counted as lost (`discarded_busy`).
    /// Dropping the exclusive writer gives its rings back for good.
    ///
    /// Fails if `cpu` is out of range, already claimed, or the kernel lacks
    /// `membarrier` (needed to take the ring back on stop and flush).
    pub fn exclusive_writer(&self, cpu: u32) -> io::Result<ExclusiveWriter> {
        ExclusiveWriter::claim(self.shared.clone(), cpu)
    }

    /// Declares an event class while the host runs, before or after a
    /// channel exists or starts, with or without a consumer attached:
    /// returns its id, which a [`Writer`] records with ([`Sink::record`])
    /// like a static class's, without a lock. The class's TSDL is published
    /// in the live channel's metadata log before this returns, so a consumer
    /// (attached now or later) writes it to the trace before any packet
    /// holding a record of the class; every later channel's metadata holds
    /// it too. Nothing here waits for a consumer.
    ///
    /// Fails beyond [`MAX_EVENT_CLASSES`] classes or [`MAX_REGISTERED_TSDL`]
    /// bytes of their TSDL, and for a name that cannot be written in TSDL;
    /// a refused class takes no id. Takes the host's registry lock (never
    /// one a writer holds): not for the record path.
    pub fn register_event(&self, name: &str, fields: &[(&str, FieldKind)]) -> Result<u32, RegisterError> {
        let mut reg = self.shared.registry.lock().unwrap();
        let cur = self.shared.current.lock().unwrap();
        reg.add(name, fields, |block| match cur.as_ref() {
            // The log was made with room for the whole registry budget, so
            // it is full only if that bound is: the same error.
            Some(ch) => ch
                .append_metadata(block)
                .map(drop)
                .map_err(|_| RegisterError::MetadataFull { max_bytes: MAX_REGISTERED_TSDL }),
            None => Ok(()),
        })
    }

    /// The clock timestamps come from.
    pub fn clock(&self) -> &HostClock {
        &self.shared.clock
    }

    /// Brings `cpu` online: the live channel gets a ring for it and mapped
    /// consumers are told (through the channel's eventfd).
    pub fn add_cpu(&self, cpu: u32) -> io::Result<()> {
        if cpu >= self.shared.cfg.max_cpus {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("CPU {cpu} >= max_cpus")));
        }
        {
            let mut on = self.shared.online.lock().unwrap();
            if !on.contains(&cpu) {
                on.push(cpu);
                on.sort_unstable();
            }
        }
        // Under the lock, so a concurrent claim or release cannot change
        // whether the ring being created is owned.
        if let Some(ch) = self.shared.current.lock().unwrap().as_ref() {
            ch.add_ring(cpu, self.shared.claimed.lock().unwrap().contains(&cpu))?;
        }
        Ok(())
    }

    /// How many [`Notice`]s the host has issued so far (whether or not a
    /// [`Logger`] took them).
    pub fn notices(&self) -> u64 {
        self.shared.notices.count()
    }

    /// State and counters, as the `status` request reports them.
    pub fn status(&self) -> StatusInfo {
        server::status(&self.shared)
    }

    /// Stops serving the control socket and removes it.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let _ = self.shared.shutdown_fd.signal();
        if let Some(h) = self.server.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    /// Renders the metadata of a new channel.
    pub(crate) fn metadata(&self, uuid: [u8; 16], registry: &Registry) -> String {
        let hostname = hvtrace_sys::hostname();
        let desc = TraceDesc {
            uuid,
            hostname: &hostname,
            domain: &self.cfg.domain,
            tracer_version: (0, 1, 0),
            clock: self.clock.desc(),
        };
        let mut s = String::new();
        metadata::render(&mut s, &desc, self.events).expect("formatting into a String cannot fail");
        registry.write_classes(&mut s).expect("formatting into a String cannot fail");
        s
    }

    /// Creates the channel.
    pub(crate) fn create(&self, config: ChannelConfig) -> Result<(), hvtrace_proto::Reply> {
        use hvtrace_proto::{ErrorCode, Reply};
        config.validate().map_err(Reply::from)?;
        let registry = self.registry.lock().unwrap();
        let mut cur = self.current.lock().unwrap();
        if let Some(ch) = cur.as_ref() {
            return Err(Reply::error(
                ErrorCode::BadState,
                format!("a channel already exists ({}): destroy it first", ch.state()),
            ));
        }
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let cpus = self.online.lock().unwrap().clone();
        let owned = self.claimed.lock().unwrap().clone();
        let failed = |e: io::Error| Reply::error(ErrorCode::Internal, format!("cannot create the channel: {e}"));
        // Room for every class the registry may still take: the log is full
        // only when the registry's bound is.
        let metadata =
            MetaMem::new(&self.cfg.channel, &self.metadata(uuid, &registry), registry.room()).map_err(failed)?;
        let ch =
            Channel::new(self.notices.clone(), &self.cfg, config, &cpus, &owned, metadata, uuid).map_err(failed)?;
        *cur = Some(Arc::new(ch));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// A writer's view of the live channel: cached, refreshed (cold) when the
/// host's generation moves (a channel was created or destroyed). Shared by
/// [`Writer`] and [`ExclusiveWriter`], which differ only in the ring they
/// pick and how they record into it.
pub(crate) struct ChannelCache {
    pub(crate) shared: Arc<Shared>,
    cache: RefCell<(u64, Option<Arc<Channel>>)>,
}

impl ChannelCache {
    pub(crate) fn new(shared: Arc<Shared>) -> ChannelCache {
        ChannelCache { shared, cache: RefCell::new((u64::MAX, None)) }
    }

    #[cold]
    fn refresh(&self, generation: u64) {
        let ch = self.shared.current.lock().unwrap().clone();
        *self.cache.borrow_mut() = (generation, ch);
    }

    /// Records with `record` into the ring of `cpu()` of the live channel
    /// ([`RecordError::Closed`] when there is none), and wakes the ring's
    /// consumer when that delivered a sub-buffer (the only syscall on the
    /// record path, once per sub-buffer).
    #[inline]
    pub(crate) fn record_on(
        &self,
        cpu: impl FnOnce() -> u32,
        record: impl FnOnce(&RingMem, &HostClock) -> Result<bool, RecordError>,
    ) -> Result<(), RecordError> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if self.cache.borrow().0 != generation {
            self.refresh(generation);
        }
        let cache = self.cache.borrow();
        let Some(ch) = cache.1.as_deref() else { return Err(RecordError::Closed) };
        let Some(mem) = ch.ring(cpu()) else { return Err(RecordError::Closed) };
        if record(mem, &self.shared.clock)? {
            let _ = mem.wake.signal();
        }
        Ok(())
    }
}

/// Records events into the host's channel. One per thread (it caches the
/// channel; not `Sync`). Recording while no channel is started returns
/// [`RecordError::Closed`], which is not a loss.
pub struct Writer {
    channel: ChannelCache,
    cpu: Option<u32>,
}

impl Writer {
    /// Counts one event its caller could not record — refused before the
    /// ring (a layer above it had no class for it, or could not encode it)
    /// — as a loss of the ring this writer records into, so the trace's
    /// `events_discarded` holds it like the ring's own losses. It is
    /// counted as `discarded_too_big` (the ring's refusal of a record it
    /// cannot take; on a ring owned by an [`ExclusiveWriter`], as
    /// `discarded_busy`, like any record of this writer there): the ring's
    /// counters have no cause for losses above it, and the caller keeps its
    /// own breakdown. `Ok` once counted; [`RecordError::Closed`] while no
    /// channel is started, when nothing is a loss.
    pub fn count_lost(&self) -> Result<(), RecordError> {
        // A record no sub-buffer can hold: the ring refuses it before it
        // reads the clock or reserves anything, and counts it.
        match self.record(0, usize::MAX, |_| {}) {
            Err(RecordError::Closed) => Err(RecordError::Closed),
            _ => Ok(()),
        }
    }
}

impl Sink for Writer {
    #[inline]
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        self.channel.record_on(
            || self.cpu.unwrap_or_else(|| hvtrace_sys::cpu::current_cpu() as u32),
            |mem, clock| mem.ring().record(clock, id, len, fill),
        )
    }
}
