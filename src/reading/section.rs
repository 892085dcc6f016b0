//! The `[reading]` section of a pipeline file ([`ReadingSection`]) and its inputs, checked and
//! joined ([`load_inputs`] → [`ReadingInputs`]): word tables, reading times, parses, frequency,
//! n-gram and norm columns, all relative to the data root.
//!
//! May import: `error`, `stimulus`, and `reading`'s own [`super::inputs`] and
//! [`super::analysis`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::reading::analysis::{RandomPool, Selection, SelectionRule};
use crate::reading::inputs::{self, InputSpec, ReadingData};
use crate::{Error, Result};

/// `[reading]` of a pipeline file. Paths are relative to the data root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ReadingSection {
    #[serde(default = "default_language")]
    pub language: String,
    /// The stories' words: one row per word with story, position and word columns.
    pub words: PathBuf,
    #[serde(default = "default_story_column")]
    pub story_column: String,
    #[serde(default = "default_position_column")]
    pub position_column: String,
    #[serde(default = "default_word_column")]
    pub word_column: String,
    /// Reading times: per-subject rows or per-word means, with the same story and position columns.
    pub rts: PathBuf,
    #[serde(default = "default_rt_column")]
    pub rt_column: String,
    /// Subject column of per-subject rows; absent for per-word means.
    #[serde(default)]
    pub subject_column: Option<String>,
    /// By-subject random slopes (per-subject rows only): control names, e.g. ["lm_surprisal"].
    #[serde(default)]
    pub subject_slopes: Vec<String>,
    /// Word column of the RT file, checked against the story's word at that position ("" = none).
    #[serde(default = "default_word_column")]
    pub rt_word_column: String,
    /// Trimming: RTs outside [min-rt, max-rt] ms are left out (and counted).
    #[serde(default = "default_min_rt")]
    pub min_rt: f64,
    #[serde(default = "default_max_rt")]
    pub max_rt: f64,
    #[serde(default = "yes")]
    pub exclude_sentence_initial: bool,
    #[serde(default = "yes")]
    pub exclude_sentence_final: bool,
    /// CoNLL-X parses with `TokenId=story.position[.part]` (sentences and POS). Needed by the
    /// `semantic` feature selection.
    #[serde(default)]
    pub parses: Option<PathBuf>,
    /// Word-frequency table and its columns; `frequency-log10` for raw counts.
    pub frequency: PathBuf,
    #[serde(default = "default_word_column")]
    pub frequency_word_column: String,
    #[serde(default = "default_frequency_column")]
    pub frequency_column: String,
    #[serde(default)]
    pub frequency_log10: bool,
    /// Natural Stories n-gram table (freqs-N.tsv) for the n-gram surprisal control.
    #[serde(default)]
    pub ngram: Option<PathBuf>,
    /// Previous words whose length and frequency enter as spillover controls.
    #[serde(default = "default_spillover")]
    pub spillover: usize,
    /// Principal components of the selected SAE features added to the baseline.
    #[serde(default = "default_n_pcs")]
    pub n_pcs: usize,
    /// "taxonomy": the features the `[taxonomy]` section labels semantic (the label set of the
    /// fMRI analyses; needs `[taxonomy]`), with a comparison per other category
    /// (`category:<name>`); "semantic": a provisional rule on the story words (see
    /// src/reading/analysis.rs); "all": every live feature.
    #[serde(default = "default_features")]
    pub features: String,
    /// A feature counts as alive when active on at least this many story words.
    #[serde(default = "default_min_active")]
    pub min_active: usize,
    /// Random feature subsets (one per seed 1..=n) of the selected set's size.
    #[serde(default = "default_random_seeds")]
    pub random_seeds: usize,
    /// Where the random subsets are drawn from: "non-semantic" (the live features the selection
    /// did not pick, as the paper's random non-semantic features) or "live" (every live feature,
    /// the selected ones included). Default: "non-semantic" with `features = "semantic"`, "live"
    /// with `features = "all"` (which leaves no unselected live feature).
    #[serde(default)]
    pub random_pool: Option<String>,
    /// Word norm table (e.g. Brysbaert concreteness) compared with the baseline as a control.
    #[serde(default)]
    pub norms: Option<PathBuf>,
    #[serde(default = "default_norms_word_column")]
    pub norms_word_column: String,
    #[serde(default = "default_norms_column")]
    pub norms_column: String,
    /// The norm block (METHOD.md §8) beyond `norms`: more word-norm tables, e.g. Binder et al.'s
    /// 65 attributes or a frequency list. With any, the run adds the model "norms" (baseline +
    /// every norm) and, per layer, the SAE features' PCs over that model ("…-beyond-norms").
    /// (Not serialised when empty: the content ids of pipelines without it stay as they were.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub norm_tables: Vec<NormTableSection>,
}

/// One `[[reading.norm-tables]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NormTableSection {
    pub file: PathBuf,
    #[serde(default = "default_norms_word_column")]
    pub word_column: String,
    /// Column names; `"First..Last"` takes every column from First to Last in the file's order.
    pub columns: Vec<String>,
    /// log10 of the values (raw counts); non-positive values count as missing.
    #[serde(default)]
    pub log10: bool,
    /// The table's name in tables and reports (default: the file's stem).
    #[serde(default)]
    pub name: Option<String>,
}

fn default_language() -> String {
    "en".into()
}
fn default_story_column() -> String {
    "item".into()
}
fn default_position_column() -> String {
    "zone".into()
}
fn default_word_column() -> String {
    "word".into()
}
fn default_rt_column() -> String {
    "meanItemRT".into()
}
fn default_min_rt() -> f64 {
    100.0
}
fn default_max_rt() -> f64 {
    3000.0
}
fn yes() -> bool {
    true
}
fn default_frequency_column() -> String {
    "zipf".into()
}
fn default_spillover() -> usize {
    1
}
fn default_n_pcs() -> usize {
    50
}
fn default_features() -> String {
    "semantic".into()
}
fn default_min_active() -> usize {
    SelectionRule::default().min_active
}
fn default_random_seeds() -> usize {
    10
}
fn default_norms_word_column() -> String {
    "Word".into()
}
fn default_norms_column() -> String {
    "Conc.M".into()
}

/// The validated `[reading]` section and its joined data.
#[derive(Debug, Clone)]
pub struct ReadingInputs {
    pub section: ReadingSection,
    pub selection: Selection,
    pub random_pool: RandomPool,
    pub data: ReadingData,
    pub stories: Vec<crate::stimulus::Story>,
    /// Content id of the section and the bytes of every file it names, as they were when these
    /// inputs were read (set by `config`, which checks that no file changed while it was read;
    /// empty until then).
    pub data_id: String,
}

fn invalid(path: &Path, key: &str, msg: impl std::fmt::Display) -> Error {
    Error::parse(path, format!("`reading.{key}`"), msg.to_string())
}

/// Checks the section's parameters, reads the inputs and joins the reading times.
pub fn load_inputs(root: &Path, s: &ReadingSection, pipeline: &Path) -> Result<ReadingInputs> {
    let selection: Selection = s.features.parse().map_err(|e| invalid(pipeline, "features", e))?;
    if selection == Selection::Semantic && s.parses.is_none() {
        return Err(invalid(
            pipeline,
            "features",
            "the `semantic` selection needs `parses` (part-of-speech tags); set `parses` or use `all`",
        ));
    }
    let random_pool = match (&s.random_pool, selection) {
        (Some(p), _) => p.parse().map_err(|e| invalid(pipeline, "random-pool", e))?,
        (None, Selection::Semantic | Selection::Taxonomy) => RandomPool::NonSemantic,
        (None, Selection::All) => RandomPool::Live,
    };
    if random_pool == RandomPool::NonSemantic && selection == Selection::All {
        return Err(invalid(
            pipeline,
            "random-pool",
            "`non-semantic` needs `features = \"semantic\"` (with `all` every live feature is selected); use `live`",
        ));
    }
    if !s.subject_slopes.is_empty() && s.subject_column.is_none() {
        return Err(invalid(
            pipeline,
            "subject-slopes",
            "by-subject slopes need per-subject rows (`subject-column`)",
        ));
    }
    if s.n_pcs == 0 {
        return Err(invalid(pipeline, "n-pcs", "must be at least 1"));
    }
    if !(s.min_rt < s.max_rt) {
        return Err(invalid(pipeline, "min-rt", "must be below max-rt"));
    }
    let file = |p: &PathBuf, key: &str| -> Result<PathBuf> {
        let full = root.join(p);
        if full.is_file() {
            Ok(full)
        } else {
            Err(invalid(pipeline, key, format!("{} does not exist", full.display())))
        }
    };
    let spec = InputSpec {
        language: s.language.clone(),
        words: file(&s.words, "words")?,
        story_column: s.story_column.clone(),
        position_column: s.position_column.clone(),
        word_column: s.word_column.clone(),
        rts: file(&s.rts, "rts")?,
        rt_column: s.rt_column.clone(),
        subject_column: s.subject_column.clone(),
        rt_word_column: (!s.rt_word_column.is_empty()).then(|| s.rt_word_column.clone()),
        min_rt: s.min_rt,
        max_rt: s.max_rt,
        parses: s.parses.as_ref().map(|p| file(p, "parses")).transpose()?,
        frequency: file(&s.frequency, "frequency")?,
        frequency_word_column: s.frequency_word_column.clone(),
        frequency_column: s.frequency_column.clone(),
        frequency_log10: s.frequency_log10,
        ngram: s.ngram.as_ref().map(|p| file(p, "ngram")).transpose()?,
        norms: s.norms.as_ref().map(|p| file(p, "norms")).transpose()?,
        norms_word_column: s.norms_word_column.clone(),
        norms_column: s.norms_column.clone(),
        norm_tables: s
            .norm_tables
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let path = file(&t.file, &format!("norm-tables[{i}].file"))?;
                let name = t.name.clone().unwrap_or_else(|| {
                    t.file
                        .file_stem()
                        .map_or(format!("norms{i}"), |s| s.to_string_lossy().into_owned())
                });
                Ok(inputs::NormTableSpec {
                    name,
                    path,
                    word_column: t.word_column.clone(),
                    columns: t.columns.clone(),
                    log10: t.log10,
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let data = inputs::load(&spec)?;
    Ok(ReadingInputs {
        section: s.clone(),
        selection,
        random_pool,
        stories: data.stories.clone(),
        data,
        data_id: String::new(),
    })
}
