//! Deterministic 1-D weighted k-means (Lloyd 1982) for palletization.
//!
//! In one dimension the clusters of sorted values are contiguous runs, split at the midpoints
//! between neighbouring centroids, so after one sort each Lloyd iteration costs
//! `O(k log n)` with prefix sums of `w` and `w·v`. Initialisation is the weighted quantiles
//! `(c + ½) / k`: no randomness, so the same weights always give the same tables (a seed would
//! only be needed for k-means++ sampling, which this does not use).

use half::f16;
use rayon::prelude::*;

use tandem_model::UsageError;
use tandem_model::pallet::{Bits, PalletMatrix};

/// Lloyd iterations at most (1-D k-means converges in a handful on weight distributions).
const MAX_ITERS: usize = 40;

/// Centroids (ascending) of the weighted values `(v, w)`, which must be sorted by `v`.
/// `k` centroids are always returned; an empty cluster keeps its previous centroid.
pub fn kmeans_sorted(sorted: &[(f32, f32)], k: usize) -> Vec<f32> {
    let n = sorted.len();
    if n == 0 || k == 0 {
        return vec![0.0; k];
    }
    // Prefix sums in f64: the groups hold up to ~10^4–10^6 values.
    let mut pw = Vec::with_capacity(n + 1);
    let mut pwv = Vec::with_capacity(n + 1);
    let (mut sw, mut swv) = (0f64, 0f64);
    pw.push(0.0);
    pwv.push(0.0);
    for &(v, w) in sorted {
        sw += f64::from(w);
        swv += f64::from(w) * f64::from(v);
        pw.push(sw);
        pwv.push(swv);
    }
    let total = sw;
    // Weighted quantile initialisation.
    let mut c: Vec<f64> = (0..k)
        .map(|i| {
            let target = total * (i as f64 + 0.5) / k as f64;
            let idx = pw[1..].partition_point(|&p| p < target).min(n - 1);
            f64::from(sorted[idx].0)
        })
        .collect();
    // Distinct starting points: a repeated quantile (a value holding more than 1/k of the
    // weight) moves to the next distinct value, so no cluster starts as a copy of another.
    for i in 1..k {
        if c[i] <= c[i - 1] {
            let from = sorted.partition_point(|&(v, _)| f64::from(v) <= c[i - 1]);
            match sorted.get(from) {
                Some(&(v, _)) => c[i] = f64::from(v),
                None => c[i] = c[i - 1],
            }
        }
    }
    for _ in 0..MAX_ITERS {
        let mut bounds = Vec::with_capacity(k + 1);
        bounds.push(0usize);
        for i in 0..k - 1 {
            let mid = 0.5 * (c[i] + c[i + 1]);
            bounds.push(sorted.partition_point(|&(v, _)| f64::from(v) < mid));
        }
        bounds.push(n);
        let mut changed = false;
        for i in 0..k {
            let (a, b) = (bounds[i], bounds[i + 1].max(bounds[i]));
            let w = pw[b] - pw[a];
            if w > 0.0 {
                let next = (pwv[b] - pwv[a]) / w;
                if (next - c[i]).abs() > 1e-12 * next.abs().max(1e-30) {
                    changed = true;
                }
                c[i] = next;
            }
        }
        // Keep the centroids sorted so the next midpoints are well defined.
        c.sort_by(f64::total_cmp);
        if !changed {
            break;
        }
    }
    c.into_iter().map(|x| x as f32).collect()
}

/// Index of the centroid nearest to `v` among `table` (ties: the lower index).
fn nearest(table: &[f32], v: f32) -> usize {
    let mut best = 0;
    let mut d = f32::INFINITY;
    for (i, &t) in table.iter().enumerate() {
        let e = (t - v).abs();
        if e < d {
            d = e;
            best = i;
        }
    }
    best
}

/// Quantizes row-major `w` (`[rows, cols]`) with `bits`-bit indices and one table per
/// `group_size` rows. `col_weights` (length `cols`, ≥ 0) weights the k-means objective per
/// input column (e.g. the calibration mean of `x_j²`); `None` weighs all equally.
pub fn quantize_matrix(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: Bits,
    group_size: usize,
    col_weights: Option<&[f32]>,
) -> Result<PalletMatrix, UsageError> {
    let bad = |m: String| UsageError::Pallet(m);
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(w.len()) {
        return Err(bad(format!(
            "{} weights do not form a [{rows}, {cols}] matrix",
            w.len()
        )));
    }
    if group_size == 0 || !rows.is_multiple_of(group_size) {
        return Err(bad(format!(
            "group size {group_size} does not divide the {rows} output rows; pick a divisor (e.g. 1, 2, 4, 8, 16)"
        )));
    }
    if w.iter().any(|x| !x.is_finite()) {
        return Err(bad("the matrix has non-finite weights".into()));
    }
    if let Some(cw) = col_weights {
        if cw.len() != cols {
            return Err(bad(format!(
                "{} column weights for {cols} columns",
                cw.len()
            )));
        }
        if cw.iter().any(|x| !x.is_finite() || *x < 0.0) {
            return Err(bad("column weights must be finite and ≥ 0".into()));
        }
    }
    let k = bits.centroids();
    let b = bits.get();
    let row_bytes = (cols * b).div_ceil(8);
    let groups = rows / group_size;
    // Column weights that are all zero would make every cluster empty: weigh equally instead.
    let cw = col_weights.filter(|cw| cw.iter().any(|&x| x > 0.0));
    let per_group: Vec<(Vec<f16>, Vec<u8>)> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let block = &w[g * group_size * cols..(g + 1) * group_size * cols];
            let mut pairs: Vec<(f32, f32)> = block
                .iter()
                .enumerate()
                .map(|(i, &v)| (v, cw.map_or(1.0, |cw| cw[i % cols])))
                .collect();
            pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let centroids = kmeans_sorted(&pairs, k);
            // Round the table to its stored precision first, then assign to the rounded values.
            let table: Vec<f16> = centroids.iter().map(|&c| f16::from_f32(c)).collect();
            let t32: Vec<f32> = table.iter().map(|x| x.to_f32()).collect();
            let mut idx = vec![0u8; group_size * row_bytes];
            for (r, row) in block.chunks_exact(cols).enumerate() {
                let out = &mut idx[r * row_bytes..(r + 1) * row_bytes];
                for (j, &v) in row.iter().enumerate() {
                    let q = nearest(&t32, v) as u8;
                    let bit = j * b;
                    out[bit / 8] |= q << (bit % 8);
                }
            }
            (table, idx)
        })
        .collect();
    let mut table = Vec::with_capacity(groups * k);
    let mut indices = Vec::with_capacity(rows * row_bytes);
    for (t, i) in per_group {
        table.extend(t);
        indices.extend(i);
    }
    PalletMatrix::new(rows, cols, bits, group_size, table, indices).map_err(bad)
}

/// Sum of squared errors of `m` against `w`, weighted per column by `col_weights`.
pub fn weighted_sse(m: &PalletMatrix, w: &[f32], col_weights: Option<&[f32]>) -> f64 {
    let d = m.dequantize();
    d.iter()
        .zip(w)
        .enumerate()
        .map(|(i, (a, b))| {
            let cw = col_weights.map_or(1.0, |c| f64::from(c[i % m.cols()]));
            cw * f64::from(a - b).powi(2)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    #[test]
    fn recovers_exact_clusters() {
        // Values drawn from 4 points are reproduced exactly at 2 bits.
        let pts = [-0.5f32, -0.125, 0.25, 0.75];
        let w: Vec<f32> = (0..64).map(|i| pts[(i * 7 + i / 5) % 4]).collect();
        let m = quantize_matrix(&w, 4, 16, Bits::B2, 4, None).expect("quantize");
        assert_eq!(m.dequantize(), w);
    }

    #[test]
    fn more_bits_less_error_and_deterministic() {
        let w = lcg(3, 32 * 40);
        let e = |b| {
            let m = quantize_matrix(&w, 32, 40, b, 8, None).expect("q");
            weighted_sse(&m, &w, None)
        };
        let (e2, e4, e8) = (e(Bits::B2), e(Bits::B4), e(Bits::B8));
        assert!(e4 < e2 / 4.0, "{e2} {e4}");
        assert!(e8 < e4 / 4.0, "{e4} {e8}");
        let a = quantize_matrix(&w, 32, 40, Bits::B4, 8, None).expect("q");
        let b = quantize_matrix(&w, 32, 40, Bits::B4, 8, None).expect("q");
        assert_eq!(a, b);
    }

    #[test]
    fn column_weights_lower_the_weighted_error() {
        let w = lcg(9, 16 * 24);
        let cw: Vec<f32> = (0..24).map(|j| if j < 4 { 100.0 } else { 0.01 }).collect();
        let plain = quantize_matrix(&w, 16, 24, Bits::B2, 16, None).expect("q");
        let weighted = quantize_matrix(&w, 16, 24, Bits::B2, 16, Some(&cw)).expect("q");
        assert!(weighted_sse(&weighted, &w, Some(&cw)) < weighted_sse(&plain, &w, Some(&cw)));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let w = lcg(1, 12);
        assert!(quantize_matrix(&w, 3, 4, Bits::B2, 2, None).is_err());
        assert!(quantize_matrix(&w, 3, 4, Bits::B2, 0, None).is_err());
        assert!(quantize_matrix(&w, 4, 4, Bits::B2, 1, None).is_err());
        assert!(quantize_matrix(&w, 3, 4, Bits::B2, 3, Some(&[1.0])).is_err());
        let mut nan = w.clone();
        nan[2] = f32::NAN;
        assert!(quantize_matrix(&nan, 3, 4, Bits::B2, 3, None).is_err());
    }
}
