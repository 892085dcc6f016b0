//! Tests of `cortexflow::stats::agreement` against closed forms computed in numpy
//! (scripts/topography_reference.py; statsmodels is not installed in the test venv) on random
//! labels and rater tables, plus the bootstrap's reproducibility.
//!
//! Tolerance: 1e-12 absolute (κ is a ratio of sums of counts; both sides are exact up to
//! rounding).

use crate::support;

use ndarray::Array2;
use serde_json::{json, Value};

use cortexflow::stats::agreement::*;
use cortexflow::stats::SplitMix64;

fn reference(req: &Value) -> Value {
    support::topography_reference(req)
}

fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        v => v.as_f64().unwrap(),
    }
}

fn same(ours: f64, theirs: f64, what: &str) {
    assert!(
        (ours.is_nan() && theirs.is_nan()) || (ours - theirs).abs() <= 1e-12,
        "{what}: ours {ours}, numpy {theirs}"
    );
}

/// Two raters who agree with probability `agree`, else the second picks at random.
fn labels(n: usize, k: usize, agree: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = SplitMix64::new(seed);
    let a: Vec<usize> = (0..n).map(|_| rng.below(k as u64) as usize).collect();
    let b = a
        .iter()
        .map(|&x| {
            if rng.next_f64() < agree {
                x
            } else {
                rng.below(k as u64) as usize
            }
        })
        .collect();
    (a, b)
}

#[test]
fn cohen_kappa_and_per_category_kappa_match_numpy() {
    let cases = vec![
        (labels(500, 5, 0.8, 1), 5),
        (labels(60, 3, 0.3, 2), 3),
        (labels(20, 4, 0.5, 3), 4),
    ];
    let req: Vec<Value> = cases.iter().map(|((a, b), k)| json!([a, b, k])).collect();
    let r = reference(&json!({ "cohen": req }));
    for (i, ((a, b), k)) in cases.iter().enumerate() {
        let (kappa, per, cm) = cohen_kappa(a, b, *k).unwrap();
        let s = &r["cohen"][i];
        let theirs: Vec<Vec<u64>> = serde_json::from_value(s["confusion"].clone()).unwrap();
        assert_eq!(cm.counts, Array2::from_shape_fn((*k, *k), |(x, y)| theirs[x][y]));
        assert_eq!(kappa.n_items, a.len());
        same(kappa.kappa, num(&s["kappa"]), &format!("case {i} κ"));
        same(kappa.observed_agreement, num(&s["po"]), &format!("case {i} p_o"));
        same(kappa.expected_agreement, num(&s["pe"]), &format!("case {i} p_e"));
        for (j, kj) in per.iter().enumerate() {
            assert_eq!(kj.category, Some(j));
            same(kj.kappa, num(&s["per_category"][j]), &format!("case {i} κ_{j}"));
        }
    }
}

#[test]
fn fleiss_kappa_matches_numpy_on_random_rater_tables() {
    let mut rng = SplitMix64::new(9);
    let mut tables = Vec::new();
    for &(n, k, m) in &[(30usize, 5usize, 6u64), (12, 3, 2), (100, 4, 10)] {
        let t = Array2::from_shape_fn((n, k), |_| 0u64);
        let mut t = t;
        for mut row in t.rows_mut() {
            // an item's true category gets extra weight, so agreement is above chance
            let truth = rng.below(k as u64) as usize;
            for _ in 0..m {
                let c = if rng.next_f64() < 0.5 {
                    truth
                } else {
                    rng.below(k as u64) as usize
                };
                row[c] += 1;
            }
        }
        tables.push(t);
    }
    let req: Vec<Value> = tables
        .iter()
        .map(|t| json!(t.outer_iter().map(|r| r.to_vec()).collect::<Vec<_>>()))
        .collect();
    let r = reference(&json!({ "fleiss": req }));
    for (i, t) in tables.iter().enumerate() {
        let f = fleiss_kappa(t.view()).unwrap();
        let s = &r["fleiss"][i];
        same(f.kappa, num(&s["kappa"]), &format!("table {i} κ"));
        same(f.mean_agreement, num(&s["p_bar"]), &format!("table {i} P̄"));
        same(f.expected_agreement, num(&s["p_e"]), &format!("table {i} P̄e"));
        for j in 0..f.n_categories {
            same(
                f.per_category[j],
                num(&s["per_category"][j]),
                &format!("table {i} κ_{j}"),
            );
            same(f.category_proportions[j], num(&s["p"][j]), &format!("table {i} p_{j}"));
        }
    }
}

#[test]
fn bootstrap_intervals_are_seeded_and_bracket_the_estimate() {
    let (a, b) = labels(200, 5, 0.7, 4);
    let x = cohen_kappa_bootstrap(&a, &b, 5, 1000, 0.95, 17).unwrap();
    assert_eq!(x, cohen_kappa_bootstrap(&a, &b, 5, 1000, 0.95, 17).unwrap());
    assert_ne!(x, cohen_kappa_bootstrap(&a, &b, 5, 1000, 0.95, 18).unwrap());
    assert!(x.overall.lower < x.overall.estimate && x.overall.estimate < x.overall.upper);
    assert_eq!(
        (x.overall.n_boot, x.overall.n_units, x.overall.level),
        (1000, 200, 0.95)
    );
    for ci in &x.per_category {
        assert!(ci.lower <= ci.estimate && ci.estimate <= ci.upper, "{ci:?}");
    }
    let t = ndarray::array![[3u64, 0, 1], [0, 4, 0], [1, 1, 2], [4, 0, 0], [0, 2, 2], [1, 3, 0]];
    let f = fleiss_kappa_bootstrap(t.view(), 1000, 0.9, 5).unwrap();
    assert_eq!(f, fleiss_kappa_bootstrap(t.view(), 1000, 0.9, 5).unwrap());
    assert!(f.ci.lower <= f.ci.estimate && f.ci.estimate <= f.ci.upper);
    assert_eq!(f.ci.n_units, 6);
}

#[test]
fn soft_labels_compared_through_their_argmax() {
    // an LLM's confidences vs a human's hard labels
    let soft = ndarray::array![[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0], [0.0, 0.9, 0.1]];
    let llm = hard_labels(soft.view()).unwrap();
    assert_eq!(llm, vec![0, 2, 0, 1]);
    let (k, _, _) = cohen_kappa(&llm, &[0, 2, 1, 1], 3).unwrap();
    assert_eq!(k.observed_agreement, 0.75);
}
