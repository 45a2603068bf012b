//! # hvtrace-consumer — the consumer daemon (`lttd`), as a library
//!
//! [`Consumer::attach`] connects to a host's control socket, sends `map`,
//! maps the channel's control memfd read-write and every ring's data memfd
//! **read-only**, creates the trace directory and writes its `metadata`.
//! [`Consumer::run`] then records until the session ends and returns a
//! [`Report`].
//!
//! ## Threads
//! Rings are spread over a fixed pool of `threads` workers (ring *i*, in the
//! order rings were mapped, goes to worker *i* mod `threads`). Each worker
//! sleeps in its own epoll on its rings' eventfds; on a wake-up it drains the
//! eventfd, then writes every delivered packet unchanged to the ring's stream
//! file `DIR/<channel>_<cpu>` and releases it. Packets of 512 KiB or more
//! are written straight from the read-only mapping with direct I/O
//! (`O_DIRECT`) where the file system does it, so the consumer copies
//! nothing itself ([`ConsumerConfig::direct_min`]). Nothing ever waits with a
//! timeout: an idle session costs no wake-up.
//!
//! The calling thread watches the control socket (hang-up: the host is
//! gone), the channel's "rings changed" eventfd (then it asks for `status`:
//! new CPUs are mapped with `map_ring` and handed to a worker; `destroyed`
//! ends the session), SIGINT / SIGTERM (through a `signal-hook` pipe) and a
//! [`ShutdownHandle`].
//!
//! ## End of a session
//! Whatever ends it, the consumer asks the host to `flush` (if it is still
//! there), has every worker drain its rings a last time, appends to each
//! stream whose ring lost events after its last packet an empty packet
//! carrying the final count (so CTF readers report every loss), `fsync`s
//! every file and the directory, and sends `unmap`. If the host went away,
//! an empty `DIR/INCOMPLETE` says the trace was cut short (empty, so CTF
//! readers skip it).
//!
//! ## Streaming to a relay
//! With [`ConsumerConfig::relay`], every packet also goes, with its index,
//! to an `lttng-relayd` (through [`hvtrace_relayd`], on a thread of its own
//! fed by a bounded queue: see the `relay` module), which stores the trace
//! and serves it live. A live timer then flushes partial sub-buffers through
//! the control socket and sends beacons for idle streams. Without a local
//! directory ([`ConsumerConfig::output`] `None`) the relay is the only sink.
#![forbid(unsafe_code)]

mod control;
mod error;
mod output;
mod relay;
mod report;
mod stream;
mod worker;

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvtrace_core::Geometry;
use hvtrace_proto::{ChannelState, MapInfo, Reply, Request, RingInfo, StatusInfo};
use hvtrace_sys::{EventFd, MappedReader, Poller, SharedMapping};

use control::Control;
pub use error::ConsumerError;
pub use hvtrace_relayd::RelaydUrl;
use output::OutputDir;
pub use output::INCOMPLETE;
use relay::Relay;
pub use relay::{RelayConfig, RelayReport, RelayStreamReport, RELAY_QUEUE, RELAY_TIMEOUT};
pub use report::{ExitReason, Report, RingReport};
use worker::{RingState, Worker};

/// How to run a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// The host's control socket.
    pub socket: PathBuf,
    /// The trace directory (created; must not already hold a trace); `None`
    /// when the relay is the only sink.
    pub output: Option<PathBuf>,
    /// Worker threads (at least 1); rings are spread over them.
    pub threads: usize,
    /// Packets of at least this many bytes are written with direct I/O
    /// (`O_DIRECT`: the device reads the ring's pages, nothing is copied into
    /// the page cache) where the file system does it; shorter ones, and all
    /// of them with `None`, are copied into the page cache. Default
    /// [`DIRECT_MIN`] (512 KiB): below it a copy costs no more CPU and its
    /// bytes are in the file sooner.
    pub direct_min: Option<usize>,
    /// Also stream to an lttng-relayd.
    pub relay: Option<RelayConfig>,
    /// TSDL appended to the host's metadata in the trace directory: the
    /// kernel's stream class and events when `hvtrace-ftrace` writes kernel
    /// streams into the same trace (empty: none).
    pub metadata_suffix: String,
}

/// The default [`ConsumerConfig::direct_min`].
pub const DIRECT_MIN: usize = stream::DIRECT_MIN;

impl ConsumerConfig {
    /// One worker thread, direct I/O from [`DIRECT_MIN`] bytes.
    pub fn new(socket: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        ConsumerConfig {
            socket: socket.into(),
            output: Some(output.into()),
            threads: 1,
            direct_min: Some(DIRECT_MIN),
            relay: None,
            metadata_suffix: String::new(),
        }
    }
}

/// Asks a running [`Consumer::run`] to end the session as on SIGINT (flush,
/// final drain, unmap). Cloneable, usable from any thread.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<EventFd>);

impl ShutdownHandle {
    /// Requests the shutdown; returns at once.
    pub fn shutdown(&self) {
        let _ = self.0.signal();
    }
}

/// Everything needed to map a ring and open its stream.
struct Mapper {
    ctrl: Arc<SharedMapping>,
    geo: Geometry,
    uuid: [u8; 16],
    out: Option<OutputDir>,
    relay: Option<Relay>,
    direct_min: Option<usize>,
}

impl Mapper {
    fn map_ring(&self, ring: &RingInfo, data_fd: OwnedFd, wake_fd: OwnedFd) -> Result<RingState, ConsumerError> {
        let cpu = ring.cpu;
        let len = usize::try_from(ring.data_len).map_err(|_| {
            ConsumerError::Protocol(format!("ring of CPU {cpu}: data length {} too large", ring.data_len))
        })?;
        if ring.data_len < self.geo.data_len() {
            return Err(ConsumerError::Protocol(format!(
                "ring of CPU {cpu}: data memfd of {} bytes, the geometry needs {}",
                ring.data_len,
                self.geo.data_len()
            )));
        }
        let data = SharedMapping::map_ro(&data_fd, len)
            .map_err(ConsumerError::io(format!("mapping the data memfd of CPU {cpu} read-only")))?;
        drop(data_fd);
        let source = MappedReader::attach(data, self.ctrl.clone(), ring.ctrl_offset, self.geo.ctrl_len())
            .map_err(ConsumerError::io(format!("attaching to the ring of CPU {cpu}")))?;
        let r = source.reader();
        if r.cpu() != cpu || r.geometry() != self.geo {
            return Err(ConsumerError::Protocol(format!(
                "ring announced as CPU {cpu} with {:?} is CPU {} with {:?}",
                self.geo,
                r.cpu(),
                r.geometry()
            )));
        }
        let wake = EventFd::from_fd(wake_fd).map_err(ConsumerError::io(format!("eventfd of CPU {cpu}")))?;
        let stream = self.out.as_ref().map(|o| o.create_stream(cpu, self.direct_min)).transpose()?;
        let relay = self.relay.as_ref().map(|r| r.ring(cpu));
        Ok(RingState { cpu, uuid: self.uuid, source: Box::new(source), wake, stream, relay })
    }
}

/// A consumer attached to a host's channel: see the [crate docs](crate).
pub struct Consumer {
    control: Control,
    channel: String,
    mapper: Mapper,
    /// The channel's "rings changed" eventfd (also signalled on stop / destroy).
    changed: EventFd,
    /// Rings mapped at attach, not yet handed to workers.
    rings: Vec<RingState>,
    mapped: BTreeSet<u32>,
    threads: usize,
    /// Flush and beacon period, when streaming to a relay.
    live_timer: Option<Duration>,
    shutdown: Arc<EventFd>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("channel", &self.channel)
            .field("output", &self.output())
            .field("cpus", &self.mapped)
            .field("threads", &self.threads)
            .finish()
    }
}

impl Consumer {
    /// Connects, maps the channel, prepares the trace directory.
    ///
    /// Fails with [`ConsumerError::Refused`] (and the host's message) if the
    /// host refuses `map` (no channel yet, another consumer attached, …),
    /// and [`ConsumerError::OutputNotEmpty`] / [`ConsumerError::Output`] if
    /// the directory already holds a trace or cannot be written.
    pub fn attach(cfg: &ConsumerConfig) -> Result<Consumer, ConsumerError> {
        let mut control = Control::connect(&cfg.socket)?;
        let (reply, fds) = control.call_ok(&Request::Map)?;
        let Reply::Mapped(info) = reply else {
            return Err(ConsumerError::Protocol(format!("`map` answered with {reply:?}")));
        };
        let MapInfo { channel, trace_uuid, config, ctrl_len, rings, metadata } = info;
        let geo = Geometry::new(config.subbuf_size, u64::from(config.num_subbuf))
            .map_err(|e| ConsumerError::Protocol(format!("channel geometry: {e}")))?;
        if channel.is_empty() || channel.contains(['/', '\0']) || channel == "." || channel == ".." {
            return Err(ConsumerError::Protocol(format!("channel name {channel:?} cannot name stream files")));
        }
        let mut fds = fds.into_iter();
        let (Some(ctrl_fd), Some(changed_fd)) = (fds.next(), fds.next()) else {
            unreachable!("`Control::call` checked the descriptor count");
        };
        let ctrl_len = usize::try_from(ctrl_len)
            .map_err(|_| ConsumerError::Protocol(format!("control length {ctrl_len} too large")))?;
        let ctrl = Arc::new(
            SharedMapping::map_rw(&ctrl_fd, ctrl_len)
                .map_err(ConsumerError::io("mapping the control memfd read-write"))?,
        );
        drop(ctrl_fd);
        let changed = EventFd::from_fd(changed_fd).map_err(ConsumerError::io("the channel's eventfd"))?;
        if cfg.output.is_none() && cfg.relay.is_none() {
            return Err(ConsumerError::Protocol("no sink: neither a trace directory nor a relay".into()));
        }
        let out = cfg
            .output
            .as_ref()
            .map(|o| OutputDir::prepare(o, &channel, &format!("{metadata}{}", cfg.metadata_suffix)))
            .transpose()?;
        let threads = cfg.threads.max(1);
        let relay = cfg
            .relay
            .as_ref()
            .map(|r| Relay::start(r, &channel, trace_uuid, &metadata, config.subbuf_size, threads, out.is_none()))
            .transpose()?;
        let live_timer = cfg.relay.as_ref().map(|r| r.live_timer.max(Duration::from_millis(1)));
        let mapper = Mapper { ctrl, geo, uuid: trace_uuid, out, relay, direct_min: cfg.direct_min };
        let mut mapped_rings = Vec::with_capacity(rings.len());
        let mut mapped = BTreeSet::new();
        for ring in &rings {
            let (Some(data), Some(wake)) = (fds.next(), fds.next()) else { unreachable!("checked count") };
            if !mapped.insert(ring.cpu) {
                return Err(ConsumerError::Protocol(format!("CPU {} has two rings", ring.cpu)));
            }
            mapped_rings.push(mapper.map_ring(ring, data, wake)?);
        }
        Ok(Consumer {
            control,
            channel,
            mapper,
            changed,
            rings: mapped_rings,
            mapped,
            threads,
            live_timer,
            shutdown: Arc::new(EventFd::new().map_err(ConsumerError::io("creating the shutdown eventfd"))?),
        })
    }

    /// Channel name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The trace's UUID (every packet header carries it).
    pub fn trace_uuid(&self) -> [u8; 16] {
        self.mapper.uuid
    }

    /// The trace directory, if recording locally.
    pub fn output(&self) -> Option<&Path> {
        self.mapper.out.as_ref().map(|o| o.path.as_path())
    }

    /// CPUs whose rings are mapped so far.
    pub fn cpus(&self) -> Vec<u32> {
        self.mapped.iter().copied().collect()
    }

    /// A handle that ends [`run`](Self::run) as SIGINT would.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Records until the session is destroyed, the host goes away, SIGINT /
    /// SIGTERM arrives or [`ShutdownHandle::shutdown`] is called; then ends
    /// every stream (see the [crate docs](crate#end-of-a-session)).
    ///
    /// Errors are those that stop the consumer from waiting at all (epoll,
    /// threads); write errors are reported per ring in the [`Report`].
    pub fn run(mut self) -> Result<Report, ConsumerError> {
        let signals = Signals::register().map_err(ConsumerError::io("installing SIGINT/SIGTERM handlers"))?;
        let workers = (0..self.threads).map(Worker::spawn).collect::<Result<Vec<_>, _>>()?;
        let mut next = 0usize;
        for ring in std::mem::take(&mut self.rings) {
            workers[next % workers.len()].add(ring);
            next += 1;
        }

        const SOCKET: u64 = 0;
        const CHANGED: u64 = 1;
        const SIGNAL: u64 = 2;
        const SHUTDOWN: u64 = 3;
        const RELAY_FAILED: u64 = 4;
        let mut poller = Poller::new().map_err(ConsumerError::io("creating the main epoll"))?;
        let reg = ConsumerError::io("registering with the main epoll");
        poller
            .add(&self.control, SOCKET)
            .and_then(|()| poller.add(&self.changed, CHANGED))
            .and_then(|()| poller.add(&signals.rx, SIGNAL))
            .and_then(|()| poller.add(&*self.shutdown, SHUTDOWN))
            .and_then(|()| self.mapper.relay.as_ref().map_or(Ok(()), |r| poller.add(r.failed_fd(), RELAY_FAILED)))
            .map_err(reg)?;
        let mut next_tick = self.live_timer.map(|t| (Instant::now() + t, t));
        let mut tick = 0u64;

        // The session may have changed between `map` and now.
        let mut exit = self.rings_changed(&workers, &mut next)?;
        let mut events = Vec::with_capacity(8);
        if self.relay_only() && self.mapper.relay.as_ref().is_some_and(Relay::failed) {
            exit = Some(ExitReason::RelayGone);
        }
        while exit.is_none() {
            let timeout = next_tick.map(|(at, _)| at.saturating_duration_since(Instant::now()));
            poller.wait(&mut events, timeout).map_err(ConsumerError::io("epoll_wait"))?;
            if let Some((at, period)) = &mut next_tick {
                if Instant::now() >= *at {
                    *at = Instant::now() + *period;
                    tick += 1;
                    exit = self.live_tick(&workers, tick);
                }
            }
            for ev in &events {
                let why = match ev.token {
                    SOCKET if ev.hangup || self.control.hung_up() => Some(ExitReason::HostGone),
                    CHANGED => {
                        let _ = self.changed.drain();
                        self.rings_changed(&workers, &mut next)?
                    }
                    SIGNAL => {
                        signals.drain();
                        Some(ExitReason::Signal)
                    }
                    SHUTDOWN => Some(ExitReason::Shutdown),
                    RELAY_FAILED => {
                        if let Some(r) = &self.mapper.relay {
                            let _ = r.failed_fd().drain();
                        }
                        // With a local trace, recording goes on.
                        self.relay_only().then_some(ExitReason::RelayGone)
                    }
                    _ => None,
                };
                exit = exit.or(why);
            }
        }
        let mut exit = exit.unwrap_or(ExitReason::Shutdown);

        // Close the partial sub-buffers so the final drain gets them.
        if exit != ExitReason::HostGone {
            match self.control.call(&Request::Flush) {
                Ok(_) => {} // an `Error` (e.g. the channel is destroyed) is fine
                Err(ConsumerError::HostGone) => exit = ExitReason::HostGone,
                Err(e) => eprintln!("hvtrace-consume: flush before the final drain failed: {e}"),
            }
        }
        let mut per_ring = Vec::new();
        let mut failure = None;
        for w in workers {
            match w.finish() {
                Ok(r) => per_ring.extend(r),
                Err(e) => failure = Some(e),
            }
        }
        per_ring.sort_by_key(|r| r.cpu);
        // Every worker has queued its last packet: the relay closes the session.
        let relay = self.mapper.relay.take().map(Relay::finish);
        let cut_short = exit == ExitReason::HostGone;
        let out = self.mapper.out.as_ref();
        if let (true, Some(out)) = (cut_short, out) {
            let note = "The host went away before the session was destroyed: this trace holds the packets \
                        delivered until then; events still in partial sub-buffers were not recorded.\n";
            if let Err(e) = out.mark_incomplete() {
                eprintln!(
                    "hvtrace-consume: cannot write {}/{INCOMPLETE} ({e}); the trace was cut short: {note}",
                    out.path.display()
                );
            }
        }
        if let Some(Err(e)) = out.map(OutputDir::sync) {
            eprintln!(
                "hvtrace-consume: fsync of {}: {e}",
                self.mapper.out.as_ref().map_or(Path::new(""), |o| &o.path).display()
            );
        }
        if exit != ExitReason::HostGone {
            let _ = self.control.call(&Request::Unmap);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let output = self.output().map(Path::to_path_buf).unwrap_or_default();
        Ok(Report { channel: self.channel.clone(), output, per_ring, exit, cut_short, relay })
    }

    fn relay_only(&self) -> bool {
        self.mapper.out.is_none()
    }

    /// The live timer fired: close the partial sub-buffers through the
    /// control path, as `hvtrace flush` does, then have every worker drain
    /// its rings and tell the relay thread, which sends beacons for the
    /// streams that had nothing.
    fn live_tick(&mut self, workers: &[Worker], tick: u64) -> Option<ExitReason> {
        match self.control.call(&Request::Flush) {
            Ok(_) => {} // an `Error` (no channel, destroyed) only means nothing to flush
            Err(ConsumerError::HostGone) => return Some(ExitReason::HostGone),
            Err(e) => eprintln!("hvtrace-consume: live timer flush failed: {e}"),
        }
        let relay = self.mapper.relay.as_ref()?;
        for w in workers {
            let tx = relay.sender();
            w.drain(Box::new(move || tx.drained(tick)));
        }
        None
    }

    /// On a "rings changed" wake-up: query status, map new CPUs, and say
    /// whether the session is over.
    fn rings_changed(&mut self, workers: &[Worker], next: &mut usize) -> Result<Option<ExitReason>, ConsumerError> {
        let status = match self.control.call_ok(&Request::Status) {
            Ok((Reply::Status(s), _)) => s,
            Ok((other, _)) => return Err(ConsumerError::Protocol(format!("`status` answered with {other:?}"))),
            Err(ConsumerError::HostGone) => return Ok(Some(ExitReason::HostGone)),
            Err(e) => return Err(e),
        };
        let StatusInfo { state, destroy_pending, rings, .. } = status;
        for r in rings {
            if self.mapped.contains(&r.cpu) {
                continue;
            }
            match self.map_new_ring(r.cpu) {
                Ok(ring) => {
                    self.mapped.insert(r.cpu);
                    workers[*next % workers.len()].add(ring);
                    *next += 1;
                }
                Err(ConsumerError::HostGone) => return Ok(Some(ExitReason::HostGone)),
                Err(e) => {
                    // Not fatal: the other rings go on.
                    eprintln!("hvtrace-consume: CPU {} came online but its ring cannot be consumed: {e}", r.cpu);
                    self.mapped.insert(r.cpu);
                }
            }
        }
        // `Empty`: the host knows of no channel at all. It never says so while
        // a consumer holds a reference (destroy reports `Destroyed` before it
        // wakes anyone), so this is a host that lost its state: end the
        // session rather than wait for a destroy that cannot come.
        let over = matches!(state, ChannelState::Destroyed | ChannelState::Empty) || destroy_pending;
        Ok(over.then_some(ExitReason::Destroyed))
    }

    fn map_new_ring(&mut self, cpu: u32) -> Result<RingState, ConsumerError> {
        let (reply, fds) = self.control.call_ok(&Request::MapRing { cpu })?;
        let Reply::RingMapped(info) = reply else {
            return Err(ConsumerError::Protocol(format!("`map_ring` answered with {reply:?}")));
        };
        if info.cpu != cpu {
            return Err(ConsumerError::Protocol(format!("asked for the ring of CPU {cpu}, got CPU {}", info.cpu)));
        }
        let mut fds = fds.into_iter();
        let (Some(data), Some(wake)) = (fds.next(), fds.next()) else { unreachable!("checked count") };
        self.mapper.map_ring(&info, data, wake)
    }
}

/// SIGINT / SIGTERM delivered to a socket the main epoll watches.
struct Signals {
    rx: UnixStream,
    ids: Vec<signal_hook::SigId>,
}

impl Signals {
    fn register() -> io::Result<Signals> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        let mut ids = Vec::new();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            ids.push(signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?);
        }
        Ok(Signals { rx, ids })
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.rx).read(&mut buf), Ok(n) if n > 0) {}
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
