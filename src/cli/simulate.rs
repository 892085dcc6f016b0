//! `cortexflow simulate`: BOLD-like responses with planted weights, HRF and noise at a chosen SNR
//! ([`crate::encoding::simulate`]), so the encoding chain can be checked against known truth.
//!
//! Design source, one of:
//! * `--design X` (n_trs, n_features), already aligned to TRs;
//! * `--word-features F --onsets O` (n_words, n_features) and (n_words,) seconds, aligned to the TR
//!   grid (`--tr`, `--n-trs`, `--t0`) by HRF convolution + TR averaging (`--alignment hrf`, the
//!   paper's) or Lanczos downsampling + FIR delays (`--alignment lanczos-fir`);
//! * neither: `--n-words` random words (uniform onsets over the run, standard-normal features)
//!   with `--n-features` features, aligned as above.
//!
//! Output folder: design.npy (n_trs, n_design_columns), responses.npy and signal.npy (n_trs,
//! n_targets), weights.npy (n_design_columns, n_targets), truth.parquet (per target: noise-free
//! ceiling r and the planted R² share of each group), simulation.json (the parameters).

use std::path::PathBuf;

use ndarray::Array2;
use serde_json::json;

use crate::encoding::simulate::{simulate_responses, SimulationOptions};
use crate::features::lanczos::{lanczos_fir_design, tr_mid_times_s, DEFAULT_FIR_DELAYS, DEFAULT_LANCZOS_WINDOW};
use crate::features::{words_to_trs, zscore, TrGrid, DEFAULT_DT_S};
use crate::stats::SplitMix64;
use crate::store::{read_matrix, write_matrix, write_npy};
use crate::{Error, Result};

/// Arguments of `cortexflow simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Per-TR design (n_trs, n_features), .npy or .parquet.
    #[arg(long, conflicts_with_all = ["word_features", "onsets"])]
    pub design: Option<PathBuf>,
    /// Per-word features (n_words, n_features), .npy or .parquet; needs --onsets.
    #[arg(long, requires = "onsets")]
    pub word_features: Option<PathBuf>,
    /// Word onsets in seconds of stimulus time (n_words, one column).
    #[arg(long, requires = "word_features")]
    pub onsets: Option<PathBuf>,
    /// Random words when no design or word features are given.
    #[arg(long, default_value_t = 3000)]
    pub n_words: usize,
    /// Features of the random words.
    #[arg(long, default_value_t = 20)]
    pub n_features: usize,
    /// Alignment of word features: hrf (HRF convolution + TR averaging) or lanczos-fir (Lanczos
    /// window 3 to TR midpoints, then FIR delays 1–4 TRs).
    #[arg(long, default_value = "hrf")]
    pub alignment: String,
    /// Repetition time, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub tr: f64,
    /// Number of TRs (default with word input: enough to cover the last onset + 20 s).
    #[arg(long)]
    pub n_trs: Option<usize>,
    /// Stimulus time at which TR 0 starts, seconds.
    #[arg(long, default_value_t = 0.0)]
    pub t0: f64,
    #[arg(long, default_value_t = 100)]
    pub n_targets: usize,
    /// var(signal) / var(noise) per target.
    #[arg(long, default_value_t = 0.5)]
    pub snr: f64,
    /// Probability that a planted weight is nonzero.
    #[arg(long, default_value_t = 0.3)]
    pub density: f64,
    /// AR(1) coefficient of the noise.
    #[arg(long, default_value_t = 0.4)]
    pub noise_ar1: f64,
    /// Feature groups: one 0-based label per input feature, comma-separated (default: one group).
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<usize>,
    /// Relative signal variance per group, comma-separated (default: equal).
    #[arg(long, value_delimiter = ',')]
    pub group_shares: Vec<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder.
    #[arg(long, default_value = "out/simulate")]
    pub out: PathBuf,
}

/// What [`run_simulate`] wrote.
#[derive(Debug, Clone)]
pub struct SimulateSummary {
    pub n_trs: usize,
    pub n_design_columns: usize,
    pub n_targets: usize,
    pub mean_ceiling_r: f64,
    pub files: Vec<PathBuf>,
}

/// Runs `cortexflow simulate` (all inputs validated before anything is written).
pub fn run_simulate(a: &SimulateArgs) -> Result<SimulateSummary> {
    let mut groups = a.groups.clone();
    let design: Array2<f64> = match &a.design {
        Some(p) => read_matrix(p)?.values,
        None => {
            let (onsets, values) = match (&a.word_features, &a.onsets) {
                (Some(fp), Some(op)) => {
                    let v = read_matrix(fp)?.values;
                    let o = read_matrix(op)?.values;
                    if o.nrows() != v.nrows() {
                        return Err(Error::Invalid(format!(
                            "{} has {} onsets but {} has {} rows",
                            op.display(),
                            o.nrows(),
                            fp.display(),
                            v.nrows()
                        )));
                    }
                    (o.column(0).to_vec(), v)
                }
                _ => random_words(a)?,
            };
            let n_trs = a.n_trs.unwrap_or_else(|| {
                let last = onsets.iter().copied().fold(a.t0, f64::max);
                ((last + 20.0 - a.t0) / a.tr).ceil().max(1.0) as usize
            });
            let grid = TrGrid::new(n_trs, a.tr, a.t0)?;
            match a.alignment.as_str() {
                "hrf" => zscore(words_to_trs(&onsets, values.view(), &grid, DEFAULT_DT_S).view()),
                "lanczos-fir" => {
                    let d = lanczos_fir_design(
                        &onsets,
                        values.view(),
                        &tr_mid_times_s(&grid),
                        DEFAULT_LANCZOS_WINDOW,
                        &DEFAULT_FIR_DELAYS,
                    )?;
                    if !groups.is_empty() {
                        // each delay repeats the feature columns
                        groups = DEFAULT_FIR_DELAYS.iter().flat_map(|_| groups.iter().copied()).collect();
                    }
                    zscore(d.view())
                }
                other => {
                    return Err(Error::Invalid(format!(
                        "--alignment: expected hrf or lanczos-fir, found {other:?}"
                    )))
                }
            }
        }
    };
    let opts = SimulationOptions {
        n_targets: a.n_targets,
        snr: a.snr,
        density: a.density,
        noise_ar1: a.noise_ar1,
        groups,
        group_shares: a.group_shares.clone(),
        seed: a.seed,
    };
    let sim = simulate_responses(design.view(), &opts)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::Io {
        path: a.out.clone(),
        source: e,
    })?;
    let mut files = Vec::new();
    for (name, m) in [
        ("design.npy", &design),
        ("responses.npy", &sim.responses),
        ("signal.npy", &sim.signal),
        ("weights.npy", &sim.weights),
    ] {
        let p = a.out.join(name);
        write_npy(&p, m.view())?;
        files.push(p);
    }
    let n_groups = sim.group_r2.nrows();
    let mut truth = Array2::<f64>::zeros((a.n_targets, 1 + n_groups));
    let mut names = vec!["ceiling_r".to_string()];
    names.extend((0..n_groups).map(|g| format!("group{g}_r2")));
    for j in 0..a.n_targets {
        truth[[j, 0]] = sim.ceiling_r[j];
        for g in 0..n_groups {
            truth[[j, 1 + g]] = sim.group_r2[[g, j]];
        }
    }
    let p = a.out.join("truth.parquet");
    write_matrix(&p, truth.view(), Some(&names))?;
    files.push(p);
    let mean_ceiling_r = sim.ceiling_r.iter().sum::<f64>() / sim.ceiling_r.len() as f64;
    let meta = json!({
        "n_trs": design.nrows(), "n_design_columns": design.ncols(), "n_targets": a.n_targets,
        "snr": a.snr, "density": a.density, "noise_ar1": a.noise_ar1, "seed": a.seed,
        "groups": opts.groups, "group_shares": a.group_shares, "alignment": a.alignment,
        "tr_s": a.tr, "t0_s": a.t0, "mean_ceiling_r": mean_ceiling_r,
        "model": "y_j = sum_g sqrt(snr*share_g) * s_gj + AR(1) noise (unit variance); s_gj = X_g w_gj / sd",
    });
    let p = a.out.join("simulation.json");
    crate::paths::write_atomic(&p, serde_json::to_string_pretty(&meta).expect("json").as_bytes())?;
    files.push(p);
    Ok(SimulateSummary {
        n_trs: design.nrows(),
        n_design_columns: design.ncols(),
        n_targets: a.n_targets,
        mean_ceiling_r,
        files,
    })
}

/// Random words: onsets uniform over the run (sorted), standard-normal features.
fn random_words(a: &SimulateArgs) -> Result<(Vec<f64>, Array2<f64>)> {
    if a.n_words == 0 || a.n_features == 0 {
        return Err(Error::Invalid(format!(
            "simulate: expected --n-words and --n-features ≥ 1, found {} and {}",
            a.n_words, a.n_features
        )));
    }
    let n_trs = a.n_trs.unwrap_or(a.n_words / 2);
    let duration = n_trs as f64 * a.tr;
    // a stream separate from the simulation's
    let mut rng = SplitMix64::new(a.seed ^ 0x5752_4f52_4453);
    let mut onsets: Vec<f64> = (0..a.n_words).map(|_| a.t0 + rng.next_f64() * duration).collect();
    onsets.sort_by(f64::total_cmp);
    let values = Array2::from_shape_simple_fn((a.n_words, a.n_features), || rng.normal());
    Ok((onsets, values))
}
