//! Taxonomy stages of the fMRI pipeline (METHOD.md §4, §6, §10):
//! - `labels` (per layer): the built-in labels of every SAE feature from its evidence over the
//!   pipeline's stories (codes, words, logit-lens entropy at the layer, static embeddings,
//!   closed-class words, norms, seed lexicon), optional imported labels, the labelling tasks, and
//!   the layer's feature-set definitions (categories, subcategories, baselines);
//! - `design` (per story, layer, derived set): the set's design, derived from the full SAE design
//!   (column subsets, PCA, random projection) or from word-level SAE maps (reconstruction error,
//!   mean-ablated reconstructions) through [`stages::design_stage`].

use serde::{Deserialize, Serialize};

use super::stages::{self, Ctx, StoredStory};
use crate::config::TaxonomySection;
use crate::lm::lens::Lens;
use crate::store::artifacts::{Arrays, ArtifactId, KeyBuilder};
use crate::taxonomy::baselines::{self, FeatureSetDef, SetSpec};
use crate::taxonomy::labeller::{label_features, LabelInputs, WordVectors};
use crate::taxonomy::lexicon::{normalize, ClosedClass, Lexicon, Norms};
use crate::taxonomy::tasks::{self, Task};
use crate::taxonomy::{Category, LabelSet, Subcategory};
use crate::{Error, Result};

const REV_LABELS: u32 = 1;
const REV_DERIVED: u32 = 1;

/// Built-in seed lexicons (pipelines/lexicons/), used when `seed-lexicon` is not set.
fn builtin_seeds(language: &str) -> Option<&'static str> {
    match language {
        "en" => Some(include_str!("../../pipelines/lexicons/subcategories-en.tsv")),
        "fr" => Some(include_str!("../../pipelines/lexicons/subcategories-fr.tsv")),
        "zh" => Some(include_str!("../../pipelines/lexicons/subcategories-zh.tsv")),
        _ => None,
    }
}

/// One story's artifacts at one layer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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
    /// The built-in labeller's labels.
    pub builtin: LabelSet,
    /// Imported labels when `[taxonomy] labels` is set (then these define the feature sets), and
    /// how many features had no answer (labelled OTHER).
    pub imported: Option<LabelSet>,
    pub imported_missing: usize,
    pub lexicon_sources: Vec<String>,
    pub tasks: Vec<Task>,
    pub sets: Vec<FeatureSetDef>,
    /// The semantic set's participation ratio (the random projection's dimension).
    pub semantic_pr: f64,
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
pub fn label_stage(ctx: &Ctx, layer: usize, sae_id: &str, inputs: &[StoryLayer]) -> Result<(ArtifactId, Vec<String>)> {
    let t = ctx
        .plan
        .file
        .taxonomy
        .clone()
        .ok_or_else(|| Error::Invalid("label stage without [taxonomy]".into()))?;
    let mut key = KeyBuilder::new("labels", REV_LABELS)
        .part("sae", sae_id)
        .config("layer", &layer)
        .config("taxonomy", &t);
    for i in inputs {
        key = key
            .part("story", &i.story_art)
            .part("codes", &i.codes)
            .part("act", &i.act);
    }
    for p in [&t.labels, &t.seed_lexicon].into_iter().flatten() {
        key = key.part("file", crate::store::artifacts::file_digest(p)?);
    }
    let id = key.finish();
    let labels = ctx
        .store
        .json("labels", &id, || compute_labels(ctx, &t, layer, sae_id, inputs))?;
    // the set definitions alone (small), read by every derived design of the layer
    let sets = ctx.store.json("feature-sets", &id, || Ok(labels.sets.clone()))?;
    Ok((id, sets.iter().map(|d| d.name.clone()).collect()))
}

fn compute_labels(
    ctx: &Ctx,
    t: &TaxonomySection,
    layer: usize,
    sae_id: &str,
    inputs: &[StoryLayer],
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
    let (imported, imported_missing) = match &t.labels {
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
    let semantic = used.features_of(Category::Semantic);
    let semantic_pr = if semantic.len() >= 2 {
        crate::lm::summary::participation_ratio(&codes.select(ndarray::Axis(1), &semantic))
    } else {
        f64::NAN
    };
    let sets = feature_sets(t, used, &variances, semantic_pr, ctx.plan.file.summary.seed);
    let mut lexicon_sources = lex.closed.sources.clone();
    lexicon_sources.extend(lex.norms.sources.clone());
    Ok(LayerLabels {
        layer,
        language,
        n_words: words.len(),
        tasks: tasks::tasks(layer, &evidence),
        builtin: builtin.clone(),
        imported,
        imported_missing,
        lexicon_sources,
        sets,
        semantic_pr,
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
/// is non-empty) `seeds` count- and variance-matched random subsets, and with `baselines` PCA,
/// random projection, reconstruction error and ablations.
pub fn feature_sets(
    t: &TaxonomySection,
    used: &LabelSet,
    variances: &[f64],
    semantic_pr: f64,
    seed: u64,
) -> Vec<FeatureSetDef> {
    let n_total = used.labels.len();
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
    for k in 0..t.random_seeds as u64 {
        let s = seed.wrapping_add(1000 + k);
        out.push(subset(
            format!("random:count:{k:02}"),
            "count-matched",
            baselines::count_matched(n_total, semantic.len(), s),
            Some(s),
            format!("{} random features (as many as semantic)", semantic.len()),
        ));
    }
    for k in 0..t.random_seeds as u64 {
        let s = seed.wrapping_add(2000 + k);
        out.push(subset(
            format!("random:variance:{k:02}"),
            "variance-matched",
            baselines::variance_matched(variances, target, s),
            Some(s),
            "random features until their summed activation variance reaches the semantic set's".into(),
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
            note: "principal components of the full SAE design, as many as semantic features (capped at the rank)"
                .into(),
        });
        let dim = semantic_pr.round().max(1.0) as usize;
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
            note: format!("Gaussian projection of the full SAE design to the semantic set's participation ratio ({semantic_pr:.1})"),
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
            let cols = baselines::count_matched(n_total, semantic.len(), s);
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
                    SetSpec::Pca { k } => {
                        let mut s = baselines::pca_scores(x, (*k).min(x.nrows().saturating_sub(1)))?.0;
                        crate::stats::zscore_columns(s.view_mut());
                        s
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
