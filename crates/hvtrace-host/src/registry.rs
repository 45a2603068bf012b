//! Event classes declared while the host runs (a device added, a module
//! loaded, a `tracing` callsite seen): each gets the next id after the
//! host's static set, and its TSDL block is appended to the live channel's
//! metadata log, which an attached consumer follows. Registration takes a
//! lock; recording never does: a writer records with the `u32` id it was
//! handed, as for a static class.

use std::fmt;

use hvtrace_core::metadata::write_event;
use hvtrace_core::{EventDesc, FieldDesc, FieldKind};

/// Most event classes a host may have, static and registered together.
/// Ids above 30 take the 12-byte extended header, whose id is a `u32`; the
/// bound keeps the metadata and the memory kept for names finite.
pub const MAX_EVENT_CLASSES: u32 = 4096;

/// Most bytes of TSDL the registered classes may add to the metadata: each
/// channel's metadata log has room for them beside the static set, and
/// stays under what a consumer maps (`hvtrace_proto::MAX_METADATA_LEN`,
/// 4 MiB): the whole id space of classes of a few fields (357 bytes for
/// three `u32`s), or some 750 of 30 integer fields (2.8 KB each).
pub const MAX_REGISTERED_TSDL: usize = 2 << 20;

/// Why a class could not be registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// Every id up to [`MAX_EVENT_CLASSES`] is taken.
    Full {
        /// The bound that was reached.
        max: u32,
    },
    /// The registered classes' TSDL would pass [`MAX_REGISTERED_TSDL`].
    MetadataFull {
        /// The bound, in bytes.
        max_bytes: usize,
    },
    /// The event name is empty or holds a NUL.
    BadName(String),
    /// A field name is not an identifier (TSDL requires one).
    BadField(String),
    /// Two fields share a name.
    DuplicateField(String),
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::Full { max } => write!(f, "no event id left: a host has at most {max} event classes"),
            RegisterError::MetadataFull { max_bytes } => {
                write!(f, "no metadata room left: registered classes may add at most {max_bytes} bytes of TSDL")
            }
            RegisterError::BadName(n) => write!(f, "event name {n:?} is empty or holds a NUL"),
            RegisterError::BadField(n) => write!(f, "field name {n:?} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)"),
            RegisterError::DuplicateField(n) => write!(f, "field {n:?} appears twice"),
        }
    }
}

impl std::error::Error for RegisterError {}

fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The classes registered after the static set, in id order.
pub(crate) struct Registry {
    static_len: u32,
    added: Vec<EventDesc>,
    tsdl_bytes: usize,
    max_classes: u32,
    max_bytes: usize,
}

impl Registry {
    pub(crate) fn new(static_events: &[EventDesc]) -> Registry {
        Registry::with_bounds(static_events, MAX_EVENT_CLASSES, MAX_REGISTERED_TSDL)
    }

    fn with_bounds(static_events: &[EventDesc], max_classes: u32, max_bytes: usize) -> Registry {
        Registry { static_len: static_events.len() as u32, added: Vec::new(), tsdl_bytes: 0, max_classes, max_bytes }
    }

    /// TSDL blocks of the registered classes, for a new channel's metadata.
    pub(crate) fn write_classes(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        for (i, ev) in self.added.iter().enumerate() {
            let fields = ev.fields.iter().map(|f| (f.name, f.kind));
            write_event(w, self.static_len + i as u32, ev.name, fields)?;
        }
        Ok(())
    }

    /// How many classes were registered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.added.len()
    }

    /// Bytes of TSDL that may still be registered: the room a new channel's
    /// metadata log keeps for them.
    pub(crate) fn room(&self) -> usize {
        self.max_bytes.saturating_sub(self.tsdl_bytes)
    }

    /// Checks a class, has `publish` put its TSDL block where consumers
    /// read it, and only if that worked takes the id: a refused class (bad
    /// name, a bound, `publish` failing) takes nothing. Returns the id.
    pub(crate) fn add(
        &mut self,
        name: &str,
        fields: &[(&str, FieldKind)],
        publish: impl FnOnce(&str) -> Result<(), RegisterError>,
    ) -> Result<u32, RegisterError> {
        let id = self.static_len + self.added.len() as u32;
        if id >= self.max_classes {
            return Err(RegisterError::Full { max: self.max_classes });
        }
        if name.is_empty() || name.contains('\0') {
            return Err(RegisterError::BadName(name.into()));
        }
        for (i, (f, _)) in fields.iter().enumerate() {
            if !is_identifier(f) {
                return Err(RegisterError::BadField((*f).into()));
            }
            if fields[..i].iter().any(|(g, _)| g == f) {
                return Err(RegisterError::DuplicateField((*f).into()));
            }
        }
        let mut block = String::new();
        write_event(&mut block, id, name, fields.iter().copied()).expect("formatting into a String cannot fail");
        if self.tsdl_bytes + block.len() > self.max_bytes {
            return Err(RegisterError::MetadataFull { max_bytes: self.max_bytes });
        }
        publish(&block)?;
        // Descriptions are `'static` (the static sets' are): the names are
        // leaked, within the bounds above, and only once the class is taken.
        let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
        let owned: Vec<FieldDesc> = fields.iter().map(|(n, kind)| FieldDesc { name: leak(n), kind: *kind }).collect();
        let ev = EventDesc { name: leak(name), fields: Box::leak(owned.into_boxed_slice()) };
        self.added.push(ev);
        self.tsdl_bytes += block.len();
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U32: FieldKind = FieldKind::Int { bits: 32, signed: false, hex: false };

    impl Registry {
        /// `add` with nowhere to publish (no channel).
        fn add_only(&mut self, name: &str, fields: &[(&str, FieldKind)]) -> Result<u32, RegisterError> {
            self.add(name, fields, |_| Ok(()))
        }
    }

    #[test]
    fn ids_follow_the_static_set_and_stop_at_the_bound() {
        let stat = [EventDesc { name: "a", fields: &[] }, EventDesc { name: "b", fields: &[] }];
        let mut r = Registry::with_bounds(&stat, MAX_EVENT_CLASSES, usize::MAX);
        assert_eq!(r.add_only("c", &[("x", U32)]), Ok(2));
        for want in 3..MAX_EVENT_CLASSES {
            assert_eq!(r.add_only("more", &[]), Ok(want));
        }
        assert_eq!(r.add_only("one_too_many", &[]), Err(RegisterError::Full { max: MAX_EVENT_CLASSES }));
        assert_eq!(r.len() as u32, MAX_EVENT_CLASSES - 2);
    }

    #[test]
    fn the_tsdl_budget_is_kept_and_a_refused_class_takes_no_id() {
        const BUDGET: usize = 32 * 1024;
        let mut r = Registry::with_bounds(&[], MAX_EVENT_CLASSES, BUDGET);
        let mut total = 0;
        let mut next = 0;
        let err = loop {
            let mut published = String::new();
            match r.add("class", &[("x", U32), ("y", FieldKind::Str)], |b| {
                published = b.to_string();
                Ok(())
            }) {
                Ok(id) => {
                    assert_eq!(id, next);
                    assert!(published.contains(&format!("id = {id};")), "{published}");
                    total += published.len();
                    next += 1;
                    assert_eq!(r.room(), BUDGET - total);
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err, RegisterError::MetadataFull { max_bytes: BUDGET });
        assert!(total <= BUDGET && total + 200 > BUDGET, "{total}");
        // The refused class took no id, and the metadata holds what was taken.
        assert_eq!(r.len() as u32, next);
        let mut all = String::new();
        r.write_classes(&mut all).unwrap();
        assert_eq!(all.len(), total);
    }

    #[test]
    fn bad_names_are_refused_and_take_no_id() {
        let mut r = Registry::new(&[]);
        assert_eq!(r.add_only("", &[]), Err(RegisterError::BadName("".into())));
        assert_eq!(r.add_only("a\0b", &[]), Err(RegisterError::BadName("a\0b".into())));
        assert_eq!(r.add_only("e", &[("1x", U32)]), Err(RegisterError::BadField("1x".into())));
        assert_eq!(r.add_only("e", &[("a b", U32)]), Err(RegisterError::BadField("a b".into())));
        assert_eq!(r.add_only("e", &[("x", U32), ("x", U32)]), Err(RegisterError::DuplicateField("x".into())));
        assert_eq!(r.add_only("e \"quoted\"", &[("_x9", U32)]), Ok(0));
        assert_eq!(r.add_only("f", &[]), Ok(1));
    }

    #[test]
    fn a_class_its_channel_could_not_publish_takes_no_id() {
        let mut r = Registry::new(&[]);
        let full = RegisterError::MetadataFull { max_bytes: 7 };
        assert_eq!(r.add("a", &[], |_| Err(full.clone())), Err(full));
        assert_eq!((r.len(), r.room()), (0, MAX_REGISTERED_TSDL));
        assert_eq!(r.add_only("b", &[]), Ok(0));
    }
}
