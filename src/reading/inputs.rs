//! Reading-time inputs: the stories' words, reading times joined to them by position, sentence
//! structure and lexical controls.
//!
//! - Words: a table with one row per word and columns story, position, word (the Natural Stories
//!   `naturalstories_RTS_all_stories.tok` layout: `word`, `zone`, `item`). Words are ordered by
//!   position within a story; stories by id (numerically when every id is a number).
//! - Reading times: per-subject rows (Natural Stories `processed_RTs.tsv`: `WorkerId`, `item`,
//!   `zone`, `RT`, `word`; Provo-style eye-tracking tables with a measure column such as gaze
//!   duration) or per-word means (`naturalstories_RTS_processed_wordinfo.tsv`: `item`, `zone`,
//!   `word`, `meanItemRT`). Rows are joined to the words by (story, position); rows whose position
//!   is not in the story, whose word differs from the story's, whose RT is missing or outside the
//!   trimming range are counted in a [`JoinReport`] and left out — never silently dropped. A
//!   non-numeric RT or position is an error naming the file, row and column.
//! - Sentences: from UD parses in CoNLL-X with `TokenId=story.position[.part]` in the last column
//!   (the Natural Stories `parses_ud_stories-aligned.conllx`), which also give each word's PTB
//!   part of speech; without parses, a word ending in `.`, `!` or `?` (before closing quotes)
//!   ends a sentence.
//! - Controls per word: length (letters and digits), log frequency (a word → value table, e.g.
//!   wordfreq's Zipf TSV or SUBTLEX counts with `log10`; an unlisted possessive takes its stem's), position in sentence (1-based), n-gram
//!   surprisal from the Natural Stories frequency tables (`freqs-N.tsv`: −log₂ of column 4 /
//!   column 5 on the `story.position.word` row), and a norm (e.g. Brysbaert concreteness).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::reading::frame::Frame;
use crate::stimulus::{Story, Word};
use crate::{Error, Result};

/// One word of a story with its lexical information (None: unknown, see the join report).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WordInfo {
    pub story: String,
    pub position: i64,
    pub text: String,
    /// PTB tag of the word's first non-punctuation part (from the parses).
    pub pos: Option<String>,
    /// Sentence index within the whole input (0-based) and 1-based position in it.
    pub sentence: Option<usize>,
    pub sentence_position: Option<usize>,
    pub sentence_final: bool,
    /// Letters and digits.
    pub length: usize,
    pub log_freq: Option<f64>,
    pub ngram_surprisal: Option<f64>,
    pub norm: Option<f64>,
    /// The word's values in the norm block's tables ([`ReadingData::norm_block`] order).
    pub norm_block: Vec<Option<f64>>,
}

/// One reading-time observation joined to a word.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RtObs {
    /// Index into [`ReadingData::words`].
    pub word: usize,
    pub subject: Option<String>,
    pub rt: f64,
    /// Data row of the RT file (1 = header).
    pub file_row: usize,
}

/// What happened to every row of the RT file and every word of the stories.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JoinReport {
    pub rt_rows: usize,
    pub joined: usize,
    /// (story, position) not among the story words.
    pub unmatched: usize,
    pub unmatched_examples: Vec<String>,
    /// Same position, different word (after lower-casing and stripping punctuation).
    pub word_mismatch: usize,
    pub word_mismatch_examples: Vec<String>,
    pub missing_rt: usize,
    pub below_min_rt: usize,
    pub above_max_rt: usize,
    /// Story words without any kept RT row.
    pub words_without_rt: usize,
    /// Story words with no parse (no sentence position / POS), no frequency, no n-gram surprisal,
    /// no norm value.
    pub words_without_parse: usize,
    pub words_without_frequency: usize,
    pub words_without_ngram: usize,
    pub words_without_norm: usize,
    /// Per norm-block table: story words without a value.
    pub words_without_norm_table: Vec<(String, usize)>,
}

/// The validated inputs of a reading-time pipeline.
#[derive(Debug, Clone)]
pub struct ReadingData {
    pub stories: Vec<Story>,
    /// All story words, story by story in [`ReadingData::stories`] order.
    pub words: Vec<WordInfo>,
    /// Index of each story's first word in `words` (plus the total at the end).
    pub story_offsets: Vec<usize>,
    pub obs: Vec<RtObs>,
    pub per_subject: bool,
    pub report: JoinReport,
    /// The norm block's columns beyond `norm` (table name, column names), in
    /// [`WordInfo::norm_block`] order.
    pub norm_block: Vec<(String, Vec<String>)>,
}

/// One table of the norm block: `columns` of `path` by word (`"First..Last"` takes every column
/// from First to Last in the file's order), log10 of the values when `log10`.
#[derive(Debug, Clone)]
pub struct NormTableSpec {
    pub name: String,
    pub path: PathBuf,
    pub word_column: String,
    pub columns: Vec<String>,
    pub log10: bool,
}

/// Column names and files of the inputs (see `ReadingSection` for the pipeline keys).
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub language: String,
    pub words: PathBuf,
    pub story_column: String,
    pub position_column: String,
    pub word_column: String,
    pub rts: PathBuf,
    pub rt_column: String,
    pub subject_column: Option<String>,
    /// Word column of the RT file to check against the story (None: not checked).
    pub rt_word_column: Option<String>,
    pub min_rt: f64,
    pub max_rt: f64,
    pub parses: Option<PathBuf>,
    pub frequency: PathBuf,
    pub frequency_word_column: String,
    pub frequency_column: String,
    /// Apply log10 to the frequency column (raw counts) instead of using it as is (Zipf).
    pub frequency_log10: bool,
    pub ngram: Option<PathBuf>,
    pub norms: Option<PathBuf>,
    pub norms_word_column: String,
    pub norms_column: String,
    pub norm_tables: Vec<NormTableSpec>,
}

const EXAMPLES: usize = 5;

/// Lower-case, with leading and trailing non-alphanumeric characters removed
/// (`"'Admiral,"` → `admiral`, `don't` stays).
pub fn normalize_word(w: &str) -> String {
    w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()
}

fn int_cell(frame: &Frame, col: usize, row: usize) -> Result<i64> {
    let v = frame.number(col, row)?;
    if v.fract() != 0.0 {
        return Err(Error::parse(
            &frame.path,
            format!("row {}, column `{}`", frame.file_rows[row], frame.columns[col]),
            format!("expected a whole number, found `{}`", frame.cells[col][row]),
        ));
    }
    Ok(v as i64)
}

/// Reads the word table into stories (ordered by position) with their positions.
pub fn read_story_words(spec: &InputSpec) -> Result<(Vec<Story>, Vec<Vec<i64>>)> {
    let frame = Frame::read(&spec.words)?;
    let (sc, pc, wc) = (
        frame.column(&spec.story_column)?,
        frame.column(&spec.position_column)?,
        frame.column(&spec.word_column)?,
    );
    let mut by_story: BTreeMap<String, Vec<(i64, String, usize)>> = BTreeMap::new();
    for i in 0..frame.n_rows() {
        for c in [sc, pc, wc] {
            if frame.is_missing(c, i) {
                return Err(Error::parse(
                    &spec.words,
                    format!("row {}, column `{}`", frame.file_rows[i], frame.columns[c]),
                    "empty cell: every word needs a story, a position and its text",
                ));
            }
        }
        let story = frame.cells[sc][i].trim().to_string();
        let pos = int_cell(&frame, pc, i)?;
        by_story
            .entry(story)
            .or_default()
            .push((pos, frame.cells[wc][i].trim().to_string(), frame.file_rows[i]));
    }
    if by_story.is_empty() {
        return Err(Error::parse(&spec.words, "table", "no words"));
    }
    let mut ids: Vec<String> = by_story.keys().cloned().collect();
    if ids.iter().all(|s| s.parse::<i64>().is_ok()) {
        ids.sort_by_key(|s| s.parse::<i64>().unwrap());
    }
    let mut stories = Vec::new();
    let mut positions = Vec::new();
    for id in ids {
        let mut rows = by_story.remove(&id).expect("key");
        rows.sort_by_key(|r| r.0);
        if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::parse(
                &spec.words,
                format!("row {}, column `{}`", w[1].2, spec.position_column),
                format!("story `{id}` has position {} twice (also on row {})", w[1].0, w[0].2),
            ));
        }
        positions.push(rows.iter().map(|r| r.0).collect());
        stories.push(Story {
            id: id.clone(),
            language: spec.language.clone(),
            words: rows
                .into_iter()
                .map(|(_, text, _)| Word {
                    text,
                    onset_s: None,
                    offset_s: None,
                })
                .collect(),
        });
    }
    Ok((stories, positions))
}

/// Per (story, position): (sentence index, position in sentence, sentence final, POS).
type ParseMap = HashMap<(String, i64), (usize, usize, bool, Option<String>)>;

const PUNCT_TAGS: [&str; 11] = [",", ".", ":", "``", "''", "-LRB-", "-RRB-", "#", "$", "HYPH", "NFP"];

/// Reads CoNLL-X parses whose 10th column holds `TokenId=story.position[.part]`.
pub fn read_parses(path: &Path) -> Result<ParseMap> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // per sentence: the ordered distinct (story, position) with their first content POS
    let mut sentences: Vec<Vec<((String, i64), Option<String>)>> = vec![Vec::new()];
    for (ln, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !sentences.last().expect("non-empty").is_empty() {
                sentences.push(Vec::new());
            }
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 10 {
            return Err(Error::parse(
                path,
                format!("line {}", ln + 1),
                format!("expected 10 tab-separated CoNLL-X columns, found {}", f.len()),
            ));
        }
        let Some(tid) = f[9].split('|').find_map(|p| p.strip_prefix("TokenId=")) else {
            return Err(Error::parse(
                path,
                format!("line {}, column 10", ln + 1),
                "expected `TokenId=story.position[.part]`",
            ));
        };
        let mut parts = tid.split('.');
        let (Some(story), Some(pos)) = (parts.next(), parts.next().and_then(|p| p.parse::<i64>().ok())) else {
            return Err(Error::parse(
                path,
                format!("line {}, column 10", ln + 1),
                format!("cannot read `{tid}` as story.position[.part]"),
            ));
        };
        let key = (story.to_string(), pos);
        let tag = f[3].to_string();
        let content = (!PUNCT_TAGS.contains(&tag.as_str())).then_some(tag);
        let sent = sentences.last_mut().expect("non-empty");
        match sent.iter_mut().find(|(k, _)| *k == key) {
            Some((_, t)) => {
                if t.is_none() {
                    *t = content;
                }
            }
            None => sent.push((key, content)),
        }
    }
    let mut out = ParseMap::new();
    for (si, sent) in sentences.iter().filter(|s| !s.is_empty()).enumerate() {
        let n = sent.len();
        for (k, (key, tag)) in sent.iter().enumerate() {
            // a word split across sentences keeps its first sentence
            out.entry(key.clone()).or_insert((si, k + 1, k + 1 == n, tag.clone()));
        }
    }
    Ok(out)
}

/// Sentence structure from punctuation: a word ending in . ! ? (before closing quotes) ends one.
fn punctuation_sentences(words: &[WordInfo], offsets: &[usize]) -> Vec<(usize, usize, bool)> {
    let mut out = vec![(0, 0, false); words.len()];
    let mut sentence = 0;
    for s in 0..offsets.len() - 1 {
        let mut k = 0;
        for i in offsets[s]..offsets[s + 1] {
            k += 1;
            let t = words[i].text.trim_end_matches(['"', '\'', ')', '”', '’']);
            let last = t.ends_with(['.', '!', '?']) || i + 1 == offsets[s + 1];
            out[i] = (sentence, k, last);
            if last {
                sentence += 1;
                k = 0;
            }
        }
    }
    out
}

/// A word → value table (first occurrence of a normalised word wins).
pub fn read_lexicon(path: &Path, word_column: &str, value_column: &str, log10: bool) -> Result<HashMap<String, f64>> {
    let frame = Frame::read(path)?;
    let (wc, vc) = (frame.column(word_column)?, frame.column(value_column)?);
    let mut out = HashMap::new();
    for i in 0..frame.n_rows() {
        if frame.is_missing(wc, i) || frame.is_missing(vc, i) {
            continue;
        }
        let mut v = frame.number(vc, i)?;
        if log10 {
            if v <= 0.0 {
                continue;
            }
            v = v.log10();
        }
        out.entry(normalize_word(&frame.cells[wc][i])).or_insert(v);
    }
    Ok(out)
}

/// A norm-block table: its column names (ranges expanded) and word → values (first occurrence
/// of a normalised word wins; an empty, `NA`, `na` or `n/a` cell is a missing value, any other
/// non-numeric one an error naming file, row and column).
pub fn read_norm_table(t: &NormTableSpec) -> Result<(Vec<String>, HashMap<String, Vec<Option<f64>>>)> {
    let frame = Frame::read(&t.path)?;
    let wc = frame.column(&t.word_column)?;
    let mut cols = Vec::new();
    for c in &t.columns {
        match c.split_once("..") {
            Some((a, b)) => {
                let (i, j) = (frame.column(a.trim())?, frame.column(b.trim())?);
                if i > j {
                    return Err(Error::parse(
                        &t.path,
                        "header",
                        format!("norm columns `{c}`: `{a}` comes after `{b}` in the file"),
                    ));
                }
                cols.extend(i..=j);
            }
            None => cols.push(frame.column(c)?),
        }
    }
    if cols.is_empty() {
        return Err(Error::parse(&t.path, "header", "no norm columns given"));
    }
    let names: Vec<String> = cols.iter().map(|&c| frame.columns[c].clone()).collect();
    let mut out = HashMap::new();
    for i in 0..frame.n_rows() {
        if frame.is_missing(wc, i) {
            continue;
        }
        let key = normalize_word(&frame.cells[wc][i]);
        if out.contains_key(&key) {
            continue;
        }
        let mut v = Vec::with_capacity(cols.len());
        for &c in &cols {
            // besides the frame's missing cells, `na` / `n/a` (Binder et al.'s ratings use `na`)
            let cell = frame.cells[c][i].trim();
            let missing = frame.is_missing(c, i) || cell.eq_ignore_ascii_case("na") || cell.eq_ignore_ascii_case("n/a");
            v.push(match missing {
                true => None,
                false => {
                    let x = frame.number(c, i)?;
                    match t.log10 {
                        true if x > 0.0 => Some(x.log10()),
                        true => None,
                        false => Some(x),
                    }
                }
            });
        }
        out.insert(key, v);
    }
    Ok((names, out))
}

/// Natural Stories n-gram tables: `code  order  token  count  context_count` without a header;
/// the `story.position.word` rows give −log₂(count / context_count) per word.
pub fn read_ngram_surprisal(path: &Path) -> Result<HashMap<(String, i64), f64>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = HashMap::new();
    for (ln, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 5 {
            if line.trim().is_empty() {
                continue;
            }
            return Err(Error::parse(
                path,
                format!("line {}", ln + 1),
                format!(
                    "expected 5 tab-separated columns (code, order, token, count, context count), found {}",
                    f.len()
                ),
            ));
        }
        let code: Vec<&str> = f[0].split('.').collect();
        if code.len() != 3 || code[2] != "word" {
            continue;
        }
        let Ok(pos) = code[1].parse::<i64>() else {
            return Err(Error::parse(
                path,
                format!("line {}, column 1", ln + 1),
                format!("bad token code `{}`", f[0]),
            ));
        };
        let (Ok(c), Ok(ctx)) = (f[3].parse::<f64>(), f[4].parse::<f64>()) else {
            continue; // NA counts (unigram tables, unseen contexts): no surprisal for this word
        };
        if c > 0.0 && ctx > 0.0 {
            out.insert((code[0].to_string(), pos), -(c / ctx).log2());
        }
    }
    Ok(out)
}

/// Reads, validates and joins everything.
pub fn load(spec: &InputSpec) -> Result<ReadingData> {
    let (stories, positions) = read_story_words(spec)?;
    let mut words = Vec::new();
    let mut story_offsets = vec![0];
    let mut index: HashMap<(String, i64), usize> = HashMap::new();
    for (s, pos) in stories.iter().zip(&positions) {
        for (w, &p) in s.words.iter().zip(pos) {
            index.insert((s.id.clone(), p), words.len());
            words.push(WordInfo {
                story: s.id.clone(),
                position: p,
                text: w.text.clone(),
                pos: None,
                sentence: None,
                sentence_position: None,
                sentence_final: false,
                length: w.text.chars().filter(|c| c.is_alphanumeric()).count(),
                log_freq: None,
                ngram_surprisal: None,
                norm: None,
                norm_block: Vec::new(),
            });
        }
        story_offsets.push(words.len());
    }
    let mut report = JoinReport::default();

    // sentences and POS
    match &spec.parses {
        Some(p) => {
            let parses = read_parses(p)?;
            for w in &mut words {
                match parses.get(&(w.story.clone(), w.position)) {
                    Some((s, k, last, tag)) => {
                        w.sentence = Some(*s);
                        w.sentence_position = Some(*k);
                        w.sentence_final = *last;
                        w.pos = tag.clone();
                    }
                    None => report.words_without_parse += 1,
                }
            }
        }
        None => {
            let sents = punctuation_sentences(&words, &story_offsets);
            for (w, (s, k, last)) in words.iter_mut().zip(sents) {
                w.sentence = Some(s);
                w.sentence_position = Some(k);
                w.sentence_final = last;
            }
        }
    }

    // lexical tables
    let freq = read_lexicon(
        &spec.frequency,
        &spec.frequency_word_column,
        &spec.frequency_column,
        spec.frequency_log10,
    )?;
    let ngram = spec.ngram.as_deref().map(read_ngram_surprisal).transpose()?;
    let norms = spec
        .norms
        .as_deref()
        .map(|p| read_lexicon(p, &spec.norms_word_column, &spec.norms_column, false))
        .transpose()?;
    let mut norm_block = Vec::with_capacity(spec.norm_tables.len());
    let mut block_values = Vec::with_capacity(spec.norm_tables.len());
    for t in &spec.norm_tables {
        let (names, values) = read_norm_table(t)?;
        norm_block.push((t.name.clone(), names));
        block_values.push(values);
    }
    for w in &mut words {
        let key = normalize_word(&w.text);
        for ((name, names), values) in norm_block.iter().zip(&block_values) {
            match values.get(&key) {
                Some(v) => w.norm_block.extend(v.iter().copied()),
                None => {
                    w.norm_block.extend(std::iter::repeat_n(None, names.len()));
                    match report.words_without_norm_table.iter_mut().find(|(n, _)| n == name) {
                        Some((_, c)) => *c += 1,
                        None => report.words_without_norm_table.push((name.clone(), 1)),
                    }
                }
            }
        }
        // a possessive not listed takes its stem's frequency (wordfreq splits "boar's")
        w.log_freq = freq.get(&key).copied().or_else(|| {
            key.strip_suffix("'s")
                .or_else(|| key.strip_suffix("’s"))
                .and_then(|stem| freq.get(stem).copied())
        });
        report.words_without_frequency += usize::from(w.log_freq.is_none());
        if let Some(ng) = &ngram {
            w.ngram_surprisal = ng.get(&(w.story.clone(), w.position)).copied();
            report.words_without_ngram += usize::from(w.ngram_surprisal.is_none());
        }
        if let Some(nm) = &norms {
            w.norm = nm.get(&key).copied();
            report.words_without_norm += usize::from(w.norm.is_none());
        }
    }

    // reading times
    let frame = Frame::read(&spec.rts)?;
    let sc = frame.column(&spec.story_column)?;
    let pc = frame.column(&spec.position_column)?;
    let rc = frame.column(&spec.rt_column)?;
    let subj = spec.subject_column.as_deref().map(|c| frame.column(c)).transpose()?;
    let wcol = match &spec.rt_word_column {
        Some(c) => Some(frame.column(c)?),
        None => None,
    };
    report.rt_rows = frame.n_rows();
    let mut obs = Vec::new();
    let mut has_rt = vec![false; words.len()];
    for i in 0..frame.n_rows() {
        if frame.is_missing(sc, i) || frame.is_missing(pc, i) {
            report.unmatched += 1;
            if report.unmatched_examples.len() < EXAMPLES {
                report
                    .unmatched_examples
                    .push(format!("row {}: no story or position", frame.file_rows[i]));
            }
            continue;
        }
        let story = frame.cells[sc][i].trim().to_string();
        let pos = int_cell(&frame, pc, i)?;
        let Some(&wi) = index.get(&(story.clone(), pos)) else {
            report.unmatched += 1;
            if report.unmatched_examples.len() < EXAMPLES {
                report.unmatched_examples.push(format!(
                    "row {}: story {story} position {pos} is not in {}",
                    frame.file_rows[i],
                    spec.words.display()
                ));
            }
            continue;
        };
        if let Some(c) = wcol {
            let (a, b) = (normalize_word(&frame.cells[c][i]), normalize_word(&words[wi].text));
            if a != b {
                report.word_mismatch += 1;
                if report.word_mismatch_examples.len() < EXAMPLES {
                    report.word_mismatch_examples.push(format!(
                        "row {}: story {story} position {pos}: `{}` in the RT file, `{}` in the story",
                        frame.file_rows[i], frame.cells[c][i], words[wi].text
                    ));
                }
                continue;
            }
        }
        if frame.is_missing(rc, i) {
            report.missing_rt += 1;
            continue;
        }
        let rt = frame.number(rc, i)?;
        if rt < spec.min_rt {
            report.below_min_rt += 1;
            continue;
        }
        if rt > spec.max_rt {
            report.above_max_rt += 1;
            continue;
        }
        let subject = match subj {
            Some(c) if frame.is_missing(c, i) => {
                return Err(Error::parse(
                    &spec.rts,
                    format!("row {}, column `{}`", frame.file_rows[i], frame.columns[c]),
                    "empty subject id",
                ))
            }
            Some(c) => Some(frame.cells[c][i].trim().to_string()),
            None => None,
        };
        has_rt[wi] = true;
        obs.push(RtObs {
            word: wi,
            subject,
            rt,
            file_row: frame.file_rows[i],
        });
    }
    report.joined = obs.len();
    report.words_without_rt = has_rt.iter().filter(|h| !**h).count();
    if obs.is_empty() {
        return Err(Error::parse(
            &spec.rts,
            "table",
            format!(
                "no reading time joined to the words of {} ({} rows: {} unmatched, {} with a different word, {} missing, {} outside [{}, {}] ms)",
                spec.words.display(),
                report.rt_rows,
                report.unmatched,
                report.word_mismatch,
                report.missing_rt,
                report.below_min_rt + report.above_max_rt,
                spec.min_rt,
                spec.max_rt
            ),
        ));
    }
    Ok(ReadingData {
        stories,
        words,
        story_offsets,
        obs,
        per_subject: spec.subject_column.is_some(),
        report,
        norm_block,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn spec(dir: &Path, rts: &str) -> InputSpec {
        InputSpec {
            language: "en".into(),
            words: write(
                dir,
                "words.tsv",
                "word\tzone\titem\nThe\t1\t1\ncat\t2\t1\nsat.\t3\t1\nA\t1\t2\ndog\t2\t2\nran!\t3\t2\n",
            ),
            story_column: "item".into(),
            position_column: "zone".into(),
            word_column: "word".into(),
            rts: write(dir, "rts.tsv", rts),
            rt_column: "RT".into(),
            subject_column: Some("subj".into()),
            rt_word_column: Some("word".into()),
            min_rt: 100.0,
            max_rt: 3000.0,
            parses: None,
            frequency: write(
                dir,
                "freq.tsv",
                "word\tzipf\nthe\t7.7\ncat\t4.5\nsat\t4.0\na\t7.3\ndog\t5.0\n",
            ),
            frequency_word_column: "word".into(),
            frequency_column: "zipf".into(),
            frequency_log10: false,
            ngram: None,
            norms: None,
            norms_word_column: "Word".into(),
            norms_column: "Conc.M".into(),
            norm_tables: Vec::new(),
        }
    }

    #[test]
    fn every_rt_row_is_joined_or_counted_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let rts = "subj\titem\tzone\tword\tRT\n\
                   s1\t1\t1\tThe\t300\n\
                   s1\t1\t2\tcat\t350\n\
                   s1\t1\t9\tcat\t350\n\
                   s1\t2\t2\tcow\t310\n\
                   s1\t2\t3\tran!\tNA\n\
                   s2\t2\t1\tA\t50\n\
                   s2\t2\t2\tdog\t4000\n\
                   s2\t1\t3\tsat.\t420\n";
        let d = load(&spec(dir.path(), rts)).unwrap();
        let r = &d.report;
        assert_eq!(r.rt_rows, 8);
        assert_eq!((r.joined, r.unmatched, r.word_mismatch, r.missing_rt), (3, 1, 1, 1));
        assert_eq!((r.below_min_rt, r.above_max_rt), (1, 1));
        assert_eq!(
            r.joined + r.unmatched + r.word_mismatch + r.missing_rt + r.below_min_rt + r.above_max_rt,
            8
        );
        assert!(r.unmatched_examples[0].contains("row 4") && r.unmatched_examples[0].contains("position 9"));
        assert!(r.word_mismatch_examples[0].contains("`cow`"));
        // words: story 1 (The cat sat.) then story 2 (A dog ran!); ran! has no frequency
        assert_eq!(d.words.len(), 6);
        assert_eq!(d.story_offsets, vec![0, 3, 6]);
        assert_eq!(r.words_without_frequency, 1);
        assert_eq!(r.words_without_rt, 3); // A, dog, ran!
                                           // sentences from punctuation: each story is one sentence of 3 words
        let sp: Vec<_> = d
            .words
            .iter()
            .map(|w| (w.sentence, w.sentence_position, w.sentence_final))
            .collect();
        assert_eq!(sp[0], (Some(0), Some(1), false));
        assert_eq!(sp[2], (Some(0), Some(3), true));
        assert_eq!(sp[3], (Some(1), Some(1), false));
        assert_eq!(
            d.obs.iter().map(|o| o.subject.as_deref().unwrap()).collect::<Vec<_>>(),
            ["s1", "s1", "s2"]
        );
    }

    #[test]
    fn bad_input_is_an_error_naming_file_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&spec(dir.path(), "subj\titem\tzone\tword\tRT\ns1\t1\t1\tThe\tfast\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rts.tsv") && e.contains("row 2") && e.contains("RT"), "{e}");
        let e = load(&spec(
            dir.path(),
            "subj\titem\tzone\tword\tReadingTime\ns1\t1\t1\tThe\t300\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("RT") && e.contains("rts.tsv"), "{e}");
        // nothing joins: an error that says why, not an empty analysis
        let e = load(&spec(dir.path(), "subj\titem\tzone\tword\tRT\ns1\t7\t1\tThe\t300\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 unmatched"), "{e}");
    }

    #[test]
    fn parses_give_sentences_and_content_tags() {
        let dir = tempfile::tempdir().unwrap();
        let conll = "1\tThe\t_\tDT\tDT\t_\t2\tdet\t_\tTokenId=1.1\n\
                     2\tcat\t_\tNN\tNN\t_\t3\tnsubj\t_\tTokenId=1.2\n\
                     3\tsat\t_\tVBD\tVBD\t_\t0\troot\t_\tTokenId=1.3.1\n\
                     4\t.\t_\t.\t.\t_\t3\tpunct\t_\tTokenId=1.3.2\n\
                     \n\
                     1\t\"\t_\t``\t``\t_\t2\tpunct\t_\tTokenId=2.1.1\n\
                     2\tA\t_\tDT\tDT\t_\t3\tdet\t_\tTokenId=2.1.2\n";
        let p = write(dir.path(), "p.conllx", conll);
        let m = read_parses(&p).unwrap();
        assert_eq!(m[&("1".to_string(), 3)], (0, 3, true, Some("VBD".to_string())));
        assert_eq!(m[&("1".to_string(), 1)], (0, 1, false, Some("DT".to_string())));
        assert_eq!(m[&("2".to_string(), 1)], (1, 1, true, Some("DT".to_string())));
        let bad = write(dir.path(), "b.conllx", "1\tThe\t_\tDT\n");
        assert!(read_parses(&bad).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn ngram_surprisal_is_minus_log2_of_the_conditional_mle() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "f.tsv",
            "1.1.whole\t2\tIf\t25\t100\n1.1.word\t2\tIf\t25\t100\n1.2.word\t2\tyou\t1\t8\n1.3.word\t2\tx\t0\t8\n1.4.word\t1\ty\t5\tNA\n",
        );
        let m = read_ngram_surprisal(&p).unwrap();
        assert_eq!(m.len(), 2);
        assert!((m[&("1".to_string(), 1)] - 2.0).abs() < 1e-12);
        assert!((m[&("1".to_string(), 2)] - 3.0).abs() < 1e-12);
    }
}
