//! The consumer's end of the control socket: one request, one reply (with
//! descriptors for `Map` / `MapRing`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use hvtrace_proto::{decode_reply, encode_request, Reply, Request, MAX_MESSAGE};
use hvtrace_sys::seqpacket::MAX_FDS;
use hvtrace_sys::Conn;

use crate::ConsumerError;

/// How long a reply may take. Not a poll: only a guard against a host that
/// accepts requests and never answers.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Control {
    conn: Conn,
    buf: Vec<u8>,
}

impl Control {
    pub(crate) fn connect(path: &Path) -> Result<Self, ConsumerError> {
        let conn = Conn::connect(path).map_err(|source| ConsumerError::Connect { path: path.to_path_buf(), source })?;
        conn.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(ConsumerError::io("setting the control socket timeout"))?;
        Ok(Self { conn, buf: vec![0; MAX_MESSAGE] })
    }

    /// Sends `req` and returns the reply with its descriptors, whose number
    /// is checked against the reply. An `Error` reply is returned as is.
    pub(crate) fn call(&mut self, req: &Request) -> Result<(Reply, Vec<OwnedFd>), ConsumerError> {
        self.conn.send(&encode_request(req), &[]).map_err(|e| gone_or(e, req))?;
        let (n, fds) = match self.conn.recv(&mut self.buf, MAX_FDS) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(ConsumerError::Protocol(format!(
                    "no reply to `{}` within {} s",
                    req.name(),
                    REPLY_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(gone_or(e, req)),
        };
        if n == 0 {
            return Err(ConsumerError::HostGone);
        }
        let reply = decode_reply(&self.buf[..n])
            .map_err(|e| ConsumerError::Protocol(format!("bad reply to `{}`: {e}", req.name())))?;
        if fds.len() != reply.fd_count() {
            return Err(ConsumerError::Protocol(format!(
                "reply to `{}` carried {} descriptors, expected {}",
                req.name(),
                fds.len(),
                reply.fd_count()
            )));
        }
        Ok((reply, fds))
    }

    /// Like [`call`](Self::call) but turns an `Error` reply into
    /// [`ConsumerError::Refused`].
    pub(crate) fn call_ok(&mut self, req: &Request) -> Result<(Reply, Vec<OwnedFd>), ConsumerError> {
        match self.call(req)? {
            (Reply::Error { code, message }, _) => Err(ConsumerError::Refused { request: req.name(), code, message }),
            r => Ok(r),
        }
    }

    /// Reads one unsolicited message after the socket polled readable:
    /// `true` if the host closed the connection. Messages are ignored, and
    /// counted in `ignored`.
    pub(crate) fn hung_up(&mut self, ignored: &mut u64) -> bool {
        match self.conn.recv(&mut self.buf, MAX_FDS) {
            Ok((0, _)) => true,
            Ok(_) => {
                *ignored += 1;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        }
    }
}

impl AsFd for Control {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

fn gone_or(e: io::Error, req: &Request) -> ConsumerError {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ConsumerError::HostGone,
        _ => ConsumerError::Io { what: format!("control request `{}`", req.name()), source: e },
    }
}
