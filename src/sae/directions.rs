//! Decoder-direction utilities for the analyses that compare or edit features:
//!
//! - [`decoder_alignment`]: for every feature of SAE `a`, the feature of SAE `b` whose decoder
//!   direction is most similar (cosine of the rows of `W_dec`; the input scale is a scalar per SAE,
//!   so it does not change cosines). Used to match features between layers ℓ−Δ and ℓ
//!   (METHOD.md §6, prediction-error features). Computed in blocks of 1024 rows of `a`, so memory
//!   is O(1024 · d_sae_b) whatever the sizes; ties go to the lower index of `b`.
//! - [`reconstruct_with_ablation`]: the reconstruction of `x` with chosen features replaced by a
//!   constant (their mean activation on reference rows, see [`mean_codes`]), the "mean ablation"
//!   of a feature category before the encoding model is refitted (METHOD.md §7).

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use super::model::Sae;
use crate::{Error, Result};

const BLOCK: usize = 1024;

/// Best match in `b` of each feature of `a`: (feature of b, cosine similarity).
pub fn decoder_alignment(a: &Sae, b: &Sae) -> Result<Vec<(u32, f32)>> {
    if a.d_in() != b.d_in() {
        return Err(Error::Invalid(format!(
            "decoder alignment needs SAEs of the same input width ({} vs {})",
            a.d_in(),
            b.d_in()
        )));
    }
    let unit = |w: &Array2<f32>| {
        let mut w = w.clone();
        for mut r in w.rows_mut() {
            let n = r.dot(&r).sqrt();
            if n > 0.0 {
                r /= n;
            }
        }
        w
    };
    let (ua, ub) = (unit(&a.weights.w_dec), unit(&b.weights.w_dec));
    let blocks: Vec<Vec<(u32, f32)>> = (0..ua.nrows().div_ceil(BLOCK))
        .into_par_iter()
        .map(|k| {
            let rows = ua.slice(s![k * BLOCK..((k + 1) * BLOCK).min(ua.nrows()), ..]);
            let sims = rows.dot(&ub.t()); // (block, d_sae_b)
            sims.rows()
                .into_iter()
                .map(|r| {
                    let mut best = (0u32, f32::NEG_INFINITY);
                    for (j, &v) in r.iter().enumerate() {
                        if v > best.1 {
                            best = (j as u32, v);
                        }
                    }
                    best
                })
                .collect()
        })
        .collect();
    Ok(blocks.into_iter().flatten().collect())
}

/// Mean code of every feature over `x_ref (n_rows, d_in)` (zeros included), (d_sae).
pub fn mean_codes(sae: &Sae, x_ref: ArrayView2<'_, f32>) -> Array1<f32> {
    let codes = sae.encode(x_ref);
    codes.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(sae.d_sae()))
}

/// `decode(f')` where `f' = encode(x)` with the columns `features` set to `values[feature]`.
pub fn reconstruct_with_ablation(
    sae: &Sae,
    x: ArrayView2<'_, f32>,
    features: &[usize],
    values: &Array1<f32>,
) -> Result<Array2<f32>> {
    sae.check_input(x.ncols())?;
    if values.len() != sae.d_sae() {
        return Err(Error::Invalid(format!(
            "ablation values: {} for {} features",
            values.len(),
            sae.d_sae()
        )));
    }
    if let Some(&f) = features.iter().find(|&&f| f >= sae.d_sae()) {
        return Err(Error::Invalid(format!(
            "ablation: feature {f} ≥ d_sae = {}",
            sae.d_sae()
        )));
    }
    let mut codes = sae.encode(x);
    for &f in features {
        codes.column_mut(f).fill(values[f]);
    }
    Ok(sae.decode(codes.view()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::{ReluSae, SaeKind};
    use crate::stats::SplitMix64;

    #[test]
    fn a_permuted_copy_is_matched_feature_for_feature() {
        let a = Sae::from(ReluSae::random(16, 40, 1));
        let perm: Vec<usize> = (0..40).map(|i| (i * 7 + 3) % 40).collect(); // a permutation
        let mut w = a.weights.clone();
        for (new, &old) in perm.iter().enumerate() {
            w.w_dec.row_mut(new).assign(&a.weights.w_dec.row(old));
            // scale must not matter
            w.w_dec.row_mut(new).mapv_inplace(|v| 3.0 * v);
        }
        let b = Sae::from(w);
        let m = decoder_alignment(&a, &b).unwrap();
        for (old, &(best, cos)) in m.iter().enumerate() {
            assert_eq!(perm[best as usize], old);
            assert!((cos - 1.0).abs() < 1e-5, "{cos}");
        }
        let c = Sae::from(ReluSae::random(8, 40, 1));
        assert!(decoder_alignment(&a, &c).is_err());
    }

    #[test]
    fn ablation_to_the_mean_replaces_exactly_the_chosen_codes() {
        let sae = Sae::new(SaeKind::TopK { k: 5 }, ReluSae::random(12, 48, 2), true).unwrap();
        let mut rng = SplitMix64::new(3);
        let x = Array2::from_shape_simple_fn((50, 12), || rng.normal() as f32);
        let means = mean_codes(&sae, x.view());
        let none = reconstruct_with_ablation(&sae, x.view(), &[], &means).unwrap();
        assert_eq!(none, sae.decode(sae.encode(x.view()).view()));
        let all: Vec<usize> = (0..48).collect();
        let abl = reconstruct_with_ablation(&sae, x.view(), &all, &means).unwrap();
        // every row becomes the decoding of the mean code
        let mean_row = sae.decode(means.view().insert_axis(Axis(0)));
        for r in abl.rows() {
            for (a, b) in r.iter().zip(mean_row.row(0)) {
                assert!((a - b).abs() < 1e-5);
            }
        }
        // ablating one feature changes the reconstruction only along its decoder direction
        let f = 7;
        let one = reconstruct_with_ablation(&sae, x.view(), &[f], &means).unwrap();
        let codes = sae.encode(x.view());
        let dir = sae.weights.w_dec.row(f).mapv(|v| v / sae.weights.input_scale);
        for i in 0..50 {
            let want = &none.row(i) + &(&dir * (means[f] - codes[[i, f]]));
            for (a, b) in one.row(i).iter().zip(want.iter()) {
                assert!((a - b).abs() < 1e-4);
            }
        }
        assert!(reconstruct_with_ablation(&sae, x.view(), &[48], &means).is_err());
    }
}
