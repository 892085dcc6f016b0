//! `cortexflow ridge`: ridge regression with a penalty per target chosen by K-fold CV, on any
//! design and responses given as `.npy` or Parquet, so results can be compared with other tools
//! (himalaya's `solve_ridge_cv_svd` with its defaults: contiguous `KFold`, `l2_neg_loss`, no
//! intercept).
//!
//! Input: X (n_train, n_features), Y (n_train, n_targets), optionally X_test / Y_test.
//! Output: a `ridge_cv` Parquet table (data-schemas/ridge_cv.json), one row per target, and
//! optionally the refitted weights (n_features, n_targets) and test predictions as `.npy`/Parquet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};

use crate::encoding::banded::{dirichlet_gammas, solve_banded_ridge_random_search};
use crate::encoding::ridge::{apply_zscore, ridge_cv_precision, score_per_target, ScorePrecision};
use crate::encoding::{contiguous_block_folds, default_alphas, leave_groups_out_folds, AlphaCriterion, RidgeMethod};
use crate::stats::zscore_columns;
use crate::store::{read_matrix, write_matrix, write_table_parquet, TableSchema};
use crate::{Error, Result};

/// Arguments of `cortexflow ridge`.
#[derive(Debug, Clone, clap::Args)]
pub struct RidgeArgs {
    /// Training design X (n_samples, n_features): .npy or .parquet (numeric columns).
    #[arg(long = "x")]
    pub x: PathBuf,
    /// Training responses Y (n_samples, n_targets): .npy or .parquet.
    #[arg(long = "y")]
    pub y: PathBuf,
    /// Test design; with --y-test, held-out r and R² are reported per target.
    #[arg(long, requires = "y_test")]
    pub x_test: Option<PathBuf>,
    /// Test responses.
    #[arg(long, requires = "x_test")]
    pub y_test: Option<PathBuf>,
    /// Penalties, comma-separated (default: 13 values 10^0 … 10^6 in half decades).
    #[arg(long, value_delimiter = ',')]
    pub alphas: Vec<f64>,
    /// Number of CV folds: contiguous blocks in row order (scikit-learn's KFold without shuffling).
    #[arg(long, default_value_t = 5)]
    pub cv: usize,
    /// Rows left out of training on each side of a test block (0: plain KFold).
    #[arg(long, default_value_t = 0)]
    pub gap: usize,
    /// One group label per training row (.npy or .parquet, first column, integers): folds leave
    /// whole groups out (e.g. stories), dealt round-robin in label order, instead of blocks.
    #[arg(long)]
    pub groups: Option<PathBuf>,
    /// Penalty criterion: neg-mse (himalaya's default l2_neg_loss), r2 or pearson.
    #[arg(long, default_value = "neg-mse")]
    pub criterion: String,
    /// Decomposition: auto (gram when n_samples ≥ n_features, else kernel), svd (thin SVD of X,
    /// the most accurate), gram (eigendecomposition of XᵀX), kernel (of XXᵀ).
    #[arg(long, default_value = "auto")]
    pub method: String,
    /// Score every penalty's held-out predictions from float64 products. Without it, they come
    /// from float32 products (about twice as fast) and every target whose best two penalties are
    /// within 1e-4 of each other (for neg-mse: 1e-4 × the target's mean square) is scored again
    /// in float64, so the chosen α is the same.
    #[arg(long)]
    pub exact_scores: bool,
    /// Z-score X and Y columns with the training rows' statistics first (the test rows with the
    /// same statistics; predictions are reported in z units). Without it, pass centred data: no
    /// intercept is fitted.
    #[arg(long)]
    pub zscore: bool,
    /// Output table (.parquet).
    #[arg(long, default_value = "ridge_cv.parquet")]
    pub out: PathBuf,
    /// Also write the refitted weights (n_features, n_targets) here (.npy or .parquet).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Also write the test predictions (n_test, n_targets) here (.npy or .parquet).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Banded ridge: sizes of consecutive column bands (feature spaces), e.g. 60,40; one penalty
    /// per band by random search over band weights γ (himalaya's solve_group_ridge_random_search).
    #[arg(long, value_delimiter = ',')]
    pub bands: Vec<usize>,
    /// Banded ridge: candidate band weights (n_candidates, n_bands), rows on the simplex, .npy or
    /// .parquet (default: --n-iter candidates, the first uniform, then Dirichlet draws).
    #[arg(long, requires = "bands")]
    pub gammas: Option<PathBuf>,
    /// Banded ridge: number of random candidates when --gammas is not given.
    #[arg(long, default_value_t = 20)]
    pub n_iter: usize,
    /// Banded ridge: seed of the random candidates.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Banded ridge: write ln(γ_b / α) per band and target (n_bands, n_targets) here.
    #[arg(long, requires = "bands")]
    pub deltas: Option<PathBuf>,
    /// Worker threads (results do not depend on it; default: all cores).
    #[arg(short = 'w', long)]
    pub threads: Option<usize>,
}

/// What [`run_ridge`] computed, for the caller's summary line.
#[derive(Debug, Clone)]
pub struct RidgeSummary {
    pub n_samples: usize,
    pub n_features: usize,
    pub n_targets: usize,
    pub n_folds: usize,
    /// "Svd", "Kernel" or "banded (…)".
    pub method: String,
    /// How the penalties were scored: "float64 scores", or "float32 scores, N rescored in float64".
    pub scores: String,
    pub median_alpha: f64,
    pub mean_test_r: Option<f64>,
    pub seconds: f64,
}

fn parse_method(name: &str) -> Result<RidgeMethod> {
    match name {
        "auto" => Ok(RidgeMethod::Auto),
        "svd" => Ok(RidgeMethod::Svd),
        "kernel" => Ok(RidgeMethod::Kernel),
        "gram" => Ok(RidgeMethod::Gram),
        other => Err(Error::Invalid(format!(
            "--method: expected auto, svd, gram or kernel, found {other:?}"
        ))),
    }
}

/// Runs `cortexflow ridge`: validates every input before computing, writes outputs atomically.
pub fn run_ridge(a: &RidgeArgs) -> Result<RidgeSummary> {
    let criterion = AlphaCriterion::parse(&a.criterion)?;
    let method = parse_method(&a.method)?;
    let alphas = if a.alphas.is_empty() {
        default_alphas()
    } else {
        a.alphas.clone()
    };
    let x = read_matrix(&a.x)?.values;
    let ym = read_matrix(&a.y)?;
    let (mut x, mut y, names) = (x, ym.values, ym.columns);
    if x.nrows() != y.nrows() {
        return Err(Error::Invalid(format!(
            "{} has {} rows but {} has {} (expected one row per sample in both)",
            a.x.display(),
            x.nrows(),
            a.y.display(),
            y.nrows()
        )));
    }
    let test = match (&a.x_test, &a.y_test) {
        (Some(xp), Some(yp)) => {
            let (xt, yt) = (read_matrix(xp)?.values, read_matrix(yp)?.values);
            if xt.ncols() != x.ncols() || yt.ncols() != y.ncols() || xt.nrows() != yt.nrows() {
                return Err(Error::Invalid(format!(
                    "test shapes X {:?}, Y {:?} do not match training X {:?}, Y {:?} (same columns, same row counts \
                     expected)",
                    xt.dim(),
                    yt.dim(),
                    x.dim(),
                    y.dim()
                )));
            }
            Some((xt, yt))
        }
        _ => None,
    };
    let folds = match &a.groups {
        Some(p) => {
            let g = read_matrix(p)?.values;
            if g.nrows() != x.nrows() {
                return Err(Error::Invalid(format!(
                    "{}: {} group labels for {} training rows",
                    p.display(),
                    g.nrows(),
                    x.nrows()
                )));
            }
            let labels: Vec<usize> = g
                .column(0)
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    if v >= 0.0 && v.fract() == 0.0 {
                        Ok(v as usize)
                    } else {
                        Err(Error::Parse {
                            path: p.clone(),
                            location: format!("row {i}, column 0"),
                            message: format!("expected a non-negative integer group label, found {v}"),
                        })
                    }
                })
                .collect::<Result<_>>()?;
            leave_groups_out_folds(&labels, a.cv)?
        }
        None => contiguous_block_folds(x.nrows(), a.cv, a.gap)?,
    };
    let mut test = test;
    if a.zscore {
        let xs = zscore_columns(x.view_mut());
        let ys = zscore_columns(y.view_mut());
        if let Some((xt, yt)) = test.as_mut() {
            apply_zscore(xt.view_mut(), &xs);
            apply_zscore(yt.view_mut(), &ys);
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::Invalid(format!("thread pool: {e}")))?;
    let banded = if a.bands.is_empty() {
        None
    } else {
        if a.bands.iter().sum::<usize>() != x.ncols() || a.bands.contains(&0) {
            return Err(Error::Invalid(format!(
                "--bands {:?}: expected positive band sizes summing to the {} columns of X",
                a.bands,
                x.ncols()
            )));
        }
        let labels: Vec<usize> = a
            .bands
            .iter()
            .enumerate()
            .flat_map(|(b, &k)| std::iter::repeat(b).take(k))
            .collect();
        let gammas = match &a.gammas {
            Some(p) => read_matrix(p)?.values,
            None => dirichlet_gammas(a.n_iter, a.bands.len(), &[0.1, 1.0], a.seed)?,
        };
        if gammas.ncols() != a.bands.len() {
            return Err(Error::Invalid(format!(
                "{}: {} band weights per candidate for {} bands",
                a.gammas.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                gammas.ncols(),
                a.bands.len()
            )));
        }
        Some((labels, gammas))
    };
    let started = Instant::now();
    let t = y.ncols();
    let precision = if a.exact_scores {
        ScorePrecision::Exact
    } else {
        ScorePrecision::Fast
    };
    let mut scores_note = "float64 scores".to_string();
    let (best, cv_score, pred, weights, method_name, deltas) = pool.install(|| -> Result<_> {
        match &banded {
            None => {
                let cv = ridge_cv_precision(x.view(), y.view(), &alphas, &folds, criterion, method, precision)?;
                if precision == ScorePrecision::Fast {
                    scores_note = format!("float32 scores, {} of {t} targets rescored in float64", cv.rescored);
                }
                let pred = match &test {
                    Some((xt, _)) => Some(cv.predict(xt.view())?),
                    None => None,
                };
                let w = if a.weights.is_some() { Some(cv.weights()?) } else { None };
                let cv_score: Vec<f64> = (0..t).map(|j| cv.cv_scores[[cv.best_alpha_index[j], j]]).collect();
                Ok((
                    cv.best_alphas(),
                    cv_score,
                    pred,
                    w,
                    format!("{:?}", cv.path.method()),
                    None,
                ))
            }
            Some((labels, gammas)) => {
                let r = solve_banded_ridge_random_search(
                    x.view(),
                    y.view(),
                    labels,
                    gammas.view(),
                    &alphas,
                    &folds,
                    criterion,
                )?;
                let pred = match &test {
                    Some((xt, _)) => Some(r.predict(xt.view())?),
                    None => None,
                };
                let best: Vec<f64> = r.best_alpha_index.iter().map(|&i| alphas[i]).collect();
                let cv_score: Vec<f64> = (0..t).map(|j| r.cv_scores[[r.best_gamma_index[j], j]]).collect();
                let name = format!("banded ({} bands, {} candidates)", gammas.ncols(), gammas.nrows());
                Ok((best, cv_score, pred, Some(r.weights), name, Some(r.deltas)))
            }
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();

    let (test_r, test_r2): (Vec<Option<f64>>, Vec<Option<f64>>) = match (&pred, &test) {
        (Some(p), Some((_, yt))) => {
            let r = score_per_target(AlphaCriterion::Pearson, p.view(), yt.view());
            let r2 = score_per_target(AlphaCriterion::R2, p.view(), yt.view());
            let f = |v: Vec<f64>| v.into_iter().map(|x| x.is_finite().then_some(x)).collect();
            (f(r), f(r2))
        }
        _ => (vec![None; t], vec![None; t]),
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(names.clone())),
        Arc::new(UInt32Array::from((0..t as u32).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(best.clone())),
        Arc::new(Float64Array::from(cv_score)),
        Arc::new(Float64Array::from(test_r.clone())),
        Arc::new(Float64Array::from(test_r2)),
    ];
    let schema = TableSchema::builtin("ridge_cv")?;
    let arrow_schema = Arc::new(schema.to_arrow(&Default::default())?);
    let batch = RecordBatch::try_new(arrow_schema, cols).map_err(|e| Error::Invalid(format!("ridge_cv table: {e}")))?;
    let meta = vec![
        ("cortexflow.criterion".to_string(), a.criterion.clone()),
        ("cortexflow.alphas".to_string(), format!("{alphas:?}")),
        (
            "cortexflow.folds".to_string(),
            match &a.groups {
                Some(_) => format!("leave-groups-out, {} folds", a.cv),
                None => format!("{} contiguous blocks, gap {}", a.cv, a.gap),
            },
        ),
        ("cortexflow.method".to_string(), method_name.clone()),
        ("cortexflow.scores".to_string(), scores_note.clone()),
    ];
    if let (Some(p), Some(w)) = (&a.weights, &weights) {
        write_matrix(p, w.view(), Some(&names))?;
    }
    if let (Some(p), Some(d)) = (&a.deltas, &deltas) {
        write_matrix(p, d.view(), Some(&names))?;
    }
    if let (Some(p), Some(pred)) = (&a.predictions, &pred) {
        write_matrix(p, pred.view(), Some(&names))?;
    }
    write_table_parquet(&a.out, &schema, &Default::default(), &[batch], &meta)?;
    let mut sorted = best;
    sorted.sort_by(f64::total_cmp);
    let rs: Vec<f64> = test_r.iter().flatten().copied().collect();
    Ok(RidgeSummary {
        n_samples: x.nrows(),
        n_features: x.ncols(),
        n_targets: t,
        n_folds: folds.len(),
        method: method_name,
        scores: scores_note,
        median_alpha: sorted[sorted.len() / 2],
        mean_test_r: (!rs.is_empty()).then(|| rs.iter().sum::<f64>() / rs.len() as f64),
        seconds,
    })
}
