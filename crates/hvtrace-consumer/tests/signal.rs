//! SIGINT ends a consumer like a shutdown: flush, final drain, unmap. (Its
//! own test binary: the signal goes to the whole process.)

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ExitReason};
use hvtrace_proto::{ChannelConfig, Mode};

#[test]
fn sigint_flushes_drains_and_exits() {
    // Keep the default action (exit) away while no consumer handler is
    // registered yet.
    let seen = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, seen.clone()).unwrap();

    let dir = TempDir::new("sigint");
    let (host, sock) = host(&dir.0, &[0], 1);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 64 * 1024, num_subbuf: 4, mode: Mode::Discard });
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, dir.0.join("trace"))).unwrap();
    let run = std::thread::spawn(move || consumer.run());
    let e = write_events(&host, 0, 0, 200);
    let t = Instant::now();
    while !run.is_finished() {
        assert!(t.elapsed() < Duration::from_secs(20), "SIGINT did not end the consumer");
        signal_hook::low_level::raise(signal_hook::consts::SIGINT).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = run.join().unwrap().unwrap();
    assert_eq!(report.exit, ExitReason::Signal);
    assert!(!report.cut_short);
    assert_eq!(check_stream(&report.per_ring[0].file, 0).records, e.ok);
    assert_eq!(ctl.status().unwrap().refcount, 0, "unmapped");
}
