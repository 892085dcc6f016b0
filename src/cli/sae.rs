//! `cortexflow sae encode`: any activation matrix (`.npy` or Parquet, rows = tokens or words,
//! columns = d_in) encoded with any supported SAE folder (cortexflow, SAELens "standard" / "topk" /
//! "jumprelu", EleutherAI sparsify), so users can set cortexflow's codes beside their own
//! library's.
//!
//! Output: codes in sparse long form, Parquet `(row u64, feature u32, value f32)`, one row per
//! non-zero code, rows ascending then features ascending (schema `data-schemas/sae_codes.json`);
//! optionally the reconstruction (`--reconstruction R.npy|.parquet`) and the quality of the SAE on
//! these rows (R², FVU, mean L0, dead and dense fractions) printed and written as JSON next to
//! the codes.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Float32Array, RecordBatch, UInt32Array, UInt64Array};
use ndarray::Array2;

use crate::sae::{load_sae, LoadedSae, SaeQuality};
use crate::store::matrix::{read_matrix, write_matrix};
use crate::store::schema::TableSchema;
use crate::store::write_table_parquet;
use crate::{Error, Result};

/// Arguments of `cortexflow sae encode`.
#[derive(Debug, Clone, clap::Args)]
pub struct SaeEncodeArgs {
    /// SAE folder: cortexflow or SAELens (cfg.json + sae_weights.safetensors) or sparsify
    /// (cfg.json + sae.safetensors).
    #[arg(long)]
    pub sae: PathBuf,
    /// Activations (n_rows, d_in): .npy (any float dtype) or Parquet (numeric columns).
    #[arg(long)]
    pub x: PathBuf,
    /// Output Parquet of the non-zero codes (row, feature, value).
    #[arg(long, default_value = "out/codes.parquet")]
    pub out: PathBuf,
    /// Also write the reconstruction x̂ (n_rows, d_in) here (.npy or .parquet).
    #[arg(long)]
    pub reconstruction: Option<PathBuf>,
}

/// What [`run_sae_encode`] did.
#[derive(Debug, Clone)]
pub struct SaeEncodeSummary {
    pub loaded: LoadedSae,
    pub n_rows: usize,
    pub nnz: usize,
    pub quality: SaeQuality,
    pub files: Vec<PathBuf>,
}

pub fn run_sae_encode(a: &SaeEncodeArgs) -> Result<SaeEncodeSummary> {
    let loaded = load_sae(&a.sae)?;
    let m = read_matrix(&a.x)?;
    loaded.check_input(m.values.ncols())?;
    let x: Array2<f32> = m.values.mapv(|v| v as f32);
    let sae = &loaded.sae;
    let codes = sae.encode_sparse(x.view());
    let quality = sae.quality(x.view());
    let mut rows = Vec::with_capacity(codes.nnz());
    for i in 0..codes.n_rows {
        let (a, b) = (codes.indptr[i] as usize, codes.indptr[i + 1] as usize);
        rows.extend(std::iter::repeat_n(i as u64, b - a));
    }
    let batch = RecordBatch::try_from_iter_with_nullable(vec![
        ("row", Arc::new(UInt64Array::from(rows)) as _, false),
        (
            "feature",
            Arc::new(UInt32Array::from(codes.indices.clone())) as _,
            false,
        ),
        ("value", Arc::new(Float32Array::from(codes.values.clone())) as _, false),
    ])
    .map_err(|e| Error::Invalid(format!("building the codes table: {e}")))?;
    let schema = TableSchema::builtin("sae_codes")?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let meta = vec![
        ("cortexflow.sae_dir".to_string(), a.sae.display().to_string()),
        ("cortexflow.sae_format".to_string(), format!("{:?}", loaded.format)),
        (
            "cortexflow.sae_architecture".to_string(),
            sae.kind.saelens_name().to_string(),
        ),
        ("cortexflow.d_sae".to_string(), sae.d_sae().to_string()),
        ("cortexflow.n_rows".to_string(), codes.n_rows.to_string()),
    ];
    write_table_parquet(&a.out, &schema, &Default::default(), &[batch], &meta)?;
    let mut files = vec![a.out.clone()];
    if let Some(r) = &a.reconstruction {
        let xhat = sae.decode_sparse(&codes).mapv(f64::from);
        write_matrix(r, xhat.view(), None)?;
        files.push(r.clone());
    }
    let qpath = a.out.with_extension("quality.json");
    let q = serde_json::json!({
        "sae": a.sae, "x": a.x, "n_rows": quality.n_rows, "r2": quality.r2, "fvu": quality.fvu,
        "mean_l0": quality.mean_l0, "dead_fraction": quality.dead_fraction,
        "dense_fraction": quality.dense_fraction,
    });
    crate::paths::write_atomic(&qpath, serde_json::to_string_pretty(&q).unwrap().as_bytes())?;
    files.push(qpath);
    Ok(SaeEncodeSummary {
        n_rows: codes.n_rows,
        nnz: codes.nnz(),
        quality,
        files,
        loaded,
    })
}
