//! The reading-time stages (METHOD.md §8; `[reading]` pipelines such as
//! `pipelines/natural-stories.toml`), as stages of the dataflow like the fits:
//!
//! * [`base_stage`]: the stories' words (LM surprisal and entropy, from the LM stage) and the
//!   joined reading times → the baseline mixed model `rt ~ controls + random terms` (ML), its
//!   rows and exclusions, and the norm comparison when `[reading] norms` is set: one
//!   [`ReadingBase`] artifact per reading data set;
//! * [`layer_stage`]: one layer's SAE codes of every story + the baseline → the selected
//!   features' PCs and `random-seeds` random subsets compared with the baseline by
//!   likelihood-ratio tests, with the features' evidence and top examples: one [`ReadingLayer`]
//!   artifact per (language, layer).
//!
//! A new story changes the reading data and adds that story's LM, codes and words; the other
//! stories' LM outputs and codes are reused, and the base and layer models (fitted on all rows)
//! are recomputed. Per-word means: `rt ~ controls + (1 | story)`; per-subject rows:
//! `rt ~ controls + (1 | subject) + (1 | word)` (+ by-subject slopes). Controls, each z-scored
//! over the model rows: length, log frequency, position in sentence, LM surprisal (bits), n-gram
//! surprisal (when configured), and the previous `spillover` words' length and log frequency.
//! All fits are ML; all models of a run use the same rows.
//!
//! May import: `config` (the plan's reading inputs) and everything below it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::Ctx;
use crate::reading::analysis::{self, BaseDesign, Comparison, FeatureEvidence, SelectionRule};
use crate::reading::lmm::{LmmFit, TermData};
use crate::reading::section::ReadingInputs;
use crate::sae::evidence::FeatureSummary;
use crate::store::artifacts::{ArtifactId, KeyBuilder};
use crate::{Error, Result};

/// Revisions: 2 — the mixed models are fitted by BOBYQA with lme4's convergence checks.
const REV_READING_BASE: u32 = 3;
const REV_READING_LAYER: u32 = 3;

/// The model of the norm block (baseline + every norm), and the reference of the SAE-beyond-norms
/// comparisons.
pub const NORMS_MODEL: &str = "norms";

/// One fitted model, for the coefficient and variance tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FittedModel {
    pub layer: Option<usize>,
    pub model: String,
    pub seed: Option<u64>,
    pub fit: LmmFit,
}

/// The baseline of a reading data set (artifact `reading-base`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadingBase {
    /// The reading data the baseline was fitted on ([`reading_data_id`]); the layer stages and the
    /// tables find the inputs by it ([`Ctx::reading_data`]).
    pub data_id: ArtifactId,
    /// The baseline in lme4 notation.
    pub formula: String,
    /// Observations left out of every model, by reason.
    pub exclusions: BTreeMap<String, usize>,
    /// Rows in every model.
    pub n_rows: usize,
    /// Per observation: why it is not in the models (None = it is).
    pub reasons: Vec<Option<String>>,
    /// Per word: LM surprisal (bits; None where the LM gave none).
    pub lm_surprisal: Vec<Option<f64>>,
    /// Per word: next-token entropy (bits).
    #[serde(with = "crate::store::json_float::vec")]
    pub entropy: Vec<f64>,
    /// The baseline fit, then the norm model's when `[reading] norms` is set.
    pub fitted: Vec<FittedModel>,
    /// The norm comparison, when `[reading] norms` is set.
    pub comparisons: Vec<Comparison>,
}

/// The comparisons of one layer (artifact `reading-layer`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadingLayer {
    pub layer: usize,
    /// The selected features' model, then the random subsets in seed order.
    pub comparisons: Vec<Comparison>,
    pub fitted: Vec<FittedModel>,
    pub evidence: Vec<FeatureEvidence>,
    /// Top words with context and density per feature (src/sae/evidence.rs).
    pub examples: Vec<FeatureSummary>,
}

/// The reading inputs of the reading data `data_id`, from the context's registry (the plan's own,
/// and those `watch` registered as the files changed); an error naming the pipeline file when
/// there are none.
pub fn reading_inputs(ctx: &Ctx, data_id: &str) -> Result<Arc<ReadingInputs>> {
    ctx.reading_data
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(data_id)
        .cloned()
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no reading data `{}` in this run (a reading-time run needs a [reading] section)",
                ctx.plan.source.display(),
                &data_id[..data_id.len().min(12)]
            ))
        })
}

/// Registers `plan`'s reading inputs in the context under their data id (so stages of a later
/// epoch find inputs that changed after the context was made); returns the id.
pub fn register_reading_data(ctx: &Ctx, plan: &crate::config::Plan) -> Result<Option<ArtifactId>> {
    let (Some(r), Some(id)) = (&plan.reading, reading_data_id(plan)?) else {
        return Ok(None);
    };
    ctx.reading_data
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), Arc::new(r.clone()));
    Ok(Some(id))
}

/// The reading inputs a stored baseline was fitted on.
pub fn base_inputs(ctx: &Ctx, base_id: &str) -> Result<(ReadingBase, Arc<ReadingInputs>)> {
    let base: ReadingBase = ctx.store.load_json("reading-base", base_id)?;
    let r = reading_inputs(ctx, &base.data_id)?;
    Ok((base, r))
}

/// The content id of a plan's reading data ([`crate::config::reading_data_id`], taken when the
/// plan was read). The dataflow's reading input record carries it; base and layer artifacts are
/// keyed by it.
pub fn reading_data_id(plan: &crate::config::Plan) -> Result<Option<ArtifactId>> {
    Ok(plan.reading.as_ref().map(|r| r.data_id.clone()))
}

/// Per word: LM surprisal and next-token entropy (bits), from the LM stage's words artifacts
/// (`words`: story id → artifact), in the reading data's story order.
fn lm_word_info(ctx: &Ctx, r: &ReadingInputs, words: &BTreeMap<&str, &str>) -> Result<(Vec<Option<f64>>, Vec<f64>)> {
    let mut surprisal = Vec::new();
    let mut entropy = Vec::new();
    for s in &r.stories {
        let id = words
            .get(s.id.as_str())
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

/// The baseline of the reading data `data_id`, from the stories' words artifacts ((story,
/// words artifact) pairs). Returns the `reading-base` artifact id.
pub fn base_stage(ctx: &Ctx, data_id: &str, words: &[(String, ArtifactId)]) -> Result<ArtifactId> {
    let r = &*reading_inputs(ctx, data_id)?;
    let mut key = KeyBuilder::new("reading-base", REV_READING_BASE).part("data", data_id);
    for (story, id) in words {
        key = key.part("story", story).part("words", id);
    }
    let id = key.finish();
    ctx.store.json("reading-base", &id, || {
        let words: BTreeMap<&str, &str> = words.iter().map(|(s, a)| (s.as_str(), a.as_str())).collect();
        let (lm_surprisal, entropy) = lm_word_info(ctx, r, &words)?;
        let (base, reasons) = base_design(r, &lm_surprisal)?;
        let mut exclusions = BTreeMap::new();
        for reason in reasons.iter().flatten() {
            *exclusions.entry(reason.clone()).or_insert(0usize) += 1;
        }
        let base_fit = analysis::fit_base(&base)?;
        let mut fitted = vec![FittedModel {
            layer: None,
            model: "baseline".into(),
            seed: None,
            fit: base_fit.clone(),
        }];
        let mut comparisons = Vec::new();
        // the norm, and the norm block (every norm table and the norm): layer-independent
        let mut add_norm_model = |model: &str, (cols, names): (Array2<f64>, Vec<String>)| -> Result<()> {
            let (full, dll, chi2, df, p) = analysis::compare(&base, &base_fit, cols.view(), &names)?;
            comparisons.push(comparison(
                &base,
                &base_fit,
                None,
                model,
                None,
                None,
                None,
                &full,
                (dll, chi2, df, p),
            ));
            fitted.push(FittedModel {
                layer: None,
                model: model.into(),
                seed: None,
                fit: full,
            });
            Ok(())
        };
        if r.section.norms.is_some() {
            add_norm_model("norm", analysis::norm_columns(&r.data.words))?;
        }
        if !r.data.norm_block.is_empty() {
            add_norm_model(
                NORMS_MODEL,
                analysis::norm_block_columns(&r.data.words, r.section.norms.is_some(), &r.data.norm_block),
            )?;
        }
        Ok(ReadingBase {
            data_id: data_id.to_string(),
            formula: base_formula(&base),
            exclusions,
            n_rows: base.y.len(),
            reasons,
            lm_surprisal,
            entropy,
            fitted,
            comparisons,
        })
    })?;
    Ok(id)
}

/// One likelihood-ratio comparison of `full` against the baseline.
#[allow(clippy::too_many_arguments)]
fn comparison(
    base: &BaseDesign,
    base_fit: &LmmFit,
    layer: Option<usize>,
    model: &str,
    seed: Option<u64>,
    n_features: Option<usize>,
    variance_explained: Option<f64>,
    full: &LmmFit,
    (delta_loglik, chi2, df, p_value): (f64, f64, usize, f64),
) -> Comparison {
    Comparison {
        layer,
        model: model.to_string(),
        seed,
        n_features,
        variance_explained,
        n_obs: base.y.len(),
        loglik_base: base_fit.log_likelihood,
        loglik_full: full.log_likelihood,
        delta_loglik,
        chi2,
        df,
        p_value,
        aic_base: base_fit.aic,
        aic_full: full.aic,
        converged: base_fit.converged && full.converged,
    }
}

/// The comparisons of one layer: `codes` holds the layer's SAE codes artifact of each story
/// ((story, codes artifact) pairs; stacked in the reading data's story order), `base_id` the
/// baseline. Returns the `reading-layer` artifact id.
pub fn layer_stage(
    ctx: &Ctx,
    layer: usize,
    base_id: &str,
    codes: &[(String, ArtifactId)],
    labels: Option<&ArtifactId>,
) -> Result<ArtifactId> {
    let mut key = KeyBuilder::new("reading-layer", REV_READING_LAYER)
        .part("base", base_id)
        .config("layer", &layer);
    for (story, id) in codes {
        key = key.part("story", story).part("codes", id);
    }
    if let Some(l) = labels {
        key = key.part("labels", l);
    }
    let id = key.finish();
    ctx.store.json("reading-layer", &id, || {
        let started = Instant::now();
        let (base_rec, r) = base_inputs(ctx, base_id)?;
        let r = &*r;
        let (base, _) = base_design(r, &base_rec.lm_surprisal)?;
        let base_fit = &base_rec.fitted[0].fit;
        let by_story: BTreeMap<&str, &str> = codes.iter().map(|(s, a)| (s.as_str(), a.as_str())).collect();
        let mut mats = Vec::new();
        for s in &r.stories {
            let id = by_story
                .get(s.id.as_str())
                .ok_or_else(|| Error::Invalid(format!("no SAE codes of story `{}` at layer {layer}", s.id)))?;
            mats.push(ctx.store.load_arrays("codes", id)?.f32("x")?.to_owned());
        }
        let codes = analysis::stack(&mats)?;
        let word_texts: Vec<String> = r.data.words.iter().map(|w| w.text.clone()).collect();
        let summaries = crate::sae::evidence::feature_evidence(
            codes.view(),
            &word_texts,
            &r.data.story_offsets,
            crate::sae::evidence::DEFAULT_TOP,
            crate::sae::evidence::DEFAULT_CONTEXT,
        );
        let rule = SelectionRule {
            min_active: r.section.min_active,
            ..Default::default()
        };
        let mut ev = analysis::feature_evidence(
            codes.view(),
            &summaries,
            &r.data.story_offsets,
            &r.data.words,
            &base_rec.entropy,
            r.selection,
            &rule,
        );
        // `features = "taxonomy"`: the taxonomy's semantic features among the live ones (the same
        // eligibility as the random pool's), and each other category's
        let label_set = match (r.selection, labels) {
            (analysis::Selection::Taxonomy, Some(id)) => {
                let l: crate::stages::taxonomy::LayerLabels = ctx.store.load_json("labels", id)?;
                Some(l.used().clone())
            }
            (analysis::Selection::Taxonomy, None) => {
                return Err(Error::Invalid(format!(
                    "features = \"taxonomy\" but layer {layer} has no labels (did its label stage fail?)"
                )))
            }
            _ => None,
        };
        if let Some(ls) = &label_set {
            let semantic: std::collections::BTreeSet<usize> = ls
                .features_of(crate::taxonomy::Category::Semantic)
                .into_iter()
                .collect();
            for e in ev.iter_mut() {
                e.selected = e.n_active >= rule.min_active && semantic.contains(&(e.feature as usize));
            }
        }
        let selected: Vec<usize> = ev.iter().filter(|e| e.selected).map(|e| e.feature as usize).collect();
        let alive: Vec<usize> = ev
            .iter()
            .filter(|e| e.n_active >= rule.min_active)
            .map(|e| e.feature as usize)
            .collect();
        let z = analysis::zcodes(codes.view(), &alive);
        let mut comparisons = Vec::new();
        let mut fitted = Vec::new();
        let mut run_set = |cols: &[usize], model: &str, seed: Option<u64>| -> Result<()> {
            if cols.is_empty() {
                return Ok(());
            }
            let (pcs, expl) = analysis::pca_scores(&z, cols, r.section.n_pcs)?;
            let names: Vec<String> = (1..=pcs.ncols()).map(|k| format!("pc{k}")).collect();
            let (full, dll, chi2, df, p) = analysis::compare(&base, base_fit, pcs.view(), &names)?;
            comparisons.push(comparison(
                &base,
                base_fit,
                Some(layer),
                model,
                seed,
                Some(cols.len()),
                Some(expl),
                &full,
                (dll, chi2, df, p),
            ));
            fitted.push(FittedModel {
                layer: Some(layer),
                model: model.to_string(),
                seed,
                fit: full,
            });
            Ok(())
        };
        run_set(&selected, &format!("sae-{}", r.selection.as_str()), None)?;
        if let Some(ls) = &label_set {
            let live: std::collections::BTreeSet<usize> = alive.iter().copied().collect();
            for c in crate::taxonomy::Category::ALL {
                if c == crate::taxonomy::Category::Semantic {
                    continue;
                }
                let cols: Vec<usize> = ls.features_of(c).into_iter().filter(|f| live.contains(f)).collect();
                run_set(&cols, &format!("category:{}", c.name()), None)?;
            }
        }
        let pool = r.random_pool.draw_from(&alive, &selected);
        if r.section.random_seeds > 0 && pool.len() < selected.len() {
            tracing::warn!(
                layer,
                pool = pool.len(),
                selected = selected.len(),
                "fewer {} features than selected ones: each random subset is the whole pool",
                r.random_pool.as_str()
            );
        }
        for seed in 1..=r.section.random_seeds as u64 {
            let subset = analysis::random_subset(&pool, selected.len(), seed);
            run_set(&subset, "random", Some(seed))?;
        }
        // the selected features' PCs over the norm block (the SAE beyond the norms)
        if let Some(norms_fit) = base_rec.fitted.iter().find(|f| f.model == NORMS_MODEL) {
            if !selected.is_empty() {
                let (cols, names) =
                    analysis::norm_block_columns(&r.data.words, r.section.norms.is_some(), &r.data.norm_block);
                let with_norms = analysis::with_columns(&base, cols.view(), &names);
                let (pcs, expl) = analysis::pca_scores(&z, &selected, r.section.n_pcs)?;
                let pc_names: Vec<String> = (1..=pcs.ncols()).map(|k| format!("pc{k}")).collect();
                let (full, dll, chi2, df, p) = analysis::compare(&with_norms, &norms_fit.fit, pcs.view(), &pc_names)?;
                let model = format!("sae-{}-beyond-norms", r.selection.as_str());
                comparisons.push(comparison(
                    &with_norms,
                    &norms_fit.fit,
                    Some(layer),
                    &model,
                    None,
                    Some(selected.len()),
                    Some(expl),
                    &full,
                    (dll, chi2, df, p),
                ));
                fitted.push(FittedModel {
                    layer: Some(layer),
                    model,
                    seed: None,
                    fit: full,
                });
            }
        }
        tracing::info!(
            layer,
            selected = selected.len(),
            alive = alive.len(),
            seconds = started.elapsed().as_secs_f64(),
            "reading models of the layer done"
        );
        Ok(ReadingLayer {
            layer,
            comparisons,
            fitted,
            evidence: ev,
            examples: summaries,
        })
    })?;
    Ok(id)
}

/// Builds the shared rows and baseline design; returns it with the per-row exclusion reason of
/// every observation (None = in the model) and the control names.
pub fn base_design(r: &ReadingInputs, lm_surprisal: &[Option<f64>]) -> Result<(BaseDesign, Vec<Option<String>>)> {
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
pub fn base_formula(b: &BaseDesign) -> String {
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
