//! Field types an event may carry, their encodings and their CTF types.
//!
//! A field type says *what* it is ([`FieldKind`], from which both the TSDL
//! and decoders are derived) and *how* a value is written ([`Field::encode`]).

use crate::ring::Encoder;

/// Longest string payload kept (bytes, before the terminating NUL); longer
/// strings are cut at the last character boundary that fits, and a string
/// stops at its first NUL byte.
pub const MAX_STRING: usize = 1023;
/// Longest byte array kept.
pub const MAX_BYTES: usize = 65535;

/// One label of an enumeration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnumLabel {
    /// Label shown by readers.
    pub label: &'static str,
    /// Value it stands for.
    pub value: i64,
}

/// The wire type of a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// Integer of `bits` (8, 16, 32, 64), little-endian, byte aligned.
    Int {
        /// Width in bits.
        bits: u8,
        /// Two's complement?
        signed: bool,
        /// Display base hint (10 or 16).
        hex: bool,
    },
    /// IEEE-754 binary32 / binary64.
    Float {
        /// 32 or 64.
        bits: u8,
    },
    /// NUL-terminated UTF-8 string, at most [`MAX_STRING`] bytes before the NUL.
    Str,
    /// `u32` length, then that many bytes (at most [`MAX_BYTES`]).
    Bytes,
    /// Integer with named values (a `bool` is one: `false` / `true`).
    Enum {
        /// Width in bits of the container integer.
        bits: u8,
        /// Signed container?
        signed: bool,
        /// The labels.
        labels: &'static [EnumLabel],
    },
}

/// A value that can be a field of an event.
pub trait Field {
    /// Its wire type.
    const KIND: FieldKind;
    /// Bytes [`Field::encode`] will write.
    fn encoded_len(&self) -> usize;
    /// Writes the value.
    fn encode(&self, e: &mut Encoder<'_>);
}

macro_rules! int_field {
    ($($t:ty => $bits:expr, $signed:expr;)*) => {$(
        impl Field for $t {
            const KIND: FieldKind = FieldKind::Int { bits: $bits, signed: $signed, hex: false };
            #[inline]
            fn encoded_len(&self) -> usize { core::mem::size_of::<$t>() }
            #[inline]
            fn encode(&self, e: &mut Encoder<'_>) { e.put(&self.to_le_bytes()) }
        }
    )*};
}

int_field! {
    u8 => 8, false; u16 => 16, false; u32 => 32, false; u64 => 64, false;
    i8 => 8, true; i16 => 16, true; i32 => 32, true; i64 => 64, true;
}

impl Field for f32 {
    const KIND: FieldKind = FieldKind::Float { bits: 32 };
    #[inline]
    fn encoded_len(&self) -> usize {
        4
    }
    #[inline]
    fn encode(&self, e: &mut Encoder<'_>) {
        e.put(&self.to_le_bytes())
    }
}

impl Field for f64 {
    const KIND: FieldKind = FieldKind::Float { bits: 64 };
    #[inline]
    fn encoded_len(&self) -> usize {
        8
    }
    #[inline]
    fn encode(&self, e: &mut Encoder<'_>) {
        e.put(&self.to_le_bytes())
    }
}

/// Labels of a `bool` field.
pub const BOOL_LABELS: &[EnumLabel] = &[EnumLabel { label: "false", value: 0 }, EnumLabel { label: "true", value: 1 }];

impl Field for bool {
    const KIND: FieldKind = FieldKind::Enum { bits: 8, signed: false, labels: BOOL_LABELS };
    #[inline]
    fn encoded_len(&self) -> usize {
        1
    }
    #[inline]
    fn encode(&self, e: &mut Encoder<'_>) {
        e.put(&[*self as u8])
    }
}

/// The part of `s` that is recorded: up to the first NUL, at most
/// [`MAX_STRING`] bytes, cut at a character boundary so the field stays valid
/// UTF-8 (the metadata declares `encoding = UTF8`). Public for encoders
/// that measure a string once and write it themselves (hvtrace-tracing).
#[inline]
pub fn kept(s: &str) -> &[u8] {
    let b = s.as_bytes();
    // The common case, a short string without a NUL, in a few word tests
    // (a byte loop or `memchr` costs more than the rest of the record).
    if b.len() <= 32 && !short_has_nul(b) {
        return b;
    }
    kept_long(s)
}

/// Whether `b` (at most 32 bytes) holds a NUL: a test of up to four
/// 8-byte words (overlapping, from both ends), or two 4-byte ones.
#[inline(always)]
fn short_has_nul(b: &[u8]) -> bool {
    // Nonzero exactly when some byte of `x` is zero (the borrow of a zero
    // byte sets its top bit, which `!x` keeps only for bytes below 0x80).
    const fn zero64(x: u64) -> bool {
        x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080 != 0
    }
    const fn zero32(x: u32) -> bool {
        x.wrapping_sub(0x0101_0101) & !x & 0x8080_8080 != 0
    }
    let n = b.len();
    match n {
        0 => false,
        1..=3 => b[0] == 0 || b[n / 2] == 0 || b[n - 1] == 0,
        4..=7 => zero32(word32(b, 0)) | zero32(word32(b, n - 4)),
        8..=16 => zero64(word64(b, 0)) | zero64(word64(b, n - 8)),
        _ => zero64(word64(b, 0)) | zero64(word64(b, 8)) | zero64(word64(b, n - 16)) | zero64(word64(b, n - 8)),
    }
}

#[inline(always)]
fn word64(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[inline(always)]
fn word32(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// [`kept`] of a string that is long or holds a NUL.
fn kept_long(s: &str) -> &[u8] {
    let mut n = s.len().min(MAX_STRING);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    let s = &s.as_bytes()[..n];
    match s.iter().position(|&b| b == 0) {
        Some(n) => &s[..n],
        None => s,
    }
}

impl Field for &str {
    const KIND: FieldKind = FieldKind::Str;
    #[inline]
    fn encoded_len(&self) -> usize {
        kept(self).len() + 1
    }
    #[inline]
    fn encode(&self, e: &mut Encoder<'_>) {
        e.put(kept(self));
        e.put(&[0]);
    }
}

impl Field for &[u8] {
    const KIND: FieldKind = FieldKind::Bytes;
    #[inline]
    fn encoded_len(&self) -> usize {
        4 + self.len().min(MAX_BYTES)
    }
    #[inline]
    fn encode(&self, e: &mut Encoder<'_>) {
        let n = self.len().min(MAX_BYTES);
        e.put(&(n as u32).to_le_bytes());
        e.put(&self[..n]);
    }
}

/// Declares a Rust enum that is recorded as a CTF enumeration.
///
/// ```
/// hvtrace_core::ctf_enum! {
///     /// Why a vCPU stopped running.
///     pub enum BlockReason: u8 { Halt = 0, Io = 1, Yield = 2 }
/// }
/// ```
#[macro_export]
macro_rules! ctf_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $repr:ident { $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($repr)]
        $vis enum $name { $( $(#[$vmeta])* $variant = $value ),* }

        impl $name {
            /// Labels and values, as recorded in the trace metadata.
            pub const LABELS: &'static [$crate::field::EnumLabel] = &[
                $( $crate::field::EnumLabel { label: stringify!($variant), value: $value as i64 } ),*
            ];
        }

        impl $crate::field::Field for $name {
            const KIND: $crate::field::FieldKind = $crate::field::FieldKind::Enum {
                bits: (core::mem::size_of::<$repr>() * 8) as u8,
                signed: <$repr as $crate::field::Field>::KIND.is_signed_int(),
                labels: Self::LABELS,
            };
            #[inline]
            fn encoded_len(&self) -> usize { core::mem::size_of::<$repr>() }
            #[inline]
            fn encode(&self, e: &mut $crate::ring::Encoder<'_>) { e.put(&(*self as $repr).to_le_bytes()) }
        }
    };
}

impl FieldKind {
    /// True for a signed integer kind (used by [`ctf_enum!`]).
    pub const fn is_signed_int(&self) -> bool {
        matches!(self, FieldKind::Int { signed: true, .. })
    }

    /// Encoded size when fixed, `None` for strings and byte arrays.
    pub const fn fixed_len(&self) -> Option<usize> {
        match self {
            FieldKind::Int { bits, .. } | FieldKind::Float { bits } | FieldKind::Enum { bits, .. } => {
                Some(*bits as usize / 8)
            }
            FieldKind::Str | FieldKind::Bytes => None,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    #[test]
    fn kept_finds_every_nul_of_a_short_string_and_keeps_the_rest_whole() {
        // Every length the word tests cover and past them, a NUL at every
        // place (or none), bytes either side of it at 0x01 and 0x80 and
        // 0xff, where a word test could be fooled by a borrow or a sign.
        for n in 0..=40usize {
            for nul in (0..n).map(Some).chain([None]) {
                for fill in ['\u{1}', 'a', '\u{7f}'] {
                    let s: String = (0..n).map(|i| if Some(i) == nul { '\0' } else { fill }).collect();
                    let want = &s.as_bytes()[..nul.unwrap_or(n)];
                    assert_eq!(kept(&s), want, "length {n}, NUL at {nul:?}, fill {fill:?}");
                }
            }
        }
        // Multi-byte characters (bytes >= 0x80) beside a NUL.
        for s in ["é\0", "\0é", "aé\0bcdefghij", "ééééé\0", "éééééééééééééééé\0"] {
            assert_eq!(kept(s), s.split('\0').next().unwrap().as_bytes(), "{s:?}");
        }
    }
}
