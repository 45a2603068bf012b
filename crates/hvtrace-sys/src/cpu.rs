//! CPU numbers: the current CPU, pinning, and the online / possible sets.

use std::io;

use rustix::thread::CpuSet;

/// The CPU the calling thread is running on right now. The answer may be
/// stale as soon as it is returned unless the thread is pinned.
///
/// Reads the `cpu_id` the kernel keeps current in the rseq area glibc (2.35+)
/// registers for every thread: two loads, no call (glibc's `sched_getcpu`
/// reads the same word behind a PLT call, ≈ 4 ns here; the vDSO call ≈ 9 ns).
/// Falls back to `sched_getcpu` when rseq is not registered.
#[inline]
pub fn current_cpu() -> usize {
    match rseq::cpu_id() {
        Some(cpu) => cpu,
        None => current_cpu_slow(),
    }
}

#[cold]
fn current_cpu_slow() -> usize {
    // SAFETY: sched_getcpu takes no arguments and only returns a number.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu >= 0 {
        cpu as usize
    } else {
        rustix::thread::sched_getcpu()
    }
}

/// The calling thread's rseq area, as glibc publishes it (`__rseq_offset`,
/// `__rseq_size`, looked up once with `dlsym` so older glibcs still link).
mod rseq {
    use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

    /// Not looked up yet.
    const UNKNOWN: isize = isize::MIN;
    /// glibc does not register rseq (too old, or disabled by tunable).
    const NONE: isize = isize::MIN + 1;
    /// Offset of `struct rseq` from the thread pointer, or a marker above.
    static OFFSET: AtomicIsize = AtomicIsize::new(UNKNOWN);
    /// `struct rseq { u32 cpu_id_start; u32 cpu_id; ... }`.
    const CPU_ID: isize = 4;

    #[inline]
    pub(super) fn cpu_id() -> Option<usize> {
        let mut off = OFFSET.load(Relaxed);
        if off == UNKNOWN {
            off = lookup();
        }
        if off == NONE {
            return None;
        }
        read_cpu_id(off)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn read_cpu_id(off: isize) -> Option<usize> {
        let tp: *const u8;
        // SAFETY: on x86_64 the word at %fs:0 is the thread pointer (the TCB
        // points to itself); reading it has no side effect.
        unsafe {
            core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, preserves_flags, readonly))
        };
        // SAFETY: glibc registered this thread's rseq area at tp + off for
        // the thread's whole life (`__rseq_size` > 0 was checked); the kernel
        // rewrites `cpu_id` on migration, hence the volatile read.
        let cpu = unsafe { core::ptr::read_volatile(tp.offset(off + CPU_ID) as *const u32) } as i32;
        // Negative: not registered for this thread (RSEQ_CPU_ID_UNINITIALIZED / _REGISTRATION_FAILED).
        (cpu >= 0).then_some(cpu as usize)
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    fn read_cpu_id(_off: isize) -> Option<usize> {
        None
    }

    #[cold]
    fn lookup() -> isize {
        // SAFETY: dlsym with a NUL-terminated name; the symbols, when present,
        // are glibc's `const ptrdiff_t __rseq_offset` and `const unsigned int __rseq_size`.
        let off = unsafe {
            let size = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) as *const u32;
            let off = libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) as *const isize;
            if size.is_null() || off.is_null() || *size == 0 {
                NONE
            } else {
                *off
            }
        };
        let off = if off == UNKNOWN { NONE } else { off };
        OFFSET.store(off, Relaxed);
        off
    }
}

/// Restricts the calling thread to run only on `cpu`.
///
/// Fails with `EINVAL` if `cpu` is not online or not allowed (cpuset), and
/// with `InvalidInput` if it is beyond the largest CPU number supported.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} is beyond CPU_SETSIZE ({})", CpuSet::MAX_CPU),
        ));
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// The CPUs the calling thread may run on (`sched_getaffinity`), ascending.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// The online CPUs, ascending, from `/sys/devices/system/cpu/online`;
/// falls back to [`allowed_cpus`] if sysfs is unavailable. This is the set a
/// host gives one ring each (threads of the process may be allowed on fewer).
pub fn online_cpus() -> Vec<usize> {
    read_cpu_list("/sys/devices/system/cpu/online").or_else(|_| allowed_cpus()).unwrap_or_else(|_| vec![0])
}

/// The possible CPUs (every CPU number that may ever come online, e.g. by
/// hotplug), ascending, from `/sys/devices/system/cpu/possible`; falls back
/// to [`online_cpus`].
pub fn possible_cpus() -> Vec<usize> {
    read_cpu_list("/sys/devices/system/cpu/possible").unwrap_or_else(|_| online_cpus())
}

fn read_cpu_list(path: &str) -> io::Result<Vec<usize>> {
    let s = std::fs::read_to_string(path)?;
    parse_cpu_list(&s)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse CPU list {s:?} from {path}")))
}

/// Parses a kernel CPU list such as `"0-3,5,8-9\n"` into ascending CPU
/// numbers. Returns `None` on malformed input. An empty list gives `Some([])`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let s = s.trim();
    let mut out = Vec::new();
    if s.is_empty() {
        return Some(out);
    }
    for part in s.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.parse().ok()?;
                let b: usize = b.parse().ok()?;
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(parse_cpu_list("0\n"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-3,5,8-9"), Some(vec![0, 1, 2, 3, 5, 8, 9]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list("1,,2"), None);
    }

    #[test]
    fn sets_are_consistent() {
        let online = online_cpus();
        let possible = possible_cpus();
        assert!(!online.is_empty());
        assert!(online.iter().all(|c| possible.contains(c)));
        assert!(online.contains(&current_cpu()));
        let allowed = allowed_cpus().unwrap();
        assert!(allowed.iter().all(|c| online.contains(c)));
    }

    #[test]
    fn pinning_moves_the_thread() {
        let allowed = allowed_cpus().unwrap();
        std::thread::spawn(move || {
            for &cpu in &allowed {
                pin_current_thread(cpu).unwrap();
                assert_eq!(current_cpu(), cpu);
                assert_eq!(allowed_cpus().unwrap(), vec![cpu]);
            }
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(CpuSet::MAX_CPU).is_err());
    }

    #[test]
    fn rseq_cpu_id_follows_migration() {
        // glibc 2.36 (Debian 12) registers rseq: the fast path must answer,
        // and agree with the kernel's own answer on every CPU.
        let Some(_) = rseq::cpu_id() else {
            eprintln!("SKIP rseq_cpu_id_follows_migration: glibc registered no rseq area (GLIBC_TUNABLES or glibc < 2.35); current_cpu uses sched_getcpu");
            return;
        };
        let allowed = allowed_cpus().unwrap();
        std::thread::spawn(move || {
            for &cpu in allowed.iter().chain(allowed.iter().rev()) {
                pin_current_thread(cpu).unwrap();
                assert_eq!(rseq::cpu_id(), Some(cpu));
                assert_eq!(rustix::thread::sched_getcpu(), cpu);
            }
        })
        .join()
        .unwrap();
    }
}
