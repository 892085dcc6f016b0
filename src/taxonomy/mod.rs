//! Feature taxonomy (METHOD.md §4): every SAE feature gets a category (SEMANTIC, SYNTACTIC,
//! LEXICAL, PREDICTION, OTHER) with a confidence per category, and semantic features a
//! subcategory (concreteness/animacy, event structure, affect/emotion, social/mental,
//! spatial/locational). Labels come from one of three sources that share one table:
//! the built-in labeller ([`labeller`]), answers imported from people or an external LLM
//! ([`tasks`]), or an imported table. [`baselines`] builds the feature subsets that the paper's
//! claims are tested on (categories, subcategories, count- and variance-matched random sets,
//! PCA and random projections).
//!
//! May import: `encoding`, `sae`, `stats`, `paths`, `error`.

pub mod baselines;
pub mod labeller;
pub mod lexicon;
pub mod llm;
pub mod prederror;
pub mod scoring;
pub mod tasks;

use serde::{Deserialize, Serialize};

/// The five feature categories, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Semantic,
    Syntactic,
    Lexical,
    Prediction,
    Other,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::Semantic,
        Category::Syntactic,
        Category::Lexical,
        Category::Prediction,
        Category::Other,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        ["semantic", "syntactic", "lexical", "prediction", "other"][self.index()]
    }

    /// Parses a category name, any case ("SEMANTIC", "semantic", "Semantic").
    pub fn parse(s: &str) -> Option<Category> {
        let l = s.trim().to_lowercase();
        Category::ALL.into_iter().find(|c| c.name() == l)
    }

    /// The definition given to human and LLM raters (and documented in the README).
    pub fn definition(self) -> &'static str {
        match self {
            Category::Semantic => {
                "fires on words sharing a meaning property (a topic, an emotion, a kind of thing or event), regardless of their form or position"
            }
            Category::Syntactic => {
                "fires by grammatical role: function words, clause boundaries, relative pronouns, agreement, word order"
            }
            Category::Lexical => "fires by surface form: one specific word or token, a suffix or prefix, a spelling pattern",
            Category::Prediction => {
                "tracks the model's uncertainty about the next word (its activation correlates with next-token entropy)"
            }
            Category::Other => "no consistent pattern",
        }
    }
}

/// The five a-priori semantic subcategories (Binder 2009, Huth 2016, Deniz 2019), in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subcategory {
    Concrete,
    Event,
    Affect,
    Social,
    Spatial,
}

impl Subcategory {
    pub const ALL: [Subcategory; 5] = [
        Subcategory::Concrete,
        Subcategory::Event,
        Subcategory::Affect,
        Subcategory::Social,
        Subcategory::Spatial,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Short name used in tables and feature-set names.
    pub fn name(self) -> &'static str {
        ["concrete", "event", "affect", "social", "spatial"][self.index()]
    }

    /// The paper's name.
    pub fn long_name(self) -> &'static str {
        [
            "concreteness/animacy",
            "event structure",
            "affect/emotion",
            "social/mental",
            "spatial/locational",
        ][self.index()]
    }

    /// Parses a short or long name, any case; also the paper's row labels ("Concrete", "Event",
    /// "Affect", "Social", "Spatial").
    pub fn parse(s: &str) -> Option<Subcategory> {
        let l = s.trim().to_lowercase();
        Subcategory::ALL
            .into_iter()
            .find(|c| c.name() == l || c.long_name() == l || l.starts_with(c.name()))
    }
}

/// The criteria values a built-in label was decided from (NaN/None where not computed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Evidence {
    /// Evidence words on which the feature is active (> 0).
    pub n_active: usize,
    /// Population variance of the activation over the evidence words.
    pub variance: f64,
    /// Pearson r of activation with next-token entropy over all evidence words.
    pub entropy_r: Option<f64>,
    /// Share of the top examples taken by the most frequent word form.
    pub form_share: f64,
    /// The most shared 3-letter suffix among the top examples, and its share.
    pub affix: String,
    pub affix_share: f64,
    /// Share of the top examples that are closed-class words, and how many distinct closed-class
    /// forms they have.
    pub closed_share: f64,
    pub closed_forms: usize,
    /// Distinct open-class forms among the top examples.
    pub content_forms: usize,
    /// Meaning coherence of those forms: z of their mean pairwise embedding cosine against random
    /// sets of as many open-class forms from the evidence vocabulary.
    pub coherence_z: Option<f64>,
    /// Top forms with norm or lexicon information (subcategory assignment).
    pub norm_coverage: usize,
}

/// One feature's label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureLabel {
    pub feature: u32,
    pub category: Category,
    /// Confidence per category ([`Category::ALL`] order), summing to 1.
    pub confidence: [f64; 5],
    /// Subcategory of a SEMANTIC feature (None: not semantic, or no subcategory reached the
    /// threshold).
    pub subcategory: Option<Subcategory>,
    /// Subcategory scores ([`Subcategory::ALL`] order), 0 when not computed.
    pub subcategory_scores: [f64; 5],
    pub evidence: Evidence,
}

/// Labels of every feature of one SAE (one layer), with their provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelSet {
    /// "builtin" or the imported file's name.
    pub source: String,
    pub layer: usize,
    /// Which entropy the PREDICTION criterion used ("logit-lens" or "model output").
    pub entropy_kind: String,
    pub labels: Vec<FeatureLabel>,
}

impl LabelSet {
    /// Features of a category, ascending.
    pub fn features_of(&self, c: Category) -> Vec<usize> {
        self.labels
            .iter()
            .filter(|l| l.category == c)
            .map(|l| l.feature as usize)
            .collect()
    }

    /// Features the activity rule admits (active on at least `min_active` evidence words: the
    /// rule every built-in label other than OTHER-for-inactivity is decided under), ascending. Random
    /// baselines draw from these, never from dead or never-active features.
    pub fn eligible(&self, min_active: usize) -> Vec<usize> {
        self.labels
            .iter()
            .filter(|l| l.evidence.n_active >= min_active)
            .map(|l| l.feature as usize)
            .collect()
    }

    /// SEMANTIC features of a subcategory, ascending.
    pub fn features_of_sub(&self, s: Subcategory) -> Vec<usize> {
        self.labels
            .iter()
            .filter(|l| l.category == Category::Semantic && l.subcategory == Some(s))
            .map(|l| l.feature as usize)
            .collect()
    }

    /// Hard labels as category indices (for agreement statistics).
    pub fn category_indices(&self) -> Vec<usize> {
        self.labels.iter().map(|l| l.category.index()).collect()
    }
}

/// Hard label from soft confidences: the argmax; ties go to the earlier category in
/// [`Category::ALL`] order.
pub fn hard_label(confidence: &[f64; 5]) -> Category {
    let mut best = 0;
    for j in 1..5 {
        if confidence[j] > confidence[best] {
            best = j;
        }
    }
    Category::ALL[best]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for c in Category::ALL {
            assert_eq!(Category::parse(&c.name().to_uppercase()), Some(c));
        }
        for s in Subcategory::ALL {
            assert_eq!(Subcategory::parse(s.long_name()), Some(s));
            assert_eq!(Subcategory::parse(&s.name().to_uppercase()), Some(s));
        }
        assert_eq!(Subcategory::parse("Concreteness"), Some(Subcategory::Concrete));
        assert_eq!(Category::parse("semantics"), None);
    }

    #[test]
    fn hard_label_ties_go_to_the_earlier_category() {
        assert_eq!(hard_label(&[0.2, 0.4, 0.4, 0.0, 0.0]), Category::Syntactic);
        assert_eq!(hard_label(&[0.0, 0.0, 0.0, 0.0, 1.0]), Category::Other);
    }
}
