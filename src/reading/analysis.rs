//! The paper's reading-time comparison (METHOD.md §8): do a layer's SAE features predict reading
//! times beyond lexical controls?
//!
//! 1. Feature evidence per SAE feature over the story words: activation count, its top-20 words,
//!    the fraction of them that are open-class (PTB noun, verb, adjective, adverb tags from the
//!    parses), the number of distinct word forms among them, and the Pearson correlation of the
//!    activation with the LM's next-token entropy.
//! 2. Feature selection. `semantic` (a provisional rule until the taxonomy stage labels features):
//!    a feature is a semantic candidate when it is active on at least `min_active` words, ≥ 70% of
//!    its top-20 words are open-class, they span ≥ 5 distinct forms (not lexical) and
//!    |r(activation, entropy)| < 0.5 (not a prediction feature). `all`: every feature active on at
//!    least `min_active` words.
//! 3. Principal components: the selected features' codes are z-scored over the story words, and
//!    the top-k eigenvectors of their covariance give k scores per word (each z-scored; the sign of
//!    each component is fixed so that its largest loading is positive). The covariance is
//!    accumulated over fixed row blocks in block order, so it does not depend on the thread count.
//! 4. Models, all fitted by ML on the same rows: baseline = controls + random intercepts;
//!    + PCs of the selected features; + PCs of random feature subsets of the same size (sampled
//!    from all features active on ≥ `min_active` words, one subset per seed); + a word norm (value
//!    z-scored, missing values set to 0 with a missing indicator). Each is compared with the
//!    baseline by a likelihood-ratio test: χ² = 2 ΔlogLik on df = number of added columns.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::Serialize;

use crate::reading::inputs::WordInfo;
use crate::reading::lmm::{fit_lmm, likelihood_ratio_test, LmmFit, LmmOptions, TermData};
use crate::stats::{pearson, zscore_columns, SplitMix64};
use crate::{Error, Result};

/// Top-activating words kept per feature.
pub const TOP_WORDS: usize = 20;

/// Rows per block of the covariance accumulation.
const COV_BLOCK: usize = 1024;

/// PTB tags of open-class words.
pub fn is_open_class(tag: &str) -> bool {
    matches!(
        tag,
        "NN" | "NNS"
            | "NNP"
            | "NNPS"
            | "VB"
            | "VBD"
            | "VBG"
            | "VBN"
            | "VBP"
            | "VBZ"
            | "JJ"
            | "JJR"
            | "JJS"
            | "RB"
            | "RBR"
            | "RBS"
    )
}

/// Thresholds of the feature selection (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SelectionRule {
    pub min_active: usize,
    pub min_open_class: f64,
    pub min_forms: usize,
    pub max_abs_entropy_r: f64,
}

impl Default for SelectionRule {
    fn default() -> Self {
        SelectionRule {
            min_active: 20,
            min_open_class: 0.7,
            min_forms: 5,
            max_abs_entropy_r: 0.5,
        }
    }
}

/// Which features enter the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Selection {
    Semantic,
    All,
}

impl std::str::FromStr for Selection {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "semantic" => Ok(Selection::Semantic),
            "all" => Ok(Selection::All),
            other => Err(Error::Invalid(format!(
                "unknown feature selection `{other}` (semantic, all)"
            ))),
        }
    }
}

impl Selection {
    pub fn as_str(self) -> &'static str {
        match self {
            Selection::Semantic => "semantic",
            Selection::All => "all",
        }
    }
}

/// Evidence for one feature over the story words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureEvidence {
    pub feature: u32,
    pub n_active: usize,
    pub mean_activation: f64,
    /// Among the top-20 words (fewer when fewer are active).
    pub open_class_fraction: f64,
    pub distinct_forms: usize,
    /// Pearson r of the activation with next-token entropy over all words (0 when constant).
    pub entropy_r: f64,
    pub top_words: Vec<String>,
    pub selected: bool,
}

/// Evidence and selection for every feature of `codes (n_words, d_sae)`.
pub fn feature_evidence(
    codes: ArrayView2<'_, f32>,
    words: &[WordInfo],
    entropy: &[f64],
    selection: Selection,
    rule: &SelectionRule,
) -> Vec<FeatureEvidence> {
    let n = codes.nrows();
    (0..codes.ncols())
        .into_par_iter()
        .map(|j| {
            let col = codes.column(j);
            let mut active: Vec<(f32, usize)> = col
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.0)
                .map(|(i, v)| (*v, i))
                .collect();
            // largest first; ties by word index (deterministic)
            active.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let top: Vec<usize> = active.iter().take(TOP_WORDS).map(|a| a.1).collect();
            let open = top
                .iter()
                .filter(|&&i| words[i].pos.as_deref().is_some_and(is_open_class))
                .count();
            let mut forms: Vec<String> = top
                .iter()
                .map(|&i| crate::reading::inputs::normalize_word(&words[i].text))
                .collect();
            let top_words = top.iter().map(|&i| words[i].text.clone()).collect();
            forms.sort();
            forms.dedup();
            let xs: Vec<f64> = col.iter().map(|&v| v as f64).collect();
            let r = pearson(&xs, entropy);
            let entropy_r = if r.is_finite() { r } else { 0.0 };
            let open_class_fraction = if top.is_empty() {
                0.0
            } else {
                open as f64 / top.len() as f64
            };
            let alive = active.len() >= rule.min_active;
            let selected = alive
                && match selection {
                    Selection::All => true,
                    Selection::Semantic => {
                        open_class_fraction >= rule.min_open_class
                            && forms.len() >= rule.min_forms
                            && entropy_r.abs() < rule.max_abs_entropy_r
                    }
                };
            FeatureEvidence {
                feature: j as u32,
                n_active: active.len(),
                mean_activation: xs.iter().sum::<f64>() / n.max(1) as f64,
                open_class_fraction,
                distinct_forms: forms.len(),
                entropy_r,
                top_words,
                selected,
            }
        })
        .collect()
}

/// Top-`k` principal-component scores (n_words, ≤ k) of the columns `cols` of `codes`, each
/// z-scored; fewer than `k` when the columns span fewer non-degenerate directions. Also returns
/// the fraction of the (z-scored) variance the components explain.
pub fn pca_scores(codes: ArrayView2<'_, f32>, cols: &[usize], k: usize) -> Result<(Array2<f64>, f64)> {
    let n = codes.nrows();
    let mut x = Array2::<f64>::zeros((n, cols.len()));
    for (c, &j) in cols.iter().enumerate() {
        x.column_mut(c).assign(&codes.column(j).mapv(f64::from));
    }
    zscore_columns(x.view_mut());
    let m = x.ncols();
    if m == 0 || n < 2 {
        return Ok((Array2::zeros((n, 0)), 0.0));
    }
    // XᵀX over fixed row blocks, summed in block order
    let blocks: Vec<Array2<f64>> = (0..n.div_ceil(COV_BLOCK))
        .into_par_iter()
        .map(|b| {
            let xb = x.slice(ndarray::s![b * COV_BLOCK..((b + 1) * COV_BLOCK).min(n), ..]);
            xb.t().dot(&xb)
        })
        .collect();
    let mut cov = Array2::<f64>::zeros((m, m));
    for b in &blocks {
        cov += b;
    }
    let total: f64 = (0..m).map(|j| cov[[j, j]]).sum();
    let cm = faer::Mat::from_fn(m, m, |i, j| cov[[i, j]]);
    let (lam, vecs) = crate::encoding::ridge::eigh_above_roundoff(cm.as_ref(), n, m, "feature covariance")?;
    let r = k.min(lam.len());
    let mut v = Array2::<f64>::zeros((m, r));
    for c in 0..r {
        let (mut best, mut sign) = (0.0f64, 1.0);
        for i in 0..m {
            let val = vecs[(i, c)];
            if val.abs() > best {
                best = val.abs();
                sign = val.signum();
            }
        }
        for i in 0..m {
            v[[i, c]] = sign * vecs[(i, c)];
        }
    }
    let mut scores = x.dot(&v);
    zscore_columns(scores.view_mut());
    let explained = if total > 0.0 {
        lam[..r].iter().sum::<f64>() / total
    } else {
        0.0
    };
    Ok((scores, explained))
}

/// `count` distinct indices from `pool`, by a seeded partial Fisher–Yates shuffle, sorted.
pub fn random_subset(pool: &[usize], count: usize, seed: u64) -> Vec<usize> {
    let mut p = pool.to_vec();
    let mut rng = SplitMix64::new(seed);
    let count = count.min(p.len());
    for i in 0..count {
        let j = i + rng.below((p.len() - i) as u64) as usize;
        p.swap(i, j);
    }
    let mut out = p[..count].to_vec();
    out.sort_unstable();
    out
}

/// The rows, response, baseline design and random terms shared by every model.
#[derive(Debug, Clone)]
pub struct BaseDesign {
    /// Word index of each row.
    pub word_of_row: Vec<usize>,
    pub y: Vec<f64>,
    /// (n_rows, p0): intercept + z-scored controls.
    pub x: Array2<f64>,
    pub names: Vec<String>,
    pub terms: Vec<TermData>,
}

/// One likelihood-ratio comparison against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub layer: Option<usize>,
    /// "sae-semantic" / "sae-all", "random", "norm".
    pub model: String,
    pub seed: Option<u64>,
    /// Features the components were computed from (None for the norm).
    pub n_features: Option<usize>,
    /// Fraction of the selected features' z-scored variance the components explain.
    pub variance_explained: Option<f64>,
    pub n_obs: usize,
    pub loglik_base: f64,
    pub loglik_full: f64,
    pub delta_loglik: f64,
    pub chi2: f64,
    pub df: usize,
    pub p_value: f64,
    pub aic_base: f64,
    pub aic_full: f64,
    pub converged: bool,
}

pub fn ml_options() -> LmmOptions {
    LmmOptions {
        reml: false,
        ..Default::default()
    }
}

pub fn fit_base(b: &BaseDesign) -> Result<LmmFit> {
    fit_lmm(&b.y, b.x.view(), &b.names, &b.terms, &ml_options())
}

/// Fits the baseline plus `extra` (n_words, q) columns taken at each row's word, and compares.
pub fn compare(
    b: &BaseDesign,
    base: &LmmFit,
    extra: ArrayView2<'_, f64>,
    extra_names: &[String],
) -> Result<(LmmFit, f64, f64, usize, f64)> {
    let (n, p0) = b.x.dim();
    let q = extra.ncols();
    let mut x = Array2::<f64>::zeros((n, p0 + q));
    x.slice_mut(ndarray::s![.., ..p0]).assign(&b.x);
    for (r, &w) in b.word_of_row.iter().enumerate() {
        x.slice_mut(ndarray::s![r, p0..]).assign(&extra.row(w));
    }
    let mut names = b.names.clone();
    names.extend(extra_names.iter().cloned());
    let full = fit_lmm(&b.y, x.view(), &names, &b.terms, &ml_options())?;
    let (dll, chi2, df, p) = likelihood_ratio_test(base, &full)?;
    Ok((full, dll, chi2, df, p))
}

/// Norm columns per word: (value z-scored over words that have it, 0 where missing; missing
/// indicator when any is missing).
pub fn norm_columns(words: &[WordInfo]) -> (Array2<f64>, Vec<String>) {
    let vals: Vec<f64> = words.iter().filter_map(|w| w.norm).collect();
    let n = vals.len().max(1) as f64;
    let mean = vals.iter().sum::<f64>() / n;
    let sd = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let any_missing = vals.len() < words.len();
    let cols = 1 + usize::from(any_missing);
    let mut out = Array2::<f64>::zeros((words.len(), cols));
    for (i, w) in words.iter().enumerate() {
        match w.norm {
            Some(v) if sd > 0.0 => out[[i, 0]] = (v - mean) / sd,
            Some(_) => {}
            None => out[[i, 1]] = 1.0,
        }
    }
    let mut names = vec!["norm".to_string()];
    if any_missing {
        names.push("norm_missing".into());
    }
    (out, names)
}

/// Stacks per-story code matrices into (n_words, d_sae) in story order.
pub fn stack(mats: &[Array2<f32>]) -> Result<Array2<f32>> {
    let views: Vec<_> = mats.iter().map(|m| m.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Invalid(format!("codes do not stack: {e}")))
}
