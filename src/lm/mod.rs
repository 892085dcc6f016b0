//! The language-model stage: GGUF import (→ ONNX graph + tokenizer.json + manifest), the ONNX
//! Runtime session, and word-level extraction of residual-stream activations, surprisal and entropy.
//! This is the only module that uses `ort` and `tokenizers`.
//!
//! May import: `stimulus`, `stats`, `paths`, `error`.

pub mod extract;
pub mod gguf;
pub mod import;
pub mod lens;
pub mod manifest;
pub mod onnx_proto;
pub mod runtime;
pub mod summary;
pub mod tokenizer_json;

pub use extract::{extract_story, ContextPolicy, ExtractOptions, Extraction, Pooling};
pub use import::{import_gguf, ImportOptions, WeightPrecision};
pub use manifest::Manifest;
pub use runtime::{BatchView, LanguageModel, RuntimeOptions};

use std::path::PathBuf;

/// The default model's folder, imported from the cached GGUF on first use (and again whenever the
/// importer revision changed). Imports go to a temporary folder that is renamed into place, so
/// concurrent callers never see a half-written model; callers in one process are serialised.
pub fn ensure_default_model() -> crate::Result<PathBuf> {
    ensure_model(false, None)
}

/// Positions the imported Gemma 3 model supports (its RoPE tables; the GGUF allows 32,768):
/// extraction windows are far shorter, and the tables grow with it.
pub const GEMMA_MAX_CONTEXT: usize = 4096;

/// The multilingual model, Gemma 3 270M (`[model] dir = "gemma3-270m"`), imported from the
/// cached GGUF on first use, like [`ensure_default_model`].
pub fn ensure_gemma_model() -> crate::Result<PathBuf> {
    ensure_model(true, None)
}

/// A built-in model (the default SmolLM2, or Gemma 3 270M with `gemma`), whole or, with
/// `blocks`, cut after that many blocks without its LM head (see [`ImportOptions::blocks`]):
/// what an extraction that needs no surprisal runs (e.g. one early layer over a large corpus), at
/// the cost of the blocks up to its deepest layer only. Each variant is imported into
/// [`builtin_model_dir`] once, like [`ensure_default_model`].
pub fn ensure_model(gemma: bool, blocks: Option<usize>) -> crate::Result<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = builtin_model_dir(gemma, blocks);
    if is_current(&dir) {
        return Ok(dir);
    }
    let (gguf, max_context) = match gemma {
        true => (crate::paths::gemma_gguf()?, Some(GEMMA_MAX_CONTEXT)),
        false => (crate::paths::default_gguf()?, None),
    };
    let opts = ImportOptions {
        max_context,
        blocks,
        ..Default::default()
    };
    import_into(&gguf, &dir, &opts)
}

/// Where [`ensure_model`] keeps a built-in model: its folder in the cache, or a `-blocks{b}`
/// sibling for the model cut after `b` blocks.
pub fn builtin_model_dir(gemma: bool, blocks: Option<usize>) -> PathBuf {
    let dir = match gemma {
        true => crate::paths::gemma_model_dir(),
        false => crate::paths::default_model_dir(),
    };
    match blocks {
        None => dir,
        Some(b) => dir.with_file_name(format!(
            "{}-blocks{b}",
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )),
    }
}

/// Whether `dir` holds a model written by this importer revision.
fn is_current(dir: &std::path::Path) -> bool {
    Manifest::load(dir).ok().is_some_and(|m| {
        m.written_by.as_deref() == Some(import::importer_stamp().as_str())
            && m.external_data.as_ref().is_none_or(|f| dir.join(f).is_file())
    }) && dir.join("model.onnx").is_file()
        && dir.join("tokenizer.json").is_file()
}

/// Imports `gguf` into a temporary sibling of `dir`, then renames it into place.
fn import_into(gguf: &std::path::Path, dir: &std::path::Path, opts: &ImportOptions) -> crate::Result<PathBuf> {
    tracing::warn!("importing {} → {} (once)", gguf.display(), dir.display());
    let tmp = crate::paths::temp_sibling(dir);
    import_gguf(gguf, &tmp, opts)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| crate::Error::io(dir, e))?;
    Ok(dir.to_path_buf())
}
