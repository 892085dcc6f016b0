//! Recovery of known truth through the whole encoding chain: random words → HRF-convolved,
//! TR-averaged design → simulated BOLD (planted weights, AR(1) noise, chosen SNR) → nested-CV
//! ridge → held-out r against the noise-free ceiling; variance partitioning and Shapley values
//! against the planted group shares.
//!
//! Criteria (issue "Encoding models at the scale of real fMRI datasets"): mean held-out r within
//! 0.02 of the mean noise-free ceiling; unique R² per group within 0.02 of the planted share.

use crate::support;

use cortexflow::encoding::partition::{nested_cv_r2, shapley_exact, variance_partition, ValueCache};
use cortexflow::encoding::simulate::{simulate_responses, SimulationOptions};
use cortexflow::encoding::{contiguous_block_folds, default_alphas, nested_cv_ridge};
use cortexflow::features::{words_to_trs, zscore, TrGrid, DEFAULT_DT_S};
use cortexflow::stats::SplitMix64;
use ndarray::Array2;

/// `n_words` random words over `n_trs` TRs of 2 s, `n_features` standard-normal features each,
/// aligned the paper's way and z-scored: (n_trs, n_features).
fn hrf_design(n_trs: usize, n_words: usize, n_features: usize, seed: u64) -> Array2<f64> {
    let mut rng = SplitMix64::new(seed);
    let mut onsets: Vec<f64> = (0..n_words).map(|_| rng.next_f64() * n_trs as f64 * 2.0).collect();
    onsets.sort_by(f64::total_cmp);
    let values = Array2::from_shape_simple_fn((n_words, n_features), || rng.normal());
    let grid = TrGrid::new(n_trs, 2.0, 0.0).unwrap();
    zscore(words_to_trs(&onsets, values.view(), &grid, DEFAULT_DT_S).view())
}

#[test]
fn held_out_r_reaches_the_noise_free_ceiling() {
    let x = hrf_design(3000, 6000, 12, 1);
    let sim = simulate_responses(
        x.view(),
        &SimulationOptions {
            n_targets: 40,
            snr: 0.5,
            seed: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let outer = contiguous_block_folds(3000, 5, 5).unwrap();
    let fit = nested_cv_ridge(x.view(), sim.responses.view(), &default_alphas(), &outer, 4, 5).unwrap();
    let n = sim.ceiling_r.len() as f64;
    let mean_r = fit.r_per_target.iter().sum::<f64>() / n;
    let mean_ceiling = sim.ceiling_r.iter().sum::<f64>() / n;
    let worst = (0..sim.ceiling_r.len())
        .map(|j| sim.ceiling_r[j] - fit.r_per_target[j])
        .fold(f64::NEG_INFINITY, f64::max);
    println!("mean held-out r {mean_r:.4}, mean ceiling {mean_ceiling:.4}, largest per-target shortfall {worst:.4}");
    assert!(
        mean_r <= mean_ceiling + 0.01,
        "held-out r above the ceiling: {mean_r} vs {mean_ceiling}"
    );
    assert!(
        mean_ceiling - mean_r <= 0.02,
        "held-out r {mean_r} is more than 0.02 below the ceiling {mean_ceiling}"
    );
}

#[test]
fn variance_partitioning_and_shapley_values_recover_planted_group_shares() {
    let groups: Vec<usize> = (0..18).map(|c| c / 6).collect(); // 3 groups of 6 features
    let x = hrf_design(5000, 10000, 18, 3);
    let sim = simulate_responses(
        x.view(),
        &SimulationOptions {
            n_targets: 20,
            snr: 1.0,
            groups: groups.clone(),
            group_shares: vec![0.5, 0.3, 0.2],
            seed: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let outer = contiguous_block_folds(5000, 5, 5).unwrap();
    let alphas = default_alphas();
    let value = nested_cv_r2(x.view(), sim.responses.view(), &groups, &alphas, &outer, 4, 5);
    let mut v = ValueCache::new(3, value).unwrap();
    let part = variance_partition(&mut v).unwrap();
    let phi = shapley_exact(&mut v).unwrap();
    let t = 20.0;
    for g in 0..3 {
        let planted = sim.group_r2.row(g).sum() / t;
        let unique = part.unique.row(g).sum() / t;
        let shap = phi.row(g).sum() / t;
        println!("group {g}: planted R² share {planted:.4}, unique {unique:.4}, Shapley {shap:.4}");
        assert!(
            (unique - planted).abs() <= 0.02,
            "group {g}: unique {unique} vs planted {planted}"
        );
        assert!(
            (shap - planted).abs() <= 0.02,
            "group {g}: Shapley {shap} vs planted {planted}"
        );
    }
    let shared = part.shared.iter().sum::<f64>() / t;
    println!("shared {shared:.4}; {} subsets fitted", v.n_fitted());
    assert!(
        shared.abs() <= 0.02,
        "independent groups should share ~nothing, found {shared}"
    );
    assert_eq!(v.n_fitted(), 7, "2^3 − 1 non-empty subsets, each fitted once");
}

#[test]
fn simulate_then_ridge_from_the_command_line_recovers_the_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = support::bin()
        .args([
            "simulate",
            "--n-trs",
            "1600",
            "--n-words",
            "3200",
            "--n-features",
            "8",
            "--snr",
            "1.0",
        ])
        .args(["--n-targets", "30", "--seed", "9", "--out", d.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // first 1200 TRs to train (5-fold CV inside), last 400 to test, 10 TRs dropped in between
    let x = cortexflow::store::read_npy(&d.join("design.npy")).unwrap();
    let y = cortexflow::store::read_npy(&d.join("responses.npy")).unwrap();
    let signal = cortexflow::store::read_npy(&d.join("signal.npy")).unwrap();
    for (name, m, rows) in [
        ("x", &x, 0..1200),
        ("y", &y, 0..1200),
        ("xt", &x, 1210..1600),
        ("yt", &y, 1210..1600),
    ] {
        let part = m.slice(ndarray::s![rows, ..]).to_owned();
        cortexflow::store::write_npy(&d.join(format!("{name}.npy")), part.view()).unwrap();
    }
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let out = support::bin()
        .args([
            "ridge",
            "--x",
            &p("x.npy"),
            "--y",
            &p("y.npy"),
            "--x-test",
            &p("xt.npy"),
            "--y-test",
            &p("yt.npy"),
        ])
        .args([
            "--criterion",
            "r2",
            "--gap",
            "5",
            "--zscore",
            "--out",
            &p("fit.parquet"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, batches, _) = cortexflow::store::read_parquet(&d.join("fit.parquet")).unwrap();
    let r = batches[0].column_by_name("test_r").unwrap();
    let r = r.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
    // the ceiling on the same test rows
    let n = 30;
    let mut gap = 0.0;
    for j in 0..n {
        let s: Vec<f64> = (1210..1600).map(|i| signal[[i, j]]).collect();
        let o: Vec<f64> = (1210..1600).map(|i| y[[i, j]]).collect();
        gap += cortexflow::stats::pearson(&s, &o) - r.value(j);
    }
    gap /= n as f64;
    println!("mean (ceiling − held-out r) on the test rows: {gap:.4}");
    assert!(gap.abs() <= 0.02, "held-out r misses the test-row ceiling by {gap}");
}
