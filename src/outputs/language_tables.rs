//! Cross-language tables, every row keyed by language (METHOD.md §11: the results "generalize
//! across English, Chinese and French"):
//!
//! - `languages`: per language, its stories, words, LM tokens and tokens per word (the
//!   tokenizer's cost of each language), subjects, and SAE group.
//! - `language_layers`: per (language, feature set, layer), the mean over the language's stories
//!   of the summary's mean held-out r (ROI "all"), and which layer peaks.
//! - `category_proportions` (with `[taxonomy]`): per (language, layer), the share of SAE features
//!   in each category and, among the semantic features, in each subcategory — the shape of the
//!   paper's Table 13.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{BooleanArray, Float64Array, StringArray};
use arrow::record_batch::RecordBatch;

use super::columns::{batch, finite_f64s, u16s, u32s, utf8};
use crate::dataflow::Snapshot;
use crate::report::SummaryRow;
use crate::stages::taxonomy::LayerLabels;
use crate::stages::{self, Ctx, StoredStory};
use crate::taxonomy::{Category, Subcategory};
use crate::Result;

/// One row of `languages`.
#[derive(Debug, Clone, PartialEq)]
pub struct LanguageRow {
    pub language: String,
    pub n_stories: usize,
    pub n_words: usize,
    pub n_tokens: usize,
    pub n_subjects: usize,
    /// The SAE group of the language's texts: the language itself, or "all" (one shared SAE).
    pub sae_group: String,
}

/// Per language: stories, words, tokens (the model's tokenizer on the stories as the LM stage
/// joins them), subjects.
pub fn language_rows(ctx: &Ctx, snap: &Snapshot) -> Result<Vec<LanguageRow>> {
    let (dir, _) = stages::model_identity(&ctx.plan)?;
    let tokenizer = crate::lm::extract::StoryTokenizer::open(&dir)?;
    let mut rows: BTreeMap<String, LanguageRow> = BTreeMap::new();
    let mut lang_of = BTreeMap::new();
    for (story, id) in &snap.stories {
        let st: StoredStory = ctx.store.load_json("story", id)?;
        let lang = st.story.language.clone();
        let t = tokenizer.tokenize(&st.story)?;
        let r = rows.entry(lang.clone()).or_insert_with(|| LanguageRow {
            language: lang.clone(),
            n_stories: 0,
            n_words: 0,
            n_tokens: 0,
            n_subjects: 0,
            sae_group: match ctx.plan.file.sae.per_language {
                true => lang.clone(),
                false => crate::dataflow::SHARED_SAE_GROUP.to_string(),
            },
        });
        r.n_stories += 1;
        r.n_words += st.story.words.len();
        r.n_tokens += t.ids.len();
        lang_of.insert(story.clone(), lang);
    }
    let mut subjects: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
    for (k, _) in &snap.responses {
        let (story, subject) = (&k.story, &k.subject);
        if let Some(l) = lang_of.get(story) {
            subjects.entry(l).or_default().insert(subject);
        }
    }
    for (l, s) in subjects {
        if let Some(r) = rows.get_mut(l) {
            r.n_subjects = s.len();
        }
    }
    Ok(rows.into_values().collect())
}

pub fn languages_batch(rows: &[LanguageRow]) -> Result<RecordBatch> {
    let per_word = rows.iter().map(|r| r.n_tokens as f64 / r.n_words.max(1) as f64);
    batch(vec![
        (
            "language",
            utf8(rows.iter().map(|r| r.language.clone()).collect()),
            false,
        ),
        ("n_stories", u32s(rows.iter().map(|r| r.n_stories)), false),
        ("n_words", u32s(rows.iter().map(|r| r.n_words)), false),
        ("n_tokens", u32s(rows.iter().map(|r| r.n_tokens)), false),
        (
            "tokens_per_word",
            Arc::new(Float64Array::from_iter_values(per_word)),
            false,
        ),
        ("n_subjects", u32s(rows.iter().map(|r| r.n_subjects)), false),
        (
            "sae_group",
            utf8(rows.iter().map(|r| r.sae_group.clone()).collect()),
            false,
        ),
    ])
}

/// One row of `language_layers`.
#[derive(Debug, Clone, PartialEq)]
pub struct LanguageLayerRow {
    pub language: String,
    pub feature_set: String,
    pub layer: usize,
    /// Mean over the language's stories of the summary's mean r (ROI "all").
    pub mean_r: f64,
    pub n_stories: usize,
    /// The layer with the highest `mean_r` of its (language, feature set) (ties: the lowest).
    pub peak: bool,
}

/// Mean r per (language, feature set, layer) over stories, from the summary rows (ROI "all"),
/// with the peak layer marked. Stories whose mean r is not finite are left out.
pub fn language_layer_rows(summary: &[SummaryRow]) -> Vec<LanguageLayerRow> {
    let mut acc: BTreeMap<(String, String, usize), (f64, usize)> = BTreeMap::new();
    for r in summary.iter().filter(|r| r.roi == "all" && r.mean_r.is_finite()) {
        let e = acc
            .entry((r.language.clone(), r.feature_set.to_string(), r.layer))
            .or_default();
        e.0 += r.mean_r;
        e.1 += 1;
    }
    let mut rows: Vec<LanguageLayerRow> = acc
        .into_iter()
        .map(|((language, feature_set, layer), (sum, n))| LanguageLayerRow {
            language,
            feature_set,
            layer,
            mean_r: sum / n as f64,
            n_stories: n,
            peak: false,
        })
        .collect();
    let mut best: BTreeMap<(String, String), (f64, usize)> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        let e = best
            .entry((r.language.clone(), r.feature_set.clone()))
            .or_insert((f64::NEG_INFINITY, i));
        if r.mean_r > e.0 {
            *e = (r.mean_r, i);
        }
    }
    for (_, i) in best.into_values() {
        rows[i].peak = true;
    }
    rows
}

pub fn language_layers_batch(rows: &[LanguageLayerRow]) -> Result<RecordBatch> {
    let peak = BooleanArray::from_iter(rows.iter().map(|r| Some(r.peak)));
    batch(vec![
        (
            "language",
            utf8(rows.iter().map(|r| r.language.clone()).collect()),
            false,
        ),
        (
            "feature_set",
            utf8(rows.iter().map(|r| r.feature_set.clone()).collect()),
            false,
        ),
        ("layer", u16s(rows.iter().map(|r| r.layer)), false),
        ("mean_r", finite_f64s(rows.iter().map(|r| r.mean_r)), true),
        ("n_stories", u32s(rows.iter().map(|r| r.n_stories)), false),
        ("peak", Arc::new(peak), false),
    ])
}

/// One row of `category_proportions`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProportionRow {
    pub language: String,
    pub layer: usize,
    pub category: String,
    /// None on a category row; a subcategory of "semantic" otherwise.
    pub subcategory: Option<String>,
    pub n_features: usize,
    /// Category rows: share of the layer's features; subcategory rows: share of its semantic ones.
    pub proportion: f64,
}

/// Category and subcategory shares of every (language, layer)'s labels (the labels the feature
/// sets were built from).
pub fn proportion_rows(labels: &[LayerLabels]) -> Vec<ProportionRow> {
    let mut rows = Vec::new();
    for ll in labels {
        let used = ll.used();
        let n = used.labels.len();
        let share = |k: usize, of: usize| if of > 0 { k as f64 / of as f64 } else { f64::NAN };
        let n_sem = used.labels.iter().filter(|l| l.category == Category::Semantic).count();
        for c in Category::ALL {
            let k = used.labels.iter().filter(|l| l.category == c).count();
            rows.push(ProportionRow {
                language: ll.language.clone(),
                layer: ll.layer,
                category: c.name().to_string(),
                subcategory: None,
                n_features: k,
                proportion: share(k, n),
            });
        }
        for s in Subcategory::ALL {
            let k = used
                .labels
                .iter()
                .filter(|l| l.category == Category::Semantic && l.subcategory == Some(s))
                .count();
            rows.push(ProportionRow {
                language: ll.language.clone(),
                layer: ll.layer,
                category: Category::Semantic.name().to_string(),
                subcategory: Some(s.name().to_string()),
                n_features: k,
                proportion: share(k, n_sem),
            });
        }
    }
    rows
}

pub fn proportions_batch(rows: &[ProportionRow]) -> Result<RecordBatch> {
    let sub = StringArray::from(rows.iter().map(|r| r.subcategory.clone()).collect::<Vec<_>>());
    batch(vec![
        (
            "language",
            utf8(rows.iter().map(|r| r.language.clone()).collect()),
            false,
        ),
        ("layer", u16s(rows.iter().map(|r| r.layer)), false),
        (
            "category",
            utf8(rows.iter().map(|r| r.category.clone()).collect()),
            false,
        ),
        ("subcategory", Arc::new(sub), true),
        ("n_features", u32s(rows.iter().map(|r| r.n_features)), false),
        ("proportion", finite_f64s(rows.iter().map(|r| r.proportion)), true),
    ])
}

/// The cross-language section of the report (Markdown).
pub fn markdown(langs: &[LanguageRow], layers: &[LanguageLayerRow], props: &[ProportionRow]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "\n## Languages\n");
    let _ = writeln!(
        s,
        "| language | stories | words | tokens | tokens/word | subjects | SAE |\n|---|---:|---:|---:|---:|---:|---|"
    );
    for r in langs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {} | {} |",
            r.language,
            r.n_stories,
            r.n_words,
            r.n_tokens,
            r.n_tokens as f64 / r.n_words.max(1) as f64,
            r.n_subjects,
            r.sae_group
        );
    }
    let peaks: Vec<&LanguageLayerRow> = layers.iter().filter(|r| r.peak).collect();
    if !peaks.is_empty() {
        let _ = writeln!(
            s,
            "\nPeak layer per language (mean over its stories of the mean held-out r, all ROIs):\n\n| language | feature set | peak layer | mean r | stories |\n|---|---|---:|---:|---:|"
        );
        for r in peaks {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.4} | {} |",
                r.language, r.feature_set, r.layer, r.mean_r, r.n_stories
            );
        }
    }
    if !props.is_empty() {
        let cats: Vec<&str> = Category::ALL.iter().map(|c| c.name()).collect();
        let _ = writeln!(
            s,
            "\nCategory proportions per language and layer (% of the SAE's features; Table 13 shape):\n\n| language | layer | {} |\n|---|---:|{}",
            cats.join(" | "),
            "---:|".repeat(cats.len())
        );
        let mut keys: Vec<(String, usize)> = props.iter().map(|r| (r.language.clone(), r.layer)).collect();
        keys.dedup();
        for (lang, layer) in keys {
            let cells: Vec<String> = cats
                .iter()
                .map(|c| {
                    props
                        .iter()
                        .find(|r| r.language == lang && r.layer == layer && r.category == *c && r.subcategory.is_none())
                        .map_or("–".into(), |r| format!("{:.1}", 100.0 * r.proportion))
                })
                .collect();
            let _ = writeln!(s, "| {lang} | {layer} | {} |", cells.join(" | "));
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(language: &str, story: &str, layer: usize, roi: &str, mean_r: f64) -> SummaryRow {
        SummaryRow {
            story: story.into(),
            language: language.into(),
            layer,
            feature_set: crate::features::FeatureSet::Raw,
            roi: roi.into(),
            mean_r,
            ci_lower: f64::NAN,
            t_ci_lower: f64::NAN,
            t_ci_upper: f64::NAN,
            ci_upper: f64::NAN,
            n_subjects: 3,
            ceiling_r: f64::NAN,
        }
    }

    /// A story-keyed table gains its stories' languages right after `story`; an unknown story
    /// gets "".
    #[test]
    fn story_keyed_tables_gain_a_language_column_after_story() {
        use super::super::columns::with_language;
        let b = batch(vec![
            ("story", utf8(vec!["a".into(), "b".into(), "x".into()]), false),
            ("layer", u16s([3, 3, 9].into_iter()), false),
        ])
        .unwrap();
        let langs: BTreeMap<String, String> = [("a", "en"), ("b", "zh")]
            .into_iter()
            .map(|(s, l)| (s.to_string(), l.to_string()))
            .collect();
        let out = with_language(&b, &langs).unwrap();
        let schema = out.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["story", "language", "layer"]);
        let l = out.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(l.iter().map(|v| v.unwrap()).collect::<Vec<_>>(), ["en", "zh", ""]);
    }

    #[test]
    fn the_peak_layer_is_taken_per_language_over_the_mean_of_its_stories() {
        let rows = vec![
            row("en", "a", 3, "all", 0.10),
            row("en", "b", 3, "all", 0.30),
            row("en", "a", 9, "all", 0.25),
            row("en", "b", 9, "all", 0.25),
            row("en", "a", 9, "LATL", 0.90), // ROI rows are not the "all" mean
            row("fr", "c", 3, "all", 0.05),
            row("fr", "c", 9, "all", f64::NAN),
        ];
        let out = language_layer_rows(&rows);
        let find = |l: &str, layer: usize| out.iter().find(|r| r.language == l && r.layer == layer).unwrap();
        assert!((find("en", 3).mean_r - 0.20).abs() < 1e-12);
        assert!((find("en", 9).mean_r - 0.25).abs() < 1e-12);
        assert!(find("en", 9).peak && !find("en", 3).peak);
        assert!(find("fr", 3).peak, "the only finite fr layer");
        assert!(out.iter().all(|r| !(r.language == "fr" && r.layer == 9)));
        assert_eq!(find("en", 3).n_stories, 2);
    }
}
