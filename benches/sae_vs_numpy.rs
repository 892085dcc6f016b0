//! SAE training and encoding throughput: cortexflow (in this process) against a NumPy
//! implementation of the same step (`scripts/bench_sae.py`, float32, BLAS sgemm for every matrix
//! product, run as a child process), on the same data, the same initial weights, the same batch
//! size and the same number of threads; plus the projected time of the paper's SAE training run
//! (d_in = 1600, 16,384 features, 200M tokens) on this machine.
//!
//! Cases: d_in = 576 with 4,608 and 16,384 features (8× and ≈28×; widths need not be multiples of
//! d_in: the trainer is built with [`ReluSaeTrainer::from_sae`]), batch 4,096 rows.
//!
//! Data (fixed seed, generated here and written as float32 `.npy` for the NumPy side): 65,536
//! rows, each a shared mean vector (N(0, 0.25) per coordinate) plus 48 of 16,384 random unit
//! "atoms" drawn with Zipf-like frequencies (∝ rank^-0.8) with Exp(1) coefficients, plus N(0, 0.01)
//! noise per coordinate.
//!
//! Initial weights (shared through `.npy` files): the SAE of a run in progress rather than a fresh
//! one, because the cost of cortexflow's step depends on how sparse the codes are (it switches to
//! sparse kernels below 5% active features, while a dense NumPy step costs the same at any
//! sparsity) and a 200M-token run spends nearly all its steps at its target sparsity, not at the
//! ≈50% density of a fresh initialisation. Decoder rows are the first `width` atoms plus noise
//! (cosine ≈ 0.9 with their atom), unit-norm; `W_enc = W_decᵀ`; `input_scale` and `b_dec` are
//! cortexflow's own (mean squared norm, geometric median); `b_enc = −τ` with τ the pre-activation
//! quantile that leaves on average 60 active features per row (the paper's target L0 ≈ 50–60) on
//! the first 1,024 rows.
//!
//! What is measured:
//! * training: the ReLU + L1 step of `src/sae/train.rs` (λ = 5, lr 3e-4, Adam β₁ 0.9, β₂ 0.999,
//!   ε 1e-8 with bias correction, decoder-row gradients projected orthogonal to the rows, decoder
//!   rows renormalised; no resampling; learning-rate warm-up off, which changes nothing in the
//!   cost of a step and lets the agreement steps below move the weights at full rate). Each side
//!   takes one warm-up step, then `CORTEXFLOW_BENCH_STEPS` timed steps on batches drawn without
//!   replacement from a seeded shuffle of all rows (each side its own shuffle); the span includes
//!   gathering and scaling the batch rows, the loss statistics (loss, mse, sparsity, L0), the
//!   gradient, the projection, Adam and the renormalisation. cortexflow: `ReluSaeTrainer::step`.
//!   NumPy: five dense sgemms per step as in the PyTorch references (SAELens, sparsify), in-place
//!   elementwise work on preallocated buffers. tokens/s = steps × 4096 / seconds.
//! * encoding: raw rows → CSR codes (indptr, ascending feature ids, values), the first
//!   `CORTEXFLOW_BENCH_ENCODE_ROWS` rows in blocks of 4,096, after one warm-up block. ReLU codes
//!   with the weights above (L0 ≈ 60); TopK codes (k = 32, the k largest ReLU pre-activations per
//!   row) with the same weights but `b_enc = 0`, so that about half the pre-activations are
//!   positive as in a TopK SAE (no L1 pushes its encoder bias down). cortexflow:
//!   `Sae::encode_sparse`; NumPy: sgemm, ReLU, then `np.nonzero` (ReLU) or `np.argpartition` +
//!   sort (TopK).
//! * agreement: both sides start from the same weights and take `CORTEXFLOW_BENCH_AGREE_STEPS`
//!   full-batch steps on the first 4,096 rows (cortexflow's trainer on exactly those rows, so every
//!   batch is the same set of rows and the batch order cannot differ; only summation order does).
//!   Reported: the largest relative difference of the per-step loss, of the loss decrease from
//!   step 1 (which isolates what the updates did), and of L0; the run fails if the loss differs
//!   by more than `CORTEXFLOW_BENCH_AGREE_TOL` (default 1e-3) relatively. The encodings are
//!   compared by their number of non-zeros and the float64 sum of their values.
//! * projection: cortexflow's training tokens/s at d_in = 1600 and 16,384 features (same data
//!   recipe with 16,384 rows, same kind of initial weights, one warm-up and
//!   `CORTEXFLOW_BENCH_PROJECT_STEPS` timed steps), turned into hours for 200M tokens; the same
//!   for NumPy unless `CORTEXFLOW_BENCH_PROJECT_NUMPY=0`. It assumes every step runs at the
//!   target sparsity: the first steps of a real run, from a fresh initialisation with dense codes,
//!   are slower for cortexflow (dense kernels), and dead-feature resampling is not counted.
//! * repetitions: `CORTEXFLOW_BENCH_REPS` (default 3) interleaved timing runs per width, each a
//!   cortexflow span then a NumPy child (the first child also runs the agreement steps and the
//!   encoding); the table reports the median tokens/s of each side and the ratio of the medians.
//! * fraction of the machine's FP32 GEMM peak: the peak is the best float32 GEMM rate measured on
//!   this machine with the same threads — faer (cortexflow's kernels) and NumPy's BLAS, each on
//!   2048³ and on the encoder's shape (batch × d_in × d_sae), best of 5 — and each side's training
//!   rate in GFLOP/s counts the floating-point operations its step executes: NumPy's five dense
//!   products, 10·B·d_in·d_sae; cortexflow's dense encoder product plus its four sparse passes
//!   (reconstruction, dL/dpre at the active pairs, both weight gradients), 2·B·d_in·d_sae +
//!   8·nnz·d_in with nnz = B·L0. Elementwise work (Adam, the projection) is not counted on either
//!   side. "dense-equivalent" divides NumPy's count by cortexflow's time: the rate a dense step
//!   would need to match it.
//! * machine quietness: the CPU share used by other processes (/proc/stat) during each timed span,
//!   minus this process's (or the NumPy child's) own CPU time. A warning is printed above 10%:
//!   OpenBLAS threads spin-wait and slow down sharply when another process takes a core.
//!
//! Threads: `CORTEXFLOW_BENCH_THREADS` (default 2): the global rayon pool of this process; the
//! NumPy child gets `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS` and
//! `RAYON_NUM_THREADS` = the same number (its BLAS and thread count are read back with
//! threadpoolctl and printed).
//!
//! Run: `cargo bench --bench sae_vs_numpy` (about 5 minutes on 2 quiet cores). Environment:
//! `CORTEXFLOW_BENCH_STEPS` (default 10), `CORTEXFLOW_BENCH_REPS` (3), `CORTEXFLOW_BENCH_AGREE_STEPS` (5; 0 = skip),
//! `CORTEXFLOW_BENCH_ROWS` (65536), `CORTEXFLOW_BENCH_ENCODE_ROWS` (16384; 0 = skip),
//! `CORTEXFLOW_BENCH_WIDTHS` (`4608,16384`), `CORTEXFLOW_BENCH_PROJECT_STEPS` (3; 0 = skip),
//! `CORTEXFLOW_BENCH_PROJECT_NUMPY` (1), `CORTEXFLOW_BENCH_AGREE_TOL` (1e-3),
//! `CORTEXFLOW_BENCH_SEED` (0), `CORTEXFLOW_BENCH_DIR` (default `target/bench_sae`),
//! `CORTEXFLOW_PYTHON` (default `.venv/bin/python`, else `python3`). A quick check:
//! `CORTEXFLOW_BENCH_STEPS=2 CORTEXFLOW_BENCH_AGREE_STEPS=3 CORTEXFLOW_BENCH_ROWS=8192
//! CORTEXFLOW_BENCH_ENCODE_ROWS=4096 CORTEXFLOW_BENCH_WIDTHS=1152 CORTEXFLOW_BENCH_PROJECT_STEPS=0`.
//!
//! Output: a table on stdout, then one JSON line with everything (also written to
//! `<dir>/summary.json`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context};
use cortexflow::sae::{ReluSae, ReluSaeTrainer, Sae, SaeKind, SaeLoss, SaeTrainConfig};
use cortexflow::stats::SplitMix64;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rayon::prelude::*;
use serde_json::{json, Value};

#[path = "support/children.rs"]
mod children;
#[path = "support/figures.rs"]
mod figures;
use children::{bench_dir, cpu_sample, env_or, others_share, python, run_child, self_cpu_s, with_threads};
use figures::{faer_gemm_gflops, median};

const D_IN: usize = 576;
const BATCH: usize = 4096;
const N_ATOMS: usize = 16384;
const ATOMS_PER_ROW: usize = 48;
const NOISE_SD: f32 = 0.1;
const TARGET_L0: f64 = 60.0;
const TOPK: usize = 32;
const PAPER_D_IN: usize = 1600;
const PAPER_WIDTH: usize = 16384;
const PAPER_TOKENS: f64 = 200e6;

/// Rows of `n` random unit vectors in R^d.
fn unit_rows(n: usize, d: usize, rng: &mut SplitMix64) -> Array2<f32> {
    let mut a = Array2::from_shape_simple_fn((n, d), || rng.normal() as f32);
    for mut row in a.rows_mut() {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.mapv_inplace(|v| v / norm);
    }
    a
}

/// (x (n, d), atoms (N_ATOMS, d)): see the module docs.
fn synth(n: usize, d: usize, seed: u64) -> (Array2<f32>, Array2<f32>) {
    let mut rng = SplitMix64::new(seed);
    let atoms = unit_rows(N_ATOMS, d, &mut rng);
    let mean: Vec<f32> = (0..d).map(|_| 0.5 * rng.normal() as f32).collect();
    let mut cum = Vec::with_capacity(N_ATOMS);
    let mut total = 0.0f64;
    for j in 0..N_ATOMS {
        total += ((j + 1) as f64).powf(-0.8);
        cum.push(total);
    }
    let mut x = Array2::<f32>::zeros((n, d));
    x.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(i, mut row)| {
            let mut r = SplitMix64::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let row = row.as_slice_mut().expect("standard layout");
            for (v, &m) in row.iter_mut().zip(&mean) {
                *v = m + NOISE_SD * r.normal() as f32;
            }
            for _ in 0..ATOMS_PER_ROW {
                let u = r.next_f64() * total;
                let j = cum.partition_point(|&c| c <= u).min(N_ATOMS - 1);
                let c = -(1.0 - r.next_f64()).ln() as f32;
                for (v, &a) in row.iter_mut().zip(atoms.row(j)) {
                    *v += c * a;
                }
            }
        });
    (x, atoms)
}

/// The initial SAE of `width` features (see the module docs).
fn warm_sae(
    x: ArrayView2<'_, f32>,
    atoms: ArrayView2<'_, f32>,
    width: usize,
    cfg: &SaeTrainConfig,
) -> anyhow::Result<ReluSae> {
    let d = x.ncols();
    // cortexflow's own input scale and b_dec (geometric median)
    let base = ReluSaeTrainer::new(
        x,
        &SaeTrainConfig {
            expansion: 1,
            ..cfg.clone()
        },
    )?
    .sae()
    .clone();
    let mut rng = SplitMix64::new(cfg.seed ^ 0x5AE5_AE00 ^ width as u64);
    let sd = 0.5 / (d as f32).sqrt();
    let mut w_dec = Array2::<f32>::zeros((width, d));
    for (j, mut row) in w_dec.rows_mut().into_iter().enumerate() {
        for (v, &a) in row.iter_mut().zip(atoms.row(j % atoms.nrows())) {
            *v = a + sd * rng.normal() as f32;
        }
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.mapv_inplace(|v| v / norm);
    }
    let w_enc = w_dec.t().as_standard_layout().into_owned();
    let mut sae = ReluSae::from_parts(w_enc, Array1::zeros(width), w_dec, base.b_dec.clone(), base.input_scale)?;
    let sample = x.slice(s![..x.nrows().min(1024), ..]);
    let mut z: Vec<f32> = sae.encode(sample).into_raw_vec_and_offset().0; // ReLU(pre) with b_enc = 0
    let keep = ((TARGET_L0 * sample.nrows() as f64) as usize).clamp(1, z.len());
    let pos = z.len() - keep;
    let (_, &mut tau, _) = z.select_nth_unstable_by(pos, f32::total_cmp);
    sae.b_enc.fill(-tau);
    Ok(sae)
}

/// Writes a float32 C-order `.npy` (format 1.0) of the given shape.
fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> anyhow::Result<()> {
    ensure!(shape.iter().product::<usize>() == data.len(), "npy shape/data mismatch");
    let dims = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn write_weights(dir: &Path, sae: &ReluSae, cfg: &SaeTrainConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let (d, f) = (sae.d_in, sae.d_sae);
    let sl = |a: &[f32]| a.to_vec();
    write_npy_f32(
        &dir.join("W_enc.npy"),
        &[d, f],
        &sl(sae.w_enc.as_slice().context("W_enc layout")?),
    )?;
    write_npy_f32(
        &dir.join("b_enc.npy"),
        &[f],
        &sl(sae.b_enc.as_slice().context("b_enc layout")?),
    )?;
    write_npy_f32(
        &dir.join("W_dec.npy"),
        &[f, d],
        &sl(sae.w_dec.as_slice().context("W_dec layout")?),
    )?;
    write_npy_f32(
        &dir.join("b_dec.npy"),
        &[d],
        &sl(sae.b_dec.as_slice().context("b_dec layout")?),
    )?;
    let meta = json!({
        "input_scale": sae.input_scale, "l1": cfg.l1, "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps, "batch_size": cfg.batch_size,
    });
    std::fs::write(dir.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}

/// Wall time, own CPU time and other processes' CPU share over a span of this process.
struct Span {
    s0: Option<(f64, f64, usize)>,
    c0: f64,
    t0: Instant,
}

impl Span {
    fn start() -> Self {
        Span {
            s0: cpu_sample(),
            c0: self_cpu_s(),
            t0: Instant::now(),
        }
    }
    /// (wall s, CPU s, others' share)
    fn end(self) -> (f64, f64, f64) {
        let wall = self.t0.elapsed().as_secs_f64();
        let cpu = self_cpu_s() - self.c0;
        (wall, cpu, others_share(self.s0, cpu_sample(), cpu, wall))
    }
}

struct TrainTiming {
    tokens_per_s: f64,
    seconds: f64,
    cpu_s: f64,
    others: f64,
    mean_l0: f64,
    losses: Vec<f64>,
}

fn time_training(
    x: ArrayView2<'_, f32>,
    cfg: &SaeTrainConfig,
    sae: &ReluSae,
    steps: usize,
) -> anyhow::Result<TrainTiming> {
    let mut tr = ReluSaeTrainer::from_sae(x, cfg, sae.clone())?;
    tr.step().expect("SAE step"); // warm-up
    let span = Span::start();
    let losses: Vec<SaeLoss> = (0..steps).map(|_| tr.step().expect("SAE step")).collect();
    let (seconds, cpu_s, others) = span.end();
    Ok(TrainTiming {
        tokens_per_s: (steps * cfg.batch_size) as f64 / seconds,
        seconds,
        cpu_s,
        others,
        mean_l0: losses.iter().map(|l| l.l0).sum::<f64>() / steps.max(1) as f64,
        losses: losses.iter().map(|l| l.loss).collect(),
    })
}

/// (tokens/s, seconds, others' share, nnz, sum of values)
fn time_encoding(sae: &Sae, x: ArrayView2<'_, f32>) -> (f64, f64, f64, usize, f64) {
    let _ = sae.encode_sparse(x.slice(s![..x.nrows().min(BATCH), ..])); // warm-up block
    let span = Span::start();
    let codes = sae.encode_sparse(x);
    let (seconds, _, others) = span.end();
    let sum = codes.values.iter().map(|&v| v as f64).sum::<f64>();
    (x.nrows() as f64 / seconds, seconds, others, codes.nnz(), sum)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-30)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn numpy_run(
    py: &Path,
    threads: usize,
    x_path: &Path,
    wdir: &Path,
    args: &[(&str, String)],
) -> anyhow::Result<(Value, children::Run)> {
    let mut cmd = Command::new(py);
    with_threads(&mut cmd, threads)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_sae.py"))
        .arg(x_path)
        .arg(wdir);
    for (k, v) in args {
        cmd.arg(k).arg(v);
    }
    cmd.arg("--out").arg(wdir.join("numpy.json"));
    let r = run_child(cmd, wdir, "numpy")?;
    let line = r.stdout.lines().last().context("no output from scripts/bench_sae.py")?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
    Ok((v, r))
}

fn main() -> anyhow::Result<()> {
    let threads: usize = env_or("CORTEXFLOW_BENCH_THREADS", 2);
    let steps: usize = env_or::<usize>("CORTEXFLOW_BENCH_STEPS", 10).max(1);
    let reps: usize = env_or::<usize>("CORTEXFLOW_BENCH_REPS", 3).max(1);
    let agree_steps: usize = env_or("CORTEXFLOW_BENCH_AGREE_STEPS", 5);
    let n_rows: usize = env_or::<usize>("CORTEXFLOW_BENCH_ROWS", 65536).max(BATCH);
    let encode_rows: usize = env_or::<usize>("CORTEXFLOW_BENCH_ENCODE_ROWS", 16384).min(n_rows);
    let project_steps: usize = env_or("CORTEXFLOW_BENCH_PROJECT_STEPS", 3);
    let project_numpy: usize = env_or("CORTEXFLOW_BENCH_PROJECT_NUMPY", 1);
    let agree_tol: f64 = env_or("CORTEXFLOW_BENCH_AGREE_TOL", 1e-3);
    let seed: u64 = env_or("CORTEXFLOW_BENCH_SEED", 0);
    let widths: Vec<usize> = std::env::var("CORTEXFLOW_BENCH_WIDTHS")
        .unwrap_or_else(|_| "4608,16384".into())
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .with_context(|| format!("CORTEXFLOW_BENCH_WIDTHS: bad width {s:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("building the rayon pool")?;
    let root = bench_dir("bench_sae");
    std::fs::create_dir_all(&root)?;
    let py = python();
    let cfg = SaeTrainConfig {
        batch_size: BATCH,
        steps: usize::MAX,
        warmup_steps: 0,
        resample_every: 0,
        seed,
        ..Default::default()
    };

    println!(
        "SAE ReLU + L1 training step and encoding: cortexflow (in-process) vs NumPy (scripts/bench_sae.py, float32, \
         dense sgemm), d_in = {D_IN}, batch {BATCH}, {threads} threads, seed {seed}"
    );
    let g0 = Instant::now();
    let (x, atoms) = synth(n_rows, D_IN, seed);
    let data_dir = root.join(format!("d{D_IN}_n{n_rows}_s{seed}"));
    std::fs::create_dir_all(&data_dir)?;
    let x_path = data_dir.join("x.npy");
    write_npy_f32(&x_path, &[n_rows, D_IN], x.as_slice().context("x layout")?)?;
    eprintln!("data: {n_rows} × {D_IN} in {:.1} s", g0.elapsed().as_secs_f64());

    let s0 = cpu_sample();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let busy_before = others_share(s0, cpu_sample(), 0.0, 1.0);
    if busy_before > 0.1 {
        eprintln!(
            "warning: other processes keep {:.0}% of the CPUs busy; timings (NumPy's spin-waiting BLAS threads \
             above all) will not be representative",
            100.0 * busy_before
        );
    }

    // the machine's FP32 GEMM peak on these threads: faer and NumPy's BLAS
    eprintln!("FP32 GEMM peak: faer and NumPy …");
    let faer_peak = json!({
        "square_2048": faer_gemm_gflops::<f32>(2048, 2048, 2048, threads),
        "encoder": faer_gemm_gflops::<f32>(BATCH, D_IN, widths.first().copied().unwrap_or(4608), threads),
    });
    let np_peak = {
        let mut cmd = Command::new(&py);
        with_threads(&mut cmd, threads)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_sae.py"))
            .arg("--peak");
        let r = run_child(cmd, &root, "numpy-peak")?;
        let line = r.stdout.lines().last().context("no output from bench_sae.py --peak")?;
        let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
        v["gemm_gflops"].clone()
    };
    let peak_gflops = [
        f(&faer_peak["square_2048"]),
        f(&faer_peak["encoder"]),
        f(&np_peak["square_2048"]),
        f(&np_peak["encoder_4096x576x4608"]),
    ]
    .into_iter()
    .filter(|v| v.is_finite())
    .fold(0.0, f64::max);
    eprintln!("FP32 GEMM peak {peak_gflops:.0} GFLOP/s (faer {faer_peak}, NumPy {np_peak})");

    let mut cases = Vec::new();
    let mut py_env = Value::Null;
    for &width in &widths {
        let wdir = data_dir.join(format!("w{width}"));
        let sae = warm_sae(x.view(), atoms.view(), width, &cfg)?;
        write_weights(&wdir, &sae, &cfg)?;
        eprintln!("width {width}: cortexflow training (repetition 1/{reps}) …");
        let cf = time_training(x.view(), &cfg, &sae, steps)?;
        let mut cf_tps = vec![cf.tokens_per_s];

        let (mut enc_cf, mut enc_sums) = (json!(null), Vec::new());
        if encode_rows > 0 {
            eprintln!("width {width}: cortexflow encoding …");
            let xe = x.slice(s![..encode_rows, ..]);
            let relu = Sae::new(SaeKind::Relu, sae.clone(), true)?;
            let mut topk_w = sae.clone();
            topk_w.b_enc.fill(0.0);
            let topk = Sae::new(SaeKind::TopK { k: TOPK }, topk_w, true)?;
            let r = time_encoding(&relu, xe);
            let t = time_encoding(&topk, xe);
            enc_sums = vec![(r.3, r.4), (t.3, t.4)];
            enc_cf = json!({
                "relu": {"tokens_per_s": r.0, "seconds": r.1, "others_cpu_share": r.2, "nnz": r.3, "sum": r.4},
                "topk": {"tokens_per_s": t.0, "seconds": t.1, "others_cpu_share": t.2, "nnz": t.3, "sum": t.4},
                "rows": encode_rows, "k": TOPK,
            });
        }

        let mut agree_cf: Vec<SaeLoss> = Vec::new();
        if agree_steps > 0 {
            eprintln!("width {width}: cortexflow agreement steps …");
            let mut tr = ReluSaeTrainer::from_sae(x.slice(s![..BATCH, ..]), &cfg, sae.clone())?;
            agree_cf = (0..agree_steps).map(|_| tr.step().expect("SAE step")).collect();
        }

        eprintln!("width {width}: NumPy (repetition 1/{reps}) …");
        let (np, np_run) = numpy_run(
            &py,
            threads,
            &x_path,
            &wdir,
            &[
                ("--steps", steps.to_string()),
                ("--agree-steps", agree_steps.to_string()),
                ("--encode-rows", encode_rows.to_string()),
                ("--k", TOPK.to_string()),
                ("--seed", seed.to_string()),
            ],
        )?;
        py_env = json!({"numpy": np["numpy"], "pools": np["pools"]});
        let mut np_tps = vec![f(&np["train"]["tokens_per_s"])];
        for rep in 1..reps {
            eprintln!(
                "width {width}: cortexflow, then NumPy (repetition {}/{reps}) …",
                rep + 1
            );
            cf_tps.push(time_training(x.view(), &cfg, &sae, steps)?.tokens_per_s);
            let (np_r, _) = numpy_run(
                &py,
                threads,
                &x_path,
                &wdir,
                &[
                    ("--steps", steps.to_string()),
                    ("--agree-steps", "0".into()),
                    ("--encode-rows", "0".into()),
                    ("--seed", seed.to_string()),
                ],
            )?;
            np_tps.push(f(&np_r["train"]["tokens_per_s"]));
        }
        drop(sae);
        let (cf_med, np_med) = (median(cf_tps.clone()), median(np_tps.clone()));
        // executed floating-point operations per token (see the module docs)
        let dense_flop = 10.0 * (D_IN * width) as f64;
        let cf_flop = 2.0 * (D_IN * width) as f64 + 8.0 * cf.mean_l0 * D_IN as f64;
        let gflops = |flop_per_token: f64, tps: f64| flop_per_token * tps / 1e9;
        let flops = json!({
            "peak_gflops": peak_gflops,
            "cortexflow_gflops": gflops(cf_flop, cf_med),
            "cortexflow_fraction_of_peak": gflops(cf_flop, cf_med) / peak_gflops,
            "cortexflow_dense_equivalent_gflops": gflops(dense_flop, cf_med),
            "numpy_gflops": gflops(dense_flop, np_med),
            "numpy_fraction_of_peak": gflops(dense_flop, np_med) / peak_gflops,
        });

        // agreement of the full-batch trajectories
        let mut agree = json!(null);
        if agree_steps > 0 {
            let np_ag = np["agree"].as_array().context("no 'agree' in the NumPy output")?;
            ensure!(np_ag.len() == agree_cf.len(), "agreement: {} NumPy steps", np_ag.len());
            let (l_cf, l_np): (Vec<f64>, Vec<f64>) =
                agree_cf.iter().zip(np_ag).map(|(c, p)| (c.loss, f(&p["loss"]))).unzip();
            let max_rel_loss = l_cf.iter().zip(&l_np).map(|(a, b)| rel(*a, *b)).fold(0.0, f64::max);
            let max_rel_l0 = agree_cf
                .iter()
                .zip(np_ag)
                .map(|(c, p)| rel(c.l0, f(&p["l0"])))
                .fold(0.0, f64::max);
            let max_rel_drop = (1..l_cf.len())
                .map(|i| rel(l_cf[i] - l_cf[0], l_np[i] - l_np[0]))
                .fold(0.0, f64::max);
            let drop_cf = l_cf.last().copied().unwrap_or(f64::NAN) - l_cf[0];
            ensure!(
                max_rel_loss <= agree_tol,
                "width {width}: the loss trajectories differ by {max_rel_loss:.2e} (relative) > {agree_tol:.0e}: \
                 cortexflow {l_cf:?}, NumPy {l_np:?}"
            );
            agree = json!({
                "steps": agree_steps, "loss_cortexflow": l_cf, "loss_numpy": l_np,
                "l0_cortexflow": agree_cf.iter().map(|l| l.l0).collect::<Vec<_>>(),
                "max_rel_loss": max_rel_loss, "max_rel_loss_drop": max_rel_drop, "max_rel_l0": max_rel_l0,
                "loss_drop_cortexflow": drop_cf, "tolerance": agree_tol,
            });
        }
        let mut enc_agree = json!(null);
        if encode_rows > 0 {
            let e = &np["encode"];
            let (nr, sr) = (f(&e["relu"]["nnz"]), f(&e["relu"]["sum"]));
            let (nt, st) = (f(&e["topk"]["nnz"]), f(&e["topk"]["sum"]));
            enc_agree = json!({
                "relu": {"nnz_cortexflow": enc_sums[0].0, "nnz_numpy": nr, "rel_sum": rel(enc_sums[0].1, sr)},
                "topk": {"nnz_cortexflow": enc_sums[1].0, "nnz_numpy": nt, "rel_sum": rel(enc_sums[1].1, st)},
            });
        }
        let np_train = &np["train"];
        let ratio_enc = |k: &str| f(&enc_cf[k]["tokens_per_s"]) / f(&np["encode"][k]["tokens_per_s"]);
        let others_max = [
            cf.others,
            f(&np_train["others_cpu_share"]),
            f(&enc_cf["relu"]["others_cpu_share"]),
            f(&enc_cf["topk"]["others_cpu_share"]),
            f(&np["encode"]["relu"]["others_cpu_share"]),
            f(&np["encode"]["topk"]["others_cpu_share"]),
        ]
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
        if others_max > 0.1 {
            eprintln!(
                "warning: width {width}: other processes took up to {:.0}% of the CPUs during a timed span",
                100.0 * others_max
            );
        }
        cases.push(json!({
            "d_in": D_IN, "d_sae": width, "batch_size": BATCH, "rows": n_rows, "threads": threads,
            "train": {
                "steps": steps,
                "repetitions": reps,
                "cortexflow": {"tokens_per_s": cf_med, "tokens_per_s_each": cf_tps, "seconds": cf.seconds,
                               "cpu_s": cf.cpu_s, "others_cpu_share": cf.others, "mean_l0": cf.mean_l0,
                               "losses": cf.losses},
                "numpy": np_train,
                "numpy_tokens_per_s": np_med,
                "numpy_tokens_per_s_each": np_tps,
                "ratio_cf_over_numpy": cf_med / np_med,
                "flops": flops,
            },
            "encode": {
                "cortexflow": enc_cf, "numpy": np["encode"],
                "ratio_relu_cf_over_numpy": ratio_enc("relu"), "ratio_topk_cf_over_numpy": ratio_enc("topk"),
                "agreement": enc_agree,
            },
            "agreement": agree,
            "numpy_child": {"wall_s": np_run.wall_s, "cpu_s": np_run.cpu_s, "peak_rss_mib": np_run.peak_mib,
                            "others_cpu_share": np_run.others},
            "others_cpu_share_max_timed": others_max,
        }));
    }

    // projection for the paper's setting
    let mut projection = json!(null);
    if project_steps > 0 {
        eprintln!("projection: d_in = {PAPER_D_IN}, {PAPER_WIDTH} features …");
        let rows = 4 * BATCH;
        let (xp, atoms_p) = synth(rows, PAPER_D_IN, seed ^ 0x1600);
        let sae = warm_sae(xp.view(), atoms_p.view(), PAPER_WIDTH, &cfg)?;
        let cf = time_training(xp.view(), &cfg, &sae, project_steps)?;
        let hours = |tps: f64| PAPER_TOKENS / tps / 3600.0;
        let mut np_proj = json!(null);
        if project_numpy != 0 {
            let pdir = root.join(format!("d{PAPER_D_IN}_n{rows}_s{seed}"));
            std::fs::create_dir_all(&pdir)?;
            let xp_path = pdir.join("x.npy");
            write_npy_f32(&xp_path, &[rows, PAPER_D_IN], xp.as_slice().context("x layout")?)?;
            let wdir = pdir.join(format!("w{PAPER_WIDTH}"));
            write_weights(&wdir, &sae, &cfg)?;
            drop(sae);
            eprintln!("projection: NumPy …");
            let (np, _) = numpy_run(
                &py,
                threads,
                &xp_path,
                &wdir,
                &[
                    ("--steps", project_steps.to_string()),
                    ("--agree-steps", "0".into()),
                    ("--encode-rows", "0".into()),
                    ("--seed", seed.to_string()),
                ],
            )?;
            let tps = f(&np["train"]["tokens_per_s"]);
            np_proj = json!({"tokens_per_s": tps, "hours_for_200m_tokens": hours(tps), "train": np["train"]});
        }
        projection = json!({
            "d_in": PAPER_D_IN, "d_sae": PAPER_WIDTH, "tokens": PAPER_TOKENS, "steps": project_steps,
            "cortexflow": {"tokens_per_s": cf.tokens_per_s, "hours_for_200m_tokens": hours(cf.tokens_per_s),
                           "seconds": cf.seconds, "others_cpu_share": cf.others, "mean_l0": cf.mean_l0},
            "numpy": np_proj,
        });
    }

    // table
    println!(
        "{:>6} | {:>21} | {:>21} | {:>21} | {:>11} | {:>23} | {:>8}",
        "d_sae",
        "train tok/s cf / np",
        "ReLU enc tok/s cf/np",
        "TopK enc tok/s cf/np",
        "L0 cf / np",
        "agreement (rel. loss)",
        "others%"
    );
    let ratio_txt = |a: f64, b: f64| format!("{a:.0} / {b:.0} = {:.2}×", a / b);
    for c in &cases {
        let t = &c["train"];
        let e = &c["encode"];
        println!(
            "{:>6} | {:>21} | {:>21} | {:>21} | {:>11} | {:>23} | {:>8}",
            c["d_sae"],
            ratio_txt(f(&t["cortexflow"]["tokens_per_s"]), f(&t["numpy_tokens_per_s"])),
            ratio_txt(
                f(&e["cortexflow"]["relu"]["tokens_per_s"]),
                f(&e["numpy"]["relu"]["tokens_per_s"])
            ),
            ratio_txt(
                f(&e["cortexflow"]["topk"]["tokens_per_s"]),
                f(&e["numpy"]["topk"]["tokens_per_s"])
            ),
            format!(
                "{:.1} / {:.1}",
                f(&t["cortexflow"]["mean_l0"]),
                f(&t["numpy"]["mean_l0"])
            ),
            format!(
                "{:.1e} (drop {:.1e})",
                f(&c["agreement"]["max_rel_loss"]),
                f(&c["agreement"]["max_rel_loss_drop"])
            ),
            format!("{:.1}", 100.0 * f(&c["others_cpu_share_max_timed"])),
        );
    }
    println!(
        "tok/s = rows per second over the timed span (training: {steps} steps after one warm-up; encoding: \
         {encode_rows} rows after one warm-up block); ratio = cortexflow / NumPy (training: medians of {reps} interleaved repetitions, target ≥ 2×); \
         others% = largest CPU share of other processes during a timed span (before the runs: {:.1}%)",
        100.0 * busy_before
    );
    for c in &cases {
        let fl = &c["train"]["flops"];
        println!(
            "d_sae {}: training, median of {reps} interleaved repetitions: cortexflow {:.0} GFLOP/s executed = {:.0}% \
             of the {:.0} GFLOP/s FP32 GEMM peak ({:.0} GFLOP/s dense-equivalent); NumPy {:.0} GFLOP/s = {:.0}% of peak",
            c["d_sae"],
            f(&fl["cortexflow_gflops"]),
            100.0 * f(&fl["cortexflow_fraction_of_peak"]),
            f(&fl["peak_gflops"]),
            f(&fl["cortexflow_dense_equivalent_gflops"]),
            f(&fl["numpy_gflops"]),
            100.0 * f(&fl["numpy_fraction_of_peak"]),
        );
    }
    for c in &cases {
        let ea = &c["encode"]["agreement"];
        println!(
            "d_sae {}: agreement over {} full-batch steps: max rel. Δloss {:.2e}, max rel. Δ(loss − loss₁) {:.2e}, \
             max rel. ΔL0 {:.2e}; encoding nnz cf/np ReLU {}/{} TopK {}/{}, rel. Δ sum of codes ReLU {:.1e} TopK {:.1e}",
            c["d_sae"],
            c["agreement"]["steps"],
            f(&c["agreement"]["max_rel_loss"]),
            f(&c["agreement"]["max_rel_loss_drop"]),
            f(&c["agreement"]["max_rel_l0"]),
            ea["relu"]["nnz_cortexflow"],
            ea["relu"]["nnz_numpy"],
            ea["topk"]["nnz_cortexflow"],
            ea["topk"]["nnz_numpy"],
            f(&ea["relu"]["rel_sum"]),
            f(&ea["topk"]["rel_sum"]),
        );
    }
    if !projection.is_null() {
        println!(
            "projection (d_in {PAPER_D_IN}, {PAPER_WIDTH} features, batch {BATCH}, L0 ≈ {:.0}, {threads} threads): \
             cortexflow {:.0} tok/s → {:.1} h for 200M tokens; NumPy {:.0} tok/s → {:.1} h (others {:.1}%)",
            f(&projection["cortexflow"]["mean_l0"]),
            f(&projection["cortexflow"]["tokens_per_s"]),
            f(&projection["cortexflow"]["hours_for_200m_tokens"]),
            f(&projection["numpy"]["tokens_per_s"]),
            f(&projection["numpy"]["hours_for_200m_tokens"]),
            100.0 * f(&projection["cortexflow"]["others_cpu_share"]),
        );
    }
    let summary = json!({
        "bench": "sae_vs_numpy",
        "threads": threads,
        "python": py_env,
        "others_cpu_share_before": busy_before,
        "gemm_peak": {"gflops": peak_gflops, "faer": faer_peak, "numpy": np_peak},
        "cases": cases,
        "projection": projection,
    });
    std::fs::write(root.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
