//! `hvtrace report` through the built binary: the page is self-contained
//! (no script, no external reference), holds the analyze tables, a chart
//! per vCPU and the timeline, stays small on a large trace, and opens in
//! headless Chromium with no console error; a report of an imported
//! xentrace file counts the generator's exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod views;
use views::{babeltrace_count, damaged_demo, demo, hvtrace, imported_xentrace, stderr, vmx_reason};

fn tempdir(what: &str) -> PathBuf {
    views::tempdir("report", what)
}

fn demo_report(tmp: &Path, events_per_cpu: u32) -> String {
    let dir = demo(tmp, &["--cpus", "2", "--events-per-cpu", &events_per_cpu.to_string()]);
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

/// The timeline part of a report.
fn timeline(html: &str) -> &str {
    let from = html.find("<h2>Timeline</h2>").expect("a timeline");
    let to = html.find("<h2>Exit reasons").expect("exit charts");
    &html[from..to]
}

#[test]
fn the_timeline_is_downsampled_whatever_the_number_of_events() {
    let tmp = tempdir("large");
    let html = demo_report(&tmp, 200_000);
    assert!(html.len() < 5 << 20, "{} bytes", html.len());
    // 400 000 events on 2 pCPUs: at most a rectangle, a hatch and an exit
    // mark per column and lane (~200 bytes), not one per event.
    let t = timeline(&html).len();
    assert!(t < 2 * hvtrace_view::COLUMNS * 200, "timeline of {t} bytes");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Opens the page at `html` in headless Chromium: its DOM, after asserting
/// the browser logged no console message.
fn open_in_chromium(exe: &str, html: &Path) -> String {
    let profile = html.with_file_name("chromium-profile");
    let url = format!("file://{}", html.display());
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
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_report_opens_in_headless_chromium_with_no_console_error() {
    let Some(exe) = chromium() else { return };
    let tmp = tempdir("chromium");
    demo_report(&tmp, 20_000);
    let dom = open_in_chromium(exe, &tmp.join("report.html"));
    assert!(dom.contains("<svg") && dom.contains("pCPU 0"), "chromium's DOM lacks the timeline");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `(vCPU, reason) → count` of the page's Exits table.
fn exits_table(html: &str) -> BTreeMap<(String, String), u64> {
    let from = html.find("<h2>Exits</h2>").expect("an Exits table");
    let table = &html[from..from + html[from..].find("</table>").unwrap()];
    let mut n = BTreeMap::new();
    for row in table.split("<tr>").skip(2) {
        let cells: Vec<&str> = row.split("<td>").skip(1).map(|c| c.split("</td>").next().unwrap()).collect();
        // vCPU, reason, code, count, ...
        n.insert((cells[0].to_string(), cells[1].to_string()), cells[3].parse().unwrap());
    }
    n
}

#[test]
fn a_report_of_an_imported_xentrace_file_counts_its_exits_and_opens_in_chromium() {
    let tmp = tempdir("xentrace");
    let (_, dir, g) = imported_xentrace(&tmp);
    let file = tmp.join("report.html");
    let out = hvtrace(&["report", dir.to_str().unwrap(), "--output", file.to_str().unwrap()]);
    assert!(out.status.success(), "hvtrace report failed: {}", stderr(&out));
    let html = std::fs::read_to_string(&file).unwrap();
    // The generator's exits, per vCPU and reason name, are the table's.
    let mut truth = BTreeMap::new();
    for e in &g.exits {
        let name = vmx_reason(e.reason);
        *truth.entry((format!("d{}v{}", e.domid, e.vcpu), name.to_string())).or_default() += 1;
    }
    assert_eq!(exits_table(&html), truth);
    let t = timeline(&html);
    for lane in ["pCPU 0", "pCPU 1", "pCPU 2"] {
        assert!(t.contains(lane), "no lane {lane} in the timeline");
    }
    // Every domain's vCPUs ran somewhere: each has its colour in the timeline.
    for d in 1..=5 {
        assert!(t.contains(&format!("<title>d{d}v0</title>")), "d{d}v0 never runs in the timeline");
    }
    assert!(t.contains("<title>events lost</title>"), "the lost records are not hatched");
    let Some(exe) = chromium() else { return };
    let dom = open_in_chromium(exe, &file);
    assert!(dom.contains("<svg") && dom.contains("pCPU 2"), "chromium's DOM lacks the timeline");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn a_report_of_a_damaged_trace_shows_every_intact_packet_and_warns() {
    let tmp = tempdir("damaged");
    let (dir, intact) = damaged_demo(&tmp);
    let file = tmp.join("report.html");
    let out = hvtrace(&["report", dir.to_str().unwrap(), "--output", file.to_str().unwrap()]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "a damaged trace gives a report, with warnings: {log}");
    assert!(log.contains("warning") && log.contains("channel0_0: skipped bytes 49152..65536"), "{log}");
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(
        html.contains("<p class=\"warn\">Warning: channel0_0: skipped bytes 49152..65536"),
        "no warning on the page"
    );
    // The Exits table counts the exit records of the intact packets, as
    // babeltrace2 reads the repaired copy.
    if let Some(records) = babeltrace_count(&intact, &["vm_exit"], &["domid", "vcpu", "reason"]) {
        let want: BTreeMap<(String, String), u64> =
            records.into_iter().map(|(k, n)| ((format!("d{}v{}", k[0], k[1]), k[2].clone()), n)).collect();
        assert_eq!(exits_table(&html), want);
    }
    // pCPU 0's skipped packet is missing data: hatched in its lane only.
    let t = timeline(&html);
    let lanes: Vec<&str> = t.split("text-anchor=\"end\" font-size=\"12\">pCPU ").skip(1).collect();
    assert_eq!(lanes.len(), 2);
    assert!(lanes[0].contains("<title>events lost</title>"), "pCPU 0's gap is not hatched");
    assert!(!lanes[1].contains("<title>events lost</title>"), "pCPU 1 lost nothing before its cut");
    if let Some(exe) = chromium() {
        open_in_chromium(exe, &file);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
