//! Anonymous shared-memory files (`memfd_create(2)`) and file seals.
//!
//! The host creates one memfd per ring for data (`hvtrace-data-*`) and one per
//! channel for control (`hvtrace-ctrl-*`). Data memfds reach the consumer as
//! read-only descriptors made by [`reopen_read_only`] *and* sealed with
//! [`seal_for_readers`]: the seal is what really makes the memory read-only,
//! because whoever holds any descriptor of a memfd can reopen it read-write
//! through `/proc/self/fd/N` (memfd inodes have mode 0777).
//! The control memfd, which the consumer must be able to write, should get
//! [`seal_size`] so that the consumer cannot shrink it under the host's
//! mapping (which would make the host take `SIGBUS`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};

/// Creates a memfd named `name` (shown as `/memfd:NAME` in `/proc/PID/maps`),
/// with `MFD_CLOEXEC | MFD_ALLOW_SEALING`, and sets its size to `len` bytes
/// (zero-filled).
///
/// The name is passed through unchanged; hvtrace uses `hvtrace-data-*` and
/// `hvtrace-ctrl-*`. The kernel truncates names longer than 249 bytes; a name
/// containing a NUL byte is rejected with `InvalidInput`.
pub fn create_memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    Ok(fd)
}

/// Seals a memfd for sharing with readers: adds `F_SEAL_SHRINK`,
/// `F_SEAL_GROW`, `F_SEAL_FUTURE_WRITE` and `F_SEAL_SEAL`.
///
/// Call it *after* the producer has created its own writable mapping
/// ([`crate::SharedMapping::map_rw`]): `F_SEAL_FUTURE_WRITE` forbids every
/// *new* writable mapping and every `write(2)` through any descriptor
/// (including one reopened `O_RDWR` via `/proc`), while mappings that already
/// exist keep working. The size can no longer change, so a reader's mapping
/// can never `SIGBUS`, and no further seal can be added or removed.
///
/// Needs Linux 5.1 or later (`F_SEAL_FUTURE_WRITE`).
pub fn seal_for_readers<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE | SealFlags::SEAL)?;
    Ok(())
}

/// Seals a memfd's size only: adds `F_SEAL_SHRINK`, `F_SEAL_GROW` and
/// `F_SEAL_SEAL`.
///
/// For the control memfd, which the consumer maps read-write: writes stay
/// allowed, but nobody can truncate the file under the host's mapping.
pub fn seal_size<Fd: AsFd>(fd: Fd) -> io::Result<()> {
    rustix::fs::fcntl_add_seals(fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(())
}

/// Returns the seals currently set on a memfd (raw `F_SEAL_*` bits).
pub fn seals<Fd: AsFd>(fd: Fd) -> io::Result<u32> {
    Ok(rustix::fs::fcntl_get_seals(fd)?.bits())
}

/// Whether the file's size is sealed against shrinking (`F_SEAL_SHRINK`):
/// only then can a reader map it without risking `SIGBUS` when its owner
/// truncates it.
pub fn shrink_is_sealed<Fd: AsFd>(fd: Fd) -> io::Result<bool> {
    Ok(rustix::fs::fcntl_get_seals(fd)?.contains(SealFlags::SHRINK))
}

/// Returns the size in bytes of the file behind `fd`.
pub fn file_len<Fd: AsFd>(fd: Fd) -> io::Result<u64> {
    let st = rustix::fs::fstat(fd)?;
    u64::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Opens a new, independent, read-only descriptor (`O_RDONLY | O_CLOEXEC`) of
/// the same file through `/proc/self/fd/N`.
///
/// A descriptor opened `O_RDONLY` can never be mapped `PROT_WRITE` with
/// `MAP_SHARED` (nor `mprotect`ed to it). It is what the host sends to the
/// consumer for data memfds. On its own it does not stop a determined
/// receiver from reopening the file read-write through its own `/proc`; use
/// [`seal_for_readers`] for that.
pub fn reopen_read_only<Fd: AsFd>(fd: Fd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let ro = rustix::fs::open(path.as_str(), OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    Ok(ro)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn create_sets_len_and_name() {
        let fd = create_memfd("hvtrace-data-test-0", 3 * 4096).unwrap();
        assert_eq!(file_len(&fd).unwrap(), 3 * 4096);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(link.to_str().unwrap(), "/memfd:hvtrace-data-test-0 (deleted)");
        let fl = rustix::io::fcntl_getfd(&fd).unwrap();
        assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
        assert_eq!(seals(&fd).unwrap(), 0);
    }

    #[test]
    fn name_with_nul_is_rejected() {
        assert!(create_memfd("bad\0name", 4096).is_err());
    }

    #[test]
    fn reopen_read_only_cannot_write() {
        let fd = create_memfd("hvtrace-data-ro", 4096).unwrap();
        let mut rw = std::fs::File::from(fd);
        rw.write_all(b"hello").unwrap();
        let ro = reopen_read_only(&rw).unwrap();
        let fl = rustix::fs::fcntl_getfl(&ro).unwrap();
        assert_eq!(fl & OFlags::ACCMODE, OFlags::RDONLY);
        let mut ro = std::fs::File::from(ro);
        let mut buf = [0u8; 5];
        ro.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(ro.write_all(b"x").is_err());
    }

    #[test]
    fn sealed_memfd_refuses_write_and_resize() {
        let fd = create_memfd("hvtrace-data-seal", 8192).unwrap();
        seal_for_readers(&fd).unwrap();
        let s = SealFlags::from_bits_retain(seals(&fd).unwrap());
        assert!(s.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::FUTURE_WRITE | SealFlags::SEAL));
        assert!(rustix::fs::ftruncate(&fd, 4096).is_err());
        assert!(rustix::fs::ftruncate(&fd, 16384).is_err());
        // write(2) through the original read-write descriptor is refused.
        assert_eq!(rustix::io::write(&fd, b"x").unwrap_err(), rustix::io::Errno::PERM);
        // F_SEAL_SEAL: no more seals.
        assert!(rustix::fs::fcntl_add_seals(&fd, SealFlags::WRITE).is_err());
        assert!(shrink_is_sealed(&fd).unwrap());
        assert!(!shrink_is_sealed(create_memfd("hvtrace-meta-unsealed", 4096).unwrap()).unwrap());
    }

    #[test]
    fn size_seal_keeps_writes() {
        let fd = create_memfd("hvtrace-ctrl-seal", 4096).unwrap();
        seal_size(&fd).unwrap();
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
        assert_eq!(rustix::io::write(&fd, b"ok").unwrap(), 2);
    }
}
