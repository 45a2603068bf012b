//! One ftrace ring-buffer page as `trace_pipe_raw` hands it over
//! (`events/header_page`, `events/header_event`; kernel
//! `kernel/trace/ring_buffer.c`): a header, then records of a 4-byte header
//! `type_len:5 | time_delta:27` each.
//!
//! ```text
//! u64 timestamp    absolute time of the page (the trace clock)
//! u64 commit       bytes of data; bit 31: events were lost before this page,
//!                  bit 30: their count is stored as a u64 right after the data
//! data…            records
//! ```
//!
//! `type_len` 1..=28: a record of `4 × type_len` payload bytes; 0: the
//! payload length (+ 4) is in the next u32; 29: padding (a discarded record,
//! or the end of the page if its delta is 0); 30: a time extension
//! (`delta + (next u32 << 27)`); 31: an absolute timestamp. Payloads start
//! with the common fields (`common_type` first).
//!
//! Everything is bounds-checked: a damaged page gives a [`PageError`] at the
//! offset where it stops making sense, never a panic, and the records before
//! it are kept.

/// Bytes of the page header on 64-bit kernels (`u64 timestamp`, `local_t commit`).
pub const HEADER_LEN: usize = 16;
const MISSED_EVENTS: u64 = 1 << 31;
const MISSED_STORED: u64 = 1 << 30;
/// Bits of `commit` that are flags, not the data length.
const COMMIT_FLAGS: u64 = 0xffff_ffff_ffff_ffff << 27;
const TYPE_PADDING: u32 = 29;
const TYPE_TIME_EXTEND: u32 = 30;
const TYPE_TIME_STAMP: u32 = 31;
/// Top bits an absolute timestamp record does not carry (the kernel's `TS_MSB`).
const TS_MSB: u64 = 0xf8 << 56;

/// Events the kernel lost before a page (ring full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missed {
    /// None.
    None,
    /// This many.
    Count(u64),
    /// Some, but the page had no room to say how many (the per-CPU `stats`
    /// file has the total).
    Unknown,
}

/// Why a page or a record cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Shorter than its header.
    #[error("page of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short(usize),
    /// The header's data length runs past the page.
    #[error("page says {commit} bytes of data, but only {room} follow the header")]
    Commit {
        /// The length the page claims.
        commit: u64,
        /// Bytes there are.
        room: usize,
    },
    /// A record runs past the page's data or is malformed.
    #[error("record at data offset {offset}: {why}")]
    Record {
        /// Offset in the data (after the page header).
        offset: usize,
        /// What is wrong.
        why: &'static str,
    },
}

/// A parsed page header and its data.
#[derive(Clone, Copy, Debug)]
pub struct Page<'a> {
    /// Timestamp of the page (trace clock ticks).
    pub timestamp: u64,
    /// Events lost just before this page.
    pub missed: Missed,
    /// The records' bytes.
    pub data: &'a [u8],
}

/// One data record: its absolute timestamp and payload (common fields first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// Absolute timestamp (trace clock ticks).
    pub timestamp: u64,
    /// The payload, `common_type` first; may carry up to 3 bytes of padding.
    pub payload: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

impl<'a> Page<'a> {
    /// Parses the header of `page` (the bytes one `trace_pipe_raw` read returned).
    pub fn parse(page: &'a [u8]) -> Result<Page<'a>, PageError> {
        let (Some(timestamp), Some(commit)) = (u64_at(page, 0), u64_at(page, 8)) else {
            return Err(PageError::Short(page.len()));
        };
        let len = commit & !COMMIT_FLAGS;
        let room = page.len() - HEADER_LEN;
        if len > room as u64 {
            return Err(PageError::Commit { commit: len, room });
        }
        let data = &page[HEADER_LEN..HEADER_LEN + len as usize];
        let missed = if commit & MISSED_EVENTS == 0 {
            Missed::None
        } else if commit & MISSED_STORED != 0 {
            u64_at(page, HEADER_LEN + len as usize).map_or(Missed::Unknown, Missed::Count)
        } else {
            Missed::Unknown
        };
        Ok(Page { timestamp, missed, data })
    }

    /// The data records, in order, with absolute timestamps. After an error
    /// the iterator ends.
    pub fn records(&self) -> Records<'a> {
        Records { data: self.data, at: 0, ts: self.timestamp, failed: false }
    }
}

/// Iterator over a page's data records (see [`Page::records`]).
#[derive(Clone, Debug)]
pub struct Records<'a> {
    data: &'a [u8],
    at: usize,
    ts: u64,
    failed: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RawRecord<'a>, PageError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && self.at < self.data.len() {
            match self.step() {
                Ok(Some(r)) => return Some(Ok(r)),
                Ok(None) => continue,
                Err(why) => {
                    self.failed = true;
                    return Some(Err(PageError::Record { offset: self.at, why }));
                }
            }
        }
        None
    }
}

impl<'a> Records<'a> {
    /// Reads the record at `self.at`; `None` for the non-data kinds.
    fn step(&mut self) -> Result<Option<RawRecord<'a>>, &'static str> {
        let d = self.data;
        let at = self.at;
        let h = u32_at(d, at).ok_or("header runs past the data")?;
        let (type_len, delta) = (h & 0x1f, u64::from(h >> 5));
        let array0 = || u32_at(d, at + 4).ok_or("length word runs past the data");
        match type_len {
            TYPE_PADDING => {
                if delta == 0 {
                    // A null event: the rest of the page is padding.
                    self.at = d.len();
                    return Ok(None);
                }
                // A discarded record: skipped, its delta not applied (as the
                // kernel's reader does, `rb_update_read_stamp`).
                let len = array0()? as usize;
                self.at = at.checked_add(4 + len).ok_or("padding length overflows")?;
                if len < 4 || self.at > d.len() {
                    return Err("padding runs past the data");
                }
                Ok(None)
            }
            TYPE_TIME_EXTEND => {
                self.ts = self.ts.wrapping_add((u64::from(array0()?) << 27) + delta);
                self.at = at + 8;
                Ok(None)
            }
            TYPE_TIME_STAMP => {
                self.ts = (self.ts & TS_MSB) | (u64::from(array0()?) << 27) | delta;
                self.at = at + 8;
                Ok(None)
            }
            0 => {
                // The length word counts itself.
                let len = (array0()? as usize).checked_sub(4).ok_or("length word below 4")?;
                let start = at + 8;
                let payload = d.get(start..start + len).ok_or("payload runs past the data")?;
                self.at = start + ((len + 3) & !3);
                self.ts = self.ts.wrapping_add(delta);
                Ok(Some(RawRecord { timestamp: self.ts, payload }))
            }
            n => {
                let len = n as usize * 4;
                let payload = d.get(at + 4..at + 4 + len).ok_or("payload runs past the data")?;
                self.at = at + 4 + len;
                self.ts = self.ts.wrapping_add(delta);
                Ok(Some(RawRecord { timestamp: self.ts, payload }))
            }
        }
    }
}

/// Builds pages the way the kernel writes them, for tests (of this crate and
/// of its users): records with deltas, time extensions, padding, lost counts.
pub mod synth {
    use super::*;

    /// A page under construction.
    #[derive(Clone, Debug)]
    pub struct PageBuilder {
        ts: u64,
        last: u64,
        data: Vec<u8>,
        missed: Missed,
    }

    impl PageBuilder {
        /// An empty page starting at `timestamp`.
        pub fn new(timestamp: u64) -> Self {
            PageBuilder { ts: timestamp, last: timestamp, data: Vec::new(), missed: Missed::None }
        }

        /// Marks events lost before this page.
        pub fn missed(mut self, m: Missed) -> Self {
            self.missed = m;
            self
        }

        /// Appends a record at absolute time `timestamp` (not before the
        /// previous one), with a time extension if the delta needs one and the
        /// long length form for payloads over 112 bytes or `long_form`.
        pub fn record(mut self, timestamp: u64, payload: &[u8], long_form: bool) -> Self {
            let mut delta = timestamp - self.last;
            if delta >= 1 << 27 {
                let h = TYPE_TIME_EXTEND | (((delta & ((1 << 27) - 1)) as u32) << 5);
                self.data.extend_from_slice(&h.to_le_bytes());
                self.data.extend_from_slice(&((delta >> 27) as u32).to_le_bytes());
                delta = 0;
            }
            let padded = (payload.len() + 3) & !3;
            if long_form || padded > 28 * 4 {
                self.data.extend_from_slice(&((delta as u32) << 5).to_le_bytes());
                self.data.extend_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
            } else {
                let h = (padded / 4) as u32 | ((delta as u32) << 5);
                self.data.extend_from_slice(&h.to_le_bytes());
            }
            self.data.extend_from_slice(payload);
            self.data.resize(self.data.len() + padded - payload.len(), 0);
            self.last = timestamp;
            self
        }

        /// Appends a discarded record (padding with a delta) of `len` bytes.
        pub fn discarded(mut self, len: u32) -> Self {
            self.data.extend_from_slice(&(TYPE_PADDING | (1 << 5)).to_le_bytes());
            self.data.extend_from_slice(&len.to_le_bytes());
            self.data.resize(self.data.len() + len as usize - 4, 0xee);
            self
        }

        /// The page: header, data, the stored lost count if any, zeros up to `size`.
        pub fn build(self, size: usize) -> Vec<u8> {
            let mut commit = self.data.len() as u64;
            let mut p = Vec::with_capacity(size);
            p.extend_from_slice(&self.ts.to_le_bytes());
            match self.missed {
                Missed::None => {}
                Missed::Unknown => commit |= MISSED_EVENTS,
                Missed::Count(_) => commit |= MISSED_EVENTS | MISSED_STORED,
            }
            p.extend_from_slice(&commit.to_le_bytes());
            p.extend_from_slice(&self.data);
            if let Missed::Count(n) = self.missed {
                p.extend_from_slice(&n.to_le_bytes());
            }
            p.resize(size.max(p.len()), 0);
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::synth::PageBuilder;
    use super::*;

    fn all(p: &[u8]) -> Vec<(u64, Vec<u8>)> {
        Page::parse(p).unwrap().records().map(|r| r.map(|r| (r.timestamp, r.payload.to_vec())).unwrap()).collect()
    }

    #[test]
    fn deltas_extensions_long_records_and_padding() {
        let big = vec![7u8; 200];
        let p = PageBuilder::new(1_000)
            .record(1_010, &[1, 0, 0, 0, 5, 0, 0, 0], false)
            .discarded(16)
            .record(1_010 + (5 << 27) + 3, &[2, 0, 0, 0], false)
            .record(1_010 + (5 << 27) + 9, &big, false)
            .record(1_010 + (5 << 27) + 9, &[3, 0, 0, 0, 9, 9], true)
            .build(4096);
        let r = all(&p);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], (1_010, vec![1, 0, 0, 0, 5, 0, 0, 0]));
        assert_eq!(r[1], (1_010 + (5 << 27) + 3, vec![2, 0, 0, 0]));
        assert_eq!(r[2], (1_010 + (5 << 27) + 9, big));
        assert_eq!(r[3], (1_010 + (5 << 27) + 9, vec![3, 0, 0, 0, 9, 9]));
    }

    #[test]
    fn lost_events_are_read_from_the_header() {
        let p = PageBuilder::new(5).missed(Missed::Count(77)).record(6, &[1, 0, 0, 0], false).build(4096);
        assert_eq!(Page::parse(&p).unwrap().missed, Missed::Count(77));
        let p = PageBuilder::new(5).missed(Missed::Unknown).build(4096);
        assert_eq!(Page::parse(&p).unwrap().missed, Missed::Unknown);
        assert_eq!(Page::parse(&PageBuilder::new(5).build(64)).unwrap().missed, Missed::None);
    }

    #[test]
    fn an_absolute_timestamp_keeps_the_top_bits() {
        let mut p = PageBuilder::new(0xf800_0000_0000_0000).build(4096);
        let abs: u64 = 0x0123_4567_89ab;
        let mut data = Vec::new();
        data.extend_from_slice(&(TYPE_TIME_STAMP | (((abs & ((1 << 27) - 1)) as u32) << 5)).to_le_bytes());
        data.extend_from_slice(&((abs >> 27) as u32).to_le_bytes());
        data.extend_from_slice(&(1u32 | (4 << 5)).to_le_bytes());
        data.extend_from_slice(&[9, 0, 0, 0]);
        p[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        p[16..16 + data.len()].copy_from_slice(&data);
        assert_eq!(all(&p), [(0xf800_0000_0000_0000 | abs) + 4].map(|t| (t, vec![9, 0, 0, 0])));
    }

    #[test]
    fn damaged_pages_give_errors_and_keep_what_came_before() {
        assert_eq!(Page::parse(&[0; 10]).unwrap_err(), PageError::Short(10));
        let mut p = PageBuilder::new(0).record(1, &[1, 0, 0, 0], false).build(64);
        p[8..16].copy_from_slice(&4000u64.to_le_bytes());
        assert!(matches!(Page::parse(&p), Err(PageError::Commit { commit: 4000, .. })));
        // A long record whose length runs past the data.
        let mut p = PageBuilder::new(0).record(1, &[1, 0, 0, 0], false).record(2, &[2; 8], true).build(64);
        p[16 + 8 + 4..16 + 8 + 8].copy_from_slice(&1000u32.to_le_bytes());
        let r: Vec<_> = Page::parse(&p).unwrap().records().collect();
        assert_eq!(r.len(), 2);
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(PageError::Record { offset: 8, .. })), "{r:?}");
        // Every truncation and every single-byte corruption: no panic, and
        // never a record reaching outside the page.
        let good = PageBuilder::new(3)
            .record(4, &[1; 12], false)
            .record(4 + (1 << 28), &[2; 130], false)
            .discarded(8)
            .record(5 + (1 << 28), &[3; 4], true)
            .build(400);
        for cut in 0..good.len() {
            if let Ok(p) = Page::parse(&good[..cut]) {
                p.records().for_each(drop);
            }
        }
        for i in 0..good.len() {
            for v in [0u8, 0x1d, 0x1e, 0x1f, 0xff, 0x80] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(p) = Page::parse(&bad) {
                    for r in p.records().flatten() {
                        let at = r.payload.as_ptr() as usize - bad.as_ptr() as usize;
                        assert!(at + r.payload.len() <= bad.len());
                    }
                }
            }
        }
    }
}
