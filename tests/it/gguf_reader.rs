//! GGUF reading and import, checked against the llama.cpp `gguf` Python package (gguf-py):
//! - every tensor of a tiny generated GGUF (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K)
//!   dequantizes exactly as `gguf.quants.dequantize` does, and so do three tensors of the real
//!   SmolLM2 GGUF (Q8_0, Q4_1, F32);
//! - the tiny llama GGUF imports, runs in ONNX Runtime, and its hidden states and logits match the
//!   independent numpy forward pass `scripts/reference_llama.py`;
//! - unsupported architectures and tensor types, truncated files, non-GGUF files and missing files
//!   are errors that say what is wrong, and a failed import writes nothing.
//!
//! Fixtures are generated at test time by `scripts/make_tiny_gguf.py` (needs the test venv: `make
//! setup`); a missing python, numpy or gguf fails the tests with that hint.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;

use cortexflow::lm::gguf::{GgmlType, Gguf};
use cortexflow::lm::import::{WeightsFile, EXTERNAL_DATA_FILE};
use cortexflow::lm::{import_gguf, ImportOptions, LanguageModel, RuntimeOptions, WeightPrecision};
use cortexflow::Error;
use peer::{make_tiny_gguf, max_diff, read_npy, run_onnx_all_outputs, run_onnx_all_outputs_budget, run_script};

/// Dumps the named tensors (`NAME[:ROWS]`, or `all`) of `gguf` dequantized by gguf-py into `out`.
fn dump_reference_tensors(gguf: &Path, specs: &str, out: &Path) {
    run_script(
        "reference_llama.py",
        &[
            gguf.as_os_str(),
            OsStr::new("--dump-tensors"),
            OsStr::new(specs),
            OsStr::new("--out"),
            out.as_os_str(),
        ],
    );
}

/// Compares cortexflow's dequantization of `name` (first `rows` rows, or all) with gguf-py's.
/// Returns (max |Δ|, number of values differing at all, number of values).
fn compare_tensor(g: &Gguf, name: &str, rows: Option<usize>, ref_dir: &Path) -> (f64, usize, usize) {
    let (shape, data) = g.tensor_f32(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference = read_npy(&ref_dir.join(format!("{name}.npy")));
    let mut want_shape = shape.clone();
    if let Some(r) = rows {
        want_shape[0] = want_shape[0].min(r);
    }
    assert_eq!(
        reference.shape, want_shape,
        "{name}: gguf-py shape vs cortexflow shape {shape:?}"
    );
    let n = reference.data.len();
    let ours = &data[..n];
    assert!(
        ours.iter().all(|v| v.is_finite()),
        "{name}: non-finite values in cortexflow's dequantization"
    );
    let mut worst = 0f64;
    let mut n_diff = 0;
    for (i, (&a, &b)) in ours.iter().zip(&reference.data).enumerate() {
        let d = (a as f64 - b).abs();
        if d != 0.0 {
            n_diff += 1;
        }
        worst = worst.max(d);
        assert!(
            d <= 1e-6 * b.abs().max(1.0),
            "{name}: element {i} (row {}, col {}) is {a} in cortexflow, {b} in gguf-py",
            i / shape.last().copied().unwrap_or(1),
            i % shape.last().copied().unwrap_or(1)
        );
    }
    (worst, n_diff, n)
}

#[test]
fn tiny_gguf_every_tensor_dequantizes_like_gguf_py() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = make_tiny_gguf(tmp.path(), "tiny.gguf", &[]);
    let ref_dir = tmp.path().join("ref");
    dump_reference_tensors(&tiny, "all", &ref_dir);
    let g = Gguf::open(&tiny).unwrap();
    assert_eq!(g.version, 3);
    let mut types = BTreeSet::new();
    for t in &g.tensors {
        let (worst, n_diff, n) = compare_tensor(&g, &t.name, None, &ref_dir);
        println!(
            "{:<28} {:<5} {:?}: max |Δ| = {worst:e} ({n_diff} of {n} values differ)",
            t.name,
            t.ggml_type.name(),
            t.shape()
        );
        types.insert(t.ggml_type.name());
    }
    for want in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
    ] {
        assert!(
            types.contains(&want.name()),
            "the tiny GGUF has no {} tensor (has {types:?})",
            want.name()
        );
    }
}

#[test]
fn real_smollm2_tensors_dequantize_like_gguf_py() {
    let gguf = cortexflow::paths::default_gguf().unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap();
    let specs = [
        ("token_embd.weight", Some(1000)),
        ("blk.0.attn_q.weight", None),
        ("blk.0.attn_norm.weight", None),
    ];
    let arg: Vec<String> = specs
        .iter()
        .map(|(n, r)| r.map_or_else(|| n.to_string(), |r| format!("{n}:{r}")))
        .collect();
    dump_reference_tensors(&gguf, &arg.join(","), tmp.path());
    let g = Gguf::open(&gguf).unwrap();
    let want_types = [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::F32];
    for ((name, rows), ty) in specs.into_iter().zip(want_types) {
        assert_eq!(g.tensor(name).unwrap().ggml_type, ty, "{name}");
        let (worst, n_diff, n) = compare_tensor(&g, name, rows, tmp.path());
        println!(
            "{name:<24} {:<5}: max |Δ| = {worst:e} ({n_diff} of {n} values differ)",
            ty.name()
        );
    }
}

/// Runs `scripts/reference_llama.py` (the float64 NumPy forward pass) on `ids` into `out`.
fn numpy_reference(gguf: &Path, ids: &[u32], out: &Path) -> std::path::PathBuf {
    let csv = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    run_script(
        "reference_llama.py",
        &[
            gguf.as_os_str(),
            OsStr::new("--ids"),
            OsStr::new(&csv),
            OsStr::new("--out"),
            out.as_os_str(),
        ],
    );
    out.to_path_buf()
}

#[test]
fn tiny_llama_imports_runs_and_matches_the_numpy_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = make_tiny_gguf(tmp.path(), "tiny.gguf", &[]);
    let model_dir = tmp.path().join("model");
    let report = import_gguf(&tiny, &model_dir, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let m = &report.manifest;
    assert_eq!((m.n_layers, m.d_model, m.vocab_size, m.context_length), (1, 64, 64, 64));
    assert_eq!(m.bos_token_id, Some(1));
    assert_eq!(m.hidden_states, vec!["hidden_state_0", "hidden_state_1"]);
    for f in ["model.onnx", "tokenizer.json", "manifest.json"] {
        assert!(model_dir.join(f).is_file(), "import did not write {f}");
    }

    let mut lm = LanguageModel::load(&model_dir, &RuntimeOptions::with_threads(1)).unwrap_or_else(|e| panic!("{e}"));
    // The 64-token BPE vocabulary and merges survive the conversion to tokenizer.json.
    let text = "the cat is on the mat";
    let enc = lm.tokenizer.encode(text, false).unwrap();
    let decoded = lm.tokenizer.decode(enc.get_ids(), false).unwrap();
    assert_eq!(decoded, text, "tokenizer round trip (ids {:?})", enc.get_ids());
    assert_eq!(lm.tokenizer.token_to_id("\u{120}the"), Some(45));
    let mut ids = vec![1u32];
    ids.extend(enc.get_ids());
    ids.extend([40, 41, 5, 63, 0]);

    let out = lm.run(&[ids.clone()], &[0, 1]).unwrap_or_else(|e| panic!("{e}"));
    for (l, h) in out.hidden.iter().enumerate() {
        assert_eq!(h.shape(), &[1, ids.len(), 64]);
        assert!(
            h.iter().all(|v| v.is_finite()),
            "hidden_state_{l} has non-finite values"
        );
    }
    assert!(out
        .next_logprob
        .iter()
        .chain(out.next_entropy.iter())
        .all(|v| v.is_finite()));
    let all = run_onnx_all_outputs(&model_dir, &ids);
    let logits = &all["logits"];
    assert_eq!(logits.shape(), &[1, ids.len(), 64]);
    assert!(logits.iter().all(|v| v.is_finite()));

    let ref_dir = numpy_reference(&tiny, &ids, &tmp.path().join("ref"));
    for (l, h) in out.hidden.iter().enumerate() {
        let r = read_npy(&ref_dir.join(format!("hidden_state_{l}.npy")));
        assert_eq!(r.shape, vec![ids.len(), 64]);
        let (d, mx) = max_diff(h.iter().map(|&v| v as f64), r.data.iter().copied());
        println!("tiny hidden_state_{l}: max |Δ| = {d:.3e} (max |value| {mx:.3})");
        assert!(d <= 1e-4, "tiny hidden_state_{l}: max |Δ| = {d:e} > 1e-4");
    }
    let r = read_npy(&ref_dir.join("logits.npy"));
    assert_eq!(r.shape, vec![ids.len(), 64]);
    let (d, mx) = max_diff(logits.iter().map(|&v| v as f64), r.data.iter().copied());
    println!("tiny logits: max |Δ| = {d:.3e} (max |value| {mx:.3})");
    assert!(d <= 1e-4, "tiny logits: max |Δ| = {d:e} > 1e-4");

    // f16 weights: the Cast path runs and stays close (weights are rounded to f16 once).
    let f16_dir = tmp.path().join("model_f16");
    let opts = ImportOptions {
        precision: WeightPrecision::F16,
        ..Default::default()
    };
    import_gguf(&tiny, &f16_dir, &opts).unwrap_or_else(|e| panic!("{e}"));
    let all16 = run_onnx_all_outputs(&f16_dir, &ids);
    let (d16, _) = max_diff(all16["logits"].iter().map(|&v| v as f64), r.data.iter().copied());
    println!("tiny logits, f16 weights: max |Δ| = {d16:.3e}");
    assert!(d16 <= 2e-2, "tiny logits with f16 weights: max |Δ| = {d16:e}");
}

#[test]
fn tiny_gpt2_imports_and_matches_the_numpy_reference_and_its_lens_uses_layernorm() {
    // GPT-2 as llama.cpp's converter writes it (learned positions, LayerNorm with biases, fused
    // QKV, GELU MLP, biases everywhere), 2 blocks, random weights from gguf-py
    let tmp = tempfile::tempdir().unwrap();
    let tiny = make_tiny_gguf(tmp.path(), "gpt2.gguf", &["--arch", "gpt2"]);
    let model_dir = tmp.path().join("model");
    let report = import_gguf(&tiny, &model_dir, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let m = &report.manifest;
    assert_eq!(m.architecture, "gpt2");
    assert_eq!((m.n_layers, m.d_model, m.vocab_size, m.context_length), (2, 64, 64, 64));

    let mut lm = LanguageModel::load(&model_dir, &RuntimeOptions::with_threads(1)).unwrap_or_else(|e| panic!("{e}"));
    let enc = lm.tokenizer.encode("the cat is on the mat", false).unwrap();
    let mut ids = vec![0u32];
    ids.extend(enc.get_ids());
    ids.extend([40, 41, 5, 63, 7, 9, 11]);
    let out = lm.run(&[ids.clone()], &[0, 1, 2]).unwrap_or_else(|e| panic!("{e}"));
    let all = run_onnx_all_outputs(&model_dir, &ids);
    let logits = &all["logits"];

    let ref_dir = numpy_reference(&tiny, &ids, &tmp.path().join("ref"));
    for (l, h) in out.hidden.iter().enumerate() {
        let r = read_npy(&ref_dir.join(format!("hidden_state_{l}.npy")));
        assert_eq!(r.shape, vec![ids.len(), 64]);
        let (d, mx) = max_diff(h.iter().map(|&v| v as f64), r.data.iter().copied());
        println!(
            "tiny GPT-2 hidden_state_{l}: max |Δ| = {d:.3e}, relative {:.3e}",
            d / mx
        );
        assert!(d <= 1e-5 * mx, "GPT-2 hidden_state_{l}: max |Δ| = {d:e} > 1e-5 × {mx}");
    }
    let r = read_npy(&ref_dir.join("logits.npy"));
    let (d, mx) = max_diff(logits.iter().map(|&v| v as f64), r.data.iter().copied());
    println!("tiny GPT-2 logits: max |Δ| = {d:.3e}, relative {:.3e}", d / mx);
    assert!(d <= 1e-5 * mx, "GPT-2 logits: max |Δ| = {d:e} > 1e-5 × {mx}");
    let v = 64;
    let argmax = |row: &[f64]| (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
    for i in 0..ids.len() {
        let ours: Vec<f64> = logits.as_slice().unwrap()[i * v..(i + 1) * v]
            .iter()
            .map(|&x| x as f64)
            .collect();
        assert_eq!(
            argmax(&ours),
            argmax(&r.data[i * v..(i + 1) * v]),
            "position {i}: argmax differs"
        );
    }

    // the lens reads the final LayerNorm (weight, bias, ε) from the GGUF: at the last layer it is
    // the model's own read-out
    let lens = cortexflow::lm::lens::Lens::load(&model_dir).unwrap_or_else(|e| panic!("{e}"));
    let last = out.hidden[2].index_axis(ndarray::Axis(0), 0).to_owned();
    let lens_h = lens.entropy_bits(last.view()).unwrap();
    for (i, &hl) in lens_h.iter().enumerate() {
        let row: Vec<f32> = logits.as_slice().unwrap()[i * v..(i + 1) * v].to_vec();
        let model_h = cortexflow::lm::lens::entropy_bits_of_logits(&row);
        assert!(
            (hl - model_h).abs() < 1e-4,
            "position {i}: lens {hl} vs model {model_h} bits"
        );
    }
    // the graph's own next-token entropy (nats) agrees too
    for (i, &e) in out.next_entropy.iter().enumerate().take(ids.len()) {
        let bits = e as f64 / std::f64::consts::LN_2;
        assert!(
            (bits - lens_h[i]).abs() < 1e-4,
            "position {i}: graph {bits} vs lens {} bits",
            lens_h[i]
        );
    }

    // words through the model: overlapping windows work; a cache that drops old tokens is refused
    // (learned absolute positions cannot be moved down)
    let mut story = crate::support::lpp_run("en", 1);
    story.words.truncate(60);
    for w in &mut story.words {
        w.text = w
            .text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_lowercase())
            .collect();
    }
    story.words.retain(|w| !w.text.is_empty());
    let opts = |context| cortexflow::lm::ExtractOptions {
        context,
        window: 32,
        min_context: 8,
        layers: vec![1, 2],
        ..Default::default()
    };
    let x = cortexflow::lm::extract_story(&mut lm, &story, &opts(cortexflow::lm::extract::ContextPolicy::Windows))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(x.n_windows > 1 && x.activations[1].iter().all(|v| v.is_finite()));
    for policy in [
        cortexflow::lm::extract::ContextPolicy::Sliding,
        cortexflow::lm::extract::ContextPolicy::Full,
    ] {
        let e = cortexflow::lm::extract_story(&mut lm, &story, &opts(policy))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute positions") && e.contains("windows"), "{e}");
    }
}

#[test]
fn a_truncated_import_keeps_the_hidden_states_and_drops_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = make_tiny_gguf(tmp.path(), "tiny.gguf", &[]);
    let full = tmp.path().join("full");
    import_gguf(&tiny, &full, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let cut = tmp.path().join("cut");
    let opts = ImportOptions {
        blocks: Some(1),
        ..Default::default()
    };
    let r = import_gguf(&tiny, &cut, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.manifest.truncated_from, Some(1));
    assert_eq!(
        (r.manifest.logits.as_deref(), r.manifest.next_token_entropy.as_deref()),
        (None, None)
    );
    let ids = vec![1u32, 45, 40, 41, 5, 63];
    let a = run_onnx_all_outputs(&full, &ids);
    let b = run_onnx_all_outputs(&cut, &ids);
    let mut names: Vec<&String> = b.keys().collect();
    names.sort();
    assert_eq!(
        names,
        vec!["hidden_state_0", "hidden_state_1", "present_key_0", "present_value_0"],
        "the truncated graph's outputs: the kept layers and the kept block's key/value cache"
    );
    for n in names {
        assert_eq!(a[n], b[n], "{n} differs between the full and the truncated graph");
    }
    // the runtime accepts it and returns the kept layers only
    let mut lm = LanguageModel::load(&cut, &RuntimeOptions::with_threads(1)).unwrap_or_else(|e| panic!("{e}"));
    let h = lm.run_hidden(&[ids.clone()], &[1]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h[0].shape(), &[1, ids.len(), 64]);
    assert!(
        lm.run_hidden(&[ids], &[2]).is_err(),
        "layer 2 of a 1-block graph must be refused"
    );
    // more blocks than the model has is refused before anything is written
    let too_many = ImportOptions {
        blocks: Some(2),
        ..Default::default()
    };
    let out = tmp.path().join("too_many");
    let e = import_gguf(&tiny, &out, &too_many)
        .err()
        .expect("2 blocks of a 1-block model");
    assert!(e.to_string().contains("cannot keep 2 blocks"), "{e}");
    assert!(!out.exists());
}

/// The error of `import_gguf(gguf → dir/out)`, checking that nothing was written.
fn import_error(gguf: &Path, dir: &Path) -> Error {
    let out = dir.join("out");
    let e = match import_gguf(gguf, &out, &ImportOptions::default()) {
        Ok(_) => panic!("importing {} succeeded, expected an error", gguf.display()),
        Err(e) => e,
    };
    assert!(
        !out.exists(),
        "a failed import of {} created {}",
        gguf.display(),
        out.display()
    );
    e
}

#[test]
fn an_unsupported_architecture_is_refused_by_the_importer() {
    let tmp = tempfile::tempdir().unwrap();
    let g = make_tiny_gguf(tmp.path(), "falcon.gguf", &["--arch", "falcon"]);
    let msg = import_error(&g, tmp.path()).to_string();
    println!("{msg}");
    assert!(msg.contains("falcon") && msg.contains("not supported"), "{msg}");
}

#[test]
fn unsupported_tensor_type_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = make_tiny_gguf(tmp.path(), "bad.gguf", &["--bad-type"]);
    // Opening works (the type is only refused when the tensor is needed) …
    let g = Gguf::open(&bad).unwrap_or_else(|e| panic!("{e}"));
    let e = g
        .tensor_f32("blk.0.ffn_up.weight")
        .expect_err("IQ4_NL must not dequantize");
    let msg = e.to_string();
    println!("{msg}");
    assert!(msg.contains("blk.0.ffn_up.weight") && msg.contains("IQ4_NL"), "{msg}");
    // … the other tensors still read …
    assert!(g.tensor_f32("blk.0.ffn_gate.weight").is_ok());
    // … and the importer refuses up front, naming tensor and type.
    let msg = import_error(&bad, tmp.path()).to_string();
    println!("{msg}");
    assert!(msg.contains("blk.0.ffn_up.weight") && msg.contains("IQ4_NL"), "{msg}");
}

#[test]
fn truncated_gguf_is_an_error_and_imports_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = make_tiny_gguf(tmp.path(), "tiny.gguf", &[]);
    let bytes = std::fs::read(&tiny).unwrap();
    let g = Gguf::open(&tiny).unwrap();
    let first = g.tensors.iter().min_by_key(|t| t.offset).unwrap();
    let last = g.tensors.iter().max_by_key(|t| t.offset + t.n_bytes).unwrap();
    // (GGUFWriter pads the last tensor to the 32-byte alignment; cutting only padding is not an error,
    // as in llama.cpp's loader, so the last cut removes one byte of tensor data.)
    let data_start = first.offset as usize;
    let cuts = [
        ("inside the magic", 2),
        ("inside the tensor count", 12),
        ("inside the metadata", 300),
        ("inside the tensor infos", data_start - 40),
        (
            "in the middle of the first tensor's data",
            data_start + first.n_bytes as usize / 2,
        ),
        (
            "in the middle of the last tensor's data",
            (last.offset + last.n_bytes / 2) as usize,
        ),
        (
            "one byte short of the last tensor's data",
            (last.offset + last.n_bytes - 1) as usize,
        ),
    ];
    for (i, (what, cut)) in cuts.into_iter().enumerate() {
        assert!(cut < bytes.len());
        let dir = tmp.path().join(format!("cut{i}"));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("cut.gguf");
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = match Gguf::open(&path) {
            Ok(_) => panic!("opening a GGUF cut {what} (at byte {cut}) succeeded"),
            Err(e) => e,
        };
        let msg = e.to_string();
        println!("cut {what} (byte {cut}): {msg}");
        assert!(msg.contains("truncated"), "cut {what}: {msg}");
        assert!(
            matches!(&e, Error::Parse { path: p, .. } if p == &path),
            "cut {what}: {e:?}"
        );
        let msg = import_error(&path, &dir).to_string();
        assert!(msg.contains("truncated"), "import of a GGUF cut {what}: {msg}");
    }
}

#[test]
fn non_gguf_and_empty_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("notes.gguf");
    std::fs::write(&text, "this is a text file, not a model\n").unwrap();
    let msg = Gguf::open(&text)
        .err()
        .expect("a text file must not open as GGUF")
        .to_string();
    println!("{msg}");
    assert!(msg.contains("not a GGUF file"), "{msg}");
    let msg = import_error(&text, tmp.path()).to_string();
    assert!(msg.contains("not a GGUF file"), "{msg}");

    let empty = tmp.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let msg = Gguf::open(&empty)
        .err()
        .expect("an empty file must not open as GGUF")
        .to_string();
    println!("{msg}");
    assert!(msg.contains(&empty.display().to_string()), "{msg}");
}

#[test]
fn missing_file_is_an_io_error_with_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-model.gguf");
    for e in [
        Gguf::open(&missing).err().expect("missing file"),
        import_error(&missing, tmp.path()),
    ] {
        println!("{e}");
        match &e {
            Error::Io { path, source } => {
                assert_eq!(path, &missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected Error::Io for a missing file, got {other:?}"),
        }
        assert!(e.to_string().contains(&missing.display().to_string()));
    }
}

use crate::support::peer;

/// A corrupt tensor offset or dimension must be an error naming the file, never a panic (in debug
/// builds the unchecked `data_start + rel` and `dims.iter().product()` in `Gguf::open` overflow and
/// panic; in release they wrap and can pass the bounds check).
#[test]
fn corrupt_tensor_header_fields_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = make_tiny_gguf(tmp.path(), "tiny.gguf", &[]);
    let bytes = std::fs::read(&tiny).unwrap();
    // The tensor info of `token_embd.weight`: u64 name length, name, u32 rank (2), 2 × u64 dims,
    // u32 type, u64 offset (relative to the data section).
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).rposition(|w| w == name).unwrap() + name.len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 2);
    let (dims_at, offset_at) = (at + 4, at + 4 + 16 + 4);
    let cases: [(&str, usize, u64); 2] = [
        ("offset near u64::MAX", offset_at, u64::MAX - 7),
        ("dimension 2^40", dims_at, 1 << 40),
    ];
    let mut failures = Vec::new();
    for (what, pos, value) in cases {
        let mut b = bytes.clone();
        b[pos..pos + 8].copy_from_slice(&value.to_le_bytes());
        if what.starts_with("dimension") {
            b[pos + 8..pos + 16].copy_from_slice(&value.to_le_bytes());
        }
        let path = tmp.path().join("corrupt.gguf");
        std::fs::write(&path, &b).unwrap();
        let r = std::panic::catch_unwind(|| Gguf::open(&path).err().map(|e| e.to_string()));
        match r {
            Ok(Some(msg)) => println!("{what}: {msg}"),
            Ok(None) => failures.push(format!("{what}: opened without error")),
            Err(_) => failures.push(format!("{what}: Gguf::open panicked")),
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

/// Every output of two model folders, run on the same ids, must be bit-identical.
fn assert_same_outputs(a_dir: &Path, b_dir: &Path, ids: &[u32]) -> usize {
    let a = run_onnx_all_outputs(a_dir, ids);
    let b = run_onnx_all_outputs(b_dir, ids);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the two graphs' outputs"
    );
    for (name, x) in &a {
        assert_eq!(
            x,
            &b[name],
            "{name} differs between {} and {}",
            a_dir.display(),
            b_dir.display()
        );
    }
    a.len()
}

fn ext_opts() -> ImportOptions {
    ImportOptions {
        weights_file: WeightsFile::External,
        ..Default::default()
    }
}

/// Weights moved to ONNX external data change nothing the graph computes, on the tiny model and
/// on SmolLM2 (`model import --external-data`).
#[test]
fn external_data_gives_bit_identical_outputs_to_inline_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = make_tiny_gguf(tmp.path(), "tiny.gguf", &[]);
    let ids = vec![1u32, 45, 40, 41, 5, 63, 7, 22];
    let inline = tmp.path().join("inline");
    let r = import_gguf(&tiny, &inline, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.external_data_bytes, r.manifest.external_data), (None, None));
    assert!(!inline.join(EXTERNAL_DATA_FILE).exists());
    let ext = tmp.path().join("ext");
    // every tensor of 1 kB or more moves (the weight matrices, the RoPE tables); norms stay
    let r = import_gguf(&tiny, &ext, &ext_opts()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.manifest.external_data.as_deref(), Some(EXTERNAL_DATA_FILE));
    let data_len = std::fs::metadata(ext.join(EXTERNAL_DATA_FILE)).unwrap().len();
    assert_eq!(Some(data_len), r.external_data_bytes);
    let n = assert_same_outputs(&inline, &ext, &ids);
    println!("tiny model: {n} outputs bit-identical; {data_len} bytes external");

    // SmolLM2-135M: 0.54 GB of weights move out of model.onnx
    let gguf = cortexflow::paths::default_gguf().unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (tmp.path().join("smol"), tmp.path().join("smol_ext"));
    let ra = import_gguf(&gguf, &a, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let rb = import_gguf(&gguf, &b, &ext_opts()).unwrap_or_else(|e| panic!("{e}"));
    let data = rb.external_data_bytes.expect("external data written");
    println!(
        "SmolLM2: inline model.onnx {:.0} MB; external: model.onnx {:.1} MB + {:.0} MB of data",
        ra.onnx_bytes as f64 / 1e6,
        rb.onnx_bytes as f64 / 1e6,
        data as f64 / 1e6
    );
    assert!(rb.onnx_bytes * 20 < ra.onnx_bytes, "the weights left model.onnx");
    assert!(data + rb.onnx_bytes >= ra.onnx_bytes, "all bytes are somewhere");
    let lm = LanguageModel::load(&b, &RuntimeOptions::with_threads(1)).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<u32> = lm
        .tokenizer
        .encode("Alice was beginning to get very tired of sitting by her sister", false)
        .unwrap()
        .get_ids()
        .to_vec();
    drop(lm);
    let n = assert_same_outputs(&a, &b, &ids);
    println!("SmolLM2: {n} outputs bit-identical over {} tokens", ids.len());

    // the data file is part of the model: without it, loading says which file is missing
    std::fs::remove_file(b.join(EXTERNAL_DATA_FILE)).unwrap();
    let e = LanguageModel::load(&b, &RuntimeOptions::with_threads(1))
        .err()
        .expect("a model without its weights");
    assert!(e.to_string().contains(EXTERNAL_DATA_FILE), "{e}");
}

/// A model whose weights exceed protobuf's 2 GiB limit: the tiny model with its MLP padded by
/// zeros to 2,800,000 units (2.15 GB of f32 tensors in a sparse GGUF). The importer chooses
/// external data by itself, refuses inline weights before converting anything, and the imported
/// model computes what the unpadded one does.
#[test]
fn a_model_past_two_gigabytes_imports_as_external_data_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = make_tiny_gguf(tmp.path(), "tiny.gguf", &[]);
    let big = make_tiny_gguf(tmp.path(), "big.gguf", &["--ffn-pad", "2800000"]);
    let meta = std::fs::metadata(&big).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        println!(
            "big.gguf: {:.2} GB, {:.1} MB on disk",
            meta.len() as f64 / 1e9,
            meta.blocks() as f64 * 512.0 / 1e6
        );
    }
    assert!(meta.len() > 1 << 31, "the synthetic GGUF must exceed 2 GiB");

    // inline is refused up front, and nothing is written
    let refused = tmp.path().join("inline");
    let opts = ImportOptions {
        weights_file: WeightsFile::Inline,
        ..Default::default()
    };
    let e = import_gguf(&big, &refused, &opts).err().expect("2.15 GB inline");
    assert!(
        e.to_string().contains("2 GiB") && e.to_string().contains("external"),
        "{e}"
    );
    assert!(!refused.exists(), "a refused import wrote {}", refused.display());

    let out = tmp.path().join("big");
    let started = std::time::Instant::now();
    let r = import_gguf(&big, &out, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let data = r
        .external_data_bytes
        .expect("external data chosen for a model past 2 GiB");
    println!(
        "import: model.onnx {:.2} MB + {:.2} GB of external data in {:.1} s",
        r.onnx_bytes as f64 / 1e6,
        data as f64 / 1e9,
        started.elapsed().as_secs_f64()
    );
    assert!(data > 1 << 31);
    assert!(r.onnx_bytes < 1 << 20, "the graph itself stays small");

    let small = tmp.path().join("small");
    import_gguf(&tiny, &small, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let ids = vec![1u32, 45, 40, 41, 5, 63, 7, 22];
    let a = run_onnx_all_outputs(&small, &ids);
    let b = run_onnx_all_outputs(&out, &ids);
    for name in ["hidden_state_1", "logits", "next_token_logprob"] {
        let (d, mx) = max_diff(b[name].iter().map(|&v| v as f64), a[name].iter().map(|&v| v as f64));
        println!("{name}: max |Δ| = {d:.3e} (max |value| {mx:.3})");
        assert!(d <= 1e-5 * mx.max(1.0), "{name}: max |Δ| = {d:e} (max |value| {mx})");
    }
    let argmax = |x: &ndarray::ArrayD<f32>| -> Vec<usize> {
        x.lanes(ndarray::Axis(2))
            .into_iter()
            .map(|l| (0..l.len()).max_by(|&i, &j| l[i].total_cmp(&l[j])).unwrap())
            .collect()
    };
    assert_eq!(argmax(&a["logits"]), argmax(&b["logits"]), "next-token argmax");
}

/// The graph scores next tokens by a `Loop` over chunks of positions (at most `logit_budget`
/// logits alive at once): every chunk size gives what a log-softmax of the full logits gives, and
/// the full logits are computed only when `want_logits` asks for them.
#[test]
fn next_token_statistics_are_the_same_for_every_chunk_size_and_equal_the_full_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = make_tiny_gguf(tmp.path(), "tiny.gguf", &[]);
    let dir = tmp.path().join("model");
    import_gguf(&tiny, &dir, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let ids = vec![1u32, 45, 40, 41, 5, 63, 7, 22, 9, 30, 31];
    let s = ids.len();
    let one_chunk = run_onnx_all_outputs(&dir, &ids);
    let logits = &one_chunk["logits"];
    assert_eq!(logits.shape(), &[1, s, 64]);
    // the reference, in f64 from the full logits
    let (mut lp_ref, mut ent_ref, mut last_ref) = (vec![0f64; s], vec![0f64; s], vec![0f64; 64]);
    for t in 0..s {
        let row: Vec<f64> = (0..64).map(|v| logits[[0, t, v]] as f64).collect();
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
        ent_ref[t] = -row.iter().map(|x| (x - lse).exp() * (x - lse)).sum::<f64>();
        if t + 1 < s {
            lp_ref[t] = row[ids[t + 1] as usize] - lse;
        } else {
            last_ref = row.iter().map(|x| x - lse).collect();
        }
    }
    // budget 64·4: 4 positions a chunk (3 iterations, one padded position); 1: one position a chunk
    for budget in [None, Some(64 * 4), Some(1)] {
        let out = match budget {
            None => one_chunk.clone(),
            Some(b) => run_onnx_all_outputs_budget(&dir, &ids, Some(b)),
        };
        for (name, want) in [
            ("next_token_logprob", &lp_ref),
            ("next_token_entropy", &ent_ref),
            ("last_token_logprobs", &last_ref),
        ] {
            let got = &out[name];
            assert_eq!(got.len(), want.len(), "{name} with budget {budget:?}");
            let (d, mx) = max_diff(got.iter().map(|&v| v as f64), want.iter().copied());
            println!("budget {budget:?}: {name} max |Δ| = {d:.2e} (max |value| {mx:.2})");
            assert!(
                d <= 1e-5 * mx.max(1.0),
                "{name} with budget {budget:?}: max |Δ| = {d:e}"
            );
        }
    }

    // without `want_logits`, the `logits` output is empty: no [batch, seq, vocab] tensor is made
    use ort::session::Session;
    use ort::value::Tensor;
    let env = cortexflow::lm::runtime::environment().unwrap_or_else(|e| panic!("{e}"));
    let mut session = Session::builder(env)
        .unwrap()
        .commit_from_file(dir.join("model.onnx"))
        .unwrap_or_else(|e| panic!("{e}"));
    let ids_t = Tensor::from_array(([1usize, s], ids.iter().map(|&t| t as i64).collect::<Vec<i64>>())).unwrap();
    let mask_t = Tensor::from_array(([1usize, s], vec![1i64; s])).unwrap();
    let outputs = session
        .run(ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t])
        .unwrap_or_else(|e| panic!("{e}"));
    let plain = outputs["logits"].try_extract_array::<f32>().unwrap();
    assert_eq!(plain.shape(), &[0, 0, 64], "logits computed without being asked for");
    let lp = outputs["next_token_logprob"].try_extract_array::<f32>().unwrap();
    assert_eq!(
        lp.as_slice().unwrap(),
        one_chunk["next_token_logprob"].as_slice().unwrap()
    );
}
