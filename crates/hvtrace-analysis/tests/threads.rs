//! The report read in time windows on several threads is the report of
//! one thread, byte for byte (JSON and text), on traces that put every
//! piece of carried state to the test: guests destroyed and rebuilt, losses,
//! damage (read whole), `--from/--to` windows.

mod common;

use std::path::Path;

use common::{record_cpu, write_trace};
use hvtrace_analysis::{analyze, write_text, Options, Report, WINDOWS_PER_THREAD};
use hvtrace_core::ctf::packet;
use hvtrace_core::{EventSet, Geometry};
use hvtrace_model::Mapping;
use hvtrace_sim::{xen, PcpuSim, SimConfig};

const MAPPINGS: &[&dyn Mapping] = &[&hvtrace_sim::MAPPING, &hvtrace_kvm::MAPPING];

/// A simulated host: `events` per pCPU at 37 ns steps, packets of `geo`,
/// drained every `drain` events. Returns the events the rings refused.
fn sim_trace(dir: &Path, cfg: &SimConfig, events: u64, geo: Geometry, drain: u64) -> u64 {
    sim_trace_at(dir, cfg, events, geo, drain, |cpu, i| 1000 + i * (37 + u64::from(cpu)))
}

/// As [`sim_trace`], event `i` of pCPU `cpu` at `at(cpu, i)` ns.
fn sim_trace_at(
    dir: &Path,
    cfg: &SimConfig,
    events: u64,
    geo: Geometry,
    drain: u64,
    at: impl Fn(u32, u64) -> u64,
) -> u64 {
    let mut refused = 0;
    let streams = (0..cfg.pcpus)
        .map(|cpu| {
            let (s, _, _) = record_cpu(cpu, geo, u64::MAX / 2, |c| {
                let mut sim = PcpuSim::new(cpu, cfg);
                for i in 0..events {
                    // The pCPUs' clocks drift apart: a vCPU's events cross streams out of step.
                    refused += u64::from(sim.step(c.at(at(cpu, i))).refused);
                    if i % drain == drain - 1 {
                        c.drain();
                    }
                }
            });
            (cpu, s)
        })
        .collect::<Vec<_>>();
    write_trace(dir, "xen-sim", xen::Events::EVENTS, &streams);
    refused
}

/// `dir` read on `threads` threads, in `windows` time windows (0: the default).
fn run(dir: &Path, opts: Options, (threads, windows): (usize, usize)) -> Report {
    analyze(dir, MAPPINGS, &Options { threads, windows, ..opts }, &mut |_| {}).unwrap()
}

/// Threads and windows: one window per thread, the default (several per
/// thread, taken in turn), and more windows than the default.
const SCHEDULES: [(usize, usize); 6] = [(2, 2), (2, 0), (3, 0), (4, 0), (7, 0), (2, 13)];

/// The first place two outputs differ, with some context.
fn first_difference(a: &str, b: &str) -> String {
    let i = a.bytes().zip(b.bytes()).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let at = |s: &str| s.get(i.saturating_sub(200)..(i + 200).min(s.len())).unwrap_or("").to_string();
    format!("byte {i}:\n  1 thread: …{}…\n  windows:  …{}…", at(a), at(b))
}

/// Reads `dir` on 1 thread and on each of [`SCHEDULES`]; asserts the same
/// JSON and text each time. Returns the windows each read used.
fn same_on_every_thread_count(dir: &Path, opts: Options) -> Vec<usize> {
    let one = run(dir, opts, (1, 0));
    assert_eq!(one.windows, 1);
    let json = serde_json::to_string(&one).unwrap();
    let mut text = Vec::new();
    write_text(&one, &mut text).unwrap();
    let mut windows = Vec::new();
    for (n, w) in SCHEDULES {
        let r = run(dir, opts, (n, w));
        let asked = if w == 0 { n * WINDOWS_PER_THREAD } else { w };
        assert!(r.windows <= asked, "{n} threads, {asked} windows asked: {}", r.windows);
        let j = serde_json::to_string(&r).unwrap();
        assert!(j == json, "{n} threads, {} windows: JSON differs at {}", r.windows, first_difference(&json, &j));
        let mut t = Vec::new();
        write_text(&r, &mut t).unwrap();
        assert!(t == text, "{n} threads, {} windows: the text differs", r.windows);
        windows.push(r.windows);
    }
    windows
}

#[test]
fn rebuilt_guests_give_the_same_report_in_any_number_of_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SimConfig { pcpus: 2, domains: 4, vcpus_per_domain: 3, seed: 11 };
    sim_trace(tmp.path(), &cfg, 300_000, Geometry::new(16384, 8).unwrap(), 200);
    let r = run(tmp.path(), Options::default(), (1, 0));
    // Guests shut down and were rebuilt under new domain ids.
    assert!(r.vcpus.iter().any(|v| v.domain >= cfg.domains), "no rebuilt guest");
    let d = WINDOWS_PER_THREAD;
    assert_eq!(same_on_every_thread_count(tmp.path(), Options::default()), [2, 2 * d, 3 * d, 4 * d, 7 * d, 13]);
    // Progress is the sum over the windows: it never goes back, and ends at the total.
    let mut seen = Vec::new();
    let opts = Options { threads: 3, windows: 7, ..Options::default() };
    let r = analyze(tmp.path(), MAPPINGS, &opts, &mut |p| seen.push(p)).unwrap();
    assert_eq!(r.windows, 7);
    let total = seen[0].total;
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done && w[1].total == total), "{seen:?}");
    assert_eq!(seen.last().map(|p| p.done), Some(total));
}

#[test]
fn a_window_of_the_trace_gives_the_same_report_in_any_number_of_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SimConfig { pcpus: 3, domains: 6, vcpus_per_domain: 2, seed: 5 };
    sim_trace(tmp.path(), &cfg, 30_000, Geometry::new(4096, 8).unwrap(), 100);
    // Edges inside the trace, at its start and past its end.
    for (from, to) in
        [(Some(200_000), Some(900_000)), (None, Some(333_333)), (Some(777_777), None), (Some(0), Some(5_000_000))]
    {
        let opts = Options { from_ns: from, to_ns: to, ..Options::default() };
        let w = same_on_every_thread_count(tmp.path(), opts);
        assert!(w.iter().all(|&n| n > 1), "{w:?}");
    }
}

#[test]
fn losses_give_the_same_report_in_any_number_of_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SimConfig { pcpus: 2, domains: 4, vcpus_per_domain: 2, seed: 3 };
    // Two 4 KiB packets, drained every 700 events: the rings discard.
    let refused = sim_trace(tmp.path(), &cfg, 40_000, Geometry::new(4096, 2).unwrap(), 700);
    assert!(refused > 1000, "{refused}");
    let r = run(tmp.path(), Options::default(), (1, 0));
    assert_eq!(r.events_discarded, refused);
    assert!(r.vcpus.iter().map(|v| v.runstates.lost.count).sum::<u64>() > 10);
    let w = same_on_every_thread_count(tmp.path(), Options::default());
    assert!(w.iter().all(|&n| n > 1), "{w:?}");
}

#[test]
fn a_damaged_trace_is_read_whole_and_gives_the_same_report() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SimConfig { pcpus: 2, domains: 4, vcpus_per_domain: 2, seed: 9 };
    let p = 8192;
    sim_trace(tmp.path(), &cfg, 20_000, Geometry::new(p as u64, 8).unwrap(), 100);
    // Swapped packets in one stream, a cut one at the end of the other.
    let f0 = tmp.path().join("channel0_0");
    let mut b = std::fs::read(&f0).unwrap();
    let (a, c) = b.split_at_mut(6 * p);
    a[5 * p..].swap_with_slice(&mut c[..p]);
    std::fs::write(&f0, &b).unwrap();
    let f1 = tmp.path().join("channel0_1");
    let b = std::fs::read(&f1).unwrap();
    std::fs::write(&f1, &b[..b.len() - 3000]).unwrap();
    let r = run(tmp.path(), Options::default(), (1, 0));
    assert!(r.warnings.len() >= 2, "{:?}", r.warnings);
    assert_eq!(same_on_every_thread_count(tmp.path(), Options::default()), [1; SCHEDULES.len()]);
    // Damage in a record (not in a header) is only found by the walk.
    sim_trace(tmp.path(), &cfg, 20_000, Geometry::new(p as u64, 8).unwrap(), 100);
    let mut b = std::fs::read(&f1).unwrap();
    b[9 * p + packet::LEN..10 * p].fill(0xff);
    std::fs::write(&f1, &b).unwrap();
    let r = run(tmp.path(), Options::default(), (1, 0));
    assert!(!r.warnings.is_empty());
    assert_eq!(same_on_every_thread_count(tmp.path(), Options::default()), [1; SCHEDULES.len()]);
}

#[test]
fn a_clock_that_steps_back_gives_the_same_report_in_any_number_of_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SimConfig { pcpus: 2, domains: 4, vcpus_per_domain: 2, seed: 21 };
    // Every third event 60 ns before the one before it: a stream's records
    // (and so the merge) go back in time now and then, as a shared ring's
    // writers can record them.
    sim_trace_at(tmp.path(), &cfg, 40_000, Geometry::new(4096, 8).unwrap(), 100, |cpu, i| {
        1000 + i * (50 + u64::from(cpu)) - if i % 3 == 2 { 110 } else { 0 }
    });
    let r = run(tmp.path(), Options::default(), (1, 0));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let w = same_on_every_thread_count(tmp.path(), Options::default());
    assert!(w.iter().all(|&n| n > 1), "{w:?}");
}
