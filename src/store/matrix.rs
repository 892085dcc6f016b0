//! Dense numeric matrices in and out of files, for the numeric command-line paths (`cortexflow
//! ridge`, `cortexflow simulate`) that let users compare cortexflow with their own tools.
//!
//! * `.npy` (NumPy format 1.0–3.0): little-endian `f8`, `f4`, `i8`, `i4`, `i2`, `u1`, `b1`; C or
//!   Fortran order; 1-D arrays read as one column. Written as `<f8`, C order, format 1.0.
//! * `.parquet`: every column numeric (integer, float or boolean), no nulls; one matrix row per
//!   table row, one matrix column per table column (names kept). Written with `float64` columns.
//!
//! Output: `(n_rows, n_cols)` `f64` plus the column names (`c0`, `c1`, … for `.npy`).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use ndarray::{Array2, ArrayView2};

use super::parquet_io::{read_parquet, write_parquet_atomic};
use crate::paths::write_atomic;
use crate::{Error, Result};

/// A matrix read from a file with its column names.
#[derive(Debug, Clone)]
pub struct NamedMatrix {
    /// (n_rows, n_cols)
    pub values: Array2<f64>,
    pub columns: Vec<String>,
}

/// Reads `.npy` or `.parquet` (by extension) into an `f64` matrix; errors name the file and, for
/// bad values, the row and column.
pub fn read_matrix(path: &Path) -> Result<NamedMatrix> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("npy") => {
            let values = read_npy(path)?;
            let columns = (0..values.ncols()).map(|j| format!("c{j}")).collect();
            Ok(NamedMatrix { values, columns })
        }
        Some("parquet") => read_parquet_matrix(path),
        _ => Err(Error::Invalid(format!(
            "{}: expected a .npy or .parquet matrix file",
            path.display()
        ))),
    }
}

/// Writes `values` as `.npy` or `.parquet` (by extension; Parquet columns named `columns`, or
/// `c0`, `c1`, … when `None`), atomically.
pub fn write_matrix(path: &Path, values: ArrayView2<f64>, columns: Option<&[String]>) -> Result<()> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("npy") => write_npy(path, values),
        Some("parquet") => {
            let names: Vec<String> = match columns {
                Some(c) => c.to_vec(),
                None => (0..values.ncols()).map(|j| format!("c{j}")).collect(),
            };
            if names.len() != values.ncols() {
                return Err(Error::Invalid(format!(
                    "{}: {} column names for {} columns",
                    path.display(),
                    names.len(),
                    values.ncols()
                )));
            }
            let fields: Vec<Field> = names.iter().map(|n| Field::new(n, DataType::Float64, false)).collect();
            let arrays: Vec<ArrayRef> = (0..values.ncols())
                .map(|j| Arc::new(Float64Array::from(values.column(j).to_vec())) as ArrayRef)
                .collect();
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            write_parquet_atomic(path, &[batch], &[])
        }
        _ => Err(Error::Invalid(format!(
            "{}: expected a .npy or .parquet output path",
            path.display()
        ))),
    }
}

fn read_parquet_matrix(path: &Path) -> Result<NamedMatrix> {
    let (schema, batches, _) = read_parquet(path)?;
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for f in schema.fields() {
        let ok = f.data_type().is_numeric() || matches!(f.data_type(), DataType::Boolean);
        if !ok {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                location: format!("column {:?}", f.name()),
                message: format!("expected a numeric column, found {}", f.data_type()),
            });
        }
    }
    let n_rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut values = Array2::<f64>::zeros((n_rows, columns.len()));
    let mut row0 = 0;
    for batch in &batches {
        for (j, col) in batch.columns().iter().enumerate() {
            let c = cast(col, &DataType::Float64).map_err(|e| Error::Parse {
                path: path.to_path_buf(),
                location: format!("column {:?}", columns[j]),
                message: format!("cannot convert to float64: {e}"),
            })?;
            let c = c
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64 gives Float64Array");
            for i in 0..c.len() {
                if c.is_null(i) {
                    return Err(Error::Parse {
                        path: path.to_path_buf(),
                        location: format!("row {}, column {:?}", row0 + i, columns[j]),
                        message: "expected a number, found null".into(),
                    });
                }
                values[[row0 + i, j]] = c.value(i);
            }
        }
        row0 += batch.num_rows();
    }
    Ok(NamedMatrix { values, columns })
}

/// Reads a NumPy `.npy` file (see the module doc for the supported types) as `(n_rows, n_cols)`.
pub fn read_npy(path: &Path) -> Result<Array2<f64>> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse_npy(&bytes).map_err(|message| Error::Parse {
        path: path.to_path_buf(),
        location: "header".into(),
        message,
    })
}

/// The parsed header of a `.npy` file.
struct NpyHeader<'a> {
    descr: &'a str,
    fortran: bool,
    n_rows: usize,
    n_cols: usize,
    /// Offset of the first data byte.
    data: usize,
}

fn npy_header(bytes: &[u8]) -> std::result::Result<NpyHeader<'_>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (missing the \\x93NUMPY magic)".into());
    }
    let major = bytes[6];
    let (header_len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("expected .npy format version 1, 2 or 3, found {v}")),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")? == "True";
    let shape_text = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape {shape_text}")))
        .collect::<std::result::Result<_, _>>()?;
    let (n_rows, n_cols) = match shape.as_slice() {
        [n] => (*n, 1),
        [n, m] => (*n, *m),
        other => return Err(format!("expected a 1-D or 2-D array, found shape {other:?}")),
    };
    Ok(NpyHeader {
        descr,
        fortran,
        n_rows,
        n_cols,
        data: end,
    })
}

fn parse_npy(bytes: &[u8]) -> std::result::Result<Array2<f64>, String> {
    let NpyHeader {
        descr,
        fortran,
        n_rows,
        n_cols,
        data: end,
    } = npy_header(bytes)?;
    let (size, conv): (usize, fn(&[u8]) -> f64) = match descr {
        "<f8" => (8, |b| f64::from_le_bytes(b.try_into().unwrap())),
        "<f4" => (4, |b| f32::from_le_bytes(b.try_into().unwrap()) as f64),
        "<i8" => (8, |b| i64::from_le_bytes(b.try_into().unwrap()) as f64),
        "<i4" => (4, |b| i32::from_le_bytes(b.try_into().unwrap()) as f64),
        "<i2" => (2, |b| i16::from_le_bytes(b.try_into().unwrap()) as f64),
        "|u1" => (1, |b| b[0] as f64),
        "|b1" => (1, |b| (b[0] != 0) as u8 as f64),
        other => {
            return Err(format!(
                "expected dtype <f8, <f4, <i8, <i4, <i2, |u1 or |b1, found {other}"
            ))
        }
    };
    let n = n_rows.checked_mul(n_cols).ok_or("shape overflows")?;
    let data = &bytes[end..];
    if data.len() != n * size {
        return Err(format!(
            "expected {} data bytes for shape ({n_rows}, {n_cols}) of {descr}, found {}",
            n * size,
            data.len()
        ));
    }
    let flat: Vec<f64> = data.chunks_exact(size).map(conv).collect();
    let a = if fortran {
        Array2::from_shape_vec((n_cols, n_rows), flat).map(|a| a.reversed_axes().as_standard_layout().into_owned())
    } else {
        Array2::from_shape_vec((n_rows, n_cols), flat)
    };
    a.map_err(|e| e.to_string())
}

/// The text after `'key':` in a .npy header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let rest = header[header.find(&pat)? + pat.len()..].trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// Reads a `<f4` C-order `.npy` file as f32 `(n_rows, n_cols)` without a detour through f64
/// (activation spools; other dtypes are refused, naming the one found).
pub fn read_npy_f32(path: &Path) -> Result<Array2<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let perr = |message: String| Error::Parse {
        path: path.to_path_buf(),
        location: "header".into(),
        message,
    };
    let h = npy_header(&bytes).map_err(perr)?;
    if h.descr != "<f4" || h.fortran {
        return Err(perr(format!(
            "expected a C-order <f4 array, found dtype {} (fortran_order {})",
            h.descr, h.fortran
        )));
    }
    let n = h.n_rows * h.n_cols;
    let data = &bytes[h.data..];
    if data.len() != n * 4 {
        return Err(perr(format!(
            "expected {} data bytes for shape ({}, {}), found {}",
            n * 4,
            h.n_rows,
            h.n_cols,
            data.len()
        )));
    }
    let flat: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    Array2::from_shape_vec((h.n_rows, h.n_cols), flat).map_err(|e| perr(e.to_string()))
}

/// Writes `(n_rows, n_cols)` f32 as a `<f4` C-order `.npy` (format 1.0), atomically.
pub fn write_npy_f32(path: &Path, values: ArrayView2<f32>) -> Result<()> {
    let (n, m) = values.dim();
    let mut bytes = npy_preamble("<f4", n, m);
    bytes.reserve(n * m * 4);
    for row in values.rows() {
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    write_atomic(path, &bytes)
}

/// Magic, version 1.0, header length and the header dict, padded to a multiple of 64 bytes.
fn npy_preamble(descr: &str, n: usize, m: usize) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({n}, {m}), }}");
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes
}

/// Writes `(n_rows, n_cols)` as a `<f8` C-order `.npy` (format 1.0), atomically.
pub fn write_npy(path: &Path, values: ArrayView2<f64>) -> Result<()> {
    let (n, m) = values.dim();
    let mut bytes = npy_preamble("<f8", n, m);
    bytes.reserve(n * m * 8);
    for row in values.rows() {
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn npy_round_trip_keeps_shape_and_values_and_the_header_is_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let a = array![[1.0, -2.5, 3.0], [4.0, 5.0, f64::MAX]];
        write_npy(&p, a.view()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64, 0);
        assert_eq!(read_npy(&p).unwrap(), a);
    }

    #[test]
    fn fortran_order_and_one_dimensional_arrays_are_read_as_numpy_means_them() {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }\n";
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        for v in [1i32, 4, 2, 5, 3, 6] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(parse_npy(&bytes).unwrap(), array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        for v in [0.5f32, -1.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(parse_npy(&bytes).unwrap(), array![[0.5], [-1.0]]);
    }

    #[test]
    fn truncated_data_and_unknown_dtypes_are_errors_that_say_what_was_expected() {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let h = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }\n";
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(&[0u8; 24]);
        assert!(parse_npy(&bytes).unwrap_err().contains("expected 32 data bytes"));
        let bytes2 = String::from_utf8_lossy(&bytes).replace("<f8", "<c16");
        assert!(parse_npy(bytes2.as_bytes()).is_err());
        assert!(parse_npy(b"PK\x03\x04 not npy").unwrap_err().contains("magic"));
    }

    #[test]
    fn parquet_round_trip_keeps_names_and_a_null_is_reported_with_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.parquet");
        let a = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let names = vec!["v1".to_string(), "v2".to_string()];
        write_matrix(&p, a.view(), Some(&names)).unwrap();
        let m = read_matrix(&p).unwrap();
        assert_eq!(m.values, a);
        assert_eq!(m.columns, names);

        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, true)]));
        let col: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![Some(1), None]));
        let batch = RecordBatch::try_new(schema, vec![col]).unwrap();
        let q = dir.path().join("null.parquet");
        write_parquet_atomic(&q, &[batch], &[]).unwrap();
        let err = read_matrix(&q).unwrap_err().to_string();
        assert!(
            err.contains("row 1") && err.contains("\"x\"") && err.contains("null"),
            "{err}"
        );
    }
}
