//! Voxelwise responses per (subject, story) in the layout of the LeBel et al. (2023) derivative
//! data (OpenNeuro ds003020), and voxel → region tables.
//!
//! Layout (folder `root`):
//! ```text
//! root/respdict.json                               {"story": n_trs, …}: TRs of each response file
//! root/preprocessed_data/<subject>/<story>.<ext>   (n_trs, n_voxels) per story
//! root/TextGrids/<story>.TextGrid                  the stimulus (not read here)
//! ```
//! `<ext>` is the response format: `hf5` (the data set's own: an HDF5 file holding one 2-D numeric
//! dataset, named `data` unless [`ResponseLayout::dataset`] says otherwise, read through the system's
//! HDF5 library, [`crate::store::hdf5`]), `npy` or `parquet` (any numeric matrix;
//! [`crate::store::read_matrix`]), or `nii.gz` / `nii` (a BIDS-style 4-D NIfTI run per story,
//! restricted to the voxels of a 3-D mask per subject, [`ResponseLayout::mask`]; the voxel order
//! is nibabel's `data[mask > 0]`, [`crate::store::nifti`]), or `func.gii` / `gii` (a GIfTI
//! surface time series, one array per TR; voxels are vertices, [`crate::store::gifti`]). HDF5
//! files are read a block of voxels
//! at a time.
//!
//! Timing (ds003020's convention, configurable): responses start `trim_start` TRs after the
//! stimulus TR grid's first TR and stop `trim_end` TRs before its end, so a design computed on the
//! story's whole TR grid has `n_trs + trim_start + trim_end` rows and is trimmed to the response
//! rows ([`trim_design`]). Each response file must have exactly `respdict[story]` rows.
//!
//! Voxels: a voxel with a non-finite value or no variance in any story cannot be z-scored per
//! story; it is excluded for that subject, with a warning naming the subject, the story and the
//! number of voxels ([`SubjectResponses::warnings`]), and its row in the outputs says so.
//!
//! May import: `error`, `paths`, `stats`, `stimulus`, `store`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{s, Array2, ArrayView2, Axis};

use crate::store::read_matrix;
use crate::{Error, Result};

/// ds003020's trimming: the first 10 and last 5 TRs of each story's grid have no response row.
pub const DS003020_TRIM_START: usize = 10;
pub const DS003020_TRIM_END: usize = 5;
/// ds003020's repetition time (s).
pub const DS003020_TR_S: f64 = 2.0;

/// The response files of one data set in the ds003020 layout.
#[derive(Debug, Clone)]
pub struct ResponseLayout {
    pub root: PathBuf,
    /// File extension of the response matrices (`hf5`, `npy` or `parquet`).
    pub ext: String,
    /// Name of the dataset inside each HDF5 file (ds003020: `data`).
    pub dataset: String,
    /// NIfTI runs: the 3-D mask of each subject, a path in which `{subject}` stands for the
    /// subject (e.g. `masks/{subject}_language.nii.gz`).
    pub mask: Option<String>,
    /// Story → number of response TRs (from `respdict.json`).
    pub respdict: BTreeMap<String, usize>,
}

impl ResponseLayout {
    /// Opens `root`: reads `respdict.json` (story → positive integer TR count). HDF5 files' dataset
    /// is `data` ([`Self::with_dataset`] names another).
    pub fn open(root: &Path, ext: &str) -> Result<ResponseLayout> {
        if !FORMATS.contains(&ext) {
            return Err(Error::Invalid(format!(
                "responses: format {ext:?} is not readable (expected one of {})",
                FORMATS.join(", ")
            )));
        }
        let path = root.join("respdict.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::parse(&path, "JSON", e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::parse(&path, "top level", "expected an object {\"story\": n_trs, …}"))?;
        let mut respdict = BTreeMap::new();
        for (story, n) in obj {
            let n = n.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                Error::parse(
                    &path,
                    format!("story {story:?}"),
                    format!("expected a positive integer TR count, found {n}"),
                )
            })?;
            respdict.insert(story.clone(), n as usize);
        }
        Ok(ResponseLayout {
            root: root.to_path_buf(),
            ext: ext.to_string(),
            dataset: "data".to_string(),
            mask: None,
            respdict,
        })
    }

    /// The response format of the files under `root/preprocessed_data/*/`: the one extension among
    /// `hf5`, `h5`, `hdf5`, `npy`, `parquet` that they use; an error when none or several.
    pub fn detect_format(root: &Path) -> Result<String> {
        let dir = root.join("preprocessed_data");
        let mut found = std::collections::BTreeSet::new();
        for sub in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let sub = sub.map_err(|e| Error::io(&dir, e))?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sub).map_err(|e| Error::io(&sub, e))? {
                let name = f
                    .map_err(|e| Error::io(&sub, e))?
                    .file_name()
                    .to_string_lossy()
                    .to_string();
                // the longest matching suffix: `nii.gz` before `gz`-less ones
                if let Some(ext) = FORMATS.iter().find(|e| name.ends_with(&format!(".{e}"))) {
                    found.insert(ext.to_string());
                }
            }
        }
        match found.len() {
            1 => Ok(found.into_iter().next().expect("one")),
            0 => Err(Error::Invalid(format!(
                "{}: no response files (.{}) in any subject folder",
                dir.display(),
                FORMATS.join(", .")
            ))),
            _ => Err(Error::Invalid(format!(
                "{}: response files of several formats ({}); choose one with --format",
                dir.display(),
                found.into_iter().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The same layout reading HDF5 dataset `name`.
    pub fn with_dataset(mut self, name: &str) -> ResponseLayout {
        self.dataset = name.to_string();
        self
    }

    fn is_hdf5(&self) -> bool {
        matches!(self.ext.as_str(), "hf5" | "h5" | "hdf5")
    }

    /// The same layout with NIfTI masks at `pattern` (`{subject}` replaced by the subject).
    pub fn with_mask(mut self, pattern: Option<&str>) -> ResponseLayout {
        self.mask = pattern.map(str::to_string);
        self
    }

    /// The mask of the subject whose response file is `path` (`…/<subject>/<story>.nii.gz`).
    fn mask_for(&self, path: &Path) -> Result<PathBuf> {
        let subject = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        match &self.mask {
            Some(p) => Ok(PathBuf::from(p.replace("{subject}", &subject))),
            None => Err(Error::Invalid(format!(
                "{}: NIfTI runs need a brain or ROI mask per subject (--mask 'masks/{{subject}}.nii.gz')",
                path.display()
            ))),
        }
    }

    /// Columns `cols` (all when `None`) of a response file of this layout.
    pub fn read(&self, path: &Path, cols: Option<std::ops::Range<usize>>) -> Result<Array2<f64>> {
        if self.is_hdf5() {
            return crate::store::hdf5::read_columns(path, &self.dataset, cols);
        }
        if matches!(self.ext.as_str(), "func.gii" | "gii") {
            return crate::store::gifti::read_series(path, cols);
        }
        if matches!(self.ext.as_str(), "nii.gz" | "nii") {
            return crate::store::nifti::masked_series(path, &self.mask_for(path)?, cols);
        }
        let y = read_matrix(path)?.values;
        Ok(match cols {
            None => y,
            Some(c) if c.end <= y.ncols() => y.slice(s![.., c]).to_owned(),
            Some(c) => {
                return Err(Error::Invalid(format!(
                    "{}: {} columns; asked for {}..{}",
                    path.display(),
                    y.ncols(),
                    c.start,
                    c.end
                )))
            }
        })
    }

    /// The response file of (subject, story).
    pub fn file(&self, subject: &str, story: &str) -> PathBuf {
        self.root
            .join("preprocessed_data")
            .join(subject)
            .join(format!("{story}.{}", self.ext))
    }

    /// Subjects: the folders of `preprocessed_data`, sorted.
    pub fn subjects(&self) -> Result<Vec<String>> {
        let dir = self.root.join("preprocessed_data");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            if e.path().is_dir() {
                out.push(e.file_name().to_string_lossy().to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// TR count of `story`, or an error naming respdict.json.
    pub fn n_trs(&self, story: &str) -> Result<usize> {
        self.respdict.get(story).copied().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: story {story:?} is not in respdict.json (it lists {} stories)",
                self.root.join("respdict.json").display(),
                self.respdict.len()
            ))
        })
    }
}

/// A design on a story's whole TR grid → its response rows: `design` must have
/// `n_trs + trim_start + trim_end` rows (trimmed) or exactly `n_trs` (taken as is).
pub fn trim_design(
    design: ArrayView2<f64>,
    n_trs: usize,
    trim_start: usize,
    trim_end: usize,
    what: &str,
) -> Result<Array2<f64>> {
    let n = design.nrows();
    if n == n_trs {
        Ok(design.to_owned())
    } else if n == n_trs + trim_start + trim_end {
        Ok(design.slice(s![trim_start..trim_start + n_trs, ..]).to_owned())
    } else {
        Err(Error::Invalid(format!(
            "{what}: the design has {n} rows; expected {} (the story's TR grid, trimmed by {trim_start} + {trim_end}) or \
             {n_trs} (the response TRs)",
            n_trs + trim_start + trim_end
        )))
    }
}

/// Response formats, longest suffix first where one ends another.
pub const FORMATS: &[&str] = &[
    "nii.gz", "nii", "func.gii", "gii", "hf5", "h5", "hdf5", "npy", "parquet",
];

/// One subject's responses to a list of stories, checked and ready to be read in voxel chunks.
#[derive(Debug, Clone)]
pub struct SubjectResponses {
    pub subject: String,
    /// Response file per story (plan order).
    pub files: Vec<PathBuf>,
    /// Voxels in the files.
    pub n_voxels_in_file: usize,
    /// Voxels kept (finite, non-constant in every story), ascending.
    pub kept: Vec<usize>,
    /// The layout the files belong to (how to read them).
    pub layout: ResponseLayout,
    /// One line per story that excluded voxels.
    pub warnings: Vec<String>,
}

impl SubjectResponses {
    /// Checks every story file of `subject`: present, `respdict` rows, the same voxel count in
    /// every story; finds the voxels to exclude. Reads each file once.
    pub fn open(layout: &ResponseLayout, subject: &str, stories: &[String]) -> Result<SubjectResponses> {
        let mut n_vox: Option<(usize, PathBuf)> = None;
        let mut bad = Vec::<bool>::new();
        let mut warnings = Vec::new();
        let mut files = Vec::new();
        for story in stories {
            let path = layout.file(subject, story);
            if !path.is_file() {
                return Err(Error::Invalid(format!(
                    "subject {subject}: no responses for story {story:?} (expected {})",
                    path.display()
                )));
            }
            let y = layout.read(&path, None)?;
            let expected = layout.n_trs(story)?;
            if y.nrows() != expected {
                return Err(Error::Invalid(format!(
                    "{}: {} TRs, but respdict.json says {expected} for story {story:?}",
                    path.display(),
                    y.nrows()
                )));
            }
            match &n_vox {
                None => {
                    n_vox = Some((y.ncols(), path.clone()));
                    bad = vec![false; y.ncols()];
                }
                Some((n, first)) if *n != y.ncols() => {
                    return Err(Error::Invalid(format!(
                        "{}: {} voxels, but {} has {n} (every story of a subject must have the same voxels)",
                        path.display(),
                        y.ncols(),
                        first.display()
                    )))
                }
                _ => {}
            }
            let unusable: Vec<usize> = (0..y.ncols())
                .filter(|&j| !usable(y.column(j).iter().copied()))
                .collect();
            let newly = unusable.iter().filter(|&&j| !bad[j]).count();
            if !unusable.is_empty() {
                warnings.push(format!(
                    "subject {subject}, story {story}: {} voxel(s) with non-finite values or no variance ({} not already \
                     excluded); excluded for this subject",
                    unusable.len(),
                    newly
                ));
            }
            for j in unusable {
                bad[j] = true;
            }
            files.push(path);
        }
        let n_voxels_in_file = n_vox.map(|(n, _)| n).unwrap_or(0);
        let kept: Vec<usize> = (0..n_voxels_in_file).filter(|&j| !bad[j]).collect();
        if kept.is_empty() {
            return Err(Error::Invalid(format!(
                "subject {subject}: none of the {n_voxels_in_file} voxels is finite and varying in every story"
            )));
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(SubjectResponses {
            subject: subject.to_string(),
            files,
            n_voxels_in_file,
            kept,
            layout: layout.clone(),
            warnings,
        })
    }

    /// Kept voxels `c0..c1` (positions in [`Self::kept`]) over every story's rows, each story
    /// z-scored (population sd).
    pub fn read_kept(&self, c0: usize, c1: usize) -> Result<Array2<f64>> {
        let cols = &self.kept[c0..c1];
        let mut parts = Vec::with_capacity(self.files.len());
        // the smallest block of file columns holding the chunk's kept voxels
        let (lo, hi) = match (cols.first(), cols.last()) {
            (Some(&a), Some(&b)) => (a, b + 1),
            _ => (0, 0),
        };
        let local: Vec<usize> = cols.iter().map(|&j| j - lo).collect();
        for f in &self.files {
            let y = self.layout.read(f, Some(lo..hi))?;
            let mut part = y.select(Axis(1), &local);
            crate::stats::zscore_columns(part.view_mut());
            parts.push(part);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Invalid(format!("responses of {}: {e}", self.subject)))
    }
}

fn usable(x: impl Iterator<Item = f64> + Clone) -> bool {
    x.clone().all(f64::is_finite) && !super::roi::is_constant(x)
}

/// A voxel → region table: TSV (header `voxel<TAB>region`, 0-based voxel index) or Parquet
/// (columns `voxel` integer, `region` string). Voxels absent from the table have no region.
pub fn read_regions(path: &Path) -> Result<BTreeMap<usize, String>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let mut out = BTreeMap::new();
    if ext.eq_ignore_ascii_case("parquet") {
        let (_, batches, _) = crate::store::read_parquet(path)?;
        for b in &batches {
            let voxel = b
                .column_by_name("voxel")
                .ok_or_else(|| Error::parse(path, "columns", "expected a `voxel` column"))?;
            let region = b
                .column_by_name("region")
                .ok_or_else(|| Error::parse(path, "columns", "expected a `region` column"))?;
            let voxel = arrow::compute::cast(voxel, &arrow::datatypes::DataType::UInt64)
                .map_err(|e| Error::parse(path, "column `voxel`", format!("expected integers: {e}")))?;
            let region = arrow::compute::cast(region, &arrow::datatypes::DataType::Utf8)
                .map_err(|e| Error::parse(path, "column `region`", format!("expected strings: {e}")))?;
            let voxel = voxel
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .expect("cast to u64");
            let region = region
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("cast to utf8");
            for i in 0..b.num_rows() {
                if arrow::array::Array::is_null(voxel, i) || arrow::array::Array::is_null(region, i) {
                    return Err(Error::parse(path, format!("row {i}"), "null voxel or region"));
                }
                insert_region(
                    &mut out,
                    voxel.value(i) as usize,
                    region.value(i),
                    path,
                    &format!("row {i}"),
                )?;
            }
        }
        return Ok(out);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.split('\t').map(str::trim).eq(["voxel", "region"]) => {}
        other => {
            return Err(Error::parse(
                path,
                "line 1",
                format!(
                    "expected the header `voxel<TAB>region`, found {:?}",
                    other.map(|(_, h)| h).unwrap_or("")
                ),
            ))
        }
    }
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let loc = format!("line {}", i + 1);
        let mut f = line.split('\t');
        let (v, r) = (f.next().unwrap_or("").trim(), f.next().unwrap_or("").trim());
        let v: usize = v.parse().map_err(|_| {
            Error::parse(
                path,
                &loc,
                format!("column `voxel`: expected a 0-based index, found {v:?}"),
            )
        })?;
        if r.is_empty() {
            return Err(Error::parse(path, &loc, "column `region`: empty"));
        }
        insert_region(&mut out, v, r, path, &loc)?;
    }
    Ok(out)
}

fn insert_region(out: &mut BTreeMap<usize, String>, voxel: usize, region: &str, path: &Path, loc: &str) -> Result<()> {
    if let Some(prev) = out.insert(voxel, region.to_string()) {
        return Err(Error::parse(
            path,
            loc,
            format!("voxel {voxel} is listed twice ({prev:?} and {region:?})"),
        ));
    }
    Ok(())
}
