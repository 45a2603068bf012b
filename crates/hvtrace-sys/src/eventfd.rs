//! [`EventFd`]: a counter the kernel can wake `epoll` on.
//!
//! The producer [`signal`](EventFd::signal)s a ring's eventfd when it delivers
//! a sub-buffer; the consumer sleeps in [`crate::Poller::wait`], then calls
//! [`drain`](EventFd::drain) *before* consuming what is ready, so a signal
//! arriving during consumption is never lost (it makes the next wait return).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use rustix::event::EventfdFlags;
use rustix::io::Errno;

/// A non-blocking, close-on-exec eventfd.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates an eventfd with counter 0, `EFD_NONBLOCK | EFD_CLOEXEC`.
    pub fn new() -> io::Result<Self> {
        let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Self { fd })
    }

    /// Wraps a descriptor received from another process (e.g. over the
    /// control socket). It is switched to non-blocking mode so that
    /// [`drain`](Self::drain) never blocks. The descriptor is not checked to
    /// be an eventfd; a wrong one shows up as errors from `signal`/`drain`.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let fl = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, fl | rustix::fs::OFlags::NONBLOCK)?;
        Ok(Self { fd })
    }

    /// Adds 1 to the counter, waking any poller. If the counter is about to
    /// overflow (`EAGAIN`, after 2^64 - 2 unconsumed signals) the signal is
    /// dropped, which is harmless: the reader is already woken.
    pub fn signal(&self) -> io::Result<()> {
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(_) => return Ok(()),
                Err(Errno::AGAIN) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads and resets the counter: returns the number of signals since the
    /// last drain, or 0 if there were none (never blocks).
    pub fn drain(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(8) => return Ok(u64::from_ne_bytes(buf)),
                Ok(n) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("short read of {n} bytes from eventfd"),
                    ))
                }
                Err(Errno::AGAIN) => return Ok(0),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Duplicates the descriptor (close-on-exec), e.g. to keep one end while
    /// sending another.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { fd: self.fd.try_clone()? })
    }

    /// Gives up the wrapper and returns the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for EventFd {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

impl From<EventFd> for OwnedFd {
    fn from(e: EventFd) -> OwnedFd {
        e.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_and_drain() {
        let e = EventFd::new().unwrap();
        assert_eq!(e.drain().unwrap(), 0);
        e.signal().unwrap();
        e.signal().unwrap();
        e.signal().unwrap();
        assert_eq!(e.drain().unwrap(), 3);
        assert_eq!(e.drain().unwrap(), 0);
    }

    #[test]
    fn from_fd_shares_counter() {
        let a = EventFd::new().unwrap();
        let b = EventFd::from_fd(a.as_fd().try_clone_to_owned().unwrap()).unwrap();
        a.signal().unwrap();
        assert_eq!(b.drain().unwrap(), 1);
        assert_eq!(a.drain().unwrap(), 0);
    }

    #[test]
    fn from_blocking_fd_becomes_nonblocking() {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        let e = EventFd::from_fd(fd).unwrap();
        assert_eq!(e.drain().unwrap(), 0); // would block forever otherwise
    }

    #[test]
    fn overflow_is_ignored() {
        let e = EventFd::new().unwrap();
        // Bring the counter to its maximum, u64::MAX - 1.
        rustix::io::write(&e, &(u64::MAX - 1).to_ne_bytes()).unwrap();
        e.signal().unwrap();
        assert_eq!(e.drain().unwrap(), u64::MAX - 1);
    }
}
