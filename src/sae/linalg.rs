//! Deterministic parallel kernels for the SAE stage: matrix products, column sums and transposes
//! whose results are bit-identical for any number of rayon threads.
//!
//! The rule: work is split into blocks whose boundaries depend only on the shapes (never on the
//! thread count), every block is computed sequentially (faer with `Par::Seq` for products), and
//! partial results are combined in block order.

use faer::linalg::matmul::matmul;
use faer::{Accum, Par};
use faer_ext::IntoFaer;
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Output tile of [`gemm`]: rows × columns of `dst` computed by one sequential faer call.
const TILE_ROWS: usize = 256;
const TILE_COLS: usize = 1152;
/// Rows per block of the chunked reductions.
pub(crate) const REDUCE_ROWS: usize = 512;

/// Splits `v` along `axis` into consecutive pieces of at most `size` (the last may be shorter).
fn split_mut(v: ArrayViewMut2<'_, f32>, axis: Axis, size: usize) -> Vec<(usize, ArrayViewMut2<'_, f32>)> {
    let mut out = Vec::new();
    let mut rest = v;
    let mut start = 0;
    while rest.len_of(axis) > 0 {
        let k = size.min(rest.len_of(axis));
        let (head, tail) = rest.split_at(axis, k);
        out.push((start, head));
        start += k;
        rest = tail;
    }
    out
}

/// `dst (M, N) = a (M, K) · b (K, N)` (or `+=` when `accumulate`), f32 with faer's SIMD kernels.
///
/// Any strides are accepted (pass `x.t()` for a transposed operand). `dst` is split into fixed
/// tiles that run as independent rayon tasks, each a sequential faer product, so the result does
/// not depend on the number of threads.
pub(crate) fn gemm(dst: ArrayViewMut2<'_, f32>, a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>, accumulate: bool) {
    gemm_then(dst, a, b, accumulate, |_, _, _| {});
}

/// [`gemm`], then `epilogue(i0, j0, tile)` on each finished output tile (rows `i0..`, columns
/// `j0..` of `dst`) while it is still in cache: for element-wise work that would otherwise be
/// another pass over `dst`.
pub(crate) fn gemm_then<E>(
    dst: ArrayViewMut2<'_, f32>,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    accumulate: bool,
    epilogue: E,
) where
    E: Fn(usize, usize, ArrayViewMut2<'_, f32>) + Sync,
{
    let (m, n) = dst.dim();
    assert_eq!(a.nrows(), m, "gemm: a has {} rows, dst {}", a.nrows(), m);
    assert_eq!(b.ncols(), n, "gemm: b has {} columns, dst {}", b.ncols(), n);
    assert_eq!(
        a.ncols(),
        b.nrows(),
        "gemm: inner dimensions {} and {}",
        a.ncols(),
        b.nrows()
    );
    if m == 0 || n == 0 {
        return;
    }
    let accum = if accumulate { Accum::Add } else { Accum::Replace };
    let mut tiles = Vec::new();
    for (i0, rows) in split_mut(dst, Axis(0), TILE_ROWS) {
        for (j0, tile) in split_mut(rows, Axis(1), TILE_COLS) {
            tiles.push((i0, j0, tile));
        }
    }
    tiles.into_par_iter().for_each(|(i0, j0, mut tile)| {
        let (tm, tn) = tile.dim();
        let a_blk = a.slice(s![i0..i0 + tm, ..]);
        let b_blk = b.slice(s![.., j0..j0 + tn]);
        if a.ncols() == 0 {
            if !accumulate {
                tile.fill(0.0);
            }
        } else {
            matmul(
                tile.view_mut().into_faer(),
                accum,
                a_blk.into_faer(),
                b_blk.into_faer(),
                1.0f32,
                Par::Seq,
            );
        }
        epilogue(i0, j0, tile);
    });
}

/// Column sums of `a (n, k)` in f64: fixed row blocks summed in order, so the result does not
/// depend on the thread count.
pub(crate) fn col_sums_f64(a: ArrayView2<'_, f32>) -> Vec<f64> {
    let k = a.ncols();
    let partials: Vec<Vec<f64>> = a
        .axis_chunks_iter(Axis(0), REDUCE_ROWS)
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0.0f64; k];
            for row in blk.rows() {
                if let Some(row) = row.as_slice() {
                    for (s, &v) in acc.iter_mut().zip(row) {
                        *s += v as f64;
                    }
                } else {
                    for (s, &v) in acc.iter_mut().zip(row.iter()) {
                        *s += v as f64;
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; k];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// Sum of per-row values `f(row)` in f64, combined in row order (thread-count independent).
pub(crate) fn sum_rows_f64<F>(a: ArrayView2<'_, f32>, f: F) -> f64
where
    F: Fn(ndarray::ArrayView1<'_, f32>) -> f64 + Sync,
{
    let partials: Vec<f64> = a
        .axis_chunks_iter(Axis(0), REDUCE_ROWS)
        .into_par_iter()
        .map(|blk| blk.rows().into_iter().map(&f).sum::<f64>())
        .collect();
    partials.into_iter().sum()
}

/// Runs `f(i, row_i)` on every row of a standard-layout matrix, rows in parallel.
pub(crate) fn par_rows_mut<F>(mut a: ArrayViewMut2<'_, f32>, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    let cols = a.ncols();
    if cols == 0 || a.nrows() == 0 {
        return;
    }
    let s = a.as_slice_mut().expect("par_rows_mut: standard layout");
    s.par_chunks_mut(cols).enumerate().for_each(|(i, r)| f(i, r));
}

/// Like [`par_rows_mut`], collecting one value per row (in row order).
pub(crate) fn par_rows_mut_map<T, F>(mut a: ArrayViewMut2<'_, f32>, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize, &mut [f32]) -> T + Sync + Send,
{
    let cols = a.ncols();
    if a.nrows() == 0 {
        return vec![];
    }
    if cols == 0 {
        return (0..a.nrows()).map(|i| f(i, &mut [])).collect();
    }
    let s = a.as_slice_mut().expect("par_rows_mut_map: standard layout");
    s.par_chunks_mut(cols).enumerate().map(|(i, r)| f(i, r)).collect()
}

/// Calls `f(k, v)` on each element of a row that need not be contiguous.
#[inline]
pub(crate) fn for_each_in_row(row: ndarray::ArrayView1<'_, f32>, mut f: impl FnMut(usize, f32)) {
    if let Some(s) = row.as_slice() {
        for (k, &v) in s.iter().enumerate() {
            f(k, v);
        }
    } else {
        for (k, &v) in row.iter().enumerate() {
            f(k, v);
        }
    }
}

/// A (rows, cols) f32 matrix filled with zeros (C order).
pub(crate) fn zeros(rows: usize, cols: usize) -> Array2<f32> {
    Array2::zeros((rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SplitMix64;

    fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut rng = SplitMix64::new(seed);
        Array2::from_shape_fn((rows, cols), |_| rng.normal() as f32)
    }

    #[test]
    fn gemm_matches_a_naive_product_for_plain_and_transposed_operands() {
        let a = random(300, 70, 1);
        let b = random(70, 1300, 2);
        let mut dst = zeros(300, 1300);
        gemm(dst.view_mut(), a.view(), b.view(), false);
        let reference = a.dot(&b);
        let max = (&dst - &reference).iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max < 1e-3, "max |Δ| = {max}");
        // transposed operands and accumulation
        let at = a.t().to_owned(); // (70, 300)
        gemm(dst.view_mut(), at.t(), b.view(), true);
        let max = (&dst - &(2.0 * &reference)).iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max < 2e-3, "max |Δ| = {max}");
    }

    #[test]
    fn gemm_is_bit_identical_on_one_and_two_threads() {
        let a = random(600, 90, 3);
        let b = random(90, 2500, 4);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut dst = zeros(600, 2500);
                gemm(dst.view_mut(), a.view(), b.view(), false);
                dst
            })
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn column_sums_are_exact_on_small_integers() {
        let a = Array2::from_shape_fn((1030, 3), |(i, j)| (i % 7) as f32 + j as f32);
        let sums = col_sums_f64(a.view());
        let expect: Vec<f64> = (0..3).map(|j| (0..1030).map(|i| ((i % 7) + j) as f64).sum()).collect();
        assert_eq!(sums, expect);
    }
}
