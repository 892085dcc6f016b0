//! Feature subsets and baselines the paper's claims are tested against (METHOD.md §6, §10):
//! categories and subcategories; count-matched random subsets (as many features as the semantic
//! set); variance-matched random subsets (random features added until their summed activation
//! variance reaches the semantic set's); PCA of the full SAE design with as many components as
//! the semantic set has features (capped at the rank); a Gaussian random projection of the full
//! SAE design to the semantic set's participation-ratio dimension; the SAE's reconstruction error
//! alone; and mean-ablation of a category in the reconstruction.
//!
//! Random subsets draw from the *eligible* features of the layer (those the labeller's activity
//! rule admits, the rule the semantic set passed: never dead or never-active features), without
//! replacement, one seeded draw per seed; identical for any worker count. PCA is fitted inside
//! each outer fold of the encoding fit (`encoding::DesignTransform::Pca`), not here.

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::stats::SplitMix64;
use crate::{Error, Result};

/// How a feature set's design is derived from the layer's artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SetSpec {
    /// These columns (features) of the full SAE design.
    Columns(Vec<usize>),
    /// Top-k principal-component scores of the full SAE design (TR × features).
    Pca { k: usize },
    /// The full SAE design times a seeded Gaussian matrix (features × dim), scaled by 1/√dim.
    RandomProjection { dim: usize, seed: u64 },
    /// Word-level x − x̂ (what the SAE does not reconstruct).
    Error,
    /// Word-level reconstruction with these features replaced by their mean over the story.
    Ablate(Vec<usize>),
}

/// One feature set of a layer, with what it was matched on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSetDef {
    /// Name used as the feature set in fits and summaries (e.g. "sae:semantic").
    pub name: String,
    /// "category", "subcategory", "count-matched", "variance-matched", "pca",
    /// "random-projection", "sae-error", "recon-ablated".
    pub kind: String,
    pub spec: SetSpec,
    /// Features (or components, or dimensions) in the set.
    pub n_features: usize,
    /// Share of the layer's summed activation variance (subsets only).
    pub variance_share: Option<f64>,
    pub seed: Option<u64>,
    pub note: String,
}

/// `n` distinct features of `0..n_total`, drawn with a seeded partial Fisher–Yates, ascending.
pub fn count_matched(n_total: usize, n: usize, seed: u64) -> Vec<usize> {
    count_matched_from(&(0..n_total).collect::<Vec<_>>(), n, seed)
}

/// `n` distinct features of `pool` (the eligible features), drawn with a seeded partial
/// Fisher–Yates, ascending; all of `pool` when it has no more than `n`. With `pool` = 0..n_total
/// the draw is [`count_matched`]'s.
pub fn count_matched_from(pool: &[usize], n: usize, seed: u64) -> Vec<usize> {
    let n_pool = pool.len();
    let n = n.min(n_pool);
    let mut rng = SplitMix64::new(seed);
    let mut idx = pool.to_vec();
    for k in 0..n {
        let j = k + rng.below((n_pool - k) as u64) as usize;
        idx.swap(k, j);
    }
    let mut out = idx[..n].to_vec();
    out.sort_unstable();
    out
}

/// Features in a seeded random order, added until their summed variance reaches `target`
/// (the last one added crosses it), ascending. Zero-variance features are skipped.
pub fn variance_matched(variances: &[f64], target: f64, seed: u64) -> Vec<usize> {
    variance_matched_from(&(0..variances.len()).collect::<Vec<_>>(), variances, target, seed)
}

/// [`variance_matched`] drawing only from `pool` (the eligible features); `variances` is indexed
/// by feature. With `pool` = all features the draw is [`variance_matched`]'s.
pub fn variance_matched_from(pool: &[usize], variances: &[f64], target: f64, seed: u64) -> Vec<usize> {
    let n = pool.len();
    let order = {
        let mut rng = SplitMix64::new(seed);
        let mut idx = pool.to_vec();
        for k in 0..n.saturating_sub(1) {
            let j = k + rng.below((n - k) as u64) as usize;
            idx.swap(k, j);
        }
        idx
    };
    let mut out = Vec::new();
    let mut sum = 0.0;
    for j in order {
        if sum >= target {
            break;
        }
        if variances[j] > 0.0 {
            out.push(j);
            sum += variances[j];
        }
    }
    out.sort_unstable();
    out
}

/// Share of the summed variance that `subset` holds.
pub fn variance_share(variances: &[f64], subset: &[usize]) -> f64 {
    let total: f64 = variances.iter().sum();
    subset.iter().map(|&j| variances[j]).sum::<f64>() / total
}

/// Top-`k` principal-component scores of the columns of `x` (n × p), from the eigendecomposition
/// of the n × n Gram matrix of the centred data (scores = U Σ). Returns the scores (n × r,
/// r = min(k, rank)) and the explained-variance share. Component signs: largest |entry| of each
/// score vector positive.
pub fn pca_scores(x: ArrayView2<'_, f64>, k: usize) -> Result<(Array2<f64>, f64)> {
    let n = x.nrows();
    let mean = x
        .mean_axis(Axis(0))
        .ok_or_else(|| Error::Invalid("PCA of an empty matrix".into()))?;
    let xc = &x - &mean;
    let g = xc.dot(&xc.t());
    let gm = faer::Mat::from_fn(n, n, |i, j| g[[i, j]]);
    let (lam, vecs) = crate::encoding::ridge::eigh_above_roundoff(gm.as_ref(), n, x.ncols(), "PCA Gram matrix")?;
    let total: f64 = g.diag().sum();
    let r = k.min(lam.len());
    let mut scores = Array2::<f64>::zeros((n, r));
    for c in 0..r {
        let s = lam[c].max(0.0).sqrt();
        let (mut best, mut sign) = (0.0f64, 1.0);
        for i in 0..n {
            if vecs[(i, c)].abs() > best {
                best = vecs[(i, c)].abs();
                sign = vecs[(i, c)].signum();
            }
        }
        for i in 0..n {
            scores[[i, c]] = sign * vecs[(i, c)] * s;
        }
    }
    let explained = if total > 0.0 {
        lam[..r].iter().sum::<f64>() / total
    } else {
        0.0
    };
    Ok((scores, explained))
}

/// `x` (n × p) times a seeded standard-normal matrix (p × dim) scaled by 1/√dim.
pub fn random_projection(x: ArrayView2<'_, f64>, dim: usize, seed: u64) -> Array2<f64> {
    let mut rng = SplitMix64::new(seed);
    let scale = 1.0 / (dim.max(1) as f64).sqrt();
    let r = Array2::from_shape_fn((x.ncols(), dim), |_| rng.normal() * scale);
    x.dot(&r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_subsets_are_seeded_distinct_and_matched() {
        let a = count_matched(100, 30, 7);
        assert_eq!(a.len(), 30);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a, count_matched(100, 30, 7));
        assert_ne!(a, count_matched(100, 30, 8));
        let var: Vec<f64> = (0..100).map(|i| (i % 7) as f64).collect();
        let target = 60.0;
        let v = variance_matched(&var, target, 3);
        let sum: f64 = v.iter().map(|&j| var[j]).sum();
        // crosses the target with its last feature, not before
        assert!(sum >= target && sum - v.iter().map(|&j| var[j]).fold(0.0, f64::max) < target + 6.0);
        assert!(v.iter().all(|&j| var[j] > 0.0));
    }

    #[test]
    fn random_subsets_from_a_pool_never_leave_it() {
        // every third feature eligible: draws stay inside, for many seeds
        let pool: Vec<usize> = (0..300).filter(|j| j % 3 == 0).collect();
        let var: Vec<f64> = (0..300).map(|j| 1.0 + (j % 5) as f64).collect();
        for seed in 0..50 {
            let c = count_matched_from(&pool, 40, seed);
            assert_eq!(c.len(), 40);
            assert!(c.iter().all(|j| j % 3 == 0), "seed {seed}: {c:?}");
            let v = variance_matched_from(&pool, &var, 100.0, seed);
            assert!(v.iter().all(|j| j % 3 == 0), "seed {seed}: {v:?}");
            assert!(v.iter().map(|&j| var[j]).sum::<f64>() >= 100.0);
        }
        // a pool smaller than the set: all of it
        assert_eq!(count_matched_from(&[4, 9], 5, 1), vec![4, 9]);
        // the full pool reproduces the unrestricted draws
        let all: Vec<usize> = (0..300).collect();
        assert_eq!(count_matched_from(&all, 40, 7), count_matched(300, 40, 7));
        assert_eq!(
            variance_matched_from(&all, &var, 100.0, 7),
            variance_matched(&var, 100.0, 7)
        );
    }

    #[test]
    fn pca_scores_reproduce_the_data_at_full_rank_and_order_variance() {
        let mut rng = SplitMix64::new(1);
        let x = Array2::from_shape_fn((12, 5), |_| rng.normal());
        let (s, ev) = pca_scores(x.view(), 5).unwrap();
        assert!((ev - 1.0).abs() < 1e-10);
        let var: Vec<f64> = s.columns().into_iter().map(|c| c.iter().map(|v| v * v).sum()).collect();
        assert!(var.windows(2).all(|w| w[0] >= w[1] - 1e-9));
        // scores are uncorrelated
        let g = s.t().dot(&s);
        for i in 0..5 {
            for j in 0..5 {
                if i != j {
                    assert!(g[[i, j]].abs() < 1e-8);
                }
            }
        }
        // the total variance is preserved
        let mean = x.mean_axis(Axis(0)).unwrap();
        let tot: f64 = (&x - &mean).iter().map(|v| v * v).sum();
        assert!((var.iter().sum::<f64>() - tot).abs() < 1e-8 * tot);
    }
}
