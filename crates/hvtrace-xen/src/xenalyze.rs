//! Reading `xenalyze --summary`'s text, to compare an import with the tool
//! Xen users trust (tests, checks). Only what is compared is read: the
//! per-vCPU `Exit reasons:`, `Runstates:` and `IO address summary:` tables.

use std::collections::BTreeMap;

/// `(domid, vcpu, exit code)` → `(count, total cycles)`.
pub type Exits = BTreeMap<(u32, u32, u32), (u64, u64)>;

/// `(domid, vcpu, runstate name)` → `(intervals, total cycles)`.
pub type Runstates = BTreeMap<(u32, u32, &'static str), (u64, u64)>;

/// `(domid, vcpu, port, "read" | "write")` → `(exits, total cycles)`.
pub type IoPorts = BTreeMap<(u32, u32, u16, &'static str), (u64, u64)>;

/// The domain and vCPU a line of the summary is under.
#[derive(Default)]
struct Place {
    dom: Option<u32>,
    vcpu: Option<u32>,
}

impl Place {
    /// Follows `|-- Domain N --|` and `-- vN --` headings; true on one.
    fn heading(&mut self, line: &str) -> bool {
        if let Some(d) = line.strip_prefix("|-- Domain ").and_then(|r| r.strip_suffix(" --|")) {
            (self.dom, self.vcpu) = (d.trim().parse().ok(), None);
        } else if let Some(v) = line.strip_prefix("-- v").and_then(|r| r.strip_suffix(" --")) {
            self.vcpu = v.trim().parse().ok();
        } else {
            return false;
        }
        true
    }

    fn vcpu(&self) -> Option<(u32, u32)> {
        Some((self.dom?, self.vcpu?))
    }
}

/// xenalyze's names for VMX exit reasons where they differ from the SDM's
/// (`hvtrace_sim::VmxExitReason`).
pub const ALIASES: &[(&str, u32)] = &[("PENDING_INTERRUPT", 7), ("PENDING_NMI", 8)];

/// A line of the summary that does not read as its table says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("xenalyze summary line {line}: {what}: {text:?}")]
pub struct SummaryError {
    /// Line number, from 1.
    pub line: usize,
    /// What was expected.
    pub what: &'static str,
    /// The line.
    pub text: String,
}

/// The code of a VMX exit reason as xenalyze names it.
fn exit_code(name: &str) -> Option<u32> {
    ALIASES
        .iter()
        .find(|a| a.0 == name)
        .map(|a| a.1)
        .or_else(|| hvtrace_sim::VmxExitReason::LABELS.iter().find(|l| l.label == name).map(|l| l.value as u32))
}

/// `count` and `count` × the average cycles of a summary row whose count
/// is word `count_at` and whose average is word `avg_at`.
fn row(w: &[&str], count_at: usize, avg_at: usize) -> Option<(u64, u64)> {
    let count: u64 = w.get(count_at)?.parse().ok()?;
    let avg: u64 = w.get(avg_at)?.parse().ok()?;
    Some((count, count.checked_mul(avg)?))
}

/// A `NAME count seconds percent% average cyc {p5|p50|p95}` row
/// (`PRINT_SUMMARY`'s form with cycles).
fn cycles_row(w: &[&str]) -> Result<(u64, u64), &'static str> {
    if w.get(5) != Some(&"cyc") {
        return Err("`NAME count seconds percent average cyc`");
    }
    row(w, 1, 4).ok_or("a count and an average")
}

/// How a table reads a line under its title.
enum Line<K> {
    /// A row: its key, and `(count, total cycles)`.
    Row(K, (u64, u64)),
    /// A line of the table that is not read (a sub-row).
    Skip,
    /// Not the table's: it has ended.
    End,
}

/// The tables titled `title` (a line starting so) under each vCPU of
/// `xenalyze --summary`: each line after the title, with its words and
/// the vCPU's `(domid, vcpu)`, goes through `read` until it says
/// [`Line::End`], a blank line or a heading comes. The domains' own
/// tables are left out.
fn vcpu_tables<K: Ord>(
    text: &str,
    title: &str,
    read: impl Fn((u32, u32), &str, &[&str]) -> Result<Line<K>, &'static str>,
) -> Result<BTreeMap<K, (u64, u64)>, SummaryError> {
    let mut place = Place::default();
    let mut in_table = false;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if place.heading(line) {
            in_table = false;
        } else if line.starts_with(title) {
            in_table = place.vcpu().is_some();
        } else if let (true, Some(vcpu)) = (in_table, place.vcpu()) {
            let w: Vec<&str> = line.split_whitespace().collect();
            let read = if w.is_empty() { Ok(Line::End) } else { read(vcpu, line, &w) };
            match read.map_err(|what| SummaryError { line: n + 1, what, text: line.to_string() })? {
                Line::Row(k, v) => {
                    out.insert(k, v);
                }
                Line::Skip => {}
                Line::End => in_table = false,
            }
        }
    }
    Ok(out)
}

/// The `Exit reasons:` tables of `xenalyze --summary` (VMX names), per
/// domain and vCPU: count, and count × average cycles (xenalyze prints the
/// average rounded down).
pub fn exits(text: &str) -> Result<Exits, SummaryError> {
    vcpu_tables(text, "Exit reasons:", |(d, v), line, w| {
        // ` NAME  count  secs  pct%  avg cyc {p5|p50|p95}`; sub-handler rows are indented further.
        if !line.starts_with(' ') {
            return Ok(Line::End);
        }
        if line.starts_with("  ") {
            return Ok(Line::Skip);
        }
        let code = exit_code(w[0]).ok_or("an exit reason xenalyze names and VMX has")?;
        Ok(Line::Row((d, v, code), cycles_row(w)?))
    })
}

/// The `Runstates:` tables of the vCPUs in `xenalyze --summary`:
/// intervals and intervals × average cycles, per state (`running`,
/// `runnable`, `blocked`, `offline`, `lost`; the `runnable` split into
/// wake / preempt / other is left out).
pub fn runstates(text: &str) -> Result<Runstates, SummaryError> {
    vcpu_tables(text, " Runstates:", |(d, v), _, w| {
        let state = match w[0] {
            "running:" => "running",
            "runnable:" => "runnable",
            "blocked:" => "blocked",
            "offline:" => "offline",
            "lost:" => "lost",
            "wake:" | "preempt:" | "other:" | "init:" | "queued:" => return Ok(Line::Skip),
            _ => return Ok(Line::End),
        };
        // `state:  count  seconds  average {p5|p50|p95}`
        Ok(Line::Row((d, v, state), row(w, 1, 3).ok_or("`state: count seconds average`")?))
    })
}

/// The `IO address summary:` tables of the vCPUs in `xenalyze --summary`
/// (the port I/O exits by port and direction): count, and count × average
/// cycles.
pub fn io_ports(text: &str) -> Result<IoPorts, SummaryError> {
    vcpu_tables(text, "IO address summary:", |(d, v), line, w| {
        if !line.starts_with(' ') {
            return Ok(Line::End);
        }
        // `    3f8:[w]   count  seconds  pct%  avg cyc {p5|p50|p95}`
        let (port, dir) = w[0].split_once(':').ok_or("`port:[r]` or `port:[w]`")?;
        let port = u16::from_str_radix(port, 16).map_err(|_| "a port in hex")?;
        let access = match dir {
            "[r]" => "read",
            "[w]" => "write",
            _ => return Err("`[r]` or `[w]`"),
        };
        Ok(Line::Row((d, v, port, access), cycles_row(w)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "\
|-- Domain 3 --|
 Runstates:
   blocked:      11  0.54s 116945488 {60100000|328535456|328535456}
-- v0 --
 Runstates:
   running:      90  2.46s 65690894 {29899500|298334956|298334956}
  runnable:      89  4.44s 119669893 {60101500|328536956|358533956}
        wake:      23  0.00s    500 {   500|   500|   500}
 cpu affinity:      89 226123014 {90001000|119998000|388433456}
Exit reasons:
 EXTERNAL_INTERRUPT         58  0.00s  0.01% 32721 cyc { 5563|31430|58350}
            [ 89]: 1
 PENDING_INTERRUPT          61  0.00s  0.01% 28690 cyc { 7319|24579|55305}
 HLT                        40  0.00s  0.01% 38445 cyc { 7621|43241|59346}
   hlt       40  0.00s  0.01% 38445 cyc { 7621|43241|59346}
Guest interrupt counts:
IO address summary:
      70:[r]        5  0.00s  0.00% 28933 cyc { 8719|32799|46493}
     3f8:[w]        4  0.00s  0.00% 38184 cyc { 7828|53422|58855}
-- v1 --
";

    #[test]
    fn the_vcpu_tables_are_read_and_the_domain_ones_left_out() {
        let x = exits(SUMMARY).unwrap();
        let want: Exits =
            [((3, 0, 1), (58, 58 * 32721)), ((3, 0, 7), (61, 61 * 28690)), ((3, 0, 12), (40, 40 * 38445))].into();
        assert_eq!(x, want);
        let r = runstates(SUMMARY).unwrap();
        let want: Runstates =
            [((3, 0, "running"), (90, 90 * 65690894)), ((3, 0, "runnable"), (89, 89 * 119669893))].into();
        assert_eq!(r, want);
        let io = io_ports(SUMMARY).unwrap();
        let want: IoPorts = [((3, 0, 0x70, "read"), (5, 5 * 28933)), ((3, 0, 0x3f8, "write"), (4, 4 * 38184))].into();
        assert_eq!(io, want);
    }

    #[test]
    fn an_unreadable_row_is_an_error_with_its_line() {
        let bad = SUMMARY.replace(" HLT                        40", " HLT                        forty");
        let e = exits(&bad).unwrap_err();
        assert_eq!(e.line, 14);
        let bad = SUMMARY.replace(" HLT ", " NO_SUCH_REASON ");
        assert!(exits(&bad).unwrap_err().to_string().contains("an exit reason"));
        let bad = SUMMARY.replace("90  2.46s 65690894", "90  2.46s");
        assert_eq!(runstates(&bad).unwrap_err().line, 6);
        let bad = SUMMARY.replace("3f8:[w]", "3f8:[x]");
        assert_eq!(io_ports(&bad).unwrap_err().line, 19);
        // A blank line ends a table (its first word was read unchecked).
        let blank = SUMMARY.replace("Exit reasons:\n", "Exit reasons:\n \n");
        assert_eq!(exits(&blank).unwrap(), Exits::new());
    }
}
