//! `report.html`: one self-contained page per output folder (no network, no external scripts:
//! inline SVG, PNGs as data URIs, a little inline JavaScript), written after every update beside
//! `report.md` and by `cortexflow report DIR` for any output folder.
//!
//! It is built from the folder's own files, so it shows what the tables say: r by layer with its
//! CIs per feature set (SVG), mean r per ROI at each feature set's peak layer (bars), mean voxel
//! r per region with its CIs over subjects (bars, a `cortexflow voxelwise fit` folder), baselines
//! with their paired tests, the topography matrix as a heat map with the predicted cells outlined,
//! reading-time LRTs per layer, SAE quality, the `changes` of the last update, every PNG, and a
//! searchable, paginated feature table (from `feature_labels.parquet` and the labelling tasks)
//! where each feature opens a card: label, category, confidence, κ of its layer's imported labels
//! against the built-in labeller (where answers were imported), density, its top contexts with
//! the peak word marked, and its region weights (`feature_region_weights.parquet`: the feature's
//! standardised weight per ROI in the layer's full SAE encoding model, mean ± sd over the fits)
//! and, where `cortexflow labels score` wrote its table into the folder
//! (`explanation_scores*.parquet`), the explanation's detection and fuzzing scores; those tables
//! also give a section of mean scores per layer, category and scorer. Sections whose tables are
//! absent are left out.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use base64::Engine;

use crate::store::parquet_io::read_parquet;
use crate::Result;

/// Rows of a table as display values.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Num(f64),
    Text(String),
    Null,
}

impl V {
    fn num(&self) -> Option<f64> {
        match self {
            V::Num(x) if x.is_finite() => Some(*x),
            _ => None,
        }
    }
    fn text(&self) -> String {
        match self {
            V::Num(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
            V::Num(x) if x.abs() >= 1e-3 || *x == 0.0 => format!("{x:.4}"),
            V::Num(x) => format!("{x:.2e}"),
            V::Text(s) => s.clone(),
            V::Null => String::new(),
        }
    }
}

struct Table {
    cols: Vec<String>,
    rows: Vec<Vec<V>>,
}

impl Table {
    fn col(&self, name: &str) -> Option<usize> {
        self.cols.iter().position(|c| c == name)
    }
    fn get<'a>(&self, row: &'a [V], name: &str) -> &'a V {
        self.col(name).map_or(&V::Null, |i| &row[i])
    }
}

fn read_table(path: &Path) -> Result<Option<Table>> {
    if !path.is_file() {
        return Ok(None);
    }
    let (schema, batches, _) = read_parquet(path)?;
    let cols: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = Vec::new();
    for b in &batches {
        rows.extend(batch_rows(b));
    }
    Ok(Some(Table { cols, rows }))
}

fn batch_rows(b: &RecordBatch) -> Vec<Vec<V>> {
    let fmt = arrow::util::display::FormatOptions::default();
    let cols: Vec<Box<dyn Fn(usize) -> V + '_>> = b
        .columns()
        .iter()
        .map(|c| -> Box<dyn Fn(usize) -> V + '_> {
            match c.data_type() {
                DataType::Float64 => {
                    let a = c.as_primitive::<Float64Type>();
                    Box::new(move |i| if a.is_null(i) { V::Null } else { V::Num(a.value(i)) })
                }
                DataType::Float32 => {
                    let a = c.as_primitive::<Float32Type>();
                    Box::new(move |i| {
                        if a.is_null(i) {
                            V::Null
                        } else {
                            V::Num(a.value(i) as f64)
                        }
                    })
                }
                DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 | DataType::Int64 => {
                    let a = arrow::compute::cast(c, &DataType::Float64).expect("integers cast to f64");
                    Box::new(move |i| {
                        let a = a.as_primitive::<Float64Type>();
                        if a.is_null(i) {
                            V::Null
                        } else {
                            V::Num(a.value(i))
                        }
                    })
                }
                _ => match arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &fmt) {
                    Ok(f) => Box::new(move |i| {
                        if c.is_null(i) {
                            V::Null
                        } else {
                            V::Text(f.value(i).to_string())
                        }
                    }),
                    Err(_) => Box::new(|_| V::Null),
                },
            }
        })
        .collect();
    (0..b.num_rows()).map(|i| cols.iter().map(|f| f(i)).collect()).collect()
}

/// A feature set that is one seed's draw of a random family (`random:count:03`, `ablate:random:01`):
/// listed in the tables, left out of the charts (the baselines section compares the families).
fn is_seed_draw(name: &str) -> bool {
    name.rsplit_once(':')
        .is_some_and(|(_, s)| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An HTML table of the chosen columns (all when `only` is empty), at most `max` rows.
fn html_table(t: &Table, only: &[&str], max: usize) -> String {
    let idx: Vec<usize> = if only.is_empty() {
        (0..t.cols.len()).collect()
    } else {
        only.iter().filter_map(|c| t.col(c)).collect()
    };
    let mut s = String::from("<div class=\"scroll\"><table><thead><tr>");
    for &i in &idx {
        let _ = write!(s, "<th>{}</th>", esc(&t.cols[i]));
    }
    s.push_str("</tr></thead><tbody>");
    for row in t.rows.iter().take(max) {
        s.push_str("<tr>");
        for &i in &idx {
            let _ = write!(s, "<td>{}</td>", esc(&row[i].text()));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></div>");
    if t.rows.len() > max {
        let _ = write!(
            s,
            "<p class=\"note\">First {max} of {} rows; all are in the Parquet file.</p>",
            t.rows.len()
        );
    }
    s
}

/// A heat-map cell: (row, column, value, predicted, significant).
type Cell = (String, String, f64, bool, bool);
/// A top context: (left, word, right, activation).
type TopContext = (String, String, String, f32);
/// Per (language tag, layer, feature): its top contexts and density.
type FeatureEvidence = BTreeMap<(String, String, String), (Vec<TopContext>, Option<f64>)>;

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// Line chart of mean r by layer with CI bands, one series per key.
fn r_by_layer_svg(series: &BTreeMap<String, Vec<(f64, f64, f64, f64)>>) -> String {
    let (w, h, l, r, t, b) = (720.0, 360.0, 60.0, 170.0, 20.0, 40.0);
    let pts: Vec<&(f64, f64, f64, f64)> = series.values().flatten().collect();
    if pts.is_empty() {
        return String::new();
    }
    let x0 = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x1 = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max).max(x0 + 1.0);
    let lo = pts.iter().map(|p| p.2.min(p.1)).fold(f64::INFINITY, f64::min).min(0.0);
    let hi = pts
        .iter()
        .map(|p| p.3.max(p.1))
        .fold(f64::NEG_INFINITY, f64::max)
        .max(lo + 1e-3);
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| t + (hi - y) / (hi - lo) * (h - t - b);
    let mut s = format!("<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">");
    let _ = write!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
        sy(0.0),
        w - r,
        sy(0.0)
    );
    for k in 0..=4 {
        let y = lo + (hi - lo) * k as f64 / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{y:.3}</text>",
            l - 6.0,
            sy(y) + 4.0
        );
    }
    let mut layers: Vec<f64> = pts.iter().map(|p| p.0).collect();
    layers.sort_by(f64::total_cmp);
    layers.dedup();
    for x in &layers {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{x}</text>",
            sx(*x),
            h - b + 16.0
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">layer</text>",
        (l + w - r) / 2.0,
        h - 4.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        let mut band: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.3))).collect();
        band.extend(pts.iter().rev().map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.2))));
        let line: Vec<String> = pts.iter().map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1))).collect();
        let _ = write!(
            s,
            "<polygon points=\"{}\" fill=\"{c}\" opacity=\"0.15\"/><polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>",
            band.join(" "),
            line.join(" ")
        );
        for p in pts {
            let _ = write!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"><title>{} layer {}: {:.4} [{:.4}, {:.4}]</title></circle>",
                sx(p.0),
                sy(p.1),
                esc(name),
                p.0,
                p.1,
                p.2,
                p.3
            );
        }
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\" class=\"tick\">{}</text>",
            w - r + 10.0,
            t + 18.0 * i as f64,
            w - r + 28.0,
            t + 18.0 * i as f64 + 10.0,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// Heat map of mean r by (subcategory row, region column); predicted cells outlined, significant
/// ones starred.
fn heatmap_svg(cells: &[Cell]) -> String {
    let mut rows: Vec<&String> = cells.iter().map(|c| &c.0).collect();
    rows.sort();
    rows.dedup();
    let mut cols: Vec<&String> = cells.iter().map(|c| &c.1).collect();
    cols.sort();
    cols.dedup();
    let m = cells.iter().map(|c| c.2.abs()).fold(1e-9, f64::max);
    let (cw, ch, l, t) = (80.0, 34.0, 90.0, 24.0);
    let (w, h) = (l + cw * cols.len() as f64 + 10.0, t + ch * rows.len() as f64 + 10.0);
    let mut s = format!("<svg class=\"heat\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\">");
    for (j, c) in cols.iter().enumerate() {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"16\" class=\"tick\" text-anchor=\"middle\">{}</text>",
            l + cw * (j as f64 + 0.5),
            esc(c)
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            l - 6.0,
            t + ch * (i as f64 + 0.6),
            esc(r)
        );
    }
    for (row, col, v, predicted, significant) in cells {
        let i = rows.iter().position(|r| *r == row).unwrap_or(0);
        let j = cols.iter().position(|c| *c == col).unwrap_or(0);
        let a = (v.abs() / m).min(1.0);
        let fill = if *v >= 0.0 {
            format!("rgba(214,39,40,{a:.3})")
        } else {
            format!("rgba(31,119,180,{a:.3})")
        };
        let (stroke, sw) = if *predicted { ("#000", 3) } else { ("#ccc", 1) };
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{sw}\"><title>{} × {}: {v:.4}{}</title></rect><text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{v:.3}{}</text>",
            l + cw * j as f64 + 2.0,
            t + ch * i as f64 + 2.0,
            cw - 4.0,
            ch - 4.0,
            esc(row),
            esc(col),
            if *predicted { " (predicted)" } else { "" },
            l + cw * (j as f64 + 0.5),
            t + ch * (i as f64 + 0.6),
            if *significant { "*" } else { "" }
        );
    }
    s.push_str("</svg>");
    s
}

/// The folder's pipeline name from its manifest, else the folder's name.
fn folder_title(dir: &Path) -> String {
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("manifest.json")).unwrap_or_default())
        .ok()
        .and_then(|m| m.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// Writes `DIR/report.html` from the output folder's files; returns its path. The title is the
/// pipeline's name (`title`, else the folder's manifest's, else the folder's name).
pub fn write_report_html(dir: &Path, title: Option<&str>) -> Result<PathBuf> {
    let title = title.map(str::to_string).unwrap_or_else(|| folder_title(dir));
    let mut body = String::new();
    let mut nav = Vec::new();
    // read once: the explanation-scores section and the feature cards both use them
    let score_tables = explanation_score_tables(dir)?;
    let mut section = |id: &str, name: &str, html: String, nav: &mut Vec<(String, String)>| {
        if html.is_empty() {
            return;
        }
        nav.push((id.to_string(), name.to_string()));
        let _ = write!(body, "<section id=\"{id}\"><h2>{}</h2>{html}</section>", esc(name));
    };

    // r by layer with CIs, and per-ROI bars at each set's peak layer
    if let Some(t) = read_table(&dir.join("summary.parquet"))? {
        let mut series: BTreeMap<String, Vec<(f64, f64, f64, f64)>> = BTreeMap::new();
        let several_langs = t
            .rows
            .iter()
            .map(|r| t.get(r, "language").text())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1;
        for r in t.rows.iter().filter(|r| t.get(r, "roi").text() == "all") {
            let (Some(layer), Some(m)) = (t.get(r, "layer").num(), t.get(r, "mean_r").num()) else {
                continue;
            };
            let lo = t.get(r, "ci_lower").num().unwrap_or(m);
            let hi = t.get(r, "ci_upper").num().unwrap_or(m);
            let mut key = t.get(r, "feature_set").text();
            if is_seed_draw(&key) {
                continue;
            }
            if several_langs {
                key = format!("{} {key}", t.get(r, "language").text());
            }
            series.entry(key).or_default().push((layer, m, lo, hi));
        }
        for v in series.values_mut() {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let mut html = String::from(
            "<p>Mean held-out r over subjects, all ROIs, by layer; bands: percentile bootstrap CI over subjects \
             (single seeds of random families are in the table, not the chart).</p>",
        );
        html.push_str(&r_by_layer_svg(&series));
        html.push_str(&html_table(
            &Table {
                cols: t.cols.clone(),
                rows: t
                    .rows
                    .iter()
                    .filter(|r| t.get(r, "roi").text() == "all")
                    .cloned()
                    .collect(),
            },
            &[
                "language",
                "layer",
                "feature_set",
                "mean_r",
                "ci_lower",
                "ci_upper",
                "t_ci_lower",
                "t_ci_upper",
                "n_subjects",
                "r_normalized",
            ],
            500,
        ));
        section("r-by-layer", "r by layer", html, &mut nav);

        // bars per ROI at the peak layer of each (language, feature set)
        let mut peaks: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (k, pts) in &series {
            if let Some(p) = pts.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
                peaks.insert(k.clone(), (p.0, p.1));
            }
        }
        let mut html = String::new();
        for (k, (layer, _)) in &peaks {
            let rows: Vec<(String, f64)> = t
                .rows
                .iter()
                .filter(|r| {
                    let mut key = t.get(r, "feature_set").text();
                    if several_langs {
                        key = format!("{} {key}", t.get(r, "language").text());
                    }
                    &key == k && t.get(r, "layer").num() == Some(*layer) && t.get(r, "roi").text() != "all"
                })
                .filter_map(|r| Some((t.get(r, "roi").text(), t.get(r, "mean_r").num()?)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let m = rows.iter().map(|r| r.1.abs()).fold(1e-9, f64::max);
            let _ = write!(html, "<h3>{} at layer {layer}</h3><div class=\"bars\">", esc(k));
            for (roi, v) in rows {
                let _ = write!(
                    html,
                    "<div class=\"bar\"><span class=\"lab\">{}</span><span class=\"fill {}\" style=\"width:{:.1}%\"></span><span class=\"val\">{v:.4}</span></div>",
                    esc(&roi),
                    if v < 0.0 { "neg" } else { "pos" },
                    60.0 * v.abs() / m
                );
            }
            html.push_str("</div>");
        }
        section("rois", "Mean r per ROI at the peak layer", html, &mut nav);
    }

    // voxelwise (`cortexflow voxelwise fit`): mean voxel r per region with both CIs over subjects,
    // and the per-subject region means
    if let Some(t) = read_table(&dir.join("voxelwise_region_summary.parquet"))? {
        let rows: Vec<(String, f64, f64, f64, f64, f64, String)> = t
            .rows
            .iter()
            .filter_map(|r| {
                Some((
                    t.get(r, "region").text(),
                    t.get(r, "mean_r").num()?,
                    t.get(r, "t_ci_lower").num().unwrap_or(f64::NAN),
                    t.get(r, "t_ci_upper").num().unwrap_or(f64::NAN),
                    t.get(r, "ci_lower").num().unwrap_or(f64::NAN),
                    t.get(r, "ci_upper").num().unwrap_or(f64::NAN),
                    t.get(r, "n_subjects").text(),
                ))
            })
            .collect();
        let level = t
            .rows
            .first()
            .and_then(|r| t.get(r, "ci_level").num())
            .unwrap_or(f64::NAN);
        let m = rows
            .iter()
            .flat_map(|r| [r.1.abs(), r.3.abs(), r.5.abs()])
            .filter(|v| v.is_finite())
            .fold(1e-9, f64::max);
        let mut html = format!(
            "<p>Mean over subjects of each subject's mean held-out voxel r in the region; {:.0}% Student-t and percentile-bootstrap CIs over subjects.</p><div class=\"bars regions\">",
            100.0 * level
        );
        let ci = |lo: f64, hi: f64| match lo.is_finite() && hi.is_finite() {
            true => format!("[{lo:.4}, {hi:.4}]"),
            false => "–".to_string(),
        };
        for (region, v, tlo, thi, blo, bhi, n) in &rows {
            let _ = write!(
                html,
                "<div class=\"bar\"><span class=\"lab\">{}</span><span class=\"fill {}\" style=\"width:{:.1}%\"></span><span class=\"val\">{v:.4} t {} boot {} (n = {})</span></div>",
                esc(region),
                if *v < 0.0 { "neg" } else { "pos" },
                50.0 * v.abs() / m,
                ci(*tlo, *thi),
                ci(*blo, *bhi),
                esc(n)
            );
        }
        html.push_str("</div>");
        if let Some(per) = read_table(&dir.join("voxelwise_regions.parquet"))? {
            html.push_str("<h3>Per subject</h3>");
            html.push_str(&html_table(&per, &[], 500));
        }
        section("regions", "Mean voxel r per region", html, &mut nav);
    }

    if let Some(t) = read_table(&dir.join("baselines.parquet"))? {
        let html = format!(
            "<p>Each feature set against its reference (vs), paired over subjects: mean difference with its bootstrap CI, paired t and sign-flip p.</p>{}",
            html_table(
                &t,
                &["story", "language", "layer", "feature_set", "kind", "n_features", "mean_r", "vs", "mean_diff", "diff_ci_lower", "diff_ci_upper", "t", "p_t", "p_signflip", "n_subjects"],
                400
            )
        );
        section("baselines", "Baselines and paired tests", html, &mut nav);
    }

    if let Some(t) = read_table(&dir.join("topography_observed.parquet"))? {
        let mut groups: BTreeMap<String, Vec<Cell>> = BTreeMap::new();
        for r in &t.rows {
            let key = format!("{} layer {}", t.get(r, "story").text(), t.get(r, "layer").text());
            let Some(v) = t.get(r, "mean_r").num() else { continue };
            groups.entry(key).or_default().push((
                t.get(r, "subcategory").text(),
                t.get(r, "region").text(),
                v,
                t.get(r, "predicted").text() == "true",
                t.get(r, "significant").text() == "true",
            ));
        }
        let mut html = String::from(
            "<p>Mean r of each semantic subcategory's features in each region; outlined: the paper's predicted cells; *: significant after FDR.</p>",
        );
        for (k, cells) in &groups {
            let _ = write!(html, "<h3>{}</h3>{}", esc(k), heatmap_svg(cells));
        }
        if let Some(s) = read_table(&dir.join("topography_stats.parquet"))? {
            html.push_str(&html_table(&s, &[], 200));
        }
        section("topography", "Topography", html, &mut nav);
    }

    if let Some(t) = read_table(&dir.join("reading_comparison.parquet"))? {
        section(
            "reading",
            "Reading times: likelihood-ratio tests by layer",
            html_table(
                &t,
                &[
                    "layer",
                    "model",
                    "seed",
                    "n_features",
                    "n_obs",
                    "delta_loglik",
                    "chi2",
                    "df",
                    "p_value",
                    "converged",
                ],
                400,
            ),
            &mut nav,
        );
    }

    if let Some(t) = read_table(&dir.join("sae_quality.parquet"))? {
        section("sae", "SAE quality (held-out rows)", html_table(&t, &[], 200), &mut nav);
    }

    if let Some(t) = read_table(&dir.join("changes.parquet"))? {
        let last = t
            .rows
            .iter()
            .filter_map(|r| t.get(r, "epoch").num())
            .fold(f64::NEG_INFINITY, f64::max);
        let rows: Vec<Vec<V>> = t
            .rows
            .iter()
            .filter(|r| t.get(r, "epoch").num() == Some(last))
            .cloned()
            .collect();
        let html = format!(
            "<p>Update {last}: {} record(s) added or retracted.</p>{}",
            rows.len(),
            html_table(
                &Table {
                    cols: t.cols.clone(),
                    rows
                },
                &["change", "kind", "language", "story", "subject", "layer", "feature_set"],
                300
            )
        );
        section("changes", "Changes of the last update", html, &mut nav);
    }

    // figures: every PNG of the folder, inline
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    pngs.retain(|p| p.extension().is_some_and(|e| e == "png"));
    pngs.sort();
    let mut html = String::new();
    for p in &pngs {
        if let Ok(bytes) = std::fs::read(p) {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let _ = write!(
                html,
                "<figure><img alt=\"{0}\" src=\"data:image/png;base64,{1}\"><figcaption>{0}</figcaption></figure>",
                esc(&name),
                base64::engine::general_purpose::STANDARD.encode(bytes)
            );
        }
    }
    section("figures", "Figures", html, &mut nav);

    // features
    if let Some(t) = read_table(&dir.join("feature_labels.parquet"))? {
        let contexts = task_contexts(dir);
        let kappas = layer_kappas(&t);
        let weights = region_weights(dir)?;
        let scores = explanation_scores(&score_tables);
        let mut items = Vec::with_capacity(t.rows.len());
        for r in &t.rows {
            let (lang, layer, feature) = (
                t.get(r, "language").text(),
                t.get(r, "layer").text(),
                t.get(r, "feature").text(),
            );
            let confs: Vec<(String, f64)> = t
                .cols
                .iter()
                .filter(|c| c.starts_with("conf_"))
                .filter_map(|c| Some((c.trim_start_matches("conf_").to_string(), t.get(r, c).num()?)))
                .collect();
            let (ctx, density) = contexts
                .get(&(lang.clone(), layer.clone(), feature.clone()))
                .or_else(|| contexts.get(&(String::new(), layer.clone(), feature.clone())))
                .cloned()
                .unwrap_or_default();
            let kappa = kappas.get(&(lang.clone(), layer.clone())).copied();
            let (w, n_fits) = weights
                .get(&(lang.clone(), layer.clone(), feature.clone()))
                .cloned()
                .unwrap_or_default();
            items.push(serde_json::json!({
                "lang": lang, "layer": layer, "feature": feature,
                "category": t.get(r, "category").text(), "subcategory": t.get(r, "subcategory").text(),
                "source": t.get(r, "source").text(), "n_active": t.get(r, "n_active").num(),
                "conf": confs, "contexts": ctx, "density": density,
                "builtin": t.get(r, "builtin_category").text(),
                "kappa": kappa.map(|k| k.0), "kappa_n": kappa.map(|k| k.1),
                "weights": w, "n_fits": n_fits,
                "scores": scores.get(&(layer.clone(), feature.clone())).cloned().unwrap_or_default(),
            }));
        }
        let data = serde_json::to_string(&items)
            .unwrap_or_else(|_| "[]".into())
            .replace("</", "<\\/");
        let html = format!(
            "<p>{} features. Search by feature, category or word; click a row for its card.</p>\
             <input id=\"q\" type=\"search\" placeholder=\"search features…\" oninput=\"page=0;render()\">\
             <div class=\"scroll\"><table id=\"features\"><thead><tr><th>language</th><th>layer</th><th>feature</th><th>category</th><th>subcategory</th><th>active words</th><th>top word</th></tr></thead><tbody></tbody></table></div>\
             <p><button onclick=\"page=Math.max(0,page-1);render()\">previous</button> <span id=\"pageinfo\"></span> <button onclick=\"page++;render()\">next</button></p>\
             <div id=\"card\" class=\"card\" hidden></div>\
             <script type=\"application/json\" id=\"feature-data\">{data}</script>",
            items.len()
        );
        section("features", "Features", html, &mut nav);
    }

    // explanation scores: mean accuracy and F1 per (layer, category, scorer)
    let mut html = String::new();
    for (file, t) in &score_tables {
        let mut groups: BTreeMap<(String, String, String), (usize, f64, f64)> = BTreeMap::new();
        for r in &t.rows {
            let g = groups
                .entry((
                    t.get(r, "layer").text(),
                    t.get(r, "category").text(),
                    t.get(r, "scorer").text(),
                ))
                .or_default();
            g.0 += 1;
            g.1 += t.get(r, "accuracy").num().unwrap_or(f64::NAN);
            g.2 += t.get(r, "f1").num().unwrap_or(f64::NAN);
        }
        let _ = write!(
            html,
            "<h3>{}</h3><table class=\"scores\"><thead><tr><th>layer</th><th>category</th><th>scorer</th><th>features</th><th>mean accuracy</th><th>mean F1</th></tr></thead><tbody>",
            esc(file)
        );
        for ((layer, cat, scorer), (n, acc, f1)) in &groups {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{n}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                esc(layer),
                esc(cat),
                esc(scorer),
                acc / *n as f64,
                f1 / *n as f64
            );
        }
        html.push_str("</tbody></table>");
    }
    if !html.is_empty() {
        html.insert_str(
            0,
            "<p class=\"note\">Delphi-style scores of feature explanations by an LLM (`cortexflow labels score`): \
             detection asks whether held-out excerpts activate the feature (balanced, chance ≈ 0.5), fuzzing whether \
             the marked word is the one that activates it.</p>",
        );
    }
    section("explanations", "Explanation scores", html, &mut nav);

    if let Ok(md) = std::fs::read_to_string(dir.join("report.md")) {
        section(
            "markdown",
            "report.md",
            format!(
                "<details><summary>The Markdown report</summary><pre>{}</pre></details>",
                esc(&md)
            ),
            &mut nav,
        );
    }

    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>cortexflow: {t}</title><style>{CSS}</style></head><body><header><h1>cortexflow run: {t}</h1><nav>",
        t = esc(&title)
    );
    for (id, name) in &nav {
        let _ = write!(page, "<a href=\"#{id}\">{}</a> ", esc(name));
    }
    let _ = write!(
        page,
        "</nav></header><main>{body}</main><script>{JS}</script></body></html>"
    );
    let path = dir.join("report.html");
    crate::paths::write_atomic(&path, page.as_bytes())?;
    Ok(path)
}

/// Per (language, layer) whose labels came from an imported answers file: Cohen's κ between those
/// labels and the built-in labeller's over the layer's features, and the number of features.
fn layer_kappas(t: &Table) -> BTreeMap<(String, String), (f64, usize)> {
    const CATS: [&str; 5] = ["semantic", "syntactic", "lexical", "prediction", "other"];
    let mut groups: BTreeMap<(String, String), (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for r in &t.rows {
        if t.get(r, "source").text() == "builtin" {
            continue;
        }
        let idx = |c: String| CATS.iter().position(|x| x.eq_ignore_ascii_case(&c));
        if let (Some(a), Some(b)) = (
            idx(t.get(r, "category").text()),
            idx(t.get(r, "builtin_category").text()),
        ) {
            let g = groups
                .entry((t.get(r, "language").text(), t.get(r, "layer").text()))
                .or_default();
            g.0.push(a);
            g.1.push(b);
        }
    }
    groups
        .into_iter()
        .filter_map(|(k, (a, b))| {
            let n = a.len();
            let (kappa, _, _) = crate::stats::agreement::cohen_kappa(&a, &b, CATS.len()).ok()?;
            kappa.kappa.is_finite().then_some((k, (kappa.kappa, n)))
        })
        .collect()
}

/// The folder's `explanation_scores*.parquet` tables (written by `cortexflow labels score --out`),
/// with their file names, in name order.
fn explanation_score_tables(dir: &Path) -> Result<Vec<(String, Table)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    name.starts_with("explanation_scores") && name.ends_with(".parquet")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        if let Some(t) = read_table(&path)? {
            out.push((path.file_name().unwrap_or_default().to_string_lossy().into_owned(), t));
        }
    }
    Ok(out)
}

/// Explanation scores per (layer, feature): `[scorer, accuracy, f1, n, file]` per row of the
/// folder's score tables.
fn explanation_scores(tables: &[(String, Table)]) -> BTreeMap<(String, String), Vec<serde_json::Value>> {
    let mut out: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
    for (file, t) in tables {
        for r in &t.rows {
            out.entry((t.get(r, "layer").text(), t.get(r, "feature").text()))
                .or_default()
                .push(serde_json::json!([
                    t.get(r, "scorer").text(),
                    t.get(r, "accuracy").num(),
                    t.get(r, "f1").num(),
                    t.get(r, "n").num(),
                    file,
                ]));
        }
    }
    out
}

/// A feature's region weights: `[roi, region, weight, sd]` per ROI, and the fits averaged.
type FeatureWeights = (Vec<serde_json::Value>, u64);

/// Region weights per (language, layer, feature) from the folder's `feature_region_weights.parquet`
/// (empty without it), rounded to 4 significant digits for the page.
fn region_weights(dir: &Path) -> Result<BTreeMap<(String, String, String), FeatureWeights>> {
    let mut out: BTreeMap<(String, String, String), FeatureWeights> = BTreeMap::new();
    let Some(t) = read_table(&dir.join("feature_region_weights.parquet"))? else {
        return Ok(out);
    };
    let round = |v: Option<f64>| v.and_then(|x| format!("{x:.3e}").parse::<f64>().ok());
    for r in &t.rows {
        let key = (
            t.get(r, "language").text(),
            t.get(r, "layer").text(),
            t.get(r, "feature").text(),
        );
        let e = out.entry(key).or_default();
        e.0.push(serde_json::json!([
            t.get(r, "roi").text(),
            t.get(r, "region").text(),
            round(t.get(r, "weight").num()),
            round(t.get(r, "weight_sd").num()),
        ]));
        e.1 = e.1.max(t.get(r, "n_fits").num().unwrap_or(0.0) as u64);
    }
    Ok(out)
}

/// Top contexts per (language tag, layer, feature) from the folder's `labelling_tasks_*.jsonl`
/// (`[left, token, right, activation]` each); the language tag is empty for single-language runs.
fn task_contexts(dir: &Path) -> FeatureEvidence {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(tag) = name
            .strip_prefix("labelling_tasks_")
            .and_then(|s| s.strip_suffix(".jsonl"))
        else {
            continue;
        };
        let lang = match tag.rsplit_once("_L") {
            Some((l, _)) => l.to_string(),
            None => String::new(),
        };
        let Ok(tasks) = crate::taxonomy::llm::read_tasks(&e.path()) else {
            continue;
        };
        for t in tasks {
            let ctx = t
                .contexts
                .iter()
                .map(|c| (c.left.clone(), c.token.clone(), c.right.clone(), c.activation))
                .collect();
            out.insert(
                (lang.clone(), t.layer.to_string(), t.feature.to_string()),
                (ctx, t.density),
            );
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}header{background:#f4f4f8;padding:12px 24px;border-bottom:1px solid #ddd}\
header nav a{margin-right:12px}main{padding:0 24px 40px}section{margin-top:28px}table{border-collapse:collapse;font-size:13px}\
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}th{background:#f0f0f0}.scroll{max-height:480px;overflow:auto}\
.tick{font-size:11px;fill:#444}.note{color:#666;font-size:12px}.bars .bar{display:flex;align-items:center;margin:2px 0}\
.bars .lab{width:110px;font-size:12px}.bars .fill{height:12px;display:inline-block}.bars .pos{background:#d62728}.bars .neg{background:#1f77b4}\
.bars .val{font-size:12px;margin-left:6px}figure{display:inline-block;margin:8px}figure img{max-width:640px}\
#features tbody tr{cursor:pointer}#features tbody tr:hover{background:#eef}.card{border:1px solid #999;padding:12px;margin-top:12px;max-width:900px;background:#fafafa}\
.card mark{background:#ffd54f}.ctx{font-family:monospace;font-size:12px;margin:2px 0}";

const JS: &str = r#"
var data=[];var page=0;var PER=50;
var el=document.getElementById('feature-data');if(el){data=JSON.parse(el.textContent);}
function esc(s){return String(s).replace(/&/g,'&amp;').replace(/</g,'&lt;').replace(/>/g,'&gt;');}
function matches(d,q){if(!q)return true;q=q.toLowerCase();
 if((d.feature+'').toLowerCase()===q||(d.category+' '+d.subcategory).toLowerCase().indexOf(q)>=0)return true;
 return d.contexts.some(function(c){return c[1].toLowerCase().indexOf(q)>=0;});}
function render(){var tb=document.querySelector('#features tbody');if(!tb)return;
 var q=document.getElementById('q').value.trim();var rows=data.filter(function(d){return matches(d,q);});
 var pages=Math.max(1,Math.ceil(rows.length/PER));if(page>=pages)page=pages-1;
 var html='';rows.slice(page*PER,(page+1)*PER).forEach(function(d){var i=data.indexOf(d);
  html+='<tr data-i="'+i+'"><td>'+esc(d.lang)+'</td><td>'+d.layer+'</td><td>'+d.feature+'</td><td>'+esc(d.category)+'</td><td>'+esc(d.subcategory)+'</td><td>'+(d.n_active===null?'':d.n_active)+'</td><td>'+(d.contexts.length?esc(d.contexts[0][1]):'')+'</td></tr>';});
 tb.innerHTML=html;document.getElementById('pageinfo').textContent='page '+(page+1)+' of '+pages+' ('+rows.length+' features)';
 Array.prototype.forEach.call(tb.querySelectorAll('tr'),function(tr){tr.onclick=function(){card(data[+tr.dataset.i]);};});}
function card(d){var c=document.getElementById('card');var conf=d.conf.map(function(x){return esc(x[0])+' '+x[1].toFixed(2);}).join(', ');
 var h='<h3>Layer '+d.layer+', feature '+d.feature+(d.lang?' ('+esc(d.lang)+')':'')+'</h3><p><b>'+esc(d.category)+'</b>'+(d.subcategory?' / '+esc(d.subcategory):'')+' — label from '+esc(d.source)+'</p>';
 h+='<p>confidence: '+conf+'</p><p>active on '+(d.n_active===null?'?':d.n_active)+' words'+(d.density===null?'':' (density '+(100*d.density).toFixed(2)+'%)')+'</p>';
 if(d.kappa!==null)h+='<p class="kappa">built-in labeller: '+esc(d.builtin)+(d.builtin===d.category?' (agrees)':' (differs)')+'; κ of this layer\'s labels vs the built-in ones: '+d.kappa.toFixed(3)+' over '+d.kappa_n+' features</p>';
 h+='<h4>Top contexts</h4>';
 d.contexts.forEach(function(x){h+='<div class="ctx">'+esc(x[0])+' <mark>'+esc(x[1])+'</mark> '+esc(x[2])+' <span class="note">('+x[3].toFixed(3)+')</span></div>';});
 if(!d.contexts.length)h+='<p class="note">no contexts in this folder</p>';
 if(d.scores.length){h+='<h4>Explanation scores</h4>';d.scores.forEach(function(x){h+='<p class="score">'+esc(x[0])+': accuracy '+(x[1]===null?'?':x[1].toFixed(2))+', F1 '+(x[2]===null?'?':x[2].toFixed(2))+' over '+x[3]+' excerpts <span class="note">('+esc(x[4])+')</span></p>';});}
 h+='<h4>Region weights</h4>';
 if(d.weights.length){var mx=0;d.weights.forEach(function(w){if(w[2]!==null)mx=Math.max(mx,Math.abs(w[2]));});
  h+='<p class="note">standardised weight of this feature in the layer\'s full SAE encoding model, per ROI: mean ± sd over '+d.n_fits+' (subject, story) fits</p><div class="bars weights">';
  d.weights.forEach(function(w){var v=w[2];h+='<div class="bar"><span class="lab">'+esc(w[0])+(w[1]?' ('+esc(w[1])+')':'')+'</span>';
   if(v===null){h+='<span class="val">excluded</span></div>';return;}
   h+='<span class="fill '+(v<0?'neg':'pos')+'" style="width:'+(mx>0?Math.round(200*Math.abs(v)/mx):0)+'px"></span><span class="val">'+v.toPrecision(3)+(w[3]===null?'':' ± '+w[3].toPrecision(2))+'</span></div>';});
  h+='</div>';}
 else h+='<p class="note">no region weights in this folder</p>';
 c.innerHTML=h;c.hidden=false;c.dataset.feature=d.feature;}
render();
// #card=LAYER:FEATURE (or LANG:LAYER:FEATURE) opens that feature's card on load
(function(){var m=location.hash.match(/^#card=(?:([^:]+):)?(\d+):(\d+)$/);if(!m)return;
 var d=data.filter(function(x){return x.layer===m[2]&&x.feature===m[3]&&(!m[1]||x.lang===m[1]);})[0];if(d)card(d);})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_and_escape() {
        assert_eq!(V::Num(3.0).text(), "3");
        assert_eq!(V::Num(0.12345).text(), "0.1235");
        assert_eq!(V::Num(1.5e-5).text(), "1.50e-5");
        assert_eq!(esc("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        let svg = heatmap_svg(&[
            ("affect".into(), "AT".into(), 0.1, true, true),
            ("event".into(), "PT".into(), -0.05, false, false),
        ]);
        assert!(svg.contains("stroke=\"#000\"") && svg.contains("0.100*"));
    }
}
