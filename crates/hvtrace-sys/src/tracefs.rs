//! The calls the kernel-event source (`hvtrace-ftrace`) needs beyond plain
//! file I/O on tracefs: mounting tracefs, opening `trace_pipe_raw` without
//! blocking, and the caller's thread id (the id `set_event_pid` and the
//! events' `common_pid` use).

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{open, Mode, OFlags};
use rustix::mount::{mount, MountFlags};

/// `mount("nodev", target, "tracefs", MS_NOSUID|MS_NODEV|MS_NOEXEC, NULL)`:
/// mounts tracefs at `target` (an existing empty directory). Needs
/// `CAP_SYS_ADMIN`.
///
/// # References
/// - [`mount(2)`](https://man7.org/linux/man-pages/man2/mount.2.html)
/// - [The tracefs file system](https://docs.kernel.org/trace/ftrace.html#the-file-system)
pub fn mount_tracefs(target: &Path) -> io::Result<()> {
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    Ok(mount("nodev", target, "tracefs", flags, None)?)
}

/// `open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)`: a tracefs pipe whose
/// reads return `WouldBlock` when it is empty (the reader sleeps in `epoll`
/// instead).
///
/// # References
/// - [`open(2)`](https://man7.org/linux/man-pages/man2/open.2.html)
pub fn open_nonblocking(path: &Path) -> io::Result<File> {
    let fd = open(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())?;
    Ok(File::from(fd))
}

/// `gettid()`: the calling thread's id (the `pid` of the kernel's task, which
/// is what ftrace records as `common_pid`).
///
/// # References
/// - [`gettid(2)`](https://man7.org/linux/man-pages/man2/gettid.2.html)
pub fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_thread_has_its_own_id_as_proc_names_it() {
        // /proc/thread-self links to PID/task/TID of the calling thread.
        let tid_of_proc = || {
            let link = std::fs::read_link("/proc/thread-self").unwrap();
            link.file_name().unwrap().to_str().unwrap().parse::<u32>().unwrap()
        };
        let here = super::gettid();
        assert_eq!(here, tid_of_proc());
        let other = std::thread::spawn(move || (super::gettid(), tid_of_proc())).join().unwrap();
        assert_eq!(other.0, other.1);
        assert_ne!(here, other.0);
    }
}
