//! The tables of the voxelwise analysis (`cortexflow voxelwise fit`, and `[voxelwise]` in a
//! pipeline, one folder per (layer, feature set)): `voxelwise_voxels`, `voxelwise_voxel_folds`,
//! `voxelwise_story_folds`, `voxelwise_regions` and `voxelwise_region_summary` (data-schemas/),
//! from each subject's fit. BH q over each subject's fitted voxels; a subject's region mean over
//! its voxels with a finite r; the summary over subjects with a Student-t and a bootstrap CI.
//!
//! May import: `stages`, the analyses, `store`, `stats`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array};

use crate::encoding::stories::{StoryCvOptions, StoryPlan};
use crate::encoding::ScorePrecision;
use crate::stages::voxelwise::SubjectFit;
use crate::stats::{bootstrap_mean_ci, fdr_bh, t_mean_ci};
use crate::store::{write_table_parquet, TableSchema};
use crate::{Error, Result};

/// What the tables need beside the fits.
pub struct VoxelTableSettings<'a> {
    /// The fit's options (α grid, null samples, seed, precision).
    pub opts: &'a StoryCvOptions,
    /// The criterion's name, as given.
    pub criterion: String,
    pub fdr: f64,
    pub n_boot: usize,
    pub ci_level: f64,
}

/// The five tables, checked against their schemas, with the files' metadata.
pub struct VoxelTables {
    pub batches: Vec<(&'static str, TableSchema, RecordBatch)>,
    pub meta: Vec<(String, String)>,
    /// (region, mean r over subjects) per region, "all" first.
    pub region_means: Vec<(String, f64)>,
    /// (subject, region, the subject's mean voxel r in the region), "all" included.
    pub subject_regions: Vec<(String, String, f64)>,
}

impl VoxelTables {
    /// Writes every table into `dir` (each file atomically).
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut files = Vec::new();
        for (name, schema, batch) in &self.batches {
            let path = dir.join(format!("{name}.parquet"));
            write_table_parquet(
                &path,
                schema,
                &Default::default(),
                std::slice::from_ref(batch),
                &self.meta,
            )?;
            files.push(path);
        }
        Ok(files)
    }
}

/// The tables of `fits` (one per subject, in row order) under the fold plan `story_plan`.
pub fn voxelwise_tables(fits: &[SubjectFit], story_plan: &StoryPlan, s: &VoxelTableSettings) -> Result<VoxelTables> {
    // tables
    let mut vox = VoxelRows::default();
    let mut folds = FoldRows::default();
    let mut region_rows = RegionRows::default();
    let mut per_region: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for sf in fits {
        let (fit, reg) = (&sf.fit, &sf.regions);
        let q = fdr_bh(
            &fit.p
                .iter()
                .map(|p| if p.is_finite() { *p } else { 1.0 })
                .collect::<Vec<_>>(),
        );
        let mut kept_pos = vec![None; sf.n_voxels_in_file];
        for (i, &v) in sf.kept.iter().enumerate() {
            kept_pos[v] = Some(i);
        }
        let mut by_region: BTreeMap<String, Vec<(f64, bool)>> = BTreeMap::new();
        for (v, pos) in kept_pos.iter().enumerate() {
            let region = reg.get(&v).cloned();
            vox.subject.push(sf.subject.clone());
            vox.voxel.push(v as u32);
            vox.region.push(region.clone());
            vox.excluded.push(pos.is_none());
            match *pos {
                None => {
                    for c in [
                        &mut vox.r,
                        &mut vox.r2,
                        &mut vox.p,
                        &mut vox.p_perm,
                        &mut vox.q,
                        &mut vox.alpha,
                    ] {
                        c.push(None);
                    }
                }
                Some(i) => {
                    let fin = |x: f64| x.is_finite().then_some(x);
                    vox.r.push(fin(fit.r[i]));
                    vox.r2.push(fin(fit.r2[i]));
                    vox.p.push(fin(fit.p[i]));
                    vox.p_perm.push(fin(fit.p_perm[i]));
                    vox.q.push(fit.p[i].is_finite().then_some(q[i]));
                    let mut al: Vec<f64> = fit.alpha_per_fold.column(i).to_vec();
                    al.sort_by(f64::total_cmp);
                    vox.alpha.push(Some(median_sorted(&al)));
                    for k in 0..story_plan.n_outer() {
                        folds.subject.push(sf.subject.clone());
                        folds.voxel.push(v as u32);
                        folds.fold.push(k as u32);
                        folds.r.push(fin(fit.r_per_fold[[k, i]]));
                        folds.alpha.push(fit.alpha_per_fold[[k, i]]);
                        folds.alpha_r2.push(fit.alpha_r2_per_fold[[k, i]]);
                    }
                    if fit.r[i].is_finite() {
                        let sig = fit.p[i].is_finite() && q[i] < s.fdr;
                        by_region.entry("all".into()).or_default().push((fit.r[i], sig));
                        if let Some(rg) = region {
                            by_region.entry(rg).or_default().push((fit.r[i], sig));
                        }
                    }
                }
            }
        }
        for (rg, vals) in by_region {
            let mean = vals.iter().map(|v| v.0).sum::<f64>() / vals.len() as f64;
            region_rows.subject.push(sf.subject.clone());
            region_rows.region.push(rg.clone());
            region_rows.n.push(vals.len() as u32);
            region_rows.mean_r.push(Some(mean));
            region_rows
                .frac
                .push((s.opts.n_shifts > 0).then(|| vals.iter().filter(|v| v.1).count() as f64 / vals.len() as f64));
            per_region.entry(rg).or_default().push(mean);
        }
    }
    let mut summary_rows = Vec::new();
    let subject_regions: Vec<(String, String, f64)> = region_rows
        .subject
        .iter()
        .zip(&region_rows.region)
        .zip(&region_rows.mean_r)
        .map(|((s, r), m)| (s.clone(), r.clone(), m.unwrap_or(f64::NAN)))
        .collect();
    let mut region_means = Vec::new();
    let mut names: Vec<String> = per_region.keys().filter(|k| *k != "all").cloned().collect();
    names.insert(0, "all".into());
    for (i, rg) in names.iter().enumerate() {
        let Some(vals) = per_region.get(rg) else { continue };
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let (tl, tu) = t_mean_ci(vals, s.ci_level);
        let b = bootstrap_mean_ci(vals, s.n_boot, s.ci_level, s.opts.seed.wrapping_add(i as u64));
        summary_rows.push((rg.clone(), vals.len() as u32, mean, tl, tu, b.lower, b.upper));
        region_means.push((rg.clone(), mean));
    }

    let fin = |x: f64| x.is_finite().then_some(x);
    let meta = vec![
        ("cortexflow.criterion".to_string(), s.criterion.clone()),
        (
            "cortexflow.scores".to_string(),
            match s.opts.precision {
                ScorePrecision::Exact => "float64 inner-CV predictions".to_string(),
                ScorePrecision::Fast => {
                    "float32 inner-CV predictions, voxels within 1e-4 of a tie rescored in float64".to_string()
                }
            },
        ),
        ("cortexflow.alphas".to_string(), format!("{:?}", s.opts.alphas)),
        (
            "cortexflow.folds".to_string(),
            format!(
                "{} outer folds leaving stories out, {} inner folds over each outer fold's training stories",
                story_plan.n_outer(),
                story_plan.n_inner
            ),
        ),
        ("cortexflow.n_shifts".to_string(), s.opts.n_shifts.to_string()),
        ("cortexflow.fdr".to_string(), s.fdr.to_string()),
        ("cortexflow.seed".to_string(), s.opts.seed.to_string()),
    ];
    let tables: Vec<(&'static str, Vec<ArrayRef>)> = vec![
        (
            "voxelwise_voxels",
            vec![
                Arc::new(StringArray::from(vox.subject)),
                Arc::new(UInt32Array::from(vox.voxel)),
                Arc::new(StringArray::from(vox.region)),
                Arc::new(BooleanArray::from(vox.excluded)),
                Arc::new(Float64Array::from(vox.r)),
                Arc::new(Float64Array::from(vox.r2)),
                Arc::new(Float64Array::from(vox.p)),
                Arc::new(Float64Array::from(vox.p_perm)),
                Arc::new(Float64Array::from(vox.q)),
                Arc::new(Float64Array::from(vox.alpha)),
            ],
        ),
        (
            "voxelwise_voxel_folds",
            vec![
                Arc::new(StringArray::from(folds.subject)),
                Arc::new(UInt32Array::from(folds.voxel)),
                Arc::new(UInt32Array::from(folds.fold)),
                Arc::new(Float64Array::from(folds.r)),
                Arc::new(Float64Array::from(folds.alpha)),
                Arc::new(Float64Array::from(folds.alpha_r2)),
            ],
        ),
        (
            "voxelwise_story_folds",
            vec![
                Arc::new(StringArray::from(story_plan.stories.clone())),
                Arc::new(UInt32Array::from(
                    (0..story_plan.stories.len() as u32).collect::<Vec<_>>(),
                )),
                Arc::new(UInt32Array::from(
                    (0..story_plan.stories.len())
                        .map(|s| story_plan.rows(s).len() as u32)
                        .collect::<Vec<_>>(),
                )),
                Arc::new(UInt32Array::from(
                    story_plan.fold_of_story.iter().map(|&f| f as u32).collect::<Vec<_>>(),
                )),
            ],
        ),
        (
            "voxelwise_regions",
            vec![
                Arc::new(StringArray::from(region_rows.subject)),
                Arc::new(StringArray::from(region_rows.region)),
                Arc::new(UInt32Array::from(region_rows.n)),
                Arc::new(Float64Array::from(region_rows.mean_r)),
                Arc::new(Float64Array::from(region_rows.frac)),
            ],
        ),
        (
            "voxelwise_region_summary",
            vec![
                Arc::new(StringArray::from(
                    summary_rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(UInt32Array::from(summary_rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(
                    summary_rows.iter().map(|r| fin(r.2)).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    summary_rows.iter().map(|r| fin(r.3)).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    summary_rows.iter().map(|r| fin(r.4)).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    summary_rows.iter().map(|r| fin(r.5)).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    summary_rows.iter().map(|r| fin(r.6)).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(vec![s.ci_level; summary_rows.len()])),
            ],
        ),
    ];
    // every batch is built before anything is written
    let mut batches = Vec::new();
    for (name, cols) in tables {
        let schema = TableSchema::builtin(name)?;
        let arrow_schema = Arc::new(schema.to_arrow(&Default::default())?);
        let batch =
            RecordBatch::try_new(arrow_schema, cols).map_err(|e| Error::Invalid(format!("{name} table: {e}")))?;
        batches.push((name, schema, batch));
    }
    Ok(VoxelTables {
        batches,
        meta,
        region_means,
        subject_regions,
    })
}

fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

#[derive(Default)]
struct VoxelRows {
    subject: Vec<String>,
    voxel: Vec<u32>,
    region: Vec<Option<String>>,
    excluded: Vec<bool>,
    r: Vec<Option<f64>>,
    r2: Vec<Option<f64>>,
    p: Vec<Option<f64>>,
    p_perm: Vec<Option<f64>>,
    q: Vec<Option<f64>>,
    alpha: Vec<Option<f64>>,
}

#[derive(Default)]
struct FoldRows {
    subject: Vec<String>,
    voxel: Vec<u32>,
    fold: Vec<u32>,
    r: Vec<Option<f64>>,
    alpha: Vec<f64>,
    alpha_r2: Vec<f64>,
}

#[derive(Default)]
struct RegionRows {
    subject: Vec<String>,
    region: Vec<String>,
    n: Vec<u32>,
    mean_r: Vec<Option<f64>>,
    frac: Vec<Option<f64>>,
}
