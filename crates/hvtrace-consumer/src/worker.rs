//! Worker threads: each sleeps in its own epoll on the eventfds of the rings
//! it was given (ring *i* goes to worker *i* mod *threads*), and on a command
//! eventfd by which the main thread hands over new rings or asks for the
//! final drain. No timeout anywhere: an idle worker does not wake up.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use std::sync::atomic::{fence, Ordering};

use hvtrace_core::decode::packet_info;
use hvtrace_core::ring::PacketRef;
use hvtrace_core::ring::Poll;
use hvtrace_core::{Mode, RingReader};
use hvtrace_reader::account::StreamAccount;
use hvtrace_sys::{EventFd, Poller};

use crate::metadata::MetadataLog;
use crate::relay::RingRelay;
use crate::report::RingReport;
use crate::stream::StreamFile;
use crate::{ConsumerError, MappedReader};

/// Something that lends a [`RingReader`]: a ring mapped from a host
/// ([`MappedReader`]), or a heap ring in tests.
pub(crate) trait RingSource: Send {
    fn reader(&self) -> &RingReader<'_>;
    /// A ready packet's bytes (until its release).
    fn packet_bytes(&self, p: &PacketRef) -> std::borrow::Cow<'_, [u8]>;
}

impl RingSource for MappedReader {
    fn reader(&self) -> &RingReader<'_> {
        MappedReader::reader(self)
    }
    fn packet_bytes(&self, p: &PacketRef) -> std::borrow::Cow<'_, [u8]> {
        MappedReader::packet_bytes(self, p).into()
    }
}

/// One ring as a worker drives it.
pub(crate) struct RingState {
    pub(crate) cpu: u32,
    pub(crate) uuid: [u8; 16],
    pub(crate) source: Box<dyn RingSource>,
    /// Signalled by the producer when a sub-buffer is delivered.
    pub(crate) wake: EventFd,
    /// The local stream file (none when the relay is the only sink).
    pub(crate) stream: Option<StreamFile>,
    /// The relay stream, when streaming to one.
    pub(crate) relay: Option<RingRelay>,
    /// The consumer's own position: the shared `consumed` word is writable
    /// by anyone who mapped the channel, so it is checked against this one
    /// and put back, never believed.
    pub(crate) expect: u64,
    /// Times the shared position was found moved by someone else.
    pub(crate) tampered: u64,
    /// The host's metadata log, caught up with before each packet is
    /// written (`None` in tests of the ring protocol alone).
    meta: Option<Arc<MetadataLog>>,
}

/// How often one drain puts a moved position back before it gives up until
/// the next wake-up (someone is rewriting it in a loop).
const MAX_RESETS: u32 = 64;

impl RingState {
    /// A ring whose consumer words were validated at `expect`, written to
    /// `stream`, `relay` or both (at least one).
    pub(crate) fn new(
        cpu: u32,
        uuid: [u8; 16],
        source: Box<dyn RingSource>,
        wake: EventFd,
        stream: Option<StreamFile>,
        relay: Option<RingRelay>,
        expect: u64,
    ) -> Self {
        debug_assert!(stream.is_some() || relay.is_some(), "a ring has at least one sink");
        RingState { cpu, uuid, source, wake, stream, relay, expect, tampered: 0, meta: None }
    }

    /// Has the ring's packets wait for the classes `meta` publishes.
    pub(crate) fn following(mut self, meta: Arc<MetadataLog>) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Packets `from..to` were passed over unread (see
    /// [`StreamFile::skipped`]): the local file's loss, or with the relay as
    /// the only sink, the relay stream's.
    /// (Fields, not `self`: the ring's reader borrows `source` meanwhile.)
    fn skipped(stream: &mut Option<StreamFile>, relay: &mut Option<RingRelay>, from: u64, to: u64, why: &str) {
        match (stream, relay) {
            (Some(file), _) => file.skipped(from, to, why),
            (None, Some(r)) => r.skipped(from, to, why),
            (None, None) => unreachable!("a ring has at least one sink"),
        }
    }

    /// Writes every delivered packet, releasing each.
    ///
    /// A packet is kept only if, after its bytes were written, the producer
    /// has not reserved anything in that sub-buffer's next lap (its write
    /// position is at most one ring past the packet) and the packet's header
    /// still carries its sequence number: the check a seqlock reader makes
    /// after reading. In discard mode the producer can reuse a sub-buffer
    /// only if someone else moved the consumed position past it; in
    /// overwrite mode it takes packets back as it laps.
    fn consume(&mut self) {
        let reader = self.source.reader();
        let geo = reader.geometry();
        let overwrite = reader.mode() == Mode::Overwrite;
        let mut resets = 0;
        loop {
            let consumed = reader.consumed();
            if consumed != self.expect {
                // In overwrite mode the reader itself moves the position past
                // laps the producer overwrote; put it back all the same (it
                // skips them again) but do not call that tampering.
                if !(overwrite && consumed > self.expect && consumed.is_multiple_of(geo.subbuf_size)) {
                    self.tampered += 1;
                }
                resets += 1;
                if resets > MAX_RESETS {
                    return;
                }
                reader.set_consumed(self.expect);
            }
            let Poll::Ready(p) = reader.next_packet() else { return };
            if p.pos < self.expect || !p.pos.is_multiple_of(geo.subbuf_size) {
                // Moved between the check and `next_packet`.
                continue;
            }
            if p.pos > self.expect && !overwrite {
                // Discard mode never skips: the producer reused these
                // sub-buffers after someone moved the position past them.
                let why = "reused by the producer before it was read: someone else moved the consumed position";
                Self::skipped(
                    &mut self.stream,
                    &mut self.relay,
                    geo.subbuf_seq(self.expect),
                    geo.subbuf_seq(p.pos),
                    why,
                );
                self.tampered += 1;
            } else if p.pos > self.expect {
                // Overwrite mode skips what the producer took back, which it
                // does only by reserving in the sub-buffer's next lap. One it
                // has not reached was skipped for a forged claim word (or a
                // position moved meanwhile): nobody else counts it.
                let write = reader.counters().produced_bytes;
                let from = self.expect.max(write.saturating_sub(geo.buf_size()).next_multiple_of(geo.subbuf_size));
                if from < p.pos {
                    let why = "skipped as overwritten although the producer had not taken it back: its claim word \
                               or the consumed position was forged by someone else";
                    Self::skipped(&mut self.stream, &mut self.relay, geo.subbuf_seq(from), geo.subbuf_seq(p.pos), why);
                    self.tampered += 1;
                }
            }
            // `next_packet` saw this packet through Acquire loads, after
            // every record in it, made after its class was published: so
            // the metadata log's length, loaded now, covers their classes,
            // and they reach the trace (and the relay's queue) first.
            if let Some(meta) = &self.meta {
                meta.catch_up();
            }
            let seq = geo.subbuf_seq(p.pos);
            let bytes = self.source.packet_bytes(&p);
            let bytes = &*bytes;
            let lapped = p.pos + geo.buf_size();
            let release = || {
                // Pairs with the producer's reservation (a CAS on its write
                // position, before it writes a byte of the sub-buffer): a
                // store the write above read is seen as a reservation here.
                fence(Ordering::Acquire);
                let reopened = reader.counters().produced_bytes > lapped;
                let header_seq = packet_info(bytes).map(|i| i.seq).ok();
                let intact = !reopened && header_seq == Some(seq);
                reader.release(&p) && intact
            };
            // The check covers both sinks: the relay's copy is taken before
            // the file is written, both before `release`.
            match (&mut self.relay, &mut self.stream) {
                (Some(r), file) => r.take_packet(seq, bytes, overwrite, release, file.as_mut()),
                (None, Some(file)) => file.take_packet(seq, bytes, overwrite, release),
                (None, None) => unreachable!("a ring has at least one sink"),
            }
            self.expect = p.pos + geo.subbuf_size;
        }
    }

    fn finish(mut self) -> Finished {
        self.consume();
        let counters = self.source.reader().counters();
        let relayed = self.relay.take().and_then(|r| r.finish(&self.uuid, counters));
        let (mut report, local) = match self.stream.take() {
            Some(s) => {
                let name = s.name.clone();
                let file = s.file.try_clone().ok();
                let (report, account) = s.finish(&self.uuid, counters);
                (report, Some(LocalEnd { account, name, file }))
            }
            None => (relayed.expect("a ring has at least one sink"), None),
        };
        report.tampered = self.tampered;
        Finished { report, local }
    }
}

/// An ended stream: its report, and what is left of its local file.
pub(crate) struct Finished {
    pub(crate) report: RingReport,
    /// `None` when the relay was the only sink.
    pub(crate) local: Option<LocalEnd>,
}

/// What the account says of an ended stream file, and the file (to check
/// at the end that it is still in the trace directory).
pub(crate) struct LocalEnd {
    pub(crate) account: StreamAccount,
    pub(crate) name: String,
    pub(crate) file: Option<std::fs::File>,
}

/// What a worker hands back: its streams, and problems that were not one
/// stream's.
pub(crate) struct WorkerEnd {
    pub(crate) rings: Vec<Finished>,
    pub(crate) notes: Vec<String>,
}

pub(crate) enum Cmd {
    Add(Box<RingState>),
    /// Drain every ring now, then call this (the live timer's tick).
    Drain(Box<dyn FnOnce() + Send>),
    /// Drain every ring a last time, end the streams, exit.
    Finish,
}

const CMD_TOKEN: u64 = u64::MAX;

/// The main thread's handle on a worker.
pub(crate) struct Worker {
    tx: Sender<Cmd>,
    wake: EventFd,
    join: Option<JoinHandle<WorkerEnd>>,
}

impl Worker {
    pub(crate) fn spawn(index: usize) -> Result<Worker, ConsumerError> {
        let wake = EventFd::new().map_err(ConsumerError::io("creating a worker eventfd"))?;
        let theirs = wake.try_clone().map_err(ConsumerError::io("duplicating a worker eventfd"))?;
        let (tx, rx) = mpsc::channel();
        // The epoll is made in the thread (it is not `Send`), which says
        // whether that worked before the worker is used.
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let join = std::thread::Builder::new()
            .name(format!("hvtrace-consume-{index}"))
            .spawn(move || {
                let poller = Poller::new().and_then(|p| p.add(&theirs, CMD_TOKEN).map(|()| p));
                match poller {
                    Ok(p) => {
                        let _ = ready_tx.send(Ok(()));
                        run(p, theirs, rx)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        WorkerEnd { rings: Vec::new(), notes: Vec::new() }
                    }
                }
            })
            .map_err(ConsumerError::io("starting a consumer thread"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ConsumerError::io("creating a worker epoll")(e)),
            Err(_) => return Err(ConsumerError::io("starting a consumer thread")(std::io::Error::other("it died"))),
        }
        Ok(Worker { tx, wake, join: Some(join) })
    }

    /// Hands a ring over; the worker drains it right away.
    pub(crate) fn add(&self, ring: RingState) {
        // A worker only exits after `Finish`, so the channel is open.
        let _ = self.tx.send(Cmd::Add(Box::new(ring)));
        let _ = self.wake.signal();
    }

    /// Has the worker drain its rings now, then call `then`.
    pub(crate) fn drain(&self, then: Box<dyn FnOnce() + Send>) {
        let _ = self.tx.send(Cmd::Drain(then));
        let _ = self.wake.signal();
    }

    /// Final drain; returns the worker's ended streams.
    pub(crate) fn finish(mut self) -> Result<WorkerEnd, ConsumerError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<WorkerEnd, ConsumerError> {
        let Some(join) = self.join.take() else { return Ok(WorkerEnd { rings: Vec::new(), notes: Vec::new() }) };
        let _ = self.tx.send(Cmd::Finish);
        let _ = self.wake.signal();
        join.join().map_err(|_| ConsumerError::Io {
            what: "a consumer thread panicked".into(),
            source: std::io::Error::other("thread panicked"),
        })
    }
}

impl Drop for Worker {
    /// Error paths: the streams are still ended and synced.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn run(mut poller: Poller, wake: EventFd, rx: Receiver<Cmd>) -> WorkerEnd {
    let mut rings: Vec<RingState> = Vec::new();
    let mut notes = Vec::new();
    let mut events = Vec::with_capacity(64);
    let mut finishing = false;
    while !finishing {
        if let Err(e) = poller.wait(&mut events, None) {
            notes.push(format!("epoll_wait failed ({e}); a worker ended its streams early"));
            break;
        }
        for ev in &events {
            if ev.token == CMD_TOKEN {
                let _ = wake.drain();
                while let Ok(cmd) = rx.try_recv() {
                    match cmd {
                        Cmd::Add(ring) => {
                            let mut ring = *ring;
                            if let Err(e) = poller.add(&ring.wake, rings.len() as u64) {
                                notes.push(format!(
                                    "cannot watch the eventfd of CPU {}: {e}; its ring was only drained at the end",
                                    ring.cpu
                                ));
                            }
                            ring.consume();
                            rings.push(ring);
                        }
                        Cmd::Drain(then) => {
                            rings.iter_mut().for_each(RingState::consume);
                            then();
                        }
                        Cmd::Finish => finishing = true,
                    }
                }
            } else if let Some(ring) = rings.get_mut(ev.token as usize) {
                // Drain first, then consume: a delivery during consumption
                // leaves the eventfd set and wakes the next wait.
                let _ = ring.wake.drain();
                ring.consume();
            }
        }
    }
    WorkerEnd { rings: rings.into_iter().map(RingState::finish).collect(), notes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvtrace_core::ring::heap::HeapRing;
    use hvtrace_core::{Geometry, Mode, Ring, StreamId};

    impl RingSource for RingReader<'static> {
        fn reader(&self) -> &RingReader<'_> {
            self
        }
        fn packet_bytes(&self, p: &PacketRef) -> std::borrow::Cow<'_, [u8]> {
            let mut copy = vec![0; self.geometry().subbuf_size as usize];
            self.copy_packet(p, &mut copy);
            copy.into()
        }
    }

    hvtrace_core::events! {
        /// Test events.
        pub mod ev ("test") {
            /// One numbered event.
            fn tick(cpu: u32, n: u64);
        }
    }

    struct Fixture {
        ring: Ring<'static>,
        wake: EventFd,
        heap: &'static HeapRing,
    }

    fn ring(dir: &std::path::Path, cpu: u32) -> (Fixture, RingState) {
        let geo = Geometry::new(4096, 4).unwrap();
        let heap: &'static HeapRing = Box::leak(Box::new(HeapRing::new(geo)));
        let ring = heap.producer(Mode::Discard, StreamId { uuid: [3; 16], cpu });
        let reader = heap.reader();
        let wake = EventFd::new().unwrap();
        let path = dir.join(format!("chan_{cpu}"));
        let file = std::fs::File::options().write(true).create_new(true).open(&path).unwrap();
        let stream = StreamFile::new(&path, format!("chan_{cpu}"), file, cpu, Some(4096));
        let state = RingState::new(cpu, [3; 16], Box::new(reader), wake.try_clone().unwrap(), Some(stream), None, 0);
        (Fixture { ring, wake, heap }, state)
    }

    /// Records `n` events, signalling on each delivery like a host; returns
    /// how many were recorded.
    fn produce(f: &Fixture, cpu: u32, n: u64, clock: &std::sync::atomic::AtomicU64) -> u64 {
        let mut ok = 0;
        let now = || clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            let len = 12;
            let r = f.ring.record(&now, ev::Id::tick as u32, len, |e| {
                e.put(&cpu.to_le_bytes());
                e.put(&i.to_le_bytes());
            });
            if let Ok(delivered) = r {
                ok += 1;
                if delivered {
                    f.wake.signal().unwrap();
                }
            }
        }
        ok
    }

    #[test]
    fn two_workers_drive_five_rings_and_write_every_record() {
        use hvtrace_core::EventSet;
        let dir = tempfile::tempdir().unwrap();
        let workers = [Worker::spawn(0).unwrap(), Worker::spawn(1).unwrap()];
        let mut fixtures = Vec::new();
        for cpu in 0..5 {
            let (f, s) = ring(dir.path(), cpu);
            workers[cpu as usize % 2].add(s);
            fixtures.push(f);
        }
        let clock = std::sync::atomic::AtomicU64::new(1);
        let mut recorded = [0u64; 5];
        for round in 0..20 {
            for (cpu, f) in fixtures.iter().enumerate() {
                recorded[cpu] += produce(f, cpu as u32, 100 + round, &clock);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        for f in &fixtures {
            f.ring.close();
            if f.ring.flush(&|| clock.load(std::sync::atomic::Ordering::Relaxed)) {
                f.wake.signal().unwrap();
            }
        }
        let mut reports: Vec<RingReport> =
            workers.into_iter().flat_map(|w| w.finish().unwrap().rings).map(|f| f.report).collect();
        reports.sort_by_key(|r| r.cpu);
        assert_eq!(reports.len(), 5);
        for (cpu, r) in reports.iter().enumerate() {
            let data = std::fs::read(&r.file).unwrap();
            let mut at = 0;
            let mut n = 0u64;
            while at < data.len() {
                let (info, recs) = hvtrace_core::decode::records(&data[at..], ev::Events::EVENTS).unwrap();
                for rec in recs {
                    let rec = rec.unwrap();
                    assert_eq!(&rec.payload[..4], &(cpu as u32).to_le_bytes());
                    n += 1;
                }
                at += info.packet_len;
            }
            let c = fixtures[cpu].ring.counters();
            assert_eq!(n, recorded[cpu], "cpu {cpu}: every recorded event is in the file");
            assert_eq!(n + c.discarded, (0..20).map(|r| 100 + r).sum::<u64>());
            assert_eq!(r.counters.discarded, c.discarded);
            if r.trailer {
                let last = hvtrace_core::decode::packet_info(&data[data.len() - 84..]).unwrap();
                assert_eq!((last.content_len, last.events_discarded), (84, c.discarded));
            }
        }
    }

    #[test]
    fn a_packet_reused_under_the_consumer_is_torn_and_its_position_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let (f, mut state) = ring(dir.path(), 0);
        let clock = std::sync::atomic::AtomicU64::new(1);
        // Fill the ring: 4 packets delivered, none read; the rest refused.
        produce(&f, 0, 2000, &clock);
        assert_eq!(f.ring.counters().delivered_subbufs, 4);
        // Someone else claims all four were read: the producer reopens the
        // first sub-buffer for its next lap and writes into it.
        f.heap.reader().set_consumed(4 * 4096);
        assert!(produce(&f, 0, 10, &clock) > 0);
        state.consume();
        // Packet 0 changed under the consumer: torn (in discard mode a loss
        // of the consumer); 1-3 are intact and written; the position is the
        // consumer's own again.
        let r = &state.stream.as_ref().unwrap().report;
        assert_eq!((r.packets, r.torn, r.lost_packets), (3, 1, 0), "{r:?}");
        assert!(state.tampered > 0);
        assert_eq!(f.heap.reader().consumed(), 4 * 4096);
        let data = std::fs::read(&r.file).unwrap();
        let seqs: Vec<u64> =
            (0..3).map(|k| hvtrace_core::decode::packet_info(&data[k * 4096..]).unwrap().seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let (_, account) = state.stream.take().unwrap().finish(&[3; 16], f.ring.counters());
        assert_eq!((account.first, account.next), (0, 4));
        assert_eq!((account.lost[0].first, account.lost[0].last), (0, 0), "named as lost in the account");
    }

    #[test]
    fn an_overwrite_mode_packet_skipped_for_a_forged_claim_is_counted_lost() {
        use hvtrace_core::layout::claim;
        let dir = tempfile::tempdir().unwrap();
        let geo = Geometry::new(4096, 4).unwrap();
        let heap: &'static HeapRing = Box::leak(Box::new(HeapRing::new(geo)));
        let ring = heap.producer(Mode::Overwrite, StreamId { uuid: [3; 16], cpu: 0 });
        let wake = EventFd::new().unwrap();
        let path = dir.path().join("chan_0");
        let file = std::fs::File::options().write(true).create_new(true).open(&path).unwrap();
        let stream = StreamFile::new(&path, "chan_0".into(), file, 0, None);
        let mut state =
            RingState::new(0, [3; 16], Box::new(heap.reader()), wake.try_clone().unwrap(), Some(stream), None, 0);
        let f = Fixture { ring, wake, heap };
        let clock = std::sync::atomic::AtomicU64::new(1);
        // Three packets delivered, far from a lap: nothing is overwritten.
        while f.ring.counters().delivered_subbufs < 3 {
            produce(&f, 0, 10, &clock);
        }
        // Someone writes packet 0's claim word as the producer's.
        heap.claims[0].store(claim::producer(0), std::sync::atomic::Ordering::Release);
        state.consume();
        let r = &state.stream.as_ref().unwrap().report;
        assert_eq!((r.packets, r.lost_packets), (2, 1), "{r:?}");
        assert!(state.tampered > 0);
        let (_, account) = state.stream.take().unwrap().finish(&[3; 16], f.ring.counters());
        assert_eq!((account.lost[0].first, account.lost[0].last), (0, 0));
        assert_eq!(f.ring.counters().overwritten, 0, "the producer counted nothing");
    }
}
