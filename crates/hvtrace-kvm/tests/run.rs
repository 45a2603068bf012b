//! End-to-end runs of the micro-VMM on real KVM. Without a usable /dev/kvm each test
//! prints `SKIP: ...` with the reason and returns.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

use hvtrace_kvm::{guest, hypercall, kvm_available, Exit, NullObserver, Vmm, VmmConfig, VmmObserver, Workload};

/// Returns false (after printing why, loudly) when KVM cannot be used here.
fn kvm_or_skip(test: &str) -> bool {
    match kvm_available() {
        Ok(()) => true,
        Err(why) => {
            // Straight to the stderr handle: the test harness captures `eprintln!`
            // of passing tests, and a skip must never be silent.
            let _ = writeln!(std::io::stderr().lock(), "SKIP: {test}: KVM not usable: {why}");
            false
        }
    }
}

/// What the observer saw for one vCPU.
#[derive(Debug, Default, Clone)]
struct Seen {
    run_entries: u64,
    exits: u64,
    exits_by_reason: BTreeMap<u32, u64>,
    io: u64,
    mmio: u64,
    hypercall_entries: u64,
    hypercall_exits: u64,
    hypercalls_by_nr: BTreeMap<u32, u64>,
    /// (nr, args, ret) in order.
    hypercalls: Vec<(u32, [u64; 4], u64)>,
    /// (id, value) in order.
    events: Vec<(u32, u64)>,
    mmio_data: Vec<u64>,
    io_data: Vec<u32>,
    /// Set between hypercall_entry and hypercall_exit.
    pending: Option<(u32, [u64; 4])>,
    last_exit: Option<Exit>,
    /// Exits seen with no run_entry before them (must stay 0).
    unpaired: u64,
}

struct Counting {
    per_vcpu: Vec<Mutex<Seen>>,
}

impl Counting {
    fn new(vcpus: u32) -> Self {
        Counting { per_vcpu: (0..vcpus).map(|_| Mutex::new(Seen::default())).collect() }
    }
    fn get(&self, vcpu: u32) -> std::sync::MutexGuard<'_, Seen> {
        self.per_vcpu[vcpu as usize].lock().unwrap()
    }
}

impl VmmObserver for Counting {
    fn run_entry(&self, vcpu: u32) {
        self.get(vcpu).run_entries += 1;
    }
    fn vm_exit(&self, vcpu: u32, exit: &Exit) {
        let mut s = self.get(vcpu);
        s.exits += 1;
        if s.exits > s.run_entries {
            s.unpaired += 1;
        }
        *s.exits_by_reason.entry(exit.reason_code()).or_default() += 1;
        match *exit {
            Exit::IoOut { port, data, .. } if port == guest::DATA_PORT => {
                s.io += 1;
                s.io_data.push(data);
            }
            Exit::MmioWrite { addr, data, size } => {
                assert_eq!(addr, guest::MMIO_ADDR);
                assert_eq!(size, 4);
                s.mmio += 1;
                s.mmio_data.push(data);
            }
            _ => {}
        }
        s.last_exit = Some(*exit);
    }
    fn hypercall_entry(&self, vcpu: u32, nr: u32, args: [u64; 4]) {
        let mut s = self.get(vcpu);
        assert!(s.pending.is_none(), "nested hypercall_entry");
        assert!(
            matches!(s.last_exit, Some(Exit::IoOut { port, data, .. }) if port == guest::HYPERCALL_PORT && data == nr),
            "hypercall_entry must follow its vm_exit"
        );
        s.hypercall_entries += 1;
        s.pending = Some((nr, args));
    }
    fn hypercall_exit(&self, vcpu: u32, nr: u32, ret: u64) {
        let mut s = self.get(vcpu);
        let (pnr, args) = s.pending.take().expect("hypercall_exit without entry");
        assert_eq!(pnr, nr);
        s.hypercall_exits += 1;
        *s.hypercalls_by_nr.entry(nr).or_default() += 1;
        s.hypercalls.push((nr, args, ret));
    }
    fn guest_event(&self, vcpu: u32, id: u32, value: u64) {
        let mut s = self.get(vcpu);
        assert!(
            matches!(s.last_exit, Some(Exit::IoOut { port, data, .. }) if port == guest::GUEST_EVENT_PORT && data == id),
            "guest_event must follow its vm_exit"
        );
        s.events.push((id, value));
    }
}

/// A model of the guest program, written from its documentation: every hypercall,
/// event and write the VMM must see, for one vCPU.
struct Model {
    hypercalls: Vec<(u32, [u64; 4], u64)>,
    events: Vec<(u32, u64)>,
    io_data: Vec<u32>,
    mmio_data: Vec<u64>,
    console: Vec<u8>,
    yields: u64,
    done_value: u32,
}

fn model(vcpu: u32, iterations: u32, w: &Workload) -> Model {
    let mut m = Model {
        hypercalls: vec![],
        events: vec![],
        io_data: vec![],
        mmio_data: vec![],
        console: vec![],
        yields: 0,
        done_value: 0,
    };
    let mut edi: u32 = 0;
    for r in (1..=iterations).rev() {
        for _ in 0..w.compute_loop {
            edi = edi.wrapping_mul(5).wrapping_add(1);
        }
        m.io_data.extend((0..w.io_writes).map(|_| r & 0xff));
        m.mmio_data.extend((0..w.mmio_writes).map(|_| u64::from(r)));
        for j in 0..w.hypercalls {
            let nr = j & 3;
            let args = [u64::from(j + 0x41), u64::from(vcpu), u64::from(r), u64::from(edi)];
            let ret = match nr {
                0 => hypercall::VERSION,
                1 => {
                    m.yields += 1;
                    m.yields
                }
                2 => {
                    m.console.push((j + 0x41) as u8);
                    1
                }
                _ => u64::from(vcpu),
            };
            m.done_value = m.done_value.wrapping_add(ret as u32);
            m.hypercalls.push((nr, args, ret));
        }
        for k in 0..w.guest_events {
            m.events.push((k, u64::from(vcpu) << 32 | u64::from(r)));
        }
    }
    m
}

fn check(config: &VmmConfig) {
    let obs = Counting::new(config.vcpus);
    let report = Vmm::run(config, &obs).expect("VMM run");
    let w = &config.workload;
    let it = config.iterations;
    assert_eq!(report.per_vcpu.len(), config.vcpus as usize);
    assert!(report.elapsed.as_nanos() > 0);

    for (v, rep) in report.per_vcpu.iter().enumerate() {
        let v32 = v as u32;
        // The VMM's own counts against the workload arithmetic.
        assert_eq!(rep.hypercalls, it * u64::from(w.hypercalls), "vcpu {v}");
        assert_eq!(rep.guest_events, it * u64::from(w.guest_events), "vcpu {v}");
        assert_eq!(rep.io, it * u64::from(w.io_writes), "vcpu {v}");
        assert_eq!(rep.mmio, it * u64::from(w.mmio_writes), "vcpu {v}");
        assert_eq!(rep.exits, config.expected_exits_per_vcpu(), "vcpu {v}");
        let io_exits = it * u64::from(w.io_writes + w.hypercalls + w.guest_events) + 1;
        let mut want_reasons = BTreeMap::new();
        if io_exits > 0 {
            want_reasons.insert(2u32, io_exits);
        }
        want_reasons.insert(5u32, 1);
        if it * u64::from(w.mmio_writes) > 0 {
            want_reasons.insert(6u32, it * u64::from(w.mmio_writes));
        }
        assert_eq!(rep.exits_by_reason, want_reasons, "vcpu {v}");
        assert_eq!(rep.exits_by_reason.values().sum::<u64>(), rep.exits, "vcpu {v}");

        // Guest-visible behaviour: arguments, return values and payloads.
        let m = model(v32, it as u32, w);
        assert_eq!(rep.done_value, Some(m.done_value), "vcpu {v}: return-value sum");
        assert_eq!(rep.yields, m.yields, "vcpu {v}");
        assert_eq!(rep.console, m.console, "vcpu {v}");
        assert_eq!(rep.console_bytes, m.console.len() as u64, "vcpu {v}");

        // The observer saw exactly the VMM's counts.
        let s = obs.get(v32);
        assert_eq!(s.unpaired, 0, "vcpu {v}: vm_exit without run_entry");
        assert_eq!(s.run_entries, rep.exits, "vcpu {v}");
        assert_eq!(s.exits, rep.exits, "vcpu {v}");
        assert_eq!(s.exits_by_reason, rep.exits_by_reason, "vcpu {v}");
        assert_eq!(s.hypercall_entries, rep.hypercalls, "vcpu {v}");
        assert_eq!(s.hypercall_exits, rep.hypercalls, "vcpu {v}");
        assert_eq!(s.hypercalls_by_nr, rep.hypercalls_by_nr, "vcpu {v}");
        assert_eq!(s.events.len() as u64, rep.guest_events, "vcpu {v}");
        assert_eq!(s.io, rep.io, "vcpu {v}");
        assert_eq!(s.mmio, rep.mmio, "vcpu {v}");
        assert!(s.pending.is_none());
        assert_eq!(s.last_exit, Some(Exit::Hlt), "vcpu {v}");
        // ... and the payloads match the model.
        assert_eq!(s.hypercalls, m.hypercalls, "vcpu {v}");
        assert_eq!(s.events, m.events, "vcpu {v}");
        assert_eq!(s.io_data, m.io_data, "vcpu {v}");
        assert_eq!(s.mmio_data, m.mmio_data, "vcpu {v}");

        // Every observer call was timed, inside the vCPU's own run time.
        assert_eq!(rep.observer_calls, 2 * rep.exits + 2 * rep.hypercalls + rep.guest_events, "vcpu {v}");
        assert!(rep.run_ns > 0, "vcpu {v}");
        assert!(rep.observer_ns <= rep.run_ns, "vcpu {v}: {} ns observed in {} ns", rep.observer_ns, rep.run_ns);
    }
    let share = report.observer_share();
    assert!((0.0..=1.0).contains(&share), "observer share {share}");
}

#[test]
fn two_vcpus_default_workload_counts_match() {
    if !kvm_or_skip("two_vcpus_default_workload_counts_match") {
        return;
    }
    check(&VmmConfig { vcpus: 2, iterations: 50, workload: Workload::default() });
}

#[test]
fn odd_workload_counts_match() {
    if !kvm_or_skip("odd_workload_counts_match") {
        return;
    }
    check(&VmmConfig {
        vcpus: 2,
        iterations: 7,
        workload: Workload { compute_loop: 3, io_writes: 1, mmio_writes: 3, hypercalls: 6, guest_events: 5 },
    });
}

#[test]
fn empty_workloads() {
    if !kvm_or_skip("empty_workloads") {
        return;
    }
    // no iterations at all: only the done write and the hlt
    check(&VmmConfig { vcpus: 1, iterations: 0, workload: Workload::default() });
    // iterations with nothing that exits
    check(&VmmConfig {
        vcpus: 2,
        iterations: 5,
        workload: Workload { compute_loop: 10, io_writes: 0, mmio_writes: 0, hypercalls: 0, guest_events: 0 },
    });
}

#[test]
fn null_observer_many_iterations() {
    if !kvm_or_skip("null_observer_many_iterations") {
        return;
    }
    let config = VmmConfig { vcpus: 1, iterations: 2000, workload: Workload::default() };
    let report = Vmm::run(&config, &NullObserver).expect("VMM run");
    let r = &report.per_vcpu[0];
    assert_eq!(r.exits, config.expected_exits_per_vcpu());
    assert_eq!(r.hypercalls, 2000 * 4);
    eprintln!(
        "1 vCPU, NullObserver: {} exits in {:?} = {:.0} exits/s",
        report.total_exits(),
        report.elapsed,
        report.exits_per_second()
    );
}

#[test]
fn thread_hook_runs_on_each_vcpu_thread() {
    if !kvm_or_skip("thread_hook_runs_on_each_vcpu_thread") {
        return;
    }
    let seen = Mutex::new(Vec::new());
    let config = VmmConfig { vcpus: 2, iterations: 1, workload: Workload::default() };
    Vmm::run_with_thread_hook(&config, &NullObserver, &|v| {
        let name = std::thread::current().name().map(str::to_owned);
        seen.lock().unwrap().push((v, name));
    })
    .expect("VMM run");
    let mut seen = seen.into_inner().unwrap();
    seen.sort();
    assert_eq!(seen, vec![(0, Some("vcpu0".to_owned())), (1, Some("vcpu1".to_owned()))]);
}

#[test]
fn invalid_configs_are_refused() {
    // No KVM needed: checked before /dev/kvm is opened.
    let e = Vmm::run(&VmmConfig { vcpus: 0, ..VmmConfig::default() }, &NullObserver).unwrap_err();
    assert!(e.to_string().contains("vcpus"), "{e}");
    let e = Vmm::run(&VmmConfig { iterations: u64::from(u32::MAX) + 1, ..VmmConfig::default() }, &NullObserver)
        .unwrap_err();
    assert!(e.to_string().contains("u32::MAX"), "{e}");
}

#[test]
fn kvm_available_explains_itself() {
    match kvm_available() {
        Ok(()) => eprintln!("kvm_available: ok"),
        Err(why) => {
            let _ = writeln!(std::io::stderr().lock(), "kvm_available: {why}");
            assert!(why.contains("/dev/kvm"), "{why}");
        }
    }
}
