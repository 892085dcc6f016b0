//! Voxelwise encoding over many stories (`cortexflow::encoding::stories`): leave-stories-out
//! nested CV checked against the single-design path fold by fold (`ridge_cv` with the same
//! leave-stories-out inner folds) and against himalaya on the same folds, and recovery of a
//! planted truth (signal voxels near their noise-free ceiling, null voxels at r ≈ 0 with a
//! calibrated p).

use crate::support;

use cortexflow::encoding::stories::{
    factorize_fold, factorize_fold_from_kernel, fit_fold_chunk, null_shifts, DesignKernel, FoldFactors,
};
use cortexflow::encoding::{
    leave_groups_out_folds, ridge_cv_with, simulate, story_cv, zscore_per_story, AlphaCriterion, RidgeMethod,
    ScorePrecision, StoryCvOptions, StoryPlan, VoxelSource,
};
use cortexflow::stats::{fdr_bh, pearson, SplitMix64};
use ndarray::{s, Array2, Axis};

/// Stories of uneven lengths, a design with `p` columns, `n_signal` voxels with planted weights at
/// `snr` and `n_null` voxels of pure AR(1) noise; design and responses z-scored per story.
/// Returns (plan, X, Y, noise-free signal of Y).
fn data(
    lengths: &[usize],
    p: usize,
    n_signal: usize,
    n_null: usize,
    snr: f64,
    seed: u64,
) -> (StoryPlan, Array2<f64>, Array2<f64>, Array2<f64>) {
    let stories: Vec<(String, usize)> = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("story{i:02}"), n))
        .collect();
    let plan = StoryPlan::new(&stories, 4, 3).unwrap();
    let n = plan.n_rows();
    let mut rng = SplitMix64::new(seed);
    // smooth, correlated features (a moving average of white noise, mixed)
    let raw = Array2::from_shape_fn((n + 4, p), |_| rng.normal());
    let mut x = Array2::<f64>::zeros((n, p));
    for i in 0..n {
        for d in 0..5 {
            let w = [0.2, 0.5, 1.0, 0.5, 0.2][d];
            x.row_mut(i).scaled_add(w, &raw.row(i + d));
        }
    }
    let mix = Array2::from_shape_fn((p, p), |(a, b)| if a == b { 1.0 } else { 0.2 * rng.normal() });
    let mut x = x.dot(&mix);
    zscore_per_story(x.view_mut(), &plan).unwrap();
    let opts = simulate::SimulationOptions {
        n_targets: n_signal,
        snr,
        density: 0.5,
        noise_ar1: 0.4,
        seed: seed + 1,
        ..Default::default()
    };
    let sim = simulate::simulate_responses(x.view(), &opts).unwrap();
    let mut y = Array2::<f64>::zeros((n, n_signal + n_null));
    y.slice_mut(s![.., ..n_signal]).assign(&sim.responses);
    let mut signal = Array2::<f64>::zeros((n, n_signal + n_null));
    signal.slice_mut(s![.., ..n_signal]).assign(&sim.signal);
    for j in n_signal..n_signal + n_null {
        let mut e = 0.0;
        for i in 0..n {
            e = 0.4 * e + rng.normal();
            y[[i, j]] = e;
        }
    }
    zscore_per_story(y.view_mut(), &plan).unwrap();
    (plan, x, y, signal)
}

fn no_cache(_: usize) -> cortexflow::Result<Option<FoldFactors>> {
    Ok(None)
}

#[test]
fn story_cv_equals_ridge_cv_fold_by_fold_and_himalaya_on_the_same_folds() {
    let lengths = [60, 75, 50, 90, 66, 58, 81, 70, 64];
    let (plan, x, y, _) = data(&lengths, 25, 40, 20, 0.3, 5);
    let alphas: Vec<f64> = (0..13).map(|i| 10f64.powf(-1.0 + 0.5 * i as f64)).collect();
    let opts = StoryCvOptions {
        alphas: alphas.clone(),
        chunk: 17, // chunks that do not divide the voxel count
        n_shifts: 0,
        ..Default::default()
    };
    let (fits, work) = story_cv(
        x.view(),
        &plan,
        &[&y as &dyn VoxelSource],
        &opts,
        &no_cache,
        &mut |_, _| Ok(()),
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(work.decompositions, 4 * (3 + 1));
    let fit = &fits[0];

    // the oracle: per outer fold, ridge_cv on the training rows with leave-stories-out inner folds
    let story_of_row: Vec<usize> = (0..lengths.len())
        .flat_map(|s| std::iter::repeat_n(s, lengths[s]))
        .collect();
    let mut pred = Array2::<f64>::zeros(y.dim());
    let mut pred_r2 = Array2::<f64>::zeros(y.dim());
    let (mut same_alpha, mut total) = (0, 0);
    for (k, fold) in plan.outer.iter().enumerate() {
        let (xtr, ytr) = (x.select(Axis(0), &fold.train), y.select(Axis(0), &fold.train));
        let groups: Vec<usize> = fold.train.iter().map(|&i| story_of_row[i]).collect();
        let inner = leave_groups_out_folds(&groups, 3).unwrap();
        assert_eq!(inner, plan.inner[k]);
        let xte = x.select(Axis(0), &fold.test);
        for (criterion, out, chosen) in [
            (AlphaCriterion::Pearson, &mut pred, &fit.alpha_per_fold),
            (AlphaCriterion::R2, &mut pred_r2, &fit.alpha_r2_per_fold),
        ] {
            let cv = ridge_cv_with(xtr.view(), ytr.view(), &alphas, &inner, criterion).unwrap();
            let p = cv.predict(xte.view()).unwrap();
            for (row, &i) in fold.test.iter().enumerate() {
                out.row_mut(i).assign(&p.row(row));
            }
            for (j, a) in cv.best_alphas().iter().enumerate() {
                total += 1;
                same_alpha += usize::from(a == &chosen[[k, j]]);
            }
        }
    }
    assert_eq!(same_alpha, total, "penalties differ from ridge_cv's");
    let mut max_dr: f64 = 0.0;
    let mut max_dr2: f64 = 0.0;
    for j in 0..y.ncols() {
        let (pj, yj) = (pred.column(j).to_vec(), y.column(j).to_vec());
        max_dr = max_dr.max((pearson(&pj, &yj) - fit.r[j]).abs());
        let sse: f64 = pred_r2.column(j).iter().zip(&yj).map(|(a, b)| (a - b) * (a - b)).sum();
        let m = yj.iter().sum::<f64>() / yj.len() as f64;
        let sst: f64 = yj.iter().map(|v| (v - m) * (v - m)).sum();
        max_dr2 = max_dr2.max((1.0 - sse / sst - fit.r2[j]).abs());
        for k in 0..4 {
            let test = &plan.outer[k].test;
            let rk = pearson(
                &test.iter().map(|&i| pred[[i, j]]).collect::<Vec<_>>(),
                &test.iter().map(|&i| y[[i, j]]).collect::<Vec<_>>(),
            );
            max_dr = max_dr.max((rk - fit.r_per_fold[[k, j]]).abs());
        }
    }
    let distinct: std::collections::BTreeSet<u64> = fit.alpha_per_fold.iter().map(|a| a.to_bits()).collect();
    println!("story CV vs ridge_cv: {same_alpha}/{total} α identical, {} distinct; max |Δr| {max_dr:.1e}, max |ΔR²| {max_dr2:.1e}", distinct.len());
    assert!(
        distinct.len() >= 3,
        "the data should make several penalties win: {distinct:?}"
    );
    assert!(max_dr < 1e-10 && max_dr2 < 1e-10);

    // himalaya's solve_ridge_cv_svd on each outer fold's training rows, the same inner folds,
    // scored by correlation: same α, same held-out predictions
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cortexflow::store::write_npy(&d.join("x.npy"), x.view()).unwrap();
    cortexflow::store::write_npy(&d.join("y.npy"), y.view()).unwrap();
    let fold_of_row: Vec<f64> = story_of_row.iter().map(|&s| plan.fold_of_story[s] as f64).collect();
    let story_f: Vec<f64> = story_of_row.iter().map(|&s| s as f64).collect();
    let meta = Array2::from_shape_fn(
        (y.nrows(), 2),
        |(i, c)| if c == 0 { fold_of_row[i] } else { story_f[i] },
    );
    cortexflow::store::write_npy(&d.join("folds.npy"), meta.view()).unwrap();
    let alphas_s: Vec<String> = alphas.iter().map(|a| format!("{a:e}")).collect();
    support::run_python(HIMALAYA_STORIES, &[d.to_str().unwrap(), &alphas_s.join(","), "3"]);
    let h_alpha = cortexflow::store::read_npy(&d.join("alphas.npy")).unwrap(); // (4, voxels)
    let h_pred = cortexflow::store::read_npy(&d.join("pred.npy")).unwrap(); // (rows, voxels)
    let same = h_alpha
        .iter()
        .zip(fit.alpha_per_fold.iter())
        .filter(|(a, b)| (*a / *b - 1.0).abs() < 1e-9)
        .count();
    let max_dp = h_pred
        .iter()
        .zip(pred.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!(
        "himalaya on the same folds: {same}/{} α identical, max |Δ prediction| {max_dp:.1e}",
        h_alpha.len()
    );
    assert_eq!(same, h_alpha.len());
    assert!(max_dp < 1e-8);
}

/// himalaya on the story folds: argv = dir, alphas, n_inner. Reads x.npy, y.npy, folds.npy
/// (outer fold, story per row); inner folds deal the training stories round-robin, as cortexflow.
const HIMALAYA_STORIES: &str = r#"
import sys, numpy as np
from himalaya.backend import set_backend
from himalaya.ridge import solve_ridge_cv_svd
from himalaya.scoring import correlation_score
set_backend("numpy")
d, alphas, n_inner = sys.argv[1], np.array([float(a) for a in sys.argv[2].split(",")]), int(sys.argv[3])
X, Y, meta = np.load(f"{d}/x.npy"), np.load(f"{d}/y.npy"), np.load(f"{d}/folds.npy")
fold, story = meta[:, 0].astype(int), meta[:, 1].astype(int)
pred = np.zeros_like(Y); chosen = []
for k in range(int(fold.max()) + 1):
    tr, te = np.where(fold != k)[0], np.where(fold == k)[0]
    st = story[tr]; labels = np.unique(st)
    inner = [(np.where(np.isin(st, labels[i::n_inner], invert=True))[0], np.where(np.isin(st, labels[i::n_inner]))[0]) for i in range(n_inner)]
    best, coefs, _ = solve_ridge_cv_svd(X[tr], Y[tr], alphas=alphas, cv=inner, fit_intercept=False, score_func=correlation_score, warn=False)
    pred[te] = X[te] @ coefs; chosen.append(best)
np.save(f"{d}/alphas.npy", np.array(chosen, dtype=np.float64)); np.save(f"{d}/pred.npy", pred)
"#;

#[test]
fn story_cv_recovers_planted_voxels_and_keeps_null_voxels_at_chance() {
    let lengths: Vec<usize> = (0..12).map(|s| 260 + 17 * (s % 5)).collect();
    let (plan, x, y, signal) = data(&lengths, 20, 150, 150, 0.4, 9);
    let opts = StoryCvOptions {
        n_shifts: 200,
        chunk: 128,
        seed: 3,
        ..Default::default()
    };
    // two subjects: the second has the same signal and fresh noise; one decomposition per fold
    let mut y2 = y.clone();
    let mut rng = SplitMix64::new(77);
    for j in 0..y2.ncols() {
        let mut e = 0.0;
        for i in 0..y2.nrows() {
            e = 0.4 * e + rng.normal();
            y2[[i, j]] = signal[[i, j]] + e * (1.0 - 0.16f64).sqrt(); // unit-variance AR(1) noise, as the simulation's
        }
    }
    zscore_per_story(y2.view_mut(), &plan).unwrap();
    let mut stored = 0;
    let (fits, work) = story_cv(
        x.view(),
        &plan,
        &[&y as &dyn VoxelSource, &y2 as &dyn VoxelSource],
        &opts,
        &no_cache,
        &mut |_, _| {
            stored += 1;
            Ok(())
        },
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(work.decompositions, 16, "one set of decompositions for both subjects");
    assert_eq!(stored, 4);
    let fit = &fits[0];
    let (n_signal, nv) = (150, 300);
    // the noise-free ceiling: corr(signal, y) over the rows the folds test (all of them)
    let ceiling: Vec<f64> = (0..n_signal)
        .map(|j| pearson(&signal.column(j).to_vec(), &y.column(j).to_vec()))
        .collect();
    let gap: f64 = (0..n_signal).map(|j| ceiling[j] - fit.r[j]).sum::<f64>() / n_signal as f64;
    let null_r: Vec<f64> = fit.r[n_signal..].to_vec();
    let mean_null = null_r.iter().sum::<f64>() / null_r.len() as f64;
    let mean_abs_null = null_r.iter().map(|r| r.abs()).sum::<f64>() / null_r.len() as f64;
    let q = fdr_bh(&fit.p);
    let null_pass = q[n_signal..].iter().filter(|&&q| q < 0.05).count();
    let signal_pass = q[..n_signal].iter().filter(|&&q| q < 0.05).count();
    let null_p05 = fit.p[n_signal..].iter().filter(|&&p| p < 0.05).count();
    let min_p = fit.p.iter().copied().fold(1.0, f64::min);
    println!(
        "{} rows, {nv} voxels: mean (ceiling − held-out r) {gap:.4}; null voxels: mean r {mean_null:.4}, \
         mean |r| {mean_abs_null:.4}, {null_p05}/150 with p < 0.05, {null_pass}/150 pass FDR; \
         signal voxels passing FDR {signal_pass}/150; smallest p {min_p:.1e}",
        plan.n_rows()
    );
    assert!(
        gap.abs() < 0.02,
        "held-out r should be within 0.02 of the ceiling on average: {gap}"
    );
    assert!(mean_null.abs() < 0.01, "null voxels: mean r {mean_null}");
    assert!(null_pass * 100 <= 5 * 150, "null voxels passing FDR: {null_pass}");
    assert!(
        null_p05 <= 15,
        "p is not calibrated on null voxels: {null_p05}/150 below 0.05"
    );
    assert!(signal_pass >= 140, "signal voxels passing FDR: {signal_pass}");
    assert!(
        min_p < 1e-6,
        "the parametric null must reach below 1/(n_shifts + 1): {min_p}"
    );
    // the second subject: same signal, fresh noise → similar r
    let d2: f64 = (0..n_signal).map(|j| (fits[1].r[j] - fit.r[j]).abs()).sum::<f64>() / n_signal as f64;
    assert!(d2 < 0.05, "{d2}");
}

#[test]
fn fold_factors_are_shared_across_subjects_and_voxel_chunks() {
    let lengths = [40, 44, 52, 48, 46, 50];
    let (plan, x, y, _) = data(&lengths, 10, 12, 6, 0.5, 21);
    let alphas = cortexflow::encoding::default_alphas();
    let f = factorize_fold(x.view(), &plan, 2, RidgeMethod::Auto).unwrap();
    let whole = fit_fold_chunk(
        &f,
        &plan,
        y.view(),
        &alphas,
        AlphaCriterion::Pearson,
        &[],
        ScorePrecision::Exact,
    )
    .unwrap();
    let part = fit_fold_chunk(
        &f,
        &plan,
        y.slice(s![.., 5..9]),
        &alphas,
        AlphaCriterion::Pearson,
        &[],
        ScorePrecision::Exact,
    )
    .unwrap();
    assert_eq!(&whole.alpha_index[5..9], &part.alpha_index[..]);
    for (a, b) in whole
        .predictions
        .slice(s![.., 5..9])
        .iter()
        .zip(part.predictions.iter())
    {
        assert!((a - b).abs() < 1e-12);
    }
    // responses with the wrong number of rows are refused with the counts
    let err = fit_fold_chunk(
        &f,
        &plan,
        y.slice(s![..100, ..]),
        &alphas,
        AlphaCriterion::Pearson,
        &[],
        ScorePrecision::Exact,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("100 rows") && err.to_string().contains(&plan.n_rows().to_string()),
        "{err}"
    );
}

/// The float32 inner-CV predictions ([`ScorePrecision::Fast`], the default) choose every voxel's
/// penalties exactly as the float64 path does, under r, R² and negative MSE, so the predictions
/// are bit-identical; the 10 pure-noise voxels have the flattest inner-CV curves, where a float32
/// score could tip the choice without the float64 rescoring. The null refits (float32 under
/// `Fast`) agree to 1e-5 of each sum's scale.
#[test]
fn float32_inner_cv_scores_choose_the_float64_penalties() {
    let lengths = [40, 46, 38, 52, 44, 41, 49, 43, 39];
    let (plan, x, y, _) = data(&lengths, 300, 60, 10, 0.4, 33);
    // penalties up to 1e10: at the large ones r no longer changes (the predictions only shrink),
    // so their scores agree to far below float32's precision and only the rescoring decides
    let alphas: Vec<f64> = (0..21).map(|i| 10f64.powf(0.5 * i as f64)).collect();
    let shifts = null_shifts(&plan, 5, 4);
    let mut n = 0;
    for criterion in [AlphaCriterion::Pearson, AlphaCriterion::R2, AlphaCriterion::NegMse] {
        for k in 0..plan.n_outer() {
            let f = factorize_fold(x.view(), &plan, k, RidgeMethod::Auto).unwrap();
            let run = |p| fit_fold_chunk(&f, &plan, y.view(), &alphas, criterion, &shifts, p).unwrap();
            let (exact, fast) = (run(ScorePrecision::Exact), run(ScorePrecision::Fast));
            assert_eq!(exact.alpha_index, fast.alpha_index, "{criterion:?} fold {k}");
            assert_eq!(exact.alpha_index_r2, fast.alpha_index_r2, "{criterion:?} fold {k}");
            assert_eq!(exact.predictions, fast.predictions);
            assert_eq!(exact.predictions_r2, fast.predictions_r2);
            // the null refits are float32 products under `Fast`: their sums (Σ ŷ, Σ ŷ², Σ ŷ y
            // per sample and voxel) agree to float32's precision, relative to each sum's scale
            // (for Σ ŷ, which is ~0 with z-scored stories, the scale is √(rows · Σ ŷ²))
            assert_eq!(exact.null_sums.len(), fast.null_sums.len());
            let rows = plan.outer[k].test.len() as f64;
            for (e, f) in exact.null_sums.iter().zip(&fast.null_sums) {
                for row in 0..3 {
                    let max = |r: usize| e.row(r).iter().fold(0f64, |m, v| m.max(v.abs()));
                    let scale = if row == 0 { (rows * max(1)).sqrt() } else { max(row) };
                    for (a, b) in e.row(row).iter().zip(f.row(row)) {
                        assert!(
                            (a - b).abs() <= 1e-5 * scale,
                            "null sum {row}: {a} vs {b} (scale {scale})"
                        );
                    }
                }
                assert_ne!(
                    e, f,
                    "`Fast` refits the null in float32, so its sums are not float64's to the bit"
                );
            }
            n += exact.alpha_index.len();
        }
    }
    assert_eq!(n, 3 * 4 * 70, "3 criteria × 4 outer folds × 70 voxels");
}

/// Wide designs (features > training rows): every fold's decompositions cut from the one kernel
/// X Xᵀ of the design give the same α per voxel and the same predictions and null sums as the
/// per-decomposition path, fold by fold, to 1e-10; and `story_cv` takes that path.
#[test]
fn decompositions_cut_from_the_design_kernel_equal_the_per_fold_ones() {
    let lengths = [40, 46, 38, 52, 44, 41, 49, 43, 39];
    let (plan, x, y, _) = data(&lengths, 600, 30, 10, 0.4, 21);
    assert!(DesignKernel::applies(x.ncols(), &plan, RidgeMethod::Auto));
    let alphas: Vec<f64> = (0..13).map(|i| 10f64.powf(0.5 * i as f64)).collect();
    let shifts = null_shifts(&plan, 15, 4);
    let g = DesignKernel::new(x.view()).unwrap();
    let (mut same, mut total, mut max_pred, mut max_null) = (0, 0, 0f64, 0f64);
    for k in 0..plan.n_outer() {
        let exact = factorize_fold(x.view(), &plan, k, RidgeMethod::Auto).unwrap();
        let cut = factorize_fold_from_kernel(&g, &plan, k).unwrap();
        let fit = |f| {
            fit_fold_chunk(
                f,
                &plan,
                y.view(),
                &alphas,
                AlphaCriterion::Pearson,
                &shifts,
                ScorePrecision::Exact,
            )
            .unwrap()
        };
        let (a, b) = (fit(&exact), fit(&cut));
        same += a.alpha_index.iter().zip(&b.alpha_index).filter(|(p, q)| p == q).count();
        same += a
            .alpha_index_r2
            .iter()
            .zip(&b.alpha_index_r2)
            .filter(|(p, q)| p == q)
            .count();
        total += 2 * a.alpha_index.len();
        let d = |p: &Array2<f64>, q: &Array2<f64>| p.iter().zip(q).map(|(u, v)| (u - v).abs()).fold(0.0, f64::max);
        max_pred = max_pred
            .max(d(&a.predictions, &b.predictions))
            .max(d(&a.predictions_r2, &b.predictions_r2));
        for (p, q) in a.null_sums.iter().zip(&b.null_sums) {
            let scale = p.iter().map(|v| v.abs()).fold(1.0, f64::max);
            max_null = max_null.max(d(p, q) / scale);
        }
    }
    println!(
        "kernel cut vs per-fold decompositions: α {same}/{total} identical, max |Δŷ| {max_pred:.1e}, \
         max relative |Δ null sums| {max_null:.1e}"
    );
    assert_eq!(same, total);
    assert!(max_pred < 1e-10, "{max_pred}");
    assert!(max_null < 1e-10, "{max_null}");
    // story_cv on a wide design uses the kernel (its results equal the cut path's, checked above)
    let opts = StoryCvOptions {
        alphas,
        n_shifts: 0,
        ..Default::default()
    };
    let (fits, work) = story_cv(
        x.view(),
        &plan,
        &[&y as &dyn VoxelSource],
        &opts,
        &no_cache,
        &mut |_, _| Ok(()),
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(work.decompositions, 4 * 4);
    assert_eq!(work.kernel_bytes, 8 * x.nrows() * x.nrows(), "the kernel path");
    assert!(fits[0].r.iter().all(|r| r.is_finite()));
}
