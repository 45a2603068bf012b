//! An event's `format` file (`events/SYSTEM/NAME/format`) parsed into the
//! layout of its records: each field's offset, size, signedness and what it
//! holds (integer, fixed array, `char[]` string, `__data_loc` dynamic data).
//! The CTF event class is generated from this ([`crate::convert`]).

use std::collections::HashMap;

use crate::FtraceError;

/// What a field of a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// A 1, 2, 4 or 8-byte integer.
    Int {
        /// Two's complement?
        signed: bool,
    },
    /// `len` integers of `size / len` bytes each (`__u8 insn[15]`), or bytes
    /// of a field whose size is no integer width.
    Array {
        /// Bytes per element (1, 2, 4 or 8).
        elem: usize,
        /// Elements.
        len: usize,
        /// Two's complement elements?
        signed: bool,
    },
    /// `char name[N]`: a string of at most N bytes, NUL-terminated if shorter.
    Chars,
    /// `__data_loc char[] name` (`__rel_loc` if `rel`): a u32 holding the
    /// string's offset (low 16 bits) and length (high 16 bits).
    DynString {
        /// Offset counted from the end of this field (`__rel_loc`), not from
        /// the start of the record.
        rel: bool,
    },
    /// `__data_loc` of anything else: dynamic bytes.
    DynBytes {
        /// As in [`FieldType::DynString`].
        rel: bool,
    },
}

/// One field of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    /// Field name.
    pub name: String,
    /// The C type as the kernel prints it (`unsigned int`, `char[16]`…).
    pub c_type: String,
    /// Byte offset in the record (the record starts with `common_type`).
    pub offset: usize,
    /// Bytes.
    pub size: usize,
    /// What it holds.
    pub ty: FieldType,
}

/// One event's record layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFormat {
    /// Subsystem (`kvm`, `sched`).
    pub system: String,
    /// Event name (`kvm_pio`).
    pub name: String,
    /// The kernel's id of the event: the `common_type` of its records.
    pub id: u16,
    /// The common fields (`common_type`, `common_flags`, `common_preempt_count`, `common_pid`).
    pub common: Vec<FormatField>,
    /// The event's own fields.
    pub fields: Vec<FormatField>,
}

impl EventFormat {
    /// Bytes a record needs at least: the end of its last fixed field.
    pub fn min_len(&self) -> usize {
        self.common.iter().chain(&self.fields).map(|f| f.offset + f.size).max().unwrap_or(0)
    }
}

/// Parses one `format` file of event `system`.
pub fn parse_format(system: &str, text: &str) -> Result<EventFormat, FtraceError> {
    let bad = |line: usize, why: String| FtraceError::Format { event: format!("{system}:?"), line, why };
    let mut name = None;
    let mut id = None;
    let mut common = Vec::new();
    let mut fields = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let l = line.trim();
        if let Some(v) = l.strip_prefix("name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("ID:") {
            id = Some(v.trim().parse::<u16>().map_err(|e| bad(n, format!("ID `{}`: {e}", v.trim())))?);
        } else if l.starts_with("field:") {
            let f = parse_field(l).map_err(|why| bad(n, why))?;
            if f.name.starts_with("common_") {
                common.push(f);
            } else {
                fields.push(f);
            }
        } else if l.starts_with("print fmt:") {
            break;
        }
    }
    let name = name.ok_or_else(|| bad(1, "no `name:` line".into()))?;
    let id = id.ok_or_else(|| bad(1, "no `ID:` line".into()))?;
    if !common.iter().any(|f| f.name == "common_type" && f.offset == 0 && f.size == 2) {
        return Err(FtraceError::Format {
            event: format!("{system}:{name}"),
            line: 0,
            why: "no 2-byte common_type at offset 0".into(),
        });
    }
    Ok(EventFormat { system: system.to_string(), name, id, common, fields })
}

/// `field:TYPE NAME;\toffset:N;\tsize:N;\tsigned:N;`
fn parse_field(l: &str) -> Result<FormatField, String> {
    let mut parts = l.split(';').map(str::trim);
    let decl = parts.next().and_then(|d| d.strip_prefix("field:")).ok_or("no `field:`")?.trim();
    let mut kv = HashMap::new();
    for p in parts.filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once(':').ok_or_else(|| format!("`{p}` is not key:value"))?;
        kv.insert(k.trim(), v.trim());
    }
    let num = |k: &str| -> Result<usize, String> {
        kv.get(k).ok_or_else(|| format!("no {k}"))?.parse().map_err(|e| format!("{k}: {e}"))
    };
    let (offset, size) = (num("offset")?, num("size")?);
    let signed = num("signed").unwrap_or(0) != 0;
    // The name is the last word; an array's length follows it in brackets.
    let (c_type, last) = decl.rsplit_once(char::is_whitespace).ok_or_else(|| format!("`{decl}` has no name"))?;
    let (name, array_len) = match last.split_once('[') {
        Some((n, rest)) => {
            let len = rest.strip_suffix(']').ok_or_else(|| format!("`{last}`: unclosed ["))?;
            (n, Some(len.parse::<usize>().ok()))
        }
        None => (last, None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("field name `{name}` is not an identifier"));
    }
    let c_type = c_type.trim();
    let ty = if let Some(rest) = c_type.strip_prefix("__data_loc").or(c_type.strip_prefix("__rel_loc")) {
        let rel = c_type.starts_with("__rel_loc");
        if size != 4 {
            return Err(format!("dynamic field `{name}` of size {size}, not 4"));
        }
        if rest.trim().starts_with("char") {
            FieldType::DynString { rel }
        } else {
            FieldType::DynBytes { rel }
        }
    } else {
        match array_len {
            Some(_) if c_type == "char" || c_type == "const char" => FieldType::Chars,
            Some(Some(len)) if len > 0 && size % len == 0 && matches!(size / len, 1 | 2 | 4 | 8) => {
                FieldType::Array { elem: size / len, len, signed }
            }
            None if matches!(size, 1 | 2 | 4 | 8) => FieldType::Int { signed },
            // An odd size or an array of unknown length: its bytes.
            _ => FieldType::Array { elem: 1, len: size, signed: false },
        }
    };
    Ok(FormatField { name: name.to_string(), c_type: c_type.to_string(), offset, size, ty })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = include_str!("../tests/fixtures/sched_switch.format");

    #[test]
    fn sched_switch_has_strings_signed_ints_and_common_fields() {
        let f = parse_format("sched", SCHED_SWITCH).unwrap();
        assert_eq!((f.name.as_str(), f.id), ("sched_switch", 372));
        let names: Vec<_> = f.common.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["common_type", "common_flags", "common_preempt_count", "common_pid"]);
        assert_eq!(f.common[3].ty, FieldType::Int { signed: true });
        let prev_comm = &f.fields[0];
        assert_eq!((prev_comm.name.as_str(), prev_comm.offset, prev_comm.size), ("prev_comm", 8, 16));
        assert_eq!(prev_comm.ty, FieldType::Chars);
        let prev_state = f.fields.iter().find(|x| x.name == "prev_state").unwrap();
        assert_eq!((prev_state.size, prev_state.ty), (8, FieldType::Int { signed: true }));
        assert_eq!(f.min_len(), 64);
    }

    #[test]
    fn arrays_and_data_loc_fields() {
        let text = "name: demo\nID: 7\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:__u8 insn[15];\toffset:8;\tsize:15;\tsigned:0;\n\
            \tfield:__data_loc char[] msg;\toffset:24;\tsize:4;\tsigned:0;\n\
            \tfield:__data_loc u8[] blob;\toffset:28;\tsize:4;\tsigned:0;\n\
            \tfield:__rel_loc char[] rel;\toffset:32;\tsize:4;\tsigned:0;\n\
            \tfield:u32 words[2];\toffset:36;\tsize:8;\tsigned:0;\n\
            \tfield:struct x odd;\toffset:44;\tsize:12;\tsigned:0;\n\nprint fmt: \"\"\n";
        let f = parse_format("t", text).unwrap();
        let ty: Vec<_> = f.fields.iter().map(|x| x.ty).collect();
        assert_eq!(
            ty,
            [
                FieldType::Array { elem: 1, len: 15, signed: false },
                FieldType::DynString { rel: false },
                FieldType::DynBytes { rel: false },
                FieldType::DynString { rel: true },
                FieldType::Array { elem: 4, len: 2, signed: false },
                FieldType::Array { elem: 1, len: 12, signed: false },
            ]
        );
    }

    #[test]
    fn damaged_format_files_are_errors_not_panics() {
        for text in [
            "",
            "name: x\n",
            "name: x\nID: 99999999\n",
            "name: x\nID: 1\n\tfield:int;\toffset:0;\tsize:4;\tsigned:1;\n",
            "name: x\nID: 1\n\tfield:int a;\toffset:zero;\tsize:4;\n",
            "name: x\nID: 1\n\tfield:int a[;\toffset:0;\tsize:4;\n",
            "name: x\nID: 1\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n", // no common_type
        ] {
            assert!(parse_format("s", text).is_err(), "{text:?}");
        }
    }
}
