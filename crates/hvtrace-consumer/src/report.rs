//! [`Report`]: what a consumer run wrote and lost, per ring.

use std::fmt;
use std::path::{Path, PathBuf};

use hvtrace_core::RingCounters;
use serde::Serialize;

use crate::metadata::MetadataReport;
use crate::relay::RelayReport;

/// Why the consumer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The session was destroyed: the trace is complete.
    Destroyed,
    /// The host went away (its control socket hung up): the trace holds what
    /// was delivered until then.
    HostGone,
    /// SIGINT or SIGTERM: the host was asked to flush, then everything
    /// delivered was written.
    Signal,
    /// [`ShutdownHandle::shutdown`](crate::ShutdownHandle::shutdown) was
    /// called: as for a signal.
    Shutdown,
    /// The relay, the only sink, failed: the session was ended as on a
    /// signal, and what the relay missed is counted in [`Report::relay`].
    RelayGone,
}

impl ExitReason {
    /// The name used in JSON and in the consumer's account (`host_gone`, …).
    pub fn code(&self) -> &'static str {
        match self {
            ExitReason::Destroyed => "destroyed",
            ExitReason::HostGone => "host_gone",
            ExitReason::Signal => "signal",
            ExitReason::Shutdown => "shutdown",
            ExitReason::RelayGone => "relay_gone",
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExitReason::Destroyed => "session destroyed",
            ExitReason::HostGone => "host went away",
            ExitReason::Signal => "interrupted by a signal",
            ExitReason::Shutdown => "shut down",
            ExitReason::RelayGone => "the relay failed",
        })
    }
}

/// Serde mirror of [`RingCounters`] (which lives in the `no_std` core).
#[derive(Serialize)]
#[serde(remote = "RingCounters")]
struct RingCountersDef {
    produced_bytes: u64,
    consumed_bytes: u64,
    delivered_subbufs: u64,
    discarded: u64,
    discarded_full: u64,
    discarded_busy: u64,
    discarded_too_big: u64,
    overwritten: u64,
    closed: bool,
}

/// What happened to one CPU ring's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RingReport {
    /// CPU number.
    pub cpu: u32,
    /// The stream file.
    pub file: PathBuf,
    /// Packets written (the trailer not included).
    pub packets: u64,
    /// Bytes of those packets (the file holds `bytes`, plus the trailer's
    /// 84 bytes if `trailer`).
    pub bytes: u64,
    /// Of `packets`, those written with direct I/O (`O_DIRECT`: from the
    /// ring's pages to the device, no copy into the page cache); the others
    /// went through the page cache (direct I/O off or refused by the file
    /// system, or a misaligned packet).
    pub direct_packets: u64,
    /// Packets that changed while they were being written (the producer
    /// took them back in overwrite mode, or reused them because someone else
    /// moved the consumed position); cut off again.
    pub torn: u64,
    /// Times the ring's consumed position in the shared control page was
    /// found moved by someone else (and put back).
    pub tampered: u64,
    /// Failed writes (and `fsync`s) of this file.
    pub write_errors: u64,
    /// Delivered packets not in the file (write errors, malformed packets,
    /// packets reused by the producer before they were read, and every
    /// packet of a file removed or replaced during the session).
    pub lost_packets: u64,
    /// Bytes of those packets.
    pub lost_bytes: u64,
    /// Whether an empty packet carrying the final `events_discarded` was
    /// appended.
    pub trailer: bool,
    /// The first error met on this stream, if any.
    pub first_error: Option<String>,
    /// The ring's counters at the end.
    #[serde(with = "RingCountersDef")]
    pub counters: RingCounters,
}

impl RingReport {
    pub(crate) fn new(cpu: u32, file: &Path) -> Self {
        RingReport {
            cpu,
            file: file.to_path_buf(),
            packets: 0,
            bytes: 0,
            direct_packets: 0,
            torn: 0,
            tampered: 0,
            write_errors: 0,
            lost_packets: 0,
            lost_bytes: 0,
            trailer: false,
            first_error: None,
            counters: RingCounters::default(),
        }
    }
}

/// The result of [`Consumer::run`](crate::Consumer::run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Channel name.
    pub channel: String,
    /// The trace directory (empty when the relay was the only sink).
    pub output: PathBuf,
    /// Per ring, by CPU number.
    pub per_ring: Vec<RingReport>,
    /// Why the consumer stopped.
    pub exit: ExitReason,
    /// The trace ends early (the host went away); `DIR/INCOMPLETE` says so.
    pub cut_short: bool,
    /// The rings were in overwrite mode: a packet the producer took back
    /// while it was written is its loss (counted as overwritten), not the
    /// consumer's.
    pub overwrite: bool,
    /// Why the trace directory holds nothing of the trace any more (it was
    /// removed or replaced during the session), if so.
    pub trace_lost: Option<String>,
    /// Problems that are not one stream's (unreadable consumed positions
    /// reset at attach, a ring that could not be mapped, a relay that could
    /// not be reached, a failed flush or `fsync`, …).
    pub notes: Vec<String>,
    /// What reached the relay daemon, when streaming to one.
    pub relay: Option<RelayReport>,
    /// The metadata: what the host published during the session, and what
    /// was refused or could not be written.
    pub metadata: MetadataReport,
}

impl Report {
    /// Packets written over all rings.
    pub fn packets(&self) -> u64 {
        self.per_ring.iter().map(|r| r.packets).sum()
    }

    /// Bytes of packets written over all rings.
    pub fn bytes(&self) -> u64 {
        self.per_ring.iter().map(|r| r.bytes).sum()
    }

    /// Events the producer lost (all causes) over all rings.
    pub fn events_discarded(&self) -> u64 {
        self.per_ring.iter().map(|r| r.counters.discarded).sum()
    }

    /// Packets delivered but not written (write errors, torn, malformed).
    pub fn packets_lost(&self) -> u64 {
        self.per_ring.iter().map(|r| r.lost_packets + r.torn).sum()
    }

    /// Packets handed to this consumer that the trace does not hold and that
    /// the producer did not count as its own loss: write errors, malformed
    /// or reused packets, files removed under the consumer, and in discard
    /// mode torn packets. Not zero means the trace is damaged (the
    /// consumer's account in the trace directory names them).
    pub fn consumer_lost(&self) -> u64 {
        self.per_ring.iter().map(|r| r.lost_packets + if self.overwrite { 0 } else { r.torn }).sum()
    }

    /// Whether the trace holds every packet handed to the consumer, and
    /// its `metadata` every class the host published.
    pub fn is_whole(&self) -> bool {
        self.consumer_lost() == 0 && self.trace_lost.is_none() && self.metadata.write_errors == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.relay, self.output.as_os_str().is_empty()) {
            (Some(r), true) => {
                writeln!(f, "relay {}{} (channel {}): {}", r.url, r.live_path(), self.channel, self.exit)?
            }
            _ => writeln!(f, "trace {} (channel {}): {}", self.output.display(), self.channel, self.exit)?,
        }
        writeln!(
            f,
            "{:>4} {:>9} {:>12} {:>6} {:>8} {:>9} {:>10} {:>10} {:>11}",
            "cpu", "packets", "bytes", "torn", "w-errors", "lost-pkts", "delivered", "discarded", "overwritten"
        )?;
        for r in &self.per_ring {
            writeln!(
                f,
                "{:>4} {:>9} {:>12} {:>6} {:>8} {:>9} {:>10} {:>10} {:>11}",
                r.cpu,
                r.packets,
                r.bytes,
                r.torn,
                r.write_errors,
                r.lost_packets,
                r.counters.delivered_subbufs,
                r.counters.discarded,
                r.counters.overwritten
            )?;
        }
        writeln!(
            f,
            "{:>4} {:>9} {:>12} {:>6} {:>8} {:>9} {:>10} {:>10} {:>11}",
            "all",
            self.packets(),
            self.bytes(),
            self.per_ring.iter().map(|r| r.torn).sum::<u64>(),
            self.per_ring.iter().map(|r| r.write_errors).sum::<u64>(),
            self.per_ring.iter().map(|r| r.lost_packets).sum::<u64>(),
            self.per_ring.iter().map(|r| r.counters.delivered_subbufs).sum::<u64>(),
            self.events_discarded(),
            self.per_ring.iter().map(|r| r.counters.overwritten).sum::<u64>(),
        )?;
        for r in &self.per_ring {
            if let Some(e) = &r.first_error {
                writeln!(f, "cpu {}: {}: {e}", r.cpu, r.file.display())?;
            }
        }
        for r in self.per_ring.iter().filter(|r| r.tampered > 0) {
            writeln!(
                f,
                "cpu {}: the consumed position in the shared control page was moved by someone else {} times \
                 (another process maps this channel's control memfd)",
                r.cpu, r.tampered
            )?;
        }
        let m = &self.metadata;
        if m.refused > 0 || m.write_errors > 0 {
            writeln!(
                f,
                "metadata: {} published lengths refused ({} bytes skipped), {} write errors: {}",
                m.refused,
                m.refused_bytes,
                m.write_errors,
                m.first_error.as_deref().unwrap_or("?")
            )?;
        }
        if m.write_errors > 0 {
            writeln!(f, "DAMAGED: classes the host registered are missing from the trace's metadata")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        if let Some(why) = &self.trace_lost {
            writeln!(f, "{why}")?;
        }
        if self.consumer_lost() > 0 && self.output.as_os_str().is_empty() {
            // Relay only: no account to point at.
            writeln!(f, "DAMAGED: {} packets handed to the consumer were not relayed", self.consumer_lost())?;
        } else if self.consumer_lost() > 0 {
            writeln!(
                f,
                "DAMAGED: {} packets handed to the consumer are not in the trace (see {}/{})",
                self.consumer_lost(),
                self.output.display(),
                crate::ACCOUNT
            )?;
        }
        if self.cut_short {
            writeln!(f, "the trace was cut short: the host went away before the session was destroyed")?;
        }
        if let Some(r) = &self.relay {
            writeln!(
                f,
                "relay {} session {}: {} packets relayed, {} beacons, {} packets missed{}",
                r.url,
                r.live_path(),
                r.packets(),
                r.per_stream.iter().map(|s| s.beacons).sum::<u64>(),
                r.missed_packets(),
                r.error.as_ref().map_or(String::new(), |e| format!(" ({e})"))
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::RelayStreamReport;

    #[test]
    fn display_and_json() {
        let mut r = RingReport::new(1, Path::new("/t/chan_1"));
        r.packets = 3;
        r.bytes = 3 * 4096;
        r.counters.discarded = 5;
        r.first_error = Some("write failed: disk full".into());
        let rep = Report {
            channel: "chan".into(),
            output: "/t".into(),
            per_ring: vec![r],
            exit: ExitReason::HostGone,
            cut_short: true,
            overwrite: false,
            trace_lost: None,
            notes: vec!["CPU 1: resumed at 0".into()],
            relay: None,
            metadata: MetadataReport::default(),
        };
        let text = rep.to_string();
        assert!(text.contains("host went away"), "{text}");
        assert!(text.contains("12288"), "{text}");
        assert!(text.contains("disk full") && text.contains("cut short"), "{text}");
        assert!(text.contains("note: CPU 1: resumed at 0") && !text.contains("DAMAGED"), "{text}");
        assert!(rep.is_whole());
        let mut lost = rep.clone();
        lost.per_ring[0].torn = 2;
        assert_eq!(lost.consumer_lost(), 2, "discard mode: a torn packet is the consumer's loss");
        assert!(lost.to_string().contains("DAMAGED: 2 packets"), "{lost}");
        lost.overwrite = true;
        assert!(lost.is_whole(), "overwrite mode: the producer took it back and counted it");
        let v: serde_json::Value = serde_json::to_value(&rep).unwrap();
        assert_eq!(v["exit"], "host_gone");
        assert_eq!(v["cut_short"], true);
        assert_eq!(v["per_ring"][0]["counters"]["discarded"], 5);
        assert_eq!(v["per_ring"][0]["packets"], 3);
        // The host's hostile metadata lengths are said; a failed append
        // makes the trace not whole.
        let mut md = rep.clone();
        md.metadata.refused = 2;
        md.metadata.first_error = Some("published length 9999 is beyond the log".into());
        assert!(md.is_whole(), "refusals are the host's doing, the trace is what it published");
        assert!(md.to_string().contains("metadata: 2 published lengths refused"), "{md}");
        md.metadata.write_errors = 1;
        assert!(!md.is_whole() && md.to_string().contains("DAMAGED: classes"), "{md}");
        assert_eq!(serde_json::to_value(&md).unwrap()["metadata"]["write_errors"], 1);
    }

    #[test]
    fn a_relay_only_report_names_the_relay_and_what_it_missed() {
        let stream = RelayStreamReport { cpu: 0, packets: 7, missed_packets: 2, beacons: 1, ..Default::default() };
        let relay = RelayReport {
            url: "net://r:5342:5343".into(),
            session: "s".into(),
            hostname: "h".into(),
            per_stream: vec![stream],
            error: Some("the relay went away".into()),
        };
        let rep = Report {
            channel: "chan".into(),
            output: PathBuf::new(),
            per_ring: vec![],
            exit: ExitReason::RelayGone,
            cut_short: false,
            overwrite: false,
            trace_lost: None,
            notes: Vec::new(),
            relay: Some(relay),
            metadata: MetadataReport::default(),
        };
        let text = rep.to_string();
        assert!(text.starts_with("relay net://r:5342:5343/host/h/s (channel chan): the relay failed"), "{text}");
        assert!(text.contains("7 packets relayed, 1 beacons, 2 packets missed (the relay went away)"), "{text}");
        // Relay only, a packet lost before it reached the queue: no account to name.
        let mut lost = rep.clone();
        let mut r = RingReport::new(0, Path::new("net://r:5342:5343/host/h/s/chan_0"));
        r.lost_packets = 1;
        lost.per_ring.push(r);
        let text = lost.to_string();
        assert!(text.contains("DAMAGED: 1 packets handed to the consumer were not relayed"), "{text}");
        assert!(!text.contains(crate::ACCOUNT), "{text}");
        let v: serde_json::Value = serde_json::to_value(&rep).unwrap();
        assert_eq!(
            (v["exit"].as_str(), v["relay"]["per_stream"][0]["missed_packets"].as_u64()),
            (Some("relay_gone"), Some(2))
        );
    }
}
