//! The `feature_region_weights` table: each labelled SAE feature's weight in the encoding model
//! of its layer's full SAE design (feature set `sae`), per ROI, averaged over the (subject, story)
//! fits. This is what a feature card of `report.html` shows as the feature's region weights.
//!
//! The weights are standardised ridge coefficients (design columns and responses z-scored with
//! each outer fold's training statistics), averaged over outer folds at each ROI's r-chosen α
//! and summed over the FIR delays of a delayed design ([`crate::stages::fit_stage`]). With
//! thousands of correlated columns and a few hundred TRs, ridge spreads weight over correlated
//! features: read a weight as the feature's share in that fitted model, not as a test of it.
//!
//! May import: [`super::columns`], `stages`, `dataflow` (the snapshot) and what they import.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Float64Array, UInt16Array, UInt32Array};
use arrow::record_batch::RecordBatch;

use super::columns::{batch, language_of, utf8};
use crate::dataflow::Snapshot;
use crate::features::FeatureSet;
use crate::stages::taxonomy::LayerLabels;
use crate::stages::{fit_weights_id, Ctx, FIT_WEIGHTS};
use crate::{Error, Result};

/// Running moments of one (language, layer)'s weights, per ROI and feature: Welford's mean and
/// sum of squared deviations, and the count.
#[derive(Default)]
struct Acc {
    rois: Vec<String>,
    mean: Vec<Vec<f64>>,
    m2: Vec<Vec<f64>>,
    n: Vec<Vec<u32>>,
}

/// The table: one row per (language, layer, labelled feature, ROI), in that order (features
/// ascending, ROIs in the response table's order). `regions`: ROI → region (`[taxonomy]
/// regions`); `langs`: story → language.
pub fn region_weights_batch(
    ctx: &Ctx,
    snap: &Snapshot,
    labels: &[LayerLabels],
    regions: &BTreeMap<String, String>,
    langs: &BTreeMap<String, String>,
) -> Result<RecordBatch> {
    let mut acc: BTreeMap<(String, usize), Acc> = BTreeMap::new();
    for (k, id) in &snap.fits {
        if k.feature_set != FeatureSet::Sae {
            continue;
        }
        let a = ctx.store.load_arrays(FIT_WEIGHTS, &fit_weights_id(id))?;
        let w = a.f64("w")?;
        let rois: Vec<String> = a
            .meta
            .get("rois")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        if rois.len() != w.ncols() {
            return Err(Error::Invalid(format!(
                "fit weights {id}: {} columns but {} ROI names",
                w.ncols(),
                rois.len()
            )));
        }
        let e = acc.entry((language_of(langs, &k.story), k.layer)).or_default();
        if e.rois.is_empty() {
            e.rois = rois.clone();
            e.mean = vec![vec![0.0; w.nrows()]; rois.len()];
            e.m2 = e.mean.clone();
            e.n = vec![vec![0; w.nrows()]; rois.len()];
        }
        if e.rois != rois || e.mean[0].len() != w.nrows() {
            return Err(Error::Invalid(format!(
                "fit weights of subject `{}`, story `{}`, layer {}: ROIs {rois:?} × {} features, \
                 but other fits of the layer have {:?} × {}",
                k.subject,
                k.story,
                k.layer,
                w.nrows(),
                e.rois,
                e.mean[0].len()
            )));
        }
        for (j, col) in w.columns().into_iter().enumerate() {
            for (f, &v) in col.iter().enumerate() {
                if v.is_finite() {
                    e.n[j][f] += 1;
                    let d = v - e.mean[j][f];
                    e.mean[j][f] += d / f64::from(e.n[j][f]);
                    e.m2[j][f] += d * (v - e.mean[j][f]);
                }
            }
        }
    }
    let (mut language, mut layer, mut feature, mut roi, mut region) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut mean, mut sd, mut n_fits) = (vec![], vec![], vec![]);
    for ll in labels {
        let Some(e) = acc.get(&(ll.language.clone(), ll.layer)) else {
            continue;
        };
        let features: BTreeSet<u32> = ll.used().labels.iter().map(|l| l.feature).collect();
        for &f in &features {
            let fi = f as usize;
            if fi >= e.mean[0].len() {
                return Err(Error::Invalid(format!(
                    "feature {f} of layer {} is labelled but the layer's SAE design has {} features",
                    ll.layer,
                    e.mean[0].len()
                )));
            }
            for (j, name) in e.rois.iter().enumerate() {
                let n = e.n[j][fi];
                language.push(ll.language.clone());
                layer.push(ll.layer as u16);
                feature.push(f);
                roi.push(name.clone());
                region.push(regions.get(name).cloned());
                n_fits.push(n);
                if n == 0 {
                    mean.push(None);
                    sd.push(None);
                    continue;
                }
                mean.push(Some(e.mean[j][fi]));
                sd.push((n >= 2).then(|| (e.m2[j][fi] / f64::from(n - 1)).sqrt()));
            }
        }
    }
    batch(vec![
        ("language", utf8(language), false),
        ("layer", Arc::new(UInt16Array::from(layer)), false),
        ("feature", Arc::new(UInt32Array::from(feature)), false),
        ("roi", utf8(roi), false),
        ("region", Arc::new(arrow::array::StringArray::from(region)), true),
        ("weight", Arc::new(Float64Array::from(mean)), true),
        ("weight_sd", Arc::new(Float64Array::from(sd)), true),
        ("n_fits", Arc::new(UInt32Array::from(n_fits)), false),
    ])
}
