//! CPU cost of turning the kernel's pages into CTF packets, per event: full
//! 4 KiB pages of `kvm_pio` and `kvm_userspace_exit` records (what a nested
//! KVM-PVM host emits most, with `kvm_emulate_insn`, here too), from the
//! recorded format files, built the way the kernel writes them.
//! The reader's whole cost (syscalls, wake-ups) is measured end to end with
//! `record-kernel` (docs/benchmarks.md); this is the conversion alone.
//!
//! `cargo bench -p hvtrace-ftrace --bench convert`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hvtrace_ftrace::format::parse_format;
use hvtrace_ftrace::page::synth::PageBuilder;
use hvtrace_ftrace::{EventTable, KernelStream};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

/// One page of alternating pio (28 bytes) / userspace_exit (16) / emulate_insn (38) records.
fn page() -> (Vec<u8>, u64) {
    let mut b = PageBuilder::new(1_000_000);
    let (mut ts, mut n, mut used) = (1_000_000u64, 0u64, 0usize);
    let mut pio = vec![0u8; 28];
    pio[0..2].copy_from_slice(&110u16.to_le_bytes());
    let mut exit = vec![0u8; 16];
    exit[0..2].copy_from_slice(&42u16.to_le_bytes());
    let mut insn = vec![0u8; 38];
    insn[0..2].copy_from_slice(&85u16.to_le_bytes());
    for r in [&pio, &exit, &insn].iter().cycle() {
        let len = 4 + r.len().div_ceil(4) * 4;
        if used + len > 4096 - 16 {
            break;
        }
        ts += 700;
        b = b.record(ts, r, false);
        used += len;
        n += 1;
    }
    (b.build(4096), n)
}

fn convert(c: &mut Criterion) {
    let table = EventTable::new(
        ["kvm_pio", "kvm_userspace_exit", "kvm_emulate_insn"]
            .map(|n| parse_format("kvm", &fixture(&format!("{n}.format"))).unwrap())
            .to_vec(),
    )
    .unwrap();
    let (page, events) = page();
    let mut g = c.benchmark_group("ftrace");
    g.throughput(Throughput::Elements(events));
    let mut stream = KernelStream::new(0, [0; 16]);
    let mut out = Vec::with_capacity(1 << 20);
    g.bench_function(format!("page_to_packet ({events} events a page)"), |b| {
        b.iter(|| {
            out.clear();
            stream.page(&table, black_box(&page), 0, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, convert);
criterion_main!(benches);
