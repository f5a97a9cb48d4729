//! Decode-step matmul on dense weights: `y = x Wᵀ` for a few rows of `x` (one per sequence),
//! reading each f16 or f32 weight row once, straight from the weight tensor.
//!
//! candle's GEMM (the `gemm` crate) handles a one-row `x` as a general matrix product: for f16
//! it converts ("packs") blocks of the weight to f32 in a scratch buffer before multiplying, and
//! it splits the work over threads in a way that does not scale for one row (profile in
//! BENCHMARKS.md, "Tandem beside llama.cpp"). A decode step is a matrix-vector product bound by
//! memory bandwidth, so this kernel streams each weight row once (AVX2 + F16C: eight f16 → f32 per
//! instruction, FMA into f32 accumulators), dots it with every row of `x`, and splits the weight
//! rows over the rayon pool candle uses (`RAYON_NUM_THREADS`) in tasks of about
//! [`WEIGHTS_PER_TASK`] weights. The output projection (the tied 49,152-row embedding) is the
//! largest of these.
//!
//! Each output is one dot product accumulated in f32 in the same order whatever the number of
//! rows of `x`, so a sequence's result does not depend on which others share the step. f16
//! results are rounded to f16 once, as candle's f16 GEMM does. Only used for inference (the op has
//! no backward pass; [`matmul_t`] falls back to candle when either input tracks gradients).
#![allow(unsafe_code)]

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

/// Most rows of `x` this kernel takes (a batched decode step: one row per sequence).
pub(crate) const MAX_ROWS: usize = 32;
/// Weights per parallel task (below this, a hand-off to a worker costs more than it saves).
const WEIGHTS_PER_TASK: usize = 1 << 16;

/// `x Wᵀ` for `x` `[n, k]` and `w` `[rows, k]` (both F16 or both F32): the kernel when it
/// applies (`n` ≤ [`MAX_ROWS`], CPU, contiguous weight, no gradient tracking), else `None`.
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (n, k) = x.dims2()?;
    let (_, wk) = w.dims2()?;
    let dtype_ok = matches!(
        (x.dtype(), w.dtype()),
        (DType::F16, DType::F16) | (DType::F32, DType::F32)
    );
    if n == 0
        || n > MAX_ROWS
        || k != wk
        || !dtype_ok
        || !x.device().is_cpu()
        || !w.is_contiguous()
        || x.track_op()
        || w.track_op()
    {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2_no_bwd(w, &DenseGemv)?))
}

struct DenseGemv;

impl CustomOp2 for DenseGemv {
    fn name(&self) -> &'static str {
        "dense-gemv"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = xl.shape().dims2()?;
        let (rows, wk) = wl.shape().dims2()?;
        if k != wk {
            candle_core::bail!("dense-gemv: x has {k} columns, the weight {wk}");
        }
        let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("dense-gemv needs contiguous inputs");
        };
        let shape = Shape::from((n, rows));
        Ok(match (xs, ws) {
            (CpuStorage::F16(x), CpuStorage::F16(w)) => {
                let x: Vec<f32> = x[xa..xb].iter().map(|h| h.to_f32()).collect();
                let y = gemv(&w[wa..wb], rows, k, &x, n, dot_f16);
                (
                    CpuStorage::F16(y.into_iter().map(f16::from_f32).collect()),
                    shape,
                )
            }
            (CpuStorage::F32(x), CpuStorage::F32(w)) => (
                CpuStorage::F32(gemv(&w[wa..wb], rows, k, &x[xa..xb], n, dot_f32)),
                shape,
            ),
            _ => candle_core::bail!("dense-gemv: x and the weight must both be F16 or both F32"),
        })
    }
}

/// `[n, rows]` = `x` `[n, k]` times the transpose of `w` `[rows, k]`, with `dot(w_row, x_row)`.
fn gemv<T: Sync>(
    w: &[T],
    rows: usize,
    k: usize,
    x: &[f32],
    n: usize,
    dot: fn(&[T], &[f32]) -> f32,
) -> Vec<f32> {
    let mut yt = vec![0f32; rows * n];
    let row = |r: usize, out: &mut [f32]| {
        let wr = &w[r * k..(r + 1) * k];
        for (o, xr) in out.iter_mut().zip(x.chunks_exact(k)) {
            *o = dot(wr, xr);
        }
    };
    if rayon::current_num_threads() <= 1 || rows * k <= WEIGHTS_PER_TASK {
        for (r, o) in yt.chunks_exact_mut(n).enumerate() {
            row(r, o);
        }
    } else {
        let rows_per_task = (WEIGHTS_PER_TASK / k).max(1);
        yt.par_chunks_mut(rows_per_task * n)
            .enumerate()
            .for_each(|(task, out)| {
                let r0 = task * rows_per_task;
                for (i, o) in out.chunks_exact_mut(n).enumerate() {
                    row(r0 + i, o);
                }
            });
    }
    if n == 1 {
        return yt;
    }
    let mut y = vec![0f32; rows * n];
    for (r, o) in yt.chunks_exact(n).enumerate() {
        for (i, v) in o.iter().enumerate() {
            y[i * rows + r] = *v;
        }
    }
    y
}

fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        // SAFETY: compiled only when AVX2, FMA and F16C are enabled for the whole build;
        // `w` and `x` have the same length (checked by the caller's chunking).
        unsafe { avx2::dot_f16(w, x) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    {
        w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
    }
}

fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: compiled only when AVX2 and FMA are enabled for the whole build.
        unsafe { avx2::dot_f32(w, x) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        w.iter().zip(x).map(|(a, b)| a * b).sum()
    }
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    /// Sum of the eight lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only intrinsics; AVX is enabled for the whole build.
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// `w · x` (same length), four independent 8-lane accumulators.
    #[cfg(target_feature = "f16c")]
    pub(super) unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        let k = w.len().min(x.len());
        let (wp, xp) = (w.as_ptr() as *const u16, x.as_ptr());
        let mut j = 0;
        // SAFETY: every load reads 8 elements at j + 8·u < k.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            while j + 32 <= k {
                for (u, a) in acc.iter_mut().enumerate() {
                    let o = j + 8 * u;
                    let wv = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(o) as *const __m128i));
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(o)), *a);
                }
                j += 32;
            }
            while j + 8 <= k {
                let wv = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(j) as *const __m128i));
                acc[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(j)), acc[0]);
                j += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut sum = hsum(s);
            for t in j..k {
                sum += w[t].to_f32() * x[t];
            }
            sum
        }
    }

    /// `w · x` (same length), four independent 8-lane accumulators.
    pub(super) unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        let k = w.len().min(x.len());
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut j = 0;
        // SAFETY: every load reads 8 elements at j + 8·u < k.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            while j + 32 <= k {
                for (u, a) in acc.iter_mut().enumerate() {
                    let o = j + 8 * u;
                    *a =
                        _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
                }
                j += 32;
            }
            while j + 8 <= k {
                acc[0] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(wp.add(j)),
                    _mm256_loadu_ps(xp.add(j)),
                    acc[0],
                );
                j += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut sum = hsum(s);
            for t in j..k {
                sum += w[t] * x[t];
            }
            sum
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn reference(x: &Tensor, w: &Tensor) -> Vec<f32> {
        x.to_dtype(DType::F32)
            .and_then(|x| x.matmul(&w.to_dtype(DType::F32)?.t()?))
            .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
            .expect("reference matmul")
    }

    #[test]
    fn matches_candle_for_f32_and_f16_and_any_row_count() {
        let dev = Device::Cpu;
        for (rows, k) in [(37usize, 576usize), (300, 64), (5, 13), (129, 1536)] {
            let w = Tensor::randn(0f32, 1.0, (rows, k), &dev).expect("w");
            let x = Tensor::randn(0f32, 1.0, (MAX_ROWS, k), &dev).expect("x");
            for dtype in [DType::F32, DType::F16] {
                let (w, x) = (
                    w.to_dtype(dtype).expect("w dtype"),
                    x.to_dtype(dtype).expect("x dtype"),
                );
                let want = reference(&x, &w);
                let got = matmul_t(&x, &w)
                    .expect("kernel")
                    .expect("kernel applies")
                    .to_dtype(DType::F32)
                    .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                    .expect("values");
                let tol = if dtype == DType::F16 { 2e-2 } else { 1e-4 };
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= tol * (1.0 + b.abs()),
                        "{dtype:?} {rows}x{k}: {a} vs {b}"
                    );
                }
                // Each row alone gives exactly what it gives in the batch.
                for n in [1, 3] {
                    let one = matmul_t(&x.narrow(0, 0, n).expect("narrow"), &w)
                        .expect("kernel")
                        .expect("applies")
                        .to_dtype(DType::F32)
                        .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                        .expect("values");
                    assert_eq!(one[..], got[..n * rows]);
                }
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((8, 16), DType::F32, &dev).expect("w");
        let x = Tensor::zeros((MAX_ROWS + 1, 16), DType::F32, &dev).expect("x");
        assert!(matmul_t(&x, &w).expect("ok").is_none());
        let x = Tensor::zeros((1, 16), DType::F16, &dev).expect("x");
        assert!(matmul_t(&x, &w).expect("ok").is_none(), "mixed dtypes");
        let wt = Tensor::zeros((16, 8), DType::F32, &dev)
            .and_then(|t| t.t())
            .expect("wt");
        let x = Tensor::zeros((1, 16), DType::F32, &dev).expect("x");
        assert!(matmul_t(&x, &wt).expect("ok").is_none(), "strided weight");
    }
}
