//! SAE training from activation spools: the bounded shuffle buffer, checkpoints that resume to
//! bit-identical results, atom recovery when streaming, and `cortexflow sae train` end to end on
//! the real model and a real corpus file.

use crate::support;

use std::path::Path;

use cortexflow::sae::{
    train_relu_sae, BatchTopKTrainConfig, ReluSaeTrainer, SaeTrainConfig, Spool, SpoolStream, TopKTrainConfig,
    TrainObjective,
};
use ndarray::{Array2, ArrayView2, Axis};

/// Mean over atoms of the largest cosine with any decoder row (decoder rows are unit-norm).
fn mean_max_cosine(w_dec: ArrayView2<f32>, atoms: ArrayView2<f32>) -> f64 {
    let cos = atoms.dot(&w_dec.t());
    cos.rows()
        .into_iter()
        .map(|r| r.iter().fold(f32::MIN, |m, &v| m.max(v)) as f64)
        .sum::<f64>()
        / atoms.nrows() as f64
}

#[test]
fn the_stream_visits_every_row_once_per_epoch_with_a_bounded_buffer_and_seeks_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // row i holds i in column 0, so batches can be traced back to rows
    let n = 1000;
    let x = Array2::from_shape_fn((n, 3), |(i, j)| if j == 0 { i as f32 } else { 1.0 });
    let spool = Spool::from_matrix(&tmp.path().join("spool"), x.view(), None, 64, "test").unwrap();
    assert_eq!(spool.manifest.chunks.len(), 16);
    let mut s = SpoolStream::new(spool.clone(), 3, 11).unwrap();
    let zero = [0.0f32; 3];
    let mut seen = Vec::new();
    let mut batch = Array2::<f32>::zeros((37, 3));
    let mut max_buffer = 0;
    while seen.len() < 2 * n {
        s.next_batch(batch.view_mut(), 1.0, &zero).unwrap();
        max_buffer = max_buffer.max(s.buffer().nrows());
        seen.extend(batch.column(0).iter().map(|&v| v as usize));
    }
    assert!(
        max_buffer <= 3 * 64,
        "the buffer held {max_buffer} rows (3 chunks of 64 at most)"
    );
    for e in 0..2 {
        let mut epoch: Vec<usize> = seen[e * n..(e + 1) * n].to_vec();
        epoch.sort_unstable();
        assert_eq!(
            epoch,
            (0..n).collect::<Vec<_>>(),
            "epoch {e} is not a permutation of the rows"
        );
    }
    assert_ne!(
        seen[..n],
        seen[n..2 * n],
        "the second epoch repeats the first one's order"
    );
    // rows from different chunks are mixed within a batch
    let chunks_in_first: std::collections::BTreeSet<usize> = seen[..37].iter().map(|r| r / 64).collect();
    assert!(chunks_in_first.len() > 1, "{chunks_in_first:?}");

    // seeking to any position reproduces the continuation
    for &pos in &[0usize, 37, 64 * 3 + 5, 999, 1000, 1371] {
        let mut t = SpoolStream::new(spool.clone(), 3, 11).unwrap();
        t.seek(pos as u64).unwrap();
        let mut b = Array2::<f32>::zeros((50, 3));
        t.next_batch(b.view_mut(), 1.0, &zero).unwrap();
        let got: Vec<usize> = b.column(0).iter().map(|&v| v as usize).collect();
        assert_eq!(got, seen[pos..pos + 50], "after seek({pos})");
    }
}

fn small_cfg(steps: usize) -> SaeTrainConfig {
    SaeTrainConfig {
        expansion: 4,
        l1: 0.8,
        lr: 3e-3,
        batch_size: 128,
        steps,
        warmup_steps: 10,
        resample_every: 40,
        log_every: 7,
        seed: 5,
        progress: false,
    }
}

/// Trains `steps` steps, stopping and restoring from a checkpoint at each of `stops`.
fn run_with_stops(
    mut make: impl FnMut() -> ReluSaeTrainer<'static>,
    steps: usize,
    stops: &[usize],
    ckpt: &Path,
) -> (cortexflow::sae::Sae, cortexflow::sae::TrainReport) {
    let mut t = make();
    for &stop in stops {
        while t.steps_done() < stop {
            t.step().unwrap();
        }
        t.save_checkpoint(ckpt).unwrap();
        drop(t);
        t = make();
        assert!(t.restore_checkpoint(ckpt).unwrap(), "no checkpoint found");
        assert_eq!(t.steps_done(), stop);
    }
    while t.steps_done() < steps {
        t.step().unwrap();
    }
    t.finish_sae().unwrap()
}

#[test]
fn a_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (x, _) = support::sparse_mixture(3000, 16, 32, 3, 1);
    let (train, held) = x.view().split_at(Axis(0), 2700);
    let spool = Spool::from_matrix(&tmp.path().join("spool"), train, Some(held), 256, "mixture").unwrap();
    let steps = 100;
    let topk = TopKTrainConfig {
        k: 4,
        dead_after_tokens: 1000,
        ..Default::default()
    };
    let matryoshka = BatchTopKTrainConfig {
        matryoshka_widths: vec![16, 32],
        ..Default::default()
    };
    for (name, objective) in [
        ("relu", TrainObjective::L1),
        ("topk", TrainObjective::TopK(topk.clone())),
        ("matryoshka", TrainObjective::BatchTopK(topk, matryoshka)),
    ] {
        let make = || ReluSaeTrainer::streamed(spool.clone(), 2, &small_cfg(steps), objective.clone()).unwrap();
        let (a, ra) = run_with_stops(make, steps, &[], &tmp.path().join(format!("{name}-none")));
        let (b, rb) = run_with_stops(make, steps, &[1, 33, 40, 77], &tmp.path().join(format!("{name}-ckpt")));
        assert_eq!(a.weights.w_enc, b.weights.w_enc, "{name}: W_enc differs after resuming");
        assert_eq!(a.weights.w_dec, b.weights.w_dec, "{name}: W_dec differs");
        assert_eq!(a.weights.b_enc, b.weights.b_enc, "{name}: b_enc differs");
        assert_eq!(a.weights.b_dec, b.weights.b_dec, "{name}: b_dec differs");
        assert_eq!(ra.logs, rb.logs, "{name}: training logs differ");
        assert_eq!(ra.resamples, rb.resamples, "{name}: resampling events differ");
        assert_eq!(a.kind, b.kind, "{name}: the kind (BatchTopK: its threshold θ) differs");
        assert_eq!(ra.threshold, rb.threshold);
        if name == "relu" {
            assert_eq!(
                ra.resamples.len(),
                2,
                "resampling at steps 40 and 80 is part of the test"
            );
        }
    }

    // in-memory rows resume too (the sampler's permutation is in the checkpoint)
    let xs: &'static Array2<f32> = Box::leak(Box::new(train.to_owned()));
    let make = || ReluSaeTrainer::with_objective(xs.view(), &small_cfg(steps), TrainObjective::L1).unwrap();
    let (a, _) = run_with_stops(make, steps, &[], &tmp.path().join("mem-none"));
    let (b, _) = run_with_stops(make, steps, &[50], &tmp.path().join("mem-ckpt"));
    assert_eq!(
        a.weights.w_dec, b.weights.w_dec,
        "in memory: W_dec differs after resuming"
    );
    // and the streamed trainer is deterministic on its own
    let (u, _) = train_relu_sae(xs.view(), &small_cfg(steps)).unwrap();
    assert_eq!(u.w_dec, a.weights.w_dec, "train_relu_sae and the trainer differ");
}

#[test]
fn a_checkpoint_from_other_settings_is_refused_and_a_crash_mid_replacement_is_survived() {
    let tmp = tempfile::tempdir().unwrap();
    let (x, _) = support::sparse_mixture(600, 8, 16, 2, 2);
    let spool = Spool::from_matrix(&tmp.path().join("spool"), x.view(), None, 100, "mixture").unwrap();
    let ckpt = tmp.path().join("ckpt");
    let mut t = ReluSaeTrainer::streamed(spool.clone(), 2, &small_cfg(20), TrainObjective::L1).unwrap();
    for _ in 0..5 {
        t.step().unwrap();
    }
    t.save_checkpoint(&ckpt).unwrap();

    let mut other = small_cfg(20);
    other.lr = 1e-3;
    let mut u = ReluSaeTrainer::streamed(spool.clone(), 2, &other, TrainObjective::L1).unwrap();
    let e = u.restore_checkpoint(&ckpt).unwrap_err().to_string();
    assert!(e.contains("other settings") && e.contains("0.001"), "{e}");
    // a longer run (more steps) may continue from it
    let mut longer = ReluSaeTrainer::streamed(spool.clone(), 2, &small_cfg(50), TrainObjective::L1).unwrap();
    assert!(longer.restore_checkpoint(&ckpt).unwrap());
    assert_eq!(longer.steps_done(), 5);

    // a crash between moving the old checkpoint aside and moving the new one in leaves `.old`
    std::fs::rename(&ckpt, tmp.path().join("ckpt.old")).unwrap();
    let mut v = ReluSaeTrainer::streamed(spool.clone(), 2, &small_cfg(20), TrainObjective::L1).unwrap();
    assert!(
        v.restore_checkpoint(&ckpt).unwrap(),
        "the previous checkpoint was not found"
    );
    assert_eq!(v.steps_done(), 5);
    // no checkpoint at all: a fresh start
    let mut w = ReluSaeTrainer::streamed(spool, 2, &small_cfg(20), TrainObjective::L1).unwrap();
    assert!(!w.restore_checkpoint(&tmp.path().join("none")).unwrap());
}

#[test]
fn streamed_topk_training_recovers_the_atoms_of_a_sparse_dictionary() {
    let tmp = tempfile::tempdir().unwrap();
    let (x, atoms) = support::sparse_mixture(40_000, 32, 64, 3, 7);
    let (train, held) = x.view().split_at(Axis(0), 36_000);
    // 36 chunks of 1,000 rows, 4 in the buffer: no more than 4,000 rows in memory at once
    let spool = Spool::from_matrix(&tmp.path().join("spool"), train, Some(held), 1000, "mixture").unwrap();
    let cfg = SaeTrainConfig {
        expansion: 2,
        lr: 3e-3,
        batch_size: 256,
        steps: 2500,
        warmup_steps: 50,
        log_every: 500,
        seed: 3,
        ..Default::default()
    };
    let topk = TopKTrainConfig {
        k: 3,
        dead_after_tokens: 20_000,
        ..Default::default()
    };
    let mut t = ReluSaeTrainer::streamed(spool.clone(), 4, &cfg, TrainObjective::TopK(topk)).unwrap();
    while t.steps_done() < cfg.steps {
        t.step().unwrap();
    }
    let (sae, report) = t.finish_sae().unwrap();
    for l in &report.logs {
        println!(
            "step {} mse {:.4} L0 {:.1} dead {:.3}",
            l.step, l.mse, l.l0, l.dead_fraction
        );
    }
    let m = mean_max_cosine(sae.weights.w_dec.view(), atoms.view());
    let q = sae.quality(held);
    println!("mean max-cosine {m:.4}; held-out R² {:.4}, L0 {:.2}", q.r2, q.mean_l0);
    assert!(m >= 0.9, "mean max-cosine of the 64 atoms is {m:.4} < 0.9");
    assert!(q.r2 >= 0.9, "held-out R² {}", q.r2);
    assert_eq!(
        q.mean_l0, 3.0,
        "TopK with k = 3 must have exactly 3 active features per row"
    );
}

/// A small job on the real model and the real French novel.
fn write_job(dir: &Path, name: &str) -> std::path::PathBuf {
    let job = format!(
        r#"name = "{name}"
output = "{out}"
data-root = "{root}"

[model]
layer = 3
context = 128
skip-first-tokens = 1
batch-size = 4

[corpus]
files = ["corpora_text/ELTeC-fra_FRA00101_Adam_MonVillage.txt"]
heldout-fraction = 0.2
max-tokens-per-file = 1524
chunk-windows = 2

[sae]
architecture = "topk"
expansion = 2
k = 16
dead-after-tokens = 2000
lr = 1e-3
warmup-steps = 5
batch-size = 256
steps = 40
buffer-chunks = 2
checkpoint-every = 10
log-every = 5
seed = 4
"#,
        out = dir.join(name).display(),
        root = support::data_root().display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, job).unwrap();
    path
}

fn sae_train(job: &Path, extra: &[&str]) -> String {
    let out = support::bin()
        .args(["sae", "train", "--quiet"])
        .arg(job)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sae train failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    stdout
}

#[test]
fn sae_train_on_the_real_model_resumes_to_the_same_sae_and_its_spool_holds_the_models_activations() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write_job(tmp.path(), "interrupted");
    let out1 = sae_train(&a, &["--stop-after", "25"]);
    assert!(out1.contains("stopped at step 25/40"), "{out1}");
    assert!(tmp.path().join("interrupted/checkpoint/state.json").is_file());
    let out2 = sae_train(&a, &[]);
    assert!(out2.contains("resumed from the checkpoint at step 25"), "{out2}");
    let b = write_job(tmp.path(), "straight");
    sae_train(&b, &[]);
    let w = |name: &str| std::fs::read(tmp.path().join(name).join("sae/sae_weights.safetensors")).unwrap();
    assert_eq!(
        w("interrupted"),
        w("straight"),
        "the resumed job's SAE differs from the uninterrupted one's"
    );
    assert!(
        !tmp.path().join("interrupted/checkpoint").exists(),
        "the checkpoint outlived the finished job"
    );

    // the SAE folder is a SAELens TopK SAE of the model's width
    let loaded = cortexflow::sae::load_sae(&tmp.path().join("straight/sae")).unwrap();
    assert_eq!(loaded.sae.kind, cortexflow::sae::SaeKind::TopK { k: 16 });
    assert_eq!((loaded.sae.d_in(), loaded.sae.d_sae()), (576, 1152));
    let q: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("straight/quality.json")).unwrap()).unwrap();
    assert_eq!(q["heldout"]["mean_l0"].as_f64(), Some(16.0), "{q}");
    assert!(q["heldout"]["r2"].as_f64().unwrap().is_finite());

    // the spool: 12 windows of 127 tokens, the first token after BOS dropped, the last 20% held out
    let spool = Spool::open(&tmp.path().join("straight/spool")).unwrap();
    let m = &spool.manifest;
    assert_eq!((m.sources[0].n_windows, m.sources[0].n_heldout_windows), (12, 3));
    assert_eq!(m.n_rows(false) + m.n_rows(true), 12 * 126);
    // its first rows are the full (untruncated) model's layer-3 states after BOS + 1 token
    let mut lm =
        cortexflow::lm::LanguageModel::load(&support::model_dir(), &cortexflow::lm::RuntimeOptions::with_threads(2))
            .unwrap();
    let text =
        std::fs::read_to_string(support::data_root().join("corpora_text/ELTeC-fra_FRA00101_Adam_MonVillage.txt"))
            .unwrap();
    let ids = lm.tokenizer.encode(text.as_str(), false).unwrap().get_ids()[..127].to_vec();
    let mut window = vec![lm.manifest.bos_token_id.unwrap()];
    window.extend(&ids);
    let h = lm.run_hidden(&[window], &[3]).unwrap();
    let chunk0 = spool.read_chunk(0).unwrap();
    let direct = h[0].slice(ndarray::s![0, 2.., ..]);
    let scale = direct.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = direct
        .iter()
        .zip(chunk0.slice(ndarray::s![..126, ..]).iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("spool vs full model: max |Δ| {diff:.2e} (max |value| {scale:.1})");
    assert!(diff <= 1e-4 * scale.max(1.0), "max |Δ| {diff} (max |value| {scale})");

    // the training log reads back in pyarrow with its schema
    let log = tmp.path().join("straight/sae_train_log.parquet");
    let got = support::run_python(
        "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); \
         print(t.num_rows, ','.join(t.column_names), min(t.column('l0').to_pylist()), max(t.column('l0').to_pylist()))",
        &[log.to_str().unwrap()],
    );
    assert_eq!(
        got.trim(),
        "8 step,tokens_seen,lr,loss,mse,sparsity,l0,dead_fraction,aux 16.0 16.0",
        "training log"
    );
}

#[test]
fn a_bad_job_file_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(
        &p,
        "name = \"x\"\noutput = \"o\"\n[model]\nlayer = 3\n[corpus]\nfiles = [\"a.txt\"]\n[sae]\narchitecture = \"topk\"\nl1 = 2.0\nsteps = 3\n",
    )
    .unwrap();
    let e = cortexflow::cli::SaeJob::load(&p).unwrap_err().to_string();
    assert!(e.contains("sae.l1") && e.contains("relu"), "{e}");
    std::fs::write(
        &p,
        "name = \"x\"\noutput = \"o\"\n[model]\nlayer = 3\nwidth = 4\n[corpus]\nfiles = [\"a.txt\"]\n[sae]\nsteps = 3\n",
    )
    .unwrap();
    let e = cortexflow::cli::SaeJob::load(&p).unwrap_err().to_string();
    assert!(e.contains("line 5") && e.contains("width"), "{e}");
    let head = "name = \"x\"\noutput = \"o\"\n[model]\nlayer = 3\n[corpus]\nfiles = [\"a.txt\"]\n[sae]\nsteps = 3\n";
    for (sae, field) in [
        ("architecture = \"matryoshka-batchtopk\"\n", "sae.matryoshka-widths"),
        (
            "architecture = \"topk\"\nmatryoshka-widths = [8]\n",
            "sae.matryoshka-widths",
        ),
        ("architecture = \"topk\"\nthreshold-lr = 0.1\n", "sae.threshold-lr"),
        ("architecture = \"batch-topk\"\n", "sae.architecture"),
    ] {
        std::fs::write(&p, format!("{head}{sae}")).unwrap();
        let e = cortexflow::cli::SaeJob::load(&p).unwrap_err().to_string();
        assert!(e.contains(field), "{sae}: {e}");
    }
    for sae in [
        "architecture = \"batchtopk\"\nk = 4\nthreshold-lr = 0.02\n",
        "architecture = \"matryoshka-batchtopk\"\nk = 4\nmatryoshka-widths = [16, 64]\n",
    ] {
        std::fs::write(&p, format!("{head}{sae}")).unwrap();
        cortexflow::cli::SaeJob::load(&p).unwrap_or_else(|e| panic!("{sae}: {e}"));
    }
}
