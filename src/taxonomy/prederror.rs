//! Prediction-error features between layers ℓ − Δ and ℓ (METHOD.md §9, exploratory).
//!
//! 1. Alignment: every layer-ℓ feature i is matched with the layer-(ℓ−Δ) feature π(i) whose
//!    decoder direction has the largest cosine with its own ([`decoder_alignment`]). Both SAEs
//!    decode into the residual stream, so their decoder rows live in the same d_model space (each
//!    SAE's input scale is one scalar, which a cosine ignores).
//! 2. Residual: per feature, f_i^(ℓ) = α_i f_π(i)^(ℓ−Δ) + β_i + ε_i by ordinary least squares over
//!    the story's words ([`prediction_residuals`]); ε_i is what layer ℓ adds beyond the aligned
//!    earlier feature. When the earlier feature is constant over the words, α_i = 0 and β_i is the
//!    mean, so ε_i is f_i centred.
//! 3. The pipeline encodes the raw activations together with ε and reports Δr over the raw
//!    activations alone (the set `raw+pred-error` against `raw`).

use ndarray::{s, Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Rows of the cosine matrix computed per block (bounds the memory of the alignment).
const BLOCK_ROWS: usize = 512;

/// Best earlier match of every feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alignment {
    /// π(i): index of the layer-(ℓ−Δ) feature matched to layer-ℓ feature i.
    pub matched: Vec<u32>,
    /// cos(d_i^(ℓ), d_π(i)^(ℓ−Δ)).
    pub cosine: Vec<f32>,
}

fn unit_rows(w: ArrayView2<'_, f32>) -> Array2<f32> {
    let mut u = w.to_owned();
    for mut row in u.axis_iter_mut(Axis(0)) {
        let n = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt();
        if n > 0.0 {
            row.mapv_inplace(|v| (v as f64 / n) as f32);
        }
    }
    u
}

/// π and the cosines for decoders `dec` (d_sae, d_model) of layer ℓ and `dec_prev`
/// (d_sae_prev, d_model) of layer ℓ − Δ. Ties go to the lower index; a zero decoder row has
/// cosine 0 with everything and matches feature 0.
pub fn decoder_alignment(dec: ArrayView2<'_, f32>, dec_prev: ArrayView2<'_, f32>) -> Result<Alignment> {
    if dec.ncols() != dec_prev.ncols() {
        return Err(Error::Invalid(format!(
            "prediction-error alignment: the decoders have {} and {} input dimensions (the two layers' SAEs must decode into the same residual stream)",
            dec.ncols(),
            dec_prev.ncols()
        )));
    }
    if dec_prev.nrows() == 0 {
        return Err(Error::Invalid(
            "prediction-error alignment: the earlier SAE has no features".into(),
        ));
    }
    let u = unit_rows(dec);
    let v = unit_rows(dec_prev);
    let vt = v.t();
    let blocks: Vec<(usize, usize)> = (0..u.nrows())
        .step_by(BLOCK_ROWS)
        .map(|a| (a, (a + BLOCK_ROWS).min(u.nrows())))
        .collect();
    let parts: Vec<Vec<(u32, f32)>> = blocks
        .par_iter()
        .map(|&(a, b)| {
            let c = u.slice(s![a..b, ..]).dot(&vt);
            c.axis_iter(Axis(0))
                .map(|row| {
                    let mut best = (0u32, f32::NEG_INFINITY);
                    for (j, &x) in row.iter().enumerate() {
                        if x > best.1 {
                            best = (j as u32, x);
                        }
                    }
                    if !best.1.is_finite() {
                        best = (0, 0.0);
                    }
                    best
                })
                .collect()
        })
        .collect();
    let (matched, cosine) = parts.into_iter().flatten().unzip();
    Ok(Alignment { matched, cosine })
}

/// The per-feature least-squares fit of layer-ℓ activations on the aligned earlier feature.
#[derive(Debug, Clone, PartialEq)]
pub struct Residuals {
    /// ε (n_words, d_sae).
    pub eps: Array2<f32>,
    /// α_i.
    pub alpha: Vec<f64>,
    /// β_i.
    pub beta: Vec<f64>,
    /// Share of f_i's variance over the words explained by the earlier feature (R² of the
    /// simple regression, 0 when f_i is constant).
    pub r2: Vec<f64>,
}

/// ε_i = f_i − (α_i f_π(i) + β_i), α and β by least squares over the rows (see the module docs).
/// `codes` (n_words, d_sae) at layer ℓ, `codes_prev` (n_words, d_sae_prev) at layer ℓ − Δ.
pub fn prediction_residuals(
    codes: ArrayView2<'_, f32>,
    codes_prev: ArrayView2<'_, f32>,
    alignment: &Alignment,
) -> Result<Residuals> {
    if codes.nrows() != codes_prev.nrows() {
        return Err(Error::Invalid(format!(
            "prediction error: layer ℓ has {} words but layer ℓ − Δ has {}",
            codes.nrows(),
            codes_prev.nrows()
        )));
    }
    if alignment.matched.len() != codes.ncols() {
        return Err(Error::Invalid(format!(
            "prediction error: the alignment covers {} features but the codes have {}",
            alignment.matched.len(),
            codes.ncols()
        )));
    }
    if let Some(&j) = alignment.matched.iter().find(|&&j| j as usize >= codes_prev.ncols()) {
        return Err(Error::Invalid(format!(
            "prediction error: matched feature {j} is out of range (layer ℓ − Δ has {} features)",
            codes_prev.ncols()
        )));
    }
    let n = codes.nrows();
    if n == 0 {
        return Err(Error::Invalid("prediction error: no words".into()));
    }
    let fits: Vec<(Vec<f32>, f64, f64, f64)> = (0..codes.ncols())
        .into_par_iter()
        .map(|i| {
            let y = codes.column(i);
            let x = codes_prev.column(alignment.matched[i] as usize);
            let my = y.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
            let mx = x.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
            let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
            for (a, b) in x.iter().zip(y.iter()) {
                let (dx, dy) = (*a as f64 - mx, *b as f64 - my);
                sxx += dx * dx;
                sxy += dx * dy;
                syy += dy * dy;
            }
            let alpha = if sxx > 0.0 { sxy / sxx } else { 0.0 };
            let beta = my - alpha * mx;
            let r2 = if syy > 0.0 && sxx > 0.0 {
                (sxy * sxy / (sxx * syy)).min(1.0)
            } else {
                0.0
            };
            let e: Vec<f32> = x
                .iter()
                .zip(y.iter())
                .map(|(a, b)| (*b as f64 - alpha * *a as f64 - beta) as f32)
                .collect();
            (e, alpha, beta, r2)
        })
        .collect();
    let mut eps = Array2::<f32>::zeros((n, codes.ncols()));
    let mut alpha = Vec::with_capacity(fits.len());
    let mut beta = Vec::with_capacity(fits.len());
    let mut r2 = Vec::with_capacity(fits.len());
    for (i, (e, a, b, q)) in fits.into_iter().enumerate() {
        eps.column_mut(i).assign(&ndarray::Array1::from(e));
        alpha.push(a);
        beta.push(b);
        r2.push(q);
    }
    Ok(Residuals { eps, alpha, beta, r2 })
}

/// The word-level arrays of the paper's prediction-error sets for a feature subset (the
/// semantic set; METHOD.md §9), each to be encoded beside the subset's own codes:
/// - `error`: ε of the subset's features against their aligned earlier features;
/// - `shuffled_error`: the same residualisation against a shuffled alignment (π composed with a
///   seeded permutation σ of all earlier features): as many columns, built the same way, but
///   residualised on earlier features the decoders did not align;
/// - `earlier`: the aligned earlier features themselves, unresidualised.
///
/// A Δr of `codes + error` over `codes` alone that the two controls also show is the gain of more
/// columns, not of prediction error. Note that when every α_i ≠ 0, `codes + error` and
/// `codes + earlier` span the same column space (ε_i = f_i − α_i f_π(i) − β_i): a linear encoding
/// model can tell them apart only through its penalty, so Δr of `codes + error` is, to first
/// order, the aligned earlier features' contribution; `shuffled_error` is the control that spans
/// a different space.
#[derive(Debug, Clone, PartialEq)]
pub struct PredErrorSets {
    pub error: Array2<f32>,
    pub shuffled_error: Array2<f32>,
    pub earlier: Array2<f32>,
    /// The shuffled alignment's matches, per subset feature.
    pub shuffled_matches: Vec<u32>,
}

/// [`PredErrorSets`] of the features `subset` (indices into `codes`' columns).
pub fn pred_error_sets(
    codes: ArrayView2<'_, f32>,
    codes_prev: ArrayView2<'_, f32>,
    alignment: &Alignment,
    subset: &[usize],
    seed: u64,
) -> Result<PredErrorSets> {
    if subset.is_empty() {
        return Err(Error::Invalid(
            "prediction error: the feature set is empty (no semantic features at this layer)".into(),
        ));
    }
    if let Some(&i) = subset.iter().find(|&&i| i >= codes.ncols()) {
        return Err(Error::Invalid(format!(
            "prediction error: feature {i} is out of range (the codes have {} features)",
            codes.ncols()
        )));
    }
    let sub_codes = codes.select(Axis(1), subset);
    let sub = |matched: Vec<u32>| Alignment {
        cosine: vec![f32::NAN; matched.len()],
        matched,
    };
    let matched: Vec<u32> = subset.iter().map(|&i| alignment.matched[i]).collect();
    // σ: a seeded permutation of all earlier features (Fisher–Yates); the shuffled match of
    // feature i is σ(π(i)), so features that share a match still share one
    let mut sigma: Vec<u32> = (0..codes_prev.ncols() as u32).collect();
    let mut rng = crate::stats::SplitMix64::new(seed);
    for k in (1..sigma.len()).rev() {
        let j = rng.below(k as u64 + 1) as usize;
        sigma.swap(k, j);
    }
    let shuffled: Vec<u32> = matched.iter().map(|&j| sigma[j as usize]).collect();
    let error = prediction_residuals(sub_codes.view(), codes_prev, &sub(matched.clone()))?.eps;
    let shuffled_error = prediction_residuals(sub_codes.view(), codes_prev, &sub(shuffled.clone()))?.eps;
    let cols: Vec<usize> = matched.iter().map(|&j| j as usize).collect();
    let earlier = codes_prev.select(Axis(1), &cols);
    Ok(PredErrorSets {
        error,
        shuffled_error,
        earlier,
        shuffled_matches: shuffled,
    })
}

/// Median of finite values (NaN when none).
pub fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SplitMix64;

    fn gaussian(rng: &mut SplitMix64, r: usize, c: usize) -> Array2<f32> {
        Array2::from_shape_fn((r, c), |_| rng.normal() as f32)
    }

    #[test]
    fn alignment_recovers_a_permutation_of_noisy_scaled_decoders() {
        let mut rng = SplitMix64::new(3);
        let prev = gaussian(&mut rng, 700, 64);
        // layer ℓ: 600 of the earlier directions, permuted, rescaled, plus a little noise
        let perm: Vec<usize> = (0..600).map(|i| (i * 7 + 3) % 700).collect();
        let noise = gaussian(&mut rng, 600, 64);
        let dec = Array2::from_shape_fn((600, 64), |(i, k)| 2.5 * prev[[perm[i], k]] + 0.05 * noise[[i, k]]);
        let a = decoder_alignment(dec.view(), prev.view()).unwrap();
        for i in 0..600 {
            assert_eq!(a.matched[i] as usize, perm[i], "feature {i}");
            assert!(a.cosine[i] > 0.99, "feature {i}: {}", a.cosine[i]);
        }
        // the cosine is that of the matched rows, computed directly
        let (x, y) = (dec.row(5), prev.row(perm[5]));
        let c = x.dot(&y) / (x.dot(&x).sqrt() * y.dot(&y).sqrt());
        assert!((a.cosine[5] - c).abs() < 1e-5);
        let bad = Array2::<f32>::zeros((3, 10));
        assert!(decoder_alignment(bad.view(), prev.view()).is_err());
    }

    #[test]
    fn residuals_recover_planted_alpha_beta_and_are_orthogonal_to_the_predictor() {
        let mut rng = SplitMix64::new(9);
        let n = 400;
        let prev = gaussian(&mut rng, n, 5);
        let noise = gaussian(&mut rng, n, 3);
        let alignment = Alignment {
            matched: vec![2, 0, 4],
            cosine: vec![1.0; 3],
        };
        let (al, be) = ([0.5f32, -2.0, 0.0], [1.0f32, 0.25, 3.0]);
        let codes = Array2::from_shape_fn((n, 3), |(t, i)| {
            al[i] * prev[[t, alignment.matched[i] as usize]] + be[i] + 0.1 * noise[[t, i]]
        });
        let r = prediction_residuals(codes.view(), prev.view(), &alignment).unwrap();
        for i in 0..3 {
            assert!((r.alpha[i] - al[i] as f64).abs() < 0.03, "α_{i} = {}", r.alpha[i]);
            assert!((r.beta[i] - be[i] as f64).abs() < 0.03, "β_{i} = {}", r.beta[i]);
            let x = prev.column(alignment.matched[i] as usize);
            let e = r.eps.column(i);
            // normal equations: Σ ε = 0 and Σ x ε = 0
            let se: f64 = e.iter().map(|v| *v as f64).sum();
            let sxe: f64 = x.iter().zip(e.iter()).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!(se.abs() < 1e-3 && sxe.abs() < 1e-3, "{se} {sxe}");
        }
        assert!(r.r2[0] > 0.9 && r.r2[2] < 0.05, "{:?}", r.r2);
        // a constant predictor gives α = 0 and the centred feature
        let flat = Array2::<f32>::ones((n, 5));
        let r = prediction_residuals(codes.view(), flat.view(), &alignment).unwrap();
        assert_eq!(r.alpha, vec![0.0; 3]);
        let m: f64 = codes.column(1).iter().map(|v| *v as f64).sum::<f64>() / n as f64;
        assert!((r.eps[[0, 1]] as f64 - (codes[[0, 1]] as f64 - m)).abs() < 1e-5);
        assert!(prediction_residuals(codes.view(), prev.slice(s![..10, ..]), &alignment).is_err());
    }
}
