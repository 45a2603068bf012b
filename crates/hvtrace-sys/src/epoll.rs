//! [`Poller`]: a small level-triggered `epoll` wrapper keyed by `u64` tokens.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::{epoll, Timespec};
use rustix::io::Errno;

/// One ready descriptor reported by [`Poller::wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollEvent {
    /// The token given to [`Poller::add`].
    pub token: u64,
    /// Data can be read (`EPOLLIN`).
    pub readable: bool,
    /// The peer hung up or the descriptor failed (`EPOLLHUP`, `EPOLLRDHUP`
    /// or `EPOLLERR`); for a socket this usually means "read the EOF".
    pub hangup: bool,
}

/// An epoll instance (close-on-exec). Descriptors are watched for
/// readability, level-triggered: a descriptor stays reported until it is
/// drained.
pub struct Poller {
    epoll: OwnedFd,
    buf: Vec<epoll::Event>,
}

impl Poller {
    /// Creates an epoll instance.
    pub fn new() -> io::Result<Self> {
        Ok(Self { epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?, buf: Vec::new() })
    }

    /// Starts watching `fd` for readability (and hang-up); [`wait`](Self::wait)
    /// reports it with `token`. The caller keeps `fd` open while it is
    /// registered; closing it unregisters it implicitly (unless duplicated).
    /// Adding the same descriptor twice fails with `EEXIST`.
    pub fn add<Fd: AsFd>(&self, fd: Fd, token: u64) -> io::Result<()> {
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        )?;
        Ok(())
    }

    /// Stops watching `fd`. Fails with `ENOENT` if it was not registered.
    pub fn delete<Fd: AsFd>(&self, fd: Fd) -> io::Result<()> {
        epoll::delete(&self.epoll, fd)?;
        Ok(())
    }

    /// Waits until at least one registered descriptor is ready or `timeout`
    /// passes (`None`: wait forever; `Some(Duration::ZERO)`: just poll), then
    /// replaces the contents of `events` with up to `events.capacity()` ready
    /// descriptors (at least 1; use `Vec::with_capacity`) and returns how
    /// many there are.
    ///
    /// Returns `Ok(0)` on timeout **and when interrupted by a signal
    /// (`EINTR`)**; callers loop anyway, and may re-check their stop
    /// condition. With `timeout: None`, `Ok(0)` therefore means "interrupted".
    pub fn wait(&mut self, events: &mut Vec<PollEvent>, timeout: Option<Duration>) -> io::Result<usize> {
        events.clear();
        let cap = events.capacity().max(1);
        self.buf.clear();
        self.buf.reserve(cap);
        let ts = timeout.map(|d| Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: d.subsec_nanos().into(),
        });
        let spare = rustix::buffer::spare_capacity(&mut self.buf);
        match epoll::wait(&self.epoll, spare, ts.as_ref()) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        events.extend(self.buf.iter().take(cap).map(|ev| {
            let flags = ev.flags;
            PollEvent {
                token: ev.data.u64(),
                readable: flags.contains(epoll::EventFlags::IN),
                hangup: flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::RDHUP | epoll::EventFlags::ERR),
            }
        }));
        Ok(events.len())
    }
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller").field("epoll", &self.epoll).finish()
    }
}

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventFd;
    use std::time::Instant;

    #[test]
    fn reports_ready_tokens() {
        let mut p = Poller::new().unwrap();
        let a = EventFd::new().unwrap();
        let b = EventFd::new().unwrap();
        p.add(&a, 7).unwrap();
        p.add(&b, u64::MAX).unwrap();
        let mut ev = Vec::with_capacity(8);
        assert_eq!(p.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 0);
        b.signal().unwrap();
        assert_eq!(p.wait(&mut ev, Some(Duration::from_secs(5))).unwrap(), 1);
        assert_eq!(ev[0].token, u64::MAX);
        assert!(ev[0].readable && !ev[0].hangup);
        a.signal().unwrap();
        // Level-triggered: b is still pending.
        assert_eq!(p.wait(&mut ev, None).unwrap(), 2);
        let mut toks: Vec<u64> = ev.iter().map(|e| e.token).collect();
        toks.sort_unstable();
        assert_eq!(toks, vec![7, u64::MAX]);
        a.drain().unwrap();
        b.drain().unwrap();
        assert_eq!(p.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 0);
        p.delete(&a).unwrap();
        assert!(p.delete(&a).is_err());
        a.signal().unwrap();
        assert_eq!(p.wait(&mut ev, Some(Duration::ZERO)).unwrap(), 0);
    }

    #[test]
    fn respects_capacity_and_timeout() {
        let mut p = Poller::new().unwrap();
        let fds: Vec<EventFd> = (0..4).map(|_| EventFd::new().unwrap()).collect();
        for (i, f) in fds.iter().enumerate() {
            p.add(f, i as u64).unwrap();
            f.signal().unwrap();
        }
        let mut ev = Vec::with_capacity(2);
        let n = p.wait(&mut ev, None).unwrap();
        assert!(n >= 1 && n <= ev.capacity());
        for f in &fds {
            f.drain().unwrap();
        }
        let t = Instant::now();
        assert_eq!(p.wait(&mut ev, Some(Duration::from_millis(30))).unwrap(), 0);
        assert!(t.elapsed() >= Duration::from_millis(25));
    }

    #[test]
    fn wakes_across_threads() {
        let mut p = Poller::new().unwrap();
        let e = EventFd::new().unwrap();
        p.add(&e, 1).unwrap();
        let e2 = e.try_clone().unwrap();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            e2.signal().unwrap();
        });
        let mut ev = Vec::with_capacity(4);
        assert_eq!(p.wait(&mut ev, Some(Duration::from_secs(10))).unwrap(), 1);
        assert_eq!(ev[0].token, 1);
        h.join().unwrap();
    }
}
