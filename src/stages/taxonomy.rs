//! Taxonomy stages of the fMRI pipeline (METHOD.md §4, §6, §10):
//! - `labels` (per layer): the built-in labels of every SAE feature from its evidence over the
//!   pipeline's stories (codes, words, logit-lens entropy at the layer, static embeddings,
//!   closed-class words, norms, seed lexicon), optional imported labels, the labelling tasks, and
//!   the layer's feature-set definitions (categories, subcategories, baselines);
//! - `design` (per story, layer, derived set): the set's design, derived from the full SAE design
//!   (column subsets, PCA, random projection) or from word-level SAE maps (reconstruction error,
//!   mean-ablated reconstructions) through [`stages::design_stage`].

use serde::{Deserialize, Serialize};

use crate::config::{ProjectionDim, TaxonomySection};
use crate::lm::lens::Lens;
use crate::stages::{self, Ctx, StoredStory};
use crate::store::artifacts::{Arrays, ArtifactId, KeyBuilder};
use crate::taxonomy::baselines::{self, FeatureSetDef, SetSpec};
use crate::taxonomy::labeller::{label_features, LabelInputs, WordVectors};
use crate::taxonomy::lexicon::{normalize, ClosedClass, Lexicon, Norms};
use crate::taxonomy::tasks::{self, Task};
use crate::taxonomy::{Category, LabelSet, Subcategory};
use crate::{Error, Result};

const REV_LABELS: u32 = 2; // 2: the tasks carry held-out and non-activating contexts
const REV_DERIVED: u32 = 2;

/// Held-out activating and non-activating contexts per feature in the labelling tasks.
const SCORING_CONTEXTS: usize = 10;

/// Built-in seed lexicons (pipelines/lexicons/), used when `seed-lexicon` is not set.
fn builtin_seeds(language: &str) -> Option<&'static str> {
    match language {
        "en" => Some(include_str!("../../pipelines/lexicons/subcategories-en.tsv")),
        "fr" => Some(include_str!("../../pipelines/lexicons/subcategories-fr.tsv")),
        "zh" => Some(include_str!("../../pipelines/lexicons/subcategories-zh.tsv")),
        _ => None,
    }
}

/// One story's artifacts at one layer (a value in the dataflow: fields in the order it sorts by).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StoryLayer {
    pub story: String,
    pub story_art: ArtifactId,
    pub act: ArtifactId,
    pub codes: ArtifactId,
    pub words: ArtifactId,
}

/// The `labels` artifact of one layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerLabels {
    pub layer: usize,
    pub language: String,
    pub n_words: usize,
    /// The evidence texts, each with its word count (`[taxonomy] evidence`: stories and/or
    /// `corpus:` texts).
    #[serde(default)]
    pub evidence_texts: Vec<(String, usize)>,
    /// The built-in labeller's labels.
    pub builtin: LabelSet,
    /// Imported labels when `[taxonomy] labels` is set (then these define the feature sets), and
    /// how many features had no answer (labelled OTHER).
    pub imported: Option<LabelSet>,
    pub imported_missing: usize,
    pub lexicon_sources: Vec<String>,
    pub tasks: Vec<Task>,
    pub sets: Vec<FeatureSetDef>,
    /// The semantic set's participation ratio (the random projection's dimension); None with
    /// fewer than two semantic features.
    pub semantic_pr: Option<f64>,
    /// `[taxonomy] tuned-lens`: the built-in labeller's category counts with the tuned lens's
    /// entropy (the PREDICTION criterion is the only one a lens changes).
    #[serde(default)]
    pub tuned_lens: Option<TunedLensShares>,
}

/// The category counts of a layer under the tuned lens (see [`LayerLabels::tuned_lens`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TunedLensShares {
    /// Held-out R² of the translator's map to the last layer (None at the last layer: identity).
    pub r2_heldout: Option<f64>,
    /// (category, features), in [`Category::ALL`] order.
    pub counts: Vec<(String, usize)>,
    /// Features whose built-in category differs from the logit lens's.
    pub changed: usize,
}

impl LayerLabels {
    /// The labels the feature sets were built from.
    pub fn used(&self) -> &LabelSet {
        self.imported.as_ref().unwrap_or(&self.builtin)
    }
}

/// The closed-class list, norms and seeds for `language`.
pub fn lexicon(ctx: &Ctx, t: &TaxonomySection, language: &str) -> Result<Lexicon> {
    let root = &ctx.plan.data_root;
    let mut closed = ClosedClass::builtin(language);
    let mut norms = Norms::default();
    if language == "en" {
        if !t.closed_class.is_empty() {
            closed.learn_from_conll(&root.join(&t.closed_class), 5)?;
        }
        if !t.concreteness.is_empty() {
            norms.load_concreteness(&root.join(&t.concreteness))?;
        }
        if !t.binder.is_empty() {
            norms.load_binder(&root.join(&t.binder))?;
        }
    }
    match (&t.seed_lexicon, builtin_seeds(language)) {
        (Some(p), _) => {
            norms.load_seeds(p)?;
        }
        (None, Some(text)) => {
            let origin =
                std::path::PathBuf::from(format!("pipelines/lexicons/subcategories-{language}.tsv (built in)"));
            norms.parse_seeds(text, &origin)?;
        }
        (None, None) => {}
    }
    Ok(Lexicon { closed, norms })
}

/// Labels and feature sets of one layer (see the module docs).
/// Returns the labels artifact and the names of the layer's feature sets.
/// `group`: the SAE's language, or "all" for one SAE of every language (then the plan has one).
pub fn label_stage(
    ctx: &Ctx,
    group: &str,
    layer: usize,
    sae_id: &str,
    inputs: &[StoryLayer],
) -> Result<(ArtifactId, Vec<String>)> {
    let t = ctx
        .plan
        .file
        .taxonomy
        .clone()
        .ok_or_else(|| Error::Invalid("label stage without [taxonomy]".into()))?;
    let language = match group {
        "all" => ctx.plan.languages().into_iter().next().unwrap_or_default(),
        l => l.to_string(),
    };
    let labels_file = t.labels_for(&language);
    // only the settings the labels and feature sets depend on (the topography, partition and
    // prediction-error settings do not), so changing those reuses the labels
    let settings = serde_json::json!({
        "labels": t.labels, "closed_class": t.closed_class, "concreteness": t.concreteness,
        "binder": t.binder, "seed_lexicon": t.seed_lexicon, "random_seeds": t.random_seeds,
        "baselines": t.baselines, "labeller": t.labeller,
        "seed": ctx.plan.file.summary.seed,
    });
    // (keyed only when on, so labels without it keep their keys)
    let settings = match t.tuned_lens {
        true => serde_json::json!({"settings": settings, "tuned_lens": true}),
        false => settings,
    };
    let mut key = KeyBuilder::new("labels", REV_LABELS)
        .part("sae", sae_id)
        .config("layer", &layer)
        .config("taxonomy", &settings);
    for i in inputs {
        key = key
            .part("story", &i.story_art)
            .part("codes", &i.codes)
            .part("act", &i.act);
    }
    for p in [&labels_file, &t.seed_lexicon].into_iter().flatten() {
        key = key.part("file", crate::store::artifacts::file_digest(p)?);
    }
    let id = key.finish();
    let labels = ctx.store.json("labels", &id, || {
        compute_labels(ctx, &t, group, layer, sae_id, inputs, labels_file.as_deref())
    })?;
    // the set definitions alone (small), read by every derived design of the layer
    let sets = ctx.store.json("feature-sets", &id, || Ok(labels.sets.clone()))?;
    Ok((id, sets.iter().map(|d| d.name.clone()).collect()))
}

fn compute_labels(
    ctx: &Ctx,
    t: &TaxonomySection,
    group: &str,
    layer: usize,
    sae_id: &str,
    inputs: &[StoryLayer],
    labels_file: Option<&std::path::Path>,
) -> Result<LayerLabels> {
    let mut words: Vec<String> = Vec::new();
    let mut offsets = vec![0usize];
    let mut codes_parts = Vec::new();
    let mut acts = Vec::new();
    let mut language = String::from("en");
    for i in inputs {
        let st: StoredStory = ctx.store.load_json("story", &i.story_art)?;
        language = st.story.language.clone();
        words.extend(st.story.words.iter().map(|w| w.text.clone()));
        offsets.push(words.len());
        codes_parts.push(ctx.store.load_arrays("codes", &i.codes)?.f32("x")?.to_owned());
        acts.push(ctx.store.load_arrays("lm", &i.act)?.f32("x")?.to_owned());
    }
    let views: Vec<_> = codes_parts.iter().map(|c| c.view()).collect();
    let codes = ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| Error::Invalid(format!("codes: {e}")))?;
    let av: Vec<_> = acts.iter().map(|a| a.view()).collect();
    let acts = ndarray::concatenate(ndarray::Axis(0), &av).map_err(|e| Error::Invalid(format!("activations: {e}")))?;
    if codes.nrows() != words.len() {
        return Err(Error::Invalid(format!(
            "layer {layer}: {} rows of codes for {} words",
            codes.nrows(),
            words.len()
        )));
    }
    let model_dir = match &ctx.plan.model_dir {
        Some(d) => d.clone(),
        None => crate::lm::ensure_default_model()?,
    };
    let lens = Lens::load(&model_dir)?;
    let entropy = lens.entropy_bits(acts.view())?;
    let mut forms: Vec<String> = words.iter().map(|w| normalize(w)).filter(|w| !w.is_empty()).collect();
    forms.sort();
    forms.dedup();
    let raw = lens.word_embeddings(&forms)?;
    let vectors = WordVectors::new(forms, raw.view());
    let lex = lexicon(ctx, t, &language)?;
    let (builtin, evidence) = label_features(
        &LabelInputs {
            codes: codes.view(),
            words: &words,
            offsets: &offsets,
            entropy_bits: &entropy,
            entropy_kind: "logit-lens",
            vectors: &vectors,
            lexicon: &lex,
        },
        &t.labeller,
        layer,
    );
    // `tuned-lens`: the same labeller with the next-token entropy read through the layer's
    // translator; only its category counts are kept (the labels and sets are the logit lens's)
    let tuned_lens = match t.tuned_lens {
        false => None,
        true => {
            let tr = super::sae_tokens::translator_stage(ctx, group, layer)?;
            let translated = match &tr {
                Some(tr) => tr.apply(acts.view()),
                None => acts.clone(),
            };
            let tuned_entropy = lens.entropy_bits(translated.view())?;
            let (tuned, _) = label_features(
                &LabelInputs {
                    codes: codes.view(),
                    words: &words,
                    offsets: &offsets,
                    entropy_bits: &tuned_entropy,
                    entropy_kind: "tuned-lens",
                    vectors: &vectors,
                    lexicon: &lex,
                },
                &t.labeller,
                layer,
            );
            Some(TunedLensShares {
                r2_heldout: tr.as_ref().map(|t| t.r2_heldout),
                counts: Category::ALL
                    .iter()
                    .map(|&c| (c.name().to_string(), tuned.features_of(c).len()))
                    .collect(),
                changed: tuned
                    .labels
                    .iter()
                    .zip(&builtin.labels)
                    .filter(|(a, b)| a.category != b.category)
                    .count(),
            })
        }
    };
    // evidence no labeller sees, for scoring explanations (`labels score`): the next strongest
    // contexts after the top ones, and as many where the feature is silent
    let scoring = crate::sae::evidence::scoring_contexts(
        codes.view(),
        &words,
        &offsets,
        t.labeller.top,
        SCORING_CONTEXTS,
        t.labeller.context,
        t.labeller.seed,
    );
    let (imported, imported_missing) = match labels_file {
        Some(p) => {
            let answers = tasks::read_answers(p)?;
            let (set, missing) = tasks::label_set_from_answers(
                &answers,
                layer,
                codes.ncols(),
                &p.display().to_string(),
                Some(&builtin),
            )?;
            (Some(set), missing)
        }
        None => (None, 0),
    };
    let used = imported.as_ref().unwrap_or(&builtin);
    let variances: Vec<f64> = builtin.labels.iter().map(|l| l.evidence.variance).collect();
    // the activity rule every built-in label is decided under: random baselines draw from these
    let eligible = builtin.eligible(t.labeller.min_active);
    let semantic = used.features_of(Category::Semantic);
    let semantic_pr = (semantic.len() >= 2)
        .then(|| crate::lm::summary::participation_ratio(&codes.select(ndarray::Axis(1), &semantic)))
        .filter(|p| p.is_finite());
    let layer_pr = Some(crate::lm::summary::participation_ratio(&acts)).filter(|p| p.is_finite());
    let projection = match t.projection_dim {
        ProjectionDim::Layer => ("the layer's activations", layer_pr.unwrap_or(1.0)),
        ProjectionDim::Semantic => ("the semantic set's codes", semantic_pr.unwrap_or(1.0)),
    };
    let sets = feature_sets(t, used, &variances, &eligible, projection, ctx.plan.file.summary.seed);
    let mut lexicon_sources = lex.closed.sources.clone();
    lexicon_sources.extend(lex.norms.sources.clone());
    Ok(LayerLabels {
        layer,
        language,
        n_words: words.len(),
        evidence_texts: inputs
            .iter()
            .zip(offsets.windows(2))
            .map(|(i, o)| (i.story.clone(), o[1] - o[0]))
            .collect(),
        tasks: tasks::tasks(layer, &evidence, Some(&scoring)),
        builtin: builtin.clone(),
        imported,
        imported_missing,
        lexicon_sources,
        sets,
        semantic_pr,
        tuned_lens,
    })
    .inspect(|_| {
        tracing::info!(
            "labelled the {} features of layer {layer} (SAE {})",
            codes.ncols(),
            &sae_id[..8]
        )
    })
}

/// The layer's feature sets: non-empty categories and subcategories, then (when the semantic set
/// is non-empty) `seeds` count- and variance-matched random subsets drawn from the `eligible`
/// features (those the labeller's activity rule admits, the rule the semantic set passed), and
/// with `baselines` PCA, random projection (to `projection`'s participation ratio: what it was
/// computed on, and its value), reconstruction error and ablations.
pub fn feature_sets(
    t: &TaxonomySection,
    used: &LabelSet,
    variances: &[f64],
    eligible: &[usize],
    projection: (&str, f64),
    seed: u64,
) -> Vec<FeatureSetDef> {
    let mut out = Vec::new();
    let subset = |name: String, kind: &str, cols: Vec<usize>, seed: Option<u64>, note: String| FeatureSetDef {
        name,
        kind: kind.into(),
        n_features: cols.len(),
        variance_share: Some(baselines::variance_share(variances, &cols)),
        spec: SetSpec::Columns(cols),
        seed,
        note,
    };
    for c in Category::ALL {
        let cols = used.features_of(c);
        if !cols.is_empty() {
            out.push(subset(
                format!("sae:{}", c.name()),
                "category",
                cols,
                None,
                String::new(),
            ));
        }
    }
    for s in Subcategory::ALL {
        let cols = used.features_of_sub(s);
        if !cols.is_empty() {
            out.push(subset(
                format!("sae:sub:{}", s.name()),
                "subcategory",
                cols,
                None,
                s.long_name().into(),
            ));
        }
    }
    let semantic = used.features_of(Category::Semantic);
    if semantic.is_empty() {
        return out;
    }
    let target: f64 = semantic.iter().map(|&j| variances[j]).sum();
    let n_eligible = eligible.len();
    for k in 0..t.random_seeds as u64 {
        let s = seed.wrapping_add(1000 + k);
        out.push(subset(
            format!("random:count:{k:02}"),
            "count-matched",
            baselines::count_matched_from(eligible, semantic.len(), s),
            Some(s),
            format!(
                "{} random features (as many as semantic) of the {n_eligible} eligible",
                semantic.len()
            ),
        ));
    }
    for k in 0..t.random_seeds as u64 {
        let s = seed.wrapping_add(2000 + k);
        out.push(subset(
            format!("random:variance:{k:02}"),
            "variance-matched",
            baselines::variance_matched_from(eligible, variances, target, s),
            Some(s),
            format!(
                "random features of the {n_eligible} eligible until their summed activation variance reaches the semantic set's"
            ),
        ));
    }
    if t.baselines {
        out.push(FeatureSetDef {
            name: "pca".into(),
            kind: "pca".into(),
            spec: SetSpec::Pca { k: semantic.len() },
            n_features: semantic.len(),
            variance_share: None,
            seed: None,
            note: format!(
                "principal components of the full SAE design fitted on each outer fold's training TRs, \
                 k = {} (the semantic set's size) capped at the training rank − 1, scores not whitened",
                semantic.len()
            ),
        });
        let (pr_of, pr) = projection;
        let dim = pr.round().max(1.0) as usize;
        out.push(FeatureSetDef {
            name: "random-projection".into(),
            kind: "random-projection".into(),
            spec: SetSpec::RandomProjection {
                dim,
                seed: seed.wrapping_add(3000),
            },
            n_features: dim,
            variance_share: None,
            seed: Some(seed.wrapping_add(3000)),
            note: format!(
                "Gaussian projection of the full SAE design to {dim} dimensions, the participation ratio of {pr_of} ({pr:.1})"
            ),
        });
        out.push(FeatureSetDef {
            name: "sae-error".into(),
            kind: "sae-error".into(),
            spec: SetSpec::Error,
            n_features: 0,
            variance_share: None,
            seed: None,
            note: "x − x̂: what the SAE does not reconstruct".into(),
        });
        out.push(FeatureSetDef {
            name: "ablate:semantic".into(),
            kind: "recon-ablated".into(),
            n_features: semantic.len(),
            variance_share: Some(baselines::variance_share(variances, &semantic)),
            spec: SetSpec::Ablate(semantic.clone()),
            seed: None,
            note: "reconstruction with the semantic features at their story mean".into(),
        });
        for k in 0..2u64 {
            let s = seed.wrapping_add(1000 + k);
            let cols = baselines::count_matched_from(eligible, semantic.len(), s);
            out.push(FeatureSetDef {
                name: format!("ablate:random:{k:02}"),
                kind: "recon-ablated".into(),
                n_features: cols.len(),
                variance_share: Some(baselines::variance_share(variances, &cols)),
                spec: SetSpec::Ablate(cols),
                seed: Some(s),
                note: "reconstruction with count-matched random features at their story mean".into(),
            });
        }
    }
    out
}

/// The design of derived set `set` for one story at one layer.
pub fn derived_design_stage(
    ctx: &Ctx,
    sl: &StoryLayer,
    sae_design: &str,
    sae_id: &str,
    labels_id: &str,
    set: &str,
) -> Result<ArtifactId> {
    let sets: Vec<FeatureSetDef> = ctx.store.load_json("feature-sets", labels_id)?;
    let def = sets.iter().find(|d| d.name == set).ok_or_else(|| {
        Error::Invalid(format!(
            "feature set `{set}` is not defined for story `{}`'s layer",
            sl.story
        ))
    })?;
    match &def.spec {
        SetSpec::Columns(_) | SetSpec::Pca { .. } | SetSpec::RandomProjection { .. } => {
            let id = KeyBuilder::new("design", REV_DERIVED)
                .part("from", sae_design)
                .config("spec", &def.spec)
                .finish();
            ctx.store.arrays("design", &id, || {
                let full = ctx.store.load_arrays("design", sae_design)?;
                let x = full.f64("x")?;
                let d = match &def.spec {
                    SetSpec::Columns(cols) => x.select(ndarray::Axis(1), cols),
                    // the full design: the fit takes the principal components inside each outer
                    // fold, from the training TRs only (stages::FOLD_TRANSFORM_META)
                    SetSpec::Pca { k } => {
                        return Ok(Arrays::default()
                            .with_f64("x", x.to_owned())
                            .with_meta(stages::FOLD_TRANSFORM_META, format!("pca:{k}")))
                    }
                    SetSpec::RandomProjection { dim, seed } => {
                        let mut p = baselines::random_projection(x, *dim, *seed);
                        crate::stats::zscore_columns(p.view_mut());
                        p
                    }
                    _ => unreachable!("word-level specs handled below"),
                };
                Ok(Arrays::default().with_f64("x", d))
            })?;
            Ok(id)
        }
        SetSpec::Error => {
            let variant = serde_json::to_string(&def.spec).expect("spec serialises");
            let eid = stages::sae_map_stage(ctx, "sae-error", &sl.act, sae_id, &variant, |sae, x| {
                let r = sae.reconstruct(x);
                &x - &r
            })?;
            stages::design_stage(ctx, &sl.story_art, "sae-error", &eid)
        }
        SetSpec::Ablate(cols) => {
            let variant = serde_json::to_string(&def.spec).expect("spec serialises");
            let eid = stages::sae_map_stage(ctx, "ablated", &sl.act, sae_id, &variant, |sae, x| {
                let mut c = sae.encode(x);
                for &j in cols {
                    let mut col = c.column_mut(j);
                    let m = col.iter().map(|v| *v as f64).sum::<f64>() / col.len().max(1) as f64;
                    col.fill(m as f32);
                }
                sae.decode(c.view())
            })?;
            stages::design_stage(ctx, &sl.story_art, "ablated", &eid)
        }
    }
}

const REV_PARTITION: u32 = 1;
const REV_PRED_ERROR: u32 = 1;

/// Variance partitioning of one subject's SAE design by category (METHOD.md §5), per ROI.
/// R² values are held-out R² over the tested TRs of nested-CV ridge (α chosen per ROI by inner-CV
/// R²), on the detrended responses, with the encoding section's folds and α grid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionRecord {
    pub subject: String,
    pub rois: Vec<String>,
    /// The groups: the layer's non-empty categories (feature sets `sae:<category>`).
    pub groups: Vec<String>,
    /// Design columns per group.
    pub n_columns: Vec<usize>,
    /// v(all groups) per ROI (None for ROIs excluded as constant).
    pub r2_full: Vec<Option<f64>>,
    /// unique(g) = v(all) − v(all ∖ g), (group, ROI).
    pub unique: Vec<Vec<Option<f64>>>,
    /// v(all) − Σ_g unique(g) per ROI.
    pub shared: Vec<Option<f64>>,
    /// Exact Shapley values (group, ROI), when `[taxonomy] shapley`.
    pub shapley: Option<Vec<Vec<Option<f64>>>>,
    /// Distinct ridge models fitted.
    pub n_fits: usize,
    pub n_trs: usize,
}

/// Category groups of the design columns: group index per column (a column's feature is
/// `column % n_features`, which also covers FIR-delayed designs) and the groups' names.
fn category_groups(sets: &[FeatureSetDef], n_cols: usize) -> Result<(Vec<usize>, Vec<String>)> {
    let cats: Vec<(&str, &Vec<usize>)> = sets
        .iter()
        .filter(|d| d.kind == "category")
        .filter_map(|d| match &d.spec {
            SetSpec::Columns(c) if !c.is_empty() => Some((d.name.as_str(), c)),
            _ => None,
        })
        .collect();
    let n_features: usize = cats.iter().map(|(_, c)| c.len()).sum();
    if n_features == 0 || n_cols % n_features != 0 {
        return Err(Error::Invalid(format!(
            "variance partition: the categories cover {n_features} features but the SAE design has {n_cols} columns"
        )));
    }
    let mut of_feature = vec![usize::MAX; n_features];
    for (g, (_, cols)) in cats.iter().enumerate() {
        for &j in cols.iter() {
            if j >= n_features || of_feature[j] != usize::MAX {
                return Err(Error::Invalid(format!(
                    "variance partition: feature {j} is out of range or in two categories"
                )));
            }
            of_feature[j] = g;
        }
    }
    Ok((
        (0..n_cols).map(|c| of_feature[c % n_features]).collect(),
        cats.iter().map(|(n, _)| n.to_string()).collect(),
    ))
}

/// The variance partition (and Shapley values) of one subject's SAE design at one layer.
pub fn partition_stage(ctx: &Ctx, design_id: &str, labels_id: &str, roi_ids: &[&str]) -> Result<Vec<ArtifactId>> {
    use crate::encoding::partition::{shapley_exact, variance_partition, ValueCache};
    use crate::encoding::{
        nested_cv_factors, nested_cv_ridge_factored, AlphaCriterion, DesignTransform, NestedCvOptions,
    };
    let t = ctx
        .plan
        .file
        .taxonomy
        .clone()
        .ok_or_else(|| Error::Invalid("partition stage without [taxonomy]".into()))?;
    let e = &ctx.plan.file.encoding;
    let ids: Vec<ArtifactId> = roi_ids
        .iter()
        .map(|roi_id| {
            KeyBuilder::new("partition", REV_PARTITION)
                .part("design", design_id)
                .part("roi", roi_id)
                .part("labels", labels_id)
                .config("encoding", e)
                .config("shapley", &t.shapley)
                .finish()
        })
        .collect();
    // stored and readable: reused; the others are computed together
    let stored = |i: usize| ctx.store.load_json::<PartitionRecord>("partition", &ids[i]).is_ok();
    let missing: Vec<usize> = (0..ids.len()).filter(|&i| !stored(i)).collect();
    let reuse = |id: &ArtifactId| {
        ctx.store.json("partition", id, || -> Result<PartitionRecord> {
            Err(Error::Invalid(format!(
                "partition artifact {id} disappeared during the run"
            )))
        })
    };
    if missing.is_empty() {
        for id in &ids {
            reuse(id)?;
        }
        return Ok(ids);
    }
    let alphas = ctx.plan.alphas();
    let sets: Vec<FeatureSetDef> = ctx.store.load_json("feature-sets", labels_id)?;
    let design = ctx.store.load_arrays("design", design_id)?;
    let x = design.f64("x")?;
    let (groups, names) = category_groups(&sets, x.ncols())?;
    let n_columns: Vec<usize> = (0..names.len())
        .map(|g| groups.iter().filter(|&&c| c == g).count())
        .collect();
    let none = |k: usize, n: usize| vec![vec![None; n]; k];
    // the missing subjects' records, and the detrended kept responses of those with any
    let mut recs = Vec::with_capacity(missing.len());
    let mut targets: Vec<(usize, Vec<usize>, ndarray::Array2<f64>)> = Vec::new(); // (record, keep, y)
    for &i in &missing {
        let (roi, rois, keep) = stages::fit_responses(ctx, &design, roi_ids[i])?;
        recs.push(PartitionRecord {
            subject: roi.meta.get("subject").cloned().unwrap_or_default(),
            rois: rois.clone(),
            groups: names.clone(),
            n_columns: n_columns.clone(),
            r2_full: vec![None; rois.len()],
            unique: none(names.len(), rois.len()),
            shared: vec![None; rois.len()],
            shapley: t.shapley.then(|| none(names.len(), rois.len())),
            n_fits: 0,
            n_trs: x.nrows(),
        });
        if !keep.is_empty() {
            let mut yk = roi.f64("y")?.select(ndarray::Axis(1), &keep);
            crate::stats::detrend_columns(yk.view_mut(), stages::DETREND_ORDER);
            targets.push((recs.len() - 1, keep, yk));
        }
    }
    if !targets.is_empty() {
        let joint = ctx.store.timed("partition", &ids[missing[0]], || {
            let outer = crate::encoding::contiguous_block_folds(x.nrows(), e.outer_folds, e.gap_trs)?;
            let opts = NestedCvOptions {
                criterion: AlphaCriterion::R2,
                ..Default::default()
            };
            // v(S): each subject's held-out R² per kept ROI, subjects one after another; the
            // subset's decompositions are computed once for all of them
            let value = |s: crate::encoding::partition::GroupMask| -> Result<Vec<f64>> {
                let cols: Vec<usize> = (0..x.ncols()).filter(|&c| s & (1 << groups[c]) != 0).collect();
                if cols.is_empty() {
                    return Err(Error::Invalid(format!(
                        "variance partition: subset {s:#b} has no columns"
                    )));
                }
                let xs = x.select(ndarray::Axis(1), &cols);
                let f = nested_cv_factors(xs.view(), &outer, e.inner_folds, e.gap_trs, DesignTransform::Zscore)?;
                let mut v = Vec::new();
                for (_, _, y) in &targets {
                    let fit = nested_cv_ridge_factored(&f, y.view(), &alphas, &opts)?;
                    let pred = fit.predictions.select(ndarray::Axis(0), &fit.tested_rows);
                    let obs = y.select(ndarray::Axis(0), &fit.tested_rows);
                    v.extend(crate::encoding::stats::r2_per_target(pred.view(), obs.view()));
                }
                Ok(v)
            };
            let mut cache = ValueCache::new(names.len(), value)?;
            let vp = variance_partition(&mut cache)?;
            let phi = if t.shapley {
                Some(shapley_exact(&mut cache)?)
            } else {
                None
            };
            Ok((vp, phi, cache.n_fitted()))
        })?;
        let (vp, phi, n_fits) = joint;
        let fin = |v: f64| v.is_finite().then_some(v);
        let mut col = 0;
        for (r, keep, _) in &targets {
            let rec = &mut recs[*r];
            for &j in keep {
                rec.r2_full[j] = fin(vp.r2_full[col]);
                rec.shared[j] = fin(vp.shared[col]);
                for g in 0..names.len() {
                    rec.unique[g][j] = fin(vp.unique[[g, col]]);
                    if let (Some(s), Some(p)) = (rec.shapley.as_mut(), phi.as_ref()) {
                        s[g][j] = fin(p[[g, col]]);
                    }
                }
                col += 1;
            }
            rec.n_fits = n_fits;
        }
    }
    for (&i, rec) in missing.iter().zip(recs) {
        ctx.store.json("partition", &ids[i], || Ok(rec))?;
    }
    for (i, id) in ids.iter().enumerate() {
        if !missing.contains(&i) {
            reuse(id)?;
        }
    }
    Ok(ids)
}

/// What the prediction-error stage computed for one story at one layer (stored beside the
/// `raw+pred-error` design, under the same id).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PredErrorRecord {
    pub story: String,
    pub layer: usize,
    pub from_layer: usize,
    pub n_words: usize,
    pub n_features: usize,
    pub n_features_from: usize,
    /// Decoder cosine of each feature with its match: median and 10th / 90th percentiles.
    pub cosine_median: f64,
    pub cosine_p10: f64,
    pub cosine_p90: f64,
    /// Distinct earlier features used as matches.
    pub n_distinct_matches: usize,
    /// Share of features matched with the earlier feature of the same index. Near 1 means the
    /// two SAEs share their initialisation and their decoders moved little in training, so the
    /// alignment reflects the initialisation, not learned directions.
    pub identity_share: f64,
    /// Median over features of the R² of f_i on its matched earlier feature (over the words).
    pub r2_median: f64,
    /// Columns of the combined design: raw activations, then ε.
    pub n_raw_columns: usize,
    pub n_error_columns: usize,
}

/// The `raw+pred-error` design of one story at `layer`: the raw activations' design next to the
/// design of ε (layer-`layer` SAE codes residualised on their decoder-aligned layer-`from_layer`
/// features, see [`crate::taxonomy::prederror`]). Returns the design's id; the
/// [`PredErrorRecord`] is stored under the same id (stage `pred-error-record`).
#[allow(clippy::too_many_arguments)]
pub fn pred_error_stage(
    ctx: &Ctx,
    story: &str,
    story_art: &str,
    layer: usize,
    (codes, sae): (&str, &str),
    from_layer: usize,
    (codes_prev, sae_prev): (&str, &str),
    raw_design: &str,
) -> Result<ArtifactId> {
    use crate::taxonomy::prederror::{median, prediction_residuals};
    let (aid, alignment) = alignment_stage(ctx, sae, sae_prev)?;
    let eid = KeyBuilder::new("pred-error", REV_PRED_ERROR)
        .part("codes", codes)
        .part("codes-from", codes_prev)
        .part("alignment", &aid)
        .finish();
    let eps = ctx.store.arrays("pred-error", &eid, || {
        let c = ctx.store.load_arrays("codes", codes)?;
        let p = ctx.store.load_arrays("codes", codes_prev)?;
        let r = prediction_residuals(c.f32("x")?, p.f32("x")?, &alignment)?;
        let coef = ndarray::Array2::from_shape_fn((r.alpha.len(), 3), |(i, k)| match k {
            0 => r.alpha[i],
            1 => r.beta[i],
            _ => r.r2[i],
        });
        Ok(Arrays::default().with_f32("x", r.eps).with_f64("coef", coef))
    })?;
    let eps_design = stages::design_stage(ctx, story_art, "pred-error", &eid)?;
    let id = KeyBuilder::new("design", REV_PRED_ERROR)
        .part("raw", raw_design)
        .part("pred-error", &eps_design)
        .finish();
    ctx.store.arrays("design", &id, || {
        let raw = ctx.store.load_arrays("design", raw_design)?;
        let err = ctx.store.load_arrays("design", &eps_design)?;
        let (raw, err) = (raw.f64("x")?, err.f64("x")?);
        if raw.nrows() != err.nrows() {
            return Err(Error::Invalid(format!(
                "raw+pred-error: the raw design has {} TRs, the error design {}",
                raw.nrows(),
                err.nrows()
            )));
        }
        let both = ndarray::concatenate(ndarray::Axis(1), &[raw, err])
            .map_err(|e| Error::Invalid(format!("raw+pred-error: {e}")))?;
        Ok(Arrays::default().with_f64("x", both))
    })?;
    ctx.store.json("pred-error-record", &id, || {
        let coef = eps.f64("coef")?;
        let cos = || alignment.cosine.iter().map(|c| *c as f64);
        let quantile = |q: f64| {
            let mut v: Vec<f64> = cos().collect();
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * q).round() as usize]
        };
        let raw_cols = ctx.store.load_arrays("design", raw_design)?.f64("x")?.ncols();
        let err_cols = ctx.store.load_arrays("design", &eps_design)?.f64("x")?.ncols();
        let distinct: std::collections::BTreeSet<u32> = alignment.matched.iter().copied().collect();
        let identity = alignment.matched.iter().enumerate().filter(|(i, j)| *i == **j as usize).count() as f64
            / alignment.matched.len().max(1) as f64;
        if identity > 0.5 {
            tracing::warn!(
                "prediction error `{story}` layer {layer} from {from_layer}: {:.0}% of features match the earlier feature of the same index; the SAEs likely share their initialisation and barely moved, so the alignment is not informative",
                100.0 * identity
            );
        }
        Ok(PredErrorRecord {
            story: story.to_string(),
            layer,
            from_layer,
            n_words: eps.f32("x")?.nrows(),
            n_features: alignment.matched.len(),
            n_features_from: ctx.store.load_arrays("codes", codes_prev)?.f32("x")?.ncols(),
            cosine_median: median(cos()),
            cosine_p10: quantile(0.1),
            cosine_p90: quantile(0.9),
            n_distinct_matches: distinct.len(),
            identity_share: identity,
            r2_median: median(coef.column(2).iter().copied()),
            n_raw_columns: raw_cols,
            n_error_columns: err_cols,
        })
    })?;
    Ok(id)
}

/// The decoder alignment of layer ℓ's SAE `sae` with layer ℓ − Δ's `sae_prev` (id, alignment).
fn alignment_stage(
    ctx: &Ctx,
    sae: &str,
    sae_prev: &str,
) -> Result<(ArtifactId, crate::taxonomy::prederror::Alignment)> {
    let load_sae = |id: &str| {
        let dir = ctx.store.root().join("sae").join(&id[..2]).join(id);
        crate::sae::load_sae(&dir)
    };
    let aid = KeyBuilder::new("alignment", REV_PRED_ERROR)
        .part("sae", sae)
        .part("sae-from", sae_prev)
        .finish();
    let alignment = ctx.store.json("alignment", &aid, || {
        let (a, b) = (load_sae(sae)?, load_sae(sae_prev)?);
        crate::taxonomy::prederror::decoder_alignment(a.sae.weights.w_dec.view(), b.sae.weights.w_dec.view())
    })?;
    Ok((aid, alignment))
}

/// The feature sets of the paper's prediction-error comparison and its two controls (METHOD.md
/// §9), each encoded against `sae:semantic` (the semantic set's own codes):
pub const PRED_ERROR_SETS: [&str; 3] = [
    // the semantic codes and their ε against the aligned earlier features: the paper's set
    "pe:semantic+error",
    // the same columns with ε against a shuffled alignment: "more columns" built the same way
    "pe:semantic+shuffled-error",
    // the semantic codes and the aligned earlier features, unresidualised
    "pe:semantic+earlier",
];

/// The designs of [`PRED_ERROR_SETS`] for one story at `layer` (from the codes and SAE of layer
/// ℓ and of ℓ − Δ, and the layer's labels), by name; none when the layer has no semantic
/// features.
pub fn pred_error_sets_stage(
    ctx: &Ctx,
    story_art: &str,
    (codes, sae): (&str, &str),
    (codes_prev, sae_prev): (&str, &str),
    labels_id: &str,
) -> Result<Vec<(String, ArtifactId)>> {
    let sets: Vec<FeatureSetDef> = ctx.store.load_json("feature-sets", labels_id)?;
    let semantic = match sets.iter().find(|d| d.name == "sae:semantic").map(|d| &d.spec) {
        Some(SetSpec::Columns(c)) if !c.is_empty() => c.clone(),
        _ => {
            tracing::warn!("prediction error: no semantic features at this layer; its sets are skipped");
            return Ok(Vec::new());
        }
    };
    let (aid, alignment) = alignment_stage(ctx, sae, sae_prev)?;
    let seed = ctx.plan.file.summary.seed;
    // the three sets come from one computation, done only if one of them is not stored
    let mut sets_words: Option<[ndarray::Array2<f32>; 3]> = None;
    let mut out = Vec::with_capacity(PRED_ERROR_SETS.len());
    for (v, name) in PRED_ERROR_SETS.iter().enumerate() {
        let wid = KeyBuilder::new("pred-error-sets", REV_PRED_ERROR)
            .part("codes", codes)
            .part("codes-from", codes_prev)
            .part("alignment", &aid)
            .part("labels", labels_id)
            .part("set", name)
            .config("seed", &seed)
            .finish();
        ctx.store.arrays("pred-error-sets", &wid, || {
            if sets_words.is_none() {
                let c = ctx.store.load_arrays("codes", codes)?;
                let p = ctx.store.load_arrays("codes", codes_prev)?;
                let (c, p) = (c.f32("x")?, p.f32("x")?);
                let pe = crate::taxonomy::prederror::pred_error_sets(c, p, &alignment, &semantic, seed)?;
                let own = c.select(ndarray::Axis(1), &semantic);
                let with = |extra: ndarray::Array2<f32>| {
                    ndarray::concatenate(ndarray::Axis(1), &[own.view(), extra.view()])
                        .map_err(|e| Error::Invalid(format!("prediction-error sets: {e}")))
                };
                sets_words = Some([with(pe.error)?, with(pe.shuffled_error)?, with(pe.earlier)?]);
            }
            let x = sets_words.as_ref().expect("computed above")[v].clone();
            Ok(Arrays::default().with_f32("x", x))
        })?;
        out.push((
            name.to_string(),
            stages::design_stage(ctx, story_art, "pred-error-sets", &wid)?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taxonomy::{Evidence, FeatureLabel};

    #[test]
    fn random_baselines_are_drawn_from_eligible_features_only() {
        // 200 features: 0..40 semantic (active), 40..100 syntactic (active), 100..200 never active
        let labels = (0..200u32)
            .map(|j| FeatureLabel {
                feature: j,
                category: match j {
                    0..40 => Category::Semantic,
                    40..100 => Category::Syntactic,
                    _ => Category::Other,
                },
                confidence: [0.2; 5],
                subcategory: None,
                subcategory_scores: [0.0; 5],
                evidence: Evidence {
                    n_active: if j < 100 { 10 } else { 0 },
                    variance: if j < 100 { 1.0 } else { 0.0 },
                    ..Default::default()
                },
            })
            .collect();
        let set = LabelSet {
            source: "builtin".into(),
            layer: 3,
            entropy_kind: "logit-lens".into(),
            labels,
        };
        let t: TaxonomySection = toml::from_str("").unwrap();
        let eligible = set.eligible(t.labeller.min_active);
        assert_eq!(eligible, (0..100).collect::<Vec<_>>());
        let variances: Vec<f64> = set.labels.iter().map(|l| l.evidence.variance).collect();
        let sets = feature_sets(&t, &set, &variances, &eligible, ("the layer's activations", 12.4), 0);
        let mut n_random = 0;
        for d in &sets {
            if let SetSpec::Columns(cols) | SetSpec::Ablate(cols) = &d.spec {
                if d.kind == "count-matched" || d.kind == "variance-matched" || d.name.starts_with("ablate:random") {
                    n_random += 1;
                    assert!(
                        cols.iter().all(|&j| j < 100),
                        "{} holds a never-active feature: {cols:?}",
                        d.name
                    );
                }
                if d.kind == "count-matched" {
                    assert_eq!(cols.len(), 40);
                }
            }
        }
        assert_eq!(n_random, 2 * t.random_seeds + 2);
        let rp = sets.iter().find(|d| d.kind == "random-projection").unwrap();
        assert_eq!(rp.n_features, 12);
        assert!(rp.note.contains("the layer's activations"), "{}", rp.note);
        let pca = sets.iter().find(|d| d.kind == "pca").unwrap();
        assert_eq!(pca.spec, SetSpec::Pca { k: 40 });
    }
}
