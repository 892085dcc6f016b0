//! Cortical topography of semantic subcategories (METHOD.md §7): does the observed
//! subcategory × region matrix follow the a priori prediction?
//!
//! Input: matrices with rows = subcategories and columns = regions (`Array2<f64>`, (n_rows,
//! n_cols)): the observed one (e.g. mean encoding r of each subcategory's features in each region,
//! unitless), the predicted one (0/1, fixed before looking), optionally per-cell p-values of the
//! same shape, and optionally per-subject observed matrices (n_subjects, n_rows, n_cols).
//!
//! Output: one struct per statistic carrying the value with its counts, degrees of freedom or
//! number of permutations / resamples, the unit of analysis (cells or subjects), the tie rule and
//! the alternative, so every number can be printed with what produced it; [`TopographyReport`]
//! bundles them and flattens them to rows ([`StatisticRow`]) for tables.
//!
//! * [`spearman`]: Spearman ρ with average ranks for ties (as `scipy.stats.spearmanr`).
//! * [`rank_convergence_test`] / [`mantel_test`]: ρ or Pearson r between the flattened predicted
//!   and observed matrices, with a permutation null on the observed matrix's row and column
//!   labels; [`cell_bootstrap_ci`] and [`subject_bootstrap_ci`] give percentile CIs of ρ.
//! * [`rm_interaction`]: repeated-measures subcategory × region interaction F, parametric
//!   ([`f_sf`]) and permutation p.
//! * [`cell_significance`] + [`overlap_test`]: BH-FDR significant cells
//!   ([`crate::stats::fdr_bh`]) and their overlap with the predicted cells:
//!   hypergeometric upper tail ([`hypergeom_upper_tail`]) and Fisher's exact test
//!   ([`fisher_exact`]).
//!
//! Determinism: every random draw comes from [`SplitMix64`] streams derived from one seed, in a
//! fixed order; identical inputs and seed give identical output.
//!
//! May import: `error`, `stats`, `store` ([`matrix`]: TSV matrices and the statistics table).

pub mod matrix;

use ndarray::{Array2, ArrayView2, ArrayView3, Axis};

use crate::stats::fdr_bh;
use crate::stats::ln_gamma;
use crate::stats::{pearson, percentile_interval, shuffle, BootstrapCi, SplitMix64};
use crate::{Error, Result};

/// Tie rule of every rank statistic here.
pub const TIE_RULE_AVERAGE: &str = "average ranks (scipy.stats.rankdata method='average')";
/// How permutation statistics equal to the observed one are counted.
pub const PERMUTATION_TIES: &str = "permuted ≥ observed (within 100ε relative) counts as exceedance";
/// One-sided alternative of the convergence, interaction and overlap tests.
pub const GREATER: &str = "greater";
pub const TWO_SIDED: &str = "two-sided";
pub const UNIT_CELLS: &str = "cells";
pub const UNIT_SUBJECTS: &str = "subjects";

/// Relative tolerance for "permuted ≥ observed", as `scipy.stats.permutation_test` (100 ε).
const TIE_RTOL: f64 = 100.0 * f64::EPSILON;
/// Standard normal 0.975 quantile (`scipy.stats.norm.ppf(0.975)`), for the 95% Woolf interval.
const Z_975: f64 = 1.959_963_984_540_054;

// ------------------------------------------------------------------------------------- spearman

/// Spearman's rank correlation with the settings that produced it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spearman {
    pub rho: f64,
    /// Pairs.
    pub n: usize,
    pub tie_rule: &'static str,
}

/// Ranks 1..=n of `x`; tied values get the mean of the ranks they span (as
/// `scipy.stats.rankdata(x, method='average')`).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && x[order[end]] == x[order[start]] {
            end += 1;
        }
        // positions start..end (0-based) hold ranks start+1..=end; their mean:
        let r = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = r;
        }
        start = end;
    }
    ranks
}

/// Spearman ρ of paired samples: Pearson r of their average ranks ([`average_ranks`]), which is
/// `scipy.stats.spearmanr(x, y).statistic`. NaN when either side is constant, n < 2, or a value is
/// not finite.
///
/// # Panics
/// If the lengths differ.
pub fn spearman(x: &[f64], y: &[f64]) -> Spearman {
    assert_eq!(x.len(), y.len(), "spearman: lengths differ");
    let rho = if x.iter().chain(y).all(|v| v.is_finite()) {
        pearson(&average_ranks(x), &average_ranks(y))
    } else {
        f64::NAN
    };
    Spearman {
        rho,
        n: x.len(),
        tie_rule: TIE_RULE_AVERAGE,
    }
}

// ---------------------------------------------------------------------- permutation correlations

/// Which labels of the observed matrix a permutation shuffles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermutationScheme {
    /// Rows (subcategories) and columns (regions) shuffled by two independent permutations.
    RowsAndColumns,
    /// One permutation applied to rows and columns alike (square matrices whose rows and columns
    /// are the same objects): the classic Mantel test.
    SameOnBothAxes,
}

impl PermutationScheme {
    pub fn describe(&self) -> &'static str {
        match self {
            PermutationScheme::RowsAndColumns => "row and column labels of the observed matrix permuted independently",
            PermutationScheme::SameOnBothAxes => {
                "one permutation of the labels applied to rows and columns (classic Mantel)"
            }
        }
    }
}

/// A correlation between the flattened predicted and observed matrices with its permutation p.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PermutationCorrelation {
    /// "spearman_rho", "pearson_r", "mantel_r" (same labels on both axes),
    /// "spearman_rho_double_centred" or "pearson_r_double_centred".
    pub statistic: &'static str,
    pub value: f64,
    /// Cells correlated (n_rows · n_cols).
    pub n_cells: usize,
    /// (1 + #{perm ≥ observed}) / (1 + n_perm), one-sided.
    pub p_value: f64,
    pub n_perm: usize,
    /// #{perm ≥ observed}.
    pub n_as_extreme: usize,
    pub scheme: PermutationScheme,
    pub alternative: &'static str,
    /// Rank tie rule (Spearman) or "none (Pearson r on the values)" (Mantel).
    pub tie_rule: &'static str,
    pub seed: u64,
}

/// Counts permutations of `obs`'s labels whose statistic `stat(flattened permuted obs)` reaches
/// `observed`. Permutation p draws its row (then column) order with Fisher–Yates from one
/// SplitMix64 stream seeded with `seed`.
fn count_exceedances(
    obs: ArrayView2<f64>,
    observed: f64,
    n_perm: usize,
    seed: u64,
    scheme: PermutationScheme,
    stat: impl Fn(&[f64]) -> f64,
) -> usize {
    let (r, c) = obs.dim();
    let mut rng = SplitMix64::new(seed);
    let mut rows: Vec<usize> = (0..r).collect();
    let mut cols: Vec<usize> = (0..c).collect();
    let mut flat = vec![0.0; r * c];
    let threshold = observed - TIE_RTOL * observed.abs();
    let mut count = 0;
    for _ in 0..n_perm {
        shuffle(&mut rows, &mut rng);
        match scheme {
            PermutationScheme::RowsAndColumns => shuffle(&mut cols, &mut rng),
            PermutationScheme::SameOnBothAxes => cols.copy_from_slice(&rows),
        }
        for (i, &pi) in rows.iter().enumerate() {
            for (j, &pj) in cols.iter().enumerate() {
                flat[i * c + j] = obs[[pi, pj]];
            }
        }
        if stat(&flat) >= threshold {
            count += 1;
        }
    }
    count
}

fn check_pair(what: &str, predicted: ArrayView2<f64>, observed: ArrayView2<f64>) -> Result<()> {
    if predicted.dim() != observed.dim() {
        return Err(Error::Invalid(format!(
            "{what}: expected predicted and observed matrices of the same shape (subcategories × regions), found {:?} and {:?}",
            predicted.dim(),
            observed.dim()
        )));
    }
    let (r, c) = observed.dim();
    if r < 2 || c < 2 {
        return Err(Error::Invalid(format!(
            "{what}: expected at least 2 rows (subcategories) and 2 columns (regions), found {r} × {c}"
        )));
    }
    for ((i, j), v) in observed.indexed_iter() {
        if !v.is_finite() {
            return Err(Error::Invalid(format!(
                "{what}: observed matrix, row {i}, column {j}: expected a finite number, found {v}"
            )));
        }
    }
    for ((i, j), v) in predicted.indexed_iter() {
        if *v != 0.0 && *v != 1.0 {
            return Err(Error::Invalid(format!(
                "{what}: predicted matrix, row {i}, column {j}: expected 0 or 1, found {v}"
            )));
        }
    }
    Ok(())
}

fn flat(m: ArrayView2<f64>) -> Vec<f64> {
    m.iter().copied().collect()
}

/// Rank-correlation convergence test: Spearman ρ between the flattened (row-major) predicted and
/// observed matrices; null distribution by permuting the observed matrix's row labels and column
/// labels independently (`n_perm` draws, seeded), which keeps each row's and column's values
/// together; p = (1 + #{ρ_perm ≥ ρ}) / (1 + n_perm), one-sided ("greater"). Ranks are computed once
/// (a label permutation permutes the ranks too).
///
/// Errors: shapes differ or are smaller than 2 × 2, a non-finite observed value, a predicted
/// value other than 0/1.
pub fn rank_convergence_test(
    predicted: ArrayView2<f64>,
    observed: ArrayView2<f64>,
    n_perm: usize,
    seed: u64,
) -> Result<PermutationCorrelation> {
    check_pair("rank convergence test", predicted, observed)?;
    let pred_ranks = average_ranks(&flat(predicted));
    let obs_ranks =
        Array2::from_shape_vec(observed.dim(), average_ranks(&flat(observed))).expect("ranks have the matrix's size");
    let rho = pearson(&pred_ranks, obs_ranks.as_slice().expect("standard layout"));
    let scheme = PermutationScheme::RowsAndColumns;
    let n_as_extreme = count_exceedances(obs_ranks.view(), rho, n_perm, seed, scheme, |y| pearson(&pred_ranks, y));
    Ok(PermutationCorrelation {
        statistic: "spearman_rho",
        value: rho,
        n_cells: pred_ranks.len(),
        p_value: (1 + n_as_extreme) as f64 / (1 + n_perm) as f64,
        n_perm,
        n_as_extreme,
        scheme,
        alternative: GREATER,
        tie_rule: TIE_RULE_AVERAGE,
        seed,
    })
}

/// Pearson r between the flattened predicted and observed matrices, null by label permutation of
/// the observed matrix as [`rank_convergence_test`]: rows and columns permuted independently
/// (statistic `pearson_r`: what the paper calls its "Mantel r"; a subcategory × region matrix is
/// not a distance matrix, so this is not a Mantel test in the strict sense), or — when
/// `same_labels` is set and the matrix is square, i.e. rows and columns are the same objects —
/// one permutation applied to both axes (`mantel_r`: the classic Mantel test, which keeps the
/// diagonal on the diagonal). One-sided ("greater").
///
/// Errors: as [`rank_convergence_test`], and `same_labels` on a non-square matrix.
pub fn mantel_test(
    predicted: ArrayView2<f64>,
    observed: ArrayView2<f64>,
    n_perm: usize,
    seed: u64,
    same_labels: bool,
) -> Result<PermutationCorrelation> {
    check_pair("Mantel test", predicted, observed)?;
    if same_labels && observed.nrows() != observed.ncols() {
        return Err(Error::Invalid(format!(
            "Mantel test: same_labels needs a square matrix (rows and columns the same objects), found {} × {}",
            observed.nrows(),
            observed.ncols()
        )));
    }
    let x = flat(predicted);
    let r = pearson(&x, &flat(observed));
    let scheme = if same_labels {
        PermutationScheme::SameOnBothAxes
    } else {
        PermutationScheme::RowsAndColumns
    };
    let n_as_extreme = count_exceedances(observed, r, n_perm, seed, scheme, |y| pearson(&x, y));
    Ok(PermutationCorrelation {
        statistic: if same_labels { "mantel_r" } else { "pearson_r" },
        value: r,
        n_cells: x.len(),
        p_value: (1 + n_as_extreme) as f64 / (1 + n_perm) as f64,
        n_perm,
        n_as_extreme,
        scheme,
        alternative: GREATER,
        tie_rule: "none (Pearson r of the values)",
        seed,
    })
}

/// The matrix with its row and column effects removed: m_ij − m̄_i· − m̄_·j + m̄_·· (every row and
/// column of the result sums to 0). What is left is the subcategory × region *interaction*: a
/// subcategory that is high in every region, or a region high for every subcategory, no longer
/// counts as agreement with a prediction that marks some of its cells.
pub fn double_centred(m: ArrayView2<f64>) -> Array2<f64> {
    let mut out = m.to_owned();
    double_centre(&mut out.view_mut());
    out
}

/// Spearman ρ and Pearson r of the *double-centred* observed matrix ([`double_centred`]) against
/// the prediction (for Pearson r the prediction is double-centred too; a Spearman ρ of a 0/1
/// prediction does not change), each with the row-and-column label-permutation null of
/// [`rank_convergence_test`]: a row or column permutation commutes with double centring, so the
/// permuted centred matrix is the centred permuted matrix. One-sided ("greater").
pub fn interaction_convergence_tests(
    predicted: ArrayView2<f64>,
    observed: ArrayView2<f64>,
    n_perm: usize,
    seeds: (u64, u64),
) -> Result<(PermutationCorrelation, PermutationCorrelation)> {
    check_pair("double-centred convergence test", predicted, observed)?;
    let oc = double_centred(observed);
    let mut rho = rank_convergence_test(predicted, oc.view(), n_perm, seeds.0)?;
    rho.statistic = "spearman_rho_double_centred";
    let x = flat(double_centred(predicted).view());
    let r = pearson(&x, &flat(oc.view()));
    let scheme = PermutationScheme::RowsAndColumns;
    let n_as_extreme = count_exceedances(oc.view(), r, n_perm, seeds.1, scheme, |y| pearson(&x, y));
    let pr = PermutationCorrelation {
        statistic: "pearson_r_double_centred",
        value: r,
        n_cells: x.len(),
        p_value: (1 + n_as_extreme) as f64 / (1 + n_perm) as f64,
        n_perm,
        n_as_extreme,
        scheme,
        alternative: GREATER,
        tie_rule: "none (Pearson r of the values)",
        seed: seeds.1,
    };
    Ok((rho, pr))
}

/// A bootstrap CI of Spearman ρ with its unit of resampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrelationCi {
    /// `estimate` = ρ on the full data; `n_units` = resampled units.
    pub ci: BootstrapCi,
    /// "cells" or "subjects".
    pub unit: &'static str,
    /// Resamples whose ρ was undefined (a constant side), left out of the interval.
    pub undefined: usize,
    pub seed: u64,
}

/// Percentile bootstrap CI of Spearman ρ resampling *cells* (pairs of predicted and observed
/// values) with replacement: `n_boot` resamples of n_cells cells from one SplitMix64 stream seeded
/// with `seed`, ρ re-ranked on each (ties from duplicated cells get average ranks). Cells are not
/// independent (they share rows and columns), so this interval is descriptive; prefer
/// [`subject_bootstrap_ci`] when subjects are available. Errors as [`rank_convergence_test`].
pub fn cell_bootstrap_ci(
    predicted: ArrayView2<f64>,
    observed: ArrayView2<f64>,
    n_boot: usize,
    level: f64,
    seed: u64,
) -> Result<CorrelationCi> {
    check_pair("cell bootstrap", predicted, observed)?;
    let (x, y) = (flat(predicted), flat(observed));
    let n = x.len();
    let mut rng = SplitMix64::new(seed);
    let (mut bx, mut by) = (vec![0.0; n], vec![0.0; n]);
    let reps: Vec<f64> = (0..n_boot)
        .map(|_| {
            for k in 0..n {
                let i = rng.below(n as u64) as usize;
                bx[k] = x[i];
                by[k] = y[i];
            }
            spearman(&bx, &by).rho
        })
        .collect();
    Ok(correlation_ci(
        spearman(&x, &y).rho,
        reps,
        level,
        n_boot,
        n,
        UNIT_CELLS,
        seed,
    ))
}

/// Percentile bootstrap CI of Spearman ρ resampling *subjects*: `subjects` (n_subjects, n_rows,
/// n_cols) holds one observed matrix per subject; each of `n_boot` resamples draws n_subjects
/// subjects with replacement (one SplitMix64 stream seeded with `seed`), averages their matrices
/// cell by cell and correlates the mean with the prediction. `estimate` is ρ of the mean over all
/// subjects. Errors: as [`rank_convergence_test`] (on the subject mean), or fewer than 2 subjects.
pub fn subject_bootstrap_ci(
    predicted: ArrayView2<f64>,
    subjects: ArrayView3<f64>,
    n_boot: usize,
    level: f64,
    seed: u64,
) -> Result<CorrelationCi> {
    let s = subjects.len_of(Axis(0));
    if s < 2 {
        return Err(Error::Invalid(format!(
            "subject bootstrap: expected at least 2 subjects, found {s}"
        )));
    }
    let mean = subjects.mean_axis(Axis(0)).expect("at least one subject");
    check_pair("subject bootstrap", predicted, mean.view())?;
    let x = flat(predicted);
    let mut rng = SplitMix64::new(seed);
    let mut acc = Array2::<f64>::zeros(mean.dim());
    let reps: Vec<f64> = (0..n_boot)
        .map(|_| {
            acc.fill(0.0);
            for _ in 0..s {
                acc += &subjects.index_axis(Axis(0), rng.below(s as u64) as usize);
            }
            acc /= s as f64;
            spearman(&x, &flat(acc.view())).rho
        })
        .collect();
    Ok(correlation_ci(
        spearman(&x, &flat(mean.view())).rho,
        reps,
        level,
        n_boot,
        s,
        UNIT_SUBJECTS,
        seed,
    ))
}

fn correlation_ci(
    estimate: f64,
    mut reps: Vec<f64>,
    level: f64,
    n_boot: usize,
    n_units: usize,
    unit: &'static str,
    seed: u64,
) -> CorrelationCi {
    let before = reps.len();
    reps.retain(|v| v.is_finite());
    let undefined = before - reps.len();
    let (lower, upper) = percentile_interval(&mut reps, level);
    CorrelationCi {
        ci: BootstrapCi {
            estimate,
            lower,
            upper,
            level,
            n_boot,
            n_units,
        },
        unit,
        undefined,
        seed,
    }
}

// ------------------------------------------------------------------------- special functions

pub use crate::stats::special::{beta_inc_reg, f_sf};

/// ln C(n, k) via ln Γ.
fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// Log of the hypergeometric probability P(X = x) of x marked items in `n_drawn` draws without
/// replacement from `n_total` items of which `n_marked` are marked:
/// ln C(K, x) + ln C(N − K, n − x) − ln C(N, n); −∞ outside the support.
pub fn hypergeom_ln_pmf(x: u64, n_total: u64, n_marked: u64, n_drawn: u64) -> f64 {
    let lo = (n_drawn + n_marked).saturating_sub(n_total);
    let hi = n_marked.min(n_drawn);
    if n_marked > n_total || n_drawn > n_total || x < lo || x > hi {
        return f64::NEG_INFINITY;
    }
    ln_choose(n_marked, x) + ln_choose(n_total - n_marked, n_drawn - x) - ln_choose(n_total, n_drawn)
}

/// Hypergeometric upper tail P(X ≥ k) (N = `n_total`, K = `n_marked`, n = `n_drawn`), exactly as
/// a finite sum of the probabilities of k..=min(K, n), each from ln Γ ([`hypergeom_ln_pmf`]),
/// summed in log space (log-sum-exp around the largest term). Equals
/// `scipy.stats.hypergeom.sf(k - 1, N, K, n)`. 1 for k at or below the support's lower end, 0
/// above its upper end.
///
/// # Panics
/// If K > N or n > N.
pub fn hypergeom_upper_tail(k: u64, n_total: u64, n_marked: u64, n_drawn: u64) -> f64 {
    assert!(
        n_marked <= n_total && n_drawn <= n_total,
        "hypergeometric: expected K ≤ N and n ≤ N, found N = {n_total}, K = {n_marked}, n = {n_drawn}"
    );
    let lo = (n_drawn + n_marked).saturating_sub(n_total);
    let hi = n_marked.min(n_drawn);
    if k <= lo {
        return 1.0;
    }
    if k > hi {
        return 0.0;
    }
    let terms: Vec<f64> = (k..=hi)
        .map(|x| hypergeom_ln_pmf(x, n_total, n_marked, n_drawn))
        .collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>()).min(1.0)
}

// ------------------------------------------------------------------------------- overlap tests

/// The hypergeometric overlap test of FDR-significant and predicted cells.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hypergeometric {
    /// N: cells.
    pub n_total: u64,
    /// K: predicted cells.
    pub n_marked: u64,
    /// n: significant cells.
    pub n_drawn: u64,
    /// k: cells both predicted and significant.
    pub k: u64,
    /// P(X ≥ k).
    pub p_upper: f64,
    /// E[X] = n K / N.
    pub expected: f64,
    pub alternative: &'static str,
}

/// Hypergeometric overlap test: P(X ≥ k) for N, K, n ([`hypergeom_upper_tail`]), with the counts.
pub fn hypergeometric_test(k: u64, n_total: u64, n_marked: u64, n_drawn: u64) -> Hypergeometric {
    Hypergeometric {
        n_total,
        n_marked,
        n_drawn,
        k,
        p_upper: hypergeom_upper_tail(k, n_total, n_marked, n_drawn),
        expected: n_drawn as f64 * n_marked as f64 / n_total as f64,
        alternative: GREATER,
    }
}

/// Fisher's exact test of a 2 × 2 table with the sample odds ratio and its 95% CI.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FisherExact {
    /// [[a, b], [c, d]].
    pub table: [[u64; 2]; 2],
    /// a d / (b c); ∞ when b c = 0 < a d; NaN when a row or column sum is 0.
    pub odds_ratio: f64,
    /// One-sided p, alternative "greater": P(X ≥ a) given the margins.
    pub p_greater: f64,
    /// Two-sided p: sum of the probabilities of tables (same margins) no more probable than the
    /// observed one.
    pub p_two_sided: f64,
    /// Woolf (log-scale) 95% interval of the odds ratio.
    pub ci_lower: f64,
    pub ci_upper: f64,
    pub ci_level: f64,
    /// The interval used the Haldane–Anscombe correction (+0.5 on every cell) because a cell is 0.
    pub haldane_corrected: bool,
}

/// Fisher's exact test of `table` = [[a, b], [c, d]] (as `scipy.stats.fisher_exact`).
///
/// Given the margins, a is hypergeometric with N = a+b+c+d, K = a+b (first row), n = a+c (first
/// column). p_greater = P(X ≥ a). p_two_sided = Σ P(X = x) over the x with
/// P(X = x) ≤ P(X = a)·(1 + 1e-14), and 1 when P(X = a) equals the mode's probability within
/// 1e-14 relative — scipy ≥ 1.9's rule (older scipy used 1 + 1e-7; the installed scipy 1.17 uses
/// 1e-14). A zero row or column sum gives p = 1 and a NaN odds ratio, as scipy.
///
/// Odds ratio: the sample (unconditional) a d / (b c), ∞ when b c = 0. CI: Woolf's
/// exp(ln OR ± 1.96 √(1/a + 1/b + 1/c + 1/d)); when a cell is 0 every cell gets +0.5 (Haldane–
/// Anscombe) for the interval only, flagged in `haldane_corrected`.
pub fn fisher_exact(table: [[u64; 2]; 2]) -> FisherExact {
    let [[a, b], [c, d]] = table;
    let n_total = a + b + c + d;
    let (n_marked, n_drawn) = (a + b, a + c);
    let haldane_corrected = a == 0 || b == 0 || c == 0 || d == 0;
    let zero_margin = a + b == 0 || c + d == 0 || a + c == 0 || b + d == 0;
    let mut out = FisherExact {
        table,
        odds_ratio: f64::NAN,
        p_greater: 1.0,
        p_two_sided: 1.0,
        ci_lower: f64::NAN,
        ci_upper: f64::NAN,
        ci_level: 0.95,
        haldane_corrected,
    };
    if zero_margin {
        return out;
    }
    out.odds_ratio = if b > 0 && c > 0 {
        (a * d) as f64 / (b * c) as f64
    } else {
        f64::INFINITY
    };
    let h = if haldane_corrected { 0.5 } else { 0.0 };
    let (fa, fb, fc, fd) = (a as f64 + h, b as f64 + h, c as f64 + h, d as f64 + h);
    let ln_or = (fa * fd / (fb * fc)).ln();
    let se = (1.0 / fa + 1.0 / fb + 1.0 / fc + 1.0 / fd).sqrt();
    out.ci_lower = (ln_or - Z_975 * se).exp();
    out.ci_upper = (ln_or + Z_975 * se).exp();
    out.p_greater = hypergeom_upper_tail(a, n_total, n_marked, n_drawn);

    let pmf = |x: u64| hypergeom_ln_pmf(x, n_total, n_marked, n_drawn).exp();
    let mode = ((n_drawn + 1) as f64 * (n_marked + 1) as f64 / (n_total + 2) as f64) as u64;
    let (p_exact, p_mode) = (pmf(a), pmf(mode));
    const EPS: f64 = 1e-14;
    if (p_exact - p_mode).abs() / p_exact.max(p_mode) <= EPS {
        out.p_two_sided = 1.0;
        return out;
    }
    let lo = (n_drawn + n_marked).saturating_sub(n_total);
    let hi = n_marked.min(n_drawn);
    let limit = p_exact * (1.0 + EPS);
    out.p_two_sided = (lo..=hi).map(pmf).filter(|&p| p <= limit).sum::<f64>().min(1.0);
    out
}

/// BH-FDR significance of per-cell p-values.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSignificance {
    /// (n_rows, n_cols), as given.
    pub p_values: Array2<f64>,
    /// Benjamini–Hochberg adjusted p-values over all cells, (n_rows, n_cols).
    pub q_values: Array2<f64>,
    /// q ≤ `fdr_q`, (n_rows, n_cols).
    pub significant: Array2<bool>,
    pub fdr_q: f64,
    /// m: cells in the correction.
    pub n_cells: usize,
    pub n_significant: usize,
}

/// Per-cell significance: Benjamini–Hochberg over all cells of `p_values` (n_rows, n_cols) with
/// [`crate::stats::fdr_bh`] (as `scipy.stats.false_discovery_control`); a cell is
/// significant when its q ≤ `fdr_q`. Errors: a p-value outside [0, 1] or NaN (names the cell), or
/// `fdr_q` outside (0, 1).
pub fn cell_significance(p_values: ArrayView2<f64>, fdr_q: f64) -> Result<CellSignificance> {
    if !(fdr_q > 0.0 && fdr_q < 1.0) {
        return Err(Error::Invalid(format!(
            "cell significance: expected an FDR level in (0, 1), found {fdr_q}"
        )));
    }
    for ((i, j), p) in p_values.indexed_iter() {
        if !(0.0..=1.0).contains(p) {
            return Err(Error::Invalid(format!(
                "cell significance: row {i}, column {j}: expected a p-value in [0, 1], found {p}"
            )));
        }
    }
    let q = Array2::from_shape_vec(p_values.dim(), fdr_bh(&flat(p_values))).expect("one q per cell");
    let significant = q.mapv(|v| v <= fdr_q);
    Ok(CellSignificance {
        p_values: p_values.to_owned(),
        n_significant: significant.iter().filter(|&&s| s).count(),
        n_cells: q.len(),
        q_values: q,
        significant,
        fdr_q,
    })
}

/// Overlap of significant and predicted cells, with the counts written out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overlap {
    /// N.
    pub n_cells: u64,
    /// K.
    pub n_predicted: u64,
    /// n.
    pub n_significant: u64,
    /// k.
    pub n_overlap: u64,
    pub hypergeometric: Hypergeometric,
    /// Fisher on [[k, K − k], [n − k, N − K − n + k]] (rows: predicted yes/no; columns:
    /// significant yes/no).
    pub fisher: FisherExact,
}

/// Overlap test of `significant` and `predicted` (0/1) cells of the same shape: counts N, K, n,
/// k, the hypergeometric upper tail P(X ≥ k) and Fisher's exact test on
/// [[k, K − k], [n − k, N − K − n + k]]. Errors: shapes differ, a predicted value not 0/1.
pub fn overlap_test(significant: ArrayView2<bool>, predicted: ArrayView2<f64>) -> Result<Overlap> {
    if significant.dim() != predicted.dim() {
        return Err(Error::Invalid(format!(
            "overlap test: expected significant and predicted matrices of the same shape, found {:?} and {:?}",
            significant.dim(),
            predicted.dim()
        )));
    }
    let (mut big_k, mut n, mut k) = (0u64, 0u64, 0u64);
    for ((idx, &s), &p) in significant.indexed_iter().zip(predicted.iter()) {
        if p != 0.0 && p != 1.0 {
            return Err(Error::Invalid(format!(
                "overlap test: predicted matrix, row {}, column {}: expected 0 or 1, found {p}",
                idx.0, idx.1
            )));
        }
        let p = p == 1.0;
        big_k += p as u64;
        n += s as u64;
        k += (p && s) as u64;
    }
    let big_n = predicted.len() as u64;
    Ok(Overlap {
        n_cells: big_n,
        n_predicted: big_k,
        n_significant: n,
        n_overlap: k,
        hypergeometric: hypergeometric_test(k, big_n, big_k, n),
        fisher: fisher_exact([[k, big_k - k], [n - k, big_n + k - big_k - n]]),
    })
}

// ----------------------------------------------------------------------- repeated-measures F

/// Repeated-measures subcategory × region interaction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmInteraction {
    /// F = MS_A×B / MS_A×B×S.
    pub f: f64,
    /// (a − 1)(b − 1).
    pub df1: usize,
    /// (a − 1)(b − 1)(s − 1).
    pub df2: usize,
    pub ss_interaction: f64,
    pub ss_error: f64,
    /// SS_A×B / (SS_A×B + SS_A×B×S).
    pub partial_eta_squared: f64,
    /// P(F_{df1, df2} ≥ F) under sphericity.
    pub p_parametric: f64,
    /// (1 + #{F_perm ≥ F}) / (1 + n_perm).
    pub p_permutation: f64,
    pub n_perm: usize,
    pub n_as_extreme: usize,
    /// s (the unit of analysis), a (rows, subcategories), b (columns, regions).
    pub n_subjects: usize,
    pub n_rows: usize,
    pub n_cols: usize,
    pub unit: &'static str,
    pub alternative: &'static str,
    pub seed: u64,
}

/// Per-subject interaction residuals e_sij = y_sij − ȳ_si· − ȳ_s·j + ȳ_s·· (double centring of
/// each subject's matrix), in place.
fn double_centre(m: &mut ndarray::ArrayViewMut2<f64>) {
    let row_means = m.mean_axis(Axis(1)).expect("columns");
    let col_means = m.mean_axis(Axis(0)).expect("rows");
    let grand = row_means.mean().expect("rows");
    for ((i, j), v) in m.indexed_iter_mut() {
        *v += grand - row_means[i] - col_means[j];
    }
}

/// (SS_A×B, SS_A×B×S) from double-centred subject matrices e (s, a, b):
/// SS_A×B = s Σ_ij ē_ij², SS_A×B×S = Σ_sij (e_sij − ē_ij)², ē = mean over subjects.
fn interaction_ss(e: ArrayView3<f64>) -> (f64, f64) {
    let s = e.len_of(Axis(0)) as f64;
    let mean = e.mean_axis(Axis(0)).expect("subjects");
    let ss_ab = s * mean.iter().map(|v| v * v).sum::<f64>();
    let ss_err = e
        .outer_iter()
        .map(|m| m.iter().zip(mean.iter()).map(|(v, mu)| (v - mu).powi(2)).sum::<f64>())
        .sum();
    (ss_ab, ss_err)
}

/// Repeated-measures two-way ANOVA interaction test on `data` (n_subjects, a, b): every subject
/// has a value in every cell (subcategory × region), subjects are the random unit.
///
/// F = MS_A×B / MS_A×B×S with SS_A×B = s Σ_ij (ȳ_ij − ȳ_i − ȳ_j + ȳ)² and the error SS the
/// subject × A × B residual, df ((a−1)(b−1), (a−1)(b−1)(s−1)); parametric p from the F
/// distribution ([`f_sf`], assumes sphericity: no Greenhouse–Geisser correction). Permutation p:
/// each subject's interaction residuals (y − row mean − column mean + grand mean, per subject) are
/// permuted across that subject's a·b cells, independently per subject, and F recomputed
/// (residuals double-centred again); (1 + #{F_perm ≥ F}) / (1 + n_perm), with subject s of
/// permutation p drawn from one SplitMix64 stream seeded with `seed`, in order.
///
/// Errors: fewer than 2 subjects, rows or columns; a non-finite value.
pub fn rm_interaction(data: ArrayView3<f64>, n_perm: usize, seed: u64) -> Result<RmInteraction> {
    let (s, a, b) = data.dim();
    if s < 2 || a < 2 || b < 2 {
        return Err(Error::Invalid(format!(
            "repeated-measures interaction: expected at least 2 subjects, 2 rows and 2 columns, found {s} × {a} × {b}"
        )));
    }
    for ((si, i, j), v) in data.indexed_iter() {
        if !v.is_finite() {
            return Err(Error::Invalid(format!(
                "repeated-measures interaction: subject {si}, row {i}, column {j}: expected a finite number, found {v}"
            )));
        }
    }
    let mut e = data.to_owned();
    for mut m in e.outer_iter_mut() {
        double_centre(&mut m);
    }
    let df1 = (a - 1) * (b - 1);
    let df2 = df1 * (s - 1);
    let f_of = |ss: (f64, f64)| (ss.0 / df1 as f64) / (ss.1 / df2 as f64);
    let (ss_ab, ss_err) = interaction_ss(e.view());
    let f = f_of((ss_ab, ss_err));
    let threshold = f - TIE_RTOL * f.abs();
    let mut rng = SplitMix64::new(seed);
    let mut perm = e.clone();
    let mut cells: Vec<f64> = Vec::with_capacity(a * b);
    let mut n_as_extreme = 0;
    for _ in 0..n_perm {
        for (src, mut dst) in e.outer_iter().zip(perm.outer_iter_mut()) {
            cells.clear();
            cells.extend(src.iter());
            shuffle(&mut cells, &mut rng);
            for (d, c) in dst.iter_mut().zip(&cells) {
                *d = *c;
            }
            double_centre(&mut dst);
        }
        if f_of(interaction_ss(perm.view())) >= threshold {
            n_as_extreme += 1;
        }
    }
    Ok(RmInteraction {
        f,
        df1,
        df2,
        ss_interaction: ss_ab,
        ss_error: ss_err,
        partial_eta_squared: ss_ab / (ss_ab + ss_err),
        p_parametric: f_sf(f, df1 as f64, df2 as f64),
        p_permutation: (1 + n_as_extreme) as f64 / (1 + n_perm) as f64,
        n_perm,
        n_as_extreme,
        n_subjects: s,
        n_rows: a,
        n_cols: b,
        unit: UNIT_SUBJECTS,
        alternative: GREATER,
        seed,
    })
}

// ---------------------------------------------------------------------------------------- report

/// Settings of [`topography_report`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopographySettings {
    /// Permutations of every permutation test (default 10 000).
    pub n_perm: usize,
    /// Bootstrap resamples of every CI (default 10 000).
    pub n_boot: usize,
    /// Confidence level of the bootstrap CIs (default 0.95).
    pub ci_level: f64,
    /// Benjamini–Hochberg FDR level for significant cells (default 0.05).
    pub fdr_q: f64,
    /// Master seed (default 0); see [`topography_report`] for the derived streams.
    pub seed: u64,
    /// Rows and columns are the same objects: Mantel with one permutation on both axes.
    pub same_labels: bool,
}

impl Default for TopographySettings {
    fn default() -> Self {
        TopographySettings {
            n_perm: 10_000,
            n_boot: 10_000,
            ci_level: 0.95,
            fdr_q: 0.05,
            seed: 0,
            same_labels: false,
        }
    }
}

/// Everything [`topography_report`] computes.
#[derive(Debug, Clone, PartialEq)]
pub struct TopographyReport {
    pub n_rows: usize,
    pub n_cols: usize,
    pub settings: TopographySettings,
    pub spearman: PermutationCorrelation,
    /// Bootstrap CI of ρ over cells.
    pub spearman_ci_cells: CorrelationCi,
    /// Bootstrap CI of ρ over subjects (per-subject matrices given).
    pub spearman_ci_subjects: Option<CorrelationCi>,
    /// Pearson r of the cells (`pearson_r`; `mantel_r` with `same_labels`).
    pub mantel: PermutationCorrelation,
    /// Spearman ρ of the double-centred observed matrix against the prediction.
    pub spearman_centred: PermutationCorrelation,
    /// Pearson r of the double-centred observed and predicted matrices.
    pub pearson_centred: PermutationCorrelation,
    /// Per-subject matrices given.
    pub interaction: Option<RmInteraction>,
    /// Per-cell p-values given.
    pub cells: Option<CellSignificance>,
    /// Per-cell p-values given.
    pub overlap: Option<Overlap>,
}

/// One statistic as a table row (the `topography_tests` table); `None` is a missing value.
#[derive(Debug, Clone, PartialEq)]
pub struct StatisticRow {
    pub statistic: String,
    pub value: f64,
    pub p_value: Option<f64>,
    pub ci_lower: Option<f64>,
    pub ci_upper: Option<f64>,
    /// Count of the unit of analysis (cells, subjects).
    pub n: Option<u64>,
    pub df1: Option<f64>,
    pub df2: Option<f64>,
    pub n_perm: Option<u64>,
    pub unit: Option<String>,
    pub alternative: Option<String>,
    pub tie_rule: Option<String>,
    pub note: Option<String>,
}

impl StatisticRow {
    fn new(statistic: &str, value: f64) -> Self {
        StatisticRow {
            statistic: statistic.into(),
            value,
            p_value: None,
            ci_lower: None,
            ci_upper: None,
            n: None,
            df1: None,
            df2: None,
            n_perm: None,
            unit: None,
            alternative: None,
            tie_rule: None,
            note: None,
        }
    }
}

/// The full topography analysis of one observed matrix against a 0/1 prediction.
///
/// `observed`, `predicted`: (n_rows, n_cols); `p_values`: per-cell p (same shape), enables the
/// FDR cells and the overlap tests; `subjects`: (n_subjects, n_rows, n_cols), enables the subject
/// bootstrap and the repeated-measures interaction. Seeds: the k-th output of
/// `SplitMix64::new(settings.seed)` seeds, in this order, 1 the ρ permutations, 2 the cell
/// bootstrap, 3 the subject bootstrap, 4 the Pearson-r (Mantel) permutations, 5 the interaction
/// permutations, 6 and 7 the double-centred ρ and r permutations (each drawn whether used or not,
/// so adding subjects does not change the other streams).
///
/// Errors: as the individual tests, and shapes that disagree.
pub fn topography_report(
    observed: ArrayView2<f64>,
    predicted: ArrayView2<f64>,
    p_values: Option<ArrayView2<f64>>,
    subjects: Option<ArrayView3<f64>>,
    settings: &TopographySettings,
) -> Result<TopographyReport> {
    check_pair("topography", predicted, observed)?;
    let (r, c) = observed.dim();
    if let Some(p) = p_values {
        if p.dim() != (r, c) {
            return Err(Error::Invalid(format!(
                "topography: expected per-cell p-values of shape {:?} (as the observed matrix), found {:?}",
                (r, c),
                p.dim()
            )));
        }
    }
    if let Some(sub) = subjects {
        if (sub.len_of(Axis(1)), sub.len_of(Axis(2))) != (r, c) {
            return Err(Error::Invalid(format!(
                "topography: expected per-subject matrices of shape (n_subjects, {r}, {c}), found {:?}",
                sub.dim()
            )));
        }
    }
    let mut seeds = SplitMix64::new(settings.seed);
    let seed: Vec<u64> = (0..7).map(|_| seeds.next_u64()).collect();
    let spearman = rank_convergence_test(predicted, observed, settings.n_perm, seed[0])?;
    let spearman_ci_cells = cell_bootstrap_ci(predicted, observed, settings.n_boot, settings.ci_level, seed[1])?;
    let spearman_ci_subjects = subjects
        .map(|s| subject_bootstrap_ci(predicted, s, settings.n_boot, settings.ci_level, seed[2]))
        .transpose()?;
    let mantel = mantel_test(predicted, observed, settings.n_perm, seed[3], settings.same_labels)?;
    let (spearman_centred, pearson_centred) =
        interaction_convergence_tests(predicted, observed, settings.n_perm, (seed[5], seed[6]))?;
    let interaction = subjects
        .map(|s| rm_interaction(s, settings.n_perm, seed[4]))
        .transpose()?;
    let cells = p_values.map(|p| cell_significance(p, settings.fdr_q)).transpose()?;
    let overlap = cells
        .as_ref()
        .map(|cs| overlap_test(cs.significant.view(), predicted))
        .transpose()?;
    Ok(TopographyReport {
        n_rows: r,
        n_cols: c,
        settings: *settings,
        spearman,
        spearman_ci_cells,
        spearman_ci_subjects,
        mantel,
        spearman_centred,
        pearson_centred,
        interaction,
        cells,
        overlap,
    })
}

fn finite(v: f64) -> Option<f64> {
    if v.is_nan() {
        None
    } else {
        Some(v)
    }
}

impl TopographyReport {
    /// One row per statistic, in a fixed order: spearman_rho, spearman_rho_subjects, pearson_r
    /// (mantel_r with same labels), spearman_rho_double_centred, pearson_r_double_centred,
    /// interaction_f, fdr_significant_cells, hypergeometric_overlap, fisher_odds_ratio,
    /// fisher_exact_two_sided (rows whose input was not given are left out).
    pub fn rows(&self) -> Vec<StatisticRow> {
        let mut rows = Vec::new();
        let s = &self.spearman;
        let ci = &self.spearman_ci_cells;
        let mut row = StatisticRow::new("spearman_rho", s.value);
        row.p_value = Some(s.p_value);
        row.ci_lower = finite(ci.ci.lower);
        row.ci_upper = finite(ci.ci.upper);
        row.n = Some(s.n_cells as u64);
        row.n_perm = Some(s.n_perm as u64);
        row.unit = Some(UNIT_CELLS.into());
        row.alternative = Some(s.alternative.into());
        row.tie_rule = Some(format!("{}; {PERMUTATION_TIES}", s.tie_rule));
        row.note = Some(format!(
            "flattened predicted vs observed; null: {} ({} of {} permutations ≥ ρ); {:.0}% CI: percentile bootstrap over cells, {} resamples ({} undefined)",
            s.scheme.describe(),
            s.n_as_extreme,
            s.n_perm,
            100.0 * ci.ci.level,
            ci.ci.n_boot,
            ci.undefined
        ));
        rows.push(row);
        if let Some(ci) = &self.spearman_ci_subjects {
            let mut row = StatisticRow::new("spearman_rho_subjects", ci.ci.estimate);
            row.ci_lower = finite(ci.ci.lower);
            row.ci_upper = finite(ci.ci.upper);
            row.n = Some(ci.ci.n_units as u64);
            row.unit = Some(UNIT_SUBJECTS.into());
            row.tie_rule = Some(TIE_RULE_AVERAGE.into());
            row.note = Some(format!(
                "ρ of the mean of the subjects' matrices vs predicted; {:.0}% CI: percentile bootstrap over subjects, {} resamples ({} undefined)",
                100.0 * ci.ci.level,
                ci.ci.n_boot,
                ci.undefined
            ));
            rows.push(row);
        }
        let m = &self.mantel;
        let mut row = StatisticRow::new(m.statistic, m.value);
        row.p_value = Some(m.p_value);
        row.n = Some(m.n_cells as u64);
        row.n_perm = Some(m.n_perm as u64);
        row.unit = Some(UNIT_CELLS.into());
        row.alternative = Some(m.alternative.into());
        row.tie_rule = Some(format!("{}; {PERMUTATION_TIES}", m.tie_rule));
        row.note = Some(format!(
            "Pearson r of flattened predicted vs observed{}; null: {} ({} of {} permutations ≥ r)",
            if m.statistic == "pearson_r" {
                " (the paper's \"Mantel r\"; not a distance-matrix Mantel test)"
            } else {
                ""
            },
            m.scheme.describe(),
            m.n_as_extreme,
            m.n_perm
        ));
        rows.push(row);
        for c in [&self.spearman_centred, &self.pearson_centred] {
            let mut row = StatisticRow::new(c.statistic, c.value);
            row.p_value = Some(c.p_value);
            row.n = Some(c.n_cells as u64);
            row.n_perm = Some(c.n_perm as u64);
            row.unit = Some(UNIT_CELLS.into());
            row.alternative = Some(c.alternative.into());
            row.tie_rule = Some(format!("{}; {PERMUTATION_TIES}", c.tie_rule));
            row.note = Some(format!(
                "{} with row and column effects removed (observed{} double-centred): agreement of the subcategory × region \
                 interaction alone; null: {} ({} of {} permutations ≥)",
                if c.statistic.starts_with("spearman") { "Spearman ρ" } else { "Pearson r" },
                if c.statistic.starts_with("spearman") { "" } else { " and predicted" },
                c.scheme.describe(),
                c.n_as_extreme,
                c.n_perm
            ));
            rows.push(row);
        }
        if let Some(x) = &self.interaction {
            let mut row = StatisticRow::new("interaction_f", x.f);
            row.p_value = Some(x.p_permutation);
            row.n = Some(x.n_subjects as u64);
            row.df1 = Some(x.df1 as f64);
            row.df2 = Some(x.df2 as f64);
            row.n_perm = Some(x.n_perm as u64);
            row.unit = Some(x.unit.into());
            row.alternative = Some(x.alternative.into());
            row.tie_rule = Some(PERMUTATION_TIES.into());
            row.note = Some(format!(
                "repeated-measures subcategory × region interaction, {} subjects × {} × {}; F = MS_AxB / MS_AxBxS; p by permuting each subject's interaction residuals across cells ({} of {} ≥ F); parametric F-distribution p {:.6e} (sphericity assumed); partial η² {:.4}",
                x.n_subjects, x.n_rows, x.n_cols, x.n_as_extreme, x.n_perm, x.p_parametric, x.partial_eta_squared
            ));
            rows.push(row);
        }
        if let (Some(cs), Some(o)) = (&self.cells, &self.overlap) {
            let mut row = StatisticRow::new("fdr_significant_cells", cs.n_significant as f64);
            row.n = Some(cs.n_cells as u64);
            row.unit = Some(UNIT_CELLS.into());
            row.note = Some(format!(
                "Benjamini–Hochberg over {} cells, q ≤ {}",
                cs.n_cells, cs.fdr_q
            ));
            rows.push(row);
            let h = &o.hypergeometric;
            let counts = format!("N = {}, K = {}, n = {}, k = {}", h.n_total, h.n_marked, h.n_drawn, h.k);
            let mut row = StatisticRow::new("hypergeometric_overlap", h.k as f64);
            row.p_value = Some(h.p_upper);
            row.n = Some(h.n_total);
            row.unit = Some(UNIT_CELLS.into());
            row.alternative = Some(h.alternative.into());
            row.note = Some(format!(
                "P(X ≥ k) of k significant among K predicted cells; {counts} (N cells, K predicted, n significant, k both); E[X] = {:.4}",
                h.expected
            ));
            rows.push(row);
            let f = &o.fisher;
            let table = format!(
                "table [[{}, {}], [{}, {}]] (rows predicted yes/no, columns significant yes/no)",
                f.table[0][0], f.table[0][1], f.table[1][0], f.table[1][1]
            );
            let mut row = StatisticRow::new("fisher_odds_ratio", f.odds_ratio);
            row.p_value = Some(f.p_greater);
            row.ci_lower = finite(f.ci_lower);
            row.ci_upper = finite(f.ci_upper);
            row.n = Some(h.n_total);
            row.unit = Some(UNIT_CELLS.into());
            row.alternative = Some(GREATER.into());
            row.note = Some(format!(
                "sample odds ratio ad/bc; Fisher's exact one-sided p; {table}; {counts}; 95% CI: Woolf log-scale{}",
                if f.haldane_corrected {
                    " with Haldane +0.5 on every cell (a cell is 0)"
                } else {
                    ", no correction"
                }
            ));
            rows.push(row);
            let mut row = StatisticRow::new("fisher_exact_two_sided", f.odds_ratio);
            row.p_value = Some(f.p_two_sided);
            row.n = Some(h.n_total);
            row.unit = Some(UNIT_CELLS.into());
            row.alternative = Some(TWO_SIDED.into());
            row.note = Some(format!(
                "sum of probabilities of tables no more probable than the observed (relative tolerance 1e-14, scipy ≥ 1.9); {table}"
            ));
            rows.push(row);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    #[test]
    fn the_worked_overlap_example_gives_p_0068_and_odds_ratio_21() {
        // N = 25 cells, K = 10 predicted, n = 7 significant, k = 6 overlap
        let p = hypergeom_upper_tail(6, 25, 10, 7);
        assert_abs_diff_eq!(p, 0.0068, epsilon = 1e-4);
        let f = fisher_exact([[6, 4], [1, 14]]);
        assert_eq!(f.odds_ratio, 21.0);
        assert_eq!(f.p_greater, p);
        assert!(!f.haldane_corrected);
    }

    #[test]
    fn double_centring_removes_row_and_column_effects_and_keeps_the_interaction() {
        let pred = ndarray::array![[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]];
        // row and column effects only: raw r with the prediction can be large, the centred one is 0
        let additive = Array2::from_shape_fn((4, 3), |(i, j)| 0.1 * i as f64 + [0.3, 0.0, 0.05][j]);
        let c = double_centred(additive.view());
        assert!(c.iter().all(|v| v.abs() < 1e-15));
        for i in 0..4 {
            assert!(c.row(i).sum().abs() < 1e-15);
        }
        // an interaction planted on the predicted cells over additive effects: found by both
        let planted = &additive + &(&pred * 0.2);
        let (rho, r) = interaction_convergence_tests(pred.view(), planted.view(), 999, (1, 2)).unwrap();
        assert_abs_diff_eq!(r.value, 1.0, epsilon = 1e-12);
        assert!(rho.value > 0.8 && rho.p_value < 0.05, "{rho:?}");
        assert_eq!(
            (rho.statistic, r.statistic),
            ("spearman_rho_double_centred", "pearson_r_double_centred")
        );
        // a raw-matrix correlation that comes only from a row effect (a subcategory strong in every
        // region) whose row the prediction marks twice; the interaction left runs against the
        // prediction (numpy: raw r 0.2732, double-centred r −0.5367)
        let pred2 = ndarray::array![[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]];
        let mut rowy = Array2::<f64>::zeros((4, 3));
        rowy.row_mut(0).fill(1.0);
        rowy[[0, 2]] += 0.05;
        rowy[[1, 0]] += 0.05;
        let raw = mantel_test(pred2.view(), rowy.view(), 99, 3, false).unwrap();
        let (_, cen) = interaction_convergence_tests(pred2.view(), rowy.view(), 99, (1, 2)).unwrap();
        assert_eq!(raw.statistic, "pearson_r");
        assert_abs_diff_eq!(raw.value, 0.27323563308203436, epsilon = 1e-12);
        assert_abs_diff_eq!(cen.value, -0.5367450401216932, epsilon = 1e-12);
    }

    #[test]
    fn average_ranks_share_tied_positions() {
        assert_eq!(average_ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
        assert_abs_diff_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).rho, -1.0, epsilon = 1e-15);
    }

    #[test]
    fn f_sf_of_df_2_and_large_df2_matches_closed_forms() {
        // F(2, ∞) tail is exp(−f); with df1 = 2 the tail is (1 + 2f/df2)^(−df2/2) exactly
        for &(f, d2) in &[(0.5, 10.0), (3.0, 7.0), (12.0, 40.0)] {
            assert_abs_diff_eq!(f_sf(f, 2.0, d2), (1.0 + 2.0 * f / d2).powf(-d2 / 2.0), epsilon = 1e-14);
        }
        assert_eq!(f_sf(0.0, 3.0, 4.0), 1.0);
    }
}
