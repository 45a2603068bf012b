//! The kernel's half of a KVM trace, through ftrace.
//!
//! On KVM the hypervisor is split: the kernel handles most VM exits itself
//! and returns to the VMM only for the rest. KVM's tracepoints show the
//! kernel's half; this crate records them into the same CTF trace as the
//! VMM's rings, on the same clock, so one trace shows both:
//!
//! | module | what |
//! |---|---|
//! | [`tracefs`] | a private tracefs instance: events, `set_event_pid` + `event-fork`, `trace_clock`, removal (and of stale ones) |
//! | [`format`] | an event's `format` file → the layout of its records |
//! | [`page`] | an ftrace ring-buffer page → timestamped records and lost counts (bounds-checked) |
//! | [`convert`] | records → CTF event classes (TSDL) and packets of stream class 1 |
//! | [`model`] | the kernel's KVM events on the hypervisor model (`hvtrace-model`) |
//! | [`record`] | the reader: per-CPU `trace_pipe_raw` woken by `epoll`, one stream file per CPU |
//!
//! The kernel's ring buffer is the seed's design inside Linux: per-CPU
//! buffers of pages, a reader sleeping until a page is there. The reader here
//! reads it the same way hvtrace's consumer reads hvtrace's rings.

use std::io;

pub mod convert;
pub mod format;
pub mod model;
pub mod page;
pub mod record;
pub mod tracefs;

pub use convert::{EventTable, KernelStream, StreamCounts, KERNEL_STREAM_ID, METADATA_MARKER};
pub use model::MAPPING;
pub use record::{stream_file_name, CpuReport, KernelRecorder, KernelReport, KernelSource, STREAM_PREFIX};
pub use tracefs::{CpuStats, Instance, InstanceConfig, TraceClock, DEFAULT_EVENTS};

/// Why the kernel's events cannot be recorded.
#[derive(Debug, thiserror::Error)]
pub enum FtraceError {
    /// Tracefs is absent or cannot be mounted.
    #[error("no tracefs: {0}")]
    NoTracefs(String),
    /// Root (CAP_SYS_ADMIN) is needed.
    #[error("{what} is not permitted: recording kernel events needs root")]
    NotPermitted {
        /// What was refused.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// An event specification the kernel does not know.
    #[error("unknown kernel event `{0}` (see /sys/kernel/tracing/available_events)")]
    UnknownEvent(String),
    /// No event is enabled.
    #[error("no kernel event is enabled")]
    NoEvents,
    /// The traced process does not exist.
    #[error("no process {pid} to trace")]
    NoProcess {
        /// The pid.
        pid: u32,
        /// The error.
        source: io::Error,
    },
    /// A format file this crate cannot read.
    #[error("format of {event}, line {line}: {why}")]
    Format {
        /// `system:name`.
        event: String,
        /// Line number (0: the whole file).
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// An I/O error on tracefs or the trace directory.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The reader thread panicked (a bug).
    #[error("the kernel reader thread panicked")]
    ReaderPanicked,
}

impl FtraceError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> FtraceError {
        move |source| FtraceError::Io { what: what.to_string(), source }
    }
}
