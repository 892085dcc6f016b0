//! Linear mixed models fitted by maximum likelihood (or REML) as lme4's `lmer` does: the profiled
//! deviance as a function of the relative covariance parameters θ, minimised by BOBYQA within
//! lme4's bounds (Nelder–Mead as the fallback), with fixed effects and the residual variance
//! profiled out (Bates, Mächler, Bolker & Walker 2015, "Fitting linear mixed-effects models using
//! lme4", J. Stat. Softw. 67(1), §3), and lme4's convergence checks at the optimum.
//!
//! Model: y = Xβ + Zb + ε, b = Λ_θ u, u ~ N(0, σ² I), ε ~ N(0, σ² I). Each random-effect term k
//! (`(1 + slopes | group)`) contributes d_k effects per level with covariance σ² T_k T_kᵀ, T_k lower
//! triangular (θ holds the lower triangles, column by column, as lme4's `getME(fit, "theta")`).
//!
//! For a given θ, with L Lᵀ = ΛᵀZᵀZΛ + I, c_u = L⁻¹ΛᵀZᵀy, R_ZX = L⁻¹ΛᵀZᵀX,
//! L_X L_Xᵀ = XᵀX − R_ZXᵀR_ZX, c_β = L_X⁻¹(Xᵀy − R_ZXᵀc_u): β̂ = L_X⁻ᵀc_β, the penalised residual
//! sum of squares r² = yᵀy − ‖c_u‖² − ‖c_β‖², and
//!   ML:   −2 log L = log|L|² + n (1 + log(2π r² / n)),           σ̂² = r² / n
//!   REML: −2 log L_R = log|L|² + log|L_X|² + (n − p)(1 + log(2π r² / (n − p))), σ̂² = r² / (n − p).
//!
//! Sparse structure: everything depends on the data only through ZᵀZ, ZᵀX, Zᵀy, XᵀX, Xᵀy, yᵀy,
//! accumulated in one pass over the rows, so each deviance evaluation costs nothing per row. The
//! term with the most random effects (e.g. `(1 | item)` or `(1 + x | item)` with thousands of
//! items) has a block-diagonal block in ZᵀZ (d × d per level); it is eliminated first (its Cholesky
//! factor is block diagonal too) and only the Schur complement of the other terms, of size
//! Σ_{k≠E} d_k·levels_k, is factored densely. With crossed subjects (hundreds) and items
//! (thousands) an evaluation is one (q_R × q_E)·(q_E × q_R) product and a q_R Cholesky.
//!
//! Optimizer: BOBYQA (Powell 2009; the `bobyqa` crate, a port of PRIMA's) with the diagonal of
//! every T_k bounded below by 0, as lme4's default `nloptwrap`/BOBYQA. θ is optimised for the
//! columns of Z divided by their root mean square (see [`fit_lmm`]). lme4's convergence checks
//! follow: finite-difference gradient and Hessian, the scaled-gradient test, singular fits
//! ([`Convergence`]).
//!
//! Standard errors: Cov(β̂) = σ̂² (L_X L_Xᵀ)⁻¹ (lme4's `vcov`, conditional on θ̂).

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, MatRef, Par, Side};
use ndarray::{Array2, ArrayView2};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One random-effect term's data: level of every row and the d values of its effects per row
/// (1 for an intercept, the covariate for a slope).
#[derive(Debug, Clone)]
pub struct TermData {
    pub name: String,
    pub effect_names: Vec<String>,
    /// (n_rows): level index of each row, in 0..n_levels.
    pub level: Vec<usize>,
    pub n_levels: usize,
    /// (n_rows, d): effect values per row.
    pub z: Array2<f64>,
}

impl TermData {
    pub fn dim(&self) -> usize {
        self.z.ncols()
    }
}

/// Which derivative-free optimizer minimises the profiled deviance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    /// Powell's BOBYQA (the `bobyqa` crate, a port of PRIMA's), bounded below at 0 on the
    /// diagonal of every T_k, as lme4's default `nloptwrap` runs NLopt's BOBYQA. Falls back to
    /// Nelder–Mead from BOBYQA's best point when BOBYQA stops short of its tolerance.
    Bobyqa,
    /// Nelder–Mead with restarts (the earlier default; slow where θ's components differ in scale).
    NelderMead,
}

/// Options of [`fit_lmm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmmOptions {
    /// REML instead of ML (lme4's default is REML; likelihood-ratio tests of fixed effects need ML).
    pub reml: bool,
    pub optimizer: Optimizer,
    /// Largest number of deviance evaluations (lme4's `maxeval` 1e5).
    pub max_evals: usize,
    /// BOBYQA's final trust-region radius, in θ for the scaled columns (see [`fit_lmm`]).
    pub rho_end: f64,
    /// Nelder–Mead's convergence: the simplex's spread in deviance below this, and in θ below `xtol`.
    pub ftol: f64,
    pub xtol: f64,
    /// Finite-difference gradient and Hessian at the optimum (lme4's `calc.derivs`): 2k²
    /// further evaluations for k covariance parameters.
    pub check_convergence: bool,
}

impl Default for LmmOptions {
    fn default() -> Self {
        LmmOptions {
            reml: false,
            optimizer: Optimizer::Bobyqa,
            max_evals: 100_000,
            rho_end: 1e-7,
            ftol: 1e-12,
            xtol: 1e-9,
            check_convergence: true,
        }
    }
}

/// lme4's convergence checks (`lme4::checkConv`), on θ at lme4's scale (the columns of Z as given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    /// The optimizer reached its tolerance and the gradient check passed.
    pub converged: bool,
    /// Why the optimizer stopped, in its words.
    pub optimizer_status: String,
    /// Finite-difference gradient of the deviance in θ (central differences, step 1e-4, as lme4's
    /// `deriv12`); empty when the checks were not run.
    #[serde(with = "crate::store::json_float::vec")]
    pub gradient: Vec<f64>,
    /// lme4's criterion: max over θ components off the boundary of min(|scaled gradient|,
    /// |gradient|), the scaled gradient being the gradient solved against the Cholesky factor of
    /// the Hessian; fails above [`GRADIENT_TOL`]. NaN when not computed.
    #[serde(with = "crate::store::json_float")]
    pub max_grad: f64,
    /// A diagonal θ entry below [`SINGULAR_TOL`] (lme4's `isSingular`): a variance estimated as 0
    /// or a correlation of ±1.
    pub singular: bool,
    /// The θ components at (or within [`SINGULAR_TOL`] of) their lower bound 0, named
    /// "group: effect".
    pub boundary: Vec<String>,
    /// What lme4 would warn about, in its words where it has them.
    pub messages: Vec<String>,
}

/// lme4's default `check.conv.grad` tolerance.
pub const GRADIENT_TOL: f64 = 2e-3;
/// lme4's default `check.conv.singular` tolerance.
pub const SINGULAR_TOL: f64 = 1e-4;

/// A fitted model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmmFit {
    pub fixed_names: Vec<String>,
    #[serde(with = "crate::store::json_float::vec")]
    pub beta: Vec<f64>,
    #[serde(with = "crate::store::json_float::vec")]
    pub se: Vec<f64>,
    /// β̂ / SE (lme4 reports t values without degrees of freedom).
    #[serde(with = "crate::store::json_float::vec")]
    pub t: Vec<f64>,
    /// Relative covariance parameters (lme4 order and scale), diagonal entries ≥ 0.
    #[serde(with = "crate::store::json_float::vec")]
    pub theta: Vec<f64>,
    /// Residual variance σ̂².
    #[serde(with = "crate::store::json_float")]
    pub sigma2: f64,
    /// Per term: (name, effect names, covariance matrix σ̂² T Tᵀ).
    #[serde(with = "crate::store::json_float::matrices")]
    pub covariances: Vec<(String, Vec<String>, Array2<f64>)>,
    /// log-likelihood (ML) or REML criterion / −2 (REML).
    #[serde(with = "crate::store::json_float")]
    pub log_likelihood: f64,
    /// −2 log-likelihood (ML deviance, or the REML criterion).
    #[serde(with = "crate::store::json_float")]
    pub deviance: f64,
    pub reml: bool,
    pub n_obs: usize,
    pub n_levels: Vec<(String, usize)>,
    /// Parameters counted by AIC/BIC: fixed effects + θ + σ.
    pub n_params: usize,
    #[serde(with = "crate::store::json_float")]
    pub aic: f64,
    #[serde(with = "crate::store::json_float")]
    pub bic: f64,
    /// Deviance evaluations by the optimizer (lme4's `feval`; the convergence checks' are in
    /// `n_evals_checks`).
    pub n_evals: usize,
    pub n_evals_checks: usize,
    /// "bobyqa", "bobyqa, then nelder-mead" or "nelder-mead".
    pub optimizer: String,
    /// Same as `convergence.converged`.
    pub converged: bool,
    pub convergence: Convergence,
}

/// Sufficient statistics, split into the eliminated term E and the rest R.
///
/// E is the term with the most random effects (d_E · levels); its block of ZᵀZ is block diagonal
/// (one d_E × d_E block per level), so its part of the Cholesky factor is too and is computed level
/// by level; only the Schur complement of the other terms, of size q_R = Σ_{k≠E} d_k·levels_k, is
/// factored densely.
///
/// Every effect column of Z is divided by its root mean square before the statistics are
/// accumulated (see [`fit_lmm`]: the optimizer works on θ for these scaled columns).
struct Problem {
    n: usize,
    p: usize,
    /// index of the eliminated term in `dims`
    elim: usize,
    /// per term: (d, n_levels, offset in R space — unused for E)
    dims: Vec<(usize, usize, usize)>,
    /// per term and effect: the root mean square the column was divided by
    scales: Vec<Vec<f64>>,
    /// d_E
    de: usize,
    q_e: usize,
    q_r: usize,
    /// per level of E, its d_E × d_E block of Z_EᵀZ_E (row-major)
    d_e: Vec<f64>,
    b: Mat<f64>,   // (q_e, q_r)
    s: Mat<f64>,   // (q_r, q_r)
    zex: Mat<f64>, // (q_e, p)
    zrx: Mat<f64>, // (q_r, p)
    zey: Vec<f64>, // (q_e)
    zry: Mat<f64>, // (q_r, 1)
    xtx: Mat<f64>, // (p, p)
    xty: Mat<f64>, // (p, 1)
    yty: f64,
}

/// The Schur-complement product WᵀW (q_R² · q_E multiply-adds) runs on the rayon pool above this.
const PARALLEL_FLOPS: usize = 20_000_000;

impl Problem {
    fn new(y: &[f64], x: ArrayView2<f64>, terms: &[TermData]) -> Result<Problem> {
        let (n, p) = x.dim();
        if y.len() != n || n == 0 {
            return Err(Error::Invalid(format!(
                "lmm: {} responses for a ({n}, {p}) fixed-effects matrix",
                y.len()
            )));
        }
        if n <= p {
            return Err(Error::Invalid(format!(
                "lmm: {n} rows cannot estimate {p} fixed effects"
            )));
        }
        if terms.is_empty() {
            return Err(Error::Invalid("lmm: expected at least one random-effect term".into()));
        }
        for t in terms {
            if t.level.len() != n || t.z.nrows() != n || t.dim() == 0 {
                return Err(Error::Invalid(format!(
                    "lmm: term {} does not have one row per observation",
                    t.name
                )));
            }
            if let Some(&l) = t.level.iter().find(|&&l| l >= t.n_levels) {
                return Err(Error::Invalid(format!(
                    "lmm: term {} has level {l} ≥ {}",
                    t.name, t.n_levels
                )));
            }
        }
        let elim = (0..terms.len())
            .max_by_key(|&k| (terms[k].dim() * terms[k].n_levels, usize::MAX - k))
            .expect("at least one term");
        let scales: Vec<Vec<f64>> = terms
            .iter()
            .map(|t| {
                (0..t.dim())
                    .map(|c| {
                        let rms = (t.z.column(c).iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
                        if rms > 0.0 && rms.is_finite() {
                            rms
                        } else {
                            1.0
                        }
                    })
                    .collect()
            })
            .collect();
        let mut dims = Vec::new();
        let mut q_r = 0;
        for (k, t) in terms.iter().enumerate() {
            dims.push((t.dim(), t.n_levels, q_r));
            if k != elim {
                q_r += t.dim() * t.n_levels;
            }
        }
        let de = terms[elim].dim();
        let q_e = de * terms[elim].n_levels;
        let mut pr = Problem {
            n,
            p,
            elim,
            dims,
            scales,
            de,
            q_e,
            q_r,
            d_e: vec![0.0; q_e * de],
            b: Mat::zeros(q_e, q_r),
            s: Mat::zeros(q_r, q_r),
            zex: Mat::zeros(q_e, p),
            zrx: Mat::zeros(q_r, p),
            zey: vec![0.0; q_e],
            zry: Mat::zeros(q_r, 1),
            xtx: Mat::zeros(p, p),
            xty: Mat::zeros(p, 1),
            yty: 0.0,
        };
        let mut rcols: Vec<(usize, f64)> = Vec::new();
        let mut ze = vec![0.0; de];
        for i in 0..n {
            rcols.clear();
            for (k, t) in terms.iter().enumerate() {
                if k == elim {
                    continue;
                }
                let (d, _, off) = pr.dims[k];
                for c in 0..d {
                    rcols.push((off + t.level[i] * d + c, t.z[[i, c]] / pr.scales[k][c]));
                }
            }
            let xi = x.row(i);
            let yi = y[i];
            let l = terms[elim].level[i];
            for (c, v) in ze.iter_mut().enumerate() {
                *v = terms[elim].z[[i, c]] / pr.scales[elim][c];
            }
            for a in 0..de {
                let r = l * de + a;
                for c in 0..de {
                    pr.d_e[r * de + c] += ze[a] * ze[c];
                }
                pr.zey[r] += ze[a] * yi;
                for j in 0..p {
                    pr.zex[(r, j)] += ze[a] * xi[j];
                }
                for &(rc, v) in &rcols {
                    pr.b[(r, rc)] += ze[a] * v;
                }
            }
            for &(r, v) in &rcols {
                for &(r2, v2) in &rcols {
                    pr.s[(r, r2)] += v * v2;
                }
                pr.zry[(r, 0)] += v * yi;
                for j in 0..p {
                    pr.zrx[(r, j)] += v * xi[j];
                }
            }
            for j in 0..p {
                pr.xty[(j, 0)] += xi[j] * yi;
                for j2 in 0..p {
                    pr.xtx[(j, j2)] += xi[j] * xi[j2];
                }
            }
            pr.yty += yi * yi;
        }
        Ok(pr)
    }

    /// Number of covariance parameters.
    fn n_theta(&self) -> usize {
        self.dims.iter().map(|&(d, _, _)| d * (d + 1) / 2).sum()
    }

    /// Per column of every T_k: the index in θ of its diagonal entry and of the entries below it.
    fn theta_columns(&self) -> Vec<(usize, Vec<usize>)> {
        let mut out = Vec::new();
        let mut k0 = 0;
        for &(d, _, _) in &self.dims {
            for j in 0..d {
                out.push((k0, (k0 + 1..k0 + d - j).collect()));
                k0 += d - j;
            }
        }
        out
    }

    /// Lower bounds of θ: 0 on the diagonal of every T_k, −∞ below it (lme4's `lower`).
    fn lower_bounds(&self) -> Vec<f64> {
        let mut lb = Vec::new();
        for &(d, _, _) in &self.dims {
            for j in 0..d {
                for i in j..d {
                    lb.push(if i == j { 0.0 } else { f64::NEG_INFINITY });
                }
            }
        }
        lb
    }

    /// θ for the scaled columns from θ for the columns as given (lme4's scale) and back: the
    /// row of T belonging to effect i is multiplied (`to_scaled`) or divided by its scale.
    fn rescale(&self, theta: &[f64], to_scaled: bool) -> Vec<f64> {
        let mut out = theta.to_vec();
        let mut k0 = 0;
        for (k, &(d, _, _)) in self.dims.iter().enumerate() {
            for _j in 0..d {
                for i in _j..d {
                    let s = self.scales[k][i];
                    out[k0] = if to_scaled { theta[k0] * s } else { theta[k0] / s };
                    k0 += 1;
                }
            }
        }
        out
    }

    /// Lower-triangular T_k from θ (column-major lower triangle per term).
    fn t_factors(&self, theta: &[f64]) -> Vec<Mat<f64>> {
        let mut k0 = 0;
        self.dims
            .iter()
            .map(|&(d, _, _)| {
                let mut t = Mat::zeros(d, d);
                for j in 0..d {
                    for i in j..d {
                        t[(i, j)] = theta[k0];
                        k0 += 1;
                    }
                }
                t
            })
            .collect()
    }

    /// Applies Λ_R on the right of `m` (rows × q_r): each level block of columns times T_k.
    fn right_lambda(&self, m: &Mat<f64>, t: &[Mat<f64>]) -> Mat<f64> {
        let mut out = Mat::zeros(m.nrows(), m.ncols());
        for (k, &(d, levels, off)) in self.dims.iter().enumerate() {
            if k == self.elim {
                continue;
            }
            for l in 0..levels {
                let c0 = off + l * d;
                let block = m.as_ref().subcols(c0, d);
                let prod = mm(block, t[k].as_ref());
                out.as_mut().subcols_mut(c0, d).copy_from(prod.as_ref());
            }
        }
        out
    }

    /// Λ_Rᵀ m for m (q_r × cols).
    fn left_lambda_t(&self, m: &Mat<f64>, t: &[Mat<f64>]) -> Mat<f64> {
        let mut out = Mat::zeros(m.nrows(), m.ncols());
        for (k, &(d, levels, off)) in self.dims.iter().enumerate() {
            if k == self.elim {
                continue;
            }
            for l in 0..levels {
                let r0 = off + l * d;
                let block = m.as_ref().subrows(r0, d);
                let prod = mm(t[k].as_ref().transpose(), block);
                out.as_mut().subrows_mut(r0, d).copy_from(prod.as_ref());
            }
        }
        out
    }

    /// Per level of E: G_l = L_l⁻¹ T_Eᵀ (row-major d_E × d_E), with L_l L_lᵀ = T_Eᵀ D_l T_E + I,
    /// and log|L_E|² = Σ_l log|L_l|².
    fn eliminated_blocks(&self, te: &Mat<f64>) -> (Vec<f64>, f64) {
        let de = self.de;
        let levels = self.q_e / de;
        let mut g = vec![0.0; levels * de * de];
        let mut logdet = 0.0;
        let mut a = vec![0.0; de * de];
        let mut dt = vec![0.0; de * de];
        for l in 0..levels {
            let dl = &self.d_e[l * de * de..(l + 1) * de * de];
            // dt = D_l T_E, a = T_Eᵀ dt + I
            for i in 0..de {
                for j in 0..de {
                    dt[i * de + j] = (0..de).map(|k| dl[i * de + k] * te[(k, j)]).sum();
                }
            }
            for i in 0..de {
                for j in 0..de {
                    a[i * de + j] = (0..de).map(|k| te[(k, i)] * dt[k * de + j]).sum::<f64>() + f64::from(i == j);
                }
            }
            // Cholesky in place (lower; a is positive definite: ≥ I)
            for j in 0..de {
                let mut djj = a[j * de + j];
                for k in 0..j {
                    djj -= a[j * de + k] * a[j * de + k];
                }
                let ljj = djj.sqrt();
                a[j * de + j] = ljj;
                logdet += 2.0 * ljj.ln();
                for i in j + 1..de {
                    let mut v = a[i * de + j];
                    for k in 0..j {
                        v -= a[i * de + k] * a[j * de + k];
                    }
                    a[i * de + j] = v / ljj;
                }
            }
            // G_l = L_l⁻¹ T_Eᵀ by forward substitution, column by column
            let gl = &mut g[l * de * de..(l + 1) * de * de];
            for c in 0..de {
                for i in 0..de {
                    let mut v = te[(c, i)];
                    for k in 0..i {
                        v -= a[i * de + k] * gl[k * de + c];
                    }
                    gl[i * de + c] = v / a[i * de + i];
                }
            }
        }
        (g, logdet)
    }

    /// Rows of `m` (q_e × cols) multiplied level by level by G_l.
    fn apply_g(&self, g: &[f64], m: &Mat<f64>) -> Mat<f64> {
        let de = self.de;
        let levels = self.q_e / de;
        let mut out = Mat::zeros(m.nrows(), m.ncols());
        for j in 0..m.ncols() {
            for l in 0..levels {
                let gl = &g[l * de * de..(l + 1) * de * de];
                for i in 0..de {
                    out[(l * de + i, j)] = (0..de).map(|k| gl[i * de + k] * m[(l * de + k, j)]).sum();
                }
            }
        }
        out
    }

    /// Everything at θ (for the scaled columns): deviance (ML or REML), β̂, r², L_X.
    fn evaluate(&self, theta: &[f64], reml: bool) -> Option<Eval> {
        let t = self.t_factors(theta);
        let (g, mut logdet) = self.eliminated_blocks(&t[self.elim]);
        // W = G B Λ_R (q_e × q_r)
        let w = self.apply_g(&g, &self.right_lambda(&self.b, &t));
        // M = Λ_Rᵀ S Λ_R + I − WᵀW (lower triangle)
        let sl = self.right_lambda(&self.s, &t);
        let mut m = self.left_lambda_t(&sl, &t);
        for i in 0..self.q_r {
            m[(i, i)] += 1.0;
        }
        if self.q_e > 0 && self.q_r > 0 {
            let par = if self.q_e * self.q_r * self.q_r > PARALLEL_FLOPS {
                Par::rayon(0)
            } else {
                Par::Seq
            };
            triangular::matmul(
                m.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Add,
                w.as_ref().transpose(),
                BlockStructure::Rectangular,
                w.as_ref(),
                BlockStructure::Rectangular,
                -1.0,
                par,
            );
        }
        let lr = if self.q_r > 0 {
            let l = m.llt(Side::Lower).ok()?;
            let l = l.L().to_owned();
            for i in 0..self.q_r {
                logdet += 2.0 * l[(i, i)].ln();
            }
            Some(l)
        } else {
            None
        };
        // c_u and R_ZX
        let zey = Mat::from_fn(self.q_e, 1, |i, _| self.zey[i]);
        let cu_e = self.apply_g(&g, &zey);
        let rzx_e = self.apply_g(&g, &self.zex);
        let (cu_r, rzx_r) = match &lr {
            Some(l) => {
                let mut rhs_y = self.left_lambda_t(&self.zry, &t);
                let mut rhs_x = self.left_lambda_t(&self.zrx, &t);
                matmul(
                    rhs_y.as_mut(),
                    Accum::Add,
                    w.as_ref().transpose(),
                    cu_e.as_ref(),
                    -1.0,
                    Par::Seq,
                );
                matmul(
                    rhs_x.as_mut(),
                    Accum::Add,
                    w.as_ref().transpose(),
                    rzx_e.as_ref(),
                    -1.0,
                    Par::Seq,
                );
                faer::linalg::triangular_solve::solve_lower_triangular_in_place(l.as_ref(), rhs_y.as_mut(), Par::Seq);
                faer::linalg::triangular_solve::solve_lower_triangular_in_place(l.as_ref(), rhs_x.as_mut(), Par::Seq);
                (rhs_y, rhs_x)
            }
            None => (Mat::zeros(0, 1), Mat::zeros(0, self.p)),
        };
        // L_X
        let mut xtx = self.xtx.clone();
        matmul(
            xtx.as_mut(),
            Accum::Add,
            rzx_e.as_ref().transpose(),
            rzx_e.as_ref(),
            -1.0,
            Par::Seq,
        );
        matmul(
            xtx.as_mut(),
            Accum::Add,
            rzx_r.as_ref().transpose(),
            rzx_r.as_ref(),
            -1.0,
            Par::Seq,
        );
        let lx = xtx.llt(Side::Lower).ok()?.L().to_owned();
        let mut cb = self.xty.clone();
        matmul(
            cb.as_mut(),
            Accum::Add,
            rzx_e.as_ref().transpose(),
            cu_e.as_ref(),
            -1.0,
            Par::Seq,
        );
        matmul(
            cb.as_mut(),
            Accum::Add,
            rzx_r.as_ref().transpose(),
            cu_r.as_ref(),
            -1.0,
            Par::Seq,
        );
        faer::linalg::triangular_solve::solve_lower_triangular_in_place(lx.as_ref(), cb.as_mut(), Par::Seq);
        let sq = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>();
        let pwrss = self.yty
            - sq(&mut (0..cu_e.nrows()).map(|i| cu_e[(i, 0)]))
            - sq(&mut (0..cu_r.nrows()).map(|i| cu_r[(i, 0)]))
            - sq(&mut (0..self.p).map(|i| cb[(i, 0)]));
        if !(pwrss > 0.0) || !logdet.is_finite() {
            return None;
        }
        let mut beta = cb.clone();
        faer::linalg::triangular_solve::solve_upper_triangular_in_place(
            lx.as_ref().transpose(),
            beta.as_mut(),
            Par::Seq,
        );
        let n = self.n as f64;
        let dev = if reml {
            let nmp = (self.n - self.p) as f64;
            let logdet_x: f64 = (0..self.p).map(|i| 2.0 * lx[(i, i)].ln()).sum();
            logdet + logdet_x + nmp * (1.0 + (2.0 * std::f64::consts::PI * pwrss / nmp).ln())
        } else {
            logdet + n * (1.0 + (2.0 * std::f64::consts::PI * pwrss / n).ln())
        };
        Some(Eval {
            deviance: dev,
            beta: (0..self.p).map(|i| beta[(i, 0)]).collect(),
            pwrss,
            lx,
        })
    }
}

struct Eval {
    deviance: f64,
    beta: Vec<f64>,
    pwrss: f64,
    lx: Mat<f64>,
}

fn mm(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// Nelder–Mead minimisation (standard coefficients 1, 2, ½, ½), restarted from the best point
/// with a smaller simplex until a restart no longer improves the minimum by more than `ftol`.
fn nelder_mead(f: &mut dyn FnMut(&[f64]) -> f64, x0: &[f64], opts: &LmmOptions) -> (Vec<f64>, f64, usize, bool) {
    let dim = x0.len();
    let mut evals = 0usize;
    let mut eval = |x: &[f64], evals: &mut usize| {
        *evals += 1;
        let v = f(x);
        if v.is_finite() {
            v
        } else {
            f64::INFINITY
        }
    };
    let mut best = x0.to_vec();
    let mut best_f = eval(&best, &mut evals);
    let mut step = 0.5;
    let mut converged = false;
    for _restart in 0..12 {
        let mut simplex: Vec<Vec<f64>> = vec![best.clone()];
        for i in 0..dim {
            let mut v = best.clone();
            v[i] += if v[i].abs() > 1e-3 {
                step * v[i].abs().max(0.1)
            } else {
                step * 0.5
            };
            simplex.push(v);
        }
        let mut fs: Vec<f64> = simplex.iter().map(|v| eval(v, &mut evals)).collect();
        loop {
            let mut idx: Vec<usize> = (0..=dim).collect();
            idx.sort_by(|&a, &b| fs[a].total_cmp(&fs[b]));
            simplex = idx.iter().map(|&i| simplex[i].clone()).collect();
            fs = idx.iter().map(|&i| fs[i]).collect();
            let f_spread = fs[dim] - fs[0];
            let x_spread = simplex[1..]
                .iter()
                .flat_map(|v| v.iter().zip(&simplex[0]).map(|(a, b)| (a - b).abs()))
                .fold(0.0, f64::max);
            if (f_spread <= opts.ftol * (1.0 + fs[0].abs()) && x_spread <= opts.xtol) || evals >= opts.max_evals {
                break;
            }
            let centroid: Vec<f64> = (0..dim)
                .map(|j| simplex[..dim].iter().map(|v| v[j]).sum::<f64>() / dim as f64)
                .collect();
            let along = |t: f64| -> Vec<f64> {
                (0..dim)
                    .map(|j| centroid[j] + t * (simplex[dim][j] - centroid[j]))
                    .collect()
            };
            let xr = along(-1.0);
            let fr = eval(&xr, &mut evals);
            if fr < fs[0] {
                let xe = along(-2.0);
                let fe = eval(&xe, &mut evals);
                if fe < fr {
                    simplex[dim] = xe;
                    fs[dim] = fe;
                } else {
                    simplex[dim] = xr;
                    fs[dim] = fr;
                }
            } else if fr < fs[dim - 1] {
                simplex[dim] = xr;
                fs[dim] = fr;
            } else {
                let (xc, fc) = if fr < fs[dim] {
                    let xc = along(-0.5);
                    let fc = eval(&xc, &mut evals);
                    (xc, fc)
                } else {
                    let xc = along(0.5);
                    let fc = eval(&xc, &mut evals);
                    (xc, fc)
                };
                if fc < fs[dim].min(fr) {
                    simplex[dim] = xc;
                    fs[dim] = fc;
                } else {
                    for i in 1..=dim {
                        simplex[i] = (0..dim)
                            .map(|j| simplex[0][j] + 0.5 * (simplex[i][j] - simplex[0][j]))
                            .collect();
                        fs[i] = eval(&simplex[i], &mut evals);
                    }
                }
            }
        }
        let improved = best_f - fs[0];
        if fs[0] < best_f {
            best = simplex[0].clone();
            best_f = fs[0];
        }
        if evals >= opts.max_evals {
            break;
        }
        if improved <= opts.ftol * (1.0 + best_f.abs()) && _restart > 0 {
            converged = true;
            break;
        }
        step = (step * 0.2).max(1e-4);
    }
    (best, best_f, evals, converged)
}

/// The optimizer's result: θ (scaled columns), evaluations, whether it reached its tolerance,
/// its status in words, and which optimizer(s) ran.
struct Optimum {
    theta: Vec<f64>,
    evals: usize,
    reached_tolerance: bool,
    status: String,
    optimizer: String,
}

/// Minimises the deviance over θ for the scaled columns from θ₀ = identity.
fn optimize(pr: &Problem, opts: &LmmOptions) -> Optimum {
    let mut theta0 = Vec::new();
    for &(d, _, _) in &pr.dims {
        for j in 0..d {
            for i in j..d {
                theta0.push(if i == j { 1.0 } else { 0.0 });
            }
        }
    }
    let mut f = |th: &[f64]| pr.evaluate(th, opts.reml).map_or(f64::INFINITY, |e| e.deviance);
    let nelder = |f: &mut dyn FnMut(&[f64]) -> f64, x0: &[f64], max_evals: usize| {
        let o = LmmOptions { max_evals, ..*opts };
        nelder_mead(f, x0, &o)
    };
    match opts.optimizer {
        Optimizer::NelderMead => {
            let (theta, _, evals, ok) = nelder(&mut f, &theta0, opts.max_evals);
            Optimum {
                theta,
                evals,
                reached_tolerance: ok,
                status: if ok {
                    "Nelder–Mead: a restart no longer improved the deviance".into()
                } else {
                    format!("Nelder–Mead: stopped at the evaluation limit ({})", opts.max_evals)
                },
                optimizer: "nelder-mead".into(),
            }
        }
        Optimizer::Bobyqa => {
            let k = theta0.len();
            let lower = pr.lower_bounds();
            let upper = vec![f64::INFINITY; k];
            let mut cfg = bobyqa::Config::new(k);
            // at k = 1 the only legal number of interpolation points is 3 = 2k + 1
            cfg.rho_begin = BOBYQA_RHO_BEGIN;
            cfg.rho_end = opts.rho_end.min(BOBYQA_RHO_BEGIN);
            let mut evals = 0usize;
            // one BOBYQA run from x0 within what is left of the budget
            let mut run = |x0: &[f64], evals: &mut usize| -> Option<(Vec<f64>, bobyqa::Outcome)> {
                let left = opts.max_evals.saturating_sub(*evals);
                if left <= cfg.npt + 1 {
                    return None;
                }
                let mut c = cfg;
                c.max_fun = left;
                let mut x = x0.to_vec();
                let out = match bobyqa::Bobyqa::new(k, c) {
                    Ok(mut solver) => solver.minimize(&mut f, &mut x, &lower, &upper),
                    Err(_) => return None,
                };
                *evals += out.n_eval;
                Some((x, out))
            };
            let converged_class = |o: &bobyqa::Outcome| {
                matches!(o.status, bobyqa::Status::Converged | bobyqa::Status::FtolReached) && o.found_finite()
            };
            let Some((mut x, mut out)) = run(&theta0, &mut evals) else {
                return Optimum {
                    theta: theta0,
                    evals,
                    reached_tolerance: false,
                    status: "BOBYQA could not start (evaluation budget below its interpolation points)".into(),
                    optimizer: "bobyqa".into(),
                };
            };
            // lme4's restart_edge: an optimum with a diagonal entry of T at its bound 0 may be an
            // artefact of the bound (with T_jj = 0 the sign of column j below the diagonal is
            // arbitrary, and BOBYQA cannot flip it through the bound). Restart from the point
            // moved off the bound, with column j as it was and with it negated; keep the best.
            let mut restarts = 0;
            for _ in 0..MAX_EDGE_RESTARTS {
                let edge: Vec<(usize, Vec<usize>)> = pr
                    .theta_columns()
                    .into_iter()
                    .filter(|(diag, _)| x[*diag] < EDGE)
                    .collect();
                if edge.is_empty() || !converged_class(&out) {
                    break;
                }
                let mut improved = false;
                for flip in [false, true] {
                    let mut x1 = x.clone();
                    for (diag, below) in &edge {
                        x1[*diag] = BOBYQA_RHO_BEGIN;
                        if flip {
                            for &i in below {
                                x1[i] = -x1[i];
                            }
                        }
                    }
                    if let Some((x2, out2)) = run(&x1, &mut evals) {
                        restarts += 1;
                        if out2.f < out.f - 1e-9 * out.f.abs().max(1.0) && converged_class(&out2) {
                            x = x2;
                            out = out2;
                            improved = true;
                        }
                    }
                }
                if !improved {
                    break;
                }
            }
            let restarted = if restarts > 0 {
                format!(" ({restarts} restart(s) off the boundary)")
            } else {
                String::new()
            };
            if converged_class(&out) {
                return Optimum {
                    theta: x,
                    evals,
                    reached_tolerance: true,
                    status: format!("BOBYQA: {}{restarted}", out.status),
                    optimizer: "bobyqa".into(),
                };
            }
            // the fallback: Nelder–Mead from BOBYQA's best point (or the start)
            let start = if out.found_finite() { x } else { theta0 };
            let left = opts.max_evals.saturating_sub(evals).max(1);
            let (theta, _, nm_evals, nm_ok) = nelder(&mut f, &start, left);
            Optimum {
                theta,
                evals: evals + nm_evals,
                reached_tolerance: nm_ok,
                status: format!(
                    "BOBYQA: {}{restarted}; Nelder–Mead from its best point: {}",
                    out.status,
                    if nm_ok {
                        "converged"
                    } else {
                        "stopped at the evaluation limit"
                    }
                ),
                optimizer: "bobyqa, then nelder-mead".into(),
            }
        }
    }
}

/// BOBYQA's initial trust-region radius, in θ for the scaled columns (which start at 1).
const BOBYQA_RHO_BEGIN: f64 = 0.2;
/// A diagonal entry of θ (scaled columns) below this counts as on the bound for a restart.
const EDGE: f64 = 1e-3;
/// Rounds of restarts off the boundary (each: two BOBYQA runs).
const MAX_EDGE_RESTARTS: usize = 2;

/// Names of θ's components, "group: effect" on the diagonal and "group: effect_i, effect_j" below.
fn theta_names(terms: &[TermData]) -> Vec<String> {
    let mut out = Vec::new();
    for t in terms {
        let d = t.dim();
        for j in 0..d {
            for i in j..d {
                out.push(if i == j {
                    format!("{}: {}", t.name, t.effect_names[i])
                } else {
                    format!("{}: {}, {}", t.name, t.effect_names[i], t.effect_names[j])
                });
            }
        }
    }
    out
}

/// lme4's convergence checks at θ (lme4's scale) where the deviance is `f0`: `deriv12`'s central
/// differences with step 1e-4 for the gradient and Hessian (2k² evaluations), then
/// `checkConv`'s gradient, singularity and Hessian tests. Components at their bound (a diagonal
/// entry below [`SINGULAR_TOL`]) are left out of the gradient and Hessian tests: there the
/// optimum is a boundary one and the gradient need not vanish (lme4 reports such fits as
/// singular). Returns the checks and the number of evaluations.
fn check_convergence(
    pr: &Problem,
    terms: &[TermData],
    theta: &[f64],
    f0: f64,
    reml: bool,
    reached_tolerance: bool,
    status: &str,
) -> (Convergence, usize) {
    let names = theta_names(terms);
    let lower = pr.lower_bounds();
    let k = theta.len();
    let boundary_idx: Vec<usize> = (0..k).filter(|&i| lower[i] == 0.0 && theta[i] < SINGULAR_TOL).collect();
    let mut c = Convergence {
        optimizer_status: status.to_string(),
        singular: !boundary_idx.is_empty(),
        boundary: boundary_idx.iter().map(|&i| names[i].clone()).collect(),
        max_grad: f64::NAN,
        ..Default::default()
    };
    let mut evals = 0usize;
    let mut dev = |th: &[f64]| {
        evals += 1;
        pr.evaluate(&pr.rescale(th, true), reml)
            .map_or(f64::NAN, |e| e.deviance)
    };
    let h = 1e-4;
    let mut grad = vec![0.0; k];
    let mut hess = Mat::<f64>::zeros(k, k);
    let mut plus = vec![0.0; k];
    let mut minus = vec![0.0; k];
    for i in 0..k {
        let mut t = theta.to_vec();
        t[i] += h;
        plus[i] = dev(&t);
        t[i] = theta[i] - h;
        minus[i] = dev(&t);
        grad[i] = (plus[i] - minus[i]) / (2.0 * h);
        hess[(i, i)] = (plus[i] - 2.0 * f0 + minus[i]) / (h * h);
    }
    for i in 0..k {
        for j in 0..i {
            let mut t = theta.to_vec();
            let mut at = |di: f64, dj: f64| {
                t.copy_from_slice(theta);
                t[i] += di;
                t[j] += dj;
                dev(&t)
            };
            let v = (at(h, h) - at(h, -h) - at(-h, h) + at(-h, -h)) / (4.0 * h * h);
            hess[(i, j)] = v;
            hess[(j, i)] = v;
        }
    }
    c.gradient = grad.clone();
    let free: Vec<usize> = (0..k).filter(|i| !boundary_idx.contains(i)).collect();
    let mut grad_ok = true;
    if grad.iter().any(|g| !g.is_finite()) {
        grad_ok = false;
        c.messages
            .push("the deviance is undefined next to the optimum: no gradient check".into());
    } else if !free.is_empty() {
        let hf = Mat::from_fn(free.len(), free.len(), |a, b| hess[(free[a], free[b])]);
        let gf = Mat::from_fn(free.len(), 1, |a, _| grad[free[a]]);
        match hf.llt(Side::Lower) {
            Ok(l) => {
                // R's solve(chol(H), g) with chol(H) = Lᵀ upper triangular: Lᵀ⁻¹ g
                let mut sc = gf.clone();
                faer::linalg::triangular_solve::solve_upper_triangular_in_place(
                    l.L().transpose(),
                    sc.as_mut(),
                    Par::Seq,
                );
                let (mut worst, mut at) = (0.0f64, 0);
                for a in 0..free.len() {
                    let m = sc[(a, 0)].abs().min(gf[(a, 0)].abs());
                    if m > worst {
                        worst = m;
                        at = a;
                    }
                }
                c.max_grad = worst;
                if worst > GRADIENT_TOL {
                    grad_ok = false;
                    c.messages.push(format!(
                        "Model failed to converge with max|grad| = {worst:.6} (tol = {GRADIENT_TOL}, component {}: {})",
                        free[at] + 1,
                        names[free[at]]
                    ));
                }
            }
            Err(_) => {
                grad_ok = false;
                c.messages.push(
                    "unable to evaluate scaled gradient; Model failed to converge: degenerate Hessian with a non-positive eigenvalue"
                        .into(),
                );
            }
        }
    }
    if c.singular {
        c.messages
            .push(format!("boundary (singular) fit: {} at 0", c.boundary.join("; ")));
    }
    if !reached_tolerance {
        c.messages
            .push(format!("the optimizer stopped short of its tolerance ({status})"));
    }
    c.converged = reached_tolerance && grad_ok;
    (c, evals)
}

/// Fits y ~ X β + random terms (see the module doc). `x` (n, p) holds the fixed-effect columns
/// (an intercept column of ones if wanted) named `fixed_names`.
///
/// Scaling: each effect column of Z is divided by its root mean square over the rows before the
/// fit, so that θ's components are of comparable size (a slope of a predictor with values of
/// several units has a relative SD of order 1/units, an intercept of order 1); the optimizer
/// starts from T = identity for the scaled columns (lme4 starts from θ = 1 for the columns as
/// given) and the result is transformed back: θ, the covariances and the convergence checks are
/// all on lme4's scale. The model and its optimum are the same; only the path differs.
pub fn fit_lmm(
    y: &[f64],
    x: ArrayView2<f64>,
    fixed_names: &[String],
    terms: &[TermData],
    opts: &LmmOptions,
) -> Result<LmmFit> {
    if fixed_names.len() != x.ncols() {
        return Err(Error::Invalid(format!(
            "lmm: {} fixed-effect names for {} columns",
            fixed_names.len(),
            x.ncols()
        )));
    }
    for t in terms {
        if t.effect_names.len() != t.dim() {
            return Err(Error::Invalid(format!(
                "lmm: term {} has {} effect names for {} columns",
                t.name,
                t.effect_names.len(),
                t.dim()
            )));
        }
    }
    let pr = Problem::new(y, x, terms)?;
    let opt = optimize(&pr, opts);
    let mut theta_s = opt.theta;
    // canonical signs: non-negative diagonal (flipping a column of T leaves T Tᵀ unchanged;
    // only Nelder–Mead, which runs unbounded, can leave a negative one)
    let mut k0 = 0;
    for &(d, _, _) in &pr.dims {
        for j in 0..d {
            let sign = if theta_s[k0] < 0.0 { -1.0 } else { 1.0 };
            for _ in j..d {
                theta_s[k0] *= sign;
                k0 += 1;
            }
        }
    }
    debug_assert_eq!(k0, pr.n_theta());
    let e = pr.evaluate(&theta_s, opts.reml).ok_or_else(|| {
        Error::Invalid("lmm: the deviance is undefined at the optimum (singular fixed-effects design?)".into())
    })?;
    let theta = pr.rescale(&theta_s, false);
    let (convergence, n_evals_checks) = if opts.check_convergence {
        check_convergence(
            &pr,
            terms,
            &theta,
            e.deviance,
            opts.reml,
            opt.reached_tolerance,
            &opt.status,
        )
    } else {
        let mut c = Convergence {
            converged: opt.reached_tolerance,
            optimizer_status: opt.status.clone(),
            max_grad: f64::NAN,
            ..Default::default()
        };
        if !opt.reached_tolerance {
            c.messages
                .push(format!("the optimizer stopped short of its tolerance ({})", opt.status));
        }
        (c, 0)
    };
    let n = pr.n as f64;
    let sigma2 = if opts.reml {
        e.pwrss / (pr.n - pr.p) as f64
    } else {
        e.pwrss / n
    };
    // Cov(β) = σ² (L_X L_Xᵀ)⁻¹
    let mut inv = Mat::<f64>::identity(pr.p, pr.p);
    faer::linalg::triangular_solve::solve_lower_triangular_in_place(e.lx.as_ref(), inv.as_mut(), Par::Seq);
    let se: Vec<f64> = (0..pr.p)
        .map(|j| (sigma2 * (0..pr.p).map(|i| inv[(i, j)] * inv[(i, j)]).sum::<f64>()).sqrt())
        .collect();
    let t_stat = e.beta.iter().zip(&se).map(|(b, s)| b / s).collect();
    let tf = pr.t_factors(&theta);
    let covariances = terms
        .iter()
        .zip(&tf)
        .map(|(term, t)| {
            let d = term.dim();
            let c = Array2::from_shape_fn((d, d), |(i, j)| {
                sigma2 * (0..d).map(|k| t[(i, k)] * t[(j, k)]).sum::<f64>()
            });
            (term.name.clone(), term.effect_names.clone(), c)
        })
        .collect();
    let n_params = pr.p + theta.len() + 1;
    let log_likelihood = -e.deviance / 2.0;
    Ok(LmmFit {
        fixed_names: fixed_names.to_vec(),
        beta: e.beta,
        se,
        t: t_stat,
        theta,
        sigma2,
        covariances,
        log_likelihood,
        deviance: e.deviance,
        reml: opts.reml,
        n_obs: pr.n,
        n_levels: terms.iter().map(|t| (t.name.clone(), t.n_levels)).collect(),
        n_params,
        aic: e.deviance + 2.0 * n_params as f64,
        bic: e.deviance + (n_params as f64) * n.ln(),
        n_evals: opt.evals,
        n_evals_checks,
        optimizer: opt.optimizer,
        converged: convergence.converged,
        convergence,
    })
}

/// Likelihood-ratio test of nested ML fits: (Δ log L, χ², df, p).
pub fn likelihood_ratio_test(smaller: &LmmFit, larger: &LmmFit) -> Result<(f64, f64, usize, f64)> {
    if smaller.reml || larger.reml {
        return Err(Error::Invalid(
            "likelihood-ratio test: refit both models by ML (REML likelihoods of different fixed effects are not comparable)"
                .into(),
        ));
    }
    if larger.n_params <= smaller.n_params || larger.n_obs != smaller.n_obs {
        return Err(Error::Invalid(format!(
            "likelihood-ratio test: expected nested models on the same rows (parameters {} < {}, rows {} = {})",
            smaller.n_params, larger.n_params, smaller.n_obs, larger.n_obs
        )));
    }
    let dll = larger.log_likelihood - smaller.log_likelihood;
    let chi2 = (2.0 * dll).max(0.0);
    let df = larger.n_params - smaller.n_params;
    Ok((dll, chi2, df, chi2_sf(chi2, df as f64)))
}

pub use crate::stats::special::chi2_sf;

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    #[test]
    fn chi_square_tail_matches_closed_forms() {
        // df 2: exp(−x/2); df 1: erfc(sqrt(x/2)) — at x = 3.841458820694124, p = 0.05
        assert_abs_diff_eq!(chi2_sf(3.0, 2.0), (-1.5f64).exp(), epsilon = 1e-13);
        assert_abs_diff_eq!(chi2_sf(3.841_458_820_694_124, 1.0), 0.05, epsilon = 1e-12);
        assert_abs_diff_eq!(chi2_sf(0.5, 4.0), (-0.25f64).exp() * (1.0 + 0.25), epsilon = 1e-13);
        assert_eq!(chi2_sf(0.0, 3.0), 1.0);
    }

    #[test]
    fn a_balanced_one_way_model_matches_the_anova_closed_form() {
        // balanced one-way random intercepts, REML: σ² = MSW, τ² = (MSB − MSW)/m
        let (groups, m) = (6usize, 5usize);
        let mut rng = crate::stats::SplitMix64::new(3);
        let mut y = Vec::new();
        let mut level = Vec::new();
        for g in 0..groups {
            let b = 2.0 * rng.normal();
            for _ in 0..m {
                y.push(10.0 + b + rng.normal());
                level.push(g);
            }
        }
        let n = y.len();
        let x = Array2::ones((n, 1));
        let term = TermData {
            name: "g".into(),
            effect_names: vec!["(Intercept)".into()],
            level: level.clone(),
            n_levels: groups,
            z: Array2::ones((n, 1)),
        };
        let fit = fit_lmm(
            &y,
            x.view(),
            &["(Intercept)".into()],
            &[term],
            &LmmOptions {
                reml: true,
                ..Default::default()
            },
        )
        .unwrap();
        let grand = y.iter().sum::<f64>() / n as f64;
        let means: Vec<f64> = (0..groups)
            .map(|g| y[g * m..(g + 1) * m].iter().sum::<f64>() / m as f64)
            .collect();
        let ssb: f64 = means.iter().map(|mu| m as f64 * (mu - grand).powi(2)).sum();
        let ssw: f64 = (0..n).map(|i| (y[i] - means[level[i]]).powi(2)).sum();
        let msb = ssb / (groups - 1) as f64;
        let msw = ssw / (n - groups) as f64;
        assert!(msb > msw, "the closed form needs a positive between-group variance");
        assert_abs_diff_eq!(fit.sigma2, msw, epsilon = 1e-7 * msw);
        let tau2 = (msb - msw) / m as f64;
        assert_abs_diff_eq!(fit.covariances[0].2[[0, 0]], tau2, epsilon = 1e-6 * tau2);
        assert_abs_diff_eq!(fit.beta[0], grand, epsilon = 1e-9);
        // SE of the grand mean: sqrt(MSB / n)
        assert_abs_diff_eq!(fit.se[0], (msb / n as f64).sqrt(), epsilon = 1e-6);
        assert!(fit.converged);
    }

    /// Two crossed terms with a slope each: `(1 + x | g)` with `ng` levels and `(1 + x | h)`.
    fn crossed_slopes(ng: usize, nh: usize, seed: u64, slope_sd: f64) -> (Vec<f64>, Array2<f64>, Vec<TermData>) {
        let mut rng = crate::stats::SplitMix64::new(seed);
        let bg: Vec<(f64, f64)> = (0..ng).map(|_| (0.5 * rng.normal(), slope_sd * rng.normal())).collect();
        let bh: Vec<(f64, f64)> = (0..nh)
            .map(|_| (0.3 * rng.normal(), 0.5 * slope_sd * rng.normal()))
            .collect();
        let (mut y, mut xs, mut lg, mut lh) = (vec![], vec![], vec![], vec![]);
        for g in 0..ng {
            for h in 0..nh {
                if rng.next_f64() < 0.4 {
                    continue;
                }
                let x = 4.0 + 2.0 * rng.normal();
                y.push(1.0 + 0.3 * x + bg[g].0 + bg[g].1 * x + bh[h].0 + bh[h].1 * x + 0.7 * rng.normal());
                xs.push(x);
                lg.push(g);
                lh.push(h);
            }
        }
        let n = y.len();
        let x = Array2::from_shape_fn((n, 2), |(i, j)| if j == 0 { 1.0 } else { xs[i] });
        let z = Array2::from_shape_fn((n, 2), |(i, j)| if j == 0 { 1.0 } else { xs[i] });
        let effects = vec!["(Intercept)".to_string(), "x".to_string()];
        let terms = vec![
            TermData {
                name: "g".into(),
                effect_names: effects.clone(),
                level: lg,
                n_levels: ng,
                z: z.clone(),
            },
            TermData {
                name: "h".into(),
                effect_names: effects,
                level: lh,
                n_levels: nh,
                z,
            },
        ];
        (y, x, terms)
    }

    /// The ML deviance from dense matrices, straight from the definition: the penalised least
    /// squares problem ‖y − Xβ − ZΛu‖² + ‖u‖² solved as one normal-equation system, and
    /// log|ΛᵀZᵀZΛ + I| from its Cholesky factor.
    fn dense_deviance(y: &[f64], x: &Array2<f64>, terms: &[TermData], theta: &[f64]) -> f64 {
        let n = y.len();
        let p = x.ncols();
        let q: usize = terms.iter().map(|t| t.dim() * t.n_levels).sum();
        // ZΛ (n × q)
        let mut zl = Mat::<f64>::zeros(n, q);
        let (mut off, mut k0) = (0, 0);
        for t in terms {
            let d = t.dim();
            let mut tk = vec![vec![0.0; d]; d];
            for j in 0..d {
                for i in j..d {
                    tk[i][j] = theta[k0];
                    k0 += 1;
                }
            }
            for r in 0..n {
                for c in 0..d {
                    // (z_r T)_c = Σ_a z_ra T_ac
                    zl[(r, off + t.level[r] * d + c)] = (0..d).map(|a| t.z[[r, a]] * tk[a][c]).sum();
                }
            }
            off += d * t.n_levels;
        }
        let xm = Mat::from_fn(n, p, |i, j| x[[i, j]]);
        let a = Mat::from_fn(n, q + p, |i, j| if j < q { zl[(i, j)] } else { xm[(i, j - q)] });
        let mut lhs = mm(a.as_ref().transpose(), a.as_ref());
        for i in 0..q {
            lhs[(i, i)] += 1.0;
        }
        let ym = Mat::from_fn(n, 1, |i, _| y[i]);
        let rhs = mm(a.as_ref().transpose(), ym.as_ref());
        use faer::prelude::Solve;
        let sol = lhs.llt(Side::Lower).unwrap().solve(rhs.as_ref());
        let fitted = mm(a.as_ref(), sol.as_ref());
        let pwrss: f64 = (0..n).map(|i| (y[i] - fitted[(i, 0)]).powi(2)).sum::<f64>()
            + (0..q).map(|i| sol[(i, 0)].powi(2)).sum::<f64>();
        let mut zz = mm(zl.as_ref().transpose(), zl.as_ref());
        for i in 0..q {
            zz[(i, i)] += 1.0;
        }
        let l = zz.llt(Side::Lower).unwrap();
        let logdet: f64 = (0..q).map(|i| 2.0 * l.L()[(i, i)].ln()).sum();
        logdet + n as f64 * (1.0 + (2.0 * std::f64::consts::PI * pwrss / n as f64).ln())
    }

    #[test]
    fn the_block_eliminated_deviance_equals_the_dense_definition() {
        // the item-like term h (2 effects × 40 levels) is eliminated block by block
        let (y, x, terms) = crossed_slopes(12, 40, 5, 0.2);
        let pr = Problem::new(&y, x.view(), &terms).unwrap();
        assert_eq!((pr.elim, pr.de, pr.q_e, pr.q_r), (1, 2, 80, 24));
        let mut rng = crate::stats::SplitMix64::new(9);
        for _ in 0..4 {
            let theta: Vec<f64> = vec![
                0.2 + rng.next_f64(),
                rng.normal() * 0.1,
                0.05 + 0.2 * rng.next_f64(),
                0.2 + rng.next_f64(),
                rng.normal() * 0.1,
                0.05 + 0.2 * rng.next_f64(),
            ];
            let ours = pr.evaluate(&pr.rescale(&theta, true), false).unwrap().deviance;
            let dense = dense_deviance(&y, &x, &terms, &theta);
            assert_abs_diff_eq!(ours, dense, epsilon = 1e-9 * dense.abs());
        }
    }

    #[test]
    fn bobyqa_reaches_nelder_meads_optimum_in_far_fewer_evaluations_and_passes_lme4s_checks() {
        let (y, x, terms) = crossed_slopes(30, 60, 11, 0.15);
        let names = ["(Intercept)".to_string(), "x".to_string()];
        let fit = fit_lmm(&y, x.view(), &names, &terms, &LmmOptions::default()).unwrap();
        let nm = fit_lmm(
            &y,
            x.view(),
            &names,
            &terms,
            &LmmOptions {
                optimizer: Optimizer::NelderMead,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(fit.optimizer, "bobyqa");
        assert!(fit.converged, "{:?}", fit.convergence);
        assert!(fit.convergence.max_grad < GRADIENT_TOL && !fit.convergence.singular);
        assert_eq!(fit.convergence.gradient.len(), 6);
        assert_eq!(fit.n_evals_checks, 2 * 6 * 6);
        // the same optimum (Nelder–Mead's own tolerance is on the deviance's spread)
        assert!(
            fit.deviance <= nm.deviance + 1e-7,
            "bobyqa {} vs nelder-mead {}",
            fit.deviance,
            nm.deviance
        );
        assert_abs_diff_eq!(fit.deviance, nm.deviance, epsilon = 1e-6);
        assert!(
            fit.n_evals * 3 < nm.n_evals,
            "bobyqa {} evaluations, nelder-mead {}",
            fit.n_evals,
            nm.n_evals
        );
    }

    #[test]
    fn a_zero_slope_variance_is_a_singular_fit_on_the_boundary_not_a_failure() {
        let (y, x, terms) = crossed_slopes(30, 60, 13, 0.0);
        let names = ["(Intercept)".to_string(), "x".to_string()];
        // with no slope variance in either term, both slopes' diagonal θ go to (or near) 0
        let fit = fit_lmm(&y, x.view(), &names, &terms, &LmmOptions::default()).unwrap();
        let c = &fit.convergence;
        assert!(c.singular, "{c:?} θ {:?}", fit.theta);
        assert!(c.boundary.iter().all(|b| b.ends_with(": x")), "{:?}", c.boundary);
        assert!(
            c.messages.iter().any(|m| m.starts_with("boundary (singular) fit")),
            "{:?}",
            c.messages
        );
        assert!(fit.converged, "a boundary optimum is an optimum: {c:?}");
    }
}
