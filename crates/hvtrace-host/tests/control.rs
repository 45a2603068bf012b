//! The control socket end to end, in-process: create / start / stop /
//! destroy, map with read-only data descriptors, the reference count, bad
//! requests, and CPU hotplug.

use std::path::PathBuf;
use std::time::Duration;

use hvtrace_consumer::MappedMetaLog;
use hvtrace_core::decode::records;
use hvtrace_core::{EventSet, Poll, RingReader};
use hvtrace_ctl::{Client, CtlError};
use hvtrace_host::Host;
use hvtrace_proto::{ChannelConfig, ChannelState, ErrorCode, Mode, Reply, Request};
use hvtrace_sys::mmap::SharedMapping;

mod common;

use common::*;

hvtrace_core::events! {
    /// Test events.
    pub mod ev ("test") {
        /// A numbered event.
        fn tick(n: u64, note: &str);
    }
}

fn host(name: &str) -> (std::sync::Arc<Host>, PathBuf, TempDir) {
    common::serve(name, ev::Events::EVENTS, 4)
}

fn refused(r: Result<(), CtlError>) -> ErrorCode {
    match r {
        Err(CtlError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn session_round_trip_with_read_only_consumer_mapping() {
    let (host, sock, _d) = host("session");
    let mut c = Client::connect(&sock, Some(Duration::from_secs(10))).unwrap();
    let cfg = ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard };
    c.simple(&Request::Create(cfg)).unwrap();
    let (reply, fds) = c.call(&Request::Map).unwrap();
    let Reply::Mapped(info) = reply else { panic!("{reply:?}") };
    assert_eq!(fds.len(), info.fd_count());
    assert_eq!(info.rings.iter().map(|r| r.cpu).collect::<Vec<_>>(), vec![0, 1]);
    // The metadata log, last, read-only and sealed: it holds the TSDL text.
    let md_fd = &fds[info.metadata_fd_index()];
    assert!(SharedMapping::map_rw(md_fd, info.metadata_len as usize).is_err(), "metadata log mapped writable");
    let md = MappedMetaLog::attach(SharedMapping::map_ro_lazy(md_fd, info.metadata_len as usize).unwrap()).unwrap();
    let mut text = vec![0; md.reader().published() as usize];
    assert!(md.reader().copy(0, &mut text));
    assert!(text.starts_with(b"/* CTF 1.8 */") && text.ends_with(b"};\n\n"), "{}", String::from_utf8_lossy(&text));

    let ctrl = SharedMapping::map_rw(&fds[0], info.ctrl_len as usize).unwrap();
    let data = SharedMapping::map_ro(&fds[2], info.rings[0].data_len as usize).unwrap();
    assert!(SharedMapping::map_rw(&fds[2], info.rings[0].data_len as usize).is_err(), "data memfd mapped writable");
    // SAFETY: both mappings outlive the reader; offsets come from the host.
    let reader = unsafe {
        RingReader::attach(
            data.as_ptr(),
            data.len(),
            ctrl.as_mut_ptr().add(info.rings[0].ctrl_offset as usize),
            ctrl.len() - info.rings[0].ctrl_offset as usize,
        )
    }
    .unwrap();

    let w = host.writer_for_cpu(0);
    assert_eq!(ev::tick(&w, 0, "before start"), Err(hvtrace_core::RecordError::Closed));
    c.simple(&Request::Start).unwrap();
    let mut emitted = 0u64;
    let mut got = 0u64;
    let mut buf = vec![0u8; 4096];
    for n in 0..500u64 {
        if ev::tick(&w, n, "hello") != Err(hvtrace_core::RecordError::Closed) {
            emitted += 1;
        }
        // Read as we go, like a consumer would.
        while let Poll::Ready(p) = reader.next_packet() {
            reader.copy_packet(&p, &mut buf);
            assert!(reader.release(&p));
            got += records(&buf, ev::Events::EVENTS).unwrap().1.count() as u64;
        }
    }
    c.simple(&Request::Stop).unwrap();
    while let Poll::Ready(p) = reader.next_packet() {
        reader.copy_packet(&p, &mut buf);
        assert!(reader.release(&p));
        got += records(&buf, ev::Events::EVENTS).unwrap().1.count() as u64;
    }
    let st = c.status().unwrap();
    assert_eq!(st.state, ChannelState::Stopped);
    assert_eq!(st.refcount, 1);
    assert_eq!(got + st.rings[0].events_discarded, emitted);
    assert_eq!(emitted, 500);

    // Destroy while mapped: memory stays, status says destroy is pending.
    c.simple(&Request::Destroy).unwrap();
    let st = c.status().unwrap();
    assert_eq!((st.state, st.destroy_pending, st.refcount), (ChannelState::Destroyed, true, 1));
    assert_eq!(ev::tick(&w, 1, "after destroy"), Err(hvtrace_core::RecordError::Closed));
    c.simple(&Request::Unmap).unwrap();
    let st = c.status().unwrap();
    assert_eq!((st.state, st.destroy_pending, st.refcount), (ChannelState::Destroyed, false, 0));
    assert_eq!(refused(c.simple(&Request::Destroy)), ErrorCode::BadState);
}

#[test]
fn bad_requests_get_clear_errors_and_the_host_keeps_serving() {
    let (_host, sock, _d) = host("bad");
    let mut c = Client::connect(&sock, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(refused(c.simple(&Request::Start)), ErrorCode::BadState);
    assert_eq!(refused(c.simple(&Request::Destroy)), ErrorCode::BadState);
    let bad = ChannelConfig { subbuf_size: 1000, num_subbuf: 4, mode: Mode::Discard };
    assert_eq!(refused(c.simple(&Request::Create(bad))), ErrorCode::BadConfig);
    // Raw garbage, a wrong version, an oversized datagram.
    let conn = hvtrace_sys::seqpacket::Conn::connect(&sock).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut other_version = hvtrace_proto::encode_request(&Request::Status);
    other_version[4] = hvtrace_proto::VERSION as u8 + 1;
    for msg in [b"garbage!garbage!".to_vec(), other_version, vec![0u8; 100_000]] {
        conn.send(&msg, &[]).unwrap();
        let mut buf = vec![0u8; 70_000];
        let (n, _) = conn.recv(&mut buf, 0).unwrap();
        match hvtrace_proto::decode_reply(&buf[..n]).unwrap() {
            Reply::Error { message, .. } => assert!(!message.is_empty()),
            r => panic!("expected an error for garbage, got {r:?}"),
        }
    }
    // Still serving.
    assert_eq!(c.status().unwrap().state, ChannelState::Empty);
}

#[test]
fn hotplugged_cpu_gets_a_ring() {
    let (host, sock, _d) = host("hotplug");
    let mut c = Client::connect(&sock, Some(Duration::from_secs(10))).unwrap();
    c.simple(&Request::Create(ChannelConfig::default())).unwrap();
    c.simple(&Request::Start).unwrap();
    host.add_cpu(3).unwrap();
    let st = c.status().unwrap();
    assert_eq!(st.rings.iter().map(|r| r.cpu).collect::<Vec<_>>(), vec![0, 1, 3]);
    let w = host.writer_for_cpu(3);
    assert_eq!(ev::tick(&w, 1, "new cpu"), Ok(()));
    assert!(host.add_cpu(4).is_err(), "beyond max_cpus");
}
