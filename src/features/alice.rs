//! The Alice in Wonderland fMRI data set (Brennan et al. 2016): file locations, and the
//! alignment of the stimulus TextGrid (stimulus time, seconds) to the 362-TR brain series,
//! established from the data.
//!
//! **Timing.** The audio starts with 20 s of silence (words from 20.06 s on). Scanning started with
//! the audio (see the evidence below); the first 10 volumes (10 × 2 s = 20 s) were discarded, so
//! TR 0 of every file covers stimulus time `[20 s, 22 s)`: [`ALICE_T0_S`].
//!
//! **Evidence** ([`alice_alignment`], all 20 subjects; the rate files differ between subjects only
//! in the 4th significant digit, so the numbers agree to ±0.001). We convolve impulses at the 2,127
//! TextGrid word onsets with the double-gamma HRF and compare with the published, already
//! HRF-convolved `s##-rate.txt` on the grid t0 = 20 s:
//!
//! * sampled at the **start** of each TR (SPM's convention, microtime onset 1 in SPM8), the best
//!   lag is **0** for every subject with r = 0.988 (lags −1 / +1: r ≈ 0.77 / 0.82); a fine scan of
//!   the sampling instant in 0.1 s steps peaks at 19.8 s (r = 0.9895), i.e. within 0.2 s of 20 s;
//! * as a TR **mean** (the paper's convention, [`word_rate_regressor`](super::word_rate_regressor)) the regressor is centred
//!   1 s into each TR, ~1 s later than the rate file's samples. That half-TR offset straddles two
//!   grid lags: r = 0.929 at lag 0 and 0.947 at lag **+1** (best, for every subject), and the fine
//!   scan peaks at t0 = 18.9 s (r = 0.9896) = 19.8 s − 0.9 s.
//!
//! So the files start at stimulus time 20 s ([`ALICE_T0_S`], no hidden delay), and the lag-+1
//! preference of the TR-mean regressor is a sampling convention of the rate file, not a
//! misalignment: use t0 = 20 s for the brain data. The remaining 1 % (r ≈ 0.99, not 1) is not
//! explained by the word time point used (onsets, midpoints and offsets all give 0.990) and
//! presumably reflects SPM's microtime binning / HRF normalisation or a slightly different word
//! list behind the published predictor.
//!
//! The companion file `sept18-generic-predictors-under-hrf-with-logfrqhal.txt` has 372 rows: the
//! same kind of predictors including the 10 discarded volumes: its `rate_conv` column is ~0 for
//! rows 1–10 and its rows 11–372 match the rate files' rows 1–362 to about 1 %, consistent with the
//! raw scan starting at stimulus time 0.

use std::path::{Path, PathBuf};

use super::align::{story_onsets, TrGrid, DEFAULT_DT_S};
use super::hrf::{double_gamma, HRF_SUPPORT_S};
use super::lag::{best_lag, LagScan};
use super::roi::{read_column_series, read_roi_timecourses, RoiTable, ALICE_ROIS};
use crate::stats::pearson;
use crate::stimulus::{read_story, ReadOptions, StimulusFormat};
use crate::{Error, Result};

/// Repetition time of the Alice scans, seconds.
pub const ALICE_TR_S: f64 = 2.0;
/// TRs per subject after discarding the first volumes.
pub const ALICE_N_TRS: usize = 362;
/// Volumes discarded at the start of each scan.
pub const ALICE_DISCARDED_VOLUMES: usize = 10;
/// Stimulus time at which TR 0 of the shared files starts: discarded volumes × TR = 20 s.
pub const ALICE_T0_S: f64 = ALICE_DISCARDED_VOLUMES as f64 * ALICE_TR_S;
/// The 20 subjects with shared time courses.
pub const ALICE_SUBJECTS: [&str; 20] = [
    "s18", "s22", "s23", "s24", "s26", "s28", "s30", "s31", "s33", "s35", "s36", "s37", "s38", "s39", "s40", "s41",
    "s42", "s43", "s44", "s45",
];
/// Lags scanned by [`alice_alignment`], ± TRs.
pub const ALICE_MAX_LAG_TRS: i64 = 10;
/// Half-width of the fine `t0` scan of [`alice_alignment`], seconds (step [`DEFAULT_DT_S`]).
pub const ALICE_T0_SCAN_HALF_WIDTH_S: f64 = 6.0;

/// ROI sphere radius of the shared time courses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliceSphere {
    Mm6,
    Mm10,
}

impl AliceSphere {
    fn folder(self) -> &'static str {
        match self {
            AliceSphere::Mm6 => "6mm",
            AliceSphere::Mm10 => "10mm",
        }
    }
}

/// `<data_root>/alice_brennan2016/alice_data_shared`.
pub fn alice_data_dir(data_root: &Path) -> PathBuf {
    data_root.join("alice_brennan2016").join("alice_data_shared")
}

/// The stimulus TextGrid.
pub fn alice_textgrid_path(data_root: &Path) -> PathBuf {
    data_root
        .join("alice_brennan2016")
        .join("alice_stim_shared")
        .join("DownTheRabbitHoleFinal_exp120_pad_1.TextGrid")
}

/// `s##-rate.txt` of `subject`.
pub fn alice_rate_path(data_root: &Path, subject: &str) -> PathBuf {
    alice_data_dir(data_root).join(format!("{subject}-rate.txt"))
}

/// `<6mm|10mm>/s##-timecourses.txt` of `subject`.
pub fn alice_timecourses_path(data_root: &Path, subject: &str, sphere: AliceSphere) -> PathBuf {
    alice_data_dir(data_root)
        .join(sphere.folder())
        .join(format!("{subject}-timecourses.txt"))
}

/// Reads one subject's ROI time courses (362 × 6, [`ALICE_ROIS`]).
pub fn read_alice_timecourses(data_root: &Path, subject: &str, sphere: AliceSphere) -> Result<RoiTable> {
    read_roi_timecourses(
        alice_timecourses_path(data_root, subject, sphere),
        &ALICE_ROIS,
        Some(ALICE_N_TRS),
    )
}

/// Word onsets of the Alice TextGrid (silences `sp` and empty labels skipped), seconds of
/// stimulus time, `(n_words,)` = 2,129 words.
pub fn alice_word_onsets(data_root: &Path) -> Result<Vec<f64>> {
    let story = read_story(
        alice_textgrid_path(data_root),
        Some(StimulusFormat::TextGrid),
        &ReadOptions::default(),
    )?;
    story_onsets(&story)
}

/// The nominal Alice grid: 362 TRs of 2 s from stimulus time 20 s.
pub fn alice_grid() -> TrGrid {
    TrGrid {
        n_trs: ALICE_N_TRS,
        tr_s: ALICE_TR_S,
        t0_s: ALICE_T0_S,
    }
}

/// How a convolved word train is turned into one value per TR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrSampling {
    /// The mean over the TR window `[t0 + k·tr, t0 + (k+1)·tr)`: [`super::word_rate_regressor`],
    /// the paper's convention.
    WindowMean,
    /// The value at the start of the window, `t0 + k·tr`: SPM's convention with microtime onset
    /// 1 (SPM8's default), which the published `s##-rate.txt` follows.
    WindowStart,
}

/// One sampling convention's fit to `s##-rate.txt`.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingFit {
    pub sampling: TrSampling,
    /// Lag scan with reference = `s##-rate.txt`, candidate = our word-rate regressor on the nominal
    /// grid (t0 = 20 s), lags ±[`ALICE_MAX_LAG_TRS`]. Positive lag: ours must be delayed to match,
    /// i.e. the `t0` that lines up on the TR grid is `20 s − lag · 2 s` ([`SamplingFit::implied_t0_s`]).
    pub lag: LagScan,
    /// `(t0_s, r)` at lag 0 for `t0` in `20 s ± ALICE_T0_SCAN_HALF_WIDTH_S`, step 0.1 s.
    pub t0_scan: Vec<(f64, f64)>,
    /// The `t0` of the fine scan with the highest correlation, and that correlation.
    pub best_t0_s: f64,
    pub best_r: f64,
}

impl SamplingFit {
    /// `20 s − best_lag · 2 s`: the grid-resolution `t0` that lines up best.
    pub fn implied_t0_s(&self) -> f64 {
        ALICE_T0_S - self.lag.best_lag_trs as f64 * ALICE_TR_S
    }
}

/// What [`alice_alignment`] found for one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct AlignmentReport {
    pub subject: String,
    /// Words with onsets in the TextGrid.
    pub n_words: usize,
    /// The nominal grid the regressors were built on (362 TRs × 2 s, t0 = 20 s).
    pub grid: TrGrid,
    /// Our paper-convention regressor (TR means) against the rate file.
    pub window_mean: SamplingFit,
    /// The same convolved word train sampled at TR starts against the rate file.
    pub window_start: SamplingFit,
}

fn best_of(scan: &[(f64, f64)]) -> (f64, f64) {
    scan.iter()
        .copied()
        .filter(|(_, r)| r.is_finite())
        .fold(
            (f64::NAN, f64::NEG_INFINITY),
            |best, cur| if cur.1 > best.1 { cur } else { best },
        )
}

/// Finds the alignment of the TextGrid to `subject`'s TR series from the data.
///
/// Builds the word-rate regressor (impulses at the TextGrid word onsets, double-gamma HRF, fine
/// step 0.1 s) on the nominal grid ([`alice_grid`], t0 = 20 s) in both [`TrSampling`]s, scans
/// lags against `s##-rate.txt` (already HRF-convolved, so the right alignment shows as lag ≈ 0),
/// and scans `t0` in 0.1 s steps at lag 0. See the module docs for what the data say.
///
/// Errors: unreadable or malformed TextGrid or rate file, or a rate file whose length is not 362.
pub fn alice_alignment(data_root: &Path, subject: &str) -> Result<AlignmentReport> {
    let onsets = alice_word_onsets(data_root)?;
    let rate_path = alice_rate_path(data_root, subject);
    let rate = read_column_series(&rate_path)?;
    if rate.len() != ALICE_N_TRS {
        return Err(Error::parse(
            &rate_path,
            "whole file",
            format!("expected {ALICE_N_TRS} rows (one per TR), found {}", rate.len()),
        ));
    }
    let grid = alice_grid();
    let (n_sub, step) = grid.fine_step(DEFAULT_DT_S);

    // One fine-grid signal s(τ_j) = Σ_i h(τ_j − onset_i), τ_j = t_start + j·step, covering every
    // window of every scanned t0. For t0 = t_start + q·step the window-mean regressor is the mean
    // of s[q + k·n_sub .. q + (k+1)·n_sub] (exactly `word_rate_regressor`'s definition) and the
    // window-start regressor is s[q + k·n_sub].
    let n_shift = (ALICE_T0_SCAN_HALF_WIDTH_S / step).round() as usize;
    let t_start = grid.t0_s - n_shift as f64 * step;
    let n_fine = 2 * n_shift + grid.n_trs * n_sub;
    let mut sorted = onsets.clone();
    sorted.sort_by(f64::total_cmp);
    let fine: Vec<f64> = (0..n_fine)
        .map(|j| {
            let t = t_start + j as f64 * step;
            let lo = sorted.partition_point(|&o| o <= t - HRF_SUPPORT_S);
            let hi = sorted.partition_point(|&o| o < t);
            sorted[lo..hi].iter().map(|&o| double_gamma(t - o)).sum()
        })
        .collect();
    let regressor = |sampling: TrSampling, q: usize| -> Vec<f64> {
        (0..grid.n_trs)
            .map(|k| {
                let w = &fine[q + k * n_sub..q + (k + 1) * n_sub];
                match sampling {
                    TrSampling::WindowMean => w.iter().sum::<f64>() / n_sub as f64,
                    TrSampling::WindowStart => w[0],
                }
            })
            .collect()
    };
    let fit = |sampling: TrSampling| -> SamplingFit {
        let lag = best_lag(&rate, &regressor(sampling, n_shift), ALICE_MAX_LAG_TRS);
        let t0_scan: Vec<(f64, f64)> = (0..=2 * n_shift)
            .map(|q| (t_start + q as f64 * step, pearson(&rate, &regressor(sampling, q))))
            .collect();
        let (best_t0_s, best_r) = best_of(&t0_scan);
        tracing::info!(
            subject,
            ?sampling,
            best_lag_trs = lag.best_lag_trs,
            r_at_best_lag = lag.best_r,
            best_t0_s,
            best_r,
            "Alice alignment"
        );
        SamplingFit {
            sampling,
            lag,
            t0_scan,
            best_t0_s,
            best_r,
        }
    };
    Ok(AlignmentReport {
        subject: subject.to_string(),
        n_words: onsets.len(),
        grid,
        window_mean: fit(TrSampling::WindowMean),
        window_start: fit(TrSampling::WindowStart),
    })
}
