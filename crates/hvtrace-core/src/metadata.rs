//! Renders the CTF 1.8 `metadata` file (TSDL) for a trace: trace and packet
//! layout, environment, clock, stream and every event class. Fields are
//! rendered one per line in a fixed form, which keeps the file easy to read
//! and to parse back (`hvtrace-reader` does).

use core::fmt::{self, Write};

use crate::event::EventDesc;
use crate::field::FieldKind;

/// The line after which a metadata file describes the kernel's streams
/// (stream class 1, written by `hvtrace-ftrace` from tracefs format files):
/// the VMM's part (stream class 0, rendered by [`render`]) comes before it.
pub const KERNEL_STREAMS_MARKER: &str =
    "/* hvtrace-ftrace: the kernel's events (stream 1), from tracefs format files */";

/// The line after the kernel's part (see [`KERNEL_STREAMS_MARKER`]) from
/// which the VMM's event classes (stream class 0) resume: those the host
/// registered while a consumer wrote the trace, appended as they came.
pub const VMM_CLASSES_RESUME_MARKER: &str =
    "/* hvtrace: the VMM's event classes registered during the session (stream 0) resume here */";

/// Prefix of the kernel's stream files (`kernel_<cpu>`, stream class 1).
pub const KERNEL_STREAM_PREFIX: &str = "kernel";

/// The timestamp source, as declared in the CTF clock block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockDesc<'a> {
    /// Clock name (an identifier, e.g. `tsc` or `monotonic`).
    pub name: &'a str,
    /// Human description.
    pub description: &'a str,
    /// Ticks per second.
    pub freq: u64,
    /// Seconds from the Unix epoch to tick 0.
    pub offset_s: i64,
    /// Additional ticks from the Unix epoch to tick 0 (less than `freq`).
    pub offset: u64,
    /// Uncertainty in ticks.
    pub precision: u64,
}

/// What the metadata says about the trace as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceDesc<'a> {
    /// Trace UUID, also in every packet header.
    pub uuid: [u8; 16],
    /// Machine the trace was recorded on.
    pub hostname: &'a str,
    /// What was traced (`xen-sim`, `kvm`, …).
    pub domain: &'a str,
    /// Tracer version string.
    pub tracer_version: (u32, u32, u32),
    /// Timestamp source.
    pub clock: ClockDesc<'a>,
}

/// Formats a UUID the way TSDL expects it.
pub struct Uuid<'a>(pub &'a [u8; 16]);

impl fmt::Display for Uuid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_char('-')?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Writes a TSDL string literal body with `"` and `\` escaped.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' | '\\' => write!(f, "\\{c}")?,
                c if c.is_control() => f.write_char(' ')?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn int_type(w: &mut dyn Write, bits: u8, signed: bool, hex: bool) -> fmt::Result {
    write!(
        w,
        "integer {{ size = {bits}; align = 8; signed = {}; byte_order = le; base = {}; }}",
        if signed { "true" } else { "false" },
        if hex { 16 } else { 10 }
    )
}

/// Writes one field declaration line (without indentation or newline).
pub fn write_field(w: &mut dyn Write, name: &str, kind: &FieldKind) -> fmt::Result {
    match kind {
        FieldKind::Int { bits, signed, hex } => {
            int_type(w, *bits, *signed, *hex)?;
            write!(w, " _{name};")
        }
        FieldKind::Float { bits } => {
            let (e, m) = if *bits == 32 { (8, 24) } else { (11, 53) };
            write!(w, "floating_point {{ exp_dig = {e}; mant_dig = {m}; align = 8; byte_order = le; }} _{name};")
        }
        FieldKind::Str => write!(w, "string {{ encoding = UTF8; }} _{name};"),
        FieldKind::Bytes => {
            int_type(w, 32, false, false)?;
            write!(w, " __{name}_length; ")?;
            int_type(w, 8, false, true)?;
            write!(w, " _{name}[__{name}_length];")
        }
        FieldKind::Enum { bits, signed, labels } => {
            w.write_str("enum : ")?;
            int_type(w, *bits, *signed, false)?;
            w.write_str(" {")?;
            for (i, l) in labels.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(w, "{sep}\"{}\" = {}", Escaped(l.label), l.value)?;
            }
            write!(w, " }} _{name};")
        }
    }
}

/// Renders the whole metadata file.
pub fn render(w: &mut dyn Write, trace: &TraceDesc<'_>, events: &[EventDesc]) -> fmt::Result {
    let c = &trace.clock;
    let (maj, min, patch) = trace.tracer_version;
    writeln!(w, "/* CTF 1.8 */")?;
    writeln!(w)?;
    writeln!(w, "typealias integer {{ size = 8; align = 8; signed = false; }} := uint8_t;")?;
    writeln!(w, "typealias integer {{ size = 32; align = 8; signed = false; }} := uint32_t;")?;
    writeln!(w, "typealias integer {{ size = 64; align = 8; signed = false; }} := uint64_t;")?;
    writeln!(w, "typealias integer {{ size = 5; align = 1; signed = false; }} := uint5_t;")?;
    writeln!(w)?;
    writeln!(w, "trace {{")?;
    writeln!(w, "\tmajor = 1;\n\tminor = 8;")?;
    writeln!(w, "\tuuid = \"{}\";", Uuid(&trace.uuid))?;
    writeln!(w, "\tbyte_order = le;")?;
    writeln!(w, "\tpacket.header := struct {{")?;
    writeln!(
        w,
        "\t\tuint32_t magic;\n\t\tuint8_t uuid[16];\n\t\tuint32_t stream_id;\n\t\tuint64_t stream_instance_id;"
    )?;
    writeln!(w, "\t}};\n}};\n")?;
    writeln!(w, "env {{")?;
    writeln!(w, "\thostname = \"{}\";", Escaped(trace.hostname))?;
    writeln!(w, "\tdomain = \"{}\";", Escaped(trace.domain))?;
    writeln!(w, "\ttracer_name = \"hvtrace\";")?;
    writeln!(w, "\ttracer_major = {maj};\n\ttracer_minor = {min};\n\ttracer_patchlevel = {patch};")?;
    writeln!(w, "}};\n")?;
    writeln!(w, "clock {{")?;
    writeln!(w, "\tname = \"{}\";", Escaped(c.name))?;
    writeln!(w, "\tuuid = \"{}\";", Uuid(&trace.uuid))?;
    writeln!(w, "\tdescription = \"{}\";", Escaped(c.description))?;
    writeln!(w, "\tfreq = {};\n\tprecision = {};", c.freq, c.precision)?;
    writeln!(w, "\toffset_s = {};\n\toffset = {};\n\tabsolute = FALSE;", c.offset_s, c.offset)?;
    writeln!(w, "}};\n")?;
    let clk = c.name;
    writeln!(
        w,
        "typealias integer {{ size = 27; align = 1; signed = false; map = clock.{clk}.value; }} := uint27_clock_t;"
    )?;
    writeln!(
        w,
        "typealias integer {{ size = 64; align = 8; signed = false; map = clock.{clk}.value; }} := uint64_clock_t;\n"
    )?;
    writeln!(w, "struct packet_context {{")?;
    writeln!(w, "\tuint64_clock_t timestamp_begin;\n\tuint64_t packet_seq_num;\n\tuint64_clock_t timestamp_end;")?;
    writeln!(w, "\tuint64_t content_size;\n\tuint64_t packet_size;\n\tuint64_t events_discarded;\n\tuint32_t cpu_id;")?;
    writeln!(w, "}};\n")?;
    writeln!(w, "struct event_header_compact {{")?;
    writeln!(w, "\tenum : uint5_t {{ compact = 0 ... 30, extended = 31 }} id;")?;
    writeln!(w, "\tvariant <id> {{")?;
    writeln!(w, "\t\tstruct {{ uint27_clock_t timestamp; }} compact;")?;
    writeln!(w, "\t\tstruct {{ uint32_t id; uint64_clock_t timestamp; }} extended;")?;
    writeln!(w, "\t}} v;\n}} align(8);\n")?;
    writeln!(w, "stream {{\n\tid = 0;")?;
    writeln!(w, "\tevent.header := struct event_header_compact;")?;
    writeln!(w, "\tpacket.context := struct packet_context;\n}};\n")?;
    for (id, ev) in events.iter().enumerate() {
        write_event(w, id as u32, ev.name, ev.fields.iter().map(|f| (f.name, f.kind)))?;
    }
    Ok(())
}

/// Writes one event class block. CTF 1.8 lets a trace's metadata grow by
/// such blocks appended to the end, which is how classes registered while
/// tracing reach readers.
pub fn write_event<'f>(
    w: &mut dyn Write,
    id: u32,
    name: &str,
    fields: impl IntoIterator<Item = (&'f str, FieldKind)>,
) -> fmt::Result {
    writeln!(w, "event {{\n\tname = \"{}\";\n\tid = {id};\n\tstream_id = 0;", Escaped(name))?;
    writeln!(w, "\tfields := struct {{")?;
    for (name, kind) in fields {
        w.write_str("\t\t")?;
        write_field(w, name, &kind)?;
        w.write_char('\n')?;
    }
    writeln!(w, "\t}};\n}};\n")
}
