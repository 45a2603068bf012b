//! `hvtrace-bench`: the measuring half of `scripts/bench` (which also runs
//! the LTTng-UST side and prints the table). Each subcommand prints one JSON
//! line on stdout.
//!
//! * `host` — producer threads through a real host `Writer` with a real
//!   consumer process: ns/event, bytes on disk, consumer CPU, latency.
//! * `core` — the ring alone (drained, or full: the discard path), or the floor.
//! * `idle` — wake-ups of a consumer on a started, idle `hvtrace sim --rate 0`.
//! * `poll-consume` — the xentrace-style 100 ms polling baseline consumer.
//! * `tracing` — one `tracing` event through the hvtrace layer, a do-nothing layer, `fmt`, tracing-chrome.
//! * `relay-replay` — recorded packets sent to a local lttng-relayd as fast as
//!   it takes them: the relay's ingest ceiling and CPU per event.
//! * `xentrace` — `hvtrace import xentrace` against `xenalyze --summary` on one generated file.

mod core;
mod host;
mod idle;
mod layers;
mod poll;
mod replay;
mod util;
mod xentrace;

use clap::{Parser, Subcommand};

/// hvtrace benchmark driver (see scripts/bench and docs/benchmarks.md).
#[derive(Parser)]
#[command(name = "hvtrace-bench", max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Producers through a real Host + consumer process.
    Host(host::Args),
    /// The producer core alone, its discard path, or the floor.
    Core(core::Args),
    /// Idle wake-ups of a consumer.
    Idle(idle::Args),
    /// The 100 ms polling baseline consumer.
    PollConsume(poll::Args),
    /// Recorded packets to a local lttng-relayd, as fast as it takes them.
    RelayReplay(replay::Args),
    /// xentrace import against xenalyze --summary, same file.
    Xentrace(xentrace::Args),
    /// One `tracing` event through the hvtrace layer and three others, side by side.
    Tracing(layers::Args),
}

fn main() {
    let r = match Cli::parse().cmd {
        Cmd::Host(a) => host::run(a),
        Cmd::Core(a) => core::run(a),
        Cmd::Idle(a) => idle::run(a),
        Cmd::PollConsume(a) => poll::run(a),
        Cmd::RelayReplay(a) => replay::run(a),
        Cmd::Xentrace(a) => xentrace::run(a),
        Cmd::Tracing(a) => layers::run(a),
    };
    if let Err(e) = r {
        eprintln!("hvtrace-bench: error: {e:#}");
        std::process::exit(1);
    }
}
