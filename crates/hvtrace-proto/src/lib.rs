//! The hvtrace control ABI: the "hypercalls" a consumer or a control command
//! sends to a host over its control socket, and the host's replies.
//!
//! Pure bytes, no I/O. One message per `SOCK_SEQPACKET` datagram:
//!
//! ```text
//! offset size field
//!      0    4 magic    b"HVTC"
//!      4    2 version  u16 LE, = VERSION (3)
//!      6    2 kind     u16 LE, see the `kind` module
//!      8    4 len      u32 LE, payload length = datagram length - 12
//!     12  len payload  postcard encoding of the kind's fields
//! ```
//!
//! A whole message is at most [`MAX_MESSAGE`] bytes. The payload of each kind
//! is the postcard (serde) encoding of that variant's fields alone (empty for
//! variants without fields), so the kind numbers, not Rust enum order, decide
//! the wire format of requests and replies. Inside payloads, enums
//! ([`Mode`], [`ErrorCode`], [`ChannelState`]) are encoded by variant index
//! and structs field by field: new variants are only ever appended, and any
//! other change to a payload needs a new [`VERSION`].
//!
//! Decoding never panics: every malformed input is a [`ProtoError`].
//!
//! # Descriptors
//! Some replies travel with file descriptors beside the bytes (`SCM_RIGHTS`).
//! [`Reply::Mapped`] carries, in this order:
//!
//! | index | descriptor |
//! |---|---|
//! | 0 | the channel's control memfd (`hvtrace-ctrl-*`), read-write, `ctrl_len` bytes |
//! | 1 | the channel's "rings changed" eventfd (signalled when a CPU ring appears) |
//! | 2 + 2i | data memfd of `rings[i]` (`hvtrace-data-*`), read-only, `rings[i].data_len` bytes |
//! | 3 + 2i | eventfd of `rings[i]`, signalled when a sub-buffer is delivered |
//! | 2 + 2n | the channel's metadata log (`hvtrace-meta-*`), read-only, `metadata_len` bytes |
//!
//! so `3 + 2 * rings.len()` descriptors in all; [`MapInfo::fd_count`] computes
//! it, [`MapInfo::metadata_fd_index`] says where the metadata log is. The
//! metadata log (layout: `hvtrace_core::metalog`) holds the channel's TSDL
//! text and grows, append-only, as the host registers event classes; the
//! consumer reads it instead of a copy in the reply (version 3; version 2
//! carried the text in `MapInfo`, at most 64 KiB, and could not grow). The
//! kernel passes at most 253 descriptors in one message
//! (`SCM_MAX_FD`), so `rings` lists at most [`MAP_MAX_RINGS`] rings: the
//! first ones in CPU order. The others are in the `status` reply's ring list,
//! and a consumer maps each with [`Request::MapRing`], as it maps a CPU that
//! comes online (version 2; version 1 sent every ring and failed from 126
//! CPUs on). [`Reply::RingMapped`] (answer to [`Request::MapRing`], e.g. after CPU
//! hotplug) carries 2: the ring's data memfd (read-only), then its eventfd.
//! All other messages carry none.
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The four bytes every message starts with.
pub const MAGIC: [u8; 4] = *b"HVTC";
/// The protocol version this crate speaks.
pub const VERSION: u16 = 3;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 12;
/// Largest message (header + payload) a peer accepts, in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most rings one [`Reply::Mapped`] lists: its `3 + 2 * rings` descriptors
/// must fit the kernel's 253 per `SCM_RIGHTS` message (`SCM_MAX_FD`).
pub const MAP_MAX_RINGS: usize = (253 - 3) / 2;
/// Largest metadata log a consumer maps ([`MapInfo::metadata_len`]): a host
/// sizes its log below this, a consumer refuses a larger one.
pub const MAX_METADATA_LEN: u64 = 4 << 20;

/// Smallest sub-buffer size (one page).
pub const MIN_SUBBUF_SIZE: u64 = 4 * 1024;
/// Largest sub-buffer size.
pub const MAX_SUBBUF_SIZE: u64 = 64 * 1024 * 1024;
/// Fewest sub-buffers per ring.
pub const MIN_NUM_SUBBUF: u32 = 2;
/// Most sub-buffers per ring.
pub const MAX_NUM_SUBBUF: u32 = 1024;
/// Largest ring (`subbuf_size * num_subbuf`).
pub const MAX_RING_SIZE: u64 = 1024 * 1024 * 1024;

/// Message kind numbers (the `kind` field of the header). Requests are
/// `0x00xx`, replies `0x80xx`.
pub mod kind {
    /// [`Request::Create`](crate::Request::Create)
    pub const CREATE: u16 = 0x0001;
    /// [`Request::Start`](crate::Request::Start)
    pub const START: u16 = 0x0002;
    /// [`Request::Stop`](crate::Request::Stop)
    pub const STOP: u16 = 0x0003;
    /// [`Request::Destroy`](crate::Request::Destroy)
    pub const DESTROY: u16 = 0x0004;
    /// [`Request::Map`](crate::Request::Map)
    pub const MAP: u16 = 0x0005;
    /// [`Request::MapRing`](crate::Request::MapRing)
    pub const MAP_RING: u16 = 0x0006;
    /// [`Request::Unmap`](crate::Request::Unmap)
    pub const UNMAP: u16 = 0x0007;
    /// [`Request::Status`](crate::Request::Status)
    pub const STATUS: u16 = 0x0008;
    /// [`Request::Flush`](crate::Request::Flush)
    pub const FLUSH: u16 = 0x0009;

    /// [`Reply::Ok`](crate::Reply::Ok)
    pub const OK: u16 = 0x8001;
    /// [`Reply::Error`](crate::Reply::Error)
    pub const ERROR: u16 = 0x8002;
    /// [`Reply::Created`](crate::Reply::Created)
    pub const CREATED: u16 = 0x8003;
    /// [`Reply::Mapped`](crate::Reply::Mapped)
    pub const MAPPED: u16 = 0x8004;
    /// [`Reply::RingMapped`](crate::Reply::RingMapped)
    pub const RING_MAPPED: u16 = 0x8005;
    /// [`Reply::Status`](crate::Reply::Status)
    pub const STATUS_REPLY: u16 = 0x8006;

    /// Whether `k` is in the reply range.
    pub const fn is_reply(k: u16) -> bool {
        k & 0x8000 != 0
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Why a message could not be decoded (or encoded within [`MAX_MESSAGE`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Fewer bytes than a frame header.
    #[error("truncated message: {len} bytes, a header needs {HEADER_LEN}")]
    Truncated {
        /// Bytes received.
        len: usize,
    },
    /// The message does not start with `HVTC`.
    #[error("bad magic {found:02x?}: not an hvtrace control message (expected \"HVTC\")")]
    BadMagic {
        /// The first four bytes received.
        found: [u8; 4],
    },
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {found} (this side speaks version {supported})")]
    UnsupportedVersion {
        /// Version in the header.
        found: u16,
        /// [`VERSION`].
        supported: u16,
    },
    /// The header's payload length disagrees with the datagram's size.
    #[error("length mismatch: header says {header} payload bytes, message has {actual}")]
    LengthMismatch {
        /// `len` from the header.
        header: u32,
        /// Bytes actually following the header.
        actual: usize,
    },
    /// The message is larger than [`MAX_MESSAGE`].
    #[error("message too large: {len} bytes (limit {MAX_MESSAGE})")]
    TooLarge {
        /// Message size in bytes.
        len: usize,
    },
    /// The kind number is not known to this version.
    #[error("unknown message kind {kind:#06x}")]
    UnknownKind {
        /// Kind from the header.
        kind: u16,
    },
    /// A reply arrived where a request was expected, or the reverse.
    #[error("message kind {kind:#06x} is a {found}, expected a {expected}")]
    WrongDirection {
        /// Kind from the header.
        kind: u16,
        /// `"request"` or `"reply"`.
        found: &'static str,
        /// `"request"` or `"reply"`.
        expected: &'static str,
    },
    /// The payload is not a valid encoding of the kind's fields.
    #[error("malformed payload for kind {kind:#06x}: {reason}")]
    BadPayload {
        /// Kind from the header.
        kind: u16,
        /// postcard's description.
        reason: String,
    },
    /// Bytes left over after the kind's fields were decoded.
    #[error("{count} trailing bytes after the payload of kind {kind:#06x}")]
    TrailingBytes {
        /// Kind from the header.
        kind: u16,
        /// Unused bytes.
        count: usize,
    },
}

impl ProtoError {
    /// The [`ErrorCode`] a host answers a message that failed to decode with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::UnsupportedVersion { .. } => ErrorCode::BadVersion,
            _ => ErrorCode::BadMessage,
        }
    }
}

/// Why a [`ChannelConfig`] is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `subbuf_size` is not a power of two.
    #[error("sub-buffer size {0} is not a power of two")]
    SubbufSizeNotPowerOfTwo(u64),
    /// `subbuf_size` outside [`MIN_SUBBUF_SIZE`]..=[`MAX_SUBBUF_SIZE`].
    #[error("sub-buffer size {0} is out of range (4096 ..= 67108864 bytes)")]
    SubbufSizeOutOfRange(u64),
    /// `num_subbuf` is not a power of two.
    #[error("sub-buffer count {0} is not a power of two")]
    NumSubbufNotPowerOfTwo(u32),
    /// `num_subbuf` outside [`MIN_NUM_SUBBUF`]..=[`MAX_NUM_SUBBUF`].
    #[error("sub-buffer count {0} is out of range (2 ..= 1024)")]
    NumSubbufOutOfRange(u32),
    /// `subbuf_size * num_subbuf` exceeds [`MAX_RING_SIZE`].
    #[error("ring size {0} bytes (sub-buffer size x count) exceeds the limit of 1 GiB per CPU")]
    RingTooLarge(u64),
}

// ---------------------------------------------------------------------------
// Payload types

/// What a full ring does with new events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Mode {
    /// Drop new events when the ring is full, counting them (the default).
    #[default]
    Discard,
    /// Overwrite the oldest sub-buffers ("flight recorder").
    Overwrite,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Discard => "discard",
            Mode::Overwrite => "overwrite",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    /// Parses `discard` or `overwrite` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "discard" => Ok(Mode::Discard),
            "overwrite" => Ok(Mode::Overwrite),
            _ => Err(format!("unknown mode {s:?}: expected \"discard\" or \"overwrite\"")),
        }
    }
}

/// Geometry and mode of a channel; each CPU ring has `num_subbuf`
/// sub-buffers of `subbuf_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelConfig {
    /// Bytes per sub-buffer (a power of two, 4 KiB ..= 64 MiB).
    pub subbuf_size: u64,
    /// Sub-buffers per ring (a power of two, 2 ..= 1024).
    pub num_subbuf: u32,
    /// Discard or overwrite when full.
    pub mode: Mode,
}

impl Default for ChannelConfig {
    /// 256 KiB x 8 sub-buffers, discard mode.
    fn default() -> Self {
        Self { subbuf_size: 256 * 1024, num_subbuf: 8, mode: Mode::Discard }
    }
}

impl ChannelConfig {
    /// Checks the limits: both sizes powers of two, `subbuf_size` in
    /// 4 KiB ..= 64 MiB, `num_subbuf` in 2 ..= 1024, ring size at most 1 GiB.
    /// Decoding does not validate; a host must call this on `Create`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = self.subbuf_size;
        if !s.is_power_of_two() {
            return Err(ConfigError::SubbufSizeNotPowerOfTwo(s));
        }
        if !(MIN_SUBBUF_SIZE..=MAX_SUBBUF_SIZE).contains(&s) {
            return Err(ConfigError::SubbufSizeOutOfRange(s));
        }
        let n = self.num_subbuf;
        if !n.is_power_of_two() {
            return Err(ConfigError::NumSubbufNotPowerOfTwo(n));
        }
        if !(MIN_NUM_SUBBUF..=MAX_NUM_SUBBUF).contains(&n) {
            return Err(ConfigError::NumSubbufOutOfRange(n));
        }
        let total = self.ring_size();
        if total > MAX_RING_SIZE {
            return Err(ConfigError::RingTooLarge(total));
        }
        Ok(())
    }

    /// Bytes per ring, `subbuf_size * num_subbuf` (saturating).
    pub fn ring_size(&self) -> u64 {
        self.subbuf_size.saturating_mul(u64::from(self.num_subbuf))
    }
}

/// Why a request failed (in [`Reply::Error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request could not be decoded.
    BadMessage,
    /// The request's protocol version is not supported.
    BadVersion,
    /// Not allowed in the channel's current state (e.g. `Start` before `Create`).
    BadState,
    /// The `ChannelConfig` was refused (see [`ConfigError`]).
    BadConfig,
    /// No such channel or ring.
    NotFound,
    /// Temporarily impossible (e.g. a consumer is already attached).
    Busy,
    /// The peer's credentials are not allowed.
    Denied,
    /// The host failed (out of memory, syscall error, ...).
    Internal,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::BadMessage => "bad message",
            ErrorCode::BadVersion => "bad version",
            ErrorCode::BadState => "bad state",
            ErrorCode::BadConfig => "bad config",
            ErrorCode::NotFound => "not found",
            ErrorCode::Busy => "busy",
            ErrorCode::Denied => "denied",
            ErrorCode::Internal => "internal error",
        })
    }
}

/// Where one CPU ring lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RingInfo {
    /// CPU number the ring records.
    pub cpu: u32,
    /// Size of the ring's data memfd in bytes (sub-buffers plus
    /// producer-owned counters).
    pub data_len: u64,
    /// Offset of this ring's consumer state inside the control memfd.
    pub ctrl_offset: u64,
}

/// Answer to [`Request::Map`]: everything a consumer needs to attach.
/// Descriptors travel beside it; see the [crate docs](crate#descriptors).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MapInfo {
    /// Channel name (used for stream file names).
    pub channel: String,
    /// The trace's UUID (CTF `trace.uuid`).
    pub trace_uuid: [u8; 16],
    /// The channel's geometry.
    pub config: ChannelConfig,
    /// Size of the control memfd in bytes.
    pub ctrl_len: u64,
    /// The rings handed out with this reply, in descriptor order: at most
    /// [`MAP_MAX_RINGS`], the first in CPU order; `status` lists them all.
    pub rings: Vec<RingInfo>,
    /// Size in bytes of the metadata log handed out with this reply (the
    /// last descriptor), at most [`MAX_METADATA_LEN`].
    pub metadata_len: u64,
}

impl MapInfo {
    /// Number of descriptors that must accompany this reply:
    /// `3 + 2 * rings.len()`.
    pub fn fd_count(&self) -> usize {
        3 + 2 * self.rings.len()
    }

    /// Index of the metadata log among the descriptors: after the rings'.
    pub fn metadata_fd_index(&self) -> usize {
        2 + 2 * self.rings.len()
    }
}

/// Life-cycle state of the host's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ChannelState {
    /// No channel was created yet.
    #[default]
    Empty,
    /// Created, not recording.
    Created,
    /// Recording.
    Started,
    /// Stopped (flushed); may be started again.
    Stopped,
    /// Destroyed; memory is freed when the last mapping goes away.
    Destroyed,
}

impl fmt::Display for ChannelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelState::Empty => "empty",
            ChannelState::Created => "created",
            ChannelState::Started => "started",
            ChannelState::Stopped => "stopped",
            ChannelState::Destroyed => "destroyed",
        })
    }
}

/// Counters of one CPU ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct RingStatus {
    /// CPU number.
    pub cpu: u32,
    /// Bytes written by the producer (committed).
    pub produced_bytes: u64,
    /// Bytes the consumer has released.
    pub consumed_bytes: u64,
    /// Sub-buffers delivered (closed and signalled).
    pub delivered_subbufs: u64,
    /// Events lost, all causes.
    pub events_discarded: u64,
    /// Events lost because the ring was full (discard mode).
    pub discarded_full: u64,
    /// Events lost because they were larger than a sub-buffer.
    pub discarded_too_big: u64,
    /// Events lost because the ring was busy (e.g. nested/reentrant writer).
    pub discarded_busy: u64,
    /// Sub-buffers overwritten before being consumed (overwrite mode).
    pub overwritten: u64,
}

/// Answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Channel state.
    pub state: ChannelState,
    /// Number of live `Map` references.
    pub refcount: u32,
    /// `Destroy` was requested and waits for the last reference to go.
    pub destroy_pending: bool,
    /// The channel's configuration, if one was created.
    pub config: Option<ChannelConfig>,
    /// Per-ring counters.
    pub rings: Vec<RingStatus>,
}

// ---------------------------------------------------------------------------
// Messages

/// A control request ("hypercall"), sent to the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// Create the channel (answer: `Created` or `Error`).
    Create(ChannelConfig),
    /// Start recording.
    Start,
    /// Stop recording: wait for writers to leave, flush partial sub-buffers,
    /// wake consumers.
    Stop,
    /// Destroy the channel (memory freed when the last reference goes).
    Destroy,
    /// Attach as a consumer and take a reference (answer: `Mapped` + fds).
    Map,
    /// Get one CPU ring, e.g. one that appeared after `Map` (answer:
    /// `RingMapped` + fds).
    MapRing {
        /// CPU number of the ring.
        cpu: u32,
    },
    /// Drop this connection's reference.
    Unmap,
    /// Query state and counters (answer: `Status`).
    Status,
    /// Close the current partial sub-buffers so the consumer can read them.
    Flush,
}

/// A reply from the host; exactly one per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// The request succeeded and has no data to return.
    Ok,
    /// The request failed.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// The channel was created.
    Created,
    /// Answer to `Map` (descriptors beside it).
    Mapped(MapInfo),
    /// Answer to `MapRing` (2 descriptors beside it).
    RingMapped(RingInfo),
    /// Answer to `Status`.
    Status(StatusInfo),
}

impl Request {
    /// The header kind number.
    pub fn kind(&self) -> u16 {
        match self {
            Request::Create(_) => kind::CREATE,
            Request::Start => kind::START,
            Request::Stop => kind::STOP,
            Request::Destroy => kind::DESTROY,
            Request::Map => kind::MAP,
            Request::MapRing { .. } => kind::MAP_RING,
            Request::Unmap => kind::UNMAP,
            Request::Status => kind::STATUS,
            Request::Flush => kind::FLUSH,
        }
    }

    /// Lower-case name (`create`, `map_ring`, ...), for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Create(_) => "create",
            Request::Start => "start",
            Request::Stop => "stop",
            Request::Destroy => "destroy",
            Request::Map => "map",
            Request::MapRing { .. } => "map_ring",
            Request::Unmap => "unmap",
            Request::Status => "status",
            Request::Flush => "flush",
        }
    }
}

impl Reply {
    /// The header kind number.
    pub fn kind(&self) -> u16 {
        match self {
            Reply::Ok => kind::OK,
            Reply::Error { .. } => kind::ERROR,
            Reply::Created => kind::CREATED,
            Reply::Mapped(_) => kind::MAPPED,
            Reply::RingMapped(_) => kind::RING_MAPPED,
            Reply::Status(_) => kind::STATUS_REPLY,
        }
    }

    /// Shorthand for `Reply::Error { code, message: message.into() }`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error { code, message: message.into() }
    }

    /// Number of descriptors that must accompany this reply.
    pub fn fd_count(&self) -> usize {
        match self {
            Reply::Mapped(m) => m.fd_count(),
            Reply::RingMapped(_) => 2,
            _ => 0,
        }
    }
}

impl From<ProtoError> for Reply {
    /// The reply a host sends for a request that failed to decode.
    fn from(e: ProtoError) -> Self {
        Reply::error(e.code(), e.to_string())
    }
}

impl From<ConfigError> for Reply {
    /// The reply a host sends for a refused `Create`.
    fn from(e: ConfigError) -> Self {
        Reply::error(ErrorCode::BadConfig, e.to_string())
    }
}

// ---------------------------------------------------------------------------
// Framing

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version (always [`VERSION`] once parsed successfully).
    pub version: u16,
    /// Message kind.
    pub kind: u16,
    /// Payload length.
    pub len: u32,
}

/// Checks the frame of a whole datagram (size, magic, version, length) and
/// returns its header and payload. Does not look at the kind.
pub fn parse_frame(msg: &[u8]) -> Result<(Header, &[u8]), ProtoError> {
    if msg.len() > MAX_MESSAGE {
        return Err(ProtoError::TooLarge { len: msg.len() });
    }
    if msg.len() >= 4 && msg[..4] != MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(&msg[..4]);
        return Err(ProtoError::BadMagic { found });
    }
    if msg.len() >= 6 {
        let version = u16::from_le_bytes([msg[4], msg[5]]);
        if version != VERSION {
            return Err(ProtoError::UnsupportedVersion { found: version, supported: VERSION });
        }
    }
    let (head, payload) = match msg.split_first_chunk::<HEADER_LEN>() {
        Some(x) => x,
        None => return Err(ProtoError::Truncated { len: msg.len() }),
    };
    let kind = u16::from_le_bytes([head[6], head[7]]);
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if usize::try_from(len).ok() != Some(payload.len()) {
        return Err(ProtoError::LengthMismatch { header: len, actual: payload.len() });
    }
    Ok((Header { version: VERSION, kind, len }, payload))
}

fn frame(kind: u16, payload: Vec<u8>) -> Vec<u8> {
    // A payload over 4 GiB cannot be sent anyway; saturating keeps encoding
    // infallible and makes the receiver reject it (TooLarge / LengthMismatch).
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn to_payload<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    // postcard only fails for types it cannot represent (maps with unknown
    // length, etc.) or when a fixed output buffer is full; neither can happen
    // with these types and an allocating Vec.
    postcard::to_allocvec(v).expect("postcard serialization of hvtrace-proto types cannot fail")
}

fn from_payload<'a, T: Deserialize<'a>>(kind: u16, payload: &'a [u8]) -> Result<T, ProtoError> {
    let (v, rest) =
        postcard::take_from_bytes(payload).map_err(|e| ProtoError::BadPayload { kind, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(ProtoError::TrailingBytes { kind, count: rest.len() });
    }
    Ok(v)
}

fn empty_payload(kind: u16, payload: &[u8]) -> Result<(), ProtoError> {
    if payload.is_empty() {
        Ok(())
    } else {
        Err(ProtoError::TrailingBytes { kind, count: payload.len() })
    }
}

fn check_size(msg: Vec<u8>) -> Result<Vec<u8>, ProtoError> {
    if msg.len() > MAX_MESSAGE {
        Err(ProtoError::TooLarge { len: msg.len() })
    } else {
        Ok(msg)
    }
}

/// Encodes a request as one datagram. Requests are always far below
/// [`MAX_MESSAGE`].
pub fn encode_request(req: &Request) -> Vec<u8> {
    let payload = match req {
        Request::Create(cfg) => to_payload(cfg),
        Request::MapRing { cpu } => to_payload(cpu),
        Request::Start
        | Request::Stop
        | Request::Destroy
        | Request::Map
        | Request::Unmap
        | Request::Status
        | Request::Flush => Vec::new(),
    };
    frame(req.kind(), payload)
}

/// Encodes a reply as one datagram.
///
/// The result may exceed [`MAX_MESSAGE`] (a huge error message, thousands
/// of rings), in which case the peer will reject it; use
/// [`try_encode_reply`] to find out before sending.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let payload = match reply {
        Reply::Ok | Reply::Created => Vec::new(),
        Reply::Error { code, message } => to_payload(&(code, message)),
        Reply::Mapped(m) => to_payload(m),
        Reply::RingMapped(r) => to_payload(r),
        Reply::Status(s) => to_payload(s),
    };
    frame(reply.kind(), payload)
}

/// Like [`encode_request`], but fails with [`ProtoError::TooLarge`] rather
/// than produce a message over [`MAX_MESSAGE`].
pub fn try_encode_request(req: &Request) -> Result<Vec<u8>, ProtoError> {
    check_size(encode_request(req))
}

/// Like [`encode_reply`], but fails with [`ProtoError::TooLarge`] rather
/// than produce a message over [`MAX_MESSAGE`].
pub fn try_encode_reply(reply: &Reply) -> Result<Vec<u8>, ProtoError> {
    check_size(encode_reply(reply))
}

/// Decodes one datagram as a request. Never panics.
pub fn decode_request(msg: &[u8]) -> Result<Request, ProtoError> {
    let (h, p) = parse_frame(msg)?;
    let k = h.kind;
    let simple = |r: Request| empty_payload(k, p).map(|()| r);
    match k {
        kind::CREATE => from_payload(k, p).map(Request::Create),
        kind::START => simple(Request::Start),
        kind::STOP => simple(Request::Stop),
        kind::DESTROY => simple(Request::Destroy),
        kind::MAP => simple(Request::Map),
        kind::MAP_RING => from_payload(k, p).map(|cpu| Request::MapRing { cpu }),
        kind::UNMAP => simple(Request::Unmap),
        kind::STATUS => simple(Request::Status),
        kind::FLUSH => simple(Request::Flush),
        kind::OK..=kind::STATUS_REPLY => {
            Err(ProtoError::WrongDirection { kind: k, found: "reply", expected: "request" })
        }
        _ => Err(ProtoError::UnknownKind { kind: k }),
    }
}

/// Decodes one datagram as a reply. Never panics.
pub fn decode_reply(msg: &[u8]) -> Result<Reply, ProtoError> {
    let (h, p) = parse_frame(msg)?;
    let k = h.kind;
    match k {
        kind::OK => empty_payload(k, p).map(|()| Reply::Ok),
        kind::ERROR => from_payload::<(ErrorCode, String)>(k, p).map(|(code, message)| Reply::Error { code, message }),
        kind::CREATED => empty_payload(k, p).map(|()| Reply::Created),
        kind::MAPPED => from_payload::<MapInfo>(k, p).and_then(|m| {
            if m.rings.len() > MAP_MAX_RINGS {
                let reason = format!("{} rings, at most {MAP_MAX_RINGS} fit one message", m.rings.len());
                return Err(ProtoError::BadPayload { kind: k, reason });
            }
            Ok(Reply::Mapped(m))
        }),
        kind::RING_MAPPED => from_payload(k, p).map(Reply::RingMapped),
        kind::STATUS_REPLY => from_payload(k, p).map(Reply::Status),
        kind::CREATE..=kind::FLUSH => Err(ProtoError::WrongDirection { kind: k, found: "request", expected: "reply" }),
        _ => Err(ProtoError::UnknownKind { kind: k }),
    }
}

#[cfg(test)]
mod tests;
