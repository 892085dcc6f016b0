//! Special functions shared by the analyses: log-gamma, the regularised upper incomplete gamma
//! function and the χ² survival function, the regularised incomplete beta function and the F
//! survival function.
//!
//! May import: nothing of this crate (a leaf of `stats`).

/// Upper tail of the χ² distribution: Q(df/2, x/2), regularised upper incomplete gamma.
pub fn chi2_sf(x: f64, df: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    upper_gamma_q(df / 2.0, x / 2.0)
}

/// Natural log of the gamma function for x > 0 (Lanczos).
pub fn ln_gamma(x: f64) -> f64 {
    // Lanczos approximation (g = 7, n = 9), |error| < 1e-14 for x > 0
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised upper incomplete gamma Q(a, x) (series for x < a + 1, continued fraction otherwise;
/// Numerical Recipes §6.2), relative accuracy ~1e-14.
fn upper_gamma_q(a: f64, x: f64) -> f64 {
    let gln = ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut del, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * (-x + a * x.ln() - gln).exp()
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-x + a * x.ln() - gln).exp() * h
    }
}

/// Regularised incomplete beta I_x(a, b) for a, b > 0, 0 ≤ x ≤ 1: the continued fraction of
/// Numerical Recipes (3rd ed., §6.4, `betacf`) evaluated by the modified Lentz method, on x or on
/// 1 − x (whichever converges fast, x < (a+1)/(a+b+2)); relative accuracy ~1e-14 away from
/// underflow. NaN outside the domain.
pub fn beta_inc_reg(a: f64, b: f64, x: f64) -> f64 {
    beta_inc_reg_xy(a, b, x, 1.0 - x)
}

/// [`beta_inc_reg`] with y = 1 − x given separately (so a small 1 − x keeps its precision).
fn beta_inc_reg_xy(a: f64, b: f64, x: f64, y: f64) -> f64 {
    if !(a > 0.0 && b > 0.0) || !(0.0..=1.0).contains(&x) || !(0.0..=1.0).contains(&y) {
        return f64::NAN;
    }
    if x == 0.0 {
        return 0.0;
    }
    if y == 0.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * y.ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, y) / b
    }
}

/// Continued fraction for I_x(a, b) (Numerical Recipes `betacf`, modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const FPMIN: f64 = 1e-300;
    const EPS: f64 = 1e-16;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < FPMIN {
        d = FPMIN;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..100_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // even step
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < FPMIN {
            d = FPMIN;
        }
        c = 1.0 + aa / c;
        if c.abs() < FPMIN {
            c = FPMIN;
        }
        d = 1.0 / d;
        h *= d * c;
        // odd step
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < FPMIN {
            d = FPMIN;
        }
        c = 1.0 + aa / c;
        if c.abs() < FPMIN {
            c = FPMIN;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() <= EPS {
            break;
        }
    }
    h
}

/// Upper tail of Student's t with `df` degrees of freedom, P(T ≥ t) (as `scipy.stats.t.sf`):
/// ½ I_{df/(df + t²)}(df/2, ½) for t ≥ 0, 1 − that for t < 0. NaN for a NaN t or df ≤ 0.
pub fn t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() || !(df > 0.0) {
        return f64::NAN;
    }
    if t.is_infinite() {
        return if t > 0.0 { 0.0 } else { 1.0 };
    }
    let den = df + t * t;
    let tail = 0.5 * beta_inc_reg_xy(df / 2.0, 0.5, df / den, t * t / den);
    if t >= 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

/// Quantile of Student's t: the t with P(T ≤ t) = `p` (as `scipy.stats.t.ppf`), by bisection on
/// [`t_sf`] to the last bit of the bracket. NaN for p outside (0, 1) or df ≤ 0.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) || !(df > 0.0) {
        return f64::NAN;
    }
    if p < 0.5 {
        return -t_quantile(1.0 - p, df);
    }
    let upper = 1.0 - p; // wanted P(T ≥ t)
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while t_sf(hi, df) > upper {
        hi *= 2.0;
        if hi > 1e300 {
            return f64::INFINITY;
        }
    }
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if t_sf(mid, df) > upper {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Upper tail of the F distribution, P(F_{df1, df2} ≥ f) = I_{df2/(df2 + df1 f)}(df2/2, df1/2)
/// (as `scipy.stats.f.sf(f, df1, df2)`). 1 for f ≤ 0; NaN for a NaN f or a non-positive df.
pub fn f_sf(f: f64, df1: f64, df2: f64) -> f64 {
    if f.is_nan() || !(df1 > 0.0 && df2 > 0.0) {
        return f64::NAN;
    }
    if f <= 0.0 {
        return 1.0;
    }
    if f.is_infinite() {
        return 0.0;
    }
    let den = df2 + df1 * f;
    beta_inc_reg_xy(df2 / 2.0, df1 / 2.0, df2 / den, df1 * f / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn student_t_tail_and_quantile_match_scipy() {
        // scipy 1.x: stats.t.sf(t, df), stats.t.ppf(p, df)
        for (t, df, want) in [
            (2.0, 3.0, 0.06966298427942152),
            (-1.5, 10.0, 0.9177463367772799),
            (0.3, 1.0, 0.4072264209222577),
        ] {
            assert!(
                (t_sf(t, df) - want).abs() < 1e-13 * want.max(1e-3),
                "sf({t}, {df}) = {}",
                t_sf(t, df)
            );
        }
        for (p, df, want) in [
            (0.975, 1.0, 12.706204736174694),
            (0.975, 4.0, 2.7764451051977934),
            (0.975, 18.0, 2.1009220402410382),
            (0.995, 2.5, 7.163728138948783),
            (0.6, 30.0, 0.2556053649519128),
            (0.025, 7.0, -2.3646242515927844),
        ] {
            let got = t_quantile(p, df);
            assert!(
                (got - want).abs() < 1e-10 * want.abs(),
                "ppf({p}, {df}) = {got}, scipy {want}"
            );
        }
        assert!(t_quantile(1.0, 3.0).is_nan() && t_quantile(0.5, 0.0).is_nan());
    }
}
