//! Count, total and distribution of some intervals (clock ticks), kept
//! per record at the cost of a bucket increment. The buckets are
//! hdrhistogram's at 2 significant figures and the percentiles its own
//! ([`Durations::histogram`] hands the counts to a `Histogram`), so they
//! are exactly what recording each interval into a `Histogram` gives;
//! only the recording is done here: hdrhistogram's `record` (bounds and
//! resize checks, its own count, min and max per value) was ~50
//! instructions a value and analyze's largest single cost after the reader.

use hdrhistogram::Histogram;

/// Significant figures: percentiles within 1 %, and histograms small
/// enough that dozens per vCPU stay in cache.
const SIGFIG: u8 = 2;

/// hdrhistogram's layout at [`SIGFIG`] from a lowest value of 1: single
/// unit resolution up to 2·10², so 256 sub-buckets; bucket `b` holds the
/// values below 256·2^b at steps of 2^b, in its upper half (its lower
/// half is the bucket before). `HALF` is log2 of the half (128).
const HALF: u32 = 7;
/// The values of bucket 0: the bits no bucket index depends on.
const MASK: u64 = (1 << (HALF + 1)) - 1;

/// The bucket of `v` in a `Histogram::new(SIGFIG)`'s counts (its
/// `index_for`): the bucket index from the leading zeros, then the
/// sub-bucket, in the bucket's upper half.
#[inline]
fn index(v: u64) -> usize {
    let bucket = (u64::BITS - HALF - 1) - (v | MASK).leading_zeros();
    ((bucket as usize + 1) << HALF) + (v >> bucket) as usize - (1 << HALF)
}

/// The lowest value of bucket `i` (hdrhistogram's `value_for`).
fn lowest(i: usize) -> u64 {
    let sub = (i as u64 & ((1 << HALF) - 1)) + (1 << HALF);
    match i >> HALF {
        0 => i as u64,
        half => sub << (half - 1),
    }
}

/// Values a [`Durations`] holds back before counting them together.
const PENDING: usize = 32;

/// Count, total and distribution of some intervals (ticks).
pub(crate) struct Durations {
    pub count: u64,
    pub total: u64,
    pub min: u64,
    pub max: u64,
    /// Intervals per bucket ([`index`]) modulo 256, as long as the
    /// longest needs: a byte a bucket, so the buckets a vCPU's figures use
    /// take a quarter of the cache lines u32s would; the count was the
    /// cache miss of the whole analysis.
    counts: Vec<u8>,
    /// The 256s: (bucket, count / 256) of the buckets that reached 256,
    /// in the order they did (a few; looked up once per 256 intervals).
    carries: Vec<(u32, u64)>,
    /// The latest values, counted `PENDING` at a time: one vCPU's intervals
    /// of one kind are alike, so a batch touches a few of `counts`' cache
    /// lines, and its loads overlap (counting each as it came took a cache
    /// miss on the bucket, in line). Kept inline: beside `count`, in the
    /// lines `add` touches anyway.
    pending: [u64; PENDING],
    held: usize,
    /// Once compacted ([`Durations::compact`]): the non-zero buckets
    /// (index, count); `counts` and `carries` are then empty.
    sparse: Option<Box<[(u32, u64)]>>,
}

impl Durations {
    pub fn new() -> Durations {
        Durations {
            count: 0,
            total: 0,
            min: u64::MAX,
            max: 0,
            counts: Vec::new(),
            carries: Vec::new(),
            pending: [0; PENDING],
            held: 0,
            sparse: None,
        }
    }

    /// Keeps only the non-zero buckets, until [`Durations::absorb`] adds
    /// them elsewhere: the counts of long intervals are ~10 KiB of mostly
    /// zeros, and a later time window keeps every vCPU whose domain ended
    /// in it until the merge.
    pub fn compact(&mut self) {
        self.flush();
        let buckets = self.buckets().map(|(i, n)| (i as u32, n)).collect();
        self.sparse = Some(buckets);
        self.counts = Vec::new();
        self.carries = Vec::new();
    }

    #[inline]
    pub fn add(&mut self, d: u64) {
        self.count += 1;
        self.total += d;
        self.min = self.min.min(d);
        self.max = self.max.max(d);
        self.pending[self.held] = d;
        self.held += 1;
        if self.held == PENDING {
            self.flush();
        }
    }

    /// Counts the values held back.
    pub fn flush(&mut self) {
        for &d in &self.pending[..self.held] {
            let i = index(d);
            if i >= self.counts.len() {
                grow(&mut self.counts, i);
            }
            let n = &mut self.counts[i];
            *n = n.wrapping_add(1);
            if *n == 0 {
                carry(&mut self.carries, i, 1);
            }
        }
        self.held = 0;
    }

    /// The intervals as an hdrhistogram `Histogram` (for its quantiles:
    /// `value_at_quantile` answers with its bucket's highest equivalent
    /// value), with the values held back.
    pub fn histogram(&self) -> Histogram<u64> {
        debug_assert!(self.sparse.is_none(), "a compacted histogram is only added elsewhere");
        let mut h = Histogram::new(SIGFIG).expect("2 sigfig is valid");
        let mut put = |i: usize, n: u64| h.record_n(lowest(i), n).expect("auto-resizing histograms grow");
        self.buckets().for_each(|(i, n)| put(i, n));
        self.pending[..self.held].iter().for_each(|&d| put(index(d), 1));
        h
    }

    /// The non-zero buckets counted so far: (index, count).
    fn buckets(&self) -> impl Iterator<Item = (usize, u64)> {
        let mut all: Vec<u64> = self.counts.iter().map(|&n| u64::from(n)).collect();
        self.carries.iter().for_each(|&(i, n)| all[i as usize] += n << 8);
        all.into_iter().enumerate().filter(|&(_, n)| n > 0)
    }

    /// Adds the intervals of `other`, as if each had been added here
    /// (bucket by bucket: the quantiles are exact).
    pub fn absorb(&mut self, other: &Durations) {
        self.count += other.count;
        self.total += other.total;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        let mut put = |i: usize, n: u64| {
            if i >= self.counts.len() {
                grow(&mut self.counts, i);
            }
            let sum = u64::from(self.counts[i]) + n;
            self.counts[i] = sum as u8;
            if sum >> 8 > 0 {
                carry(&mut self.carries, i, sum >> 8);
            }
        };
        match &other.sparse {
            Some(buckets) => buckets.iter().for_each(|&(i, n)| put(i as usize, n)),
            None => other.buckets().for_each(|(i, n)| put(i, n)),
        }
        other.pending[..other.held].iter().for_each(|&d| put(index(d), 1));
    }

    /// The intervals of all `parts` together, as if each had been added here.
    pub fn merged(parts: &[&Durations]) -> Durations {
        let mut all = Durations::new();
        parts.iter().for_each(|p| all.absorb(p));
        all
    }
}

/// Makes room for bucket `i`, a whole half-bucket at a time (as
/// hdrhistogram's auto-resize).
#[cold]
fn grow(counts: &mut Vec<u8>, i: usize) {
    counts.resize(((i >> HALF) + 1) << HALF, 0);
}

/// Adds `n` 256s to bucket `i`.
#[cold]
fn carry(carries: &mut Vec<(u32, u64)>, i: usize, n: u64) {
    match carries.iter_mut().find(|c| c.0 as usize == i) {
        Some(c) => c.1 += n,
        None => carries.push((i as u32, n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Intervals spread over many buckets and magnitudes (1 tick to ~10 s at 1 GHz).
    fn values() -> impl Iterator<Item = u64> {
        (0..5000u64).map(|i| (i * 7919 % 4999 + 1) * (1 << (i % 24)))
    }

    fn direct(vs: impl Iterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new(SIGFIG).unwrap();
        vs.for_each(|d| h.record(d).unwrap());
        h
    }

    const QUANTILES: [f64; 6] = [0.0, 0.25, 0.5, 0.95, 0.99, 1.0];

    #[test]
    fn the_buckets_are_hdrhistograms() {
        let h = Histogram::<u32>::new(SIGFIG).unwrap();
        // Every value up to a few buckets, then each power of two and its
        // neighbours, and scattered values, up to u64::MAX.
        let powers = (0..64).flat_map(|b| [(1u64 << b) - 1, 1 << b, (1 << b) + 1, (1 << b) * 3 / 2]);
        let scattered = (0..100_000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 64));
        for v in (0..5000).chain(powers).chain(scattered).chain([u64::MAX]) {
            let i = index(v);
            assert_eq!(lowest(i), h.lowest_equivalent(v), "value {v}, bucket {i}");
            // Buckets are ranges: the next one starts past this one's values
            // (hdrhistogram caps the last one's at u64::MAX).
            let next = h.next_non_equivalent(v);
            assert_eq!(index(next - 1), i, "value {v}");
            if next < u64::MAX {
                assert_eq!(index(next), i + 1, "value {v}");
            }
        }
    }

    #[test]
    fn values_held_back_answer_as_if_recorded_at_once() {
        let mut d = Durations::new();
        // 5000 is not a multiple of PENDING: some are still held at the end.
        values().for_each(|v| d.add(v));
        assert_ne!(d.held, 0);
        let h = direct(values());
        for q in QUANTILES {
            assert_eq!(d.histogram().value_at_quantile(q), h.value_at_quantile(q), "q {q} before the flush");
        }
        d.flush();
        assert_eq!(d.held, 0);
        assert_eq!(d.buckets().map(|(_, n)| n).sum::<u64>(), 5000);
        for q in QUANTILES {
            assert_eq!(d.histogram().value_at_quantile(q), h.value_at_quantile(q), "q {q} after the flush");
        }
    }

    #[test]
    fn buckets_past_256_intervals_count_them_all() {
        // Many alike intervals: buckets overflow their byte, some more than once.
        let many = || (0..20_000u64).map(|i| [30, 31, 70, 12_345][(i % 7) as usize % 4] + (i % 3));
        let mut d = Durations::new();
        many().chain(values()).for_each(|v| d.add(v));
        let h = direct(many().chain(values()));
        assert!(d.carries.len() > 4, "{:?}", d.carries);
        for q in QUANTILES {
            assert_eq!(d.histogram().value_at_quantile(q), h.value_at_quantile(q), "q {q}");
        }
        let mut parts = [Durations::new(), Durations::new()];
        many().chain(values()).enumerate().for_each(|(i, v)| parts[i % 2].add(v));
        parts[1].compact();
        let mut all = Durations::merged(&[&parts[0], &parts[1]]);
        all.absorb(&d);
        let h2 = direct(many().chain(values()).chain(many()).chain(values()));
        assert_eq!(all.count, 2 * (20_000 + 5000));
        for q in QUANTILES {
            assert_eq!(all.histogram().value_at_quantile(q), h2.value_at_quantile(q), "q {q}");
        }
    }

    #[test]
    fn parts_added_up_answer_as_the_whole() {
        // As the report makes the runnable row from its split rows, and the
        // merge of time windows adds compacted figures.
        let mut rows = [Durations::new(), Durations::new(), Durations::new()];
        for (i, v) in values().enumerate() {
            rows[i * 31 % 3].add(v);
        }
        rows[1].flush();
        rows[2].compact();
        let all = Durations::merged(&[&rows[0], &rows[1], &rows[2]]);
        let h = direct(values());
        assert_eq!(all.count, 5000);
        assert_eq!(all.total, values().sum::<u64>());
        assert_eq!(all.min, values().min().unwrap());
        assert_eq!(all.max, values().max().unwrap());
        for q in QUANTILES {
            assert_eq!(all.histogram().value_at_quantile(q), h.value_at_quantile(q), "q {q}");
        }
    }
}
