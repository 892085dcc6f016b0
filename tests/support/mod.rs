//! Shared test helpers: the real data root, the Python peer, the default model (imported once per
//! machine into the cache and reused).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The real data root; tests fail (not skip) when it is missing.
pub fn data_root() -> PathBuf {
    cortexflow::paths::data_root()
        .expect("real data not found: set CORTEXFLOW_DATA or place shared/data at ../shared/data")
}

pub fn alice_textgrid() -> PathBuf {
    data_root().join("alice_brennan2016/alice_stim_shared/DownTheRabbitHoleFinal_exp120_pad_1.TextGrid")
}

/// Python with pyarrow/polars/numpy: CORTEXFLOW_PYTHON, else the project's .venv, else python3.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CORTEXFLOW_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        "python3".into()
    }
}

/// Runs a Python snippet with arguments; panics with its stderr on failure.
pub fn run_python(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python runs (run `make setup` to create .venv)");
    assert!(
        out.status.success(),
        "python failed (run `make setup` if pyarrow/polars/numpy are missing):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The default model folder (imported on first use).
pub fn model_dir() -> PathBuf {
    cortexflow::lm::ensure_default_model().expect("default model (run `make setup`)")
}

/// The cortexflow binary built by cargo for integration tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cortexflow"))
}
