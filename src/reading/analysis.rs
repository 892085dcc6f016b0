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
//! 3. Principal components: the live features' codes are z-scored over the story words and their
//!    Gram matrix is computed once per layer (over fixed row blocks, summed in block order, so it
//!    does not depend on the thread count); for each feature set the top-k eigenvectors of its
//!    submatrix (the set's correlation matrix) give k scores per word (each z-scored; the sign of
//!    each component is fixed so that its largest loading is positive).
//! 4. Models, all fitted by ML on the same rows: baseline = controls + random intercepts;
//!    + PCs of the selected features; + PCs of random feature subsets of the same size (one subset
//!    per seed, drawn from the live features the selection did not pick, as the paper's random
//!    non-semantic features, or with `random-pool = "live"` from every live feature); + a word norm (value
//!    z-scored, missing values set to 0 with a missing indicator). Each is compared with the
//!    baseline by a likelihood-ratio test: χ² = 2 ΔlogLik on df = number of added columns.

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::reading::inputs::WordInfo;
use crate::reading::lmm::{fit_lmm, likelihood_ratio_test, LmmFit, LmmOptions, TermData};
use crate::sae::evidence::FeatureSummary;
use crate::stats::{pearson, zscore_columns, SplitMix64};
use crate::{Error, Result};

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
    /// The features the taxonomy labels semantic (`[taxonomy]`'s labels, the set its fMRI
    /// comparisons use), among the live ones; set by the reading stage from the labels.
    Taxonomy,
}

impl std::str::FromStr for Selection {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "semantic" => Ok(Selection::Semantic),
            "all" => Ok(Selection::All),
            "taxonomy" => Ok(Selection::Taxonomy),
            other => Err(Error::Invalid(format!(
                "unknown feature selection `{other}` (taxonomy, semantic, all)"
            ))),
        }
    }
}

impl Selection {
    pub fn as_str(self) -> &'static str {
        match self {
            Selection::Semantic => "semantic",
            Selection::All => "all",
            Selection::Taxonomy => "taxonomy-semantic",
        }
    }
}

/// Where the random control subsets are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RandomPool {
    /// The live features the selection did not pick (the paper's random non-semantic features).
    NonSemantic,
    /// Every live feature, the selected ones included.
    Live,
}

impl std::str::FromStr for RandomPool {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "non-semantic" => Ok(RandomPool::NonSemantic),
            "live" => Ok(RandomPool::Live),
            other => Err(Error::Invalid(format!(
                "unknown random pool `{other}` (non-semantic, live)"
            ))),
        }
    }
}

impl RandomPool {
    pub fn as_str(self) -> &'static str {
        match self {
            RandomPool::NonSemantic => "non-semantic",
            RandomPool::Live => "live",
        }
    }

    /// The pool, in `alive`'s order: `alive` minus `selected`, or `alive` itself.
    pub fn draw_from(self, alive: &[usize], selected: &[usize]) -> Vec<usize> {
        match self {
            RandomPool::Live => alive.to_vec(),
            RandomPool::NonSemantic => {
                let picked: std::collections::BTreeSet<usize> = selected.iter().copied().collect();
                alive.iter().copied().filter(|f| !picked.contains(f)).collect()
            }
        }
    }
}

/// Evidence for one feature over the story words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureEvidence {
    pub feature: u32,
    pub n_active: usize,
    #[serde(with = "crate::store::json_float")]
    pub mean_activation: f64,
    /// Among the top-20 words (fewer when fewer are active).
    #[serde(with = "crate::store::json_float")]
    pub open_class_fraction: f64,
    pub distinct_forms: usize,
    /// Pearson r of the activation with next-token entropy over all words (0 when constant).
    #[serde(with = "crate::store::json_float")]
    pub entropy_r: f64,
    pub top_words: Vec<String>,
    pub selected: bool,
}

/// Evidence and selection for every feature of `codes (n_words, d_sae)`, from its top words as
/// found by [`crate::sae::evidence::feature_evidence`] (`summaries`, over the texts delimited by
/// `offsets`) and the correlation of its activation with `entropy`.
pub fn feature_evidence(
    codes: ArrayView2<'_, f32>,
    summaries: &[FeatureSummary],
    offsets: &[usize],
    words: &[WordInfo],
    entropy: &[f64],
    selection: Selection,
    rule: &SelectionRule,
) -> Vec<FeatureEvidence> {
    summaries
        .par_iter()
        .map(|f| {
            let col = codes.column(f.feature as usize);
            let top: Vec<usize> = f.examples.iter().map(|e| offsets[e.text] + e.word).collect();
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
            let alive = f.n_active >= rule.min_active;
            let selected = alive
                && match selection {
                    Selection::All => true,
                    // chosen from the labels by the caller
                    Selection::Taxonomy => false,
                    Selection::Semantic => {
                        open_class_fraction >= rule.min_open_class
                            && forms.len() >= rule.min_forms
                            && entropy_r.abs() < rule.max_abs_entropy_r
                    }
                };
            FeatureEvidence {
                feature: f.feature,
                n_active: f.n_active,
                mean_activation: f.mean_activation,
                open_class_fraction,
                distinct_forms: forms.len(),
                entropy_r,
                top_words,
                selected,
            }
        })
        .collect()
}

/// The live features' codes z-scored over the story words, and their Gram matrix XᵀX (= n × the
/// correlation matrix), computed once per layer and shared by every subset's PCA.
#[derive(Debug, Clone)]
pub struct ZCodes {
    /// (n_words, m) z-scored codes of `features`.
    pub x: Array2<f64>,
    /// (m, m)
    pub gram: Array2<f64>,
    /// Feature id of each column.
    pub features: Vec<usize>,
}

/// Z-scores the columns `features` of `codes` and accumulates XᵀX over fixed row blocks, each a
/// sequential faer product, summed in block order (the same result for any thread count).
pub fn zcodes(codes: ArrayView2<'_, f32>, features: &[usize]) -> ZCodes {
    let n = codes.nrows();
    let m = features.len();
    let mut x = Array2::<f64>::zeros((n, m));
    for (c, &j) in features.iter().enumerate() {
        x.column_mut(c).assign(&codes.column(j).mapv(f64::from));
    }
    zscore_columns(x.view_mut());
    let blocks: Vec<faer::Mat<f64>> = (0..n.div_ceil(COV_BLOCK))
        .into_par_iter()
        .map(|b| {
            let xb = x.slice(ndarray::s![b * COV_BLOCK..((b + 1) * COV_BLOCK).min(n), ..]);
            let fb = faer::Mat::from_fn(xb.nrows(), m, |i, j| xb[[i, j]]);
            let mut g = faer::Mat::<f64>::zeros(m, m);
            faer::linalg::matmul::matmul(
                g.as_mut(),
                faer::Accum::Replace,
                fb.transpose(),
                fb.as_ref(),
                1.0,
                faer::Par::Seq,
            );
            g
        })
        .collect();
    let mut gram = Array2::<f64>::zeros((m, m));
    for g in &blocks {
        gram.zip_mut_with(&Array2::from_shape_fn((m, m), |(i, j)| g[(i, j)]), |a, b| *a += b);
    }
    ZCodes {
        x,
        gram,
        features: features.to_vec(),
    }
}

/// Top-`k` principal-component scores (n_words, ≤ k) of the features `subset` (each must be in
/// `z.features`), each z-scored; fewer than `k` when the features span fewer non-degenerate
/// directions. Also returns the fraction of the (z-scored) variance the components explain.
pub fn pca_scores(z: &ZCodes, subset: &[usize], k: usize) -> Result<(Array2<f64>, f64)> {
    let n = z.x.nrows();
    let cols: Vec<usize> = subset
        .iter()
        .map(|f| {
            z.features
                .binary_search(f)
                .map_err(|_| Error::Invalid(format!("feature {f} is not among the live features")))
        })
        .collect::<Result<_>>()?;
    let m = cols.len();
    if m == 0 || n < 2 {
        return Ok((Array2::zeros((n, 0)), 0.0));
    }
    let total: f64 = cols.iter().map(|&c| z.gram[[c, c]]).sum();
    let cm = faer::Mat::from_fn(m, m, |i, j| z.gram[[cols[i], cols[j]]]);
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
    let xs = z.x.select(Axis(1), &cols);
    let mut scores = xs.dot(&v);
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(with = "crate::store::json_float")]
    pub loglik_base: f64,
    #[serde(with = "crate::store::json_float")]
    pub loglik_full: f64,
    #[serde(with = "crate::store::json_float")]
    pub delta_loglik: f64,
    #[serde(with = "crate::store::json_float")]
    pub chi2: f64,
    pub df: usize,
    #[serde(with = "crate::store::json_float")]
    pub p_value: f64,
    #[serde(with = "crate::store::json_float")]
    pub aic_base: f64,
    #[serde(with = "crate::store::json_float")]
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
    let full = with_columns(b, extra, extra_names);
    let full = fit_lmm(&full.y, full.x.view(), &full.names, &full.terms, &ml_options())?;
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

/// The norm block per word (METHOD.md §8): `norm` when the run has one (as [`norm_columns`]),
/// then every column of the norm-block `tables` ((name, columns) in [`WordInfo::norm_block`]
/// order), each z-scored over the words that have a value and 0 where missing, plus one missing
/// indicator per table with any missing word. Constant columns are left out (named in the log).
pub fn norm_block_columns(
    words: &[WordInfo],
    with_norm: bool,
    tables: &[(String, Vec<String>)],
) -> (Array2<f64>, Vec<String>) {
    let mut cols: Vec<Vec<f64>> = Vec::new();
    let mut names = Vec::new();
    if with_norm {
        let (c, n) = norm_columns(words);
        cols.extend(c.columns().into_iter().map(|c| c.to_vec()));
        names.extend(n);
    }
    let mut offset = 0;
    for (table, table_cols) in tables {
        let mut any_missing = vec![false; words.len()];
        for (k, col) in table_cols.iter().enumerate() {
            let v: Vec<Option<f64>> = words
                .iter()
                .map(|w| w.norm_block.get(offset + k).copied().flatten())
                .collect();
            for (m, x) in any_missing.iter_mut().zip(&v) {
                *m |= x.is_none();
            }
            let present: Vec<f64> = v.iter().flatten().copied().collect();
            let n = present.len().max(1) as f64;
            let mean = present.iter().sum::<f64>() / n;
            let sd = (present.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
            if !(sd > 0.0) {
                tracing::warn!("norm block: `{table}.{col}` is constant over the story words; left out");
                continue;
            }
            cols.push(v.iter().map(|x| x.map_or(0.0, |x| (x - mean) / sd)).collect());
            names.push(format!("{table}.{col}"));
        }
        if any_missing.iter().any(|&m| m) && any_missing.iter().any(|&m| !m) {
            cols.push(any_missing.iter().map(|&m| f64::from(u8::from(m))).collect());
            names.push(format!("{table}_missing"));
        }
        offset += table_cols.len();
    }
    let out = Array2::from_shape_fn((words.len(), cols.len()), |(i, j)| cols[j][i]);
    (out, names)
}

/// The baseline design with `extra` (n_words, q) columns appended at each row's word: the
/// reference model of a comparison "beyond" those columns.
pub fn with_columns(b: &BaseDesign, extra: ArrayView2<'_, f64>, extra_names: &[String]) -> BaseDesign {
    let (n, p0) = b.x.dim();
    let q = extra.ncols();
    let mut x = Array2::<f64>::zeros((n, p0 + q));
    x.slice_mut(ndarray::s![.., ..p0]).assign(&b.x);
    for (i, &w) in b.word_of_row.iter().enumerate() {
        x.slice_mut(ndarray::s![i, p0..]).assign(&extra.row(w));
    }
    let mut names = b.names.clone();
    names.extend(extra_names.iter().cloned());
    BaseDesign {
        word_of_row: b.word_of_row.clone(),
        y: b.y.clone(),
        x,
        names,
        terms: b.terms.clone(),
    }
}

/// Stacks per-story code matrices into (n_words, d_sae) in story order.
pub fn stack(mats: &[Array2<f32>]) -> Result<Array2<f32>> {
    let views: Vec<_> = mats.iter().map(|m| m.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Invalid(format!("codes do not stack: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(norm: Option<f64>, block: Vec<Option<f64>>) -> WordInfo {
        WordInfo {
            story: "s".into(),
            position: 0,
            text: "w".into(),
            pos: None,
            sentence: None,
            sentence_position: None,
            sentence_final: false,
            length: 1,
            log_freq: None,
            ngram_surprisal: None,
            norm,
            norm_block: block,
        }
    }

    #[test]
    fn the_norm_block_z_scores_each_column_over_the_words_that_have_it() {
        // table a: 2 columns (the second constant, left out), one word missing; table b: complete
        let words = vec![
            word(Some(1.0), vec![Some(1.0), Some(5.0), Some(2.0)]),
            word(Some(3.0), vec![Some(3.0), Some(5.0), Some(4.0)]),
            word(None, vec![None, None, Some(6.0)]),
            word(Some(5.0), vec![Some(5.0), Some(5.0), Some(8.0)]),
        ];
        let tables = vec![
            ("a".to_string(), vec!["x".to_string(), "flat".to_string()]),
            ("b".to_string(), vec!["y".to_string()]),
        ];
        let (m, names) = norm_block_columns(&words, true, &tables);
        assert_eq!(names, ["norm", "norm_missing", "a.x", "a_missing", "b.y"]);
        let sd3 = (8.0f64 / 3.0).sqrt(); // population sd of 1, 3, 5
        let col = |j: usize| m.column(j).to_vec();
        assert_eq!(col(1), [0.0, 0.0, 1.0, 0.0]);
        for (a, b) in col(2).iter().zip([-2.0 / sd3, 0.0, 0.0, 2.0 / sd3]) {
            assert!((a - b).abs() < 1e-12, "{:?}", col(2));
        }
        assert_eq!(col(3), [0.0, 0.0, 1.0, 0.0]);
        let sd4 = 5.0f64.sqrt(); // population sd of 2, 4, 6, 8
        for (a, b) in col(4).iter().zip([-3.0 / sd4, -1.0 / sd4, 1.0 / sd4, 3.0 / sd4]) {
            assert!((a - b).abs() < 1e-12, "{:?}", col(4));
        }
        // without the `norms` column and without tables
        assert_eq!(
            norm_block_columns(&words, false, &tables).1,
            ["a.x", "a_missing", "b.y"]
        );
        assert_eq!(norm_block_columns(&words, false, &[]).0.ncols(), 0);
    }

    #[test]
    fn principal_components_match_a_direct_svd_and_are_uncorrelated() {
        let mut rng = SplitMix64::new(4);
        let (n, d) = (300, 20);
        // correlated, sparse-ish non-negative codes
        let base = Array2::from_shape_simple_fn((n, 4), || rng.normal());
        let mix = Array2::from_shape_simple_fn((4, d), || rng.normal());
        let codes = base.dot(&mix).mapv(|v| (v as f32).max(0.0));
        let features: Vec<usize> = (0..d).collect();
        let z = zcodes(codes.view(), &features);
        let subset = [1usize, 3, 4, 7, 8, 11, 15, 19];
        let (scores, explained) = pca_scores(&z, &subset, 3).unwrap();
        assert_eq!(scores.dim(), (n, 3));
        // second implementation: singular values of the z-scored subset by faer's SVD
        let xs = z.x.select(Axis(1), &subset);
        let fx = faer::Mat::from_fn(n, subset.len(), |i, j| xs[[i, j]]);
        let sv = fx.singular_values().unwrap();
        let total: f64 = sv.iter().map(|s| s * s).sum();
        let top: f64 = sv.iter().take(3).map(|s| s * s).sum();
        assert!(
            (explained - top / total).abs() < 1e-10,
            "{explained} vs {}",
            top / total
        );
        // z-scored, mutually uncorrelated scores; the first is X v₁ up to scale
        let c = scores.t().dot(&scores) / n as f64;
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((c[[i, j]] - want).abs() < 1e-9, "cov[{i},{j}] = {}", c[[i, j]]);
            }
        }
        // a feature outside the live set is an error
        assert!(pca_scores(&z, &[25], 2).is_err());
    }

    #[test]
    fn the_non_semantic_pool_never_holds_a_selected_feature() {
        let alive = vec![0, 2, 3, 5, 8, 9, 11];
        let selected = vec![9, 3, 5];
        let pool = RandomPool::NonSemantic.draw_from(&alive, &selected);
        assert_eq!(pool, vec![0, 2, 8, 11]);
        for seed in 1..50 {
            let s = random_subset(&pool, selected.len(), seed);
            assert_eq!(s.len(), 3);
            assert!(s.iter().all(|f| !selected.contains(f) && alive.contains(f)), "{s:?}");
        }
        assert_eq!(RandomPool::Live.draw_from(&alive, &selected), alive);
        assert_eq!("non-semantic".parse::<RandomPool>().unwrap(), RandomPool::NonSemantic);
        assert!("semantic".parse::<RandomPool>().is_err());
    }

    #[test]
    fn random_subsets_are_distinct_sorted_and_seeded() {
        let pool: Vec<usize> = (10..60).collect();
        let a = random_subset(&pool, 12, 1);
        assert_eq!(a.len(), 12);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|v| pool.contains(v)));
        assert_eq!(a, random_subset(&pool, 12, 1));
        assert_ne!(a, random_subset(&pool, 12, 2));
        assert_eq!(random_subset(&pool, 80, 1).len(), 50);
    }
}
