//! Faults with the real binaries, in separate processes: the consumer
//! killed (SIGKILL) mid-session, the host killed mid-session, and a peer of
//! another uid knocking on the control socket.
//!
//! Traces are checked with the crate's decoder and, where installed, with
//! babeltrace2 (a missing babeltrace2 prints `SKIP:`; the decoder check
//! still runs).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use hvtrace_core::decode::{packet_info, records, PacketInfo};
use hvtrace_core::EventSet;
use hvtrace_sim::xen;

const BIN: &str = env!("CARGO_BIN_EXE_hvtrace");
const SUBBUF: usize = 4096;

/// A temporary directory (mode 0755, so another uid can reach a socket in
/// it), removed on drop.
fn scratch(name: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(&format!("hvtrace-faults-{name}-")).tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A child process killed (SIGKILL) on drop if still running.
struct Proc {
    child: Child,
    name: &'static str,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, dir: &Path, args: &[&str]) -> Proc {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {BIN} {args:?}: {e}"));
        Proc { child, name, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for exit (at most `limit`), returning status, stdout and stderr.
    fn wait(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(t.elapsed() < limit, "{} did not exit within {limit:?}: {}", self.name, self.stderr_text());
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        (status, out, self.stderr_text())
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).stdin(Stdio::null()).output().unwrap()
}

fn ctl(cmd: &str, sock: &Path, extra: &[&str]) {
    let mut args = vec![cmd, "--socket", sock.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "hvtrace {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn status(sock: &Path) -> serde_json::Value {
    let o = run(&["status", "--socket", sock.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "status: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn state_is(st: &serde_json::Value, want: &str) -> bool {
    st["state"].as_str().is_some_and(|s| s.eq_ignore_ascii_case(want))
}

fn refcount(st: &serde_json::Value) -> u64 {
    st["refcount"].as_u64().unwrap()
}

fn discarded(st: &serde_json::Value) -> u64 {
    st["rings"].as_array().unwrap().iter().map(|r| r["events_discarded"].as_u64().unwrap()).sum()
}

/// Polls `status` until `cond` holds (at most `limit`).
fn wait_status(sock: &Path, limit: Duration, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    let t = Instant::now();
    loop {
        let st = status(sock);
        if cond(&st) {
            return;
        }
        assert!(t.elapsed() < limit, "{what} not reached within {limit:?}: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_sim(dir: &Path, extra: &[&str]) -> (Proc, PathBuf) {
    let sock = dir.join("ctl.sock");
    let mut args = vec!["sim", "--socket", sock.to_str().unwrap(), "--cpus", "2"];
    args.extend_from_slice(extra);
    let mut sim = Proc::spawn("sim", dir, &args);
    let t = Instant::now();
    // Ready means listening: the file appears at bind(), and its mode is set
    // between bind() and listen(), so a test that looked at it as soon as it
    // existed saw the umask's mode on a loaded machine.
    while hvtrace_sys::Conn::connect(&sock).is_err() {
        assert!(sim.alive(), "sim exited: {}", sim.stderr_text());
        assert!(t.elapsed() < Duration::from_secs(5), "sim did not listen on its socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    (sim, sock)
}

/// Every packet of every stream file in `dir`, by CPU; panics on anything
/// that does not decode.
fn read_trace(dir: &Path) -> std::collections::BTreeMap<u32, Vec<PacketInfo>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(cpu) = name.strip_prefix("channel0_") else { continue };
        let cpu: u32 = cpu.parse().unwrap();
        let data = std::fs::read(&p).unwrap();
        let mut at = 0;
        let mut packets = Vec::new();
        while at < data.len() {
            let info = packet_info(&data[at..]).unwrap_or_else(|e| panic!("{} at {at}: {e}", p.display()));
            assert_eq!(info.cpu_id, cpu);
            let (_, recs) = records(&data[at..at + info.packet_len], xen::Events::EVENTS).unwrap();
            for r in recs {
                r.unwrap_or_else(|e| panic!("{} packet seq {}: {e}", p.display(), info.seq));
            }
            at += info.packet_len;
            packets.push(info);
        }
        assert_eq!(at, data.len(), "{} ends with a whole packet", p.display());
        assert!(packets.windows(2).all(|w| w[0].seq < w[1].seq), "{}: seq increases", p.display());
        out.insert(cpu, packets);
    }
    out
}

/// babeltrace2 reads the trace to the end without an error.
fn babeltrace_reads(dir: &Path) {
    let o = match Command::new("babeltrace2").args(["-o", "dummy"]).arg(dir).output() {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP: babeltrace2 check of {} ({e}); the decoder check ran", dir.display());
            return;
        }
    };
    assert!(o.status.success(), "babeltrace2 {}: {}\n{}", dir.display(), o.status, String::from_utf8_lossy(&o.stderr));
}

fn packets_written(trace: &std::collections::BTreeMap<u32, Vec<PacketInfo>>) -> usize {
    trace.values().map(Vec::len).sum()
}

#[test]
fn consumer_killed_host_counts_losses_and_a_new_consumer_continues() {
    let dir = scratch("consumer-killed");
    let (mut sim, sock) = start_sim(dir.path(), &["--rate", "20000"]);
    ctl("create", &sock, &["--subbuf-size", "4k", "--num-subbuf", "8"]);
    let d1 = dir.path().join("first");
    let mut c1 = Proc::spawn(
        "consume1",
        dir.path(),
        &["consume", "--socket", sock.to_str().unwrap(), "--output", d1.to_str().unwrap()],
    );
    wait_status(&sock, Duration::from_secs(5), "first consumer mapped", |s| refcount(s) == 1);
    ctl("start", &sock, &[]);
    // Let it record a few packets, then kill it without warning.
    let t = Instant::now();
    while std::fs::read_dir(&d1).map_or(0, |d| {
        d.filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("channel0_"))
            .map(|e| e.metadata().unwrap().len())
            .sum::<u64>()
    }) < 4 * SUBBUF as u64
    {
        assert!(t.elapsed() < Duration::from_secs(5), "the first consumer wrote nothing: {}", c1.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    c1.sigkill();
    let killed_at = Instant::now();

    // The host notices: the dead consumer's reference is dropped.
    wait_status(&sock, Duration::from_secs(3), "reference of the killed consumer dropped", |s| refcount(s) == 0);
    println!("reference dropped {:?} after the kill", killed_at.elapsed());
    // It keeps recording, and counts what it cannot deliver (the rings fill up).
    let before = discarded(&status(&sock));
    std::thread::sleep(Duration::from_millis(300));
    let st = status(&sock);
    assert!(state_is(&st, "started"), "{st}");
    assert!(discarded(&st) > before, "the host counts events it cannot deliver: {before} then {st}");
    assert!(sim.alive(), "the host died with its consumer: {}", sim.stderr_text());

    // Every packet the first consumer completed is readable.
    let first = read_trace(&d1);
    assert!(packets_written(&first) >= 4, "{first:?}");
    babeltrace_reads(&d1);

    // A new consumer attaches to the same session and continues where the
    // first one left off (the consumed position in the control page).
    let d2 = dir.path().join("second");
    let c2 = Proc::spawn(
        "consume2",
        dir.path(),
        &["consume", "--socket", sock.to_str().unwrap(), "--output", d2.to_str().unwrap(), "--json"],
    );
    wait_status(&sock, Duration::from_secs(5), "second consumer mapped", |s| refcount(s) == 1);
    std::thread::sleep(Duration::from_millis(300));
    ctl("stop", &sock, &[]);
    ctl("destroy", &sock, &[]);
    let (code, out, err) = c2.wait(Duration::from_secs(5));
    assert!(code.success(), "second consumer: {code}: {err}");
    let report: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(report["exit"], "destroyed", "{report}");
    let second = read_trace(&d2);
    babeltrace_reads(&d2);
    for (cpu, packets) in &second {
        let first_seq = packets.first().map(|p| p.seq);
        let last_before = first.get(cpu).and_then(|p| p.last()).map(|p| p.seq);
        // In discard mode the ring's packets are numbered without gaps: the
        // second consumer starts with the packet after the first one's last,
        // or that same packet again if the kill came between writing it and
        // releasing it.
        let ok = match (last_before, first_seq) {
            (Some(l), Some(f)) => f == l || f == l + 1,
            (None, Some(f)) => f == 0,
            (_, None) => true,
        };
        assert!(ok, "cpu {cpu}: first consumer ended at seq {last_before:?}, second began at {first_seq:?}");
        assert!(packets.len() > 1, "cpu {cpu}: the second consumer recorded: {packets:?}");
    }
    assert_eq!(second.len(), 2, "both CPUs' streams continue");
    drop(sim);
}

#[test]
fn host_killed_consumer_keeps_what_was_delivered_and_says_incomplete() {
    let dir = scratch("host-killed");
    let (mut sim, sock) = start_sim(dir.path(), &["--rate", "20000"]);
    ctl("create", &sock, &["--subbuf-size", "4k", "--num-subbuf", "8"]);
    let out_dir = dir.path().join("trace");
    let c = Proc::spawn(
        "consume",
        dir.path(),
        &["consume", "--socket", sock.to_str().unwrap(), "--output", out_dir.to_str().unwrap(), "--json"],
    );
    wait_status(&sock, Duration::from_secs(5), "consumer mapped", |s| refcount(s) == 1);
    ctl("start", &sock, &[]);
    std::thread::sleep(Duration::from_millis(500));
    let st = status(&sock);
    let delivered: u64 = st["rings"].as_array().unwrap().iter().map(|r| r["delivered_subbufs"].as_u64().unwrap()).sum();
    assert!(delivered > 2, "{st}");
    println!("killing the host (pid {})", sim.pid());
    sim.sigkill();

    let (code, out, err) = c.wait(Duration::from_secs(5));
    println!("consumer: {code}\n{err}");
    // Clear message, a distinct exit status (3: the trace is valid but cut
    // short), and the same in its report.
    assert_eq!(code.code(), Some(3), "{code}: {err}");
    assert!(err.contains("host went away"), "{err}");
    let report: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(report["exit"], "host_gone", "{report}");
    assert_eq!(report["cut_short"], true, "{report}");
    // The marker is empty, so CTF readers skip it (babeltrace2 below).
    let marker = std::fs::metadata(out_dir.join("INCOMPLETE")).expect("INCOMPLETE written");
    assert_eq!(marker.len(), 0);

    // Every complete sub-buffer was written, and nothing else.
    let trace = read_trace(&out_dir);
    for r in report["per_ring"].as_array().unwrap() {
        let cpu = r["cpu"].as_u64().unwrap() as u32;
        let n = trace.get(&cpu).map_or(0, Vec::len) as u64;
        let trailer = u64::from(r["trailer"].as_bool().unwrap());
        assert_eq!(n, r["packets"].as_u64().unwrap() + trailer, "cpu {cpu}: {r}");
        assert_eq!(r["lost_packets"], 0, "cpu {cpu}: {r}");
        // Everything the host delivered before it died is in the file (the
        // consumer drained the mapped rings after the hang-up).
        let delivered = r["counters"]["delivered_subbufs"].as_u64().unwrap();
        assert_eq!(r["packets"].as_u64().unwrap(), delivered, "cpu {cpu}: {r}");
    }
    assert!(packets_written(&trace) > 2);
    babeltrace_reads(&out_dir);
}

fn euid() -> u32 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("Uid:")).unwrap();
    l.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn peer_of_another_uid_is_refused() {
    if euid() != 0 {
        println!("SKIP: peer_of_another_uid_is_refused needs root (to run a client as uid 65534)");
        return;
    }
    let dir = scratch("access");
    // The binary where uid 65534 may execute it.
    let bin = dir.path().join("hvtrace");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (sim, sock) = start_sim(dir.path(), &["--rate", "0"]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    let as_nobody = || {
        let r = Command::new(&bin)
            .args(["status", "--socket", sock.to_str().unwrap()])
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output();
        match r {
            Ok(o) => Some(o),
            Err(e) => {
                println!("SKIP: cannot run a process as uid 65534 here: {e}");
                None
            }
        }
    };
    // 0600: the connect itself is refused by the kernel.
    let Some(o) = as_nobody() else { return };
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "uid 65534 got a status through a 0600 socket: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains("Permission denied") && err.contains("cannot connect"), "{err}");

    // Even with the socket opened up, the host checks the peer's credentials.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let Some(o) = as_nobody() else { return };
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "uid 65534 got a status: {}", String::from_utf8_lossy(&o.stdout));
    assert!(err.contains("refused (denied)") && err.contains("peer uid 65534"), "{err}");
    // The host says so on its side too (a notice its program logs).
    let t = Instant::now();
    while !sim.stderr_text().contains("permission denied: peer uid 65534") {
        assert!(t.elapsed() < Duration::from_secs(5), "no notice of the refusal: {}", sim.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Its owner is still served.
    assert!(state_is(&status(&sock), "empty"));
}

/// A tmpfs of `size` on `dir`, unmounted on drop; `None` (after a SKIP
/// line) where this process cannot mount.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        match Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output() {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                println!("SKIP: {test}: cannot mount a tmpfs: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                println!("SKIP: {test}: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn consumer_exits_1_when_packets_it_was_handed_are_lost_and_check_names_them() {
    let dir = scratch("consumer-lost");
    let Some(mnt) = Tmpfs::mount(&dir.path().join("mnt"), "160k", "consumer_exits_1_when_packets_are_lost") else {
        return;
    };
    let (_sim, sock) = start_sim(dir.path(), &["--rate", "50000"]);
    ctl("create", &sock, &["--subbuf-size", "4k", "--num-subbuf", "8"]);
    let out = mnt.0.join("trace");
    let c = Proc::spawn(
        "consume",
        dir.path(),
        &["consume", "--socket", sock.to_str().unwrap(), "--output", out.to_str().unwrap()],
    );
    wait_status(&sock, Duration::from_secs(5), "consumer mapped", |s| refcount(s) == 1);
    ctl("start", &sock, &[]);
    std::thread::sleep(Duration::from_millis(800));
    ctl("destroy", &sock, &[]);
    let (st, stdout, stderr) = c.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1), "a full disk lost packets: {stdout}{stderr}");
    assert!(stderr.contains("packets handed to the consumer are not in the trace"), "{stderr}");
    assert!(stdout.contains("DAMAGED") && stdout.contains("No space left on device"), "{stdout}");
    let o = run(&["check", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("the consumer was handed and lost them"), "{text}");
}

#[test]
fn traces_are_private_unless_a_group_may_read_them() {
    use std::os::unix::fs::MetadataExt;
    let dir = scratch("trace-modes");
    let (_sim, sock) = start_sim(dir.path(), &["--rate", "1000"]);
    for (name, group) in [("private", None), ("group", Some("65534"))] {
        ctl("create", &sock, &["--subbuf-size", "4k", "--num-subbuf", "4"]);
        let out = dir.path().join(name);
        let mut args = vec!["consume", "--socket", sock.to_str().unwrap(), "--output", out.to_str().unwrap()];
        args.extend(group.iter().flat_map(|g| ["--group", *g]));
        let c = Proc::spawn("consume", dir.path(), &args);
        wait_status(&sock, Duration::from_secs(5), "consumer mapped", |s| refcount(s) == 1);
        ctl("destroy", &sock, &[]);
        let (st, _, stderr) = c.wait(Duration::from_secs(10));
        assert!(st.success(), "{stderr}");
        let (dmode, fmode) = if group.is_some() { (0o750, 0o640) } else { (0o700, 0o600) };
        let m = std::fs::metadata(&out).unwrap();
        assert_eq!(m.mode() & 0o7777, dmode, "{name}");
        for e in std::fs::read_dir(&out).unwrap() {
            let m = e.unwrap().metadata().unwrap();
            assert_eq!(m.mode() & 0o7777, fmode, "{name}");
            if group.is_some() {
                assert_eq!(m.gid(), 65534);
            }
        }
    }
    let o =
        run(&["consume", "--socket", sock.to_str().unwrap(), "--output", "/nonexistent", "--group", "no-such-group-x"]);
    assert_eq!(o.status.code(), Some(2), "clap refuses an unknown group");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no group called"));
}
