//! `hvtrace-bench xentrace`: the same generated xentrace file processed by
//! `xenalyze --summary` and imported by `hvtrace import xentrace`, in turn,
//! `--reps` times; wall and CPU time (user + system, from the children's
//! rusage: the machine is shared, CPU time is the steadier figure) per run,
//! medians, and hvtrace's time over xenalyze's.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hvtrace_xen::gen::Scenario;

use crate::host::{hvtrace_exe, temp_dir};
use crate::util::{children_cpu_ns, median, round2};

/// Arguments of `hvtrace-bench xentrace`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Scheduling rounds of the generated host (4 pCPUs, 8 actions per
    /// vCPU run): about 2.2 KiB of xentrace file per round.
    #[arg(long, default_value_t = 100_000)]
    rounds: u32,
    /// Runs of each tool.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// The `hvtrace` binary (default: next to this one).
    #[arg(long)]
    hvtrace: Option<PathBuf>,
    /// The xenalyze binary.
    #[arg(long, default_value = "xenalyze")]
    xenalyze: PathBuf,
}

/// Runs `cmd` to completion with its output discarded: (wall s, CPU s).
fn timed(cmd: &mut Command, what: &str) -> Result<(f64, f64)> {
    let cpu0 = children_cpu_ns();
    let t0 = Instant::now();
    let st = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().with_context(|| format!("cannot run {what}"))?;
    let wall = t0.elapsed().as_secs_f64();
    if !st.success() {
        bail!("{what} failed: {st}");
    }
    Ok((wall, (children_cpu_ns() - cpu0) as f64 / 1e9))
}

pub(crate) fn run(a: Args) -> Result<()> {
    let exe = hvtrace_exe(a.hvtrace.as_deref())?;
    if Command::new(&a.xenalyze).arg("--help").output().is_err() {
        bail!("{} not found (apt install xen-utils-4.17)", a.xenalyze.display());
    }
    let tmp = temp_dir("xentrace")?;
    let file = tmp.path().join("bench.xentrace");
    let sc = Scenario {
        pcpus: 4,
        domains: 6,
        vcpus: 2,
        rounds: a.rounds,
        actions: 8,
        ring_bytes: 256 << 10,
        lost: 5,
        cut: 0,
        seed: 7,
        expect: false,
    };
    let g = sc.generate();
    std::fs::write(&file, &g.bytes).context("cannot write the generated file")?;
    let bytes = g.bytes.len() as u64;
    drop(g);
    let (mut xa, mut hv) = (Vec::new(), Vec::new());
    let mut records = 0u64;
    for rep in 0..a.reps {
        xa.push(timed(Command::new(&a.xenalyze).arg("--summary").arg(&file), "xenalyze --summary")?);
        let out = tmp.path().join(format!("trace{rep}"));
        let mut cmd = Command::new(&exe);
        cmd.args(["import", "xentrace", "--cpu-hz", "2400000000", "--json", "-o"]).arg(&out).arg(&file);
        hv.push(timed(&mut cmd, "hvtrace import xentrace")?);
        if rep == 0 {
            let o = Command::new(&exe)
                .args(["import", "xentrace", "--json", "-o"])
                .arg(tmp.path().join("count"))
                .arg(&file)
                .output()?;
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).context("import --json")?;
            records = j["records"].as_u64().unwrap_or(0);
            std::fs::remove_dir_all(tmp.path().join("count"))?;
        }
        std::fs::remove_dir_all(&out)?;
    }
    let med = |v: &[(f64, f64)], cpu: bool| median(&v.iter().map(|x| if cpu { x.1 } else { x.0 }).collect::<Vec<_>>());
    let (xw, xc, hw, hc) = (med(&xa, false), med(&xa, true), med(&hv, false), med(&hv, true));
    let j = serde_json::json!({
        "file_bytes": bytes,
        "records": records,
        "reps": a.reps,
        "xenalyze_summary_s": xw,
        "xenalyze_summary_cpu_s": xc,
        "import_s": hw,
        "import_cpu_s": hc,
        "import_mrecords_per_s": round2(records as f64 / hw / 1e6),
        "xenalyze_mrecords_per_s": round2(records as f64 / xw / 1e6),
        "import_over_xenalyze": round2(hw / xw),
        "import_over_xenalyze_cpu": round2(hc / xc),
    });
    println!("{j}");
    Ok(())
}
