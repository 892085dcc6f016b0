//! Linear mixed models with crossed random effects: `cortexflow lmm` against R's lme4 (`lmer`,
//! Debian r-cran-lme4 1.1-31) on the same CSV, both by ML, lme4 at its default settings (the
//! default `lmerControl()`: optimizer `nloptwrap` (NLopt BOBYQA) with its default tolerances, and
//! the default convergence checks, which include `calc.derivs = TRUE`, a finite-difference gradient
//! and Hessian at the optimum: 2k² further deviance evaluations for k covariance
//! parameters, not counted in lme4's `feval`).
//!
//! Cases (`CASES`; all `REML = FALSE`), each on its own simulated data set:
//!   a               intercepts:      rt ~ x1 + x2 + (1 | subject) + (1 | item)                        (k = 2)
//!   b               correlated slope: rt ~ x1 + x2 + (1 + x1 | subject) + (1 | item)                  (k = 4)
//!   large-slope     reading times on the log scale, a by-subject slope of an uncentred predictor:
//!                   y ~ len + freq + surp + (1 + surp | subject) + (1 | item)                         (k = 4)
//!   near-singular   the large-slope data without any slope variance, same model (its optimum is on
//!                   the boundary: lme4 reports "boundary (singular) fit")                             (k = 4)
//!   crossed-slopes  a correlated slope of x1 by subject and by item:
//!                   rt ~ x1 + x2 + (1 + x1 | subject) + (1 + x1 | item)                               (k = 6)
//!
//! Data: one simulator (`simulate`, parameters `Sim`), generated in Rust (`SplitMix64`, seeded by
//! `CORTEXFLOW_BENCH_SEED`) and kept under `<dir>/data/` in a file whose name holds the generator
//! family, the random-effect SDs, a hash of all the parameters, the target rows, the design and the
//! seed (cases with the same parameters, a and b, share a file). For a target of N rows: S = √(N/5)
//! subjects × 10·S items (200 × 2,000 for the default N = 200,000), each subject reading each item
//! with probability ½ (so ≈ N rows, unbalanced both ways). Per subject s, from z₁, z₂ ~ N(0, 1):
//! b0[s] = σ₀·z₁ and b1[s] = σ₁·(ρ·z₁ + √(1 − ρ²)·z₂) (so sd(b0) = σ₀, sd(b1) = σ₁, corr = ρ).
//! Per item i: c0[i] ~ N(0, τ₀²), then the item-level covariates in order, then c1[i] ~ N(0, τ₁²),
//! independent of c0 (drawn only where τ₁ > 0, so that a and b keep the data of earlier versions of
//! this bench). Per row (subject-major, then item): a uniform draw for inclusion, then the row-level
//! covariate x ~ N(μ, sd²) (the slopes are on it), then ε ~ N(0, 1), and
//!   response = β₀ + β_x·x + Σ β_j·(item covariate j) + b0[s] + b1[s]·x + c0[i] + c1[i]·x + σ·ε.
//! The two families:
//! * rt (a, b, crossed-slopes; the simulator of `tests/it/lmm_parity.rs`, scaled): columns
//!   subject, item, x1, x2, rt; x1 ~ N(0, 1) per row; x2 item-level, (i mod 7) + N(0, ½²);
//!   rt = 300 + 20·x1 − 10·x2 + b0 + b1·x1 + c0 + c1·x1 + 50·ε with σ₀ = 30, σ₁ = 8, ρ = 0.3,
//!   τ₀ = 20, and τ₁ = 0 (a, b) or 5 (crossed-slopes).
//! * logrt (large-slope, near-singular; reading times on the log scale as a user reported them):
//!   columns subject, item, surp, len, freq, y; surp ~ N(8, 3²) per row (not centred); len
//!   item-level, round(N(5, 2²)) and at least 1; freq item-level, N(10, 2²);
//!   y = 5.8 + 0.02·surp + 0.01·len − 0.02·freq + b0 + b1·surp + c0 + 0.25·ε with σ₀ = 0.18,
//!   ρ = −0.2, τ₀ = 0.05, τ₁ = 0, and σ₁ = 0.029 (large-slope) or 0 (near-singular: no slope
//!   variance at all).
//!
//! Measurement (the methods of `benches/ridge_vs_himalaya.rs`): both tools run as child processes
//! of this binary, one after the other, each on a warm page cache (the CSV is read through once
//! before every run); one Rscript process per fit. Repetitions are interleaved: cortexflow then
//! lme4 in the first, lme4 then cortexflow in the second, and so on; the table shows the median
//! over the repetitions of each time and the ratio lme4 / cortexflow of those medians (wall and
//! solve); every repetition is in the JSON summary.
//! * wall time: the whole child process, from spawn to exit: start-up (R: loading lme4), reading
//!   the CSV, building the model, the fit, writing the outputs (cortexflow: fit.json and two
//!   Parquet files; R: a few printed lines). Each tool's own solve time is in parentheses:
//!   cortexflow's `seconds` from fit.json (the ML fit only: its timer starts once the design and
//!   the grouping factors are built), lme4's `system.time(lmer(...))` elapsed, which also covers
//!   lme4's model frame and sparse Z construction (`lFormula`) and its default convergence checks.
//!   So the solve ratio is, if anything, tilted towards cortexflow; the wall ratio is the like for
//!   like one. Below the table: the smallest wall ratio over the cases, and which case it is.
//! * peak memory: the child's `ru_maxrss` from `wait4(2)` (KiB, reported in MiB; the largest over
//!   the repetitions); for R this includes `read.csv`'s working memory. The spawn shares this
//!   process's address space until `exec`, so this bench process's own peak is a floor, printed
//!   below the table.
//! * CPU time (user + system, also from `wait4`) is kept in the JSON summary.
//! * machine quietness: the CPU share used by *other* processes, from `/proc/stat` over one second
//!   before each case and over each run (minus the child's own CPU time); a warning is printed
//!   above 10%.
//! * agreement (from the first repetition of each tool; fits are deterministic): Δ logLik =
//!   cortexflow − lme4 (positive: cortexflow found a higher likelihood), and in the JSON summary
//!   and below the table the largest |Δβ| / se over the fixed effects.
//! * evaluations: cortexflow's `deviance_evaluations` / lme4's `optinfo$feval`.
//! * notes: cortexflow's optimizer, "converged" or "NOT CONVERGED", its largest |min(scaled
//!   gradient, gradient)| (lme4's gradient check), whether the fit is singular (and its boundary
//!   parameters) and its messages, from fit.json (`optimizer`, `convergence`; each omitted when
//!   fit.json lacks it); lme4's optimizer and its warnings and messages (e.g. "boundary (singular)
//!   fit"). The JSON summary also has lme4's gradient check value and `isSingular()`, computed
//!   after the timed fit.
//!
//! Threads: `CORTEXFLOW_BENCH_THREADS` (default 2) sets `OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`,
//! `MKL_NUM_THREADS` and `RAYON_NUM_THREADS` for both children (`cortexflow lmm` has no thread
//! option; R's BLAS is printed).
//!
//! Run: `make bench` or `cargo bench --bench lmm_vs_lme4`. The `cortexflow` binary is the one cargo
//! builds alongside this bench (same profile: `CARGO_BIN_EXE_cortexflow`). Environment:
//! * `CORTEXFLOW_BENCH_ROWS`: comma-separated target row counts, default `200000` (e.g. `20000`
//!   for a quick check).
//! * `CORTEXFLOW_BENCH_CASES`: comma-separated case tags (`a,b,large-slope,near-singular,
//!   crossed-slopes`), default all, run in the order given.
//! * `CORTEXFLOW_BENCH_REPS` (default 2): interleaved repetitions per tool and case.
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

use anyhow::{bail, ensure, Context};
use arrow::array::{Array, StringArray};
use cortexflow::stats::SplitMix64;
use cortexflow::store::read_parquet;
use serde::Serialize;
use serde_json::{json, Value};

#[path = "support/children.rs"]
mod children;
#[path = "support/figures.rs"]
mod figures;
use children::{bench_dir, cpu_sample, env_or, f64_column, others_share, run_child, self_peak_mib, with_threads, Run};
use figures::median;

/// The row-level covariate, x ~ N(mean, sd²) per row; the random slopes are on it.
#[derive(Debug, Clone, Copy, Serialize)]
struct RowCovariate {
    name: &'static str,
    mean: f64,
    sd: f64,
    beta: f64,
}

/// How an item-level covariate is drawn, once per item.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "draw", rename_all = "snake_case")]
enum ItemDraw {
    /// (item index mod `period`) + N(0, sd²)
    Cycle { period: usize, sd: f64 },
    /// N(mean, sd²)
    Normal { mean: f64, sd: f64 },
    /// round(N(mean, sd²)), at least `min` (written as an integer)
    RoundedNormal { mean: f64, sd: f64, min: f64 },
}

#[derive(Debug, Clone, Copy, Serialize)]
struct ItemCovariate {
    name: &'static str,
    #[serde(flatten)]
    draw: ItemDraw,
    beta: f64,
}

/// The simulator's parameters (see the module docs for the generator).
#[derive(Debug, Clone, Copy, Serialize)]
struct Sim {
    /// first part of the data file's name
    family: &'static str,
    response: &'static str,
    intercept: f64,
    row: RowCovariate,
    items: &'static [ItemCovariate],
    /// sd of the by-subject intercept b0 and of the by-subject slope b1 (on `row`)
    subject_sd: [f64; 2],
    /// corr(b0, b1)
    subject_corr: f64,
    /// sd of the by-item intercept c0 and of the by-item slope c1 (on `row`), independent
    item_sd: [f64; 2],
    residual_sd: f64,
    /// decimals of the response in the CSV
    response_decimals: usize,
}

const RT_ITEMS: &[ItemCovariate] = &[ItemCovariate {
    name: "x2",
    draw: ItemDraw::Cycle { period: 7, sd: 0.5 },
    beta: -10.0,
}];

/// The data of cases a and b.
const RT: Sim = Sim {
    family: "rt",
    response: "rt",
    intercept: 300.0,
    row: RowCovariate {
        name: "x1",
        mean: 0.0,
        sd: 1.0,
        beta: 20.0,
    },
    items: RT_ITEMS,
    subject_sd: [30.0, 8.0],
    subject_corr: 0.3,
    item_sd: [20.0, 0.0],
    residual_sd: 50.0,
    response_decimals: 4,
};

const LOGRT_ITEMS: &[ItemCovariate] = &[
    ItemCovariate {
        name: "len",
        draw: ItemDraw::RoundedNormal {
            mean: 5.0,
            sd: 2.0,
            min: 1.0,
        },
        beta: 0.01,
    },
    ItemCovariate {
        name: "freq",
        draw: ItemDraw::Normal { mean: 10.0, sd: 2.0 },
        beta: -0.02,
    },
];

/// Reading times on the log scale with an uncentred slope predictor (the large-slope case).
const LOGRT: Sim = Sim {
    family: "logrt",
    response: "y",
    intercept: 5.8,
    row: RowCovariate {
        name: "surp",
        mean: 8.0,
        sd: 3.0,
        beta: 0.02,
    },
    items: LOGRT_ITEMS,
    subject_sd: [0.18, 0.029],
    subject_corr: -0.2,
    item_sd: [0.05, 0.0],
    residual_sd: 0.25,
    response_decimals: 6,
};

struct Case {
    tag: &'static str,
    description: &'static str,
    formula: &'static str,
    sim: Sim,
}

const CASES: [Case; 5] = [
    Case {
        tag: "a",
        description: "intercepts",
        formula: "rt ~ x1 + x2 + (1 | subject) + (1 | item)",
        sim: RT,
    },
    Case {
        tag: "b",
        description: "correlated by-subject slope",
        formula: "rt ~ x1 + x2 + (1 + x1 | subject) + (1 | item)",
        sim: RT,
    },
    Case {
        tag: "large-slope",
        description: "log reading times, by-subject slope of an uncentred predictor (sd 0.029, mean 8, sd 3)",
        formula: "y ~ len + freq + surp + (1 + surp | subject) + (1 | item)",
        sim: LOGRT,
    },
    Case {
        tag: "near-singular",
        description: "the large-slope data without slope variance (a boundary optimum)",
        formula: "y ~ len + freq + surp + (1 + surp | subject) + (1 | item)",
        sim: Sim {
            subject_sd: [0.18, 0.0],
            ..LOGRT
        },
    },
    Case {
        tag: "crossed-slopes",
        description: "correlated slopes of x1 by subject and by item",
        formula: "rt ~ x1 + x2 + (1 + x1 | subject) + (1 + x1 | item)",
        sim: Sim {
            item_sd: [20.0, 5.0],
            ..RT
        },
    },
];

/// One model fit by lme4 at its defaults; args: CSV, formula. Grouping columns are made factors
/// before the timer (as lmer would do itself); warnings and messages are collected, not printed.
/// After the timed fit: lme4's gradient check value (max |min(scaled gradient, gradient)|, from
/// the derivatives `calc.derivs` computed) and `isSingular()`.
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
dv <- m@optinfo$derivs
if (!is.null(dv)) {
  sg <- tryCatch(solve(chol(dv$Hessian), dv$gradient), error = function(e) NULL)
  if (!is.null(sg)) cat("maxgrad", sprintf("%.6g", max(pmin(abs(sg), abs(dv$gradient)))), "\n")
}
cat("singular", if (isSingular(m)) 1 else 0, "\n")
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
    /// cortexflow: optimizer, converged / NOT CONVERGED, gradient, singular, messages;
    /// lme4: optimizer, warnings and messages
    notes: Vec<String>,
    /// what else the tool reported (cortexflow: optimizer and convergence from fit.json; lme4:
    /// optimizer, gradient check value, isSingular)
    extra: Value,
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

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The data file's name: the family, the random-effect SDs, a hash of all the parameters, the
/// target rows, the design and the seed.
fn data_name(sim: &Sim, target: usize, n_subj: usize, n_item: usize, seed: u64) -> String {
    format!(
        "{}_subj{}-{}-r{}_item{}-{}_e{}_{:08x}_n{target}_{n_subj}x{n_item}_s{seed}.csv",
        sim.family,
        sim.subject_sd[0],
        sim.subject_sd[1],
        sim.subject_corr,
        sim.item_sd[0],
        sim.item_sd[1],
        sim.residual_sd,
        fnv1a(format!("{sim:?}").as_bytes()) as u32,
    )
}

/// Writes the simulated crossed data set (see the module docs) to `path` (via a temporary file,
/// so that an interrupted run leaves nothing to reuse); returns the number of rows.
fn simulate(sim: &Sim, path: &Path, n_subj: usize, n_item: usize, seed: u64) -> anyhow::Result<usize> {
    let mut rng = SplitMix64::new(seed);
    let [sd0, sd1] = sim.subject_sd;
    let rho = sim.subject_corr;
    let subj: Vec<(f64, f64)> = (0..n_subj)
        .map(|_| {
            let (z1, z2) = (rng.normal(), rng.normal());
            (sd0 * z1, sd1 * (rho * z1 + (1.0 - rho * rho).sqrt() * z2))
        })
        .collect();
    // per item: (c0, c1, covariates)
    let item: Vec<(f64, f64, Vec<f64>)> = (0..n_item)
        .map(|i| {
            let c0 = sim.item_sd[0] * rng.normal();
            let covs = sim
                .items
                .iter()
                .map(|c| match c.draw {
                    ItemDraw::Cycle { period, sd } => (i % period) as f64 + sd * rng.normal(),
                    ItemDraw::Normal { mean, sd } => mean + sd * rng.normal(),
                    ItemDraw::RoundedNormal { mean, sd, min } => (mean + sd * rng.normal()).round().max(min),
                })
                .collect();
            // drawn only when present, so that data without item slopes keep their stream
            let c1 = if sim.item_sd[1] > 0.0 {
                sim.item_sd[1] * rng.normal()
            } else {
                0.0
            };
            (c0, c1, covs)
        })
        .collect();
    let item_text: Vec<String> = item
        .iter()
        .map(|(_, _, covs)| {
            sim.items
                .iter()
                .zip(covs)
                .map(|(c, v)| match c.draw {
                    ItemDraw::RoundedNormal { .. } => format!(",{v:.0}"),
                    _ => format!(",{v:.6}"),
                })
                .collect()
        })
        .collect();
    let tmp = path.with_extension("csv.tmp");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    write!(w, "subject,item,{}", sim.row.name)?;
    for c in sim.items {
        write!(w, ",{}", c.name)?;
    }
    writeln!(w, ",{}", sim.response)?;
    let (mean, sd, beta) = (sim.row.mean, sim.row.sd, sim.row.beta);
    let digits = sim.response_decimals;
    let mut n = 0;
    for (s, &(b0, b1)) in subj.iter().enumerate() {
        for (i, (c0, c1, covs)) in item.iter().enumerate() {
            if rng.next_f64() >= 0.5 {
                continue;
            }
            let x = mean + sd * rng.normal();
            let mut y = sim.intercept + beta * x;
            for (c, v) in sim.items.iter().zip(covs) {
                y += c.beta * v;
            }
            y = y + b0 + b1 * x + c0 + c1 * x + sim.residual_sd * rng.normal();
            writeln!(w, "s{s},i{i},{x:.6}{},{y:.digits$}", item_text[i])?;
            n += 1;
        }
    }
    w.into_inner()?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(n)
}

/// Covariance parameters of a formula's random-effect terms: m(m + 1)/2 for each `(… | g)` with
/// m terms (the intercept unless `0`/`-1`).
fn n_covariance_params(formula: &str) -> usize {
    let mut k = 0;
    let mut rest = formula;
    while let Some(open) = rest.find('(') {
        let Some(len) = rest[open..].find(')') else { break };
        let inner = &rest[open + 1..open + len];
        if let Some((lhs, _)) = inner.split_once('|') {
            let terms: Vec<&str> = lhs.split('+').map(str::trim).filter(|t| !t.is_empty()).collect();
            let intercept = !terms.iter().any(|t| *t == "0" || *t == "-1");
            let m = terms.iter().filter(|t| !["0", "1", "-1"].contains(t)).count() + usize::from(intercept);
            k += m * (m + 1) / 2;
        }
        rest = &rest[open + len..];
    }
    k
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

/// cortexflow's notes from fit.json, each omitted when fit.json lacks it: the optimizer,
/// converged / NOT CONVERGED, the gradient check value, singular (with the boundary parameters),
/// the messages.
fn cortexflow_notes(fit: &Value) -> Vec<String> {
    let conv = &fit["convergence"];
    let strings = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let mut notes = Vec::new();
    if let Some(o) = fit["optimizer"].as_str() {
        notes.push(format!("optimizer {o}"));
    }
    if let Some(c) = conv["converged"].as_bool().or_else(|| fit["converged"].as_bool()) {
        notes.push(if c { "converged" } else { "NOT CONVERGED" }.to_string());
    }
    if let Some(s) = conv["optimizer_status"].as_str() {
        notes.push(format!("status {s}"));
    }
    if let Some(g) = conv["max_grad"].as_f64() {
        notes.push(format!("max|grad| {g:.1e}"));
    }
    if let Some(s) = conv["singular"].as_bool() {
        let boundary = strings(&conv["boundary"]);
        notes.push(match (s, boundary.is_empty()) {
            (false, _) => "not singular".to_string(),
            (true, true) => "singular".to_string(),
            (true, false) => format!("singular (boundary: {})", boundary.join(", ")),
        });
    }
    notes.extend(strings(&conv["messages"]));
    notes
}

fn cortexflow_fit(run: Run, out: &Path) -> anyhow::Result<Fit> {
    let fit: Value = serde_json::from_str(&std::fs::read_to_string(out.join("fit.json"))?)?;
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
    Ok(Fit {
        solve_s: num("seconds")?,
        log_likelihood: num("log_likelihood")?,
        evaluations: num("deviance_evaluations")? as u64,
        n_obs: num("n_obs")? as u64,
        fixed,
        notes: cortexflow_notes(&fit),
        extra: json!({
            "optimizer": fit.get("optimizer"),
            "converged": fit.get("converged"),
            "convergence": fit.get("convergence"),
        }),
        run,
    })
}

fn lme4_fit(run: Run) -> anyhow::Result<Fit> {
    let mut v: HashMap<&str, f64> = HashMap::new();
    let (mut fixed, mut notes, mut optimizer) = (HashMap::new(), Vec::new(), None);
    for line in run.stdout.lines() {
        let p: Vec<&str> = line.split_whitespace().collect();
        match p.as_slice() {
            ["fixef", name, est, se] => {
                fixed.insert(name.to_string(), (est.parse()?, se.parse()?));
            }
            ["optimizer", rest @ ..] => {
                optimizer = Some(rest.join(" "));
                notes.push(format!("optimizer {}", rest.join(" ")));
            }
            ["note", rest @ ..] => notes.push(rest.join(" ")),
            [k @ ("seconds" | "loglik" | "nobs" | "feval" | "maxgrad" | "singular"), x] => {
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
        extra: json!({
            "optimizer": optimizer,
            "max_grad": v.get("maxgrad"),
            "singular": v.get("singular").map(|&s| s != 0.0),
        }),
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

/// The JSON of one tool's repetitions: medians, the largest peak, the first fit's results, and
/// every repetition.
fn tool_json(runs: &[Fit], order: &[usize], evaluations_key: &str) -> Value {
    let f = &runs[0];
    let lls: Vec<f64> = runs.iter().map(|r| r.log_likelihood).collect();
    json!({
        "wall_s": median(runs.iter().map(|r| r.run.wall_s)),
        "solve_s": median(runs.iter().map(|r| r.solve_s)),
        "cpu_s": median(runs.iter().map(|r| r.run.cpu_s)),
        "peak_rss_mib": runs.iter().map(|r| r.run.peak_mib).fold(0.0, f64::max),
        "log_likelihood": f.log_likelihood,
        "log_likelihood_spread_over_reps": lls.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - lls.iter().copied().fold(f64::INFINITY, f64::min),
        evaluations_key: f.evaluations,
        "notes": f.notes,
        "reported": f.extra,
        "runs": runs.iter().zip(order).enumerate().map(|(rep, (r, &position))| json!({
            "rep": rep, "position_in_rep": position, "wall_s": r.run.wall_s, "solve_s": r.solve_s,
            "cpu_s": r.run.cpu_s, "peak_rss_mib": r.run.peak_mib, "others_cpu_share": r.run.others,
            "log_likelihood": r.log_likelihood, "evaluations": r.evaluations,
        })).collect::<Vec<_>>(),
    })
}

fn main() -> anyhow::Result<()> {
    let threads: usize = env_or("CORTEXFLOW_BENCH_THREADS", 2);
    let reps: usize = env_or::<usize>("CORTEXFLOW_BENCH_REPS", 2).max(1);
    let seed: u64 = env_or("CORTEXFLOW_BENCH_SEED", 0);
    let rows_spec = std::env::var("CORTEXFLOW_BENCH_ROWS").unwrap_or_else(|_| "200000".into());
    let targets: Vec<usize> = rows_spec
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
    ensure!(!targets.is_empty(), "CORTEXFLOW_BENCH_ROWS is empty");
    let cases: Vec<&Case> = match std::env::var("CORTEXFLOW_BENCH_CASES") {
        Err(_) => CASES.iter().collect(),
        Ok(spec) => {
            let mut v: Vec<&Case> = Vec::new();
            for t in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let Some(c) = CASES.iter().find(|c| c.tag == t) else {
                    let tags: Vec<&str> = CASES.iter().map(|c| c.tag).collect();
                    bail!("CORTEXFLOW_BENCH_CASES: no case {t:?} (cases: {})", tags.join(", "));
                };
                if !v.iter().any(|x| x.tag == c.tag) {
                    v.push(c);
                }
            }
            ensure!(!v.is_empty(), "CORTEXFLOW_BENCH_CASES is empty");
            v
        }
    };
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
    for c in &cases {
        println!("  {:<14} {}: {}", c.tag, c.description, c.formula);
    }
    println!(
        "lme4 at its default settings (default lmerControl(): nloptwrap/BOBYQA, default tolerances, \
         calc.derivs = TRUE convergence check)"
    );
    println!(
        "{threads} threads, {reps} interleaved rep(s), seed {seed}; cortexflow {}; {} ({r_env})",
        cortexflow_bin.display(),
        rs.display()
    );
    println!(
        "wall = whole child process (start-up + reading the CSV + model set-up + fit + output); (solve) = the \
         tool's own timer: cortexflow the ML fit (fit.json seconds), lme4 system.time(lmer(...)) (incl. lFormula \
         and the convergence checks); times are medians over the reps, ratios are of the medians"
    );

    let mut rows = Vec::new();
    let mut summaries = Vec::new();
    for &target in &targets {
        let (n_subj, n_item) = design(target);
        for case in &cases {
            let tag = case.tag;
            let formula = case.formula;
            let data = root
                .join("data")
                .join(data_name(&case.sim, target, n_subj, n_item, seed));
            if !data.is_file() {
                eprintln!("generating {} …", data.display());
                let g0 = Instant::now();
                let n = simulate(&case.sim, &data, n_subj, n_item, seed)?;
                eprintln!("generated {n} rows in {:.1} s", g0.elapsed().as_secs_f64());
            }
            let run_dir = root.join("runs").join(format!("{target}_{tag}"));
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
            let (mut cf_pos, mut r_pos) = (Vec::new(), Vec::new());
            for rep in 0..reps {
                // alternate the order so that neither tool always runs second
                let order: [bool; 2] = if rep % 2 == 0 { [true, false] } else { [false, true] };
                for (position, is_cf) in order.into_iter().enumerate() {
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
                        let r = run_child(cmd, &run_dir, &format!("cortexflow_rep{rep}"))?;
                        cf_runs.push(cortexflow_fit(r, &cf_out)?);
                        cf_pos.push(position);
                    } else {
                        let mut cmd = Command::new(&rs);
                        with_threads(&mut cmd, threads).arg(&r_script).arg(&data).arg(formula);
                        let r = run_child(cmd, &run_dir, &format!("lme4_rep{rep}"))?;
                        r_runs.push(lme4_fit(r)?);
                        r_pos.push(position);
                    }
                }
            }

            let others_max = cf_runs.iter().chain(&r_runs).map(|r| r.run.others).fold(0.0, f64::max);
            let (cf, r) = (&cf_runs[0], &r_runs[0]);
            ensure!(
                cf.n_obs == r.n_obs,
                "{target} ({tag}): cortexflow used {} rows, lme4 {}",
                cf.n_obs,
                r.n_obs
            );
            let dll = cf.log_likelihood - r.log_likelihood;
            let dbeta = max_dbeta_over_se(cf, r)?;
            let cf_j = tool_json(&cf_runs, &cf_pos, "deviance_evaluations");
            let r_j = tool_json(&r_runs, &r_pos, "feval");
            let (cf_wall, cf_solve) = (cf_j["wall_s"].as_f64().unwrap(), cf_j["solve_s"].as_f64().unwrap());
            let (r_wall, r_solve) = (r_j["wall_s"].as_f64().unwrap(), r_j["solve_s"].as_f64().unwrap());
            let (ratio_wall, ratio_solve) = (r_wall / cf_wall, r_solve / cf_solve);
            rows.push(format!(
                "{:<8} | {:<14} | {:>7} | {:>10.2} ({:>7.2}) | {:>10.2} ({:>7.2}) | {:>7.2} ({:>5.2}) | {:>8.0} | {:>8.0} | \
                 {:>+9.2e} | {:>11}",
                target,
                tag,
                cf.n_obs,
                cf_wall,
                cf_solve,
                r_wall,
                r_solve,
                ratio_wall,
                ratio_solve,
                cf_j["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                r_j["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                dll,
                format!("{}/{}", cf.evaluations, r.evaluations)
            ));
            let k = n_covariance_params(formula);
            summaries.push(json!({
                "rows_target": target, "case": tag, "description": case.description, "formula": formula,
                "covariance_parameters": k, "rows": cf.n_obs, "subjects": n_subj, "items": n_item,
                "data": data.file_name().map(|f| f.to_string_lossy().into_owned()), "simulator": case.sim,
                "seed": seed, "threads": threads, "reps": reps,
                "cortexflow": cf_j,
                "lme4": r_j,
                "others_cpu_share_before": busy,
                "others_cpu_share_max_during": others_max,
                "ratio_wall_lme4_over_cf": ratio_wall,
                "ratio_solve_lme4_over_cf": ratio_solve,
                "delta_log_likelihood_cf_minus_lme4": dll,
                "max_abs_delta_fixed_over_se": dbeta,
            }));
        }
    }

    println!(
        "{:<8} | {:<14} | {:>7} | {:>20} | {:>20} | {:>15} | {:>8} | {:>8} | {:>9} | {:>11}",
        "target",
        "case",
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
        "{:<8} | {:<14} | {:>7} | {:>20} | {:>20} | {:>15} | {:>8} | {:>8} | {:>9} | {:>11}",
        "rows", "", "", "wall", "wall", "wall", "cf", "R", "cf − lme4", "cf/lme4"
    );
    for r in &rows {
        println!("{r}");
    }
    let bench_floor = self_peak_mib();
    let ks: Vec<String> = cases
        .iter()
        .map(|c| format!("{} {}", c.tag, 2 * n_covariance_params(c.formula).pow(2)))
        .collect();
    println!(
        "peak MiB = the child's ru_maxrss from wait4(2), largest over the reps; floor from sharing this process until \
         exec: {bench_floor:.0} MiB; evaluations: cortexflow deviance evaluations / lme4 optinfo$feval (without \
         calc.derivs' 2k² for k covariance parameters: {})",
        ks.join(", ")
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
            s["rows_target"],
            s["case"].as_str().unwrap_or(""),
            s["max_abs_delta_fixed_over_se"].as_f64().unwrap_or(f64::NAN),
            s["cortexflow"]["cpu_s"].as_f64().unwrap_or(f64::NAN),
            s["lme4"]["cpu_s"].as_f64().unwrap_or(f64::NAN),
            100.0 * s["others_cpu_share_before"].as_f64().unwrap_or(f64::NAN),
            100.0 * s["others_cpu_share_max_during"].as_f64().unwrap_or(f64::NAN),
            notes("cortexflow"),
            notes("lme4"),
        );
    }
    let smallest = summaries
        .iter()
        .filter_map(|s| s["ratio_wall_lme4_over_cf"].as_f64().map(|r| (r, s)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let smallest_json = smallest.map(|(r, s)| {
        println!(
            "smallest wall ratio lme4/cortexflow: {r:.2}× ({} rows target, case {})",
            s["rows_target"],
            s["case"].as_str().unwrap_or("")
        );
        json!({"ratio": r, "rows_target": s["rows_target"], "case": s["case"]})
    });
    let summary = json!({
        "bench": "lmm_vs_lme4",
        "threads": threads,
        "reps": reps,
        "method": "ML",
        "lme4_control": "default lmerControl()",
        "r": r_env,
        "bench_process_peak_rss_mib": bench_floor,
        "smallest_wall_ratio": smallest_json,
        "cases": summaries,
    });
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
