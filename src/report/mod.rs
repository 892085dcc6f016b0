//! Plots (PNG) and the Markdown run report.
//!
//! Text in plots uses DejaVu Sans from the system (Debian's fonts-dejavu-core); set
//! `CORTEXFLOW_FONT` to another TTF. Without a font the plot is drawn without labels and a
//! warning says so.
//!
//! May import: `dataflow` (the snapshot), `stages` (artifact readers) and everything below;
//! never `outputs`, `pipeline` or `cli`.

pub mod html;

use std::fmt::Write;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::dataflow::Snapshot;
use crate::features::FeatureSet;
use crate::stages::{self, Ctx};
use crate::{Error, Result};

/// One summary row, for the plot and the report.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub story: String,
    pub language: String,
    pub layer: usize,
    pub feature_set: FeatureSet,
    pub roi: String,
    pub mean_r: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
    /// Student-t CI of the mean over subjects.
    pub t_ci_lower: f64,
    pub t_ci_upper: f64,
    pub n_subjects: usize,
    /// ISC noise ceiling of r ([`crate::outputs::tables::isc_ceilings`]; for "all", the mean over the ROIs with one).
    pub ceiling_r: f64,
}

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a sans-serif font once; false when none is available.
fn ensure_font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let env = std::env::var("CORTEXFLOW_FONT").ok();
        let candidates = env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied());
        for c in candidates {
            if let Ok(bytes) = std::fs::read(c) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TTF font found (install fonts-dejavu-core or set CORTEXFLOW_FONT): plots have no labels");
        false
    })
}

fn perr(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |m| Error::Write {
        path: path.to_path_buf(),
        message: format!("plot: {m}"),
    }
}

/// Mean held-out r (roi = "all") by layer, one line per feature set, with CI whiskers.
pub fn plot_r_by_layer(rows: &[SummaryRow], path: &Path) -> Result<()> {
    // the three whole-layer sets; taxonomy subsets have their own plots
    let rows: Vec<&SummaryRow> = rows
        .iter()
        .filter(|r| {
            r.roi == "all"
                && r.mean_r.is_finite()
                && matches!(r.feature_set, FeatureSet::Raw | FeatureSet::Sae | FeatureSet::SaeRecon)
        })
        .collect();
    let with_text = ensure_font();
    let tmp = crate::paths::temp_sibling(path).with_extension("png");
    let e = perr(path);
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let max_layer = rows.iter().map(|r| r.layer).max().unwrap_or(1).max(1);
        let lo = rows
            .iter()
            .map(|r| r.ci_lower.min(r.mean_r))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::min);
        let hi = rows
            .iter()
            .map(|r| r.ci_upper.max(r.mean_r))
            .filter(|v| v.is_finite())
            .fold(0.05f64, f64::max);
        let pad = 0.1 * (hi - lo);
        let mut builder = ChartBuilder::on(&root);
        builder.margin(20);
        if with_text {
            builder.caption(
                "Held-out encoding r by layer (mean over subjects, bootstrap 95% CI)",
                ("sans-serif", 20),
            );
            builder.x_label_area_size(45).y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(-0.5f64..(max_layer as f64 + 0.5), (lo - pad)..(hi + pad))
            .map_err(|x| e(x.to_string()))?;
        if with_text {
            chart
                .configure_mesh()
                .x_desc("layer (0 = embeddings)")
                .y_desc("Pearson r")
                .draw()
                .map_err(|x| e(x.to_string()))?;
        }
        let mut sets: Vec<&FeatureSet> = rows.iter().map(|r| &r.feature_set).collect();
        sets.sort();
        sets.dedup();
        for (i, set) in sets.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let offset = (i as f64 - (sets.len() as f64 - 1.0) / 2.0) * 0.15;
            let mut pts: Vec<(f64, f64, f64, f64)> = rows
                .iter()
                .filter(|r| r.feature_set == **set)
                .map(|r| (r.layer as f64 + offset, r.mean_r, r.ci_lower, r.ci_upper))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let series = chart
                .draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))
                .map_err(|x| e(x.to_string()))?;
            if with_text {
                let label = match set {
                    FeatureSet::Sae => "SAE codes",
                    FeatureSet::SaeRecon => "SAE reconstructions",
                    _ => "raw activations",
                };
                series
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            chart
                .draw_series(pts.iter().filter(|p| p.2.is_finite() && p.3.is_finite()).flat_map(|p| {
                    // whisker from the CI's lower to upper bound, with caps
                    let (x, w) = (p.0, 0.08);
                    [
                        PathElement::new(vec![(x, p.2), (x, p.3)], color.stroke_width(1)),
                        PathElement::new(vec![(x - w, p.2), (x + w, p.2)], color.stroke_width(1)),
                        PathElement::new(vec![(x - w, p.3), (x + w, p.3)], color.stroke_width(1)),
                    ]
                }))
                .map_err(|x| e(x.to_string()))?;
            chart
                .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, color.filled())))
                .map_err(|x| e(x.to_string()))?;
        }
        if with_text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|x| e(x.to_string()))?;
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|x| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, x)
    })
}

/// The Markdown run report: what was run, the r-by-layer table, SAE quality, stage counts.
pub fn markdown(ctx: &Ctx, snap: &Snapshot, rows: &[SummaryRow]) -> Result<String> {
    let plan = &ctx.plan;
    let mut s = String::new();
    let _ = writeln!(s, "# cortexflow run: {}\n", plan.file.name);
    let _ = writeln!(
        s,
        "Pipeline `{}`; {} subject(s); layers {:?}; feature sets {:?}; pooling `{}`.\n",
        plan.source.display(),
        snap.responses
            .iter()
            .map(|(k, _)| &k.subject)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        plan.layers,
        plan.file.encoding.feature_sets,
        plan.file.model.pooling
    );
    let _ = writeln!(
        s,
        "How each number relates to the paper's (the setting, the column, every known departure): \
         FIDELITY.md in the cortexflow repository.\n"
    );
    if plan.file.fmri.is_none() {
        let _ = writeln!(
            s,
            "No [fmri] section: no responses, so the run stops at the design matrices ({} stories × {} layers × {} feature sets, in the store `{}`). Stories: {}.\n",
            plan.stories.len(),
            plan.layers.len(),
            plan.file.encoding.feature_sets.len(),
            plan.store.display(),
            plan.stories
                .iter()
                .map(|(c, st)| format!("`{}` ({}, {} words, {} TRs)", c.id, st.language, st.words.len(), c.n_trs))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut excluded: Vec<String> = Vec::new();
    for (k, id) in &snap.responses {
        let subject = &k.subject;
        let t = crate::stages::load_roi(&ctx.store, id)?;
        excluded.extend(t.constant.iter().map(|r| format!("{subject}/{r}")));
    }
    excluded.sort();
    excluded.dedup();
    if !excluded.is_empty() {
        let _ = writeln!(s, "Constant ROI columns excluded: {}.\n", excluded.join(", "));
    }
    let e = &plan.file.encoding;
    let alignment = match e.alignment.as_str() {
        "lanczos-fir" => format!(
            "Lanczos downsampling (window {}) of word features to TR midpoints, detrended and z-scored, then FIR \
             delays {:?} TRs",
            e.lanczos_window, e.fir_delays
        ),
        _ => "word features convolved with the canonical HRF and averaged within each TR, detrended and z-scored"
            .to_string(),
    };
    let _ = writeln!(s, "Alignment: {alignment}.\n");
    let _ = writeln!(
        s,
        "Encoding: ridge, α ∈ 10^[{}, {}] ({} values) chosen per ROI by {}-fold inner block CV; {} outer contiguous \
         blocks with {} TRs excluded on each side of every test block; r = mean over outer folds of the Pearson r \
         on each fold's held-out TRs, its p from block permutations within the folds; R² from fits whose α was \
         chosen by inner-CV R². CIs over subjects: percentile bootstrap ({} resamples) and Student t.\n",
        e.alpha_min_exp, e.alpha_max_exp, e.n_alphas, e.inner_folds, e.outer_folds, e.gap_trs, plan.file.summary.n_boot
    );
    let _ = writeln!(
        s,
        "## Mean held-out r by layer (all ROIs)\n\n![r by layer](r_by_layer.png)\n"
    );
    let _ = writeln!(
        s,
        "| layer | feature set | mean r | bootstrap CI | t CI | subjects | r / ceiling |\n|---|---|---|---|---|---|---|"
    );
    for r in rows.iter().filter(|r| r.roi == "all") {
        let _ = writeln!(
            s,
            "| {} | {} | {:.4} | [{:.4}, {:.4}] | [{:.4}, {:.4}] | {} | {:.3} |",
            r.layer,
            r.feature_set,
            r.mean_r,
            r.ci_lower,
            r.ci_upper,
            r.t_ci_lower,
            r.t_ci_upper,
            r.n_subjects,
            r.mean_r / r.ceiling_r
        );
    }
    let mut ceilings: Vec<(&str, f64)> = rows
        .iter()
        .filter(|r| r.roi != "all" && r.ceiling_r.is_finite())
        .map(|r| (r.roi.as_str(), r.ceiling_r))
        .collect();
    ceilings.sort_by(|a, b| a.0.cmp(b.0));
    ceilings.dedup_by(|a, b| a.0 == b.0);
    if !ceilings.is_empty() {
        let list: Vec<String> = ceilings.iter().map(|(roi, c)| format!("{roi} {c:.3}")).collect();
        let _ = writeln!(
            s,
            "\nNoise ceiling of r per ROI (leave-one-subject-out ISC, Spearman–Brown corrected to a single subject): \
             {}. Per-fit R², block-permutation p and BH q-values are in fits.parquet.",
            list.join(", ")
        );
    }
    let recon: Vec<&SummaryRow> = rows
        .iter()
        .filter(|r| r.roi == "all" && r.feature_set == FeatureSet::SaeRecon)
        .collect();
    if !recon.is_empty() {
        let _ = writeln!(
            s,
            "\n## SAE reconstructions vs raw activations (METHOD.md §3: the paper finds Δr ≈ 0.01)\n\n\
             | layer | mean r raw | mean r reconstruction | Δr (raw − reconstruction) |\n|---|---|---|---|"
        );
        for rc in recon {
            if let Some(raw) = rows
                .iter()
                .find(|r| r.roi == "all" && r.feature_set == FeatureSet::Raw && r.layer == rc.layer)
            {
                let _ = writeln!(
                    s,
                    "| {} | {:.4} | {:.4} | {:+.4} |",
                    rc.layer,
                    raw.mean_r,
                    rc.mean_r,
                    raw.mean_r - rc.mean_r
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\n## SAE quality (held-out rows)\n\nTrained on: `tokens`, every token of the `[sae] corpus` texts with the \
         last part of each held out (`cortexflow sae train`'s scheme, the default); `words`, word vectors with \
         every k-th held out; `pretrained`, measured on all rows. Stimulus R²: on the stories' words, out of \
         domain unless they were training data.\n\n\
         | SAE | layer | d_sae | trained on | training rows | R² | mean L0 | dead | dense | stimulus R² |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    let mut records = Vec::new();
    for q in sae_records(ctx, snap)? {
        let stim = match (q.stimulus_r2, q.stimulus_in_training) {
            (Some(r2), false) => format!("{r2:.3} (out of domain)"),
            (Some(r2), true) => format!("{r2:.3}"),
            (None, _) => "—".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.3} | {:.1} | {:.3} | {:.3} | {stim} |",
            q.language, q.layer, q.d_sae, q.training, q.n_train, q.r2, q.mean_l0, q.dead_fraction, q.dense_fraction
        );
        records.push((q.language, q.layer, q.r2));
    }
    if let Some(w) = poor_sae_warning(&records, ctx.plan.file.sae.min_r2) {
        let _ = writeln!(s, "\n{w}");
    }
    Ok(s)
}

/// The quality records of a state's SAEs, in the snapshot's order. A token-trained SAE's R² on
/// the stimulus words is filled in here, from the state's stories of its language (the SAE
/// itself does not depend on them; see [`stages::sae_tokens::stimulus_r2`]).
pub fn sae_records(ctx: &Ctx, snap: &Snapshot) -> Result<Vec<stages::SaeRecord>> {
    let recs = snap
        .saes
        .iter()
        .map(|(_, id)| stages::sae_record(ctx, id))
        .collect::<Result<Vec<_>>>()?;
    // each story's language and per-layer activation ids, read once (only token-trained SAEs
    // need them)
    let mut stories: Vec<(String, Vec<(usize, String)>)> = Vec::new();
    if recs.iter().any(|q| q.training == stages::TRAINING_TOKENS) {
        for (_, story_art) in &snap.stories {
            let st: stages::StoredStory = ctx.store.load_json("story", story_art)?;
            let (_, _, lm) = stages::lm_keys(&ctx.plan, &st.story)?;
            stories.push((st.story.language, lm.layers));
        }
    }
    let mut out = Vec::with_capacity(recs.len());
    for ((k, id), mut q) in snap.saes.iter().zip(recs) {
        if q.training == stages::TRAINING_TOKENS {
            let acts: Vec<String> = stories
                .iter()
                .filter(|(language, _)| k.group == *language || k.group == crate::dataflow::SHARED_SAE_GROUP)
                .flat_map(|(_, layers)| layers.iter().filter(|(l, _)| *l == k.layer).map(|(_, a)| a.clone()))
                .collect();
            if let Some((r2, n)) = stages::sae_tokens::stimulus_r2(ctx, id, &acts)? {
                q.stimulus_r2 = Some(r2);
                q.n_stimulus = Some(n);
            }
        }
        out.push(q);
    }
    Ok(out)
}

/// The SAEs of a state (language, layer, held-out R²) under the plan's floor `[sae] min-r2`.
pub fn saes_under_floor(ctx: &Ctx, snap: &Snapshot) -> Result<Vec<(String, usize, f64)>> {
    let mut poor = Vec::new();
    for (_, id) in &snap.saes {
        let q = stages::sae_record(ctx, id)?;
        if crate::sae::metrics::under_floor(q.r2, ctx.plan.file.sae.min_r2) {
            poor.push((q.language, q.layer, q.r2));
        }
    }
    Ok(poor)
}

/// The report's warning about SAEs (language, layer, held-out R²) under the held-out R² floor
/// (`[sae] min-r2`), if any.
pub fn poor_sae_warning(saes: &[(String, usize, f64)], floor: f64) -> Option<String> {
    let poor: Vec<String> = saes
        .iter()
        .filter(|(_, _, r2)| crate::sae::metrics::under_floor(*r2, floor))
        .map(|(language, layer, r2)| format!("{language} layer {layer} (R² {r2:.3})"))
        .collect();
    let one = poor.len() == 1;
    (!poor.is_empty()).then(|| {
        format!(
            "**Warning:** the SAE{} of {} reconstruct{} less than {floor} of the held-out variance \
             (`[sae] min-r2`; the paper's SAEs reach 0.94–0.95), so comparisons of {} features with \
             the raw activations also measure what the dictionary loses. Train longer (`[sae] steps`), \
             on more text (`[sae] corpus`), or with a smaller `[sae] l1`: it acts on inputs scaled to \
             E‖x‖² = d_in, and a residual stream that is mostly a constant offset (Gemma 3's, for one) \
             leaves little variance under that scale.",
            if one { "" } else { "s" },
            poor.join(", "),
            if one { "s" } else { "" },
            if one { "its" } else { "their" },
        )
    })
}

/// Reading-time model comparison by layer: ΔlogLik of the selected SAE features' PCs (line), of
/// random feature subsets (grey min–max bars and mean line) and of a word norm (horizontal line).
pub fn plot_delta_loglik_by_layer(
    sae: &[(usize, f64)],
    random: &std::collections::BTreeMap<usize, Vec<f64>>,
    norm: Option<f64>,
    path: &Path,
) -> Result<()> {
    let with_text = ensure_font();
    let tmp = crate::paths::temp_sibling(path).with_extension("png");
    let e = perr(path);
    let all: Vec<f64> = sae
        .iter()
        .map(|p| p.1)
        .chain(random.values().flatten().copied())
        .chain(norm)
        .filter(|v| v.is_finite())
        .collect();
    let hi = all.iter().copied().fold(1.0f64, f64::max);
    let lo = all.iter().copied().fold(0.0f64, f64::min);
    let pad = 0.08 * (hi - lo);
    let max_layer = sae
        .iter()
        .map(|p| p.0)
        .chain(random.keys().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(20);
        if with_text {
            builder.caption(
                "Reading times: ΔlogLik over the lexical baseline, by layer",
                ("sans-serif", 20),
            );
            builder.x_label_area_size(45).y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(-0.5f64..(max_layer + 0.5), (lo - pad)..(hi + pad))
            .map_err(|x| e(x.to_string()))?;
        if with_text {
            chart
                .configure_mesh()
                .x_desc("layer (0 = embeddings)")
                .y_desc("ΔlogLik (ML)")
                .draw()
                .map_err(|x| e(x.to_string()))?;
        }
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(random.iter().map(|(l, v)| {
                let a = v.iter().copied().fold(f64::INFINITY, f64::min);
                let b = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let x = *l as f64;
                Rectangle::new([(x - 0.25, a), (x + 0.25, b)], RGBColor(215, 215, 215).filled())
            }))
            .map_err(|x| e(x.to_string()))?;
        if !random.is_empty() {
            let s = chart
                .draw_series(LineSeries::new(
                    random
                        .iter()
                        .map(|(l, v)| (*l as f64, v.iter().sum::<f64>() / v.len() as f64)),
                    grey.stroke_width(2),
                ))
                .map_err(|x| e(x.to_string()))?;
            if with_text {
                s.label("random feature subsets, same count (mean; bars: min–max)")
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2)));
            }
        }
        let blue = Palette99::pick(0).to_rgba();
        let s = chart
            .draw_series(LineSeries::new(
                sae.iter().map(|(l, v)| (*l as f64, *v)),
                blue.stroke_width(2),
            ))
            .map_err(|x| e(x.to_string()))?;
        if with_text {
            s.label("selected SAE features (principal components)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
        }
        chart
            .draw_series(sae.iter().map(|(l, v)| Circle::new((*l as f64, *v), 4, blue.filled())))
            .map_err(|x| e(x.to_string()))?;
        if let Some(v) = norm {
            let s = chart
                .draw_series(LineSeries::new(
                    vec![(-0.5, v), (max_layer + 0.5, v)],
                    RED.stroke_width(1),
                ))
                .map_err(|x| e(x.to_string()))?;
            if with_text {
                s.label("word norm")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            }
        }
        if with_text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|x| e(x.to_string()))?;
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|x| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, x)
    })
}

/// Mean held-out r of each feature set of one layer (horizontal bars; semantic highlighted,
/// random families in grey), as `(label, mean r, highlight)`.
pub fn plot_set_bars(title: &str, bars: &[(String, f64, u8)], path: &Path) -> Result<()> {
    let with_text = ensure_font();
    let tmp = crate::paths::temp_sibling(path).with_extension("png");
    let e = perr(path);
    {
        let h = 120 + 26 * bars.len() as u32;
        let root = BitMapBackend::new(&tmp, (900, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let lo = bars
            .iter()
            .map(|b| b.1)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::min);
        let hi = bars
            .iter()
            .map(|b| b.1)
            .filter(|v| v.is_finite())
            .fold(0.05f64, f64::max);
        let mut builder = ChartBuilder::on(&root);
        builder.margin(20);
        if with_text {
            builder.caption(title, ("sans-serif", 18));
            builder.x_label_area_size(40).y_label_area_size(230);
        }
        let n = bars.len();
        let mut chart = builder
            .build_cartesian_2d((lo - 0.01)..(hi * 1.1), (0..n).into_segmented())
            .map_err(|x| e(x.to_string()))?;
        if with_text {
            let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
            chart
                .configure_mesh()
                .disable_y_mesh()
                .x_desc("mean held-out r over subjects")
                .y_labels(n)
                .y_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .draw()
                .map_err(|x| e(x.to_string()))?;
        }
        chart
            .draw_series(bars.iter().enumerate().filter(|(_, b)| b.1.is_finite()).map(|(i, b)| {
                let color = match b.2 {
                    1 => RGBColor(200, 60, 40),
                    2 => RGBColor(150, 150, 150),
                    _ => RGBColor(60, 110, 180),
                };
                Rectangle::new(
                    [(0.0, SegmentValue::Exact(i)), (b.1, SegmentValue::Exact(i + 1))],
                    color.filled(),
                )
            }))
            .map_err(|x| e(x.to_string()))?;
        root.present().map_err(|x| e(x.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|x| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, x)
    })
}

/// Predicted (0/1) and observed subcategory × region matrices side by side as heatmaps (observed:
/// white = its minimum, dark red = its maximum; predicted cells outlined in both panels).
pub fn plot_topography(
    title: &str,
    rows: &[String],
    cols: &[String],
    predicted: ndarray::ArrayView2<'_, f64>,
    observed: ndarray::ArrayView2<'_, f64>,
    path: &Path,
) -> Result<()> {
    let with_text = ensure_font();
    let tmp = crate::paths::temp_sibling(path).with_extension("png");
    let e = perr(path);
    {
        let root = BitMapBackend::new(&tmp, (1000, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
        let root = if with_text {
            root.titled(title, ("sans-serif", 18)).map_err(|x| e(x.to_string()))?
        } else {
            root
        };
        let panels = root.split_evenly((1, 2));
        let (lo, hi) = observed
            .iter()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let span = (hi - lo).max(1e-12);
        for (k, panel) in panels.iter().enumerate() {
            let m = if k == 0 { predicted } else { observed };
            let mut builder = ChartBuilder::on(panel);
            builder.margin(15);
            if with_text {
                builder
                    .caption(
                        if k == 0 {
                            "a-priori prediction"
                        } else {
                            "observed mean r"
                        },
                        ("sans-serif", 16),
                    )
                    .x_label_area_size(30)
                    .y_label_area_size(150);
            }
            let mut chart = builder
                .build_cartesian_2d((0..cols.len()).into_segmented(), (0..rows.len()).into_segmented())
                .map_err(|x| e(x.to_string()))?;
            if with_text {
                chart
                    .configure_mesh()
                    .disable_mesh()
                    .x_labels(cols.len())
                    .y_labels(rows.len())
                    .x_label_formatter(&|v| match v {
                        SegmentValue::CenterOf(i) => cols.get(*i).cloned().unwrap_or_default(),
                        _ => String::new(),
                    })
                    .y_label_formatter(&|v| match v {
                        SegmentValue::CenterOf(i) => rows.get(*i).cloned().unwrap_or_default(),
                        _ => String::new(),
                    })
                    .draw()
                    .map_err(|x| e(x.to_string()))?;
            }
            for i in 0..rows.len() {
                for j in 0..cols.len() {
                    let v = m[[i, j]];
                    let t = if k == 0 { v } else { ((v - lo) / span).clamp(0.0, 1.0) };
                    let c = RGBColor(255, (255.0 * (1.0 - 0.8 * t)) as u8, (255.0 * (1.0 - 0.9 * t)) as u8);
                    let cell = [
                        (SegmentValue::Exact(j), SegmentValue::Exact(i)),
                        (SegmentValue::Exact(j + 1), SegmentValue::Exact(i + 1)),
                    ];
                    chart
                        .draw_series(std::iter::once(Rectangle::new(cell.clone(), c.filled())))
                        .map_err(|x| e(x.to_string()))?;
                    if predicted[[i, j]] == 1.0 {
                        chart
                            .draw_series(std::iter::once(Rectangle::new(cell, BLACK.stroke_width(2))))
                            .map_err(|x| e(x.to_string()))?;
                    }
                }
            }
        }
        root.present().map_err(|x| e(x.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|x| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, x)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_warns_about_saes_that_reconstruct_too_little() {
        let ok = ("en".to_string(), 9, 0.7);
        assert_eq!(poor_sae_warning(&[ok.clone()], 0.1), None);
        // the default floor flags it
        let w = poor_sae_warning(&[ok.clone()], crate::sae::metrics::DEFAULT_MIN_SAE_R2).unwrap();
        assert!(
            w.contains("the SAE of en layer 9 (R² 0.700) reconstructs less than 0.8"),
            "{w}"
        );
        let w = poor_sae_warning(&[ok.clone(), ("fr".into(), 9, -0.043)], 0.1).unwrap();
        assert!(
            w.contains("the SAE of fr layer 9 (R² -0.043) reconstructs less than 0.1"),
            "{w}"
        );
        assert!(!w.contains("en layer"), "{w}");
        // a NaN R² (constant held-out rows) is no reassurance either
        let w = poor_sae_warning(&[("fr".into(), 9, 0.05), ("zh".into(), 15, f64::NAN)], 0.1).unwrap();
        assert!(
            w.contains("the SAEs of fr layer 9 (R² 0.050), zh layer 15 (R² NaN) reconstruct less"),
            "{w}"
        );
    }
}
