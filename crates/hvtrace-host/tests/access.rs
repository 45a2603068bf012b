//! What a consumer can do with what the host hands it: the socket file is
//! 0600; data memfds arrive read-only and sealed (no writable mapping, no
//! write, no resize, no hole punching — not even through a descriptor
//! reopened read-write via `/proc`); the control memfd is writable but its
//! size is sealed. (A peer of another uid being refused is tested with the
//! real binary in `crates/hvtrace/tests/faults.rs`.)

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, PermissionsExt};
use std::time::Duration;

use hvtrace_core::EventSet;
use hvtrace_ctl::Client;
use hvtrace_proto::{ChannelConfig, Mode, Reply, Request};
use hvtrace_sys::{memfd, SharedMapping};

mod common;

hvtrace_core::events! {
    /// Test events.
    pub mod ev ("test") {
        /// A numbered event.
        fn tick(n: u64);
    }
}

const F_SEAL_SEAL: u32 = 0x1;
const F_SEAL_SHRINK: u32 = 0x2;
const F_SEAL_GROW: u32 = 0x4;
const F_SEAL_FUTURE_WRITE: u32 = 0x10;

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn punch_hole(f: &File, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let r = unsafe {
        libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, len as i64)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Everything a consumer could try on a data memfd (or the metadata log) it received.
fn check_data_fd(fd: &OwnedFd, len: u64, what: &str) {
    // SAFETY: F_GETFL on a descriptor we own.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY, "{what}: handed out read-only");
    let seals = memfd::seals(fd).unwrap();
    let want = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE;
    assert_eq!(seals & want, want, "{what}: seals {seals:#x}");
    assert!(SharedMapping::map_ro(fd, len as usize).is_ok(), "{what}: readable");
    assert!(SharedMapping::map_rw(fd, len as usize).is_err(), "{what}: mapped writable");
    let f = File::from(fd.try_clone().unwrap());
    assert!(f.set_len(len * 2).is_err(), "{what}: grown");
    assert!(f.set_len(0).is_err(), "{what}: shrunk");
    assert!(f.write_at(b"x", 0).is_err(), "{what}: written");
    // The read-only descriptor is not the protection: the seals are. A
    // consumer can reopen any memfd read-write through /proc.
    let rw = File::options().read(true).write(true).open(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    assert_eq!(errno(&SharedMapping::map_rw(&rw, len as usize).unwrap_err()), libc::EPERM, "{what}: rw mmap");
    assert_eq!(errno(&rw.write_at(b"x", 0).unwrap_err()), libc::EPERM, "{what}: write(2) via /proc");
    assert_eq!(errno(&rw.set_len(len * 2).unwrap_err()), libc::EPERM, "{what}: grow via /proc");
    assert_eq!(errno(&rw.set_len(4096).unwrap_err()), libc::EPERM, "{what}: shrink via /proc");
    assert_eq!(errno(&punch_hole(&rw, len).unwrap_err()), libc::EPERM, "{what}: hole punched");
    // F_SEAL_SEAL: the seals cannot be changed either.
    assert!(memfd::seal_size(fd).is_err(), "{what}: seals changed");
    assert_eq!(f.metadata().unwrap().len(), len, "{what}: size unchanged");
}

#[test]
fn socket_is_private_and_handed_out_memory_is_sealed() {
    let (host, sock, _dir) = common::serve("access", ev::Events::EVENTS, 4);

    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "control socket mode");

    let mut c = Client::connect(&sock, Some(Duration::from_secs(10))).unwrap();
    c.simple(&Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard })).unwrap();
    c.simple(&Request::Start).unwrap();
    let w = host.writer_for_cpu(0);
    for n in 0..100 {
        ev::tick(&w, n).unwrap();
    }
    let (reply, fds) = c.call(&Request::Map).unwrap();
    let Reply::Mapped(info) = reply else { panic!("{reply:?}") };
    for (k, r) in info.rings.iter().enumerate() {
        check_data_fd(&fds[2 + 2 * k], r.data_len, &format!("data memfd of CPU {}", r.cpu));
    }
    // The metadata log, which grows while consumers read it: the same.
    check_data_fd(&fds[info.metadata_fd_index()], info.metadata_len, "metadata log");

    // The control memfd: writable, size sealed.
    let ctrl = &fds[0];
    let seals = memfd::seals(ctrl).unwrap();
    assert_eq!(seals & (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW), F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW);
    assert!(SharedMapping::map_rw(ctrl, info.ctrl_len as usize).is_ok(), "the control memfd is the consumer's");
    let f = File::from(ctrl.try_clone().unwrap());
    assert_eq!(errno(&f.set_len(info.ctrl_len * 2).unwrap_err()), libc::EPERM, "control memfd grown");
    assert_eq!(errno(&f.set_len(0).unwrap_err()), libc::EPERM, "control memfd shrunk");
    assert_eq!(f.metadata().unwrap().len(), info.ctrl_len);

    // A ring that appears later is handed out the same way.
    host.add_cpu(3).unwrap();
    let (reply, fds) = c.call(&Request::MapRing { cpu: 3 }).unwrap();
    let Reply::RingMapped(r) = reply else { panic!("{reply:?}") };
    check_data_fd(&fds[0], r.data_len, "hotplugged data memfd");

    // The host is unharmed by all that.
    for n in 0..100 {
        ev::tick(&w, n).unwrap();
    }
    assert_eq!(c.status().unwrap().refcount, 1);
    host.shutdown();
}
