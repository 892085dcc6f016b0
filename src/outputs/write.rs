//! [`write_outputs`]: every table of a run, then the plot and the report: an encoding run's (fits,
//! summary, SAE quality, languages, and the taxonomy's when the plan has `[taxonomy]`), or a
//! reading-time run's ([`super::reading_tables`]).
//!
//! May import: the other files of `outputs`, `report`, and what they may import.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::columns::write_tables;
use super::language_tables;
use super::tables::{fits_batch, sae_quality_batch, story_languages, summary_batch, summary_rows};
use super::taxonomy_tables;
use super::voxelwise_tables::{voxelwise_tables, VoxelTableSettings, VoxelTables};
use crate::dataflow::{Snapshot, VoxelKey};
use crate::stages::Ctx;
use crate::Result;

/// Writes every table of a run into `out` (a reading-time run's when the plan has `[reading]`,
/// else the encoding run's), then the plot and the report. All tables are built (and checked
/// against their schemas) in memory before the first file is written; each file is written
/// atomically.
pub fn write_outputs(ctx: &Ctx, snap: &Snapshot, out: &Path) -> Result<Vec<PathBuf>> {
    match ctx.plan.reading {
        Some(_) => super::reading_tables::write_outputs(ctx, snap, out),
        None => write_encoding_outputs(ctx, snap, out),
    }
}

/// Writes fits, summary and sae_quality tables, the plot and the report into `out`. All tables
/// are built (and checked against their schemas) in memory before the first file is written;
/// each file is written atomically.
fn write_encoding_outputs(ctx: &Ctx, snap: &Snapshot, out: &Path) -> Result<Vec<PathBuf>> {
    // every story artifact read once for the language of each story-keyed row
    let story_langs = story_languages(ctx, snap)?;
    let fits = fits_batch(ctx, snap, &story_langs)?;
    let (rows, n_boot, level) = summary_rows(ctx, snap, &story_langs)?;
    let summary = summary_batch(&rows, n_boot, level)?;
    let quality = sae_quality_batch(ctx, snap)?;
    let voxelwise = build_voxelwise(ctx, snap)?;
    let taxonomy = match ctx.plan.file.taxonomy {
        Some(_) => {
            // the voxelwise subcategory fits' region means, for the topography (story `voxelwise`)
            let mut by_region: taxonomy_tables::VoxelRegionMeans = BTreeMap::new();
            for (k, t) in &voxelwise {
                let m = by_region
                    .entry((k.layer, k.feature_set.as_str().to_string()))
                    .or_default();
                for (subject, region, r) in &t.subject_regions {
                    m.entry(subject.clone()).or_default().insert(region.clone(), *r);
                }
            }
            let mut langs = story_langs.clone();
            let all: std::collections::BTreeSet<&String> = story_langs.values().collect();
            langs.insert(
                taxonomy_tables::VOXELWISE_STORY.to_string(),
                all.into_iter().cloned().collect::<Vec<_>>().join("+"),
            );
            Some(taxonomy_tables::build(ctx, snap, &langs, &by_region)?)
        }
        None => None,
    };
    let langs = language_tables::language_rows(ctx, snap)?;
    let lang_layers = language_tables::language_layer_rows(&rows);
    let props = taxonomy
        .as_ref()
        .map(|tx| language_tables::proportion_rows(&tx.labels))
        .unwrap_or_default();
    let mut tables = vec![
        ("fits", fits),
        ("summary", summary),
        ("sae_quality", quality),
        ("languages", language_tables::languages_batch(&langs)?),
        ("language_layers", language_tables::language_layers_batch(&lang_layers)?),
    ];
    if let Some(tx) = &taxonomy {
        tables.push(("category_proportions", language_tables::proportions_batch(&props)?));
        tables.extend(tx.tables.iter().cloned());
    }
    let mut files = write_tables(ctx, &tables, out)?;
    if let Some(tx) = &taxonomy {
        files.extend(taxonomy_tables::write_files(tx, out)?);
    }
    let plot = out.join("r_by_layer.png");
    crate::report::plot_r_by_layer(&rows, &plot)?;
    files.push(plot);
    let (voxel_files, voxel_md) = write_voxelwise(ctx, snap, &voxelwise, out)?;
    files.extend(voxel_files);
    let report = out.join("report.md");
    let mut md = crate::report::markdown(ctx, snap, &rows)?;
    md.push_str(&voxel_md);
    md.push_str(&language_tables::markdown(&langs, &lang_layers, &props));
    if let Some(tx) = &taxonomy {
        md.push_str(&taxonomy_tables::markdown(tx));
    }
    crate::paths::write_atomic(&report, md.as_bytes())?;
    files.push(report);
    files.extend(write_designs(ctx, snap, out)?);
    Ok(files)
}

/// With `[voxelwise]`: the voxelwise tables of each (layer, feature set) in memory, from the
/// snapshot's voxel designs and fits (subjects in their sorted order).
fn build_voxelwise(ctx: &Ctx, snap: &Snapshot) -> Result<Vec<(VoxelKey, VoxelTables)>> {
    use crate::stages::voxelwise::{cv_options, load_subject_fit, story_lengths};
    let mut out = Vec::new();
    let Some(v) = &ctx.plan.voxelwise else {
        return Ok(out);
    };
    let opts = cv_options(&ctx.plan)?;
    let settings = VoxelTableSettings {
        opts: &opts,
        criterion: v.criterion.clone(),
        fdr: v.fdr,
        n_boot: ctx.plan.file.summary.n_boot,
        ci_level: ctx.plan.file.summary.ci_level,
    };
    // the fold plan every voxel design was cut with (the stories' response TRs, in order)
    let plan = crate::encoding::stories::StoryPlan::new(&story_lengths(&ctx.plan)?, v.outer_folds, v.inner_folds)?;
    for (k, _) in &snap.voxel_designs {
        let fits = snap
            .voxel_fits
            .iter()
            .filter(|(f, _)| f.layer == k.layer && f.feature_set == k.feature_set)
            .map(|(_, id)| load_subject_fit(&ctx.store, id))
            .collect::<Result<Vec<_>>>()?;
        if !fits.is_empty() {
            out.push((k.clone(), voxelwise_tables(&fits, &plan, &settings)?));
        }
    }
    Ok(out)
}

/// Writes the voxelwise tables in `voxelwise/layer-<L>/<feature set>/` (those of `cortexflow
/// voxelwise fit`) and `voxelwise/region_r.png` (mean r over subjects per region, layer and set).
/// The folder is written beside `voxelwise/` and then takes its place, like `designs/`; without
/// `[voxelwise]` it is removed. Returns the files and the report's section.
fn write_voxelwise(
    ctx: &Ctx,
    snap: &Snapshot,
    tables: &[(VoxelKey, VoxelTables)],
    out: &Path,
) -> Result<(Vec<PathBuf>, String)> {
    let mut files = Vec::new();
    let root = out.join("voxelwise");
    let Some(v) = &ctx.plan.voxelwise else {
        // the tables of an earlier run with [voxelwise] no longer describe this state
        replace_folder(&root, |_| Ok(()))?;
        return Ok((files, String::new()));
    };
    let mut md = format!(
        "\n## Voxelwise encoding (`voxelwise/`)\n\n{} subject(s), {} stories, {} outer folds leaving stories \
         out, {} inner folds, {} null shifts. Mean held-out r over subjects of each subject's mean voxel r \
         (CIs in `voxelwise_region_summary`):\n\n| layer | feature set | region | subjects | mean r |\n\
         |---|---|---|---|---|\n",
        snap.voxel_subjects.len(),
        ctx.plan.stories.len(),
        v.outer_folds,
        v.inner_folds,
        v.n_shifts
    );
    let mut bars = Vec::new();
    replace_folder(&root, |tmp| {
        for (k, t) in tables {
            let rel = Path::new(&format!("layer-{}", k.layer)).join(k.feature_set.as_str());
            for f in t.write(&tmp.join(&rel))? {
                files.push(root.join(&rel).join(f.file_name().expect("a file")));
            }
            let n_subjects = t.subject_regions.iter().filter(|r| r.1 == "all").count();
            for (region, r) in &t.region_means {
                md.push_str(&format!(
                    "| {} | {} | {region} | {n_subjects} | {r:.3} |\n",
                    k.layer,
                    k.feature_set.as_str()
                ));
                bars.push((
                    format!("layer {} {} · {region}", k.layer, k.feature_set.as_str()),
                    *r,
                    0,
                ));
            }
        }
        if !bars.is_empty() {
            crate::report::plot_set_bars("voxelwise: mean r by region", &bars, &tmp.join("region_r.png"))?;
            files.push(root.join("region_r.png"));
        }
        Ok(())
    })?;
    Ok((files, md))
}

/// With `[encoding] export-designs`: every word-feature design as
/// `designs/layer-<L>/<feature set>/<story>.npy` (float64, TRs × columns on the story's grid),
/// one folder per (layer, feature set) as `cortexflow voxelwise fit --designs` reads them. The
/// folder is written beside `designs/` and then takes its place, so it holds exactly the run's
/// designs (a retracted story's file goes) and a failed export leaves the previous one whole.
fn write_designs(ctx: &Ctx, snap: &Snapshot, out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if !ctx.plan.file.encoding.export_designs {
        return Ok(files);
    }
    let root = out.join("designs");
    replace_folder(&root, |tmp| {
        for (k, id) in &snap.designs {
            let design = ctx.store.load_arrays("design", id)?;
            let rel = Path::new(&format!("layer-{}", k.layer))
                .join(k.feature_set.as_str())
                .join(format!("{}.npy", k.story));
            let path = tmp.join(&rel);
            let dir = path.parent().expect("a file in a folder");
            std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
            crate::store::write_npy(&path, design.f64("x")?)?;
            files.push(root.join(rel));
        }
        Ok(())
    })?;
    Ok(files)
}

/// Fills a temporary sibling of `root` with `fill`, then puts it in `root`'s place: `root` holds
/// exactly what `fill` wrote (nothing, and no folder, when it wrote nothing), and a failure
/// leaves the previous `root` whole and no temporary folder.
fn replace_folder(root: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = crate::paths::temp_sibling(root);
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if root.exists() {
        std::fs::remove_dir_all(root).map_err(|e| crate::Error::io(root, e))?;
    }
    if tmp.exists() {
        std::fs::rename(&tmp, root).map_err(|e| crate::Error::io(root, e))?;
    }
    Ok(())
}
