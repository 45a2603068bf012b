//! Garbage on the control socket of a live host: thousands of random,
//! truncated, mangled and oversized messages (some carrying descriptors),
//! from several connections at once, while a writer records. Each gets an
//! error reply (or, for an empty datagram, the connection is dropped); the
//! host never panics and still answers `status` afterwards.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hvtrace_core::EventSet;
use hvtrace_ctl::Client;
use hvtrace_proto::{
    decode_reply, encode_request, kind, ChannelConfig, ChannelState, Mode, Reply, Request, HEADER_LEN, MAGIC,
    MAX_MESSAGE, VERSION,
};
use hvtrace_sys::seqpacket::{Conn, MAX_FDS};
use hvtrace_sys::EventFd;

mod common;

use common::*;

hvtrace_core::events! {
    /// Test events.
    pub mod ev ("test") {
        /// A numbered event.
        fn tick(n: u64);
    }
}

const MESSAGES_PER_CONN: usize = 2500;
const CONNS: u64 = 3;

fn frame(kind: u16, version: u16, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + payload.len());
    m.extend_from_slice(&MAGIC);
    m.extend_from_slice(&version.to_le_bytes());
    m.extend_from_slice(&kind.to_le_bytes());
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

fn valid_request(rng: &mut Rng) -> Request {
    match rng.below(9) {
        0 => Request::Create(ChannelConfig {
            subbuf_size: 4096 << rng.below(3),
            num_subbuf: 2 << rng.below(3),
            mode: if rng.below(2) == 0 { Mode::Discard } else { Mode::Overwrite },
        }),
        1 => Request::Start,
        2 => Request::Stop,
        3 => Request::Destroy,
        4 => Request::Map,
        5 => Request::MapRing { cpu: rng.below(6) as u32 },
        6 => Request::Unmap,
        7 => Request::Status,
        _ => Request::Flush,
    }
}

/// One hostile message. The empty datagram (which the host reads as the
/// peer closing) is `None`.
fn garbage(rng: &mut Rng) -> Option<Vec<u8>> {
    let kinds = [kind::CREATE, kind::MAP_RING, kind::STATUS, kind::MAP, kind::OK, kind::STATUS_REPLY, 0, 0xffff];
    Some(match rng.below(12) {
        0 => {
            let m = rng.bytes(64);
            if m.is_empty() {
                return None;
            }
            m
        }
        // A well-framed message of any kind with a random payload.
        1 | 2 => {
            let k = if rng.below(2) == 0 { kinds[rng.below(kinds.len() as u64) as usize] } else { rng.next() as u16 };
            let p = rng.bytes(40);
            frame(k, VERSION, p.len() as u32, &p)
        }
        // A valid request cut short.
        3 => {
            let m = encode_request(&valid_request(rng));
            let cut = rng.below(m.len() as u64) as usize;
            if cut == 0 {
                return None;
            }
            m[..cut].to_vec()
        }
        // A valid request with bytes flipped.
        4 => {
            let mut m = encode_request(&valid_request(rng));
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(m.len() as u64) as usize;
                m[i] ^= 1 << rng.below(8);
            }
            m
        }
        // Trailing bytes, with and without a matching length.
        5 => {
            let mut m = encode_request(&valid_request(rng));
            m.push(rng.next() as u8);
            m.extend(rng.bytes(16));
            if rng.below(2) == 0 {
                let len = (m.len() - HEADER_LEN) as u32;
                m[8..12].copy_from_slice(&len.to_le_bytes());
            }
            m
        }
        // Lying length fields.
        6 => {
            let p = rng.bytes(16);
            let len = [u32::MAX, MAX_MESSAGE as u32, p.len() as u32 + 1, 0][rng.below(4) as usize];
            frame(kind::CREATE, VERSION, len, &p)
        }
        // Other versions.
        7 => frame(kind::STATUS, rng.next() as u16 | 2, 0, &[]),
        // Oversized datagrams (kept rare: they are slow to send).
        8 if rng.below(20) == 0 => {
            let n = MAX_MESSAGE + 1 + rng.below(64 * 1024) as usize;
            let mut m = frame(kind::STATUS, VERSION, (n - HEADER_LEN) as u32, &[]);
            m.resize(n, 0xEE);
            m
        }
        // A Create whose config is out of range or huge (payload of random varints).
        9 => {
            let mut p = Vec::new();
            for _ in 0..3 {
                let mut v = rng.next() >> rng.below(64);
                loop {
                    let b = (v & 0x7f) as u8;
                    v >>= 7;
                    p.push(if v == 0 { b } else { b | 0x80 });
                    if v == 0 {
                        break;
                    }
                }
            }
            frame(kind::CREATE, VERSION, p.len() as u32, &p)
        }
        // Everything else: a legitimate request, so the session state moves.
        _ => encode_request(&valid_request(rng)),
    })
}

#[derive(Default, Debug)]
struct Tally {
    errors: u64,
    answered: u64,
    dropped: u64,
    empty_sent: u64,
}

fn hammer(sock: &Path, seed: u64, fd_to_pass: &EventFd) -> Tally {
    let mut rng = Rng(seed);
    let connect = || {
        let c = Conn::connect(sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c
    };
    let mut conn = connect();
    let mut t = Tally::default();
    let mut buf = vec![0u8; MAX_MESSAGE];
    for _ in 0..MESSAGES_PER_CONN {
        let Some(msg) = garbage(&mut rng) else {
            // An empty datagram reads as end-of-connection: the host drops us.
            conn.send(&[], &[]).unwrap();
            t.empty_sent += 1;
            let (n, _) = conn.recv(&mut buf, MAX_FDS).expect("the host closes, it does not hang");
            assert_eq!(n, 0, "the host answered an empty datagram");
            t.dropped += 1;
            conn = connect();
            continue;
        };
        // Unexpected descriptors now and then.
        let fds = if rng.below(16) == 0 { vec![fd_to_pass.as_fd()] } else { vec![] };
        if let Err(e) = conn.send(&msg, &fds) {
            panic!("sending a {}-byte message: {e}", msg.len());
        }
        let (n, _fds) = conn.recv(&mut buf, MAX_FDS).expect("every message gets an answer");
        if n == 0 {
            t.dropped += 1;
            conn = connect();
            continue;
        }
        match decode_reply(&buf[..n]).expect("the host's replies are well formed") {
            Reply::Error { message, .. } => {
                assert!(!message.is_empty());
                t.errors += 1;
            }
            _ => t.answered += 1,
        }
    }
    t
}

#[test]
fn host_answers_garbage_with_errors_and_keeps_serving() {
    // A panic in any host thread fails the test (a panicking connection
    // thread would otherwise only look like a dropped connection).
    static PANICS: AtomicU64 = AtomicU64::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        default_hook(info);
    }));

    let (host, sock, _dir) = common::serve("garbage", ev::Events::EVENTS, 4);

    // A writer records throughout (into whatever channel exists).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (host, stop) = (host.clone(), stop.clone());
        std::thread::spawn(move || {
            let w = host.writer_for_cpu(1);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = ev::tick(&w, n);
                n += 1;
                if n.is_multiple_of(64) {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        })
    };
    let passed = EventFd::new().unwrap();
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..CONNS)
            .map(|i| {
                let (sock, passed) = (&sock, &passed);
                s.spawn(move || hammer(sock, 0x9e37_79b9_7f4a_7c15 ^ (i + 1), passed))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    let total: u64 = tallies.iter().map(|t| t.errors + t.answered + t.dropped).sum();
    println!("{tallies:?}");
    assert_eq!(total, CONNS * MESSAGES_PER_CONN as u64);
    for t in &tallies {
        assert_eq!(t.dropped, t.empty_sent, "only an empty datagram closes a connection: {t:?}");
        assert!(t.errors > MESSAGES_PER_CONN as u64 / 2, "most garbage is refused: {t:?}");
    }
    assert_eq!(PANICS.load(Ordering::Relaxed), 0, "a host thread panicked");

    // Still serving, and still in a consistent state.
    let mut c = Client::connect(&sock, Some(Duration::from_secs(10))).unwrap();
    let st = c.status().unwrap();
    println!("after the garbage: {st:?}");
    if st.state != ChannelState::Empty && st.state != ChannelState::Destroyed {
        let _ = c.simple(&Request::Destroy);
    }
    // The hammering connections are closed: the host drops their references.
    let t = std::time::Instant::now();
    let st = loop {
        let st = c.status().unwrap();
        if st.refcount == 0 || t.elapsed() > Duration::from_secs(3) {
            break st;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(matches!(st.state, ChannelState::Empty | ChannelState::Destroyed), "{st:?}");
    assert_eq!(st.refcount, 0, "every hammering connection's reference was dropped");
    c.simple(&Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard })).unwrap();
    c.simple(&Request::Start).unwrap();
    assert_eq!(c.status().unwrap().state, ChannelState::Started);
    host.shutdown();
}
