use super::*;
use proptest::prelude::*;

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Discard), Just(Mode::Overwrite)]
}

fn config() -> impl Strategy<Value = ChannelConfig> {
    (any::<u64>(), any::<u32>(), mode()).prop_map(|(subbuf_size, num_subbuf, mode)| ChannelConfig {
        subbuf_size,
        num_subbuf,
        mode,
    })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadMessage),
        Just(ErrorCode::BadVersion),
        Just(ErrorCode::BadState),
        Just(ErrorCode::BadConfig),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::Busy),
        Just(ErrorCode::Denied),
        Just(ErrorCode::Internal),
    ]
}

fn state() -> impl Strategy<Value = ChannelState> {
    prop_oneof![
        Just(ChannelState::Empty),
        Just(ChannelState::Created),
        Just(ChannelState::Started),
        Just(ChannelState::Stopped),
        Just(ChannelState::Destroyed),
    ]
}

fn ring_info() -> impl Strategy<Value = RingInfo> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(cpu, data_len, ctrl_offset)| RingInfo {
        cpu,
        data_len,
        ctrl_offset,
    })
}

fn ring_status() -> impl Strategy<Value = RingStatus> {
    (any::<u32>(), prop::array::uniform8(any::<u64>())).prop_map(|(cpu, v)| RingStatus {
        cpu,
        produced_bytes: v[0],
        consumed_bytes: v[1],
        delivered_subbufs: v[2],
        events_discarded: v[3],
        discarded_full: v[4],
        discarded_too_big: v[5],
        discarded_busy: v[6],
        overwritten: v[7],
    })
}

fn map_info() -> impl Strategy<Value = MapInfo> {
    (".{0,40}", any::<[u8; 16]>(), config(), any::<u64>(), prop::collection::vec(ring_info(), 0..70), any::<u64>())
        .prop_map(|(channel, trace_uuid, config, ctrl_len, rings, metadata_len)| MapInfo {
            channel,
            trace_uuid,
            config,
            ctrl_len,
            rings,
            metadata_len,
        })
}

fn status_info() -> impl Strategy<Value = StatusInfo> {
    (state(), any::<u32>(), any::<bool>(), prop::option::of(config()), prop::collection::vec(ring_status(), 0..40))
        .prop_map(|(state, refcount, destroy_pending, config, rings)| StatusInfo {
            state,
            refcount,
            destroy_pending,
            config,
            rings,
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        config().prop_map(Request::Create),
        Just(Request::Start),
        Just(Request::Stop),
        Just(Request::Destroy),
        Just(Request::Map),
        any::<u32>().prop_map(|cpu| Request::MapRing { cpu }),
        Just(Request::Unmap),
        Just(Request::Status),
        Just(Request::Flush),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        Just(Reply::Ok),
        (error_code(), ".{0,200}").prop_map(|(code, message)| Reply::Error { code, message }),
        Just(Reply::Created),
        map_info().prop_map(Reply::Mapped),
        ring_info().prop_map(Reply::RingMapped),
        status_info().prop_map(Reply::Status),
    ]
}

/// Every way of damaging a valid message must give an error (never a panic,
/// never a silently different message).
fn assert_damage_detected(msg: &[u8], decode: impl Fn(&[u8]) -> Result<(), ProtoError>) {
    // Every truncation.
    for n in 0..msg.len() {
        assert!(decode(&msg[..n]).is_err(), "truncation to {n} accepted");
    }
    // A trailing byte.
    let mut longer = msg.to_vec();
    longer.push(0);
    assert!(decode(&longer).is_err());
    // Trailing byte with a consistent header: the payload has one byte too many.
    let mut fixed = longer.clone();
    let len = u32::from_le_bytes(fixed[8..12].try_into().unwrap()) + 1;
    fixed[8..12].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        decode(&fixed),
        Err(ProtoError::TrailingBytes { count: 1, .. }) | Err(ProtoError::BadPayload { .. })
    ));
    // Version 1 (before `map` was capped at MAP_MAX_RINGS), 2 (metadata
    // text in `map`'s reply), 4, 0.
    for v in [0u16, 1, 2, 4, u16::MAX] {
        let mut m = msg.to_vec();
        m[4..6].copy_from_slice(&v.to_le_bytes());
        assert_eq!(decode(&m), Err(ProtoError::UnsupportedVersion { found: v, supported: VERSION }));
    }
    // Magic.
    let mut m = msg.to_vec();
    m[0] = b'X';
    assert!(matches!(decode(&m), Err(ProtoError::BadMagic { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn request_round_trip(req in request()) {
        let bytes = encode_request(&req);
        prop_assert!(bytes.len() <= MAX_MESSAGE);
        prop_assert_eq!(try_encode_request(&req).unwrap(), bytes.clone());
        prop_assert_eq!(&bytes[..4], b"HVTC");
        prop_assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), req.kind());
        prop_assert_eq!(decode_request(&bytes), Ok(req));
        // A request is never taken for a reply.
        let is_wrong_direction = matches!(
            decode_reply(&bytes),
            Err(ProtoError::WrongDirection { .. })
        );
        prop_assert!(is_wrong_direction);
    }

    #[test]
    fn reply_round_trip(rep in reply()) {
        let bytes = encode_reply(&rep);
        prop_assert!(bytes.len() <= MAX_MESSAGE);
        prop_assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), rep.kind());
        prop_assert_eq!(decode_reply(&bytes), Ok(rep));
        let is_wrong_direction = matches!(
            decode_request(&bytes),
            Err(ProtoError::WrongDirection { .. })
        );
        prop_assert!(is_wrong_direction);
    }

    #[test]
    fn damaged_requests_are_rejected(req in request()) {
        let bytes = encode_request(&req);
        assert_damage_detected(&bytes, |m| decode_request(m).map(drop));
    }

    #[test]
    fn damaged_replies_are_rejected(rep in reply()) {
        let bytes = encode_reply(&rep);
        assert_damage_detected(&bytes, |m| decode_reply(m).map(drop));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_request(&bytes);
        let _ = decode_reply(&bytes);
    }

    #[test]
    fn random_payloads_never_panic(
        k in prop_oneof![1u16..=9, 0x8001u16..=0x8006, any::<u16>()],
        payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        // A valid frame around garbage: reaches postcard.
        let msg = frame(k, payload);
        let _ = decode_request(&msg);
        let _ = decode_reply(&msg);
    }

    #[test]
    fn bit_flips_never_panic(rep in reply(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = encode_reply(&rep);
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let _ = decode_reply(&bytes);
        let _ = decode_request(&bytes);
    }
}

#[test]
fn wire_format_is_stable() {
    assert_eq!(encode_request(&Request::Start), b"HVTC\x03\x00\x02\x00\x00\x00\x00\x00");
    // Create(256 KiB x 8, Overwrite): varint(262144) = 80 80 10, varint(8), variant 1.
    let create = encode_request(&Request::Create(ChannelConfig { mode: Mode::Overwrite, ..ChannelConfig::default() }));
    assert_eq!(create, b"HVTC\x03\x00\x01\x00\x05\x00\x00\x00\x80\x80\x10\x08\x01");
    assert_eq!(encode_request(&Request::MapRing { cpu: 300 }), b"HVTC\x03\x00\x06\x00\x02\x00\x00\x00\xac\x02");
    assert_eq!(encode_reply(&Reply::error(ErrorCode::Denied, "no")), b"HVTC\x03\x00\x02\x80\x04\x00\x00\x00\x06\x02no");
}

#[test]
fn header_errors() {
    assert_eq!(decode_request(b""), Err(ProtoError::Truncated { len: 0 }));
    assert_eq!(decode_request(b"HVTC\x03\x00\x02"), Err(ProtoError::Truncated { len: 7 }));
    assert_eq!(decode_request(b"HVTX\x03\x00\x02\x00\x00\x00\x00\x00"), Err(ProtoError::BadMagic { found: *b"HVTX" }));
    assert_eq!(
        decode_request(b"HVTC\x03\x00\x02\x00\x01\x00\x00\x00"),
        Err(ProtoError::LengthMismatch { header: 1, actual: 0 })
    );
    assert_eq!(
        decode_request(b"HVTC\x03\x00\x02\x00\xff\xff\xff\xff"),
        Err(ProtoError::LengthMismatch { header: u32::MAX, actual: 0 })
    );
    assert_eq!(decode_request(b"HVTC\x03\x00\x77\x00\x00\x00\x00\x00"), Err(ProtoError::UnknownKind { kind: 0x77 }));
    assert_eq!(decode_reply(b"HVTC\x03\x00\x77\x80\x00\x00\x00\x00"), Err(ProtoError::UnknownKind { kind: 0x8077 }));
    // Empty-bodied kinds refuse a payload.
    assert_eq!(
        decode_request(b"HVTC\x03\x00\x02\x00\x01\x00\x00\x00\x00"),
        Err(ProtoError::TrailingBytes { kind: 2, count: 1 })
    );
    // Unknown enum variant inside a payload (Mode = 7).
    assert!(matches!(
        decode_request(b"HVTC\x03\x00\x01\x00\x05\x00\x00\x00\x80\x80\x10\x08\x07"),
        Err(ProtoError::BadPayload { kind: 1, .. })
    ));
    // A string length far beyond the message does not allocate or panic.
    let mut m = frame(kind::ERROR, vec![0x00, 0xff, 0xff, 0xff, 0xff, 0x0f, b'x']);
    assert!(matches!(decode_reply(&m), Err(ProtoError::BadPayload { .. })));
    // Invalid UTF-8 in a string.
    m = frame(kind::ERROR, vec![0x00, 0x02, 0xff, 0xfe]);
    assert!(matches!(decode_reply(&m), Err(ProtoError::BadPayload { .. })));
    // A vector length claiming billions of rings.
    let mut p = to_payload(&StatusInfo::default());
    p.truncate(p.len() - 1);
    p.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode_reply(&frame(kind::STATUS_REPLY, p)).is_err());
}

#[test]
fn oversized_messages() {
    let mut big = frame(kind::STATUS, vec![0; MAX_MESSAGE]);
    assert_eq!(decode_request(&big), Err(ProtoError::TooLarge { len: MAX_MESSAGE + HEADER_LEN }));
    big.truncate(MAX_MESSAGE + 1);
    assert!(matches!(decode_request(&big), Err(ProtoError::TooLarge { .. })));
    // Exactly MAX_MESSAGE is fine at the frame level.
    let edge = frame(kind::ERROR, vec![0; MAX_MESSAGE - HEADER_LEN]);
    assert!(matches!(decode_reply(&edge), Err(ProtoError::TrailingBytes { .. })));
    // An oversized reply is refused by try_encode_reply.
    let huge = Reply::error(ErrorCode::Internal, "x".repeat(MAX_MESSAGE));
    assert!(encode_reply(&huge).len() > MAX_MESSAGE);
    assert!(matches!(try_encode_reply(&huge), Err(ProtoError::TooLarge { .. })));
}

#[test]
fn error_texts_are_clear() {
    let e = decode_request(b"HVTC\x01\x00\x02\x00\x00\x00\x00\x00").unwrap_err();
    assert_eq!(e.to_string(), "unsupported protocol version 1 (this side speaks version 3)");
    assert_eq!(e.code(), ErrorCode::BadVersion);
    let r: Reply = e.into();
    assert!(matches!(r, Reply::Error { code: ErrorCode::BadVersion, .. }));
    let e = decode_request(b"GET / HTTP/1.1\r\n").unwrap_err();
    assert!(e.to_string().contains("not an hvtrace control message"), "{e}");
    assert_eq!(e.code(), ErrorCode::BadMessage);
    let e = decode_reply(&encode_request(&Request::Map)).unwrap_err();
    assert_eq!(e.to_string(), "message kind 0x0005 is a request, expected a reply");
    assert_eq!(ProtoError::UnknownKind { kind: 0x42 }.to_string(), "unknown message kind 0x0042");
}

#[test]
fn config_validation() {
    let ok = ChannelConfig::default();
    assert_eq!(ok.subbuf_size, 256 * 1024);
    assert_eq!(ok.num_subbuf, 8);
    assert_eq!(ok.mode, Mode::Discard);
    assert_eq!(ok.validate(), Ok(()));
    let c = |s: u64, n: u32| ChannelConfig { subbuf_size: s, num_subbuf: n, mode: Mode::Discard };
    assert_eq!(c(4096, 2).validate(), Ok(()));
    assert_eq!(c(64 << 20, 16).validate(), Ok(()));
    assert_eq!(c(1 << 20, 1024).validate(), Ok(()));
    assert_eq!(c(5000, 8).validate(), Err(ConfigError::SubbufSizeNotPowerOfTwo(5000)));
    assert_eq!(c(0, 8).validate(), Err(ConfigError::SubbufSizeNotPowerOfTwo(0)));
    assert_eq!(c(2048, 8).validate(), Err(ConfigError::SubbufSizeOutOfRange(2048)));
    assert_eq!(c(128 << 20, 2).validate(), Err(ConfigError::SubbufSizeOutOfRange(128 << 20)));
    assert_eq!(c(4096, 3).validate(), Err(ConfigError::NumSubbufNotPowerOfTwo(3)));
    assert_eq!(c(4096, 1).validate(), Err(ConfigError::NumSubbufOutOfRange(1)));
    assert_eq!(c(4096, 2048).validate(), Err(ConfigError::NumSubbufOutOfRange(2048)));
    assert_eq!(c(64 << 20, 32).validate(), Err(ConfigError::RingTooLarge(2 << 30)));
    assert_eq!(
        c(64 << 20, 32).validate().unwrap_err().to_string(),
        "ring size 2147483648 bytes (sub-buffer size x count) exceeds the limit of 1 GiB per CPU"
    );
    let r: Reply = ConfigError::NumSubbufOutOfRange(1).into();
    assert_eq!(r, Reply::error(ErrorCode::BadConfig, "sub-buffer count 1 is out of range (2 ..= 1024)"));
}

#[test]
fn helpers() {
    assert_eq!("Overwrite".parse::<Mode>(), Ok(Mode::Overwrite));
    assert_eq!("discard".parse::<Mode>(), Ok(Mode::Discard));
    assert!("ring".parse::<Mode>().is_err());
    assert_eq!(Mode::Overwrite.to_string(), "overwrite");
    assert_eq!(ChannelState::Started.to_string(), "started");
    let m = MapInfo {
        channel: "c".into(),
        trace_uuid: [0; 16],
        config: ChannelConfig::default(),
        ctrl_len: 4096,
        rings: vec![RingInfo { cpu: 0, data_len: 1 << 21, ctrl_offset: 0 }; 3],
        metadata_len: 1 << 20,
    };
    assert_eq!((m.fd_count(), m.metadata_fd_index()), (9, 8));
    assert_eq!(Reply::Mapped(m).fd_count(), 9);
    assert_eq!(Reply::RingMapped(RingInfo { cpu: 1, data_len: 1, ctrl_offset: 0 }).fd_count(), 2);
    assert_eq!(Reply::Ok.fd_count(), 0);
    assert_eq!(Request::MapRing { cpu: 3 }.name(), "map_ring");
    assert!(kind::is_reply(kind::OK) && !kind::is_reply(kind::FLUSH));
}

// Issue 17 item 4: `map` sent 2 + 2N descriptors in one message, which the
// kernel refuses from N = 126 on (3 + 2N since the metadata log joined them). A `Mapped` listing more rings than fit is
// now malformed, and the most that fit still decodes.
#[test]
fn a_mapped_reply_lists_at_most_the_rings_one_message_can_carry() {
    assert_eq!(3 + 2 * MAP_MAX_RINGS, 253);
    let info = |n: usize| MapInfo {
        channel: "channel0".into(),
        trace_uuid: [7; 16],
        config: ChannelConfig { subbuf_size: 4096, num_subbuf: 2, mode: Mode::Discard },
        ctrl_len: 4096,
        rings: (0..n as u32).map(|cpu| RingInfo { cpu, data_len: 16384, ctrl_offset: u64::from(cpu) * 64 }).collect(),
        metadata_len: 4096,
    };
    let fits = Reply::Mapped(info(MAP_MAX_RINGS));
    assert_eq!(decode_reply(&try_encode_reply(&fits).unwrap()), Ok(fits));
    let over = encode_reply(&Reply::Mapped(info(MAP_MAX_RINGS + 1)));
    match decode_reply(&over) {
        Err(ProtoError::BadPayload { kind: kind::MAPPED, reason }) => assert!(reason.contains("126 rings"), "{reason}"),
        other => panic!("{other:?}"),
    }
}
