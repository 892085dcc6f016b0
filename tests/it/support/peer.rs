//! Helpers for the Python peers shared by tests/it/gguf_reader.rs and tests/it/import_reference.rs:
//! finding the test venv's python, running `scripts/`, reading `.npy` files, running an imported
//! model's graph with every output, measuring differences.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use cortexflow::lm::import::LOGIT_BUDGET_INPUT;
use ndarray::ArrayD;

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The python that runs the peers: `$CORTEXFLOW_PYTHON`, else `<crate>/.venv/bin/python` when
/// it exists (made by `make setup`), else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CORTEXFLOW_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = crate_dir().join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// [`python`], after checking that it runs and imports `modules`; otherwise the test fails
/// with a message that says how to get them (never a silent skip).
pub fn python_with(modules: &[&str]) -> PathBuf {
    let py = python();
    let code = format!("import {}", modules.join(", "));
    match Command::new(&py).args(["-c", &code]).output() {
        Err(e) => panic!(
            "cannot run the test python `{}` ({e}). Run `make setup` (it creates .venv with numpy \
             and gguf), or set CORTEXFLOW_PYTHON to a python that has {modules:?}",
            py.display()
        ),
        Ok(o) if !o.status.success() => panic!(
            "the test python `{}` cannot import {modules:?}:\n{}\nRun `make setup` (it creates .venv \
             with numpy and gguf), or set CORTEXFLOW_PYTHON to a python that has them",
            py.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => py,
    }
}

/// Runs `scripts/<script>` with the checked python (numpy + gguf); panics with its output on
/// failure.
pub fn run_script(script: &str, args: &[&OsStr]) {
    let py = python_with(&["numpy", "gguf"]);
    let path = crate_dir().join("scripts").join(script);
    let out = Command::new(&py)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {}: {e}", py.display(), path.display()));
    assert!(
        out.status.success(),
        "{} {} {:?} failed ({}):\n{}{}",
        py.display(),
        path.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the tiny test GGUF (`scripts/make_tiny_gguf.py`) to `dir/name`; returns its path.
pub fn make_tiny_gguf(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut args: Vec<&OsStr> = vec![path.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    run_script("make_tiny_gguf.py", &args);
    assert!(path.is_file(), "make_tiny_gguf.py did not write {}", path.display());
    path
}

/// A `.npy` array read as f64 (from little-endian `<f4` or `<f8`, C order).
#[derive(Debug, Clone)]
pub struct Npy {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

pub fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        bytes.len() > 10 && &bytes[..6] == b"\x93NUMPY",
        "{} is not a .npy file",
        path.display()
    );
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[hstart..hstart + hlen]).expect("npy header is ASCII");
    let field = |key: &str| -> &str {
        let i = header
            .find(key)
            .unwrap_or_else(|| panic!("{}: no {key} in {header}", path.display()));
        &header[i + key.len()..]
    };
    let descr = field("'descr':").trim_start();
    let descr = &descr[1..descr[1..].find('\'').unwrap() + 1];
    assert!(
        field("'fortran_order':").trim_start().starts_with("False"),
        "{}: Fortran order",
        path.display()
    );
    let shape_txt = field("'shape':");
    let shape_txt = &shape_txt[shape_txt.find('(').unwrap() + 1..shape_txt.find(')').unwrap()];
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let body = &bytes[hstart + hlen..];
    let n: usize = shape.iter().product();
    let data: Vec<f64> = match descr {
        "<f4" => body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        "<f8" => body
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        other => panic!("{}: dtype {other} not supported by this reader", path.display()),
    };
    assert_eq!(
        data.len(),
        n,
        "{}: {} values for shape {shape:?}",
        path.display(),
        data.len()
    );
    Npy { shape, data }
}

/// Runs `<dir>/model.onnx` on one sequence (batch 1, no padding); returns every graph output.
pub fn run_onnx_all_outputs(model_dir: &Path, ids: &[u32]) -> BTreeMap<String, ArrayD<f32>> {
    run_onnx_all_outputs_budget(model_dir, ids, None)
}

/// As [`run_onnx_all_outputs`], with the graph's `logit_budget` input set (logits alive at once
/// while it scores next tokens).
pub fn run_onnx_all_outputs_budget(
    model_dir: &Path,
    ids: &[u32],
    logit_budget: Option<i64>,
) -> BTreeMap<String, ArrayD<f32>> {
    use ort::session::Session;
    use ort::value::Tensor;
    let env = cortexflow::lm::runtime::environment().unwrap_or_else(|e| panic!("{e}"));
    let onnx = model_dir.join("model.onnx");
    let mut session = Session::builder(env)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_intra_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        .unwrap_or_else(|e| panic!("{e}"))
        .commit_from_file(&onnx)
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", onnx.display()));
    let s = ids.len();
    let ids_t = Tensor::from_array(([1usize, s], ids.iter().map(|&t| t as i64).collect::<Vec<i64>>())).unwrap();
    let mask_t = Tensor::from_array(([1usize, s], vec![1i64; s])).unwrap();
    let mut inputs = ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t];
    // every output, the logits included (a graph from `model import` computes them on request)
    // (an input with a default is not among the session's listed inputs: the manifest says)
    let manifest = cortexflow::lm::Manifest::load(model_dir).unwrap_or_else(|e| panic!("{e}"));
    if let Some(switch) = manifest.logits_switch {
        inputs.push((switch.into(), Tensor::from_array(((), vec![true])).unwrap().into()));
    }
    if let Some(n) = logit_budget {
        inputs.push((
            LOGIT_BUDGET_INPUT.into(),
            Tensor::from_array(((), vec![n])).unwrap().into(),
        ));
    }
    let outputs = session
        .run(inputs)
        .unwrap_or_else(|e| panic!("running {}: {e}", onnx.display()));
    let mut all = BTreeMap::new();
    for (name, v) in outputs.iter() {
        let a = v
            .try_extract_array::<f32>()
            .unwrap_or_else(|e| panic!("output {name}: {e}"));
        all.insert(name.to_string(), a.to_owned());
    }
    all
}

/// Max |a − b| and max |b| over paired values; a NaN anywhere makes the difference NaN (so
/// any `diff <= tol` check fails).
pub fn max_diff(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut d, mut m) = (0f64, 0f64);
    for (x, y) in a.into_iter().zip(b) {
        let e = (x - y).abs();
        if e.is_nan() || e > d {
            d = e;
        }
        if d.is_nan() {
            return (f64::NAN, m);
        }
        m = m.max(y.abs());
    }
    (d, m)
}
