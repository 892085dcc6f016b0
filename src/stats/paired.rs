//! Paired comparison of two conditions over the same units (subjects): mean difference with a
//! percentile-bootstrap CI, paired t (two-sided, df = n − 1), an exact-or-Monte-Carlo sign-flip
//! permutation p (two-sided), and Cohen's d_z = mean difference / SD of the differences.

use super::{bootstrap_mean_ci, SplitMix64};

/// A paired comparison `a − b` over `n` units.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedComparison {
    pub n: usize,
    pub mean_diff: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
    pub t: f64,
    pub df: f64,
    /// Two-sided p of the paired t test.
    pub p_t: f64,
    /// Two-sided sign-flip permutation p: all 2ⁿ flips when n ≤ 16, else `n_perm` random flips
    /// with p = (1 + #{|mean*| ≥ |mean|}) / (1 + n_perm).
    pub p_signflip: f64,
    /// One-sided (a > b) sign-flip p, same flips: (#{mean* ≥ mean}) / flips.
    pub p_signflip_greater: f64,
    pub n_perm: usize,
    pub cohens_dz: f64,
}

/// `a[i]` and `b[i]` belong to the same unit; non-finite pairs are an error of the caller.
pub fn paired_comparison(
    a: &[f64],
    b: &[f64],
    n_perm: usize,
    n_boot: usize,
    level: f64,
    seed: u64,
) -> PairedComparison {
    assert_eq!(a.len(), b.len(), "paired values");
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n.max(1) as f64;
    let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt();
    let t = mean / (sd / (n as f64).sqrt());
    let df = n as f64 - 1.0;
    let p_t = if t.is_finite() {
        super::special::f_sf(t * t, 1.0, df)
    } else {
        f64::NAN
    };
    let ci = bootstrap_mean_ci(&d, n_boot, level, seed);
    // ties within round-off of the observed statistic count as reaching it
    let tol = 1e-12 * mean.abs().max(f64::MIN_POSITIVE);
    let (hits, hits_greater, total) = if n <= 16 {
        let (mut hits, mut greater) = (0usize, 0usize);
        for mask in 0u32..(1 << n) {
            let m: f64 = d
                .iter()
                .enumerate()
                .map(|(i, x)| if mask >> i & 1 == 1 { -x } else { *x })
                .sum::<f64>()
                / n as f64;
            hits += (m.abs() >= mean.abs() - tol) as usize;
            greater += (m >= mean - tol) as usize;
        }
        (hits, greater, 1usize << n)
    } else {
        let mut rng = SplitMix64::new(seed);
        let (mut hits, mut greater) = (1usize, 1usize);
        for _ in 0..n_perm {
            let m: f64 = d
                .iter()
                .map(|x| if rng.next_u64() & 1 == 1 { -x } else { *x })
                .sum::<f64>()
                / n as f64;
            hits += (m.abs() >= mean.abs() - tol) as usize;
            greater += (m >= mean - tol) as usize;
        }
        (hits, greater, n_perm + 1)
    };
    PairedComparison {
        n,
        mean_diff: mean,
        ci_lower: ci.lower,
        ci_upper: ci.upper,
        t,
        df,
        p_t,
        p_signflip: hits as f64 / total as f64,
        p_signflip_greater: hits_greater as f64 / total as f64,
        n_perm: if n <= 16 { 1 << n } else { n_perm },
        cohens_dz: mean / sd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_paired_t_and_exact_sign_flip() {
        // d = [1, 2, 3, 4]: mean 2.5, sd √(5/3), t = 2.5 / (sd / 2) = 3.8730, df 3
        let a = [2.0, 4.0, 6.0, 8.0];
        let b = [1.0, 2.0, 3.0, 4.0];
        let c = paired_comparison(&a, &b, 1000, 500, 0.95, 1);
        assert!((c.t - 3.872983346207417).abs() < 1e-12);
        assert_eq!(c.df, 3.0);
        // scipy.stats.ttest_rel(a, b).pvalue = 0.030466291662170977
        assert!((c.p_t - 0.030466291662170977).abs() < 1e-9, "{}", c.p_t);
        // all 16 flips: only the all-positive and all-negative reach |mean| 2.5
        assert!((c.p_signflip - 2.0 / 16.0).abs() < 1e-15);
        assert!((c.p_signflip_greater - 1.0 / 16.0).abs() < 1e-15);
        assert!((c.cohens_dz - 2.5 / (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
