//! The import: a xentrace file in, a CTF trace directory out, one stream
//! per pCPU, nothing dropped without a count.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use hvtrace_core::metadata::{self, ClockDesc, TraceDesc};

use crate::abi::*;
use crate::classes::{hypercall_args, ClassId, Lookup, Vendor, CLASSES, CURRENT_LEN};
use crate::parse::{Cut, Damage, Item, Parser, Record, Step};
use crate::stream::StreamWriter;

/// xenalyze's TSC frequency when none is given (`DEFAULT_CPU_HZ`).
pub const DEFAULT_CPU_HZ: u64 = 2_400_000_000;
/// Bytes read from the file at a time.
const CHUNK: usize = 1 << 20;

/// How to import.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// TSC ticks per second of the traced host: the file does not say.
    /// `None`: [`DEFAULT_CPU_HZ`], reported as assumed.
    pub cpu_hz: Option<u64>,
    /// Whose exit codes the VM-exit records carry (the file does not say).
    pub vendor: Vendor,
}

/// What was imported from one pCPU's windows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSummary {
    /// Records written to the CTF stream (fillers excluded).
    pub records: u64,
    /// Events xentrace reported lost (sum of `TRC_LOST_RECORDS` counts).
    pub lost: u64,
    /// Windows of this pCPU in the file.
    pub windows: u64,
    /// `TRC_TRACE_WRAP_BUFFER` fillers skipped.
    pub wrap_fillers: u64,
    /// Records whose TSC was below an earlier one of the pCPU (tracing
    /// restarted, or TSC not synchronised): written at the earlier time, as
    /// a CTF stream's clock may not go back.
    pub tsc_backwards: u64,
    /// Records before the pCPU's first TSC (timestamped 0).
    pub before_first_tsc: u64,
    /// CTF packets written.
    pub packets: u64,
}

/// The outcome of an import that wrote a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    /// The trace directory.
    pub output: PathBuf,
    /// Per pCPU.
    pub cpus: BTreeMap<u32, CpuSummary>,
    /// Records written, per class (index [`ClassId`] as usize).
    pub by_class: Vec<u64>,
    /// Records of a known event whose word count fits no class of it: kept as `xen_raw`.
    pub unexpected_words: u64,
    /// The TSC frequency declared in the trace's clock.
    pub cpu_hz: u64,
    /// `cpu_hz` is the default, not given.
    pub cpu_hz_assumed: bool,
    /// Bytes of the file read and imported.
    pub bytes_imported: u64,
    /// The file ended mid-window (xentrace stopped mid-write): every complete
    /// record before was imported.
    pub cut: Option<Cut>,
    /// The file holds bytes that are not xentrace records from this offset:
    /// every record before was imported, none after.
    pub damage: Option<Damage>,
}

impl ImportReport {
    /// Records written, all pCPUs.
    pub fn records(&self) -> u64 {
        self.cpus.values().map(|c| c.records).sum()
    }

    /// Events xentrace lost, all pCPUs.
    pub fn lost(&self) -> u64 {
        self.cpus.values().map(|c| c.lost).sum()
    }

    /// Records written of class `c`.
    pub fn count(&self, c: ClassId) -> u64 {
        self.by_class[c as usize]
    }
}

/// Why nothing (or not everything) could be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the input failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The input.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The input has no bytes.
    #[error("{0} is empty: a xentrace file starts with a CPU-change record")]
    Empty(PathBuf),
    /// The input does not start like a xentrace file; nothing was written.
    #[error("{path} is not a xentrace file: {damage}")]
    NotXentrace {
        /// The input.
        path: PathBuf,
        /// What was found.
        damage: Damage,
    },
    /// The input ends before its first window is complete; nothing was written.
    #[error("{path} is cut before its first record: {cut}")]
    TooShort {
        /// The input.
        path: PathBuf,
        /// Where.
        cut: Cut,
    },
    /// The output directory holds files already.
    #[error("output directory {0} is not empty")]
    OutputNotEmpty(PathBuf),
    /// Writing the trace failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn write_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Write { path: path.to_path_buf(), source }
}

/// The metadata of an imported trace.
pub fn render_metadata(uuid: [u8; 16], cpu_hz: u64) -> String {
    let desc = TraceDesc {
        uuid,
        hostname: "unknown",
        domain: "xentrace",
        tracer_version: (0, 1, 0),
        clock: ClockDesc {
            name: "tsc",
            description: "TSC of the traced Xen host, frequency as given at import",
            freq: cpu_hz,
            offset_s: 0,
            offset: 0,
            precision: 0,
        },
    };
    let mut s = String::new();
    metadata::render(&mut s, &desc, CLASSES).expect("formatting into a String cannot fail");
    s
}

/// The vCPU a pCPU runs, as `(domid, vcpu)`, before anything says:
/// `DOMID_INVALID`.
pub const UNKNOWN_VCPU: (u16, u16) = (0x7ff4, 0xffff);

struct CpuState {
    writer: StreamWriter,
    /// The vCPU running here, from the last switch, runstate change to
    /// running, or lost-records record of this pCPU (as xenalyze tracks it).
    current: (u16, u16),
    /// Last TSC read from a record (what a record without one inherits).
    tsc: Option<u64>,
    /// Last timestamp written (never decreasing).
    ts: u64,
    summary: CpuSummary,
}

impl CpuState {
    /// The record's timestamp: its TSC, else the pCPU's last; never below
    /// the stream's previous one (counted when it would be).
    fn timestamp(&mut self, r: &Record<'_>) -> u64 {
        if r.tsc.is_some() {
            self.tsc = r.tsc;
        }
        let raw = self.tsc.unwrap_or_else(|| {
            self.summary.before_first_tsc += 1;
            0
        });
        if raw < self.ts {
            self.summary.tsc_backwards += 1;
        } else {
            self.ts = raw;
        }
        self.ts
    }

    /// Follows which vCPU runs on this pCPU, from the records that say.
    fn follow(&mut self, r: &Record<'_>) {
        let w = r.word(0);
        match (r.event, r.words()) {
            (TRC_SCHED_SWITCH, 4) => self.current = (r.word(2) as u16, r.word(3) as u16),
            // Written by the vCPU current when the ring had room again: `{u16 domid, u16 vcpu}`.
            (TRC_LOST_RECORDS, 4) => self.current = (r.word(1) as u16, (r.word(1) >> 16) as u16),
            // `{u16 vcpu, u16 domid}`, now running here.
            (e, 1) if runstates_of(e).is_some_and(|(_, new)| new == 0) => self.current = ((w >> 16) as u16, w as u16),
            _ => {}
        }
    }
}

/// Writes record `r` at `ts` as its class, `current` the vCPU running on
/// its pCPU: the class, and whether a known event had a word count its
/// class does not (it is then `xen_raw`).
fn encode(
    w: &mut StreamWriter,
    lookup: &Lookup,
    r: &Record<'_>,
    ts: u64,
    current: (u16, u16),
) -> io::Result<(ClassId, bool)> {
    let [d0, d1] = current.0.to_le_bytes();
    let [v0, v1] = current.1.to_le_bytes();
    let cur = [d0, d1, v0, v1];
    if let (Some((old, new)), 1) = (runstates_of(r.event), r.words()) {
        let id = ClassId::runstate_change;
        w.record(id as u32, ts, 6, |b| {
            b.extend_from_slice(r.data);
            b.extend_from_slice(&[old, new]);
        })?;
        return Ok((id, false));
    }
    if r.event == TRC_PV_HYPERCALL_V2 || r.event == TRC_PV_HYPERCALL_SUBCALL {
        let mut words = [0u32; TRC_MAX_WORDS];
        for (i, x) in words.iter_mut().enumerate().take(r.words()) {
            *x = r.word(i);
        }
        let Some((op, presence, args)) = hypercall_args(&words[..r.words()]) else {
            return Ok((raw(w, r, ts)?, true));
        };
        let id = if r.event == TRC_PV_HYPERCALL_V2 { ClassId::pv_hypercall } else { ClassId::pv_hypercall_subcall };
        w.record(id as u32, ts, CURRENT_LEN + 4 + 2 + 48, |b| {
            b.extend_from_slice(&cur);
            b.extend_from_slice(&op.to_le_bytes());
            b.extend_from_slice(&presence.to_le_bytes());
            for a in args {
                b.extend_from_slice(&a.to_le_bytes());
            }
        })?;
        return Ok((id, false));
    }
    match lookup.verbatim(r.event) {
        Some((class, words, prefixed)) if words == r.words() => {
            let id = ClassId::ALL[class as usize];
            let prefix: &[u8] = if prefixed { &cur } else { &[] };
            w.record(id as u32, ts, prefix.len() + r.data.len(), |b| {
                b.extend_from_slice(prefix);
                b.extend_from_slice(r.data);
            })?;
            Ok((id, false))
        }
        Some(_) => Ok((raw(w, r, ts)?, true)),
        None => Ok((raw(w, r, ts)?, false)),
    }
}

/// The trace being written.
struct Importer {
    dir: PathBuf,
    uuid: [u8; 16],
    cpu_hz: u64,
    lookup: Lookup,
    cpus: Vec<Option<CpuState>>,
    by_class: Vec<u64>,
    unexpected_words: u64,
    started: bool,
}

impl Importer {
    fn start(&mut self) -> Result<(), ImportError> {
        match std::fs::read_dir(&self.dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(ImportError::OutputNotEmpty(self.dir.clone()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir).map_err(write_err(&self.dir))?
            }
            Err(e) => return Err(write_err(&self.dir)(e)),
        }
        let md = self.dir.join("metadata");
        std::fs::write(&md, render_metadata(self.uuid, self.cpu_hz)).map_err(write_err(&md))?;
        self.started = true;
        Ok(())
    }

    fn cpu(&mut self, cpu: u32) -> Result<&mut CpuState, ImportError> {
        let i = cpu as usize;
        if self.cpus.len() <= i {
            self.cpus.resize_with(i + 1, || None);
        }
        if self.cpus[i].is_none() {
            let path = self.dir.join(format!("xentrace_{cpu}"));
            let writer = StreamWriter::create(&path, self.uuid, cpu).map_err(write_err(&path))?;
            self.cpus[i] =
                Some(CpuState { writer, current: UNKNOWN_VCPU, tsc: None, ts: 0, summary: CpuSummary::default() });
        }
        Ok(self.cpus[i].as_mut().expect("just created"))
    }

    fn window(&mut self, cpu: u32) -> Result<(), ImportError> {
        if !self.started {
            self.start()?;
        }
        self.cpu(cpu)?.summary.windows += 1;
        Ok(())
    }

    fn record(&mut self, r: &Record<'_>) -> io::Result<()> {
        let st = self.cpus[r.cpu as usize].as_mut().expect("a record follows its window");
        if r.event == TRC_TRACE_WRAP_BUFFER {
            // Filler to the end of the ring: its words are garbage.
            st.summary.wrap_fillers += 1;
            return Ok(());
        }
        let ts = st.timestamp(r);
        let current = st.current;
        st.follow(r);
        if r.event == TRC_LOST_RECORDS && r.words() == 4 {
            let lost = r.word(0) as u64;
            st.summary.lost += lost;
            st.writer.lose(lost)?;
        }
        let (class, unexpected) = encode(&mut st.writer, &self.lookup, r, ts, current)?;
        self.unexpected_words += unexpected as u64;
        st.summary.records += 1;
        self.by_class[class as usize] += 1;
        Ok(())
    }

    fn finish(self) -> Result<BTreeMap<u32, CpuSummary>, ImportError> {
        let mut out = BTreeMap::new();
        for (cpu, st) in self.cpus.into_iter().enumerate() {
            if let Some(mut st) = st {
                let path = self.dir.join(format!("xentrace_{cpu}"));
                st.summary.packets = st.writer.finish().map_err(write_err(&path))?;
                out.insert(cpu as u32, st.summary);
            }
        }
        Ok(out)
    }
}

fn raw(w: &mut StreamWriter, r: &Record<'_>, ts: u64) -> io::Result<ClassId> {
    let id = ClassId::xen_raw;
    w.record(id as u32, ts, 8 + r.data.len(), |b| {
        b.extend_from_slice(&r.event.to_le_bytes());
        b.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        b.extend_from_slice(r.data);
    })?;
    Ok(id)
}

/// Imports the xentrace file at `input` into a new (or empty) trace
/// directory `output`.
///
/// A file cut mid-record or damaged part-way yields a trace of every record
/// before the cut or damage, and says so in the report; a file that does
/// not start like a xentrace file yields an error and no trace.
pub fn import_file(input: &Path, output: &Path, opts: ImportOptions) -> Result<ImportReport, ImportError> {
    let read_err = |source| ImportError::Read { path: input.to_path_buf(), source };
    let f = std::fs::File::open(input).map_err(read_err)?;
    import(f, input, output, opts)
}

/// [`import_file`] from any reader; `name` names it in errors.
pub fn import(
    mut input: impl Read,
    name: &Path,
    output: &Path,
    opts: ImportOptions,
) -> Result<ImportReport, ImportError> {
    let read_err = |source| ImportError::Read { path: name.to_path_buf(), source };
    let cpu_hz = opts.cpu_hz.unwrap_or(DEFAULT_CPU_HZ);
    let mut imp = Importer {
        dir: output.to_path_buf(),
        uuid: *uuid::Uuid::new_v4().as_bytes(),
        cpu_hz,
        lookup: Lookup::new(opts.vendor),
        cpus: Vec::new(),
        by_class: vec![0; CLASSES.len()],
        unexpected_words: 0,
        started: false,
    };
    let mut parser = Parser::new();
    let mut buf = vec![0u8; CHUNK];
    let (mut start, mut end, mut eof) = (0usize, 0usize, false);
    let mut total = 0u64;
    let (cut, damage) = loop {
        match parser.next(&buf[start..end]) {
            Ok(Step::Item(item, n)) => {
                match item {
                    Item::Window { cpu, .. } => imp.window(cpu)?,
                    Item::Record(r) => imp.record(&r).map_err(|e| {
                        let path = imp.dir.join(format!("xentrace_{}", r.cpu));
                        write_err(&path)(e)
                    })?,
                }
                start += n;
            }
            Ok(Step::NeedMore) if eof => break (parser.finish(end - start), None),
            Ok(Step::NeedMore) => {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
                let n = read_some(&mut input, &mut buf[end..]).map_err(read_err)?;
                total += n as u64;
                eof = n == 0;
                end += n;
            }
            Err(d) => break (None, Some(d)),
        }
    };
    if !imp.started {
        return Err(match (damage, cut) {
            _ if total == 0 => ImportError::Empty(name.to_path_buf()),
            (Some(damage), _) => ImportError::NotXentrace { path: name.to_path_buf(), damage },
            (None, Some(cut)) => ImportError::TooShort { path: name.to_path_buf(), cut },
            (None, None) => ImportError::Empty(name.to_path_buf()),
        });
    }
    let by_class = std::mem::take(&mut imp.by_class);
    let unexpected_words = imp.unexpected_words;
    let dir = imp.dir.clone();
    let cpus = imp.finish()?;
    Ok(ImportReport {
        output: dir,
        cpus,
        by_class,
        unexpected_words,
        cpu_hz,
        cpu_hz_assumed: opts.cpu_hz.is_none(),
        bytes_imported: parser.offset(),
        cut,
        damage,
    })
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_some(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
