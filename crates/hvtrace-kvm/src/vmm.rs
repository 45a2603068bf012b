//! The VMM: VM setup, one thread per vCPU, the exit loop and the hypercall handlers.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_EXIT_INTR};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress};

use crate::exit::le_value;
use crate::guest;
use crate::hypercall;
use crate::{Exit, VmmObserver};

/// What each vCPU does per iteration of the guest program's main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// Length of the compute loop (guest instructions only, no exit).
    pub compute_loop: u32,
    /// Port I/O writes to [`guest::DATA_PORT`] (one exit each).
    pub io_writes: u32,
    /// MMIO writes to [`guest::MMIO_ADDR`] (one exit each).
    pub mmio_writes: u32,
    /// Hypercalls (one exit each), numbers `0, 1, 2, 3, 0, ...`.
    pub hypercalls: u32,
    /// Guest events (one exit each), ids `0, 1, 2, ...`.
    pub guest_events: u32,
}

impl Default for Workload {
    /// A mix of everything: 20 compute steps, 2 port writes, 1 MMIO write,
    /// 4 hypercalls (one of each number) and 2 guest events per iteration.
    ///
    /// The compute loop is short on purpose: where KVM cannot run the guest natively
    /// (e.g. KVM-PVM, software virtualization inside a VM, as on the project's build
    /// machines) every guest instruction is emulated at about 1.3 µs.
    fn default() -> Self {
        Workload { compute_loop: 20, io_writes: 2, mmio_writes: 1, hypercalls: 4, guest_events: 2 }
    }
}

impl Workload {
    /// VM exits caused by one iteration.
    pub fn exits_per_iteration(&self) -> u64 {
        u64::from(self.io_writes)
            + u64::from(self.mmio_writes)
            + u64::from(self.hypercalls)
            + u64::from(self.guest_events)
    }
}

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmConfig {
    /// Number of vCPUs (one OS thread each), at least 1.
    pub vcpus: u32,
    /// Iterations of the workload each vCPU runs (at most `u32::MAX`: the guest's
    /// counter is 32-bit).
    pub iterations: u64,
    /// Per-iteration work.
    pub workload: Workload,
}

impl Default for VmmConfig {
    fn default() -> Self {
        VmmConfig { vcpus: 1, iterations: 1000, workload: Workload::default() }
    }
}

impl VmmConfig {
    /// Checks the configuration against this machine's KVM (vCPUs within
    /// `KVM_CAP_MAX_VCPUS`, iterations within the guest's 32-bit counter),
    /// without creating a VM: a caller can refuse a run before setting up
    /// anything around it.
    pub fn validate(&self) -> Result<(), VmmError> {
        self.check().map(|_| ())
    }

    /// [`validate`](Self::validate), keeping the open `/dev/kvm` and the
    /// iteration count as the guest takes it.
    fn check(&self) -> Result<(Kvm, u32), VmmError> {
        let iterations = u32::try_from(self.iterations).map_err(|_| {
            VmmError::InvalidConfig(format!("iterations {} > u32::MAX (the guest counter is 32-bit)", self.iterations))
        })?;
        if self.vcpus == 0 {
            return Err(VmmError::InvalidConfig("vcpus must be at least 1".into()));
        }
        kvm_available().map_err(VmmError::Unavailable)?;
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let max = kvm.get_max_vcpus();
        if self.vcpus as usize > max {
            return Err(VmmError::InvalidConfig(format!("{} vCPUs requested, KVM allows {max}", self.vcpus)));
        }
        Ok((kvm, iterations))
    }

    /// VM exits each vCPU takes in a normal run: the workload's, plus the "done"
    /// port write and the final `hlt`.
    pub fn expected_exits_per_vcpu(&self) -> u64 {
        self.iterations * self.workload.exits_per_iteration() + 2
    }
}

/// The VMM's own counts for one vCPU (independent of any observer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuReport {
    /// Every `KVM_RUN` return (== number of `KVM_RUN` entries).
    pub exits: u64,
    /// Exits by `KVM_EXIT_*` number ([`Exit::reason_code`]); hypercall, guest-event
    /// and done port writes count as `KVM_EXIT_IO` here.
    pub exits_by_reason: BTreeMap<u32, u64>,
    /// Hypercalls handled (port [`guest::HYPERCALL_PORT`]).
    pub hypercalls: u64,
    /// Hypercalls by number.
    pub hypercalls_by_nr: BTreeMap<u32, u64>,
    /// Guest events (port [`guest::GUEST_EVENT_PORT`]).
    pub guest_events: u64,
    /// Plain port I/O exits: any port other than the hypercall, guest-event and done ports.
    pub io: u64,
    /// MMIO exits (reads and writes).
    pub mmio: u64,
    /// Yield hypercalls (the yield counter).
    pub yields: u64,
    /// Bytes written with the console hypercall (the first [`CONSOLE_KEEP`] bytes;
    /// `console_bytes` has the full count).
    pub console: Vec<u8>,
    /// Number of console-write hypercalls.
    pub console_bytes: u64,
    /// The value the guest wrote to [`guest::DONE_PORT`] (the wrapping sum of every
    /// hypercall return value's low 32 bits), or `None` if it never finished.
    pub done_value: Option<u32>,
    /// Time spent inside observer calls (every [`VmmObserver`] method), in ns,
    /// measured around each call with the CPU's time-stamp counter (`rdtsc`;
    /// [`Instant`] on other architectures) and converted with this thread's own
    /// calibration (TSC ticks over [`run_ns`](Self::run_ns)). It includes the
    /// cost of the measurement itself (two counter reads and the call's dispatch):
    /// a run with [`NullObserver`](crate::NullObserver) gives that floor.
    /// Measurement, not a count: it differs between otherwise identical runs.
    pub observer_ns: u64,
    /// Observer calls timed into [`observer_ns`](Self::observer_ns).
    pub observer_calls: u64,
    /// Wall time of this vCPU's thread from entering its exit loop to leaving it, in ns.
    pub run_ns: u64,
}

/// How many console bytes a [`VcpuReport`] keeps.
pub const CONSOLE_KEEP: usize = 4096;

/// Result of [`Vmm::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// One report per vCPU, by index.
    pub per_vcpu: Vec<VcpuReport>,
    /// Wall time from starting the vCPU threads to the last one finishing (VM setup
    /// excluded).
    pub elapsed: Duration,
}

impl RunReport {
    /// Exits of all vCPUs.
    pub fn total_exits(&self) -> u64 {
        self.per_vcpu.iter().map(|v| v.exits).sum()
    }

    /// Exits of all vCPUs per second of [`elapsed`](Self::elapsed).
    pub fn exits_per_second(&self) -> f64 {
        self.total_exits() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Time all vCPUs spent inside observer calls, in ns ([`VcpuReport::observer_ns`]).
    pub fn observer_ns(&self) -> u64 {
        self.per_vcpu.iter().map(|v| v.observer_ns).sum()
    }

    /// Wall time of all vCPU threads' exit loops, in ns ([`VcpuReport::run_ns`]).
    pub fn vcpu_run_ns(&self) -> u64 {
        self.per_vcpu.iter().map(|v| v.run_ns).sum()
    }

    /// Observer time per VM exit, in ns (0 without exits).
    pub fn observer_ns_per_exit(&self) -> f64 {
        self.observer_ns() as f64 / self.total_exits().max(1) as f64
    }

    /// Share of the vCPU threads' time spent inside the observer: observer time /
    /// vCPU loop time, summed over vCPUs (0..=1). Unlike exits per second this does
    /// not depend on how fast the guest happened to run, so it resolves small
    /// tracing costs that run-to-run noise hides. With
    /// [`NullObserver`](crate::NullObserver) it is the measurement's own floor.
    pub fn observer_share(&self) -> f64 {
        let run = self.vcpu_run_ns();
        if run == 0 {
            return 0.0;
        }
        (self.observer_ns() as f64 / run as f64).clamp(0.0, 1.0)
    }
}

/// Errors from [`Vmm::run`].
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` cannot be used (see [`kvm_available`]).
    #[error("KVM unavailable: {0}")]
    Unavailable(String),
    /// The configuration cannot be run.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A KVM ioctl failed.
    #[error("{op} failed: {source}")]
    Kvm {
        /// The operation (ioctl) that failed.
        op: &'static str,
        /// The error it returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest shut down (triple fault).
    #[error("vCPU {vcpu}: guest shut down (triple fault?) at rip {rip:#x}")]
    GuestShutdown {
        /// The vCPU.
        vcpu: u32,
        /// Its instruction pointer at the exit.
        rip: u64,
    },
    /// An exit the VMM does not handle.
    #[error("vCPU {vcpu}: unexpected exit {name} ({reason}) at rip {rip:#x}")]
    UnexpectedExit {
        /// The vCPU.
        vcpu: u32,
        /// The `KVM_EXIT_*` number.
        reason: u32,
        /// Its name.
        name: &'static str,
        /// The instruction pointer at the exit.
        rip: u64,
    },
    /// Another vCPU failed, so this one was stopped.
    #[error("vCPU {vcpu}: stopped because another vCPU failed")]
    Aborted {
        /// The vCPU.
        vcpu: u32,
    },
    /// A vCPU thread panicked (in the observer or the VMM).
    #[error("vCPU {vcpu}: thread panicked")]
    ThreadPanicked {
        /// The vCPU.
        vcpu: u32,
    },
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { op, source }
}

/// Checks that `/dev/kvm` can be opened and speaks the stable API (version 12).
/// The error says why not, plainly: missing device, permissions ("needs root or the
/// kvm group"), or an unexpected API version.
pub fn kvm_available() -> Result<(), String> {
    const DEV: &str = "/dev/kvm";
    if let Err(e) = OpenOptions::new().read(true).write(true).open(DEV) {
        return Err(match e.kind() {
            ErrorKind::NotFound => format!(
                "{DEV} does not exist (ENOENT): no KVM here (module not loaded, no hardware \
                 virtualization, or the device is not passed into this container/VM)"
            ),
            ErrorKind::PermissionDenied => {
                format!("{DEV}: {e}: needs root or the kvm group")
            }
            _ => match e.raw_os_error() {
                Some(libc::ENXIO) | Some(libc::ENODEV) => {
                    format!("{DEV} exists but no KVM driver is behind it ({e})")
                }
                _ => format!("cannot open {DEV}: {e}"),
            },
        });
    }
    let kvm = Kvm::new().map_err(|e| format!("cannot open {DEV}: {e}"))?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(format!("{DEV}: KVM_GET_API_VERSION returned {version}, expected 12 (not a KVM device?)"));
    }
    Ok(())
}

/// The micro-VMM. Each [`run`](Self::run) creates a fresh VM, runs it to completion
/// and tears it down.
#[derive(Debug)]
pub struct Vmm {
    _private: (),
}

/// Per-vCPU state of the paravirtual "hypervisor".
struct VcpuState {
    id: u32,
    report: VcpuReport,
}

impl VcpuState {
    fn hypercall(&mut self, nr: u32, args: [u64; 4]) -> u64 {
        match nr {
            hypercall::VERSION_NR => hypercall::VERSION,
            hypercall::YIELD_NR => {
                self.report.yields += 1;
                self.report.yields
            }
            hypercall::CONSOLE_WRITE_NR => {
                self.report.console_bytes += 1;
                if self.report.console.len() < CONSOLE_KEEP {
                    self.report.console.push(args[0] as u8);
                }
                1
            }
            hypercall::GET_VCPU_ID_NR => u64::from(self.id),
            _ => hypercall::ENOSYS,
        }
    }
}

impl Vmm {
    /// Runs `config` to completion, reporting to `observer`. Returns the VMM's own
    /// counts and the elapsed time.
    pub fn run(config: &VmmConfig, observer: &dyn VmmObserver) -> Result<RunReport, VmmError> {
        Self::run_with_thread_hook(config, observer, &|_| {})
    }

    /// Like [`run`](Self::run), but calls `on_vcpu_thread(vcpu)` first thing on each
    /// vCPU thread (to pin it to a CPU, name it, or register it with a tracer).
    pub fn run_with_thread_hook(
        config: &VmmConfig,
        observer: &dyn VmmObserver,
        on_vcpu_thread: &(dyn Fn(u32) + Sync),
    ) -> Result<RunReport, VmmError> {
        let (kvm, iterations) = config.check()?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        // Needed on Intel hosts without unrestricted guest; harmless elsewhere.
        vm.set_tss_address(0xfffb_d000).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;

        let mem = setup_memory(&vm, config, iterations)?;
        let vcpus = (0..config.vcpus).map(|id| setup_vcpu(&vm, id)).collect::<Result<Vec<_>, _>>()?;

        let abort = AtomicBool::new(false);
        let start = Instant::now();
        let results: Vec<Result<VcpuReport, VmmError>> = std::thread::scope(|s| {
            let handles: Vec<_> = vcpus
                .into_iter()
                .enumerate()
                .map(|(id, vcpu)| {
                    let id = id as u32;
                    let abort = &abort;
                    std::thread::Builder::new().name(format!("vcpu{id}")).spawn_scoped(s, move || {
                        on_vcpu_thread(id);
                        let r = run_vcpu(id, vcpu, observer, abort);
                        if r.is_err() {
                            abort.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(id, h)| match h {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        abort.store(true, Ordering::Relaxed);
                        Err(VmmError::ThreadPanicked { vcpu: id as u32 })
                    }),
                    Err(e) => {
                        abort.store(true, Ordering::Relaxed);
                        Err(VmmError::Memory(format!("spawning vCPU thread {id}: {e}")))
                    }
                })
                .collect()
        });
        let elapsed = start.elapsed();
        drop(vm);
        drop(mem);

        // Report the first real failure, not the vCPUs it aborted.
        let mut per_vcpu = Vec::with_capacity(results.len());
        let mut aborted = None;
        for r in results {
            match r {
                Ok(rep) => per_vcpu.push(rep),
                Err(e @ VmmError::Aborted { .. }) => aborted = aborted.or(Some(e)),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = aborted {
            return Err(e);
        }
        Ok(RunReport { per_vcpu, elapsed })
    }
}

/// Allocates guest memory, loads the program and the parameter blocks, and registers
/// it as memory slot 0. The returned region must outlive every `KVM_RUN`.
fn setup_memory(vm: &VmFd, config: &VmmConfig, iterations: u32) -> Result<GuestRegionMmap<()>, VmmError> {
    let size = guest::memory_size(config.vcpus);
    let size_usize = usize::try_from(size).map_err(|_| VmmError::Memory(format!("{size} bytes")))?;
    let mem = GuestRegionMmap::<()>::from_range(GuestAddress(0), size_usize, None)
        .map_err(|e| VmmError::Memory(e.to_string()))?;
    mem.write_slice(guest::PROGRAM, MemoryRegionAddress(guest::CODE_ADDR))
        .map_err(|e| VmmError::Memory(e.to_string()))?;
    for id in 0..config.vcpus {
        let block = guest::param_block(id, iterations, &config.workload);
        mem.write_slice(&block, MemoryRegionAddress(guest::param_addr(id)))
            .map_err(|e| VmmError::Memory(e.to_string()))?;
    }
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem.len(),
        userspace_addr: mem.as_ptr() as u64,
    };
    // SAFETY: `userspace_addr..+memory_size` is one live anonymous mapping owned by
    // `mem`. The caller keeps `mem` alive until after every vCPU thread has finished
    // and the VM fd is dropped, so the kernel never sees the mapping go away while
    // the guest can use it. Nothing else in the process aliases it as Rust memory.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    Ok(mem)
}

/// Creates vCPU `id` in 32-bit flat protected mode, pointing at the program.
fn setup_vcpu(vm: &VmFd, id: u32) -> Result<VcpuFd, VmmError> {
    let vcpu = vm.create_vcpu(u64::from(id)).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb, // execute/read, accessed
        present: 1,
        dpl: 0,
        db: 1, // 32-bit
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3, // read/write, accessed
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    // PE | ET; clear the reset value's CD/NW (caches on) and leave paging off.
    sregs.cr0 = 0x11;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;

    let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    regs.rflags = 0x2;
    regs.rip = guest::CODE_ADDR;
    regs.rbp = guest::param_addr(id);
    regs.rsp = guest::stack_top(id);
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    Ok(vcpu)
}

/// Converts the borrowing exit to [`Exit`], answering reads (all ones). `None` for
/// exits this crate has no variant for: the caller reads `kvm_run.exit_reason`.
fn convert(exit: VcpuExit<'_>) -> Option<Exit> {
    Some(match exit {
        VcpuExit::IoOut(port, data) => {
            Exit::IoOut { port, size: data.len().min(4) as u8, data: le_value(&data[..data.len().min(4)]) as u32 }
        }
        VcpuExit::IoIn(port, data) => {
            data.fill(0xff);
            Exit::IoIn { port, size: data.len().min(255) as u8 }
        }
        VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite { addr, size: data.len() as u8, data: le_value(data) },
        VcpuExit::MmioRead(addr, data) => {
            data.fill(0xff);
            Exit::MmioRead { addr, size: data.len() as u8 }
        }
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::Intr => Exit::Other { reason: KVM_EXIT_INTR },
        VcpuExit::Unsupported(reason) => Exit::Other { reason },
        _ => return None,
    })
}

/// A cheap tick counter for timing observer calls: the time-stamp counter on
/// x86-64 (read without serialising: a few ns, so timing every call costs little),
/// elsewhere nanoseconds from [`Instant`]. Its frequency need not be known: see
/// the per-thread calibration in [`run_vcpu`]. A delta that runs backwards (a
/// migration between CPUs with unsynchronised counters) counts as 0.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn ticks() -> u64 {
    // `_rdtsc` is a safe function in newer Rust, an unsafe one in older.
    #[allow(unused_unsafe)]
    // SAFETY: RDTSC has no preconditions; every x86-64 CPU has it.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn ticks() -> u64 {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Times every observer call of one vCPU in [`ticks`].
struct TimedObserver<'a> {
    obs: &'a dyn VmmObserver,
    ticks: u64,
    calls: u64,
}

impl TimedObserver<'_> {
    #[inline(always)]
    fn time(&mut self, f: impl FnOnce(&dyn VmmObserver)) {
        let t0 = ticks();
        f(self.obs);
        self.ticks = self.ticks.wrapping_add(ticks().saturating_sub(t0));
        self.calls += 1;
    }
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map(|r| r.rip).unwrap_or(u64::MAX)
}

/// The exit loop of one vCPU, until it halts, with the observer's share of its time.
fn run_vcpu(id: u32, vcpu: VcpuFd, obs: &dyn VmmObserver, abort: &AtomicBool) -> Result<VcpuReport, VmmError> {
    let mut timed = TimedObserver { obs, ticks: 0, calls: 0 };
    let (start, t0) = (Instant::now(), ticks());
    let mut report = exit_loop(id, vcpu, &mut timed, abort)?;
    let (t1, run) = (ticks(), start.elapsed());
    report.run_ns = u64::try_from(run.as_nanos()).unwrap_or(u64::MAX);
    // Calibrate ticks against the same thread's wall time: no global TSC frequency
    // needed, and the conversion error is that of two clock reads over the whole run.
    let ns_per_tick = run.as_nanos() as f64 / t1.saturating_sub(t0).max(1) as f64;
    report.observer_ns = (timed.ticks as f64 * ns_per_tick).round() as u64;
    report.observer_calls = timed.calls;
    Ok(report)
}

/// The exit loop of one vCPU, until it halts.
fn exit_loop(
    id: u32,
    mut vcpu: VcpuFd,
    obs: &mut TimedObserver<'_>,
    abort: &AtomicBool,
) -> Result<VcpuReport, VmmError> {
    let mut st = VcpuState { id, report: VcpuReport::default() };
    loop {
        if abort.load(Ordering::Relaxed) {
            return Err(VmmError::Aborted { vcpu: id });
        }
        obs.time(|o| o.run_entry(id));
        let exit = match vcpu.run() {
            Ok(e) => convert(e),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Some(Exit::Other { reason: KVM_EXIT_INTR })
            }
            Err(e) => return Err(kvm_err("KVM_RUN")(e)),
        };
        let exit = exit.unwrap_or_else(|| Exit::Other { reason: vcpu.get_kvm_run().exit_reason });

        let rep = &mut st.report;
        rep.exits += 1;
        *rep.exits_by_reason.entry(exit.reason_code()).or_default() += 1;
        obs.time(|o| o.vm_exit(id, &exit));

        match exit {
            Exit::IoOut { port: guest::HYPERCALL_PORT, data: nr, .. } => {
                let mut regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
                // 32-bit guest: the upper halves of the registers are not its to set.
                let args = [regs.rbx, regs.rcx, regs.rsi, regs.rdi].map(|r| r & 0xffff_ffff);
                obs.time(|o| o.hypercall_entry(id, nr, args));
                let ret = st.hypercall(nr, args);
                st.report.hypercalls += 1;
                *st.report.hypercalls_by_nr.entry(nr).or_default() += 1;
                regs.rax = ret;
                vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
                obs.time(|o| o.hypercall_exit(id, nr, ret));
            }
            Exit::IoOut { port: guest::GUEST_EVENT_PORT, data: event, .. } => {
                let regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
                let value = (regs.rcx & 0xffff_ffff) << 32 | (regs.rbx & 0xffff_ffff);
                rep.guest_events += 1;
                obs.time(|o| o.guest_event(id, event, value));
            }
            Exit::IoOut { port: guest::DONE_PORT, data, .. } => rep.done_value = Some(data),
            Exit::IoOut { .. } | Exit::IoIn { .. } => rep.io += 1,
            Exit::MmioWrite { .. } | Exit::MmioRead { .. } => rep.mmio += 1,
            Exit::Hlt => return Ok(st.report),
            Exit::Shutdown => return Err(VmmError::GuestShutdown { vcpu: id, rip: rip(&vcpu) }),
            Exit::Other { reason: KVM_EXIT_INTR } => {}
            Exit::Other { reason } => {
                return Err(VmmError::UnexpectedExit { vcpu: id, reason, name: Exit::name_of(reason), rip: rip(&vcpu) })
            }
        }
    }
}
