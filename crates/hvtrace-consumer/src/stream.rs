//! One stream file: whole packets appended exactly as delivered, torn or
//! failed writes cut back so the file never ends in half a packet, and the
//! trailer packet that carries the stream's final loss count.
//!
//! Packets of [`DIRECT_MIN`] bytes or more go to the file with direct I/O
//! (`O_DIRECT`) where the file system does it: the device reads the ring's
//! pages, no copy into the page cache. Copying into the page cache was nearly
//! all of the consumer's CPU (≈ 80 % of its samples in the copy itself, most
//! of the rest page-cache bookkeeping), and on a VM whose freed guest pages
//! are handed back to the host (free page reporting) every freshly allocated
//! page-cache page costs a host fault on top, which made it several times
//! slower still. A packet is page aligned in the mapping and its length a
//! multiple of a page (a flushed one is its content rounded up to a page), so
//! every packet fits; the trailer (84 bytes) goes through the page cache.
//! `pwrite` with `O_DIRECT` returns once the device has read the pages, so the
//! release check that follows still vouches for exactly the bytes in the
//! file.
//!
//! Smaller packets are copied: a direct write has a fixed cost (building the
//! request, sleeping until the device completes, the completion interrupt)
//! and puts the device's latency between a packet's delivery and its bytes
//! being in the file, where a copy into the page cache is there at once.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use hvtrace_core::decode::packet_info;
use hvtrace_core::{ctf, RingCounters};
use hvtrace_reader::account::{SeqRange, StreamAccount};
use hvtrace_sys::{direct, fs, DioAlign};

use crate::report::RingReport;

/// Packets at least this long are written with direct I/O (when it is on);
/// shorter ones are copied into the page cache.
///
/// Measured on the 2-vCPU VM of `docs/benchmarks.md` (CPU per byte written
/// from a memfd mapping into an ext4 file): direct I/O costs 2.5× a warm
/// page-cache copy for 64 KiB writes (its fixed cost, ≈ 55 µs a write there,
/// dominates), breaks even at 256 KiB, and is 1.6× cheaper at 512 KiB and
/// 2.5-12× at 4 MiB (the copy's cost varies with how cold the page-cache
/// pages are). A 256 KiB direct write also took ≈ 0.5 ms to complete against
/// ≈ 0.1 ms for the copy, which would have broken the 1 ms delivery-latency
/// target of 256 KiB sub-buffers.
pub(crate) const DIRECT_MIN: usize = 512 << 10;

/// What the last packet written said, for the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Last {
    seq: u64,
    timestamp_end: u64,
    events_discarded: u64,
}

/// A stream file being written.
#[derive(Debug)]
pub(crate) struct StreamFile {
    /// Its name in the trace directory.
    pub(crate) name: String,
    pub(crate) file: File,
    /// An `O_DIRECT` descriptor on the same file, and what it needs aligned,
    /// while direct I/O is used.
    direct: Option<(File, DioAlign)>,
    /// Packets at least this long go direct.
    direct_min: usize,
    /// Length of the whole packets written so far; everything past it is
    /// garbage to cut off.
    len: u64,
    last: Option<Last>,
    /// Sequence numbers handed over: the first, and one past the last.
    handed: Option<(u64, u64)>,
    /// Packets handed over and not written, by sequence number.
    lost: Vec<SeqRange>,
    /// Overwrite mode: packets the producer took back while they were written.
    torn: Vec<SeqRange>,
    /// The last write failed (errors are reported once per failing run).
    failing: bool,
    pub(crate) report: RingReport,
}

/// Adds `seq` to `ranges` (sequence numbers come in increasing order).
fn add_seq(ranges: &mut Vec<SeqRange>, seq: u64, why: &str) {
    match ranges.last_mut() {
        Some(r) if r.last + 1 == seq => r.last = seq,
        _ => ranges.push(SeqRange { first: seq, last: seq, why: why.to_string() }),
    }
}

impl StreamFile {
    /// Writes to `file`, new and empty, called `name` in its directory. With
    /// `direct_min`, packets of at least that many bytes are written with
    /// `O_DIRECT` where the file system allows it, through a second
    /// descriptor reopened from this one (never from the name).
    pub(crate) fn new(path: &Path, name: String, file: File, cpu: u32, direct_min: Option<usize>) -> Self {
        let mut s = StreamFile {
            name,
            file,
            direct: None,
            direct_min: usize::MAX,
            len: 0,
            last: None,
            handed: None,
            lost: Vec::new(),
            torn: Vec::new(),
            failing: false,
            report: RingReport::new(cpu, path),
        };
        if let Some(min) = direct_min {
            s.direct_min = min;
            // A file system without direct I/O (or no /proc to reopen the
            // file through) only means buffered writes.
            s.direct = direct_twin(&s.file);
        }
        s
    }

    /// Whether packets are written with `O_DIRECT`.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Bytes of whole packets in the file.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Takes packet `seq` (known from its position in the ring, not from
    /// its header): writes `bytes` unchanged at the end of the file, then
    /// calls `release`, which hands the sub-buffer back to the producer and
    /// says whether the bytes stayed intact while they were written. The
    /// packet is released whatever happens, so a failing disk never blocks
    /// the host. `overwrite`: a packet the producer took back is its loss
    /// (counted as overwritten), not the consumer's.
    pub(crate) fn take_packet(&mut self, seq: u64, bytes: &[u8], overwrite: bool, release: impl FnOnce() -> bool) {
        self.handed = Some(match self.handed {
            Some((first, next)) => (first, next.max(seq + 1)),
            None => (seq, seq + 1),
        });
        // Read the header before release: afterwards the producer may reuse
        // the sub-buffer. A flushed packet declares fewer bytes than its
        // sub-buffer (its content rounded up to a page): write only those.
        let info = packet_info(bytes).ok().filter(|i| i.packet_len <= bytes.len() && i.seq == seq);
        let Some(info) = info else {
            let n = bytes.len() as u64;
            if release() {
                self.lose(seq, n, format!("dropped a malformed packet ({n} bytes) instead of writing it"));
            } else {
                self.tear(seq, overwrite);
            }
            return;
        };
        let bytes = &bytes[..info.packet_len];
        let n = bytes.len() as u64;
        match self.write_at(bytes, self.len) {
            Ok(went_direct) => {
                if release() {
                    self.len += n;
                    self.report.packets += 1;
                    self.report.bytes += n;
                    self.report.direct_packets += u64::from(went_direct);
                    self.last = Some(Last {
                        seq: info.seq,
                        timestamp_end: info.timestamp_end,
                        events_discarded: info.events_discarded,
                    });
                    self.failing = false;
                } else {
                    // The producer took the sub-buffer back (overwrite mode),
                    // or reused it because someone else moved the consumed
                    // position, while it was being written.
                    self.tear(seq, overwrite);
                    self.cut_back();
                }
            }
            Err(e) => {
                release();
                self.report.write_errors += 1;
                let why = format!(
                    "write failed: {e}; the packet is dropped (released to the host) and the file cut back to its \
                     last whole packet; consuming goes on"
                );
                self.lose(seq, n, why);
                self.cut_back();
            }
        }
    }

    /// Packets `from..to` were handed over in the sense that the producer
    /// delivered them and the consumer's position passed them, but they
    /// were never read: someone else moved the consumed position and the
    /// producer reused their sub-buffers (discard mode).
    pub(crate) fn skipped(&mut self, from: u64, to: u64, why: &str) {
        for seq in from..to {
            self.handed = Some(match self.handed {
                Some((first, next)) => (first, next.max(seq + 1)),
                None => (seq, seq + 1),
            });
            self.lose(seq, 0, why.to_string());
        }
    }

    fn tear(&mut self, seq: u64, overwrite: bool) {
        self.report.torn += 1;
        if overwrite {
            add_seq(&mut self.torn, seq, "");
        } else {
            // Discard mode: the producer never takes a packet back; it was
            // reused because its position was moved under this consumer.
            let why = "changed while it was being written (torn): the consumed position was moved under this \
                       consumer";
            add_seq(&mut self.lost, seq, why);
            self.note_error(why);
        }
    }

    /// Writes `bytes` at `at`: with direct I/O if it is on, `bytes` is long
    /// enough and aligned for it, else through the page cache. Says whether it
    /// went direct.
    fn write_at(&mut self, bytes: &[u8], at: u64) -> io::Result<bool> {
        if let Some((d, align)) = &self.direct {
            if bytes.len() >= self.direct_min && align.fits(bytes, at) {
                match write_direct(d, *align, &self.file, bytes, at) {
                    Ok(()) => return Ok(true),
                    // The kernel will not do direct I/O here after all: the
                    // page cache from now on, starting with these bytes.
                    Err(e) if direct::refused(&e) => self.direct = None,
                    Err(e) => return Err(e),
                }
            }
        }
        self.file.write_all_at(bytes, at).map(|()| false)
    }

    /// Ends the stream: appends an empty packet carrying the ring's final
    /// `events_discarded` if events were lost after the last packet written
    /// (so CTF readers report every loss), then `fsync`s the file. Returns
    /// the final report and what the consumer's account says of this
    /// stream. (Overwritten events are not in that count: their packets are
    /// reported by the `packet_seq_num` gap they leave.)
    pub(crate) fn finish(mut self, uuid: &[u8; 16], counters: RingCounters) -> (RingReport, StreamAccount) {
        let written = self.last.map_or(0, |l| l.events_discarded);
        let lost = counters.events_discarded();
        if lost > written {
            // Numbered after every packet handed over, so packets lost at the
            // end still show as a sequence gap.
            let seq = self.handed.map_or(0, |h| h.1).max(self.last.map_or(0, |l| l.seq + 1));
            let ts = self.last.map_or(0, |l| l.timestamp_end);
            let pkt = ctf::empty_packet(uuid, self.report.cpu, seq, ts, lost);
            match self.file.write_all_at(&pkt, self.len) {
                Ok(()) => {
                    self.len += pkt.len() as u64;
                    self.report.trailer = true;
                }
                Err(e) => {
                    self.report.write_errors += 1;
                    self.note_error(&format!("writing the final loss-count packet: {e}"));
                    self.cut_back();
                }
            }
        }
        if let Err(e) = self.file.sync_all() {
            // A failed fsync may have dropped pages written earlier.
            self.report.write_errors += 1;
            self.note_error(&format!("fsync: {e} (data written before may be lost)"));
        }
        self.report.counters = counters;
        let (first, next) = self.handed.unwrap_or((0, 0));
        let account = StreamAccount { cpu: self.report.cpu, first, next, lost: self.lost, torn: self.torn };
        (self.report, account)
    }

    /// The whole stream is lost after all (its file was removed or replaced
    /// under the consumer): every packet written counts as lost.
    pub(crate) fn lose_all(report: &mut RingReport, account: &mut StreamAccount, why: String) {
        report.lost_packets += report.packets;
        report.lost_bytes += report.bytes;
        report.packets = 0;
        report.bytes = 0;
        if account.next > account.first {
            account.lost = vec![SeqRange { first: account.first, last: account.next - 1, why: why.clone() }];
        }
        report.first_error = Some(match report.first_error.take() {
            Some(e) => format!("{why}; before that: {e}"),
            None => why,
        });
    }

    fn lose(&mut self, seq: u64, n: u64, why: String) {
        self.lost_count(seq, n, &why);
        if !self.failing {
            self.failing = true;
            self.note_error(&why);
        }
    }

    fn lost_count(&mut self, seq: u64, n: u64, why: &str) {
        self.report.lost_packets += 1;
        self.report.lost_bytes += n;
        add_seq(&mut self.lost, seq, why);
    }

    fn note_error(&mut self, msg: &str) {
        if self.report.first_error.is_none() {
            self.report.first_error = Some(msg.to_string());
        }
    }

    /// Cuts the file back to its last whole packet.
    fn cut_back(&mut self) {
        if let Err(e) = self.file.set_len(self.len) {
            // Later packets are written at `len` anyway and `finish` retries.
            if !self.failing {
                self.failing = true;
                self.note_error(&format!("cannot cut the file back to {} bytes: {e}", self.len));
            }
        }
    }
}

/// The `O_DIRECT` twin of `file`, if direct I/O can be had on it.
fn direct_twin(file: &File) -> Option<(File, DioAlign)> {
    fs::reopen_direct(file).ok().flatten()
}

/// Writes all of `bytes` at `at` through the `O_DIRECT` descriptor `d`;
/// should a short write leave a misaligned rest, that goes through the
/// page cache (`buffered`, the same file).
fn write_direct(d: &File, align: DioAlign, buffered: &File, mut bytes: &[u8], mut at: u64) -> io::Result<()> {
    while !bytes.is_empty() {
        if !align.fits(bytes, at) {
            return buffered.write_all_at(bytes, at);
        }
        match d.write_at(bytes, at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                at += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvtrace_core::decode::packet_info;

    const UUID: [u8; 16] = [7; 16];

    /// A new stream file of CPU 2 at `path`.
    fn create(path: &Path, direct_min: Option<usize>) -> StreamFile {
        let f = File::options().write(true).create_new(true).open(path).unwrap();
        StreamFile::new(path, "chan_2".into(), f, 2, direct_min)
    }

    /// A real packet: header from `empty_packet`, sized to 4 KiB with records
    /// region zero (content = header).
    fn packet(seq: u64, ts: u64, discarded: u64) -> Vec<u8> {
        let mut p = ctf::empty_packet(&UUID, 2, seq, ts, discarded).to_vec();
        p.resize(4096, 0xAB);
        p[ctf::packet::PACKET_SIZE..][..8].copy_from_slice(&(4096u64 * 8).to_le_bytes());
        p
    }

    /// A sub-buffer as a ring lends it: `sub` bytes at a page-aligned
    /// address, holding a `len`-byte packet (a flushed packet is shorter than
    /// its sub-buffer). `store` owns the memory.
    fn subbuf(store: &mut Vec<u8>, sub: usize, len: usize, seq: u64) -> &[u8] {
        store.clear();
        store.resize(sub + 4096, 0);
        let at = store.as_ptr().align_offset(4096);
        let b = &mut store[at..at + sub];
        let hdr = ctf::empty_packet(&UUID, 2, seq, seq * 10, 0);
        b[..hdr.len()].copy_from_slice(&hdr);
        for (i, x) in b[hdr.len()..].iter_mut().enumerate() {
            *x = (i as u64 ^ seq) as u8;
        }
        b[ctf::packet::PACKET_SIZE..][..8].copy_from_slice(&(len as u64 * 8).to_le_bytes());
        b
    }

    fn read_packets(path: &Path) -> Vec<hvtrace_core::decode::PacketInfo> {
        let b = std::fs::read(path).unwrap();
        let mut at = 0;
        let mut out = Vec::new();
        while at < b.len() {
            let i = packet_info(&b[at..]).expect("whole packets only");
            at += i.packet_len;
            out.push(i);
        }
        out
    }

    #[test]
    fn writes_unchanged_and_appends_loss_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chan_2");
        let mut s = create(&path, Some(DIRECT_MIN));
        let (a, b) = (packet(0, 100, 0), packet(1, 200, 5));
        s.take_packet(0, &a, false, || true);
        s.take_packet(1, &b, false, || true);
        assert_eq!(s.len(), 8192);
        let counters = RingCounters { discarded: 9, ..Default::default() };
        let (r, _) = s.finish(&UUID, counters);
        assert_eq!((r.packets, r.bytes, r.torn, r.lost_packets, r.trailer), (2, 8192, 0, 0, true));
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[..4096], &a[..]);
        assert_eq!(&data[4096..8192], &b[..]);
        let ps = read_packets(&path);
        assert_eq!(ps.len(), 3);
        let t = ps[2];
        assert_eq!((t.seq, t.timestamp_begin, t.timestamp_end, t.events_discarded), (2, 200, 200, 9));
        assert_eq!((t.cpu_id, t.stream_instance_id, t.uuid), (2, 2, UUID));
        assert_eq!(t.content_len, ctf::packet::LEN);
    }

    #[test]
    fn no_trailer_when_nothing_was_lost_after_the_last_packet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chan_2");
        let mut s = create(&path, Some(DIRECT_MIN));
        s.take_packet(0, &packet(0, 100, 3), false, || true);
        let (r, _) = s.finish(&UUID, RingCounters { discarded: 3, ..Default::default() });
        assert!(!r.trailer);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        // A stream with no packet at all but losses gets one empty packet.
        let path = dir.path().join("chan_3");
        let s = create(&path, Some(DIRECT_MIN));
        let (r, _) = s.finish(&UUID, RingCounters { discarded: 4, ..Default::default() });
        assert!(r.trailer);
        let ps = read_packets(&path);
        assert_eq!((ps.len(), ps[0].seq, ps[0].events_discarded), (1, 0, 4));
    }

    #[test]
    fn torn_packet_is_cut_back_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chan_2");
        let mut s = create(&path, Some(DIRECT_MIN));
        s.take_packet(0, &packet(0, 1, 0), false, || true);
        s.take_packet(1, &packet(1, 2, 0), true, || false);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096, "the torn packet was cut off");
        s.take_packet(3, &packet(3, 3, 0), false, || true);
        let (r, _) = s.finish(&UUID, RingCounters::default());
        assert_eq!((r.packets, r.torn, r.lost_packets), (2, 1, 0));
        let ps = read_packets(&path);
        assert_eq!(ps.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![0, 3]);
    }

    #[test]
    fn malformed_packet_is_released_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chan_2");
        let mut s = create(&path, Some(DIRECT_MIN));
        let mut released = false;
        s.take_packet(0, &[0u8; 4096], false, || {
            released = true;
            true
        });
        assert!(released);
        let (r, _) = s.finish(&UUID, RingCounters::default());
        assert_eq!((r.packets, r.lost_packets, r.lost_bytes), (0, 1, 4096));
        assert!(r.first_error.unwrap().contains("malformed"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn long_aligned_packets_go_direct_and_land_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chan_2");
        let mut s = create(&path, Some(8192));
        let direct = s.is_direct();
        if !direct {
            println!("SKIP (direct part): {} does not do direct I/O", dir.path().display());
        }
        let mut store = Vec::new();
        let mut want = Vec::new();
        // Full packets, a flushed one shorter than `direct_min` (its content
        // rounded up to a page: copied), then a misaligned one (copied), then
        // one exactly `direct_min` long at an aligned offset.
        for (seq, len) in [(0u64, 16384usize), (1, 16384), (2, 4096), (3, 16384)] {
            let b = subbuf(&mut store, 16384, len, seq);
            s.take_packet(seq, b, false, || true);
            want.extend_from_slice(&b[..len]);
        }
        let mut v = subbuf(&mut store, 16384, 16384, 4).to_vec();
        v.insert(0, 0);
        s.take_packet(4, &v[1..], false, || true);
        want.extend_from_slice(&v[1..]);
        let b = subbuf(&mut store, 16384, 8192, 5);
        s.take_packet(5, b, false, || true);
        want.extend_from_slice(&b[..8192]);
        // Torn while written directly: cut off again.
        let b = subbuf(&mut store, 16384, 16384, 6);
        s.take_packet(6, b, true, || false);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), want.len() as u64, "the torn packet was cut off");
        let (r, acc) = s.finish(&UUID, RingCounters { discarded: 2, ..Default::default() });
        assert_eq!((r.packets, r.torn, r.lost_packets, r.trailer), (6, 1, 0, true));
        assert_eq!((acc.first, acc.next, acc.lost.len()), (0, 7, 0));
        assert_eq!((acc.torn[0].first, acc.torn[0].last), (6, 6), "overwrite mode: the producer's loss");
        assert_eq!(r.direct_packets, if direct { 4 } else { 0 }, "seq 0, 1, 3 and 5: {r:?}");
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[..want.len()], &want[..], "every byte as delivered");
        let ps = read_packets(&path);
        // The trailer is numbered after every packet handed over: the torn
        // seq 6 shows as a gap.
        assert_eq!(ps.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5, 7]);
        assert_eq!((ps[6].events_discarded, ps[6].content_len), (2, ctf::packet::LEN), "the trailer");
    }

    #[test]
    fn direct_io_off_writes_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chan_2");
        let mut s = create(&path, None);
        assert!(!s.is_direct());
        let mut store = Vec::new();
        let b = subbuf(&mut store, 8192, 8192, 0).to_vec();
        s.take_packet(0, &b, false, || true);
        let (r, _) = s.finish(&UUID, RingCounters::default());
        assert_eq!((r.packets, r.direct_packets), (1, 0));
        assert_eq!(std::fs::read(&path).unwrap(), b);
    }

    #[test]
    fn write_errors_release_count_and_say_which_file() {
        // /dev/full fails every write with ENOSPC.
        let path = Path::new("/dev/full");
        let Ok(f) = File::options().write(true).open(path) else { return };
        let mut s = StreamFile::new(path, "full".into(), f, 2, None);
        let mut released = 0;
        for seq in 0..3 {
            s.take_packet(seq, &packet(seq, seq, 0), false, || {
                released += 1;
                true
            });
        }
        assert_eq!(released, 3, "every packet is released although the disk fails");
        let (r, _) = s.finish(&UUID, RingCounters { discarded: 1, ..Default::default() });
        assert_eq!((r.packets, r.lost_packets, r.lost_bytes), (0, 3, 3 * 4096));
        assert!(r.write_errors >= 3, "{r:?}");
        assert!(!r.trailer);
        let e = r.first_error.unwrap();
        assert!(e.contains("No space left on device"), "{e}");
        assert_eq!(r.file, Path::new("/dev/full"));
    }
}
