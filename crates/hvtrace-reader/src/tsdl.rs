//! Parsing the TSDL `hvtrace_core::metadata::render` writes back into an
//! owned description of the trace and a [`Schema`] for the decoder.
//!
//! Only that exact shape is accepted: the preamble (trace, env, clock,
//! packet context, event header, stream) is re-rendered from the values read
//! and must match the file byte for byte, because the decoder's packet and
//! header layout is fixed; then every event block is parsed, one field per
//! line. Anything else is a [`MetadataError`] naming the line, never a panic.

use std::collections::HashMap;
use std::fmt;

use hvtrace_core::decode::Schema;
use hvtrace_core::metadata::{self, ClockDesc, TraceDesc};
use hvtrace_core::FieldKind;

/// Why a metadata file cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadataError {
    /// 1-based line number (0 when the error is about the whole file).
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "metadata: {}", self.msg)
        } else {
            write!(f, "metadata line {}: {}", self.line, self.msg)
        }
    }
}

impl std::error::Error for MetadataError {}

fn err<T>(line: usize, msg: impl Into<String>) -> Result<T, MetadataError> {
    Err(MetadataError { line, msg: msg.into() })
}

/// The clock block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Clock name (`tsc`, `monotonic`, …).
    pub name: String,
    /// Human description.
    pub description: String,
    /// Ticks per second.
    pub freq: u64,
    /// Uncertainty in ticks.
    pub precision: u64,
    /// Seconds from the Unix epoch to tick 0.
    pub offset_s: i64,
    /// Additional ticks from the Unix epoch to tick 0.
    pub offset: u64,
}

/// One label of an enumeration field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    /// Label text.
    pub label: String,
    /// Value it stands for.
    pub value: i64,
}

/// One field of an event class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldClass {
    /// Field name (without the TSDL `_` prefix).
    pub name: String,
    /// Wire type. [`FieldKind::Enum`] can only hold `'static` labels, so an
    /// enum's `labels` here are empty: its labels are in [`FieldClass::labels`].
    pub kind: FieldKind,
    /// An enum's labels, in declaration order (empty for other kinds).
    pub labels: Vec<Label>,
}

impl FieldClass {
    /// The label of enum value `v`, if it has one.
    pub fn label_of(&self, v: i64) -> Option<&str> {
        self.labels.iter().find(|l| l.value == v).map(|l| l.label.as_str())
    }

    /// Whether this field has the wire type and labels of `kind`.
    pub fn same_kind(&self, kind: &FieldKind) -> bool {
        match *kind {
            FieldKind::Enum { bits, signed, labels } => {
                self.kind == FieldKind::Enum { bits, signed, labels: &[] }
                    && self.labels.len() == labels.len()
                    && self.labels.iter().zip(labels).all(|(a, b)| a.label == b.label && a.value == b.value)
            }
            k => self.kind == k,
        }
    }
}

/// One event class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventClass {
    /// Event name.
    pub name: String,
    /// Payload fields in order.
    pub fields: Vec<FieldClass>,
}

/// The event classes of a trace, by id: what the decoder needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSchema {
    /// Event classes; the id of an event is its index.
    pub events: Vec<EventClass>,
}

impl Schema for TraceSchema {
    fn field_count(&self, id: u32) -> Option<usize> {
        self.events.get(id as usize).map(|e| e.fields.len())
    }
    fn field_kind(&self, id: u32, i: usize) -> FieldKind {
        self.events[id as usize].fields[i].kind
    }
}

impl TraceSchema {
    /// The event class of `id`.
    pub fn event(&self, id: u32) -> Option<&EventClass> {
        self.events.get(id as usize)
    }
}

/// Everything a metadata file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Trace UUID, also in every packet header.
    pub uuid: [u8; 16],
    /// Machine the trace was recorded on.
    pub hostname: String,
    /// What was traced.
    pub domain: String,
    /// Tracer version.
    pub tracer_version: (u32, u32, u32),
    /// Timestamp source.
    pub clock: Clock,
    /// Event classes.
    pub schema: TraceSchema,
    /// The kernel's event classes (stream class 1, written by
    /// `hvtrace-ftrace`), if the trace has them: ids of their own, and each
    /// event's fields are the stream's event context (`common_pid`, …)
    /// then its payload, as a kernel record holds them. A fixed array
    /// `_x[N]` is read as its N elements, fields `x[0]` … `x[N-1]`.
    pub kernel: Option<TraceSchema>,
}

/// A `key = value;` line of a block.
struct KeyValue<'t> {
    line: usize,
    value: &'t str,
}

/// `key = value;` lines directly inside top-level `block {`.
fn block_values<'t>(text: &'t str, block: &str) -> HashMap<&'t str, KeyValue<'t>> {
    let mut out = HashMap::new();
    let mut inside = false;
    let open = format!("{block} {{");
    for (i, line) in text.lines().enumerate() {
        if !inside {
            inside = line == open;
            continue;
        }
        if line.starts_with('}') {
            break;
        }
        let Some(kv) = line.strip_prefix('\t').and_then(|l| l.strip_suffix(';')) else { continue };
        if let Some((k, v)) = kv.split_once(" = ") {
            out.entry(k).or_insert(KeyValue { line: i + 1, value: v });
        }
    }
    out
}

fn get<'a, 't>(
    m: &'a HashMap<&'t str, KeyValue<'t>>,
    block: &str,
    key: &str,
) -> Result<&'a KeyValue<'t>, MetadataError> {
    m.get(key).map_or_else(|| err(0, format!("no `{key}` in the {block} block")), Ok)
}

fn string_value(kv: &KeyValue<'_>) -> Result<String, MetadataError> {
    let toks = tokenize(kv.value, kv.line)?;
    match toks.as_slice() {
        [Tok::Str(s)] => Ok(s.clone()),
        _ => err(kv.line, format!("expected a string literal, found `{}`", kv.value)),
    }
}

fn int_value<T: std::str::FromStr>(kv: &KeyValue<'_>) -> Result<T, MetadataError> {
    kv.value.parse().map_or_else(|_| err(kv.line, format!("expected an integer, found `{}`", kv.value)), Ok)
}

fn parse_uuid(s: &str, line: usize) -> Result<[u8; 16], MetadataError> {
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    let bad = || MetadataError { line, msg: format!("malformed UUID `{s}`") };
    if hex.len() != 32 || s.len() != 36 {
        return Err(bad());
    }
    let mut u = [0u8; 16];
    for (i, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    if metadata::Uuid(&u).to_string() != s.to_ascii_lowercase() {
        return Err(bad());
    }
    Ok(u)
}

/// Parses a metadata file written by `hvtrace_core::metadata::render`,
/// followed by the event blocks of classes registered during the session
/// (appended as they came), and the kernel's part after
/// [`metadata::KERNEL_STREAMS_MARKER`] (stream class 1, from
/// `hvtrace-ftrace`) if there is one; the VMM's classes registered after
/// it resume after [`metadata::VMM_CLASSES_RESUME_MARKER`].
pub fn parse(text: &str) -> Result<Metadata, MetadataError> {
    let (text, kernel, registered) = match text.find(metadata::KERNEL_STREAMS_MARKER) {
        Some(at) => {
            let rest = &text[at..];
            let (kernel, resumed) = match rest.find(metadata::VMM_CLASSES_RESUME_MARKER) {
                Some(r) => {
                    let from = r + metadata::VMM_CLASSES_RESUME_MARKER.len();
                    (&rest[..r], Some((&rest[from..], text[..at + from].lines().count())))
                }
                None => (rest, None),
            };
            (&text[..at], Some((kernel, text[..at].lines().count() + 1)), resumed)
        }
        None => (text, None, None),
    };
    let mut md = parse_vmm(text, registered)?;
    md.kernel = kernel.map(|(k, first_line)| parse_kernel(k, first_line)).transpose()?;
    Ok(md)
}

/// The kernel's part: its stream class (the event context: integer
/// fields) and its event classes.
fn parse_kernel(text: &str, first_line: usize) -> Result<TraceSchema, MetadataError> {
    let mut lines = Lines::new(text, first_line);
    lines.expect(metadata::KERNEL_STREAMS_MARKER)?;
    for want in [
        "stream {",
        "\tid = 1;",
        "\tevent.header := struct event_header_compact;",
        "\tpacket.context := struct packet_context;",
        "\tevent.context := struct {",
    ] {
        lines.expect(want)?;
    }
    let mut context = Vec::new();
    loop {
        match lines.next() {
            Some((_, "\t};")) => break,
            Some((n, l)) => match l.strip_prefix("\t\t") {
                Some(decl) => context.push(parse_field(decl, n)?),
                None => return err(n, format!("expected a field declaration or `}};`, found `{l}`")),
            },
            None => return err(lines.last, "the kernel's stream block is not closed"),
        }
    }
    if let Some(f) = context.iter().find(|f| !matches!(f.kind, FieldKind::Int { .. })) {
        return err(lines.last, format!("event context field `{}` is not an integer", f.name));
    }
    lines.expect("};")?;
    parse_events(lines, 0, 1, &context)
}

/// Parses the VMM's part (stream class 0), then its classes `registered`
/// after the kernel's part (their text and first line number).
fn parse_vmm(text: &str, registered: Option<(&str, usize)>) -> Result<Metadata, MetadataError> {
    if !text.starts_with("/* CTF 1.8 */") {
        return err(1, "not a CTF 1.8 text metadata file written by hvtrace (no `/* CTF 1.8 */` first line)");
    }
    // Split off the event blocks.
    let events_at = text.match_indices("\nevent {\n").next().map_or(text.len(), |(i, _)| i + 1);
    let (preamble, events) = text.split_at(events_at);

    let trace = block_values(preamble, "trace");
    let env = block_values(preamble, "env");
    let clock = block_values(preamble, "clock");
    let uuid_kv = get(&trace, "trace", "uuid")?;
    let uuid = parse_uuid(&string_value(uuid_kv)?, uuid_kv.line)?;
    let md = Metadata {
        uuid,
        hostname: string_value(get(&env, "env", "hostname")?)?,
        domain: string_value(get(&env, "env", "domain")?)?,
        tracer_version: (
            int_value(get(&env, "env", "tracer_major")?)?,
            int_value(get(&env, "env", "tracer_minor")?)?,
            int_value(get(&env, "env", "tracer_patchlevel")?)?,
        ),
        clock: Clock {
            name: string_value(get(&clock, "clock", "name")?)?,
            description: string_value(get(&clock, "clock", "description")?)?,
            freq: int_value(get(&clock, "clock", "freq")?)?,
            precision: int_value(get(&clock, "clock", "precision")?)?,
            offset_s: int_value(get(&clock, "clock", "offset_s")?)?,
            offset: int_value(get(&clock, "clock", "offset")?)?,
        },
        schema: TraceSchema::default(),
        kernel: None,
    };

    // The packet and header layout is fixed: the preamble must be exactly
    // what hvtrace renders for these values.
    let mut expected = String::new();
    metadata::render(&mut expected, &md.desc(), &[])
        .map_err(|_| MetadataError { line: 0, msg: "cannot render the expected preamble".into() })?;
    if preamble != expected {
        let mut got = preamble.lines();
        let mut want = expected.lines();
        for n in 1.. {
            match (got.next(), want.next()) {
                (Some(g), Some(w)) if g == w => continue,
                (g, w) => {
                    return err(
                        n,
                        format!(
                            "not the TSDL hvtrace writes (expected `{}`, found `{}`); \
                             hvtrace-reader reads only hvtrace's own packet layout",
                            w.unwrap_or("<end of preamble>"),
                            g.unwrap_or("<end of preamble>")
                        ),
                    );
                }
            }
        }
    }

    let first_line = preamble.lines().count() + 1;
    let mut schema = parse_events(Lines::new(events, first_line), 0, 0, &[])?;
    if let Some((more, line)) = registered {
        schema.events.extend(parse_events(Lines::new(more, line), schema.events.len(), 0, &[])?.events);
    }
    Ok(Metadata { schema, ..md })
}

impl Metadata {
    /// The description `metadata::render` takes, borrowing from `self`.
    pub fn desc(&self) -> TraceDesc<'_> {
        TraceDesc {
            uuid: self.uuid,
            hostname: &self.hostname,
            domain: &self.domain,
            tracer_version: self.tracer_version,
            clock: ClockDesc {
                name: &self.clock.name,
                description: &self.clock.description,
                freq: self.clock.freq,
                offset_s: self.clock.offset_s,
                offset: self.clock.offset,
                precision: self.clock.precision,
            },
        }
    }
}

/// Lines with their 1-based numbers.
struct Lines<'t> {
    it: std::iter::Peekable<std::iter::Enumerate<std::str::Lines<'t>>>,
    first: usize,
    last: usize,
}

impl<'t> Lines<'t> {
    /// The lines of `text`, the first numbered `first`.
    fn new(text: &'t str, first: usize) -> Lines<'t> {
        Lines { it: text.lines().enumerate().peekable(), first, last: first }
    }

    fn next(&mut self) -> Option<(usize, &'t str)> {
        let (i, l) = self.it.next()?;
        self.last = self.first + i;
        Some((self.last, l))
    }

    fn expect(&mut self, want: &str) -> Result<usize, MetadataError> {
        match self.next() {
            Some((n, l)) if l == want => Ok(n),
            Some((n, l)) => err(n, format!("expected `{}`, found `{l}`", want.trim())),
            None => err(self.last, format!("file ends where `{}` was expected", want.trim())),
        }
    }

    /// The value of a `\t{key} = …;` line.
    fn value(&mut self, key: &str) -> Result<(usize, &'t str), MetadataError> {
        let prefix = format!("\t{key} = ");
        match self.next() {
            Some((n, l)) => match l.strip_prefix(&prefix).and_then(|v| v.strip_suffix(';')) {
                Some(v) => Ok((n, v)),
                None => err(n, format!("expected `{key} = …;`, found `{l}`")),
            },
            None => err(self.last, format!("file ends where `{key} = …;` was expected")),
        }
    }
}

/// The event blocks of stream class `stream` (the rest of `lines`), their
/// ids from `first_id`, each event's fields after `context` (stream 1
/// only: fixed integer arrays allowed).
fn parse_events(
    mut lines: Lines<'_>,
    first_id: usize,
    stream: u32,
    context: &[FieldClass],
) -> Result<TraceSchema, MetadataError> {
    let mut events = Vec::new();
    while let Some((n, l)) = lines.next() {
        if l.is_empty() {
            continue;
        }
        if l != "event {" {
            return err(n, format!("expected `event {{`, found `{l}` (hvtrace metadata ends with its event blocks)"));
        }
        let (nl, name) = lines.value("name")?;
        let name = match tokenize(name, nl)?.as_slice() {
            [Tok::Str(s)] => s.clone(),
            _ => return err(nl, format!("event name must be a string literal, found `{name}`")),
        };
        let (il, id) = lines.value("id")?;
        let want = first_id + events.len();
        if id.parse::<usize>().ok() != Some(want) {
            return err(il, format!("event ids must be 0, 1, 2, … in order: expected {want}, found `{id}`"));
        }
        let (sl, sid) = lines.value("stream_id")?;
        if sid != stream.to_string() {
            let part = if stream == 0 { "only stream 0 is declared" } else { "the kernel's part declares stream 1" };
            return err(sl, format!("{part}, found stream_id = {sid}"));
        }
        lines.expect("\tfields := struct {")?;
        let mut fields = context.to_vec();
        loop {
            match lines.next() {
                Some((_, "\t};")) => break,
                Some((n, l)) => match l.strip_prefix("\t\t") {
                    Some(decl) if stream == 1 => fields.extend(parse_kernel_field(decl, n)?),
                    Some(decl) => fields.push(parse_field(decl, n)?),
                    None => return err(n, format!("expected a field declaration or `}};`, found `{l}`")),
                },
                None => return err(lines.last, format!("event `{name}` is not closed")),
            }
        }
        lines.expect("};")?;
        events.push(EventClass { name, fields });
    }
    Ok(TraceSchema { events })
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Int(i128),
    Str(String),
    Punct(char),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => f.write_str(s),
            Tok::Int(v) => write!(f, "{v}"),
            Tok::Str(s) => write!(f, "{s:?}"),
            Tok::Punct(c) => write!(f, "{c}"),
        }
    }
}

fn tokenize(s: &str, line: usize) -> Result<Vec<Tok>, MetadataError> {
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            '{' | '}' | '[' | ']' | ';' | '=' | ':' | ',' => out.push(Tok::Punct(c)),
            '"' => {
                let mut v = String::new();
                loop {
                    match it.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match it.next() {
                            Some((_, e @ ('"' | '\\'))) => v.push(e),
                            _ => return err(line, "unsupported escape in a string literal"),
                        },
                        Some((_, ch)) => v.push(ch),
                        None => return err(line, "unterminated string literal"),
                    }
                }
                out.push(Tok::Str(v));
            }
            c if c == '-' || c.is_ascii_digit() => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = it.peek() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    end = j + 1;
                    it.next();
                }
                let v = s[i..end].parse().map_or_else(|_| err(line, format!("bad number `{}`", &s[i..end])), Ok)?;
                out.push(Tok::Int(v));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i + 1;
                while let Some(&(j, d)) = it.peek() {
                    if !(d.is_ascii_alphanumeric() || d == '_') {
                        break;
                    }
                    end = j + 1;
                    it.next();
                }
                out.push(Tok::Ident(s[i..end].to_string()));
            }
            c => return err(line, format!("unexpected character `{c}`")),
        }
    }
    Ok(out)
}

struct Toks {
    t: Vec<Tok>,
    at: usize,
    line: usize,
}

impl Toks {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.at)
    }

    fn next(&mut self) -> Result<Tok, MetadataError> {
        let t = self.t.get(self.at).cloned();
        self.at += 1;
        t.map_or_else(|| err(self.line, "declaration ends early"), Ok)
    }

    fn punct(&mut self, c: char) -> Result<(), MetadataError> {
        match self.next()? {
            Tok::Punct(p) if p == c => Ok(()),
            t => err(self.line, format!("expected `{c}`, found `{t}`")),
        }
    }

    fn ident(&mut self) -> Result<String, MetadataError> {
        match self.next()? {
            Tok::Ident(s) => Ok(s),
            t => err(self.line, format!("expected a name, found `{t}`")),
        }
    }

    fn keyword(&mut self, kw: &str) -> Result<(), MetadataError> {
        match self.next()? {
            Tok::Ident(s) if s == kw => Ok(()),
            t => err(self.line, format!("expected `{kw}`, found `{t}`")),
        }
    }

    fn int(&mut self) -> Result<i128, MetadataError> {
        match self.next()? {
            Tok::Int(v) => Ok(v),
            t => err(self.line, format!("expected a number, found `{t}`")),
        }
    }

    /// `{ key = value; … }` with the keys in `allowed`.
    fn attrs(&mut self, allowed: &[&str]) -> Result<HashMap<String, Tok>, MetadataError> {
        self.punct('{')?;
        let mut m = HashMap::new();
        loop {
            if self.peek() == Some(&Tok::Punct('}')) {
                self.at += 1;
                return Ok(m);
            }
            let k = self.ident()?;
            if !allowed.contains(&k.as_str()) {
                return err(self.line, format!("unsupported attribute `{k}`"));
            }
            self.punct('=')?;
            let v = self.next()?;
            self.punct(';')?;
            if m.insert(k.clone(), v).is_some() {
                return err(self.line, format!("attribute `{k}` given twice"));
            }
        }
    }

    /// A field name `_name`; returns `name`.
    fn field_name(&mut self) -> Result<String, MetadataError> {
        let n = self.ident()?;
        match n.strip_prefix('_') {
            Some(s) if !s.is_empty() => Ok(s.to_string()),
            _ => err(self.line, format!("field name `{n}` lacks hvtrace's `_` prefix")),
        }
    }

    fn end(&self) -> Result<(), MetadataError> {
        match self.peek() {
            None => Ok(()),
            Some(t) => err(self.line, format!("unexpected `{t}` after the field declaration")),
        }
    }
}

fn attr_is(
    m: &HashMap<String, Tok>,
    k: &str,
    want: &Tok,
    default: Option<&Tok>,
    line: usize,
) -> Result<(), MetadataError> {
    match m.get(k).or(default) {
        Some(v) if v == want => Ok(()),
        Some(v) => err(line, format!("unsupported {k} = {v} (hvtrace writes {want})")),
        None => err(line, format!("missing {k}")),
    }
}

/// `integer { … }` after the keyword: `(bits, signed, hex)`.
fn int_body(t: &mut Toks) -> Result<(u8, bool, bool), MetadataError> {
    let line = t.line;
    let m = t.attrs(&["size", "align", "signed", "byte_order", "base"])?;
    let bits = match m.get("size") {
        Some(Tok::Int(b @ (8 | 16 | 32 | 64))) => *b as u8,
        Some(v) => return err(line, format!("unsupported integer size {v} (8, 16, 32 or 64)")),
        None => return err(line, "integer without size"),
    };
    attr_is(&m, "align", &Tok::Int(8), None, line)?;
    attr_is(&m, "byte_order", &Tok::Ident("le".into()), None, line)?;
    let signed = match m.get("signed") {
        Some(Tok::Ident(s)) if s == "true" => true,
        Some(Tok::Ident(s)) if s == "false" => false,
        Some(v) => return err(line, format!("bad signed = {v}")),
        None => return err(line, "integer without signed"),
    };
    let hex = match m.get("base") {
        None | Some(Tok::Int(10)) => false,
        Some(Tok::Int(16)) => true,
        Some(v) => return err(line, format!("unsupported base = {v} (10 or 16)")),
    };
    Ok((bits, signed, hex))
}

/// A kernel field: as [`parse_field`], or a fixed integer array
/// `integer { … } _x[N];` as its N elements `x[0]` … `x[N-1]` (which is
/// its layout: N integers, one after the other).
fn parse_kernel_field(decl: &str, line: usize) -> Result<Vec<FieldClass>, MetadataError> {
    let array = decl.strip_suffix("];").and_then(|d| d.rsplit_once('[')).filter(|(d, _)| d.starts_with("integer"));
    let Some((elem, len)) = array else { return Ok(vec![parse_field(decl, line)?]) };
    let len: usize = match len.parse() {
        Ok(n) if (1..=4096).contains(&n) => n,
        _ => return err(line, format!("array length `{len}` is not a number from 1 to 4096")),
    };
    let f = parse_field(&format!("{elem};"), line)?;
    Ok((0..len).map(|i| FieldClass { name: format!("{}[{i}]", f.name), ..f.clone() }).collect())
}

fn parse_field(decl: &str, line: usize) -> Result<FieldClass, MetadataError> {
    let mut t = Toks { t: tokenize(decl, line)?, at: 0, line };
    let head = t.ident()?;
    let field = match head.as_str() {
        "integer" => {
            let (bits, signed, hex) = int_body(&mut t)?;
            let first = t.ident()?;
            t.punct(';')?;
            if t.peek().is_none() {
                let name = match first.strip_prefix('_') {
                    Some(s) if !s.is_empty() => s.to_string(),
                    _ => return err(line, format!("field name `{first}` lacks hvtrace's `_` prefix")),
                };
                FieldClass { name, kind: FieldKind::Int { bits, signed, hex }, labels: Vec::new() }
            } else {
                // A byte array: `u32 __x_length; u8(hex) _x[__x_length];`.
                if (bits, signed, hex) != (32, false, false) {
                    return err(line, "a byte array's length must be a 32-bit unsigned decimal integer");
                }
                t.keyword("integer")?;
                if int_body(&mut t)? != (8, false, true) {
                    return err(line, "byte array elements must be 8-bit unsigned hexadecimal integers");
                }
                let name = t.field_name()?;
                t.punct('[')?;
                let len = t.ident()?;
                t.punct(']')?;
                t.punct(';')?;
                let want = format!("__{name}_length");
                if first != want || len != want {
                    return err(line, format!("byte array `{name}` must be sized by `{want}`"));
                }
                FieldClass { name, kind: FieldKind::Bytes, labels: Vec::new() }
            }
        }
        "floating_point" => {
            let m = t.attrs(&["exp_dig", "mant_dig", "align", "byte_order"])?;
            attr_is(&m, "align", &Tok::Int(8), None, line)?;
            attr_is(&m, "byte_order", &Tok::Ident("le".into()), None, line)?;
            let bits = match (m.get("exp_dig"), m.get("mant_dig")) {
                (Some(Tok::Int(8)), Some(Tok::Int(24))) => 32,
                (Some(Tok::Int(11)), Some(Tok::Int(53))) => 64,
                _ => return err(line, "only binary32 (8/24) and binary64 (11/53) floats are supported"),
            };
            let name = t.field_name()?;
            t.punct(';')?;
            FieldClass { name, kind: FieldKind::Float { bits }, labels: Vec::new() }
        }
        "string" => {
            let m = t.attrs(&["encoding"])?;
            attr_is(&m, "encoding", &Tok::Ident("UTF8".into()), None, line)?;
            let name = t.field_name()?;
            t.punct(';')?;
            FieldClass { name, kind: FieldKind::Str, labels: Vec::new() }
        }
        "enum" => {
            t.punct(':')?;
            t.keyword("integer")?;
            let (bits, signed, _) = int_body(&mut t)?;
            t.punct('{')?;
            let mut labels = Vec::new();
            loop {
                let label = match t.next()? {
                    Tok::Str(s) => s,
                    Tok::Punct('}') if labels.is_empty() => break,
                    tok => return err(line, format!("expected an enum label string, found `{tok}`")),
                };
                t.punct('=')?;
                let v = t.int()?;
                let value = i64::try_from(v).map_or_else(|_| err(line, format!("enum value {v} out of range")), Ok)?;
                labels.push(Label { label, value });
                match t.next()? {
                    Tok::Punct(',') => continue,
                    Tok::Punct('}') => break,
                    tok => return err(line, format!("expected `,` or `}}` in enum, found `{tok}`")),
                }
            }
            let name = t.field_name()?;
            t.punct(';')?;
            FieldClass { name, kind: FieldKind::Enum { bits, signed, labels: &[] }, labels }
        }
        other => return err(line, format!("unsupported field type `{other}` (hvtrace writes integer, enum, string, floating_point and byte arrays)")),
    };
    t.end()?;
    Ok(field)
}
