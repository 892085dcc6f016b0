//! Shared by the benchmarks: the median of repetitions, and the machine's GEMM peak as faer
//! reaches it (the yardstick of the "fraction of peak" figures).
#![allow(dead_code)]

use std::time::Instant;

/// Median of `v` (mean of the middle two for an even count; NaN when empty).
pub fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Best GEMM rate (GFLOP/s) of faer in `T` for `m × k × n` on `threads` threads, 5 runs after a
/// warm-up.
pub fn faer_gemm_gflops<T: faer::traits::ComplexField + Copy + From<f32>>(
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
) -> f64 {
    use faer::linalg::matmul::matmul;
    let a = faer::Mat::<T>::from_fn(m, k, |i, j| T::from(((i * 7 + j * 13) % 17) as f32 - 8.0));
    let b = faer::Mat::<T>::from_fn(k, n, |i, j| T::from(((i * 5 + j * 3) % 11) as f32 - 5.0));
    let mut c = faer::Mat::<T>::zeros(m, n);
    let par = faer::Par::rayon(threads);
    let one = T::from(1.0);
    matmul(c.as_mut(), faer::Accum::Replace, a.as_ref(), b.as_ref(), one, par);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        matmul(c.as_mut(), faer::Accum::Replace, a.as_ref(), b.as_ref(), one, par);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}
