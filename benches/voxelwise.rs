//! The voxelwise multi-story analysis (`cortexflow voxelwise fit`) against himalaya on a slice of
//! the same problem, and its cost projected to the paper's scale.
//!
//! Data: `cortexflow voxelwise simulate --format hf5` (ds003020 layout, HDF5 responses, designs
//! on each story's whole TR grid), generated once per shape under
//! `<target>/bench_voxelwise/<shape>/` (the folder appears only when complete).
//!
//! Runs, each a child process of this binary (wall time and the child's peak resident memory from
//! `wait4(2)`, as in `ridge_vs_himalaya`):
//! 1. **peer, one subject**: `scripts/himalaya_stories.py` — himalaya's `solve_ridge_cv_svd` per
//!    outer fold with the same leave-stories-out inner splits, correlation scoring, the same 13
//!    penalties, responses read from the same `.hf5` files with h5py — against
//!    `cortexflow voxelwise fit --subjects sub01 --n-shifts 0` (the same work: no null, no
//!    cache). Agreement: α per (fold, voxel) identical, max |Δr| of the pooled held-out r. Also
//!    cortexflow's reference path (`--per-fold-decompositions`: every training set decomposed on
//!    its own instead of cut from the design's kernel), with its agreement to the default path.
//! 2. **with the null**: `voxelwise fit` over every subject but the last with `--n-shifts N`
//!    (default 20) and a fresh `--cache`: wall, peak, and cortexflow's own split of the time into
//!    decompositions, reading responses and fits (inner CV + predictions + null refits).
//! 3. **adding a subject**: every subject, with the cache: 0 decompositions computed, only the
//!    new subject fitted.
//!
//! Projection to the paper's scale (8 subjects × 10,800 TRs × 5,000 voxels × 16,384 features,
//! 4 × (4 + 1) decompositions, 1 layer; then × 12 layers): each measured stage scaled by its
//! operation count — decompositions by n²p + n³ (the kernel path: p > n), fits by n² × voxels ×
//! subjects (Uᵀy and the predictions, for the CV and for every null refit), reading by n × voxels
//! × subjects. A model, not a measurement: it assumes the slice runs at the same GEMM/eigensolver
//! efficiency as the full problem (larger problems usually run nearer peak, so it errs high).
//!
//! Environment: `CORTEXFLOW_BENCH_VOXELWISE` = `SUBJECTSxSTORIESxTRSxVOXELSxFEATURES` (default
//! `2x12x225x2000x4096`), `CORTEXFLOW_BENCH_SHIFTS` (default 20), `CORTEXFLOW_BENCH_THREADS`
//! (default 2), `CORTEXFLOW_BENCH_DIR`, `CORTEXFLOW_PYTHON`.
//!
//! Run: `cargo bench --bench voxelwise` (also part of `make bench`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};
use cortexflow::store::{read_npy, read_parquet};
use serde_json::json;

#[path = "support/children.rs"]
mod children;
use children::{bench_dir, env_or, f64_column, python, run_child, self_peak_mib, with_threads, Run};

const PAPER: Shape = Shape {
    subjects: 8,
    stories: 27,
    trs: 400,
    voxels: 5000,
    features: 16_384,
};

#[derive(Clone, Copy, Debug)]
struct Shape {
    subjects: usize,
    stories: usize,
    trs: usize,
    voxels: usize,
    features: usize,
}

impl Shape {
    fn parse(s: &str) -> anyhow::Result<Shape> {
        let v: Vec<usize> = s
            .split('x')
            .map(|x| x.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("CORTEXFLOW_BENCH_VOXELWISE: expected SxKxTxVxP, found {s:?}"))?;
        ensure!(
            v.len() == 5 && v.iter().all(|&k| k > 0),
            "CORTEXFLOW_BENCH_VOXELWISE: expected SxKxTxVxP, found {s:?}"
        );
        Ok(Shape {
            subjects: v[0],
            stories: v[1],
            trs: v[2],
            voxels: v[3],
            features: v[4],
        })
    }
    fn rows(&self) -> f64 {
        (self.stories * self.trs) as f64
    }
    fn name(&self) -> String {
        format!(
            "{}x{}x{}x{}x{}",
            self.subjects, self.stories, self.trs, self.voxels, self.features
        )
    }
}

/// `(total, decompositions, reading, fits)` seconds and the decomposition counts from
/// `voxelwise fit: …; D decompositions computed, L from the cache (…); T s (decompositions a s,
/// reading b s, fits c s)`.
fn stages(stdout: &str) -> anyhow::Result<([f64; 4], usize, usize)> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("voxelwise fit:"))
        .context("no `voxelwise fit:` line")?;
    let num_before = |key: &str| -> anyhow::Result<f64> {
        let i = line.find(key).with_context(|| format!("no {key:?} in {line:?}"))?;
        let head = line[..i].trim_end();
        let tok = head.rsplit([' ', '(', ';', ',']).next().unwrap_or("");
        tok.parse().with_context(|| format!("{tok:?} before {key:?}"))
    };
    let num_after = |key: &str| -> anyhow::Result<f64> {
        let i = line.find(key).with_context(|| format!("no {key:?} in {line:?}"))? + key.len();
        let tok: String = line[i..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        tok.parse().with_context(|| format!("{tok:?} after {key:?}"))
    };
    let total_i = line.rfind(" s (decompositions").context("no stage times")?;
    let total: f64 = line[..total_i].rsplit(' ').next().unwrap_or("").parse()?;
    Ok((
        [
            total,
            num_after("(decompositions")?,
            num_after("reading")?,
            num_after("fits")?,
        ],
        num_before("decompositions computed")? as usize,
        num_before("from the cache")? as usize,
    ))
}

fn fit_cmd(data: &Path, out: &Path, threads: usize, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cortexflow"));
    cmd.arg("voxelwise")
        .arg("fit")
        .arg("--data")
        .arg(data)
        .arg("--designs")
        .arg(data.join("designs"))
        .arg("--out")
        .arg(out)
        .arg("-w")
        .arg(threads.to_string())
        .arg("--quiet")
        .args(extra);
    with_threads(&mut cmd, threads);
    cmd
}

fn main() -> anyhow::Result<()> {
    let shape =
        Shape::parse(&std::env::var("CORTEXFLOW_BENCH_VOXELWISE").unwrap_or_else(|_| "2x12x225x2000x4096".into()))?;
    let shifts: usize = env_or("CORTEXFLOW_BENCH_SHIFTS", 20);
    let threads: usize = env_or("CORTEXFLOW_BENCH_THREADS", 2);
    let root = bench_dir("bench_voxelwise");
    let data = root.join(shape.name());
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    if !data.is_dir() {
        eprintln!("voxelwise bench: simulating {} into {}", shape.name(), data.display());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cortexflow"));
        cmd.args(["voxelwise", "simulate", "--format", "hf5", "--seed", "1"])
            .args(["--subjects", &shape.subjects.to_string()])
            .args(["--stories", &shape.stories.to_string()])
            .args(["--trs-per-story", &shape.trs.to_string()])
            .args(["--voxels", &shape.voxels.to_string()])
            .args(["--features", &shape.features.to_string()])
            .arg("--out")
            .arg(&data);
        let sim = run_child(cmd, &logs, "simulate")?;
        eprintln!(
            "voxelwise bench: simulated in {:.1} s (peak {:.0} MiB)",
            sim.wall_s, sim.peak_mib
        );
    }
    let out = |name: &str| -> PathBuf {
        let p = root.join("out").join(name);
        let _ = std::fs::remove_dir_all(&p);
        p
    };

    // 1. one subject, no null: cortexflow vs himalaya, alternating, cortexflow first
    let cf_out = out("cf_one");
    let cf = run_child(
        fit_cmd(&data, &cf_out, threads, &["--subjects", "sub01", "--n-shifts", "0"]),
        &logs,
        "cortexflow_one",
    )?;
    let (cf_st, _, _) = stages(&cf.stdout)?;
    // the reference path: every training set decomposed on its own
    let ref_out = out("cf_one_per_fold");
    let rf = run_child(
        fit_cmd(
            &data,
            &ref_out,
            threads,
            &["--subjects", "sub01", "--n-shifts", "0", "--per-fold-decompositions"],
        ),
        &logs,
        "cortexflow_one_per_fold",
    )?;
    let (rf_st, _, _) = stages(&rf.stdout)?;
    let him_out = out("himalaya_one");
    let mut cmd = Command::new(python());
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/himalaya_stories.py"))
        .arg(&data)
        .arg("sub01")
        .arg(&him_out);
    with_threads(&mut cmd, threads);
    let him = run_child(cmd, &logs, "himalaya_one")?;
    let him_s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(him_out.join("seconds.json"))?)?;

    // agreement: α per (fold, voxel) and pooled r per voxel
    let (_, folds, _) = read_parquet(&cf_out.join("voxelwise_voxel_folds.parquet"))?;
    let (_, voxels, _) = read_parquet(&cf_out.join("voxelwise_voxels.parquet"))?;
    let cf_alpha = f64_column(&folds, "alpha")?;
    let cf_fold = f64_column(&folds, "fold")?;
    let cf_voxel = f64_column(&folds, "voxel")?;
    let cf_r = f64_column(&voxels, "r")?;
    let h_alpha = read_npy(&him_out.join("alphas.npy"))?; // (folds, voxels)
    let h_r = read_npy(&him_out.join("r.npy"))?;
    let h_r: Vec<f64> = h_r.iter().copied().collect();
    ensure!(
        h_r.len() == cf_r.len(),
        "voxel counts differ: cortexflow {}, himalaya {}",
        cf_r.len(),
        h_r.len()
    );
    let mut same = 0;
    for i in 0..cf_alpha.len() {
        let h = h_alpha[[cf_fold[i] as usize, cf_voxel[i] as usize]];
        same += ((cf_alpha[i] - h).abs() <= 1e-9 * h.abs()) as usize;
    }
    let max_dr = cf_r.iter().zip(&h_r).map(|(a, b)| (a - b).abs()).fold(0.0f64, f64::max);
    let (_, ref_folds, _) = read_parquet(&ref_out.join("voxelwise_voxel_folds.parquet"))?;
    let (_, ref_voxels, _) = read_parquet(&ref_out.join("voxelwise_voxels.parquet"))?;
    let ref_alpha = f64_column(&ref_folds, "alpha")?;
    let ref_same = ref_alpha.iter().zip(&cf_alpha).filter(|(a, b)| a == b).count();
    let ref_dr = f64_column(&ref_voxels, "r")?
        .iter()
        .zip(&cf_r)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);

    // 2. every subject with the null, fresh cache; 3. again from the cache
    let cache = root.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let shifts_s = shifts.to_string();
    let cache_s = cache.to_str().context("cache path")?.to_string();
    ensure!(
        shape.subjects >= 2,
        "the bench adds a subject: expected at least 2 subjects"
    );
    let ids: Vec<String> = (1..=shape.subjects).map(|s| format!("sub{s:02}")).collect();
    let first = ids[..ids.len() - 1].join(",");
    let every = ids.join(",");
    let all = run_child(
        fit_cmd(
            &data,
            &out("cf_all"),
            threads,
            &["--subjects", &first, "--n-shifts", &shifts_s, "--cache", &cache_s],
        ),
        &logs,
        "cortexflow_all",
    )?;
    let (all_st, all_dec, _) = stages(&all.stdout)?;
    let again = run_child(
        fit_cmd(
            &data,
            &out("cf_again"),
            threads,
            &["--subjects", &every, "--n-shifts", &shifts_s, "--cache", &cache_s],
        ),
        &logs,
        "cortexflow_again",
    )?;
    let (again_st, again_dec, again_loaded) = stages(&again.stdout)?;

    // projection: each stage by its operation count
    let n_s = shape.rows();
    let n_p = PAPER.rows();
    let (p_s, p_p) = (shape.features as f64, PAPER.features as f64);
    let dec_scale = (n_p * n_p * p_p + n_p.powi(3)) / (n_s * n_s * p_s + n_s.powi(3));
    let vox_s = (shape.voxels * (shape.subjects - 1)) as f64;
    let vox_p = (PAPER.voxels * PAPER.subjects) as f64;
    let fit_scale = (n_p * n_p * vox_p) / (n_s * n_s * vox_s);
    let read_scale = (n_p * vox_p) / (n_s * vox_s);
    let proj = [all_st[1] * dec_scale, all_st[2] * read_scale, all_st[3] * fit_scale];
    let proj_layer: f64 = proj.iter().sum();

    let row = |name: &str, r: &Run, extra: String| {
        println!(
            "{name:<34} {:>8.1} s {:>8.0} MiB  cpu/wall {:.2}  others {:.0}%  {extra}",
            r.wall_s,
            r.peak_mib,
            r.cpu_s / r.wall_s,
            100.0 * r.others
        );
    };
    println!(
        "voxelwise bench: {} subjects × {} stories × {} TRs × {} voxels × {} features, {threads} threads",
        shape.subjects, shape.stories, shape.trs, shape.voxels, shape.features
    );
    row(
        "cortexflow, sub01, no null",
        &cf,
        format!(
            "(decompositions {:.1} s, reading {:.1} s, fits {:.1} s)",
            cf_st[1], cf_st[2], cf_st[3]
        ),
    );
    row(
        "  per-fold decompositions",
        &rf,
        format!(
            "(decompositions {:.1} s, fits {:.1} s; α identical {ref_same}/{}, max |Δr| {ref_dr:.1e})",
            rf_st[1],
            rf_st[3],
            ref_alpha.len()
        ),
    );
    row(
        "himalaya, sub01 (same work)",
        &him,
        format!(
            "(read {:.1} s, solve {:.1} s)",
            him_s["read"].as_f64().unwrap_or(f64::NAN),
            him_s["solve"].as_f64().unwrap_or(f64::NAN)
        ),
    );
    println!(
        "  ratio himalaya / cortexflow (wall): {:.2}×; α identical {same}/{}; max |Δr| {max_dr:.1e}",
        him.wall_s / cf.wall_s,
        cf_alpha.len()
    );
    row(
        &format!("cortexflow, {} subject(s), {shifts} shifts", shape.subjects - 1),
        &all,
        format!(
            "({all_dec} decompositions {:.1} s, reading {:.1} s, fits {:.1} s)",
            all_st[1], all_st[2], all_st[3]
        ),
    );
    row(
        "  adding a subject, with the cache",
        &again,
        format!(
            "({again_dec} decompositions computed, {again_loaded} loaded in {:.1} s; fits {:.1} s)",
            again_st[1], again_st[3]
        ),
    );
    println!(
        "projection to 8 × 10,800 TRs × 5,000 voxels × 16,384 features, {shifts} shifts, 1 layer: decompositions {:.0} s, \
         reading {:.0} s, fits {:.0} s → {:.2} h per layer, {:.1} h for 12 layers (target: 12 layers < 1 h)",
        proj[0],
        proj[1],
        proj[2],
        proj_layer / 3600.0,
        12.0 * proj_layer / 3600.0
    );
    let summary = json!({
        "shape": shape.name(), "threads": threads, "shifts": shifts,
        "cortexflow_one": {"wall_s": cf.wall_s, "peak_mib": cf.peak_mib, "stages_s": cf_st},
        "cortexflow_one_per_fold": {"wall_s": rf.wall_s, "peak_mib": rf.peak_mib, "stages_s": rf_st,
                                    "alpha_identical": ref_same, "max_abs_dr": ref_dr},
        "himalaya_one": {"wall_s": him.wall_s, "peak_mib": him.peak_mib, "seconds": him_s},
        "ratio": him.wall_s / cf.wall_s, "alpha_identical": same, "alpha_total": cf_alpha.len(), "max_abs_dr": max_dr,
        "cortexflow_all": {"wall_s": all.wall_s, "peak_mib": all.peak_mib, "stages_s": all_st, "decompositions": all_dec},
        "cortexflow_again": {"wall_s": again.wall_s, "peak_mib": again.peak_mib, "stages_s": again_st,
                             "decompositions": again_dec, "loaded": again_loaded},
        "projection_s": {"decompositions": proj[0], "reading": proj[1], "fits": proj[2], "layer": proj_layer,
                         "twelve_layers": 12.0 * proj_layer},
        "bench_peak_mib": self_peak_mib(),
    });
    std::fs::write(root.join("summary.json"), summary.to_string())?;
    println!("{summary}");
    Ok(())
}
