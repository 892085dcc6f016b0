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

impl TrainedSae {
    /// The held-out quality as [`sae::SaeQuality`].
    pub fn heldout_quality(&self) -> sae::SaeQuality {
        sae::SaeQuality {
            r2: self.r2,
            fvu: self.fvu,
            mean_l0: self.mean_l0,
            dead_fraction: self.dead_fraction,
            dense_fraction: self.dense_fraction,
            n_rows: self.n_heldout,
        }
    }
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
        // one LM pass of minutes over the corpus: a bar when a person watches
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
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
/// With `[taxonomy] tuned-lens`, the last layer's spool is built too (the translators' target),
/// though only `layers` are returned.
pub fn spool_stage(ctx: &Ctx, group: &str, layers: &[usize]) -> Result<Vec<(usize, ArtifactId)>> {
    let mut ids = spool_ids(ctx, group, layers)?;
    let last = ctx.plan.n_layers;
    let tuned = ctx.plan.file.taxonomy.as_ref().is_some_and(|t| t.tuned_lens);
    if tuned && !layers.contains(&last) {
        ids.extend(spool_ids(ctx, group, &[last])?);
    }
    build_missing_spools(ctx, group, &ids)?;
    ids.truncate(layers.len());
    Ok(ids)
}

/// The spool ids of `layers` for SAE group `group` (whether or not they are built).
pub fn spool_ids(ctx: &Ctx, group: &str, layers: &[usize]) -> Result<Vec<(usize, ArtifactId)>> {
    let sources = sources(ctx, group)?;
    let digests = sources.iter().map(|p| file_digest(p)).collect::<Result<Vec<_>>>()?;
    let (_, identity) = model_identity(&ctx.plan)?;
    let opts = spool_options(ctx);
    Ok(layers
        .iter()
        .map(|&l| (l, spool_id(&identity, &sources, &digests, &opts, l)))
        .collect())
}

fn build_missing_spools(ctx: &Ctx, group: &str, ids: &[(usize, ArtifactId)]) -> Result<()> {
    let sources = sources(ctx, group)?;
    let (model_dir, identity) = model_identity(&ctx.plan)?;
    let opts = spool_options(ctx);
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
    Ok(())
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
/// held-out corpus tokens. Keyed by the trained SAE and the group only, not by the stories: a
/// story added later leaves the SAE (and every code, design and fit derived from it) as it is.
/// The R² on the stimulus words is [`stimulus_r2`], computed where the stories are known.
pub fn token_sae_stage(ctx: &Ctx, group: &str, layer: usize, spool: &ArtifactId) -> Result<ArtifactId> {
    let trained = trained_sae_stage(ctx, layer, spool)?;
    let id = KeyBuilder::new("sae", REV_SAE)
        .part("trained", &trained)
        .config("group", &group)
        .finish();
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
        let q = t.heldout_quality();
        super::warn_under_floor(ctx, group, layer, &q);
        SaeRecord::new(
            group,
            layer,
            (t.d_in, t.d_sae),
            t.n_train,
            &q,
            t.final_loss,
            super::TRAINING_TOKENS,
            false,
        )
        .write(dir)
    })?;
    Ok(id)
}

/// The R² of SAE `sae_id` on the stimulus words `acts` (activation artifacts of its layer, one
/// per story) and their number of rows; cached in the store by SAE and stories.
pub fn stimulus_r2(ctx: &Ctx, sae_id: &str, acts: &[ArtifactId]) -> Result<Option<(f64, usize)>> {
    if acts.is_empty() {
        return Ok(None);
    }
    let mut k = KeyBuilder::new("sae-stimulus", 1).part("sae", sae_id);
    for a in acts {
        k = k.part("act", a);
    }
    let id = k.finish();
    let (r2, n) = ctx.store.json("sae-stimulus", &id, || {
        let x = layer_rows(ctx, acts)?;
        let loaded = sae::load_sae(&ctx.store.path("sae", sae_id, ""))?;
        loaded.check_input(x.ncols())?;
        Ok((loaded.sae.quality(x.view()).r2, x.nrows()))
    })?;
    Ok(Some((r2, n)))
}

/// A tuned-lens translator (Belrose et al. 2023) of one layer: `h ↦ [h, 1] · w`, `w` of shape
/// (d + 1, d), mapping the layer's residual stream to the last layer's, to be read out by the
/// model's final norm and head.
#[derive(Debug, Clone)]
pub struct Translator {
    pub w: ndarray::Array2<f64>,
    /// Share of the last layer's variance the translation explains on the held-out tokens.
    pub r2_heldout: f64,
}

impl Translator {
    /// Translates rows of `h` (n × d).
    pub fn apply(&self, h: ndarray::ArrayView2<'_, f32>) -> ndarray::Array2<f32> {
        let d = h.ncols();
        let hx = h.mapv(f64::from);
        let mut out = hx.dot(&self.w.slice(ndarray::s![..d, ..]));
        out += &self.w.row(d);
        out.mapv(|v| v as f32)
    }
}

/// Least-squares translator from the rows of spool `x` to those of spool `y` (same tokens):
/// `w` = argmin Σ‖y − [x, 1]·w‖² + λ‖w‖² over the training chunks, λ = 1e-8 × tr(XᵀX) / d (a
/// guard against rank deficiency, negligible otherwise), accumulated chunk by chunk in f64.
/// Belrose et al. fit theirs by gradient descent on the KL divergence to the model's output
/// distribution; least squares on the residual stream is the closed-form variant.
pub fn fit_translator(x: &Spool, y: &Spool) -> Result<Translator> {
    use ndarray::{s, Array2, Axis};
    if x.manifest.chunks.len() != y.manifest.chunks.len()
        || x.manifest
            .chunks
            .iter()
            .zip(&y.manifest.chunks)
            .any(|(a, b)| a.rows != b.rows)
    {
        return Err(Error::Invalid(
            "tuned lens: the two spools do not hold the same tokens (their chunk plans differ)".into(),
        ));
    }
    let d = x.d();
    let augment = |m: &Array2<f32>| {
        let mut a = Array2::<f64>::ones((m.nrows(), d + 1));
        a.slice_mut(s![.., ..d]).assign(&m.mapv(f64::from));
        a
    };
    let mut xtx = Array2::<f64>::zeros((d + 1, d + 1));
    let mut xty = Array2::<f64>::zeros((d + 1, y.d()));
    for i in x.manifest.chunk_ids(false) {
        let a = augment(&x.read_chunk(i)?);
        let b = y.read_chunk(i)?.mapv(f64::from);
        xtx += &a.t().dot(&a);
        xty += &a.t().dot(&b);
    }
    let lambda = 1e-8 * xtx.diag().sum() / d as f64;
    for k in 0..d {
        xtx[[k, k]] += lambda;
    }
    let w = {
        use faer::prelude::Solve;
        let a = faer::Mat::from_fn(d + 1, d + 1, |i, j| xtx[[i, j]]);
        let b = faer::Mat::from_fn(d + 1, y.d(), |i, j| xty[[i, j]]);
        let llt = a
            .llt(faer::Side::Lower)
            .map_err(|_| Error::Invalid("tuned lens: the layer's token vectors are rank-deficient".into()))?;
        let sol = llt.solve(b.as_ref());
        Array2::from_shape_fn((d + 1, y.d()), |(i, j)| sol[(i, j)])
    };
    // held-out R² of the translation (variance of the last layer around its held-out mean)
    let (mut sse, mut rows, mut sum, mut sumsq) = (0.0, 0usize, ndarray::Array1::<f64>::zeros(y.d()), 0.0);
    for i in x.manifest.chunk_ids(true) {
        let a = augment(&x.read_chunk(i)?);
        let b = y.read_chunk(i)?.mapv(f64::from);
        let e = &b - &a.dot(&w);
        sse += e.iter().map(|v| v * v).sum::<f64>();
        sumsq += b.iter().map(|v| v * v).sum::<f64>();
        sum += &b.sum_axis(Axis(0));
        rows += b.nrows();
    }
    let sst = sumsq - sum.iter().map(|v| v * v).sum::<f64>() / rows.max(1) as f64;
    Ok(Translator {
        w,
        r2_heldout: if rows > 0 && sst > 0.0 {
            1.0 - sse / sst
        } else {
            f64::NAN
        },
    })
}

/// The tuned-lens translator of `layer` for SAE group `group`, from its spool and the last
/// layer's (both built by the spool stage), cached in the store. `None` for the last layer
/// itself (the identity).
pub fn translator_stage(ctx: &Ctx, group: &str, layer: usize) -> Result<Option<Translator>> {
    let last = ctx.plan.n_layers;
    if layer == last {
        return Ok(None);
    }
    let ids = spool_ids(ctx, group, &[layer, last])?;
    let id = KeyBuilder::new("lens-translator", 1)
        .part("from", &ids[0].1)
        .part("to", &ids[1].1)
        .finish();
    let a = ctx.store.arrays("lens-translator", &id, || {
        let open = |sid: &ArtifactId| Spool::open(&ctx.store.path("spool", sid, ""));
        let t = fit_translator(&open(&ids[0].1)?, &open(&ids[1].1)?)?;
        Ok(crate::store::artifacts::Arrays::default()
            .with_f64("w", t.w)
            .with_meta("r2_heldout", t.r2_heldout.to_string()))
    })?;
    Ok(Some(Translator {
        w: a.f64("w")?.to_owned(),
        r2_heldout: a
            .meta
            .get("r2_heldout")
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2};

    /// Deterministic pseudo-random matrix.
    fn noise(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        Array2::from_shape_fn((n, d), |_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
    }

    /// A planted affine map is recovered (to the guard's shrinkage and f32 storage), the held-out
    /// R² is 1 without noise and 1 − σ²/var with noise, and `apply` is `[h, 1] · w`.
    #[test]
    fn the_translator_is_the_least_squares_affine_map_between_two_spools() {
        let (n, d) = (3000, 6);
        let x = noise(n, d, 1) * 4.0;
        let a = noise(d, d, 2).mapv(f64::from) * 2.0;
        let b = Array1::from_iter((0..d).map(|k| k as f64 - 2.5));
        let clean = x.mapv(f64::from).dot(&a) + &b;
        let tmp = tempfile::tempdir().unwrap();
        let spool = |name: &str, m: &Array2<f32>| {
            Spool::from_matrix(
                &tmp.path().join(name),
                m.slice(ndarray::s![..2500, ..]),
                Some(m.slice(ndarray::s![2500.., ..])),
                700,
                name,
            )
            .unwrap()
        };
        let sx = spool("x", &x);
        let t = fit_translator(&sx, &spool("y", &clean.mapv(|v| v as f32))).unwrap();
        for i in 0..d {
            for j in 0..d {
                assert!((t.w[[i, j]] - a[[i, j]]).abs() < 1e-5, "A[{i},{j}]");
            }
            assert!((t.w[[d, i]] - b[i]).abs() < 1e-5, "b[{i}]");
        }
        assert!(t.r2_heldout > 1.0 - 1e-9, "{}", t.r2_heldout);
        let via_apply = t.apply(x.view());
        let direct = x.mapv(f64::from).dot(&t.w.slice(ndarray::s![..d, ..])) + &t.w.row(d);
        assert!(via_apply
            .iter()
            .zip(direct.iter())
            .all(|(p, q)| (f64::from(*p) - q).abs() < 1e-4 * (1.0 + q.abs())));

        // with noise of sd σ the held-out R² is about 1 − σ² / var(y)
        let e = noise(n, d, 3).mapv(f64::from) * 2.0; // uniform(−1, 1): variance 1/3
        let noisy = &clean + &e;
        let t = fit_translator(&sx, &spool("yn", &noisy.mapv(|v| v as f32))).unwrap();
        let held = noisy.slice(ndarray::s![2500.., ..]);
        let var_y: f64 = held.var_axis(ndarray::Axis(0), 0.0).sum();
        let expected = 1.0 - d as f64 / 3.0 / var_y;
        assert!((t.r2_heldout - expected).abs() < 0.02, "{} vs {expected}", t.r2_heldout);
    }
}
