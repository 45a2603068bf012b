//! Where the commands write: results to stdout through `writeln!(out, …)?`
//! (so a reader that went away ends the command quietly, see `main`), and
//! progress and warnings to stderr through [`note`], which never fails the
//! command: a closed stderr is no reason to stop tracing.

use std::fs::File;
use std::io::{BufWriter, StdoutLock, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Stdout for a large result, in 64 KiB writes: Rust's stdout flushes at
/// each line, or each KiB of a line (6 200 `write(2)`s, ~50 ms, for the
/// 6 MB JSON report of a 1 GiB trace). Flush it at the end: dropping it
/// would lose a write error (a reader gone away).
pub fn stdout_buffered() -> BufWriter<StdoutLock<'static>> {
    BufWriter::with_capacity(64 << 10, std::io::stdout().lock())
}

/// Writes one line to stderr, ignoring errors (unlike `eprintln!`, which
/// panics when stderr is a closed pipe).
pub fn note(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A host logger that writes each of the host's notices on stderr, after
/// `who` (the host never prints on its own).
pub fn host_logger(who: &'static str) -> hvtrace_host::Logger {
    hvtrace_host::Logger::new(move |n| note(format_args!("{who}: {n}")))
}

/// Creates (or truncates) the output file `path` and has `write` fill it.
/// If `write` fails, a regular file at `path` is removed: a failed command
/// leaves no empty or partial output that would look like a whole one (a
/// device, a FIFO or a link is left alone).
pub fn to_file<T>(path: &Path, write: impl FnOnce(&mut File) -> Result<T>) -> Result<T> {
    let mut file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let r = write(&mut file);
    if r.is_err() && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file()) {
        let _ = std::fs::remove_file(path);
    }
    r
}
