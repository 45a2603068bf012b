//! Whole sessions against an in-process host: writer threads, CPU hotplug,
//! stop + destroy, discard and overwrite modes, shutdown by handle.

mod common;

use std::time::Duration;

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ConsumerError, ExitReason, Report};
use hvtrace_proto::{ChannelConfig, ErrorCode, Mode, Request};

fn run_in_thread(consumer: Consumer) -> std::thread::JoinHandle<Result<Report, ConsumerError>> {
    std::thread::Builder::new().name("consumer-main".into()).spawn(move || consumer.run()).unwrap()
}

/// Every packet decodes; per CPU, recorded + discarded == emitted.
fn check_accounting(report: &Report, emitted: &[Emitted]) {
    for r in &report.per_ring {
        let s = check_stream(&r.file, r.cpu);
        let want: u64 = emitted.iter().filter(|e| e.cpu == r.cpu).map(Emitted::emitted).sum();
        let lost: u64 = emitted.iter().filter(|e| e.cpu == r.cpu).map(|e| e.lost).sum();
        assert_eq!(
            s.records + r.counters.discarded,
            want,
            "CPU {}: {} recorded + {} discarded != {} emitted ({r:?})",
            r.cpu,
            s.records,
            r.counters.discarded,
            want
        );
        assert_eq!(r.counters.events_discarded(), lost, "CPU {}: every refusal counted, nothing else", r.cpu);
        assert_eq!((r.lost_packets, r.write_errors), (0, 0), "{r:?}");
        assert_eq!(s.packets.len() as u64, r.packets + u64::from(r.trailer));
        // The last packet in the file carries the final loss count
        // (overwritten records show as sequence gaps instead).
        let last = s.packets.last().map_or(0, |p| p.events_discarded);
        assert_eq!(last, r.counters.events_discarded(), "CPU {}: CTF readers see every loss", r.cpu);
    }
}

#[test]
fn discard_session_with_writers_hotplug_stop_and_destroy() {
    let dir = TempDir::new("discard");
    let (host, sock) = host(&dir.0, &[0, 1], 4);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard });
    let out = dir.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig { threads: 2, ..ConsumerConfig::new(&sock, &out) }).unwrap();
    assert_eq!(consumer.cpus(), vec![0, 1]);
    assert!(out.join("metadata").exists());

    // The consumer's data mappings are read-only: one `r--s` mapping per
    // ring besides the host's own writable one.
    let maps = data_maps();
    let ro = maps.iter().filter(|l| !perms(l).contains('w')).count();
    assert_eq!(ro, 2, "{maps:#?}");

    let run = run_in_thread(consumer);
    let mut emitted = Vec::new();
    let host = &*host;
    std::thread::scope(|s| {
        let hs: Vec<_> =
            [(0, 0), (1, 1), (2, 1)].map(|(w, cpu)| s.spawn(move || write_events(host, w, cpu, 30_000))).into();
        // A CPU comes online mid-session: the consumer maps its ring.
        host.add_cpu(3).unwrap();
        let late = s.spawn(|| write_events(host, 3, 3, 20_000));
        emitted.extend(hs.into_iter().map(|h| h.join().unwrap()));
        emitted.push(late.join().unwrap());
    });
    ctl.simple(&Request::Stop).unwrap();
    std::thread::sleep(Duration::from_millis(50)); // stopped, not yet destroyed: the consumer keeps going
    assert!(!run.is_finished(), "a stop alone does not end the session");
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    assert_eq!(report.exit, ExitReason::Destroyed);
    assert!(!report.cut_short && !out.join("INCOMPLETE").exists());
    assert_eq!(report.per_ring.iter().map(|r| r.cpu).collect::<Vec<_>>(), vec![0, 1, 3]);
    assert!(out.join(format!("{}_3", report.channel)).exists(), "the hotplugged CPU got its stream file");
    check_accounting(&report, &emitted);
    let total: u64 = emitted.iter().map(Emitted::emitted).sum();
    println!("emitted {total}, packets {}, discarded {}", report.packets(), report.events_discarded());
    // The consumer unmapped: the destroyed channel has no reference left.
    let st = ctl.status().unwrap();
    assert_eq!(st.refcount, 0, "{st:?}");
    // JSON for the CLI.
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["exit"], "destroyed");
    assert_eq!(v["per_ring"].as_array().unwrap().len(), 3);
}

#[test]
fn overwrite_session_keeps_whole_packets_and_accounts_for_every_event() {
    let dir = TempDir::new("overwrite");
    let (host, sock) = host(&dir.0, &[0, 1], 2);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 2, mode: Mode::Overwrite });
    let out = dir.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();
    let run = run_in_thread(consumer);
    let host = &*host;
    let emitted: Vec<Emitted> = write_concurrently(host, &[(0, 0), (1, 0), (2, 1)], 50_000);
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    assert_eq!(report.exit, ExitReason::Destroyed);
    for r in &report.per_ring {
        let s = check_stream(&r.file, r.cpu);
        let want: u64 = emitted.iter().filter(|e| e.cpu == r.cpu).map(Emitted::emitted).sum();
        assert_eq!(s.records + r.counters.discarded, want, "CPU {}: {r:?}", r.cpu);
        let lost: u64 = emitted.iter().filter(|e| e.cpu == r.cpu).map(|e| e.lost).sum();
        assert_eq!(r.counters.events_discarded(), lost, "CPU {}: refusals counted {r:?}", r.cpu);
        // Overwritten records are reported once: as sequence gaps, not in events_discarded.
        let last = s.packets.last().map_or(0, |p| p.events_discarded);
        assert_eq!(last, r.counters.events_discarded());
    }
}

#[test]
fn shutdown_handle_flushes_drains_and_unmaps() {
    let dir = TempDir::new("shutdown");
    let (host, sock) = host(&dir.0, &[0], 1);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 64 * 1024, num_subbuf: 4, mode: Mode::Discard });
    let out = dir.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();
    let stop = consumer.shutdown_handle();
    let run = run_in_thread(consumer);
    // Fewer events than one sub-buffer: only the flush delivers them.
    let e = write_events(&host, 0, 0, 100);
    assert_eq!(e.lost, 0);
    stop.shutdown();
    let report = run.join().unwrap().unwrap();
    assert_eq!(report.exit, ExitReason::Shutdown);
    assert!(!report.cut_short);
    let s = check_stream(&report.per_ring[0].file, 0);
    assert_eq!(s.records, 100, "the flush before the final drain delivered the partial sub-buffer");
    assert_eq!(ctl.status().unwrap().refcount, 0, "unmapped");
    // The session goes on without a consumer; a second one can attach elsewhere.
    let again = Consumer::attach(&ConsumerConfig::new(&sock, dir.0.join("trace2"))).unwrap();
    drop(again);
}

#[test]
fn attach_errors_are_clear() {
    let dir = TempDir::new("errors");
    // Nobody there.
    let e = Consumer::attach(&ConsumerConfig::new(dir.0.join("nope.sock"), dir.0.join("t"))).unwrap_err();
    assert!(matches!(e, ConsumerError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("nope.sock"), "{e}");
    // No channel yet: the host's message is passed on.
    let (_host, sock) = host(&dir.0, &[0], 1);
    let e = Consumer::attach(&ConsumerConfig::new(&sock, dir.0.join("t"))).unwrap_err();
    match &e {
        ConsumerError::Refused { request: "map", code: ErrorCode::BadState, message } => {
            assert!(message.contains("create"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("no channel"), "{e}");
    // An output directory that already holds a trace.
    let _ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 2, mode: Mode::Discard });
    let out = dir.0.join("t");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metadata"), "old").unwrap();
    let e = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap_err();
    assert!(matches!(e, ConsumerError::OutputNotEmpty { .. }), "{e}");
    assert_eq!(std::fs::read_to_string(out.join("metadata")).unwrap(), "old", "left untouched");
}
