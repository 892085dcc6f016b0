//! The SAE stage: hand-written gradients against finite differences of an independent f64
//! loss, recovery of known sparse directions, determinism across thread counts, dead-feature
//! resampling, folder round trips and config validation.

use crate::support;

use approx::assert_abs_diff_eq;
use cortexflow::sae::{
    load_relu_sae, read_sae_config, sae_quality, save_relu_sae, train_relu_sae, ReluSae, ReluSaeTrainer,
    SaeTrainConfig, SaeTrainConfigError, CFG_FILE, WEIGHTS_FILE,
};
use cortexflow::stats::SplitMix64;
use ndarray::{Array1, Array2, ArrayView2};

fn gaussian(n: usize, d: usize, seed: u64) -> Array2<f32> {
    let mut rng = SplitMix64::new(seed);
    Array2::from_shape_simple_fn((n, d), || rng.normal() as f32)
}

// ---------------------------------------------------------------------------------------------
// gradients

/// Parameters in f64 for the reference.
struct Params64 {
    w_enc: Vec<Vec<f64>>, // (d_in, d_sae)
    b_enc: Vec<f64>,
    w_dec: Vec<Vec<f64>>, // (d_sae, d_in)
    b_dec: Vec<f64>,
}

impl Params64 {
    fn of(sae: &ReluSae) -> Self {
        let m = |a: &Array2<f32>| {
            a.rows()
                .into_iter()
                .map(|r| r.iter().map(|&v| v as f64).collect())
                .collect()
        };
        Params64 {
            w_enc: m(&sae.w_enc),
            b_enc: sae.b_enc.iter().map(|&v| v as f64).collect(),
            w_dec: m(&sae.w_dec),
            b_dec: sae.b_dec.iter().map(|&v| v as f64).collect(),
        }
    }
}

/// The loss written out with plain loops in f64, independently of the library:
/// mean over rows of ‖x − x̂‖² + λ Σ_j f_j ‖W_dec_j‖.
fn reference_loss(p: &Params64, x: &Array2<f32>, l1: f64) -> f64 {
    let (n, d_in) = x.dim();
    let d_sae = p.b_enc.len();
    let dec_norm: Vec<f64> = p
        .w_dec
        .iter()
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    let mut total = 0.0;
    for i in 0..n {
        let xc: Vec<f64> = (0..d_in).map(|k| x[[i, k]] as f64 - p.b_dec[k]).collect();
        let f: Vec<f64> = (0..d_sae)
            .map(|j| ((0..d_in).map(|k| xc[k] * p.w_enc[k][j]).sum::<f64>() + p.b_enc[j]).max(0.0))
            .collect();
        for k in 0..d_in {
            let xhat = (0..d_sae).map(|j| f[j] * p.w_dec[j][k]).sum::<f64>() + p.b_dec[k];
            total += (x[[i, k]] as f64 - xhat).powi(2);
        }
        total += l1 * (0..d_sae).map(|j| f[j] * dec_norm[j]).sum::<f64>();
    }
    total / n as f64
}

/// Central finite differences of the reference loss for every parameter, compared with the
/// library's f32 gradient entry by entry.
fn check_gradient(sae: &ReluSae, x: &Array2<f32>, l1: f32) -> f64 {
    let (loss, grad) = sae.loss_and_grad(x.view(), l1);
    let p0 = Params64::of(sae);
    let reference = reference_loss(&p0, x, l1 as f64);
    assert_abs_diff_eq!(loss.loss, reference, epsilon = 1e-5 * reference.abs().max(1.0));

    let h = 1e-6;
    let mut worst = 0.0f64;
    let mut compare = |name: &str, analytic: f64, perturb: &dyn Fn(&mut Params64, f64)| {
        let mut p = Params64::of(sae);
        perturb(&mut p, h);
        let up = reference_loss(&p, x, l1 as f64);
        let mut p = Params64::of(sae);
        perturb(&mut p, -h);
        let down = reference_loss(&p, x, l1 as f64);
        let numeric = (up - down) / (2.0 * h);
        let err = (analytic - numeric).abs() / (1.0 + numeric.abs());
        assert!(err < 2e-4, "{name}: analytic {analytic}, finite difference {numeric}");
        worst = worst.max(err);
    };
    for k in 0..sae.d_in {
        for j in 0..sae.d_sae {
            compare(&format!("W_enc[{k},{j}]"), grad.w_enc[[k, j]] as f64, &|p, h| {
                p.w_enc[k][j] += h
            });
            compare(&format!("W_dec[{j},{k}]"), grad.w_dec[[j, k]] as f64, &|p, h| {
                p.w_dec[j][k] += h
            });
        }
        compare(&format!("b_dec[{k}]"), grad.b_dec[k] as f64, &|p, h| p.b_dec[k] += h);
    }
    for j in 0..sae.d_sae {
        compare(&format!("b_enc[{j}]"), grad.b_enc[j] as f64, &|p, h| p.b_enc[j] += h);
    }
    worst
}

/// A tiny SAE with non-unit decoder rows (so the norm term of the penalty matters), non-zero
/// biases and inputs away from the origin.
fn tiny_sae(d_in: usize, d_sae: usize, b_enc: f32, seed: u64) -> ReluSae {
    let mut rng = SplitMix64::new(seed);
    let mut sae = ReluSae::random(d_in, d_sae, seed);
    for mut row in sae.w_dec.rows_mut() {
        let s = 0.5 + rng.next_f64() as f32;
        row.mapv_inplace(|v| v * s);
    }
    sae.w_enc.mapv_inplace(|v| v + 0.3 * rng.normal() as f32);
    sae.b_enc = Array1::from_shape_simple_fn(d_sae, || b_enc + 0.2 * rng.normal() as f32);
    sae.b_dec = Array1::from_shape_simple_fn(d_in, || 0.5 * rng.normal() as f32);
    sae
}

#[test]
fn gradients_match_finite_differences_of_an_independent_f64_loss_with_dense_codes() {
    let sae = tiny_sae(6, 10, 0.1, 11);
    let x = gaussian(9, 6, 12);
    let (loss, _) = sae.loss_and_grad(x.view(), 0.7);
    assert!(loss.l0 / 10.0 > 0.3, "codes should be dense here, L0 {}", loss.l0);
    let worst = check_gradient(&sae, &x, 0.7);
    println!("dense codes: worst relative gradient error {worst:.2e}");
}

#[test]
fn gradients_match_finite_differences_of_an_independent_f64_loss_with_sparse_codes() {
    // strongly negative encoder biases: < 5% of codes active, so the sparse kernels run
    let sae = tiny_sae(6, 60, -5.2, 21);
    let x = gaussian(12, 6, 22).mapv(|v| 2.0 * v);
    let (loss, _) = sae.loss_and_grad(x.view(), 0.4);
    let density = loss.l0 / 60.0;
    assert!(
        density > 0.0 && density < 0.05,
        "codes should be sparse here, density {density}"
    );
    println!("sparse codes: density {density:.3}");
    let worst = check_gradient(&sae, &x, 0.4);
    println!("sparse codes: worst relative gradient error {worst:.2e}");
}

// ---------------------------------------------------------------------------------------------
// codes

#[test]
fn codes_are_non_negative_and_sparse_codes_strictly_positive() {
    for seed in 0..8u64 {
        let mut sae = ReluSae::random(12, 48, seed);
        let mut rng = SplitMix64::new(seed + 100);
        sae.b_enc = Array1::from_shape_simple_fn(48, || rng.normal() as f32);
        sae.b_dec = Array1::from_shape_simple_fn(12, || rng.normal() as f32);
        sae.input_scale = 0.5 + rng.next_f64() as f32;
        let x = gaussian(200, 12, seed + 200).mapv(|v| v * 3.0);
        let dense = sae.encode(x.view());
        assert!(dense.iter().all(|&v| v >= 0.0), "seed {seed}: negative code");
        let sparse = sae.encode_sparse(x.view());
        assert!(
            sparse.values.iter().all(|&v| v > 0.0),
            "seed {seed}: stored zero or negative code"
        );
        assert_eq!(sparse.to_dense(), dense, "seed {seed}: CSR and dense codes differ");
        assert_eq!(sparse.nnz(), dense.iter().filter(|&&v| v > 0.0).count());
    }
}

// ---------------------------------------------------------------------------------------------
// recovery of known features

/// For each true direction, the largest cosine with any decoder row.
fn best_cosines(sae: &ReluSae, dirs: ArrayView2<f32>) -> Vec<f32> {
    let cos = dirs.dot(&sae.w_dec.t()); // (n_true, d_sae); both sides unit-norm
    cos.rows()
        .into_iter()
        .map(|r| r.iter().fold(f32::MIN, |m, &v| m.max(v)))
        .collect()
}

#[test]
fn training_on_sparse_mixtures_recovers_the_true_directions() {
    let (x, dirs) = support::sparse_mixture(24_000, 32, 64, 3, 7);
    let (train, heldout) = x.view().split_at(ndarray::Axis(0), 20_000);
    let cfg = SaeTrainConfig {
        expansion: 4,
        l1: 0.8,
        lr: 3e-3,
        batch_size: 256,
        steps: 3000,
        warmup_steps: 50,
        resample_every: 1000,
        log_every: 250,
        seed: 3,
        progress: false,
    };
    let t0 = std::time::Instant::now();
    let (sae, report) = train_relu_sae(train, &cfg).unwrap();
    let secs = t0.elapsed().as_secs_f64();

    let cos = best_cosines(&sae, dirs.view());
    let recovered = cos.iter().filter(|&&c| c > 0.9).count();
    let q = sae_quality(&sae, heldout);
    for log in &report.logs {
        println!(
            "step {:5} loss {:.4} mse {:.4} L0 {:5.2} dead {:.3}",
            log.step, log.loss, log.mse, log.l0, log.dead_fraction
        );
    }
    println!("resamples: {:?}", report.resamples);
    println!("{secs:.1} s; recovered {recovered}/64 (max cos > 0.9); held-out {q:?}");
    assert!(
        recovered as f64 >= 0.8 * 64.0,
        "only {recovered} of 64 true directions recovered: {cos:?}"
    );
    assert!(q.r2 > 0.9, "held-out R² {}", q.r2);
    // 3 true features per row; an L1 SAE adds small activations of split features on top
    assert!(
        q.mean_l0 >= 2.0 && q.mean_l0 <= 15.0,
        "held-out L0 {} (3 true features per row)",
        q.mean_l0
    );

    // decoder rows stay on the unit sphere
    for (j, norm) in sae.decoder_row_norms().iter().enumerate() {
        assert_abs_diff_eq!(*norm, 1.0, epsilon = 1e-5);
        assert!(norm.is_finite(), "row {j}");
    }
    // the input scale makes E‖x·s‖² = d_in on the training rows
    let ms: f64 = train.rows().into_iter().map(|r| r.dot(&r) as f64).sum::<f64>() / train.nrows() as f64;
    assert_abs_diff_eq!(ms * (sae.input_scale as f64).powi(2), 32.0, epsilon = 1e-3);
    assert_eq!(report.steps, 3000);
    assert_eq!(report.logs.len(), 12);
}

// ---------------------------------------------------------------------------------------------
// determinism

#[test]
fn the_same_seed_gives_bit_identical_weights_on_one_and_two_threads() {
    // wide enough that products are split into several tiles, long enough that both dense and
    // sparse kernels and two resamplings run
    let (x, _) = support::sparse_mixture(3000, 40, 80, 3, 5);
    let cfg = SaeTrainConfig {
        expansion: 32, // d_sae 1280 > one tile of columns
        l1: 10.0,
        lr: 1e-2,
        batch_size: 300, // > one tile of rows
        steps: 40,
        warmup_steps: 5,
        resample_every: 15,
        log_every: 10,
        seed: 9,
        progress: false,
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| train_relu_sae(x.view(), &cfg).unwrap())
    };
    let (a, ra) = run(1);
    let (b, rb) = run(2);
    assert_eq!(a, b, "weights differ between 1 and 2 threads");
    assert_eq!(ra.logs, rb.logs);
    assert_eq!(ra.resamples, rb.resamples);
    assert_eq!(ra.resamples.len(), 2);
    // both kernel families ran: dense codes at the start, sparse (< 5% active) at the end
    let density_first = ra.logs.first().unwrap().l0 / 1280.0;
    let density_last = ra.logs.last().unwrap().l0 / 1280.0;
    println!("code density: first interval {density_first:.3}, last {density_last:.3}");
    assert!(
        density_first > 0.3 && density_last < 0.04,
        "{density_first} → {density_last}"
    );
    // a different seed gives different weights
    let (c, _) = train_relu_sae(
        x.view(),
        &SaeTrainConfig {
            seed: 10,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(a.w_dec, c.w_dec);
}

// ---------------------------------------------------------------------------------------------
// resampling

#[test]
fn resampling_revives_dead_features() {
    let (x, _) = support::sparse_mixture(4000, 16, 32, 3, 13);
    let cfg = SaeTrainConfig {
        expansion: 4,
        l1: 1.0,
        lr: 1e-3,
        batch_size: 128,
        steps: 1000,
        resample_every: 0, // by hand below
        ..Default::default()
    };
    let mut trainer = ReluSaeTrainer::new(x.view(), &cfg).unwrap();
    let d_sae = trainer.sae().d_sae;
    // kill a quarter of the features: they can never fire
    let killed = d_sae / 4;
    for j in 0..killed {
        trainer.sae_mut().b_enc[j] = -1e4;
    }
    for _ in 0..30 {
        trainer.step().unwrap();
    }
    let before = sae_quality(trainer.sae(), x.view()).dead_fraction;
    assert!(trainer.window_dead_fraction() >= killed as f64 / d_sae as f64);
    assert!(before >= killed as f64 / d_sae as f64, "dead fraction before {before}");

    let ev = trainer.resample_dead();
    assert!(ev.n_dead >= killed, "{ev:?}");
    assert_eq!(ev.step, 30);
    for j in 0..killed {
        assert_eq!(trainer.sae().b_enc[j], 0.0);
        assert_abs_diff_eq!(
            trainer.sae().w_dec.row(j).dot(&trainer.sae().w_dec.row(j)),
            1.0,
            epsilon = 1e-5
        );
    }
    let after = sae_quality(trainer.sae(), x.view()).dead_fraction;
    println!("dead fraction before {before:.3}, right after resampling {after:.3}");
    assert!(after < before, "dead fraction did not drop: {before} → {after}");
    for _ in 0..30 {
        trainer.step().unwrap();
    }
    let later = sae_quality(trainer.sae(), x.view()).dead_fraction;
    println!("30 steps later {later:.3}");
    assert!(later < before);
    let (_, report) = trainer.finish();
    assert_eq!(report.resamples.len(), 1);
}

#[test]
fn scheduled_resampling_is_reported() {
    let (x, _) = support::sparse_mixture(2000, 8, 16, 2, 17);
    let cfg = SaeTrainConfig {
        expansion: 16, // far more features than structure: many stay dead
        l1: 4.0,
        lr: 3e-3,
        batch_size: 64,
        steps: 250,
        resample_every: 100,
        log_every: 50,
        ..Default::default()
    };
    let (_, report) = train_relu_sae(x.view(), &cfg).unwrap();
    let steps: Vec<usize> = report.resamples.iter().map(|e| e.step).collect();
    assert_eq!(steps, vec![100, 200]);
    assert!(report.resamples.iter().all(|e| e.n_dead == 0 || e.n_rows_scored > 0));
}

// ---------------------------------------------------------------------------------------------
// folders

#[test]
fn a_saved_folder_loads_back_bit_identical_with_saelens_tensor_names() {
    let (x, _) = support::sparse_mixture(1000, 12, 24, 2, 19);
    let cfg = SaeTrainConfig {
        expansion: 3,
        batch_size: 100,
        steps: 20,
        l1: 1.0,
        ..Default::default()
    };
    let (sae, _) = train_relu_sae(x.view(), &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("layer_12");
    save_relu_sae(&sae, Some(&cfg), &folder).unwrap();
    assert!(folder.join(CFG_FILE).is_file() && folder.join(WEIGHTS_FILE).is_file());

    let (loaded, folder_cfg) = load_relu_sae(&folder).unwrap();
    assert_eq!(loaded, sae);
    assert_eq!(folder_cfg.architecture, "relu");
    assert_eq!((folder_cfg.d_in, folder_cfg.d_sae), (12, 36));
    assert_eq!(folder_cfg.input_scale, sae.input_scale);
    assert_eq!(folder_cfg.train.as_ref(), Some(&cfg));
    assert_eq!(read_sae_config(&folder).unwrap(), folder_cfg);
    assert_eq!(loaded.encode(x.view()), sae.encode(x.view()));

    let bytes = std::fs::read(folder.join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names, vec!["W_dec", "W_enc", "b_dec", "b_enc"]);
    assert_eq!(st.tensor("W_enc").unwrap().shape(), &[12, 36]);
    assert_eq!(st.tensor("W_dec").unwrap().shape(), &[36, 12]);
}

#[test]
fn loading_a_folder_with_a_wrong_shape_or_architecture_names_the_problem() {
    let sae = ReluSae::random(4, 8, 1);
    let dir = tempfile::tempdir().unwrap();
    save_relu_sae(&sae, None, dir.path()).unwrap();
    let cfg_path = dir.path().join(CFG_FILE);
    let text = std::fs::read_to_string(&cfg_path).unwrap();

    std::fs::write(&cfg_path, text.replace("\"d_sae\": 8", "\"d_sae\": 9")).unwrap();
    let err = load_relu_sae(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("W_enc") && err.contains("[4, 9]") && err.contains("[4, 8]"),
        "{err}"
    );

    std::fs::write(&cfg_path, text.replace("\"relu\"", "\"topk\"")).unwrap();
    let err = load_relu_sae(dir.path()).unwrap_err().to_string();
    assert!(err.contains("architecture") && err.contains("topk"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// configuration

#[test]
fn check_rejects_invalid_values_naming_the_field() {
    assert_eq!(SaeTrainConfig::default().check(), Ok(()));
    let zero_batch = SaeTrainConfig {
        batch_size: 0,
        ..Default::default()
    };
    assert_eq!(zero_batch.check(), Err(SaeTrainConfigError::BatchSize(0)));
    assert!(zero_batch.check().unwrap_err().to_string().contains("`batch_size`"));
    let negative = SaeTrainConfig {
        l1: -0.1,
        ..Default::default()
    };
    assert_eq!(negative.check(), Err(SaeTrainConfigError::L1(-0.1)));
    assert!(negative.check().unwrap_err().to_string().contains("`l1`"));
    for (cfg, field) in [
        (
            SaeTrainConfig {
                l1: f32::NAN,
                ..Default::default()
            },
            "`l1`",
        ),
        (
            SaeTrainConfig {
                lr: 0.0,
                ..Default::default()
            },
            "`lr`",
        ),
        (
            SaeTrainConfig {
                expansion: 0,
                ..Default::default()
            },
            "`expansion`",
        ),
        (
            SaeTrainConfig {
                steps: 0,
                ..Default::default()
            },
            "`steps`",
        ),
        (
            SaeTrainConfig {
                log_every: 0,
                ..Default::default()
            },
            "`log_every`",
        ),
    ] {
        let msg = cfg.check().unwrap_err().to_string();
        assert!(msg.contains(field), "{msg}");
    }
    // training validates too, before touching the data
    let x = gaussian(10, 4, 1);
    let err = train_relu_sae(x.view(), &zero_batch).unwrap_err().to_string();
    assert!(err.contains("`batch_size`"), "{err}");
}

#[test]
fn training_rejects_non_finite_or_empty_input_with_its_position() {
    let mut x = gaussian(10, 4, 1);
    x[[7, 2]] = f32::NAN;
    let err = train_relu_sae(x.view(), &SaeTrainConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 7") && err.contains("column 2"), "{err}");
    let empty = Array2::<f32>::zeros((0, 4));
    assert!(train_relu_sae(empty.view(), &SaeTrainConfig::default()).is_err());
}
