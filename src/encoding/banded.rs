//! Banded (group) ridge: one penalty per feature space ("band"), for designs that join feature
//! spaces of different sizes and signal, solved by random search over band weights as himalaya's
//! `solve_group_ridge_random_search` (Nunez-Elizalde et al. 2019; Dupré la Tour et al. 2022).
//!
//! Model, per target: minimise ‖y − Σ_b X_b w_b‖² + Σ_b λ_b ‖w_b‖², parameterised as
//! λ_b = α / γ_b with γ on the simplex (Σ_b γ_b = 1). For a given γ this is plain ridge with
//! penalty α on the rescaled design Z = [√γ_1 X_1, …, √γ_B X_B], so each candidate γ costs one
//! per-fold decomposition shared by all α and all targets. Each target keeps the (γ, α) with the
//! best mean CV score (α by [`super::ridge`]'s rule, ties within 1e-10·ln α to the larger; a later
//! γ replaces an earlier one only if it is better by more than f64 ε, as himalaya), and is
//! refitted on all rows. Weights are returned for the *unscaled* X (w_b = √γ_b · v_b).
//!
//! Input: X (n_samples, n_features), Y (n_samples, n_targets), centred (no intercept); `bands`
//! gives the band of every column (0 … n_bands − 1); `gammas` (n_candidates, n_bands), each row
//! on the simplex ([`dirichlet_gammas`] draws them as himalaya does, first row uniform).
//! Output: per target the chosen γ and α, log band weights δ_b = ln(γ_b / α) (himalaya's
//! `deltas`), the CV score of every candidate, and the refitted weights (n_features, n_targets).

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use super::folds::{check_folds, Fold};
use super::ridge::{
    best_alpha, check_alphas, check_finite, factorize, fold_scores, to_mat, AlphaCriterion, RidgeMethod,
    ALPHA_TIE_SLOPE,
};
use crate::stats::SplitMix64;
use crate::{Error, Result};

/// Result of [`solve_banded_ridge_random_search`].
#[derive(Debug, Clone)]
pub struct BandedRidgeResult {
    /// (n_candidates, n_bands): the candidates searched.
    pub gammas: Array2<f64>,
    /// (n_targets): row of `gammas` chosen per target.
    pub best_gamma_index: Vec<usize>,
    /// (n_targets): index into the penalties of the α chosen per target.
    pub best_alpha_index: Vec<usize>,
    /// (n_bands, n_targets): ln(γ_b / α) of the chosen candidate and α.
    pub deltas: Array2<f64>,
    /// (n_candidates, n_targets): mean CV score at the best α of each candidate (plus the
    /// 1e-10·ln α tie slope, as himalaya reports it).
    pub cv_scores: Array2<f64>,
    /// (n_features, n_targets): weights refitted on all rows, for the unscaled design.
    pub weights: Array2<f64>,
}

impl BandedRidgeResult {
    /// Predictions X_test · W: (n_test, n_targets).
    pub fn predict(&self, x_test: ArrayView2<f64>) -> Result<Array2<f64>> {
        if x_test.ncols() != self.weights.nrows() {
            return Err(Error::Invalid(format!(
                "banded ridge predict: model has {} features but X_test has {} columns",
                self.weights.nrows(),
                x_test.ncols()
            )));
        }
        Ok(x_test.dot(&self.weights))
    }
}

/// `n_candidates` band weightings on the simplex: the first uniform (1/n_bands each), the others
/// Dirichlet draws cycling through `concentration` (himalaya's default [0.1, 1.0]: 0.1 favours
/// one dominant band, 1.0 is uniform on the simplex). Deterministic in `seed` (not numpy's
/// stream: pass the same matrix to both tools to compare them).
pub fn dirichlet_gammas(n_candidates: usize, n_bands: usize, concentration: &[f64], seed: u64) -> Result<Array2<f64>> {
    if n_candidates == 0 || n_bands == 0 || concentration.is_empty() || concentration.iter().any(|&c| !(c > 0.0)) {
        return Err(Error::Invalid(format!(
            "dirichlet_gammas: expected ≥ 1 candidate, ≥ 1 band and positive concentrations, found {n_candidates}, \
             {n_bands}, {concentration:?}"
        )));
    }
    let mut rng = SplitMix64::new(seed);
    let mut g = Array2::<f64>::zeros((n_candidates, n_bands));
    for i in 0..n_candidates {
        if i == 0 {
            g.row_mut(0).fill(1.0 / n_bands as f64);
            continue;
        }
        let c = concentration[(i - 1) % concentration.len()];
        let draws: Vec<f64> = (0..n_bands).map(|_| gamma_sample(c, &mut rng)).collect();
        let total: f64 = draws.iter().sum();
        for b in 0..n_bands {
            g[[i, b]] = if total > 0.0 {
                draws[b] / total
            } else {
                1.0 / n_bands as f64
            };
        }
    }
    Ok(g)
}

/// One Gamma(shape, 1) draw (Marsaglia–Tsang; shape < 1 by the boosting identity).
fn gamma_sample(shape: f64, rng: &mut SplitMix64) -> f64 {
    if shape < 1.0 {
        let u = rng.next_f64().max(f64::MIN_POSITIVE);
        return gamma_sample(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = rng.next_f64();
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// Banded ridge by random search over `gammas` (see the module doc). Candidates are evaluated one
/// after another (each with the folds and target chunks in parallel); the result does not depend
/// on the number of threads.
pub fn solve_banded_ridge_random_search(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    bands: &[usize],
    gammas: ArrayView2<f64>,
    alphas: &[f64],
    folds: &[Fold],
    criterion: AlphaCriterion,
) -> Result<BandedRidgeResult> {
    let (n, p) = x.dim();
    let t = y.ncols();
    if y.nrows() != n || bands.len() != p {
        return Err(Error::Invalid(format!(
            "banded ridge: X {:?}, Y {:?} and {} band labels do not agree (same rows, one label per column)",
            x.dim(),
            y.dim(),
            bands.len()
        )));
    }
    let n_bands = gammas.ncols();
    if let Some(c) = (0..p).find(|&c| bands[c] >= n_bands) {
        return Err(Error::Invalid(format!(
            "banded ridge: column {c} is in band {} but the candidates have {n_bands} bands",
            bands[c]
        )));
    }
    if let Some(i) = (0..gammas.nrows()).find(|&i| gammas.row(i).iter().any(|&g| !(g >= 0.0 && g.is_finite()))) {
        return Err(Error::Invalid(format!(
            "banded ridge: candidate {i} has a negative or non-finite band weight: {:?}",
            gammas.row(i)
        )));
    }
    if gammas.nrows() == 0 {
        return Err(Error::Invalid("banded ridge: no candidate band weights".into()));
    }
    check_alphas(alphas)?;
    check_finite(x, "X")?;
    check_finite(y, "Y")?;
    check_folds(folds, n, false)?;
    let ym = to_mat(y);
    let scaled = |i: usize| -> Array2<f64> {
        let mut z = x.to_owned();
        for (c, mut col) in z.axis_iter_mut(Axis(1)).enumerate() {
            col.mapv_inplace(|v| v * gammas[[i, bands[c]]].sqrt());
        }
        z
    };
    let mut best_score = vec![f64::NEG_INFINITY; t];
    let mut best_gamma_index = vec![0usize; t];
    let mut best_alpha_index = vec![0usize; t];
    let mut cv_scores = Array2::<f64>::zeros((gammas.nrows(), t));
    for i in 0..gammas.nrows() {
        let z = scaled(i);
        let mut s = fold_scores(
            to_mat(z.view()).as_ref(),
            ym.as_ref(),
            alphas,
            folds,
            criterion,
            RidgeMethod::Auto,
        )?;
        s.mapv_inplace(|v| v / folds.len() as f64);
        for j in 0..t {
            let a = best_alpha(alphas, s.column(j));
            let score = s[[a, j]] + ALPHA_TIE_SLOPE * alphas[a].ln();
            cv_scores[[i, j]] = score;
            if score > best_score[j] + f64::EPSILON {
                best_score[j] = score;
                best_gamma_index[j] = i;
                best_alpha_index[j] = a;
            }
        }
    }
    // refit: one decomposition per candidate that some target chose
    let mut used: Vec<usize> = best_gamma_index.clone();
    used.sort_unstable();
    used.dedup();
    let parts: Vec<(usize, Vec<usize>, Array2<f64>)> = used
        .par_iter()
        .map(|&i| {
            let cols: Vec<usize> = (0..t).filter(|&j| best_gamma_index[j] == i).collect();
            let z = scaled(i);
            let yc = y.select(Axis(1), &cols);
            let path =
                factorize(to_mat(z.view()).as_ref(), RidgeMethod::Auto)?.path(to_mat(yc.view()).as_ref(), alphas);
            let idx: Vec<usize> = cols.iter().map(|&j| best_alpha_index[j]).collect();
            let mut w = path.weights_per_target(&idx)?; // (p, cols) for Z
            for (c, mut row) in w.axis_iter_mut(Axis(0)).enumerate() {
                row.mapv_inplace(|v| v * gammas[[i, bands[c]]].sqrt());
            }
            Ok((i, cols, w))
        })
        .collect::<Result<_>>()?;
    let mut weights = Array2::<f64>::zeros((p, t));
    for (_, cols, w) in &parts {
        for (k, &j) in cols.iter().enumerate() {
            weights.column_mut(j).assign(&w.column(k));
        }
    }
    let mut deltas = Array2::<f64>::zeros((n_bands, t));
    for j in 0..t {
        for b in 0..n_bands {
            deltas[[b, j]] = (gammas[[best_gamma_index[j], b]] / alphas[best_alpha_index[j]]).ln();
        }
    }
    Ok(BandedRidgeResult {
        gammas: gammas.to_owned(),
        best_gamma_index,
        best_alpha_index,
        deltas,
        cv_scores,
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::{contiguous_block_folds, ridge_cv_with};
    use approx::assert_abs_diff_eq;

    #[test]
    fn dirichlet_candidates_lie_on_the_simplex_and_the_first_is_uniform() {
        let g = dirichlet_gammas(50, 3, &[0.1, 1.0], 4).unwrap();
        assert_eq!(g.row(0).to_vec(), vec![1.0 / 3.0; 3]);
        for row in g.rows() {
            assert_abs_diff_eq!(row.sum(), 1.0, epsilon = 1e-12);
            assert!(row.iter().all(|&v| v >= 0.0));
        }
        // concentration 0.1 gives spiky draws: some candidate puts > 90% on one band
        assert!(g.rows().into_iter().any(|r| r.iter().any(|&v| v > 0.9)));
    }

    #[test]
    fn one_uniform_candidate_is_plain_ridge_with_the_penalty_scaled_by_the_number_of_bands() {
        // γ = (1/2, 1/2): Z = X/√2, so ridge(Z, α) = ridge(X, 2α), weights on X scaled back
        let mut rng = SplitMix64::new(8);
        let x = Array2::from_shape_simple_fn((120, 6), || rng.normal());
        let y = Array2::from_shape_simple_fn((120, 3), || rng.normal()) + x.column(0).insert_axis(Axis(1));
        let folds = contiguous_block_folds(120, 4, 0).unwrap();
        let alphas = [1.0, 10.0, 100.0];
        let g = Array2::from_elem((1, 2), 0.5);
        let banded = solve_banded_ridge_random_search(
            x.view(),
            y.view(),
            &[0, 0, 0, 1, 1, 1],
            g.view(),
            &alphas,
            &folds,
            AlphaCriterion::NegMse,
        )
        .unwrap();
        let plain = ridge_cv_with(x.view(), y.view(), &[2.0, 20.0, 200.0], &folds, AlphaCriterion::NegMse).unwrap();
        assert_eq!(banded.best_alpha_index, plain.best_alpha_index);
        let w = plain.weights().unwrap();
        for (a, b) in banded.weights.iter().zip(w.iter()) {
            assert_abs_diff_eq!(a, b, epsilon = 1e-10);
        }
    }
}
