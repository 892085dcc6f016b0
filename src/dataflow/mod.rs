//! The analysis as a timely/differential dataflow over coarse records. This is the only module
//! that imports timely and differential-dataflow.
//!
//! Records carry artifact ids (content hashes); the arrays live in the artifact store. The graph:
//! ```text
//! stories(story, art) ∪ corpus(doc, art) ──reduce per text: LM──▶ acts(text, layer, act)
//! acts ──reduce per layer: train SAE──▶ saes(layer, sae)
//! acts ⋈ saes ──reduce per (story, layer): encode──▶ codes(story, layer, codes)
//! (acts ∪ codes) ⋈ stories ──reduce per (story, layer, set): HRF + TR average──▶ designs
//! designs ⋈ responses(story, subject, roi) ──reduce per (subject, story, layer, set): ridge──▶ fits
//! fits ──reduce per (story, layer, set) over subjects: mean r, bootstrap CI──▶ summaries
//! ```
//! With `[taxonomy]`: (acts, codes, words) per (story, layer) ⋈ saes ──reduce per layer: Label──▶
//! labels and feature sets; sets ⋈ SAE designs ──reduce per (story, layer, set): DerivedDesign──▶
//! designs; (story, ℓ) ⋈ (story, ℓ − Δ) ⋈ raw design ──reduce per (story, ℓ): PredError──▶ the
//! `raw+pred-error` design; SAE designs ⋈ labels ⋈ responses ──reduce per (subject, story, layer):
//! Partition──▶ variance partitions by category.
//! Each heavy step is a `reduce` keyed by its output key, so work is partitioned across workers
//! by key and recomputed only when that key's inputs change: a subject added at a later time
//! produces exactly that subject's fits, plus the (cheap) summaries. Stage closures do not fail:
//! errors are collected and the run is reported as failed after the dataflow drains.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use differential_dataflow::input::Input;
use timely::dataflow::operators::capture::{Capture, Extract};

use crate::lm::LanguageModel;
use crate::pipeline::stages::{self, Ctx, StoredStory};
use crate::store::artifacts::{ArtifactId, StoreStats};
use crate::{Error, Result};

/// (story id, story artifact)
pub type StoryRec = (String, ArtifactId);
/// (story id, (subject, response artifact))
pub type ResponseRec = (String, (String, ArtifactId));

/// Input changes applied at one timestamp.
#[derive(Debug, Clone, Default)]
pub struct Epoch {
    pub stories: Vec<(StoryRec, isize)>,
    pub corpus: Vec<(StoryRec, isize)>,
    pub responses: Vec<(ResponseRec, isize)>,
}

/// Key of one encoding fit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct FitKey {
    pub subject: String,
    pub story: String,
    pub layer: usize,
    pub feature_set: String,
}

/// The collections' contents after an epoch (sorted, so equal states compare equal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// (story, words artifact)
    pub words: BTreeSet<(String, ArtifactId)>,
    /// (layer, SAE artifact)
    pub saes: BTreeSet<(usize, ArtifactId)>,
    pub fits: BTreeSet<(FitKey, ArtifactId)>,
    /// ((story, layer, feature set), summary artifact)
    pub summaries: BTreeSet<((String, usize, String), ArtifactId)>,
    /// (layer, feature-taxonomy labels artifact), with `[taxonomy]`
    pub labels: BTreeSet<(usize, ArtifactId)>,
    /// ((subject, story, layer), variance-partition artifact), with `[taxonomy] variance-partition`
    pub partitions: BTreeSet<((String, String, usize), ArtifactId)>,
    /// ((story, layer), `raw+pred-error` design id = its `pred-error-record` id), with
    /// `[taxonomy] prediction-error-delta`
    pub pred_errors: BTreeSet<((String, usize), ArtifactId)>,
}

/// One epoch's result: the snapshot and the store counters accumulated so far.
#[derive(Debug, Clone)]
pub struct EpochResult {
    pub snapshot: Snapshot,
    pub stats: StoreStats,
}

fn accumulate<D: Ord + Clone>(events: &[(u64, Vec<(D, u64, isize)>)], upto: u64) -> BTreeSet<D> {
    let mut acc: BTreeMap<D, isize> = BTreeMap::new();
    for (_, batch) in events {
        for (d, t, r) in batch {
            if *t <= upto {
                *acc.entry(d.clone()).or_default() += r;
            }
        }
    }
    acc.into_iter().filter(|(_, r)| *r > 0).map(|(d, _)| d).collect()
}

/// (story, story artifact, activations, codes, words) → the taxonomy stage's input.
fn story_layer(t: &(String, ArtifactId, ArtifactId, ArtifactId, ArtifactId)) -> crate::pipeline::taxonomy::StoryLayer {
    crate::pipeline::taxonomy::StoryLayer {
        story: t.0.clone(),
        story_art: t.1.clone(),
        act: t.2.clone(),
        codes: t.3.clone(),
        words: t.4.clone(),
    }
}

fn record_error(errors: &Arc<Mutex<Vec<String>>>, what: String, e: Error) {
    errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{what}: {e}"));
}

/// Runs the epochs through the graph on `workers` threads; returns one result per epoch.
pub fn run(ctx: Ctx, epochs: Vec<Epoch>, workers: usize) -> Result<Vec<EpochResult>> {
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let results: Arc<Mutex<Vec<StoreStats>>> = Arc::default();
    let (s_words, r_words) = std::sync::mpsc::channel();
    let (s_saes, r_saes) = std::sync::mpsc::channel();
    let (s_fits, r_fits) = std::sync::mpsc::channel();
    let (s_sum, r_sum) = std::sync::mpsc::channel();
    let (s_lab, r_lab) = std::sync::mpsc::channel();
    let (s_part, r_part) = std::sync::mpsc::channel();
    let (s_pe, r_pe) = std::sync::mpsc::channel();
    let senders = Arc::new(Mutex::new((s_words, s_saes, s_fits, s_sum, s_lab, s_part, s_pe)));
    let n_epochs = epochs.len();
    let epochs = Arc::new(epochs);
    let feature_sets: Vec<String> = ctx.plan.file.encoding.feature_sets.clone();
    let include_stimulus = ctx.plan.file.sae.include_stimulus;
    let taxonomy_on = ctx.plan.file.taxonomy.is_some();
    let partition_on = ctx.plan.file.taxonomy.as_ref().is_some_and(|t| t.variance_partition);
    let pe_delta = ctx.plan.file.taxonomy.as_ref().and_then(|t| t.prediction_error_delta);

    let err2 = errors.clone();
    let res2 = results.clone();
    timely::execute(timely::Config::process(workers.max(1)), move |worker| {
        let index = worker.index();
        let errors = err2.clone();
        let (sw, ss, sf, su, sl, sp, spe) = {
            let s = senders.lock().unwrap_or_else(|p| p.into_inner());
            (
                s.0.clone(),
                s.1.clone(),
                s.2.clone(),
                s.3.clone(),
                s.4.clone(),
                s.5.clone(),
                s.6.clone(),
            )
        };
        let ctx = ctx.clone();
        let feature_sets = feature_sets.clone();
        let (mut stories_in, mut corpus_in, mut resp_in, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (stories_in, stories) = scope.new_collection::<StoryRec, isize>();
            let (corpus_in, corpus) = scope.new_collection::<StoryRec, isize>();
            let (resp_in, responses) = scope.new_collection::<ResponseRec, isize>();

            // ---- LM over every text (stories and corpus documents)
            let texts = stories
                .clone()
                .map(|(s, a)| ((true, s), a))
                .concat(corpus.map(|(c, a)| ((false, c), a)));
            let (c1, e1) = (ctx.clone(), errors.clone());
            let mut model: Option<LanguageModel> = None;
            let acts = texts.reduce_named("LM", move |(_, text), input, output| {
                for (art, diff) in input {
                    if *diff <= 0 {
                        continue;
                    }
                    let mut run = || -> Result<stages::LmOutputs> {
                        let st: StoredStory = c1.store.load_json("story", art)?;
                        stages::lm_stage(&c1, &mut model, &st.story)
                    };
                    match run() {
                        Ok(out) => {
                            output.push(((None, out.words), 1));
                            for (l, id) in out.layers {
                                output.push(((Some(l), id), 1));
                            }
                        }
                        Err(e) => record_error(&e1, format!("LM on `{text}`"), e),
                    }
                }
            });
            let story_words = acts
                .clone()
                .flat_map(|((is_story, text), (layer, id))| (is_story && layer.is_none()).then_some((text, id)));
            story_words.clone().inner.capture_into(sw);

            // ---- one SAE per layer
            let (c2, e2) = (ctx.clone(), errors.clone());
            let saes = acts
                .clone()
                .flat_map(move |((is_story, _), (layer, id))| {
                    layer.filter(|_| !is_story || include_stimulus).map(|l| (l, id))
                })
                .reduce_named("SAE", move |layer, input, output| {
                    let ids: Vec<ArtifactId> = input
                        .iter()
                        .filter(|(_, d)| *d > 0)
                        .map(|(a, _)| (*a).clone())
                        .collect();
                    match stages::sae_stage(&c2, *layer, &ids) {
                        Ok(id) => output.push((id, 1)),
                        Err(e) => record_error(&e2, format!("SAE of layer {layer}"), e),
                    }
                });
            saes.clone().inner.capture_into(ss);

            // ---- per (story, layer): SAE codes
            let story_acts =
                acts.flat_map(|((is_story, story), (layer, id))| layer.filter(|_| is_story).map(|l| (l, (story, id))));
            let story_acts_tax = story_acts.clone();
            let (c3, e3) = (ctx.clone(), errors.clone());
            let codes = story_acts
                .clone()
                .join(saes.clone())
                .map(|(layer, ((story, act), sae))| ((story, layer), (act, sae)))
                .reduce_named("Encode", move |(story, layer), input, output| {
                    for ((act, sae), diff) in input {
                        if *diff > 0 {
                            match stages::codes_stage(&c3, act, sae) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e3, format!("codes of `{story}` layer {layer}"), e),
                            }
                        }
                    }
                });

            // ---- per (story, layer): SAE reconstructions (only for the "sae-recon" feature set)
            let want_recon = feature_sets.iter().any(|f| f == "sae-recon");
            let (c7, e7) = (ctx.clone(), errors.clone());
            let recons = story_acts
                .clone()
                .filter(move |_| want_recon)
                .join(saes.clone())
                .map(|(layer, ((story, act), sae))| ((story, layer), (act, sae)))
                .reduce_named("Reconstruct", move |(story, layer), input, output| {
                    for ((act, sae), diff) in input {
                        if *diff > 0 {
                            match stages::recon_stage(&c7, act, sae) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e7, format!("reconstruction of `{story}` layer {layer}"), e),
                            }
                        }
                    }
                })
                .map(|((story, layer), id)| (story, (layer, "sae-recon".to_string(), "recon".to_string(), id)));

            // ---- designs per (story, layer, feature set)
            let want_raw = feature_sets.iter().any(|f| f == "raw");
            let want_sae = feature_sets.iter().any(|f| f == "sae");
            let raw = story_acts
                .filter(move |_| want_raw)
                .map(|(layer, (story, id))| (story, (layer, "raw".to_string(), "lm".to_string(), id)));
            let sae_feats = codes
                .clone()
                .filter(move |_| want_sae)
                .map(|((story, layer), id)| (story, (layer, "sae".to_string(), "codes".to_string(), id)));
            let (c4, e4) = (ctx.clone(), errors.clone());
            let designs = raw
                .concat(sae_feats)
                .concat(recons)
                .join(stories.clone())
                .map(|(story, ((layer, set, stage, id), story_art))| ((story, layer, set), (story_art, stage, id)))
                .reduce_named("Design", move |(story, layer, set), input, output| {
                    for ((story_art, stage, id), diff) in input {
                        if *diff > 0 {
                            match stages::design_stage(&c4, story_art, stage, id) {
                                Ok(d) => output.push((d, 1)),
                                Err(e) => record_error(&e4, format!("design `{story}` layer {layer} {set}"), e),
                            }
                        }
                    }
                });

            // ---- taxonomy (with [taxonomy]): labels and feature sets per layer, derived designs
            // per (story, layer, set): categories, subcategories and their baselines
            let story_layers = story_acts_tax
                .filter(move |_| taxonomy_on)
                .map(|(layer, (story, act))| ((story, layer), act))
                .join(codes.clone())
                .map(|((story, layer), (act, codes))| (story, (layer, act, codes)))
                .join(story_words)
                .join(stories.clone())
                .map(|(story, (((layer, act, codes), words), story_art))| {
                    ((story.clone(), layer), (story, story_art, act, codes, words))
                });
            let (c8, e8) = (ctx.clone(), errors.clone());
            let labels = story_layers
                .clone()
                .map(|((_, layer), t)| (layer, t))
                .join(saes.clone())
                .reduce_named("Label", move |layer, input, output| {
                    let mut sae = None;
                    let mut items = Vec::new();
                    for ((t, s), d) in input {
                        if *d > 0 {
                            sae = Some(s.clone());
                            items.push(story_layer(t));
                        }
                    }
                    let Some(sae) = sae else { return };
                    match crate::pipeline::taxonomy::label_stage(&c8, *layer, &sae, &items) {
                        Ok((id, sets)) => {
                            for set in sets {
                                output.push(((set, id.clone()), 1));
                            }
                        }
                        Err(e) => record_error(&e8, format!("labels of layer {layer}"), e),
                    }
                });
            let labels_by_layer = labels.clone().map(|(layer, (_, id))| (layer, id)).distinct();
            labels_by_layer.clone().inner.capture_into(sl);
            let story_layers_pe = story_layers.clone();
            let (c9, e9) = (ctx.clone(), errors.clone());
            let derived = designs
                .clone()
                .filter(|((_, _, set), _)| set == "sae")
                .map(|((story, layer, _), d)| ((story, layer), d))
                .join(story_layers)
                .map(|((story, layer), (d, t))| (layer, (story, d, t)))
                .join(saes.clone())
                .join(labels)
                .map(|(layer, (((story, d, t), sae), (set, lid)))| ((story, layer, set), (d, t, sae, lid)))
                .reduce_named("DerivedDesign", move |(story, layer, set), input, output| {
                    for ((d, t, sae, lid), diff) in input {
                        if *diff > 0 {
                            match crate::pipeline::taxonomy::derived_design_stage(
                                &c9,
                                &story_layer(t),
                                d,
                                sae,
                                lid,
                                set,
                            ) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e9, format!("design `{story}` layer {layer} {set}"), e),
                            }
                        }
                    }
                });
            let designs = designs.concat(derived);

            // ---- prediction-error features (METHOD.md §9): (story, ℓ) ⋈ (story, ℓ − Δ) ⋈ the raw
            // design of (story, ℓ) ──reduce per (story, ℓ)──▶ the `raw+pred-error` design
            let delta = pe_delta.unwrap_or(0);
            let pe_base = story_layers_pe
                .filter(move |_| pe_delta.is_some())
                .map(|((story, layer), t)| (layer, (story, t)))
                .join(saes.clone())
                .map(|(layer, ((story, t), sae))| ((story, layer), (t.1, t.3, sae)));
            let pe_from = pe_base
                .clone()
                .map(move |((story, layer), (_, codes, sae))| ((story, layer + delta), (codes, sae)));
            let raw_designs = designs
                .clone()
                .filter(|((_, _, set), _)| set == "raw")
                .map(|((story, layer, _), d)| ((story, layer), d));
            let (c10, e10) = (ctx.clone(), errors.clone());
            let pred_errors = pe_base.join(pe_from).join(raw_designs).reduce_named(
                "PredError",
                move |(story, layer), input, output| {
                    for ((((story_art, codes, sae), (codes_from, sae_from)), raw), diff) in input {
                        if *diff > 0 {
                            match crate::pipeline::taxonomy::pred_error_stage(
                                &c10,
                                story,
                                story_art,
                                *layer,
                                (codes, sae),
                                *layer - delta,
                                (codes_from, sae_from),
                                raw,
                            ) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e10, format!("prediction error `{story}` layer {layer}"), e),
                            }
                        }
                    }
                },
            );
            pred_errors.clone().inner.capture_into(spe);
            let designs = designs
                .concat(pred_errors.map(|((story, layer), id)| ((story, layer, "raw+pred-error".to_string()), id)));

            // ---- variance partition by category per (subject, story, layer)
            let (c11, e11) = (ctx.clone(), errors.clone());
            let partitions = designs
                .clone()
                .filter(move |((_, _, set), _)| partition_on && set == "sae")
                .map(|((story, layer, _), d)| (layer, (story, d)))
                .join(labels_by_layer)
                .map(|(layer, ((story, d), lid))| (story, (layer, d, lid)))
                .join(responses.clone())
                .map(|(story, ((layer, d, lid), (subject, roi)))| ((subject, story, layer), (d, lid, roi)))
                .reduce_named("Partition", move |key, input, output| {
                    for ((d, lid, roi), diff) in input {
                        if *diff > 0 {
                            match crate::pipeline::taxonomy::partition_stage(&c11, d, lid, roi) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e11, format!("variance partition {key:?}"), e),
                            }
                        }
                    }
                });
            partitions.inner.capture_into(sp);

            // ---- fits per (subject, story, layer, feature set)
            let (c5, e5) = (ctx.clone(), errors.clone());
            let fits = designs
                .map(|((story, layer, set), design)| (story, (layer, set, design)))
                .join(responses)
                .map(|(story, ((layer, feature_set, design), (subject, roi)))| {
                    (
                        FitKey {
                            subject,
                            story,
                            layer,
                            feature_set,
                        },
                        (design, roi),
                    )
                })
                .reduce_named("Fit", move |key, input, output| {
                    for ((design, roi), diff) in input {
                        if *diff > 0 {
                            match stages::fit_stage(&c5, design, roi) {
                                Ok(f) => output.push((f, 1)),
                                Err(e) => record_error(&e5, format!("fit {key:?}"), e),
                            }
                        }
                    }
                });
            fits.clone().inner.capture_into(sf);

            // ---- summaries over subjects
            let (c6, e6) = (ctx.clone(), errors.clone());
            let summaries = fits
                .map(|(k, fit)| ((k.story, k.layer, k.feature_set), (k.subject, fit)))
                .reduce_named("Summary", move |key, input, output| {
                    let ids: Vec<ArtifactId> = input
                        .iter()
                        .filter(|(_, d)| *d > 0)
                        .map(|((_, f), _)| f.clone())
                        .collect();
                    match stages::summary_stage(&c6, &ids) {
                        Ok(s) => output.push((s, 1)),
                        Err(e) => record_error(&e6, format!("summary {key:?}"), e),
                    }
                });
            let (probe, summaries) = summaries.probe();
            summaries.inner.capture_into(su);
            (stories_in, corpus_in, resp_in, probe)
        });

        for (t, epoch) in epochs.iter().enumerate() {
            if index == 0 {
                for (r, d) in &epoch.stories {
                    stories_in.update(r.clone(), *d);
                }
                for (r, d) in &epoch.corpus {
                    corpus_in.update(r.clone(), *d);
                }
                for (r, d) in &epoch.responses {
                    resp_in.update(r.clone(), *d);
                }
            }
            let next = t as u64 + 1;
            stories_in.advance_to(next);
            corpus_in.advance_to(next);
            resp_in.advance_to(next);
            stories_in.flush();
            corpus_in.flush();
            resp_in.flush();
            worker.step_while(|| probe.less_than(&next));
            if index == 0 {
                res2.lock().unwrap_or_else(|p| p.into_inner()).push(ctx.store.stats());
            }
        }
    })
    .map_err(|e| Error::Invalid(format!("dataflow: {e}")))?;

    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !errors.is_empty() {
        return Err(Error::Invalid(format!(
            "{} stage(s) failed:\n  {}",
            errors.len(),
            errors.join("\n  ")
        )));
    }
    let words: Vec<(u64, Vec<((String, ArtifactId), u64, isize)>)> = r_words.extract();
    let saes: Vec<(u64, Vec<((usize, ArtifactId), u64, isize)>)> = r_saes.extract();
    let fits: Vec<(u64, Vec<((FitKey, ArtifactId), u64, isize)>)> = r_fits.extract();
    let sums: Vec<(u64, Vec<(((String, usize, String), ArtifactId), u64, isize)>)> = r_sum.extract();
    let labs: Vec<(u64, Vec<((usize, ArtifactId), u64, isize)>)> = r_lab.extract();
    let parts: Vec<(u64, Vec<(((String, String, usize), ArtifactId), u64, isize)>)> = r_part.extract();
    let pes: Vec<(u64, Vec<(((String, usize), ArtifactId), u64, isize)>)> = r_pe.extract();
    let stats = results.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok((0..n_epochs)
        .map(|e| EpochResult {
            snapshot: Snapshot {
                words: accumulate(&words, e as u64),
                saes: accumulate(&saes, e as u64),
                fits: accumulate(&fits, e as u64),
                summaries: accumulate(&sums, e as u64),
                labels: accumulate(&labs, e as u64),
                partitions: accumulate(&parts, e as u64),
                pred_errors: accumulate(&pes, e as u64),
            },
            stats: stats.get(e).cloned().unwrap_or_default(),
        })
        .collect())
}
