//! The consumer's account of a trace: `.hvtrace-consumer` in the trace
//! directory, the marker `check` reads to tell the packets a trace should
//! hold from the ones it does.
//!
//! The consumer writes its first two lines when it attaches (so a trace
//! whose consumer was killed still says its mode) and the rest when it ends:
//!
//! ```text
//! hvtrace-consumer account 1
//! mode discard
//! stream 0 first 0 next 57
//! lost 0 5 9 write failed: No space left on device
//! torn 0 12 12
//! end destroyed
//! ```
//!
//! * `mode` is the ring mode: in `overwrite` mode a sequence gap is the
//!   flight recorder's normal loss (the producer reclaimed those packets and
//!   counted their events), in `discard` mode every gap is damage.
//! * `stream CPU first F next N`: the consumer was handed packets `F..N`
//!   (sequence numbers) of CPU `CPU`'s ring; it wrote all of them but those
//!   named on `lost` / `torn` lines.
//! * `lost CPU A B WHY`: packets `A..=B` were handed to the consumer and are
//!   not in the stream file (write error, malformed, torn in discard mode,
//!   reused by the producer after someone else moved the consumed position).
//! * `torn CPU A B`: overwrite mode only, packets `A..=B` that the producer
//!   took back while they were being written (counted as overwritten by the
//!   producer; not a loss of the consumer).
//! * `end REASON`: the session ended (`destroyed`, `host_gone`, `signal`,
//!   `shutdown`); absent when the consumer did not finish.
//!
//! The name starts with a dot: CTF readers (babeltrace2, babeltrace 1) skip
//! hidden files, and take any other non-empty file for a stream.

use std::fmt;

/// File name of the account in a trace directory.
pub const ACCOUNT: &str = ".hvtrace-consumer";

const MAGIC: &str = "hvtrace-consumer account 1";

/// A range of packet sequence numbers, both ends included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqRange {
    /// First sequence number.
    pub first: u64,
    /// Last sequence number.
    pub last: u64,
    /// Why (for `lost`), as the consumer said.
    pub why: String,
}

impl SeqRange {
    /// Whether `seq` is in the range.
    pub fn contains(&self, seq: u64) -> bool {
        (self.first..=self.last).contains(&seq)
    }
}

/// What the consumer says of one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamAccount {
    /// CPU.
    pub cpu: u32,
    /// Sequence number of the first packet handed to the consumer (a
    /// consumer that took over from another starts past 0).
    pub first: u64,
    /// One past the last packet handed to it.
    pub next: u64,
    /// Packets handed to it and not written.
    pub lost: Vec<SeqRange>,
    /// Overwrite mode: packets the producer took back while they were written.
    pub torn: Vec<SeqRange>,
}

/// The whole account: see the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// The rings were in overwrite mode (flight recorder).
    pub overwrite: bool,
    /// Per stream, when the consumer finished.
    pub streams: Vec<StreamAccount>,
    /// How the session ended; `None` if the consumer did not finish.
    pub end: Option<String>,
}

impl Account {
    /// The lines written at attach.
    pub fn header(overwrite: bool) -> String {
        format!("{MAGIC}\nmode {}\n", if overwrite { "overwrite" } else { "discard" })
    }

    /// The lines written at the end: streams, losses and `end`.
    pub fn footer(&self) -> String {
        let mut s = String::new();
        for st in &self.streams {
            s += &format!("stream {} first {} next {}\n", st.cpu, st.first, st.next);
            for r in &st.lost {
                // One line per range: a reason cannot hold a newline.
                s += &format!("lost {} {} {} {}\n", st.cpu, r.first, r.last, r.why.replace('\n', " "));
            }
            for r in &st.torn {
                s += &format!("torn {} {} {}\n", st.cpu, r.first, r.last);
            }
        }
        if let Some(e) = &self.end {
            s += &format!("end {e}\n");
        }
        s
    }

    /// The stream of `cpu`, if the account names it.
    pub fn stream(&self, cpu: u32) -> Option<&StreamAccount> {
        self.streams.iter().find(|s| s.cpu == cpu)
    }

    /// Parses an account; the error says which line is wrong.
    pub fn parse(text: &str) -> Result<Account, String> {
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l) != Some(MAGIC) {
            return Err(format!("line 1: not `{MAGIC}`"));
        }
        let mut a = Account::default();
        let mut mode = false;
        for (i, line) in lines {
            let bad = || format!("line {}: cannot read `{}`", i + 1, line.chars().take(80).collect::<String>());
            let mut w = line.splitn(5, ' ');
            let num = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok());
            match w.next() {
                Some("mode") => {
                    a.overwrite = match w.next() {
                        Some("overwrite") => true,
                        Some("discard") => false,
                        _ => return Err(bad()),
                    };
                    mode = true;
                }
                Some("stream") => {
                    let cpu = num(w.next()).and_then(|c| u32::try_from(c).ok()).ok_or_else(bad)?;
                    let (Some("first"), Some(first)) = (w.next(), num(w.next())) else { return Err(bad()) };
                    let rest: Vec<&str> = w.next().unwrap_or("").split(' ').collect();
                    let ["next", n] = rest[..] else { return Err(bad()) };
                    let next = n.parse().map_err(|_| bad())?;
                    if first > next || a.stream(cpu).is_some() {
                        return Err(bad());
                    }
                    a.streams.push(StreamAccount { cpu, first, next, ..Default::default() });
                }
                Some(kind @ ("lost" | "torn")) => {
                    let cpu = num(w.next()).ok_or_else(bad)?;
                    let (Some(first), Some(last)) = (num(w.next()), num(w.next())) else { return Err(bad()) };
                    let why = w.next().unwrap_or("").to_string();
                    let st = a.streams.iter_mut().find(|s| u64::from(s.cpu) == cpu).ok_or_else(bad)?;
                    if first > last {
                        return Err(bad());
                    }
                    let r = SeqRange { first, last, why };
                    if kind == "lost" {
                        st.lost.push(r)
                    } else {
                        st.torn.push(r)
                    }
                }
                Some("end") => a.end = Some(line[4.min(line.len())..].to_string()),
                Some("") if line.is_empty() => {}
                _ => return Err(bad()),
            }
        }
        if !mode {
            return Err("no `mode` line".into());
        }
        Ok(a)
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Account::header(self.overwrite))?;
        f.write_str(&self.footer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_lines() {
        let a = Account {
            overwrite: false,
            streams: vec![
                StreamAccount {
                    cpu: 0,
                    first: 0,
                    next: 57,
                    lost: vec![SeqRange { first: 5, last: 9, why: "write failed: No space\nleft".into() }],
                    torn: vec![],
                },
                StreamAccount {
                    cpu: 3,
                    first: 10,
                    next: 10,
                    lost: vec![],
                    torn: vec![SeqRange { first: 12, last: 12, why: String::new() }],
                },
            ],
            end: Some("destroyed".into()),
        };
        let text = a.to_string();
        assert!(text.contains("lost 0 5 9 write failed: No space left\n"), "{text}");
        let mut back = Account::parse(&text).unwrap();
        back.streams[0].lost[0].why = a.streams[0].lost[0].why.clone();
        assert_eq!(back, a);
        // Killed consumer: header only.
        let h = Account::parse(&Account::header(true)).unwrap();
        assert!(h.overwrite && h.streams.is_empty() && h.end.is_none());
        for bad in [
            "",
            "hvtrace-consumer account 2\nmode discard\n",
            "hvtrace-consumer account 1\n",
            "hvtrace-consumer account 1\nmode fast\n",
            "hvtrace-consumer account 1\nmode discard\nlost 0 1 2 x\n",
            "hvtrace-consumer account 1\nmode discard\nstream 0 first 5 next 2\n",
            "hvtrace-consumer account 1\nmode discard\nstream 0 first 0 next 9\nlost 0 4 3 x\n",
            "hvtrace-consumer account 1\nmode discard\nstream x first 0 next 9\n",
            "hvtrace-consumer account 1\nmode discard\nwhat\n",
        ] {
            assert!(Account::parse(bad).is_err(), "{bad:?}");
        }
    }
}
