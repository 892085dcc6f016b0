//! Parity of `cortexflow lmm` (the CLI, end to end) with R's lme4 (Debian r-cran-lme4 1.1-31,
//! installed by `make setup`) on simulated crossed data: 120 subjects × 1,200 items, each subject
//! reading a random quarter of the items (unbalanced), ML fits of
//!   (a) rt ~ x1 + x2 + (1 | subject) + (1 | item)
//!   (b) rt ~ x1 + x2 + (1 + x1 | subject) + (1 | item)   (a correlated by-subject random slope)
//! Criteria: log-likelihood within 1e-4 (absolute), fixed effects and variance components within
//! 1e-4 relative (covariances: relative to √(var_i var_j)). Also checks the likelihood-ratio test
//! (b) vs (a) against R's `anova`.
//!
//! lme4 runs with its optimizer converged tightly (`bobyqa`, rhoend 1e-11). At its default
//! tolerance (`nloptwrap`) lme4 stops short on model (b): its log-likelihood is 1.1e-6 lower and its
//! slope variance 2.2e-4 (relative) away from the optimum that tight bobyqa, tight nloptwrap and
//! cortexflow agree on to < 1e-5 — checked by hand with CORTEXFLOW_KEEP_LMM_DATA=path.

use crate::support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use cortexflow::stats::SplitMix64;

const R_FIT: &str = r#"
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1]); d$subject <- factor(d$subject); d$item <- factor(d$item)
ctl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-11, maxfun = 1e5))
fa <- lmer(rt ~ x1 + x2 + (1 | subject) + (1 | item), data = d, REML = FALSE, control = ctl)
fb <- lmer(rt ~ x1 + x2 + (1 + x1 | subject) + (1 | item), data = d, REML = FALSE, control = ctl)
out <- function(tag, m) {
  cat(tag, "loglik", sprintf("%.10f", as.numeric(logLik(m))), "\n")
  fe <- fixef(m); for (n in names(fe)) cat(tag, "fixef", n, sprintf("%.12g", fe[[n]]), "\n")
  vc <- VarCorr(m)
  for (g in names(vc)) { v <- vc[[g]]; for (i in seq_len(nrow(v))) for (j in seq_len(i))
    cat(tag, "vc", g, rownames(v)[i], colnames(v)[j], sprintf("%.12g", v[i, j]), "\n") }
  cat(tag, "sigma2", sprintf("%.12g", sigma(m)^2), "\n")
}
out("a", fa); out("b", fb)
a <- anova(fa, fb)
cat("lrt chisq", sprintf("%.10f", a$Chisq[2]), "\n")
cat("lrt df", a$Df[2], "\n")
cat("lrt p", sprintf("%.12g", a[["Pr(>Chisq)"]][2]), "\n")
"#;

/// Writes the simulated data set as CSV.
fn simulate(path: &Path) -> usize {
    let mut rng = SplitMix64::new(42);
    let (n_subj, n_item) = (120, 1200);
    let subj: Vec<(f64, f64)> = (0..n_subj)
        .map(|_| {
            let (z1, z2) = (rng.normal(), rng.normal());
            (30.0 * z1, 8.0 * (0.3 * z1 + (1.0f64 - 0.09).sqrt() * z2))
        })
        .collect();
    let item: Vec<f64> = (0..n_item).map(|_| 20.0 * rng.normal()).collect();
    let mut csv = String::from("subject,item,x1,x2,rt\n");
    let mut n = 0;
    for (s, &(b0, b1)) in subj.iter().enumerate() {
        for (i, &c) in item.iter().enumerate() {
            if rng.next_f64() >= 0.25 {
                continue;
            }
            let x1 = rng.normal();
            let x2 = (i % 7) as f64 + 0.5 * rng.normal();
            let rt = 300.0 + 20.0 * x1 - 10.0 * x2 + b0 + b1 * x1 + c + 50.0 * rng.normal();
            writeln!(csv, "s{s},i{i},{x1:.6},{x2:.6},{rt:.4}").unwrap();
            n += 1;
        }
    }
    std::fs::write(path, csv).unwrap();
    n
}

fn rscript() -> Command {
    Command::new(std::env::var("CORTEXFLOW_RSCRIPT").unwrap_or_else(|_| "Rscript".into()))
}

fn cortexflow_fit(data: &Path, formula: &str, out: &Path, compare: Option<&str>) -> serde_json::Value {
    let mut cmd = support::bin();
    cmd.args([
        "lmm",
        "--data",
        data.to_str().unwrap(),
        "--formula",
        formula,
        "--out",
        out.to_str().unwrap(),
    ]);
    if let Some(c) = compare {
        cmd.args(["--compare", c]);
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "cortexflow lmm failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    println!("{}", String::from_utf8_lossy(&o.stdout));
    serde_json::from_str(&std::fs::read_to_string(out.join("fit.json")).unwrap()).unwrap()
}

/// (fixed effects by name, variance components keyed "group/effect_1/effect_2" + "Residual").
fn read_tables(out: &Path) -> (HashMap<String, f64>, HashMap<String, f64>) {
    let text = support::run_python(
        "import sys, polars as pl\n\
         f = pl.read_parquet(sys.argv[1] + '/fixed.parquet'); r = pl.read_parquet(sys.argv[1] + '/random.parquet')\n\
         for t, e in zip(f['term'], f['estimate']): print('F', t, repr(e))\n\
         for g, a, b, v in zip(r['group'], r['effect_1'], r['effect_2'], r['covariance']): print('R', g + '/' + a + '/' + b, repr(v))",
        &[out.to_str().unwrap()],
    );
    let (mut fixed, mut random) = (HashMap::new(), HashMap::new());
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let v: f64 = parts[2].parse().unwrap();
        if parts[0] == "F" {
            fixed.insert(parts[1].to_string(), v);
        } else {
            let key = if parts[1].starts_with("Residual") {
                "Residual".to_string()
            } else {
                parts[1].to_string()
            };
            random.insert(key, v);
        }
    }
    (fixed, random)
}

fn rel(a: f64, b: f64, scale: f64) -> f64 {
    (a - b).abs() / scale.abs().max(1e-300)
}

#[test]
fn crossed_random_effects_and_a_random_slope_match_lme4() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rt.csv");
    let n = simulate(&data);
    assert!(n > 30_000, "{n} rows");
    if let Some(keep) = std::env::var_os("CORTEXFLOW_KEEP_LMM_DATA") {
        std::fs::copy(&data, keep).unwrap(); // to rerun lme4 by hand on the same rows
    }
    // lme4 fits while cortexflow does (one core each)
    let r = rscript()
        .arg("-e")
        .arg(R_FIT)
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("Rscript runs (run `make setup`)");
    let cases = [
        ("a", "rt ~ x1 + x2 + (1 | subject) + (1 | item)"),
        ("b", "rt ~ x1 + x2 + (1 + x1 | subject) + (1 | item)"),
    ];
    let fits: Vec<serde_json::Value> = cases
        .iter()
        .map(|(tag, formula)| cortexflow_fit(&data, formula, &dir.path().join(tag), None))
        .collect();
    let r = r.wait_with_output().expect("Rscript runs");
    assert!(
        r.status.success(),
        "R/lme4 failed (run `make setup`):\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r_out = String::from_utf8_lossy(&r.stdout).to_string();

    for ((tag, _), fit) in cases.into_iter().zip(fits) {
        let out = dir.path().join(tag);
        let (fixed, random) = read_tables(&out);
        let mut r_vc: HashMap<String, f64> = HashMap::new();
        let mut r_var: HashMap<String, f64> = HashMap::new();
        for line in r_out.lines().filter(|l| l.starts_with(&format!("{tag} "))) {
            let p: Vec<&str> = line.split_whitespace().collect();
            match p[1] {
                "loglik" => {
                    let ll: f64 = p[2].parse().unwrap();
                    let ours = fit["log_likelihood"].as_f64().unwrap();
                    println!("{tag}: logLik lme4 {ll:.6} cortexflow {ours:.6}");
                    assert!((ll - ours).abs() <= 1e-4, "{tag}: logLik {ours} vs lme4 {ll}");
                }
                "fixef" => {
                    let v: f64 = p[3].parse().unwrap();
                    let ours = fixed[p[2]];
                    assert!(
                        rel(ours, v, v) <= 1e-4,
                        "{tag}: fixed effect {} {ours} vs lme4 {v}",
                        p[2]
                    );
                }
                "vc" => {
                    let key = format!("{}/{}/{}", p[2], p[3], p[4]);
                    let v: f64 = p[5].parse().unwrap();
                    r_vc.insert(key.clone(), v);
                    if p[3] == p[4] {
                        r_var.insert(format!("{}/{}", p[2], p[3]), v);
                    }
                }
                "sigma2" => {
                    let v: f64 = p[2].parse().unwrap();
                    assert!(
                        rel(random["Residual"], v, v) <= 1e-4,
                        "{tag}: σ² {} vs lme4 {v}",
                        random["Residual"]
                    );
                }
                _ => {}
            }
        }
        assert!(!r_vc.is_empty());
        for (key, v) in &r_vc {
            let ours = *random
                .get(key)
                .unwrap_or_else(|| panic!("{tag}: no component {key} in {random:?}"));
            let parts: Vec<&str> = key.split('/').collect();
            let scale =
                (r_var[&format!("{}/{}", parts[0], parts[1])] * r_var[&format!("{}/{}", parts[0], parts[2])]).sqrt();
            println!("{tag}: {key}: lme4 {v:.6} cortexflow {ours:.6}");
            assert!(rel(ours, *v, scale) <= 1e-4, "{tag}: {key} {ours} vs lme4 {v}");
        }
    }

    // likelihood-ratio test of the slope (2 extra parameters: slope variance and correlation)
    let out = dir.path().join("lrt");
    let fit = cortexflow_fit(
        &data,
        "rt ~ x1 + x2 + (1 + x1 | subject) + (1 | item)",
        &out,
        Some("rt ~ x1 + x2 + (1 | subject) + (1 | item)"),
    );
    let lrt = &fit["likelihood_ratio_test"];
    let get = |name: &str| -> f64 {
        r_out
            .lines()
            .find(|l| l.starts_with(&format!("lrt {name} ")))
            .unwrap()
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(lrt["df"].as_u64().unwrap() as f64, get("df"));
    let chi2 = lrt["chi2"].as_f64().unwrap();
    println!(
        "LRT: χ² lme4 {:.6} cortexflow {chi2:.6}; p lme4 {:e} cortexflow {}",
        get("chisq"),
        get("p"),
        lrt["p"]
    );
    assert!((chi2 - get("chisq")).abs() <= 2e-4);
    let (p_r, p_c) = (get("p"), lrt["p"].as_f64().unwrap());
    assert!(
        (p_c - p_r).abs() <= 1e-3 * p_r.max(1e-12) + 1e-12,
        "p {p_c} vs lme4 {p_r}"
    );
}

#[test]
fn bad_input_is_named_and_missing_values_are_counted_not_dropped_silently() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.csv");
    std::fs::write(&p, "subject,item,x1,rt\ns1,i1,0.5,300\ns1,i2,0.1,fast\n").unwrap();
    let o = support::bin()
        .args([
            "lmm",
            "--data",
            p.to_str().unwrap(),
            "--formula",
            "rt ~ x1 + (1|subject)",
            "--out",
        ])
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("row 3") && err.contains("\"rt\"") && err.contains("fast"),
        "{err}"
    );
    let o = support::bin()
        .args([
            "lmm",
            "--data",
            p.to_str().unwrap(),
            "--formula",
            "rt ~ freq + (1|subject)",
            "--out",
        ])
        .arg(dir.path().join("o"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("\"freq\"") && err.contains("x1"),
        "{err}"
    );
    assert!(!dir.path().join("o").exists(), "nothing is written on failure");

    // missing values: counted per column and reported
    let mut csv = String::from("subject,item,x1,rt\n");
    let mut rng = SplitMix64::new(1);
    for s in 0..20 {
        for i in 0..15 {
            let rt = if (s + i) % 13 == 0 {
                "NA".to_string()
            } else {
                format!("{:.3}", 300.0 + 10.0 * s as f64 + 30.0 * rng.normal())
            };
            csv.push_str(&format!("s{s},i{i},{:.3},{rt}\n", rng.normal()));
        }
    }
    let q = dir.path().join("na.csv");
    std::fs::write(&q, csv).unwrap();
    let fit = cortexflow_fit(&q, "rt ~ x1 + (1 | subject) + (1 | item)", &dir.path().join("na"), None);
    let excluded = &fit["rows_excluded_for_missing_values"];
    let n_na = (0..20)
        .flat_map(|s| (0..15).map(move |i| (s + i) % 13 == 0))
        .filter(|&b| b)
        .count();
    assert_eq!(excluded[0][0], "rt");
    assert_eq!(excluded[0][1].as_u64().unwrap() as usize, n_na);
    assert_eq!(fit["n_obs"].as_u64().unwrap() as usize, 300 - n_na);
}

/// Log reading times of the kind the optimizer used to crawl on: an uncentred predictor with an SD
/// of several units (`surp` ~ N(8, 3²)) and a by-subject random slope of it whose SD (`slope_sd`)
/// is small in the predictor's units but large in effect (0.029 · 3 against a residual SD of
/// 0.25), correlated −0.2 with the intercept (SD 0.18); items SD 0.05; `len`, `freq` item-level.
/// 60 subjects × 500 items, each pair observed with probability ½. `item_slope_sd` > 0 adds a
/// by-item slope of `surp`.
fn simulate_log_rt(path: &Path, slope_sd: f64, item_slope_sd: f64, seed: u64) -> usize {
    let mut rng = SplitMix64::new(seed);
    let (n_subj, n_item) = (60, 500);
    let subj: Vec<(f64, f64)> = (0..n_subj)
        .map(|_| {
            let (z1, z2) = (rng.normal(), rng.normal());
            (0.18 * z1, slope_sd * (-0.2 * z1 + (1.0f64 - 0.04).sqrt() * z2))
        })
        .collect();
    let item: Vec<(f64, f64, f64, f64)> = (0..n_item)
        .map(|_| {
            let len = (5.0 + 2.0 * rng.normal()).round().max(1.0);
            let freq = 10.0 + 2.0 * rng.normal();
            (0.05 * rng.normal(), item_slope_sd * rng.normal(), len, freq)
        })
        .collect();
    let mut csv = String::from("subject,item,len,freq,surp,y\n");
    let mut n = 0;
    for (s, &(b0, b1)) in subj.iter().enumerate() {
        for (i, &(c0, c1, len, freq)) in item.iter().enumerate() {
            if rng.next_f64() >= 0.5 {
                continue;
            }
            let surp = 8.0 + 3.0 * rng.normal();
            let y =
                5.8 + 0.01 * len - 0.02 * freq + 0.02 * surp + b0 + b1 * surp + c0 + c1 * surp + 0.25 * rng.normal();
            writeln!(csv, "s{s},i{i},{len},{freq:.6},{surp:.6},{y:.6}").unwrap();
            n += 1;
        }
    }
    std::fs::write(path, csv).unwrap();
    n
}

/// lme4 with its optimizer converged tightly; per model: logLik, fixed effects, variance
/// components, σ², the evaluations and lme4's own singularity verdict.
const R_FIT_CASES: &str = r#"
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
ctl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-11, maxfun = 1e5))
for (k in seq(1, length(args), by = 3)) {
  tag <- args[k]; d <- read.csv(args[k + 1]); d$subject <- factor(d$subject); d$item <- factor(d$item)
  m <- suppressMessages(suppressWarnings(lmer(as.formula(args[k + 2]), data = d, REML = FALSE, control = ctl)))
  cat(tag, "loglik", sprintf("%.10f", as.numeric(logLik(m))), "\n")
  fe <- fixef(m); for (n in names(fe)) cat(tag, "fixef", n, sprintf("%.12g", fe[[n]]), "\n")
  vc <- VarCorr(m)
  for (g in names(vc)) { v <- vc[[g]]; for (i in seq_len(nrow(v))) for (j in seq_len(i))
    cat(tag, "vc", g, rownames(v)[i], colnames(v)[j], sprintf("%.12g", v[i, j]), "\n") }
  cat(tag, "sigma2", sprintf("%.12g", sigma(m)^2), "\n")
  cat(tag, "feval", m@optinfo$feval, "\n")
  cat(tag, "singular", isSingular(m), "\n")
}
"#;

#[test]
fn a_large_slope_variance_a_vanishing_one_and_crossed_slopes_converge_to_lme4s_optimum() {
    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("large.csv");
    let singular = dir.path().join("singular.csv");
    let boundary = dir.path().join("boundary.csv");
    let crossed = dir.path().join("crossed.csv");
    let n = simulate_log_rt(&large, 0.029, 0.0, 7);
    // no slope variance: estimated small but positive from seed 8, exactly at 0 from seed 16
    simulate_log_rt(&singular, 0.0, 0.0, 8);
    simulate_log_rt(&boundary, 0.0, 0.0, 16);
    simulate_log_rt(&crossed, 0.029, 0.01, 9);
    assert!(n > 12_000, "{n} rows");
    let slope = "y ~ len + freq + surp + (1 + surp | subject) + (1 | item)";
    let cases = [
        ("large", &large, slope),
        ("singular", &singular, slope),
        ("boundary", &boundary, slope),
        (
            "crossed",
            &crossed,
            "y ~ len + freq + surp + (1 + surp | subject) + (1 + surp | item)",
        ),
    ];
    let mut r = rscript();
    r.arg("-e").arg(R_FIT_CASES);
    for (tag, data, formula) in &cases {
        r.arg(tag).arg(data).arg(formula);
    }
    // lme4 fits the four cases while cortexflow does (one core each)
    let r = r
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("Rscript runs (run `make setup`)");
    let fits: Vec<serde_json::Value> = cases
        .iter()
        .map(|(tag, data, formula)| cortexflow_fit(data, formula, &dir.path().join(tag), None))
        .collect();
    let r = r.wait_with_output().expect("Rscript runs");
    assert!(
        r.status.success(),
        "R/lme4 failed (run `make setup`):\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r_out = String::from_utf8_lossy(&r.stdout).to_string();
    for ((tag, _, _), fit) in cases.iter().zip(fits) {
        let out = dir.path().join(tag);
        let conv = &fit["convergence"];
        let evals = fit["deviance_evaluations"].as_u64().unwrap();
        let (fixed, random) = read_tables(&out);
        let lines: Vec<Vec<&str>> = r_out
            .lines()
            .filter(|l| l.starts_with(&format!("{tag} ")))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let get = |what: &str| lines.iter().find(|p| p[1] == what).map(|p| p[2]).unwrap();
        let ll_r: f64 = get("loglik").parse().unwrap();
        let ll = fit["log_likelihood"].as_f64().unwrap();
        println!(
            "{tag}: logLik lme4 {ll_r:.8} cortexflow {ll:.8} (Δ {:+.2e}); evaluations cortexflow {evals} ({}) / lme4 {} \
             (rhoend 1e-11); max|grad| {}; singular cortexflow {} / lme4 {}; {}",
            ll - ll_r,
            fit["optimizer"],
            get("feval"),
            conv["max_grad"],
            conv["singular"],
            get("singular"),
            conv["messages"]
        );
        assert!((ll - ll_r).abs() <= 1e-6, "{tag}: logLik {ll} vs lme4 {ll_r}");
        assert_eq!(fit["converged"], true, "{tag}: {conv}");
        assert!(evals < 1_000, "{tag}: {evals} evaluations");
        let r_singular = get("singular") == "TRUE";
        assert_eq!(
            r_singular,
            *tag == "boundary",
            "{tag}: the cases cover a singular fit and no other"
        );
        assert_eq!(conv["singular"].as_bool().unwrap(), r_singular, "{tag}: {conv}");
        let sigma2_r: f64 = get("sigma2").parse().unwrap();
        assert!(rel(random["Residual"], sigma2_r, sigma2_r) <= 1e-4, "{tag}: σ²");
        for p in lines.iter().filter(|p| p[1] == "fixef") {
            let v: f64 = p[3].parse().unwrap();
            assert!(
                rel(fixed[p[2]], v, v) <= 1e-4,
                "{tag}: fixed effect {} {} vs lme4 {v}",
                p[2],
                fixed[p[2]]
            );
        }
        // variance components: within 1e-4 of √(var_i var_j); a variance lme4 puts at 0 (a
        // singular fit) has no scale of its own, so the floor is 1e-4 of the residual variance
        let var = |g: &str, e: &str| -> f64 {
            lines
                .iter()
                .find(|p| p[1] == "vc" && p[2] == g && p[3] == e && p[4] == e)
                .map(|p| p[5].parse::<f64>().unwrap())
                .unwrap()
        };
        let mut n_vc = 0;
        for p in lines.iter().filter(|p| p[1] == "vc") {
            let key = format!("{}/{}/{}", p[2], p[3], p[4]);
            let v: f64 = p[5].parse().unwrap();
            let ours = *random
                .get(&key)
                .unwrap_or_else(|| panic!("{tag}: no {key} in {random:?}"));
            let mut scale = (var(p[2], p[3]) * var(p[2], p[4])).sqrt().max(1e-4 * sigma2_r);
            if r_singular {
                // on the boundary the likelihood is flat along the degenerate direction (a slope
                // of variance ~1e-8 perfectly correlated with the intercept): both tools agree on
                // the log-likelihood to 1e-8, and the components to 1e-4 of the group's largest
                // variance
                let group_max = lines
                    .iter()
                    .filter(|q| q[1] == "vc" && q[2] == p[2] && q[3] == q[4])
                    .map(|q| q[5].parse::<f64>().unwrap())
                    .fold(0.0, f64::max);
                scale = scale.max(group_max);
            }
            println!("{tag}: {key}: lme4 {v:.8e} cortexflow {ours:.8e}");
            assert!(rel(ours, v, scale) <= 1e-4, "{tag}: {key} {ours} vs lme4 {v}");
            n_vc += 1;
        }
        assert!(n_vc >= 4, "{tag}: {n_vc} variance components");
    }
}
