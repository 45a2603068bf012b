//! The views' pass: [`hvtrace_reader::Merge`]'s records in timestamp order
//! (a vCPU moves between pCPUs, and its track must see its events in
//! order), handed to a [`Sink`] as model events, unmapped records and
//! losses, in ns.

use std::path::Path;

use hvtrace_core::decode::Value;
use hvtrace_model::{Bindings, Mapping};
use hvtrace_reader::{Item, Merge, Order, TraceDir};

use crate::{Error, FieldOut, Sink};

/// What a walk saw: its last timestamp (ns), and what it skipped.
pub(crate) struct Walked {
    pub end: u64,
    pub warnings: Vec<String>,
}

/// Walks the trace at `dir`.
pub(crate) fn walk(dir: &Path, mappings: &[&dyn Mapping], sink: &mut dyn Sink) -> Result<Walked, Error> {
    let trace = TraceDir::open(dir).map_err(Error::Read)?;
    let schema = trace.schema();
    let bindings = Bindings::bind(mappings, schema);
    let freq = u128::from(trace.metadata.clock.freq.max(1));
    let ns = |ticks: u64| (u128::from(ticks) * 1_000_000_000 / freq) as u64;
    let write = |e: std::io::Error| Error::Write(e);
    let mut merge = Merge::new(&trace, Order::Time).map_err(Error::Read)?;
    let mut end = 0;
    let mut events = Vec::new();
    while let Some(item) = merge.next_item() {
        let r = match item.map_err(Error::Read)? {
            // A loss after its stream's last record (`at: None`) still
            // counts, at the end: Merge hands those out after every
            // record, so `end` is the trace's last timestamp by then.
            Item::Lost { cpu, since, at, count, .. } => {
                sink.lost(since.map(ns), at.map_or(end, ns), cpu, count).map_err(write)?;
                continue;
            }
            Item::Record(r) => r,
        };
        let t = ns(r.timestamp());
        end = end.max(t);
        let mut failed = None;
        let mapped = r.map(&bindings, &mut events, |pcpu, e| {
            if failed.is_none() {
                failed = sink.model(t, pcpu, *e).err();
            }
        });
        if let Some(e) = failed {
            return Err(Error::Write(e));
        }
        if mapped {
            continue;
        }
        let Some(class) = schema.events.get(r.id() as usize) else { continue };
        let fields = r.fields();
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
        sink.unmapped(t, r.cpu(), &class.name, &fields_out).map_err(write)?;
    }
    Ok(Walked { end, warnings: merge.warnings().to_vec() })
}
