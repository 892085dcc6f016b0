//! Column builders shared by the table modules, and the one table writer ([`write_tables`]:
//! every table checked against its schema before any file is written).
//!
//! May import: `stages` (the context), `store`, `error`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, UInt16Array, UInt32Array};
use arrow::record_batch::RecordBatch;

use crate::stages::Ctx;
use crate::store::{write_table_parquet, TableSchema};
use crate::{Error, Result};

pub(crate) fn batch(cols: Vec<(&str, ArrayRef, bool)>) -> Result<RecordBatch> {
    RecordBatch::try_from_iter_with_nullable(cols).map_err(|e| Error::Invalid(format!("building a table: {e}")))
}

pub(crate) fn utf8(v: Vec<String>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

/// `b` with a `language` column (each row's story's language in `langs`) after its `story`
/// column: the taxonomy tables are keyed by story, and every table is keyed by language too.
pub(crate) fn with_language(b: &RecordBatch, langs: &BTreeMap<String, String>) -> Result<RecordBatch> {
    let at = b
        .schema()
        .index_of("story")
        .map_err(|e| Error::Invalid(format!("with_language: {e}")))?;
    let stories = b
        .column(at)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::Invalid("with_language: `story` is not a utf8 column".into()))?;
    let language: Vec<String> = stories.iter().map(|s| language_of(langs, s.unwrap_or(""))).collect();
    let schema = b.schema();
    let mut cols: Vec<(&str, ArrayRef, bool)> = Vec::new();
    for (i, f) in schema.fields().iter().enumerate() {
        cols.push((f.name().as_str(), b.column(i).clone(), f.is_nullable()));
        if i == at {
            cols.push(("language", utf8(language.clone()), false));
        }
    }
    batch(cols)
}

/// A u16 column (layers).
pub(crate) fn u16s(v: impl Iterator<Item = usize>) -> ArrayRef {
    Arc::new(UInt16Array::from_iter_values(v.map(|x| x as u16)))
}

/// A u32 column (counts).
pub(crate) fn u32s(v: impl Iterator<Item = usize>) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(v.map(|x| x as u32)))
}

/// A nullable f64 column: non-finite values become null.
pub(crate) fn finite_f64s(v: impl Iterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(v.map(finite)))
}

/// The language of `story` in `langs` (`""` for a story not in the snapshot).
pub(crate) fn language_of(langs: &BTreeMap<String, String>, story: &str) -> String {
    langs.get(story).cloned().unwrap_or_default()
}

pub(crate) fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Checks every table against its built-in schema (data-schemas/{name}.json) before writing any,
/// then writes `{out}/{name}.parquet` atomically, with the pipeline's name and file hash as
/// metadata. Returns the files written.
pub(crate) fn write_tables(ctx: &Ctx, tables: &[(&str, RecordBatch)], out: &Path) -> Result<Vec<PathBuf>> {
    let sizes = HashMap::new();
    let schemas = tables
        .iter()
        .map(|(n, _)| TableSchema::builtin(n))
        .collect::<Result<Vec<_>>>()?;
    for ((name, b), schema) in tables.iter().zip(&schemas) {
        schema
            .check(&b.schema(), &sizes)
            .map_err(|e| Error::Invalid(format!("table {name}: {e}")))?;
    }
    let pipeline_text = std::fs::read(&ctx.plan.source).unwrap_or_default();
    let meta = vec![
        ("cortexflow.pipeline".to_string(), ctx.plan.file.name.clone()),
        (
            "cortexflow.pipeline_sha256".to_string(),
            format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&pipeline_text)),
        ),
    ];
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut files = Vec::new();
    for ((name, b), schema) in tables.iter().zip(&schemas) {
        let p = out.join(format!("{name}.parquet"));
        write_table_parquet(&p, schema, &sizes, std::slice::from_ref(b), &meta)?;
        files.push(p);
    }
    Ok(files)
}

pub(crate) fn f64s(v: Vec<Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from(v))
}
