//! `hvtrace kvm`: trace a real hypervisor — a KVM micro-VMM. (Wired in the KVM issue.)

use std::path::PathBuf;

use anyhow::Result;

/// Run a KVM micro-VMM whose VM exits, hypercalls and guest events are traced.
#[derive(clap::Args)]
pub struct Args {
    /// Trace directory to write.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// vCPUs.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// Guest workload iterations per vCPU.
    #[arg(long, default_value_t = 2000)]
    pub iterations: u64,
    /// Print the summary as one JSON line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_a: Args) -> Result<()> {
    hvtrace_kvm::kvm_available().map_err(|e| anyhow::anyhow!("KVM is not usable here: {e}"))?;
    anyhow::bail!("hvtrace kvm is not wired to the tracer yet")
}
