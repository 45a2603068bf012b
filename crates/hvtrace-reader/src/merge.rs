//! One pass over a trace's streams in timestamp order: the walk every
//! analysis and view shares (`hvtrace analyze`, `export`, `report`).
//!
//! [`Merge`] reads each stream a window of packets at a time
//! ([`PacketReader`]) and hands out [`Item`]s: each record, with its
//! stream's CPU, in timestamp order across streams (a vCPU moves between
//! pCPUs, so its events are in order only when the streams are merged), and
//! each loss just before the record it precedes. [`Rec::map`] turns a
//! record into hypervisor-model events.
//!
//! **Losses.** A stream's loss is reported as an [`Item::Lost`] before the
//! stream's next record: events its packet contexts count as discarded,
//! and gaps of unknown size where intact packets do not follow each other
//! (a damaged packet skipped). Losses after a stream's last record come at
//! the end of the walk, after every record.
//!
//! **Damage.** A packet that does not decode, or whose header does not
//! belong to its stream (trace UUID, stream class, CPU) or whose records
//! fall outside its time range, stops the fast walk of that stream only:
//! the stream is then checked with `hvtrace check`'s walker
//! ([`check_stream`]) and walked on over the packets it finds intact from
//! there on. Each stretch skipped becomes a line of [`Merge::warnings`],
//! named by stream and byte range. Records already handed out are never
//! taken back, so a damaged trace yields every intact packet and its
//! records once, in order.
//!
//! **The kernel's streams.** [`Merge::with_kernel`] also walks the
//! `kernel_<cpu>` streams (stream class 1, [`crate::Metadata::kernel`]):
//! their records have ids of their own ([`Rec::class`] 1), mapped with
//! bindings made from the kernel's classes; damage in them is skipped as
//! in any stream ([`crate::check_kernel_stream`]).

use hvtrace_core::ctf::{header, packet};
use hvtrace_core::decode::{packet_info, record_at, Record};
use hvtrace_model::{Bindings, Event, Fields, Payload};

use crate::check::{check_kernel_stream, check_stream, Expect, Order as PacketOrder, ProblemKind};
use crate::dir::{PacketError, ReadError, StreamFile, TraceDir};
use crate::model::{Layouts, RecordFields, VARIABLE};
use crate::stream::PacketReader;
use crate::tsdl::TraceSchema;
use crate::window::Mark;

/// The order in which [`Merge`] hands out records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// By timestamp across streams: what any per-vCPU analysis needs.
    Time,
    /// Each stream whole, one after the other: enough to count, and cheaper.
    Streams,
}

/// One step of a [`Merge`].
#[derive(Clone, Copy, Debug)]
pub enum Item<'a> {
    /// A record.
    Record(Rec<'a>),
    /// Events of stream `stream` lost between its record at `since` and the
    /// one at `at` (ticks).
    Lost {
        /// Index of the stream in [`TraceDir::streams`] (then, with
        /// [`Merge::with_kernel`], in [`TraceDir::kernel_streams`]).
        stream: usize,
        /// The stream's CPU.
        cpu: u32,
        /// The stream's last record before the loss (`None`: none yet).
        since: Option<u64>,
        /// The stream's first record after it (`None`: the loss follows the
        /// stream's last record, and the walk has no more records).
        at: Option<u64>,
        /// Events lost: 0 for a gap of unknown size (packets skipped).
        count: u64,
    },
}

/// A record, with where it comes from: a handle on the packet its
/// stream's walk has loaded. Its accessors read the decoded slot; the
/// handle is four pointers, so handing it out costs four stores (a struct
/// of the record's fields, copied from the merge to its caller, cost a
/// store-forwarding stall per record).
#[derive(Clone, Copy)]
pub struct Rec<'a> {
    cursor: &'a Cursor,
    slot: &'a Slot,
    layouts: &'a Layouts,
    stream: usize,
}

impl<'a> Rec<'a> {
    /// Index of the stream in [`TraceDir::streams`] (then, with
    /// [`Merge::with_kernel`], in [`TraceDir::kernel_streams`]).
    #[inline]
    pub fn stream(&self) -> usize {
        self.stream
    }

    /// Its stream class: 0 the VMM's rings, 1 the kernel's events.
    #[inline]
    pub fn class(&self) -> u32 {
        self.cursor.class
    }

    /// The stream's CPU.
    #[inline]
    pub fn cpu(&self) -> u32 {
        self.cursor.walk.cpu
    }

    /// Its timestamp (ticks).
    #[inline]
    pub fn timestamp(&self) -> u64 {
        self.slot.ts
    }

    /// Its event id (in its stream class's metadata).
    #[inline]
    pub fn id(&self) -> u32 {
        self.slot.id
    }

    /// The timestamp of the stream's previous record (`None` for its first).
    #[inline]
    pub fn previous(&self) -> Option<u64> {
        self.cursor.before_next()
    }

    /// Its payload bytes.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.tail()[..self.slot.len as usize]
    }

    /// The record as the decoder gives it.
    pub fn record(&self) -> Record<'a> {
        let s = self.slot;
        let offset = s.start as usize - header::len(s.compact);
        Record { offset, id: s.id, timestamp: s.ts, compact: s.compact, payload: self.payload() }
    }

    /// The payload and the rest of its packet, for [`Payload`]'s reads.
    #[inline]
    fn tail(&self) -> &'a [u8] {
        &self.cursor.reader.current()[self.slot.start as usize..]
    }

    /// Its payload fields, decoded as they are read.
    #[inline]
    pub fn fields(&self) -> RecordFields<'a, 'a> {
        RecordFields::new(self.layouts, self.slot.id, self.payload())
    }

    /// Its model events, if a mapping in `bindings` (bound to the classes
    /// of its stream class, [`Rec::class`]) takes it: calls
    /// `out(pcpu, event)` for each, with the stream's CPU unless the
    /// mapping says where it happened ([`Event::OnPcpu`], not passed on).
    /// `events` is the mapping's buffer, kept by the caller from record to
    /// record so that it is allocated once. Returns whether a mapping took it.
    ///
    /// `out` borrows each event where the mapping put it: a copy, read
    /// back just after the mapping's narrower stores of its fields, stalled
    /// on store forwarding.
    #[inline]
    pub fn map<'m>(
        &self,
        bindings: &'m Bindings,
        events: &mut Vec<Event<'m>>,
        mut out: impl FnMut(u32, &Event<'m>),
    ) -> bool {
        let id = self.slot.id;
        let payload = Payload::new(self.tail(), self.slot.len as usize, self);
        events.clear();
        let mapped = bindings.map_payload(id, &payload, events);
        let mut pcpu = self.cpu();
        for e in events.iter() {
            match *e {
                Event::OnPcpu { pcpu: p } => pcpu = p,
                _ => out(pcpu, e),
            }
        }
        mapped
    }
}

impl core::fmt::Debug for Rec<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rec")
            .field("stream", &self.stream)
            .field("cpu", &self.cpu())
            .field("record", &self.record())
            .field("previous", &self.previous())
            .finish()
    }
}

/// What a [`Payload`] reads when a field is not an integer at a fixed
/// offset (the rare case: the field is found by walking to it).
impl<'a> Fields<'a> for Rec<'a> {
    fn uint(&self, i: usize) -> Option<u64> {
        self.fields().uint(i)
    }
    fn bytes(&self, i: usize) -> Option<&'a [u8]> {
        self.fields().bytes(i)
    }
}

/// A record of the loaded packet: where its payload is in the packet (its
/// header just before: 24 bytes a record, written once, read by the merge).
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) ts: u64,
    id: u32,
    start: u32,
    len: u32,
    compact: bool,
}

/// Decodes the records of `packet` (whole: header, context, records) into
/// `slots`, or says why it cannot be read. Out of line so that its loop,
/// the reader's per-record cost, keeps its state in registers.
///
/// The common record, a compact header and a payload of fixed length, is
/// decoded here in a few instructions; any other goes through the core's
/// decoder ([`record_at`]), which also gives the error of a bad one. A
/// compact timestamp never goes back (it is rebuilt forward from the one
/// before), so only its upper bound is checked.
#[inline(never)]
pub(crate) fn decode_slots(packet: &[u8], layouts: &Layouts, slots: &mut Vec<Slot>) -> Result<(), String> {
    slots.clear();
    let i = packet_info(packet).map_err(|e| e.to_string())?;
    let content = &packet[..i.content_len];
    let lens = layouts.compact_lens();
    let (mut at, mut ts) = (packet::LEN, i.timestamp_begin);
    while at < content.len() {
        if let Some(h) = content.get(at..at + header::COMPACT_LEN) {
            let word = u32::from_le_bytes(h.try_into().unwrap());
            let id = word & 0x1f; // the compact form's 5 bits (31: extended)
            let len = lens[id as usize];
            let start = at + header::COMPACT_LEN;
            if len != VARIABLE && start + len as usize <= content.len() {
                ts = header::expand(ts, u64::from(word >> 5));
                if ts > i.timestamp_end {
                    return Err(outside(at));
                }
                slots.push(Slot { ts, id, start: start as u32, len, compact: true });
                at = start + len as usize;
                continue;
            }
        }
        let r = record_at(content, at, ts, layouts).map_err(|e| e.to_string())?;
        if r.timestamp < i.timestamp_begin || r.timestamp > i.timestamp_end {
            return Err(outside(at));
        }
        let start = (r.end() - r.payload.len()) as u32;
        slots.push(Slot { ts: r.timestamp, id: r.id, start, len: r.payload.len() as u32, compact: r.compact });
        (at, ts) = (r.end(), r.timestamp);
    }
    Ok(())
}

#[cold]
fn outside(offset: usize) -> String {
    format!("record at {offset} outside the packet's time range")
}

/// What a stream's walk has seen so far.
#[derive(Clone, Debug)]
pub struct StreamWalk {
    /// The stream file's name.
    pub name: String,
    /// Its CPU.
    pub cpu: u32,
    /// Packets read (intact ones only).
    pub packets: u64,
    /// Its cumulative `events_discarded` so far (the largest seen).
    pub events_discarded: u64,
}

/// Why a packet is not read: it does not decode, is not this stream's, or
/// cannot follow the packet read before it.
struct Bad {
    offset: u64,
    what: String,
    /// Out of order: `check` may still find the packet intact (it may find
    /// the one read before it the odd one out), but its records would go
    /// back in time behind records already handed out.
    order: bool,
}

/// One stream's walk.
struct Cursor {
    file: StreamFile,
    /// Stream class: 0 the VMM's, 1 the kernel's.
    class: u32,
    walk: StreamWalk,
    reader: PacketReader,
    slots: Vec<Slot>,
    next: usize,
    /// A loss before the next record: since when (the last record), how many.
    pending: Option<(Option<u64>, u64)>,
    /// The timestamp of the stream's last record before `slots[0]` (set
    /// as a packet is loaded: the merge's per-record path writes nothing
    /// for [`Rec::previous`], which reads `slots[next - 1]` when it can).
    before: Option<u64>,
    /// The order fields of the last packet read.
    last: Option<PacketOrder>,
    /// Whether the stream is being walked over `check`'s intact packets.
    checked: bool,
    /// Records of the first packet an earlier window handed out: that
    /// window loaded it (its loss, order and count are its), this walk
    /// resumes after them ([`Merge::between`]).
    resume: usize,
    /// Where the walk ends ([`Merge::between`]): before the packet at this
    /// offset, or, with records to take, after its first `n` records.
    stop: Option<(u64, usize)>,
    /// File offset the walk started at (progress counts from there).
    base: u64,
}

impl Cursor {
    /// Decodes the next packet into `slots`; `Ok(None)` at the end.
    fn packet(&mut self, layouts: &Layouts, uuid: &[u8; 16]) -> Result<Option<Result<(), Bad>>, ReadError> {
        // Every record loaded before has been handed out (or, resumed,
        // belongs to an earlier window): the last one comes before `slots`.
        self.before = self.before_next();
        let class = u64::from(self.class);
        let cpu = self.file.cpu;
        let stop = self.stop.filter(|s| self.reader.position() >= s.0);
        if stop.is_some_and(|s| s.1 == 0 || self.reader.position() > s.0) {
            return Ok(None);
        }
        let p = match self.reader.next_packet() {
            None => return Ok(None),
            Some(Err(source)) => return Err(ReadError::Io { path: self.file.path.clone(), what: "read", source }),
            Some(Ok(Err(PacketError { offset, error }))) => {
                return Ok(Some(Err(Bad { offset: offset as u64, what: error.to_string(), order: false })))
            }
            Some(Ok(Ok(p))) => p,
        };
        let offset = p.offset as u64;
        let bad = |what: String| Ok(Some(Err(Bad { offset, what, order: false })));
        let i = &p.info;
        // What `check` asks of a packet's header, cheaply, so that the fast
        // walk takes no packet the check would not.
        if i.uuid != *uuid {
            return bad("not this trace's UUID".into());
        }
        if u64::from(i.stream_id) != class || i.stream_instance_id != u64::from(cpu) || i.cpu_id != cpu {
            return bad(format!(
                "stream {} instance {} cpu {}, not this stream's",
                i.stream_id, i.stream_instance_id, i.cpu_id
            ));
        }
        if i.timestamp_begin > i.timestamp_end {
            return bad(format!("timestamp_begin {} after timestamp_end {}", i.timestamp_begin, i.timestamp_end));
        }
        // The order `check` asks of a stream's packets, against the last one read.
        let order =
            PacketOrder { seq: i.seq, begin: i.timestamp_begin, end: i.timestamp_end, discarded: i.events_discarded };
        let resume = std::mem::take(&mut self.resume);
        if let Some(prev) = self.last.filter(|_| resume == 0) {
            if let Some(field) = prev.breaks(&order) {
                let kind = ProblemKind::OutOfOrder {
                    field,
                    value: order.value(field, false),
                    prev: Some(prev.value(field, true)),
                    next: None,
                };
                return Ok(Some(Err(Bad { offset, what: kind.to_string(), order: true })));
            }
        }
        self.next = 0;
        if let Err(what) = decode_slots(p.bytes, layouts, &mut self.slots) {
            self.slots.clear();
            return bad(what);
        }
        if let Some((_, n)) = stop {
            // The next window's records start here.
            self.slots.truncate(n);
        }
        if resume > 0 {
            // An earlier window loaded this packet and handed out its first
            // `resume` records: go on from there as it would have.
            self.last = Some(order);
            self.walk.events_discarded = self.walk.events_discarded.max(i.events_discarded);
            self.next = resume.min(self.slots.len());
            self.base = self.reader.position();
            return Ok(Some(Ok(())));
        }
        self.walk.packets += 1;
        // A packet that does not follow the previous one (the ones between
        // were damaged and skipped) is a gap of unknown size.
        let skipped = self.last.is_some_and(|l| i.seq != l.seq.wrapping_add(1));
        self.last = Some(order);
        let lost = i.events_discarded.saturating_sub(self.walk.events_discarded);
        self.walk.events_discarded = self.walk.events_discarded.max(i.events_discarded);
        if lost > 0 || skipped {
            let (since, n) = self.pending.unwrap_or((self.before, 0));
            self.pending = Some((since, n + lost));
        }
        Ok(Some(Ok(())))
    }

    /// Loads the next packet that holds records; `false` at the end. On
    /// damage, goes on over the packets `check` finds intact after it.
    fn load(&mut self, m: &Shared, warnings: &mut Vec<String>) -> Result<bool, ReadError> {
        let layouts = if self.class == 1 { &m.kernel_layouts } else { &m.layouts };
        loop {
            match self.packet(layouts, &m.uuid)? {
                None => {
                    self.slots.clear();
                    self.next = 0;
                    return Ok(false);
                }
                Some(Ok(())) if self.next >= self.slots.len() => {}
                Some(Ok(())) => return Ok(true),
                Some(Err(bad)) if self.checked && bad.order => {
                    // Skipped; the next packet read shows the gap as a loss.
                    warnings.push(format!(
                        "{}: skipped the packet at byte {} ({}): it cannot follow the packet read before it",
                        self.file.name, bad.offset, bad.what
                    ));
                }
                Some(Err(bad)) if self.checked => {
                    // The checker vouched for this packet: a disagreement
                    // is an error, not hidden.
                    return Err(ReadError::Undecodable {
                        path: self.file.path.clone(),
                        offset: bad.offset,
                        what: format!("passed the check but does not decode: {}", bad.what),
                    });
                }
                Some(Err(bad)) => self.recheck(bad, m, warnings)?,
            }
        }
    }

    /// Switches to the packets `check` finds intact from `bad` on.
    fn recheck(&mut self, bad: Bad, m: &Shared, warnings: &mut Vec<String>) -> Result<(), ReadError> {
        let name = &self.file.name;
        warnings.push(format!("{name}: damage at byte {} ({}); reading the intact packets only", bad.offset, bad.what));
        let bytes = self.file.read()?;
        let expect = Expect { uuid: Some(m.uuid), cpu: Some(self.file.cpu) };
        let report = if self.class == 1 {
            check_kernel_stream(&bytes, &m.kernel_schema, &expect)
        } else {
            check_stream(&bytes, &m.schema, &expect)
        };
        for p in &report.problems {
            if p.offset + p.len > bad.offset {
                warnings.push(format!("{name}: skipped {p}"));
            } else {
                // Read before the damage was found, and not taken back.
                warnings.push(format!("{name}: read, though `hvtrace check` objects: {p}"));
            }
        }
        let rest = report.packets.iter().filter(|p| p.offset >= bad.offset).map(|p| (p.offset, p.len)).collect();
        self.reader = PacketReader::open(&self.file.path)?.only(rest);
        self.checked = true;
        Ok(())
    }

    #[inline]
    fn head(&self) -> Option<u64> {
        self.slots.get(self.next).map(|r| r.ts)
    }

    /// The timestamp of the record before `slots[next]`.
    #[inline]
    fn before_next(&self) -> Option<u64> {
        match self.next.checked_sub(1).and_then(|k| self.slots.get(k)) {
            Some(s) => Some(s.ts),
            None => self.before,
        }
    }
}

/// What every cursor reads with.
struct Shared {
    layouts: Layouts,
    /// The kernel's classes' (empty without them).
    kernel_layouts: Layouts,
    schema: TraceSchema,
    kernel_schema: TraceSchema,
    uuid: [u8; 16],
}

/// A walk over a trace's records, in [`Order::Time`] or [`Order::Streams`]
/// (see the module doc). Not an `Iterator`: each [`Item`] borrows the
/// packet it comes from, until the next call to [`Merge::next_item`].
pub struct Merge {
    shared: Shared,
    cursors: Vec<Cursor>,
    order: Order,
    /// The stream being walked, in [`Order::Streams`].
    current: usize,
    /// The cursor whose record was handed out last (advanced on the next call).
    advance: Option<usize>,
    /// `advance` goes on while its head's timestamp is below this, without
    /// a look at the others: in [`Order::Time`], below the least
    /// `(timestamp, index)` of the other cursors' heads when it was chosen
    /// (one compare a record, not a tuple's two; `u64::MAX` itself always
    /// takes the slow path, which orders it right).
    limit: u64,
    /// Trailing losses are being handed out.
    draining: bool,
    warnings: Vec<String>,
    total: u64,
}

impl Merge {
    /// Starts a walk over `trace`'s streams (reading each one's first
    /// packet). A trace cut short (`INCOMPLETE`) is the first warning.
    pub fn new(trace: &TraceDir, order: Order) -> Result<Merge, ReadError> {
        Merge::between(trace, order, false, None, None)
    }

    /// As [`Merge::new`], and the kernel's streams too (after the VMM's),
    /// if the trace's metadata describes them.
    pub fn with_kernel(trace: &TraceDir, order: Order) -> Result<Merge, ReadError> {
        Merge::between(trace, order, true, None, None)
    }

    /// As [`Merge::with_kernel`] (`kernel`: or [`Merge::new`]), over a time
    /// window of the trace: from the records at `from` on (the start when
    /// `None`) to those before `to` (the end). Marks come from one
    /// [`crate::Splitter`] of the same trace: walks between successive marks
    /// hand out, one after the other, exactly the items of the whole walk
    /// (in [`Order::Time`]; the same records and losses in [`Order::Streams`]),
    /// losses after the streams' last records in the last window only. Each
    /// window counts the packets it loads; a packet split between two
    /// windows counts in the first.
    pub fn between(
        trace: &TraceDir,
        order: Order,
        kernel: bool,
        from: Option<&Mark>,
        to: Option<&Mark>,
    ) -> Result<Merge, ReadError> {
        Merge::between_with(trace, order, kernel, from, to, Vec::new())
    }

    /// As [`Merge::between`], reading into `buffers` (an earlier walk's,
    /// [`Merge::into_buffers`]; more are made if too few).
    pub fn between_with(
        trace: &TraceDir,
        order: Order,
        kernel: bool,
        from: Option<&Mark>,
        to: Option<&Mark>,
        mut buffers: Vec<Vec<u8>>,
    ) -> Result<Merge, ReadError> {
        let schema = trace.schema().clone();
        let kernel_schema = trace.metadata.kernel.clone().filter(|_| kernel);
        let kernel_streams = if kernel_schema.is_some() { &trace.kernel_streams[..] } else { &[] };
        let kernel_schema = kernel_schema.unwrap_or_default();
        let shared = Shared {
            layouts: Layouts::new(&schema),
            kernel_layouts: Layouts::new(&kernel_schema),
            schema,
            kernel_schema,
            uuid: trace.metadata.uuid,
        };
        let mut warnings: Vec<String> = trace.incomplete_warning().into_iter().collect();
        let mut cursors = Vec::with_capacity(trace.streams.len() + kernel_streams.len());
        let streams = trace.streams.iter().map(|s| (0, s)).chain(kernel_streams.iter().map(|s| (1, s)));
        for (k, (class, s)) in streams.enumerate() {
            let start = from.and_then(|m| m.streams.get(k)).cloned().unwrap_or_default();
            let reader =
                PacketReader::open(&s.path)?.starting_at(start.offset).with_buffer(buffers.pop().unwrap_or_default());
            let mut c = Cursor {
                walk: StreamWalk { name: s.name.clone(), cpu: s.cpu, packets: 0, events_discarded: 0 },
                file: s.clone(),
                class,
                reader,
                slots: Vec::new(),
                next: 0,
                pending: None,
                before: start.last_ts,
                last: start.last,
                checked: false,
                resume: start.skip,
                stop: to.and_then(|m| m.streams.get(k)).map(|m| (m.offset, m.skip)),
                base: start.offset,
            };
            c.walk.events_discarded = start.discarded;
            c.load(&shared, &mut warnings)?;
            cursors.push(c);
        }
        let total = cursors.iter().map(|c| c.reader.len()).sum();
        Ok(Merge { shared, cursors, order, current: 0, advance: None, limit: 0, draining: false, warnings, total })
    }

    /// Its streams' read buffers, for [`Merge::between_with`].
    pub fn into_buffers(self) -> Vec<Vec<u8>> {
        self.cursors.into_iter().map(|c| c.reader.into_buffer()).collect()
    }

    /// The timestamp of the trace's first record (ticks), if it has one.
    pub fn first_timestamp(&self) -> Option<u64> {
        self.cursors.iter().filter_map(Cursor::head).min()
    }

    /// What each stream's walk has seen so far, in [`TraceDir::streams`] order.
    pub fn streams(&self) -> impl ExactSizeIterator<Item = &StreamWalk> {
        self.cursors.iter().map(|c| &c.walk)
    }

    /// What was skipped, and other things a reader of the results must
    /// know, one line each (`channel0_1: skipped bytes 8192..12288: …`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Bytes of stream files read so far (for progress), of [`Merge::total_bytes`].
    pub fn bytes_read(&self) -> u64 {
        self.cursors.iter().map(|c| c.reader.position().saturating_sub(c.base)).sum()
    }

    /// Bytes of all stream files.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The next record or loss; `None` at the end of the trace.
    #[inline(always)]
    pub fn next_item(&mut self) -> Option<Result<Item<'_>, ReadError>> {
        // The common case: the same stream's next record of the same packet,
        // still before every other stream's head. A loss is only ever
        // pending before a packet's first record, never here.
        if let Some(i) = self.advance {
            let c = &mut self.cursors[i];
            let n = c.next + 1;
            if c.slots.get(n).is_some_and(|s| s.ts < self.limit) {
                debug_assert!(c.pending.is_none());
                c.next = n;
                return Some(Ok(self.record(i)));
            }
        }
        self.next_slow()
    }

    fn next_slow(&mut self) -> Option<Result<Item<'_>, ReadError>> {
        if let Some(i) = self.advance.take() {
            let c = &mut self.cursors[i];
            c.next += 1;
            if c.next == c.slots.len() {
                if let Err(e) = c.load(&self.shared, &mut self.warnings) {
                    return Some(Err(e));
                }
            }
        }
        if !self.draining {
            let i = match self.order {
                Order::Time => {
                    // The least head, and the least of the others, by
                    // (timestamp, stream index): ties go to the lower index.
                    let mut best: Option<(u64, usize)> = None;
                    let mut second = (u64::MAX, usize::MAX);
                    for (i, c) in self.cursors.iter().enumerate() {
                        let Some(ts) = c.head() else { continue };
                        match best {
                            Some(b) if (ts, i) >= b => second = second.min((ts, i)),
                            Some(b) => {
                                second = b;
                                best = Some((ts, i));
                            }
                            None => best = Some((ts, i)),
                        }
                    }
                    if let Some((_, i)) = best {
                        // (ts, i) < second: ts below second's, or equal with a lower index.
                        self.limit = if i < second.1 { second.0.saturating_add(1) } else { second.0 };
                    }
                    best.map(|b| b.1)
                }
                Order::Streams => {
                    while self.current < self.cursors.len() && self.cursors[self.current].head().is_none() {
                        self.current += 1;
                    }
                    self.limit = u64::MAX;
                    (self.current < self.cursors.len()).then_some(self.current)
                }
            };
            match i {
                Some(i) => return Some(Ok(self.step(i))),
                None => self.draining = true,
            }
        }
        // Losses after each stream's last record.
        let (stream, c) = self.cursors.iter_mut().enumerate().find(|(_, c)| c.pending.is_some())?;
        let (since, count) = c.pending.take()?;
        Some(Ok(Item::Lost { stream, cpu: c.walk.cpu, since, at: None, count }))
    }

    /// Cursor `i`'s pending loss, else its next record.
    #[inline]
    fn step(&mut self, i: usize) -> Item<'_> {
        let c = &mut self.cursors[i];
        if let Some((since, count)) = c.pending.take() {
            let at = Some(c.slots[c.next].ts);
            return Item::Lost { stream: i, cpu: c.walk.cpu, since, at, count };
        }
        self.record(i)
    }

    /// Cursor `i`'s next record, `slots[next]`.
    #[inline]
    fn record(&mut self, i: usize) -> Item<'_> {
        self.advance = Some(i);
        let c = &self.cursors[i];
        let layouts = if c.class == 1 { &self.shared.kernel_layouts } else { &self.shared.layouts };
        Item::Record(Rec { cursor: c, slot: &c.slots[c.next], layouts, stream: i })
    }
}

#[cfg(test)]
mod tests {
    use hvtrace_core::decode::records;
    use hvtrace_core::event::{EventDesc, FieldDesc};
    use hvtrace_core::metadata::{render, ClockDesc, TraceDesc};
    use hvtrace_core::FieldKind;

    use super::*;

    /// `n` events: ids 0..=30 take the compact header, the rest the
    /// extended one; ids 3 and 32 have a string (a payload of no fixed length).
    fn layouts(n: usize) -> Layouts {
        let int = |bits| FieldKind::Int { bits, signed: false, hex: false };
        let events: Vec<EventDesc> = (0..n)
            .map(|id| {
                let kind = if id == 3 || id == 32 { FieldKind::Str } else { int([8, 16, 32, 64][id % 4]) };
                let fields = vec![FieldDesc { name: "a", kind }, FieldDesc { name: "b", kind: int(16) }];
                EventDesc { name: Box::leak(format!("e{id}").into_boxed_str()), fields: fields.leak() }
            })
            .collect();
        let clock =
            ClockDesc { name: "c", description: "t", freq: 1_000_000_000, offset_s: 0, offset: 0, precision: 0 };
        let desc = TraceDesc { uuid: [1; 16], hostname: "h", domain: "t", tracer_version: (0, 1, 0), clock };
        let mut md = String::new();
        render(&mut md, &desc, &events).unwrap();
        Layouts::new(&crate::tsdl::parse(&md).unwrap().schema)
    }

    /// A slot as the core decoder says it: timestamp, id, offset, payload
    /// length, compact.
    type Said = (u64, u32, usize, usize, bool);

    /// The slots the decoder's own walk gives, as `decode_slots` did before
    /// its fast path: every record through `records`, both time bounds.
    fn reference(packet: &[u8], layouts: &Layouts) -> Result<Vec<Said>, String> {
        let (i, recs) = records(packet, layouts).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for r in recs {
            let r = r.map_err(|e| e.to_string())?;
            if r.timestamp < i.timestamp_begin || r.timestamp > i.timestamp_end {
                return Err(outside(r.offset));
            }
            out.push((r.timestamp, r.id, r.offset, r.payload.len(), r.compact));
        }
        Ok(out)
    }

    #[test]
    fn the_fast_path_decodes_what_the_core_decoder_does_and_fails_where_it_does() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut compared, mut failed) = (0, 0);
        let (many, few) = (layouts(34), layouts(12));
        for round in 0..4000 {
            // Every id known, or compact ids that name no event.
            let layouts = if round % 2 == 0 { &many } else { &few };
            // A packet of mixed records: compact and extended headers,
            // fixed and string payloads, now and then an unknown id or a
            // time that jumps (the compact form wraps 2^27 forward).
            let begin = 1 << 40;
            let mut b = hvtrace_core::ctf::empty_packet(&[1; 16], 0, 0, begin, 0).to_vec();
            let mut ts = begin;
            for _ in 0..rnd(40) {
                let jump = if rnd(10) == 0 { 1 << 28 } else { 1000 };
                ts += rnd(jump);
                let id = if rnd(20) == 0 { 34 + rnd(3) as u32 } else { rnd(34) as u32 };
                if id <= header::MAX_COMPACT_ID && rnd(8) != 0 {
                    b.extend_from_slice(&header::compact(id, ts));
                } else {
                    let t = if rnd(30) == 0 { begin - 1 } else { ts };
                    b.extend_from_slice(&header::extended(id, t));
                }
                match id {
                    3 | 32 => b.extend_from_slice(b"str\0\x01\x02"),
                    _ => b.extend((0..[1, 2, 4, 8][id as usize % 4] + 2).map(|_| rnd(256) as u8)),
                }
            }
            let end = if rnd(10) == 0 { ts.saturating_sub(rnd(2000)) } else { ts };
            b[packet::TIMESTAMP_END..][..8].copy_from_slice(&end.to_le_bytes());
            // Sometimes the content is cut inside a record.
            let records = (b.len() - packet::LEN) as u64;
            let content = if round % 5 == 0 { packet::LEN + rnd(records + 1) as usize } else { b.len() };
            let len = b.len() as u64;
            b[packet::CONTENT_SIZE..][..8].copy_from_slice(&(content as u64 * 8).to_le_bytes());
            b[packet::PACKET_SIZE..][..8].copy_from_slice(&(len * 8).to_le_bytes());

            let mut slots = vec![Slot { ts: 1, id: 1, start: 1, len: 1, compact: false }];
            let got = decode_slots(&b, layouts, &mut slots).map(|()| {
                let cursor_free = |s: &Slot| {
                    let offset = s.start as usize - header::len(s.compact);
                    (s.ts, s.id, offset, s.len as usize, s.compact)
                };
                slots.iter().map(cursor_free).collect::<Vec<_>>()
            });
            let want = reference(&b, layouts);
            assert_eq!(got, want, "round {round}");
            compared += 1;
            failed += usize::from(want.is_err());
        }
        // Both outcomes were reached, often.
        assert!(failed > 300 && compared - failed > 300, "{failed} of {compared} failed");
    }
}
