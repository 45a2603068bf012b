//! The mapping interface: from a source's records to model [`Event`]s.

use crate::Event;

/// What a mapping sees of a trace's event classes when it binds: names,
/// field names and enumeration labels, by event id. The CTF reader
/// implements it over the trace's metadata; an importer over its own tables.
pub trait Catalog {
    /// Number of event ids (ids are `0..event_count()`).
    fn event_count(&self) -> u32;
    /// Name of event `id`.
    fn event_name(&self, id: u32) -> Option<&str>;
    /// Number of payload fields of event `id`.
    fn field_count(&self, id: u32) -> usize;
    /// Name of field `i` of event `id`.
    fn field_name(&self, id: u32, i: usize) -> Option<&str>;
    /// The `(value, label)` pairs of field `i` of event `id` if it is an
    /// enumeration (empty otherwise).
    fn enum_labels(&self, id: u32, i: usize) -> Vec<(i64, String)>;
    /// Where field `i` of event `id` lies in a record's payload if it is an
    /// integer at a fixed offset ([`FixedInt`]), so that a [`Payload`]
    /// reads it from the bytes; [`FixedInt::NONE`] (the default) for any
    /// other field, read through the source's [`Fields`].
    fn fixed_int(&self, _id: u32, _i: usize) -> FixedInt {
        FixedInt::NONE
    }

    /// The id of the event named `name`.
    fn event_id(&self, name: &str) -> Option<u32> {
        (0..self.event_count()).find(|&id| self.event_name(id) == Some(name))
    }
    /// The index of field `name` of event `id`.
    fn field_index(&self, id: u32, name: &str) -> Option<usize> {
        (0..self.field_count(id)).find(|&i| self.field_name(id, i) == Some(name))
    }
}

/// One payload field of one event, as a mapper reads it ([`Payload::uint`]):
/// its index, and where it lies if it is an integer at a fixed offset.
/// Resolved once per trace ([`class`]), so that a record's read is a
/// load from the bytes, not a look-up of the field's place first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    fixed: FixedInt,
    index: u32,
}

impl Field {
    /// Field `index`, placed as `fixed` says ([`FixedInt::NONE`]: read
    /// through the source's [`Fields`] only).
    pub const fn new(index: usize, fixed: FixedInt) -> Field {
        Field { fixed, index: index as u32 }
    }

    /// Its index in the event's payload.
    pub const fn index(self) -> usize {
        self.index as usize
    }
}

/// Looks up event `event` and its fields `fields` (by name, so a source
/// may add or reorder fields): `None` unless all are there.
///
/// ```
/// # use hvtrace_model::{class, Catalog, Field, FixedInt};
/// # struct C;
/// # impl Catalog for C {
/// #     fn event_count(&self) -> u32 { 1 }
/// #     fn event_name(&self, id: u32) -> Option<&str> { (id == 0).then_some("vm_exit") }
/// #     fn field_count(&self, _: u32) -> usize { 2 }
/// #     fn field_name(&self, _: u32, i: usize) -> Option<&str> { ["vcpu", "reason"].get(i).copied() }
/// #     fn enum_labels(&self, _: u32, _: usize) -> Vec<(i64, String)> { vec![] }
/// # }
/// let unplaced = |i| Field::new(i, FixedInt::NONE);
/// assert_eq!(class(&C, "vm_exit", ["reason", "vcpu"]), Some((0, [unplaced(1), unplaced(0)])));
/// assert_eq!(class(&C, "vm_exit", ["rip"]), None);
/// ```
pub fn class<const N: usize>(catalog: &dyn Catalog, event: &str, fields: [&str; N]) -> Option<(u32, [Field; N])> {
    let id = catalog.event_id(event)?;
    let mut at = [Field::new(0, FixedInt::NONE); N];
    for (slot, name) in at.iter_mut().zip(fields) {
        let i = catalog.field_index(id, name)?;
        *slot = Field::new(i, catalog.fixed_int(id, i));
    }
    Some((id, at))
}

/// An enumeration field's labels, by value: how a mapper names exit
/// reasons and hypercalls from the trace's own metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    sorted: Vec<(i64, String)>,
    /// `dense[v]`: 1 + index in `sorted` of small value `v` (0: none), so
    /// the per-record lookup is one load.
    dense: Vec<u32>,
}

/// Values below this are looked up directly.
const DENSE: i64 = 4096;

impl Labels {
    /// The labels of field `field` of event `id` (none if it is not an enumeration).
    pub fn of(catalog: &dyn Catalog, id: u32, field: Field) -> Labels {
        let mut sorted = catalog.enum_labels(id, field.index());
        sorted.sort();
        let top = sorted.iter().map(|(v, _)| *v).filter(|v| (0..DENSE).contains(v)).max();
        let mut dense = vec![0; top.map_or(0, |t| t as usize + 1)];
        for (i, (v, _)) in sorted.iter().enumerate().rev() {
            if (0..DENSE).contains(v) {
                dense[*v as usize] = i as u32 + 1;
            }
        }
        Labels { sorted, dense }
    }

    /// The label of `value`.
    #[inline]
    pub fn get(&self, value: i64) -> Option<&str> {
        let i = match usize::try_from(value).ok().and_then(|v| self.dense.get(v)) {
            Some(0) => return None,
            Some(i) => *i as usize - 1,
            None => self.sorted.binary_search_by_key(&value, |(v, _)| *v).ok()?,
        };
        Some(&self.sorted[i].1)
    }
}

/// A record's payload fields, by index, as a mapping reads them. The CTF
/// reader implements it over values decoded in place; an importer can use
/// a slice of [`FieldValue`]s.
pub trait Fields<'r> {
    /// Field `i` as an unsigned integer: unsigned and enumeration fields as
    /// they are, signed ones as their two's complement bits. `None` if there
    /// is no such field or it is not an integer.
    fn uint(&self, i: usize) -> Option<u64>;
    /// Field `i` as a signed integer (unsigned ones reinterpreted).
    fn int(&self, i: usize) -> Option<i64> {
        self.uint(i).map(|u| u as i64)
    }
    /// Field `i` as bytes: a string without its NUL, or a byte array.
    fn bytes(&self, i: usize) -> Option<&'r [u8]>;
}

/// One field value, for sources that have their values at hand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldValue<'r> {
    /// An integer or enumeration value (two's complement bits if signed).
    Int(u64),
    /// A string or byte array.
    Bytes(&'r [u8]),
}

impl<'r, const N: usize> Fields<'r> for [FieldValue<'r>; N] {
    fn uint(&self, i: usize) -> Option<u64> {
        self[..].uint(i)
    }
    fn bytes(&self, i: usize) -> Option<&'r [u8]> {
        self[..].bytes(i)
    }
}

impl<'r> Fields<'r> for [FieldValue<'r>] {
    fn uint(&self, i: usize) -> Option<u64> {
        match self.get(i)? {
            FieldValue::Int(v) => Some(*v),
            FieldValue::Bytes(_) => None,
        }
    }
    fn bytes(&self, i: usize) -> Option<&'r [u8]> {
        match self.get(i)? {
            FieldValue::Bytes(b) => Some(b),
            FieldValue::Int(_) => None,
        }
    }
}

/// Where an integer (or enumeration) field lies in a record's payload when
/// every field before it has a fixed size, so that it is read without a
/// look at the others. The CTF reader makes one per field from the trace's
/// metadata; [`FixedInt::NONE`] stands for any other field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedInt {
    /// The bits of the field in the 8 bytes loaded from its offset (0 for
    /// [`FixedInt::NONE`]).
    mask: u64,
    /// Its sign bit if signed, else 0: `((x ^ sign) - sign)` sign-extends
    /// `x` or leaves it as it is, without a branch.
    sign: u64,
    /// Offset of its last byte + 1 (`u64::MAX` for [`FixedInt::NONE`]:
    /// longer than any payload, so that one test rules it out).
    end: u64,
    /// Byte offset in the payload.
    at: u32,
}

impl FixedInt {
    /// Not a fixed-offset integer: reads nothing.
    pub const NONE: FixedInt = FixedInt { mask: 0, sign: 0, end: u64::MAX, at: 0 };

    /// An integer of `bits` (8, 16, 32 or 64; [`FixedInt::NONE`] for any
    /// other width), little-endian, at byte `at` of the payload.
    pub const fn new(at: u32, bits: u8, signed: bool) -> FixedInt {
        match bits {
            8 | 16 | 32 | 64 => FixedInt {
                mask: u64::MAX >> (64 - bits as u32),
                sign: if signed { 1 << (bits - 1) } else { 0 },
                end: at as u64 + bits as u64 / 8,
                at,
            },
            _ => FixedInt::NONE,
        }
    }

    /// The field's value (two's complement bits if signed) in a payload of
    /// `len` bytes at the start of `bytes`; `None` if it does not fit in
    /// `len`. `bytes` may run on past the payload (to its packet's end):
    /// then the read is one 8-byte load, a mask and a sign extension,
    /// where a payload's own end would cut most loads of its last fields
    /// short.
    #[inline(always)]
    pub fn read(self, bytes: &[u8], len: usize) -> Option<u64> {
        if self.end > len as u64 {
            return None;
        }
        let at = self.at as usize;
        let raw = match bytes.get(at..at + 8) {
            Some(b) => u64::from_le_bytes(b.try_into().ok()?),
            None => {
                let mut b = [0; 8];
                let n = (self.end - self.at as u64) as usize;
                b[..n].copy_from_slice(bytes.get(at..at + n)?);
                u64::from_le_bytes(b)
            }
        };
        Some(((raw & self.mask) ^ self.sign).wrapping_sub(self.sign))
    }
}

/// One record's payload as a [`Mapper`] reads it: integers at a fixed
/// offset ([`Field`]) straight from the bytes, in the mapper's own code
/// (a call through [`Fields`] per field read was 15 % of `hvtrace
/// analyze`'s instructions), anything else through the source's
/// [`Fields`]. A source with its values at hand passes those alone
/// ([`Payload::of`]).
#[derive(Clone, Copy)]
pub struct Payload<'r, 'a> {
    /// The payload, and what follows it in its packet.
    bytes: &'r [u8],
    /// The payload's length.
    len: usize,
    rest: &'a dyn Fields<'r>,
}

impl<'r, 'a> Payload<'r, 'a> {
    /// A payload of `len` bytes at the start of `bytes` (which may run on
    /// to the end of its packet), its fields placed as the [`Catalog`]
    /// the mapper was bound with says ([`Catalog::fixed_int`]), the others
    /// read from `rest`.
    #[inline]
    pub fn new(bytes: &'r [u8], len: usize, rest: &'a dyn Fields<'r>) -> Payload<'r, 'a> {
        Payload { bytes, len, rest }
    }

    /// A payload whose every field is read from `fields`.
    pub fn of(fields: &'a dyn Fields<'r>) -> Payload<'r, 'a> {
        Payload { bytes: &[], len: 0, rest: fields }
    }

    /// Field `f` as [`Fields::uint`] reads it.
    #[inline(always)]
    pub fn uint(&self, f: Field) -> Option<u64> {
        match f.fixed.read(self.bytes, self.len) {
            Some(v) => Some(v),
            None => self.rest.uint(f.index()),
        }
    }

    /// Field `f` as [`Fields::int`] reads it.
    #[inline]
    pub fn int(&self, f: Field) -> Option<i64> {
        self.uint(f).map(|u| u as i64)
    }

    /// Field `f` as [`Fields::bytes`] reads it.
    #[inline]
    pub fn bytes(&self, f: Field) -> Option<&'r [u8]> {
        self.rest.bytes(f.index())
    }
}

impl core::fmt::Debug for Payload<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Payload").field("bytes", &&self.bytes[..self.len.min(self.bytes.len())]).finish_non_exhaustive()
    }
}

/// An event set's mapping onto the model, declared next to the event set.
pub trait Mapping: Sync {
    /// The event set's name (`kvm`, `xen`, …), for messages.
    fn name(&self) -> &'static str;
    /// Binds to one trace: finds this set's events in `catalog` (by name
    /// and field names) and returns the mapper for it, or `None` when the
    /// trace does not hold this set's events.
    fn bind(&self, catalog: &dyn Catalog) -> Option<Box<dyn Mapper>>;
}

/// A mapping bound to one trace's event ids.
pub trait Mapper: Send + Sync {
    /// Whether records of event `id` map to anything (the others are only
    /// counted by the generic analyses, and never decoded).
    fn maps(&self, id: u32) -> bool;
    /// Pushes the model events of one record of event `id` onto `out`
    /// (none, one, or several: a switch is two runstate changes). A
    /// buffer, not a callback: the caller goes through the events in its
    /// own code, where a call through `dyn FnMut` per event cost ~25
    /// instructions and the registers `map` saved around it.
    fn map<'m>(&'m self, id: u32, fields: &Payload<'_, '_>, out: &mut Vec<Event<'m>>);
    /// Whether what a record maps to depends on records before it (a
    /// thread learnt to be a vCPU): then the trace must be mapped in order,
    /// by one walk, not in time windows read apart.
    fn learns(&self) -> bool {
        false
    }
}

/// The mappings bound to one trace: for each event id, the first mapper
/// that maps it. Several sets may share a trace (the VMM's events beside
/// the kernel's).
pub struct Bindings {
    mappers: Vec<(&'static str, Box<dyn Mapper>)>,
    by_id: Vec<Option<u16>>,
}

impl Bindings {
    /// Binds every mapping of `mappings` that recognises the trace.
    pub fn bind(mappings: &[&dyn Mapping], catalog: &dyn Catalog) -> Bindings {
        let mappers: Vec<_> = mappings.iter().filter_map(|m| Some((m.name(), m.bind(catalog)?))).collect();
        let by_id = (0..catalog.event_count())
            .map(|id| mappers.iter().position(|(_, m)| m.maps(id)).map(|i| i as u16))
            .collect();
        Bindings { mappers, by_id }
    }

    /// Names of the event sets that bound.
    pub fn names(&self) -> Vec<&'static str> {
        self.mappers.iter().map(|(n, _)| *n).collect()
    }

    /// Whether a mapper learns from the records it maps ([`Mapper::learns`]).
    pub fn learns(&self) -> bool {
        self.mappers.iter().any(|(_, m)| m.learns())
    }

    /// Whether any record maps to anything.
    pub fn is_empty(&self) -> bool {
        self.by_id.iter().all(Option::is_none)
    }

    /// Whether records of event `id` map to anything.
    #[inline]
    pub fn maps(&self, id: u32) -> bool {
        matches!(self.by_id.get(id as usize), Some(Some(_)))
    }

    /// Maps one record of event `id` whose fields are at hand onto `out`
    /// (nothing if no mapper takes it).
    pub fn map<'m>(&'m self, id: u32, fields: &dyn Fields<'_>, out: &mut Vec<Event<'m>>) {
        self.map_payload(id, &Payload::of(fields), out);
    }

    /// Maps one record of event `id` onto `out`; returns whether a mapper took it.
    #[inline]
    pub fn map_payload<'m>(&'m self, id: u32, payload: &Payload<'_, '_>, out: &mut Vec<Event<'m>>) -> bool {
        match self.by_id.get(id as usize) {
            Some(Some(i)) => {
                self.mappers[*i as usize].1.map(id, payload, out);
                true
            }
            _ => false,
        }
    }
}

/// The fields of an optional class (as [`class`] returns it for an
/// event a set may lack), if record id `id` is that class.
pub fn hit<const N: usize>(class: Option<(u32, [Field; N])>, id: u32) -> Option<[Field; N]> {
    class.filter(|c| c.0 == id).map(|c| c.1)
}
