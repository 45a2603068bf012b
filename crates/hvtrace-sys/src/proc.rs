//! Per-process figures from `/proc`, for tests and benchmarks (e.g. "an idle
//! consumer does not wake up", "consumer CPU per event"), and the few
//! process-wide calls around them: SIGTERM, dumpability, pipes.

use std::io;
use std::time::Duration;

/// Voluntary context switches (sleeps) of process `pid` so far, summed over
/// its live threads: the `voluntary_ctxt_switches` lines of
/// `/proc/PID/task/*/status`. (`/proc/PID/status` alone only counts the main
/// thread.) Threads that already exited are not counted, so sample while the
/// threads of interest are alive.
pub fn voluntary_ctxt_switches(pid: u32) -> io::Result<u64> {
    sum_task_field(pid, "voluntary_ctxt_switches")
}

/// Involuntary context switches (preemptions) of `pid`, summed over its live
/// threads (`nonvoluntary_ctxt_switches` of `/proc/PID/task/*/status`).
pub fn nonvoluntary_ctxt_switches(pid: u32) -> io::Result<u64> {
    sum_task_field(pid, "nonvoluntary_ctxt_switches")
}

fn sum_task_field(pid: u32, key: &str) -> io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("status");
        let s = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            // The thread exited between readdir and open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        total += parse_status_field(&s, key).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("no numeric {key} in {}", path.display()))
        })?;
    }
    Ok(total)
}

fn parse_status_field(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// CPU time (user + system) consumed so far by process `pid`, all threads:
/// `utime + stime` of `/proc/PID/stat`, in clock-tick resolution (usually
/// 10 ms, so measure over long enough runs).
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&s)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse /proc/{pid}/stat")))?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz))
}

/// utime + stime (fields 14 and 15) in ticks. The command name (field 2) is
/// in parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_stat_cpu_ticks(s: &str) -> Option<u64> {
    let rest = &s[s.rfind(')')? + 1..];
    // rest starts at field 3 (state); utime is field 14 => index 11 here.
    let mut it = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = it.next()?.parse().ok()?;
    let stime: u64 = it.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `prctl(PR_SET_DUMPABLE, SUID_DUMP_DISABLE)`: from now on only a
/// process with `CAP_SYS_PTRACE` may `ptrace` this one or open its
/// `/proc/PID/mem`, even under the same uid; no core dumps. Undone by
/// `execve`.
///
/// # References
/// [prctl(2)](https://man7.org/linux/man-pages/man2/PR_SET_DUMPABLE.2const.html)
pub fn set_not_dumpable() -> io::Result<()> {
    Ok(rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?)
}

/// This process's effective uid (`geteuid(2)`).
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether this process is dumpable (`prctl(PR_GET_DUMPABLE)`).
pub fn is_dumpable() -> io::Result<bool> {
    Ok(rustix::process::dumpable_behavior()? != rustix::process::DumpableBehavior::NotDumpable)
}

/// Raises this process's soft limit on open descriptors to the hard limit
/// (`setrlimit(RLIMIT_NOFILE)`) and returns the new soft limit. A host or
/// consumer holds 2 to 4 descriptors per CPU ring: 512 CPUs overrun the
/// usual soft limit of 1024 (Go's runtime does the same at start-up).
///
/// # References
/// [setrlimit(2)](https://man7.org/linux/man-pages/man2/setrlimit.2.html)
pub fn raise_fd_limit() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current.is_none() || lim.current == lim.maximum {
        return Ok(lim.current.unwrap_or(u64::MAX));
    }
    setrlimit(Resource::Nofile, Rlimit { current: lim.maximum, maximum: lim.maximum })?;
    Ok(lim.maximum.unwrap_or(u64::MAX))
}

/// A pipe (`pipe2(O_CLOEXEC)`): (read end, write end).
pub fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Sends SIGTERM to process `pid` (asks it to finish and exit).
pub fn terminate(pid: u32) -> io::Result<()> {
    signal(pid, rustix::process::Signal::TERM)
}

/// Sends SIGSTOP to process `pid`: it stops running (tests use it for a
/// peer that stalls without going away).
pub fn pause(pid: u32) -> io::Result<()> {
    signal(pid, rustix::process::Signal::STOP)
}

/// Sends SIGCONT to process `pid`, resuming it after [`pause`].
pub fn resume(pid: u32) -> io::Result<()> {
    signal(pid, rustix::process::Signal::CONT)
}

fn signal(pid: u32, sig: rustix::process::Signal) -> io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0 is not a process"))?;
    Ok(rustix::process::kill_process(pid, sig)?)
}

/// `pidfd_open(pid, 0)`: a descriptor of process `pid` that polls readable
/// (`EPOLLIN`) once the process has exited, so a waiter can sleep in
/// `epoll` on it beside other descriptors.
///
/// # References
/// - [`pidfd_open(2)`](https://man7.org/linux/man-pages/man2/pidfd_open.2.html)
pub fn exit_fd(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no such pid {pid}")))?;
    Ok(rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "1234 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(line), Some(175));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nvoluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_status_field(s, "voluntary_ctxt_switches"), Some(17));
        assert_eq!(parse_status_field(s, "nonvoluntary_ctxt_switches"), Some(3));
        assert_eq!(parse_status_field(s, "missing"), None);
    }

    #[test]
    fn own_figures_grow() {
        let pid = std::process::id();
        // This thread's own count: the sum over live threads can fall when
        // other tests' threads exit meanwhile.
        let own = || {
            let path = format!("/proc/{pid}/task/{}/status", crate::tracefs::gettid());
            parse_status_field(&std::fs::read_to_string(path).unwrap(), "voluntary_ctxt_switches").unwrap()
        };
        let before = own();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Each sleep is a voluntary switch of this test thread, which the
        // process's sum includes.
        let after = own();
        assert!(after >= before + 5, "{before} -> {after}");
        assert!(voluntary_ctxt_switches(pid).unwrap() >= after);
        nonvoluntary_ctxt_switches(pid).unwrap();

        let t0 = cpu_time(pid).unwrap();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time(pid).unwrap() > t0);
    }

    #[test]
    fn the_fd_limit_rises_to_the_hard_limit() {
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(u64::MAX);
        assert_eq!(raise_fd_limit().unwrap(), hard);
        assert_eq!(rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX), hard);
    }

    #[test]
    fn missing_process_is_an_error() {
        assert!(cpu_time(u32::MAX).is_err());
        assert!(voluntary_ctxt_switches(u32::MAX).is_err());
    }
}
