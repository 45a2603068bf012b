//! Atomics used by the ring. Under `--cfg loom` they are loom's, so the
//! model checker can explore every interleaving of reserve/commit/deliver/consume.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU64, Ordering};

/// Spin hint for the (bounded) retry loops; loom needs to be told to yield.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}
