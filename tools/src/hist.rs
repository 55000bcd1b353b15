//! Latency histograms: log-linear buckets (four per power of two, so a
//! bucket is at most 25% wide), recorded with relaxed atomic increments (no
//! lock on the call path), read back as sparse `(bucket, count)` pairs.
//!
//! Bucket `i` holds the values `lower(i) ..= upper(i)`: values 0-3 have a
//! bucket each; a value with bit length `b >= 3` falls in bucket
//! `4 * (b - 2) + (v >> (b - 3)) - 4` (its top three bits pick one of four).
//! Percentiles are reported as the middle of their bucket (within 12.5%).

use std::sync::atomic::{AtomicU64, Ordering};

/// Number of buckets (enough for any `u64`).
pub const BUCKETS: usize = 252;

/// The bucket `v` falls in.
pub fn bucket(v: u64) -> usize {
    if v < 4 {
        return v as usize;
    }
    let b = 64 - v.leading_zeros() as usize; // bit length, >= 3
    4 * (b - 2) + ((v >> (b - 3)) as usize) - 4
}

/// The smallest value in bucket `i`.
pub fn lower(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let b = i / 4 + 2;
    ((4 + (i % 4)) as u64) << (b - 3)
}

/// The largest value in bucket `i`.
pub fn upper(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        return u64::MAX;
    }
    lower(i + 1) - 1
}

/// The value reported for bucket `i`: the middle of its range.
pub fn middle(i: usize) -> u64 {
    let (lo, hi) = (lower(i), upper(i));
    lo + (hi - lo) / 2
}

/// A histogram that many threads may record into at once (relaxed atomics).
pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Count one value.
    #[inline]
    pub fn record(&self, v: u64) {
        self.counts[bucket(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// The non-empty buckets as `(bucket, count)`, in bucket order.
    pub fn sparse(&self) -> Vec<(u32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then_some((i as u32, n))
            })
            .collect()
    }
}

/// A histogram read back from its sparse form, for arithmetic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub Vec<(u32, u64)>);

impl Counts {
    /// Total number of values.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// What was recorded since `earlier` (a snapshot of the same histogram):
    /// bucket-wise differences, never below zero.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut out = Vec::with_capacity(self.0.len());
        for &(i, n) in &self.0 {
            let before = earlier
                .0
                .iter()
                .find(|(j, _)| *j == i)
                .map_or(0, |(_, m)| *m);
            if n > before {
                out.push((i, n - before));
            }
        }
        Counts(out)
    }

    /// The `q`-quantile (0.0-1.0), as its bucket's middle; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable_by_key(|(i, _)| *i);
        // The smallest value with at least ceil(q * total) values at or below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in sorted {
            seen += n;
            if seen >= rank {
                return Some(middle(i as usize));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        for i in 0..BUCKETS - 1 {
            assert_eq!(upper(i) + 1, lower(i + 1), "gap after bucket {i}");
            assert_eq!(bucket(lower(i)), i);
            assert_eq!(bucket(upper(i)), i);
        }
    }

    #[test]
    fn buckets_are_at_most_a_quarter_wide() {
        for i in 8..BUCKETS - 1 {
            let (lo, hi) = (lower(i), upper(i));
            assert!((hi - lo + 1) * 4 <= lo, "bucket {i}: {lo}..={hi}");
        }
    }

    #[test]
    fn quantiles_of_known_values() {
        let h = Histogram::new();
        for us in 1..=100u64 {
            h.record(us * 1000);
        }
        let c = Counts(h.sparse());
        assert_eq!(c.total(), 100);
        let p50 = c.quantile(0.5).unwrap() as f64;
        let p99 = c.quantile(0.99).unwrap() as f64;
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.13, "{p50}");
        assert!((p99 / 99_000.0 - 1.0).abs() < 0.13, "{p99}");
        assert_eq!(Counts::default().quantile(0.5), None);
    }

    #[test]
    fn differences_between_snapshots() {
        let h = Histogram::new();
        h.record(10);
        let a = Counts(h.sparse());
        h.record(10);
        h.record(1_000_000);
        let d = Counts(h.sparse()).since(&a);
        assert_eq!(d.total(), 2);
        assert_eq!(d.quantile(1.0), Some(middle(bucket(1_000_000))));
    }
}
