//! `cortexflow run --sae-seeds K`: the pipeline K times, with `[sae] seed` = s, s + 1, …, s + K − 1,
//! each into `OUTPUT/seed-<seed>/` (a complete run folder: tables, report, manifest), all on one
//! artifact store, so the language model's outputs are computed once and only what depends on the
//! SAEs is computed per seed. Then the spread over seeds of the SAE-dependent results, in
//! `OUTPUT/seeds.parquet` (schema `data-schemas/seeds.json`) and `OUTPUT/seeds.md`: per (story,
//! language, layer, feature set, ROI) the mean r over subjects of every seed (`summary`), per
//! (language, layer) the SAE's held-out R², L0 and dead fraction (`sae_quality`), and with
//! `[taxonomy]` per (story, layer, feature set, reference) the set's mean r and its mean
//! difference from the reference (`baselines`), each as mean, sd, min and max over the seeds. A
//! set that does not use the SAE (`raw`) has sd 0.
//!
//! May import: `outputs` (the table writer), `config`, `store` and what they import.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, UInt16Array, UInt32Array};
use arrow::datatypes::{Float64Type, UInt16Type};

use crate::config::Plan;
use crate::dataflow::Topology;
use crate::store::parquet_io::read_parquet;
use crate::{Error, Result};

/// Key of one result: (table, story, language, layer, feature set, vs, ROI, measure).
type Key = (
    String,
    Option<String>,
    String,
    u16,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

/// What [`run_seeds`] did: the seeds, each seed's run folder, and the files written.
pub struct SeedsReport {
    pub seeds: Vec<u64>,
    pub runs: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    pub seconds: f64,
}

/// Runs `plan` once per seed (see the module docs) and writes the spread over seeds.
pub fn run_seeds(plan: Plan, topology: &Topology, k: usize) -> Result<SeedsReport> {
    let t0 = std::time::Instant::now();
    if k < 2 {
        return Err(Error::Invalid(format!("--sae-seeds {k}: give at least 2 seeds")));
    }
    if plan.file.sae.pretrained.is_some() {
        return Err(Error::Invalid(
            "--sae-seeds: this pipeline's SAEs are pretrained ([sae] pretrained); there is no training to seed".into(),
        ));
    }
    if topology.processes > 1 {
        return Err(Error::Invalid("--sae-seeds runs in one process (-n 1)".into()));
    }
    let base = plan.file.sae.seed;
    let out = plan.output.clone();
    let seeds: Vec<u64> = (0..k as u64).map(|i| base + i).collect();
    let mut runs = Vec::new();
    for &seed in &seeds {
        let mut p = plan.clone();
        p.file.sae.seed = seed;
        p.output = out.join(format!("seed-{seed}"));
        tracing::info!("SAE seed {seed}: running into {}", p.output.display());
        let report =
            super::run_on(p, topology)?.ok_or_else(|| Error::Invalid("the seed run wrote no outputs".into()))?;
        runs.push(report.output);
    }
    // every seed's results, by key
    let mut values: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    for run in &runs {
        collect(&run.join("summary.parquet"), "summary", &["mean_r"], &mut values)?;
        collect(
            &run.join("sae_quality.parquet"),
            "sae_quality",
            &["r2", "mean_l0", "dead_fraction"],
            &mut values,
        )?;
        // with [taxonomy]: every feature set against its reference
        let baselines = run.join("baselines.parquet");
        if baselines.is_file() {
            collect(&baselines, "baselines", &["mean_r", "mean_diff"], &mut values)?;
        }
    }
    let batch = seeds_batch(&values, &seeds)?;
    let schema = crate::store::TableSchema::builtin("seeds")?;
    let table = out.join("seeds.parquet");
    let meta = vec![("cortexflow.sae_seeds".to_string(), format!("{seeds:?}"))];
    crate::store::write_table_parquet(&table, &schema, &Default::default(), &[batch], &meta)?;
    let mut files = vec![table];
    let md = out.join("seeds.md");
    crate::paths::write_atomic(&md, markdown(&values, &seeds).as_bytes())?;
    files.push(md);
    Ok(SeedsReport {
        seeds,
        runs,
        files,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Adds the `measures` of every row of one run's table at `path` to `values`.
fn collect(path: &Path, table: &str, measures: &[&str], values: &mut BTreeMap<Key, Vec<f64>>) -> Result<()> {
    let (_, batches, _) = read_parquet(path)?;
    for b in &batches {
        let text =
            |name: &str| -> Option<&StringArray> { b.column_by_name(name).and_then(|c| c.as_string_opt::<i32>()) };
        let layer = b
            .column_by_name("layer")
            .and_then(|c| c.as_primitive_opt::<UInt16Type>())
            .ok_or_else(|| Error::Invalid(format!("{}: no u16 column `layer`", path.display())))?;
        let language =
            text("language").ok_or_else(|| Error::Invalid(format!("{}: no column `language`", path.display())))?;
        let (story, set, vs, roi) = (text("story"), text("feature_set"), text("vs"), text("roi"));
        for m in measures {
            let col = b
                .column_by_name(m)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .ok_or_else(|| Error::Invalid(format!("{}: no f64 column `{m}`", path.display())))?;
            for i in 0..b.num_rows() {
                if col.is_null(i) || !col.value(i).is_finite() {
                    continue;
                }
                let key = (
                    table.to_string(),
                    story.map(|s| s.value(i).to_string()),
                    language.value(i).to_string(),
                    layer.value(i),
                    set.map(|s| s.value(i).to_string()),
                    vs.map(|s| s.value(i).to_string()),
                    roi.map(|s| s.value(i).to_string()),
                    m.to_string(),
                );
                values.entry(key).or_default().push(col.value(i));
            }
        }
    }
    Ok(())
}

/// "mean ± sd [min, max]" of one result's values over the seeds (sd "–" under 2 values).
fn spread_text(v: &[f64]) -> String {
    let (m, sd, lo, hi) = spread(v);
    let sd = sd.map_or("–".into(), |x| format!("{x:.4}"));
    format!("{m:.4} ± {sd} [{lo:.4}, {hi:.4}]")
}

/// (mean, sd with n − 1 (None under 2 values), min, max).
fn spread(v: &[f64]) -> (f64, Option<f64>, f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = (v.len() >= 2).then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, sd, min, max)
}

fn seeds_batch(values: &BTreeMap<Key, Vec<f64>>, seeds: &[u64]) -> Result<RecordBatch> {
    let n = values.len();
    let mut vs = Vec::with_capacity(n);
    let (mut table, mut story, mut language, mut layer, mut set, mut roi, mut measure) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut mean, mut sd, mut min, mut max, mut n_seeds) = (vec![], vec![], vec![], vec![], vec![]);
    for (k, v) in values {
        table.push(k.0.clone());
        story.push(k.1.clone());
        language.push(k.2.clone());
        layer.push(k.3);
        set.push(k.4.clone());
        vs.push(k.5.clone());
        roi.push(k.6.clone());
        measure.push(k.7.clone());
        let (m, s, lo, hi) = spread(v);
        mean.push(m);
        sd.push(s);
        min.push(lo);
        max.push(hi);
        n_seeds.push(v.len() as u32);
    }
    let seeds_text = seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
    let cols: Vec<(&str, ArrayRef, bool)> = vec![
        ("table", Arc::new(StringArray::from(table)), false),
        ("story", Arc::new(StringArray::from(story)), true),
        ("language", Arc::new(StringArray::from(language)), false),
        ("layer", Arc::new(UInt16Array::from(layer)), false),
        ("feature_set", Arc::new(StringArray::from(set)), true),
        ("vs", Arc::new(StringArray::from(vs)), true),
        ("roi", Arc::new(StringArray::from(roi)), true),
        ("measure", Arc::new(StringArray::from(measure)), false),
        ("mean", Arc::new(Float64Array::from(mean)), false),
        ("sd", Arc::new(Float64Array::from(sd)), true),
        ("min", Arc::new(Float64Array::from(min)), false),
        ("max", Arc::new(Float64Array::from(max)), false),
        ("n_seeds", Arc::new(UInt32Array::from(n_seeds)), false),
        ("seeds", Arc::new(StringArray::from(vec![seeds_text; n])), false),
    ];
    RecordBatch::try_from_iter_with_nullable(cols).map_err(|e| Error::Invalid(format!("seeds table: {e}")))
}

/// `seeds.md`: mean r over subjects ("all" ROIs) per layer and feature set, and SAE R² per layer,
/// as mean ± sd [min, max] over the seeds.
fn markdown(values: &BTreeMap<Key, Vec<f64>>, seeds: &[u64]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# SAE seeds\n\n{} runs with [sae] seed {}, each in `seed-<seed>/`; mean ± sd [min, max] over the seeds.\n",
        seeds.len(),
        seeds.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(s, "## Mean r over subjects (all ROIs)\n\n| story | language | layer | feature set | mean r |\n|---|---|---|---|---|");
    for (k, v) in values {
        if k.0 == "summary" && k.6.as_deref() == Some("all") {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                k.1.as_deref().unwrap_or(""),
                k.2,
                k.3,
                k.4.as_deref().unwrap_or(""),
                spread_text(v)
            );
        }
    }
    let _ = writeln!(s, "\n## SAE held-out R²\n\n| language | layer | R² |\n|---|---|---|");
    for (k, v) in values {
        if k.0 == "sae_quality" && k.7 == "r2" {
            let _ = writeln!(s, "| {} | {} | {} |", k.2, k.3, spread_text(v));
        }
    }
    let diffs: Vec<_> = values
        .iter()
        .filter(|(k, _)| k.0 == "baselines" && k.7 == "mean_diff")
        .collect();
    if !diffs.is_empty() {
        let _ = writeln!(
            s,
            "\n## Baselines: mean r difference against the reference\n\n| story | layer | feature set | vs | mean diff |\n|---|---|---|---|---|"
        );
        for (k, v) in diffs {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                k.1.as_deref().unwrap_or(""),
                k.3,
                k.4.as_deref().unwrap_or(""),
                k.5.as_deref().unwrap_or(""),
                spread_text(v)
            );
        }
    }
    s
}
