//! GIfTI surface time series (`.func.gii`, e.g. Narratives' fsaverage6 data, fMRIPrep's
//! surface outputs): one 1-D `DataArray` per TR, each holding every vertex, as a (TRs × vertices)
//! matrix.
//!
//! A small reader of the GIfTI 1.0 XML: `DataArray` attributes `DataType` (`NIFTI_TYPE_FLOAT32`,
//! `FLOAT64`, `INT32`, `UINT8`, `INT16`), `Encoding` (`ASCII`, `Base64Binary`,
//! `GZipBase64Binary` — zlib-compressed, as nibabel writes), `Endian`, `Dim0`; external data
//! files are not read. Errors name the file, the array and what was expected.
//!
//! May import: `error`.

use std::io::Read;
use std::path::Path;

use base64::Engine;
use ndarray::Array2;

use crate::{Error, Result};

/// The value of `name="…"` in an XML start tag's text.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = tag;
    loop {
        let i = rest.find(name)?;
        let before_ok = i == 0 || rest.as_bytes()[i - 1].is_ascii_whitespace();
        let after = rest[i + name.len()..].trim_start();
        if before_ok && after.starts_with('=') {
            let v = after[1..].trim_start();
            let q = v.chars().next()?;
            if q == '"' || q == '\'' {
                let end = v[1..].find(q)?;
                return Some(&v[1..1 + end]);
            }
        }
        rest = &rest[i + name.len()..];
    }
}

fn decode(path: &Path, index: usize, tag: &str, text: &str) -> Result<Vec<f64>> {
    let err = |what: String| Error::Invalid(format!("{}: DataArray {index}: {what}", path.display()));
    let dtype = attr(tag, "DataType").unwrap_or("");
    let encoding = attr(tag, "Encoding").unwrap_or("ASCII");
    let big = attr(tag, "Endian") == Some("BigEndian");
    if attr(tag, "ExternalFileName").is_some_and(|s| !s.trim().is_empty()) {
        return Err(err("external data files are not read (expected the data inline)".into()));
    }
    if encoding == "ASCII" {
        return text
            .split_whitespace()
            .map(|t| t.parse::<f64>().map_err(|_| err(format!("{t:?} is not a number"))))
            .collect();
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.split_whitespace().collect::<String>())
        .map_err(|e| err(format!("base64: {e}")))?;
    let bytes = match encoding {
        "Base64Binary" => raw,
        "GZipBase64Binary" => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|e| err(format!("zlib: {e}")))?;
            out
        }
        other => {
            return Err(err(format!(
                "encoding {other:?} (expected ASCII, Base64Binary or GZipBase64Binary)"
            )))
        }
    };
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            if bytes.len() % $n != 0 {
                return Err(err(format!(
                    "{} bytes is not a whole number of {dtype} values",
                    bytes.len()
                )));
            }
            bytes
                .chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().expect("chunk size");
                    (if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }) as f64
                })
                .collect()
        }};
    }
    Ok(match dtype {
        "NIFTI_TYPE_FLOAT32" => conv!(f32, 4),
        "NIFTI_TYPE_FLOAT64" => conv!(f64, 8),
        "NIFTI_TYPE_INT32" => conv!(i32, 4),
        "NIFTI_TYPE_INT16" => conv!(i16, 2),
        "NIFTI_TYPE_UINT8" => bytes.iter().map(|&b| b as f64).collect(),
        other => {
            return Err(err(format!(
                "data type {other:?} (expected NIFTI_TYPE_FLOAT32, FLOAT64, INT32, INT16 or UINT8)"
            )))
        }
    })
}

/// Every `DataArray` of the file (one per TR) as the rows of a (TRs × vertices) matrix; columns
/// `cols` of it when given.
pub fn read_series(path: &Path, cols: Option<std::ops::Range<usize>>) -> Result<Array2<f64>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    if !text.contains("<GIFTI") {
        return Err(Error::Invalid(format!(
            "{}: not a GIfTI file (no <GIFTI> element)",
            path.display()
        )));
    }
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("<DataArray") {
        let index = rows.len();
        let after = &rest[i..];
        let tag_end = after
            .find('>')
            .ok_or_else(|| Error::Invalid(format!("{}: DataArray {index}: unterminated tag", path.display())))?;
        let tag = &after[..tag_end];
        let close = after
            .find("</DataArray>")
            .ok_or_else(|| Error::Invalid(format!("{}: DataArray {index}: no </DataArray>", path.display())))?;
        let body = &after[tag_end + 1..close];
        let dims: usize = attr(tag, "Dimensionality").and_then(|d| d.parse().ok()).unwrap_or(1);
        let second = attr(tag, "Dim1").and_then(|d| d.parse::<usize>().ok()).unwrap_or(1);
        if dims != 1 && second != 1 {
            return Err(Error::Invalid(format!(
                "{}: DataArray {index} has {dims} dimensions; expected one 1-D array (all vertices) per TR",
                path.display()
            )));
        }
        let data = match (body.find("<Data>"), body.find("</Data>")) {
            (Some(a), Some(b)) if b >= a => &body[a + 6..b],
            _ => {
                return Err(Error::Invalid(format!(
                    "{}: DataArray {index} has no <Data> element",
                    path.display()
                )))
            }
        };
        let values = decode(path, index, tag, data)?;
        if let Some(d0) = attr(tag, "Dim0").and_then(|d| d.parse::<usize>().ok()) {
            if d0 != values.len() {
                return Err(Error::Invalid(format!(
                    "{}: DataArray {index}: Dim0 says {d0} values, found {}",
                    path.display(),
                    values.len()
                )));
            }
        }
        if let Some(first) = rows.first() {
            if first.len() != values.len() {
                return Err(Error::Invalid(format!(
                    "{}: DataArray {index} has {} vertices, DataArray 0 has {}",
                    path.display(),
                    values.len(),
                    first.len()
                )));
            }
        }
        rows.push(values);
        rest = &after[close + "</DataArray>".len()..];
    }
    if rows.is_empty() {
        return Err(Error::Invalid(format!("{}: no DataArray", path.display())));
    }
    let nv = rows[0].len();
    let cols = cols.unwrap_or(0..nv);
    if cols.end > nv || cols.start > cols.end {
        return Err(Error::Invalid(format!(
            "{}: {nv} vertices; asked for {}..{}",
            path.display(),
            cols.start,
            cols.end
        )));
    }
    Ok(Array2::from_shape_fn((rows.len(), cols.len()), |(t, c)| {
        rows[t][cols.start + c]
    }))
}

#[cfg(test)]
mod tests {
    use super::attr;

    #[test]
    fn attributes_are_found_by_whole_name() {
        let tag = r#"<DataArray Dim0="5" Dimensionality='1' DataType="NIFTI_TYPE_FLOAT32""#;
        assert_eq!(attr(tag, "Dim0"), Some("5"));
        assert_eq!(attr(tag, "Dimensionality"), Some("1"));
        assert_eq!(attr(tag, "DataType"), Some("NIFTI_TYPE_FLOAT32"));
        assert_eq!(attr(tag, "Type"), None);
    }
}
