//! The loom models' harness (`tests/loom.rs`): the ring shared by a model's
//! threads, writers that note what `record` told them, a consumer that
//! rebuilds each packet it keeps from the witnesses it loaded with it, the
//! decoding checker, and coverage of the states a model must reach.

use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering::SeqCst};

use hvtrace_core::ctf::packet;
use hvtrace_core::ring::heap::HeapRing;
use hvtrace_core::{EventSet, Geometry, Mode, Poll, RecordError, Ring, RingReader, RingSink, SeenPiece, StreamId};
use loom::sync::Arc;
use loom::thread;

hvtrace_core::events! {
    /// One event: who wrote it, its number, and a pad derived from both.
    pub mod ev ("loom") {
        /// `pad` is `pad_len(writer, n)` bytes of `pad_byte(writer, n, i)`.
        fn rec(writer: u32, n: u32, pad: &[u8]);
    }
}

pub fn pad_byte(writer: u32, n: u32, i: usize) -> u8 {
    (writer as u8).wrapping_mul(31).wrapping_add(n as u8).wrapping_add(i as u8) | 1
}

pub fn make_pad(writer: u32, n: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| pad_byte(writer, n, i)).collect()
}

/// Ring memory and the producer over it, shared by the model's threads.
///
/// loom threads must be `'static`, and `HeapRing::producer` resets the ring,
/// so the one `Ring` borrows the heap ring for `'static`; `Shared` is kept
/// alive (in an `Arc`) by every thread that uses the ring, and the heap ring
/// is dropped only after the ring, when the last `Arc` goes.
pub struct Shared {
    /// The producer.
    pub ring: Ring<'static>,
    mem: *mut HeapRing,
    /// A clock that ticks on every read: loom runs one thread at a time, so
    /// a plain (unmodelled) atomic counter is a global monotonic clock.
    clock: StdAtomicU64,
}

// SAFETY: `mem` is only dereferenced to build the ring and reader (shared
// references) and freed in `Drop`, when no thread holds the `Shared` anymore.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    pub fn new(mode: Mode) -> Arc<Shared> {
        let mem = Box::into_raw(Box::new(HeapRing::new(Geometry::new(4096, 2).unwrap())));
        // SAFETY: `mem` lives until `Drop`, after `ring` (and every reader,
        // which borrow `Shared`) are gone.
        let ring = unsafe { &*mem }.producer(mode, StreamId { uuid: [9; 16], cpu: 0 });
        // Starts high enough for a lagging writer's clock (`SKEW`).
        Arc::new(Shared { ring, mem, clock: StdAtomicU64::new(1 << 20) })
    }

    /// A ring whose one writer records through [`Ring::owner`].
    pub fn new_owned(mode: Mode) -> Arc<Shared> {
        let sh = Shared::new(mode);
        // SAFETY: no thread has seen the ring yet.
        unsafe { sh.ring.make_owned() };
        sh
    }

    /// The owner's busy flag, read without a modelled access. Only for the
    /// owner's own thread: it is the only thread that stores the flag, so
    /// its last store is the value (loom checks there is no race).
    pub fn owner_busy_unsync(&self) -> bool {
        // SAFETY: see `new`; the caller is the only thread storing the flag.
        unsafe { (*self.mem).hdr.owner_busy.unsync_load() != 0 }
    }

    pub fn reader(&self) -> RingReader<'_> {
        // SAFETY: see `new`.
        unsafe { &*self.mem }.reader()
    }

    pub fn now(&self) -> u64 {
        self.clock.fetch_add(1, SeqCst)
    }

    /// The ring memory (for a model that writes the consumer's words itself).
    pub fn mem(&self) -> &HeapRing {
        // SAFETY: see `new`.
        unsafe { &*self.mem }
    }

    /// The claim words, as this thread sees them now.
    pub fn claims(&self) -> Vec<u64> {
        self.mem().claims.iter().map(|c| c.load(SeqCst)).collect()
    }

    /// A sink whose clock runs `lag` ticks behind the model's, plus `lead`.
    pub fn sink(&self, lag: u64, lead: u64) -> RingSink<'_, 'static, impl Fn() -> u64 + '_> {
        RingSink { ring: &self.ring, clock: move || self.now() + lead - lag }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: allocated by `Box::into_raw` in `new`; `ring` only borrows
        // it and is not used by anything anymore (we hold the last reference).
        drop(unsafe { Box::from_raw(self.mem) });
    }
}

/// How each `record` call ended, per writer.
#[derive(Default, Debug, Clone)]
pub struct Outcome {
    pub ok: Vec<u32>,
    pub lost: u64,
    pub closed: Vec<u32>,
}

impl Outcome {
    /// Notes how record `n` ended.
    pub fn note(&mut self, n: u32, res: Result<(), RecordError>) {
        match res {
            Ok(()) => self.ok.push(n),
            Err(RecordError::Closed) => self.closed.push(n),
            Err(RecordError::TooBig) => panic!("model records must fit"),
            Err(_) => self.lost += 1,
        }
    }
}

/// Writer `w` records `pads.len()` events with those pad lengths.
///
/// Writer `w`'s clock runs `w` × [`SKEW`] ticks behind: writers of one ring
/// on CPUs whose TSCs disagree (or a thread that migrated). The stream's
/// timestamps must still never go backwards (`check`): each writer clamps
/// its clock to `max_tsc`, which the record it follows raised before its
/// reservation CAS (Release) and which it loads after its load of `write`
/// (Acquire).
pub fn write(sh: &Shared, w: u32, pads: &[usize]) -> Outcome {
    write_ahead(sh, w, pads, 0)
}

/// [`write`] with the writer's clock `lead` ticks ahead (past its skew).
pub fn write_ahead(sh: &Shared, w: u32, pads: &[usize], lead: u64) -> Outcome {
    let sink = sh.sink(w as u64 * SKEW, lead);
    let mut out = Outcome::default();
    for (n, &len) in pads.iter().enumerate() {
        let n = n as u32;
        out.note(n, ev::rec(&sink, w, n, &make_pad(w, n, len)));
    }
    out
}

/// Clock lag between successive writers (see [`write`]): more ticks than
/// a model's whole run takes, so a lagging writer's clock is always behind
/// every timestamp the others handed out.
pub const SKEW: u64 = 1 << 16;

/// Reads one packet if one is ready; `Some(None)` for a copy the producer
/// overwrote meanwhile (thrown away). A copy kept is rebuilt from the
/// pieces the consumer's loads found ([`rebuild`]).
pub fn read_one(r: &RingReader<'_>) -> Option<Option<Vec<u8>>> {
    match r.next_packet() {
        Poll::Empty => None,
        Poll::Ready(p) => {
            let mut copy = vec![0u8; r.geometry().subbuf_size as usize];
            r.copy_packet(&p, &mut copy);
            let seen = r.witnessed(&p);
            Some(r.release(&p).then(|| rebuild(r, p.pos, &seen)))
        }
    }
}

/// The packet at `pos` as the consumer's copy held it, rebuilt from the
/// pieces its loads found (the plain copy shows the newest bytes, whatever
/// a real copy read: see `hvtrace_core::Witness`). A packet kept must be
/// whole and of its own lap: no piece of a later lap (stored while the copy
/// ran: the seqlock check must have refused it), and the pieces its own lap's
/// writers stored (opener fields, closer fields, records) tile the header and
/// the content with no gap (a gap: some writer's stores were not visible to
/// the consumer, as the protocol's orderings must make them).
pub fn rebuild(r: &RingReader<'_>, pos: u64, seen: &[SeenPiece]) -> Vec<u8> {
    let lap = r.geometry().lap(pos);
    if let Some(p) = seen.iter().find(|p| p.lap > lap) {
        panic!(
            "packet at {pos} (lap {lap}) kept although the copy holds a piece of lap {} at offset {} (stored while it was copied)",
            p.lap, p.offset
        );
    }
    let mut out = vec![0u8; r.geometry().subbuf_size as usize];
    let mut end = 0;
    for p in seen.iter().filter(|p| p.lap == lap) {
        assert_eq!(
            p.offset as usize, end,
            "packet at {pos}: bytes {end}..{} kept although its writer's stores were not visible to the consumer",
            p.offset
        );
        end = p.offset as usize + p.bytes.len();
        out[p.offset as usize..end].copy_from_slice(&p.bytes);
    }
    let content = u64::from_le_bytes(out[packet::CONTENT_SIZE..][..8].try_into().unwrap()) / 8;
    assert!(end >= packet::LEN, "packet at {pos}: header kept although its writers' stores were not visible");
    assert_eq!(
        end as u64, content,
        "packet at {pos}: records after byte {end} kept although not visible to the consumer"
    );
    out
}

/// What a consumer read: the packets kept, and the copies thrown away
/// because the producer was rewriting them (overwrite mode).
#[derive(Debug, Default)]
pub struct Read {
    pub packets: Vec<Vec<u8>>,
    pub torn: u64,
}

impl Read {
    /// One look at the ring: a packet if one is ready.
    pub fn poll(&mut self, r: &RingReader<'_>) -> bool {
        match read_one(r) {
            Some(Some(p)) => self.packets.push(p),
            Some(None) => self.torn += 1,
            None => return false,
        }
        true
    }

    /// `polls` looks, yielding after an empty one (a concurrent consumer).
    pub fn polls(mut self, r: &RingReader<'_>, polls: usize) -> Self {
        for _ in 0..polls {
            if !self.poll(r) {
                thread::yield_now();
            }
        }
        self
    }

    /// Reads everything ready (once the writers joined, so it terminates).
    pub fn drain(mut self, r: &RingReader<'_>) -> Self {
        while self.poll(r) {}
        self
    }
}

/// What the packets read contain.
#[derive(Debug, Default)]
pub struct Found {
    pub per_writer: Vec<Vec<u32>>,
    pub records: u64,
    pub last_discarded: u64,
}

/// Decodes packets in stream order and checks every record byte (the
/// shared checker, with this model's pads).
pub fn check(packets: &[Vec<u8>], pads: &[&[usize]]) -> Found {
    let c = super::check_packets_with(packets, pads.len(), ev::Events::EVENTS, |w, n, pad| {
        pad.len() == pads[w as usize][n as usize] && pad.iter().enumerate().all(|(i, &b)| b == pad_byte(w, n as u32, i))
    });
    Found {
        per_writer: c.per_writer.iter().map(|s| s.iter().map(|&n| n as u32).collect()).collect(),
        records: c.records,
        last_discarded: c.last_discarded,
    }
}

pub fn builder(bound: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    // Each witness is a modelled atomic (a branch point): longer executions
    // than loom's default of 1000 branches, though none spins unboundedly.
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        b.max_branches = 4000;
    }
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        b.preemption_bound = Some(bound);
    }
    b
}

/// Outcomes seen over all executions of a model, to prove it is not vacuous.
#[derive(Default)]
pub struct Coverage(std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl Coverage {
    pub fn hit(&self, what: &'static str, cond: bool) {
        if cond {
            *self.0.lock().unwrap().entry(what).or_default() += 1;
        }
    }
    pub fn require(&self, whats: &[&'static str]) {
        let m = self.0.lock().unwrap();
        eprintln!("coverage: {m:?}");
        for w in whats {
            assert!(m.contains_key(w), "no execution reached `{w}`: the model is too small");
        }
    }
}

/// Runs `f` on a new loom thread that holds its own reference to the ring.
pub fn spawn<T: Send + 'static>(
    sh: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let sh = sh.clone();
    thread::spawn(move || f(&sh))
}

/// A stop's first half: close, then wait until no writer is inside a
/// record. Returns whether it had to wait.
pub fn close_and_quiesce(sh: &Shared) -> bool {
    sh.ring.close();
    let mut waited = false;
    while !sh.ring.is_quiescent() {
        waited = true;
        thread::yield_now();
    }
    waited
}

/// Where a stop's close fell among one writer's records (`ok`: accepted,
/// `closed`: refused as closed).
pub const CLOSE_POINTS: &[&str] = &["closed before any record", "closed between records", "closed after all records"];

pub fn close_coverage<T>(cov: &Coverage, ok: &[T], closed: &[T]) {
    cov.hit(CLOSE_POINTS[0], ok.is_empty());
    cov.hit(CLOSE_POINTS[1], !ok.is_empty() && !closed.is_empty());
    cov.hit(CLOSE_POINTS[2], closed.is_empty());
}

/// Explores `model` (every execution up to the preemption bound `bound`),
/// then requires that some execution reached each state in `reach` (the
/// model calls [`Coverage::hit`]): a model that never reaches the state it
/// is about proves nothing.
pub fn explore(bound: usize, reach: &[&'static str], model: impl Fn(&Coverage) + Sync + Send + 'static) {
    let cov = std::sync::Arc::new(Coverage::default());
    let seen = cov.clone();
    builder(bound).check(move || model(&seen));
    cov.require(reach);
}
