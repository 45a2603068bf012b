//! Writes xentrace files of known content, for tests and benchmarks.
//!
//! [`Scenario::generate`] simulates a host the way Xen traces it: per pCPU
//! a byte ring of records (a `TRC_TRACE_WRAP_BUFFER` filler where a record
//! would not fit before the ring's end, `TRC_LOST_RECORDS` where records
//! were dropped), read out by xentrace in windows of varying size, the
//! windows of all pCPUs interleaved in the file. vCPUs of several domains
//! move between pCPUs round by round; HVM vCPUs take VM exits of the common
//! reasons, each followed by its handler record, PV vCPUs make hypercalls.
//! Every record written is listed in [`Generated::records`] with the field
//! values it carries, so a test can compare an import field by field.

use crate::abi::*;
use crate::ClassId;

/// Xen's idle domain: pCPU `n` runs its vCPU `n` when nothing else runs.
const DOMID_IDLE: u16 = hvtrace_sim::DOMID_IDLE;

/// One record the generator wrote, as the importer must render it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// pCPU.
    pub cpu: u32,
    /// Timestamp (TSC; inherited for records without one).
    pub ts: u64,
    /// The class it must become.
    pub class: ClassId,
    /// Field values by name (enumerations by value).
    pub fields: Vec<(&'static str, u64)>,
}

/// A VM exit the generator made: who, why, and how long it lasted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Domain.
    pub domid: u16,
    /// vCPU.
    pub vcpu: u16,
    /// VMX basic exit reason.
    pub reason: u32,
    /// TSC cycles from the exit to the next VM entry.
    pub cycles: u64,
}

/// What [`Scenario::generate`] wrote.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    /// The xentrace file.
    pub bytes: Vec<u8>,
    /// Every record that must be imported, per pCPU in file order.
    pub records: Vec<Expected>,
    /// Records lost, per pCPU (the sum of its `TRC_LOST_RECORDS` counts).
    pub lost: Vec<u64>,
    /// Wrap fillers written.
    pub wrap_fillers: u64,
    /// Windows that hold a wrap filler with records after it.
    pub windows_across_wrap: u64,
    /// Windows written.
    pub windows: u64,
    /// Every VM exit, in the order written.
    pub exits: Vec<Exit>,
    /// Bytes of the last record cut off the end (0: the file is whole).
    pub cut: usize,
}

/// The shape of a generated host.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Physical CPUs.
    pub pcpus: u32,
    /// Domains (domid 1, 2, ...): odd domids are HVM, even ones PV.
    pub domains: u16,
    /// vCPUs per domain; `domains * vcpus` must be at least `pcpus`.
    pub vcpus: u16,
    /// Scheduling rounds (each runs one vCPU per pCPU).
    pub rounds: u32,
    /// VM exits or hypercalls per vCPU run.
    pub actions: u32,
    /// Bytes of each pCPU's ring (wraps happen every this many bytes).
    pub ring_bytes: usize,
    /// Put a `TRC_LOST_RECORDS` of this many records on pCPU 0 mid-file (0: none).
    pub lost: u32,
    /// End the file with a record cut short by this many bytes (1-19; 0: none).
    pub cut: usize,
    /// Seed of the choices.
    pub seed: u64,
    /// List every record in [`Generated::records`] and [`Generated::exits`]
    /// (off for benchmark files of millions of records).
    pub expect: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            pcpus: 3,
            domains: 4,
            vcpus: 2,
            rounds: 40,
            actions: 6,
            ring_bytes: 2048,
            lost: 17,
            cut: 0,
            seed: 1,
            expect: true,
        }
    }
}

/// The common VMX exit reasons, each with its handler record.
const EXITS: &[u32] = &[1, 7, 10, 12, 18, 28, 30, 31, 32, 48, 40];
/// TSC of the first record.
const TSC_BASE: u64 = 1_000_000_000_000;
/// Cycles per scheduling round (12.5 ms at 2.4 GHz).
const ROUND: u64 = 30_000_000;
/// Every this many rounds the host idles long enough that the next
/// record's timestamp no longer fits a compact CTF header.
const IDLE_EVERY: u32 = 7;
const IDLE: u64 = 1 << 28;

/// SplitMix64: a small deterministic source of choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Appends one record to `out`.
pub fn put_record(out: &mut Vec<u8>, event: u32, tsc: Option<u64>, words: &[u32]) {
    let words = &words[..words.len().min(TRC_MAX_WORDS)];
    out.extend_from_slice(&header(event, words.len(), tsc.is_some()).to_le_bytes());
    if let Some(t) = tsc {
        out.extend_from_slice(&(t as u32).to_le_bytes());
        out.extend_from_slice(&((t >> 32) as u32).to_le_bytes());
    }
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

/// Appends a CPU-change record opening a window of `bytes` bytes for `cpu`.
pub fn put_window(out: &mut Vec<u8>, cpu: i32, bytes: u32) {
    out.extend_from_slice(&CPU_CHANGE_HEADER.to_le_bytes());
    out.extend_from_slice(&cpu.to_le_bytes());
    out.extend_from_slice(&bytes.to_le_bytes());
}

/// A wrap filler of exactly `len` bytes (4 to 36, a multiple of 4): the
/// cycles flag is set to reach sizes above 32, as Xen does, with the TSC
/// `tsc` (xenalyze orders by it; the data words are garbage).
pub fn put_wrap_filler(out: &mut Vec<u8>, len: usize, tsc: u64) {
    let cycles = len > 32;
    let words = (len - 4 - if cycles { 8 } else { 0 }) / 4;
    let garbage = [0xdead_beef_u32; TRC_MAX_WORDS];
    put_record(out, TRC_TRACE_WRAP_BUFFER, cycles.then_some(tsc), &garbage[..words]);
}

/// One pCPU's ring: records in write order, fillers where it wrapped, and
/// where each record starts (window cuts fall between records).
#[derive(Default)]
struct PcpuRing {
    bytes: Vec<u8>,
    /// Offsets in `bytes` where a record starts, whether it is a filler,
    /// and the pCPU's TSC when it was written.
    starts: Vec<(usize, bool, u64)>,
    /// Write position within the ring.
    pos: usize,
    ts: u64,
}

/// Per-run state of the generator.
struct Gen<'s> {
    sc: &'s Scenario,
    rings: Vec<PcpuRing>,
    out: Generated,
}

/// `fields` with the running vCPU first: the importer names it in HVM and
/// PV records, which do not.
fn current(who: (u16, u16), mut fields: Vec<(&'static str, u64)>) -> Vec<(&'static str, u64)> {
    fields.splice(0..0, [("domid", who.0 as u64), ("vcpu", who.1 as u64)]);
    fields
}

fn lo(v: u64) -> u32 {
    v as u32
}
fn hi(v: u64) -> u32 {
    (v >> 32) as u32
}

impl Gen<'_> {
    /// Writes a record on `cpu`, as Xen's ring does (a filler first if it
    /// does not fit before the ring's end), and lists what it must become.
    fn rec(
        &mut self,
        cpu: u32,
        event: u32,
        tsc: Option<u64>,
        words: &[u32],
        class: ClassId,
        fields: Vec<(&'static str, u64)>,
    ) {
        let ring_bytes = self.sc.ring_bytes;
        let r = &mut self.rings[cpu as usize];
        let len = 4 + if tsc.is_some() { 8 } else { 0 } + 4 * words.len();
        let room = ring_bytes - r.pos;
        if room < len {
            r.starts.push((r.bytes.len(), true, r.ts));
            put_wrap_filler(&mut r.bytes, room, r.ts);
            self.out.wrap_fillers += 1;
            r.pos = 0;
        }
        if let Some(t) = tsc {
            r.ts = t;
        }
        r.starts.push((r.bytes.len(), false, r.ts));
        put_record(&mut r.bytes, event, tsc, words);
        r.pos = (r.pos + len) % ring_bytes;
        if self.sc.expect {
            self.out.records.push(Expected { cpu, ts: r.ts, class, fields });
        }
    }

    fn runstate(&mut self, cpu: u32, t: u64, (d, v): (u16, u16), old: u32, new: u32) {
        let f = vec![("vcpu", v as u64), ("domid", d as u64), ("old", old as u64), ("new", new as u64)];
        let word = v as u32 | (d as u32) << 16;
        self.rec(cpu, runstate_change(old, new), Some(t), &[word], ClassId::runstate_change, f);
    }

    fn two(&mut self, cpu: u32, t: u64, event: u32, class: ClassId, (d, v): (u16, u16)) {
        self.rec(cpu, event, Some(t), &[d as u32, v as u32], class, vec![("domid", d as u64), ("vcpu", v as u64)]);
    }

    /// The pCPU switches from `prev` (leaving for runstate `new`) to `next`,
    /// with the records and in the order of Xen's `sched_switch_units` and
    /// `schedule`: the idle vCPU has runstates too.
    fn switch(&mut self, cpu: u32, t: u64, prev: (u16, u16), new: u32, next: (u16, u16), rng: &mut Rng) {
        let runtime = 1000 + rng.below(1 << 24) as u32;
        let f = vec![("domid", prev.0 as u64), ("vcpu", prev.1 as u64), ("runtime", runtime as u64)];
        let w = [prev.0 as u32, prev.1 as u32, runtime];
        self.rec(cpu, TRC_SCHED_SWITCH_INFPREV, Some(t), &w, ClassId::sched_switch_infprev, f);
        let waited = 1000 + rng.below(100_000) as u32;
        let f = vec![
            ("domid", next.0 as u64),
            ("vcpu", next.1 as u64),
            ("waited", waited as u64),
            ("next_time", 30_000_000),
        ];
        let w = [next.0 as u32, next.1 as u32, waited, 30_000_000];
        self.rec(cpu, TRC_SCHED_SWITCH_INFNEXT, Some(t), &w, ClassId::sched_switch_infnext, f);
        self.runstate(cpu, t, prev, 0, new);
        self.runstate(cpu, t, next, 1, 0);
        let w = [prev.0 as u32, prev.1 as u32, next.0 as u32, next.1 as u32];
        let f = vec![
            ("prev_domid", w[0] as u64),
            ("prev_vcpu", w[1] as u64),
            ("next_domid", w[2] as u64),
            ("next_vcpu", w[3] as u64),
        ];
        self.rec(cpu, TRC_SCHED_SWITCH, Some(t), &w, ClassId::sched_switch, f);
    }

    /// A VM exit of `reason` with its handler record, then the VM entry.
    fn exit(&mut self, cpu: u32, t: &mut u64, who: (u16, u16), reason: u32, rng: &mut Rng) {
        let rip = 0xffff_ffff_8100_0000 + rng.below(1 << 20);
        // Domain 1 runs a 32-bit guest: its exits take the 32-bit form.
        if who.0 == 1 {
            let f = vec![("exit_reason", reason as u64), ("eip", rip & 0xffff_ffff)];
            self.rec(cpu, TRC_HVM_VMEXIT, Some(*t), &[reason, lo(rip)], ClassId::vmx_exit, current(who, f));
        } else {
            let f = vec![("exit_reason", reason as u64), ("rip", rip)];
            self.rec(
                cpu,
                with_64(TRC_HVM_VMEXIT),
                Some(*t),
                &[reason, lo(rip), hi(rip)],
                ClassId::vmx_exit64,
                current(who, f),
            );
        }
        let x = rng.next();
        // Handler records carry no TSC (HVMTRACE_ND with cycles = 0).
        let (event, words, class, fields): (u32, Vec<u32>, ClassId, Vec<(&'static str, u64)>) = match reason {
            1 => {
                let vec = 0x20 + (x % 0xd0) as u32;
                (TRC_HVM_INTR, vec![vec], ClassId::hvm_intr, vec![("vector", vec as u64)])
            }
            7 => (
                TRC_HVM_INTR_WINDOW,
                vec![0xf3, 1, 0],
                ClassId::hvm_intr_window,
                vec![("vector", 0xf3), ("source", 1), ("intr", 0)],
            ),
            10 => {
                let leaf = (x % 0x20) as u32;
                let r = [leaf, 0x0a0f_1234, 0x0800, 0x7ffa_fbff, 0xbfeb_fbff];
                let f = vec![
                    ("input", leaf as u64),
                    ("eax", r[1] as u64),
                    ("ebx", r[2] as u64),
                    ("ecx", r[3] as u64),
                    ("edx", r[4] as u64),
                ];
                (TRC_HVM_CPUID, r.to_vec(), ClassId::hvm_cpuid, f)
            }
            12 => (TRC_HVM_HLT, vec![0], ClassId::hvm_hlt, vec![("intr_pending", 0)]),
            18 => {
                let eax = (x % 40) as u32;
                (TRC_HVM_VMMCALL, vec![eax], ClassId::hvm_vmmcall, vec![("eax", eax as u64)])
            }
            28 => {
                let v = 0x8005_0033 | (x & 0x1_0000_0000);
                (
                    with_64(TRC_HVM_CR_WRITE),
                    vec![0, lo(v), hi(v)],
                    ClassId::hvm_cr_write64,
                    vec![("cr", 0), ("value", v)],
                )
            }
            30 => {
                let port = [0x70u32, 0x71, 0x3f8, 0xcf8, 0xcfc][(x % 5) as usize];
                let data = (x >> 8) as u32 & 0xff;
                if x & 1 == 0 {
                    (
                        TRC_HVM_IOPORT_READ,
                        vec![port, data],
                        ClassId::hvm_ioport_read,
                        vec![("port", port as u64), ("data", data as u64)],
                    )
                } else {
                    (
                        TRC_HVM_IOPORT_WRITE,
                        vec![port, data],
                        ClassId::hvm_ioport_write,
                        vec![("port", port as u64), ("data", data as u64)],
                    )
                }
            }
            31 | 32 => {
                let msr = [0x1bu32, 0x6e0, 0xc000_0080, 0x48][(x % 4) as usize];
                let v = x >> 3;
                let (ev, class) = if reason == 31 {
                    (TRC_HVM_MSR_READ, ClassId::hvm_msr_read)
                } else {
                    (TRC_HVM_MSR_WRITE, ClassId::hvm_msr_write)
                };
                (ev, vec![msr, lo(v), hi(v)], class, vec![("msr", msr as u64), ("value", v)])
            }
            48 => {
                let gpa = 0xfee0_0000 + (x % 0x1000) * 4;
                let mfn = x >> 40;
                let f = vec![("gpa", gpa), ("mfn", mfn), ("qualification", 0x181), ("p2mt", 4)];
                (TRC_HVM_NPF, vec![lo(gpa), hi(gpa), lo(mfn), hi(mfn), 0x181, 4], ClassId::hvm_npf, f)
            }
            // PAUSE: no handler record.
            _ => (0, vec![], ClassId::xen_raw, vec![]),
        };
        if event != 0 {
            self.rec(cpu, event, None, &words, class, current(who, fields));
        }
        let cycles = 2_000 + rng.below(60_000);
        *t += cycles;
        if self.sc.expect {
            self.out.exits.push(Exit { domid: who.0, vcpu: who.1, reason, cycles });
        }
        self.rec(cpu, TRC_HVM_VMENTRY, Some(*t), &[], ClassId::vmentry, current(who, vec![]));
    }

    /// A PV hypercall, arguments of mixed width; one in eight is a multicall entry.
    fn hypercall(&mut self, cpu: u32, t: u64, who: (u16, u16), rng: &mut Rng) {
        let op = [29u32, 32, 20, 24, 12, 1, 26][rng.below(7) as usize];
        let mut presence = 0u32;
        let mut words = vec![0];
        let mut args = [0u64; 6];
        // At most six data words in all: the op word and three arguments of up to two words.
        for (i, a) in args.iter_mut().enumerate().take(3) {
            match rng.below(3) {
                0 => {}
                1 => {
                    presence |= 1 << (2 * i);
                    *a = rng.below(1 << 32);
                    words.push(*a as u32);
                }
                _ => {
                    presence |= 2 << (2 * i);
                    *a = 0xffff_8880_0000_0000 | rng.below(1 << 30);
                    words.extend([lo(*a), hi(*a)]);
                }
            }
        }
        words[0] = op | presence << 20;
        let (event, class) = if rng.below(8) == 0 {
            (TRC_PV_HYPERCALL_SUBCALL, ClassId::pv_hypercall_subcall)
        } else {
            (TRC_PV_HYPERCALL_V2, ClassId::pv_hypercall)
        };
        let mut f = vec![("op", op as u64), ("args_present", presence as u64)];
        f.extend(["a0", "a1", "a2", "a3", "a4", "a5"].into_iter().zip(args));
        self.rec(cpu, event, Some(t), &words, class, current(who, f));
    }
}

impl Scenario {
    /// Writes the file.
    pub fn generate(&self) -> Generated {
        assert!(self.pcpus >= 1 && self.domains >= 1 && self.vcpus >= 1 && self.ring_bytes >= 64);
        let nv = self.domains as u32 * self.vcpus as u32;
        assert!(nv >= self.pcpus, "every pCPU runs a distinct vCPU each round");
        let mut rng = Rng(self.seed);
        let mut g = Gen {
            sc: self,
            rings: (0..self.pcpus).map(|_| PcpuRing::default()).collect(),
            out: Generated { lost: vec![0; self.pcpus as usize], ..Generated::default() },
        };
        let vcpu_of = |i: u32| ((i / self.vcpus as u32 + 1) as u16, (i % self.vcpus as u32) as u16);
        // State per vCPU: 0 running, 1 runnable, 2 blocked (RUNSTATE_*).
        let mut state = vec![1u32; nv as usize];
        let mut running: Vec<Option<u32>> = vec![None; self.pcpus as usize];
        let mut t0 = TSC_BASE;
        for d in 1..=self.domains {
            g.rec(0, TRC_SCHED_DOM_ADD, Some(t0), &[d as u32], ClassId::sched_dom_add, vec![("domid", d as u64)]);
        }
        for round in 0..self.rounds {
            t0 += ROUND + if round % IDLE_EVERY == IDLE_EVERY - 1 { IDLE } else { 0 };
            // vCPU `(p + round * 3) % nv` runs on pCPU p: distinct within a round, and it moves.
            for p in 0..self.pcpus {
                let t = t0 + p as u64 * 1000;
                if let Some(prev) = running[p as usize].take() {
                    // The running vCPU is descheduled: blocked once in five, else preempted.
                    let blocked = rng.below(5) == 0;
                    let new = if blocked { 2 } else { 1 };
                    if blocked {
                        g.two(p, t, TRC_SCHED_BLOCK, ClassId::sched_block, vcpu_of(prev));
                    }
                    g.switch(p, t, vcpu_of(prev), new, (DOMID_IDLE, p as u16), &mut rng);
                    state[prev as usize] = new;
                }
            }
            for p in 0..self.pcpus {
                let mut t = t0 + 100_000 + p as u64 * 1000;
                let next = (p + round * 3) % nv;
                let who = vcpu_of(next);
                if p == 0 && round == self.rounds / 2 && self.lost > 0 {
                    // Written by the vCPU current when the ring had room again: idle.
                    let first = t - 50_000;
                    let f = vec![
                        ("lost", self.lost as u64),
                        ("domid", DOMID_IDLE as u64),
                        ("vcpu", 0),
                        ("first_tsc", first),
                    ];
                    let words = [self.lost, DOMID_IDLE as u32, lo(first), hi(first)];
                    g.rec(p, TRC_LOST_RECORDS, Some(t), &words, ClassId::lost_records, f);
                    g.out.lost[0] += self.lost as u64;
                }
                if state[next as usize] == 2 {
                    g.two(p, t, TRC_SCHED_WAKE, ClassId::sched_wake, who);
                    g.runstate(p, t, who, 2, 1);
                }
                t += 500;
                g.switch(p, t, (DOMID_IDLE, p as u16), 1, who, &mut rng);
                state[next as usize] = 0;
                running[p as usize] = Some(next);
                let hvm = who.0 % 2 == 1;
                if hvm {
                    t += 1000;
                    g.rec(p, TRC_HVM_VMENTRY, Some(t), &[], ClassId::vmentry, current(who, vec![]));
                }
                for _ in 0..self.actions {
                    t += 5_000 + rng.below(100_000);
                    if hvm {
                        let reason = EXITS[rng.below(EXITS.len() as u64) as usize];
                        g.exit(p, &mut t, who, reason, &mut rng);
                    } else {
                        g.hypercall(p, t, who, &mut rng);
                    }
                }
            }
        }
        g.finish(&mut rng)
    }
}

impl Gen<'_> {
    /// Reads the rings out as xentrace does: at each poll, every pCPU's
    /// records written since the last poll form one window (none if there
    /// are none), pCPU by pCPU. Polls come every quarter to whole round.
    fn finish(mut self, rng: &mut Rng) -> Generated {
        let mut cursors = vec![0usize; self.rings.len()];
        let mut bytes = Vec::new();
        let mut poll = TSC_BASE;
        while cursors.iter().zip(&self.rings).any(|(c, r)| *c < r.starts.len()) {
            poll += ROUND * (1 + rng.below(4)) / 4;
            for (cpu, ring) in self.rings.iter().enumerate() {
                let at = cursors[cpu];
                let end = at + ring.starts[at..].iter().take_while(|s| s.2 <= poll).count();
                if end == at {
                    continue;
                }
                let from = ring.starts[at].0;
                let to = ring.starts.get(end).map_or(ring.bytes.len(), |s| s.0);
                if ring.starts[at..end].iter().rev().skip(1).any(|s| s.1) {
                    self.out.windows_across_wrap += 1;
                }
                put_window(&mut bytes, cpu as i32, (to - from) as u32);
                bytes.extend_from_slice(&ring.bytes[from..to]);
                self.out.windows += 1;
                cursors[cpu] = end;
            }
        }
        let cut = self.sc.cut;
        if cut > 0 {
            // A last window of pCPU 0 whose one record (a yield, 20 bytes) is
            // cut: xentrace stopped mid-write. It is not expected back.
            let mut rec = Vec::new();
            let ts = self.rings[0].ts + 1;
            put_record(&mut rec, TRC_SCHED_YIELD, Some(ts), &[1, 0]);
            put_window(&mut bytes, 0, rec.len() as u32);
            bytes.extend_from_slice(&rec[..rec.len() - cut.clamp(1, rec.len() - 1)]);
            self.out.windows += 1;
            self.out.cut = cut;
        }
        self.out.bytes = bytes;
        self.out
    }
}
