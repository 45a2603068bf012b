//! Walking a stream file's packets with memory that does not grow with the
//! file: a window of whole packets is read at a time into one reused buffer.
//!
//! Why not a memory map: every page of a mapped file that has been touched
//! counts in the process's resident set until the kernel reclaims it, so a
//! map of a 1 GiB stream reads as ~1 GiB RSS; the copy from the page cache
//! costs far less than decoding the records.
//!
//! Why a small window: records are decoded right after the read, and then
//! read again as the merge hands them out; a window that fits in L2 beside
//! its slots is still there (a 4 MiB one had left it by then), and each
//! stream's buffer costs its size in resident memory per reader.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use hvtrace_core::ctf::packet;
use hvtrace_core::decode::{packet_info, DecodeError};

use crate::dir::{io_err, Packet, PacketError, ReadError};

/// A stream file's packets, read a window at a time (see the module doc).
/// Like [`crate::packets`], it stops after the first packet that does not
/// decode; given the intact packets `check` found ([`PacketReader::only`]),
/// it visits those and nothing else.
pub struct PacketReader {
    file: File,
    len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]` and bytes of `buf` filled.
    buf_at: u64,
    filled: usize,
    /// Next packet's file offset (walk), or the packets left to visit.
    at: u64,
    only: Option<std::vec::IntoIter<(u64, u64)>>,
    failed: bool,
    /// Where in `buf` the last packet returned is.
    current: (usize, usize),
}

impl PacketReader {
    /// Bytes read at a time (more when one packet is larger): one 256 KiB
    /// sub-buffer, the default packet, or many small ones.
    pub const WINDOW: usize = 256 << 10;

    /// Opens `path` to walk its packets from the start.
    pub fn open(path: &Path) -> Result<PacketReader, ReadError> {
        let file = File::open(path).map_err(io_err(path, "open"))?;
        let len = file.metadata().map_err(io_err(path, "stat"))?.len();
        Ok(PacketReader {
            file,
            len,
            buf: Vec::new(),
            buf_at: 0,
            filled: 0,
            at: 0,
            only: None,
            failed: false,
            current: (0, 0),
        })
    }

    /// Visits only the packets at these `(offset, length)`s, in this order.
    pub fn only(mut self, packets: Vec<(u64, u64)>) -> PacketReader {
        self.only = Some(packets.into_iter());
        self
    }

    /// Walks from the packet at byte `offset` on (a walk from the middle of
    /// the file: [`crate::Merge::between`]).
    pub fn starting_at(mut self, offset: u64) -> PacketReader {
        self.at = offset;
        self
    }

    /// Reads into `buf` (given back by [`PacketReader::into_buffer`]): a
    /// walk in many windows in turn allocates and faults in its buffers once.
    pub fn with_buffer(mut self, buf: Vec<u8>) -> PacketReader {
        // Nothing in it is taken for the file's: `filled` is 0.
        self.buf = buf;
        self
    }

    /// The read buffer, for [`PacketReader::with_buffer`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }

    /// The file's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes of the packet [`PacketReader::next_packet`] returned last
    /// (empty before the first), for reading its records after the borrow
    /// of that call has ended.
    pub fn current(&self) -> &[u8] {
        &self.buf[self.current.0..self.current.0 + self.current.1]
    }

    /// Bytes of the file walked so far.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// Makes `buf` hold the file's bytes `[at, at + n)` (fewer at its end);
    /// returns how many it holds.
    fn window(&mut self, at: u64, n: usize) -> io::Result<usize> {
        let have = self.buf_at + self.filled as u64;
        if at >= self.buf_at && at + n as u64 <= have {
            return Ok(n);
        }
        let want = n.max(Self::WINDOW.min(self.len.saturating_sub(at) as usize));
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        // Bytes from `at` already read (a packet cut by the window's end, or
        // longer than it) move to the front rather than being read again.
        let mut got = 0;
        if at >= self.buf_at && at < have {
            let from = (at - self.buf_at) as usize;
            self.buf.copy_within(from..self.filled, 0);
            got = self.filled - from;
        }
        while got < want {
            match self.file.read_at(&mut self.buf[got..want], at + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf_at = at;
        self.filled = got;
        Ok(got.min(n))
    }

    /// The next packet, an error for the first one that does not decode
    /// (after which the walk ends), or `None` at the end.
    pub fn next_packet(&mut self) -> Option<Result<Result<Packet<'_>, PacketError>, io::Error>> {
        if self.failed {
            return None;
        }
        let (at, len) = match &mut self.only {
            Some(it) => {
                let (at, len) = it.next()?;
                (at, Some(len as usize))
            }
            None if self.at >= self.len => return None,
            None => (self.at, None),
        };
        let len = match len {
            Some(l) => l,
            None => {
                let head = match self.window(at, packet::LEN) {
                    Ok(h) => h,
                    Err(e) => return Some(Err(e)),
                };
                let s = (at - self.buf_at) as usize;
                let bits = if head >= packet::LEN {
                    u64::from_le_bytes(self.buf[s + packet::PACKET_SIZE..][..8].try_into().unwrap())
                } else {
                    0
                };
                // A size that cannot be right: let `packet_info` say why.
                if bits / 8 < packet::LEN as u64 || bits / 8 > self.len - at {
                    self.failed = true;
                    let error = packet_info(&self.buf[s..s + head]).err().unwrap_or(DecodeError::BadSizes);
                    return Some(Ok(Err(PacketError { offset: at as usize, error })));
                }
                (bits / 8) as usize
            }
        };
        let got = match self.window(at, len) {
            Ok(g) => g,
            Err(e) => return Some(Err(e)),
        };
        let s = (at - self.buf_at) as usize;
        let bytes = &self.buf[s..s + got];
        self.at = at + len as u64;
        self.current = (s, got);
        Some(Ok(match packet_info(bytes) {
            Ok(info) if info.packet_len == len => Ok(Packet { offset: at as usize, info, bytes }),
            Ok(_) => {
                self.failed = true;
                Err(PacketError { offset: at as usize, error: DecodeError::BadSizes })
            }
            Err(error) => {
                self.failed = true;
                Err(PacketError { offset: at as usize, error })
            }
        }))
    }
}
