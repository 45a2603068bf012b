//! The kernel source's reader: one thread sleeping in `epoll` on every
//! CPU's `trace_pipe_raw` (woken by the kernel when a CPU's buffer reaches
//! the instance's `buffer_percent`, never by a timer) and on a stop
//! eventfd; each wake-up drains that CPU's pages into packets of its stream
//! file `kernel_<cpu>`. Stopping turns recording off, drains every CPU, ends
//! each stream with the kernel's final lost count, and removes the instance.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

use hvtrace_sys::{EventFd, Poller};

use crate::convert::{EventTable, KernelStream, StreamCounts};
use crate::tracefs::{Instance, InstanceConfig};
use crate::FtraceError;

/// Stream files of the kernel are named `kernel_<cpu>`.
pub use hvtrace_core::metadata::KERNEL_STREAM_PREFIX as STREAM_PREFIX;

/// The name of CPU `cpu`'s kernel stream file.
pub fn stream_file_name(cpu: u32) -> String {
    format!("{STREAM_PREFIX}_{cpu}")
}

/// A configured instance, recording into the kernel's per-CPU buffers
/// until [`KernelSource::start`]'s reader drains them: its event classes
/// are known, so its metadata can be written before the first page.
#[derive(Debug)]
pub struct KernelSource {
    instance: Instance,
    table: EventTable,
    cpus: Vec<u32>,
}

/// What one CPU's stream holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CpuReport {
    /// The CPU.
    pub cpu: u32,
    /// Packets, records, losses.
    pub counts: StreamCounts,
    /// The kernel's own final loss count for the CPU (`stats`).
    pub kernel_lost: u64,
}

/// The end of a recording.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KernelReport {
    /// Event names by CTF id.
    pub events: Vec<String>,
    /// Per CPU.
    pub per_cpu: Vec<CpuReport>,
    /// Write errors (the stream's bytes after one are lost, and said so here).
    pub write_errors: Vec<String>,
}

impl KernelReport {
    /// Records of event `name` over all CPUs.
    pub fn count(&self, name: &str) -> u64 {
        let Some(id) = self.events.iter().position(|e| e == name) else { return 0 };
        self.per_cpu.iter().map(|c| c.counts.by_event.get(id).copied().unwrap_or(0)).sum()
    }

    /// Records of event `name` by thread `tid` over all CPUs.
    pub fn count_for(&self, tid: u32, name: &str) -> u64 {
        let Some(id) = self.events.iter().position(|e| e == name) else { return 0 };
        let of = |c: &CpuReport| c.counts.by_thread.get(&tid).and_then(|v| v.get(id).copied()).unwrap_or(0);
        self.per_cpu.iter().map(of).sum()
    }

    /// Sum of a per-CPU figure.
    pub fn total(&self, f: impl Fn(&CpuReport) -> u64) -> u64 {
        self.per_cpu.iter().map(f).sum()
    }
}

impl KernelSource {
    /// Creates the instance for `cfg`, reads its events' formats and turns
    /// recording on: the one place that does. Every caller wants the
    /// kernel's events from before the trace says it has begun (its
    /// metadata, a consumer's attach after which the VMM may run), and
    /// the kernel's buffers hold them until [`KernelSource::start`]'s
    /// reader drains them (what they cannot hold is counted in `stats`,
    /// and so in the trace). Recording ends with [`KernelRecorder::stop`],
    /// or when the source is dropped (the instance is removed).
    pub fn open(cfg: &InstanceConfig) -> Result<KernelSource, FtraceError> {
        let instance = Instance::create(cfg)?;
        let table = EventTable::new(instance.event_formats()?)?;
        let cpus = hvtrace_sys::cpu::online_cpus().into_iter().map(|c| c as u32).collect();
        instance.set_tracing(true)?;
        Ok(KernelSource { instance, table, cpus })
    }

    /// The TSDL of the kernel's stream class and events, to append to the
    /// trace's metadata.
    pub fn metadata(&self) -> String {
        self.table.metadata()
    }

    /// The event classes.
    pub fn table(&self) -> &EventTable {
        &self.table
    }

    /// The instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Stale instances of killed runs removed when this one was created.
    pub fn removed_stale(&self) -> &[String] {
        &self.instance.removed_stale
    }

    /// Creates the stream file `kernel_<cpu>` of every CPU with `create`
    /// (the trace directory's owner creates its files: the consumer's under
    /// its directory descriptor, with the trace's mode and group) and
    /// starts the reader thread, which drains what was recorded since
    /// [`KernelSource::open`]. `uuid` is the trace's (packet headers).
    pub fn start(
        self,
        create: &mut dyn FnMut(&str) -> io::Result<File>,
        uuid: [u8; 16],
    ) -> Result<KernelRecorder, FtraceError> {
        let stop = Arc::new(EventFd::new().map_err(FtraceError::io("creating the stop eventfd"))?);
        let mut cpus = Vec::new();
        for &cpu in &self.cpus {
            let name = stream_file_name(cpu);
            let file = create(&name)
                .map_err(|source| FtraceError::Io { what: format!("creating the stream file {name}"), source })?;
            let pipe = self.instance.open_pipe(cpu)?;
            cpus.push(CpuReader {
                cpu,
                name,
                pipe,
                out: BufWriter::new(file),
                stream: KernelStream::new(cpu, uuid),
                lost: 0,
            });
        }
        let page = vec![0u8; self.instance.page_size()];
        let reader = Reader { cpus, source: self, stop: Arc::clone(&stop), page, errors: Vec::new() };
        let thread = std::thread::Builder::new()
            .name("hvtrace-ftrace".into())
            .spawn(move || reader.run())
            .map_err(FtraceError::io("spawning the kernel reader thread"))?;
        Ok(KernelRecorder { stop, thread: Some(thread) })
    }
}

const STOP: u64 = u64::MAX;

struct CpuReader {
    cpu: u32,
    /// The stream file's name in the trace directory.
    name: String,
    pipe: File,
    out: BufWriter<File>,
    stream: KernelStream,
    /// The kernel's loss count at the last drain.
    lost: u64,
}

/// Fields drop in order: the pipes close before the instance is removed
/// (tracefs refuses to remove an instance with open files).
struct Reader {
    cpus: Vec<CpuReader>,
    source: KernelSource,
    stop: Arc<EventFd>,
    page: Vec<u8>,
    errors: Vec<String>,
}

impl Reader {
    fn run(mut self) -> Result<KernelReport, FtraceError> {
        // Made here: an epoll instance's event buffer does not cross threads.
        let mut poller = Poller::new().map_err(FtraceError::io("creating an epoll instance"))?;
        poller.add(&*self.stop, STOP).map_err(FtraceError::io("watching the stop eventfd"))?;
        for (i, c) in self.cpus.iter().enumerate() {
            poller.add(&c.pipe, i as u64).map_err(FtraceError::io("watching trace_pipe_raw"))?;
        }
        let mut ready = Vec::new();
        'wait: loop {
            poller.wait(&mut ready, None).map_err(FtraceError::io("waiting in epoll"))?;
            for ev in ready.clone() {
                if ev.token == STOP {
                    let _ = self.stop.drain();
                    break 'wait;
                }
                self.drain(ev.token as usize)?;
            }
        }
        // The clean end: no new events, then everything that is left.
        self.source.instance.set_tracing(false)?;
        for i in 0..self.cpus.len() {
            self.drain(i)?;
        }
        let fallback_ts = self.cpus.iter().filter_map(|c| c.stream.last_timestamp()).max().unwrap_or(0);
        let mut per_cpu = Vec::new();
        for c in &mut self.cpus {
            let kernel_lost = self.source.instance.cpu_stats(c.cpu)?.lost();
            let mut bytes = Vec::new();
            c.stream.finish(kernel_lost, fallback_ts, &mut bytes);
            if let Err(e) =
                c.out.write_all(&bytes).and_then(|()| c.out.flush()).and_then(|()| c.out.get_ref().sync_all())
            {
                self.errors.push(format!("{}: {e}", c.name));
            }
            per_cpu.push(CpuReport { cpu: c.cpu, counts: c.stream.counts().clone(), kernel_lost });
        }
        let events = self.source.table.events().iter().map(|e| e.name.clone()).collect();
        let Reader { cpus, source, errors, .. } = self;
        drop(cpus);
        source.instance.remove()?;
        Ok(KernelReport { events, per_cpu, write_errors: errors })
    }

    /// Reads CPU `i`'s pages until the pipe is empty, then its loss count,
    /// which the next packet carries: a full buffer refuses *new* events,
    /// so these losses came after the pages just read.
    fn drain(&mut self, i: usize) -> Result<(), FtraceError> {
        let c = &mut self.cpus[i];
        let lost = c.lost;
        let mut bytes = Vec::new();
        loop {
            match c.pipe.read(&mut self.page) {
                Ok(0) => break,
                Ok(n) => c.stream.page(&self.source.table, &self.page[..n], lost, &mut bytes),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(FtraceError::Io { what: format!("reading cpu{} trace_pipe_raw", c.cpu), source })
                }
            }
        }
        c.lost = self.source.instance.cpu_stats(c.cpu)?.lost();
        if let Err(e) = c.out.write_all(&bytes) {
            self.errors.push(format!("{}: {e}", c.name));
        }
        Ok(())
    }
}

/// A recording in progress.
#[derive(Debug)]
pub struct KernelRecorder {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<Result<KernelReport, FtraceError>>>,
}

impl KernelRecorder {
    /// Stops recording, drains every CPU, ends the streams and removes the
    /// instance.
    pub fn stop(mut self) -> Result<KernelReport, FtraceError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<KernelReport, FtraceError> {
        let _ = self.stop.signal();
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(Err(FtraceError::ReaderPanicked)),
            None => Err(FtraceError::ReaderPanicked),
        }
    }
}

impl Drop for KernelRecorder {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.finish();
        }
    }
}
