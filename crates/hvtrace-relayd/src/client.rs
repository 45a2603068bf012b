//! [`Relayd`]: one session on an lttng-relayd, over its control and data
//! sockets, with blocking I/O bounded by a timeout.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::wire::{self, Cmd, PacketIndex};
use crate::{RelaydError, RelaydUrl};

/// What the relay needs to know of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    /// Session name: a live viewer attaches to `net://RELAY/host/HOSTNAME/SESSION`.
    pub session: String,
    /// This machine's name, as the relay files and lists the session.
    pub hostname: String,
    /// The live timer in microseconds, announced to viewers; must not be 0
    /// (a session without it is not live: viewers cannot attach).
    pub live_timer_us: u32,
    /// Directory of the trace under the relay's `HOSTNAME/` directory.
    pub pathname: String,
}

/// A data stream opened on the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayStream {
    /// The relay's handle.
    pub handle: u64,
    /// Its file name on the relay.
    pub name: String,
    /// Network sequence number of the next packet (0, 1, 2 …).
    pub next_seq: u64,
}

/// A session on a relay daemon: see the [crate docs](crate).
#[derive(Debug)]
pub struct Relayd {
    url: RelaydUrl,
    ctrl: TcpStream,
    data: TcpStream,
    buf: Vec<u8>,
    session_id: u64,
    pathname: String,
    metadata: u64,
    minor: u32,
    /// `SEND_INDEX` replies not read yet. They are read later, in order:
    /// waiting for each would leave the data socket idle for a round trip
    /// per packet.
    unacked: usize,
}

/// Most packets sent ahead of their index's reply: enough to keep the data
/// socket busy while the relay answers.
const MAX_UNACKED: usize = 4;

fn connect(addr: (&str, u16), timeout: Duration, which: &'static str) -> Result<TcpStream, RelaydError> {
    let err = |source| RelaydError::Connect { which, host: addr.0.to_string(), port: addr.1, source };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name resolves to no address");
    for a in addr.to_socket_addrs().map_err(err)? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                // Control: indexes are small and each waits for its reply.
                // Data: a packet goes in one `writev`, and Nagle would only
                // hold its last segment back until an ACK, delaying the
                // packet's index on the relay (live latency) for nothing.
                let _ = s.set_nodelay(true);
                s.set_read_timeout(Some(timeout)).and_then(|()| s.set_write_timeout(Some(timeout))).map_err(err)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

fn check_name(what: &'static str, s: &str, max: usize) -> Result<(), RelaydError> {
    // The relay makes directories of these (lttng-tools `is_name_path_safe`).
    let why = if s.is_empty() {
        "empty"
    } else if s.len() > max {
        "too long"
    } else if s.contains(['/', '\0']) {
        "contains '/' or NUL"
    } else if s.starts_with('.') {
        "starts with '.'"
    } else {
        return Ok(());
    };
    Err(RelaydError::BadName { what, name: s.to_string(), why })
}

impl Relayd {
    /// Connects both sockets, negotiates the protocol, creates the session
    /// and its metadata stream. `timeout` bounds every connect, send and
    /// reply: a relay that does not keep up within it counts as gone.
    pub fn connect(url: &RelaydUrl, params: &SessionParams, timeout: Duration) -> Result<Relayd, RelaydError> {
        check_name("session name", &params.session, wire::MAX_SESSION_NAME)?;
        check_name("host name", &params.hostname, wire::MAX_HOSTNAME)?;
        if params.pathname.is_empty()
            || params.pathname.len() >= 4096
            || params.pathname.split('/').any(|c| c.is_empty() || c.starts_with('.'))
        {
            return Err(RelaydError::BadName {
                what: "trace path",
                name: params.pathname.clone(),
                why: "empty component or one starting with '.'",
            });
        }
        if params.live_timer_us == 0 {
            return Err(RelaydError::BadName { what: "live timer", name: "0".into(), why: "must not be 0" });
        }
        let ctrl = connect(url.control(), timeout, "control")?;
        let data = connect(url.data(), timeout, "data")?;
        let mut r = Relayd {
            url: url.clone(),
            ctrl,
            data,
            buf: Vec::with_capacity(wire::CTRL_HDR + wire::ADD_STREAM_LEN),
            session_id: 0,
            pathname: params.pathname.clone(),
            metadata: 0,
            minor: 0,
            unacked: 0,
        };
        wire::version(&mut r.buf);
        let mut v = [0u8; 8];
        r.request(Cmd::Version, &mut v)?;
        let (major, minor) = (wire::u32_at(&v, 0), wire::u32_at(&v, 4));
        // Indexes (needed by live viewers) came with 2.4.
        if major != wire::VERSION.0 || minor < 4 {
            return Err(RelaydError::Protocol(format!(
                "the relay speaks protocol {major}.{minor}; hvtrace needs 2.4 or later"
            )));
        }
        r.minor = minor.min(wire::VERSION.1);
        wire::create_session(&mut r.buf, &params.session, &params.hostname, params.live_timer_us);
        r.session_id = r.request_status(Cmd::CreateSession)?;
        r.metadata = r.add_stream_raw("metadata")?;
        Ok(r)
    }

    /// The relay's address.
    pub fn url(&self) -> &RelaydUrl {
        &self.url
    }

    /// The relay's id of the session.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// The protocol minor version in use (2.x).
    pub fn minor_version(&self) -> u32 {
        self.minor
    }

    /// Appends TSDL text to the trace's `metadata`. Send whole top-level
    /// declarations: a viewer parses what it has so far.
    pub fn send_metadata(&mut self, text: &str) -> Result<(), RelaydError> {
        self.read_acks(0)?;
        wire::send_metadata(&mut self.buf, self.metadata, text.len());
        // No reply to this one.
        self.ctrl
            .write_all(&self.buf)
            .and_then(|()| self.ctrl.write_all(text.as_bytes()))
            .map_err(|e| RelaydError::io(Cmd::SendMetadata.name(), e))
    }

    /// Opens a data stream, the file `name` of the trace. Viewers learn of
    /// it at the next [`streams_sent`](Self::streams_sent).
    pub fn add_stream(&mut self, name: &str) -> Result<RelayStream, RelaydError> {
        check_name("stream name", name, wire::MAX_STREAM_NAME)?;
        if name == "metadata" {
            return Err(RelaydError::BadName { what: "stream name", name: name.into(), why: "reserved" });
        }
        let handle = self.add_stream_raw(name)?;
        Ok(RelayStream { handle, name: name.to_string(), next_seq: 0 })
    }

    fn add_stream_raw(&mut self, name: &str) -> Result<u64, RelaydError> {
        wire::add_stream(&mut self.buf, name, &self.pathname);
        self.request_status(Cmd::AddStream)
    }

    /// Publishes the streams added so far to live viewers.
    pub fn streams_sent(&mut self) -> Result<(), RelaydError> {
        wire::streams_sent(&mut self.buf);
        self.request_ok(Cmd::StreamsSent)
    }

    /// Sends one whole CTF packet on the data socket (header and packet in
    /// one `writev`), then its index, without waiting for the index's reply:
    /// [`unacked`](Self::unacked) counts the packets not acknowledged yet,
    /// which the next requests read (at most 4 are left outstanding). A
    /// refusal or failure found then is that call's error.
    pub fn send_packet(&mut self, s: &mut RelayStream, bytes: &[u8], index: &PacketIndex) -> Result<(), RelaydError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| RelaydError::Protocol(format!("a packet of {} bytes is too long to relay", bytes.len())))?;
        let hdr = wire::data_header(s.handle, s.next_seq, len);
        write_all_vectored(&mut self.data, &mut [IoSlice::new(&hdr), IoSlice::new(bytes)])
            .map_err(|e| RelaydError::io("sending packet data", e))?;
        wire::send_index(&mut self.buf, s.handle, s.next_seq, index);
        self.ctrl.write_all(&self.buf).map_err(|e| RelaydError::io(Cmd::SendIndex.name(), e))?;
        self.unacked += 1;
        s.next_seq += 1;
        if self.unacked > MAX_UNACKED {
            self.read_acks(MAX_UNACKED)?;
        }
        Ok(())
    }

    /// Packets sent whose index the relay has not acknowledged yet: after
    /// an error, the relay may not have stored them.
    pub fn unacked(&self) -> usize {
        self.unacked
    }

    /// After a failure: reads the index replies the relay sent before it
    /// (they may still wait in the socket), for at most 10 ms more.
    pub fn salvage_acks(&mut self) {
        if self.ctrl.set_read_timeout(Some(Duration::from_millis(10))).is_ok() {
            let _ = self.read_acks(0);
        }
    }

    /// Reads index replies until at most `keep` are outstanding.
    pub fn read_acks(&mut self, keep: usize) -> Result<(), RelaydError> {
        while self.unacked > keep {
            let mut r = [0u8; 4];
            self.ctrl.read_exact(&mut r).map_err(|e| RelaydError::io(Cmd::SendIndex.name(), e))?;
            check(Cmd::SendIndex, wire::u32_at(&r, 0))?;
            self.unacked -= 1;
        }
        Ok(())
    }

    /// A live beacon: tells viewers that stream `s` (CTF stream class
    /// `stream_id`, instance `instance`) has nothing before `timestamp`, so
    /// they can move past it.
    pub fn send_beacon(
        &mut self,
        s: &RelayStream,
        stream_id: u64,
        instance: u64,
        timestamp: u64,
    ) -> Result<(), RelaydError> {
        let index = PacketIndex {
            timestamp_begin: timestamp,
            timestamp_end: timestamp,
            stream_id,
            stream_instance_id: instance,
            ..PacketIndex::default()
        };
        // packet_size 0 makes it a beacon; the sequence number is not used.
        wire::send_index(&mut self.buf, s.handle, s.next_seq.wrapping_sub(1), &index);
        self.request_ok(Cmd::SendIndex)
    }

    /// Closes a data stream: a live viewer sees its end once it has read
    /// every packet.
    pub fn close_stream(&mut self, s: RelayStream) -> Result<(), RelaydError> {
        wire::close_stream(&mut self.buf, s.handle, s.next_seq.wrapping_sub(1));
        self.request_ok(Cmd::CloseStream)
    }

    /// Closes the metadata stream and both sockets: the session ends on the
    /// relay (viewers see it hang up once they have read everything).
    pub fn close(mut self) -> Result<(), RelaydError> {
        wire::close_stream(&mut self.buf, self.metadata, u64::MAX);
        let r = self.request_ok(Cmd::CloseStream);
        let _ = self.data.shutdown(Shutdown::Both);
        let _ = self.ctrl.shutdown(Shutdown::Both);
        r
    }

    /// Sends the message in `buf` and reads a reply of `reply.len()` bytes
    /// (after the replies still owed for packets).
    fn request(&mut self, cmd: Cmd, reply: &mut [u8]) -> Result<(), RelaydError> {
        self.read_acks(0)?;
        self.ctrl.write_all(&self.buf).map_err(|e| RelaydError::io(cmd.name(), e))?;
        self.ctrl.read_exact(reply).map_err(|e| RelaydError::io(cmd.name(), e))
    }

    /// A request answered by a bare `u32` return code.
    fn request_ok(&mut self, cmd: Cmd) -> Result<(), RelaydError> {
        let mut r = [0u8; 4];
        self.request(cmd, &mut r)?;
        check(cmd, wire::u32_at(&r, 0))
    }

    /// A request answered by `{u64 id, u32 ret_code}`; returns the id.
    fn request_status(&mut self, cmd: Cmd) -> Result<u64, RelaydError> {
        let mut r = [0u8; 12];
        self.request(cmd, &mut r)?;
        check(cmd, wire::u32_at(&r, 8))?;
        Ok(wire::u64_at(&r, 0))
    }
}

/// `write_all` for several buffers: one `writev` per partial write.
fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn check(cmd: Cmd, code: u32) -> Result<(), RelaydError> {
    if code == wire::LTTNG_OK {
        Ok(())
    } else {
        Err(RelaydError::Refused { command: cmd.name(), code })
    }
}
