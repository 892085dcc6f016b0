//! Simulated data with planted subcategory → region weights (the paper's Table 16 pattern): the
//! encoding fits of each subcategory's feature subset, per subject and ROI, give an observed
//! matrix whose convergence test recovers the planted matrix, and a variance-matched random
//! baseline predicts less than the planted semantic set (METHOD.md §6, §7).

use crate::support;

use cortexflow::encoding::{contiguous_block_folds, nested_cv_ridge};
use cortexflow::outputs::taxonomy_tables::specificity_tests;
use cortexflow::stats::SplitMix64;
use cortexflow::taxonomy::baselines::variance_matched;
use cortexflow::topography::{topography_report, TopographySettings};
use ndarray::{Array2, Array3, Axis};

#[test]
fn planted_topography_is_recovered_and_variance_matched_baseline_is_lower() {
    let (n_trs, per_sub, n_other, n_subjects, rois_per_region) = (240, 12, 60, 10, 2);
    let n_sem = 5 * per_sub;
    let n_feat = n_sem + n_other;
    let alphas: Vec<f64> = (0..7).map(|i| 10f64.powi(i - 1)).collect();
    let outer = contiguous_block_folds(n_trs, 4, 3).unwrap();
    let mut rng = SplitMix64::new(42);
    // features: semantic ones (subcategory a owns columns a*per_sub..) with unit-scale sparse
    // activity, the others weaker (so variance matching needs more of them)
    let x = Array2::from_shape_fn((n_trs, n_feat), |(_, j)| {
        let v = rng.normal().max(0.0);
        if j < n_sem {
            v
        } else {
            0.6 * v
        }
    });
    let variances: Vec<f64> = x
        .columns()
        .into_iter()
        .map(|c| {
            let m = c.mean().unwrap();
            c.iter().map(|v| (v - m).powi(2)).sum::<f64>() / c.len() as f64
        })
        .collect();
    let pred = support::table16();
    let mut per = Array3::<f64>::zeros((n_subjects, 5, 5));
    let (mut r_sem, mut r_var) = (0.0, 0.0);
    let semantic: Vec<usize> = (0..n_sem).collect();
    for s in 0..n_subjects {
        // ROI responses: region b sums each subcategory's drive with planted weight 0.15 + pred
        let drive: Vec<ndarray::Array1<f64>> = (0..5)
            .map(|a| {
                let w: Vec<f64> = (0..per_sub).map(|_| 0.5 + rng.next_f64()).collect();
                let cols = x.slice(ndarray::s![.., a * per_sub..(a + 1) * per_sub]);
                cols.dot(&ndarray::Array1::from(w))
            })
            .collect();
        let mut y = Array2::<f64>::zeros((n_trs, 5 * rois_per_region));
        for b in 0..5 {
            for k in 0..rois_per_region {
                let mut col = y.column_mut(b * rois_per_region + k);
                for a in 0..5 {
                    col.scaled_add(0.15 + pred[[a, b]], &drive[a]);
                }
                for v in col.iter_mut() {
                    *v += 6.0 * rng.normal();
                }
            }
        }
        let fit = |cols: &[usize]| -> Vec<f64> {
            let xs = x.select(Axis(1), cols);
            let res = nested_cv_ridge(xs.view(), y.view(), &alphas, &outer, 3, 3).unwrap();
            res.r_per_fold.mean_axis(Axis(0)).unwrap().to_vec()
        };
        for a in 0..5 {
            let cols: Vec<usize> = (a * per_sub..(a + 1) * per_sub).collect();
            let r = fit(&cols);
            for b in 0..5 {
                per[[s, a, b]] =
                    (0..rois_per_region).map(|k| r[b * rois_per_region + k]).sum::<f64>() / rois_per_region as f64;
            }
        }
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        r_sem += mean(fit(&semantic)) / n_subjects as f64;
        let target: f64 = semantic.iter().map(|&j| variances[j]).sum();
        let mut rv = 0.0;
        for seed in 0..10 {
            rv += mean(fit(&variance_matched(&variances, target, 100 + seed))) / 10.0;
        }
        r_var += rv / n_subjects as f64;
    }
    let observed = per.mean_axis(Axis(0)).unwrap();
    let (_, p_cell, flips) = specificity_tests(per.view(), 10_000, 1);
    assert_eq!(flips, 1 << n_subjects, "exact sign flips for 10 subjects");
    let settings = TopographySettings {
        n_perm: 2000,
        n_boot: 1000,
        ci_level: 0.95,
        fdr_q: 0.05,
        seed: 3,
        same_labels: false,
    };
    let rep = topography_report(
        observed.view(),
        pred.view(),
        Some(p_cell.view()),
        Some(per.view()),
        &settings,
    )
    .unwrap();
    eprintln!(
        "observed:\n{observed:.3}\nrho {} p {}; semantic r {r_sem:.4} vs variance-matched {r_var:.4}",
        rep.spearman.value, rep.spearman.p_value
    );
    assert!(rep.spearman.value >= 0.8, "rho {}", rep.spearman.value);
    assert!(rep.spearman.p_value < 0.01, "p {}", rep.spearman.p_value);
    let overlap = rep.overlap.as_ref().expect("per-cell p given");
    assert!(
        overlap.hypergeometric.p_upper < 0.05,
        "overlap {:?}",
        overlap.hypergeometric
    );
    assert!(r_var < r_sem, "variance-matched {r_var} vs semantic {r_sem}");
}
