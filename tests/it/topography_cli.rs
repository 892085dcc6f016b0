//! `cortexflow topography` end to end: the paper's Table 16 prediction with a made-up observed
//! matrix, p-values and subjects, written as TSVs; the Parquet table read back with pyarrow must
//! equal the library's report on the same inputs; bad cells are errors naming file, line and
//! column.

use crate::support;

use std::path::Path;

use ndarray::{Array2, Array3};
use serde_json::Value;

use cortexflow::stats::SplitMix64;
use cortexflow::topography::{topography_report, StatisticRow, TopographySettings};

const ROWS: [&str; 5] = ["Concrete", "Event", "Affect", "Social", "Spatial"];
const COLS: [&str; 5] = ["PT", "AT", "IF", "AG", "dmPFC"];

fn observed() -> Array2<f64> {
    ndarray::array![
        [0.142, 0.081, 0.090, 0.131, 0.077],
        [0.128, 0.085, 0.137, 0.094, 0.083],
        [0.088, 0.126, 0.079, 0.092, 0.119],
        [0.091, 0.118, 0.124, 0.087, 0.102],
        [0.133, 0.080, 0.086, 0.140, 0.095]
    ]
}

/// 7 cells survive BH at q 0.05 (all p ≤ 0.0031; every other p ≥ 0.09 > 25/25 · 0.05 …), 6 of
/// them predicted, as the paper's "6 of 7 in 10 predicted, N = 25".
fn p_values() -> Array2<f64> {
    ndarray::array![
        [0.0004, 0.61, 0.44, 0.0011, 0.83],
        [0.0023, 0.52, 0.0031, 0.27, 0.71],
        [0.35, 0.0017, 0.93, 0.48, 0.09],
        [0.58, 0.21, 0.14, 0.66, 0.21],
        [0.18, 0.77, 0.39, 0.0009, 0.0019]
    ]
}

fn subjects(n: usize) -> Array3<f64> {
    let obs = observed();
    let mut rng = SplitMix64::new(8);
    Array3::from_shape_fn((n, 5, 5), |(_, i, j)| obs[[i, j]] + 0.02 * rng.normal())
}

fn write_matrix(path: &Path, m: &Array2<f64>, rows: &[usize]) {
    let mut s = format!("subcategory\t{}\n", COLS.join("\t"));
    for &i in rows {
        let cells: Vec<String> = m.row(i).iter().map(|v| format!("{v}")).collect();
        s += &format!("{}\t{}\n", ROWS[i], cells.join("\t"));
    }
    std::fs::write(path, s).unwrap();
}

fn write_subjects(path: &Path, d: &Array3<f64>) {
    let mut s = String::from("subject\tsubcategory\tregion\tvalue\n");
    for ((k, i, j), v) in d.indexed_iter() {
        s += &format!("sub-{k:02}\t{}\t{}\t{v:?}\n", ROWS[i], COLS[j]);
    }
    std::fs::write(path, s).unwrap();
}

/// Reads topography_tests.parquet with pyarrow; non-finite floats come back as strings.
fn read_back(path: &Path) -> Vec<Value> {
    let code = r#"
import json, math, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
assert t.schema.metadata[b"cortexflow.schema"] == b"topography_tests"
def enc(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
print(json.dumps([{k: enc(v) for k, v in row.items()} for row in t.to_pylist()]))
"#;
    serde_json::from_str(&support::run_python(code, &[path.to_str().unwrap()])).unwrap()
}

fn f(v: &Value) -> Option<f64> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.parse().unwrap()),
        v => Some(v.as_f64().unwrap()),
    }
}

fn same_f64(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
        (None, None) => true,
        _ => false,
    }
}

fn assert_row_equal(ours: &StatisticRow, file: &Value) {
    let what = &ours.statistic;
    assert_eq!(file["statistic"].as_str(), Some(what.as_str()));
    assert!(same_f64(Some(ours.value), f(&file["value"])), "{what} value");
    assert!(same_f64(ours.p_value, f(&file["p_value"])), "{what} p");
    assert!(same_f64(ours.ci_lower, f(&file["ci_lower"])), "{what} ci_lower");
    assert!(same_f64(ours.ci_upper, f(&file["ci_upper"])), "{what} ci_upper");
    assert!(same_f64(ours.df1, f(&file["df1"])), "{what} df1");
    assert!(same_f64(ours.df2, f(&file["df2"])), "{what} df2");
    assert_eq!(ours.n, file["n"].as_u64(), "{what} n");
    assert_eq!(ours.n_perm, file["n_perm"].as_u64(), "{what} n_perm");
    assert_eq!(ours.unit.as_deref(), file["unit"].as_str(), "{what} unit");
    assert_eq!(
        ours.alternative.as_deref(),
        file["alternative"].as_str(),
        "{what} alternative"
    );
    assert_eq!(ours.tie_rule.as_deref(), file["tie_rule"].as_str(), "{what} tie_rule");
    assert_eq!(ours.note.as_deref(), file["note"].as_str(), "{what} note");
}

#[test]
fn table16_run_writes_the_library_values_to_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let subj = subjects(12);
    write_matrix(&d.join("observed.tsv"), &observed(), &[0, 1, 2, 3, 4]);
    // the prediction's rows in another order: reordered by label
    write_matrix(&d.join("predicted.tsv"), &support::table16(), &[4, 2, 0, 1, 3]);
    write_matrix(&d.join("p.tsv"), &p_values(), &[0, 1, 2, 3, 4]);
    write_subjects(&d.join("subjects.tsv"), &subj);
    let out = support::bin()
        .args(["topography", "--observed"])
        .arg(d.join("observed.tsv"))
        .arg("--predicted")
        .arg(d.join("predicted.tsv"))
        .arg("--p-values")
        .arg(d.join("p.tsv"))
        .arg("--subjects")
        .arg(d.join("subjects.tsv"))
        .args(["--permutations", "2000", "--boot", "500", "--seed", "3", "--out"])
        .arg(d.join("out"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{stdout}");
    assert!(stdout.contains("reordered by label"), "{stdout}");
    assert!(stdout.contains("N = 25, K = 10, n = 7, k = 6"), "{stdout}");
    assert!(stdout.contains("2000 permutations") && stdout.contains("alternative greater"));
    assert!(stdout.contains("df = (16, 176)"), "{stdout}");

    let settings = TopographySettings {
        n_perm: 2000,
        n_boot: 500,
        seed: 3,
        ..Default::default()
    };
    // the subjects file goes through text with `{:?}` (shortest round-trip), so values are exact
    let lib = topography_report(
        observed().view(),
        support::table16().view(),
        Some(p_values().view()),
        Some(subj.view()),
        &settings,
    )
    .unwrap();
    let ours = lib.rows();
    let file = read_back(&d.join("out/topography_tests.parquet"));
    assert_eq!(ours.len(), file.len());
    let names: Vec<&str> = ours.iter().map(|r| r.statistic.as_str()).collect();
    assert_eq!(
        names,
        [
            "spearman_rho",
            "spearman_rho_subjects",
            "pearson_r",
            "spearman_rho_double_centred",
            "pearson_r_double_centred",
            "interaction_f",
            "fdr_significant_cells",
            "hypergeometric_overlap",
            "fisher_odds_ratio",
            "fisher_exact_two_sided"
        ]
    );
    for (o, f) in ours.iter().zip(&file) {
        assert_row_equal(o, f);
    }
    let o = lib.overlap.unwrap();
    assert_eq!((o.n_cells, o.n_predicted, o.n_significant, o.n_overlap), (25, 10, 7, 6));
    assert_eq!(o.fisher.odds_ratio, 21.0);
    assert!(
        lib.spearman.value > 0.6 && lib.spearman.p_value < 0.01,
        "{:?}",
        lib.spearman
    );
}

fn run_expecting_error(d: &Path, observed: &str, predicted: &str) -> String {
    std::fs::write(d.join("o.tsv"), observed).unwrap();
    std::fs::write(d.join("p.tsv"), predicted).unwrap();
    let out = support::bin()
        .args(["topography", "--observed"])
        .arg(d.join("o.tsv"))
        .arg("--predicted")
        .arg(d.join("p.tsv"))
        .args(["--permutations", "10", "--boot", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_cells_are_errors_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = "\tPT\tAT\tIF\nConcrete\t0.1\t0.2\t0.3\nEvent\t0.2\t0.1\t0.3\n";
    let pred = "\tPT\tAT\tIF\nConcrete\t1\t0\t0\nEvent\t0\t1\t0\n";
    let e = run_expecting_error(d, "\tPT\tAT\tIF\nConcrete\t0.1\t0.2\t0.3\nEvent\t0.2\t0.1\tabc\n", pred);
    assert!(
        e.contains("o.tsv") && e.contains("line 3, column 4 (region `IF`)") && e.contains("found `abc`"),
        "{e}"
    );
    let e = run_expecting_error(d, good, "\tPT\tAT\tIF\nConcrete\t1\t0\t0\nEvent\t0\t0.5\t0\n");
    assert!(
        e.contains("p.tsv") && e.contains("line 3, column 3 (region `AT`)") && e.contains("expected 0 or 1"),
        "{e}"
    );
    let e = run_expecting_error(d, good, "\tPT\tAT\tIF\nConcrete\t1\t0\t0\nSocial\t0\t1\t0\n");
    assert!(e.contains("missing [\"Event\"]") && e.contains("[\"Social\"]"), "{e}");
    let e = run_expecting_error(d, "\tPT\tAT\tIF\nConcrete\t0.1\t0.2\n", pred);
    assert!(
        e.contains("line 2") && e.contains("expected a subcategory name and 3 values"),
        "{e}"
    );
}
