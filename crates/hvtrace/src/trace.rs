//! Reading a trace directory back: count records per stream with the
//! reader's checker, to report what actually reached the disk.

use std::path::Path;

use anyhow::{Context, Result};
use hvtrace_core::decode::Schema;
use hvtrace_reader::{check_stream, stream_cpu, Expect};

/// Records in one stream file, and how many packets were unreadable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCount {
    /// Records decoded (in intact packets).
    pub records: u64,
    /// Packets (intact ones plus damaged stretches).
    pub packets: u64,
    /// Damaged stretches: packets that failed to decode, cut packets, garbage.
    pub bad_packets: u64,
    /// The last intact packet's cumulative `events_discarded`.
    pub events_discarded: u64,
    /// Gaps in `packet_seq_num` between intact packets (overwritten packets).
    pub packets_missing: u64,
}

/// Checks every packet of `file` (see `hvtrace_reader::check_stream`).
pub fn count_stream<S: Schema + ?Sized>(file: &Path, schema: &S) -> Result<StreamCount> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let cpu = file.file_name().and_then(|n| stream_cpu(&n.to_string_lossy()));
    let r = check_stream(&bytes, schema, &Expect { uuid: None, cpu });
    Ok(StreamCount {
        records: r.records(),
        packets: (r.packets.len() + r.problems.len()) as u64,
        bad_packets: r.problems.len() as u64,
        events_discarded: r.events_discarded(),
        packets_missing: r.packets_missing(),
    })
}
