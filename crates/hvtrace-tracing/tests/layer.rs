//! The layer end to end: `tracing` macros → host rings → consumer → a
//! trace read back by hvtrace-reader and by babeltrace2.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Barrier;

use common::*;
use hvtrace_host::RegisterError;
use hvtrace_tracing::HvtraceLayer;
use tracing::{debug, debug_span, info, info_span, trace, warn, Dispatch};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::prelude::*;

#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Vcpu {
    id: u32,
    state: &'static str,
}

#[derive(Debug)]
struct Refused;
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("refused by the device")
    }
}
impl std::error::Error for Refused {}

#[test]
fn every_field_type_round_trips_through_the_reader_and_babeltrace2() {
    let (_dir, trace, counters, ()) = traced(false, || {
        for i in 0..3i64 {
            let err: &(dyn std::error::Error + 'static) = &Refused;
            let maybe = if i == 0 { None } else { Some(i * 10) };
            info!(
                target: "vmm::types",
                neg = -5 - i,
                small = 7u8,
                big = u64::MAX - i as u64,
                ratio = 0.25f64,
                half = 1.5f32,
                flag = i % 2 == 0,
                name = "virtio-net",
                dbg = ?Vcpu { id: 3, state: "run" },
                disp = %"shown",
                wide = 1u128 << 100,
                bytes = &b"\x00\xff\x10"[..],
                err,
                maybe,
                "exit {}", i
            );
        }
    });
    assert_eq!(counters.lost(), 0);
    assert_eq!(counters.truncated.load(Relaxed), 0);

    let (evs, discarded) = read(&trace);
    assert_eq!((evs.len(), discarded), (3, 0), "{evs:?}");
    for (i, e) in evs.iter().enumerate() {
        let i = i as i64;
        // Class name `target:name`; `tracing`'s default name is `event FILE:LINE`.
        assert!(e.name.starts_with("vmm::types:event crates/hvtrace-tracing/tests/layer.rs:"), "{}", e.name);
        assert_eq!(e.get("level"), &Val::E(2, "INFO".into()));
        assert_eq!(e.get("neg"), &Val::I(-5 - i));
        assert_eq!(e.get("small"), &Val::U(7));
        assert_eq!(e.get("big"), &Val::U(u64::MAX - i as u64));
        assert_eq!(e.get("ratio"), &Val::F(0.25));
        assert_eq!(e.get("half"), &Val::F(1.5));
        assert_eq!(e.get("flag"), &Val::E((i % 2 == 0) as i64, if i % 2 == 0 { "true" } else { "false" }.into()));
        assert_eq!(e.get("name"), &Val::S("virtio-net".into()));
        assert_eq!(e.get("dbg"), &Val::S("Vcpu { id: 3, state: \"run\" }".into()));
        assert_eq!(e.get("disp"), &Val::S("shown".into()));
        assert_eq!(e.get("wide"), &Val::S((1u128 << 100).to_string()));
        assert_eq!(e.get("bytes"), &Val::B(vec![0, 0xff, 0x10]));
        assert_eq!(e.get("err"), &Val::S("refused by the device".into()));
        // Absent from the first event: a string, which holds the later values' text.
        let maybe = if i == 0 { String::new() } else { (i * 10).to_string() };
        assert_eq!(e.get("maybe"), &Val::S(maybe));
        assert_eq!(e.get("message"), &Val::S(format!("exit {i}")));
    }

    let Some(bt) = read_bt2(&trace) else { return };
    assert_eq!(bt.len(), 3, "{bt:?}");
    for (i, (b, e)) in bt.iter().zip(&evs).enumerate() {
        assert_eq!(b["name"], e.name.as_str());
        assert_eq!(b["ts"], e.ts);
        let f = &b["f"];
        let i = i as i64;
        assert_eq!(f["level"], 2);
        assert_eq!(f["neg"], -5 - i);
        assert_eq!(f["small"], 7);
        assert_eq!(f["big"], u64::MAX - i as u64);
        assert_eq!(f["ratio"], "0.25");
        assert_eq!(f["half"], "1.5");
        assert_eq!(f["flag"], (i % 2 == 0) as i64);
        assert_eq!(f["dbg"], "Vcpu { id: 3, state: \"run\" }");
        assert_eq!(f["wide"], (1u128 << 100).to_string().as_str());
        assert_eq!(f["bytes"], serde_json::json!([0, 255, 16]));
        assert_eq!(f["err"], "refused by the device");
        assert_eq!(f["message"], format!("exit {i}").as_str());
    }
    let text = babeltrace2_text(&trace).unwrap();
    assert!(text.contains("level = ( \"INFO\" : container = 2 )"), "{text}");
}

/// Writes 1 MiB in 1 KiB pieces, counting the pieces the formatter took.
struct Huge<'a>(&'a std::cell::Cell<u32>);
impl fmt::Debug for Huge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let piece = "y".repeat(1024);
        for _ in 0..1024 {
            f.write_str(&piece)?;
            self.0.set(self.0.get() + 1);
        }
        Ok(())
    }
}

#[test]
fn thirty_fields_of_a_mebibyte_each_are_cut_to_their_bound_and_counted() {
    let mib = "x".repeat(1 << 20);
    let m = mib.as_str();
    let pieces = std::cell::Cell::new(0);
    let (_dir, trace, counters, ()) = traced(false, || {
        info!(
            f0 = m, f1 = m, f2 = m, f3 = m, f4 = m, f5 = m, f6 = m, f7 = m, f8 = m, f9 = m,
            f10 = m, f11 = m, f12 = m, f13 = m, f14 = m, f15 = m, f16 = m, f17 = m, f18 = m, f19 = m,
            f20 = m, f21 = m, f22 = m, f23 = m, f24 = m, f25 = m, f26 = m, f27 = m, n = 28u64,
            huge = ?Huge(&pieces)
        );
    });
    assert_eq!(counters.truncated.load(Relaxed), 29, "28 strings and the Debug value");
    assert_eq!(counters.lost(), 0);
    assert_eq!(pieces.get(), 0, "the Debug formatting stopped at its first piece, past the bound");
    let (evs, _) = read(&trace);
    assert_eq!(evs.len(), 1);
    let e = &evs[0];
    assert_eq!(e.fields.len(), 31, "level and 30 fields");
    for i in 0..28 {
        assert_eq!(e.get(&format!("f{i}")), &Val::S("x".repeat(1023)));
    }
    assert_eq!(e.get("n"), &Val::U(28));
    assert_eq!(e.get("huge"), &Val::S("y".repeat(1023)));
    if let Some(bt) = read_bt2(&trace) {
        assert_eq!(bt.len(), 1);
        assert_eq!(bt[0]["f"]["huge"].as_str().unwrap().len(), 1023);
        assert_eq!(bt[0]["f"]["n"], 28);
    }
}

#[test]
fn span_events_pair_up_with_their_ids_and_parents() {
    let (_dir, trace, counters, (outer_id, inner_id)) = traced(true, || {
        let outer = info_span!("vcpu_run", vcpu = 3u32, exits = tracing::field::Empty);
        let inner_id = outer.in_scope(|| {
            let inner = debug_span!("exit_handler", reason = "io");
            inner.in_scope(|| info!(port = 0x3f8u16, "handled"));
            inner.id().unwrap()
        });
        outer.record("exits", 1u64);
        outer.in_scope(|| {});
        (outer.id().unwrap(), inner_id)
    });
    assert_eq!(counters.lost(), 0);
    let (evs, _) = read(&trace);
    let (o, i) = (outer_id.into_u64(), inner_id.into_u64());
    let seq: Vec<(String, u64)> = evs
        .iter()
        .map(|e| {
            let id = match e.fields.iter().find(|(n, _)| n == "span_id") {
                Some((_, Val::U(id))) => *id,
                _ => 0,
            };
            (e.name.split(' ').next().unwrap().to_string(), id)
        })
        .collect();
    let want: Vec<(String, u64)> = [
        ("span", o),
        ("span_enter", o),
        ("span", i),
        ("span_enter", i),
        ("tests/layer.rs", 0), // placeholder for the event, checked below
        ("span_exit", i),
        ("span_close", i),
        ("span_exit", o),
        ("span_record", o),
        ("span_enter", o),
        ("span_exit", o),
        ("span_close", o),
    ]
    .into_iter()
    .map(|(n, id)| (n.to_string(), id))
    .collect();
    assert_eq!(seq.len(), want.len(), "{seq:?}");
    for (k, (got, want)) in seq.iter().zip(&want).enumerate() {
        if k == 4 {
            assert!(evs[k].name.starts_with("layer:event"), "{}", evs[k].name);
            assert_eq!(evs[k].get("port"), &Val::U(0x3f8));
        } else {
            assert_eq!(got, want, "record {k}: {seq:?}");
        }
    }
    let new_outer = &evs[0];
    assert_eq!(new_outer.name, "span layer:vcpu_run");
    assert_eq!(new_outer.get("parent_id"), &Val::U(0));
    assert_eq!(new_outer.get("vcpu"), &Val::U(3));
    assert_eq!(new_outer.get("exits"), &Val::S(String::new()), "empty at creation");
    assert_eq!(evs[2].get("parent_id"), &Val::U(o));
    assert_eq!(evs[2].get("level"), &Val::E(1, "DEBUG".into()));
    assert_eq!(evs[2].get("reason"), &Val::S("io".into()));
    assert_eq!(evs[8].get("exits"), &Val::U(1), "recorded later");
    if let Some(bt) = read_bt2(&trace) {
        let names: Vec<&str> = bt.iter().map(|b| b["name"].as_str().unwrap()).collect();
        let mine: Vec<&str> = evs.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, mine);
    }
}

#[test]
fn a_level_filter_and_an_env_filter_decide_what_is_recorded() {
    let emit = || {
        trace!(target: "vmm::vcpu", "t");
        debug!(target: "vmm::vcpu", "d");
        info!(target: "vmm::io", "i");
        warn!(target: "vmm::io", "w");
        info!(target: "other", "o");
    };
    let msgs = |m: &[&str]| m.iter().map(|s| Val::S(s.to_string())).collect::<Vec<_>>();
    // Each run: its own host, its layer under `make`'s filters; the messages recorded.
    let run = |make: &dyn Fn(HvtraceLayer) -> Dispatch| {
        let s = Session::start();
        let d = make(HvtraceLayer::new(s.host.clone()));
        tracing::dispatcher::with_default(&d, emit);
        let (_dir, trace) = s.finish();
        let (evs, _) = read(&trace);
        evs.iter().map(|e| e.get("message").clone()).collect::<Vec<_>>()
    };
    assert_eq!(
        run(&|l| Dispatch::new(tracing_subscriber::registry().with(LevelFilter::INFO).with(l))),
        msgs(&["i", "w", "o"])
    );
    assert_eq!(
        run(&|l| Dispatch::new(
            tracing_subscriber::registry().with(l.with_filter(EnvFilter::new("vmm::vcpu=debug,vmm=warn")))
        )),
        msgs(&["d", "w"])
    );
}

/// One callsite, for the first event of every thread and the work after.
fn work(t: u64, n: u64) {
    info!(t, n, "work");
}

#[test]
fn threads_recording_at_once_lose_nothing_uncounted() {
    const THREADS: u64 = 4;
    const EACH: u64 = 20_000;
    let mut s = Session::start();
    let layer = HvtraceLayer::new(s.host.clone());
    let counters = layer.counters();
    let d = Dispatch::new(tracing_subscriber::registry().with(layer));
    // The consumer follows the metadata log from the start: the classes
    // are registered while it records.
    s.attach();
    let start = Barrier::new(THREADS as usize);
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let (d, start) = (d.clone(), &start);
            sc.spawn(move || {
                tracing::dispatcher::with_default(&d, || {
                    // Every thread's first event of two callsites at once.
                    start.wait();
                    info!(t, "first");
                    for n in 0..=EACH {
                        work(t, n);
                    }
                })
            });
        }
    });
    let (_dir, trace) = s.finish();
    let md = std::fs::read_to_string(trace.join("metadata")).unwrap();
    assert_eq!(md.matches("\tname = \"layer:event").count(), 2, "one class per callsite:\n{md}");
    let (evs, discarded) = read(&trace);
    let firsts = evs.iter().filter(|e| e.get("message") == &Val::S("first".into())).count() as u64;
    let mut per_thread: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in evs.iter().filter(|e| e.get("message") == &Val::S("work".into())) {
        let (Val::U(t), Val::U(n)) = (e.get("t"), e.get("n")) else { panic!("{e:?}") };
        per_thread.entry(*t).or_default().push(*n);
    }
    let recorded: u64 = per_thread.values().map(|v| v.len() as u64).sum::<u64>() + firsts;
    for v in per_thread.values_mut() {
        let len = v.len();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), len, "a record twice");
    }
    assert_eq!(counters.lost(), counters.ring_lost.load(Relaxed), "only the ring may lose here");
    assert_eq!(discarded, counters.ring_lost.load(Relaxed), "the trace counts what the layer saw lost");
    assert_eq!(recorded + discarded, THREADS * (EACH + 2), "recorded {recorded}, discarded {discarded}");
}

#[test]
fn callsites_first_seen_after_the_consumer_attached_are_recorded_and_decoded() {
    let mut s = Session::start();
    let layer = HvtraceLayer::new(s.host.clone()).with_spans(true);
    let counters = layer.counters();
    let d = Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&d, || info!(n = 0u64, "before"));
    s.attach();
    tracing::dispatcher::with_default(&d, || {
        let span = info_span!("hotplug", cpu = 3u32);
        span.in_scope(|| {
            for n in 0..100u64 {
                info!(n, dev = "virtio-blk", "after");
            }
        });
    });
    let (_dir, trace) = s.finish();
    assert_eq!(counters.lost(), 0);
    assert_eq!(counters.last_refusal(), None);
    let (evs, discarded) = read(&trace);
    assert_eq!(discarded, 0);
    let after: Vec<&Ev> = evs.iter().filter(|e| e.get_opt("message") == Some(&Val::S("after".into()))).collect();
    assert_eq!(after.len(), 100);
    for (n, e) in after.iter().enumerate() {
        assert_eq!(e.get("n"), &Val::U(n as u64));
        assert_eq!(e.get("dev"), &Val::S("virtio-blk".into()));
    }
    assert_eq!(evs.iter().filter(|e| e.name == "span layer:hotplug").count(), 1);
    let Some(bt) = read_bt2(&trace) else { return };
    assert_eq!(bt.len(), evs.len());
    let bt_after = bt.iter().filter(|b| b["f"]["message"] == "after").count();
    assert_eq!(bt_after, 100);
}

#[test]
fn a_class_the_host_refuses_loses_its_events_counted_not_a_panic() {
    let s = Session::start();
    // Take every id the host has but one.
    let mut taken = 1;
    while taken < hvtrace_host::MAX_EVENT_CLASSES && s.host.register_event("filler", &[]).is_ok() {
        taken += 1;
    }
    let layer = HvtraceLayer::new(s.host.clone());
    let counters = layer.counters();
    let pinned = pin_to_one_cpu();
    let fits = |n: u64| info!(n, "fits"); // the one class left
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        // More than a packet first, so babeltrace2 can tell how many were
        // lost after it (for a stream's first packet it says "may have").
        (0..5000).for_each(fits);
        for n in 0..10u64 {
            info!(n, "no room");
        }
        fits(5000);
    });
    let (_dir, trace) = s.finish();
    assert_eq!(counters.unregistered.load(Relaxed), 10);
    assert_eq!(counters.lost(), 10);
    assert_eq!(counters.last_refusal(), Some(RegisterError::Full { max: hvtrace_host::MAX_EVENT_CLASSES }));
    // The trace says so too: the layer counted them into its ring.
    let (evs, discarded) = read(&trace);
    assert_eq!((evs.len(), discarded), (5001, 10));
    let Some(bt) = read_bt2(&trace) else { return };
    assert_eq!(bt.len(), 5002, "5001 events and one discarded-events message");
    if pinned {
        assert_eq!(bt_discarded(&bt), 10, "babeltrace2 reports the layer's losses");
    }
}

/// A callsite built by hand, whose one field takes values of any type (as
/// a `&dyn Value` can), which the macros never do.
mod shifty {
    use tracing_core::callsite::DefaultCallsite;
    use tracing_core::field::{FieldSet, Value};
    use tracing_core::metadata::Kind;
    use tracing_core::{Event, Level, Metadata};

    static CS: DefaultCallsite = DefaultCallsite::new(&META);
    static META: Metadata<'static> = Metadata::new(
        "shifty",
        "test",
        Level::INFO,
        None,
        None,
        None,
        FieldSet::new(&["x"], tracing_core::identify_callsite!(&CS)),
        Kind::EVENT,
    );

    pub fn emit(v: &dyn Value) {
        let fs = META.fields();
        let f = fs.field("x").unwrap();
        Event::dispatch(&META, &fs.value_set(&[(&f, Some(v))]));
    }

    /// The same event handed straight to `sub`, past `tracing`'s dispatcher.
    pub fn emit_to(sub: &dyn tracing_core::Subscriber, v: &dyn Value) {
        let fs = META.fields();
        let f = fs.field("x").unwrap();
        sub.event(&Event::new(&META, &fs.value_set(&[(&f, Some(v))])));
    }
}

#[test]
fn a_value_its_class_cannot_hold_is_written_absent_and_counted() {
    let (_dir, trace, counters, ()) = traced(false, || {
        shifty::emit(&-1i64); // the class: x is an i64, encoded straight into the slot
        shifty::emit(&"text"); // cannot be an i64
        shifty::emit(&u64::MAX); // neither
        shifty::emit(&7u64); // can
    });
    assert_eq!(counters.mismatched.load(Relaxed), 2);
    assert_eq!(counters.lost(), 0, "the events are recorded");
    let (evs, _) = read(&trace);
    let xs: Vec<&Val> = evs.iter().map(|e| e.get("x")).collect();
    assert_eq!(xs, [&Val::I(-1), &Val::I(0), &Val::I(0), &Val::I(7)]);
}

#[test]
fn a_string_field_takes_later_values_of_any_type_as_text() {
    let (_dir, trace, counters, ()) = traced(false, || {
        shifty::emit(&"text"); // the class: x is a string
        shifty::emit(&-1i64); // written as its text
        shifty::emit(&true);
        shifty::emit(&"more");
    });
    assert_eq!((counters.lost(), counters.mismatched.load(Relaxed)), (0, 0));
    let (evs, _) = read(&trace);
    let xs: Vec<&Val> = evs.iter().map(|e| e.get("x")).collect();
    let want = ["text", "-1", "true", "more"].map(|x| Val::S(x.into()));
    assert_eq!(xs, want.iter().collect::<Vec<_>>());
}

/// A value whose `Debug` logs: the event it logs is emitted while the
/// thread encodes another.
struct Loud;
impl fmt::Debug for Loud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        info!("from inside Debug");
        f.write_str("loud")
    }
}

#[test]
fn an_event_emitted_while_encoding_another_is_no_panic_and_the_outer_one_is_recorded() {
    let (_dir, trace, counters, ()) = traced(false, || {
        info!(v = ?Loud, "outer");
    });
    let (evs, _) = read(&trace);
    // `tracing` itself hands an event emitted inside a dispatch to no
    // subscriber (its dispatcher is not re-entered), so the layer never
    // sees it; its `reentrant` counter guards a subscriber called directly.
    assert_eq!(counters.lost(), 0);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].get("v"), &Val::S("loud".into()));
}

/// A value whose `Debug` hands an event straight to a subscriber, as a
/// subscriber that calls itself would: the layer is re-entered while it
/// encodes the outer event on this thread.
struct Reenter<'a>(&'a dyn tracing_core::Subscriber);
impl fmt::Debug for Reenter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        shifty::emit_to(self.0, &"inner");
        f.write_str("outer")
    }
}

#[test]
fn an_event_that_reenters_the_layer_is_lost_counted_in_the_trace() {
    let s = Session::start();
    let layer = HvtraceLayer::new(s.host.clone());
    let counters = layer.counters();
    let sub = tracing_subscriber::registry().with(layer);
    let pinned = pin_to_one_cpu();
    for _ in 0..20_000 {
        shifty::emit_to(&sub, &"fill"); // more than a packet (see above)
    }
    shifty::emit_to(&sub, &tracing::field::debug(Reenter(&sub)));
    shifty::emit_to(&sub, &"after");
    let (_dir, trace) = s.finish();
    assert_eq!((counters.reentrant.load(Relaxed), counters.lost()), (1, 1));
    let (evs, discarded) = read(&trace);
    assert_eq!((evs.len(), discarded), (20_002, 1));
    assert_eq!(evs[20_000].get("x"), &Val::S("outer".into()));
    let Some(bt) = read_bt2(&trace) else { return };
    if pinned {
        assert_eq!(bt_discarded(&bt), 1);
    }
}

/// Two callsites on one line: one target, one name (`event FILE:LINE`),
/// other fields; and two more, named alike by the user, with one layout.
#[rustfmt::skip]
fn twins(i: u64) { info!(target: "twin", i, "first"); info!(target: "twin", i, s = "x", "second"); }
fn named(i: u64) {
    if i.is_multiple_of(2) {
        info!(name: "exit", target: "twin", i, "even");
    } else {
        info!(name: "exit", target: "twin", i, "odd");
    }
}

#[test]
fn two_callsites_with_the_same_name_and_other_fields_get_two_class_names() {
    let s = Session::start();
    let layer = HvtraceLayer::new(s.host.clone());
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        for i in 0..2 {
            twins(i);
            named(i);
        }
    });
    let (_dir, trace) = s.finish();
    let md = std::fs::read_to_string(trace.join("metadata")).unwrap();
    assert_eq!(md.matches("\tname = \"twin:exit\";").count(), 2, "two classes, one name:\n{md}");
    let (evs, _) = read(&trace);
    assert_eq!(evs.len(), 6);
    assert_eq!(evs.iter().filter(|e| e.name == "twin:exit").count(), 2);
    let evs: Vec<Ev> = evs.into_iter().filter(|e| e.name != "twin:exit").collect();
    let name = |msg: &str| {
        let names: Vec<&str> =
            evs.iter().filter(|e| e.get("message") == &Val::S(msg.into())).map(|e| e.name.as_str()).collect();
        assert_eq!(names.len(), 2);
        assert_eq!(names[0], names[1], "one class per callsite");
        names[0].to_string()
    };
    let (first, second) = (name("first"), name("second"));
    assert!(first.starts_with("twin:event crates/hvtrace-tracing/tests/layer.rs:"), "{first}");
    assert_eq!(second, format!("{first}#2"));
    if let Some(bt) = read_bt2(&trace) {
        let names: Vec<&str> = bt.iter().map(|b| b["name"].as_str().unwrap()).collect();
        assert_eq!(names, [&first, &second, "twin:exit", &first, &second, "twin:exit"]);
    }
}

/// A callsite built by hand with more fields than a payload buffer holds
/// at their bound (the macros stop at 32; an event still carries 32 values
/// at most, the others are written absent, a byte each).
mod wide {
    use std::sync::OnceLock;

    use tracing_core::callsite::Callsite;
    use tracing_core::field::{FieldSet, Value};
    use tracing_core::metadata::Kind;
    use tracing_core::subscriber::Interest;
    use tracing_core::{Event, Level, Metadata};

    pub const FIELDS: usize = 200;

    struct Cs(OnceLock<&'static Metadata<'static>>);
    impl Callsite for Cs {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            self.0.get().unwrap()
        }
    }
    static CS: Cs = Cs(OnceLock::new());

    fn meta() -> &'static Metadata<'static> {
        CS.0.get_or_init(|| {
            let names: Vec<&'static str> = (0..FIELDS).map(|i| &*format!("f{i}").leak()).collect();
            let fields = FieldSet::new(names.leak(), tracing_core::identify_callsite!(&CS));
            Box::leak(Box::new(Metadata::new("wide", "test", Level::INFO, None, None, None, fields, Kind::EVENT)))
        })
    }

    /// Fields `first..first + 32` get `v` (as `Debug`: a string field).
    pub fn emit(first: usize, v: &dyn std::fmt::Debug) {
        let fs = meta().fields();
        let f: Vec<_> = (first..first + 32).map(|i| fs.field(&format!("f{i}")).unwrap()).collect();
        let d = tracing_core::field::debug(v);
        let v: [(&tracing_core::Field, Option<&dyn Value>); 32] =
            std::array::from_fn(|k| (&f[k], Some(&d as &dyn Value)));
        Event::dispatch(meta(), &fs.value_set(&v));
    }
}

#[test]
fn a_payload_past_the_threads_buffer_is_lost_counted_in_the_trace() {
    let mib = "z".repeat(1 << 20);
    let pinned = pin_to_one_cpu();
    let (_dir, trace, counters, ()) = traced(false, || {
        // The class: 200 strings. More than a packet first (see above).
        for _ in 0..200 {
            wide::emit(0, &"short");
        }
        wide::emit(100, &mib); // 32 of 1023 bytes and 168 absent: past the buffer
        wide::emit(0, &"short");
    });
    assert_eq!(counters.overflow.load(Relaxed), 1);
    assert_eq!(counters.lost(), 1);
    let (evs, discarded) = read(&trace);
    assert_eq!((evs.len(), discarded), (201, 1));
    assert_eq!(evs[200].get("f31"), &Val::S("\"short\"".into()));
    let Some(bt) = read_bt2(&trace) else { return };
    assert_eq!(bt.len(), 202, "201 events and one discarded-events message");
    if pinned {
        assert_eq!(bt_discarded(&bt), 1);
    }
}
