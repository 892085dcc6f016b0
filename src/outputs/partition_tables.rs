//! Tables of the variance partition by category (METHOD.md §5) and of the prediction-error
//! features (METHOD.md §9), from the final snapshot. Row orders are deterministic.
//!
//! - `variance_partition`: one row per (story, layer, subject, ROI, measure, group): held-out R²
//!   of the full SAE design (`full`), each category's unique R² (`unique`), the shared rest
//!   (`shared`) and each category's exact Shapley value (`shapley`).
//! - `variance_partition_summary`: the same per (story, layer, measure, group) averaged over
//!   ROIs within subject, then over subjects, with a percentile-bootstrap CI over subjects.
//! - `prediction_error`: per (story, layer): the alignment with layer ℓ − Δ and Δr of raw + ε
//!   over raw, paired over subjects (the `raw+pred-error` row of the baselines table).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, UInt16Array, UInt32Array};
use arrow::record_batch::RecordBatch;

use super::columns::{batch, f64s, finite as fin, utf8};
use super::rows::BaselineRow;
use crate::dataflow::Snapshot;
use crate::features::FeatureSet;
use crate::stages::taxonomy::{PartitionRecord, PredErrorRecord, PRED_ERROR_SETS};
use crate::stages::Ctx;
use crate::stats::paired::{paired_comparison, PairedComparison};
use crate::Result;

fn u32s(v: Vec<u32>) -> ArrayRef {
    Arc::new(UInt32Array::from(v))
}
fn u16s(v: Vec<u16>) -> ArrayRef {
    Arc::new(UInt16Array::from(v))
}

/// One subject's partition at one (story, layer).
pub struct SubjectPartition {
    pub story: String,
    pub layer: usize,
    pub record: PartitionRecord,
}

pub fn partitions(ctx: &Ctx, snap: &Snapshot) -> Result<Vec<SubjectPartition>> {
    snap.partitions
        .iter()
        .map(|(k, id)| {
            Ok(SubjectPartition {
                story: k.story.clone(),
                layer: k.layer,
                record: ctx.store.load_json("partition", id)?,
            })
        })
        .collect()
}

/// (measure, group, values per ROI, columns of the group).
type Measure<'a> = (&'static str, String, &'a [Option<f64>], Option<usize>);

/// The measures of one record, in table order.
fn measures(r: &PartitionRecord) -> Vec<Measure<'_>> {
    let mut out: Vec<Measure<'_>> = vec![("full", "all".into(), &r.r2_full, Some(r.n_columns.iter().sum()))];
    for (g, name) in r.groups.iter().enumerate() {
        out.push(("unique", name.clone(), &r.unique[g], Some(r.n_columns[g])));
    }
    out.push(("shared", "shared".into(), &r.shared, None));
    if let Some(sh) = &r.shapley {
        for (g, name) in r.groups.iter().enumerate() {
            out.push(("shapley", name.clone(), &sh[g], Some(r.n_columns[g])));
        }
    }
    out
}

pub fn partition_batch(parts: &[SubjectPartition]) -> Result<RecordBatch> {
    let (mut story, mut layer, mut subject, mut roi, mut measure, mut group) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut r2, mut n_cols, mut n_fits, mut n_trs) = (vec![], vec![], vec![], vec![]);
    for p in parts {
        for (m, g, vals, cols) in measures(&p.record) {
            for (j, name) in p.record.rois.iter().enumerate() {
                story.push(p.story.clone());
                layer.push(p.layer as u16);
                subject.push(p.record.subject.clone());
                roi.push(name.clone());
                measure.push(m.to_string());
                group.push(g.clone());
                r2.push(vals[j]);
                n_cols.push(cols.map(|c| c as u32));
                n_fits.push(p.record.n_fits as u32);
                n_trs.push(p.record.n_trs as u32);
            }
        }
    }
    batch(vec![
        ("story", utf8(story), false),
        ("layer", u16s(layer), false),
        ("subject", utf8(subject), false),
        ("roi", utf8(roi), false),
        ("measure", utf8(measure), false),
        ("group", utf8(group), false),
        ("r2", f64s(r2), true),
        ("n_columns", Arc::new(UInt32Array::from(n_cols)), true),
        ("n_fits", u32s(n_fits), false),
        ("n_trs", u32s(n_trs), false),
    ])
}

/// One row of the partition summary.
pub struct PartitionSummaryRow {
    pub story: String,
    pub layer: usize,
    pub measure: String,
    pub group: String,
    pub n_columns: Option<usize>,
    pub mean: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
    pub n_subjects: usize,
}

pub fn partition_summary(ctx: &Ctx, parts: &[SubjectPartition]) -> Vec<PartitionSummaryRow> {
    let s = &ctx.plan.file.summary;
    // (story, layer, order, measure, group) → (columns, per-subject ROI means)
    type Key = (String, usize, usize, &'static str, String);
    let mut acc: BTreeMap<Key, (Option<usize>, Vec<f64>)> = BTreeMap::new();
    for p in parts {
        for (order, (m, g, vals, cols)) in measures(&p.record).into_iter().enumerate() {
            let v: Vec<f64> = vals.iter().flatten().copied().collect();
            if v.is_empty() {
                continue;
            }
            let e = acc
                .entry((p.story.clone(), p.layer, order, m, g))
                .or_insert((cols, vec![]));
            e.1.push(v.iter().sum::<f64>() / v.len() as f64);
        }
    }
    acc.into_iter()
        .map(|((story, layer, _, measure, group), (cols, v))| {
            let ci = crate::stats::bootstrap_mean_ci(&v, s.n_boot, s.ci_level, s.seed);
            PartitionSummaryRow {
                story,
                layer,
                measure: measure.into(),
                group,
                n_columns: cols,
                mean: ci.estimate,
                ci_lower: ci.lower,
                ci_upper: ci.upper,
                n_subjects: v.len(),
            }
        })
        .collect()
}

pub fn partition_summary_batch(rows: &[PartitionSummaryRow]) -> Result<RecordBatch> {
    batch(vec![
        ("story", utf8(rows.iter().map(|r| r.story.clone()).collect()), false),
        ("layer", u16s(rows.iter().map(|r| r.layer as u16).collect()), false),
        ("measure", utf8(rows.iter().map(|r| r.measure.clone()).collect()), false),
        ("group", utf8(rows.iter().map(|r| r.group.clone()).collect()), false),
        (
            "n_columns",
            Arc::new(UInt32Array::from(
                rows.iter().map(|r| r.n_columns.map(|c| c as u32)).collect::<Vec<_>>(),
            )),
            true,
        ),
        ("mean_r2", f64s(rows.iter().map(|r| fin(r.mean)).collect()), true),
        ("ci_lower", f64s(rows.iter().map(|r| fin(r.ci_lower)).collect()), true),
        ("ci_upper", f64s(rows.iter().map(|r| fin(r.ci_upper)).collect()), true),
        (
            "n_subjects",
            u32s(rows.iter().map(|r| r.n_subjects as u32).collect()),
            false,
        ),
        (
            "unit",
            utf8(
                rows.iter()
                    .map(|_| "subjects (each subject's R² averaged over its ROIs first)".to_string())
                    .collect(),
            ),
            false,
        ),
    ])
}

/// One (story, layer) of the prediction-error analysis with its tests.
pub struct PredErrorRow<'a> {
    pub record: PredErrorRecord,
    pub combined: Option<&'a BaselineRow>,
    pub raw_mean_r: Option<f64>,
    /// The paper's comparison and its controls (METHOD.md §9), each against `sae:semantic`:
    /// `pe:semantic+error`, `pe:semantic+shuffled-error`, `pe:semantic+earlier`.
    pub semantic_mean_r: Option<f64>,
    pub pe_sets: [Option<&'a BaselineRow>; 3],
    /// `pe:semantic+error` against each control, paired over subjects: the Δr that more columns
    /// alone cannot give.
    pub error_vs_shuffled: Option<PairedComparison>,
    pub error_vs_earlier: Option<PairedComparison>,
}

/// `by_set`: (story, layer, set) → subject → (r, R²) of every fit.
pub fn pred_error_rows<'a>(
    ctx: &Ctx,
    snap: &Snapshot,
    baselines: &'a [BaselineRow],
    by_set: &BTreeMap<(String, usize, String), BTreeMap<String, (f64, f64)>>,
) -> Result<Vec<PredErrorRow<'a>>> {
    let sm = &ctx.plan.file.summary;
    let n_perm = ctx.plan.file.taxonomy.as_ref().map_or(1000, |t| t.permutations);
    snap.pred_errors
        .iter()
        .map(|(k, id)| {
            let (story, layer) = (&k.story, &k.layer);
            let record: PredErrorRecord = ctx.store.load_json("pred-error-record", id)?;
            let find = |set: &str| {
                baselines
                    .iter()
                    .find(|b| b.story == *story && b.layer == *layer && b.feature_set == set)
            };
            let subjects = |set: &str| by_set.get(&(story.clone(), *layer, set.to_string()));
            // paired over the subjects with a finite r on both sides; none under 3
            let compare = |a: &str, b: &str| -> Option<PairedComparison> {
                let (a, b) = (subjects(a)?, subjects(b)?);
                let common: Vec<(f64, f64)> = a
                    .iter()
                    .filter_map(|(s, (ra, _))| b.get(s).map(|(rb, _)| (*ra, *rb)))
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect();
                (common.len() >= 3).then(|| {
                    let (x, y): (Vec<f64>, Vec<f64>) = common.into_iter().unzip();
                    paired_comparison(&x, &y, n_perm, sm.n_boot, sm.ci_level, sm.seed)
                })
            };
            let [error, shuffled, earlier] = PRED_ERROR_SETS;
            Ok(PredErrorRow {
                record,
                combined: find(FeatureSet::RawPredError.as_str()),
                raw_mean_r: find(FeatureSet::Raw.as_str()).map(|b| b.mean_r),
                semantic_mean_r: find("sae:semantic").map(|b| b.mean_r),
                pe_sets: PRED_ERROR_SETS.map(find),
                error_vs_shuffled: compare(error, shuffled),
                error_vs_earlier: compare(error, earlier),
            })
        })
        .collect()
}

pub fn pred_error_batch(rows: &[PredErrorRow<'_>]) -> Result<RecordBatch> {
    let rec = |f: &dyn Fn(&PredErrorRecord) -> f64| f64s(rows.iter().map(|r| fin(f(&r.record))).collect());
    let cnt = |f: &dyn Fn(&PredErrorRecord) -> usize| u32s(rows.iter().map(|r| f(&r.record) as u32).collect());
    let pe_mean = |i: usize| f64s(rows.iter().map(|r| r.pe_sets[i].and_then(|b| fin(b.mean_r))).collect());
    let pe_test = |i: usize, f: &dyn Fn(&PairedComparison) -> f64| {
        f64s(
            rows.iter()
                .map(|r| r.pe_sets[i].and_then(|b| b.test.as_ref()).and_then(|t| fin(f(t))))
                .collect(),
        )
    };
    // ε against a control: 0 the shuffled alignment, 1 the earlier codes
    let direct = |control: usize, f: &dyn Fn(&PairedComparison) -> f64| {
        f64s(
            rows.iter()
                .map(|r| {
                    let c = if control == 0 {
                        &r.error_vs_shuffled
                    } else {
                        &r.error_vs_earlier
                    };
                    c.as_ref().and_then(|t| fin(f(t)))
                })
                .collect(),
        )
    };
    let test = |f: &dyn Fn(&PairedComparison) -> f64| {
        f64s(
            rows.iter()
                .map(|r| r.combined.and_then(|b| b.test.as_ref()).and_then(|t| fin(f(t))))
                .collect(),
        )
    };
    batch(vec![
        (
            "story",
            utf8(rows.iter().map(|r| r.record.story.clone()).collect()),
            false,
        ),
        (
            "layer",
            u16s(rows.iter().map(|r| r.record.layer as u16).collect()),
            false,
        ),
        (
            "from_layer",
            u16s(rows.iter().map(|r| r.record.from_layer as u16).collect()),
            false,
        ),
        ("n_words", cnt(&|r| r.n_words), false),
        ("n_features", cnt(&|r| r.n_features), false),
        ("n_features_from", cnt(&|r| r.n_features_from), false),
        ("n_distinct_matches", cnt(&|r| r.n_distinct_matches), false),
        ("identity_share", rec(&|r| r.identity_share), true),
        ("cosine_median", rec(&|r| r.cosine_median), true),
        ("cosine_p10", rec(&|r| r.cosine_p10), true),
        ("cosine_p90", rec(&|r| r.cosine_p90), true),
        ("prediction_r2_median", rec(&|r| r.r2_median), true),
        ("n_raw_columns", cnt(&|r| r.n_raw_columns), false),
        ("n_error_columns", cnt(&|r| r.n_error_columns), false),
        (
            "mean_r_raw",
            f64s(rows.iter().map(|r| r.raw_mean_r.and_then(fin)).collect()),
            true,
        ),
        (
            "mean_r_raw_error",
            f64s(rows.iter().map(|r| r.combined.and_then(|b| fin(b.mean_r))).collect()),
            true,
        ),
        ("delta_r", test(&|t| t.mean_diff), true),
        ("delta_ci_lower", test(&|t| t.ci_lower), true),
        ("delta_ci_upper", test(&|t| t.ci_upper), true),
        ("t", test(&|t| t.t), true),
        ("df", test(&|t| t.df), true),
        ("p_t", test(&|t| t.p_t), true),
        ("p_signflip", test(&|t| t.p_signflip), true),
        ("cohens_dz", test(&|t| t.cohens_dz), true),
        (
            "n_subjects",
            u32s(
                rows.iter()
                    .map(|r| r.combined.and_then(|b| b.test.as_ref()).map_or(0, |t| t.n as u32))
                    .collect(),
            ),
            false,
        ),
        (
            "mean_r_semantic",
            f64s(rows.iter().map(|r| r.semantic_mean_r.and_then(fin)).collect()),
            true,
        ),
        ("mean_r_semantic_error", pe_mean(0), true),
        ("mean_r_semantic_shuffled_error", pe_mean(1), true),
        ("mean_r_semantic_earlier", pe_mean(2), true),
        ("delta_r_semantic_error", pe_test(0, &|t| t.mean_diff), true),
        ("delta_r_semantic_error_p_t", pe_test(0, &|t| t.p_t), true),
        ("delta_r_shuffled_control", pe_test(1, &|t| t.mean_diff), true),
        ("delta_r_earlier_control", pe_test(2, &|t| t.mean_diff), true),
        ("delta_r_error_vs_shuffled", direct(0, &|t| t.mean_diff), true),
        ("error_vs_shuffled_ci_lower", direct(0, &|t| t.ci_lower), true),
        ("error_vs_shuffled_ci_upper", direct(0, &|t| t.ci_upper), true),
        ("error_vs_shuffled_p_t", direct(0, &|t| t.p_t), true),
        ("error_vs_shuffled_p_signflip", direct(0, &|t| t.p_signflip), true),
        ("delta_r_error_vs_earlier", direct(1, &|t| t.mean_diff), true),
        ("error_vs_earlier_p_t", direct(1, &|t| t.p_t), true),
    ])
}

/// The report's sections on the partition and the prediction-error features (Markdown).
pub fn markdown(summary: &[PartitionSummaryRow], pe: &[PredErrorRow<'_>]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if !summary.is_empty() {
        let _ = writeln!(
            s,
            "## Variance partition by category (METHOD.md §5)\n\nHeld-out R² of nested-CV ridge on the SAE design restricted to categories (α per ROI by inner-CV R²). unique(c) = R²(all) − R²(all ∖ c); shared = R²(all) − Σ unique; Shapley: exact, over all subsets of the categories. Mean over subjects of each subject's mean over ROIs, with a percentile-bootstrap 95% CI over subjects (`variance_partition.parquet` has every subject and ROI).\n\n| layer | measure | group | columns | mean R² | 95% CI | subjects |\n|---|---|---|---|---|---|---|"
        );
        for r in summary {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.5} | [{:.5}, {:.5}] | {} |",
                r.layer,
                r.measure,
                r.group,
                r.n_columns.map_or("–".into(), |c| c.to_string()),
                r.mean,
                r.ci_lower,
                r.ci_upper,
                r.n_subjects
            );
        }
        let _ = writeln!(s);
    }
    if !pe.is_empty() {
        let _ = writeln!(
            s,
            "## Prediction-error features (METHOD.md §9, exploratory)\n\nEach layer-ℓ feature is matched with the layer-(ℓ − Δ) feature of highest decoder cosine; ε = f − (α f_match + β) by least squares over the story's words; the raw activations plus ε are encoded and compared with the raw activations alone (paired over subjects; Δr with a bootstrap CI, paired t, sign flips). \"Same index\" near 100% means the two SAEs share their initialisation and their decoders barely moved, so the alignment is not informative.\n\n| layer | from | features | cosine median [p10, p90] | distinct matches | same index | median R² of the prediction | r raw | r raw + ε | Δr | 95% CI | t (df) | p_t | p_flip | d_z |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in pe {
            let p = &r.record;
            let t = r.combined.and_then(|b| b.test.as_ref());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.3} [{:.3}, {:.3}] | {} of {} | {:.1}% | {:.3} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.layer,
                p.from_layer,
                p.n_features,
                p.cosine_median,
                p.cosine_p10,
                p.cosine_p90,
                p.n_distinct_matches,
                p.n_features_from,
                100.0 * p.identity_share,
                p.r2_median,
                r.raw_mean_r.map_or("–".into(), |v| format!("{v:.4}")),
                r.combined.map_or("–".into(), |b| format!("{:.4}", b.mean_r)),
                t.map_or("–".into(), |t| format!("{:+.4}", t.mean_diff)),
                t.map_or("–".into(), |t| format!("[{:+.4}, {:+.4}]", t.ci_lower, t.ci_upper)),
                t.map_or("–".into(), |t| format!("{:.2} ({})", t.t, t.df)),
                t.map_or("–".into(), |t| format!("{:.2e}", t.p_t)),
                t.map_or("–".into(), |t| format!("{:.4}", t.p_signflip)),
                t.map_or("–".into(), |t| format!("{:.2}", t.cohens_dz)),
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "The paper's definition: the semantic set's codes plus their ε, against the semantic codes alone, beside two controls of the same width: ε against a shuffled alignment (the matches sent through a seeded permutation of all earlier features), and the matched earlier codes unresidualised. A Δr that the controls also show is the gain of more columns; the last columns test ε against each control directly (paired over subjects).\n\n| layer | r semantic | Δr +ε | Δr +shuffled ε | Δr +earlier codes | ε − shuffled [95% CI] | p_t | p_flip | ε − earlier | p_t |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:+.4}"));
        for r in pe {
            let d = |i: usize| r.pe_sets[i].and_then(|b| b.test.as_ref()).map(|t| t.mean_diff);
            let (vs, ve) = (r.error_vs_shuffled.as_ref(), r.error_vs_earlier.as_ref());
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.record.layer,
                r.semantic_mean_r.map_or("–".into(), |v| format!("{v:.4}")),
                f(d(0)),
                f(d(1)),
                f(d(2)),
                vs.map_or("–".into(), |t| format!(
                    "{:+.4} [{:+.4}, {:+.4}]",
                    t.mean_diff, t.ci_lower, t.ci_upper
                )),
                vs.map_or("–".into(), |t| format!("{:.2e}", t.p_t)),
                vs.map_or("–".into(), |t| format!("{:.4}", t.p_signflip)),
                f(ve.map(|t| t.mean_diff)),
                ve.map_or("–".into(), |t| format!("{:.2e}", t.p_t)),
            );
        }
        let _ = writeln!(s);
    }
    s
}
