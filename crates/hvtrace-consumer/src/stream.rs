//! One stream file: whole packets appended exactly as delivered, torn or
//! failed writes cut back so the file never ends in half a packet, and the
//! trailer packet that carries the stream's final loss count.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hvtrace_core::decode::packet_info;
use hvtrace_core::{ctf, RingCounters};

use crate::report::RingReport;

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
    path: PathBuf,
    file: File,
    /// Length of the whole packets written so far; everything past it is
    /// garbage to cut off.
    len: u64,
    last: Option<Last>,
    /// The last write failed (errors are reported once per failing run).
    failing: bool,
    pub(crate) report: RingReport,
}

impl StreamFile {
    /// Creates `path`, which must not exist.
    pub(crate) fn create(path: &Path, cpu: u32) -> io::Result<Self> {
        let file = File::options().write(true).create_new(true).open(path)?;
        Ok(Self::from_file(path, file, cpu))
    }

    /// Writes to an already open file, from its start (tests use `/dev/full`).
    pub(crate) fn from_file(path: &Path, file: File, cpu: u32) -> Self {
        StreamFile {
            path: path.to_path_buf(),
            file,
            len: 0,
            last: None,
            failing: false,
            report: RingReport::new(cpu, path),
        }
    }

    /// Bytes of whole packets in the file.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Takes one delivered packet: writes `bytes` unchanged at the end of the
    /// file, then calls `release` (which hands the sub-buffer back to the
    /// producer and says whether the bytes were intact). The packet is
    /// released whatever happens, so a failing disk never blocks the host.
    pub(crate) fn take_packet(&mut self, bytes: &[u8], release: impl FnOnce() -> bool) {
        // Read the header before release: afterwards the producer may reuse
        // the sub-buffer. A flushed packet declares fewer bytes than its
        // sub-buffer (its content rounded up to a page): write only those.
        let info = packet_info(bytes).ok().filter(|i| i.packet_len <= bytes.len());
        let Some(info) = info else {
            let n = bytes.len() as u64;
            if release() {
                self.lose(n, None, format!("dropped a malformed packet ({n} bytes) instead of writing it"));
            } else {
                self.report.torn += 1;
            }
            return;
        };
        let bytes = &bytes[..info.packet_len];
        let n = bytes.len() as u64;
        match self.file.write_all_at(bytes, self.len) {
            Ok(()) => {
                if release() {
                    self.len += n;
                    self.report.packets += 1;
                    self.report.bytes += n;
                    self.last = Some(Last {
                        seq: info.seq,
                        timestamp_end: info.timestamp_end,
                        events_discarded: info.events_discarded,
                    });
                    if self.failing {
                        self.failing = false;
                        eprintln!(
                            "hvtrace-consume: writing {} works again ({} packets lost so far)",
                            self.path.display(),
                            self.report.lost_packets
                        );
                    }
                } else {
                    // Overwrite mode: the producer took the sub-buffer back
                    // while it was being written.
                    self.report.torn += 1;
                    self.cut_back();
                }
            }
            Err(e) => {
                release();
                self.report.write_errors += 1;
                self.lose(n, Some(e), String::new());
                self.cut_back();
            }
        }
    }

    /// Ends the stream: appends an empty packet carrying `counters.discarded`
    /// if events were lost after the last packet written (so CTF readers
    /// report every loss), then `fsync`s the file. Returns the final report.
    pub(crate) fn finish(mut self, uuid: &[u8; 16], counters: RingCounters) -> RingReport {
        let written = self.last.map_or(0, |l| l.events_discarded);
        if counters.discarded > written {
            let (seq, ts) = self.last.map_or((0, 0), |l| (l.seq + 1, l.timestamp_end));
            let pkt = ctf::empty_packet(uuid, self.report.cpu, seq, ts, counters.discarded);
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
        self.report
    }

    fn lose(&mut self, n: u64, e: Option<io::Error>, why: String) {
        self.report.lost_packets += 1;
        self.report.lost_bytes += n;
        let msg = match e {
            Some(e) => format!(
                "write failed: {e}; the packet is dropped (released to the host) and the file cut back to its \
                 last whole packet; consuming goes on"
            ),
            None => why,
        };
        if !self.failing {
            self.failing = true;
            self.note_error(&msg);
        }
    }

    fn note_error(&mut self, msg: &str) {
        eprintln!("hvtrace-consume: {}: {msg}", self.path.display());
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

#[cfg(test)]
mod tests {
    use super::*;
    use hvtrace_core::decode::packet_info;

    const UUID: [u8; 16] = [7; 16];

    /// A real packet: header from `empty_packet`, sized to 4 KiB with records
    /// region zero (content = header).
    fn packet(seq: u64, ts: u64, discarded: u64) -> Vec<u8> {
        let mut p = ctf::empty_packet(&UUID, 2, seq, ts, discarded).to_vec();
        p.resize(4096, 0xAB);
        p[ctf::packet::PACKET_SIZE..][..8].copy_from_slice(&(4096u64 * 8).to_le_bytes());
        p
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
        let mut s = StreamFile::create(&path, 2).unwrap();
        let (a, b) = (packet(0, 100, 0), packet(1, 200, 5));
        s.take_packet(&a, || true);
        s.take_packet(&b, || true);
        assert_eq!(s.len(), 8192);
        let counters = RingCounters { discarded: 9, ..Default::default() };
        let r = s.finish(&UUID, counters);
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
        let mut s = StreamFile::create(&path, 2).unwrap();
        s.take_packet(&packet(0, 100, 3), || true);
        let r = s.finish(&UUID, RingCounters { discarded: 3, ..Default::default() });
        assert!(!r.trailer);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096);
        // A stream with no packet at all but losses gets one empty packet.
        let path = dir.path().join("chan_3");
        let s = StreamFile::create(&path, 2).unwrap();
        let r = s.finish(&UUID, RingCounters { discarded: 4, ..Default::default() });
        assert!(r.trailer);
        let ps = read_packets(&path);
        assert_eq!((ps.len(), ps[0].seq, ps[0].events_discarded), (1, 0, 4));
    }

    #[test]
    fn torn_packet_is_cut_back_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chan_2");
        let mut s = StreamFile::create(&path, 2).unwrap();
        s.take_packet(&packet(0, 1, 0), || true);
        s.take_packet(&packet(1, 2, 0), || false);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096, "the torn packet was cut off");
        s.take_packet(&packet(3, 3, 0), || true);
        let r = s.finish(&UUID, RingCounters::default());
        assert_eq!((r.packets, r.torn, r.lost_packets), (2, 1, 0));
        let ps = read_packets(&path);
        assert_eq!(ps.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![0, 3]);
    }

    #[test]
    fn malformed_packet_is_released_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chan_2");
        let mut s = StreamFile::create(&path, 2).unwrap();
        let mut released = false;
        s.take_packet(&[0u8; 4096], || {
            released = true;
            true
        });
        assert!(released);
        let r = s.finish(&UUID, RingCounters::default());
        assert_eq!((r.packets, r.lost_packets, r.lost_bytes), (0, 1, 4096));
        assert!(r.first_error.unwrap().contains("malformed"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn write_errors_release_count_and_say_which_file() {
        // /dev/full fails every write with ENOSPC.
        let path = Path::new("/dev/full");
        let Ok(f) = File::options().write(true).open(path) else { return };
        let mut s = StreamFile::from_file(path, f, 2);
        let mut released = 0;
        for seq in 0..3 {
            s.take_packet(&packet(seq, seq, 0), || {
                released += 1;
                true
            });
        }
        assert_eq!(released, 3, "every packet is released although the disk fails");
        let r = s.finish(&UUID, RingCounters { discarded: 1, ..Default::default() });
        assert_eq!((r.packets, r.lost_packets, r.lost_bytes), (0, 3, 3 * 4096));
        assert!(r.write_errors >= 3, "{r:?}");
        assert!(!r.trailer);
        let e = r.first_error.unwrap();
        assert!(e.contains("No space left on device"), "{e}");
        assert_eq!(r.file, Path::new("/dev/full"));
    }
}
