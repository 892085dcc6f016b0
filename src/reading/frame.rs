//! A small data frame for model fitting: a CSV/TSV (header row; quoted fields allowed) or Parquet
//! table read as text cells, with typed access that names the file, row and column of any bad value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::Array;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::store::read_parquet;
use crate::{Error, Result};

/// Cells that count as missing: empty, `NA`, `NaN`, `nan`, `null`, `None`.
pub const MISSING: [&str; 6] = ["", "NA", "NaN", "nan", "null", "None"];

/// A table of text cells, column-major.
#[derive(Debug, Clone)]
pub struct Frame {
    pub path: PathBuf,
    pub columns: Vec<String>,
    /// `cells[c][i]`: column c, data row i (0-based, header excluded).
    pub cells: Vec<Vec<String>>,
    /// File row number (1 = header) of each data row, for messages.
    pub file_rows: Vec<usize>,
}

impl Frame {
    /// Reads `.csv`, `.tsv`, `.txt` (delimiter sniffed) or `.parquet`.
    pub fn read(path: &Path) -> Result<Frame> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if ext.as_deref() == Some("parquet") {
            return Self::read_parquet(path);
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let delim = crate::stimulus::table::delimiter(path, &text);
        let records = crate::stimulus::table::parse_records(path, &text, delim)?;
        let mut it = records
            .into_iter()
            .filter(|r| !r.cells.iter().all(|c| c.trim().is_empty()));
        let header = it
            .next()
            .ok_or_else(|| Error::parse(path, "row 1", "expected a header row, found an empty file"))?;
        let columns: Vec<String> = header.cells.iter().map(|c| c.trim().to_string()).collect();
        let mut cells = vec![Vec::new(); columns.len()];
        let mut file_rows = Vec::new();
        for rec in it {
            if rec.cells.len() != columns.len() {
                return Err(Error::parse(
                    path,
                    format!("row {}", rec.row),
                    format!(
                        "expected {} cells (as the header), found {}",
                        columns.len(),
                        rec.cells.len()
                    ),
                ));
            }
            for (c, v) in rec.cells.into_iter().enumerate() {
                cells[c].push(v.trim().to_string());
            }
            file_rows.push(rec.row);
        }
        Ok(Frame {
            path: path.to_path_buf(),
            columns,
            cells,
            file_rows,
        })
    }

    fn read_parquet(path: &Path) -> Result<Frame> {
        let (schema, batches, _) = read_parquet(path)?;
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut cells = vec![Vec::new(); columns.len()];
        let opts = FormatOptions::default().with_null("");
        for b in &batches {
            for (c, col) in b.columns().iter().enumerate() {
                let f = ArrayFormatter::try_new(col.as_ref(), &opts)
                    .map_err(|e| Error::parse(path, format!("column {:?}", columns[c]), e.to_string()))?;
                for i in 0..col.len() {
                    cells[c].push(f.value(i).to_string());
                }
            }
        }
        let n = cells.first().map_or(0, Vec::len);
        Ok(Frame {
            path: path.to_path_buf(),
            columns,
            cells,
            file_rows: (2..n + 2).collect(),
        })
    }

    pub fn n_rows(&self) -> usize {
        self.file_rows.len()
    }

    /// Index of column `name`, or an error listing the columns.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.columns.iter().position(|c| c == name).ok_or_else(|| {
            Error::parse(
                &self.path,
                "header",
                format!(
                    "expected a column {name:?}; the columns are {}",
                    self.columns.join(", ")
                ),
            )
        })
    }

    pub fn is_missing(&self, col: usize, row: usize) -> bool {
        MISSING.contains(&self.cells[col][row].as_str())
    }

    /// The numeric value of a non-missing cell, or an error naming file, row and column.
    pub fn number(&self, col: usize, row: usize) -> Result<f64> {
        let v = &self.cells[col][row];
        v.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| {
            Error::parse(
                &self.path,
                format!("row {}, column {:?}", self.file_rows[row], self.columns[col]),
                format!("expected a finite number, found {v:?}"),
            )
        })
    }

    /// Factor codes of column `col` over `rows` (levels sorted as text) and the level names.
    pub fn factor(&self, col: usize, rows: &[usize]) -> (Vec<usize>, Vec<String>) {
        let levels: BTreeMap<&str, usize> = {
            let mut set: Vec<&str> = rows.iter().map(|&i| self.cells[col][i].as_str()).collect();
            set.sort_unstable();
            set.dedup();
            set.into_iter().enumerate().map(|(k, v)| (v, k)).collect()
        };
        let codes = rows.iter().map(|&i| levels[self.cells[col][i].as_str()]).collect();
        (codes, levels.keys().map(|s| s.to_string()).collect())
    }
}
