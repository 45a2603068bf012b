//! `hvtrace`: trace a hypervisor. One binary, one subcommand per party of
//! the LTTng-for-Xen design: the traced host (`sim`, `kvm`), the consumer
//! daemon (`consume`), the control tool (`create`, `start`, `stop`,
//! `destroy`, `status`), and `demo`, which runs all three as separate
//! processes.

mod cmd;
mod kvm_events;
mod out;
mod session;
mod size;
mod trace;

use std::process::ExitCode;

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
    Analyze(cmd::analyze::Args),
    Export(cmd::export::Args),
    Report(cmd::report::Args),
    Import(cmd::import::Args),
    RecordKernel(cmd::record_kernel::Args),
}

/// How a command ended: the binary's one table of exit statuses. Every
/// command returns one of these (or an error, which is [`Status::Failed`]);
/// only `main` turns it into the process's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 0: done (a `check` that found the trace intact).
    Ok = 0,
    /// 1: an error, or damage found (`check`), or a session whose counts do
    /// not add up (`demo`, `kvm`).
    Failed = 1,
    /// 2: `check` could not read the trace (usage or I/O error).
    CheckIo = 2,
    /// 3: the consumer's host went away mid-session: the trace is valid but
    /// cut short (`consume`).
    CutShort = 3,
    /// 4: the relay, the consumer's only sink, failed mid-session
    /// (`consume --relayd` without `--output`).
    RelayGone = 4,
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> ExitCode {
        ExitCode::from(s as u8)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A host or consumer holds 2 to 4 descriptors per CPU ring: 512 CPUs
    // overrun the usual soft limit of 1024. Failing that, the commands'
    // own errors say which descriptor could not be had.
    let _ = hvtrace_sys::proc::raise_fd_limit();
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
        Command::Analyze(a) => cmd::analyze::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Import(a) => cmd::import::run(a),
        Command::RecordKernel(a) => cmd::record_kernel::run(a),
    };
    match r {
        Ok(status) => status.into(),
        // The reader went away (`hvtrace check DIR | head`): nothing more to
        // say to anyone, and not a failure (as for any Unix filter).
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            out::note(format_args!("hvtrace: error: {e:#}"));
            status_of(&e).into()
        }
    }
}

/// The status of a failed command: `check`'s I/O errors are 2, the rest 1.
fn status_of(e: &anyhow::Error) -> Status {
    if e.chain().any(|c| c.downcast_ref::<hvtrace_reader::ReadError>().is_some()) {
        Status::CheckIo
    } else {
        Status::Failed
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
