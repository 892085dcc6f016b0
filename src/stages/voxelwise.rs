//! The voxelwise analysis over many stories (METHOD.md §5 at the paper's scale), as stages of the
//! pipeline (`[voxelwise]`) and as the engine of `cortexflow voxelwise fit`.
//!
//! Stages and their artifacts:
//! - `voxel-subject` (JSON): one subject's response files in the ds003020 layout (path, size and
//!   modification time of each story's file, and of the regions file), so an edited file is a new
//!   input;
//! - `voxel-design` (arrays): one (layer, feature set)'s story designs trimmed to the response TRs,
//!   concatenated in the pipeline's story order and z-scored per story, with the story lengths;
//! - `voxel-factors` (folder per design and fold plan): each outer fold's decompositions, shared
//!   by every subject and computed once ([`save_factors`], [`load_factors`]);
//! - `voxel-fit` (arrays): one subject's nested leave-stories-out fit of a voxel design, with the
//!   kept voxels and their regions ([`SubjectFit`]).
//!
//! The store counts `voxel-decomposition` (computed and loaded decompositions) beside its
//! artifacts, so a caller can see that adding a subject computes none.
//!
//! May import: `config`, the analyses, `store`, `stats`; never `dataflow` or above.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{Array2, Axis};
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::config::VoxelwiseSection;
use crate::encoding::stories::{
    story_cv, zscore_per_story, FactorParts, FoldFactors, StoryCvOptions, StoryCvWork, StoryFit, StoryPlan, VoxelSource,
};
use crate::encoding::{AlphaCriterion, RidgeMethod, ScorePrecision};
use crate::features::atlas::{parse_parcel_regions, Atlas, GLASSER_REGIONS};
use crate::features::voxels::{read_regions, trim_design, ResponseLayout, SubjectResponses};
use crate::store::artifacts::{Arrays, ArtifactId, ArtifactStore, KeyBuilder};
use crate::store::write_npy;
use crate::{Error, Result};

/// Revision of the voxelwise stages' artifacts (bumped when their results change for the same
/// inputs).
const REV_VOXEL: u32 = 1;

/// One subject's fit of a voxel design, with what the tables need beside it.
#[derive(Debug, Clone)]
pub struct SubjectFit {
    pub subject: String,
    /// Voxels in the subject's files.
    pub n_voxels_in_file: usize,
    /// Voxels fitted (finite and non-constant in every story), ascending; the fit's columns.
    pub kept: Vec<usize>,
    /// Voxel → region (voxels without a region are absent).
    pub regions: BTreeMap<usize, String>,
    pub fit: StoryFit,
    /// One line per story that excluded voxels.
    pub warnings: Vec<String>,
}

/// Where each voxel's region comes from: a voxel → region table per subject, an atlas with a
/// parcel → region map, or nowhere.
pub enum RegionSource {
    None,
    /// A path in which `{subject}` stands for the subject id.
    Table(String),
    /// The atlas and its parcel → region map.
    Atlas(Box<Atlas>, BTreeMap<String, String>),
}

impl RegionSource {
    /// The source of `regions` (a table pattern) or `atlas` + `names` (+ `map`, default the
    /// built-in Glasser → PT/AT/IF/AG/dmPFC map).
    pub fn open(
        regions: Option<&str>,
        atlas: Option<&Path>,
        names: Option<&Path>,
        map: Option<&Path>,
    ) -> Result<RegionSource> {
        match (regions, atlas, names) {
            (Some(r), None, _) => Ok(RegionSource::Table(r.to_string())),
            (Some(_), Some(_), _) => Err(Error::Invalid(
                "regions come from a table or from an atlas, not both".into(),
            )),
            (None, Some(l), Some(n)) => {
                let map = match map {
                    Some(p) => {
                        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                        parse_parcel_regions(&text, &p.display().to_string())?
                    }
                    None => parse_parcel_regions(GLASSER_REGIONS, "the built-in Glasser map")?,
                };
                Ok(RegionSource::Atlas(Box::new(Atlas::read(l, n)?), map))
            }
            (None, Some(_), None) => Err(Error::Invalid("an atlas needs its label names (atlas-names)".into())),
            (None, None, _) => Ok(RegionSource::None),
        }
    }

    /// The regions of `subject`'s `n_voxels` voxels.
    pub fn regions(&self, subject: &str, n_voxels: usize) -> Result<BTreeMap<usize, String>> {
        match self {
            RegionSource::None => Ok(BTreeMap::new()),
            RegionSource::Table(pattern) => {
                let path = PathBuf::from(pattern.replace("{subject}", subject));
                let r = read_regions(&path)?;
                if let Some((&v, _)) = r.iter().find(|(&v, _)| v >= n_voxels) {
                    return Err(Error::Invalid(format!(
                        "{}: voxel {v} is out of range (the subject's files have {n_voxels} voxels)",
                        path.display()
                    )));
                }
                Ok(r)
            }
            RegionSource::Atlas(atlas, map) => atlas
                .regions(map, n_voxels)
                .map_err(|e| Error::Invalid(format!("subject {subject}: {e}"))),
        }
    }
}

/// A subject's responses as the fit reads them: kept voxels, a chunk of columns at a time.
pub struct Source<'a>(pub &'a SubjectResponses);

impl VoxelSource for Source<'_> {
    fn n_voxels(&self) -> usize {
        self.0.kept.len()
    }
    fn read(&self, c0: usize, c1: usize) -> Result<Array2<f64>> {
        self.0.read_kept(c0, c1)
    }
}

/// The nested leave-stories-out fit of `responses` on the z-scored design `x`, each outer fold's
/// decompositions read from `factors` (a folder keyed by the design and the plan) when there,
/// else computed once for every subject and saved there.
pub fn fit_responses(
    x: ndarray::ArrayView2<f64>,
    plan: &StoryPlan,
    responses: &[&SubjectResponses],
    opts: &StoryCvOptions,
    factors: Option<&Path>,
    progress: &dyn Fn(usize, usize),
) -> Result<(Vec<StoryFit>, StoryCvWork)> {
    if responses.is_empty() {
        return Ok((Vec::new(), StoryCvWork::default()));
    }
    let sources: Vec<Source> = responses.iter().map(|r| Source(r)).collect();
    let dyn_sources: Vec<&dyn VoxelSource> = sources.iter().map(|s| s as &dyn VoxelSource).collect();
    let load = |k: usize| -> Result<Option<FoldFactors>> {
        match factors {
            Some(d) => load_factors(&d.join(format!("fold{k}")), plan, k),
            None => Ok(None),
        }
    };
    let mut save = |k: usize, f: &FoldFactors| -> Result<()> {
        match factors {
            Some(d) => save_factors(&d.join(format!("fold{k}")), f),
            None => Ok(()),
        }
    };
    story_cv(x, plan, &dyn_sources, opts, &load, &mut save, progress)
}

/// Writes one fold's decompositions (`d<i>_spectrum.npy`, `d<i>_u.npy`, `d<i>_a.npy`,
/// `meta.json`) into a temporary folder renamed to `dir`: a killed run leaves no partial entry.
pub fn save_factors(dir: &Path, f: &FoldFactors) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let parent = dir.parent().expect("a cache entry has a parent");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = crate::paths::temp_sibling(dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let parts = f.to_parts();
    for (i, p) in parts.iter().enumerate() {
        let spectrum = Array2::from_shape_vec((p.spectrum.len(), 1), p.spectrum.clone()).expect("column");
        write_npy(&tmp.join(format!("d{i}_spectrum.npy")), spectrum.view())?;
        write_npy(&tmp.join(format!("d{i}_u.npy")), p.u.view())?;
        write_npy(&tmp.join(format!("d{i}_a.npy")), p.a.view())?;
    }
    let meta = serde_json::json!({
        "fold": f.fold,
        "decompositions": parts.len(),
        "kernel": parts.iter().map(|p| p.kernel).collect::<Vec<_>>(),
    });
    crate::paths::write_atomic(&tmp.join("meta.json"), meta.to_string().as_bytes())?;
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Reads a fold's decompositions written by [`save_factors`]; `None` when there is no entry.
pub fn load_factors(dir: &Path, plan: &StoryPlan, k: usize) -> Result<Option<FoldFactors>> {
    let meta_path = dir.join("meta.json");
    if !meta_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
    let meta: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::parse(&meta_path, "JSON", e.to_string()))?;
    let kernel: Vec<bool> = meta["kernel"]
        .as_array()
        .ok_or_else(|| Error::parse(&meta_path, "kernel", "expected a list of booleans"))?
        .iter()
        .map(|v| v.as_bool().unwrap_or(false))
        .collect();
    let mut parts = Vec::new();
    for (i, &kernel) in kernel.iter().enumerate() {
        let spectrum = crate::store::read_npy(&dir.join(format!("d{i}_spectrum.npy")))?;
        parts.push(FactorParts {
            kernel,
            spectrum: spectrum.column(0).to_vec(),
            u: crate::store::read_npy(&dir.join(format!("d{i}_u.npy")))?,
            a: crate::store::read_npy(&dir.join(format!("d{i}_a.npy")))?,
        });
    }
    FoldFactors::from_parts(plan, k, parts)
        .map(Some)
        .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))
}

/// Size and modification time (ns since the epoch) of a file, (0, 0) when it cannot be read.
fn file_stamp(path: &Path) -> (u64, u128) {
    let Ok(m) = std::fs::metadata(path) else {
        return (0, 0);
    };
    let t = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (m.len(), t)
}

/// The `voxel-subject` artifact: what identifies one subject's responses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VoxelSubject {
    pub subject: String,
    /// (file, size, modification time in ns) per story, in the pipeline's story order.
    pub files: Vec<(PathBuf, u64, u128)>,
    /// The files the subject's regions come from (its region table, or the atlas's labels, names
    /// and map), stamped the same way.
    pub regions: Vec<(PathBuf, u64, u128)>,
}

/// The layout of `[voxelwise]` (its format detected when `auto`).
pub fn layout(s: &VoxelwiseSection) -> Result<ResponseLayout> {
    let format = match s.format.as_str() {
        "auto" => ResponseLayout::detect_format(&s.data)?,
        f => f.to_string(),
    };
    Ok(ResponseLayout::open(&s.data, &format)?
        .with_dataset(&s.dataset)
        .with_mask(s.mask.as_deref()))
}

/// The regions of `[voxelwise]`.
pub fn region_source(s: &VoxelwiseSection) -> Result<RegionSource> {
    RegionSource::open(
        s.regions.as_deref(),
        s.atlas.as_deref(),
        s.atlas_names.as_deref(),
        s.atlas_map.as_deref(),
    )
}

/// The `voxel-subject` record of `subject` under the plan's `[voxelwise]` (stored when `store` is
/// given).
pub fn voxel_subject(plan: &crate::config::Plan, subject: &str, store: Option<&ArtifactStore>) -> Result<ArtifactId> {
    let s = plan.voxelwise()?;
    let layout = layout(s)?;
    let stamp = |p: PathBuf| {
        let (n, t) = file_stamp(&p);
        (p, n, t)
    };
    let v = VoxelSubject {
        subject: subject.to_string(),
        files: plan
            .stories
            .iter()
            .map(|(c, _)| stamp(layout.file(subject, &c.id)))
            .collect(),
        regions: match &s.regions {
            Some(p) => vec![stamp(PathBuf::from(p.replace("{subject}", subject)))],
            None => [&s.atlas, &s.atlas_names, &s.atlas_map]
                .into_iter()
                .flatten()
                .map(|p| stamp(p.clone()))
                .collect(),
        },
    };
    let id = KeyBuilder::new("voxel-subject", REV_VOXEL)
        .config("subject", &v)
        .finish();
    if let Some(store) = store {
        store.json("voxel-subject", &id, || Ok(v.clone()))?;
    }
    Ok(id)
}

/// The story-CV options of `[voxelwise]` with the plan's α grid and seed.
pub fn cv_options(plan: &crate::config::Plan) -> Result<StoryCvOptions> {
    let s = plan.voxelwise()?;
    Ok(StoryCvOptions {
        alphas: plan.alphas(),
        criterion: AlphaCriterion::parse(&s.criterion)?,
        method: RidgeMethod::Auto,
        chunk: s.chunk,
        n_shifts: s.n_shifts,
        seed: plan.file.summary.seed,
        shared_kernel: true,
        precision: match s.exact_scores {
            true => ScorePrecision::Exact,
            false => ScorePrecision::Fast,
        },
    })
}

/// The `voxel-design` of one (layer, feature set): the stories' designs (`designs`: (story,
/// design artifact), in any order) trimmed to the response TRs, concatenated in the pipeline's
/// story order and z-scored per story. `None` while a story's design is missing (its stage
/// failed and said so).
pub fn voxel_design_stage(ctx: &Ctx, designs: &[(String, ArtifactId)]) -> Result<Option<ArtifactId>> {
    let plan = &ctx.plan;
    let s = plan.voxelwise()?;
    let by_story: BTreeMap<&str, &ArtifactId> = designs.iter().map(|(st, id)| (st.as_str(), id)).collect();
    let mut ids = Vec::new();
    for (c, _) in &plan.stories {
        match by_story.get(c.id.as_str()) {
            Some(id) => ids.push(((*id).clone(), c.id.clone())),
            None => return Ok(None),
        }
    }
    let lengths = story_lengths(plan)?;
    let mut key = KeyBuilder::new("voxel-design", REV_VOXEL)
        .config("trim", &(s.trim_start, s.trim_end))
        .config("folds", &(s.outer_folds, s.inner_folds));
    for ((id, story), (_, n)) in ids.iter().zip(&lengths) {
        key = key.part("story", story).part("design", id).config("trs", n);
    }
    let id = key.finish();
    ctx.store.arrays("voxel-design", &id, || {
        let mut parts = Vec::new();
        for ((design, story), &(_, n)) in ids.iter().zip(&lengths) {
            let a = ctx.store.load_arrays("design", design)?;
            if let Some(t) = a.meta.get(super::FOLD_TRANSFORM_META) {
                return Err(Error::Invalid(format!(
                    "the design of story {story:?} asks for a per-fold transform ({t}); the voxelwise fit \
                     z-scores per story only"
                )));
            }
            parts.push(trim_design(
                a.f64("x")?,
                n,
                s.trim_start,
                s.trim_end,
                &format!("the design of story {story:?}"),
            )?);
        }
        let (x, _) = concat_zscored(&parts, &lengths, s.outer_folds, s.inner_folds)?;
        Ok(Arrays::default()
            .with_f64("x", x)
            .with_meta("stories", serde_json::to_string(&lengths).expect("lengths serialise")))
    })?;
    Ok(Some(id))
}

/// (story, response TRs from `respdict.json`) of every story, in the pipeline's order: the row
/// blocks of its voxel designs.
pub fn story_lengths(plan: &crate::config::Plan) -> Result<Vec<(String, usize)>> {
    let layout = layout(plan.voxelwise()?)?;
    plan.stories
        .iter()
        .map(|(c, _)| Ok((c.id.clone(), layout.n_trs(&c.id)?)))
        .collect()
}

/// The stories' trimmed designs concatenated in order and z-scored per story, with the fold plan
/// of their lengths. Errors name the story whose columns differ and any non-finite value.
pub fn concat_zscored(
    parts: &[Array2<f64>],
    lengths: &[(String, usize)],
    outer: usize,
    inner: usize,
) -> Result<(Array2<f64>, StoryPlan)> {
    let p = parts.first().map(|d| d.ncols()).unwrap_or(0);
    if let Some((i, d)) = parts.iter().enumerate().find(|(_, d)| d.ncols() != p) {
        return Err(Error::Invalid(format!(
            "the design of story {:?} has {} columns but {:?}'s has {p}",
            lengths[i].0,
            d.ncols(),
            lengths[0].0
        )));
    }
    let views: Vec<_> = parts.iter().map(|d| d.view()).collect();
    let mut x = ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Invalid(format!("designs: {e}")))?;
    if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "designs: non-finite value {v} at concatenated row {i}, column {j}"
        )));
    }
    let plan = StoryPlan::new(lengths, outer, inner)?;
    zscore_per_story(x.view_mut(), &plan)?;
    Ok((x, plan))
}

/// The `voxel-fit` of each subject (`subjects`: (subject, `voxel-subject` artifact)) on a
/// `voxel-design`. A subject whose fit is in the store is not fitted again; the others are fitted
/// together, each outer fold's decompositions read from the store's `voxel-factors` entry of the
/// design when there, else computed once for all of them and kept there.
pub fn voxel_fit_stage(
    ctx: &Ctx,
    design_id: &str,
    subjects: &[(String, ArtifactId)],
) -> Result<Vec<(String, ArtifactId)>> {
    let plan = &ctx.plan;
    let s = plan.voxelwise()?;
    let opts = cv_options(plan)?;
    let fit_id = |subject_art: &str| {
        KeyBuilder::new("voxel-fit", REV_VOXEL)
            .part("design", design_id)
            .part("subject", subject_art)
            .config("options", &format!("{opts:?}"))
            .config(
                "responses",
                &(&s.dataset, &s.mask, &s.regions, &s.atlas, &s.atlas_names, &s.atlas_map),
            )
            .finish()
    };
    let ids: Vec<(String, ArtifactId)> = subjects.iter().map(|(sub, a)| (sub.clone(), fit_id(a))).collect();
    let missing: Vec<&(String, ArtifactId)> = ids
        .iter()
        .filter(|(_, id)| !ctx.store.has("voxel-fit", id, "safetensors"))
        .collect();
    // the decompositions are kept by `prune` as long as a run uses their design, so that a subject
    // added later computes none
    let factors_id = KeyBuilder::new("voxel-factors", REV_VOXEL)
        .part("design", design_id)
        .config("shared_kernel", &opts.shared_kernel)
        .finish();
    ctx.store.has("voxel-factors", &factors_id, "");
    if missing.is_empty() {
        return Ok(ids);
    }
    let design = ctx.store.load_arrays("voxel-design", design_id)?;
    let story_plan = design_plan(&design, design_id, s.outer_folds, s.inner_folds)?;
    let stories = story_plan.stories.clone();
    let layout = layout(s)?;
    let regions = region_source(s)?;
    let mut responses = Vec::new();
    let mut subject_regions = Vec::new();
    for (subject, _) in &missing {
        let r = SubjectResponses::open(&layout, subject, &stories)?;
        subject_regions.push(regions.regions(subject, r.n_voxels_in_file)?);
        for w in &r.warnings {
            tracing::warn!("{w}");
        }
        responses.push(r);
    }
    let factors = ctx
        .store
        .root()
        .join(ArtifactStore::relative("voxel-factors", &factors_id, ""));
    let refs: Vec<&SubjectResponses> = responses.iter().collect();
    // long work: a log line at every tenth of the (fold, subject, chunk) steps, with an estimate
    let started = std::time::Instant::now();
    let tenth = std::sync::atomic::AtomicUsize::new(0);
    let what = format!(
        "voxelwise fits of design {} ({} subject(s))",
        &design_id[..12],
        refs.len()
    );
    let log = |done: usize, total: usize| {
        let t = done * 10 / total.max(1);
        if t > tenth.fetch_max(t, std::sync::atomic::Ordering::Relaxed) {
            let s = started.elapsed().as_secs_f64();
            let left = s * (total - done) as f64 / done.max(1) as f64;
            tracing::info!("{what}: {t}0% after {s:.0} s, about {left:.0} s left");
        }
    };
    let (fits, work) = ctx.store.timed("voxel-fit", design_id, || {
        fit_responses(design.f64("x")?, &story_plan, &refs, &opts, Some(&factors), &log)
    })?;
    ctx.store.add_count("voxel-decomposition", true, work.decompositions);
    ctx.store.add_count("voxel-decomposition", false, work.loaded);
    for ((((_, id), r), fit), reg) in missing.iter().zip(&responses).zip(fits).zip(subject_regions) {
        let kept =
            Array2::from_shape_vec((r.kept.len(), 1), r.kept.iter().map(|&v| v as f64).collect()).expect("a column");
        let a = Arrays::default()
            .with_f64("fit", fit.to_matrix())
            .with_f64("kept", kept)
            .with_meta("subject", r.subject.clone())
            .with_meta("n_voxels_in_file", r.n_voxels_in_file.to_string())
            .with_meta("n_outer", story_plan.n_outer().to_string())
            .with_meta("regions", serde_json::to_string(&reg).expect("regions serialise"))
            .with_meta(
                "warnings",
                serde_json::to_string(&r.warnings).expect("warnings serialise"),
            );
        ctx.store.put_arrays("voxel-fit", id, &a)?;
    }
    Ok(ids)
}

/// A stored `voxel-fit`.
pub fn load_subject_fit(store: &ArtifactStore, id: &str) -> Result<SubjectFit> {
    let a = store.load_arrays("voxel-fit", id)?;
    let meta = |k: &str| {
        a.meta
            .get(k)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("voxel fit {id}: no `{k}`")))
    };
    let bad = |e: String| Error::Invalid(format!("voxel fit {id}: {e}"));
    let n_outer: usize = meta("n_outer")?.parse().map_err(|e| bad(format!("{e}")))?;
    Ok(SubjectFit {
        subject: meta("subject")?,
        n_voxels_in_file: meta("n_voxels_in_file")?.parse().map_err(|e| bad(format!("{e}")))?,
        kept: a.f64("kept")?.column(0).iter().map(|&v| v as usize).collect(),
        regions: serde_json::from_str(&meta("regions")?).map_err(|e| bad(e.to_string()))?,
        fit: StoryFit::from_matrix(&a.f64("fit")?.to_owned(), n_outer)?,
        warnings: serde_json::from_str(&meta("warnings")?).map_err(|e| bad(e.to_string()))?,
    })
}

/// The fold plan a `voxel-design` (`design`, artifact `id`) was cut with.
pub fn design_plan(design: &Arrays, id: &str, outer: usize, inner: usize) -> Result<StoryPlan> {
    let lengths: Vec<(String, usize)> = serde_json::from_str(
        design
            .meta
            .get("stories")
            .ok_or_else(|| Error::Invalid(format!("voxel design {id}: no story lengths")))?,
    )
    .map_err(|e| Error::Invalid(format!("voxel design {id}: {e}")))?;
    StoryPlan::new(&lengths, outer, inner)
}
