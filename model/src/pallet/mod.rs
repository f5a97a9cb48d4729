//! Palletized weights: per grouped-channel lookup tables with 2-, 4- or 8-bit indices.
//!
//! The seed ("Optimization"): "low-bit palletization … a mixed 2-bit and 4-bit configuration
//! strategy — averaging 3.5 bits-per-weight". A `[rows, cols]` weight matrix is cut into groups
//! of `group_size` consecutive output rows; each group has a table of `2^bits` centroids (1-D
//! k-means over the group's weights, optionally weighted per input column) and every weight is
//! stored as the `bits`-bit index of its centroid.
//!
//! * [`PalletMatrix`]: one checked palletized matrix (packed indices + f16 tables).
//! * [`kernel`]: the CPU matmul that reads indices and tables directly (decode and prefill).
//! * [`format`]: the on-disk form (safetensors + metadata), a parser of untrusted bytes.
//! * [`model`]: palletized weights in a [`crate::Model`]: reading them out, swapping in
//!   quantized matrices, saving the palletized checkpoint.
//!
//! Making the tables (the k-means quantizer, per-operation bit allocation, palletizing a model
//! by a plan) is build-time work and lives in the `tandem-lab` crate (`tandem_lab::pallet`).
//!
//! # Packing
//!
//! Row `r` occupies bytes `r·row_bytes .. (r+1)·row_bytes` with `row_bytes = ⌈cols·bits/8⌉`;
//! column `j`'s index sits at bit `j·bits` of the row, least significant bits first (so for 4 bits
//! column `2k` is the low nibble of byte `k`). Unused bits at the end of a row are zero: the
//! encoding is canonical, so decode → encode reproduces the same bytes.

pub mod format;
pub mod kernel;
pub mod model;

use half::f16;

pub use format::PalletFile;
pub use model::{OpInfo, dtype_name};

/// Index width of a palletized matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bits {
    /// 4 centroids per group.
    B2,
    /// 16 centroids per group.
    B4,
    /// 256 centroids per group.
    B8,
}

impl Bits {
    /// All widths, narrowest first.
    pub const ALL: [Bits; 3] = [Bits::B2, Bits::B4, Bits::B8];

    /// The width in bits.
    pub fn get(self) -> usize {
        match self {
            Bits::B2 => 2,
            Bits::B4 => 4,
            Bits::B8 => 8,
        }
    }

    /// Table entries per group (`2^bits`).
    pub fn centroids(self) -> usize {
        1 << self.get()
    }

    /// The width for `n` bits, if it is 2, 4 or 8.
    pub fn from_bits(n: u64) -> Option<Bits> {
        match n {
            2 => Some(Bits::B2),
            4 => Some(Bits::B4),
            8 => Some(Bits::B8),
            _ => None,
        }
    }
}

/// A palletized `[rows, cols]` matrix whose sizes have been checked: `group_size` divides
/// `rows`, the table holds `rows / group_size · 2^bits` finite entries, the indices
/// `rows · row_bytes` bytes with zero padding bits. Only [`PalletMatrix::new`] (which checks)
/// makes one; the quantizer (`tandem_lab::pallet::kmeans`) builds its parts and calls it.
#[derive(Debug, Clone, PartialEq)]
pub struct PalletMatrix {
    rows: usize,
    cols: usize,
    bits: Bits,
    group_size: usize,
    /// `[groups, 2^bits]` as stored.
    table: Vec<f16>,
    /// The same entries widened once, for the kernel.
    table_f32: Vec<f32>,
    /// For 2 and 4 bits: each group's table as int8 (`[groups, 16]`, zero-padded) and its scale
    /// (`entry ≈ scale · int8`), for the int8 decode kernel.
    table_i8: Vec<i8>,
    table_scale: Vec<f32>,
    /// `[rows, row_bytes]`.
    indices: Vec<u8>,
}

/// Why a set of parts is not a palletized matrix (the caller adds the file or tensor name).
pub(crate) fn check_parts(
    rows: usize,
    cols: usize,
    bits: Bits,
    group_size: usize,
    table_len: usize,
    indices: &[u8],
) -> std::result::Result<usize, String> {
    if rows == 0 || cols == 0 {
        return Err(format!("shape [{rows}, {cols}] has a zero dimension"));
    }
    if group_size == 0 || !rows.is_multiple_of(group_size) {
        return Err(format!(
            "group size {group_size} does not divide the {rows} rows"
        ));
    }
    let row_bytes = cols
        .checked_mul(bits.get())
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| format!("{cols} columns overflow"))?;
    let want_idx = rows
        .checked_mul(row_bytes)
        .ok_or_else(|| format!("shape [{rows}, {cols}] overflows"))?;
    if indices.len() != want_idx {
        return Err(format!(
            "{} index bytes, but [{rows}, {cols}] at {} bits needs {want_idx}",
            indices.len(),
            bits.get()
        ));
    }
    let want_table = (rows / group_size) * bits.centroids();
    if table_len != want_table {
        return Err(format!(
            "table has {table_len} entries, but {} groups of {} centroids need {want_table}",
            rows / group_size,
            bits.centroids()
        ));
    }
    let used = (cols * bits.get()) % 8;
    if used != 0 {
        let pad_mask = !((1u8 << used) - 1);
        if let Some(r) = (0..rows).find(|r| indices[(r + 1) * row_bytes - 1] & pad_mask != 0) {
            return Err(format!("row {r} has non-zero padding bits"));
        }
    }
    Ok(row_bytes)
}

impl PalletMatrix {
    /// Checks and assembles a matrix from its parts (`table` is `[groups, 2^bits]` row-major,
    /// `indices` is `[rows, row_bytes]`). Errors say which size disagrees.
    pub fn new(
        rows: usize,
        cols: usize,
        bits: Bits,
        group_size: usize,
        table: Vec<f16>,
        indices: Vec<u8>,
    ) -> std::result::Result<Self, String> {
        check_parts(rows, cols, bits, group_size, table.len(), &indices)?;
        if let Some(i) = table.iter().position(|x| !x.is_finite()) {
            return Err(format!("table entry {i} is not finite"));
        }
        let table_f32: Vec<f32> = table.iter().map(|x| x.to_f32()).collect();
        let (table_i8, table_scale) = if bits == Bits::B8 {
            (Vec::new(), Vec::new())
        } else {
            let mut t8 = Vec::with_capacity(rows / group_size * 16);
            let mut sc = Vec::with_capacity(rows / group_size);
            for g in table_f32.chunks_exact(bits.centroids()) {
                let max = g.iter().fold(0f32, |m, x| m.max(x.abs()));
                let s = max / 127.0;
                let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                t8.extend(
                    g.iter()
                        .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8),
                );
                t8.extend(std::iter::repeat_n(0i8, 16 - g.len()));
                sc.push(s);
            }
            (t8, sc)
        };
        Ok(PalletMatrix {
            rows,
            cols,
            bits,
            group_size,
            table,
            table_f32,
            table_i8,
            table_scale,
            indices,
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Index width.
    pub fn bits(&self) -> Bits {
        self.bits
    }

    /// Rows sharing one table.
    pub fn group_size(&self) -> usize {
        self.group_size
    }

    /// The tables, `[groups, 2^bits]`.
    pub fn table(&self) -> &[f16] {
        &self.table
    }

    /// The packed indices, `[rows, row_bytes]`.
    pub fn indices(&self) -> &[u8] {
        &self.indices
    }

    /// Bytes per packed row.
    pub fn row_bytes(&self) -> usize {
        (self.cols * self.bits.get()).div_ceil(8)
    }

    /// Bytes this matrix occupies (indices + f16 tables).
    pub fn byte_size(&self) -> usize {
        self.indices.len() + 2 * self.table.len()
    }

    /// Bits per weight including the tables.
    pub fn effective_bpw(&self) -> f64 {
        8.0 * self.byte_size() as f64 / (self.rows * self.cols) as f64
    }

    pub(crate) fn table_f32(&self) -> &[f32] {
        &self.table_f32
    }

    /// Group `g`'s int8 table (16 entries) and scale; empty for 8 bits.
    pub(crate) fn table_i8(&self, g: usize) -> (&[i8], f32) {
        (
            self.table_i8.get(g * 16..(g + 1) * 16).unwrap_or_default(),
            self.table_scale.get(g).copied().unwrap_or(0.0),
        )
    }

    /// The index of column `j` in row `r`.
    pub fn index(&self, r: usize, j: usize) -> usize {
        let b = self.bits.get();
        let bit = j * b;
        let byte = self.indices[r * self.row_bytes() + bit / 8];
        ((byte >> (bit % 8)) as usize) & (self.bits.centroids() - 1)
    }

    /// Row `r` dequantized into `out` (`cols` long).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        kernel::dequantize_row(self, r, out);
    }

    /// The whole matrix dequantized, row-major `[rows, cols]` (for tests, merging and
    /// `named_tensors`; the kernels never do this).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, row);
        }
        out
    }
}

/// Palletized matrices for the kernel and format tests: per group a table evenly spaced over the
/// group's range, each weight at its nearest entry (real tables come from the lab's k-means).
#[cfg(test)]
pub(crate) fn test_matrix(
    w: &[f32],
    rows: usize,
    cols: usize,
    bits: Bits,
    group_size: usize,
) -> std::result::Result<PalletMatrix, String> {
    let (k, b) = (bits.centroids(), bits.get());
    let row_bytes = (cols * b).div_ceil(8);
    let mut table = Vec::with_capacity(rows / group_size * k);
    let mut indices = vec![0u8; rows * row_bytes];
    for (g, block) in w.chunks_exact(group_size * cols).enumerate() {
        let lo = block.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let t: Vec<f32> = (0..k)
            .map(|i| f16::from_f32(lo + (hi - lo) * i as f32 / (k - 1) as f32).to_f32())
            .collect();
        for (r, row) in block.chunks_exact(cols).enumerate() {
            let out = &mut indices[(g * group_size + r) * row_bytes..][..row_bytes];
            for (j, &v) in row.iter().enumerate() {
                let q = (0..k)
                    .min_by(|&x, &y| (t[x] - v).abs().total_cmp(&(t[y] - v).abs()))
                    .unwrap_or(0) as u8;
                out[j * b / 8] |= q << (j * b % 8);
            }
        }
        table.extend(t.iter().map(|&x| f16::from_f32(x)));
    }
    PalletMatrix::new(rows, cols, bits, group_size, table, indices)
}
