//! cortexflow: which features of a language model explain brain activity and reading behaviour.
//!
//! The modules follow the data flow: `stimulus` (words with onsets) → `lm` (tokenizer, ONNX
//! Runtime session, token→word pooling, GGUF import) → `store` (Arrow/Parquet tables, atomic
//! writes, schemas). Later stages (SAE, features, encoding, reading, dataflow) build on these.

pub mod cli;
pub mod config;
pub mod dataflow;
pub mod encoding;
pub mod error;
pub mod features;
pub mod lm;
pub mod paths;
pub mod pipeline;
pub mod reading;
pub mod report;
pub mod sae;
pub mod stats;
pub mod stimulus;
pub mod store;
pub mod taxonomy;

pub use error::{Error, Result};
