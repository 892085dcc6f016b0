//! The LM stage's tables: `words.parquet` (one row per word) and `activations.parquet` (one row
//! per word × layer, the residual-stream vector as `fixed_size_list<float32>[d_model]`), both with
//! the schemas in `data-schemas/` and key-value metadata naming the model, pooling and windowing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Float64Array, StringArray, UInt16Array, UInt32Array};
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;

use super::parquet_io::write_table_parquet;
use super::schema::TableSchema;
use crate::lm::{Extraction, Manifest};
use crate::stimulus::Story;
use crate::{Error, Result};

fn arrow_err(e: arrow::error::ArrowError) -> Error {
    Error::Invalid(format!("building an Arrow batch: {e}"))
}

/// The words table of one story.
pub fn words_batch(story: &Story, ex: &Extraction) -> Result<RecordBatch> {
    let n = story.words.len();
    let wt = &ex.tokens.word_tokens;
    // (name, values, nullable)
    let cols: Vec<(&str, ArrayRef, bool)> = vec![
        ("story", Arc::new(StringArray::from(vec![story.id.as_str(); n])), false),
        (
            "language",
            Arc::new(StringArray::from(vec![story.language.as_str(); n])),
            false,
        ),
        (
            "word_index",
            Arc::new(UInt32Array::from_iter_values(0..n as u32)),
            false,
        ),
        (
            "word",
            Arc::new(StringArray::from_iter_values(
                story.words.iter().map(|w| w.text.as_str()),
            )),
            false,
        ),
        (
            "onset_s",
            Arc::new(Float64Array::from_iter(story.words.iter().map(|w| w.onset_s))),
            true,
        ),
        (
            "offset_s",
            Arc::new(Float64Array::from_iter(story.words.iter().map(|w| w.offset_s))),
            true,
        ),
        (
            "n_tokens",
            Arc::new(UInt32Array::from_iter_values(wt.iter().map(|r| r.len() as u32))),
            false,
        ),
        (
            "first_token",
            Arc::new(UInt32Array::from_iter_values(wt.iter().map(|r| r.start as u32))),
            false,
        ),
        (
            "surprisal_bits",
            Arc::new(Float32Array::from_iter(ex.surprisal_bits.iter().copied())),
            true,
        ),
        (
            "entropy_bits",
            // NaN where it was not computed (a head-less graph): written as missing
            Arc::new(Float32Array::from_iter(
                ex.entropy_bits.iter().map(|&v| (!v.is_nan()).then_some(v)),
            )),
            true,
        ),
    ];
    RecordBatch::try_from_iter_with_nullable(cols).map_err(arrow_err)
}

/// The activations table of one story: rows ordered by layer, then word.
pub fn activations_batch(story: &Story, ex: &Extraction) -> Result<RecordBatch> {
    let n_words = story.words.len();
    let d = ex.activations.first().map(|a| a.ncols()).unwrap_or(0);
    let n = n_words * ex.layers.len();
    let mut values = Vec::with_capacity(n * d);
    let mut layer = Vec::with_capacity(n);
    let mut word_index = Vec::with_capacity(n);
    for (&l, a) in ex.layers.iter().zip(&ex.activations) {
        for (w, row) in a.rows().into_iter().enumerate() {
            values.extend(row.iter().copied());
            layer.push(l as u16);
            word_index.push(w as u32);
        }
    }
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list =
        FixedSizeListArray::try_new(item, d as i32, Arc::new(Float32Array::from(values)), None).map_err(arrow_err)?;
    let cols: Vec<(&str, ArrayRef)> = vec![
        ("story", Arc::new(StringArray::from(vec![story.id.as_str(); n]))),
        ("word_index", Arc::new(UInt32Array::from(word_index))),
        ("layer", Arc::new(UInt16Array::from(layer))),
        ("pooling", Arc::new(StringArray::from(vec![ex.pooling.as_str(); n]))),
        ("activation", Arc::new(list)),
    ];
    RecordBatch::try_from_iter(cols).map_err(arrow_err)
}

/// Metadata written into both tables.
pub fn extraction_metadata(story: &Story, ex: &Extraction, m: &Manifest) -> Vec<(String, String)> {
    vec![
        ("cortexflow.story".into(), story.id.clone()),
        ("cortexflow.model.architecture".into(), m.architecture.clone()),
        ("cortexflow.model.source".into(), m.source.clone().unwrap_or_default()),
        (
            "cortexflow.model.source_sha256".into(),
            m.source_sha256.clone().unwrap_or_default(),
        ),
        ("cortexflow.model.weights".into(), m.weights.clone().unwrap_or_default()),
        ("cortexflow.pooling".into(), ex.pooling.as_str().into()),
        ("cortexflow.layers".into(), format!("{:?}", ex.layers)),
        ("cortexflow.bos_excluded".into(), m.prepend_bos.to_string()),
        ("cortexflow.n_windows".into(), ex.n_windows.to_string()),
    ]
}

/// Writes `out_dir/words.parquet` and `out_dir/activations.parquet`. Both are built and checked
/// in memory first and written atomically, so a failure leaves no partial table.
pub fn write_extraction(out_dir: &Path, story: &Story, ex: &Extraction, m: &Manifest) -> Result<Vec<PathBuf>> {
    let words = words_batch(story, ex)?;
    let acts = activations_batch(story, ex)?;
    let sizes = HashMap::from([("d_model".to_string(), m.d_model as i32)]);
    let meta = extraction_metadata(story, ex, m);
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let wp = out_dir.join("words.parquet");
    let ap = out_dir.join("activations.parquet");
    write_table_parquet(&wp, &TableSchema::builtin("words")?, &sizes, &[words], &meta)?;
    write_table_parquet(&ap, &TableSchema::builtin("activations")?, &sizes, &[acts], &meta)?;
    Ok(vec![wp, ap])
}
