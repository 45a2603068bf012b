//! A trace directory on disk: `metadata`, the stream files `<channel>_<cpu>`
//! and perhaps an `INCOMPLETE` note; and the plain packet walk over a
//! stream's bytes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use hvtrace_core::decode::{packet_info, records, DecodeError, PacketInfo, Record, Schema};
use hvtrace_core::metadata;

use crate::account::{Account, ACCOUNT};
use crate::tsdl::{self, Metadata, MetadataError, TraceSchema};

/// Name of the note the consumer leaves when a trace was cut short.
pub const INCOMPLETE: &str = "INCOMPLETE";

/// The largest metadata file read: a host's metadata log is at most 4 MiB
/// (`hvtrace_proto::MAX_METADATA_LEN`: its own classes and those it
/// registers during the session), plus the kernel's classes when the trace
/// has kernel streams; 8 MiB holds both and bounds what a crafted file costs.
pub const MAX_METADATA: u64 = 8 << 20;

/// The most of an `INCOMPLETE` note read (the consumer writes it empty).
const MAX_NOTE: u64 = 64 << 10;

/// Reads `path` (symlinks followed) only if it is a regular file, at most
/// `limit` bytes. A FIFO, device or socket is refused before it is opened
/// (opening a FIFO would wait for a writer; `/dev/zero` never ends), and
/// checked again on the open file in case it was swapped in between; the
/// open neither blocks nor takes a terminal. A file over `limit` is refused
/// from its size, without reading it.
pub(crate) fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let regular = |m: &std::fs::Metadata| -> io::Result<()> {
        if m.is_file() {
            return Ok(());
        }
        let what = kind_name(&m.file_type());
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file (a {what})")))
    };
    let before = std::fs::metadata(path)?;
    regular(&before)?;
    let file = std::fs::File::options().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let m = file.metadata()?;
    regular(&m)?;
    if (m.dev(), m.ino()) != (before.dev(), before.ino()) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "replaced while being opened"));
    }
    if m.len() > limit {
        return Err(too_large(m.len(), limit));
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    // `take`: the file may grow after the size check.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64, limit));
    }
    Ok(bytes)
}

fn too_large(len: u64, limit: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{len} bytes, more than the {limit} read at most"))
}

/// What a file that is not regular is, for messages: "directory", "FIFO", …
fn kind_name(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() || ft.is_block_device() {
        "device"
    } else {
        "special file"
    }
}

/// Why a trace directory cannot be read.
#[derive(Debug)]
pub enum ReadError {
    /// A file or directory cannot be read or written.
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The directory holds no `metadata` file.
    NotATrace {
        /// The directory.
        path: PathBuf,
    },
    /// The metadata file is not the TSDL hvtrace writes.
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong, and where.
        error: MetadataError,
    },
    /// A packet `hvtrace check` finds intact does not decode (the checker
    /// and the reader disagree: a bug, reported rather than hidden).
    Undecodable {
        /// The stream file.
        path: PathBuf,
        /// Byte offset of the packet.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The repair's output directory is not usable.
    Output {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io { path, what, source } => write!(f, "cannot {what} {}: {source}", path.display()),
            ReadError::NotATrace { path } => {
                write!(f, "{} is not a trace directory (no metadata file)", path.display())
            }
            ReadError::Metadata { path, error } => write!(f, "{}: {error}", path.display()),
            ReadError::Undecodable { path, offset, what } => {
                write!(f, "{}: packet at byte {offset} {what}", path.display())
            }
            ReadError::Output { path, why } => write!(f, "{}: {why}", path.display()),
        }
    }
}

/// No `source()`: every variant's message already ends with its cause, and
/// a report that walks the chain (`{:#}`) would print it twice.
impl std::error::Error for ReadError {}

pub(crate) fn io_err<'p>(path: &'p Path, what: &'static str) -> impl FnOnce(io::Error) -> ReadError + 'p {
    move |source| ReadError::Io { path: path.to_path_buf(), what, source }
}

/// One stream file of a trace directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamFile {
    /// Full path.
    pub path: PathBuf,
    /// File name, `<channel>_<cpu>`.
    pub name: String,
    /// The CPU its name says.
    pub cpu: u32,
}

impl StreamFile {
    /// The whole file (stream files are read into memory), if it is still
    /// a regular file (see [`TraceDir::open`]).
    pub fn read(&self) -> Result<Vec<u8>, ReadError> {
        read_regular(&self.path, u64::MAX).map_err(io_err(&self.path, "read"))
    }
}

/// The CPU of a stream file name `<channel>_<cpu>`.
pub fn stream_cpu(name: &str) -> Option<u32> {
    let (channel, cpu) = name.rsplit_once('_')?;
    if channel.is_empty() || cpu.is_empty() || !cpu.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    cpu.parse().ok()
}

/// An opened trace directory.
#[derive(Clone, Debug)]
pub struct TraceDir {
    /// The directory.
    pub path: PathBuf,
    /// The parsed metadata.
    pub metadata: Metadata,
    /// The metadata file exactly as read.
    pub metadata_text: String,
    /// Stream files, by name.
    pub streams: Vec<StreamFile>,
    /// The text of the `INCOMPLETE` marker (empty as the consumer writes
    /// it), if the trace was cut short.
    pub incomplete: Option<String>,
    /// The kernel's stream files (`kernel_<cpu>`, stream class 1, written by
    /// `hvtrace-ftrace`), whose event classes are [`Metadata::kernel`]:
    /// `analyze`, `check` and `repair` read them.
    pub kernel_streams: Vec<StreamFile>,
    /// Other non-empty regular, non-hidden files: CTF readers (babeltrace2)
    /// take every such file for a stream and fail on it (empty ones they skip).
    pub foreign: Vec<String>,
    /// Names of stream files on something else than a regular file, and
    /// what it is (`"directory"`, `"FIFO"`, …).
    pub not_files: Vec<(String, &'static str)>,
    /// The consumer's account ([`crate::account`]), if the trace has one:
    /// parsed, or why it cannot be.
    pub account: Option<Result<Account, String>>,
}

/// The account can only be a few lines per stream and loss range.
const ACCOUNT_MAX: u64 = 4 << 20;

/// Reads and parses the consumer's account (a regular file of bounded
/// size, as every file `check` reads).
fn read_account(path: &Path) -> Result<Account, String> {
    let bytes = read_regular(path, ACCOUNT_MAX).map_err(|e| e.to_string())?;
    Account::parse(&String::from_utf8_lossy(&bytes))
}

impl TraceDir {
    /// Reads `path/metadata` and lists the stream files.
    ///
    /// Only regular files are read: a `metadata` that is a FIFO, a device,
    /// or larger than [`MAX_METADATA`] is damage ([`ReadError::Metadata`]),
    /// found without waiting on it or reading it.
    pub fn open(path: &Path) -> Result<TraceDir, ReadError> {
        let entries = std::fs::read_dir(path).map_err(io_err(path, "open trace directory"))?;
        let md_path = path.join("metadata");
        let bad_metadata =
            |msg: String| ReadError::Metadata { path: md_path.clone(), error: MetadataError { line: 0, msg } };
        let metadata_text = match read_regular(&md_path, MAX_METADATA) {
            Ok(b) => String::from_utf8(b)
                .map_err(|e| bad_metadata(format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::NotATrace { path: path.into() }),
            Err(e) if matches!(e.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData) => {
                return Err(bad_metadata(e.to_string()))
            }
            Err(e) => return Err(io_err(&md_path, "read")(e)),
        };
        let metadata =
            tsdl::parse(&metadata_text).map_err(|error| ReadError::Metadata { path: md_path.clone(), error })?;
        let mut streams = Vec::new();
        let mut incomplete = None;
        let mut foreign = Vec::new();
        let mut not_files = Vec::new();
        let mut account = None;
        let mut kernel_streams = Vec::new();
        for e in entries {
            let e = e.map_err(io_err(path, "list"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let ft = e.file_type().map_err(io_err(&e.path(), "stat"))?;
            if name == ACCOUNT {
                account = Some(read_account(&e.path()));
                continue;
            }
            if stream_cpu(&name).is_some() && !ft.is_file() && !name.starts_with('.') {
                not_files.push((name, kind_name(&ft)));
                continue;
            }
            if name.starts_with('.') || name == "metadata" || ft.is_dir() {
                continue;
            }
            if name == INCOMPLETE {
                let note = read_regular(&e.path(), MAX_NOTE).map_err(io_err(&e.path(), "read"))?;
                incomplete = Some(String::from_utf8_lossy(&note).trim().to_string());
            } else if let (Some(cpu), true) = (stream_cpu(&name), ft.is_file()) {
                let kernel = name.rsplit_once('_').is_some_and(|(p, _)| p == metadata::KERNEL_STREAM_PREFIX);
                let list = if kernel { &mut kernel_streams } else { &mut streams };
                list.push(StreamFile { path: e.path(), name, cpu });
            } else if e.metadata().map_err(io_err(&e.path(), "stat"))?.len() > 0 {
                foreign.push(name);
            }
        }
        streams.sort_by(|a, b| {
            (a.name.rsplit_once('_').map(|s| s.0), a.cpu).cmp(&(b.name.rsplit_once('_').map(|s| s.0), b.cpu))
        });
        foreign.sort();
        not_files.sort();
        kernel_streams.sort_by_key(|s| s.cpu);
        Ok(TraceDir {
            path: path.to_path_buf(),
            metadata,
            metadata_text,
            streams,
            incomplete,
            kernel_streams,
            foreign,
            not_files,
            account,
        })
    }

    /// The event classes.
    pub fn schema(&self) -> &TraceSchema {
        &self.metadata.schema
    }

    /// The warning every walk of a trace cut short starts with (the first
    /// of [`crate::Merge::warnings`]), if it was.
    pub fn incomplete_warning(&self) -> Option<String> {
        self.incomplete.as_ref().map(|note| {
            if note.is_empty() {
                "the trace was cut short (INCOMPLETE)".to_string()
            } else {
                format!("the trace was cut short (INCOMPLETE: {note})")
            }
        })
    }
}

/// One packet of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'b> {
    /// Byte offset in the stream file.
    pub offset: usize,
    /// Its header and context.
    pub info: PacketInfo,
    /// Its bytes (`info.packet_len` of them).
    pub bytes: &'b [u8],
}

impl<'b> Packet<'b> {
    /// Its records; a record that does not decode comes as an `Err` item
    /// and ends the iteration.
    pub fn records<'s, S: Schema + ?Sized>(
        &self,
        schema: &'s S,
    ) -> impl Iterator<Item = Result<Record<'b>, DecodeError>> + use<'b, 's, S> {
        // The header decoded when the packet was found, so this is `Ok`.
        records(self.bytes, schema).ok().into_iter().flat_map(|(_, it)| it)
    }
}

/// Walks the packets of a stream file from its start, each where the
/// previous one ends; stops after the first error (see
/// [`crate::check_stream`] for a walk that resynchronises after damage).
pub fn packets(bytes: &[u8]) -> Packets<'_> {
    Packets { bytes, at: 0, failed: false }
}

/// Iterator of [`packets`].
#[derive(Clone, Debug)]
pub struct Packets<'b> {
    bytes: &'b [u8],
    at: usize,
    failed: bool,
}

/// A packet that does not decode, at `offset` in the stream file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketError {
    /// Byte offset in the stream file.
    pub offset: usize,
    /// What is wrong.
    pub error: DecodeError,
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "packet at byte {}: {}", self.offset, self.error)
    }
}

impl std::error::Error for PacketError {}

impl<'b> Iterator for Packets<'b> {
    type Item = Result<Packet<'b>, PacketError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.bytes.len() {
            return None;
        }
        let offset = self.at;
        match packet_info(&self.bytes[offset..]) {
            Ok(info) => {
                self.at += info.packet_len;
                Some(Ok(Packet { offset, info, bytes: &self.bytes[offset..offset + info.packet_len] }))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(PacketError { offset, error }))
            }
        }
    }
}
