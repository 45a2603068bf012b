//! Files created relative to an open directory, never reopened by name.
//!
//! The consumer and `hvtrace check --repair` run as root next to directories
//! other users may be able to write. Every path lookup after the first is a
//! chance for another user to swap a name for a symbolic link to a file of
//! root's. So a directory is opened once ([`open_dir`]), each file is created
//! in it with [`create_at`] (`O_CREAT | O_EXCL | O_NOFOLLOW`: never an
//! existing file, never through a link), and anything else done to that file
//! goes through the descriptor: the `O_DIRECT` twin comes from
//! [`reopen_direct`] (the `/proc/self/fd` magic link names the open inode,
//! not the path), and [`same_file`] tells whether a name still leads to it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Stat};

use crate::direct::{dio_align, refused, DioAlign};

/// `open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)`—opens a
/// directory to create files in, refusing a final component that is a
/// symbolic link (`ELOOP`) or not a directory (`ENOTDIR`).
///
/// # References
/// - [Linux `open(2)`](https://man7.org/linux/man-pages/man2/open.2.html)
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?)
}

/// `mkdir(path, mode)`—creates one directory (not its parents); fails with
/// `AlreadyExists` if the name is taken, whatever it is. The process umask
/// applies to `mode`.
///
/// # References
/// - [Linux `mkdir(2)`](https://man7.org/linux/man-pages/man2/mkdir.2.html)
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkdir(path, Mode::from_raw_mode(mode))?)
}

/// `openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)`
/// —creates the new regular file `name` in `dir`. Fails with
/// `AlreadyExists` if `name` exists in any form, a symbolic link included
/// (`O_EXCL` never follows one). The process umask applies to `mode`.
///
/// # References
/// - [Linux `openat(2)`](https://man7.org/linux/man-pages/man2/openat.2.html)
pub fn create_at<D: AsFd>(dir: D, name: &str, mode: u32) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?;
    Ok(File::from(fd))
}

/// `fchmod(fd, mode)` and, with `group`, `fchown(fd, -1, group)`—sets a
/// file's permission bits exactly (no umask) and its group, through its
/// descriptor.
///
/// # References
/// - [Linux `fchmod(2)`](https://man7.org/linux/man-pages/man2/fchmod.2.html),
///   [`fchown(2)`](https://man7.org/linux/man-pages/man2/fchown.2.html)
pub fn set_mode_and_group<F: AsFd>(file: F, mode: u32, group: Option<u32>) -> io::Result<()> {
    if let Some(gid) = group {
        // The kernel refuses a group the caller may not give with `EPERM`.
        rustix::fs::fchown(&file, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
    Ok(())
}

/// Opens a second, write-only `O_DIRECT` descriptor on the file open as
/// `file`, through `/proc/self/fd/N`, and checks that it is the same inode;
/// says what alignment direct I/O needs on it ([`DioAlign`]: from
/// `statx(STATX_DIOALIGN)`, a page where the kernel cannot say).
///
/// The magic link resolves to the open file itself, whatever has since been
/// done to its name (renamed, replaced by a symbolic link, unlinked), so no
/// other user can redirect the second descriptor. `Ok(None)` where the file
/// system does not do direct I/O or `/proc` is not mounted (buffered writes
/// only, then).
///
/// # References
/// - [Linux `proc_pid_fd(5)`](https://man7.org/linux/man-pages/man5/proc_pid_fd.5.html)
pub fn reopen_direct(file: &File) -> io::Result<Option<(File, DioAlign)>> {
    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
    let flags = OFlags::WRONLY | OFlags::DIRECT | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(link.as_str(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) if refused(&e.into()) => return Ok(None),
        Err(e) if e == rustix::io::Errno::NOENT => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let direct = File::from(fd);
    if !same_inode(&rustix::fs::fstat(file)?, &rustix::fs::fstat(&direct)?) {
        return Err(io::Error::other(format!("{link} is not the file it should be")));
    }
    Ok(dio_align(&direct)?.map(|a| (direct, a)))
}

/// `fallocate(file, FALLOC_FL_KEEP_SIZE, 0, len)`—reserves disk space for
/// the first `len` bytes of `file` without changing its size, so that
/// writing them later cannot fail for want of space.
///
/// # References
/// - [Linux `fallocate(2)`](https://man7.org/linux/man-pages/man2/fallocate.2.html)
pub fn reserve<F: AsFd>(file: F, len: u64) -> io::Result<()> {
    Ok(rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len)?)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)` against `fstat(file)`—whether
/// `name` in `dir` still names the open `file` (not a replacement, a link,
/// or nothing), and the file is still linked.
///
/// # References
/// - [Linux `fstatat(2)`](https://man7.org/linux/man-pages/man2/fstatat.2.html)
pub fn same_file<D: AsFd, F: AsFd>(dir: D, name: &str, file: F) -> io::Result<bool> {
    let open = rustix::fs::fstat(file)?;
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(named) => Ok(open.st_nlink > 0 && same_inode(&open, &named)),
        Err(e) if e == rustix::io::Errno::NOENT => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What kind of file `name` in `dir` is, in words (`"FIFO"`,
/// `"directory"`, …), without following a link: `None` if there is none.
pub fn kind_at<D: AsFd>(dir: D, name: &str) -> io::Result<Option<&'static str>> {
    use rustix::fs::FileType;
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => "regular file",
            FileType::Directory => "directory",
            FileType::Symlink => "symbolic link",
            FileType::Fifo => "FIFO",
            FileType::Socket => "socket",
            FileType::CharacterDevice | FileType::BlockDevice => "device",
            _ => "file of unknown type",
        })),
        Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether the directory open as `dir` is still linked (a removed
/// directory has no links) and still the one at `path`.
pub fn dir_still_at<D: AsFd>(dir: D, path: &Path) -> io::Result<bool> {
    let open = rustix::fs::fstat(dir)?;
    match rustix::fs::lstat(path) {
        Ok(named) => Ok(open.st_nlink > 0 && same_inode(&open, &named)),
        Err(e) if e == rustix::io::Errno::NOENT => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn same_inode(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// `getgrnam_r(name)`—the id of the group called `name`, or `None` if there
/// is no such group. A decimal number is taken as the id itself.
///
/// # References
/// - [Linux `getgrnam_r(3)`](https://man7.org/linux/man-pages/man3/getgrnam_r.3.html)
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Some(gid));
    }
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name holds NUL"))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: all-zero is a valid `struct group` (null pointers, zero id).
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `cname` is NUL-terminated; `grp`, `buf` (with its length)
        // and `out` are valid for writes for the duration of the call; the
        // strings it fills in point into `buf`, which is not read here.
        let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
        match rc {
            0 if out.is_null() => return Ok(None),
            0 => return Ok(Some(grp.gr_gid)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

    #[test]
    fn creates_only_new_files_and_never_through_a_link() {
        let t = std::env::temp_dir().join(format!("hvtrace-sys-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        create_dir(&t, 0o700).unwrap();
        assert_eq!(create_dir(&t, 0o700).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let d = open_dir(&t).unwrap();
        let mut f = create_at(&d, "a", 0o600).unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::metadata(t.join("a")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(create_at(&d, "a", 0o600).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        // A link to a file that does not exist yet: O_EXCL still refuses it,
        // and nothing is created at its target.
        std::os::unix::fs::symlink(t.join("target"), t.join("l")).unwrap();
        assert_eq!(create_at(&d, "l", 0o600).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(!t.join("target").exists());
        // A link as the directory itself.
        std::os::unix::fs::symlink(&t, t.join("dl")).unwrap();
        assert!(open_dir(&t.join("dl")).is_err());
        assert!(open_dir(&t.join("a")).is_err(), "a regular file is not a directory");
        // The name follows the file; a replacement is noticed.
        assert!(same_file(&d, "a", &f).unwrap());
        std::fs::rename(t.join("a"), t.join("b")).unwrap();
        std::fs::write(t.join("a"), "other").unwrap();
        assert!(!same_file(&d, "a", &f).unwrap());
        assert!(same_file(&d, "b", &f).unwrap());
        std::fs::remove_file(t.join("b")).unwrap();
        assert!(!same_file(&d, "b", &f).unwrap());
        assert_eq!(kind_at(&d, "l").unwrap(), Some("symbolic link"));
        assert_eq!(kind_at(&d, "nope").unwrap(), None);
        set_mode_and_group(&f, 0o640, Some(0)).unwrap();
        assert!(dir_still_at(&d, &t).unwrap());
        std::fs::remove_dir_all(&t).unwrap();
        assert!(!dir_still_at(&d, &t).unwrap(), "removed");
    }

    #[test]
    fn the_direct_twin_is_the_open_file_even_after_its_name_changed() {
        let t = tempdir_in_var_tmp();
        let d = open_dir(&t).unwrap();
        let f = create_at(&d, "s", 0o600).unwrap();
        // Another user's swap: the name now leads elsewhere.
        std::fs::rename(t.join("s"), t.join("moved")).unwrap();
        std::fs::write(t.join("victim"), b"keep").unwrap();
        std::os::unix::fs::symlink(t.join("victim"), t.join("s")).unwrap();
        let Some((direct, align)) = reopen_direct(&f).unwrap() else {
            println!("SKIP: {} does not do direct I/O", t.display());
            std::fs::remove_dir_all(&t).unwrap();
            return;
        };
        let mut v = vec![0u8; 2 * 4096];
        let at = v.as_ptr().align_offset(4096);
        let buf = &mut v[at..at + 4096];
        buf.fill(0x5A);
        assert!(align.fits(buf, 0));
        direct.write_all_at(buf, 0).unwrap();
        assert_eq!(std::fs::read(t.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::metadata(t.join("moved")).unwrap().len(), 4096);
        assert_eq!(std::fs::metadata(t.join("moved")).unwrap().ino(), f.metadata().unwrap().ino());
        std::fs::remove_dir_all(&t).unwrap();
    }

    fn tempdir_in_var_tmp() -> std::path::PathBuf {
        // /var/tmp is on a disk (direct I/O) where /tmp may be tmpfs.
        let t = Path::new("/var/tmp").join(format!("hvtrace-sys-fs-d-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir(&t).unwrap();
        t
    }

    #[test]
    fn group_names_and_numbers() {
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("4242").unwrap(), Some(4242));
        assert_eq!(group_id("no-such-group-hvtrace").unwrap(), None);
        assert!(group_id("a\0b").is_err());
    }
}
