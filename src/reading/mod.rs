//! Reading behaviour (METHOD.md §8): linear mixed models of reading times.
//!
//! * [`formula`]: lme4-style formulas (`rt ~ length + (1 + length | subject) + (1 | item)`).
//! * [`frame`]: CSV/TSV/Parquet tables with typed access and precise errors.
//! * [`lmm`]: ML/REML fits by the profiled deviance (as lme4), likelihood-ratio tests.
//! * [`inputs`]: stories' words, reading times joined by position (with a report of what was
//!   left out and why), sentences and part of speech from parses, lexical controls.
//! * [`analysis`]: SAE feature evidence and selection, principal components, random-subset and
//!   norm controls, likelihood-ratio comparisons with the baseline.
//! * [`section`]: the `[reading]` section of a pipeline file and its inputs, checked and joined
//!   (run by `cortexflow run pipelines/natural-stories.toml`: the stages are `stages::reading`,
//!   the tables `outputs::reading_tables`).
//! * [`model_from_frame`]: formula + table → the matrices [`lmm::fit_lmm`] takes, with rows that
//!   have a missing value counted and reported, never silently dropped.
//!
//! May import: `sae`, `encoding`, `store`, `stimulus`, `stats`, `error` (the reading-time
//! stages that run these in the dataflow are `stages::reading`).

pub mod analysis;
pub mod formula;
pub mod frame;
pub mod inputs;
pub mod lmm;
pub mod section;

use ndarray::Array2;

pub use formula::{parse_formula, Formula, RandomTerm};
pub use frame::Frame;
pub use lmm::{fit_lmm, likelihood_ratio_test, Convergence, LmmFit, LmmOptions, Optimizer, TermData};

use crate::Result;

/// The model matrices of a formula on a table.
#[derive(Debug, Clone)]
pub struct ModelData {
    pub y: Vec<f64>,
    /// (n_used, p)
    pub x: Array2<f64>,
    pub fixed_names: Vec<String>,
    pub terms: Vec<TermData>,
    /// Data rows (0-based) used.
    pub rows: Vec<usize>,
    /// Rows left out because a variable of the model is missing there: (column, count).
    pub excluded: Vec<(String, usize)>,
}

/// Builds the matrices of `f` on `frame`: rows with a missing cell (see [`frame::MISSING`]) in any
/// variable of the model are left out and counted per column (first missing column of the row);
/// a non-numeric value in a numeric column is an error naming file, row and column.
pub fn model_from_frame(frame: &Frame, f: &Formula) -> Result<ModelData> {
    let resp = frame.column(&f.response)?;
    let fixed: Vec<usize> = f.fixed.iter().map(|c| frame.column(c)).collect::<Result<_>>()?;
    let mut numeric = vec![resp];
    numeric.extend(&fixed);
    let mut group_cols = Vec::new();
    for t in &f.random {
        group_cols.push(frame.column(&t.group)?);
        for s in &t.slopes {
            numeric.push(frame.column(s)?);
        }
    }
    let all: Vec<usize> = numeric.iter().chain(&group_cols).copied().collect();
    let mut excluded: Vec<(String, usize)> = Vec::new();
    let mut rows = Vec::new();
    for i in 0..frame.n_rows() {
        match all.iter().find(|&&c| frame.is_missing(c, i)) {
            Some(&c) => match excluded.iter_mut().find(|(n, _)| n == &frame.columns[c]) {
                Some(e) => e.1 += 1,
                None => excluded.push((frame.columns[c].clone(), 1)),
            },
            None => rows.push(i),
        }
    }
    let y: Vec<f64> = rows.iter().map(|&i| frame.number(resp, i)).collect::<Result<_>>()?;
    let p = usize::from(f.intercept) + fixed.len();
    let mut x = Array2::<f64>::zeros((rows.len(), p));
    for (r, &i) in rows.iter().enumerate() {
        let mut c0 = 0;
        if f.intercept {
            x[[r, 0]] = 1.0;
            c0 = 1;
        }
        for (k, &c) in fixed.iter().enumerate() {
            x[[r, c0 + k]] = frame.number(c, i)?;
        }
    }
    let mut terms = Vec::new();
    for (t, &g) in f.random.iter().zip(&group_cols) {
        let (level, levels) = frame.factor(g, &rows);
        let mut z = Array2::<f64>::zeros((rows.len(), t.dim()));
        let slope_cols: Vec<usize> = t.slopes.iter().map(|s| frame.column(s)).collect::<Result<_>>()?;
        for (r, &i) in rows.iter().enumerate() {
            let mut c0 = 0;
            if t.intercept {
                z[[r, 0]] = 1.0;
                c0 = 1;
            }
            for (k, &c) in slope_cols.iter().enumerate() {
                z[[r, c0 + k]] = frame.number(c, i)?;
            }
        }
        terms.push(TermData {
            name: t.group.clone(),
            effect_names: t.effect_names(),
            level,
            n_levels: levels.len(),
            z,
        });
    }
    Ok(ModelData {
        y,
        x,
        fixed_names: f.fixed_names(),
        terms,
        rows,
        excluded,
    })
}
