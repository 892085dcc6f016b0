//! Voxelwise encoding over many stories (METHOD.md §5 at the paper's scale): each story's design
//! and responses z-scored within the story and concatenated; outer folds leave whole stories out;
//! each voxel's penalty is chosen by an inner CV that also leaves stories out of the outer
//! training set; r per voxel on the held-out stories.
//!
//! Input: a design X (n_rows, n_features), the stories' rows concatenated in [`StoryPlan`] order,
//! and per subject responses Y (n_rows, n_voxels) in the same row order, both z-scored per story
//! ([`zscore_per_story`]). Output per (subject, voxel): held-out r pooled over every held-out row,
//! r and α per outer fold, R² from penalties chosen by R², and a p-value for the pooled r.
//!
//! Why this shape. The decompositions depend on the design and the fold plan only, never on a
//! subject: [`factorize_fold`] decomposes one outer fold's inner training sets and its full
//! training set once ([`FoldFactors`]), and [`fit_fold_chunk`] applies them to any chunk of voxel
//! columns of any subject who heard the same stories. [`story_cv`] runs the folds one at a time
//! (one fold's factors in memory) and streams each subject's voxels in chunks, keeping only
//! per-voxel sums between folds ([`VoxelSums`]): memory is one fold's factors plus one chunk, not
//! subjects × voxels × TRs.
//!
//! Significance: each null sample circularly shifts every story's responses against its design
//! (shift uniform in [T/10, T − T/10] for a story of T rows, one draw per story and sample), which
//! keeps the responses' autocorrelation and breaks their alignment with the stimulus, and *refits*
//! every outer fold on the shifted responses (with the penalties the fold chose for the voxel, from
//! the shared decompositions) before computing the same pooled r that is reported. The refit
//! matters: a held-out story's responses train the other folds' models, so the folds' held-out
//! products are positively correlated under the null and the pooled r varies more than the r of
//! two independent series. Shifting only the held-out predictions ignores that and is
//! anti-conservative (measured: 8–9% of null voxels under p < 0.05; `tests/it/encoding_stories.rs`).
//! With thousands of voxels a permutation p cannot go below 1/(n_shifts + 1), so the reported p is
//! parametric: the Fisher z of the null samples is fitted by a normal (mean and sd per voxel) and p
//! is its upper tail at the observed z (one-sided: H1 is r > 0). The empirical p is reported
//! beside it. Under [`ScorePrecision::Fast`] (the default) the null refits are float32 products:
//! their sums enter only that normal fit, and agree with float64's to 1e-5 of their scale. The
//! penalty search is not repeated per null sample (a documented approximation).
//!
//! Wide designs (more features than training rows: the kernel form, as the paper's 16,384 SAE
//! features against ~8,000 training TRs) share one more thing: every decomposition needs only
//! blocks of the whole design's kernel G = X Xᵀ — the eigenvectors U of G[T, T] for a training set
//! T, and A = X_S Xᵀ U = G[S, T] U for its test rows S. [`DesignKernel`] computes G once per design
//! (n² p) and [`factorize_fold_from_kernel`] cuts every fold's decompositions from it, instead of
//! forming X_T X_Tᵀ, the basis X_Tᵀ U and X_S · basis per decomposition (~2 |T|² p + |S| |T| p
//! each: 17× the operations of G over the 20 decompositions of a 4 × 4 plan). Same arithmetic up to
//! rounding: α identical and r to 1e-10 against [`factorize_fold`] (`tests/it/encoding_stories.rs`).
//!
//! May import: `stats`, `error` and the rest of `encoding`.

use faer::Mat;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;
use serde::Serialize;

use super::folds::{leave_groups_out_folds, Fold};
use super::ridge::{
    best_alpha, check_alphas, check_finite, eigh_above_roundoff, factorize, gains, mm, scale_rows, score, select_rows,
    to_mat, AlphaCriterion, RidgeMethod, ScorePrecision,
};
use crate::stats::{chi2_sf, zscore_columns, SplitMix64};
use crate::{Error, Result};

/// The stories of an analysis, in row order, and the folds over them.
///
/// Outer folds: story number `s` (in the given order) is tested by outer fold `s % n_outer`.
/// Inner folds of an outer fold: its training stories, in order, dealt round-robin to `n_inner`
/// folds ([`leave_groups_out_folds`] over the training rows with the story as the group), so
/// `cortexflow ridge --groups` on the outer training rows makes the same inner folds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoryPlan {
    /// Story ids in row order.
    pub stories: Vec<String>,
    /// Row offsets: story `s` has rows `offsets[s]..offsets[s + 1]`.
    pub offsets: Vec<usize>,
    /// The outer fold that tests each story.
    pub fold_of_story: Vec<usize>,
    /// Number of inner folds (within each outer training set).
    pub n_inner: usize,
    /// Row-level outer folds (indices into the concatenated rows).
    #[serde(skip)]
    pub outer: Vec<Fold>,
    /// Per outer fold: the inner folds, as indices into that fold's (sorted) training rows.
    #[serde(skip)]
    pub inner: Vec<Vec<Fold>>,
}

impl StoryPlan {
    /// A plan for `stories` (id, number of rows), in that order.
    ///
    /// Errors on fewer than two outer folds, fewer stories than outer folds, an outer training set
    /// with fewer stories than `n_inner`, a story without rows, or a repeated story id.
    pub fn new(stories: &[(String, usize)], n_outer: usize, n_inner: usize) -> Result<StoryPlan> {
        let mut seen = std::collections::BTreeSet::new();
        for (id, n) in stories {
            if !seen.insert(id.as_str()) {
                return Err(Error::Invalid(format!("story plan: story {id:?} is listed twice")));
            }
            if *n < 2 {
                return Err(Error::Invalid(format!(
                    "story plan: story {id:?} has {n} rows; at least 2 are needed"
                )));
            }
        }
        if n_inner < 2 {
            return Err(Error::Invalid(format!(
                "story plan: expected at least 2 inner folds, found {n_inner}"
            )));
        }
        let mut offsets = vec![0];
        for (_, n) in stories {
            offsets.push(offsets.last().unwrap() + n);
        }
        let group: Vec<usize> = (0..stories.len())
            .flat_map(|s| std::iter::repeat_n(s, stories[s].1))
            .collect();
        let outer = leave_groups_out_folds(&group, n_outer).map_err(|e| {
            Error::Invalid(format!(
                "story plan: {} stories, {n_outer} outer folds: {e}",
                stories.len()
            ))
        })?;
        let mut inner = Vec::with_capacity(outer.len());
        for (k, fold) in outer.iter().enumerate() {
            let train_groups: Vec<usize> = fold.train.iter().map(|&i| group[i]).collect();
            let n_train_stories = {
                let mut g = train_groups.clone();
                g.dedup();
                g.len()
            };
            inner.push(leave_groups_out_folds(&train_groups, n_inner).map_err(|_| {
                Error::Invalid(format!(
                    "story plan: outer fold {k} trains on {n_train_stories} stories, too few for {n_inner} inner folds \
                     (use fewer inner folds or more stories)"
                ))
            })?);
        }
        Ok(StoryPlan {
            stories: stories.iter().map(|(id, _)| id.clone()).collect(),
            offsets,
            fold_of_story: (0..stories.len()).map(|s| s % n_outer).collect(),
            n_inner,
            outer,
            inner,
        })
    }

    pub fn n_rows(&self) -> usize {
        *self.offsets.last().unwrap()
    }

    pub fn n_outer(&self) -> usize {
        self.outer.len()
    }

    /// Rows of story `s`.
    pub fn rows(&self, s: usize) -> std::ops::Range<usize> {
        self.offsets[s]..self.offsets[s + 1]
    }

    /// The stories outer fold `k` tests, in row order.
    pub fn test_stories(&self, k: usize) -> Vec<usize> {
        (0..self.stories.len())
            .filter(|&s| self.fold_of_story[s] == k)
            .collect()
    }

    /// One line that identifies the plan (stories, their lengths, fold counts): the key under
    /// which decompositions made for it can be reused.
    pub fn identity(&self) -> String {
        serde_json::to_string(self).expect("a story plan serializes")
    }
}

/// Z-scores the columns of each story's rows in place (population sd); a column constant within
/// a story becomes 0 there.
pub fn zscore_per_story(mut x: ArrayViewMut2<f64>, plan: &StoryPlan) -> Result<()> {
    if x.nrows() != plan.n_rows() {
        return Err(Error::Invalid(format!(
            "z-score per story: expected {} rows ({} stories), found {}",
            plan.n_rows(),
            plan.stories.len(),
            x.nrows()
        )));
    }
    for s in 0..plan.stories.len() {
        zscore_columns(x.slice_mut(ndarray::s![plan.rows(s), ..]));
    }
    Ok(())
}

/// One decomposition kept for predictions: the spectrum, U (n_train, r) and the held-out rows
/// projected on the basis, A = X_test · basis (n_test, r). The basis itself (n_features, r) is
/// not kept.
#[derive(Debug, Clone)]
struct Held {
    method: RidgeMethod,
    spectrum: Vec<f64>,
    u: Mat<f64>,
    a: Mat<f64>,
}

impl Held {
    /// The kernel-form decomposition of training rows `train` with test rows `test`, both global
    /// row indices of the design whose kernel is `g`, from blocks of `g` ([`DesignKernel`]).
    fn from_kernel(g: &DesignKernel, train: &[usize], test: &[usize]) -> Result<Held> {
        let k_tt = Mat::from_fn(train.len(), train.len(), |i, j| g.g[(train[i], train[j])]);
        let (spectrum, u) = eigh_above_roundoff(k_tt.as_ref(), train.len(), g.n_features, "kernel")?;
        let k_st = Mat::from_fn(test.len(), train.len(), |i, j| g.g[(test[i], train[j])]);
        let a = mm(k_st.as_ref(), u.as_ref());
        Ok(Held {
            method: RidgeMethod::Kernel,
            spectrum,
            u,
            a,
        })
    }

    fn new(x_train: &Mat<f64>, x_test: &Mat<f64>, method: RidgeMethod) -> Result<Held> {
        let f = factorize(x_train.as_ref(), method)?;
        let a = mm(x_test.as_ref(), f.basis.as_ref());
        Ok(Held {
            method: f.method,
            spectrum: f.spectrum,
            u: f.u,
            a,
        })
    }

    fn gains(&self, alpha: f64) -> Vec<f64> {
        gains(self.method, &self.spectrum, alpha)
    }

    fn bytes(&self) -> usize {
        8 * (self.spectrum.len() + self.u.nrows() * self.u.ncols() + self.a.nrows() * self.a.ncols())
    }
}

/// The decompositions of one outer fold of one design: its inner training sets' and its whole
/// training set's. They depend on the design and the plan only, so one [`FoldFactors`] serves
/// every subject who heard the plan's stories.
#[derive(Debug, Clone)]
pub struct FoldFactors {
    pub fold: usize,
    inner: Vec<Held>,
    full: Held,
}

impl FoldFactors {
    /// Memory held (bytes).
    pub fn bytes(&self) -> usize {
        self.full.bytes() + self.inner.iter().map(Held::bytes).sum::<usize>()
    }

    /// Number of decompositions it holds (inner folds + 1).
    pub fn n_decompositions(&self) -> usize {
        self.inner.len() + 1
    }

    /// The arrays that make it up, inner folds first and the whole training set last, for a
    /// cache on disk: (method, spectrum (rank,), U (n_train, rank), A (n_test, rank)).
    pub fn to_parts(&self) -> Vec<FactorParts> {
        self.inner
            .iter()
            .chain([&self.full])
            .map(|h| FactorParts {
                kernel: h.method == RidgeMethod::Kernel,
                spectrum: h.spectrum.clone(),
                u: mat_to_array(&h.u),
                a: mat_to_array(&h.a),
            })
            .collect()
    }

    /// Rebuilds outer fold `fold` of `plan` from [`FoldFactors::to_parts`], checking every shape
    /// against the plan (a cache made for another plan is refused).
    pub fn from_parts(plan: &StoryPlan, fold: usize, parts: Vec<FactorParts>) -> Result<FoldFactors> {
        let n_inner = plan.inner.get(fold).map(Vec::len).ok_or_else(|| {
            Error::Invalid(format!(
                "cached factors: fold {fold} is not in a plan of {} folds",
                plan.n_outer()
            ))
        })?;
        if parts.len() != n_inner + 1 {
            return Err(Error::Invalid(format!(
                "cached factors of fold {fold}: {} decompositions, the plan needs {}",
                parts.len(),
                n_inner + 1
            )));
        }
        let mut held = Vec::with_capacity(parts.len());
        for (i, p) in parts.into_iter().enumerate() {
            let (n_train, n_test) = if i < n_inner {
                let f = &plan.inner[fold][i];
                (f.train.len(), f.test.len())
            } else {
                (plan.outer[fold].train.len(), plan.outer[fold].test.len())
            };
            let r = p.spectrum.len();
            if p.u.dim() != (n_train, r) || p.a.dim() != (n_test, r) {
                return Err(Error::Invalid(format!(
                    "cached factors of fold {fold}, decomposition {i}: U {:?} and A {:?}, expected ({n_train}, {r}) and \
                     ({n_test}, {r})",
                    p.u.dim(),
                    p.a.dim()
                )));
            }
            held.push(Held {
                method: if p.kernel {
                    RidgeMethod::Kernel
                } else {
                    RidgeMethod::Gram
                },
                spectrum: p.spectrum,
                u: to_mat(p.u.view()),
                a: to_mat(p.a.view()),
            });
        }
        let full = held.pop().expect("n_inner + 1 parts");
        Ok(FoldFactors {
            fold,
            inner: held,
            full,
        })
    }
}

/// One decomposition of [`FoldFactors`] as plain arrays (see [`FoldFactors::to_parts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FactorParts {
    /// Kernel form (spectrum = eigenvalues of X Xᵀ) rather than SVD form (singular values).
    pub kernel: bool,
    pub spectrum: Vec<f64>,
    pub u: Array2<f64>,
    pub a: Array2<f64>,
}

/// Errs unless `what` (the design or its kernel) has the plan's rows.
fn check_plan_rows(n: usize, plan: &StoryPlan, what: &str) -> Result<()> {
    if n != plan.n_rows() {
        return Err(Error::Invalid(format!(
            "story CV: {what} has {n} rows but the plan's {} stories have {}",
            plan.stories.len(),
            plan.n_rows()
        )));
    }
    Ok(())
}

/// Outer fold `k`'s decompositions, one per inner fold (`decompose(Some(i))`) and one of the
/// whole training set (`decompose(None)`), in parallel.
fn fold_factors(
    plan: &StoryPlan,
    k: usize,
    decompose: impl Fn(Option<usize>) -> Result<Held> + Sync,
) -> Result<FoldFactors> {
    let jobs: Vec<Option<usize>> = (0..plan.inner[k].len()).map(Some).chain([None]).collect();
    let mut held: Vec<Held> = jobs
        .par_iter()
        .map(|&job| decompose(job))
        .collect::<Result<_>>()
        .map_err(|e| Error::Invalid(format!("story CV, outer fold {k}: {e}")))?;
    let full = held.pop().expect("the full training set's decomposition");
    Ok(FoldFactors {
        fold: k,
        inner: held,
        full,
    })
}

fn mat_to_array(m: &Mat<f64>) -> Array2<f64> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| m[(i, j)])
}

/// Decomposes outer fold `k` of the design `x` (n_rows, n_features; z-scored per story) under
/// `plan`: one decomposition per inner fold and one of the whole training set, in parallel.
pub fn factorize_fold(x: ArrayView2<f64>, plan: &StoryPlan, k: usize, method: RidgeMethod) -> Result<FoldFactors> {
    check_plan_rows(x.nrows(), plan, "the design")?;
    check_finite(x, "X")?;
    let outer = &plan.outer[k];
    let xm = to_mat(x);
    let x_train = select_rows(xm.as_ref(), &outer.train);
    fold_factors(plan, k, |job| match job {
        Some(i) => {
            let f = &plan.inner[k][i];
            Held::new(
                &select_rows(x_train.as_ref(), &f.train),
                &select_rows(x_train.as_ref(), &f.test),
                method,
            )
        }
        None => Held::new(&x_train, &select_rows(xm.as_ref(), &outer.test), method),
    })
}

/// The kernel G = X Xᵀ (n_rows, n_rows) of a whole design, from which every kernel-form
/// decomposition of any plan over its rows is cut ([`factorize_fold_from_kernel`]).
#[derive(Debug, Clone)]
pub struct DesignKernel {
    g: Mat<f64>,
    n_features: usize,
}

/// Rows of G per parallel block: a fixed split, so G is the same whatever the thread count.
const KERNEL_BLOCK: usize = 256;

impl DesignKernel {
    /// G = X Xᵀ, by fixed blocks of rows in parallel.
    pub fn new(x: ArrayView2<f64>) -> Result<DesignKernel> {
        check_finite(x, "X")?;
        let xm = to_mat(x);
        let n = xm.nrows();
        let blocks: Vec<(usize, usize)> = (0..n)
            .step_by(KERNEL_BLOCK)
            .map(|r| (r, (r + KERNEL_BLOCK).min(n)))
            .collect();
        let parts: Vec<Mat<f64>> = blocks
            .par_iter()
            .map(|&(r0, r1)| mm(xm.as_ref().subrows(r0, r1 - r0), xm.as_ref().transpose()))
            .collect();
        let mut g = Mat::<f64>::zeros(n, n);
        for (&(r0, r1), part) in blocks.iter().zip(&parts) {
            g.as_mut().subrows_mut(r0, r1 - r0).copy_from(part.as_ref());
        }
        Ok(DesignKernel {
            g,
            n_features: x.ncols(),
        })
    }

    /// Whether the plan's decompositions take the kernel form under `method` (Auto: more
    /// features than the largest training set).
    pub fn applies(n_features: usize, plan: &StoryPlan, method: RidgeMethod) -> bool {
        let max_train = plan.outer.iter().map(|f| f.train.len()).max().unwrap_or(0);
        match method {
            RidgeMethod::Kernel => true,
            RidgeMethod::Auto => n_features > max_train,
            _ => false,
        }
    }

    /// Memory held (bytes).
    pub fn bytes(&self) -> usize {
        8 * self.g.nrows() * self.g.ncols()
    }
}

/// [`factorize_fold`] in kernel form, every decomposition cut from the design's kernel `g`.
pub fn factorize_fold_from_kernel(g: &DesignKernel, plan: &StoryPlan, k: usize) -> Result<FoldFactors> {
    check_plan_rows(g.g.nrows(), plan, "the design's kernel")?;
    let outer = &plan.outer[k];
    fold_factors(plan, k, |job| match job {
        Some(i) => {
            let f = &plan.inner[k][i];
            let train: Vec<usize> = f.train.iter().map(|&r| outer.train[r]).collect();
            let test: Vec<usize> = f.test.iter().map(|&r| outer.train[r]).collect();
            Held::from_kernel(g, &train, &test)
        }
        None => Held::from_kernel(g, &outer.train, &outer.test),
    })
}

/// Settings of the voxelwise fit.
#[derive(Debug, Clone, PartialEq)]
pub struct StoryCvOptions {
    pub alphas: Vec<f64>,
    /// Score that chooses each voxel's penalty in the inner CV (r is reported whatever it is; R²
    /// always comes from penalties chosen by R²).
    pub criterion: AlphaCriterion,
    pub method: RidgeMethod,
    /// Voxels per chunk.
    pub chunk: usize,
    /// Null samples (circular shifts) per voxel; 0 skips the test (p = NaN).
    pub n_shifts: usize,
    pub seed: u64,
    /// Wide designs: cut every decomposition from the design's kernel ([`DesignKernel`]); false
    /// decomposes each training set on its own ([`factorize_fold`]), the reference path.
    pub shared_kernel: bool,
    /// Precision of the inner-CV predictions ([`fit_fold_chunk`]); `Fast` by default.
    pub precision: ScorePrecision,
}

impl Default for StoryCvOptions {
    fn default() -> Self {
        StoryCvOptions {
            alphas: super::default_alphas(),
            criterion: AlphaCriterion::Pearson,
            method: RidgeMethod::Auto,
            chunk: 1024,
            n_shifts: 200,
            seed: 0,
            shared_kernel: true,
            precision: ScorePrecision::Fast,
        }
    }
}

/// One outer fold's result for a chunk of voxels.
#[derive(Debug, Clone)]
pub struct FoldChunkFit {
    /// Penalty index per voxel chosen by the criterion / by R².
    pub alpha_index: Vec<usize>,
    pub alpha_index_r2: Vec<usize>,
    /// Held-out predictions (n_test_rows, chunk) from `alpha_index` / `alpha_index_r2`, in the
    /// z units of Y, rows in the order of the fold's test rows.
    pub predictions: Array2<f64>,
    pub predictions_r2: Array2<f64>,
    /// Per null sample q: (3, chunk) sums over the fold's test rows of ŷ_q, ŷ_q², ŷ_q · y_q, where
    /// y_q is Y with every story circularly shifted and ŷ_q the fold's refit on y_q.
    pub null_sums: Vec<Array2<f64>>,
}

/// Applies outer fold `factors` to the voxel columns `y` (n_rows, chunk; z-scored per story):
/// inner-CV scores for every penalty (mean over inner folds, undefined scores as 0), the penalty
/// per voxel by `criterion` and by R² (ties to the larger penalty, as [`super::ridge_cv`]), and
/// the held-out predictions of the refit on the whole training set. `precision`:
/// [`ScorePrecision::Fast`] forms the inner-CV predictions as float32 GEMMs (scored in float64)
/// and scores again in float64 every voxel whose best two penalties lie within
/// [`super::ridge::FAST_SCORE_MARGIN`] under either criterion, so the chosen penalties, and with
/// them the predictions and the null (always float64), are [`ScorePrecision::Exact`]'s.
pub fn fit_fold_chunk(
    factors: &FoldFactors,
    plan: &StoryPlan,
    y: ArrayView2<f64>,
    alphas: &[f64],
    criterion: AlphaCriterion,
    shifts: &[Vec<usize>],
    precision: ScorePrecision,
) -> Result<FoldChunkFit> {
    check_alphas(alphas)?;
    if y.nrows() != plan.n_rows() {
        return Err(Error::Invalid(format!(
            "story CV: responses have {} rows but the plan's stories have {}",
            y.nrows(),
            plan.n_rows()
        )));
    }
    check_finite(y, "Y")?;
    let k = factors.fold;
    let (c, na) = (y.ncols(), alphas.len());
    let ym = to_mat(y);
    let y_train = select_rows(ym.as_ref(), &plan.outer[k].train);
    let criteria = [criterion, AlphaCriterion::R2];
    let n_inner = plan.inner[k].len() as f64;
    // per inner fold: (criterion, alpha, voxel) scores; summed in fold order
    let parts = match precision {
        ScorePrecision::Exact => inner_scores(factors, plan, y_train.as_ref(), alphas, &criteria, false).0,
        ScorePrecision::Fast => {
            let (mut parts, undefined) = inner_scores(factors, plan, y_train.as_ref(), alphas, &criteria, true);
            // every voxel whose best two penalties are too close to call under either criterion
            // (or with a score float32 could not form) is scored again in float64, so the chosen
            // penalties are the float64 path's
            let close: Vec<usize> = (0..c)
                .filter(|&j| {
                    undefined[j]
                        || (0..criteria.len()).any(|ci| {
                            let mut adj: Vec<f64> = (0..na)
                                .map(|i| {
                                    parts.iter().map(|p| p[(ci * c + j) * na + i]).sum::<f64>() / n_inner
                                        + super::ridge::ALPHA_TIE_SLOPE * alphas[i].ln()
                                })
                                .collect();
                            adj.sort_by(|a, b| b.total_cmp(a));
                            // scores of z-scored responses: a mean squared error is in units of
                            // their variance, as r and R² are unitless
                            adj.len() < 2 || !(adj[0] - adj[1] > super::ridge::FAST_SCORE_MARGIN)
                        })
                })
                .collect();
            if !close.is_empty() {
                let sub = Mat::from_fn(y_train.nrows(), close.len(), |i, q| y_train[(i, close[q])]);
                let (exact, _) = inner_scores(factors, plan, sub.as_ref(), alphas, &criteria, false);
                let cs = close.len();
                for (p, e) in parts.iter_mut().zip(&exact) {
                    for ci in 0..criteria.len() {
                        for (q, &j) in close.iter().enumerate() {
                            for i in 0..na {
                                p[(ci * c + j) * na + i] = e[(ci * cs + q) * na + i];
                            }
                        }
                    }
                }
            }
            parts
        }
    };
    let choose = |ci: usize| -> Vec<usize> {
        (0..c)
            .map(|j| {
                let mean: ndarray::Array1<f64> = (0..na)
                    .map(|i| parts.iter().map(|p| p[(ci * c + j) * na + i]).sum::<f64>() / n_inner)
                    .collect();
                best_alpha(alphas, mean.view())
            })
            .collect()
    };
    let (alpha_index, alpha_index_r2) = (choose(0), choose(1));
    let predict_from = |uty: &Mat<f64>, idx: &[usize]| -> Array2<f64> {
        let mut out = Array2::<f64>::zeros((factors.full.a.nrows(), c));
        for (i, &alpha) in alphas.iter().enumerate() {
            let cols: Vec<usize> = (0..c).filter(|&j| idx[j] == i).collect();
            if cols.is_empty() {
                continue;
            }
            let rhs = Mat::from_fn(uty.nrows(), cols.len(), |r, q| uty[(r, cols[q])]);
            let p = mm(
                factors.full.a.as_ref(),
                scale_rows(rhs.as_ref(), &factors.full.gains(alpha)).as_ref(),
            );
            for (q, &j) in cols.iter().enumerate() {
                for (row, &v) in p.col_as_slice(q).iter().enumerate() {
                    out[[row, j]] = v;
                }
            }
        }
        out
    };
    let uty = mm(factors.full.u.as_ref().transpose(), y_train.as_ref()); // (r, c)
    let n_null = shifts.first().map_or(0, Vec::len);
    // `Fast`: the null refits as float32 products (two thirds of a fit's work with 20 samples);
    // their sums only feed the normal fitted to the null's Fisher z, not the reported r or α
    let full32 = (precision == ScorePrecision::Fast && n_null > 0).then(|| {
        let (u, a) = (&factors.full.u, &factors.full.a);
        (
            Mat::<f32>::from_fn(u.nrows(), u.ncols(), |i, j| u[(i, j)] as f32),
            Mat::<f32>::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] as f32),
        )
    });
    let null_sums: Vec<Array2<f64>> = (0..n_null)
        .into_par_iter()
        .map(|q| {
            let perm = shifted_rows(plan, shifts, q);
            let train: Vec<usize> = plan.outer[k].train.iter().map(|&i| perm[i]).collect();
            let pred = match &full32 {
                Some((u32m, a32)) => {
                    let y_q = Mat::<f32>::from_fn(train.len(), c, |i, j| ym[(train[i], j)] as f32);
                    predict32(
                        u32m.as_ref(),
                        a32.as_ref(),
                        y_q.as_ref(),
                        &factors.full,
                        alphas,
                        &alpha_index,
                    )
                }
                None => {
                    let uty_q = mm(
                        factors.full.u.as_ref().transpose(),
                        select_rows(ym.as_ref(), &train).as_ref(),
                    );
                    predict_from(&uty_q, &alpha_index)
                }
            };
            let mut out = Array2::<f64>::zeros((3, c));
            for (row, &i) in plan.outer[k].test.iter().enumerate() {
                let src = perm[i];
                for j in 0..c {
                    let (pv, yv) = (pred[[row, j]], ym[(src, j)]);
                    out[[0, j]] += pv;
                    out[[1, j]] += pv * pv;
                    out[[2, j]] += pv * yv;
                }
            }
            out
        })
        .collect();
    Ok(FoldChunkFit {
        predictions: predict_from(&uty, &alpha_index),
        predictions_r2: predict_from(&uty, &alpha_index_r2),
        alpha_index,
        alpha_index_r2,
        null_sums,
    })
}

/// Test-row predictions A · diag(gains(α_j)) · Uᵀ y_j of every column j of `y` (training rows)
/// with its penalty `alphas[idx[j]]`, as float32 products (sequential: the caller runs samples in
/// parallel).
fn predict32(
    u: faer::MatRef<'_, f32>,
    a: faer::MatRef<'_, f32>,
    y: faer::MatRef<'_, f32>,
    held: &Held,
    alphas: &[f64],
    idx: &[usize],
) -> Array2<f64> {
    use faer::linalg::matmul::matmul;
    let c = y.ncols();
    let mut uty = Mat::<f32>::zeros(u.ncols(), c);
    matmul(
        uty.as_mut(),
        faer::Accum::Replace,
        u.transpose(),
        y,
        1.0f32,
        faer::Par::Seq,
    );
    let mut out = Array2::<f64>::zeros((a.nrows(), c));
    for (i, &alpha) in alphas.iter().enumerate() {
        let cols: Vec<usize> = (0..c).filter(|&j| idx[j] == i).collect();
        if cols.is_empty() {
            continue;
        }
        let g: Vec<f32> = held.gains(alpha).iter().map(|&x| x as f32).collect();
        let w = Mat::<f32>::from_fn(uty.nrows(), cols.len(), |r, q| uty[(r, cols[q])] * g[r]);
        let mut p = Mat::<f32>::zeros(a.nrows(), cols.len());
        matmul(p.as_mut(), faer::Accum::Replace, a, w.as_ref(), 1.0f32, faer::Par::Seq);
        for (q, &j) in cols.iter().enumerate() {
            for (row, &v) in p.col_as_slice(q).iter().enumerate() {
                out[[row, j]] = v as f64;
            }
        }
    }
    out
}

/// The inner-CV scores of one outer fold: per inner fold, (criterion, alpha, voxel) scores of
/// the training rows' voxel columns `y_train` (undefined scores as 0), and per voxel whether a
/// score was undefined. `fast`: predictions as float32 GEMMs (scores in float64), as
/// [`ScorePrecision::Fast`]; otherwise float64.
fn inner_scores(
    factors: &FoldFactors,
    plan: &StoryPlan,
    y_train: faer::MatRef<'_, f64>,
    alphas: &[f64],
    criteria: &[AlphaCriterion],
    fast: bool,
) -> (Vec<Vec<f64>>, Vec<bool>) {
    let (c, na, nc) = (y_train.ncols(), alphas.len(), criteria.len());
    let k = factors.fold;
    let per_fold: Vec<(Vec<f64>, Vec<bool>)> = factors
        .inner
        .par_iter()
        .zip(&plan.inner[k])
        .map(|(h, f)| {
            let uty = mm(h.u.as_ref().transpose(), select_rows(y_train, &f.train).as_ref());
            let y_test = select_rows(y_train, &f.test);
            let mut out = vec![0.0; nc * na * c];
            let mut undefined = vec![false; c];
            let a32 = fast.then(|| Mat::from_fn(h.a.nrows(), h.a.ncols(), |i, j| h.a[(i, j)] as f32));
            let mut pred32 = Mat::<f32>::zeros(if fast { h.a.nrows() } else { 0 }, c);
            let mut w = Mat::<f32>::zeros(if fast { uty.nrows() } else { 0 }, c);
            let mut col = vec![0.0f64; h.a.nrows()];
            for (i, &alpha) in alphas.iter().enumerate() {
                let g = h.gains(alpha);
                let pred = match &a32 {
                    Some(a32) => {
                        for j in 0..c {
                            for ((o, &u), &gr) in w.col_as_slice_mut(j).iter_mut().zip(uty.col_as_slice(j)).zip(&g) {
                                *o = (u * gr) as f32;
                            }
                        }
                        faer::linalg::matmul::matmul(
                            pred32.as_mut(),
                            faer::Accum::Replace,
                            a32.as_ref(),
                            w.as_ref(),
                            1.0f32,
                            faer::Par::Seq,
                        );
                        None
                    }
                    None => Some(mm(h.a.as_ref(), scale_rows(uty.as_ref(), &g).as_ref())),
                };
                for j in 0..c {
                    let p: &[f64] = match &pred {
                        Some(p) => p.col_as_slice(j),
                        None => {
                            for (v, &x) in col.iter_mut().zip(pred32.col_as_slice(j)) {
                                *v = x as f64;
                            }
                            &col
                        }
                    };
                    for (ci, &cr) in criteria.iter().enumerate() {
                        let s = score(cr, p, y_test.col_as_slice(j));
                        undefined[j] |= !s.is_finite();
                        out[(ci * c + j) * na + i] = if s.is_nan() { 0.0 } else { s };
                    }
                }
            }
            (out, undefined)
        })
        .collect();
    let mut undefined = vec![false; c];
    for (_, u) in &per_fold {
        for (a, &b) in undefined.iter_mut().zip(u) {
            *a |= b;
        }
    }
    (per_fold.into_iter().map(|(o, _)| o).collect(), undefined)
}

/// Row map of null sample `q`: row `i` of story `s` (offset o, T rows) reads row
/// `o + (i − o + shift) mod T`.
fn shifted_rows(plan: &StoryPlan, shifts: &[Vec<usize>], q: usize) -> Vec<usize> {
    let mut perm = Vec::with_capacity(plan.n_rows());
    for (s, sh) in shifts.iter().enumerate() {
        let r = plan.rows(s);
        let t = r.len();
        perm.extend((0..t).map(|i| r.start + (i + sh[q]) % t));
    }
    perm
}

/// The circular shifts of the null: `shifts[s][j]` for story `s` and null sample `j`, uniform in
/// [⌈T/10⌉, T − ⌈T/10⌉] for a story of T rows, drawn from `seed` and the story's position.
pub fn null_shifts(plan: &StoryPlan, n_shifts: usize, seed: u64) -> Vec<Vec<usize>> {
    (0..plan.stories.len())
        .map(|s| {
            let t = plan.rows(s).len();
            let lo = t.div_ceil(10).max(1);
            let hi = t.saturating_sub(lo).max(lo);
            let mut rng = SplitMix64::new(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(s as u64 + 1)));
            (0..n_shifts)
                .map(|_| lo + rng.below((hi - lo + 1) as u64) as usize)
                .collect()
        })
        .collect()
}

/// Per-voxel sums over the held-out rows of every fold seen so far: enough for the pooled r, the
/// pooled R², the null samples' r, and r and α per fold.
#[derive(Debug, Clone)]
pub struct VoxelSums {
    n: f64,
    sp: Vec<f64>,
    spp: Vec<f64>,
    spy: Vec<f64>,
    sy: Vec<f64>,
    syy: Vec<f64>,
    /// Σ (y − ŷ_R²)².
    sse_r2: Vec<f64>,
    /// (n_shifts, voxels): Σ ŷ_q, Σ ŷ_q², Σ ŷ_q · y_q of the null refits (Σ y_q, Σ y_q² are
    /// those of y: a circular shift within a story keeps them).
    null_sp: Array2<f64>,
    null_spp: Array2<f64>,
    null_spy: Array2<f64>,
    /// (n_outer, voxels)
    r_per_fold: Array2<f64>,
    alpha_per_fold: Array2<f64>,
    alpha_r2_per_fold: Array2<f64>,
}

impl VoxelSums {
    pub fn new(n_voxels: usize, n_outer: usize, n_shifts: usize) -> VoxelSums {
        let z = || vec![0.0; n_voxels];
        VoxelSums {
            n: 0.0,
            sp: z(),
            spp: z(),
            spy: z(),
            sy: z(),
            syy: z(),
            sse_r2: z(),
            null_sp: Array2::zeros((n_shifts, n_voxels)),
            null_spp: Array2::zeros((n_shifts, n_voxels)),
            null_spy: Array2::zeros((n_shifts, n_voxels)),
            r_per_fold: Array2::from_elem((n_outer, n_voxels), f64::NAN),
            alpha_per_fold: Array2::from_elem((n_outer, n_voxels), f64::NAN),
            alpha_r2_per_fold: Array2::from_elem((n_outer, n_voxels), f64::NAN),
        }
    }

    /// Adds outer fold `k`'s result for voxels `c0..c0 + chunk` (`y` the chunk's responses over
    /// all rows).
    pub fn add(
        &mut self,
        plan: &StoryPlan,
        k: usize,
        c0: usize,
        fit: &FoldChunkFit,
        y: ArrayView2<f64>,
        alphas: &[f64],
    ) {
        let test = &plan.outer[k].test;
        let y_test = y.select(Axis(0), test);
        let c = y.ncols();
        if c0 == 0 {
            self.n += test.len() as f64;
        }
        for j in 0..c {
            let v = c0 + j;
            let (p, p2, yj) = (
                fit.predictions.column(j),
                fit.predictions_r2.column(j),
                y_test.column(j),
            );
            let mut acc = [0.0; 6];
            for i in 0..yj.len() {
                acc[0] += p[i];
                acc[1] += p[i] * p[i];
                acc[2] += p[i] * yj[i];
                acc[3] += yj[i];
                acc[4] += yj[i] * yj[i];
                acc[5] += (yj[i] - p2[i]) * (yj[i] - p2[i]);
            }
            self.sp[v] += acc[0];
            self.spp[v] += acc[1];
            self.spy[v] += acc[2];
            self.sy[v] += acc[3];
            self.syy[v] += acc[4];
            self.sse_r2[v] += acc[5];
            for (q, ns) in fit.null_sums.iter().enumerate() {
                self.null_sp[[q, v]] += ns[[0, j]];
                self.null_spp[[q, v]] += ns[[1, j]];
                self.null_spy[[q, v]] += ns[[2, j]];
            }
            self.r_per_fold[[k, v]] = crate::stats::pearson(&p.to_vec(), &yj.to_vec());
            self.alpha_per_fold[[k, v]] = alphas[fit.alpha_index[j]];
            self.alpha_r2_per_fold[[k, v]] = alphas[fit.alpha_index_r2[j]];
        }
    }

    fn r_from(&self, v: usize, sp: f64, spp: f64, spy: f64) -> f64 {
        let n = self.n;
        let cov = spy - sp * self.sy[v] / n;
        let vp = spp - sp * sp / n;
        let vy = self.syy[v] - self.sy[v] * self.sy[v] / n;
        if vp <= 0.0 || vy <= 0.0 {
            f64::NAN
        } else {
            cov / (vp.sqrt() * vy.sqrt())
        }
    }

    /// The per-voxel results once every fold was added.
    pub fn finish(&self) -> StoryFit {
        let nv = self.sp.len();
        let n_shifts = self.null_spy.nrows();
        let mut fit = StoryFit {
            r: Vec::with_capacity(nv),
            r2: Vec::with_capacity(nv),
            p: Vec::with_capacity(nv),
            p_perm: Vec::with_capacity(nv),
            null_sd: Vec::with_capacity(nv),
            r_per_fold: self.r_per_fold.clone(),
            alpha_per_fold: self.alpha_per_fold.clone(),
            alpha_r2_per_fold: self.alpha_r2_per_fold.clone(),
        };
        for v in 0..nv {
            let r = self.r_from(v, self.sp[v], self.spp[v], self.spy[v]);
            let sst = self.syy[v] - self.sy[v] * self.sy[v] / self.n;
            fit.r.push(r);
            fit.r2.push(if sst > 0.0 {
                1.0 - self.sse_r2[v] / sst
            } else {
                f64::NAN
            });
            if n_shifts < 2 || !r.is_finite() {
                fit.p.push(f64::NAN);
                fit.p_perm.push(f64::NAN);
                fit.null_sd.push(f64::NAN);
                continue;
            }
            let null: Vec<f64> = (0..n_shifts)
                .map(|q| self.r_from(v, self.null_sp[[q, v]], self.null_spp[[q, v]], self.null_spy[[q, v]]))
                .collect();
            let ge = null.iter().filter(|&&x| x >= r).count();
            fit.p_perm.push((1 + ge) as f64 / (1 + n_shifts) as f64);
            let z: Vec<f64> = null.iter().map(|&x| fisher_z(x)).collect();
            let m = z.iter().sum::<f64>() / z.len() as f64;
            let sd = (z.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (z.len() - 1) as f64).sqrt();
            fit.null_sd.push(sd);
            fit.p.push(normal_upper_tail((fisher_z(r) - m) / sd));
        }
        fit
    }
}

fn fisher_z(r: f64) -> f64 {
    r.clamp(-1.0 + 1e-15, 1.0 - 1e-15).atanh()
}

/// P(Z ≥ z) for a standard normal Z (from the χ²₁ tail, accurate far into the tail).
pub fn normal_upper_tail(z: f64) -> f64 {
    if !z.is_finite() {
        return if z > 0.0 {
            0.0
        } else if z < 0.0 {
            1.0
        } else {
            f64::NAN
        };
    }
    let half = 0.5 * chi2_sf(z * z, 1.0);
    if z >= 0.0 {
        half
    } else {
        1.0 - half
    }
}

/// One subject's voxelwise result.
#[derive(Debug, Clone)]
pub struct StoryFit {
    /// Held-out r per voxel, pooled over every held-out row (the r that p tests).
    pub r: Vec<f64>,
    /// Held-out R² per voxel, pooled, from penalties chosen by inner-CV R².
    pub r2: Vec<f64>,
    /// Parametric p of `r` (normal fit to the Fisher z of the shift null), one-sided.
    pub p: Vec<f64>,
    /// Empirical p of `r`: (1 + #null ≥ r) / (1 + n_shifts).
    pub p_perm: Vec<f64>,
    /// Sd of the null's Fisher z per voxel.
    pub null_sd: Vec<f64>,
    /// (n_outer, voxels)
    pub r_per_fold: Array2<f64>,
    pub alpha_per_fold: Array2<f64>,
    pub alpha_r2_per_fold: Array2<f64>,
}

impl StoryFit {
    /// All of it as one matrix (5 + 3 n_outer, voxels): r, r2, p, p_perm, null_sd, then r, α and
    /// α_r2 per fold (for a cache on disk).
    pub fn to_matrix(&self) -> Array2<f64> {
        let rows: Vec<ndarray::ArrayView1<f64>> = [&self.r, &self.r2, &self.p, &self.p_perm, &self.null_sd]
            .iter()
            .map(|v| ndarray::ArrayView1::from(v.as_slice()))
            .chain(self.r_per_fold.rows())
            .chain(self.alpha_per_fold.rows())
            .chain(self.alpha_r2_per_fold.rows())
            .collect();
        ndarray::stack(Axis(0), &rows).expect("rows of one length")
    }

    /// The inverse of [`Self::to_matrix`] for a plan with `n_outer` folds.
    pub fn from_matrix(m: &Array2<f64>, n_outer: usize) -> Result<StoryFit> {
        if m.nrows() != 5 + 3 * n_outer {
            return Err(Error::Invalid(format!(
                "a stored voxelwise fit has {} rows; expected {} for {n_outer} folds",
                m.nrows(),
                5 + 3 * n_outer
            )));
        }
        let row = |i: usize| m.row(i).to_vec();
        let block = |i: usize| m.slice(ndarray::s![i..i + n_outer, ..]).to_owned();
        Ok(StoryFit {
            r: row(0),
            r2: row(1),
            p: row(2),
            p_perm: row(3),
            null_sd: row(4),
            r_per_fold: block(5),
            alpha_per_fold: block(5 + n_outer),
            alpha_r2_per_fold: block(5 + 2 * n_outer),
        })
    }
}

/// Responses of one subject, read a chunk of voxel columns at a time.
pub trait VoxelSource: Sync {
    fn n_voxels(&self) -> usize;
    /// Voxels `c0..c1` over all rows of the plan (z-scored per story, finite).
    fn read(&self, c0: usize, c1: usize) -> Result<Array2<f64>>;
}

/// Responses already in memory (n_rows, n_voxels), z-scored per story.
impl VoxelSource for Array2<f64> {
    fn n_voxels(&self) -> usize {
        self.ncols()
    }
    fn read(&self, c0: usize, c1: usize) -> Result<Array2<f64>> {
        Ok(self.slice(ndarray::s![.., c0..c1]).to_owned())
    }
}

/// What [`story_cv`] did, beyond its results.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoryCvWork {
    /// Decompositions computed (each outer fold: inner folds + 1).
    pub decompositions: usize,
    /// Decompositions taken from the cache instead.
    pub loaded: usize,
    /// Largest memory held by one fold's factors (bytes).
    pub max_factor_bytes: usize,
    /// Memory of the design's kernel when the decompositions were cut from it (bytes; 0 if not).
    pub kernel_bytes: usize,
    /// Seconds spent computing (or loading) decompositions, reading responses, and fitting
    /// (inner CV, held-out predictions and the null refits).
    pub decompose_s: f64,
    pub read_s: f64,
    pub fit_s: f64,
}

/// The whole voxelwise analysis of one design for several subjects: fold by fold, each fold's
/// factors computed once (or taken from `cached(k)`, e.g. an artifact store) and applied to every
/// subject's voxels chunk by chunk. `on_fold(k, &factors)` sees each fold's factors once (to
/// store them); `progress(done, total)` counts (fold, subject, chunk) steps.
pub fn story_cv(
    x: ArrayView2<f64>,
    plan: &StoryPlan,
    subjects: &[&dyn VoxelSource],
    opts: &StoryCvOptions,
    cached: &dyn Fn(usize) -> Result<Option<FoldFactors>>,
    on_fold: &mut dyn FnMut(usize, &FoldFactors) -> Result<()>,
    progress: &dyn Fn(usize, usize),
) -> Result<(Vec<StoryFit>, StoryCvWork)> {
    check_alphas(&opts.alphas)?;
    if opts.chunk == 0 {
        return Err(Error::Invalid("story CV: the voxel chunk must be at least 1".into()));
    }
    let shifts = null_shifts(plan, opts.n_shifts, opts.seed);
    let mut sums: Vec<VoxelSums> = subjects
        .iter()
        .map(|s| VoxelSums::new(s.n_voxels(), plan.n_outer(), opts.n_shifts))
        .collect();
    let chunks_of = |nv: usize| nv.div_ceil(opts.chunk);
    let total = plan.n_outer() * subjects.iter().map(|s| chunks_of(s.n_voxels())).sum::<usize>();
    let mut done = 0;
    let mut work = StoryCvWork::default();
    let kernel_form = opts.shared_kernel && DesignKernel::applies(x.ncols(), plan, opts.method);
    let mut kernel: Option<DesignKernel> = None;
    for k in 0..plan.n_outer() {
        let t = std::time::Instant::now();
        let factors = match cached(k)? {
            Some(f) if f.fold == k => {
                work.loaded += f.n_decompositions();
                f
            }
            _ => {
                let f = if kernel_form {
                    if kernel.is_none() {
                        check_plan_rows(x.nrows(), plan, "the design")?;
                        let g = DesignKernel::new(x)?;
                        work.kernel_bytes = g.bytes();
                        kernel = Some(g);
                    }
                    factorize_fold_from_kernel(kernel.as_ref().expect("computed above"), plan, k)?
                } else {
                    factorize_fold(x, plan, k, opts.method)?
                };
                work.decompositions += f.n_decompositions();
                on_fold(k, &f)?;
                f
            }
        };
        work.decompose_s += t.elapsed().as_secs_f64();
        work.max_factor_bytes = work.max_factor_bytes.max(factors.bytes());
        for (subject, acc) in subjects.iter().zip(sums.iter_mut()) {
            let nv = subject.n_voxels();
            for c0 in (0..nv).step_by(opts.chunk) {
                let c1 = (c0 + opts.chunk).min(nv);
                let t = std::time::Instant::now();
                let y = subject.read(c0, c1)?;
                work.read_s += t.elapsed().as_secs_f64();
                if y.dim() != (plan.n_rows(), c1 - c0) {
                    return Err(Error::Invalid(format!(
                        "story CV: a response chunk has shape {:?}, expected ({}, {})",
                        y.dim(),
                        plan.n_rows(),
                        c1 - c0
                    )));
                }
                let t = std::time::Instant::now();
                let fit = fit_fold_chunk(
                    &factors,
                    plan,
                    y.view(),
                    &opts.alphas,
                    opts.criterion,
                    &shifts,
                    opts.precision,
                )?;
                acc.add(plan, k, c0, &fit, y.view(), &opts.alphas);
                work.fit_s += t.elapsed().as_secs_f64();
                done += 1;
                progress(done, total);
            }
        }
    }
    Ok((sums.iter().map(VoxelSums::finish).collect(), work))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_deals_stories_round_robin_and_inner_folds_within_training_stories() {
        let stories: Vec<(String, usize)> = (0..6).map(|s| (format!("s{s}"), 3 + s)).collect();
        let plan = StoryPlan::new(&stories, 3, 2).unwrap();
        assert_eq!(plan.fold_of_story, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(plan.test_stories(1), vec![1, 4]);
        let rows1: Vec<usize> = plan.rows(1).chain(plan.rows(4)).collect();
        assert_eq!(plan.outer[1].test, rows1);
        // inner folds of outer fold 0: training stories 1, 2, 4, 5 → inner fold 0 tests 1 and 4
        let train = &plan.outer[0].train;
        let inner_test_stories: Vec<usize> = plan.inner[0][0]
            .test
            .iter()
            .map(|&i| (0..6).find(|&s| plan.rows(s).contains(&train[i])).unwrap())
            .collect();
        let mut st = inner_test_stories.clone();
        st.dedup();
        assert_eq!(st, vec![1, 4]);
        assert!(StoryPlan::new(&stories, 3, 5).is_err()); // 4 training stories for 5 inner folds
        assert!(StoryPlan::new(&stories[..2], 3, 2).is_err());
    }

    #[test]
    fn normal_tail_matches_known_values() {
        assert!((normal_upper_tail(0.0) - 0.5).abs() < 1e-12);
        assert!((normal_upper_tail(1.959963984540054) - 0.025).abs() < 1e-9);
        assert!((normal_upper_tail(-1.0) - 0.841344746068543).abs() < 1e-9);
        assert!((normal_upper_tail(6.0) / 9.865876450377e-10 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn shifts_stay_inside_the_story_and_away_from_zero() {
        let stories: Vec<(String, usize)> = (0..4).map(|s| (format!("s{s}"), 20 + 10 * s)).collect();
        let plan = StoryPlan::new(&stories, 2, 2).unwrap();
        let sh = null_shifts(&plan, 50, 3);
        for (s, v) in sh.iter().enumerate() {
            let t = plan.rows(s).len();
            assert!(
                v.iter().all(|&x| x >= t.div_ceil(10) && x <= t - t.div_ceil(10)),
                "{v:?}"
            );
        }
        assert_eq!(sh, null_shifts(&plan, 50, 3));
        assert_ne!(sh, null_shifts(&plan, 50, 4));
    }
}
