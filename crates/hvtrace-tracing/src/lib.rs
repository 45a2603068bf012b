//! # hvtrace-tracing — `tracing` events into hvtrace's per-CPU rings
//!
//! [`HvtraceLayer`] is a [`tracing_subscriber::Layer`] that records every
//! `tracing` event (and, with [`HvtraceLayer::with_spans`], span creation,
//! enter, exit, later values and close, with span ids) into an
//! [`hvtrace_host::Host`]'s lock-free per-CPU rings, as CTF 1.8 that
//! babeltrace2 and `hvtrace analyze` read.
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//! # let host: std::sync::Arc<hvtrace_host::Host> = unimplemented!();
//! let layer = hvtrace_tracing::HvtraceLayer::new(host.clone());
//! tracing_subscriber::registry().with(layer).init();
//! tracing::info!(vcpu = 0u32, reason = "hlt", "exit");
//! ```
//!
//! ## One event class per callsite, typed at its first event
//!
//! Each callsite (one `info!(...)` in the source) is one event class:
//! name `target:name` (a span's: `span target:name`), a `level` field
//! (CTF enumeration `TRACE` … `ERROR`), then the callsite's fields in
//! declaration order. At `register_callsite`, `tracing` gives a callsite's
//! field *names* but not their types; a value's type shows only in the
//! `Visit` method it arrives through. So the class is registered
//! ([`hvtrace_host::Host::register_event`]) at the callsite's **first
//! event**, with the types of that event's values, and cached in the
//! callsite's slot of a lock-free table (module `classes`): every later event
//! finds its id with one hash and one or two Acquire loads. Within a
//! `tracing` macro a field's type is fixed at compile time, so every event
//! of a callsite has the types of its first. The alternative, one tagged
//! CTF variant per field, would have made every field of every event carry
//! a tag byte and every reader walk a variant, for a case that does not
//! arise; the exceptions are handled without it:
//! * a field absent from an event (`None`, `field::Empty`) is written as
//!   zero / false / the empty string; absent from the *first* event, it is
//!   registered as a string, which holds any later value as its text;
//! * a value that its class's type cannot hold without loss (only a
//!   `&dyn Value` field can change type) loses the event, counted in
//!   [`Counters::mismatched`].
//!
//! Types: `i64`/`u64` (all smaller integers widen, as in `tracing`'s own
//! `Visit`), `f64`, `bool` (a CTF enumeration), strings, byte arrays;
//! `Debug` / `Display` values, errors and 128-bit integers as strings.
//! Strings and byte arrays keep at most `MAX_STRING` (1023) bytes: a longer
//! value is cut (a `Debug` value's formatting is stopped there, so a 1 MiB
//! value costs 1 KiB of work) and counted ([`Counters::truncated`]).
//!
//! ## The record path: no lock, no allocation
//!
//! An event: the callsite's class from the table; the thread's writer and
//! payload buffer ([`thread_local::ThreadLocal`], allocated at the
//! thread's first event); the values encoded by hvtrace-core's field
//! encoders from the `Visit` calls into that buffer; one
//! [`hvtrace_core::Sink::record`] of the buffer into the ring. The copy
//! through a buffer is a choice: a ring reservation needs the payload's
//! length first, and a `Debug` value's length is known only once it is
//! formatted; formatting twice (once to measure) would double the most
//! expensive part and can give two different lengths for a value whose
//! `Debug` output changes. The copy is of the payload (tens of bytes, in
//! 16-byte pieces that compile to inline moves).
//!
//! ## Losses
//! Every event the layer does not record is counted in [`Counters`] (the
//! ring's own losses — full, busy, too big — are also in the trace's
//! `events_discarded`). An event recorded while no channel is started is
//! not a loss, as for every hvtrace writer. A callsite may appear at any
//! time, with a consumer attached or not: the host publishes its class in
//! the channel's metadata log before the layer records with it. The host
//! refuses a class only past its bounds (`MAX_EVENT_CLASSES`, 4096 classes;
//! `MAX_REGISTERED_TSDL`, 2 MiB of TSDL: a callsite of three fields is about
//! 450 bytes) or for a name it cannot take; the refusal is final, and the
//! callsite's events are counted in [`Counters::unregistered`], found
//! without a lock.

#![forbid(unsafe_code)]

mod classes;
mod encode;

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use hvtrace_core::field::{EnumLabel, Field, FieldKind};
use hvtrace_core::{RecordError, Sink};
use hvtrace_host::{Host, RegisterError, Writer};
use thread_local::ThreadLocal;
use tracing_core::field::Visit;
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use classes::{Callsites, Class};
use encode::{Buf, Payload, Ty, Typing};

/// Labels of the `level` field, least to most severe.
pub const LEVEL_LABELS: &[EnumLabel] = &[
    EnumLabel { label: "TRACE", value: 0 },
    EnumLabel { label: "DEBUG", value: 1 },
    EnumLabel { label: "INFO", value: 2 },
    EnumLabel { label: "WARN", value: 3 },
    EnumLabel { label: "ERROR", value: 4 },
];

const LEVEL: FieldKind = FieldKind::Enum { bits: 8, signed: false, labels: LEVEL_LABELS };
const U64: FieldKind = <u64 as Field>::KIND;

/// Bytes of a thread's payload buffer: room for a callsite's most fields
/// (32, `tracing`'s bound) at their bound (1023 bytes and a NUL, or a
/// 4-byte length and 1023 bytes), and the fixed fields before them. A
/// payload that would not fit is lost and counted ([`Counters::overflow`]).
const PAYLOAD_BUF: usize = 64 + 32 * (4 + encode::MAX_FIELD_BYTES);

/// What a record is of; decides its class's name and its fixed fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A `tracing` event: `level`, then its fields.
    Event,
    /// A span created: `span_id`, `parent_id` (0: none), `level`, then its fields.
    SpanNew,
    /// Values recorded into a span after it was created: `span_id`, then
    /// the span callsite's fields (those not recorded now as absent).
    SpanRecord,
    /// `span_enter`, `span_exit`, `span_close`: `span_id`.
    SpanEnter,
    SpanExit,
    SpanClose,
}

impl Kind {
    /// The key of the class in the callsite table: the callsite's metadata
    /// address (aligned, so its low bits are free for a tag), or a small
    /// constant for the three span classes no callsite owns.
    fn key(self, meta: Option<&'static Metadata<'static>>) -> usize {
        let addr = meta.map_or(0, |m| m as *const Metadata<'static> as usize);
        match self {
            Kind::Event | Kind::SpanNew => addr,
            Kind::SpanRecord => addr | 1,
            Kind::SpanEnter => 8,
            Kind::SpanExit => 16,
            Kind::SpanClose => 24,
        }
    }

    fn fixed_fields(self) -> &'static [(&'static str, FieldKind)] {
        match self {
            Kind::Event => &[("level", LEVEL)],
            Kind::SpanNew => &[("span_id", U64), ("parent_id", U64), ("level", LEVEL)],
            _ => &[("span_id", U64)],
        }
    }

    fn class_name(self, meta: Option<&Metadata<'_>>) -> String {
        let (target, name) = meta.map_or(("", ""), |m| (m.target(), m.name()));
        match self {
            Kind::Event => format!("{target}:{name}"),
            Kind::SpanNew => format!("span {target}:{name}"),
            Kind::SpanRecord => format!("span_record {target}:{name}"),
            Kind::SpanEnter => "span_enter".into(),
            Kind::SpanExit => "span_exit".into(),
            Kind::SpanClose => "span_close".into(),
        }
    }
}

fn level_byte(l: &Level) -> u8 {
    match *l {
        Level::TRACE => 0,
        Level::DEBUG => 1,
        Level::INFO => 2,
        Level::WARN => 3,
        Level::ERROR => 4,
    }
}

/// A TSDL field name for a `tracing` field name (which may hold dots, as
/// in `vcpu.id`): characters outside `[A-Za-z0-9_]` become `_`, a leading
/// digit gets a `_` before it, and a name already taken (by a fixed field,
/// or by another field that maps to the same text) gets `_2`, `_3`, ….
fn field_name(raw: &str, taken: &[String]) -> String {
    let mut s: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        s.insert(0, '_');
    }
    let mut name = s.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{s}_{n}");
        n += 1;
    }
    name
}

/// Events the layer did not record, by cause, and values it cut. Shared by
/// every thread: each counter moves only on its (rare) path, never for an
/// event recorded whole.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events lost because their class is not registered: the host refused
    /// it (its id space or TSDL budget is exhausted, or a name it cannot
    /// take), or the callsite table is full.
    pub unregistered: AtomicU64,
    /// Events lost because a value's type differs from its class's field
    /// and cannot be converted without loss.
    pub mismatched: AtomicU64,
    /// Events lost because they reached the layer while the same thread was
    /// encoding another one. (A `Debug` impl that logs through the `tracing`
    /// macros never gets here: `tracing` does not re-enter a dispatcher and
    /// drops such an event before any layer sees it.)
    pub reentrant: AtomicU64,
    /// Events lost because their payload passed the thread's buffer.
    pub overflow: AtomicU64,
    /// Events the ring refused (full, busy, too big), also counted by the
    /// ring and in the trace's `events_discarded`.
    pub ring_lost: AtomicU64,
    /// Values (strings, `Debug` text, byte arrays) cut to their bound; the
    /// event itself is recorded.
    pub truncated: AtomicU64,
    /// Why the host last refused a class, for diagnostics.
    last_refusal: Mutex<Option<RegisterError>>,
}

impl Counters {
    /// Events lost by the layer, all causes together.
    pub fn lost(&self) -> u64 {
        self.unregistered.load(Relaxed)
            + self.mismatched.load(Relaxed)
            + self.reentrant.load(Relaxed)
            + self.overflow.load(Relaxed)
            + self.ring_lost.load(Relaxed)
    }

    /// Why the host last refused to register a class, if it ever did.
    pub fn last_refusal(&self) -> Option<RegisterError> {
        self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A thread's writer (it caches the live channel) and payload buffer.
struct Local {
    writer: Writer,
    buf: Box<[u8]>,
}

/// Records `tracing` events (and optionally spans) into a [`Host`]'s rings.
/// See the crate documentation.
pub struct HvtraceLayer {
    host: Arc<Host>,
    spans: bool,
    callsites: Callsites,
    threads: ThreadLocal<RefCell<Local>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for HvtraceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HvtraceLayer").field("spans", &self.spans).field("counters", &self.counters).finish()
    }
}

impl HvtraceLayer {
    /// A layer recording events (not spans) into `host`'s channel.
    pub fn new(host: Arc<Host>) -> HvtraceLayer {
        HvtraceLayer {
            host,
            spans: false,
            callsites: Callsites::new(),
            threads: ThreadLocal::new(),
            counters: Arc::default(),
        }
    }

    /// Also records spans: `span target:name` when one is created (its id,
    /// its parent's, its fields), `span_record target:name` for values
    /// recorded later, `span_enter`, `span_exit` and `span_close`.
    pub fn with_spans(mut self, spans: bool) -> HvtraceLayer {
        self.spans = spans;
        self
    }

    /// The layer's loss counters (keep a clone before the layer moves into
    /// a subscriber).
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The class of `kind` for `meta`: from the table, or registered now.
    /// `None` (the event is lost, counted) while the host refuses it.
    #[inline]
    fn class(
        &self,
        kind: Kind,
        meta: Option<&'static Metadata<'static>>,
        values: &dyn Fn(&mut dyn Visit),
    ) -> Option<(u32, &Class)> {
        let found = self.callsites.find(kind.key(meta)).and_then(|s| s.class.get());
        let class = match found {
            Some(c) => c,
            None => self.register(kind, meta, values)?,
        };
        match class.id {
            Some(id) => Some((id, class)),
            None => {
                self.counters.unregistered.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// The slow path of [`Self::class`]: a callsite's first event.
    #[cold]
    #[inline(never)]
    fn register(
        &self,
        kind: Kind,
        meta: Option<&'static Metadata<'static>>,
        values: &dyn Fn(&mut dyn Visit),
    ) -> Option<&Class> {
        let held = self.callsites.lock();
        let lost = || {
            self.counters.unregistered.fetch_add(1, Relaxed);
            None
        };
        let Some(slot) = self.callsites.insert(&held, kind.key(meta)) else { return lost() };
        if let Some(c) = slot.class.get() {
            return Some(c);
        }
        let n = match kind {
            Kind::Event | Kind::SpanNew | Kind::SpanRecord => meta.map_or(0, |m| m.fields().len()),
            _ => 0,
        };
        let mut typing = Typing(vec![None; n]);
        values(&mut typing);
        let types: Box<[Ty]> = typing.0.iter().map(|t| t.unwrap_or(Ty::Str)).collect();
        let mut names: Vec<String> = kind.fixed_fields().iter().map(|(n, _)| n.to_string()).collect();
        let fixed = names.len();
        for f in meta.iter().flat_map(|m| m.fields().iter()).take(n) {
            let name = field_name(f.name(), &names);
            names.push(name);
        }
        let kinds = kind.fixed_fields().iter().map(|f| f.1).chain(types.iter().map(|t| t.kind()));
        let fields: Vec<(&str, FieldKind)> = names.iter().map(String::as_str).zip(kinds).collect();
        debug_assert_eq!(fields.len(), fixed + n);
        match self.host.register_event(&kind.class_name(meta), &fields) {
            Ok(id) => Some(slot.class.get_or_init(|| Class { id: Some(id), types })),
            Err(e) => {
                *self.counters.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Some(slot.class.get_or_init(|| Class { id: None, types }))
            }
        }
    }

    /// Encodes `fixed` then the values `values` visits, in the order of
    /// `class`'s fields, and records them as event `id`.
    #[inline]
    fn emit(&self, id: u32, class: &Class, fixed: &[u8], values: impl Fn(&mut dyn Visit)) {
        let local = self.threads.get_or(|| {
            RefCell::new(Local { writer: self.host.writer(), buf: vec![0; PAYLOAD_BUF].into_boxed_slice() })
        });
        let Ok(mut local) = local.try_borrow_mut() else {
            self.counters.reentrant.fetch_add(1, Relaxed);
            return;
        };
        let Local { writer, buf } = &mut *local;
        let mut out = Buf { bytes: buf, len: 0, overflow: false };
        out.put(fixed);
        let mut p = Payload::new(&mut out, &class.types);
        values(&mut p);
        p.finish();
        let (mismatch, truncated) = (p.mismatch, p.truncated);
        if truncated != 0 {
            self.counters.truncated.fetch_add(truncated as u64, Relaxed);
        }
        if mismatch {
            self.counters.mismatched.fetch_add(1, Relaxed);
            return;
        }
        if out.overflow {
            self.counters.overflow.fetch_add(1, Relaxed);
            return;
        }
        let payload = &out.bytes[..out.len];
        // In pieces of 16 bytes: the encoder copies up to 16 with inline
        // moves, where a longer slice would cost a `memcpy` call.
        match writer.record(id, payload.len(), |e| payload.chunks(16).for_each(|c| e.put(c))) {
            Ok(()) | Err(RecordError::Closed) => {}
            Err(_) => {
                self.counters.ring_lost.fetch_add(1, Relaxed);
            }
        }
    }

    /// Records one of the three span classes that carry only the span's id.
    fn span_only(&self, kind: Kind, id: &Id) {
        let none = |_: &mut dyn Visit| {};
        if let Some((class_id, class)) = self.class(kind, None, &none) {
            self.emit(class_id, class, &id.into_u64().to_le_bytes(), none);
        }
    }
}

impl<S: Subscriber + for<'l> LookupSpan<'l>> Layer<S> for HvtraceLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let values = |v: &mut dyn Visit| event.record(v);
        if let Some((id, class)) = self.class(Kind::Event, Some(meta), &values) {
            self.emit(id, class, &[level_byte(meta.level())], values);
        }
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !self.spans {
            return;
        }
        let meta = attrs.metadata();
        let values = |v: &mut dyn Visit| attrs.record(v);
        let Some((class_id, class)) = self.class(Kind::SpanNew, Some(meta), &values) else { return };
        let parent = match attrs.parent() {
            Some(p) => Some(p.clone()),
            None if attrs.is_contextual() => ctx.current_span().id().cloned(),
            None => None,
        };
        let mut fixed = [0u8; 17];
        fixed[..8].copy_from_slice(&id.into_u64().to_le_bytes());
        fixed[8..16].copy_from_slice(&parent.map_or(0, |p| p.into_u64()).to_le_bytes());
        fixed[16] = level_byte(meta.level());
        self.emit(class_id, class, &fixed, values);
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if !self.spans {
            return;
        }
        let Some(meta) = ctx.metadata(span) else { return };
        let visit = |v: &mut dyn Visit| values.record(v);
        if let Some((class_id, class)) = self.class(Kind::SpanRecord, Some(meta), &visit) {
            self.emit(class_id, class, &span.into_u64().to_le_bytes(), visit);
        }
    }

    fn on_enter(&self, id: &Id, _ctx: Context<'_, S>) {
        if self.spans {
            self.span_only(Kind::SpanEnter, id);
        }
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        if self.spans {
            self.span_only(Kind::SpanExit, id);
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if self.spans {
            self.span_only(Kind::SpanClose, &id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_become_tsdl_identifiers_without_collisions() {
        let mut taken = vec!["level".to_string()];
        for (raw, want) in [
            ("vcpu.id", "vcpu_id"),
            ("vcpu_id", "vcpu_id_2"),
            ("level", "level_2"),
            ("9lives", "_9lives"),
            ("a-b", "a_b"),
        ] {
            let n = field_name(raw, &taken);
            assert_eq!(n, want);
            taken.push(n);
        }
    }
}
