//! Per-word features → per-TR regressors: impulses at word onsets, convolved with the canonical
//! HRF ([`double_gamma`]), averaged within each TR window.
//!
//! Input: word onsets in seconds of **stimulus time** (the time axis of the TextGrid / audio),
//! `(n_words,)`, and per-word values `(n_words, n_features)`. Output: `(n_trs, n_features)`.
//!
//! The brain series is described by a [`TrGrid`]: TR `k` covers `[t0 + k·tr, t0 + (k+1)·tr)` in
//! stimulus time. The signal is
//!
//! `x_f(t) = Σ_i v_{i,f} · h(t − onset_i)`  (exact onsets, no snapping to a grid)
//!
//! and TR `k`'s value is the mean of `x_f` over `n_sub = max(1, round(tr / dt))` samples at the
//! left ends of the sub-steps of the window: `t = t0 + k·tr + m·(tr / n_sub)`, `m = 0 … n_sub−1`.
//! Words before `t0` contribute their HRF tails (the sum runs over all words, whatever their
//! onset). When every onset lies on the fine grid `t0 + j·(tr / n_sub)` this is exactly the
//! brute-force recipe "impulses on a fine grid, discrete convolution with the sampled HRF, mean of
//! each TR's samples" (checked in the tests).
//!
//! Because the map is linear in the values, it is computed as one product `W · V` with
//! `W_{k,i} = mean over TR k's samples of h(t − onset_i)` `(n_trs, n_words)`. `W` is banded (a word
//! only reaches the TRs within [`HRF_SUPPORT_S`] after it), so it is stored sparsely by row and the
//! product costs `n_trs × (words per 64 s) × n_features`, parallel over TRs (deterministic: each
//! output row is summed in word order by one thread).

use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};
use rayon::prelude::*;

use super::hrf::{double_gamma, HRF_SUPPORT_S};
use crate::stimulus::Story;
use crate::{Error, Result};

/// Default fine-grid step, seconds.
pub const DEFAULT_DT_S: f64 = 0.1;

/// The acquisition grid of a brain series in stimulus time: TR `k` (0-based, `k < n_trs`) covers
/// `[t0_s + k·tr_s, t0_s + (k+1)·tr_s)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrGrid {
    /// Number of TRs (volumes) in the series.
    pub n_trs: usize,
    /// Repetition time, seconds.
    pub tr_s: f64,
    /// Stimulus time at which TR 0 starts, seconds (e.g. discarded volumes × TR).
    pub t0_s: f64,
}

impl TrGrid {
    /// A checked grid: `tr_s` positive and finite, `t0_s` finite.
    pub fn new(n_trs: usize, tr_s: f64, t0_s: f64) -> Result<Self> {
        let g = TrGrid { n_trs, tr_s, t0_s };
        g.check()?;
        Ok(g)
    }

    /// Checks `tr_s > 0` (finite) and `t0_s` finite.
    pub fn check(&self) -> Result<()> {
        if !(self.tr_s > 0.0 && self.tr_s.is_finite()) {
            return Err(Error::Invalid(format!(
                "TR grid: tr_s must be positive and finite, found {}",
                self.tr_s
            )));
        }
        if !self.t0_s.is_finite() {
            return Err(Error::Invalid(format!(
                "TR grid: t0_s must be finite, found {}",
                self.t0_s
            )));
        }
        Ok(())
    }

    /// Start time of TR `k`, seconds of stimulus time.
    pub fn tr_start_s(&self, k: usize) -> f64 {
        self.t0_s + k as f64 * self.tr_s
    }

    /// The same grid with TR 0 starting at `t0_s`.
    pub fn with_t0(&self, t0_s: f64) -> Self {
        TrGrid { t0_s, ..*self }
    }

    /// Sub-samples per TR for a requested fine step `dt_s`, and the actual step `tr / n_sub`.
    pub fn fine_step(&self, dt_s: f64) -> (usize, f64) {
        let n_sub = ((self.tr_s / dt_s).round() as usize).max(1);
        (n_sub, self.tr_s / n_sub as f64)
    }
}

/// The TR weights in sparse-row form: `rows[k]` lists `(word index, W_{k,i})` for the words that
/// reach TR `k`, in increasing word index.
#[derive(Debug, Clone, PartialEq)]
pub struct TrWeights {
    pub n_trs: usize,
    pub n_words: usize,
    pub rows: Vec<Vec<(usize, f64)>>,
}

impl TrWeights {
    /// Computes `W_{k,i}` = mean over TR `k`'s fine samples of `h(t − onset_i)` (see module docs).
    ///
    /// # Panics
    /// If an onset is not finite, `dt_s` is not positive and finite, or the grid is invalid
    /// ([`TrGrid::check`]).
    pub fn new(onsets_s: &[f64], grid: &TrGrid, dt_s: f64) -> Self {
        check_inputs(onsets_s, grid, dt_s);
        let (n_sub, step) = grid.fine_step(dt_s);
        let rows = (0..grid.n_trs)
            .into_par_iter()
            .map(|k| {
                let j0 = k * n_sub;
                let start = grid.t0_s + j0 as f64 * step;
                let end = grid.t0_s + (j0 + n_sub) as f64 * step;
                let mut row = Vec::new();
                for (i, &onset) in onsets_s.iter().enumerate() {
                    // Skip words that start after the window or whose response has died out.
                    if onset >= end || start - onset >= HRF_SUPPORT_S {
                        continue;
                    }
                    let mut acc = 0.0;
                    for m in 0..n_sub {
                        let lag = grid.t0_s + (j0 + m) as f64 * step - onset;
                        if lag < HRF_SUPPORT_S {
                            acc += double_gamma(lag);
                        }
                    }
                    if acc != 0.0 {
                        row.push((i, acc / n_sub as f64));
                    }
                }
                row
            })
            .collect();
        TrWeights {
            n_trs: grid.n_trs,
            n_words: onsets_s.len(),
            rows,
        }
    }

    /// Dense `(n_trs, n_words)` matrix.
    pub fn to_dense(&self) -> Array2<f64> {
        let mut w = Array2::zeros((self.n_trs, self.n_words));
        for (k, row) in self.rows.iter().enumerate() {
            for &(i, v) in row {
                w[[k, i]] = v;
            }
        }
        w
    }

    /// `W · values`: `(n_words, n_features)` → `(n_trs, n_features)`.
    ///
    /// # Panics
    /// If `values.nrows() != n_words`.
    pub fn apply(&self, values: ArrayView2<f64>) -> Array2<f64> {
        assert_eq!(
            values.nrows(),
            self.n_words,
            "words_to_trs: values has {} rows but there are {} onsets",
            values.nrows(),
            self.n_words
        );
        let mut out = Array2::zeros((self.n_trs, values.ncols())); // (n_trs, n_features)
        Zip::from(out.axis_iter_mut(Axis(0)))
            .and(&self.rows)
            .par_for_each(|mut out_row, row| {
                for &(i, w) in row {
                    out_row.scaled_add(w, &values.row(i));
                }
            });
        out
    }

    /// `W · 1`: the sum of each row.
    pub fn row_sums(&self) -> Array1<f64> {
        self.rows.iter().map(|row| row.iter().map(|&(_, w)| w).sum()).collect()
    }
}

fn check_inputs(onsets_s: &[f64], grid: &TrGrid, dt_s: f64) {
    if let Err(e) = grid.check() {
        panic!("{e}");
    }
    assert!(
        dt_s > 0.0 && dt_s.is_finite(),
        "dt_s must be positive and finite, got {dt_s}"
    );
    if let Some(i) = onsets_s.iter().position(|o| !o.is_finite()) {
        panic!("onset of word {i} is not finite: {}", onsets_s[i]);
    }
}

/// Dense TR weights `W` `(n_trs, n_words)`: `W_{k,i}` = mean over TR `k`'s fine samples of
/// `h(t − onset_i)`. See [`TrWeights`] for the sparse form used internally.
pub fn tr_weights(onsets_s: &[f64], grid: &TrGrid, dt_s: f64) -> Array2<f64> {
    TrWeights::new(onsets_s, grid, dt_s).to_dense()
}

/// Per-word features → per-TR regressors (module docs give the exact definition).
///
/// `onsets_s`: `(n_words,)` seconds of stimulus time, any order; `values`: `(n_words, n_features)`;
/// `dt_s`: fine-grid step (use [`DEFAULT_DT_S`] = 0.1 s; rounded so that it divides the TR).
/// Returns `(n_trs, n_features)`.
///
/// # Panics
/// If `values.nrows() != onsets_s.len()`, an onset is not finite, `dt_s ≤ 0`, or the grid is
/// invalid. Validate inputs first (e.g. [`TrGrid::new`], [`story_onsets`]).
///
/// ```
/// use cortexflow::features::{words_to_trs, TrGrid};
/// use ndarray::array;
/// let grid = TrGrid { n_trs: 20, tr_s: 2.0, t0_s: 0.0 };
/// let x = words_to_trs(&[1.0, 3.0], array![[1.0, 0.0], [1.0, 2.0]].view(), &grid, 0.1);
/// assert_eq!(x.dim(), (20, 2));
/// assert_eq!(x[[0, 0]] > 0.0, true); // the first word already responds in TR 0
/// ```
pub fn words_to_trs(onsets_s: &[f64], values: ArrayView2<f64>, grid: &TrGrid, dt_s: f64) -> Array2<f64> {
    assert_eq!(
        values.nrows(),
        onsets_s.len(),
        "words_to_trs: values has {} rows but there are {} onsets",
        values.nrows(),
        onsets_s.len()
    );
    TrWeights::new(onsets_s, grid, dt_s).apply(values)
}

/// The word-rate regressor: [`words_to_trs`] with an all-ones feature, `(n_trs,)`.
pub fn word_rate_regressor(onsets_s: &[f64], grid: &TrGrid, dt_s: f64) -> Vec<f64> {
    TrWeights::new(onsets_s, grid, dt_s).row_sums().to_vec()
}

/// Column-wise z-scores (population sd; constant columns become 0), a copy. Wraps
/// [`crate::stats::zscore_columns`].
pub fn zscore(x: ArrayView2<f64>) -> Array2<f64> {
    let mut out = x.to_owned();
    crate::stats::zscore_columns(out.view_mut());
    out
}

/// The onsets of a story's words, `(n_words,)` seconds. [`Error::Invalid`] naming the story and the
/// first word without a (finite) onset.
pub fn story_onsets(story: &Story) -> Result<Vec<f64>> {
    story
        .words
        .iter()
        .enumerate()
        .map(|(i, w)| match w.onset_s {
            Some(o) if o.is_finite() => Ok(o),
            other => Err(Error::Invalid(format!(
                "story `{}`: word {} (`{}`) has no usable onset (found {:?}); words_to_trs needs timed words",
                story.id,
                i + 1,
                w.text,
                other
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    #[test]
    fn a_word_after_the_last_tr_has_no_effect() {
        let grid = TrGrid {
            n_trs: 5,
            tr_s: 2.0,
            t0_s: 0.0,
        };
        let x = word_rate_regressor(&[10.0], &grid, 0.1);
        assert!(x.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_word_long_before_t0_only_contributes_its_tail() {
        let grid = TrGrid {
            n_trs: 3,
            tr_s: 2.0,
            t0_s: 20.0,
        };
        // 5 s before t0: TR 0 samples lags 5.0 … 6.9 s, near the peak.
        let x = word_rate_regressor(&[15.0], &grid, 0.1);
        let direct: f64 = (0..20).map(|m| double_gamma(5.0 + m as f64 * 0.1)).sum::<f64>() / 20.0;
        assert_abs_diff_eq!(x[0], direct, epsilon = 1e-12);
        // Beyond the support it is dropped entirely.
        let far = word_rate_regressor(&[20.0 - HRF_SUPPORT_S - 10.0], &grid, 0.1);
        assert!(far.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_fine_step_divides_the_tr() {
        let grid = TrGrid {
            n_trs: 1,
            tr_s: 2.0,
            t0_s: 0.0,
        };
        assert_eq!(grid.fine_step(0.1).0, 20);
        assert_eq!(grid.fine_step(0.3).0, 7);
        assert_eq!(grid.fine_step(5.0).0, 1);
    }

    #[test]
    fn dense_and_sparse_weights_agree_with_the_product() {
        let grid = TrGrid {
            n_trs: 30,
            tr_s: 1.5,
            t0_s: 3.0,
        };
        let onsets = [0.5, 4.2, 4.9, 17.0, 30.1];
        let values = array![[1.0, -2.0], [0.5, 0.0], [3.0, 1.0], [-1.0, 4.0], [2.0, 2.0]];
        let w = tr_weights(&onsets, &grid, 0.1);
        let direct = w.dot(&values);
        let fast = words_to_trs(&onsets, values.view(), &grid, 0.1);
        for (a, b) in direct.iter().zip(fast.iter()) {
            assert_abs_diff_eq!(a, b, epsilon = 1e-14);
        }
    }

    #[test]
    fn invalid_grids_are_rejected_with_the_value() {
        let err = TrGrid::new(10, 0.0, 0.0).unwrap_err().to_string();
        assert!(err.contains("tr_s") && err.contains('0'), "{err}");
        assert!(TrGrid::new(10, 2.0, f64::NAN).is_err());
    }

    #[test]
    #[should_panic(expected = "values has 1 rows but there are 2 onsets")]
    fn mismatched_values_panic_with_both_counts() {
        let grid = TrGrid {
            n_trs: 3,
            tr_s: 2.0,
            t0_s: 0.0,
        };
        words_to_trs(&[0.0, 1.0], array![[1.0]].view(), &grid, 0.1);
    }
}
