//! Direct I/O: the alignment the kernel needs for it (the `O_DIRECT`
//! descriptor itself comes from [`crate::fs::reopen_direct`], never from a
//! file's name).
//!
//! An `O_DIRECT` write hands the caller's pages to the block layer instead of
//! copying them into the page cache: no copy on the CPU, no page-cache pages
//! to allocate, dirty and write back. `pwrite(2)` returns once the device has
//! the data (it has read the caller's memory by then), so the caller may
//! reuse the buffer as soon as it returns, as with a buffered write. The
//! address, the file offset and the length must all be aligned; the kernel
//! says how (`statx(2)` with `STATX_DIOALIGN`, Linux 6.1+), and refuses a
//! misaligned write with `EINVAL`.

use std::fs::File;
use std::io;

use rustix::fs::{AtFlags, StatxFlags};

/// What an `O_DIRECT` transfer must be aligned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlign {
    /// Alignment of the memory address, bytes (a power of two).
    pub mem: u64,
    /// Alignment of the file offset and of the length, bytes (a power of two).
    pub offset: u64,
}

impl DioAlign {
    /// Assumed when the kernel does not say (before Linux 6.1): a page for
    /// both, which every block device of at most 4 KiB logical blocks accepts.
    pub const PAGE: DioAlign = DioAlign { mem: 4096, offset: 4096 };

    /// Whether writing `buf` at `offset` with `O_DIRECT` is aligned.
    pub fn fits(&self, buf: &[u8], offset: u64) -> bool {
        (buf.as_ptr() as u64) % self.mem == 0 && offset % self.offset == 0 && (buf.len() as u64) % self.offset == 0
    }
}

/// What alignment `O_DIRECT` transfers need on the open `file`
/// (`statx(2)` with `STATX_DIOALIGN`); `None` if the kernel says the file
/// does no direct I/O, [`DioAlign::PAGE`] where it cannot say.
pub(crate) fn dio_align(file: &File) -> io::Result<Option<DioAlign>> {
    Ok(Some(match rustix::fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) {
        Ok(st) if StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN) => {
            if st.stx_dio_offset_align == 0 || st.stx_dio_mem_align == 0 {
                // The kernel says: no direct I/O on this file.
                return Ok(None);
            }
            DioAlign { mem: u64::from(st.stx_dio_mem_align), offset: u64::from(st.stx_dio_offset_align) }
        }
        // Older kernel (no `statx`, or no `STATX_DIOALIGN`).
        _ => DioAlign::PAGE,
    }))
}

/// Whether `e`, from an `O_DIRECT` write, is the kernel refusing direct I/O
/// for that transfer (`EINVAL`: misaligned for this device, or unsupported
/// after all) rather than failing the write itself: the same bytes can then
/// still be written through the page cache.
pub fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A page-aligned `len`-byte window of a `Vec`, without `unsafe`.
    fn aligned(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
        v.resize(len + 4096, 0);
        let off = v.as_ptr().align_offset(4096);
        &mut v[off..off + len]
    }

    #[test]
    fn direct_writes_land_in_the_file_and_misalignment_is_detected() {
        let dir = std::env::temp_dir().join(format!("hvtrace-sys-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let buffered = File::options().write(true).read(true).create_new(true).open(&path).unwrap();
        let Some((f, align)) = crate::fs::reopen_direct(&buffered).unwrap() else {
            println!("SKIP: {} does not do direct I/O", dir.display());
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        };
        assert!(align.mem.is_power_of_two() && align.offset.is_power_of_two(), "{align:?}");
        let mut v = Vec::new();
        let buf = aligned(&mut v, 8192);
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        assert!(align.fits(buf, 0) && align.fits(buf, 8192));
        f.write_all_at(buf, 0).unwrap();
        f.write_all_at(buf, 8192).unwrap();
        // A short tail goes through the ordinary descriptor.
        buffered.write_all_at(b"tail", 16384).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 16388);
        assert_eq!(&back[..8192], &buf[..]);
        assert_eq!(&back[8192..16384], &buf[..]);
        assert_eq!(&back[16384..], b"tail");
        assert!(!align.fits(&buf[1..4097], 0), "misaligned address");
        assert!(!align.fits(&buf[..100], 0), "short length");
        assert!(!align.fits(&buf[..4096], 100), "misaligned offset");
        // Where the file system really does direct I/O, a misaligned
        // offset is refused (tmpfs, which only accepts the flag, takes it).
        if let Err(e) = f.write_all_at(&buf[..4096], 1) {
            assert!(refused(&e), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
