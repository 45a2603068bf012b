//! The host's timestamp source: the invariant TSC, calibrated once against
//! CLOCK_MONOTONIC, or CLOCK_MONOTONIC itself where the TSC cannot be trusted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hvtrace_core::metadata::ClockDesc;
use hvtrace_core::Clock;

/// Which source timestamps come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockSource {
    /// `rdtsc`: constant and non-stop across CPUs (checked in /proc/cpuinfo).
    Tsc,
    /// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds.
    Monotonic,
}

impl ClockSource {
    /// The source [`HostClock::detect`] picks here (without calibrating):
    /// what another process (the consumer's kernel source) must match.
    pub fn detect() -> ClockSource {
        let forced = std::env::var("HVTRACE_CLOCK").is_ok_and(|v| v == "monotonic");
        if !forced && tsc_is_invariant() {
            ClockSource::Tsc
        } else {
            ClockSource::Monotonic
        }
    }
}

/// A calibrated clock: its source, frequency and where tick 0 lies in real time.
#[derive(Clone, Copy, Debug)]
pub struct HostClock {
    source: ClockSource,
    freq: u64,
    /// Unix time of tick 0, in nanoseconds.
    epoch_ns: i128,
}

#[inline]
fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86_64.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        monotonic_ns()
    }
}

#[inline]
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn unix_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

/// Whether /proc/cpuinfo promises a TSC that is constant-rate and keeps
/// counting in idle states (so it is comparable across CPUs and time).
pub fn tsc_is_invariant() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| {
                s.lines().find(|l| l.starts_with("flags")).is_some_and(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.contains(&"constant_tsc") && f.contains(&"nonstop_tsc")
                })
            })
            .unwrap_or(false)
}

impl HostClock {
    /// The TSC if invariant (calibrated over `calibration`), else CLOCK_MONOTONIC.
    /// `HVTRACE_CLOCK=monotonic` forces the fallback.
    pub fn detect(calibration: Duration) -> HostClock {
        match ClockSource::detect() {
            ClockSource::Tsc => HostClock::calibrate_tsc(calibration),
            ClockSource::Monotonic => HostClock::monotonic(),
        }
    }

    /// CLOCK_MONOTONIC in nanoseconds.
    pub fn monotonic() -> HostClock {
        let (m, u) = (monotonic_ns(), unix_ns());
        HostClock { source: ClockSource::Monotonic, freq: 1_000_000_000, epoch_ns: u - m as i128 }
    }

    /// Measures the TSC frequency against CLOCK_MONOTONIC.
    pub fn calibrate_tsc(over: Duration) -> HostClock {
        let (t0, m0) = (rdtsc(), monotonic_ns());
        std::thread::sleep(over);
        let (t1, m1, u1) = (rdtsc(), monotonic_ns(), unix_ns());
        let ns = (m1 - m0).max(1) as u128;
        let freq = ((t1 - t0) as u128 * 1_000_000_000 / ns) as u64;
        // Unix time of tick 0 = now - ticks_now / freq.
        let epoch_ns = u1 - (t1 as u128 * 1_000_000_000 / freq.max(1) as u128) as i128;
        HostClock { source: ClockSource::Tsc, freq, epoch_ns }
    }

    /// The source in use.
    pub fn source(&self) -> ClockSource {
        self.source
    }

    /// Ticks per second.
    pub fn freq(&self) -> u64 {
        self.freq
    }

    /// The CTF clock description (name, frequency, offset from the Unix epoch).
    pub fn desc(&self) -> ClockDesc<'static> {
        let offset_s = self.epoch_ns.div_euclid(1_000_000_000) as i64;
        let rem_ns = self.epoch_ns.rem_euclid(1_000_000_000) as u128;
        let offset = (rem_ns * self.freq as u128 / 1_000_000_000) as u64;
        match self.source {
            ClockSource::Tsc => ClockDesc {
                name: "tsc",
                description: "invariant TSC, calibrated against CLOCK_MONOTONIC",
                freq: self.freq,
                offset_s,
                offset,
                precision: self.freq / 1_000_000, // ~1 us of calibration error
            },
            ClockSource::Monotonic => ClockDesc {
                name: "monotonic",
                description: "CLOCK_MONOTONIC",
                freq: self.freq,
                offset_s,
                offset,
                precision: 1,
            },
        }
    }
}

impl Clock for HostClock {
    #[inline]
    fn now(&self) -> u64 {
        match self.source {
            ClockSource::Tsc => rdtsc(),
            ClockSource::Monotonic => monotonic_ns(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_frequency_is_plausible_and_monotonic() {
        let c = HostClock::detect(Duration::from_millis(20));
        if c.source() == ClockSource::Tsc {
            assert!((100_000_000..20_000_000_000).contains(&c.freq()), "freq {}", c.freq());
        }
        let a = c.now();
        std::thread::sleep(Duration::from_millis(2));
        let b = c.now();
        let ns = (b - a) as u128 * 1_000_000_000 / c.freq() as u128;
        assert!((1_000_000..1_000_000_000).contains(&ns), "2 ms measured as {ns} ns");
    }

    #[test]
    fn ctf_offset_points_at_now() {
        let c = HostClock::detect(Duration::from_millis(20));
        let d = c.desc();
        let now_ticks = c.now() as u128;
        let unix = d.offset_s as i128 * 1_000_000_000
            + (d.offset as u128 * 1_000_000_000 / d.freq as u128) as i128
            + (now_ticks * 1_000_000_000 / d.freq as u128) as i128;
        let err = (unix - unix_ns()).abs();
        assert!(err < 50_000_000, "clock offset off by {err} ns");
    }
}
