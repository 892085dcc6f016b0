//! Shared test helpers: the real data root, the Python peer, the default model (imported once per
//! machine into the cache and reused).
#![allow(dead_code)]

pub mod peer;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The real data root; tests fail (not skip) when it is missing.
pub fn data_root() -> PathBuf {
    cortexflow::paths::data_root()
        .expect("real data not found: set CORTEXFLOW_DATA or place shared/data at ../shared/data")
}

/// The Le Petit Prince word table of `language` in the data root, and the column holding its run
/// numbers (the English table has none: its runs are where the onsets restart).
pub fn lpp_table(language: &str) -> (&'static str, Option<&'static str>) {
    match language {
        "en" => ("lpp_en_ivanova/lpp_en_regressors.csv", None),
        "fr" => ("lpp_fr_neurospin/lppFR_word_information.csv", Some("section")),
        "zh" => ("lpp_en_cn_dgd45125/lpp_CN_word_surprisal_gpt2.csv", Some("section")),
        other => panic!("no Le Petit Prince table for `{other}`"),
    }
}

/// Run `run` of Le Petit Prince in `language` (en, fr, zh), empty word cells skipped, with the
/// story id `lpp-<language>-run<run>`.
pub fn lpp_run(language: &str, run: usize) -> cortexflow::stimulus::Story {
    let (path, column) = lpp_table(language);
    let opts = cortexflow::stimulus::ReadOptions {
        language: language.into(),
        skip_empty_words: true,
        story_id: Some(format!("lpp-{language}-run{run}")),
        run: Some(cortexflow::stimulus::RunSelect {
            run,
            column: column.map(String::from),
        }),
        ..Default::default()
    };
    cortexflow::stimulus::read_story(data_root().join(path), None, &opts).unwrap()
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

/// `n` samples in `d_in` dimensions, each the sum of `k` of the `n_true` unit directions with
/// magnitudes uniform in [0.5, 1.5]. Returns (samples, directions (n_true, d_in)).
pub fn sparse_mixture(
    n: usize,
    d_in: usize,
    n_true: usize,
    k: usize,
    seed: u64,
) -> (ndarray::Array2<f32>, ndarray::Array2<f32>) {
    let mut rng = cortexflow::stats::SplitMix64::new(seed);
    let mut dirs = ndarray::Array2::from_shape_simple_fn((n_true, d_in), || rng.normal() as f32);
    for mut r in dirs.rows_mut() {
        let norm = r.dot(&r).sqrt();
        r.mapv_inplace(|v| v / norm);
    }
    let mut x = ndarray::Array2::zeros((n, d_in));
    for mut row in x.rows_mut() {
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        while chosen.len() < k {
            let j = rng.below(n_true as u64) as usize;
            if !chosen.contains(&j) {
                chosen.push(j);
            }
        }
        for j in chosen {
            let a = 0.5 + rng.next_f64() as f32;
            row.scaled_add(a, &dirs.row(j));
        }
    }
    (x, dirs)
}

/// Runs scripts/topography_reference.py (scipy/numpy references of the topography and agreement
/// statistics) on one JSON request and returns its JSON answer.
pub fn topography_reference(req: &serde_json::Value) -> serde_json::Value {
    use std::io::Write;
    use std::process::Stdio;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/topography_reference.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs (run `make setup` to create .venv with numpy and scipy)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "topography_reference.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the reference prints JSON")
}

/// The paper's a-priori prediction (Table 16) as shipped in pipelines/topography/paper-table16.tsv:
/// rows Concrete, Event, Affect, Social, Spatial; columns PT, AT, IF, AG, dmPFC.
pub fn table16() -> ndarray::Array2<f64> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/topography/paper-table16.tsv");
    cortexflow::cli::topography::read_labelled_matrix(&path)
        .expect("the shipped Table 16")
        .values
}

/// Language-model outputs shared by the end-to-end tests of a suite run. The LM stage dominates a
/// small pipeline run (about 23 of 36 s for `alice-small`), and its artifacts are content-keyed
/// (model manifest, window, pooling, story, layer): a test that is not about the LM stage starts
/// its store with every LM artifact an earlier test computed, and leaves the ones it computed for
/// the next. `seed_lm(store)` copies the shared ones in now; the returned guard copies the store's
/// new ones out when it is dropped (also when the test fails: a store file is always complete, it
/// is written by rename). Tests about LM recomputation, and one store of the from-scratch
/// comparison in `pipeline.rs`, do not use it, so the LM stage still runs (and is compared with
/// the shared outputs) in every suite run.
pub fn seed_lm(store: &Path) -> SharedLm {
    let cache = shared_lm_dir();
    copy_missing(&cache, &store.join("lm"));
    SharedLm {
        store: store.to_path_buf(),
    }
}

pub struct SharedLm {
    store: PathBuf,
}

impl Drop for SharedLm {
    fn drop(&mut self) {
        copy_missing(&self.store.join("lm"), &shared_lm_dir());
    }
}

fn shared_lm_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shared-lm")
}

/// Copies every file under `from` that `to` lacks (same relative path), each through a temporary
/// name and a rename, so a concurrent reader never sees half a file.
fn copy_missing(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for e in entries.flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_missing(&src, &dst);
        } else if !dst.exists() && !e.file_name().to_string_lossy().starts_with('.') {
            // never panics: it also runs in a drop while a failed test unwinds
            if std::fs::create_dir_all(to).is_err() {
                return;
            }
            let tmp = to.join(format!(".{}.{}", e.file_name().to_string_lossy(), std::process::id()));
            if std::fs::copy(&src, &tmp).is_ok() {
                let _ = std::fs::rename(&tmp, &dst);
            }
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
