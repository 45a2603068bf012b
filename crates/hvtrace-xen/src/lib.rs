//! # hvtrace-xen — xentrace files into CTF
//!
//! Xen users hold traces recorded by `xentrace` and read them with
//! `xenalyze`. This crate turns such a file into an hvtrace CTF 1.8 trace
//! (one stream per pCPU) that babeltrace2, Trace Compass and the hvtrace
//! tools read.
//!
//! * [`abi`] — the numbers of the format, from Xen's `public/trace.h` (MIT).
//! * [`parse`] — the bounded parser: windows and records, never a panic.
//! * [`classes`] — the CTF event classes and how records fill them.
//! * [`import`](mod@import) — the import itself and its report.
//! * [`model`] — the classes mapped onto the hypervisor model (`hvtrace-model`).
//! * [`gen`] — writes xentrace files of known content (tests, benchmarks).
//! * [`xenalyze`] — reads `xenalyze --summary`'s tables, for comparisons.
//!
//! How records map, in short: each `TRC_TRACE_CPU_CHANGE` window goes to
//! its pCPU's stream; a record without TSC takes its pCPU's last; wrap
//! fillers are skipped (counted); `TRC_LOST_RECORDS` becomes a
//! `lost_records` event and raises the next packet's `events_discarded`;
//! a record no class takes becomes `xen_raw`. See `docs/xentrace.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abi;
pub mod classes;
pub mod gen;
pub mod import;
pub mod model;
pub mod parse;
mod stream;
pub mod xenalyze;

pub use classes::{ClassId, Vendor};
pub use import::{import, import_file, CpuSummary, ImportError, ImportOptions, ImportReport, DEFAULT_CPU_HZ};
pub use model::{XentraceMapping, MAPPING};
pub use parse::{Cut, Damage, Item, Parser, Record, Step};
