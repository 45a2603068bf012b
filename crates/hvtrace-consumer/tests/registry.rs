//! Event classes registered at run time (`Host::register_event`): before
//! the channel exists, after `create`, after `start`, and while a consumer
//! is attached. Every class reaches the trace's `metadata` (through the
//! channel's metadata log) before the first packet holding one of its
//! records; babeltrace2 decodes every record with its values; the
//! `metadata` is valid TSDL whenever the consumer may stop.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig};
use hvtrace_core::field::BOOL_LABELS;
use hvtrace_core::{Field, FieldKind, RecordError, Sink};
use hvtrace_host::{RegisterError, MAX_EVENT_CLASSES};
use hvtrace_proto::{ChannelConfig, Mode, Request};

const U32: FieldKind = <u32 as Field>::KIND;

/// Records one event of class `id` whose payload is `fields`, encoded in order.
fn record(w: &impl Sink, id: u32, fields: &[&dyn Encode]) -> Result<(), RecordError> {
    let len = fields.iter().map(|f| f.len()).sum();
    w.record(id, len, |e| fields.iter().for_each(|f| f.put(e)))
}

/// A field value of any type, for [`record`].
trait Encode {
    fn len(&self) -> usize;
    fn put(&self, e: &mut hvtrace_core::Encoder<'_>);
}

impl<T: Field> Encode for T {
    fn len(&self) -> usize {
        self.encoded_len()
    }
    fn put(&self, e: &mut hvtrace_core::Encoder<'_>) {
        self.encode(e)
    }
}

/// babeltrace2's text for a trace directory; `None` after a SKIP line
/// when it is not installed. It must succeed.
fn babeltrace2(dir: &Path) -> Option<String> {
    let o = match Command::new("babeltrace2").arg(dir).output() {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP: babeltrace2 not runnable ({e}); {} not decoded with it", dir.display());
            return None;
        }
    };
    assert!(o.status.success(), "babeltrace2 {}: {}", dir.display(), String::from_utf8_lossy(&o.stderr));
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Checks a `metadata` text as a consumer stopped now would leave it:
/// hvtrace's own (strict) parser reads it with `classes` classes, and
/// babeltrace2 reads it as a whole trace (metadata and no stream).
fn valid_at_this_point(metadata: &str, classes: usize, scratch: &Path) {
    let md = hvtrace_reader::tsdl::parse(metadata).unwrap_or_else(|e| panic!("{e}:\n{metadata}"));
    assert_eq!(md.schema.events.len(), classes, "{metadata}");
    std::fs::create_dir_all(scratch).unwrap();
    std::fs::write(scratch.join("metadata"), metadata).unwrap();
    let _ = babeltrace2(scratch);
}

/// Waits until `cond` holds (the consumer works in its own threads).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn classes_registered_before_and_after_start_decode_in_babeltrace2() {
    let dir = TempDir::new("registry");
    let (host, sock) = host(&dir.0, &[0], 1);
    // Static set: `tick` is id 0.
    let before = host.register_event("dev_added", &[("bus", U32), ("name", FieldKind::Str)]).unwrap();
    let mut ctl = client(&sock);
    ctl.simple(&Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard })).unwrap();
    let created = host
        .register_event(
            "irq",
            &[
                ("line", <u16 as Field>::KIND),
                ("delta", <i64 as Field>::KIND),
                ("load", <f64 as Field>::KIND),
                ("masked", FieldKind::Enum { bits: 8, signed: false, labels: BOOL_LABELS }),
            ],
        )
        .unwrap();
    ctl.simple(&Request::Start).unwrap();
    let started = host.register_event("guest \"msg\"", &[("text", FieldKind::Str)]).unwrap();
    assert_eq!((before, created, started), (1, 2, 3));

    let w = host.writer_for_cpu(0);
    record(&w, before, &[&7u32, &"virtio-net"]).unwrap();
    record(&w, created, &[&33u16, &-5i64, &0.25f64, &true]).unwrap();
    record(&w, started, &[&"boot ok"]).unwrap();
    ev::tick(&w, 1, 2, "static").unwrap();

    // The consumer attaches after those registrations: its metadata has them all.
    let out = dir.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();
    let md = std::fs::read_to_string(out.join("metadata")).unwrap();
    for name in ["dev_added", "irq", "guest \\\"msg\\\""] {
        assert!(md.contains(&format!("name = \"{name}\";")), "{name} missing from:\n{md}");
    }
    // Now that it maps the channel, a new class is still taken (it was
    // refused before the metadata log), and its record reaches the trace.
    let attached = host.register_event("attached", &[("v", U32)]).unwrap();
    assert_eq!(attached, 4);
    record(&w, attached, &[&99u32]).unwrap();

    let run = thread::spawn(move || consumer.run());
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    assert!(report.is_whole(), "{report}");
    assert_eq!((report.metadata.appends, report.metadata.refused), (1, 0), "{:?}", report.metadata);

    // With the channel gone, registration goes on (for the next channel).
    assert_eq!(host.register_event("next_channel", &[]), Ok(5));

    let Some(text) = babeltrace2(&out) else { return };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let want = [
        "dev_added: { cpu_id = 0 }, { bus = 7, name = \"virtio-net\" }",
        "irq: { cpu_id = 0 }, { line = 33, delta = -5, load = 0.25",
        "guest \"msg\": { cpu_id = 0 }, { text = \"boot ok\" }",
        "tick: { cpu_id = 0 }, { writer = 1, n = 2, note = \"static\" }",
        "attached: { cpu_id = 0 }, { v = 99 }",
    ];
    for (line, want) in lines.iter().zip(want) {
        assert!(line.contains(want), "{line:?} lacks {want:?}");
    }
    assert!(lines[1].contains("masked = ( \"true\" : container = 1 )"), "{}", lines[1]);
}

#[test]
fn classes_registered_while_a_consumer_records_reach_the_trace_before_their_records() {
    let dir = TempDir::new("registry-live");
    let (host, sock) = host(&dir.0, &[0, 1], 2);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard });
    let out = dir.0.join("trace");
    let cfg = ConsumerConfig { threads: 2, ..ConsumerConfig::new(&sock, &out) };
    let consumer = Consumer::attach(&cfg).unwrap();
    let run = thread::spawn(move || consumer.run());
    let md_path = out.join("metadata");
    valid_at_this_point(&std::fs::read_to_string(&md_path).unwrap(), 1, &dir.0.join("at-attach"));

    let mut expected = Vec::new();
    for round in 0..6u32 {
        let id = host.register_event(&format!("dev{round}"), &[("round", U32), ("label", FieldKind::Str)]).unwrap();
        assert_eq!(id, round + 1);
        // Its record goes to the other CPU's ring each round: both workers
        // must have caught up with the log before writing.
        let w = host.writer_for_cpu(round % 2);
        let label = format!("device {round}");
        record(&w, id, &[&round, &label.as_str()]).unwrap();
        expected.push(format!("dev{round}: {{ cpu_id = {} }}, {{ round = {round}, label = \"{label}\" }}", round % 2));
        // Delivered now: the consumer writes the packet, and the class first.
        ctl.simple(&Request::Flush).unwrap();
        let stream = out.join(format!("channel0_{}", round % 2));
        wait_for("the record in its stream file", || {
            std::fs::read(&stream).unwrap().windows(label.len()).any(|w| w == label.as_bytes())
        });
        // The packet is in the file: its class was in `metadata` before it.
        let md = std::fs::read_to_string(&md_path).unwrap();
        assert!(md.contains(&format!("name = \"dev{round}\";")), "dev{round} written after its record:\n{md}");
        // Wherever the consumer stops, the metadata reads as a whole.
        valid_at_this_point(&md, round as usize + 2, &dir.0.join(format!("round{round}")));
    }
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    assert!(report.is_whole(), "{report}");
    let m = &report.metadata;
    assert_eq!((m.appends, m.refused, m.write_errors), (6, 0, 0), "{m:?}");
    assert!(m.appended_bytes > 6 * 100, "{m:?}");

    let Some(text) = babeltrace2(&out) else { return };
    let mut lines: Vec<&str> = text.lines().map(|l| l.split_once(") ").map_or(l, |x| x.1)).collect();
    lines.sort_unstable();
    expected.sort_unstable();
    assert_eq!(lines.len(), expected.len(), "{text}");
    for (line, want) in lines.iter().zip(&expected) {
        assert!(line.contains(want.as_str()), "{line:?} lacks {want:?}");
    }
}

#[test]
fn concurrent_registration_while_recording_gives_unique_ids_loses_nothing_silently_and_stops_at_the_bound() {
    let dir = TempDir::new("registry-race");
    let (host, sock) = host(&dir.0, &[0], 1);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 65536, num_subbuf: 8, mode: Mode::Discard });
    let out = dir.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();
    let run = thread::spawn(move || consumer.run());
    let host = &*host;
    const THREADS: u32 = 4;
    const EACH: u32 = 1100; // 4,400 tries: more than the id space holds
    let (regs, ticks) = thread::scope(|s| {
        let ticks = s.spawn(|| write_events(host, 9, 0, 20_000));
        let regs: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    let w = host.writer_for_cpu(0);
                    let (mut ids, mut errors, mut recorded, mut lost) = (Vec::new(), Vec::new(), 0u64, 0u64);
                    for i in 0..EACH {
                        match host.register_event(&format!("t{t}_{i}"), &[("x", U32)]) {
                            Ok(id) => {
                                // At once, while the others register and record.
                                match record(&w, id, &[&id]) {
                                    Ok(()) => recorded += 1,
                                    Err(RecordError::Closed) => panic!("closed while recording"),
                                    Err(_) => lost += 1,
                                }
                                ids.push((format!("t{t}_{i}"), id));
                            }
                            Err(e) => errors.push(e),
                        }
                    }
                    (ids, errors, recorded, lost)
                })
            })
            .collect();
        let regs: Vec<_> = regs.into_iter().map(|r| r.join().unwrap()).collect();
        (regs, ticks.join().unwrap())
    });
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    assert!(report.is_whole(), "{report}");

    let ids: HashMap<String, u32> = regs.iter().flat_map(|r| r.0.iter().cloned()).collect();
    let mut sorted: Vec<u32> = ids.values().copied().collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "an id was handed out twice");
    // Static `tick` is 0; the id space ends the race, and each attempt got
    // an id or said why not.
    assert_eq!(sorted, (1..MAX_EVENT_CLASSES).collect::<Vec<_>>(), "ids are dense, after the static set");
    let errors: Vec<&RegisterError> = regs.iter().flat_map(|r| &r.1).collect();
    assert_eq!(errors.len() + ids.len(), (THREADS * EACH) as usize);
    assert!(errors.iter().all(|e| **e == RegisterError::Full { max: MAX_EVENT_CLASSES }), "{:?}", errors[0]);
    let recorded: u64 = regs.iter().map(|r| r.2).sum::<u64>() + ticks.ok;
    let lost: u64 = regs.iter().map(|r| r.3).sum::<u64>() + ticks.lost;
    assert!(ticks.ok > 0, "writers kept recording");
    // Every loss is counted by the rings, and the trace says so.
    assert_eq!(report.events_discarded(), lost, "{report}");
    let md = std::fs::read_to_string(out.join("metadata")).unwrap();
    assert_eq!(md.matches("\nevent {").count(), MAX_EVENT_CLASSES as usize);

    let Some(text) = babeltrace2(&out) else { return };
    let mut decoded = 0u64;
    for line in text.lines() {
        decoded += 1;
        // `[time] (+delta) host name: { context }, { fields }`
        let Some((head, rest)) = line.split_once(": ") else { panic!("{line}") };
        let name = head.rsplit(' ').next().unwrap();
        if name == "tick" {
            continue;
        }
        // Each class's record carries its own id: decoded with its class.
        let id = ids.get(name).unwrap_or_else(|| panic!("unknown class in {line}"));
        assert!(rest.ends_with(&format!("{{ x = {id} }}")), "{line}");
    }
    assert_eq!(decoded, recorded, "every record the writers kept is decoded");
}

#[test]
fn a_consumer_taking_over_mid_session_gets_every_class_registered_under_its_predecessor() {
    let dir = TempDir::new("registry-takeover");
    let (host, sock) = host(&dir.0, &[0], 1);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard });
    let w = host.writer_for_cpu(0);
    let first = Consumer::attach(&ConsumerConfig::new(&sock, dir.0.join("first"))).unwrap();
    let stop_first = first.shutdown_handle();
    let run = thread::spawn(move || first.run());
    let under_first = host.register_event("under_first", &[("v", U32)]).unwrap();
    record(&w, under_first, &[&1u32]).unwrap();
    stop_first.shutdown();
    let report = run.join().unwrap().unwrap();
    assert!(report.is_whole(), "{report}");
    // Between the two consumers, recording and registering go on.
    let between = host.register_event("between", &[("v", U32)]).unwrap();
    record(&w, between, &[&2u32]).unwrap();
    record(&w, under_first, &[&3u32]).unwrap();
    let second = Consumer::attach(&ConsumerConfig::new(&sock, dir.0.join("second"))).unwrap();
    let run = thread::spawn(move || second.run());
    let under_second = host.register_event("under_second", &[("v", U32)]).unwrap();
    record(&w, under_second, &[&4u32]).unwrap();
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    assert!(report.is_whole(), "{report}");
    let md = std::fs::read_to_string(dir.0.join("second").join("metadata")).unwrap();
    valid_at_this_point(&md, 4, &dir.0.join("scratch"));
    let Some(first) = babeltrace2(&dir.0.join("first")) else { return };
    assert!(first.contains("under_first: { cpu_id = 0 }, { v = 1 }"), "{first}");
    let second = babeltrace2(&dir.0.join("second")).unwrap();
    let fields: Vec<&str> = second.lines().map(|l| l.split_once(" }, ").unwrap().1).collect();
    assert_eq!(fields, ["{ v = 2 }", "{ v = 3 }", "{ v = 4 }"], "{second}");
    for name in ["between", "under_first", "under_second"] {
        assert!(second.contains(&format!("{name}: ")), "{name} not decoded:\n{second}");
    }
}
