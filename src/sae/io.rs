//! Saving and loading a [`ReluSae`] as a folder:
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

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::relu::ReluSae;
use super::train::SaeTrainConfig;
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

    let w_path = dir.join(WEIGHTS_FILE);
    let std = |a: &Array2<f32>| a.as_standard_layout().iter().copied().collect::<Vec<f32>>();
    let data: Vec<(&str, Vec<usize>, Vec<u8>)> = vec![
        ("W_enc", vec![sae.d_in, sae.d_sae], le_bytes(&std(&sae.w_enc))),
        ("b_enc", vec![sae.d_sae], le_bytes(&sae.b_enc.to_vec())),
        ("W_dec", vec![sae.d_sae, sae.d_in], le_bytes(&std(&sae.w_dec))),
        ("b_dec", vec![sae.d_in], le_bytes(&sae.b_dec.to_vec())),
    ];
    let werr = |m: String| Error::Write {
        path: w_path.clone(),
        message: m,
    };
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
    write_atomic(&w_path, &bytes)
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
