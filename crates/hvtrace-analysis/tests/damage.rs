//! Damaged and truncated traces: analyze reports every intact packet (the
//! ones `hvtrace check` vouches for) with a warning naming what it skipped,
//! and never panics.

mod common;

use std::path::Path;

use common::{record_cpu, write_trace};
use hvtrace_analysis::{analyze, Options, Report};
use hvtrace_core::ctf::packet;
use hvtrace_core::{EventSet, Geometry};
use hvtrace_sim::{xen, PcpuSim, SimConfig};

/// A 2-pCPU simulation, 20 000 events per pCPU, 8 KiB packets.
fn sim_trace(dir: &Path) {
    let cfg = SimConfig { pcpus: 2, domains: 4, vcpus_per_domain: 2, seed: 7 };
    let geo = Geometry::new(8192, 8).unwrap();
    let streams = (0..cfg.pcpus)
        .map(|cpu| {
            let (s, _, refused) = record_cpu(cpu, geo, u64::MAX / 2, |c| {
                let mut sim = PcpuSim::new(cpu, &cfg);
                for i in 0..20_000u64 {
                    sim.step(c.at(1000 + i * 50));
                    if i % 100 == 99 {
                        c.drain();
                    }
                }
            });
            assert_eq!(refused, 0);
            (cpu, s)
        })
        .collect::<Vec<_>>();
    write_trace(dir, "xen-sim", xen::Events::EVENTS, &streams);
}

fn run(dir: &Path) -> Report {
    analyze(dir, &[&hvtrace_sim::MAPPING], &Options::default(), &mut |_| {}).unwrap()
}

/// Records in the packets `hvtrace check` finds intact.
fn intact_records(dir: &Path) -> u64 {
    hvtrace_reader::check(dir).unwrap().records()
}

#[test]
fn a_flipped_magic_costs_its_packet_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    sim_trace(tmp.path());
    let whole = run(tmp.path());
    assert!(whole.warnings.is_empty());
    let f = tmp.path().join("channel0_0");
    let mut b = std::fs::read(&f).unwrap();
    b[3 * 8192 + packet::MAGIC] ^= 0xff;
    std::fs::write(&f, &b).unwrap();

    let r = run(tmp.path());
    assert_eq!(r.events, intact_records(tmp.path()));
    assert!(r.events < whole.events);
    assert!(r.warnings.iter().any(|w| w.starts_with("channel0_0: skipped bytes 24576..32768")), "{:?}", r.warnings);
    // The skipped packet is a gap: the vCPUs of pCPU 0 lose that time.
    let lost: u64 = r.vcpus.iter().map(|v| v.runstates.lost.total_ns).sum();
    assert!(lost > 0);
    assert!(r.pcpus[0].missing_ns > 0 && r.pcpus[1].missing_ns == 0);
}

#[test]
fn a_cut_file_and_trailing_garbage_keep_the_intact_packets() {
    let tmp = tempfile::tempdir().unwrap();
    sim_trace(tmp.path());
    let f1 = tmp.path().join("channel0_1");
    let b = std::fs::read(&f1).unwrap();
    std::fs::write(&f1, &b[..b.len() - 3000]).unwrap();
    let f0 = tmp.path().join("channel0_0");
    let mut b = std::fs::read(&f0).unwrap();
    b.extend_from_slice(&[0xa5; 100]);
    std::fs::write(&f0, &b).unwrap();

    let r = run(tmp.path());
    assert_eq!(r.events, intact_records(tmp.path()));
    assert!(r.warnings.iter().any(|w| w.starts_with("channel0_1: skipped") && w.contains("cut")), "{:?}", r.warnings);
    assert!(r.warnings.iter().any(|w| w.starts_with("channel0_0: skipped")), "{:?}", r.warnings);
}

#[test]
fn garbage_everywhere_is_an_error_or_a_report_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    sim_trace(tmp.path());
    let f = tmp.path().join("channel0_0");
    let len = std::fs::metadata(&f).unwrap().len() as usize;
    // Every 7th byte flipped, then a file of nothing but garbage.
    let mut b = std::fs::read(&f).unwrap();
    for i in (0..len).step_by(7) {
        b[i] = b[i].wrapping_mul(31).wrapping_add(7);
    }
    std::fs::write(&f, &b).unwrap();
    std::fs::write(tmp.path().join("channel0_1"), vec![0x5a; 10_000]).unwrap();
    let r = run(tmp.path());
    assert_eq!(r.events, intact_records(tmp.path()));
    assert!(!r.warnings.is_empty());
    // A metadata file that is not TSDL is an error naming it.
    std::fs::write(tmp.path().join("metadata"), "garbage").unwrap();
    let e = analyze(tmp.path(), &[], &Options::default(), &mut |_| {}).unwrap_err();
    let cause = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_default();
    assert!(e.to_string().contains("cannot read") && cause.contains("metadata"), "{e}: {cause}");
}
