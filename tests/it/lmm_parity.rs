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
    let r = rscript()
        .arg("-e")
        .arg(R_FIT)
        .arg(&data)
        .output()
        .expect("Rscript runs (run `make setup`)");
    assert!(
        r.status.success(),
        "R/lme4 failed (run `make setup`):\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r_out = String::from_utf8_lossy(&r.stdout).to_string();

    for (tag, formula) in [
        ("a", "rt ~ x1 + x2 + (1 | subject) + (1 | item)"),
        ("b", "rt ~ x1 + x2 + (1 + x1 | subject) + (1 | item)"),
    ] {
        let out = dir.path().join(tag);
        let fit = cortexflow_fit(&data, formula, &out, None);
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
