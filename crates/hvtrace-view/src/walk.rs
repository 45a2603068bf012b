//! One pass over a trace's streams, merged by timestamp (a vCPU moves
//! between pCPUs, and its track must see its events in order), handing
//! model events, unmapped records and losses to a [`Sink`].

use std::path::Path;

use hvtrace_core::decode::{Record, Value};
use hvtrace_model::{Bindings, Event, Mapping};
use hvtrace_reader::{Layouts, PacketReader, ReadError, RecordFields, TraceDir};

use crate::{Error, FieldOut, Sink};

/// A record of the current packet: where its payload is in the packet.
#[derive(Clone, Copy)]
struct Rec {
    ts: u64,
    id: u32,
    offset: u32,
    compact: bool,
    start: u32,
    len: u32,
}

struct Cursor {
    name: String,
    cpu: u32,
    reader: PacketReader,
    recs: Vec<Rec>,
    next: usize,
    discarded: u64,
    /// Events lost before the next record (packet-context counts).
    pending_loss: u64,
}

impl Cursor {
    /// Loads the next packet that holds records; `false` at the end.
    fn load(&mut self, layouts: &Layouts) -> Result<bool, Error> {
        loop {
            let p = match self.reader.next_packet() {
                None => return Ok(false),
                Some(Err(source)) => {
                    return Err(Error::Read(ReadError::Io { path: self.name.clone().into(), what: "read", source }))
                }
                Some(Ok(Err(e))) => {
                    return Err(Error::Damage {
                        stream: self.name.clone(),
                        offset: e.offset as u64,
                        what: e.error.to_string(),
                    })
                }
                Some(Ok(Ok(p))) => p,
            };
            self.pending_loss += p.info.events_discarded.saturating_sub(self.discarded);
            self.discarded = self.discarded.max(p.info.events_discarded);
            self.recs.clear();
            self.next = 0;
            let base = p.bytes.as_ptr() as usize;
            for r in p.records(layouts) {
                let r = r.map_err(|e| Error::Damage {
                    stream: self.name.clone(),
                    offset: p.offset as u64,
                    what: e.to_string(),
                })?;
                let start = (r.payload.as_ptr() as usize - base) as u32;
                self.recs.push(Rec {
                    ts: r.timestamp,
                    id: r.id,
                    offset: r.offset as u32,
                    compact: r.compact,
                    start,
                    len: r.payload.len() as u32,
                });
            }
            if !self.recs.is_empty() {
                return Ok(true);
            }
        }
    }

    fn head(&self) -> Option<u64> {
        self.recs.get(self.next).map(|r| r.ts)
    }
}

/// Walks the trace at `dir`; returns the last timestamp, in ns.
pub(crate) fn walk(dir: &Path, mappings: &[&dyn Mapping], sink: &mut dyn Sink) -> Result<u64, Error> {
    let trace = TraceDir::open(dir).map_err(Error::Read)?;
    let schema = trace.schema();
    let layouts = Layouts::new(schema);
    let bindings = Bindings::bind(mappings, schema);
    let freq = u128::from(trace.metadata.clock.freq.max(1));
    let ns = |ticks: u64| (u128::from(ticks) * 1_000_000_000 / freq) as u64;
    let write = |e: std::io::Error| Error::Write(e);
    let mut cursors = Vec::new();
    for s in &trace.streams {
        let reader = PacketReader::open(&s.path).map_err(Error::Read)?;
        let mut c = Cursor {
            name: s.name.clone(),
            cpu: s.cpu,
            reader,
            recs: Vec::new(),
            next: 0,
            discarded: 0,
            pending_loss: 0,
        };
        c.load(&layouts)?;
        cursors.push(c);
    }
    let mut end = 0;
    while let Some(i) = (0..cursors.len()).filter(|&i| cursors[i].head().is_some()).min_by_key(|&i| cursors[i].head()) {
        let c = &mut cursors[i];
        let rec = c.recs[c.next];
        let t = ns(rec.ts);
        end = end.max(t);
        if c.pending_loss > 0 {
            sink.lost(t, c.cpu, std::mem::take(&mut c.pending_loss)).map_err(write)?;
        }
        let bytes = c.reader.current();
        let record = Record {
            offset: rec.offset as usize,
            id: rec.id,
            timestamp: rec.ts,
            compact: rec.compact,
            payload: &bytes[rec.start as usize..(rec.start + rec.len) as usize],
        };
        let fields = RecordFields::new(&layouts, &record);
        if bindings.maps(rec.id) {
            let mut pcpu = c.cpu;
            let mut failed = None;
            bindings.map(rec.id, &fields, &mut |e| {
                if failed.is_some() {
                    return;
                }
                let r = match e {
                    Event::OnPcpu { pcpu: p } => {
                        pcpu = p;
                        Ok(())
                    }
                    e => sink.model(t, pcpu, e),
                };
                if let Err(e) = r {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                return Err(Error::Write(e));
            }
        } else if let Some(class) = schema.events.get(rec.id as usize) {
            let mut fields_out = Vec::with_capacity(class.fields.len());
            for (k, f) in class.fields.iter().enumerate() {
                let v = match fields.value(k) {
                    Some(Value::U(u)) => FieldOut::Uint(u),
                    Some(Value::I(v) | Value::Enum(v)) => FieldOut::Int(v),
                    Some(Value::F(f)) => FieldOut::Float(f),
                    Some(Value::Str(b) | Value::Bytes(b)) => FieldOut::Text(b),
                    None => continue,
                };
                fields_out.push((f.name.as_str(), v));
            }
            sink.unmapped(t, c.cpu, &class.name, &fields_out).map_err(write)?;
        }
        c.next += 1;
        if c.next == c.recs.len() {
            c.load(&layouts)?;
        }
    }
    // Losses after a stream's last record still count.
    for c in &mut cursors {
        if c.pending_loss > 0 {
            sink.lost(end, c.cpu, std::mem::take(&mut c.pending_loss)).map_err(write)?;
        }
    }
    Ok(end)
}
