//! [`hvtrace_host::ExclusiveWriter`]: one writer per CPU ring, recording
//! without locked instructions, taken back by stop and flush (membarrier).
//! Every record must reach the consumer whole and in order while flushes,
//! stops and starts interleave with the writer; other writers are refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hvtrace_consumer::MappedReader;
use hvtrace_core::decode::Value;
use hvtrace_core::{EventSet, RecordError, Sink};
use hvtrace_host::ExclusiveWriter;
use hvtrace_proto::{ChannelConfig, Mode, Request};

mod common;

hvtrace_core::events! {
    /// Test events.
    pub mod ev ("test") {
        /// A numbered event with a note.
        fn tick(n: u64, note: &str);
    }
}

/// Appends the numbers of every delivered record of `reader` to `out`,
/// checking each record's note.
fn drain(reader: &MappedReader, out: &mut Vec<u64>) {
    common::for_each_record(reader, ev::Events::EVENTS, |v| {
        let [Value::U(n), Value::Str(s)] = v[..] else { panic!("bad fields {v:?}") };
        assert_eq!(s, format!("note {}", n % 97).as_bytes(), "record {n} garbled");
        out.push(n);
    });
}

#[test]
fn claims_are_exclusive_and_released_on_drop() {
    let (host, _sock, _dir) = common::serve("exclclaim", ev::Events::EVENTS, 2);
    let w = host.exclusive_writer(1).unwrap();
    assert_eq!(w.cpu(), 1);
    let again = host.exclusive_writer(1).err().expect("a second claim of CPU 1 is refused");
    assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists, "{again}");
    let far = host.exclusive_writer(2).err().expect("CPU 2 is beyond max_cpus");
    assert_eq!(far.kind(), std::io::ErrorKind::InvalidInput, "{far}");
    drop(w);
    host.exclusive_writer(1).expect("released on drop");
}

#[test]
fn every_record_survives_flushes_stops_and_starts_and_others_are_refused() {
    let (host, sock, _dir) = common::serve("excl", ev::Events::EVENTS, 2);
    // Claimed before the channel exists: its ring is reserved for the owner.
    let owner = host.exclusive_writer(0).unwrap();
    let (mut c, readers) = common::started_session(&sock);

    // A shared writer landing on the owned ring is refused, and counted.
    let intruder = host.writer_for_cpu(0);
    assert_eq!(ev::tick(&intruder, 0, "note 0"), Err(RecordError::Busy));

    // Odd: round (phase - 1) / 2 is recording; even: it is over.
    let phase = Arc::new(AtomicU64::new(0));
    let go = Arc::new(Barrier::new(2));
    let writer = {
        let (phase, go) = (phase.clone(), go.clone());
        std::thread::spawn(move || {
            // Closed (stopped) records are not losses; count what went in.
            let (mut n, mut accepted, mut lost) = (0u64, 0u64, 0u64);
            for round in 0..2 {
                go.wait();
                while phase.load(Ordering::Acquire) == 2 * round + 1 {
                    match ev::tick(&owner, n, &format!("note {}", n % 97)) {
                        Ok(()) => accepted += 1,
                        Err(RecordError::Closed) => {}
                        Err(_) => lost += 1,
                    }
                    n += 1;
                }
            }
            (accepted, lost, owner)
        })
    };
    let mut seen = Vec::new();
    for round in 0..2 {
        phase.store(2 * round + 1, Ordering::Release);
        go.wait();
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            c.simple(&Request::Flush).unwrap();
            drain(&readers[0], &mut seen);
        }
        phase.store(2 * round + 2, Ordering::Release);
        c.simple(&Request::Stop).expect("stop takes the ring back from its owner");
        drain(&readers[0], &mut seen);
        // Stopped: nothing more is delivered; start again for round 2.
        c.simple(&Request::Start).unwrap();
    }
    let (accepted, lost, owner) = writer.join().unwrap();
    c.simple(&Request::Stop).unwrap();
    drain(&readers[0], &mut seen);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "records out of order or repeated");
    let ring = c.status().unwrap().rings.into_iter().find(|r| r.cpu == 0).unwrap();
    assert_eq!(seen.len() as u64, accepted, "every accepted record reached the consumer");
    assert_eq!(ring.events_discarded, lost + 1, "losses (and the intruder) counted exactly");
    assert_eq!(ring.discarded_busy, 1, "only the intruder was refused as busy");
    assert!(accepted > 10_000, "the owner recorded only {accepted} events");

    // Released: the next channel's ring is shared again.
    drop(owner);
    c.simple(&Request::Destroy).unwrap();
    c.simple(&Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard })).unwrap();
    c.simple(&Request::Start).unwrap();
    assert_eq!(ev::tick(&intruder, 0, "note 0"), Ok(()));
}

/// Records 0..5 through `owner`, then record 5 as a fast-path record (mid
/// packet) that stalls between reserve and commit: halfway through its
/// payload it meets the test thread at `inside`, then runs `hold`.
fn records_with_a_stall(owner: &ExclusiveWriter, inside: &Barrier, hold: impl FnOnce()) {
    for n in 0..5 {
        ev::tick(owner, n, &format!("note {}", n % 97)).unwrap();
    }
    let note = "note 5";
    let len = 8 + note.len() + 1;
    let mut p = vec![0u8; len];
    p[..8].copy_from_slice(&5u64.to_le_bytes());
    p[8..8 + note.len()].copy_from_slice(note.as_bytes());
    owner
        .record(ev::Id::tick as u32, len, |e| {
            e.put(&p[..4]);
            inside.wait();
            hold();
            e.put(&p[4..]);
        })
        .unwrap();
}

#[test]
fn stop_waits_for_an_owner_inside_a_record() {
    let (host, sock, _dir) = common::serve("exclinside", ev::Events::EVENTS, 2);
    let owner = host.exclusive_writer(1).unwrap();
    let (mut c, readers) = common::started_session(&sock);
    let inside = Arc::new(Barrier::new(2));
    let writer = {
        let inside = inside.clone();
        std::thread::spawn(move || {
            records_with_a_stall(&owner, &inside, || std::thread::sleep(Duration::from_millis(300)));
            (Instant::now(), owner)
        })
    };
    inside.wait();
    c.simple(&Request::Stop).unwrap();
    let stopped = Instant::now();
    let (done, owner) = writer.join().unwrap();
    assert!(stopped > done, "stop answered before the owner committed its record");
    assert_eq!(ev::tick(&owner, 6, "note 6"), Err(RecordError::Closed), "after stop the owner is refused");
    let mut seen = Vec::new();
    drain(&readers[1], &mut seen);
    assert_eq!(seen, vec![0, 1, 2, 3, 4, 5], "the stalled record is delivered whole");
}

/// How long the tests below let `stop` wait for a stalled owner.
const GIVE_UP: Duration = Duration::from_millis(100);

/// What a stalled owner's thread returns: how its record after the stall
/// went, and the writer.
type Stalled = std::thread::JoinHandle<(Result<(), RecordError>, ExclusiveWriter)>;

/// An owner of CPU 1's ring records 0..5, stalling inside record 5 until
/// `resume` is sent, then tries record 6. Returns once it is inside record 5.
fn stall_owner(owner: ExclusiveWriter) -> (std::sync::mpsc::Sender<()>, Stalled) {
    let inside = Arc::new(Barrier::new(2));
    let (resume, resumed) = std::sync::mpsc::channel::<()>();
    let writer = {
        let inside = inside.clone();
        std::thread::spawn(move || {
            records_with_a_stall(&owner, &inside, || resumed.recv().unwrap());
            (ev::tick(&owner, 6, "note 6"), owner)
        })
    };
    inside.wait();
    (resume, writer)
}

/// Issue 11, defect 2: `stop` gives up on an owner stalled inside a
/// fast-path record, then the consumer's Flush (sent on exit) comes while
/// the owner is still inside. The flush must leave that ring alone (it used
/// to flush it anyway: the owner's plain commit store then completed the
/// lap on a path that never delivers, packet 0 was lost and, after a
/// restart, every open of its sub-buffer refused as `Busy`). Once the owner
/// has left, its next record is refused (the channel is stopped), the next
/// flush delivers its records, and a restart loses nothing.
#[test]
fn a_flush_after_a_stop_that_gave_up_on_an_owner_waits_for_it() {
    let (host, sock, _dir) = common::serve_with("exclheld", ev::Events::EVENTS, 2, |cfg| cfg.quiesce_timeout = GIVE_UP);
    let owner = host.exclusive_writer(1).unwrap();
    let (mut c, readers) = common::started_session(&sock);
    let (resume, writer) = stall_owner(owner);
    let err = c.simple(&Request::Stop).expect_err("stop gives up on the stalled owner");
    assert!(err.to_string().contains("CPU(s) [1]"), "{err}");
    c.simple(&Request::Flush).unwrap();
    let mut seen = Vec::new();
    drain(&readers[1], &mut seen);
    assert!(seen.is_empty(), "delivered a packet whose record is still being written: {seen:?}");

    resume.send(()).unwrap();
    let (after_stop, owner) = writer.join().unwrap();
    c.simple(&Request::Flush).unwrap();
    drain(&readers[1], &mut seen);
    assert_eq!(seen, [0, 1, 2, 3, 4, 5], "the owner's records, delivered once it left");
    assert_eq!(after_stop, Err(RecordError::Closed), "the owner recorded into a stopped channel");

    // Restart and go round the 4-sub-buffer ring several times, the
    // consumer keeping up: every record accepted and delivered.
    c.simple(&Request::Start).unwrap();
    let mut refused = Vec::new();
    for n in 100..2100u64 {
        if let Err(e) = ev::tick(&owner, n, &format!("note {}", n % 97)) {
            refused.push((n, e));
        }
        if n % 50 == 0 {
            drain(&readers[1], &mut seen);
        }
    }
    c.simple(&Request::Stop).expect("nobody is stalled now");
    drain(&readers[1], &mut seen);
    assert!(refused.is_empty(), "{} records refused after the restart, first {:?}", refused.len(), refused.first());
    let want: Vec<u64> = (0..6).chain(100..2100).collect();
    assert_eq!(seen, want, "every accepted record delivered once, in order");
    let ring = c.status().unwrap().rings.into_iter().find(|r| r.cpu == 1).unwrap();
    assert_eq!(ring.events_discarded, 0, "{ring:?}");
}

/// Issue 11, defect 2, the other way out: the stalled owner leaves its
/// record and its writer is dropped while the channel is stopped. The drop
/// finishes what the stop could not (close, flush, wake), the ring goes
/// back to the shared protocol, and shared writers use it after a restart.
#[test]
fn dropping_an_owner_the_stop_gave_up_on_delivers_its_records() {
    let (host, sock, _dir) = common::serve_with("excldrop", ev::Events::EVENTS, 2, |cfg| cfg.quiesce_timeout = GIVE_UP);
    let owner = host.exclusive_writer(1).unwrap();
    let (mut c, readers) = common::started_session(&sock);
    let (resume, writer) = stall_owner(owner);
    c.simple(&Request::Stop).expect_err("stop gives up on the stalled owner");
    resume.send(()).unwrap();
    let (after_stop, owner) = writer.join().unwrap();
    assert_eq!(after_stop, Err(RecordError::Closed), "the owner recorded into a stopped channel");
    let mut seen = Vec::new();
    drain(&readers[1], &mut seen);
    assert!(seen.is_empty(), "delivered before anything flushed the ring: {seen:?}");
    drop(owner);
    drain(&readers[1], &mut seen);
    assert_eq!(seen, [0, 1, 2, 3, 4, 5], "the drop flushed the owner's records");

    let shared = host.writer_for_cpu(1);
    assert_eq!(ev::tick(&shared, 7, "note 7"), Err(RecordError::Closed), "stopped: refused, not lost");
    c.simple(&Request::Start).unwrap();
    for n in 8..10 {
        ev::tick(&shared, n, &format!("note {n}")).unwrap();
    }
    c.simple(&Request::Stop).unwrap();
    drain(&readers[1], &mut seen);
    assert_eq!(seen, [0, 1, 2, 3, 4, 5, 8, 9]);
    let ring = c.status().unwrap().rings.into_iter().find(|r| r.cpu == 1).unwrap();
    assert_eq!(ring.events_discarded, 0, "{ring:?}");
}

/// Issue 11, defect 5: whether a ring is owned follows the claims when the
/// ring is created, not when the channel was. CPU 2 is claimed while
/// offline, the channel is created, the claim dropped, CPU 2 brought
/// online: its ring is shared (it used to be owned by nobody, refusing every
/// writer as `Busy` for the life of the channel). And a CPU claimed after
/// the channel's creation, brought online, gets a ring its owner owns.
#[test]
fn a_ring_of_a_cpu_coming_online_is_owned_only_if_claimed_then() {
    let (host, sock, _dir) = common::serve("exclhotplug", ev::Events::EVENTS, 4);
    let gone = host.exclusive_writer(2).unwrap();
    let (mut c, _) = common::started_session(&sock);
    drop(gone);
    let late = host.exclusive_writer(3).unwrap();
    host.add_cpu(2).unwrap();
    host.add_cpu(3).unwrap();
    // A second consumer connection maps the rings as they are now (the
    // first lets go first: one consumer at a time).
    c.simple(&Request::Unmap).unwrap();
    let mut c2 = hvtrace_ctl::Client::connect(&sock, Some(Duration::from_secs(20))).unwrap();
    let readers = common::map_rings(&mut c2, hvtrace_core::Geometry::new(4096, 4).unwrap());
    let reader = |cpu| readers.iter().find(|r| r.reader().cpu() == cpu).expect("a ring per online CPU");

    let on2 = host.writer_for_cpu(2);
    let refused: Vec<_> = (0..100).filter_map(|n| ev::tick(&on2, n, &format!("note {}", n % 97)).err()).collect();
    assert!(refused.is_empty(), "a writer on the released CPU was refused {} times: {:?}", refused.len(), refused[0]);
    let on3 = host.writer_for_cpu(3);
    assert_eq!(ev::tick(&on3, 0, "note 0"), Err(RecordError::Busy), "CPU 3's ring belongs to its owner");
    for n in 0..100 {
        ev::tick(&late, n, &format!("note {}", n % 97)).unwrap();
    }
    c.simple(&Request::Stop).unwrap();
    for cpu in [2, 3] {
        let mut seen = Vec::new();
        drain(reader(cpu), &mut seen);
        assert_eq!(seen, (0..100).collect::<Vec<_>>(), "CPU {cpu}");
    }
    let status = c.status().unwrap().rings;
    let busy = |cpu| status.iter().find(|r| r.cpu == cpu).unwrap().discarded_busy;
    assert_eq!((busy(2), busy(3)), (0, 1), "only the writer landing on CPU 3's owned ring was refused");
}

/// Issue 11 (a smaller defect): a writer landing on an owned ring is a loss
/// (`Busy`, counted) only while the channel records. Stopped, the ring
/// refuses it as `Closed`, like every writer, and counts nothing, also
/// while a stop holds the ring for an owner stalled inside a record.
#[test]
fn a_writer_on_a_stopped_owned_ring_is_refused_not_lost() {
    let (host, sock, _dir) =
        common::serve_with("exclintruder", ev::Events::EVENTS, 2, |cfg| cfg.quiesce_timeout = GIVE_UP);
    let owner = host.exclusive_writer(1).unwrap();
    let (mut c, _readers) = common::started_session(&sock);
    let intruder = host.writer_for_cpu(1);
    assert_eq!(ev::tick(&intruder, 0, "note 0"), Err(RecordError::Busy), "recording: a loss");
    let (resume, writer) = stall_owner(owner);
    c.simple(&Request::Stop).expect_err("stop gives up on the stalled owner");
    assert_eq!(ev::tick(&intruder, 1, "note 1"), Err(RecordError::Closed), "held by the stop");
    resume.send(()).unwrap();
    let (_, owner) = writer.join().unwrap();
    c.simple(&Request::Flush).unwrap();
    assert_eq!(ev::tick(&intruder, 2, "note 2"), Err(RecordError::Closed), "stopped");
    let ring = c.status().unwrap().rings.into_iter().find(|r| r.cpu == 1).unwrap();
    assert_eq!((ring.discarded_busy, ring.events_discarded), (1, 1), "only the refusal while recording is a loss");
    drop(owner);
}

#[test]
fn count_lost_counts_in_the_writers_ring_only_while_recording() {
    let (host, sock, _dir) = common::serve("countlost", ev::Events::EVENTS, 2);
    let owner = host.exclusive_writer(1).unwrap();
    let (w0, w1) = (host.writer_for_cpu(0), host.writer_for_cpu(1));
    assert_eq!(w0.count_lost(), Err(RecordError::Closed), "no channel: not a loss");
    let (mut c, _readers) = common::started_session(&sock);
    assert_eq!(w0.count_lost(), Ok(()));
    assert_eq!(w0.count_lost(), Ok(()));
    assert_eq!(w1.count_lost(), Ok(()), "on the owned ring, as any record of this writer there");
    let ring = |cpu: u32| host.status().rings.into_iter().find(|r| r.cpu == cpu).unwrap();
    let (r0, r1) = (ring(0), ring(1));
    assert_eq!((r0.discarded_too_big, r0.events_discarded, r0.produced_bytes), (2, 2, 0), "{r0:?}");
    assert_eq!((r1.discarded_busy, r1.events_discarded), (1, 1), "{r1:?}");
    c.simple(&Request::Stop).unwrap();
    assert_eq!(w0.count_lost(), Err(RecordError::Closed), "stopped: not a loss");
    assert_eq!(ring(0).events_discarded, 2);
    drop(owner);
}
