//! SAE folders on disk.
//!
//! cortexflow's own ReLU folders ([`save_relu_sae`] / [`load_relu_sae`]):
//!
//! ```text
//! {dir}/cfg.json                    architecture "relu", d_in, d_sae, dtype, input_scale,
//!                                   apply_b_dec_to_input, cortexflow_version, train (the config)
//! {dir}/sae_weights.safetensors     W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_in),
//!                                   b_dec (d_in); f32, SAELens tensor names
//! ```
//! The weights are stored as trained, i.e. in normalised units: an input `x` is encoded as
//! `ReLU((x · input_scale − b_dec) W_enc + b_enc)` (the scale is not folded into the weights, so
//! decoder rows stay unit-norm). Both files are written atomically (temporary file + rename); a
//! save/load round trip is exact.
//!
//! Any architecture ([`Sae`]): [`load_sae`] recognises cortexflow, SAELens and EleutherAI
//! sparsify folders ([`load_saelens_sae`], [`load_sparsify_sae`]); [`save_saelens_sae`] writes
//! SAELens folders (input scale folded into the weights). Errors name the file and the key or
//! tensor; [`LoadedSae::check_input`] names the folder's `d_in` when activations do not fit.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::config::SaeTrainConfig;
use super::model::{Sae, SaeKind};
use super::relu::ReluSae;
use crate::{Error, Result};

/// File name of the folder's configuration.
pub const CFG_FILE: &str = "cfg.json";
/// File name of the folder's tensors.
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";

/// Contents of `cfg.json`. Unknown keys are ignored on load (room for SAELens' own keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeFolderConfig {
    /// "relu" for [`ReluSae`].
    pub architecture: String,
    pub d_in: usize,
    pub d_sae: usize,
    /// Always "float32" when written by cortexflow.
    pub dtype: String,
    /// Multiplies raw inputs before encoding (see [`ReluSae::input_scale`]).
    pub input_scale: f32,
    /// Always true for [`ReluSae`]: `b_dec` is subtracted from the input before encoding.
    pub apply_b_dec_to_input: bool,
    /// Version of cortexflow that wrote the folder.
    #[serde(default)]
    pub cortexflow_version: String,
    /// The training configuration, when the SAE was trained by cortexflow.
    #[serde(default)]
    pub train: Option<SaeTrainConfig>,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let werr = |e: std::io::Error| Error::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{file_name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes named f32 tensors `(name, shape, data)` as a safetensors file (metadata
/// `format = pt`, as PyTorch-written files), atomically.
pub(crate) fn write_f32_tensors(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) -> Result<()> {
    let werr = |m: String| Error::Write {
        path: path.to_path_buf(),
        message: m,
    };
    let data: Vec<(&str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, shape, v)| (*n, shape.clone(), le_bytes(v)))
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (*name, v))
                .map_err(|e| werr(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| werr(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Every tensor of a safetensors file, as flat f32 vectors (f32 files only).
pub(crate) fn read_f32_tensors(path: &Path) -> Result<HashMap<String, Vec<f32>>> {
    let bytes = read_safetensors(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::parse(path, "safetensors", e.to_string()))?;
    let mut out = HashMap::new();
    for name in st.names() {
        let shape = st
            .tensor(name)
            .map_err(|e| Error::parse(path, name, e.to_string()))?
            .shape()
            .to_vec();
        out.insert(name.to_string(), tensor(&st, path, name, &shape)?);
    }
    Ok(out)
}

/// Writes `sae` (and, if given, its training configuration) to the folder `dir`, creating it.
pub fn save_relu_sae(sae: &ReluSae, train: Option<&SaeTrainConfig>, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Write {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let cfg = SaeFolderConfig {
        architecture: "relu".into(),
        d_in: sae.d_in,
        d_sae: sae.d_sae,
        dtype: "float32".into(),
        input_scale: sae.input_scale,
        apply_b_dec_to_input: true,
        cortexflow_version: env!("CARGO_PKG_VERSION").into(),
        train: train.cloned(),
    };
    let cfg_path = dir.join(CFG_FILE);
    let json = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Write {
        path: cfg_path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&cfg_path, json.as_bytes())?;

    let std = |a: &Array2<f32>| a.as_standard_layout().iter().copied().collect::<Vec<f32>>();
    let (w_enc, w_dec, b_enc, b_dec) = (std(&sae.w_enc), std(&sae.w_dec), sae.b_enc.to_vec(), sae.b_dec.to_vec());
    write_f32_tensors(
        &dir.join(WEIGHTS_FILE),
        &[
            ("W_enc", vec![sae.d_in, sae.d_sae], &w_enc),
            ("b_enc", vec![sae.d_sae], &b_enc),
            ("W_dec", vec![sae.d_sae, sae.d_in], &w_dec),
            ("b_dec", vec![sae.d_in], &b_dec),
        ],
    )
}

/// Reads the configuration of an SAE folder.
pub fn read_sae_config(dir: &Path) -> Result<SaeFolderConfig> {
    let path = dir.join(CFG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::parse(
            &path,
            format!("line {}, column {}", e.line(), e.column()),
            e.to_string(),
        )
    })
}

/// Reads one f32 tensor, checking its dtype and shape.
fn tensor(st: &SafeTensors<'_>, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = st
        .tensor(name)
        .map_err(|e| Error::parse(path, format!("tensor `{name}`"), e.to_string()))?;
    if t.dtype() != Dtype::F32 {
        return Err(Error::parse(
            path,
            format!("tensor `{name}`"),
            format!("expected dtype F32, found {}", t.dtype()),
        ));
    }
    if t.shape() != shape {
        return Err(Error::parse(
            path,
            format!("tensor `{name}`"),
            format!("expected shape {shape:?} (from cfg.json), found {:?}", t.shape()),
        ));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Loads a ReLU SAE folder written by [`save_relu_sae`]; also returns its configuration.
pub fn load_relu_sae(dir: &Path) -> Result<(ReluSae, SaeFolderConfig)> {
    let cfg = read_sae_config(dir)?;
    let cfg_path = dir.join(CFG_FILE);
    if cfg.architecture != "relu" {
        return Err(Error::parse(
            &cfg_path,
            "key `architecture`",
            format!("expected \"relu\", found {:?}", cfg.architecture),
        ));
    }
    if cfg.dtype != "float32" {
        return Err(Error::parse(
            &cfg_path,
            "key `dtype`",
            format!("expected \"float32\", found {:?}", cfg.dtype),
        ));
    }
    if !cfg.apply_b_dec_to_input {
        return Err(Error::parse(
            &cfg_path,
            "key `apply_b_dec_to_input`",
            "expected true (the ReLU SAE subtracts b_dec before encoding), found false",
        ));
    }
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::parse(&path, "header", e.to_string()))?;
    let (d_in, d_sae) = (cfg.d_in, cfg.d_sae);
    let shape_err = |e: ndarray::ShapeError| Error::parse(&path, "tensors", e.to_string());
    let w_enc =
        Array2::from_shape_vec((d_in, d_sae), tensor(&st, &path, "W_enc", &[d_in, d_sae])?).map_err(shape_err)?;
    let b_enc = Array1::from(tensor(&st, &path, "b_enc", &[d_sae])?);
    let w_dec =
        Array2::from_shape_vec((d_sae, d_in), tensor(&st, &path, "W_dec", &[d_sae, d_in])?).map_err(shape_err)?;
    let b_dec = Array1::from(tensor(&st, &path, "b_dec", &[d_in])?);
    let sae = ReluSae::from_parts(w_enc, b_enc, w_dec, b_dec, cfg.input_scale)
        .map_err(|e| Error::parse(&path, "tensors", e.to_string()))?;
    Ok((sae, cfg))
}

// ---------------------------------------------------------------------------------------------
// SAEs of any architecture: SAELens and EleutherAI sparsify folders

/// File name of an EleutherAI sparsify folder's tensors (`SparseCoder.save_to_disk`).
pub const SPARSIFY_WEIGHTS_FILE: &str = "sae.safetensors";

/// Which kind of folder an SAE was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaeFolderFormat {
    /// Written by [`save_relu_sae`]: architecture "relu", unfolded `input_scale`.
    Cortexflow,
    /// SAELens (`SAE.save_model` / `load_from_disk`): `cfg.json` + `sae_weights.safetensors`.
    SaeLens,
    /// EleutherAI sparsify (`SparseCoder.save_to_disk`): `cfg.json` + `sae.safetensors`.
    Sparsify,
}

/// Where an SAE was trained on, as far as its folder says (SAELens keys `model_name`, `hook_name`,
/// `hook_layer`, top level in SAELens ≤ 5, under `meta` in SAELens 6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaeMeta {
    pub model_name: Option<String>,
    pub hook_name: Option<String>,
    pub hook_layer: Option<i64>,
}

/// An SAE read from a folder, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedSae {
    pub sae: Sae,
    pub format: SaeFolderFormat,
    /// The folder.
    pub dir: PathBuf,
    pub meta: SaeMeta,
}

impl LoadedSae {
    /// An error naming the folder's `cfg.json` and its `d_in` when activations with `n_cols`
    /// columns do not fit the SAE.
    pub fn check_input(&self, n_cols: usize) -> Result<()> {
        if n_cols != self.sae.d_in() {
            return Err(Error::parse(
                self.dir.join(CFG_FILE),
                "key `d_in`",
                format!(
                    "the SAE expects activations with d_in = {} columns, the given activations have {n_cols}",
                    self.sae.d_in()
                ),
            ));
        }
        Ok(())
    }
}

fn read_json(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::parse(path, format!("line {}, column {}", e.line(), e.column()), e.to_string()))?;
    match v {
        serde_json::Value::Object(m) => Ok(m),
        other => Err(Error::parse(
            path,
            "top level",
            format!("expected a JSON object, found {other}"),
        )),
    }
}

type Json = serde_json::Map<String, serde_json::Value>;

fn key_err(path: &Path, key: &str, message: impl Into<String>) -> Error {
    Error::parse(path, format!("key `{key}`"), message.into())
}

/// A required non-negative integer key.
fn req_usize(cfg: &Json, path: &Path, key: &str) -> Result<usize> {
    match cfg.get(key) {
        None => Err(key_err(path, key, "missing")),
        Some(v) => {
            opt_usize(cfg, path, key)?.ok_or_else(|| key_err(path, key, format!("expected an integer, found {v}")))
        }
    }
}

/// An optional non-negative integer key (absent or null → None).
fn opt_usize(cfg: &Json, path: &Path, key: &str) -> Result<Option<usize>> {
    match cfg.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|u| Some(u as usize))
            .ok_or_else(|| key_err(path, key, format!("expected a non-negative integer, found {v}"))),
    }
}

fn opt_bool(cfg: &Json, path: &Path, key: &str) -> Result<Option<bool>> {
    match cfg.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| key_err(path, key, format!("expected true or false, found {v}"))),
    }
}

fn opt_str<'c>(cfg: &'c Json, path: &Path, key: &str) -> Result<Option<&'c str>> {
    match cfg.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| key_err(path, key, format!("expected a string, found {v}"))),
    }
}

/// Reads tensor `name` as f32 (stored as F32, F16 or BF16), checking its shape; the error names
/// the file and the tensor.
fn tensor_any(st: &SafeTensors<'_>, path: &Path, name: &str, shape: &[usize], origin: &str) -> Result<Vec<f32>> {
    let loc = || format!("tensor `{name}`");
    let t = st.tensor(name).map_err(|_| {
        let mut names = st.names();
        names.sort();
        Error::parse(path, loc(), format!("missing (the file holds {names:?})"))
    })?;
    if t.shape() != shape {
        return Err(Error::parse(
            path,
            loc(),
            format!("expected shape {shape:?} ({origin}), found {:?}", t.shape()),
        ));
    }
    let data = t.data();
    let out: Vec<f32> = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::parse(
                path,
                loc(),
                format!("expected dtype F32, F16 or BF16, found {other}"),
            ))
        }
    };
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        return Err(Error::parse(path, loc(), format!("non-finite value at flat index {i}")));
    }
    Ok(out)
}

fn matrix(rows: usize, cols: usize, v: Vec<f32>) -> Array2<f32> {
    Array2::from_shape_vec((rows, cols), v).expect("length checked against the shape")
}

fn read_safetensors(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Reads an SAE folder of any supported kind, recognised from its files and `cfg.json`:
/// - `architecture` "relu" → a cortexflow folder ([`load_relu_sae`]);
/// - `sae.safetensors` present and no `sae_weights.safetensors` → EleutherAI sparsify
///   ([`load_sparsify_sae`]);
/// - otherwise SAELens ([`load_saelens_sae`]).
pub fn load_sae(dir: &Path) -> Result<LoadedSae> {
    let cfg_path = dir.join(CFG_FILE);
    let cfg = read_json(&cfg_path)?;
    if opt_str(&cfg, &cfg_path, "architecture")? == Some("relu") {
        let (sae, _) = load_relu_sae(dir)?;
        return Ok(LoadedSae {
            sae: Sae::from(sae),
            format: SaeFolderFormat::Cortexflow,
            dir: dir.to_path_buf(),
            meta: SaeMeta::default(),
        });
    }
    if dir.join(SPARSIFY_WEIGHTS_FILE).is_file() && !dir.join(WEIGHTS_FILE).is_file() {
        return load_sparsify_sae(dir);
    }
    load_saelens_sae(dir)
}

fn saelens_meta(cfg: &Json, path: &Path) -> Result<SaeMeta> {
    let mut meta = SaeMeta::default();
    let nested = match cfg.get("meta") {
        Some(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    };
    for src in [Some(cfg), nested].into_iter().flatten() {
        // empty strings stand for "unknown" (written by [`save_saelens_sae`] for SAELens ≤ 5)
        if let Some(v) = opt_str(src, path, "model_name")?.filter(|v| !v.is_empty()) {
            meta.model_name.get_or_insert_with(|| v.to_string());
        }
        if let Some(v) = opt_str(src, path, "hook_name")?.filter(|v| !v.is_empty()) {
            meta.hook_name.get_or_insert_with(|| v.to_string());
        }
        match src.get("hook_layer") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => {
                let l = v
                    .as_i64()
                    .ok_or_else(|| key_err(path, "hook_layer", format!("expected an integer, found {v}")))?;
                meta.hook_layer.get_or_insert(l);
            }
        }
    }
    Ok(meta)
}

/// Reads a SAELens folder: `cfg.json` + `sae_weights.safetensors` with W_enc (d_in, d_sae),
/// b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in) and, for "jumprelu", threshold (d_sae)
/// (or log_threshold, exponentiated); F32, F16 or BF16 tensors are read as f32.
///
/// `cfg.json` keys (SAELens `SAEConfig` and its subclasses, sae_lens/saes/*.py):
/// - `architecture`: "standard" (ReLU), "topk" or "jumprelu"; absent = "standard" (SAELens < 4).
///   "standard" with `activation_fn_str` "topk" and `activation_fn_kwargs.k` is a TopK SAE
///   (SAELens ≤ 4).
/// - `d_in`, `d_sae`; `k` for "topk" (SAELens ≥ 5).
/// - `apply_b_dec_to_input` (default true).
/// - `normalize_activations`: "none" (or absent). "expected_average_only_in" is accepted with a
///   warning and no scaling, as SAELens' own `load_from_disk` does (its scaling factor is not
///   stored in the folder); the per-row schemes "constant_norm_rescale" and "layer_norm" are
///   rejected.
/// - `model_name`, `hook_name`, `hook_layer` (top level or under `meta`) → [`SaeMeta`].
///
/// The SAE's `input_scale` is 1 (SAELens folds scaling into the weights).
pub fn load_saelens_sae(dir: &Path) -> Result<LoadedSae> {
    let cfg_path = dir.join(CFG_FILE);
    let cfg = read_json(&cfg_path)?;
    let d_in = req_usize(&cfg, &cfg_path, "d_in")?;
    let d_sae = req_usize(&cfg, &cfg_path, "d_sae")?;
    let arch = opt_str(&cfg, &cfg_path, "architecture")?.unwrap_or("standard");
    let act = opt_str(&cfg, &cfg_path, "activation_fn_str")?;
    let legacy_k = || -> Result<Option<usize>> {
        match cfg.get("activation_fn_kwargs") {
            Some(serde_json::Value::Object(kw)) => opt_usize(kw, &cfg_path, "k")
                .map_err(|_| key_err(&cfg_path, "activation_fn_kwargs.k", "expected a non-negative integer")),
            _ => Ok(None),
        }
    };
    enum Arch {
        Relu,
        TopK(usize),
        JumpRelu,
    }
    let kind = match arch {
        "standard" => match act {
            None | Some("relu") => Arch::Relu,
            Some("topk") => Arch::TopK(legacy_k()?.ok_or_else(|| {
                key_err(
                    &cfg_path,
                    "activation_fn_kwargs",
                    "activation_fn_str is \"topk\" but activation_fn_kwargs has no `k`",
                )
            })?),
            Some(other) => {
                return Err(key_err(
                    &cfg_path,
                    "activation_fn_str",
                    format!("expected \"relu\" or \"topk\", found {other:?}"),
                ))
            }
        },
        "topk" => match opt_usize(&cfg, &cfg_path, "k")? {
            Some(k) => Arch::TopK(k),
            None => Arch::TopK(legacy_k()?.ok_or_else(|| key_err(&cfg_path, "k", "missing (required for \"topk\")"))?),
        },
        "jumprelu" => Arch::JumpRelu,
        other => {
            return Err(key_err(
                &cfg_path,
                "architecture",
                format!(
                "expected \"standard\", \"topk\" or \"jumprelu\" (or \"relu\" for cortexflow folders), found {other:?}"
            ),
            ))
        }
    };
    let apply_b_dec_to_input = opt_bool(&cfg, &cfg_path, "apply_b_dec_to_input")?.unwrap_or(true);
    match opt_str(&cfg, &cfg_path, "normalize_activations")? {
        None | Some("none") => {}
        Some("expected_average_only_in") => tracing::warn!(
            path = %cfg_path.display(),
            "SAE folder says normalize_activations = expected_average_only_in but stores no scaling factor; \
             activations are encoded as given (as SAELens' load_from_disk does)"
        ),
        Some(other) => {
            return Err(key_err(
                &cfg_path,
                "normalize_activations",
                format!("expected \"none\" or \"expected_average_only_in\", found {other:?} (not supported)"),
            ))
        }
    }
    if opt_bool(&cfg, &cfg_path, "finetuning_scaling_factor")? == Some(true) {
        return Err(key_err(
            &cfg_path,
            "finetuning_scaling_factor",
            "true is not supported (the scaling_factor tensor would rescale the codes)",
        ));
    }
    let meta = saelens_meta(&cfg, &cfg_path)?;

    let path = dir.join(WEIGHTS_FILE);
    let bytes = read_safetensors(&path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::parse(&path, "header", e.to_string()))?;
    let o = "d_in, d_sae from cfg.json";
    let w_enc = matrix(d_in, d_sae, tensor_any(&st, &path, "W_enc", &[d_in, d_sae], o)?);
    let b_enc = Array1::from(tensor_any(&st, &path, "b_enc", &[d_sae], o)?);
    let w_dec = matrix(d_sae, d_in, tensor_any(&st, &path, "W_dec", &[d_sae, d_in], o)?);
    let b_dec = Array1::from(tensor_any(&st, &path, "b_dec", &[d_in], o)?);
    let weights = ReluSae::from_parts(w_enc, b_enc, w_dec, b_dec, 1.0)
        .map_err(|e| Error::parse(&path, "tensors", e.to_string()))?;
    let kind = match kind {
        Arch::Relu => SaeKind::Relu,
        Arch::TopK(k) => SaeKind::TopK { k },
        Arch::JumpRelu => {
            let threshold = if st.tensor("threshold").is_ok() || st.tensor("log_threshold").is_err() {
                Array1::from(tensor_any(&st, &path, "threshold", &[d_sae], o)?)
            } else {
                Array1::from(tensor_any(&st, &path, "log_threshold", &[d_sae], o)?).mapv(f32::exp)
            };
            SaeKind::JumpRelu { threshold }
        }
    };
    let sae =
        Sae::new(kind, weights, apply_b_dec_to_input).map_err(|e| Error::parse(&cfg_path, "SAE", e.to_string()))?;
    Ok(LoadedSae {
        sae,
        format: SaeFolderFormat::SaeLens,
        dir: dir.to_path_buf(),
        meta,
    })
}

/// Reads an EleutherAI sparsify folder (`SparseCoder.load_from_disk`, sparsify/sparse_coder.py):
/// `cfg.json` with `d_in`, `k`, `num_latents` (0 or absent → `expansion_factor` × d_in,
/// `expansion_factor` default 32), `normalize_decoder`, `activation` ("topk"; "groupmax" is not
/// supported), and `sae.safetensors` with encoder.weight (d_sae, d_in), encoder.bias (d_sae),
/// W_dec (d_sae, d_in), b_dec (d_in). sparsify encodes `TopK_k(ReLU((x − b_dec) encoder.weightᵀ
/// + encoder.bias))` (fused_encoder.py) and decodes `Σ top_acts W_dec + b_dec`, so the result is a
/// TopK [`Sae`] with `W_enc = encoder.weightᵀ`. Transcoders (`transcode`) and skip connections
/// (`skip_connection`, W_skip) are rejected.
pub fn load_sparsify_sae(dir: &Path) -> Result<LoadedSae> {
    let cfg_path = dir.join(CFG_FILE);
    let cfg = read_json(&cfg_path)?;
    let d_in = req_usize(&cfg, &cfg_path, "d_in")?;
    let k = req_usize(&cfg, &cfg_path, "k")?;
    let d_sae = match opt_usize(&cfg, &cfg_path, "num_latents")? {
        Some(m) if m > 0 => m,
        _ => d_in * opt_usize(&cfg, &cfg_path, "expansion_factor")?.unwrap_or(32),
    };
    match opt_str(&cfg, &cfg_path, "activation")? {
        None | Some("topk") => {}
        Some(other) => {
            return Err(key_err(
                &cfg_path,
                "activation",
                format!("expected \"topk\", found {other:?} (not supported)"),
            ))
        }
    }
    for key in ["transcode", "skip_connection"] {
        if opt_bool(&cfg, &cfg_path, key)? == Some(true) {
            return Err(key_err(
                &cfg_path,
                key,
                "true is not supported (only plain sparse autoencoders)",
            ));
        }
    }
    let path = dir.join(SPARSIFY_WEIGHTS_FILE);
    let bytes = read_safetensors(&path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::parse(&path, "header", e.to_string()))?;
    let o = "num_latents, d_in from cfg.json";
    let enc = matrix(
        d_sae,
        d_in,
        tensor_any(&st, &path, "encoder.weight", &[d_sae, d_in], o)?,
    );
    let b_enc = Array1::from(tensor_any(&st, &path, "encoder.bias", &[d_sae], o)?);
    let w_dec = matrix(d_sae, d_in, tensor_any(&st, &path, "W_dec", &[d_sae, d_in], o)?);
    let b_dec = Array1::from(tensor_any(&st, &path, "b_dec", &[d_in], o)?);
    let w_enc = enc.t().as_standard_layout().into_owned();
    let weights = ReluSae::from_parts(w_enc, b_enc, w_dec, b_dec, 1.0)
        .map_err(|e| Error::parse(&path, "tensors", e.to_string()))?;
    let sae = Sae::new(SaeKind::TopK { k }, weights, true).map_err(|e| key_err(&cfg_path, "k", e.to_string()))?;
    Ok(LoadedSae {
        sae,
        format: SaeFolderFormat::Sparsify,
        dir: dir.to_path_buf(),
        meta: SaeMeta::default(),
    })
}

/// Writes `sae` as a SAELens folder (`cfg.json` + `sae_weights.safetensors`, f32), readable by
/// SAELens' `SAE.load_from_disk` and by [`load_saelens_sae`].
///
/// SAELens has no input scale, so `input_scale` s is folded into the weights:
/// `W_enc·s`, `W_dec/s`, `b_dec/s` (b_enc and the JumpReLU threshold are unchanged, since the
/// pre-activations are), which encodes and decodes raw inputs the same way; with s = 1 or a
/// power of two the codes are bit-identical, otherwise equal up to f32 rounding. The folded
/// scale is recorded as `cortexflow_input_scale` (ignored by SAELens). `cfg.json` holds the
/// SAELens ≥ 5 keys (`architecture`, `d_in`, `d_sae`, `dtype`, `device`, `apply_b_dec_to_input`,
/// `normalize_activations` "none", `k` for TopK, `meta`), the top-level keys SAELens ≤ 5 requires
/// (`model_name`, `hook_name` ("" when unknown), `hook_layer`, `activation_fn_str` /
/// `activation_fn_kwargs`, `finetuning_scaling_factor`, `context_size`, `prepend_bos`,
/// `dataset_path`, …; SAELens ignores keys its config class does not have), and
/// `cortexflow_version`.
pub fn save_saelens_sae(sae: &Sae, meta: &SaeMeta, dir: &Path) -> Result<()> {
    use serde_json::json;
    std::fs::create_dir_all(dir).map_err(|e| Error::Write {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let w = &sae.weights;
    let s = w.input_scale;
    let (w_enc, w_dec, b_dec) = if s == 1.0 {
        (w.w_enc.clone(), w.w_dec.clone(), w.b_dec.clone())
    } else {
        (
            w.w_enc.mapv(|v| v * s),
            w.w_dec.mapv(|v| v / s),
            w.b_dec.mapv(|v| v / s),
        )
    };
    let (act, kwargs) = match &sae.kind {
        SaeKind::TopK { k } => ("topk", json!({ "k": k })),
        _ => ("relu", json!({})),
    };
    let mut cfg = json!({
        "architecture": sae.kind.saelens_name(),
        "d_in": w.d_in,
        "d_sae": w.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "activation_fn_str": act,
        "activation_fn_kwargs": kwargs,
        "finetuning_scaling_factor": false,
        // SAELens ≤ 5 requires these top-level keys (strings must not be null there)
        "model_name": meta.model_name.clone().unwrap_or_default(),
        "hook_name": meta.hook_name.clone().unwrap_or_default(),
        "hook_layer": meta.hook_layer,
        "hook_head_index": null,
        "context_size": null,
        "prepend_bos": true,
        "dataset_path": "",
        "dataset_trust_remote_code": true,
        "sae_lens_training_version": null,
        "meta": {
            "model_name": meta.model_name,
            "hook_name": meta.hook_name,
            "hook_layer": meta.hook_layer,
        },
        "cortexflow_version": env!("CARGO_PKG_VERSION"),
        "cortexflow_input_scale": s,
    });
    if let SaeKind::TopK { k } = &sae.kind {
        cfg["k"] = json!(k);
    }
    let cfg_path = dir.join(CFG_FILE);
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Write {
        path: cfg_path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&cfg_path, text.as_bytes())?;

    let std = |a: &Array2<f32>| a.as_standard_layout().iter().copied().collect::<Vec<f32>>();
    let (w_enc, w_dec, b_enc, b_dec) = (std(&w_enc), std(&w_dec), w.b_enc.to_vec(), b_dec.to_vec());
    let threshold = match &sae.kind {
        SaeKind::JumpRelu { threshold } => Some(threshold.to_vec()),
        _ => None,
    };
    let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
        ("W_enc", vec![w.d_in, w.d_sae], &w_enc),
        ("b_enc", vec![w.d_sae], &b_enc),
        ("W_dec", vec![w.d_sae, w.d_in], &w_dec),
        ("b_dec", vec![w.d_in], &b_dec),
    ];
    if let Some(t) = &threshold {
        tensors.push(("threshold", vec![w.d_sae], t));
    }
    write_f32_tensors(&dir.join(WEIGHTS_FILE), &tensors)
}
