//! `hvtrace-bench tracing`: one `tracing::info!(a = 1i32, b = 2u64, s =
//! "hello")` through four subscribers, side by side in one run, on one
//! pinned thread: the hvtrace layer (recording into a host's rings, drained
//! by an in-process consumer writing a trace), a layer that does nothing
//! (the dispatch floor), tracing-subscriber's `fmt` layer writing a file
//! through tracing-appender's non-blocking writer, and tracing-chrome.
//!
//! The rounds alternate the subscribers, so a load change on the shared
//! machine touches all of them alike; each figure is the median over rounds
//! of the emitting thread's CPU time per event (the cost at the call site;
//! the writer threads of `fmt`, chrome and the consumer run beside it).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use hvtrace_consumer::{Consumer, ConsumerConfig};
use hvtrace_ctl::Client;
use hvtrace_host::{Host, HostConfig};
use hvtrace_proto::{ChannelConfig, Mode, Request};
use tracing::Dispatch;
use tracing_subscriber::layer::{Layer, SubscriberExt};

use crate::host::temp_dir;
use crate::util::{self, median, round2};

/// Arguments of `hvtrace-bench tracing`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Timed events per subscriber per round.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Rounds (each runs every subscriber once, in turn).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Untimed events per subscriber first.
    #[arg(long, default_value_t = 10_000)]
    warmup: u64,
    /// Time only these subscribers (comma-separated: `noop`, `hvtrace`,
    /// `fmt`, `chrome`, `hvtrace_no_ring`), for a profiler; the others get
    /// their warm-up only, and their figures are null.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// The layer that does nothing: what dispatching an event costs.
struct Noop;
impl<S: tracing::Subscriber> Layer<S> for Noop {}

/// The one callsite every subscriber records.
#[inline(never)]
fn event() {
    tracing::info!(a = 1i32, b = 2u64, s = "hello");
}

fn emit(d: &Dispatch, n: u64) -> (f64, f64) {
    tracing::dispatcher::with_default(d, || {
        let (c0, t0) = (util::thread_cpu_ns(), util::now_ns());
        for _ in 0..n {
            event();
        }
        let (c1, t1) = (util::thread_cpu_ns(), util::now_ns());
        ((c1 - c0) as f64 / n as f64, (t1 - t0) as f64 / n as f64)
    })
}

pub(crate) fn run(a: Args) -> Result<()> {
    if a.events == 0 || a.rounds == 0 {
        bail!("--events and --rounds must be at least 1");
    }
    let tmp = temp_dir("tracing")?;
    let la = util::loadavg();

    // hvtrace: a host with a started channel, drained by a consumer from
    // the start; the callsite's class is registered at its first event.
    let sock = tmp.path().join("ctl.sock");
    let host: Arc<Host> = Host::serve(HostConfig::new(&sock, "tracing-bench"), &[]).context("host")?;
    let mut ctl = Client::connect(&sock, Some(Duration::from_secs(20)))?;
    ctl.simple(&Request::Create(ChannelConfig { subbuf_size: 4 << 20, num_subbuf: 8, mode: Mode::Discard }))?;
    ctl.simple(&Request::Start)?;
    let trace = tmp.path().join("trace");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &trace))?;
    let consumer = std::thread::spawn(move || consumer.run());
    let layer = hvtrace_tracing::HvtraceLayer::new(host.clone());
    let counters = layer.counters();
    let hv = Dispatch::new(tracing_subscriber::registry().with(layer));

    let noop = Dispatch::new(tracing_subscriber::registry().with(Noop));

    // The hvtrace layer on a host with no channel: everything but the ring
    // record (the writer finds no channel and returns), for the breakdown.
    let idle_host = Host::serve(HostConfig::new(tmp.path().join("idle.sock"), "tracing-bench"), &[]).context("host")?;
    let no_ring = Dispatch::new(tracing_subscriber::registry().with(hvtrace_tracing::HvtraceLayer::new(idle_host)));

    // fmt through the non-blocking writer, not lossy: every line written,
    // as hvtrace records every event (lossy, a full queue drops lines).
    let log = std::fs::File::create(tmp.path().join("fmt.log"))?;
    let (nb, fmt_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false).finish(log);
    let fmt = Dispatch::new(
        tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_writer(nb).with_ansi(false)),
    );

    let (chrome_layer, chrome_guard) =
        tracing_chrome::ChromeLayerBuilder::new().file(tmp.path().join("chrome.json")).build();
    let chrome = Dispatch::new(tracing_subscriber::registry().with(chrome_layer));

    let subs: [(&str, &Dispatch); 5] =
        [("noop", &noop), ("hvtrace", &hv), ("fmt", &fmt), ("chrome", &chrome), ("hvtrace_no_ring", &no_ring)];
    let cpu = hvtrace_sys::cpu::online_cpus().first().copied().unwrap_or(0);
    let pinned = hvtrace_sys::cpu::pin_current_thread(cpu).is_ok();
    for (_, d) in subs {
        emit(d, a.warmup);
    }
    let mut cpu_ns = vec![Vec::new(); subs.len()];
    let mut wall_ns = vec![Vec::new(); subs.len()];
    for _ in 0..a.rounds {
        for (i, (name, d)) in subs.iter().enumerate() {
            if !a.only.is_empty() && !a.only.iter().any(|o| o == name) {
                continue;
            }
            let (c, w) = emit(d, a.events);
            cpu_ns[i].push(c);
            wall_ns[i].push(w);
        }
    }
    // Every subscriber got the warm-up and its timed events.
    let emitted = |i: usize| a.warmup + cpu_ns[i].len() as u64 * a.events;

    // Everything written: fmt's and chrome's writers flush on guard drop.
    drop(fmt_guard);
    drop(chrome_guard);
    ctl.simple(&Request::Stop)?;
    ctl.simple(&Request::Destroy)?;
    consumer.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    let check = hvtrace_reader::check(&trace)?;
    if !check.is_intact() {
        bail!("the hvtrace trace is damaged: {check:?}");
    }
    let (recorded, discarded) =
        (check.records(), check.streams.iter().map(|s| s.report.events_discarded()).sum::<u64>());
    let fmt_lines = std::fs::read_to_string(tmp.path().join("fmt.log"))?.lines().count() as u64;

    let fig = |i: usize| round2(median(&cpu_ns[i]));
    let (noop_ns, hv_ns, fmt_ns, chrome_ns) = (fig(0), fig(1), fig(2), fig(3));
    let mut j = serde_json::json!({
        "tracing_noop_ns_per_event": noop_ns,
        "tracing_hvtrace_ns_per_event": hv_ns,
        "tracing_fmt_ns_per_event": fmt_ns,
        "tracing_chrome_ns_per_event": chrome_ns,
        "tracing_hvtrace_no_ring_ns_per_event": fig(4),
        "tracing_hvtrace_over_noop": round2(hv_ns / noop_ns),
        "tracing_fmt_over_hvtrace": round2(fmt_ns / hv_ns),
        "tracing_chrome_over_hvtrace": round2(chrome_ns / hv_ns),
        "target_hvtrace_at_most_2x_noop": hv_ns <= 2.0 * noop_ns,
        "target_fmt_at_least_20x_hvtrace": fmt_ns >= 20.0 * hv_ns,
        "hvtrace_events_emitted": emitted(1),
        "hvtrace_events_recorded": recorded,
        "hvtrace_events_discarded": discarded,
        "hvtrace_layer_lost": counters.lost(),
        "fmt_lines_written": fmt_lines,
        "events_per_round": a.events,
        "rounds": a.rounds,
        "pinned_cpu": if pinned { cpu as i64 } else { -1 },
        "loadavg": la,
    });
    let o = j.as_object_mut().expect("an object");
    for (i, (name, _)) in subs.iter().enumerate() {
        o.insert(format!("tracing_{name}_wall_ns_per_event"), round2(median(&wall_ns[i])).into());
        o.insert(format!("tracing_{name}_cpu_ns_per_round"), cpu_ns[i].iter().map(|x| round2(*x)).collect());
    }
    println!("{}", serde_json::to_string(&j)?);
    if recorded + discarded != emitted(1) || fmt_lines != emitted(2) {
        bail!(
            "events unaccounted for: hvtrace {} recorded + {} discarded of {}, fmt {} lines of {}",
            recorded,
            discarded,
            emitted(1),
            fmt_lines,
            emitted(2),
        );
    }
    Ok(())
}
