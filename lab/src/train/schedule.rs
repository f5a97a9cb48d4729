//! Learning-rate schedule: linear warm-up, then cosine decay to a floor.
//!
//! lr(s) = peak * (s + 1) / warmup                               for s < warmup
//! lr(s) = floor + (peak - floor) * (1 + cos(pi * p)) / 2         p = (s - warmup) / (total - warmup)
//! lr(s) = floor                                                   for s >= total
//! (Loshchilov & Hutter, "SGDR", ICLR 2017, without restarts.)

use serde::{Deserialize, Serialize};

/// Warm-up + cosine schedule over `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// Peak learning rate, reached at the end of warm-up.
    pub peak_lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: u64,
    /// Total steps (end of the cosine).
    pub total_steps: u64,
}

impl CosineSchedule {
    /// Learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps || self.total_steps <= self.warmup_steps {
            return self.min_lr;
        }
        let p = (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64;
        self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> CosineSchedule {
        CosineSchedule {
            peak_lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 10,
            total_steps: 110,
        }
    }

    #[test]
    fn warmup_is_linear_and_reaches_peak() {
        let s = s();
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(4) - 5e-4).abs() < 1e-12);
        assert!((s.lr(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
    }

    #[test]
    fn cosine_midpoint_end_and_monotone() {
        let s = s();
        assert!((s.lr(60) - 5.5e-4).abs() < 1e-12);
        assert!((s.lr(110) - 1e-4).abs() < 1e-12);
        assert!((s.lr(5000) - 1e-4).abs() < 1e-12);
        for k in 10..110 {
            assert!(s.lr(k + 1) <= s.lr(k) + 1e-15, "not decreasing at {k}");
        }
    }

    #[test]
    fn degenerate_schedules_do_not_divide_by_zero() {
        let s = CosineSchedule {
            peak_lr: 1.0,
            min_lr: 0.5,
            warmup_steps: 0,
            total_steps: 0,
        };
        assert_eq!(s.lr(0), 0.5);
        let s = CosineSchedule {
            peak_lr: 1.0,
            min_lr: 0.5,
            warmup_steps: 5,
            total_steps: 5,
        };
        assert!(s.lr(4).is_finite());
        assert_eq!(s.lr(5), 0.5);
    }
}
