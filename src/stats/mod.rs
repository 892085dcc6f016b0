//! Shared statistics on plain slices and ndarray views: Pearson correlation, z-scoring, and
//! percentile-bootstrap confidence intervals with a seeded generator (deterministic for a seed).
//!
//! * [`agreement`]: inter-rater agreement of feature labels (confusion matrix, Cohen's and
//!   Fleiss' κ with bootstrap CIs, soft → hard labels).
//! * [`fdr`]: Benjamini–Hochberg q-values.
//! * [`special`]: log-gamma, incomplete gamma, χ² tail.
//! * [`paired`]: paired comparisons over subjects.
//!
//! May import: `error`, `paths` (nothing above them: `stats` is below every analysis).

pub mod agreement;
pub mod fdr;
pub mod paired;
pub mod special;

pub use fdr::{fdr_bh, fdr_reject};
pub use special::{chi2_sf, ln_gamma};

use ndarray::{ArrayViewMut2, Axis};

/// Pearson correlation of two equal-length series (f64 accumulation). NaN if either is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "pearson: lengths differ");
    let n = x.len() as f64;
    if x.len() < 2 {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (da, db) = (a - mx, b - my);
        sxy += da * db;
        sxx += da * da;
        syy += db * db;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx.sqrt() * syy.sqrt())
}

/// Z-scores each column in place (population sd, ddof = 0, as numpy/scipy's default); constant
/// columns become zeros. Returns the (mean, sd) of each column.
pub fn zscore_columns(mut x: ArrayViewMut2<f64>) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(x.ncols());
    for mut col in x.axis_iter_mut(Axis(1)) {
        let n = col.len() as f64;
        let mean = col.sum() / n;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let sd = var.sqrt();
        if sd > 0.0 {
            col.mapv_inplace(|v| (v - mean) / sd);
        } else {
            col.fill(0.0);
        }
        out.push((mean, sd));
    }
    out
}

/// Removes polynomial trends of order 0..=`order` from each column in place (least-squares
/// projection onto an orthonormalised polynomial basis over the rows), as fMRI preprocessing does
/// for scanner drift. Returns nothing; a column that is exactly polynomial becomes zero.
pub fn detrend_columns(mut x: ArrayViewMut2<f64>, order: usize) {
    let n = x.nrows();
    if n == 0 {
        return;
    }
    // basis t^k on t in [-1, 1], orthonormalised by modified Gram–Schmidt
    let t: Vec<f64> = (0..n)
        .map(|i| {
            if n == 1 {
                0.0
            } else {
                -1.0 + 2.0 * i as f64 / (n - 1) as f64
            }
        })
        .collect();
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for k in 0..=order.min(n.saturating_sub(1)) {
        let mut v: Vec<f64> = t.iter().map(|&ti| ti.powi(k as i32)).collect();
        for b in &basis {
            let dot: f64 = v.iter().zip(b).map(|(a, c)| a * c).sum();
            v.iter_mut().zip(b).for_each(|(a, c)| *a -= dot * c);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-12 {
            v.iter_mut().for_each(|a| *a /= norm);
            basis.push(v);
        }
    }
    for mut col in x.axis_iter_mut(Axis(1)) {
        for b in &basis {
            let dot: f64 = col.iter().zip(b).map(|(a, c)| a * c).sum();
            col.iter_mut().zip(b).for_each(|(a, c)| *a -= dot * c);
        }
    }
}

/// SplitMix64: a tiny, fast, seedable generator; the same seed gives the same stream on every
/// platform and worker count.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    /// The internal state: `SplitMix64::new(r.state())` continues exactly where `r` is.
    pub fn state(&self) -> u64 {
        self.0
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform integer in 0..n (n > 0), by rejection (no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A confidence interval with the settings that produced it, so outputs can state them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootstrapCi {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
    pub n_boot: usize,
    /// Number of resampled units (e.g. subjects).
    pub n_units: usize,
}

/// Percentile bootstrap CI of the mean of `values` (units resampled with replacement).
/// Non-finite values are an error of the caller: they are excluded and not counted in `n_units`.
pub fn bootstrap_mean_ci(values: &[f64], n_boot: usize, level: f64, seed: u64) -> BootstrapCi {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    let estimate = if n == 0 {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / n as f64
    };
    if n < 2 || n_boot == 0 {
        return BootstrapCi {
            estimate,
            lower: f64::NAN,
            upper: f64::NAN,
            level,
            n_boot,
            n_units: n,
        };
    }
    let mut rng = SplitMix64::new(seed);
    let mut means: Vec<f64> = (0..n_boot)
        .map(|_| (0..n).map(|_| v[rng.below(n as u64) as usize]).sum::<f64>() / n as f64)
        .collect();
    let (lower, upper) = percentile_interval(&mut means, level);
    BootstrapCi {
        estimate,
        lower,
        upper,
        level,
        n_boot,
        n_units: n,
    }
}

/// Student-t CI of the mean of `values` at `level`: mean ± t_{(1+level)/2, n−1} · sd / √n (sd with
/// n − 1); the interval to read next to the percentile bootstrap when there are few units (the
/// bootstrap's is too narrow at n ≈ 5–20). Non-finite values are excluded; (NaN, NaN) with fewer
/// than 2 finite values.
pub fn t_mean_ci(values: &[f64], level: f64) -> (f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n < 2 {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let half = special::t_quantile(0.5 + level / 2.0, (n - 1) as f64) * sd / (n as f64).sqrt();
    (mean - half, mean + half)
}

/// Central percentile interval of `values` at `level` (e.g. 0.95 → the 2.5th and 97.5th
/// percentiles), with linear interpolation between order statistics (numpy's default "linear"
/// method). Sorts `values` in place; non-finite values must be removed by the caller. (NaN, NaN)
/// when `values` is empty.
pub fn percentile_interval(values: &mut [f64], level: f64) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| -> f64 {
        let h = p * (values.len() - 1) as f64;
        let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
        values[lo] + (h - lo as f64) * (values[hi] - values[lo])
    };
    let alpha = (1.0 - level) / 2.0;
    (q(alpha), q(1.0 - alpha))
}

/// Fisher–Yates shuffle of `v` in place with `rng` (uniform over the n! orders).
pub fn shuffle<T>(v: &mut [T], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    #[test]
    fn the_t_interval_of_the_mean_matches_scipy() {
        // scipy: stats.t.interval(0.95, 5, loc=v.mean(), scale=stats.sem(v))
        let v = [0.12, 0.08, 0.15, 0.02, 0.11, 0.09, f64::NAN];
        let (lo, hi) = t_mean_ci(&v, 0.95);
        assert_abs_diff_eq!(lo, 0.048658176919184594, epsilon = 1e-12);
        assert_abs_diff_eq!(hi, 0.1413418230808154, epsilon = 1e-12);
        assert!(t_mean_ci(&[0.3], 0.95).0.is_nan());
    }

    #[test]
    fn pearson_of_a_line_is_one_and_of_its_mirror_minus_one() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_abs_diff_eq!(pearson(&x, &[2.0, 4.0, 6.0, 8.0]), 1.0, epsilon = 1e-12);
        assert_abs_diff_eq!(pearson(&x, &[8.0, 6.0, 4.0, 2.0]), -1.0, epsilon = 1e-12);
        assert!(pearson(&x, &[1.0; 4]).is_nan());
        // closed form on a small case: r = cov/(sx sy)
        assert_abs_diff_eq!(pearson(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]), 0.5, epsilon = 1e-12);
    }

    #[test]
    fn zscored_columns_have_mean_zero_and_unit_sd() {
        let mut a = ndarray::array![[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [6.0, 5.0]];
        let stats = zscore_columns(a.view_mut());
        let col = a.column(0);
        assert_abs_diff_eq!(col.sum(), 0.0, epsilon = 1e-12);
        assert_abs_diff_eq!(col.iter().map(|v| v * v).sum::<f64>() / 4.0, 1.0, epsilon = 1e-12);
        assert_eq!(a.column(1).to_vec(), vec![0.0; 4]);
        assert_eq!(stats[1], (5.0, 0.0));
    }

    #[test]
    fn bootstrap_ci_brackets_the_mean_and_is_reproducible() {
        let v: Vec<f64> = (0..20).map(|i| i as f64 / 10.0).collect();
        let a = bootstrap_mean_ci(&v, 2000, 0.95, 7);
        let b = bootstrap_mean_ci(&v, 2000, 0.95, 7);
        assert_eq!(a, b);
        assert!(a.lower < a.estimate && a.estimate < a.upper);
        // the normal-theory interval of the mean is a close cross-check for n = 20
        let sd = (v.iter().map(|x| (x - a.estimate).powi(2)).sum::<f64>() / 20.0).sqrt();
        let half = 1.96 * sd / 20f64.sqrt();
        assert!((a.upper - a.lower - 2.0 * half).abs() < 0.25 * 2.0 * half);
    }

    #[test]
    fn detrending_removes_polynomials_and_keeps_what_is_orthogonal_to_them() {
        let n = 50;
        let t: Vec<f64> = (0..n).map(|i| -1.0 + 2.0 * i as f64 / (n - 1) as f64).collect();
        let mut x = ndarray::Array2::from_shape_fn((n, 2), |(i, j)| {
            let poly = 3.0 + 2.0 * t[i] - 1.5 * t[i] * t[i];
            if j == 0 {
                poly
            } else {
                poly + (7.0 * t[i]).sin()
            }
        });
        detrend_columns(x.view_mut(), 2);
        assert!(x.column(0).iter().all(|v| v.abs() < 1e-10));
        // the residual of column 1 is sin(7t) minus its own quadratic projection: compare with a
        // second implementation, least squares by normal equations on [1, t, t²]
        let s: Vec<f64> = t.iter().map(|v| (7.0 * v).sin()).collect();
        let b = ndarray::Array2::from_shape_fn((n, 3), |(i, k)| t[i].powi(k as i32));
        let btb = b.t().dot(&b);
        let bts = b.t().dot(&ndarray::Array1::from(s.clone()));
        // solve the 3×3 system by Cramer's rule
        let det = |m: &ndarray::Array2<f64>| {
            m[[0, 0]] * (m[[1, 1]] * m[[2, 2]] - m[[1, 2]] * m[[2, 1]])
                - m[[0, 1]] * (m[[1, 0]] * m[[2, 2]] - m[[1, 2]] * m[[2, 0]])
                + m[[0, 2]] * (m[[1, 0]] * m[[2, 1]] - m[[1, 1]] * m[[2, 0]])
        };
        let d = det(&btb);
        let coef: Vec<f64> = (0..3)
            .map(|k| {
                let mut m = btb.clone();
                for r in 0..3 {
                    m[[r, k]] = bts[r];
                }
                det(&m) / d
            })
            .collect();
        for i in 0..n {
            let fit = coef[0] + coef[1] * t[i] + coef[2] * t[i] * t[i];
            assert_abs_diff_eq!(x[[i, 1]], s[i] - fit, epsilon = 1e-9);
        }
    }

    #[test]
    fn below_is_uniform_enough() {
        let mut r = SplitMix64::new(1);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[r.below(5) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
    }
}
