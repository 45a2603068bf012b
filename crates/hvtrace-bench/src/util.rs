//! Shared pieces: the benchmark's events, pinned/paced producer threads,
//! per-thread CPU figures, /proc sampling and small statistics.

use std::path::Path;
use std::sync::Barrier;
use std::time::Duration;

use anyhow::{Context, Result};
use hvtrace_core::decode::{packet_info, records};
use hvtrace_core::{RecordError, Sink};

hvtrace_core::events! {
    /// The benchmark's events: the same payloads as `bench/lttng-ust/hvbench_tp.h`.
    pub mod hvbench ("hvbench") {
        /// (int32, uint64, "hello"): the event LTTng-UST is compared on.
        fn event(a: i32, b: u64, s: &str);
        /// Two integers: the bytes-per-event figure.
        fn two_ints(a: u32, b: u64);
    }
}

/// Which event the producers record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EventKind {
    /// `hvbench:event` (int32, uint64, "hello").
    Full,
    /// `hvbench:two_ints` (uint32, uint64).
    TwoInts,
}

/// Records events `first..first+n` into `sink`; returns how many were refused (lost, not `Closed`).
#[inline(never)]
pub(crate) fn emit<S: Sink>(sink: &S, kind: EventKind, first: u64, n: u64) -> u64 {
    let mut refused = 0;
    match kind {
        EventKind::Full => {
            for i in first..first + n {
                if let Err(e) = hvbench::event(sink, i as i32, i, "hello") {
                    refused += (e != RecordError::Closed) as u64;
                }
            }
        }
        EventKind::TwoInts => {
            for i in first..first + n {
                if let Err(e) = hvbench::two_ints(sink, i as u32, i) {
                    refused += (e != RecordError::Closed) as u64;
                }
            }
        }
    }
    refused
}

/// The TSC (the clock of the comparison: LTTng-UST and the floor use it too, or CLOCK_MONOTONIC for UST).
#[inline]
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in ns.
pub(crate) fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread, ns.
pub(crate) fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn thread_nivcsw() -> i64 {
    // SAFETY: getrusage fills one rusage struct through a valid pointer.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru.ru_nivcsw
    }
}

/// User + system CPU time of every waited-for child process so far, ns.
pub(crate) fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage fills one rusage struct through a valid pointer.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

fn sleep_until_ns(deadline: u64) {
    let ts = libc::timespec { tv_sec: (deadline / 1_000_000_000) as _, tv_nsec: (deadline % 1_000_000_000) as _ };
    // SAFETY: plain syscall on a valid timespec; EINTR is retried.
    while unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &ts, std::ptr::null_mut()) }
        == libc::EINTR
    {}
}

/// What one producer thread measured (same definitions as `bench/lttng-ust/bench_common.h`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct ThreadResult {
    pub cpu: i64,
    pub busy_ns: u64,
    pub wall_ns: u64,
    pub cpu_ns: u64,
    pub nivcsw: i64,
    pub refused: u64,
}

/// How producers run (the options of every producer benchmark).
#[derive(clap::Args, Clone, Copy, Debug)]
pub(crate) struct Load {
    /// Producer threads (thread i pinned to online CPU i, mod their count).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timed events per thread.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Untimed (but recorded) events per thread before the start barrier.
    #[arg(long, default_value_t = 10_000)]
    pub warmup: u64,
    /// Events per second per thread (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

/// Runs `load.threads` threads, thread i pinned to online CPU i (mod count).
/// `body(i)` builds thread i's emitter (untimed), which records events
/// `first..first+n` and returns how many were refused. Warm-up, barrier,
/// timed part (whole loop unpaced; sum of ~1 ms batches paced).
pub(crate) fn run_threads<'a, B>(load: Load, body: B) -> Vec<ThreadResult>
where
    B: Fn(usize) -> Box<dyn FnMut(u64, u64) -> u64 + 'a> + Sync,
{
    let cpus = hvtrace_sys::cpu::online_cpus();
    let barrier = Barrier::new(load.threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..load.threads)
            .map(|i| {
                let (barrier, body, cpus) = (&barrier, &body, &cpus);
                s.spawn(move || {
                    let cpu = cpus[i % cpus.len().max(1)];
                    let pinned = hvtrace_sys::cpu::pin_current_thread(cpu).is_ok();
                    let mut f = body(i);
                    let mut r = ThreadResult { cpu: if pinned { cpu as i64 } else { -1 }, ..Default::default() };
                    if load.warmup > 0 {
                        f(0, load.warmup);
                    }
                    barrier.wait();
                    let m = load.events;
                    let (cs0, c0, t0) = (thread_nivcsw(), thread_cpu_ns(), now_ns());
                    if load.rate <= 0.0 {
                        r.refused = f(load.warmup, m);
                        r.busy_ns = now_ns() - t0;
                    } else {
                        let batch = ((load.rate / 1000.0) as u64).max(1);
                        let ns_per_ev = 1e9 / load.rate;
                        let mut done = 0;
                        while done < m {
                            sleep_until_ns(t0 + (done as f64 * ns_per_ev) as u64);
                            let n = (m - done).min(batch);
                            let b0 = now_ns();
                            r.refused += f(load.warmup + done, n);
                            r.busy_ns += now_ns() - b0;
                            done += n;
                        }
                    }
                    r.wall_ns = now_ns() - t0;
                    r.cpu_ns = thread_cpu_ns() - c0;
                    r.nivcsw = thread_nivcsw() - cs0;
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("producer thread panicked")).collect()
    })
}

/// Median of `v` (NaN if empty).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Quantile `q` (nearest rank) of sorted `s`.
pub(crate) fn quantile(s: &[f64], q: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The usual producer figures, as JSON fields (`ns_per_event` = median over threads of busy / M).
pub(crate) fn thread_summary(load: Load, rs: &[ThreadResult]) -> serde_json::Value {
    let m = load.events as f64;
    let per: Vec<f64> = rs.iter().map(|r| r.busy_ns as f64 / m).collect();
    let cpu: Vec<f64> = rs.iter().map(|r| r.cpu_ns as f64 / m).collect();
    let wall = rs.iter().map(|r| r.wall_ns).max().unwrap_or(0);
    serde_json::json!({
        "threads": load.threads,
        "events_per_thread": load.events,
        "warmup_events_per_thread": load.warmup,
        "rate_per_thread": load.rate,
        "ns_per_event": round2(median(&per)),
        "ns_per_event_min": round2(per.iter().copied().fold(f64::INFINITY, f64::min)),
        "ns_per_event_max": round2(per.iter().copied().fold(0.0, f64::max)),
        "per_thread_ns": per.iter().map(|x| round2(*x)).collect::<Vec<_>>(),
        "thread_cpu_ns_per_event": round2(median(&cpu)),
        "elapsed_s": wall as f64 / 1e9,
        "involuntary_ctx_switches": rs.iter().map(|r| r.nivcsw).sum::<i64>(),
        "pinned": rs.iter().all(|r| r.cpu >= 0),
        "events_emitted": (load.events + load.warmup) * load.threads as u64,
        "events_refused": rs.iter().map(|r| r.refused).sum::<u64>(),
    })
}

/// Rounds to 2 decimals (for readable JSON).
pub(crate) fn round2(x: f64) -> f64 {
    if x.is_finite() {
        (x * 100.0).round() / 100.0
    } else {
        x
    }
}

/// On-CPU ns of every live thread of `pid` (`/proc/PID/task/*/schedstat`, ns resolution).
pub(crate) fn schedstat_ns(pid: u32) -> u64 {
    schedstat_by_thread(pid).values().sum()
}

/// On-CPU ns of the live threads of `pid`, summed by thread name, a trailing
/// `-N` index dropped (`comm` holds at most 15 bytes, so the consumer's
/// workers are all `hvtrace-consume`).
pub(crate) fn schedstat_by_thread(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut by = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by };
    for e in dir.flatten() {
        let Some(ns) = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim_end();
        let name = match comm.rsplit_once('-') {
            Some((head, idx)) if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) => head,
            _ => comm,
        };
        *by.entry(name.to_string()).or_insert(0) += ns;
    }
    by
}

/// What a trace directory holds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct TraceCount {
    pub streams: u64,
    pub packets: u64,
    pub bad_packets: u64,
    pub events_recorded: u64,
    /// Stream file bytes (metadata excluded), what is on disk.
    pub trace_bytes: u64,
    /// Sum of packets' content sizes (headers + records, no end-of-packet padding).
    pub content_bytes: u64,
    pub metadata_bytes: u64,
}

/// Packets an lttng-relayd has indexed under `index_dir` (`*.idx`: a
/// 16-byte header, then 72 bytes an entry, protocol 2.8 and later); 0 while
/// it does not exist.
pub(crate) fn relay_index_entries(index_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(index_dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "idx"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len().saturating_sub(16) / 72)
        .sum()
}

/// The CPU of stream file `name` of `channel` (`<channel>_<cpu>`), if it is one.
pub(crate) fn stream_cpu(name: &str, channel: &str) -> Option<u32> {
    name.strip_prefix(channel)?.strip_prefix('_')?.parse().ok()
}

/// Decodes every stream file `<channel>_<cpu>` of `dir`.
pub(crate) fn count_trace(dir: &Path, channel: &str) -> Result<TraceCount> {
    let mut c = TraceCount::default();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "metadata" {
            c.metadata_bytes += e.metadata()?.len();
            continue;
        }
        if stream_cpu(&name, channel).is_some() {
            c.count_stream(&std::fs::read(e.path())?);
        }
    }
    Ok(c)
}

impl TraceCount {
    /// Adds the packets of one stream file's bytes.
    pub(crate) fn count_stream(&mut self, bytes: &[u8]) {
        let c = self;
        c.streams += 1;
        c.trace_bytes += bytes.len() as u64;
        let mut at = 0;
        while at < bytes.len() {
            let Ok(info) = packet_info(&bytes[at..]) else {
                c.bad_packets += 1;
                break;
            };
            c.packets += 1;
            c.content_bytes += info.content_len as u64;
            match records(&bytes[at..at + info.packet_len], <hvbench::Events as hvtrace_core::EventSet>::EVENTS) {
                Ok((_, it)) => {
                    for r in it {
                        if r.is_err() {
                            c.bad_packets += 1;
                            break;
                        }
                        c.events_recorded += 1;
                    }
                }
                Err(_) => c.bad_packets += 1,
            }
            at += info.packet_len;
        }
    }
}

/// Polls `f` every `step` until it returns true or `timeout` passes.
pub(crate) fn wait_for(timeout: Duration, step: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f()? {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(step);
    }
}

/// The 1-minute load average.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
