//! Agreement between label sources (METHOD.md §4): an LLM labeller against human raters, or any
//! two or more raters, over the same items (features).
//!
//! Input: labels as category indices `0..n_categories` (one per item and rater), or, for Fleiss'
//! κ, a table (n_items, n_categories) of how many raters put each item in each category. Soft
//! labels (a confidence per category, (n_items, n_categories)) become hard ones with
//! [`hard_labels`].
//!
//! Output: structs that carry the statistic with its counts (items, categories, raters), the
//! unit of analysis (always the item) and, for intervals, the bootstrap settings
//! ([`BootstrapCi`]), so a report can print them next to the value.
//!
//! * [`confusion_matrix`]: (n_categories, n_categories) counts, rows = source `a`, columns = `b`.
//! * [`cohen_kappa`]: Cohen's (1960) unweighted κ = (p_o − p_e) / (1 − p_e), overall and per
//!   category (one-vs-rest 2 × 2 collapse), from the confusion matrix.
//! * [`fleiss_kappa`]: Fleiss' (1971) κ for a fixed number of raters per item, with the
//!   per-category κ_j of the same paper.
//! * [`cohen_kappa_bootstrap`], [`fleiss_kappa_bootstrap`]: percentile bootstrap CIs resampling
//!   items with replacement, seeded ([`SplitMix64`]): identical output for an identical seed.

use ndarray::{Array2, ArrayView2};

use crate::stats::{percentile_interval, BootstrapCi, SplitMix64};
use crate::{Error, Result};

/// Unit of analysis of every statistic here: the labelled item (e.g. one SAE feature).
pub const UNIT_ITEMS: &str = "items";

/// Counts of label pairs over items: `counts[[i, j]]` = items that source `a` put in category `i`
/// and source `b` in category `j`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    /// (n_categories, n_categories); rows = source `a`, columns = source `b`.
    pub counts: Array2<u64>,
    pub n_items: usize,
    pub n_categories: usize,
}

/// Cohen's κ with the quantities it is made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CohenKappa {
    /// `None` for the overall κ over all categories; `Some(j)` for the one-vs-rest κ of category j.
    pub category: Option<usize>,
    /// (p_o − p_e) / (1 − p_e); NaN when p_e = 1 (both sources constant in the same category).
    pub kappa: f64,
    /// p_o: fraction of items with the same label from both sources.
    pub observed_agreement: f64,
    /// p_e = Σ_j (row_j / n)(col_j / n): agreement expected from the two sources' marginals.
    pub expected_agreement: f64,
    pub n_items: usize,
    /// Categories of the table κ was computed on (2 for a one-vs-rest κ).
    pub n_categories: usize,
}

/// Fleiss' κ of a table of rater counts, with the per-category κ_j (Fleiss 1971).
#[derive(Debug, Clone, PartialEq)]
pub struct FleissKappa {
    /// (P̄ − P̄_e) / (1 − P̄_e); NaN when P̄_e = 1.
    pub kappa: f64,
    /// P̄: mean over items of the pairwise rater agreement P_i = (Σ_j n_ij² − m) / (m (m − 1)).
    pub mean_agreement: f64,
    /// P̄_e = Σ_j p_j².
    pub expected_agreement: f64,
    /// p_j: share of all ratings in category j (n_categories).
    pub category_proportions: Vec<f64>,
    /// κ_j = 1 − Σ_i n_ij (m − n_ij) / (N m (m − 1) p_j q_j), q_j = 1 − p_j (n_categories); NaN
    /// for a category used by no rating or by all ratings.
    pub per_category: Vec<f64>,
    /// N.
    pub n_items: usize,
    /// m: raters per item (the same for every item).
    pub n_raters: usize,
    pub n_categories: usize,
}

/// Percentile bootstrap CIs of Cohen's κ, overall and per category. Resamples whose κ is
/// undefined (p_e = 1) are left out of the interval and counted.
#[derive(Debug, Clone, PartialEq)]
pub struct CohenKappaCi {
    /// `estimate` = κ on all items; `n_units` = items.
    pub overall: BootstrapCi,
    /// Resamples left out of `overall` because their κ was undefined.
    pub overall_undefined: usize,
    /// One interval per category (one-vs-rest κ).
    pub per_category: Vec<BootstrapCi>,
    pub per_category_undefined: Vec<usize>,
    pub seed: u64,
}

/// Percentile bootstrap CI of Fleiss' κ (items resampled); undefined resamples are counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleissKappaCi {
    pub ci: BootstrapCi,
    pub undefined: usize,
    pub seed: u64,
}

/// Confusion matrix of two label vectors over `n_categories` categories.
///
/// Errors: lengths differ, no items, `n_categories` = 0, or a label ≥ `n_categories` (the message
/// names the source and the item).
pub fn confusion_matrix(a: &[usize], b: &[usize], n_categories: usize) -> Result<ConfusionMatrix> {
    if a.len() != b.len() {
        return Err(Error::Invalid(format!(
            "confusion matrix: expected two label vectors of the same length, found {} and {}",
            a.len(),
            b.len()
        )));
    }
    if a.is_empty() || n_categories == 0 {
        return Err(Error::Invalid(format!(
            "confusion matrix: expected at least one item and one category, found {} items and {n_categories} categories",
            a.len()
        )));
    }
    let mut counts = Array2::<u64>::zeros((n_categories, n_categories));
    for (item, (&x, &y)) in a.iter().zip(b).enumerate() {
        for (source, label) in [("a", x), ("b", y)] {
            if label >= n_categories {
                return Err(Error::Invalid(format!(
                    "confusion matrix: source {source}, item {item}: expected a category index below {n_categories}, found {label}"
                )));
            }
        }
        counts[[x, y]] += 1;
    }
    Ok(ConfusionMatrix {
        counts,
        n_items: a.len(),
        n_categories,
    })
}

/// Cohen's unweighted κ of a square table of counts (rows = source a, columns = source b):
/// p_o = trace / n, p_e = Σ_j row_j col_j / n², κ = (p_o − p_e) / (1 − p_e).
fn kappa_of_counts(counts: ArrayView2<u64>, category: Option<usize>) -> CohenKappa {
    let k = counts.nrows();
    let n: u64 = counts.sum();
    let nf = n as f64;
    let diag: u64 = (0..k).map(|j| counts[[j, j]]).sum();
    let p_o = diag as f64 / nf;
    let p_e = (0..k)
        .map(|j| counts.row(j).sum() as f64 * counts.column(j).sum() as f64)
        .sum::<f64>()
        / (nf * nf);
    let kappa = if p_e >= 1.0 {
        f64::NAN
    } else {
        (p_o - p_e) / (1.0 - p_e)
    };
    CohenKappa {
        category,
        kappa,
        observed_agreement: p_o,
        expected_agreement: p_e,
        n_items: n as usize,
        n_categories: k,
    }
}

/// The 2 × 2 table of category `j` against all others: [[both j, a j only], [b j only, neither]].
fn one_vs_rest(cm: &ConfusionMatrix, j: usize) -> Array2<u64> {
    let n = cm.n_items as u64;
    let both = cm.counts[[j, j]];
    let row = cm.counts.row(j).sum();
    let col = cm.counts.column(j).sum();
    ndarray::array![[both, row - both], [col - both, n + both - row - col]]
}

impl ConfusionMatrix {
    /// Overall Cohen's κ of this table (see [`cohen_kappa`]).
    pub fn kappa(&self) -> CohenKappa {
        kappa_of_counts(self.counts.view(), None)
    }

    /// One-vs-rest κ per category: the table collapsed to "category j" vs "any other category"
    /// for both sources, then Cohen's κ of that 2 × 2 table. NaN for a category that neither
    /// source uses (or that both use for every item).
    pub fn kappa_per_category(&self) -> Vec<CohenKappa> {
        (0..self.n_categories)
            .map(|j| kappa_of_counts(one_vs_rest(self, j).view(), Some(j)))
            .collect()
    }
}

/// Cohen's unweighted κ between label sources `a` and `b` (Cohen 1960), overall and one-vs-rest
/// per category, with the confusion matrix. Errors as [`confusion_matrix`].
pub fn cohen_kappa(
    a: &[usize],
    b: &[usize],
    n_categories: usize,
) -> Result<(CohenKappa, Vec<CohenKappa>, ConfusionMatrix)> {
    let cm = confusion_matrix(a, b, n_categories)?;
    Ok((cm.kappa(), cm.kappa_per_category(), cm))
}

/// Fleiss' κ (Fleiss 1971) of `counts` (n_items, n_categories): `counts[[i, j]]` raters put item
/// i in category j, and every item has the same number m ≥ 2 of ratings.
///
/// P_i = (Σ_j n_ij² − m) / (m (m − 1)), P̄ = mean_i P_i, p_j = Σ_i n_ij / (N m),
/// P̄_e = Σ_j p_j², κ = (P̄ − P̄_e) / (1 − P̄_e); per category
/// κ_j = 1 − Σ_i n_ij (m − n_ij) / (N m (m − 1) p_j q_j). The overall κ is the p_j q_j-weighted
/// mean of the κ_j.
///
/// Errors: no items or categories, fewer than 2 raters, or an item whose row sum differs from
/// the first item's (the message names the item).
pub fn fleiss_kappa(counts: ArrayView2<u64>) -> Result<FleissKappa> {
    let (n_items, k) = counts.dim();
    if n_items == 0 || k == 0 {
        return Err(Error::Invalid(format!(
            "Fleiss' κ: expected a table (n_items, n_categories) with at least one of each, found {n_items} × {k}"
        )));
    }
    let m = counts.row(0).sum();
    if m < 2 {
        return Err(Error::Invalid(format!(
            "Fleiss' κ: expected at least 2 ratings per item, found {m} for item 0"
        )));
    }
    for (i, row) in counts.rows().into_iter().enumerate() {
        if row.sum() != m {
            return Err(Error::Invalid(format!(
                "Fleiss' κ: expected every item rated {m} times (as item 0), found {} for item {i}",
                row.sum()
            )));
        }
    }
    let (nf, mf) = (n_items as f64, m as f64);
    let mean_agreement = counts
        .rows()
        .into_iter()
        .map(|r| (r.iter().map(|&c| (c * c) as f64).sum::<f64>() - mf) / (mf * (mf - 1.0)))
        .sum::<f64>()
        / nf;
    let p: Vec<f64> = (0..k).map(|j| counts.column(j).sum() as f64 / (nf * mf)).collect();
    let expected = p.iter().map(|pj| pj * pj).sum::<f64>();
    let kappa = if expected >= 1.0 {
        f64::NAN
    } else {
        (mean_agreement - expected) / (1.0 - expected)
    };
    let per_category = (0..k)
        .map(|j| {
            let pq = p[j] * (1.0 - p[j]);
            if pq <= 0.0 {
                return f64::NAN;
            }
            let disagree: f64 = counts.column(j).iter().map(|&c| (c * (m - c)) as f64).sum();
            1.0 - disagree / (nf * mf * (mf - 1.0) * pq)
        })
        .collect();
    Ok(FleissKappa {
        kappa,
        mean_agreement,
        expected_agreement: expected,
        category_proportions: p,
        per_category,
        n_items,
        n_raters: m as usize,
        n_categories: k,
    })
}

/// Percentile CI from bootstrap replicates (NaNs dropped and counted).
fn ci_of(estimate: f64, mut reps: Vec<f64>, level: f64, n_boot: usize, n_units: usize) -> (BootstrapCi, usize) {
    let before = reps.len();
    reps.retain(|v| v.is_finite());
    let undefined = before - reps.len();
    let (lower, upper) = percentile_interval(&mut reps, level);
    (
        BootstrapCi {
            estimate,
            lower,
            upper,
            level,
            n_boot,
            n_units,
        },
        undefined,
    )
}

/// Percentile bootstrap CIs of Cohen's κ (overall and per category, one-vs-rest): `n_boot`
/// resamples of the items with replacement (the pair of labels of an item stays together), κ
/// recomputed on each, interval = the (1 − level)/2 and (1 + level)/2 percentiles (linear
/// interpolation). Resample b draws its items from one [`SplitMix64`] stream seeded with `seed`,
/// in order, so the result depends only on the inputs and `seed`. Errors as [`confusion_matrix`].
pub fn cohen_kappa_bootstrap(
    a: &[usize],
    b: &[usize],
    n_categories: usize,
    n_boot: usize,
    level: f64,
    seed: u64,
) -> Result<CohenKappaCi> {
    let cm = confusion_matrix(a, b, n_categories)?;
    let n = a.len();
    let mut rng = SplitMix64::new(seed);
    let mut overall = Vec::with_capacity(n_boot);
    let mut per: Vec<Vec<f64>> = vec![Vec::with_capacity(n_boot); n_categories];
    let mut counts = Array2::<u64>::zeros((n_categories, n_categories));
    for _ in 0..n_boot {
        counts.fill(0);
        for _ in 0..n {
            let i = rng.below(n as u64) as usize;
            counts[[a[i], b[i]]] += 1;
        }
        let boot = ConfusionMatrix {
            counts: counts.clone(),
            n_items: n,
            n_categories,
        };
        overall.push(boot.kappa().kappa);
        for (j, kj) in boot.kappa_per_category().into_iter().enumerate() {
            per[j].push(kj.kappa);
        }
    }
    let (overall_ci, overall_undefined) = ci_of(cm.kappa().kappa, overall, level, n_boot, n);
    let estimates = cm.kappa_per_category();
    let (per_category, per_category_undefined) = per
        .into_iter()
        .zip(estimates)
        .map(|(reps, est)| ci_of(est.kappa, reps, level, n_boot, n))
        .unzip();
    Ok(CohenKappaCi {
        overall: overall_ci,
        overall_undefined,
        per_category,
        per_category_undefined,
        seed,
    })
}

/// Percentile bootstrap CI of Fleiss' κ: `n_boot` resamples of the items (rows of `counts`) with
/// replacement, κ recomputed on each; interval and seeding as [`cohen_kappa_bootstrap`]. Errors as
/// [`fleiss_kappa`].
pub fn fleiss_kappa_bootstrap(counts: ArrayView2<u64>, n_boot: usize, level: f64, seed: u64) -> Result<FleissKappaCi> {
    let est = fleiss_kappa(counts)?;
    let (n, k) = counts.dim();
    let mut rng = SplitMix64::new(seed);
    let mut reps = Vec::with_capacity(n_boot);
    let mut boot = Array2::<u64>::zeros((n, k));
    for _ in 0..n_boot {
        for mut row in boot.rows_mut() {
            row.assign(&counts.row(rng.below(n as u64) as usize));
        }
        reps.push(fleiss_kappa(boot.view())?.kappa);
    }
    let (ci, undefined) = ci_of(est.kappa, reps, level, n_boot, n);
    Ok(FleissKappaCi { ci, undefined, seed })
}

/// Soft labels → hard labels: for each item (row of `confidences`, (n_items, n_categories)) the
/// category with the highest confidence; ties go to the lowest category index (so the result
/// does not depend on floating-point noise in the order of equal scores).
///
/// Errors: no categories, or a non-finite confidence (the message names item and category).
pub fn hard_labels(confidences: ArrayView2<f64>) -> Result<Vec<usize>> {
    if confidences.ncols() == 0 {
        return Err(Error::Invalid(
            "soft labels: expected at least one category column, found none".into(),
        ));
    }
    confidences
        .rows()
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let mut best = 0;
            for (j, &c) in row.iter().enumerate() {
                if !c.is_finite() {
                    return Err(Error::Invalid(format!(
                        "soft labels: item {i}, category {j}: expected a finite confidence, found {c}"
                    )));
                }
                if c > row[best] {
                    best = j;
                }
            }
            Ok(best)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    /// The textbook 2 × 2 table: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no.
    fn textbook_labels() -> (Vec<usize>, Vec<usize>) {
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (x, y, n) in [(0, 0, 20), (0, 1, 5), (1, 0, 10), (1, 1, 15)] {
            a.extend(std::iter::repeat_n(x, n));
            b.extend(std::iter::repeat_n(y, n));
        }
        (a, b)
    }

    #[test]
    fn cohen_kappa_of_the_textbook_table_is_point_four() {
        let (a, b) = textbook_labels();
        let (k, per, cm) = cohen_kappa(&a, &b, 2).unwrap();
        assert_eq!(cm.counts, array![[20, 5], [10, 15]]);
        assert_eq!(k.n_items, 50);
        assert_abs_diff_eq!(k.observed_agreement, 0.7, epsilon = 1e-15);
        assert_abs_diff_eq!(k.expected_agreement, 0.5, epsilon = 1e-15);
        assert_abs_diff_eq!(k.kappa, 0.4, epsilon = 1e-15);
        // with two categories, one-vs-rest is the table itself (or its mirror)
        for kj in per {
            assert_abs_diff_eq!(kj.kappa, 0.4, epsilon = 1e-15);
        }
    }

    #[test]
    fn fleiss_kappa_of_the_fleiss_textbook_table() {
        // Wikipedia's "Fleiss' kappa" worked example: 10 items, 5 categories, 14 raters
        let t: Array2<u64> = array![
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7]
        ];
        let f = fleiss_kappa(t.view()).unwrap();
        assert_eq!((f.n_items, f.n_raters, f.n_categories), (10, 14, 5));
        assert_abs_diff_eq!(f.mean_agreement, 0.378, epsilon = 5e-4);
        assert_abs_diff_eq!(f.expected_agreement, 0.213, epsilon = 5e-4);
        assert_abs_diff_eq!(f.kappa, 0.210, epsilon = 5e-4);
        assert_abs_diff_eq!(f.category_proportions[0], 0.143, epsilon = 5e-4);
        // κ is the p_j q_j-weighted mean of the κ_j
        let w: Vec<f64> = f.category_proportions.iter().map(|p| p * (1.0 - p)).collect();
        let mean = w.iter().zip(&f.per_category).map(|(w, k)| w * k).sum::<f64>() / w.iter().sum::<f64>();
        assert_abs_diff_eq!(mean, f.kappa, epsilon = 1e-14);
    }

    #[test]
    fn perfect_agreement_gives_kappa_one_and_bootstrap_is_reproducible() {
        let a: Vec<usize> = (0..40).map(|i| i % 4).collect();
        let (k, per, _) = cohen_kappa(&a, &a, 4).unwrap();
        assert_eq!(k.kappa, 1.0);
        assert!(per.iter().all(|k| k.kappa == 1.0));
        let (_, b) = textbook_labels();
        let (a2, _) = textbook_labels();
        let x = cohen_kappa_bootstrap(&a2, &b, 2, 500, 0.95, 3).unwrap();
        let y = cohen_kappa_bootstrap(&a2, &b, 2, 500, 0.95, 3).unwrap();
        assert_eq!(x, y);
        assert!(x.overall.lower < 0.4 && 0.4 < x.overall.upper);
        assert_eq!(x.overall.n_units, 50);
    }

    #[test]
    fn labels_out_of_range_and_unequal_raters_are_errors_that_say_where() {
        let e = confusion_matrix(&[0, 1, 5], &[0, 1, 1], 3).unwrap_err().to_string();
        assert!(e.contains("source a, item 2") && e.contains("found 5"), "{e}");
        let e = fleiss_kappa(array![[1u64, 1], [2, 1]].view()).unwrap_err().to_string();
        assert!(e.contains("found 3 for item 1"), "{e}");
    }

    #[test]
    fn soft_labels_take_the_argmax_with_ties_to_the_lowest_index() {
        let c = array![[0.1, 0.7, 0.2], [0.4, 0.4, 0.2], [0.0, 0.3, 0.3]];
        assert_eq!(hard_labels(c.view()).unwrap(), vec![1, 0, 1]);
        let e = hard_labels(array![[0.1, f64::NAN]].view()).unwrap_err().to_string();
        assert!(e.contains("item 0, category 1"), "{e}");
    }
}
