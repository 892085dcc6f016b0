//! Encoding statistics against their Python references on the same data (scipy's
//! `false_discovery_control`, numpy's correlation and R², the Gallant lab's explainable variance
//! re-typed in numpy, leave-one-out ISC in numpy), thread-count determinism of the block
//! permutation test, and its calibration on simulated data with a known answer.

use crate::support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use cortexflow::encoding::stats::{
    block_permutation_test, explainable_variance, fdr_bh, fdr_reject, isc_ceiling, pearson_per_target, r2_per_target,
    PermutationTest,
};
use cortexflow::stats::SplitMix64;
use ndarray::{Array2, Array3, ArrayView2};

// ---------------------------------------------------------------- helpers

/// Writes a matrix as whitespace-separated text, one row per line, every value in Rust's
/// shortest round-trip form (read back exactly by `np.loadtxt`).
fn write_matrix(path: &Path, x: ArrayView2<f64>) {
    let mut s = String::new();
    for row in x.rows() {
        let line: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
        writeln!(s, "{}", line.join(" ")).unwrap();
    }
    std::fs::write(path, s).unwrap();
}

fn write_vec(path: &Path, v: &[f64]) {
    write_matrix(path, ArrayView2::from_shape((v.len(), 1), v).unwrap());
}

/// Parses Python's output: whitespace-separated floats (repr, so exact).
fn parse_floats(out: &str) -> Vec<f64> {
    out.split_whitespace().map(|t| t.parse::<f64>().unwrap()).collect()
}

fn tmp(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Largest |a − b| over pairs, requiring NaN in the same places.
fn max_abs_diff(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.is_nan(), w.is_nan(), "index {i}: NaN in one only (got {g}, want {w})");
        if !w.is_nan() {
            worst = worst.max((g - w).abs());
        }
    }
    worst
}

fn normal_matrix(rows: usize, cols: usize, rng: &mut SplitMix64) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.normal())
}

/// Independent AR(1) series per column: x_t = φ x_{t−1} + √(1 − φ²) ε_t (unit variance).
fn ar1_matrix(rows: usize, cols: usize, phi: f64, rng: &mut SplitMix64) -> Array2<f64> {
    let mut x = Array2::<f64>::zeros((rows, cols));
    let s = (1.0 - phi * phi).sqrt();
    for j in 0..cols {
        let mut prev = rng.normal();
        for i in 0..rows {
            prev = phi * prev + s * rng.normal();
            x[[i, j]] = prev;
        }
    }
    x
}

// ---------------------------------------------------------------- FDR

/// 1,000 p-values with many ties: a third rounded to 2 decimals, runs of exact duplicates, and
/// exact 0 and 1.
fn p_values_with_ties(rng: &mut SplitMix64) -> Vec<f64> {
    let mut p: Vec<f64> = (0..1000)
        .map(|i| {
            let u = rng.next_f64();
            match i % 10 {
                0 | 3 | 6 => (u * 100.0).round() / 100.0,
                1 => u * 0.001, // a block of small p so that about 100 q are below 0.05
                _ => u,
            }
        })
        .collect();
    for i in (0..1000).step_by(50) {
        let v = p[i];
        p[i + 1] = v;
        p[i + 2] = v;
    }
    p[7] = 0.0;
    p[8] = 1.0;
    p[9] = 1.0;
    p
}

const SCIPY_FDR: &str = r#"
import sys, numpy as np, scipy.stats
p = np.loadtxt(sys.argv[1], ndmin=1)
q = scipy.stats.false_discovery_control(p, method='bh')
print(' '.join(repr(float(v)) for v in q))
"#;

#[test]
fn fdr_bh_matches_scipy_false_discovery_control_on_1000_p_values_with_ties() {
    let p = p_values_with_ties(&mut SplitMix64::new(2024));
    let dir = tempfile::tempdir().unwrap();
    write_vec(&tmp(&dir, "p.txt"), &p);
    let want = parse_floats(&support::run_python(SCIPY_FDR, &[tmp(&dir, "p.txt").to_str().unwrap()]));
    let got = fdr_bh(&p);
    let diff = max_abs_diff(&got, &want);
    eprintln!("fdr_bh vs scipy: max |Δq| = {diff:e}");
    assert!(diff <= 1e-12, "max |Δq| = {diff}");
    // the decisions are the q ≤ level ones, and the case is not degenerate
    let reject = fdr_reject(&p, 0.05);
    assert!(reject.iter().zip(&want).all(|(&r, &q)| r == (q <= 0.05)));
    let n_reject = reject.iter().filter(|&&r| r).count();
    assert!(n_reject > 10 && n_reject < 900, "{n_reject} rejections");
}

#[test]
fn fdr_bh_with_nan_equals_scipy_on_the_non_nan_subset() {
    let mut p = p_values_with_ties(&mut SplitMix64::new(7));
    for i in (0..1000).step_by(37) {
        p[i] = f64::NAN;
    }
    let kept: Vec<f64> = p.iter().copied().filter(|v| !v.is_nan()).collect();
    let dir = tempfile::tempdir().unwrap();
    write_vec(&tmp(&dir, "p.txt"), &kept);
    let want = parse_floats(&support::run_python(SCIPY_FDR, &[tmp(&dir, "p.txt").to_str().unwrap()]));
    let got = fdr_bh(&p);
    assert!(p.iter().zip(&got).all(|(p, q)| p.is_nan() == q.is_nan()));
    let got_kept: Vec<f64> = got.into_iter().filter(|v| !v.is_nan()).collect();
    assert!(max_abs_diff(&got_kept, &want) <= 1e-12);
}

// ---------------------------------------------------------------- scores

#[test]
fn pearson_and_r2_per_target_match_numpy() {
    let mut rng = SplitMix64::new(31);
    let (n, t) = (200, 50);
    let obs = normal_matrix(n, t, &mut rng);
    let mut pred = &obs * 0.6 + normal_matrix(n, t, &mut rng) * 0.8;
    let mut obs = obs;
    obs.column_mut(3).fill(2.5); // constant observation: r and R² NaN
    pred.column_mut(7).fill(-1.0); // constant prediction: r NaN, R² finite
    let dir = tempfile::tempdir().unwrap();
    write_matrix(&tmp(&dir, "pred.txt"), pred.view());
    write_matrix(&tmp(&dir, "obs.txt"), obs.view());
    let code = r#"
import sys, numpy as np
pred = np.loadtxt(sys.argv[1], ndmin=2); obs = np.loadtxt(sys.argv[2], ndmin=2)
with np.errstate(all='ignore'):
    r = np.array([np.corrcoef(pred[:, j], obs[:, j])[0, 1] for j in range(obs.shape[1])])
    sst = ((obs - obs.mean(0)) ** 2).sum(0)
    r2 = 1 - ((obs - pred) ** 2).sum(0) / sst
    r2[sst == 0] = np.nan
print(' '.join(repr(float(v)) for v in r))
print(' '.join(repr(float(v)) for v in r2))
"#;
    let out = support::run_python(
        code,
        &[
            tmp(&dir, "pred.txt").to_str().unwrap(),
            tmp(&dir, "obs.txt").to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    let (want_r, want_r2) = (parse_floats(lines[0]), parse_floats(lines[1]));
    let (dr, dr2) = (
        max_abs_diff(&pearson_per_target(pred.view(), obs.view()), &want_r),
        max_abs_diff(&r2_per_target(pred.view(), obs.view()), &want_r2),
    );
    eprintln!("vs numpy: max |Δr| = {dr:e}, max |ΔR²| = {dr2:e}");
    assert!(dr <= 1e-12 && dr2 <= 1e-12);
}

// ---------------------------------------------------------------- noise ceilings

/// `voxelwise_tutorials.utils.explainable_variance` re-typed (the package is not installed).
const EV_REFERENCE: &str = r#"
import sys, numpy as np, scipy.stats

def explainable_variance(data, bias_correction=True, do_zscore=True):
    if do_zscore:
        data = scipy.stats.zscore(data, axis=1)
    mean_var = data.var(axis=1, dtype=np.float64, ddof=1).mean(axis=0)
    var_mean = data.mean(axis=0).var(axis=0, dtype=np.float64, ddof=1)
    ev = var_mean / mean_var
    if bias_correction:
        n_repeats = data.shape[0]
        ev = ev - (1 - ev) / (n_repeats - 1)
    return ev

n_repeats = int(sys.argv[2])
flat = np.loadtxt(sys.argv[1], ndmin=2)
data = flat.reshape(n_repeats, flat.shape[0] // n_repeats, flat.shape[1])
with np.errstate(all='ignore'):
    for bc in (True, False):
        print(' '.join(repr(float(v)) for v in explainable_variance(data, bias_correction=bc)))
"#;

#[test]
fn explainable_variance_matches_the_voxelwise_tutorials_formula() {
    let mut rng = SplitMix64::new(5);
    let (n_rep, n, t) = (4, 120, 30);
    // target j has signal amplitude j/10 over unit noise, offsets and scales differ per repeat
    let signal = normal_matrix(n, t, &mut rng);
    let mut data = Array3::from_shape_fn((n_rep, n, t), |(r, i, j)| {
        (1.0 + r as f64) * (signal[[i, j]] * j as f64 / 10.0 + rng.normal()) + 3.0 * r as f64
    });
    for i in 0..n {
        data[[2, i, 5]] = 7.0; // constant within one repeat: NaN
    }
    let flat = data.to_shape((n_rep * n, t)).unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    write_matrix(&tmp(&dir, "data.txt"), flat.view());
    let out = support::run_python(
        EV_REFERENCE,
        &[tmp(&dir, "data.txt").to_str().unwrap(), &n_rep.to_string()],
    );
    let lines: Vec<&str> = out.lines().collect();
    for (line, bias_correction) in lines.iter().zip([true, false]) {
        let want = parse_floats(line);
        let got = explainable_variance(data.view(), bias_correction).unwrap();
        let diff = max_abs_diff(&got, &want);
        eprintln!("explainable variance (bias_correction {bias_correction}) vs reference: max |Δ| = {diff:e}");
        assert!(diff <= 1e-10);
        assert!(got[5].is_nan());
    }
    // the estimate tracks the simulated signal fraction a = s² / (s² + 1) (bias-corrected)
    let ev = explainable_variance(data.view(), true).unwrap();
    for j in [10, 20, 29] {
        let s2 = (j as f64 / 10.0).powi(2);
        let a = s2 / (s2 + 1.0);
        assert!((ev[j] - a).abs() < 0.12, "target {j}: ev {} vs a {a}", ev[j]);
    }
}

#[test]
fn leave_one_out_isc_matches_numpy() {
    let mut rng = SplitMix64::new(77);
    let (n_sub, n, t) = (5, 150, 40);
    let shared = normal_matrix(n, t, &mut rng);
    let subjects: Vec<Array2<f64>> = (0..n_sub)
        .map(|_| Array2::from_shape_fn((n, t), |(i, j)| shared[[i, j]] * j as f64 / 20.0 + rng.normal()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<String> = (0..n_sub)
        .map(|s| {
            let p = tmp(&dir, &format!("sub{s}.txt"));
            write_matrix(&p, subjects[s].view());
            p.to_str().unwrap().to_string()
        })
        .collect();
    let code = r#"
import sys, numpy as np
Y = np.stack([np.loadtxt(p, ndmin=2) for p in sys.argv[1:]])  # (n_subjects, n_samples, n_targets)
def corr_cols(a, b):
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return (a * b).mean(0)
loo = np.stack([corr_cols(Y[s], np.delete(Y, s, axis=0).mean(0)) for s in range(Y.shape[0])])
for row in loo:
    print(' '.join(repr(float(v)) for v in row))
print(' '.join(repr(float(v)) for v in loo.mean(0)))
"#;
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let out = support::run_python(code, &args);
    let lines: Vec<Vec<f64>> = out.lines().map(parse_floats).collect();
    let views: Vec<ArrayView2<f64>> = subjects.iter().map(|y| y.view()).collect();
    let isc = isc_ceiling(&views).unwrap();
    assert_eq!(isc.loo_r.dim(), (n_sub, t));
    let mut worst = 0.0f64;
    for s in 0..n_sub {
        worst = worst.max(max_abs_diff(&isc.loo_r.row(s).to_vec(), &lines[s]));
    }
    worst = worst.max(max_abs_diff(&isc.mean_r, &lines[n_sub]));
    eprintln!("ISC vs numpy: max |Δr| = {worst:e}");
    assert!(worst <= 1e-10);
    // the corrected ceiling recovers the simulated √a, a = s² / (s² + 1), and is ≥ the raw ISC
    let ceiling = isc.ceiling_r();
    for j in [20, 30, 39] {
        let s2 = (j as f64 / 20.0).powi(2);
        let want = (s2 / (s2 + 1.0)).sqrt();
        assert!(
            (ceiling[j] - want).abs() < 0.08,
            "target {j}: ceiling {} vs √a {want}",
            ceiling[j]
        );
        assert!(ceiling[j] >= isc.mean_r[j]);
    }
}

// ---------------------------------------------------------------- block permutation test

fn run_in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn block_permutation_test_is_identical_for_one_two_and_three_threads() {
    let mut rng = SplitMix64::new(12);
    let (n, t) = (400, 64);
    let obs = ar1_matrix(n, t, 0.5, &mut rng);
    let pred = &obs * 0.1 + ar1_matrix(n, t, 0.5, &mut rng);
    // 500 permutations: several chunks, so threads really split the work
    let run = |threads| {
        let start = std::time::Instant::now();
        let r = run_in_pool(threads, || {
            block_permutation_test(pred.view(), obs.view(), 16, 500, 99).unwrap()
        });
        eprintln!("{threads} thread(s): {:?}", start.elapsed());
        r
    };
    let one: PermutationTest = run(1);
    for threads in [2, 3] {
        let other = run(threads);
        assert_eq!(bits(&one.r_observed), bits(&other.r_observed), "{threads} threads");
        assert_eq!(bits(&one.p_values), bits(&other.p_values), "{threads} threads");
        assert_eq!(
            (one.n_perm, one.block_len, one.seed),
            (other.n_perm, other.block_len, other.seed)
        );
    }
    // another seed gives other draws
    let other_seed = block_permutation_test(pred.view(), obs.view(), 16, 500, 100).unwrap();
    assert_ne!(bits(&one.p_values), bits(&other_seed.p_values));
}

#[test]
fn block_permutation_test_is_calibrated_on_autocorrelated_noise() {
    let mut rng = SplitMix64::new(4);
    let (n, t, n_perm) = (600, 200, 999);
    let obs = ar1_matrix(n, t, 0.5, &mut rng);
    let pred = ar1_matrix(n, t, 0.5, &mut rng);
    let test = block_permutation_test(pred.view(), obs.view(), 20, n_perm, 8).unwrap();
    let n_sig = test.p_values.iter().filter(|&&p| p < 0.05).count();
    // Binomial(200, 0.05): mean 10, sd 3.1; accept mean ± 3.3 sd
    eprintln!("noise, φ = 0.5, blocks of 20: {n_sig}/200 with p < 0.05");
    assert!((1..=20).contains(&n_sig), "{n_sig} of 200 targets with p < 0.05");
    let mean_p = test.p_values.iter().sum::<f64>() / t as f64;
    assert!((mean_p - 0.5).abs() < 0.07, "mean p {mean_p}"); // sd of a mean of 200 U(0,1) ≈ 0.02
    assert!(test
        .p_values
        .iter()
        .all(|&p| p >= 1.0 / (1 + n_perm) as f64 && p <= 1.0));
}

#[test]
fn blocks_matter_a_row_shuffle_is_anticonservative_on_slow_noise() {
    let mut rng = SplitMix64::new(21);
    let (n, t) = (600, 200);
    let obs = ar1_matrix(n, t, 0.9, &mut rng);
    let pred = ar1_matrix(n, t, 0.9, &mut rng);
    let frac = |block_len| {
        let test = block_permutation_test(pred.view(), obs.view(), block_len, 499, 3).unwrap();
        test.p_values.iter().filter(|&&p| p < 0.05).count() as f64 / t as f64
    };
    let (rows, blocks) = (frac(1), frac(30));
    eprintln!("noise, φ = 0.9: fraction p < 0.05 with single rows {rows}, with blocks of 30 {blocks}");
    // var r ≈ (1 + φ²)/(1 − φ²)/n under the null, ≈ 9.5× the row-shuffle variance: ~30% false positives
    assert!(rows > 0.15, "row shuffle: {rows}");
    assert!(blocks < 0.1, "blocks of 30: {blocks}");
}

#[test]
fn a_planted_signal_reaches_the_minimum_p_value() {
    let mut rng = SplitMix64::new(9);
    let (n, t, n_perm) = (300, 20, 199);
    let pred = ar1_matrix(n, t, 0.5, &mut rng);
    let obs = &pred + ar1_matrix(n, t, 0.5, &mut rng) * 0.7;
    let test = block_permutation_test(pred.view(), obs.view(), 10, n_perm, 1).unwrap();
    assert!(test.r_observed.iter().all(|&r| r > 0.7));
    assert!(
        test.p_values.iter().all(|&p| p == 1.0 / (1 + n_perm) as f64),
        "{:?}",
        test.p_values
    );
    assert_eq!((test.n_perm, test.block_len, test.seed), (n_perm, 10, 1));
}
