//! The tables of a reading-time run (a pipeline with `[reading]`, e.g.
//! `pipelines/natural-stories.toml`), from the reading stages' artifacts in the final snapshot
//! ([`crate::stages::reading`]): `reading_comparison`, `reading_fixed`, `reading_random`,
//! `reading_words`, `reading_features`, `feature_examples`, `sae_quality` (schemas in
//! data-schemas/), a plot and `report.md`, each file atomically, after every table was built.
//!
//! May import: [`super::columns`], [`super::tables`], `stages`, `dataflow` (the snapshot) and
//! everything below them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt16Array, UInt32Array, UInt64Array,
};

use super::columns::{batch, utf8, write_tables};
use super::tables;
use crate::dataflow::Snapshot;
use crate::reading::analysis::{Comparison, FeatureEvidence};
use crate::reading::section::ReadingInputs;
use crate::stages::reading::{base_inputs, FittedModel, ReadingLayer};
use crate::stages::Ctx;
use crate::{Error, Result};

/// Everything the reading stages computed, in table order: the baseline (and norm) first, then
/// the layers in order.
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

/// The reading stages' artifacts of `snap`, assembled.
pub fn reading_result(ctx: &Ctx, snap: &Snapshot) -> Result<(ReadingResult, Arc<ReadingInputs>)> {
    let [(_, base_id)] = snap.reading_bases.iter().collect::<Vec<_>>()[..] else {
        return Err(Error::Invalid(format!(
            "expected one reading baseline in the run's state, found {}",
            snap.reading_bases.len()
        )));
    };
    let (base, inputs) = base_inputs(ctx, base_id)?;
    let mut res = ReadingResult {
        comparisons: base.comparisons,
        evidence: Vec::new(),
        examples: Vec::new(),
        formula: base.formula,
        exclusions: base.exclusions,
        n_rows: base.n_rows,
        fitted: base.fitted,
        reasons: base.reasons,
        lm_surprisal: base.lm_surprisal,
    };
    for (_, id) in &snap.readings {
        let l: ReadingLayer = ctx.store.load_json("reading-layer", id)?;
        res.comparisons.extend(l.comparisons);
        res.fitted.extend(l.fitted);
        res.evidence.push((l.layer, l.evidence));
        res.examples.push((l.layer, l.examples));
    }
    Ok((res, inputs))
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

/// Writes every table of a reading-time run into `out`, then the plot and the report.
pub fn write_outputs(ctx: &Ctx, snap: &Snapshot, out: &Path) -> Result<Vec<PathBuf>> {
    let (res, r) = &reading_result(ctx, snap)?;
    let r = &**r;
    let tables = [
        ("reading_comparison", comparison_batch(res)?),
        ("reading_fixed", fixed_batch(res)?),
        ("reading_random", random_batch(res)?),
        ("reading_words", words_batch(r, res)?),
        ("reading_features", features_batch(res)?),
        ("feature_examples", examples_batch(r, res)?),
        ("sae_quality", tables::sae_quality_batch(ctx, snap)?),
    ];
    let mut tables = tables.to_vec();
    // `features = "taxonomy"`: the labels that chose the features
    if ctx.plan.file.taxonomy.is_some() {
        let labels = super::taxonomy_tables::layer_labels(ctx, snap)?;
        tables.push(("feature_labels", super::taxonomy_tables::labels_batch(&labels)?));
    }
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
        .filter(|x| x.model.starts_with("sae-") && !x.model.ends_with("-beyond-norms"))
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

fn markdown(ctx: &Ctx, snap: &Snapshot, r: &ReadingInputs, res: &ReadingResult) -> Result<String> {
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
         features span fewer directions), of random subsets of the same number of {} features (seeds \
         1–{}), or the word norm `{}`. df = number of added columns.\n",
        r.section.n_pcs,
        r.selection.as_str(),
        match r.random_pool {
            crate::reading::analysis::RandomPool::NonSemantic => "non-selected live",
            crate::reading::analysis::RandomPool::Live => "live",
        },
        r.section.random_seeds,
        r.section.norms_column
    );
    if r.selection == crate::reading::analysis::Selection::Taxonomy {
        let _ = writeln!(
            m,
            "One label set for everything: `taxonomy-semantic` is the features the `[taxonomy]` labels \
             call semantic (`feature_labels.parquet`, the set its fMRI comparisons use), among the live \
             ones; the random subsets are drawn from the live features it does not label semantic; the \
             `category:<name>` rows test each other category's live features the same way.\n"
        );
    }
    if !d.norm_block.is_empty() {
        let tables: Vec<String> = d
            .norm_block
            .iter()
            .map(|(name, cols)| format!("`{name}` ({} columns)", cols.len()))
            .collect();
        let missing: Vec<String> = j
            .words_without_norm_table
            .iter()
            .map(|(name, n)| format!("{name}: {n}"))
            .collect();
        let _ = writeln!(
            m,
            "Norm block (model `norms`): the baseline plus every norm ({}{}), each z-scored, 0 where a \
             word has no value, with one missing indicator per table; story words without a value: {}. \
             The `…-beyond-norms` rows add the same SAE components to the `norms` model and test them \
             against it (ΔlogLik over the norms, not over the baseline).\n",
            if r.section.norms.is_some() { "`norm`, " } else { "" },
            tables.join(", "),
            if missing.is_empty() {
                "none".to_string()
            } else {
                missing.join(", ")
            }
        );
    }
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
        let q = crate::stages::sae_record(ctx, id)?;
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
