//! Hosts with more CPUs than one control message has room for (issue 17
//! item 4): `map` hands out at most `MAP_MAX_RINGS` rings and `map_ring`
//! the rest; and the host says why it drops a connection, through the
//! logger its program set, instead of dropping it silently.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hvtrace_core::EventSet;
use hvtrace_ctl::Client;
use hvtrace_host::{Host, HostConfig, Logger, Notice};
use hvtrace_proto::{encode_request, ChannelConfig, Mode, Reply, Request, MAP_MAX_RINGS};
use hvtrace_sys::seqpacket::{Conn, MAX_FDS};

mod common;

use common::*;

hvtrace_core::events! {
    /// Test events.
    pub mod ev ("test") {
        /// A numbered event.
        fn tick(n: u64);
    }
}

const CPUS: u32 = 256;

fn big_host(name: &str) -> (Arc<Host>, std::path::PathBuf, TempDir, Arc<Mutex<Vec<Notice>>>) {
    let dir = scratch(name);
    let sock = dir.path().join("ctl.sock");
    let mut cfg = HostConfig::new(&sock, "test");
    cfg.cpus = (0..CPUS).collect();
    cfg.max_cpus = CPUS;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    cfg.log = Logger::new(move |n| s.lock().unwrap().push(n.clone()));
    (Host::serve(cfg, ev::Events::EVENTS).unwrap(), sock, dir, seen)
}

// Before the fix `map` on 256 CPUs tried 514 descriptors in one message:
// the send failed, the host closed the connection and said nothing.
#[test]
fn a_256_cpu_host_maps_its_first_rings_at_once_and_the_rest_one_by_one() {
    let (host, sock, _d, seen) = big_host("map256");
    let mut c = Client::connect(&sock, Some(Duration::from_secs(10))).unwrap();
    c.simple(&Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 2, mode: Mode::Discard })).unwrap();
    let (reply, fds) = c.call(&Request::Map).unwrap();
    let Reply::Mapped(info) = reply else { panic!("{reply:?}") };
    assert_eq!(info.rings.len(), MAP_MAX_RINGS);
    assert_eq!(fds.len(), info.fd_count());
    assert!(fds.len() <= MAX_FDS);
    let first: Vec<u32> = info.rings.iter().map(|r| r.cpu).collect();
    assert_eq!(first, (0..MAP_MAX_RINGS as u32).collect::<Vec<_>>());
    // The rest, as a consumer finds them: in `status`, then `map_ring` each.
    let status = c.status().unwrap();
    assert_eq!(status.rings.len(), CPUS as usize);
    let mut mapped = first.len();
    for r in status.rings.iter().filter(|r| !first.contains(&r.cpu)) {
        let (reply, fds) = c.call(&Request::MapRing { cpu: r.cpu }).unwrap();
        let Reply::RingMapped(info) = reply else { panic!("{reply:?}") };
        assert_eq!((info.cpu, fds.len()), (r.cpu, 2));
        mapped += 1;
    }
    assert_eq!(mapped, CPUS as usize);
    assert_eq!(host.status().refcount, 1);
    assert_eq!(seen.lock().unwrap().as_slice(), &[], "nothing went wrong");
    assert_eq!(host.notices(), 0);
}

#[test]
fn a_dropped_connection_is_logged_with_its_pid_and_reason() {
    let (host, sock, _d, seen) = big_host("dropped");
    // A peer that asks and hangs up before the answer: the reply cannot be sent.
    let conn = Conn::connect(&sock).unwrap();
    conn.send(&encode_request(&Request::Status), &[]).unwrap();
    drop(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host.notices() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = seen.lock().unwrap();
    let [Notice::ConnectionDropped { pid, reason }] = seen.as_slice() else { panic!("{seen:?}") };
    // SO_PEERCRED holds the credentials of connect time: the peer's pid
    // survives its hang-up.
    assert_eq!(*pid, Some(std::process::id()), "{reason}");
    assert!(reason.contains("sending the reply to `status`"), "{reason}");
    assert_eq!(host.notices(), 1);
}
