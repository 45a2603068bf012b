//! The fuzz target as a plain test, for stable Rust and CI: the seeds, every
//! truncation of them, bit flips, and deterministic random inputs (plus any
//! corpus or crash files cargo-fuzz left in `corpus/` and `artifacts/`).

use hvtrace_fuzz::{decode_request_input, seeds};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn seeds_truncations_and_bit_flips() {
    for s in seeds() {
        for cut in 0..=s.len() {
            decode_request_input(&s[..cut]);
        }
        for i in 0..s.len() * 8 {
            let mut m = s.clone();
            m[i / 8] ^= 1 << (i % 8);
            decode_request_input(&m);
        }
    }
}

#[test]
fn random_inputs() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_f00d);
    for _ in 0..200_000 {
        let mut m = seeds[(rng.next() % seeds.len() as u64) as usize].clone();
        match rng.next() % 4 {
            // Random bytes after a valid header.
            0 => {
                let n = (rng.next() % 48) as usize;
                m.truncate(12);
                m.extend((0..n).map(|_| rng.next() as u8));
                let len = (m.len() - 12) as u32;
                m[8..12].copy_from_slice(&len.to_le_bytes());
            }
            // Mutations anywhere.
            1 => {
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() % m.len() as u64) as usize;
                    m[i] = rng.next() as u8;
                }
            }
            // Pure noise.
            2 => m = (0..rng.next() % 64).map(|_| rng.next() as u8).collect(),
            // Extended past the end.
            _ => m.extend((0..1 + rng.next() % 16).map(|_| rng.next() as u8)),
        }
        decode_request_input(&m);
    }
    // Oversized.
    decode_request_input(&vec![0u8; hvtrace_proto::MAX_MESSAGE + 1]);
}

#[test]
fn saved_corpus_and_artifacts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for sub in ["corpus/decode_request", "artifacts/decode_request"] {
        let Ok(entries) = std::fs::read_dir(root.join(sub)) else { continue };
        for e in entries.flatten() {
            decode_request_input(&std::fs::read(e.path()).unwrap());
            n += 1;
        }
    }
    println!("{n} saved inputs replayed");
}
