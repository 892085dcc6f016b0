//! Linear mixed models with crossed random effects: `cortexflow lmm` against R's lme4 (`lmer`,
//! Debian r-cran-lme4 1.1-31) on the same CSV, both by ML, lme4 at its default settings (the
//! default `lmerControl()`: optimizer `nloptwrap` (NLopt BOBYQA) with its default tolerances, and
//! the default convergence checks, which include `calc.derivs = TRUE`, a finite-difference gradient
//! and Hessian at the optimum: 2k² further deviance evaluations for k covariance
//! parameters, not counted in lme4's `feval`).
//!
//! Models, both `REML = FALSE`:
//!   (a) rt ~ x1 + x2 + (1 | subject) + (1 | item)
//!   (b) rt ~ x1 + x2 + (1 + x1 | subject) + (1 | item)   (a correlated by-subject random slope)
//!
//! Data (the simulator of `tests/it/lmm_parity.rs`, scaled): for a target of N rows, S = √(N/5)
//! subjects × 10·S items (200 × 2,000 for the default N = 200,000), each subject reading each item
//! with probability ½ (so ≈ N rows, unbalanced both ways); x1 ~ N(0, 1) per row, x2 item-level
//! ((item mod 7) + N(0, ½²)); rt = 300 + 20·x1 − 10·x2 + b0[subject] + b1[subject]·x1 + c[item] +
//! 50·ε with sd(b0) = 30, sd(b1) = 8, corr(b0, b1) = 0.3, sd(c) = 20. Generated once in Rust
//! (`SplitMix64`, fixed seed) and kept under `target/bench_lmm/data/`.
//!
//! Measurement (the methods of `benches/ridge_vs_himalaya.rs`): both tools run as child processes
//! of this binary, one after the other, each on a warm page cache (the CSV is read through once
//! before every run); one Rscript process per model.
//! * wall time: the whole child process, from spawn to exit: start-up (R: loading lme4), reading
//!   the CSV, building the model, the fit, writing the outputs (cortexflow: fit.json and two
//!   Parquet files; R: a few printed lines). Each tool's own solve time is in parentheses:
//!   cortexflow's `seconds` from fit.json (the ML fit only: its timer starts once the design and
//!   the grouping factors are built), lme4's `system.time(lmer(...))` elapsed, which also covers
//!   lme4's model frame and sparse Z construction (`lFormula`) and its default convergence checks.
//!   So the solve ratio is, if anything, tilted towards cortexflow; the wall ratio is the like for
//!   like one.
//! * peak memory: the child's `ru_maxrss` from `wait4(2)` (KiB, reported in MiB); for R this
//!   includes `read.csv`'s working memory. The spawn shares this process's address space until
//!   `exec`, so this bench process's own peak is a floor, printed below the table.
//! * CPU time (user + system, also from `wait4`) is kept in the JSON summary.
//! * machine quietness: the CPU share used by *other* processes, from `/proc/stat` over one second
//!   before each model and over each run (minus the child's own CPU time); a warning is printed
//!   above 10%.
//! * agreement: Δ logLik = cortexflow − lme4 (positive: cortexflow found a higher likelihood), and
//!   in the JSON summary and below the table the largest |Δβ| / se over the fixed effects.
//! * evaluations: cortexflow's `deviance_evaluations` / lme4's `optinfo$feval`.
//!
//! Threads: `CORTEXFLOW_BENCH_THREADS` (default 2) sets `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`,
//! `MKL_NUM_THREADS` and `RAYON_NUM_THREADS` for both children (`cortexflow lmm` has no thread
//! option; R's BLAS is printed).
//!
//! Run: `make bench` or `cargo bench --bench lmm_vs_lme4`. The `cortexflow` binary is the one cargo
//! builds alongside this bench (same profile: `CARGO_BIN_EXE_cortexflow`). Environment:
//! * `CORTEXFLOW_BENCH_ROWS`: comma-separated target row counts, default `200000` (e.g. `20000`
//!   for a quick check).
//! * `CORTEXFLOW_BENCH_REPS` (default 1): runs per tool and model; the fastest wall time and the
//!   largest peak are reported.
//! * `CORTEXFLOW_BENCH_SEED` (default 0), `CORTEXFLOW_BENCH_DIR` (default `target/bench_lmm`),
//!   `CORTEXFLOW_RSCRIPT` (default `Rscript`).
//!
//! Output: a table on stdout, then one JSON line with everything (also written to
//! `<dir>/summary.json`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context};
use arrow::array::{Array, StringArray};
use cortexflow::stats::SplitMix64;
use cortexflow::store::read_parquet;
use serde_json::json;

#[path = "support/children.rs"]
mod children;
use children::{bench_dir, cpu_sample, env_or, f64_column, others_share, run_child, self_peak_mib, with_threads, Run};

const MODELS: [(&str, &str); 2] = [
    ("a", "rt ~ x1 + x2 + (1 | subject) + (1 | item)"),
    ("b", "rt ~ x1 + x2 + (1 + x1 | subject) + (1 | item)"),
];

/// One model fit by lme4 at its defaults; args: CSV, formula. Grouping columns are made factors
/// before the timer (as lmer would do itself); warnings and messages are collected, not printed.
const R_FIT: &str = r#"
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1]); d$subject <- factor(d$subject); d$item <- factor(d$item)
f <- as.formula(args[2])
notes <- character(0)
t <- system.time(m <- withCallingHandlers(lmer(f, data = d, REML = FALSE),
  warning = function(w) { notes <<- c(notes, conditionMessage(w)); invokeRestart("muffleWarning") },
  message = function(w) { notes <<- c(notes, conditionMessage(w)); invokeRestart("muffleMessage") }))
cat("seconds", sprintf("%.6f", t[["elapsed"]]), "\n")
cat("loglik", sprintf("%.10f", as.numeric(logLik(m))), "\n")
cat("nobs", nobs(m), "\n")
cat("feval", m@optinfo$feval, "\n")
cat("optimizer", m@optinfo$optimizer, "\n")
fe <- fixef(m); se <- sqrt(diag(as.matrix(vcov(m)))); names(se) <- names(fe)
for (n in names(fe)) cat("fixef", n, sprintf("%.12g", fe[[n]]), sprintf("%.12g", se[[n]]), "\n")
for (s in unique(c(notes, unlist(m@optinfo$conv$lme4$messages)))) cat("note", gsub("[\r\n]+", " ", s), "\n")
"#;

/// A run with what the tool itself reported.
struct Fit {
    run: Run,
    solve_s: f64,
    log_likelihood: f64,
    evaluations: u64,
    n_obs: u64,
    /// term → (estimate, se)
    fixed: HashMap<String, (f64, f64)>,
    /// cortexflow: "converged" / "NOT CONVERGED"; lme4: optimizer, warnings and messages
    notes: Vec<String>,
}

fn rscript() -> PathBuf {
    std::env::var_os("CORTEXFLOW_RSCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|| "Rscript".into())
}

/// Reads the file once so that neither tool pays for a cold page cache.
fn warm_cache(file: &Path) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 8 << 20];
    let mut h = std::fs::File::open(file)?;
    while h.read(&mut buf)? > 0 {}
    Ok(())
}

/// Subjects and items for a target of `n` rows (each pair observed with probability ½).
fn design(n: usize) -> (usize, usize) {
    let s = ((n as f64 / 5.0).sqrt().round() as usize).max(2);
    (s, 10 * s)
}

/// Writes the simulated crossed data set (see the module docs) to `path` (via a temporary file,
/// so that an interrupted run leaves nothing to reuse); returns the number of rows.
fn simulate(path: &Path, n_subj: usize, n_item: usize, seed: u64) -> anyhow::Result<usize> {
    let mut rng = SplitMix64::new(seed);
    let subj: Vec<(f64, f64)> = (0..n_subj)
        .map(|_| {
            let (z1, z2) = (rng.normal(), rng.normal());
            (30.0 * z1, 8.0 * (0.3 * z1 + (1.0f64 - 0.09).sqrt() * z2))
        })
        .collect();
    let item: Vec<(f64, f64)> = (0..n_item)
        .map(|i| (20.0 * rng.normal(), (i % 7) as f64 + 0.5 * rng.normal()))
        .collect();
    let tmp = path.with_extension("csv.tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    writeln!(w, "subject,item,x1,x2,rt")?;
    let mut n = 0;
    for (s, &(b0, b1)) in subj.iter().enumerate() {
        for (i, &(c, x2)) in item.iter().enumerate() {
            if rng.next_f64() >= 0.5 {
                continue;
            }
            let x1 = rng.normal();
            let rt = 300.0 + 20.0 * x1 - 10.0 * x2 + b0 + b1 * x1 + c + 50.0 * rng.normal();
            writeln!(w, "s{s},i{i},{x1:.6},{x2:.6},{rt:.4}")?;
            n += 1;
        }
    }
    w.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(n)
}

fn string_column(batches: &[arrow::array::RecordBatch], name: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        let col = b.column_by_name(name).with_context(|| format!("no column {name}"))?;
        let a = col
            .as_any()
            .downcast_ref::<StringArray>()
            .with_context(|| format!("{name} is not a string column"))?;
        out.extend((0..a.len()).map(|i| a.value(i).to_string()));
    }
    Ok(out)
}

fn cortexflow_fit(run: Run, out: &Path) -> anyhow::Result<Fit> {
    let fit: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("fit.json"))?)?;
    let num = |k: &str| {
        fit[k]
            .as_f64()
            .with_context(|| format!("no number {k} in {}", out.display()))
    };
    let (_, batches, _) = read_parquet(&out.join("fixed.parquet"))?;
    let terms = string_column(&batches, "term")?;
    let est = f64_column(&batches, "estimate")?;
    let se = f64_column(&batches, "se")?;
    let fixed = terms
        .into_iter()
        .zip(est.into_iter().zip(se))
        .collect::<HashMap<_, _>>();
    let converged = fit["converged"].as_bool().unwrap_or(false);
    Ok(Fit {
        solve_s: num("seconds")?,
        log_likelihood: num("log_likelihood")?,
        evaluations: num("deviance_evaluations")? as u64,
        n_obs: num("n_obs")? as u64,
        fixed,
        notes: vec![if converged { "converged" } else { "NOT CONVERGED" }.to_string()],
        run,
    })
}

fn lme4_fit(run: Run) -> anyhow::Result<Fit> {
    let mut v: HashMap<&str, f64> = HashMap::new();
    let (mut fixed, mut notes) = (HashMap::new(), Vec::new());
    for line in run.stdout.lines() {
        let p: Vec<&str> = line.split_whitespace().collect();
        match p.as_slice() {
            ["fixef", name, est, se] => {
                fixed.insert(name.to_string(), (est.parse()?, se.parse()?));
            }
            ["optimizer", rest @ ..] => notes.push(format!("optimizer {}", rest.join(" "))),
            ["note", rest @ ..] => notes.push(rest.join(" ")),
            [k @ ("seconds" | "loglik" | "nobs" | "feval"), x] => {
                v.insert(k, x.parse()?);
            }
            _ => {}
        }
    }
    let get = |k: &str| {
        v.get(k)
            .copied()
            .with_context(|| format!("no '{k}' line in lme4's output:\n{}", run.stdout))
    };
    Ok(Fit {
        solve_s: get("seconds")?,
        log_likelihood: get("loglik")?,
        evaluations: get("feval")? as u64,
        n_obs: get("nobs")? as u64,
        fixed,
        notes,
        run,
    })
}

/// Largest |Δβ| / se (lme4's se) over the fixed effects lme4 reports.
fn max_dbeta_over_se(cf: &Fit, r: &Fit) -> anyhow::Result<f64> {
    ensure!(!r.fixed.is_empty(), "no fixed effects in lme4's output");
    let mut m: f64 = 0.0;
    for (name, &(b, se)) in &r.fixed {
        let &(ours, _) = cf
            .fixed
            .get(name)
            .with_context(|| format!("no fixed effect {name} in cortexflow's fixed.parquet"))?;
        m = m.max((ours - b).abs() / se);
    }
    Ok(m)
}

fn main() -> anyhow::Result<()> {
    let threads: usize = env_or("CORTEXFLOW_BENCH_THREADS", 2);
    let reps: usize = env_or::<usize>("CORTEXFLOW_BENCH_REPS", 1).max(1);
    let seed: u64 = env_or("CORTEXFLOW_BENCH_SEED", 0);
    let rows_spec = std::env::var("CORTEXFLOW_BENCH_ROWS").unwrap_or_else(|_| "200000".into());
    let cases: Vec<usize> = rows_spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace('_', "")
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= 100)
                .with_context(|| format!("CORTEXFLOW_BENCH_ROWS: expected row counts ≥ 100 (e.g. 20000), found {s:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(!cases.is_empty(), "CORTEXFLOW_BENCH_ROWS is empty");
    let root = bench_dir("bench_lmm");
    let cortexflow_bin = PathBuf::from(env!("CARGO_BIN_EXE_cortexflow"));
    let rs = rscript();
    std::fs::create_dir_all(root.join("data"))?;
    let r_script = root.join("lmer_fit.R");
    std::fs::write(&r_script, R_FIT)?;

    // What the R side runs on, under the same thread environment.
    let probe = with_threads(&mut Command::new(&rs), threads)
        .args([
            "-e",
            "suppressMessages(library(lme4)); si <- sessionInfo(); \
             cat(R.version.string, '|', 'lme4', as.character(packageVersion('lme4')), '|', \
             'BLAS', si$BLAS, '|', 'LAPACK', si$LAPACK, '|', 'optimizer', lmerControl()$optimizer[[1]], '\n')",
        ])
        .output()
        .with_context(|| format!("running {}", rs.display()))?;
    ensure!(
        probe.status.success(),
        "{} cannot load lme4 (run `make setup`): {}",
        rs.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    let r_env = String::from_utf8_lossy(&probe.stdout).trim().to_string();

    println!("linear mixed models by ML, crossed random effects: cortexflow lmm vs lme4 lmer (REML = FALSE)");
    for (tag, f) in MODELS {
        println!("  ({tag}) {f}");
    }
    println!(
        "lme4 at its default settings (default lmerControl(): nloptwrap/BOBYQA, default tolerances, \
         calc.derivs = TRUE convergence check)"
    );
    println!(
        "{threads} threads, {reps} rep(s), seed {seed}; cortexflow {}; {} ({r_env})",
        cortexflow_bin.display(),
        rs.display()
    );
    println!(
        "wall = whole child process (start-up + reading the CSV + model set-up + fit + output); (solve) = the \
         tool's own timer: cortexflow the ML fit (fit.json seconds), lme4 system.time(lmer(...)) (incl. lFormula \
         and the convergence checks)"
    );

    let mut rows = Vec::new();
    let mut summaries = Vec::new();
    for &target in &cases {
        let (n_subj, n_item) = design(target);
        let data = root.join("data").join(format!("crossed_{n_subj}x{n_item}_s{seed}.csv"));
        if !data.is_file() {
            eprintln!("generating {} …", data.display());
            let g0 = Instant::now();
            let n = simulate(&data, n_subj, n_item, seed)?;
            eprintln!("generated {n} rows in {:.1} s", g0.elapsed().as_secs_f64());
        }
        let case = target.to_string();
        for (tag, formula) in MODELS {
            let run_dir = root.join("runs").join(format!("{case}_{tag}"));
            std::fs::create_dir_all(&run_dir)?;
            let cf_out = run_dir.join("cortexflow");

            let s0 = cpu_sample();
            std::thread::sleep(std::time::Duration::from_secs(1));
            let busy = others_share(s0, cpu_sample(), 0.0, 1.0);
            if busy > 0.1 {
                eprintln!(
                    "warning: other processes keep {:.0}% of the CPUs busy; timings will not be representative",
                    100.0 * busy
                );
            }
            let (mut cf_runs, mut r_runs) = (Vec::new(), Vec::new());
            for rep in 0..reps {
                // alternate the order so that neither tool always runs second
                let order: [bool; 2] = if rep % 2 == 0 { [true, false] } else { [false, true] };
                for is_cf in order {
                    warm_cache(&data)?;
                    if is_cf {
                        let mut cmd = Command::new(&cortexflow_bin);
                        with_threads(&mut cmd, threads)
                            .arg("lmm")
                            .arg("--data")
                            .arg(&data)
                            .args(["--formula", formula])
                            .arg("--out")
                            .arg(&cf_out)
                            .env("RUST_LOG", "warn");
                        let r = run_child(cmd, &run_dir, "cortexflow")?;
                        cf_runs.push(cortexflow_fit(r, &cf_out)?);
                    } else {
                        let mut cmd = Command::new(&rs);
                        with_threads(&mut cmd, threads).arg(&r_script).arg(&data).arg(formula);
                        let r = run_child(cmd, &run_dir, "lme4")?;
                        r_runs.push(lme4_fit(r)?);
                    }
                }
            }

            let best = |runs: &[Fit]| {
                let i = (0..runs.len())
                    .min_by(|&i, &k| runs[i].run.wall_s.total_cmp(&runs[k].run.wall_s))
                    .unwrap();
                let peak = runs.iter().map(|r| r.run.peak_mib).fold(0.0, f64::max);
                (i, peak)
            };
            let others_max = cf_runs.iter().chain(&r_runs).map(|r| r.run.others).fold(0.0, f64::max);
            let (ic, cf_peak) = best(&cf_runs);
            let (ir, r_peak) = best(&r_runs);
            let (cf, r) = (&cf_runs[ic], &r_runs[ir]);
            ensure!(
                cf.n_obs == r.n_obs,
                "{case} ({tag}): cortexflow used {} rows, lme4 {}",
                cf.n_obs,
                r.n_obs
            );
            let dll = cf.log_likelihood - r.log_likelihood;
            let dbeta = max_dbeta_over_se(cf, r)?;
            rows.push(format!(
                "{:<8} | {:<5} | {:>7} | {:>10.2} ({:>7.2}) | {:>10.2} ({:>7.2}) | {:>7.2} ({:>5.2}) | {:>8.0} | {:>8.0} | \
                 {:>+9.2e} | {:>11}",
                case,
                tag,
                cf.n_obs,
                cf.run.wall_s,
                cf.solve_s,
                r.run.wall_s,
                r.solve_s,
                r.run.wall_s / cf.run.wall_s,
                r.solve_s / cf.solve_s,
                cf_peak,
                r_peak,
                dll,
                format!("{}/{}", cf.evaluations, r.evaluations)
            ));
            summaries.push(json!({
                "case": case, "model": tag, "formula": formula, "rows": cf.n_obs, "subjects": n_subj,
                "items": n_item, "threads": threads, "reps": reps,
                "cortexflow": {
                    "wall_s": cf.run.wall_s, "solve_s": cf.solve_s, "cpu_s": cf.run.cpu_s, "peak_rss_mib": cf_peak,
                    "log_likelihood": cf.log_likelihood, "deviance_evaluations": cf.evaluations,
                    "notes": cf.notes,
                    "wall_s_all": cf_runs.iter().map(|r| r.run.wall_s).collect::<Vec<_>>(),
                    "solve_s_all": cf_runs.iter().map(|r| r.solve_s).collect::<Vec<_>>(),
                    "others_cpu_share_all": cf_runs.iter().map(|r| r.run.others).collect::<Vec<_>>(),
                },
                "lme4": {
                    "wall_s": r.run.wall_s, "solve_s": r.solve_s, "cpu_s": r.run.cpu_s, "peak_rss_mib": r_peak,
                    "log_likelihood": r.log_likelihood, "feval": r.evaluations, "notes": r.notes,
                    "wall_s_all": r_runs.iter().map(|r| r.run.wall_s).collect::<Vec<_>>(),
                    "solve_s_all": r_runs.iter().map(|r| r.solve_s).collect::<Vec<_>>(),
                    "others_cpu_share_all": r_runs.iter().map(|r| r.run.others).collect::<Vec<_>>(),
                },
                "others_cpu_share_before": busy,
                "others_cpu_share_max_during": others_max,
                "ratio_wall_lme4_over_cf": r.run.wall_s / cf.run.wall_s,
                "ratio_solve_lme4_over_cf": r.solve_s / cf.solve_s,
                "delta_log_likelihood_cf_minus_lme4": dll,
                "max_abs_delta_fixed_over_se": dbeta,
            }));
        }
    }

    println!(
        "{:<8} | {:<5} | {:>7} | {:>20} | {:>20} | {:>15} | {:>8} | {:>8} | {:>9} | {:>11}",
        "case",
        "model",
        "rows",
        "cortexflow s (solve)",
        "lme4 s (solve)",
        "lme4/cf (solve)",
        "peak MiB",
        "peak MiB",
        "Δ logLik",
        "evaluations"
    );
    println!(
        "{:<8} | {:<5} | {:>7} | {:>20} | {:>20} | {:>15} | {:>8} | {:>8} | {:>9} | {:>11}",
        "", "", "", "wall", "wall", "wall", "cf", "R", "cf − lme4", "cf/lme4"
    );
    for r in &rows {
        println!("{r}");
    }
    let bench_floor = self_peak_mib();
    println!(
        "peak MiB = the child's ru_maxrss from wait4(2); floor from sharing this process until exec: {bench_floor:.0} MiB; \
         evaluations: cortexflow deviance evaluations / lme4 optinfo$feval (without calc.derivs' 2k² for k covariance parameters: 8 in (a), 32 in (b))"
    );
    for s in &summaries {
        let notes = |tool: &str| {
            s[tool]["notes"]
                .as_array()
                .map(|v| v.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join("; "))
                .unwrap_or_default()
        };
        println!(
            "{} ({}): max |Δβ|/se {:.1e}; CPU s cortexflow {:.1} / lme4 {:.1}; CPU share of other processes: {:.0}% \
             before, up to {:.0}% during the runs; cortexflow: {}; lme4: {}",
            s["case"].as_str().unwrap_or(""),
            s["model"].as_str().unwrap_or(""),
            s["max_abs_delta_fixed_over_se"].as_f64().unwrap_or(f64::NAN),
            s["cortexflow"]["cpu_s"].as_f64().unwrap_or(f64::NAN),
            s["lme4"]["cpu_s"].as_f64().unwrap_or(f64::NAN),
            100.0 * s["others_cpu_share_before"].as_f64().unwrap_or(f64::NAN),
            100.0 * s["others_cpu_share_max_during"].as_f64().unwrap_or(f64::NAN),
            notes("cortexflow"),
            notes("lme4"),
        );
    }
    let summary = json!({
        "bench": "lmm_vs_lme4",
        "threads": threads,
        "method": "ML",
        "lme4_control": "default lmerControl()",
        "r": r_env,
        "bench_process_peak_rss_mib": bench_floor,
        "cases": summaries,
    });
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
