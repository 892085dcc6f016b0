//! Hyper-parameters of SAE training ([`SaeTrainConfig`], [`TopKTrainConfig`],
//! [`BatchTopKTrainConfig`]) and their
//! validation errors. Shared by [`super::train`] (which trains with them) and [`super::io`]
//! (which saves them with an SAE and in checkpoints).
//!
//! May import: `error`.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Hyper-parameters of [`super::train_relu_sae`]. Validate with [`SaeTrainConfig::check`] (training
/// does it too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaeTrainConfig {
    /// d_sae = expansion × d_in. Default 8 (the paper: 8–10×).
    pub expansion: usize,
    /// L1 coefficient λ on **normalised** inputs (E‖x‖² = d_in, squared error summed over d_in,
    /// the SAELens convention). Default 5.0. The paper's λ = 5e-4 (GPT-2 XL) / 3e-4 (Llama) was
    /// stated for its own, unreported input scale and loss normalisation and does not transfer;
    /// tune λ for the paper's target L0 ≈ 50–60 instead (larger λ → smaller L0).
    pub l1: f32,
    /// Adam learning rate. Default 3e-4.
    pub lr: f32,
    /// Rows per step. Default 4096.
    pub batch_size: usize,
    /// Number of Adam steps. Default 20 000.
    pub steps: usize,
    /// Steps of linear learning-rate warm-up from lr/warmup_steps to lr (0 = none). Default 100.
    pub warmup_steps: usize,
    /// Resample dead features every this many steps (0 = never). Default 5000.
    pub resample_every: usize,
    /// Steps per [`TrainLog`] entry. Default 100.
    pub log_every: usize,
    /// Seed of the initialisation, the batch shuffle and the resampling draws. Default 0.
    pub seed: u64,
    /// Show a progress bar on stderr. Default false.
    pub progress: bool,
}

impl Default for SaeTrainConfig {
    fn default() -> Self {
        SaeTrainConfig {
            expansion: 8,
            l1: 5.0,
            lr: 3e-4,
            batch_size: 4096,
            steps: 20_000,
            warmup_steps: 100,
            resample_every: 5000,
            log_every: 100,
            seed: 0,
            progress: false,
        }
    }
}

/// An invalid [`SaeTrainConfig`] value; the message names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SaeTrainConfigError {
    #[error("`expansion` must be at least 1, found {0}")]
    Expansion(usize),
    #[error("`l1` (λ) must be finite and ≥ 0, found {0}")]
    L1(f32),
    #[error("`lr` must be finite and > 0, found {0}")]
    Lr(f32),
    #[error("`batch_size` must be at least 1, found {0}")]
    BatchSize(usize),
    #[error("`steps` must be at least 1, found {0}")]
    Steps(usize),
    #[error("`log_every` must be at least 1, found {0}")]
    LogEvery(usize),
    #[error("`k` must be between 1 and d_sae = {d_sae}, found {k}")]
    K { k: usize, d_sae: usize },
    #[error("`aux_k` must be at least 1 when given, found {0}")]
    AuxK(usize),
    #[error("`aux_coef` must be finite and ≥ 0, found {0}")]
    AuxCoef(f32),
    #[error("`threshold_lr` must be in (0, 1], found {0}")]
    ThresholdLr(f64),
    #[error("`matryoshka_widths` {widths:?} must increase strictly and lie between k = {k} and d_sae = {d_sae}")]
    MatryoshkaWidths { widths: Vec<usize>, k: usize, d_sae: usize },
}

impl From<SaeTrainConfigError> for Error {
    fn from(e: SaeTrainConfigError) -> Self {
        Error::Invalid(format!("SAE training config: {e}"))
    }
}

impl SaeTrainConfig {
    /// Checks every value; the first invalid one is reported.
    pub fn check(&self) -> std::result::Result<(), SaeTrainConfigError> {
        if self.expansion == 0 {
            return Err(SaeTrainConfigError::Expansion(self.expansion));
        }
        if !(self.l1.is_finite() && self.l1 >= 0.0) {
            return Err(SaeTrainConfigError::L1(self.l1));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(SaeTrainConfigError::Lr(self.lr));
        }
        if self.batch_size == 0 {
            return Err(SaeTrainConfigError::BatchSize(self.batch_size));
        }
        if self.steps == 0 {
            return Err(SaeTrainConfigError::Steps(self.steps));
        }
        if self.log_every == 0 {
            return Err(SaeTrainConfigError::LogEvery(self.log_every));
        }
        Ok(())
    }

    /// Learning rate at (0-based) step `step`.
    pub fn lr_at(&self, step: usize) -> f32 {
        if self.warmup_steps == 0 || step >= self.warmup_steps {
            self.lr
        } else {
            self.lr * (step + 1) as f32 / self.warmup_steps as f32
        }
    }
}

/// TopK-specific hyper-parameters of [`super::train_topk_sae`] (the shared ones are in
/// [`SaeTrainConfig`], whose `l1` and `resample_every` TopK training ignores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopKTrainConfig {
    /// Active features per row. Default 32 (sparsify's default; the paper's target L0 ≈ 50–60).
    pub k: usize,
    /// Dead latents used by the AuxK term per row; `None` = d_in / 2 (Gao et al. B.1, as sparsify
    /// and SAELens). Default `None`.
    pub aux_k: Option<usize>,
    /// Coefficient of the AuxK term. Default 1/32 (Gao et al.).
    pub aux_coef: f32,
    /// A feature is dead when it has not fired for more than this many rows (tokens). Default
    /// 10 000 000 (sparsify's `dead_feature_threshold`, Gao et al.'s "10M tokens").
    pub dead_after_tokens: u64,
}

impl Default for TopKTrainConfig {
    fn default() -> Self {
        TopKTrainConfig {
            k: 32,
            aux_k: None,
            aux_coef: 1.0 / 32.0,
            dead_after_tokens: 10_000_000,
        }
    }
}

impl TopKTrainConfig {
    /// Checks every value for an SAE with `d_sae` features; the first invalid one is reported.
    pub fn check(&self, d_sae: usize) -> std::result::Result<(), SaeTrainConfigError> {
        if self.k == 0 || self.k > d_sae {
            return Err(SaeTrainConfigError::K { k: self.k, d_sae });
        }
        if self.aux_k == Some(0) {
            return Err(SaeTrainConfigError::AuxK(0));
        }
        if !(self.aux_coef.is_finite() && self.aux_coef >= 0.0) {
            return Err(SaeTrainConfigError::AuxCoef(self.aux_coef));
        }
        Ok(())
    }
}

/// BatchTopK-specific hyper-parameters (Bussmann et al. 2024; with `matryoshka_widths`, Matryoshka
/// BatchTopK, Bussmann et al. 2025). `k` and the AuxK settings come from the [`TopKTrainConfig`]
/// beside it, with `k` the mean number of active features per row over a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchTopKTrainConfig {
    /// Rate of the exponential moving average of the smallest kept code that becomes the
    /// inference threshold θ. Default 0.01 (SAELens `topk_threshold_lr`).
    pub threshold_lr: f64,
    /// Batches of training rows encoded with the final weights to estimate θ as the mean of
    /// their smallest kept codes (Bussmann et al. 2024, §3). 0 keeps the running average
    /// instead (SAELens), which lags behind the codes when training is short. Default 16.
    pub threshold_batches: usize,
    /// Matryoshka level widths, strictly increasing; d_sae is added as the last level when the
    /// last width is smaller. Empty (the default) = plain BatchTopK.
    pub matryoshka_widths: Vec<usize>,
}

impl Default for BatchTopKTrainConfig {
    fn default() -> Self {
        BatchTopKTrainConfig {
            threshold_lr: 0.01,
            threshold_batches: 16,
            matryoshka_widths: vec![],
        }
    }
}

impl BatchTopKTrainConfig {
    /// The level widths the loss uses for an SAE of `d_sae` features with `k` active per row:
    /// `[d_sae]` for plain BatchTopK, else the widths with d_sae appended if missing. Errors name
    /// the field: widths must increase strictly, lie in k ..= d_sae (SAELens: the smallest level
    /// cannot be narrower than k) and the threshold rate must lie in (0, 1].
    pub fn levels(&self, d_sae: usize, k: usize) -> std::result::Result<Vec<usize>, SaeTrainConfigError> {
        if !(self.threshold_lr > 0.0 && self.threshold_lr <= 1.0) {
            return Err(SaeTrainConfigError::ThresholdLr(self.threshold_lr));
        }
        let w = &self.matryoshka_widths;
        let bad = || SaeTrainConfigError::MatryoshkaWidths {
            widths: w.clone(),
            k,
            d_sae,
        };
        if w.windows(2).any(|p| p[0] >= p[1]) || w.iter().any(|&m| m < k || m > d_sae) {
            return Err(bad());
        }
        let mut levels = w.clone();
        if levels.last() != Some(&d_sae) {
            levels.push(d_sae);
        }
        Ok(levels)
    }
}
