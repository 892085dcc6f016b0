//! Row types that more than one table module reads.
//!
//! May import: `stats` (the paired comparison of a baseline row).

use crate::stats::paired::PairedComparison;

/// One row of the baseline comparison.
pub struct BaselineRow {
    pub story: String,
    pub layer: usize,
    /// A feature set, or a random-baseline family ("random:count", "random:variance",
    /// "ablate:random") averaged over its seeds within each subject.
    pub feature_set: String,
    pub kind: String,
    pub n_features: f64,
    pub variance_share: Option<f64>,
    pub n_seeds: usize,
    /// SD over seeds of the seed's mean r over subjects (families only).
    pub seed_sd: Option<f64>,
    pub mean_r: f64,
    pub mean_r2: f64,
    /// mean_r / mean r of all SAE features × 100.
    pub pct_of_all: f64,
    /// Against the semantic set (for ablations: R² against the unablated reconstruction).
    pub vs: String,
    pub test: Option<PairedComparison>,
}
