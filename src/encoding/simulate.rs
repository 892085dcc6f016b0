//! BOLD-like responses with known truth, for testing the whole encoding chain (`cortexflow
//! simulate`).
//!
//! Input: a design X (n_trs, n_features), e.g. word features convolved with the HRF and averaged
//! per TR ([`crate::features::words_to_trs`]) or Lanczos + FIR ([`crate::features::lanczos`]).
//! Output, per target j (n_targets columns):
//!
//! `y_j = Σ_g a_gj · s_gj + ε_j`, `s_gj = X_g w_gj` scaled to unit sample variance,
//! `a_gj = sqrt(snr · share_g)`, `ε_j` AR(1) noise with coefficient φ scaled to unit sample variance,
//!
//! where the groups g partition the columns (one group by default), `share_g` are the planted
//! relative variances of the groups (summing to 1), and `w` has each entry nonzero with
//! probability `density` (standard normal; at least one nonzero entry per group and target).
//! So var(signal) : var(noise) ≈ snr, and with uncorrelated groups the planted unique R² of group g
//! is ≈ snr · share_g / (snr + 1). The simulation reports the exact sample quantities next to
//! the nominal ones: the noise-free ceiling r_j = corr(signal_j, y_j) (no model can beat it in
//! expectation) and each group's sample variance share of y.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::stats::{pearson, SplitMix64};
use crate::{Error, Result};

/// Parameters of [`simulate_responses`]; see the module doc for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulationOptions {
    pub n_targets: usize,
    /// var(signal) / var(noise), > 0.
    pub snr: f64,
    /// Probability that a weight is nonzero, in (0, 1].
    pub density: f64,
    /// AR(1) coefficient of the noise, in [0, 1) (fMRI noise is autocorrelated: ≈ 0.3–0.6 at TR 2 s).
    pub noise_ar1: f64,
    /// Group of each design column (0-based, every group 0 … n_groups − 1 used); empty: one group.
    pub groups: Vec<usize>,
    /// Relative variance of each group's signal (non-negative, not all 0; normalised to sum 1);
    /// empty: equal shares.
    pub group_shares: Vec<f64>,
    pub seed: u64,
}

impl Default for SimulationOptions {
    fn default() -> Self {
        SimulationOptions {
            n_targets: 100,
            snr: 0.5,
            density: 0.3,
            noise_ar1: 0.4,
            groups: Vec::new(),
            group_shares: Vec::new(),
            seed: 0,
        }
    }
}

/// Result of [`simulate_responses`].
#[derive(Debug, Clone)]
pub struct Simulation {
    /// (n_trs, n_targets): signal + noise.
    pub responses: Array2<f64>,
    /// (n_trs, n_targets): the noise-free part.
    pub signal: Array2<f64>,
    /// (n_features, n_targets): the planted weights (in units of the design, after the scaling
    /// that gives each group's signal its variance), so signal = X · weights exactly.
    pub weights: Array2<f64>,
    /// (n_targets): corr(signal, responses), the noise-free ceiling of r.
    pub ceiling_r: Vec<f64>,
    /// (n_groups, n_targets): sample var(a_g s_g) / var(y), the planted R² share of each group.
    pub group_r2: Array2<f64>,
}

/// Simulates responses to `design` (see the module doc). Deterministic in `opts.seed`.
pub fn simulate_responses(design: ArrayView2<f64>, opts: &SimulationOptions) -> Result<Simulation> {
    let (n, p) = design.dim();
    if n < 3 || p == 0 {
        return Err(Error::Invalid(format!(
            "simulate: expected a design with at least 3 rows and 1 column, found ({n}, {p})"
        )));
    }
    if let Some(((i, j), v)) = design.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "simulate: design must be finite, found {v} at row {i}, column {j}"
        )));
    }
    if opts.n_targets == 0 || !(opts.snr > 0.0 && opts.snr.is_finite()) {
        return Err(Error::Invalid(format!(
            "simulate: expected n_targets ≥ 1 and a finite snr > 0, found {} and {}",
            opts.n_targets, opts.snr
        )));
    }
    if !(opts.density > 0.0 && opts.density <= 1.0) || !(0.0..1.0).contains(&opts.noise_ar1) {
        return Err(Error::Invalid(format!(
            "simulate: expected density in (0, 1] and noise_ar1 in [0, 1), found {} and {}",
            opts.density, opts.noise_ar1
        )));
    }
    let groups: Vec<usize> = if opts.groups.is_empty() {
        vec![0; p]
    } else {
        opts.groups.clone()
    };
    if groups.len() != p {
        return Err(Error::Invalid(format!(
            "simulate: {} group labels for {p} design columns",
            groups.len()
        )));
    }
    let n_groups = groups.iter().max().map_or(0, |m| m + 1);
    let members: Vec<Vec<usize>> = (0..n_groups)
        .map(|g| (0..p).filter(|&c| groups[c] == g).collect())
        .collect();
    if let Some(g) = members.iter().position(Vec::is_empty) {
        return Err(Error::Invalid(format!(
            "simulate: group {g} has no columns (labels must be 0 … n_groups − 1)"
        )));
    }
    let shares: Vec<f64> = if opts.group_shares.is_empty() {
        vec![1.0 / n_groups as f64; n_groups]
    } else {
        let total: f64 = opts.group_shares.iter().sum();
        if opts.group_shares.len() != n_groups
            || opts.group_shares.iter().any(|&s| !(s >= 0.0 && s.is_finite()))
            || total <= 0.0
        {
            return Err(Error::Invalid(format!(
                "simulate: expected {n_groups} non-negative group shares with a positive sum, found {:?}",
                opts.group_shares
            )));
        }
        opts.group_shares.iter().map(|s| s / total).collect()
    };

    let t = opts.n_targets;
    let mut rng = SplitMix64::new(opts.seed);
    let mut weights = Array2::<f64>::zeros((p, t));
    let mut signal = Array2::<f64>::zeros((n, t));
    let mut group_signal: Vec<Array2<f64>> = vec![Array2::zeros((n, t)); n_groups];
    // each group's design columns, copied once (not once per target)
    let x_groups: Vec<Array2<f64>> = members.iter().map(|cols| design.select(Axis(1), cols)).collect();
    for j in 0..t {
        for (g, cols) in members.iter().enumerate() {
            let mut w = Array1::<f64>::zeros(cols.len());
            for k in 0..cols.len() {
                if rng.next_f64() < opts.density {
                    w[k] = rng.normal();
                }
            }
            if w.iter().all(|&v| v == 0.0) {
                w[rng.below(cols.len() as u64) as usize] = rng.normal();
            }
            let sg = x_groups[g].dot(&w);
            let sd = sample_sd(sg.as_slice().expect("contiguous"));
            let scale = if sd > 0.0 {
                (opts.snr * shares[g]).sqrt() / sd
            } else {
                0.0
            };
            for (k, &c) in cols.iter().enumerate() {
                weights[[c, j]] = w[k] * scale;
            }
            let part = sg * scale;
            group_signal[g].column_mut(j).assign(&part);
            let mut col = signal.column_mut(j);
            col += &part;
        }
    }
    let mut responses = signal.clone();
    add_ar1_noise(&mut responses, opts.noise_ar1, &mut rng);
    let ceiling_r = (0..t)
        .map(|j| pearson(&signal.column(j).to_vec(), &responses.column(j).to_vec()))
        .collect();
    let mut group_r2 = Array2::<f64>::zeros((n_groups, t));
    for j in 0..t {
        let vy = sample_sd(&responses.column(j).to_vec()).powi(2);
        for g in 0..n_groups {
            group_r2[[g, j]] = sample_sd(&group_signal[g].column(j).to_vec()).powi(2) / vy;
        }
    }
    Ok(Simulation {
        responses,
        signal,
        weights,
        ceiling_r,
        group_r2,
    })
}

/// Adds AR(1) noise with coefficient `phi`, centred and scaled to unit sample variance, to each
/// column of `y`.
fn add_ar1_noise(y: &mut Array2<f64>, phi: f64, rng: &mut SplitMix64) {
    let (n, t) = y.dim();
    for j in 0..t {
        let mut e = vec![0.0; n];
        e[0] = rng.normal() / (1.0 - phi * phi).sqrt();
        for i in 1..n {
            e[i] = phi * e[i - 1] + rng.normal();
        }
        let mean = e.iter().sum::<f64>() / n as f64;
        let sd = sample_sd(&e);
        for i in 0..n {
            y[[i, j]] += (e[i] - mean) / sd;
        }
    }
}

/// Responses of several simulated subjects to one stimulus: [`simulate_responses`]'s planted
/// signal (weights from `opts.seed`, so the same for every subject) plus, per subject, its own
/// AR(1) noise drawn from `noise_seeds[s]`. Returns the simulation of the planted signal (its
/// `responses` use `opts.seed`'s noise) and one `(n_trs, n_targets)` response matrix per seed.
pub fn simulate_subjects(
    design: ArrayView2<f64>,
    opts: &SimulationOptions,
    noise_seeds: &[u64],
) -> Result<(Simulation, Vec<Array2<f64>>)> {
    let sim = simulate_responses(design, opts)?;
    let subjects = noise_seeds
        .iter()
        .map(|&seed| {
            let mut y = sim.signal.clone();
            add_ar1_noise(&mut y, opts.noise_ar1, &mut SplitMix64::new(seed));
            y
        })
        .collect();
    Ok((sim, subjects))
}

/// Population-style sd with the n − 1 denominator (sample sd).
fn sample_sd(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    fn design(n: usize, p: usize, seed: u64) -> Array2<f64> {
        let mut rng = SplitMix64::new(seed);
        Array2::from_shape_simple_fn((n, p), || rng.normal())
    }

    #[test]
    fn the_signal_is_the_design_times_the_planted_weights_and_the_snr_is_as_asked() {
        let x = design(500, 6, 1);
        let opts = SimulationOptions {
            n_targets: 4,
            snr: 2.0,
            ..Default::default()
        };
        let sim = simulate_responses(x.view(), &opts).unwrap();
        let again = x.dot(&sim.weights);
        for (a, b) in again.iter().zip(sim.signal.iter()) {
            assert_abs_diff_eq!(a, b, epsilon = 1e-10);
        }
        for j in 0..4 {
            let vs = sample_sd(&sim.signal.column(j).to_vec()).powi(2);
            assert_abs_diff_eq!(vs, 2.0, epsilon = 1e-10);
            let noise: Vec<f64> = (0..500).map(|i| sim.responses[[i, j]] - sim.signal[[i, j]]).collect();
            assert_abs_diff_eq!(sample_sd(&noise), 1.0, epsilon = 1e-10);
            // ceiling ≈ sqrt(snr / (snr + 1)) up to the sample signal–noise correlation
            assert!((sim.ceiling_r[j] - (2.0f64 / 3.0).sqrt()).abs() < 0.05);
        }
        let same = simulate_responses(x.view(), &opts).unwrap();
        assert_eq!(same.responses, sim.responses);
    }

    /// Subjects share the planted signal and differ in their noise: two subjects' responses
    /// correlate at ≈ snr / (snr + 1) (the closed form for independent unit-variance noise).
    #[test]
    fn simulated_subjects_share_the_signal_and_not_the_noise() {
        let x = design(4000, 3, 5);
        let opts = SimulationOptions {
            n_targets: 2,
            snr: 1.0,
            noise_ar1: 0.3,
            ..Default::default()
        };
        let (sim, ys) = simulate_subjects(x.view(), &opts, &[11, 12, 11]).unwrap();
        assert_eq!(ys.len(), 3);
        assert_eq!(ys[0], ys[2], "same seed, same noise");
        for y in &ys {
            let noise: Vec<f64> = (0..4000).map(|i| y[[i, 0]] - sim.signal[[i, 0]]).collect();
            assert_abs_diff_eq!(sample_sd(&noise), 1.0, epsilon = 1e-10);
        }
        for j in 0..2 {
            let r = pearson(&ys[0].column(j).to_vec(), &ys[1].column(j).to_vec());
            assert!((r - 0.5).abs() < 0.05, "target {j}: inter-subject r = {r}");
        }
    }

    #[test]
    fn group_shares_set_each_groups_signal_variance() {
        let x = design(400, 6, 2);
        let opts = SimulationOptions {
            n_targets: 3,
            snr: 1.0,
            groups: vec![0, 0, 1, 1, 1, 2],
            group_shares: vec![2.0, 1.0, 1.0],
            ..Default::default()
        };
        let sim = simulate_responses(x.view(), &opts).unwrap();
        for j in 0..3 {
            let r = sim.group_r2.column(j);
            // var(a_g s_g) = snr · share_g; var(y) ≈ 2
            assert!((r[0] / r[1] - 2.0).abs() < 1e-9 && (r[1] / r[2] - 1.0).abs() < 1e-9);
        }
        let bad = SimulationOptions {
            groups: vec![0, 0, 2, 2, 2, 2],
            ..opts
        };
        assert!(simulate_responses(x.view(), &bad)
            .unwrap_err()
            .to_string()
            .contains("group 1"));
    }
}
