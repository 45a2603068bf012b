//! Another local user against a root consumer writing into a directory
//! that user can write (issue 17, items 1 and 2): the consumer never writes
//! through a name that user swapped for a symbolic link, whether it swaps
//! a stream file the moment it appears (`renameat2(RENAME_EXCHANGE)`, woken
//! by inotify) or plants `INCOMPLETE` before the host dies.
//!
//! The attacker is this test binary re-executed as uid/gid 65534 with
//! `setpriv`; where that cannot be done (not root, no `setpriv`), the tests
//! print `SKIP:` and return.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hvtrace_consumer::{Consumer, ConsumerConfig, ExitReason, INCOMPLETE};
use hvtrace_proto::{ChannelConfig, Mode, Request};

const NOBODY: u32 = 65534;
const ATTACK_DIR: &str = "HVTRACE_TEST_ATTACK_DIR";
const ATTACK_VICTIM: &str = "HVTRACE_TEST_ATTACK_VICTIM";
const VICTIM: &[u8] = b"root's own file, mode 0600\n";

/// `setpriv` prefix running a command as uid/gid 65534, or why not.
fn as_nobody(test: &str) -> Option<Command> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        println!("SKIP: {test}: needs root to run an attacker as uid {NOBODY}");
        return None;
    }
    let probe = Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("SKIP: {test}: cannot run a command as uid {NOBODY} with setpriv");
        return None;
    }
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    Some(c)
}

/// A directory the attacker owns (so it can rename and link in it), and
/// root's victim file beside it.
fn attackable(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    // The attacker must reach the directory: the test's own is 0755.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join(name);
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(NOBODY), Some(NOBODY)).unwrap();
    let victim = dir.join(format!("{name}-victim"));
    std::fs::write(&victim, VICTIM).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    (out, victim)
}

/// The attacker, run as uid 65534: each new stream file in the directory is
/// exchanged, at once, with a symbolic link to the victim.
#[test]
fn attacker_swaps_new_stream_files_for_links() {
    let (Ok(dir), Ok(victim)) = (std::env::var(ATTACK_DIR), std::env::var(ATTACK_VICTIM)) else { return };
    use rustix::fs::inotify;
    let dir = PathBuf::from(dir);
    let ino = inotify::init(inotify::CreateFlags::CLOEXEC).unwrap();
    inotify::add_watch(&ino, &dir, inotify::WatchFlags::CREATE).unwrap();
    let dfd =
        rustix::fs::open(&dir, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty())
            .unwrap();
    std::fs::write(dir.join(".ready"), "").unwrap();
    let mut buf = [std::mem::MaybeUninit::uninit(); 4096];
    let mut events = inotify::Reader::new(&ino, &mut buf);
    let mut n = 0;
    loop {
        let ev = events.next().unwrap();
        let Some(name) = ev.file_name().map(|c| c.to_string_lossy().into_owned()) else { continue };
        if !name.starts_with("channel0_") {
            continue;
        }
        let link = format!(".link{n}");
        n += 1;
        std::os::unix::fs::symlink(&victim, dir.join(&link)).unwrap();
        let _ = rustix::fs::renameat_with(&dfd, link.as_str(), &dfd, name.as_str(), rustix::fs::RenameFlags::EXCHANGE);
    }
}

fn spawn_attacker(nobody: Command, out: &Path, victim: &Path) -> Child {
    let mut c = nobody;
    let child = c
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "attacker_swaps_new_stream_files_for_links", "--nocapture", "--test-threads=1"])
        .env(ATTACK_DIR, out)
        .env(ATTACK_VICTIM, victim)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !out.join(".ready").exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "the attacker did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// How many sessions the race test runs (4 stream files each, each a
/// chance). Against 7b37ad3 on the 2-core development VM, root's file was
/// written through the link in session 1 in 7 runs of 10, session 2 in 2,
/// session 3 in 1: 12 sessions leave a wide margin, at ~40 ms each.
const TRIES: usize = 12;

#[test]
fn stream_files_are_never_written_through_a_link_another_user_swapped_in() {
    let test = "stream_files_are_never_written_through_a_link";
    let Some(_) = as_nobody(test) else { return };
    let dir = TempDir::new("symlink-race");
    let (host, sock) = host(&dir.0, &[0, 1, 2, 3], 4);
    let cfg = ChannelConfig { subbuf_size: 4096, num_subbuf: 8, mode: Mode::Discard };
    let mut swapped = 0;
    for k in 0..TRIES {
        let mut ctl = create_and_start(&sock, cfg);
        let (out, victim) = attackable(&dir.0, &format!("out{k}"));
        let mut attacker = spawn_attacker(as_nobody(test).unwrap(), &out, &victim);
        // 4 KiB packets go with O_DIRECT (where the file system has it):
        // the descriptor the old code reopened by name.
        let consumer =
            Consumer::attach(&ConsumerConfig { direct_min: Some(4096), ..ConsumerConfig::new(&sock, &out) }).unwrap();
        let shutdown = consumer.shutdown_handle();
        let run = std::thread::spawn(move || consumer.run());
        let hs: Vec<_> = (0..4).map(|cpu| write_events_thread(host.clone(), cpu, 3000)).collect();
        hs.into_iter().for_each(|h| assert!(h.join().unwrap().ok > 0));
        // Let the attacker finish its swaps (on a loaded machine it may run
        // late), so every session is attacked.
        let t = Instant::now();
        let swapped_now = || (0..4).filter(|c| out.join(format!("channel0_{c}")).is_symlink()).count();
        while swapped_now() < 4 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        ctl.simple(&Request::Stop).unwrap();
        shutdown.shutdown();
        let report = run.join().unwrap().unwrap();
        attacker.kill().unwrap();
        attacker.wait().unwrap();
        ctl.simple(&Request::Destroy).unwrap();
        assert!(std::fs::read(&victim).unwrap() == VICTIM, "session {k}: root's file was written through a link");
        assert!(report.packets() + report.consumer_lost() > 0, "{report}");
        // The swapped files are no longer the trace's: the consumer says so
        // (their packets are lost to the trace) instead of calling it whole.
        let replaced =
            report.per_ring.iter().filter(|r| r.first_error.as_deref().is_some_and(|e| e.contains("replaced"))).count();
        assert_eq!(report.is_whole(), replaced == 0, "{report}");
        swapped += replaced;
    }
    assert!(swapped > 0, "the attacker never swapped a stream file: the test proved nothing");
}

fn write_events_thread(host: Arc<hvtrace_host::Host>, cpu: u32, n: u64) -> std::thread::JoinHandle<Emitted> {
    std::thread::spawn(move || write_events(&host, cpu, cpu, n))
}

/// In the child: serve a host and record until killed.
#[test]
fn child_host_for_other_users() {
    serve_child_host(&[0]);
}

#[test]
fn the_incomplete_marker_never_follows_a_planted_link() {
    let test = "the_incomplete_marker_never_follows_a_planted_link";
    if std::env::var(CHILD_HOST_SOCKET).is_ok() {
        return;
    }
    let Some(mut nobody) = as_nobody(test) else { return };
    let dir = TempDir::new("incomplete-link");
    let sock = dir.0.join("ctl.sock");
    let mut child = spawn_child_host("child_host_for_other_users", &sock);
    let ctl = create_and_start(&sock, ChannelConfig { subbuf_size: 4096, num_subbuf: 8, mode: Mode::Discard });
    let (out, victim) = attackable(&dir.0, "out");
    let consumer = Consumer::attach(&ConsumerConfig::new(&sock, &out)).unwrap();
    // The other user plants the marker as a link to root's file.
    let st = nobody
        .args([OsStr::new("ln"), OsStr::new("-s"), victim.as_os_str(), out.join(INCOMPLETE).as_os_str()])
        .status();
    assert!(st.unwrap().success());
    let run = std::thread::spawn(move || consumer.run());
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(ctl);
    let report = run.join().unwrap().unwrap();
    assert_eq!(report.exit, ExitReason::HostGone);
    assert!(std::fs::read(&victim).unwrap() == VICTIM, "root's file was truncated through the planted marker");
    assert_eq!(std::fs::metadata(&victim).unwrap().uid(), 0);
    // The trace is still said to be cut short, and why the marker is missing.
    assert!(report.cut_short);
    assert!(report.notes.iter().any(|n| n.contains(INCOMPLETE) && n.contains("exists")), "{report}");
}
