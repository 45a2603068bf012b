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

/// The owner's half of the asymmetric fence that guards its fast path: a
/// compiler fence only, because the other half is a heavy barrier (Linux
/// `membarrier`) that runs a full fence on every CPU of the process. loom
/// cannot model `membarrier`, so there both halves are `SeqCst` fences, which
/// give the same guarantee (see `Ring::revoke_owner`).
#[inline]
pub(crate) fn light_fence() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}
