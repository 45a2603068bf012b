//! `hvtrace consume --relayd` with the real binaries and a real
//! `lttng-relayd` on loopback: the relay's trace against the local one and
//! babeltrace2, a live viewer attached before `start`, a CPU brought online
//! mid-session, and the exit status of each fault. Prints `SKIP:` and
//! returns where lttng-relayd (or babeltrace2, for its part) is missing.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvtrace_relayd::LocalRelayd;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hvtrace");

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("relayd-{}", std::process::id())).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn relayd(dir: &Path) -> Option<LocalRelayd> {
    let r = LocalRelayd::spawn(&dir.join("relay")).unwrap();
    if r.is_none() {
        println!("SKIP: lttng-relayd is not installed (Debian: lttng-tools)");
    }
    r
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// Kills the child if the test fails half-way.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Kid {
    /// Waits (at most 30 s) and returns the exit status, stdout, stderr.
    fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        let t = Instant::now();
        let st = loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                break st;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "the consumer did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let (mut out, mut err) = (String::new(), String::new());
        self.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        self.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (st, out, err)
    }
}

fn ctl(sock: &Path, cmd: &str, extra: &[&str]) {
    let o = Command::new(BIN).arg(cmd).arg("--socket").arg(sock).args(extra).output().unwrap();
    assert!(o.status.success(), "hvtrace {cmd}: {}", text(&o.stderr));
}

fn sim(sock: &Path, args: &[&str]) -> Kid {
    let kid =
        Kid(Command::new(BIN).arg("sim").args(args).arg("--socket").arg(sock).stdout(Stdio::null()).spawn().unwrap());
    let t0 = Instant::now();
    // Ready means listening (the socket file appears at bind, before listen).
    while hvtrace_sys::Conn::connect(sock).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the host never listened on its socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    kid
}

/// `hvtrace consume --socket SOCK ARGS --json`, stdout and stderr piped.
fn consume(sock: &Path, args: &[&str]) -> Kid {
    Kid(Command::new(BIN)
        .arg("consume")
        .arg("--socket")
        .arg(sock)
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap())
}

/// Waits until the host says a consumer holds the channel.
fn wait_mapped(sock: &Path) {
    let t = Instant::now();
    loop {
        let o = Command::new(BIN).args(["status", "--json", "--socket"]).arg(sock).output().unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if v["refcount"].as_u64() == Some(1) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the consumer never mapped the channel: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// babeltrace2's (events, discarded) for a trace, `None` after a SKIP.
fn babeltrace2(dir: &Path) -> Option<(u64, u64)> {
    let o: Output = match Command::new("babeltrace2").arg(dir).output() {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP: babeltrace2 ({e}): {} not read with it", dir.display());
            return None;
        }
    };
    assert!(o.status.success(), "babeltrace2 cannot read {}: {}", dir.display(), text(&o.stderr));
    let discarded = text(&o.stderr)
        .lines()
        .filter_map(|l| l.split("Tracer discarded ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().parse::<u64>().unwrap())
        .sum();
    Some((o.stdout.iter().filter(|&&b| b == b'\n').count() as u64, discarded))
}

fn report(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().expect("a JSON report")).unwrap()
}

fn sum(report: &Value, f: impl Fn(&Value) -> u64) -> u64 {
    report["per_ring"].as_array().unwrap().iter().map(f).sum()
}

#[test]
fn the_relay_records_what_the_consumer_records_with_a_cpu_hotplugged() {
    let dir = scratch("e2e");
    let Some(relay) = relayd(&dir) else { return };
    let sock = dir.join("ctl.sock");
    let out = dir.join("local");
    // Losses to count, whatever the machine's speed: the host records into
    // small rings for 300 ms before any consumer drains them (discard mode),
    // then the consumer attaches; CPU 1 comes online after it attached.
    let _sim = sim(&sock, &["--cpus", "1", "--rate", "200000", "--hotplug-after", "1.5"]);
    ctl(&sock, "create", &["--subbuf-size", "4k", "--num-subbuf", "4"]);
    ctl(&sock, "start", &[]);
    std::thread::sleep(Duration::from_millis(300));
    let url = relay.url.to_string();
    let consumer = consume(&sock, &["--output", out.to_str().unwrap(), "--relayd", &url, "--session", "e2e"]);
    wait_mapped(&sock);
    std::thread::sleep(Duration::from_millis(2000));
    ctl(&sock, "stop", &[]);
    ctl(&sock, "destroy", &[]);
    let (st, stdout, stderr) = consumer.finish();
    assert!(st.success(), "consume: {st}: {stderr}");
    assert!(stderr.contains("/host/") && stderr.contains("/e2e"), "says where the trace goes: {stderr}");
    let r = report(&stdout);
    let relay_r = &r["relay"];
    let missed: u64 =
        relay_r["per_stream"].as_array().unwrap().iter().map(|s| s["missed_packets"].as_u64().unwrap()).sum();
    // Filed under the host name the consumer sent (the machine's).
    let remote = relay.trace_dir(relay_r["hostname"].as_str().unwrap(), "e2e");
    assert!(remote.join("channel0_1").exists(), "the hotplugged CPU 1 reached the relay: {r}");
    let discarded = sum(&r, |p| p["counters"]["discarded"].as_u64().unwrap());
    println!("discarded {discarded}, relay missed {missed} packets");
    // On loopback the relay keeps up with this host: nothing missed.
    assert_eq!(missed, 0, "{r}");
    assert!(discarded > 0, "the test wants losses to count: {r}");
    if let (Some(local), Some(there)) = (babeltrace2(&out), babeltrace2(&remote)) {
        assert_eq!(there, local, "the relay's trace reads as the local one");
        assert_eq!(there.1, discarded, "babeltrace2 reports every loss the rings counted");
    }
}

#[test]
fn a_live_viewer_attached_before_start_reads_events_while_recording_and_all_of_them_at_the_end() {
    let dir = scratch("live");
    let Some(relay) = relayd(&dir) else { return };
    if Command::new("babeltrace2").arg("--version").output().is_err() {
        println!("SKIP: babeltrace2 is not installed: no live viewer");
        return;
    }
    let sock = dir.join("ctl.sock");
    let _sim = sim(&sock, &["--cpus", "2", "--rate", "5000"]);
    ctl(&sock, "create", &["--subbuf-size", "64k", "--num-subbuf", "4"]);
    let url = relay.url.to_string();
    // The relay is the only sink; its streams stay open 3 s after the last
    // packet, time for a viewer on a loaded machine to read to the end.
    let consumer = consume(&sock, &["--relayd", &url, "--session", "live", "--live-timer", "200", "--linger", "3000"]);
    wait_mapped(&sock);
    let hostname = host_name();
    // A viewer asks for the session once; it must exist by then.
    relay.wait_for_session("live", Duration::from_secs(60)).unwrap();
    let mut viewer = Kid(Command::new("babeltrace2")
        .arg(relay.live_url(&hostname, "live"))
        .arg("--params=session-not-found-action=\"end\"")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let seen = Arc::new(AtomicU64::new(0));
    let lines = BufReader::new(viewer.0.stdout.take().unwrap());
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || lines.lines().for_each(|_| _ = seen.fetch_add(1, Ordering::Relaxed)))
    };
    relay.wait_for_viewer("live", Duration::from_secs(60)).unwrap();
    ctl(&sock, "start", &[]);
    let t = Instant::now();
    while seen.load(Ordering::Relaxed) == 0 {
        assert!(t.elapsed() < Duration::from_secs(60), "the live viewer read nothing while the session ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("first events live {:?} after start", t.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    ctl(&sock, "stop", &[]);
    ctl(&sock, "destroy", &[]);
    let (st, stdout, stderr) = consumer.finish();
    assert!(st.success(), "consume: {st}: {stderr}");
    let r = report(&stdout);
    assert_eq!(r["output"], "", "no local trace");
    let remote = babeltrace2(&relay.trace_dir(&hostname, "live")).unwrap();
    // It sees the end of the session (streams closed) and exits.
    let t = Instant::now();
    let status = loop {
        if let Some(st) = viewer.0.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the viewer did not see the session end");
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    assert!(status.success(), "babeltrace2: {status}");
    // What the consumer recorded, the relay stored and the viewer read.
    let recorded = sum(&r, |p| p["packets"].as_u64().unwrap());
    assert!(recorded > 0 && remote.0 > 0, "{r}");
    assert_eq!(sum(&r, |p| p["counters"]["discarded"].as_u64().unwrap()), 0, "{r}");
    assert_eq!(remote.1, 0);
    assert_eq!(seen.load(Ordering::Relaxed), remote.0, "the live viewer read every event the relay stored");
}

/// The machine's host name, which the consumer sends the relay.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

#[test]
fn without_output_a_relay_that_refuses_or_goes_away_is_an_error() {
    let dir = scratch("faults");
    let sock = dir.join("ctl.sock");
    let _sim = sim(&sock, &["--cpus", "1", "--rate", "20000"]);
    ctl(&sock, "create", &["--subbuf-size", "16k", "--num-subbuf", "8"]);
    // Nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("net://127.0.0.1:{port}:{port}");
    let (st, _, err) = consume(&sock, &["--relayd", &url]).finish();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect to the relay") && err.contains(&port.to_string()), "{err}");
    // With --output the same relay is only a warning: recording goes on.
    let out = dir.join("local");
    let c = consume(&sock, &["--relayd", &url, "--output", out.to_str().unwrap()]);
    wait_mapped(&sock);
    ctl(&sock, "start", &[]);
    std::thread::sleep(Duration::from_millis(300));
    ctl(&sock, "stop", &[]);
    ctl(&sock, "destroy", &[]);
    let (st, stdout, err) = c.finish();
    assert!(st.success(), "{err}");
    assert!(err.contains("recording locally only") && err.contains("the relay missed"), "{err}");
    let r = report(&stdout);
    assert!(sum(&r, |p| p["packets"].as_u64().unwrap()) > 0);

    // The relay goes away mid-session, no local output: exit status 4.
    let Some(mut relay) = relayd(&dir) else { return };
    ctl(&sock, "create", &["--subbuf-size", "16k", "--num-subbuf", "8"]);
    let url = relay.url.to_string();
    let c = consume(&sock, &["--relayd", &url, "--live-timer", "100"]);
    wait_mapped(&sock);
    ctl(&sock, "start", &[]);
    std::thread::sleep(Duration::from_millis(300));
    relay.kill();
    let (st, stdout, err) = c.finish();
    assert_eq!(st.code(), Some(4), "{err}");
    assert!(err.contains("the relay, the only sink, failed"), "{err}");
    assert_eq!(report(&stdout)["exit"], "relay_gone");
    ctl(&sock, "destroy", &[]);
}
