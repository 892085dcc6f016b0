//! Encoding engine: ridge solvers against independent reference implementations, fold invariants
//! by brute force, nested CV on simulated data with a known answer, and thread-count determinism.

use approx::assert_abs_diff_eq;
use cortexflow::encoding::{
    block_folds_within, contiguous_block_folds, default_alphas, leave_groups_out_folds, log_alphas, nested_cv_ridge,
    nested_cv_ridge_with, ridge_cv, ridge_cv_with, solve_ridge_svd, solve_ridge_with_method, AlphaCriterion, Fold,
    NestedCvResult, RidgeMethod,
};
use cortexflow::stats::SplitMix64;
use ndarray::{Array2, ArrayView2};

// ---------------------------------------------------------------- helpers

fn normal_matrix(rows: usize, cols: usize, rng: &mut SplitMix64) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.normal())
}

/// Solves A z = B (A square) by Gaussian elimination with partial pivoting: the reference solver,
/// sharing no code with the library (no faer, no SVD).
fn gauss_solve(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let mut a = a.clone();
    let mut b = b.clone();
    for c in 0..n {
        let piv = (c..n)
            .max_by(|&i, &j| a[[i, c]].abs().total_cmp(&a[[j, c]].abs()))
            .unwrap();
        for k in 0..n {
            a.swap([c, k], [piv, k]);
        }
        for k in 0..b.ncols() {
            b.swap([c, k], [piv, k]);
        }
        for i in c + 1..n {
            let f = a[[i, c]] / a[[c, c]];
            for k in c..n {
                a[[i, k]] -= f * a[[c, k]];
            }
            for k in 0..b.ncols() {
                b[[i, k]] -= f * b[[c, k]];
            }
        }
    }
    let mut z = Array2::<f64>::zeros(b.dim());
    for k in 0..b.ncols() {
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|j| a[[i, j]] * z[[j, k]]).sum();
            z[[i, k]] = (b[[i, k]] - s) / a[[i, i]];
        }
    }
    z
}

/// Naive ridge: (XᵀX + αI)⁻¹ XᵀY.
fn naive_ridge(x: ArrayView2<f64>, y: ArrayView2<f64>, alpha: f64) -> Array2<f64> {
    let mut gram = x.t().dot(&x);
    for i in 0..gram.nrows() {
        gram[[i, i]] += alpha;
    }
    gauss_solve(&gram, &x.t().dot(&y))
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(u, v)| (u - v).abs()).fold(0.0, f64::max)
}

/// Y = X W + noise: `n_signal` targets with unit-variance signal and noise sd `noise_sd`, then
/// `n_noise` targets of pure noise (independent of X).
fn simulate(
    n: usize,
    p: usize,
    n_signal: usize,
    n_noise: usize,
    noise_sd: f64,
    seed: u64,
) -> (Array2<f64>, Array2<f64>) {
    let mut rng = SplitMix64::new(seed);
    let x = normal_matrix(n, p, &mut rng);
    let mut w = normal_matrix(p, n_signal, &mut rng);
    for mut col in w.columns_mut() {
        let norm = col.dot(&col).sqrt();
        col /= norm; // signal variance 1 for every target (X has unit-variance columns)
    }
    let mut y = Array2::<f64>::zeros((n, n_signal + n_noise));
    let signal = x.dot(&w);
    for i in 0..n {
        for j in 0..n_signal + n_noise {
            let s = if j < n_signal { signal[[i, j]] } else { 0.0 };
            y[[i, j]] = s + noise_sd * rng.normal();
        }
    }
    (x, y)
}

fn assert_bit_identical(a: &NestedCvResult, b: &NestedCvResult) {
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
    assert_eq!(bits(&a.r_per_target), bits(&b.r_per_target));
    assert_eq!(
        bits(a.r_per_fold.as_slice().unwrap()),
        bits(b.r_per_fold.as_slice().unwrap())
    );
    assert_eq!(
        bits(a.alpha_per_fold.as_slice().unwrap()),
        bits(b.alpha_per_fold.as_slice().unwrap())
    );
    assert_eq!(
        bits(a.predictions.as_slice().unwrap()),
        bits(b.predictions.as_slice().unwrap())
    );
    assert_eq!(a.tested_rows, b.tested_rows);
}

// ---------------------------------------------------------------- ridge solvers

#[test]
fn ridge_with_a_vanishing_penalty_equals_least_squares_on_a_full_rank_tall_design() {
    let mut rng = SplitMix64::new(11);
    let x = normal_matrix(60, 8, &mut rng);
    let y = normal_matrix(60, 3, &mut rng);
    assert_eq!(
        solve_ridge_svd(x.view(), y.view(), &[1e-10]).unwrap().method(),
        RidgeMethod::Gram
    );
    for method in [RidgeMethod::Svd, RidgeMethod::Gram] {
        let path = solve_ridge_with_method(x.view(), y.view(), &[1e-10], method).unwrap();
        assert_eq!(path.method(), method);
        assert_eq!(path.rank(), 8);
        let w = path.weights(0).unwrap();
        // reference: the normal equations XᵀX w = Xᵀy solved by Gaussian elimination
        let w_ls = gauss_solve(&x.t().dot(&x), &x.t().dot(&y));
        let diff = max_abs_diff(&w, &w_ls);
        println!("{method:?}, alpha 1e-10 vs least squares: max |dW| = {diff:e}");
        assert!(diff < 1e-8, "max |W_ridge - W_ls| = {diff:e}");
        // least-squares residuals are orthogonal to the columns of X
        let resid = &y - &x.dot(&w);
        for v in x.t().dot(&resid) {
            assert_abs_diff_eq!(v, 0.0, epsilon = 1e-8);
        }
    }
}

#[test]
fn the_svd_path_equals_a_naive_solve_for_every_penalty_on_tall_and_wide_designs() {
    let alphas = [1e-2, 1.0, 10.0, 1e3, 1e5];
    for (n, p, seed) in [(50, 12, 1), (30, 70, 2)] {
        let mut rng = SplitMix64::new(seed);
        let x = normal_matrix(n, p, &mut rng);
        let y = normal_matrix(n, 4, &mut rng);
        let x_test = normal_matrix(9, p, &mut rng);
        let path = solve_ridge_svd(x.view(), y.view(), &alphas).unwrap();
        let expected_method = if p > n { RidgeMethod::Kernel } else { RidgeMethod::Gram };
        assert_eq!(path.method(), expected_method);
        let all = path.predict_all(x_test.view()).unwrap();
        for (i, &alpha) in alphas.iter().enumerate() {
            let w_ref = naive_ridge(x.view(), y.view(), alpha);
            let w = path.weights(i).unwrap();
            let dw = max_abs_diff(&w, &w_ref);
            println!("({n}, {p}) alpha {alpha:e}: SVD path vs naive solve max |dW| = {dw:e}");
            assert!(dw < 1e-8, "({n}, {p}) alpha {alpha}: max |dW| = {dw:e}");
            let pred_ref = x_test.dot(&w_ref);
            let dp = max_abs_diff(&path.predict(i, x_test.view()).unwrap(), &pred_ref);
            assert!(dp < 1e-8, "({n}, {p}) alpha {alpha}: max |dPred| = {dp:e}");
            assert!(max_abs_diff(&all[i], &pred_ref) < 1e-8);
        }
    }
}

#[test]
fn the_svd_and_kernel_forms_agree_on_wide_and_tall_designs() {
    let alphas = log_alphas(-2.0, 6.0, 9);
    for (n, p, seed) in [(40, 150, 3), (120, 25, 4), (64, 64, 5)] {
        let mut rng = SplitMix64::new(seed);
        let x = normal_matrix(n, p, &mut rng);
        let y = normal_matrix(n, 6, &mut rng);
        let x_test = normal_matrix(15, p, &mut rng);
        let svd = solve_ridge_with_method(x.view(), y.view(), &alphas, RidgeMethod::Svd).unwrap();
        let ker = solve_ridge_with_method(x.view(), y.view(), &alphas, RidgeMethod::Kernel).unwrap();
        assert_eq!((svd.method(), ker.method()), (RidgeMethod::Svd, RidgeMethod::Kernel));
        assert_eq!(svd.rank(), n.min(p));
        assert_eq!(ker.rank(), n.min(p));
        for (a, b) in svd.singular_values().iter().zip(ker.singular_values()) {
            assert_abs_diff_eq!(*a, b, epsilon = 1e-8 * a.max(1.0));
        }
        for (i, alpha) in alphas.iter().enumerate() {
            let dw = max_abs_diff(&svd.weights(i).unwrap(), &ker.weights(i).unwrap());
            println!("({n}, {p}) alpha {alpha:e}: SVD vs kernel max |dW| = {dw:e}");
            let dp = max_abs_diff(
                &svd.predict(i, x_test.view()).unwrap(),
                &ker.predict(i, x_test.view()).unwrap(),
            );
            assert!(
                dw < 1e-8 && dp < 1e-8,
                "({n}, {p}) alpha {alpha}: |dW| {dw:e}, |dPred| {dp:e}"
            );
        }
    }
}

#[test]
fn per_target_penalties_pick_the_matching_column_of_each_single_penalty_fit() {
    let mut rng = SplitMix64::new(8);
    let x = normal_matrix(40, 10, &mut rng);
    let y = normal_matrix(40, 5, &mut rng);
    let x_test = normal_matrix(7, 10, &mut rng);
    let alphas = [0.5, 5.0, 50.0];
    let path = solve_ridge_svd(x.view(), y.view(), &alphas).unwrap();
    let choice = [2, 0, 1, 2, 0];
    let w = path.weights_per_target(&choice).unwrap();
    let pred = path.predict_per_target(&choice, x_test.view()).unwrap();
    for (j, &i) in choice.iter().enumerate() {
        assert_eq!(w.column(j), path.weights(i).unwrap().column(j));
        let single = path.predict(i, x_test.view()).unwrap();
        for r in 0..7 {
            assert_abs_diff_eq!(pred[[r, j]], single[[r, j]], epsilon = 1e-12);
        }
    }
    assert!(path.weights_per_target(&[0, 1]).is_err());
    assert!(path.weights_per_target(&[0, 1, 2, 3, 0]).is_err());
}

#[test]
fn invalid_shapes_and_penalties_are_errors() {
    let x = Array2::<f64>::zeros((10, 3));
    let y = Array2::<f64>::zeros((9, 2));
    assert!(solve_ridge_svd(x.view(), y.view(), &[1.0]).is_err());
    let y = Array2::<f64>::zeros((10, 2));
    assert!(solve_ridge_svd(x.view(), y.view(), &[]).is_err());
    assert!(solve_ridge_svd(x.view(), y.view(), &[1.0, 0.0]).is_err());
    assert!(solve_ridge_svd(x.view(), y.view(), &[f64::NAN]).is_err());
    let mut bad = x.clone();
    bad[[4, 1]] = f64::INFINITY;
    let msg = solve_ridge_svd(bad.view(), y.view(), &[1.0]).unwrap_err().to_string();
    assert!(msg.contains("row 4, column 1"), "{msg}");
    let path = solve_ridge_svd(x.view(), y.view(), &[1.0]).unwrap();
    assert!(path.predict(0, Array2::<f64>::zeros((2, 4)).view()).is_err());
    assert!(path.predict(1, Array2::<f64>::zeros((2, 3)).view()).is_err());
}

#[test]
fn the_default_grid_is_thirteen_half_decades_from_one_to_a_million() {
    let a = default_alphas();
    assert_eq!(a.len(), 13);
    assert_eq!((a[0], a[2], a[12]), (1.0, 10.0, 1e6));
    assert_abs_diff_eq!(a[1], 10f64.sqrt(), epsilon = 1e-12);
    assert_eq!(log_alphas(2.0, 2.0, 1), vec![100.0]);
    assert!(log_alphas(0.0, 1.0, 0).is_empty());
}

// ---------------------------------------------------------------- folds

/// Brute force over all pairs: every test index once, no train index within `gap` of a test
/// index, train and test disjoint, and (gap aside) every other sample trained on.
fn assert_block_fold_invariants(folds: &[Fold], ids: &[usize], gap: usize) {
    let mut tested = vec![0usize; ids.len()];
    for fold in folds {
        for &t in &fold.test {
            tested[t] += 1;
        }
        for &r in &fold.train {
            assert!(!fold.test.contains(&r));
            for &t in &fold.test {
                assert!(
                    ids[r].abs_diff(ids[t]) > gap,
                    "train {} is within {gap} of test {}",
                    ids[r],
                    ids[t]
                );
            }
        }
        for r in 0..ids.len() {
            let far = fold.test.iter().all(|&t| ids[r].abs_diff(ids[t]) > gap);
            assert_eq!(far, fold.train.contains(&r), "row {r} (sample {})", ids[r]);
        }
        assert!(
            fold.test.windows(2).all(|w| w[1] == w[0] + 1),
            "test rows are one contiguous block"
        );
    }
    assert!(
        tested.iter().all(|&c| c == 1),
        "every sample is tested exactly once: {tested:?}"
    );
    let sizes: Vec<usize> = folds.iter().map(|f| f.test.len()).collect();
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{sizes:?}"
    );
}

#[test]
fn every_sample_is_tested_once_and_no_training_sample_lies_within_the_gap() {
    for n in [10, 37, 100, 101] {
        for n_folds in [2, 3, 4, 5] {
            for gap in [0, 1, 2, 5] {
                match contiguous_block_folds(n, n_folds, gap) {
                    Ok(folds) => {
                        assert_eq!(folds.len(), n_folds);
                        let ids: Vec<usize> = (0..n).collect();
                        assert_block_fold_invariants(&folds, &ids, gap);
                    }
                    // only legitimate failure: a middle block plus its gaps swallows everything
                    Err(_) => assert!(n / n_folds + 1 + 2 * gap >= n, "n {n}, folds {n_folds}, gap {gap}"),
                }
            }
        }
    }
}

#[test]
fn inner_folds_respect_the_gap_in_original_sample_indices() {
    let (n, gap) = (97, 5);
    for outer in contiguous_block_folds(n, 4, gap).unwrap() {
        // the outer training rows have a hole where the test block and its gaps were
        let inner = block_folds_within(&outer.train, 4, gap).unwrap();
        assert_block_fold_invariants(&inner, &outer.train, gap);
        // the hole itself does not count as distance: a row across it is kept only if far enough
        for fold in &inner {
            for &r in &fold.train {
                for &t in &fold.test {
                    assert!(outer.train[r].abs_diff(outer.train[t]) > gap);
                }
            }
        }
    }
}

#[test]
fn leave_groups_out_tests_whole_groups_once_each() {
    let groups: Vec<usize> = (0..27)
        .flat_map(|story| std::iter::repeat_n(100 + story * 3, 5 + story % 4))
        .collect();
    let folds = leave_groups_out_folds(&groups, 4).unwrap();
    let mut tested = vec![0usize; groups.len()];
    for (k, fold) in folds.iter().enumerate() {
        for &i in &fold.test {
            tested[i] += 1;
            assert_eq!((groups[i] - 100) / 3 % 4, k, "story dealt round-robin in sorted order");
        }
        for &i in &fold.train {
            assert!(
                !fold.test.iter().any(|&t| groups[t] == groups[i]),
                "a story is split across train and test"
            );
        }
        assert_eq!(fold.train.len() + fold.test.len(), groups.len());
    }
    assert!(tested.iter().all(|&c| c == 1));
    let stories_per_fold: Vec<usize> = folds
        .iter()
        .map(|f| {
            let mut g: Vec<usize> = f.test.iter().map(|&i| groups[i]).collect();
            g.dedup();
            g.len()
        })
        .collect();
    assert_eq!(stories_per_fold, vec![7, 7, 7, 6]);
}

// ---------------------------------------------------------------- CV

#[test]
fn a_target_without_any_signal_ties_everywhere_and_gets_the_largest_penalty() {
    let mut rng = SplitMix64::new(21);
    let x = normal_matrix(60, 5, &mut rng);
    let mut y = normal_matrix(60, 2, &mut rng);
    y.column_mut(1).fill(0.0); // constant: every held-out r is undefined, scored 0
    let alphas = [1e3, 1.0, 1e6, 10.0];
    let folds = contiguous_block_folds(60, 3, 2).unwrap();
    let cv = ridge_cv(x.view(), y.view(), &alphas, &folds).unwrap();
    assert_eq!(cv.cv_scores.dim(), (4, 2));
    assert!(cv.cv_scores.column(1).iter().all(|&s| s == 0.0));
    assert_eq!(cv.best_alpha_index[1], 2);
    assert_eq!(cv.best_alphas()[1], 1e6);
}

#[test]
fn ridge_cv_refits_on_all_rows_with_each_targets_penalty() {
    let (x, y) = simulate(120, 10, 3, 2, 1.0, 5);
    let alphas = default_alphas();
    let folds = contiguous_block_folds(120, 4, 3).unwrap();
    let cv = ridge_cv(x.view(), y.view(), &alphas, &folds).unwrap();
    let w = cv.weights().unwrap();
    for (j, &i) in cv.best_alpha_index.iter().enumerate() {
        let w_ref = naive_ridge(x.view(), y.view(), alphas[i]);
        for f in 0..10 {
            assert_abs_diff_eq!(w[[f, j]], w_ref[[f, j]], epsilon = 1e-8);
        }
        // the chosen penalty has the highest mean inner r
        let best = cv.cv_scores[[i, j]];
        assert!(cv.cv_scores.column(j).iter().all(|&s| s <= best));
    }
}

#[test]
fn nested_cv_recovers_a_strong_signal_and_finds_nothing_in_pure_noise() {
    let (n, p, n_signal, n_noise) = (400, 20, 10, 40);
    // signal variance 1, noise sd 0.5: theoretical r = 1 / sqrt(1 + 0.25) ≈ 0.894
    let (x, y) = simulate(n, p, n_signal, n_noise, 0.5, 42);
    let outer = contiguous_block_folds(n, 4, 5).unwrap();
    let res = nested_cv_ridge(x.view(), y.view(), &default_alphas(), &outer, 4, 5).unwrap();
    assert_eq!(res.predictions.dim(), (n, n_signal + n_noise));
    assert_eq!(res.r_per_fold.dim(), (4, n_signal + n_noise));
    assert_eq!(res.tested_rows, (0..n).collect::<Vec<_>>());
    let signal_r = &res.r_per_target[..n_signal];
    let noise_r = &res.r_per_target[n_signal..];
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "signal r: min {:.3} mean {:.3}",
        signal_r.iter().copied().fold(1.0, f64::min),
        mean(signal_r)
    );
    println!(
        "noise r: mean {:.4}, max |r| {:.3}",
        mean(noise_r),
        noise_r.iter().map(|r| r.abs()).fold(0.0, f64::max)
    );
    assert!(signal_r.iter().all(|&r| r > 0.8), "{signal_r:?}");
    assert!(mean(noise_r).abs() < 0.15, "{noise_r:?}");
    assert!(noise_r.iter().all(|r| r.abs() < 0.3), "{noise_r:?}");
    // per fold as well
    for k in 0..4 {
        assert!((0..n_signal).all(|j| res.r_per_fold[[k, j]] > 0.75));
    }
    // predictions are in Y's units: the held-out residual variance is near the noise variance
    let resid: f64 = (0..n)
        .map(|i| (res.predictions[[i, 0]] - y[[i, 0]]).powi(2))
        .sum::<f64>()
        / n as f64;
    assert!((0.15..0.4).contains(&resid), "held-out MSE {resid}");
}

/// Median over outer folds and targets of log10 α.
fn median_log_alpha(res: &NestedCvResult, cols: std::ops::Range<usize>) -> f64 {
    let mut v: Vec<f64> = res
        .alpha_per_fold
        .slice(ndarray::s![.., cols])
        .iter()
        .map(|a| a.log10())
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn with_the_r2_criterion_pure_noise_targets_choose_large_penalties_and_signal_targets_small_ones() {
    let (n, p, n_signal, n_noise) = (300, 30, 10, 40);
    let (x, y) = simulate(n, p, n_signal, n_noise, 0.5, 7);
    let outer = contiguous_block_folds(n, 4, 5).unwrap();
    let alphas = default_alphas();
    let res = nested_cv_ridge_with(x.view(), y.view(), &alphas, &outer, 4, 5, AlphaCriterion::R2).unwrap();
    let (signal, noise) = (
        median_log_alpha(&res, 0..n_signal),
        median_log_alpha(&res, n_signal..n_signal + n_noise),
    );
    let count = |cols: std::ops::Range<usize>, lo: f64| {
        res.alpha_per_fold
            .slice(ndarray::s![.., cols])
            .iter()
            .filter(|&&a| a >= lo)
            .count()
    };
    let (noise_big, signal_big) = (count(n_signal..n_signal + n_noise, 1e3), count(0..n_signal, 1e3));
    println!(
        "R2 criterion: median log10 alpha signal {signal}, noise {noise}; alpha >= 1e3 in {noise_big}/{} noise \
         and {signal_big}/{} signal choices",
        4 * n_noise,
        4 * n_signal
    );
    assert!(signal <= 2.0, "signal targets: median log10 alpha {signal}");
    assert!(noise >= 3.5, "noise targets: median log10 alpha {noise}");
    assert!(
        noise_big * 3 >= 2 * 4 * n_noise,
        "at least 2/3 of noise choices are >= 1e3"
    );
    assert_eq!(signal_big, 0);
    // the signal targets are still predicted well (> 0.8, as with the Pearson criterion)
    assert!(
        res.r_per_target[..n_signal].iter().all(|&r| r > 0.8),
        "{:?}",
        res.r_per_target
    );
    // for contrast (printed, not asserted): under Pearson r the choice on noise carries no information
    let pearson = nested_cv_ridge(x.view(), y.view(), &alphas, &outer, 4, 5).unwrap();
    println!(
        "Pearson criterion: median log10 alpha signal {}, noise {}; mean signal r {:.4} (R2 criterion {:.4})",
        median_log_alpha(&pearson, 0..n_signal),
        median_log_alpha(&pearson, n_signal..n_signal + n_noise),
        pearson.r_per_target[..n_signal].iter().sum::<f64>() / n_signal as f64,
        res.r_per_target[..n_signal].iter().sum::<f64>() / n_signal as f64
    );
}

#[test]
fn with_the_pearson_criterion_every_penalty_scores_near_zero_on_pure_noise() {
    // Pearson r is scale-free, so on noise no penalty is better than another: the inner-CV scores
    // are all near zero and the choice among them carries no information.
    let (n, p) = (300, 30);
    let (x, y) = simulate(n, p, 5, 20, 0.5, 7);
    let folds = contiguous_block_folds(n, 4, 5).unwrap();
    let cv = ridge_cv(x.view(), y.view(), &default_alphas(), &folds).unwrap();
    let noise_scores = cv.cv_scores.slice(ndarray::s![.., 5..]);
    let max_abs = noise_scores.iter().map(|s| s.abs()).fold(0.0, f64::max);
    let mean = noise_scores.mean().unwrap();
    let spread = noise_scores
        .columns()
        .into_iter()
        .map(|c| c.iter().copied().fold(f64::MIN, f64::max) - c.iter().copied().fold(f64::MAX, f64::min))
        .fold(0.0, f64::max);
    let signal_min = cv
        .cv_scores
        .slice(ndarray::s![..6, ..5])
        .iter()
        .copied()
        .fold(1.0, f64::min);
    println!(
        "Pearson criterion on noise: mean inner r {mean:.4}, max |r| {max_abs:.3}, max spread over alphas {spread:.4}; \
         min on signal (alpha <= 1e2.5) {signal_min:.3}"
    );
    assert!(mean.abs() < 0.05 && max_abs < 0.25, "{noise_scores:?}");
    assert!(signal_min > 0.8);
    assert_eq!(cv.criterion, AlphaCriterion::Pearson);
    let r2 = ridge_cv_with(x.view(), y.view(), &default_alphas(), &folds, AlphaCriterion::R2).unwrap();
    // R² of a noise target is at most ~0 and best for the heaviest shrinkage
    assert!(r2.cv_scores.slice(ndarray::s![.., 5..]).iter().all(|&s| s < 0.05));
}

#[test]
fn nested_cv_is_bit_identical_on_one_two_and_four_threads() {
    let (x, y) = simulate(160, 12, 4, 3, 1.0, 99);
    let outer = contiguous_block_folds(160, 4, 3).unwrap();
    let alphas = default_alphas();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| nested_cv_ridge(x.view(), y.view(), &alphas, &outer, 3, 3).unwrap())
    };
    let one = run(1);
    assert_bit_identical(&one, &run(2));
    assert_bit_identical(&one, &run(4));
    // and on a wide design (kernel path inside every fold)
    let (xw, yw) = simulate(90, 140, 3, 2, 1.0, 100);
    let outer = contiguous_block_folds(90, 3, 2).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| nested_cv_ridge(xw.view(), yw.view(), &alphas, &outer, 3, 2).unwrap())
    };
    assert_bit_identical(&run(1), &run(2));
}

#[test]
fn leave_stories_out_nested_cv_uses_whole_stories_as_test_sets() {
    let (x, y) = simulate(240, 8, 3, 1, 0.5, 3);
    let groups: Vec<usize> = (0..240).map(|i| i / 40).collect(); // 6 stories of 40 TRs
    let outer = leave_groups_out_folds(&groups, 3).unwrap();
    let res = nested_cv_ridge(x.view(), y.view(), &default_alphas(), &outer, 3, 5).unwrap();
    assert!(res.r_per_target[..3].iter().all(|&r| r > 0.8), "{:?}", res.r_per_target);
    assert!(res.predictions.iter().all(|v| v.is_finite()));
    // a test set that overlaps another fold's is refused
    let mut bad = outer.clone();
    let stolen = bad[0].test[0];
    bad[1].test.push(stolen);
    bad[1].train.retain(|&i| i != stolen);
    assert!(nested_cv_ridge(x.view(), y.view(), &default_alphas(), &bad, 3, 5).is_err());
}

#[test]
fn outer_rows_left_untested_get_nan_predictions_and_do_not_enter_r() {
    let (x, y) = simulate(100, 5, 2, 0, 0.5, 17);
    let folds = contiguous_block_folds(100, 5, 2).unwrap();
    let partial = &folds[..3]; // rows 60..100 are never tested
    let res = nested_cv_ridge(x.view(), y.view(), &default_alphas(), partial, 3, 2).unwrap();
    assert_eq!(res.tested_rows, (0..60).collect::<Vec<_>>());
    assert!(res.predictions.slice(ndarray::s![60.., ..]).iter().all(|v| v.is_nan()));
    assert!(res.r_per_target.iter().all(|r| r.is_finite()));
}
