//! The Huth-lab alignment (METHOD.md §5, the alternative to [`super::words_to_trs`]): per-word
//! feature values are Lanczos-downsampled to TR times, optionally z-scored per run, and expanded
//! with finite-impulse-response (FIR) delays.
//!
//! Input: `(n_words,)` word times in seconds of stimulus time and `(n_words, n_features)` values;
//! `(n_trs,)` TR times in the same clock. Output: `(n_trs, n_features)` after
//! [`lanczos_interp`], `(n_trs, n_features · n_delays)` after [`fir_delays`].
//!
//! Everything reproduces the Huth lab's code (huthlab/deep-fMRI-dataset,
//! `encoding/ridge_utils/interpdata.py` and `util.py`) up to floating-point summation order:
//!
//! * [`lanczos_kernel`] is `lanczosfun(cutoff, t, window)`: with `u = t · cutoff`,
//!   `L(u) = window · sin(π u) · sin(π u / window) / (π² u²)`, `L(0) = 1`, `L(u) = 0` for
//!   `|u| > window` (the kernel is **not** normalised).
//! * [`lanczos_interp`] is `lanczosinterp2D(data, oldtime, newtime, window, cutoff_mult)`
//!   (`rectify=False`): `cutoff = cutoff_mult / mean(diff(newtime))` (Hz) and
//!   `y[k, f] = Σ_i L((newtime[k] − oldtime[i]) · cutoff) · data[i, f]`. Because `L` is not
//!   normalised this is a low-pass filtered *sum*, not a mean: a constant `c` sampled `m` times per
//!   TR comes out as ≈ `c · m · 0.99706` (window 3), and as `c` within 0.6 % only when the
//!   samples are as far apart as the TRs. This is the Huth lab's behaviour and is kept.
//! * [`fir_delays`] is `make_delayed(stim, delays)` (no circular padding): block `d` holds the input
//!   shifted down by `delays[d]` rows, zeros at the top; blocks are concatenated along columns.
//! * [`zscore_per_run`] z-scores each column within each run (population sd, constant → 0, as
//!   [`crate::stats::zscore_columns`] and the lab's `npp.zscore` apart from its 0/0 = NaN).
//!
//! The lab's pipeline (`DataSequence.chunksums("lanczos", window=3)`, then
//! `trim_and_normalize_features`, then `make_delayed(…, range(1, 5))`) uses word **midpoints**
//! (`(start + end) / 2`) as the old times and TR **midpoints** (`trigger times + TR/2`) as the new
//! times, z-scores each story's downsampled matrix, stacks the stories and delays the stacked
//! matrix. Here the caller chooses the times ([`tr_times_s`]: TR starts, consistent with
//! [`super::words_to_trs`]; [`tr_mid_times_s`]: the lab's midpoints) and the order of z-scoring
//! and delaying ([`lanczos_fir_design`] does interpolation + delays only).
//!
//! Cost: the kernel vanishes beyond `window / cutoff` seconds, so each TR only reads the band of
//! words within that distance (found by binary search on the time-sorted words); rows are computed
//! in parallel (rayon) and each is summed in increasing word time, so results do not depend on the
//! number of threads.

use std::borrow::Cow;
use std::collections::BTreeMap;

use ndarray::{s, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis, Zip};

use super::align::TrGrid;
use crate::{Error, Result};

/// The Huth lab's Lanczos window (number of lobes), `lanczosinterp2D(…, window=3)`.
pub const DEFAULT_LANCZOS_WINDOW: usize = 3;

/// The Huth lab's FIR delays in TRs, `make_delayed(stim, range(1, 5))`.
pub const DEFAULT_FIR_DELAYS: [usize; 4] = [1, 2, 3, 4];

/// The Lanczos kernel at time offset `t` (seconds) for a cutoff frequency `cutoff` (Hz) with
/// `window` lobes: exactly the Huth lab's `lanczosfun(cutoff, t, window)`:
///
/// `u = t · cutoff`; `window · sin(π u) · sin(π u / window) / (π² · u²)`; `1` where `u == 0`;
/// `0` where `|u| > window`. Dimensionless, even in `t`, at most 1, not normalised. (With
/// `window == 0` it is 1 at `t == 0` and 0 elsewhere, as numpy's version is.)
pub fn lanczos_kernel(t: f64, window: usize, cutoff: f64) -> f64 {
    use std::f64::consts::PI;
    let w = window as f64;
    let u = t * cutoff;
    let val = w * (PI * u).sin() * (PI * u / w).sin() / (PI * PI * (u * u));
    if u == 0.0 {
        1.0
    } else if u.abs() > w {
        0.0
    } else {
        val
    }
}

/// The Huth lab's cutoff frequency (Hz) for new times `new_times_s`:
/// `cutoff_mult / mean(diff(new_times_s))`. [`Error::Invalid`] unless there are at least two
/// finite new times whose mean step is positive and `cutoff_mult` is positive and finite.
pub fn lanczos_cutoff_hz(new_times_s: &[f64], cutoff_mult: f64) -> Result<f64> {
    if new_times_s.len() < 2 {
        return Err(Error::Invalid(format!(
            "Lanczos: need at least 2 new (TR) times to derive the cutoff from their spacing, found {}",
            new_times_s.len()
        )));
    }
    if let Some(i) = new_times_s.iter().position(|t| !t.is_finite()) {
        return Err(Error::Invalid(format!(
            "Lanczos: new (TR) times must be finite, found {} at index {i}",
            new_times_s[i]
        )));
    }
    if !(cutoff_mult > 0.0 && cutoff_mult.is_finite()) {
        return Err(Error::Invalid(format!(
            "Lanczos: cutoff_mult must be positive and finite, found {cutoff_mult}"
        )));
    }
    let n_steps = (new_times_s.len() - 1) as f64;
    let mean_step_s = new_times_s.windows(2).map(|w| w[1] - w[0]).sum::<f64>() / n_steps;
    if mean_step_s.is_nan() || mean_step_s <= 0.0 {
        return Err(Error::Invalid(format!(
            "Lanczos: new (TR) times must increase on average, found a mean step of {mean_step_s} s"
        )));
    }
    Ok(1.0 / mean_step_s * cutoff_mult)
}

/// Lanczos interpolation of the columns of `data` `(n_old, n_features)`, sampled at
/// `old_times_s` `(n_old,)` seconds, to `new_times_s` `(n_new,)` seconds (same clock): exactly the
/// Huth lab's `lanczosinterp2D(data, oldtime, newtime, window, cutoff_mult)` (`rectify=False`).
///
/// `cutoff = cutoff_mult / mean(diff(new_times_s))` Hz and, for every new time `k` and feature `f`,
/// `out[k, f] = Σ_i lanczos_kernel(new_times_s[k] − old_times_s[i], window, cutoff) · data[i, f]`.
/// Output `(n_new, n_features)`, in the units of `data` (a filtered sum: see the module docs).
/// Defaults: `window = 3` ([`DEFAULT_LANCZOS_WINDOW`]), `cutoff_mult = 1`.
///
/// Only old samples within `window / cutoff` seconds of a new time can contribute; they are found
/// by binary search on the old times in increasing order. Old times need not be sorted: unsorted
/// ones are ordered by a stable argsort (ties keep their input order) and each output row is
/// summed in that order, so the result is the same as for the sorted input and independent of the
/// number of threads. New times need not be sorted (only their mean step matters).
///
/// [`Error::Invalid`] when `data` has a row count other than `old_times_s.len()`, `window` is 0,
/// any time or value is non-finite, fewer than two new times are given, their mean step is not
/// positive, or `cutoff_mult` is not positive and finite.
pub fn lanczos_interp(
    data: ArrayView2<f64>,
    old_times_s: &[f64],
    new_times_s: &[f64],
    window: usize,
    cutoff_mult: f64,
) -> Result<Array2<f64>> {
    let (n_old, n_features) = data.dim();
    if window == 0 {
        return Err(Error::Invalid(
            "Lanczos: window must be at least 1 lobe, found 0".to_string(),
        ));
    }
    if n_old != old_times_s.len() {
        return Err(Error::Invalid(format!(
            "Lanczos: expected one old time per data row, found {} rows and {} old times",
            n_old,
            old_times_s.len()
        )));
    }
    if let Some(i) = old_times_s.iter().position(|t| !t.is_finite()) {
        return Err(Error::Invalid(format!(
            "Lanczos: old (word) times must be finite, found {} at index {i}",
            old_times_s[i]
        )));
    }
    if let Some(((i, f), v)) = data.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "Lanczos: data values must be finite, found {v} at row {i}, column {f}"
        )));
    }
    let cutoff = lanczos_cutoff_hz(new_times_s, cutoff_mult)?;

    // Old samples in increasing time (stable), as positions into `data`.
    let sorted = old_times_s.windows(2).all(|w| w[0] <= w[1]);
    let order: Option<Vec<usize>> = if sorted {
        None
    } else {
        let mut idx: Vec<usize> = (0..n_old).collect();
        idx.sort_by(|&a, &b| old_times_s[a].total_cmp(&old_times_s[b]));
        Some(idx)
    };
    let times: Cow<[f64]> = match &order {
        None => Cow::Borrowed(old_times_s),
        Some(idx) => Cow::Owned(idx.iter().map(|&i| old_times_s[i]).collect()),
    };
    // Half-width of the kernel's support in seconds, widened so that rounding can never exclude a
    // sample the exact test `|Δt · cutoff| <= window` keeps (samples in the margin get weight 0).
    let reach_s = window as f64 / cutoff * (1.0 + 1e-6);

    let mut out = Array2::<f64>::zeros((new_times_s.len(), n_features)); // (n_new, n_features)
    Zip::from(out.rows_mut())
        .and(ArrayView1::from(new_times_s))
        .par_for_each(|mut row, &t_new| {
            let lo = times.partition_point(|&t| t < t_new - reach_s);
            let hi = times.partition_point(|&t| t <= t_new + reach_s);
            for j in lo..hi {
                let w = lanczos_kernel(t_new - times[j], window, cutoff);
                if w != 0.0 {
                    let i = order.as_ref().map_or(j, |idx| idx[j]);
                    row.scaled_add(w, &data.row(i));
                }
            }
        });
    Ok(out)
}

/// FIR delays: `x` `(n_trs, n_features)` → `(n_trs, n_features · delays.len())`, the Huth lab's
/// `make_delayed(stim, delays)` without circular padding.
///
/// Column block `b` (columns `b·n_features .. (b+1)·n_features`) holds `x` shifted down by
/// `delays[b]` rows: `out[t, b·n_features + f] = x[t − delays[b], f]` for `t ≥ delays[b]`, and 0
/// for the first `delays[b]` rows. So the columns are all features at the first delay, then all
/// features at the second delay, and so on. Delay 0 copies `x`; a delay ≥ `n_trs` gives a zero
/// block. Delays are in TRs (rows). Empty `delays` give `(n_trs, 0)`.
pub fn fir_delays(x: ArrayView2<f64>, delays: &[usize]) -> Array2<f64> {
    let (n_trs, n_features) = x.dim();
    let mut out = Array2::<f64>::zeros((n_trs, n_features * delays.len())); // (n_trs, n_features · n_delays)
    for (b, &d) in delays.iter().enumerate() {
        if d < n_trs {
            out.slice_mut(s![d.., b * n_features..(b + 1) * n_features])
                .assign(&x.slice(s![..n_trs - d, ..]));
        }
    }
    out
}

/// Z-scores each column of `x` `(n_rows, n_columns)` in place within each run: the rows with the
/// same label in `run_of_row` `(n_rows,)` are standardised together (they need not be contiguous)
/// with [`crate::stats::zscore_columns`]' conventions: mean 0, population sd (ddof = 0) 1, a column
/// that is constant within a run becomes 0 there.
///
/// [`Error::Invalid`] when `run_of_row.len() != x.nrows()` (then `x` is left unchanged).
pub fn zscore_per_run(mut x: ArrayViewMut2<f64>, run_of_row: &[usize]) -> Result<()> {
    if run_of_row.len() != x.nrows() {
        return Err(Error::Invalid(format!(
            "zscore_per_run: expected one run label per row, found {} rows and {} labels",
            x.nrows(),
            run_of_row.len()
        )));
    }
    let mut rows_of_run: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &r) in run_of_row.iter().enumerate() {
        rows_of_run.entry(r).or_default().push(i);
    }
    for rows in rows_of_run.values() {
        let mut sub = x.select(Axis(0), rows); // (rows in this run, n_columns)
        crate::stats::zscore_columns(sub.view_mut());
        for (k, &i) in rows.iter().enumerate() {
            x.row_mut(i).assign(&sub.row(k));
        }
    }
    Ok(())
}

/// Run labels for stacked runs of the given lengths: `[2, 3]` → `[0, 0, 1, 1, 1]`, for
/// [`zscore_per_run`].
pub fn run_of_row_from_lengths(run_lengths: &[usize]) -> Vec<usize> {
    run_lengths
        .iter()
        .enumerate()
        .flat_map(|(r, &n)| std::iter::repeat_n(r, n))
        .collect()
}

/// The start time of every TR of `grid`, `t0_s + k·tr_s` for `k = 0 … n_trs−1`, seconds of
/// stimulus time: the times at which the crate's HRF alignment ([`super::words_to_trs`]) samples.
pub fn tr_times_s(grid: &TrGrid) -> Vec<f64> {
    (0..grid.n_trs).map(|k| grid.tr_start_s(k)).collect()
}

/// The middle of every TR of `grid`, `t0_s + k·tr_s + tr_s/2`, seconds: the Huth lab's choice
/// (`DataSequence.from_grid`: `tr_times = trigger times + tr/2`).
pub fn tr_mid_times_s(grid: &TrGrid) -> Vec<f64> {
    (0..grid.n_trs).map(|k| grid.tr_start_s(k) + grid.tr_s / 2.0).collect()
}

/// The Huth-lab design matrix without z-scoring: per-word `values` `(n_words, n_features)` at
/// `onsets_s` `(n_words,)` seconds → [`lanczos_interp`] to `tr_times_s` `(n_trs,)` seconds
/// (`cutoff_mult = 1`) → [`fir_delays`] → `(n_trs, n_features · delays.len())`, columns grouped by
/// delay. Typical arguments: `window = DEFAULT_LANCZOS_WINDOW`, `delays = &DEFAULT_FIR_DELAYS`.
///
/// TR times are whatever the caller passes: the Huth lab uses the middle of each acquisition
/// ([`tr_mid_times_s`]) and word midpoints as onsets; [`tr_times_s`] gives TR starts, as the HRF
/// alignment uses. To follow the lab exactly, z-score the interpolated matrix per run
/// ([`zscore_per_run`]) before delaying: call the two steps yourself.
///
/// [`Error::Invalid`] for the cases of [`lanczos_interp`] and for empty `delays`.
pub fn lanczos_fir_design(
    onsets_s: &[f64],
    values: ArrayView2<f64>,
    tr_times_s: &[f64],
    window: usize,
    delays: &[usize],
) -> Result<Array2<f64>> {
    if delays.is_empty() {
        return Err(Error::Invalid(
            "Lanczos FIR design: expected at least one delay (e.g. [1, 2, 3, 4]), found none".to_string(),
        ));
    }
    let at_trs = lanczos_interp(values, onsets_s, tr_times_s, window, 1.0)?; // (n_trs, n_features)
    Ok(fir_delays(at_trs.view(), delays))
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    #[test]
    fn kernel_is_one_at_zero_zero_beyond_the_window_and_even() {
        assert_eq!(lanczos_kernel(0.0, 3, 0.5), 1.0);
        // window 3, cutoff 0.5 Hz: support |t| <= 6 s
        assert_eq!(lanczos_kernel(6.000001, 3, 0.5), 0.0);
        assert_eq!(lanczos_kernel(-6.5, 3, 0.5), 0.0);
        assert_eq!(lanczos_kernel(100.0, 3, 0.5), 0.0);
        for &t in &[0.1, 0.7, 1.3, 2.0, 3.9, 5.99] {
            assert_eq!(lanczos_kernel(t, 3, 0.5), lanczos_kernel(-t, 3, 0.5));
        }
        // zeros at non-zero integer multiples of 1/cutoff (up to sin(kπ) rounding)
        for k in 1..=3 {
            assert_abs_diff_eq!(lanczos_kernel(2.0 * k as f64, 3, 0.5), 0.0, epsilon = 1e-15);
        }
    }

    #[test]
    fn kernel_matches_the_closed_form_at_half_a_period() {
        // u = 0.5: 3 · sin(π/2) · sin(π/6) / (π² / 4) = 6 / π²
        let pi = std::f64::consts::PI;
        assert_abs_diff_eq!(lanczos_kernel(1.0, 3, 0.5), 6.0 / (pi * pi), epsilon = 1e-15);
        // window 1: sinc² (u = 0.5 → 4 / π²)
        assert_abs_diff_eq!(lanczos_kernel(0.25, 1, 2.0), 4.0 / (pi * pi), epsilon = 1e-15);
    }

    #[test]
    fn interp_at_the_sample_times_of_a_same_rate_grid_returns_the_samples() {
        // old = new = 0, 2, 4, … : every off-diagonal weight is L(k) = 0 (k ≠ 0 integer)
        let times: Vec<f64> = (0..6).map(|k| 2.0 * k as f64).collect();
        let data = array![[1.0, -1.0], [2.0, 0.5], [3.0, 4.0], [-2.0, 1.0], [0.0, 0.0], [7.0, 3.0]];
        let out = lanczos_interp(data.view(), &times, &times, 3, 1.0).unwrap();
        for (a, b) in out.iter().zip(data.iter()) {
            assert_abs_diff_eq!(a, b, epsilon = 1e-14);
        }
    }

    #[test]
    fn interp_of_one_impulse_is_the_kernel() {
        let data = array![[2.0]];
        let new: Vec<f64> = (0..10).map(|k| k as f64).collect(); // cutoff 1 Hz
        let out = lanczos_interp(data.view(), &[3.3], &new, 3, 1.0).unwrap();
        for (k, &t) in new.iter().enumerate() {
            assert_eq!(out[[k, 0]], 2.0 * lanczos_kernel(t - 3.3, 3, 1.0));
        }
        assert_eq!(out[[7, 0]], 0.0); // |7 − 3.3| > 3
    }

    #[test]
    fn unsorted_old_times_give_the_sorted_result() {
        let t_sorted = [0.1, 0.9, 1.4, 2.2, 3.0, 3.05, 4.7];
        let data = array![[1.0], [2.0], [-1.0], [0.5], [3.0], [-2.0], [1.5]];
        let perm = [4, 0, 6, 2, 1, 5, 3];
        let t_perm: Vec<f64> = perm.iter().map(|&i| t_sorted[i]).collect();
        let d_perm = data.select(Axis(0), &perm);
        let new = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let a = lanczos_interp(data.view(), &t_sorted, &new, 3, 1.0).unwrap();
        let b = lanczos_interp(d_perm.view(), &t_perm, &new, 3, 1.0).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn interp_rejects_bad_input_with_what_was_expected() {
        let d = array![[1.0], [2.0]];
        let msg = |r: Result<Array2<f64>>| r.unwrap_err().to_string();
        assert!(msg(lanczos_interp(d.view(), &[0.0], &[0.0, 1.0], 3, 1.0)).contains("2 rows and 1 old times"));
        assert!(msg(lanczos_interp(d.view(), &[0.0, 1.0], &[0.0, 1.0], 0, 1.0)).contains("window"));
        assert!(msg(lanczos_interp(d.view(), &[0.0, f64::NAN], &[0.0, 1.0], 3, 1.0)).contains("index 1"));
        assert!(msg(lanczos_interp(d.view(), &[0.0, 1.0], &[0.0], 3, 1.0)).contains("at least 2"));
        assert!(msg(lanczos_interp(d.view(), &[0.0, 1.0], &[1.0, 0.0], 3, 1.0)).contains("increase"));
        assert!(msg(lanczos_interp(d.view(), &[0.0, 1.0], &[0.0, 1.0], 3, 0.0)).contains("cutoff_mult"));
        let bad = array![[1.0], [f64::INFINITY]];
        assert!(msg(lanczos_interp(bad.view(), &[0.0, 1.0], &[0.0, 1.0], 3, 1.0)).contains("row 1, column 0"));
    }

    #[test]
    fn fir_delays_shift_each_block_down_with_zeros_on_top() {
        let x = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]];
        let out = fir_delays(x.view(), &[1, 2]);
        let expected = array![
            [0.0, 0.0, 0.0, 0.0],
            [1.0, 2.0, 0.0, 0.0],
            [3.0, 4.0, 1.0, 2.0],
            [5.0, 6.0, 3.0, 4.0],
        ];
        assert_eq!(out, expected);
        let out = fir_delays(x.view(), &[0, 4, 9]);
        assert_eq!(out.slice(s![.., 0..2]), x);
        assert!(out.slice(s![.., 2..6]).iter().all(|&v| v == 0.0));
        assert_eq!(fir_delays(x.view(), &[]).dim(), (4, 0));
    }

    #[test]
    fn zscore_per_run_standardises_each_run_separately() {
        // run 0 = rows 0, 1, 4 (not contiguous); run 1 = rows 2, 3
        let mut x = array![[1.0, 5.0], [2.0, 5.0], [10.0, 1.0], [20.0, 3.0], [3.0, 5.0]];
        zscore_per_run(x.view_mut(), &[0, 0, 1, 1, 0]).unwrap();
        let s = (2.0f64 / 3.0).sqrt(); // population sd of 1, 2, 3
        let expected = array![[-1.0 / s, 0.0], [0.0, 0.0], [-1.0, -1.0], [1.0, 1.0], [1.0 / s, 0.0]];
        for (a, b) in x.iter().zip(expected.iter()) {
            assert_abs_diff_eq!(a, b, epsilon = 1e-12);
        }
        let err = zscore_per_run(x.view_mut(), &[0, 0]).unwrap_err().to_string();
        assert!(err.contains("5 rows and 2 labels"), "{err}");
        assert_eq!(run_of_row_from_lengths(&[2, 0, 3]), vec![0, 0, 2, 2, 2]);
    }

    #[test]
    fn tr_times_are_starts_and_midpoints_of_the_grid() {
        let g = TrGrid::new(3, 2.0, 20.0).unwrap();
        assert_eq!(tr_times_s(&g), vec![20.0, 22.0, 24.0]);
        assert_eq!(tr_mid_times_s(&g), vec![21.0, 23.0, 25.0]);
    }

    #[test]
    fn design_is_interpolation_then_delays() {
        let onsets = [0.3, 1.1, 2.6, 3.2, 5.0];
        let values = array![[1.0, 0.0], [0.5, 1.0], [-1.0, 2.0], [2.0, -0.5], [0.0, 1.0]];
        let trs = [0.0, 2.0, 4.0, 6.0];
        let x = lanczos_interp(values.view(), &onsets, &trs, 3, 1.0).unwrap();
        let d = lanczos_fir_design(&onsets, values.view(), &trs, 3, &DEFAULT_FIR_DELAYS).unwrap();
        assert_eq!(d, fir_delays(x.view(), &DEFAULT_FIR_DELAYS));
        assert_eq!(d.dim(), (4, 8));
        assert!(lanczos_fir_design(&onsets, values.view(), &trs, 3, &[]).is_err());
    }
}
