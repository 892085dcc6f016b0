//! Linear mixed models fitted by maximum likelihood (or REML) as lme4's `lmer` does: the profiled
//! deviance as a function of the relative covariance parameters θ, minimised by Nelder–Mead, with
//! fixed effects and the residual variance profiled out (Bates, Mächler, Bolker & Walker 2015,
//! "Fitting linear mixed-effects models using lme4", J. Stat. Softw. 67(1), §3).
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
//! scalar term with the most levels (e.g. `(1 | item)`) has a diagonal block in ZᵀZ; it is
//! eliminated first (its Cholesky factor is diagonal) and only the Schur complement of the other
//! terms, of size Σ_{k≠E} d_k·levels_k, is factored densely. With crossed subjects (hundreds) and
//! items (thousands) an evaluation is one (q_R × q_E)·(q_E × q_R) product and a q_R Cholesky.
//!
//! Standard errors: Cov(β̂) = σ̂² (L_X L_Xᵀ)⁻¹ (lme4's `vcov`, conditional on θ̂).

use faer::linalg::matmul::matmul;
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

/// Options of [`fit_lmm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LmmOptions {
    /// REML instead of ML (lme4's default is REML; likelihood-ratio tests of fixed effects need ML).
    pub reml: bool,
    /// Largest number of deviance evaluations.
    pub max_evals: usize,
    /// Convergence: the simplex's spread in deviance below this, and in θ below `xtol`.
    pub ftol: f64,
    pub xtol: f64,
}

impl Default for LmmOptions {
    fn default() -> Self {
        LmmOptions {
            reml: false,
            max_evals: 50_000,
            ftol: 1e-12,
            xtol: 1e-9,
        }
    }
}

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
    /// Relative covariance parameters (lme4 order), diagonal entries ≥ 0.
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
    pub n_evals: usize,
    pub converged: bool,
}

/// Sufficient statistics, split into the eliminated diagonal term E and the rest R.
struct Problem {
    n: usize,
    p: usize,
    /// index of the eliminated term in `dims` (None: no scalar term)
    elim: Option<usize>,
    /// per term: (d, n_levels, offset in R space — unused for E)
    dims: Vec<(usize, usize, usize)>,
    q_e: usize,
    q_r: usize,
    d_e: Vec<f64>, // (q_e)
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
            .filter(|&k| terms[k].dim() == 1)
            .max_by_key(|&k| (terms[k].n_levels, usize::MAX - k));
        let mut dims = Vec::new();
        let mut q_r = 0;
        for (k, t) in terms.iter().enumerate() {
            dims.push((t.dim(), t.n_levels, q_r));
            if Some(k) != elim {
                q_r += t.dim() * t.n_levels;
            }
        }
        let q_e = elim.map_or(0, |k| terms[k].n_levels);
        let mut pr = Problem {
            n,
            p,
            elim,
            dims,
            q_e,
            q_r,
            d_e: vec![0.0; q_e],
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
        for i in 0..n {
            rcols.clear();
            for (k, t) in terms.iter().enumerate() {
                if Some(k) == elim {
                    continue;
                }
                let (d, _, off) = pr.dims[k];
                for c in 0..d {
                    rcols.push((off + t.level[i] * d + c, t.z[[i, c]]));
                }
            }
            let xi = x.row(i);
            let yi = y[i];
            if let Some(ke) = elim {
                let l = terms[ke].level[i];
                let ze = terms[ke].z[[i, 0]];
                pr.d_e[l] += ze * ze;
                pr.zey[l] += ze * yi;
                for j in 0..p {
                    pr.zex[(l, j)] += ze * xi[j];
                }
                for &(r, v) in &rcols {
                    pr.b[(l, r)] += ze * v;
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
            if Some(k) == self.elim {
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
            if Some(k) == self.elim {
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

    /// Everything at θ: deviance (ML or REML), β̂, r², L_X.
    fn evaluate(&self, theta: &[f64], reml: bool) -> Option<Eval> {
        let t = self.t_factors(theta);
        let te = self.elim.map_or(0.0, |k| t[k][(0, 0)]);
        // eliminated block: A_E = te² D + 1 (diagonal); scaled rows a_i^{-1/2}
        let inv_sqrt_a: Vec<f64> = self.d_e.iter().map(|&d| 1.0 / (te * te * d + 1.0).sqrt()).collect();
        let mut logdet: f64 = self.d_e.iter().map(|&d| (te * te * d + 1.0).ln()).sum();
        // W = A^{-1/2} te B Λ_R (q_e × q_r)
        let mut w = self.right_lambda(&self.b, &t);
        for i in 0..self.q_e {
            let f = te * inv_sqrt_a[i];
            for j in 0..self.q_r {
                w[(i, j)] *= f;
            }
        }
        // M = Λ_Rᵀ S Λ_R + I − WᵀW
        let sl = self.right_lambda(&self.s, &t);
        let mut m = self.left_lambda_t(&sl, &t);
        for i in 0..self.q_r {
            m[(i, i)] += 1.0;
        }
        if self.q_e > 0 && self.q_r > 0 {
            matmul(
                m.as_mut(),
                Accum::Add,
                w.as_ref().transpose(),
                w.as_ref(),
                -1.0,
                Par::Seq,
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
        let cu_e: Vec<f64> = (0..self.q_e).map(|i| te * inv_sqrt_a[i] * self.zey[i]).collect();
        let rzx_e = Mat::from_fn(self.q_e, self.p, |i, j| te * inv_sqrt_a[i] * self.zex[(i, j)]);
        let (cu_r, rzx_r) = match &lr {
            Some(l) => {
                let mut rhs_y = self.left_lambda_t(&self.zry, &t);
                let mut rhs_x = self.left_lambda_t(&self.zrx, &t);
                if self.q_e > 0 {
                    let cu_e_m = Mat::from_fn(self.q_e, 1, |i, _| cu_e[i]);
                    matmul(
                        rhs_y.as_mut(),
                        Accum::Add,
                        w.as_ref().transpose(),
                        cu_e_m.as_ref(),
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
                }
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
        let cu_e_m = Mat::from_fn(self.q_e, 1, |i, _| cu_e[i]);
        matmul(
            cb.as_mut(),
            Accum::Add,
            rzx_e.as_ref().transpose(),
            cu_e_m.as_ref(),
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
            - sq(&mut cu_e.iter().copied())
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

/// Fits y ~ X β + random terms (see the module doc). `x` (n, p) holds the fixed-effect columns
/// (an intercept column of ones if wanted) named `fixed_names`.
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
    if terms.is_empty() {
        return Err(Error::Invalid("lmm: expected at least one random-effect term".into()));
    }
    let pr = Problem::new(y, x, terms)?;
    // initial θ: identity T (lme4's default start)
    let mut theta0 = Vec::new();
    for &(d, _, _) in &pr.dims {
        for j in 0..d {
            for i in j..d {
                theta0.push(if i == j { 1.0 } else { 0.0 });
            }
        }
    }
    let mut f = |th: &[f64]| pr.evaluate(th, opts.reml).map_or(f64::INFINITY, |e| e.deviance);
    let (mut theta, _, n_evals, converged) = nelder_mead(&mut f, &theta0, opts);
    // canonical signs: non-negative diagonal (flipping a column of T leaves T Tᵀ unchanged)
    let mut k0 = 0;
    for &(d, _, _) in &pr.dims {
        for j in 0..d {
            let diag = k0;
            let sign = if theta[diag] < 0.0 { -1.0 } else { 1.0 };
            for _ in j..d {
                theta[k0] *= sign;
                k0 += 1;
            }
        }
    }
    let e = pr.evaluate(&theta, opts.reml).ok_or_else(|| {
        Error::Invalid("lmm: the deviance is undefined at the optimum (singular fixed-effects design?)".into())
    })?;
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
        n_evals,
        converged,
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
}
