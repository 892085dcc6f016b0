//! Lag scan between two series on the same grid: for each integer lag in `−max_lag ..= max_lag`,
//! the Pearson correlation of `reference[t]` with `candidate[t − lag]` over the overlapping `t`.
//!
//! A **positive** lag means the candidate is shifted **later** (delayed by `lag` samples) to
//! match the reference, i.e. the candidate's events happen `lag` samples earlier than the
//! reference's.

use crate::stats::pearson;

/// Result of [`best_lag`].
#[derive(Debug, Clone, PartialEq)]
pub struct LagScan {
    /// Lag (in samples, e.g. TRs) with the highest correlation; ties go to the smallest `|lag|`,
    /// then to the negative one. 0 when no lag gives a finite correlation.
    pub best_lag_trs: i64,
    /// Correlation at `best_lag_trs` (NaN when no lag gives a finite correlation).
    pub best_r: f64,
    /// `(lag, r)` for every scanned lag, in increasing lag; `r` is NaN when the overlap has fewer
    /// than 2 samples or either side is constant there.
    pub r_by_lag: Vec<(i64, f64)>,
}

impl LagScan {
    /// The correlation at `lag`, if it was scanned.
    pub fn r_at(&self, lag: i64) -> Option<f64> {
        self.r_by_lag.iter().find(|(l, _)| *l == lag).map(|&(_, r)| r)
    }
}

/// Correlation of `reference[t]` with `candidate[t − lag]` over the `t` where both exist. The
/// series may differ in length.
pub fn lagged_r(reference: &[f64], candidate: &[f64], lag: i64) -> f64 {
    let n_ref = reference.len() as i64;
    let n_cand = candidate.len() as i64;
    // t ranges over [max(0, lag), min(n_ref, n_cand + lag)).
    let t_lo = lag.max(0);
    let t_hi = n_ref.min(n_cand + lag);
    if t_hi - t_lo < 2 {
        return f64::NAN;
    }
    let r = &reference[t_lo as usize..t_hi as usize];
    let c = &candidate[(t_lo - lag) as usize..(t_hi - lag) as usize];
    pearson(r, c)
}

/// Scans lags `−max_lag ..= max_lag` (see the module docs for the sign) and returns the best.
///
/// ```
/// use cortexflow::features::best_lag;
/// let reference = [0.0, 0.0, 1.0, 3.0, 2.0, 0.0, 0.0, 1.0];
/// let candidate = [1.0, 3.0, 2.0, 0.0, 0.0, 1.0, 0.0, 0.0]; // the same, two samples early
/// let scan = best_lag(&reference, &candidate, 3);
/// assert_eq!(scan.best_lag_trs, 2);
/// assert!((scan.best_r - 1.0).abs() < 1e-12);
/// ```
pub fn best_lag(reference: &[f64], candidate: &[f64], max_lag: i64) -> LagScan {
    let max_lag = max_lag.abs();
    let r_by_lag: Vec<(i64, f64)> = (-max_lag..=max_lag)
        .map(|lag| (lag, lagged_r(reference, candidate, lag)))
        .collect();
    let mut best: Option<(i64, f64)> = None;
    for &(lag, r) in &r_by_lag {
        if !r.is_finite() {
            continue;
        }
        let better = match best {
            None => true,
            Some((bl, br)) => r > br || (r == br && (lag.abs(), lag) < (bl.abs(), bl)),
        };
        if better {
            best = Some((lag, r));
        }
    }
    let (best_lag_trs, best_r) = best.unwrap_or((0, f64::NAN));
    LagScan {
        best_lag_trs,
        best_r,
        r_by_lag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    fn bumpy(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * i * 7 + 3 * i) % 11) as f64 + (i as f64 * 0.3).sin())
            .collect()
    }

    #[test]
    fn a_delayed_copy_is_found_at_a_positive_lag() {
        let x = bumpy(60);
        // reference[t] = x[t − 3] (the reference is the later one) and candidate = x.
        let reference: Vec<f64> = (0..60).map(|t| if t >= 3 { x[t - 3] } else { 0.0 }).collect();
        let scan = best_lag(&reference[3..], &x[..57], 5);
        assert_eq!(scan.best_lag_trs, 0);
        let scan = best_lag(&reference, &x, 5);
        assert_eq!(scan.best_lag_trs, 3);
        assert_abs_diff_eq!(scan.best_r, 1.0, epsilon = 1e-12);
        assert_eq!(scan.r_by_lag.len(), 11);
        assert_eq!(scan.r_by_lag[0].0, -5);
    }

    #[test]
    fn an_early_reference_is_found_at_a_negative_lag() {
        let x = bumpy(50);
        let scan = best_lag(&x[4..], &x, 6);
        assert_eq!(scan.best_lag_trs, -4);
        assert_abs_diff_eq!(scan.best_r, 1.0, epsilon = 1e-12);
    }

    #[test]
    fn constant_series_give_nan_and_lag_zero() {
        let scan = best_lag(&[1.0; 10], &[2.0, 3.0, 1.0, 5.0, 2.0, 2.0, 1.0, 0.0, 3.0, 1.0], 2);
        assert!(scan.best_r.is_nan());
        assert_eq!(scan.best_lag_trs, 0);
    }

    #[test]
    fn overlaps_shorter_than_two_give_nan() {
        assert!(lagged_r(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2).is_nan());
        assert!(lagged_r(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], -5).is_nan());
    }
}
