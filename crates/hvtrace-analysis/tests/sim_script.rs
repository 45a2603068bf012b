//! A scripted run of the simulated Xen host's event set: every exit,
//! runstate interval and hypercall is placed at a known time, so analyze
//! must report exactly these counts and durations.

mod common;

use common::{record_cpu, write_trace};
use hvtrace_analysis::{analyze, Options, Report, StateRow, VcpuReport};
use hvtrace_core::{EventSet, Geometry};
use hvtrace_sim::{xen, Hypercall, Runstate as R, VmxExitReason as X, DOMID_XEN};

fn geo() -> Geometry {
    Geometry::new(4096, 16).unwrap()
}

/// `IO_INSTRUCTION` exit qualification (SDM table 28-5): port, `in`, size.
fn io_qual(port: u64, input: bool, size: u64) -> u64 {
    (port << 16) | (u64::from(input) << 3) | (size - 1)
}

/// The script; returns the number of records.
fn script(dir: &std::path::Path) -> u64 {
    // pCPU 0: HVM domain 1 with two vCPUs; vCPU 0 works, vCPU 1 stays down.
    let (s0, n0, lost0) = record_cpu(0, geo(), 10_000, |c| {
        c.rec(1000, |s| xen::domain_create(s, 1, 2, true));
        c.rec(1000, |s| xen::runstate_change(s, 1, 0, R::offline, R::runnable));
        c.rec(1500, |s| xen::runstate_change(s, 1, 0, R::runnable, R::running));
        c.rec(2000, |s| xen::vm_exit(s, 1, 0, X::IO_INSTRUCTION, 0xffff_8000, io_qual(0x3f8, false, 1)));
        c.rec(2300, |s| xen::vm_entry(s, 1, 0));
        c.rec(3000, |s| xen::vm_exit(s, 1, 0, X::IO_INSTRUCTION, 0xffff_8004, io_qual(0x70, true, 2)));
        c.rec(3500, |s| xen::vm_entry(s, 1, 0));
        c.rec(4000, |s| xen::vm_exit(s, 1, 0, X::VMCALL, 0xffff_8008, 0));
        c.rec(4100, |s| xen::hypercall_entry(s, 1, 0, Hypercall::sched_op, 0, 0, 0, 0, 0));
        c.rec(4400, |s| xen::hypercall_exit(s, 1, 0, Hypercall::sched_op, 0));
        c.rec(4600, |s| xen::vm_entry(s, 1, 0));
        c.rec(5000, |s| xen::vm_exit(s, 1, 0, X::HLT, 0xffff_800c, 0));
        c.rec(5000, |s| xen::runstate_change(s, 1, 0, R::running, R::blocked));
        c.rec(7000, |s| xen::runstate_change(s, 1, 0, R::blocked, R::runnable));
        c.rec(7200, |s| xen::runstate_change(s, 1, 0, R::runnable, R::running));
        c.rec(7200, |s| xen::vm_entry(s, 1, 0));
        c.rec(8000, |s| xen::vm_exit(s, 1, 0, X::EXTERNAL_INTERRUPT, 0xffff_8010, 0));
        c.rec(8000, |s| xen::runstate_change(s, 1, 0, R::running, R::runnable));
        c.rec(9000, |s| xen::runstate_change(s, 1, 0, R::runnable, R::running));
        c.rec(9000, |s| xen::vm_entry(s, 1, 0));
        c.rec(10_000, |s| xen::interrupt(s, 0xfa, DOMID_XEN));
    });
    // pCPU 1: PV domain 2, one vCPU making hypercalls.
    let (s1, n1, lost1) = record_cpu(1, geo(), 10_000, |c| {
        c.rec(1000, |s| xen::domain_create(s, 2, 1, false));
        c.rec(1000, |s| xen::runstate_change(s, 2, 0, R::offline, R::runnable));
        c.rec(2000, |s| xen::runstate_change(s, 2, 0, R::runnable, R::running));
        c.rec(2500, |s| xen::hypercall_entry(s, 2, 0, Hypercall::mmu_update, 1, 2, 3, 0, 0));
        c.rec(2600, |s| xen::hypercall_exit(s, 2, 0, Hypercall::mmu_update, 0));
        c.rec(3000, |s| xen::hypercall_entry(s, 2, 0, Hypercall::mmu_update, 1, 2, 3, 0, 0));
        c.rec(3300, |s| xen::hypercall_exit(s, 2, 0, Hypercall::mmu_update, 0));
        c.rec(4000, |s| xen::console_write(s, 2, "hello"));
        c.rec(5000, |s| xen::page_fault(s, 2, 0, 0xdead_b000, 0xffff_9000, 2));
        c.rec(6000, |s| xen::interrupt(s, 0x30, 2));
        c.rec(10_000, |s| xen::runstate_change(s, 2, 0, R::running, R::blocked));
    });
    assert_eq!((lost0, lost1), (0, 0));
    write_trace(dir, "xen-sim", xen::Events::EVENTS, &[(0, s0), (1, s1)]);
    n0 + n1
}

fn run(dir: &std::path::Path, opts: Options) -> Report {
    analyze(dir, &[&hvtrace_sim::MAPPING, &hvtrace_kvm::MAPPING], &opts, &mut |_| {}).unwrap()
}

fn vcpu(r: &Report, domain: u32, vcpu: u32) -> &VcpuReport {
    r.vcpus.iter().find(|v| (v.domain, v.vcpu) == (domain, vcpu)).unwrap()
}

fn ct(s: &StateRow) -> (u64, u64) {
    (s.count, s.total_ns)
}

/// hdrhistogram gives percentiles within its precision (2 significant
/// figures: within 1 %).
fn near(got: u64, want: u64) -> bool {
    got.abs_diff(want) * 100 <= want
}

#[test]
fn the_scripted_figures_come_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let events = script(tmp.path());
    let r = run(tmp.path(), Options::default());
    assert_eq!(r.event_sets, ["xen"]);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!((r.events, r.events_discarded, r.duration_ns), (events, 0, 9000));
    assert_eq!(r.cpus.iter().map(|c| c.events).sum::<u64>(), events);
    assert_eq!(r.event_classes.iter().find(|c| c.name == "vm_exit").unwrap().count, 5);
    let ids: Vec<_> = r.vcpus.iter().map(|v| (v.domain, v.vcpu)).collect();
    assert_eq!(ids, [(1, 0), (1, 1), (2, 0)], "the idle domain is no vCPU; domain 1's vCPU 1 was created");

    let v = vcpu(&r, 1, 0);
    assert_eq!(v.tracked_ns, 9000);
    let exits: Vec<_> = v
        .exits
        .iter()
        .map(|x| (x.reason.as_str(), x.code, x.count, x.total_ns, x.min_ns, x.max_ns, x.avg_ns))
        .collect();
    assert_eq!(
        exits,
        [
            ("IO_INSTRUCTION", 30, 2, 800, 300, 500, 400),
            ("EXTERNAL_INTERRUPT", 1, 1, 1000, 1000, 1000, 1000),
            ("HLT", 12, 1, 2200, 2200, 2200, 2200),
            ("VMCALL", 18, 1, 600, 600, 600, 600),
        ]
    );
    let io = &v.exits[0];
    assert_eq!((io.count_pct, io.time_pct), (40.0, 8.89));
    assert!(near(io.p50_ns, 300) && near(io.p99_ns, 500), "{io:?}");
    let details: Vec<_> =
        v.exit_details.iter().map(|d| (d.kind, d.target, d.size, d.access, d.count, d.total_ns)).collect();
    assert_eq!(details, [("io", 0x70, 2, "read", 1, 500), ("io", 0x3f8, 1, "write", 1, 300)]);

    let rs = &v.runstates;
    assert_eq!(ct(&rs.running), (3, 5300));
    assert_eq!(ct(&rs.runnable), (3, 1700));
    assert_eq!(ct(&rs.runnable_wake), (2, 700));
    assert_eq!(ct(&rs.runnable_preempt), (1, 1000));
    assert_eq!(ct(&rs.runnable_other), (0, 0));
    assert_eq!(ct(&rs.blocked), (1, 2000));
    assert_eq!(ct(&rs.offline), (1, 0));
    assert_eq!(ct(&rs.lost), (0, 0));
    assert_eq!(rs.running.max_ns, 3500);
    let calls: Vec<_> = v.hypercalls.iter().map(|c| (c.nr, c.name.as_str(), c.count, c.total_ns)).collect();
    assert_eq!(calls, [(29, "sched_op", 1, 300)]);

    let down = vcpu(&r, 1, 1);
    assert_eq!((ct(&down.runstates.offline), down.tracked_ns), ((1, 9000), 9000));

    let pv = vcpu(&r, 2, 0);
    assert!(pv.exits.is_empty());
    assert_eq!(ct(&pv.runstates.running), (1, 8000));
    assert_eq!(ct(&pv.runstates.runnable_wake), (1, 1000));
    let calls: Vec<_> =
        pv.hypercalls.iter().map(|c| (c.name.as_str(), c.count, c.total_ns, c.avg_ns, c.max_ns)).collect();
    assert_eq!(calls, [("mmu_update", 2, 400, 200, 300)]);
    let guest: Vec<_> = pv.guest_events.iter().map(|g| (g.name.as_str(), g.count)).collect();
    assert_eq!(guest, [("page_fault", 1), ("console_write", 1)]);

    let pcpus: Vec<_> = r.pcpus.iter().map(|p| (p.cpu, p.busy_ns, p.idle_ns, p.missing_ns)).collect();
    assert_eq!(pcpus, [(0, 5300, 3700, 0), (1, 8000, 1000, 0)]);
    let irqs: Vec<_> = r.interrupts.iter().map(|i| (i.domain, i.vector, i.count)).collect();
    assert_eq!(irqs, [(None, 0xfa, 1), (Some(2), 0x30, 1)]);
}

#[test]
fn a_window_counts_what_starts_in_it_and_clips_intervals_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path());
    // ns after the first record (t = 1000): the window is t = 3000 .. 6000.
    let r = run(tmp.path(), Options { from_ns: Some(2000), to_ns: Some(5000), ..Options::default() });
    assert_eq!((r.from_ns, r.to_ns, r.duration_ns), (2000, 5000, 3000));
    let v = vcpu(&r, 1, 0);
    let exits: Vec<_> = v.exits.iter().map(|x| (x.reason.as_str(), x.count, x.total_ns)).collect();
    // Most frequent first, then by code.
    assert_eq!(exits, [("HLT", 1, 2200), ("VMCALL", 1, 600), ("IO_INSTRUCTION", 1, 500)]);
    // Running 1500..5000 clipped to 3000..5000, blocked 5000..7000 to 5000..6000.
    assert_eq!(ct(&v.runstates.running), (1, 2000));
    assert_eq!(ct(&v.runstates.blocked), (1, 1000));
    assert_eq!(v.tracked_ns, 3000);
}

#[test]
fn the_json_has_the_documented_keys() {
    let tmp = tempfile::tempdir().unwrap();
    script(tmp.path());
    let r = run(tmp.path(), Options::default());
    let j = serde_json::to_value(&r).unwrap();
    for k in ["trace", "duration_ns", "events", "events_discarded", "vcpus", "pcpus"] {
        assert!(j.get(k).is_some(), "missing {k}");
    }
    let v = &j["vcpus"][0];
    assert_eq!((v["domain"].as_u64(), v["vcpu"].as_u64()), (Some(1), Some(0)));
    for k in ["reason", "code", "count", "total_ns", "min_ns", "avg_ns", "p50_ns", "p95_ns", "p99_ns", "max_ns"] {
        assert!(v["exits"][0].get(k).is_some(), "exits: missing {k}");
    }
    for s in ["running", "runnable", "blocked", "offline", "lost"] {
        assert!(v["runstates"][s]["count"].is_u64() && v["runstates"][s]["total_ns"].is_u64(), "{s}");
    }
    for k in ["nr", "name", "count", "total_ns"] {
        assert!(v["hypercalls"][0].get(k).is_some(), "hypercalls: missing {k}");
    }
    for k in ["cpu", "busy_ns", "idle_ns", "events_discarded"] {
        assert!(j["pcpus"][0].get(k).is_some(), "pcpus: missing {k}");
    }
}

#[test]
fn a_trace_no_mapping_knows_gets_the_generic_part() {
    let tmp = tempfile::tempdir().unwrap();
    let events = script(tmp.path());
    // The same trace, analysed with no mapping at all.
    let r = analyze(tmp.path(), &[], &Options::default(), &mut |_| {}).unwrap();
    assert!(r.event_sets.is_empty() && r.vcpus.is_empty());
    assert_eq!((r.events, r.duration_ns), (events, 9000));
    let per_cpu: Vec<_> = r.cpus.iter().map(|c| (c.cpu, c.events)).collect();
    assert_eq!(per_cpu, [(0, 21), (1, 11)]);
    assert_eq!(r.event_classes.iter().map(|c| c.count).sum::<u64>(), events);
}

#[test]
fn a_destroyed_domain_ends_its_vcpus_and_a_reused_id_is_a_new_vcpu() {
    let tmp = tempfile::tempdir().unwrap();
    let (s0, _, _) = record_cpu(0, geo(), 10_000, |c| {
        c.rec(1000, |s| xen::domain_create(s, 5, 1, false));
        c.rec(1000, |s| xen::runstate_change(s, 5, 0, R::offline, R::running));
        c.rec(3000, |s| xen::runstate_change(s, 5, 0, R::running, R::offline));
        c.rec(3500, |s| xen::domain_destroy(s, 5, hvtrace_sim::ShutdownReason::poweroff));
        c.rec(6000, |s| xen::domain_create(s, 5, 1, false));
        c.rec(6000, |s| xen::runstate_change(s, 5, 0, R::offline, R::running));
        c.rec(10_000, |s| xen::interrupt(s, 0xfa, DOMID_XEN));
    });
    write_trace(tmp.path(), "xen-sim", xen::Events::EVENTS, &[(0, s0)]);
    let r = run(tmp.path(), Options::default());
    let rows: Vec<_> = r
        .vcpus
        .iter()
        .map(|v| (v.domain, v.vcpu, v.tracked_ns, ct(&v.runstates.running), ct(&v.runstates.offline)))
        .collect();
    // The first life: running 2000, offline 500 until the destroy; the second: running to the end.
    assert_eq!(rows, [(5, 0, 2500, (1, 2000), (2, 500)), (5, 0, 4000, (1, 4000), (1, 0))]);
    assert_eq!(r.pcpus[0].busy_ns, 6000);
}
