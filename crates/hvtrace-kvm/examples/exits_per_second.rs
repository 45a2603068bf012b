//! Measures VM exits per second with the [`NullObserver`] (the untraced baseline).
//!
//! `cargo run --release -p hvtrace-kvm --example exits_per_second -- [--vcpus N]
//! [--iterations N] [--compute N] [--io N] [--mmio N] [--hypercalls N] [--events N]`
//! (defaults: 1 vCPU, 20000 iterations, [`Workload::default`]).

use hvtrace_kvm::{kvm_available, NullObserver, Vmm, VmmConfig, Workload};

fn main() {
    let mut config = VmmConfig { vcpus: 1, iterations: 20_000, workload: Workload::default() };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let n: u64 = value.parse().unwrap_or_else(|_| panic!("{flag}: not a number"));
        let n32 = u32::try_from(n).expect("value too large");
        match flag.as_str() {
            "--vcpus" => config.vcpus = n32,
            "--iterations" => config.iterations = n,
            "--compute" => config.workload.compute_loop = n32,
            "--io" => config.workload.io_writes = n32,
            "--mmio" => config.workload.mmio_writes = n32,
            "--hypercalls" => config.workload.hypercalls = n32,
            "--events" => config.workload.guest_events = n32,
            _ => panic!("unknown flag {flag}"),
        }
    }
    if let Err(why) = kvm_available() {
        eprintln!("SKIP: KVM not usable: {why}");
        std::process::exit(2);
    }
    let report = Vmm::run(&config, &NullObserver).expect("VMM run");
    let exits = report.total_exits();
    println!(
        "{} vCPU(s) x {} iterations of {:?}: {exits} exits in {:.3} s = {:.0} exits/s ({:.0} per vCPU)",
        config.vcpus,
        config.iterations,
        config.workload,
        report.elapsed.as_secs_f64(),
        report.exits_per_second(),
        report.exits_per_second() / f64::from(config.vcpus)
    );
}
