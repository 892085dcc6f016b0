//! Variance partitioning and Shapley values over groups of features (METHOD.md §5).
//!
//! Input: a *value function* v(S) giving the held-out R² per target of a model fitted on the
//! feature groups in S (a bit mask over `n_groups` ≤ 63 groups), with v(∅) = 0 by definition.
//! [`nested_cv_r2`] is the standard one (nested-CV ridge on the columns of S); any other
//! (e.g. banded ridge) can be passed. Values are cached per subset, so each model is fitted once.
//!
//! * [`variance_partition`]: unique(g) = v(all) − v(all ∖ {g}); shared = v(all) − Σ_g unique(g)
//!   (k + 1 model fits).
//! * [`shapley_exact`]: φ_g = Σ_{S ∌ g} |S|!(k−|S|−1)!/k! · (v(S ∪ {g}) − v(S)) over all 2^k
//!   subsets (k ≤ [`MAX_EXACT_GROUPS`]). The φ_g sum to v(all) (efficiency).
//! * [`shapley_monte_carlo`]: the mean over random orderings of the marginal gain of g when it
//!   joins the groups before it, with a standard error per (group, target) and a convergence trace
//!   (the estimate after every batch of orderings); stops when the largest standard error of the
//!   target-averaged φ falls below `tolerance` or after `max_orderings`. Each ordering also
//!   satisfies efficiency exactly, so the estimates always sum to v(all).
//!
//! Outputs are (n_groups, n_targets) arrays of R² (unitless), in group order.

use std::collections::HashMap;

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::folds::Fold;
use super::ridge::nested_cv_ridge_with;
use super::AlphaCriterion;
use crate::stats::SplitMix64;
use crate::{Error, Result};

/// Largest number of groups for which [`shapley_exact`] enumerates all subsets.
pub const MAX_EXACT_GROUPS: usize = 16;

/// A subset of feature groups: bit g set ⇔ group g included.
pub type GroupMask = u64;

/// v(S) with a cache: each subset's model is fitted once.
pub struct ValueCache<F: FnMut(GroupMask) -> Result<Vec<f64>>> {
    n_groups: usize,
    n_targets: Option<usize>,
    value: F,
    cache: HashMap<GroupMask, Vec<f64>>,
}

impl<F: FnMut(GroupMask) -> Result<Vec<f64>>> ValueCache<F> {
    /// Wraps `value` (called only for non-empty subsets; v(∅) = 0).
    pub fn new(n_groups: usize, value: F) -> Result<Self> {
        if n_groups == 0 || n_groups > 63 {
            return Err(Error::Invalid(format!(
                "variance partition: expected 1 to 63 feature groups, found {n_groups}"
            )));
        }
        Ok(ValueCache {
            n_groups,
            n_targets: None,
            value,
            cache: HashMap::new(),
        })
    }

    pub fn n_groups(&self) -> usize {
        self.n_groups
    }

    /// Number of distinct subsets fitted so far.
    pub fn n_fitted(&self) -> usize {
        self.cache.len()
    }

    fn full(&self) -> GroupMask {
        if self.n_groups == 64 {
            u64::MAX
        } else {
            (1u64 << self.n_groups) - 1
        }
    }

    /// v(S) per target.
    pub fn get(&mut self, s: GroupMask) -> Result<Vec<f64>> {
        if s == 0 {
            let t = match self.n_targets {
                Some(t) => t,
                None => self.get(self.full())?.len(),
            };
            return Ok(vec![0.0; t]);
        }
        if let Some(v) = self.cache.get(&s) {
            return Ok(v.clone());
        }
        let v = (self.value)(s)?;
        match self.n_targets {
            None => self.n_targets = Some(v.len()),
            Some(t) if t != v.len() => {
                return Err(Error::Invalid(format!(
                    "variance partition: value function gave {} targets for subset {s:#b}, {t} before",
                    v.len()
                )))
            }
            _ => {}
        }
        self.cache.insert(s, v.clone());
        Ok(v)
    }
}

/// Result of [`variance_partition`].
#[derive(Debug, Clone)]
pub struct VariancePartition {
    /// (n_targets): v(all groups).
    pub r2_full: Vec<f64>,
    /// (n_groups, n_targets): v(all) − v(all ∖ {g}).
    pub unique: Array2<f64>,
    /// (n_targets): v(all) − Σ_g unique(g).
    pub shared: Vec<f64>,
}

/// Unique and shared R² of every group (k + 1 fits).
pub fn variance_partition<F: FnMut(GroupMask) -> Result<Vec<f64>>>(v: &mut ValueCache<F>) -> Result<VariancePartition> {
    let full = v.full();
    let r2_full = v.get(full)?;
    let t = r2_full.len();
    let mut unique = Array2::<f64>::zeros((v.n_groups, t));
    for g in 0..v.n_groups {
        let without = v.get(full & !(1u64 << g))?;
        for j in 0..t {
            unique[[g, j]] = r2_full[j] - without[j];
        }
    }
    let shared = (0..t).map(|j| r2_full[j] - unique.column(j).sum()).collect();
    Ok(VariancePartition {
        r2_full,
        unique,
        shared,
    })
}

/// Exact Shapley values (n_groups, n_targets) by enumerating all 2^k subsets.
pub fn shapley_exact<F: FnMut(GroupMask) -> Result<Vec<f64>>>(v: &mut ValueCache<F>) -> Result<Array2<f64>> {
    let k = v.n_groups;
    if k > MAX_EXACT_GROUPS {
        return Err(Error::Invalid(format!(
            "exact Shapley values: {k} groups need 2^{k} fits; use shapley_monte_carlo (at most {MAX_EXACT_GROUPS} \
             groups here)"
        )));
    }
    let t = v.get(v.full())?.len();
    // weight of a coalition of size s: s!(k−s−1)!/k!
    let fact = |n: usize| (1..=n).fold(1.0f64, |a, b| a * b as f64);
    let weight: Vec<f64> = (0..k).map(|s| fact(s) * fact(k - s - 1) / fact(k)).collect();
    let mut phi = Array2::<f64>::zeros((k, t));
    for s in 0..(1u64 << k) {
        let vs = v.get(s)?;
        for g in 0..k {
            if s & (1 << g) != 0 {
                continue;
            }
            let with = v.get(s | (1 << g))?;
            let w = weight[s.count_ones() as usize];
            for j in 0..t {
                phi[[g, j]] += w * (with[j] - vs[j]);
            }
        }
    }
    Ok(phi)
}

/// Result of [`shapley_monte_carlo`].
#[derive(Debug, Clone)]
pub struct ShapleyEstimate {
    /// (n_groups, n_targets): mean marginal gain over the sampled orderings.
    pub phi: Array2<f64>,
    /// (n_groups, n_targets): standard error of `phi` (sd of the marginal gains / √orderings).
    pub se: Array2<f64>,
    /// Orderings sampled.
    pub n_orderings: usize,
    /// Distinct subsets fitted.
    pub n_fits: usize,
    /// Whether the stopping tolerance was reached before `max_orderings`.
    pub converged: bool,
    /// After each batch: (orderings so far, target-mean φ per group, max over groups of the
    /// standard error of the target-mean φ).
    pub trace: Vec<(usize, Vec<f64>, f64)>,
}

/// Monte Carlo Shapley values over random orderings (see the module doc). `batch` orderings are
/// drawn between convergence checks; orderings come from `seed` alone (Fisher–Yates with
/// [`SplitMix64`]), so the estimate is reproducible.
pub fn shapley_monte_carlo<F: FnMut(GroupMask) -> Result<Vec<f64>>>(
    v: &mut ValueCache<F>,
    max_orderings: usize,
    batch: usize,
    tolerance: f64,
    seed: u64,
) -> Result<ShapleyEstimate> {
    if max_orderings < 2 || batch == 0 {
        return Err(Error::Invalid(format!(
            "Monte Carlo Shapley: expected max_orderings >= 2 and batch >= 1, found {max_orderings} and {batch}"
        )));
    }
    let k = v.n_groups;
    let t = v.get(v.full())?.len();
    let mut rng = SplitMix64::new(seed);
    let (mut sum, mut sum_sq) = (Array2::<f64>::zeros((k, t)), Array2::<f64>::zeros((k, t)));
    // per ordering, the target-mean gain of each group (for the convergence criterion)
    let (mut msum, mut msum_sq) = (Array1::<f64>::zeros(k), Array1::<f64>::zeros(k));
    let mut n = 0usize;
    let mut trace = Vec::new();
    let mut converged = false;
    while n < max_orderings {
        for _ in 0..batch.min(max_orderings - n) {
            let mut order: Vec<usize> = (0..k).collect();
            for i in (1..k).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let mut s: GroupMask = 0;
            let mut prev = v.get(0)?;
            for &g in &order {
                s |= 1 << g;
                let cur = v.get(s)?;
                let mut mean_gain = 0.0;
                for j in 0..t {
                    let d = cur[j] - prev[j];
                    sum[[g, j]] += d;
                    sum_sq[[g, j]] += d * d;
                    mean_gain += d;
                }
                mean_gain /= t as f64;
                msum[g] += mean_gain;
                msum_sq[g] += mean_gain * mean_gain;
                prev = cur;
            }
            n += 1;
        }
        let nf = n as f64;
        let max_se = (0..k).map(|g| se_of(msum[g], msum_sq[g], nf)).fold(0.0, f64::max);
        trace.push((n, (msum.clone() / nf).to_vec(), max_se));
        if n >= 2 && max_se <= tolerance {
            converged = true;
            break;
        }
    }
    let nf = n as f64;
    let phi = &sum / nf;
    let mut se = Array2::<f64>::zeros((k, t));
    for ((g, j), e) in se.indexed_iter_mut() {
        *e = se_of(sum[[g, j]], sum_sq[[g, j]], nf);
    }
    Ok(ShapleyEstimate {
        phi,
        se,
        n_orderings: n,
        n_fits: v.n_fitted(),
        converged,
        trace,
    })
}

/// Standard error of a mean from the running sum and sum of squares of `n` values (sample sd).
fn se_of(sum: f64, sum_sq: f64, n: f64) -> f64 {
    if n < 2.0 {
        return f64::INFINITY;
    }
    let var = ((sum_sq - sum * sum / n) / (n - 1.0)).max(0.0);
    (var / n).sqrt()
}

/// The standard value function: held-out R² per target of nested-CV ridge (see
/// [`nested_cv_ridge_with`]) on the columns of `x` belonging to the groups in S, over the rows
/// tested by the `outer` folds. `groups[c]` is the group of column `c`.
pub fn nested_cv_r2<'a>(
    x: ArrayView2<'a, f64>,
    y: ArrayView2<'a, f64>,
    groups: &[usize],
    alphas: &[f64],
    outer: &[Fold],
    inner_n_folds: usize,
    gap: usize,
) -> impl FnMut(GroupMask) -> Result<Vec<f64>> + 'a {
    let groups = groups.to_vec();
    let alphas = alphas.to_vec();
    let outer = outer.to_vec();
    move |s: GroupMask| {
        if groups.len() != x.ncols() {
            return Err(Error::Invalid(format!(
                "variance partition: {} group labels for {} design columns",
                groups.len(),
                x.ncols()
            )));
        }
        let cols: Vec<usize> = (0..x.ncols()).filter(|&c| s & (1 << groups[c]) != 0).collect();
        if cols.is_empty() {
            return Err(Error::Invalid(format!(
                "variance partition: subset {s:#b} has no columns"
            )));
        }
        let xs = x.select(Axis(1), &cols);
        let fit = nested_cv_ridge_with(xs.view(), y, &alphas, &outer, inner_n_folds, gap, AlphaCriterion::R2)?;
        let pred = fit.predictions.select(Axis(0), &fit.tested_rows);
        let obs = y.select(Axis(0), &fit.tested_rows);
        Ok(super::stats::r2_per_target(pred.view(), obs.view()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    /// An additive game plus an interaction between groups 0 and 1 (two targets).
    fn game(s: GroupMask) -> Result<Vec<f64>> {
        let has = |g: u32| (s >> g) & 1 == 1;
        let base = [0.3, 0.2, 0.1];
        let mut v = [0.0, 0.0];
        for g in 0..3 {
            if has(g) {
                v[0] += base[g as usize];
                v[1] += 2.0 * base[g as usize];
            }
        }
        if has(0) && has(1) {
            v[0] -= 0.1; // overlap: the two groups share 0.1
        }
        Ok(v.to_vec())
    }

    #[test]
    fn partition_of_a_game_with_overlap_gives_its_unique_and_shared_parts() {
        let mut v = ValueCache::new(3, game).unwrap();
        let p = variance_partition(&mut v).unwrap();
        assert_abs_diff_eq!(p.r2_full[0], 0.5, epsilon = 1e-12);
        assert_abs_diff_eq!(p.unique[[0, 0]], 0.2, epsilon = 1e-12);
        assert_abs_diff_eq!(p.unique[[1, 0]], 0.1, epsilon = 1e-12);
        assert_abs_diff_eq!(p.unique[[2, 0]], 0.1, epsilon = 1e-12);
        assert_abs_diff_eq!(p.shared[0], 0.1, epsilon = 1e-12);
        assert_abs_diff_eq!(p.shared[1], 0.0, epsilon = 1e-12);
        assert_eq!(v.n_fitted(), 4);
    }

    #[test]
    fn exact_shapley_splits_an_overlap_evenly_and_sums_to_the_full_value() {
        let mut v = ValueCache::new(3, game).unwrap();
        let phi = shapley_exact(&mut v).unwrap();
        // symmetric overlap of 0.1 between groups 0 and 1: each loses 0.05
        assert_abs_diff_eq!(phi[[0, 0]], 0.25, epsilon = 1e-12);
        assert_abs_diff_eq!(phi[[1, 0]], 0.15, epsilon = 1e-12);
        assert_abs_diff_eq!(phi[[2, 0]], 0.1, epsilon = 1e-12);
        assert_abs_diff_eq!(phi.column(1).sum(), 1.2, epsilon = 1e-12);
    }

    #[test]
    fn monte_carlo_shapley_converges_to_the_exact_values_and_is_reproducible() {
        let mut v = ValueCache::new(3, game).unwrap();
        let exact = shapley_exact(&mut v).unwrap();
        let mc = shapley_monte_carlo(&mut v, 4000, 100, 1e-3, 5).unwrap();
        assert!(mc.converged, "trace: {:?}", mc.trace.last());
        for g in 0..3 {
            for j in 0..2 {
                assert!((mc.phi[[g, j]] - exact[[g, j]]).abs() <= 4.0 * mc.se[[g, j]] + 1e-12);
            }
        }
        // efficiency holds ordering by ordering
        assert_abs_diff_eq!(mc.phi.column(0).sum(), 0.5, epsilon = 1e-12);
        let again = shapley_monte_carlo(&mut v, 4000, 100, 1e-3, 5).unwrap();
        assert_eq!(mc.phi, again.phi);
    }

    #[test]
    fn too_many_groups_for_exact_enumeration_is_an_error_that_points_to_monte_carlo() {
        let mut v = ValueCache::new(20, |_| Ok(vec![0.0])).unwrap();
        let e = shapley_exact(&mut v).unwrap_err().to_string();
        assert!(e.contains("shapley_monte_carlo"), "{e}");
        assert!(ValueCache::new(0, |_| Ok(vec![0.0])).is_err());
    }
}
