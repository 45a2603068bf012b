//! The trace directory changes under a running consumer (issue 17, item
//! 6): removed whole, or a stream file replaced by a FIFO or a directory.
//! The consumer's descriptors still work, so its writes succeed, but they
//! land in files nobody can reach: the trace has lost those packets, and
//! the report says so instead of calling the session clean.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ExitReason, Report};
use hvtrace_proto::{ChannelConfig, Mode, Request};

/// Runs a session into `out`, calling `meddle` while records are written.
fn session(name: &str, meddle: impl FnOnce(&std::path::Path)) -> (Report, TempDir) {
    let dir = TempDir::new(name);
    let (host, sock) = host(&dir.0, &[0, 1], 2);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 8, mode: Mode::Discard });
    let out = dir.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();
    let run = std::thread::spawn(move || consumer.run());
    for cpu in 0..2 {
        write_events(&host, cpu, cpu, 2000);
    }
    std::thread::sleep(Duration::from_millis(50));
    meddle(&out);
    for cpu in 0..2 {
        write_events(&host, 10 + cpu, cpu, 2000);
    }
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    assert_eq!(report.exit, ExitReason::Destroyed);
    (report, dir)
}

#[test]
fn a_trace_directory_removed_mid_session_is_reported_lost() {
    let (report, _dir) = session("dir-removed", |out| std::fs::remove_dir_all(out).unwrap());
    assert!(report.trace_lost.as_deref().is_some_and(|w| w.contains("removed or replaced")), "{report}");
    assert!(!report.is_whole());
    assert!(report.consumer_lost() > 0, "{report}");
    assert_eq!(report.packets(), 0, "nothing written is in the trace: {report}");
}

#[test]
fn a_stream_file_replaced_mid_session_is_reported_lost() {
    for (what, make) in [("FIFO", "mkfifo"), ("directory", "mkdir")] {
        let (report, _dir) = session(&format!("replaced-{make}"), |out| {
            let f = out.join("channel0_1");
            std::fs::remove_file(&f).unwrap();
            assert!(Command::new(make).arg(&f).status().unwrap().success());
        });
        let r1 = &report.per_ring[1];
        let why = r1.first_error.as_deref().unwrap_or("");
        assert!(why.contains(&format!("channel0_1 was replaced during the session (now a {what})")), "{report}");
        assert_eq!((r1.packets, r1.bytes), (0, 0), "{what}: {report}");
        assert!(r1.lost_packets > 0);
        assert!(!report.is_whole());
        // The other stream is untouched and whole.
        let r0 = &report.per_ring[0];
        assert!(r0.packets > 0 && r0.lost_packets == 0 && r0.first_error.is_none(), "{report}");
        assert_eq!(check_stream(&r0.file, 0).packets.len() as u64, r0.packets + u64::from(r0.trailer));
    }
}
