//! Sparse autoencoders: LM activations → sparse, non-negative feature codes (METHOD.md §3).
//!
//! Input: activations `x (n_tokens, d_in)` f32, one row per token or word, from one layer's
//! residual stream. Output: codes `f (n_tokens, d_sae)` (dense [`ndarray::Array2`] or CSR
//! [`SparseCodes`]), reconstructions `x̂ (n_tokens, d_in)` in the input's units, quality
//! statistics ([`SaeQuality`]) and SAE folders on disk.
//!
//! - [`relu`]: the ReLU SAE `f = ReLU((x·s − b_dec) W_enc + b_enc)`, `x̂ = (f W_dec + b_dec)/s`,
//!   with `s` = [`ReluSae::input_scale`]; encode / decode; the L1 loss ([`ReluSae::loss_and_grad`])
//!   and the TopK + AuxK loss ([`ReluSae::topk_loss_and_grad`]) with hand-written gradients.
//!   Weights: W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in), normalised
//!   input units.
//! - [`model`]: [`Sae`], one type over ReLU, TopK (`k` largest ReLU pre-activations per row) and
//!   JumpReLU (`ReLU(z)·1[z > θ]`, θ (d_sae)) with encode / encode_sparse / decode / reconstruct /
//!   quality, so downstream code does not care which architecture it holds.
//! - [`train`]: [`train_relu_sae`] (Adam, unit-norm decoder rows, dead-feature resampling) and
//!   [`train_topk_sae`] (same trainer, TopK objective with the AuxK dead-latent term,
//!   [`TopKTrainConfig`]), [`SaeTrainConfig`] with [`SaeTrainConfig::check`], [`TrainReport`].
//! - `batchtopk`: BatchTopK's batch-wide selection and the Matryoshka loss's backward pass
//!   ([`train_batch_topk_sae`]; saved as JumpReLU with the learnt threshold, as SAELens does).
//! - [`spool`]: [`build_spool`] runs the LM over text files and writes one layer's per-token
//!   vectors to disk in `.npy` chunks (resumable; held-out tail per file); [`Spool`] reads them.
//! - [`stream`]: [`SpoolStream`], the bounded shuffle buffer over a spool's chunks, seekable to
//!   any position; [`ReluSaeTrainer::streamed`] trains from it, and
//!   [`ReluSaeTrainer::save_checkpoint`] / [`ReluSaeTrainer::restore_checkpoint`] make any run
//!   resumable to a bit-identical result.
//! - [`metrics`]: [`sae_quality`] / [`Sae::quality`] (R², FVU, mean L0, dead and dense fractions).
//! - [`directions`]: decoder-cosine alignment of features between two SAEs (best match and
//!   similarity) and reconstruction with chosen features ablated to their mean.
//! - [`evidence`]: per feature, its top-activating words with ±5 words of context, density, mean.
//! - [`io`]: [`save_relu_sae`] / [`load_relu_sae`] (cortexflow folders: `cfg.json` +
//!   `sae_weights.safetensors` with SAELens tensor names); [`load_sae`] for cortexflow, SAELens
//!   ("standard" / "topk" / "jumprelu") and EleutherAI sparsify folders (f32, f16 or bf16
//!   tensors); [`save_saelens_sae`].
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
//!
//! May import: `store`, `lm`, `stats`, `paths`, `error`.

mod batchtopk;
pub mod config;
pub mod directions;
pub mod evidence;
pub mod io;
mod linalg;
pub mod metrics;
pub mod model;
pub mod relu;
mod simd;
pub mod spool;
pub mod stream;
pub mod train;

pub use io::{
    load_relu_sae, load_sae, load_saelens_sae, load_sparsify_sae, read_sae_config, save_relu_sae, save_saelens_sae,
    LoadedSae, SaeFolderConfig, SaeFolderFormat, SaeMeta, CFG_FILE, SPARSIFY_WEIGHTS_FILE, WEIGHTS_FILE,
};
pub use metrics::{sae_quality, SaeQuality, DENSE_THRESHOLD};
pub use model::{Sae, SaeKind};
pub use relu::{AuxK, ReluSae, ReluSaeGrad, SaeLoss, SparseCodes};
pub use spool::{build_spool, build_spools, Spool, SpoolManifest, SpoolOptions};
pub use stream::SpoolStream;
pub use train::{
    train_batch_topk_sae, train_relu_sae, train_topk_sae, BatchTopKTrainConfig, ReluSaeTrainer, ResampleEvent,
    SaeTrainConfig, SaeTrainConfigError, TopKTrainConfig, TrainLog, TrainObjective, TrainReport,
};
