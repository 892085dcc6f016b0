//! Sparse autoencoders: LM activations → sparse, non-negative feature codes (METHOD.md §3).
//!
//! Input: activations `x (n_tokens, d_in)` f32, one row per token or word, from one layer's
//! residual stream. Output: codes `f (n_tokens, d_sae)` (dense [`ndarray::Array2`] or CSR
//! [`SparseCodes`]), reconstructions `x̂ (n_tokens, d_in)` in the input's units, quality
//! statistics ([`SaeQuality`]) and SAE folders on disk.
//!
//! - [`relu`]: the ReLU SAE `f = ReLU((x·s − b_dec) W_enc + b_enc)`, `x̂ = (f W_dec + b_dec)/s`,
//!   with `s` = [`ReluSae::input_scale`]; encode / decode / loss and hand-written gradient.
//! - [`train`]: [`train_relu_sae`] (Adam, unit-norm decoder rows, dead-feature resampling),
//!   [`SaeTrainConfig`] with [`SaeTrainConfig::check`], [`TrainReport`].
//! - [`metrics`]: [`sae_quality`] (R², FVU, mean L0, dead and dense fractions).
//! - [`evidence`]: per feature, its top-activating words with ±5 words of context, density, mean.
//! - [`io`]: [`save_relu_sae`] / [`load_relu_sae`] (`cfg.json` + `sae_weights.safetensors` with
//!   SAELens tensor names).
//!
//! Everything is deterministic for a given seed on any number of rayon threads.
//!
//! ```
//! use cortexflow::sae::{sae_quality, train_relu_sae, SaeTrainConfig};
//! use cortexflow::stats::SplitMix64;
//! use ndarray::Array2;
//!
//! let mut rng = SplitMix64::new(1);
//! let x = Array2::from_shape_simple_fn((512, 8), || rng.normal() as f32); // (n_tokens, d_in)
//! let cfg = SaeTrainConfig { expansion: 2, batch_size: 64, steps: 20, l1: 1.0, ..Default::default() };
//! let (sae, report) = train_relu_sae(x.view(), &cfg)?;
//! assert_eq!(sae.d_sae, 16);
//! let codes = sae.encode_sparse(x.view()); // CSR, n_rows = 512
//! assert!(codes.values.iter().all(|&v| v > 0.0));
//! let q = sae_quality(&sae, x.view());
//! assert_eq!(q.n_rows, 512);
//! assert!(!report.logs.is_empty());
//! # Ok::<(), cortexflow::Error>(())
//! ```

pub mod evidence;
pub mod io;
mod linalg;
pub mod metrics;
pub mod relu;
pub mod train;

pub use io::{load_relu_sae, read_sae_config, save_relu_sae, SaeFolderConfig, CFG_FILE, WEIGHTS_FILE};
pub use metrics::{sae_quality, SaeQuality, DENSE_THRESHOLD};
pub use relu::{ReluSae, ReluSaeGrad, SaeLoss, SparseCodes};
pub use train::{
    train_relu_sae, ReluSaeTrainer, ResampleEvent, SaeTrainConfig, SaeTrainConfigError, TrainLog, TrainReport,
};
