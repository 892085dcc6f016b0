//! BatchTopK and Matryoshka BatchTopK SAEs: the hand-written gradient against finite differences
//! of an independent f64 loss (batch-wide selection by a full sort, nested prefixes, AuxK),
//! training on a planted sparse dictionary (atoms recovered, inference L0 ≈ k through the learnt
//! threshold, Matryoshka's prefixes reconstructing on their own), determinism across thread
//! counts, SAELens folders (JumpReLU with the threshold) and configuration errors.

use cortexflow::sae::{
    load_sae, save_saelens_sae, train_batch_topk_sae, AuxK, BatchTopKTrainConfig, ReluSae, Sae, SaeKind, SaeMeta,
    SaeTrainConfig, TopKTrainConfig,
};
use ndarray::{Array2, ArrayView2, Axis};

use super::sae_formats::{
    compare_gradients, gaussian, max_cosines, read_cfg, sparse_dictionary, tiny_weights, Params64,
};

/// ReLU pre-activations of every row in f64: (n, d_sae).
fn relu64(p: &Params64, x: &Array2<f32>) -> Vec<Vec<f64>> {
    let (d_in, d_sae) = (p.b_dec.len(), p.b_enc.len());
    (0..x.nrows())
        .map(|i| {
            let xc: Vec<f64> = (0..d_in).map(|c| x[[i, c]] as f64 - p.b_dec[c]).collect();
            (0..d_sae)
                .map(|j| ((0..d_in).map(|c| xc[c] * p.w_enc[c][j]).sum::<f64>() + p.b_enc[j]).max(0.0))
                .collect()
        })
        .collect()
}

/// The (row, feature) pairs BatchTopK keeps: the k·n largest positive pre-activations of the
/// batch by a full sort (ties → lower row, then lower feature).
fn kept64(relu: &[Vec<f64>], k: usize) -> Vec<Vec<bool>> {
    let mut all: Vec<(f64, usize, usize)> = relu
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.iter()
                .enumerate()
                .filter(|e| *e.1 > 0.0)
                .map(move |(j, &v)| (v, i, j))
        })
        .collect();
    all.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then((a.1, a.2).cmp(&(b.1, b.2))));
    all.truncate(k * relu.len());
    let mut kept = vec![vec![false; relu[0].len()]; relu.len()];
    for (_, i, j) in all {
        kept[i][j] = true;
    }
    kept
}

/// x̂ of one row from the kept codes of features below `width`, in f64.
fn xhat64(p: &Params64, relu: &[f64], kept: &[bool], width: usize) -> Vec<f64> {
    (0..p.b_dec.len())
        .map(|c| {
            (0..width)
                .filter(|&j| kept[j])
                .map(|j| relu[j] * p.w_dec[j][c])
                .sum::<f64>()
                + p.b_dec[c]
        })
        .collect()
}

/// `Σ_levels mean ‖x − x̂_level‖²` plus the AuxK term on the whole SAE's error, with the
/// selection fixed to `kept` (finite differences must not move it) and the AuxK target `target`
/// (detached in the references).
fn reference_loss(
    p: &Params64,
    x: &Array2<f32>,
    kept: &[Vec<bool>],
    levels: &[usize],
    aux: Option<(&[bool], usize, f64)>,
    target: &[Vec<f64>],
) -> f64 {
    let relu = relu64(p, x);
    let (n, d_in) = x.dim();
    let mut total = 0.0;
    for i in 0..n {
        for &m in levels {
            let xh = xhat64(p, &relu[i], &kept[i], m);
            total += (0..d_in).map(|c| (x[[i, c]] as f64 - xh[c]).powi(2)).sum::<f64>();
        }
        if let Some((dead, k_aux, coef)) = aux {
            let n_dead = dead.iter().filter(|&&d| d).count();
            let scale = (n_dead as f64 / k_aux as f64).min(1.0);
            let mut cand: Vec<usize> = (0..dead.len()).filter(|&j| dead[j]).collect();
            cand.sort_by(|&a, &b| relu[i][b].partial_cmp(&relu[i][a]).unwrap().then(a.cmp(&b)));
            cand.truncate(k_aux.min(n_dead));
            let err: f64 = (0..d_in)
                .map(|c| (cand.iter().map(|&j| relu[i][j] * p.w_dec[j][c]).sum::<f64>() - target[i][c]).powi(2))
                .sum();
            total += coef * scale * err;
        }
    }
    total / n as f64
}

fn check_gradient(w: &ReluSae, x: &Array2<f32>, k: usize, levels: &[usize], aux: Option<AuxK<'_>>) -> f64 {
    let (loss, grad) = w.batch_topk_loss_and_grad(x.view(), k, aux, levels);
    let p0 = Params64::of(w);
    let relu = relu64(&p0, x);
    let kept = kept64(&relu, k);
    let kept_n: usize = kept.iter().map(|r| r.iter().filter(|&&b| b).count()).sum();
    assert!((loss.l0 - kept_n as f64 / x.nrows() as f64).abs() < 1e-12, "{loss:?}");
    let target: Vec<Vec<f64>> = (0..x.nrows())
        .map(|i| {
            let xh = xhat64(&p0, &relu[i], &kept[i], w.d_sae);
            (0..w.d_in).map(|c| x[[i, c]] as f64 - xh[c]).collect()
        })
        .collect();
    let levels_all: Vec<usize> = if levels.is_empty() {
        vec![w.d_sae]
    } else {
        levels.to_vec()
    };
    let aux64 = aux.map(|a| (a.dead, a.k_aux, a.coef as f64));
    let reference = reference_loss(&p0, x, &kept, &levels_all, aux64, &target);
    assert!(
        (loss.loss - reference).abs() <= 1e-5 * reference.abs().max(1.0),
        "loss {} vs reference {reference}",
        loss.loss
    );
    // the smallest kept code
    let mut min_kept = f64::INFINITY;
    for (r, k) in relu.iter().zip(&kept) {
        for (&v, &keep) in r.iter().zip(k) {
            if keep {
                min_kept = min_kept.min(v);
            }
        }
    }
    assert!(
        (loss.min_kept - min_kept).abs() < 1e-5 * min_kept.max(1.0),
        "{} vs {min_kept}",
        loss.min_kept
    );

    compare_gradients(w, &grad, |p| reference_loss(p, x, &kept, &levels_all, aux64, &target))
}

#[test]
fn batch_topk_and_matryoshka_gradients_match_finite_differences_of_an_independent_f64_loss() {
    // dense kernels (3 per row of 12 features) and sparse ones (1 of 40), with and without AuxK
    let w = tiny_weights(5, 12, 51);
    let x = gaussian(8, 5, 52);
    let dead: Vec<bool> = (0..12).map(|j| j % 3 == 1).collect();
    let aux = AuxK {
        dead: &dead,
        k_aux: 6,
        coef: 0.5,
    };
    let (loss, _) = w.batch_topk_loss_and_grad(x.view(), 3, Some(aux), &[]);
    assert_eq!(loss.l0, 3.0, "k·n codes over the batch");
    assert!(loss.aux > 0.0 && loss.inner_mse == 0.0, "{loss:?}");
    for (name, levels, aux) in [
        ("BatchTopK", vec![], None),
        ("BatchTopK + AuxK", vec![12], Some(aux)),
        ("Matryoshka [3, 7, 12]", vec![3, 7, 12], None),
        ("Matryoshka [4, 12] + AuxK", vec![4, 12], Some(aux)),
    ] {
        let worst = check_gradient(&w, &x, 3, &levels, aux);
        println!("{name}: worst relative gradient error {worst:.2e}");
    }
    let (loss, _) = w.batch_topk_loss_and_grad(x.view(), 3, None, &[3, 7, 12]);
    assert!(
        loss.inner_mse > loss.mse,
        "two inner levels, each worse than the whole: {loss:?}"
    );

    let w = tiny_weights(5, 40, 61);
    let x = gaussian(10, 5, 62);
    let dead: Vec<bool> = (0..40).map(|j| j % 2 == 0).collect();
    let aux = AuxK {
        dead: &dead,
        k_aux: 3,
        coef: 1.0 / 32.0,
    };
    for (name, levels) in [
        ("BatchTopK (sparse)", vec![]),
        ("Matryoshka [2, 10, 40]", vec![2, 10, 40]),
    ] {
        let worst = check_gradient(&w, &x, 1, &levels, Some(aux));
        println!("{name} + AuxK: worst relative gradient error {worst:.2e}");
    }
}

/// R² of `x` (normalised by the SAE's own scale) reconstructed from the codes of the first
/// `width` features only.
fn prefix_r2(sae: &Sae, x: ArrayView2<f32>, width: usize) -> f64 {
    let mut codes = sae.encode(x);
    codes.slice_mut(ndarray::s![.., width..]).fill(0.0);
    let xh = sae.decode(codes.view());
    let mean = x.mean_axis(Axis(0)).unwrap();
    let sse: f64 = (&x - &xh).iter().map(|&v| (v as f64).powi(2)).sum();
    let sst: f64 = (&x - &mean).iter().map(|&v| (v as f64).powi(2)).sum();
    1.0 - sse / sst
}

#[test]
fn batch_topk_and_matryoshka_training_recover_a_planted_dictionary_and_infer_at_l0_k() {
    // 32 unit atoms in d = 16, 3 per row, noise σ = 0.01; d_sae = 64, k = 3
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
    let mut prefix = vec![];
    for widths in [vec![], vec![8, 32]] {
        let batch = BatchTopKTrainConfig {
            matryoshka_widths: widths.clone(),
            ..Default::default()
        };
        let (sae, report) = train_batch_topk_sae(train, &cfg, &topk, &batch).unwrap();
        let theta = report.threshold.expect("BatchTopK reports its threshold");
        let ema = report
            .threshold_ema
            .expect("θ re-estimated from the final weights by default");
        assert!(theta > 0.0 && ema > 0.0, "θ {theta}, running average {ema}");
        match &sae.kind {
            SaeKind::JumpRelu { threshold } => {
                assert_eq!(threshold.len(), 64);
                assert!(threshold.iter().all(|&t| t == theta), "one θ for every feature");
            }
            k => panic!("expected JumpReLU, found {k:?}"),
        }
        let cos = max_cosines(&sae.weights.w_dec, atoms.view());
        let mean = cos.iter().map(|&c| c as f64).sum::<f64>() / cos.len() as f64;
        let q = sae.quality(heldout);
        let last = report.logs.last().unwrap();
        println!(
            "widths {widths:?}: θ {theta:.4} (running average {ema:.4}); mean max-cosine {mean:.4}; training L0 {:.2}; held-out R² {:.4}, L0 {:.3}, dead {:.3}",
            last.l0, q.r2, q.mean_l0, q.dead_fraction
        );
        assert!(mean >= 0.9, "mean max-cosine {mean}: {cos:?}");
        assert!((last.l0 - 3.0).abs() < 1e-9, "training keeps k·n codes: {}", last.l0);
        assert!(
            q.mean_l0 > 2.4 && q.mean_l0 < 3.6,
            "inference L0 through θ: {}",
            q.mean_l0
        );
        assert!(q.r2 > 0.8, "held-out R² {}", q.r2);
        for norm in sae.weights.decoder_row_norms() {
            assert!((norm - 1.0).abs() < 1e-5);
        }
        prefix.push(prefix_r2(&sae, heldout, 8));
    }
    // the point of Matryoshka: its first 8 features reconstruct on their own; the plain SAE's first
    // 8 are an arbitrary eighth of its dictionary
    println!(
        "R² from the first 8 features: BatchTopK {:.4}, Matryoshka {:.4}",
        prefix[0], prefix[1]
    );
    assert!(prefix[1] > prefix[0] + 0.05, "{prefix:?}");
}

#[test]
fn matryoshka_training_is_bit_identical_on_one_and_two_threads_and_saves_as_saelens_jumprelu() {
    // d_sae 1280 over several tiles, batch 300; dead after 600 rows so the AuxK term runs
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
    let batch = BatchTopKTrainConfig {
        matryoshka_widths: vec![64, 320],
        ..Default::default()
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| train_batch_topk_sae(x.view(), &cfg, &topk, &batch).unwrap())
    };
    let (a, ra) = run(1);
    let (b, rb) = run(2);
    assert_eq!(a, b, "weights or threshold differ between 1 and 2 threads");
    assert_eq!(ra.logs, rb.logs);
    assert!(ra.logs.iter().any(|l| l.aux > 0.0), "the AuxK term never ran");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sae");
    save_saelens_sae(&a, &SaeMeta::default(), &dir).unwrap();
    let cfg_json = read_cfg(&dir);
    assert_eq!(cfg_json["architecture"], "jumprelu");
    let loaded = load_sae(&dir).unwrap().sae;
    assert_eq!(loaded.kind, a.kind, "the threshold reads back bit-identical");
    // SAELens folds the input scale into the weights: what was written is what is read
    let s = a.weights.input_scale;
    assert_eq!(loaded.weights.w_enc, a.weights.w_enc.mapv(|v| v * s));
    assert_eq!(loaded.weights.w_dec, a.weights.w_dec.mapv(|v| v / s));
    assert_eq!(loaded.weights.b_dec, a.weights.b_dec.mapv(|v| v / s));
    assert_eq!(loaded.weights.b_enc, a.weights.b_enc);
    let (c0, c1) = (a.encode(x.view()), loaded.encode(x.view()));
    let differ = c0
        .iter()
        .zip(&c1)
        .filter(|(p, q)| (**p > 0.0) != (**q > 0.0) || (*p - *q).abs() > 1e-4 * p.abs().max(1.0))
        .count();
    assert!(
        differ * 10_000 <= c0.len(),
        "{differ} of {} codes differ after folding the scale",
        c0.len()
    );
}

#[test]
fn batch_topk_config_errors_name_the_field() {
    let x = gaussian(64, 4, 1);
    let cfg = SaeTrainConfig {
        expansion: 4,
        batch_size: 16,
        steps: 2,
        ..Default::default()
    };
    let topk = TopKTrainConfig {
        k: 2,
        ..Default::default()
    };
    for (batch, field) in [
        (
            BatchTopKTrainConfig {
                matryoshka_widths: vec![8, 4],
                ..Default::default()
            },
            "`matryoshka_widths`",
        ),
        (
            BatchTopKTrainConfig {
                matryoshka_widths: vec![1, 8],
                ..Default::default()
            },
            "`matryoshka_widths`",
        ),
        (
            BatchTopKTrainConfig {
                matryoshka_widths: vec![4, 17],
                ..Default::default()
            },
            "`matryoshka_widths`",
        ),
        (
            BatchTopKTrainConfig {
                threshold_lr: 0.0,
                ..Default::default()
            },
            "`threshold_lr`",
        ),
    ] {
        let err = train_batch_topk_sae(x.view(), &cfg, &topk, &batch)
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
    let ok = BatchTopKTrainConfig {
        matryoshka_widths: vec![4, 8],
        ..Default::default()
    };
    assert!(
        train_batch_topk_sae(x.view(), &cfg, &topk, &ok).is_ok(),
        "d_sae = 16 is appended"
    );
}

#[test]
fn held_out_quality_agrees_with_the_independent_numpy_script_for_each_architecture() {
    // scripts/sae_quality_numpy.py (what the README's comparison on the layer-15 spool uses)
    // encodes SAELens folders in f64 NumPy: R², L0, dead fraction and prefix R² must agree with
    // Sae::quality and a prefix decode here
    let (x, _) = sparse_dictionary(4300, 16, 32, 3, 0.01, 11);
    let (train, held) = x.view().split_at(Axis(0), 4096);
    let tmp = tempfile::tempdir().unwrap();
    let spool =
        cortexflow::sae::Spool::from_matrix(&tmp.path().join("spool"), train, Some(held), 1024, "dict").unwrap();
    assert_eq!(spool.read_split(true, usize::MAX).unwrap(), held);
    let cfg = SaeTrainConfig {
        expansion: 4,
        lr: 3e-3,
        batch_size: 256,
        steps: 150,
        warmup_steps: 20,
        seed: 4,
        ..Default::default()
    };
    let topk = TopKTrainConfig {
        k: 3,
        dead_after_tokens: 256 * 20,
        ..Default::default()
    };
    let matryoshka = BatchTopKTrainConfig {
        matryoshka_widths: vec![8, 32],
        ..Default::default()
    };
    let saes = [
        ("topk", cortexflow::sae::train_topk_sae(train, &cfg, &topk).unwrap().0),
        (
            "matryoshka",
            train_batch_topk_sae(train, &cfg, &topk, &matryoshka).unwrap().0,
        ),
    ];
    let mut args = vec![tmp.path().join("spool").display().to_string()];
    for (name, sae) in &saes {
        let dir = tmp.path().join(name);
        save_saelens_sae(sae, &SaeMeta::default(), &dir).unwrap();
        args.push(dir.display().to_string());
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sae_quality_numpy.py");
    let out = std::process::Command::new(super::support::python())
        .arg(script)
        .args(&args)
        .args(["--widths", "8,32"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for ((name, sae), py) in saes.iter().zip(&lines) {
        let q = sae.quality(held);
        println!("{name}: cortexflow R² {:.6} L0 {:.3}; NumPy {py}", q.r2, q.mean_l0);
        assert!(
            (py["r2"].as_f64().unwrap() - q.r2).abs() < 1e-5,
            "{name}: R² {py} vs {q:?}"
        );
        // f64 here, f32 there: a code within rounding of θ may fall on either side (two allowed)
        let n = held.nrows() as f64;
        assert!(
            (py["mean_l0"].as_f64().unwrap() - q.mean_l0).abs() <= 2.0 / n + 1e-12,
            "{name}: L0"
        );
        assert!(
            (py["dead_fraction"].as_f64().unwrap() - q.dead_fraction).abs() <= 2.0 / 64.0 + 1e-12,
            "{name}: dead"
        );
        for w in [8usize, 32] {
            let here = prefix_r2(sae, held, w);
            let there = py["prefix_r2"][w.to_string()].as_f64().unwrap();
            assert!((here - there).abs() < 1e-4, "{name}: prefix {w}: {here} vs {there}");
        }
    }
}
