//! The checks behind the fuzz targets, shared by the libFuzzer binaries
//! (`fuzz_targets/`) and the plain test harness (`tests/`), which runs them
//! on a seed corpus and deterministic random inputs with stable Rust.

use hvtrace_proto::{decode_reply, decode_request, encode_request, try_encode_reply, Reply, MAP_MAX_RINGS};

/// One datagram as the host's control server sees it: decoding never
/// panics; a decoded request survives a round trip; a refused one gets an
/// error reply that fits in one message; the reply decoder (what a
/// consumer runs on the host's answers) never panics either, and never
/// yields a `Mapped` with more rings than one message has descriptors for.
pub fn decode_request_input(data: &[u8]) {
    match decode_request(data) {
        Ok(req) => {
            let again = encode_request(&req);
            assert_eq!(decode_request(&again).as_ref(), Ok(&req), "re-encoded request decodes to itself");
        }
        Err(e) => {
            let reply = Reply::from(e);
            let bytes = try_encode_reply(&reply).expect("the error reply to any input fits in one message");
            assert_eq!(decode_reply(&bytes).as_ref(), Ok(&reply));
        }
    }
    if let Ok(Reply::Mapped(m)) = decode_reply(data) {
        assert!(m.rings.len() <= MAP_MAX_RINGS, "a Mapped reply with {} rings decoded", m.rings.len());
    }
}

/// Valid encodings of every request kind: the seeds mutations start from.
pub fn seeds() -> Vec<Vec<u8>> {
    use hvtrace_proto::{ChannelConfig, Mode, Request};
    let reqs = [
        Request::Create(ChannelConfig { subbuf_size: 4096, num_subbuf: 4, mode: Mode::Discard }),
        Request::Create(ChannelConfig { subbuf_size: 1 << 26, num_subbuf: 1024, mode: Mode::Overwrite }),
        Request::Start,
        Request::Stop,
        Request::Destroy,
        Request::Map,
        Request::MapRing { cpu: 3 },
        Request::MapRing { cpu: u32::MAX },
        Request::Unmap,
        Request::Status,
        Request::Flush,
    ];
    let mut seeds: Vec<Vec<u8>> = reqs.iter().map(encode_request).collect();
    // Replies too: the reply decoder runs on every input. `Mapped` with the
    // most rings that fit, and with one more (which must be refused).
    for n in [MAP_MAX_RINGS, MAP_MAX_RINGS + 1] {
        seeds.push(hvtrace_proto::encode_reply(&Reply::Mapped(hvtrace_proto::MapInfo {
            channel: "channel0".into(),
            trace_uuid: [1; 16],
            config: ChannelConfig::default(),
            ctrl_len: 1 << 16,
            rings: (0..n as u32)
                .map(|cpu| hvtrace_proto::RingInfo { cpu, data_len: 1 << 14, ctrl_offset: u64::from(cpu) << 8 })
                .collect(),
            metadata_len: 1 << 16,
        })));
    }
    seeds
}
