//! A trace with losses (a tiny ring, drained rarely): the time the data is
//! missing is reported as the vCPU's *lost* state, never given to another
//! state, and the states still add up to the vCPU's tracked time.

mod common;

use common::{record_cpu, write_trace};
use hvtrace_analysis::{analyze, Options};
use hvtrace_core::{EventSet, Geometry};
use hvtrace_sim::{xen, Runstate as R, VmxExitReason as X};

/// Time between two events of the script.
const STEP: u64 = 100;

#[test]
fn lost_time_is_lost_and_the_states_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    // Two 4 KiB packets (~140 records each) between drains of 500 records.
    let geo = Geometry::new(4096, 2).unwrap();
    let n = 2000;
    let end = 2000 + n * STEP;
    let (stream, recorded, refused) = record_cpu(0, geo, end, |c| {
        c.rec(1000, |s| xen::domain_create(s, 1, 1, true));
        c.rec(1000, |s| xen::runstate_change(s, 1, 0, R::offline, R::running));
        for i in 0..n {
            let t = 2000 + i * STEP;
            if i % 2 == 0 {
                c.rec(t, |s| xen::vm_exit(s, 1, 0, X::EXTERNAL_INTERRUPT, 0, 0));
            } else {
                c.rec(t, |s| xen::vm_entry(s, 1, 0));
            }
            if i % 500 == 499 {
                c.drain();
            }
        }
        // A last record after the last loss: every gap is inside the trace.
        c.rec(end, |s| xen::vm_exit(s, 1, 0, X::EXTERNAL_INTERRUPT, 0, 0));
    });
    assert!(refused > 100, "the ring must have discarded: {refused}");
    write_trace(tmp.path(), "xen-sim", xen::Events::EVENTS, &[(0, stream)]);

    let r = analyze(tmp.path(), &[&hvtrace_sim::MAPPING], &Options::default(), &mut |_| {}).unwrap();
    assert_eq!(r.events, recorded);
    assert_eq!(r.events_discarded, refused, "every lost event counted");
    let v = &r.vcpus[0];
    let rs = &v.runstates;
    // Each loss runs from the last record before it to the first after it:
    // the refused events' steps plus one per loss.
    assert!(rs.lost.count >= 3, "{:?}", rs.lost);
    assert_eq!(rs.lost.total_ns, (refused + rs.lost.count) * STEP);
    assert_eq!(r.pcpus[0].missing_ns, rs.lost.total_ns);
    assert_eq!(r.pcpus[0].events_discarded, refused);
    // Running is all the rest: nothing of the gaps leaks into it.
    let states =
        rs.running.total_ns + rs.runnable.total_ns + rs.blocked.total_ns + rs.offline.total_ns + rs.lost.total_ns;
    assert!(v.tracked_ns.abs_diff(states) <= STEP, "{states} vs {}", v.tracked_ns);
    assert!(v.tracked_ns.abs_diff(r.duration_ns) <= STEP);
    assert_eq!(rs.running.total_ns + rs.lost.total_ns, v.tracked_ns);
    // No exit is timed across a gap.
    let x = &v.exits[0];
    assert_eq!((x.min_ns, x.max_ns), (STEP, STEP));
    assert!(v.exits_unmatched >= 1);
}
