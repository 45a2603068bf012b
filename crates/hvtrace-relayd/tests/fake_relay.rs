//! The client against a scripted relay on loopback: a relay that refuses
//! the session, one that hangs up, one that stalls, one too old. (The
//! real lttng-relayd is exercised by the consumer's and the CLI's tests.)

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use hvtrace_relayd::{Relayd, RelaydError, RelaydUrl, SessionParams};

/// What the scripted relay does after answering `VERSION` with `minor`.
#[derive(Clone, Copy)]
enum Then {
    /// Answers `CREATE_SESSION` with this return code.
    Reply(u32),
    /// Closes the connection.
    HangUp,
    /// Reads and never answers.
    Stall,
}

/// Control and data listeners on free loopback ports, and their URL.
fn listeners() -> (TcpListener, TcpListener, RelaydUrl) {
    let ctrl = TcpListener::bind("127.0.0.1:0").unwrap();
    let data = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = RelaydUrl {
        host: "127.0.0.1".into(),
        control_port: ctrl.local_addr().unwrap().port(),
        data_port: data.local_addr().unwrap().port(),
    };
    (ctrl, data, url)
}

fn fake(minor: u32, then: Then) -> (RelaydUrl, std::thread::JoinHandle<Vec<u8>>) {
    let (ctrl, data, url) = listeners();
    let h = std::thread::spawn(move || {
        let _data = data; // connections wait in its backlog
        let (mut c, _) = ctrl.accept().unwrap();
        let mut version = [0u8; 32];
        c.read_exact(&mut version).unwrap();
        let mut reply = 2u32.to_be_bytes().to_vec();
        reply.extend_from_slice(&minor.to_be_bytes());
        c.write_all(&reply).unwrap();
        let mut create = vec![0u8; 24 + 327];
        if c.read_exact(&mut create).is_err() {
            return version.to_vec(); // the client gave up after VERSION
        }
        match then {
            Then::Reply(code) => {
                let mut r = 1u64.to_be_bytes().to_vec();
                r.extend_from_slice(&code.to_be_bytes());
                c.write_all(&r).unwrap();
            }
            Then::HangUp => drop(c),
            Then::Stall => std::thread::sleep(Duration::from_secs(2)),
        }
        create
    });
    (url, h)
}

fn params() -> SessionParams {
    SessionParams { session: "s".into(), hostname: "h".into(), live_timer_us: 1_000_000, pathname: "h/s".into() }
}

#[test]
fn a_refused_session_says_which_command_and_code() {
    let (url, h) = fake(13, Then::Reply(1)); // LTTNG_ERR_UNK
    let e = Relayd::connect(&url, &params(), Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, RelaydError::Refused { command: "CREATE_SESSION", code: 1 }), "{e:?}");
    assert!(e.to_string().contains("refused CREATE_SESSION"), "{e}");
    // What was sent: the 2.10 session message, names NUL-padded.
    let create = h.join().unwrap();
    assert_eq!(u32::from_be_bytes(create[16..20].try_into().unwrap()), 2, "CREATE_SESSION");
    assert_eq!(&create[24..26], b"s\0");
    assert_eq!(u32::from_be_bytes(create[24 + 319..24 + 323].try_into().unwrap()), 1_000_000);
}

#[test]
fn a_relay_that_hangs_up_or_stalls_is_reported_as_such() {
    let (url, h) = fake(10, Then::HangUp);
    let e = Relayd::connect(&url, &params(), Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("went away during CREATE_SESSION"), "{e}");
    h.join().unwrap();

    let (url, h) = fake(10, Then::Stall);
    let t = Instant::now();
    let e = Relayd::connect(&url, &params(), Duration::from_millis(300)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "the timeout bounds the wait");
    assert!(e.to_string().contains("in time"), "{e}");
    h.join().unwrap();
}

#[test]
fn a_relay_without_indexes_is_refused_and_bad_names_never_leave() {
    let (url, h) = fake(2, Then::Reply(10));
    let e = Relayd::connect(&url, &params(), Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("protocol 2.2"), "{e}");
    h.join().unwrap();
    // Checked before connecting: nothing listens on port 1.
    let nowhere = RelaydUrl { host: "127.0.0.1".into(), control_port: 1, data_port: 1 };
    for (p, what) in [
        (SessionParams { session: "a/b".into(), ..params() }, "session name"),
        (SessionParams { session: ".s".into(), ..params() }, "session name"),
        (SessionParams { hostname: "x".repeat(64), ..params() }, "host name"),
        (SessionParams { pathname: "h/../s".into(), ..params() }, "trace path"),
        (SessionParams { live_timer_us: 0, ..params() }, "live timer"),
    ] {
        let e = Relayd::connect(&nowhere, &p, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, RelaydError::BadName { .. }) && e.to_string().contains(what), "{e}");
    }
    let e = Relayd::connect(&nowhere, &params(), Duration::from_secs(1)).unwrap_err();
    assert!(e.to_string().contains("cannot connect to the relay's control port 127.0.0.1:1"), "{e}");
}

/// Packets go out without waiting for their index's reply; replies are read
/// later, in order, and a refused index is the error of the call that reads
/// it, with the packets not acknowledged still counted.
#[test]
fn index_replies_are_read_late_and_a_refusal_still_surfaces() {
    use hvtrace_relayd::PacketIndex;
    let (ctrl, data, url) = listeners();
    let status = |id: u64| {
        let mut r = id.to_be_bytes().to_vec();
        r.extend_from_slice(&10u32.to_be_bytes());
        r
    };
    let relay = std::thread::spawn(move || {
        let (mut c, _) = ctrl.accept().unwrap();
        let (mut d, _) = data.accept().unwrap();
        let mut buf = vec![0u8; 32];
        c.read_exact(&mut buf).unwrap(); // VERSION
        c.write_all(&[0, 0, 0, 2, 0, 0, 0, 10]).unwrap();
        for (len, id) in [(327, 1), (4376, 7), (4376, 8)] {
            // CREATE_SESSION, ADD_STREAM metadata, ADD_STREAM data
            buf.resize(24 + len, 0);
            c.read_exact(&mut buf).unwrap();
            c.write_all(&status(id)).unwrap();
        }
        // The three packets and their indexes, all sent before any reply.
        let mut packets = Vec::new();
        for k in 0..3u64 {
            let mut hdr = [0u8; 32];
            d.read_exact(&mut hdr).unwrap();
            assert_eq!(u64::from_be_bytes(hdr[16..24].try_into().unwrap()), k, "net_seq");
            let mut p = vec![0u8; u32::from_be_bytes(hdr[24..28].try_into().unwrap()) as usize];
            d.read_exact(&mut p).unwrap();
            packets.push(p);
            let mut index = [0u8; 24 + 80];
            c.read_exact(&mut index).unwrap();
            assert_eq!(u64::from_be_bytes(index[32..40].try_into().unwrap()), k, "the index's net_seq");
        }
        // OK, OK, then "no" (LTTNG_ERR_UNK).
        for code in [10u32, 10, 1] {
            c.write_all(&code.to_be_bytes()).unwrap();
        }
        packets
    });
    let mut r = Relayd::connect(&url, &params(), Duration::from_secs(5)).unwrap();
    let mut s = r.add_stream("chan_0").unwrap();
    let packets: Vec<Vec<u8>> = (0..3u8).map(|k| vec![k; 1000 + usize::from(k)]).collect();
    for p in &packets {
        r.send_packet(&mut s, p, &PacketIndex { packet_size_bits: p.len() as u64 * 8, ..PacketIndex::default() })
            .unwrap();
    }
    assert_eq!(r.unacked(), 3, "no reply waited for");
    let e = r.close_stream(s).unwrap_err();
    assert!(matches!(e, RelaydError::Refused { command: "SEND_INDEX", code: 1 }), "{e:?}");
    assert_eq!(r.unacked(), 1, "two acknowledged, the refused one not");
    assert_eq!(relay.join().unwrap(), packets, "header and packet arrive whole");
}
