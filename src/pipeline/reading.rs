//! `cortexflow run` on a reading-time pipeline (a pipeline file with `[reading]`, e.g.
//! `pipelines/natural-stories.toml`): the stories' words go through the same dataflow as the fMRI
//! pipeline (LM → one SAE per layer → codes, cached in the artifact store), then per layer the
//! comparison of [`crate::reading::analysis`] runs on the joined reading times, and the tables
//! `reading_comparison`, `reading_fixed`, `reading_random`, `reading_words`, `reading_features`,
//! `feature_examples`, `sae_quality` (schemas in data-schemas/), a plot and `report.md` are written to the output
//! folder, each file atomically, after every table was built.
//!
//! Models. Per-word means (no `subject-column`): `rt ~ controls + (1 | story)`, a by-story random
//! intercept (the words of a story share its reader pool and its topic). Per-subject rows:
//! `rt ~ controls + (1 | subject) + (1 | word)`, crossed random intercepts for subjects and items
//! (the item is the word token, story and position). Controls, each z-scored over the model rows:
//! length, log frequency, position in sentence, LM surprisal (bits, from the extract stage),
//! n-gram surprisal (when configured), and the previous `spillover` words' length and log
//! frequency. All fits are ML; all models of a run use the same rows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt16Array, UInt32Array, UInt64Array,
};
use ndarray::Array2;

use crate::config::Plan;
use crate::dataflow;
use crate::outputs::columns::{batch, utf8, write_tables};
use crate::outputs::tables;
use crate::pipeline::{self, RunOptions, RunReport};
use crate::reading::analysis::{self, BaseDesign, Comparison, FeatureEvidence, SelectionRule};
use crate::reading::section::ReadingInputs;
use crate::stages::{self, Ctx};

use crate::reading::lmm::{LmmFit, TermData};
use crate::{Error, Result};

/// Per word: LM surprisal and next-token entropy (bits), from the extract stage.
fn lm_word_info(ctx: &Ctx, snap: &dataflow::Snapshot, r: &ReadingInputs) -> Result<(Vec<Option<f64>>, Vec<f64>)> {
    let mut surprisal = Vec::new();
    let mut entropy = Vec::new();
    for s in &r.stories {
        let (_, id) = snap
            .words
            .iter()
            .find(|(story, _)| story == &s.id)
            .ok_or_else(|| Error::Invalid(format!("the LM stage produced nothing for story `{}`", s.id)))?;
        let a = ctx.store.load_arrays("lm", id)?;
        let info = a.f64("words")?;
        for row in info.rows() {
            surprisal.push(row[1].is_finite().then_some(row[1]));
            entropy.push(row[2]);
        }
    }
    Ok((surprisal, entropy))
}

/// Builds the shared rows and baseline design; returns it with the per-row exclusion reason of
/// every observation (None = in the model) and the control names.
fn base_design(r: &ReadingInputs, lm_surprisal: &[Option<f64>]) -> Result<(BaseDesign, Vec<Option<String>>)> {
    let d = &r.data;
    let s = &r.section;
    let words = &d.words;
    let story_of: Vec<usize> = (0..d.story_offsets.len() - 1)
        .flat_map(|k| std::iter::repeat_n(k, d.story_offsets[k + 1] - d.story_offsets[k]))
        .collect();
    let mut controls: Vec<(String, Box<dyn Fn(usize) -> Option<f64>>)> = vec![
        ("length".into(), Box::new(|w| Some(words[w].length as f64))),
        ("log_freq".into(), Box::new(|w| words[w].log_freq)),
        (
            "sentence_position".into(),
            Box::new(|w| words[w].sentence_position.map(|p| p as f64)),
        ),
        ("lm_surprisal".into(), Box::new(|w| lm_surprisal[w])),
    ];
    if s.ngram.is_some() {
        controls.push(("ngram_surprisal".into(), Box::new(|w| words[w].ngram_surprisal)));
    }
    for k in 1..=s.spillover {
        let story_of = story_of.clone();
        let prev = move |w: usize| (w >= k && story_of[w - k] == story_of[w]).then(|| w - k);
        let p2 = prev.clone();
        controls.push((
            format!("prev{k}_length"),
            Box::new(move |w| prev(w).map(|v| words[v].length as f64)),
        ));
        controls.push((
            format!("prev{k}_log_freq"),
            Box::new(move |w| p2(w).and_then(|v| words[v].log_freq)),
        ));
    }
    let mut reasons = Vec::with_capacity(d.obs.len());
    let mut rows = Vec::new();
    for (i, o) in d.obs.iter().enumerate() {
        let w = &words[o.word];
        let reason = if s.exclude_sentence_initial && w.sentence_position == Some(1) {
            Some("sentence-initial".to_string())
        } else if s.exclude_sentence_final && w.sentence_final {
            Some("sentence-final".to_string())
        } else {
            controls
                .iter()
                .find(|(_, f)| f(o.word).is_none_or(|v| !v.is_finite()))
                .map(|(n, _)| format!("no {n}"))
        };
        if reason.is_none() {
            rows.push(i);
        }
        reasons.push(reason);
    }
    if rows.len() < controls.len() + 10 {
        return Err(Error::Invalid(format!(
            "reading: only {} reading times remain after exclusions; see the exclusion counts in the report",
            rows.len()
        )));
    }
    let p0 = 1 + controls.len();
    let mut x = Array2::<f64>::zeros((rows.len(), p0));
    x.column_mut(0).fill(1.0);
    for (r, &i) in rows.iter().enumerate() {
        for (c, (_, f)) in controls.iter().enumerate() {
            x[[r, 1 + c]] = f(d.obs[i].word).expect("complete rows only");
        }
    }
    crate::stats::zscore_columns(x.slice_mut(ndarray::s![.., 1..]));
    let mut names = vec!["(Intercept)".to_string()];
    names.extend(controls.iter().map(|(n, _)| n.clone()));
    let word_of_row: Vec<usize> = rows.iter().map(|&i| d.obs[i].word).collect();
    let y: Vec<f64> = rows.iter().map(|&i| d.obs[i].rt).collect();
    let factor = |name: &str, keys: Vec<String>| -> TermData {
        let mut levels: Vec<String> = keys.clone();
        levels.sort();
        levels.dedup();
        let level = keys.iter().map(|k| levels.binary_search(k).expect("present")).collect();
        TermData {
            name: name.into(),
            effect_names: vec!["(Intercept)".into()],
            level,
            n_levels: levels.len(),
            z: Array2::ones((keys.len(), 1)),
        }
    };
    let terms = if d.per_subject {
        let mut subject = factor(
            "subject",
            rows.iter()
                .map(|&i| d.obs[i].subject.clone().unwrap_or_default())
                .collect(),
        );
        // by-subject random slopes of chosen controls (correlated with the intercept, as lme4's
        // `(1 + x | subject)`), on the z-scored control columns
        for slope in &s.subject_slopes {
            let Some(c) = names.iter().position(|n| n == slope).filter(|&c| c > 0) else {
                return Err(Error::Invalid(format!(
                    "reading.subject-slopes: `{slope}` is not a control of this model ({})",
                    names[1..].join(", ")
                )));
            };
            let mut z = Array2::<f64>::zeros((rows.len(), subject.z.ncols() + 1));
            z.slice_mut(ndarray::s![.., ..subject.z.ncols()]).assign(&subject.z);
            z.column_mut(subject.z.ncols()).assign(&x.column(c));
            subject.z = z;
            subject.effect_names.push(slope.clone());
        }
        vec![
            subject,
            factor(
                "word",
                rows.iter()
                    .map(|&i| {
                        let w = &words[d.obs[i].word];
                        format!("{}.{:06}", w.story, w.position)
                    })
                    .collect(),
            ),
        ]
    } else {
        vec![factor(
            "story",
            rows.iter().map(|&i| words[d.obs[i].word].story.clone()).collect(),
        )]
    };
    Ok((
        BaseDesign {
            word_of_row,
            y,
            x,
            names,
            terms,
        },
        reasons,
    ))
}

/// The formula of the baseline in lme4 notation (for the tables and the report).
fn base_formula(b: &BaseDesign) -> String {
    let groups: Vec<String> = b
        .terms
        .iter()
        .map(|t| {
            let effects: Vec<&str> = t
                .effect_names
                .iter()
                .map(|e| if e == "(Intercept)" { "1" } else { e.as_str() })
                .collect();
            format!("({} | {})", effects.join(" + "), t.name)
        })
        .collect();
    format!("rt ~ {} + {}", b.names[1..].join(" + "), groups.join(" + "))
}

/// One fitted model, for the coefficient and variance tables.
struct FittedModel {
    layer: Option<usize>,
    model: String,
    seed: Option<u64>,
    fit: LmmFit,
}

/// Everything the reading stage computed.
pub struct ReadingResult {
    pub comparisons: Vec<Comparison>,
    pub evidence: Vec<(usize, Vec<FeatureEvidence>)>,
    /// Per layer: top words with context, density (src/sae/evidence.rs).
    pub examples: Vec<(usize, Vec<crate::sae::evidence::FeatureSummary>)>,
    pub formula: String,
    pub exclusions: BTreeMap<String, usize>,
    pub n_rows: usize,
    fitted: Vec<FittedModel>,
    reasons: Vec<Option<String>>,
    lm_surprisal: Vec<Option<f64>>,
}

/// Runs a reading-time plan end to end and writes its outputs.
pub fn run(plan: Plan, opts: &RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let ctx = pipeline::context(plan, opts.workers)?;
    let r = ctx.plan.reading.clone().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: a reading-time run needs a [reading] section",
            ctx.plan.source.display()
        ))
    })?;
    let inputs = pipeline::prepare_inputs(&ctx)?;
    let mut results = dataflow::run(ctx.clone(), vec![pipeline::single_epoch(&inputs)], opts.workers)?;
    let result = results.pop().expect("one epoch");
    let snap = &result.snapshot;
    let (lm_surprisal, entropy) = lm_word_info(&ctx, snap, &r)?;
    let (base, reasons) = base_design(&r, &lm_surprisal)?;
    let mut exclusions = BTreeMap::new();
    for reason in reasons.iter().flatten() {
        *exclusions.entry(reason.clone()).or_insert(0usize) += 1;
    }
    let base_fit = analysis::fit_base(&base)?;
    let formula = base_formula(&base);
    let mut comparisons = Vec::new();
    let mut fitted = vec![FittedModel {
        layer: None,
        model: "baseline".into(),
        seed: None,
        fit: base_fit.clone(),
    }];
    let n_obs = base.y.len();
    let mut push = |layer,
                    model: &str,
                    seed,
                    n_features,
                    var_expl,
                    full: LmmFit,
                    lrt: (f64, f64, usize, f64),
                    fitted: &mut Vec<FittedModel>| {
        comparisons.push(Comparison {
            layer,
            model: model.to_string(),
            seed,
            n_features,
            variance_explained: var_expl,
            n_obs,
            loglik_base: base_fit.log_likelihood,
            loglik_full: full.log_likelihood,
            delta_loglik: lrt.0,
            chi2: lrt.1,
            df: lrt.2,
            p_value: lrt.3,
            aic_base: base_fit.aic,
            aic_full: full.aic,
            converged: base_fit.converged && full.converged,
        });
        fitted.push(FittedModel {
            layer,
            model: model.to_string(),
            seed,
            fit: full,
        });
    };
    // norms: layer-independent
    if r.section.norms.is_some() {
        let (cols, names) = analysis::norm_columns(&r.data.words);
        let (full, dll, chi2, df, p) = analysis::compare(&base, &base_fit, cols.view(), &names)?;
        push(None, "norm", None, None, None, full, (dll, chi2, df, p), &mut fitted);
    }
    let rule = SelectionRule {
        min_active: r.section.min_active,
        ..Default::default()
    };
    let sae_model = format!("sae-{}", r.selection.as_str());
    let mut evidence = Vec::new();
    let mut examples = Vec::new();
    let word_texts: Vec<String> = r.data.words.iter().map(|w| w.text.clone()).collect();
    let pb = crate::progress::progress(
        (snap.saes.len() * (1 + r.section.random_seeds)) as u64,
        "reading models (layer × feature set)",
    );
    // the stories' activation ids (all in the store after the dataflow: no model is loaded)
    let lm_outputs = r
        .stories
        .iter()
        .map(|s| stages::lm_stage(&ctx, &mut None, s))
        .collect::<Result<Vec<_>>>()?;
    for (k, sae_id) in &snap.saes {
        let layer = &k.layer;
        let layer_started = Instant::now();
        let mut mats = Vec::new();
        for lm in &lm_outputs {
            let act = lm
                .layers
                .iter()
                .find(|(l, _)| l == layer)
                .map(|(_, id)| id.clone())
                .expect("plan layer");
            let codes = stages::codes_stage(&ctx, &act, sae_id)?;
            mats.push(ctx.store.load_arrays("codes", &codes)?.f32("x")?.to_owned());
        }
        let codes = analysis::stack(&mats)?;
        let summaries = crate::sae::evidence::feature_evidence(
            codes.view(),
            &word_texts,
            &r.data.story_offsets,
            crate::sae::evidence::DEFAULT_TOP,
            crate::sae::evidence::DEFAULT_CONTEXT,
        );
        let ev = analysis::feature_evidence(
            codes.view(),
            &summaries,
            &r.data.story_offsets,
            &r.data.words,
            &entropy,
            r.selection,
            &rule,
        );
        let selected: Vec<usize> = ev.iter().filter(|e| e.selected).map(|e| e.feature as usize).collect();
        let alive: Vec<usize> = ev
            .iter()
            .filter(|e| e.n_active >= rule.min_active)
            .map(|e| e.feature as usize)
            .collect();
        let z = analysis::zcodes(codes.view(), &alive);
        let mut run_set =
            |cols: &[usize], model: &str, seed: Option<u64>, fitted: &mut Vec<FittedModel>| -> Result<()> {
                if cols.is_empty() {
                    return Ok(());
                }
                let (pcs, expl) = analysis::pca_scores(&z, cols, r.section.n_pcs)?;
                let names: Vec<String> = (1..=pcs.ncols()).map(|k| format!("pc{k}")).collect();
                let (full, dll, chi2, df, p) = analysis::compare(&base, &base_fit, pcs.view(), &names)?;
                push(
                    Some(*layer),
                    model,
                    seed,
                    Some(cols.len()),
                    Some(expl),
                    full,
                    (dll, chi2, df, p),
                    fitted,
                );
                Ok(())
            };
        run_set(&selected, &sae_model, None, &mut fitted)?;
        pb.inc(1);
        for seed in 1..=r.section.random_seeds as u64 {
            let subset = analysis::random_subset(&alive, selected.len(), seed);
            run_set(&subset, "random", Some(seed), &mut fitted)?;
            pb.inc(1);
        }
        tracing::info!(
            layer = *layer,
            selected = selected.len(),
            alive = alive.len(),
            seconds = layer_started.elapsed().as_secs_f64(),
            "reading models of the layer done"
        );
        evidence.push((*layer, ev));
        examples.push((*layer, summaries));
    }
    pb.finish_and_clear();
    let res = ReadingResult {
        comparisons,
        evidence,
        examples,
        formula,
        exclusions,
        n_rows: n_obs,
        fitted,
        reasons,
        lm_surprisal,
    };
    let files = write_outputs(&ctx, snap, &r, &res)?;
    Ok(RunReport {
        output: ctx.plan.output.clone(),
        files,
        epoch: 0,
        result,
        seconds: started.elapsed().as_secs_f64(),
        stage_seconds: ctx.store.seconds(),
    })
}

fn comparison_batch(res: &ReadingResult) -> Result<RecordBatch> {
    let c = &res.comparisons;
    let f = |g: &dyn Fn(&Comparison) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(c.iter().map(g))) };
    batch(vec![
        (
            "layer",
            Arc::new(UInt16Array::from_iter(c.iter().map(|x| x.layer.map(|l| l as u16)))),
            true,
        ),
        ("model", utf8(c.iter().map(|x| x.model.clone()).collect()), false),
        ("seed", Arc::new(UInt64Array::from_iter(c.iter().map(|x| x.seed))), true),
        (
            "n_features",
            Arc::new(UInt32Array::from_iter(c.iter().map(|x| x.n_features.map(|n| n as u32)))),
            true,
        ),
        (
            "variance_explained",
            Arc::new(Float64Array::from_iter(c.iter().map(|x| x.variance_explained))),
            true,
        ),
        (
            "n_obs",
            Arc::new(UInt32Array::from_iter_values(c.iter().map(|x| x.n_obs as u32))),
            false,
        ),
        ("loglik_base", f(&|x| x.loglik_base), false),
        ("loglik_full", f(&|x| x.loglik_full), false),
        ("delta_loglik", f(&|x| x.delta_loglik), false),
        ("chi2", f(&|x| x.chi2), false),
        (
            "df",
            Arc::new(UInt32Array::from_iter_values(c.iter().map(|x| x.df as u32))),
            false,
        ),
        ("p_value", f(&|x| x.p_value), false),
        ("aic_base", f(&|x| x.aic_base), false),
        ("aic_full", f(&|x| x.aic_full), false),
        (
            "converged",
            Arc::new(BooleanArray::from_iter(c.iter().map(|x| Some(x.converged)))),
            false,
        ),
        ("baseline_formula", utf8(vec![res.formula.clone(); c.len()]), false),
    ])
}

fn fixed_batch(res: &ReadingResult) -> Result<RecordBatch> {
    let (mut layer, mut model, mut seed, mut term, mut est, mut se, mut t) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for m in &res.fitted {
        for (j, name) in m.fit.fixed_names.iter().enumerate() {
            layer.push(m.layer.map(|l| l as u16));
            model.push(m.model.clone());
            seed.push(m.seed);
            term.push(name.clone());
            est.push(m.fit.beta[j]);
            se.push(m.fit.se[j]);
            t.push(m.fit.t[j]);
        }
    }
    batch(vec![
        ("layer", Arc::new(UInt16Array::from_iter(layer)), true),
        ("model", utf8(model), false),
        ("seed", Arc::new(UInt64Array::from_iter(seed)), true),
        ("term", utf8(term), false),
        ("estimate", Arc::new(Float64Array::from(est)), false),
        ("se", Arc::new(Float64Array::from(se)), false),
        ("t", Arc::new(Float64Array::from(t)), false),
    ])
}

fn random_batch(res: &ReadingResult) -> Result<RecordBatch> {
    let (mut layer, mut model, mut seed, mut group, mut variance, mut levels) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut effect_col: Vec<String> = vec![];
    for m in &res.fitted {
        for (name, effects, cov) in &m.fit.covariances {
            for (e, effect) in effects.iter().enumerate() {
                layer.push(m.layer.map(|l| l as u16));
                model.push(m.model.clone());
                seed.push(m.seed);
                group.push(name.clone());
                effect_col.push(effect.clone());
                variance.push(cov[[e, e]]);
                levels.push(m.fit.n_levels.iter().find(|(g, _)| g == name).map(|(_, n)| *n as u32));
            }
        }
        layer.push(m.layer.map(|l| l as u16));
        model.push(m.model.clone());
        seed.push(m.seed);
        group.push("Residual".into());
        effect_col.push(String::new());
        variance.push(m.fit.sigma2);
        levels.push(None);
    }
    batch(vec![
        ("layer", Arc::new(UInt16Array::from_iter(layer)), true),
        ("model", utf8(model), false),
        ("seed", Arc::new(UInt64Array::from_iter(seed)), true),
        ("group", utf8(group), false),
        ("effect", utf8(effect_col), false),
        ("variance", Arc::new(Float64Array::from(variance)), false),
        ("n_levels", Arc::new(UInt32Array::from_iter(levels)), true),
    ])
}

fn words_batch(r: &ReadingInputs, res: &ReadingResult) -> Result<RecordBatch> {
    let w = &r.data.words;
    let mut n_rts = vec![0u32; w.len()];
    let mut sum = vec![0.0f64; w.len()];
    let mut in_model = vec![0u32; w.len()];
    let mut first_reason: Vec<Option<String>> = vec![None; w.len()];
    for (o, reason) in r.data.obs.iter().zip(&res.reasons) {
        n_rts[o.word] += 1;
        sum[o.word] += o.rt;
        match reason {
            None => in_model[o.word] += 1,
            Some(x) => {
                first_reason[o.word].get_or_insert_with(|| x.clone());
            }
        }
    }
    let opt_f =
        |g: &dyn Fn(usize) -> Option<f64>| -> ArrayRef { Arc::new(Float64Array::from_iter((0..w.len()).map(g))) };
    batch(vec![
        ("story", utf8(w.iter().map(|x| x.story.clone()).collect()), false),
        (
            "position",
            Arc::new(Int64Array::from_iter_values(w.iter().map(|x| x.position))),
            false,
        ),
        ("word", utf8(w.iter().map(|x| x.text.clone()).collect()), false),
        (
            "pos",
            Arc::new(StringArray::from_iter(w.iter().map(|x| x.pos.clone()))),
            true,
        ),
        (
            "sentence_position",
            Arc::new(UInt32Array::from_iter(
                w.iter().map(|x| x.sentence_position.map(|p| p as u32)),
            )),
            true,
        ),
        (
            "length",
            Arc::new(UInt32Array::from_iter_values(w.iter().map(|x| x.length as u32))),
            false,
        ),
        ("log_freq", opt_f(&|i| w[i].log_freq), true),
        ("ngram_surprisal", opt_f(&|i| w[i].ngram_surprisal), true),
        ("lm_surprisal", opt_f(&|i| res.lm_surprisal[i]), true),
        ("norm", opt_f(&|i| w[i].norm), true),
        ("n_rts", Arc::new(UInt32Array::from(n_rts.clone())), false),
        (
            "mean_rt",
            opt_f(&|i| (n_rts[i] > 0).then(|| sum[i] / n_rts[i] as f64)),
            true,
        ),
        ("n_in_model", Arc::new(UInt32Array::from(in_model)), false),
        ("exclusion", Arc::new(StringArray::from_iter(first_reason)), true),
    ])
}

fn features_batch(res: &ReadingResult) -> Result<RecordBatch> {
    let rows: Vec<(usize, &FeatureEvidence)> = res
        .evidence
        .iter()
        .flat_map(|(l, ev)| ev.iter().map(move |e| (*l, e)))
        .collect();
    let f = |g: &dyn Fn(&FeatureEvidence) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|(_, e)| g(e))))
    };
    batch(vec![
        (
            "layer",
            Arc::new(UInt16Array::from_iter_values(rows.iter().map(|(l, _)| *l as u16))),
            false,
        ),
        (
            "feature",
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|(_, e)| e.feature))),
            false,
        ),
        (
            "n_active",
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|(_, e)| e.n_active as u32),
            )),
            false,
        ),
        ("mean_activation", f(&|e| e.mean_activation), false),
        ("open_class_fraction", f(&|e| e.open_class_fraction), false),
        (
            "distinct_forms",
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|(_, e)| e.distinct_forms as u32),
            )),
            false,
        ),
        ("entropy_r", f(&|e| e.entropy_r), false),
        (
            "selected",
            Arc::new(BooleanArray::from_iter(rows.iter().map(|(_, e)| Some(e.selected)))),
            false,
        ),
        (
            "top_words",
            utf8(rows.iter().map(|(_, e)| e.top_words.join(" | ")).collect()),
            false,
        ),
    ])
}

fn examples_batch(r: &ReadingInputs, res: &ReadingResult) -> Result<RecordBatch> {
    let (mut layer, mut feature, mut rank, mut story, mut position) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut left, mut word, mut right, mut act, mut density) = (vec![], vec![], vec![], vec![], vec![]);
    for (l, feats) in &res.examples {
        for f in feats {
            for e in &f.examples {
                let w = &r.data.words[r.data.story_offsets[e.text] + e.word];
                layer.push(*l as u16);
                feature.push(f.feature);
                rank.push(e.rank);
                story.push(w.story.clone());
                position.push(w.position);
                left.push(e.left.join(" "));
                word.push(e.token.clone());
                right.push(e.right.join(" "));
                act.push(e.activation);
                density.push(f.density);
            }
        }
    }
    batch(vec![
        ("layer", Arc::new(UInt16Array::from(layer)), false),
        ("feature", Arc::new(UInt32Array::from(feature)), false),
        ("rank", Arc::new(UInt32Array::from(rank)), false),
        ("story", utf8(story), false),
        ("position", Arc::new(Int64Array::from(position)), false),
        ("left_context", utf8(left), false),
        ("word", utf8(word), false),
        ("right_context", utf8(right), false),
        ("activation", Arc::new(arrow::array::Float32Array::from(act)), false),
        ("density", Arc::new(Float64Array::from(density)), false),
    ])
}

/// Builds every table, checks it against its schema, then writes tables, plot and report.
fn write_outputs(ctx: &Ctx, snap: &dataflow::Snapshot, r: &ReadingInputs, res: &ReadingResult) -> Result<Vec<PathBuf>> {
    let out = &ctx.plan.output;
    let tables = [
        ("reading_comparison", comparison_batch(res)?),
        ("reading_fixed", fixed_batch(res)?),
        ("reading_random", random_batch(res)?),
        ("reading_words", words_batch(r, res)?),
        ("reading_features", features_batch(res)?),
        ("feature_examples", examples_batch(r, res)?),
        ("sae_quality", tables::sae_quality_batch(ctx, snap)?),
    ];
    let mut files = write_tables(ctx, &tables, out)?;
    let plot = out.join("reading_by_layer.png");
    plot_by_layer(&res.comparisons, &plot)?;
    files.push(plot);
    let report = out.join("report.md");
    crate::paths::write_atomic(&report, markdown(ctx, snap, r, res)?.as_bytes())?;
    files.push(report);
    Ok(files)
}

/// ΔlogLik by layer: the selected features' PCs, the random subsets (mean and min–max) and the norm.
fn plot_by_layer(c: &[Comparison], path: &Path) -> Result<()> {
    let sae: Vec<(usize, f64)> = c
        .iter()
        .filter(|x| x.model.starts_with("sae-"))
        .filter_map(|x| x.layer.map(|l| (l, x.delta_loglik)))
        .collect();
    let mut rand: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for x in c.iter().filter(|x| x.model == "random") {
        if let Some(l) = x.layer {
            rand.entry(l).or_default().push(x.delta_loglik);
        }
    }
    let norm = c.iter().find(|x| x.model == "norm").map(|x| x.delta_loglik);
    crate::report::plot_delta_loglik_by_layer(&sae, &rand, norm, path)
}

fn markdown(ctx: &Ctx, snap: &dataflow::Snapshot, r: &ReadingInputs, res: &ReadingResult) -> Result<String> {
    use std::fmt::Write;
    let d = &r.data;
    let j = &d.report;
    let mut m = String::new();
    let _ = writeln!(m, "# {}: reading times and SAE features\n", ctx.plan.file.name);
    let _ = writeln!(
        m,
        "{} stories, {} words; reading times from `{}` ({}).\n",
        d.stories.len(),
        d.words.len(),
        r.section.rts.display(),
        if d.per_subject {
            "per-subject rows"
        } else {
            "per-word means"
        }
    );
    let _ = writeln!(m, "## Inputs and exclusions\n");
    let _ = writeln!(m, "| | rows |\n|---|---:|");
    let _ = writeln!(m, "| RT rows read | {} |", j.rt_rows);
    let _ = writeln!(m, "| joined to a story word | {} |", j.joined);
    let _ = writeln!(m, "| position not in the story | {} |", j.unmatched);
    let _ = writeln!(m, "| word differs from the story's | {} |", j.word_mismatch);
    let _ = writeln!(m, "| RT missing | {} |", j.missing_rt);
    let _ = writeln!(m, "| RT < {} ms | {} |", r.section.min_rt, j.below_min_rt);
    let _ = writeln!(m, "| RT > {} ms | {} |", r.section.max_rt, j.above_max_rt);
    for (reason, n) in &res.exclusions {
        let _ = writeln!(m, "| excluded: {reason} | {n} |");
    }
    let _ = writeln!(m, "| **in the models** | **{}** |\n", res.n_rows);
    let _ = writeln!(
        m,
        "Story words without an RT: {}; without a parse: {}; without a frequency: {}; without an n-gram \
         surprisal: {}; without a norm value: {}.\n",
        j.words_without_rt,
        j.words_without_parse,
        j.words_without_frequency,
        j.words_without_ngram,
        j.words_without_norm
    );
    for e in j.unmatched_examples.iter().chain(&j.word_mismatch_examples) {
        let _ = writeln!(m, "- {e}");
    }
    let _ = writeln!(
        m,
        "\n## Model comparison (ML, likelihood-ratio tests against the baseline)\n"
    );
    let _ = writeln!(m, "Baseline: `{}`, {} rows.", res.formula, res.n_rows);
    let _ = writeln!(
        m,
        "Added: the top {} principal components of the layer's `{}` SAE features (or fewer when the \
         features span fewer directions), of random subsets of the same number of live features (seeds \
         1–{}), or the word norm `{}`. df = number of added columns.\n",
        r.section.n_pcs,
        r.selection.as_str(),
        r.section.random_seeds,
        r.section.norms_column
    );
    let _ = writeln!(
        m,
        "| layer | model | features | var. expl. | ΔlogLik | χ² | df | p | random: mean ΔlogLik [min, max] | random p < 0.05 |"
    );
    let _ = writeln!(m, "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|");
    for c in &res.comparisons {
        if c.model == "random" {
            continue;
        }
        let (rand_txt, rand_sig) = match c.layer {
            Some(l) => {
                let v: Vec<&Comparison> = res
                    .comparisons
                    .iter()
                    .filter(|x| x.model == "random" && x.layer == Some(l))
                    .collect();
                if v.is_empty() {
                    ("–".to_string(), "–".to_string())
                } else {
                    let d: Vec<f64> = v.iter().map(|x| x.delta_loglik).collect();
                    let mean = d.iter().sum::<f64>() / d.len() as f64;
                    let lo = d.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = d.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sig = v.iter().filter(|x| x.p_value < 0.05).count();
                    (format!("{mean:.1} [{lo:.1}, {hi:.1}]"), format!("{sig}/{}", v.len()))
                }
            }
            None => ("–".to_string(), "–".to_string()),
        };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.3e} | {} | {} |",
            c.layer.map(|l| l.to_string()).unwrap_or_else(|| "–".into()),
            c.model,
            c.n_features.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
            c.variance_explained
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "–".into()),
            c.delta_loglik,
            c.chi2,
            c.df,
            c.p_value,
            rand_txt,
            rand_sig
        );
    }
    if res.comparisons.iter().any(|c| !c.converged) {
        let _ = writeln!(
            m,
            "\nSome fits did not converge: see `converged` in reading_comparison.parquet."
        );
    }
    let _ = writeln!(m, "\n![ΔlogLik by layer](reading_by_layer.png)\n");
    let _ = writeln!(m, "## SAEs\n");
    let _ = writeln!(
        m,
        "| layer | features | selected | R² (held out) | mean L0 | dead |\n|---:|---:|---:|---:|---:|---:|"
    );
    for (k, id) in &snap.saes {
        let layer = &k.layer;
        let q = stages::sae_record(ctx, id)?;
        let sel = res
            .evidence
            .iter()
            .find(|(l, _)| l == layer)
            .map(|(_, e)| e.iter().filter(|x| x.selected).count())
            .unwrap_or(0);
        let _ = writeln!(
            m,
            "| {} | {} | {} | {:.3} | {:.1} | {:.3} |",
            layer, q.d_sae, sel, q.r2, q.mean_l0, q.dead_fraction
        );
    }
    let _ = writeln!(
        m,
        "\nThe `semantic` selection is a provisional rule (src/reading/analysis.rs) until the taxonomy \
         stage labels features; `reading_features.parquet` lists every feature's evidence."
    );
    Ok(m)
}
