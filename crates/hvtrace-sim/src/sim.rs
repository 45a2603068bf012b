//! One simulated physical CPU: a credit-scheduler-like state machine over
//! the vCPUs of the domains it hosts.

use std::collections::VecDeque;

use hvtrace_core::{RecordError, Sink};

use crate::rng::Rng;
use crate::types::*;
use crate::xen;

/// Most domains a [`SimConfig`] may ask for (more are clamped).
pub const MAX_DOMAINS: u32 = 1024;
/// Most vCPUs per domain (Xen's HVM limit).
pub const MAX_VCPUS: u32 = 128;
/// Most pCPUs.
pub const MAX_PCPUS: u32 = 4096;

/// Actions (event batches) a vCPU runs for before its slice ends.
const SLICE_MIN: u32 = 16;
const SLICE_MAX: u32 = 64;
/// Credits burnt per slice, and the cap (credit.c: 100 per 10 ms tick, 300 per 30 ms period).
const CREDIT_TICK: i32 = 100;
const CREDIT_CAP: i32 = 300;
const CREDIT_INIT: i32 = 100;
/// A running domU vCPU shuts its domain down once in this many actions.
const SHUTDOWN_ODDS: u32 = 30_000;
/// Bytes of copied data kept in a `grant_copy` record, at most.
const SAMPLE_LEN: usize = 256;

/// Guest kernel text (Linux x86-64 `__START_KERNEL_map`).
const KTEXT: u64 = 0xffff_ffff_8100_0000;
/// Guest user-space text / heap and kernel direct map.
const USER_BASE: u64 = 0x0000_5555_5555_0000;
const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
/// Guest kernel vmalloc area (hypercall argument buffers).
const VMALLOC: u64 = 0xffff_c900_0000_0000;

// Sub-operation numbers from xen/include/public/*.h.
const SCHEDOP_YIELD: u64 = 0;
const SCHEDOP_BLOCK: u64 = 1;
const SCHEDOP_SHUTDOWN: u64 = 2;
const VCPUOP_UP: u64 = 1;
const VCPUOP_DOWN: u64 = 2;
const VCPUOP_SET_SINGLESHOT_TIMER: u64 = 8;
const EVTCHNOP_SEND: u64 = 4;
const GNTTABOP_MAP_GRANT_REF: u64 = 0;
const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
const GNTTABOP_COPY: u64 = 5;
const XENMEM_DECREASE_RESERVATION: u64 = 1;
const XENMEM_POPULATE_PHYSMAP: u64 = 6;
const HVMOP_SET_PARAM: u64 = 0;
const HVMOP_GET_PARAM: u64 = 1;
const PHYSDEVOP_EOI: u64 = 12;
const CONSOLEIO_WRITE: u64 = 0;
const XENVER_VERSION: u64 = 0;
const UVMF_INVLPG: u64 = 2;
const SEGBASE_GS_USER_SEL: u64 = 3;
/// Xen 4.17, as `XENVER_version` returns it.
const XEN_VERSION: i64 = (4 << 16) | 17;

const EINVAL: i64 = 22;
const EAGAIN: i64 = 11;
const EFAULT: i64 = 14;
const ENOMEM: i64 = 12;

/// What guests print (`console_write`), of varied lengths.
const CONSOLE_LINES: &[&str] = &[
    "random: crng init done",
    "xen-blkfront: barrier: enabled; persistent grants: enabled; indirect descriptors: enabled;",
    "EXT4-fs (xvda1): mounted filesystem with ordered data mode. Quota mode: none.",
    "systemd[1]: Started systemd-journald.service - Journal Service.",
    "xen_netfront: Initialising Xen virtual ethernet driver",
    "NET: Registered PF_INET6 protocol family",
    "Freeing unused kernel image (initmem) memory: 2852K",
    "xenbus_probe_frontend: Device with no driver: device/vkbd/0",
    "clocksource: Switched to clocksource xen",
    "e",
];

/// The simulated host's shape.
///
/// Domain `d` (initial domid `d`, `0 ≤ d < domains`; domain 0 is dom0) and
/// all its vCPUs live on pCPU `d % pcpus`. The domains of a pCPU alternate
/// PV, HVM, PV… (dom0 is PV). A pCPU whose number is `pcpus` or more, or that gets no domain, runs
/// only its idle vCPU and takes timer interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Physical CPUs of the host (the number of [`PcpuSim`]s), 1 to [`MAX_PCPUS`].
    pub pcpus: u32,
    /// Domains, dom0 included, 1 to [`MAX_DOMAINS`].
    pub domains: u32,
    /// vCPUs of each domain, 1 to [`MAX_VCPUS`].
    pub vcpus_per_domain: u32,
    /// Seed: the same seed and shape give the same events on each pCPU.
    pub seed: u64,
}

impl SimConfig {
    /// A host of `pcpus` pCPUs with two 2-vCPU domains per pCPU (at least four domains).
    pub fn new(pcpus: u32) -> Self {
        SimConfig { pcpus, domains: pcpus.saturating_mul(2).max(4), ..SimConfig::default() }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { pcpus: 1, domains: 4, vcpus_per_domain: 2, seed: 0x5EED }
    }
}

/// What one [`PcpuSim::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepStats {
    /// The event emitted.
    pub id: xen::Id,
    /// Events emitted (attempted records): always 1.
    pub emitted: u32,
    /// Of those, refused by the sink as a loss it counted (full, busy, too big).
    pub refused: u32,
    /// Of those, refused because the sink is closed (stopped): not a loss.
    pub closed: u32,
}

/// A vCPU by position: domain slot and vCPU id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VRef {
    d: usize,
    v: u32,
}

#[derive(Clone, Debug)]
struct Vcpu {
    state: Runstate,
    credit: i32,
    prio: CreditPrio,
    /// A hypercall the vCPU is descheduled in, to complete when it runs again.
    resume: Option<(Hypercall, i64)>,
}

impl Vcpu {
    fn offline() -> Self {
        Vcpu { state: Runstate::offline, credit: CREDIT_INIT, prio: CreditPrio::under, resume: None }
    }
}

#[derive(Clone, Debug)]
struct Domain {
    domid: u16,
    hvm: bool,
    dom0: bool,
    vcpus: Vec<Vcpu>,
}

/// One event to emit, queued by the state machine.
#[derive(Clone, Copy, Debug)]
enum Ev {
    VmExit(u16, u32, VmxExitReason, u64, u64),
    VmEntry(u16, u32),
    HcEntry(u16, u32, Hypercall, [u64; 5]),
    HcExit(u16, u32, Hypercall, i64),
    PageFault(u16, u32, u64, u64, u32),
    Interrupt(u8, u16),
    Runstate(u16, u32, Runstate, Runstate),
    Switch((u16, u32), Runstate, (u16, u32), Runstate),
    Wake(u16, u32),
    Block(u16, u32),
    Credit(u16, u32, i32, CreditPrio),
    Yield(u16, u32),
    /// domid, peer, bytes copied, sample offset, sample length.
    GrantCopy(u16, u16, u32, u16, u16),
    Console(u16, u8),
    Sleep(u16, u32),
    DomCreate(u16, u32, bool),
    DomDestroy(u16, ShutdownReason),
}

/// What a running vCPU does next.
#[derive(Clone, Copy, Debug)]
enum Act {
    Hypercall,
    Fault,
    Irq,
    Io,
    Console,
    Yield,
    Block,
    VcpuUp,
    VcpuDown,
    /// HVM only: an exit handled in Xen without a hypercall (I/O, CPUID, MSR…).
    Exit,
}

const ACTS: [Act; 10] = [
    Act::Hypercall,
    Act::Fault,
    Act::Irq,
    Act::Io,
    Act::Console,
    Act::Yield,
    Act::Block,
    Act::VcpuUp,
    Act::VcpuDown,
    Act::Exit,
];
const PV_WEIGHTS: [u32; 10] = [420, 160, 100, 70, 6, 30, 45, 20, 2, 0];
const HVM_WEIGHTS: [u32; 10] = [120, 200, 100, 20, 3, 20, 30, 15, 2, 460];

/// One simulated physical CPU.
///
/// Each [`step`](PcpuSim::step) emits exactly one event. Internally the
/// scheduler produces small batches (a VM exit, its handling and the VM
/// entry; a block and the switch that follows…) that later steps drain, so
/// a trace cut after any step is a prefix of a consistent history.
#[derive(Clone, Debug)]
pub struct PcpuSim {
    cpu: u32,
    pcpus: u32,
    rng: Rng,
    doms: Vec<Domain>,
    runq: VecDeque<VRef>,
    current: Option<VRef>,
    slice_left: u32,
    ticks: u64,
    domid_base: u32,
    next_domid: u32,
    queue: VecDeque<Ev>,
    sample: [u8; SAMPLE_LEN],
}

impl PcpuSim {
    /// pCPU `cpu` of the host `cfg` describes, before its first event: the
    /// first steps create its domains and wake their vCPU 0.
    pub fn new(cpu: u32, cfg: &SimConfig) -> Self {
        let pcpus = cfg.pcpus.clamp(1, MAX_PCPUS);
        let domains = cfg.domains.clamp(1, MAX_DOMAINS);
        let nv = cfg.vcpus_per_domain.clamp(1, MAX_VCPUS);
        let mut rng = Rng::new(cfg.seed ^ 0xA076_1D64_78BD_642F_u64.wrapping_mul(cpu as u64 + 1));
        rng.next_u64();
        let mut sample = [0u8; SAMPLE_LEN];
        for b in sample.iter_mut() {
            *b = rng.next_u64() as u8;
        }
        let doms: Vec<Domain> = (0..domains)
            .filter(|d| d % pcpus == cpu)
            .map(|d| Domain {
                domid: d as u16,
                hvm: (d / pcpus) % 2 == 1,
                dom0: d == 0,
                vcpus: vec![Vcpu::offline(); nv as usize],
            })
            .collect();
        // New domids on this pCPU are ≡ cpu (mod pcpus): unique host-wide without sharing state.
        let domid_base = domains + (cpu + pcpus - domains % pcpus) % pcpus;
        let mut sim = PcpuSim {
            cpu,
            pcpus,
            rng,
            doms,
            runq: VecDeque::new(),
            current: None,
            slice_left: 0,
            ticks: 0,
            domid_base,
            next_domid: domid_base,
            queue: VecDeque::with_capacity(4 * nv as usize + 16),
            sample,
        };
        for d in 0..sim.doms.len() {
            sim.build_domain(d);
        }
        sim
    }

    /// The pCPU number.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// The vCPU the pCPU is running, as of the events emitted so far plus
    /// those already decided (`(DOMID_IDLE, cpu)` when idle).
    pub fn running(&self) -> (u16, u32) {
        match self.current {
            Some(r) => self.ids(r),
            None => (DOMID_IDLE, self.cpu),
        }
    }

    /// The domain ids currently hosted on this pCPU.
    pub fn domids(&self) -> impl Iterator<Item = u16> + '_ {
        self.doms.iter().map(|d| d.domid)
    }

    /// Emits the next event into `sink`.
    pub fn step<S: Sink + ?Sized>(&mut self, sink: &S) -> StepStats {
        let ev = loop {
            match self.queue.pop_front() {
                Some(ev) => break ev,
                None => self.generate(),
            }
        };
        let (id, res) = self.emit(sink, ev);
        StepStats {
            id,
            emitted: 1,
            refused: matches!(res, Err(e) if e != RecordError::Closed) as u32,
            closed: (res == Err(RecordError::Closed)) as u32,
        }
    }

    fn emit<S: Sink + ?Sized>(&self, s: &S, ev: Ev) -> (xen::Id, Result<(), RecordError>) {
        use xen::Id;
        match ev {
            Ev::VmExit(d, v, r, rip, q) => (Id::vm_exit, xen::vm_exit(s, d, v, r, rip, q)),
            Ev::VmEntry(d, v) => (Id::vm_entry, xen::vm_entry(s, d, v)),
            Ev::HcEntry(d, v, nr, a) => {
                (Id::hypercall_entry, xen::hypercall_entry(s, d, v, nr, a[0], a[1], a[2], a[3], a[4]))
            }
            Ev::HcExit(d, v, nr, ret) => (Id::hypercall_exit, xen::hypercall_exit(s, d, v, nr, ret)),
            Ev::PageFault(d, v, addr, rip, ec) => (Id::page_fault, xen::page_fault(s, d, v, addr, rip, ec)),
            Ev::Interrupt(vec, d) => (Id::interrupt, xen::interrupt(s, vec, d)),
            Ev::Runstate(d, v, o, n) => (Id::runstate_change, xen::runstate_change(s, d, v, o, n)),
            Ev::Switch((pd, pv), ps, (nd, nv), ns) => (Id::sched_switch, xen::sched_switch(s, pd, pv, ps, nd, nv, ns)),
            Ev::Wake(d, v) => (Id::vcpu_wake, xen::vcpu_wake(s, d, v)),
            Ev::Block(d, v) => (Id::vcpu_block, xen::vcpu_block(s, d, v)),
            Ev::Credit(d, v, c, p) => (Id::sched_credit, xen::sched_credit(s, d, v, c, p)),
            Ev::Yield(d, v) => (Id::vcpu_yield, xen::vcpu_yield(s, d, v)),
            Ev::GrantCopy(d, peer, len, off, n) => {
                let sample = &self.sample[off as usize..off as usize + n as usize];
                (Id::grant_copy, xen::grant_copy(s, d, peer, len, sample))
            }
            Ev::Console(d, line) => (Id::console_write, xen::console_write(s, d, CONSOLE_LINES[line as usize])),
            Ev::Sleep(d, v) => (Id::vcpu_sleep, xen::vcpu_sleep(s, d, v)),
            Ev::DomCreate(d, n, hvm) => (Id::domain_create, xen::domain_create(s, d, n, hvm)),
            Ev::DomDestroy(d, r) => (Id::domain_destroy, xen::domain_destroy(s, d, r)),
        }
    }

    // ---- state helpers -------------------------------------------------

    fn ids(&self, r: VRef) -> (u16, u32) {
        (self.doms[r.d].domid, r.v)
    }

    fn vc(&self, r: VRef) -> &Vcpu {
        &self.doms[r.d].vcpus[r.v as usize]
    }

    fn vc_mut(&mut self, r: VRef) -> &mut Vcpu {
        &mut self.doms[r.d].vcpus[r.v as usize]
    }

    fn push(&mut self, ev: Ev) {
        self.queue.push_back(ev);
    }

    fn set_state(&mut self, r: VRef, new: Runstate) {
        let (d, v) = self.ids(r);
        let old = std::mem::replace(&mut self.vc_mut(r).state, new);
        debug_assert_ne!(old, new);
        self.push(Ev::Runstate(d, v, old, new));
    }

    fn rip(&mut self) -> u64 {
        KTEXT + ((self.rng.below(1 << 23) as u64) & !0x3)
    }

    fn guest_ptr(&mut self) -> u64 {
        VMALLOC + ((self.rng.below(1 << 24) as u64) << 4)
    }

    /// Index in the runqueue of the best runnable vCPU (highest priority, FIFO among equals).
    fn best_runnable(&self) -> Option<(usize, CreditPrio)> {
        let mut best: Option<(usize, CreditPrio)> = None;
        for (i, &r) in self.runq.iter().enumerate() {
            let p = self.vc(r).prio;
            if best.is_none_or(|(_, bp)| p as i8 > bp as i8) {
                best = Some((i, p));
            }
        }
        best
    }

    /// Deschedules the current vCPU (`prev`, leaving in `prev_state`), or
    /// the idle vCPU (`None`), and runs the best runnable vCPU, or idle.
    fn switch_from(&mut self, prev: Option<VRef>, prev_state: Runstate) {
        let next = self.best_runnable().and_then(|(i, _)| self.runq.remove(i));
        debug_assert!(prev.is_some() || next.is_some(), "idle to idle");
        debug_assert!(next.is_some() || prev_state != Runstate::runnable, "a runnable vCPU left for idle");
        let prev_id = match prev {
            Some(p) => {
                self.set_state(p, prev_state);
                if prev_state == Runstate::runnable {
                    self.runq.push_back(p);
                }
                self.ids(p)
            }
            None => (DOMID_IDLE, self.cpu),
        };
        let prev_state = if prev.is_some() { prev_state } else { Runstate::runnable };
        match next {
            Some(n) => {
                self.set_state(n, Runstate::running);
                let next_id = self.ids(n);
                self.push(Ev::Switch(prev_id, prev_state, next_id, Runstate::runnable));
                self.current = Some(n);
                self.slice_left = self.rng.range(SLICE_MIN, SLICE_MAX);
                if let Some((nr, ret)) = self.vc_mut(n).resume.take() {
                    self.push(Ev::HcExit(next_id.0, next_id.1, nr, ret));
                }
                if self.doms[n.d].hvm {
                    self.push(Ev::VmEntry(next_id.0, next_id.1));
                }
            }
            None => {
                self.push(Ev::Switch(prev_id, prev_state, (DOMID_IDLE, self.cpu), Runstate::runnable));
                self.current = None;
            }
        }
    }

    /// Wakes a blocked or offline vCPU into the runqueue (blocked ones get BOOST).
    fn wake(&mut self, r: VRef) {
        let (d, v) = self.ids(r);
        self.push(Ev::Wake(d, v));
        let boost = self.vc(r).state == Runstate::blocked;
        self.set_state(r, Runstate::runnable);
        let vc = self.vc_mut(r);
        if boost && vc.prio == CreditPrio::under {
            vc.prio = CreditPrio::boost;
        }
        self.runq.push_back(r);
    }

    /// A random vCPU of domain slot `only` (or of any) in `state`.
    fn random_in_state(&mut self, only: Option<usize>, state: Runstate) -> Option<VRef> {
        let slots = match only {
            Some(d) => d..d + 1,
            None => 0..self.doms.len(),
        };
        let count = |s: &Self| -> usize {
            slots.clone().map(|d| s.doms[d].vcpus.iter().filter(|v| v.state == state).count()).sum()
        };
        let n = count(self);
        if n == 0 {
            return None;
        }
        let mut k = self.rng.below(n as u32) as usize;
        for d in slots.clone() {
            for (v, vc) in self.doms[d].vcpus.iter().enumerate() {
                if vc.state == state {
                    if k == 0 {
                        return Some(VRef { d, v: v as u32 });
                    }
                    k -= 1;
                }
            }
        }
        None
    }

    fn device_vector(d: usize) -> u8 {
        0x30 + ((d * 7) % 0x90) as u8
    }

    fn alloc_domid(&mut self) -> u16 {
        loop {
            let cand = self.next_domid;
            self.next_domid += self.pcpus;
            if self.next_domid >= DOMID_FIRST_RESERVED as u32 {
                self.next_domid = self.domid_base;
            }
            if cand < DOMID_FIRST_RESERVED as u32 && !self.doms.iter().any(|d| d.domid as u32 == cand) {
                return cand as u16;
            }
        }
    }

    /// Announces domain slot `d` (all vCPUs offline) and wakes its vCPU 0.
    fn build_domain(&mut self, d: usize) {
        let dom = &mut self.doms[d];
        for v in dom.vcpus.iter_mut() {
            *v = Vcpu::offline();
        }
        let ev = Ev::DomCreate(dom.domid, dom.vcpus.len() as u32, dom.hvm);
        self.push(ev);
        self.wake(VRef { d, v: 0 });
    }

    // ---- the scheduler -------------------------------------------------

    /// Queues the next batch of events (at least one).
    fn generate(&mut self) {
        match self.current {
            None => self.gen_idle(),
            Some(r) if self.slice_left == 0 => self.slice_end(r),
            Some(r) => {
                self.slice_left -= 1;
                if !self.doms[r.d].dom0 && self.rng.below(SHUTDOWN_ODDS) == 0 {
                    self.shutdown(r);
                } else {
                    self.gen_running(r);
                }
            }
        }
    }

    /// Idle: run a runnable vCPU, else take an interrupt that wakes a blocked one.
    fn gen_idle(&mut self) {
        if !self.runq.is_empty() {
            return self.switch_from(None, Runstate::runnable);
        }
        match self.random_in_state(None, Runstate::blocked) {
            Some(b) => {
                // Its device raised an interrupt, or its single-shot timer expired.
                let irq = if self.rng.chance(1, 2) {
                    Ev::Interrupt(Self::device_vector(b.d), self.doms[b.d].domid)
                } else {
                    Ev::Interrupt(TIMER_VECTOR, DOMID_XEN)
                };
                self.push(irq);
                self.wake(b);
            }
            None => self.push(Ev::Interrupt(TIMER_VECTOR, DOMID_XEN)),
        }
    }

    /// The timer ends the running vCPU's slice: burn credit, maybe preempt.
    fn slice_end(&mut self, r: VRef) {
        let (d, v) = self.ids(r);
        let hvm = self.doms[r.d].hvm;
        if hvm {
            let rip = self.rip();
            self.push(Ev::VmExit(d, v, VmxExitReason::EXTERNAL_INTERRUPT, rip, 0));
        }
        self.push(Ev::Interrupt(TIMER_VECTOR, DOMID_XEN));
        self.ticks += 1;
        if self.ticks % 3 == 0 {
            // Accounting period: share 300 credits among the active vCPUs.
            let active: usize = self
                .doms
                .iter()
                .map(|d| d.vcpus.iter().filter(|v| matches!(v.state, Runstate::running | Runstate::runnable)).count())
                .sum();
            let share = CREDIT_CAP / active.max(1) as i32;
            for vc in self.doms.iter_mut().flat_map(|d| d.vcpus.iter_mut()) {
                if matches!(vc.state, Runstate::running | Runstate::runnable) {
                    vc.credit = (vc.credit + share).min(CREDIT_CAP);
                    if vc.credit >= 0 && vc.prio == CreditPrio::over {
                        vc.prio = CreditPrio::under;
                    }
                }
            }
        }
        let vc = self.vc_mut(r);
        vc.credit -= CREDIT_TICK;
        vc.prio = if vc.credit < 0 { CreditPrio::over } else { CreditPrio::under };
        let (credit, prio) = (vc.credit, vc.prio);
        self.push(Ev::Credit(d, v, credit, prio));
        match self.best_runnable() {
            Some((_, p)) if p as i8 >= prio as i8 => self.switch_from(Some(r), Runstate::runnable),
            _ => {
                self.slice_left = self.rng.range(SLICE_MIN, SLICE_MAX);
                if hvm {
                    self.push(Ev::VmEntry(d, v));
                }
            }
        }
    }

    fn gen_running(&mut self, r: VRef) {
        let (d, v) = self.ids(r);
        let dom = &self.doms[r.d];
        let (hvm, dom0) = (dom.hvm, dom.dom0);
        let act = ACTS[self.rng.weighted(if hvm { &HVM_WEIGHTS } else { &PV_WEIGHTS })];
        let offline_sibling = match act {
            Act::VcpuUp if v == 0 => self.random_in_state(Some(r.d), Runstate::offline),
            _ => None,
        };
        match (act, offline_sibling) {
            (Act::VcpuUp, Some(k)) => {
                self.hypercall(r, Hypercall::vcpu_op, [VCPUOP_UP, k.v as u64, 0, 0, 0], 0, |s| s.wake(k));
            }
            (Act::VcpuDown, _) if v != 0 => {
                if hvm {
                    let rip = self.rip();
                    self.push(Ev::VmExit(d, v, VmxExitReason::VMCALL, rip, 0));
                }
                self.push(Ev::HcEntry(d, v, Hypercall::vcpu_op, [VCPUOP_DOWN, v as u64, 0, 0, 0]));
                self.vc_mut(r).resume = Some((Hypercall::vcpu_op, 0));
                self.push(Ev::Sleep(d, v));
                self.switch_from(Some(r), Runstate::offline);
            }
            (Act::Block, _) => {
                if hvm {
                    let rip = self.rip();
                    self.push(Ev::VmExit(d, v, VmxExitReason::HLT, rip, 0));
                } else {
                    self.push(Ev::HcEntry(d, v, Hypercall::sched_op, [SCHEDOP_BLOCK, 0, 0, 0, 0]));
                    self.vc_mut(r).resume = Some((Hypercall::sched_op, 0));
                }
                self.push(Ev::Block(d, v));
                self.switch_from(Some(r), Runstate::blocked);
            }
            (Act::Yield, _) => {
                if hvm {
                    let rip = self.rip();
                    self.push(Ev::VmExit(d, v, VmxExitReason::PAUSE_INSTRUCTION, rip, 0));
                } else {
                    self.push(Ev::HcEntry(d, v, Hypercall::sched_op, [SCHEDOP_YIELD, 0, 0, 0, 0]));
                }
                self.push(Ev::Yield(d, v));
                if self.runq.is_empty() {
                    self.resume_guest(r, Some((Hypercall::sched_op, 0)));
                } else {
                    if !hvm {
                        self.vc_mut(r).resume = Some((Hypercall::sched_op, 0));
                    }
                    self.switch_from(Some(r), Runstate::runnable);
                }
            }
            (Act::Irq, _) => {
                if hvm {
                    let rip = self.rip();
                    self.push(Ev::VmExit(d, v, VmxExitReason::EXTERNAL_INTERRUPT, rip, 0));
                }
                if self.device_irq(r) {
                    self.switch_from(Some(r), Runstate::runnable);
                } else if hvm {
                    self.push(Ev::VmEntry(d, v));
                }
            }
            (Act::Fault, _) => self.fault(r, hvm),
            (Act::Console, _) => {
                let line = self.rng.below(CONSOLE_LINES.len() as u32) as u8;
                let len = CONSOLE_LINES[line as usize].len() as u64;
                let ptr = self.guest_ptr();
                self.hypercall(r, Hypercall::console_io, [CONSOLEIO_WRITE, len, ptr, 0, 0], 0, |s| {
                    s.push(Ev::Console(d, line))
                });
            }
            (Act::Io, _) if dom0 => {
                // A backend (netback/blkback) copying guest data.
                let n = self.rng.range(1, 3);
                let ptr = self.guest_ptr();
                let peer = match self.doms.len() {
                    1 => DOMID_SELF,
                    len => {
                        let mut p = self.rng.below(len as u32 - 1) as usize;
                        if p >= r.d {
                            p += 1;
                        }
                        self.doms[p].domid
                    }
                };
                self.hypercall(r, Hypercall::grant_table_op, [GNTTABOP_COPY, ptr, n as u64, 0, 0], 0, |s| {
                    for _ in 0..n {
                        let len = [64, 1500, 4096][s.rng.below(3) as usize];
                        let n = s.rng.range(1, len.min(SAMPLE_LEN as u32));
                        let off = s.rng.below(SAMPLE_LEN as u32 - n + 1);
                        s.push(Ev::GrantCopy(d, peer, len, off as u16, n as u16));
                    }
                });
            }
            (Act::Io, _) => {
                // A frontend notifying its backend.
                let ptr = self.guest_ptr();
                self.hypercall(r, Hypercall::event_channel_op, [EVTCHNOP_SEND, ptr, 0, 0, 0], 0, |_| {});
            }
            (Act::Exit, _) if hvm => self.plain_exit(r),
            (Act::Hypercall | Act::VcpuUp | Act::VcpuDown | Act::Exit, _) => {
                let (nr, args, ret) = self.pick_hypercall(hvm, v);
                self.hypercall(r, nr, args, ret, |_| {});
            }
        }
    }

    /// Back to the guest without a switch: complete `hc` (if any), VM entry (HVM).
    fn resume_guest(&mut self, r: VRef, hc: Option<(Hypercall, i64)>) {
        let (d, v) = self.ids(r);
        let hvm = self.doms[r.d].hvm;
        if let Some((nr, ret)) = hc.filter(|_| !hvm) {
            self.push(Ev::HcExit(d, v, nr, ret));
        }
        if hvm {
            self.push(Ev::VmEntry(d, v));
        }
    }

    /// A hypercall that returns at once; `during` queues what Xen does inside it.
    fn hypercall(&mut self, r: VRef, nr: Hypercall, args: [u64; 5], ret: i64, during: impl FnOnce(&mut Self)) {
        let (d, v) = self.ids(r);
        let hvm = self.doms[r.d].hvm;
        if hvm {
            let rip = self.rip();
            self.push(Ev::VmExit(d, v, VmxExitReason::VMCALL, rip, 0));
        }
        self.push(Ev::HcEntry(d, v, nr, args));
        during(self);
        self.push(Ev::HcExit(d, v, nr, ret));
        if hvm {
            self.push(Ev::VmEntry(d, v));
        }
    }

    /// A device interrupt (or an IPI) arrives while `r` runs; returns whether
    /// a woken vCPU should preempt it.
    fn device_irq(&mut self, r: VRef) -> bool {
        if self.rng.chance(1, 4) {
            self.push(Ev::Interrupt(EVENT_CHECK_VECTOR, DOMID_XEN));
            return false;
        }
        let t = self.rng.below(self.doms.len() as u32) as usize;
        self.push(Ev::Interrupt(Self::device_vector(t), self.doms[t].domid));
        if !self.rng.chance(3, 4) {
            return false;
        }
        match self.random_in_state(Some(t), Runstate::blocked) {
            Some(b) => {
                self.wake(b);
                self.vc(b).prio as i8 > self.vc(r).prio as i8
            }
            None => false,
        }
    }

    fn fault(&mut self, r: VRef, hvm: bool) {
        let (d, v) = self.ids(r);
        if hvm {
            // EPT violation: bits 0-2 the access (read, write, fetch), 3-5 what the entry allowed.
            let gpa = ((self.rng.below(1 << 20) as u64) << 12) | (self.rng.below(1 << 12) as u64 & !7);
            let access = [1u64, 2, 4][self.rng.weighted(&[6, 3, 1])];
            let qual = access | ((self.rng.below(8) as u64) << 3) | 0x80;
            let rip = self.rip();
            self.push(Ev::VmExit(d, v, VmxExitReason::EPT_VIOLATION, rip, qual));
            self.push(Ev::PageFault(d, v, gpa, rip, qual as u32));
            self.push(Ev::VmEntry(d, v));
        } else {
            // #PF error code: P=1, W=2, U=4, I=16.
            let user = self.rng.chance(1, 2);
            let (addr, rip) = if user {
                let a = USER_BASE + ((self.rng.below(1 << 28) as u64) << 3);
                (a, USER_BASE + ((self.rng.below(1 << 20) as u64) << 2))
            } else {
                (DIRECT_MAP + ((self.rng.below(1 << 30) as u64) << 3), self.rip())
            };
            let ec = self.rng.below(4) | if user { 4 } else { 0 } | if self.rng.chance(1, 16) { 16 } else { 0 };
            self.push(Ev::PageFault(d, v, addr, rip, ec));
            if self.rng.chance(1, 3) {
                // The guest kernel then fixes the mapping.
                let pte = (((self.rng.below(1 << 24) as u64) << 12) | 0x67) & !(1 << 63);
                self.hypercall(r, Hypercall::update_va_mapping, [addr & !0xfff, pte, UVMF_INVLPG, 0, 0], 0, |_| {});
            }
        }
    }

    /// An HVM exit Xen emulates without a hypercall.
    fn plain_exit(&mut self, r: VRef) {
        use VmxExitReason as R;
        let (d, v) = self.ids(r);
        const REASONS: [(VmxExitReason, u32); 12] = [
            (R::IO_INSTRUCTION, 150),
            (R::CPUID, 80),
            (R::MSR_READ, 60),
            (R::MSR_WRITE, 60),
            (R::APIC_ACCESS, 50),
            (R::CR_ACCESS, 40),
            (R::EPT_MISCONFIG, 20),
            (R::EXCEPTION_NMI, 10),
            (R::RDTSC, 10),
            (R::INVLPG, 10),
            (R::XSETBV, 2),
            (R::WBINVD, 1),
        ];
        let mut w = [0u32; REASONS.len()];
        for (w, (_, x)) in w.iter_mut().zip(REASONS.iter()) {
            *w = *x;
        }
        let reason = REASONS[self.rng.weighted(&w)].0;
        let qual = match reason {
            // Port in bits 16-31, IN = bit 3, size - 1 in bits 0-2.
            R::IO_INSTRUCTION => {
                let port = [0x3f8u64, 0xcf8, 0xcfc, 0x70, 0x71, 0x1f0][self.rng.below(6) as usize];
                (port << 16) | ((self.rng.below(2) as u64) << 3) | [0u64, 1, 3][self.rng.below(3) as usize]
            }
            // CR number in bits 0-3, access type in 4-5, GPR in 8-11.
            R::CR_ACCESS => [0u64, 3, 4][self.rng.below(3) as usize] | ((self.rng.below(16) as u64) << 8),
            // APIC page offset in bits 0-11 (EOI, TPR, ICR), linear write = 1 << 12.
            R::APIC_ACCESS => [0xb0u64, 0x80, 0x300][self.rng.below(3) as usize] | (1 << 12),
            R::INVLPG => DIRECT_MAP + ((self.rng.below(1 << 20) as u64) << 12),
            _ => 0,
        };
        let rip = self.rip();
        self.push(Ev::VmExit(d, v, reason, rip, qual));
        self.push(Ev::VmEntry(d, v));
    }

    /// A hypercall that returns at once, its arguments and result.
    fn pick_hypercall(&mut self, hvm: bool, vcpu: u32) -> (Hypercall, [u64; 5], i64) {
        use Hypercall as H;
        const PV: [(Hypercall, u32); 14] = [
            (H::mmu_update, 12),
            (H::update_va_mapping, 10),
            (H::event_channel_op, 14),
            (H::set_timer_op, 8),
            (H::mmuext_op, 6),
            (H::multicall, 6),
            (H::grant_table_op, 6),
            (H::set_segment_base, 6),
            (H::memory_op, 4),
            (H::physdev_op, 4),
            (H::vcpu_op, 4),
            (H::fpu_taskswitch, 3),
            (H::stack_switch, 3),
            (H::xen_version, 2),
        ];
        const HVM: [(Hypercall, u32); 7] = [
            (H::event_channel_op, 25),
            (H::hvm_op, 20),
            (H::grant_table_op, 10),
            (H::vcpu_op, 10),
            (H::memory_op, 8),
            (H::xen_version, 5),
            (H::physdev_op, 4),
        ];
        let nr = if hvm {
            let w = HVM.map(|(_, w)| w);
            HVM[self.rng.weighted(&w)].0
        } else {
            let w = PV.map(|(_, w)| w);
            PV[self.rng.weighted(&w)].0
        };
        let p = self.guest_ptr();
        let mut ret = 0;
        let args = match nr {
            H::mmu_update => [p, self.rng.range(1, 16) as u64, 0, DOMID_SELF as u64, 0],
            H::update_va_mapping => {
                let va = USER_BASE + ((self.rng.below(1 << 24) as u64) << 12);
                [va, ((self.rng.below(1 << 24) as u64) << 12) | 0x67, UVMF_INVLPG, 0, 0]
            }
            H::event_channel_op => [EVTCHNOP_SEND, p, 0, 0, 0],
            H::set_timer_op => [1_000_000 + self.rng.below(10_000_000) as u64, 0, 0, 0, 0],
            H::mmuext_op => [p, self.rng.range(1, 8) as u64, 0, DOMID_SELF as u64, 0],
            H::multicall => [p, self.rng.range(2, 8) as u64, 0, 0, 0],
            H::grant_table_op => {
                let op = if self.rng.chance(1, 2) { GNTTABOP_MAP_GRANT_REF } else { GNTTABOP_UNMAP_GRANT_REF };
                [op, p, self.rng.range(1, 32) as u64, 0, 0]
            }
            H::set_segment_base => [SEGBASE_GS_USER_SEL, 0, 0, 0, 0],
            H::memory_op => {
                let n = self.rng.range(1, 64);
                ret = n as i64;
                let op = if self.rng.chance(1, 2) { XENMEM_DECREASE_RESERVATION } else { XENMEM_POPULATE_PHYSMAP };
                if op == XENMEM_POPULATE_PHYSMAP && self.rng.chance(1, 16) {
                    ret = -ENOMEM;
                }
                [op, p, 0, 0, 0]
            }
            H::physdev_op => [PHYSDEVOP_EOI, p, 0, 0, 0],
            H::vcpu_op => [VCPUOP_SET_SINGLESHOT_TIMER, vcpu as u64, p, 0, 0],
            H::fpu_taskswitch => [1, 0, 0, 0, 0],
            H::stack_switch => [0xe02b, KTEXT + 0x0100_0000 + ((self.rng.below(1 << 16) as u64) << 4), 0, 0, 0],
            H::xen_version => {
                ret = XEN_VERSION;
                [XENVER_VERSION, 0, 0, 0, 0]
            }
            H::hvm_op => {
                let op = if self.rng.chance(1, 3) { HVMOP_SET_PARAM } else { HVMOP_GET_PARAM };
                [op, p, 0, 0, 0]
            }
            _ => [0; 5],
        };
        if ret == 0 && self.rng.chance(1, 64) {
            ret = -[EINVAL, EAGAIN, EFAULT][self.rng.below(3) as usize];
        }
        (nr, args, ret)
    }

    /// The running domU vCPU `r` shuts its domain down; the toolstack
    /// destroys it and builds a new one (new domid) in its place.
    fn shutdown(&mut self, r: VRef) {
        let (d, v) = self.ids(r);
        let reason =
            [ShutdownReason::reboot, ShutdownReason::poweroff, ShutdownReason::crash][self.rng.weighted(&[8, 1, 1])];
        if self.doms[r.d].hvm {
            let rip = self.rip();
            self.push(Ev::VmExit(d, v, VmxExitReason::VMCALL, rip, 0));
        }
        let p = self.guest_ptr();
        self.push(Ev::HcEntry(d, v, Hypercall::sched_op, [SCHEDOP_SHUTDOWN, p, 0, 0, 0]));
        for k in 0..self.doms[r.d].vcpus.len() as u32 {
            let kr = VRef { d: r.d, v: k };
            let state = self.vc(kr).state;
            if k == v || state == Runstate::offline {
                continue;
            }
            self.push(Ev::Sleep(d, k));
            if state == Runstate::runnable {
                self.runq.retain(|&q| q != kr);
            }
            self.set_state(kr, Runstate::offline);
        }
        self.push(Ev::Sleep(d, v));
        self.switch_from(Some(r), Runstate::offline);
        self.push(Ev::DomDestroy(d, reason));
        let domid = self.alloc_domid();
        self.doms[r.d].domid = domid;
        self.build_domain(r.d);
    }
}
