//! The run's output tables, built from the final dataflow snapshot and the artifact store, in a
//! deterministic row order (so any worker count writes byte-identical files).
//!
//! May import: [`super::columns`], `report` (the summary row), `stages`, `dataflow` (the
//! snapshot) and everything below them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, UInt16Array, UInt32Array};
use arrow::record_batch::RecordBatch;

use super::columns::{batch, finite, language_of, utf8};
use crate::dataflow::Snapshot;
use crate::stages::{self, Ctx, FitRecord, SummaryRecord};
use crate::Result;

/// Story id → language, from the snapshot's story artifacts.
pub fn story_languages(ctx: &Ctx, snap: &Snapshot) -> Result<BTreeMap<String, String>> {
    snap.stories
        .iter()
        .map(|(story, id)| {
            let st: stages::StoredStory = ctx.store.load_json("story", id)?;
            Ok((story.clone(), st.story.language))
        })
        .collect()
}

/// `langs`: story → language ([`story_languages`]).
pub fn fits_batch(ctx: &Ctx, snap: &Snapshot, langs: &BTreeMap<String, String>) -> Result<RecordBatch> {
    let (mut subject, mut story, mut layer, mut set, mut roi) = (vec![], vec![], vec![], vec![], vec![]);
    let mut language = vec![];
    let (mut r, mut alpha, mut excluded, mut n_trs, mut n_feat) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut r2, mut p_value) = (vec![], vec![]);
    for (k, id) in &snap.fits {
        let f: FitRecord = ctx.store.load_json("fit", id)?;
        for (j, name) in f.rois.iter().enumerate() {
            subject.push(k.subject.clone());
            story.push(k.story.clone());
            language.push(language_of(langs, &k.story));
            layer.push(k.layer as u16);
            set.push(k.feature_set.to_string());
            roi.push(name.clone());
            r.push(f.r[j]);
            alpha.push(f.alpha_median[j]);
            r2.push(f.r2[j]);
            p_value.push(f.p_value[j]);
            excluded.push(f.r[j].is_none());
            n_trs.push(f.n_trs as u32);
            n_feat.push(f.n_features as u32);
        }
    }
    batch(vec![
        ("subject", utf8(subject), false),
        ("story", utf8(story), false),
        ("language", utf8(language.clone()), false),
        ("layer", Arc::new(UInt16Array::from(layer)), false),
        ("feature_set", utf8(set), false),
        ("roi", utf8(roi), false),
        ("r", Arc::new(Float64Array::from(r)), true),
        ("alpha", Arc::new(Float64Array::from(alpha)), true),
        ("r2", Arc::new(Float64Array::from(r2)), true),
        ("p_value", Arc::new(Float64Array::from(p_value.clone())), true),
        (
            "q_value",
            Arc::new(Float64Array::from(fdr_per_language(&p_value, &language))),
            true,
        ),
        ("excluded", Arc::new(BooleanArray::from(excluded)), false),
        ("n_trs", Arc::new(UInt32Array::from(n_trs)), false),
        ("n_features", Arc::new(UInt32Array::from(n_feat)), false),
    ])
}

/// Benjamini–Hochberg q-values over the non-null p of each language's rows (one family per
/// language: all its subjects, stories, layers, feature sets and ROIs), so that adding a
/// language leaves the others' q-values unchanged.
fn fdr_per_language(p: &[Option<f64>], language: &[String]) -> Vec<Option<f64>> {
    let mut q = vec![None; p.len()];
    for lang in language.iter().collect::<BTreeSet<_>>() {
        let rows: Vec<usize> = (0..p.len()).filter(|&i| &language[i] == lang).collect();
        let flat: Vec<f64> = rows.iter().map(|&i| p[i].unwrap_or(f64::NAN)).collect();
        for (&i, v) in rows.iter().zip(crate::encoding::stats::fdr_bh(&flat)) {
            q[i] = v.is_finite().then_some(v);
        }
    }
    q
}

/// Noise ceiling per (story, ROI) from the subjects in the snapshot: the leave-one-subject-out
/// inter-subject correlation of the detrended ROI time courses, corrected to a single-subject
/// ceiling ([`crate::encoding::stats::IscCeiling::ceiling_r`]); subjects whose ROI is constant are
/// left out of that ROI; fewer than 3 usable subjects → no ceiling. Returns (ceiling r, subjects).
pub fn isc_ceilings(ctx: &Ctx, snap: &Snapshot) -> Result<BTreeMap<(String, String), (f64, usize)>> {
    let mut subjects: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (k, _) in &snap.fits {
        subjects.entry(k.story.clone()).or_default().insert(k.subject.clone());
    }
    let mut out = BTreeMap::new();
    for (story, ids) in &subjects {
        let tables = snap
            .responses
            .iter()
            .filter(|(k, _)| k.story == *story && ids.contains(&k.subject))
            .map(|(_, id)| stages::load_roi(&ctx.store, id))
            .collect::<Result<Vec<_>>>()?;
        for roi in &ctx.plan.response_columns() {
            let mut cols: Vec<ndarray::Array2<f64>> = Vec::new();
            for t in &tables {
                if t.constant.contains(roi) {
                    continue;
                }
                if let Some(c) = t.column(roi) {
                    let mut m = ndarray::Array2::from_shape_vec((c.len(), 1), c).expect("column");
                    crate::stats::detrend_columns(m.view_mut(), stages::DETREND_ORDER);
                    cols.push(m);
                }
            }
            if cols.len() < 3 || cols.iter().any(|c| c.nrows() != cols[0].nrows()) {
                continue;
            }
            let views: Vec<_> = cols.iter().map(|c| c.view()).collect();
            let isc = crate::encoding::stats::isc_ceiling(&views)?;
            out.insert((story.clone(), roi.clone()), (isc.ceiling_r()[0], cols.len()));
        }
    }
    Ok(out)
}

pub use crate::report::SummaryRow;

pub fn summary_rows(
    ctx: &Ctx,
    snap: &Snapshot,
    langs: &BTreeMap<String, String>,
) -> Result<(Vec<SummaryRow>, usize, f64)> {
    let ceilings = isc_ceilings(ctx, snap)?;
    let ceiling_of = |story: &str, roi: &str| -> f64 {
        if roi == "all" {
            let v: Vec<f64> = ceilings
                .iter()
                .filter(|((s, _), _)| s == story)
                .map(|(_, (c, _))| *c)
                .collect();
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        } else {
            ceilings
                .get(&(story.to_string(), roi.to_string()))
                .map_or(f64::NAN, |c| c.0)
        }
    };
    let mut rows = Vec::new();
    let (mut n_boot, mut level) = (0, f64::NAN);
    for (k, id) in &snap.summaries {
        let (story, layer, set) = (&k.story, &k.layer, &k.feature_set);
        let s: SummaryRecord = ctx.store.load_json("summary", id)?;
        n_boot = s.n_boot;
        level = s.ci_level;
        for j in 0..s.roi.len() {
            rows.push(SummaryRow {
                story: story.clone(),
                language: language_of(langs, story),
                layer: *layer,
                feature_set: set.clone(),
                roi: s.roi[j].clone(),
                mean_r: s.mean_r[j],
                ci_lower: s.ci_lower[j],
                ci_upper: s.ci_upper[j],
                t_ci_lower: s.t_ci_lower[j],
                t_ci_upper: s.t_ci_upper[j],
                n_subjects: s.n_subjects[j],
                ceiling_r: ceiling_of(story, &s.roi[j]),
            });
        }
    }
    Ok((rows, n_boot, level))
}

pub fn summary_batch(rows: &[SummaryRow], n_boot: usize, level: f64) -> Result<RecordBatch> {
    let n = rows.len();
    batch(vec![
        ("story", utf8(rows.iter().map(|r| r.story.clone()).collect()), false),
        (
            "language",
            utf8(rows.iter().map(|r| r.language.clone()).collect()),
            false,
        ),
        (
            "layer",
            Arc::new(UInt16Array::from_iter_values(rows.iter().map(|r| r.layer as u16))),
            false,
        ),
        (
            "feature_set",
            utf8(rows.iter().map(|r| r.feature_set.to_string()).collect()),
            false,
        ),
        ("roi", utf8(rows.iter().map(|r| r.roi.clone()).collect()), false),
        (
            "mean_r",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| finite(r.mean_r)))),
            true,
        ),
        (
            "ci_lower",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| finite(r.ci_lower)))),
            true,
        ),
        (
            "ci_upper",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| finite(r.ci_upper)))),
            true,
        ),
        (
            "t_ci_lower",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| finite(r.t_ci_lower)))),
            true,
        ),
        (
            "t_ci_upper",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| finite(r.t_ci_upper)))),
            true,
        ),
        (
            "n_subjects",
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.n_subjects as u32))),
            false,
        ),
        (
            "ceiling_r",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| finite(r.ceiling_r)))),
            true,
        ),
        (
            "r_normalized",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| {
                if r.ceiling_r > 0.0 {
                    finite(r.mean_r / r.ceiling_r)
                } else {
                    None
                }
            }))),
            true,
        ),
        ("n_boot", Arc::new(UInt32Array::from(vec![n_boot as u32; n])), false),
        ("ci_level", Arc::new(Float64Array::from(vec![level; n])), false),
    ])
}

pub fn sae_quality_batch(ctx: &Ctx, snap: &Snapshot) -> Result<RecordBatch> {
    let recs = crate::report::sae_records(ctx, snap)?;
    let u32s = |f: &dyn Fn(&stages::SaeRecord) -> usize| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(recs.iter().map(|r| f(r) as u32)))
    };
    let f64s = |f: &dyn Fn(&stages::SaeRecord) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(recs.iter().map(f)))
    };
    batch(vec![
        (
            "language",
            utf8(recs.iter().map(|r| r.language.clone()).collect()),
            false,
        ),
        (
            "layer",
            Arc::new(UInt16Array::from_iter_values(recs.iter().map(|r| r.layer as u16))),
            false,
        ),
        ("d_in", u32s(&|r| r.d_in), false),
        ("d_sae", u32s(&|r| r.d_sae), false),
        ("n_train", u32s(&|r| r.n_train), false),
        ("n_heldout", u32s(&|r| r.n_heldout), false),
        ("r2", f64s(&|r| r.r2), false),
        ("fvu", f64s(&|r| r.fvu), false),
        ("mean_l0", f64s(&|r| r.mean_l0), false),
        ("dead_fraction", f64s(&|r| r.dead_fraction), false),
        ("dense_fraction", f64s(&|r| r.dense_fraction), false),
        (
            "training",
            utf8(recs.iter().map(|r| r.training.clone()).collect()),
            false,
        ),
        (
            "r2_stimulus",
            Arc::new(Float64Array::from_iter(recs.iter().map(|r| r.stimulus_r2))),
            true,
        ),
        (
            "stimulus_in_training",
            Arc::new(BooleanArray::from_iter(
                recs.iter().map(|r| Some(r.stimulus_in_training)),
            )),
            false,
        ),
    ])
}
