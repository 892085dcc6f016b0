//! Encoding models: features → brain time series (METHOD.md §5).
//!
//! Input: a design X (n_samples, n_features), e.g. HRF-convolved or FIR-delayed feature values per
//! TR, and responses Y (n_samples, n_targets), e.g. voxels; both f64. Output: per-target held-out
//! Pearson r, the penalty chosen per target and fold, and held-out predictions (n_samples,
//! n_targets) in Y's units.
//!
//! - [`folds`]: cross-validation splits: contiguous blocks with a gap (single recordings),
//!   blocks over a subset of rows (inner folds of nested CV), leave-groups-out (stories).
//! - [`ridge`]: multi-target ridge for a whole penalty path from one SVD (or kernel
//!   eigendecomposition when n_features > n_samples), per-target penalty by CV, nested CV.
//!
//! All numerics are pure functions on ndarray views (no I/O), deterministic for any number of
//! rayon threads. Ridge fits no intercept: [`nested_cv_ridge`] z-scores X and Y with each outer
//! fold's training statistics; direct callers of [`solve_ridge_svd`] and [`ridge_cv`] center or
//! z-score themselves.
//!
//! May import: `stats`, `error` (pure numerics; no store, no dataflow).

pub mod banded;
pub mod folds;
pub mod partition;
pub mod ridge;
pub mod simulate;
pub mod stats;
pub mod stories;

pub use folds::{block_folds_within, check_folds, contiguous_block_folds, leave_groups_out_folds, Fold};
pub use ridge::{
    default_alphas, log_alphas, nested_cv_factors, nested_cv_ridge, nested_cv_ridge_factored, nested_cv_ridge_opts,
    nested_cv_ridge_with, ridge_cv, ridge_cv_criteria, ridge_cv_method, ridge_cv_precision, ridge_cv_with,
    solve_ridge_svd, solve_ridge_with_method, AlphaCriterion, DesignTransform, NestedCvFactors, NestedCvOptions,
    NestedCvResult, RidgeCvResult, RidgeMethod, RidgePath, ScorePrecision, ALPHA_TIE_SLOPE, FAST_SCORE_MARGIN,
};
pub use stories::{story_cv, zscore_per_story, StoryCvOptions, StoryFit, StoryPlan, VoxelSource};
