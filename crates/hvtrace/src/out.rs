//! Where the commands write: results to stdout through `writeln!(out, …)?`
//! (so a reader that went away ends the command quietly, see `main`), and
//! progress and warnings to stderr through [`note`], which never fails the
//! command: a closed stderr is no reason to stop tracing.

use std::io::Write;

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
