//! NIfTI-1 volumes (`.nii`, `.nii.gz`) through the `nifti` crate: a 4-D BOLD run restricted to
//! the voxels of a 3-D mask, as a (TRs × voxels) matrix ([`masked_series`]), or averaged within
//! the regions of a 3-D label volume, as a (TRs × regions) matrix ([`label_means`]).
//!
//! Voxel order: the mask's non-zero voxels in C order of their (i, j, k) indices (i slowest, k
//! fastest), which is what nibabel's `img.get_fdata()[mask > 0]` and nilearn's maskers give, so a
//! column here is the same voxel as in a Python analysis of the same files. Values are the stored
//! values times `scl_slope` plus `scl_inter` when the header sets a non-zero slope (NIfTI's rule).
//!
//! May import: `error`.

use std::path::Path;

use ndarray::Array2;
use nifti::{NiftiObject, NiftiType, NiftiVolume, ReaderOptions};

use crate::{Error, Result};

/// A volume's dimensions (dim[1..=dim[0]]) and its values in file order (the first index fastest),
/// scaled.
fn read(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    if !path.is_file() {
        return Err(Error::Invalid(format!("{}: no such file", path.display())));
    }
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| Error::Invalid(format!("{}: not a readable NIfTI-1 file ({e})", path.display())))?;
    let (slope, inter) = (obj.header().scl_slope as f64, obj.header().scl_inter as f64);
    let volume = obj.into_volume();
    let dims: Vec<usize> = volume.dim().iter().map(|&d| d as usize).collect();
    let bad = |e: nifti::NiftiError| Error::Invalid(format!("{}: voxel values unreadable ({e})", path.display()));
    macro_rules! as_f64 {
        ($t:ty) => {
            volume
                .into_nifti_typed_data::<$t>()
                .map_err(bad)?
                .into_iter()
                .map(|v| v as f64)
                .collect()
        };
    }
    let mut data: Vec<f64> = match volume.data_type() {
        NiftiType::Uint8 => as_f64!(u8),
        NiftiType::Int8 => as_f64!(i8),
        NiftiType::Uint16 => as_f64!(u16),
        NiftiType::Int16 => as_f64!(i16),
        NiftiType::Uint32 => as_f64!(u32),
        NiftiType::Int32 => as_f64!(i32),
        NiftiType::Uint64 => as_f64!(u64),
        NiftiType::Int64 => as_f64!(i64),
        NiftiType::Float32 => as_f64!(f32),
        NiftiType::Float64 => volume.into_nifti_typed_data::<f64>().map_err(bad)?,
        other => {
            return Err(Error::Invalid(format!(
                "{}: voxel type {other:?} is not read (expected an integer or float type)",
                path.display()
            )))
        }
    };
    if slope != 0.0 && !(slope == 1.0 && inter == 0.0) {
        for v in &mut data {
            *v = *v * slope + inter;
        }
    }
    Ok((dims, data))
}

/// A 4-D run's dimensions (x, y, z, TRs) and values in file order; any other shape is an error.
fn read_run(run: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let (dims, data) = read(run)?;
    if dims.len() != 4 {
        return Err(Error::Invalid(format!(
            "{}: a {}-D volume of shape {dims:?}; expected a 4-D run (x, y, z, TRs)",
            run.display(),
            dims.len()
        )));
    }
    Ok((dims, data))
}

/// The mask's voxels (C order of (i, j, k)) as offsets into a volume of `dims` in file order.
fn mask_offsets(mask: &Path, dims: &[usize], run: &Path) -> Result<Vec<usize>> {
    let (mdims, m) = read(mask)?;
    let spatial: Vec<usize> = mdims.iter().copied().take(3).collect();
    if mdims.len() < 3 || mdims[3..].iter().any(|&d| d != 1) || spatial != dims[..3] {
        return Err(Error::Invalid(format!(
            "{}: mask of shape {mdims:?}, but the run {} has volumes of shape {:?} (expected a 3-D mask of that shape)",
            mask.display(),
            run.display(),
            &dims[..3]
        )));
    }
    let (nx, ny, nz) = (dims[0], dims[1], dims[2]);
    let mut out = Vec::new();
    for i in 0..nx {
        for j in 0..ny {
            for k in 0..nz {
                let off = i + nx * (j + ny * k);
                if m[off] != 0.0 && m[off].is_finite() {
                    out.push(off);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!("{}: the mask selects no voxel", mask.display())));
    }
    Ok(out)
}

/// Number of voxels the mask selects (its non-zero, finite values).
pub fn mask_size(mask: &Path) -> Result<usize> {
    let (_, m) = read(mask)?;
    Ok(m.iter().filter(|v| **v != 0.0 && v.is_finite()).count())
}

/// The 4-D run `run` (x, y, z, TRs) at the voxels of the 3-D `mask`: (TRs, mask voxels), columns
/// `cols` of it when given.
pub fn masked_series(run: &Path, mask: &Path, cols: Option<std::ops::Range<usize>>) -> Result<Array2<f64>> {
    let (dims, data) = read_run(run)?;
    let offsets = mask_offsets(mask, &dims, run)?;
    let cols = cols.unwrap_or(0..offsets.len());
    if cols.end > offsets.len() || cols.start > cols.end {
        return Err(Error::Invalid(format!(
            "{}: the mask has {} voxels; asked for {}..{}",
            mask.display(),
            offsets.len(),
            cols.start,
            cols.end
        )));
    }
    let vol = dims[0] * dims[1] * dims[2];
    let n_t = dims[3];
    let sel = &offsets[cols];
    Ok(Array2::from_shape_fn((n_t, sel.len()), |(t, c)| data[t * vol + sel[c]]))
}

/// The 4-D run `run` (x, y, z, TRs) averaged within each region of the 3-D label volume `atlas`
/// (same spatial shape): (TRs, `n_labels`), column j the mean over the voxels labelled j + 1.
/// Voxels labelled 0 (or above `n_labels`) are not read. A label that is not a whole number, and a
/// label in 1..=`n_labels` that no voxel carries, are errors naming the atlas.
pub fn label_means(run: &Path, atlas: &Path, n_labels: usize) -> Result<Array2<f64>> {
    let (dims, data) = read_run(run)?;
    let (adims, labels) = read(atlas)?;
    if adims.len() < 3 || adims[3..].iter().any(|&d| d != 1) || adims[..3] != dims[..3] {
        return Err(Error::Invalid(format!(
            "{}: atlas of shape {adims:?}, but the run {} has volumes of shape {:?} (expected a 3-D label volume of that shape)",
            atlas.display(),
            run.display(),
            &dims[..3]
        )));
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_labels];
    for (off, &l) in labels.iter().enumerate() {
        if !l.is_finite() || l.fract() != 0.0 || l < 0.0 {
            return Err(Error::Invalid(format!(
                "{}: voxel {off} has label {l}; expected whole numbers ≥ 0 (0 = no region)",
                atlas.display()
            )));
        }
        let l = l as usize;
        if (1..=n_labels).contains(&l) {
            members[l - 1].push(off);
        }
    }
    if let Some(j) = members.iter().position(Vec::is_empty) {
        return Err(Error::Invalid(format!(
            "{}: no voxel has label {} (region {} of {n_labels})",
            atlas.display(),
            j + 1,
            j + 1
        )));
    }
    let vol = dims[0] * dims[1] * dims[2];
    Ok(Array2::from_shape_fn((dims[3], n_labels), |(t, j)| {
        let m = &members[j];
        m.iter().map(|&off| data[t * vol + off]).sum::<f64>() / m.len() as f64
    }))
}
