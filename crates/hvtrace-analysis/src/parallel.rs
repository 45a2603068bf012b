//! The pass on several threads: the trace is cut into time windows
//! ([`hvtrace_reader::Splitter`], at packet boundaries give or take the
//! records of one packet per stream), more than there are threads; each
//! thread takes the next window not taken and reads it with its own
//! [`Merge`] and accumulators, and the calling thread merges the windows in
//! order as they come into exactly what one thread gets (`docs/analysis.md`
//! § "Threads").
//!
//! The first window is read as one thread reads the trace. A later one
//! does not know the state each vCPU carries into it: its runstate (state,
//! since when, on which pCPU, which runnable row), its open exit with the
//! kernel/VMM split, and its open hypercall. Each piece becomes known at a
//! point the window sees (an entry settles the exit; a hypercall entry or
//! exit the call; a runstate change that must be a change, at a time past
//! every time seen so far, the runstate; a loss all three, once it is known
//! to touch the vCPU). Until then, what an event does to that piece is
//! logged, not done: the merge replays the log through the same
//! [`VcpuAcc`](crate::acc::VcpuAcc) parts on the state the windows before
//! left, then adds what the window accumulated once the pieces were known
//! (histograms add bucket by bucket: exact) and takes the state it ends with.
//! Losses and domain ends are logged too: they touch vCPUs the window may
//! not have seen yet.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use hvtrace_model::{Bindings, Event, Runstate, Vcpu};
use hvtrace_reader::{Mark, Merge, Splitter, TraceDir};

use crate::acc::{runnable_row, Acc, Known, State, Window};
use crate::report::Clock;
use crate::walk::{self, Feed, Pass, Range, Walked};

/// What a later window knows of a vCPU's runstate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runstates {
    /// Nothing: before its first event (it may be lost).
    Fresh,
    /// Not lost (the state the windows before left, or running).
    NotLost,
    /// The state, not since when.
    Partial(State),
    /// All of it: the window's accumulator runs it.
    Known,
}

/// What a later window knows of a vCPU's state.
#[derive(Clone, Copy, Debug)]
struct Shadow {
    runstate: Runstates,
    exit: bool,
    call: bool,
    /// When its domain ended in this window.
    gone: Option<u64>,
}

/// What the merge replays on the state the windows before left, in order.
/// `r` is the vCPU's index in the window's accumulator.
#[derive(Clone, Copy, Debug)]
enum Op<'m> {
    /// The vCPU's first event in the window: find it (or make it) there.
    Attach {
        r: usize,
        id: Vcpu,
        pcpu: u32,
        t: u64,
    },
    /// An event's runstate part (`new`: of a runstate change).
    Runstate {
        r: usize,
        t: u64,
        pcpu: u32,
        new: Option<Runstate>,
    },
    /// An event's exit part.
    Exit {
        r: usize,
        t: u64,
        e: Event<'m>,
    },
    /// A hypercall exit's part.
    Call {
        r: usize,
        t: u64,
        e: Event<'m>,
    },
    /// A loss's exit part, and its runstate part.
    LoseExit {
        r: usize,
    },
    LoseRunstate {
        r: usize,
        from: u64,
        pcpu: u32,
    },
    /// Its domain's end: runstate and exit parts.
    GoneRunstate {
        r: usize,
        t: u64,
    },
    GoneExit {
        r: usize,
    },
    /// A loss, for the vCPUs the window has not seen yet.
    Loss {
        pcpu: u32,
        from: u64,
    },
    /// A domain's end, for the vCPUs the window has not seen yet.
    Gone {
        domain: u32,
        t: u64,
    },
}

/// A later window's accumulators: the figures of what it knows, and the log.
pub(crate) struct Later<'m> {
    acc: Acc,
    shadows: Vec<Shadow>,
    log: Vec<Op<'m>>,
    /// The latest time seen (at least the cut's): a vCPU's `since` from
    /// before is not later, so a change at or after it starts at its own time.
    hi: u64,
}

impl<'m> Later<'m> {
    fn new(window: Window, clk: Clock, cut: u64) -> Later<'m> {
        Later { acc: Acc::new(window, clk), shadows: Vec::new(), log: Vec::new(), hi: cut }
    }

    /// Compacts the histograms of the vCPUs live at its end (those whose
    /// domain ended in it are already) while it waits for the merge.
    fn compact(&mut self) {
        for (v, s) in self.acc.vcpus.iter_mut().zip(&self.shadows) {
            if s.gone.is_none() {
                v.compact();
            }
        }
    }

    fn domain_gone(&mut self, domain: u32, t: u64) {
        let w = self.acc.window;
        self.log.push(Op::Gone { domain, t });
        for (r, (v, s)) in self.acc.vcpus.iter_mut().zip(&mut self.shadows).enumerate() {
            if v.id.domain != domain || s.gone.is_some() {
                continue;
            }
            if s.runstate == Runstates::Known {
                v.gone_runstate(w, t);
            } else {
                self.log.push(Op::GoneRunstate { r, t });
            }
            if s.exit {
                v.gone_exit();
            } else {
                self.log.push(Op::GoneExit { r });
            }
            v.open_call = None;
            v.compact();
            s.gone = Some(t);
        }
        self.acc.forget(domain);
    }
}

impl<'m> Feed<'m> for Later<'m> {
    fn event(&mut self, pcpu: u32, t: u64, e: &Event<'m>) {
        let hi = self.hi;
        self.hi = hi.max(t);
        let actor = match *e {
            Event::Interrupt { .. } => None,
            _ => e.vcpu(),
        };
        let Some(id) = actor else {
            match *e {
                Event::DomainGone { domain } => self.domain_gone(domain, t),
                // Interrupts, unattributed records: counts that add up.
                _ => self.acc.event(pcpu, t, e),
            }
            return;
        };
        let w = self.acc.window;
        let n = self.acc.vcpus.len();
        let r = self.acc.vcpu(id, pcpu, t);
        if r == n {
            self.shadows.push(Shadow { runstate: Runstates::Fresh, exit: false, call: false, gone: None });
            self.log.push(Op::Attach { r, id, pcpu, t });
        }
        let (s, v) = (&mut self.shadows[r], &mut self.acc.vcpus[r]);
        v.home = pcpu;
        if s.runstate == Runstates::Known {
            v.runstate_part(w, t, pcpu, e);
        } else {
            let new = match *e {
                Event::Runstate { new, .. } => Some(new),
                _ => None,
            };
            let (log, next) = match (s.runstate, new) {
                (Runstates::Fresh, None) => (true, Runstates::NotLost),
                (Runstates::Fresh | Runstates::NotLost, Some(n)) => (true, Runstates::Partial(State::Model(n))),
                (Runstates::NotLost, None) => (false, Runstates::NotLost),
                (Runstates::Partial(old), _) => {
                    let to = match new {
                        None if old == State::Lost => Some(State::Model(Runstate::Running)),
                        Some(n) if State::Model(n) != old => Some(State::Model(n)),
                        _ => None,
                    };
                    match to {
                        None => (false, s.runstate),
                        // A change after every time seen: it starts now.
                        Some(to) if t >= hi => {
                            v.state = Some(to);
                            v.since = t;
                            v.state_pcpu = pcpu;
                            if to == State::Model(Runstate::Runnable) {
                                v.runnable_row = runnable_row(Some(old));
                            }
                            v.known_since = None;
                            (true, Runstates::Known)
                        }
                        Some(to) => (true, Runstates::Partial(to)),
                    }
                }
                (Runstates::Known, _) => unreachable!("handled above"),
            };
            if log {
                self.log.push(Op::Runstate { r, t, pcpu, new });
            }
            s.runstate = next;
        }
        match e {
            Event::Runstate { .. } => {}
            Event::HypercallEntry { .. } => {
                v.call_part(w, t, e);
                s.call = true;
            }
            Event::HypercallExit { .. } if s.call => v.call_part(w, t, e),
            Event::HypercallExit { .. } => {
                self.log.push(Op::Call { r, t, e: *e });
                s.call = true;
            }
            Event::GuestEvent { .. } => v.guest_part(w, t, e),
            _ if s.exit => v.exit_part(w, t, e),
            _ => {
                self.log.push(Op::Exit { r, t, e: *e });
                s.exit = matches!(e, Event::Entry { .. });
            }
        }
    }

    fn loss(&mut self, pcpu: u32, from: u64, to: u64, count: u64) {
        self.hi = self.hi.max(from);
        let w = self.acc.window;
        let p = self.acc.pcpu(pcpu);
        p.discarded += count;
        p.missing += w.clip(from, to);
        self.log.push(Op::Loss { pcpu, from });
        for (r, (v, s)) in self.acc.vcpus.iter_mut().zip(&mut self.shadows).enumerate() {
            if v.home != pcpu || s.gone.is_some() {
                continue;
            }
            // Whether it is lost already (then nothing changes): known
            // once it has had an event here.
            let lost = match s.runstate {
                Runstates::Known => v.state == Some(State::Lost),
                Runstates::Partial(p) => p == State::Lost,
                Runstates::Fresh | Runstates::NotLost => false,
            };
            if lost {
                continue;
            }
            if s.exit {
                v.lose_exit(w);
            } else {
                self.log.push(Op::LoseExit { r });
                s.exit = true;
            }
            v.open_call = None;
            s.call = true;
            if s.runstate == Runstates::Known {
                v.lose_runstate(w, from, pcpu);
            } else {
                self.log.push(Op::LoseRunstate { r, from, pcpu });
                s.runstate = Runstates::Partial(State::Lost);
            }
        }
    }

    fn lost_in_band(&mut self, count: u64) {
        self.acc.lost_in_band += count;
    }
}

impl Acc {
    /// Goes on with the window that follows the ones this holds: replays
    /// its log here, then adds its figures and takes its state.
    pub(crate) fn absorb(&mut self, later: Later<'_>) {
        let (w, clk) = (self.window, self.clk);
        let Later { acc, shadows, log, .. } = later;
        let mut at = vec![usize::MAX; acc.vcpus.len()];
        // The vCPUs found by the window (from its log's `Attach`): it runs them.
        let mut owned = vec![false; self.vcpus.len()];
        for op in log {
            match op {
                Op::Attach { r, id, pcpu, t } => {
                    let m = self.vcpu(id, pcpu, t);
                    at[r] = m;
                    owned.resize(owned.len().max(m + 1), false);
                    owned[m] = true;
                }
                Op::Runstate { r, t, pcpu, new } => self.vcpus[at[r]].runstate_change(w, t, pcpu, new),
                Op::Exit { r, t, e } => self.vcpus[at[r]].exit_part(w, t, &e),
                Op::Call { r, t, e } => self.vcpus[at[r]].call_part(w, t, &e),
                Op::LoseExit { r } => self.vcpus[at[r]].lose_exit(w),
                Op::LoseRunstate { r, from, pcpu } => self.vcpus[at[r]].lose_runstate(w, from, pcpu),
                Op::GoneRunstate { r, t } => self.vcpus[at[r]].gone_runstate(w, t),
                Op::GoneExit { r } => self.vcpus[at[r]].gone_exit(),
                Op::Loss { pcpu, from } => {
                    for (m, v) in self.vcpus.iter_mut().enumerate() {
                        if v.home == pcpu && v.gone.is_none() && !owned.get(m).copied().unwrap_or(false) {
                            v.lose(w, from, pcpu);
                        }
                    }
                }
                Op::Gone { domain, t } => {
                    for (m, v) in self.vcpus.iter_mut().enumerate() {
                        if v.id.domain == domain && v.gone.is_none() && !owned.get(m).copied().unwrap_or(false) {
                            v.gone_runstate(w, t);
                            v.gone_exit();
                            v.end(clk, w, t);
                        }
                    }
                    self.forget(domain);
                }
            }
        }
        for ((v, s), m) in acc.vcpus.iter().zip(&shadows).zip(at) {
            let known = Known { runstate: s.runstate == Runstates::Known, exit: s.exit, call: s.call };
            let into = &mut self.vcpus[m];
            into.absorb(v, known);
            if let Some(t) = s.gone {
                into.end(clk, w, t);
            }
        }
        for (cpu, p) in acc.pcpus {
            let q = self.pcpu(cpu);
            q.discarded += p.discarded;
            q.missing += p.missing;
        }
        for (k, n) in acc.interrupts {
            *self.interrupts.entry(k).or_default() += n;
        }
        self.lost_in_band += acc.lost_in_band;
        self.unattributed += acc.unattributed;
    }
}

/// Time windows per thread by default: the threads take them in turn, so a
/// window read slowly (a core taken away for a while, a stretch of costlier
/// records) holds the end back by a fraction of one thread's share, and the
/// merge of each window overlaps the reading of those after it.
pub const WINDOWS_PER_THREAD: usize = 4;

/// How often the thread that merges reports progress while it waits.
const PROGRESS_PERIOD: Duration = Duration::from_millis(50);

/// The relative sizes of `windows` windows read by `threads` threads in
/// turn: in rounds of one window per thread, each round smaller than the
/// one before (`rounds`, …, 2, 1), so that the last windows, which decide
/// when the threads end, are short, and the first, long ones cost few cuts.
fn shares(windows: usize, threads: usize) -> Vec<u64> {
    let rounds = windows.div_ceil(threads.max(1));
    (0..windows).map(|i| (rounds - i / threads.max(1)) as u64).collect()
}

/// A window's accumulators: the first window's, or a later one's.
enum Part<'m> {
    First(Acc),
    Later(Later<'m>),
}

/// The pass in `windows` time windows (0: [`WINDOWS_PER_THREAD`] per
/// thread), read by `threads` threads in turn and merged in order as they
/// come; `None` when the trace cannot be cut (damage, too few packets, a
/// mapping that learns from earlier records) or a window meets damage or
/// an error: the caller then reads it whole.
pub(crate) fn pass(
    trace: &TraceDir,
    bindings: &[Bindings; 2],
    range: Range,
    threads: usize,
    windows: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Option<Pass> {
    // A mapping that learns from earlier records (the kernel's, of threads
    // it learns to be vCPUs) must see them all in order.
    if bindings.iter().any(Bindings::learns) {
        return None;
    }
    let splitter = Splitter::new(trace, true).ok()??;
    // What the whole walk starts with, from the headers already read: its
    // first time, its size, and the warning of a trace cut short (any other
    // warning in a window is damage, left to the whole walk).
    let begin = splitter.first_time().ok()??;
    let total = splitter.total_bytes();
    let expected: Vec<String> = trace.incomplete_warning().into_iter().collect();
    let windows = if windows == 0 { threads * WINDOWS_PER_THREAD } else { windows };
    let marks: Vec<Mark> = splitter
        .times_by(&shares(windows, threads))
        .into_iter()
        .map(|t| splitter.mark(t).ok().flatten())
        .collect::<Option<_>>()?;
    drop(splitter);
    if marks.is_empty() {
        return None;
    }
    let n = marks.len() + 1;
    let order = walk::order(bindings);
    let window = walk::window(range, begin);
    let clk = Clock(trace.metadata.clock.freq.max(1));
    let done: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    // Windows merged so far.
    let merged = AtomicUsize::new(0);
    // Window `k`, read into the `buffers` of the thread's window before.
    let read = |k: usize, buffers: &mut Vec<Vec<u8>>| -> Option<(Part, Walked)> {
        let from = k.checked_sub(1).map(|i| &marks[i]);
        let mut merge = Merge::between_with(trace, order, true, from, marks.get(k), std::mem::take(buffers)).ok()?;
        let progress = &mut |b| done[k].store(b, Relaxed);
        let (part, w) = match from {
            None => {
                let mut acc = Acc::new(window, clk);
                let w = walk::walk(trace, &mut merge, bindings, window, begin, &mut acc, progress, &mut crate::Blind);
                (Part::First(acc), w.ok()?)
            }
            Some(m) => {
                let mut later = Later::new(window, clk, m.time());
                let w = walk::walk(trace, &mut merge, bindings, window, begin, &mut later, progress, &mut crate::Blind);
                // Waiting for the windows before it: it holds what it found
                // while the others read (each histogram ~2-10 KiB).
                if k > merged.load(Relaxed) {
                    later.compact();
                }
                (Part::Later(later), w.ok()?)
            }
        };
        *buffers = merge.into_buffers();
        // Losses after the streams' last records come in the last window only.
        (w.warnings == expected && (k + 1 == n || w.trailing.is_empty())).then_some((part, w))
    };
    // The next window to take, and whether to take no more (one failed).
    let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let whole = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(n))
            .map(|_| {
                let (tx, read, next, stop) = (tx.clone(), &read, &next, &stop);
                s.spawn(move || {
                    let mut buffers = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Relaxed);
                        if k >= n || stop.load(Relaxed) {
                            break;
                        }
                        let part = read(k, &mut buffers);
                        // One window that fails sends the whole trace to one
                        // thread: read no more (the merge, which would say so
                        // only once it reached this window, then sees a window
                        // missing or this one failed, and gives up either way).
                        stop.fetch_or(part.is_none(), Relaxed);
                        if tx.send((k, part)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        // This thread merges each window once those before it are merged,
        // woken by each one read (and now and then to show progress).
        let mut waiting: Vec<Option<Option<(Part, Walked)>>> = (0..n).map(|_| None).collect();
        let mut acc: Option<(Acc, Walked)> = None;
        let mut ok = true;
        let mut k = 0;
        while ok && k < n {
            match rx.recv_timeout(PROGRESS_PERIOD) {
                Ok((i, part)) => waiting[i] = Some(part),
                Err(RecvTimeoutError::Timeout) => {}
                // Every thread is gone before every window came: a window
                // failed (the threads stopped), or one panicked (its join says why).
                Err(RecvTimeoutError::Disconnected) => ok = false,
            }
            while let Some(part) = waiting.get_mut(k).and_then(Option::take) {
                match (part, acc.as_mut()) {
                    (Some((Part::First(first), w)), None) => acc = Some((first, w)),
                    (Some((Part::Later(later), w)), Some((acc, all))) => {
                        acc.absorb(later);
                        all.absorb(w);
                    }
                    _ => ok = false,
                }
                k += 1;
                merged.store(k, Relaxed);
            }
            progress(done.iter().map(|d| d.load(Relaxed)).sum(), total);
        }
        stop.store(!ok, Relaxed);
        for h in handles {
            h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
        acc.filter(|_| ok)
    });
    let (acc, all) = whole?;
    progress(total, total);
    Some(walk::finish(acc, all, begin, n, &mut crate::Blind))
}

impl Walked {
    /// Goes on with the walk of the window that follows.
    fn absorb(&mut self, w: Walked) {
        self.end = self.end.max(w.end);
        for (a, b) in self.by_class.iter_mut().zip(&w.by_class) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        self.per_stream.iter_mut().zip(&w.per_stream).for_each(|(x, y)| *x += y);
        for (a, b) in self.streams.iter_mut().zip(&w.streams) {
            a.packets += b.packets;
            a.events_discarded = a.events_discarded.max(b.events_discarded);
        }
        self.trailing = w.trailing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::vcpu_report;

    const V: Vcpu = Vcpu::new(1, 0);
    const W: Window = Window { from: 0, to: u64::MAX };

    fn rs(new: Runstate) -> Event<'static> {
        Event::Runstate { vcpu: V, new }
    }

    /// The vCPU's rows from `events` read whole, and read as two windows cut before event `cut` at time `at`.
    fn whole_and_cut(events: &[(u64, Event<'static>)], cut: usize, at: u64) -> (String, String) {
        let clk = Clock(1_000_000_000);
        let end = events.iter().map(|e| e.0).max().unwrap() + 1;
        let rows = |mut acc: Acc| {
            acc.finish(end);
            serde_json::to_string(&vcpu_report(&acc.vcpus[0], clk, W, end)).unwrap()
        };
        let mut whole = Acc::new(W, clk);
        events.iter().for_each(|&(t, e)| whole.event(0, t, &e));
        let mut first = Acc::new(W, clk);
        events[..cut].iter().for_each(|&(t, e)| first.event(0, t, &e));
        let mut later = Later::new(W, clk, at);
        events[cut..].iter().for_each(|&(t, e)| Feed::event(&mut later, 0, t, &e));
        first.absorb(later);
        (rows(whole), rows(first))
    }

    #[test]
    fn windows_shrink_round_by_round() {
        assert_eq!(shares(2, 2), [1, 1]);
        assert_eq!(shares(8, 2), [4, 4, 3, 3, 2, 2, 1, 1]);
        assert_eq!(shares(7, 3), [3, 3, 3, 2, 2, 2, 1]);
        assert_eq!(shares(3, 1), [3, 2, 1]);
    }

    #[test]
    fn a_change_back_in_time_does_not_settle_the_runstate() {
        use Runstate::*;
        // Blocked at 300, then runnable at 250 (a record that goes back in
        // time): the runnable interval starts at 300, not 250.
        let events =
            [(100, rs(Running)), (300, rs(Blocked)), (250, rs(Runnable)), (400, rs(Running)), (500, rs(Blocked))];
        let (whole, cut) = whole_and_cut(&events, 1, 200);
        assert_eq!(whole, cut);
        assert!(whole.contains(r#""runnable":{"count":1,"total_ns":100,"#), "{whole}");
    }

    #[test]
    fn every_cut_of_a_short_history_gives_the_rows_read_whole() {
        use Runstate::*;
        let x = |code| Event::Exit {
            vcpu: V,
            exit: hvtrace_model::Exit { code, name: "x", detail: hvtrace_model::ExitDetail::None },
        };
        let entry = Event::Entry { vcpu: V };
        let call = |nr| Event::HypercallEntry { vcpu: V, nr, name: "c" };
        let ret = |nr| Event::HypercallExit { vcpu: V, nr, name: "c" };
        let events = [
            (10, rs(Runnable)),
            (20, rs(Running)),
            (30, x(1)),
            (40, call(3)),
            (45, entry),
            (50, x(2)),
            (60, ret(3)),
            (70, rs(Blocked)),
            (80, entry),
            (90, rs(Runnable)),
            (95, rs(Running)),
            (99, x(1)),
            (120, entry),
        ];
        for cut in 1..events.len() {
            let (whole, parts) = whole_and_cut(&events, cut, events[cut].0);
            assert_eq!(whole, parts, "cut before event {cut}");
        }
    }
}
