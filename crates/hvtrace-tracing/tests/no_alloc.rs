//! The record path allocates nothing: after a callsite's first event (which
//! registers its class) and the thread's first (which makes its buffer),
//! events of every field type, a span and its enter/exit/close allocate
//! nothing on the recording thread. A counting global allocator checks it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use hvtrace_tracing::HvtraceLayer;
use tracing::{info, info_span};
use tracing_subscriber::prelude::*;

struct Counting;

thread_local! {
    /// Allocations made by this thread (const-initialised: reading it never allocates).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the
// counter is a thread-local `Cell` with a const initialiser, so counting
// neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Exit {
    reason: u32,
}

/// One callsite of each kind: formatted values and strings (both through
/// the thread's buffer, `Shape::Buffered`), fixed-size values only
/// (straight into the slot, `Shape::Fixed`).
fn events(n: u64) {
    for i in 0..n {
        info!(a = 1i32, b = i, s = "hello", f = 0.5f64, ok = true, d = ?Exit { reason: 30 }, "exit {}", i);
        info!(a = 1i32, b = i, s = "hello");
        info!(a = 1i32, b = i, f = 0.5f64, ok = true);
    }
}

fn spans(n: u64) {
    for i in 0..n {
        let s = info_span!("vcpu_run", vcpu = i);
        s.in_scope(|| {});
    }
}

#[test]
fn recording_events_and_spans_allocates_nothing_after_the_first() {
    let s = Session::start();
    let layer = HvtraceLayer::new(s.host.clone()).with_spans(true);
    let counters = layer.counters();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        events(1);
        spans(1);
        let before = allocs();
        events(1000);
        let after_events = allocs();
        spans(1000);
        let after_spans = allocs();
        assert_eq!(after_events - before, 0, "allocations while recording 3000 events");
        // Span ids come from the Registry's pool, which reuses the slots of
        // closed spans: nothing to allocate there either once warm.
        assert_eq!(after_spans - after_events, 0, "allocations while recording 1000 spans");
    });
    let _ = s.finish();
    assert_eq!(counters.lost(), 0);
}
