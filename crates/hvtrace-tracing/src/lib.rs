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
//!   `&dyn Value` field can change type) is written as absent too, and
//!   counted in [`Counters::mismatched`]; the event is recorded.
//!
//! Two callsites whose target and name are the same (`tracing`'s default
//! name is `event FILE:LINE`: two events on one line share it) but whose
//! fields differ get two names, `NAME` and `NAME#2`: a name has one layout
//! in a trace. Callsites the user named alike with the same fields (one
//! `vm_exit` event written at four places) share their name, so a reader
//! that groups by name sees one kind of event.
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
//! An event: the callsite's class from the table; the thread's writer (a
//! plain `thread_local!`, made at the thread's first event); then one of
//! two ways, decided per class:
//! * every field of fixed size (integers, floats, bools): the payload's
//!   length is the class's, so the record is reserved first and the
//!   values are encoded by hvtrace-core's field encoders from the `Visit`
//!   calls straight into the reserved slot (and not visited at all while
//!   no channel is started);
//! * a string, byte array or formatted value: its length is known only
//!   once it is visited (a `Debug` value's once it is formatted), and a
//!   ring reservation needs the length first. The values are encoded into
//!   the thread's payload buffer (allocated at the first such event), then
//!   copied into the slot (tens of bytes, in 32-byte pieces that compile
//!   to inline moves). A first `Visit` pass to measure, then a second into
//!   the slot, was measured slower: visiting costs more than the copy.
//!
//! ## Losses
//! Every event the layer does not record is counted in [`Counters`], and
//! in the ring the thread would have recorded into, so the trace's
//! `events_discarded` (which babeltrace2 reports) holds it: the ring's own
//! losses (full, busy, too big) as the ring counts them, the layer's
//! through [`hvtrace_host::Writer::count_lost`]. An event recorded while no
//! channel is started is not a loss, as for every hvtrace writer. A
//! callsite may appear at any time, with a consumer attached or not: the
//! host publishes its class in the channel's metadata log before the layer
//! records with it. The host refuses a class only past its bounds
//! (`MAX_EVENT_CLASSES`, 4096 classes; `MAX_REGISTERED_TSDL`, 2 MiB of
//! TSDL: a callsite of three fields is about 450 bytes) or for a name it
//! cannot take; the refusal is final, and the callsite's events are
//! counted in [`Counters::unregistered`], found without a lock.

#![forbid(unsafe_code)]

mod classes;
mod encode;

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use hvtrace_core::field::{EnumLabel, Field, FieldKind};
use hvtrace_core::{RecordError, Sink};
use hvtrace_host::{Host, RegisterError, Writer};
use tracing_core::field::Visit;
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use classes::{Callsites, Class};
use encode::{Buf, Out, Payload, Shape, Typing};

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

/// Events the layer did not record, by cause, and values it changed.
/// Shared by every thread: each counter moves only on its (rare) path,
/// never for an event recorded whole.
///
/// Every event counted in [`Counters::lost`] is also counted by the ring
/// the thread would have recorded into (the layer's own losses as
/// `discarded_too_big`, see [`hvtrace_host::Writer::count_lost`]), so the
/// trace's `events_discarded`, which babeltrace2 reports, holds them —
/// except while no channel is started, when nothing is a loss.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events lost because their class is not registered: the host refused
    /// it (its id space or TSDL budget is exhausted, or a name it cannot
    /// take), or the callsite table is full.
    pub unregistered: AtomicU64,
    /// Events lost because they reached the layer while the same thread was
    /// encoding another one, or after the thread's state was torn down (an
    /// event from a thread-local destructor at thread exit). (A `Debug`
    /// impl that logs through the `tracing` macros never gets here:
    /// `tracing` does not re-enter a dispatcher and drops such an event
    /// before any layer sees it.)
    pub reentrant: AtomicU64,
    /// Events lost because their payload passed the thread's buffer.
    pub overflow: AtomicU64,
    /// Events the ring refused (full, busy, too big), counted by the ring
    /// itself.
    pub ring_lost: AtomicU64,
    /// Values written as absent (zero, false, empty) because their field's
    /// type cannot hold them without loss (only a `&dyn Value` field can
    /// change type), or not written because their field came twice; the
    /// event itself is recorded.
    pub mismatched: AtomicU64,
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
            + self.reentrant.load(Relaxed)
            + self.overflow.load(Relaxed)
            + self.ring_lost.load(Relaxed)
    }

    /// Why the host last refused to register a class, if it ever did.
    pub fn last_refusal(&self) -> Option<RegisterError> {
        self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Adds a payload's value counts.
    #[inline]
    fn values<O>(&self, p: &Payload<'_, O>) {
        // One test on the common path (nothing to count).
        if p.mismatched | p.truncated != 0 {
            self.count_values(p.mismatched, p.truncated);
        }
    }

    #[cold]
    fn count_values(&self, mismatched: u32, truncated: u32) {
        self.mismatched.fetch_add(mismatched as u64, Relaxed);
        self.truncated.fetch_add(truncated as u64, Relaxed);
    }
}

/// A thread's state for one layer: the writer (it caches the live channel)
/// and, once a payload needed it, the payload buffer.
struct Local {
    /// The layer's [`HvtraceLayer::token`]: says whose this is, and whether
    /// that layer still lives.
    layer: Weak<()>,
    writer: Writer,
    buf: Vec<u8>,
}

impl Local {
    /// Whether this is the state of the layer whose token is `token`.
    #[inline]
    fn of(&self, token: &Arc<()>) -> bool {
        std::ptr::eq(self.layer.as_ptr(), Arc::as_ptr(token))
    }
}

thread_local! {
    /// This thread's state for every layer that recorded on it, the one
    /// used last first. A plain `thread_local!` (a `RefCell`, no lock) is
    /// the cheapest way to a thread's writer; the layer's token tells two
    /// layers apart.
    static LOCALS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// Records `tracing` events (and optionally spans) into a [`Host`]'s rings.
/// See the crate documentation.
pub struct HvtraceLayer {
    host: Arc<Host>,
    spans: bool,
    callsites: Callsites,
    /// Identifies the layer in its threads' [`LOCALS`]; their `Weak`s see
    /// when it is gone.
    token: Arc<()>,
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
        HvtraceLayer { host, spans: false, callsites: Callsites::new(), token: Arc::new(()), counters: Arc::default() }
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

    /// Records a `kind` record of `meta`'s callsite: the `fixed` fields'
    /// bytes, then the values `values` visits; or counts it lost.
    #[inline]
    fn record(
        &self,
        kind: Kind,
        meta: Option<&'static Metadata<'static>>,
        fixed: &[u8],
        values: impl Fn(&mut dyn Visit),
    ) {
        let class = match self.callsites.find(kind.key(meta)).and_then(|s| s.class.get()) {
            Some(c) => Some(c),
            None => self.register(kind, meta, &values),
        };
        let done = LOCALS.try_with(|locals| {
            let Ok(mut locals) = locals.try_borrow_mut() else { return false };
            let local = self.local(&mut locals);
            match class.and_then(|c| Some((c.id?, c))) {
                Some((id, class)) => self.emit(local, id, class, fixed, values),
                None => self.lose(&local.writer, &self.counters.unregistered),
            }
            true
        });
        if done != Ok(true) {
            // The thread's state is in use or gone: a writer for the count.
            self.lose(&self.host.writer(), &self.counters.reentrant);
        }
    }

    /// This layer's state in `locals`, moved to the front (made if new).
    #[inline]
    fn local<'l>(&self, locals: &'l mut Vec<Local>) -> &'l mut Local {
        match locals.first() {
            Some(l) if l.of(&self.token) => {}
            _ => self.find_local(locals),
        }
        &mut locals[0]
    }

    /// The slow path of [`Self::local`]: another layer recorded on this
    /// thread last, or this is the layer's first record here. State of
    /// layers that are gone is dropped on the way.
    #[cold]
    #[inline(never)]
    fn find_local(&self, locals: &mut Vec<Local>) {
        locals.retain(|l| l.layer.strong_count() > 0);
        let at = match locals.iter().position(|l| l.of(&self.token)) {
            Some(at) => at,
            None => {
                locals.push(Local { layer: Arc::downgrade(&self.token), writer: self.host.writer(), buf: Vec::new() });
                locals.len() - 1
            }
        };
        locals.swap(0, at);
    }

    /// Counts an event lost under `cause`, and in the ring the thread would
    /// have recorded into (so in the trace's `events_discarded`); nothing
    /// while no channel is started.
    #[cold]
    fn lose(&self, writer: &Writer, cause: &AtomicU64) {
        if writer.count_lost() != Err(RecordError::Closed) {
            cause.fetch_add(1, Relaxed);
        }
    }

    /// The slow path of [`Self::record`]: a callsite's first event, which
    /// decides its fields' types. `None` if the callsite table is full.
    #[cold]
    #[inline(never)]
    fn register(
        &self,
        kind: Kind,
        meta: Option<&'static Metadata<'static>>,
        values: &dyn Fn(&mut dyn Visit),
    ) -> Option<&Class> {
        let mut taken = self.callsites.lock();
        let slot = self.callsites.insert(&taken, kind.key(meta))?;
        if let Some(c) = slot.class.get() {
            return Some(c);
        }
        let n = match kind {
            Kind::Event | Kind::SpanNew | Kind::SpanRecord => meta.map_or(0, |m| m.fields().len()),
            _ => 0,
        };
        let mut typing = Typing::new(n);
        values(&mut typing);
        let (types, shape) = typing.finish();
        let mut names: Vec<String> = kind.fixed_fields().iter().map(|(n, _)| n.to_string()).collect();
        for f in meta.iter().flat_map(|m| m.fields().iter()).take(n) {
            let name = field_name(f.name(), &names);
            names.push(name);
        }
        let kinds = kind.fixed_fields().iter().map(|f| f.1).chain(types.iter().map(|t| t.kind()));
        let fields: Vec<(&str, FieldKind)> = names.iter().map(String::as_str).zip(kinds).collect();
        let name = taken.unique(kind.class_name(meta), &fields);
        let id = match self.host.register_event(&name, &fields) {
            Ok(id) => Some(id),
            Err(e) => {
                *self.counters.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                None
            }
        };
        Some(slot.class.get_or_init(|| Class { id, types, shape }))
    }

    /// Encodes `fixed` then the values `values` visits, in the order of
    /// `class`'s fields, and records them as event `id`: straight into the
    /// reserved slot when every field has a fixed size, else through the
    /// thread's buffer (see [`Shape`]).
    #[inline]
    fn emit(&self, local: &mut Local, id: u32, class: &Class, fixed: &[u8], values: impl Fn(&mut dyn Visit)) {
        let r = match class.shape {
            Shape::Fixed(n) => local.writer.record(id, fixed.len() + n, |e| {
                e.put(fixed);
                let mut p = Payload::new(e, &class.types);
                values(&mut p);
                p.finish();
                self.counters.values(&p);
            }),
            Shape::Buffered => {
                if local.buf.is_empty() {
                    local.buf = vec![0; PAYLOAD_BUF];
                }
                let mut out = Buf { bytes: &mut local.buf, len: 0, overflow: false };
                out.put(fixed);
                let mut p = Payload::new(out, &class.types);
                values(&mut p);
                p.finish();
                self.counters.values(&p);
                let out = p.out;
                if out.overflow {
                    return self.lose(&local.writer, &self.counters.overflow);
                }
                let payload = &out.bytes[..out.len];
                // In pieces of 32 bytes: the encoder copies up to 32 with
                // inline moves, where a longer slice would cost a `memcpy` call.
                local.writer.record(id, payload.len(), |e| payload.chunks(32).for_each(|c| e.put(c)))
            }
        };
        match r {
            Ok(()) | Err(RecordError::Closed) => {}
            Err(_) => {
                self.counters.ring_lost.fetch_add(1, Relaxed);
            }
        }
    }

    /// Records one of the three span classes that carry only the span's id.
    fn span_only(&self, kind: Kind, id: &Id) {
        self.record(kind, None, &id.into_u64().to_le_bytes(), |_| {});
    }
}

impl<S: Subscriber + for<'l> LookupSpan<'l>> Layer<S> for HvtraceLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        self.record(Kind::Event, Some(meta), &[level_byte(meta.level())], |v| event.record(v));
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !self.spans {
            return;
        }
        let meta = attrs.metadata();
        let parent = match attrs.parent() {
            Some(p) => Some(p.clone()),
            None if attrs.is_contextual() => ctx.current_span().id().cloned(),
            None => None,
        };
        let mut fixed = [0u8; 17];
        fixed[..8].copy_from_slice(&id.into_u64().to_le_bytes());
        fixed[8..16].copy_from_slice(&parent.map_or(0, |p| p.into_u64()).to_le_bytes());
        fixed[16] = level_byte(meta.level());
        self.record(Kind::SpanNew, Some(meta), &fixed, |v| attrs.record(v));
    }

    fn on_record(&self, span: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if !self.spans {
            return;
        }
        let Some(meta) = ctx.metadata(span) else { return };
        self.record(Kind::SpanRecord, Some(meta), &span.into_u64().to_le_bytes(), |v| values.record(v));
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
