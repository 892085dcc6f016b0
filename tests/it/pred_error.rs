//! The paper's prediction-error comparison and its controls on simulated data with planted truth
//! (METHOD.md §9): the semantic set's codes C, their aligned earlier codes P, and responses built
//! from C plus (a) nothing, (b) signal spread over *all* earlier features (any earlier-derived
//! columns help, so +ε gains over C alone without any prediction-error signal, and the
//! shuffled control of the same width gains as much or more), (c) the prediction errors of the
//! aligned pairs themselves (+ε beats the shuffled control for every subject). The sets are those the pipeline encodes
//! (`taxonomy::prederror::pred_error_sets`), fitted with the pipeline's nested-CV ridge.

use cortexflow::encoding::{contiguous_block_folds, nested_cv_ridge};
use cortexflow::stats::SplitMix64;
use cortexflow::taxonomy::prederror::{pred_error_sets, prediction_residuals, Alignment};
use ndarray::{concatenate, Array1, Array2, Axis};

const N: usize = 1500; // samples (words encoded directly; no HRF needed for the comparison)
const N_SEM: usize = 16; // semantic features at layer ℓ
const N_PREV: usize = 64; // features at layer ℓ − Δ
const SUBJECTS: usize = 6;

struct World {
    /// (N, N_SEM) semantic codes, (N, N_PREV) earlier codes
    c: Array2<f32>,
    p: Array2<f32>,
    alignment: Alignment,
    /// ε of the aligned pairs
    eps: Array2<f32>,
}

fn world(seed: u64) -> World {
    let mut rng = SplitMix64::new(seed);
    let p = Array2::from_shape_fn((N, N_PREV), |_| rng.normal().max(0.0) as f32);
    // feature i continues earlier feature 3i (α = 0.8) plus its own new part
    let matched: Vec<u32> = (0..N_SEM as u32).map(|i| 3 * i).collect();
    let c = Array2::from_shape_fn((N, N_SEM), |(t, i)| {
        (0.8 * p[[t, matched[i] as usize]] as f64 + 0.6 * rng.normal().max(0.0)) as f32
    });
    let alignment = Alignment {
        cosine: vec![0.9; N_SEM],
        matched,
    };
    let eps = prediction_residuals(c.view(), p.view(), &alignment).unwrap().eps;
    World { c, p, alignment, eps }
}

/// Mean over outer folds of the held-out r (the pipeline's reported r), averaged over targets.
fn held_out_r(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    let alphas: Vec<f64> = (0..9).map(|i| 10f64.powi(i - 2)).collect();
    let outer = contiguous_block_folds(N, 5, 0).unwrap();
    let fit = nested_cv_ridge(x.view(), y.view(), &alphas, &outer, 4, 0).unwrap();
    fit.r_per_fold.mean().unwrap()
}

fn f64s(a: &Array2<f32>) -> Array2<f64> {
    a.mapv(f64::from)
}

/// Per subject: (r semantic, r +ε, r +shuffled ε, r +earlier) for responses `signal` + noise.
fn fits(w: &World, signal: &Array1<f64>, noise_sd: f64, seed: u64) -> Vec<[f64; 4]> {
    let sets = pred_error_sets(w.c.view(), w.p.view(), &w.alignment, &(0..N_SEM).collect::<Vec<_>>(), 7).unwrap();
    let c = f64s(&w.c);
    let with = |extra: &Array2<f32>| concatenate(Axis(1), &[c.view(), f64s(extra).view()]).unwrap();
    let designs = [
        c.clone(),
        with(&sets.error),
        with(&sets.shuffled_error),
        with(&sets.earlier),
    ];
    let mut rng = SplitMix64::new(seed);
    (0..SUBJECTS)
        .map(|_| {
            let y = Array2::from_shape_fn((N, 1), |(t, _)| signal[t] + noise_sd * rng.normal());
            let mut out = [0.0; 4];
            for (o, d) in out.iter_mut().zip(&designs) {
                *o = held_out_r(d, &y);
            }
            out
        })
        .collect()
}

fn mean_delta(rows: &[[f64; 4]], a: usize, b: usize) -> f64 {
    rows.iter().map(|r| r[a] - r[b]).sum::<f64>() / rows.len() as f64
}

fn column_sum(a: &Array2<f32>, cols: impl Iterator<Item = usize>, weight: f64) -> Array1<f64> {
    let mut s = Array1::<f64>::zeros(a.nrows());
    for j in cols {
        s.zip_mut_with(&a.column(j), |acc, v| *acc += weight * *v as f64);
    }
    s
}

#[test]
fn the_controls_tell_prediction_error_apart_from_more_columns() {
    let w = world(11);
    let semantic = column_sum(&w.c, 0..N_SEM, 0.25);
    // (a) nothing beyond the semantic codes: no Δr for ε, nor for the controls
    let none = fits(&w, &semantic, 2.0, 1);
    let (d_err, d_shuf, d_early) = (
        mean_delta(&none, 1, 0),
        mean_delta(&none, 2, 0),
        mean_delta(&none, 3, 0),
    );
    let r_sem = none.iter().map(|r| r[0]).sum::<f64>() / SUBJECTS as f64;
    eprintln!(
        "nothing planted: r semantic {r_sem:.4}, Δr +ε {d_err:+.4}, +shuffled {d_shuf:+.4}, +earlier {d_early:+.4}"
    );
    // 16 more columns cost ridge a little (never a gain): within 5% of r
    assert!(
        d_err < 0.0 && d_err.abs() < 0.05 * r_sem,
        "Δr of +ε with nothing planted: {d_err}"
    );
    assert!(
        mean_delta(&none, 1, 2).abs() < 0.05 * r_sem,
        "ε against the control: {}",
        mean_delta(&none, 1, 2)
    );

    // (b) signal on every earlier feature: earlier-derived columns help whichever they are, so
    // +ε gains over the semantic set alone, but no more than the shuffled control of the same
    // width: read without the control, this Δr would pass for a prediction-error effect
    let spread = &semantic + &column_sum(&w.p, 0..N_PREV, 0.3);
    let cols = fits(&w, &spread, 2.0, 2);
    let (d_err, d_shuf) = (mean_delta(&cols, 1, 0), mean_delta(&cols, 2, 0));
    let d_vs = mean_delta(&cols, 1, 2);
    eprintln!("earlier signal everywhere: Δr +ε {d_err:+.4}, +shuffled {d_shuf:+.4}, ε − shuffled {d_vs:+.4}");
    assert!(
        d_err > 0.01,
        "more columns raise r over the semantic set alone: {d_err}"
    );
    assert!(d_shuf > 0.01, "…and so does the shuffled control: {d_shuf}");
    assert!(d_vs < 0.25 * d_err, "ε does not beat the control ({d_vs} of {d_err})");

    // (c) the prediction errors themselves carry signal: ε beats both controls
    let planted = &semantic + &column_sum(&w.eps, 0..N_SEM, 0.5);
    let pe = fits(&w, &planted, 2.0, 3);
    let (d_err, d_vs_shuf) = (mean_delta(&pe, 1, 0), mean_delta(&pe, 1, 2));
    eprintln!(
        "ε planted: Δr +ε {d_err:+.4}, ε − shuffled {d_vs_shuf:+.4}, ε − earlier {:+.4}",
        mean_delta(&pe, 1, 3)
    );
    assert!(d_err > 0.03, "planted ε is recovered: {d_err}");
    assert!(d_vs_shuf > 0.02, "and beats the shuffled control: {d_vs_shuf}");
    assert!(pe.iter().all(|r| r[1] > r[2]), "for every subject");
}

#[test]
fn the_shuffled_alignment_is_seeded_keeps_shared_matches_and_refuses_bad_subsets() {
    let w = world(5);
    let subset: Vec<usize> = (0..N_SEM).collect();
    let a = pred_error_sets(w.c.view(), w.p.view(), &w.alignment, &subset, 3).unwrap();
    let b = pred_error_sets(w.c.view(), w.p.view(), &w.alignment, &subset, 3).unwrap();
    assert_eq!(a, b, "same seed, same sets");
    let c = pred_error_sets(w.c.view(), w.p.view(), &w.alignment, &subset, 4).unwrap();
    assert_ne!(a.shuffled_matches, c.shuffled_matches, "another seed, another shuffle");
    assert_eq!(a.error, w.eps, "ε of the subset = the subset's columns of the full ε");
    assert!(
        a.shuffled_matches
            .iter()
            .zip(&w.alignment.matched)
            .filter(|(s, m)| s == m)
            .count()
            <= 2
    );
    // two features sharing a match keep sharing its shuffled image
    let mut al = w.alignment.clone();
    al.matched[1] = al.matched[0];
    let s = pred_error_sets(w.c.view(), w.p.view(), &al, &subset, 3).unwrap();
    assert_eq!(s.shuffled_matches[0], s.shuffled_matches[1]);
    let e = pred_error_sets(w.c.view(), w.p.view(), &w.alignment, &[], 3).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let e = pred_error_sets(w.c.view(), w.p.view(), &w.alignment, &[N_SEM + 3], 3).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
}
