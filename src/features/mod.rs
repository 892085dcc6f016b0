//! Features → brain time series: per-word feature values at word onsets (seconds of stimulus
//! time) become per-TR regressors, and brain data (ROI time courses) are read with their TR grid.
//!
//! * [`hrf`]: the canonical double-gamma HRF [`double_gamma`] (peak ≈ 5 s, undershoot minimum
//!   ≈ 15.75 s, integral 5/6) and its sampled kernel [`hrf_kernel`].
//! * [`align`]: [`TrGrid`] (TR `k` covers `[t0 + k·tr, t0 + (k+1)·tr)`) and [`words_to_trs`]:
//!   `(n_words,)` onsets + `(n_words, n_features)` values → `(n_trs, n_features)`, impulses
//!   convolved with the HRF and averaged within each TR (one sparse-banded product, parallel over
//!   TRs); [`word_rate_regressor`], [`zscore`].
//! * [`lag`]: [`best_lag`], the lag (in samples) maximising the correlation of two series.
//! * [`roi`]: [`read_roi_timecourses`] (`(n_trs, n_rois)`, constant columns detected and
//!   warned about) and [`read_column_series`].
//! * [`alice`]: paths and constants of the Alice data (TR 2 s, 362 TRs, TR 0 at stimulus time
//!   20 s) and [`alice_alignment`], which establishes that alignment from the data.
//! * [`set`]: [`FeatureSet`], the kind of a design's columns.
//! * [`voxels`]: voxelwise responses per (subject, story) in the ds003020 layout (respdict.json
//!   TR checks, per-story z-scoring, exclusion of non-finite or constant voxels) and voxel →
//!   region tables.
//! * [`atlas`]: voxel → region from an atlas (labels per voxel, label names, parcel → region
//!   map; built in: HCP-MMP1.0 parcels → PT, AT, IF, AG, dmPFC).
//!
//! Numerics take ndarray views or slices and do not fail on valid input (they panic, naming the
//! mismatch, on inconsistent shapes); file readers return [`crate::Error`]s naming the file, row
//! and column.
//!
//! May import: `error`, `paths`, `stats`, `stimulus`, `store` (matrix and table readers).

pub mod alice;
pub mod align;
pub mod atlas;
pub mod hrf;
pub mod lag;
pub mod lanczos;
pub mod roi;
pub mod set;
pub mod voxels;

pub use alice::{
    alice_alignment, alice_data_dir, alice_grid, alice_rate_path, alice_textgrid_path, alice_timecourses_path,
    alice_word_onsets, read_alice_timecourses, AliceSphere, AlignmentReport, SamplingFit, TrSampling,
    ALICE_DISCARDED_VOLUMES, ALICE_MAX_LAG_TRS, ALICE_N_TRS, ALICE_SUBJECTS, ALICE_T0_S, ALICE_TR_S,
};
pub use align::{story_onsets, tr_weights, word_rate_regressor, words_to_trs, zscore, TrGrid, TrWeights, DEFAULT_DT_S};
pub use hrf::{double_gamma, hrf_kernel, HRF_PEAK_S, HRF_SUPPORT_S, HRF_UNDERSHOOT_MIN_S};
pub use lag::{best_lag, lagged_r, LagScan};
pub use roi::{is_constant, read_column_series, read_roi_timecourses, subject_from_path, RoiTable, ALICE_ROIS};
pub use set::FeatureSet;
