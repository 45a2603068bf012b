//! The kernel/VMM split of a split hypervisor's exits (KVM: the kernel's
//! tracepoints beside the VMM's events): per vCPU, the exits the kernel
//! handed to the VMM by `KVM_EXIT_*` reason, with the time each half took,
//! and the exits the kernel handled alone, by the kernel's reason.
//!
//! Per vCPU: a [`Event::KernelExit`] (or a [`Event::KernelDetail`] when no
//! kernel exit is in progress) begins a kernel exit; [`Event::ToVmm`] hands
//! it to the VMM (its kernel time ends there); the next [`Event::Entry`]
//! ends the VMM's time. A kernel exit that ends otherwise (an entry, or
//! the next kernel exit: on hosts without `kvm_entry`) never reached user
//! space; it is timed only when an entry ends it.

use hvtrace_model::{Event, Exit};
use serde::Serialize;

use crate::acc::Window;
use crate::report::Clock;

/// One reason's figures so far, in ticks.
#[derive(Clone, Debug)]
struct Row {
    code: u32,
    name: String,
    count: u64,
    kernel: (u64, u64),
    vmm: (u64, u64),
}

/// A vCPU's split so far.
#[derive(Clone, Debug, Default)]
pub(crate) struct SplitAcc {
    /// The kernel exit in progress: when it began, its reason's row in `in_kernel`.
    open: Option<(u64, usize)>,
    /// The exit handed to the VMM: when, its row in `to_vmm`.
    at_vmm: Option<(u64, usize)>,
    to_vmm: Vec<Row>,
    in_kernel: Vec<Row>,
}

fn row(rows: &mut Vec<Row>, exit: &Exit<'_>) -> usize {
    // Keyed by name: a kernel's reasons (VMX numbers, `emulate_insn`) share no number space.
    rows.iter().position(|r| r.name == exit.name).unwrap_or_else(|| {
        rows.push(Row { code: exit.code, name: exit.name.to_string(), count: 0, kernel: (0, 0), vmm: (0, 0) });
        rows.len() - 1
    })
}

/// Adds `r`'s figures to the row of its reason in `rows` (made if new); returns its index.
fn add_row(rows: &mut Vec<Row>, r: &Row) -> usize {
    let i = rows.iter().position(|x| x.name == r.name).unwrap_or_else(|| {
        rows.push(Row { code: r.code, name: r.name.clone(), count: 0, kernel: (0, 0), vmm: (0, 0) });
        rows.len() - 1
    });
    let x = &mut rows[i];
    x.count += r.count;
    x.kernel = (x.kernel.0 + r.kernel.0, x.kernel.1 + r.kernel.1);
    x.vmm = (x.vmm.0 + r.vmm.0, x.vmm.1 + r.vmm.1);
    i
}

impl SplitAcc {
    /// Adds the figures of a later stretch of the same vCPU; with `state`,
    /// what that stretch has open (kernel exit, hand-over) replaces this.
    pub fn absorb(&mut self, later: &SplitAcc, state: bool) {
        let kernel: Vec<usize> = later.in_kernel.iter().map(|r| add_row(&mut self.in_kernel, r)).collect();
        let vmm: Vec<usize> = later.to_vmm.iter().map(|r| add_row(&mut self.to_vmm, r)).collect();
        if state {
            self.open = later.open.map(|(t, i)| (t, kernel[i]));
            self.at_vmm = later.at_vmm.map(|(t, i)| (t, vmm[i]));
        }
    }

    /// Whether the vCPU's exit is the VMM's now (handed over, not yet re-entered).
    pub fn at_vmm(&self) -> bool {
        self.at_vmm.is_some()
    }

    /// The kernel exit in progress ends without reaching user space, at
    /// `t` if an entry ends it (timed), else untimed.
    #[inline]
    fn close_in_kernel(&mut self, w: Window, entry: Option<u64>) {
        if let Some((t0, i)) = self.open.take() {
            if w.holds(t0) {
                let r = &mut self.in_kernel[i];
                r.count += 1;
                if let Some(t) = entry {
                    r.kernel.0 += 1;
                    r.kernel.1 += t.saturating_sub(t0);
                }
            }
        }
    }

    /// One kernel-side event of the vCPU at `t` (an entry comes through
    /// [`SplitAcc::entry`]).
    pub fn event(&mut self, w: Window, t: u64, e: &Event<'_>) {
        match e {
            Event::KernelExit { exit, .. } => {
                self.close_in_kernel(w, None);
                // A new exit while the VMM had one: the VMM's re-entry was not seen.
                self.at_vmm = None;
                self.open = Some((t, row(&mut self.in_kernel, exit)));
            }
            Event::KernelDetail { exit, .. } if self.open.is_none() => {
                self.at_vmm = None;
                self.open = Some((t, row(&mut self.in_kernel, exit)));
            }
            Event::ToVmm { exit, .. } => {
                // Hand-overs are counted, and both halves timed, by the
                // hand-over's time, so none is counted out of the window
                // and timed in it.
                let i = row(&mut self.to_vmm, exit);
                let began = self.open.take();
                if w.holds(t) {
                    let r = &mut self.to_vmm[i];
                    r.count += 1;
                    if let Some((t0, _)) = began {
                        r.kernel.0 += 1;
                        r.kernel.1 += t.saturating_sub(t0);
                    }
                }
                self.at_vmm = Some((t, i));
            }
            _ => {}
        }
    }

    /// An entry of the vCPU at `t` (inline: a trace without kernel events
    /// passes here on every entry, with nothing open).
    #[inline]
    pub fn entry(&mut self, w: Window, t: u64) {
        if let Some((t0, i)) = self.at_vmm.take() {
            if w.holds(t0) {
                let r = &mut self.to_vmm[i];
                r.vmm.0 += 1;
                r.vmm.1 += t.saturating_sub(t0);
            }
        }
        self.close_in_kernel(w, Some(t));
    }

    /// The trace or the vCPU's data ends (or is lost): what is open is not timed.
    pub fn interrupt(&mut self, w: Window) {
        self.close_in_kernel(w, None);
        self.at_vmm = None;
    }

    /// The report's rows; `None` if the vCPU had no kernel events.
    pub fn report(&self, clk: Clock) -> Option<KernelSplit> {
        if self.to_vmm.is_empty() && self.in_kernel.is_empty() {
            return None;
        }
        let mut to_vmm: Vec<ToVmmRow> = self
            .to_vmm
            .iter()
            .map(|r| {
                let (kernel_ns, vmm_ns) = (clk.ns(r.kernel.1), clk.ns(r.vmm.1));
                ToVmmRow {
                    reason: r.name.clone(),
                    code: r.code,
                    count: r.count,
                    kernel_ns,
                    kernel_timed: r.kernel.0,
                    vmm_ns,
                    vmm_timed: r.vmm.0,
                    kernel_pct: if kernel_ns + vmm_ns == 0 {
                        0.0
                    } else {
                        100.0 * kernel_ns as f64 / (kernel_ns + vmm_ns) as f64
                    },
                }
            })
            .collect();
        to_vmm.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
        let mut in_kernel: Vec<InKernelRow> = self
            .in_kernel
            .iter()
            .filter(|r| r.count > 0)
            .map(|r| InKernelRow {
                reason: r.name.clone(),
                code: r.code,
                count: r.count,
                total_ns: clk.ns(r.kernel.1),
                timed: r.kernel.0,
            })
            .collect();
        in_kernel.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
        Some(KernelSplit { exits_in_kernel: in_kernel.iter().map(|r| r.count).sum(), to_vmm, in_kernel })
    }
}

/// A vCPU's kernel/VMM split (traces with the kernel's half of a KVM host).
#[derive(Clone, Debug, Serialize)]
pub struct KernelSplit {
    /// Exits the kernel handed to the VMM, by `KVM_EXIT_*` reason, most frequent first.
    pub to_vmm: Vec<ToVmmRow>,
    /// Exits that never reached user space, by the kernel's reason.
    pub in_kernel: Vec<InKernelRow>,
    /// Their sum.
    pub exits_in_kernel: u64,
}

/// Exits of one `KVM_EXIT_*` reason that reached the VMM.
#[derive(Clone, Debug, Serialize)]
pub struct ToVmmRow {
    /// Reason name (`io`, `mmio`, `hlt`, …).
    pub reason: String,
    /// `KVM_EXIT_*` number.
    pub code: u32,
    /// Exits handed to the VMM in the window.
    pub count: u64,
    /// Kernel time: from the kernel exit's start to the hand-over, summed.
    pub kernel_ns: u64,
    /// Exits whose kernel time is known (a kernel exit event preceded the hand-over).
    pub kernel_timed: u64,
    /// VMM time: from the hand-over to the vCPU's next entry, summed.
    pub vmm_ns: u64,
    /// Exits whose VMM time is known (an entry followed).
    pub vmm_timed: u64,
    /// `kernel_ns` over `kernel_ns + vmm_ns`, in percent.
    pub kernel_pct: f64,
}

/// Exits of one kernel reason that the kernel handled alone.
#[derive(Clone, Debug, Serialize)]
pub struct InKernelRow {
    /// The kernel's reason (`EPT_VIOLATION`, `emulate_insn`, …).
    pub reason: String,
    /// Its number in its source (0 where it has none).
    pub code: u32,
    /// Exits in the window.
    pub count: u64,
    /// Exit-to-entry time of those an entry ended, summed.
    pub total_ns: u64,
    /// How many an entry ended (hosts with `kvm_entry`).
    pub timed: u64,
}
