//! `hvtrace check` on a real trace written by `hvtrace demo`, then cut,
//! corrupted and padded with garbage: the damage is reported with its file
//! and offset, every other packet survives, and babeltrace2 reads the
//! repaired copy with exactly the records the check counted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hvtrace");
/// Packet header + context length.
const HDR: usize = 84;
const P: usize = 4096;

fn scratch_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("check-{}", std::process::id())).join(name)
}

/// A fresh path for this run.
fn scratch(name: &str) -> PathBuf {
    let d = scratch_path(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.parent().unwrap()).unwrap();
    d
}

/// One demo trace per test run, shared by the tests (each works on a copy).
fn trace() -> &'static Path {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let dir = scratch("demo");
        let out = Command::new(BIN)
            .args(["demo", "--events-per-cpu", "20000", "--subbuf-size", "4k", "--num-subbuf", "4"])
            .args(["--rate", "200000", "--json", "--output"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "demo failed: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

fn copy(name: &str) -> PathBuf {
    let d = scratch(name);
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(trace()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    d
}

fn check(dir: &Path, extra: &[&str]) -> (i32, Value) {
    let out = Command::new(BIN).arg("check").arg(dir).arg("--json").args(extra).output().unwrap();
    let code = out.status.code().unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), stderr(&out)));
    (code, v)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Events babeltrace2 reads, `None` (after a SKIP line) if it is not installed.
fn babeltrace2_events(dir: &Path) -> Option<u64> {
    let out = match Command::new("babeltrace2").arg(dir).args(["-c", "sink.utils.counter"]).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIP: babeltrace2 not installed; not reading {} with it", dir.display());
            return None;
        }
        Err(e) => panic!("babeltrace2: {e}"),
    };
    assert!(out.status.success(), "babeltrace2 cannot read {}: {}", dir.display(), stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.contains("Event message")).expect("counter output");
    Some(last.split_whitespace().next().unwrap().parse().unwrap())
}

fn stream<'v>(v: &'v Value, file: &str) -> &'v Value {
    v["streams"].as_array().unwrap().iter().find(|s| s["file"] == file).unwrap()
}

fn problems(v: &Value, file: &str) -> Vec<(u64, String, Option<u64>)> {
    stream(v, file)["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["kind"].as_str().unwrap().to_string(), p["seq"].as_u64()))
        .collect()
}

fn packets_intact(v: &Value, file: &str) -> u64 {
    stream(v, file)["packets_intact"].as_u64().unwrap()
}

/// The sequence numbers a check names as missing in `file`.
fn missing(v: &Value, file: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    for p in stream(v, file)["problems"].as_array().unwrap() {
        if p["kind"] == "missing-packets" {
            let (first, reason) = (p["seq"].as_u64().unwrap(), p["reason"].as_str().unwrap());
            // "packet seq N missing" or "packet seqs A..=B missing (n packets)"
            let last = reason.split("..=").nth(1).map_or(first, |r| r.split(' ').next().unwrap().parse().unwrap());
            seqs.extend(first..=last);
        }
    }
    seqs
}

/// Repairs `dir`, checks that the copy's only damage is the packets left
/// out (missing from the sequence) and that babeltrace2 reads exactly the
/// records in intact packets. Returns the check of the copy.
fn repair_and_read(dir: &Path, records: u64) -> Value {
    let out = scratch(&format!("{}-repaired", dir.file_name().unwrap().to_string_lossy()));
    let (code, v) = check(dir, &["--repair", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["repair"]["records"].as_u64(), Some(records));
    let (code, again) = check(&out, &[]);
    assert_eq!(again["records"].as_u64(), Some(records));
    let kinds: Vec<&Value> = again["streams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["problems"].as_array().unwrap())
        .map(|p| &p["kind"])
        .collect();
    assert!(kinds.iter().all(|k| *k == "missing-packets"), "{again}");
    assert_eq!(code, if kinds.is_empty() { 0 } else { 1 }, "{again}");
    if let Some(n) = babeltrace2_events(&out) {
        assert_eq!(n, records);
    }
    again
}

#[test]
fn an_intact_trace_checks_clean() {
    let (code, v) = check(trace(), &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["intact"], true);
    let records = v["records"].as_u64().unwrap();
    assert!(records > 10_000, "{v}");
    if let Some(n) = babeltrace2_events(trace()) {
        assert_eq!(n, records);
    }
    // Human output says so too.
    let out = Command::new(BIN).arg("check").arg(trace()).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 2 streams"));
}

#[test]
fn a_cut_stream() {
    let dir = copy("cut");
    let f = dir.join("channel0_0");
    let len = std::fs::metadata(&f).unwrap().len() as usize;
    let n = len / P;
    assert!(n > 20);
    let cut = 10 * P + 1234;
    std::fs::write(&f, &std::fs::read(&f).unwrap()[..cut]).unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 1);
    assert_eq!(v["intact"], false);
    // The cut packet, and every packet after it the consumer's account says
    // it wrote.
    let p = problems(&v, "channel0_0");
    assert_eq!(p[0], ((10 * P) as u64, "cut-packet".to_string(), Some(10)));
    assert_eq!(p[1..], [(cut as u64, "missing-packets".to_string(), Some(11))], "{v}");
    assert_eq!(missing(&v, "channel0_0"), (11..n as u64).collect::<Vec<_>>(), "through the last packet handed over");
    assert_eq!(packets_intact(&v, "channel0_0"), 10);
    assert!(problems(&v, "channel0_1").is_empty());
    // Human output names the file, offset, seq and reason.
    let out = Command::new(BIN).arg("check").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("channel0_0 byte {}", 10 * P)), "{text}");
    assert!(text.contains("packet seq 10") && text.contains("cut last packet"), "{text}");
    repair_and_read(&dir, v["records"].as_u64().unwrap());
}

#[test]
fn flipped_bytes_cost_only_their_packets() {
    let dir = copy("flipped");
    let f = dir.join("channel0_1");
    let mut b = std::fs::read(&f).unwrap();
    let before = b.len() / P;
    // Records of packet 3: an extended header naming no event.
    b[3 * P + HDR..3 * P + HDR + 16].fill(0xff);
    // Header of packet 7: magic; of packet 9: UUID.
    b[7 * P] ^= 0x5a;
    b[9 * P + 4 + 5] ^= 0x01;
    std::fs::write(&f, &b).unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 1, "{v}");
    let p = problems(&v, "channel0_1");
    assert_eq!(
        p,
        [
            ((3 * P) as u64, "bad-record".to_string(), Some(3)),
            ((7 * P) as u64, "bad-magic".to_string(), Some(7)),
            ((9 * P) as u64, "uuid-mismatch".to_string(), Some(9)),
        ],
        "{v}"
    );
    // Every other full packet survives (the stream may end with an 84-byte trailer).
    let intact = packets_intact(&v, "channel0_1");
    assert!(intact as usize + 3 >= before, "{v}");
    assert!(problems(&v, "channel0_0").is_empty());
    let copy = repair_and_read(&dir, v["records"].as_u64().unwrap());
    assert_eq!(missing(&copy, "channel0_1"), [3, 7, 9], "the copy lacks the damaged packets: {copy}");
}

#[test]
fn garbage_appended() {
    let dir = copy("garbage");
    let f = dir.join("channel0_0");
    let len = std::fs::metadata(&f).unwrap().len();
    let mut b = std::fs::read(&f).unwrap();
    b.extend_from_slice(&[0x42; 1000]);
    std::fs::write(&f, &b).unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 1);
    assert_eq!(problems(&v, "channel0_0"), [(len, "trailing-garbage".to_string(), None)]);
    let (_, clean) = check(trace(), &[]);
    assert_eq!(v["records"], clean["records"]);
    repair_and_read(&dir, v["records"].as_u64().unwrap());
}

#[test]
fn incomplete_markers_and_other_files() {
    // The consumer's empty marker: news, not damage (babeltrace2 skips empty files).
    let dir = copy("incomplete-empty");
    std::fs::write(dir.join("INCOMPLETE"), "").unwrap();
    std::fs::write(dir.join("empty-notes"), "").unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["notes"].as_array().unwrap().len(), 1);
    assert_eq!(v["notes"][0]["file"], "INCOMPLETE");
    assert_eq!(v["notes"][0]["in_the_way"], false);
    if let Some(n) = babeltrace2_events(&dir) {
        assert_eq!(n, v["records"].as_u64().unwrap());
    }
    // A marker with text, or any other non-empty file, stops babeltrace2:
    // reported, and left out of the repaired copy (which keeps an empty marker).
    let dir = copy("incomplete-text");
    std::fs::write(dir.join("INCOMPLETE"), "the host went away").unwrap();
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 1);
    let notes = v["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 2, "{v}");
    assert!(notes.iter().all(|n| n["in_the_way"] == true));
    assert!(notes[0]["reason"].as_str().unwrap().contains("the host went away"));
    assert_eq!(notes[1]["file"], "notes.txt");
    repair_and_read(&dir, v["records"].as_u64().unwrap());
    let out = scratch_path("incomplete-text-repaired");
    assert_eq!(std::fs::read(out.join("INCOMPLETE")).unwrap(), b"");
    assert!(!out.join("notes.txt").exists());
}

#[test]
fn errors_and_bad_metadata() {
    // No such directory, not a trace, a non-empty repair target: exit 2.
    let st = |args: &[&std::ffi::OsStr]| Command::new(BIN).arg("check").args(args).output().unwrap();
    let missing = scratch("missing");
    let o = st(&[missing.as_os_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot open trace directory"));
    let empty = scratch("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = st(&[empty.as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a trace directory"), "{}", stderr(&o));
    let o = st(&[trace().as_os_str(), "--repair".as_ref(), trace().as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    let o = st(&[]);
    assert_eq!(o.status.code(), Some(2));
    // Damaged metadata: exit 1, said where.
    let dir = copy("metadata");
    let md = std::fs::read_to_string(dir.join("metadata")).unwrap();
    std::fs::write(dir.join("metadata"), md.replacen("size = 16;", "size = 17;", 1)).unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 1);
    let why = v["metadata_error"].as_str().unwrap();
    assert!(why.contains("metadata line") && why.contains("size 17"), "{why}");
}

/// The packets babeltrace2 says the tracer discarded, summed over its
/// warnings; `None` (after a SKIP line) if it is not installed.
fn babeltrace2_discarded_packets(dir: &Path) -> Option<u64> {
    let out = match Command::new("babeltrace2").arg(dir).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIP: babeltrace2 not installed; not reading {} with it", dir.display());
            return None;
        }
        Err(e) => panic!("babeltrace2: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stderr);
    Some(
        text.lines()
            .filter_map(|l| l.split("Tracer discarded ").nth(1))
            .filter(|l| l.split(' ').nth(1).is_some_and(|w| w.starts_with("packet")))
            .map(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum(),
    )
}

/// Removes packets `seqs` (full packets, numbered from the file's start)
/// from `file`.
fn remove_packets(file: &Path, seqs: std::ops::Range<usize>) {
    let b = std::fs::read(file).unwrap();
    let mut kept = b[..seqs.start * P].to_vec();
    kept.extend_from_slice(&b[seqs.end * P..]);
    std::fs::write(file, kept).unwrap();
}

#[test]
fn missing_packets_are_damage_named_by_stream_and_seq() {
    let dir = copy("gap");
    remove_packets(&dir.join("channel0_0"), 3..6);
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["intact"], false);
    assert_eq!(missing(&v, "channel0_0"), [3, 4, 5], "{v}");
    assert_eq!(problems(&v, "channel0_0"), [((3 * P) as u64, "missing-packets".to_string(), Some(3))]);
    assert!(problems(&v, "channel0_1").is_empty());
    // babeltrace2, the peer, sees the same three packets missing.
    if let Some(n) = babeltrace2_discarded_packets(&dir) {
        assert_eq!(n, 3);
    }
    let out = Command::new(BIN).arg("check").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("channel0_0") && text.contains("packet seqs 3..=5 missing (3 packets)"), "{text}");
    // Without the consumer's account (an older trace) the gap still shows.
    std::fs::remove_file(dir.join(".hvtrace-consumer")).unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!((code, missing(&v, "channel0_0")), (1, vec![3, 4, 5]), "{v}");
    // The first packets gone: only the account can tell.
    let dir = copy("gap-head");
    remove_packets(&dir.join("channel0_1"), 0..2);
    let (code, v) = check(&dir, &[]);
    assert_eq!((code, missing(&v, "channel0_1")), (1, vec![0, 1]), "{v}");
}

#[test]
fn overwrite_mode_gaps_are_the_flight_recorders_unless_the_consumer_lost_them() {
    let dir = copy("gap-overwrite");
    remove_packets(&dir.join("channel0_0"), 3..6);
    let acc = dir.join(".hvtrace-consumer");
    let text = std::fs::read_to_string(&acc).unwrap();
    assert!(text.contains("\nmode discard\n"), "{text}");
    std::fs::write(&acc, text.replace("\nmode discard\n", "\nmode overwrite\n")).unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 0, "overwritten packets are accounted for in events_discarded: {v}");
    // Unless the consumer says it was handed them and lost them.
    let text = std::fs::read_to_string(&acc).unwrap();
    let at = text.find("stream 1 ").unwrap();
    std::fs::write(&acc, format!("{}lost 0 4 5 write failed: test\n{}", &text[..at], &text[at..])).unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!((code, missing(&v, "channel0_0")), (1, vec![4, 5]), "{v}");
    let reason = stream(&v, "channel0_0")["problems"][0]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("the consumer was handed and lost them"), "{reason}");
    // An account that does not parse: nobody can vouch for the trace.
    std::fs::write(&acc, "hvtrace-consumer account 1\nmode sideways\n").unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 1, "{v}");
    assert!(v["notes"].as_array().unwrap().iter().any(|n| n["reason"].as_str().unwrap().contains("cannot be read")));
}

#[test]
fn a_stream_file_replaced_by_a_fifo_or_directory_is_damage() {
    for (name, make) in [("fifo", "mkfifo"), ("dir", "mkdir")] {
        let dir = copy(&format!("replaced-{name}"));
        std::fs::remove_file(dir.join("channel0_1")).unwrap();
        assert!(Command::new(make).arg(dir.join("channel0_1")).status().unwrap().success());
        let out = Command::new(BIN).arg("check").arg(&dir).arg("--json").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["intact"], false);
        let notes = v["notes"].as_array().unwrap();
        assert!(
            notes.iter().any(|n| n["file"] == "channel0_1"
                && n["reason"].as_str().unwrap().contains("where a stream file should be")),
            "{name}: {v}"
        );
    }
    // A stream file simply gone: the account says it existed.
    let dir = copy("stream-removed");
    std::fs::remove_file(dir.join("channel0_1")).unwrap();
    let (code, v) = check(&dir, &[]);
    assert_eq!(code, 1, "{v}");
    assert!(v["notes"].as_array().unwrap().iter().any(|n| n["reason"].as_str().unwrap().contains("CPU 1")), "{v}");
}

#[test]
fn repair_onto_a_full_disk_fails() {
    let dir = copy("repair-full");
    let mnt = scratch("repair-full-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    match Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(&mnt).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!("SKIP: repair_onto_a_full_disk_fails: cannot mount a tmpfs: {}", stderr(&o).trim());
            return;
        }
        Err(e) => {
            println!("SKIP: repair_onto_a_full_disk_fails: cannot run mount: {e}");
            return;
        }
    }
    let out = Command::new(BIN).arg("check").arg(&dir).arg("--repair").arg(mnt.join("copy")).output().unwrap();
    // What the failed repair left is not taken for a whole trace either.
    let partial = Command::new(BIN).arg("check").arg(mnt.join("copy")).output().unwrap();
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("No space left on device"), "{}", stderr(&out));
    assert_ne!(partial.status.code(), Some(0), "{}", String::from_utf8_lossy(&partial.stdout));
}
