//! The reader's side of the hypervisor model's mapping interface: a trace's
//! event classes as a [`Catalog`], a record's payload as [`Fields`].

use hvtrace_core::ctf::header;
use hvtrace_core::decode::{decode_field, Schema, Value};
use hvtrace_core::FieldKind;
use hvtrace_model::{Catalog, Fields, FixedInt};

use crate::tsdl::TraceSchema;

impl Catalog for TraceSchema {
    fn event_count(&self) -> u32 {
        self.events.len() as u32
    }
    fn event_name(&self, id: u32) -> Option<&str> {
        self.event(id).map(|e| e.name.as_str())
    }
    fn field_count(&self, id: u32) -> usize {
        self.event(id).map_or(0, |e| e.fields.len())
    }
    fn field_name(&self, id: u32, i: usize) -> Option<&str> {
        Some(self.event(id)?.fields.get(i)?.name.as_str())
    }
    fn enum_labels(&self, id: u32, i: usize) -> Vec<(i64, String)> {
        self.event(id)
            .and_then(|e| e.fields.get(i))
            .map(|f| f.labels.iter().map(|l| (l.value, l.label.clone())).collect())
            .unwrap_or_default()
    }
    fn fixed_int(&self, id: u32, i: usize) -> FixedInt {
        let Some(e) = self.event(id) else { return FixedInt::NONE };
        placed(e.fields.iter().map(|f| f.kind)).nth(i).map_or(FixedInt::NONE, |(kind, at)| fixed_int(kind, at))
    }
}

/// Each field's kind and, while every field before it has a fixed size,
/// its offset in the payload.
fn placed(kinds: impl Iterator<Item = FieldKind>) -> impl Iterator<Item = (FieldKind, Option<u32>)> {
    let mut at = Some(0u32);
    kinds.map(move |kind| {
        let here = at;
        at = at.zip(kind.fixed_len()).map(|(a, n)| a + n as u32);
        (kind, here)
    })
}

/// A field of `kind` at `at`, as a [`FixedInt`] if it is one.
fn fixed_int(kind: FieldKind, at: Option<u32>) -> FixedInt {
    match (kind, at) {
        (FieldKind::Int { bits, signed, .. } | FieldKind::Enum { bits, signed, .. }, Some(at)) => {
            FixedInt::new(at, bits, signed)
        }
        _ => FixedInt::NONE,
    }
}

/// The trace's event layouts, for reading fast: per event, each payload
/// field's kind and, while every field before it has a fixed size, its
/// offset (so a mapper's read of one field decodes that field alone), and
/// the payload's length when it is fixed (so, as the decoder's [`Schema`],
/// a record is skipped without walking its fields).
#[derive(Clone, Debug)]
pub struct Layouts {
    events: Vec<Vec<(FieldKind, Option<u32>)>>,
    /// Per event, per field: the compact form of an integer at a fixed
    /// offset, the per-record fast path (8 bytes, no `FieldKind` copy).
    ints: Vec<Vec<FixedInt>>,
    /// Per event, its payload's length if fixed, else [`VARIABLE`]: a
    /// table of 4-byte entries for the decoder's one lookup per record.
    fixed: Vec<u32>,
    /// `fixed` by a compact header's 5-bit id, [`VARIABLE`] for the id
    /// that announces an extended header and for ids no event has: the
    /// reader's fast path indexes it without a bounds check.
    compact: [u32; 32],
}

/// A payload whose length is not fixed.
pub(crate) const VARIABLE: u32 = u32::MAX;

impl Schema for Layouts {
    #[inline]
    fn field_count(&self, id: u32) -> Option<usize> {
        self.events.get(id as usize).map(Vec::len)
    }
    #[inline]
    fn field_kind(&self, id: u32, i: usize) -> FieldKind {
        self.events[id as usize][i].0
    }
    #[inline]
    fn fixed_payload_len(&self, id: u32) -> Option<usize> {
        self.fixed.get(id as usize).filter(|&&n| n != VARIABLE).map(|&n| n as usize)
    }
}

impl Layouts {
    /// Payload lengths by compact header id (see the field `compact`).
    #[inline]
    pub(crate) fn compact_lens(&self) -> &[u32; 32] {
        &self.compact
    }

    /// The layouts of `schema`'s events.
    pub fn new(schema: &TraceSchema) -> Layouts {
        let events: Vec<Vec<(FieldKind, Option<u32>)>> =
            schema.events.iter().map(|e| placed(e.fields.iter().map(|f| f.kind)).collect()).collect();
        let fixed: Vec<u32> = schema
            .events
            .iter()
            .map(|e| e.fields.iter().map(|f| f.kind.fixed_len()).sum::<Option<usize>>())
            .map(|n| n.and_then(|n| u32::try_from(n).ok()).unwrap_or(VARIABLE))
            .collect();
        let ints = events.iter().map(|fields| fields.iter().map(|&(kind, at)| fixed_int(kind, at)).collect()).collect();
        let mut compact = [VARIABLE; 32];
        for (id, n) in compact.iter_mut().enumerate().take(header::MAX_COMPACT_ID as usize + 1) {
            *n = fixed.get(id).copied().unwrap_or(VARIABLE);
        }
        Layouts { events, ints, fixed, compact }
    }
}

/// A record's payload fields, decoded one at a time as they are read (no
/// allocation; a field after a string or array is found by walking to it).
#[derive(Clone, Copy, Debug)]
pub struct RecordFields<'p, 's> {
    fields: &'s [(FieldKind, Option<u32>)],
    ints: &'s [FixedInt],
    payload: &'p [u8],
}

impl<'p, 's> RecordFields<'p, 's> {
    /// The fields of a record of event `id` whose payload is `payload` (of
    /// an event `layouts` knows; others have none).
    #[inline]
    pub fn new(layouts: &'s Layouts, id: u32, payload: &'p [u8]) -> RecordFields<'p, 's> {
        let id = id as usize;
        let fields = layouts.events.get(id).map_or(&[][..], |f| &f[..]);
        let ints = layouts.ints.get(id).map_or(&[][..], |f| &f[..]);
        RecordFields { fields, ints, payload }
    }

    /// Field `i`'s value.
    #[inline]
    pub fn value(&self, i: usize) -> Option<Value<'p>> {
        let (kind, at) = self.fields.get(i)?;
        if let Some(at) = at {
            return decode_field(kind, self.payload.get(*at as usize..)?).map(|(v, _)| v);
        }
        let mut rest = self.payload;
        for (k, (kind, _)) in self.fields.iter().enumerate() {
            let (v, n) = decode_field(kind, rest)?;
            if k == i {
                return Some(v);
            }
            rest = &rest[n..];
        }
        None
    }
}

impl<'p> Fields<'p> for RecordFields<'p, '_> {
    #[inline]
    fn uint(&self, i: usize) -> Option<u64> {
        // The common case, an integer at a fixed offset, read directly.
        if let Some(v) = self.ints.get(i).and_then(|f| f.read(self.payload, self.payload.len())) {
            return Some(v);
        }
        match self.value(i)? {
            Value::U(u) => Some(u),
            Value::I(v) | Value::Enum(v) => Some(v as u64),
            Value::F(_) | Value::Str(_) | Value::Bytes(_) => None,
        }
    }
    #[inline]
    fn bytes(&self, i: usize) -> Option<&'p [u8]> {
        match self.value(i)? {
            Value::Str(b) | Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}
