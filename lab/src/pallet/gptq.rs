//! Palletizing one matrix against its calibration inputs: activation-weighted tables and
//! GPTQ error feedback.
//!
//! The objective is the error of the operation's output on calibration inputs `X`
//! (`[tokens, cols]`): `‖(W − Ŵ) Xᵀ‖² = Σ_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ` with `H = XᵀX`.
//!
//! 1. **Tables** (SqueezeLLM, Kim et al. 2023, §3.1): per group of rows, 1-D k-means over the
//!    weights weighted by `H_jj` (the mean squared input of column `j`), so columns that see
//!    large activations get the table's resolution ([`super::kmeans::quantize_matrix`]).
//! 2. **Assignment with error feedback** (GPTQ, Frantar et al. 2023, Algorithm 1): columns are
//!    rounded left to right to the nearest table entry of their row, and each column's
//!    rounding error is spread over the columns not yet rounded through the upper Cholesky
//!    factor `U` of `H⁻¹` (`δ = (w_j − q_j) / U_jj`, `w_k −= δ·U_jk` for `k > j`). Rows are
//!    independent, so each row is a task with its own running copy. The grid here is the
//!    row's table instead of a uniform one; the algorithm does not depend on the grid's shape.
//! 3. **Table refit** (GPTVQ, van Baalen et al. 2024, §3.3): with the indices fixed, each
//!    group's table entries are the least-squares solution of the same objective (a
//!    `2^bits × 2^bits` system per group), solved with a small ridge so empty entries keep
//!    their value.

use half::f16;
use rayon::prelude::*;

use tandem_model::UsageError;
use tandem_model::pallet::{Bits, PalletMatrix};

use super::kmeans::quantize_matrix;

/// Options of [`gptq_palletize`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    /// Dampening added to `H`'s diagonal, as a fraction of its mean (GPTQ uses 0.01).
    pub damp: f64,
    /// Spread rounding errors (GPTQ); `false` rounds each weight to its nearest entry.
    pub error_feedback: bool,
    /// Refit the table entries to the final indices.
    pub refit: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp: 0.01,
            error_feedback: true,
            refit: true,
        }
    }
}

/// In-place lower Cholesky factor of the symmetric positive definite `a` (`n × n` row-major):
/// on success the lower triangle holds `L` with `L Lᵀ = a` and the upper triangle is zeroed.
fn cholesky(a: &mut [f64], n: usize) -> Result<(), String> {
    for j in 0..n {
        let row_j = &mut a[j * n..(j + 1) * n];
        let d = row_j[j] - row_j[..j].iter().map(|x| x * x).sum::<f64>();
        if !(d > 0.0 && d.is_finite()) {
            return Err(format!(
                "the calibration Gram matrix is not positive definite at column {j}"
            ));
        }
        let d = d.sqrt();
        row_j[j] = d;
        for x in &mut row_j[j + 1..] {
            *x = 0.0;
        }
        // Column j below the diagonal: L_ij = (a_ij − Σ_k L_ik L_jk) / L_jj.
        let lj: Vec<f64> = a[j * n..j * n + j].to_vec();
        for i in j + 1..n {
            let row_i = &mut a[i * n..(i + 1) * n];
            let s: f64 = row_i[..j].iter().zip(&lj).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - s) / d;
        }
    }
    Ok(())
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = Uᵀ U`), row-major `n × n`.
fn inverse_cholesky_upper(h: &[f64], n: usize) -> Result<Vec<f64>, String> {
    let mut l = h.to_vec();
    cholesky(&mut l, n)?;
    // M = L⁻¹ (lower), by forward substitution column by column of the identity.
    let mut m = vec![0f64; n * n];
    for i in 0..n {
        m[i * n + i] = 1.0 / l[i * n + i];
        for j in 0..i {
            let mut s = 0.0;
            for k in j..i {
                s += l[i * n + k] * m[k * n + j];
            }
            m[i * n + j] = -s / l[i * n + i];
        }
    }
    // H⁻¹ = Mᵀ M, from the rows of Mᵀ (contiguous).
    let mut mt = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            mt[j * n + i] = m[i * n + j];
        }
    }
    let mut inv = vec![0f64; n * n];
    inv.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let a = &mt[i * n..(i + 1) * n];
        for (j, out) in row.iter_mut().enumerate() {
            let from = i.max(j);
            let b = &mt[j * n..(j + 1) * n];
            *out = a[from..].iter().zip(&b[from..]).map(|(x, y)| x * y).sum();
        }
    });
    // The upper factor of H⁻¹ is the transpose of its lower Cholesky factor.
    cholesky(&mut inv, n)?;
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = inv[i * n + j];
        }
    }
    Ok(u)
}

/// Index of the entry of the ascending `table` nearest to `v` (ties: the lower one).
fn nearest_sorted(table: &[f32], v: f32) -> usize {
    let p = table.partition_point(|&t| t < v);
    if p == 0 {
        0
    } else if p == table.len() {
        table.len() - 1
    } else if (v - table[p - 1]) <= (table[p] - v) {
        p - 1
    } else {
        p
    }
}

/// Palletizes row-major `w` (`[rows, cols]`) at `bits` with one table per `group_size` rows,
/// minimising the output error on inputs with Gram matrix `h` (`cols × cols`, row-major,
/// `Σ_t x_t x_tᵀ` over calibration tokens; see the module docs).
pub fn gptq_palletize(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: Bits,
    group_size: usize,
    h: &[f64],
    opts: &GptqOptions,
) -> Result<PalletMatrix, UsageError> {
    let bad = |m: String| UsageError::Pallet(m);
    if h.len() != cols * cols {
        return Err(bad(format!(
            "Gram matrix has {} entries for {cols} columns",
            h.len()
        )));
    }
    if h.iter().any(|x| !x.is_finite()) {
        return Err(bad("the calibration Gram matrix is not finite".into()));
    }
    let mut w = w.to_vec();
    let mut h = h.to_vec();
    // Columns that never see input: their weights do not matter; fix them at 0.
    for j in 0..cols {
        if h[j * cols + j] <= 0.0 {
            h[j * cols + j] = 1.0;
            for r in 0..rows {
                w[r * cols + j] = 0.0;
            }
        }
    }
    let diag: Vec<f32> = (0..cols).map(|j| h[j * cols + j] as f32).collect();
    // 1. Activation-weighted tables.
    let init = quantize_matrix(&w, rows, cols, bits, group_size, Some(&diag))?;
    if !opts.error_feedback && !opts.refit {
        return Ok(init);
    }
    let k = bits.centroids();
    let mut table: Vec<f32> = init.table().iter().map(|x| x.to_f32()).collect();
    // 2. Assignment, with error feedback on a working copy of the weights.
    let mut idx: Vec<u8> = vec![0; rows * cols];
    let mut work = w.clone();
    let mean_diag = diag.iter().map(|&d| f64::from(d)).sum::<f64>() / cols as f64;
    let u: Option<Vec<f32>> = if opts.error_feedback {
        let mut hd = h.clone();
        for j in 0..cols {
            hd[j * cols + j] += opts.damp * mean_diag;
        }
        let u = inverse_cholesky_upper(&hd, cols).map_err(bad)?;
        Some(u.iter().map(|&x| x as f32).collect())
    } else {
        None
    };
    {
        let table = &table;
        let u = u.as_deref();
        work.par_chunks_mut(cols)
            .zip(idx.par_chunks_mut(cols))
            .enumerate()
            .for_each(|(r, (wr, ir))| {
                let t = &table[(r / group_size) * k..(r / group_size + 1) * k];
                for j in 0..cols {
                    let v = wr[j];
                    let q = nearest_sorted(t, v);
                    ir[j] = q as u8;
                    if let Some(u) = u {
                        let e = (v - t[q]) / u[j * cols + j];
                        let urow = &u[j * cols + j + 1..(j + 1) * cols];
                        for (x, &uj) in wr[j + 1..].iter_mut().zip(urow) {
                            *x -= e * uj;
                        }
                    }
                }
            });
    }
    drop(work);
    // 3. Refit the tables to the indices.
    if opts.refit {
        refit_tables(&mut table, &idx, &w, rows, cols, k, group_size, &h);
    }
    let stored: Vec<f16> = table.iter().map(|&x| f16::from_f32(x)).collect();
    let b = bits.get();
    let row_bytes = (cols * b).div_ceil(8);
    let mut packed = vec![0u8; rows * row_bytes];
    for r in 0..rows {
        for j in 0..cols {
            let bit = j * b;
            packed[r * row_bytes + bit / 8] |= idx[r * cols + j] << (bit % 8);
        }
    }
    PalletMatrix::new(rows, cols, bits, group_size, stored, packed).map_err(bad)
}

/// Least-squares table entries for fixed indices: per group, `(Σ_r A_rᵀ H A_r) c = Σ_r A_rᵀ H
/// w_r` where `A_r` is row `r`'s one-hot index matrix, with a ridge pulling each entry to its
/// current value (so an unused entry keeps it). Entries that would not be finite in f16 keep
/// their old values.
#[allow(clippy::too_many_arguments)]
fn refit_tables(
    table: &mut [f32],
    idx: &[u8],
    w: &[f32],
    rows: usize,
    cols: usize,
    k: usize,
    group_size: usize,
    h: &[f64],
) {
    let groups = rows / group_size;
    let fitted: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let mut m = vec![0f64; k * k];
            let mut rhs = vec![0f64; k];
            for r in g * group_size..(g + 1) * group_size {
                let ir = &idx[r * cols..(r + 1) * cols];
                let wr = &w[r * cols..(r + 1) * cols];
                for i in 0..cols {
                    let hi = &h[i * cols..(i + 1) * cols];
                    let a = ir[i] as usize;
                    let mrow = &mut m[a * k..(a + 1) * k];
                    let mut hw = 0f64;
                    for j in 0..cols {
                        mrow[ir[j] as usize] += hi[j];
                        hw += hi[j] * f64::from(wr[j]);
                    }
                    rhs[a] += hw;
                }
            }
            let old = &table[g * k..(g + 1) * k];
            let tr = (0..k).map(|a| m[a * k + a]).sum::<f64>() / k as f64;
            let ridge = 1e-6 * tr.max(1e-30);
            for a in 0..k {
                m[a * k + a] += ridge;
                rhs[a] += ridge * f64::from(old[a]);
            }
            match solve_spd(&mut m, &mut rhs, k) {
                Ok(()) => rhs
                    .iter()
                    .zip(old)
                    .map(|(&c, &o)| {
                        let c = c as f32;
                        if f16::from_f32(c).is_finite() { c } else { o }
                    })
                    .collect(),
                Err(_) => old.to_vec(),
            }
        })
        .collect();
    for (g, t) in fitted.into_iter().enumerate() {
        table[g * k..(g + 1) * k].copy_from_slice(&t);
    }
}

/// Solves `m x = b` for symmetric positive definite `m` (`n × n`); `x` replaces `b`.
fn solve_spd(m: &mut [f64], b: &mut [f64], n: usize) -> Result<(), String> {
    cholesky(m, n)?;
    for i in 0..n {
        let s: f64 = (0..i).map(|j| m[i * n + j] * b[j]).sum();
        b[i] = (b[i] - s) / m[i * n + i];
    }
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|j| m[j * n + i] * b[j]).sum();
        b[i] = (b[i] - s) / m[i * n + i];
    }
    Ok(())
}

/// The output error `Σ_r (w_r − ŵ_r) H (w_r − ŵ_r)ᵀ` of `m` against `w` on inputs with Gram
/// matrix `h`.
pub fn output_error(m: &PalletMatrix, w: &[f32], h: &[f64]) -> f64 {
    let cols = m.cols();
    let d = m.dequantize();
    d.par_chunks(cols)
        .zip(w.par_chunks(cols))
        .map(|(q, o)| {
            let e: Vec<f64> = q.iter().zip(o).map(|(a, b)| f64::from(b - a)).collect();
            let mut s = 0.0;
            for i in 0..cols {
                let hi = &h[i * cols..(i + 1) * cols];
                let hx: f64 = hi.iter().zip(&e).map(|(x, y)| x * y).sum();
                s += e[i] * hx;
            }
            s
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

    /// Gram matrix of `n` correlated inputs of width `cols` (a shared component plus noise,
    /// with a few loud columns), as activations look.
    fn gram(cols: usize, n: usize) -> Vec<f64> {
        let z = lcg(11, n * cols);
        let common = lcg(12, n);
        let mut h = vec![0f64; cols * cols];
        for t in 0..n {
            let x: Vec<f64> = (0..cols)
                .map(|j| {
                    let loud = if j % 7 == 0 { 8.0 } else { 1.0 };
                    loud * f64::from(z[t * cols + j] + 0.7 * common[t])
                })
                .collect();
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += x[i] * x[j];
                }
            }
        }
        h
    }

    #[test]
    fn cholesky_inverse_factor_is_right() {
        let n = 9;
        let h = gram(n, 40);
        let u = inverse_cholesky_upper(&h, n).expect("spd");
        // Uᵀ U H = I.
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    let uu: f64 = (0..n).map(|l| u[l * n + i] * u[l * n + k]).sum();
                    s += uu * h[k * n + j];
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-8, "({i},{j}) = {s}");
            }
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0, "U is upper triangular");
            }
        }
        let mut not_pd = vec![0f64; 4];
        not_pd[0] = 1.0;
        assert!(inverse_cholesky_upper(&not_pd, 2).is_err());
    }

    #[test]
    fn error_feedback_and_refit_lower_the_output_error() {
        let (rows, cols) = (8, 48);
        let w = lcg(5, rows * cols);
        let h = gram(cols, 200);
        let err = |error_feedback, refit| {
            let o = GptqOptions {
                error_feedback,
                refit,
                ..GptqOptions::default()
            };
            let m = gptq_palletize(&w, rows, cols, Bits::B2, 1, &h, &o).expect("q");
            output_error(&m, &w, &h)
        };
        let plain = err(false, false);
        let refit = err(false, true);
        let both = err(true, true);
        assert!(refit <= plain * 1.0001, "{plain} {refit}");
        assert!(both < plain, "{plain} {both}");
        // Deterministic.
        let o = GptqOptions::default();
        assert_eq!(
            gptq_palletize(&w, rows, cols, Bits::B4, 2, &h, &o).expect("a"),
            gptq_palletize(&w, rows, cols, Bits::B4, 2, &h, &o).expect("b")
        );
    }

    #[test]
    fn dead_columns_and_bad_grams() {
        let (rows, cols) = (4, 6);
        let w = lcg(2, rows * cols);
        let mut h = gram(cols, 30);
        for j in 0..cols {
            h[2 * cols + j] = 0.0;
            h[j * cols + 2] = 0.0;
        }
        let m = gptq_palletize(&w, rows, cols, Bits::B4, 1, &h, &GptqOptions::default())
            .expect("dead column");
        assert_eq!(m.rows(), rows);
        assert!(
            gptq_palletize(
                &w,
                rows,
                cols,
                Bits::B4,
                1,
                &h[1..],
                &GptqOptions::default()
            )
            .is_err()
        );
        h[0] = f64::NAN;
        assert!(gptq_palletize(&w, rows, cols, Bits::B4, 1, &h, &GptqOptions::default()).is_err());
    }
}
