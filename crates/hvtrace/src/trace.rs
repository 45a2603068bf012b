//! Reading a trace directory back: count records per stream with the
//! decoder, to report what actually reached the disk.

use std::path::Path;

use anyhow::{Context, Result};
use hvtrace_core::decode::{packet_info, records, Schema};

/// Records in one stream file, and how many packets were unreadable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCount {
    /// Records decoded.
    pub records: u64,
    /// Packets.
    pub packets: u64,
    /// Packets that failed to decode.
    pub bad_packets: u64,
    /// The last packet's cumulative `events_discarded`.
    pub events_discarded: u64,
}

/// Decodes every packet of `file`.
pub fn count_stream<S: Schema + ?Sized>(file: &Path, schema: &S) -> Result<StreamCount> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut c = StreamCount::default();
    let mut at = 0;
    while at < bytes.len() {
        let Ok(info) = packet_info(&bytes[at..]) else {
            c.bad_packets += 1;
            break;
        };
        c.packets += 1;
        c.events_discarded = info.events_discarded;
        match records(&bytes[at..at + info.packet_len], schema) {
            Ok((_, it)) => {
                for r in it {
                    match r {
                        Ok(_) => c.records += 1,
                        Err(_) => {
                            c.bad_packets += 1;
                            break;
                        }
                    }
                }
            }
            Err(_) => c.bad_packets += 1,
        }
        at += info.packet_len;
    }
    Ok(c)
}
