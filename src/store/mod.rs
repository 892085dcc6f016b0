//! Output tables: declared schemas, atomic Parquet / Arrow IPC writers, and a reader.
//!
//! Input: Arrow [`RecordBatch`](arrow::record_batch::RecordBatch)es produced by a pipeline stage
//! (e.g. the LM extraction stage's `words` and `activations` tables), plus the table's declared
//! schema from `data-schemas/{table}.json` ([`TableSchema`], also embedded in the binary:
//! [`TableSchema::builtin`]).
//!
//! Output: one zstd-compressed Parquet file per table (or an Arrow IPC file), written atomically
//! (temporary file, fsync, rename), with key-value metadata `cortexflow.version`,
//! `cortexflow.schema` (table name) and, for tables with vector columns, `cortexflow.sizes`
//! (e.g. `{"d_model":768}`). The files read back with the exact declared types in pyarrow, polars
//! and R's arrow; `scripts/check_parquet.py FILE SCHEMA_JSON` verifies that from Python.
//!
//! ```no_run
//! # use std::collections::HashMap;
//! # use cortexflow::store::{TableSchema, write_table_parquet};
//! # fn demo(batches: &[arrow::record_batch::RecordBatch]) -> cortexflow::Result<()> {
//! let table = TableSchema::builtin("activations")?;
//! let sizes = HashMap::from([("d_model".to_string(), 768)]);
//! write_table_parquet("out/activations.parquet".as_ref(), &table, &sizes, batches, &[])?;
//! # Ok(()) }
//! ```
//!
//! May import: `lm` and `stimulus` (extraction tables), `paths`, `error`.

pub mod artifacts;
pub mod extraction;
pub mod gifti;
pub mod hdf5;
pub mod json_float;
pub mod matrix;
pub mod nifti;
pub mod parquet_io;
pub mod schema;

pub use matrix::{read_matrix, read_npy, read_npy_f32, write_matrix, write_npy, write_npy_f32, NamedMatrix};
pub use parquet_io::{
    read_arrow_ipc, read_parquet, write_arrow_ipc_atomic, write_parquet_atomic, write_table_arrow_stream,
    write_table_parquet, SIZES_KEY, VERSION_KEY, ZSTD_LEVEL,
};
pub use schema::{ColumnSchema, ColumnType, ListSize, ScalarType, TableSchema, BUILTIN_TABLES, SCHEMA_KEY};
