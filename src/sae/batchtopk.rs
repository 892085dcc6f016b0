//! BatchTopK and Matryoshka BatchTopK training (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse
//! Autoencoders"; Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features with
//! Matryoshka Sparse Autoencoders"): the batch-wide code selection and the nested-prefix loss's
//! backward pass. The trainer ([`super::train`]) calls them through `Objective::BatchTopK`.
//!
//! ```text
//! f   = the k·n largest entries of ReLU(z) over the whole batch of n rows (ties → lower row,
//!       then lower feature), others 0                         (rows may hold more or fewer than k)
//! x̂_m = f[:, :m] W_dec[:m] + b_dec                            for each level width m
//! L   = Σ_m mean_rows ‖x − x̂_m‖²                              (one level = plain BatchTopK)
//! θ  ← (1 − lr) θ + lr · min(kept codes)                      once per step, θ₀ = 0
//! ```
//! At inference a BatchTopK SAE is a JumpReLU SAE with the same threshold θ for every feature
//! (`f_j = ReLU(z_j) · 1[z_j > θ]`), which is how SAELens saves it (`batchtopk_sae.py`,
//! `topk_threshold_lr` 0.01). The Matryoshka levels take prefixes of the one batch-wide
//! selection, as in Bussmann et al.'s paper and code; recent SAELens
//! (`matryoshka_batchtopk_sae.py`) instead re-runs the BatchTopK selection inside each inner prefix.
//!
//! May import: `stats`, `error` (through the siblings `relu`, `linalg`, `simd`).

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::linalg::{par_rows_mut, zeros};
use super::simd::{axpy, dot};

/// Buckets of the first selection pass: the top 16 bits of a positive f32 (sign, exponent and 7
/// mantissa bits), which order like the values.
const BUCKETS: usize = 1 << 16;

/// Keeps the `budget` largest entries of a whole batch of non-negative codes `(n, d_sae)` and
/// zeroes the rest (ties → lower row, then lower feature; exact, whatever the thread count).
/// Returns the smallest kept value, or `None` when no entry is positive. When at most `budget`
/// entries are positive all are kept.
///
/// Two passes over the codes: a histogram of the values' top 16 bits finds the bucket holding the
/// `budget`-th largest, then only that bucket's entries are sorted.
pub(crate) fn batch_topk_in_place(mut codes: ArrayViewMut2<'_, f32>, budget: usize) -> Option<f32> {
    let d = codes.ncols();
    let hist = codes
        .view()
        .axis_chunks_iter(Axis(0), 64)
        .into_par_iter()
        .fold(
            || vec![0u64; BUCKETS],
            |mut h, blk| {
                for &v in blk.iter() {
                    if v > 0.0 {
                        h[(v.to_bits() >> 16) as usize] += 1;
                    }
                }
                h
            },
        )
        .reduce(
            || vec![0u64; BUCKETS],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let positives: u64 = hist.iter().sum();
    if positives == 0 {
        return None;
    }
    if positives <= budget as u64 {
        let min = codes
            .view()
            .axis_iter(Axis(0))
            .into_par_iter()
            .map(|r| r.iter().copied().filter(|&v| v > 0.0).fold(f32::INFINITY, f32::min))
            .reduce(|| f32::INFINITY, f32::min);
        return Some(min);
    }
    // the bucket of the budget-th largest value, and how many of its entries are kept
    let (mut above, mut bucket) = (0u64, BUCKETS - 1);
    while above + hist[bucket] < budget as u64 {
        above += hist[bucket];
        bucket -= 1;
    }
    let need = (budget as u64 - above) as usize; // 1 ..= hist[bucket]
    if need == 0 {
        // budget 0: nothing is kept
        codes.fill(0.0);
        return None;
    }
    let mut cand: Vec<(u32, u64)> = codes
        .view()
        .axis_iter(Axis(0))
        .into_par_iter()
        .enumerate()
        .flat_map_iter(|(i, r)| {
            r.into_iter()
                .enumerate()
                .filter(|&(_, &v)| v > 0.0 && (v.to_bits() >> 16) as usize == bucket)
                .map(move |(j, &v)| (v.to_bits(), (i * d + j) as u64))
                .collect::<Vec<_>>()
        })
        .collect();
    cand.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let (t_bits, t_idx) = cand[need - 1];
    par_rows_mut(codes, |i, row| {
        for (j, v) in row.iter_mut().enumerate() {
            let b = v.to_bits();
            let keep = *v > 0.0 && (b > t_bits || (b == t_bits && ((i * d + j) as u64) <= t_idx));
            if !keep {
                *v = 0.0;
            }
        }
    });
    Some(f32::from_bits(t_bits))
}

/// Backward pass of the Matryoshka loss `Σ_m mean ‖x − x̂_m‖²` over the level widths `levels`
/// (strictly increasing, the last = d_sae) for the masked codes `f (n, d_sae)`, the centred inputs
/// `xc (n, d_in)` and the decoder `w_dec (d_sae, d_in)`. A feature j of level g (levels[g−1] ≤ j < levels[g]) enters every x̂_m with m > j, so
/// its gradients use `G_g = g_scale Σ_{l ≥ g} (x̂_l − x)`:
///
/// ```text
/// grad W_dec_j = Σ_rows f_bj G_g,b      P_bj = G_g,b · W_dec_j  (active pairs)
/// grad W_enc[:, j] = Σ_rows P_bj xc_b   grad b_enc_j = Σ_rows P_bj
/// ```
/// Writes those into `grad_w_dec (d_sae, d_in)`, `grad_w_enc (d_in, d_sae)` and `grad_b_enc`,
/// the whole SAE's squared error per row into `row_mse`, its `g_scale (x̂ − x)` into `e (n, d_in)`
/// (what the AuxK term needs) and the firing counts into `fired`. Returns (Σ over inner levels of
/// the mean squared error, the column sums of G_0 — dL/dx̂ summed over every level — for the
/// caller's b_dec gradient).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matryoshka_backward(
    w_dec: &Array2<f32>,
    xc: ArrayView2<'_, f32>,
    f: ArrayView2<'_, f32>,
    levels: &[usize],
    g_scale: f32,
    e: ArrayViewMut2<'_, f32>,
    row_mse: &mut [f64],
    fired: &mut [u32],
    (grad_w_dec, grad_w_enc, grad_b_enc): (&mut Array2<f32>, &mut Array2<f32>, &mut Array1<f32>),
) -> (f64, Vec<f64>) {
    let (n, d_sae) = f.dim();
    let d_in = w_dec.ncols();
    let nl = levels.len();
    debug_assert_eq!(levels.last(), Some(&d_sae));
    let level_of = |j: usize| levels.partition_point(|&m| m <= j);
    let wrow = |j: usize| w_dec.row(j).to_slice().expect("standard layout");

    // per row: the active (feature, value) pairs in feature order
    let active: Vec<Vec<(u32, f32)>> = f
        .axis_iter(Axis(0))
        .into_par_iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .filter(|&(_, &v)| v > 0.0)
                .map(|(j, &v)| (j as u32, v))
                .collect()
        })
        .collect();

    // per row: G_0 .. G_{nl−1} (nl × d_in) and P at its active pairs
    let mut g = vec![0.0f32; n * nl * d_in];
    let rows: Vec<(Vec<f64>, Vec<f32>)> = g
        .par_chunks_mut(nl * d_in)
        .zip(active.par_iter())
        .enumerate()
        .map(|(i, (gi, act))| {
            let x = xc.row(i);
            let x = x.as_slice().expect("standard layout");
            let mut acc: Vec<f32> = x.iter().map(|&v| -v).collect(); // x̂ − x, level by level
            let mut mse = vec![0.0f64; nl];
            let mut q = 0;
            for l in 0..nl {
                while q < act.len() && (act[q].0 as usize) < levels[l] {
                    axpy(act[q].1, wrow(act[q].0 as usize), &mut acc);
                    q += 1;
                }
                mse[l] = acc.iter().map(|&v| (v as f64) * (v as f64)).sum();
                gi[l * d_in..(l + 1) * d_in].copy_from_slice(&acc);
            }
            // G_l = g_scale e_l + G_{l+1}, from the last level down
            gi[(nl - 1) * d_in..].iter_mut().for_each(|v| *v *= g_scale);
            for l in (0..nl - 1).rev() {
                let (head, tail) = gi.split_at_mut((l + 1) * d_in);
                for (a, &b) in head[l * d_in..].iter_mut().zip(&tail[..d_in]) {
                    *a = *a * g_scale + b;
                }
            }
            let p: Vec<f32> = act
                .iter()
                .map(|&(j, _)| {
                    let l = level_of(j as usize);
                    dot(&gi[l * d_in..(l + 1) * d_in], wrow(j as usize))
                })
                .collect();
            (mse, p)
        })
        .collect();

    let mut inner = 0.0f64;
    let mut p_rows = Vec::with_capacity(n);
    for (i, (mse, p)) in rows.into_iter().enumerate() {
        row_mse[i] = mse[nl - 1];
        inner += mse[..nl - 1].iter().sum::<f64>();
        p_rows.push(p);
    }
    let g_at = |b: usize, l: usize| &g[(b * nl + l) * d_in..(b * nl + l + 1) * d_in];
    par_rows_mut(e, |i, e| e.copy_from_slice(g_at(i, nl - 1)));
    let mut g_sum = vec![0.0f64; d_in];
    for b in 0..n {
        for (s, &v) in g_sum.iter_mut().zip(g_at(b, 0)) {
            *s += v as f64;
        }
    }

    // per feature, its (row, f, P) entries in row order
    let mut colptr = vec![0usize; d_sae + 1];
    for act in &active {
        for &(j, _) in act {
            colptr[j as usize + 1] += 1;
        }
    }
    for j in 0..d_sae {
        colptr[j + 1] += colptr[j];
    }
    let mut entries = vec![(0u32, 0.0f32, 0.0f32); colptr[d_sae]];
    let mut next = colptr[..d_sae].to_vec();
    for (b, (act, p)) in active.iter().zip(&p_rows).enumerate() {
        for (&(j, f), &pv) in act.iter().zip(p) {
            entries[next[j as usize]] = (b as u32, f, pv);
            next[j as usize] += 1;
        }
    }
    for j in 0..d_sae {
        fired[j] = (colptr[j + 1] - colptr[j]) as u32;
    }

    let mut w_enc_t = zeros(d_sae, d_in);
    let b_enc: Vec<f64> = grad_w_dec
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(w_enc_t.axis_iter_mut(Axis(0)))
        .enumerate()
        .map(|(j, (mut gd, mut ge))| {
            let gd = gd.as_slice_mut().expect("standard layout");
            let ge = ge.as_slice_mut().expect("standard layout");
            gd.fill(0.0);
            let l = level_of(j);
            let mut p_sum = 0.0f64;
            for &(b, f, p) in &entries[colptr[j]..colptr[j + 1]] {
                let b = b as usize;
                axpy(f, g_at(b, l), gd);
                axpy(p, xc.row(b).to_slice().expect("standard layout"), ge);
                p_sum += p as f64;
            }
            p_sum
        })
        .collect();
    par_rows_mut(grad_w_enc.view_mut(), |c, row| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = w_enc_t[[j, c]];
        }
    });
    for (g, v) in grad_b_enc.iter_mut().zip(b_enc) {
        *g = v as f32;
    }
    (inner / n as f64, g_sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SplitMix64;
    use ndarray::Array2;

    /// The budget largest positive entries by a full sort (ties → lower row-major index).
    fn by_sort(codes: &Array2<f32>, budget: usize) -> (Array2<f32>, Option<f32>) {
        let mut all: Vec<(f32, usize)> = codes
            .iter()
            .copied()
            .enumerate()
            .filter(|e| e.1 > 0.0)
            .map(|(i, v)| (v, i))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all.truncate(budget);
        let mut out = Array2::zeros(codes.dim());
        let d = codes.ncols();
        for &(v, i) in &all {
            out[[i / d, i % d]] = v;
        }
        (out, all.last().map(|e| e.0))
    }

    #[test]
    fn batch_topk_keeps_exactly_what_a_sort_of_the_whole_batch_keeps() {
        let mut rng = SplitMix64::new(5);
        for (n, d, budget, ties) in [
            (37, 50, 40, false),
            (64, 300, 64 * 7, true),
            (9, 20, 500, false),
            (8, 16, 0, false),
        ] {
            // ReLU of normals; with ties, values rounded to a coarse grid so many are equal
            let codes = Array2::from_shape_simple_fn((n, d), || {
                let v = (rng.normal() as f32).max(0.0);
                if ties {
                    (v * 4.0).round() / 4.0
                } else {
                    v
                }
            });
            let (want, min) = by_sort(&codes, budget);
            let mut got = codes.clone();
            let kept = batch_topk_in_place(got.view_mut(), budget);
            assert_eq!(got, want, "n {n}, d {d}, budget {budget}");
            assert_eq!(kept, min, "n {n}, d {d}, budget {budget}");
            let nnz = got.iter().filter(|&&v| v > 0.0).count();
            let positives = codes.iter().filter(|&&v| v > 0.0).count();
            assert_eq!(nnz, budget.min(positives));
        }
        let mut zeros = Array2::<f32>::zeros((4, 4));
        assert_eq!(batch_topk_in_place(zeros.view_mut(), 3), None);
    }

    #[test]
    fn batch_topk_gives_the_same_codes_on_one_and_two_threads() {
        let mut rng = SplitMix64::new(9);
        let codes = Array2::from_shape_simple_fn((512, 256), || ((rng.normal() as f32) * 8.0).round().max(0.0));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut c = codes.clone();
            let m = pool.install(|| batch_topk_in_place(c.view_mut(), 512 * 5));
            (c, m)
        };
        assert_eq!(run(1), run(2));
    }
}
