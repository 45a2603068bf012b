//! Running a pCPU simulation for a count of events or until stopped, paced
//! to a rate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hvtrace_core::Sink;

use crate::sim::{PcpuSim, StepStats};
use crate::EVENT_COUNT;

/// Longest sleep between two looks at the stop flag.
const MAX_NAP: Duration = Duration::from_millis(100);

/// Events emitted between two looks at the stop flag, paced or not.
const STOP_CHECK_EVERY: u64 = 1024;

/// The highest `rate_per_sec` a run takes: 10^9 events per second on one
/// pCPU, some 30 times what one core can record (docs/benchmarks.md). Above
/// it the pacing arithmetic gains nothing and a burst would be over 10^6
/// events long; callers reject larger rates (`hvtrace sim --rate`).
pub const MAX_RATE: u64 = 1_000_000_000;

/// How long [`PcpuSim::run`] runs and how fast.
#[derive(Clone, Copy, Debug)]
pub struct RunConfig<'a> {
    /// Emit exactly this many events, then return (unless stopped first).
    /// `None`: run until `stop`.
    pub events: Option<u64>,
    /// Events per second on this pCPU; `None` as fast as possible; `Some(0)`
    /// an idle host: emit nothing, sleep until `stop`. Rates above
    /// [`MAX_RATE`] are run at [`MAX_RATE`].
    pub rate_per_sec: Option<u64>,
    /// Set to end the run. It is checked at least every 100 ms while
    /// sleeping and every 1024 events otherwise, bursts included; unparking the running
    /// thread (`Thread::unpark`) makes a sleeping run notice it at once.
    pub stop: &'a AtomicBool,
}

/// Counts of a run (or of several, [`SimStats::merge`]d).
///
/// `emitted` counts every attempted record. With a sink that stays open for
/// the whole run (`closed == 0`), `records found in the trace + events the
/// rings counted as discarded == emitted`, and `refused` equals the rings'
/// discarded count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimStats {
    /// Events emitted (records attempted).
    pub emitted: u64,
    /// Records the sink refused and counted as lost (full, busy, too big).
    pub refused: u64,
    /// Records the sink refused because it was closed (not losses).
    pub closed: u64,
    /// Events emitted, by [`xen::Id`](crate::xen::Id) (index `id as usize`).
    pub by_event: [u64; EVENT_COUNT],
}

impl Default for SimStats {
    fn default() -> Self {
        SimStats { emitted: 0, refused: 0, closed: 0, by_event: [0; EVENT_COUNT] }
    }
}

impl SimStats {
    /// Adds one step's counts.
    #[inline]
    pub fn add(&mut self, s: &StepStats) {
        self.emitted += s.emitted as u64;
        self.refused += s.refused as u64;
        self.closed += s.closed as u64;
        self.by_event[s.id as usize] += s.emitted as u64;
    }

    /// Adds another run's counts (e.g. to total all pCPUs).
    pub fn merge(&mut self, o: &SimStats) {
        self.emitted += o.emitted;
        self.refused += o.refused;
        self.closed += o.closed;
        for (a, b) in self.by_event.iter_mut().zip(o.by_event.iter()) {
            *a += b;
        }
    }

    /// Records the sink accepted.
    pub fn recorded(&self) -> u64 {
        self.emitted - self.refused - self.closed
    }
}

impl PcpuSim {
    /// Emits events into `sink` as `cfg` says and returns this run's counts.
    ///
    /// Paced runs sleep whenever they are ahead of `rate_per_sec` and emit in
    /// bursts of at most a millisecond's worth of events, 1024 at a time
    /// between looks at the stop flag and the clock; a run that falls behind (a slow sink)
    /// catches up.
    pub fn run<S: Sink + ?Sized>(&mut self, sink: &S, cfg: RunConfig<'_>) -> SimStats {
        let mut st = SimStats::default();
        let limit = cfg.events.unwrap_or(u64::MAX);
        let stopped = || cfg.stop.load(Ordering::Relaxed);
        match cfg.rate_per_sec {
            None => {
                while st.emitted < limit {
                    if st.emitted % STOP_CHECK_EVERY == 0 && stopped() {
                        break;
                    }
                    st.add(&self.step(sink));
                }
            }
            Some(0) => {
                while limit > 0 && !stopped() {
                    std::thread::park_timeout(MAX_NAP);
                }
            }
            Some(rate) => {
                let rate = rate.min(MAX_RATE);
                let start = Instant::now();
                let burst = (rate / 1000).max(1);
                while st.emitted < limit && !stopped() {
                    let el = start.elapsed().as_nanos();
                    // Events allowed by now: those due, plus up to a burst ahead.
                    let allowed = (el * rate as u128 / 1_000_000_000) as u64 + burst;
                    if st.emitted >= allowed {
                        // Event number `emitted` is allowed once `el * rate >= (emitted + 1 - burst) * 1e9`.
                        let due = (st.emitted + 1 - burst) as u128 * 1_000_000_000 / rate as u128;
                        let wait = Duration::from_nanos(due.saturating_sub(el).max(1000) as u64);
                        std::thread::park_timeout(wait.min(MAX_NAP));
                        continue;
                    }
                    // At most STOP_CHECK_EVERY events before the loop looks at
                    // the stop flag again, however long the burst allowed.
                    let n = (allowed - st.emitted).min(limit - st.emitted).min(STOP_CHECK_EVERY);
                    for _ in 0..n {
                        st.add(&self.step(sink));
                    }
                }
            }
        }
        st
    }
}
