//! Word knowledge the built-in labeller uses: closed-class words per language (built in, or
//! learned from a dependency-parsed corpus such as the Natural Stories UD parses), word norms
//! (Brysbaert et al. 2014 concreteness; Binder et al. 2016 experiential attributes) and editable
//! seed lexicons for the semantic subcategories (`word<TAB>subcategory` files, one per language).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::Subcategory;
use crate::{Error, Result};

/// Normal form of a word for lookups: lowercase, leading/trailing punctuation removed.
pub fn normalize(word: &str) -> String {
    word.trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
        .trim_matches('\'')
        .to_lowercase()
}

const CLOSED_EN: &str = "a an the this that these those some any no every each either neither all both half \
 i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its itself \
 we us our ours ourselves they them their theirs themselves one ones who whom whose which what whatever whoever \
 where when why how whether if unless because although though while whereas since until till than as so \
 and or but nor yet for of in on at by with without within to from into onto upon about above below under over \
 through throughout between among against during before after behind beside besides beyond near off out up down \
 around across along toward towards via per like unlike not n't 's 'm 're 've 'd 'll \
 be am is are was were been being have has had having do does did done doing \
 will would shall should can could may might must ought there here then also too very just only even still";

const CLOSED_FR: &str = "le la les l' un une des du de d' au aux ce cet cette ces mon ma mes ton ta tes son sa ses \
 notre nos votre vos leur leurs je j' me m' moi tu te t' toi il elle on nous vous ils elles se s' lui eux y en \
 qui que qu' quoi dont où lequel laquelle lesquels lesquelles et ou mais donc or ni car si comme quand lorsque \
 puisque parce pour par avec sans sous sur dans chez vers entre pendant avant après depuis contre ne n' pas plus \
 est sont était étaient être avoir a ont avait avaient été fait très aussi bien tout tous toute toutes";

const CLOSED_ZH: &str =
    "的 了 着 过 是 在 和 与 或 但 但是 而 就 也 都 又 还 很 不 没 没有 吗 呢 吧 啊 呀 这 那 这个 那个 \
 我 你 他 她 它 我们 你们 他们 她们 自己 把 被 给 对 从 向 往 跟 比 为 为了 因为 所以 如果 虽然 可是 会 能 可以 要 \
 得 地 一个 个 些 什么 谁 哪 怎么 里 上 下 中";

/// Closed-class (function) words of a language: the built-in list, plus words learned from a
/// parsed corpus.
#[derive(Debug, Clone, Default)]
pub struct ClosedClass {
    words: HashSet<String>,
    /// Where the list came from (for outputs).
    pub sources: Vec<String>,
}

/// Penn Treebank tags of closed word classes (CoNLL-X XPOS column).
const CLOSED_PTB: &[&str] = &[
    "CC", "DT", "EX", "IN", "MD", "PDT", "POS", "PRP", "PRP$", "RP", "TO", "WDT", "WP", "WP$", "WRB",
];
/// Universal POS tags of closed classes (CoNLL-U UPOS column).
const CLOSED_UPOS: &[&str] = &["ADP", "AUX", "CCONJ", "DET", "PART", "PRON", "SCONJ"];

impl ClosedClass {
    /// The built-in list for `language` ("en", "fr", "zh"; others: empty).
    pub fn builtin(language: &str) -> Self {
        let text = match language {
            "en" => CLOSED_EN,
            "fr" => CLOSED_FR,
            "zh" => CLOSED_ZH,
            _ => "",
        };
        ClosedClass {
            words: text.split_whitespace().map(str::to_string).collect(),
            sources: vec![format!("built-in ({language})")],
        }
    }

    pub fn contains(&self, normalized: &str) -> bool {
        self.words.contains(normalized)
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Adds the words that a CoNLL-X/CoNLL-U parse tags with a closed class in more than half of
    /// their occurrences (seen at least `min_count` times). Column 2 is the form; the tag is
    /// taken from column 4 (UPOS) or column 5 (XPOS), whichever is a closed-class tag set.
    pub fn learn_from_conll(&mut self, path: &Path, min_count: usize) -> Result<usize> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        for (lineno, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() < 5 {
                return Err(Error::parse(
                    path,
                    "conll",
                    format!(
                        "line {}: expected ≥ 5 tab-separated columns, found {}",
                        lineno + 1,
                        cols.len()
                    ),
                ));
            }
            let form = normalize(cols[1]);
            if form.is_empty() {
                continue;
            }
            let closed =
                CLOSED_UPOS.contains(&cols[3]) || CLOSED_PTB.contains(&cols[3]) || CLOSED_PTB.contains(&cols[4]);
            let e = counts.entry(form).or_default();
            e.0 += 1;
            e.1 += closed as usize;
        }
        let before = self.words.len();
        for (form, (n, c)) in counts {
            if n >= min_count && 2 * c > n {
                self.words.insert(form);
            }
        }
        self.sources.push(format!(
            "{} (closed-class tag in > 50% of ≥ {min_count} occurrences)",
            path.display()
        ));
        Ok(self.words.len() - before)
    }
}

/// Binder et al. (2016) attributes averaged into each subcategory's score (ratings 0–6).
pub const BINDER_GROUPS: [(Subcategory, &[&str]); 5] = [
    (
        Subcategory::Concrete,
        &[
            "Vision",
            "Shape",
            "Touch",
            "Texture",
            "Weight",
            "Biomotion",
            "Face",
            "Body",
        ],
    ),
    (
        Subcategory::Event,
        &["Time", "Duration", "Caused", "Consequential", "Motion"],
    ),
    (
        Subcategory::Affect,
        &[
            "Pleasant",
            "Unpleasant",
            "Happy",
            "Sad",
            "Angry",
            "Disgusted",
            "Fearful",
            "Surprised",
            "Arousal",
        ],
    ),
    (
        Subcategory::Social,
        &["Social", "Human", "Communication", "Self", "Cognition"],
    ),
    (
        Subcategory::Spatial,
        &["Landmark", "Path", "Scene", "Near", "Toward", "Away"],
    ),
];

/// Per-word subcategory evidence from norms and seed lexicons.
#[derive(Debug, Clone, Default)]
pub struct Norms {
    /// Brysbaert concreteness mean rating (1–5).
    pub concreteness: HashMap<String, f64>,
    /// Binder subcategory scores (group means / 6, in [0, 1]), [`Subcategory::ALL`] order.
    pub binder: HashMap<String, [f64; 5]>,
    /// Seed lexicon: word → subcategories.
    pub seeds: HashMap<String, Vec<Subcategory>>,
    pub sources: Vec<String>,
}

fn tsv_error(path: &Path, line: usize, col: usize, msg: impl std::fmt::Display) -> Error {
    Error::parse(path, "table", format!("line {line}, column {col}: {msg}"))
}

impl Norms {
    /// Reads Brysbaert et al.'s ratings file (tab-separated; columns `Word` and `Conc.M`).
    pub fn load_concreteness(&mut self, path: &Path) -> Result<usize> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| tsv_error(path, 1, 1, format!("no `{name}` column in the header")))
        };
        let (wc, cc) = (col("Word")?, col("Conc.M")?);
        let mut n = 0;
        for (i, line) in lines.enumerate() {
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() <= wc.max(cc) {
                continue;
            }
            let v: f64 = cols[cc]
                .trim()
                .parse()
                .map_err(|_| tsv_error(path, i + 2, cc + 1, format!("expected a number, found `{}`", cols[cc])))?;
            self.concreteness.insert(normalize(cols[wc]), v);
            n += 1;
        }
        self.sources
            .push(format!("{} ({n} concreteness ratings)", path.display()));
        Ok(n)
    }

    /// Reads Binder et al.'s `WordSet1_Ratings.csv` (comma-separated, attribute columns by name).
    pub fn load_binder(&mut self, path: &Path) -> Result<usize> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let idx = |name: &str| {
            header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or_else(|| tsv_error(path, 1, 1, format!("no `{name}` column in the header")))
        };
        let wc = idx("Word")?;
        let mut groups = Vec::new();
        for (s, attrs) in BINDER_GROUPS {
            let cols = attrs.iter().map(|a| idx(a)).collect::<Result<Vec<_>>>()?;
            groups.push((s, cols));
        }
        let mut n = 0;
        for (i, line) in lines.enumerate() {
            let cols: Vec<&str> = line.split(',').collect();
            if cols.len() <= wc || cols[wc].trim().is_empty() {
                continue;
            }
            let mut scores = [0.0; 5];
            for (s, idxs) in &groups {
                // "na" / empty cells (unrated attributes) are left out of the group mean
                let (mut sum, mut n_rated) = (0.0, 0usize);
                for &c in idxs {
                    let cell = cols.get(c).copied().unwrap_or("").trim();
                    if cell.is_empty() || cell.eq_ignore_ascii_case("na") {
                        continue;
                    }
                    let v: f64 = cell.parse().map_err(|_| {
                        tsv_error(path, i + 2, c + 1, format!("expected a rating or `na`, found `{cell}`"))
                    })?;
                    sum += v;
                    n_rated += 1;
                }
                scores[s.index()] = if n_rated > 0 { sum / n_rated as f64 / 6.0 } else { 0.0 };
            }
            self.binder.insert(normalize(cols[wc]), scores);
            n += 1;
        }
        self.sources
            .push(format!("{} ({n} words × 65 attributes)", path.display()));
        Ok(n)
    }

    /// Reads a seed lexicon: `word<TAB>subcategory` lines; `#` comments and blank lines skipped.
    pub fn load_seeds(&mut self, path: &Path) -> Result<usize> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        self.parse_seeds(&text, path)
    }

    /// Parses seed-lexicon text; `path` names its origin in errors and sources.
    pub fn parse_seeds(&mut self, text: &str, path: &Path) -> Result<usize> {
        let mut n = 0;
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let mut cols = t.split('\t');
            let (w, s) = (cols.next().unwrap_or(""), cols.next());
            let s = s.ok_or_else(|| tsv_error(path, i + 1, 2, "expected `word<TAB>subcategory`"))?;
            let sub = Subcategory::parse(s).ok_or_else(|| {
                tsv_error(
                    path,
                    i + 1,
                    2,
                    format!("unknown subcategory `{s}` (expected concrete, event, affect, social or spatial)"),
                )
            })?;
            self.seeds.entry(normalize(w)).or_default().push(sub);
            n += 1;
        }
        self.sources.push(format!("{} ({n} seed words)", path.display()));
        Ok(n)
    }

    /// Subcategory scores of one (normalized) word, or None when no norm or seed covers it:
    /// per subcategory the maximum of the seed lexicon (1 if listed), the Binder group mean / 6,
    /// and for concreteness/animacy (Brysbaert rating − 3) / 2 clamped to [0, 1] (so ratings ≤ 3
    /// add nothing and 5 counts fully).
    pub fn word_scores(&self, word: &str) -> Option<[f64; 5]> {
        let mut s = [0.0f64; 5];
        let mut covered = false;
        if let Some(subs) = self.seeds.get(word) {
            covered = true;
            for sub in subs {
                s[sub.index()] = 1.0;
            }
        }
        if let Some(b) = self.binder.get(word) {
            covered = true;
            for j in 0..5 {
                s[j] = s[j].max(b[j]);
            }
        }
        if let Some(c) = self.concreteness.get(word) {
            covered = true;
            let v = ((c - 3.0) / 2.0).clamp(0.0, 1.0);
            s[0] = s[0].max(v);
        }
        covered.then_some(s)
    }

    /// Seed words per subcategory (for documentation and tests).
    pub fn seed_counts(&self) -> BTreeMap<Subcategory, usize> {
        let mut m = BTreeMap::new();
        for subs in self.seeds.values() {
            for s in subs {
                *m.entry(*s).or_default() += 1;
            }
        }
        m
    }
}

/// Everything the built-in labeller looks words up in.
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    pub closed: ClosedClass,
    pub norms: Norms,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_strips_punctuation_and_case() {
        assert_eq!(normalize("Alice,"), "alice");
        assert_eq!(normalize("\"Why?\""), "why");
        assert_eq!(normalize("'s"), "s");
        assert_eq!(normalize("l'"), "l");
    }

    #[test]
    fn word_scores_combine_seeds_binder_and_concreteness() {
        let mut n = Norms::default();
        n.seeds.insert("angry".into(), vec![Subcategory::Affect]);
        n.concreteness.insert("stone".into(), 4.9);
        n.concreteness.insert("idea".into(), 1.6);
        n.binder.insert("stone".into(), [0.8, 0.1, 0.0, 0.0, 0.3]);
        let s = n.word_scores("stone").unwrap();
        assert!((s[0] - 0.95).abs() < 1e-12 && (s[4] - 0.3).abs() < 1e-12);
        assert_eq!(n.word_scores("idea").unwrap(), [0.0; 5]);
        assert_eq!(n.word_scores("angry").unwrap()[2], 1.0);
        assert!(n.word_scores("zyx").is_none());
    }

    #[test]
    fn builtin_closed_classes_exist_for_three_languages() {
        assert!(ClosedClass::builtin("en").contains("the"));
        assert!(ClosedClass::builtin("fr").contains("les"));
        assert!(ClosedClass::builtin("zh").contains("的"));
        assert!(!ClosedClass::builtin("en").contains("rabbit"));
    }
}
