//! # hvtrace-relayd — a client of LTTng's relay daemon
//!
//! `lttng-relayd` collects traces from many hosts over TCP, writes them to
//! disk and serves them live to `babeltrace2 net://…` and Trace Compass.
//! [`Relayd`] plays the part of `lttng-consumerd` towards it: it opens a
//! session, a `metadata` stream and one data stream per CPU, sends CTF
//! packets whole on the data socket with their index on the control socket,
//! sends live beacons for idle streams, and closes the streams at the end.
//!
//! It speaks relay protocol **2.10**, the last version before trace chunks,
//! which every later relay still accepts and which needs no chunk commands
//! (see `docs/relayd.md` for the message sequence and the live rules).
//!
//! This crate knows nothing of rings or consumers: it moves bytes and
//! indexes. Its I/O is blocking, each call bounded by the timeout given to
//! [`Relayd::connect`]; the consumer runs it on a thread of its own so that
//! nothing else ever waits on the network.
#![forbid(unsafe_code)]

mod client;
pub mod local;
mod url;
mod wire;

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

pub use client::{RelayStream, Relayd, SessionParams};
pub use local::LocalRelayd;
pub use url::{RelaydUrl, UrlError, DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT};
pub use wire::{PacketIndex, MAX_HOSTNAME, MAX_SESSION_NAME, MAX_STREAM_NAME};

/// lttng's default live timer (`DEFAULT_LTTNG_LIVE_TIMER`), in microseconds.
pub const DEFAULT_LIVE_TIMER_US: u32 = 1_000_000;

/// Why talking to the relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelaydError {
    /// A socket could not be connected.
    #[error("cannot connect to the relay's {which} port {host}:{port}: {source}")]
    Connect {
        /// `control` or `data`.
        which: &'static str,
        /// The relay's host.
        host: String,
        /// The port.
        port: u16,
        /// The system error (`ECONNREFUSED`: no relay listening there).
        source: io::Error,
    },
    /// The relay answered a command with an error code.
    #[error("the relay refused {command} (lttng error code {code}; its log says why)")]
    Refused {
        /// The command.
        command: &'static str,
        /// lttng's return code (`LTTNG_OK` is 10).
        code: u32,
    },
    /// Sending or receiving failed: the relay went away, or took longer
    /// than the timeout.
    #[error("{}", gone_message(what, source))]
    Io {
        /// The command or transfer.
        what: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// The relay said something this client does not understand.
    #[error("relay protocol error: {0}")]
    Protocol(String),
    /// A name the relay would refuse or turn into a bad path.
    #[error("bad {what} {name:?}: {why}")]
    BadName {
        /// What the name is for.
        what: &'static str,
        /// The name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

fn gone_message(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("the relay did not take {what} in time (too slow or stalled): {e}")
        }
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => format!("the relay went away during {what}: {e}"),
        _ => format!("{what} to the relay failed: {e}"),
    }
}

impl RelaydError {
    fn io(what: &'static str, source: io::Error) -> RelaydError {
        RelaydError::Io { what, source }
    }
}

/// The default session name, `hvtrace-HOST-YYYYMMDD-HHMMSS` (UTC), as
/// `lttng create` names sessions after the time.
pub fn default_session_name(hostname: &str, now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let host: String = hostname.chars().map(|c| if c == '/' { '_' } else { c }).collect();
    format!("hvtrace-{host}-{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn session_name_from_host_and_utc_time() {
        // 2026-12-02 17:31:26 UTC, and a leap day.
        let t = UNIX_EPOCH + Duration::from_secs(1_796_232_686);
        assert_eq!(default_session_name("h1", t), "hvtrace-h1-20261202-173126");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29 00:00:00
        assert_eq!(default_session_name("a/b", leap), "hvtrace-a_b-20000229-000000");
        assert_eq!(default_session_name("x", UNIX_EPOCH), "hvtrace-x-19700101-000000");
    }

    #[test]
    fn errors_say_what_happened() {
        let e = RelaydError::io("SEND_INDEX", io::ErrorKind::WouldBlock.into());
        assert!(e.to_string().contains("too slow"), "{e}");
        let e = RelaydError::io("SEND_INDEX", io::ErrorKind::UnexpectedEof.into());
        assert!(e.to_string().contains("went away during SEND_INDEX"), "{e}");
    }
}
