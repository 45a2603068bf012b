//! Event declarations: one [`events!`](crate::events) block declares a set of
//! events with typed fields and yields, for each, its id, a recording
//! function (the encoder) and its description (from which the CTF metadata
//! is rendered). Adding an event is adding one line to the block.

use crate::field::FieldKind;
use crate::ring::{Clock, Encoder, RecordError, Ring, RingOwner};

/// One field of an event class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldDesc {
    /// Field name (a Rust identifier).
    pub name: &'static str,
    /// Wire type.
    pub kind: FieldKind,
}

/// One event class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventDesc {
    /// Event name as readers show it.
    pub name: &'static str,
    /// Payload fields in order.
    pub fields: &'static [FieldDesc],
}

/// A declared set of events; ids are positions in [`EventSet::EVENTS`].
/// Declare the most frequent events first: ids up to 30 get the 4-byte header.
pub trait EventSet {
    /// Short name of the set (e.g. `xen`), recorded in the metadata.
    const NAME: &'static str;
    /// The event classes, in id order.
    const EVENTS: &'static [EventDesc];
}

/// Where recording functions write: a channel's current ring, a test ring…
pub trait Sink {
    /// Records event `id` whose payload is `len` bytes written by `fill`.
    /// Every error but [`RecordError::Closed`] is a loss the sink has counted.
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError>;
}

/// A ring with a clock: the simplest [`Sink`] (no wake-up on delivery).
pub struct RingSink<'r, 'a, C: Clock> {
    /// The ring written to.
    pub ring: &'r Ring<'a>,
    /// The timestamp source.
    pub clock: C,
}

impl<C: Clock> Sink for RingSink<'_, '_, C> {
    #[inline]
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        self.ring.record(&self.clock, id, len, fill).map(|_delivered| ())
    }
}

/// A [`Sink`] over the single writer of an owned ring (see [`RingOwner`]).
pub struct OwnerSink<'o, 'r, 'a, C: Clock> {
    /// The owner handle written through.
    pub owner: &'o RingOwner<'r, 'a>,
    /// The timestamp source.
    pub clock: C,
}

impl<C: Clock> Sink for OwnerSink<'_, '_, '_, C> {
    #[inline]
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        self.owner.record(&self.clock, id, len, fill).map(|_delivered| ())
    }
}

/// Declares a set of events.
///
/// ```
/// hvtrace_core::events! {
///     /// Events of a tiny VMM.
///     pub mod vmm ("vmm") {
///         /// A VM exit.
///         fn vm_exit(vcpu: u32, reason: u32, rip: u64);
///         /// A line of guest console output.
///         fn console(vcpu: u32, text: &str);
///     }
/// }
/// # use hvtrace_core::EventSet;
/// assert_eq!(vmm::Events::EVENTS[1].name, "console");
/// assert_eq!(vmm::Id::console as u32, 1);
/// ```
///
/// This expands to a module with `Id` (the event ids), `Events` (the
/// [`EventSet`]) and one function per event, `vm_exit(sink, vcpu, reason,
/// rip) -> Result<(), RecordError>`, that encodes the payload straight into
/// the ring.
#[macro_export]
macro_rules! events {
    (
        $(#[$set_meta:meta])*
        $vis:vis mod $set:ident ($set_name:literal) {
            $(
                $(#[$meta:meta])*
                fn $name:ident ( $( $field:ident : $ty:ty ),* $(,)? );
            )*
        }
    ) => {
        $(#[$set_meta])*
        #[allow(clippy::too_many_arguments)]
        $vis mod $set {
            #[allow(unused_imports)]
            use super::*;

            /// Event ids, in declaration order.
            #[allow(non_camel_case_types)]
            #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
            #[repr(u32)]
            pub enum Id { $( $(#[$meta])* $name ),* }

            /// The event set, for metadata rendering.
            pub struct Events;

            impl $crate::event::EventSet for Events {
                const NAME: &'static str = $set_name;
                const EVENTS: &'static [$crate::event::EventDesc] = &[
                    $( $crate::event::EventDesc {
                        name: stringify!($name),
                        fields: &[ $( $crate::event::FieldDesc {
                            name: stringify!($field),
                            kind: <$ty as $crate::field::Field>::KIND,
                        } ),* ],
                    } ),*
                ];
            }

            $(
                $(#[$meta])*
                #[inline]
                pub fn $name<S: $crate::event::Sink + ?Sized>(
                    sink: &S $(, $field: $ty)*
                ) -> ::core::result::Result<(), $crate::ring::RecordError> {
                    let len = 0 $( + $crate::field::Field::encoded_len(&$field) )*;
                    // Inlined into each record path that calls it, where
                    // the payload length is known: no bounds checks left.
                    sink.record(Id::$name as u32, len, #[inline(always)] |_e: &mut $crate::ring::Encoder<'_>| {
                        $( $crate::field::Field::encode(&$field, _e); )*
                    })
                }
            )*
        }
    };
}
