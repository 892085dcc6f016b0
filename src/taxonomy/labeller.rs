//! The built-in labeller: documented, testable criteria computed from each feature's evidence
//! (its top activating words over the evidence texts, METHOD.md §4).
//!
//! Per feature, over the evidence words (one row of codes per word):
//! - **PREDICTION**: Pearson r between the activation and the next-token entropy at each word
//!   ≥ `prediction_r` (default 0.5, the paper's threshold);
//! - **SYNTACTIC**: ≥ `syntactic_share` (0.6) of the top examples are closed-class words, and
//!   they have at least 2 distinct forms (a feature firing on one function word only is LEXICAL);
//! - **LEXICAL**: the most frequent form takes ≥ `lexical_share` (0.6) of the top examples, or a
//!   3-letter suffix shared by ≥ 2 distinct forms does;
//! - **SEMANTIC**: at least `min_content_forms` (3) distinct open-class forms among the top
//!   examples, whose mean pairwise cosine of static input embeddings is ≥ `semantic_z` (2)
//!   standard deviations above that of random sets of as many open-class forms of the evidence
//!   vocabulary (the null is drawn once per set size, seeded);
//! - **OTHER**: none of these, or fewer than `min_active` (5) active words.
//! The first criterion met in that order (prediction, syntactic, lexical, semantic) decides the
//! hard label. Soft labels: per category a strength in [0, 1] (entropy r; closed-class share;
//! max(form, suffix) share; coherence z / (2 · semantic_z)), OTHER = 1 − the largest, then
//! normalized to sum 1.
//!
//! Subcategories (SEMANTIC features only): each distinct top form with norm or seed coverage
//! scores every subcategory ([`super::lexicon::Norms::word_scores`]); the feature's scores are
//! the means over covered forms, and the best subcategory is assigned when at least
//! `min_norm_coverage` (2) forms are covered and its score is ≥ `subcategory_min` (0.3); ties go
//! to the earlier subcategory.

use std::collections::{BTreeMap, HashMap};

use ndarray::ArrayView2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::lexicon::{normalize, Lexicon};
use super::{Category, Evidence, FeatureLabel, LabelSet, Subcategory};
use crate::sae::evidence::{feature_evidence, FeatureSummary};
use crate::stats::{pearson, SplitMix64};

/// The labeller's thresholds (defaults as documented in the module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LabellerConfig {
    pub top: usize,
    pub context: usize,
    pub min_active: usize,
    pub prediction_r: f64,
    pub syntactic_share: f64,
    pub lexical_share: f64,
    pub semantic_z: f64,
    pub min_content_forms: usize,
    pub null_draws: usize,
    pub subcategory_min: f64,
    pub min_norm_coverage: usize,
    pub seed: u64,
}

impl Default for LabellerConfig {
    fn default() -> Self {
        LabellerConfig {
            top: 20,
            context: 5,
            min_active: 5,
            prediction_r: 0.5,
            syntactic_share: 0.6,
            lexical_share: 0.6,
            semantic_z: 2.0,
            min_content_forms: 3,
            null_draws: 1000,
            subcategory_min: 0.3,
            min_norm_coverage: 2,
            seed: 0,
        }
    }
}

/// Unit-length, mean-centred static embeddings of normalized word forms.
#[derive(Debug, Clone, Default)]
pub struct WordVectors {
    index: HashMap<String, usize>,
    vectors: Vec<Vec<f32>>,
}

impl WordVectors {
    /// From forms and their raw embeddings (rows): rows are centred on their mean (removing the
    /// direction all embeddings share) and scaled to unit length; zero rows are dropped.
    pub fn new(forms: Vec<String>, raw: ArrayView2<'_, f32>) -> Self {
        let mean = raw.mean_axis(ndarray::Axis(0)).unwrap_or_default();
        let mut wv = WordVectors::default();
        for (f, row) in forms.into_iter().zip(raw.rows()) {
            if row.iter().all(|v| *v == 0.0) {
                continue;
            }
            let v: Vec<f32> = row.iter().zip(mean.iter()).map(|(a, m)| a - m).collect();
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 0.0 {
                wv.index.insert(f, wv.vectors.len());
                wv.vectors.push(v.into_iter().map(|x| x / n).collect());
            }
        }
        wv
    }

    pub fn get(&self, form: &str) -> Option<&[f32]> {
        self.index.get(form).map(|&i| self.vectors[i].as_slice())
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }
}

fn mean_pairwise_cosine(vs: &[&[f32]]) -> f64 {
    let mut sum = 0.0;
    let mut n = 0usize;
    for i in 0..vs.len() {
        for j in i + 1..vs.len() {
            sum += vs[i].iter().zip(vs[j]).map(|(a, b)| (a * b) as f64).sum::<f64>();
            n += 1;
        }
    }
    sum / n.max(1) as f64
}

/// Mean and SD of the mean pairwise cosine of `m` random distinct forms from `pool`, per m.
fn coherence_null(
    pool: &[&[f32]],
    sizes: impl Iterator<Item = usize>,
    draws: usize,
    seed: u64,
) -> BTreeMap<usize, (f64, f64)> {
    let mut out = BTreeMap::new();
    for m in sizes {
        if m < 2 || m > pool.len() {
            continue;
        }
        let mut rng = SplitMix64::new(seed ^ (m as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        let vals: Vec<f64> = (0..draws)
            .map(|_| {
                // partial Fisher–Yates: the first m entries are a uniform m-subset
                for k in 0..m {
                    let j = k + rng.below((idx.len() - k) as u64) as usize;
                    idx.swap(k, j);
                }
                let vs: Vec<&[f32]> = idx[..m].iter().map(|&i| pool[i]).collect();
                mean_pairwise_cosine(&vs)
            })
            .collect();
        let mu = vals.iter().sum::<f64>() / vals.len() as f64;
        let sd = (vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / (vals.len() - 1).max(1) as f64).sqrt();
        out.insert(m, (mu, sd));
    }
    out
}

/// What the labeller reads.
pub struct LabelInputs<'a> {
    /// Codes, one row per evidence word.
    pub codes: ArrayView2<'a, f32>,
    /// The evidence words as written, in row order.
    pub words: &'a [String],
    /// Text boundaries over the rows (examples never cross them).
    pub offsets: &'a [usize],
    /// Next-token entropy (bits) at each word; NaN where unknown.
    pub entropy_bits: &'a [f64],
    /// Which entropy that is ("logit-lens" or "model output").
    pub entropy_kind: &'a str,
    pub vectors: &'a WordVectors,
    pub lexicon: &'a Lexicon,
}

/// Labels every feature; deterministic for any number of threads.
pub fn label_features(inp: &LabelInputs<'_>, cfg: &LabellerConfig, layer: usize) -> (LabelSet, Vec<FeatureSummary>) {
    let evidence = feature_evidence(inp.codes, inp.words, inp.offsets, cfg.top, cfg.context);
    let norm_words: Vec<String> = inp.words.iter().map(|w| normalize(w)).collect();
    // null pool: distinct open-class forms of the evidence vocabulary that have a vector
    let mut pool_forms: Vec<&String> = norm_words
        .iter()
        .filter(|w| !w.is_empty() && !inp.lexicon.closed.contains(w))
        .collect();
    pool_forms.sort();
    pool_forms.dedup();
    let pool: Vec<&[f32]> = pool_forms.iter().filter_map(|w| inp.vectors.get(w)).collect();
    let null = coherence_null(&pool, cfg.min_content_forms.max(2)..=cfg.top, cfg.null_draws, cfg.seed);
    let entropy_ok: Vec<usize> = (0..inp.entropy_bits.len())
        .filter(|&i| inp.entropy_bits[i].is_finite())
        .collect();
    let entropy: Vec<f64> = entropy_ok.iter().map(|&i| inp.entropy_bits[i]).collect();

    let labels: Vec<FeatureLabel> = evidence
        .par_iter()
        .map(|fs| {
            let col = inp.codes.column(fs.feature as usize);
            let n = col.len().max(1) as f64;
            let mean = col.iter().map(|v| *v as f64).sum::<f64>() / n;
            let variance = col.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
            let mut ev = Evidence {
                n_active: fs.n_active,
                variance,
                ..Default::default()
            };
            if fs.n_active >= cfg.min_active && entropy.len() > 2 {
                let a: Vec<f64> = entropy_ok.iter().map(|&i| col[i] as f64).collect();
                let r = pearson(&a, &entropy);
                ev.entropy_r = r.is_finite().then_some(r);
            }
            let forms: Vec<&str> = fs
                .examples
                .iter()
                .map(|e| norm_words[offset_row(inp.offsets, e.text, e.word)].as_str())
                .collect();
            let k = forms.len().max(1) as f64;
            let mut form_counts: BTreeMap<&str, usize> = BTreeMap::new();
            for f in &forms {
                *form_counts.entry(f).or_default() += 1;
            }
            ev.form_share = form_counts.values().copied().max().unwrap_or(0) as f64 / k;
            let mut suffixes: BTreeMap<String, (usize, std::collections::BTreeSet<&str>)> = BTreeMap::new();
            for f in &forms {
                let chars: Vec<char> = f.chars().collect();
                if chars.len() >= 5 {
                    let suf: String = chars[chars.len() - 3..].iter().collect();
                    let e = suffixes.entry(suf).or_default();
                    e.0 += 1;
                    e.1.insert(f);
                }
            }
            if let Some((suf, (c, _))) = suffixes
                .iter()
                .filter(|(_, (_, set))| set.len() >= 2)
                .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(b.0.cmp(a.0)))
            {
                ev.affix = suf.clone();
                ev.affix_share = *c as f64 / k;
            }
            let closed: Vec<&str> = forms
                .iter()
                .copied()
                .filter(|f| inp.lexicon.closed.contains(f))
                .collect();
            ev.closed_share = closed.len() as f64 / k;
            let mut cf = closed.clone();
            cf.sort();
            cf.dedup();
            ev.closed_forms = cf.len();
            let mut content: Vec<&str> = forms
                .iter()
                .copied()
                .filter(|f| !f.is_empty() && !inp.lexicon.closed.contains(f))
                .collect();
            content.sort();
            content.dedup();
            ev.content_forms = content.len();
            let vs: Vec<&[f32]> = content.iter().filter_map(|f| inp.vectors.get(f)).collect();
            if vs.len() >= cfg.min_content_forms {
                if let Some((mu, sd)) = null.get(&vs.len()) {
                    if *sd > 0.0 {
                        ev.coherence_z = Some((mean_pairwise_cosine(&vs) - mu) / sd);
                    }
                }
            }
            // subcategory evidence
            let mut sub_sum = [0.0; 5];
            for f in &content {
                if let Some(s) = inp.lexicon.norms.word_scores(f) {
                    ev.norm_coverage += 1;
                    for j in 0..5 {
                        sub_sum[j] += s[j];
                    }
                }
            }
            let sub_scores = if ev.norm_coverage > 0 {
                sub_sum.map(|v| v / ev.norm_coverage as f64)
            } else {
                [0.0; 5]
            };
            decide(fs.feature, ev, sub_scores, cfg)
        })
        .collect();
    (
        LabelSet {
            source: "builtin".into(),
            layer,
            entropy_kind: inp.entropy_kind.to_string(),
            labels,
        },
        evidence,
    )
}

fn offset_row(offsets: &[usize], text: usize, word: usize) -> usize {
    offsets[text] + word
}

/// The hard label, soft confidences and subcategory from a feature's criteria values.
pub fn decide(feature: u32, ev: Evidence, sub_scores: [f64; 5], cfg: &LabellerConfig) -> FeatureLabel {
    let enough = ev.n_active >= cfg.min_active;
    let r = ev.entropy_r.unwrap_or(0.0);
    let lex = ev.form_share.max(ev.affix_share);
    let z = ev.coherence_z.unwrap_or(f64::NEG_INFINITY);
    let syn_ok = ev.closed_share >= cfg.syntactic_share && ev.closed_forms >= 2;
    let sem_ok = ev.content_forms >= cfg.min_content_forms && z >= cfg.semantic_z;
    let category = if !enough {
        Category::Other
    } else if r >= cfg.prediction_r {
        Category::Prediction
    } else if syn_ok {
        Category::Syntactic
    } else if lex >= cfg.lexical_share {
        Category::Lexical
    } else if sem_ok {
        Category::Semantic
    } else {
        Category::Other
    };
    let mut conf = if enough {
        [
            (z / (2.0 * cfg.semantic_z)).clamp(0.0, 1.0),
            if ev.closed_forms >= 2 { ev.closed_share } else { 0.0 },
            lex,
            r.clamp(0.0, 1.0),
            0.0,
        ]
    } else {
        [0.0; 5]
    };
    conf[4] = 1.0 - conf[..4].iter().cloned().fold(0.0, f64::max);
    let total: f64 = conf.iter().sum();
    let confidence = conf.map(|c| c / total);
    let subcategory = if category == Category::Semantic && ev.norm_coverage >= cfg.min_norm_coverage {
        let mut best = 0;
        for j in 1..5 {
            if sub_scores[j] > sub_scores[best] {
                best = j;
            }
        }
        (sub_scores[best] >= cfg.subcategory_min).then_some(Subcategory::ALL[best])
    } else {
        None
    };
    FeatureLabel {
        feature,
        category,
        confidence,
        subcategory,
        subcategory_scores: sub_scores,
        evidence: ev,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Evidence {
        Evidence {
            n_active: 30,
            ..Default::default()
        }
    }

    #[test]
    fn criteria_in_order_of_precedence() {
        let cfg = LabellerConfig::default();
        let mut e = ev();
        e.entropy_r = Some(0.62);
        e.closed_share = 0.9;
        e.closed_forms = 4;
        assert_eq!(decide(0, e.clone(), [0.0; 5], &cfg).category, Category::Prediction);
        e.entropy_r = Some(0.2);
        assert_eq!(decide(0, e.clone(), [0.0; 5], &cfg).category, Category::Syntactic);
        e.closed_forms = 1; // one function word only: lexical
        e.form_share = 0.9;
        assert_eq!(decide(0, e.clone(), [0.0; 5], &cfg).category, Category::Lexical);
        let mut e = ev();
        e.content_forms = 8;
        e.coherence_z = Some(3.1);
        e.norm_coverage = 4;
        let l = decide(0, e.clone(), [0.2, 0.1, 0.7, 0.3, 0.0], &cfg);
        assert_eq!(
            (l.category, l.subcategory),
            (Category::Semantic, Some(Subcategory::Affect))
        );
        assert!((l.confidence.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        e.coherence_z = Some(1.0);
        assert_eq!(decide(0, e.clone(), [0.0; 5], &cfg).category, Category::Other);
        let mut few = ev();
        few.n_active = 2;
        few.entropy_r = Some(0.9);
        assert_eq!(decide(0, few, [0.0; 5], &cfg).category, Category::Other);
    }
}
