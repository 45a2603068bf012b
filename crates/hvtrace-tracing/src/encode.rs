//! From `tracing`'s `Visit` calls to a record payload.
//!
//! A callsite's field types are fixed by the `Visit` method each value
//! arrives through at its first event ([`Typing`]); every later event is
//! encoded by [`Payload`] in the class's field order, with hvtrace-core's
//! own field encoders (`Field::encode`), into an [`Out`]: the reserved slot
//! itself when every field has a fixed size ([`Shape`]), else the thread's
//! payload buffer.

use std::fmt::{self, Write as _};

use hvtrace_core::field::{kept, Field, FieldKind, MAX_STRING};
use hvtrace_core::Encoder;
use tracing_core::field::{Field as TracingField, Visit};

/// The wire type of one `tracing` field, decided by the `Visit` method
/// its first value came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    /// `record_i64` (every signed integer type).
    I64,
    /// `record_u64` (every unsigned integer type).
    U64,
    /// `record_f64` (`f32` and `f64`).
    F64,
    /// `record_bool`.
    Bool,
    /// `record_str`, `record_debug` (`?x`, `%x`, the message), `record_error`,
    /// 128-bit integers (as decimal text), and fields absent at the first
    /// event (a later value of any type is written as its text).
    Str,
    /// `record_bytes`.
    Bytes,
}

impl Ty {
    /// The CTF type of the field.
    pub(crate) fn kind(self) -> FieldKind {
        match self {
            Ty::I64 => i64::KIND,
            Ty::U64 => u64::KIND,
            Ty::F64 => f64::KIND,
            Ty::Bool => bool::KIND,
            Ty::Str => FieldKind::Str,
            Ty::Bytes => FieldKind::Bytes,
        }
    }

    /// Bytes of every value of the type, if they are all the same size.
    fn size(self) -> Option<usize> {
        match self {
            Ty::I64 | Ty::U64 | Ty::F64 => Some(8),
            Ty::Bool => Some(1),
            Ty::Str | Ty::Bytes => None,
        }
    }

    /// Bytes of the value written for a field absent from an event (a
    /// `None`, a `field::Empty`) or whose value its type cannot hold:
    /// zero, false, the empty string. As long as a value of the type when
    /// the type has a fixed size, so an event's length never depends on it.
    fn absent(self, out: &mut impl Out) {
        match self {
            Ty::I64 | Ty::U64 | Ty::F64 => out.put(&[0; 8]),
            Ty::Bool | Ty::Str => out.put(&[0]),
            Ty::Bytes => out.put(&[0; 4]),
        }
    }
}

/// Where an event's values go, and so how the layer knows the payload's
/// length before it reserves the record (a reservation needs it first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Every field has a fixed size (integers, floats, bools): the
    /// payload's length is the class's, and the values go straight into
    /// the reserved slot in one `Visit` pass (none at all while no channel
    /// is started: the ring refuses before the slot is filled).
    Fixed(usize),
    /// Some field is a string or a byte array: its length is known only
    /// once the value is visited (and, for `Debug` values, formatted).
    /// Encoded once into the thread's buffer, then copied into the slot. A
    /// first `Visit` pass to count the bytes, then a second into the slot,
    /// measured slower for `a = 1i32, b = 2u64, s = "hello"` (62–104 ns
    /// against 44–69 ns for the buffer, the same runs): the `Visit` pass
    /// costs more than the copy it saves (see docs/benchmarks.md).
    Buffered,
}

/// Most bytes a `Bytes` field keeps: the bound of a string, so that a
/// callsite's payload stays bounded by its field count.
pub(crate) const MAX_FIELD_BYTES: usize = MAX_STRING;

/// Records the type of every field present in the first event of a
/// callsite; absent fields stay `None` (then [`Ty::Str`]).
pub(crate) struct Typing(Vec<Option<Ty>>);

impl Typing {
    pub(crate) fn new(fields: usize) -> Typing {
        Typing(vec![None; fields])
    }

    fn set(&mut self, f: &TracingField, ty: Ty) {
        if let Some(slot) = self.0.get_mut(f.index()) {
            *slot = Some(ty);
        }
    }

    /// The fields' types (absent ones as strings) and the class's shape.
    pub(crate) fn finish(self) -> (Box<[Ty]>, Shape) {
        let types: Box<[Ty]> = self.0.into_iter().map(|t| t.unwrap_or(Ty::Str)).collect();
        let shape = match types.iter().map(|t| t.size()).sum::<Option<usize>>() {
            Some(n) => Shape::Fixed(n),
            None => Shape::Buffered,
        };
        (types, shape)
    }
}

impl Visit for Typing {
    fn record_i64(&mut self, f: &TracingField, _: i64) {
        self.set(f, Ty::I64)
    }
    fn record_u64(&mut self, f: &TracingField, _: u64) {
        self.set(f, Ty::U64)
    }
    fn record_f64(&mut self, f: &TracingField, _: f64) {
        self.set(f, Ty::F64)
    }
    fn record_bool(&mut self, f: &TracingField, _: bool) {
        self.set(f, Ty::Bool)
    }
    fn record_bytes(&mut self, f: &TracingField, _: &[u8]) {
        self.set(f, Ty::Bytes)
    }
    fn record_debug(&mut self, f: &TracingField, _: &dyn fmt::Debug) {
        self.set(f, Ty::Str)
    }
}

/// What a [`Payload`] writes into: the reserved slot (an [`Encoder`]) or
/// the thread's buffer ([`Buf`]).
pub(crate) trait Out {
    /// Appends `b`.
    fn put(&mut self, b: &[u8]);
    /// Appends `v` with hvtrace-core's encoder for its type.
    fn field<T: Field>(&mut self, v: T);
    /// Appends `b` and a NUL (a CTF string; `b` holds no NUL).
    #[inline]
    fn put_str(&mut self, b: &[u8]) {
        self.put(b);
        self.put(&[0]);
    }
}

impl Out for &mut Encoder<'_> {
    #[inline]
    fn put(&mut self, b: &[u8]) {
        Encoder::put(self, b)
    }
    #[inline]
    fn field<T: Field>(&mut self, v: T) {
        v.encode(self)
    }
}

/// A bounded byte buffer: the thread's payload buffer. Never writes past
/// its end; `overflow` says it had to cut.
pub(crate) struct Buf<'a> {
    pub(crate) bytes: &'a mut [u8],
    pub(crate) len: usize,
    pub(crate) overflow: bool,
}

impl Out for Buf<'_> {
    #[inline]
    fn put(&mut self, b: &[u8]) {
        match self.bytes.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                // The core encoder's copy: inline moves for short lengths,
                // where `copy_from_slice` of an unknown length calls `memcpy`.
                Encoder::new(dst).put(b);
                self.len += b.len();
            }
            None => self.overflow = true,
        }
    }

    /// One bounds check for the bytes and the NUL.
    #[inline]
    fn put_str(&mut self, b: &[u8]) {
        match self.bytes.get_mut(self.len..self.len + b.len() + 1) {
            Some(dst) => {
                let mut e = Encoder::new(dst);
                e.put(b);
                e.put(&[0]);
                self.len += b.len() + 1;
            }
            None => self.overflow = true,
        }
    }

    /// Writes `v`, or nothing (and `overflow`) if it does not fit.
    #[inline]
    fn field<T: Field>(&mut self, v: T) {
        let n = v.encoded_len();
        match self.bytes.get_mut(self.len..self.len + n) {
            Some(dst) => {
                v.encode(&mut Encoder::new(dst));
                self.len += n;
            }
            None => self.overflow = true,
        }
    }
}

/// A `fmt::Write` that keeps at most [`MAX_STRING`] bytes of a formatted
/// value and stops the formatting (with `fmt::Error`) once it has them, so
/// a 1 MiB `Debug` value costs 1 KiB of work, not 1 MiB. A NUL byte ends the
/// string, as in hvtrace-core's `&str` encoder (the CTF string's end).
struct Text<'b, O> {
    out: &'b mut O,
    kept: usize,
    cut: bool,
}

impl<O: Out> fmt::Write for Text<'_, O> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.cut {
            // A `Debug` impl that ignored the error: nothing more is kept.
            return Err(fmt::Error);
        }
        let mut n = s.len().min(MAX_STRING - self.kept);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        let mut part = &s.as_bytes()[..n];
        let mut cut = n < s.len();
        if let Some(z) = part.iter().position(|&b| b == 0) {
            part = &part[..z];
            cut = true;
        }
        self.out.put(part);
        self.kept += part.len();
        if cut {
            self.cut = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

/// Encodes an event's values in the order of its class's fields.
///
/// A field that does not arrive is written as absent ([`Ty::absent`]); so
/// is a value whose type its field cannot hold without loss, counted in
/// `mismatched` (as is a value for a field written already or unknown to
/// the class, which is not written).
///
/// Each `Visit` method has a fast path for the common case — the field
/// expected next, of its class's type ([`Payload::next_is`]) — that calls
/// nothing (but `memcpy` for a long string), so it compiles to a leaf
/// function without a stack frame; everything else goes out of line
/// (`*_other`). The output is held by value (the thread's [`Buf`], or
/// `&mut Encoder` for the slot): one pointer fewer to follow per value.
pub(crate) struct Payload<'b, O> {
    pub(crate) out: O,
    types: &'b [Ty],
    /// The next field index expected.
    next: usize,
    /// Values not written: not of their field's type, or out of order.
    pub(crate) mismatched: u32,
    /// Values cut to their bound (strings, byte arrays).
    pub(crate) truncated: u32,
}

impl<'b, O: Out> Payload<'b, O> {
    pub(crate) fn new(out: O, types: &'b [Ty]) -> Self {
        Payload { out, types, next: 0, mismatched: 0, truncated: 0 }
    }

    /// Whether `f` is the field expected next and of type `ty` (then taken).
    #[inline(always)]
    fn next_is(&mut self, f: &TracingField, ty: Ty) -> bool {
        let i = f.index();
        if i == self.next && self.types.get(i) == Some(&ty) {
            self.next = i + 1;
            return true;
        }
        false
    }

    /// The type of field `f`, once the fields before it are written;
    /// `None` if `f` comes out of order or is not the class's.
    #[inline]
    fn at(&mut self, f: &TracingField) -> Option<Ty> {
        let i = f.index();
        if i < self.next || i >= self.types.len() {
            self.mismatched += 1;
            return None;
        }
        while self.next < i {
            self.types[self.next].absent(&mut self.out);
            self.next += 1;
        }
        self.next = i + 1;
        Some(self.types[i])
    }

    /// A fixed-size value: the fast path when `f` is the field expected
    /// next and of type `ty`, else `other` (out of line).
    #[inline(always)]
    fn value<T: Field>(&mut self, f: &TracingField, ty: Ty, v: T, other: impl FnOnce(&mut Self, &TracingField, T)) {
        if self.next_is(f, ty) {
            return self.out.field(v);
        }
        other(self, f, v)
    }

    /// A value field `ty` cannot hold: written as absent, counted.
    #[cold]
    fn reject(&mut self, ty: Ty) {
        ty.absent(&mut self.out);
        self.mismatched += 1;
    }

    /// Writes the fields that did not arrive; call once every value was visited.
    pub(crate) fn finish(&mut self) {
        while self.next < self.types.len() {
            self.types[self.next].absent(&mut self.out);
            self.next += 1;
        }
    }

    /// Writes a value as text into a `Str` field.
    fn text(&mut self, v: fmt::Arguments<'_>) {
        let mut t = Text { out: &mut self.out, kept: 0, cut: false };
        let _ = t.write_fmt(v);
        let cut = t.cut;
        self.out.put(&[0]);
        self.truncated += cut as u32;
    }

    /// A 128-bit integer: its text, or into a 64-bit field if it fits.
    fn wide<T: Copy + fmt::Display + TryInto<i64> + TryInto<u64>>(&mut self, f: &TracingField, v: T) {
        match self.at(f) {
            Some(Ty::Str) => self.text(format_args!("{v}")),
            Some(Ty::I64) => match TryInto::<i64>::try_into(v) {
                Ok(x) => self.out.field(x),
                Err(_) => self.reject(Ty::I64),
            },
            Some(Ty::U64) => match TryInto::<u64>::try_into(v) {
                Ok(x) => self.out.field(x),
                Err(_) => self.reject(Ty::U64),
            },
            Some(t) => self.reject(t),
            None => {}
        }
    }

    /// A string: its kept part (cut at the bound, counted, or at a NUL) and
    /// the NUL.
    #[inline]
    fn str(&mut self, s: &str) {
        let kept = kept(s);
        self.truncated += (s.len() > MAX_STRING) as u32;
        self.out.put_str(kept);
    }

    #[inline(never)]
    fn i64_other(&mut self, f: &TracingField, v: i64) {
        match self.at(f) {
            Some(Ty::I64) => self.out.field(v),
            Some(Ty::U64) if v >= 0 => self.out.field(v as u64),
            Some(Ty::Str) => self.text(format_args!("{v}")),
            Some(t) => self.reject(t),
            None => {}
        }
    }

    #[inline(never)]
    fn u64_other(&mut self, f: &TracingField, v: u64) {
        match self.at(f) {
            Some(Ty::U64) => self.out.field(v),
            Some(Ty::I64) if v <= i64::MAX as u64 => self.out.field(v as i64),
            Some(Ty::Str) => self.text(format_args!("{v}")),
            Some(t) => self.reject(t),
            None => {}
        }
    }

    #[inline(never)]
    fn f64_other(&mut self, f: &TracingField, v: f64) {
        match self.at(f) {
            Some(Ty::F64) => self.out.field(v),
            Some(Ty::Str) => self.text(format_args!("{v}")),
            Some(t) => self.reject(t),
            None => {}
        }
    }

    #[inline(never)]
    fn bool_other(&mut self, f: &TracingField, v: bool) {
        match self.at(f) {
            Some(Ty::Bool) => self.out.field(v),
            Some(Ty::Str) => self.str(if v { "true" } else { "false" }),
            Some(t) => self.reject(t),
            None => {}
        }
    }

    #[inline(never)]
    fn str_other(&mut self, f: &TracingField, v: &str) {
        match self.at(f) {
            Some(Ty::Str) => self.str(v),
            Some(t) => self.reject(t),
            None => {}
        }
    }
}

impl<O: Out> Visit for Payload<'_, O> {
    #[inline]
    fn record_i64(&mut self, f: &TracingField, v: i64) {
        self.value(f, Ty::I64, v, Self::i64_other)
    }

    #[inline]
    fn record_u64(&mut self, f: &TracingField, v: u64) {
        self.value(f, Ty::U64, v, Self::u64_other)
    }

    fn record_i128(&mut self, f: &TracingField, v: i128) {
        self.wide(f, v)
    }

    fn record_u128(&mut self, f: &TracingField, v: u128) {
        self.wide(f, v)
    }

    #[inline]
    fn record_f64(&mut self, f: &TracingField, v: f64) {
        self.value(f, Ty::F64, v, Self::f64_other)
    }

    #[inline]
    fn record_bool(&mut self, f: &TracingField, v: bool) {
        self.value(f, Ty::Bool, v, Self::bool_other)
    }

    #[inline]
    fn record_str(&mut self, f: &TracingField, v: &str) {
        if self.next_is(f, Ty::Str) {
            return self.str(v);
        }
        self.str_other(f, v)
    }

    fn record_bytes(&mut self, f: &TracingField, v: &[u8]) {
        match self.at(f) {
            Some(Ty::Bytes) => {
                let n = v.len().min(MAX_FIELD_BYTES);
                self.truncated += (n < v.len()) as u32;
                self.out.field(&v[..n]);
            }
            Some(Ty::Str) => self.text(format_args!("{v:02x?}")),
            Some(t) => self.reject(t),
            None => {}
        }
    }

    fn record_error(&mut self, f: &TracingField, v: &(dyn std::error::Error + 'static)) {
        match self.at(f) {
            Some(Ty::Str) => self.text(format_args!("{v}")),
            Some(t) => self.reject(t),
            None => {}
        }
    }

    fn record_debug(&mut self, f: &TracingField, v: &dyn fmt::Debug) {
        match self.at(f) {
            Some(Ty::Str) => self.text(format_args!("{v:?}")),
            Some(t) => self.reject(t),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Big;
    impl fmt::Debug for Big {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // 1 MiB, written in 1 KiB pieces; counts how far it got.
            let piece = "x".repeat(1024);
            for _ in 0..1024 {
                f.write_str(&piece)?;
                CALLS.with(|c| c.set(c.get() + 1));
            }
            Ok(())
        }
    }
    thread_local!(static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });

    #[test]
    fn a_huge_debug_value_is_cut_at_the_string_bound_and_its_formatting_stopped() {
        let mut bytes = vec![0u8; 4096];
        let mut out = Buf { bytes: &mut bytes, len: 0, overflow: false };
        let mut t = Text { out: &mut out, kept: 0, cut: false };
        let _ = write!(t, "{:?}", Big);
        assert!(t.cut);
        assert_eq!(out.len, MAX_STRING);
        // The second 1 KiB piece did not fit: formatting stopped there.
        assert_eq!(CALLS.with(|c| c.get()), 0);
    }

    #[test]
    fn a_nul_ends_the_text_and_a_multibyte_character_is_never_split() {
        let mut bytes = vec![0u8; 4096];
        let mut out = Buf { bytes: &mut bytes, len: 0, overflow: false };
        let mut t = Text { out: &mut out, kept: 0, cut: false };
        let _ = t.write_str("ab\0cd");
        assert!(t.cut);
        assert_eq!(&out.bytes[..out.len], b"ab");

        let mut out = Buf { bytes: &mut bytes, len: 0, overflow: false };
        let mut t = Text { out: &mut out, kept: 0, cut: false };
        let s = "é".repeat(600); // 1200 bytes, 2 each
        let _ = t.write_str(&s);
        assert_eq!(out.len, MAX_STRING - 1, "1023 would split a character");
        assert!(std::str::from_utf8(&out.bytes[..out.len]).is_ok());
    }

    /// Visits the values of an event of fields `a`, `b`, `c`, `d`, `e`.
    struct Values<'a>(&'a str, i64, &'a [u8], bool);
    fn visit(v: &Values<'_>, to: &mut dyn Visit) {
        use tracing_core::callsite::DefaultCallsite;
        use tracing_core::field::{FieldSet, Value};
        use tracing_core::{Kind, Level, Metadata};
        static CS: DefaultCallsite = DefaultCallsite::new(&META);
        static META: Metadata<'static> = Metadata::new(
            "values",
            "test",
            Level::INFO,
            None,
            None,
            None,
            FieldSet::new(&["a", "b", "c", "d", "e"], tracing_core::identify_callsite!(&CS)),
            Kind::EVENT,
        );
        let fs = META.fields();
        let f = |n| fs.field(n).unwrap();
        let (a, b, c, e) = (f("a"), f("b"), f("c"), f("e"));
        let vals: [(&TracingField, Option<&dyn Value>); 4] =
            [(&a, Some(&v.0)), (&b, Some(&v.1)), (&c, Some(&v.2)), (&e, Some(&v.3))];
        fs.value_set(&vals).record(to);
    }

    #[test]
    fn the_slot_and_the_buffer_get_the_same_bytes() {
        let types = [Ty::Str, Ty::U64, Ty::Bytes, Ty::F64, Ty::Bool];
        let long = "é".repeat(700);
        let big = vec![7u8; 2000];
        let exact = "x".repeat(MAX_STRING);
        for v in [
            Values("", 0, b"", false),
            Values("hello", 5, b"\x01\x02", true),
            Values(&long, -1, &big, true),
            Values("ab\0cd", 3, b"", false),
            Values(&exact, 1, b"", false),
        ] {
            let mut buf = [0u8; 4096];
            let out = Buf { bytes: &mut buf, len: 0, overflow: false };
            let mut p = Payload::new(out, &types);
            visit(&v, &mut p);
            p.finish();
            let counts = (p.mismatched, p.truncated);
            let len = p.out.len;
            // -1 does not fit the u64 field: written as 0, counted; the long
            // string and bytes are cut.
            assert_eq!(counts, ((v.1 < 0) as u32, 2 * (v.0.len() > MAX_STRING) as u32));
            let mut slot = vec![0xaau8; len];
            let mut e = Encoder::new(&mut slot);
            let mut p = Payload::new(&mut e, &types);
            visit(&v, &mut p);
            p.finish();
            assert_eq!((p.mismatched, p.truncated), counts);
            assert_eq!(e.written(), len);
            assert_eq!(&buf[..len], &slot[..], "the buffer and the slot get the same bytes");
            // The string field: cut at a NUL, at the bound, or whole.
            let want = hvtrace_core::field::kept(v.0);
            assert_eq!(&slot[..want.len() + 1], &[want, &[0]].concat()[..], "{:?}", &v.0[..v.0.len().min(8)]);
        }
    }

    #[test]
    fn a_full_buffer_cuts_and_says_so_without_writing_past_its_end() {
        let mut bytes = [0u8; 10];
        let mut out = Buf { bytes: &mut bytes, len: 0, overflow: false };
        out.field(1u64);
        assert!(!out.overflow);
        out.field(2u64);
        assert!(out.overflow);
        assert_eq!(out.len, 8);
    }
}
