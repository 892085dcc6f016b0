//! The Alice analysis end to end on the real data (a small configuration: 2 layers, 4 subjects,
//! a short SAE run): the incremental property of the dataflow, worker-count invariance, the
//! Parquet outputs against their schemas in pyarrow and polars, and bad input.

use crate::support;

use std::path::{Path, PathBuf};

use cortexflow::config::Plan;
use cortexflow::dataflow::{self, Epoch};
use cortexflow::outputs::write;
use cortexflow::pipeline;

fn small_plan(store: &Path, output: &Path) -> Plan {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let mut plan = Plan::load(&src).expect("the small Alice pipeline validates");
    plan.store = store.to_path_buf();
    plan.output = output.to_path_buf();
    plan
}

/// Adds the last subject at a later timestamp (2 workers) and compares with a from-scratch run
/// on all subjects (1 worker, its own store): exactly the new subject's fits are computed (the
/// others are read back), and every table is byte-identical.
#[test]
fn adding_a_subject_recomputes_only_its_fits_and_matches_a_from_scratch_run_on_any_worker_count() {
    let tmp = tempfile::tempdir().unwrap();

    // incremental, 2 workers, LM outputs from earlier tests (the from-scratch store below computes
    // its own: the byte comparison of the tables also checks the LM stage's determinism)
    let _lm = support::seed_lm(&tmp.path().join("store_inc"));
    let plan = small_plan(&tmp.path().join("store_inc"), &tmp.path().join("out_inc"));
    let n_layers = plan.layers.len();
    let n_sets = plan.file.encoding.feature_sets.len();
    let ctx = pipeline::context(plan).unwrap();
    let inputs = pipeline::prepare_inputs(&ctx).unwrap();
    assert!(inputs.responses.len() >= 3);
    let mut first = pipeline::single_epoch(&inputs);
    let last = first.responses.pop().unwrap();
    let second = Epoch {
        responses: vec![last.clone()],
        ..Default::default()
    };
    let results = dataflow::run(ctx.clone(), vec![first, second], 2).unwrap();
    let (e0, e1) = (&results[0], &results[1]);
    let fits0 = e0.stats.computed.get("fit").copied().unwrap_or(0);
    let fits1 = e1.stats.computed.get("fit").copied().unwrap_or(0);
    let n_before = inputs.responses.len() - 1;
    assert_eq!(fits0, n_before * n_layers * n_sets, "epoch 0 fits every subject once");
    assert_eq!(fits1 - fits0, n_layers * n_sets, "epoch 1 fits exactly the new subject");
    // fits are computed per design over its subjects (one set of decompositions for all): the
    // other subjects' fits of each design are read back from the store, never recomputed
    let reused0 = e0.stats.reused.get("fit").copied().unwrap_or(0);
    let reused1 = e1.stats.reused.get("fit").copied().unwrap_or(0);
    assert_eq!(
        reused1 - reused0,
        n_before * n_layers * n_sets,
        "the other subjects' fits are looked up once each, not recomputed"
    );
    assert_eq!(
        e0.stats.computed.get("recon"),
        Some(&n_layers),
        "one SAE reconstruction per layer (feature set sae-recon)"
    );
    for stage in ["lm", "sae", "codes", "recon", "design"] {
        assert_eq!(
            e1.stats.computed.get(stage),
            e0.stats.computed.get(stage),
            "stage {stage} must not rerun"
        );
    }
    assert_eq!(
        e1.stats.computed["summary"] - e0.stats.computed["summary"],
        n_layers * n_sets
    );
    let new_subject = &last.0 .1 .0;
    let new_fits: Vec<_> = e1.snapshot.fits.difference(&e0.snapshot.fits).collect();
    assert_eq!(new_fits.len(), n_layers * n_sets);
    assert!(new_fits.iter().all(|(k, _)| &k.subject == new_subject));
    let inc_files = write::write_outputs(&ctx, &e1.snapshot, &ctx.plan.output).unwrap();

    // from scratch, 1 worker, separate store
    let plan = small_plan(&tmp.path().join("store_scratch"), &tmp.path().join("out_scratch"));
    let report = pipeline::run(plan, &pipeline::RunOptions { workers: 1 }).unwrap();
    assert_eq!(report.result.snapshot.fits.len(), e1.snapshot.fits.len());
    assert_eq!(
        report.result.snapshot, e1.snapshot,
        "same artifact ids: same inputs, config and code"
    );
    for (a, b) in inc_files.iter().zip(&report.files) {
        assert_eq!(a.file_name(), b.file_name());
        if a.extension().is_some_and(|e| e == "parquet") {
            assert!(
                std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
                "{} differs between runs",
                a.display()
            );
        }
    }
}

#[test]
fn the_run_tables_read_back_in_pyarrow_and_polars_with_the_documented_schemas() {
    let tmp = tempfile::tempdir().unwrap();
    let _lm = support::seed_lm(&tmp.path().join("store"));
    let plan = small_plan(&tmp.path().join("store"), &tmp.path().join("out"));
    let n_subjects = plan.subjects.len();
    let n_rois = plan.fmri().rois.len();
    let n_layers = plan.layers.len();
    let n_sets = plan.file.encoding.feature_sets.len();
    let report = pipeline::run(plan, &pipeline::RunOptions { workers: 1 }).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let expected_rows = [
        ("fits", n_subjects * n_layers * n_sets * n_rois),
        ("summary", n_layers * n_sets * (n_rois + 1)),
        ("sae_quality", n_layers),
    ];
    for (table, rows) in expected_rows {
        let out = std::process::Command::new(support::python())
            .arg(root.join("scripts/check_parquet.py"))
            .arg(report.output.join(format!("{table}.parquet")))
            .arg(root.join(format!("data-schemas/{table}.json")))
            .args(["--rows", &rows.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{table}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The examples a user starts from: the report's main figure in Python (polars + matplotlib,
    // from the Parquet table) and in base R (from the CSV export).
    let png_py = tmp.path().join("r_by_layer_py.png");
    let o = std::process::Command::new(support::python())
        .arg(root.join("examples/r_by_layer.py"))
        .arg(&report.output)
        .arg(&png_py)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "examples/r_by_layer.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("sae"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = support::bin()
        .args([
            "export",
            report.output.to_str().unwrap(),
            "--format",
            "csv",
            "--table",
            "summary",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "export: {}", String::from_utf8_lossy(&o.stderr));
    let png_r = tmp.path().join("r_by_layer_R.png");
    let o = std::process::Command::new(std::env::var("CORTEXFLOW_RSCRIPT").unwrap_or_else(|_| "Rscript".into()))
        .arg(root.join("examples/r_by_layer.R"))
        .arg(report.output.join("export-csv"))
        .arg(&png_r)
        .output()
        .expect("Rscript runs (run `make setup`)");
    assert!(
        o.status.success(),
        "examples/r_by_layer.R: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for png in [&png_py, &png_r] {
        let head = std::fs::read(png).unwrap();
        assert!(
            head.len() > 5000 && head.starts_with(b"\x89PNG"),
            "{} is not a drawn PNG",
            png.display()
        );
    }
    // Held-out r is a correlation; the SAE reconstructs its inputs better than chance.
    let check = support::run_python(
        "import sys, polars as pl\n\
         f = pl.read_parquet(sys.argv[1]); q = pl.read_parquet(sys.argv[2])\n\
         r = f.filter(~pl.col('excluded'))['r']\n\
         print(bool(r.is_between(-1, 1).all()), bool((q['r2'] > 0.3).all()), bool((f['alpha'].drop_nulls() >= 1).all()))\n\
         k = f.filter(~pl.col('excluded'))\n\
         print(bool(k['p_value'].is_between(1/1001 - 1e-12, 1).all()), bool((k['q_value'] >= k['p_value'] - 1e-15).all()),\n\
               bool(k['r2'].le(1).all()))\n\
         s = pl.read_parquet(sys.argv[3])\n\
         c = s.filter(pl.col('roi') != 'all')['ceiling_r']\n\
         print(c.null_count() == 0, bool(c.is_between(0, 1).all()))",
        &[
            report.output.join("fits.parquet").to_str().unwrap(),
            report.output.join("sae_quality.parquet").to_str().unwrap(),
            report.output.join("summary.parquet").to_str().unwrap(),
        ],
    );
    assert_eq!(check.trim(), "True True True\nTrue True True\nTrue True");
    let png = std::fs::read(report.output.join("r_by_layer.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // 40 training steps leave both SAEs under the default held-out R² floor (0.8): the run
    // flags them (report and closing message); a floor of 0 flags neither and retrains nothing.
    let r2: Vec<f64> = support::run_python(
        "import sys, polars as pl\nprint(*pl.read_parquet(sys.argv[1]).sort('layer')['r2'].to_list())",
        &[report.output.join("sae_quality.parquet").to_str().unwrap()],
    )
    .split_whitespace()
    .map(|v| v.parse().unwrap())
    .collect();
    assert!(r2.iter().all(|&v| v < 0.8), "{r2:?}");
    let flagged: Vec<(usize, f64)> = report.poor_saes.iter().map(|(_, l, v)| (*l, *v)).collect();
    assert_eq!(flagged, [(3, r2[0]), (9, r2[1])]);
    let md = std::fs::read_to_string(report.output.join("report.md")).unwrap();
    assert!(
        md.contains("**Warning:** the SAEs of en layer 3 (R² ") && md.contains("reconstruct less than 0.8"),
        "{md}"
    );
    let mut plan = small_plan(&tmp.path().join("store"), &tmp.path().join("out"));
    plan.file.sae.min_r2 = 0.0;
    let again = pipeline::run(plan, &pipeline::RunOptions { workers: 1 }).unwrap();
    assert!(again.poor_saes.is_empty());
    assert_eq!(
        again.result.stats.computed.get("sae"),
        None,
        "a new floor retrains nothing"
    );
    let md = std::fs::read_to_string(again.output.join("report.md")).unwrap();
    assert!(!md.contains("**Warning:** the SAE"), "{md}");
}

/// The Huth-lab alignment end to end: Lanczos to TR midpoints + FIR delays 1–4 gives designs with
/// 4 × d_model columns (wide: the kernel path), finite held-out r for every kept ROI, and a report
/// that says which alignment was used. Raw features only (no SAE training).
#[test]
fn the_lanczos_fir_alignment_runs_end_to_end_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let _lm = support::seed_lm(&tmp.path().join("store"));
    let mut plan = small_plan(&tmp.path().join("store"), &tmp.path().join("out"));
    plan.file.encoding.alignment = "lanczos-fir".into();
    plan.file.encoding.feature_sets = vec![cortexflow::features::FeatureSet::Raw];
    let d_model = plan.d_model;
    let report = pipeline::run(plan, &pipeline::RunOptions { workers: 2 }).unwrap();
    let fits = &report.result.snapshot.fits;
    assert!(!fits.is_empty());
    let check = support::run_python(
        "import sys, polars as pl\n\
         f = pl.read_parquet(sys.argv[1])\n\
         k = f.filter(~pl.col('excluded'))\n\
         print(k['n_features'].unique().to_list(), bool(k['r'].is_between(-1, 1).all()), k.height > 0)",
        &[report.output.join("fits.parquet").to_str().unwrap()],
    );
    assert_eq!(check.trim(), format!("[{}] True True", 4 * d_model));
    let md = std::fs::read_to_string(report.output.join("report.md")).unwrap();
    assert!(
        md.contains("Lanczos downsampling (window 3)") && md.contains("[1, 2, 3, 4]"),
        "{md}"
    );
}

/// A data root whose Alice stimulus is the real one and whose subject files are copies, one of
/// them damaged by `damage`.
fn damaged_data_root(tmp: &Path, damage: impl Fn(&str) -> String) -> PathBuf {
    let data = support::data_root().canonicalize().unwrap();
    let real = data.join("alice_brennan2016");
    let root = tmp.join("data");
    let alice = root.join("alice_brennan2016");
    std::fs::create_dir_all(alice.join("alice_data_shared/6mm")).unwrap();
    std::os::unix::fs::symlink(real.join("alice_stim_shared"), alice.join("alice_stim_shared")).unwrap();
    for s in ["s18", "s22"] {
        let f = format!("alice_data_shared/6mm/{s}-timecourses.txt");
        let text = std::fs::read_to_string(real.join(&f)).unwrap();
        let text = if s == "s22" { damage(&text) } else { text };
        std::fs::write(alice.join(&f), text).unwrap();
    }
    std::os::unix::fs::symlink(data.join("corpora_text"), root.join("corpora_text")).unwrap();
    root
}

fn run_with_data_root(tmp: &Path, root: &Path) -> std::process::Output {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let text = std::fs::read_to_string(src).unwrap();
    let text = text.replace(
        "name = \"alice-small\"",
        &format!("name = \"bad\"\ndata-root = {:?}", root.to_str().unwrap()),
    );
    let text = text.replace(
        "output = \"runs/alice-small\"",
        &format!("output = {:?}", tmp.join("out").to_str().unwrap()),
    );
    let text = text.replace("only-subjects = [\"s18\", \"s22\", \"s23\", \"s24\"]", "");
    let p = tmp.join("bad.toml");
    std::fs::write(&p, text).unwrap();
    support::bin().arg("run").arg(&p).output().unwrap()
}

#[test]
fn a_subject_file_with_a_bad_cell_or_missing_rows_is_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    // a non-numeric cell in row 7, column 3 (LPTL)
    let t1 = tmp.path().join("cell");
    std::fs::create_dir_all(&t1).unwrap();
    let root = damaged_data_root(&t1, |text| {
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let mut cells: Vec<String> = lines[6].split_whitespace().map(String::from).collect();
        cells[2] = "n/a".into();
        lines[6] = cells.join(" ");
        lines.join("\n") + "\n"
    });
    let out = run_with_data_root(&t1, &root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("s22-timecourses.txt") && err.contains("row 7") && err.contains("LPTL"),
        "{err}"
    );
    assert!(!t1.join("out").exists(), "nothing may be written");

    // 10 rows missing
    let t2 = tmp.path().join("rows");
    std::fs::create_dir_all(&t2).unwrap();
    let root = damaged_data_root(&t2, |text| text.lines().take(352).collect::<Vec<_>>().join("\n") + "\n");
    let out = run_with_data_root(&t2, &root);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("s22-timecourses.txt") && err.contains("362") && err.contains("352"),
        "{err}"
    );
    assert!(!t2.join("out").exists(), "nothing may be written");
}

#[test]
fn unknown_keys_and_out_of_range_layers_are_rejected_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let text = std::fs::read_to_string(src).unwrap();
    let p = tmp.path().join("p.toml");
    std::fs::write(&p, text.replace("pooling = \"last\"", "pooling = \"last\"\nwindw = 3")).unwrap();
    let e = Plan::load(&p).unwrap_err().to_string();
    assert!(e.contains("windw") && e.contains("line"), "{e}");
    std::fs::write(&p, text.replace("layers = [3, 9]", "layers = [3, 31]")).unwrap();
    let e = Plan::load(&p).unwrap_err().to_string();
    assert!(e.contains("layer 31"), "{e}");
    std::fs::write(&p, text.replace("steps = 40", "steps = 40\nmin-r2 = 1.5")).unwrap();
    let e = Plan::load(&p).unwrap_err().to_string();
    assert!(
        e.contains("sae.min-r2") && e.contains("1.5 is not a held-out R² floor"),
        "{e}"
    );
}

/// The shipped Le Petit Prince pipelines validate: nine runs per language, every word of the
/// tables (less the empty halves of split contractions) with an onset inside its run's TR grid.
#[test]
fn the_three_language_pipelines_read_nine_runs_each() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (lang, words) in [("en", 15376 - 31), ("fr", 15391 - 135), ("zh", 16009)] {
        let plan = Plan::load(&root.join(format!("pipelines/lpp-{lang}.toml"))).unwrap();
        assert_eq!(plan.stories.len(), 9, "{lang}");
        let total: usize = plan.stories.iter().map(|(_, s)| s.words.len()).sum();
        assert_eq!(total, words, "{lang}");
        for (cfg, story) in &plan.stories {
            assert_eq!(story.language, lang);
            let last = story.words.last().unwrap().onset_s.unwrap();
            assert!(last < cfg.n_trs as f64 * cfg.tr_s, "{}: last onset {last} s", cfg.id);
        }
    }
    // all three in one analysis, on SmolLM2 and on the multilingual Gemma 3
    for (file, n_layers) in [("lpp-all", 30), ("lpp-all-gemma", 18)] {
        let plan = Plan::load(&root.join(format!("pipelines/{file}.toml"))).unwrap();
        assert_eq!(plan.stories.len(), 27, "{file}");
        assert_eq!(plan.languages(), ["en", "fr", "zh"], "{file}");
        assert_eq!(plan.n_layers, n_layers, "{file}");
        assert_eq!(plan.subjects.len(), 0, "{file}: simulated responses only");
        assert!(plan.file.simulate.is_some() && plan.file.sae.per_language, "{file}");
    }
}

/// The three-language pipeline cut to run 1 of each language (layer 9, a short SAE run, 3
/// simulated subjects) against the English-only pipeline cut the same way, in one store:
/// languages do not interfere. The English SAE of the three-language run has the same content id
/// as the English-only one (its inputs are exactly the English words, so it is not retrained: two
/// SAEs are trained, French and Chinese), and every English row of fits, summary and sae_quality
/// is identical, q-values included (FDR families are per language). The cross-language tables
/// have one row per language, read back by polars.
#[test]
fn an_english_only_run_and_a_three_language_run_give_the_same_english_results() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("pipelines/lpp-all.toml")).unwrap();
    let (head, rest) = text.split_once("[[story]]").unwrap();
    let (_, tail) = rest.split_once("\n[simulate]").unwrap();
    let tail = tail.split("\n[taxonomy]").next().unwrap();
    let run1 = |lang: &str| {
        rest.split("[[story]]")
            .find(|s| s.contains(&format!("id = \"lpp-{lang}-run1\"")))
            .map(|s| format!("[[story]]{}", s.split("\n[simulate]").next().unwrap()))
            .unwrap()
    };
    let plan_text = |name: &str, langs: &[&str]| {
        format!(
            "{}{}\n[simulate]{}",
            head.replace("layers = [9, 15, 21]", "layers = [9]")
                .replace("name = \"lpp-all\"", &format!("name = \"{name}\""))
                .replace(
                    "output = \"runs/lpp-all\"",
                    &format!(
                        "output = {:?}\nstore = {:?}",
                        tmp.path().join(name).to_str().unwrap(),
                        tmp.path().join("store").to_str().unwrap()
                    )
                ),
            langs.iter().map(|l| run1(l)).collect::<String>(),
            tail.replace("subjects = 4", "subjects = 3")
                .replace("steps = 2000", "steps = 20")
        )
    };
    let mut outs = Vec::new();
    let mut reports = Vec::new();
    for (name, langs) in [("en-only", vec!["en"]), ("three", vec!["en", "fr", "zh"])] {
        let p = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&p, plan_text(name, &langs)).unwrap();
        let plan = Plan::load(&p).unwrap();
        assert_eq!(plan.languages(), langs);
        outs.push(plan.output.clone());
        reports.push(pipeline::run(plan, &pipeline::RunOptions { workers: 2 }).unwrap());
    }
    let stats = &reports[1].result.stats;
    assert_eq!(stats.computed.get("sae"), Some(&2), "French and Chinese SAEs only");
    assert_eq!(
        reports[1]
            .result
            .snapshot
            .saes
            .iter()
            .find(|(k, _)| k.group == "en")
            .map(|(_, a)| a),
        reports[0].result.snapshot.saes.iter().next().map(|(_, a)| a),
        "the English SAE is the same artifact"
    );
    let saes: Vec<String> = reports[1]
        .result
        .snapshot
        .saes
        .iter()
        .map(|(k, _)| k.group.clone())
        .collect();
    assert_eq!(saes, ["en", "fr", "zh"]);
    let check = support::run_python(
        "import sys, polars as pl\n\
         a, b = sys.argv[1], sys.argv[2]\n\
         for t in ['fits', 'summary', 'sae_quality']:\n\
         \x20   x = pl.read_parquet(f'{a}/{t}.parquet')\n\
         \x20   y = pl.read_parquet(f'{b}/{t}.parquet').filter(pl.col('language') == 'en')\n\
         \x20   print(t, x.height > 0, x['language'].unique().to_list() == ['en'], x.equals(y))\n\
         f = pl.read_parquet(f'{b}/fits.parquet')\n\
         c = f.filter(pl.col('feature_set') == 'controls')\n\
         print(c['n_features'].unique().to_list(), c.height == 3 * 3 * 8, bool(c['r'].is_not_null().all()))\n\
         print(sorted(f.group_by('language').agg(pl.col('n_trs').max())['n_trs'].to_list()),\n\
         \x20     f.select(pl.struct('language', 'subject').n_unique()).item())\n\
         l = pl.read_parquet(f'{b}/languages.parquet')\n\
         print(l['language'].to_list(), l['n_subjects'].to_list(), l['sae_group'].to_list())\n\
         print(l['n_words'].to_list(), bool((l['tokens_per_word'] >= 1).all()))\n\
         p = pl.read_parquet(f'{b}/language_layers.parquet')\n\
         print(p.filter(pl.col('peak')).sort('language', 'feature_set').select('language', 'feature_set', 'layer').rows())",
        &[outs[0].to_str().unwrap(), outs[1].to_str().unwrap()],
    );
    let words: Vec<usize> = ["en", "fr", "zh"]
        .iter()
        .map(|l| {
            let p = tmp.path().join(format!("{l}.toml"));
            std::fs::write(&p, plan_text(l, &[l])).unwrap();
            Plan::load(&p).unwrap().stories[0].1.words.len()
        })
        .collect();
    assert_eq!(words[2], 1753, "Chinese run 1: the annotation's words");
    assert_eq!(
        check.trim(),
        format!(
            "fits True True True\nsummary True True True\nsae_quality True True True\n\
             [3] True True\n\
             [283, 288, 311] 9\n\
             ['en', 'fr', 'zh'] [3, 3, 3] ['en', 'fr', 'zh']\n\
             {words:?} True\n\
             [('en', 'controls', 9), ('en', 'raw', 9), ('en', 'sae', 9), ('fr', 'controls', 9), ('fr', 'raw', 9), \
             ('fr', 'sae', 9), ('zh', 'controls', 9), ('zh', 'raw', 9), ('zh', 'sae', 9)]"
        )
    );
    let md = std::fs::read_to_string(outs[1].join("report.md")).unwrap();
    assert!(md.contains("## Languages") && md.contains("| zh | 1 | 1753 |"), "{md}");
}

/// Prediction-error features need the raw set and a pair of analysed layers Δ apart.
#[test]
fn prediction_error_settings_are_checked_against_the_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let text = std::fs::read_to_string(src).unwrap();
    let p = tmp.path().join("p.toml");
    std::fs::write(&p, format!("{text}\n[taxonomy]\nprediction-error-delta = 4\n")).unwrap();
    let e = Plan::load(&p).unwrap_err().to_string();
    assert!(e.contains("prediction-error-delta") && e.contains("[3, 9]"), "{e}");
    std::fs::write(&p, format!("{text}\n[taxonomy]\nprediction-error-delta = 6\n")).unwrap();
    assert!(Plan::load(&p).is_ok());
}

/// Writes ROI time series into 4-D NIfTI runs with nibabel: `out/atlas.nii.gz`, a 4 × 3 × 2 label
/// volume with ROI j + 1 on voxels 2j and 2j + 1 (file order), and per `(series, run)` pair the run
/// `out/<run>` whose ROI voxels hold the series' columns (a `.npy`, or a text table) and whose
/// other voxels are noise.
fn write_roi_nifti_runs(out: &Path, runs: &[(PathBuf, String)]) {
    let mut args = vec![out.to_str().unwrap().to_string()];
    for (series, run) in runs {
        args.push(series.to_str().unwrap().to_string());
        args.push(run.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    support::run_python(
        r#"
import sys, numpy as np, nibabel as nib
out, pairs = sys.argv[1], sys.argv[2:]
rng = np.random.default_rng(0)
flat = np.zeros(24, np.int16)
for j in range(12):
    flat[[2 * j, 2 * j + 1]] = j + 1          # ROI j + 1 on two voxels (file order)
atlas = flat.reshape((4, 3, 2), order="F")
nib.save(nib.Nifti1Image(atlas, np.eye(4)), f"{out}/atlas.nii.gz")
for src, run in zip(pairs[::2], pairs[1::2]):
    y = np.load(src) if src.endswith(".npy") else np.loadtxt(src)   # (TRs, ROIs)
    vol = rng.normal(size=(4, 3, 2, y.shape[0]))
    for j in range(y.shape[1]):
        vol[atlas == j + 1] = y[:, j]
    nib.save(nib.Nifti1Image(vol, np.eye(4)), f"{out}/{run}")
"#,
        &args,
    );
}

/// `[fmri] format = "nifti"`: the Alice subjects' ROI time courses written by nibabel into 4-D
/// NIfTI runs (each ROI on two voxels of a 4 × 3 × 2 grid, the other voxels noise) with a 3-D
/// label atlas give the same fits and summaries as the text tables; a run with a volume too few,
/// an atlas missing a label and a NIfTI plan without an atlas are refused naming what is wrong.
#[test]
fn nifti_runs_with_an_atlas_give_the_text_tables_results() {
    let tmp = tempfile::tempdir().unwrap();
    let _lm = support::seed_lm(&tmp.path().join("store"));
    let data = support::data_root().canonicalize().unwrap();
    let nii = tmp.path().join("nii");
    std::fs::create_dir_all(&nii).unwrap();
    let series = data.join("alice_brennan2016/alice_data_shared/6mm");
    let runs: Vec<(PathBuf, String)> = ["s18", "s22", "s23", "s24"]
        .iter()
        .map(|s| (series.join(format!("{s}-timecourses.txt")), format!("{s}-bold.nii.gz")))
        .collect();
    write_roi_nifti_runs(&nii, &runs);
    // an atlas in which ROI 4 has no voxel
    support::run_python(
        "import sys, nibabel as nib\n\
         a = nib.load(sys.argv[1]); g = a.get_fdata().astype('int16'); g[g == 4] = 0\n\
         nib.save(nib.Nifti1Image(g, a.affine), sys.argv[2])",
        &[
            nii.join("atlas.nii.gz").to_str().unwrap(),
            nii.join("atlas-gap.nii.gz").to_str().unwrap(),
        ],
    );
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let text = std::fs::read_to_string(src).unwrap();
    let subjects_line = "subjects = \"alice_brennan2016/alice_data_shared/6mm/s*-timecourses.txt\"";
    assert!(text.contains(subjects_line));
    let nifti_plan = |subjects: &str, atlas: Option<&str>| {
        let mut t = text.replace(subjects_line, &format!("subjects = {subjects:?}"));
        if let Some(a) = atlas {
            t = t.replace("[fmri]\n", &format!("[fmri]\nformat = \"nifti\"\natlas = {a:?}\n"));
        } else {
            t = t.replace("[fmri]\n", "[fmri]\nformat = \"nifti\"\n");
        }
        let p = tmp.path().join("nifti.toml");
        std::fs::write(&p, t).unwrap();
        Plan::load(&p)
    };
    let pattern = nii.join("s*-bold.nii.gz");
    let atlas = nii.join("atlas.nii.gz");
    let mut plan =
        nifti_plan(pattern.to_str().unwrap(), Some(atlas.to_str().unwrap())).expect("the NIfTI plan validates");
    assert_eq!(plan.subjects.len(), 4);
    plan.store = tmp.path().join("store");
    plan.output = tmp.path().join("out_nii");
    pipeline::run(plan, &pipeline::RunOptions { workers: 2 }).unwrap();
    let plan = small_plan(&tmp.path().join("store"), &tmp.path().join("out_txt"));
    pipeline::run(plan, &pipeline::RunOptions { workers: 2 }).unwrap();
    let check = support::run_python(
        "import sys, polars as pl\n\
         for t in ['fits', 'summary']:\n\
         \x20   a = pl.read_parquet(f'{sys.argv[1]}/{t}.parquet'); b = pl.read_parquet(f'{sys.argv[2]}/{t}.parquet')\n\
         \x20   print(t, a.height, a.equals(b))",
        &[
            tmp.path().join("out_nii").to_str().unwrap(),
            tmp.path().join("out_txt").to_str().unwrap(),
        ],
    );
    assert_eq!(
        check.trim(),
        "fits 144 True\nsummary 42 True",
        "4 subjects × 2 layers × 3 sets × 6 ROIs, equal to the text tables' run"
    );

    // refusals, before any work
    let e = nifti_plan(pattern.to_str().unwrap(), None).unwrap_err().to_string();
    assert!(e.contains("fmri.atlas") && e.contains("label volume"), "{e}");
    let gap = nii.join("atlas-gap.nii.gz");
    let e = nifti_plan(pattern.to_str().unwrap(), Some(gap.to_str().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("atlas-gap.nii.gz") && e.contains("no voxel has label 4"),
        "{e}"
    );
    std::fs::create_dir_all(nii.join("short")).unwrap();
    support::run_python(
        "import sys, nibabel as nib\n\
         img = nib.load(sys.argv[1]); nib.save(nib.Nifti1Image(img.get_fdata()[..., :-1], img.affine), sys.argv[2])",
        &[
            nii.join("s18-bold.nii.gz").to_str().unwrap(),
            nii.join("short/s18-bold.nii.gz").to_str().unwrap(),
        ],
    );
    let short = nii.join("short/s*-bold.nii.gz");
    let e = nifti_plan(short.to_str().unwrap(), Some(atlas.to_str().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("s18-bold.nii.gz") && e.contains("361 volumes (TRs), expected 362"),
        "{e}"
    );
}

/// `pipelines/lpp-en.toml` cut for a test: runs 1..=`runs`, layer 9, 20 SAE steps, output
/// `dir/name` and store `dir/store`; its responses are the `[simulate]` section with 3 subjects,
/// or `responses` in its place; `encoding` opens the `[encoding]` section.
fn lpp_en_cut(dir: &Path, name: &str, runs: usize, responses: Option<&str>, encoding: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("pipelines/lpp-en.toml")).unwrap();
    let (head, rest) = text.split_once("[[story]]").unwrap();
    let (stories, tail) = rest.split_once("\n[simulate]").unwrap();
    let kept: String = stories
        .split("[[story]]")
        .filter(|s| (1..=runs).any(|r| s.contains(&format!("id = \"lpp-en-run{r}\""))))
        .map(|s| format!("[[story]]{s}"))
        .collect();
    assert_eq!(kept.matches("[[story]]").count(), runs);
    let (simulate, after) = tail.split_once("\n[sae]").unwrap();
    let simulate = format!("[simulate]{}", simulate.replace("subjects = 4", "subjects = 3"));
    format!(
        "{}{kept}\n{}\n[sae]{}",
        head.replace("layers = [9, 15, 21]", "layers = [9]").replace(
            "output = \"runs/lpp-en\"",
            &format!(
                "output = {:?}\nstore = {:?}",
                dir.join(name).to_str().unwrap(),
                dir.join("store").to_str().unwrap()
            )
        ),
        responses.unwrap_or(&simulate),
        after
            .replace("steps = 2000", "steps = 20")
            .replace("[encoding]\n", &format!("[encoding]\n{encoding}"))
    )
}

/// Le Petit Prince through the NIfTI reader: `lpp-en.toml` cut to runs 1–2 (layer 9, a short SAE
/// run, 3 simulated subjects), and the same pipeline with its `[simulate]` section replaced by
/// `[fmri] format = "nifti"` reading those very responses written by nibabel into one 4-D run per
/// (subject, story) (`sim*-{story}_bold.nii.gz`, each target on two voxels of a 4 × 3 × 2 grid
/// labelled by a 3-D atlas, the other voxels noise): the fits and summaries are the same tables.
#[test]
fn lpp_runs_read_from_nifti_files_give_the_simulated_runs_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let sim_path = tmp.path().join("simulated.toml");
    std::fs::write(&sim_path, lpp_en_cut(tmp.path(), "simulated", 2, None, "")).unwrap();
    let sim_plan = Plan::load(&sim_path).unwrap();
    // the simulated responses, as .npy files for nibabel
    let y = tmp.path().join("y");
    std::fs::create_dir_all(&y).unwrap();
    let tables = pipeline::simulated::responses(&sim_plan).unwrap();
    assert_eq!(tables.len(), 2 * 3, "2 runs × 3 subjects");
    for (story, t) in &tables {
        cortexflow::store::write_npy(&y.join(format!("{}-{story}.npy", t.subject)), t.data.view()).unwrap();
    }
    let nii = tmp.path().join("nii");
    std::fs::create_dir_all(&nii).unwrap();
    let runs: Vec<(PathBuf, String)> = tables
        .iter()
        .map(|(story, t)| {
            (
                y.join(format!("{}-{story}.npy", t.subject)),
                format!("{}-{story}_bold.nii.gz", t.subject),
            )
        })
        .collect();
    write_roi_nifti_runs(&nii, &runs);
    let fmri = format!(
        "[fmri]\nformat = \"nifti\"\nsubjects = {:?}\natlas = {:?}\nrois = {:?}\n",
        nii.join("sim*-{story}_bold.nii.gz").to_str().unwrap(),
        nii.join("atlas.nii.gz").to_str().unwrap(),
        (1..=8).map(|j| format!("t{j:02}")).collect::<Vec<_>>(),
    );
    let nii_path = tmp.path().join("nifti.toml");
    std::fs::write(&nii_path, lpp_en_cut(tmp.path(), "nifti", 2, Some(&fmri), "")).unwrap();
    let nii_plan = Plan::load(&nii_path).expect("the NIfTI plan validates");
    assert_eq!(nii_plan.subjects.len(), 2 * 3, "one response per (subject, run)");
    assert!(nii_plan.file.simulate.is_none());
    let outs = [sim_plan.output.clone(), nii_plan.output.clone()];
    for plan in [sim_plan, nii_plan] {
        pipeline::run(plan, &pipeline::RunOptions { workers: 2 }).unwrap();
    }
    let check = support::run_python(
        "import sys, polars as pl\n\
         for t in ['fits', 'summary']:\n\
         \x20   a = pl.read_parquet(f'{sys.argv[1]}/{t}.parquet'); b = pl.read_parquet(f'{sys.argv[2]}/{t}.parquet')\n\
         \x20   print(t, a.height, a.equals(b))",
        &[outs[0].to_str().unwrap(), outs[1].to_str().unwrap()],
    );
    assert_eq!(
        check.trim(),
        "fits 144 True\nsummary 54 True",
        "3 subjects × 2 runs × 3 feature sets × 8 targets, equal to the simulated run's tables"
    );
}

/// `respdict.json` (story → TRs) of a ds003020-layout folder.
fn write_respdict(data: &Path, n_trs: &[(String, usize)]) {
    let respdict: serde_json::Map<String, serde_json::Value> =
        n_trs.iter().map(|(s, n)| (s.clone(), serde_json::json!(n))).collect();
    std::fs::write(data.join("respdict.json"), serde_json::to_string(&respdict).unwrap()).unwrap();
}

/// The `[simulate]` responses of `lpp-en.toml` cut to runs 1–4 (3 subjects, 8 targets) in the
/// ds003020 layout under `dir/ds`: `preprocessed_data/<subject>/<story>.npy` (TRs × targets) and
/// `respdict.json`. Returns the folder and each story's TRs. Leaves `dir/lpp.toml` behind.
fn simulated_lpp_ds003020(dir: &Path) -> (PathBuf, Vec<(String, usize)>) {
    let p = dir.join("lpp.toml");
    std::fs::write(&p, lpp_en_cut(dir, "out", 4, None, "")).unwrap();
    let plan = Plan::load(&p).unwrap();
    let n_trs: Vec<(String, usize)> = plan.stories.iter().map(|(c, _)| (c.id.clone(), c.n_trs)).collect();
    let data = dir.join("ds");
    for (story, t) in pipeline::simulated::responses(&plan).unwrap() {
        let sub = data.join("preprocessed_data").join(&t.subject);
        std::fs::create_dir_all(&sub).unwrap();
        cortexflow::store::write_npy(&sub.join(format!("{story}.npy")), t.data.view()).unwrap();
    }
    write_respdict(&data, &n_trs);
    (data, n_trs)
}

/// `[voxelwise]` in a pipeline: Le Petit Prince runs 1–4 (layer 9), the simulated responses of
/// 3 subjects written in the ds003020 layout with a voxel → region table each. The run fits
/// every subject voxelwise on the `controls` and `raw` designs of all four runs, and its tables
/// equal those of `cortexflow voxelwise fit` on the designs the same run exported, with the same
/// settings (each exported file being the design artifact the fits read, one row per TR). The
/// planted signal is recovered through `controls`. Run again with a third subject:
/// only that subject is fitted (one fit per feature set) and no decomposition is computed (all
/// are read from the store); the first two subjects' rows are unchanged, and `changes.parquet`
/// lists the new subject's record and fits. Last, without run 4 and `[voxelwise]`: the exported
/// and voxelwise folders hold exactly that run's outputs.
#[test]
fn a_voxelwise_section_fits_in_the_run_like_voxelwise_fit_and_a_new_subject_needs_no_decomposition() {
    let tmp = tempfile::tempdir().unwrap();
    // the simulated responses of `[simulate]`; the voxelwise pipeline has no other response source
    let (data, n_trs) = simulated_lpp_ds003020(tmp.path());
    let p = tmp.path().join("lpp.toml");
    let base = lpp_en_cut(tmp.path(), "out", 4, Some(""), "export-designs = true\n");
    assert!(!base.contains("\n[simulate]") && !base.contains("\n[fmri]"));
    // targets t01–t04 in PT, t05–t08 in AT
    let regions = tmp.path().join("regions");
    std::fs::create_dir_all(&regions).unwrap();
    for s in ["sim01", "sim02", "sim03"] {
        let rows: String = (0..8)
            .map(|v| format!("{v}\t{}\n", if v < 4 { "PT" } else { "AT" }))
            .collect();
        std::fs::write(regions.join(format!("{s}.tsv")), format!("voxel\tregion\n{rows}")).unwrap();
    }
    let section = |subjects: &str| {
        format!(
            "\n[voxelwise]\ndata = {:?}\n{subjects}trim-start = 0\ntrim-end = 0\nfeature-sets = [\"controls\", \"raw\"]\n\
             inner-folds = 3\nn-shifts = 20\nregions = {:?}\n",
            data.to_str().unwrap(),
            regions.join("{subject}.tsv").to_str().unwrap()
        )
    };
    std::fs::write(&p, format!("{base}{}", section("subjects = [\"sim01\", \"sim02\"]\n"))).unwrap();
    let plan = Plan::load(&p).unwrap();
    let (seed, n_boot) = (plan.file.summary.seed, plan.file.summary.n_boot);
    let alphas: Vec<String> = plan.alphas().iter().map(|a| format!("{a:?}")).collect();
    let first = pipeline::run(plan, &pipeline::RunOptions { workers: 2 }).unwrap();
    let snap = &first.result.snapshot;
    assert!(
        snap.fits.is_empty() && snap.responses.is_empty(),
        "no per-story response tables"
    );
    assert_eq!(snap.voxel_subjects.len(), 2);
    assert_eq!(snap.voxel_designs.len(), 2, "one voxelwise design per feature set");
    assert_eq!(snap.voxel_fits.len(), 2 * 2, "2 subjects × 2 feature sets");
    let count = |r: &pipeline::RunReport, what: &str, computed: bool| {
        let m = if computed {
            &r.result.stats.computed
        } else {
            &r.result.stats.reused
        };
        m.get(what).copied().unwrap_or(0)
    };
    // 2 designs × 4 outer folds × (3 inner folds + the fold's training set)
    assert_eq!(count(&first, "voxel-decomposition", true), 2 * 4 * 4);
    assert_eq!(count(&first, "voxel-fit", true), 4);
    let out = tmp.path().join("out");
    // `[encoding] export-designs`: each exported file is the design artifact the voxelwise fits
    // read, one row per TR of the story's grid (4 runs × raw, sae, controls at layer 9)
    assert_eq!(snap.designs.len(), 4 * 3);
    let store = cortexflow::store::artifacts::ArtifactStore::open(&tmp.path().join("store")).unwrap();
    for (k, id) in &snap.designs {
        let file = out.join(format!("designs/layer-9/{}/{}.npy", k.feature_set.as_str(), k.story));
        let x = cortexflow::store::read_npy(&file).unwrap();
        assert_eq!(
            x.view(),
            store.load_arrays("design", id).unwrap().f64("x").unwrap(),
            "{}",
            file.display()
        );
        let rows = n_trs.iter().find(|(s, _)| *s == k.story).unwrap().1;
        assert_eq!(x.nrows(), rows, "{}: one row per TR of the story", file.display());
    }
    // the same analysis by `voxelwise fit` on the designs this run exported
    for set in ["controls", "raw"] {
        let cli = tmp.path().join(format!("cli-{set}"));
        let o = support::bin()
            .args(["voxelwise", "fit", "--data", data.to_str().unwrap(), "--designs"])
            .arg(out.join(format!("designs/layer-9/{set}")))
            .args(["--subjects", "sim01,sim02", "--stories"])
            .arg(n_trs.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(","))
            .args([
                "--trim-start",
                "0",
                "--trim-end",
                "0",
                "--outer-folds",
                "4",
                "--inner-folds",
                "3",
            ])
            .args([
                "--n-shifts",
                "20",
                "--seed",
                &seed.to_string(),
                "--n-boot",
                &n_boot.to_string(),
            ])
            .args(["--alphas", &alphas.join(","), "--regions"])
            .arg(regions.join("{subject}.tsv"))
            .args(["--quiet", "--out", cli.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let same = support::run_python(
            "import sys, polars as pl\n\
             names = ['voxelwise_voxels', 'voxelwise_voxel_folds', 'voxelwise_story_folds', 'voxelwise_regions',\n\
                      'voxelwise_region_summary']\n\
             print(all(pl.read_parquet(f'{sys.argv[1]}/{n}.parquet').equals(pl.read_parquet(f'{sys.argv[2]}/{n}.parquet'))\n\
                       for n in names))",
            &[
                out.join(format!("voxelwise/layer-9/{set}")).to_str().unwrap(),
                cli.to_str().unwrap(),
            ],
        );
        assert_eq!(
            same.trim(),
            "True",
            "{set}: the run's voxelwise tables equal voxelwise fit's"
        );
    }
    // the planted signal (word rate and length) through `controls`: ceiling √(0.5 / 1.5) ≈ 0.577
    let check = support::run_python(
        "import sys, polars as pl\n\
         v = pl.read_parquet(f'{sys.argv[1]}/voxelwise_voxels.parquet')\n\
         s = pl.read_parquet(f'{sys.argv[1]}/voxelwise_region_summary.parquet')\n\
         print(v.height, round(v['r'].mean(), 3), ','.join(s['region'].to_list()))",
        &[out.join("voxelwise/layer-9/controls").to_str().unwrap()],
    );
    let f: Vec<&str> = check.split_whitespace().collect();
    assert_eq!((f[0], f[2]), ("16", "all,AT,PT"), "2 subjects × 8 voxels: {check}");
    let mean_r: f64 = f[1].parse().unwrap();
    assert!(mean_r > (0.5f64 / 1.5).sqrt() - 0.05, "mean held-out r {mean_r}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("## Voxelwise encoding") && report.contains("| 9 | controls | PT | 2 |"),
        "{report}"
    );
    assert!(out.join("voxelwise/region_r.png").is_file());
    let before = out.join("voxelwise/layer-9/raw/voxelwise_voxels.parquet");
    let kept = tmp.path().join("raw-before.parquet");
    std::fs::copy(&before, &kept).unwrap();

    // a third subject: fitted alone, with every decomposition read from the store
    std::fs::write(&p, format!("{base}{}", section(""))).unwrap();
    let status = pipeline::incremental::status(&Plan::load(&p).unwrap()).unwrap();
    assert_eq!(
        status.stale,
        [
            "new voxelwise subject `sim03`: 2 voxelwise fits (layers × feature sets) to compute, with no \
          decomposition when the stories are unchanged"
        ],
        "the subject list is not a setting: only the new subject is stale"
    );
    // in one running dataflow: epoch 0 holds the first two subjects (their fits are in the store),
    // epoch 1 adds the third
    let ctx = pipeline::context(Plan::load(&p).unwrap()).unwrap();
    let inputs = pipeline::prepare_inputs(&ctx).unwrap();
    let mut epoch0 = pipeline::single_epoch(&inputs);
    let new = epoch0.voxel_subjects.pop().unwrap();
    assert_eq!(new.0 .0, "sim03");
    let epoch1 = Epoch {
        voxel_subjects: vec![new],
        ..Default::default()
    };
    let results = dataflow::run(ctx, vec![epoch0, epoch1], 2).unwrap();
    let n = |i: usize, what: &str, computed: bool| {
        let s = &results[i].stats;
        let m = if computed { &s.computed } else { &s.reused };
        m.get(what).copied().unwrap_or(0)
    };
    assert_eq!(
        n(0, "voxel-fit", true),
        0,
        "epoch 0: both subjects' fits come from the store"
    );
    assert_eq!(
        n(0, "voxel-decomposition", true) + n(0, "voxel-decomposition", false),
        0
    );
    assert_eq!(n(1, "voxel-fit", true), 2, "epoch 1: one new fit per feature set");
    assert_eq!(n(1, "voxel-decomposition", true), 0, "no decomposition computed");
    assert_eq!(
        n(1, "voxel-decomposition", false),
        2 * 4 * 4,
        "every fold of both designs, read once"
    );
    let added: Vec<(&str, &str)> = results[1]
        .changes
        .iter()
        .map(|(r, d)| match r {
            dataflow::Record::VoxelFit(k, _) if *d > 0 => ("fit", k.subject.as_str()),
            dataflow::Record::VoxelSubject(s, _) if *d > 0 => ("subject", s.as_str()),
            other => panic!("epoch 1 changed {other:?} ({d})"),
        })
        .collect();
    assert_eq!(
        added,
        [("subject", "sim03"), ("fit", "sim03"), ("fit", "sim03")],
        "epoch 1 adds the new subject and its fits, and nothing else"
    );
    // the output folder's next update: everything from the store
    let second = pipeline::run(Plan::load(&p).unwrap(), &pipeline::RunOptions { workers: 2 }).unwrap();
    assert_eq!(second.result.snapshot.voxel_fits.len(), 3 * 2);
    assert_eq!(count(&second, "voxel-fit", true), 0);
    assert_eq!(count(&second, "voxel-decomposition", true), 0);
    // the decompositions stay in use (for `prune`) although nothing read them this time
    let m = pipeline::incremental::Manifest::load(&out).unwrap().unwrap();
    assert_eq!(
        m.touched.iter().filter(|t| t.starts_with("voxel-factors/")).count(),
        2,
        "one entry per design"
    );
    let check = support::run_python(
        "import sys, polars as pl\n\
         a = pl.read_parquet(sys.argv[1])\n\
         b = pl.read_parquet(sys.argv[2])\n\
         c = pl.read_parquet(sys.argv[3])\n\
         e = c.filter(pl.col('epoch') == c['epoch'].max())\n\
         old = b.filter(pl.col('subject') != 'sim03')\n\
         print(a.equals(old), b.filter(pl.col('subject') == 'sim03').height,\n\
               sorted(set(zip(e['kind'].to_list(), e['subject'].to_list()))))",
        &[
            kept.to_str().unwrap(),
            before.to_str().unwrap(),
            out.join("changes.parquet").to_str().unwrap(),
        ],
    );
    assert_eq!(
        check.trim(),
        "True 8 [('voxel_fit', 'sim03'), ('voxel_subject', 'sim03')]",
        "earlier subjects unchanged; the epoch adds the new subject and its fits"
    );
    // without run 4 and without [voxelwise]: that run's designs leave the folder, `voxelwise/`
    // goes, and no temporary folder is left (each is written beside its place, then replaces it)
    std::fs::write(
        &p,
        lpp_en_cut(tmp.path(), "out", 3, Some(""), "export-designs = true\n"),
    )
    .unwrap();
    pipeline::run(Plan::load(&p).unwrap(), &pipeline::RunOptions { workers: 2 }).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(out.join("designs/layer-9/controls"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["lpp-en-run1.npy", "lpp-en-run2.npy", "lpp-en-run3.npy"]);
    assert!(!out.join("voxelwise").exists());
    assert!(
        !std::fs::read_dir(&out)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "no temporary folder is left"
    );
}

/// `[voxelwise] taxonomy-sets`: with `[taxonomy]`, every category and subcategory set is fitted
/// voxelwise too, and the subcategory × region topography is tested on their region means (story
/// `voxelwise` in `topography_observed` and `topography_stats`). Each observed cell equals the mean
/// over subjects of the subject's mean voxel r in the region, read back from that set's
/// `voxelwise_regions` table.
#[test]
fn voxelwise_subcategory_fits_give_the_topography_of_their_region_means() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, _) = simulated_lpp_ds003020(tmp.path());
    let p = tmp.path().join("lpp.toml");
    // targets in four of the paper's regions, two each
    let regions = tmp.path().join("regions.tsv");
    let rows: String = (0..8)
        .map(|v| format!("{v}\t{}\n", ["PT", "AT", "IF", "AG"][v / 2]))
        .collect();
    std::fs::write(&regions, format!("voxel\tregion\n{rows}")).unwrap();
    let text = format!(
        "{}\n[taxonomy]\nrandom-seeds = 10\nbaselines = false\nvariance-partition = false\nshapley = false\n\
         permutations = 100\n\n[voxelwise]\ndata = {:?}\ntrim-start = 0\ntrim-end = 0\n\
         feature-sets = [\"controls\"]\ntaxonomy-sets = true\ninner-folds = 3\nn-shifts = 0\nregions = {:?}\n",
        lpp_en_cut(tmp.path(), "out", 4, Some(""), ""),
        data.to_str().unwrap(),
        regions.to_str().unwrap()
    );
    std::fs::write(&p, text).unwrap();
    let report = pipeline::run(Plan::load(&p).unwrap(), &pipeline::RunOptions { workers: 2 }).unwrap();
    let sets: std::collections::BTreeSet<String> = report
        .result
        .snapshot
        .voxel_fits
        .iter()
        .map(|(k, _)| k.feature_set.as_str().to_string())
        .collect();
    let subs: Vec<&String> = sets.iter().filter(|s| s.starts_with("sae:sub:")).collect();
    assert!(sets.contains("controls") && subs.len() >= 2, "voxelwise sets: {sets:?}");
    assert!(
        sets.iter().all(|s| s == "controls" || s.starts_with("sae:")),
        "{sets:?}"
    );
    let out = tmp.path().join("out");
    let check = support::run_python(
        "import sys, polars as pl\n\
         out = sys.argv[1]\n\
         o = pl.read_parquet(f'{out}/topography_observed.parquet').filter(pl.col('story') == 'voxelwise')\n\
         s = pl.read_parquet(f'{out}/topography_stats.parquet').filter(pl.col('story') == 'voxelwise')\n\
         worst = 0.0\n\
         for row in o.iter_rows(named=True):\n\
         \x20   r = pl.read_parquet(f\"{out}/voxelwise/layer-9/sae:sub:{row['subcategory']}/voxelwise_regions.parquet\")\n\
         \x20   m = r.filter(pl.col('region') == row['region'])['mean_r'].mean()\n\
         \x20   worst = max(worst, abs(m - row['mean_r']))\n\
         print(o.height, sorted(set(o['region'])), set(o['n_subjects']), set(o['rois'] == o['region']), s.height > 0, worst)",
        &[out.to_str().unwrap()],
    );
    let f: Vec<&str> = check.trim().rsplitn(2, ' ').collect();
    let worst: f64 = f[0].parse().unwrap();
    assert!(
        worst < 1e-12,
        "each cell is the mean over subjects of the region means: {check}"
    );
    assert!(
        f[1].ends_with("['AG', 'AT', 'IF', 'PT'] {3} {True} True") && !f[1].starts_with("0 "),
        "voxelwise topography rows: {check}"
    );
}

/// `[voxelwise]` is checked against the stories and the files when the pipeline is loaded, before
/// any work: each error names the key, the story or subject and the file, and what was expected.
#[test]
fn voxelwise_sections_are_checked_against_respdict_and_the_files_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let base = lpp_en_cut(tmp.path(), "out", 4, None, "");
    let p = tmp.path().join("lpp.toml");
    std::fs::write(&p, &base).unwrap();
    let plan = Plan::load(&p).unwrap();
    let n_trs: Vec<(String, usize)> = plan.stories.iter().map(|(c, _)| (c.id.clone(), c.n_trs)).collect();
    let data = tmp.path().join("ds");
    for s in ["sim01", "sim02"] {
        for (story, n) in &n_trs {
            let dir = data.join("preprocessed_data").join(s);
            std::fs::create_dir_all(&dir).unwrap();
            cortexflow::store::write_npy(
                &dir.join(format!("{story}.npy")),
                ndarray::Array2::<f64>::zeros((*n, 3)).view(),
            )
            .unwrap();
        }
    }
    let respdict = |trs: &[(String, usize)]| write_respdict(&data, trs);
    // the section with `extra` lines; the stories' grids are the response TRs unless told
    let load = |extra: &str| {
        let trims = match extra.contains("trim-") {
            true => "",
            false => "trim-start = 0\ntrim-end = 0\n",
        };
        // 4 stories: 3 training stories per outer fold, so at most 3 inner folds
        let folds = match extra.contains("folds") {
            true => "",
            false => "inner-folds = 3\n",
        };
        let text = format!(
            "{base}\n[voxelwise]\ndata = {:?}\n{trims}{folds}{extra}",
            data.to_str().unwrap()
        );
        std::fs::write(&p, text).unwrap();
        Plan::load(&p).map_err(|e| e.to_string())
    };
    respdict(&n_trs);
    let v = load("").unwrap().voxelwise.unwrap();
    assert_eq!(v.subjects, ["sim01", "sim02"], "every subject folder by default");
    assert_eq!(v.format, "npy", "the format found under preprocessed_data");
    let sets: Vec<&str> = v.feature_sets.iter().map(|f| f.as_str()).collect();
    assert_eq!(
        sets,
        ["raw", "sae", "controls"],
        "[encoding]'s word-feature sets by default"
    );
    // a story missing from respdict.json
    respdict(&n_trs[..1]);
    let e = load("").unwrap_err();
    assert!(
        e.contains("voxelwise.data") && e.contains("lpp-en-run2") && e.contains("respdict.json"),
        "{e}"
    );
    // story grids 3 TRs longer than the responses: an error without trims, fine with 2 + 1
    let short: Vec<(String, usize)> = n_trs.iter().map(|(s, n)| (s.clone(), n - 3)).collect();
    respdict(&short);
    let e = load("").unwrap_err();
    assert!(
        e.contains("voxelwise.trim-start") && e.contains(&format!("{} TRs on its grid", n_trs[0].1)),
        "{e}"
    );
    load("trim-start = 2\ntrim-end = 1\n").unwrap();
    respdict(&n_trs);
    // a subject without a story's file
    let e = load("subjects = [\"sim01\", \"sim09\"]\n").unwrap_err();
    assert!(
        e.contains("sim09") && e.contains("lpp-en-run1") && e.contains("preprocessed_data"),
        "{e}"
    );
    // a feature set the encoding does not make, a bad FDR level, too many folds, a missing region table
    let e = load("feature-sets = [\"sae-recon\"]\n").unwrap_err();
    assert!(e.contains("voxelwise.feature-sets") && e.contains("sae-recon"), "{e}");
    let e = load("fdr = 1.5\n").unwrap_err();
    assert!(e.contains("voxelwise.fdr"), "{e}");
    let e = load("outer-folds = 5\ninner-folds = 3\n").unwrap_err();
    assert!(
        e.contains("voxelwise.outer-folds") && e.contains("4 stories, 5 outer folds"),
        "{e}"
    );
    let e = load("regions = \"nowhere/{subject}.tsv\"\n").unwrap_err();
    assert!(e.contains("voxelwise.regions") && e.contains("sim01"), "{e}");
    assert!(!tmp.path().join("out").exists(), "nothing is written");
}

/// `run --sae-seeds 2` (with a light `[taxonomy]`): one complete run per seed on one store, and
/// `seeds.parquet` whose mean and sd are those of the two runs' summaries, SAE qualities and
/// baselines (recomputed in polars); the raw set, which does not use the SAE, has sd 0 and the SAE
/// set does not.
#[test]
fn sae_seeds_run_the_pipeline_per_seed_and_report_the_spread() {
    let tmp = tempfile::tempdir().unwrap();
    let _lm = support::seed_lm(&tmp.path().join("store"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let out = tmp.path().join("out");
    let text = std::fs::read_to_string(src).unwrap().replace(
        "output = \"runs/alice-small\"",
        &format!(
            "output = {:?}\nstore = {:?}",
            out.to_str().unwrap(),
            tmp.path().join("store").to_str().unwrap()
        ),
    );
    assert!(text.contains("seed = 1"));
    let taxonomy = "\n[taxonomy]\nrandom-seeds = 10\npermutations = 100\nvariance-partition = false\n";
    let p = tmp.path().join("p.toml");
    std::fs::write(&p, format!("{text}{taxonomy}")).unwrap();
    let o = support::bin()
        .arg("run")
        .arg(&p)
        .args(["--sae-seeds", "1x"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = support::bin()
        .arg("run")
        .arg(&p)
        .args(["--sae-seeds", "2", "-w", "2"])
        .env("CORTEXFLOW_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("# SAE seeds") && stdout.contains("2 seed runs"),
        "{stdout}"
    );
    for seed in [1, 2] {
        assert!(out.join(format!("seed-{seed}/summary.parquet")).is_file());
        assert!(out.join(format!("seed-{seed}/report.html")).is_file());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = std::process::Command::new(support::python())
        .arg(root.join("scripts/check_parquet.py"))
        .arg(out.join("seeds.parquet"))
        .arg(root.join("data-schemas/seeds.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let check = support::run_python(
        "import sys, polars as pl\n\
         d = sys.argv[1]\n\
         s = pl.read_parquet(f'{d}/seeds.parquet')\n\
         k = ['story', 'language', 'layer', 'feature_set', 'roi']\n\
         a = pl.read_parquet(f'{d}/seed-1/summary.parquet').select(*k, pl.col('mean_r').alias('a'))\n\
         b = pl.read_parquet(f'{d}/seed-2/summary.parquet').select(*k, pl.col('mean_r').alias('b'))\n\
         ab = a.join(b, on=k).drop_nulls()\n\
         j = s.filter((pl.col('measure') == 'mean_r') & (pl.col('table') == 'summary')).join(ab, on=k)\n\
         print(j.height == ab.height > 20 and bool((j['n_seeds'] == 2).all()), float(((j['a'] + j['b']) / 2 - j['mean']).abs().max()) < 1e-12,\n\
         \x20     float(((j['a'] - j['b']).abs() / 2 ** 0.5 - j['sd']).abs().max()) < 1e-12)\n\
         print(float(j.filter(pl.col('feature_set') == 'raw')['sd'].max()), float(j.filter(pl.col('feature_set') == 'sae')['sd'].max()) > 0)\n\
         q = s.filter(pl.col('measure') == 'r2')\n\
         qa = pl.read_parquet(f'{d}/seed-1/sae_quality.parquet'); qb = pl.read_parquet(f'{d}/seed-2/sae_quality.parquet')\n\
         m = q.join(qa.select('language', 'layer', pl.col('r2').alias('a')), on=['language', 'layer']).join(qb.select('language', 'layer', pl.col('r2').alias('b')), on=['language', 'layer'])\n\
         print(m.height, bool((m['n_seeds'] == 2).all()), float(((m['a'] + m['b']) / 2 - m['mean']).abs().max()) < 1e-12, set(s['seeds'].to_list()))\n\
         kb = ['story', 'language', 'layer', 'feature_set', 'vs']\n\
         ba = pl.read_parquet(f'{d}/seed-1/baselines.parquet').select(*kb, pl.col('mean_diff').alias('a')).drop_nulls()\n\
         bb = pl.read_parquet(f'{d}/seed-2/baselines.parquet').select(*kb, pl.col('mean_diff').alias('b')).drop_nulls()\n\
         bab = ba.join(bb, on=kb)\n\
         jb = s.filter(pl.col('measure') == 'mean_diff').join(bab, on=kb)\n\
         print(jb.height == bab.height > 10, float(((jb['a'] + jb['b']) / 2 - jb['mean']).abs().max()) < 1e-12)",
        &[out.to_str().unwrap()],
    );
    let lines: Vec<&str> = check.trim().lines().collect();
    assert_eq!(
        lines[0], "True True True",
        "mean and sd over the two seeds of every summary row"
    );
    assert_eq!(lines[1], "0.0 True", "raw does not depend on the SAE seed; sae does");
    assert_eq!(lines[2], "2 True True {'1,2'}", "the SAE R² of both layers");
    assert_eq!(lines[3], "True True", "every baseline comparison's mean difference");
}

/// `[taxonomy] evidence`: by default the SAE's training texts (the corpus, and the stories when
/// they are training data too), else the stories or the corpus alone; "corpus" without corpus
/// texts is refused.
#[test]
fn label_evidence_is_the_sae_training_texts_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let text = std::fs::read_to_string(src).unwrap();
    let p = tmp.path().join("p.toml");
    let load = |text: String, evidence: &str| {
        std::fs::write(&p, format!("{text}\n[taxonomy]\n{evidence}\n")).unwrap();
        Plan::load(&p).map(|plan| plan.file.taxonomy.as_ref().unwrap().evidence_texts(&plan.file.sae))
    };
    assert!(text.contains("include-stimulus = true") && text.contains("corpus = [\""));
    assert_eq!(load(text.clone(), "").unwrap(), (true, true), "corpus and stories");
    let without_stimulus = text.replace("include-stimulus = true", "include-stimulus = false");
    assert_eq!(load(without_stimulus, "").unwrap(), (false, true), "the corpus alone");
    assert_eq!(load(text.clone(), "evidence = \"stimulus\"").unwrap(), (true, false));
    assert_eq!(load(text.clone(), "evidence = \"corpus\"").unwrap(), (false, true));
    let no_corpus = text
        .lines()
        .filter(|l| !l.starts_with("corpus"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        load(no_corpus.clone(), "").unwrap(),
        (true, false),
        "no corpus: the stories"
    );
    let e = load(no_corpus, "evidence = \"corpus\"").unwrap_err().to_string();
    assert!(e.contains("taxonomy.evidence") && e.contains("sae.corpus"), "{e}");
}

/// The taxonomy end to end on the small Alice plan (layer 9, 4 subjects, a short SAE): every
/// feature gets one category with confidences summing to 1, the random baselines are matched to
/// the semantic set (count, summed variance), every taxonomy table reads back in pyarrow and
/// polars with its schema, the labelling tasks are valid JSONL, and imported answers replace the
/// built-in labels (with their agreement reported and computable by `cortexflow labels agree`).
#[test]
fn the_taxonomy_labels_every_feature_matches_its_baselines_and_imports_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let _lm = support::seed_lm(&tmp.path().join("store"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let text = std::fs::read_to_string(src).unwrap().replace(
        "output = \"runs/alice-small\"",
        &format!(
            "output = {:?}\nstore = {:?}",
            tmp.path().join("out").to_str().unwrap(),
            tmp.path().join("store").to_str().unwrap()
        ),
    );
    let taxonomy = "\n[taxonomy]\nrandom-seeds = 10\npermutations = 1000\nprediction-error-delta = 6\n\
                    regions = { LATL = \"AT\", RATL = \"AT\", LPTL = \"PT\", LIPL = \"AG\", LIFG = \"IF\" }\n";
    let p = tmp.path().join("tax.toml");
    std::fs::write(&p, format!("{text}{taxonomy}")).unwrap();
    let plan = Plan::load(&p).expect("the taxonomy plan validates");
    let out = plan.output.clone();
    pipeline::run(plan, &pipeline::RunOptions { workers: 2 }).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // every taxonomy table read back by pyarrow and polars against its schema, in one process
    let mut check_tables = std::process::Command::new(support::python());
    check_tables.arg(root.join("scripts/check_parquet.py"));
    let tables = [
        "feature_labels",
        "feature_sets",
        "baselines",
        "topography_observed",
        "topography_stats",
        "variance_partition",
        "variance_partition_summary",
        "prediction_error",
        "feature_region_weights",
    ];
    for (i, table) in tables.iter().enumerate() {
        if i > 0 {
            check_tables.arg("--also");
        }
        check_tables
            .arg(out.join(format!("{table}.parquet")))
            .arg(root.join(format!("data-schemas/{table}.json")));
    }
    let o = check_tables.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("OK "))
            .count(),
        tables.len()
    );
    let check = support::run_python(
        "import sys, json, polars as pl\n\
         l = pl.read_parquet(sys.argv[1]).filter(pl.col('layer') == 9)\n\
         s = pl.read_parquet(sys.argv[2]).filter(pl.col('layer') == 9)\n\
         b = pl.read_parquet(sys.argv[3]).filter(pl.col('layer') == 9)\n\
         conf = l.select(pl.sum_horizontal([c for c in l.columns if c.startswith('conf_')]))\n\
         print(l.height, l['feature'].n_unique() == l.height, bool(((conf.to_series() - 1).abs() < 1e-9).all()))\n\
         sem = s.filter(pl.col('feature_set') == 'sae:semantic')\n\
         n_sem = sem['n_features'][0]; v_sem = sem['variance_share'][0]\n\
         cm = s.filter(pl.col('kind') == 'count-matched'); vm = s.filter(pl.col('kind') == 'variance-matched')\n\
         print(cm.height, bool((cm['n_features'] == n_sem).all()), vm.height, bool((vm['variance_share'] >= v_sem - 1e-12).all()))\n\
         fams = set(b['feature_set'].to_list())\n\
         print(all(f in fams for f in ['sae', 'sae:semantic', 'random:count', 'random:variance', 'pca', 'random-projection', 'sae-error', 'ablate:semantic']))\n\
         t = [json.loads(x) for x in open(sys.argv[4])]\n\
         print(len(t) > 0, all(1 <= len(x['contexts']) <= 20 and 'SEMANTIC' in x['categories'] for x in t))",
        &[
            out.join("feature_labels.parquet").to_str().unwrap(),
            out.join("feature_sets.parquet").to_str().unwrap(),
            out.join("baselines.parquet").to_str().unwrap(),
            out.join("labelling_tasks_L9.jsonl").to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = check.trim().lines().collect();
    assert_eq!(
        lines[0], "1152 True True",
        "2 × 576 features, one row each, confidences sum to 1"
    );
    assert_eq!(lines[1], "10 True 10 True", "10 count- and 10 variance-matched subsets");
    assert_eq!(lines[2], "True");
    assert_eq!(lines[3], "True True");

    // Region weights of the feature cards: every labelled feature × ROI at both layers, each the
    // mean of the 4 subjects' fits of the full SAE design, with the taxonomy's region; weights
    // that differ between features and between ROIs (not one value copied around).
    let check = support::run_python(
        "import sys, polars as pl\n\
         w = pl.read_parquet(sys.argv[1]); l = pl.read_parquet(sys.argv[2])\n\
         keys = w.select('language', 'layer', 'feature').unique()\n\
         print(w.height, keys.height == l.height, keys.join(l, on=['language', 'layer', 'feature']).height == l.height)\n\
         print(sorted(set(w['n_fits'].to_list())), w['weight'].null_count(), bool(w['weight'].is_finite().all()), bool((w['weight_sd'] > 0).all()))\n\
         print(sorted(set((r, g) for r, g in w.select('roi', 'region').iter_rows())))\n\
         f = w.group_by('layer', 'roi').agg(pl.col('weight').std().alias('s'))\n\
         g = w.group_by('layer', 'feature').agg(pl.col('weight').std().alias('s'))\n\
         print(bool((f['s'] > 1e-4).all()), float(g['s'].mean()) > 1e-4)",
        &[
            out.join("feature_region_weights.parquet").to_str().unwrap(),
            out.join("feature_labels.parquet").to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = check.trim().lines().collect();
    assert_eq!(
        lines[0], "13824 True True",
        "2 layers × 1152 labelled features × 6 ROIs"
    );
    assert_eq!(lines[1], "[4] 0 True True", "4 subjects' fits each, all finite");
    assert_eq!(
        lines[2],
        "[('LATL', 'AT'), ('LIFG', 'IF'), ('LIPL', 'AG'), ('LPTL', 'PT'), ('LPreM', None), ('RATL', 'AT')]"
    );
    assert_eq!(lines[3], "True True", "weights vary over features and over ROIs");

    // The topography statistics of every (story, layer) matrix are one table keyed by story,
    // language and layer; its Spearman ρ is scipy's on the observed cells of the same matrix.
    let check = support::run_python(
        "import sys, polars as pl\n\
         from scipy.stats import spearmanr\n\
         o = pl.read_parquet(sys.argv[1]); t = pl.read_parquet(sys.argv[2])\n\
         print(t.columns[:4], sorted(set(t['language'].to_list())))\n\
         keys = sorted(set(o.select('story', 'layer').iter_rows()))\n\
         print(keys == sorted(set(t.select('story', 'layer').iter_rows())), t.group_by('story', 'layer').len()['len'].n_unique())\n\
         for story, layer in keys:\n\
         \x20   m = o.filter((pl.col('story') == story) & (pl.col('layer') == layer)).sort('subcategory', 'region')\n\
         \x20   rho = t.filter((pl.col('story') == story) & (pl.col('layer') == layer) & (pl.col('statistic') == 'spearman_rho'))['value'][0]\n\
         \x20   ref = spearmanr(m['mean_r'].to_numpy(), m['predicted'].cast(pl.Float64).to_numpy()).statistic\n\
         \x20   print(layer, abs(rho - ref) < 1e-9)",
        &[
            out.join("topography_observed.parquet").to_str().unwrap(),
            out.join("topography_stats.parquet").to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = check.trim().lines().collect();
    assert_eq!(lines[0], "['story', 'language', 'layer', 'statistic'] ['en']");
    assert_eq!(lines[1], "True 1", "every matrix has the same statistics");
    assert_eq!(&lines[2..], ["3 True", "9 True"], "ρ agrees with scipy at both layers");

    // Variance partition by category: the groups are the layer's category sets with their
    // feature counts, and the exact Shapley values of each (subject, ROI) sum to its full R²
    // (efficiency, which the enumeration over all subsets must satisfy).
    let check = support::run_python(
        "import sys, polars as pl\n\
         v = pl.read_parquet(sys.argv[1]); s = pl.read_parquet(sys.argv[2]); vs = pl.read_parquet(sys.argv[3])\n\
         cats = s.filter(pl.col('kind') == 'category').select('layer', pl.col('feature_set').alias('group'), 'n_features')\n\
         u = v.filter(pl.col('measure') == 'unique').select('layer', 'group', 'n_columns').unique()\n\
         j = u.join(cats, on=['layer', 'group'], how='full', coalesce=True)\n\
         print(u.height == cats.height, bool((j['n_columns'] == j['n_features']).all()))\n\
         k = ['story', 'layer', 'subject', 'roi']\n\
         full = v.filter(pl.col('measure') == 'full').select(*k, pl.col('r2').alias('full'))\n\
         sh = v.filter(pl.col('measure') == 'shapley').group_by(k).agg(pl.col('r2').sum().alias('phi'))\n\
         e = full.join(sh, on=k).drop_nulls()\n\
         print(e.height, float((e['full'] - e['phi']).abs().max()) < 1e-9, v['subject'].n_unique(), sorted(set(v['layer'].to_list())))\n\
         print(vs.filter(pl.col('measure') == 'full')['n_subjects'].to_list())",
        &[
            out.join("variance_partition.parquet").to_str().unwrap(),
            out.join("feature_sets.parquet").to_str().unwrap(),
            out.join("variance_partition_summary.parquet").to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = check.trim().lines().collect();
    assert_eq!(lines[0], "True True", "one group per category set, same feature counts");
    assert_eq!(
        lines[1], "48 True 4 [3, 9]",
        "4 subjects × 6 ROIs × 2 layers with Shapley values summing to the full R²"
    );
    assert_eq!(lines[2], "[4, 4]");

    // Prediction-error features of layer 9 from layer 3 (Δ = 6): the design has the 576 raw
    // columns and one ε column per layer-9 feature, and its comparison with raw is the
    // baselines table's `raw+pred-error` row.
    let check = support::run_python(
        "import sys, polars as pl\n\
         p = pl.read_parquet(sys.argv[1]); b = pl.read_parquet(sys.argv[2])\n\
         r = p.row(0, named=True)\n\
         print(p.height, r['layer'], r['from_layer'], r['n_features'], r['n_raw_columns'], r['n_error_columns'], r['n_subjects'])\n\
         c = b.filter((pl.col('layer') == 9) & (pl.col('feature_set') == 'raw+pred-error')).row(0, named=True)\n\
         raw = b.filter((pl.col('layer') == 9) & (pl.col('feature_set') == 'raw')).row(0, named=True)\n\
         print(c['vs'], abs(c['mean_diff'] - r['delta_r']) < 1e-12, abs(raw['mean_r'] - r['mean_r_raw']) < 1e-12)\n\
         print(0 < r['cosine_median'] <= 1, r['cosine_p10'] <= r['cosine_median'] <= r['cosine_p90'], 0 <= r['prediction_r2_median'] <= 1)",
        &[
            out.join("prediction_error.parquet").to_str().unwrap(),
            out.join("baselines.parquet").to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = check.trim().lines().collect();
    assert_eq!(lines[0], "1 9 3 1152 576 1152 4");
    assert_eq!(lines[1], "raw True True");
    assert_eq!(lines[2], "True True True");

    // Imported answers: relabel the first 40 built-in SEMANTIC/OTHER features as LEXICAL.
    let builtin = std::fs::read_to_string(out.join("labels_builtin_L9.tsv")).unwrap();
    let mut changed = 0;
    let answers: String = builtin
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i > 0 && changed < 40 && !l.contains("\tlexical\t") {
                changed += 1;
                let f: Vec<&str> = l.split('\t').collect();
                format!("{}\t{}\tlexical\t\trater\n", f[0], f[1])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    // one answers file per language: `{language}` in the path names the SAE's language
    let ans = tmp.path().join("answers-en.tsv");
    std::fs::write(&ans, answers).unwrap();
    let o = support::bin()
        .args(["labels", "agree"])
        .arg(out.join("labels_builtin_L9.tsv"))
        .arg(&ans)
        .args(["--boot", "200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("over 1152 features") && text.contains("Cohen's κ"),
        "{text}"
    );
    let with_labels = |file: &str| {
        let text = std::fs::read_to_string(&p).unwrap().replace(
            "[taxonomy]\n",
            &format!("[taxonomy]\nlabels = {:?}\n", tmp.path().join(file).to_str().unwrap()),
        );
        let q = tmp.path().join("tax-labels.toml");
        std::fs::write(&q, text).unwrap();
        Plan::load(&q)
    };
    let missing = with_labels("nothing-{language}.tsv").unwrap_err().to_string();
    assert!(
        missing.contains("nothing-en.tsv not found (the labels of the `en` SAEs)"),
        "{missing}"
    );
    let plan = with_labels("answers-{language}.tsv").unwrap();
    pipeline::run(plan, &pipeline::RunOptions { workers: 1 }).unwrap();
    let check = support::run_python(
        "import sys, polars as pl\n\
         l = pl.read_parquet(sys.argv[1]).filter(pl.col('layer') == 9)\n\
         d = l.filter(pl.col('category') != pl.col('builtin_category'))\n\
         print(d.height, bool((d['category'] == 'lexical').all()), l['source'][0].endswith('answers-en.tsv'))",
        &[out.join("feature_labels.parquet").to_str().unwrap()],
    );
    assert_eq!(check.trim(), "40 True True");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("Agreement of the built-in labels with"),
        "report states the agreement"
    );
    // the labels' evidence is the SAE's training texts: the story and the corpus's 1,500 words
    assert!(
        report.contains("stimulus words and 1500 corpus words from 2 texts"),
        "{}",
        report
            .lines()
            .filter(|l| l.contains("Evidence"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // report.html in a real headless browser (Debian's chromium, `make setup`): the sections
    // render, the feature table fills its first page, and #card=9:3 opens feature 3's card with its
    // top contexts and the peak word marked
    let html = out.join("report.html");
    let size = std::fs::metadata(&html).expect("every run writes report.html").len();
    let chromium = |args: &[&str], url: String| {
        std::process::Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            .args(args)
            .arg(url)
            .output()
            .expect("chromium runs (`make setup` installs Debian's chromium)")
    };
    let t0 = std::time::Instant::now();
    let o = chromium(&["--dump-dom"], format!("file://{}#card=9:3", html.display()));
    let load_s = t0.elapsed().as_secs_f64();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && !dom.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for id in [
        "r-by-layer",
        "rois",
        "baselines",
        "topography",
        "sae",
        "changes",
        "figures",
        "features",
        "markdown",
    ] {
        assert!(
            dom.contains(&format!("<section id=\"{id}\">")),
            "report.html lacks section {id}"
        );
    }
    assert!(
        dom.contains("<svg class=\"chart\"") && dom.contains("<svg class=\"heat\""),
        "charts"
    );
    let rows = dom
        .match_indices("<tr data-i=\"")
        .filter(|(i, m)| dom[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(rows, 50, "the feature table's first page holds 50 rows");
    assert!(dom.contains("page 1 of "), "pagination");
    let card = dom
        .split("<div id=\"card\" class=\"card\" data-feature=\"3\">")
        .nth(1)
        .expect("#card=9:3 opened feature 3's card");
    assert!(
        card.starts_with("<h3>Layer 9, feature 3"),
        "{}",
        &card[..200.min(card.len())]
    );
    assert!(
        card.contains("<mark>") && card.contains("confidence:"),
        "{}",
        &card[..400.min(card.len())]
    );
    // density from the tasks, and κ of the imported answers against the built-in labeller
    let head = &card[..card.find("<h4>").unwrap_or(card.len())];
    assert!(head.contains("(density "), "{head}");
    assert!(
        head.contains("κ of this layer's labels vs the built-in ones: "),
        "{head}"
    );
    // the card's region weights: one bar per ROI, from feature_region_weights
    let weights = &card[card
        .find("<h4>Region weights</h4>")
        .expect("the card has region weights")..];
    let weights = &weights[..weights.find("</section>").unwrap_or(weights.len())];
    assert!(
        weights.contains("over 4 (subject, story) fits") && weights.contains("LPTL (PT)"),
        "{}",
        &weights[..400.min(weights.len())]
    );
    assert_eq!(weights.matches("<span class=\"fill ").count(), 6, "one bar per ROI");
    let shot = tmp.path().join("report.png");
    let o = chromium(
        &["--window-size=1280,2000", &format!("--screenshot={}", shot.display())],
        format!("file://{}", html.display()),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false),
        "screenshot"
    );
    println!(
        "report.html: {:.1} MB, loaded and rendered by headless chromium in {load_s:.2} s; screenshot {}",
        size as f64 / 1e6,
        shot.display()
    );
}

/// `[fmri] subjects` with `{story}`: every story has its own response files (the nine runs of
/// Le Petit Prince per subject, say). Two stories here, "a" and "b" (both the Alice stimulus):
/// s18 and s22 heard "a", only s18 heard "b"; each file is read with its story's TRs. Naming a
/// story as well, or neither, is an error that says what to do.
#[test]
fn responses_per_story_come_from_a_story_pattern() {
    let tmp = tempfile::tempdir().unwrap();
    let data = support::data_root().canonicalize().unwrap();
    let real = data.join("alice_brennan2016");
    let root = tmp.path().join("data");
    std::fs::create_dir_all(root.join("alice_brennan2016")).unwrap();
    std::os::unix::fs::symlink(
        real.join("alice_stim_shared"),
        root.join("alice_brennan2016/alice_stim_shared"),
    )
    .unwrap();
    std::os::unix::fs::symlink(data.join("corpora_text"), root.join("corpora_text")).unwrap();
    for (story, s) in [("a", "s18"), ("a", "s22"), ("b", "s18")] {
        let dir = root.join("resp").join(story);
        std::fs::create_dir_all(&dir).unwrap();
        let f = format!("{s}-timecourses.txt");
        let text = std::fs::read_to_string(real.join("alice_data_shared/6mm").join(&f)).unwrap();
        // run "b" is 300 volumes long
        let n = if story == "b" { 300 } else { 362 };
        let lines: Vec<&str> = text.lines().take(n).collect();
        std::fs::write(dir.join(&f), lines.join("\n") + "\n").unwrap();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let text = std::fs::read_to_string(src).unwrap();
    let (head, rest) = text.split_once("[[story]]").unwrap();
    let (story, rest) = rest.split_once("[fmri]").unwrap();
    let write = |fmri: &str| {
        let t = format!(
            "{}[[story]]{}[[story]]{}[fmri]{}",
            head.replace(
                "name = \"alice-small\"",
                &format!("name = \"per-story\"\ndata-root = {:?}", root.to_str().unwrap())
            ),
            story.replace("id = \"alice\"", "id = \"a\""),
            story
                .replace("id = \"alice\"", "id = \"b\"")
                .replace("n-trs = 362", "n-trs = 300"),
            rest.replace("story = \"alice\"\n", fmri)
                .replace("alice_brennan2016/alice_data_shared/6mm/s*", "resp/{story}/s*")
        );
        let p = tmp.path().join("p.toml");
        std::fs::write(&p, t).unwrap();
        Plan::load(&p)
    };
    let plan = write("").unwrap();
    let got: Vec<(String, String, usize)> = plan
        .subjects
        .iter()
        .map(|s| (s.story.clone(), s.id.clone(), s.table.data.nrows()))
        .collect();
    assert_eq!(
        got,
        [
            ("a".to_string(), "s18".to_string(), 362),
            ("a".into(), "s22".into(), 362),
            ("b".into(), "s18".into(), 300)
        ]
    );
    let inputs = pipeline::input_records(&plan, None).unwrap();
    let keys: Vec<(String, String)> = inputs
        .responses
        .iter()
        .map(|(st, (s, _))| (st.clone(), s.clone()))
        .collect();
    assert_eq!(keys.len(), 3);
    assert!(inputs.subject_files.contains_key(&("b".to_string(), "s18".to_string())));
    let e = write("story = \"a\"\n").unwrap_err().to_string();
    assert!(e.contains("fmri.story") && e.contains("leave it out"), "{e}");
}

/// The small Alice plan with `[sae]` left at the defaults that matter: `training = "tokens"`, no
/// stimulus in the training data, 6,000 corpus tokens.
fn token_plan_text(store: &Path, out: &Path, name: &str) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/alice-small.toml");
    let text = std::fs::read_to_string(src).unwrap();
    assert!(text.contains("training = \"words\"") && text.contains("include-stimulus = true"));
    text.lines()
        .filter(|l| !l.starts_with("training =") && !l.starts_with("include-stimulus ="))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "name = \"alice-small\"\noutput = \"runs/alice-small\"",
            &format!(
                "name = {name:?}\noutput = {:?}\nstore = {:?}",
                out.to_str().unwrap(),
                store.to_str().unwrap()
            ),
        )
        .replace(
            "corpus-max-words = 1500",
            "corpus-max-words = 1500\ncorpus-max-tokens = 6000",
        )
        .replace(
            "only-subjects = [\"s18\", \"s22\", \"s23\", \"s24\"]",
            "only-subjects = [\"s18\", \"s22\"]",
        )
}

/// The `spool` and `sae-tokens` folders of a store, by layer.
fn token_artifacts(store: &Path, stage: &str, file: &str) -> std::collections::BTreeMap<u64, PathBuf> {
    let mut found = std::collections::BTreeMap::new();
    for shard in std::fs::read_dir(store.join(stage)).unwrap().flatten() {
        for dir in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            found.insert(v["layer"].as_u64().unwrap(), dir.path());
        }
    }
    found
}

/// `[sae] training = "tokens"`, the default: each layer's SAE is trained the way `cortexflow sae
/// train` trains it — the pipeline's spool and SAE weights are byte-identical to those of a `sae
/// train` job with the same settings (seed = `[sae] seed` + layer, resampling on) — from the
/// corpus alone (the stimulus's R² is reported as out of domain); a second pipeline on the same
/// store trains nothing and, with `[taxonomy] tuned-lens`, spools only the last layer and reports
/// the category shares under both lenses; plans that would train on the stimulus or on nothing,
/// or fit a tuned lens without spools, are refused with the key to change.
#[test]
fn pipeline_saes_train_on_corpus_tokens_like_sae_train_and_are_shared_through_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let _lm = support::seed_lm(&store);
    let p = tmp.path().join("p.toml");
    std::fs::write(&p, token_plan_text(&store, &tmp.path().join("out"), "tokens-a")).unwrap();
    let plan = Plan::load(&p).unwrap();
    assert!(plan.file.sae.trains_on_tokens() && !plan.file.sae.include_stimulus);
    let run = |p: &Path| {
        let o = support::bin()
            .arg("run")
            .arg(p)
            .args(["-w", "2"])
            .env("CORTEXFLOW_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
        stdout
    };
    let stdout = run(&p);
    assert!(
        stdout.contains("\"spool\": 2") && stdout.contains("\"sae-tokens\": 2"),
        "{stdout}"
    );

    // the quality table: corpus-token training, held-out tokens, the stimulus out of domain
    let code = r#"
import sys, json, polars as pl
q = pl.read_parquet(sys.argv[1] + "/sae_quality.parquet").sort("layer")
print(json.dumps(q.select("layer", "training", "n_train", "n_heldout", "r2", "r2_stimulus", "stimulus_in_training").to_dicts()))
"#;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(support::run_python(code, &[tmp.path().join("out").to_str().unwrap()]).trim()).unwrap();
    let spools = token_artifacts(&store, "spool", "spool.json");
    let trained = token_artifacts(&store, "sae-tokens", "trained.json");
    assert_eq!(spools.keys().copied().collect::<Vec<_>>(), vec![3, 9]);
    for row in &rows {
        let layer = row["layer"].as_u64().unwrap();
        assert_eq!(row["training"], "tokens");
        assert_eq!(row["stimulus_in_training"], false);
        let r2s = row["r2_stimulus"].as_f64().expect("the stimulus R² is reported");
        assert!(r2s.is_finite() && r2s < 1.0, "{row}");
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(spools[&layer].join("spool.json")).unwrap()).unwrap();
        // the corpus file alone, its last windows held out as one span
        let sources = m["sources"].as_array().unwrap();
        assert_eq!(sources.len(), 1);
        assert!(sources[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("ELTeC-eng_ENG18400_Trollope.txt"));
        let chunks = m["chunks"].as_array().unwrap();
        let rows_of = |held: bool| -> u64 {
            chunks
                .iter()
                .filter(|c| c["heldout"] == held)
                .map(|c| c["rows"].as_u64().unwrap())
                .sum()
        };
        assert_eq!(row["n_train"].as_u64().unwrap(), rows_of(false));
        assert_eq!(row["n_heldout"].as_u64().unwrap(), rows_of(true));
        let first_held = chunks.iter().position(|c| c["heldout"] == true).unwrap();
        assert!(
            chunks[first_held..].iter().all(|c| c["heldout"] == true),
            "held-out chunks come last"
        );
        let n_windows = sources[0]["n_windows"].as_u64().unwrap();
        assert_eq!(chunks.last().unwrap()["windows"][1].as_u64().unwrap(), n_windows);
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(trained[&layer].join("trained.json")).unwrap()).unwrap();
        assert_eq!(t["seed"].as_u64().unwrap(), 1 + layer, "a seed per layer");
        assert_eq!(t["resample_every"].as_u64().unwrap(), 8, "steps / 5");
        assert!(t["resamples"].as_u64().unwrap() >= 1, "{t}");
    }
    let report = std::fs::read_to_string(tmp.path().join("out/report.md")).unwrap();
    assert!(report.contains("(out of domain)"), "{report}");

    // the same SAE from `cortexflow sae train` with the same settings, byte for byte
    for layer in [3u64, 9] {
        let job = tmp.path().join(format!("job{layer}.toml"));
        std::fs::write(
            &job,
            format!(
                "name = \"j\"\noutput = {:?}\ndata-root = {:?}\n[model]\nlayer = {layer}\n[corpus]\n\
                 files = [\"corpora_text/ELTeC-eng_ENG18400_Trollope.txt\"]\nmax-tokens-per-file = 6000\n\
                 [sae]\narchitecture = \"relu\"\nexpansion = 2\nl1 = 5.0\nlr = 3e-4\nbatch-size = 256\n\
                 steps = 40\nwarmup-steps = 100\nresample-every = 8\nbuffer-chunks = 8\nseed = {}\n",
                tmp.path().join(format!("job{layer}")).to_str().unwrap(),
                support::data_root().to_str().unwrap(),
                1 + layer
            ),
        )
        .unwrap();
        let o = support::bin()
            .args(["sae", "train", "--quiet"])
            .arg(&job)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let job_dir = tmp.path().join(format!("job{layer}"));
        let mut n_chunks = 0;
        for e in std::fs::read_dir(job_dir.join("spool")).unwrap().flatten() {
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".npy") {
                n_chunks += 1;
                assert_eq!(
                    std::fs::read(e.path()).unwrap(),
                    std::fs::read(spools[&layer].join(&name)).unwrap(),
                    "layer {layer} {name:?}"
                );
            }
        }
        assert!(n_chunks >= 2);
        assert_eq!(
            std::fs::read(job_dir.join("sae/sae_weights.safetensors")).unwrap(),
            std::fs::read(trained[&layer].join("sae_weights.safetensors")).unwrap(),
            "layer {layer}: the pipeline's SAE is sae train's"
        );
    }

    // a second pipeline (other name, output, layers and feature sets, and a taxonomy with the tuned
    // lens) on the store reuses both; it spools only the last layer (the translators' target)
    let p2 = tmp.path().join("p2.toml");
    let taxonomy =
        "\n[taxonomy]\nrandom-seeds = 10\npermutations = 100\nvariance-partition = false\ntuned-lens = true\n";
    std::fs::write(
        &p2,
        token_plan_text(&store, &tmp.path().join("out2"), "tokens-b")
            .replace(
                "feature-sets = [\"raw\", \"sae\", \"sae-recon\"]",
                "feature-sets = [\"sae\"]",
            )
            .replace("layers = [3, 9]", "layers = [9]")
            + taxonomy,
    )
    .unwrap();
    let stdout = run(&p2);
    let computed = stdout.lines().find(|l| l.contains("artifacts computed")).unwrap();
    let computed = computed.split("reused").next().unwrap();
    assert!(
        !computed.contains("sae-tokens") && computed.contains("\"spool\": 1"),
        "{computed}"
    );
    assert!(computed.contains("\"lens-translator\": 1"), "{computed}");
    let spools = token_artifacts(&store, "spool", "spool.json");
    assert_eq!(spools.keys().copied().collect::<Vec<_>>(), vec![3, 9, 30]);
    // the category shares under both lenses, each over every feature
    let report = std::fs::read_to_string(tmp.path().join("out2/report.md")).unwrap();
    let lines: Vec<&str> = report.lines().filter(|l| l.contains("under the tuned lens")).collect();
    assert_eq!(lines.len(), 1, "{report}");
    for line in lines {
        let counts = |part: &str| -> usize {
            part.split(", ")
                .map(|kv| kv.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
                .sum()
        };
        let logit = line
            .split("logit lens: ")
            .nth(1)
            .unwrap()
            .split("; under")
            .next()
            .unwrap();
        let tuned = line.split("tuned lens: ").nth(1).unwrap().split(" (").next().unwrap();
        assert_eq!((counts(logit), counts(tuned)), (1152, 1152), "{line}");
        let r2: f64 = line
            .split("R² ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(r2 > 0.0 && r2 < 1.0, "{line}");
    }

    // refusals, naming the key
    let text = token_plan_text(&store, &tmp.path().join("out3"), "tokens-c");
    let p3 = tmp.path().join("p3.toml");
    std::fs::write(&p3, text.replace("[sae]\n", "[sae]\ninclude-stimulus = true\n")).unwrap();
    let e = Plan::load(&p3).unwrap_err().to_string();
    assert!(
        e.contains("sae.include-stimulus") && e.contains("training = \"words\""),
        "{e}"
    );
    let no_corpus: String = text
        .lines()
        .filter(|l| !l.starts_with("corpus"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&p3, no_corpus).unwrap();
    let e = Plan::load(&p3).unwrap_err().to_string();
    assert!(e.contains("sae.corpus") && e.contains("training = \"words\""), "{e}");
    std::fs::write(
        &p3,
        text.replace("[sae]\n", "[sae]\ntraining = \"words\"\ninclude-stimulus = true\n"),
    )
    .unwrap();
    let e = Plan::load(&p3).unwrap_err().to_string();
    assert!(e.contains("sae.corpus-max-tokens") && e.contains("tokens"), "{e}");
    let words = text
        .replace("corpus-max-tokens = 6000\n", "")
        .replace("[sae]\n", "[sae]\ntraining = \"words\"\ninclude-stimulus = true\n");
    std::fs::write(&p3, words + taxonomy).unwrap();
    let e = Plan::load(&p3).unwrap_err().to_string();
    assert!(e.contains("taxonomy.tuned-lens"), "{e}");
}
