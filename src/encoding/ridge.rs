//! Multi-target ridge regression over a path of penalties from one spectral decomposition, ridge
//! with α chosen per target by cross-validation, and nested cross-validation of the whole procedure.
//!
//! Model: for each target column y_j, w_j(α) = argmin ‖y_j − X w‖² + α‖w‖². No intercept: callers
//! center or z-score X and Y first ([`nested_cv_ridge`] z-scores per outer fold with training
//! statistics). Shapes: X (n_samples, n_features), Y (n_samples, n_targets), W (n_features, n_targets).
//!
//! Spectral solution: with the thin SVD X = U diag(s) Vᵀ, W_α = V diag(s / (s² + α)) Uᵀ Y. The
//! decomposition and Uᵀ Y are computed once; every α then costs only a diagonal rescaling, and
//! predictions for new rows are X_test V diag(s / (s² + α)) Uᵀ Y without forming W. When the design
//! is wide (n_features > n_samples) the same spectrum comes from the eigendecomposition of the
//! n × n kernel X Xᵀ = U diag(λ) Uᵀ (λ = s²) and W_α = Xᵀ U diag(1 / (λ + α)) Uᵀ Y ("kernel" form).
//!
//! Determinism: all dense linear algebra runs sequentially inside faer on faer-owned (aligned)
//! copies; rayon only runs independent tasks (folds, penalties, target chunks) whose results are
//! gathered in a fixed order and reduced sequentially. Results are bit-identical for any number
//! of threads on a given machine.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
use faer::linalg::matmul::matmul;
use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors};
use faer::{Accum, Mat, MatRef, Par};
use faer_ext::IntoFaer;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::folds::{block_folds_within, check_folds, Fold};
use crate::stats::{pearson, zscore_columns};
use crate::{Error, Result};

/// Targets are scored in chunks of this many columns, so that memory for one task stays at
/// (n_test, TARGET_CHUNK) whatever the number of targets.
const TARGET_CHUNK: usize = 1024;

/// How [`solve_ridge_with_method`] decomposes the design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RidgeMethod {
    /// `Kernel` when n_features > n_samples, `Gram` otherwise.
    Auto,
    /// Thin SVD of X (n, p): O(n p min(n, p)); the most accurate, and the slowest (the
    /// bidiagonalisation is memory-bound).
    Svd,
    /// The same factors as `Svd` from the eigendecomposition of Xᵀ X (p, p): X Xᵀ's twin for tall
    /// designs. O(n p² + p³), almost all of it matrix products; like `Kernel` it squares the
    /// condition number (directions with s < s_max · sqrt(max(n, p) · ε) are dropped), which
    /// changes nothing for penalties above that round-off level.
    Gram,
    /// Eigendecomposition of X Xᵀ (n, n): O(n² p + n³); cheaper and as accurate when p ≫ n, but it
    /// squares the condition number, so directions with s < s_max · sqrt(max(n, p) · ε) are lost.
    Kernel,
}

/// The held-out score that [`ridge_cv_with`] maximises when choosing each target's penalty.
///
/// Pearson r is scale-free: on a target without signal every penalty gives a near-zero r and the
/// choice among them is arbitrary. R² also rewards shrinking useless predictions towards zero, so
/// targets without signal get large penalties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaCriterion {
    /// Pearson correlation between predictions and observations (the default).
    #[default]
    Pearson,
    /// Coefficient of determination 1 − Σ(y − ŷ)² / Σ(y − ȳ)² (ȳ: mean of the test rows).
    R2,
    /// Negative mean squared error −Σ(y − ŷ)² / n_test: himalaya's default `l2_neg_loss`, so that
    /// penalties chosen with it are comparable with `himalaya.ridge.solve_ridge_cv_svd`.
    NegMse,
}

impl AlphaCriterion {
    /// Parses `pearson`, `r2` or `neg-mse` (the names used in pipeline files and on the CLI).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "pearson" | "r" => Ok(AlphaCriterion::Pearson),
            "r2" => Ok(AlphaCriterion::R2),
            "neg-mse" | "neg_mse" | "l2" => Ok(AlphaCriterion::NegMse),
            other => Err(Error::Invalid(format!(
                "penalty criterion: expected one of pearson, r2, neg-mse, found {other:?}"
            ))),
        }
    }
}

/// `n` penalties evenly spaced in log10 from `10^lo_exp` to `10^hi_exp` inclusive.
/// `log_alphas(0.0, 6.0, 13)` gives 1, 10^0.5, 10, …, 10^6 (integer powers are exact).
pub fn log_alphas(lo_exp: f64, hi_exp: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![10f64.powf(lo_exp)],
        _ => (0..n)
            .map(|i| 10f64.powf(lo_exp + (hi_exp - lo_exp) * i as f64 / (n - 1) as f64))
            .collect(),
    }
}

/// The method's default grid: 13 penalties, 10⁰ … 10⁶ in half decades (METHOD.md §5).
pub fn default_alphas() -> Vec<f64> {
    log_alphas(0.0, 6.0, 13)
}

/// A ridge fit for a whole path of penalties: the spectral factors of X and Uᵀ Y, from which the
/// weights or predictions for any penalty (or a different penalty per target) follow cheaply.
///
/// Internally predictions are `(X_test · basis) · diag(g_α) · uty` with `basis` (p, r) = V and
/// g = s / (s² + α) for the SVD form, or `basis` = Xᵀ U and g = 1 / (λ + α) for the kernel form;
/// r is the numerical rank (directions at the round-off level are dropped, so α → 0 gives the
/// minimum-norm least-squares solution).
#[derive(Debug, Clone)]
pub struct RidgePath {
    method: RidgeMethod,
    alphas: Vec<f64>,
    /// (n_features, rank)
    basis: Mat<f64>,
    /// (rank): singular values (SVD form) or kernel eigenvalues (kernel form), decreasing.
    spectrum: Vec<f64>,
    /// (rank, n_targets): Uᵀ Y.
    uty: Mat<f64>,
}

/// Spectral ridge solver for all `alphas` at once (the method chosen by [`RidgeMethod::Auto`]: thin
/// SVD of X for tall designs, eigendecomposition of the kernel X Xᵀ when n_features > n_samples).
///
/// `x`: (n_samples, n_features), `y`: (n_samples, n_targets), already centered (no intercept is
/// fitted). `alphas`: non-empty, finite, > 0. Errors on shape mismatches, non-finite values, or a
/// decomposition that does not converge.
pub fn solve_ridge_svd(x: ArrayView2<f64>, y: ArrayView2<f64>, alphas: &[f64]) -> Result<RidgePath> {
    solve_ridge_with_method(x, y, alphas, RidgeMethod::Auto)
}

/// [`solve_ridge_svd`] with an explicit decomposition (both give the same path up to round-off).
pub fn solve_ridge_with_method(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    alphas: &[f64],
    method: RidgeMethod,
) -> Result<RidgePath> {
    let (n, p) = x.dim();
    if y.nrows() != n {
        return Err(Error::Invalid(format!(
            "ridge: X has {n} rows but Y has {} (expected one row per sample in both)",
            y.nrows()
        )));
    }
    if n == 0 || p == 0 {
        return Err(Error::Invalid(format!(
            "ridge: expected a non-empty design, found shape ({n}, {p})"
        )));
    }
    check_alphas(alphas)?;
    check_finite(x, "X")?;
    check_finite(y, "Y")?;
    let method = match method {
        RidgeMethod::Auto if p > n => RidgeMethod::Kernel,
        RidgeMethod::Auto => RidgeMethod::Gram,
        m => m,
    };
    let factors = factorize(to_mat(x).as_ref(), method)?;
    Ok(factors.path(to_mat(y).as_ref(), alphas))
}

/// The spectral factors of one design: everything a ridge path needs except the targets.
#[derive(Debug, Clone)]
pub(crate) struct Factors {
    pub(crate) method: RidgeMethod,
    /// (n_features, rank)
    pub(crate) basis: Mat<f64>,
    /// (rank): singular values (SVD) or kernel eigenvalues (kernel), decreasing.
    pub(crate) spectrum: Vec<f64>,
    /// (n_samples, rank)
    pub(crate) u: Mat<f64>,
}

/// Decomposes X (n, p) by `method` (`Auto` resolved by shape).
pub(crate) fn factorize(x: MatRef<'_, f64>, method: RidgeMethod) -> Result<Factors> {
    let (n, p) = x.shape();
    let method = match method {
        RidgeMethod::Auto if p > n => RidgeMethod::Kernel,
        RidgeMethod::Auto => RidgeMethod::Gram,
        m => m,
    };
    let (basis, spectrum, u) = match method {
        RidgeMethod::Svd => svd_factors(x)?,
        RidgeMethod::Gram => gram_factors(x)?,
        _ => kernel_factors(x)?,
    };
    Ok(Factors {
        method,
        basis,
        spectrum,
        u,
    })
}

impl Factors {
    /// The path for targets `y` (n, t): stores Uᵀ Y.
    pub(crate) fn path(self, y: MatRef<'_, f64>, alphas: &[f64]) -> RidgePath {
        let uty = self.uty(y);
        RidgePath {
            method: self.method,
            alphas: alphas.to_vec(),
            basis: self.basis,
            spectrum: self.spectrum,
            uty,
        }
    }

    /// [`Factors::path`] keeping the factors for other targets (the basis and spectrum are copied).
    pub(crate) fn path_cloned(&self, y: MatRef<'_, f64>, alphas: &[f64]) -> RidgePath {
        RidgePath {
            method: self.method,
            alphas: alphas.to_vec(),
            basis: self.basis.clone(),
            spectrum: self.spectrum.clone(),
            uty: self.uty(y),
        }
    }

    /// Uᵀ Y (rank, t).
    fn uty(&self, y: MatRef<'_, f64>) -> Mat<f64> {
        // Uᵀ Y, target chunks in parallel (each chunk one sequential product: deterministic)
        let t = y.ncols();
        let chunks: Vec<(usize, usize)> = (0..t)
            .step_by(TARGET_CHUNK)
            .map(|c| (c, (c + TARGET_CHUNK).min(t)))
            .collect();
        let parts: Vec<Mat<f64>> = chunks
            .par_iter()
            .map(|&(c0, c1)| mm(self.u.as_ref().transpose(), y.subcols(c0, c1 - c0)))
            .collect();
        let mut uty = Mat::<f64>::zeros(self.u.ncols(), t); // (r, t)
        for (&(c0, c1), part) in chunks.iter().zip(&parts) {
            uty.as_mut().subcols_mut(c0, c1 - c0).copy_from(part.as_ref());
        }
        uty
    }

    fn gains(&self, alpha: f64) -> Vec<f64> {
        gains(self.method, &self.spectrum, alpha)
    }
}

/// Per-direction gains for penalty α: s / (s² + α) (SVD form) or 1 / (λ + α) (kernel form).
pub(crate) fn gains(method: RidgeMethod, spectrum: &[f64], alpha: f64) -> Vec<f64> {
    match method {
        RidgeMethod::Svd | RidgeMethod::Gram => spectrum.iter().map(|s| s / (s * s + alpha)).collect(),
        _ => spectrum.iter().map(|l| 1.0 / (l + alpha)).collect(),
    }
}

/// Thin SVD: returns (V_r (p, r), s_r, U_r (n, r)) for the singular values above round-off.
fn svd_factors(x: MatRef<'_, f64>) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let (n, p) = x.shape();
    let k = n.min(p);
    let mut s = Diag::<f64>::zeros(k);
    let mut u = Mat::<f64>::zeros(n, k);
    let mut v = Mat::<f64>::zeros(p, k);
    let mut buf = MemBuffer::new(svd_scratch::<f64>(
        n,
        p,
        ComputeSvdVectors::Thin,
        ComputeSvdVectors::Thin,
        Par::Seq,
        Default::default(),
    ));
    svd(
        x,
        s.as_mut(),
        Some(u.as_mut()),
        Some(v.as_mut()),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| Error::Invalid(format!("ridge: SVD of the ({n}, {p}) design did not converge ({e:?})")))?;
    let s: Vec<f64> = s.column_vector().iter().copied().collect(); // non-increasing
    let s_max = s.first().copied().unwrap_or(0.0);
    let tol = s_max * n.max(p) as f64 * f64::EPSILON;
    let r = s.iter().take_while(|&&v| v > tol).count();
    Ok((
        v.as_ref().subcols(0, r).to_owned(),
        s[..r].to_vec(),
        u.as_ref().subcols(0, r).to_owned(),
    ))
}

/// Eigenpairs of the symmetric `m` (k, k) above round-off (λ > λ_max · max(n, p) · ε, the design's
/// shape giving the error scale), in decreasing order: (λ_r, vectors (k, r)).
pub(crate) fn eigh_above_roundoff(m: MatRef<'_, f64>, n: usize, p: usize, what: &str) -> Result<(Vec<f64>, Mat<f64>)> {
    let k = m.nrows();
    let mut lam = Diag::<f64>::zeros(k);
    let mut vecs = Mat::<f64>::zeros(k, k);
    let mut buf = MemBuffer::new(self_adjoint_evd_scratch::<f64>(
        k,
        ComputeEigenvectors::Yes,
        Par::Seq,
        Default::default(),
    ));
    self_adjoint_evd(
        m,
        lam.as_mut(),
        Some(vecs.as_mut()),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| {
        Error::Invalid(format!(
            "ridge: eigendecomposition of the ({k}, {k}) {what} did not converge ({e:?})"
        ))
    })?;
    let lam: Vec<f64> = lam.column_vector().iter().copied().collect(); // non-decreasing
    let lam_max = lam.iter().copied().fold(0.0, f64::max);
    let tol = lam_max * n.max(p) as f64 * f64::EPSILON;
    let keep: Vec<usize> = (0..k).rev().filter(|&j| lam[j] > tol).collect(); // decreasing order
    let kept = Mat::from_fn(k, keep.len(), |i, j| vecs[(i, keep[j])]);
    Ok((keep.iter().map(|&j| lam[j]).collect(), kept))
}

/// Gram eigendecomposition Xᵀ X = V diag(s²) Vᵀ: returns (V_r (p, r), s_r decreasing,
/// U_r = X V_r diag(1/s_r) (n, r)), the thin-SVD factors, for the directions above round-off.
fn gram_factors(x: MatRef<'_, f64>) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let (n, p) = x.shape();
    let (lam, v_r) = eigh_above_roundoff(mm(x.transpose(), x).as_ref(), n, p, "Gram matrix")?;
    let s: Vec<f64> = lam.iter().map(|l| l.sqrt()).collect();
    let xv = mm(x, v_r.as_ref()); // (n, r)
    let u_r = Mat::from_fn(n, s.len(), |i, j| xv[(i, j)] / s[j]);
    Ok((v_r, s, u_r))
}

/// Kernel eigendecomposition X Xᵀ = U diag(λ) Uᵀ: returns (Xᵀ U_r (p, r), λ_r decreasing, U_r (n, r)).
fn kernel_factors(x: MatRef<'_, f64>) -> Result<(Mat<f64>, Vec<f64>, Mat<f64>)> {
    let (n, p) = x.shape();
    let (lam, u_r) = eigh_above_roundoff(mm(x, x.transpose()).as_ref(), n, p, "kernel")?;
    let basis = mm(x.transpose(), u_r.as_ref()); // (p, r)
    Ok((basis, lam, u_r))
}

impl RidgePath {
    /// The decomposition used (never `Auto`).
    pub fn method(&self) -> RidgeMethod {
        self.method
    }
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }
    pub fn n_features(&self) -> usize {
        self.basis.nrows()
    }
    pub fn n_targets(&self) -> usize {
        self.uty.ncols()
    }
    /// Numerical rank of X (number of spectral directions kept).
    pub fn rank(&self) -> usize {
        self.spectrum.len()
    }
    /// Singular values of X, decreasing (the square roots of the kernel eigenvalues in kernel form).
    pub fn singular_values(&self) -> Vec<f64> {
        match self.method {
            RidgeMethod::Svd | RidgeMethod::Gram => self.spectrum.clone(),
            _ => self.spectrum.iter().map(|l| l.sqrt()).collect(),
        }
    }

    /// Per-direction gains for penalty α: the diagonal between `basis` and `uty`.
    fn gains(&self, alpha: f64) -> Vec<f64> {
        gains(self.method, &self.spectrum, alpha)
    }

    /// Weights (n_features, n_targets) for penalty `alphas[alpha_index]`.
    pub fn weights(&self, alpha_index: usize) -> Result<Array2<f64>> {
        self.weights_per_target(&vec![alpha_index; self.n_targets()])
    }

    /// Weights (n_features, n_targets) with target j using penalty `alphas[alpha_index[j]]`.
    pub fn weights_per_target(&self, alpha_index: &[usize]) -> Result<Array2<f64>> {
        self.check_alpha_index(alpha_index)?;
        Ok(self.apply_per_target(self.basis.as_ref(), alpha_index))
    }

    /// Predictions (n_test, n_targets) for new rows `x_test` (n_test, n_features) at penalty
    /// `alphas[alpha_index]`, as X_test · basis · diag(g_α) · Uᵀ Y (W is never formed).
    pub fn predict(&self, alpha_index: usize, x_test: ArrayView2<f64>) -> Result<Array2<f64>> {
        self.predict_per_target(&vec![alpha_index; self.n_targets()], x_test)
    }

    /// Predictions (n_test, n_targets) with target j using penalty `alphas[alpha_index[j]]`.
    pub fn predict_per_target(&self, alpha_index: &[usize], x_test: ArrayView2<f64>) -> Result<Array2<f64>> {
        self.check_alpha_index(alpha_index)?;
        let a = self.project(x_test)?; // (n_test, r)
        Ok(self.apply_per_target(a.as_ref(), alpha_index))
    }

    /// Predictions for every penalty: element `i` is (n_test, n_targets) at `alphas[i]`.
    pub fn predict_all(&self, x_test: ArrayView2<f64>) -> Result<Vec<Array2<f64>>> {
        let a = self.project(x_test)?;
        Ok((0..self.alphas.len())
            .into_par_iter()
            .map(|i| {
                to_array(mm(
                    scale_cols(a.as_ref(), &self.gains(self.alphas[i])).as_ref(),
                    self.uty.as_ref(),
                ))
            })
            .collect())
    }

    /// Pearson r between predictions and `y_test` for every penalty and target: (n_alphas, n_targets).
    /// A constant prediction or observation column gives NaN (as [`crate::stats::pearson`]).
    /// Predictions are formed chunk by chunk of targets and never stored.
    pub fn score_all(&self, x_test: ArrayView2<f64>, y_test: ArrayView2<f64>) -> Result<Array2<f64>> {
        self.score_all_with(x_test, y_test, AlphaCriterion::Pearson)
    }

    /// [`RidgePath::score_all`] with the score given by `criterion` (R²: NaN for a constant
    /// observation column).
    pub fn score_all_with(
        &self,
        x_test: ArrayView2<f64>,
        y_test: ArrayView2<f64>,
        criterion: AlphaCriterion,
    ) -> Result<Array2<f64>> {
        let t = self.n_targets();
        if y_test.dim() != (x_test.nrows(), t) {
            return Err(Error::Invalid(format!(
                "ridge score: expected Y_test of shape ({}, {t}), found {:?}",
                x_test.nrows(),
                y_test.dim()
            )));
        }
        check_finite(y_test, "Y_test")?;
        let a = self.project(x_test)?; // (n_test, r)
        let yt = to_mat(y_test); // column-major, each column a contiguous slice
        let n_alphas = self.alphas.len();
        let chunks: Vec<(usize, usize)> = (0..t)
            .step_by(TARGET_CHUNK)
            .map(|c| (c, (c + TARGET_CHUNK).min(t)))
            .collect();
        let tasks: Vec<(usize, usize, usize)> = (0..n_alphas)
            .flat_map(|i| chunks.iter().map(move |&(c0, c1)| (i, c0, c1)))
            .collect();
        let parts: Vec<Vec<f64>> = tasks
            .par_iter()
            .map(|&(i, c0, c1)| {
                let guty = scale_rows(self.uty.as_ref().subcols(c0, c1 - c0), &self.gains(self.alphas[i]));
                let pred = mm(a.as_ref(), guty.as_ref()); // (n_test, c1 - c0)
                (c0..c1)
                    .map(|j| score(criterion, pred.col_as_slice(j - c0), yt.col_as_slice(j)))
                    .collect()
            })
            .collect();
        let mut scores = Array2::<f64>::zeros((n_alphas, t));
        for (&(i, c0, _), part) in tasks.iter().zip(parts) {
            for (k, r) in part.into_iter().enumerate() {
                scores[[i, c0 + k]] = r;
            }
        }
        Ok(scores)
    }

    /// X_test · basis: (n_test, r).
    fn project(&self, x_test: ArrayView2<f64>) -> Result<Mat<f64>> {
        if x_test.ncols() != self.n_features() {
            return Err(Error::Invalid(format!(
                "ridge predict: model has {} features but X_test has {} columns",
                self.n_features(),
                x_test.ncols()
            )));
        }
        check_finite(x_test, "X_test")?;
        Ok(mm(to_mat(x_test).as_ref(), self.basis.as_ref()))
    }

    fn check_alpha_index(&self, alpha_index: &[usize]) -> Result<()> {
        if alpha_index.len() != self.n_targets() {
            return Err(Error::Invalid(format!(
                "ridge: expected one penalty index per target ({}), found {}",
                self.n_targets(),
                alpha_index.len()
            )));
        }
        if let Some((j, &i)) = alpha_index.iter().enumerate().find(|(_, &i)| i >= self.alphas.len()) {
            return Err(Error::Invalid(format!(
                "ridge: penalty index {i} for target {j} is out of range for {} penalties",
                self.alphas.len()
            )));
        }
        Ok(())
    }

    /// `left` (m, r) · diag(g_{α_j}) · uty[:, j] for each target j, grouped by penalty.
    fn apply_per_target(&self, left: MatRef<'_, f64>, alpha_index: &[usize]) -> Array2<f64> {
        let t = self.n_targets();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.alphas.len()];
        for (j, &i) in alpha_index.iter().enumerate() {
            groups[i].push(j);
        }
        let used: Vec<usize> = (0..groups.len()).filter(|&i| !groups[i].is_empty()).collect();
        let parts: Vec<Mat<f64>> = used
            .par_iter()
            .map(|&i| {
                let cols = &groups[i];
                let rhs = Mat::from_fn(self.rank(), cols.len(), |k, c| self.uty[(k, cols[c])]);
                mm(scale_cols(left, &self.gains(self.alphas[i])).as_ref(), rhs.as_ref())
            })
            .collect();
        let mut out = Array2::<f64>::zeros((left.nrows(), t));
        for (&i, part) in used.iter().zip(&parts) {
            for (c, &j) in groups[i].iter().enumerate() {
                for (row, &v) in part.col_as_slice(c).iter().enumerate() {
                    out[[row, j]] = v;
                }
            }
        }
        out
    }
}

/// The score `criterion` of each column of `pred` against the same column of `obs` (both
/// (n_samples, n_targets)); NaN where undefined (constant column for Pearson r / R²).
pub fn score_per_target(criterion: AlphaCriterion, pred: ArrayView2<f64>, obs: ArrayView2<f64>) -> Vec<f64> {
    assert_eq!(pred.dim(), obs.dim(), "score_per_target: shapes differ");
    (0..pred.ncols())
        .map(|j| score(criterion, &pred.column(j).to_vec(), &obs.column(j).to_vec()))
        .collect()
}

/// Held-out score of one target (sequential sums in row order).
pub(crate) fn score(criterion: AlphaCriterion, pred: &[f64], obs: &[f64]) -> f64 {
    match criterion {
        AlphaCriterion::Pearson => pearson(pred, obs),
        AlphaCriterion::R2 => r2(pred, obs),
        AlphaCriterion::NegMse => neg_mse(pred, obs),
    }
}

/// −Σ(y − ŷ)² / n.
fn neg_mse(pred: &[f64], obs: &[f64]) -> f64 {
    let sse: f64 = pred.iter().zip(obs).map(|(p, y)| (y - p) * (y - p)).sum();
    -sse / obs.len() as f64
}

/// 1 − Σ(y − ŷ)² / Σ(y − ȳ)²; NaN when y is constant.
fn r2(pred: &[f64], obs: &[f64]) -> f64 {
    let mean = obs.iter().sum::<f64>() / obs.len() as f64;
    let (mut sse, mut sst) = (0.0, 0.0);
    for (p, y) in pred.iter().zip(obs) {
        sse += (y - p) * (y - p);
        sst += (y - mean) * (y - mean);
    }
    if sst == 0.0 {
        f64::NAN
    } else {
        1.0 - sse / sst
    }
}

/// Result of [`ridge_cv`]: the penalty chosen per target, the inner-CV scores behind the choice,
/// and the ridge path refitted on all rows (predict with the per-target penalties via
/// [`RidgeCvResult::predict`]).
#[derive(Debug, Clone)]
pub struct RidgeCvResult {
    /// (n_targets): index into `alphas` of each target's penalty.
    pub best_alpha_index: Vec<usize>,
    /// (n_alphas, n_targets): mean over folds of the held-out score, Pearson r unless another
    /// `criterion` was asked for (an undefined score, from a constant prediction or observation,
    /// counts as 0).
    pub cv_scores: Array2<f64>,
    /// The score behind `cv_scores`.
    pub criterion: AlphaCriterion,
    /// The fit on all rows given to [`ridge_cv`], for every penalty.
    pub path: RidgePath,
    /// Targets scored again in float64 by [`ScorePrecision::Fast`] (0 with `Exact`).
    pub rescored: usize,
}

impl RidgeCvResult {
    /// The chosen penalty values, one per target.
    pub fn best_alphas(&self) -> Vec<f64> {
        self.best_alpha_index.iter().map(|&i| self.path.alphas()[i]).collect()
    }
    /// Predictions (n_test, n_targets), each target with its chosen penalty.
    pub fn predict(&self, x_test: ArrayView2<f64>) -> Result<Array2<f64>> {
        self.path.predict_per_target(&self.best_alpha_index, x_test)
    }
    /// Weights (n_features, n_targets), each target with its chosen penalty.
    pub fn weights(&self) -> Result<Array2<f64>> {
        self.path.weights_per_target(&self.best_alpha_index)
    }
}

/// Ridge with the penalty chosen per target by cross-validation over `folds` (row indices into
/// `x`/`y`), then refitted on all rows with each target's penalty.
///
/// For each fold a spectral path is fitted on the training rows and scored (Pearson r, per
/// penalty and target) on the test rows; `cv_scores` is the mean over folds. Each target gets the
/// penalty with the highest mean r, after adding [`ALPHA_TIE_SLOPE`] · ln α, so that scores equal
/// to round-off go to the larger penalty (more shrinkage when the data cannot tell; himalaya's rule). No re-centering happens inside the folds: pass centered/z-scored data.
/// Folds run in parallel; the result does not depend on the number of threads.
pub fn ridge_cv(x: ArrayView2<f64>, y: ArrayView2<f64>, alphas: &[f64], folds: &[Fold]) -> Result<RidgeCvResult> {
    ridge_cv_with(x, y, alphas, folds, AlphaCriterion::Pearson)
}

/// [`ridge_cv`] choosing penalties by `criterion` instead of Pearson r.
pub fn ridge_cv_with(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    alphas: &[f64],
    folds: &[Fold],
    criterion: AlphaCriterion,
) -> Result<RidgeCvResult> {
    ridge_cv_method(x, y, alphas, folds, criterion, RidgeMethod::Auto)
}

/// How the held-out predictions that choose each target's penalty are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScorePrecision {
    /// float64 matrix products throughout: the reference.
    #[default]
    Exact,
    /// The predictions of every penalty as float32 products (half the time of float64 on this
    /// machine's cores; they are most of a CV's work), scored in float64; then every target whose
    /// best and second-best penalty are within [`FAST_SCORE_MARGIN`] of each other (mean score,
    /// with the tie-break slope) is scored again in float64 for every penalty. The chosen penalty
    /// is therefore `Exact`'s (up to float64 rounding: the rescoring's products have other shapes,
    /// so its sums may differ from `Exact`'s in the last bits) whenever float32 moves no mean score
    /// by more than half the margin; a target with a score float32 could not form (NaN) is always
    /// rescored —
    /// measured on the ridge bench's case (b), 20,000 targets: at most 1.5e-7 (negative MSE of
    /// targets with mean square 2, a margin of 2e-4 there; 860 targets rescored; every α the same)
    /// and 3.7e-8 for Pearson r on a 4,000 × 2,000 × 10,000 case — and the refit is unchanged
    /// (float64). `cv_scores` of targets not rescored carry the float32 error. In the voxelwise
    /// story CV ([`super::stories::fit_fold_chunk`]) the null refits are float32 products too:
    /// their sums feed only the normal fitted to the null's Fisher z (agreeing with `Exact`'s to
    /// 1e-5 of their scale), never the reported r or α.
    Fast,
}

/// Targets whose best two penalties are closer than this (mean held-out score; for the negative
/// mean squared error, this times the target's mean square) are rescored in float64 by
/// [`ScorePrecision::Fast`].
pub const FAST_SCORE_MARGIN: f64 = 1e-4;

/// [`ridge_cv_with`] with an explicit decomposition for the fold and refit designs.
///
/// Work and memory: each fold's design is decomposed once (kept for the whole run:
/// (n_train + n_test + n_features) × rank per fold); targets are then processed in chunks of
/// [`TARGET_CHUNK`] columns, each chunk costing rank × chunk for Uᵀ Y and n_test × chunk per
/// penalty for predictions, so memory beyond the factors does not grow with the number of
/// targets (apart from the (n_alphas, n_targets) scores and the refit path's Uᵀ Y).
pub fn ridge_cv_method(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    alphas: &[f64],
    folds: &[Fold],
    criterion: AlphaCriterion,
    method: RidgeMethod,
) -> Result<RidgeCvResult> {
    ridge_cv_precision(x, y, alphas, folds, criterion, method, ScorePrecision::Exact)
}

/// [`ridge_cv_method`] with the held-out predictions computed at `precision` (the refit is
/// float64 either way).
pub fn ridge_cv_precision(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    alphas: &[f64],
    folds: &[Fold],
    criterion: AlphaCriterion,
    method: RidgeMethod,
    precision: ScorePrecision,
) -> Result<RidgeCvResult> {
    let t = y.ncols();
    check_cv_inputs(x, y, alphas, folds)?;
    let xm = to_mat(x); // (n, p)
    let ym = to_mat(y); // (n, t), column-major: a target chunk is contiguous
                        // the refit's decomposition runs beside the folds' (independent tasks: same result)
    let (cv_scores, full) = rayon::join(
        || -> Result<(Array2<f64>, usize)> {
            match precision {
                ScorePrecision::Exact => Ok((
                    fold_scores(xm.as_ref(), ym.as_ref(), alphas, folds, criterion, method)?,
                    0,
                )),
                ScorePrecision::Fast => {
                    let fits = inner_fold_fits(xm.as_ref(), folds, method)?;
                    fold_scores_fast(&fits, ym.as_ref(), alphas, folds, criterion)
                }
            }
        },
        || factorize(xm.as_ref(), method),
    );
    let (mut cv_scores, rescored) = cv_scores?;
    cv_scores.mapv_inplace(|s| s / folds.len() as f64);
    let best_alpha_index = (0..t).map(|j| best_alpha(alphas, cv_scores.column(j))).collect();
    let path = full?.path(ym.as_ref(), alphas);
    Ok(RidgeCvResult {
        best_alpha_index,
        cv_scores,
        criterion,
        path,
        rescored,
    })
}

/// The input checks of [`ridge_cv_method`] and [`ridge_cv_criteria`]: shapes, a non-empty
/// design, penalties, finite values, folds within the rows.
fn check_cv_inputs(x: ArrayView2<f64>, y: ArrayView2<f64>, alphas: &[f64], folds: &[Fold]) -> Result<()> {
    let n = x.nrows();
    if y.nrows() != n {
        return Err(Error::Invalid(format!(
            "ridge_cv: X has {n} rows but Y has {}",
            y.nrows()
        )));
    }
    if n == 0 || x.ncols() == 0 {
        return Err(Error::Invalid(format!(
            "ridge_cv: expected a non-empty design, found shape {:?}",
            x.dim()
        )));
    }
    check_alphas(alphas)?;
    check_finite(x, "X")?;
    check_finite(y, "Y")?;
    check_folds(folds, n, false)
}

/// [`ridge_cv_with`] for several criteria at once (same folds, factorizations and predictions):
/// the chosen penalty index per target for each criterion, in `criteria`'s order, and the refit
/// path on all rows. With one criterion the choice equals [`ridge_cv_with`]'s.
pub fn ridge_cv_criteria(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    alphas: &[f64],
    folds: &[Fold],
    criteria: &[AlphaCriterion],
) -> Result<(Vec<Vec<usize>>, RidgePath)> {
    let t = y.ncols();
    check_cv_inputs(x, y, alphas, folds)?;
    let method = RidgeMethod::Auto;
    let xm = to_mat(x);
    let ym = to_mat(y);
    let (scores, full) = rayon::join(
        || fold_scores_multi(xm.as_ref(), ym.as_ref(), alphas, folds, criteria, method),
        || factorize(xm.as_ref(), method),
    );
    let best = scores?
        .into_iter()
        .map(|mut s| {
            s.mapv_inplace(|v| v / folds.len() as f64);
            (0..t).map(|j| best_alpha(alphas, s.column(j))).collect()
        })
        .collect();
    Ok((best, full?.path(ym.as_ref(), alphas)))
}

/// Sum over `folds` of the held-out score per (penalty, target): (n_alphas, n_targets); undefined
/// scores count as 0. Inputs already checked; `xm` (n, p), `ym` (n, t).
pub(crate) fn fold_scores(
    xm: MatRef<'_, f64>,
    ym: MatRef<'_, f64>,
    alphas: &[f64],
    folds: &[Fold],
    criterion: AlphaCriterion,
    method: RidgeMethod,
) -> Result<Array2<f64>> {
    Ok(fold_scores_multi(xm, ym, alphas, folds, &[criterion], method)?.remove(0))
}

/// [`fold_scores`] for several criteria from the same factorizations and predictions: one
/// (n_alphas, n_targets) sum per criterion, in `criteria`'s order.
pub(crate) fn fold_scores_multi(
    xm: MatRef<'_, f64>,
    ym: MatRef<'_, f64>,
    alphas: &[f64],
    folds: &[Fold],
    criteria: &[AlphaCriterion],
    method: RidgeMethod,
) -> Result<Vec<Array2<f64>>> {
    let fold_fits = inner_fold_fits(xm, folds, method)?;
    fold_scores_fitted(&fold_fits, ym, alphas, folds, criteria)
}

/// Per fold: the factors of the training rows of `xm` and the fold's test rows projected on
/// their basis (n_test, rank): the design-only half of [`fold_scores_multi`].
pub(crate) fn inner_fold_fits(
    xm: MatRef<'_, f64>,
    folds: &[Fold],
    method: RidgeMethod,
) -> Result<Vec<(Factors, Mat<f64>)>> {
    folds
        .par_iter()
        .map(|fold| {
            let f = factorize(select_rows(xm, &fold.train).as_ref(), method)?;
            let a = mm(select_rows(xm, &fold.test).as_ref(), f.basis.as_ref()); // (n_test, r)
            Ok((f, a))
        })
        .collect()
}

/// The targets' half of [`fold_scores_multi`], from `fold_fits` ([`inner_fold_fits`] of the
/// same `folds`).
pub(crate) fn fold_scores_fitted(
    fold_fits: &[(Factors, Mat<f64>)],
    ym: MatRef<'_, f64>,
    alphas: &[f64],
    folds: &[Fold],
    criteria: &[AlphaCriterion],
) -> Result<Vec<Array2<f64>>> {
    let t = ym.ncols();
    let n_crit = criteria.len();
    let chunks: Vec<(usize, usize)> = (0..t)
        .step_by(TARGET_CHUNK)
        .map(|c| (c, (c + TARGET_CHUNK).min(t)))
        .collect();
    let tasks: Vec<(usize, usize, usize)> = (0..folds.len())
        .flat_map(|k| chunks.iter().map(move |&(c0, c1)| (k, c0, c1)))
        .collect();
    // (criterion × n_alphas × chunk) scores per task, column-major by target within the chunk
    let na = alphas.len();
    let parts: Vec<Vec<f64>> = tasks
        .par_iter()
        .map(|&(k, c0, c1)| {
            let (fold, (f, a)) = (&folds[k], &fold_fits[k]);
            let y_chunk = ym.subcols(c0, c1 - c0);
            let uty = mm(f.u.as_ref().transpose(), select_rows(y_chunk, &fold.train).as_ref()); // (r, c)
            let y_test = select_rows(y_chunk, &fold.test); // (n_test, c)
            let mut out = vec![0.0; n_crit * na * (c1 - c0)];
            for (i, &alpha) in alphas.iter().enumerate() {
                let pred = mm(a.as_ref(), scale_rows(uty.as_ref(), &f.gains(alpha)).as_ref());
                for j in 0..c1 - c0 {
                    for (c, &criterion) in criteria.iter().enumerate() {
                        out[(c * (c1 - c0) + j) * na + i] =
                            score(criterion, pred.col_as_slice(j), y_test.col_as_slice(j));
                    }
                }
            }
            out
        })
        .collect();
    let mut cv_scores = vec![Array2::<f64>::zeros((na, t)); n_crit];
    for (&(_, c0, c1), part) in tasks.iter().zip(&parts) {
        for (c, sc) in cv_scores.iter_mut().enumerate() {
            for j in 0..c1 - c0 {
                for i in 0..na {
                    let r = part[(c * (c1 - c0) + j) * na + i];
                    sc[[i, c0 + j]] += if r.is_nan() { 0.0 } else { r };
                }
            }
        }
    }
    Ok(cv_scores)
}

/// [`ScorePrecision::Fast`]: the sum over folds of the held-out score per (penalty, target), from
/// float32 predictions, with every target whose best two penalties are within
/// [`FAST_SCORE_MARGIN`] (mean score, tie-break slope included) rescored by
/// [`fold_scores_fitted`]. Returns the sums and the number of targets rescored.
pub(crate) fn fold_scores_fast(
    fold_fits: &[(Factors, Mat<f64>)],
    ym: MatRef<'_, f64>,
    alphas: &[f64],
    folds: &[Fold],
    criterion: AlphaCriterion,
) -> Result<(Array2<f64>, usize)> {
    let t = ym.ncols();
    let na = alphas.len();
    let a32: Vec<Mat<f32>> = fold_fits
        .iter()
        .map(|(_, a)| Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] as f32))
        .collect();
    let chunks: Vec<(usize, usize)> = (0..t)
        .step_by(TARGET_CHUNK)
        .map(|c| (c, (c + TARGET_CHUNK).min(t)))
        .collect();
    let tasks: Vec<(usize, usize, usize)> = (0..folds.len())
        .flat_map(|k| chunks.iter().map(move |&(c0, c1)| (k, c0, c1)))
        .collect();
    let parts: Vec<Vec<f64>> = tasks
        .par_iter()
        .map(|&(k, c0, c1)| {
            let (fold, (f, _)) = (&folds[k], &fold_fits[k]);
            let y_chunk = ym.subcols(c0, c1 - c0);
            let uty = mm(f.u.as_ref().transpose(), select_rows(y_chunk, &fold.train).as_ref()); // (r, c)
            let y_test = select_rows(y_chunk, &fold.test); // (n_test, c)
            let a = &a32[k];
            let mut pred = Mat::<f32>::zeros(a.nrows(), c1 - c0);
            let mut col = vec![0.0f64; a.nrows()];
            let mut out = vec![0.0; na * (c1 - c0)];
            for (i, &alpha) in alphas.iter().enumerate() {
                let g = f.gains(alpha);
                let w = Mat::from_fn(uty.nrows(), uty.ncols(), |r, j| (uty[(r, j)] * g[r]) as f32);
                matmul(pred.as_mut(), Accum::Replace, a.as_ref(), w.as_ref(), 1.0f32, Par::Seq);
                for j in 0..c1 - c0 {
                    for (c, &v) in col.iter_mut().zip(pred.col_as_slice(j)) {
                        *c = v as f64;
                    }
                    out[j * na + i] = score(criterion, &col, y_test.col_as_slice(j));
                }
            }
            out
        })
        .collect();
    let mut sums = Array2::<f64>::zeros((na, t));
    // a score float32 could not form (NaN: a constant prediction or observation, or a product
    // outside float32's range) sends its target to the float64 rescoring
    let mut undefined = vec![false; t];
    for (&(_, c0, c1), part) in tasks.iter().zip(&parts) {
        for j in 0..c1 - c0 {
            for i in 0..na {
                let r = part[j * na + i];
                undefined[c0 + j] |= !r.is_finite();
                sums[[i, c0 + j]] += if r.is_nan() { 0.0 } else { r };
            }
        }
    }
    // rescore, in float64, every target whose best two penalties are too close to call; a mean
    // squared error is compared in units of the target's mean square over the test rows
    let k = folds.len() as f64;
    let margin = |j: usize| -> f64 {
        match criterion {
            AlphaCriterion::NegMse => {
                let ms: f64 = folds
                    .iter()
                    .map(|f| f.test.iter().map(|&i| ym[(i, j)] * ym[(i, j)]).sum::<f64>() / f.test.len().max(1) as f64)
                    .sum::<f64>()
                    / k;
                FAST_SCORE_MARGIN * ms.max(f64::MIN_POSITIVE)
            }
            _ => FAST_SCORE_MARGIN,
        }
    };
    let close: Vec<usize> = (0..t)
        .into_par_iter()
        .filter(|&j| {
            let mut adj: Vec<f64> = (0..na)
                .map(|i| sums[[i, j]] / k + ALPHA_TIE_SLOPE * alphas[i].ln())
                .collect();
            adj.sort_by(|a, b| b.total_cmp(a));
            undefined[j] || adj.len() < 2 || !(adj[0] - adj[1] > margin(j))
        })
        .collect();
    if !close.is_empty() {
        let sub = Mat::from_fn(ym.nrows(), close.len(), |i, c| ym[(i, close[c])]);
        let exact = fold_scores_fitted(fold_fits, sub.as_ref(), alphas, folds, &[criterion])?.remove(0);
        for (c, &j) in close.iter().enumerate() {
            sums.column_mut(j).assign(&exact.column(c));
        }
    }
    Ok((sums, close.len()))
}

/// Rows `rows` of `a`, as a new column-major matrix.
pub(crate) fn select_rows(a: MatRef<'_, f64>, rows: &[usize]) -> Mat<f64> {
    Mat::from_fn(rows.len(), a.ncols(), |i, j| a[(rows[i], j)])
}

/// Slope added to the mean CV score per unit of ln α before choosing, so that penalties whose
/// scores agree to round-off go to the larger penalty (himalaya's `_select_best_alphas` rule).
pub const ALPHA_TIE_SLOPE: f64 = 1e-10;

/// Index of the highest `score + ALPHA_TIE_SLOPE · ln α` for one target (the first such index if
/// several are exactly equal, as numpy's argmax); ties before the slope therefore go to the larger
/// penalty.
pub(crate) fn best_alpha(alphas: &[f64], scores: ArrayView1<f64>) -> usize {
    let adjusted = |i: usize| scores[i] + ALPHA_TIE_SLOPE * alphas[i].ln();
    let mut best = 0;
    for i in 1..alphas.len() {
        if adjusted(i) > adjusted(best) {
            best = i;
        }
    }
    best
}

/// Result of [`nested_cv_ridge`]. Predictions are in the units of the original Y.
#[derive(Debug, Clone)]
pub struct NestedCvResult {
    /// (n_targets): Pearson r between held-out predictions and observations over all tested rows.
    pub r_per_target: Vec<f64>,
    /// (n_outer_folds, n_targets): Pearson r within each outer test set.
    pub r_per_fold: Array2<f64>,
    /// (n_outer_folds, n_targets): the penalty chosen by the inner CV of each outer fold.
    pub alpha_per_fold: Array2<f64>,
    /// (n_samples, n_targets): held-out predictions; NaN on rows no outer fold tests.
    pub predictions: Array2<f64>,
    /// Rows that some outer fold tests (sorted): the rows behind `r_per_target`.
    pub tested_rows: Vec<usize>,
    /// With [`NestedCvOptions::r2_predictions`]: held-out predictions (as `predictions`) from
    /// penalties chosen per target by inner-CV R², for an R² reported next to r.
    pub predictions_r2: Option<Array2<f64>>,
    /// With [`NestedCvOptions::r2_predictions`]: (n_outer_folds, n_targets) penalties chosen by R².
    pub alpha_r2_per_fold: Option<Array2<f64>>,
    /// Design columns each outer fold's model saw (the design's width, or the principal components
    /// kept by [`DesignTransform::Pca`]).
    pub n_columns_per_fold: Vec<usize>,
    /// With [`NestedCvOptions::weights`]: (n_columns, n_targets) ridge weights of the refits, at
    /// each target's r-chosen penalty, averaged over the outer folds. They are standardised
    /// coefficients: X and Y z-scored with each fold's training statistics.
    pub weights: Option<Array2<f64>>,
}

/// A transform of the design fitted on each outer fold's training rows only and applied, with
/// those training-fold parameters, to the fold's test rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DesignTransform {
    /// Columns z-scored with the training rows' mean and sd.
    #[default]
    Zscore,
    /// Principal components of the training rows: the columns are centred with the training mean,
    /// the top `min(k, rank − 1)` components of the training rows are kept (always fewer than the
    /// training rows' rank, so the set never becomes the full design), and test rows are projected
    /// on the training loadings. Scores are *not* whitened: all of them are divided by one common
    /// factor (the root mean variance of the kept training scores), so the components keep their
    /// relative variances and ridge shrinks the small ones more, as it would the raw design.
    Pca { k: usize },
}

/// Settings of [`nested_cv_ridge_opts`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct NestedCvOptions {
    /// Score that chooses each target's penalty in the inner CV (the held-out r reported is
    /// Pearson whatever the criterion).
    pub criterion: AlphaCriterion,
    /// Also choose penalties by inner-CV R² (same inner folds, same factorizations) and keep the
    /// held-out predictions they give: R² is then reported from fits whose penalty was chosen for
    /// R², r from fits chosen by `criterion`.
    pub r2_predictions: bool,
    /// The fold-wise design transform.
    pub transform: DesignTransform,
    /// Also return the outer folds' mean refit weights ([`NestedCvResult::weights`]); only with
    /// [`DesignTransform::Zscore`], whose columns are the design's own.
    pub weights: bool,
}

/// Nested cross-validated ridge: for each outer fold, z-score X and Y columns with the outer
/// training rows' mean and sd (population sd; constant columns become 0) and apply the same
/// transform to the test rows; choose each target's penalty by [`ridge_cv`] over
/// `inner_n_folds` contiguous blocks of the (sorted) outer training rows, leaving out of each
/// inner training set the rows within `gap` of the inner test block in *original* sample index
/// ([`block_folds_within`]); refit on the whole outer training set; predict the outer test rows
/// and map the predictions back to Y's units (× sd + mean of the training rows).
///
/// `outer` folds index rows of `x`/`y`; their test sets must be disjoint. Penalties are chosen by
/// mean inner-fold Pearson r. Outer folds run in parallel; the result does not depend on the
/// number of threads.
pub fn nested_cv_ridge(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    alphas: &[f64],
    outer: &[Fold],
    inner_n_folds: usize,
    gap: usize,
) -> Result<NestedCvResult> {
    nested_cv_ridge_with(x, y, alphas, outer, inner_n_folds, gap, AlphaCriterion::Pearson)
}

/// [`nested_cv_ridge`] choosing penalties by `criterion` (the held-out r reported is Pearson
/// whatever the criterion).
pub fn nested_cv_ridge_with(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    alphas: &[f64],
    outer: &[Fold],
    inner_n_folds: usize,
    gap: usize,
    criterion: AlphaCriterion,
) -> Result<NestedCvResult> {
    let opts = NestedCvOptions {
        criterion,
        ..Default::default()
    };
    nested_cv_ridge_opts(x, y, alphas, outer, inner_n_folds, gap, &opts)
}

/// [`nested_cv_ridge`] with every setting: the penalty criterion, R²-chosen predictions beside
/// the r-chosen ones, and a design transform fitted inside each outer fold ([`DesignTransform`];
/// the default z-scores, as [`nested_cv_ridge`]). The inner CV of a fold sees the fold's
/// transformed training rows (the transform is fitted on all of them, so the inner test blocks
/// share the outer training rows' loadings; the outer test rows never enter any fit).
pub fn nested_cv_ridge_opts(
    x: ArrayView2<f64>,
    y: ArrayView2<f64>,
    alphas: &[f64],
    outer: &[Fold],
    inner_n_folds: usize,
    gap: usize,
    opts: &NestedCvOptions,
) -> Result<NestedCvResult> {
    let n = x.nrows();
    if y.nrows() != n {
        return Err(Error::Invalid(format!(
            "nested_cv_ridge: X has {n} rows but Y has {}",
            y.nrows()
        )));
    }
    check_alphas(alphas)?;
    check_finite(x, "X")?;
    check_finite(y, "Y")?;
    let factors = nested_cv_factors(x, outer, inner_n_folds, gap, opts.transform)?;
    nested_cv_ridge_factored(&factors, y, alphas, opts)
}

/// Everything of a nested CV that depends on the design alone: per outer fold, the transformed
/// training and test rows, the inner folds' factorizations and the refit's. One design's factors
/// serve every set of targets fitted on it (every subject of a story), which then costs only the
/// targets' products: [`nested_cv_ridge_factored`] with these factors equals
/// [`nested_cv_ridge_opts`] bit for bit.
pub struct NestedCvFactors {
    n_rows: usize,
    transform: DesignTransform,
    folds: Vec<OuterFactors>,
}

struct OuterFactors {
    /// sorted outer training and test rows
    train: Vec<usize>,
    test: Vec<usize>,
    /// the test rows, transformed with the training rows' parameters
    x_test: Array2<f64>,
    n_columns: usize,
    /// inner folds (positions within `train`) and their factors
    inner: Vec<Fold>,
    inner_fits: Vec<(Factors, Mat<f64>)>,
    /// the refit on all training rows
    full: Factors,
}

impl NestedCvFactors {
    /// Rows of the design.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }
    /// The design transform the factors were computed under.
    pub fn transform(&self) -> DesignTransform {
        self.transform
    }
}

/// The design-only half of [`nested_cv_ridge_opts`] (see [`NestedCvFactors`]): checks X and the
/// folds, transforms each outer fold's rows and factorizes its inner and refit designs. Outer
/// folds run in parallel.
pub fn nested_cv_factors(
    x: ArrayView2<f64>,
    outer: &[Fold],
    inner_n_folds: usize,
    gap: usize,
    transform: DesignTransform,
) -> Result<NestedCvFactors> {
    check_finite(x, "X")?;
    check_folds(outer, x.nrows(), true)?;
    let folds = outer
        .par_iter()
        .enumerate()
        .map(|(k, fold)| {
            outer_factors(x, fold, inner_n_folds, gap, transform)
                .map_err(|e| Error::Invalid(format!("outer fold {k}: {e}")))
        })
        .collect::<Result<_>>()?;
    Ok(NestedCvFactors {
        n_rows: x.nrows(),
        transform,
        folds,
    })
}

fn outer_factors(
    x: ArrayView2<f64>,
    fold: &Fold,
    inner_n_folds: usize,
    gap: usize,
    transform: DesignTransform,
) -> Result<OuterFactors> {
    let mut train = fold.train.clone();
    train.sort_unstable();
    let mut test = fold.test.clone();
    test.sort_unstable();
    let (mut x_train, mut x_test) = (x.select(Axis(0), &train), x.select(Axis(0), &test));
    match transform {
        DesignTransform::Zscore => {
            let x_stats = zscore_columns(x_train.view_mut());
            apply_zscore(x_test.view_mut(), &x_stats);
        }
        DesignTransform::Pca { k } => (x_train, x_test) = fold_pca(x_train.view(), x_test.view(), k)?,
    }
    let inner = block_folds_within(&train, inner_n_folds, gap)?;
    if x_train.nrows() == 0 || x_train.ncols() == 0 {
        return Err(Error::Invalid(format!(
            "ridge_cv: expected a non-empty design, found shape {:?}",
            x_train.dim()
        )));
    }
    check_folds(&inner, x_train.nrows(), false)?;
    let xm = to_mat(x_train.view());
    let method = RidgeMethod::Auto;
    let (inner_fits, full) = rayon::join(
        || inner_fold_fits(xm.as_ref(), &inner, method),
        || factorize(xm.as_ref(), method),
    );
    Ok(OuterFactors {
        train,
        test,
        x_test,
        n_columns: x_train.ncols(),
        inner,
        inner_fits: inner_fits?,
        full: full?,
    })
}

/// The targets' half of [`nested_cv_ridge_opts`]: `y` (n_rows, t) fitted with the design's
/// `factors`; `opts.transform` must be the one the factors were computed under.
pub fn nested_cv_ridge_factored(
    factors: &NestedCvFactors,
    y: ArrayView2<f64>,
    alphas: &[f64],
    opts: &NestedCvOptions,
) -> Result<NestedCvResult> {
    let (n, t) = (factors.n_rows, y.ncols());
    if y.nrows() != n {
        return Err(Error::Invalid(format!(
            "nested_cv_ridge: the design has {n} rows but Y has {}",
            y.nrows()
        )));
    }
    if opts.transform != factors.transform {
        return Err(Error::Invalid(format!(
            "nested_cv_ridge: factors computed under {:?}, asked for {:?}",
            factors.transform, opts.transform
        )));
    }
    check_alphas(alphas)?;
    check_finite(y, "Y")?;
    if opts.weights && factors.transform != DesignTransform::Zscore {
        return Err(Error::Invalid(format!(
            "nested_cv_ridge: weights are per design column, which {:?} does not keep",
            factors.transform
        )));
    }
    let per_fold: Vec<OuterFit> = factors
        .folds
        .par_iter()
        .enumerate()
        .map(|(k, f)| fit_outer_fold(f, y, alphas, opts).map_err(|e| Error::Invalid(format!("outer fold {k}: {e}"))))
        .collect::<Result<_>>()?;

    let mut predictions = Array2::<f64>::from_elem((n, t), f64::NAN);
    let mut r_per_fold = Array2::<f64>::zeros((per_fold.len(), t));
    let mut alpha_per_fold = Array2::<f64>::zeros((per_fold.len(), t));
    let mut tested_rows = Vec::new();
    let mut predictions_r2 = opts.r2_predictions.then(|| Array2::<f64>::from_elem((n, t), f64::NAN));
    let mut alpha_r2_per_fold = opts.r2_predictions.then(|| Array2::<f64>::zeros((per_fold.len(), t)));
    for (k, fit) in per_fold.iter().enumerate() {
        for (row, &i) in fit.test.iter().enumerate() {
            predictions.row_mut(i).assign(&fit.predictions.row(row));
        }
        if let (Some(p), Some(a), Some((fp, fa))) = (&mut predictions_r2, &mut alpha_r2_per_fold, &fit.r2_fit) {
            for (row, &i) in fit.test.iter().enumerate() {
                p.row_mut(i).assign(&fp.row(row));
            }
            a.row_mut(k).assign(&Array1::from(fa.clone()));
        }
        tested_rows.extend_from_slice(&fit.test);
        r_per_fold.row_mut(k).assign(&Array1::from(fit.r.clone()));
        alpha_per_fold.row_mut(k).assign(&Array1::from(fit.alphas.clone()));
    }
    let n_columns_per_fold = per_fold.iter().map(|f| f.n_columns).collect();
    // the mean over folds, summed in fold order (deterministic)
    let weights = opts.weights.then(|| {
        let mut w = Array2::<f64>::zeros((per_fold[0].n_columns, t));
        for fit in &per_fold {
            w += fit.weights.as_ref().expect("asked for weights");
        }
        w / per_fold.len() as f64
    });
    tested_rows.sort_unstable();
    let pred_tested = predictions.select(Axis(0), &tested_rows);
    let y_tested = y.select(Axis(0), &tested_rows);
    let r_per_target = (0..t)
        .map(|j| pearson(&pred_tested.column(j).to_vec(), &y_tested.column(j).to_vec()))
        .collect();
    Ok(NestedCvResult {
        r_per_target,
        r_per_fold,
        alpha_per_fold,
        predictions,
        tested_rows,
        predictions_r2,
        alpha_r2_per_fold,
        n_columns_per_fold,
        weights,
    })
}

struct OuterFit {
    test: Vec<usize>,
    predictions: Array2<f64>, // (n_test, t), Y units
    r: Vec<f64>,
    alphas: Vec<f64>,
    /// Predictions (Y units) and penalties chosen by R², when asked for.
    r2_fit: Option<(Array2<f64>, Vec<f64>)>,
    n_columns: usize,
    /// (n_columns, t) refit weights at the r-chosen penalties, when asked for.
    weights: Option<Array2<f64>>,
}

fn fit_outer_fold(f: &OuterFactors, y: ArrayView2<f64>, alphas: &[f64], opts: &NestedCvOptions) -> Result<OuterFit> {
    let mut y_train = y.select(Axis(0), &f.train);
    let y_stats = zscore_columns(y_train.view_mut());
    let to_y_units = |mut p: Array2<f64>| {
        for (mut col, &(mean, sd)) in p.axis_iter_mut(Axis(1)).zip(&y_stats) {
            col.mapv_inplace(|v| v * sd + mean);
        }
        p
    };
    let mut criteria = vec![opts.criterion];
    if opts.r2_predictions {
        criteria.push(AlphaCriterion::R2);
    }
    // ridge_cv_criteria on the fold's training rows, from the stored factors
    let t = y.ncols();
    let ym = to_mat(y_train.view());
    let scores = fold_scores_fitted(&f.inner_fits, ym.as_ref(), alphas, &f.inner, &criteria)?;
    let best: Vec<Vec<usize>> = scores
        .into_iter()
        .map(|mut s| {
            s.mapv_inplace(|v| v / f.inner.len() as f64);
            (0..t).map(|j| best_alpha(alphas, s.column(j))).collect()
        })
        .collect();
    let path = f.full.path_cloned(ym.as_ref(), alphas);
    let predictions = to_y_units(path.predict_per_target(&best[0], f.x_test.view())?); // (n_test, t)
    let chosen = |b: &[usize]| b.iter().map(|&i| alphas[i]).collect::<Vec<f64>>();
    let r2_fit = match best.get(1) {
        Some(b) => Some((to_y_units(path.predict_per_target(b, f.x_test.view())?), chosen(b))),
        None => None,
    };
    let y_test = y.select(Axis(0), &f.test);
    let r = (0..y.ncols())
        .map(|j| pearson(&predictions.column(j).to_vec(), &y_test.column(j).to_vec()))
        .collect();
    Ok(OuterFit {
        test: f.test.clone(),
        predictions,
        r,
        alphas: chosen(&best[0]),
        r2_fit,
        n_columns: f.n_columns,
        weights: match opts.weights {
            true => Some(path.weights_per_target(&best[0])?),
            false => None,
        },
    })
}

/// [`DesignTransform::Pca`] for one outer fold: (training scores, test scores), both from the
/// training rows' mean and loadings.
fn fold_pca(x_train: ArrayView2<f64>, x_test: ArrayView2<f64>, k: usize) -> Result<(Array2<f64>, Array2<f64>)> {
    let (n, p) = x_train.dim();
    let mean = x_train
        .mean_axis(Axis(0))
        .ok_or_else(|| Error::Invalid("PCA of a fold without training rows".into()))?;
    let xc = &x_train - &mean;
    let xm = to_mat(xc.view());
    let (lam, u) = eigh_above_roundoff(mm(xm.as_ref(), xm.as_ref().transpose()).as_ref(), n, p, "PCA kernel")?;
    let rank = lam.len();
    let r = k.min(rank.saturating_sub(1));
    if r == 0 {
        return Err(Error::Invalid(format!(
            "PCA baseline: the training rows have rank {rank}; at least 2 is needed to keep a component below the rank"
        )));
    }
    // loadings V = Xcᵀ U Λ^{-1/2} (p, r); training scores U Λ^{1/2} = Xc V
    let xtu = mm(xm.as_ref().transpose(), u.as_ref().subcols(0, r)); // (p, r)
    let inv_sqrt: Vec<f64> = lam[..r].iter().map(|l| 1.0 / l.sqrt()).collect();
    let v = scale_cols(xtu.as_ref(), &inv_sqrt);
    let scale = (lam[..r].iter().sum::<f64>() / (r as f64 * n as f64)).sqrt(); // root mean score variance
    let train_scores = Array2::from_shape_fn((n, r), |(i, c)| u[(i, c)] * lam[c].sqrt() / scale);
    let xt = to_mat((&x_test - &mean).view());
    let ts = mm(xt.as_ref(), v.as_ref());
    let test_scores = Array2::from_shape_fn((x_test.nrows(), r), |(i, c)| ts[(i, c)] / scale);
    Ok((train_scores, test_scores))
}

/// Applies training-set (mean, sd) column statistics to other rows; sd = 0 columns become 0,
/// as in [`zscore_columns`].
pub fn apply_zscore(mut x: ArrayViewMut2<f64>, stats: &[(f64, f64)]) {
    for (mut col, &(mean, sd)) in x.axis_iter_mut(Axis(1)).zip(stats) {
        if sd > 0.0 {
            col.mapv_inplace(|v| (v - mean) / sd);
        } else {
            col.fill(0.0);
        }
    }
}

pub(crate) fn check_alphas(alphas: &[f64]) -> Result<()> {
    if alphas.is_empty() {
        return Err(Error::Invalid(
            "ridge: expected at least one penalty, found none".into(),
        ));
    }
    if let Some((i, a)) = alphas.iter().enumerate().find(|(_, a)| !(a.is_finite() && **a > 0.0)) {
        return Err(Error::Invalid(format!(
            "ridge: penalty {i} must be finite and > 0, found {a}"
        )));
    }
    Ok(())
}

pub(crate) fn check_finite(a: ArrayView2<f64>, name: &str) -> Result<()> {
    if let Some(((i, j), v)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "ridge: {name} must be finite, found {v} at row {i}, column {j}"
        )));
    }
    Ok(())
}

/// Owned, aligned, column-major copy (faer's layout: the kernels see the same memory layout
/// whatever the caller's allocation, which keeps results bit-reproducible).
pub(crate) fn to_mat(a: ArrayView2<f64>) -> Mat<f64> {
    a.into_faer().to_owned()
}

fn to_array(m: Mat<f64>) -> Array2<f64> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| m[(i, j)])
}

/// Sequential dense product a · b.
pub(crate) fn mm(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// diag(g) · a.
pub(crate) fn scale_rows(a: MatRef<'_, f64>, g: &[f64]) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] * g[i])
}

/// a · diag(g).
fn scale_cols(a: MatRef<'_, f64>, g: &[f64]) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] * g[j])
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    #[test]
    fn fold_pca_uses_training_loadings_only_and_keeps_relative_variances() {
        let mut rng = crate::stats::SplitMix64::new(11);
        let (n_train, n_test, p) = (40, 20, 8);
        let mut x_train = Array2::from_shape_fn((n_train, p), |_| rng.normal());
        x_train.column_mut(0).fill(0.5); // no variance in the training rows
        for (i, mut row) in x_train.rows_mut().into_iter().enumerate() {
            row[1] *= 3.0; // a dominant direction
            row[2] += 0.01 * i as f64;
        }
        // test rows: the same distribution plus a direction the training rows never vary along
        let mut x_test = Array2::from_shape_fn((n_test, p), |_| rng.normal());
        x_test
            .column_mut(0)
            .assign(&Array1::from_shape_fn(n_test, |_| 10.0 * rng.normal()));
        let (tr, te) = fold_pca(x_train.view(), x_test.view(), 5).unwrap();
        assert_eq!((tr.ncols(), te.ncols()), (5, 5));
        // moving a test row along the test-only direction leaves its scores unchanged
        let mut moved = x_test.clone();
        moved.column_mut(0).mapv_inplace(|v| v + 1000.0);
        let (_, te_moved) = fold_pca(x_train.view(), moved.view(), 5).unwrap();
        for (a, b) in te.iter().zip(te_moved.iter()) {
            assert_abs_diff_eq!(a, b, epsilon = 1e-9);
        }
        // a test row equal to a training row gets that row's training scores
        let (_, te_same) = fold_pca(x_train.view(), x_train.slice(ndarray::s![3..4, ..]), 5).unwrap();
        for c in 0..5 {
            assert_abs_diff_eq!(te_same[[0, c]], tr[[3, c]], epsilon = 1e-9);
        }
        // not whitened: decreasing variances with mean 1 over the kept components
        let var: Vec<f64> = tr
            .columns()
            .into_iter()
            .map(|c| c.iter().map(|v| v * v).sum::<f64>() / n_train as f64)
            .collect();
        assert!(var.windows(2).all(|w| w[0] >= w[1]), "{var:?}");
        assert!(
            var[0] > 3.0 * var[4],
            "the components keep their variance ratios: {var:?}"
        );
        assert_abs_diff_eq!(var.iter().sum::<f64>() / 5.0, 1.0, epsilon = 1e-10);
        // k is capped below the training rows' rank (7 here: the constant column adds none)
        let (all, _) = fold_pca(x_train.view(), x_test.view(), 100).unwrap();
        assert_eq!(all.ncols(), 6);
    }

    /// (A)⁻¹ b by Gauss–Jordan with partial pivoting: a second implementation for the tests.
    fn solve_dense(mut a: Array2<f64>, mut b: Array2<f64>) -> Array2<f64> {
        let n = a.nrows();
        for c in 0..n {
            let p = (c..n)
                .max_by(|&i, &j| a[[i, c]].abs().total_cmp(&a[[j, c]].abs()))
                .unwrap();
            for k in 0..n {
                a.swap([c, k], [p, k]);
            }
            for k in 0..b.ncols() {
                b.swap([c, k], [p, k]);
            }
            for i in 0..n {
                if i != c {
                    let f = a[[i, c]] / a[[c, c]];
                    for k in 0..n {
                        a[[i, k]] -= f * a[[c, k]];
                    }
                    for k in 0..b.ncols() {
                        b[[i, k]] -= f * b[[c, k]];
                    }
                }
            }
        }
        for i in 0..n {
            let d = a[[i, i]];
            b.row_mut(i).mapv_inplace(|v| v / d);
        }
        b
    }

    #[test]
    fn nested_cv_weights_are_the_folds_normal_equation_solutions_at_the_chosen_penalties_averaged() {
        let mut rng = crate::stats::SplitMix64::new(11);
        let (n, p) = (90, 6);
        let x = Array2::from_shape_fn((n, p), |_| rng.normal());
        let y = Array2::from_shape_fn((n, 3), |(i, t)| {
            x[[i, t]] * (1.0 + t as f64) - 0.5 * x[[i, 5]] + rng.normal()
        });
        let outer = crate::encoding::contiguous_block_folds(n, 3, 2).unwrap();
        let alphas = log_alphas(-1.0, 3.0, 5);
        let opts = NestedCvOptions {
            weights: true,
            ..Default::default()
        };
        let res = nested_cv_ridge_opts(x.view(), y.view(), &alphas, &outer, 3, 2, &opts).unwrap();
        let w = res.weights.as_ref().unwrap();
        assert_eq!(w.dim(), (p, 3));
        // asking for weights changes nothing else
        let plain = nested_cv_ridge(x.view(), y.view(), &alphas, &outer, 3, 2).unwrap();
        assert_eq!(plain.r_per_fold, res.r_per_fold);
        assert!(plain.weights.is_none());
        // independently: per fold, z-score the training rows, solve (XᵀX + αI) w = Xᵀy at the
        // fold's chosen α per target, then average over folds
        let mut expected = Array2::<f64>::zeros((p, 3));
        for (k, f) in outer.iter().enumerate() {
            let mut train = f.train.clone();
            train.sort_unstable();
            let mut xt = x.select(Axis(0), &train);
            let mut yt = y.select(Axis(0), &train);
            zscore_columns(xt.view_mut());
            zscore_columns(yt.view_mut());
            for j in 0..3 {
                let a = res.alpha_per_fold[[k, j]];
                let g = xt.t().dot(&xt) + Array2::<f64>::eye(p) * a;
                let b = xt.t().dot(&yt.column(j)).insert_axis(Axis(1));
                let wj = solve_dense(g, b);
                for c in 0..p {
                    expected[[c, j]] += wj[[c, 0]] / outer.len() as f64;
                }
            }
        }
        for (a, b) in w.iter().zip(expected.iter()) {
            assert_abs_diff_eq!(*a, *b, epsilon = 1e-10);
        }
        // the planted structure shows: target t loads on column t, with the right sign on column 5
        for t in 0..3 {
            assert!(w[[t, t]] > 0.3, "target {t}: {:?}", w.column(t));
            assert!(w[[5, t]] < 0.0, "target {t}: {:?}", w.column(t));
        }
        // PCA designs have no per-column weights
        let pca = NestedCvOptions {
            weights: true,
            transform: DesignTransform::Pca { k: 3 },
            ..Default::default()
        };
        assert!(nested_cv_ridge_opts(x.view(), y.view(), &alphas, &outer, 3, 2, &pca).is_err());
    }

    #[test]
    fn nested_cv_with_fold_pca_and_r2_choice_reports_both_and_defaults_unchanged() {
        let mut rng = crate::stats::SplitMix64::new(5);
        let n = 120;
        let x = Array2::from_shape_fn((n, 10), |_| rng.normal());
        let w = Array1::from_shape_fn(10, |j| if j < 3 { 1.0 } else { 0.0 });
        let y = Array2::from_shape_fn((n, 2), |(i, t)| {
            if t == 0 {
                x.row(i).dot(&w) + 0.5 * rng.normal()
            } else {
                rng.normal()
            }
        });
        let outer = crate::encoding::contiguous_block_folds(n, 4, 3).unwrap();
        let alphas = log_alphas(-2.0, 4.0, 7);
        let plain = nested_cv_ridge(x.view(), y.view(), &alphas, &outer, 3, 3).unwrap();
        let opts = NestedCvOptions {
            r2_predictions: true,
            ..Default::default()
        };
        let both = nested_cv_ridge_opts(x.view(), y.view(), &alphas, &outer, 3, 3, &opts).unwrap();
        // the r-chosen fit is the one nested_cv_ridge gives, to the bit
        assert_eq!(plain.r_per_fold, both.r_per_fold);
        assert_eq!(plain.alpha_per_fold, both.alpha_per_fold);
        assert!(plain.predictions_r2.is_none());
        let p2 = both.predictions_r2.as_ref().unwrap();
        let a2 = both.alpha_r2_per_fold.as_ref().unwrap();
        // R² chooses large penalties for the noise target (shrinking towards 0 pays); on the signal
        // target its predictions explain the held-out rows
        assert!(a2.column(1).iter().all(|&a| a >= 100.0), "{a2:?}");
        assert!(p2
            .column(0)
            .iter()
            .zip(both.predictions.column(0))
            .all(|(a, b)| a.is_finite() == b.is_finite()));
        let rows = &both.tested_rows;
        let r2 = crate::encoding::stats::r2_per_target(p2.select(Axis(0), rows).view(), y.select(Axis(0), rows).view());
        assert!(r2[0] > 0.5, "held-out R² of the signal target: {r2:?}");
        // fold PCA with k = 3: three columns per fold, signal still found
        let pca = NestedCvOptions {
            transform: DesignTransform::Pca { k: 3 },
            ..Default::default()
        };
        let res = nested_cv_ridge_opts(x.view(), y.view(), &alphas, &outer, 3, 3, &pca).unwrap();
        assert_eq!(res.n_columns_per_fold, vec![3; 4]);
        assert!(res.r_per_fold.column(0).mean().unwrap() > 0.3);
        assert_eq!(plain.n_columns_per_fold, vec![10; 4]);
    }

    /// A design with a planted signal of graded strength per target, plus pure-noise and constant
    /// targets (whose penalty curves are flat: the cases float32 could misorder).
    fn graded_problem(n: usize, p: usize, t: usize, seed: u64) -> (Array2<f64>, Array2<f64>) {
        let mut rng = crate::stats::SplitMix64::new(seed);
        let x = Array2::from_shape_fn((n, p), |_| rng.normal());
        let w = Array2::from_shape_fn((p, t), |_| rng.normal());
        let mut y = x.dot(&w);
        for (j, mut col) in y.columns_mut().into_iter().enumerate() {
            let snr = 10f64.powf(-3.0 + 4.0 * j as f64 / t as f64);
            let sd = col.std(0.0).max(1e-12);
            col.mapv_inplace(|v| snr.sqrt() * v / sd + rng.normal());
            if j % 17 == 0 {
                col.fill(2.5); // constant: every penalty scores the same
            }
        }
        (x, y)
    }

    #[test]
    fn float32_scores_choose_the_same_penalties_as_float64_for_every_criterion_and_decomposition() {
        let alphas = log_alphas(-1.0, 5.0, 10);
        for (n, p, seed) in [(240, 60, 1), (90, 200, 2)] {
            let (x, y) = graded_problem(n, p, 300, seed);
            let folds = crate::encoding::contiguous_block_folds(n, 4, 0).unwrap();
            for criterion in [AlphaCriterion::Pearson, AlphaCriterion::R2, AlphaCriterion::NegMse] {
                let run = |precision| {
                    ridge_cv_precision(
                        x.view(),
                        y.view(),
                        &alphas,
                        &folds,
                        criterion,
                        RidgeMethod::Auto,
                        precision,
                    )
                    .unwrap()
                };
                let (exact, fast) = (run(ScorePrecision::Exact), run(ScorePrecision::Fast));
                assert_eq!(exact.best_alpha_index, fast.best_alpha_index, "{criterion:?}, {n}×{p}");
                assert!(fast.rescored > 0, "the constant targets tie: they must be rescored");
                assert_eq!(exact.rescored, 0);
                let max = exact
                    .cv_scores
                    .iter()
                    .zip(fast.cv_scores.iter())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                let scale = match criterion {
                    AlphaCriterion::NegMse => y.iter().map(|v| v * v).sum::<f64>() / y.len() as f64,
                    _ => 1.0,
                };
                assert!(
                    max < 0.05 * FAST_SCORE_MARGIN * scale,
                    "{criterion:?}, {n}×{p}: max |Δ score| {max:e}"
                );
                // the refit is float64 in both
                assert_eq!(
                    exact
                        .path
                        .predict_per_target(&exact.best_alpha_index, x.view())
                        .unwrap(),
                    fast.path.predict_per_target(&fast.best_alpha_index, x.view()).unwrap()
                );
            }
        }
    }

    #[test]
    fn one_feature_ridge_matches_the_closed_form() {
        // w = xᵀy / (xᵀx + α): xᵀx = 14, xᵀy = 2·1 + 1·2 + 3·3 = 13 (first target), 28 (second)
        let x = array![[1.0], [2.0], [3.0]];
        let y = array![[2.0, 2.0], [1.0, 4.0], [3.0, 6.0]];
        let alphas = [1.0, 6.0];
        for method in [RidgeMethod::Svd, RidgeMethod::Gram, RidgeMethod::Kernel] {
            let path = solve_ridge_with_method(x.view(), y.view(), &alphas, method).unwrap();
            assert_eq!(path.rank(), 1);
            assert_abs_diff_eq!(path.singular_values()[0], 14f64.sqrt(), epsilon = 1e-12);
            let w0 = path.weights(0).unwrap();
            let w1 = path.weights(1).unwrap();
            assert_abs_diff_eq!(w0[[0, 0]], 13.0 / 15.0, epsilon = 1e-12);
            assert_abs_diff_eq!(w0[[0, 1]], 28.0 / 15.0, epsilon = 1e-12);
            assert_abs_diff_eq!(w1[[0, 0]], 13.0 / 20.0, epsilon = 1e-12);
            let pred = path.predict(1, array![[10.0]].view()).unwrap();
            assert_abs_diff_eq!(pred[[0, 1]], 280.0 / 20.0, epsilon = 1e-12);
        }
    }

    #[test]
    fn duplicated_columns_drop_a_direction_and_share_the_weight_at_vanishing_penalty() {
        // X = [a, a, b]: rank 2; the minimum-norm solution splits a's weight evenly
        let x = array![
            [1.0, 1.0, 0.0],
            [2.0, 2.0, 1.0],
            [0.0, 0.0, 1.0],
            [1.0, 1.0, -1.0],
            [3.0, 3.0, 2.0]
        ];
        let y = x.column(0).mapv(|v| 2.0 * v).insert_axis(Axis(1)) + x.column(2).insert_axis(Axis(1)); // 2a + b
        for method in [RidgeMethod::Svd, RidgeMethod::Gram, RidgeMethod::Kernel] {
            let path = solve_ridge_with_method(x.view(), y.view(), &[1e-10], method).unwrap();
            assert_eq!(path.rank(), 2, "{method:?}");
            let w = path.weights(0).unwrap();
            assert_abs_diff_eq!(w[[0, 0]], 1.0, epsilon = 1e-7);
            assert_abs_diff_eq!(w[[1, 0]], 1.0, epsilon = 1e-7);
            assert_abs_diff_eq!(w[[2, 0]], 1.0, epsilon = 1e-7);
        }
    }

    #[test]
    fn r2_is_one_for_a_perfect_prediction_zero_for_the_mean_and_nan_for_a_constant_target() {
        let y = [1.0, 2.0, 3.0, 6.0];
        assert_abs_diff_eq!(r2(&y, &y), 1.0, epsilon = 1e-15);
        assert_abs_diff_eq!(r2(&[3.0; 4], &y), 0.0, epsilon = 1e-15);
        // SSE 4 (each off by 1), SST 14
        assert_abs_diff_eq!(r2(&[2.0, 3.0, 4.0, 7.0], &y), 1.0 - 4.0 / 14.0, epsilon = 1e-15);
        assert!(r2(&y, &[5.0; 4]).is_nan());
    }

    #[test]
    fn the_best_penalty_is_the_highest_score_and_near_ties_go_to_the_larger_penalty() {
        let alphas = [10.0, 1.0, 100.0, 1000.0];
        assert_eq!(best_alpha(&alphas, array![0.1, 0.3, 0.2, 0.0].view()), 1);
        assert_eq!(best_alpha(&alphas, array![0.3, 0.3, 0.2, 0.0].view()), 0);
        assert_eq!(best_alpha(&alphas, array![0.3, 0.3, 0.3, 0.3].view()), 3);
        assert_eq!(best_alpha(&[5.0, 1.0], array![0.0, 0.0].view()), 0);
        // within the slope: a score 1e-12 lower but one decade larger wins (1e-10 · ln 10 > 1e-12)
        assert_eq!(best_alpha(&[1.0, 10.0], array![0.5, 0.5 - 1e-12].view()), 1);
        assert_eq!(best_alpha(&[1.0, 10.0], array![0.5, 0.5 - 1e-9].view()), 0);
    }

    #[test]
    fn test_rows_are_standardised_with_training_statistics_and_constant_columns_become_zero() {
        let mut test = array![[3.0, 7.0], [5.0, 9.0]];
        apply_zscore(test.view_mut(), &[(1.0, 2.0), (4.0, 0.0)]);
        assert_eq!(test, array![[1.0, 0.0], [2.0, 0.0]]);
    }

    #[test]
    fn scores_for_every_penalty_equal_pearson_on_each_prediction() {
        let mut rng = crate::stats::SplitMix64::new(3);
        let x = Array2::from_shape_simple_fn((30, 4), || rng.normal());
        let y = Array2::from_shape_simple_fn((30, 3), || rng.normal());
        let x_test = Array2::from_shape_simple_fn((10, 4), || rng.normal());
        let y_test = Array2::from_shape_simple_fn((10, 3), || rng.normal());
        let path = solve_ridge_svd(x.view(), y.view(), &[0.1, 10.0, 1e4]).unwrap();
        let scores = path.score_all(x_test.view(), y_test.view()).unwrap();
        let r2s = path
            .score_all_with(x_test.view(), y_test.view(), AlphaCriterion::R2)
            .unwrap();
        for (i, pred) in path.predict_all(x_test.view()).unwrap().iter().enumerate() {
            for j in 0..3 {
                let (p, o) = (pred.column(j).to_vec(), y_test.column(j).to_vec());
                assert_abs_diff_eq!(scores[[i, j]], pearson(&p, &o), epsilon = 1e-12);
                assert_abs_diff_eq!(r2s[[i, j]], r2(&p, &o), epsilon = 1e-12);
            }
        }
    }
}
