//! [`FeatureSet`]: which columns a design matrix holds (raw activations, SAE codes, their
//! reconstructions, lexical controls, prediction-error features, or a set the taxonomy derives).
//! A type, so that a kind is named in one place; its string form is what tables and pipeline
//! files carry (`raw`, `sae`, `sae-recon`, `controls`, `raw+pred-error`, or the derived set's name).
//!
//! May import: nothing of this crate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The feature set of a design (and of every fit and summary made from it).
///
/// Ordered by its string form, so tables sorted by feature set keep the order they had when the
/// sets were strings.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FeatureSet {
    /// The LM's residual stream at the layer (`raw`).
    Raw,
    /// The layer's SAE codes (`sae`).
    Sae,
    /// The SAE's reconstruction of the residual stream (`sae-recon`).
    SaeRecon,
    /// Word rate, length and Zipf frequency (`controls`), the same design at every layer.
    Controls,
    /// Raw activations plus the prediction-error features of the semantic set (`raw+pred-error`).
    RawPredError,
    /// A set derived from the feature labels (a category, subcategory or baseline), by name.
    Derived(String),
}

impl FeatureSet {
    /// The sets a pipeline file may ask for in `encoding.feature-sets`.
    pub const CONFIGURABLE: [FeatureSet; 4] = [
        FeatureSet::Raw,
        FeatureSet::Sae,
        FeatureSet::SaeRecon,
        FeatureSet::Controls,
    ];

    /// A category or subcategory set of the taxonomy (`sae:<category>`, `sae:sub:<name>`), a
    /// subset of the SAE's columns.
    pub fn is_taxonomy_subset(&self) -> bool {
        matches!(self, FeatureSet::Derived(n) if n.starts_with("sae:"))
    }

    /// The name in tables and pipeline files.
    pub fn as_str(&self) -> &str {
        match self {
            FeatureSet::Raw => "raw",
            FeatureSet::Sae => "sae",
            FeatureSet::SaeRecon => "sae-recon",
            FeatureSet::Controls => "controls",
            FeatureSet::RawPredError => "raw+pred-error",
            FeatureSet::Derived(name) => name,
        }
    }

    /// The set named `name`: a built-in one, else a derived set of that name.
    pub fn named(name: &str) -> FeatureSet {
        match name {
            "raw" => FeatureSet::Raw,
            "sae" => FeatureSet::Sae,
            "sae-recon" => FeatureSet::SaeRecon,
            "controls" => FeatureSet::Controls,
            "raw+pred-error" => FeatureSet::RawPredError,
            other => FeatureSet::Derived(other.to_string()),
        }
    }

    /// Whether a pipeline file may ask for it ([`FeatureSet::CONFIGURABLE`]).
    pub fn is_configurable(&self) -> bool {
        FeatureSet::CONFIGURABLE.contains(self)
    }
}

impl fmt::Display for FeatureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As the name's `Debug` (`"sae"`), so messages and reports read as they did with strings.
impl fmt::Debug for FeatureSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<String> for FeatureSet {
    fn from(s: String) -> Self {
        FeatureSet::named(&s)
    }
}

impl From<FeatureSet> for String {
    fn from(s: FeatureSet) -> Self {
        s.as_str().to_string()
    }
}

impl PartialOrd for FeatureSet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FeatureSet {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_derived_sets() {
        for s in [
            "raw",
            "sae",
            "sae-recon",
            "controls",
            "raw+pred-error",
            "semantic",
            "random-count-3",
        ] {
            assert_eq!(FeatureSet::named(s).as_str(), s);
            let json = serde_json::to_string(&FeatureSet::named(s)).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<FeatureSet>(&json).unwrap(), FeatureSet::named(s));
        }
        assert_eq!(FeatureSet::named("semantic"), FeatureSet::Derived("semantic".into()));
        assert!(FeatureSet::Sae.is_configurable() && !FeatureSet::RawPredError.is_configurable());
    }

    #[test]
    fn the_order_is_the_order_of_the_names() {
        let mut sets: Vec<FeatureSet> = ["sae-recon", "raw", "semantic", "raw+pred-error", "sae", "controls"]
            .map(FeatureSet::named)
            .to_vec();
        sets.sort();
        let names: Vec<&str> = sets.iter().map(FeatureSet::as_str).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}
