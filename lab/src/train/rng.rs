//! A tiny deterministic random number generator whose whole state is one `u64`.
//!
//! Training must be reproducible from a seed and resumable from a checkpoint, so every random
//! choice (initial weights, batch offsets, typo positions) is drawn from [`SplitMix64`] streams
//! derived from `(seed, purpose, index)`. Deriving a fresh stream per step means the "RNG state"
//! stored in a checkpoint is just the step number: resuming at step `s` draws exactly the batches
//! an uninterrupted run would have drawn.
//!
//! SplitMix64 is Steele, Lea & Flood, "Fast splittable pseudorandom number generators"
//! (OOPSLA 2014); constants as in the reference implementation.

/// SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream for `(seed, purpose, index)`, e.g. `(seed, "batch", step)`.
    pub fn derive(seed: u64, purpose: &str, index: u64) -> Self {
        // FNV-1a over the purpose string keeps purposes apart; mixing through `next_u64`
        // decorrelates neighbouring indices.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in purpose.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut g = Self::new(seed ^ h);
        let a = g.next_u64();
        let mut g = Self::new(a ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        g.next_u64();
        g
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; returns 0 for `n == 0`). Lemire's multiply-shift; the bias
    /// for the `n` used here (< 2^32) is below 2^-32 and irrelevant for sampling.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit_f64(); // (0, 1]
        let u2 = self.unit_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // First outputs of SplitMix64 seeded with 0 (reference implementation).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn derived_streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4)
            .map(|i| SplitMix64::derive(7, "batch", i).next_u64())
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|i| SplitMix64::derive(7, "batch", i).next_u64())
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|i| SplitMix64::derive(7, "init", i).next_u64())
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn below_and_normal_ranges() {
        let mut g = SplitMix64::new(3);
        let mut sum = 0.0;
        let mut sq = 0.0;
        for _ in 0..20_000 {
            assert!(g.below(10) < 10);
            let x = g.normal();
            sum += x;
            sq += x * x;
        }
        let mean = sum / 20_000.0;
        let var = sq / 20_000.0 - mean * mean;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
