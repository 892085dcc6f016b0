//! The imported default model (SmolLM2-135M, GGUF → ONNX by cortexflow) against an independent
//! float64 numpy forward pass written from llama.cpp's conventions (`scripts/reference_llama.py`):
//! same token ids, every residual-stream layer and the logits at every position must agree.
//!
//! The reference applies llama.cpp's adjacent-pair RoPE to the Q/K weights exactly as stored in the
//! GGUF, while cortexflow un-permutes those rows and uses the half-split RoPE with 1/√head_dim
//! folded into W_q, so agreement checks the un-permutation, the RoPE tables, grouped-query
//! attention, the norms, the MLP and the tied LM head.
//!
//! Needs `make setup` (ONNX Runtime, the GGUF, and .venv with numpy + gguf); without them the test
//! fails with that hint. Run with `-- --nocapture` to see the measured differences.

use std::ffi::OsStr;

use cortexflow::lm::{ensure_default_model, LanguageModel, RuntimeOptions};
use peer::{max_diff, read_npy, run_onnx_all_outputs, run_script};

const TEXT: &str = "The capital of France is Paris. In 1865, Alice was 7 years old.";

/// Relative tolerance on hidden states: max |Δ| / max |value| of that layer (and position set).
const HIDDEN_REL_TOL: f64 = 1e-4;
/// Absolute tolerance on logits.
const LOGIT_TOL: f64 = 2e-3;

fn argmax(v: impl IntoIterator<Item = f64>) -> usize {
    v.into_iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |acc, (i, x)| if x > acc.1 { (i, x) } else { acc },
        )
        .0
}

#[test]
fn imported_smollm2_matches_the_numpy_llama_reference() {
    // Fail early, with the setup hint, when the python peer cannot run.
    peer::python_with(&["numpy", "gguf"]);
    let gguf = cortexflow::paths::default_gguf().unwrap_or_else(|e| panic!("{e}"));
    let dir = ensure_default_model().unwrap_or_else(|e| panic!("{e}"));
    let mut lm = LanguageModel::load(&dir, &RuntimeOptions::default()).unwrap_or_else(|e| panic!("{e}"));

    let bos = lm
        .manifest
        .bos_token_id
        .expect("the default model's manifest names a BOS token");
    let enc = lm.tokenizer.encode(TEXT, false).unwrap();
    let mut ids = vec![bos];
    ids.extend(enc.get_ids());
    let toks: Vec<String> = ids
        .iter()
        .map(|&i| lm.tokenizer.id_to_token(i).unwrap_or_default())
        .collect();
    println!("{} ids: {ids:?}\ntokens: {toks:?}", ids.len());
    let (s, n_layers, d_model) = (ids.len(), lm.n_layers(), lm.manifest.d_model);

    // cortexflow: every layer through the public API, and the logits from the graph itself.
    let layers: Vec<usize> = (0..=n_layers).collect();
    let out = lm.run(&[ids.clone()], &layers).unwrap_or_else(|e| panic!("{e}"));
    assert!(out
        .next_logprob
        .iter()
        .chain(out.next_entropy.iter())
        .all(|v| v.is_finite()));
    let all = run_onnx_all_outputs(&dir, &ids);
    let logits = &all["logits"];
    let vocab = lm.manifest.vocab_size;
    assert_eq!(logits.shape(), &[1, s, vocab]);

    // The reference, on the same ids.
    let tmp = tempfile::tempdir().unwrap();
    let csv = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    run_script(
        "reference_llama.py",
        &[
            gguf.as_os_str(),
            OsStr::new("--ids"),
            OsStr::new(&csv),
            OsStr::new("--out"),
            tmp.path().as_os_str(),
        ],
    );

    // Hidden states: positions ≥ 1 relative to their own max |value|, and the BOS position (whose
    // norm is far larger: an attention sink) relative to its own.
    let mut failures = Vec::new();
    let (mut worst_rest, mut worst_bos) = (0f64, 0f64);
    println!("layer  max|Δ| pos≥1  max|x| pos≥1  rel pos≥1 | max|Δ| pos0  max|x| pos0  rel pos0");
    for l in 0..=n_layers {
        let r = read_npy(&tmp.path().join(format!("hidden_state_{l}.npy")));
        assert_eq!(r.shape, vec![s, d_model], "reference hidden_state_{l}");
        let ours = out.hidden[l].as_slice().expect("contiguous");
        assert_eq!(ours.len(), s * d_model);
        let (d0, m0) = max_diff(
            ours[..d_model].iter().map(|&v| v as f64),
            r.data[..d_model].iter().copied(),
        );
        let (d1, m1) = max_diff(
            ours[d_model..].iter().map(|&v| v as f64),
            r.data[d_model..].iter().copied(),
        );
        let (rel0, rel1) = (d0 / m0, d1 / m1);
        println!("{l:>5}  {d1:>12.3e}  {m1:>12.2}  {rel1:>9.2e} | {d0:>11.3e}  {m0:>11.2}  {rel0:>8.2e}");
        worst_rest = worst_rest.max(rel1);
        worst_bos = worst_bos.max(rel0);
        if !(rel1 <= HIDDEN_REL_TOL && rel0 <= HIDDEN_REL_TOL) {
            failures.push(format!(
                "hidden_state_{l}: relative max |Δ| {rel1:e} (positions ≥ 1), {rel0:e} (BOS)"
            ));
        }
    }
    println!("worst relative hidden-state difference: {worst_rest:.3e} (positions ≥ 1), {worst_bos:.3e} (BOS)");

    // Logits: absolute difference and the same argmax at every position.
    let r = read_npy(&tmp.path().join("logits.npy"));
    assert_eq!(r.shape, vec![s, vocab]);
    let ours = logits.as_slice().expect("contiguous");
    let mut worst_logit = 0f64;
    let mut ref_argmax = Vec::with_capacity(s);
    for t in 0..s {
        let (a, b) = (&ours[t * vocab..(t + 1) * vocab], &r.data[t * vocab..(t + 1) * vocab]);
        let (d, m) = max_diff(a.iter().map(|&v| v as f64), b.iter().copied());
        let (ia, ib) = (argmax(a.iter().map(|&v| v as f64)), argmax(b.iter().copied()));
        println!(
            "pos {t:>2} {:<12} max|Δlogit| {d:.3e} (max |logit| {m:.2}); argmax {:?} / reference {:?}",
            toks[t],
            lm.tokenizer.id_to_token(ia as u32).unwrap_or_default(),
            lm.tokenizer.id_to_token(ib as u32).unwrap_or_default()
        );
        if d.is_nan() || d > worst_logit {
            worst_logit = d;
        }
        if ia != ib {
            failures.push(format!(
                "position {t}: argmax {ia} in cortexflow, {ib} in the reference"
            ));
        }
        ref_argmax.push(ib);
    }
    println!("max |Δlogit| over all positions: {worst_logit:.3e}");
    if !(worst_logit <= LOGIT_TOL) {
        failures.push(format!("max |Δlogit| {worst_logit:e} > {LOGIT_TOL:e}"));
    }

    // In-graph next-token log-probability and entropy against the reference logits (f64
    // log-softmax). The log-probability is compared where a next token exists (t < seq − 1); the
    // last position has no next token and is only reported (see the note printed below).
    let (mut worst_lp, mut worst_ent) = (0f64, 0f64);
    for t in 0..s {
        let z = &r.data[t * vocab..(t + 1) * vocab];
        let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_z = mx + z.iter().map(|&v| (v - mx).exp()).sum::<f64>().ln();
        let ent: f64 = z.iter().map(|&v| -(v - log_z).exp() * (v - log_z)).sum();
        let (g_lp, g_ent) = (out.next_logprob[[0, t]] as f64, out.next_entropy[[0, t]] as f64);
        if t + 1 < s {
            worst_lp = worst_lp.max((g_lp - (z[ids[t + 1] as usize] - log_z)).abs());
        } else {
            println!(
                "last position: in-graph next_token_logprob = {g_lp:.4} (the import docs say 0; \
                 reference ln p(token 0) = {:.4})",
                z[0] - log_z
            );
        }
        worst_ent = worst_ent.max((g_ent - ent).abs());
    }
    println!(
        "next_token_logprob max |Δ| {worst_lp:.3e} nats (t < seq − 1); next_token_entropy max |Δ| \
         {worst_ent:.3e} nats"
    );
    if !(worst_lp <= 5e-3 && worst_ent <= 5e-3) {
        failures.push(format!(
            "next-token logprob/entropy differ by {worst_lp:e} / {worst_ent:e} nats (> 5e-3)"
        ));
    }

    // End to end: after "The capital of France is" both predict " Paris".
    let paris = lm
        .tokenizer
        .token_to_id("\u{120}Paris")
        .expect("ĠParis is in the vocabulary") as usize;
    let is_pos = toks.iter().position(|t| t == "\u{120}is").expect("the text has ` is`");
    if ref_argmax[is_pos] != paris {
        failures.push(format!(
            "the reference does not predict ` Paris` after ` is` (argmax {})",
            ref_argmax[is_pos]
        ));
    }

    assert!(
        failures.is_empty(),
        "cortexflow vs reference_llama.py:\n{}",
        failures.join("\n")
    );
}

/// Helpers for the Python peers (duplicated in tests/gguf_reader.rs and tests/import_reference.rs so
/// that each test file stands alone): finding the test venv's python, running `scripts/`, reading
/// `.npy` files, running an imported model's graph with every output, measuring differences.
#[allow(dead_code)]
mod peer {
    use std::collections::BTreeMap;
    use std::ffi::OsStr;
    use std::path::{Path, PathBuf};
    use std::process::Command;

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
        let outputs = session
            .run(ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t])
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
}
