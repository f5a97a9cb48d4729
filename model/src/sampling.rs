//! Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling with a
//! seeded RNG, after an optional repetition penalty. The order matches transformers' logits
//! processors: repetition penalty, temperature, top-k, top-p, then sampling.

use rand::SeedableRng;
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;

use crate::error::{Result, UsageError};

/// Sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` (nucleus
    /// sampling, Holtzman et al. 2019).
    pub top_p: Option<f64>,
    /// CTRL (Keskar et al. 2019) penalty for tokens already in the context; 1.0 is none.
    pub repetition_penalty: f64,
    /// RNG seed: the same seed, model and prompt give the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// A stateful sampler (its RNG advances with every draw).
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// Checks the parameters and seeds the RNG.
    pub fn new(params: SamplingParams) -> Result<Self> {
        let bad = |m: String| UsageError::Sampling(m).into();
        if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            return Err(bad(format!(
                "temperature {} must be >= 0",
                params.temperature
            )));
        }
        if params.top_k == Some(0) {
            return Err(bad("top_k must be >= 1".into()));
        }
        if let Some(p) = params.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(bad(format!("top_p {p} must be in (0, 1]")));
        }
        if !(params.repetition_penalty.is_finite() && params.repetition_penalty > 0.0) {
            return Err(bad(format!(
                "repetition_penalty {} must be > 0",
                params.repetition_penalty
            )));
        }
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    /// Picks the next token from `logits` (one row, vocabulary-sized), given the `context`
    /// (prompt and generated tokens) for the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(UsageError::Empty("no logits to sample from").into());
        }
        let mut logits = logits.to_vec();
        let p = self.params.repetition_penalty;
        if p != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in context {
                if let Some(s) = seen.get_mut(t as usize)
                    && !*s
                {
                    *s = true;
                    let l = &mut logits[t as usize];
                    *l = if *l < 0.0 {
                        *l * p as f32
                    } else {
                        *l / p as f32
                    };
                }
            }
        }
        if self.params.temperature == 0.0 {
            return Ok(argmax(&logits));
        }
        let t = self.params.temperature as f32;
        // Candidates sorted by logit, descending (stable: ties keep the lower id first).
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = self.params.top_k {
            order.truncate(k.max(1));
        }
        let max = logits[order[0]] / t;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| f64::from(logits[i] / t - max).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if let Some(top_p) = self.params.top_p {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, &pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            order.truncate(keep);
            probs.truncate(keep);
        }
        let dist = WeightedIndex::new(&probs)
            .map_err(|e| UsageError::Sampling(format!("cannot sample: {e}")))?;
        Ok(order[dist.sample(&mut self.rng)] as u32)
    }
}

/// Index of the largest logit (the first one on ties, like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p).expect("valid params")
    }

    #[test]
    fn greedy_and_penalty() {
        let mut s = sampler(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[]).expect("sample"), 1);
        let mut s = sampler(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        // 2.0 / 2 = 1.0 < 1.9.
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[1, 1]).expect("sample"), 2);
        // Negative logits are multiplied: -1 * 2 = -2 < -1.5.
        assert_eq!(s.sample(&[-1.0, -1.5], &[0]).expect("sample"), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32).collect();
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&logits, &[]).expect("sample"), argmax(&logits));
        }
        let draw = |seed| {
            let mut s = sampler(SamplingParams {
                temperature: 1.5,
                seed,
                ..Default::default()
            });
            (0..30)
                .map(|_| s.sample(&logits, &[]).expect("sample"))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            top_p: Some(0.7),
            ..Default::default()
        });
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[s.sample(&logits, &[]).expect("sample") as usize] += 1;
        }
        assert_eq!(seen[2] + seen[3], 0);
        assert!(seen[0] > seen[1] && seen[1] > 300, "{seen:?}");
    }

    #[test]
    fn rejects_bad_params() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_k: Some(0),
                ..Default::default()
            },
            SamplingParams {
                top_p: Some(0.0),
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
        ] {
            assert!(Sampler::new(p).is_err());
        }
    }
}
