//! The host process dies mid-session: the consumer writes what was
//! delivered, says the trace was cut short, and exits. The host runs in a
//! child process (this test binary re-executed), so this process's
//! `/proc/self/maps` holds only the consumer's mappings.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ExitReason, INCOMPLETE};
use hvtrace_core::EventSet;
use hvtrace_proto::{ChannelConfig, Mode};

const CHILD_ENV: &str = "HVTRACE_CONSUMER_TEST_HOST_SOCKET";

/// In the child: serve a host and keep writing until killed.
#[test]
fn child_host() {
    let Ok(sock) = std::env::var(CHILD_ENV) else { return };
    let mut cfg = hvtrace_host::HostConfig::new(&sock, "test");
    cfg.cpus = vec![0, 1];
    cfg.max_cpus = 2;
    let host = hvtrace_host::Host::serve(cfg, ev::Events::EVENTS).unwrap();
    let hs: Vec<_> = (0..2u32)
        .map(|cpu| {
            let host = host.clone();
            std::thread::spawn(move || {
                let w = host.writer_for_cpu(cpu);
                let mut n = 0u64;
                loop {
                    let _ = ev::tick(&w, cpu, n, "from the child host");
                    n += 1;
                    if n.is_multiple_of(64) {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn host_death_cuts_the_trace_short_cleanly() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = TempDir::new("gone");
    let sock = dir.0.join("ctl.sock");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_host", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "the child host did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 8, mode: Mode::Discard });
    let out = dir.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();

    // Only the consumer's mappings are in this process: none writable.
    let maps = data_maps();
    assert_eq!(maps.len(), 2, "{maps:#?}");
    for l in &maps {
        assert!(!perms(l).contains('w'), "consumer data mapping is writable: {l}");
    }
    let ctrl: Vec<String> = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("hvtrace-ctrl"))
        .map(str::to_string)
        .collect();
    assert!(ctrl.iter().all(|l| perms(l).starts_with("rw")), "{ctrl:#?}");

    let run = std::thread::spawn(move || consumer.run());
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(_ctl);
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    assert_eq!(report.exit, ExitReason::HostGone);
    assert!(report.cut_short);
    // An empty marker: CTF readers fail on a non-empty file that is not a stream.
    assert_eq!(std::fs::metadata(out.join(INCOMPLETE)).unwrap().len(), 0);
    assert!(report.packets() > 0, "packets delivered before the host died were written");
    for r in &report.per_ring {
        let s = check_stream(&r.file, r.cpu);
        assert_eq!(s.packets.len() as u64, r.packets + u64::from(r.trailer));
    }
}
