//! The analysis stages as pure-ish functions over the artifact store: each takes artifact ids
//! (and the validated plan), returns artifact ids, and computes only what the store lacks. The
//! dataflow (src/dataflow) wires them; tests can call them directly.
//!
//! Stages and their artifacts:
//! - `story`: a validated [`Story`] (JSON), keyed by its content;
//! - `lm`: per (story, layer) word × d_model activations (f32), plus the words' surprisal/entropy;
//! - `sae`: an SAE per layer (a folder: cfg.json + sae_weights.safetensors): trained ReLU
//!   (cortexflow folder) or TopK (SAELens folder), or a pretrained folder copied in; its quality;
//! - `spool`, `sae-tokens`, `lens-translator` ([`sae_tokens`], `[sae] training = "tokens"`): a
//!   layer's corpus-token activations, the SAE trained on them (linked into `sae`), and the
//!   tuned lens's translator between two spools;
//! - `codes`: per (story, layer) word × d_sae codes (f32);
//! - `design`: per (story, layer, feature set) TR × feature design matrix (f64, z-scored);
//! - `roi`: one subject's response table (f64 TR × ROI) with its constant-column list;
//! - `fit`: per (subject, story, layer, feature set) held-out r and chosen α per ROI (JSON);
//! - `summary`: per (layer, feature set) mean r over subjects with a bootstrap CI (JSON).
//!
//! [`voxelwise`] holds the voxelwise stages of `[voxelwise]` (`voxel-subject`, `voxel-design`,
//! `voxel-factors`, `voxel-fit`), which `cortexflow voxelwise fit` also runs.
//!
//! [`taxonomy`] holds the taxonomy's stages (labels, derived designs, prediction-error features,
//! variance partitions).
//!
//! May import: `config` and everything below it (the analyses, `store`, `sae`, `lm`, `stimulus`,
//! `stats`); no timely or differential types, never `dataflow`, `report`, `outputs`, `pipeline`
//! or `cli`.

pub mod reading;
pub mod sae_tokens;
pub mod taxonomy;
pub mod voxelwise;

use std::sync::Arc;

use ndarray::{concatenate, s, Array2, Axis};
use serde::{Deserialize, Serialize};

use crate::config::Plan;
use crate::encoding::{
    contiguous_block_folds, nested_cv_factors, nested_cv_ridge_factored, DesignTransform, Fold, NestedCvFactors,
    NestedCvOptions,
};
use crate::features::align::{words_to_trs, TrGrid};
use crate::features::FeatureSet;
use crate::lm::{self, ContextPolicy, ExtractOptions, LanguageModel, Pooling, RuntimeOptions};
use crate::sae::{self, SaeTrainConfig};
use crate::stats::{bootstrap_mean_ci, t_mean_ci};
use crate::stimulus::Story;
use crate::store::artifacts::{Arrays, ArtifactId, ArtifactStore, KeyBuilder};
use crate::{Error, Result};

/// Code revisions: bump one when its stage's output changes for the same inputs.
const REV_LM: u32 = 1;
const REV_SAE: u32 = 1;
const REV_CODES: u32 = 1;
const REV_DESIGN: u32 = 2;
const REV_FIT: u32 = 4;
const REV_FIT_WEIGHTS: u32 = 1;
const REV_SUMMARY: u32 = 2;
const REV_CONTROLS: u32 = 1;

/// Polynomial order of the drift removed from responses and designs before encoding (scanner
/// drift: the Alice time courses are not detrended at the source).
pub const DETREND_ORDER: usize = 2;

/// Fine time step (s) of the HRF convolution.
pub const HRF_DT_S: f64 = 0.1;

/// What every stage needs: the plan and the store.
#[derive(Clone)]
pub struct Ctx {
    pub plan: Arc<Plan>,
    pub store: ArtifactStore,
    /// ONNX Runtime threads per worker.
    pub lm_threads: usize,
    /// The worker's own thread pool for the numerics (set by the dataflow: each of the process's
    /// workers gets its share of the cores); `None`: rayon's global pool.
    pub pool: Option<Arc<rayon::ThreadPool>>,
    /// Reading-time inputs by reading-data id ([`reading::reading_data_id`]): the plan's, and
    /// those `watch` registers when the `[reading]` files change, so a later epoch's stages see
    /// the data its input record names. Shared by every clone of the context.
    pub reading_data: ReadingRegistry,
}

/// See [`Ctx::reading_data`].
pub type ReadingRegistry =
    Arc<std::sync::RwLock<std::collections::BTreeMap<ArtifactId, Arc<crate::reading::section::ReadingInputs>>>>;

impl Ctx {
    /// Runs `f` in the worker's thread pool (see [`Ctx::pool`]).
    pub fn install<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

/// A story as stored: its words and its fMRI grid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredStory {
    pub story: Story,
    pub n_trs: usize,
    pub tr_s: f64,
    pub t0_s: f64,
}

/// The artifact id of a story (its content key).
pub fn story_id(s: &StoredStory) -> ArtifactId {
    KeyBuilder::new("story", 1).config("story", s).finish()
}

pub fn put_story(store: &ArtifactStore, s: &StoredStory) -> Result<ArtifactId> {
    let id = story_id(s);
    store.json("story", &id, || Ok(s.clone()))?;
    Ok(id)
}

/// Stores a response table: "y" (n_trs, n_rois) and the ROI names and constant columns as metadata.
/// The artifact id of a response table (its content key).
pub fn roi_id(t: &crate::features::roi::RoiTable) -> ArtifactId {
    let mut k = KeyBuilder::new("roi", 1)
        .part("subject", &t.subject)
        .config("rois", &t.rois);
    for v in t.data.iter() {
        k = k.part("", v.to_le_bytes());
    }
    k.finish()
}

pub fn put_roi(store: &ArtifactStore, t: &crate::features::roi::RoiTable) -> Result<ArtifactId> {
    let id = roi_id(t);
    store.arrays("roi", &id, || {
        Ok(Arrays::default()
            .with_f64("y", t.data.clone())
            .with_meta("subject", t.subject.clone())
            .with_meta("rois", serde_json::to_string(&t.rois).unwrap())
            .with_meta("constant", serde_json::to_string(&t.constant).unwrap()))
    })?;
    Ok(id)
}

/// The LM identity that keys activations: model folder's manifest (source hash and importer).
pub(crate) fn model_identity(plan: &Plan) -> Result<(std::path::PathBuf, String)> {
    let dir = match &plan.model_dir {
        Some(d) => d.clone(),
        None => lm::ensure_default_model()?,
    };
    let m = lm::Manifest::load(&dir)?;
    Ok((dir, serde_json::to_string(&m).expect("manifest serialises")))
}

fn extract_options(plan: &Plan) -> Result<ExtractOptions> {
    let m = &plan.file.model;
    Ok(ExtractOptions {
        layers: plan.layers.clone(),
        pooling: m.pooling.parse::<Pooling>()?,
        window: m.window,
        min_context: m.min_context,
        batch_size: m.batch_size,
        separator: " ".into(),
        progress: false,
        context: m.context.parse::<ContextPolicy>()?,
        // the words table of every text keeps its surprisal and entropy
        surprisal: true,
    })
}

/// Activation artifact ids of one text: `(layer, id)` for every plan layer, plus the words id.
#[derive(Debug, Clone)]
pub struct LmOutputs {
    pub words: ArtifactId,
    pub layers: Vec<(usize, ArtifactId)>,
}

/// The model folder, the extraction settings and the artifact ids of one text's LM outputs under
/// `plan`: every setting that changes a value is in the ids (the model's manifest, pooling,
/// window, context policy, the text, and pre-packing when it is off).
pub fn lm_keys(plan: &Plan, story: &Story) -> Result<(std::path::PathBuf, ExtractOptions, LmOutputs)> {
    let (dir, identity) = model_identity(plan)?;
    let mut opts = extract_options(plan)?;
    opts.separator = lm::extract::word_separator(&story.language).into();
    let base = KeyBuilder::new("lm", REV_LM)
        .part("model", &identity)
        .part("pooling", opts.pooling.as_str())
        .config("window", &(opts.window, opts.min_context))
        .part("context", opts.context.as_str())
        .config("story", story);
    // without pre-packing ONNX Runtime runs other kernels (values differ in the last bits), so
    // those outputs are keyed apart; the default keeps the keys it always had
    let base = match plan.file.model.prepack {
        true => base,
        false => base.part("prepack", "off"),
    };
    let words = base.clone().part("words", "").finish();
    let layers: Vec<(usize, ArtifactId)> = opts
        .layers
        .iter()
        .map(|&l| (l, base.clone().config("layer", &l).finish()))
        .collect();
    Ok((dir, opts, LmOutputs { words, layers }))
}

/// Runs the LM over a story (or corpus text) unless all its artifacts exist. `model` is the
/// worker's lazily loaded session.
pub fn lm_stage(ctx: &Ctx, model: &mut Option<LanguageModel>, story: &Story) -> Result<LmOutputs> {
    let (dir, opts, LmOutputs { words, layers }) = lm_keys(&ctx.plan, story)?;
    let all_there = std::iter::once(&words)
        .chain(layers.iter().map(|(_, id)| id))
        .all(|id| ctx.store.has("lm", id, "safetensors"));
    if all_there {
        return Ok(LmOutputs { words, layers });
    }
    if model.is_none() {
        *model = Some(LanguageModel::load(
            &dir,
            &RuntimeOptions {
                threads: ctx.lm_threads,
                prepack: ctx.plan.file.model.prepack,
            },
        )?);
    }
    let lm = model.as_mut().expect("loaded");
    let ex = ctx.store.timed("lm", &words, || lm::extract_story(lm, story, &opts))?;
    for ((_, id), act) in layers.iter().zip(ex.activations) {
        ctx.store.put_arrays("lm", id, &Arrays::default().with_f32("x", act))?;
    }
    let n = story.words.len();
    let mut info = Array2::<f64>::zeros((n, 3)); // onset_s, surprisal_bits, entropy_bits
    for (i, w) in story.words.iter().enumerate() {
        info[[i, 0]] = w.onset_s.unwrap_or(f64::NAN);
        info[[i, 1]] = ex.surprisal_bits[i].map(f64::from).unwrap_or(f64::NAN);
        info[[i, 2]] = ex.entropy_bits[i] as f64;
    }
    ctx.store
        .put_arrays("lm", &words, &Arrays::default().with_f64("words", info))?;
    Ok(LmOutputs { words, layers })
}

/// SAE quality on held-out rows, stored next to the SAE.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SaeRecord {
    /// The SAE group: the language of its training texts with `[sae] per-language`, else `all`.
    #[serde(default)]
    pub language: String,
    pub layer: usize,
    pub d_in: usize,
    pub d_sae: usize,
    pub n_train: usize,
    pub n_heldout: usize,
    pub r2: f64,
    pub fvu: f64,
    pub mean_l0: f64,
    pub dead_fraction: f64,
    pub dense_fraction: f64,
    /// Training loss at the last step; None for a pretrained SAE.
    #[serde(default)]
    pub final_loss: Option<f64>,
    /// How it was trained: [`TRAINING_TOKENS`], [`TRAINING_WORDS`] or [`TRAINING_PRETRAINED`].
    #[serde(default = "training_words")]
    pub training: String,
    /// R² on the stimulus words (`training = "tokens"`: out of domain, never training data).
    #[serde(default)]
    pub stimulus_r2: Option<f64>,
    #[serde(default)]
    pub n_stimulus: Option<usize>,
    /// Whether the stimulus words were training data.
    #[serde(default)]
    pub stimulus_in_training: bool,
}

/// [`SaeRecord::training`] values: trained on corpus tokens (`[sae] training = "tokens"`), on
/// word vectors (`"words"`), or pretrained elsewhere.
pub const TRAINING_TOKENS: &str = "tokens";
pub const TRAINING_WORDS: &str = "words";
pub const TRAINING_PRETRAINED: &str = "pretrained";

fn training_words() -> String {
    TRAINING_WORDS.into()
}

impl SaeRecord {
    /// The record of an SAE of group `language` and `layer` (d_in, d_sae = `dims`) whose quality
    /// `q` was measured on `q.n_rows` held-out rows.
    #[allow(clippy::too_many_arguments)]
    fn new(
        language: &str,
        layer: usize,
        dims: (usize, usize),
        n_train: usize,
        q: &sae::SaeQuality,
        final_loss: Option<f64>,
        training: &str,
        stimulus_in_training: bool,
    ) -> SaeRecord {
        SaeRecord {
            language: language.to_string(),
            layer,
            d_in: dims.0,
            d_sae: dims.1,
            n_train,
            n_heldout: q.n_rows,
            r2: q.r2,
            fvu: q.fvu,
            mean_l0: q.mean_l0,
            dead_fraction: q.dead_fraction,
            dense_fraction: q.dense_fraction,
            final_loss,
            training: training.into(),
            stimulus_r2: None,
            n_stimulus: None,
            stimulus_in_training,
        }
    }

    /// Writes the record as the SAE folder's `quality.json`.
    fn write(&self, dir: &std::path::Path) -> Result<()> {
        crate::paths::write_atomic(
            &dir.join("quality.json"),
            serde_json::to_string_pretty(self).unwrap().as_bytes(),
        )
    }
}

/// Logs an SAE whose held-out R² is under the plan's floor (`[sae] min-r2`).
fn warn_under_floor(ctx: &Ctx, group: &str, layer: usize, q: &sae::SaeQuality) {
    if crate::sae::metrics::under_floor(q.r2, ctx.plan.file.sae.min_r2) {
        tracing::warn!(
            "the SAE of `{group}` layer {layer} reconstructs R² = {:.3} of the held-out activations \
             (mean L0 {:.1}, {:.0}% dead features), under the floor [sae] min-r2 = {}",
            q.r2,
            q.mean_l0,
            100.0 * q.dead_fraction,
            ctx.plan.file.sae.min_r2
        );
    }
}

pub fn sae_train_config(plan: &Plan) -> SaeTrainConfig {
    let s = &plan.file.sae;
    SaeTrainConfig {
        expansion: s.expansion,
        l1: s.l1,
        lr: s.lr,
        batch_size: s.batch_size,
        steps: s.steps,
        resample_every: s.resample_every,
        seed: s.seed,
        progress: false,
        ..SaeTrainConfig::default()
    }
}

/// Trains the layer's SAE on the given activation artifacts (sorted ids → deterministic order).
/// Every `k`-th row (k = 1 / heldout-fraction) is held out for the quality metrics.
pub fn sae_stage(ctx: &Ctx, group: &str, layer: usize, inputs: &[ArtifactId]) -> Result<ArtifactId> {
    let cfg = sae_train_config(&ctx.plan);
    let mut k = KeyBuilder::new("sae", REV_SAE)
        .config("cfg", &ctx.plan.file.sae.training_settings())
        .config("group", &group)
        .config("layer", &layer);
    for id in inputs {
        k = k.part("input", id);
    }
    let id = k.finish();
    let heldout_every = (1.0 / ctx.plan.file.sae.heldout_fraction.clamp(1e-3, 0.5)).round() as usize;
    if let Some(pattern) = &ctx.plan.file.sae.pretrained {
        return pretrained_sae_stage(ctx, group, layer, inputs, pattern);
    }
    ctx.store.dir("sae", &id, |dir| {
        let x = layer_rows(ctx, inputs)?;
        let (train_rows, held_rows): (Vec<usize>, Vec<usize>) = (0..x.nrows()).partition(|i| i % heldout_every != 0);
        let train = x.select(Axis(0), &train_rows);
        let held = x.select(Axis(0), &held_rows);
        let (model, report) = match ctx.plan.file.sae.architecture.as_str() {
            "topk" => {
                let topk = topk_config(&ctx.plan);
                let (model, report) = sae::train_topk_sae(train.view(), &cfg, &topk)?;
                let meta = sae::SaeMeta {
                    model_name: None,
                    hook_name: Some(format!("layer {layer} residual stream, word vectors")),
                    hook_layer: Some(layer as i64),
                };
                sae::save_saelens_sae(&model, &meta, dir)?;
                (model, report)
            }
            _ => {
                let (model, report) = sae::train_relu_sae(train.view(), &cfg)?;
                sae::save_relu_sae(&model, Some(&cfg), dir)?;
                (sae::Sae::from(model), report)
            }
        };
        let q = model.quality(held.view());
        warn_under_floor(ctx, group, layer, &q);
        SaeRecord::new(
            group,
            layer,
            (model.d_in(), model.d_sae()),
            train.nrows(),
            &q,
            report.logs.last().map(|l| l.loss),
            TRAINING_WORDS,
            ctx.plan.file.sae.include_stimulus,
        )
        .write(dir)
    })?;
    Ok(id)
}

/// The activation artifacts `inputs` (one layer, several texts) stacked in the given order.
fn layer_rows(ctx: &Ctx, inputs: &[ArtifactId]) -> Result<Array2<f32>> {
    let mats = inputs
        .iter()
        .map(|a| Ok(ctx.store.load_arrays("lm", a)?.f32("x")?.to_owned()))
        .collect::<Result<Vec<_>>>()?;
    let views: Vec<_> = mats.iter().map(|m| m.view()).collect();
    concatenate(Axis(0), &views).map_err(|e| Error::Invalid(e.to_string()))
}

fn topk_config(plan: &Plan) -> sae::TopKTrainConfig {
    let s = &plan.file.sae;
    let d = sae::TopKTrainConfig::default();
    sae::TopKTrainConfig {
        k: s.k.unwrap_or(d.k),
        dead_after_tokens: s.dead_after_tokens.unwrap_or(d.dead_after_tokens),
        ..d
    }
}

/// A pretrained SAE folder for `layer` copied into the store (keyed by its files' contents), with
/// its quality on all the layer's rows (none of which it was trained on here).
fn pretrained_sae_stage(
    ctx: &Ctx,
    group: &str,
    layer: usize,
    inputs: &[ArtifactId],
    pattern: &str,
) -> Result<ArtifactId> {
    let src = crate::config::pretrained_dir(&ctx.plan.data_root, pattern, layer);
    let mut k = KeyBuilder::new("sae-pretrained", REV_SAE)
        .config("group", &group)
        .config("layer", &layer);
    let mut names: Vec<_> = std::fs::read_dir(&src)
        .map_err(|e| Error::io(&src, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for n in &names {
        let p = src.join(n);
        if p.is_file() {
            k = k.part(&n.to_string_lossy(), std::fs::read(&p).map_err(|e| Error::io(&p, e))?);
        }
    }
    for id in inputs {
        k = k.part("input", id);
    }
    let id = k.finish();
    ctx.store.dir("sae", &id, |dir| {
        for n in &names {
            let p = src.join(n);
            if p.is_file() {
                std::fs::copy(&p, dir.join(n)).map_err(|e| Error::io(&p, e))?;
            }
        }
        let loaded = sae::load_sae(dir)?;
        let x = layer_rows(ctx, inputs)?;
        loaded.check_input(x.ncols())?;
        let q = loaded.sae.quality(x.view());
        SaeRecord::new(
            group,
            layer,
            (loaded.sae.d_in(), loaded.sae.d_sae()),
            0,
            &q,
            None,
            TRAINING_PRETRAINED,
            false,
        )
        .write(dir)
    })?;
    Ok(id)
}

pub fn sae_record(ctx: &Ctx, sae_id: &str) -> Result<SaeRecord> {
    let path = ctx
        .store
        .root()
        .join("sae")
        .join(&sae_id[..2])
        .join(sae_id)
        .join("quality.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::parse(&path, "json", e.to_string()))
}

/// Encodes a story's activations of one layer with that layer's SAE.
pub fn codes_stage(ctx: &Ctx, act_id: &str, sae_id: &str) -> Result<ArtifactId> {
    sae_map_stage(ctx, "codes", act_id, sae_id, "", |sae, x| sae.encode(x))
}

/// A story's activations of one layer reconstructed by that layer's SAE (the "sae-recon"
/// feature set), in the activations' own units.
pub fn recon_stage(ctx: &Ctx, act_id: &str, sae_id: &str) -> Result<ArtifactId> {
    sae_map_stage(ctx, "recon", act_id, sae_id, "", |sae, x| sae.reconstruct(x))
}

/// `f(SAE, activations)` stored as stage `stage`, keyed by the activation and SAE artifacts.
/// `variant` (when not empty) distinguishes maps of the same stage (e.g. which features an
/// ablation replaces) in the key.
pub(crate) fn sae_map_stage(
    ctx: &Ctx,
    stage: &str,
    act_id: &str,
    sae_id: &str,
    variant: &str,
    f: impl FnOnce(&sae::Sae, ndarray::ArrayView2<'_, f32>) -> Array2<f32>,
) -> Result<ArtifactId> {
    let mut key = KeyBuilder::new(stage, REV_CODES)
        .part("act", act_id)
        .part("sae", sae_id);
    if !variant.is_empty() {
        key = key.part("variant", variant);
    }
    let id = key.finish();
    ctx.store.arrays(stage, &id, || {
        let x = ctx.store.load_arrays("lm", act_id)?;
        let dir = ctx.store.root().join("sae").join(&sae_id[..2]).join(sae_id);
        let loaded = sae::load_sae(&dir)?;
        let x = x.f32("x")?;
        loaded.check_input(x.ncols())?;
        Ok(Arrays::default().with_f32("x", f(&loaded.sae, x)))
    })?;
    Ok(id)
}

/// The store kind of the word-level features a built-in feature set's design is made from:
/// "lm" (raw activations), "codes" (SAE codes), "recon" (SAE reconstructions) or "controls".
/// Sets made by other stages (derived sets, `raw+pred-error`) have none.
pub fn feature_source(set: &FeatureSet) -> Result<&'static str> {
    match set {
        FeatureSet::Raw => Ok("lm"),
        FeatureSet::Sae => Ok("codes"),
        FeatureSet::SaeRecon => Ok("recon"),
        FeatureSet::Controls => Ok("controls"),
        other => Err(Error::Invalid(format!(
            "feature set `{other}` is not designed from word-level features"
        ))),
    }
}

/// Word-level features → design (n_trs, n_design_columns) by the pipeline's alignment:
/// "hrf": HRF-convolved, TR-averaged, detrended, z-scored (n_features columns);
/// "lanczos-fir": Lanczos-downsampled to TR midpoints, detrended, z-scored, then FIR-delayed
/// (n_features × n_delays columns, delay-major; the rows shifted in at the top are 0).
/// `feature_stage` is "lm" (raw activations), "codes" (SAE codes) or "recon" (reconstructions).
pub fn design_stage(ctx: &Ctx, story_id: &str, feature_stage: &str, feature_id: &str) -> Result<ArtifactId> {
    let e = &ctx.plan.file.encoding;
    let mut key = KeyBuilder::new("design", REV_DESIGN)
        .part("story", story_id)
        .part("stage", feature_stage)
        .part("features", feature_id)
        .config("dt", &HRF_DT_S);
    if e.alignment != "hrf" {
        key = key
            .part("alignment", &e.alignment)
            .config("fir_delays", &e.fir_delays)
            .config("lanczos_window", &e.lanczos_window);
    }
    let id = key.finish();
    ctx.store.arrays("design", &id, || {
        let st: StoredStory = ctx.store.load_json("story", story_id)?;
        let onsets: Vec<f64> = st.story.words.iter().map(|w| w.onset_s.unwrap_or(f64::NAN)).collect();
        let x = ctx.store.load_arrays(feature_stage, feature_id)?;
        let x = x.f32("x")?.mapv(f64::from);
        let grid = TrGrid {
            n_trs: st.n_trs,
            tr_s: st.tr_s,
            t0_s: st.t0_s,
        };
        let d = if e.alignment == "lanczos-fir" {
            let tr_times = crate::features::lanczos::tr_mid_times_s(&grid);
            let mut d = crate::features::lanczos::lanczos_interp(x.view(), &onsets, &tr_times, e.lanczos_window, 1.0)?;
            crate::stats::detrend_columns(d.view_mut(), DETREND_ORDER);
            crate::stats::zscore_columns(d.view_mut());
            crate::features::lanczos::fir_delays(d.view(), &e.fir_delays)
        } else {
            let mut d = words_to_trs(&onsets, x.view(), &grid, HRF_DT_S);
            crate::stats::detrend_columns(d.view_mut(), DETREND_ORDER);
            crate::stats::zscore_columns(d.view_mut());
            d
        };
        Ok(Arrays::default().with_f64("x", d))
    })?;
    Ok(id)
}

/// Columns of the `controls` feature set, per word.
pub const CONTROL_COLUMNS: [&str; 3] = ["word_rate", "length", "zipf"];

/// The lexical controls of a story (feature set `controls`), per word: 1 (word rate after the
/// HRF), length in characters, and wordfreq Zipf frequency from the story language's list
/// (`[encoding] word-frequency`); a word not in the list gets the list's lowest Zipf. Stored as
/// "x" (n_words, 3), with the coverage as metadata; designed like any word features.
pub fn controls_stage(ctx: &Ctx, story_id: &str) -> Result<ArtifactId> {
    let st: StoredStory = ctx.store.load_json("story", story_id)?;
    let list = ctx.plan.word_frequency_list(&st.story.language);
    let list_bytes = std::fs::read(&list).map_err(|e| Error::io(&list, e))?;
    let id = KeyBuilder::new("controls", REV_CONTROLS)
        .part("story", story_id)
        .part("word-frequency", &list_bytes)
        .finish();
    ctx.store.arrays("controls", &id, || {
        let f = crate::stimulus::wordfreq::WordFrequencies::load(&list)?;
        let n = st.story.words.len();
        let mut x = Array2::<f32>::zeros((n, CONTROL_COLUMNS.len()));
        let mut found = 0usize;
        for (i, w) in st.story.words.iter().enumerate() {
            let z = f.zipf(&w.text);
            found += usize::from(z.is_some());
            x[[i, 0]] = 1.0;
            x[[i, 1]] = w.text.chars().filter(|c| c.is_alphanumeric()).count() as f32;
            x[[i, 2]] = z.unwrap_or(f.min_zipf) as f32;
        }
        Ok(Arrays::default()
            .with_f32("x", x)
            .with_meta("columns", serde_json::to_string(&CONTROL_COLUMNS).unwrap())
            .with_meta("words_with_frequency", found.to_string())
            .with_meta("word_frequency_list", list.display().to_string()))
    })?;
    Ok(id)
}

/// A stored response table (see [`put_roi`]) read back.
pub fn load_roi(store: &ArtifactStore, id: &str) -> Result<crate::features::roi::RoiTable> {
    let a = store.load_arrays("roi", id)?;
    let meta = |k: &str| -> Vec<String> {
        a.meta
            .get(k)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default()
    };
    Ok(crate::features::roi::RoiTable {
        subject: a.meta.get("subject").cloned().unwrap_or_default(),
        rois: meta("rois"),
        constant: meta("constant"),
        data: a.f64("y")?.to_owned(),
    })
}

/// One subject's stored responses for `design`, checked to have its TRs: (responses, ROI names,
/// indices of the ROIs that are not constant).
pub(crate) fn fit_responses(ctx: &Ctx, design: &Arrays, roi_id: &str) -> Result<(Arrays, Vec<String>, Vec<usize>)> {
    let responses = ctx.store.load_arrays("roi", roi_id)?;
    let rois: Vec<String> = serde_json::from_str(&responses.meta["rois"]).unwrap_or_default();
    let constant: Vec<String> = serde_json::from_str(&responses.meta["constant"]).unwrap_or_default();
    let (n_x, n_y) = (design.f64("x")?.nrows(), responses.f64("y")?.nrows());
    if n_x != n_y {
        return Err(Error::Invalid(format!(
            "design has {n_x} TRs but the responses have {n_y}"
        )));
    }
    let keep = (0..rois.len()).filter(|&j| !constant.contains(&rois[j])).collect();
    Ok((responses, rois, keep))
}

/// One encoding fit: per ROI held-out r and the median α chosen across outer folds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FitRecord {
    pub subject: String,
    pub rois: Vec<String>,
    /// Held-out Pearson r per ROI (mean over outer folds of the r within each test block); None for
    /// ROIs excluded as constant.
    pub r: Vec<Option<f64>>,
    pub alpha_median: Vec<Option<f64>>,
    /// Held-out R² per ROI over all tested TRs (None when excluded), from the fits whose α was
    /// chosen by inner-CV R² (`r` comes from the fits whose α was chosen by inner-CV r).
    pub r2: Vec<Option<f64>>,
    /// One-sided block-permutation p of `r` itself (the mean over outer folds of the within-fold
    /// r): within each fold's test TRs, blocks of [`PERM_BLOCK_TRS`] TRs of the predictions are
    /// shuffled, [`N_PERM`] permutations.
    pub p_value: Vec<Option<f64>>,
    pub n_trs: usize,
    pub n_features: usize,
}

/// Block length (TRs) of the permutation test on held-out r: 10 TRs = 20 s at TR 2 s, longer
/// than the HRF's main lobe, so the null keeps the autocorrelation of the BOLD signal.
pub const PERM_BLOCK_TRS: usize = 10;
/// Permutations per fit (p ≥ 1 / (N_PERM + 1)).
pub const N_PERM: usize = 1000;

/// Meta key of a design artifact naming a transform the fit applies inside each outer fold
/// (`pca:<k>`: [`DesignTransform::Pca`]); absent: the columns are z-scored per fold.
pub const FOLD_TRANSFORM_META: &str = "fold-transform";

/// The fold-wise transform a design artifact asks for ([`FOLD_TRANSFORM_META`]).
pub fn design_transform(design: &Arrays) -> Result<DesignTransform> {
    match design.meta.get(FOLD_TRANSFORM_META).map(String::as_str) {
        None => Ok(DesignTransform::Zscore),
        Some(v) => match v.strip_prefix("pca:").and_then(|k| k.parse().ok()) {
            Some(k) => Ok(DesignTransform::Pca { k }),
            None => Err(Error::Invalid(format!(
                "design artifact: unknown {FOLD_TRANSFORM_META} `{v}` (expected pca:<k>)"
            ))),
        },
    }
}

/// The artifact id of one subject's fit of one design.
fn fit_id(ctx: &Ctx, design_id: &str, roi_id: &str) -> ArtifactId {
    KeyBuilder::new("fit", REV_FIT)
        .part("design", design_id)
        .part("roi", roi_id)
        .config("encoding", &ctx.plan.file.encoding)
        .finish()
}

/// The artifact id of a fit's feature weights (see [`fit_stage`]), derived from the fit's id.
pub fn fit_weights_id(fit_id: &str) -> ArtifactId {
    KeyBuilder::new("fit-weights", REV_FIT_WEIGHTS)
        .part("fit", fit_id)
        .finish()
}

/// Stage name of the feature-weight artifacts of [`fit_stage`].
pub const FIT_WEIGHTS: &str = "fit-weights";

/// The fits of every subject (`roi_ids`, one response table each) of one design: one artifact
/// per subject, in `roi_ids`' order. The design's nested-CV factorizations (the inner and refit
/// decompositions of every outer fold) are computed once, and only if some subject's fit is not
/// in the store yet; each fit equals the one computed alone, bit for bit.
///
/// With `weights`, each subject's fit also stores (under [`FIT_WEIGHTS`], id [`fit_weights_id`])
/// the model's weight per design feature and ROI: "w" (n_features, n_rois), the standardised ridge
/// weights of the outer folds' refits at each ROI's r-chosen α, averaged over folds, and summed
/// over the FIR delays of a feature (a delayed design's column c is feature c % n_features);
/// NaN for ROIs excluded as constant. The design must keep its columns (no fold-wise PCA).
pub fn fit_stage(ctx: &Ctx, design_id: &str, roi_ids: &[&str], weights: bool) -> Result<Vec<ArtifactId>> {
    let e = &ctx.plan.file.encoding;
    let alphas = ctx.plan.alphas();
    let mut loaded: Option<(Arrays, Vec<Fold>, NestedCvOptions)> = None;
    let mut factors: Option<NestedCvFactors> = None;
    let mut ids = Vec::with_capacity(roi_ids.len());
    for roi_id in roi_ids {
        let id = fit_id(ctx, design_id, roi_id);
        let wid = weights.then(|| fit_weights_id(&id));
        let mut fit = |with_weights: bool| -> Result<(FitRecord, Option<Arrays>)> {
            if loaded.is_none() {
                let design = ctx.store.load_arrays("design", design_id)?;
                let outer = contiguous_block_folds(design.f64("x")?.nrows(), e.outer_folds, e.gap_trs)?;
                let opts = NestedCvOptions {
                    r2_predictions: true,
                    transform: design_transform(&design)?,
                    ..Default::default()
                };
                loaded = Some((design, outer, opts));
            }
            let (design, outer, opts) = loaded.as_ref().expect("loaded above");
            let opts = NestedCvOptions {
                weights: with_weights,
                ..*opts
            };
            let (roi, rois, keep) = fit_responses(ctx, design, roi_id)?;
            let x = design.f64("x")?;
            let y = roi.f64("y")?;
            fit_one(
                ctx,
                x,
                y,
                &rois,
                &keep,
                roi.meta.get("subject"),
                outer,
                &opts,
                &alphas,
                &mut factors,
            )
        };
        let mut computed_weights = None;
        ctx.store.json("fit", &id, || {
            let (rec, w) = fit(wid.is_some())?;
            computed_weights = w;
            Ok(rec)
        })?;
        if let Some(wid) = &wid {
            match computed_weights {
                Some(w) => ctx.store.put_arrays(FIT_WEIGHTS, wid, &w)?,
                // the fit was stored by a run that did not ask for weights
                None => {
                    ctx.store.arrays(FIT_WEIGHTS, wid, || {
                        fit(true)?
                            .1
                            .ok_or_else(|| Error::Invalid("fit: no weights computed".into()))
                    })?;
                }
            }
        }
        ids.push(id);
    }
    Ok(ids)
}

/// One subject's fit (see [`fit_stage`]); `factors` are the design's, computed here if `None`.
#[allow(clippy::too_many_arguments)]
fn fit_one(
    ctx: &Ctx,
    x: ndarray::ArrayView2<f64>,
    y: ndarray::ArrayView2<f64>,
    rois: &[String],
    keep: &[usize],
    subject: Option<&String>,
    outer: &[Fold],
    opts: &NestedCvOptions,
    alphas: &[f64],
    factors: &mut Option<NestedCvFactors>,
) -> Result<(FitRecord, Option<Arrays>)> {
    let e = &ctx.plan.file.encoding;
    // a lanczos-fir design holds each feature once per delay, delay-major
    let n_delays = match e.alignment.as_str() {
        "lanczos-fir" => e.fir_delays.len().max(1),
        _ => 1,
    };
    if opts.weights && x.ncols() % n_delays != 0 {
        return Err(Error::Invalid(format!(
            "fit weights: the design has {} columns, not a multiple of its {n_delays} FIR delays",
            x.ncols()
        )));
    }
    let n_features = x.ncols() / n_delays;
    let weights_of = |w: Option<&Array2<f64>>| -> Option<Arrays> {
        opts.weights.then(|| {
            let mut out = Array2::<f64>::from_elem((n_features, rois.len()), f64::NAN);
            if let Some(w) = w {
                for (k, &j) in keep.iter().enumerate() {
                    let mut col = out.column_mut(j);
                    col.fill(0.0);
                    for c in 0..w.nrows() {
                        col[c % n_features] += w[[c, k]];
                    }
                }
            }
            Arrays::default()
                .with_f64("w", out)
                .with_meta("rois", serde_json::to_string(rois).unwrap())
        })
    };
    let rois = rois.to_vec();
    let mut r = vec![None; rois.len()];
    let mut a = vec![None; rois.len()];
    let mut r2 = vec![None; rois.len()];
    let mut p_value = vec![None; rois.len()];
    if keep.is_empty() {
        let w = weights_of(None);
        return Ok((
            FitRecord {
                subject: subject.cloned().unwrap_or_default(),
                rois,
                r,
                alpha_median: a,
                r2,
                p_value,
                n_trs: x.nrows(),
                n_features: x.ncols(),
            },
            w,
        ));
    }
    let mut yk = y.select(Axis(1), keep);
    crate::stats::detrend_columns(yk.view_mut(), DETREND_ORDER);
    if factors.is_none() {
        *factors = Some(nested_cv_factors(x, outer, e.inner_folds, e.gap_trs, opts.transform)?);
    }
    let f = factors.as_ref().expect("computed above");
    let res = nested_cv_ridge_factored(f, yk.view(), alphas, opts)?;
    let obs = yk.select(Axis(0), &res.tested_rows);
    // R² from the fits whose α was chosen by inner-CV R²
    let pred_r2 = res
        .predictions_r2
        .as_ref()
        .expect("asked for R² predictions")
        .select(Axis(0), &res.tested_rows);
    let r2_tested = crate::encoding::stats::r2_per_target(pred_r2.view(), obs.view());
    // the permutation test tests the r reported: the mean over outer folds of the r within
    // each fold's test rows, blocks shuffled within each fold
    let pred = res.predictions.select(Axis(0), &res.tested_rows);
    let position: std::collections::HashMap<usize, usize> =
        res.tested_rows.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let segments: Vec<Vec<usize>> = outer
        .iter()
        .map(|f| {
            let mut t: Vec<usize> = f.test.iter().map(|i| position[i]).collect();
            t.sort_unstable();
            t
        })
        .collect();
    let seed = ctx.plan.file.summary.seed;
    let perm = crate::encoding::stats::segment_mean_permutation_test(
        pred.view(),
        obs.view(),
        &segments,
        PERM_BLOCK_TRS,
        N_PERM,
        seed,
    )?;
    for (k, &j) in keep.iter().enumerate() {
        r2[j] = r2_tested[k].is_finite().then_some(r2_tested[k]);
        p_value[j] = perm.p_values[k].is_finite().then_some(perm.p_values[k]);
        // mean over outer folds of the within-fold r: free of the offsets between folds that
        // bias an r computed over all concatenated held-out TRs
        let fold_r = res.r_per_fold.slice(s![.., k]);
        r[j] = Some(fold_r.sum() / fold_r.len() as f64);
        let mut col: Vec<f64> = res.alpha_per_fold.slice(s![.., k]).to_vec();
        col.sort_by(f64::total_cmp);
        a[j] = Some(col[col.len() / 2]);
    }
    let w = weights_of(res.weights.as_ref());
    Ok((
        FitRecord {
            subject: subject.cloned().unwrap_or_default(),
            rois,
            r,
            alpha_median: a,
            r2,
            p_value,
            n_trs: x.nrows(),
            n_features: res.n_columns_per_fold.iter().copied().max().unwrap_or(0),
        },
        w,
    ))
}

/// Mean held-out r over subjects (each subject's r averaged over its valid ROIs first), per ROI
/// and overall, with percentile-bootstrap and Student-t CIs over subjects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SummaryRecord {
    /// "all" (mean over ROIs per subject, then over subjects) or a ROI name.
    pub roi: Vec<String>,
    pub mean_r: Vec<f64>,
    pub ci_lower: Vec<f64>,
    pub ci_upper: Vec<f64>,
    /// Student-t CI of the same mean (the one to read with few subjects).
    pub t_ci_lower: Vec<f64>,
    pub t_ci_upper: Vec<f64>,
    pub n_subjects: Vec<usize>,
    pub n_boot: usize,
    pub ci_level: f64,
}

pub fn summary_stage(ctx: &Ctx, fits: &[ArtifactId]) -> Result<ArtifactId> {
    let sm = &ctx.plan.file.summary;
    let mut k = KeyBuilder::new("summary", REV_SUMMARY).config("summary", sm);
    for f in fits {
        k = k.part("fit", f);
    }
    let id = k.finish();
    ctx.store.json("summary", &id, || {
        let recs = fits
            .iter()
            .map(|f| ctx.store.load_json::<FitRecord>("fit", f))
            .collect::<Result<Vec<_>>>()?;
        let rois = recs.first().map(|r| r.rois.clone()).unwrap_or_default();
        let mut out = SummaryRecord {
            roi: vec![],
            mean_r: vec![],
            ci_lower: vec![],
            ci_upper: vec![],
            t_ci_lower: vec![],
            t_ci_upper: vec![],
            n_subjects: vec![],
            n_boot: sm.n_boot,
            ci_level: sm.ci_level,
        };
        let mut push = |name: &str, vals: Vec<f64>| {
            let ci = bootstrap_mean_ci(&vals, sm.n_boot, sm.ci_level, sm.seed);
            let (t_lo, t_hi) = t_mean_ci(&vals, sm.ci_level);
            out.roi.push(name.to_string());
            out.mean_r.push(ci.estimate);
            out.ci_lower.push(ci.lower);
            out.ci_upper.push(ci.upper);
            out.t_ci_lower.push(t_lo);
            out.t_ci_upper.push(t_hi);
            out.n_subjects.push(ci.n_units);
        };
        let per_subject: Vec<f64> = recs
            .iter()
            .map(|r| {
                let v: Vec<f64> = r.r.iter().flatten().copied().collect();
                if v.is_empty() {
                    f64::NAN
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            })
            .collect();
        push("all", per_subject);
        for (j, name) in rois.iter().enumerate() {
            push(
                name,
                recs.iter().filter_map(|r| r.r.get(j).copied().flatten()).collect(),
            );
        }
        Ok(out)
    })?;
    Ok(id)
}
