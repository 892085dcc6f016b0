//! `cortexflow export`: a run's tables as CSV, TSV, Arrow IPC and Parquet files, read back by
//! polars and compared with the Parquet tables they came from: every value equal (floats exactly:
//! the text formats print the shortest round-tripping digits), words holding commas and quotes
//! intact, missing values as `NA`; an unknown table is an error that lists the run's tables and
//! writes nothing.

use crate::support::{bin, run_python};

#[test]
fn exported_tables_read_back_in_polars_equal_the_parquet_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("story.txt");
    // words with a comma, quotes and a tab-free apostrophe: the text formats must quote them
    std::fs::write(
        &text,
        "Alice, \"beginning\" to get very tired of sitting by her sister's side.\n",
    )
    .unwrap();
    let run = tmp.path().join("run");
    let out = bin()
        .args([
            "extract",
            text.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--layers",
            "3",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    for format in ["csv", "tsv", "arrow", "parquet"] {
        let out = bin()
            .args(["export", run.to_str().unwrap(), "--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("words") && stdout.contains("activations"), "{stdout}");
    }
    let report = run_python(
        r#"
import sys, os, polars as pl
run = sys.argv[1]
checked = []
for name in ["words", "activations"]:
    ref = pl.read_parquet(f"{run}/{name}.parquet")
    ipc = pl.read_ipc(f"{run}/export-arrow/{name}.arrow")
    assert ipc.equals(ref), f"{name}: arrow export differs"
    pq = pl.read_parquet(f"{run}/export-parquet/{name}.parquet")
    assert pq.equals(ref), f"{name}: parquet export differs"
    for fmt, sep in [("csv", ","), ("tsv", "\t")]:
        txt = pl.read_csv(f"{run}/export-{fmt}/{name}.{fmt}", separator=sep, null_values=["NA"],
                          infer_schema_length=None)
        assert txt.columns == ref.columns, (fmt, txt.columns, ref.columns)
        assert txt.height == ref.height
        for c in ref.columns:
            r = ref[c]
            if isinstance(r.dtype, (pl.List, pl.Array)):
                # one field "[v1, v2, …]" whose numbers are the vector's
                first = pl.Series([float(v) for v in txt[c][0].strip("[]").split(",")]).cast(r.dtype.inner).to_list()
                assert first == r[0].to_list(), (fmt, c)
            elif r.dtype.is_float():
                # exact at the column's own precision (an f32 prints f32's shortest digits)
                a, b = txt[c].cast(r.dtype).to_list(), r.to_list()
                assert a == b, (fmt, c, [(x, y) for x, y in zip(a, b) if x != y][:3])
            else:
                assert txt[c].cast(pl.Utf8).to_list() == r.cast(pl.Utf8).to_list(), (fmt, c)
        checked.append(f"{name}.{fmt}")
words = pl.read_csv(f"{run}/export-csv/words.csv", null_values=["NA"])
print(" ".join(checked), "|", words["word"].to_list()[:2], "| nulls:", words.null_count().sum_horizontal()[0])
"#,
        &[run.to_str().unwrap()],
    );
    println!("{report}");
    assert!(
        report.contains("words.csv") && report.contains("activations.tsv"),
        "{report}"
    );
    assert!(report.contains(r#"'Alice,', '"beginning"'"#), "{report}");

    // an unknown table: the error lists the run's tables, and nothing is written
    let dest = tmp.path().join("none");
    let out = bin()
        .args([
            "export",
            run.to_str().unwrap(),
            "--table",
            "summary",
            "--out",
            dest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no table `summary`") && err.contains("activations, words"),
        "{err}"
    );
    assert!(!dest.exists(), "a failed export wrote {}", dest.display());
    // a folder without tables, and an unknown format
    let out = bin()
        .args(["export", tmp.path().join("nowhere").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
    let out = bin()
        .args(["export", run.to_str().unwrap(), "--format", "xlsx"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown export format `xlsx`"));
}
