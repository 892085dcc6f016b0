//! The language-model stage: GGUF import (→ ONNX graph + tokenizer.json + manifest), the ONNX
//! Runtime session, and word-level extraction of residual-stream activations, surprisal and entropy.
//! This is the only module that uses `ort` and `tokenizers`.

pub mod extract;
pub mod gguf;
pub mod import;
pub mod lens;
pub mod manifest;
pub mod onnx_proto;
pub mod runtime;
pub mod summary;
pub mod tokenizer_json;

pub use extract::{extract_story, ExtractOptions, Extraction, Pooling};
pub use import::{import_gguf, ImportOptions, WeightPrecision};
pub use manifest::Manifest;
pub use runtime::{BatchView, LanguageModel, RuntimeOptions};

use std::path::PathBuf;

/// The default model's folder, imported from the cached GGUF on first use (and again whenever the
/// importer revision changed). Imports go to a temporary folder that is renamed into place, so
/// concurrent callers never see a half-written model; callers in one process are serialised.
pub fn ensure_default_model() -> crate::Result<PathBuf> {
    ensure_default_import(None)
}

/// The default model cut after `blocks` blocks, without its LM head (hidden states
/// `0..=blocks` only; see [`ImportOptions::blocks`]), imported into the cache on first use. For
/// extracting one early layer over a large corpus at a fraction of the full model's cost.
pub fn ensure_default_model_blocks(blocks: usize) -> crate::Result<PathBuf> {
    ensure_default_import(Some(blocks))
}

fn ensure_default_import(blocks: Option<usize>) -> crate::Result<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let full = crate::paths::default_model_dir();
    let dir = match blocks {
        None => full,
        Some(b) => full.with_file_name(format!(
            "{}-blocks{b}",
            full.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )),
    };
    let current = Manifest::load(&dir)
        .ok()
        .is_some_and(|m| m.written_by.as_deref() == Some(import::importer_stamp().as_str()))
        && dir.join("model.onnx").is_file()
        && dir.join("tokenizer.json").is_file();
    if current {
        return Ok(dir);
    }
    let gguf = crate::paths::default_gguf()?;
    tracing::warn!(
        "importing the default model {} → {} (once)",
        gguf.display(),
        dir.display()
    );
    let tmp = crate::paths::temp_sibling(&dir);
    let opts = ImportOptions {
        blocks,
        ..Default::default()
    };
    import_gguf(&gguf, &tmp, &opts)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| crate::Error::io(&dir, e))?;
    Ok(dir)
}
