//! The heavy half of an asymmetric fence: `membarrier(2)`.
//!
//! A thread that owns a ring records with only a compiler fence on its fast
//! path; a thread that must take the ring back runs [`barrier`], which makes
//! every CPU currently running a thread of this process execute a full
//! memory barrier before it returns (an IPI to those CPUs: microseconds,
//! paid on stop and flush only).

use std::io;

use rustix::thread::{membarrier as sys_membarrier, MembarrierCommand};

/// Registers the process for [`barrier`] (once; idempotent). Fails on
/// kernels before 4.14 or where seccomp forbids the call.
pub fn register() -> io::Result<()> {
    sys_membarrier(MembarrierCommand::RegisterPrivateExpedited)?;
    Ok(())
}

/// A full memory barrier on every CPU running a thread of this process.
/// Requires [`register`] first.
pub fn barrier() -> io::Result<()> {
    sys_membarrier(MembarrierCommand::PrivateExpedited)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn registered_barrier_succeeds() {
        super::register().expect("membarrier registration (kernel >= 4.14)");
        super::barrier().unwrap();
    }
}
