//! Which operation gets which bit width, and palletizing a [`Model`] by such a plan.
//!
//! Bit allocation (the seed's "mixed 2-bit and 4-bit configuration … averaging 3.5
//! bits-per-weight"): every operation starts at 4 bits; operations move to 2 bits in order of
//! least sensitivity per weight (sensitivity = loss increase when only that operation is at
//! 2 bits) until the average index width is at most the target; then operations whose return to
//! 4 bits still keeps the average under the target go back, most sensitive first. This is the
//! greedy answer to the knapsack "save ≥ N bits at least total sensitivity".

use std::collections::BTreeMap;

use tandem_model::pallet::Bits;
use tandem_model::{Model, UsageError};

use super::kmeans::quantize_matrix;
use crate::Result;

/// Bits per palletized operation (checkpoint weight name → width) and the group size.
#[derive(Debug, Clone, PartialEq)]
pub struct PalletPlan {
    /// Width of each operation to palletize; operations not listed stay dense.
    pub bits: BTreeMap<String, Bits>,
    /// Output rows per table.
    pub group_size: usize,
}

impl PalletPlan {
    /// Every palletizable operation of `model` at `bits`.
    pub fn uniform(model: &Model, bits: Bits, group_size: usize) -> Self {
        PalletPlan {
            bits: model
                .palletizable_ops()
                .into_iter()
                .map(|(n, _)| (n, bits))
                .collect(),
            group_size,
        }
    }

    /// Average index bits per weight over the planned operations (`shapes`: name → [rows, cols]).
    pub fn average_bits(&self, shapes: &BTreeMap<String, [usize; 2]>) -> f64 {
        let (mut bits, mut n) = (0f64, 0f64);
        for (name, b) in &self.bits {
            if let Some(s) = shapes.get(name) {
                let w = (s[0] * s[1]) as f64;
                bits += w * b.get() as f64;
                n += w;
            }
        }
        if n == 0.0 { 0.0 } else { bits / n }
    }
}

/// Chooses 2 or 4 bits per operation (`(name, weights, sensitivity)`) so the average index
/// width is at most `target_bpw` (in [2, 4]) with the least total sensitivity (greedy, see the
/// module docs).
pub fn allocate_bits(
    ops: &[(String, usize, f64)],
    target_bpw: f64,
) -> Result<BTreeMap<String, Bits>> {
    if !(2.0..=4.0).contains(&target_bpw) {
        return Err(UsageError::Pallet(format!(
            "target {target_bpw} bits per weight is outside [2, 4] (mixes of 2- and 4-bit operations)"
        ))
        .into());
    }
    if let Some((n, _, s)) = ops.iter().find(|(_, _, s)| !s.is_finite()) {
        return Err(UsageError::Pallet(format!("sensitivity of `{n}` is {s}")).into());
    }
    let total: f64 = ops.iter().map(|(_, n, _)| *n as f64).sum();
    // Bits that must be saved relative to all-4-bit; each op at 2 bits saves 2·n.
    let need = (4.0 - target_bpw) * total;
    let mut order: Vec<usize> = (0..ops.len()).collect();
    let per_weight = |i: usize| ops[i].2 / (ops[i].1.max(1) as f64);
    order.sort_by(|&a, &b| per_weight(a).total_cmp(&per_weight(b)).then(a.cmp(&b)));
    let mut low = vec![false; ops.len()];
    let mut saved = 0f64;
    for &i in &order {
        if saved >= need - 1e-9 {
            break;
        }
        low[i] = true;
        saved += 2.0 * ops[i].1 as f64;
    }
    // Undo moves that are no longer needed, most sensitive first.
    let mut back: Vec<usize> = (0..ops.len()).filter(|&i| low[i]).collect();
    back.sort_by(|&a, &b| ops[b].2.total_cmp(&ops[a].2).then(a.cmp(&b)));
    for i in back {
        let without = saved - 2.0 * ops[i].1 as f64;
        if without >= need - 1e-9 {
            low[i] = false;
            saved = without;
        }
    }
    Ok(ops
        .iter()
        .zip(low)
        .map(|((n, _, _), l)| (n.clone(), if l { Bits::B2 } else { Bits::B4 }))
        .collect())
}

/// `(operation name, weights, sensitivity)`, the input of [`allocate_bits`].
pub type OpCost = (String, usize, f64);

/// Sensitivity of every palletizable operation of `model`: the mean next-token loss on
/// `windows` (see [`crate::train::trainer::eval_loss`]) with only that operation palletized at
/// 2 bits, minus the loss of `model` itself. Returns the base loss and `(name, weights,
/// sensitivity)` in model order; `progress` is called after each operation.
pub fn sensitivities(
    model: &Model,
    windows: &[&[u32]],
    group_size: usize,
    mut progress: impl FnMut(&str),
) -> Result<(f64, Vec<OpCost>)> {
    let base = crate::train::trainer::eval_loss(model, windows, None)?;
    let mut out = Vec::new();
    for (name, [r, c]) in model.palletizable_ops() {
        let mut bits = BTreeMap::new();
        bits.insert(name.clone(), Bits::B2);
        let one = model.palletize(&PalletPlan { bits, group_size }, &BTreeMap::new())?;
        let loss = crate::train::trainer::eval_loss(&one, windows, None)?;
        progress(&name);
        out.push((name, r * c, loss - base));
    }
    Ok((base, out))
}

/// Palletizing a [`Model`] by a [`PalletPlan`] (an extension of the runtime's `Model`).
pub trait Palletize {
    /// A copy with the operations of `plan` palletized (from their current values, which are
    /// dequantized first if already palletized); others are shared unchanged. `col_weights`
    /// optionally gives per-input-column k-means weights by operation name.
    fn palletize(
        &self,
        plan: &PalletPlan,
        col_weights: &BTreeMap<String, Vec<f32>>,
    ) -> Result<Model>;
}

impl Palletize for Model {
    fn palletize(
        &self,
        plan: &PalletPlan,
        col_weights: &BTreeMap<String, Vec<f32>>,
    ) -> Result<Model> {
        let ops: BTreeMap<String, [usize; 2]> = self.palletizable_ops().into_iter().collect();
        if let Some(n) = plan.bits.keys().find(|n| !ops.contains_key(*n)) {
            return Err(UsageError::Pallet(format!(
                "`{n}` is not a palletizable weight of this model"
            ))
            .into());
        }
        let mut matrices = BTreeMap::new();
        for (name, &bits) in &plan.bits {
            let [rows, cols] = ops[name];
            let values = self.weight_values(name)?;
            let m = quantize_matrix(
                &values,
                rows,
                cols,
                bits,
                plan.group_size,
                col_weights.get(name).map(Vec::as_slice),
            )
            .map_err(|e| UsageError::Pallet(format!("`{name}`: {e}")))?;
            matrices.insert(name.clone(), m);
        }
        Ok(self.with_pallet_matrices(matrices)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<(String, usize, f64)> {
        vec![
            ("a".into(), 100, 5.0),
            ("b".into(), 100, 0.1),
            ("c".into(), 200, 0.4),
            ("d".into(), 100, 1.0),
        ]
    }

    fn avg(bits: &BTreeMap<String, Bits>) -> f64 {
        let o = ops();
        let t: f64 = o.iter().map(|x| x.1 as f64).sum();
        o.iter()
            .map(|(n, w, _)| bits[n].get() as f64 * *w as f64)
            .sum::<f64>()
            / t
    }

    #[test]
    fn allocation_truth_table() {
        // 4.0: nothing moves; 2.0: everything moves.
        let all4 = allocate_bits(&ops(), 4.0).expect("4");
        assert!(all4.values().all(|b| *b == Bits::B4));
        let all2 = allocate_bits(&ops(), 2.0).expect("2");
        assert!(all2.values().all(|b| *b == Bits::B2));
        // 3.5: save 0.5·500 = 250 bits.
        let mix = allocate_bits(&ops(), 3.5).expect("3.5");
        assert!(avg(&mix) <= 3.5 + 1e-9, "{mix:?}");
        let cost: f64 = ops()
            .iter()
            .filter(|(n, _, _)| mix[n] == Bits::B2)
            .map(|x| x.2)
            .sum();
        // Feasible subsets: {c}=0.4, {b,d}=1.1, {a,…}≥5: the best is {c}.
        assert!((cost - 0.4).abs() < 1e-12, "{mix:?}");
        // 3.0 (save 500): {b, c} = 0.5 is the best.
        let mix = allocate_bits(&ops(), 3.0).expect("3");
        assert_eq!(mix["b"], Bits::B2);
        assert_eq!(mix["c"], Bits::B2);
        assert_eq!(mix["a"], Bits::B4);
        assert_eq!(mix["d"], Bits::B4);
        // Empty and out-of-range.
        assert!(allocate_bits(&[], 3.5).expect("empty").is_empty());
        assert!(allocate_bits(&ops(), 1.5).is_err());
        assert!(allocate_bits(&ops(), 4.5).is_err());
        let mut nan = ops();
        nan[0].2 = f64::NAN;
        assert!(allocate_bits(&nan, 3.5).is_err());
    }
}
