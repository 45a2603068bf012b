//! xenalyze as the oracle: a generated xentrace file is imported, read back
//! from CTF with `hvtrace-reader`'s merged walk, mapped onto the hypervisor model with
//! the xentrace [`MAPPING`], and the VM exits per domain, vCPU and reason
//! (count, and total cycles from each exit to the vCPU's next entry) are
//! compared with what `xenalyze --summary` prints for the same file, and
//! with what the generator wrote.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use hvtrace_model::{Bindings, Event, Runstate, Vcpu};
use hvtrace_reader::{Item, Merge, Order, TraceDir};
use hvtrace_xen::gen::Scenario;
use hvtrace_xen::xenalyze::{exits, runstates, Exits, Runstates};
use hvtrace_xen::{ImportOptions, MAPPING};

/// The exits of the imported trace at `dir`, through the model.
fn exits_through_the_model(dir: &Path) -> Exits {
    walk(dir).0
}

/// Exits, and runstate intervals: each vCPU's state from one runstate
/// event to its next, all pCPUs merged by time (a vCPU moves).
fn walk(dir: &Path) -> (Exits, Runstates) {
    let trace = TraceDir::open(dir).unwrap();
    let bindings = Bindings::bind(&[&MAPPING], trace.schema());
    assert_eq!(bindings.names(), ["xentrace"]);
    let mut exits = Exits::new();
    let mut changes: Vec<(u64, Vcpu, Runstate, usize)> = Vec::new();
    let mut last_ts = vec![0; trace.streams.len()];
    // An exit lasts until its vCPU's next entry on the same pCPU (a vCPU
    // leaves its pCPU only from the hypervisor).
    let mut open: Vec<BTreeMap<Vcpu, (u32, u64)>> = vec![BTreeMap::new(); trace.streams.len()];
    let mut merge = Merge::new(&trace, Order::Time).unwrap();
    let mut events = Vec::new();
    while let Some(item) = merge.next_item() {
        let Item::Record(r) = item.unwrap() else { continue };
        let (si, t) = (r.stream(), r.timestamp());
        last_ts[si] = t;
        r.map(&bindings, &mut events, |_, e| match *e {
            Event::Exit { vcpu, exit } => {
                open[si].insert(vcpu, (exit.code, t));
            }
            Event::Entry { vcpu } => {
                if let Some((code, t0)) = open[si].remove(&vcpu) {
                    let e = exits.entry((vcpu.domain, vcpu.vcpu, code)).or_default();
                    e.0 += 1;
                    e.1 += t - t0;
                }
            }
            Event::Runstate { vcpu, new } => changes.push((t, vcpu, new, si)),
            _ => {}
        });
    }
    assert!(merge.warnings().is_empty(), "{:?}", merge.warnings());
    // In time order already (ties: the lower stream first).
    let mut runstates = Runstates::new();
    let mut state: BTreeMap<Vcpu, (Runstate, u64, usize)> = BTreeMap::new();
    let mut close = |vcpu: Vcpu, old: Runstate, since: u64, t: u64| {
        let e = runstates.entry((vcpu.domain, vcpu.vcpu, old.name())).or_default();
        e.0 += 1;
        e.1 += t - since;
    };
    for (t, vcpu, new, si) in changes {
        if let Some((old, since, _)) = state.insert(vcpu, (new, t, si)) {
            close(vcpu, old, since, t);
        }
    }
    // A vCPU still running when its pCPU's records end ran until then (as
    // xenalyze counts it); the other states stay open.
    for (vcpu, (st, since, si)) in state {
        if st == Runstate::Running {
            close(vcpu, st, since, last_ts[si]);
        }
    }
    (exits, runstates)
}

fn have_xenalyze(test: &str) -> bool {
    let ok = Command::new("xenalyze").arg("--help").output().is_ok();
    if !ok {
        println!("SKIP: {test}: xenalyze not installed (apt-get install xen-utils-4.17)");
    }
    ok
}

#[test]
fn exits_per_domain_vcpu_and_reason_match_xenalyze() {
    let test = "exits_per_domain_vcpu_and_reason_match_xenalyze";
    let g =
        Scenario { pcpus: 3, domains: 5, vcpus: 2, rounds: 300, lost: 17, cut: 5, ..Scenario::default() }.generate();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("gen.xentrace");
    std::fs::write(&input, &g.bytes).unwrap();
    let out = dir.path().join("trace");
    hvtrace_xen::import_file(&input, &out, ImportOptions::default()).unwrap();
    let ours = exits_through_the_model(&out);

    // The generator's own account, a third count.
    let mut truth = Exits::new();
    for e in &g.exits {
        let t = truth.entry((e.domid as u32, e.vcpu as u32, e.reason)).or_default();
        t.0 += 1;
        t.1 += e.cycles;
    }
    assert_eq!(ours, truth, "the model's exits are the generator's");
    assert!(truth.len() > 50, "{} (domain, vCPU, reason) cells", truth.len());

    if !have_xenalyze(test) {
        return;
    }
    let o = Command::new("xenalyze").arg("--summary").arg(&input).output().unwrap();
    assert!(o.status.success(), "xenalyze failed: {}", String::from_utf8_lossy(&o.stderr));
    let theirs = exits(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the same (domain, vCPU, reason) cells"
    );
    println!("{} (domain, vCPU, reason) cells, {} exits: counts equal, cycles within 0.5 %", ours.len(), g.exits.len());
    let mut worst = 0f64;
    for (k, (n, cyc)) in &ours {
        let (xn, xcyc) = theirs[k];
        if k.0 == 3 && k.1 == 0 {
            println!(
                "d3v0 reason {:>2}: hvtrace {n:>3} exits {cyc:>9} cycles | xenalyze {xn:>3} exits {xcyc:>9} cycles",
                k.2
            );
        }
        worst = worst.max(cyc.abs_diff(xcyc) as f64 / *cyc as f64);
        assert_eq!(*n, xn, "exit count of d{}v{} reason {}", k.0, k.1, k.2);
        // xenalyze prints the average rounded down: totals agree to count cycles.
        let diff = cyc.abs_diff(xcyc) as f64 / *cyc as f64;
        assert!(diff <= 0.005, "d{}v{} reason {}: {cyc} cycles against xenalyze's {xcyc}", k.0, k.1, k.2);
    }
    println!("largest difference in total cycles: {:.5} %", worst * 100.0);
}

/// Imports a generated host with `lost` lost records on pCPU 0; the
/// runstate intervals through the model, and xenalyze's (`None` without xenalyze).
fn runstates_both(test: &str, lost: u32) -> Option<(Runstates, Runstates)> {
    let g = Scenario { pcpus: 3, domains: 5, vcpus: 2, rounds: 300, lost, ..Scenario::default() }.generate();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("gen.xentrace");
    std::fs::write(&input, &g.bytes).unwrap();
    let out = dir.path().join("trace");
    hvtrace_xen::import_file(&input, &out, ImportOptions::default()).unwrap();
    let ours = walk(&out).1;
    assert!(ours.len() >= 30, "{} (vCPU, state) cells", ours.len());
    if !have_xenalyze(test) {
        return None;
    }
    let o = Command::new("xenalyze").arg("--summary").arg(&input).output().unwrap();
    assert!(o.status.success());
    Some((ours, runstates(&String::from_utf8_lossy(&o.stdout)).unwrap()))
}

fn close(a: u64, b: u64) -> bool {
    a.abs_diff(b) as f64 <= 0.005 * a.max(b) as f64
}

#[test]
fn runstate_times_per_vcpu_match_xenalyze() {
    let Some((ours, theirs)) = runstates_both("runstate_times_per_vcpu_match_xenalyze", 0) else { return };
    for (k, &(n, cyc)) in &ours {
        let (xn, xcyc) = theirs.get(k).copied().unwrap_or_else(|| panic!("xenalyze has no {k:?}"));
        assert_eq!(n, xn, "intervals of {k:?}");
        assert!(close(cyc, xcyc), "{k:?}: {cyc} cycles against xenalyze's {xcyc}");
    }
    // By definition: xenalyze reports the idle domain's vCPUs; in the model
    // a pCPU running one is idle, and they are no vCPUs.
    let extra: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(!extra.is_empty() && extra.iter().all(|k| k.0 == 0x7fff), "{extra:?}");
}

#[test]
fn xenalyze_counts_a_lost_window_as_lost_time_where_the_model_keeps_the_state() {
    let test = "xenalyze_counts_a_lost_window_as_lost_time_where_the_model_keeps_the_state";
    let Some((ours, theirs)) = runstates_both(test, 17) else { return };
    let vcpus: std::collections::BTreeSet<(u32, u32)> = ours.keys().map(|k| (k.0, k.1)).collect();
    let mut lost_vcpus = 0;
    for (d, v) in vcpus {
        let lost = theirs.get(&(d, v, "lost")).map_or(0, |l| l.1);
        lost_vcpus += (lost > 0) as u32;
        let mut ours_total = 0;
        let mut theirs_total = lost;
        for state in ["running", "runnable", "blocked", "offline"] {
            let o = ours.get(&(d, v, state)).map_or(0, |x| x.1);
            let t = theirs.get(&(d, v, state)).map_or(0, |x| x.1);
            // The lost window comes out of the state the vCPU was in, nothing else.
            assert!(o + 1000 >= t && o <= t + lost + 1000, "d{d}v{v} {state}: {o} against {t} + lost {lost}");
            ours_total += o;
            theirs_total += t;
        }
        assert!(close(ours_total, theirs_total), "d{d}v{v}: {ours_total} against {theirs_total}");
    }
    assert!(lost_vcpus > 0, "xenalyze put vCPUs in its lost state");
}
