//! The reading-time pipeline on the real Natural Stories data (../shared/data/naturalstories):
//! inputs joined with every left-out row counted, tables that read back in pyarrow/polars with
//! their documented schemas, the baseline and norm models refitted by R's lme4 on a design
//! rebuilt independently from the exported word table, LRT p-values against scipy, the same
//! tables for 1 and 2 workers, and per-subject rows with crossed random intercepts.
//!
//! To keep the LM work small the runs use the first three stories (~3,100 words) and one layer.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

const STORIES: [&str; 3] = ["1", "2", "3"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first stories of the Natural Stories word table, written to `dir`.
fn story_subset(dir: &Path) -> (PathBuf, usize) {
    stories_subset(dir, &STORIES, "words.tok")
}

/// The stories `stories` of the Natural Stories word table, written to `dir/name`.
fn stories_subset(dir: &Path, stories: &[&str], name: &str) -> (PathBuf, usize) {
    let src = support::data_root().join("naturalstories/naturalstories_RTS_all_stories.tok");
    let text = std::fs::read_to_string(src).unwrap();
    let mut lines = text.lines();
    let mut out = vec![lines.next().unwrap().to_string()];
    out.extend(
        lines
            .filter(|l| stories.contains(&l.split('\t').nth(2).unwrap()))
            .map(str::to_string),
    );
    let n = out.len() - 1;
    let p = dir.join(name);
    std::fs::write(&p, out.join("\n") + "\n").unwrap();
    (p, n)
}

/// A reading pipeline over the subset; `reading_extra` adds or overrides `[reading]` keys.
fn pipeline(dir: &Path, store: &Path, out: &str, words: &Path, rts: &str, reading_extra: &str) -> PathBuf {
    pipeline_with_sae(dir, store, out, words, rts, reading_extra, "")
}

/// As [`pipeline`], with extra `[sae]` keys.
fn pipeline_with_sae(
    dir: &Path,
    store: &Path,
    out: &str,
    words: &Path,
    rts: &str,
    reading_extra: &str,
    sae_extra: &str,
) -> PathBuf {
    let text = format!(
        r#"name = "ns-test"
output = "{out}"
store = "{store}"
data-root = "{data}"

[model]
layers = [6]
window = 256
min-context = 128

[sae]
training = "words"
include-stimulus = true
expansion = 2
l1 = 5.0
steps = 150
batch-size = 512
seed = 3
{sae_extra}

[reading]
words = "{words}"
rts = "{rts}"
parses = "naturalstories/parses_ud_stories-aligned.conllx"
frequency = "wordfreq/small_en_zipf.tsv"
ngram = "naturalstories/freqs_freqs-2.tsv"
norms = "concreteness_brysbaert/Concreteness_ratings_Brysbaert_et_al_BRM.txt"
n-pcs = 10
{reading_extra}
"#,
        out = dir.join(out).display(),
        store = store.display(),
        data = support::data_root().display(),
        words = words.display(),
    );
    let p = dir.join(format!("{out}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs one pipeline at a time: the tests share the LM and SAE artifacts of the same stories, so
/// the second run finds them in the store instead of computing them concurrently.
static RUN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(pipeline: &Path, workers: usize) {
    let _one_at_a_time = RUN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let o = support::bin()
        .args(["run", pipeline.to_str().unwrap(), "-w", &workers.to_string()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cortexflow run failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn store() -> PathBuf {
    // shared by the tests of this file (and kept between runs of the suite): LM outputs are reused
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reading-store")
}

fn check_schema(out: &Path, table: &str, rows: Option<usize>) {
    let mut cmd = Command::new(support::python());
    cmd.arg(root().join("scripts/check_parquet.py"))
        .arg(out.join(format!("{table}.parquet")))
        .arg(root().join(format!("data-schemas/{table}.json")));
    if let Some(n) = rows {
        cmd.args(["--rows", &n.to_string()]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{table}: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn natural_stories_means_match_lme4_and_the_tables_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (words, n_words) = story_subset(tmp.path());
    let rts = "naturalstories/naturalstories_RTS_processed_wordinfo.tsv";
    let p1 = pipeline(tmp.path(), &store(), "out1", &words, rts, "random-seeds = 2");
    run(&p1, 1);
    let out = tmp.path().join("out1");

    // every table reads back with its schema; one comparison per model
    check_schema(&out, "reading_comparison", Some(1 + 1 + 2)); // norm, sae-semantic, 2 random
    check_schema(&out, "reading_words", Some(n_words));
    check_schema(&out, "reading_fixed", None);
    check_schema(&out, "reading_random", None);
    check_schema(&out, "reading_features", Some(2 * 576));
    check_schema(&out, "sae_quality", Some(1));
    check_schema(&out, "feature_examples", None);
    assert!(out.join("reading_by_layer.png").is_file());

    // the RT rows of the other 7 stories are reported as unmatched, not silently dropped
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let all_rows = std::fs::read_to_string(support::data_root().join(rts))
        .unwrap()
        .lines()
        .count()
        - 1;
    let unmatched = all_rows - n_words;
    assert!(
        report.contains(&format!("| position not in the story | {unmatched} |")),
        "{report}"
    );

    // independent design from reading_words.parquet → lme4 (ML) logLik of the baseline and norm models
    let design = tmp.path().join("design.csv");
    let check = support::run_python(
        &std::fs::read_to_string(root().join("scripts/reading_check.py")).unwrap(),
        &[out.to_str().unwrap(), design.to_str().unwrap(), "1"],
    );
    let check: serde_json::Value = serde_json::from_str(check.trim()).unwrap();
    assert!(check["p_check_max_rel"].as_f64().unwrap() < 1e-8, "{check}");
    assert!(check["chi2_check_max_abs"].as_f64().unwrap() < 1e-9, "{check}");
    let r = Command::new(std::env::var("CORTEXFLOW_RSCRIPT").unwrap_or_else(|_| "Rscript".into()))
        .args([
            "-e",
            r#"suppressMessages(library(lme4)); d <- read.csv(commandArgs(TRUE)[1]); d$story <- factor(d$story)
ctl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-11, maxfun = 1e5))
f0 <- y ~ length + log_freq + sentence_position + lm_surprisal + ngram_surprisal + prev1_length + prev1_log_freq + (1 | story)
m0 <- lmer(f0, data = d, REML = FALSE, control = ctl)
m1 <- lmer(update(f0, . ~ . + norm + norm_missing), data = d, REML = FALSE, control = ctl)
cat(sprintf("%.10f %.10f %d\n", as.numeric(logLik(m0)), as.numeric(logLik(m1)), nrow(d)))"#,
        ])
        .arg(&design)
        .output()
        .expect("Rscript runs (run `make setup`)");
    assert!(r.status.success(), "lme4: {}", String::from_utf8_lossy(&r.stderr));
    let v: Vec<f64> = String::from_utf8_lossy(&r.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let cmp = support::run_python(
        "import sys, pyarrow.parquet as pq\n\
         c = [r for r in pq.read_table(sys.argv[1]).to_pylist() if r['model'] == 'norm'][0]\n\
         print(c['loglik_base'], c['loglik_full'], c['n_obs'], c['df'])",
        &[out.join("reading_comparison.parquet").to_str().unwrap()],
    );
    let c: Vec<f64> = cmp.split_whitespace().map(|s| s.parse().unwrap()).collect();
    assert_eq!(c[2], v[2], "rows: cortexflow {} vs the rebuilt design {}", c[2], v[2]);
    assert!((c[0] - v[0]).abs() < 1e-6, "baseline logLik {} vs lme4 {}", c[0], v[0]);
    assert!(
        (c[1] - v[1]).abs() < 1e-6,
        "norm model logLik {} vs lme4 {}",
        c[1],
        v[1]
    );
    assert_eq!(c[3], 2.0, "norm + missing indicator");

    // the user's route: `cortexflow export --format csv`, then examples/reading_lrt.R (base R reads
    // the CSV, lme4 refits both models; the script stops unless logLik and chi2 agree to 1e-6)
    let o = support::bin()
        .args(["export", out.to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    assert!(o.status.success(), "export: {}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(std::env::var("CORTEXFLOW_RSCRIPT").unwrap_or_else(|_| "Rscript".into()))
        .arg(root().join("examples/reading_lrt.R"))
        .arg(out.join("export-csv"))
        .output()
        .expect("Rscript runs (run `make setup`)");
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{text}");
    assert!(
        o.status.success(),
        "examples/reading_lrt.R: {}{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("(within 1e-6)"), "{text}");

    // same tables with 2 workers (the LM and SAE come from the store; the reading stage reruns)
    let p2 = pipeline(tmp.path(), &store(), "out2", &words, rts, "random-seeds = 2");
    run(&p2, 2);
    let same = support::run_python(
        "import sys, pyarrow.parquet as pq\n\
         a, b = sys.argv[1], sys.argv[2]\n\
         print(all(pq.read_table(f'{a}/{t}.parquet').equals(pq.read_table(f'{b}/{t}.parquet'))\n\
                   for t in ['reading_comparison', 'reading_fixed', 'reading_random', 'reading_words',
                           'reading_features', 'feature_examples']))",
        &[out.to_str().unwrap(), tmp.path().join("out2").to_str().unwrap()],
    );
    assert_eq!(same.trim(), "True");
}

/// The norm block (METHOD.md §8): Binder's attributes and SUBTLEX counts beside concreteness give
/// the model `norms` (every norm column, one missing indicator per table, df counted), and the
/// SAE components are tested over it, nested: the `…-beyond-norms` model's reference is the
/// `norms` model, its df the number of components, its p the χ² tail (scipy).
#[test]
fn the_norm_block_holds_every_norm_and_the_sae_is_tested_beyond_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (words, _) = story_subset(tmp.path());
    let rts = "naturalstories/naturalstories_RTS_processed_wordinfo.tsv";
    let extra = r#"random-seeds = 0

[[reading.norm-tables]]
name = "binder"
file = "binder2016/WordSet1_Ratings.csv"
columns = ["Vision..Arousal"]

[[reading.norm-tables]]
name = "subtlex"
file = "subtlex_us/subtlex_us_counts.tsv"
word-column = "word"
columns = ["count"]
log10 = true
"#;
    let p = pipeline(tmp.path(), &store(), "norms", &words, rts, extra);
    run(&p, 1);
    let out = tmp.path().join("norms");
    check_schema(&out, "reading_comparison", Some(4)); // norm, norms, sae-semantic, sae-semantic-beyond-norms
    let check = support::run_python(
        "import sys, pyarrow.parquet as pq\n\
         from scipy.stats import chi2\n\
         rows = {r['model']: r for r in pq.read_table(sys.argv[1]).to_pylist()}\n\
         n, b, s = rows['norms'], rows['sae-semantic-beyond-norms'], rows['sae-semantic']\n\
         print(n['df'], b['df'], s['df'])\n\
         print(abs(b['loglik_base'] - n['loglik_full']) < 1e-9, b['loglik_full'] >= n['loglik_full'] - 1e-9)\n\
         print(abs(b['p_value'] - chi2.sf(b['chi2'], b['df'])) <= 1e-8 * max(chi2.sf(b['chi2'], b['df']), 1e-300))\n\
         print(abs(n['loglik_base'] - s['loglik_base']) < 1e-9, n['loglik_full'] > rows['norm']['loglik_full'])",
        &[out.join("reading_comparison.parquet").to_str().unwrap()],
    );
    let lines: Vec<&str> = check.trim().lines().collect();
    let dfs: Vec<usize> = lines[0].split_whitespace().map(|v| v.parse().unwrap()).collect();
    // norm + its indicator, the 65 Binder attributes and their indicator, SUBTLEX and its indicator
    assert_eq!(dfs[0], 2 + 65 + 1 + 1 + 1, "norm-block columns: {check}");
    assert_eq!(
        dfs[1], dfs[2],
        "the SAE adds as many components over the norms as over the baseline"
    );
    assert_eq!(lines[1], "True True", "nested in the norms model: {check}");
    assert_eq!(lines[2], "True", "p is the χ² tail: {check}");
    assert_eq!(lines[3], "True True", "both start from the same baseline: {check}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("Norm block (model `norms`)") && report.contains("`binder` (65 columns)"),
        "{report}"
    );

    // a column range backwards, or a column that is not there, is refused naming the file
    for (cols, what) in [("[\"Arousal..Vision\"]", "comes after"), ("[\"Visoin\"]", "Visoin")] {
        let bad = extra.replace("[\"Vision..Arousal\"]", cols);
        let p = pipeline(tmp.path(), &store(), "bad", &words, rts, &bad);
        let o = support::bin().arg("run").arg(&p).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("WordSet1_Ratings.csv") && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn per_subject_rows_get_crossed_random_intercepts_and_counted_exclusions() {
    let tmp = tempfile::tempdir().unwrap();
    let (words, n_words) = story_subset(tmp.path());
    // per-subject rows in the processed_RTs.tsv layout, simulated from the real per-word means:
    // RT = mean + subject offset + noise, 12 subjects, plus one row of each kind that must be left out
    let means =
        std::fs::read_to_string(support::data_root().join("naturalstories/naturalstories_RTS_processed_wordinfo.tsv"))
            .unwrap();
    let mut rng = cortexflow::stats::SplitMix64::new(11);
    let mut rows = vec!["WorkerId\titem\tzone\tword\tRT".to_string()];
    let mut offsets = Vec::new();
    let (mut below, mut above) = (0, 0);
    for s in 0..12 {
        let offset = 40.0 * rng.normal();
        offsets.push(offset);
        for l in means.lines().skip(1) {
            let f: Vec<&str> = l.split('\t').collect();
            if !STORIES.contains(&f[2]) {
                continue;
            }
            let rt = f[4].parse::<f64>().unwrap() + offset + 60.0 * rng.normal();
            below += usize::from(rt < 100.0);
            above += usize::from(rt > 3000.0);
            rows.push(format!("w{s:02}\t{}\t{}\t{}\t{rt:.1}", f[2], f[1], f[0]));
        }
    }
    rows.push("w00\t1\t5000\tnowhere\t300".into()); // position not in the story
    rows.push("w00\t1\t2\tnot-the-word\t300".into()); // word differs
    rows.push("w00\t1\t3\t.\t30".into()); // (word check first) → mismatch as well
    rows.push("w01\t1\t2\tyou\t50".into()); // below 100 ms
    rows.push("w01\t1\t3\twere\t9000".into()); // above 3000 ms
    rows.push("w02\t1\t4\tto\tNA".into()); // missing
    let rts = tmp.path().join("rts.tsv");
    std::fs::write(&rts, rows.join("\n") + "\n").unwrap();
    // a TopK SAE trained in the pipeline (k = 8; dead latents after 5,000 rows enter AuxK)
    let p = pipeline_with_sae(
        tmp.path(),
        &store(),
        "subj",
        &words,
        rts.to_str().unwrap(),
        "rt-column = \"RT\"\nsubject-column = \"WorkerId\"\nrandom-seeds = 0\nfeatures = \"all\"\n\
         subject-slopes = [\"lm_surprisal\"]",
        "architecture = \"topk\"\nk = 8\ndead-after-tokens = 5000",
    );
    run(&p, 2);
    let out = tmp.path().join("subj");
    check_schema(&out, "reading_comparison", Some(2)); // norm, sae-all
    let q = support::run_python(
        "import sys, pyarrow.parquet as pq\n\
         q = pq.read_table(sys.argv[1]).to_pylist()[0]\n\
         print(q['mean_l0'], q['d_sae'], q['r2'])",
        &[out.join("sae_quality.parquet").to_str().unwrap()],
    );
    let q: Vec<f64> = q.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert!(q[0] > 7.0 && q[0] <= 8.0, "TopK k = 8: mean L0 {}", q[0]);
    assert_eq!(q[1], 1152.0);
    assert!(q[2] > 0.3, "TopK SAE held-out R² {}", q[2]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("(1 + lm_surprisal | subject) + (1 | word)"), "{report}");
    for line in [
        "| position not in the story | 1 |".to_string(),
        "| word differs from the story's | 2 |".into(),
        "| RT missing | 1 |".into(),
        format!("| RT < 100 ms | {} |", below + 1),
        format!("| RT > 3000 ms | {} |", above + 1),
    ] {
        assert!(report.contains(line.as_str()), "missing `{line}` in\n{report}");
    }
    let groups = support::run_python(
        "import sys, pyarrow.parquet as pq\n\
         r = [x for x in pq.read_table(sys.argv[1]).to_pylist() if x['model'] == 'baseline']\n\
         print(' '.join(f\"{x['group']}={x['n_levels']}\" for x in r))",
        &[out.join("reading_random.parquet").to_str().unwrap()],
    );
    let g = groups.trim();
    assert!(
        g.starts_with("subject=12 subject=12 word="),
        "intercept and slope by subject: {g}"
    );
    let n_levels: usize = g
        .split("word=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n_levels > n_words / 2 && n_levels < n_words, "{g}");
    assert!(g.ends_with("Residual=None"), "{g}");
    // the simulated subject offsets are recovered: the ML variance of (1 | subject) is close to
    // their variance (ddof 0); not equal, because the 100 ms trimming removes the low tail of the
    // subjects with negative offsets (their means rise) — within 15%
    let v = support::run_python(
        "import sys, pyarrow.parquet as pq\n\
         r = [x for x in pq.read_table(sys.argv[1]).to_pylist() if x['model'] == 'baseline' and x['group'] == 'subject' and x['effect'] == '(Intercept)']\n\
         print(r[0]['variance'])",
        &[out.join("reading_random.parquet").to_str().unwrap()],
    );
    let var: f64 = v.trim().parse().unwrap();
    let m = offsets.iter().sum::<f64>() / 12.0;
    let want = offsets.iter().map(|o| (o - m).powi(2)).sum::<f64>() / 12.0;
    assert!(
        (var - want).abs() < 0.15 * want,
        "subject variance {var}, simulated offsets' {want}"
    );
}

#[test]
fn a_pretrained_saelens_folder_replaces_training() {
    use cortexflow::sae::{save_saelens_sae, ReluSae, Sae, SaeKind, SaeMeta};
    let tmp = tempfile::tempdir().unwrap();
    let (words, _) = story_subset(tmp.path());
    let k = 12;
    let sae = Sae::new(SaeKind::TopK { k }, ReluSae::random(576, 768, 5), true).unwrap();
    save_saelens_sae(&sae, &SaeMeta::default(), &tmp.path().join("saes/layer6")).unwrap();
    let pattern = tmp.path().join("saes/layer{layer}");
    let p = pipeline_with_sae(
        tmp.path(),
        &store(),
        "pre",
        &words,
        "naturalstories/naturalstories_RTS_processed_wordinfo.tsv",
        "random-seeds = 0\nfeatures = \"all\"\nmin-active = 1",
        &format!("pretrained = \"{}\"", pattern.display()),
    );
    run(&p, 1);
    let out = tmp.path().join("pre");
    let q = support::run_python(
        "import sys, pyarrow.parquet as pq\n\
         q = pq.read_table(sys.argv[1]).to_pylist()[0]\n\
         print(q['n_train'], q['d_sae'], q['mean_l0'])",
        &[out.join("sae_quality.parquet").to_str().unwrap()],
    );
    let q: Vec<f64> = q.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!((q[0], q[1]), (0.0, 768.0), "not trained; the folder's width");
    assert!(q[2] > 0.0 && q[2] <= k as f64, "mean L0 {} with k = {k}", q[2]);
    // a folder of the wrong width is refused before anything runs
    let bad = Sae::new(SaeKind::Relu, ReluSae::random(100, 200, 5), true).unwrap();
    save_saelens_sae(&bad, &SaeMeta::default(), &tmp.path().join("bad/layer6")).unwrap();
    let p = pipeline_with_sae(
        tmp.path(),
        &store(),
        "bad",
        &words,
        "naturalstories/naturalstories_RTS_processed_wordinfo.tsv",
        "",
        &format!("pretrained = \"{}\"", tmp.path().join("bad/layer{layer}").display()),
    );
    let o = support::bin().args(["validate", p.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("sae.pretrained") && e.contains("d_in"), "{e}");
}

/// The reading models are stages of the dataflow: a story added to a reading pipeline's output
/// folder computes that story's LM outputs only (the SAE, trained on a corpus here, and the other
/// stories' activations and codes are reused), recomputes the baseline and the layer's models
/// (fitted on all rows), and the update is logged like an fMRI pipeline's: a `changes` table
/// (story and words added; reading baseline and layer models retracted and added; no SAE change)
/// and a manifest at update 1.
#[test]
fn a_new_story_computes_only_its_lm_outputs_and_the_reading_models_and_is_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let rts = "naturalstories/naturalstories_RTS_processed_wordinfo.tsv";
    let sae = "corpus = [\"corpora_text/ELTeC-eng_ENG18400_Trollope.txt\"]\ncorpus-max-words = 1500\n";
    let (two, _) = stories_subset(tmp.path(), &["1", "2"], "two.tok");
    let (three, n_three) = stories_subset(tmp.path(), &["1", "2", "3"], "three.tok");
    let write = |words: &Path, name: &str| {
        let p = pipeline_with_sae(tmp.path(), &store, "out", words, rts, "random-seeds = 1", sae);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("include-stimulus = true", "include-stimulus = false")
            .replace("steps = 150", "steps = 60");
        let q = tmp.path().join(name);
        std::fs::write(&q, text).unwrap();
        q
    };
    let computed = |pipeline: &Path| -> String {
        let o = support::bin()
            .args(["run", pipeline.to_str().unwrap(), "-w", "2"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "cortexflow run failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let at = stdout
            .find("artifacts computed")
            .expect("the run prints what it computed");
        let line = stdout[at..].lines().next().unwrap();
        // the computed part only (the reused part follows)
        line.split(", reused").next().unwrap().to_string()
    };
    let first = computed(&write(&two, "two.toml"));
    assert!(
        first.contains("\"reading-base\": 1") && first.contains("\"reading-layer\": 1"),
        "{first}"
    );
    let second = computed(&write(&three, "three.toml"));
    // story 3 only: its words and layer-6 vectors from the LM, one layer's codes; the SAE is reused
    assert!(
        second.contains("\"lm\": 2,") && second.contains("\"codes\": 1,"),
        "{second}"
    );
    assert!(!second.contains("\"sae\":"), "the SAE is not retrained: {second}");
    assert!(
        second.contains("\"reading-base\": 1") && second.contains("\"reading-layer\": 1"),
        "{second}"
    );

    let out = tmp.path().join("out");
    check_schema(&out, "reading_words", Some(n_three));
    check_schema(&out, "changes", None);
    let log = support::run_python(
        "import sys, json, polars as pl\n\
         c = pl.read_parquet(sys.argv[1]).filter(pl.col('epoch') == 1)\n\
         rows = sorted((r['change'], r['kind'], r['story'] or '') for r in c.iter_rows(named=True))\n\
         print(json.dumps(rows))\n\
         m = json.load(open(sys.argv[2]))\n\
         print(m['epoch'], len(m['reading']), len(m['stories']))",
        &[
            out.join("changes.parquet").to_str().unwrap(),
            out.join("manifest.json").to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = log.trim().lines().collect();
    let rows: Vec<(String, String, String)> = serde_json::from_str(lines[0]).unwrap();
    let has = |change: &str, kind: &str, story: &str| rows.iter().any(|r| r.0 == change && r.1 == kind && r.2 == story);
    assert!(has("added", "story", "3") && has("added", "words", "3"), "{rows:?}");
    for kind in ["reading_base", "reading"] {
        assert!(has("added", kind, "") && has("retracted", kind, ""), "{kind}: {rows:?}");
    }
    assert!(!rows.iter().any(|r| r.1 == "sae"), "no SAE change: {rows:?}");
    assert!(
        !rows.iter().any(|r| r.2 == "1" || r.2 == "2"),
        "nothing of stories 1 and 2 changes: {rows:?}"
    );
    assert_eq!(
        lines[1], "1 1 3",
        "manifest: update 1, one reading data set, three stories"
    );
}

#[test]
fn watch_follows_the_reading_word_table_and_its_outputs_equal_a_fresh_run() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    // shared with the other tests of this file: the LM outputs of stories 1–3 are computed once
    let store = store();
    let rts = "naturalstories/naturalstories_RTS_processed_wordinfo.tsv";
    let sae = "corpus = [\"corpora_text/ELTeC-eng_ENG18400_Trollope.txt\"]\ncorpus-max-words = 1500\n";
    let (two, _) = stories_subset(tmp.path(), &["1", "2"], "two.tok");
    let (three, n_three) = stories_subset(tmp.path(), &["1", "2", "3"], "three.tok");
    let words = tmp.path().join("words.tok");
    std::fs::copy(&two, &words).unwrap();
    let write = |out: &str| {
        let p = pipeline_with_sae(tmp.path(), &store, out, &words, rts, "random-seeds = 1", sae);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("include-stimulus = true", "include-stimulus = false")
            .replace("steps = 150", "steps = 60");
        std::fs::write(&p, text).unwrap();
        p
    };
    let watched = write("watched");
    let out = tmp.path().join("watched");
    let epoch = || -> Option<u64> {
        let text = std::fs::read_to_string(out.join("manifest.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["epoch"].as_u64()
    };
    let mut child = support::bin()
        .args([
            "watch",
            watched.to_str().unwrap(),
            "--poll",
            "0.2",
            "--updates",
            "1",
            "-w",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while epoch() != Some(0) {
        if let Some(s) = child.try_wait().unwrap() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "watch exited ({s}) before its first update:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(900), "no first update");
        std::thread::sleep(Duration::from_millis(100));
    }
    // story 3 is added to the word table (written beside it, then moved in: one change)
    let staged = tmp.path().join("words.tok.new");
    std::fs::copy(&three, &staged).unwrap();
    std::fs::rename(&staged, &words).unwrap();
    let o = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    assert_eq!(epoch(), Some(1), "{log}");
    assert!(
        log.contains("reading data +1 −1"),
        "the reading data is one new record: {log}"
    );

    // the update added story 3 and refitted the reading models on the new data
    check_schema(&out, "reading_words", Some(n_three));
    let changes = support::run_python(
        "import sys, json, polars as pl\n\
         c = pl.read_parquet(sys.argv[1]).filter(pl.col('epoch') == 1)\n\
         print(json.dumps(sorted(set((r['change'], r['kind'], r['story'] or '') for r in c.iter_rows(named=True)))))",
        &[out.join("changes.parquet").to_str().unwrap()],
    );
    let rows: Vec<(String, String, String)> = serde_json::from_str(changes.trim()).unwrap();
    let has = |change: &str, kind: &str, story: &str| rows.iter().any(|r| r.0 == change && r.1 == kind && r.2 == story);
    assert!(has("added", "story", "3"), "{rows:?}");
    for kind in ["reading_base", "reading"] {
        assert!(has("added", kind, "") && has("retracted", kind, ""), "{kind}: {rows:?}");
    }

    // the watched tables equal those of a fresh run on the final word table
    let fresh = write("fresh");
    run(&fresh, 2);
    let same = support::run_python(
        "import sys, polars as pl\n\
         a, b = sys.argv[1], sys.argv[2]\n\
         for t in ['reading_comparison', 'reading_fixed', 'reading_words', 'reading_features']:\n\
         \x20   print(t, pl.read_parquet(f'{a}/{t}.parquet').equals(pl.read_parquet(f'{b}/{t}.parquet')))",
        &[out.to_str().unwrap(), tmp.path().join("fresh").to_str().unwrap()],
    );
    assert_eq!(
        same.trim(),
        "reading_comparison True\nreading_fixed True\nreading_words True\nreading_features True",
        "{same}"
    );
}

/// One label set for everything: with `features = "taxonomy"` the reading models test the
/// features the `[taxonomy]` labels call semantic (those of them that are live: the random pool's
/// eligibility), and each other category's live features, with `feature_labels.parquet` beside
/// them; the two half-configurations are refused.
#[test]
fn reading_features_are_the_taxonomy_labels_semantic_set_and_each_category() {
    let tmp = tempfile::tempdir().unwrap();
    let (words, _) = story_subset(tmp.path());
    let rts = "naturalstories/naturalstories_RTS_processed_wordinfo.tsv";
    let taxonomy = "\n[taxonomy]\nrandom-seeds = 10\npermutations = 100\nvariance-partition = false\n";
    let extra = format!("features = \"taxonomy\"\nrandom-seeds = 2\n{taxonomy}");
    let p = pipeline(tmp.path(), &store(), "tax", &words, rts, &extra);
    run(&p, 2);
    let out = tmp.path().join("tax");
    check_schema(&out, "feature_labels", None);
    check_schema(&out, "reading_comparison", None);
    let code = r#"
import sys, polars as pl
out = sys.argv[1]
labels = pl.read_parquet(out + "/feature_labels.parquet")
feats = pl.read_parquet(out + "/reading_features.parquet")
cmp = pl.read_parquet(out + "/reading_comparison.parquet")
min_active = int(sys.argv[2])
live = set(feats.filter(pl.col("n_active") >= min_active)["feature"].to_list())
def live_of(cat):
    return sorted(set(labels.filter(pl.col("category") == cat)["feature"].to_list()) & live)
sem = live_of("semantic")
selected = sorted(feats.filter(pl.col("selected"))["feature"].to_list())
rows = {r["model"] if r["seed"] is None else f"random{r['seed']}": r for r in cmp.to_dicts()}
print(len(sem) > 0, selected == sem, rows["sae-taxonomy-semantic"]["n_features"] == len(sem))
print(all(rows[f"random{s}"]["n_features"] == len(sem) for s in (1, 2)))
cats = [c for c in ["syntactic", "lexical", "prediction", "other"] if live_of(c)]
print(len(cats) > 0, all(rows[f"category:{c}"]["n_features"] == len(live_of(c)) for c in cats))
print(sorted(k for k in rows if k.startswith("category:")) == sorted(f"category:{c}" for c in cats))
"#;
    let check = support::run_python(code, &[out.to_str().unwrap(), "20"]); // min-active's default
    assert_eq!(
        check.trim().lines().collect::<Vec<_>>(),
        ["True True True", "True", "True True", "True"],
        "{check}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("One label set for everything"), "{report}");

    for (extra, key) in [
        ("features = \"taxonomy\"\n".to_string(), "reading.features"),
        (format!("features = \"semantic\"\n{taxonomy}"), "`taxonomy`"),
    ] {
        let p = pipeline(tmp.path(), &store(), "bad", &words, rts, &extra);
        let e = cortexflow::config::Plan::load(&p).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
}
