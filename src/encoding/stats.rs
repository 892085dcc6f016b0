//! Statistics for voxelwise encoding models (METHOD.md §5): per-target scores, block permutation
//! tests, Benjamini–Hochberg FDR, and noise ceilings.
//!
//! Unit of analysis: one *target* (voxel, vertex, parcel, electrode) of one subject. Every
//! function takes targets as columns, returns one value per target, and treats targets as
//! independent computations (summaries over targets and subjects are the caller's business).
//!
//! - Scores of held-out predictions: [`r2_per_target`], [`pearson_per_target`]. Inputs are
//!   (n_samples, n_targets) in the response's units (e.g. % signal change or z); outputs are
//!   unitless.
//! - Significance of one target's held-out Pearson r: [`block_permutation_test`], a one-sided test
//!   whose null shuffles contiguous blocks of the prediction's rows (time points), which keeps the
//!   autocorrelation of fMRI within blocks. Correct for the many targets with [`fdr_bh`] /
//!   [`fdr_reject`] (Benjamini–Hochberg, as `scipy.stats.false_discovery_control`).
//! - Noise ceilings: [`explainable_variance`] from repeats of the same stimulus (as the Gallant
//!   lab's `voxelwise_tutorials.utils.explainable_variance`), or, when there are no repeats but
//!   several subjects heard the same stimulus, the leave-one-subject-out inter-subject correlation
//!   [`isc_ceiling`]. Turn either into a ceiling on r with [`ceiling_r_from_ev`] (ISC first through
//!   [`explainable_variance_from_isc`], or [`IscCeiling::ceiling_r`]) and report
//!   [`normalized_r`] = r / ceiling next to r.
//!
//! Determinism: rayon runs only independent tasks (targets, chunks of permutations); every random
//! stream is a function of (seed, permutation index) alone and permutation counts are integers, so
//! results are bit-identical for any number of threads.

use ndarray::{Array2, ArrayView2, ArrayView3, Axis};
use rayon::prelude::*;

use crate::stats::{pearson, zscore_columns, SplitMix64};
use crate::{Error, Result};

/// Permutations are drawn in chunks of this many per rayon task; the chunking fixes nothing about
/// the result (counts are integers and each permutation's stream depends only on its index).
const PERM_CHUNK: usize = 64;

/// Golden-ratio increment of SplitMix64's state (its Weyl sequence).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Relative tolerance for "r_perm ≥ r_obs": values within 100 ulp-scale of r_obs count as ties
/// (and ties count as exceedances), as `scipy.stats.permutation_test` does, so that a permutation
/// equal to the observed one in exact arithmetic is not lost to rounding.
const TIE_RTOL: f64 = 100.0 * f64::EPSILON;

// ------------------------------------------------------------------------------------------ scores

/// Coefficient of determination per target: R²_j = 1 − SSE_j / SST_j with
/// SSE_j = Σ_i (obs_ij − pred_ij)² and SST_j = Σ_i (obs_ij − mean_i obs_ij)² (as
/// `sklearn.metrics.r2_score(..., multioutput='raw_values')`). Unitless, ≤ 1, negative when the
/// prediction is worse than the observation's own mean.
///
/// `pred`, `obs`: (n_samples, n_targets). Returns n_targets values; NaN for a constant `obs`
/// column (SST = 0) or when there are no samples.
///
/// # Panics
/// If the shapes differ.
pub fn r2_per_target(pred: ArrayView2<f64>, obs: ArrayView2<f64>) -> Vec<f64> {
    assert_same_shape("r2_per_target", pred, obs);
    per_target(pred, obs, |p, o| {
        let n = o.len();
        if n == 0 {
            return f64::NAN;
        }
        let mean = o.iter().sum::<f64>() / n as f64;
        let (mut sse, mut sst) = (0.0, 0.0);
        for (pi, oi) in p.iter().zip(o) {
            sse += (oi - pi) * (oi - pi);
            sst += (oi - mean) * (oi - mean);
        }
        if sst == 0.0 {
            f64::NAN
        } else {
            1.0 - sse / sst
        }
    })
}

/// Pearson correlation per target between prediction and observation columns
/// ([`crate::stats::pearson`]). `pred`, `obs`: (n_samples, n_targets). Returns n_targets values in
/// [−1, 1]; NaN where either column is constant or n_samples < 2.
///
/// # Panics
/// If the shapes differ.
pub fn pearson_per_target(pred: ArrayView2<f64>, obs: ArrayView2<f64>) -> Vec<f64> {
    assert_same_shape("pearson_per_target", pred, obs);
    per_target(pred, obs, |p, o| pearson(p, o))
}

fn assert_same_shape(what: &str, pred: ArrayView2<f64>, obs: ArrayView2<f64>) {
    assert_eq!(
        pred.dim(),
        obs.dim(),
        "{what}: expected pred and obs of the same shape (n_samples, n_targets), found {:?} and {:?}",
        pred.dim(),
        obs.dim()
    );
}

/// Applies `f` to each pair of columns (copied to contiguous buffers), in parallel over targets.
fn per_target(pred: ArrayView2<f64>, obs: ArrayView2<f64>, f: impl Fn(&[f64], &[f64]) -> f64 + Sync) -> Vec<f64> {
    (0..pred.ncols())
        .into_par_iter()
        .map(|j| f(&pred.column(j).to_vec(), &obs.column(j).to_vec()))
        .collect()
}

// ------------------------------------------------------------------------------ permutation test

/// Result of [`block_permutation_test`], with the settings that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct PermutationTest {
    /// Observed Pearson r per target (n_targets), computed as the mean product of z-scores; equal
    /// to [`pearson_per_target`] up to rounding. NaN for a constant column.
    pub r_observed: Vec<f64>,
    /// One-sided (upper) permutation p-value per target (n_targets), in [1/(1+n_perm), 1]; NaN
    /// where `r_observed` is NaN.
    pub p_values: Vec<f64>,
    /// Number of random block permutations drawn.
    pub n_perm: usize,
    /// Rows (samples, e.g. TRs) per block.
    pub block_len: usize,
    /// Seed of the permutation streams.
    pub seed: u64,
}

/// Block permutation test of held-out prediction accuracy, one target at a time.
///
/// `pred`, `obs`: (n_samples, n_targets), rows in time order (one recording, e.g. TRs of one run
/// or of concatenated test stories). Statistic: Pearson r between `pred[:, j]` and `obs[:, j]`.
///
/// Null: the rows of `pred` are cut into contiguous blocks of `block_len` rows (the last, partial
/// block, if any, stays one block) and the blocks are shuffled uniformly (Fisher–Yates) while
/// `obs` stays in place. This keeps the autocorrelation within blocks that a row-wise shuffle
/// would destroy; choose `block_len` longer than the response's autocorrelation (≈ 10–20 s of
/// fMRI). One permutation is applied to all targets at once, so the dependence between targets is
/// kept (the null distributions are jointly valid, e.g. for max-statistics computed later).
///
/// p-value (one-sided, upper, with the observed arrangement counted, Phipson & Smyth 2010):
/// p_j = (1 + #{k : r_perm_jk ≥ r_obs_j}) / (1 + n_perm). Ties count as exceedances, with a
/// relative tolerance of 100·ε on r_obs as in `scipy.stats.permutation_test`. A permutation may
/// draw the identity order; it is counted like any other draw.
///
/// Computation: the columns are z-scored once (ddof = 0), so r = (1/n) Σ_i z_pred[i] z_obs[i], and
/// a block permutation is a row permutation of z_pred: each permutation costs one pass over the
/// data for all targets. Permutation k draws its block order from its own SplitMix64 stream,
/// seeded with the (k+1)-th output of `SplitMix64::new(seed)`; permutations run in parallel in
/// chunks and their integer counts are summed, so results are bit-identical for any number of
/// threads.
///
/// Errors: shapes differ; a non-finite value; `block_len` = 0; fewer than 2 blocks; `n_perm` = 0.
pub fn block_permutation_test(
    pred: ArrayView2<f64>,
    obs: ArrayView2<f64>,
    block_len: usize,
    n_perm: usize,
    seed: u64,
) -> Result<PermutationTest> {
    if pred.dim() != obs.dim() {
        return Err(Error::Invalid(format!(
            "block permutation test: expected pred and obs of the same shape (n_samples, n_targets), found {:?} and {:?}",
            pred.dim(),
            obs.dim()
        )));
    }
    check_finite("block permutation test: pred", pred)?;
    check_finite("block permutation test: obs", obs)?;
    if block_len == 0 {
        return Err(Error::Invalid(
            "block permutation test: expected block_len ≥ 1 row, found 0".into(),
        ));
    }
    let (n_samples, n_targets) = pred.dim();
    let n_blocks = n_samples.div_ceil(block_len);
    if n_blocks < 2 {
        return Err(Error::Invalid(format!(
            "block permutation test: expected at least 2 blocks, found {n_blocks} ({n_samples} samples in blocks of \
             {block_len} rows); use a shorter block_len"
        )));
    }
    if n_perm == 0 {
        return Err(Error::Invalid(
            "block permutation test: expected n_perm ≥ 1 permutations, found 0".into(),
        ));
    }

    // (n_samples, n_targets), standard layout; constant columns become zeros (and NaN r below)
    let mut zp = pred.to_owned();
    let mut zo = obs.to_owned();
    let sd_p = zscore_columns(zp.view_mut());
    let sd_o = zscore_columns(zo.view_mut());
    let zp = zp.as_standard_layout().into_owned();
    let zo = zo.as_standard_layout().into_owned();
    let (zp_s, zo_s) = (zp.as_slice().unwrap(), zo.as_slice().unwrap());
    let constant: Vec<bool> = (0..n_targets).map(|j| sd_p[j].1 == 0.0 || sd_o[j].1 == 0.0).collect();

    let identity: Vec<usize> = (0..n_samples).collect();
    let mut acc = vec![0.0; n_targets];
    sum_products(zp_s, zo_s, n_targets, &identity, &mut acc);
    let r_observed: Vec<f64> = acc
        .iter()
        .zip(&constant)
        .map(|(&s, &c)| if c { f64::NAN } else { s / n_samples as f64 })
        .collect();
    // r_perm ≥ threshold  ⇔  r_perm ≥ r_obs up to the tie tolerance
    let threshold: Vec<f64> = r_observed.iter().map(|r| r - TIE_RTOL * r.abs()).collect();

    let n_chunks = n_perm.div_ceil(PERM_CHUNK);
    let chunk_counts: Vec<Vec<u64>> = (0..n_chunks)
        .into_par_iter()
        .map(|c| {
            let mut counts = vec![0u64; n_targets];
            let mut acc = vec![0.0; n_targets];
            let mut rows = vec![0usize; n_samples];
            for k in c * PERM_CHUNK..((c + 1) * PERM_CHUNK).min(n_perm) {
                let order = block_order(n_blocks, seed, k);
                rows_from_block_order(&order, n_samples, block_len, &mut rows);
                sum_products(zp_s, zo_s, n_targets, &rows, &mut acc);
                for j in 0..n_targets {
                    if acc[j] / n_samples as f64 >= threshold[j] {
                        counts[j] += 1;
                    }
                }
            }
            counts
        })
        .collect();
    let mut counts = vec![0u64; n_targets];
    for chunk in &chunk_counts {
        counts.iter_mut().zip(chunk).for_each(|(a, b)| *a += b);
    }
    let p_values = counts
        .iter()
        .zip(&r_observed)
        .map(|(&c, r)| {
            if r.is_nan() {
                f64::NAN
            } else {
                (1 + c) as f64 / (1 + n_perm) as f64
            }
        })
        .collect();
    Ok(PermutationTest {
        r_observed,
        p_values,
        n_perm,
        block_len,
        seed,
    })
}

fn check_finite(what: &str, x: ArrayView2<f64>) -> Result<()> {
    if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "{what}: expected finite values, found {v} at row {i}, target {j}"
        )));
    }
    Ok(())
}

/// acc[j] = Σ_i zp[rows[i], j] · zo[i, j] for row-major (n_samples, n_targets) slices, summed over
/// i in increasing order.
fn sum_products(zp: &[f64], zo: &[f64], n_targets: usize, rows: &[usize], acc: &mut [f64]) {
    acc.fill(0.0);
    for (i, &src) in rows.iter().enumerate() {
        let p = &zp[src * n_targets..(src + 1) * n_targets];
        let o = &zo[i * n_targets..(i + 1) * n_targets];
        for ((a, pv), ov) in acc.iter_mut().zip(p).zip(o) {
            *a += pv * ov;
        }
    }
}

/// The block order of permutation `k`: a uniform random permutation of 0..n_blocks (Fisher–Yates)
/// from a SplitMix64 stream seeded with the (k+1)-th output of `SplitMix64::new(seed)`.
fn block_order(n_blocks: usize, seed: u64, k: usize) -> Vec<usize> {
    let stream_seed = SplitMix64::new(seed.wrapping_add((k as u64).wrapping_mul(GOLDEN_GAMMA))).next_u64();
    let mut rng = SplitMix64::new(stream_seed);
    let mut order: Vec<usize> = (0..n_blocks).collect();
    for i in (1..n_blocks).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// Source rows of the permuted series: block `order[0]` first, then `order[1]`, …; block b holds
/// rows b·block_len .. min((b+1)·block_len, n_samples).
fn rows_from_block_order(order: &[usize], n_samples: usize, block_len: usize, rows: &mut [usize]) {
    let mut i = 0;
    for &b in order {
        for src in b * block_len..((b + 1) * block_len).min(n_samples) {
            rows[i] = src;
            i += 1;
        }
    }
    debug_assert_eq!(i, n_samples);
}

/// A block-permutation test of the mean over segments of the within-segment Pearson r: the
/// statistic the encoding fits report (mean over outer folds of the r within each fold's test
/// rows), so the p-value belongs to the r in the table.
///
/// `segments` lists, per segment (outer fold), the rows of `pred`/`obs` it holds (disjoint; each
/// at least 2 rows). Within each segment both columns are z-scored (ddof = 0), so the segment's r
/// is (1/n_s) Σ_{i∈s} z_pred[i] z_obs[i], and the statistic is the mean of those over segments.
/// Null: within each segment, its rows (in the order given) are cut into contiguous blocks of
/// `block_len` rows (the last, partial block stays one block) and the blocks are shuffled; `obs`
/// stays in place; predictions never move between segments (a fold's predictions come from its
/// own model). Segments with fewer than 2 blocks keep their order. One permutation moves all
/// targets together. p-values as [`block_permutation_test`] (Phipson & Smyth, ties counted with a
/// relative tolerance of 100·ε). Permutation k of segment s draws its block order from its own
/// SplitMix64 stream (seeded from `seed`, k and s); bit-identical for any number of threads. With
/// one segment holding every row in order this is [`block_permutation_test`].
///
/// Errors: shapes differ; a non-finite value; an empty or out-of-range segment; a row in two
/// segments; `block_len` = 0; no segment with 2 blocks or more; `n_perm` = 0.
pub fn segment_mean_permutation_test(
    pred: ArrayView2<f64>,
    obs: ArrayView2<f64>,
    segments: &[Vec<usize>],
    block_len: usize,
    n_perm: usize,
    seed: u64,
) -> Result<PermutationTest> {
    let what = "fold-mean permutation test";
    if pred.dim() != obs.dim() {
        return Err(Error::Invalid(format!(
            "{what}: expected pred and obs of the same shape (n_samples, n_targets), found {:?} and {:?}",
            pred.dim(),
            obs.dim()
        )));
    }
    check_finite("fold-mean permutation test: pred", pred)?;
    check_finite("fold-mean permutation test: obs", obs)?;
    if block_len == 0 || n_perm == 0 {
        return Err(Error::Invalid(format!(
            "{what}: expected block_len ≥ 1 and n_perm ≥ 1, found {block_len} and {n_perm}"
        )));
    }
    let (n_samples, n_targets) = pred.dim();
    let mut seen = vec![false; n_samples];
    for (s, rows) in segments.iter().enumerate() {
        if rows.len() < 2 {
            return Err(Error::Invalid(format!(
                "{what}: segment {s} has {} rows; expected at least 2",
                rows.len()
            )));
        }
        for &i in rows {
            if i >= n_samples || seen[i] {
                return Err(Error::Invalid(format!(
                    "{what}: row {i} of segment {s} is out of range (n_samples = {n_samples}) or in two segments"
                )));
            }
            seen[i] = true;
        }
    }
    let n_blocks: Vec<usize> = segments.iter().map(|r| r.len().div_ceil(block_len)).collect();
    if !n_blocks.iter().any(|&b| b >= 2) {
        return Err(Error::Invalid(format!(
            "{what}: no segment has 2 blocks of {block_len} rows or more; use a shorter block_len"
        )));
    }
    let n_seg = segments.len() as f64;

    // per segment: z-scored (len, n_targets) row-major copies of its rows, and constant flags
    struct Seg {
        zp: Vec<f64>,
        zo: Vec<f64>,
        len: usize,
    }
    let mut constant = vec![false; n_targets];
    let segs: Vec<Seg> = segments
        .iter()
        .map(|rows| {
            let mut zp = pred.select(Axis(0), rows);
            let mut zo = obs.select(Axis(0), rows);
            let sp = zscore_columns(zp.view_mut());
            let so = zscore_columns(zo.view_mut());
            for j in 0..n_targets {
                if sp[j].1 == 0.0 || so[j].1 == 0.0 {
                    constant[j] = true;
                }
            }
            Seg {
                zp: zp.as_standard_layout().iter().copied().collect(),
                zo: zo.as_standard_layout().iter().copied().collect(),
                len: rows.len(),
            }
        })
        .collect();

    // statistic for one arrangement: Σ_s (1/(n_seg·n_s)) Σ_i zp_s[rows_s[i]] zo_s[i]
    let statistic = |orders: &[Vec<usize>], acc: &mut [f64], tmp: &mut [f64]| {
        acc.fill(0.0);
        for (seg, rows) in segs.iter().zip(orders) {
            sum_products(&seg.zp, &seg.zo, n_targets, rows, tmp);
            let w = 1.0 / (n_seg * seg.len as f64);
            acc.iter_mut().zip(tmp.iter()).for_each(|(a, t)| *a += w * t);
        }
    };
    let identity: Vec<Vec<usize>> = segs.iter().map(|s| (0..s.len).collect()).collect();
    let mut acc = vec![0.0; n_targets];
    let mut tmp = vec![0.0; n_targets];
    statistic(&identity, &mut acc, &mut tmp);
    let r_observed: Vec<f64> = acc
        .iter()
        .zip(&constant)
        .map(|(&s, &c)| if c { f64::NAN } else { s })
        .collect();
    let threshold: Vec<f64> = r_observed.iter().map(|r| r - TIE_RTOL * r.abs()).collect();

    let n_chunks = n_perm.div_ceil(PERM_CHUNK);
    let chunk_counts: Vec<Vec<u64>> = (0..n_chunks)
        .into_par_iter()
        .map(|c| {
            let mut counts = vec![0u64; n_targets];
            let mut acc = vec![0.0; n_targets];
            let mut tmp = vec![0.0; n_targets];
            let mut orders = identity.clone();
            for k in c * PERM_CHUNK..((c + 1) * PERM_CHUNK).min(n_perm) {
                for (s, rows) in orders.iter_mut().enumerate() {
                    if n_blocks[s] >= 2 {
                        let stream = seed ^ (s as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
                        let order = block_order(n_blocks[s], stream, k);
                        rows_from_block_order(&order, segs[s].len, block_len, rows);
                    }
                }
                statistic(&orders, &mut acc, &mut tmp);
                for j in 0..n_targets {
                    if acc[j] >= threshold[j] {
                        counts[j] += 1;
                    }
                }
            }
            counts
        })
        .collect();
    let mut counts = vec![0u64; n_targets];
    for chunk in &chunk_counts {
        counts.iter_mut().zip(chunk).for_each(|(a, b)| *a += b);
    }
    let p_values = counts
        .iter()
        .zip(&r_observed)
        .map(|(&c, r)| {
            if r.is_nan() {
                f64::NAN
            } else {
                (1 + c) as f64 / (1 + n_perm) as f64
            }
        })
        .collect();
    Ok(PermutationTest {
        r_observed,
        p_values,
        n_perm,
        block_len,
        seed,
    })
}

// ------------------------------------------------------------------------------------------- FDR

pub use crate::stats::fdr::{fdr_bh, fdr_reject};

// ---------------------------------------------------------------------------------- noise ceilings

/// Leave-one-subject-out inter-subject correlations, see [`isc_ceiling`].
#[derive(Debug, Clone, PartialEq)]
pub struct IscCeiling {
    /// r between subject s and the mean of the other subjects, per target: (n_subjects, n_targets).
    pub loo_r: Array2<f64>,
    /// Mean of `loo_r` over subjects, per target (n_targets); NaN if any subject's r is NaN.
    pub mean_r: Vec<f64>,
    pub n_subjects: usize,
}

impl IscCeiling {
    /// Ceiling on a single subject's encoding-model r per target (n_targets):
    /// `ceiling_r_from_ev(explainable_variance_from_isc(mean_r, n_subjects))`.
    pub fn ceiling_r(&self) -> Vec<f64> {
        self.mean_r
            .iter()
            .map(|&r| ceiling_r_from_ev(explainable_variance_from_isc(r, self.n_subjects)))
            .collect()
    }
}

/// Leave-one-out inter-subject correlation (ISC), the usual noise ceiling when several subjects
/// heard the same stimulus and there are no repeats (Nastase, Gazzola, Hasson & Keysers 2019,
/// "Measuring shared responses across subjects using intersubject correlation", SCAN 14:667–685).
///
/// `subjects`: one (n_samples, n_targets) array per subject, all the same shape, rows aligned in
/// time to the shared stimulus and columns to the same targets (e.g. a common template). For
/// subject s and target j: loo_r[s, j] = pearson(Y_s[:, j], mean_{t ≠ s} Y_t[:, j]); `mean_r`
/// averages over subjects. NaN where a column (or the mean of the others) is constant.
///
/// Normalising: ISC measures the stimulus-driven part shared across subjects, the part an encoding
/// model of the stimulus can at best predict. Under the model Y_s = S + E_s with subject noise E_s
/// independent and of equal variance, a fraction a of one subject's variance is shared, the best
/// possible r for one subject is √a, and the leave-one-out ISC is √(a · a′) with a′ the
/// Spearman–Brown reliability of the mean of n−1 subjects. Dividing a model's r by `mean_r` itself
/// is common but overstates normalised accuracy for few subjects (`mean_r` ≤ √a, equal to a for
/// two subjects); [`IscCeiling::ceiling_r`] inverts the relation instead (see
/// [`explainable_variance_from_isc`]). Report `normalized_r(r, &ceiling.ceiling_r())` next to r.
///
/// Errors: fewer than 2 subjects; shapes differ; fewer than 2 samples.
pub fn isc_ceiling(subjects: &[ArrayView2<f64>]) -> Result<IscCeiling> {
    let n_subjects = subjects.len();
    if n_subjects < 2 {
        return Err(Error::Invalid(format!(
            "isc ceiling: expected at least 2 subjects, found {n_subjects}"
        )));
    }
    let dim = subjects[0].dim();
    if let Some((s, y)) = subjects.iter().enumerate().find(|(_, y)| y.dim() != dim) {
        return Err(Error::Invalid(format!(
            "isc ceiling: expected every subject of shape (n_samples, n_targets) = {dim:?} like subject 0, found {:?} \
             for subject {s}",
            y.dim()
        )));
    }
    let (n_samples, n_targets) = dim;
    if n_samples < 2 {
        return Err(Error::Invalid(format!(
            "isc ceiling: expected at least 2 samples per subject, found {n_samples}"
        )));
    }
    // per target: (n_subjects) r values
    let per_target: Vec<Vec<f64>> = (0..n_targets)
        .into_par_iter()
        .map(|j| {
            let cols: Vec<Vec<f64>> = subjects.iter().map(|y| y.column(j).to_vec()).collect();
            let mut sum = vec![0.0; n_samples];
            for c in &cols {
                sum.iter_mut().zip(c).for_each(|(a, v)| *a += v);
            }
            let k = (n_subjects - 1) as f64;
            cols.iter()
                .map(|c| {
                    let others: Vec<f64> = sum.iter().zip(c).map(|(s, v)| (s - v) / k).collect();
                    pearson(c, &others)
                })
                .collect()
        })
        .collect();
    let loo_r = Array2::from_shape_fn((n_subjects, n_targets), |(s, j)| per_target[j][s]);
    let mean_r = loo_r.mean_axis(Axis(0)).expect("n_subjects ≥ 2").to_vec();
    Ok(IscCeiling {
        loo_r,
        mean_r,
        n_subjects,
    })
}

/// Fraction a of one subject's variance that is shared across subjects, from a leave-one-out ISC
/// `loo_r` over `n_subjects` subjects: the between-subject analogue of [`explainable_variance`],
/// to be passed to [`ceiling_r_from_ev`].
///
/// Model: Y_s = S + E_s, noise independent across subjects with equal variance, a = var S / var Y_s.
/// The mean of the k = n − 1 other subjects has reliability a′ = k a / (1 + (k − 1) a) (the
/// Spearman–Brown prophecy formula; Spearman 1910, Brown 1910) and loo_r = √(a a′), so
/// k a² − loo_r² (k − 1) a − loo_r² = 0 and a = [loo_r² (k − 1) + √(loo_r⁴ (k − 1)² + 4 k loo_r²)] / (2k).
/// For two subjects a = loo_r (the pairwise correlation is the reliability); as n grows a → loo_r².
/// Returns 0 for loo_r ≤ 0 (no shared signal) and NaN for NaN or n_subjects < 2.
pub fn explainable_variance_from_isc(loo_r: f64, n_subjects: usize) -> f64 {
    if loo_r.is_nan() || n_subjects < 2 {
        return f64::NAN;
    }
    if loo_r <= 0.0 {
        return 0.0;
    }
    let r2 = loo_r * loo_r;
    let k = (n_subjects - 1) as f64;
    let b = r2 * (k - 1.0);
    (b + (b * b + 4.0 * k * r2).sqrt()) / (2.0 * k)
}

/// Explainable variance per target from repeated presentations of the same stimulus, exactly as
/// `voxelwise_tutorials.utils.explainable_variance(data, bias_correction, do_zscore=True)` (Gallant
/// lab).
///
/// `repeats`: (n_repeats, n_samples, n_targets), the responses to each repeat, rows aligned in
/// time. Each repeat's column is z-scored over time (ddof = 0, as `scipy.stats.zscore(data,
/// axis=1)`); then, with var over time at ddof = 1,
/// ev = var_t(mean_r z) / mean_r(var_t z), equivalently 1 − mean_r var_t(z − mean_r z) /
/// mean_r var_t(z), the fraction of a repeat's variance that is repeatable. With
/// `bias_correction`, ev ← ev − (1 − ev) / (n_repeats − 1), which makes it an unbiased estimate of
/// the signal fraction of a *single* repeat under signal + independent noise (it can be < 0).
/// NaN for a target that is constant within any repeat (as the reference, which divides by 0).
///
/// The ceiling [`ceiling_r_from_ev`] then applies to r computed against one repeat; for r against
/// the mean of R repeats use the Spearman–Brown value R·ev / (1 + (R − 1)·ev) instead of ev.
///
/// Errors: fewer than 2 repeats or fewer than 2 samples.
pub fn explainable_variance(repeats: ArrayView3<f64>, bias_correction: bool) -> Result<Vec<f64>> {
    let (n_repeats, n_samples, n_targets) = repeats.dim();
    if n_repeats < 2 {
        return Err(Error::Invalid(format!(
            "explainable variance: expected at least 2 repeats (axis 0 of (n_repeats, n_samples, n_targets)), found \
             {n_repeats}"
        )));
    }
    if n_samples < 2 {
        return Err(Error::Invalid(format!(
            "explainable variance: expected at least 2 samples (axis 1 of (n_repeats, n_samples, n_targets)), found \
             {n_samples}"
        )));
    }
    let n = n_samples as f64;
    let var_ddof1 = |x: &[f64]| {
        let mean = x.iter().sum::<f64>() / n;
        x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)
    };
    Ok((0..n_targets)
        .into_par_iter()
        .map(|j| {
            let mut mean_over_repeats = vec![0.0; n_samples];
            let mut sum_var = 0.0;
            for r in 0..n_repeats {
                let mut z = repeats.slice(ndarray::s![r, .., j]).to_vec();
                let mean = z.iter().sum::<f64>() / n;
                let sd = (z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
                z.iter_mut().for_each(|v| *v = (*v - mean) / sd); // sd = 0 → NaN, as the reference
                sum_var += var_ddof1(&z);
                mean_over_repeats.iter_mut().zip(&z).for_each(|(a, v)| *a += v);
            }
            mean_over_repeats.iter_mut().for_each(|a| *a /= n_repeats as f64);
            let mean_var = sum_var / n_repeats as f64;
            let ev = var_ddof1(&mean_over_repeats) / mean_var;
            if bias_correction {
                ev - (1.0 - ev) / (n_repeats - 1) as f64
            } else {
                ev
            }
        })
        .collect())
}

/// Ceiling on Pearson r from an explainable variance (or shared-variance fraction): √max(ev, 0).
/// A perfect model of the repeatable signal S correlates √(var S / var Y) with the data. NaN stays
/// NaN.
pub fn ceiling_r_from_ev(ev: f64) -> f64 {
    if ev.is_nan() {
        f64::NAN
    } else {
        ev.max(0.0).sqrt()
    }
}

/// Noise-normalised accuracy per target: r / ceiling_r; NaN where the ceiling is ≤ 0 or NaN (or r
/// is NaN). Values above 1 mean the ceiling was underestimated for that target (noisy estimate).
///
/// # Panics
/// If the lengths differ.
pub fn normalized_r(r: &[f64], ceiling_r: &[f64]) -> Vec<f64> {
    assert_eq!(
        r.len(),
        ceiling_r.len(),
        "normalized_r: expected r and ceiling_r of the same length (n_targets), found {} and {}",
        r.len(),
        ceiling_r.len()
    );
    r.iter()
        .zip(ceiling_r)
        .map(|(&r, &c)| if c > 0.0 { r / c } else { f64::NAN })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{array, Array3};

    fn assert_slice_eq(got: &[f64], want: &[f64], eps: f64) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            if w.is_nan() {
                assert!(g.is_nan(), "index {i}: expected NaN, found {g}");
            } else {
                assert!((g - w).abs() <= eps, "index {i}: expected {w}, found {g}");
            }
        }
    }

    #[test]
    fn the_fold_mean_test_tests_the_mean_of_within_fold_r_and_with_one_fold_is_the_plain_test() {
        let mut rng = SplitMix64::new(4);
        let n = 120;
        let obs = Array2::from_shape_fn((n, 3), |_| rng.normal());
        // target 0: prediction carries the signal; 1: pure noise; 2: signal in fold 0 only
        let mut pred = Array2::from_shape_fn((n, 3), |_| rng.normal());
        for i in 0..n {
            pred[[i, 0]] += 0.8 * obs[[i, 0]];
            if i < 60 {
                pred[[i, 2]] += 0.8 * obs[[i, 2]];
            }
        }
        let segments = vec![(0..60).collect::<Vec<_>>(), (60..n).collect::<Vec<_>>()];
        let t = segment_mean_permutation_test(pred.view(), obs.view(), &segments, 10, 999, 3).unwrap();
        for j in 0..3 {
            let want: f64 = segments
                .iter()
                .map(|rows| {
                    let p: Vec<f64> = rows.iter().map(|&i| pred[[i, j]]).collect();
                    let o: Vec<f64> = rows.iter().map(|&i| obs[[i, j]]).collect();
                    pearson(&p, &o)
                })
                .sum::<f64>()
                / 2.0;
            assert_abs_diff_eq!(t.r_observed[j], want, epsilon = 1e-12);
        }
        assert!(t.p_values[0] <= 0.002, "signal: p = {}", t.p_values[0]);
        assert!(t.p_values[1] > 0.05, "noise: p = {}", t.p_values[1]);
        // identical for a different chunking of the work (threads) and seeded
        let again = segment_mean_permutation_test(pred.view(), obs.view(), &segments, 10, 999, 3).unwrap();
        assert_eq!(t.p_values, again.p_values);
        // one segment in order: the same null draws and p-values as the plain block test
        let all = vec![(0..n).collect::<Vec<_>>()];
        let one = segment_mean_permutation_test(pred.view(), obs.view(), &all, 10, 500, 9).unwrap();
        let plain = block_permutation_test(pred.view(), obs.view(), 10, 500, 9).unwrap();
        assert_slice_eq(&one.r_observed, &plain.r_observed, 1e-12);
        assert_eq!(one.p_values, plain.p_values);
        // bad segments are errors naming the row
        let bad = vec![vec![0, 1, 2], vec![2, 3, 4]];
        let e = segment_mean_permutation_test(pred.view(), obs.view(), &bad, 2, 10, 0).unwrap_err();
        assert!(e.to_string().contains("row 2"), "{e}");
    }

    #[test]
    fn bh_q_values_on_a_hand_worked_case_take_the_running_minimum_from_the_top() {
        // sorted: 0.011·5/1 = 0.055, 0.012·5/2 = 0.03, 0.04·5/3 = 0.0667, 0.045·5/4 = 0.05625, 0.2·5/5 = 0.2
        // running minimum from the largest: 0.2, 0.05625, 0.05625, 0.03, 0.03
        let p = [0.04, 0.011, 0.045, 0.2, 0.012];
        assert_slice_eq(&fdr_bh(&p), &[0.05625, 0.03, 0.05625, 0.2, 0.03], 1e-15);
        // BH step-up at 0.05: the largest k with p_(k) ≤ 0.05 k / 5 is k = 2
        assert_eq!(fdr_reject(&p, 0.05), vec![false, true, false, false, true]);
    }

    #[test]
    fn bh_gives_ties_equal_q_and_clips_at_one() {
        assert_slice_eq(&fdr_bh(&[0.01, 0.02, 0.03, 0.04, 0.05]), &[0.05; 5], 1e-15);
        assert_slice_eq(&fdr_bh(&[0.03, 0.03, 0.9]), &[0.045, 0.045, 0.9], 1e-15);
        assert_slice_eq(&fdr_bh(&[0.9, 0.95]), &[0.95, 0.95], 1e-15);
        assert_slice_eq(&fdr_bh(&[0.7, 1.0, 1.0]), &[1.0, 1.0, 1.0], 0.0);
        assert!(fdr_bh(&[]).is_empty());
    }

    #[test]
    fn bh_leaves_nan_out_of_m_and_keeps_it_nan() {
        // m = 2: 0.01·2/1 = 0.02, 0.04·2/2 = 0.04
        assert_slice_eq(&fdr_bh(&[0.01, f64::NAN, 0.04]), &[0.02, f64::NAN, 0.04], 1e-15);
        assert_eq!(fdr_reject(&[0.01, f64::NAN, 0.04], 0.05), vec![true, false, true]);
    }

    #[test]
    fn r2_is_one_minus_sse_over_sst_and_nan_for_a_constant_target() {
        let obs = array![[1.0, 1.0, 3.0], [2.0, 2.0, 3.0], [3.0, 3.0, 3.0], [4.0, 4.0, 3.0]];
        // column 0: SSE = 1, SST = 5 → 0.8; column 1: predicting the mean → 0; column 2: SST = 0
        let pred = array![[1.0, 2.5, 1.0], [2.0, 2.5, 2.0], [3.0, 2.5, 3.0], [5.0, 2.5, 4.0]];
        assert_slice_eq(&r2_per_target(pred.view(), obs.view()), &[0.8, 0.0, f64::NAN], 1e-15);
        // r of column 0: Σ dx dy = 6.5, Σ dx² = 8.75 (pred), Σ dy² = 5 (obs)
        let r = pearson_per_target(pred.view(), obs.view());
        assert_abs_diff_eq!(r[0], 6.5 / (5.0f64 * 8.75).sqrt(), epsilon = 1e-15);
        assert!(r[1].is_nan() && r[2].is_nan());
    }

    #[test]
    fn the_last_partial_block_moves_as_one_block() {
        // 7 rows in blocks of 3: [0 1 2] [3 4 5] [6]
        let mut rows = vec![0; 7];
        rows_from_block_order(&[2, 0, 1], 7, 3, &mut rows);
        assert_eq!(rows, vec![6, 0, 1, 2, 3, 4, 5]);
        rows_from_block_order(&[1, 2, 0], 7, 3, &mut rows);
        assert_eq!(rows, vec![3, 4, 5, 6, 0, 1, 2]);
    }

    #[test]
    fn block_orders_are_uniform_over_all_permutations() {
        let mut counts = std::collections::BTreeMap::new();
        for k in 0..60_000 {
            *counts.entry(block_order(3, 11, k)).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 6);
        // 10,000 expected each, sd ≈ 91
        assert!(counts.values().all(|&c| (9_600..10_400).contains(&c)), "{counts:?}");
    }

    /// 3 blocks of 2 rows: 6 block orders, enumerated by hand. Returns (pred, obs) as one target.
    fn three_block_case() -> (Array2<f64>, Array2<f64>) {
        let obs = array![[1.0], [2.0], [3.0], [4.0], [5.0], [7.0]];
        let pred = array![[0.0], [1.0], [5.0], [6.0], [3.0], [4.0]]; // k = 2: the identity and [0, 2, 1]
        (pred, obs)
    }

    /// Reference: p from the same draws, each permuted prediction rebuilt row by row and correlated
    /// with [`pearson`].
    fn naive_p(pred: &[f64], obs: &[f64], block_len: usize, n_perm: usize, seed: u64) -> f64 {
        let n = pred.len();
        let r_obs = pearson(pred, obs);
        let n_blocks = n.div_ceil(block_len);
        let mut count = 0;
        for k in 0..n_perm {
            let permuted: Vec<f64> = block_order(n_blocks, seed, k)
                .iter()
                .flat_map(|&b| pred[b * block_len..((b + 1) * block_len).min(n)].to_vec())
                .collect();
            if pearson(&permuted, obs) >= r_obs - 1e-12 {
                count += 1;
            }
        }
        (1 + count) as f64 / (1 + n_perm) as f64
    }

    #[test]
    fn block_permutation_p_equals_the_reference_count_over_the_same_draws() {
        let (pred, obs) = three_block_case();
        for (n_perm, seed) in [(6, 0), (50, 3), (999, 42)] {
            let t = block_permutation_test(pred.view(), obs.view(), 2, n_perm, seed).unwrap();
            let want = naive_p(
                pred.column(0).as_slice().unwrap(),
                obs.column(0).as_slice().unwrap(),
                2,
                n_perm,
                seed,
            );
            assert_eq!(t.p_values[0], want, "n_perm {n_perm}, seed {seed}");
            assert_abs_diff_eq!(
                t.r_observed[0],
                pearson_per_target(pred.view(), obs.view())[0],
                epsilon = 1e-14
            );
        }
    }

    #[test]
    fn block_permutation_p_converges_to_the_exact_enumerated_p() {
        let (pred, obs) = three_block_case();
        let (p, o) = (pred.column(0).to_vec(), obs.column(0).to_vec());
        // enumerate the 3! block orders: exact permutation p = #{r_σ ≥ r_obs} / 6
        let r_obs = pearson(&p, &o);
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let n_ge = orders
            .iter()
            .filter(|ord| {
                let permuted: Vec<f64> = ord.iter().flat_map(|&b| p[2 * b..2 * b + 2].to_vec()).collect();
                pearson(&permuted, &o) >= r_obs - 1e-12
            })
            .count();
        assert_eq!(n_ge, 2, "the identity and [0, 2, 1]");
        let exact = n_ge as f64 / 6.0;
        let n_perm = 60_000;
        let t = block_permutation_test(pred.view(), obs.view(), 2, n_perm, 5).unwrap();
        let sd = (exact * (1.0 - exact) / n_perm as f64).sqrt();
        assert!(
            (t.p_values[0] - exact).abs() < 4.0 * sd,
            "p {} vs exact {exact}",
            t.p_values[0]
        );
    }

    #[test]
    fn a_prediction_that_every_block_order_leaves_unchanged_has_p_one() {
        // every block holds the same values, so every permutation reproduces r_obs
        let pred = array![[1.0], [3.0], [1.0], [3.0], [1.0], [3.0]];
        let obs = array![[0.0], [2.0], [1.0], [2.5], [0.5], [3.0]];
        let t = block_permutation_test(pred.view(), obs.view(), 2, 100, 1).unwrap();
        assert_eq!(t.p_values, vec![1.0]);
    }

    #[test]
    fn constant_targets_get_nan_r_and_p() {
        let pred = array![[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0]];
        let obs = array![[1.0, 0.0], [2.0, 1.0], [4.0, 2.0], [3.0, 0.5]];
        let t = block_permutation_test(pred.view(), obs.view(), 1, 10, 0).unwrap();
        assert!(t.r_observed[1].is_nan() && t.p_values[1].is_nan());
        assert!(t.p_values[0] >= 1.0 / 11.0 && t.p_values[0] <= 1.0);
    }

    #[test]
    fn block_permutation_rejects_bad_input_with_messages_naming_the_problem() {
        let a = Array2::<f64>::zeros((10, 2));
        let msg = |r: Result<PermutationTest>| r.unwrap_err().to_string();
        assert!(msg(block_permutation_test(a.view(), Array2::zeros((9, 2)).view(), 2, 10, 0)).contains("(9, 2)"));
        assert!(msg(block_permutation_test(a.view(), a.view(), 0, 10, 0)).contains("block_len"));
        assert!(msg(block_permutation_test(a.view(), a.view(), 10, 10, 0)).contains("at least 2 blocks"));
        assert!(msg(block_permutation_test(a.view(), a.view(), 2, 0, 0)).contains("n_perm"));
        let mut b = a.clone();
        b[[3, 1]] = f64::NAN;
        assert!(msg(block_permutation_test(b.view(), a.view(), 2, 10, 0)).contains("row 3, target 1"));
    }

    #[test]
    fn identical_repeats_have_explainable_variance_one_and_opposite_ones_minus_one() {
        let x = [1.0, 3.0, 2.0, 5.0];
        let same = Array3::from_shape_fn((3, 4, 1), |(_, i, _)| x[i]);
        assert_slice_eq(&explainable_variance(same.view(), true).unwrap(), &[1.0], 1e-14);
        // x and −x: the mean over repeats is 0, ev = 0; corrected 0 − 1/(2 − 1) = −1
        let opposite = Array3::from_shape_fn((2, 4, 1), |(r, i, _)| if r == 0 { x[i] } else { -x[i] });
        assert_slice_eq(&explainable_variance(opposite.view(), false).unwrap(), &[0.0], 1e-15);
        assert_slice_eq(&explainable_variance(opposite.view(), true).unwrap(), &[-1.0], 1e-15);
        let constant = Array3::from_elem((2, 4, 1), 2.0);
        assert!(explainable_variance(constant.view(), true).unwrap()[0].is_nan());
        assert!(explainable_variance(Array3::zeros((1, 4, 1)).view(), true).is_err());
        assert!(explainable_variance(Array3::zeros((2, 1, 1)).view(), true).is_err());
    }

    #[test]
    fn explainable_variance_equals_one_minus_the_residual_variance_fraction() {
        let mut rng = SplitMix64::new(9);
        let (n_rep, n, t) = (4, 30, 5);
        let signal = Array2::from_shape_simple_fn((n, t), || rng.normal());
        let data = Array3::from_shape_fn((n_rep, n, t), |(_, i, j)| signal[[i, j]] + 1.5 * rng.normal());
        let ev = explainable_variance(data.view(), false).unwrap();
        for (j, &ev_j) in ev.iter().enumerate() {
            let z: Vec<Vec<f64>> = (0..n_rep)
                .map(|r| {
                    let mut c = data.slice(ndarray::s![r, .., j..j + 1]).to_owned();
                    zscore_columns(c.view_mut());
                    c.column(0).to_vec()
                })
                .collect();
            let mean: Vec<f64> = (0..n)
                .map(|i| z.iter().map(|c| c[i]).sum::<f64>() / n_rep as f64)
                .collect();
            let var = |x: &[f64]| {
                let m = x.iter().sum::<f64>() / n as f64;
                x.iter().map(|v| (v - m).powi(2)).sum::<f64>()
            };
            let resid: f64 = z
                .iter()
                .map(|c| var(&c.iter().zip(&mean).map(|(a, b)| a - b).collect::<Vec<_>>()))
                .sum();
            let total: f64 = z.iter().map(|c| var(c)).sum();
            assert_abs_diff_eq!(ev_j, 1.0 - resid / total, epsilon = 1e-12);
        }
    }

    #[test]
    fn isc_of_identical_subjects_is_one_and_of_a_sign_flipped_one_is_minus_one() {
        let a = array![[1.0, 0.0], [2.0, 1.0], [4.0, 0.0], [3.0, 2.0]];
        let isc = isc_ceiling(&[a.view(), a.view(), a.view()]).unwrap();
        assert!(isc.loo_r.iter().all(|&r| (r - 1.0).abs() < 1e-14));
        let neg = a.mapv(|v| -v);
        let isc = isc_ceiling(&[a.view(), neg.view()]).unwrap();
        assert!(isc.loo_r.iter().all(|&r| (r + 1.0).abs() < 1e-14));
        assert_slice_eq(&isc.mean_r, &[-1.0, -1.0], 1e-14);
        assert_eq!(isc.ceiling_r(), vec![0.0, 0.0]);
        assert!(isc_ceiling(&[a.view()]).is_err());
        let b = Array2::<f64>::zeros((4, 3));
        assert!(isc_ceiling(&[a.view(), b.view()])
            .unwrap_err()
            .to_string()
            .contains("subject 1"));
    }

    #[test]
    fn explainable_variance_from_isc_inverts_the_spearman_brown_relation() {
        for &a in &[0.0, 0.05, 0.3, 0.7, 1.0] {
            for &n in &[2usize, 3, 10, 100] {
                let k = (n - 1) as f64;
                let a_others = k * a / (1.0 + (k - 1.0) * a);
                let loo_r = (a * a_others).sqrt();
                assert_abs_diff_eq!(explainable_variance_from_isc(loo_r, n), a, epsilon = 1e-12);
            }
        }
        // two subjects: the pairwise correlation is the reliability
        assert_eq!(explainable_variance_from_isc(0.36, 2), 0.36);
        assert_eq!(explainable_variance_from_isc(-0.2, 5), 0.0);
        assert!(explainable_variance_from_isc(f64::NAN, 5).is_nan());
        assert!(explainable_variance_from_isc(0.5, 1).is_nan());
    }

    #[test]
    fn ceilings_clip_negative_ev_and_normalisation_is_nan_without_a_ceiling() {
        assert_eq!(ceiling_r_from_ev(0.25), 0.5);
        assert_eq!(ceiling_r_from_ev(-0.1), 0.0);
        assert!(ceiling_r_from_ev(f64::NAN).is_nan());
        let got = normalized_r(&[0.2, 0.2, 0.2, f64::NAN], &[0.5, 0.0, f64::NAN, 0.5]);
        assert_eq!(got[0], 0.4);
        assert!(got[1].is_nan() && got[2].is_nan() && got[3].is_nan());
    }
}
