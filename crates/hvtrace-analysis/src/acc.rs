//! The analyses' state while records stream by: per vCPU its runstate, the
//! exit and hypercall it is in, and the figures so far; per pCPU its busy
//! and missing time. Everything is in clock ticks; the report converts.

use std::collections::BTreeMap;

use hvtrace_model::{Event, Exit, ExitDetail, Runstate, Vcpu};
use rustc_hash::FxHashMap;

pub(crate) use crate::durations::Durations;
use crate::report::{vcpu_report, Clock, VcpuReport};
use crate::split::SplitAcc;

/// A vCPU's state in the runstate table: the model's four, and lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Model(Runstate),
    Lost,
}

/// Table rows: running, runnable, blocked, offline, lost, then runnable's
/// split: wake (from blocked or offline), preempt (from running), other
/// (from an unknown or lost state). A runnable interval is recorded in its
/// split row only; row 1 (runnable) stays empty, and the report makes the
/// runnable row as the sum of the three.
pub(crate) const ROWS: usize = 8;
pub(crate) const LOST: usize = 4;
pub(crate) const WAKE: usize = 5;
pub(crate) const PREEMPT: usize = 6;
pub(crate) const OTHER: usize = 7;

fn row(s: State) -> usize {
    match s {
        State::Model(r) => r as usize,
        State::Lost => LOST,
    }
}

/// One exit reason of one vCPU.
pub(crate) struct ExitAcc {
    pub code: u32,
    pub name: String,
    /// Exits seen (with or without a following entry).
    pub count: u64,
    /// Exit-to-entry times. Boxed, as in [`CallAcc`]: an exit counts in
    /// `count` and only its entry records a time, so `exits` stays dense
    /// (48 bytes a reason, not ~400).
    pub times: Box<Durations>,
}

/// One exit detail (port, address, …) of one reason of one vCPU: no
/// histogram (there may be many ports and addresses), totals only.
#[derive(Default)]
pub(crate) struct DetailAcc {
    pub count: u64,
    pub total: u64,
    pub max: u64,
}

/// One hypercall number of one vCPU.
pub(crate) struct CallAcc {
    pub name: String,
    pub count: u64,
    pub times: Box<Durations>,
}

/// Keys held below this are found through an array.
const DIRECT: usize = 64;

/// Where each key of a vCPU's table (exit reason code, hypercall number)
/// is in it: a key below [`DIRECT`] (every VMX reason, KVM reason and Xen
/// hypercall) through an array, in a load and no branch on the key; the
/// rest by a scan. A scan of the keys mispredicted its exit on most
/// records (which reason comes next varies).
pub(crate) struct Keys {
    /// Index + 1 of each key below `DIRECT`; 0: not held.
    direct: [u8; DIRECT],
    /// The other keys (or indices past 254), with their indices.
    others: Vec<(u32, usize)>,
}

impl Keys {
    fn new() -> Keys {
        Keys { direct: [0; DIRECT], others: Vec::new() }
    }

    #[inline]
    fn find(&self, key: u32) -> Option<usize> {
        match self.direct.get(key as usize) {
            Some(&d) if d != 0 => Some(usize::from(d) - 1),
            _ => self.others.iter().find(|o| o.0 == key).map(|o| o.1),
        }
    }

    /// `key` is at index `i` from now on.
    fn insert(&mut self, key: u32, i: usize) {
        match (self.direct.get_mut(key as usize), u8::try_from(i + 1)) {
            (Some(d), Ok(n)) => *d = n,
            _ => self.others.push((key, i)),
        }
    }
}

pub(crate) struct VcpuAcc {
    pub id: Vcpu,
    /// pCPU of its last event: where a loss on that pCPU hides it.
    pub home: u32,
    /// Current state, since when, and the pCPU it started on.
    pub state: Option<State>,
    pub since: u64,
    pub state_pcpu: u32,
    /// The runnable row (wake / preempt / other) of the current runnable interval.
    pub runnable_row: usize,
    /// Its first event, and when its state first became known: tracking
    /// starts there (or at the first event, for a source without runstates).
    pub first: u64,
    pub known_since: Option<u64>,
    pub states: Vec<Durations>,
    /// Open exit: index in `exits`, detail, time.
    pub open_exit: Option<(usize, ExitDetail, u64)>,
    /// Where each reason code is in `exits`.
    exit_codes: Keys,
    pub exits: Vec<ExitAcc>,
    /// By reason code and detail (the report sorts them).
    pub details: FxHashMap<(u32, ExitDetail), DetailAcc>,
    /// Exits that never saw their entry (the trace ended, or data was lost).
    pub exits_unmatched: u64,
    /// Open hypercall: index in `calls`, time.
    pub open_call: Option<(usize, u64)>,
    /// By number, in the order first seen (a few per vCPU: a scan beats a
    /// tree; the report sorts them).
    pub calls: Vec<(u32, CallAcc)>,
    /// Where each number is in `calls`.
    call_nrs: Keys,
    pub guest: BTreeMap<u32, (String, u64)>,
    /// Time on each pCPU (running).
    pub on_pcpu: BTreeMap<u32, u64>,
    /// The kernel/VMM split of its exits (kernel events only).
    pub split: SplitAcc,
    /// Its rows, once its domain is gone (its accumulators are then freed:
    /// a long trace of guests rebuilt under new ids must not grow memory).
    /// Boxed: a report is ~1 KiB, and inline it spread the fields each
    /// event touches over more cache lines.
    pub gone: Option<Box<VcpuReport>>,
}

/// Which pieces of a vCPU's state a stretch of the trace read on its own knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Known {
    /// State, since, pCPU and runnable row.
    pub runstate: bool,
    /// Open exit and kernel/VMM split.
    pub exit: bool,
    /// Open hypercall.
    pub call: bool,
}

/// A vCPU's figures change with its own events (and losses and its
/// domain's end) through the parts below, one per piece of the state it
/// carries from event to event: its runstate (state, since, pCPU, runnable
/// row), its open exit with the kernel/VMM split, its open hypercall. A
/// time window of the trace read on its own (`crate::parallel`) runs each
/// part where that piece is known and leaves the others to the merge.
impl VcpuAcc {
    /// Records every value its figures hold back (before its rows are made).
    pub fn flush(&mut self) {
        self.states.iter_mut().for_each(Durations::flush);
        self.exits.iter_mut().for_each(|x| x.times.flush());
        self.calls.iter_mut().for_each(|c| c.1.times.flush());
    }

    /// The runstate part of any event of the vCPU (`new`: of a runstate change).
    #[inline]
    pub fn runstate_part(&mut self, w: Window, t: u64, pcpu: u32, e: &Event<'_>) {
        let new = match *e {
            Event::Runstate { new, .. } => Some(new),
            _ => None,
        };
        self.runstate_change(w, t, pcpu, new);
    }

    /// As [`VcpuAcc::runstate_part`], for an event that changes the runstate to `new` (or not).
    #[inline]
    pub fn runstate_change(&mut self, w: Window, t: u64, pcpu: u32, new: Option<Runstate>) {
        if self.state == Some(State::Lost) {
            // Whatever the vCPU does next ends the gap: a runstate
            // change says its state, anything else that it runs.
            set_state(self, w, t, State::Model(new.unwrap_or(Runstate::Running)), pcpu);
        } else if let Some(new) = new {
            set_state(self, w, t, State::Model(new), pcpu);
        }
    }

    /// The exit part: exits, entries, exit details and the kernel/VMM split.
    #[inline]
    pub fn exit_part(&mut self, w: Window, t: u64, e: &Event<'_>) {
        match *e {
            Event::Exit { exit, .. } => self.exit(w, t, exit),
            Event::Entry { .. } => self.entry(w, t),
            Event::ExitDetail { detail, .. } => {
                if let Some(open) = &mut self.open_exit {
                    open.1 = detail;
                }
            }
            Event::KernelExit { .. } | Event::KernelDetail { .. } | Event::ToVmm { .. } => self.split.event(w, t, e),
            _ => {}
        }
    }

    #[inline]
    fn exit(&mut self, w: Window, t: u64, exit: Exit<'_>) {
        // The VMM's record of an exit the kernel began and handed over
        // (both halves traced): the same exit, counted once.
        if self.split.at_vmm() && self.open_exit.is_some() {
            return;
        }
        if self.open_exit.is_some() {
            self.exits_unmatched += 1;
        }
        let i = match self.exit_codes.find(exit.code) {
            Some(i) => i,
            None => self.new_exit(exit.code, exit.name),
        };
        if w.holds(t) {
            self.exits[i].count += 1;
        }
        self.open_exit = Some((i, exit.detail, t));
    }

    /// An entry: it ends the open exit, and its stretch in the VMM.
    #[inline]
    fn entry(&mut self, w: Window, t: u64) {
        self.split.entry(w, t);
        if let Some((i, detail, t0)) = self.open_exit.take() {
            if w.holds(t0) {
                let d = t.saturating_sub(t0);
                self.exits[i].times.add(d);
                if detail != ExitDetail::None {
                    self.detail(self.exits[i].code, detail, d);
                }
            }
        }
    }

    /// An exit with a detail took `d`.
    fn detail(&mut self, code: u32, detail: ExitDetail, d: u64) {
        let k = self.details.entry((code, detail)).or_default();
        k.count += 1;
        k.total += d;
        k.max = k.max.max(d);
    }

    /// The hypercall part.
    #[inline]
    pub fn call_part(&mut self, w: Window, t: u64, e: &Event<'_>) {
        match *e {
            Event::HypercallEntry { nr, name, .. } => self.call_entry(w, t, nr, name),
            Event::HypercallExit { nr, .. } => self.call_exit(w, t, nr),
            _ => {}
        }
    }

    #[inline]
    fn call_entry(&mut self, w: Window, t: u64, nr: u32, name: &str) {
        let i = match self.call_nrs.find(nr) {
            Some(i) => i,
            None => self.new_call(nr, name),
        };
        if w.holds(t) {
            self.calls[i].1.count += 1;
        }
        self.open_call = Some((i, t));
    }

    #[inline]
    fn call_exit(&mut self, w: Window, t: u64, nr: u32) {
        if let Some((i, t0)) = self.open_call.take() {
            if self.calls[i].0 == nr && w.holds(t0) {
                self.calls[i].1.times.add(t.saturating_sub(t0));
            }
        }
    }

    /// A new exit reason's index in `exits`.
    #[cold]
    fn new_exit(&mut self, code: u32, name: &str) -> usize {
        self.exit_codes.insert(code, self.exits.len());
        self.exits.push(ExitAcc { code, name: name.to_string(), count: 0, times: Box::new(Durations::new()) });
        self.exits.len() - 1
    }

    /// A new hypercall number's index in `calls`.
    #[cold]
    fn new_call(&mut self, nr: u32, name: &str) -> usize {
        self.call_nrs.insert(nr, self.calls.len());
        self.calls.push((nr, CallAcc { name: name.to_string(), count: 0, times: Box::new(Durations::new()) }));
        self.calls.len() - 1
    }

    /// Guest events (they carry no state).
    #[inline]
    pub fn guest_part(&mut self, w: Window, t: u64, e: &Event<'_>) {
        if let Event::GuestEvent { kind, name, .. } = *e {
            if w.holds(t) {
                self.guest.entry(kind).or_insert_with(|| (name.to_string(), 0)).1 += 1;
            }
        }
    }

    /// Events of its pCPU were lost from `from` on: its state is unknown
    /// (nothing changes if it is already).
    pub fn lose(&mut self, w: Window, from: u64, pcpu: u32) {
        if self.state == Some(State::Lost) {
            return;
        }
        self.lose_exit(w);
        self.open_call = None;
        self.lose_runstate(w, from, pcpu);
    }

    /// The exit part of [`VcpuAcc::lose`]: no exit is timed across a gap.
    pub fn lose_exit(&mut self, w: Window) {
        if self.open_exit.take().is_some() {
            self.exits_unmatched += 1;
        }
        self.split.interrupt(w);
    }

    /// The runstate part of [`VcpuAcc::lose`].
    pub fn lose_runstate(&mut self, w: Window, from: u64, pcpu: u32) {
        set_state(self, w, from.max(self.since), State::Lost, pcpu);
    }

    /// The runstate part of its domain's end at `t`.
    pub fn gone_runstate(&mut self, w: Window, t: u64) {
        if let Some(s) = self.state.take() {
            close(self, w, t, s);
        }
    }

    /// The exit part of its domain's end.
    pub fn gone_exit(&mut self) {
        if self.open_exit.take().is_some() {
            self.exits_unmatched += 1;
        }
    }

    /// Compacts its histograms ([`Durations::compact`]) while it waits for the merge.
    pub fn compact(&mut self) {
        self.states.iter_mut().for_each(Durations::compact);
        self.exits.iter_mut().for_each(|x| x.times.compact());
        self.calls.iter_mut().for_each(|c| c.1.times.compact());
    }

    /// Adds the figures of a later stretch of the same vCPU (`later`, read
    /// apart from this one); the pieces of state `known` in it replace these.
    pub fn absorb(&mut self, later: &VcpuAcc, known: Known) {
        self.home = later.home;
        if known.runstate {
            self.state = later.state;
            self.since = later.since;
            self.state_pcpu = later.state_pcpu;
            self.runnable_row = later.runnable_row;
            self.known_since = self.known_since.or(later.known_since);
        }
        for (a, b) in self.states.iter_mut().zip(&later.states) {
            a.absorb(b);
        }
        let exits: Vec<usize> = later
            .exits
            .iter()
            .map(|x| {
                let i = self.exit_codes.find(x.code).unwrap_or_else(|| self.new_exit(x.code, &x.name));
                self.exits[i].count += x.count;
                self.exits[i].times.absorb(&x.times);
                i
            })
            .collect();
        for (k, d) in &later.details {
            let e = self.details.entry(*k).or_default();
            e.count += d.count;
            e.total += d.total;
            e.max = e.max.max(d.max);
        }
        self.exits_unmatched += later.exits_unmatched;
        let calls: Vec<usize> = later
            .calls
            .iter()
            .map(|(nr, c)| {
                let i = self.call_nrs.find(*nr).unwrap_or_else(|| self.new_call(*nr, &c.name));
                self.calls[i].1.count += c.count;
                self.calls[i].1.times.absorb(&c.times);
                i
            })
            .collect();
        for (kind, (name, n)) in &later.guest {
            self.guest.entry(*kind).or_insert_with(|| (name.clone(), 0)).1 += n;
        }
        for (cpu, t) in &later.on_pcpu {
            *self.on_pcpu.entry(*cpu).or_default() += t;
        }
        self.split.absorb(&later.split, known.exit);
        if known.exit {
            self.open_exit = later.open_exit.map(|(i, d, t)| (exits[i], d, t));
        }
        if known.call {
            self.open_call = later.open_call.map(|(i, t)| (calls[i], t));
        }
    }

    /// Its domain ended at `t`: its rows are made and its figures freed.
    pub fn end(&mut self, clk: Clock, w: Window, t: u64) {
        self.open_call = None;
        self.flush();
        self.gone = Some(Box::new(vcpu_report(self, clk, w, t.min(w.to))));
        self.states = Vec::new();
        self.exit_codes = Keys::new();
        self.exits = Vec::new();
        self.details = FxHashMap::default();
        self.call_nrs = Keys::new();
        self.calls = Vec::new();
        self.guest = BTreeMap::new();
    }
}

#[derive(Default)]
pub(crate) struct PcpuAcc {
    pub discarded: u64,
    pub missing: u64,
}

/// The window the figures cover, in ticks: `[from, to)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub from: u64,
    pub to: u64,
}

impl Window {
    /// The part of `[a, b)` inside the window.
    #[inline]
    pub fn clip(&self, a: u64, b: u64) -> u64 {
        b.min(self.to).saturating_sub(a.max(self.from))
    }
    #[inline]
    pub fn holds(&self, t: u64) -> bool {
        t >= self.from && t < self.to
    }
}

/// Slots of [`Acc`]'s vCPU cache.
const SLOTS: usize = 256;

pub(crate) struct Acc {
    pub window: Window,
    pub clk: Clock,
    pub vcpus: Vec<VcpuAcc>,
    /// The vCPUs whose domain is not gone, by id.
    index: FxHashMap<Vcpu, usize>,
    /// A direct-mapped cache in front of `index` (by [`slot`]): a record's
    /// vCPU is found in a multiply and a compare, where hashing it (std's SipHash)
    /// or scanning the live vCPUs cost ~65 instructions a record.
    slots: Box<[Option<(Vcpu, u32)>; SLOTS]>,
    pub pcpus: BTreeMap<u32, PcpuAcc>,
    /// `(domain, vector)` → count; domain `None`: the hypervisor's own.
    /// (FxHash: one per interrupt record; the report sorts them.)
    pub interrupts: FxHashMap<(Option<u32>, u32), u64>,
    /// In-band loss records (`Event::Lost`).
    pub lost_in_band: u64,
    /// Records in the window about a vCPU their source could not name (`Event::Unattributed`).
    pub unattributed: u64,
}

/// `id`'s slot in [`Acc::slots`] (Fibonacci hashing).
#[inline]
fn slot(id: Vcpu) -> usize {
    let key = (u64::from(id.domain) << 32) | u64::from(id.vcpu);
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize
}

impl Acc {
    pub fn new(window: Window, clk: Clock) -> Acc {
        Acc {
            window,
            clk,
            vcpus: Vec::new(),
            index: FxHashMap::default(),
            slots: Box::new([None; SLOTS]),
            pcpus: BTreeMap::new(),
            interrupts: FxHashMap::default(),
            lost_in_band: 0,
            unattributed: 0,
        }
    }

    pub fn pcpu(&mut self, cpu: u32) -> &mut PcpuAcc {
        self.pcpus.entry(cpu).or_default()
    }

    /// The index in `vcpus` of the live vCPU `id`, made at `t` on `pcpu` if new.
    #[inline]
    pub fn vcpu(&mut self, id: Vcpu, pcpu: u32, t: u64) -> usize {
        match self.slots[slot(id)] {
            Some((v, i)) if v == id => i as usize,
            _ => self.vcpu_slow(id, pcpu, t),
        }
    }

    /// [`Acc::vcpu`] past its cache: out of line, so that the hit pays
    /// for no registers saved for this.
    #[cold]
    #[inline(never)]
    fn vcpu_slow(&mut self, id: Vcpu, pcpu: u32, t: u64) -> usize {
        let i = *self.index.entry(id).or_insert(self.vcpus.len());
        if i == self.vcpus.len() {
            self.vcpus.push(VcpuAcc {
                id,
                home: pcpu,
                state: None,
                since: t,
                state_pcpu: pcpu,
                runnable_row: OTHER,
                first: t,
                known_since: None,
                states: (0..ROWS).map(|_| Durations::new()).collect(),
                open_exit: None,
                exit_codes: Keys::new(),
                exits: Vec::new(),
                details: FxHashMap::default(),
                exits_unmatched: 0,
                open_call: None,
                calls: Vec::new(),
                call_nrs: Keys::new(),
                guest: BTreeMap::new(),
                on_pcpu: BTreeMap::new(),
                split: SplitAcc::default(),
                gone: None,
            });
        }
        self.slots[slot(id)] = Some((id, i as u32));
        i
    }

    /// One model event at time `t` on `pcpu`.
    #[inline]
    pub fn event(&mut self, pcpu: u32, t: u64, e: &Event<'_>) {
        let w = self.window;
        // One match finds the event's vCPU and its part (a match for each
        // cost ~20 instructions a record).
        match *e {
            Event::Runstate { vcpu, new } => {
                self.actor(vcpu, pcpu, t, Some(new));
            }
            Event::Exit { vcpu, exit } => self.actor(vcpu, pcpu, t, None).exit(w, t, exit),
            Event::Entry { vcpu } => self.actor(vcpu, pcpu, t, None).entry(w, t),
            Event::HypercallEntry { vcpu, nr, name } => self.actor(vcpu, pcpu, t, None).call_entry(w, t, nr, name),
            Event::HypercallExit { vcpu, nr, .. } => self.actor(vcpu, pcpu, t, None).call_exit(w, t, nr),
            Event::GuestEvent { vcpu, .. } => self.actor(vcpu, pcpu, t, None).guest_part(w, t, e),
            Event::KernelExit { vcpu, .. }
            | Event::KernelDetail { vcpu, .. }
            | Event::ExitDetail { vcpu, .. }
            | Event::ToVmm { vcpu, .. } => self.actor(vcpu, pcpu, t, None).exit_part(w, t, e),
            // An interrupt names its target, but happens where it is taken:
            // it says nothing of where the target runs or what state it is in.
            _ => self.event_of_none(t, e),
        }
    }

    /// The live vCPU `id`, whose event at `t` on `pcpu` changes its
    /// runstate to `new` (or not): its runstate part done.
    #[inline]
    fn actor(&mut self, id: Vcpu, pcpu: u32, t: u64, new: Option<Runstate>) -> &mut VcpuAcc {
        let w = self.window;
        let i = self.vcpu(id, pcpu, t);
        let v = &mut self.vcpus[i];
        v.home = pcpu;
        v.runstate_change(w, t, pcpu, new);
        v
    }

    /// An event about no vCPU (as [`Event::vcpu`] says, or an interrupt).
    #[inline(never)]
    fn event_of_none(&mut self, t: u64, e: &Event<'_>) {
        let w = self.window;
        match *e {
            Event::Interrupt { vector, domain, .. } if w.holds(t) => {
                *self.interrupts.entry((domain, vector)).or_default() += 1;
            }
            Event::DomainGone { domain } => self.domain_gone(domain, t),
            Event::Unattributed if w.holds(t) => self.unattributed += 1,
            // The walker handles these: it knows the pCPU's previous record
            // (where a loss starts) and what follows from the same record.
            _ => {}
        }
    }

    /// The vCPUs of `domain` end at `t`: their rows are made now and their
    /// accumulators freed.
    fn domain_gone(&mut self, domain: u32, t: u64) {
        let (w, clk) = (self.window, self.clk);
        for v in self.vcpus.iter_mut().filter(|v| v.id.domain == domain && v.gone.is_none()) {
            v.gone_runstate(w, t);
            v.gone_exit();
            v.end(clk, w, t);
        }
        self.forget(domain);
    }

    /// The vCPUs of `domain` are no longer found by id (a later event of the
    /// same id is a new vCPU).
    pub fn forget(&mut self, domain: u32) {
        self.index.retain(|id, _| id.domain != domain);
        self.slots.iter_mut().filter(|s| s.is_some_and(|(v, _)| v.domain == domain)).for_each(|s| *s = None);
    }

    /// `count` events of `pcpu` were lost between `from` and `to`: the
    /// vCPUs last seen there are in an unknown state from `from` until
    /// their next event.
    pub fn loss(&mut self, pcpu: u32, from: u64, to: u64, count: u64) {
        let w = self.window;
        let p = self.pcpu(pcpu);
        p.discarded += count;
        p.missing += w.clip(from, to);
        for v in self.vcpus.iter_mut().filter(|v| v.home == pcpu && v.gone.is_none()) {
            v.lose(w, from, pcpu);
        }
    }

    /// Closes every open interval at `end`.
    pub fn finish(&mut self, end: u64) {
        let w = self.window;
        for v in self.vcpus.iter_mut().filter(|v| v.gone.is_none()) {
            if let Some(s) = v.state {
                close(v, w, end, s);
            }
            if v.open_exit.take().is_some() {
                v.exits_unmatched += 1;
            }
            v.split.interrupt(w);
            v.flush();
        }
    }
}

/// The split row (wake / preempt / other) of a runnable interval after `old`.
pub(crate) fn runnable_row(old: Option<State>) -> usize {
    match old {
        Some(State::Model(Runstate::Blocked | Runstate::Offline)) => WAKE,
        Some(State::Model(Runstate::Running)) => PREEMPT,
        _ => OTHER,
    }
}

/// Ends the vCPU's current interval at `t`.
fn close(v: &mut VcpuAcc, w: Window, t: u64, s: State) {
    let t = t.max(v.since);
    let d = w.clip(v.since, t);
    if d == 0 && !w.holds(v.since) {
        return;
    }
    let i = if s == State::Model(Runstate::Runnable) { v.runnable_row } else { row(s) };
    v.states[i].add(d);
    if s == State::Model(Runstate::Running) {
        // A pCPU's busy time is the sum of these (the report adds them up).
        *v.on_pcpu.entry(v.state_pcpu).or_default() += d;
    }
}

/// Moves the vCPU to `new` at `t` (nothing if it is there already).
fn set_state(v: &mut VcpuAcc, w: Window, t: u64, new: State, pcpu: u32) {
    if v.state == Some(new) {
        return;
    }
    let old = v.state;
    if let Some(s) = old {
        close(v, w, t, s);
    }
    if new == State::Model(Runstate::Runnable) {
        v.runnable_row = runnable_row(old);
    }
    v.state = Some(new);
    v.since = t.max(v.since);
    v.known_since.get_or_insert(v.since);
    v.state_pcpu = pcpu;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_at_their_index_in_the_array_the_scan_or_both() {
        // Small keys first (in the array), large ones (scanned), then small
        // ones again past index 254 (a byte's worth: scanned too).
        let keys: Vec<u32> = (0..40).chain(1000..1300).chain(40..64).collect();
        let mut k = Keys::new();
        for (i, &key) in keys.iter().enumerate() {
            assert_eq!(k.find(key), None, "key {key} before its insert");
            k.insert(key, i);
        }
        assert_eq!(k.others.len(), 300 + 24);
        for (i, &key) in keys.iter().enumerate() {
            assert_eq!(k.find(key), Some(i), "key {key}");
        }
        assert_eq!(k.find(999), None);
    }

    #[test]
    fn a_vcpu_is_found_again_after_others_share_its_slot_and_not_after_its_domain_ends() {
        let mut acc = Acc::new(Window { from: 0, to: u64::MAX }, Clock(1_000_000_000));
        let ids: Vec<Vcpu> = (0..2000).map(|i| Vcpu::new(i / 4, i % 4)).collect();
        let first: Vec<usize> = ids.iter().map(|&id| acc.vcpu(id, 0, 1)).collect();
        assert_eq!(first, (0..2000).collect::<Vec<_>>(), "one VcpuAcc per id, in order");
        // 2000 ids in 256 slots: most were evicted; each is still the same vCPU.
        for (&id, &i) in ids.iter().zip(&first).rev() {
            assert_eq!(acc.vcpu(id, 0, 2), i);
        }
        acc.event(0, 3, &Event::DomainGone { domain: 7 });
        let again = acc.vcpu(Vcpu::new(7, 1), 0, 4);
        assert_eq!(again, 2000, "a domain's vCPU after its end is a new one");
        assert_eq!(acc.vcpu(Vcpu::new(8, 1), 0, 4), 33);
    }
}
