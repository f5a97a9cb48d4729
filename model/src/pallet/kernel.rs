//! CPU matmul on palletized weights: `y = x Wᵀ` reading packed indices and tables directly.
//!
//! * **Decode** (`x` has at most [`GEMV_MAX_ROWS`] rows, or at most [`DECODE_MAX_ROWS`] rows
//!   when every row is one sequence's next token, see [`matmul_decode`]; the hot path of
//!   generation): 2- and 4-bit rows are looked up as int8 (`vpshufb`) and multiplied with int8
//!   activations (see [`gemv`]); each packed row is unpacked once for up to [`Q8_ROWS`] input
//!   rows. Otherwise 8 (4-bit, 8-bit) or 16 (2-bit) indices are unpacked into SIMD lanes and
//!   turned into f32 weights with an in-register table lookup (AVX2 `vpermps`: one for a 4-entry
//!   table, two plus a blend for 16 entries; a gather for 256), then FMA'd with up to four `x`
//!   rows at once. Each weight is decoded once per call and never written to memory. Rows are
//!   split over the rayon pool candle uses (`RAYON_NUM_THREADS`).
//! * **Prefill** (more rows): blocks of [`PREFILL_BLOCK`] weight rows are dequantized into a
//!   small f32 scratch (L2-resident) and multiplied with candle's f32 GEMM; the whole matrix is
//!   never dequantized at once.
//!
//! Without AVX2+FMA at compile time a portable scalar path is used; tests compare both against
//! dequantize-then-matmul.
#![allow(unsafe_code)]

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Bits, PalletMatrix};

/// Largest number of `x` rows that takes the decode (matrix-vector) path in [`matmul`].
pub const GEMV_MAX_ROWS: usize = 8;
/// Largest number of rows that takes the decode path in [`matmul_decode`] (a batched decode
/// step: one row per sequence).
pub const DECODE_MAX_ROWS: usize = 32;
/// Input rows the int8 decode kernel multiplies with one unpacked weight row at once.
pub const Q8_ROWS: usize = 4;
/// Weight rows dequantized per block on the prefill path.
pub const PREFILL_BLOCK: usize = 128;
/// Weights per parallel task on the decode path (below this, threads cost more than they save).
const WEIGHTS_PER_TASK: usize = 1 << 16;

/// `y = x Wᵀ` for `x` `[n, cols]` (F32, F16 or BF16); returns `[n, rows]` in `x`'s dtype.
/// Differentiable with respect to `x` (the palletized weights are constants).
pub fn matmul(x: &Tensor, w: &Arc<PalletMatrix>) -> candle_core::Result<Tensor> {
    matmul_up_to(x, w, GEMV_MAX_ROWS)
}

/// [`matmul`] for a decode step, where each row of `x` is the newest token of a different
/// sequence: up to [`DECODE_MAX_ROWS`] rows take the decode path. Its int8 activation
/// quantization works row by row, so every row's result is the same whether it is decoded
/// alone or batched with others; [`matmul`] keeps a prompt of more than [`GEMV_MAX_ROWS`]
/// tokens on the exact path.
pub fn matmul_decode(x: &Tensor, w: &Arc<PalletMatrix>) -> candle_core::Result<Tensor> {
    matmul_up_to(x, w, DECODE_MAX_ROWS)
}

fn matmul_up_to(x: &Tensor, w: &Arc<PalletMatrix>, gemv_max: usize) -> candle_core::Result<Tensor> {
    let (n, k) = x.dims2()?;
    if k != w.cols() {
        candle_core::bail!(
            "palletized matmul: input has {k} columns but the weight has {}",
            w.cols()
        );
    }
    if n <= gemv_max {
        return x.contiguous()?.apply_op1(Gemv(w.clone()));
    }
    let x32 = x.to_dtype(DType::F32)?;
    let mut outs = Vec::with_capacity(w.rows().div_ceil(PREFILL_BLOCK));
    let mut scratch = vec![0f32; PREFILL_BLOCK.min(w.rows()) * k];
    for start in (0..w.rows()).step_by(PREFILL_BLOCK) {
        let len = PREFILL_BLOCK.min(w.rows() - start);
        let block = &mut scratch[..len * k];
        for (i, row) in block.chunks_exact_mut(k).enumerate() {
            dequantize_row(w, start + i, row);
        }
        let b = Tensor::from_slice(block, (len, k), x.device())?;
        outs.push(x32.matmul(&b.t()?)?);
    }
    Tensor::cat(&outs, 1)?.to_dtype(x.dtype())
}

/// The decode path as a candle op: forward reads indices + tables; backward (training through a
/// frozen palletized base) is `grad · W` with `W` dequantized.
struct Gemv(Arc<PalletMatrix>);

impl CustomOp1 for Gemv {
    fn name(&self) -> &'static str {
        "pallet-gemv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, k) = layout.shape().dims2()?;
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("pallet-gemv needs a contiguous input");
        };
        let w = &self.0;
        if k != w.cols() {
            candle_core::bail!("pallet-gemv: {k} input columns, weight has {}", w.cols());
        }
        let shape = Shape::from((n, w.rows()));
        Ok(match storage {
            CpuStorage::F32(v) => (CpuStorage::F32(gemv(w, &v[a..b], n)), shape),
            CpuStorage::F16(v) => {
                let x: Vec<f32> = v[a..b].iter().map(|h| h.to_f32()).collect();
                let y = gemv(w, &x, n);
                (
                    CpuStorage::F16(y.into_iter().map(half::f16::from_f32).collect()),
                    shape,
                )
            }
            CpuStorage::BF16(v) => {
                let x: Vec<f32> = v[a..b].iter().map(|h| h.to_f32()).collect();
                let y = gemv(w, &x, n);
                (
                    CpuStorage::BF16(y.into_iter().map(half::bf16::from_f32).collect()),
                    shape,
                )
            }
            _ => candle_core::bail!("pallet-gemv: input must be F32, F16 or BF16"),
        })
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let w = &self.0;
        let dense = Tensor::from_vec(w.dequantize(), (w.rows(), w.cols()), grad_res.device())?
            .to_dtype(grad_res.dtype())?;
        Ok(Some(grad_res.matmul(&dense)?))
    }
}

/// Columns per int8 activation block (one scale each), as llama.cpp's Q8_0.
pub const Q8_BLOCK: usize = 32;

/// One input row quantized for the int8 decode kernel: per block of [`Q8_BLOCK`] columns a scale
/// `d` and int8 values `round(x / d)` (`d = max|x| / 127`), stored in the order the kernel
/// unpacks the indices in (see `q8_position`); a last partial super-block is zero-padded, so
/// `q` covers every column.
#[derive(Debug)]
pub struct Q8Row {
    d: Vec<f32>,
    q: Vec<i8>,
}

/// Columns per super-block: what one iteration of the kernel unpacks.
fn q8_super(bits: Bits) -> usize {
    match bits {
        Bits::B4 => 32,
        _ => 64,
    }
}

/// Position of column `j` of a super-block in the order the kernel unpacks it (the layout
/// `Q8Row::new` writes, checked against this in tests); position / 32
/// is the block (and scale) it belongs to.
/// 4 bits (16 bytes): low nibbles (even columns), then high nibbles (odd columns).
/// 2 bits (16 bytes): bit pair `s` of every byte (columns `4k + s`) for s = 0, 1, 2, 3.
#[cfg(test)]
fn q8_position(bits: Bits, j: usize) -> usize {
    match bits {
        Bits::B4 => (j % 2) * 16 + j / 2,
        _ => (j % 4) * 16 + j / 4,
    }
}

impl Q8Row {
    /// Quantizes `x` for a matrix of width `bits`.
    pub fn new(x: &[f32], bits: Bits) -> Self {
        let sb = q8_super(bits);
        // A last, partial super-block is padded with zeros (which add nothing to any product).
        let supers = x.len().div_ceil(sb);
        let mut d = Vec::with_capacity(supers * sb / Q8_BLOCK);
        let mut q = vec![0i8; supers * sb];
        // Each block of the super-block gathers the columns that `q8_position` puts there:
        // 4 bits: block 0 = even columns, block 1 = odd; 2 bits: block 0 = columns 4k and 4k + 1
        // (bit pairs 0 and 1), block 1 = 4k + 2 and 4k + 3.
        let (stride, lanes) = match bits {
            Bits::B4 => (2, 1),
            _ => (4, 2),
        };
        let mut padded = [0f32; 64];
        for (xs, qs) in x.chunks(sb).zip(q.chunks_exact_mut(sb)) {
            let xs = if xs.len() == sb {
                xs
            } else {
                padded[..xs.len()].copy_from_slice(xs);
                &padded[..sb]
            };
            for (blk, qb) in qs.chunks_exact_mut(Q8_BLOCK).enumerate() {
                // Position p of this block is column stride·(p mod 16) + lanes·blk + p / 16.
                let at = |p: usize| xs[stride * (p % 16) + lanes * blk + p / 16];
                let max = (0..Q8_BLOCK).fold(0f32, |m, p| m.max(at(p).abs()));
                let scale = max / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                for (p, v) in qb.iter_mut().enumerate() {
                    *v = (at(p) * inv).round().clamp(-127.0, 127.0) as i8;
                }
                d.push(scale);
            }
        }
        Q8Row { d, q }
    }
}

/// Whether the int8 decode kernel applies to `w`.
fn int8_decode(w: &PalletMatrix) -> bool {
    cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )) && w.bits() != Bits::B8
        && w.cols() >= Q8_BLOCK
}

/// `y = x Wᵀ` for decode: `x` is `[n, cols]` row-major f32, the result `[n, rows]`.
///
/// For 2- and 4-bit matrices (with AVX2) this is the int8 kernel: each group's table is held as
/// int8 with one scale and `x` is quantized per 32 columns (Q8_0-style activation quantization,
/// the seed's "activation quantization"); lookups are `vpshufb` on 32 indices at once and the
/// products `vpmaddubsw`. The error per output is bounded by
/// `Σ_j (|w_j|·max|x_b|/254 + |x_j|·max|T_g|/254)` and is checked against that bound in tests.
/// 8-bit matrices and machines without AVX2 use [`gemv_f32`].
pub fn gemv(w: &PalletMatrix, x: &[f32], n: usize) -> Vec<f32> {
    if !int8_decode(w) || n == 0 {
        return gemv_f32(w, x, n);
    }
    let (rows, cols) = (w.rows(), w.cols());
    let q8: Vec<Q8Row> = x
        .chunks_exact(cols)
        .map(|r| Q8Row::new(r, w.bits()))
        .collect();
    let mut yt = vec![0f32; rows * n];
    for_row_blocks(&mut yt, rows, cols, n, |r, o| {
        for (xs, o) in q8.chunks(Q8_ROWS).zip(o.chunks_mut(Q8_ROWS)) {
            match xs {
                [a, b, c, d] => o.copy_from_slice(&row_dot_q8(w, r, [a, b, c, d])),
                [a, b, c] => o.copy_from_slice(&row_dot_q8(w, r, [a, b, c])),
                [a, b] => o.copy_from_slice(&row_dot_q8(w, r, [a, b])),
                [a] => o.copy_from_slice(&row_dot_q8(w, r, [a])),
                _ => unreachable!("chunks of at most Q8_ROWS = 4"),
            }
        }
    });
    transpose(yt, rows, n)
}

/// Row `r` of `w` times `M` quantized input rows (the row is unpacked once for all of them).
/// Each result is computed in the same order as with `M = 1`, so it does not depend on which
/// other rows share the call.
fn row_dot_q8<const M: usize>(w: &PalletMatrix, r: usize, xq: [&Q8Row; M]) -> [f32; M] {
    let (row, _) = row_parts(w, r);
    let (t8, scale) = w.table_i8(r / w.group_size());
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    // SAFETY: compiled only when AVX2 and FMA are enabled for the whole build.
    let main = unsafe {
        avx2::row_dot_q8(
            row,
            t8,
            w.bits(),
            xq.map(|x| x.d.as_slice()),
            xq.map(|x| x.q.as_slice()),
        )
    };
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    let main = {
        let _ = (t8, row);
        [0f32; M]
    };
    main.map(|m| scale * m)
}

fn transpose(yt: Vec<f32>, rows: usize, n: usize) -> Vec<f32> {
    if n == 1 {
        return yt;
    }
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        for i in 0..n {
            y[i * rows + r] = yt[r * n + i];
        }
    }
    y
}

/// `y = x Wᵀ` on f32 slices, exact up to f32 rounding: `x` is `[n, cols]` row-major, the
/// result `[n, rows]`.
pub fn gemv_f32(w: &PalletMatrix, x: &[f32], n: usize) -> Vec<f32> {
    let (rows, cols) = (w.rows(), w.cols());
    let mut yt = vec![0f32; rows * n];
    if n == 0 {
        return yt;
    }
    for_row_blocks(&mut yt, rows, cols, n, |r, o| row_times_xs(w, r, x, n, o));
    transpose(yt, rows, n)
}

/// Calls `f(row, out[row·n .. row·n + n])` for every row of `yt` (`[rows, n]`), split over
/// the rayon pool in tasks of about [`WEIGHTS_PER_TASK`] weights; inline when the pool has one
/// thread (no hand-off to a worker for each matmul).
fn for_row_blocks(
    yt: &mut [f32],
    rows: usize,
    cols: usize,
    n: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    debug_assert_eq!(yt.len(), rows * n);
    if rayon::current_num_threads() <= 1 {
        for (r, o) in yt.chunks_exact_mut(n).enumerate() {
            f(r, o);
        }
        return;
    }
    let rows_per_task = (WEIGHTS_PER_TASK / cols).max(1);
    yt.par_chunks_mut(rows_per_task * n)
        .enumerate()
        .for_each(|(task, out)| {
            let r0 = task * rows_per_task;
            for (i, o) in out.chunks_exact_mut(n).enumerate() {
                f(r0 + i, o);
            }
        });
}

/// `out[i] = W[r] · x[i]` for the `n` rows of `x`, four at a time.
fn row_times_xs(w: &PalletMatrix, r: usize, x: &[f32], n: usize, out: &mut [f32]) {
    let cols = w.cols();
    let mut i = 0;
    while i < n {
        let take = (n - i).min(4);
        let xs = |j: usize| &x[(i + j) * cols..(i + j + 1) * cols];
        let dst = &mut out[i..i + take];
        match take {
            4 => dst.copy_from_slice(&row_dot::<4>(w, r, [xs(0), xs(1), xs(2), xs(3)])),
            3 => dst.copy_from_slice(&row_dot::<3>(w, r, [xs(0), xs(1), xs(2)])),
            2 => dst.copy_from_slice(&row_dot::<2>(w, r, [xs(0), xs(1)])),
            _ => dst.copy_from_slice(&row_dot::<1>(w, r, [xs(0)])),
        }
        i += take;
    }
}

/// Row `r` of `w` and its table, `(packed row, table)`.
fn row_parts(w: &PalletMatrix, r: usize) -> (&[u8], &[f32]) {
    let rb = w.row_bytes();
    let k = w.bits().centroids();
    let g = r / w.group_size();
    (
        &w.indices()[r * rb..(r + 1) * rb],
        &w.table_f32()[g * k..(g + 1) * k],
    )
}

/// The index of column `j` in a packed row.
#[inline(always)]
fn index_at(row: &[u8], bits: usize, j: usize) -> usize {
    let bit = j * bits;
    ((row[bit / 8] >> (bit % 8)) as usize) & ((1 << bits) - 1)
}

/// Dot products of row `r` with each of `M` input rows.
fn row_dot<const M: usize>(w: &PalletMatrix, r: usize, xs: [&[f32]; M]) -> [f32; M] {
    let (row, table) = row_parts(w, r);
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        // SAFETY: this code is compiled only when AVX2 and FMA are enabled for the whole build.
        unsafe { avx2::row_dot(row, table, w.bits(), w.cols(), xs) }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    {
        scalar_row_dot(row, table, w.bits(), w.cols(), xs, 0)
    }
}

/// Portable reference: columns `from..cols`.
fn scalar_row_dot<const M: usize>(
    row: &[u8],
    table: &[f32],
    bits: Bits,
    cols: usize,
    xs: [&[f32]; M],
    from: usize,
) -> [f32; M] {
    let b = bits.get();
    let mut acc = [0f32; M];
    for j in from..cols {
        let v = table[index_at(row, b, j)];
        for (a, x) in acc.iter_mut().zip(xs.iter()) {
            *a += v * x[j];
        }
    }
    acc
}

/// Row `r` of `w` dequantized into `out[..cols]`.
pub fn dequantize_row(w: &PalletMatrix, r: usize, out: &mut [f32]) {
    let (row, table) = row_parts(w, r);
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    // SAFETY: compiled only when AVX2 and FMA are enabled for the whole build.
    let from = unsafe { avx2::dequantize(row, table, w.bits(), w.cols(), out) };
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    let from = 0;
    let b = w.bits().get();
    for (j, o) in out.iter_mut().enumerate().take(w.cols()).skip(from) {
        *o = table[index_at(row, b, j)];
    }
}

/// The portable kernel, exposed for tests that compare it with the SIMD one.
#[doc(hidden)]
pub fn scalar_gemv_row(w: &PalletMatrix, r: usize, x: &[f32]) -> f32 {
    let (row, table) = row_parts(w, r);
    scalar_row_dot(row, table, w.bits(), w.cols(), [x], 0)[0]
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod avx2 {
    //! AVX2 + FMA table lookups. Every function reads only inside the slices it is given: the
    //! number of full SIMD chunks is computed from the slice lengths, and the scalar tail
    //! finishes the rest.
    use std::arch::x86_64::*;

    use super::{Bits, scalar_row_dot};

    /// Columns per SIMD chunk and bytes of packed indices that chunk reads.
    fn chunk(bits: Bits) -> (usize, usize) {
        match bits {
            Bits::B2 => (16, 4),
            Bits::B4 => (8, 4),
            Bits::B8 => (8, 8),
        }
    }

    /// Full chunks that fit in the row, the table and every `x`.
    fn full_chunks(row: &[u8], cols: usize, bits: Bits, xs: &[&[f32]]) -> usize {
        let (c, b) = chunk(bits);
        let min_x = xs.iter().map(|x| x.len()).min().unwrap_or(cols).min(cols);
        (min_x / c).min(row.len() / b)
    }

    /// Tables broadcast into registers: (entries 0–7, entries 8–15) for 4 bits, entries 0–3
    /// twice for 2 bits.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn tables(table: &[f32], bits: Bits) -> (__m256, __m256) {
        match bits {
            Bits::B2 if table.len() >= 4 => {
                let t = _mm256_setr_ps(
                    table[0], table[1], table[2], table[3], table[0], table[1], table[2], table[3],
                );
                (t, t)
            }
            Bits::B4 if table.len() >= 16 => (
                _mm256_setr_ps(
                    table[0], table[1], table[2], table[3], table[4], table[5], table[6], table[7],
                ),
                _mm256_setr_ps(
                    table[8], table[9], table[10], table[11], table[12], table[13], table[14],
                    table[15],
                ),
            ),
            _ => (_mm256_setzero_ps(), _mm256_setzero_ps()),
        }
    }

    /// The weights of chunk `c` (one register, or two for 2 bits).
    ///
    /// # Safety
    /// `c < full_chunks(..)` for this row; for 8 bits `table` has 256 entries.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weights(
        row: &[u8],
        table: &[f32],
        bits: Bits,
        t: (__m256, __m256),
        c: usize,
    ) -> (__m256, __m256) {
        match bits {
            Bits::B4 => {
                // SAFETY: chunk c reads bytes 4c..4c+4, inside the row (caller's contract).
                let v = unsafe { row.as_ptr().add(4 * c).cast::<u32>().read_unaligned() };
                let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
                let idx = _mm256_and_si256(
                    _mm256_srlv_epi32(_mm256_set1_epi32(v as i32), shifts),
                    _mm256_set1_epi32(0xF),
                );
                let lo = _mm256_permutevar8x32_ps(t.0, idx);
                let hi = _mm256_permutevar8x32_ps(t.1, idx);
                // Bit 3 of the index moved to the sign bit picks the upper half of the table.
                let sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
                let w = _mm256_blendv_ps(lo, hi, sel);
                (w, w)
            }
            Bits::B2 => {
                // SAFETY: as above, bytes 4c..4c+4.
                let v = unsafe { row.as_ptr().add(4 * c).cast::<u32>().read_unaligned() };
                let vv = _mm256_set1_epi32(v as i32);
                let three = _mm256_set1_epi32(3);
                let a = _mm256_and_si256(
                    _mm256_srlv_epi32(vv, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                    three,
                );
                let b = _mm256_and_si256(
                    _mm256_srlv_epi32(vv, _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30)),
                    three,
                );
                (
                    _mm256_permutevar8x32_ps(t.0, a),
                    _mm256_permutevar8x32_ps(t.0, b),
                )
            }
            Bits::B8 => {
                // SAFETY: bytes 8c..8c+8 are inside the row; every index is < 256 and the table
                // has 256 entries (caller's contract), so the gather stays inside it.
                let w = unsafe {
                    let bytes = _mm_loadl_epi64(row.as_ptr().add(8 * c).cast::<__m128i>());
                    let idx = _mm256_cvtepu8_epi32(bytes);
                    _mm256_i32gather_ps::<4>(table.as_ptr(), idx)
                };
                (w, w)
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn row_dot<const M: usize>(
        row: &[u8],
        table: &[f32],
        bits: Bits,
        cols: usize,
        xs: [&[f32]; M],
    ) -> [f32; M] {
        if bits == Bits::B8 && table.len() < 256 {
            return scalar_row_dot(row, table, bits, cols, xs, 0);
        }
        let n = full_chunks(row, cols, bits, &xs);
        let t = tables(table, bits);
        let (width, _) = chunk(bits);
        // Two accumulators per input row hide the FMA latency.
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        let mut c = 0;
        while c < n {
            // Two independent FMA chains: the two halves of a 2-bit chunk, or two consecutive
            // 8-column chunks otherwise; either way the second reads x[base + 8..base + 16].
            // SAFETY: c (and c + 1 when used) < full_chunks(row, cols, bits, xs); the 256-entry
            // table was checked above.
            let (w0, w1, step) = unsafe {
                let (w0, w1) = weights(row, table, bits, t, c);
                if bits == Bits::B2 {
                    (w0, Some(w1), 1)
                } else if c + 1 < n {
                    (w0, Some(weights(row, table, bits, t, c + 1).0), 2)
                } else {
                    (w0, None, 1)
                }
            };
            let base = c * width;
            for (a, x) in acc.iter_mut().zip(xs.iter()) {
                // SAFETY: every chunk read is < full_chunks, so base + 16 (or + 8 without a
                // second chain) <= x.len().
                unsafe {
                    let p = x.as_ptr().add(base);
                    a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(p), a[0]);
                    if let Some(w1) = w1 {
                        a[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(p.add(8)), a[1]);
                    }
                }
            }
            c += step;
        }
        let tail = scalar_row_dot(row, table, bits, cols, xs, n * width);
        let mut out = [0f32; M];
        for i in 0..M {
            out[i] = hsum(_mm256_add_ps(acc[i][0], acc[i][1])) + tail[i];
        }
        out
    }

    /// For each of the `M` input rows `(d[m], q[m])`: Σ over full super-blocks of
    /// `d_b · Σ_j t8[idx_j] · q_j` (the caller multiplies by the group's table scale). The
    /// indices of a super-block are unpacked and looked up once for all `M` rows. Reads only
    /// inside `row` (a last partial super-block through a zero-padded copy) and every `d[m]`,
    /// `q[m]`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn row_dot_q8<const M: usize>(
        row: &[u8],
        t8: &[i8],
        bits: Bits,
        d: [&[f32]; M],
        q: [&[i8]; M],
    ) -> [f32; M] {
        let mut out = [0f32; M];
        if t8.len() < 16 {
            return out;
        }
        // One 16-byte load of indices per super-block: 32 columns at 4 bits, 64 at 2 bits.
        let per = if bits == Bits::B4 { 1 } else { 2 };
        // A last, partial super-block of the row is read through a zero-padded copy.
        let supers = d.iter().zip(&q).fold(row.len().div_ceil(16), |s, (d, q)| {
            s.min(d.len() / per).min(q.len() / (32 * per))
        });
        // SAFETY: t8 has 16 entries (checked above).
        let table = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(t8.as_ptr().cast())) };
        // Two accumulators per input row (even and odd blocks) so the FMA latency does not
        // serialise blocks; fixed slots keep them in registers.
        let mut even = [_mm256_setzero_ps(); M];
        let mut odd = [_mm256_setzero_ps(); M];
        // The 32 indices of super-block `b` (4 bits), or of its halves (2 bits).
        let unpack = |b: usize| {
            let v = match row.get(16 * b..16 * b + 16) {
                // SAFETY: the 16 bytes are inside the row (just checked).
                Some(bytes) => unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) },
                None => {
                    let rest = row.get(16 * b..).unwrap_or(&[]);
                    let mut pad = [0u8; 16];
                    let len = rest.len().min(16);
                    pad[..len].copy_from_slice(&rest[..len]);
                    // SAFETY: reads the 16 bytes of `pad`.
                    unsafe { _mm_loadu_si128(pad.as_ptr().cast()) }
                }
            };
            if bits == Bits::B4 {
                let m = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(v, m);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m);
                (_mm256_set_m128i(hi, lo), _mm256_setzero_si256())
            } else {
                let m = _mm_set1_epi8(0x03);
                let a0 = _mm_and_si128(v, m);
                let a1 = _mm_and_si128(_mm_srli_epi16::<2>(v), m);
                let a2 = _mm_and_si128(_mm_srli_epi16::<4>(v), m);
                let a3 = _mm_and_si128(_mm_srli_epi16::<6>(v), m);
                (_mm256_set_m128i(a1, a0), _mm256_set_m128i(a3, a2))
            }
        };
        // SAFETY (both calls below): blk < per · supers, so q[m][32·blk .. 32·blk + 32] and
        // d[m][blk] are inside every q[m] and d[m].
        if bits == Bits::B4 {
            let mut b = 0;
            while b + 1 < supers {
                unsafe {
                    dot_block(table, b, unpack(b).0, &d, &q, &mut even);
                    dot_block(table, b + 1, unpack(b + 1).0, &d, &q, &mut odd);
                }
                b += 2;
            }
            if b < supers {
                unsafe { dot_block(table, b, unpack(b).0, &d, &q, &mut even) };
            }
        } else {
            for b in 0..supers {
                let (i0, i1) = unpack(b);
                unsafe {
                    dot_block(table, 2 * b, i0, &d, &q, &mut even);
                    dot_block(table, 2 * b + 1, i1, &d, &q, &mut odd);
                }
            }
        }
        for ((o, e), od) in out.iter_mut().zip(even).zip(odd) {
            *o = hsum(_mm256_add_ps(e, od));
        }
        out
    }

    /// `acc[m] += d[m][blk] · Σ_j t8[idx_j] · q[m][32·blk + j]` for each input row `m`.
    ///
    /// # Safety
    /// `32·blk + 32 <= q[m].len()` and `blk < d[m].len()` for every `m`.
    #[inline(always)]
    unsafe fn dot_block<const M: usize>(
        table: __m256i,
        blk: usize,
        idx: __m256i,
        d: &[&[f32]; M],
        q: &[&[i8]; M],
        acc: &mut [__m256; M],
    ) {
        // SAFETY: AVX2 is enabled for the whole build (this module is compiled only then).
        unsafe {
            let wq = _mm256_shuffle_epi8(table, idx);
            let aw = _mm256_sign_epi8(wq, wq);
            let ones = _mm256_set1_epi16(1);
            for m in 0..M {
                // SAFETY: inside q[m] and d[m] (caller's contract).
                let xq = _mm256_loadu_si256(q[m].as_ptr().add(32 * blk).cast());
                let dm = *d[m].get_unchecked(blk);
                // |w| · (x · sign w): unsigned × signed bytes, pairs summed to i16 without
                // saturation (2 · 127 · 127 < 2^15), then pairs of i16 to i32.
                let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq, wq));
                let p32 = _mm256_madd_epi16(p16, ones);
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_set1_ps(dm), acc[m]);
            }
        }
    }

    /// Dequantizes the full chunks of `row` into `out`; returns the first column not written.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dequantize(
        row: &[u8],
        table: &[f32],
        bits: Bits,
        cols: usize,
        out: &mut [f32],
    ) -> usize {
        if bits == Bits::B8 && table.len() < 256 {
            return 0;
        }
        let n = full_chunks(row, cols.min(out.len()), bits, &[]);
        let t = tables(table, bits);
        let (width, _) = chunk(bits);
        for c in 0..n {
            // SAFETY: c < full_chunks(row, cols ∧ out.len(), ..); the 256-entry table was checked;
            // stores write out[c·width .. (c+1)·width], inside `out`.
            unsafe {
                let (w0, w1) = weights(row, table, bits, t, c);
                let p = out.as_mut_ptr().add(c * width);
                _mm256_storeu_ps(p, w0);
                if bits == Bits::B2 {
                    _mm256_storeu_ps(p.add(8), w1);
                }
            }
        }
        n * width
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn reference(w: &PalletMatrix, x: &[f32], n: usize) -> Vec<f32> {
        let d = w.dequantize();
        let (rows, cols) = (w.rows(), w.cols());
        let mut y = vec![0f32; n * rows];
        for i in 0..n {
            for r in 0..rows {
                y[i * rows + r] = (0..cols)
                    .map(|j| f64::from(d[r * cols + j]) * f64::from(x[i * cols + j]))
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}: element {i}: {x} vs {y}"
            );
        }
    }

    /// The int8 decode kernel is within its error bound of the exact product.
    fn within_q8_bound(
        w: &PalletMatrix,
        x: &[f32],
        n: usize,
        got: &[f32],
        want: &[f32],
        what: &str,
    ) {
        let d = w.dequantize();
        let (rows, cols) = (w.rows(), w.cols());
        for i in 0..n {
            let xi = &x[i * cols..(i + 1) * cols];
            for r in 0..rows {
                let g = r / w.group_size();
                let k = w.bits().centroids();
                let tmax = w.table_f32()[g * k..(g + 1) * k]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()));
                let mut bound = 1e-5f32;
                // Each activation block's scale is at most the super-block's max / 127.
                let sb = q8_super(w.bits());
                for (b, xb) in xi.chunks(sb).enumerate() {
                    let xmax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for (j, xv) in xb.iter().enumerate() {
                        let wv = d[r * cols + b * sb + j].abs();
                        bound +=
                            wv * xmax / 254.0 + xv.abs() * tmax / 254.0 + xmax * tmax / 64516.0;
                    }
                }
                let (a, e) = (got[i * rows + r], want[i * rows + r]);
                assert!(
                    (a - e).abs() <= bound * 1.01,
                    "{what}: row {r}: {a} vs {e} (bound {bound})"
                );
            }
        }
    }

    #[test]
    fn matches_dequantize_then_matmul_on_odd_shapes() {
        // Columns not multiples of 8/16/32/256, SmolLM2's 576 and 1536, and tiny ones.
        let shapes = [
            (16, 576),
            (8, 1536),
            (12, 37),
            (6, 7),
            (32, 100),
            (4, 1),
            (130, 24),
        ];
        for (si, &(rows, cols)) in shapes.iter().enumerate() {
            for bits in Bits::ALL {
                let gs = if rows % 4 == 0 { 4 } else { 2 };
                let wv = rand(si as u64 * 31 + bits.get() as u64, rows * cols);
                let w = Arc::new(
                    crate::pallet::test_matrix(&wv, rows, cols, bits, gs).expect("quantize"),
                );
                for n in [1usize, 2, 3, 5, 8, 9, 20] {
                    let x = rand(1000 + n as u64, n * cols);
                    let want = reference(&w, &x, n);
                    let what = format!("[{rows}x{cols}] {bits:?} n={n}");
                    close(&gemv_f32(&w, &x, n), &want, &what);
                    within_q8_bound(&w, &x, n, &gemv(&w, &x, n), &want, &what);
                    let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).expect("x");
                    let got = matmul(&xt, &w)
                        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                        .expect("matmul");
                    if n <= GEMV_MAX_ROWS {
                        within_q8_bound(&w, &x, n, &got, &want, &what);
                    } else {
                        close(&got, &want, &what);
                    }
                    for (r, want_r) in want.iter().enumerate().take(rows.min(5)) {
                        let s = scalar_gemv_row(&w, r, &x[..cols]);
                        assert!(
                            (s - want_r).abs() <= 1e-4 * (1.0 + s.abs()),
                            "{what} scalar"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q8_rows_follow_the_unpack_order() {
        for bits in [Bits::B2, Bits::B4] {
            let x = rand(3, 3 * q8_super(bits) + 5);
            let r = Q8Row::new(&x, bits);
            let sb = q8_super(bits);
            // The fourth super-block holds the last 5 columns and zero padding.
            assert!(r.q.len() >= x.len(), "{bits:?}: every column is quantized");
            assert_eq!(r.d.len(), 4 * sb / Q8_BLOCK);
            assert_eq!(r.q.len(), 4 * sb);
            for j in x.len()..4 * sb {
                assert_eq!(
                    r.q[3 * sb + q8_position(bits, j % sb)],
                    0,
                    "{bits:?} pad {j}"
                );
            }
            for (j, xv) in x.iter().enumerate() {
                let pos = (j / sb) * sb + q8_position(bits, j % sb);
                let back = f32::from(r.q[pos]) * r.d[pos / Q8_BLOCK];
                assert!(
                    (back - xv).abs() <= r.d[pos / Q8_BLOCK] / 2.0 + 1e-7,
                    "{bits:?} column {j}: {xv} stored as {back}"
                );
            }
        }
    }

    #[test]
    fn batched_decode_rows_equal_single_rows() {
        // A batched decode step gives every sequence exactly what decoding it alone gives,
        // whatever the batch size (groups of Q8_ROWS and a remainder) or its neighbours.
        for (si, &(rows, cols)) in [(24usize, 256usize), (8, 100), (12, 37)].iter().enumerate() {
            for bits in Bits::ALL {
                let wv = rand(70 + si as u64 + bits.get() as u64, rows * cols);
                let w = Arc::new(
                    crate::pallet::test_matrix(&wv, rows, cols, bits, 4).expect("quantize"),
                );
                for n in [2usize, 5, 9, 16, 17, DECODE_MAX_ROWS] {
                    let x = rand(500 + n as u64, n * cols);
                    let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).expect("x");
                    let got = matmul_decode(&xt, &w)
                        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                        .expect("matmul_decode");
                    let what = format!("[{rows}x{cols}] {bits:?} n={n}");
                    within_q8_bound(&w, &x, n, &got, &reference(&w, &x, n), &what);
                    for i in 0..n {
                        let one = gemv(&w, &x[i * cols..(i + 1) * cols], 1);
                        assert_eq!(&got[i * rows..(i + 1) * rows], &one[..], "{what} row {i}");
                    }
                }
                // Past the decode limit it falls back to the exact path.
                let n = DECODE_MAX_ROWS + 1;
                let x = rand(9, n * cols);
                let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).expect("x");
                let got = matmul_decode(&xt, &w)
                    .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                    .expect("matmul_decode");
                close(&got, &reference(&w, &x, n), "past DECODE_MAX_ROWS");
            }
        }
    }

    #[test]
    fn f16_input_and_backward() {
        let (rows, cols) = (8, 40);
        let w = Arc::new(
            crate::pallet::test_matrix(&rand(5, rows * cols), rows, cols, Bits::B4, 8).expect("q"),
        );
        let x = rand(6, 2 * cols);
        let want = reference(&w, &x, 2);
        let xt = Tensor::from_vec(x.clone(), (2, cols), &Device::Cpu).expect("x");
        let got = matmul(&xt.to_dtype(DType::F16).expect("f16"), &w)
            .and_then(|t| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .expect("f16 matmul");
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 2e-2 * (1.0 + b.abs()), "{a} {b}");
        }
        // d(sum y)/dx = column sums of W, on both paths.
        let d = w.dequantize();
        let colsum: Vec<f32> = (0..cols)
            .map(|j| (0..rows).map(|r| d[r * cols + j]).sum())
            .collect();
        for n in [2usize, 12] {
            let xv = candle_core::Var::from_vec(rand(7, n * cols), (n, cols), &Device::Cpu)
                .expect("var");
            let y = matmul(xv.as_tensor(), &w).expect("y");
            let grads = y.sum_all().and_then(|s| s.backward()).expect("backward");
            let g = grads
                .get(xv.as_tensor())
                .expect("grad")
                .to_vec2::<f32>()
                .expect("vec");
            for row in g {
                close(&row, &colsum, "grad");
            }
        }
    }
}
