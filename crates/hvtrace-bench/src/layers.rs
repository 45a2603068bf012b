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
//!
//! Each subscriber is measured twice per round: made the thread's default
//! with `dispatcher::with_default` in this process (scoped: the figures the
//! issue names, and the verdicts), and installed as the global default in a
//! process of its own (this program, `--global NAME`), which is what a
//! VMM's `.init()` gives: `tracing` then skips the thread-local lookup of a
//! scoped dispatcher. Beside them, one `rdtsc` alone on the same thread:
//! the lower bound of any timestamped record.

use std::path::{Path, PathBuf};
use std::process::Command;
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

/// The subscribers, in the order of a round.
const NAMES: [&str; 5] = ["noop", "hvtrace", "fmt", "chrome", "hvtrace_no_ring"];

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
    /// Skip the global-default runs (a process per subscriber and round).
    #[arg(long)]
    no_global: bool,
    /// Internal: run one subscriber as the process's global default, one
    /// round, and print its figures as JSON.
    #[arg(long, hide = true)]
    global: Option<String>,
}

/// The layer that does nothing: what dispatching an event costs.
struct Noop;
impl<S: tracing::Subscriber> Layer<S> for Noop {}

/// The one callsite every subscriber records.
#[inline(never)]
fn event() {
    tracing::info!(a = 1i32, b = 2u64, s = "hello");
}

/// Emits `n` events through `d` made the thread's default, or through the
/// global default (`None`); thread CPU and wall ns per event.
fn emit(d: Option<&Dispatch>, n: u64) -> (f64, f64) {
    let timed = || {
        let (c0, t0) = (util::thread_cpu_ns(), util::now_ns());
        for _ in 0..n {
            event();
        }
        let (c1, t1) = (util::thread_cpu_ns(), util::now_ns());
        ((c1 - c0) as f64 / n as f64, (t1 - t0) as f64 / n as f64)
    };
    match d {
        Some(d) => tracing::dispatcher::with_default(d, timed),
        None => timed(),
    }
}

/// `n` TSC reads in a row: thread CPU and wall ns per read.
fn rdtsc_alone(n: u64) -> (f64, f64) {
    let (c0, t0) = (util::thread_cpu_ns(), util::now_ns());
    let mut acc = 0u64;
    for _ in 0..n {
        acc = acc.wrapping_add(std::hint::black_box(util::rdtsc()));
    }
    std::hint::black_box(acc);
    let (c1, t1) = (util::thread_cpu_ns(), util::now_ns());
    ((c1 - c0) as f64 / n as f64, (t1 - t0) as f64 / n as f64)
}

/// The benchmark's event without `tracing`: a [`hvtrace_host::Writer`]'s
/// record of the payload the layer records for it (level, `a` as i64, `b`
/// as u64, `s`) into the same channel, its class registered as the
/// layer's is.
struct Direct {
    writer: hvtrace_host::Writer,
    id: u32,
}

impl Direct {
    fn new(host: &Host) -> Result<Direct> {
        use hvtrace_core::field::{Field, FieldKind};
        let level = FieldKind::Enum { bits: 8, signed: false, labels: hvtrace_tracing::LEVEL_LABELS };
        let fields = [("level", level), ("a", i64::KIND), ("b", u64::KIND), ("s", FieldKind::Str)];
        let id = host.register_event("bench:direct", &fields).context("registering the direct class")?;
        Ok(Direct { writer: host.writer(), id })
    }

    /// `n` records: thread CPU and wall ns per record (a record the ring
    /// refuses is counted by it as discarded).
    #[inline(never)]
    fn record(&self, n: u64) -> (f64, f64) {
        use hvtrace_core::field::Field;
        use hvtrace_core::Sink;
        let (c0, t0) = (util::thread_cpu_ns(), util::now_ns());
        for _ in 0..n {
            let (a, b, s) = std::hint::black_box((1i64, 2u64, "hello"));
            let len = 1 + a.encoded_len() + b.encoded_len() + s.encoded_len();
            let _ = self.writer.record(self.id, len, |e| {
                e.put(&[2]);
                a.encode(e);
                b.encode(e);
                s.encode(e);
            });
        }
        let (c1, t1) = (util::thread_cpu_ns(), util::now_ns());
        ((c1 - c0) as f64 / n as f64, (t1 - t0) as f64 / n as f64)
    }
}

/// What a subscriber needs at the end to flush and account for its events.
enum Finish {
    Nothing,
    /// The hvtrace layer's host: stop the channel, let the consumer finish,
    /// check the trace; every event must be recorded or counted discarded.
    Hvtrace {
        ctl: Client,
        consumer: std::thread::JoinHandle<Result<hvtrace_consumer::Report, hvtrace_consumer::ConsumerError>>,
        trace: PathBuf,
        counters: Arc<hvtrace_tracing::Counters>,
        host: Arc<Host>,
    },
    /// The file must hold one line per event.
    Fmt {
        guard: tracing_appender::non_blocking::WorkerGuard,
        log: PathBuf,
    },
    Chrome {
        guard: tracing_chrome::FlushGuard,
    },
}

/// One subscriber, ready to record.
struct Sub {
    name: &'static str,
    dispatch: Dispatch,
    finish: Finish,
    /// Records written into its channel without `tracing` ([`Direct`]).
    direct: u64,
}

fn build(name: &'static str, dir: &Path) -> Result<Sub> {
    let (dispatch, finish) = match name {
        "noop" => (Dispatch::new(tracing_subscriber::registry().with(Noop)), Finish::Nothing),
        // A host with a started channel, drained by a consumer from the
        // start; the callsite's class is registered at its first event.
        "hvtrace" => {
            let sock = dir.join("ctl.sock");
            let host: Arc<Host> = Host::serve(HostConfig::new(&sock, "tracing-bench"), &[]).context("host")?;
            let mut ctl = Client::connect(&sock, Some(Duration::from_secs(20)))?;
            ctl.simple(&Request::Create(ChannelConfig { subbuf_size: 4 << 20, num_subbuf: 8, mode: Mode::Discard }))?;
            ctl.simple(&Request::Start)?;
            let trace = dir.join("trace");
            let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &trace))?;
            let consumer = std::thread::spawn(move || consumer.run());
            let layer = hvtrace_tracing::HvtraceLayer::new(host.clone());
            let counters = layer.counters();
            let finish = Finish::Hvtrace { ctl, consumer, trace, counters, host };
            (Dispatch::new(tracing_subscriber::registry().with(layer)), finish)
        }
        // The layer on a host with no channel: everything but the ring
        // record (the writer finds no channel and returns), for the breakdown.
        "hvtrace_no_ring" => {
            let host = Host::serve(HostConfig::new(dir.join("idle.sock"), "tracing-bench"), &[]).context("host")?;
            (
                Dispatch::new(tracing_subscriber::registry().with(hvtrace_tracing::HvtraceLayer::new(host))),
                Finish::Nothing,
            )
        }
        // fmt through the non-blocking writer, not lossy: every line
        // written, as hvtrace records every event (lossy, a full queue
        // drops lines).
        "fmt" => {
            let log = dir.join("fmt.log");
            let file = std::fs::File::create(&log)?;
            let (nb, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false).finish(file);
            let layer = tracing_subscriber::fmt::layer().with_writer(nb).with_ansi(false);
            (Dispatch::new(tracing_subscriber::registry().with(layer)), Finish::Fmt { guard, log })
        }
        "chrome" => {
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new().file(dir.join("chrome.json")).build();
            (Dispatch::new(tracing_subscriber::registry().with(layer)), Finish::Chrome { guard })
        }
        other => bail!("no subscriber {other:?} (one of {})", NAMES.join(", ")),
    };
    Ok(Sub { name, dispatch, finish, direct: 0 })
}

/// What a subscriber's output holds after `emitted` events, as JSON
/// fields, and what is wrong with it: events unaccounted for.
type Account = (serde_json::Map<String, serde_json::Value>, Option<String>);

fn finish(sub: Sub, emitted: u64) -> Result<Account> {
    // The direct records share the hvtrace layer's channel.
    let emitted = emitted + sub.direct;
    let mut o = serde_json::Map::new();
    let mut wrong = None;
    match sub.finish {
        Finish::Nothing => {}
        Finish::Chrome { guard } => drop(guard),
        Finish::Fmt { guard, log } => {
            drop(guard);
            let lines = std::fs::read_to_string(log)?.lines().count() as u64;
            o.insert("fmt_lines_written".into(), lines.into());
            if lines != emitted {
                wrong = Some(format!("fmt: {lines} lines of {emitted} events"));
            }
        }
        Finish::Hvtrace { mut ctl, consumer, trace, counters, .. } => {
            ctl.simple(&Request::Stop)?;
            ctl.simple(&Request::Destroy)?;
            consumer.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
            let check = hvtrace_reader::check(&trace)?;
            if !check.is_intact() {
                bail!("the hvtrace trace is damaged: {check:?}");
            }
            let recorded = check.records();
            let discarded = check.streams.iter().map(|s| s.report.events_discarded()).sum::<u64>();
            // Emitted: through the layer, and `hvtrace_direct_records` of them directly.
            o.insert("hvtrace_events_emitted".into(), emitted.into());
            o.insert("hvtrace_direct_records".into(), sub.direct.into());
            o.insert("hvtrace_events_recorded".into(), recorded.into());
            o.insert("hvtrace_events_discarded".into(), discarded.into());
            o.insert("hvtrace_layer_lost".into(), counters.lost().into());
            if recorded + discarded != emitted {
                wrong = Some(format!("hvtrace: {recorded} recorded + {discarded} discarded of {emitted} events"));
            }
        }
    }
    Ok((o, wrong))
}

fn pin() -> Option<usize> {
    let cpu = hvtrace_sys::cpu::online_cpus().first().copied().unwrap_or(0);
    hvtrace_sys::cpu::pin_current_thread(cpu).is_ok().then_some(cpu)
}

/// `--global NAME`: one round of one subscriber installed as this
/// process's global default (never a scoped one, which would make every
/// later event look for it).
fn run_global(a: &Args, name: &str) -> Result<()> {
    let name = NAMES.iter().copied().find(|n| *n == name).with_context(|| format!("no subscriber {name:?}"))?;
    let tmp = temp_dir("tracing-global")?;
    let sub = build(name, tmp.path())?;
    tracing::dispatcher::set_global_default(sub.dispatch.clone()).context("a global default was set already")?;
    pin();
    emit(None, a.warmup);
    let (cpu, wall) = emit(None, a.events);
    let (mut o, wrong) = finish(sub, a.warmup + a.events)?;
    o.insert("cpu_ns_per_event".into(), cpu.into());
    o.insert("wall_ns_per_event".into(), wall.into());
    println!("{}", serde_json::Value::Object(o));
    wrong.map_or(Ok(()), |w| bail!("events unaccounted for: {w}"))
}

/// Runs `name` as the global default of a child process; its thread CPU
/// and wall ns per event.
fn spawn_global(a: &Args, name: &str) -> Result<(f64, f64)> {
    let out = Command::new(std::env::current_exe()?)
        .args(["tracing", "--global", name, "--events", &a.events.to_string(), "--warmup", &a.warmup.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("the global-default run of {name} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).context("the global-default run's JSON")?;
    let f = |k: &str| j[k].as_f64().with_context(|| format!("{k} missing from the global-default run of {name}"));
    Ok((f("cpu_ns_per_event")?, f("wall_ns_per_event")?))
}

pub(crate) fn run(a: Args) -> Result<()> {
    if a.events == 0 || a.rounds == 0 {
        bail!("--events and --rounds must be at least 1");
    }
    if let Some(name) = &a.global {
        return run_global(&a, name);
    }
    let tmp = temp_dir("tracing")?;
    let la = util::loadavg();
    let subs = NAMES.iter().map(|n| build(n, tmp.path())).collect::<Result<Vec<_>>>()?;
    let timed = |name: &str| a.only.is_empty() || a.only.iter().any(|o| o == name);

    let mut subs = subs;
    let hv = subs.iter().position(|s| s.name == "hvtrace").expect("the hvtrace subscriber");
    let Finish::Hvtrace { host, .. } = &subs[hv].finish else { unreachable!("hvtrace is built with its host") };
    let direct = Direct::new(host)?;

    let pinned = pin();
    for s in &subs {
        emit(Some(&s.dispatch), a.warmup);
    }
    direct.record(a.warmup);
    subs[hv].direct += a.warmup;
    let n = subs.len();
    let (mut cpu_ns, mut wall_ns) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let (mut global_cpu, mut global_wall) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let (mut tsc_cpu, mut tsc_wall) = (Vec::new(), Vec::new());
    let (mut direct_cpu, mut direct_wall) = (Vec::new(), Vec::new());
    for _ in 0..a.rounds {
        for (i, s) in subs.iter().enumerate().filter(|(_, s)| timed(s.name)) {
            let (c, w) = emit(Some(&s.dispatch), a.events);
            cpu_ns[i].push(c);
            wall_ns[i].push(w);
        }
        let (c, w) = rdtsc_alone(a.events);
        tsc_cpu.push(c);
        tsc_wall.push(w);
        if timed("hvtrace") {
            let (c, w) = direct.record(a.events);
            direct_cpu.push(c);
            direct_wall.push(w);
            subs[hv].direct += a.events;
        }
        if !a.no_global {
            for (i, s) in subs.iter().enumerate().filter(|(_, s)| timed(s.name)) {
                let (c, w) = spawn_global(&a, s.name)?;
                global_cpu[i].push(c);
                global_wall[i].push(w);
            }
        }
    }

    // Everything written and accounted for: every subscriber got the
    // warm-up and its timed events.
    drop(direct);
    let mut j = serde_json::Map::new();
    let mut wrong = Vec::new();
    for (i, s) in subs.into_iter().enumerate() {
        let emitted = a.warmup + cpu_ns[i].len() as u64 * a.events;
        let (o, w) = finish(s, emitted)?;
        j.extend(o);
        wrong.extend(w);
    }

    let per_round = |v: &[f64]| -> serde_json::Value { v.iter().map(|x| round2(*x)).collect() };
    let fig = |v: &[f64]| if v.is_empty() { serde_json::Value::Null } else { round2(median(v)).into() };
    let ratio = |x: &serde_json::Value, y: &serde_json::Value| match (x.as_f64(), y.as_f64()) {
        (Some(x), Some(y)) => round2(x / y).into(),
        _ => serde_json::Value::Null,
    };
    for (i, name) in NAMES.iter().enumerate() {
        j.insert(format!("tracing_{name}_ns_per_event"), fig(&cpu_ns[i]));
        j.insert(format!("tracing_{name}_wall_ns_per_event"), fig(&wall_ns[i]));
        j.insert(format!("tracing_{name}_cpu_ns_per_round"), per_round(&cpu_ns[i]));
        j.insert(format!("tracing_global_{name}_ns_per_event"), fig(&global_cpu[i]));
        j.insert(format!("tracing_global_{name}_wall_ns_per_event"), fig(&global_wall[i]));
        j.insert(format!("tracing_global_{name}_cpu_ns_per_round"), per_round(&global_cpu[i]));
    }
    j.insert("tracing_hvtrace_direct_ns_per_event".into(), fig(&direct_cpu));
    j.insert("tracing_hvtrace_direct_wall_ns_per_event".into(), fig(&direct_wall));
    j.insert("tracing_hvtrace_direct_cpu_ns_per_round".into(), per_round(&direct_cpu));
    j.insert("tracing_rdtsc_ns".into(), fig(&tsc_cpu));
    j.insert("tracing_rdtsc_wall_ns".into(), fig(&tsc_wall));
    j.insert("tracing_rdtsc_cpu_ns_per_round".into(), per_round(&tsc_cpu));
    // The verdicts use the scoped figures (the keys the issue names).
    for (key, x, y) in [
        ("tracing_hvtrace_over_noop", "tracing_hvtrace_ns_per_event", "tracing_noop_ns_per_event"),
        ("tracing_fmt_over_hvtrace", "tracing_fmt_ns_per_event", "tracing_hvtrace_ns_per_event"),
        ("tracing_chrome_over_hvtrace", "tracing_chrome_ns_per_event", "tracing_hvtrace_ns_per_event"),
        ("tracing_global_hvtrace_over_noop", "tracing_global_hvtrace_ns_per_event", "tracing_global_noop_ns_per_event"),
        ("tracing_global_fmt_over_hvtrace", "tracing_global_fmt_ns_per_event", "tracing_global_hvtrace_ns_per_event"),
        ("tracing_rdtsc_over_noop", "tracing_rdtsc_ns", "tracing_noop_ns_per_event"),
    ] {
        let r = ratio(&j[x], &j[y]);
        j.insert(key.into(), r);
    }
    let (hv_noop, fmt_hv) = (j["tracing_hvtrace_over_noop"].as_f64(), j["tracing_fmt_over_hvtrace"].as_f64());
    j.insert("target_hvtrace_at_most_2x_noop".into(), hv_noop.map(|r| r <= 2.0).into());
    j.insert("target_fmt_at_least_20x_hvtrace".into(), fmt_hv.map(|r| r >= 20.0).into());
    j.insert("events_per_round".into(), a.events.into());
    j.insert("rounds".into(), a.rounds.into());
    j.insert("pinned_cpu".into(), pinned.map_or(-1, |c| c as i64).into());
    j.insert("loadavg".into(), la.into());
    println!("{}", serde_json::Value::Object(j));
    if !wrong.is_empty() {
        bail!("events unaccounted for: {}", wrong.join("; "));
    }
    Ok(())
}
