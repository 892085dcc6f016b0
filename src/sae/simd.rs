//! Vector kernels of the SAE step (dot products, `y += αx`, Adam), compiled three times — for
//! AVX-512, for AVX2 and for the baseline x86-64 (SSE2) or any other target — and chosen once per
//! process from the CPU's features.
//!
//! Every variant computes exactly the same floating-point operations in the same order: the
//! kernels are written as plain Rust with a fixed association (a dot product keeps 16 lane sums,
//! added up in lane order at the end), and Rust never fuses a multiply and an add or reorders a
//! sum, so the wider instruction sets only change how many lanes one instruction handles. Results
//! are therefore bit-identical across the three variants (tested below) and to the kernels used
//! before this module existed; what the wider variants buy is fewer instructions and, for the
//! multi-row dot product, independent accumulation chains.

use std::sync::OnceLock;

/// The widest instruction set this CPU offers, among those the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    Base,
}

#[cfg(test)]
thread_local! {
    /// Tests run every variant the CPU supports by capping the level on their thread.
    static CAP: std::cell::Cell<Option<Level>> = const { std::cell::Cell::new(None) };
}

/// Detected once per process.
pub(crate) fn level() -> Level {
    #[cfg(test)]
    if let Some(cap) = CAP.with(|c| c.get()) {
        return cap;
    }
    detected()
}

fn detected() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Level::Avx2;
            }
        }
        Level::Base
    })
}

/// Defines `pub(crate) fn $name(args) -> ret` that runs `$body` compiled for the detected
/// [`Level`] (`$body` is inlined into one copy per instruction set).
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[inline]
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2")]
                fn wide($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2")]
                fn mid($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                match $crate::sae::simd::level() {
                    // SAFETY: `level()` reported the features these variants are compiled for.
                    $crate::sae::simd::Level::Avx512 => return unsafe { wide($($arg),*) },
                    $crate::sae::simd::Level::Avx2 => return unsafe { mid($($arg),*) },
                    $crate::sae::simd::Level::Base => {}
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// Lanes of the dot-product accumulators (the association every variant keeps).
const LANES: usize = 16;

/// `Σ lanes` in lane order, starting from 0.0, plus the tail: the final step of every dot product.
#[inline(always)]
fn finish(acc: [f32; LANES], tail: f32) -> f32 {
    let mut s = 0.0f32;
    for v in acc {
        s += v;
    }
    s + tail
}

/// One dot product's 16 lane sums over the whole chunks, and the tail summed in order.
#[inline(always)]
fn dot_parts(a: &[f32], b: &[f32]) -> ([f32; LANES], f32) {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    (acc, tail)
}

multiversion! {
    /// `Σ a_k b_k` with 16 lane sums (deterministic: the order depends only on the length).
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        let (acc, tail) = dot_parts(a, b);
        finish(acc, tail)
    }
}

multiversion! {
    /// `[dot(a, b0), …, dot(a, b3)]`, each bit-identical to [`dot`]; the four lane sums are
    /// independent chains, so the loop is not bound by the latency of one addition.
    fn dot4(a: &[f32], b0: &[f32], b1: &[f32], b2: &[f32], b3: &[f32]) -> [f32; 4] {
        let n = a.len();
        assert!(b0.len() == n && b1.len() == n && b2.len() == n && b3.len() == n, "dot4: lengths");
        let whole = n - n % LANES;
        let mut acc = [[0.0f32; LANES]; 4];
        let mut c = 0;
        while c < whole {
            let x = &a[c..c + LANES];
            let (y0, y1, y2, y3) = (&b0[c..c + LANES], &b1[c..c + LANES], &b2[c..c + LANES], &b3[c..c + LANES]);
            for k in 0..LANES {
                acc[0][k] += x[k] * y0[k];
                acc[1][k] += x[k] * y1[k];
                acc[2][k] += x[k] * y2[k];
                acc[3][k] += x[k] * y3[k];
            }
            c += LANES;
        }
        let mut out = [0.0f32; 4];
        for (r, b) in [b0, b1, b2, b3].into_iter().enumerate() {
            let mut tail = 0.0f32;
            for (x, y) in a[whole..].iter().zip(&b[whole..]) {
                tail += x * y;
            }
            out[r] = finish(acc[r], tail);
        }
        out
    }
}

multiversion! {
    /// `y += α x`.
    fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi += alpha * xi;
        }
    }
}

multiversion! {
    /// Two updates of the same length, `y1 += α1 x1` and `y2 += α2 x2`, in one pass.
    fn axpy2(a1: f32, x1: &[f32], y1: &mut [f32], a2: f32, x2: &[f32], y2: &mut [f32]) {
        let n = y1.len();
        assert!(x1.len() == n && x2.len() == n && y2.len() == n, "axpy2: lengths");
        for k in 0..n {
            y1[k] += a1 * x1[k];
            y2[k] += a2 * x2[k];
        }
    }
}

multiversion! {
    /// Adam with bias correction on one chunk of parameters: `m ← β₁m + (1−β₁)g`,
    /// `v ← β₂v + (1−β₂)g²`, `p ← p − step·m / (√(v·inv_bc2) + ε)`.
    fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], beta1: f32, beta2: f32, step: f32, inv_bc2: f32, eps: f32) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = beta1 * *m + (1.0 - beta1) * g;
            *v = beta2 * *v + (1.0 - beta2) * g * g;
            *p -= step * *m / ((*v * inv_bc2).sqrt() + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SplitMix64;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// The scalar path of the kernels (the code of the kernels before this module, unchanged),
    /// compiled for the baseline target of this test binary.
    fn dot_reference(a: &[f32], b: &[f32]) -> f32 {
        let (acc, tail) = dot_parts(a, b);
        finish(acc, tail)
    }

    /// The variants this CPU can run: each test runs once per variant.
    fn each_level(mut f: impl FnMut(Level)) {
        let all = [Level::Base, Level::Avx2, Level::Avx512];
        let top = all.iter().position(|&l| l == detected()).expect("a level");
        for &l in &all[..=top] {
            CAP.with(|c| c.set(Some(l)));
            f(l);
        }
        CAP.with(|c| c.set(None));
    }

    #[test]
    fn every_variant_is_bit_identical_to_the_scalar_kernels() {
        each_level(|l| every_kernel_at(l));
    }

    fn every_kernel_at(l: Level) {
        for &n in &[0usize, 1, 15, 16, 17, 576, 1600, 2051] {
            let a = random(n, 1);
            let b: Vec<Vec<f32>> = (0..4).map(|r| random(n, 10 + r)).collect();
            let want: Vec<u32> = b.iter().map(|b| dot_reference(&a, b).to_bits()).collect();
            assert_eq!(dot(&a, &b[0]).to_bits(), want[0], "dot, n = {n}, {l:?}");
            let got4 = dot4(&a, &b[0], &b[1], &b[2], &b[3]);
            assert_eq!(got4.map(f32::to_bits).to_vec(), want, "dot4, n = {n}, {l:?}");

            let mut y = random(n, 2);
            let mut y_ref = y.clone();
            axpy(0.37, &a, &mut y);
            for (yi, xi) in y_ref.iter_mut().zip(&a) {
                *yi += 0.37 * xi;
            }
            assert_eq!(y, y_ref, "axpy, n = {n}, {l:?}");
            let mut y2 = random(n, 3);
            let mut y2_ref = y2.clone();
            axpy2(-1.5, &b[0], &mut y, 0.25, &b[1], &mut y2);
            for k in 0..n {
                y_ref[k] += -1.5 * b[0][k];
                y2_ref[k] += 0.25 * b[1][k];
            }
            assert_eq!((y, y2), (y_ref, y2_ref), "axpy2, n = {n}, {l:?}");
        }
    }

    #[test]
    fn the_scalar_and_wide_paths_agree_on_adam() {
        each_level(adam_at);
    }

    fn adam_at(l: Level) {
        let n = 1000;
        let g = random(n, 4);
        let (mut p, mut m, mut v) = (
            random(n, 5),
            random(n, 6),
            random(n, 7).iter().map(|x| x * x).collect::<Vec<_>>(),
        );
        let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
        adam(&mut p, &g, &mut m, &mut v, 0.9, 0.999, 3e-4, 1.5, 1e-8);
        for k in 0..n {
            m2[k] = 0.9 * m2[k] + (1.0 - 0.9) * g[k];
            v2[k] = 0.999 * v2[k] + (1.0 - 0.999) * g[k] * g[k];
            p2[k] -= 3e-4 * m2[k] / ((v2[k] * 1.5).sqrt() + 1e-8);
        }
        assert_eq!((p, m, v), (p2, m2, v2), "{l:?}");
    }
}
