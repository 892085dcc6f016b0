//! Tests of `cortexflow::features::lanczos` against the Huth lab's numpy code
//! (`scripts/reference_lanczos.py`: `lanczosinterp2D`, `make_delayed`, dense sinc matrix) on seeded
//! random irregular word times, and properties of the Lanczos filter on constant signals.
//!
//! Arrays travel to and from Python as `.npy` files (float64, C order) written and read by the tiny
//! helpers below.

use crate::support;

use std::path::{Path, PathBuf};

use cortexflow::features::lanczos::*;
use cortexflow::features::TrGrid;
use cortexflow::stats::SplitMix64;
use ndarray::{Array2, Axis};

// ---------------------------------------------------------------------------------------------
// .npy (version 1.0, '<f8', C order) and the Python peer

fn write_npy(path: &Path, shape: &[usize], values: impl IntoIterator<Item = f64>) {
    let shape_txt = match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes, '\n' last
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    let mut n = 0;
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
        n += 1;
    }
    assert_eq!(
        n,
        shape.iter().product::<usize>(),
        "write_npy: value count vs shape {shape:?}"
    );
    std::fs::write(path, bytes).unwrap();
}

fn write_matrix(path: &Path, a: &Array2<f64>) {
    write_npy(path, &[a.nrows(), a.ncols()], a.iter().copied()); // logical (row-major) order
}

/// Reads a 2-D float64 C-order `.npy` as written by `np.save`.
fn read_matrix(path: &Path) -> Array2<f64> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}: not an .npy file", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f8'") && header.contains("'fortran_order': False"),
        "{}: expected little-endian float64 in C order, header {header}",
        path.display()
    );
    let shape_txt = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let dims: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        dims.len(),
        2,
        "{}: expected a 2-D array, header {header}",
        path.display()
    );
    let values: Vec<f64> = bytes[start + header_len..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Array2::from_shape_vec((dims[0], dims[1]), values).unwrap()
}

fn reference_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference_lanczos.py")
}

/// Runs `scripts/reference_lanczos.py` with `args` (as `python script args…`).
fn run_reference(args: &[&str]) {
    let script = reference_script();
    let mut all = vec![script.to_str().unwrap()];
    all.extend_from_slice(args);
    support::run_python(
        "import runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')",
        &all,
    );
}

fn python_lanczos(
    dir: &Path,
    data: &Array2<f64>,
    old_s: &[f64],
    new_s: &[f64],
    window: usize,
    cutoff_mult: f64,
) -> Array2<f64> {
    let (d, o, n, out) = (
        dir.join("data.npy"),
        dir.join("old.npy"),
        dir.join("new.npy"),
        dir.join("out.npy"),
    );
    write_matrix(&d, data);
    write_npy(&o, &[old_s.len()], old_s.iter().copied());
    write_npy(&n, &[new_s.len()], new_s.iter().copied());
    let (w, c) = (window.to_string(), format!("{cutoff_mult:?}"));
    run_reference(&[
        "interp",
        d.to_str().unwrap(),
        o.to_str().unwrap(),
        n.to_str().unwrap(),
        &w,
        &c,
        out.to_str().unwrap(),
    ]);
    read_matrix(&out)
}

fn python_delays(dir: &Path, x: &Array2<f64>, delays: &[usize]) -> Array2<f64> {
    let (s, out) = (dir.join("stim.npy"), dir.join("delayed.npy"));
    write_matrix(&s, x);
    let d = delays.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
    run_reference(&["delay", s.to_str().unwrap(), &d, out.to_str().unwrap()]);
    read_matrix(&out)
}

/// Largest absolute elementwise difference, with the position where it occurs.
fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> (f64, (usize, usize)) {
    assert_eq!(a.dim(), b.dim(), "shapes differ");
    a.indexed_iter()
        .map(|(ix, v)| ((v - b[ix]).abs(), ix))
        .fold((0.0, (0, 0)), |m, x| if x.0 > m.0 { x } else { m })
}

// ---------------------------------------------------------------------------------------------
// Seeded inputs

/// `n_words` sorted uniform word times in `[0, span_s)` and `(n_words, n_features)` standard normal
/// values.
fn random_words(seed: u64, n_words: usize, span_s: f64, n_features: usize) -> (Vec<f64>, Array2<f64>) {
    let mut rng = SplitMix64::new(seed);
    let mut times: Vec<f64> = (0..n_words).map(|_| rng.next_f64() * span_s).collect();
    times.sort_by(f64::total_cmp);
    let values = Array2::from_shape_simple_fn((n_words, n_features), || rng.normal());
    (times, values)
}

const TOL: f64 = 1e-10;

#[test]
fn lanczos_interp_matches_the_huth_lab_lanczosinterp2d_on_irregular_words() {
    let tmp = tempfile::tempdir().unwrap();
    // (seed, TR grid, TR midpoints?, window, cutoff_mult, jitter of the new times in s)
    let cases: [(u64, TrGrid, bool, usize, f64, f64); 5] = [
        (1, TrGrid::new(150, 2.0, 0.0).unwrap(), false, 3, 1.0, 0.0),
        (2, TrGrid::new(150, 2.0, 0.0).unwrap(), true, 3, 1.0, 0.0),
        // grid starting late and ending early: words outside it contribute only near the edges
        (3, TrGrid::new(120, 2.0, 20.0).unwrap(), false, 3, 1.0, 0.0),
        (4, TrGrid::new(200, 1.5, -5.0).unwrap(), true, 5, 0.8, 0.0),
        // jittered trigger times (only their mean step sets the cutoff)
        (5, TrGrid::new(150, 2.0, 1.0).unwrap(), false, 1, 1.3, 0.1),
    ];
    for (seed, grid, mid, window, cutoff_mult, jitter_s) in cases {
        let (old_s, data) = random_words(seed, 500, 300.0, 7);
        let mut rng = SplitMix64::new(seed ^ 0xABCD);
        let new_s: Vec<f64> = if mid { tr_mid_times_s(&grid) } else { tr_times_s(&grid) }
            .into_iter()
            .map(|t| t + jitter_s * (2.0 * rng.next_f64() - 1.0))
            .collect();
        let ours = lanczos_interp(data.view(), &old_s, &new_s, window, cutoff_mult).unwrap();
        let theirs = python_lanczos(tmp.path(), &data, &old_s, &new_s, window, cutoff_mult);
        let (diff, at) = max_abs_diff(&ours, &theirs);
        let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            diff <= TOL,
            "seed {seed}, window {window}, cutoff_mult {cutoff_mult}: max |cortexflow − numpy| = {diff:e} at {at:?} \
             (cortexflow {}, numpy {}; max |numpy| = {scale})",
            ours[at],
            theirs[at]
        );
        assert!(
            scale > 0.1,
            "seed {seed}: the comparison is vacuous (max |numpy| = {scale})"
        );
    }
}

#[test]
fn lanczos_interp_of_shuffled_words_matches_the_reference_on_the_same_shuffle() {
    let tmp = tempfile::tempdir().unwrap();
    let (old_s, data) = random_words(11, 500, 300.0, 7);
    // Fisher–Yates with the crate's generator; the reference sees the same unsorted input
    let mut rng = SplitMix64::new(12);
    let mut perm: Vec<usize> = (0..old_s.len()).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let old_shuffled: Vec<f64> = perm.iter().map(|&i| old_s[i]).collect();
    let data_shuffled = data.select(Axis(0), &perm);
    let new_s = tr_times_s(&TrGrid::new(150, 2.0, 0.0).unwrap());

    let ours = lanczos_interp(data_shuffled.view(), &old_shuffled, &new_s, 3, 1.0).unwrap();
    let theirs = python_lanczos(tmp.path(), &data_shuffled, &old_shuffled, &new_s, 3, 1.0);
    let (diff, at) = max_abs_diff(&ours, &theirs);
    assert!(
        diff <= TOL,
        "shuffled words: max |cortexflow − numpy| = {diff:e} at {at:?}"
    );
    // and it is the sorted input's answer, bit for bit (same summation order)
    let sorted = lanczos_interp(data.view(), &old_s, &new_s, 3, 1.0).unwrap();
    assert_eq!(ours, sorted);
}

#[test]
fn fir_delays_match_the_huth_lab_make_delayed() {
    let tmp = tempfile::tempdir().unwrap();
    let (old_s, data) = random_words(21, 500, 300.0, 7);
    let x = lanczos_interp(
        data.view(),
        &old_s,
        &tr_times_s(&TrGrid::new(150, 2.0, 0.0).unwrap()),
        3,
        1.0,
    )
    .unwrap();
    for delays in [&DEFAULT_FIR_DELAYS[..], &[0, 3, 7], &[2], &[0, 149, 150, 400]] {
        let ours = fir_delays(x.view(), delays);
        let theirs = python_delays(tmp.path(), &x, delays);
        assert_eq!(ours.dim(), (150, 7 * delays.len()), "delays {delays:?}");
        let (diff, at) = max_abs_diff(&ours, &theirs);
        assert!(
            diff <= TOL,
            "delays {delays:?}: max |cortexflow − numpy| = {diff:e} at {at:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Properties of the (unnormalised) Lanczos filter on a constant signal

/// `∫_{-3}^{3} L(u) du` for the window-3 kernel (composite Simpson, 60 000 panels).
fn lanczos3_integral() -> f64 {
    let n = 60_000;
    let h = 6.0 / n as f64;
    let f = |k: usize| lanczos_kernel(-3.0 + k as f64 * h, 3, 1.0);
    let inner: f64 = (1..n).map(|k| if k % 2 == 1 { 4.0 * f(k) } else { 2.0 * f(k) }).sum();
    (f(0) + inner + f(n)) * h / 3.0
}

/// The Huth-lab filter is a sum, not a mean: Σ_i L((t − t_i)·cutoff)·c. On a constant `c` it
/// reproduces `c` only when the samples are as far apart as the new times (then Σ_i L(φ − i) is
/// Lanczos-3's partition of unity: exactly 1 at phase φ = 0, between 0.99430 and 1 otherwise), and
/// gives ≈ `c · m · ∫L` (∫L = 0.9970553…) when sampled `m` times per new step.
#[test]
fn lanczos_of_a_constant_is_the_constant_times_samples_per_tr_times_the_kernel_integral() {
    let integral = lanczos3_integral();
    // independent value: numpy trapezoid on 2·10⁶ panels
    assert!((integral - 0.997_055_345_95).abs() < 1e-9, "∫L = {integral}");
    // the ripple bound: min over phases of Σ_k L(φ − k), attained at φ = 1/2
    let ripple_min: f64 = (-10..=10).map(|k| lanczos_kernel(0.5 - k as f64, 3, 1.0)).sum();
    assert!(
        (0.99429..0.99431).contains(&ripple_min),
        "Σ_k L(1/2 − k) = {ripple_min}"
    );

    for seed in 0..25u64 {
        let mut rng = SplitMix64::new(seed);
        let tr_s = 1.5 + rng.next_f64();
        let t0_s = 10.0 * rng.next_f64();
        let c = 5.0 * rng.normal();
        let n_trs = 40;
        let grid = TrGrid::new(n_trs, tr_s, t0_s).unwrap();
        let new_s = tr_times_s(&grid);
        let interior = 5..n_trs - 5; // at least 3 TRs (the window) from either end of the samples

        // (a) same rate as the TRs, arbitrary phase (phase 0 for seed 0, 1/2 for seed 1)
        let phase = match seed {
            0 => 0.0,
            1 => 0.5,
            _ => rng.next_f64(),
        };
        let old_s: Vec<f64> = (-10..n_trs as i64 + 10)
            .map(|j| t0_s + (j as f64 + phase) * tr_s)
            .collect();
        let data = Array2::from_elem((old_s.len(), 1), c);
        let y = lanczos_interp(data.view(), &old_s, &new_s, 3, 1.0).unwrap();
        for k in interior.clone() {
            let ratio = y[[k, 0]] / c;
            assert!(
                (ripple_min - 1e-12..=1.0 + 1e-12).contains(&ratio),
                "seed {seed}, same rate, phase {phase}: TR {k} gives {ratio} × the constant"
            );
            if phase == 0.0 {
                assert!(
                    (ratio - 1.0).abs() < 1e-12,
                    "seed {seed}, phase 0: TR {k} gives {ratio}"
                );
            }
        }

        // (b) dense: m samples per TR → m · ∫L · c, up to the Riemann-sum error (< 2·10⁻⁷ at m = 10)
        let m = 10 + rng.below(31) as usize;
        let step_s = tr_s / m as f64;
        let offset_s = step_s * rng.next_f64();
        let n_old = (n_trs + 20) * m;
        let old_s: Vec<f64> = (0..n_old)
            .map(|j| t0_s - 10.0 * tr_s + offset_s + j as f64 * step_s)
            .collect();
        let data = Array2::from_elem((n_old, 1), c);
        let y = lanczos_interp(data.view(), &old_s, &new_s, 3, 1.0).unwrap();
        for k in interior.clone() {
            let per_sample = y[[k, 0]] / (c * m as f64);
            assert!(
                (per_sample - integral).abs() < 1e-6,
                "seed {seed}, {m} samples per TR: TR {k} gives {per_sample} × m × c, expected ∫L = {integral}"
            );
        }
    }
}

#[test]
fn design_matrix_has_one_block_per_delay_and_the_reference_values() {
    let tmp = tempfile::tempdir().unwrap();
    let (old_s, data) = random_words(31, 500, 300.0, 7);
    let grid = TrGrid::new(150, 2.0, 0.0).unwrap();
    let trs = tr_mid_times_s(&grid);
    let x = lanczos_fir_design(&old_s, data.view(), &trs, DEFAULT_LANCZOS_WINDOW, &DEFAULT_FIR_DELAYS).unwrap();
    assert_eq!(x.dim(), (150, 7 * 4));
    let at_trs = python_lanczos(tmp.path(), &data, &old_s, &trs, 3, 1.0);
    let theirs = python_delays(tmp.path(), &at_trs, &DEFAULT_FIR_DELAYS);
    let (diff, at) = max_abs_diff(&x, &theirs);
    assert!(diff <= TOL, "design: max |cortexflow − numpy| = {diff:e} at {at:?}");
}
