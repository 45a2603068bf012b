//! The TSDL parser reads back exactly what `metadata::render` writes, and
//! rejects anything else with an error, never a panic.

use hvtrace_core::decode::Schema;
use hvtrace_core::metadata::{render, ClockDesc, TraceDesc};
use hvtrace_core::FieldKind;
use hvtrace_core::{EventDesc, EventSet};
use hvtrace_reader::tsdl::parse;

hvtrace_core::ctf_enum! {
    /// A signed enum with awkward labels.
    pub enum Signed: i16 {
        /// Below zero.
        Minus = -3,
        /// Zero.
        Zero = 0,
        /// Large.
        Big = 30000,
    }
}

hvtrace_core::ctf_enum! {
    /// A wide unsigned enum.
    pub enum Wide: u64 {
        /// A.
        A = 0,
        /// B.
        B = 1,
    }
}

hvtrace_core::events! {
    /// Every field kind.
    pub mod all ("all") {
        /// Integers.
        fn ints(a: u8, b: u16, c: u32, d: u64, e: i8, f: i16, g: i32, h: i64);
        /// Floats.
        fn floats(x: f32, y: f64);
        /// Strings and bytes.
        fn text(s: &str, raw: &[u8], t: &str);
        /// Enums.
        fn enums(flag: bool, s: Signed, w: Wide);
        /// No fields.
        fn empty();
    }
}

fn desc(hostname: &'static str) -> TraceDesc<'static> {
    TraceDesc {
        uuid: [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 0xff],
        hostname,
        domain: "xen-sim",
        tracer_version: (0, 1, 7),
        clock: ClockDesc {
            name: "tsc",
            description: "invariant \"TSC\" \\ rdtsc",
            freq: 2_999_999_000,
            offset_s: 1_700_000_000,
            offset: 12345,
            precision: 42,
        },
    }
}

fn rendered(d: &TraceDesc<'_>, events: &[EventDesc]) -> String {
    let mut s = String::new();
    render(&mut s, d, events).unwrap();
    s
}

fn round_trip(events: &[EventDesc]) {
    let d = desc("host-1");
    let text = rendered(&d, events);
    let md = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(md.desc(), d);
    assert_eq!(md.schema.events.len(), events.len());
    for (id, (want, got)) in events.iter().zip(&md.schema.events).enumerate() {
        assert_eq!(got.name, want.name);
        assert_eq!(got.fields.len(), want.fields.len(), "{}", want.name);
        assert_eq!(md.schema.field_count(id as u32), Some(want.fields.len()));
        for (i, (w, g)) in want.fields.iter().zip(&got.fields).enumerate() {
            assert_eq!(g.name, w.name);
            assert!(g.same_kind(&w.kind), "{}.{}: {:?} vs {:?}", want.name, w.name, g, w.kind);
            assert_eq!(md.schema.field_kind(id as u32, i).fixed_len(), w.kind.fixed_len());
        }
    }
    // Rendering the parsed description again gives the same preamble.
    assert!(text.starts_with(&rendered(&md.desc(), &[])));
}

#[test]
fn every_kind_round_trips() {
    round_trip(all::Events::EVENTS);
}

#[test]
fn the_xen_set_round_trips() {
    round_trip(hvtrace_sim::xen::Events::EVENTS);
}

#[test]
fn no_events_is_fine() {
    let md = parse(&rendered(&desc("h"), &[])).unwrap();
    assert!(md.schema.events.is_empty());
    assert_eq!(md.schema.field_count(0), None);
}

#[test]
fn labels_and_hex_are_kept() {
    let md = parse(&rendered(&desc("h"), all::Events::EVENTS)).unwrap();
    let enums = &md.schema.events[3];
    assert_eq!(enums.fields[1].label_of(-3), Some("Minus"));
    assert_eq!(enums.fields[1].label_of(1), None);
    assert_eq!(enums.fields[0].label_of(1), Some("true"));
    // A hex integer (not produced by `events!`, but by FieldKind::Int { hex }).
    let text = rendered(&desc("h"), all::Events::EVENTS).replacen(
        "size = 8; align = 8; signed = false; byte_order = le; base = 10; } _a;",
        "size = 8; align = 8; signed = false; byte_order = le; base = 16; } _a;",
        1,
    );
    let md = parse(&text).unwrap();
    assert_eq!(md.schema.events[0].fields[0].kind, hvtrace_core::FieldKind::Int { bits: 8, signed: false, hex: true });
}

fn expect_err(text: &str, needle: &str) {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => assert!(e.to_string().contains(needle), "`{e}` lacks `{needle}`"),
    }
}

#[test]
fn unsupported_tsdl_is_a_clear_error() {
    let good = rendered(&desc("h"), all::Events::EVENTS);
    expect_err("", "not a CTF 1.8");
    expect_err("/* CTF 1.8 */\ntrace {\n};\n", "no `uuid`");
    expect_err(&good.replace("byte_order = le;\n", "byte_order = be;\n"), "not the TSDL hvtrace writes");
    expect_err(&good.replace("size = 27;", "size = 26;"), "not the TSDL hvtrace writes");
    expect_err(&good.replacen("size = 16;", "size = 24;", 1), "unsupported integer size 24");
    expect_err(
        &good.replacen("byte_order = le; base = 10; } _a;", "byte_order = be; base = 10; } _a;", 1),
        "byte_order",
    );
    expect_err(&good.replacen("exp_dig = 8;", "exp_dig = 5;", 1), "binary32");
    expect_err(&good.replacen("string { encoding = UTF8; }", "string { encoding = ASCII; }", 1), "encoding");
    expect_err(&good.replacen("\tid = 1;", "\tid = 7;", 1), "event ids must be 0, 1, 2");
    expect_err(&good.replacen("\tstream_id = 0;\n\tfields", "\tstream_id = 1;\n\tfields", 1), "only stream 0");
    expect_err(&good.replacen("string {", "sequence {", 1), "unsupported field type `sequence`");
    expect_err(&good.replacen("_raw[__raw_length]", "_raw[__s_length]", 1), "sized by `__raw_length`");
    expect_err(&good.replacen("\"Minus\" = -3", "\"Minus\" = x", 1), "expected a number");
    expect_err(&good.replacen("} _b;", "} b;", 1), "lacks hvtrace's `_` prefix");
    expect_err(&good.replacen("UTF8; } _s;", "UTF8; } _s; extra", 1), "unexpected `extra`");
    expect_err(&good.replacen("\t};\n};\n", "\t};\n", 1), "expected `};`");
    expect_err(&format!("{good}event {{\n\tname = \"x\";\n"), "where `id = …;` was expected");
    expect_err(&format!("{good}garbage\n"), "expected `event {`");
    expect_err(&good.replacen("uuid = \"12345678", "uuid = \"1234567g", 1), "malformed UUID");
}

/// Every prefix and many single-byte edits parse or fail cleanly.
#[test]
fn never_panics() {
    let good = rendered(&desc("h"), all::Events::EVENTS);
    for n in (0..good.len()).filter(|&n| good.is_char_boundary(n)) {
        let _ = parse(&good[..n]);
    }
    let bytes = good.as_bytes();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = bytes.to_vec();
        let at = (x % b.len() as u64) as usize;
        let pool = b"{}[];=:,\"\\ _-0123456789azAZ\t\n";
        b[at] = pool[(x >> 32) as usize % pool.len()];
        if let Ok(s) = std::str::from_utf8(&b) {
            let _ = parse(s);
        }
    }
}

/// Classes registered during a session are appended to `metadata` as they
/// come: after the VMM's own, or, in a trace with kernel streams, after
/// the kernel's part and the marker that says the VMM's classes resume.
#[test]
fn classes_appended_mid_session_are_read_after_the_kernel_part_too() {
    use hvtrace_core::metadata::{write_event, VMM_CLASSES_RESUME_MARKER};
    let n = all::Events::EVENTS.len() as u32;
    let mut appended = String::new();
    write_event(&mut appended, n, "dev_added", [("bus", FieldKind::Str)]).unwrap();
    write_event(&mut appended, n + 1, "irq", []).unwrap();
    let vmm = rendered(&desc("h"), all::Events::EVENTS);
    let names = |md: &hvtrace_reader::Metadata| md.schema.events.iter().map(|e| e.name.clone()).collect::<Vec<_>>();

    let plain = parse(&format!("{vmm}{appended}")).unwrap();
    assert_eq!(names(&plain)[n as usize..], ["dev_added", "irq"]);

    let kernel = kernel_part(1, "insn[3]");
    let with_kernel = format!("{vmm}{kernel}\n{VMM_CLASSES_RESUME_MARKER}\n{appended}");
    let md = parse(&with_kernel).unwrap();
    assert_eq!(names(&md), names(&plain), "the kernel's part is its own, the VMM's resumes");
    assert_eq!(md.kernel.map(|k| k.events.len()), Some(1));
    // Without the marker, nothing after the kernel's part is the VMM's.
    let md = parse(&format!("{vmm}{kernel}")).unwrap();
    assert_eq!(md.schema.events.len(), n as usize);
    // Appended ids go on from the VMM's own, in order.
    let mut skipped = String::new();
    write_event(&mut skipped, n + 1, "irq", []).unwrap();
    let e = parse(&format!("{vmm}{kernel}\n{VMM_CLASSES_RESUME_MARKER}\n{skipped}")).unwrap_err();
    assert!(e.to_string().contains(&format!("expected {n}, found `{}`", n + 1)), "{e}");
    let last = format!("\tid = {};", n + 1);
    let line = with_kernel.lines().position(|l| l == last).map(|i| i + 1);
    assert!(line.is_some());
    let e = parse(&with_kernel.replace(&last, "\tid = 99;")).unwrap_err();
    assert_eq!(Some(e.line), line, "{e}: errors name the line in the file");
}

/// The kernel's part as `hvtrace-ftrace` writes it: the stream class with
/// its event context, then events of stream 1 (a fixed array among them).
fn kernel_part(stream_id: u32, array: &str) -> String {
    let int = |bits: u32, signed: bool, base: u32, name: &str| {
        format!(
            "\t\tinteger {{ size = {bits}; align = 8; signed = {signed}; byte_order = le; base = {base}; }} _{name};\n"
        )
    };
    format!(
        "{marker}\nstream {{\n\tid = 1;\n\tevent.header := struct event_header_compact;\n\
         \tpacket.context := struct packet_context;\n\tevent.context := struct {{\n{ctx}\t}};\n}};\n\n\
         event {{\n\tname = \"kvm_emulate_insn\";\n\tid = 0;\n\tstream_id = {stream_id};\n\tfields := struct {{\n\
         {len}{arr}\t\tstring {{ encoding = UTF8; }} _comm;\n\t}};\n}};\n\n",
        marker = hvtrace_core::metadata::KERNEL_STREAMS_MARKER,
        ctx = int(8, false, 10, "common_flags") + &int(32, true, 10, "common_pid"),
        len = int(8, false, 10, "len"),
        arr = int(8, false, 16, array),
    )
}

#[test]
fn the_kernels_event_classes_are_read_with_their_context_and_arrays_as_elements() {
    let text = rendered(&desc("host-1"), all::Events::EVENTS) + &kernel_part(1, "insn[3]");
    let md = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(md.schema.events.len(), all::Events::EVENTS.len(), "the VMM's classes as before");
    let k = md.kernel.expect("the kernel's classes");
    let [e] = &k.events[..] else { panic!("{k:?}") };
    let names: Vec<_> = e.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["common_flags", "common_pid", "len", "insn[0]", "insn[1]", "insn[2]", "comm"]);
    assert_eq!(e.fields[4].kind, FieldKind::Int { bits: 8, signed: false, hex: true });
    assert_eq!(e.fields[1].kind, FieldKind::Int { bits: 32, signed: true, hex: false });
    assert_eq!(k.fixed_payload_len(0), None, "a string makes it variable");
    assert!(parse(&rendered(&desc("h"), &[])).unwrap().kernel.is_none());
}

#[test]
fn a_kernel_part_of_another_shape_is_an_error_naming_its_line() {
    let base = rendered(&desc("host-1"), &[]);
    let lines = base.lines().count();
    let e = parse(&(base.clone() + &kernel_part(0, "insn[3]"))).unwrap_err();
    assert!(e.msg.contains("declares stream 1, found stream_id = 0"), "{e}");
    assert_eq!(e.line, lines + 15, "the line of `stream_id = 0;`");
    let e = parse(&(base.clone() + &kernel_part(1, "insn[0]"))).unwrap_err();
    assert!(e.msg.contains("array length `0`"), "{e}");
    let e = parse(&(base + &kernel_part(1, "insn[3]").replace("\tid = 1;", "\tid = 2;"))).unwrap_err();
    assert!(e.msg.contains("expected `id = 1;`"), "{e}");
}
