//! The integration tests, as one test binary (one link of arrow, parquet, timely, tokenizers and
//! plotters instead of one per file). Each file is a module named after its topic; run one group
//! with `cargo test --test it <module>::`, e.g. `cargo test --test it lmm_parity::`.

mod support;

mod agreement;
mod encoding;
mod encoding_parity;
mod encoding_recovery;
mod encoding_stats;
mod encoding_stories;
mod export;
mod extract_cli;
mod features;
mod gemma;
mod gguf_reader;
mod import_reference;
mod incremental;
mod labels_score;
mod lanczos;
mod layering;
mod llm_client;
mod lm;
mod lmm_parity;
mod pipeline;
mod pred_error;
mod reading;
mod sae;
mod sae_batchtopk;
mod sae_cli;
mod sae_formats;
mod sae_from_sae;
mod sae_stream;
mod stimulus;
mod store;
mod taxonomy_recovery;
mod topography;
mod topography_cli;
mod voxelwise_cli;
