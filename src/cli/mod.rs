//! Command implementations behind `cortexflow`'s numeric subcommands, kept in the library so they
//! are testable and the binary (`main.rs`) only parses and prints.
//!
//! * [`export`]: `cortexflow export` — a run's tables as CSV, TSV, Arrow IPC or Parquet files.
//! * [`ridge`]: `cortexflow ridge` — per-target ridge CV on `.npy` / Parquet matrices.
//! * [`lmm`]: `cortexflow lmm` — linear mixed models on any table with an lme4-style formula.
//! * [`sae`]: `cortexflow sae encode` — any activation matrix through any supported SAE folder.
//! * [`sae_train`]: `cortexflow sae train JOB.toml` — corpus → LM → activation spool → SAE, with
//!   checkpoints and held-out quality.
//! * [`simulate`]: `cortexflow simulate` — BOLD-like responses with planted weights and known ceiling.
//! * [`voxelwise`]: `cortexflow voxelwise fit` — leave-stories-out nested ridge per voxel over many
//!   stories (ds003020 layout), region summaries; `cortexflow voxelwise simulate` — such data
//!   with a planted region × feature-group truth.
//! * [`labels`]: `cortexflow labels agree` — Cohen's / Fleiss' κ between label sources;
//!   `cortexflow labels ask` — labelling tasks answered by an OpenAI-compatible endpoint;
//!   `cortexflow labels score` — detection and fuzzing scores of explanations.
//! * [`topography`]: `cortexflow topography` — subcategory × region matrices against an a priori
//!   0/1 prediction (ρ and Pearson r, raw and double-centred, interaction F, FDR cells, hypergeometric / Fisher overlap).
//!
//! May import: everything (`pipeline`, `outputs`, the analyses …): it is the top layer, with `main.rs`.

pub mod export;
pub mod labels;
pub mod lmm;
pub mod ridge;
pub mod sae;
pub mod sae_train;
pub mod simulate;
pub mod topography;
pub mod voxelwise;

pub use export::{run_export, ExportArgs, ExportFormat, ExportedTable};
pub use labels::{
    run_labels_agree, run_labels_ask, run_labels_score, AgreementSummary, LabelsAgreeArgs, LabelsAskArgs,
    LabelsScoreArgs,
};
pub use lmm::{run_lmm, LmmArgs, LmmSummary};
pub use ridge::{run_ridge, RidgeArgs, RidgeSummary};
pub use sae::{run_sae_encode, SaeEncodeArgs, SaeEncodeSummary};
pub use sae_train::{run_sae_train, SaeJob, SaeTrainRunOptions, SaeTrainSummary};
pub use simulate::{run_simulate, SimulateArgs, SimulateSummary};
pub use topography::{run_topography, TopographyArgs, TopographySummary};
pub use voxelwise::{
    run_voxelwise_fit, run_voxelwise_simulate, VoxelwiseCommand, VoxelwiseFitArgs, VoxelwiseFitSummary,
    VoxelwiseSimulateArgs, VoxelwiseSimulateSummary,
};
