//! cortexflow: which features of a language model explain brain activity and reading behaviour.
//!
//! # Modules, in the order the data flows
//!
//! Every module imports only modules on the lines above it (one direction of dependencies), so a
//! reader can start here and never meet a name defined further down; `tests/it/layering.rs` fails
//! on any import against this order and on any import cycle between the files of a module.
//!
//! ```text
//! error, paths, progress   the one error type; where files live, atomic writes; progress bars
//! stats                    correlation, bootstrap, permutation, FDR, special functions, κ
//! stimulus                 words with onsets (TextGrid, word tables, plain text, jieba)
//! lm                       GGUF import, tokenizer, ONNX session, per-word vectors, lens
//! store                    content-addressed artifacts, Arrow/Parquet I/O, schemas
//! sae                      config, train, io (SAELens/sparsify), encode, spool, evidence, metrics
//! features                 HRF + TR averaging, Lanczos + FIR, ROI readers, FeatureSet
//! encoding                 ridge, banded ridge, nested CV, permutation stats, partition
//! taxonomy, topography     labels and subsets; subcategory × region statistics
//! reading                  mixed models, formulas, the [reading] section and its inputs
//! config                   pipeline file → validated Plan (composes the sections above)
//! stages                   Ctx and one function per stage: artifact ids in, artifact id out
//! dataflow                 records with named keys, generic keyed stages, the graph
//! report                   plots and the Markdown report
//! outputs                  the run's tables (Parquet) from the final snapshot
//! pipeline                 run, watch, status, prune, the reading-time run
//! cli (and main.rs)        arguments → library calls → printed results
//! ```
//!
//! * [`error`], [`paths`], [`progress`]: the bottom layer.
//! * [`stats`]: shared statistics, below every analysis.
//! * [`stimulus`] → [`lm`] → [`store`] → [`sae`]: words, the language model, the artifact store,
//!   sparse autoencoders.
//! * [`features`], [`encoding`], [`taxonomy`], [`topography`], [`reading`]: the analyses, pure
//!   functions on arrays (each owns the type of its pipeline-file section).
//! * [`config`] → [`stages`] → [`dataflow`]: the plan, the stage functions (no timely types), and
//!   the differential dataflow that wires them (the only module that names timely/differential).
//! * [`report`] → [`outputs`] → [`pipeline`] → [`cli`]: what a run writes, how it runs, the command
//!   line.

pub mod cli;
pub mod config;
pub mod dataflow;
pub mod encoding;
pub mod error;
pub mod features;
pub mod lm;
pub mod outputs;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod reading;
pub mod report;
pub mod sae;
pub mod stages;
pub mod stats;
pub mod stimulus;
pub mod store;
pub mod taxonomy;
pub mod topography;

pub use error::{Error, Result};
