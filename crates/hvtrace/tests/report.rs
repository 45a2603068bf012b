//! `hvtrace report` through the built binary: the page is self-contained
//! (no script, no external reference), holds the analyze tables, a chart
//! per vCPU and the timeline, stays small on a large trace, and opens in
//! headless Chromium with no console error.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_hvtrace");

fn hvtrace(args: &[&str]) -> Output {
    Command::new(EXE).args(args).output().expect("run hvtrace")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tempdir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hvtrace-report-test-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn demo_report(tmp: &Path, events_per_cpu: u32) -> String {
    let dir = tmp.join("trace");
    let n = events_per_cpu.to_string();
    let out = hvtrace(&["demo", "--output", dir.to_str().unwrap(), "--cpus", "2", "--events-per-cpu", &n]);
    assert!(out.status.success(), "hvtrace demo failed: {}", stderr(&out));
    let html = tmp.join("report.html");
    let out = hvtrace(&["report", dir.to_str().unwrap(), "--output", html.to_str().unwrap()]);
    assert!(out.status.success(), "hvtrace report failed: {}", stderr(&out));
    std::fs::read_to_string(&html).unwrap()
}

/// The chromium binary, or `None` (said loudly).
fn chromium() -> Option<&'static str> {
    for exe in ["chromium", "chromium-browser"] {
        if Command::new(exe).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Some(exe);
        }
    }
    eprintln!("SKIP: chromium not installed (apt-get install chromium): the report was not opened in a browser");
    None
}

#[test]
fn a_report_is_one_self_contained_page_with_tables_charts_and_timeline() {
    let tmp = tempdir("page");
    let html = demo_report(&tmp, 20_000);
    for want in [
        "<h2>Timeline</h2>",
        "pCPU 0",
        "pCPU 1",
        "<h2>Exits</h2>",
        "VMCALL",
        "<h2>Runstates</h2>",
        "Exit reasons per vCPU",
    ] {
        assert!(html.contains(want), "no {want:?} in the report");
    }
    for banned in ["<script", "http://", "https://", "@import", "url(http", "<link"] {
        let hit = html.replace("http://www.w3.org/2000/svg", "");
        assert!(!hit.contains(banned), "the report refers outside itself: {banned}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_ten_times_larger_trace_gives_a_report_of_about_the_same_size() {
    let small = demo_report(&tempdir("small"), 20_000).len();
    let tmp = tempdir("large");
    let large = demo_report(&tmp, 200_000).len();
    assert!(large < 5 << 20, "{large} bytes");
    assert!(large < small * 2, "report grew with the trace: {small} → {large} bytes");
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(tempdir("small"));
}

#[test]
fn the_report_opens_in_headless_chromium_with_no_console_error() {
    let Some(exe) = chromium() else { return };
    let tmp = tempdir("chromium");
    demo_report(&tmp, 20_000);
    let profile = tmp.join("profile");
    let url = format!("file://{}", tmp.join("report.html").display());
    let out = Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("run chromium");
    let log = stderr(&out);
    assert!(out.status.success(), "chromium failed: {log}");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<svg") && dom.contains("pCPU 0"), "chromium's DOM lacks the timeline");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}
