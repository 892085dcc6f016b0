//! `cortexflow extract` and `cortexflow model import` end to end: the real Alice TextGrid through
//! the real model into Parquet read back by pyarrow and polars, and bad input that must fail with a
//! clear message and write nothing.

use crate::support;

use std::path::Path;

use cortexflow::store::read_parquet;

/// Word intervals of the Alice TextGrid, scanned independently of the stimulus module:
/// (xmin, text) of every interval whose label is not "sp" or empty.
fn scan_alice() -> Vec<(f64, String)> {
    let text = std::fs::read_to_string(support::alice_textgrid()).unwrap();
    let mut out = Vec::new();
    let mut xmin = None;
    let mut in_intervals = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("intervals [") {
            in_intervals = true;
        } else if in_intervals && line.starts_with("xmin = ") {
            xmin = Some(line[7..].parse::<f64>().unwrap());
        } else if in_intervals && line.starts_with("text = ") {
            let label = line[7..].trim_matches('"').to_string();
            if label != "sp" && !label.trim().is_empty() {
                out.push((xmin.unwrap(), label));
            }
        }
    }
    out
}

#[test]
fn alice_extracts_one_row_per_spoken_word_with_onsets_and_reads_back_in_pyarrow_and_polars() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("alice");
    let out = support::bin()
        .args(["extract"])
        .arg(support::alice_textgrid())
        .args(["--layers", "0,15,30", "--out"])
        .arg(&out_dir)
        .args(["--threads", "2", "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "extract failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let expected = scan_alice();
    let (_, batches, meta) = read_parquet(&out_dir.join("words.parquet")).unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, expected.len(), "one row per spoken word");
    assert_eq!(meta.get("cortexflow.pooling").map(String::as_str), Some("last"));
    let onsets: Vec<f64> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("onset_s").unwrap();
            let c = c.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
            c.iter().map(|v| v.unwrap()).collect::<Vec<_>>()
        })
        .collect();
    for (i, ((t, label), o)) in expected.iter().zip(&onsets).enumerate() {
        assert_eq!(t, o, "word {i} `{label}`: onset changed");
    }

    // pyarrow + polars read both tables with the documented schemas.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (table, n_rows) in [("words", expected.len()), ("activations", 3 * expected.len())] {
        let file = out_dir.join(format!("{table}.parquet"));
        let schema = root.join(format!("data-schemas/{table}.json"));
        let status = std::process::Command::new(support::python())
            .arg(root.join("scripts/check_parquet.py"))
            .arg(&file)
            .arg(&schema)
            .args(["--list-size", "d_model=576", "--rows", &n_rows.to_string()])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{table}: {}{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
    }
    // The first word is "Alice" at 20.0589… s, its vector at layer 15 is finite and non-zero.
    let check = support::run_python(
        "import sys, polars as pl\n\
         w = pl.read_parquet(sys.argv[1]); a = pl.read_parquet(sys.argv[2])\n\
         print(w['word'][0], w['onset_s'][0], a.filter(pl.col('layer') == 15)['activation'][0].to_list()[:1] != [0.0])",
        &[
            out_dir.join("words.parquet").to_str().unwrap(),
            out_dir.join("activations.parquet").to_str().unwrap(),
        ],
    );
    assert_eq!(check.trim(), "Alice 20.05891632653599 True");
}

fn assert_fails_and_writes_nothing(args: &[&str], out_dir: &Path, needle: &str) {
    let out = support::bin().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: message should mention {needle:?}, was: {stderr}"
    );
    assert!(
        !out_dir.exists() || std::fs::read_dir(out_dir).unwrap().next().is_none(),
        "{args:?} wrote into {}",
        out_dir.display()
    );
}

#[test]
fn bad_stories_get_a_clear_error_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let missing = tmp.path().join("nope.TextGrid");
    assert_fails_and_writes_nothing(
        &["extract", missing.to_str().unwrap(), "--out", o],
        &out,
        "nope.TextGrid",
    );

    let malformed = tmp.path().join("bad.TextGrid");
    std::fs::write(
        &malformed,
        "File type = \"ooTextFile\"\nObject class = \"TextGrid\"\n\nxmin = 0\nxmax = 2\ntiers? <exists>\nsize = 1\nitem []:\n    item [1]:\n        class = \"IntervalTier\"\n        name = \"word\"\n        xmin = 0\n        xmax = 2\n        intervals: size = 1\n        intervals [1]:\n            xmin = zero\n            xmax = 1\n            text = \"hello\"\n",
    )
    .unwrap();
    assert_fails_and_writes_nothing(&["extract", malformed.to_str().unwrap(), "--out", o], &out, "line 16");

    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "  \n\n").unwrap();
    assert_fails_and_writes_nothing(&["extract", empty.to_str().unwrap(), "--out", o], &out, "empty.txt");

    let story = tmp.path().join("story.txt");
    std::fs::write(&story, "Alice was beginning to get very tired").unwrap();
    assert_fails_and_writes_nothing(
        &["extract", story.to_str().unwrap(), "--layers", "3,31", "--out", o],
        &out,
        "layer 31",
    );
}

#[test]
fn corrupt_or_truncated_gguf_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let o = out.to_str().unwrap();
    let garbage = tmp.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model at all").unwrap();
    assert_fails_and_writes_nothing(
        &["model", "import", garbage.to_str().unwrap(), "--out", o],
        &out,
        "not a GGUF file",
    );

    let real = cortexflow::paths::default_gguf().expect("make setup");
    let bytes = std::fs::read(&real).unwrap();
    for cut in [3_000_000usize, bytes.len() - 1000] {
        let truncated = tmp.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        assert_fails_and_writes_nothing(
            &["model", "import", truncated.to_str().unwrap(), "--out", o],
            &out,
            "truncated",
        );
    }
}

/// `extract --no-surprisal`: the built-in model cut after the deepest requested layer, without its
/// LM head, gives the very vectors of the whole model, and the words table says surprisal and
/// entropy are missing.
#[test]
fn no_surprisal_runs_the_model_cut_after_the_deepest_layer_and_gives_the_same_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    // the first 300 spoken words of Alice as plain text: two cached calls
    let words: Vec<String> = scan_alice().into_iter().take(300).map(|(_, w)| w).collect();
    let story = tmp.path().join("alice300.txt");
    std::fs::write(&story, words.join(" ")).unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let o = support::bin()
            .arg("extract")
            .arg(&story)
            .args(["--layers", "0,3", "--threads", "2", "--quiet", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "extract failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let (full, cut) = (tmp.path().join("full"), tmp.path().join("cut"));
    run(&full, &[]);
    run(&cut, &["--no-surprisal"]);

    // the graph that ran: 3 blocks of 30, no head
    let dir = cortexflow::lm::builtin_model_dir(false, Some(3));
    let m = cortexflow::lm::Manifest::load(&dir).expect("the cut model was imported into the cache");
    assert_eq!((m.n_layers, m.truncated_from), (3, Some(30)));
    assert!(m.logits.is_none() && m.next_token_logprob.is_none());

    let vectors = |d: &Path| -> Vec<f32> {
        let (_, batches, _) = read_parquet(&d.join("activations.parquet")).unwrap();
        batches
            .iter()
            .flat_map(|b| {
                let c = b.column_by_name("activation").unwrap();
                let c = c.as_any().downcast_ref::<arrow::array::FixedSizeListArray>().unwrap();
                let v = c
                    .values()
                    .as_any()
                    .downcast_ref::<arrow::array::Float32Array>()
                    .unwrap();
                v.values().to_vec()
            })
            .collect()
    };
    let (a, b) = (vectors(&full), vectors(&cut));
    assert_eq!(a.len(), 2 * 300 * 576);
    assert!(a == b, "the cut model's vectors differ from the whole model's");

    let nulls = |d: &Path, col: &str| -> (usize, usize) {
        let (_, batches, _) = read_parquet(&d.join("words.parquet")).unwrap();
        let c: Vec<_> = batches.iter().map(|b| b.column_by_name(col).unwrap().clone()).collect();
        (c.iter().map(|c| c.null_count()).sum(), c.iter().map(|c| c.len()).sum())
    };
    for col in ["surprisal_bits", "entropy_bits"] {
        assert_eq!(nulls(&cut, col), (300, 300), "{col} without surprisal");
        // the whole model scores every word after the first
        assert!(nulls(&full, col).0 <= 1, "{col} with surprisal");
    }
}
