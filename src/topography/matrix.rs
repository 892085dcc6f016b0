//! Labelled subcategory × region matrices as TSV (the first line: an empty or label first cell,
//! then the region names; each further line: a subcategory name, then one number per region),
//! and the `topography_tests` table's columns.
//!
//! May import: `error`, `store` (the table schema and atomic Parquet writer).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use ndarray::Array2;

use super::StatisticRow;
use crate::store::{write_table_parquet, TableSchema};
use crate::{Error, Result};

/// A labelled matrix read from a TSV.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledMatrix {
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// (n_rows, n_cols).
    pub values: Array2<f64>,
    /// File line (1-based) of each row, for messages.
    pub lines: Vec<usize>,
}

pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Reads a labelled matrix TSV (see the module docs). Errors name the file, line and column
/// (1-based, the label column is column 1) and the offending text: a missing header, duplicate
/// labels, a line with the wrong number of fields, a cell that is not a number.
pub fn read_labelled_matrix(path: &Path) -> Result<LabelledMatrix> {
    parse_labelled_matrix(&read_text(path)?, path)
}

/// Parses labelled-matrix TSV text; `path` names its origin in errors.
pub fn parse_labelled_matrix(text: &str, path: &Path) -> Result<LabelledMatrix> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| {
        Error::parse(
            path,
            "line 1",
            "expected a header (label cell, then region names), found an empty file",
        )
    })?;
    let col_labels: Vec<String> = header.split('\t').skip(1).map(|s| s.trim().to_string()).collect();
    if col_labels.is_empty() || col_labels.iter().any(String::is_empty) {
        return Err(Error::parse(
            path,
            "line 1",
            format!("expected a header of a label cell and tab-separated, non-empty region names, found `{header}`"),
        ));
    }
    check_unique(path, "region", &col_labels, "line 1")?;
    let mut row_labels = Vec::new();
    let mut values = Vec::new();
    let mut line_numbers = Vec::new();
    for (i, line) in lines {
        let ln = i + 1;
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != col_labels.len() + 1 {
            return Err(Error::parse(
                path,
                format!("line {ln}"),
                format!(
                    "expected a subcategory name and {} values (one per region), found {} fields",
                    col_labels.len(),
                    fields.len()
                ),
            ));
        }
        let label = fields[0].trim();
        if label.is_empty() {
            return Err(Error::parse(
                path,
                format!("line {ln}, column 1"),
                "expected a subcategory name, found an empty cell",
            ));
        }
        row_labels.push(label.to_string());
        for (j, f) in fields[1..].iter().enumerate() {
            let t = f.trim();
            let v: f64 = t.parse().map_err(|_| {
                Error::parse(
                    path,
                    format!("line {ln}, column {} (region `{}`)", j + 2, col_labels[j]),
                    format!("expected a number, found `{t}`"),
                )
            })?;
            if !v.is_finite() {
                return Err(Error::parse(
                    path,
                    format!("line {ln}, column {} (region `{}`)", j + 2, col_labels[j]),
                    format!("expected a finite number, found `{t}`"),
                ));
            }
            values.push(v);
        }
        line_numbers.push(ln);
    }
    if row_labels.is_empty() {
        return Err(Error::parse(
            path,
            "line 2",
            "expected at least one subcategory line after the header, found none",
        ));
    }
    check_unique(path, "subcategory", &row_labels, "column 1")?;
    Ok(LabelledMatrix {
        values: Array2::from_shape_vec((row_labels.len(), col_labels.len()), values).expect("one value per cell"),
        row_labels,
        col_labels,
        lines: line_numbers,
    })
}

pub(crate) fn check_unique(path: &Path, what: &str, labels: &[String], location: &str) -> Result<()> {
    for (i, l) in labels.iter().enumerate() {
        if labels[..i].contains(l) {
            return Err(Error::parse(
                path,
                location,
                format!("expected unique {what} names, found `{l}` twice"),
            ));
        }
    }
    Ok(())
}

/// The columns of the `topography_tests` table, in its schema's order.
pub fn statistics_columns(rows: &[StatisticRow]) -> Vec<ArrayRef> {
    let f64s = |f: fn(&StatisticRow) -> Option<f64>| {
        Arc::new(Float64Array::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let u64s = |f: fn(&StatisticRow) -> Option<u64>| {
        Arc::new(UInt64Array::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let strs = |f: fn(&StatisticRow) -> Option<&str>| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    vec![
        strs(|r| Some(r.statistic.as_str())),
        f64s(|r| Some(r.value)),
        f64s(|r| r.p_value),
        f64s(|r| r.ci_lower),
        f64s(|r| r.ci_upper),
        u64s(|r| r.n),
        f64s(|r| r.df1),
        f64s(|r| r.df2),
        u64s(|r| r.n_perm),
        strs(|r| r.unit.as_deref()),
        strs(|r| r.alternative.as_deref()),
        strs(|r| r.tie_rule.as_deref()),
        strs(|r| r.note.as_deref()),
    ]
}

/// Writes `rows` as the `topography_tests` table (atomic, schema-checked).
pub fn write_statistics_parquet(path: &Path, rows: &[StatisticRow], metadata: &[(String, String)]) -> Result<()> {
    let cols = statistics_columns(rows);
    let schema = TableSchema::builtin("topography_tests")?;
    let arrow_schema = Arc::new(schema.to_arrow(&Default::default())?);
    let batch = RecordBatch::try_new(arrow_schema, cols).map_err(|e| Error::Write {
        path: path.to_path_buf(),
        message: format!("topography_tests table: {e}"),
    })?;
    write_table_parquet(path, &schema, &Default::default(), &[batch], metadata)
}
