//! `PacketReader` walks a stream file a window at a time and sees exactly
//! what the in-memory walk (`packets`) sees, across window boundaries.

use hvtrace_core::ctf::{empty_packet, packet};
use hvtrace_reader::{packets, PacketReader};

/// `n` header-only packets of 84 bytes, seq 0..n.
fn stream(n: u64) -> Vec<u8> {
    (0..n).flat_map(|seq| empty_packet(&[3; 16], 1, seq, seq * 10, seq / 7)).collect()
}

fn walk(r: &mut PacketReader) -> (Vec<(usize, u64)>, Option<String>) {
    let mut got = Vec::new();
    while let Some(p) = r.next_packet() {
        match p.unwrap() {
            Ok(p) => {
                let (offset, seq, len) = (p.offset, p.info.seq, p.bytes.len());
                assert_eq!(r.current().len(), len);
                got.push((offset, seq));
            }
            Err(e) => return (got, Some(e.to_string())),
        }
    }
    (got, None)
}

#[test]
fn the_windowed_walk_is_the_in_memory_walk() {
    // 5.4 MB: many windows, and packets straddle their boundaries.
    let bytes = stream(64_000);
    assert!(bytes.len() > 4 * PacketReader::WINDOW && PacketReader::WINDOW % 84 != 0);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("channel0_1");
    std::fs::write(&f, &bytes).unwrap();
    let want: Vec<_> = packets(&bytes).map(|p| p.unwrap()).map(|p| (p.offset, p.info.seq)).collect();
    let mut r = PacketReader::open(&f).unwrap();
    assert_eq!(walk(&mut r), (want, None));
    assert_eq!(r.position(), bytes.len() as u64);
}

/// A header-only packet of `len` bytes (zero padding after its context).
fn padded(seq: u64, len: usize) -> Vec<u8> {
    let mut p = empty_packet(&[3; 16], 1, seq, seq * 10, 0).to_vec();
    p[packet::PACKET_SIZE..packet::PACKET_SIZE + 8].copy_from_slice(&(len as u64 * 8).to_le_bytes());
    p.resize(len, 0);
    p
}

#[test]
fn packets_larger_than_the_window_are_read_whole() {
    // Small, larger than a window, small, then one that ends past the
    // window the one before it began.
    let w = PacketReader::WINDOW;
    let lens = [84, 2 * w + 100, 84, w - 50, w + 84, 84];
    let bytes: Vec<u8> = lens.iter().enumerate().flat_map(|(seq, &len)| padded(seq as u64, len)).collect();
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("channel0_1");
    std::fs::write(&f, &bytes).unwrap();
    let mut r = PacketReader::open(&f).unwrap();
    let mut at = 0;
    for (seq, &len) in lens.iter().enumerate() {
        let p = r.next_packet().unwrap().unwrap().unwrap();
        assert_eq!((p.offset, p.info.seq, p.bytes.len()), (at, seq as u64, len));
        assert_eq!(p.bytes, &bytes[at..at + len]);
        at += len;
    }
    assert!(r.next_packet().is_none());
    assert_eq!(r.position(), bytes.len() as u64);
}

#[test]
fn a_cut_packet_ends_the_walk_with_its_offset() {
    let bytes = stream(10);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("channel0_1");
    std::fs::write(&f, &bytes[..bytes.len() - 20]).unwrap();
    let (got, err) = walk(&mut PacketReader::open(&f).unwrap());
    assert_eq!(got.len(), 9);
    let want = packets(&bytes[..bytes.len() - 20]).last().unwrap().unwrap_err().to_string();
    assert_eq!(err, Some(want));
}

#[test]
fn only_the_listed_packets_are_visited() {
    let bytes = stream(10);
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("channel0_1");
    std::fs::write(&f, &bytes).unwrap();
    let mut r = PacketReader::open(&f).unwrap().only(vec![(84, 84), (5 * 84, 84)]);
    assert_eq!(walk(&mut r), (vec![(84, 1), (420, 5)], None));
}
