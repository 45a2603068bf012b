//! What the host has to say while it serves, and where it goes: the host
//! never prints on its own (it lives inside someone else's VMM). The
//! embedding program decides with a [`Logger`] (`hvtrace sim` and `hvtrace
//! kvm` write each notice on stderr); without one, notices are only counted
//! ([`Host::notices`](crate::Host::notices)).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Something went wrong off the record path, where no caller can be handed
/// an error: in the control server or while taking owned rings back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The control server could not start: no consumer or control tool can
    /// reach this host. Recording into a channel is impossible without one.
    ServerDisabled(String),
    /// `accept` on the control socket failed (the server goes on).
    AcceptFailed(String),
    /// A control connection was dropped before its peer closed it (its
    /// mapping reference, if any, is released), or refused: a peer neither
    /// of the host's uid, nor root, nor in the allowed group.
    ConnectionDropped {
        /// The peer's pid (`SO_PEERCRED`), when known.
        pid: Option<u32>,
        /// Why, e.g. "sending the reply to `map` … failed: …", "permission denied: peer uid …".
        reason: String,
    },
    /// `membarrier` failed while taking owned rings back: those rings are
    /// left to their owners, as if they were stuck in a record.
    MembarrierFailed(String),
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::ServerDisabled(why) => write!(f, "control socket disabled: {why}"),
            Notice::AcceptFailed(why) => write!(f, "accept on the control socket failed: {why}"),
            Notice::ConnectionDropped { pid: Some(pid), reason } => {
                write!(f, "dropped the control connection of pid {pid}: {reason}")
            }
            Notice::ConnectionDropped { pid: None, reason } => write!(f, "dropped a control connection: {reason}"),
            Notice::MembarrierFailed(why) => {
                write!(f, "membarrier failed ({why}): owned rings are left as they are")
            }
        }
    }
}

/// Where a host's [`Notice`]s go: a function set by the embedding program,
/// called from whichever host thread has something to say.
#[derive(Clone, Default)]
pub struct Logger(Option<Arc<LogFn>>);

type LogFn = dyn Fn(&Notice) + Send + Sync;

impl Logger {
    /// Notices go to `f`.
    pub fn new(f: impl Fn(&Notice) + Send + Sync + 'static) -> Logger {
        Logger(Some(Arc::new(f)))
    }
}

impl fmt::Debug for Logger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Logger(set)" } else { "Logger(none)" })
    }
}

/// A logger and the count of what passed through it.
#[derive(Debug, Default)]
pub(crate) struct Notices {
    logger: Logger,
    count: AtomicU64,
}

impl Notices {
    pub(crate) fn new(logger: Logger) -> Notices {
        Notices { logger, count: AtomicU64::new(0) }
    }

    /// Counts `n` and hands it to the logger, if any.
    pub(crate) fn say(&self, n: Notice) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = &self.logger.0 {
            f(&n);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}
