//! A VMM-style program instrumented with `tracing` macros, recording
//! through hvtrace's layer into a CTF trace that babeltrace2 and
//! `hvtrace analyze` read.
//!
//! ```text
//! cargo run -p hvtrace-tracing --example vmm -- OUTPUT_DIR [VCPUS] [EXITS_PER_VCPU]
//! babeltrace2 OUTPUT_DIR | head
//! hvtrace analyze OUTPUT_DIR
//! ```
//!
//! `RUST_LOG` (an `EnvFilter`) chooses what is recorded; default `debug`.
//!
//! A real VMM only serves the host (`Host::serve`) and installs the layer;
//! `hvtrace create`/`start`/`consume` run the session from outside. This
//! example runs the whole session in-process so that it is one command.
//! Every callsite's class is registered at its first event, while the
//! consumer records: the host's metadata log carries it to the trace.

use std::path::PathBuf;
use std::time::Duration;

use hvtrace_consumer::{Consumer, ConsumerConfig};
use hvtrace_host::{Host, HostConfig};
use hvtrace_proto::{ChannelConfig, Mode, Request};
use hvtrace_tracing::HvtraceLayer;
use tracing::{debug, info, info_span, warn, Level};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// One vCPU's run loop: each exit, its reason, and the device it reached.
fn vcpu_loop(vcpu: u32, exits: u64) {
    let run = info_span!("vcpu_run", vcpu);
    let _in = run.enter();
    for i in 0..exits {
        let rip = 0xffff_fff0u64 + (i % 64) * 4;
        match i % 4 {
            0 => {
                tracing::event!(name: "vm_exit", Level::INFO, vcpu, reason = "io", rip);
                debug!(name: "pio", vcpu, port = 0x3f8u16, size = 1u8, write = true, value = (i % 256) as u8);
            }
            1 => {
                tracing::event!(name: "vm_exit", Level::INFO, vcpu, reason = "mmio", rip);
                debug!(name: "mmio", vcpu, gpa = 0xfeb0_0000u64 + (i % 16) * 4, len = 4u8, write = false);
            }
            2 => {
                tracing::event!(name: "vm_exit", Level::INFO, vcpu, reason = "hlt", rip);
                let wait = info_span!("halted", vcpu);
                wait.in_scope(|| info!(name: "wake", vcpu, after_ns = 1000 + i % 7));
            }
            _ => {
                tracing::event!(name: "vm_exit", Level::INFO, vcpu, reason = "cpuid", rip);
                debug!(name: "cpuid", vcpu, leaf = (i % 8) as u32, ratio = 0.5f64);
            }
        }
        if i % 500 == 499 {
            warn!(vcpu, backlog = i, "virtio queue almost full");
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out: PathBuf = args.next().ok_or("usage: vmm OUTPUT_DIR [VCPUS] [EXITS_PER_VCPU]")?.into();
    let vcpus: u32 = args.next().map_or(Ok(2), |s| s.parse())?;
    let exits: u64 = args.next().map_or(Ok(2000), |s| s.parse())?;

    let run_dir = tempfile::tempdir()?;
    let sock = run_dir.path().join("vmm.sock");
    let host = Host::serve(HostConfig::new(&sock, "vmm-example"), &[])?;

    // The five lines of the README.
    let layer = HvtraceLayer::new(host.clone()).with_spans(true);
    let counters = layer.counters();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("debug"));
    tracing_subscriber::registry().with(layer.with_filter(filter)).init();

    let mut ctl = hvtrace_ctl::Client::connect(&sock, Some(Duration::from_secs(10)))?;
    ctl.simple(&Request::Create(ChannelConfig { subbuf_size: 1 << 20, num_subbuf: 8, mode: Mode::Discard }))?;
    ctl.simple(&Request::Start)?;
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out))?;
    let consuming = std::thread::spawn(move || consumer.run());

    info!(vcpus, exits, "booting");
    std::thread::scope(|s| {
        for vcpu in 0..vcpus {
            s.spawn(move || vcpu_loop(vcpu, exits));
        }
    });
    info!("shutting down");

    ctl.simple(&Request::Stop)?;
    ctl.simple(&Request::Destroy)?;
    let report = consuming.join().map_err(|_| "the consumer panicked")??;
    println!(
        "trace {}: {} events lost by the layer, {} packets written",
        out.display(),
        counters.lost(),
        report.per_ring.iter().map(|r| r.packets).sum::<u64>()
    );
    if counters.lost() != 0 {
        return Err(format!("{} events lost: {:?}", counters.lost(), counters).into());
    }
    Ok(())
}
