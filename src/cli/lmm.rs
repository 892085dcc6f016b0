//! `cortexflow lmm`: a linear mixed model on any CSV/TSV/Parquet table with an lme4-style
//! formula, fitted by ML (default) or REML, optionally compared with a nested model by a
//! likelihood-ratio test; results as Parquet + JSON so they can be set beside lme4's.
//!
//! Output folder: fixed.parquet (term, estimate, se, t), random.parquet (group, effect_1,
//! effect_2, covariance: the lower triangle of each term's covariance matrix, and the residual
//! variance as group "Residual"), fit.json (log-likelihood, deviance, AIC, BIC, θ, rows used and
//! rows excluded per column, the optimizer, its evaluations and lme4's convergence checks: gradient,
//! singular fit, boundary θ, messages; the likelihood-ratio test when --compare is given).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::json;

use crate::reading::{fit_lmm, likelihood_ratio_test, model_from_frame, parse_formula, Frame, LmmFit, LmmOptions};
use crate::store::write_parquet_atomic;
use crate::{Error, Result};

/// Arguments of `cortexflow lmm`.
#[derive(Debug, Clone, clap::Args)]
pub struct LmmArgs {
    /// Table: .csv, .tsv or .parquet with a header; missing values: empty, NA, NaN, null.
    #[arg(long)]
    pub data: PathBuf,
    /// lme4-style formula, e.g. "rt ~ length + freq + (1 + length | subject) + (1 | item)".
    #[arg(long)]
    pub formula: String,
    /// A nested (smaller) formula: both are fitted by ML on the rows complete for the larger one
    /// and compared by a likelihood-ratio test.
    #[arg(long)]
    pub compare: Option<String>,
    /// Fit by REML instead of ML (not with --compare).
    #[arg(long, conflicts_with = "compare")]
    pub reml: bool,
    /// Output folder.
    #[arg(long, default_value = "out/lmm")]
    pub out: PathBuf,
}

/// What [`run_lmm`] computed.
#[derive(Debug, Clone)]
pub struct LmmSummary {
    pub fit: LmmFit,
    pub excluded: Vec<(String, usize)>,
    /// (Δ log L, χ², df, p) when --compare was given.
    pub lrt: Option<(f64, f64, usize, f64)>,
    pub seconds: f64,
    pub files: Vec<PathBuf>,
}

pub fn run_lmm(a: &LmmArgs) -> Result<LmmSummary> {
    let formula = parse_formula(&a.formula)?;
    let smaller = a.compare.as_deref().map(parse_formula).transpose()?;
    let frame = Frame::read(&a.data)?;
    let md = model_from_frame(&frame, &formula)?;
    let opts = LmmOptions {
        reml: a.reml,
        ..Default::default()
    };
    let started = Instant::now();
    let fit = fit_lmm(&md.y, md.x.view(), &md.fixed_names, &md.terms, &opts)?;
    let lrt = match &smaller {
        Some(f0) => {
            // the smaller model on exactly the rows of the larger one
            let mut sub = frame.clone();
            for c in 0..sub.cells.len() {
                sub.cells[c] = md.rows.iter().map(|&i| frame.cells[c][i].clone()).collect();
            }
            sub.file_rows = md.rows.iter().map(|&i| frame.file_rows[i]).collect();
            let md0 = model_from_frame(&sub, f0)?;
            if md0.rows.len() != md.rows.len() {
                return Err(Error::Invalid(format!(
                    "--compare: the smaller model uses a column with missing values on {} rows the larger model keeps; \
                     the models are not nested",
                    md.rows.len() - md0.rows.len()
                )));
            }
            let fit0 = fit_lmm(&md0.y, md0.x.view(), &md0.fixed_names, &md0.terms, &opts)?;
            Some((fit0.clone(), likelihood_ratio_test(&fit0, &fit)?))
        }
        None => None,
    };
    let seconds = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let mut files = Vec::new();

    let fixed_schema = Arc::new(Schema::new(vec![
        Field::new("term", DataType::Utf8, false),
        Field::new("estimate", DataType::Float64, false),
        Field::new("se", DataType::Float64, false),
        Field::new("t", DataType::Float64, false),
    ]));
    let fixed = RecordBatch::try_new(
        fixed_schema,
        vec![
            Arc::new(StringArray::from(fit.fixed_names.clone())) as ArrayRef,
            Arc::new(Float64Array::from(fit.beta.clone())),
            Arc::new(Float64Array::from(fit.se.clone())),
            Arc::new(Float64Array::from(fit.t.clone())),
        ],
    )
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let (mut g, mut e1, mut e2, mut v) = (vec![], vec![], vec![], vec![]);
    for (name, effects, cov) in &fit.covariances {
        for i in 0..effects.len() {
            for j in 0..=i {
                g.push(name.clone());
                e1.push(effects[i].clone());
                e2.push(effects[j].clone());
                v.push(cov[[i, j]]);
            }
        }
    }
    g.push("Residual".into());
    e1.push(String::new());
    e2.push(String::new());
    v.push(fit.sigma2);
    let random_schema = Arc::new(Schema::new(vec![
        Field::new("group", DataType::Utf8, false),
        Field::new("effect_1", DataType::Utf8, false),
        Field::new("effect_2", DataType::Utf8, false),
        Field::new("covariance", DataType::Float64, false),
    ]));
    let random = RecordBatch::try_new(
        random_schema,
        vec![
            Arc::new(StringArray::from(g)) as ArrayRef,
            Arc::new(StringArray::from(e1)),
            Arc::new(StringArray::from(e2)),
            Arc::new(Float64Array::from(v)),
        ],
    )
    .map_err(|e| Error::Invalid(e.to_string()))?;
    let meta = vec![
        ("cortexflow.formula".to_string(), a.formula.clone()),
        (
            "cortexflow.method".to_string(),
            if a.reml { "REML" } else { "ML" }.to_string(),
        ),
    ];
    for (name, b) in [("fixed.parquet", fixed), ("random.parquet", random)] {
        let p = a.out.join(name);
        write_parquet_atomic(&p, &[b], &meta)?;
        files.push(p);
    }
    let report = json!({
        "formula": a.formula,
        "method": if a.reml { "REML" } else { "ML" },
        "log_likelihood": fit.log_likelihood,
        "deviance": fit.deviance,
        "aic": fit.aic,
        "bic": fit.bic,
        "theta": fit.theta,
        "sigma2": fit.sigma2,
        "n_obs": fit.n_obs,
        "n_levels": fit.n_levels,
        "rows_in_file": frame.n_rows(),
        "rows_excluded_for_missing_values": md.excluded,
        "n_params": fit.n_params,
        "deviance_evaluations": fit.n_evals,
        "deviance_evaluations_checks": fit.n_evals_checks,
        "optimizer": fit.optimizer,
        "converged": fit.converged,
        "convergence": fit.convergence,
        "seconds": seconds,
        "likelihood_ratio_test": lrt.as_ref().map(|(f0, (dll, chi2, df, p))| json!({
            "smaller": a.compare, "log_likelihood_smaller": f0.log_likelihood,
            "delta_log_likelihood": dll, "chi2": chi2, "df": df, "p": p,
        })),
    });
    let p = a.out.join("fit.json");
    crate::paths::write_atomic(&p, serde_json::to_string_pretty(&report).expect("json").as_bytes())?;
    files.push(p);
    Ok(LmmSummary {
        fit,
        excluded: md.excluded,
        lrt: lrt.map(|(_, t)| t),
        seconds,
        files,
    })
}
