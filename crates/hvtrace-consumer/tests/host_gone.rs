//! The host process dies mid-session: the consumer writes what was
//! delivered, says the trace was cut short, and exits. The host runs in a
//! child process (this test binary re-executed), so this process's
//! `/proc/self/maps` holds only the consumer's mappings.

mod common;

use std::time::Duration;

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ExitReason, INCOMPLETE};
use hvtrace_proto::{ChannelConfig, Mode};

/// In the child: serve a host and keep writing until killed.
#[test]
fn child_host() {
    serve_child_host(&[0, 1]);
}

#[test]
fn host_death_cuts_the_trace_short_cleanly() {
    if std::env::var(CHILD_HOST_SOCKET).is_ok() {
        return;
    }
    let dir = TempDir::new("gone");
    let sock = dir.0.join("ctl.sock");
    let mut child = spawn_child_host("child_host", &sock);
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
