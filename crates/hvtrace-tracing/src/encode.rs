//! From `tracing`'s `Visit` calls to a record payload.
//!
//! A callsite's field types are fixed by the `Visit` method each value
//! arrives through at its first event ([`Typing`]); every later event is
//! encoded by [`Payload`] in the class's field order, with hvtrace-core's
//! own field encoders (`Field::encode`), into the thread's payload buffer.

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

    /// Bytes of the value written for a field absent from an event (a
    /// `None`, a `field::Empty`): zero, false, the empty string.
    fn absent(self, out: &mut Buf<'_>) {
        match self {
            Ty::I64 | Ty::U64 | Ty::F64 => out.put(&[0; 8]),
            Ty::Bool | Ty::Str => out.put(&[0]),
            Ty::Bytes => out.put(&[0; 4]),
        }
    }
}

/// Most bytes a `Bytes` field keeps: the bound of a string, so that a
/// callsite's payload stays bounded by its field count.
pub(crate) const MAX_FIELD_BYTES: usize = MAX_STRING;

/// Records the type of every field present in the first event of a
/// callsite; absent fields stay `None` (then [`Ty::Str`]).
pub(crate) struct Typing(pub(crate) Vec<Option<Ty>>);

impl Typing {
    fn set(&mut self, f: &TracingField, ty: Ty) {
        if let Some(slot) = self.0.get_mut(f.index()) {
            *slot = Some(ty);
        }
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

/// A bounded byte buffer: the thread's payload buffer, or whatever part of
/// it is left. Never writes past its end; `overflow` says it had to cut.
pub(crate) struct Buf<'a> {
    pub(crate) bytes: &'a mut [u8],
    pub(crate) len: usize,
    pub(crate) overflow: bool,
}

impl Buf<'_> {
    #[inline]
    pub(crate) fn put(&mut self, b: &[u8]) {
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

    /// Writes `v` with hvtrace-core's encoder for its type, or nothing (and
    /// `overflow`) if it does not fit.
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
struct Text<'b, 'a> {
    out: &'b mut Buf<'a>,
    kept: usize,
    cut: bool,
}

impl fmt::Write for Text<'_, '_> {
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
/// A field that does not arrive is written as absent ([`Ty::absent`]); a
/// value whose type its class cannot hold without loss marks the event
/// `mismatch` (the caller drops and counts it).
pub(crate) struct Payload<'b, 'a> {
    pub(crate) out: &'b mut Buf<'a>,
    pub(crate) types: &'b [Ty],
    /// The next field index expected.
    pub(crate) next: usize,
    pub(crate) mismatch: bool,
    /// Values cut to their bound (strings, byte arrays).
    pub(crate) truncated: u32,
}

impl<'b, 'a> Payload<'b, 'a> {
    pub(crate) fn new(out: &'b mut Buf<'a>, types: &'b [Ty]) -> Self {
        Payload { out, types, next: 0, mismatch: false, truncated: 0 }
    }

    /// The type of field `f`, once the fields before it are written;
    /// `None` if `f` comes out of order (then the event is a mismatch).
    #[inline]
    fn at(&mut self, f: &TracingField) -> Option<Ty> {
        let i = f.index();
        if i < self.next || i >= self.types.len() {
            self.mismatch = true;
            return None;
        }
        while self.next < i {
            self.types[self.next].absent(self.out);
            self.next += 1;
        }
        self.next = i + 1;
        Some(self.types[i])
    }

    /// Writes the fields that did not arrive; call once every value was visited.
    pub(crate) fn finish(&mut self) {
        while self.next < self.types.len() {
            self.types[self.next].absent(self.out);
            self.next += 1;
        }
    }

    /// Writes a value as text into a `Str` field.
    fn text(&mut self, v: fmt::Arguments<'_>) {
        let mut t = Text { out: self.out, kept: 0, cut: false };
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
                Err(_) => self.mismatch = true,
            },
            Some(Ty::U64) => match TryInto::<u64>::try_into(v) {
                Ok(x) => self.out.field(x),
                Err(_) => self.mismatch = true,
            },
            Some(_) => self.mismatch = true,
            None => {}
        }
    }

    /// A string: measured once (`kept`), then its bytes and the NUL.
    #[inline]
    fn str(&mut self, s: &str) {
        let kept = kept(s);
        self.truncated += (s.len() > MAX_STRING) as u32;
        self.out.put(kept);
        self.out.put(&[0]);
    }
}

impl Visit for Payload<'_, '_> {
    #[inline]
    fn record_i64(&mut self, f: &TracingField, v: i64) {
        match self.at(f) {
            Some(Ty::I64) => self.out.field(v),
            Some(Ty::U64) if v >= 0 => self.out.field(v as u64),
            Some(Ty::Str) => self.text(format_args!("{v}")),
            Some(_) => self.mismatch = true,
            None => {}
        }
    }

    #[inline]
    fn record_u64(&mut self, f: &TracingField, v: u64) {
        match self.at(f) {
            Some(Ty::U64) => self.out.field(v),
            Some(Ty::I64) if v <= i64::MAX as u64 => self.out.field(v as i64),
            Some(Ty::Str) => self.text(format_args!("{v}")),
            Some(_) => self.mismatch = true,
            None => {}
        }
    }

    fn record_i128(&mut self, f: &TracingField, v: i128) {
        self.wide(f, v)
    }

    fn record_u128(&mut self, f: &TracingField, v: u128) {
        self.wide(f, v)
    }

    #[inline]
    fn record_f64(&mut self, f: &TracingField, v: f64) {
        match self.at(f) {
            Some(Ty::F64) => self.out.field(v),
            Some(Ty::Str) => self.text(format_args!("{v}")),
            Some(_) => self.mismatch = true,
            None => {}
        }
    }

    #[inline]
    fn record_bool(&mut self, f: &TracingField, v: bool) {
        match self.at(f) {
            Some(Ty::Bool) => self.out.field(v),
            Some(Ty::Str) => self.str(if v { "true" } else { "false" }),
            Some(_) => self.mismatch = true,
            None => {}
        }
    }

    #[inline]
    fn record_str(&mut self, f: &TracingField, v: &str) {
        match self.at(f) {
            Some(Ty::Str) => self.str(v),
            Some(_) => self.mismatch = true,
            None => {}
        }
    }

    fn record_bytes(&mut self, f: &TracingField, v: &[u8]) {
        match self.at(f) {
            Some(Ty::Bytes) => {
                let n = v.len().min(MAX_FIELD_BYTES);
                self.truncated += (n < v.len()) as u32;
                self.out.field(&v[..n]);
            }
            Some(Ty::Str) => self.text(format_args!("{v:02x?}")),
            Some(_) => self.mismatch = true,
            None => {}
        }
    }

    fn record_error(&mut self, f: &TracingField, v: &(dyn std::error::Error + 'static)) {
        match self.at(f) {
            Some(Ty::Str) => self.text(format_args!("{v}")),
            Some(_) => self.mismatch = true,
            None => {}
        }
    }

    fn record_debug(&mut self, f: &TracingField, v: &dyn fmt::Debug) {
        match self.at(f) {
            Some(Ty::Str) => self.text(format_args!("{v:?}")),
            Some(_) => self.mismatch = true,
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
