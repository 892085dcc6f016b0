//! The language-model stage: GGUF import (→ ONNX graph + tokenizer.json + manifest), the ONNX
//! Runtime session, and word-level extraction of residual-stream activations, surprisal and entropy.
//! This is the only module that uses `ort` and `tokenizers`.

pub mod extract;
pub mod gguf;
pub mod import;
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
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = crate::paths::default_model_dir();
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
    import_gguf(&gguf, &tmp, &ImportOptions::default())?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| crate::Error::io(&dir, e))?;
    Ok(dir)
}
