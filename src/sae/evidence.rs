//! Feature evidence: for every SAE feature, its top activating words with their context, its
//! activation density and mean — what a person, an LLM or the taxonomy stage labels features
//! from (METHOD.md §4).
//!
//! Input: codes `(n_words, d_sae)` over a sequence of texts (word-level vectors, one row per
//! word; `offsets[k]..offsets[k + 1]` are text k's rows) and the words. Output: per feature a
//! [`FeatureSummary`] and up to `top` [`Example`]s, highest activation first (ties: earlier row
//! first), each with up to `context` words on either side, never crossing into another text.
//! Deterministic for any number of rayon threads (features are independent).

use ndarray::ArrayView2;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Top examples kept per feature by default (the paper labels features from 20).
pub const DEFAULT_TOP: usize = 20;
/// Context words on each side of an example by default.
pub const DEFAULT_CONTEXT: usize = 5;

/// One top-activating occurrence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Rank among the feature's examples (1 = highest activation).
    pub rank: u32,
    /// Index of the text (into `offsets`) and of the word within it.
    pub text: usize,
    pub word: usize,
    pub activation: f32,
    pub left: Vec<String>,
    pub token: String,
    pub right: Vec<String>,
}

/// Activation statistics of one feature over all rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSummary {
    pub feature: u32,
    /// Rows on which the feature is active (> 0).
    pub n_active: usize,
    /// `n_active / n_rows`.
    #[serde(with = "crate::store::json_float")]
    pub density: f64,
    /// Mean activation over all rows (zeros included).
    #[serde(with = "crate::store::json_float")]
    pub mean_activation: f64,
    pub max_activation: f32,
    pub examples: Vec<Example>,
}

/// Evidence for every feature. `words` holds all texts' words in row order, `offsets` the text
/// boundaries (`offsets[0] = 0`, last = n_words).
pub fn feature_evidence(
    codes: ArrayView2<'_, f32>,
    words: &[String],
    offsets: &[usize],
    top: usize,
    context: usize,
) -> Vec<FeatureSummary> {
    let n = codes.nrows();
    assert_eq!(words.len(), n, "one word per row of codes");
    assert!(
        offsets.first() == Some(&0) && offsets.last() == Some(&n),
        "offsets cover the rows"
    );
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
            let n_active = active.len();
            let sum: f64 = active.iter().map(|a| a.0 as f64).sum();
            let max_activation = active.iter().map(|a| a.0).fold(0.0f32, f32::max);
            let density = active.len() as f64 / n.max(1) as f64;
            let k = top.min(active.len());
            if k > 0 {
                let cmp = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
                if k < active.len() {
                    active.select_nth_unstable_by(k - 1, cmp);
                    active.truncate(k);
                }
                active.sort_by(cmp);
            }
            let examples = active
                .iter()
                .take(k)
                .enumerate()
                .map(|(r, &(v, row))| example_at(words, offsets, context, r as u32 + 1, row, v))
                .collect();
            FeatureSummary {
                feature: j as u32,
                n_active,
                density,
                mean_activation: sum / n.max(1) as f64,
                max_activation,
                examples,
            }
        })
        .collect()
}

/// The example at `row`: its text (from `offsets`), word within the text and up to `context`
/// words each side, never crossing the text's boundaries.
fn example_at(words: &[String], offsets: &[usize], context: usize, rank: u32, row: usize, v: f32) -> Example {
    let t = offsets.partition_point(|&o| o <= row) - 1;
    let (start, end) = (offsets[t], offsets[t + 1]);
    let lo = row.saturating_sub(context).max(start);
    let hi = (row + 1 + context).min(end);
    Example {
        rank,
        text: t,
        word: row - start,
        activation: v,
        left: words[lo..row].to_vec(),
        token: words[row].clone(),
        right: words[row + 1..hi].to_vec(),
    }
}

/// Contexts for scoring a feature's explanation (`cortexflow labels score`), disjoint from the
/// `skip_top` examples a labeller saw: `activating` = the active rows ranked `skip_top + 1 ..=
/// skip_top + n` (the next strongest, ranks as in [`feature_evidence`]), `non_activating` = up to
/// `n` rows where the feature is 0, drawn uniformly without replacement with a seeded generator
/// (per feature `seed ^ feature`), in row order. Activations of non-activating contexts are 0.
pub fn scoring_contexts(
    codes: ArrayView2<'_, f32>,
    words: &[String],
    offsets: &[usize],
    skip_top: usize,
    n: usize,
    context: usize,
    seed: u64,
) -> Vec<(Vec<Example>, Vec<Example>)> {
    let rows = codes.nrows();
    assert_eq!(words.len(), rows, "one word per row of codes");
    let example = |rank: u32, row: usize, v: f32| example_at(words, offsets, context, rank, row, v);
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
            active.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let act = active
                .iter()
                .enumerate()
                .skip(skip_top)
                .take(n)
                .map(|(r, &(v, row))| example(r as u32 + 1, row, v))
                .collect();
            let mut zero: Vec<usize> = (0..rows).filter(|&i| col[i] <= 0.0).collect();
            let mut rng = crate::stats::SplitMix64::new(seed ^ j as u64);
            let take = n.min(zero.len());
            for i in 0..take {
                let k = i + rng.below((zero.len() - i) as u64) as usize;
                zero.swap(i, k);
            }
            zero.truncate(take);
            zero.sort_unstable();
            let non = zero.into_iter().map(|row| example(0, row, 0.0)).collect();
            (act, non)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn top_examples_with_context_inside_their_text() {
        // two texts: rows 0..4 and 4..6
        let words: Vec<String> = ["a", "b", "c", "d", "e", "f"].iter().map(|s| s.to_string()).collect();
        let codes = array![
            [0.0f32, 1.0],
            [3.0, 0.0],
            [0.0, 0.0],
            [3.0, 0.0],
            [5.0, 2.0],
            [0.0, 0.0]
        ];
        let ev = feature_evidence(codes.view(), &words, &[0, 4, 6], 2, 1);
        let f0 = &ev[0];
        assert!((f0.density - 0.5).abs() < 1e-12);
        assert_eq!(f0.n_active, 3);
        assert!((f0.mean_activation - 11.0 / 6.0).abs() < 1e-12);
        assert_eq!(f0.max_activation, 5.0);
        // 5.0 at row 4 (text 1, word 0: no left context across the text boundary), then the tie
        // 3.0 at rows 1 and 3 resolved to the earlier row
        assert_eq!(f0.examples.len(), 2);
        let e = &f0.examples[0];
        assert_eq!((e.rank, e.text, e.word, e.activation), (1, 1, 0, 5.0));
        assert!(e.left.is_empty());
        assert_eq!((e.token.as_str(), e.right.clone()), ("e", vec!["f".to_string()]));
        let e = &f0.examples[1];
        assert_eq!((e.text, e.word, e.token.as_str()), (0, 1, "b"));
        assert_eq!(
            (e.left.clone(), e.right.clone()),
            (vec!["a".to_string()], vec!["c".to_string()])
        );
        // scoring contexts after the top 1: feature 0's ranks 2 and 3, and zero rows 2 and 5 (its only
        // zeros besides row 0)
        let sc = scoring_contexts(codes.view(), &words, &[0, 4, 6], 1, 2, 1, 7);
        assert_eq!(
            sc[0].0.iter().map(|e| (e.rank, e.token.as_str())).collect::<Vec<_>>(),
            [(2, "b"), (3, "d")]
        );
        let mut zeros: Vec<&str> = sc[0].1.iter().map(|e| e.token.as_str()).collect();
        zeros.sort();
        assert!(
            zeros.iter().all(|w| ["a", "c", "f"].contains(w)) && zeros.len() == 2,
            "{zeros:?}"
        );
        assert!(sc[0].1.iter().all(|e| e.activation == 0.0));
        assert_eq!(
            sc,
            scoring_contexts(codes.view(), &words, &[0, 4, 6], 1, 2, 1, 7),
            "seeded"
        );
        // feature 1: two active rows, both kept
        assert_eq!(
            ev[1].examples.iter().map(|e| e.token.as_str()).collect::<Vec<_>>(),
            ["e", "a"]
        );
    }
}
