//! [`SharedMapping`]: a `MAP_SHARED` mapping of a memfd, unmapped on drop.

use std::io;
use std::os::fd::AsFd;

use memmap2::{MmapOptions, MmapRaw};

/// A `MAP_SHARED` mapping of (a prefix of) a file, usually a memfd.
///
/// The memory is shared with every other process mapping the same file, so it
/// is only ever reached through raw pointers ([`as_ptr`](Self::as_ptr),
/// [`as_mut_ptr`](Self::as_mut_ptr)); the caller is responsible for using
/// atomics or otherwise tolerating concurrent modification. The mapping stays
/// valid until the `SharedMapping` is dropped, independently of the
/// descriptor it was made from (which may be closed right after mapping).
#[derive(Debug)]
pub struct SharedMapping {
    map: MmapRaw,
    writable: bool,
}

impl SharedMapping {
    /// Maps the first `len` bytes of `fd` readable and writable
    /// (`PROT_READ | PROT_WRITE`, `MAP_SHARED`).
    ///
    /// Fails with `InvalidInput` if `len` is 0 or larger than the file (touching
    /// a page past the end of the file would raise `SIGBUS`), `EACCES` if the
    /// descriptor is read-only, and `EPERM` if the file is sealed with
    /// `F_SEAL_WRITE` / `F_SEAL_FUTURE_WRITE`.
    pub fn map_rw<Fd: AsFd>(fd: Fd, len: usize) -> io::Result<Self> {
        let fd = fd.as_fd();
        check_len(fd, len)?;
        let map = MmapOptions::new().len(len).map_raw(&fd)?;
        Ok(Self { map, writable: true })
    }

    /// Maps the first `len` bytes of `fd` read-only (`PROT_READ`,
    /// `MAP_SHARED`, `MAP_POPULATE`). Works on `O_RDONLY` descriptors and on sealed memfds.
    ///
    /// Fails with `InvalidInput` if `len` is 0 or larger than the file.
    pub fn map_ro<Fd: AsFd>(fd: Fd, len: usize) -> io::Result<Self> {
        let fd = fd.as_fd();
        check_len(fd, len)?;
        // MAP_POPULATE: a consumer reads every page of a ring over and over;
        // mapping them all now keeps page faults off its copy path.
        let map = MmapOptions::new().len(len).populate().map_raw_read_only(&fd)?;
        Ok(Self { map, writable: false })
    }

    /// Maps the first `len` bytes of `fd` read-only like
    /// [`map_ro`](Self::map_ro), but without `MAP_POPULATE`: for a large,
    /// mostly unwritten file (a metadata log) whose pages a reader touches
    /// only as they fill; populating would allocate every page of a memfd.
    pub fn map_ro_lazy<Fd: AsFd>(fd: Fd, len: usize) -> io::Result<Self> {
        let fd = fd.as_fd();
        check_len(fd, len)?;
        let map = MmapOptions::new().len(len).map_raw_read_only(&fd)?;
        Ok(Self { map, writable: false })
    }

    /// Start of the mapping (page aligned).
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// Start of the mapping (page aligned), as a mutable pointer.
    ///
    /// Writing through it is only possible if [`is_writable`](Self::is_writable);
    /// a write to a read-only mapping raises `SIGSEGV`. Atomic types need
    /// `*mut` pointers even for loads, which is why this is offered for
    /// read-only mappings as well.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always `false`: empty mappings cannot be created.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Whether the mapping was created with [`map_rw`](Self::map_rw).
    pub fn is_writable(&self) -> bool {
        self.writable
    }
}

fn check_len(fd: std::os::fd::BorrowedFd<'_>, len: usize) -> io::Result<()> {
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map 0 bytes"));
    }
    let file_len = crate::memfd::file_len(fd)?;
    if (len as u64) > file_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mapping of {len} bytes exceeds the file's {file_len} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::{create_memfd, reopen_read_only, seal_for_readers};
    use rustix::io::Errno;
    use rustix::mm::MprotectFlags;

    fn errno(e: &io::Error) -> Option<Errno> {
        e.raw_os_error().map(Errno::from_raw_os_error)
    }

    #[test]
    fn rw_and_ro_mappings_share_memory() {
        let fd = create_memfd("hvtrace-data-share", 8192).unwrap();
        let rw = SharedMapping::map_rw(&fd, 8192).unwrap();
        let ro_fd = reopen_read_only(&fd).unwrap();
        let ro = SharedMapping::map_ro(&ro_fd, 8192).unwrap();
        drop(ro_fd);
        assert_eq!(rw.len(), 8192);
        assert!(rw.is_writable() && !ro.is_writable());
        // SAFETY: both mappings are 8192 bytes long; offset 4100 is in bounds
        // and nothing else accesses this memory concurrently.
        unsafe {
            rw.as_mut_ptr().add(4100).write_volatile(0xAB);
            assert_eq!(ro.as_ptr().add(4100).read_volatile(), 0xAB);
        }
    }

    #[test]
    fn bad_lengths_are_rejected() {
        let fd = create_memfd("hvtrace-data-len", 4096).unwrap();
        let e = SharedMapping::map_rw(&fd, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = SharedMapping::map_ro(&fd, 4097).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn ro_fd_cannot_be_mapped_writable() {
        let fd = create_memfd("hvtrace-data-rofd", 4096).unwrap();
        let ro_fd = reopen_read_only(&fd).unwrap();
        let e = SharedMapping::map_rw(&ro_fd, 4096).unwrap_err();
        assert_eq!(errno(&e), Some(Errno::ACCESS));
    }

    #[test]
    fn sealing_keeps_existing_rw_mapping_and_blocks_new_ones() {
        let fd = create_memfd("hvtrace-data-sealed", 2 * 4096).unwrap();
        let producer = SharedMapping::map_rw(&fd, 2 * 4096).unwrap();
        seal_for_readers(&fd).unwrap();

        // The producer's existing writable mapping keeps working.
        // SAFETY: offset 10 is within the 8192-byte mapping; no concurrent access.
        unsafe { producer.as_mut_ptr().add(10).write_volatile(42) };

        // No new writable mapping, neither from the original rw fd ...
        let e = SharedMapping::map_rw(&fd, 4096).unwrap_err();
        assert_eq!(errno(&e), Some(Errno::PERM));
        // ... nor from a read-only reopen ...
        let ro_fd = reopen_read_only(&fd).unwrap();
        let e = SharedMapping::map_rw(&ro_fd, 4096).unwrap_err();
        assert_eq!(errno(&e), Some(Errno::ACCESS));
        // ... nor from a read-write reopen via /proc of the read-only fd
        // (which the kernel allows: memfd inodes are mode 0777).
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&ro_fd));
        let rw_again = rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .expect("reopening a memfd O_RDWR through /proc is allowed");
        let e = SharedMapping::map_rw(&rw_again, 4096).unwrap_err();
        assert_eq!(errno(&e), Some(Errno::PERM));
        assert_eq!(rustix::io::write(&rw_again, b"x").unwrap_err(), Errno::PERM);

        // Size is frozen.
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
        assert!(rustix::fs::ftruncate(&fd, 3 * 4096).is_err());

        // Readers still map it read-only and see the producer's write.
        let reader = SharedMapping::map_ro(&ro_fd, 2 * 4096).unwrap();
        // SAFETY: offset 10 is within the 8192-byte mapping.
        assert_eq!(unsafe { reader.as_ptr().add(10).read_volatile() }, 42);

        // And a reader cannot upgrade its read-only mapping with mprotect,
        // neither from the O_RDONLY fd nor from the O_RDWR reopen.
        let reader2 = SharedMapping::map_ro(&rw_again, 4096).unwrap();
        for m in [&reader, &reader2] {
            // SAFETY: the range is exactly one page of a live mapping we own;
            // if the call succeeded it would only add PROT_WRITE, which does
            // not invalidate any reference (none exist).
            let r = unsafe {
                rustix::mm::mprotect(m.as_mut_ptr().cast(), 4096, MprotectFlags::READ | MprotectFlags::WRITE)
            };
            assert_eq!(r.unwrap_err(), Errno::ACCESS);
        }
    }
}
