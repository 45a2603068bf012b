//! The control client ("lttctl-xen"): one request, one reply, over a host's
//! control socket. Used by the `hvtrace create|start|stop|destroy|status`
//! commands and by the consumer daemon.
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hvtrace_proto::{decode_reply, encode_request, ErrorCode, ProtoError, Reply, Request, MAX_MESSAGE};
use hvtrace_sys::seqpacket::Conn;

/// What went wrong talking to a host.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket could not be reached.
    #[error("cannot connect to the host's control socket {path}: {source} (is the host running? `hvtrace sim --socket {path}` starts one)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("control socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The host closed the connection.
    #[error("the host closed the control connection")]
    Closed,
    /// The reply could not be decoded.
    #[error("malformed reply from the host: {0}")]
    Proto(#[from] ProtoError),
    /// The host refused the request.
    #[error("{request} refused ({code}): {message}")]
    Refused {
        /// Request name.
        request: &'static str,
        /// Reason code.
        code: ErrorCode,
        /// The host's explanation.
        message: String,
    },
    /// The host answered something unexpected for the request.
    #[error("unexpected reply to {request}: {reply}")]
    Unexpected {
        /// Request name.
        request: &'static str,
        /// What came back.
        reply: String,
    },
}

/// A connection to one host's control socket.
pub struct Client {
    conn: Conn,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `socket`; replies are awaited at most `timeout` (None: forever).
    pub fn connect(socket: &Path, timeout: Option<Duration>) -> Result<Client, CtlError> {
        let conn = Conn::connect(socket).map_err(|source| CtlError::Connect { path: socket.to_path_buf(), source })?;
        conn.set_read_timeout(timeout)?;
        Ok(Client { conn, buf: vec![0; MAX_MESSAGE] })
    }

    /// The underlying connection (to watch it for hang-up in an epoll set).
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Sends `req` and returns the reply with its descriptors; an `Error`
    /// reply becomes [`CtlError::Refused`].
    pub fn call(&mut self, req: &Request) -> Result<(Reply, Vec<OwnedFd>), CtlError> {
        self.conn.send(&encode_request(req), &[])?;
        let (n, fds) = self.conn.recv(&mut self.buf, hvtrace_sys::seqpacket::MAX_FDS)?;
        if n == 0 {
            return Err(CtlError::Closed);
        }
        match decode_reply(&self.buf[..n])? {
            Reply::Error { code, message } => Err(CtlError::Refused { request: req.name(), code, message }),
            reply => Ok((reply, fds)),
        }
    }

    /// Sends a request whose success reply is `Ok` or `Created`.
    pub fn simple(&mut self, req: &Request) -> Result<(), CtlError> {
        match self.call(req)?.0 {
            Reply::Ok | Reply::Created => Ok(()),
            other => Err(CtlError::Unexpected { request: req.name(), reply: format!("{other:?}") }),
        }
    }

    /// Asks for state and counters.
    pub fn status(&mut self) -> Result<hvtrace_proto::StatusInfo, CtlError> {
        match self.call(&Request::Status)?.0 {
            Reply::Status(s) => Ok(s),
            other => Err(CtlError::Unexpected { request: "status", reply: format!("{other:?}") }),
        }
    }
}
