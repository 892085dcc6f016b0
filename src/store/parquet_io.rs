//! Atomic Parquet and Arrow IPC writers, and a Parquet reader.
//!
//! Input: Arrow record batches (all with one schema) and key-value metadata.
//! Output: one file, written as `.{file}.tmp-{pid}-{unique}` in the target's directory,
//! fsynced, then renamed over the target, so readers see either the old file or the complete
//! new one. On any error the temporary file is removed and the target is left untouched.
//!
//! Every file gets the key-value metadata `cortexflow.version` (this crate's version) and, when the
//! table is known, `cortexflow.schema` (its name in `data-schemas/`). Parquet files are
//! zstd-compressed and carry the Arrow schema, so pyarrow, polars and R's arrow read back the exact
//! types (`uint32`, `fixed_size_list<float>[d]` …).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::reader::FileReader as IpcFileReader;
use arrow::ipc::writer::FileWriter as IpcFileWriter;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::schema::{describe_arrow, TableSchema, SCHEMA_KEY};
use crate::{Error, Result};

/// Key-value metadata key holding the version of cortexflow that wrote the file.
pub const VERSION_KEY: &str = "cortexflow.version";
/// Key-value metadata key holding the list sizes a table was written with, as JSON
/// (e.g. `{"d_model":768}`); only present for tables with symbolic list sizes.
pub const SIZES_KEY: &str = "cortexflow.sizes";
/// zstd level used for Parquet pages: a good size/speed trade-off for float vectors.
pub const ZSTD_LEVEL: i32 = 3;

/// Parquet key-value metadata entry that holds the encoded Arrow schema; not returned by
/// [`read_parquet`].
const ARROW_SCHEMA_KEY: &str = "ARROW:schema";

/// Writes `batches` to the Parquet file `path` atomically (see the module docs).
///
/// All batches must share the first batch's column names, types and nullability; at least one
/// batch is needed (it defines the schema; use [`write_table_parquet`] to write an empty table).
/// `metadata` is added to the file's key-value metadata; `cortexflow.version` is reserved and
/// always set. `cortexflow.schema` is taken from `metadata` if given there, else from the first
/// batch's schema metadata (as set by [`TableSchema::to_arrow`]), else omitted.
pub fn write_parquet_atomic(path: &Path, batches: &[RecordBatch], metadata: &[(String, String)]) -> Result<()> {
    let (schema, batches) = common_schema(path, batches)?;
    let table = schema.metadata().get(SCHEMA_KEY).cloned();
    let metadata = file_metadata(path, metadata, table.as_deref())?;
    write_parquet_with_schema(path, schema, &batches, &metadata)
}

/// Writes the table `table` to the Parquet file `path` atomically, after checking every batch
/// against the declared schema ([`TableSchema::check`]; `sizes` resolves symbolic list sizes such
/// as `d_model`). Batches are re-labelled with the canonical Arrow schema (column descriptions
/// and units as field metadata). Zero batches write an empty table with the full schema.
/// Adds `cortexflow.schema` = table name and, for tables with symbolic list sizes,
/// `cortexflow.sizes` to the key-value metadata.
pub fn write_table_parquet(
    path: &Path,
    table: &TableSchema,
    sizes: &HashMap<String, i32>,
    batches: &[RecordBatch],
    metadata: &[(String, String)],
) -> Result<()> {
    let schema: SchemaRef = Arc::new(table.to_arrow(sizes)?);
    let conformed = batches
        .iter()
        .enumerate()
        .map(|(i, batch)| {
            table.conform(batch, &schema, sizes).map_err(|e| {
                let detail = match e {
                    Error::Invalid(message) => message,
                    other => other.to_string(),
                };
                Error::Write {
                    path: path.to_path_buf(),
                    message: format!("batch {i}: {detail}"),
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut metadata = metadata.to_vec();
    let symbolic = table.symbolic_sizes();
    if !symbolic.is_empty() {
        let used: std::collections::BTreeMap<&str, i32> = symbolic
            .iter()
            .filter_map(|name| sizes.get(*name).map(|n| (*name, *n)))
            .collect();
        let json = serde_json::to_string(&used).expect("a map of names to integers serialises");
        metadata.push((SIZES_KEY.to_string(), json));
    }
    let metadata = file_metadata(path, &metadata, Some(&table.table))?;
    write_parquet_with_schema(path, schema, &conformed, &metadata)
}

/// Writes `batches` to the Arrow IPC *file* format (`.arrow`, a.k.a. Feather v2, uncompressed) at
/// `path`, atomically and with the same metadata rules as [`write_parquet_atomic`]. The metadata
/// is stored as the IPC file's custom (footer) metadata.
pub fn write_arrow_ipc_atomic(path: &Path, batches: &[RecordBatch], metadata: &[(String, String)]) -> Result<()> {
    let (schema, batches) = common_schema(path, batches)?;
    let table = schema.metadata().get(SCHEMA_KEY).cloned();
    let metadata = file_metadata(path, metadata, table.as_deref())?;
    write_atomic(path, |out| {
        let mut writer = IpcFileWriter::try_new(out, &schema).map_err(|e| e.to_string())?;
        for (key, value) in &metadata {
            writer.write_metadata(key.clone(), value.clone());
        }
        for (i, batch) in batches.iter().enumerate() {
            writer.write(batch).map_err(|e| format!("batch {i}: {e}"))?;
        }
        writer.finish().map_err(|e| e.to_string())
    })
}

/// Writes `batches` of `table` as an Arrow IPC *stream* (`.arrows`: the schema, then the batches;
/// what `pyarrow.ipc.open_stream` and `polars.read_ipc_stream` read), atomically. The schema
/// carries the table's schema metadata (name, units).
pub fn write_table_arrow_stream(
    path: &Path,
    table: &TableSchema,
    sizes: &HashMap<String, i32>,
    batches: &[RecordBatch],
) -> Result<()> {
    let schema: SchemaRef = Arc::new(table.to_arrow(sizes)?);
    let conformed = batches
        .iter()
        .map(|b| {
            RecordBatch::try_new(schema.clone(), b.columns().to_vec())
                .map_err(|e| Error::Invalid(format!("table {}: {e}", table.table)))
        })
        .collect::<Result<Vec<_>>>()?;
    write_atomic(path, |out| {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(out, &schema).map_err(|e| e.to_string())?;
        for (i, batch) in conformed.iter().enumerate() {
            writer.write(batch).map_err(|e| format!("batch {i}: {e}"))?;
        }
        writer.finish().map_err(|e| e.to_string())
    })
}

/// Reads a whole Parquet file: its Arrow schema (including schema and field metadata stored by
/// the writer), its record batches, and its key-value metadata (without the encoded
/// `ARROW:schema` entry; keys without a value map to "").
pub fn read_parquet(path: &Path) -> Result<(Schema, Vec<RecordBatch>, HashMap<String, String>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| Error::parse(path, "Parquet footer", e.to_string()))?;
    let schema = builder.schema().as_ref().clone();
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .filter(|kv| kv.key != ARROW_SCHEMA_KEY)
                .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let reader = builder
        .build()
        .map_err(|e| Error::parse(path, "Parquet footer", e.to_string()))?;
    let batches = reader
        .enumerate()
        .map(|(i, batch)| batch.map_err(|e| Error::parse(path, format!("record batch {i}"), e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    Ok((schema, batches, metadata))
}

/// Reads a whole Arrow IPC file: schema, record batches and custom metadata.
pub fn read_arrow_ipc(path: &Path) -> Result<(Schema, Vec<RecordBatch>, HashMap<String, String>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = IpcFileReader::try_new_buffered(file, None)
        .map_err(|e| Error::parse(path, "Arrow IPC footer", e.to_string()))?;
    let schema = reader.schema().as_ref().clone();
    let metadata = reader.custom_metadata().clone();
    let batches = reader
        .enumerate()
        .map(|(i, batch)| batch.map_err(|e| Error::parse(path, format!("record batch {i}"), e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    Ok((schema, batches, metadata))
}

/// The first batch's schema, after checking that every batch has the same column names, types
/// and nullability; batches are re-labelled with that schema (so field metadata agrees).
fn common_schema(path: &Path, batches: &[RecordBatch]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let write_err = |message: String| Error::Write {
        path: path.to_path_buf(),
        message,
    };
    let first = batches.first().ok_or_else(|| {
        write_err(
            "no record batches given, so there is no schema to write; pass at least one \
             (possibly empty) batch, or use write_table_parquet with a TableSchema"
                .into(),
        )
    })?;
    let schema = first.schema();
    let mut relabelled = Vec::with_capacity(batches.len());
    for (i, batch) in batches.iter().enumerate() {
        let found = batch.schema();
        let names = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| format!("`{}`", f.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if found.fields().len() != schema.fields().len() {
            return Err(write_err(format!(
                "batch {i} has {} columns ({}), expected {} as in batch 0 ({})",
                found.fields().len(),
                names(&found),
                schema.fields().len(),
                names(&schema)
            )));
        }
        for (want, have) in schema.fields().iter().zip(found.fields()) {
            let describe = |f: &arrow::datatypes::Field| {
                format!(
                    "`{}` {} ({})",
                    f.name(),
                    describe_arrow(f.data_type()),
                    if f.is_nullable() { "nullable" } else { "not null" }
                )
            };
            if want.name() != have.name()
                || want.data_type() != have.data_type()
                || want.is_nullable() != have.is_nullable()
            {
                return Err(write_err(format!(
                    "batch {i}: column {}, expected {} as in batch 0",
                    describe(have),
                    describe(want)
                )));
            }
        }
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
            .map_err(|e| write_err(format!("batch {i}: {e}")))?;
        relabelled.push(batch);
    }
    Ok((schema, relabelled))
}

/// Key-value metadata for a written file: the caller's pairs (no duplicate keys, no
/// `cortexflow.version`), then `cortexflow.version`, then `cortexflow.schema` = `table` unless the
/// caller gave it (in which case it must agree with `table` when both are known).
fn file_metadata(path: &Path, user: &[(String, String)], table: Option<&str>) -> Result<Vec<(String, String)>> {
    let write_err = |message: String| Error::Write {
        path: path.to_path_buf(),
        message,
    };
    let mut out: Vec<(String, String)> = Vec::with_capacity(user.len() + 2);
    for (key, value) in user {
        if key == VERSION_KEY || key == ARROW_SCHEMA_KEY {
            return Err(write_err(format!(
                "metadata key `{key}` is reserved (set by the writer), remove it from the metadata"
            )));
        }
        if out.iter().any(|(k, _)| k == key) {
            return Err(write_err(format!("metadata key `{key}` is given twice")));
        }
        if key == SCHEMA_KEY {
            if let Some(table) = table {
                if value != table {
                    return Err(write_err(format!(
                        "metadata `{SCHEMA_KEY}` = \"{value}\", but the batches' schema is table \
                         \"{table}\""
                    )));
                }
            }
        }
        out.push((key.clone(), value.clone()));
    }
    out.push((VERSION_KEY.to_string(), env!("CARGO_PKG_VERSION").to_string()));
    if let Some(table) = table {
        if !out.iter().any(|(k, _)| k == SCHEMA_KEY) {
            out.push((SCHEMA_KEY.to_string(), table.to_string()));
        }
    }
    Ok(out)
}

fn write_parquet_with_schema(
    path: &Path,
    schema: SchemaRef,
    batches: &[RecordBatch],
    metadata: &[(String, String)],
) -> Result<()> {
    let level = ZstdLevel::try_new(ZSTD_LEVEL).expect("ZSTD_LEVEL is a valid zstd level");
    let key_values = metadata
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_key_value_metadata(Some(key_values))
        .build();
    write_atomic(path, |out| {
        let mut writer = ArrowWriter::try_new(out, schema, Some(properties)).map_err(|e| e.to_string())?;
        for (i, batch) in batches.iter().enumerate() {
            writer.write(batch).map_err(|e| format!("batch {i}: {e}"))?;
        }
        writer.close().map(|_| ()).map_err(|e| e.to_string())
    })
}

/// Distinguishes temporary files of concurrent writes within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file when dropped, unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    committed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temporary file");
                }
            }
        }
    }
}

/// `.{file}.tmp-{pid}-{unique}` beside `path`, and the directory both live in.
fn temp_path_for(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let file_name = path.file_name().ok_or_else(|| Error::Write {
        path: path.to_path_buf(),
        message: "the path has no file name (expected a file path such as out/words.parquet)".into(),
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(
        ".{}.tmp-{}-{counter}{nanos:08x}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    Ok((dir, temp))
}

/// Runs `write` on a buffered temporary file beside `path`, fsyncs it, renames it to `path`
/// and fsyncs the directory. The temporary file is removed on any error.
fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> std::result::Result<(), String>,
{
    let (dir, temp_path) = temp_path_for(path)?;
    let write_err = |message: String| Error::Write {
        path: path.to_path_buf(),
        message,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp_path)
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                format!(" (does the directory {} exist?)", dir.display())
            } else {
                String::new()
            };
            write_err(format!(
                "cannot create temporary file {}: {e}{hint}",
                temp_path.display()
            ))
        })?;
    let mut temp = TempFile {
        path: temp_path,
        committed: false,
    };

    let mut out = BufWriter::new(file);
    write(&mut out).map_err(|e| write_err(format!("{e} (while writing {})", temp.path.display())))?;
    let file = out
        .into_inner()
        .map_err(|e| write_err(format!("cannot flush {}: {}", temp.path.display(), e.error())))?;
    file.sync_all()
        .map_err(|e| write_err(format!("cannot fsync {}: {e}", temp.path.display())))?;
    drop(file);
    fs::rename(&temp.path, path)
        .map_err(|e| write_err(format!("cannot rename {} to the target: {e}", temp.path.display())))?;
    temp.committed = true;
    sync_dir(&dir);
    tracing::debug!(path = %path.display(), "wrote file atomically");
    Ok(())
}

/// Makes the rename durable. Best effort: the file is already in place, so a failure only warns.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync directory after rename");
    }
    #[cfg(not(unix))]
    let _ = dir;
}
