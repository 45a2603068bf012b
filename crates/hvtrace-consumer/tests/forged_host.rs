//! A forged host: whoever answers on the control socket (a process that
//! took over its path, a man in the middle) hands the consumer a control,
//! data or metadata memfd it can still shrink, to truncate it under the
//! consumer's mapping and kill the consumer with `SIGBUS`. The consumer
//! refuses such a memfd before it maps it, with an error naming it, and goes
//! on with sealed ones.
//!
//! The impostor here relays to a real host and swaps one memfd of a reply
//! for an unsealed copy (same size, same bytes: nothing but the seal tells
//! them apart), which it truncates to nothing at the consumer's next
//! request, so a consumer that had mapped it would die, not pass.

mod common;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ConsumerError};
use hvtrace_proto::{decode_reply, ChannelConfig, Mode, Reply, Request, MAX_MESSAGE};
use hvtrace_sys::seqpacket::MAX_FDS;
use hvtrace_sys::{memfd, Conn, Listener};

/// The descriptor the impostor swaps.
#[derive(Clone, Copy, Debug)]
enum Forge {
    /// None: it relays honestly.
    Nothing,
    /// The control memfd of the `map` reply.
    Control,
    /// The data memfd of `rings[i]` in the `map` reply.
    Data(usize),
    /// The metadata log of the `map` reply.
    MetadataLog,
    /// The data memfd of a `map_ring` reply (a CPU that came online).
    HotplugData,
}

/// A memfd with the size and bytes of `fd`, and no seal.
fn unsealed_copy(fd: &OwnedFd) -> OwnedFd {
    let len = memfd::file_len(fd).unwrap();
    let mut bytes = vec![0; len as usize];
    File::from(fd.try_clone().unwrap()).read_exact_at(&mut bytes, 0).unwrap();
    let copy = memfd::create_memfd("hvtrace-data-forged", len).unwrap();
    File::from(copy.try_clone().unwrap()).write_all_at(&bytes, 0).unwrap();
    assert!(!memfd::shrink_is_sealed(&copy).unwrap());
    copy
}

/// An impostor serving `path`: relays one consumer's requests to the host
/// at `host` and the replies back, the descriptor `forge` names swapped for
/// an unsealed copy. Every copy it handed out is truncated to nothing when
/// the next request comes. Returns the thread (which ends when the
/// consumer hangs up) and how many descriptors it swapped so far.
fn impostor(path: &Path, host: &Path, forge: Forge) -> (JoinHandle<()>, Arc<AtomicUsize>) {
    let listener = Listener::bind(path, 0o600).unwrap();
    let upstream = Conn::connect(host).unwrap();
    let swapped = Arc::new(AtomicUsize::new(0));
    let count = swapped.clone();
    let relay = thread::spawn(move || {
        let consumer = listener.accept().unwrap();
        let mut buf = vec![0; MAX_MESSAGE];
        let mut forged: Vec<OwnedFd> = Vec::new();
        loop {
            let (n, _) = consumer.recv(&mut buf, 0).unwrap_or_default();
            for f in &forged {
                File::from(f.try_clone().unwrap()).set_len(0).unwrap();
            }
            if n == 0 {
                return;
            }
            upstream.send(&buf[..n], &[]).unwrap();
            let (n, mut fds) = upstream.recv(&mut buf, MAX_FDS).unwrap();
            let swap = match (decode_reply(&buf[..n]).unwrap(), forge) {
                (Reply::Mapped(_), Forge::Control) => Some(0),
                (Reply::Mapped(_), Forge::Data(i)) => Some(2 + 2 * i),
                (Reply::Mapped(info), Forge::MetadataLog) => Some(info.metadata_fd_index()),
                (Reply::RingMapped(_), Forge::HotplugData) => Some(0),
                _ => None,
            };
            if let Some(i) = swap {
                let copy = unsealed_copy(&fds[i]);
                fds[i] = copy.try_clone().unwrap();
                forged.push(copy);
                count.fetch_add(1, Ordering::Release);
            }
            let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            consumer.send(&buf[..n], &fds).unwrap();
        }
    });
    (relay, swapped)
}

#[test]
fn an_unsealed_control_data_or_metadata_memfd_is_refused_at_attach_and_sealed_ones_work() {
    let dir = TempDir::new("forged");
    let (host, sock) = host(&dir.0, &[0, 1], 2);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard });
    let cases = [
        (Forge::Control, "the control memfd"),
        (Forge::Data(1), "the data memfd of CPU 1"),
        (Forge::MetadataLog, "metadata log"),
    ];
    for (k, (forge, what)) in cases.into_iter().enumerate() {
        let fake = dir.0.join(format!("impostor{k}.sock"));
        let (relay, swapped) = impostor(&fake, &sock, forge);
        let out = dir.0.join(format!("trace{k}"));
        let e = Consumer::attach(&ConsumerConfig::new(&fake, &out)).unwrap_err();
        println!("{forge:?}: {e}");
        assert!(matches!(e, ConsumerError::Protocol(_)), "{forge:?}: {e:?}");
        assert!(e.to_string().ends_with(&format!("{what}: not sealed against shrinking")), "{forge:?}: {e}");
        relay.join().unwrap();
        assert_eq!(swapped.load(Ordering::Acquire), 1, "{forge:?}");
        // Refused before the trace directory was made: a retry may use it.
        assert!(!out.exists(), "{forge:?}: a refused host left {} behind", out.display());
        // The consumer that gave up holds nothing on the host.
        wait_refcount_zero(&mut ctl);
    }

    // The same host relayed honestly: its sealed memfds are consumed whole.
    let fake = dir.0.join("honest.sock");
    let (relay, swapped) = impostor(&fake, &sock, Forge::Nothing);
    let consumer = Consumer::attach(&ConsumerConfig::new(&fake, dir.0.join("honest"))).unwrap();
    let run = thread::spawn(move || consumer.run());
    let emitted = [write_events(&host, 0, 0, 300), write_events(&host, 1, 1, 300)];
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    relay.join().unwrap();
    assert_eq!(swapped.load(Ordering::Acquire), 0);
    assert!(report.is_whole(), "{report}");
    for (r, e) in report.per_ring.iter().zip(&emitted) {
        assert_eq!(check_stream(&r.file, e.cpu).records, e.ok, "CPU {}", e.cpu);
    }
}

#[test]
fn a_ring_that_comes_online_with_an_unsealed_memfd_is_refused_and_the_others_go_on() {
    let dir = TempDir::new("forged-hotplug");
    let (host, sock) = host(&dir.0, &[0], 2);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard });
    let fake = dir.0.join("impostor.sock");
    let (relay, swapped) = impostor(&fake, &sock, Forge::HotplugData);
    let consumer = Consumer::attach(&ConsumerConfig::new(&fake, dir.0.join("trace"))).unwrap();
    let run = thread::spawn(move || consumer.run());
    host.add_cpu(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while swapped.load(Ordering::Acquire) == 0 {
        assert!(Instant::now() < deadline, "the consumer never asked for the new ring");
        thread::sleep(Duration::from_millis(5));
    }
    // Recording goes on on both; the forged memfd is truncated at the next
    // request (the consumer's `status` on stop), before the final drain.
    let e0 = write_events(&host, 0, 0, 300);
    write_events(&host, 1, 1, 300);
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    relay.join().unwrap();
    let note = report.notes.iter().find(|n| n.starts_with("CPU 1 came online")).unwrap_or_else(|| panic!("{report}"));
    assert!(note.ends_with("the data memfd of CPU 1: not sealed against shrinking"), "{note}");
    assert_eq!(report.per_ring.iter().map(|r| r.cpu).collect::<Vec<_>>(), [0]);
    assert_eq!(check_stream(&report.per_ring[0].file, 0).records, e0.ok);
}
