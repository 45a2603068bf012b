//! Thin, safe wrappers over the Linux system calls hvtrace is built on.
//!
//! This crate is the only place in hvtrace that talks to the kernel directly
//! for shared memory, wake-ups and the control socket. Everything is exposed
//! through safe functions returning [`std::io::Result`]; the few `unsafe`
//! blocks needed live here, each with a `// SAFETY:` comment.
//!
//! | module | what |
//! |---|---|
//! | [`memfd`] | anonymous shared-memory files (`hvtrace-data-*`, `hvtrace-ctrl-*`), sealing, read-only reopen |
//! | [`mmap`] | [`SharedMapping`]: a `MAP_SHARED` mapping of such a file, unmapped on drop |
//! | [`eventfd`] | [`EventFd`]: the per-ring "sub-buffer delivered" wake-up |
//! | [`epoll`] | [`Poller`]: wait on many eventfds / sockets |
//! | [`seqpacket`] | the Unix `SOCK_SEQPACKET` control socket, with fd passing and peer credentials |
//! | [`cpu`] | current CPU, pinning, online / possible CPU lists |
//! | [`membarrier`] | the heavy half of the asymmetric fence that takes an owned ring back |
//! | [`fs`] | files created relative to an open directory (`O_EXCL \| O_NOFOLLOW`), their `O_DIRECT` twin, group lookup |
//! | [`direct`] | `O_DIRECT` descriptors on files and the alignment they need ([`DioAlign`]) |
//! | [`proc`] | context-switch counts and CPU time from `/proc` (for tests and benchmarks), SIGTERM, `PR_SET_DUMPABLE`, pipes |
//! | [`tracefs`] | mounting tracefs, the calling thread's id (for the kernel-event source) |
//!
//! Linux only.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cpu;
pub mod direct;
pub mod epoll;
pub mod eventfd;
pub mod fs;
pub mod membarrier;
pub mod memfd;
pub mod mmap;
pub mod proc;
pub mod seqpacket;
pub mod tracefs;

pub use direct::DioAlign;
pub use epoll::{PollEvent, Poller};
pub use eventfd::EventFd;
pub use mmap::SharedMapping;
pub use seqpacket::{Conn, Listener, PeerCred};

/// This machine's host name (`uname`'s node name), as trace metadata and the
/// relay daemon name the host.
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}
