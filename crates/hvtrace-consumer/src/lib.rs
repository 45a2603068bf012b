//! # hvtrace-consumer — the consumer daemon (`lttd`), as a library
//!
//! [`Consumer::attach`] connects to a host's control socket, sends `map`,
//! maps the channel's control memfd read-write and every ring's data memfd
//! **read-only**, creates the trace directory and writes its `metadata`.
//! [`Consumer::run`] then records until the session ends and returns a
//! [`Report`]. The library prints nothing: what went wrong on the way is in
//! the report ([`Report::notes`], [`RingReport::first_error`]).
//!
//! ## The trace directory
//! Opened once; every file is created relative to it with `O_CREAT |
//! O_EXCL | O_NOFOLLOW`, 0600 (0640 with [`ConsumerConfig::group`]), and
//! written only through its descriptor, so another user who can write the
//! directory cannot redirect a write to a file of its choosing. Besides the
//! streams and `metadata` it holds the consumer's account ([`ACCOUNT`]):
//! the mode, and per stream the packets handed over and those lost, which
//! `hvtrace check` reads.
//!
//! ## Trusting nothing in the control page
//! The host lets one consumer map a channel at a time, but any process that
//! mapped it before keeps its control memfd. So the consumed position found
//! there is validated at attach (reset, and said so, if no honest consumer
//! can have left it), each ring's position is kept privately and put back
//! when found moved, and a packet is kept only if, after its bytes were
//! written, the producer has not reserved anything in that sub-buffer's
//! next lap and the header still carries the packet's sequence number
//! (otherwise it is cut off again and counted as torn).
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
//! readers skip it). A stream file no longer in the directory under its name
//! (removed, replaced), or a directory no longer at its path, makes its
//! packets lost ([`Report::is_whole`] is then false). The account gets its
//! last lines.
//!
//! ## Streaming to a relay
//! With [`ConsumerConfig::relay`], every packet also goes, with its index,
//! to an `lttng-relayd` (through [`hvtrace_relayd`], on a thread of its own
//! fed by a bounded queue: see the `relay` module), which stores the trace
//! and serves it live. A live timer then flushes partial sub-buffers through
//! the control socket and sends beacons for idle streams. Without a local
//! directory ([`ConsumerConfig::output`] `None`) the relay is the only sink:
//! there is no account, no `INCOMPLETE` marker, and what is lost is only
//! counted in the [`Report`]. The after-write check above covers both sinks
//! (the relay's copy is taken, and checked, before the packet is released:
//! a torn packet never reaches the relay).
// No `unsafe` but in `mapped` (the core's readers over the mappings).
#![deny(unsafe_code)]

mod control;
mod error;
#[allow(unsafe_code)]
mod mapped;
mod metadata;
mod output;
mod relay;
mod report;
mod stream;
mod worker;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvtrace_core::{Geometry, Mode};
use hvtrace_proto::{ChannelState, ErrorCode, MapInfo, Reply, Request, RingInfo, StatusInfo};
use hvtrace_reader::account::Account;
use hvtrace_sys::{EventFd, Poller, SharedMapping};

use control::Control;
pub use error::ConsumerError;
pub use hvtrace_relayd::RelaydUrl;
pub use mapped::{MappedMetaLog, MappedReader};
use metadata::MetadataLog;
pub use metadata::MetadataReport;
pub use output::{Access, OutputDir, ACCOUNT, INCOMPLETE};
use relay::Relay;
pub use relay::{index_of as relay_index_of, RelayConfig, RelayReport, RelayStreamReport, RELAY_QUEUE, RELAY_TIMEOUT};
pub use report::{ExitReason, Report, RingReport};
use stream::StreamFile;
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
    /// The group that may read the trace: the directory is then made 0750
    /// and the files 0640, owned by that group (like LTTng's `tracing`
    /// group); `None`, the default, makes them 0700 / 0600. Traces hold
    /// guest addresses and hypercall arguments.
    pub group: Option<u32>,
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
            group: None,
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
    /// The host's metadata log, which every worker follows.
    meta: Arc<MetadataLog>,
    geo: Geometry,
    uuid: [u8; 16],
    out: Option<OutputDir>,
    relay: Option<Relay>,
    direct_min: Option<usize>,
}

/// A ring mapped and checked, its stream not open yet.
struct MappedRing {
    cpu: u32,
    source: MappedReader,
    wake: EventFd,
    /// Where reading resumes.
    expect: u64,
    /// The consumed position in the control page must be put back to
    /// `expect` (no honest consumer left it there).
    reset: bool,
}

impl Mapper {
    /// Maps one ring and creates its stream file; says if the ring's
    /// consumed position had to be reset.
    fn map_ring(
        &self,
        ring: &RingInfo,
        data_fd: OwnedFd,
        wake_fd: OwnedFd,
    ) -> Result<(RingState, Option<String>), ConsumerError> {
        let (mapped, note) = self.map(ring, data_fd, wake_fd)?;
        Ok((self.open(mapped)?, note))
    }

    /// Maps one ring read-only and checks it, writing nothing anywhere; says
    /// if its consumed position is to be reset.
    fn map(
        &self,
        ring: &RingInfo,
        data_fd: OwnedFd,
        wake_fd: OwnedFd,
    ) -> Result<(MappedRing, Option<String>), ConsumerError> {
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
        require_shrink_seal(&data_fd, &format!("the data memfd of CPU {cpu}"))?;
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
        // The position left in the control page is only a claim: whoever
        // mapped the channel before could write anything there.
        let (consumed, write) = (r.consumed(), r.counters().produced_bytes);
        let (expect, note) = match resume_position(consumed, write, self.geo, r.mode()) {
            Ok(pos) => (pos, None),
            Err(pos) => {
                let note = format!(
                    "CPU {cpu}: the consumed position left in the control page ({consumed}) cannot be one an honest \
                     consumer left (write position {write}); resumed at {pos}"
                );
                (pos, Some(note))
            }
        };
        Ok((MappedRing { cpu, source, wake, expect, reset: note.is_some() }, note))
    }

    /// Opens the stream file (and the relay's stream) of a mapped ring.
    fn open(&self, m: MappedRing) -> Result<RingState, ConsumerError> {
        let MappedRing { cpu, source, wake, expect, reset } = m;
        let stream = self.out.as_ref().map(|o| o.create_stream(cpu, self.direct_min)).transpose()?;
        if reset {
            source.reader().set_consumed(expect);
        }
        let relay = self.relay.as_ref().map(|r| r.ring(cpu));
        let state = RingState::new(cpu, self.uuid, Box::new(source), wake, stream, relay, expect);
        Ok(state.following(self.meta.clone()))
    }
}

/// Refuses a memfd its owner could still shrink: a mapping of it would kill
/// this process with `SIGBUS` at the first read past a truncation. The host
/// seals every memfd it hands out; anything else is not the host's.
pub(crate) fn require_shrink_seal(fd: &OwnedFd, what: &str) -> Result<(), ConsumerError> {
    let sealed =
        hvtrace_sys::memfd::shrink_is_sealed(fd).map_err(ConsumerError::io(format!("reading the seals of {what}")))?;
    if sealed {
        Ok(())
    } else {
        Err(ConsumerError::Protocol(format!("{what}: not sealed against shrinking")))
    }
}

/// Where to resume reading a ring whose producer has written up to
/// `write`, given the `consumed` position found in the control page:
/// `Ok(consumed)` if an honest consumer can have left it there, else
/// `Err` with the oldest position that can still hold an unread packet.
///
/// An honest consumer's position is a sub-buffer boundary at or behind the
/// write position, and in discard mode less than a ring behind the
/// sub-buffer being written (the producer opens no sub-buffer a whole ring
/// ahead of it). In overwrite mode it may be any distance behind: the
/// reader skips the laps the producer overwrote.
fn resume_position(consumed: u64, write: u64, geo: Geometry, mode: Mode) -> Result<u64, u64> {
    let oldest = write.next_multiple_of(geo.subbuf_size).saturating_sub(geo.buf_size());
    let aligned = consumed.is_multiple_of(geo.subbuf_size);
    let in_reach = consumed <= write && (mode == Mode::Overwrite || consumed >= oldest);
    if aligned && in_reach {
        Ok(consumed)
    } else {
        Err(oldest)
    }
}

/// How long `attach` keeps asking when another consumer holds the channel:
/// long enough for the host to see a consumer that just died go (its
/// connection closes when the kernel reaps it), short enough to fail
/// clearly when one is really attached.
const TAKE_OVER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// The rings are in overwrite mode (flight recorder).
    overwrite: bool,
    /// The consumer's account (`.hvtrace-consumer`), its header written;
    /// `None` when the relay is the only sink.
    account: Option<File>,
    /// Problems to report that are not one stream's.
    notes: Vec<String>,
    /// Live-timer flushes that failed, and the first error.
    flush_failures: (u64, Option<String>),
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
        let started = std::time::Instant::now();
        let (reply, mut fds) = loop {
            match control.call_ok(&Request::Map) {
                // One consumer at a time: a holder that just died is dropped
                // by the host when it sees the connection close.
                Err(ConsumerError::Refused { code: ErrorCode::Busy, .. }) if started.elapsed() < TAKE_OVER_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                r => break r?,
            }
        };
        let Reply::Mapped(info) = reply else {
            return Err(ConsumerError::Protocol(format!("`map` answered with {reply:?}")));
        };
        let metadata_fd_index = info.metadata_fd_index();
        let MapInfo { channel, trace_uuid, config, ctrl_len, rings, metadata_len } = info;
        let geo = Geometry::new(config.subbuf_size, u64::from(config.num_subbuf))
            .map_err(|e| ConsumerError::Protocol(format!("channel geometry: {e}")))?;
        if channel.is_empty() || channel.contains(['/', '\0']) || channel == "." || channel == ".." {
            return Err(ConsumerError::Protocol(format!("channel name {channel:?} cannot name stream files")));
        }
        // The metadata log comes after the rings' descriptors.
        let meta_fd = fds.remove(metadata_fd_index);
        let mut fds = fds.into_iter();
        let (Some(ctrl_fd), Some(changed_fd)) = (fds.next(), fds.next()) else {
            unreachable!("`Control::call` checked the descriptor count");
        };
        let (meta, metadata) = MetadataLog::attach(meta_fd, metadata_len, cfg.relay.is_some())?;
        let meta = Arc::new(meta);
        let ctrl_len = usize::try_from(ctrl_len)
            .map_err(|_| ConsumerError::Protocol(format!("control length {ctrl_len} too large")))?;
        require_shrink_seal(&ctrl_fd, "the control memfd")?;
        let ctrl = Arc::new(
            SharedMapping::map_rw(&ctrl_fd, ctrl_len)
                .map_err(ConsumerError::io("mapping the control memfd read-write"))?,
        );
        drop(ctrl_fd);
        let changed = EventFd::from_fd(changed_fd).map_err(ConsumerError::io("the channel's eventfd"))?;
        if cfg.output.is_none() && cfg.relay.is_none() {
            return Err(ConsumerError::Protocol("no sink: neither a trace directory nor a relay".into()));
        }
        let mut mapper =
            Mapper { ctrl, meta, geo, uuid: trace_uuid, out: None, relay: None, direct_min: cfg.direct_min };
        // Every ring is mapped and checked before the trace directory is
        // made, so a host refused here leaves nothing behind.
        let mut ring_maps = Vec::with_capacity(rings.len());
        let mut mapped = BTreeSet::new();
        let mut notes = Vec::new();
        for ring in &rings {
            let (Some(data), Some(wake)) = (fds.next(), fds.next()) else { unreachable!("checked count") };
            if !mapped.insert(ring.cpu) {
                return Err(ConsumerError::Protocol(format!("CPU {} has two rings", ring.cpu)));
            }
            let (m, note) = mapper.map(ring, data, wake)?;
            ring_maps.push(m);
            notes.extend(note);
        }
        let access = output::Access::new(cfg.group);
        // After the kernel's classes, a marker says that the VMM's (stream 0)
        // resume: those the host registers during the session are appended.
        let local_metadata = match cfg.metadata_suffix.as_str() {
            "" => metadata,
            suffix => format!("{metadata}{suffix}\n{}\n", hvtrace_core::metadata::VMM_CLASSES_RESUME_MARKER),
        };
        let out = match &cfg.output {
            Some(o) => {
                let (out, file) = OutputDir::prepare(o, &channel, &local_metadata, access)?;
                mapper.meta.set_file(file, local_metadata.len() as u64);
                Some(out)
            }
            None => None,
        };
        let overwrite = config.mode == hvtrace_proto::Mode::Overwrite;
        // Only a local trace has an account: a relay-only run counts its
        // losses in the report.
        let account = out.as_ref().map(|o| o.create_account(&Account::header(overwrite))).transpose()?;
        let threads = cfg.threads.max(1);
        let relay = match &cfg.relay {
            Some(r) => {
                let (relay, note) = Relay::start(
                    r,
                    &channel,
                    trace_uuid,
                    mapper.meta.clone(),
                    config.subbuf_size,
                    threads,
                    out.is_none(),
                )?;
                notes.extend(note);
                Some(relay)
            }
            None => None,
        };
        let live_timer = cfg.relay.as_ref().map(|r| r.live_timer.max(Duration::from_millis(1)));
        (mapper.out, mapper.relay) = (out, relay);
        let mapped_rings = ring_maps.into_iter().map(|m| mapper.open(m)).collect::<Result<Vec<_>, _>>()?;
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
            overwrite,
            account,
            notes,
            flush_failures: (0, None),
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

    /// Creates the new file `name` in the trace directory as the consumer
    /// creates its own (under the directory's descriptor, `O_CREAT |
    /// O_EXCL | O_NOFOLLOW`, the trace's mode and group): the kernel's
    /// stream files. `NotFound` when not recording locally.
    pub fn create_file(&self, name: &str) -> std::io::Result<std::fs::File> {
        match &self.mapper.out {
            Some(o) => o.create(name),
            None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no trace directory (relay only)")),
        }
    }

    /// Problems met at attach (a consumed position reset, a relay that
    /// could not be reached, …), for a caller to show at once; the final
    /// [`Report::notes`] holds them too.
    pub fn notes(&self) -> &[String] {
        &self.notes
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
        let mut ignored = 0u64;
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
                    SOCKET if ev.hangup || self.control.hung_up(&mut ignored) => Some(ExitReason::HostGone),
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
        if ignored > 0 {
            self.notes.push(format!("ignored {ignored} unsolicited messages from the host"));
        }

        // Close the partial sub-buffers so the final drain gets them.
        if exit != ExitReason::HostGone {
            match self.control.call(&Request::Flush) {
                Ok(_) => {} // an `Error` (e.g. the channel is destroyed) is fine
                Err(ConsumerError::HostGone) => exit = ExitReason::HostGone,
                Err(e) => self.notes.push(format!("flush before the final drain failed: {e}")),
            }
        }
        let mut finished = Vec::new();
        let mut failure = None;
        for w in workers {
            match w.finish() {
                Ok(end) => {
                    finished.extend(end.rings);
                    self.notes.extend(end.notes);
                }
                Err(e) => failure = Some(e),
            }
        }
        finished.sort_by_key(|f| f.report.cpu);
        // Classes registered after the last packet belong in the trace too.
        self.mapper.meta.catch_up();
        // Every worker has queued its last packet: the relay closes the session.
        let relay = self.mapper.relay.take().map(Relay::finish);
        let cut_short = exit == ExitReason::HostGone;
        let mut trace_lost = None;
        if let Some(out) = &self.mapper.out {
            // Written is not kept: a stream file removed or replaced under
            // the consumer, or the whole directory, holds nothing of the trace.
            trace_lost = out.gone();
            for f in &mut finished {
                let Some(local) = &mut f.local else { continue };
                let why = trace_lost.clone().or_else(|| match &local.file {
                    Some(file) => out.still_holds(&local.name, file),
                    None => Some(format!("{}: cannot look at the file", local.name)),
                });
                if let Some(why) = why {
                    StreamFile::lose_all(&mut f.report, &mut local.account, why);
                }
            }
            if cut_short {
                if let Err(e) = out.mark_incomplete() {
                    self.notes.push(format!(
                        "cannot write {}/{INCOMPLETE} ({e}); the trace was cut short: the host went away before \
                         the session was destroyed, and events still in partial sub-buffers were not recorded",
                        out.path.display()
                    ));
                }
            }
            if let Some(file) = &mut self.account {
                let account = Account {
                    overwrite: self.overwrite,
                    streams: finished.iter().filter_map(|f| f.local.as_ref().map(|l| l.account.clone())).collect(),
                    end: Some(exit.code().to_string()),
                };
                if let Err(e) = file.write_all(account.footer().as_bytes()).and_then(|()| file.sync_all()) {
                    self.notes
                        .push(format!("cannot write the consumer's account {}/{ACCOUNT}: {e}", out.path.display()));
                }
            }
            if let Err(e) = self.mapper.meta.sync() {
                self.notes.push(format!("fsync of {}/metadata: {e}", out.path.display()));
            }
            if let Err(e) = out.sync() {
                self.notes.push(format!("fsync of {}: {e}", out.path.display()));
            }
        }
        if self.flush_failures.0 > 0 {
            self.notes.push(format!(
                "the live timer's flush failed {} times (first: {}); live viewers saw those partial sub-buffers late",
                self.flush_failures.0,
                self.flush_failures.1.as_deref().unwrap_or("?")
            ));
        }
        if exit != ExitReason::HostGone {
            let _ = self.control.call(&Request::Unmap);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let output = self.output().map(Path::to_path_buf).unwrap_or_default();
        Ok(Report {
            channel: self.channel.clone(),
            output,
            per_ring: finished.into_iter().map(|f| f.report).collect(),
            exit,
            cut_short,
            overwrite: self.overwrite,
            trace_lost,
            notes: self.notes,
            relay,
            metadata: self.mapper.meta.report(),
        })
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
            Err(e) => {
                // Counted, not printed: the library prints nothing.
                let (n, first) = &mut self.flush_failures;
                *n += 1;
                first.get_or_insert_with(|| e.to_string());
            }
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
                Ok((ring, note)) => {
                    self.notes.extend(note);
                    self.mapped.insert(r.cpu);
                    workers[*next % workers.len()].add(ring);
                    *next += 1;
                }
                Err(ConsumerError::HostGone) => return Ok(Some(ExitReason::HostGone)),
                Err(e) => {
                    // Not fatal: the other rings go on.
                    self.notes.push(format!("CPU {} came online but its ring cannot be consumed: {e}", r.cpu));
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

    fn map_new_ring(&mut self, cpu: u32) -> Result<(RingState, Option<String>), ConsumerError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memfd_its_owner_could_shrink_is_refused_before_it_is_mapped() {
        let fd = hvtrace_sys::memfd::create_memfd("hvtrace-test-unsealed", 4096).unwrap();
        let err = require_shrink_seal(&fd, "the data memfd of CPU 3").unwrap_err().to_string();
        assert!(err.contains("CPU 3") && err.contains("not sealed"), "{err}");
        hvtrace_sys::memfd::seal_size(&fd).unwrap();
        assert!(require_shrink_seal(&fd, "the data memfd of CPU 3").is_ok());
    }

    #[test]
    fn positions_left_in_the_control_page_are_checked_against_the_producer() {
        let geo = Geometry::new(4096, 4).unwrap();
        let (d, o) = (Mode::Discard, Mode::Overwrite);
        // Fresh ring, and a consumer that read everything delivered.
        assert_eq!(resume_position(0, 0, geo, d), Ok(0));
        assert_eq!(resume_position(8192, 8192 + 100, geo, d), Ok(8192));
        // Discard: up to a ring behind the sub-buffer being written.
        let w = 10 * 4096 + 100; // writing sub-buffer 10
        assert_eq!(resume_position(7 * 4096, w, geo, d), Ok(7 * 4096));
        assert_eq!(resume_position(6 * 4096, w, geo, d), Err(7 * 4096), "a whole ring behind");
        assert_eq!(resume_position(u64::MAX, w, geo, d), Err(7 * 4096));
        assert_eq!(resume_position(11 * 4096, w, geo, d), Err(7 * 4096), "ahead of the writer");
        assert_eq!(resume_position(8 * 4096 + 1, w, geo, d), Err(7 * 4096), "unaligned");
        // Overwrite: any distance behind (the reader skips overwritten laps).
        assert_eq!(resume_position(0, w, geo, o), Ok(0));
        assert_eq!(resume_position(u64::MAX - 4095, w, geo, o), Err(7 * 4096));
        assert_eq!(resume_position(4097, w, geo, o), Err(7 * 4096));
    }
}
