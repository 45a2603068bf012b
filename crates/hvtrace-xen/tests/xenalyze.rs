//! xenalyze as the oracle: a generated xentrace file is imported, read back
//! from CTF with `hvtrace-reader`, mapped onto the hypervisor model with
//! the xentrace [`MAPPING`], and the VM exits per domain, vCPU and reason
//! (count, and total cycles from each exit to the vCPU's next entry) are
//! compared with what `xenalyze --summary` prints for the same file, and
//! with what the generator wrote.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use hvtrace_core::decode::Value;
use hvtrace_model::{Bindings, Catalog, Event, FieldValue, Vcpu};
use hvtrace_reader::{packets, TraceDir, TraceSchema};
use hvtrace_xen::gen::Scenario;
use hvtrace_xen::{ImportOptions, MAPPING};

/// A trace's schema as the model's catalog.
struct SchemaCatalog<'a>(&'a TraceSchema);

impl Catalog for SchemaCatalog<'_> {
    fn event_count(&self) -> u32 {
        self.0.events.len() as u32
    }
    fn event_name(&self, id: u32) -> Option<&str> {
        Some(&self.0.event(id)?.name)
    }
    fn field_count(&self, id: u32) -> usize {
        self.0.event(id).map_or(0, |e| e.fields.len())
    }
    fn field_name(&self, id: u32, i: usize) -> Option<&str> {
        Some(&self.0.event(id)?.fields.get(i)?.name)
    }
    fn enum_labels(&self, id: u32, i: usize) -> Vec<(i64, String)> {
        self.0
            .event(id)
            .and_then(|e| e.fields.get(i))
            .map_or(Vec::new(), |f| f.labels.iter().map(|l| (l.value, l.label.clone())).collect())
    }
}

/// `(domid, vcpu, exit code)` → `(count, total cycles)`.
type Exits = BTreeMap<(u32, u32, u32), (u64, u64)>;

/// The exits of the imported trace at `dir`, through the model.
fn exits_through_the_model(dir: &Path) -> Exits {
    let trace = TraceDir::open(dir).unwrap();
    let schema = trace.schema();
    let bindings = Bindings::bind(&[&MAPPING], &SchemaCatalog(schema));
    assert_eq!(bindings.names(), ["xentrace"]);
    let mut exits = Exits::new();
    for s in &trace.streams {
        let bytes = s.read().unwrap();
        // An exit lasts until its vCPU's next entry (on this pCPU: a vCPU
        // leaves its pCPU only from the hypervisor).
        let mut open: BTreeMap<Vcpu, (u32, u64)> = BTreeMap::new();
        for p in packets(&bytes) {
            let p = p.unwrap();
            for r in p.records(schema) {
                let r = r.unwrap();
                if !bindings.maps(r.id) {
                    continue;
                }
                let vals: Vec<FieldValue<'_>> = r
                    .values(schema)
                    .map(|v| match v {
                        Value::U(u) => FieldValue::Int(u),
                        Value::I(i) | Value::Enum(i) => FieldValue::Int(i as u64),
                        Value::Str(b) | Value::Bytes(b) => FieldValue::Bytes(b),
                        Value::F(_) => FieldValue::Int(0),
                    })
                    .collect();
                let mut fields = [FieldValue::Int(0); 12];
                fields[..vals.len()].copy_from_slice(&vals);
                bindings.map(r.id, &fields, &mut |e| match e {
                    Event::Exit { vcpu, exit } => {
                        open.insert(vcpu, (exit.code, r.timestamp));
                    }
                    Event::Entry { vcpu } => {
                        if let Some((code, t)) = open.remove(&vcpu) {
                            let e = exits.entry((vcpu.domain, vcpu.vcpu, code)).or_default();
                            e.0 += 1;
                            e.1 += r.timestamp - t;
                        }
                    }
                    _ => {}
                });
            }
        }
    }
    exits
}

/// xenalyze's names for VMX exit reasons where they differ from the SDM's
/// (`hvtrace_sim::VmxExitReason`).
const XENALYZE_ALIASES: &[(&str, u32)] = &[("PENDING_INTERRUPT", 7), ("PENDING_NMI", 8)];

/// The `Exit reasons:` tables of `xenalyze --summary`, per domain and vCPU:
/// count and count × average cycles.
fn xenalyze_exits(text: &str) -> Exits {
    let code = |name: &str| {
        XENALYZE_ALIASES
            .iter()
            .find(|a| a.0 == name)
            .map(|a| a.1)
            .or_else(|| hvtrace_sim::VmxExitReason::LABELS.iter().find(|l| l.label == name).map(|l| l.value as u32))
    };
    let (mut dom, mut vcpu, mut in_exits) = (None, None, false);
    let mut out = Exits::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("|-- Domain ").and_then(|r| r.strip_suffix(" --|")) {
            dom = d.trim().parse::<u32>().ok();
            vcpu = None;
            in_exits = false;
        } else if let Some(v) = line.strip_prefix("-- v").and_then(|r| r.strip_suffix(" --")) {
            vcpu = v.trim().parse::<u32>().ok();
            in_exits = false;
        } else if line.starts_with("Exit reasons:") {
            in_exits = true;
        } else if in_exits && line.starts_with(' ') && !line.starts_with("  ") {
            // ` NAME  count  secs  pct%  avg cyc {...}`
            let w: Vec<&str> = line.split_whitespace().collect();
            let (Some(d), Some(v)) = (dom, vcpu) else { continue };
            let c = code(w[0]).unwrap_or_else(|| panic!("xenalyze exit name {} unknown", w[0]));
            let count: u64 = w[1].parse().unwrap();
            let avg: u64 = w[4].parse().unwrap();
            assert_eq!(w[5], "cyc", "{line}");
            out.insert((d, v, c), (count, count * avg));
        } else if !line.starts_with(' ') {
            in_exits = false;
        }
    }
    out
}

fn have_xenalyze(test: &str) -> bool {
    let ok = Command::new("xenalyze").arg("--help").output().is_ok();
    if !ok {
        println!("SKIP: {test}: xenalyze not installed (apt-get install xen-utils-4.17)");
    }
    ok
}

#[test]
fn exits_per_domain_vcpu_and_reason_match_xenalyze() {
    let test = "exits_per_domain_vcpu_and_reason_match_xenalyze";
    let g =
        Scenario { pcpus: 3, domains: 5, vcpus: 2, rounds: 300, lost: 17, cut: 5, ..Scenario::default() }.generate();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("gen.xentrace");
    std::fs::write(&input, &g.bytes).unwrap();
    let out = dir.path().join("trace");
    hvtrace_xen::import_file(&input, &out, ImportOptions::default()).unwrap();
    let ours = exits_through_the_model(&out);

    // The generator's own account, a third count.
    let mut truth = Exits::new();
    for e in &g.exits {
        let t = truth.entry((e.domid as u32, e.vcpu as u32, e.reason)).or_default();
        t.0 += 1;
        t.1 += e.cycles;
    }
    assert_eq!(ours, truth, "the model's exits are the generator's");
    assert!(truth.len() > 50, "{} (domain, vCPU, reason) cells", truth.len());

    if !have_xenalyze(test) {
        return;
    }
    let o = Command::new("xenalyze").arg("--summary").arg(&input).output().unwrap();
    assert!(o.status.success(), "xenalyze failed: {}", String::from_utf8_lossy(&o.stderr));
    let theirs = xenalyze_exits(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the same (domain, vCPU, reason) cells"
    );
    println!("{} (domain, vCPU, reason) cells, {} exits: counts equal, cycles within 0.5 %", ours.len(), g.exits.len());
    let mut worst = 0f64;
    for (k, (n, cyc)) in &ours {
        let (xn, xcyc) = theirs[k];
        if k.0 == 3 && k.1 == 0 {
            println!(
                "d3v0 reason {:>2}: hvtrace {n:>3} exits {cyc:>9} cycles | xenalyze {xn:>3} exits {xcyc:>9} cycles",
                k.2
            );
        }
        worst = worst.max(cyc.abs_diff(xcyc) as f64 / *cyc as f64);
        assert_eq!(*n, xn, "exit count of d{}v{} reason {}", k.0, k.1, k.2);
        // xenalyze prints the average rounded down: totals agree to count cycles.
        let diff = cyc.abs_diff(xcyc) as f64 / *cyc as f64;
        assert!(diff <= 0.005, "d{}v{} reason {}: {cyc} cycles against xenalyze's {xcyc}", k.0, k.1, k.2);
    }
    println!("largest difference in total cycles: {:.5} %", worst * 100.0);
}
