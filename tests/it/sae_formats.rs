//! SAEs of every architecture: closed-form codes of hand-built SAEs (ReLU, TopK, JumpReLU), the
//! TopK + AuxK gradient against finite differences of an independent f64 loss, TopK training
//! (recovery of a known dictionary, determinism across thread counts), and SAELens / sparsify
//! folders (round trips, f16/bf16 tensors, errors that name the file and the key or tensor).

use std::collections::HashMap;
use std::path::Path;

use cortexflow::sae::{
    load_relu_sae, load_sae, load_saelens_sae, save_relu_sae, save_saelens_sae, train_topk_sae, AuxK, ReluSae,
    ReluSaeGrad, Sae, SaeFolderFormat, SaeKind, SaeMeta, SaeTrainConfig, TopKTrainConfig, CFG_FILE,
    SPARSIFY_WEIGHTS_FILE, WEIGHTS_FILE,
};
use cortexflow::stats::SplitMix64;
use ndarray::{array, Array1, Array2, ArrayView2, Axis};
use safetensors::tensor::{Dtype, TensorView};

pub(crate) fn gaussian(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut rng = SplitMix64::new(seed);
    Array2::from_shape_simple_fn((n, d), || rng.normal() as f32)
}

// ---------------------------------------------------------------------------------------------
// hand-built SAE: d_in = 3, d_sae = 4

/// ```text
/// W_enc = [[1, 0, 0,  1],      b_enc = [0, −0.5, 0.5, 0]     b_dec = [1, 0, −1]
///          [0, 1, 0,  1],
///          [0, 0, 1, −1]]
/// W_dec = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, −1]]
/// ```
fn hand_weights(input_scale: f32) -> ReluSae {
    ReluSae::from_parts(
        array![[1.0f32, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, -1.0]],
        array![0.0f32, -0.5, 0.5, 0.0],
        array![[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, -1.0]],
        array![1.0f32, 0.0, -1.0],
        input_scale,
    )
    .unwrap()
}

/// Rows x = [2, 1, 0] and [0, 3, −2]. By hand:
/// row 0: x − b_dec = [1, 1, 1];  z = [1, 1, 1, 1 + 1 − 1] + b_enc = [1, 0.5, 1.5, 1]
/// row 1: x − b_dec = [−1, 3, −1]; z = [−1, 3, −1, −1 + 3 + 1] + b_enc = [−1, 2.5, −0.5, 3]
fn hand_x() -> Array2<f32> {
    array![[2.0f32, 1.0, 0.0], [0.0, 3.0, -2.0]]
}

#[test]
fn a_hand_built_relu_sae_encodes_and_decodes_to_the_closed_form() {
    let sae = Sae::from(hand_weights(1.0));
    let codes = sae.encode(hand_x().view());
    // ReLU(z)
    assert_eq!(codes, array![[1.0f32, 0.5, 1.5, 1.0], [0.0, 2.5, 0.0, 3.0]]);
    // x̂ = f W_dec + b_dec: row 0 [1, 0.5 + 1, 1.5 − 1] + b_dec = [2, 1.5, −0.5];
    // row 1 [0, 2.5 + 3, −3] + b_dec = [1, 5.5, −4]
    let xhat = sae.decode(codes.view());
    assert_eq!(xhat, array![[2.0f32, 1.5, -0.5], [1.0, 5.5, -4.0]]);
    assert_eq!(sae.reconstruct(hand_x().view()), xhat);
    let sparse = sae.encode_sparse(hand_x().view());
    assert_eq!(sparse.indptr, vec![0, 4, 6]);
    assert_eq!(sparse.indices, vec![0, 1, 2, 3, 1, 3]);

    // input_scale 0.5 on inputs twice as large: the same codes, reconstructions in the inputs' units
    let scaled = Sae::from(hand_weights(0.5));
    let x2 = hand_x().mapv(|v| 2.0 * v);
    assert_eq!(scaled.encode(x2.view()), codes);
    assert_eq!(scaled.reconstruct(x2.view()), xhat.mapv(|v| 2.0 * v));
}

#[test]
fn a_hand_built_topk_sae_keeps_the_k_largest_codes_and_breaks_ties_by_lower_index() {
    let sae = Sae::new(SaeKind::TopK { k: 2 }, hand_weights(1.0), true).unwrap();
    let codes = sae.encode(hand_x().view());
    // row 0: z = [1, 0.5, 1.5, 1]: 1.5 (feature 2), then the tie 1 = 1 goes to feature 0
    // row 1: ReLU(z) = [0, 2.5, 0, 3]: already two non-zeros
    assert_eq!(codes, array![[1.0f32, 0.0, 1.5, 0.0], [0.0, 2.5, 0.0, 3.0]]);
    // x̂ row 0: [1, 0, 1.5] + b_dec = [2, 0, 0.5]
    assert_eq!(sae.decode(codes.view()), array![[2.0f32, 0.0, 0.5], [1.0, 5.5, -4.0]]);
    let k1 = Sae::new(SaeKind::TopK { k: 1 }, hand_weights(1.0), true).unwrap();
    assert_eq!(
        k1.encode(hand_x().view()),
        array![[0.0f32, 0.0, 1.5, 0.0], [0.0, 0.0, 0.0, 3.0]]
    );
    assert!(Sae::new(SaeKind::TopK { k: 0 }, hand_weights(1.0), true).is_err());
    assert!(Sae::new(SaeKind::TopK { k: 5 }, hand_weights(1.0), true).is_err());
}

#[test]
fn a_hand_built_jumprelu_sae_zeroes_codes_at_or_below_the_threshold() {
    let theta = array![0.5f32, 1.0, 1.5, 2.0];
    let sae = Sae::new(
        SaeKind::JumpRelu {
            threshold: theta.clone(),
        },
        hand_weights(1.0),
        true,
    )
    .unwrap();
    // row 0: z = [1, 0.5, 1.5, 1] vs θ: 1 > 0.5 kept; 0.5 ≤ 1, 1.5 ≤ 1.5 (strict), 1 ≤ 2 zeroed
    // row 1: z = [−1, 2.5, −0.5, 3]: 2.5 > 1 and 3 > 2 kept
    assert_eq!(
        sae.encode(hand_x().view()),
        array![[1.0f32, 0.0, 0.0, 0.0], [0.0, 2.5, 0.0, 3.0]]
    );
    // Gemma Scope style, b_dec not subtracted: z = x W_enc + b_enc
    // row 0: [2, 1 − 0.5, 0 + 0.5, 2 + 1 − 0] = [2, 0.5, 0.5, 3] → [2, 0, 0, 3]
    // row 1: [0, 3 − 0.5, −2 + 0.5, 0 + 3 + 2] = [0, 2.5, −1.5, 5] → [0, 2.5, 0, 5]
    let no_bdec = Sae::new(SaeKind::JumpRelu { threshold: theta }, hand_weights(1.0), false).unwrap();
    let codes = no_bdec.encode(hand_x().view());
    assert_eq!(codes, array![[2.0f32, 0.0, 0.0, 3.0], [0.0, 2.5, 0.0, 5.0]]);
    // decoding always adds b_dec: row 0 [2, 3, −3] + [1, 0, −1] = [3, 3, −4]
    assert_eq!(no_bdec.decode(codes.view()).row(0), array![3.0f32, 3.0, -4.0]);
    // a negative threshold never lets a negative pre-activation through (SAELens: ReLU(z)·1[z > θ])
    let negative = Sae::new(
        SaeKind::JumpRelu {
            threshold: Array1::from_elem(4, -10.0),
        },
        hand_weights(1.0),
        true,
    )
    .unwrap();
    assert_eq!(
        negative.encode(hand_x().view()),
        array![[1.0f32, 0.5, 1.5, 1.0], [0.0, 2.5, 0.0, 3.0]]
    );
}

// ---------------------------------------------------------------------------------------------
// random SAEs

pub(crate) fn random_weights(d_in: usize, d_sae: usize, b_enc: f32, seed: u64) -> ReluSae {
    let mut rng = SplitMix64::new(seed);
    let mut w = ReluSae::random(d_in, d_sae, seed);
    w.w_enc.mapv_inplace(|v| v + 0.3 * rng.normal() as f32);
    w.b_enc = Array1::from_shape_simple_fn(d_sae, || b_enc + 0.2 * rng.normal() as f32);
    w.b_dec = Array1::from_shape_simple_fn(d_in, || 0.5 * rng.normal() as f32);
    w
}

fn all_kinds(d_sae: usize, seed: u64) -> Vec<SaeKind> {
    let mut rng = SplitMix64::new(seed);
    vec![
        SaeKind::Relu,
        SaeKind::TopK { k: 5 },
        SaeKind::JumpRelu {
            threshold: Array1::from_shape_simple_fn(d_sae, || (rng.next_f64() as f32 - 0.3) * 0.8),
        },
    ]
}

#[test]
fn topk_codes_have_exactly_k_non_zeros_per_row_and_they_are_the_k_largest() {
    let (d_in, d_sae, k) = (16, 64, 5);
    let w = random_weights(d_in, d_sae, 0.3, 4);
    let x = gaussian(500, d_in, 5);
    let relu = Sae::from(w.clone()).encode(x.view());
    let topk = Sae::new(SaeKind::TopK { k }, w, true).unwrap();
    let codes = topk.encode(x.view());
    for (i, (r, t)) in relu.rows().into_iter().zip(codes.rows()).enumerate() {
        let positives = r.iter().filter(|&&v| v > 0.0).count();
        assert!(positives >= k, "row {i}: only {positives} positive pre-activations");
        assert_eq!(t.iter().filter(|&&v| v != 0.0).count(), k, "row {i}");
        let mut sorted: Vec<f32> = r.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[k - 1];
        for (j, (&rv, &tv)) in r.iter().zip(t.iter()).enumerate() {
            if rv > kth {
                assert_eq!(
                    tv, rv,
                    "row {i}, feature {j}: a value above the k-th largest was dropped"
                );
            } else if tv != 0.0 {
                assert_eq!((tv, rv), (kth, kth), "row {i}, feature {j}");
            }
        }
    }
    let sparse = topk.encode_sparse(x.view());
    assert_eq!(sparse.to_dense(), codes);
    assert_eq!(sparse.nnz(), 500 * k);
}

#[test]
fn codes_of_every_architecture_are_non_negative() {
    for seed in 0..4u64 {
        let w = random_weights(12, 48, 0.0, seed);
        let x = gaussian(200, 12, seed + 50).mapv(|v| 3.0 * v);
        for kind in all_kinds(48, seed) {
            let name = kind.saelens_name();
            let sae = Sae::new(kind, w.clone(), seed % 2 == 0).unwrap();
            let dense = sae.encode(x.view());
            assert!(dense.iter().all(|&v| v >= 0.0), "{name}, seed {seed}: negative code");
            assert!(dense.iter().any(|&v| v > 0.0), "{name}, seed {seed}: all codes zero");
            let sparse = sae.encode_sparse(x.view());
            assert!(sparse.values.iter().all(|&v| v > 0.0));
            assert_eq!(sparse.to_dense(), dense, "{name}, seed {seed}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TopK + AuxK gradient

/// Parameters in f64 for the reference.
pub(crate) struct Params64 {
    pub w_enc: Vec<Vec<f64>>, // (d_in, d_sae)
    pub b_enc: Vec<f64>,
    pub w_dec: Vec<Vec<f64>>, // (d_sae, d_in)
    pub b_dec: Vec<f64>,
}

impl Params64 {
    pub(crate) fn of(w: &ReluSae) -> Self {
        let m = |a: &Array2<f32>| {
            a.rows()
                .into_iter()
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect()
        };
        Params64 {
            w_enc: m(&w.w_enc),
            b_enc: w.b_enc.iter().map(|&v| v as f64).collect(),
            w_dec: m(&w.w_dec),
            b_dec: w.b_dec.iter().map(|&v| v as f64).collect(),
        }
    }
}

/// Indices of the `k` largest entries of `v` (ties → lower index) among those allowed.
fn top_indices(v: &[f64], k: usize, allowed: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).filter(|&j| allowed(j)).collect();
    idx.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).unwrap().then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Per row: (x̂ (d_in), ReLU pre-activations (d_sae)) in f64, with TopK codes.
fn forward64(p: &Params64, x: &Array2<f32>, i: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let (d_in, d_sae) = (p.b_dec.len(), p.b_enc.len());
    let xc: Vec<f64> = (0..d_in).map(|c| x[[i, c]] as f64 - p.b_dec[c]).collect();
    let relu: Vec<f64> = (0..d_sae)
        .map(|j| ((0..d_in).map(|c| xc[c] * p.w_enc[c][j]).sum::<f64>() + p.b_enc[j]).max(0.0))
        .collect();
    let keep = top_indices(&relu, k, |_| true);
    let xhat: Vec<f64> = (0..d_in)
        .map(|c| keep.iter().map(|&j| relu[j] * p.w_dec[j][c]).sum::<f64>() + p.b_dec[c])
        .collect();
    (xhat, relu)
}

/// The TopK + AuxK loss written out with plain loops in f64, independently of the library. The
/// auxiliary target `x − x̂` is `target` (computed once at the unperturbed parameters: the
/// references detach it).
fn reference_topk_loss(
    p: &Params64,
    x: &Array2<f32>,
    k: usize,
    aux: Option<(&[bool], usize, f64)>,
    target: &[Vec<f64>],
) -> f64 {
    let (n, d_in) = x.dim();
    let mut total = 0.0;
    for i in 0..n {
        let (xhat, relu) = forward64(p, x, i, k);
        total += (0..d_in).map(|c| (x[[i, c]] as f64 - xhat[c]).powi(2)).sum::<f64>();
        if let Some((dead, k_aux, coef)) = aux {
            let n_dead = dead.iter().filter(|&&d| d).count();
            let scale = (n_dead as f64 / k_aux as f64).min(1.0);
            let chosen = top_indices(&relu, k_aux.min(n_dead), |j| dead[j]);
            let err: f64 = (0..d_in)
                .map(|c| {
                    let ehat: f64 = chosen.iter().map(|&j| relu[j] * p.w_dec[j][c]).sum();
                    (ehat - target[i][c]).powi(2)
                })
                .sum();
            total += coef * scale * err;
        }
    }
    total / n as f64
}

/// Central finite differences (h = 1e-6) of the f64 reference `loss` for every parameter,
/// compared with the analytic gradient `grad` of the weights `w` (relative error < 2e-4, each
/// named in the failure). Returns the worst relative error.
pub(crate) fn compare_gradients(w: &ReluSae, grad: &ReluSaeGrad, loss: impl Fn(&Params64) -> f64) -> f64 {
    let h = 1e-6;
    let mut worst = 0.0f64;
    let mut compare = |name: &str, analytic: f64, perturb: &dyn Fn(&mut Params64, f64)| {
        let mut p = Params64::of(w);
        perturb(&mut p, h);
        let up = loss(&p);
        let mut p = Params64::of(w);
        perturb(&mut p, -h);
        let down = loss(&p);
        let numeric = (up - down) / (2.0 * h);
        let err = (analytic - numeric).abs() / (1.0 + numeric.abs());
        assert!(err < 2e-4, "{name}: analytic {analytic}, finite difference {numeric}");
        worst = worst.max(err);
    };
    for c in 0..w.d_in {
        for j in 0..w.d_sae {
            compare(&format!("W_enc[{c},{j}]"), grad.w_enc[[c, j]] as f64, &|p, h| {
                p.w_enc[c][j] += h
            });
            compare(&format!("W_dec[{j},{c}]"), grad.w_dec[[j, c]] as f64, &|p, h| {
                p.w_dec[j][c] += h
            });
        }
        compare(&format!("b_dec[{c}]"), grad.b_dec[c] as f64, &|p, h| p.b_dec[c] += h);
    }
    for j in 0..w.d_sae {
        compare(&format!("b_enc[{j}]"), grad.b_enc[j] as f64, &|p, h| p.b_enc[j] += h);
    }
    worst
}

fn check_topk_gradient(w: &ReluSae, x: &Array2<f32>, k: usize, aux: Option<AuxK<'_>>) -> f64 {
    let (loss, grad) = w.topk_loss_and_grad(x.view(), k, aux);
    let p0 = Params64::of(w);
    let target: Vec<Vec<f64>> = (0..x.nrows())
        .map(|i| {
            let (xhat, _) = forward64(&p0, x, i, k);
            (0..w.d_in).map(|c| x[[i, c]] as f64 - xhat[c]).collect()
        })
        .collect();
    let aux64 = aux.map(|a| (a.dead, a.k_aux, a.coef as f64));
    let reference = reference_topk_loss(&p0, x, k, aux64, &target);
    assert!(
        (loss.loss - reference).abs() <= 1e-5 * reference.abs().max(1.0),
        "loss {} vs reference {reference}",
        loss.loss
    );
    compare_gradients(w, &grad, |p| reference_topk_loss(p, x, k, aux64, &target))
}

/// Decoder rows of unequal norms (as between two training steps), non-zero biases.
pub(crate) fn tiny_weights(d_in: usize, d_sae: usize, seed: u64) -> ReluSae {
    let mut rng = SplitMix64::new(seed + 1000);
    let mut w = random_weights(d_in, d_sae, 0.1, seed);
    for mut row in w.w_dec.rows_mut() {
        let s = 0.5 + rng.next_f64() as f32;
        row.mapv_inplace(|v| v * s);
    }
    w
}

#[test]
fn topk_gradients_match_finite_differences_of_an_independent_f64_loss() {
    // dense kernels: k / d_sae = 3 / 12
    let w = tiny_weights(5, 12, 31);
    let x = gaussian(8, 5, 32);
    let worst = check_topk_gradient(&w, &x, 3, None);
    println!("TopK, no AuxK: worst relative gradient error {worst:.2e}");

    // with AuxK: 4 dead features, k_aux 6 → k_aux 4 and scale 4/6
    let dead: Vec<bool> = (0..12).map(|j| j % 3 == 1).collect();
    let aux = AuxK {
        dead: &dead,
        k_aux: 6,
        coef: 0.5,
    };
    let (loss, _) = w.topk_loss_and_grad(x.view(), 3, Some(aux));
    assert!(loss.aux > 0.0, "the auxiliary term should be active: {loss:?}");
    assert_eq!(loss.l0, 3.0);
    let worst = check_topk_gradient(&w, &x, 3, Some(aux));
    println!("TopK + AuxK: worst relative gradient error {worst:.2e}");
}

#[test]
fn topk_gradients_with_sparse_kernels_match_finite_differences() {
    // k / d_sae = 1 / 40 < 5%: the sparse kernels run
    let w = tiny_weights(5, 40, 41);
    let x = gaussian(10, 5, 42);
    let dead: Vec<bool> = (0..40).map(|j| j % 2 == 0).collect();
    let aux = AuxK {
        dead: &dead,
        k_aux: 3,
        coef: 1.0 / 32.0,
    };
    let (loss, _) = w.topk_loss_and_grad(x.view(), 1, Some(aux));
    assert!(loss.aux > 0.0 && loss.l0 == 1.0, "{loss:?}");
    let worst = check_topk_gradient(&w, &x, 1, Some(aux));
    println!("TopK (sparse kernels) + AuxK: worst relative gradient error {worst:.2e}");
}

// ---------------------------------------------------------------------------------------------
// TopK training

/// `n` rows in `d` dimensions, each a sum of `k` of `n_atoms` random unit atoms with coefficients
/// uniform in [0.5, 1.5], plus N(0, noise²) per entry. Returns (rows, atoms (n_atoms, d)).
pub(crate) fn sparse_dictionary(
    n: usize,
    d: usize,
    n_atoms: usize,
    k: usize,
    noise: f32,
    seed: u64,
) -> (Array2<f32>, Array2<f32>) {
    let mut rng = SplitMix64::new(seed);
    let mut atoms = Array2::from_shape_simple_fn((n_atoms, d), || rng.normal() as f32);
    for mut r in atoms.rows_mut() {
        let norm = r.dot(&r).sqrt();
        r.mapv_inplace(|v| v / norm);
    }
    let mut x = Array2::from_shape_simple_fn((n, d), || noise * rng.normal() as f32);
    for mut row in x.rows_mut() {
        let mut chosen: Vec<usize> = Vec::with_capacity(k);
        while chosen.len() < k {
            let j = rng.below(n_atoms as u64) as usize;
            if !chosen.contains(&j) {
                chosen.push(j);
            }
        }
        for j in chosen {
            row.scaled_add(0.5 + rng.next_f64() as f32, &atoms.row(j));
        }
    }
    (x, atoms)
}

pub(crate) fn max_cosines(w_dec: &Array2<f32>, atoms: ArrayView2<f32>) -> Vec<f32> {
    let cos = atoms.dot(&w_dec.t()); // both unit-norm
    cos.rows()
        .into_iter()
        .map(|r| r.iter().fold(f32::MIN, |m, &v| m.max(v)))
        .collect()
}

#[test]
fn topk_training_recovers_the_atoms_of_a_sparse_dictionary() {
    // 32 unit atoms in d = 16, 3 per row, noise σ = 0.01; 8192 training rows, 1024 held out;
    // d_sae = 64, k = 3, 1500 steps of 256 rows
    let (x, atoms) = sparse_dictionary(9216, 16, 32, 3, 0.01, 7);
    let (train, heldout) = x.view().split_at(Axis(0), 8192);
    let cfg = SaeTrainConfig {
        expansion: 4,
        lr: 3e-3,
        batch_size: 256,
        steps: 1500,
        warmup_steps: 50,
        log_every: 250,
        seed: 3,
        ..Default::default()
    };
    let topk = TopKTrainConfig {
        k: 3,
        dead_after_tokens: 256 * 50,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let (sae, report) = train_topk_sae(train, &cfg, &topk).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    for log in &report.logs {
        println!(
            "step {:5} mse {:.4} aux {:.4} L0 {:.2} dead {:.3}",
            log.step, log.mse, log.aux, log.l0, log.dead_fraction
        );
    }
    let cos = max_cosines(&sae.weights.w_dec, atoms.view());
    let mean = cos.iter().map(|&c| c as f64).sum::<f64>() / cos.len() as f64;
    let q = sae.quality(heldout);
    println!(
        "{secs:.1} s; mean max-cosine {mean:.4}; min {:.4}; held-out {q:?}",
        cos.iter().fold(1.0f32, |m, &c| m.min(c))
    );
    assert!(mean >= 0.9, "mean max-cosine {mean}: {cos:?}");
    assert_eq!(sae.kind, SaeKind::TopK { k: 3 });
    assert!(q.mean_l0 <= 3.0 && q.mean_l0 > 2.5, "held-out L0 {}", q.mean_l0);
    assert!(q.r2 > 0.8, "held-out R² {}", q.r2);
    assert!(report.resamples.is_empty(), "TopK training does not resample");
    for norm in sae.weights.decoder_row_norms() {
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

#[test]
fn topk_training_gives_bit_identical_weights_on_one_and_two_threads() {
    // d_sae 1280 > one tile of columns, batch 300 > one tile of rows; dead after 600 rows so the
    // AuxK term runs
    let (x, _) = sparse_dictionary(3000, 40, 80, 3, 0.01, 5);
    let cfg = SaeTrainConfig {
        expansion: 32,
        lr: 1e-2,
        batch_size: 300,
        steps: 30,
        warmup_steps: 5,
        log_every: 10,
        seed: 9,
        ..Default::default()
    };
    let topk = TopKTrainConfig {
        k: 8,
        dead_after_tokens: 600,
        ..Default::default()
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| train_topk_sae(x.view(), &cfg, &topk).unwrap())
    };
    let (a, ra) = run(1);
    let (b, rb) = run(2);
    assert_eq!(a, b, "weights differ between 1 and 2 threads");
    assert_eq!(ra.logs, rb.logs);
    assert!(
        ra.logs.iter().any(|l| l.aux > 0.0),
        "the AuxK term never ran: {:?}",
        ra.logs
    );
    let (c, _) = train_topk_sae(
        x.view(),
        &SaeTrainConfig {
            seed: 10,
            ..cfg.clone()
        },
        &topk,
    )
    .unwrap();
    assert_ne!(a.weights.w_dec, c.weights.w_dec);
}

#[test]
fn topk_config_check_names_the_field() {
    let x = gaussian(64, 4, 1);
    let cfg = SaeTrainConfig {
        expansion: 2,
        batch_size: 16,
        steps: 2,
        ..Default::default()
    };
    for (topk, field) in [
        (
            TopKTrainConfig {
                k: 0,
                ..Default::default()
            },
            "`k`",
        ),
        (
            TopKTrainConfig {
                k: 9,
                ..Default::default()
            },
            "`k`",
        ),
        (
            TopKTrainConfig {
                k: 2,
                aux_coef: f32::NAN,
                ..Default::default()
            },
            "`aux_coef`",
        ),
    ] {
        let err = train_topk_sae(x.view(), &cfg, &topk).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
    assert!(train_topk_sae(
        x.view(),
        &cfg,
        &TopKTrainConfig {
            k: 8,
            ..Default::default()
        }
    )
    .is_ok());
}

// ---------------------------------------------------------------------------------------------
// SAELens folders

pub(crate) fn read_cfg(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(CFG_FILE)).unwrap()).unwrap()
}

#[test]
fn saelens_round_trips_give_bit_identical_codes_for_each_architecture() {
    let x = gaussian(300, 10, 77);
    let tmp = tempfile::tempdir().unwrap();
    for (case, (scale, apply)) in [(1.0f32, true), (2.0, true), (1.0, false), (0.25, false)]
        .into_iter()
        .enumerate()
    {
        let mut w = random_weights(10, 40, 0.1, case as u64);
        w.input_scale = scale;
        for kind in all_kinds(40, case as u64 + 10) {
            let name = kind.saelens_name();
            let sae = Sae::new(kind, w.clone(), apply).unwrap();
            let dir = tmp.path().join(format!("{name}_{case}"));
            let meta = SaeMeta {
                model_name: Some("gpt2".into()),
                hook_name: Some("blocks.6.hook_resid_post".into()),
                hook_layer: Some(6),
            };
            save_saelens_sae(&sae, &meta, &dir).unwrap();
            let cfg = read_cfg(&dir);
            assert_eq!(cfg["architecture"], name);
            assert_eq!(cfg["d_in"], 10);
            assert_eq!(cfg["d_sae"], 40);
            assert_eq!(cfg["apply_b_dec_to_input"], apply);
            assert_eq!(cfg["normalize_activations"], "none");
            assert_eq!(cfg["meta"]["hook_layer"], 6);

            let loaded = load_sae(&dir).unwrap();
            assert_eq!(loaded.format, SaeFolderFormat::SaeLens);
            assert_eq!(loaded.meta, meta);
            assert_eq!(loaded.sae.kind, sae.kind, "{name}");
            assert_eq!(loaded.sae.apply_b_dec_to_input, apply);
            assert_eq!(
                loaded.sae.weights.input_scale, 1.0,
                "SAELens folds the scale into the weights"
            );
            if scale == 1.0 {
                assert_eq!(loaded.sae, sae, "{name}: weights changed");
            }
            // power-of-two scales fold exactly: codes and reconstructions are bit-identical
            assert_eq!(loaded.sae.encode(x.view()), sae.encode(x.view()), "{name}, case {case}");
            assert_eq!(loaded.sae.encode_sparse(x.view()), sae.encode_sparse(x.view()));
            assert_eq!(
                loaded.sae.reconstruct(x.view()),
                sae.reconstruct(x.view()),
                "{name}, case {case}"
            );
        }
    }
    // a scale that is not a power of two: equal up to f32 rounding
    let mut w = random_weights(10, 40, 0.1, 99);
    w.input_scale = 1.37;
    let sae = Sae::from(w);
    let dir = tmp.path().join("scaled");
    save_saelens_sae(&sae, &SaeMeta::default(), &dir).unwrap();
    let folder = load_saelens_sae(&dir).unwrap();
    assert_eq!(folder.meta, SaeMeta::default(), "unknown metadata stays unknown");
    let cfg = read_cfg(&dir);
    for key in [
        "model_name",
        "hook_name",
        "hook_layer",
        "activation_fn_str",
        "context_size",
        "prepend_bos",
        "dataset_path",
    ] {
        assert!(
            cfg.get(key).is_some(),
            "cfg.json lacks `{key}` (required by SAELens ≤ 5)"
        );
    }
    assert_eq!(cfg["cortexflow_input_scale"].as_f64().unwrap() as f32, 1.37);
    let loaded = folder.sae;
    let (a, b) = (sae.encode(x.view()), loaded.encode(x.view()));
    let max = (&a - &b).iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        max < 1e-5 * a.iter().fold(1.0f32, |m, v| m.max(v.abs())),
        "max |Δ| {max}"
    );
}

fn write_safetensors(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, shape, bytes)| (*n, TensorView::new(*dt, shape.clone(), bytes).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, Some(HashMap::from([("format".into(), "pt".into())]))).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect()
}

#[test]
fn saelens_folders_with_f16_and_bf16_tensors_are_read_as_f32() {
    // multiples of 1/8 in [−2, 2]: exact in f16 and bf16
    let mut rng = SplitMix64::new(3);
    let mut grid = |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.below(33) as f32 - 16.0) / 8.0).collect() };
    let (d_in, d_sae) = (6, 10);
    let (w_enc, b_enc, w_dec, b_dec, th) = (
        grid(d_in * d_sae),
        grid(d_sae),
        grid(d_sae * d_in),
        grid(d_in),
        grid(d_sae),
    );
    let direct = Sae::new(
        SaeKind::JumpRelu {
            threshold: Array1::from(th.clone()),
        },
        ReluSae::from_parts(
            Array2::from_shape_vec((d_in, d_sae), w_enc.clone()).unwrap(),
            Array1::from(b_enc.clone()),
            Array2::from_shape_vec((d_sae, d_in), w_dec.clone()).unwrap(),
            Array1::from(b_dec.clone()),
            1.0,
        )
        .unwrap(),
        false,
    )
    .unwrap();
    let x = gaussian(50, d_in, 4);
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, name, conv) in [
        (Dtype::F16, "float16", f16_bytes as fn(&[f32]) -> Vec<u8>),
        (Dtype::BF16, "bfloat16", bf16_bytes),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = serde_json::json!({
            "architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "dtype": name,
            "apply_b_dec_to_input": false, "normalize_activations": "none",
            "model_name": "gemma-2-2b", "hook_name": "blocks.12.hook_resid_post", "hook_layer": 12,
        });
        std::fs::write(dir.join(CFG_FILE), cfg.to_string()).unwrap();
        write_safetensors(
            &dir.join(WEIGHTS_FILE),
            &[
                ("W_enc", dtype, vec![d_in, d_sae], conv(&w_enc)),
                ("b_enc", dtype, vec![d_sae], conv(&b_enc)),
                ("W_dec", dtype, vec![d_sae, d_in], conv(&w_dec)),
                ("b_dec", dtype, vec![d_in], conv(&b_dec)),
                ("threshold", dtype, vec![d_sae], conv(&th)),
            ],
        );
        let loaded = load_sae(&dir).unwrap();
        assert_eq!(loaded.sae, direct, "{name}");
        assert_eq!(loaded.meta.hook_layer, Some(12));
        assert_eq!(loaded.sae.encode(x.view()), direct.encode(x.view()));
    }
}

#[test]
fn a_legacy_saelens_topk_config_reads_k_from_the_activation_kwargs() {
    let sae = Sae::new(SaeKind::TopK { k: 4 }, random_weights(6, 20, 0.1, 8), true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_saelens_sae(&sae, &SaeMeta::default(), dir.path()).unwrap();
    let mut cfg = read_cfg(dir.path());
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("k");
    obj.insert("architecture".into(), "standard".into());
    std::fs::write(dir.path().join(CFG_FILE), cfg.to_string()).unwrap();
    assert_eq!(load_sae(dir.path()).unwrap().sae.kind, SaeKind::TopK { k: 4 });
}

// ---------------------------------------------------------------------------------------------
// sparsify folders

#[test]
fn a_sparsify_folder_gives_the_codes_of_a_direct_topk_computation() {
    let (d_in, expansion, k, n) = (6usize, 4usize, 3usize, 40usize);
    let d_sae = d_in * expansion;
    let mut rng = SplitMix64::new(21);
    let mut rand =
        |len: usize, s: f64, m: f64| -> Vec<f32> { (0..len).map(|_| (m + s * rng.normal()) as f32).collect() };
    let enc = rand(d_sae * d_in, 0.5, 0.0); // encoder.weight (d_sae, d_in)
    let bias = rand(d_sae, 0.1, 0.05);
    let w_dec = rand(d_sae * d_in, 0.4, 0.0);
    let b_dec = rand(d_in, 0.3, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({
        "activation": "topk", "expansion_factor": expansion, "normalize_decoder": true, "num_latents": 0,
        "k": k, "multi_topk": false, "skip_connection": false, "transcode": false, "d_in": d_in,
    });
    std::fs::write(dir.path().join(CFG_FILE), cfg.to_string()).unwrap();
    write_safetensors(
        &dir.path().join(SPARSIFY_WEIGHTS_FILE),
        &[
            ("encoder.weight", Dtype::F32, vec![d_sae, d_in], f32_bytes(&enc)),
            ("encoder.bias", Dtype::F32, vec![d_sae], f32_bytes(&bias)),
            ("W_dec", Dtype::F32, vec![d_sae, d_in], f32_bytes(&w_dec)),
            ("b_dec", Dtype::F32, vec![d_in], f32_bytes(&b_dec)),
        ],
    );
    let loaded = load_sae(dir.path()).unwrap();
    assert_eq!(loaded.format, SaeFolderFormat::Sparsify);
    assert_eq!(loaded.sae.kind, SaeKind::TopK { k });
    assert_eq!((loaded.sae.d_in(), loaded.sae.d_sae()), (d_in, d_sae));

    // sparsify: TopK_k(ReLU((x − b_dec) · encoder.weightᵀ + encoder.bias)), decode Σ a W_dec + b_dec
    let x = gaussian(n, d_in, 22);
    let codes = loaded.sae.encode(x.view());
    let xhat = loaded.sae.decode(codes.view());
    for i in 0..n {
        let pre: Vec<f64> = (0..d_sae)
            .map(|j| {
                let z: f64 = (0..d_in)
                    .map(|c| (x[[i, c]] as f64 - b_dec[c] as f64) * enc[j * d_in + c] as f64)
                    .sum::<f64>()
                    + bias[j] as f64;
                z.max(0.0)
            })
            .collect();
        let top = top_indices(&pre, k, |_| true);
        for j in 0..d_sae {
            let expect = if top.contains(&j) { pre[j] } else { 0.0 };
            assert!(
                (codes[[i, j]] as f64 - expect).abs() < 1e-5 * (1.0 + expect.abs()),
                "row {i}, latent {j}: {} vs {expect}",
                codes[[i, j]]
            );
        }
        for c in 0..d_in {
            let expect: f64 = top.iter().map(|&j| pre[j] * w_dec[j * d_in + c] as f64).sum::<f64>() + b_dec[c] as f64;
            assert!((xhat[[i, c]] as f64 - expect).abs() < 1e-4, "row {i}, column {c}");
        }
    }

    // the encoder stored untransposed (d_in, d_sae) is a shape error naming the tensor
    write_safetensors(
        &dir.path().join(SPARSIFY_WEIGHTS_FILE),
        &[
            ("encoder.weight", Dtype::F32, vec![d_in, d_sae], f32_bytes(&enc)),
            ("encoder.bias", Dtype::F32, vec![d_sae], f32_bytes(&bias)),
            ("W_dec", Dtype::F32, vec![d_sae, d_in], f32_bytes(&w_dec)),
            ("b_dec", Dtype::F32, vec![d_in], f32_bytes(&b_dec)),
        ],
    );
    let err = load_sae(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(SPARSIFY_WEIGHTS_FILE)
            && err.contains("encoder.weight")
            && err.contains("[24, 6]")
            && err.contains("[6, 24]"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// errors and cortexflow folders

#[test]
fn loading_errors_name_the_file_and_the_key_or_tensor() {
    let sae = Sae::new(SaeKind::TopK { k: 2 }, random_weights(4, 8, 0.1, 1), true).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sae");
    save_saelens_sae(&sae, &SaeMeta::default(), &dir).unwrap();
    let cfg_text = std::fs::read_to_string(dir.join(CFG_FILE)).unwrap();

    // activations of the wrong width
    let loaded = load_sae(&dir).unwrap();
    assert!(loaded.check_input(4).is_ok());
    let err = loaded.check_input(5).unwrap_err().to_string();
    assert!(
        err.contains(CFG_FILE) && err.contains("d_in") && err.contains('4') && err.contains('5'),
        "{err}"
    );

    // unknown architecture
    std::fs::write(dir.join(CFG_FILE), cfg_text.replace("\"topk\"", "\"gated\"")).unwrap();
    let err = load_sae(&dir).unwrap_err().to_string();
    assert!(
        err.contains(CFG_FILE) && err.contains("architecture") && err.contains("gated"),
        "{err}"
    );

    // a missing key
    let mut cfg = read_cfg(&dir);
    cfg["architecture"] = "topk".into();
    cfg.as_object_mut().unwrap().remove("d_sae");
    std::fs::write(dir.join(CFG_FILE), cfg.to_string()).unwrap();
    let err = load_sae(&dir).unwrap_err().to_string();
    assert!(
        err.contains(CFG_FILE) && err.contains("d_sae") && err.contains("missing"),
        "{err}"
    );
    std::fs::write(dir.join(CFG_FILE), &cfg_text).unwrap();

    // a missing tensor and a transposed one
    let w = &sae.weights;
    let std = |a: &Array2<f32>| a.iter().copied().collect::<Vec<f32>>();
    write_safetensors(
        &dir.join(WEIGHTS_FILE),
        &[
            ("W_enc", Dtype::F32, vec![4, 8], f32_bytes(&std(&w.w_enc))),
            ("W_dec", Dtype::F32, vec![8, 4], f32_bytes(&std(&w.w_dec))),
            ("b_dec", Dtype::F32, vec![4], f32_bytes(&w.b_dec.to_vec())),
        ],
    );
    let err = load_sae(&dir).unwrap_err().to_string();
    assert!(
        err.contains(WEIGHTS_FILE) && err.contains("b_enc") && err.contains("missing"),
        "{err}"
    );
    write_safetensors(
        &dir.join(WEIGHTS_FILE),
        &[
            ("W_enc", Dtype::F32, vec![8, 4], f32_bytes(&std(&w.w_enc))),
            ("b_enc", Dtype::F32, vec![8], f32_bytes(&w.b_enc.to_vec())),
            ("W_dec", Dtype::F32, vec![8, 4], f32_bytes(&std(&w.w_dec))),
            ("b_dec", Dtype::F32, vec![4], f32_bytes(&w.b_dec.to_vec())),
        ],
    );
    let err = load_sae(&dir).unwrap_err().to_string();
    assert!(
        err.contains(WEIGHTS_FILE) && err.contains("W_enc") && err.contains("[4, 8]") && err.contains("[8, 4]"),
        "{err}"
    );

    // a JumpReLU folder without its threshold
    let j = Sae::new(
        SaeKind::JumpRelu {
            threshold: Array1::zeros(8),
        },
        w.clone(),
        true,
    )
    .unwrap();
    let jdir = tmp.path().join("jump");
    save_saelens_sae(&j, &SaeMeta::default(), &jdir).unwrap();
    write_safetensors(
        &jdir.join(WEIGHTS_FILE),
        &[
            ("W_enc", Dtype::F32, vec![4, 8], f32_bytes(&std(&w.w_enc))),
            ("b_enc", Dtype::F32, vec![8], f32_bytes(&w.b_enc.to_vec())),
            ("W_dec", Dtype::F32, vec![8, 4], f32_bytes(&std(&w.w_dec))),
            ("b_dec", Dtype::F32, vec![4], f32_bytes(&w.b_dec.to_vec())),
        ],
    );
    let err = load_sae(&jdir).unwrap_err().to_string();
    assert!(err.contains("threshold") && err.contains(WEIGHTS_FILE), "{err}");

    // a TopK config without k
    let mut cfg = read_cfg(&dir);
    let obj = cfg.as_object_mut().unwrap();
    obj.remove("k");
    obj.remove("activation_fn_kwargs");
    std::fs::write(dir.join(CFG_FILE), cfg.to_string()).unwrap();
    let err = load_sae(&dir).unwrap_err().to_string();
    assert!(err.contains(CFG_FILE) && err.contains("`k`"), "{err}");
}

#[test]
fn cortexflow_relu_folders_still_load_through_load_sae() {
    let mut w = random_weights(8, 24, 0.0, 5);
    w.input_scale = 1.7;
    let dir = tempfile::tempdir().unwrap();
    save_relu_sae(&w, None, dir.path()).unwrap();
    let loaded = load_sae(dir.path()).unwrap();
    assert_eq!(loaded.format, SaeFolderFormat::Cortexflow);
    assert_eq!(loaded.sae, Sae::from(w.clone()));
    let x = gaussian(100, 8, 6);
    assert_eq!(loaded.sae.encode(x.view()), w.encode(x.view()));
    assert_eq!(loaded.sae.reconstruct(x.view()), w.reconstruct(x.view()));
    assert_eq!(load_relu_sae(dir.path()).unwrap().0, w);
}
