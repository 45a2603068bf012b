//! [`ConsumerError`]: why attaching or consuming failed.

use std::io;
use std::path::PathBuf;

use hvtrace_proto::ErrorCode;

/// Why the consumer could not attach or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The control socket could not be reached.
    #[error("cannot connect to the host's control socket {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The system error (`ENOENT`: no host there; `ECONNREFUSED`: nobody listening).
        source: io::Error,
    },
    /// The host answered a request with an error.
    #[error("the host refused `{request}`: {message} ({code})")]
    Refused {
        /// The request's name (`map`, `map_ring`, …).
        request: &'static str,
        /// The host's machine-readable reason.
        code: ErrorCode,
        /// The host's explanation.
        message: String,
    },
    /// The host closed the control connection while a reply was expected.
    #[error("the host closed the control connection (it exited or dropped this consumer)")]
    HostGone,
    /// The host sent something that does not follow the control protocol.
    #[error("control protocol error: {0}")]
    Protocol(String),
    /// The output directory already holds a trace.
    #[error(
        "output directory {} already holds a trace (found {file}); choose a new or empty directory",
        dir.display()
    )]
    OutputNotEmpty {
        /// The output directory.
        dir: PathBuf,
        /// A trace file found in it.
        file: String,
    },
    /// A file or directory of the trace could not be created or written.
    #[error("{what} {}: {source}", path.display())]
    Output {
        /// What was being done (e.g. "cannot create output directory").
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The relay daemon could not be reached, refused the session, or went
    /// away (only an error when it is the only sink).
    #[error("relay {url}: {source}")]
    Relay {
        /// The relay's address.
        url: String,
        /// What went wrong.
        source: hvtrace_relayd::RelaydError,
    },
    /// Any other system error (mapping, epoll, threads, …).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system error.
        source: io::Error,
    },
}

impl ConsumerError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ConsumerError {
        let what = what.into();
        move |source| ConsumerError::Io { what, source }
    }

    pub(crate) fn output(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ConsumerError {
        let path = path.into();
        move |source| ConsumerError::Output { what, path, source }
    }
}
