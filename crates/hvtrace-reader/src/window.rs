//! Cutting one walk into time windows that can be walked apart (on
//! several threads) and give, one after the other, exactly the whole walk.
//!
//! A [`Splitter`] reads each stream's packet headers (not their records)
//! and picks cut times that share the bytes out in given shares ([`Splitter::times_by`]).
//! A cut at time `t` ([`Splitter::mark`]) is, in each stream, the place of
//! its first record at or after `t`: the whole walk ([`crate::Merge`], by
//! least head) hands out every record before those places before any
//! record after them, since each head before its place is below `t` and
//! each head at it is not. So walks between successive marks
//! ([`crate::Merge::between`]) hand out the whole walk's items in turn.
//! The place is a packet and the records of it to skip; with it go what the
//! walk carries from packet to packet: the packet read before (order
//! checks, sequence gaps), the cumulative loss count, and the last record's
//! time (where a loss starts).
//!
//! Only intact traces are cut: a header that does not decode or is out of
//! order gives no splitter (the caller walks the trace whole, which skips
//! damage with `check`'s walker).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use hvtrace_core::ctf::{packet, CTF_MAGIC};

use crate::check::{raw, Order as PacketOrder};
use crate::dir::{io_err, ReadError, TraceDir};
use crate::merge::decode_slots;
use crate::model::Layouts;

/// A stream's place at a cut, and what its walk carries there.
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamMark {
    /// The first packet to load.
    pub offset: u64,
    /// Its records before the cut (then the walk before the cut loaded it).
    pub skip: usize,
    /// The packet loaded before `offset` (with `skip`: that packet itself).
    pub last: Option<PacketOrder>,
    /// Cumulative events lost as of `last`.
    pub discarded: u64,
    /// The time of the stream's last record before the cut.
    pub last_ts: Option<u64>,
}

/// A cut of a trace's walk at a time: see the module doc.
#[derive(Clone, Debug)]
pub struct Mark {
    pub(crate) streams: Vec<StreamMark>,
    time: u64,
}

impl Mark {
    /// The cut's time (ticks): records before it in every stream are before the cut.
    pub fn time(&self) -> u64 {
        self.time
    }
}

/// A packet's header, as far as cutting needs it.
#[derive(Clone, Copy, Debug)]
struct Head {
    offset: u64,
    len: u64,
    order: PacketOrder,
    /// Whether it holds records (content past the header).
    records: bool,
}

struct StreamIndex {
    path: PathBuf,
    class: u32,
    file: File,
    packets: Vec<Head>,
}

/// The packet headers of a trace's streams, to cut its walk by time.
pub struct Splitter {
    streams: Vec<StreamIndex>,
    layouts: Layouts,
    kernel_layouts: Layouts,
}

impl Splitter {
    /// Reads the packet headers of `trace`'s streams (and of the kernel's,
    /// with `kernel`, in [`crate::Merge::with_kernel`]'s order). `None` if a
    /// header is damaged or out of order: such a trace is walked whole.
    pub fn new(trace: &TraceDir, kernel: bool) -> Result<Option<Splitter>, ReadError> {
        let kernel_streams = match &trace.metadata.kernel {
            Some(_) if kernel => &trace.kernel_streams[..],
            _ => &[],
        };
        let mut streams = Vec::new();
        for (class, s) in trace.streams.iter().map(|s| (0u32, s)).chain(kernel_streams.iter().map(|s| (1, s))) {
            let file = File::open(&s.path).map_err(io_err(&s.path, "open"))?;
            let len = file.metadata().map_err(io_err(&s.path, "stat"))?.len();
            let mut packets: Vec<Head> = Vec::new();
            let mut at = 0u64;
            let mut h = [0u8; packet::LEN];
            while at < len {
                if len - at < packet::LEN as u64 {
                    return Ok(None);
                }
                file.read_exact_at(&mut h, at).map_err(io_err(&s.path, "read"))?;
                let r = raw(&h);
                let (content, size) = (r.content_bits, r.packet_bits);
                let sound = r.magic == CTF_MAGIC
                    && r.uuid == trace.metadata.uuid
                    && r.stream_id == class
                    && r.instance == u64::from(s.cpu)
                    && r.cpu_id == s.cpu
                    && content % 8 == 0
                    && size % 8 == 0
                    && content <= size
                    && content >= packet::LEN as u64 * 8
                    && size / 8 <= len - at;
                let order = PacketOrder { seq: r.seq, begin: r.begin, end: r.end, discarded: r.discarded };
                if !sound || order.begin > order.end || packets.last().is_some_and(|p| p.order.breaks(&order).is_some())
                {
                    return Ok(None);
                }
                packets.push(Head { offset: at, len: size / 8, order, records: content > packet::LEN as u64 * 8 });
                at += size / 8;
            }
            streams.push(StreamIndex { path: s.path.clone(), class, file, packets });
        }
        let kernel_schema = trace.metadata.kernel.clone().filter(|_| kernel).unwrap_or_default();
        Ok(Some(Splitter {
            streams,
            layouts: Layouts::new(trace.schema()),
            kernel_layouts: Layouts::new(&kernel_schema),
        }))
    }

    /// The time of the trace's first record (ticks), as a whole walk's
    /// [`crate::Merge::first_timestamp`] gives it: the first record of each
    /// stream's first packet with records. `None` if the trace has no
    /// record, or a packet read does not decode (then the walk would warn).
    pub fn first_time(&self) -> Result<Option<u64>, ReadError> {
        let mut first: Option<u64> = None;
        for s in &self.streams {
            for i in (0..s.packets.len()).filter(|&i| s.packets[i].records) {
                let Some(ts) = self.times_of(s, i)? else { return Ok(None) };
                if let Some(&t) = ts.first() {
                    first = Some(first.map_or(t, |f| f.min(t)));
                    break;
                }
            }
        }
        Ok(first)
    }

    /// Bytes of all stream files, as [`crate::Merge::total_bytes`] (a
    /// splitter's streams are whole packets, end to end).
    pub fn total_bytes(&self) -> u64 {
        self.streams.iter().map(StreamIndex::file_len).sum()
    }

    /// Up to `shares.len() - 1` increasing cut times that share the streams'
    /// bytes out into windows of about these relative sizes, in order (fewer
    /// in a trace of few packets: a cut is a packet's start); `[1; n]`: `n`
    /// windows of about the same size.
    pub fn times_by(&self, shares: &[u64]) -> Vec<u64> {
        let mut heads: Vec<(u64, u64)> =
            self.streams.iter().flat_map(|s| s.packets.iter().map(|p| (p.order.begin, p.len))).collect();
        heads.sort_unstable();
        let total: u64 = heads.iter().map(|h| h.1).sum();
        let all = u128::from(shares.iter().sum::<u64>().max(1));
        // The bytes before each cut.
        let mut before = shares[..shares.len().saturating_sub(1)].iter().scan(0u64, |sum, &s| {
            *sum += s;
            Some((u128::from(total) * u128::from(*sum) / all) as u64)
        });
        let mut target = before.next();
        let first = heads.first().map_or(0, |h| h.0);
        let mut times = Vec::new();
        let mut sum = 0u64;
        for (begin, len) in heads {
            if target.is_some_and(|t| sum >= t) {
                if begin > first && times.last().is_none_or(|&t| begin > t) {
                    times.push(begin);
                }
                target = before.next();
            }
            sum += len;
        }
        times
    }

    /// The record times of stream `s`'s packet `i`; `None` if they do not decode.
    fn times_of(&self, s: &StreamIndex, i: usize) -> Result<Option<Vec<u64>>, ReadError> {
        let p = s.packets[i];
        let mut bytes = vec![0u8; p.len as usize];
        s.file.read_exact_at(&mut bytes, p.offset).map_err(io_err(&s.path, "read"))?;
        let layouts = if s.class == 1 { &self.kernel_layouts } else { &self.layouts };
        // As the walk decodes it, so the cut and the walk agree on its records.
        let mut slots = Vec::new();
        Ok(decode_slots(&bytes, layouts, &mut slots).ok().map(|()| slots.iter().map(|s| s.ts).collect()))
    }

    /// The cut at `t`; `None` if a packet it reads does not decode.
    pub fn mark(&self, t: u64) -> Result<Option<Mark>, ReadError> {
        let mut streams = Vec::with_capacity(self.streams.len());
        for s in &self.streams {
            let n = s.packets.len();
            // Packets before `j` end before `t`; those after it begin at or after its end.
            let j = s.packets.partition_point(|p| p.order.end < t);
            let mut in_j = None;
            if j < n && s.packets[j].records {
                let Some(ts) = self.times_of(s, j)? else { return Ok(None) };
                in_j = Some(ts);
            }
            let at_j = in_j.as_ref().and_then(|ts| ts.iter().position(|&x| x >= t));
            let mark = match (at_j, &in_j) {
                (Some(m), Some(ts)) if m > 0 => StreamMark {
                    offset: s.packets[j].offset,
                    skip: m,
                    last: Some(s.packets[j].order),
                    discarded: s.packets[j].order.discarded,
                    last_ts: Some(ts[m - 1]),
                },
                _ => {
                    // The cut is at a packet boundary, after the last packet
                    // with records before it (`j` itself if all of its are).
                    let upto = if at_j.is_none() && in_j.as_ref().is_some_and(|ts| !ts.is_empty()) { j + 1 } else { j };
                    match (0..upto.min(n)).rev().find(|&i| s.packets[i].records) {
                        None => StreamMark::default(),
                        Some(l) => {
                            // Packet `j` read above is not read again.
                            let ts = match in_j.take().filter(|_| l == j) {
                                Some(ts) => ts,
                                None => match self.times_of(s, l)? {
                                    Some(ts) => ts,
                                    None => return Ok(None),
                                },
                            };
                            let next = s.packets.get(l + 1).map_or_else(|| s.file_len(), |p| p.offset);
                            StreamMark {
                                offset: next,
                                skip: 0,
                                last: Some(s.packets[l].order),
                                discarded: s.packets[l].order.discarded,
                                last_ts: ts.last().copied(),
                            }
                        }
                    }
                }
            };
            streams.push(mark);
        }
        Ok(Some(Mark { streams, time: t }))
    }
}

impl StreamIndex {
    fn file_len(&self) -> u64 {
        self.packets.last().map_or(0, |p| p.offset + p.len)
    }
}
