//! # hvtrace-reader — reading hvtrace traces back
//!
//! * [`tsdl`] parses the CTF 1.8 metadata hvtrace writes (and only that
//!   shape) into a [`Metadata`] whose [`TraceSchema`] drives
//!   `hvtrace_core::decode`.
//! * [`TraceDir`] opens a trace directory; [`packets`] walks a stream
//!   file's packets, [`Packet::records`] their records, and
//!   `hvtrace_core::decode::Record::values` their fields.
//! * [`check`] / [`check_stream`] find damage (cut packets, flipped bytes,
//!   garbage) and missing packets (sequence gaps, judged with the
//!   consumer's [`account`]) with byte offsets; [`repair`] writes a copy that holds only
//!   the intact packets, which babeltrace2 reads.
//!
//! * [`PacketReader`] walks a stream's packets a window at a time, so the
//!   memory it needs does not grow with the file; [`Merge`] walks all the
//!   streams with it, records in timestamp order, losses reported and
//!   damage skipped with `check`'s walker: the one pass `hvtrace analyze`,
//!   `export` and `report` share; a [`Splitter`] cuts that walk into time
//!   windows to walk on several threads ([`Merge::between`]).
//! * The trace's [`TraceSchema`] is a `hvtrace_model::Catalog`, and
//!   [`RecordFields`] a record's `hvtrace_model::Fields`: what an event
//!   set's mapping onto the hypervisor model reads.
//!
//! `check` and `repair` read stream files into memory whole.
#![forbid(unsafe_code)]

pub mod account;
mod check;
mod dir;
mod merge;
mod model;
mod stream;
pub mod tsdl;
mod window;

pub use account::{Account, ACCOUNT};
pub use check::{
    check, check_kernel_stream, check_stream, repair, sequence_gaps, CheckReport, DirNote, Expect, OrderField,
    PacketSummary, Problem, ProblemKind, RepairReport, StreamCheck, StreamReport,
};
pub use dir::{
    packets, stream_cpu, Packet, PacketError, Packets, ReadError, StreamFile, TraceDir, INCOMPLETE, MAX_METADATA,
};
pub use merge::{Item, Merge, Order, Rec, StreamWalk};
pub use model::{Layouts, RecordFields};
pub use stream::PacketReader;
pub use tsdl::{EventClass, FieldClass, Label, Metadata, MetadataError, TraceSchema};
pub use window::{Mark, Splitter};
