//! `hvtrace`: trace a hypervisor. One binary, one subcommand per party of
//! the LTTng-for-Xen design: the traced host (`sim`, `kvm`), the consumer
//! daemon (`consume`), the control tool (`create`, `start`, `stop`,
//! `destroy`, `status`), and `demo`, which runs all three as separate
//! processes.

mod cmd;
mod kvm_events;
mod session;
mod size;
mod trace;

use clap::{Parser, Subcommand};

/// A tracer for hypervisors: per-CPU lock-free ring buffers in the host, a
/// read-only consumer daemon woken on each sub-buffer switch, CTF 1.8 output
/// for babeltrace2 and Trace Compass.
///
/// Quick start: `hvtrace demo --output /tmp/trace` runs a simulated Xen-like
/// host, a consumer and the control sequence, then prints a summary.
#[derive(Parser)]
#[command(name = "hvtrace", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    Demo(cmd::demo::Args),
    Sim(cmd::sim::Args),
    Kvm(cmd::kvm::Args),
    Consume(cmd::consume::Args),
    Create(cmd::control::CreateArgs),
    /// Start recording: open every CPU ring of the created channel
    Start(cmd::control::SocketArgs),
    /// Stop recording: wait until no writer is inside a record, flush partial sub-buffers, wake
    /// the consumer (start resumes)
    Stop(cmd::control::SocketArgs),
    /// Destroy the channel: recording stops at once; its memory is freed when the last consumer
    /// unmaps (status shows "destroy pending" until then)
    Destroy(cmd::control::SocketArgs),
    Status(cmd::control::StatusArgs),
    /// Close the partial sub-buffers now so the consumer writes what was recorded so far
    Flush(cmd::control::SocketArgs),
    Check(cmd::check::Args),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Sim(a) => cmd::sim::run(a),
        Command::Kvm(a) => cmd::kvm::run(a),
        Command::Consume(a) => cmd::consume::run(a),
        Command::Create(a) => cmd::control::create(a),
        Command::Start(a) => cmd::control::simple(a, hvtrace_proto::Request::Start),
        Command::Stop(a) => cmd::control::simple(a, hvtrace_proto::Request::Stop),
        Command::Destroy(a) => cmd::control::simple(a, hvtrace_proto::Request::Destroy),
        Command::Flush(a) => cmd::control::simple(a, hvtrace_proto::Request::Flush),
        Command::Status(a) => cmd::control::status(a),
        Command::Check(a) => cmd::check::run(a),
    };
    if let Err(e) = r {
        eprintln!("hvtrace: error: {e:#}");
        std::process::exit(1);
    }
}
