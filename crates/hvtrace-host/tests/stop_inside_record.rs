//! `stop` while writers are inside records: writer threads block in the
//! `fill` closure of `Sink::record` (between reserve and commit). `stop`
//! must answer only after they committed (the quiescent state), and what
//! reaches the consumer is whole: the stopped records decode intact, and a
//! `flush` while a writer is inside does not deliver its half-written packet.

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use hvtrace_consumer::MappedReader;
use hvtrace_core::decode::Value;
use hvtrace_core::field::Field;
use hvtrace_core::{Encoder, EventSet, RecordError, Sink};
use hvtrace_proto::{ChannelState, Request};

mod common;

hvtrace_core::events! {
    /// Test events.
    pub mod ev ("test") {
        /// A numbered event with a note.
        fn tick(n: u64, note: &str);
    }
}

/// The slow record's payload, encoded as `ev::tick` would.
fn payload(n: u64, note: &str) -> Vec<u8> {
    let mut buf = vec![0u8; n.encoded_len() + note.encoded_len()];
    let mut e = Encoder::new(&mut buf);
    n.encode(&mut e);
    note.encode(&mut e);
    buf
}

/// Records `n` with `note`, writing the first half of the payload, then
/// waiting at `inside` and sleeping `hold` before writing the rest. Returns
/// when the second half was written (just before the commit).
fn slow_record(w: &impl Sink, n: u64, note: &str, inside: &Barrier, hold: Duration) -> Instant {
    let p = payload(n, note);
    let mut done = None;
    w.record(ev::Id::tick as u32, p.len(), |e| {
        let (a, b) = p.split_at(p.len() / 2);
        e.put(a);
        inside.wait();
        std::thread::sleep(hold);
        e.put(b);
        done = Some(Instant::now());
    })
    .expect("the slow record was reserved before stop");
    done.unwrap()
}

/// Every record of a ring: `(n, note)`.
fn drain(reader: &MappedReader) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    common::for_each_record(reader, ev::Events::EVENTS, |v| {
        let [Value::U(n), Value::Str(s)] = v[..] else { panic!("bad fields {v:?}") };
        out.push((n, String::from_utf8_lossy(s).into_owned()));
    });
    out
}

#[test]
fn stop_waits_for_writers_inside_records_and_delivers_them_whole() {
    let (host, sock, _dir) = common::serve("stopinside", ev::Events::EVENTS, 2);
    let (mut c, readers) = common::started_session(&sock);

    // Two writers (CPU 0 and CPU 1) block inside a record; each wrote some
    // ordinary records first, so the slow one is not alone in its packet.
    let inside = Arc::new(Barrier::new(3));
    let holds = [Duration::from_millis(300), Duration::from_millis(200)];
    let after_commit = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..2u32)
        .map(|cpu| {
            let (host, inside, after_commit) = (host.clone(), inside.clone(), after_commit.clone());
            let hold = holds[cpu as usize];
            std::thread::spawn(move || {
                let w = host.writer_for_cpu(cpu);
                for n in 0..10 {
                    ev::tick(&w, n, "before").unwrap();
                }
                let done =
                    slow_record(&w, 1000 + u64::from(cpu), "the slow record, written in two halves", &inside, hold);
                // After the commit the ring is closed: nothing more goes in.
                let late = ev::tick(&w, 2000, "after stop");
                after_commit.lock().unwrap().push(late);
                done
            })
        })
        .collect();

    inside.wait();
    let t0 = Instant::now();
    // A flush while CPU 0's writer is inside: its packet is closed but must
    // not be delivered before the record is committed.
    c.simple(&Request::Flush).unwrap();
    let early = drain(&readers[0]);
    assert!(
        early.iter().all(|(n, _)| *n < 10),
        "a packet holding a record still being written was delivered: {early:?}"
    );
    c.simple(&Request::Stop).expect("stop succeeds once the writers leave their records");
    let stopped_at = Instant::now();
    let done: Vec<Instant> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    for (cpu, d) in done.iter().enumerate() {
        assert!(
            stopped_at > *d,
            "stop answered {:?} before writer {cpu} finished its record",
            d.duration_since(stopped_at)
        );
    }
    assert!(stopped_at - t0 >= Duration::from_millis(250), "stop answered after only {:?}", stopped_at - t0);
    assert!(stopped_at - t0 < Duration::from_secs(3), "stop took {:?}", stopped_at - t0);
    assert_eq!(*after_commit.lock().unwrap(), vec![Err(RecordError::Closed); 2]);
    assert_eq!(c.status().unwrap().state, ChannelState::Stopped);

    // Stop flushed and woke: everything is delivered, the slow records whole.
    for (cpu, r) in readers.iter().enumerate() {
        let mut got = if cpu == 0 { early.clone() } else { Vec::new() };
        got.extend(drain(r));
        let ns: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
        let mut want: Vec<u64> = (0..10).collect();
        want.push(1000 + cpu as u64);
        assert_eq!(ns, want, "cpu {cpu}: every record delivered once, in order");
        assert_eq!(got[10].1, "the slow record, written in two halves", "cpu {cpu}: the slow record is intact");
        let counters = r.reader().counters();
        assert_eq!(counters.discarded, 0, "cpu {cpu}: {counters:?}");
    }
    c.simple(&Request::Destroy).unwrap();
    drop(readers);
    host.shutdown();
}
