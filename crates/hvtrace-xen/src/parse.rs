//! The xentrace file parser: windows, then records, read from a buffer the
//! caller refills (the file is never held in memory whole).
//!
//! Bounded by construction: every length it acts on comes from a 3-bit word
//! count or a window size checked against the bytes the caller gives it, so
//! any input yields items, a request for more bytes, or a [`Damage`] with
//! the file offset, never a panic (`tests/parse.rs` fuzzes it).

use crate::abi::*;

/// One record of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The pCPU whose window holds it.
    pub cpu: u32,
    /// The event id (header bits 0-27).
    pub event: u32,
    /// The TSC, if the record carries one.
    pub tsc: Option<u64>,
    /// The data words, little-endian, `4 * n` bytes.
    pub data: &'a [u8],
    /// File offset of the record's header.
    pub offset: u64,
}

impl Record<'_> {
    /// Data word `i` (0 past the end).
    pub fn word(&self, i: usize) -> u32 {
        self.data.get(4 * i..4 * i + 4).map_or(0, |w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    }

    /// Number of data words.
    pub fn words(&self) -> usize {
        self.data.len() / 4
    }
}

/// What the parser found next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A window of `bytes` bytes of records of pCPU `cpu` begins.
    Window {
        /// The pCPU.
        cpu: u32,
        /// Bytes of records that follow.
        bytes: u32,
        /// File offset of the CPU-change record.
        offset: u64,
    },
    /// A record.
    Record(Record<'a>),
}

/// One step of [`Parser::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// An item, and the bytes of the buffer it used.
    Item(Item<'a>, usize),
    /// The buffer ends before the next item: call again with more bytes.
    NeedMore,
}

/// Bytes that are not a xentrace file (from `offset` on). Every item before
/// them was returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// Where a window must begin, something else.
    #[error("offset {offset}: expected a CPU-change record (header 0x{CPU_CHANGE_HEADER:08x}), found 0x{found:08x}")]
    NotAWindow {
        /// File offset.
        offset: u64,
        /// The word found.
        found: u32,
    },
    /// A window names a CPU no machine has.
    #[error("offset {offset}: window for CPU {cpu}, beyond any machine (Xen has at most {MAX_PCPUS} CPUs)")]
    CpuOutOfRange {
        /// File offset.
        offset: u64,
        /// The CPU id as written (signed in the file).
        cpu: i64,
    },
    /// A window size that records (4-byte aligned) cannot fill.
    #[error("offset {offset}: window of CPU {cpu} declares {bytes} bytes, not a whole number of 4-byte words")]
    WindowSize {
        /// File offset.
        offset: u64,
        /// The CPU.
        cpu: u32,
        /// The declared size.
        bytes: u32,
    },
    /// A record header whose size runs past its window.
    #[error(
        "offset {offset}: record header 0x{header:08x} says {len} bytes, but CPU {cpu}'s window has {left} left: \
         impossible word count or a corrupted window"
    )]
    RecordCrossesWindow {
        /// File offset of the record.
        offset: u64,
        /// The header word.
        header: u32,
        /// The record size the header implies.
        len: usize,
        /// Bytes left in the window.
        left: u32,
        /// The CPU.
        cpu: u32,
    },
}

impl Damage {
    /// File offset where the damage starts.
    pub fn offset(&self) -> u64 {
        match *self {
            Damage::NotAWindow { offset, .. }
            | Damage::CpuOutOfRange { offset, .. }
            | Damage::WindowSize { offset, .. }
            | Damage::RecordCrossesWindow { offset, .. } => offset,
        }
    }
}

/// How a file that ends mid-window was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// File offset of the first byte not imported.
    pub offset: u64,
    /// The window's CPU, when the cut fell inside a window.
    pub cpu: Option<u32>,
    /// Bytes present after the last complete record (a partial record or window header).
    pub partial: u64,
    /// Bytes the window (or header) still needed.
    pub missing: u64,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cpu {
            Some(cpu) => write!(
                f,
                "the file ends inside CPU {cpu}'s window at offset {}: {} bytes of a partial record kept out, \
                 {} bytes of the window missing (xentrace stopped mid-write?)",
                self.offset, self.partial, self.missing
            ),
            None => write!(
                f,
                "the file ends at offset {} inside a CPU-change record ({} of its 12 bytes present)",
                self.offset, self.partial
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A CPU-change record comes next.
    Window,
    /// `left` bytes of `cpu`'s window remain.
    In { cpu: u32, left: u32 },
}

/// The parser's position in the file.
#[derive(Clone, Debug)]
pub struct Parser {
    state: State,
    offset: u64,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Bytes of a record with header `hdr`.
pub fn record_len(hdr: u32) -> usize {
    let words = ((hdr >> TRC_HD_EXTRA_SHIFT) & 7) as usize;
    4 + if hdr & TRC_HD_CYCLE_FLAG != 0 { 8 } else { 0 } + 4 * words
}

impl Parser {
    /// A parser at the start of a file.
    pub fn new() -> Self {
        Parser { state: State::Window, offset: 0 }
    }

    /// File offset of the next byte [`Parser::next`] expects.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Parses the next item from `buf`, the file's bytes from [`Parser::offset`] on.
    pub fn next<'a>(&mut self, buf: &'a [u8]) -> Result<Step<'a>, Damage> {
        let offset = self.offset;
        match self.state {
            State::Window => {
                if buf.len() < CPU_CHANGE_LEN {
                    if buf.len() >= 4 && le32(buf, 0) != CPU_CHANGE_HEADER {
                        return Err(Damage::NotAWindow { offset, found: le32(buf, 0) });
                    }
                    return Ok(Step::NeedMore);
                }
                let found = le32(buf, 0);
                if found != CPU_CHANGE_HEADER {
                    return Err(Damage::NotAWindow { offset, found });
                }
                let cpu = le32(buf, 4) as i32;
                let bytes = le32(buf, 8);
                if cpu < 0 || cpu as u32 >= MAX_PCPUS {
                    return Err(Damage::CpuOutOfRange { offset, cpu: cpu.into() });
                }
                let cpu = cpu as u32;
                if bytes % 4 != 0 {
                    return Err(Damage::WindowSize { offset, cpu, bytes });
                }
                if bytes > 0 {
                    self.state = State::In { cpu, left: bytes };
                }
                self.offset += CPU_CHANGE_LEN as u64;
                Ok(Step::Item(Item::Window { cpu, bytes, offset }, CPU_CHANGE_LEN))
            }
            State::In { cpu, left } => {
                if buf.len() < 4 {
                    return Ok(Step::NeedMore);
                }
                let hdr = le32(buf, 0);
                let len = record_len(hdr);
                if len > left as usize {
                    return Err(Damage::RecordCrossesWindow { offset, header: hdr, len, left, cpu });
                }
                if buf.len() < len {
                    return Ok(Step::NeedMore);
                }
                let (tsc, data_at) = if hdr & TRC_HD_CYCLE_FLAG != 0 {
                    (Some(le32(buf, 4) as u64 | (le32(buf, 8) as u64) << 32), 12)
                } else {
                    (None, 4)
                };
                let left = left - len as u32;
                self.state = if left == 0 { State::Window } else { State::In { cpu, left } };
                self.offset += len as u64;
                let rec = Record { cpu, event: hdr & TRC_HD_EVENT_MASK, tsc, data: &buf[data_at..len], offset };
                Ok(Step::Item(Item::Record(rec), len))
            }
        }
    }

    /// At the end of the file, with `rest` bytes left unparsed (those
    /// [`Parser::next`] wanted more after): how the file was cut, or `None`
    /// when it ended cleanly between windows.
    pub fn finish(&self, rest: usize) -> Option<Cut> {
        let partial = rest as u64;
        match self.state {
            State::Window if rest == 0 => None,
            State::Window => Some(Cut {
                offset: self.offset,
                cpu: None,
                partial,
                missing: (CPU_CHANGE_LEN as u64).saturating_sub(partial),
            }),
            State::In { cpu, left } => Some(Cut {
                offset: self.offset,
                cpu: Some(cpu),
                partial,
                missing: left as u64 - partial.min(left as u64),
            }),
        }
    }
}
