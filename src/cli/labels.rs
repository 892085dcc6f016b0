//! `cortexflow labels agree A B [C …]`: agreement between label sources (METHOD.md §4). Each
//! source is an answers file (JSONL or TSV, see [`crate::taxonomy::tasks`]); a run writes the
//! built-in labeller's labels as `labels_builtin_L<layer>.tsv` in that format, so the built-in
//! labels, human raters and LLM answers compare directly. Items = the (layer, feature) pairs
//! every source labelled (the count is reported). Two sources: Cohen's κ overall and one-vs-rest
//! per category with percentile-bootstrap CIs over items, and the confusion matrix; three or
//! more: Fleiss' κ (with per-category κ_j and a bootstrap CI) and every pair's Cohen's κ.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::PathBuf;

use ndarray::Array2;

use crate::stats::agreement::{cohen_kappa, cohen_kappa_bootstrap, fleiss_kappa, fleiss_kappa_bootstrap};
use crate::taxonomy::tasks::read_answers;
use crate::taxonomy::Category;
use crate::{Error, Result};

#[derive(Debug, Clone, clap::Args)]
pub struct LabelsAgreeArgs {
    /// Two or more answers files (JSONL or .tsv).
    #[arg(required = true, num_args = 2..)]
    pub sources: Vec<PathBuf>,
    /// Bootstrap resamples of the items.
    #[arg(long, default_value_t = 2000)]
    pub boot: usize,
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What `labels agree` computed.
#[derive(Debug, Clone)]
pub struct AgreementSummary {
    pub n_items: usize,
    /// Cohen's κ of each pair of sources (i < j), with its CI.
    pub pairs: Vec<(usize, usize, f64, f64, f64)>,
    pub fleiss: Option<f64>,
    pub text: String,
}

pub fn run_labels_agree(a: &LabelsAgreeArgs) -> Result<AgreementSummary> {
    if a.sources.len() < 2 {
        return Err(Error::Invalid("labels agree: give at least two label sources".into()));
    }
    let mut maps: Vec<BTreeMap<(usize, u32), usize>> = Vec::new();
    for p in &a.sources {
        let mut m = BTreeMap::new();
        for ans in read_answers(p)? {
            if m.insert((ans.layer, ans.feature), ans.category.index()).is_some() {
                return Err(Error::Invalid(format!(
                    "{}: feature {} of layer {} is labelled twice (agreement needs one label per source)",
                    p.display(),
                    ans.feature,
                    ans.layer
                )));
            }
        }
        maps.push(m);
    }
    let items: BTreeSet<(usize, u32)> = maps[0]
        .keys()
        .filter(|k| maps.iter().all(|m| m.contains_key(k)))
        .copied()
        .collect();
    if items.len() < 2 {
        return Err(Error::Invalid(format!(
            "labels agree: the sources share {} labelled feature(s); at least 2 are needed",
            items.len()
        )));
    }
    let labels: Vec<Vec<usize>> = maps.iter().map(|m| items.iter().map(|k| m[k]).collect()).collect();
    let mut s = String::new();
    let names: Vec<String> = a.sources.iter().map(|p| p.display().to_string()).collect();
    let _ = writeln!(
        s,
        "agreement over {} features labelled by all {} sources (unit: features; bootstrap: {} resamples of features, level {}, seed {})",
        items.len(),
        names.len(),
        a.boot,
        a.level,
        a.seed
    );
    let mut pairs = Vec::new();
    for i in 0..labels.len() {
        for j in i + 1..labels.len() {
            let (k, per, cm) = cohen_kappa(&labels[i], &labels[j], 5)?;
            let ci = cohen_kappa_bootstrap(&labels[i], &labels[j], 5, a.boot, a.level, a.seed)?;
            let _ = writeln!(
                s,
                "\nCohen's κ, {} vs {}: κ = {:.4} [{:.4}, {:.4}] (observed agreement {:.4}, expected {:.4}, n = {})",
                names[i],
                names[j],
                k.kappa,
                ci.overall.lower,
                ci.overall.upper,
                k.observed_agreement,
                k.expected_agreement,
                k.n_items
            );
            for (c, kc) in Category::ALL.iter().zip(&per) {
                let cc = &ci.per_category[c.index()];
                let _ = writeln!(
                    s,
                    "  {:<10} one-vs-rest κ = {:.4} [{:.4}, {:.4}]",
                    c.name(),
                    kc.kappa,
                    cc.lower,
                    cc.upper
                );
            }
            let _ = writeln!(s, "  confusion matrix (rows: {}, columns: {}):", names[i], names[j]);
            let _ = writeln!(
                s,
                "  {:<10} {}",
                "",
                Category::ALL
                    .iter()
                    .map(|c| format!("{:>10}", c.name()))
                    .collect::<String>()
            );
            for (r, c) in Category::ALL.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  {:<10} {}",
                    c.name(),
                    (0..5).map(|q| format!("{:>10}", cm.counts[[r, q]])).collect::<String>()
                );
            }
            pairs.push((i, j, k.kappa, ci.overall.lower, ci.overall.upper));
        }
    }
    let fleiss = if labels.len() >= 3 {
        let mut counts = Array2::<u64>::zeros((items.len(), 5));
        for l in &labels {
            for (i, &c) in l.iter().enumerate() {
                counts[[i, c]] += 1;
            }
        }
        let f = fleiss_kappa(counts.view())?;
        let ci = fleiss_kappa_bootstrap(counts.view(), a.boot, a.level, a.seed)?;
        let _ = writeln!(
            s,
            "\nFleiss' κ over {} sources: {:.4} [{:.4}, {:.4}] (P̄ = {:.4}, P̄e = {:.4}, n = {}); per category: {}",
            labels.len(),
            f.kappa,
            ci.ci.lower,
            ci.ci.upper,
            f.mean_agreement,
            f.expected_agreement,
            f.n_items,
            Category::ALL
                .iter()
                .zip(&f.per_category)
                .map(|(c, k)| format!("{} {k:.4}", c.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Some(f.kappa)
    } else {
        None
    };
    Ok(AgreementSummary {
        n_items: items.len(),
        pairs,
        fleiss,
        text: s,
    })
}

/// `cortexflow labels ask`: labelling tasks answered by an OpenAI-compatible chat-completions
/// endpoint (see [`crate::taxonomy::llm`]).
#[derive(Debug, Clone, clap::Args)]
pub struct LabelsAskArgs {
    /// Labelling tasks (`labelling_tasks_L<layer>.jsonl` of a run), one or more files.
    #[arg(required = true)]
    pub tasks: Vec<PathBuf>,
    /// Answers file (JSONL) to write; an existing one is extended (answered tasks are skipped).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// Ask at most this many tasks per file (the first ones), e.g. for a pilot.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Where `labels ask` and `labels score` send their requests.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EndpointArgs {
    /// TOML file with the endpoint settings (url, model, api-key-env, temperature, seed,
    /// max-tokens, timeout-s, max-retries, backoff-ms); flags and environment override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base URL (before /chat/completions). Default: $OPENAI_BASE_URL, else https://api.openai.com/v1.
    #[arg(long)]
    pub url: Option<String>,
    /// Model. Default: $CORTEXFLOW_LLM_MODEL.
    #[arg(long)]
    pub model: Option<String>,
    /// Environment variable holding the API key (default OPENAI_API_KEY).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Sampling seed sent to the endpoint.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The endpoint settings from `--config`, the environment and the flags (in increasing priority).
pub fn llm_config(a: &EndpointArgs) -> Result<crate::taxonomy::llm::LlmConfig> {
    use crate::taxonomy::llm::LlmConfig;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            toml::from_str::<LlmConfig>(&text).map_err(|e| Error::parse(p, "toml", e.to_string()))?
        }
        None => LlmConfig::new(
            env("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()),
            env("CORTEXFLOW_LLM_MODEL").unwrap_or_default(),
        ),
    };
    if let Some(u) = &a.url {
        cfg.url = u.clone();
    }
    if let Some(m) = &a.model {
        cfg.model = m.clone();
    }
    if let Some(k) = &a.api_key_env {
        cfg.api_key_env = k.clone();
    }
    if a.seed.is_some() {
        cfg.seed = a.seed;
    }
    if cfg.model.is_empty() {
        return Err(Error::Invalid(
            "no LLM model; give --model, `model` in --config, or $CORTEXFLOW_LLM_MODEL".into(),
        ));
    }
    if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
        return Err(Error::Invalid(format!(
            "the LLM endpoint's URL must start with http:// or https://, found `{}`",
            cfg.url
        )));
    }
    Ok(cfg)
}

pub fn run_labels_ask(a: &LabelsAskArgs) -> Result<crate::taxonomy::llm::LlmRun> {
    let cfg = llm_config(&a.endpoint)?;
    let mut tasks = Vec::new();
    for p in &a.tasks {
        let mut t = crate::taxonomy::llm::read_tasks(p)?;
        if let Some(n) = a.limit {
            t.truncate(n);
        }
        tasks.extend(t);
    }
    let pb = crate::progress::progress(tasks.len() as u64, "labelling");
    let run = crate::taxonomy::llm::label_tasks(&cfg, &tasks, &a.out, || pb.inc(1))?;
    pb.finish_and_clear();
    Ok(run)
}

/// `cortexflow labels score`: detection and fuzzing scores of feature explanations (see
/// [`crate::taxonomy::scoring`]) from an OpenAI-compatible endpoint, on the held-out and
/// non-activating contexts of a run's labelling tasks.
#[derive(Debug, Clone, clap::Args)]
pub struct LabelsScoreArgs {
    /// Labelling tasks of a run (`labelling_tasks_L<layer>.jsonl`), one or more files.
    #[arg(required = true)]
    pub tasks: Vec<PathBuf>,
    /// Explanations: JSONL (`layer`, `feature`, `explanation` or `label`, optional `category`) or a
    /// TSV with those columns.
    #[arg(long)]
    pub explanations: PathBuf,
    /// Scores table to write (Parquet, schema data-schemas/explanation_scores.json); a summary per
    /// category and scorer is printed and written beside it as `<out>.summary.tsv`.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the excerpts' order and of the fuzzing scorer's wrong marks.
    #[arg(long, default_value_t = 0)]
    pub order_seed: u64,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// Score at most this many explanations (the first ones), e.g. for a pilot.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// What `labels score` did: the rows, the per-category summary text and the files.
pub struct ScoreSummary {
    pub run: crate::taxonomy::scoring::ScoreRun,
    pub text: String,
    pub files: Vec<PathBuf>,
}

pub fn run_labels_score(a: &LabelsScoreArgs) -> Result<ScoreSummary> {
    use crate::taxonomy::scoring::{read_explanations, score_explanations, summarize};
    let cfg = llm_config(&a.endpoint)?;
    let mut tasks = Vec::new();
    for p in &a.tasks {
        tasks.extend(crate::taxonomy::llm::read_tasks(p)?);
    }
    let mut explanations = read_explanations(&a.explanations)?;
    if let Some(n) = a.limit {
        explanations.truncate(n);
    }
    let pb = crate::progress::progress(2 * explanations.len() as u64, "scoring");
    let run = score_explanations(&cfg, &tasks, &explanations, a.order_seed, || pb.inc(1))?;
    pb.finish_and_clear();
    write_scores(&a.out, &run.rows, &cfg.model, &a.explanations, a.order_seed)?;
    let mut text = String::from("category\tscorer\tn_features\tmean_accuracy\tmean_f1\n");
    for ((cat, scorer), (n, acc, f1)) in summarize(&run.rows) {
        let _ = writeln!(text, "{cat}\t{}\t{n}\t{acc:.4}\t{f1:.4}", scorer.name());
    }
    let mut tsv = a.out.as_os_str().to_owned();
    tsv.push(".summary.tsv");
    let tsv = PathBuf::from(tsv);
    crate::paths::write_atomic(&tsv, text.as_bytes())?;
    Ok(ScoreSummary {
        run,
        text,
        files: vec![a.out.clone(), tsv],
    })
}

fn write_scores(
    path: &std::path::Path,
    rows: &[crate::taxonomy::scoring::ScoreRow],
    model: &str,
    explanations: &std::path::Path,
    seed: u64,
) -> Result<()> {
    use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt16Array, UInt32Array};
    use std::sync::Arc;
    let u32s = |f: fn(&crate::taxonomy::scoring::ScoreRow) -> u32| {
        Arc::new(UInt32Array::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let batch = RecordBatch::try_from_iter_with_nullable(vec![
        (
            "layer",
            Arc::new(UInt16Array::from(
                rows.iter().map(|r| r.layer as u16).collect::<Vec<_>>(),
            )) as ArrayRef,
            false,
        ),
        ("feature", u32s(|r| r.feature), false),
        (
            "category",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.category.clone()).collect::<Vec<_>>(),
            )) as ArrayRef,
            true,
        ),
        (
            "scorer",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.scorer.name()).collect::<Vec<_>>(),
            )) as ArrayRef,
            false,
        ),
        ("n", u32s(|r| r.n()), false),
        ("tp", u32s(|r| r.tp), false),
        ("fp", u32s(|r| r.fp), false),
        ("tn", u32s(|r| r.tn), false),
        ("fn", u32s(|r| r.fn_), false),
        (
            "accuracy",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.accuracy()).collect::<Vec<_>>(),
            )) as ArrayRef,
            false,
        ),
        (
            "precision",
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.precision()).collect::<Vec<_>>(),
            )) as ArrayRef,
            true,
        ),
        (
            "recall",
            Arc::new(Float64Array::from(rows.iter().map(|r| r.recall()).collect::<Vec<_>>())) as ArrayRef,
            true,
        ),
        (
            "f1",
            Arc::new(Float64Array::from(rows.iter().map(|r| r.f1()).collect::<Vec<_>>())) as ArrayRef,
            false,
        ),
    ])
    .map_err(|e| Error::Invalid(format!("building the scores table: {e}")))?;
    let schema = crate::store::schema::TableSchema::builtin("explanation_scores")?;
    let meta = vec![
        ("cortexflow.model".to_string(), model.to_string()),
        (
            "cortexflow.explanations".to_string(),
            explanations.display().to_string(),
        ),
        ("cortexflow.order_seed".to_string(), seed.to_string()),
    ];
    crate::store::write_table_parquet(path, &schema, &Default::default(), &[batch], &meta)
}
