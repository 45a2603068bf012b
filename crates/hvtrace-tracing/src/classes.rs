//! The callsite table: from a callsite (its `&'static Metadata`'s address)
//! to its event class, looked up without a lock on every event.
//!
//! An open-addressed table of fixed size, filled only under the
//! registration lock (insert-only, never resized, never emptied), read by
//! any thread with one Acquire load per probe. A callsite's class is set
//! once ([`OnceLock`]) when the host has given it an id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use hvtrace_core::field::FieldKind;

use crate::encode::{Shape, Ty};

/// Slots in the table: twice the host's bound on event classes
/// ([`hvtrace_host::MAX_EVENT_CLASSES`]), so probes stay short while every
/// class a host can hold has a slot.
const SLOTS: usize = 2 * hvtrace_host::MAX_EVENT_CLASSES as usize;

/// A callsite's event class.
pub(crate) struct Class {
    /// The host's id, or `None` if the host refused the class (id space or
    /// metadata budget exhausted, a name it cannot take): a refusal is final.
    pub(crate) id: Option<u32>,
    /// Types of the callsite's fields, in `FieldSet` order.
    pub(crate) types: Box<[Ty]>,
    /// How its events are encoded.
    pub(crate) shape: Shape,
}

/// One callsite's entry.
pub(crate) struct Slot {
    /// The callsite's key; 0 while the slot is free.
    key: AtomicUsize,
    /// Set once registered (or refused for good).
    pub(crate) class: OnceLock<Class>,
}

/// The table.
pub(crate) struct Callsites {
    slots: Box<[Slot]>,
    /// Held to insert a slot or register a class (cold); holds the class
    /// names taken.
    lock: Mutex<Names>,
}

/// The class names a layer has taken, each with its fields.
#[derive(Default)]
pub(crate) struct Names(HashMap<String, Vec<(String, FieldKind)>>);

impl Names {
    /// A class name for `base` and `fields`: `base` if it is free or taken
    /// by a class of the same fields (names and types), else `base#2`,
    /// `base#3`, … Two callsites share a name when the user gave it to both
    /// (`event!(name: "vm_exit", ...)` at four places): one kind of event,
    /// which a reader groups by name. Two callsites whose fields differ
    /// never do, though they may share a target, a name and so `tracing`'s
    /// default name `event FILE:LINE` (two events on one line): a name has
    /// one layout in a trace.
    pub(crate) fn unique(&mut self, base: String, fields: &[(&str, FieldKind)]) -> String {
        let same =
            |have: &Vec<(String, FieldKind)>| have.iter().map(|(n, k)| (n.as_str(), *k)).eq(fields.iter().copied());
        let mut name = base.clone();
        let mut n = 2;
        loop {
            match self.0.get(&name) {
                Some(have) if same(have) => return name,
                Some(_) => {
                    name = format!("{base}#{n}");
                    n += 1;
                }
                None => break,
            }
        }
        self.0.insert(name.clone(), fields.iter().map(|(n, k)| (n.to_string(), *k)).collect());
        name
    }
}

/// A pointer's address spread over the table's index bits (Fibonacci hashing).
#[inline]
fn home(key: usize) -> usize {
    (key as u64 >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) as usize >> (usize::BITS - SLOTS.trailing_zeros())
}

impl Callsites {
    pub(crate) fn new() -> Callsites {
        let slots = (0..SLOTS).map(|_| Slot { key: AtomicUsize::new(0), class: OnceLock::new() }).collect();
        Callsites { slots, lock: Mutex::new(Names::default()) }
    }

    /// The slot of `key` (nonzero), if it has one. Lock-free.
    #[inline]
    pub(crate) fn find(&self, key: usize) -> Option<&Slot> {
        let mut i = home(key);
        for _ in 0..SLOTS {
            let s = &self.slots[i];
            // Acquire: pairs with the Release store in `insert`.
            match s.key.load(Ordering::Acquire) {
                k if k == key => return Some(s),
                0 => return None,
                _ => i = (i + 1) & (SLOTS - 1),
            }
        }
        None
    }

    /// Takes the registration lock (a poisoned lock is taken all the same:
    /// the table is never left half-written, a slot is published last).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Names> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of `key`, inserted if new; `None` when the table is full.
    /// Call with the lock held.
    pub(crate) fn insert(&self, _held: &MutexGuard<'_, Names>, key: usize) -> Option<&Slot> {
        let mut i = home(key);
        for _ in 0..SLOTS {
            let s = &self.slots[i];
            match s.key.load(Ordering::Relaxed) {
                k if k == key => return Some(s),
                0 => {
                    // Release: pairs with `find`'s Acquire load. The slot's
                    // other words are synchronised on their own.
                    s.key.store(key, Ordering::Release);
                    return Some(s);
                }
                _ => i = (i + 1) & (SLOTS - 1),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_after_insertion_and_the_table_says_when_it_is_full() {
        let t = Callsites::new();
        let g = t.lock();
        // Keys like metadata addresses: 8-aligned, close together (collide
        // in the low bits a naive hash would use).
        let keys: Vec<usize> = (1..=SLOTS).map(|k| 0x5555_0000 + 8 * k).collect();
        for &k in &keys {
            assert!(t.find(k).is_none());
            let s = t.insert(&g, k).expect("room left") as *const Slot;
            assert_eq!(t.insert(&g, k).unwrap() as *const Slot, s, "same key, same slot");
            assert_eq!(t.find(k).unwrap() as *const Slot, s);
        }
        assert!(t.insert(&g, 1).is_none(), "full");
        assert!(t.find(1).is_none());
        for &k in &keys {
            assert!(t.find(k).is_some(), "{k:#x} lost");
        }
    }
}
