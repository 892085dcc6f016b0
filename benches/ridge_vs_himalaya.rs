//! Ridge regression with a penalty per target chosen by K-fold CV: `cortexflow ridge` against
//! himalaya's `solve_ridge_cv_svd` (numpy backend, float64; `scripts/himalaya_ridge.py`), on the
//! same `.npy` files, the same 10 penalties (`np.logspace(0, 6, 10)`), the same 4 contiguous folds
//! (`KFold` without shuffling), no intercept, and the same number of threads.
//!
//! Cases: (a) 3,000 training rows × 1,000 features × 10,000 targets, (b) 8,000 × 4,000 × 20,000;
//! the test set is an extra 20% of rows. Data: `scripts/bench_ridge.py` (fixed seed; a planted
//! sparse linear model with a per-target SNR spread over 10^-3 … 10^1, columns centred on the
//! training rows), generated once per shape and kept under `target/bench_ridge/data/` (case (b)
//! takes about 1.9 GB of disk; delete the folder to reclaim it).
//!
//! Measurement: both tools run as child processes of this binary, one after the other, each on a
//! warm page cache (the input files are read through once before every run).
//! * wall time: the whole child process, from spawn to exit: interpreter / binary start-up,
//!   reading the four `.npy` inputs, the CV solve, the refit, predicting the test rows and writing
//!   the outputs. Each tool's own solve time is shown in parentheses: cortexflow's from its stdout
//!   line (`…; X.XX s; wrote …`: CV + refit + test prediction), himalaya's from `seconds.txt`
//!   (`solve_ridge_cv_svd` + `X_test @ coefs`), i.e. the same span on both sides.
//! * peak memory: the child's `ru_maxrss` as returned by `wait4(2)` on its pid (the kernel's
//!   high-water mark of the resident set, in KiB, reported in MiB). Exact and race-free, unlike
//!   polling `/proc/<pid>/status`. The spawn shares this process's address space until `exec`
//!   (posix_spawn/vfork), so the figure has this bench process's own peak as a floor; that floor
//!   is printed (it stays at a few MiB: the bench never loads the matrices).
//! * CPU time (user + system, also from `wait4`) is kept in the JSON summary: CPU/wall shows whether
//!   the thread setting took effect.
//! * machine quietness: the CPU share used by *other* processes, from `/proc/stat` over one second
//!   before each case and over each run (minus the child's own CPU time). Run on a quiet machine:
//!   with a core taken by, say, a compile, himalaya's spin-waiting OpenBLAS/OpenMP threads slow
//!   down 5–10× (seen here with 2 threads on 2 cores), while cortexflow's rayon pool degrades
//!   gracefully, so the ratio would be meaningless. A warning is printed above 10%.
//! * agreement: fraction of targets whose chosen penalty is identical (same grid point), fraction
//!   within one grid step, and the largest |Δ held-out r| over targets with a finite r on both
//!   sides (a constant prediction has no r: cortexflow writes null, himalaya NaN; such targets are
//!   counted separately).
//!
//! * fraction of peak: the machine's float64 and float32 GEMM peaks are the best rates measured
//!   here on the same threads — faer (cortexflow's kernels) and NumPy's BLAS on 2048³, best of 5 —
//!   and cortexflow's solve is credited with the matrix-product flops its path executes (per fold:
//!   the Gram or kernel matrix, the basis, the test rows' projection, Uᵀ Y, all float64, and one
//!   prediction product per penalty, float32 unless `--exact-scores`; the refit and the test
//!   predictions in float64). The fraction is the time those products would take at the peak of
//!   their precision over the solve time. The eigendecompositions are timed but not counted, so
//!   it is a lower bound of the GEMM efficiency. The decomposition that `Auto` chose and the
//!   scores' precision are read from cortexflow's summary line.
//!
//! Threads: `CORTEXFLOW_BENCH_THREADS` (default 2): cortexflow `-w T`; both children also get
//! `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS` and `RAYON_NUM_THREADS` = T (the
//! BLAS that numpy uses and its thread count are checked with threadpoolctl and printed).
//!
//! Run: `make bench` (both benches) or `cargo bench --bench ridge_vs_himalaya`. The `cortexflow`
//! binary is the one cargo builds alongside this bench (same profile: `CARGO_BIN_EXE_cortexflow`).
//! Environment:
//! * `CORTEXFLOW_BENCH_SIZES`: comma-separated cases, `a`, `b` or `NxPxT` (e.g. `600x200x1000`
//!   for a quick check); default `a,b`.
//! * `CORTEXFLOW_BENCH_REPS` (default 3): runs per tool, interleaved (the order alternates); the
//!   median wall and solve times and the largest peak are reported, and every run is kept in the
//!   JSON summary.
//! * `CORTEXFLOW_BENCH_SEED` (default 0), `CORTEXFLOW_BENCH_DIR` (default `target/bench_ridge`),
//!   `CORTEXFLOW_PYTHON` (default `.venv/bin/python`, else `python3`).
//!
//! Output: a table on stdout, then one JSON line with everything (also written to
//! `<dir>/summary.json`).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context};
use cortexflow::store::{read_npy, read_parquet};
use serde_json::json;

#[path = "support/children.rs"]
mod children;
#[path = "support/figures.rs"]
mod figures;
use children::{
    bench_dir, cpu_sample, env_or, f64_column, others_share, python, run_child, self_peak_mib, with_threads, Run,
};
use figures::{faer_gemm_gflops, median};

const N_FOLDS: usize = 4;

/// Reads the files once so that neither tool pays for a cold page cache.
fn warm_cache(files: &[PathBuf]) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 8 << 20];
    for f in files {
        let mut h = std::fs::File::open(f)?;
        while h.read(&mut buf)? > 0 {}
    }
    Ok(())
}

/// The decomposition in cortexflow's summary line: `ridge: … → T targets, K folds, Gram; …`.
fn cortexflow_method(stdout: &str) -> Option<String> {
    let line = stdout.lines().find(|l| l.starts_with("ridge:"))?;
    let after = &line[line.find(" folds, ")? + " folds, ".len()..];
    Some(after[..after.find(';')?].trim().to_string())
}

/// Matrix-product flops of cortexflow's ridge CV with `method` (see the module docs): `n` training
/// rows in `folds` contiguous folds, `p` features, `t` targets, `n_alphas` penalties, `n_test`
/// test rows; full rank assumed. Returns (float64 flops, the penalties' prediction flops), the
/// latter run in float32 unless `--exact-scores`.
fn cortexflow_gemm_flops(
    method: &str,
    n: usize,
    p: usize,
    t: usize,
    n_alphas: usize,
    folds: usize,
    n_test: usize,
) -> (f64, f64) {
    let (n, p, t, na) = (n as f64, p as f64, t as f64, n_alphas as f64);
    let decomposition = |rows: f64| -> (f64, f64) {
        let r = rows.min(p);
        let f = match method {
            "Gram" => 2.0 * rows * p * p + 2.0 * rows * p * r,
            "Kernel" => 2.0 * rows * rows * p + 2.0 * p * rows * r,
            _ => 0.0, // SVD: not a matrix product
        };
        (f, r)
    };
    let (mut total, mut scores) = (0.0, 0.0);
    for k in 0..folds {
        let n_te = ((k + 1) as f64 * n / folds as f64).floor() - (k as f64 * n / folds as f64).floor();
        let n_tr = n - n_te;
        let (f, r) = decomposition(n_tr);
        total += f + 2.0 * n_te * p * r + 2.0 * r * n_tr * t;
        scores += 2.0 * na * n_te * r * t;
    }
    let (f, r) = decomposition(n);
    let nt = n_test as f64;
    (
        total + f + 2.0 * r * n * t + 2.0 * nt * p * r + 2.0 * nt * r * t,
        scores,
    )
}

/// The solve time in cortexflow's summary line: `ridge: …; 12.34 s; wrote OUT`.
fn cortexflow_solve_s(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("ridge:"))?;
    let before = &line[..line.find("; wrote ")?];
    before.rsplit("; ").next()?.strip_suffix(" s")?.trim().parse().ok()
}

fn parse_case(spec: &str) -> anyhow::Result<(String, [usize; 3])> {
    match spec {
        "a" => Ok(("a".into(), [3000, 1000, 10000])),
        "b" => Ok(("b".into(), [8000, 4000, 20000])),
        other => {
            let v: Vec<usize> = other
                .split('x')
                .map(|s| s.trim().parse())
                .collect::<Result<_, _>>()
                .with_context(|| {
                    format!("CORTEXFLOW_BENCH_SIZES: expected a, b or NxPxT (e.g. 600x200x1000), found {other:?}")
                })?;
            ensure!(
                v.len() == 3 && v.iter().all(|&k| k > 0),
                "CORTEXFLOW_BENCH_SIZES: expected a, b or NxPxT, found {other:?}"
            );
            Ok((other.into(), [v[0], v[1], v[2]]))
        }
    }
}

struct Agreement {
    identical: f64,
    within_one_step: f64,
    max_abs_dr: f64,
    mean_r_cf: f64,
    mean_r_him: f64,
    r_missing_cf: usize,
    r_missing_him: usize,
}

fn agreement(alphas: &[f64], a_cf: &[f64], a_him: &[f64], r_cf: &[f64], r_him: &[f64]) -> anyhow::Result<Agreement> {
    let t = a_cf.len();
    ensure!(
        a_him.len() == t && r_cf.len() == t && r_him.len() == t,
        "output lengths differ: cortexflow {t} α, {} r; himalaya {} α, {} r",
        r_cf.len(),
        a_him.len(),
        r_him.len()
    );
    let grid = |a: f64| alphas.iter().position(|&g| (g - a).abs() <= 1e-9 * g.abs());
    let (mut same, mut near) = (0usize, 0usize);
    for j in 0..t {
        if let (Some(i), Some(k)) = (grid(a_cf[j]), grid(a_him[j])) {
            same += (i == k) as usize;
            near += (i.abs_diff(k) <= 1) as usize;
        }
    }
    let both: Vec<usize> = (0..t)
        .filter(|&j| r_cf[j].is_finite() && r_him[j].is_finite())
        .collect();
    let max_abs_dr = both.iter().map(|&j| (r_cf[j] - r_him[j]).abs()).fold(0.0, f64::max);
    let mean = |r: &[f64]| both.iter().map(|&j| r[j]).sum::<f64>() / both.len().max(1) as f64;
    Ok(Agreement {
        identical: same as f64 / t as f64,
        within_one_step: near as f64 / t as f64,
        max_abs_dr,
        mean_r_cf: mean(r_cf),
        mean_r_him: mean(r_him),
        r_missing_cf: r_cf.iter().filter(|r| !r.is_finite()).count(),
        r_missing_him: r_him.iter().filter(|r| !r.is_finite()).count(),
    })
}

fn main() -> anyhow::Result<()> {
    let threads: usize = env_or("CORTEXFLOW_BENCH_THREADS", 2);
    let reps: usize = env_or::<usize>("CORTEXFLOW_BENCH_REPS", 3).max(1);
    let seed: u64 = env_or("CORTEXFLOW_BENCH_SEED", 0);
    let sizes = std::env::var("CORTEXFLOW_BENCH_SIZES").unwrap_or_else(|_| "a,b".into());
    let cases: Vec<(String, [usize; 3])> = sizes
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_case)
        .collect::<anyhow::Result<_>>()?;
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = bench_dir("bench_ridge");
    let cortexflow_bin = PathBuf::from(env!("CARGO_BIN_EXE_cortexflow"));
    let py = python();
    let himalaya_script = manifest.join("scripts/himalaya_ridge.py");

    // What the Python side runs on, under the same thread environment.
    let probe = with_threads(&mut Command::new(&py), threads)
        .args([
            "-c",
            "import json, himalaya, numpy, threadpoolctl\n\
             info = [{k: d.get(k) for k in ('internal_api', 'num_threads', 'version')} \
                     for d in threadpoolctl.threadpool_info()]\n\
             print(json.dumps({'himalaya': himalaya.__version__, 'numpy': numpy.__version__, 'pools': info}))",
        ])
        .output()
        .context("running the Python probe")?;
    ensure!(
        probe.status.success(),
        "python ({}) cannot import himalaya / numpy / threadpoolctl: {}",
        py.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    let py_env: serde_json::Value = serde_json::from_slice(&probe.stdout)?;

    println!(
        "ridge CV (per-target α, {N_FOLDS} contiguous folds, 10 α = logspace(0, 6, 10), float64, no intercept): \
         cortexflow vs himalaya solve_ridge_cv_svd (numpy backend)"
    );
    println!(
        "{threads} threads, {reps} rep(s), seed {seed}; cortexflow {}; python {} (himalaya {}, numpy {}, pools {})",
        cortexflow_bin.display(),
        py.display(),
        py_env["himalaya"].as_str().unwrap_or("?"),
        py_env["numpy"].as_str().unwrap_or("?"),
        py_env["pools"]
    );
    println!(
        "wall = whole child process (start-up + reading the .npy inputs + solve + writing outputs); \
         (solve) = the tool's own timer: CV + refit + test prediction"
    );

    // the machine's GEMM peaks on these threads: faer (in this process) and NumPy's BLAS
    let np_peak: serde_json::Value = {
        let out = with_threads(&mut Command::new(&py), threads)
            .args([
                "-c",
                "import json, time, numpy as np\n\
                 out = {}\n\
                 for dt in ('float64', 'float32'):\n\
                 \x20   a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(dt)\n\
                 \x20   c = a @ a; best = 1e9\n\
                 \x20   for _ in range(5):\n\
                 \x20       t0 = time.perf_counter(); np.matmul(a, a, out=c); best = min(best, time.perf_counter() - t0)\n\
                 \x20   out[dt] = 2 * 2048**3 / best / 1e9\n\
                 print(json.dumps(out))",
            ])
            .output()
            .context("running the NumPy GEMM probe")?;
        ensure!(
            out.status.success(),
            "NumPy GEMM probe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)?
    };
    let faer64 = faer_gemm_gflops::<f64>(2048, 2048, 2048, threads);
    let faer32 = faer_gemm_gflops::<f32>(2048, 2048, 2048, threads);
    let peak64 = faer64.max(np_peak["float64"].as_f64().unwrap_or(0.0));
    let peak32 = faer32.max(np_peak["float32"].as_f64().unwrap_or(0.0));
    println!(
        "GEMM peak on {threads} threads (2048³, best of 5): float64 {peak64:.0} GFLOP/s (faer {faer64:.0}, NumPy {:.0}), \
         float32 {peak32:.0} GFLOP/s (faer {faer32:.0}, NumPy {:.0})",
        np_peak["float64"].as_f64().unwrap_or(f64::NAN),
        np_peak["float32"].as_f64().unwrap_or(f64::NAN),
    );

    let mut rows = Vec::new();
    let mut summaries = Vec::new();
    for (name, [n, p, t]) in &cases {
        let data = root.join("data").join(format!("{n}x{p}x{t}_s{seed}"));
        if !data.join("meta.json").is_file() {
            eprintln!("generating {} …", data.display());
            let g0 = Instant::now();
            let st = Command::new(&py)
                .arg(manifest.join("scripts/bench_ridge.py"))
                .args([n.to_string(), p.to_string(), t.to_string()])
                .arg(&data)
                .args(["--seed", &seed.to_string()])
                .stdout(Stdio::null())
                .status()?;
            ensure!(st.success(), "scripts/bench_ridge.py failed for {n}x{p}x{t}");
            eprintln!("generated in {:.1} s", g0.elapsed().as_secs_f64());
        }
        let alphas_text = std::fs::read_to_string(data.join("alphas.txt"))?.trim().to_string();
        let alphas: Vec<f64> = alphas_text.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?;
        let files: Vec<PathBuf> = ["X.npy", "Y.npy", "X_test.npy", "Y_test.npy"]
            .iter()
            .map(|f| data.join(f))
            .collect();
        let run_dir = root.join("runs").join(name);
        std::fs::create_dir_all(&run_dir)?;
        let cf_out = run_dir.join("cortexflow.parquet");
        let him_out = run_dir.join("himalaya");

        let s0 = cpu_sample();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let busy = others_share(s0, cpu_sample(), 0.0, 1.0);
        if busy > 0.1 {
            eprintln!(
                "warning: other processes keep {:.0}% of the CPUs busy; timings (himalaya's spin-waiting BLAS \
                 threads above all) will not be representative",
                100.0 * busy
            );
        }
        let (mut cf_runs, mut him_runs) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            // alternate the order so that neither tool always runs second
            let order: [bool; 2] = if rep % 2 == 0 { [true, false] } else { [false, true] };
            for is_cf in order {
                warm_cache(&files)?;
                if is_cf {
                    let mut cmd = Command::new(&cortexflow_bin);
                    with_threads(&mut cmd, threads)
                        .arg("ridge")
                        .arg("--x")
                        .arg(&files[0])
                        .arg("--y")
                        .arg(&files[1])
                        .arg("--x-test")
                        .arg(&files[2])
                        .arg("--y-test")
                        .arg(&files[3])
                        .arg("--alphas")
                        .arg(&alphas_text)
                        .args(["--cv", &N_FOLDS.to_string()])
                        .arg("--out")
                        .arg(&cf_out)
                        .args(["-w", &threads.to_string()])
                        .env("RUST_LOG", "warn");
                    let r = run_child(cmd, &run_dir, "cortexflow")?;
                    let solve = cortexflow_solve_s(&r.stdout)
                        .with_context(|| format!("no '…; X.XX s; wrote …' in cortexflow's stdout: {}", r.stdout))?;
                    cf_runs.push((r, solve));
                } else {
                    let mut cmd = Command::new(&py);
                    with_threads(&mut cmd, threads)
                        .arg(&himalaya_script)
                        .args(&files)
                        .arg(&alphas_text)
                        .arg(N_FOLDS.to_string())
                        .arg(&him_out);
                    let r = run_child(cmd, &run_dir, "himalaya")?;
                    let solve: f64 = std::fs::read_to_string(him_out.join("seconds.txt"))?.trim().parse()?;
                    him_runs.push((r, solve));
                }
            }
        }

        let (_, cf_batches, _) = read_parquet(&cf_out)?;
        let a_cf = f64_column(&cf_batches, "best_alpha")?;
        let r_cf = f64_column(&cf_batches, "test_r")?;
        let a_him = read_npy(&him_out.join("best_alphas.npy"))?.into_raw_vec_and_offset().0;
        let r_him = read_npy(&him_out.join("test_r.npy"))?.into_raw_vec_and_offset().0;
        let ag = agreement(&alphas, &a_cf, &a_him, &r_cf, &r_him)?;

        let best = |runs: &[(Run, f64)]| {
            let peak = runs.iter().map(|r| r.0.peak_mib).fold(0.0, f64::max);
            (
                median(runs.iter().map(|r| r.0.wall_s)),
                median(runs.iter().map(|r| r.1)),
                median(runs.iter().map(|r| r.0.cpu_s)),
                peak,
            )
        };
        let method = cortexflow_method(&cf_runs[0].0.stdout).unwrap_or_else(|| "?".into());
        let others_max = cf_runs.iter().chain(&him_runs).map(|r| r.0.others).fold(0.0, f64::max);
        let (cf_wall, cf_solve, cf_cpu, cf_peak) = best(&cf_runs);
        let (him_wall, him_solve, him_cpu, him_peak) = best(&him_runs);
        rows.push(format!(
            "{:<14} | {:>18} | {:>8.2} ({:>7.2}) | {:>8.2} ({:>7.2}) | {:>6.2} ({:>5.2}) | {:>8.0} | {:>8.0} | {:>6.2} | {:>8.2e}",
            name,
            format!("{n}×{p}×{t}"),
            cf_wall,
            cf_solve,
            him_wall,
            him_solve,
            him_wall / cf_wall,
            him_solve / cf_solve,
            cf_peak,
            him_peak,
            100.0 * ag.identical,
            ag.max_abs_dr
        ));
        let n_test = (0.2 * *n as f64).round() as usize;
        let (f64_flop, score_flop) = cortexflow_gemm_flops(&method, *n, *p, *t, alphas.len(), N_FOLDS, n_test);
        let float32 = cf_runs[0].0.stdout.contains("float32 scores");
        let gflop = (f64_flop + score_flop) / 1e9;
        // seconds the same products would take at the peak of their precision, over the solve
        let ideal_s = f64_flop / 1e9 / peak64 + score_flop / 1e9 / if float32 { peak32 } else { peak64 };
        summaries.push(json!({
            "method": method,
            "scores_float32": float32,
            "cortexflow_gemm_gflop": gflop,
            "cortexflow_gemm_gflops": gflop / cf_solve,
            "cortexflow_fraction_of_peak": ideal_s / cf_solve,
            "gemm_peak_gflops": {"float64": peak64, "float32": peak32, "faer_float64": faer64,
                                 "faer_float32": faer32, "numpy": np_peak.clone()},
            "case": name, "n_train": n, "n_test": n_test, "n_features": p,
            "n_targets": t, "threads": threads, "reps": reps,
            "cortexflow": {
                "wall_s": cf_wall, "solve_s": cf_solve, "cpu_s": cf_cpu, "peak_rss_mib": cf_peak,
                "wall_s_all": cf_runs.iter().map(|r| r.0.wall_s).collect::<Vec<_>>(),
                "solve_s_all": cf_runs.iter().map(|r| r.1).collect::<Vec<_>>(),
                "others_cpu_share_all": cf_runs.iter().map(|r| r.0.others).collect::<Vec<_>>(),
            },
            "himalaya": {
                "wall_s": him_wall, "solve_s": him_solve, "cpu_s": him_cpu, "peak_rss_mib": him_peak,
                "wall_s_all": him_runs.iter().map(|r| r.0.wall_s).collect::<Vec<_>>(),
                "solve_s_all": him_runs.iter().map(|r| r.1).collect::<Vec<_>>(),
                "others_cpu_share_all": him_runs.iter().map(|r| r.0.others).collect::<Vec<_>>(),
            },
            "others_cpu_share_before": busy,
            "others_cpu_share_max_during": others_max,
            "ratio_wall_him_over_cf": him_wall / cf_wall,
            "ratio_solve_him_over_cf": him_solve / cf_solve,
            "alpha_identical_frac": ag.identical,
            "alpha_within_one_step_frac": ag.within_one_step,
            "max_abs_delta_test_r": ag.max_abs_dr,
            "mean_test_r_cortexflow": ag.mean_r_cf,
            "mean_test_r_himalaya": ag.mean_r_him,
            "test_r_undefined": {"cortexflow": ag.r_missing_cf, "himalaya": ag.r_missing_him},
        }));
    }

    println!(
        "{:<14} | {:>18} | {:>19} | {:>19} | {:>14} | {:>8} | {:>8} | {:>6} | {:>8}",
        "case",
        "n_train×p×t",
        "cortexflow s (solve)",
        "himalaya s (solve)",
        "him/cf (solve)",
        "peak MiB",
        "peak MiB",
        "α same",
        "max|Δr|"
    );
    println!(
        "{:<14} | {:>18} | {:>19} | {:>19} | {:>14} | {:>8} | {:>8} | {:>6} | {:>8}",
        "", "", "wall", "wall", "", "cf", "him", "%", ""
    );
    for r in &rows {
        println!("{r}");
    }
    let bench_floor = self_peak_mib();
    println!(
        "peak MiB = the child's ru_maxrss from wait4(2); floor from sharing this process until exec: {bench_floor:.0} MiB"
    );
    for s in &summaries {
        println!(
            "{}: cortexflow took the {} path (Auto), penalties scored in {}; medians of {reps} interleaved runs; its \
             solve executes {:.0} GFLOP of matrix products ({:.0} GFLOP/s), {:.0}% of peak (the time those products \
             take at the GEMM peak of their precision, over the solve time; eigendecompositions timed, not counted)",
            s["case"].as_str().unwrap_or(""),
            s["method"].as_str().unwrap_or("?"),
            if s["scores_float32"].as_bool().unwrap_or(false) {
                "float32 (checked)"
            } else {
                "float64"
            },
            s["cortexflow_gemm_gflop"].as_f64().unwrap_or(f64::NAN),
            s["cortexflow_gemm_gflops"].as_f64().unwrap_or(f64::NAN),
            100.0 * s["cortexflow_fraction_of_peak"].as_f64().unwrap_or(f64::NAN),
        );
        println!(
            "{}: α within one grid step {:.2}%, mean test r cortexflow {:.4} / himalaya {:.4}, CPU s cortexflow {:.1} / \
             himalaya {:.1}; CPU share of other processes: {:.0}% before, up to {:.0}% during the runs",
            s["case"].as_str().unwrap_or(""),
            100.0 * s["alpha_within_one_step_frac"].as_f64().unwrap_or(f64::NAN),
            s["mean_test_r_cortexflow"].as_f64().unwrap_or(f64::NAN),
            s["mean_test_r_himalaya"].as_f64().unwrap_or(f64::NAN),
            s["cortexflow"]["cpu_s"].as_f64().unwrap_or(f64::NAN),
            s["himalaya"]["cpu_s"].as_f64().unwrap_or(f64::NAN),
            100.0 * s["others_cpu_share_before"].as_f64().unwrap_or(f64::NAN),
            100.0 * s["others_cpu_share_max_during"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let summary = json!({
        "bench": "ridge_vs_himalaya",
        "threads": threads,
        "folds": N_FOLDS,
        "python": py_env,
        "bench_process_peak_rss_mib": bench_floor,
        "cases": summaries,
    });
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
