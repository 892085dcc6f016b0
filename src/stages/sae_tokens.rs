//! `[sae] training = "tokens"` (the default): the pipeline's SAEs trained the way
//! `cortexflow sae train` trains them, and shared by every pipeline on the same store.
//!
//! Three artifacts, each keyed only by what changes its values:
//! - `spool` (per layer): the layer's vector at every token of the `[sae] corpus` texts
//!   ([`crate::sae::build_spools`]: non-overlapping windows, BOS and the first token dropped, the
//!   last `heldout-fraction` of each text's windows held out as one contiguous span). Keyed by the
//!   model, the texts' contents and the spool settings: not by the pipeline, its stories or its
//!   other layers. The missing layers of a group are written in one pass of the LM;
//! - `sae-tokens` (per layer): the SAE trained from its spool through the shuffle buffer (Adam,
//!   dead features resampled, seed `[sae] seed` + layer), with its quality on the held-out
//!   tokens. Keyed by the spool and the training settings, so a second pipeline with the same
//!   model, corpus and `[sae]` settings trains nothing;
//! - `sae` (per pipeline group and layer): that SAE's files linked beside a `quality.json`
//!   ([`SaeRecord`]) that adds the R² on the pipeline's stimulus words, which are out of domain
//!   (never training data here). This is the artifact the rest of the pipeline reads.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{layer_rows, model_identity, topk_config, Ctx, SaeRecord, REV_SAE};
use crate::config::{DEFAULT_BUFFER_CHUNKS, DEFAULT_SPOOL_CONTEXT};
use crate::lm::{self, LanguageModel, RuntimeOptions};
use crate::sae::{self, ReluSaeTrainer, SaeTrainConfig, Spool, SpoolOptions, TrainObjective};
use crate::store::artifacts::{file_digest, ArtifactId, ArtifactStore, KeyBuilder};
use crate::{Error, Result};

const REV_SPOOL: u32 = 1;
const REV_SAE_TOKENS: u32 = 1;
/// Windows per spool chunk (≈ 8K tokens at the default context).
const CHUNK_WINDOWS: usize = 32;
/// The `sae-tokens` artifact's record of its training.
const TRAINED_FILE: &str = "trained.json";

/// What the training of a `sae-tokens` artifact gave (its `trained.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainedSae {
    pub layer: usize,
    pub seed: u64,
    pub steps: usize,
    pub resample_every: usize,
    pub resamples: usize,
    pub d_in: usize,
    pub d_sae: usize,
    /// Training and held-out tokens of the spool.
    pub n_train: usize,
    pub n_heldout: usize,
    /// Quality on the held-out tokens.
    pub r2: f64,
    pub fvu: f64,
    pub mean_l0: f64,
    pub dead_fraction: f64,
    pub dense_fraction: f64,
    pub final_loss: Option<f64>,
}

fn spool_options(ctx: &Ctx) -> SpoolOptions {
    let s = &ctx.plan.file.sae;
    SpoolOptions {
        layer: 0,
        context: s.context.unwrap_or(DEFAULT_SPOOL_CONTEXT),
        heldout_fraction: s.heldout_fraction,
        max_tokens_per_source: s.corpus_max_tokens,
        chunk_windows: CHUNK_WINDOWS,
        batch_size: ctx.plan.file.model.batch_size.max(1),
        ..SpoolOptions::default()
    }
}

/// The corpus texts of SAE group `group`: the `[sae] corpus`, which is in the first story's
/// language (with `per-language`, only that language's group has it).
fn sources(ctx: &Ctx, group: &str) -> Result<Vec<PathBuf>> {
    let plan = &ctx.plan;
    if plan.file.sae.per_language && group != plan.corpus_language() {
        return Err(Error::Invalid(format!(
            "the SAEs of `{group}` would have no training text: the [sae] corpus is in `{}` (the first \
             story's language); set per-language = false, or train `{group}`'s SAEs elsewhere and name \
             them in `pretrained`",
            plan.corpus_language()
        )));
    }
    if plan.corpus.is_empty() {
        return Err(Error::Invalid("training = \"tokens\" needs [sae] corpus texts".into()));
    }
    Ok(plan.corpus.clone())
}

fn spool_id(identity: &str, sources: &[PathBuf], digests: &[String], opts: &SpoolOptions, layer: usize) -> ArtifactId {
    let mut k = KeyBuilder::new("spool", REV_SPOOL).part("model", identity).config(
        "opts",
        &(
            opts.context,
            opts.skip_first,
            opts.heldout_fraction,
            opts.max_tokens_per_source,
            opts.chunk_windows,
        ),
    );
    for (p, d) in sources.iter().zip(digests) {
        // the file name (not its folder) and its contents: the same text elsewhere is the same spool
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        k = k.part("source", name).part("sha256", d);
    }
    k.config("layer", &layer).finish()
}

/// The spools of `layers` for SAE group `group` (see the module docs), built in one pass of the
/// LM for the layers the store lacks. Returns `(layer, spool id)` in the order of `layers`.
pub fn spool_stage(ctx: &Ctx, group: &str, layers: &[usize]) -> Result<Vec<(usize, ArtifactId)>> {
    let sources = sources(ctx, group)?;
    let digests = sources.iter().map(|p| file_digest(p)).collect::<Result<Vec<_>>>()?;
    let (model_dir, identity) = model_identity(&ctx.plan)?;
    let opts = spool_options(ctx);
    let ids: Vec<(usize, ArtifactId)> = layers
        .iter()
        .map(|&l| (l, spool_id(&identity, &sources, &digests, &opts, l)))
        .collect();
    let missing: Vec<&(usize, ArtifactId)> = ids.iter().filter(|(_, id)| !ctx.store.has("spool", id, "")).collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|(_, id)| id.as_str()).collect();
        let staging_key = KeyBuilder::new("spool-staging", REV_SPOOL)
            .config("ids", &names)
            .finish();
        let staging = ctx.store.root().join("spool-staging").join(&staging_key[..16]);
        let targets: Vec<(usize, PathBuf)> = missing
            .iter()
            .map(|(l, _)| (*l, staging.join(format!("layer-{l}"))))
            .collect();
        let deepest = missing.iter().map(|(l, _)| *l).max().unwrap_or(0);
        // the built-in model cut after the deepest layer needed (no head: the same hidden states,
        // tested bit-identical, for less compute); another model folder runs whole
        let dir = match &ctx.plan.model_dir {
            None if deepest >= 1 && deepest < ctx.plan.n_layers => lm::ensure_model(false, Some(deepest))?,
            _ => model_dir,
        };
        tracing::info!(
            "spooling {} layer(s) of `{group}` over {} corpus text(s)",
            missing.len(),
            sources.len()
        );
        // timed under the first missing layer's id: the one LM pass serves them all
        ctx.store.timed("spool", &missing[0].1, || {
            let mut model = LanguageModel::load(
                &dir,
                &RuntimeOptions {
                    threads: ctx.lm_threads,
                    prepack: ctx.plan.file.model.prepack,
                },
            )?;
            let label = format!(
                "{} ({})",
                model.manifest.architecture,
                &identity_digest(&identity)[..16]
            );
            sae::build_spools(&mut model, &label, &sources, &targets, &opts).map(|_| ())
        })?;
        for ((_, id), (_, staged)) in missing.iter().zip(&targets) {
            ctx.store.dir("spool", id, |tmp| move_files(staged, tmp))?;
        }
        let _ = std::fs::remove_dir_all(&staging);
        // the staging parent, when no other build is under way in it
        let _ = std::fs::remove_dir(ctx.store.root().join("spool-staging"));
    }
    Ok(ids)
}

fn identity_digest(identity: &str) -> String {
    KeyBuilder::new("model", 1).part("identity", identity).finish()
}

/// Moves every file of `from` into `to`.
fn move_files(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let e = e.map_err(|e| Error::io(from, e))?;
        let dst = to.join(e.file_name());
        std::fs::rename(e.path(), &dst).map_err(|err| Error::io(&dst, err))?;
    }
    Ok(())
}

/// The training settings of `layer`'s SAE from a spool of `n_train` tokens.
fn train_config(ctx: &Ctx, layer: usize, n_train: usize) -> SaeTrainConfig {
    let s = &ctx.plan.file.sae;
    let steps = match s.epochs {
        Some(e) => ((e * n_train as f64) / s.batch_size.max(1) as f64).ceil().max(1.0) as usize,
        None => s.steps,
    };
    SaeTrainConfig {
        expansion: s.expansion,
        l1: s.l1,
        lr: s.lr,
        batch_size: s.batch_size,
        steps,
        resample_every: s.token_resample_every(steps),
        seed: s.seed.wrapping_add(layer as u64),
        progress: false,
        ..SaeTrainConfig::default()
    }
}

/// Trains (or finds) `layer`'s SAE on the spool `spool` (see the module docs).
pub fn trained_sae_stage(ctx: &Ctx, layer: usize, spool: &ArtifactId) -> Result<ArtifactId> {
    let s = &ctx.plan.file.sae;
    let id = KeyBuilder::new("sae-tokens", REV_SAE_TOKENS)
        .config("cfg", &s.training_settings())
        .config("layer", &layer)
        .part("spool", spool)
        .finish();
    ctx.store.dir("sae-tokens", &id, |dir| {
        let spool = Spool::open(&ctx.store.path("spool", spool, ""))?;
        let n_train = spool.manifest.n_rows(false);
        let cfg = train_config(ctx, layer, n_train);
        let objective = match s.architecture.as_str() {
            "topk" => TrainObjective::TopK(topk_config(&ctx.plan)),
            _ => TrainObjective::L1,
        };
        let buffer = s.buffer_chunks.unwrap_or(DEFAULT_BUFFER_CHUNKS);
        let mut trainer = ReluSaeTrainer::streamed(spool.clone(), buffer, &cfg, objective)?;
        while trainer.steps_done() < cfg.steps {
            trainer.step()?;
        }
        let (model, report) = trainer.finish_sae()?;
        let meta = sae::SaeMeta {
            model_name: None,
            hook_name: Some(format!("layer {layer} residual stream, every corpus token")),
            hook_layer: Some(layer as i64),
        };
        sae::save_saelens_sae(&model, &meta, dir)?;
        let held = spool.read_split(true, usize::MAX)?;
        let q = model.quality(held.view());
        let rec = TrainedSae {
            layer,
            seed: cfg.seed,
            steps: report.steps,
            resample_every: cfg.resample_every,
            resamples: report.resamples.len(),
            d_in: model.d_in(),
            d_sae: model.d_sae(),
            n_train,
            n_heldout: held.nrows(),
            r2: q.r2,
            fvu: q.fvu,
            mean_l0: q.mean_l0,
            dead_fraction: q.dead_fraction,
            dense_fraction: q.dense_fraction,
            final_loss: report.logs.last().map(|l| l.loss),
        };
        crate::paths::write_atomic(
            &dir.join(TRAINED_FILE),
            serde_json::to_string_pretty(&rec).unwrap().as_bytes(),
        )
    })?;
    Ok(id)
}

/// The training record of a `sae-tokens` artifact.
pub fn trained_record(store: &ArtifactStore, id: &str) -> Result<TrainedSae> {
    let path = store.path("sae-tokens", id, "").join(TRAINED_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::parse(&path, "json", e.to_string()))
}

/// The pipeline's SAE of (`group`, `layer`): the SAE trained on `spool`, with its quality on the
/// held-out corpus tokens and, out of domain, on the stimulus words `stimulus` (the stories'
/// activation artifacts of this layer).
pub fn token_sae_stage(
    ctx: &Ctx,
    group: &str,
    layer: usize,
    spool: &ArtifactId,
    stimulus: &[ArtifactId],
) -> Result<ArtifactId> {
    let trained = trained_sae_stage(ctx, layer, spool)?;
    let mut k = KeyBuilder::new("sae", REV_SAE)
        .part("trained", &trained)
        .config("group", &group);
    for id in stimulus {
        k = k.part("stimulus", id);
    }
    let id = k.finish();
    ctx.store.dir("sae", &id, |dir| {
        let src = ctx.store.path("sae-tokens", &trained, "");
        for e in std::fs::read_dir(&src).map_err(|e| Error::io(&src, e))? {
            let e = e.map_err(|e| Error::io(&src, e))?;
            if e.file_name() == TRAINED_FILE {
                continue;
            }
            let dst = dir.join(e.file_name());
            // a link, not a copy: the weights are stored once however many pipelines use them
            if std::fs::hard_link(e.path(), &dst).is_err() {
                std::fs::copy(e.path(), &dst).map_err(|err| Error::io(&dst, err))?;
            }
        }
        let t = trained_record(&ctx.store, &trained)?;
        let stim = match stimulus.is_empty() {
            true => None,
            false => {
                let x = layer_rows(ctx, stimulus)?;
                let loaded = sae::load_sae(dir)?;
                loaded.check_input(x.ncols())?;
                Some((loaded.sae.quality(x.view()).r2, x.nrows()))
            }
        };
        super::warn_under_floor(ctx, group, layer, t.r2, t.mean_l0, t.dead_fraction);
        let rec = SaeRecord {
            language: group.to_string(),
            layer,
            d_in: t.d_in,
            d_sae: t.d_sae,
            n_train: t.n_train,
            n_heldout: t.n_heldout,
            r2: t.r2,
            fvu: t.fvu,
            mean_l0: t.mean_l0,
            dead_fraction: t.dead_fraction,
            dense_fraction: t.dense_fraction,
            final_loss: t.final_loss,
            training: super::TRAINING_TOKENS.into(),
            stimulus_r2: stim.map(|(r2, _)| r2),
            n_stimulus: stim.map(|(_, n)| n),
            stimulus_in_training: false,
        };
        crate::paths::write_atomic(
            &dir.join("quality.json"),
            serde_json::to_string_pretty(&rec).unwrap().as_bytes(),
        )
    })?;
    Ok(id)
}
