//! The encoding stage on simulated data with a known answer: responses Y = X W + noise at a chosen
//! SNR, nested block cross-validation, held-out r per target against the theoretical ceiling.
//!
//! Run: `cargo run --release --example ridge_simulated`.

use cortexflow::encoding::{contiguous_block_folds, log_alphas, nested_cv_ridge};
use cortexflow::stats::SplitMix64;
use ndarray::Array2;

fn main() -> anyhow::Result<()> {
    let (n_trs, n_features, n_targets, noise_sd) = (360, 40, 6, 1.0);
    let mut rng = SplitMix64::new(7);
    let x = Array2::from_shape_fn((n_trs, n_features), |_| rng.normal());
    let w = Array2::from_shape_fn((n_features, n_targets), |_| rng.normal() / (n_features as f64).sqrt());
    let y = x.dot(&w) + Array2::from_shape_fn((n_trs, n_targets), |_| noise_sd * rng.normal());
    let outer = contiguous_block_folds(n_trs, 5, 5)?;
    let res = nested_cv_ridge(x.view(), y.view(), &log_alphas(0.0, 6.0, 13), &outer, 4, 5)?;
    // signal variance per target is |w_j|² (unit-variance features), so the ceiling is
    // r* = sqrt(var_s / (var_s + noise²))
    for t in 0..n_targets {
        let var_s: f64 = w.column(t).iter().map(|v| v * v).sum();
        let ceiling = (var_s / (var_s + noise_sd * noise_sd)).sqrt();
        println!(
            "target {t}: held-out r {:.3} (ceiling {ceiling:.3})",
            res.r_per_target[t]
        );
    }
    Ok(())
}
