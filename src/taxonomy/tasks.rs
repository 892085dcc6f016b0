//! Labelling tasks for people or an external LLM, and their answers.
//!
//! Export: one JSON object per line (JSONL) per feature with its top contexts (the word with up
//! to 5 words each side), the category definitions and the expected response format:
//! `{"task_id", "layer", "feature", "contexts": [{"left", "token", "right", "activation"}],
//! "categories": {name: definition}, "subcategories": [...], "response_format": {...}}`.
//! Tasks written by a run also carry, for `cortexflow labels score`, `heldout` (the feature's next
//! strongest contexts, ranks after the ones shown) and `non_activating` (contexts where it is 0):
//! evidence no labeller saw.
//! Import: answers as JSONL, one object per line with `layer`, `feature`, `category` and
//! optionally `subcategory`, `confidence` ({category: weight}) and `rater`; or a TSV with a
//! header `layer  feature  category  [subcategory]`. Errors name the file, line and field.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{hard_label, Category, FeatureLabel, LabelSet, Subcategory};
use crate::sae::evidence::{Example, FeatureSummary};
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Context {
    pub left: String,
    pub token: String,
    pub right: String,
    pub activation: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub task_id: String,
    pub layer: usize,
    pub feature: u32,
    pub contexts: Vec<Context>,
    pub categories: BTreeMap<String, String>,
    pub subcategories: Vec<String>,
    pub response_format: serde_json::Value,
    /// Held-out activating contexts (ranks after `contexts`), for scoring explanations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heldout: Vec<Context>,
    /// Contexts where the feature is not active (activation 0), for scoring explanations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub non_activating: Vec<Context>,
    /// Share of the evidence words on which the feature is active (absent in older tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub density: Option<f64>,
}

/// The instructions every task carries.
pub fn response_format() -> serde_json::Value {
    serde_json::json!({
        "type": "json",
        "fields": {
            "layer": "the task's layer (copy it)",
            "feature": "the task's feature (copy it)",
            "category": "one of SEMANTIC, SYNTACTIC, LEXICAL, PREDICTION, OTHER",
            "subcategory": "for SEMANTIC only: concrete, event, affect, social or spatial (or null)",
            "confidence": "optional: {category: weight} summing to 1"
        },
        "example": {"layer": 15, "feature": 3, "category": "SEMANTIC", "subcategory": "affect"}
    })
}

/// Tasks for the features with at least one example; `scoring[feature]`, when given, holds the
/// feature's held-out activating and non-activating contexts
/// ([`crate::sae::evidence::scoring_contexts`]).
pub fn tasks(layer: usize, evidence: &[FeatureSummary], scoring: Option<&[(Vec<Example>, Vec<Example>)]>) -> Vec<Task> {
    let ctx = |e: &Example| Context {
        left: e.left.join(" "),
        token: e.token.clone(),
        right: e.right.join(" "),
        activation: e.activation,
    };
    let categories: BTreeMap<String, String> = Category::ALL
        .iter()
        .map(|c| (c.name().to_uppercase(), c.definition().to_string()))
        .collect();
    let subs: Vec<String> = Subcategory::ALL
        .iter()
        .map(|s| format!("{}: {}", s.name(), s.long_name()))
        .collect();
    evidence
        .iter()
        .filter(|f| !f.examples.is_empty())
        .map(|f| Task {
            task_id: format!("L{layer}-F{}", f.feature),
            layer,
            feature: f.feature,
            contexts: f
                .examples
                .iter()
                .map(|e| Context {
                    left: e.left.join(" "),
                    token: e.token.clone(),
                    right: e.right.join(" "),
                    activation: e.activation,
                })
                .collect(),
            categories: categories.clone(),
            subcategories: subs.clone(),
            response_format: response_format(),
            heldout: scoring
                .and_then(|s| s.get(f.feature as usize))
                .map_or(vec![], |s| s.0.iter().map(ctx).collect()),
            non_activating: scoring
                .and_then(|s| s.get(f.feature as usize))
                .map_or(vec![], |s| s.1.iter().map(ctx).collect()),
            density: Some(f.density),
        })
        .collect()
}

/// Writes tasks as JSONL (atomically).
pub fn write_tasks(path: &Path, tasks: &[Task]) -> Result<()> {
    let mut buf = Vec::new();
    for t in tasks {
        serde_json::to_writer(&mut buf, t).map_err(|e| Error::Invalid(format!("task to JSON: {e}")))?;
        buf.write_all(b"\n").map_err(|e| Error::io(path, e))?;
    }
    crate::paths::write_atomic(path, &buf)
}

/// One imported answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub layer: usize,
    pub feature: u32,
    pub category: Category,
    pub subcategory: Option<Subcategory>,
    /// Soft label when given, else one-hot.
    pub confidence: [f64; 5],
    pub rater: Option<String>,
}

fn bad(path: &Path, line: usize, field: &str, msg: impl std::fmt::Display) -> Error {
    Error::parse(path, "answers", format!("line {line}, field `{field}`: {msg}"))
}

/// Reads answers (JSONL, or TSV when the file ends in .tsv).
pub fn read_answers(path: &Path) -> Result<Vec<Answer>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let tsv = path.extension().is_some_and(|e| e == "tsv");
    let mut out = Vec::new();
    let mut header: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (layer, feature, cat, sub, conf, rater): (
            String,
            String,
            String,
            Option<String>,
            Option<serde_json::Value>,
            Option<String>,
        );
        if tsv {
            let cols: Vec<String> = line.split('\t').map(|s| s.trim().to_string()).collect();
            if header.is_empty() {
                header = cols;
                for need in ["layer", "feature", "category"] {
                    if !header.iter().any(|h| h == need) {
                        return Err(bad(path, ln, need, "missing from the header"));
                    }
                }
                continue;
            }
            let get = |name: &str| header.iter().position(|h| h == name).and_then(|j| cols.get(j).cloned());
            layer = get("layer").unwrap_or_default();
            feature = get("feature").unwrap_or_default();
            cat = get("category").unwrap_or_default();
            sub = get("subcategory").filter(|s| !s.is_empty());
            conf = None;
            rater = get("rater");
        } else {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(path, ln, "-", format!("not JSON: {e}")))?;
            let s = |k: &str| {
                v.get(k).and_then(|x| match x {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
            };
            layer = s("layer").ok_or_else(|| bad(path, ln, "layer", "missing"))?;
            feature = s("feature").ok_or_else(|| bad(path, ln, "feature", "missing"))?;
            cat = s("category").ok_or_else(|| bad(path, ln, "category", "missing"))?;
            sub = s("subcategory");
            conf = v.get("confidence").cloned().filter(|c| !c.is_null());
            rater = s("rater");
        }
        let layer: usize = layer
            .parse()
            .map_err(|_| bad(path, ln, "layer", format!("expected a layer number, found `{layer}`")))?;
        let feature: u32 = feature.parse().map_err(|_| {
            bad(
                path,
                ln,
                "feature",
                format!("expected a feature index, found `{feature}`"),
            )
        })?;
        let category = Category::parse(&cat).ok_or_else(|| {
            bad(
                path,
                ln,
                "category",
                format!("`{cat}` is not one of SEMANTIC, SYNTACTIC, LEXICAL, PREDICTION, OTHER"),
            )
        })?;
        let subcategory = match sub.as_deref().map(str::trim) {
            None | Some("") | Some("null") | Some("none") => None,
            Some(s) => Some(Subcategory::parse(s).ok_or_else(|| {
                bad(
                    path,
                    ln,
                    "subcategory",
                    format!("`{s}` is not concrete, event, affect, social or spatial"),
                )
            })?),
        };
        let mut confidence = [0.0; 5];
        match conf {
            Some(serde_json::Value::Object(m)) => {
                for (k, v) in m {
                    let c = Category::parse(&k)
                        .ok_or_else(|| bad(path, ln, "confidence", format!("unknown category `{k}`")))?;
                    confidence[c.index()] = v
                        .as_f64()
                        .filter(|x| x.is_finite() && *x >= 0.0)
                        .ok_or_else(|| bad(path, ln, "confidence", format!("`{k}` needs a weight ≥ 0")))?;
                }
                let t: f64 = confidence.iter().sum();
                if t <= 0.0 {
                    return Err(bad(path, ln, "confidence", "weights sum to 0"));
                }
                confidence = confidence.map(|c| c / t);
            }
            Some(other) => {
                return Err(bad(
                    path,
                    ln,
                    "confidence",
                    format!("expected an object, found {other}"),
                ))
            }
            None => confidence[category.index()] = 1.0,
        }
        out.push(Answer {
            layer,
            feature,
            category,
            subcategory,
            confidence,
            rater,
        });
    }
    Ok(out)
}

/// A label set of `layer` from imported answers, over `n_features` features: features without an
/// answer are OTHER with confidence 1 on OTHER (and counted in the returned number). When a
/// feature has several answers, their confidences are averaged and the hard label is their
/// argmax. Evidence values are copied from `builtin` when given.
pub fn label_set_from_answers(
    answers: &[Answer],
    layer: usize,
    n_features: usize,
    source: &str,
    builtin: Option<&LabelSet>,
) -> Result<(LabelSet, usize)> {
    let mut acc: BTreeMap<u32, ([f64; 5], usize, BTreeMap<Subcategory, usize>)> = BTreeMap::new();
    for a in answers.iter().filter(|a| a.layer == layer) {
        if a.feature as usize >= n_features {
            return Err(Error::Invalid(format!(
                "{source}: feature {} of layer {layer} is out of range (the SAE has {n_features} features)",
                a.feature
            )));
        }
        let e = acc.entry(a.feature).or_insert(([0.0; 5], 0, BTreeMap::new()));
        for j in 0..5 {
            e.0[j] += a.confidence[j];
        }
        e.1 += 1;
        if let Some(s) = a.subcategory {
            *e.2.entry(s).or_default() += 1;
        }
    }
    let mut missing = 0;
    let labels = (0..n_features as u32)
        .map(|f| {
            let evidence = builtin
                .and_then(|b| b.labels.get(f as usize))
                .map(|l| l.evidence.clone())
                .unwrap_or_default();
            match acc.get(&f) {
                Some((sum, n, subs)) => {
                    let confidence = sum.map(|v| v / *n as f64);
                    let category = hard_label(&confidence);
                    // most frequent subcategory; ties → earlier subcategory
                    let subcategory = (category == Category::Semantic)
                        .then(|| {
                            subs.iter()
                                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                                .map(|(s, _)| *s)
                        })
                        .flatten();
                    FeatureLabel {
                        feature: f,
                        category,
                        confidence,
                        subcategory,
                        subcategory_scores: [0.0; 5],
                        evidence,
                    }
                }
                None => {
                    missing += 1;
                    FeatureLabel {
                        feature: f,
                        category: Category::Other,
                        confidence: [0.0, 0.0, 0.0, 0.0, 1.0],
                        subcategory: None,
                        subcategory_scores: [0.0; 5],
                        evidence,
                    }
                }
            }
        })
        .collect();
    Ok((
        LabelSet {
            source: source.to_string(),
            layer,
            entropy_kind: builtin.map(|b| b.entropy_kind.clone()).unwrap_or_default(),
            labels,
        },
        missing,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_from_jsonl_and_tsv_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("a.jsonl");
        std::fs::write(
            &j,
            "{\"layer\": 15, \"feature\": 3, \"category\": \"SEMANTIC\", \"subcategory\": \"affect\"}\n\
             {\"layer\": \"15\", \"feature\": 4, \"category\": \"lexical\", \"confidence\": {\"LEXICAL\": 3, \"OTHER\": 1}}\n",
        )
        .unwrap();
        let a = read_answers(&j).unwrap();
        assert_eq!(a[0].subcategory, Some(Subcategory::Affect));
        assert_eq!(a[1].confidence, [0.0, 0.0, 0.75, 0.0, 0.25]);
        let (set, missing) = label_set_from_answers(&a, 15, 6, "a.jsonl", None).unwrap();
        assert_eq!(missing, 4);
        assert_eq!(set.labels[3].category, Category::Semantic);
        assert_eq!(set.labels[4].category, Category::Lexical);
        assert_eq!(set.labels[0].category, Category::Other);
        assert!(label_set_from_answers(&a, 15, 4, "a.jsonl", None).is_err());

        let t = dir.path().join("b.tsv");
        std::fs::write(&t, "layer\tfeature\tcategory\n15\t1\tsyntactic\n15\t2\tsemantics\n").unwrap();
        let e = read_answers(&t).unwrap_err().to_string();
        assert!(
            e.contains("line 3") && e.contains("category") && e.contains("semantics"),
            "{e}"
        );
    }
}
