//! The relay protocol's messages as bytes: big-endian, packed (lttng-tools
//! `src/common/sessiond-comm/relayd.hpp` and `sessiond-comm.hpp`), in the
//! 2.10 dialect (`create_session_2_4`, `add_stream_2_2`), which needs no
//! trace-chunk commands. See `docs/relayd.md`.

/// Command numbers (`enum lttcomm_relayd_command`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Cmd {
    AddStream = 1,
    CreateSession = 2,
    Version = 5,
    SendMetadata = 6,
    CloseStream = 7,
    SendIndex = 13,
    StreamsSent = 16,
}

impl Cmd {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cmd::AddStream => "ADD_STREAM",
            Cmd::CreateSession => "CREATE_SESSION",
            Cmd::Version => "VERSION",
            Cmd::SendMetadata => "SEND_METADATA",
            Cmd::CloseStream => "CLOSE_STREAM",
            Cmd::SendIndex => "SEND_INDEX",
            Cmd::StreamsSent => "STREAMS_SENT",
        }
    }
}

/// The protocol version claimed: 2.10 is the last before trace chunks.
pub(crate) const VERSION: (u32, u32) = (2, 10);
/// `LTTNG_OK`.
pub(crate) const LTTNG_OK: u32 = 10;
/// Control header: `u64 circuit_id, u64 data_size, u32 cmd, u32 cmd_version`.
pub(crate) const CTRL_HDR: usize = 24;
/// Data header: `u64 circuit_id, u64 stream_id, u64 net_seq_num, u32 data_size, u32 padding_size`.
pub(crate) const DATA_HDR: usize = 32;
/// `create_session_2_4`: `char name[255], char hostname[64], u32 live_timer, u32 snapshot`.
pub(crate) const CREATE_SESSION_LEN: usize = 255 + 64 + 4 + 4;
/// `add_stream_2_2`: `char channel_name[264], char pathname[4096], u64 tracefile_size, u64 tracefile_count`.
pub(crate) const ADD_STREAM_LEN: usize = 264 + 4096 + 8 + 8;
/// Longest session name (`LTTNG_NAME_MAX` less the NUL).
pub const MAX_SESSION_NAME: usize = 254;
/// Longest host name (`LTTNG_HOST_NAME_MAX` less the NUL).
pub const MAX_HOSTNAME: usize = 63;
/// Longest stream (channel) name.
pub const MAX_STREAM_NAME: usize = 263;

/// The fields of one index entry (`lttcomm_relayd_index`, 2.8+), less the
/// relay's stream handle and network sequence number, which the client adds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketIndex {
    /// Bits of the whole packet, padding included.
    pub packet_size_bits: u64,
    /// Bits of header and records.
    pub content_size_bits: u64,
    /// First timestamp (clock cycles).
    pub timestamp_begin: u64,
    /// Last timestamp (clock cycles).
    pub timestamp_end: u64,
    /// Cumulative events lost on the stream when the packet was closed.
    pub events_discarded: u64,
    /// CTF stream class id (not the relay's handle).
    pub stream_id: u64,
    /// CTF stream instance (the CPU).
    pub stream_instance_id: u64,
    /// The packet's CTF `packet_seq_num`.
    pub packet_seq_num: u64,
}

fn be32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn be64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_be_bytes());
}

/// A NUL-padded fixed-size string field; the caller checked the length.
fn fixed_str(b: &mut Vec<u8>, s: &str, len: usize) {
    debug_assert!(s.len() < len);
    let at = b.len();
    b.extend_from_slice(s.as_bytes());
    b.resize(at + len, 0);
}

/// Starts a control message: `b` is cleared and receives the header.
pub(crate) fn ctrl(b: &mut Vec<u8>, cmd: Cmd, payload_len: usize) {
    b.clear();
    be64(b, 0);
    be64(b, payload_len as u64);
    be32(b, cmd as u32);
    be32(b, 0);
}

pub(crate) fn version(b: &mut Vec<u8>) {
    ctrl(b, Cmd::Version, 8);
    be32(b, VERSION.0);
    be32(b, VERSION.1);
}

pub(crate) fn create_session(b: &mut Vec<u8>, name: &str, hostname: &str, live_timer_us: u32) {
    ctrl(b, Cmd::CreateSession, CREATE_SESSION_LEN);
    fixed_str(b, name, 255);
    fixed_str(b, hostname, 64);
    be32(b, live_timer_us);
    be32(b, 0); // not a snapshot: snapshot sessions keep no index
}

pub(crate) fn add_stream(b: &mut Vec<u8>, channel: &str, pathname: &str) {
    ctrl(b, Cmd::AddStream, ADD_STREAM_LEN);
    fixed_str(b, channel, 264);
    fixed_str(b, pathname, 4096);
    // No tracefile rotation: a live viewer would have to follow it.
    be64(b, 0);
    be64(b, 0);
}

/// `SEND_METADATA`'s header and fixed part; the TSDL text follows it.
pub(crate) fn send_metadata(b: &mut Vec<u8>, handle: u64, text_len: usize) {
    ctrl(b, Cmd::SendMetadata, 12 + text_len);
    be64(b, handle);
    // The relay writes that many NULs into the metadata file.
    be32(b, 0);
}

pub(crate) fn streams_sent(b: &mut Vec<u8>) {
    ctrl(b, Cmd::StreamsSent, 0);
}

pub(crate) fn send_index(b: &mut Vec<u8>, handle: u64, net_seq: u64, i: &PacketIndex) {
    ctrl(b, Cmd::SendIndex, 80);
    for v in [
        handle,
        net_seq,
        i.packet_size_bits,
        i.content_size_bits,
        i.timestamp_begin,
        i.timestamp_end,
        i.events_discarded,
        i.stream_id,
        i.stream_instance_id,
        i.packet_seq_num,
    ] {
        be64(b, v);
    }
}

pub(crate) fn close_stream(b: &mut Vec<u8>, handle: u64, last_net_seq: u64) {
    ctrl(b, Cmd::CloseStream, 16);
    be64(b, handle);
    be64(b, last_net_seq);
}

/// The data socket's header before a packet's bytes.
pub(crate) fn data_header(handle: u64, net_seq: u64, len: u32) -> [u8; DATA_HDR] {
    let mut h = [0u8; DATA_HDR];
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..24].copy_from_slice(&net_seq.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    // padding_size = 0: packets go whole, their own padding included.
    h
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_layouts_match_lttng_tools() {
        let mut b = Vec::new();
        version(&mut b);
        assert_eq!(b.len(), CTRL_HDR + 8);
        assert_eq!((u64_at(&b, 8), u32_at(&b, 16), u32_at(&b, 24), u32_at(&b, 28)), (8, 5, 2, 10));

        create_session(&mut b, "s", "h", 1_000_000);
        assert_eq!(b.len(), CTRL_HDR + 327);
        assert_eq!(u64_at(&b, 8), 327);
        assert_eq!(&b[24..26], b"s\0");
        assert_eq!(&b[24 + 255..24 + 257], b"h\0");
        assert_eq!((u32_at(&b, 24 + 319), u32_at(&b, 24 + 323)), (1_000_000, 0));

        add_stream(&mut b, "metadata", "p/q");
        assert_eq!(b.len(), CTRL_HDR + 4376);
        assert_eq!(&b[24 + 264..24 + 268], b"p/q\0");

        send_metadata(&mut b, 7, 100);
        assert_eq!((b.len(), u64_at(&b, 8), u64_at(&b, 24), u32_at(&b, 32)), (CTRL_HDR + 12, 112, 7, 0));

        let i = PacketIndex {
            packet_size_bits: 1,
            content_size_bits: 2,
            timestamp_begin: 3,
            timestamp_end: 4,
            events_discarded: 5,
            stream_id: 6,
            stream_instance_id: 7,
            packet_seq_num: 8,
        };
        send_index(&mut b, 42, 9, &i);
        assert_eq!(b.len(), CTRL_HDR + 80);
        let fields: Vec<u64> = (0..10).map(|k| u64_at(&b, CTRL_HDR + 8 * k)).collect();
        assert_eq!(fields, [42, 9, 1, 2, 3, 4, 5, 6, 7, 8]);

        close_stream(&mut b, 3, u64::MAX);
        assert_eq!((u32_at(&b, 16), u64_at(&b, 24), u64_at(&b, 32)), (7, 3, u64::MAX));

        let h = data_header(5, 6, 4096);
        assert_eq!((u64_at(&h, 0), u64_at(&h, 8), u64_at(&h, 16), u32_at(&h, 24), u32_at(&h, 28)), (0, 5, 6, 4096, 0));
    }
}
