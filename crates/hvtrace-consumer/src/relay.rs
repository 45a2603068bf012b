//! The second sink: every packet, with its index, to an lttng-relayd.
//!
//! All relay I/O happens on one thread of its own ([`Relay`]), fed by a
//! bounded queue. Workers copy each delivered packet into the queue and go
//! on: with a local trace directory they never wait for the relay (a full
//! queue, or a relay that failed, means the packet is *missed* by the relay
//! and counted, while the local file still gets it); with the relay as the
//! only sink they wait for room in the queue, so a slow relay holds
//! sub-buffers back and the host's rings discard (and count) what does not
//! fit, exactly as a slow disk would. The host never waits on either.
//!
//! Live viewing: the main thread's live timer asks the host to flush partial
//! sub-buffers, then has every worker drain its rings and post a `Drained`
//! marker behind the packets it queued. When all workers' markers for a tick
//! are in, every stream that sent nothing during the tick gets a beacon
//! stamped with the latest packet end known at the *previous* tick: every
//! record the stream can still send was written after that tick's flush, so
//! the beacon never promises more than the stream keeps. The relay ignores
//! beacons of a stream that never had a packet (lttng-tools `relay_recv_index`),
//! so a stream's first "beacon" is an empty packet (header only, sequence
//! number 0, no events), as LTTng's own live timer sends one: the relay's
//! trace then holds that packet more than the local one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hvtrace_core::decode::{packet_info, PacketInfo};
use hvtrace_core::{ctf, RingCounters};
use hvtrace_relayd::{PacketIndex, RelayStream, Relayd, RelaydError, RelaydUrl, SessionParams};
use hvtrace_sys::EventFd;
use serde::Serialize;

use crate::metadata::MetadataLog;
use crate::report::RingReport;
use crate::stream::StreamFile;
use crate::ConsumerError;

/// Where and how to stream to a relay daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// The relay's address.
    pub url: RelaydUrl,
    /// Session name (a live viewer attaches to `/host/HOSTNAME/SESSION`).
    pub session: String,
    /// The host name the relay files the session under.
    pub hostname: String,
    /// Live timer: how often partial sub-buffers are flushed and idle
    /// streams get a beacon (LTTng's default is 1 s).
    pub live_timer: Duration,
    /// Bytes of packets that may wait for the relay (whole sub-buffers,
    /// at least two) before further ones are missed (with a local trace
    /// directory) or workers wait (without one).
    pub queue: usize,
    /// Longest any connect, send or reply may take before the relay counts
    /// as gone.
    pub timeout: Duration,
    /// How long the streams stay open after the last packet, for live
    /// viewers to read to the end (see `docs/relayd.md`); `None`: two live
    /// timers, at least 1 s, at most 5 s.
    pub linger: Option<Duration>,
}

/// Default [`RelayConfig::queue`]: 64 MiB.
pub const RELAY_QUEUE: usize = 64 << 20;
/// Default [`RelayConfig::timeout`].
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(10);

impl RelayConfig {
    /// The relay at `url`, the default session name for this machine, a 1 s
    /// live timer.
    pub fn new(url: RelaydUrl) -> RelayConfig {
        let hostname = hvtrace_sys::hostname();
        RelayConfig {
            url,
            session: hvtrace_relayd::default_session_name(&hostname, std::time::SystemTime::now()),
            hostname,
            live_timer: Duration::from_micros(u64::from(hvtrace_relayd::DEFAULT_LIVE_TIMER_US)),
            queue: RELAY_QUEUE,
            timeout: RELAY_TIMEOUT,
            linger: None,
        }
    }
}

/// What reached the relay, per stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RelayStreamReport {
    /// CPU number.
    pub cpu: u32,
    /// Packets the relay acknowledged (with their index).
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Live beacons sent (the first of a stream that had no packet yet is
    /// an empty packet).
    pub beacons: u64,
    /// Packets recorded but not relayed (queue full, or the relay failed).
    pub missed_packets: u64,
    /// Bytes of those packets.
    pub missed_bytes: u64,
    /// Whether the final loss-count packet went to the relay too.
    pub trailer: bool,
}

/// What happened on the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RelayReport {
    /// The relay's address.
    pub url: String,
    /// Session name.
    pub session: String,
    /// Host name the session is filed under.
    pub hostname: String,
    /// Per stream, by CPU.
    pub per_stream: Vec<RelayStreamReport>,
    /// Why the relay stopped taking packets, if it did.
    pub error: Option<String>,
}

impl RelayReport {
    /// Packets recorded but not relayed, over all streams.
    pub fn missed_packets(&self) -> u64 {
        self.per_stream.iter().map(|s| s.missed_packets).sum()
    }

    /// Packets relayed, over all streams.
    pub fn packets(&self) -> u64 {
        self.per_stream.iter().map(|s| s.packets).sum()
    }

    /// Where a live viewer attaches (the relay's live port is its own: 5344
    /// by default).
    pub fn live_path(&self) -> String {
        format!("/host/{}/{}", self.hostname, self.session)
    }
}

enum Msg {
    /// A ring was mapped: open its stream.
    Stream { cpu: u32 },
    /// One whole packet, copied out of the ring.
    Packet { cpu: u32, bytes: Vec<u8>, info: PacketInfo },
    /// The worker drained its rings for live tick `tick`.
    Drained { tick: u64 },
    /// The stream's final loss-count packet.
    Trailer { cpu: u32, bytes: Vec<u8>, info: PacketInfo },
    /// Close every stream and the session.
    Finish,
}

struct Shared {
    /// Packet buffers the relay thread is done with, for the workers to
    /// reuse: a fresh multi-MiB `Vec` per packet costs a page fault per
    /// page on first touch, and that was most of the copy's cost.
    pool: Mutex<Vec<Vec<u8>>>,
    /// Most buffers kept in `pool`.
    pool_max: usize,
    failed: AtomicBool,
    /// Signalled once when the relay fails (the main thread watches it).
    failed_fd: EventFd,
    /// Per CPU, packets and bytes its worker could not queue, left here at
    /// the ring's end rather than queued: a worker must not wait for room
    /// behind a slow relay when there is a local trace.
    missed: Mutex<BTreeMap<u32, (u64, u64)>>,
}

/// The sending end, one per ring (cheap to clone).
#[derive(Clone)]
pub(crate) struct RelayTx {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    /// No local trace: wait for room rather than miss packets.
    lossless: bool,
}

impl RelayTx {
    fn send(&self, msg: Msg) -> Result<(), Msg> {
        if self.lossless && !self.shared.failed.load(Ordering::Relaxed) {
            return self.tx.send(msg).map_err(|e| e.0);
        }
        self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(m) | TrySendError::Disconnected(m) => m,
        })
    }

    pub(crate) fn drained(&self, tick: u64) {
        // A marker that does not fit only costs that tick its beacons.
        let _ = self.tx.try_send(Msg::Drained { tick });
    }
}

/// One ring's relay stream, as its worker drives it.
pub(crate) struct RingRelay {
    cpu: u32,
    tx: RelayTx,
    /// Queued-or-missed so far, as the trailer needs.
    last: Option<PacketInfo>,
    /// One past the last sequence number handed over (read or not), so the
    /// trailer is numbered after every one, as in the local file.
    handed_next: u64,
    missed: (u64, u64),
    /// Without a local file, the ring's report is kept here (there is no
    /// account then: losses are only counted).
    report: Option<RingReport>,
}

impl RingRelay {
    /// Takes packet `seq` as [`StreamFile::take_packet`] does: to the file
    /// (if any) and the relay queue. The relay's copy is taken before the
    /// file is written and both before `release`, so its after-write check
    /// vouches for both.
    pub(crate) fn take_packet(
        &mut self,
        seq: u64,
        bytes: &[u8],
        overwrite: bool,
        release: impl FnOnce() -> bool,
        mut file: Option<&mut StreamFile>,
    ) {
        self.handed_next = self.handed_next.max(seq + 1);
        let info = packet_info(bytes).ok().filter(|i| i.packet_len <= bytes.len() && i.seq == seq);
        let Some(info) = info else {
            // Malformed: the file's own path counts it; without one, here.
            match file {
                Some(f) => f.take_packet(seq, bytes, overwrite, release),
                None => {
                    if release() {
                        let why = format!("dropped a malformed packet ({} bytes) instead of relaying it", bytes.len());
                        self.lost(1, bytes.len() as u64, &why);
                    } else {
                        self.torn(overwrite);
                    }
                }
            }
            return;
        };
        // The relay failed and a local file remains: no copy for nothing.
        if self.tx.shared.failed.load(Ordering::Relaxed) {
            if let Some(f) = file.as_deref_mut() {
                let mut whole = false;
                f.take_packet(seq, bytes, overwrite, || {
                    whole = release();
                    whole
                });
                if whole {
                    self.last = Some(info);
                    self.missed.0 += 1;
                    self.missed.1 += info.packet_len as u64;
                }
                return;
            }
        }
        // Copied before release: afterwards the producer may reuse it.
        let mut copy = self.tx.shared.pool.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(&bytes[..info.packet_len]);
        let mut whole = false;
        match file {
            Some(f) => f.take_packet(seq, bytes, overwrite, || {
                whole = release();
                whole
            }),
            None => {
                whole = release();
                if whole {
                    let r = self.report.as_mut().expect("relay-only ring");
                    r.packets += 1;
                    r.bytes += copy.len() as u64;
                } else {
                    self.torn(overwrite);
                }
            }
        }
        if !whole {
            return; // changed while copied: no more valid than in the file
        }
        self.last = Some(info);
        let n = copy.len() as u64;
        if self.tx.send(Msg::Packet { cpu: self.cpu, bytes: copy, info }).is_err() {
            self.missed.0 += 1;
            self.missed.1 += n;
        }
    }

    /// Relay-only: packets `from..to` were passed over unread (see
    /// [`StreamFile::skipped`]), lost.
    pub(crate) fn skipped(&mut self, from: u64, to: u64, why: &str) {
        self.handed_next = self.handed_next.max(to);
        self.lost(to.saturating_sub(from), 0, why);
    }

    /// Relay-only: a packet changed while it was copied. In overwrite mode
    /// the producer took it back and counted it; in discard mode it was
    /// reused because someone moved the consumed position.
    fn torn(&mut self, overwrite: bool) {
        let r = self.report.as_mut().expect("relay-only ring");
        r.torn += 1;
        if !overwrite && r.first_error.is_none() {
            r.first_error = Some(
                "changed while it was being copied (torn): the consumed position was moved under this consumer".into(),
            );
        }
    }

    /// Relay-only: `packets` handed over and not relayed, for `why`.
    fn lost(&mut self, packets: u64, bytes: u64, why: &str) {
        let r = self.report.as_mut().expect("relay-only ring");
        r.lost_packets += packets;
        r.lost_bytes += bytes;
        r.first_error.get_or_insert_with(|| why.to_string());
    }

    /// Ends the stream as [`StreamFile::finish`] does: the trailer if events
    /// were lost after the last packet, and the count of missed packets.
    /// With a local trace it never waits (the trailer is offered as any
    /// packet, the count left in [`Shared`]); relay-only, it waits for room
    /// for the trailer as for every packet, until the relay thread takes
    /// it or fails (each send bounded by [`RelayConfig::timeout`]).
    pub(crate) fn finish(mut self, uuid: &[u8; 16], counters: RingCounters) -> Option<RingReport> {
        let written = self.last.map_or(0, |l| l.events_discarded);
        let lost = counters.events_discarded(); // overwritten packets: sequence gaps
        if lost > written {
            let seq = self.handed_next.max(self.last.map_or(0, |l| l.seq + 1));
            let ts = self.last.map_or(0, |l| l.timestamp_end);
            let pkt = ctf::empty_packet(uuid, self.cpu, seq, ts, lost);
            if let Ok(info) = packet_info(&pkt) {
                let sent = self.tx.send(Msg::Trailer { cpu: self.cpu, bytes: pkt.to_vec(), info });
                if sent.is_err() {
                    self.missed.0 += 1;
                    self.missed.1 += pkt.len() as u64;
                } else if let Some(r) = self.report.as_mut() {
                    r.trailer = true;
                }
            }
        }
        if self.missed.0 > 0 {
            let mut all = self.tx.shared.missed.lock().unwrap_or_else(|e| e.into_inner());
            let m = all.entry(self.cpu).or_default();
            (m.0, m.1) = (m.0 + self.missed.0, m.1 + self.missed.1);
        }
        let mut r = self.report.take()?;
        r.counters = counters;
        Some(r)
    }
}

/// The relay thread, as the main thread holds it.
pub(crate) struct Relay {
    tx: RelayTx,
    channel: String,
    /// `URL/host/HOST/SESSION`, naming the streams in reports.
    place: String,
    join: Option<JoinHandle<RelayReport>>,
}

impl Relay {
    /// Connects, creates the session, sends the metadata and starts the
    /// relay thread. `lossless`: the relay is the only sink. With a local
    /// trace a relay that cannot be reached is no error: the second value
    /// says so, for [`Report::notes`](crate::Report::notes).
    pub(crate) fn start(
        cfg: &RelayConfig,
        channel: &str,
        uuid: [u8; 16],
        meta: Arc<MetadataLog>,
        subbuf_size: u64,
        workers: usize,
        lossless: bool,
    ) -> Result<(Relay, Option<String>), ConsumerError> {
        let packets = (cfg.queue as u64 / subbuf_size.max(1)).clamp(2, 1 << 16) as usize;
        let live_timer_us = u32::try_from(cfg.live_timer.as_micros()).unwrap_or(u32::MAX).max(1);
        let params = SessionParams {
            session: cfg.session.clone(),
            hostname: cfg.hostname.clone(),
            live_timer_us,
            // lttng's layout: RELAY_OUTPUT/HOST/SESSION/, one directory per
            // host and session.
            pathname: format!("{}/{}", cfg.hostname, cfg.session),
        };
        let metadata = meta.text_from(0);
        let relay_err = |source| ConsumerError::Relay { url: cfg.url.to_string(), source };
        let conn = Relayd::connect(&cfg.url, &params, cfg.timeout).and_then(|mut c| {
            c.send_metadata(&metadata)?;
            Ok(c)
        });
        // Without a local trace the relay is needed from the start; with one,
        // recording goes on and the relay's thread counts what it misses.
        let (conn, error) = match conn {
            Ok(c) => (Some(c), None),
            Err(e) if lossless => return Err(relay_err(e)),
            Err(e) => (None, Some(relay_err(e).to_string())),
        };
        let shared = Arc::new(Shared {
            pool: Mutex::new(Vec::new()),
            pool_max: packets + workers,
            failed: AtomicBool::new(false),
            failed_fd: EventFd::new().map_err(ConsumerError::io("creating the relay's eventfd"))?,
            missed: Mutex::new(BTreeMap::new()),
        });
        let (tx, rx) = mpsc::sync_channel(packets);
        let note = error.as_ref().map(|e| format!("{e}; recording locally only, counting what the relay misses"));
        let report = RelayReport {
            url: cfg.url.to_string(),
            session: cfg.session.clone(),
            hostname: cfg.hostname.clone(),
            per_stream: Vec::new(),
            error,
        };
        if conn.is_none() {
            shared.failed.store(true, Ordering::Relaxed);
        }
        let place = format!("{}{}", cfg.url, report.live_path());
        let mut t = Thread {
            conn,
            channel: channel.to_string(),
            uuid,
            linger: cfg.linger.unwrap_or((2 * cfg.live_timer).clamp(Duration::from_secs(1), Duration::from_secs(5))),
            live_timer: cfg.live_timer,
            streams: BTreeMap::new(),
            report,
            shared: shared.clone(),
            workers,
            tick: (0, 0),
            max_end: 0,
            beacon_ts: 0,
            unacked: VecDeque::new(),
            meta,
            meta_sent: metadata.len(),
        };
        let join = std::thread::Builder::new()
            .name("hvtrace-relay".into())
            .spawn(move || t.run(rx))
            .map_err(ConsumerError::io("starting the relay thread"))?;
        let relay =
            Relay { tx: RelayTx { tx, shared, lossless }, channel: channel.to_string(), place, join: Some(join) };
        Ok((relay, note))
    }

    /// The sending end for a ring of `cpu`; opens its stream on the relay.
    pub(crate) fn ring(&self, cpu: u32) -> RingRelay {
        // Not waiting for room: the relay thread also opens a stream on its
        // first packet.
        let _ = self.tx.tx.try_send(Msg::Stream { cpu });
        let name = format!("{}/{}_{cpu}", self.place, self.channel);
        let report = self.tx.lossless.then(|| RingReport::new(cpu, std::path::Path::new(&name)));
        RingRelay { cpu, tx: self.tx.clone(), last: None, handed_next: 0, missed: (0, 0), report }
    }

    /// A sender for the workers' `Drained` markers.
    pub(crate) fn sender(&self) -> RelayTx {
        self.tx.clone()
    }

    /// Signalled when the relay fails.
    pub(crate) fn failed_fd(&self) -> &EventFd {
        &self.tx.shared.failed_fd
    }

    /// Whether the relay failed.
    pub(crate) fn failed(&self) -> bool {
        self.tx.shared.failed.load(Ordering::Relaxed)
    }

    /// After the workers finished: closes the streams and the session and
    /// returns the report.
    pub(crate) fn finish(mut self) -> RelayReport {
        let _ = self.tx.tx.send(Msg::Finish);
        let join = self.join.take().expect("joined once");
        join.join().unwrap_or_else(|_| RelayReport {
            url: String::new(),
            session: String::new(),
            hostname: String::new(),
            per_stream: Vec::new(),
            error: Some("the relay thread panicked".into()),
        })
    }
}

struct StreamState {
    stream: RelayStream,
    report: RelayStreamReport,
    stream_class: u64,
    /// Sent a packet since the last tick.
    active: bool,
    last_seq: u64,
    last_discarded: u64,
    last_end: u64,
}

struct Thread {
    /// `None` once the relay failed: everything after is missed.
    conn: Option<Relayd>,
    channel: String,
    uuid: [u8; 16],
    /// How long the session stays open after its last packet, before its
    /// streams are closed, for live viewers to read to the end.
    linger: Duration,
    /// How often final beacons are repeated while lingering.
    live_timer: Duration,
    streams: BTreeMap<u32, StreamState>,
    report: RelayReport,
    shared: Arc<Shared>,
    workers: usize,
    /// (tick, `Drained` markers in for it).
    tick: (u64, usize),
    /// Latest packet end sent so far, and as it was at the last tick.
    max_end: u64,
    beacon_ts: u64,
    /// Packets sent whose index the relay has not acknowledged yet, in
    /// order. Counted relayed once acknowledged, missed if the relay fails
    /// first.
    unacked: VecDeque<Sent>,
    /// The host's metadata log, and how much of its text the relay has.
    meta: Arc<MetadataLog>,
    meta_sent: usize,
}

/// A packet sent, awaiting its acknowledgement.
struct Sent {
    cpu: u32,
    bytes: u64,
    kind: SentKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SentKind {
    Packet,
    /// The final loss-count packet.
    Trailer,
    /// A silent stream's first beacon (counted as a beacon when sent).
    Empty,
}

impl Thread {
    fn run(&mut self, rx: Receiver<Msg>) -> RelayReport {
        for msg in rx.iter() {
            match msg {
                Msg::Stream { cpu } => {
                    self.stream(cpu);
                }
                Msg::Packet { cpu, bytes, info } => {
                    self.packet(cpu, &bytes, &info, false);
                    if let Ok(mut pool) = self.shared.pool.lock() {
                        if pool.len() < self.shared.pool_max {
                            pool.push(bytes);
                        }
                    }
                }
                Msg::Trailer { cpu, bytes, info } => self.packet(cpu, &bytes, &info, true),
                Msg::Drained { tick } => self.drained(tick),
                Msg::Finish => break,
            }
        }
        // Every ring ended before `Finish` was sent.
        let missed = std::mem::take(&mut *self.shared.missed.lock().unwrap_or_else(|e| e.into_inner()));
        for (cpu, (packets, bytes)) in missed {
            if let Some(s) = self.stream(cpu) {
                s.report.missed_packets += packets;
                s.report.missed_bytes += bytes;
            }
        }
        self.close();
        let mut r = self.report.clone();
        r.per_stream = self.streams.values().map(|s| s.report.clone()).collect();
        r
    }

    /// The stream of `cpu`, opened on first use.
    fn stream(&mut self, cpu: u32) -> Option<&mut StreamState> {
        if !self.streams.contains_key(&cpu) {
            let name = format!("{}_{cpu}", self.channel);
            let opened = self.with_conn(|c| {
                let s = c.add_stream(&name)?;
                c.streams_sent()?;
                Ok(s)
            });
            let stream = opened.unwrap_or(RelayStream { handle: u64::MAX, name, next_seq: 0 });
            let report = RelayStreamReport { cpu, ..Default::default() };
            self.streams.insert(
                cpu,
                StreamState {
                    stream,
                    report,
                    stream_class: 0,
                    active: false,
                    last_end: 0,
                    last_seq: 0,
                    last_discarded: 0,
                },
            );
        }
        self.streams.get_mut(&cpu)
    }

    fn packet(&mut self, cpu: u32, bytes: &[u8], info: &PacketInfo, trailer: bool) {
        self.send_new_metadata();
        self.stream(cpu);
        let index = index_of(info);
        let Some(mut conn) = self.conn.take() else {
            let s = self.streams.get_mut(&cpu).expect("opened");
            s.report.missed_packets += 1;
            s.report.missed_bytes += bytes.len() as u64;
            return;
        };
        let s = self.streams.get_mut(&cpu).expect("opened");
        let kind = if trailer { SentKind::Trailer } else { SentKind::Packet };
        self.unacked.push_back(Sent { cpu, bytes: bytes.len() as u64, kind });
        match conn.send_packet(&mut s.stream, bytes, &index) {
            Ok(()) => {
                s.active = true;
                s.stream_class = index.stream_id;
                s.last_end = s.last_end.max(info.timestamp_end);
                s.last_seq = info.seq;
                s.last_discarded = info.events_discarded;
                self.max_end = self.max_end.max(info.timestamp_end);
                self.settle(conn.unacked());
                self.conn = Some(conn);
            }
            Err(e) => self.lost(conn, e),
        }
    }

    /// The relay failed on `conn`: what it acknowledged before counts as
    /// relayed, the rest as missed.
    fn lost(&mut self, mut conn: Relayd, e: RelaydError) {
        conn.salvage_acks();
        self.settle(conn.unacked());
        self.fail(e);
    }

    /// Counts as relayed the packets acknowledged since: all but the last
    /// `unacked` sent (the relay answers in order).
    fn settle(&mut self, unacked: usize) {
        while self.unacked.len() > unacked {
            let Some(p) = self.unacked.pop_front() else { break };
            if let Some(s) = self.streams.get_mut(&p.cpu).filter(|_| p.kind != SentKind::Empty) {
                s.report.packets += 1;
                s.report.bytes += p.bytes;
                s.report.trailer |= p.kind == SentKind::Trailer;
            }
        }
    }

    fn drained(&mut self, tick: u64) {
        if tick != self.tick.0 {
            self.tick = (tick, 0);
        }
        self.tick.1 += 1;
        if self.tick.1 < self.workers {
            return;
        }
        let ts = self.beacon_ts;
        self.beacon_ts = self.max_end;
        self.beacons(ts, false);
    }

    /// A beacon at `ts` for each stream that sent nothing since the last
    /// tick (`all`: for every stream). A stream that never had a packet gets
    /// an empty one instead: the relay ignores beacons of such a stream.
    fn beacons(&mut self, ts: u64, all: bool) {
        let Some(mut conn) = self.conn.take() else { return };
        let mut failure = None;
        for (&cpu, s) in &mut self.streams {
            let idle = !std::mem::replace(&mut s.active, false) || all;
            // A beacon never steps back behind what the stream sent.
            if !idle || ts == 0 || ts < s.last_end || s.stream.handle == u64::MAX {
                continue;
            }
            let sent = if s.stream.next_seq == 0 {
                let pkt = ctf::empty_packet(&self.uuid, cpu, s.last_seq, ts, s.last_discarded);
                self.unacked.push_back(Sent { cpu, bytes: pkt.len() as u64, kind: SentKind::Empty });
                packet_info(&pkt)
                    .map_err(|e| RelaydError::Protocol(format!("empty packet: {e}")))
                    .and_then(|i| conn.send_packet(&mut s.stream, &pkt, &index_of(&i)))
            } else {
                conn.send_beacon(&s.stream, s.stream_class, u64::from(cpu), ts)
            };
            match sent {
                Ok(()) => {
                    s.report.beacons += 1;
                    s.last_end = ts;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        match failure {
            None => {
                self.settle(conn.unacked());
                self.conn = Some(conn);
            }
            Some(e) => self.lost(conn, e),
        }
    }

    /// Appends the classes registered since the last call to the relay's
    /// metadata stream. A worker took them before it queued the packet
    /// being sent, so they go first (see the `metadata` module).
    fn send_new_metadata(&mut self) {
        let more = self.meta.text_from(self.meta_sent);
        if !more.is_empty() && self.with_conn(|c| c.send_metadata(&more)).is_some() {
            self.meta_sent += more.len();
        }
    }

    /// Runs `f` on the connection; on error the relay is marked failed.
    fn with_conn<T>(&mut self, f: impl FnOnce(&mut Relayd) -> Result<T, RelaydError>) -> Option<T> {
        let mut conn = self.conn.take()?;
        match f(&mut conn) {
            Ok(v) => {
                self.settle(conn.unacked());
                self.conn = Some(conn);
                Some(v)
            }
            Err(e) => {
                self.lost(conn, e);
                None
            }
        }
    }

    /// From now on packets are counted as missed; the error is reported in
    /// [`RelayReport::error`] (the library prints nothing).
    fn fail(&mut self, e: RelaydError) {
        self.report.error.get_or_insert(e.to_string());
        // Not acknowledged: the relay may not have them.
        for p in std::mem::take(&mut self.unacked) {
            if let Some(s) = self.streams.get_mut(&p.cpu).filter(|_| p.kind != SentKind::Empty) {
                s.report.missed_packets += 1;
                s.report.missed_bytes += p.bytes;
            }
        }
        self.conn = None;
        self.shared.failed.store(true, Ordering::Relaxed);
        let _ = self.shared.failed_fd.signal();
    }

    /// Closes every stream, then the session.
    fn close(&mut self) {
        // Closing a stream releases its (anonymous, pre-2.11) trace chunk on
        // the relay, after which a live viewer cannot read what it had not
        // read yet (lttng-relayd 2.13 logs "viewer session and viewer stream
        // chunk IDs differ" and answers "hang up" for the rest). So viewers
        // get a moment to catch up first, and every stream a beacon at the
        // session's last packet end (nothing more will come): a viewer waits
        // on any stream it knows nothing of past a time, so without them it
        // could not pass the stream that ended first, and would lose the
        // other streams' last packets at the close.
        self.send_new_metadata();
        let end = self.max_end;
        if self.conn.is_some() && end > 0 {
            let t = std::time::Instant::now();
            loop {
                // Again at each step: the relay ignores a beacon while the
                // data half of a packet is still in flight.
                self.beacons(end, true);
                let left = self.linger.saturating_sub(t.elapsed());
                if left.is_zero() || self.conn.is_none() {
                    break;
                }
                std::thread::sleep(left.min(self.live_timer.max(Duration::from_millis(100))));
            }
        }
        let streams: Vec<RelayStream> =
            self.streams.values().map(|s| s.stream.clone()).filter(|s| s.handle != u64::MAX).collect();
        for s in streams {
            if self.with_conn(|c| c.close_stream(s)).is_none() {
                return;
            }
        }
        if let Some(conn) = self.conn.take() {
            match conn.close() {
                Ok(()) => self.settle(0),
                Err(e) => self.fail(e),
            }
        }
    }
}

/// The relay's index entry of a packet, from its header and context.
pub fn index_of(info: &PacketInfo) -> PacketIndex {
    PacketIndex {
        packet_size_bits: info.packet_len as u64 * 8,
        content_size_bits: info.content_len as u64 * 8,
        timestamp_begin: info.timestamp_begin,
        timestamp_end: info.timestamp_end,
        events_discarded: info.events_discarded,
        stream_id: u64::from(info.stream_id),
        stream_instance_id: info.stream_instance_id,
        packet_seq_num: info.seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relay sender whose queue (one message) is full and never read,
    /// as behind a stalled relay.
    fn stalled(lossless: bool) -> (RelayTx, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(1);
        tx.send(Msg::Drained { tick: 0 }).unwrap();
        let shared = Arc::new(Shared {
            pool: Mutex::new(Vec::new()),
            pool_max: 0,
            failed: AtomicBool::new(false),
            failed_fd: EventFd::new().unwrap(),
            missed: Mutex::new(BTreeMap::new()),
        });
        (RelayTx { tx, shared, lossless }, rx)
    }

    #[test]
    fn with_a_local_trace_ending_a_ring_never_waits_for_a_stalled_relay() {
        let (tx, _rx) = stalled(false);
        let shared = tx.shared.clone();
        let ring = RingRelay { cpu: 3, tx, last: None, handed_next: 5, missed: (2, 8192), report: None };
        // Events lost after the last packet: a trailer to offer too.
        let counters = RingCounters { discarded: 7, ..RingCounters::default() };
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || done_tx.send(ring.finish(&[1; 16], counters).is_none()).unwrap());
        let ended = done.recv_timeout(Duration::from_secs(20));
        assert_eq!(ended, Ok(true), "RingRelay::finish waited for room in a full queue");
        // Nothing lost uncounted: the two missed packets and the trailer
        // that did not fit are left for the relay thread's report.
        let missed = shared.missed.lock().unwrap().get(&3).copied().unwrap();
        assert_eq!(missed.0, 3, "{missed:?}");
        assert!(missed.1 > 8192, "{missed:?}");
    }
}
