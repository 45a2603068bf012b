//! # hvtrace-core — the producer core
//!
//! What a hypervisor runs for every event, and nothing else: per-CPU rings of
//! CTF 1.8 packets laid over memory the caller provides (a memfd mapping,
//! hypervisor pages, a test buffer), lock-free reserve/commit, declared
//! events with typed fields, and the CTF metadata that describes them.
//!
//! `#![no_std]`, no allocation, no syscall, no lock on the record path. The
//! host side (memfds, eventfds, control socket) is `hvtrace-host`.
//!
//! * [`layout`] — who owns which word of the shared memory.
//! * [`ring`] — reserve / commit / deliver and the consumer's read protocol.
//! * [`ctf`] — packet and event-header byte layout.
//! * [`field`], [`event`] — field types and the [`events!`] declaration macro.
//! * [`metadata`] — the TSDL text; [`decode`] — the inverse of the encoder.
//! * [`metalog`] — the TSDL text in shared memory, append-only, for classes
//!   registered while a consumer reads.
#![no_std]
#![warn(missing_docs)]

// loom's models need std (the witnesses of the sub-buffer bytes).
#[cfg(loom)]
extern crate std;

pub mod ctf;
pub mod decode;
pub mod event;
pub mod field;
pub mod layout;
pub mod metadata;
#[cfg(not(loom))]
pub mod metalog;
#[cfg(not(loom))]
mod region;
pub mod ring;
mod sync;

/// Deterministic interleaving hooks for tests (feature `test-hooks`).
#[cfg(all(feature = "test-hooks", not(loom)))]
pub use sync::hooks;
/// loom only: yield at a protocol point (see `sync::loom_yield`).
#[cfg(loom)]
pub use sync::loom_yield;
#[cfg(any(feature = "test-hooks", loom))]
pub use sync::HookPoint;
/// What loom sees of the ring's bytes.
#[cfg(loom)]
pub use sync::{SeenPiece, Witness};

pub use event::{EventDesc, EventSet, FieldDesc, OwnerSink, RingSink, Sink};
pub use field::{Field, FieldKind};
pub use layout::{Geometry, GeometryError, Mode};
pub use ring::{Clock, Encoder, Poll, RecordError, Ring, RingCounters, RingOwner, RingReader, StreamId};
