//! Tables of the taxonomy analysis, from the final snapshot: feature labels, feature sets, the
//! baseline comparison (every set against the semantic set, paired over subjects) and the
//! subcategory × region topography. Row orders are deterministic.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, UInt16Array, UInt32Array};
use arrow::record_batch::RecordBatch;

use super::columns::{batch, f64s, finite as fin, language_of, u16s, utf8, with_language};
pub use super::rows::BaselineRow;
use crate::dataflow::Snapshot;
use crate::features::FeatureSet;
use crate::stages::taxonomy::LayerLabels;
use crate::stages::{Ctx, FitRecord};
use crate::stats::paired::{paired_comparison, PairedComparison};
use crate::taxonomy::{Category, Subcategory};
use crate::Result;

/// The plan's `[taxonomy]` (these tables are built only when it is present).
fn section(ctx: &Ctx) -> &crate::config::TaxonomySection {
    ctx.plan
        .file
        .taxonomy
        .as_ref()
        .expect("taxonomy tables need [taxonomy]")
}

/// Every layer's labels artifact.
pub fn layer_labels(ctx: &Ctx, snap: &Snapshot) -> Result<Vec<LayerLabels>> {
    snap.labels
        .iter()
        .map(|(_, id)| ctx.store.load_json("labels", id))
        .collect()
}

pub fn labels_batch(all: &[LayerLabels]) -> Result<RecordBatch> {
    let mut c: BTreeMap<&str, Vec<Option<f64>>> = BTreeMap::new();
    let (mut layer, mut feature, mut source, mut cat, mut sub, mut builtin_cat) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut language = vec![];
    let (mut n_active, mut affix) = (vec![], vec![]);
    let conf_names = [
        "conf_semantic",
        "conf_syntactic",
        "conf_lexical",
        "conf_prediction",
        "conf_other",
    ];
    let sub_names = [
        "score_concrete",
        "score_event",
        "score_affect",
        "score_social",
        "score_spatial",
    ];
    for ll in all {
        let used = ll.used();
        for (l, b) in used.labels.iter().zip(&ll.builtin.labels) {
            language.push(ll.language.clone());
            layer.push(ll.layer as u16);
            feature.push(l.feature);
            source.push(used.source.clone());
            cat.push(l.category.name().to_string());
            builtin_cat.push(b.category.name().to_string());
            sub.push(l.subcategory.map(|s| s.name().to_string()));
            for j in 0..5 {
                c.entry(conf_names[j]).or_default().push(Some(l.confidence[j]));
                c.entry(sub_names[j]).or_default().push(Some(b.subcategory_scores[j]));
            }
            let e = &b.evidence;
            n_active.push(e.n_active as u32);
            affix.push(e.affix.clone());
            c.entry("variance").or_default().push(Some(e.variance));
            c.entry("entropy_r").or_default().push(e.entropy_r);
            c.entry("form_share").or_default().push(Some(e.form_share));
            c.entry("affix_share").or_default().push(Some(e.affix_share));
            c.entry("closed_share").or_default().push(Some(e.closed_share));
            c.entry("coherence_z").or_default().push(e.coherence_z);
            c.entry("closed_forms").or_default().push(Some(e.closed_forms as f64));
            c.entry("content_forms").or_default().push(Some(e.content_forms as f64));
            c.entry("norm_coverage").or_default().push(Some(e.norm_coverage as f64));
        }
    }
    let mut cols: Vec<(&str, ArrayRef, bool)> = vec![
        ("language", utf8(language), false),
        ("layer", Arc::new(UInt16Array::from(layer)), false),
        ("feature", Arc::new(UInt32Array::from(feature)), false),
        ("source", utf8(source), false),
        ("category", utf8(cat), false),
        ("subcategory", Arc::new(arrow::array::StringArray::from(sub)), true),
        ("builtin_category", utf8(builtin_cat), false),
    ];
    for n in conf_names.iter().chain(sub_names.iter()) {
        cols.push((n, f64s(c.remove(n).unwrap_or_default()), false));
    }
    cols.push(("n_active", Arc::new(UInt32Array::from(n_active)), false));
    cols.push(("affix", utf8(affix), false));
    for n in [
        "variance",
        "entropy_r",
        "form_share",
        "affix_share",
        "closed_share",
        "coherence_z",
        "closed_forms",
        "content_forms",
        "norm_coverage",
    ] {
        let nullable = matches!(n, "entropy_r" | "coherence_z");
        cols.push((n, f64s(c.remove(n).unwrap_or_default()), nullable));
    }
    batch(cols)
}

pub fn sets_batch(all: &[LayerLabels]) -> Result<RecordBatch> {
    let (mut layer, mut name, mut kind, mut n, mut share, mut seed, mut note) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut language = vec![];
    for ll in all {
        for d in &ll.sets {
            language.push(ll.language.clone());
            layer.push(ll.layer as u16);
            name.push(d.name.clone());
            kind.push(d.kind.clone());
            n.push(d.n_features as u32);
            share.push(d.variance_share);
            seed.push(d.seed.map(|s| s as f64));
            note.push(d.note.clone());
        }
    }
    batch(vec![
        ("language", utf8(language), false),
        ("layer", Arc::new(UInt16Array::from(layer)), false),
        ("feature_set", utf8(name), false),
        ("kind", utf8(kind), false),
        ("n_features", Arc::new(UInt32Array::from(n)), false),
        ("variance_share", f64s(share), true),
        ("seed", f64s(seed), true),
        ("note", utf8(note), false),
    ])
}

/// Per (story, layer, set, subject): mean held-out r over the subject's valid ROIs (all ROIs, or
/// the ROIs of one region), and the mean held-out R².
pub struct SubjectScores {
    /// (story, layer, set) → subject → (r, r²)
    pub by_set: BTreeMap<(String, usize, String), BTreeMap<String, (f64, f64)>>,
    /// (story, layer, set) → subject → roi → r
    pub by_roi: BTreeMap<(String, usize, String), BTreeMap<String, BTreeMap<String, f64>>>,
    /// (story, layer, set) → design columns
    pub n_columns: BTreeMap<(String, usize, String), usize>,
}

pub fn subject_scores(ctx: &Ctx, snap: &Snapshot) -> Result<SubjectScores> {
    let mut by_set: BTreeMap<(String, usize, String), BTreeMap<String, (f64, f64)>> = BTreeMap::new();
    let mut by_roi: BTreeMap<(String, usize, String), BTreeMap<String, BTreeMap<String, f64>>> = BTreeMap::new();
    let mut n_columns = BTreeMap::new();
    for (k, id) in &snap.fits {
        let f: FitRecord = ctx.store.load_json("fit", id)?;
        let rs: Vec<f64> = f.r.iter().flatten().copied().collect();
        let r2s: Vec<f64> = f.r2.iter().flatten().copied().collect();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let key = (k.story.clone(), k.layer, k.feature_set.to_string());
        n_columns.insert(key.clone(), f.n_features);
        by_set
            .entry(key.clone())
            .or_default()
            .insert(k.subject.clone(), (mean(&rs), mean(&r2s)));
        let m = by_roi.entry(key).or_default().entry(k.subject.clone()).or_default();
        for (j, roi) in f.rois.iter().enumerate() {
            if let Some(r) = f.r[j] {
                m.insert(roi.clone(), r);
            }
        }
    }
    Ok(SubjectScores {
        by_set,
        by_roi,
        n_columns,
    })
}

fn family_of(set: &str) -> Option<&'static str> {
    if set.starts_with("random:count:") {
        Some("random:count")
    } else if set.starts_with("random:variance:") {
        Some("random:variance")
    } else if set.starts_with("ablate:random:") {
        Some("ablate:random")
    } else {
        None
    }
}

/// `langs`: story → language ([`super::tables::story_languages`]); a story is compared with the
/// labels of its own language only.
pub fn baseline_rows(
    ctx: &Ctx,
    all: &[LayerLabels],
    scores: &SubjectScores,
    langs: &BTreeMap<String, String>,
) -> Result<Vec<BaselineRow>> {
    let t = section(ctx);
    let seed = ctx.plan.file.summary.seed;
    let n_boot = ctx.plan.file.summary.n_boot;
    let level = ctx.plan.file.summary.ci_level;
    let mut rows = Vec::new();
    let stories: Vec<String> = {
        let mut v: Vec<String> = scores.by_set.keys().map(|k| k.0.clone()).collect();
        v.dedup();
        v
    };
    for story in &stories {
        let language = language_of(langs, story);
        for ll in all.iter().filter(|ll| ll.language == language) {
            let layer = ll.layer;
            let get = |set: &str| scores.by_set.get(&(story.clone(), layer, set.to_string()));
            let Some(all_r) = get(FeatureSet::Sae.as_str()) else {
                continue;
            };
            let all_mean = mean(all_r.values().map(|v| v.0));
            // sets → per-subject values (families averaged over seeds within subject)
            let mut groups: BTreeMap<String, (String, Vec<&BTreeMap<String, (f64, f64)>>, f64, Option<f64>)> =
                BTreeMap::new();
            let builtin = [
                FeatureSet::Raw,
                FeatureSet::Sae,
                FeatureSet::SaeRecon,
                FeatureSet::RawPredError,
            ];
            let pe = crate::stages::taxonomy::PRED_ERROR_SETS.map(FeatureSet::named);
            for set in builtin.iter().chain(&pe) {
                let set = set.as_str();
                if let Some(m) = get(set) {
                    let cols = scores
                        .n_columns
                        .get(&(story.clone(), layer, set.to_string()))
                        .copied()
                        .unwrap_or(0);
                    groups.insert(set.into(), (set.into(), vec![m], cols as f64, None));
                }
            }
            for d in &ll.sets {
                let Some(m) = get(&d.name) else { continue };
                let (name, kind) = match family_of(&d.name) {
                    Some(f) => (f.to_string(), d.kind.clone()),
                    None => (d.name.clone(), d.kind.clone()),
                };
                let e = groups
                    .entry(name)
                    .or_insert((kind, vec![], 0.0, d.variance_share.map(|_| 0.0)));
                e.1.push(m);
                e.2 += d.n_features as f64;
                if let (Some(acc), Some(v)) = (e.3.as_mut(), d.variance_share) {
                    *acc += v;
                }
            }
            let per_subject = |ms: &[&BTreeMap<String, (f64, f64)>]| -> BTreeMap<String, (f64, f64)> {
                let mut out: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
                for m in ms {
                    for (s, (r, r2)) in m.iter() {
                        let e = out.entry(s.clone()).or_default();
                        e.0 += r;
                        e.1 += r2;
                        e.2 += 1;
                    }
                }
                out.into_iter()
                    .filter(|(_, v)| v.2 == ms.len())
                    .map(|(s, v)| (s, (v.0 / v.2 as f64, v.1 / v.2 as f64)))
                    .collect()
            };
            let semantic = groups.get("sae:semantic").map(|g| per_subject(&g.1));
            let recon = groups.get(FeatureSet::SaeRecon.as_str()).map(|g| per_subject(&g.1));
            let raw = groups.get(FeatureSet::Raw.as_str()).map(|g| per_subject(&g.1));
            for (name, (kind, ms, n_feat, vshare)) in &groups {
                let subj = per_subject(ms);
                let k = ms.len();
                let seed_sd = (k > 1).then(|| {
                    let means: Vec<f64> = ms.iter().map(|m| mean(m.values().map(|v| v.0))).collect();
                    let mu = means.iter().sum::<f64>() / k as f64;
                    (means.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt()
                });
                let ablation = kind == "recon-ablated";
                let (vs, reference) = if ablation {
                    ("sae-recon (R²)".to_string(), recon.as_ref())
                } else if name == FeatureSet::RawPredError.as_str() {
                    (FeatureSet::Raw.to_string(), raw.as_ref())
                } else if name == "sae:semantic" {
                    (
                        "sae (all features)".to_string(),
                        groups.get(FeatureSet::Sae.as_str()).map(|_| all_r),
                    )
                } else {
                    ("sae:semantic".to_string(), semantic.as_ref())
                };
                let test = reference.and_then(|refm| {
                    // subjects with a finite value on both sides (a subject whose ROIs were all
                    // excluded has none)
                    let pick = |m: &BTreeMap<String, (f64, f64)>, s: &String| if ablation { m[s].1 } else { m[s].0 };
                    let subjects: Vec<&String> = subj
                        .keys()
                        .filter(|s| refm.contains_key(*s) && pick(&subj, s).is_finite() && pick(refm, s).is_finite())
                        .collect();
                    if subjects.len() < 3 {
                        return None;
                    }
                    let a: Vec<f64> = subjects.iter().map(|s| pick(&subj, s)).collect();
                    let b: Vec<f64> = subjects.iter().map(|s| pick(refm, s)).collect();
                    Some(paired_comparison(&a, &b, t.permutations, n_boot, level, seed))
                });
                let mr = mean(subj.values().map(|v| v.0));
                rows.push(BaselineRow {
                    story: story.clone(),
                    layer,
                    feature_set: name.clone(),
                    kind: kind.clone(),
                    n_features: if k > 0 { n_feat / k as f64 } else { 0.0 },
                    variance_share: vshare.map(|v| v / k as f64),
                    n_seeds: k,
                    seed_sd,
                    mean_r: mr,
                    mean_r2: mean(subj.values().map(|v| v.1)),
                    pct_of_all: 100.0 * mr / all_mean,
                    vs,
                    test,
                });
            }
        }
    }
    Ok(rows)
}

fn mean(it: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = it.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn baselines_batch(rows: &[BaselineRow]) -> Result<RecordBatch> {
    let t = |f: &dyn Fn(&PairedComparison) -> f64| -> ArrayRef {
        f64s(rows.iter().map(|r| r.test.as_ref().and_then(|t| fin(f(t)))).collect())
    };
    batch(vec![
        ("story", utf8(rows.iter().map(|r| r.story.clone()).collect()), false),
        (
            "layer",
            Arc::new(UInt16Array::from(
                rows.iter().map(|r| r.layer as u16).collect::<Vec<_>>(),
            )),
            false,
        ),
        (
            "feature_set",
            utf8(rows.iter().map(|r| r.feature_set.clone()).collect()),
            false,
        ),
        ("kind", utf8(rows.iter().map(|r| r.kind.clone()).collect()), false),
        (
            "n_features",
            f64s(rows.iter().map(|r| Some(r.n_features)).collect()),
            false,
        ),
        (
            "variance_share",
            f64s(rows.iter().map(|r| r.variance_share).collect()),
            true,
        ),
        (
            "n_seeds",
            Arc::new(UInt32Array::from(
                rows.iter().map(|r| r.n_seeds as u32).collect::<Vec<_>>(),
            )),
            false,
        ),
        ("seed_sd", f64s(rows.iter().map(|r| r.seed_sd).collect()), true),
        ("mean_r", f64s(rows.iter().map(|r| fin(r.mean_r)).collect()), true),
        ("mean_r2", f64s(rows.iter().map(|r| fin(r.mean_r2)).collect()), true),
        (
            "pct_of_all",
            f64s(rows.iter().map(|r| fin(r.pct_of_all)).collect()),
            true,
        ),
        ("vs", utf8(rows.iter().map(|r| r.vs.clone()).collect()), false),
        ("mean_diff", t(&|t| t.mean_diff), true),
        ("diff_ci_lower", t(&|t| t.ci_lower), true),
        ("diff_ci_upper", t(&|t| t.ci_upper), true),
        ("t", t(&|t| t.t), true),
        ("df", t(&|t| t.df), true),
        ("p_t", t(&|t| t.p_t), true),
        ("p_signflip", t(&|t| t.p_signflip), true),
        ("cohens_dz", t(&|t| t.cohens_dz), true),
        (
            "n_subjects",
            Arc::new(UInt32Array::from(
                rows.iter()
                    .map(|r| r.test.as_ref().map_or(0, |t| t.n as u32))
                    .collect::<Vec<_>>(),
            )),
            false,
        ),
        (
            "n_perm",
            Arc::new(UInt32Array::from(
                rows.iter()
                    .map(|r| r.test.as_ref().map_or(0, |t| t.n_perm as u32))
                    .collect::<Vec<_>>(),
            )),
            false,
        ),
        (
            "unit",
            utf8(
                rows.iter()
                    .map(|r| {
                        if r.n_seeds > 1 {
                            format!("subjects (each subject's r averaged over {} seeds first)", r.n_seeds)
                        } else {
                            "subjects".to_string()
                        }
                    })
                    .collect(),
            ),
            false,
        ),
    ])
}

/// Names of the category sets in table order (for reports).
pub fn category_sets() -> Vec<String> {
    Category::ALL.iter().map(|c| format!("sae:{}", c.name())).collect()
}

/// Names of the subcategory sets in table order.
pub fn subcategory_sets() -> Vec<String> {
    Subcategory::ALL
        .iter()
        .map(|s| format!("sae:sub:{}", s.name()))
        .collect()
}

/// The story key of the topography on voxelwise fits (all the stories at once, `[voxelwise]
/// taxonomy-sets`): its regions are the voxels' regions themselves.
pub const VOXELWISE_STORY: &str = "voxelwise";

/// (layer, feature set) → subject → region → the subject's mean voxel r in the region.
pub type VoxelRegionMeans = BTreeMap<(usize, String), BTreeMap<String, BTreeMap<String, f64>>>;

/// The observed subcategory × region matrix of one (story, layer), per subject and averaged.
pub struct ObservedMatrix {
    pub story: String,
    pub layer: usize,
    pub subcategories: Vec<Subcategory>,
    pub regions: Vec<String>,
    /// ROIs of each region, in order.
    pub region_rois: Vec<Vec<String>>,
    pub subjects: Vec<String>,
    /// (subjects, subcategories, regions)
    pub per_subject: ndarray::Array3<f64>,
    pub mean: ndarray::Array2<f64>,
    /// The a-priori prediction restricted to these rows and columns (0/1).
    pub predicted: ndarray::Array2<f64>,
    /// Per-cell specificity test (one-sided sign flip over subjects).
    pub specificity: ndarray::Array2<f64>,
    pub p_cell: ndarray::Array2<f64>,
    pub n_perm: usize,
}

/// The a-priori prediction: the `[taxonomy] prediction` TSV, else the paper's Table 16.
pub fn prediction_matrix(ctx: &Ctx) -> Result<crate::topography::matrix::LabelledMatrix> {
    let t = section(ctx);
    match &t.prediction {
        Some(p) => crate::topography::matrix::read_labelled_matrix(p),
        None => crate::topography::matrix::parse_labelled_matrix(
            include_str!("../../pipelines/topography/paper-table16.tsv"),
            std::path::Path::new("pipelines/topography/paper-table16.tsv (built in)"),
        ),
    }
}

/// The observed matrices of every (story, layer) with at least 2 subcategories, 2 regions and 3
/// subjects with every cell: each cell the subject's mean r over the region's ROIs (`[taxonomy]
/// regions`), or for [`VOXELWISE_STORY`] the subject's mean voxel r in the region.
pub fn observed_matrices(ctx: &Ctx, scores: &SubjectScores) -> Result<Vec<ObservedMatrix>> {
    let t = section(ctx);
    let pred = prediction_matrix(ctx)?;
    // regions in the prediction's column order, those that have ROIs here (a voxelwise key's
    // regions are those of its voxels)
    let columns = |rois_of: &dyn Fn(&String) -> Vec<String>| {
        let (mut regions, mut region_rois, mut pred_cols) = (Vec::new(), Vec::new(), Vec::new());
        for (j, name) in pred.col_labels.iter().enumerate() {
            let rois = rois_of(name);
            if !rois.is_empty() {
                regions.push(name.clone());
                region_rois.push(rois);
                pred_cols.push(j);
            }
        }
        (regions, region_rois, pred_cols)
    };
    let roi_columns = columns(&|name| {
        t.regions
            .iter()
            .filter(|(_, r)| *r == name)
            .map(|(roi, _)| roi.clone())
            .collect()
    });
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<(String, usize)> = scores.by_roi.keys().map(|k| (k.0.clone(), k.1)).collect();
    for (story, layer) in keys {
        let (regions, region_rois, pred_cols) = match story == VOXELWISE_STORY {
            false => roi_columns.clone(),
            true => {
                let present: std::collections::BTreeSet<&String> = scores
                    .by_roi
                    .iter()
                    .filter(|(k, _)| k.0 == story && k.1 == layer)
                    .flat_map(|(_, subjects)| subjects.values().flat_map(|m| m.keys()))
                    .collect();
                columns(&|name| match present.contains(name) {
                    true => vec![name.clone()],
                    false => Vec::new(),
                })
            }
        };
        let mut subs = Vec::new();
        let mut pred_rows = Vec::new();
        for s in Subcategory::ALL {
            let present = scores
                .by_roi
                .contains_key(&(story.clone(), layer, format!("sae:sub:{}", s.name())));
            let row = pred.row_labels.iter().position(|r| Subcategory::parse(r) == Some(s));
            if let (true, Some(row)) = (present, row) {
                subs.push(s);
                pred_rows.push(row);
            }
        }
        if subs.len() < 2 || regions.len() < 2 {
            continue;
        }
        // subjects with every cell
        let maps: Vec<&BTreeMap<String, BTreeMap<String, f64>>> = subs
            .iter()
            .map(|s| &scores.by_roi[&(story.clone(), layer, format!("sae:sub:{}", s.name()))])
            .collect();
        let cell = |m: &BTreeMap<String, f64>, rois: &[String]| -> Option<f64> {
            let v: Vec<f64> = rois.iter().filter_map(|r| m.get(r).copied()).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let subjects: Vec<String> = maps[0]
            .keys()
            .filter(|s| {
                maps.iter().all(|m| {
                    m.get(*s)
                        .is_some_and(|rm| region_rois.iter().all(|r| cell(rm, r).is_some()))
                })
            })
            .cloned()
            .collect();
        let (a, b, n) = (subs.len(), regions.len(), subjects.len());
        if n < 3 {
            continue;
        }
        let mut per = ndarray::Array3::<f64>::zeros((n, a, b));
        for (si, s) in subjects.iter().enumerate() {
            for (i, m) in maps.iter().enumerate() {
                for (j, rois) in region_rois.iter().enumerate() {
                    per[[si, i, j]] = cell(&m[s], rois).expect("checked above");
                }
            }
        }
        let mean = per.mean_axis(ndarray::Axis(0)).expect("subjects");
        let predicted = ndarray::Array2::from_shape_fn((a, b), |(i, j)| pred.values[[pred_rows[i], pred_cols[j]]]);
        let (specificity, p_cell, n_perm) = specificity_tests(per.view(), t.permutations, ctx.plan.file.summary.seed);
        out.push(ObservedMatrix {
            story,
            layer,
            subcategories: subs,
            regions: regions.clone(),
            region_rois: region_rois.clone(),
            subjects,
            per_subject: per,
            mean,
            predicted,
            specificity,
            p_cell,
            n_perm,
        });
    }
    Ok(out)
}

/// Per-cell specificity of a (subjects, rows, cols) stack: per subject, the cell minus the mean
/// of its column (the region's mean over rows); mean over subjects, and the one-sided (greater)
/// sign-flip p over subjects (exact for ≤ 16 subjects, else `n_perm` flips). Returns
/// (specificity, p, flips).
pub fn specificity_tests(
    per: ndarray::ArrayView3<'_, f64>,
    n_perm: usize,
    seed: u64,
) -> (ndarray::Array2<f64>, ndarray::Array2<f64>, usize) {
    let (n, a, b) = per.dim();
    let mut specificity = ndarray::Array2::<f64>::zeros((a, b));
    let mut p_cell = ndarray::Array2::<f64>::zeros((a, b));
    let mut flips = 0;
    for i in 0..a {
        for j in 0..b {
            let x: Vec<f64> = (0..n).map(|s| per[[s, i, j]]).collect();
            let region_mean: Vec<f64> = (0..n)
                .map(|s| (0..a).map(|k| per[[s, k, j]]).sum::<f64>() / a as f64)
                .collect();
            let c = paired_comparison(&x, &region_mean, n_perm, 0, 0.95, seed);
            specificity[[i, j]] = c.mean_diff;
            p_cell[[i, j]] = c.p_signflip_greater;
            flips = c.n_perm;
        }
    }
    (specificity, p_cell, flips)
}

pub fn observed_batch(ctx: &Ctx, ms: &[ObservedMatrix]) -> Result<RecordBatch> {
    let fdr = ctx.plan.file.taxonomy.as_ref().map_or(0.05, |t| t.fdr);
    let (mut story, mut layer, mut sub, mut region, mut rois) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut mean_r, mut spec, mut pred, mut p, mut q, mut sig, mut n, mut np) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for m in ms {
        let flat: Vec<f64> = m.p_cell.iter().copied().collect();
        let qs = crate::encoding::stats::fdr_bh(&flat);
        for (i, s) in m.subcategories.iter().enumerate() {
            for (j, r) in m.regions.iter().enumerate() {
                let k = i * m.regions.len() + j;
                story.push(m.story.clone());
                layer.push(m.layer as u16);
                sub.push(s.name().to_string());
                region.push(r.clone());
                rois.push(m.region_rois[j].join("+"));
                mean_r.push(fin(m.mean[[i, j]]));
                spec.push(fin(m.specificity[[i, j]]));
                pred.push(m.predicted[[i, j]] == 1.0);
                p.push(fin(m.p_cell[[i, j]]));
                q.push(fin(qs[k]));
                sig.push(qs[k] <= fdr);
                n.push(m.subjects.len() as u32);
                np.push(m.n_perm as u32);
            }
        }
    }
    batch(vec![
        ("story", utf8(story), false),
        ("layer", Arc::new(UInt16Array::from(layer)), false),
        ("subcategory", utf8(sub), false),
        ("region", utf8(region), false),
        ("rois", utf8(rois), false),
        ("mean_r", f64s(mean_r), true),
        ("specificity", f64s(spec), true),
        ("predicted", Arc::new(arrow::array::BooleanArray::from(pred)), false),
        ("p_value", f64s(p), true),
        ("q_value", f64s(q), true),
        ("significant", Arc::new(arrow::array::BooleanArray::from(sig)), false),
        ("n_subjects", Arc::new(UInt32Array::from(n)), false),
        ("n_perm", Arc::new(UInt32Array::from(np)), false),
    ])
}

/// The topography tests of every observed matrix (the helper-built statistics of
/// [`crate::topography`]), one row per statistic, keyed by story and layer.
pub fn topography_reports(
    ctx: &Ctx,
    ms: &[ObservedMatrix],
) -> Result<Vec<(String, usize, crate::topography::TopographyReport)>> {
    let t = section(ctx);
    let settings = crate::topography::TopographySettings {
        n_perm: t.permutations,
        n_boot: ctx.plan.file.summary.n_boot,
        ci_level: ctx.plan.file.summary.ci_level,
        fdr_q: t.fdr,
        seed: ctx.plan.file.summary.seed,
        same_labels: false,
    };
    ms.iter()
        .map(|m| {
            let r = crate::topography::topography_report(
                m.mean.view(),
                m.predicted.view(),
                Some(m.p_cell.view()),
                Some(m.per_subject.view()),
                &settings,
            )?;
            Ok((m.story.clone(), m.layer, r))
        })
        .collect()
}

/// The `topography_stats` table: every report's `topography_tests` rows, keyed by story and layer
/// (the language column is added with the other story-keyed tables).
pub fn stats_batch(reports: &[(String, usize, crate::topography::TopographyReport)]) -> Result<RecordBatch> {
    let (mut stories, mut layers, mut stats) = (vec![], vec![], vec![]);
    for (story, layer, r) in reports {
        for row in r.rows() {
            stories.push(story.clone());
            layers.push(*layer);
            stats.push(row);
        }
    }
    let schema = crate::store::TableSchema::builtin("topography_tests")?;
    let mut cols: Vec<(&str, ArrayRef, bool)> = vec![
        ("story", utf8(stories), false),
        ("layer", u16s(layers.into_iter()), false),
    ];
    for (c, a) in schema
        .columns
        .iter()
        .zip(crate::topography::matrix::statistics_columns(&stats))
    {
        cols.push((c.name.as_str(), a, c.nullable));
    }
    batch(cols)
}

/// Everything the taxonomy adds to a run's outputs, built in memory before anything is written.
pub struct TaxonomyOutputs {
    pub tables: Vec<(&'static str, RecordBatch)>,
    pub labels: Vec<LayerLabels>,
    pub baselines: Vec<BaselineRow>,
    pub observed: Vec<ObservedMatrix>,
    pub reports: Vec<(String, usize, crate::topography::TopographyReport)>,
    /// The variance-partition and prediction-error sections of the report.
    pub partition_markdown: String,
}

/// `langs`: story → language ([`super::tables::story_languages`]).
/// `voxel`: the voxelwise fits' region means, whose subcategory sets are tested as the story
/// [`VOXELWISE_STORY`] (empty without `[voxelwise] taxonomy-sets`).
pub fn build(
    ctx: &Ctx,
    snap: &Snapshot,
    langs: &BTreeMap<String, String>,
    voxel: &VoxelRegionMeans,
) -> Result<TaxonomyOutputs> {
    let labels = layer_labels(ctx, snap)?;
    let mut scores = subject_scores(ctx, snap)?;
    for ((layer, set), subjects) in voxel {
        if set.starts_with("sae:sub:") {
            scores
                .by_roi
                .insert((VOXELWISE_STORY.to_string(), *layer, set.clone()), subjects.clone());
        }
    }
    let baselines = baseline_rows(ctx, &labels, &scores, langs)?;
    let observed = observed_matrices(ctx, &scores)?;
    let reports = topography_reports(ctx, &observed)?;
    let mut tables = vec![
        ("feature_labels", labels_batch(&labels)?),
        ("feature_sets", sets_batch(&labels)?),
        ("baselines", baselines_batch(&baselines)?),
        ("topography_observed", observed_batch(ctx, &observed)?),
        ("topography_stats", stats_batch(&reports)?),
        (
            "feature_region_weights",
            super::feature_weights::region_weights_batch(ctx, snap, &labels, &section(ctx).regions, langs)?,
        ),
    ];
    let t = section(ctx);
    let parts = super::partition_tables::partitions(ctx, snap)?;
    let part_summary = super::partition_tables::partition_summary(ctx, &parts);
    if t.variance_partition {
        tables.push(("variance_partition", super::partition_tables::partition_batch(&parts)?));
        tables.push((
            "variance_partition_summary",
            super::partition_tables::partition_summary_batch(&part_summary)?,
        ));
    }
    let pe = super::partition_tables::pred_error_rows(ctx, snap, &baselines, &scores.by_set)?;
    if t.prediction_error_delta.is_some() {
        tables.push(("prediction_error", super::partition_tables::pred_error_batch(&pe)?));
    }
    let partition_markdown = super::partition_tables::markdown(&part_summary, &pe);
    drop(pe);
    // every table keyed by story is keyed by its language too
    let tables = tables
        .into_iter()
        .map(|(name, b)| match b.schema().index_of("story") {
            Ok(_) => Ok((name, with_language(&b, langs)?)),
            Err(_) => Ok((name, b)), // keyed by (language, layer) already
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TaxonomyOutputs {
        tables,
        labels,
        baselines,
        observed,
        reports,
        partition_markdown,
    })
}

/// Writes the labelling tasks (JSONL per layer), the built-in labels and the plots.
pub fn write_files(tx: &TaxonomyOutputs, out: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    // with several languages, each language's files carry its code
    let several = tx.labels.iter().any(|ll| ll.language != tx.labels[0].language);
    for ll in &tx.labels {
        let tag = match several {
            true => format!("{}_L{}", ll.language, ll.layer),
            false => format!("L{}", ll.layer),
        };
        let p = out.join(format!("labelling_tasks_{tag}.jsonl"));
        crate::taxonomy::tasks::write_tasks(&p, &ll.tasks)?;
        files.push(p);
        // the built-in labels as an answers file, for `cortexflow labels agree`
        let mut tsv = String::from("layer\tfeature\tcategory\tsubcategory\trater\n");
        for l in &ll.builtin.labels {
            tsv.push_str(&format!(
                "{}\t{}\t{}\t{}\tbuiltin\n",
                ll.layer,
                l.feature,
                l.category.name(),
                l.subcategory.map_or("", |s| s.name())
            ));
        }
        let p = out.join(format!("labels_builtin_{tag}.tsv"));
        crate::paths::write_atomic(&p, tsv.as_bytes())?;
        files.push(p);
    }
    // plots: bars of r by feature set per (story, layer), predicted vs observed heatmaps
    let mut keys: Vec<(String, usize)> = tx.baselines.iter().map(|r| (r.story.clone(), r.layer)).collect();
    keys.dedup();
    for (story, layer) in keys {
        let bars: Vec<(String, f64, u8)> = tx
            .baselines
            .iter()
            .filter(|r| r.story == story && r.layer == layer && r.kind != "recon-ablated")
            .map(|r| {
                let tone = if r.feature_set == "sae:semantic" {
                    1
                } else if r.n_seeds > 1 {
                    2
                } else {
                    0
                };
                (r.feature_set.clone(), r.mean_r, tone)
            })
            .collect();
        let p = out.join(format!("baselines_{story}_L{layer}.png"));
        crate::report::plot_set_bars(&format!("{story}, layer {layer}: held-out r by feature set"), &bars, &p)?;
        files.push(p);
    }
    for m in &tx.observed {
        let p = out.join(format!("topography_{}_L{}.png", m.story, m.layer));
        let rows: Vec<String> = m.subcategories.iter().map(|s| s.long_name().to_string()).collect();
        crate::report::plot_topography(
            &format!("{}, layer {}: subcategory × region", m.story, m.layer),
            &rows,
            &m.regions,
            m.predicted.view(),
            m.mean.view(),
            &p,
        )?;
        files.push(p);
    }
    Ok(files)
}

/// The report's taxonomy sections (Markdown).
pub fn markdown(tx: &TaxonomyOutputs) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "## Feature taxonomy (METHOD.md §4)\n");
    for ll in &tx.labels {
        let used = ll.used();
        let n = used.labels.len();
        let _ = writeln!(
            s,
            "Layer {} ({}): {n} features labelled by `{}` from {} evidence words (entropy: {}; lexicons: {}).\n",
            ll.layer,
            ll.language,
            used.source,
            ll.n_words,
            ll.builtin.entropy_kind,
            ll.lexicon_sources.join("; ")
        );
        if !ll.evidence_texts.is_empty() {
            let corpus: usize = ll
                .evidence_texts
                .iter()
                .filter(|(t, _)| t.starts_with("corpus:"))
                .map(|(_, n)| n)
                .sum();
            let _ = writeln!(
                s,
                "Evidence texts (`[taxonomy] evidence`): {} stimulus words and {corpus} corpus words from {} texts.\n",
                ll.n_words - corpus,
                ll.evidence_texts.len()
            );
        }
        if let Some(t) = &ll.tuned_lens {
            let logit: Vec<String> = Category::ALL
                .iter()
                .map(|&c| format!("{} {}", c.name(), ll.builtin.features_of(c).len()))
                .collect();
            let tuned: Vec<String> = t.counts.iter().map(|(c, k)| format!("{c} {k}")).collect();
            let _ = writeln!(
                s,
                "Category shares (built-in labeller) under the logit lens: {}; under the tuned lens: {} \
                 ({} features change category; the translator to the last layer explains {} of its \
                 held-out variance). The labels and sets are the logit lens's.\n",
                logit.join(", "),
                tuned.join(", "),
                t.changed,
                t.r2_heldout
                    .map(|r| format!("R² {r:.3}"))
                    .unwrap_or_else(|| "all (the last layer itself)".into())
            );
        }
        if let Some(imp) = &ll.imported {
            let _ = writeln!(
                s,
                "{} features had no imported answer and count as OTHER.\n",
                ll.imported_missing
            );
            let a = ll.builtin.category_indices();
            let b = imp.category_indices();
            if let Ok((k, per, _)) = crate::stats::agreement::cohen_kappa(&a, &b, 5) {
                let per: Vec<String> = Category::ALL
                    .iter()
                    .zip(&per)
                    .map(|(c, k)| format!("{} {:.3}", c.name(), k.kappa))
                    .collect();
                let _ = writeln!(
                    s,
                    "Agreement of the built-in labels with `{}` over all {} features: Cohen's κ = {:.3} (observed {:.3}, expected {:.3}); one-vs-rest κ: {}. `cortexflow labels agree` on `labels_builtin_L{}.tsv` and the answers gives bootstrap CIs and the confusion matrix.\n",
                    imp.source,
                    k.n_items,
                    k.kappa,
                    k.observed_agreement,
                    k.expected_agreement,
                    per.join(", "),
                    ll.layer
                );
            }
        }
        let _ = writeln!(
            s,
            "| category | features | share of features | share of activation variance |\n|---|---|---|---|"
        );
        let total_var: f64 = ll.builtin.labels.iter().map(|l| l.evidence.variance).sum();
        for c in Category::ALL {
            let f = used.features_of(c);
            let v: f64 = f.iter().map(|&j| ll.builtin.labels[j].evidence.variance).sum();
            let _ = writeln!(
                s,
                "| {} | {} | {:.1}% | {:.1}% |",
                c.name(),
                f.len(),
                100.0 * f.len() as f64 / n as f64,
                100.0 * v / total_var
            );
        }
        let _ = writeln!(s, "\n| semantic subcategory | features |\n|---|---|");
        for sc in Subcategory::ALL {
            let _ = writeln!(s, "| {} | {} |", sc.long_name(), used.features_of_sub(sc).len());
        }
        let unassigned = used.features_of(Category::Semantic).len()
            - Subcategory::ALL
                .iter()
                .map(|sc| used.features_of_sub(*sc).len())
                .sum::<usize>();
        let _ = writeln!(s, "| (no subcategory) | {unassigned} |\n");
    }
    let _ = writeln!(
        s,
        "## Feature sets and baselines (METHOD.md §6, §10)\n\nUnit of every test: subjects (paired over subjects; random families averaged over their seeds within each subject first). p_t: paired t, two-sided; p_flip: sign-flip permutation, two-sided; d_z = mean difference / SD of differences; CI: percentile bootstrap over subjects of the mean difference.\n"
    );
    let _ = writeln!(
        s,
        "| layer | feature set | features | var. share | mean r | % of all | vs | Δ | 95% CI of Δ | t (df) | p_t | p_flip | d_z |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &tx.baselines {
        let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.4}"));
        let (d, ci, tdf, pt, pf, dz) = match &r.test {
            Some(t) => (
                format!("{:+.4}", t.mean_diff),
                format!("[{:+.4}, {:+.4}]", t.ci_lower, t.ci_upper),
                format!("{:.2} ({})", t.t, t.df),
                format!("{:.2e}", t.p_t),
                format!("{:.4}", t.p_signflip),
                format!("{:.2}", t.cohens_dz),
            ),
            None => Default::default(),
        };
        let _ = writeln!(
            s,
            "| {} | {}{} | {:.0} | {} | {:.4} | {:.1}% | {} | {} | {} | {} | {} | {} | {} |",
            r.layer,
            r.feature_set,
            if r.n_seeds > 1 {
                format!(" ({} seeds, SD {:.4})", r.n_seeds, r.seed_sd.unwrap_or(f64::NAN))
            } else {
                String::new()
            },
            r.n_features,
            f(r.variance_share.map(|v| 100.0 * v)).replace("–", "")
                + if r.variance_share.is_some() { "%" } else { "–" },
            r.mean_r,
            r.pct_of_all,
            r.vs,
            d,
            ci,
            tdf,
            pt,
            pf,
            dz
        );
    }
    let _ = writeln!(
        s,
        "\nAblation rows compare held-out R² (not r) with the unablated reconstruction (`sae-recon`).\n"
    );
    s.push_str(&tx.partition_markdown);
    let _ = writeln!(s, "## Cortical topography (METHOD.md §7)\n");
    for m in &tx.observed {
        let _ = writeln!(
            s,
            "Story `{}`, layer {}: observed matrix = mean over {} subjects of each subcategory set's held-out r, averaged over the region's ROIs ({}). `*` marks predicted cells; p: one-sided sign-flip test of the cell's specificity (its r minus the mean of the region's subcategories), {} flips; q: BH over the {} cells.\n",
            m.story,
            m.layer,
            m.subjects.len(),
            m.regions.iter().zip(&m.region_rois).map(|(r, rois)| format!("{r} = {}", rois.join("+"))).collect::<Vec<_>>().join(", "),
            m.n_perm,
            m.mean.len()
        );
        let _ = write!(s, "| subcategory |");
        for r in &m.regions {
            let _ = write!(s, " {r} |");
        }
        let _ = writeln!(s, "\n|---|{}", "---|".repeat(m.regions.len()));
        let flat: Vec<f64> = m.p_cell.iter().copied().collect();
        let q = crate::encoding::stats::fdr_bh(&flat);
        for (i, sc) in m.subcategories.iter().enumerate() {
            let _ = write!(s, "| {} |", sc.long_name());
            for j in 0..m.regions.len() {
                let _ = write!(
                    s,
                    " {:.4}{} (p {:.3}, q {:.3}) |",
                    m.mean[[i, j]],
                    if m.predicted[[i, j]] == 1.0 { "*" } else { "" },
                    m.p_cell[[i, j]],
                    q[i * m.regions.len() + j]
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "\n![topography](topography_{}_L{}.png)\n", m.story, m.layer);
        if let Some((_, _, rep)) = tx.reports.iter().find(|(st, l, _)| *st == m.story && *l == m.layer) {
            let _ = writeln!(s, "\n| statistic | value | p | CI | n | df | permutations | unit | alternative | ties / note |\n|---|---|---|---|---|---|---|---|---|---|");
            for r in rep.rows() {
                let o = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.4}"));
                let _ = writeln!(
                    s,
                    "| {} | {:.4} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.statistic,
                    r.value,
                    r.p_value.map_or("–".into(), |p| format!("{p:.4}")),
                    match (r.ci_lower, r.ci_upper) {
                        (Some(a), Some(b)) => format!("[{a:.3}, {b:.3}]"),
                        _ => "–".into(),
                    },
                    r.n.map_or("–".into(), |n| n.to_string()),
                    match (r.df1, r.df2) {
                        (Some(a), Some(b)) => format!("({a}, {b})"),
                        (Some(a), None) => o(Some(a)),
                        _ => "–".into(),
                    },
                    r.n_perm.map_or("–".into(), |n| n.to_string()),
                    r.unit.clone().unwrap_or_default(),
                    r.alternative.clone().unwrap_or_default(),
                    [r.tie_rule.clone(), r.note.clone()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            let _ = writeln!(s);
        }
    }
    s
}
