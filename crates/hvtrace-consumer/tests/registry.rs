//! Event classes registered at run time (`Host::register_event`): before
//! the channel exists, after `create`, after `start`; a consumer that
//! attaches afterwards writes metadata babeltrace2 reads, and babeltrace2
//! decodes every record with its values. While a consumer maps the channel,
//! registration is refused rather than making its trace unreadable.

mod common;

use std::process::Command;
use std::thread;

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig};
use hvtrace_core::field::BOOL_LABELS;
use hvtrace_core::{Field, FieldKind, Sink};
use hvtrace_host::{RegisterError, MAX_REGISTERED_TSDL};
use hvtrace_proto::{ChannelConfig, Mode, Request};

const U32: FieldKind = <u32 as Field>::KIND;

/// Records one event of class `id` whose payload is `fields`, encoded in order.
fn record(w: &impl Sink, id: u32, fields: &[&dyn Encode]) {
    let len = fields.iter().map(|f| f.len()).sum();
    w.record(id, len, |e| fields.iter().for_each(|f| f.put(e))).unwrap();
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
    record(&w, before, &[&7u32, &"virtio-net"]);
    record(&w, created, &[&33u16, &-5i64, &0.25f64, &true]);
    record(&w, started, &[&"boot ok"]);
    ev::tick(&w, 1, 2, "static").unwrap();

    // The consumer attaches after every registration: its metadata has them all.
    let out = dir.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();
    let md = std::fs::read_to_string(out.join("metadata")).unwrap();
    for name in ["dev_added", "irq", "guest \\\"msg\\\""] {
        assert!(md.contains(&format!("name = \"{name}\";")), "{name} missing from:\n{md}");
    }
    // Now that it maps the channel, a new class is refused, not lost.
    assert_eq!(host.register_event("too_late", &[]), Err(RegisterError::ConsumerAttached));

    let run = thread::spawn(move || consumer.run());
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    run.join().unwrap().unwrap();

    // With the channel gone, registration works again (for the next channel).
    assert_eq!(host.register_event("next_channel", &[]), Ok(4));

    let o = match Command::new("babeltrace2").arg(&out).output() {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP: babeltrace2 not runnable ({e})");
            return;
        }
    };
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "babeltrace2 failed: {}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let want = [
        "dev_added: { cpu_id = 0 }, { bus = 7, name = \"virtio-net\" }",
        "irq: { cpu_id = 0 }, { line = 33, delta = -5, load = 0.25",
        "guest \"msg\": { cpu_id = 0 }, { text = \"boot ok\" }",
        "tick: { cpu_id = 0 }, { writer = 1, n = 2, note = \"static\" }",
    ];
    for (line, want) in lines.iter().zip(want) {
        assert!(line.contains(want), "{line:?} lacks {want:?}");
    }
    assert!(lines[1].contains("masked = ( \"true\" : container = 1 )"), "{}", lines[1]);
}

#[test]
fn concurrent_registration_while_recording_gives_unique_ids_and_stops_at_the_bound() {
    let dir = TempDir::new("registry-race");
    let (host, sock) = host(&dir.0, &[0], 1);
    let _ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard });
    let host = &*host;
    let (ids, errors, recorded) = thread::scope(|s| {
        let writer =
            s.spawn(|| (0..20_000u64).filter(|&n| ev::tick(&host.writer_for_cpu(0), 0, n, "").is_ok()).count());
        let regs: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    let (mut ids, mut errors) = (Vec::new(), Vec::new());
                    for i in 0..1000 {
                        match host.register_event(&format!("t{t}_{i}"), &[("x", U32)]) {
                            Ok(id) => ids.push(id),
                            Err(e) => errors.push(e),
                        }
                    }
                    (ids, errors)
                })
            })
            .collect();
        let (mut ids, mut errors) = (Vec::new(), Vec::new());
        for r in regs {
            let (i, e) = r.join().unwrap();
            ids.extend(i);
            errors.extend(e);
        }
        (ids, errors, writer.join().unwrap())
    });
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "an id was handed out twice");
    let n = ids.len() as u32;
    assert_eq!(sorted, (1..=n).collect::<Vec<_>>(), "ids are dense, after the static set");
    assert_eq!(errors.len() as u32, 4000 - n, "every attempt got an id or an error");
    // The TSDL budget (32 KiB) ends it, well before the id space.
    assert!(n > 100, "{n}");
    let full = RegisterError::MetadataFull { max_bytes: MAX_REGISTERED_TSDL };
    assert!(errors.iter().all(|e| *e == full), "{:?}", errors[0]);
    assert!(recorded > 0, "writers kept recording");
    // Every class is in the live channel's metadata, which a consumer gets.
    let out = dir.0.join("trace");
    let _consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();
    let md = std::fs::read_to_string(out.join("metadata")).unwrap();
    assert_eq!(md.matches("\nevent {").count() as u32, n + 1);
}
