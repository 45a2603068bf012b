//! The consumer's disk fails: a full file system mid-session (a 256 KiB
//! tmpfs, and a 512 KiB ext4 on a loop device, where packets are written
//! with direct I/O), and an output directory on a read-only file system. The
//! consumer says so clearly and counts the loss; the host is unharmed (it
//! still serves, its status is fine, and a new session works); whatever was
//! written stays readable.
//!
//! Mounting needs root (and a kernel that lets this process mount); where it
//! cannot, the tests print `SKIP:` and return.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ConsumerError, ExitReason};
use hvtrace_proto::{ChannelConfig, ChannelState, Mode, Request};

/// A tmpfs mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, opts: &str, test: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        match Command::new("mount").args(["-t", "tmpfs", "-o", opts, "tmpfs"]).arg(dir).output() {
            Ok(o) if o.status.success() => Some(Mount(dir.to_path_buf())),
            Ok(o) => {
                println!(
                    "SKIP: {test}: cannot mount a tmpfs ({opts}) on {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("SKIP: {test}: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Mount {
    /// A tiny ext4 file system (an image of `kib` KiB in `dir`, loop-mounted
    /// on `dir/mnt`): a real block device, so writes there are direct I/O.
    fn ext4(dir: &Path, kib: u64, test: &str) -> Option<Mount> {
        let img = dir.join("ext4.img");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::File::create(&img).unwrap().set_len(kib * 1024).unwrap();
        let run = |cmd: &mut Command| match cmd.output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(e.to_string()),
        };
        let made = run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))
            .and_then(|()| run(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&mnt)));
        match made {
            Ok(()) => Some(Mount(mnt)),
            Err(e) => {
                println!("SKIP: {test}: cannot make and loop-mount an ext4 image: {e}");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_is_reported_counted_and_harmless_to_the_host() {
    let dir = TempDir::new("diskfull");
    let Some(mnt) = Mount::tmpfs(&dir.0.join("mnt"), "size=256k", "disk_full") else { return };
    disk_full(&dir, mnt, Some(hvtrace_consumer::DIRECT_MIN));
}

#[test]
fn disk_full_with_direct_io_is_reported_counted_and_harmless_to_the_host() {
    let dir = TempDir::new("diskfull-direct");
    let Some(mnt) = Mount::ext4(&dir.0, 512, "disk_full_direct") else { return };
    // 4 KiB packets: direct from the first byte (the default starts at 512 KiB).
    let report = disk_full(&dir, mnt, Some(4096));
    assert!(report.per_ring.iter().any(|r| r.direct_packets > 0), "direct I/O was used on ext4: {report:?}");
}

/// Fills the file system mounted at `mnt` from a consumer; checks the loss
/// is counted and said, whole packets only are in the files, and the host is
/// unharmed. Returns the consumer's report.
fn disk_full(dir: &TempDir, mnt: Mount, direct_min: Option<usize>) -> hvtrace_consumer::Report {
    let (host, sock) = host(&dir.0, &[0, 1], 2);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 8, mode: Mode::Discard });
    let out = mnt.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig { direct_min, ..ConsumerConfig::new(&sock, &out) }).unwrap();
    let run = std::thread::spawn(move || consumer.run());

    // Far more than 256 KiB, in rounds, so the consumer keeps up and hits
    // the full disk (rather than the host discarding everything).
    let mut emitted = [Emitted::default(); 2];
    for round in 0..60u32 {
        for cpu in 0..2u32 {
            // A writer id per round: each call numbers its records from 0.
            let e = write_events(&host, round * 2 + cpu, cpu, 400);
            emitted[cpu as usize].ok += e.ok;
            emitted[cpu as usize].lost += e.lost;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // The host is fine while the consumer fails.
    let st = ctl.status().unwrap();
    assert_eq!((st.state, st.refcount), (ChannelState::Started, 1));
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().expect("a full disk does not make the consumer fail as a whole");
    println!("{report}");
    assert_eq!(report.exit, ExitReason::Destroyed);
    let text = report.to_string();
    assert!(text.contains("No space left on device"), "the report says why: {text}");
    assert!(report.packets_lost() > 0, "the loss is counted: {text}");
    let mut written_records = 0;
    for r in &report.per_ring {
        // Every delivered packet is either in the file or counted as lost.
        assert_eq!(r.packets + r.lost_packets + r.torn, r.counters.delivered_subbufs, "cpu {}: {r:?}", r.cpu);
        // What was written stays readable, whole packets only.
        let s = check_stream(&r.file, r.cpu);
        assert_eq!(s.packets.len() as u64, r.packets + u64::from(r.trailer), "cpu {}", r.cpu);
        written_records += s.records;
        assert_eq!(r.counters.discarded, emitted[r.cpu as usize].lost, "cpu {}: the host's counts are exact", r.cpu);
    }
    assert!(written_records > 0);
    assert!(report.per_ring.iter().any(|r| r.write_errors > 0 && r.first_error.is_some()));
    // The loss is damage (`consume` exits 1), recorded in the trace
    // directory even though the disk is full, where `check` finds it.
    assert!(!report.is_whole(), "{text}");
    let account =
        hvtrace_reader::Account::parse(&std::fs::read_to_string(out.join(".hvtrace-consumer")).unwrap()).unwrap();
    for r in &report.per_ring {
        let st = account.stream(r.cpu).unwrap();
        let named: u64 = st.lost.iter().map(|l| l.last - l.first + 1).sum();
        assert_eq!(named, r.lost_packets, "cpu {}: every lost packet named: {account:?}", r.cpu);
        assert_eq!(st.next - st.first, r.counters.delivered_subbufs, "cpu {}", r.cpu);
    }
    let check = hvtrace_reader::check(&out).unwrap();
    assert!(!check.is_intact());
    let missing: u64 = check
        .streams
        .iter()
        .flat_map(|s| &s.report.problems)
        .map(|p| match p.kind {
            hvtrace_reader::ProblemKind::MissingPackets { first, last, consumer_lost: true } => last - first + 1,
            _ => 0,
        })
        .sum();
    assert_eq!(missing, report.per_ring.iter().map(|r| r.lost_packets).sum::<u64>(), "check names every lost packet");

    // The host still serves: a new session, consumed elsewhere, works.
    let mut c = client(&sock);
    let st = c.status().unwrap();
    assert_eq!((st.state, st.refcount), (ChannelState::Destroyed, 0));
    c.simple(&Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard })).unwrap();
    c.simple(&Request::Start).unwrap();
    let ok = Consumer::attach(&ConsumerConfig::new(&sock, dir.0.join("ok"))).unwrap();
    let h = ok.shutdown_handle();
    let run = std::thread::spawn(move || ok.run());
    let e = write_events(&host, 0, 0, 100);
    h.shutdown();
    let r = run.join().unwrap().unwrap();
    assert_eq!(check_stream(&r.per_ring[0].file, 0).records, e.ok);
    drop(mnt);
    report
}

#[test]
fn read_only_output_is_refused_clearly_and_the_host_is_unharmed() {
    let dir = TempDir::new("readonly");
    let Some(mnt) = Mount::tmpfs(&dir.0.join("ro"), "ro,size=64k", "read_only_output") else { return };
    let (host, sock) = host(&dir.0, &[0], 1);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard });

    // A directory to create there, and the (empty) mount point itself.
    for out in [mnt.0.join("trace"), mnt.0.clone()] {
        let e = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap_err();
        let msg = e.to_string();
        println!("{}: {msg}", out.display());
        assert!(matches!(e, ConsumerError::Output { .. }), "{e:?}");
        assert!(msg.contains("Read-only file system") && msg.contains(&*out.to_string_lossy()), "{msg}");
        // The consumer that gave up has no reference left on the host.
        wait_refcount_zero(&mut ctl);
    }
    // The host still records, serves, and takes a consumer that can write.
    let w = write_events(&host, 0, 0, 50);
    assert_eq!(w.lost, 0);
    let st = ctl.status().unwrap();
    assert_eq!((st.state, st.refcount), (ChannelState::Started, 0));
    let ok = Consumer::attach(&ConsumerConfig::new(&sock, dir.0.join("ok"))).unwrap();
    let h = ok.shutdown_handle();
    let run = std::thread::spawn(move || ok.run());
    std::thread::sleep(Duration::from_millis(50));
    h.shutdown();
    let r = run.join().unwrap().unwrap();
    assert_eq!(check_stream(&r.per_ring[0].file, 0).records, 50);
    drop(mnt);
}

/// Issue 16: classes registered mid-session that no longer fit on the disk.
/// The append fails part way; `metadata` is cut back to its last whole
/// block, so it stays valid TSDL, and the report says the trace lacks
/// classes (not whole), while the packets still go on. A class that would
/// fit again later is not appended either: after a gap its id would not
/// follow the last one written, which hvtrace's reader refuses.
#[test]
fn metadata_that_no_longer_fits_is_cut_back_to_whole_blocks_and_reported() {
    use hvtrace_core::{Field, FieldKind, Sink};
    let dir = TempDir::new("diskfull-metadata");
    let Some(mnt) = Mount::tmpfs(&dir.0.join("mnt"), "size=64k", "metadata_full") else { return };
    let (host, sock) = host(&dir.0, &[0], 1);
    let mut ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 8, mode: Mode::Discard });
    let out = mnt.0.join("trace");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();
    let initial = std::fs::read_to_string(out.join("metadata")).unwrap();
    let run = std::thread::spawn(move || consumer.run());
    // Some 280 KiB of classes in one go, then a record: the consumer's one
    // append cannot fit 64 KiB.
    let fields: Vec<(String, FieldKind)> = (0..20).map(|i| (format!("field_{i}"), <u64 as Field>::KIND)).collect();
    let fields: Vec<(&str, FieldKind)> = fields.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    let mut last = 0;
    for i in 0..150 {
        last = host.register_event(&format!("big_class_{i}"), &fields).unwrap();
    }
    let w = host.writer_for_cpu(0);
    w.record(last, 20 * 8, |e| (0..20u64).for_each(|v| v.encode(e))).unwrap();
    // Delivered now: the consumer's append fails before it writes the packet.
    ctl.simple(&Request::Flush).unwrap();
    let stream = out.join("channel0_0");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&stream).unwrap().len() == 0 {
        assert!(Instant::now() < deadline, "the packet never reached {}", stream.display());
        std::thread::sleep(Duration::from_millis(5));
    }
    let md = std::fs::read_to_string(out.join("metadata")).unwrap();
    assert!(md == initial, "not cut back to the last whole block: {} bytes, {} at attach", md.len(), initial.len());
    // The cut freed the space, but a class now would follow a gap.
    let small = host.register_event("small", &[("v", <u32 as Field>::KIND)]).unwrap();
    w.record(small, 4, |e| 7u32.encode(e)).unwrap();
    ctl.simple(&Request::Stop).unwrap();
    ctl.simple(&Request::Destroy).unwrap();
    let report = run.join().unwrap().unwrap();
    println!("{report}");
    let m = &report.metadata;
    assert_eq!(m.write_errors, 2, "the failed append and the one not tried: {m:?}");
    assert!(m.first_error.as_deref().unwrap().contains("No space left on device"), "{m:?}");
    assert!(!report.is_whole() && report.to_string().contains("DAMAGED: classes"), "{report}");
    let md = std::fs::read_to_string(out.join("metadata")).unwrap();
    assert!(md == initial, "appended after the cut: {} bytes, {} at attach", md.len(), initial.len());
    let parsed = hvtrace_reader::tsdl::parse(&md).unwrap();
    assert_eq!(parsed.schema.events.len(), 1);
    assert_eq!(report.packets(), 2, "the packets themselves were written: {report}");
}
