//! The control socket: Unix-domain `SOCK_SEQPACKET` with descriptor passing
//! (`SCM_RIGHTS`) and peer credentials (`SO_PEERCRED`).
//!
//! `SOCK_SEQPACKET` keeps message boundaries (one request or reply per
//! datagram, never merged or split) and is connection-oriented, so the host
//! learns when a consumer goes away (its references are dropped then).
//!
//! A received message of length 0 means the peer closed the connection
//! (the kernel reports EOF and an empty datagram the same way; the hvtrace
//! protocol never sends empty messages).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// Credentials of the process at the other end of a connection, as recorded
/// by the kernel when it connected (`SO_PEERCRED`); they cannot be forged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// A listening `SOCK_SEQPACKET` socket bound to a filesystem path.
///
/// Dropping it closes the socket and removes the socket file, if the path
/// still names the file it created.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
    ino: (u64, u64),
}

impl Listener {
    /// Creates a socket file at `path` with permission bits `mode` (e.g.
    /// `0o600`) and listens on it (close-on-exec, blocking).
    ///
    /// If `path` already exists: when it is a socket nobody listens on (a
    /// stale file left by a dead host: connecting is refused) it is removed
    /// and replaced; when something is listening, fails with `AddrInUse`;
    /// when it is not a socket, fails with `AlreadyExists` and leaves it.
    ///
    /// The mode is applied between `bind` and `listen`, when no client can
    /// connect yet, so there is no window in which the socket is reachable
    /// with the umask-derived permissions.
    pub fn bind<P: AsRef<Path>>(path: P, mode: u32) -> io::Result<Self> {
        let path = path.as_ref();
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match Conn::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} is in use by a listening process", path.display()),
                    ))
                }
                Err(e) if e.raw_os_error() == Some(Errno::CONNREFUSED.raw_os_error()) => {
                    std::fs::remove_file(path)?;
                }
                Err(e) => return Err(e),
            },
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        net::bind(&fd, &SocketAddrUnix::new(path)?)?;
        let set_up = (|| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            net::listen(&fd, 64)?;
            std::fs::symlink_metadata(path)
        })();
        let meta = match set_up {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(Self { fd, path: path.to_path_buf(), ino: (meta.dev(), meta.ino()) })
    }

    /// Accepts one connection (close-on-exec, blocking). In non-blocking mode
    /// fails with `WouldBlock` when none is pending.
    pub fn accept(&self) -> io::Result<Conn> {
        loop {
            match net::accept_with(&self.fd, SocketFlags::CLOEXEC) {
                Ok(fd) => return Ok(Conn { fd }),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Switches `accept` between blocking and non-blocking (for use with
    /// [`crate::Poller`]).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        set_nonblocking(self.fd.as_fd(), nonblocking)
    }

    /// The path the socket is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One connected `SOCK_SEQPACKET` socket (either end).
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

impl Conn {
    /// Connects to the listener at `path` (close-on-exec, blocking).
    /// `ECONNREFUSED` means nobody listens there; `ENOENT` that there is no
    /// socket file.
    pub fn connect<P: AsRef<Path>>(path: P) -> io::Result<Self> {
        let fd = net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        let addr = SocketAddrUnix::new(path.as_ref())?;
        loop {
            match net::connect(&fd, &addr) {
                Ok(()) => return Ok(Self { fd }),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A connected pair (close-on-exec), e.g. for tests or a forked child.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
        Ok((Self { fd: a }, Self { fd: b }))
    }

    /// Wraps an already connected `SOCK_SEQPACKET` descriptor.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Credentials of the peer process (`SO_PEERCRED`).
    pub fn peer_cred(&self) -> io::Result<PeerCred> {
        let c = net::sockopt::socket_peercred(&self.fd)?;
        Ok(PeerCred { pid: c.pid.as_raw_nonzero().get() as u32, uid: c.uid.as_raw(), gid: c.gid.as_raw() })
    }

    /// Sends `data` as one message, with `fds` attached (`SCM_RIGHTS`; the
    /// receiver gets duplicates, the caller keeps its own). Never raises
    /// `SIGPIPE` (`MSG_NOSIGNAL`): a closed peer gives `EPIPE`.
    ///
    /// Fails with `InvalidInput` for more than [`MAX_FDS`] descriptors, and
    /// with `EMSGSIZE` if the message exceeds the socket's send buffer.
    pub fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} descriptors exceed the limit of {MAX_FDS}", fds.len()),
            ));
        }
        let mut space = vec![MaybeUninit::<u8>::uninit(); cmsg_space_for(fds.len())];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other("ancillary buffer too small"));
        }
        let iov = [IoSlice::new(data)];
        loop {
            match net::sendmsg(&self.fd, &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(n) if n == data.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} of {} bytes", data.len())))
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one message into `buf`, accepting up to `max_fds` attached
    /// descriptors (received close-on-exec). Returns the message length and
    /// the descriptors; `(0, [])` means the peer closed the connection.
    ///
    /// A message longer than `buf` fails with `InvalidData` ("truncated
    /// message": the rest of it is lost, as datagram semantics dictate), and
    /// so does a message carrying more than `max_fds` descriptors; in both
    /// cases every descriptor that did arrive is closed. Honors
    /// [`set_read_timeout`](Self::set_read_timeout) (`WouldBlock`) and
    /// non-blocking mode (`WouldBlock`).
    pub fn recv(&self, buf: &mut [u8], max_fds: usize) -> io::Result<(usize, Vec<OwnedFd>)> {
        let max_fds = max_fds.min(MAX_FDS);
        let mut space = vec![MaybeUninit::<u8>::uninit(); cmsg_space_for(max_fds.max(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = loop {
            let mut iov = [IoSliceMut::new(buf)];
            match net::recvmsg(&self.fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC | RecvFlags::TRUNC) {
                Ok(m) => break m,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let mut fds = Vec::new();
        for cmsg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(iter) = cmsg {
                fds.extend(iter);
            }
        }
        if msg.flags.contains(ReturnFlags::TRUNC) || msg.bytes > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("truncated message: {} bytes received into a {}-byte buffer", msg.bytes, buf.len()),
            ));
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max_fds {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message carried more than {max_fds} descriptors"),
            ));
        }
        Ok((msg.bytes, fds))
    }

    /// Sets (or with `None` clears) a timeout on blocking receives
    /// (`SO_RCVTIMEO`); an expired receive fails with `WouldBlock`.
    /// A zero duration is rejected with `InvalidInput` (the kernel would read
    /// it as "no timeout").
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a zero read timeout is not allowed"));
        }
        net::sockopt::set_socket_timeout(&self.fd, net::sockopt::Timeout::Recv, timeout)?;
        Ok(())
    }

    /// Sets (or clears) a timeout on blocking sends (`SO_SNDTIMEO`).
    /// A zero duration is rejected with `InvalidInput`.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a zero write timeout is not allowed"));
        }
        net::sockopt::set_socket_timeout(&self.fd, net::sockopt::Timeout::Send, timeout)?;
        Ok(())
    }

    /// Switches sends and receives between blocking and non-blocking
    /// (`WouldBlock` instead of waiting; for use with [`crate::Poller`]).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        set_nonblocking(self.fd.as_fd(), nonblocking)
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Conn> for OwnedFd {
    fn from(c: Conn) -> OwnedFd {
        c.fd
    }
}

fn cmsg_space_for(nfds: usize) -> usize {
    rustix::cmsg_space!(ScmRights(nfds))
}

fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    let fl = rustix::fs::fcntl_getfl(fd)?;
    let fl = if nonblocking { fl | rustix::fs::OFlags::NONBLOCK } else { fl - rustix::fs::OFlags::NONBLOCK };
    rustix::fs::fcntl_setfl(fd, fl)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memfd::{create_memfd, file_len};
    use crate::EventFd;

    fn sock_path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hvtrace-sys-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("ctl.sock")
    }

    #[test]
    fn fd_passing_round_trip() {
        let path = sock_path("fds");
        let l = Listener::bind(&path, 0o600).unwrap();
        let client = Conn::connect(&path).unwrap();
        let server = l.accept().unwrap();

        let mem = create_memfd("hvtrace-data-pass", 12288).unwrap();
        let ev = EventFd::new().unwrap();
        server.send(b"mapped", &[mem.as_fd(), ev.as_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = client.recv(&mut buf, 8).unwrap();
        assert_eq!(&buf[..n], b"mapped");
        assert_eq!(fds.len(), 2);
        assert_eq!(file_len(&fds[0]).unwrap(), 12288);
        for fd in &fds {
            let fl = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
        }
        let ev2 = EventFd::from_fd(fds.into_iter().nth(1).unwrap()).unwrap();
        ev2.signal().unwrap();
        assert_eq!(ev.drain().unwrap(), 1);

        // A message without fds, other direction.
        client.send(b"status", &[]).unwrap();
        let (n, fds) = server.recv(&mut buf, 4).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"status"[..], 0));

        // EOF after close.
        drop(client);
        assert_eq!(server.recv(&mut buf, 4).unwrap().0, 0);
        assert!(server.send(b"x", &[]).is_err()); // EPIPE, no SIGPIPE
    }

    #[test]
    fn peer_credentials_are_ours() {
        let path = sock_path("cred");
        let l = Listener::bind(&path, 0o600).unwrap();
        let client = Conn::connect(&path).unwrap();
        let server = l.accept().unwrap();
        let me = PeerCred {
            pid: std::process::id(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        assert_eq!(server.peer_cred().unwrap(), me);
        assert_eq!(client.peer_cred().unwrap(), me);
    }

    #[test]
    fn truncated_message_is_an_error() {
        let (a, b) = Conn::pair().unwrap();
        a.send(&[7u8; 100], &[]).unwrap();
        let mut small = [0u8; 10];
        let e = b.recv(&mut small, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(e.to_string().contains("100 bytes"), "{e}");
        // Message boundaries hold: the next message is intact.
        a.send(b"next", &[]).unwrap();
        let (n, _) = b.recv(&mut small, 0).unwrap();
        assert_eq!(&small[..n], b"next");
    }

    #[test]
    fn too_many_fds_is_an_error() {
        let (a, b) = Conn::pair().unwrap();
        let e1 = EventFd::new().unwrap();
        let e2 = EventFd::new().unwrap();
        let e3 = EventFd::new().unwrap();
        a.send(b"x", &[e1.as_fd(), e2.as_fd(), e3.as_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let e = b.recv(&mut buf, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        a.send(b"y", &[e1.as_fd()]).unwrap();
        let (n, fds) = b.recv(&mut buf, 1).unwrap();
        assert_eq!((n, fds.len()), (1, 1));
    }

    #[test]
    fn timeouts_and_nonblocking() {
        let (a, b) = Conn::pair().unwrap();
        let mut buf = [0u8; 8];
        b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let e = b.recv(&mut buf, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        b.set_read_timeout(None).unwrap();
        assert!(b.set_read_timeout(Some(Duration::ZERO)).is_err());
        b.set_nonblocking(true).unwrap();
        let e = b.recv(&mut buf, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        a.send(b"hi", &[]).unwrap();
        assert_eq!(b.recv(&mut buf, 0).unwrap().0, 2);
        b.set_nonblocking(false).unwrap();
    }

    #[test]
    fn bind_mode_stale_and_in_use() {
        let path = sock_path("bind");
        let l = Listener::bind(&path, 0o600).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(meta.file_type().is_socket());
        // Somebody listens: refuse, and leave their socket alone.
        let e = Listener::bind(&path, 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(Conn::connect(&path).is_ok());
        drop(l); // removes the file
        assert!(!path.exists());
        // A stale socket file (bound, its owner gone without cleanup) is
        // replaced.
        {
            let fd = net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
            net::bind(&fd, &SocketAddrUnix::new(path.as_path()).unwrap()).unwrap();
        }
        assert!(path.exists());
        let l2 = Listener::bind(&path, 0o640).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        drop(l2);
        // A regular file is never removed.
        std::fs::write(&path, b"not a socket").unwrap();
        let e = Listener::bind(&path, 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn nonblocking_accept() {
        let path = sock_path("nbaccept");
        let l = Listener::bind(&path, 0o600).unwrap();
        l.set_nonblocking(true).unwrap();
        assert_eq!(l.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let _c = Conn::connect(&path).unwrap();
        l.accept().unwrap();
        assert_eq!(l.path(), path.as_path());
    }
}
