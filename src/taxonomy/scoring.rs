//! Scoring feature explanations with an LLM, as EleutherAI's Delphi does (Paulo et al. 2024,
//! "Automatically Interpreting Millions of Features in Large Language Models"): given only the
//! explanation, can a rater tell where the feature fires?
//!
//! The evidence is what the labeller did not see: each labelling task ([`super::tasks::Task`])
//! carries `heldout` activating contexts (the feature's next strongest, after the ones shown)
//! and `non_activating` ones (where it is 0). Two scorers, one request each per feature:
//! - **detection**: the held-out activating and the non-activating excerpts, shuffled, unmarked;
//!   the rater answers for each whether the feature is active in it. Positive = activating.
//! - **fuzzing**: the held-out activating excerpts, every other one (in a shuffled order) with the
//!   right word marked `[[…]]` and the rest with a random other word of the excerpt marked; the
//!   rater answers whether the marked word is one the explanation says the feature fires on.
//!   Positive = correctly marked.
//!
//! The reply must hold `{"answers": [1, 0, …]}` (one 0/1 or true/false per excerpt, in order);
//! anything else is asked again (see [`super::llm`]). Per feature and scorer: the confusion counts,
//! accuracy, precision, recall and F1 ([`ScoreRow`]); [`summarize`] averages them per category.
//! Orders and wrong marks are drawn from a generator seeded by (seed, feature), so a run is
//! repeatable.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::llm::{ask_with_retries, chat_body, client, first_json_object, LlmConfig};
use super::tasks::{Context, Task};
use crate::stats::SplitMix64;
use crate::{Error, Result};

/// One feature's explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub layer: usize,
    pub feature: u32,
    pub explanation: String,
    /// The feature's category, when the file gives one.
    #[serde(default)]
    pub category: Option<String>,
}

/// Reads explanations: JSONL with `layer`, `feature`, `explanation` (or `label`) and optionally
/// `category`; or a TSV with a header naming `layer`, `feature`, `explanation` and optionally
/// `category`. Errors name the file, line and field.
pub fn read_explanations(path: &Path) -> Result<Vec<Explanation>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let is_tsv = path.extension().is_some_and(|e| e == "tsv");
    let mut out = Vec::new();
    if is_tsv {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or_else(|| Error::parse(path, "header", "empty file"))?;
        let cols: Vec<&str> = header.split('\t').map(str::trim).collect();
        let col = |name: &str| cols.iter().position(|c| *c == name);
        let (Some(li), Some(fi), Some(ei)) = (col("layer"), col("feature"), col("explanation")) else {
            return Err(Error::parse(
                path,
                "header",
                format!("expected columns layer, feature, explanation [, category]; found {cols:?}"),
            ));
        };
        let ci = col("category");
        for (i, line) in lines {
            let f: Vec<&str> = line.split('\t').collect();
            let get = |k: usize, name: &str| {
                f.get(k)
                    .map(|s| s.trim())
                    .ok_or_else(|| Error::parse(path, format!("line {}", i + 1), format!("no `{name}` column")))
            };
            let num = |k: usize, name: &str| -> Result<u64> {
                get(k, name)?.parse().map_err(|e| {
                    Error::parse(
                        path,
                        format!("line {}, column {name}", i + 1),
                        format!("expected a whole number: {e}"),
                    )
                })
            };
            out.push(Explanation {
                layer: num(li, "layer")? as usize,
                feature: num(fi, "feature")? as u32,
                explanation: get(ei, "explanation")?.to_string(),
                category: ci
                    .and_then(|c| f.get(c))
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            });
        }
        return Ok(out);
    }
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("line {}", i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::parse(path, &at, format!("not JSON: {e}")))?;
        let num = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64())
                .ok_or_else(|| Error::parse(path, format!("{at}, field {k}"), "expected a whole number"))
        };
        let explanation = v
            .get("explanation")
            .or_else(|| v.get("label"))
            .and_then(|x| x.as_str())
            .ok_or_else(|| Error::parse(path, format!("{at}, field explanation"), "expected a string"))?;
        out.push(Explanation {
            layer: num("layer")? as usize,
            feature: num("feature")? as u32,
            explanation: explanation.to_string(),
            category: v.get("category").and_then(|x| x.as_str()).map(str::to_string),
        });
    }
    Ok(out)
}

/// The two scorers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scorer {
    Detection,
    Fuzzing,
}

impl Scorer {
    pub const ALL: [Scorer; 2] = [Scorer::Detection, Scorer::Fuzzing];
    pub fn name(self) -> &'static str {
        match self {
            Scorer::Detection => "detection",
            Scorer::Fuzzing => "fuzzing",
        }
    }
}

/// One excerpt shown to the rater and whether it is a positive.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub text: String,
    pub positive: bool,
}

/// The excerpts of one (task, scorer), in the order shown.
pub fn items(task: &Task, scorer: Scorer, seed: u64) -> Vec<Item> {
    let mut rng = SplitMix64::new(seed ^ ((task.feature as u64) << 1 | (scorer == Scorer::Fuzzing) as u64));
    let plain = |c: &Context| join3(&c.left, &c.token, &c.right);
    let items: Vec<Item> = match scorer {
        Scorer::Detection => task
            .heldout
            .iter()
            .map(|c| Item {
                text: plain(c),
                positive: true,
            })
            .chain(task.non_activating.iter().map(|c| Item {
                text: plain(c),
                positive: false,
            }))
            .collect(),
        Scorer::Fuzzing => {
            let mut order: Vec<usize> = (0..task.heldout.len()).collect();
            shuffle(&mut order, &mut rng);
            let mut items = vec![];
            for (k, &i) in order.iter().enumerate() {
                let c = &task.heldout[i];
                let left: Vec<&str> = c.left.split_whitespace().collect();
                let right: Vec<&str> = c.right.split_whitespace().collect();
                let others = left.len() + right.len();
                if k % 2 == 0 || others == 0 {
                    items.push(Item {
                        text: join3(&c.left, &format!("[[{}]]", c.token), &c.right),
                        positive: true,
                    });
                } else {
                    // mark a random other word of the excerpt
                    let m = rng.below(others as u64) as usize;
                    let mut words: Vec<String> = left.iter().map(|w| w.to_string()).collect();
                    words.push(c.token.clone());
                    words.extend(right.iter().map(|w| w.to_string()));
                    let at = if m < left.len() { m } else { m + 1 };
                    words[at] = format!("[[{}]]", words[at]);
                    items.push(Item {
                        text: words.join(" "),
                        positive: false,
                    });
                }
            }
            items
        }
    };
    let mut order: Vec<usize> = (0..items.len()).collect();
    shuffle(&mut order, &mut rng);
    order.into_iter().map(|i| items[i].clone()).collect()
}

fn join3(a: &str, b: &str, c: &str) -> String {
    [a, b, c]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

fn shuffle(v: &mut [usize], rng: &mut SplitMix64) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
}

/// The system message of a scorer.
pub fn system_prompt(scorer: Scorer) -> String {
    let task = match scorer {
        Scorer::Detection => {
            "You are given an explanation of a feature of a language model and numbered text excerpts. \
             For each excerpt, decide whether the feature is active anywhere in it, judging only from the \
             explanation: answer 1 if it is, 0 if it is not."
        }
        Scorer::Fuzzing => {
            "You are given an explanation of a feature of a language model and numbered text excerpts, \
             each with one word marked [[like this]]. For each excerpt, decide whether the marked word is \
             one the feature is most active on according to the explanation: answer 1 if it is, 0 if it is not."
        }
    };
    format!(
        "{task} Answer with one JSON object and nothing else: {{\"answers\": [..]}} with one 0 or 1 per excerpt, \
         in the excerpts' order."
    )
}

/// The user message: the explanation and the excerpts.
pub fn user_prompt(explanation: &str, items: &[Item]) -> String {
    let mut s = format!("Explanation: {explanation}\n\nExcerpts:\n");
    for (i, it) in items.iter().enumerate() {
        s.push_str(&format!("{}. {}\n", i + 1, it.text));
    }
    s
}

/// The 0/1 answers of a reply, exactly `n` of them.
pub fn parse_answers(content: &str, n: usize) -> Result<Vec<bool>> {
    let bad = |msg: String| Error::Invalid(format!("{msg}; the reply was: {content:?}"));
    let obj = first_json_object(content).ok_or_else(|| bad("no JSON object in the reply".into()))?;
    let v: serde_json::Value = serde_json::from_str(obj).map_err(|e| bad(format!("not JSON: {e}")))?;
    let a = v
        .get("answers")
        .and_then(|a| a.as_array())
        .ok_or_else(|| bad("no `answers` array".into()))?;
    if a.len() != n {
        return Err(bad(format!("{} answers for {n} excerpts", a.len())));
    }
    a.iter()
        .map(|x| match x {
            serde_json::Value::Bool(b) => Ok(*b),
            serde_json::Value::Number(k) if k.as_f64() == Some(1.0) => Ok(true),
            serde_json::Value::Number(k) if k.as_f64() == Some(0.0) => Ok(false),
            other => Err(bad(format!("answer {other} is not 0 or 1"))),
        })
        .collect()
}

/// The score of one (feature, scorer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreRow {
    pub layer: usize,
    pub feature: u32,
    pub category: Option<String>,
    pub scorer: Scorer,
    pub tp: u32,
    pub fp: u32,
    pub tn: u32,
    pub fn_: u32,
}

impl ScoreRow {
    pub fn n(&self) -> u32 {
        self.tp + self.fp + self.tn + self.fn_
    }
    pub fn accuracy(&self) -> f64 {
        (self.tp + self.tn) as f64 / self.n().max(1) as f64
    }
    pub fn precision(&self) -> Option<f64> {
        (self.tp + self.fp > 0).then(|| self.tp as f64 / (self.tp + self.fp) as f64)
    }
    pub fn recall(&self) -> Option<f64> {
        (self.tp + self.fn_ > 0).then(|| self.tp as f64 / (self.tp + self.fn_) as f64)
    }
    pub fn f1(&self) -> f64 {
        let d = 2 * self.tp + self.fp + self.fn_;
        if d == 0 {
            0.0
        } else {
            2.0 * self.tp as f64 / d as f64
        }
    }
}

/// What [`score_explanations`] did.
#[derive(Debug, Clone, Default)]
pub struct ScoreRun {
    pub rows: Vec<ScoreRow>,
    /// (task id, scorer, last problem) of requests that got no usable reply.
    pub failed: Vec<(String, Scorer, String)>,
    /// Explanations without a task, or whose task has no held-out or non-activating contexts.
    pub skipped: Vec<(usize, u32, String)>,
    pub requests: usize,
}

/// Scores every explanation that has a task with scoring contexts (see the module docs).
/// `on_item` is called after each (feature, scorer).
pub fn score_explanations(
    cfg: &LlmConfig,
    tasks: &[Task],
    explanations: &[Explanation],
    seed: u64,
    mut on_item: impl FnMut(),
) -> Result<ScoreRun> {
    let by_key: BTreeMap<(usize, u32), &Task> = tasks.iter().map(|t| ((t.layer, t.feature), t)).collect();
    let (agent, key) = client(cfg);
    let mut run = ScoreRun::default();
    for ex in explanations {
        let Some(task) = by_key.get(&(ex.layer, ex.feature)) else {
            run.skipped
                .push((ex.layer, ex.feature, "no labelling task for this feature".into()));
            continue;
        };
        if task.heldout.is_empty() || task.non_activating.is_empty() {
            run.skipped.push((
                ex.layer,
                ex.feature,
                "its task has no held-out or no non-activating contexts (tasks from an older run?)".into(),
            ));
            continue;
        }
        for scorer in Scorer::ALL {
            let items = items(task, scorer, seed);
            let body = chat_body(cfg, system_prompt(scorer), user_prompt(&ex.explanation, &items));
            let what = format!("{} {}", task.task_id, scorer.name());
            let n = items.len();
            match ask_with_retries(&agent, cfg, key.as_deref(), &what, &body, &mut run.requests, |c| {
                parse_answers(c, n)
            })? {
                Ok(answers) => {
                    let mut row = ScoreRow {
                        layer: ex.layer,
                        feature: ex.feature,
                        category: ex.category.clone(),
                        scorer,
                        tp: 0,
                        fp: 0,
                        tn: 0,
                        fn_: 0,
                    };
                    for (it, &a) in items.iter().zip(&answers) {
                        match (it.positive, a) {
                            (true, true) => row.tp += 1,
                            (false, true) => row.fp += 1,
                            (false, false) => row.tn += 1,
                            (true, false) => row.fn_ += 1,
                        }
                    }
                    run.rows.push(row);
                }
                Err(last) => run.failed.push((task.task_id.clone(), scorer, last)),
            }
            on_item();
        }
    }
    Ok(run)
}

/// Mean accuracy and F1 per (category, scorer), and the number of features: (category or
/// "(none)", scorer) → (n features, mean accuracy, mean F1).
pub fn summarize(rows: &[ScoreRow]) -> BTreeMap<(String, Scorer), (usize, f64, f64)> {
    let mut acc: BTreeMap<(String, Scorer), (usize, f64, f64)> = BTreeMap::new();
    for r in rows {
        let cat = r.category.clone().unwrap_or_else(|| "(none)".into());
        let e = acc.entry((cat, r.scorer)).or_default();
        e.0 += 1;
        e.1 += r.accuracy();
        e.2 += r.f1();
    }
    for v in acc.values_mut() {
        v.1 /= v.0 as f64;
        v.2 /= v.0 as f64;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(left: &str, token: &str, right: &str) -> Context {
        Context {
            left: left.into(),
            token: token.into(),
            right: right.into(),
            activation: 1.0,
        }
    }

    fn task() -> Task {
        Task {
            task_id: "L3-F7".into(),
            layer: 3,
            feature: 7,
            contexts: vec![],
            categories: Default::default(),
            subcategories: vec![],
            response_format: serde_json::Value::Null,
            heldout: (0..6)
                .map(|i| ctx(&format!("a{i} b{i}"), "rabbit", &format!("c{i}")))
                .collect(),
            non_activating: (0..6).map(|i| ctx("x y", &format!("w{i}"), "z")).collect(),
            density: None,
        }
    }

    #[test]
    fn items_are_balanced_seeded_and_fuzzing_marks_one_word() {
        let t = task();
        let d = items(&t, Scorer::Detection, 5);
        assert_eq!(d.len(), 12);
        assert_eq!(d.iter().filter(|i| i.positive).count(), 6);
        assert!(d.iter().all(|i| i.positive == i.text.contains("rabbit")));
        assert_eq!(d, items(&t, Scorer::Detection, 5), "seeded");
        assert_ne!(d, items(&t, Scorer::Detection, 6), "another seed, another order");
        let f = items(&t, Scorer::Fuzzing, 5);
        assert_eq!(f.len(), 6);
        assert_eq!(f.iter().filter(|i| i.positive).count(), 3);
        for it in &f {
            assert_eq!(it.text.matches("[[").count(), 1, "{}", it.text);
            assert_eq!(it.positive, it.text.contains("[[rabbit]]"), "{}", it.text);
        }
    }

    #[test]
    fn answers_parse_from_prose_and_wrong_counts_are_refused() {
        assert_eq!(
            parse_answers("Here: {\"answers\": [1, 0, true, false]}", 4).unwrap(),
            [true, false, true, false]
        );
        assert!(parse_answers("{\"answers\": [1, 0]}", 3)
            .unwrap_err()
            .to_string()
            .contains("2 answers for 3"));
        assert!(parse_answers("{\"answers\": [1, 2]}", 2).is_err());
        assert!(parse_answers("no", 2).is_err());
        let r = ScoreRow {
            layer: 0,
            feature: 0,
            category: None,
            scorer: Scorer::Detection,
            tp: 4,
            fp: 1,
            tn: 5,
            fn_: 2,
        };
        assert_eq!((r.n(), r.accuracy()), (12, 0.75));
        assert_eq!((r.precision(), r.recall()), (Some(0.8), Some(4.0 / 6.0)));
        assert!((r.f1() - 8.0 / 11.0).abs() < 1e-12);
    }
}
