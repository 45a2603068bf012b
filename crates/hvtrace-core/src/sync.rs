//! Atomics used by the ring. Under `--cfg loom` they are loom's, so the
//! model checker can explore every interleaving of reserve/commit/deliver/consume.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU64, Ordering};

/// loom only: what the model checker sees of the sub-buffer bytes.
///
/// The bytes are plain memory, which loom does not model: a load there
/// always returns the newest store, so no missing Release/Acquire on the
/// protocol's words would ever show in them, and a copy racing the next
/// lap's writers (overwrite mode's seqlock) would always show their newest
/// bytes, never what a real copy may have read. So each piece a writer
/// stores (a record, an opener's or a closer's header fields) also gets a
/// witness at the piece's ring offset, with two parts:
///
/// * a modelled atomic, stored `Relaxed` right after the bytes with the
///   piece's *version*: an index into the witness's history, which keeps
///   every piece ever written with its bytes and the lap that wrote it. The
///   consumer loads the witnesses of a sub-buffer (`Relaxed`) right after
///   its copy; loom may return any store the memory model allows, so the
///   versions it loads are the copy a real consumer could have made, piece
///   by piece: a stale piece where nothing orders the writer's stores
///   before the consumer's loads, a piece of the next lap where a writer
///   rewrote the sub-buffer during the copy. The models rebuild each packet
///   the consumer keeps from these versions and check it (a kept packet
///   must be whole and of its own lap);
/// * a loom `UnsafeCell` standing for the piece's memory: the writer's
///   stores are a write access to it, and (discard mode, where no packet is
///   ever rewritten under the consumer) the consumer's copy a read access.
///   loom panics ("Causality violation") on an access that does not happen
///   after every earlier conflicting one: two writers storing the same
///   place with nothing ordering them (a lap reopened before the previous
///   lap's stores are published to its opener), the consumer reading a
///   piece whose stores are not published to it, or a writer rewriting a
///   piece the consumer read before the consumer's release is published to
///   it (a write-after-read, which the versions alone cannot show: loom
///   never lets a load return a store that comes later). Overwrite mode's
///   copy races the next lap's writers by design (a seqlock, checked
///   afterwards), so there it is no tracked access.
#[cfg(loom)]
#[derive(Default)]
pub struct Witness {
    pieces: std::sync::Mutex<std::collections::BTreeMap<u64, std::sync::Arc<Piece>>>,
    /// Every piece written, as (lap, bytes); a version is an index + 1.
    history: std::sync::Mutex<std::vec::Vec<(u64, std::vec::Vec<u8>)>>,
}

/// loom only: one witness (see [`Witness`]).
#[cfg(loom)]
struct Piece {
    version: AtomicU64,
    memory: loom::cell::UnsafeCell<()>,
}

/// loom only: a piece of a packet as the consumer's copy saw it (see [`Witness`]).
#[cfg(loom)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenPiece {
    /// Offset in the packet.
    pub offset: u64,
    /// The lap whose writer stored it.
    pub lap: u64,
    /// Its bytes.
    pub bytes: std::vec::Vec<u8>,
}

#[cfg(loom)]
impl Witness {
    // loom's cell is not `Sync`; loom runs a model's threads one at a time
    // on the test's own OS thread, so the pieces never cross one.
    #[allow(clippy::arc_with_non_send_sync)]
    fn at(&self, off: u64) -> std::sync::Arc<Piece> {
        // The locks are never held across a modelled operation (loom would
        // switch threads there and the next thread would block for real).
        let mut m = self.pieces.lock().unwrap();
        m.entry(off)
            .or_insert_with(|| {
                std::sync::Arc::new(Piece { version: AtomicU64::new(0), memory: loom::cell::UnsafeCell::new(()) })
            })
            .clone()
    }

    /// Creates the witnesses at ring offsets `offs` now. loom takes an
    /// atomic's creation for a plain write, so a consumer loading a witness
    /// that a concurrent writer created (a record at an offset no earlier lap
    /// used) reports a causality violation the real memory does not have; a
    /// model whose copy races the next lap's writers creates the witnesses
    /// of their pieces before its threads start.
    pub fn prepare(&self, offs: impl IntoIterator<Item = u64>) {
        for off in offs {
            self.at(off);
        }
    }

    /// The writer of lap `lap` stored `bytes` at ring offset `off`.
    pub(crate) fn mark(&self, off: u64, lap: u64, bytes: &[u8]) {
        let p = self.at(off);
        let version = {
            let mut h = self.history.lock().unwrap();
            h.push((lap, bytes.to_vec()));
            h.len() as u64
        };
        p.memory.with_mut(|_| ());
        p.version.store(version, Ordering::Relaxed);
    }

    /// The consumer copied `[from, from + len)`: the pieces there as its
    /// loads of their versions found them (pieces never written left out).
    /// `tracked`: the copy is a read access.
    pub(crate) fn snapshot(&self, from: u64, len: u64, tracked: bool) -> std::vec::Vec<SeenPiece> {
        let pieces: std::vec::Vec<_> =
            self.pieces.lock().unwrap().range(from..from + len).map(|(&k, v)| (k - from, v.clone())).collect();
        let versions: std::vec::Vec<_> = pieces
            .into_iter()
            .map(|(o, p)| {
                if tracked {
                    p.memory.with(|_| ());
                }
                (o, p.version.load(Ordering::Relaxed))
            })
            .collect();
        let h = self.history.lock().unwrap();
        versions
            .into_iter()
            .filter(|&(_, v)| v != 0)
            .map(|(offset, v)| {
                let (lap, bytes) = h[v as usize - 1].clone();
                SeenPiece { offset, lap, bytes }
            })
            .collect()
    }
}

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

/// Places in the protocol where a test can stop a thread, to drive an exact
/// interleaving (feature `test-hooks`; a no-op otherwise). Each sits on a
/// cold path or the consumer's side, never on the record fast paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPoint {
    /// Shared reservation: `write` loaded (not closed), before the packet
    /// boundary checks and the clock.
    ReserveLoaded,
    /// Shared reservation: the CAS that closes a packet succeeded; its end
    /// fields are not written yet.
    PacketCloseCas,
    /// Overwrite mode: just before the opener's read-modify-write of the
    /// previous lap's claim word.
    OpenClaim,
    /// Consumer: `next_packet` loaded `delivered`, not yet the claim word.
    ReaderDelivered,
}

#[inline(always)]
pub(crate) fn hook(_point: HookPoint) {
    #[cfg(all(feature = "test-hooks", not(loom)))]
    hooks::run(_point);
    #[cfg(loom)]
    loom_yield::run(_point);
}

/// loom only: a model may make every thread yield at one [`HookPoint`].
///
/// loom's DPOR remembers only the last access to each atomic, so a race
/// between two accesses with a load of the same word between them (by a
/// third party) is never reversed, at any preemption bound: the schedule
/// "a closer stalls right after its CAS while others run" of issue 11's
/// defect 3 is never tried. A yield there is a switch loom always explores
/// and that costs no preemption.
#[cfg(loom)]
pub mod loom_yield {
    extern crate std;
    use super::HookPoint;
    use std::cell::Cell;

    std::thread_local! {
        // loom runs a model's threads on the OS thread of the test that
        // called it: set there, the point applies to that model only.
        static AT: Cell<Option<HookPoint>> = const { Cell::new(None) };
    }

    /// From now on, threads of models run by this OS thread yield at
    /// `point` (`None`: nowhere).
    pub fn set(point: Option<HookPoint>) {
        AT.with(|a| a.set(point));
    }

    pub(crate) fn run(point: HookPoint) {
        if AT.with(|a| a.get()) == Some(point) {
            loom::thread::yield_now();
        }
    }
}

/// Per-thread hooks for deterministic interleaving tests.
#[cfg(all(feature = "test-hooks", not(loom)))]
pub mod hooks {
    extern crate std;
    use super::HookPoint;
    use std::boxed::Box;
    use std::cell::RefCell;

    type Hook = Box<dyn FnMut(HookPoint)>;

    std::thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Calls `f` at every [`HookPoint`] this thread passes, until [`clear`].
    /// `f` may block (to let another thread run) but must not record on a
    /// ring itself (the hook is not re-entrant).
    pub fn set(f: impl FnMut(HookPoint) + 'static) {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(f)));
    }

    /// Removes this thread's hook.
    pub fn clear() {
        HOOK.with(|h| *h.borrow_mut() = None);
    }

    pub(crate) fn run(p: HookPoint) {
        HOOK.with(|h| {
            if let Ok(mut h) = h.try_borrow_mut() {
                if let Some(f) = h.as_mut() {
                    f(p);
                }
            }
        });
    }
}
