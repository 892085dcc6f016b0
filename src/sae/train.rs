//! Training a ReLU SAE with Adam and dead-feature resampling (Anthropic, "Towards
//! Monosemanticity", 2023; input normalisation as SAELens' `expected_average_only_in`).
//!
//! Input: activations `x (n_tokens, d_in)` f32, one row per token (or word). Output: a
//! [`ReluSae`] (decoder rows unit-norm, `input_scale` set) and a [`TrainReport`].
//!
//! Recipe, step by step:
//! 1. `input_scale = sqrt(d_in / mean_rows ‖x‖²)`, so normalised rows have E‖x‖² = d_in; the
//!    loss and λ ([`SaeTrainConfig::l1`]) refer to these normalised rows.
//! 2. `b_dec` = geometric median (Weiszfeld) of up to 8192 sampled normalised rows; decoder rows
//!    random unit vectors; `W_enc = W_decᵀ`; `b_enc = 0`.
//! 3. Each step draws `batch_size` rows from a seeded shuffle (reshuffled every epoch), computes
//!    `L = mean ‖x − x̂‖² + λ Σ_j f_j ‖W_dec_j‖` and its gradient by hand
//!    ([`ReluSae::loss_and_grad`]), removes from each decoder row's gradient its component
//!    parallel to the row, takes an Adam step (β₁ 0.9, β₂ 0.999, ε 1e-8; learning rate warmed up
//!    linearly over `warmup_steps`), and rescales decoder rows to unit norm.
//! 4. Every `resample_every` steps, features that did not fire since the previous resampling are
//!    re-initialised: rows of a random subset of the data (at most 16 batches) are scored by their
//!    squared reconstruction error, one row per dead feature is drawn with probability ∝ error²,
//!    the feature's decoder row becomes that row's centred direction, its encoder column the same
//!    direction scaled to 0.2 × the mean encoder norm of live features, its bias 0, and its Adam
//!    moments are reset.
//!
//! TopK SAEs ([`train_topk_sae`], Gao et al. 2024, "Scaling and evaluating sparse
//! autoencoders") share steps 1–3 (same input scale, initialisation, sampler, Adam, decoder
//! projection and warm-up) but minimise `mean ‖x − x̂‖²` with codes restricted to the `k` largest
//! ReLU pre-activations, plus the AuxK term on dead latents ([`ReluSae::topk_loss_and_grad`]);
//! `l1` and resampling are not used. A feature is dead once it has not fired for more than
//! [`TopKTrainConfig::dead_after_tokens`] rows (EleutherAI sparsify's `dead_feature_threshold`).
//!
//! BatchTopK and Matryoshka BatchTopK SAEs ([`train_batch_topk_sae`]) share the TopK recipe with
//! the batch-wide selection of [`super::batchtopk`] (k per row on average), the nested-prefix
//! loss when level widths are given, and the inference threshold θ as a moving average of the
//! smallest kept code; they finish as JumpReLU SAEs.
//!
//! Numerics are f32 with f64 accumulation of sums over rows. Results are bit-identical for a
//! given seed on any number of rayon threads (fixed block boundaries, sequential faer kernels per
//! block, ordered combination of partial sums).

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, Array, Array1, Array2, ArrayView2, Axis, Dimension};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use super::config::{BatchTopKTrainConfig, SaeTrainConfig, SaeTrainConfigError, TopKTrainConfig};
use super::linalg::{for_each_in_row, gemm, par_rows_mut, par_rows_mut_map, zeros, REDUCE_ROWS};
use super::model::{Sae, SaeKind};
use super::relu::{forward_backward, AuxK, Objective, ReluSae, ReluSaeGrad, SaeLoss, StepKernels, Workspace};
use super::spool::Spool;
use super::stream::SpoolStream;
use crate::stats::SplitMix64;
use crate::{Error, Result};

const ADAM_BETA1: f32 = 0.9;
const ADAM_BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;
/// Rows used for the geometric-median initialisation of `b_dec`.
const MEDIAN_ROWS: usize = 8192;
/// Batches of rows scored when resampling dead features.
const RESAMPLE_BATCHES: usize = 16;

/// Means over one logging interval (normalised units).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainLog {
    /// Steps completed at the end of the interval.
    pub step: usize,
    /// Rows processed so far (steps × batch_size).
    pub tokens_seen: u64,
    /// Learning rate of the interval's last step.
    pub lr: f32,
    pub loss: f64,
    /// Mean ‖x − x̂‖² per row.
    pub mse: f64,
    /// Mean Σ_j f_j ‖W_dec_j‖ per row (= mean ‖f‖₁).
    pub sparsity: f64,
    /// Mean number of active features per row.
    pub l0: f64,
    /// Fraction of features that fired on no row of the interval's batches.
    pub dead_fraction: f64,
    /// TopK only: mean AuxK error ‖ê − (x − x̂)‖² per row (0 when no feature was dead).
    #[serde(default)]
    pub aux: f64,
}

/// One dead-feature resampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResampleEvent {
    /// Steps completed when it happened.
    pub step: usize,
    /// Features that had not fired since the previous resampling (all were re-initialised).
    pub n_dead: usize,
    /// Rows scored to draw the new directions.
    pub n_rows_scored: usize,
}

/// What happened during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub n_tokens: usize,
    pub d_in: usize,
    pub d_sae: usize,
    pub input_scale: f32,
    pub steps: usize,
    pub logs: Vec<TrainLog>,
    pub resamples: Vec<ResampleEvent>,
    /// BatchTopK only: the inference threshold θ (normalised units): the mean smallest kept code
    /// over batches encoded with the final weights, or the running average of the smallest kept
    /// code when `threshold_batches` is 0; `None` otherwise.
    #[serde(default)]
    pub threshold: Option<f32>,
    /// BatchTopK only: the running average of the smallest kept code at the end of training
    /// (SAELens' θ), when θ was re-estimated from the final weights.
    #[serde(default)]
    pub threshold_ema: Option<f32>,
    /// Wall-clock seconds of the training loop (not deterministic, unlike everything else).
    pub elapsed_s: f64,
    /// Rows per second of the training loop.
    pub tokens_per_s: f64,
}

/// Trains a ReLU SAE on `x (n_tokens, d_in)`; see the module docs for the recipe.
pub fn train_relu_sae(x: ArrayView2<'_, f32>, cfg: &SaeTrainConfig) -> Result<(ReluSae, TrainReport)> {
    let mut trainer = ReluSaeTrainer::new(x, cfg)?;
    while trainer.steps_done() < cfg.steps {
        trainer.step()?;
    }
    Ok(trainer.finish())
}

/// Trains a TopK SAE on `x (n_tokens, d_in)`: the shared recipe of [`train_relu_sae`] (input
/// scale, initialisation, batches, Adam, unit-norm decoder rows, warm-up, seed) with the TopK
/// objective and the AuxK dead-latent term (see the module docs). `cfg.l1` and
/// `cfg.resample_every` are ignored. The result has [`SaeKind::TopK`].
pub fn train_topk_sae(
    x: ArrayView2<'_, f32>,
    cfg: &SaeTrainConfig,
    topk: &TopKTrainConfig,
) -> Result<(Sae, TrainReport)> {
    let mut trainer = ReluSaeTrainer::with_objective(x, cfg, TrainObjective::TopK(topk.clone()))?;
    while trainer.steps_done() < cfg.steps {
        trainer.step()?;
    }
    trainer.finish_sae()
}

/// Trains a BatchTopK SAE on `x (n_tokens, d_in)` — a Matryoshka BatchTopK SAE when
/// `batch.matryoshka_widths` is not empty — with the recipe of [`train_topk_sae`] (`topk.k` is
/// the mean number of active features per row of a batch). The result has [`SaeKind::JumpRelu`]
/// with the learnt threshold θ for every feature ([`TrainReport::threshold`]).
pub fn train_batch_topk_sae(
    x: ArrayView2<'_, f32>,
    cfg: &SaeTrainConfig,
    topk: &TopKTrainConfig,
    batch: &BatchTopKTrainConfig,
) -> Result<(Sae, TrainReport)> {
    let objective = TrainObjective::BatchTopK(topk.clone(), batch.clone());
    let mut trainer = ReluSaeTrainer::with_objective(x, cfg, objective)?;
    while trainer.steps_done() < cfg.steps {
        trainer.step()?;
    }
    trainer.finish_sae()
}

/// What the trainer minimises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TrainObjective {
    /// ReLU codes, L1 penalty `cfg.l1`, resampling every `cfg.resample_every` steps.
    L1,
    /// TopK codes with the AuxK dead-latent term.
    TopK(TopKTrainConfig),
    /// BatchTopK codes (`k` per row on average over a batch) with the AuxK term; Matryoshka
    /// BatchTopK when the second part names level widths ([`super::batchtopk`]).
    BatchTopK(TopKTrainConfig, BatchTopKTrainConfig),
}

/// Where the trainer's rows come from.
enum Rows<'a> {
    /// An in-memory matrix and a seeded shuffle of its rows.
    Memory { x: ArrayView2<'a, f32>, sampler: Sampler },
    /// A spool on disk, through a bounded shuffle buffer.
    Stream(Box<SpoolStream>),
}

impl Rows<'_> {
    fn n_rows(&self) -> usize {
        match self {
            Rows::Memory { x, .. } => x.nrows(),
            Rows::Stream(s) => s.n_rows(),
        }
    }

    /// The next batch into `dst`, scaled and centred.
    fn next_batch(
        &mut self,
        dst: ndarray::ArrayViewMut2<'_, f32>,
        idx: &mut Vec<usize>,
        scale: f32,
        b_dec: &Array1<f32>,
    ) -> Result<()> {
        match self {
            Rows::Memory { x, sampler } => {
                sampler.next_batch(dst.nrows(), idx);
                gather_centred(dst, *x, idx, scale, b_dec);
                Ok(())
            }
            Rows::Stream(s) => s.next_batch(dst, scale, b_dec.as_slice().expect("b_dec contiguous")),
        }
    }

    /// Rows from which resampling draws candidates: all rows in memory, or the stream's buffer.
    fn pool(&self) -> ArrayView2<'_, f32> {
        match self {
            Rows::Memory { x, .. } => x.view(),
            Rows::Stream(s) => s.buffer(),
        }
    }
}

/// Adam moments of every parameter.
struct Adam {
    t: i32,
    m_w_enc: Array2<f32>,
    v_w_enc: Array2<f32>,
    m_b_enc: Array1<f32>,
    v_b_enc: Array1<f32>,
    m_w_dec: Array2<f32>,
    v_w_dec: Array2<f32>,
    m_b_dec: Array1<f32>,
    v_b_dec: Array1<f32>,
}

fn adam_update<D: Dimension>(
    p: &mut Array<f32, D>,
    g: &Array<f32, D>,
    m: &mut Array<f32, D>,
    v: &mut Array<f32, D>,
    lr: f32,
    t: i32,
) {
    let bc1 = 1.0 - ADAM_BETA1.powi(t);
    let bc2 = 1.0 - ADAM_BETA2.powi(t);
    let step = lr / bc1;
    let inv_bc2 = 1.0 / bc2;
    const CHUNK: usize = 8192;
    let p = p.as_slice_mut().expect("parameter in standard layout");
    let g = g.as_slice().expect("gradient in standard layout");
    let m = m.as_slice_mut().expect("contiguous");
    let v = v.as_slice_mut().expect("contiguous");
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            super::simd::adam(p, g, m, v, ADAM_BETA1, ADAM_BETA2, step, inv_bc2, ADAM_EPS);
        });
}

impl Adam {
    fn new(d_in: usize, d_sae: usize) -> Self {
        Adam {
            t: 0,
            m_w_enc: zeros(d_in, d_sae),
            v_w_enc: zeros(d_in, d_sae),
            m_b_enc: Array1::zeros(d_sae),
            v_b_enc: Array1::zeros(d_sae),
            m_w_dec: zeros(d_sae, d_in),
            v_w_dec: zeros(d_sae, d_in),
            m_b_dec: Array1::zeros(d_in),
            v_b_dec: Array1::zeros(d_in),
        }
    }

    fn step(&mut self, sae: &mut ReluSae, g: &ReluSaeGrad, lr: f32) {
        self.t = self.t.saturating_add(1);
        let t = self.t;
        adam_update(&mut sae.w_enc, &g.w_enc, &mut self.m_w_enc, &mut self.v_w_enc, lr, t);
        adam_update(&mut sae.b_enc, &g.b_enc, &mut self.m_b_enc, &mut self.v_b_enc, lr, t);
        adam_update(&mut sae.w_dec, &g.w_dec, &mut self.m_w_dec, &mut self.v_w_dec, lr, t);
        adam_update(&mut sae.b_dec, &g.b_dec, &mut self.m_b_dec, &mut self.v_b_dec, lr, t);
    }

    /// Forgets the moments of feature `j` (its encoder column, encoder bias and decoder row).
    fn reset_feature(&mut self, j: usize) {
        self.m_w_enc.column_mut(j).fill(0.0);
        self.v_w_enc.column_mut(j).fill(0.0);
        self.m_b_enc[j] = 0.0;
        self.v_b_enc[j] = 0.0;
        self.m_w_dec.row_mut(j).fill(0.0);
        self.v_w_dec.row_mut(j).fill(0.0);
    }
}

/// The seeds derived from the configured one: SAE initialisation, batch order, and the draws
/// (median rows, resampling).
struct Seeds {
    init: u64,
    shuffle: u64,
    rng: u64,
}

impl Seeds {
    fn new(seed: u64) -> Self {
        let mut master = SplitMix64::new(seed);
        Seeds {
            init: master.next_u64(),
            shuffle: master.next_u64(),
            rng: master.next_u64(),
        }
    }
}

/// Row indices from a seeded shuffle, reshuffled at the end of every epoch.
struct Sampler {
    perm: Vec<usize>,
    pos: usize,
    rng: SplitMix64,
}

impl Sampler {
    fn new(n: usize, seed: u64) -> Self {
        let mut s = Sampler {
            perm: (0..n).collect(),
            pos: 0,
            rng: SplitMix64::new(seed),
        };
        s.shuffle();
        s
    }

    fn shuffle(&mut self) {
        shuffle(&mut self.perm, &mut self.rng);
        self.pos = 0;
    }

    fn next_batch(&mut self, b: usize, out: &mut Vec<usize>) {
        out.clear();
        while out.len() < b {
            if self.pos == self.perm.len() {
                self.shuffle();
            }
            let take = (b - out.len()).min(self.perm.len() - self.pos);
            out.extend_from_slice(&self.perm[self.pos..self.pos + take]);
            self.pos += take;
        }
    }
}

/// Fisher–Yates.
fn shuffle(v: &mut [usize], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// `k` distinct indices of `0..n` drawn uniformly (partial Fisher–Yates), in draw order.
fn sample_rows(n: usize, k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let k = k.min(n);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx
}

/// Fills `dst` with rows `idx` of `x`, times `scale`, minus `b_dec`.
fn gather_centred(
    dst: ndarray::ArrayViewMut2<'_, f32>,
    x: ArrayView2<'_, f32>,
    idx: &[usize],
    scale: f32,
    b_dec: &Array1<f32>,
) {
    let b_dec = b_dec.as_slice().expect("b_dec contiguous");
    par_rows_mut(dst, |r, d| {
        for_each_in_row(x.row(idx[r]), |k, v| d[k] = v * scale - b_dec[k])
    });
}

/// Geometric median of the rows of `pts (k, d)` by Weiszfeld's iteration, started at the mean.
fn geometric_median(pts: ArrayView2<'_, f32>) -> Array1<f32> {
    let (k, d) = pts.dim();
    let weighted_mean = |w: &[f64]| -> Vec<f64> {
        let partials: Vec<(Vec<f64>, f64)> = pts
            .axis_chunks_iter(Axis(0), REDUCE_ROWS)
            .into_par_iter()
            .enumerate()
            .map(|(c, blk)| {
                let mut acc = vec![0.0f64; d];
                let mut wsum = 0.0f64;
                for (r, row) in blk.rows().into_iter().enumerate() {
                    let wi = w[c * REDUCE_ROWS + r];
                    wsum += wi;
                    for (a, &v) in acc.iter_mut().zip(row.iter()) {
                        *a += wi * v as f64;
                    }
                }
                (acc, wsum)
            })
            .collect();
        let mut total = vec![0.0f64; d];
        let mut wtot = 0.0f64;
        for (p, ws) in partials {
            wtot += ws;
            for (t, v) in total.iter_mut().zip(p) {
                *t += v;
            }
        }
        total.iter().map(|v| v / wtot).collect()
    };
    let mut y = weighted_mean(&vec![1.0; k]);
    for _ in 0..100 {
        let w: Vec<f64> = pts
            .axis_iter(Axis(0))
            .into_par_iter()
            .map(|row| {
                let dist = row
                    .iter()
                    .zip(&y)
                    .map(|(&v, &c)| (v as f64 - c).powi(2))
                    .sum::<f64>()
                    .sqrt();
                1.0 / dist.max(1e-8)
            })
            .collect();
        let next = weighted_mean(&w);
        let shift = next.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
        let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
        y = next;
        if shift <= 1e-6 * (norm + 1e-6) {
            break;
        }
    }
    y.into_iter().map(|v| v as f32).collect()
}

/// Running means of one logging interval.
#[derive(Default, Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LogAcc {
    steps: usize,
    loss: f64,
    mse: f64,
    sparsity: f64,
    l0: f64,
    aux: f64,
}

/// A training run that can be advanced step by step (used by [`train_relu_sae`] and
/// [`train_topk_sae`]; also lets callers inspect or edit the SAE between steps).
pub struct ReluSaeTrainer<'a> {
    rows: Rows<'a>,
    /// Identifies the data in checkpoints (rows, width, input scale; the spool's sources).
    data_id: String,
    cfg: SaeTrainConfig,
    objective: TrainObjective,
    /// BatchTopK: the loss's level widths (`[d_sae]` without Matryoshka levels) and the moving
    /// average θ of the smallest kept code (the inference threshold).
    levels: Vec<usize>,
    threshold: f64,
    /// BatchTopK: the running average when θ was re-estimated from the final weights.
    threshold_ema: Option<f64>,
    /// Per feature: rows since it last fired (TopK dead-latent tracking).
    tokens_since_fired: Vec<u64>,
    dead: Vec<bool>,
    sae: ReluSae,
    adam: Adam,
    grad: ReluSaeGrad,
    ws: Workspace,
    batch_idx: Vec<usize>,
    rng: SplitMix64,
    step: usize,
    /// Per feature: fired since the last resampling (or the start).
    window_fired: Vec<bool>,
    /// Per feature: fired during the current logging interval.
    log_fired: Vec<bool>,
    acc: LogAcc,
    logs: Vec<TrainLog>,
    resamples: Vec<ResampleEvent>,
    progress: ProgressBar,
    start: Instant,
    /// Seconds spent before the last restore from a checkpoint.
    elapsed_before: f64,
}

impl<'a> ReluSaeTrainer<'a> {
    /// Validates `cfg` and `x (n_tokens, d_in)`, computes the input scale and initialises the SAE.
    pub fn new(x: ArrayView2<'a, f32>, cfg: &SaeTrainConfig) -> Result<Self> {
        Self::with_objective(x, cfg, TrainObjective::L1)
    }

    /// A trainer on the in-memory rows `x (n_tokens, d_in)` for either objective.
    pub fn with_objective(x: ArrayView2<'a, f32>, cfg: &SaeTrainConfig, objective: TrainObjective) -> Result<Self> {
        cfg.check()?;
        let (n, d_in) = x.dim();
        if n == 0 || d_in == 0 {
            return Err(Error::Invalid(format!(
                "SAE training needs at least one row and one column, found activations of shape ({n}, {d_in})"
            )));
        }
        if let Some((row, col)) = first_non_finite(x) {
            return Err(Error::Invalid(format!(
                "SAE training input holds a non-finite value at row {row}, column {col}"
            )));
        }
        let sq = super::linalg::sum_rows_f64(x, |r| r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>());
        let seeds = Seeds::new(cfg.seed);
        let mut rng = SplitMix64::new(seeds.rng);
        let picked = sample_rows(n, MEDIAN_ROWS, &mut rng);
        let mut pts = zeros(picked.len(), d_in);
        pts.outer_iter_mut()
            .zip(&picked)
            .for_each(|(mut p, &i)| p.assign(&x.row(i)));
        let rows = Rows::Memory {
            x,
            sampler: Sampler::new(n, seeds.shuffle),
        };
        Self::build(
            rows,
            sq / n as f64,
            pts,
            rng,
            seeds.init,
            cfg,
            objective,
            "in-memory rows".into(),
        )
    }

    /// A trainer on a spool's training rows, read through a shuffle buffer of `buffer_chunks`
    /// chunks (see [`SpoolStream`]): memory is bounded by the buffer and the SAE, not the corpus.
    /// One pass over the spool computes the input scale and samples the rows for `b_dec`.
    pub fn streamed(
        spool: Spool,
        buffer_chunks: usize,
        cfg: &SaeTrainConfig,
        objective: TrainObjective,
    ) -> Result<Self> {
        cfg.check()?;
        let seeds = Seeds::new(cfg.seed);
        let stream = SpoolStream::new(spool, buffer_chunks, seeds.shuffle)?;
        let n = stream.n_rows();
        let mut rng = SplitMix64::new(seeds.rng);
        let mut picked = sample_rows(n, MEDIAN_ROWS, &mut rng);
        picked.sort_unstable();
        let (mean_sq, pts) = stream.scan(&picked)?;
        let m = &stream.spool().manifest;
        let data_id =
            serde_json::to_string(&(&m.model, m.layer, m.context, &m.sources)).expect("spool identity serialises");
        Self::build(
            Rows::Stream(Box::new(stream)),
            mean_sq,
            pts,
            rng,
            seeds.init,
            cfg,
            objective,
            data_id,
        )
    }

    /// Steps 1–2 of the module docs: input scale from the mean squared row norm, `b_dec` from
    /// the geometric median of the sampled raw rows `pts` (normalised), random unit decoder rows.
    #[allow(clippy::too_many_arguments)]
    fn build(
        rows: Rows<'a>,
        mean_sq: f64,
        mut pts: Array2<f32>,
        rng: SplitMix64,
        init_seed: u64,
        cfg: &SaeTrainConfig,
        objective: TrainObjective,
        data_id: String,
    ) -> Result<Self> {
        let (n, d_in) = (rows.n_rows(), pts.ncols());
        let d_sae = d_in
            .checked_mul(cfg.expansion)
            .ok_or_else(|| Error::Invalid(format!("d_sae = {d_in} × {} overflows", cfg.expansion)))?;
        let levels = match &objective {
            TrainObjective::L1 => vec![],
            TrainObjective::TopK(topk) => {
                topk.check(d_sae)?;
                vec![]
            }
            TrainObjective::BatchTopK(topk, batch) => {
                topk.check(d_sae)?;
                batch.levels(d_sae, topk.k)?
            }
        };
        if mean_sq <= 0.0 || !mean_sq.is_finite() {
            return Err(Error::Invalid(format!(
                "SAE training input cannot be normalised: mean squared row norm is {mean_sq} (all zeros or overflowing)"
            )));
        }
        let input_scale = (d_in as f64 / mean_sq).sqrt() as f32;
        pts.mapv_inplace(|v| v * input_scale);
        let b_dec = geometric_median(pts.view());
        let sae = ReluSae::init(d_in, d_sae, b_dec, input_scale, init_seed);

        let progress = if cfg.progress {
            let pb = ProgressBar::new(cfg.steps as u64);
            if let Ok(style) = ProgressStyle::with_template("SAE {bar:40} {pos}/{len} steps {per_sec} eta {eta} {msg}")
            {
                pb.set_style(style);
            }
            pb
        } else {
            ProgressBar::hidden()
        };
        let arch = match &objective {
            TrainObjective::L1 => "ReLU",
            TrainObjective::TopK(_) => "TopK",
            TrainObjective::BatchTopK(_, b) if b.matryoshka_widths.is_empty() => "BatchTopK",
            TrainObjective::BatchTopK(..) => "Matryoshka BatchTopK",
        };
        tracing::info!(n_tokens = n, d_in, d_sae, input_scale, arch, "training SAE");
        Ok(ReluSaeTrainer {
            rows,
            data_id: format!("{data_id} | n {n} | d {d_in} | scale {:08x}", input_scale.to_bits()),
            cfg: cfg.clone(),
            objective,
            levels,
            threshold: 0.0,
            threshold_ema: None,
            tokens_since_fired: vec![0; d_sae],
            dead: vec![false; d_sae],
            sae,
            adam: Adam::new(d_in, d_sae),
            grad: ReluSaeGrad::zeros(d_in, d_sae),
            ws: Workspace::new(cfg.batch_size, d_in, d_sae),
            batch_idx: Vec::with_capacity(cfg.batch_size),
            rng,
            step: 0,
            window_fired: vec![false; d_sae],
            log_fired: vec![false; d_sae],
            acc: LogAcc::default(),
            logs: vec![],
            resamples: vec![],
            progress,
            start: Instant::now(),
            elapsed_before: 0.0,
        })
    }

    /// The SAE as trained so far.
    pub fn sae(&self) -> &ReluSae {
        &self.sae
    }

    /// Mutable access to the SAE (shapes must not change).
    pub fn sae_mut(&mut self) -> &mut ReluSae {
        &mut self.sae
    }

    /// Steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Fraction of features that have not fired since the last resampling (or the start).
    pub fn window_dead_fraction(&self) -> f64 {
        self.window_fired.iter().filter(|f| !**f).count() as f64 / self.sae.d_sae as f64
    }

    /// One training step (plus logging and, on schedule, resampling). Returns the batch's loss
    /// before the update.
    pub fn step(&mut self) -> Result<SaeLoss> {
        assert_eq!(
            (self.sae.d_in, self.sae.d_sae),
            (self.rows.pool().ncols(), self.window_fired.len()),
            "ReluSaeTrainer: the SAE's shape was changed"
        );
        let b = self.cfg.batch_size;
        self.rows.next_batch(
            self.ws.xc.view_mut(),
            &mut self.batch_idx,
            self.sae.input_scale,
            &self.sae.b_dec,
        )?;
        let objective = match &self.objective {
            TrainObjective::L1 => Objective::L1(self.cfg.l1),
            TrainObjective::TopK(t) | TrainObjective::BatchTopK(t, _) => {
                for (d, &s) in self.dead.iter_mut().zip(&self.tokens_since_fired) {
                    *d = s > t.dead_after_tokens;
                }
                let auxk = Some(AuxK {
                    dead: &self.dead,
                    k_aux: t.aux_k.unwrap_or(self.sae.d_in / 2).max(1),
                    coef: t.aux_coef,
                });
                if matches!(self.objective, TrainObjective::TopK(_)) {
                    Objective::TopK { k: t.k, auxk }
                } else {
                    Objective::BatchTopK {
                        k: t.k,
                        auxk,
                        levels: &self.levels,
                    }
                }
            }
        };
        let loss = forward_backward(&self.sae, &mut self.ws, &objective, &mut self.grad, StepKernels::Auto);
        if let TrainObjective::BatchTopK(_, b) = &self.objective {
            if loss.min_kept > 0.0 {
                self.threshold = (1.0 - b.threshold_lr) * self.threshold + b.threshold_lr * loss.min_kept;
            }
        }
        for (((w, l), s), &c) in self
            .window_fired
            .iter_mut()
            .zip(self.log_fired.iter_mut())
            .zip(self.tokens_since_fired.iter_mut())
            .zip(&self.ws.fired)
        {
            *w |= c > 0;
            *l |= c > 0;
            *s = if c > 0 { 0 } else { s.saturating_add(b as u64) };
        }

        // keep decoder rows on the unit sphere: drop the radial part of their gradient
        let w_dec = &self.sae.w_dec;
        par_rows_mut(self.grad.w_dec.view_mut(), |j, gs| {
            let w = w_dec.row(j);
            let ws = w.as_slice().expect("standard layout");
            let nn = super::relu::dot(ws, ws);
            if nn > 0.0 {
                let c = super::relu::dot(gs, ws) / nn;
                super::relu::axpy(-c, ws, gs);
            }
        });
        let lr = self.cfg.lr_at(self.step);
        self.adam.step(&mut self.sae, &self.grad, lr);
        self.sae.normalize_decoder_rows();
        self.step += 1;

        self.acc.steps += 1;
        self.acc.loss += loss.loss;
        self.acc.mse += loss.mse;
        self.acc.sparsity += loss.sparsity;
        self.acc.l0 += loss.l0;
        self.acc.aux += loss.aux;
        if self.step.is_multiple_of(self.cfg.log_every) || self.step == self.cfg.steps {
            self.push_log(lr);
        }
        if self.objective == TrainObjective::L1
            && self.cfg.resample_every > 0
            && self.step.is_multiple_of(self.cfg.resample_every)
            && self.step < self.cfg.steps
        {
            self.resample_dead();
        }
        self.progress.inc(1);
        Ok(loss)
    }

    fn push_log(&mut self, lr: f32) {
        let k = self.acc.steps.max(1) as f64;
        let dead = self.log_fired.iter().filter(|f| !**f).count() as f64 / self.sae.d_sae as f64;
        let log = TrainLog {
            step: self.step,
            tokens_seen: self.step as u64 * self.cfg.batch_size as u64,
            lr,
            loss: self.acc.loss / k,
            mse: self.acc.mse / k,
            sparsity: self.acc.sparsity / k,
            l0: self.acc.l0 / k,
            dead_fraction: dead,
            aux: self.acc.aux / k,
        };
        tracing::debug!(
            step = log.step,
            loss = log.loss,
            mse = log.mse,
            l0 = log.l0,
            dead = log.dead_fraction,
            "SAE"
        );
        self.progress.set_message(format!(
            "loss {:.4} mse {:.4} L0 {:.1} dead {:.3}",
            log.loss, log.mse, log.l0, dead
        ));
        self.logs.push(log);
        self.acc = LogAcc::default();
        self.log_fired.iter_mut().for_each(|f| *f = false);
    }

    /// Re-initialises every feature that has not fired since the last resampling (see the
    /// module docs) and starts a new window.
    pub fn resample_dead(&mut self) -> ResampleEvent {
        let dead: Vec<usize> = (0..self.sae.d_sae).filter(|&j| !self.window_fired[j]).collect();
        self.window_fired.iter_mut().for_each(|f| *f = false);
        let pool = self.rows.pool();
        let n = pool.nrows();
        let b = self.cfg.batch_size;
        if dead.is_empty() {
            let ev = ResampleEvent {
                step: self.step,
                n_dead: 0,
                n_rows_scored: 0,
            };
            self.resamples.push(ev.clone());
            return ev;
        }
        let rows = sample_rows(n, RESAMPLE_BATCHES * b, &mut self.rng);

        // squared reconstruction error of each scored row (normalised units)
        let chunk = b.min(rows.len());
        let mut xc = zeros(chunk, self.sae.d_in);
        let mut f = zeros(chunk, self.sae.d_sae);
        let mut e = zeros(chunk, self.sae.d_in);
        let mut err: Vec<f64> = Vec::with_capacity(rows.len());
        for idx in rows.chunks(chunk) {
            let r = idx.len();
            gather_centred(
                xc.slice_mut(s![..r, ..]),
                pool,
                idx,
                self.sae.input_scale,
                &self.sae.b_dec,
            );
            self.sae
                .encode_centred_into(f.slice_mut(s![..r, ..]), xc.slice(s![..r, ..]));
            gemm(
                e.slice_mut(s![..r, ..]),
                f.slice(s![..r, ..]),
                self.sae.w_dec.view(),
                false,
            );
            let xc = &xc;
            let part: Vec<f64> = par_rows_mut_map(e.slice_mut(s![..r, ..]), |i, e| {
                let x = xc.row(i);
                e.iter()
                    .zip(x.as_slice().expect("standard layout"))
                    .map(|(&a, &b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
            });
            err.extend(part);
        }
        let mut cum = Vec::with_capacity(err.len());
        let mut total = 0.0f64;
        for v in &err {
            total += if total.is_finite() { v * v } else { 0.0 };
            cum.push(total);
        }
        let uniform = !(total > 0.0 && total.is_finite());

        // mean encoder norm of live features
        let mut col_sq = vec![0.0f64; self.sae.d_sae];
        for row in self.sae.w_enc.rows() {
            for (c, &v) in col_sq.iter_mut().zip(row.iter()) {
                *c += (v as f64) * (v as f64);
            }
        }
        let is_dead = {
            let mut m = vec![false; self.sae.d_sae];
            dead.iter().for_each(|&j| m[j] = true);
            m
        };
        let live: Vec<f64> = (0..self.sae.d_sae)
            .filter(|&j| !is_dead[j])
            .map(|j| col_sq[j].sqrt())
            .collect();
        let enc_norm = if live.is_empty() {
            1.0
        } else {
            live.iter().sum::<f64>() / live.len() as f64
        } as f32
            * 0.2;

        let d_in = self.sae.d_in;
        for &j in &dead {
            let pick = if uniform {
                self.rng.below(rows.len() as u64) as usize
            } else {
                let u = self.rng.next_f64() * total;
                cum.partition_point(|&c| c <= u).min(rows.len() - 1)
            };
            let i = rows[pick];
            let mut v: Vec<f32> = pool
                .row(i)
                .iter()
                .zip(&self.sae.b_dec)
                .map(|(&x, &b)| x * self.sae.input_scale - b)
                .collect();
            let mut norm = v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt() as f32;
            if norm.is_nan() || norm <= 0.0 {
                v = (0..d_in).map(|_| self.rng.normal() as f32).collect();
                norm = v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt() as f32;
            }
            for (k, &a) in v.iter().enumerate() {
                let u = a / norm;
                self.sae.w_dec[[j, k]] = u;
                self.sae.w_enc[[k, j]] = u * enc_norm;
            }
            self.sae.b_enc[j] = 0.0;
            self.adam.reset_feature(j);
        }
        tracing::debug!(step = self.step, n_dead = dead.len(), "resampled dead SAE features");
        let ev = ResampleEvent {
            step: self.step,
            n_dead: dead.len(),
            n_rows_scored: rows.len(),
        };
        self.resamples.push(ev.clone());
        ev
    }

    /// Writes the complete training state (weights, Adam moments, step, random states, batch
    /// position, dead-feature counters, logs) to the folder `dir`, replacing any checkpoint there
    /// atomically: a crash at any point leaves either the old or the new checkpoint readable.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let state = CheckpointState {
            version: CHECKPOINT_VERSION,
            fingerprint: self.fingerprint(),
            step: self.step,
            rng: self.rng.state(),
            adam_t: self.adam.t,
            input_scale_bits: self.sae.input_scale.to_bits(),
            sampler: match &self.rows {
                Rows::Memory { sampler, .. } => Some((sampler.perm.clone(), sampler.pos, sampler.rng.state())),
                Rows::Stream(_) => None,
            },
            threshold: self.threshold,
            tokens_since_fired: self.tokens_since_fired.clone(),
            window_fired: self.window_fired.clone(),
            log_fired: self.log_fired.clone(),
            acc: self.acc.clone(),
            logs: self.logs.clone(),
            resamples: self.resamples.clone(),
            elapsed_s: self.elapsed_before + self.start.elapsed().as_secs_f64(),
        };
        let a = &self.adam;
        let sae = &self.sae;
        let tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
            ("W_enc", vec![sae.d_in, sae.d_sae], slice(&sae.w_enc)),
            ("b_enc", vec![sae.d_sae], slice(&sae.b_enc)),
            ("W_dec", vec![sae.d_sae, sae.d_in], slice(&sae.w_dec)),
            ("b_dec", vec![sae.d_in], slice(&sae.b_dec)),
            ("adam.m.W_enc", vec![sae.d_in, sae.d_sae], slice(&a.m_w_enc)),
            ("adam.v.W_enc", vec![sae.d_in, sae.d_sae], slice(&a.v_w_enc)),
            ("adam.m.b_enc", vec![sae.d_sae], slice(&a.m_b_enc)),
            ("adam.v.b_enc", vec![sae.d_sae], slice(&a.v_b_enc)),
            ("adam.m.W_dec", vec![sae.d_sae, sae.d_in], slice(&a.m_w_dec)),
            ("adam.v.W_dec", vec![sae.d_sae, sae.d_in], slice(&a.v_w_dec)),
            ("adam.m.b_dec", vec![sae.d_in], slice(&a.m_b_dec)),
            ("adam.v.b_dec", vec![sae.d_in], slice(&a.v_b_dec)),
        ];
        let tmp = crate::paths::temp_sibling(dir);
        let result = (|| {
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            super::io::write_f32_tensors(&tmp.join(CHECKPOINT_TENSORS), &tensors)?;
            let json = serde_json::to_string(&state).expect("checkpoint state serialises");
            crate::paths::write_atomic(&tmp.join(CHECKPOINT_STATE), json.as_bytes())?;
            let old = old_sibling(dir);
            if dir.exists() {
                let _ = std::fs::remove_dir_all(&old);
                std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
            }
            std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Restores the state saved by [`ReluSaeTrainer::save_checkpoint`] in `dir` (or in the
    /// previous checkpoint, if a crash interrupted the replacement). Returns false when there is
    /// no checkpoint. The trainer must have been built on the same data with the same settings
    /// (`steps` may differ, to extend a run); otherwise the error names what differs. Training
    /// then continues exactly as the uninterrupted run would have.
    pub fn restore_checkpoint(&mut self, dir: &Path) -> Result<bool> {
        let dir = if dir.join(CHECKPOINT_STATE).is_file() {
            dir.to_path_buf()
        } else if old_sibling(dir).join(CHECKPOINT_STATE).is_file() {
            old_sibling(dir)
        } else {
            return Ok(false);
        };
        let spath = dir.join(CHECKPOINT_STATE);
        let text = std::fs::read_to_string(&spath).map_err(|e| Error::io(&spath, e))?;
        let st: CheckpointState =
            serde_json::from_str(&text).map_err(|e| Error::parse(&spath, "checkpoint state", e.to_string()))?;
        if st.version != CHECKPOINT_VERSION {
            return Err(Error::Invalid(format!(
                "{}: checkpoint format {} (this cortexflow reads {CHECKPOINT_VERSION})",
                spath.display(),
                st.version
            )));
        }
        let mine: Fingerprint = serde_json::from_str(&self.fingerprint()).expect("fingerprint parses");
        let theirs: Fingerprint =
            serde_json::from_str(&st.fingerprint).map_err(|e| Error::parse(&spath, "fingerprint", e.to_string()))?;
        if let Some(what) = mine.difference(&theirs) {
            return Err(Error::Invalid(format!(
                "the checkpoint in {} was written by a run with other settings ({what}); delete it to start over",
                dir.display()
            )));
        }
        let tpath = dir.join(CHECKPOINT_TENSORS);
        let mut t = super::io::read_f32_tensors(&tpath)?;
        let (d_in, d_sae) = (self.sae.d_in, self.sae.d_sae);
        let mut take2 = |name: &str, r: usize, c: usize| -> Result<Array2<f32>> {
            let v = t
                .remove(name)
                .ok_or_else(|| Error::parse(&tpath, name, "tensor missing"))?;
            Array2::from_shape_vec((r, c), v).map_err(|e| Error::parse(&tpath, name, e.to_string()))
        };
        let w_enc = take2("W_enc", d_in, d_sae)?;
        let w_dec = take2("W_dec", d_sae, d_in)?;
        let mw_enc = take2("adam.m.W_enc", d_in, d_sae)?;
        let vw_enc = take2("adam.v.W_enc", d_in, d_sae)?;
        let mw_dec = take2("adam.m.W_dec", d_sae, d_in)?;
        let vw_dec = take2("adam.v.W_dec", d_sae, d_in)?;
        let mut take1 = |name: &str, n: usize| -> Result<Array1<f32>> {
            Ok(take2(name, 1, n)?.into_shape_with_order(n).expect("1 × n"))
        };
        self.sae.b_enc = take1("b_enc", d_sae)?;
        self.sae.b_dec = take1("b_dec", d_in)?;
        self.adam.m_b_enc = take1("adam.m.b_enc", d_sae)?;
        self.adam.v_b_enc = take1("adam.v.b_enc", d_sae)?;
        self.adam.m_b_dec = take1("adam.m.b_dec", d_in)?;
        self.adam.v_b_dec = take1("adam.v.b_dec", d_in)?;
        self.sae.w_enc = w_enc;
        self.sae.w_dec = w_dec;
        self.adam.m_w_enc = mw_enc;
        self.adam.v_w_enc = vw_enc;
        self.adam.m_w_dec = mw_dec;
        self.adam.v_w_dec = vw_dec;
        self.sae.input_scale = f32::from_bits(st.input_scale_bits);
        self.adam.t = st.adam_t;
        self.step = st.step;
        self.rng = SplitMix64::new(st.rng);
        match (&mut self.rows, st.sampler) {
            (Rows::Memory { sampler, .. }, Some((perm, pos, rng))) if perm.len() == sampler.perm.len() => {
                sampler.perm = perm;
                sampler.pos = pos;
                sampler.rng = SplitMix64::new(rng);
            }
            (Rows::Stream(s), None) => s.seek(st.step as u64 * self.cfg.batch_size as u64)?,
            _ => {
                return Err(Error::Invalid(format!(
                    "the checkpoint in {} was written by a run reading its rows another way (in memory vs spool)",
                    dir.display()
                )))
            }
        }
        let n = d_sae;
        if st.tokens_since_fired.len() != n || st.window_fired.len() != n || st.log_fired.len() != n {
            return Err(Error::parse(
                &spath,
                "feature counters",
                format!("expected {n} features"),
            ));
        }
        self.threshold = st.threshold;
        self.tokens_since_fired = st.tokens_since_fired;
        self.window_fired = st.window_fired;
        self.log_fired = st.log_fired;
        self.acc = st.acc;
        self.logs = st.logs;
        self.resamples = st.resamples;
        self.elapsed_before = st.elapsed_s;
        self.start = Instant::now();
        self.progress.set_position(self.step as u64);
        tracing::info!(step = self.step, dir = %dir.display(), "resumed SAE training from a checkpoint");
        Ok(true)
    }

    fn fingerprint(&self) -> String {
        let mut cfg = self.cfg.clone();
        cfg.steps = 0;
        cfg.progress = false;
        serde_json::to_string(&Fingerprint {
            cfg,
            objective: self.objective.clone(),
            data: self.data_id.clone(),
        })
        .expect("fingerprint serialises")
    }

    /// As [`ReluSaeTrainer::finish`], with the SAE typed by the objective: ReLU, TopK, or — for
    /// BatchTopK and Matryoshka BatchTopK — JumpReLU with θ for every feature (as SAELens saves
    /// them).
    pub fn finish_sae(mut self) -> Result<(Sae, TrainReport)> {
        let kind = match self.objective.clone() {
            TrainObjective::TopK(t) => SaeKind::TopK { k: t.k },
            TrainObjective::L1 => SaeKind::Relu,
            TrainObjective::BatchTopK(t, b) => {
                if b.threshold_batches > 0 {
                    self.threshold_ema = Some(self.threshold);
                    self.threshold = self.final_threshold(t.k, b.threshold_batches)?;
                }
                SaeKind::JumpRelu {
                    threshold: Array1::from_elem(self.sae.d_sae, self.threshold as f32),
                }
            }
        };
        let (weights, report) = self.finish();
        Ok((Sae::new(kind, weights, true)?, report))
    }

    /// BatchTopK's θ from the final weights: the mean, over `batches` further batches of
    /// training rows, of the smallest code that the batch-wide selection keeps.
    fn final_threshold(&mut self, k: usize, batches: usize) -> Result<f64> {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for _ in 0..batches {
            self.rows.next_batch(
                self.ws.xc.view_mut(),
                &mut self.batch_idx,
                self.sae.input_scale,
                &self.sae.b_dec,
            )?;
            self.sae.encode_centred_into(self.ws.f.view_mut(), self.ws.xc.view());
            let budget = k.saturating_mul(self.ws.f.nrows());
            if let Some(m) = super::batchtopk::batch_topk_in_place(self.ws.f.view_mut(), budget) {
                sum += m as f64;
                count += 1;
            }
        }
        Ok(if count > 0 { sum / count as f64 } else { self.threshold })
    }

    /// Ends training: the SAE and the report (logs any unlogged steps).
    pub fn finish(mut self) -> (ReluSae, TrainReport) {
        if self.acc.steps > 0 {
            let lr = self.cfg.lr_at(self.step.saturating_sub(1));
            self.push_log(lr);
        }
        self.progress.finish_and_clear();
        let elapsed_s = self.elapsed_before + self.start.elapsed().as_secs_f64();
        let report = TrainReport {
            n_tokens: self.rows.n_rows(),
            d_in: self.sae.d_in,
            d_sae: self.sae.d_sae,
            input_scale: self.sae.input_scale,
            steps: self.step,
            logs: self.logs,
            resamples: self.resamples,
            threshold: matches!(self.objective, TrainObjective::BatchTopK(..)).then_some(self.threshold as f32),
            threshold_ema: self.threshold_ema.map(|v| v as f32),
            elapsed_s,
            tokens_per_s: (self.step * self.cfg.batch_size) as f64 / elapsed_s.max(1e-9),
        };
        (self.sae, report)
    }
}

const CHECKPOINT_VERSION: u32 = 1;
/// Files of a checkpoint folder.
pub const CHECKPOINT_STATE: &str = "state.json";
pub const CHECKPOINT_TENSORS: &str = "tensors.safetensors";

/// What a checkpoint must match to be resumed (`cfg.steps` and `cfg.progress` zeroed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fingerprint {
    cfg: SaeTrainConfig,
    objective: TrainObjective,
    data: String,
}

impl Fingerprint {
    fn difference(&self, other: &Fingerprint) -> Option<String> {
        if self.data != other.data {
            return Some(format!("data `{}` vs `{}`", other.data, self.data));
        }
        if self.objective != other.objective {
            return Some(format!("objective {:?} vs {:?}", other.objective, self.objective));
        }
        if self.cfg != other.cfg {
            return Some(format!(
                "training config {} vs {}",
                serde_json::to_string(&other.cfg).unwrap_or_default(),
                serde_json::to_string(&self.cfg).unwrap_or_default()
            ));
        }
        None
    }
}

/// `state.json` of a checkpoint (the arrays are in `tensors.safetensors`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    version: u32,
    fingerprint: String,
    step: usize,
    rng: u64,
    adam_t: i32,
    input_scale_bits: u32,
    /// In-memory rows: the sampler's permutation, position and random state.
    sampler: Option<(Vec<usize>, usize, u64)>,
    /// BatchTopK's θ (absent from checkpoints of other objectives).
    #[serde(default)]
    threshold: f64,
    tokens_since_fired: Vec<u64>,
    window_fired: Vec<bool>,
    log_fired: Vec<bool>,
    acc: LogAcc,
    logs: Vec<TrainLog>,
    resamples: Vec<ResampleEvent>,
    elapsed_s: f64,
}

fn slice<D: Dimension>(a: &Array<f32, D>) -> &[f32] {
    a.as_slice().expect("parameters in standard layout")
}

/// `dir` with `.old` appended to its name (the checkpoint being replaced).
fn old_sibling(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".old");
    dir.with_file_name(name)
}

/// (row, column) of the first non-finite entry, if any.
fn first_non_finite(x: ArrayView2<'_, f32>) -> Option<(usize, usize)> {
    let bad: Vec<Option<usize>> = x
        .axis_iter(Axis(0))
        .into_par_iter()
        .map(|r| r.iter().position(|v| !v.is_finite()))
        .collect();
    bad.into_iter().enumerate().find_map(|(i, c)| c.map(|c| (i, c)))
}

impl<'a> ReluSaeTrainer<'a> {
    /// A ReLU + L1 trainer ([`ReluSaeTrainer::new`]: same sampler, Adam, decoder projection,
    /// warm-up, logging and resampling) that starts from the given weights instead of step 2 of
    /// the recipe, with fresh Adam moments. Any `d_sae` (not only a multiple of `d_in`:
    /// `cfg.expansion` is ignored); `sae.input_scale` is kept as given. Used by the benchmarks to
    /// start both implementations from the same weights.
    pub fn from_sae(x: ArrayView2<'a, f32>, cfg: &SaeTrainConfig, sae: ReluSae) -> Result<Self> {
        if sae.d_in != x.ncols() {
            return Err(Error::Invalid(format!(
                "the SAE has d_in = {}, the activations have {} columns",
                sae.d_in,
                x.ncols()
            )));
        }
        let mut t = Self::new(
            x,
            &SaeTrainConfig {
                expansion: 1,
                ..cfg.clone()
            },
        )?;
        let (d_in, d_sae) = (sae.d_in, sae.d_sae);
        t.tokens_since_fired = vec![0; d_sae];
        t.dead = vec![false; d_sae];
        t.adam = Adam::new(d_in, d_sae);
        t.grad = ReluSaeGrad::zeros(d_in, d_sae);
        t.ws = Workspace::new(cfg.batch_size, d_in, d_sae);
        t.window_fired = vec![false; d_sae];
        t.log_fired = vec![false; d_sae];
        t.sae = sae;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_geometric_median_resists_an_outlier_and_matches_the_closed_form() {
        // a square's corners and a far outlier on its diagonal: by symmetry the median is (t, t)
        // where the unit vectors balance, 6t² − 12t + 4 = 0 → t = 1 + 1/√3 (the mean is 20.8)
        let pts = ndarray::array![[0.0f32, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [100.0, 100.0]];
        let m = geometric_median(pts.view());
        let t = 1.0 + 1.0 / 3.0f32.sqrt();
        assert!((m[0] - t).abs() < 1e-3 && (m[1] - t).abs() < 1e-3, "{m:?}");
    }

    #[test]
    fn the_sampler_visits_every_row_once_per_epoch() {
        let mut s = Sampler::new(10, 3);
        let mut out = vec![];
        s.next_batch(7, &mut out);
        let mut first: Vec<usize> = out.clone();
        s.next_batch(7, &mut out);
        first.extend_from_slice(&out[..3]);
        first.sort();
        assert_eq!(first, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn warm_up_ramps_the_learning_rate_linearly() {
        let cfg = SaeTrainConfig {
            lr: 1.0,
            warmup_steps: 4,
            ..Default::default()
        };
        assert_eq!(
            (0..6).map(|s| cfg.lr_at(s)).collect::<Vec<_>>(),
            vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
        );
    }
}
