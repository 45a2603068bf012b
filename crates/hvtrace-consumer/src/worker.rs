//! Worker threads: each sleeps in its own epoll on the eventfds of the rings
//! it was given (ring *i* goes to worker *i* mod *threads*), and on a command
//! eventfd by which the main thread hands over new rings or asks for the
//! final drain. No timeout anywhere: an idle worker does not wake up.

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use hvtrace_core::ring::PacketRef;
use hvtrace_core::ring::Poll;
use hvtrace_core::RingReader;
use hvtrace_sys::{EventFd, MappedReader, Poller};

use crate::relay::RingRelay;
use crate::report::RingReport;
use crate::stream::StreamFile;
use crate::ConsumerError;

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
}

impl RingState {
    /// Writes every delivered packet, releasing each.
    fn consume(&mut self) {
        let reader = self.source.reader();
        while let Poll::Ready(p) = reader.next_packet() {
            let bytes = self.source.packet_bytes(&p);
            let bytes = &*bytes;
            match (&mut self.relay, &mut self.stream) {
                (Some(r), file) => r.take_packet(bytes, || reader.release(&p), file.as_mut()),
                (None, Some(file)) => file.take_packet(bytes, || reader.release(&p)),
                (None, None) => unreachable!("a ring has at least one sink"),
            }
        }
    }

    fn finish(mut self) -> RingReport {
        self.consume();
        let counters = self.source.reader().counters();
        let relayed = self.relay.take().and_then(|r| r.finish(&self.uuid, counters));
        match self.stream.take() {
            Some(s) => s.finish(&self.uuid, counters),
            None => relayed.expect("a ring has at least one sink"),
        }
    }
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
    join: Option<JoinHandle<Vec<RingReport>>>,
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
                        Vec::new()
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

    /// Final drain; returns the reports of the worker's rings.
    pub(crate) fn finish(mut self) -> Result<Vec<RingReport>, ConsumerError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<Vec<RingReport>, ConsumerError> {
        let Some(join) = self.join.take() else { return Ok(Vec::new()) };
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

fn run(mut poller: Poller, wake: EventFd, rx: Receiver<Cmd>) -> Vec<RingReport> {
    let mut rings: Vec<RingState> = Vec::new();
    let mut events = Vec::with_capacity(64);
    let mut finishing = false;
    while !finishing {
        if let Err(e) = poller.wait(&mut events, None) {
            eprintln!("hvtrace-consume: epoll_wait failed ({e}); this thread ends its streams now");
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
                                eprintln!(
                                    "hvtrace-consume: cannot watch the eventfd of CPU {}: {e}; its ring is only \
                                     drained at the end",
                                    ring.cpu
                                );
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
    rings.into_iter().map(RingState::finish).collect()
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
    }

    fn ring(dir: &std::path::Path, cpu: u32) -> (Fixture, RingState) {
        let geo = Geometry::new(4096, 4).unwrap();
        let heap: &'static HeapRing = Box::leak(Box::new(HeapRing::new(geo)));
        let ring = heap.producer(Mode::Discard, StreamId { uuid: [3; 16], cpu });
        let reader = heap.reader();
        let wake = EventFd::new().unwrap();
        let state = RingState {
            cpu,
            uuid: [3; 16],
            source: Box::new(reader),
            wake: wake.try_clone().unwrap(),
            stream: Some(StreamFile::create(&dir.join(format!("chan_{cpu}")), cpu, Some(4096)).unwrap()),
            relay: None,
        };
        (Fixture { ring, wake }, state)
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
        let mut reports: Vec<RingReport> = workers.into_iter().flat_map(|w| w.finish().unwrap()).collect();
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
}
