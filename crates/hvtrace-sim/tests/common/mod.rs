//! Shared by the simulation's tests: sinks, a decoder to owned values, and
//! a checker of the scheduling invariants over the traces of all pCPUs.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

use hvtrace_core::decode::{Record, Value};
use hvtrace_core::{Encoder, EventSet, RecordError, Sink};
use hvtrace_sim::xen::{self, Id};
use hvtrace_sim::{Hypercall, DOMID_IDLE, DOMID_SELF, DOMID_XEN, EVENT_COUNT};

/// A decoded field, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum V {
    U(u64),
    I(i64),
    E(i64),
    S(String),
    B(Vec<u8>),
}

impl V {
    pub fn u(&self) -> u64 {
        match *self {
            V::U(x) => x,
            V::E(x) | V::I(x) => x as u64,
            _ => panic!("not an integer: {self:?}"),
        }
    }
    pub fn i(&self) -> i64 {
        match *self {
            V::I(x) | V::E(x) => x,
            V::U(x) => x as i64,
            _ => panic!("not an integer: {self:?}"),
        }
    }
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq)]
pub struct Ev {
    pub id: u32,
    pub f: Vec<V>,
}

/// Decodes a payload of event `id` into owned values, checking it is used exactly.
pub fn decode(id: u32, payload: &[u8]) -> Ev {
    let schema = xen::Events::EVENTS;
    let rec = Record { offset: 0, id, timestamp: 0, compact: true, payload };
    let f: Vec<V> = rec
        .values(schema)
        .map(|v| match v {
            Value::U(x) => V::U(x),
            Value::I(x) => V::I(x),
            Value::Enum(x) => V::E(x),
            Value::Str(s) => V::S(String::from_utf8(s.to_vec()).expect("utf-8")),
            Value::Bytes(b) => V::B(b.to_vec()),
            Value::F(_) => panic!("no float fields"),
        })
        .collect();
    assert_eq!(f.len(), schema[id as usize].fields.len(), "event {id}: payload too short");
    Ev { id, f }
}

/// Keeps every record's id and payload bytes.
#[derive(Default)]
pub struct CaptureSink {
    pub records: RefCell<Vec<(u32, Vec<u8>)>>,
}

impl Sink for CaptureSink {
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        let mut buf = vec![0u8; len];
        let mut e = Encoder::new(&mut buf);
        fill(&mut e);
        assert_eq!(e.written(), len, "event {id}: encoder wrote other than the declared length");
        self.records.borrow_mut().push((id, buf));
        Ok(())
    }
}

impl CaptureSink {
    pub fn events(&self) -> Vec<Ev> {
        self.records.borrow().iter().map(|(id, p)| decode(*id, p)).collect()
    }
}

/// Counts records by id; refuses every `refuse_every`-th one with `refuse_with`.
pub struct CountingSink {
    pub calls: Cell<u64>,
    pub accepted: Cell<u64>,
    pub by_id: RefCell<[u64; EVENT_COUNT]>,
    pub refuse_every: u64,
    pub refuse_with: RecordError,
}

impl CountingSink {
    pub fn new() -> Self {
        Self::refusing(0, RecordError::Full)
    }
    pub fn refusing(every: u64, with: RecordError) -> Self {
        CountingSink {
            calls: Cell::new(0),
            accepted: Cell::new(0),
            by_id: RefCell::new([0; EVENT_COUNT]),
            refuse_every: every,
            refuse_with: with,
        }
    }
}

impl Sink for CountingSink {
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        let n = self.calls.get() + 1;
        self.calls.set(n);
        self.by_id.borrow_mut()[id as usize] += 1;
        if self.refuse_every != 0 && n % self.refuse_every == 0 {
            return Err(self.refuse_with);
        }
        let mut buf = [0u8; 2048];
        fill(&mut Encoder::new(&mut buf[..len]));
        self.accepted.set(self.accepted.get() + 1);
        Ok(())
    }
}

/// A thread-safe counter sink for the timed runs.
#[derive(Default)]
pub struct AtomicCountingSink(pub std::sync::atomic::AtomicU64);

impl Sink for AtomicCountingSink {
    fn record<F: FnOnce(&mut Encoder<'_>)>(&self, _id: u32, len: usize, fill: F) -> Result<(), RecordError> {
        let mut buf = [0u8; 2048];
        fill(&mut Encoder::new(&mut buf[..len]));
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

const RUNNING: i64 = 0;
const RUNNABLE: i64 = 1;
const BLOCKED: i64 = 2;
const OFFLINE: i64 = 3;

type Vc = (u16, u32);

/// What the checker saw.
#[derive(Default, Debug)]
pub struct Report {
    pub events: u64,
    pub by_id: [u64; EVENT_COUNT],
    pub switches: u64,
    pub hypercall_pairs: u64,
    /// Hypercalls still open when the trace ended (a vCPU descheduled inside one).
    pub open_at_end: u64,
    /// Hypercalls that never returned because their domain was destroyed.
    pub died_inside: u64,
    pub vm_exits: u64,
    pub destroyed: u64,
    /// wake / sleep / block events whose runstate change the trace cut off.
    pub announced_at_end: u64,
}

#[derive(Default)]
struct Global {
    /// Per live domain: hvm, vCPU count.
    live: HashMap<u16, (bool, u32)>,
    ever: HashSet<u16>,
    state: HashMap<Vc, i64>,
    owner: HashMap<Vc, usize>,
    in_guest: HashMap<Vc, bool>,
    open_hc: HashMap<Vc, i64>,
    /// vCPUs announced by vcpu_wake / vcpu_sleep / vcpu_block whose runstate_change is due.
    woken: HashSet<Vc>,
    sleeping: HashSet<Vc>,
    blocking: HashSet<Vc>,
}

/// Checks the traces of all pCPUs of one host (`traces[cpu]`, in emission order).
pub fn check(traces: &[Vec<Ev>]) -> Report {
    let mut g = Global::default();
    let mut rep = Report::default();
    for (cpu, trace) in traces.iter().enumerate() {
        let idle: Vc = (DOMID_IDLE, cpu as u32);
        let mut cur = idle;
        for (i, e) in trace.iter().enumerate() {
            let ctx = || format!("cpu {cpu} event #{i}: {:?} {:?}", xen::Events::EVENTS[e.id as usize].name, e.f);
            rep.events += 1;
            rep.by_id[e.id as usize] += 1;
            let vc = |k: usize| -> Vc { (e.f[k].u() as u16, e.f[k + 1].u() as u32) };
            // Every vCPU-attributed event names a live domain's vCPU, owned by this pCPU only.
            let touch = |g: &mut Global, v: Vc| {
                let (_, n) = *g.live.get(&v.0).unwrap_or_else(|| panic!("domain {} not live: {}", v.0, ctx()));
                assert!(v.1 < n, "vCPU out of range: {}", ctx());
                let o = *g.owner.entry(v).or_insert(cpu);
                assert_eq!(o, cpu, "vCPU {v:?} seen on two pCPUs: {}", ctx());
            };
            let is_current = |v: Vc| assert_eq!(v, cur, "event of a vCPU that is not running: {}", ctx());
            let id = e.id;
            if id == Id::domain_create as u32 {
                let (d, n, hvm) = (e.f[0].u() as u16, e.f[1].u() as u32, e.f[2].u() == 1);
                assert!(g.ever.insert(d), "domid reused: {}", ctx());
                assert!(n > 0 && d < DOMID_SELF);
                g.live.insert(d, (hvm, n));
                for v in 0..n {
                    g.state.insert((d, v), OFFLINE);
                    g.in_guest.insert((d, v), false);
                    g.owner.insert((d, v), cpu);
                }
            } else if id == Id::domain_destroy as u32 {
                let d = e.f[0].u() as u16;
                let (_, n) = g.live.remove(&d).unwrap_or_else(|| panic!("destroying a dead domain: {}", ctx()));
                assert_ne!(cur.0, d, "destroying the running domain: {}", ctx());
                for v in 0..n {
                    assert_eq!(g.state[&(d, v)], OFFLINE, "destroyed with vCPU {v} not offline: {}", ctx());
                    if g.open_hc.remove(&(d, v)).is_some() {
                        rep.died_inside += 1;
                    }
                }
                rep.destroyed += 1;
            } else if id == Id::sched_switch as u32 {
                rep.switches += 1;
                let (prev, ps, next, ns) = (vc(0), e.f[2].i(), vc(3), e.f[5].i());
                assert_eq!(prev, cur, "switch's prev is not the running vCPU: {}", ctx());
                assert_ne!(prev, next, "switch to itself: {}", ctx());
                assert_eq!(ns, RUNNABLE, "{}", ctx());
                if prev != idle {
                    touch(&mut g, prev);
                    assert_ne!(ps, RUNNING, "{}", ctx());
                    assert_eq!(g.state[&prev], ps, "prev_state disagrees with runstate_change: {}", ctx());
                    assert!(!g.in_guest[&prev], "switched out in guest mode: {}", ctx());
                } else {
                    assert_eq!(ps, RUNNABLE);
                }
                if next != idle {
                    touch(&mut g, next);
                    assert_eq!(g.state[&next], RUNNING, "next is not running: {}", ctx());
                } else {
                    assert_eq!(next.1, cpu as u32, "another pCPU's idle vCPU: {}", ctx());
                }
                cur = next;
            } else if id == Id::runstate_change as u32 {
                let (v, old, new) = (vc(0), e.f[2].i(), e.f[3].i());
                touch(&mut g, v);
                assert_eq!(g.state[&v], old, "old runstate disagrees: {}", ctx());
                assert_ne!(old, new, "{}", ctx());
                match (old, new) {
                    (RUNNING, _) => is_current(v),
                    (_, RUNNING) => assert_eq!(old, RUNNABLE, "{}", ctx()),
                    (RUNNABLE, OFFLINE) | (BLOCKED, OFFLINE) | (BLOCKED, RUNNABLE) | (OFFLINE, RUNNABLE) => {}
                    _ => panic!("impossible transition: {}", ctx()),
                }
                let announced = match (old, new) {
                    (_, OFFLINE) => g.sleeping.remove(&v),
                    (_, BLOCKED) => g.blocking.remove(&v),
                    (BLOCKED | OFFLINE, RUNNABLE) => g.woken.remove(&v),
                    _ => true,
                };
                assert!(announced, "runstate change without its vcpu_wake/sleep/block: {}", ctx());
                g.state.insert(v, new);
            } else if id == Id::vcpu_wake as u32 {
                let v = vc(0);
                touch(&mut g, v);
                assert!(matches!(g.state[&v], BLOCKED | OFFLINE), "waking a vCPU that is awake: {}", ctx());
                assert!(g.woken.insert(v), "{}", ctx());
            } else if id == Id::vcpu_sleep as u32 {
                touch(&mut g, vc(0));
                assert_ne!(g.state[&vc(0)], OFFLINE, "{}", ctx());
                assert!(g.sleeping.insert(vc(0)), "{}", ctx());
            } else if id == Id::vcpu_block as u32 || id == Id::vcpu_yield as u32 || id == Id::sched_credit as u32 {
                touch(&mut g, vc(0));
                is_current(vc(0));
                if id == Id::vcpu_block as u32 {
                    assert!(g.blocking.insert(vc(0)), "{}", ctx());
                }
            } else if id == Id::vm_exit as u32 || id == Id::vm_entry as u32 {
                let v = vc(0);
                touch(&mut g, v);
                is_current(v);
                assert!(g.live[&v.0].0, "VM exit/entry of a PV domain: {}", ctx());
                let exit = id == Id::vm_exit as u32;
                assert_eq!(g.in_guest[&v], exit, "VM exit/entry out of order: {}", ctx());
                assert!(!g.open_hc.contains_key(&v), "VM exit/entry inside a hypercall: {}", ctx());
                g.in_guest.insert(v, !exit);
                rep.vm_exits += exit as u64;
            } else if id == Id::hypercall_entry as u32 {
                let v = vc(0);
                touch(&mut g, v);
                is_current(v);
                assert!(!g.in_guest[&v], "hypercall in guest mode (no VMCALL exit): {}", ctx());
                assert!(g.open_hc.insert(v, e.f[2].i()).is_none(), "nested hypercall: {}", ctx());
            } else if id == Id::hypercall_exit as u32 {
                let v = vc(0);
                touch(&mut g, v);
                is_current(v);
                let nr = g.open_hc.remove(&v).unwrap_or_else(|| panic!("exit without entry: {}", ctx()));
                assert_eq!(nr, e.f[2].i(), "exit of another hypercall: {}", ctx());
                rep.hypercall_pairs += 1;
            } else if id == Id::page_fault as u32 {
                touch(&mut g, vc(0));
                is_current(vc(0));
            } else if id == Id::interrupt as u32 {
                let d = e.f[1].u() as u16;
                assert!(d == DOMID_XEN || g.live.contains_key(&d), "interrupt for a dead domain: {}", ctx());
            } else if id == Id::grant_copy as u32 {
                let d = e.f[0].u() as u16;
                assert!(g.live.contains_key(&d), "{}", ctx());
                is_current((d, cur.1));
                assert!(
                    g.open_hc.get(&cur) == Some(&(Hypercall::grant_table_op as i64)),
                    "grant copy outside grant_table_op: {}",
                    ctx()
                );
                match &e.f[3] {
                    V::B(b) => assert!(!b.is_empty() && b.len() as u64 <= e.f[2].u()),
                    other => panic!("{other:?}"),
                }
            } else if id == Id::console_write as u32 {
                let d = e.f[0].u() as u16;
                assert_eq!(d, cur.0, "{}", ctx());
                assert_eq!(
                    g.open_hc.get(&cur),
                    Some(&(Hypercall::console_io as i64)),
                    "console write outside console_io: {}",
                    ctx()
                );
                assert!(matches!(&e.f[1], V::S(s) if !s.is_empty()));
            } else {
                panic!("unknown event {id}");
            }
        }
    }
    rep.open_at_end = g.open_hc.len() as u64;
    rep.announced_at_end = (g.woken.len() + g.sleeping.len() + g.blocking.len()) as u64;
    rep
}
