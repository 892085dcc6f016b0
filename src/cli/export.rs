//! `cortexflow export RUN --format csv|tsv|arrow|parquet [--table NAME …] [--out DIR]`: a run's
//! Parquet tables in a form any tool reads — CSV or TSV for base R's `read.csv` / `read.delim`,
//! spreadsheets and shell tools (R has no arrow package in Debian), Arrow IPC files for
//! `arrow::read_feather`, `pyarrow.feather` and `polars.read_ipc`, or plain Parquet copies.
//!
//! Tables are found anywhere under RUN (`summary.parquet`, `fits/summary/sae_quality.parquet` …)
//! and named by their path without `.parquet`; `--table` takes that name or a file stem that is
//! unique in the run. The output keeps the run's layout under `--out` (default
//! `RUN/export-FORMAT`).
//!
//! Text formats: a header row of column names; numbers as the shortest text that reads back to
//! the same value at the column's precision (an f32 column, e.g. surprisal, prints f32's shortest
//! digits, which R reads as the nearest double); missing values as `NA` (what R and polars read as
//! missing); fields holding the delimiter, a quote or a line break are quoted, quotes doubled.
//! List columns (e.g. `activation` vectors) become one field `[v1, v2, …]`; use `arrow` or
//! `parquet` for those. Each file is written under a temporary name and renamed, so a failed
//! export leaves no half-written table.
//!
//! May import: `error`, `paths` (it reads only files a run wrote).

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::{Error, Result};

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Tsv,
    Arrow,
    Parquet,
}

impl ExportFormat {
    /// File extension of the exported tables.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Tsv => "tsv",
            ExportFormat::Arrow => "arrow",
            ExportFormat::Parquet => "parquet",
        }
    }
}

impl FromStr for ExportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "csv" => Ok(ExportFormat::Csv),
            "tsv" => Ok(ExportFormat::Tsv),
            "arrow" | "ipc" | "feather" => Ok(ExportFormat::Arrow),
            "parquet" => Ok(ExportFormat::Parquet),
            _ => Err(Error::Invalid(format!(
                "unknown export format `{s}` (choose csv, tsv, arrow or parquet)"
            ))),
        }
    }
}

/// Arguments of `cortexflow export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// A run's output folder (`[output] dir` of the pipeline, e.g. runs/alice).
    pub run: PathBuf,
    /// csv, tsv, arrow (Arrow IPC file) or parquet.
    #[arg(long, default_value = "csv")]
    pub format: String,
    /// Tables to export (path without `.parquet`, or a unique file stem); default all.
    #[arg(long)]
    pub table: Vec<String>,
    /// Output folder (default RUN/export-FORMAT).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One exported table.
#[derive(Debug, Clone)]
pub struct ExportedTable {
    pub name: String,
    pub path: PathBuf,
    pub rows: usize,
    pub columns: usize,
}

/// The Parquet tables under `run`, as (name, path), sorted by name; the export folders are
/// skipped.
pub fn run_tables(run: &Path) -> Result<Vec<(String, PathBuf)>> {
    if !run.is_dir() {
        return Err(Error::io(
            run,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a run folder"),
        ));
    }
    let mut found = Vec::new();
    let mut stack = vec![run.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if path.is_dir() {
                if !name.starts_with("export-") && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".parquet") && !name.starts_with('.') {
                let rel = path.strip_prefix(run).expect("under run").with_extension("");
                found.push((rel.to_string_lossy().replace('\\', "/"), path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Exports the chosen tables of a run; nothing is written if a requested table does not exist.
pub fn run_export(a: &ExportArgs) -> Result<Vec<ExportedTable>> {
    let format: ExportFormat = a.format.parse()?;
    let all = run_tables(&a.run)?;
    if all.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no Parquet tables in this folder (is it a run's output folder?)",
            a.run.display()
        )));
    }
    let chosen: Vec<(String, PathBuf)> = if a.table.is_empty() {
        all.clone()
    } else {
        let mut chosen = Vec::new();
        for want in &a.table {
            let hits: Vec<&(String, PathBuf)> = all
                .iter()
                .filter(|(name, _)| name == want || name.rsplit('/').next() == Some(want.as_str()))
                .collect();
            match hits.as_slice() {
                [one] => chosen.push((*one).clone()),
                [] => {
                    return Err(Error::Invalid(format!(
                        "{}: no table `{want}`; the run has: {}",
                        a.run.display(),
                        all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                    )))
                }
                many => {
                    return Err(Error::Invalid(format!(
                        "table `{want}` is ambiguous in {}: {} (give the path)",
                        a.run.display(),
                        many.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
        chosen
    };
    let out_root = a
        .out
        .clone()
        .unwrap_or_else(|| a.run.join(format!("export-{}", format.extension())));
    let mut done = Vec::new();
    for (name, src) in chosen {
        let dst = out_root.join(format!("{name}.{}", format.extension()));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let (rows, columns) = export_table(&src, &dst, format)?;
        done.push(ExportedTable {
            name,
            path: dst,
            rows,
            columns,
        });
    }
    Ok(done)
}

fn parquet_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::parse(path, "Parquet", e.to_string())
}

/// Opens a Parquet file (its footer read and checked), ready to decode.
fn open_parquet(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))
}

/// Writes one table; returns (rows, columns).
fn export_table(src: &Path, dst: &Path, format: ExportFormat) -> Result<(usize, usize)> {
    let builder = open_parquet(src)?;
    let schema = builder.schema().clone();
    let columns = schema.fields().len();
    if format == ExportFormat::Parquet {
        // a copy: the footer gives the row count, nothing is decoded
        let rows = builder.metadata().file_metadata().num_rows() as usize;
        let bytes = std::fs::read(src).map_err(|e| Error::io(src, e))?;
        crate::paths::write_atomic(dst, &bytes)?;
        return Ok((rows, columns));
    }
    let batches = builder
        .build()
        .map_err(|e| parquet_error(src, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| parquet_error(src, e))?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    match format {
        ExportFormat::Arrow => crate::paths::write_atomic_with(dst, |w| {
            let mut writer = arrow::ipc::writer::FileWriter::try_new(w, &schema).map_err(std::io::Error::other)?;
            for b in &batches {
                writer.write(b).map_err(std::io::Error::other)?;
            }
            writer.finish().map_err(std::io::Error::other)
        })?,
        ExportFormat::Csv | ExportFormat::Tsv => {
            let sep = if format == ExportFormat::Csv { ',' } else { '\t' };
            crate::paths::write_atomic_with(dst, |w| write_delimited(w, &schema, &batches, sep))?
        }
        ExportFormat::Parquet => unreachable!("copied above"),
    }
    Ok((rows, columns))
}

/// A field as CSV/TSV needs it: quoted when it holds the delimiter, a quote or a line break.
fn push_field(line: &mut String, value: &str, sep: char) {
    if value.contains([sep, '"', '\n', '\r']) {
        line.push('"');
        line.push_str(&value.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(value);
    }
}

fn write_delimited(w: &mut impl Write, schema: &SchemaRef, batches: &[RecordBatch], sep: char) -> std::io::Result<()> {
    let mut line = String::new();
    for (i, f) in schema.fields().iter().enumerate() {
        if i > 0 {
            line.push(sep);
        }
        push_field(&mut line, f.name(), sep);
    }
    line.push('\n');
    w.write_all(line.as_bytes())?;
    let options = FormatOptions::default().with_null("NA");
    let mut cell = String::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        for row in 0..batch.num_rows() {
            line.clear();
            for (i, f) in formatters.iter().enumerate() {
                if i > 0 {
                    line.push(sep);
                }
                cell.clear();
                write!(cell, "{}", f.value(row)).map_err(std::io::Error::other)?;
                push_field(&mut line, &cell, sep);
            }
            line.push('\n');
            w.write_all(line.as_bytes())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        let mut l = String::new();
        push_field(&mut l, "plain", ',');
        l.push(',');
        push_field(&mut l, "a,b", ',');
        l.push(',');
        push_field(&mut l, "say \"hi\"", ',');
        l.push(',');
        push_field(&mut l, "a,b", '\t');
        assert_eq!(l, "plain,\"a,b\",\"say \"\"hi\"\"\",a,b");
    }

    #[test]
    fn formats_parse_and_unknown_ones_are_named() {
        assert_eq!("tsv".parse::<ExportFormat>().unwrap(), ExportFormat::Tsv);
        assert_eq!("feather".parse::<ExportFormat>().unwrap(), ExportFormat::Arrow);
        let e = "xlsx".parse::<ExportFormat>().unwrap_err().to_string();
        assert!(e.contains("xlsx") && e.contains("csv, tsv, arrow or parquet"), "{e}");
    }
}
