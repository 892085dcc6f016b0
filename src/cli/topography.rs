//! `cortexflow topography`: does an observed subcategory × region matrix follow an a priori 0/1
//! prediction? ([`crate::topography`], METHOD.md §7.)
//!
//! Input: TSV matrices. The first line is a header: an empty (or label) first cell, then the
//! region names; each further line is a subcategory name, then one number per region.
//! * `--observed` (n_subcategories, n_regions): e.g. mean encoding r per cell; or
//!   `--voxelwise NAME=DIR` per feature set, DIR a `voxelwise fit` folder: the cell is the set's
//!   mean voxel r in the region and the per-subject means are the `--subjects` table (both written
//!   to the output folder as TSV);
//! * `--predicted`: the same labels, cells 0 or 1; reordered by label to the observed order when
//!   the labels are the same but in another order (the summary says so);
//! * `--p-values` (optional): per-cell p in [0, 1], same labels (reordered likewise);
//! * `--subjects` (optional): a long TSV with header and four columns `subject`, `subcategory`,
//!   `region`, `value`, one line per subject and cell (every subject needs every cell once): the
//!   subject bootstrap CI of ρ and the repeated-measures interaction.
//!
//! Output: a readable report on stdout (every statistic with its counts, df, permutations, unit,
//! tie rule and alternative) and, with `--out DIR`, `DIR/topography_tests.parquet`
//! (data-schemas/topography_tests.json), written atomically.

use ndarray::{Array2, Array3};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::topography::matrix::read_text;
pub use crate::topography::matrix::{
    parse_labelled_matrix, read_labelled_matrix, statistics_columns, write_statistics_parquet, LabelledMatrix,
};
use crate::topography::{topography_report, TopographyReport, TopographySettings};
use crate::{Error, Result};

/// Arguments of `cortexflow topography`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopographyArgs {
    /// Observed matrix (TSV: header = label cell + regions; rows = subcategory + numbers).
    #[arg(long, required_unless_present = "voxelwise", conflicts_with = "voxelwise")]
    pub observed: Option<PathBuf>,
    /// The observed matrix from voxelwise fits, one `NAME=DIR` per feature set (subcategory):
    /// DIR is a `cortexflow voxelwise fit --out` folder of that set's design; the cell (NAME,
    /// region) is the mean over subjects of each subject's mean voxel r in the region
    /// (`voxelwise_region_summary`), and the per-subject means (`voxelwise_regions`) are the
    /// `--subjects` table. Both are written to the output folder as TSV.
    #[arg(long, value_name = "NAME=DIR", conflicts_with = "subjects")]
    pub voxelwise: Vec<String>,
    /// Predicted 0/1 matrix with the same row and column labels (TSV, same layout).
    #[arg(long)]
    pub predicted: PathBuf,
    /// Per-cell p-values (TSV, same layout): BH-FDR significant cells and their overlap with the
    /// prediction (hypergeometric, Fisher).
    #[arg(long)]
    pub p_values: Option<PathBuf>,
    /// Per-subject values, long TSV `subject, subcategory, region, value`: subject bootstrap CI of
    /// ρ and the repeated-measures subcategory × region interaction.
    #[arg(long)]
    pub subjects: Option<PathBuf>,
    /// Benjamini–Hochberg FDR level for significant cells.
    #[arg(long, default_value_t = 0.05)]
    pub fdr: f64,
    /// Permutations of each permutation test.
    #[arg(long, default_value_t = 10_000)]
    pub permutations: usize,
    /// Bootstrap resamples of each CI.
    #[arg(long, default_value_t = 10_000)]
    pub boot: usize,
    /// Confidence level of the bootstrap CIs.
    #[arg(long, default_value_t = 0.95)]
    pub ci_level: f64,
    /// Seed of all permutations and resamples (identical seed → identical output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rows and columns are the same objects (square matrix): classic Mantel, one permutation on
    /// both axes.
    #[arg(long)]
    pub same_labels: bool,
    /// Output folder for topography_tests.parquet.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What `cortexflow topography` computed and wrote.
#[derive(Debug, Clone)]
pub struct TopographySummary {
    pub report: TopographyReport,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// Things the user should know (reordered inputs).
    pub notes: Vec<String>,
    /// The readable report.
    pub text: String,
    pub files: Vec<PathBuf>,
}

/// Puts `m` in the row and column order of `reference`; errors naming the missing labels when the
/// label sets differ. Returns whether anything moved.
fn align(path: &Path, m: LabelledMatrix, rows: &[String], cols: &[String]) -> Result<(LabelledMatrix, bool)> {
    let index = |labels: &[String], what: &str| -> Result<Vec<usize>> {
        let have: &[String] = if what == "subcategory" {
            &m.row_labels
        } else {
            &m.col_labels
        };
        let missing: Vec<&String> = labels.iter().filter(|l| !have.contains(l)).collect();
        let extra: Vec<&String> = have.iter().filter(|l| !labels.contains(l)).collect();
        if !missing.is_empty() || !extra.is_empty() || have.len() != labels.len() {
            return Err(Error::Invalid(format!(
                "{}: expected the observed matrix's {what} labels {labels:?}, missing {missing:?}, not in the observed matrix {extra:?}",
                path.display()
            )));
        }
        Ok(labels
            .iter()
            .map(|l| have.iter().position(|h| h == l).expect("checked"))
            .collect())
    };
    let ri = index(rows, "subcategory")?;
    let ci = index(cols, "region")?;
    let moved = ri.iter().enumerate().any(|(a, &b)| a != b) || ci.iter().enumerate().any(|(a, &b)| a != b);
    let values = Array2::from_shape_fn((rows.len(), cols.len()), |(i, j)| m.values[[ri[i], ci[j]]]);
    Ok((
        LabelledMatrix {
            row_labels: rows.to_vec(),
            col_labels: cols.to_vec(),
            lines: ri.iter().map(|&i| m.lines[i]).collect(),
            values,
        },
        moved,
    ))
}

/// Checks that every cell is in `ok`, naming line and column of the first that is not.
fn check_cells(
    path: &Path,
    m: &LabelledMatrix,
    expected: &str,
    ok: impl Fn(f64) -> bool,
    col_order: &[usize],
) -> Result<()> {
    for ((i, j), &v) in m.values.indexed_iter() {
        if !ok(v) {
            return Err(Error::parse(
                path,
                format!(
                    "line {}, column {} (region `{}`)",
                    m.lines[i],
                    col_order[j] + 2,
                    m.col_labels[j]
                ),
                format!("expected {expected}, found {v}"),
            ));
        }
    }
    Ok(())
}

/// Reads the long per-subject table into (n_subjects, n_rows, n_cols), subjects in order of first
/// appearance.
fn read_subjects(path: &Path, rows: &[String], cols: &[String]) -> Result<(Array3<f64>, Vec<String>)> {
    let text = read_text(path)?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    lines.next().ok_or_else(|| {
        Error::parse(
            path,
            "line 1",
            "expected a header `subject, subcategory, region, value`, found an empty file",
        )
    })?;
    let mut subjects: Vec<String> = Vec::new();
    let mut cells: HashMap<(usize, usize, usize), usize> = HashMap::new();
    let mut entries = Vec::new();
    for (i, line) in lines {
        let ln = i + 1;
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        if f.len() != 4 {
            return Err(Error::parse(
                path,
                format!("line {ln}"),
                format!(
                    "expected 4 fields (subject, subcategory, region, value), found {}",
                    f.len()
                ),
            ));
        }
        let r = rows.iter().position(|l| l == f[1]).ok_or_else(|| {
            Error::parse(
                path,
                format!("line {ln}, column 2"),
                format!(
                    "expected a subcategory of the observed matrix {rows:?}, found `{}`",
                    f[1]
                ),
            )
        })?;
        let c = cols.iter().position(|l| l == f[2]).ok_or_else(|| {
            Error::parse(
                path,
                format!("line {ln}, column 3"),
                format!("expected a region of the observed matrix {cols:?}, found `{}`", f[2]),
            )
        })?;
        let v: f64 = f[3].parse().ok().filter(|v: &f64| v.is_finite()).ok_or_else(|| {
            Error::parse(
                path,
                format!("line {ln}, column 4"),
                format!("expected a finite number, found `{}`", f[3]),
            )
        })?;
        let s = match subjects.iter().position(|x| x == f[0]) {
            Some(s) => s,
            None => {
                subjects.push(f[0].to_string());
                subjects.len() - 1
            }
        };
        if let Some(prev) = cells.insert((s, r, c), ln) {
            return Err(Error::parse(
                path,
                format!("line {ln}"),
                format!(
                    "expected one value per subject and cell, found subject `{}`, {} × {} again (first on line {prev})",
                    f[0], f[1], f[2]
                ),
            ));
        }
        entries.push((s, r, c, v));
    }
    let expected = subjects.len() * rows.len() * cols.len();
    if entries.len() != expected {
        let missing = (0..subjects.len())
            .flat_map(|s| (0..rows.len()).flat_map(move |r| (0..cols.len()).map(move |c| (s, r, c))))
            .find(|k| !cells.contains_key(k));
        let Some((s, r, c)) = missing else {
            return Err(Error::parse(
                path,
                "whole file",
                format!("expected {expected} values (subjects × cells), found {}", entries.len()),
            ));
        };
        return Err(Error::parse(
            path,
            "whole file",
            format!(
                "expected every subject to have all {} cells, found no value for subject `{}`, {} × {}",
                rows.len() * cols.len(),
                subjects[s],
                rows[r],
                cols[c]
            ),
        ));
    }
    let mut data = Array3::zeros((subjects.len(), rows.len(), cols.len()));
    for (s, r, c, v) in entries {
        data[[s, r, c]] = v;
    }
    Ok((data, subjects))
}

/// `--voxelwise NAME=DIR …`: the observed matrix (sets × regions) and the per-subject long table,
/// written as TSV into `dir`; returns their paths.
fn voxelwise_matrices(specs: &[String], dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let mut regions: Vec<String> = Vec::new();
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut long = String::from("subject\tsubcategory\tregion\tvalue\n");
    for spec in specs {
        let (name, folder) = spec.split_once('=').ok_or_else(|| {
            Error::Invalid(format!(
                "--voxelwise: expected NAME=DIR (a feature set and its fit folder), found `{spec}`"
            ))
        })?;
        let folder = Path::new(folder);
        let summary = folder.join("voxelwise_region_summary.parquet");
        let (_, batches, _) = crate::store::parquet_io::read_parquet(&summary)?;
        let cells: Vec<(String, f64)> = text_column(&summary, &batches, "region")?
            .into_iter()
            .zip(f64_column(&summary, &batches, "mean_r")?)
            .filter(|(n, _)| n != "all")
            .collect();
        if regions.is_empty() {
            regions = cells.iter().map(|(n, _)| n.clone()).collect();
        }
        if cells.len() != regions.len() {
            return Err(Error::parse(
                &summary,
                "region",
                format!("{} regions, where the first set has {:?}", cells.len(), regions),
            ));
        }
        let mut row = Vec::with_capacity(regions.len());
        for r in &regions {
            let v = cells.iter().find(|(n, _)| n == r).map(|(_, v)| *v).ok_or_else(|| {
                Error::parse(
                    &summary,
                    format!("region `{r}`"),
                    format!("missing; the first set's regions are {regions:?}"),
                )
            })?;
            row.push(v);
        }
        rows.push((name.to_string(), row));
        let per_subject = folder.join("voxelwise_regions.parquet");
        let (_, batches, _) = crate::store::parquet_io::read_parquet(&per_subject)?;
        let subjects = text_column(&per_subject, &batches, "subject")?;
        let regs = text_column(&per_subject, &batches, "region")?;
        let means = f64_column(&per_subject, &batches, "mean_r")?;
        for ((s, r), m) in subjects.iter().zip(&regs).zip(means) {
            if r != "all" && m.is_finite() {
                long.push_str(&format!("{s}\t{name}\t{r}\t{m:e}\n"));
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut obs = format!("set\t{}\n", regions.join("\t"));
    for (name, row) in &rows {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:e}")).collect();
        obs.push_str(&format!("{name}\t{}\n", cells.join("\t")));
    }
    let (o, l) = (
        dir.join("observed_from_voxelwise.tsv"),
        dir.join("subjects_from_voxelwise.tsv"),
    );
    crate::paths::write_atomic(&o, obs.as_bytes())?;
    crate::paths::write_atomic(&l, long.as_bytes())?;
    Ok((o, l))
}

/// A column of a voxelwise fit table (utf8; nulls as "") over its batches.
fn text_column(path: &Path, batches: &[arrow::array::RecordBatch], name: &str) -> Result<Vec<String>> {
    fit_column(path, batches, name, "utf8", |a: &arrow::array::StringArray| {
        a.iter().map(|v| v.unwrap_or_default().to_string()).collect()
    })
}

/// A column of a voxelwise fit table (f64; nulls as NaN) over its batches.
fn f64_column(path: &Path, batches: &[arrow::array::RecordBatch], name: &str) -> Result<Vec<f64>> {
    fit_column(path, batches, name, "f64", |a: &arrow::array::Float64Array| {
        a.iter().map(|v| v.unwrap_or(f64::NAN)).collect()
    })
}

/// Column `name` of every batch as an `A` array (`what` names its type in the error), each turned
/// into values by `values`.
fn fit_column<A: 'static, T>(
    path: &Path,
    batches: &[arrow::array::RecordBatch],
    name: &str,
    what: &str,
    values: impl Fn(&A) -> Vec<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for b in batches {
        let c = b
            .column_by_name(name)
            .ok_or_else(|| Error::parse(path, format!("column `{name}`"), "missing: not a voxelwise fit table"))?;
        let a = c
            .as_any()
            .downcast_ref::<A>()
            .ok_or_else(|| Error::parse(path, format!("column `{name}`"), format!("expected {what}")))?;
        out.extend(values(a));
    }
    Ok(out)
}

/// Runs `cortexflow topography` (see the module docs): reads and validates every input first,
/// computes the [`TopographyReport`], renders it, and writes the Parquet table with `--out`.
pub fn run_topography(a: &TopographyArgs) -> Result<TopographySummary> {
    if !a.voxelwise.is_empty() {
        let dir = a.out.clone().unwrap_or_else(|| PathBuf::from("."));
        let (observed, subjects) = voxelwise_matrices(&a.voxelwise, &dir)?;
        let mut s = run_topography(&TopographyArgs {
            observed: Some(observed.clone()),
            voxelwise: Vec::new(),
            subjects: Some(subjects.clone()),
            ..a.clone()
        })?;
        s.files.splice(0..0, [observed, subjects]);
        return Ok(s);
    }
    let observed = a
        .observed
        .as_deref()
        .ok_or_else(|| Error::Invalid("give --observed or --voxelwise".into()))?;
    let obs = read_labelled_matrix(observed)?;
    let (rows, cols) = (obs.row_labels.clone(), obs.col_labels.clone());
    let mut notes = Vec::new();
    let mut load_aligned = |path: &Path, what: &str| -> Result<(LabelledMatrix, Vec<usize>)> {
        let m = read_labelled_matrix(path)?;
        let original_cols = m.col_labels.clone();
        let (m, moved) = align(path, m, &rows, &cols)?;
        if moved {
            notes.push(format!(
                "{what} ({}) reordered by label to the observed matrix's row and column order",
                path.display()
            ));
        }
        // file column index of each aligned column, for messages
        let col_order = cols
            .iter()
            .map(|l| original_cols.iter().position(|o| o == l).expect("aligned"))
            .collect();
        Ok((m, col_order))
    };
    let (pred, pred_cols) = load_aligned(&a.predicted, "predicted matrix")?;
    check_cells(&a.predicted, &pred, "0 or 1", |v| v == 0.0 || v == 1.0, &pred_cols)?;
    let pvals = match &a.p_values {
        Some(p) => {
            let (m, order) = load_aligned(p, "p-values")?;
            check_cells(p, &m, "a p-value in [0, 1]", |v| (0.0..=1.0).contains(&v), &order)?;
            Some(m)
        }
        None => None,
    };
    let subjects = a
        .subjects
        .as_deref()
        .map(|p| read_subjects(p, &rows, &cols))
        .transpose()?;
    let settings = TopographySettings {
        n_perm: a.permutations,
        n_boot: a.boot,
        ci_level: a.ci_level,
        fdr_q: a.fdr,
        seed: a.seed,
        same_labels: a.same_labels,
    };
    if !(settings.ci_level > 0.0 && settings.ci_level < 1.0) {
        return Err(Error::Invalid(format!(
            "--ci-level: expected a level in (0, 1), found {}",
            a.ci_level
        )));
    }
    let report = topography_report(
        obs.values.view(),
        pred.values.view(),
        pvals.as_ref().map(|m| m.values.view()),
        subjects.as_ref().map(|(d, _)| d.view()),
        &settings,
    )?;
    let text = render(&report, &rows, &cols, &pred.values, &notes);
    let mut files = Vec::new();
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("topography_tests.parquet");
        let meta = vec![
            ("cortexflow.seed".to_string(), a.seed.to_string()),
            ("cortexflow.n_perm".to_string(), a.permutations.to_string()),
            ("cortexflow.n_boot".to_string(), a.boot.to_string()),
            ("cortexflow.ci_level".to_string(), a.ci_level.to_string()),
            ("cortexflow.fdr".to_string(), a.fdr.to_string()),
            ("cortexflow.subcategories".to_string(), rows.join(",")),
            ("cortexflow.regions".to_string(), cols.join(",")),
        ];
        write_statistics_parquet(&path, &report.rows(), &meta)?;
        files.push(path);
    }
    Ok(TopographySummary {
        report,
        row_labels: rows,
        col_labels: cols,
        notes,
        text,
        files,
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.6}")).unwrap_or_else(|| "–".into())
}

/// The readable report: the matrices' labels, then one block per statistic with everything that
/// produced it.
pub fn render(
    report: &TopographyReport,
    rows: &[String],
    cols: &[String],
    predicted: &Array2<f64>,
    notes: &[String],
) -> String {
    let mut s = String::new();
    let st = &report.settings;
    let _ = writeln!(
        s,
        "topography: {} subcategories × {} regions = {} cells; {} predicted; seed {}, {} permutations, {} bootstrap resamples, {:.0}% CIs",
        report.n_rows,
        report.n_cols,
        report.n_rows * report.n_cols,
        predicted.iter().filter(|&&v| v == 1.0).count(),
        st.seed,
        st.n_perm,
        st.n_boot,
        100.0 * st.ci_level
    );
    let _ = writeln!(s, "  subcategories: {}", rows.join(", "));
    let _ = writeln!(s, "  regions: {}", cols.join(", "));
    for n in notes {
        let _ = writeln!(s, "  note: {n}");
    }
    for r in report.rows() {
        let _ = writeln!(s, "{}", r.statistic);
        let _ = write!(s, "  value {:.6}", r.value);
        if let Some(p) = r.p_value {
            let _ = write!(s, "   p {p:.6e}");
        }
        if r.ci_lower.is_some() || r.ci_upper.is_some() {
            let _ = write!(s, "   CI [{}, {}]", fmt_opt(r.ci_lower), fmt_opt(r.ci_upper));
        }
        let _ = writeln!(s);
        let mut parts = Vec::new();
        if let (Some(n), Some(u)) = (r.n, &r.unit) {
            parts.push(format!("n = {n} {u}"));
        }
        if let (Some(d1), Some(d2)) = (r.df1, r.df2) {
            parts.push(format!("df = ({d1}, {d2})"));
        }
        if let Some(np) = r.n_perm {
            parts.push(format!("{np} permutations"));
        }
        if let Some(alt) = &r.alternative {
            parts.push(format!("alternative {alt}"));
        }
        if !parts.is_empty() {
            let _ = writeln!(s, "  {}", parts.join("; "));
        }
        if let Some(t) = &r.tie_rule {
            let _ = writeln!(s, "  ties: {t}");
        }
        if let Some(n) = &r.note {
            let _ = writeln!(s, "  {n}");
        }
    }
    if let Some(cs) = &report.cells {
        let _ = writeln!(
            s,
            "cells (q = BH-adjusted p; * significant at q ≤ {}, P predicted):",
            cs.fdr_q
        );
        for (i, r) in rows.iter().enumerate() {
            let cells: Vec<String> = (0..cols.len())
                .map(|j| {
                    format!(
                        "{}={:.4}{}{}",
                        cols[j],
                        cs.q_values[[i, j]],
                        if cs.significant[[i, j]] { "*" } else { "" },
                        if predicted[[i, j]] == 1.0 { "P" } else { "" }
                    )
                })
                .collect();
            let _ = writeln!(s, "  {r}: {}", cells.join("  "));
        }
    }
    s
}
