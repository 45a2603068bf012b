//! A private tracefs instance (`instances/hvtrace-PID-N`): its own per-CPU
//! ring buffers, events, pid filter and clock, so hvtrace never disturbs
//! the global buffer or another ftrace user. Removed when dropped; one left
//! by a killed run (its process gone) is removed by the next run.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::format::{parse_format, EventFormat};
use crate::FtraceError;

/// Where tracefs is mounted unless `HVTRACE_TRACEFS` says otherwise.
pub const DEFAULT_TRACEFS: &str = "/sys/kernel/tracing";
/// Instance names start with this, then the owner's pid.
pub const INSTANCE_PREFIX: &str = "hvtrace-";

/// The ftrace clock (`trace_clock`), matching hvtrace's own clock source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceClock {
    /// `x86-tsc`: raw TSC values, the same ticks `rdtsc` gives the VMM.
    X86Tsc,
    /// `mono`: CLOCK_MONOTONIC in ns, for hvtrace's monotonic fallback.
    Mono,
}

impl TraceClock {
    /// The name `trace_clock` takes.
    pub fn name(self) -> &'static str {
        match self {
            TraceClock::X86Tsc => "x86-tsc",
            TraceClock::Mono => "mono",
        }
    }
}

/// What the instance records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceConfig {
    /// `set_event` specifications (`kvm:*`, `sched:sched_switch`).
    pub events: Vec<String>,
    /// Trace only these processes (all their threads, and threads and
    /// children they start later); `None`: every task.
    pub pid: Option<u32>,
    /// Per-CPU buffer size, KiB.
    pub buffer_kb: u32,
    /// The clock.
    pub clock: TraceClock,
    /// How full (percent) a CPU's buffer gets before its reader is woken.
    pub wake_percent: u32,
    /// Where tracefs is (default [`DEFAULT_TRACEFS`], or `HVTRACE_TRACEFS`).
    pub tracefs: Option<PathBuf>,
}

impl InstanceConfig {
    /// The default events ([`DEFAULT_EVENTS`]) of process `pid`,
    /// 1 MiB per CPU, TSC clock, woken at 1 %.
    pub fn new(pid: Option<u32>) -> Self {
        InstanceConfig {
            events: DEFAULT_EVENTS.iter().map(|s| s.to_string()).collect(),
            pid,
            buffer_kb: 1024,
            clock: TraceClock::X86Tsc,
            wake_percent: 1,
            tracefs: None,
        }
    }
}

/// What is recorded unless asked otherwise: KVM's events, the scheduler's
/// switches (vCPUs preempted by the host) and thread renames (which thread
/// is which vCPU, named as the VMM starts it).
pub const DEFAULT_EVENTS: &[&str] = &["kvm:*", "sched:sched_switch", "task:task_rename"];

/// A CPU's loss counters from `per_cpu/cpuN/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Events overwritten before being read (overwrite mode).
    pub overrun: u64,
    /// Events lost to nested writers overflowing a page.
    pub commit_overrun: u64,
    /// Events refused because the buffer was full (discard mode, ours).
    pub dropped: u64,
}

impl CpuStats {
    /// Every event this CPU lost.
    pub fn lost(&self) -> u64 {
        self.overrun + self.commit_overrun + self.dropped
    }

    /// Reads the text of a `stats` file (`overrun: N` lines and others);
    /// `None` unless its three loss counters are there, each once.
    pub fn parse(text: &str) -> Option<CpuStats> {
        let (mut overrun, mut commit_overrun, mut dropped) = (None, None, None);
        for l in text.lines() {
            let (k, v) = l.split_once(':')?;
            let slot = match k.trim() {
                "overrun" => &mut overrun,
                "commit overrun" => &mut commit_overrun,
                "dropped events" => &mut dropped,
                _ => continue,
            };
            if slot.replace(v.trim().parse::<u64>().ok()?).is_some() {
                return None;
            }
        }
        Some(CpuStats { overrun: overrun?, commit_overrun: commit_overrun?, dropped: dropped? })
    }
}

/// Bytes a `stats` text may have (the kernel's is about 200).
const STATS_MAX: usize = 4096;

/// Reads a file in one `read` call. The kernel renders a `stats` file
/// anew on every call and serves each call from its offset in that
/// rendering, so text joined from several calls splices two renderings
/// whose counters moved in between: std's `read_to_string` reads in
/// 32-byte steps and once read `dropped events: 33589` as `335899`.
fn read_in_one_call(r: &mut impl Read) -> io::Result<String> {
    let mut buf = vec![0u8; STATS_MAX];
    let n = loop {
        match r.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    if n == buf.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("longer than {STATS_MAX} bytes")));
    }
    buf.truncate(n);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A created instance; removed on drop.
#[derive(Debug)]
pub struct Instance {
    dir: PathBuf,
    /// Stale instances removed when this one was created.
    pub removed_stale: Vec<String>,
}

fn tracefs_root(cfg: &InstanceConfig) -> PathBuf {
    cfg.tracefs
        .clone()
        .or_else(|| std::env::var_os("HVTRACE_TRACEFS").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TRACEFS))
}

/// Finds tracefs at `root`, mounting it there if it is the default place
/// and nothing is mounted yet.
fn find_tracefs(root: &Path) -> Result<(), FtraceError> {
    let instances = root.join("instances");
    match fs::metadata(&instances) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(FtraceError::NotPermitted { what: format!("reading tracefs at {}", root.display()), source: e })
        }
        Err(_) => {}
    }
    let has_tracefs =
        fs::read_to_string("/proc/filesystems").map(|s| s.lines().any(|l| l.ends_with("\ttracefs"))).unwrap_or(false);
    if !has_tracefs {
        return Err(FtraceError::NoTracefs("this kernel has no tracefs (built without CONFIG_TRACING?)".into()));
    }
    if root != Path::new(DEFAULT_TRACEFS) || !root.is_dir() {
        return Err(FtraceError::NoTracefs(format!(
            "{} is not a mounted tracefs (no instances directory)",
            root.display()
        )));
    }
    hvtrace_sys::tracefs::mount_tracefs(root).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => {
            FtraceError::NotPermitted { what: format!("mounting tracefs at {}", root.display()), source: e }
        }
        _ => {
            FtraceError::NoTracefs(format!("tracefs is not mounted at {} and mounting it failed: {e}", root.display()))
        }
    })?;
    if !instances.is_dir() {
        return Err(FtraceError::NoTracefs(format!("{} has no instances directory after mounting", root.display())));
    }
    Ok(())
}

/// Removes instances named `hvtrace-PID-…` whose process is gone.
fn remove_stale(instances: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(instances) else { return removed };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(INSTANCE_PREFIX).and_then(|r| r.split('-').next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() && fs::remove_dir(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// The thread ids of process `pid`.
pub fn threads_of(pid: u32) -> io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

impl Instance {
    /// Creates and configures an instance (recording still off: see
    /// [`Instance::set_tracing`]).
    pub fn create(cfg: &InstanceConfig) -> Result<Instance, FtraceError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = tracefs_root(cfg);
        find_tracefs(&root)?;
        let instances = root.join("instances");
        let removed_stale = remove_stale(&instances);
        let name = format!("{INSTANCE_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = instances.join(&name);
        fs::create_dir(&dir).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => FtraceError::NotPermitted {
                what: format!("creating the tracefs instance {}", dir.display()),
                source: e,
            },
            _ => FtraceError::Io { what: format!("creating the tracefs instance {}", dir.display()), source: e },
        })?;
        let inst = Instance { dir, removed_stale };
        inst.configure(cfg)?;
        Ok(inst)
    }

    fn configure(&self, cfg: &InstanceConfig) -> Result<(), FtraceError> {
        self.set_tracing(false)?;
        self.write("trace_clock", cfg.clock.name())?;
        self.write("buffer_size_kb", &cfg.buffer_kb.to_string())?;
        // Discard mode, as hvtrace's rings: a full buffer refuses new events
        // (counted in `stats`) rather than overwriting unread ones.
        self.write("options/overwrite", "0")?;
        if self.dir.join("buffer_percent").exists() {
            self.write("buffer_percent", &cfg.wake_percent.to_string())?;
        }
        if let Some(pid) = cfg.pid {
            // Threads and children started later join the filter.
            self.write("options/event-fork", "1")?;
            let mut traced = Vec::new();
            // Twice: a thread started while the first list was written is
            // not yet followed by event-fork, but is in the second list.
            for _ in 0..2 {
                let tids = threads_of(pid).map_err(|e| FtraceError::NoProcess { pid, source: e })?;
                let new: Vec<String> = tids.iter().filter(|t| !traced.contains(*t)).map(u32::to_string).collect();
                if !new.is_empty() {
                    self.append("set_event_pid", &new.join(" "))?;
                }
                traced = tids;
            }
        }
        for spec in &cfg.events {
            self.append("set_event", spec).map_err(|e| match e {
                FtraceError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidInput => {
                    FtraceError::UnknownEvent(spec.clone())
                }
                e => e,
            })?;
        }
        Ok(())
    }

    /// The instance directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn io_err(&self, what: &str, file: &str) -> impl FnOnce(io::Error) -> FtraceError {
        let what = format!("{what} {}", self.dir.join(file).display());
        move |source| FtraceError::Io { what, source }
    }

    /// Writes `value` to a control file (replacing its setting).
    pub fn write(&self, file: &str, value: &str) -> Result<(), FtraceError> {
        let r =
            OpenOptions::new().write(true).open(self.dir.join(file)).and_then(|mut f| f.write_all(value.as_bytes()));
        r.map_err(self.io_err("writing", file))
    }

    /// Appends `value` to a control file (`set_event`, `set_event_pid`).
    fn append(&self, file: &str, value: &str) -> Result<(), FtraceError> {
        let r =
            OpenOptions::new().append(true).open(self.dir.join(file)).and_then(|mut f| f.write_all(value.as_bytes()));
        r.map_err(self.io_err("appending to", file))
    }

    /// Reads a control file.
    pub fn read(&self, file: &str) -> Result<String, FtraceError> {
        fs::read_to_string(self.dir.join(file)).map_err(self.io_err("reading", file))
    }

    /// Turns recording on or off (`tracing_on`). A `KernelSource` turns it
    /// on when it opens and off when its recording stops.
    pub fn set_tracing(&self, on: bool) -> Result<(), FtraceError> {
        self.write("tracing_on", if on { "1" } else { "0" })
    }

    /// The formats of the enabled events (those `set_event` lists).
    pub fn event_formats(&self) -> Result<Vec<EventFormat>, FtraceError> {
        let mut out = Vec::new();
        for line in self.read("set_event")?.lines() {
            let Some((system, name)) = line.trim().split_once(':') else { continue };
            let file = format!("events/{system}/{name}/format");
            out.push(parse_format(system, &self.read(&file)?)?);
        }
        Ok(out)
    }

    /// Bytes of one ring-buffer page (`buffer_subbuf_size_kb`; 4 KiB where
    /// the kernel predates it).
    pub fn page_size(&self) -> usize {
        self.read("buffer_subbuf_size_kb").ok().and_then(|s| s.trim().parse::<usize>().ok()).map_or(4096, |k| k * 1024)
    }

    /// Opens CPU `cpu`'s `trace_pipe_raw` (non-blocking).
    pub fn open_pipe(&self, cpu: u32) -> Result<File, FtraceError> {
        let file = format!("per_cpu/cpu{cpu}/trace_pipe_raw");
        hvtrace_sys::tracefs::open_nonblocking(&self.dir.join(&file)).map_err(self.io_err("opening", &file))
    }

    /// CPU `cpu`'s loss counters.
    pub fn cpu_stats(&self, cpu: u32) -> Result<CpuStats, FtraceError> {
        let file = format!("per_cpu/cpu{cpu}/stats");
        File::open(self.dir.join(&file))
            .and_then(|mut f| read_in_one_call(&mut f))
            .and_then(|text| {
                CpuStats::parse(&text).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("no overrun/dropped counts in {text:?}"))
                })
            })
            .map_err(self.io_err("reading", &file))
    }

    /// Removes the instance now (its files must be closed), reporting failure.
    pub fn remove(mut self) -> Result<(), FtraceError> {
        let dir = std::mem::take(&mut self.dir);
        fs::remove_dir(&dir).map_err(|source| FtraceError::Io { what: format!("removing {}", dir.display()), source })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kernel's `per_cpu/cpu0/stats` (6.18, `x86-tsc`).
    const STATS: &str = "entries: 12\noverrun: 3\ncommit overrun: 2\nbytes: 4056\n\
                         oldest event ts: 41087813276251\nnow ts: 41087831467073\n\
                         dropped events: 33589\nread events: 90211\n";

    /// A file served like a kernel `stats` file: every `read` renders the
    /// text anew (here `dropped events` grows by 10 a call, `entries`
    /// shrinks as a reader drains) and copies from the caller's offset.
    struct Regenerated {
        calls: u64,
        offset: usize,
    }

    impl Read for Regenerated {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let text = format!(
                "entries: {}\noverrun: 0\ncommit overrun: 0\nbytes: 0\ndropped events: {}\n",
                1000 - self.calls * 100,
                33589 + self.calls * 10
            );
            self.calls += 1;
            let rest = text.as_bytes().get(self.offset..).unwrap_or_default();
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.offset += n;
            Ok(n)
        }
    }

    #[test]
    fn the_three_loss_counters_are_read_and_summed() {
        let s = CpuStats::parse(STATS).unwrap();
        assert_eq!(s, CpuStats { overrun: 3, commit_overrun: 2, dropped: 33589 });
        assert_eq!(s.lost(), 33594);
    }

    #[test]
    fn a_stats_text_without_a_counter_or_with_a_mangled_one_is_refused() {
        assert_eq!(CpuStats::parse(&STATS.replace("dropped events", "droppeed events")), None);
        assert_eq!(CpuStats::parse(&STATS.replace("overrun: 3", "overrun: x")), None);
        assert_eq!(CpuStats::parse(&format!("{STATS}dropped events: 1\n")), None);
        assert_eq!(CpuStats::parse("pped events: 9\n"), None);
    }

    #[test]
    fn a_file_rendered_anew_on_each_read_is_read_in_one_call() {
        // Read in 32-byte steps (as std's read_to_string began): renderings spliced.
        let (mut file, mut spliced, mut step) = (Regenerated { calls: 0, offset: 0 }, Vec::new(), [0; 32]);
        while let n @ 1.. = file.read(&mut step).unwrap() {
            spliced.extend_from_slice(&step[..n]);
        }
        let spliced = String::from_utf8(spliced).unwrap();
        assert_ne!(CpuStats::parse(&spliced).map(|s| s.dropped), Some(33589), "{spliced:?}");
        let one = read_in_one_call(&mut Regenerated { calls: 0, offset: 0 }).unwrap();
        assert_eq!(CpuStats::parse(&one).unwrap().dropped, 33589, "{one:?}");
    }

    #[test]
    fn a_stats_file_too_long_for_one_call_is_an_error_not_a_cut_text() {
        let long = "x".repeat(STATS_MAX);
        assert!(read_in_one_call(&mut long.as_bytes()).is_err());
        assert_eq!(read_in_one_call(&mut STATS.as_bytes()).unwrap(), STATS);
    }
}
