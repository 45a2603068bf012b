//! A mapper's field reads: integers at a fixed offset straight from the
//! bytes (one 8-byte load when the packet runs on past the payload, an
//! exact-width copy when it does not), anything else from the source.

use hvtrace_model::{Field, FieldValue, Fields, FixedInt, Payload};

/// `u8 0x81 | i16 -2 | u32 0xdead_beef | i64 -5`: 15 bytes.
fn payload() -> Vec<u8> {
    let mut p = vec![0x81];
    p.extend_from_slice(&(-2i16).to_le_bytes());
    p.extend_from_slice(&0xdead_beef_u32.to_le_bytes());
    p.extend_from_slice(&(-5i64).to_le_bytes());
    p
}

const FIELDS: [FixedInt; 4] =
    [FixedInt::new(0, 8, false), FixedInt::new(1, 16, true), FixedInt::new(3, 32, false), FixedInt::new(7, 64, true)];

#[test]
fn a_fixed_integer_reads_the_same_with_or_without_bytes_after_the_payload() {
    let p = payload();
    let mut in_packet = p.clone();
    in_packet.extend_from_slice(&[0xff; 8]);
    let want = [0x81, (-2i64) as u64, 0xdead_beef, (-5i64) as u64];
    for bytes in [&p[..], &in_packet[..]] {
        let got: Vec<_> = FIELDS.iter().map(|f| f.read(bytes, p.len())).collect();
        assert_eq!(got, want.map(Some), "{} bytes", bytes.len());
    }
    // Unsigned reads of the same bytes are not sign-extended.
    assert_eq!(FixedInt::new(1, 16, false).read(&in_packet, p.len()), Some(0xfffe));
}

#[test]
fn a_field_past_the_payloads_end_is_absent_even_if_the_packet_goes_on() {
    let p = payload();
    let mut in_packet = p.clone();
    in_packet.extend_from_slice(&[0; 8]);
    // The payload declared one byte short: its last field does not fit.
    assert_eq!(FIELDS[3].read(&in_packet, p.len() - 1), None);
    assert_eq!(FIELDS[3].read(&p[..p.len() - 1], p.len()), None, "bytes shorter than the length given");
    assert_eq!(FixedInt::NONE.read(&in_packet, p.len()), None);
    assert_eq!(FixedInt::new(0, 24, false), FixedInt::NONE, "only 8, 16, 32 and 64 bits are fixed integers");
}

#[test]
fn a_payload_reads_other_fields_from_its_source() {
    let p = payload();
    // The source: four integers unlike the bytes' (so each read shows
    // where it came from), then a string the layout does not place.
    let rest = [
        FieldValue::Int(1),
        FieldValue::Int((-3i64) as u64),
        FieldValue::Int(2),
        FieldValue::Int((-6i64) as u64),
        FieldValue::Bytes(b"vm0"),
    ];
    let fields = [FIELDS[0], FixedInt::NONE, FIELDS[2], FIELDS[3], FixedInt::NONE, FixedInt::NONE];
    let [a, b, c, d, text, none] = std::array::from_fn(|i| Field::new(i, fields[i]));
    let f = Payload::new(&p, p.len(), &rest);
    // Fields 0, 2 and 3 from the bytes, field 1 (not placed) from the source.
    assert_eq!((f.uint(a), f.int(b), f.uint(c), f.int(d)), (Some(0x81), Some(-3), Some(0xdead_beef), Some(-5)));
    assert_eq!((f.bytes(text), f.uint(text), f.uint(none)), (Some(&b"vm0"[..]), None, None));
    // Values at hand only: a placed field is read from them too.
    let f = Payload::of(&rest);
    assert_eq!((f.int(b), f.int(d), f.bytes(text)), (Some(-3), Some(-6), Some(&b"vm0"[..])));
    assert_eq!(rest.int(3), Some(-6));
}
