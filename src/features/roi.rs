//! ROI time-course tables: a whitespace-separated text file, one row per TR, one column per ROI
//! (no header) → [`RoiTable`] `(n_trs, n_rois)`; and single-column series (word rate, sound
//! power) → `Vec<f64>`.
//!
//! Rows are counted as lines of the file, 1-based; blank lines are skipped (but still counted).
//! Every cell must be a finite number. Errors are [`Error::Parse`] naming the file, the row, the
//! column (by ROI name) and the offending text, or the expected versus found number of rows or
//! columns.
//!
//! Constant columns (`sd == 0`, or `max − min < 1e-12 · max|x|`) carry no signal — in the Alice
//! data subject s33 is all zeros in every ROI — so they are listed in [`RoiTable::constant`] and
//! logged with `tracing::warn!`; callers exclude them from models.

use std::path::Path;

use ndarray::Array2;

use crate::{Error, Result};

/// ROI column names of the Alice (Brennan et al. 2016) time-course files, in file order.
pub const ALICE_ROIS: [&str; 6] = ["LATL", "RATL", "LPTL", "LIPL", "LPreM", "LIFG"];

/// One subject's ROI time courses.
#[derive(Debug, Clone, PartialEq)]
pub struct RoiTable {
    /// Subject id: the file stem up to the first `-` (`s18-timecourses.txt` → `s18`).
    pub subject: String,
    /// ROI names, one per column.
    pub rois: Vec<String>,
    /// `(n_trs, n_rois)`, as in the file.
    pub data: Array2<f64>,
    /// Names of the constant columns (no variance), in column order.
    pub constant: Vec<String>,
}

impl RoiTable {
    /// Number of TRs (rows).
    pub fn n_trs(&self) -> usize {
        self.data.nrows()
    }

    /// Indices of the non-constant columns.
    pub fn usable_columns(&self) -> Vec<usize> {
        (0..self.rois.len())
            .filter(|&j| !self.constant.contains(&self.rois[j]))
            .collect()
    }

    /// The column of ROI `name`, if present.
    pub fn column(&self, name: &str) -> Option<Vec<f64>> {
        self.rois
            .iter()
            .position(|r| r == name)
            .map(|j| self.data.column(j).to_vec())
    }
}

/// True if a series has no usable variance: population sd exactly 0, or
/// `max − min < 1e-12 · max|x|` (constant up to rounding). Empty series are constant.
pub fn is_constant(x: impl IntoIterator<Item = f64>) -> bool {
    let (mut n, mut sum, mut lo, mut hi, mut amax) = (0usize, 0.0, f64::INFINITY, f64::NEG_INFINITY, 0.0_f64);
    let values: Vec<f64> = x.into_iter().collect();
    for &v in &values {
        n += 1;
        sum += v;
        lo = lo.min(v);
        hi = hi.max(v);
        amax = amax.max(v.abs());
    }
    if n == 0 {
        return true;
    }
    let mean = sum / n as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    var == 0.0 || hi - lo < 1e-12 * amax
}

/// Parses a whitespace-separated numeric table with `names.len()` columns: `(n_rows, n_cols)`.
fn read_numeric_table(path: &Path, names: &[&str], expect_rows: Option<usize>) -> Result<Array2<f64>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let n_cols = names.len();
    let mut values = Vec::new();
    let mut n_rows = 0usize;
    for (line_idx, line) in text.lines().enumerate() {
        let row = line_idx + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.len() != n_cols {
            return Err(Error::parse(
                path,
                format!("row {row}"),
                format!("expected {n_cols} columns ({}), found {}", names.join(" "), cells.len()),
            ));
        }
        for (j, cell) in cells.iter().enumerate() {
            let v: f64 = cell.parse().map_err(|_| {
                Error::parse(
                    path,
                    format!("row {row}, column `{}`", names[j]),
                    format!("expected a number, found `{cell}`"),
                )
            })?;
            if !v.is_finite() {
                return Err(Error::parse(
                    path,
                    format!("row {row}, column `{}`", names[j]),
                    format!("expected a finite number, found `{cell}`"),
                ));
            }
            values.push(v);
        }
        n_rows += 1;
    }
    if let Some(expected) = expect_rows {
        if n_rows != expected {
            return Err(Error::parse(
                path,
                "whole file",
                format!("expected {expected} rows (one per TR), found {n_rows}"),
            ));
        }
    }
    if n_rows == 0 {
        return Err(Error::parse(
            path,
            "whole file",
            "expected at least one row of numbers, found none",
        ));
    }
    Ok(Array2::from_shape_vec((n_rows, n_cols), values).expect("row-major values match the counted shape"))
}

/// Subject id from a file name: the stem up to the first `-` (`s18-timecourses.txt` → `s18`).
pub fn subject_from_path(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.split('-').next().unwrap_or_default().to_string()
}

/// Reads one subject's ROI time courses (see the module docs for the format and the errors).
///
/// `roi_names`: one name per column (e.g. [`ALICE_ROIS`]); `expect_rows`: the required number of
/// TRs, if known (362 for Alice). Constant columns are listed in [`RoiTable::constant`] and
/// logged with `tracing::warn!` naming the subject and the ROI.
pub fn read_roi_timecourses(
    path: impl AsRef<Path>,
    roi_names: &[&str],
    expect_rows: Option<usize>,
) -> Result<RoiTable> {
    let path = path.as_ref();
    if roi_names.is_empty() {
        return Err(Error::Invalid(format!("{}: no ROI names given", path.display())));
    }
    let data = read_numeric_table(path, roi_names, expect_rows)?; // (n_trs, n_rois)
    Ok(roi_table(path, roi_names, data))
}

/// Reads one subject's ROI time courses from a 4-D NIfTI run averaged within the regions of a 3-D
/// label volume `atlas` (label k + 1 is ROI `roi_names[k]`; see
/// [`crate::store::nifti::label_means`]), with the checks of [`read_roi_timecourses`]: the run
/// must have `expect_rows` volumes, constant ROIs are listed and logged.
pub fn read_roi_nifti(
    path: impl AsRef<Path>,
    atlas: &Path,
    roi_names: &[&str],
    expect_rows: Option<usize>,
) -> Result<RoiTable> {
    let path = path.as_ref();
    if roi_names.is_empty() {
        return Err(Error::Invalid(format!("{}: no ROI names given", path.display())));
    }
    let data = crate::store::nifti::label_means(path, atlas, roi_names.len())?;
    if let Some(n) = expect_rows.filter(|&n| n != data.nrows()) {
        return Err(Error::Invalid(format!(
            "{}: {} volumes (TRs), expected {n} (the story's n-trs)",
            path.display(),
            data.nrows()
        )));
    }
    if data.iter().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "{}: non-finite values in the regions of {}",
            path.display(),
            atlas.display()
        )));
    }
    Ok(roi_table(path, roi_names, data))
}

/// A subject's table from its (n_trs, n_rois) data read from `path`: constant columns listed and
/// logged.
fn roi_table(path: &Path, roi_names: &[&str], data: Array2<f64>) -> RoiTable {
    let subject = subject_from_path(path);
    let mut constant = Vec::new();
    for (j, name) in roi_names.iter().enumerate() {
        if is_constant(data.column(j).iter().copied()) {
            tracing::warn!(
                subject = %subject,
                roi = %name,
                file = %path.display(),
                "constant ROI time course (no variance): subject {subject}, ROI {name}; exclude it from models"
            );
            constant.push(name.to_string());
        }
    }
    RoiTable {
        subject,
        rois: roi_names.iter().map(|s| s.to_string()).collect(),
        data,
        constant,
    }
}

/// Reads a one-column numeric series (e.g. Alice `s##-rate.txt`, `s##-sndpwr.txt`), one value per
/// line. Errors as for [`read_roi_timecourses`]; the column is called `value` in messages.
pub fn read_column_series(path: impl AsRef<Path>) -> Result<Vec<f64>> {
    let path = path.as_ref();
    Ok(read_numeric_table(path, &["value"], None)?.into_raw_vec_and_offset().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_detected_exactly_and_up_to_rounding() {
        assert!(is_constant([0.0; 5]));
        assert!(is_constant([100.0, 100.0 + 1e-11, 100.0]));
        assert!(!is_constant([100.0, 100.0 + 1e-6, 100.0]));
        assert!(!is_constant([0.0, 1e-100])); // tiny but real variation
        assert!(is_constant(std::iter::empty()));
    }

    #[test]
    fn subjects_come_from_the_file_stem() {
        assert_eq!(subject_from_path(Path::new("/a/6mm/s18-timecourses.txt")), "s18");
        assert_eq!(subject_from_path(Path::new("s05.txt")), "s05");
    }
}
