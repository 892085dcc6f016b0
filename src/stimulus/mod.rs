//! Stimulus input: a story file → the story's words, in presentation order, with onsets.
//!
//! **Input.** One story per file, in one of three formats ([`StimulusFormat`]):
//!
//! * a Praat TextGrid (long or short text format, UTF-8 or UTF-16 with a byte-order mark) whose
//!   word tier is an IntervalTier — each non-silent interval is one word;
//! * a word table (TSV or CSV with a header row) with one word per row and, optionally, onset
//!   and offset columns;
//! * plain text — words are the whitespace-separated tokens (Chinese: jieba's segments); no timing.
//!
//! **Output.** A [`Story`]: its id (default: the file stem), its language (a BCP-47-style code
//! such as `en`, from [`ReadOptions::language`]) and its [`Word`]s in file order.
//!
//! **Units.** Times are in **seconds** from the start of the audio recording the file was
//! aligned to: `onset_s` (word start) and `offset_s` (word end). For a TextGrid they are the
//! interval's `xmin` and `xmax`, copied exactly (the decimal text is parsed once to `f64`, no
//! arithmetic). Word tables must already be in seconds; a column in milliseconds must be
//! converted first. Plain text has no times (`None`).
//!
//! **Errors.** A missing or unreadable file is [`Error::Io`] with the path. Malformed content is
//! [`Error::Parse`] naming the file, the place (`line 57` for a TextGrid, ``row 12, column
//! `onset_s` `` for a table; rows are counted as in the file, the header being row 1) and what was
//! expected versus what was found. A well-formed file without usable words (zero words after
//! skipping silence labels, no word tier) is [`Error::Invalid`] naming the
//! file.
//!
//! May import: `stats`, `paths`, `error`.

mod decode;
mod plain;
pub(crate) mod table;
mod textgrid;
pub mod wordfreq;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Interval labels that mark silence or pauses in common forced aligners (Praat, P2FA, MFA,
/// Montreal, WebMAUS); rows/intervals with these labels are not words. Matched after trimming
/// whitespace, case-sensitively. Empty and whitespace-only labels are always skipped as well.
pub const DEFAULT_SKIP_LABELS: &[&str] = &["sp", "sil", "<sil>", "{SL}", "sp1", ""];

/// Word-table header names tried, in this order, when [`ReadOptions::word_column`] is `None`
/// (compared case-insensitively after trimming).
pub const DEFAULT_WORD_COLUMNS: &[&str] = &["word", "words", "token", "text"];

/// Onset column names tried, in this order, when [`ReadOptions::onset_column`] is `None`.
/// Values must be in seconds.
pub const DEFAULT_ONSET_COLUMNS: &[&str] = &["onset_s", "onset", "start", "xmin"];

/// Offset column names tried, in this order, when [`ReadOptions::offset_column`] is `None`.
/// Values must be in seconds. The offset column is optional.
pub const DEFAULT_OFFSET_COLUMNS: &[&str] = &["offset_s", "offset", "end", "xmax"];

/// One word of a story, as presented to the participant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// The word as written in the stimulus, trimmed of surrounding whitespace. Punctuation
    /// attached in the source stays attached (`Alice,`).
    pub text: String,
    /// Start of the word in seconds from the start of the recording; `None` when the source has
    /// no timing (plain text, or a word table without an onset column).
    pub onset_s: Option<f64>,
    /// End of the word in seconds from the start of the recording; `None` when unknown.
    pub offset_s: Option<f64>,
}

/// A story: the words of one stimulus file, in presentation order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Story {
    /// Identifier of the story (default: the file stem, e.g. `DownTheRabbitHoleFinal_exp120_pad_1`).
    pub id: String,
    /// Language code of the text, e.g. `en` or `zh`.
    pub language: String,
    /// The words, in file order; never empty.
    pub words: Vec<Word>,
}

/// The on-disk format of a story file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StimulusFormat {
    /// Praat TextGrid (`.TextGrid`), long or short text format.
    TextGrid,
    /// A table with one word per row (`.tsv` tab-separated, `.csv` comma-separated).
    WordTable,
    /// Plain text (`.txt`): whitespace-separated words, no timing.
    PlainText,
}

impl StimulusFormat {
    /// Guesses the format from the file extension (case-insensitive): `.TextGrid` → `TextGrid`,
    /// `.tsv`/`.csv` → `WordTable`, `.txt` → `PlainText`. Any other extension is
    /// [`Error::Invalid`]; pass the format explicitly then.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        match ext.as_str() {
            "textgrid" => Ok(StimulusFormat::TextGrid),
            "tsv" | "csv" => Ok(StimulusFormat::WordTable),
            "txt" => Ok(StimulusFormat::PlainText),
            _ => Err(Error::Invalid(format!(
                "{}: cannot tell the stimulus format from the extension {}; expected .TextGrid, \
                 .tsv, .csv or .txt, or name the format explicitly (textgrid, table, text)",
                path.display(),
                if ext.is_empty() {
                    "(none)".to_string()
                } else {
                    format!("`.{ext}`")
                }
            ))),
        }
    }

    /// The name accepted by [`FromStr`]: `textgrid`, `table` or `text`.
    pub fn name(self) -> &'static str {
        match self {
            StimulusFormat::TextGrid => "textgrid",
            StimulusFormat::WordTable => "table",
            StimulusFormat::PlainText => "text",
        }
    }
}

impl fmt::Display for StimulusFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StimulusFormat {
    type Err = Error;

    /// Parses an explicit format choice: `textgrid`, `table` or `text` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "textgrid" => Ok(StimulusFormat::TextGrid),
            "table" => Ok(StimulusFormat::WordTable),
            "text" => Ok(StimulusFormat::PlainText),
            _ => Err(Error::Invalid(format!(
                "unknown stimulus format `{s}`; expected one of `textgrid`, `table`, `text`"
            ))),
        }
    }
}

/// How to read a story file. `ReadOptions::default()` suits English TextGrids and word tables
/// with conventional column names.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOptions {
    /// TextGrid tier holding the words. `None`: the IntervalTier named `word` or `words`
    /// (case-insensitive), else the only IntervalTier, else an error listing the tiers.
    pub tier: Option<String>,
    /// Labels that are not words (silences, pauses), matched against the trimmed label,
    /// case-sensitively, in TextGrids and word tables (not in plain text). Default:
    /// [`DEFAULT_SKIP_LABELS`]. Empty and whitespace-only TextGrid labels are always skipped.
    pub skip_labels: Vec<String>,
    /// Word-table column with the words. `None`: the first of [`DEFAULT_WORD_COLUMNS`] present.
    pub word_column: Option<String>,
    /// Word-table column with onsets in seconds. `None`: the first of
    /// [`DEFAULT_ONSET_COLUMNS`] present; if none is present, words have no onsets.
    pub onset_column: Option<String>,
    /// Word-table column with offsets in seconds. `None`: the first of
    /// [`DEFAULT_OFFSET_COLUMNS`] present; if none is present, words have no offsets.
    pub offset_column: Option<String>,
    /// Language code stored in the story (default `en`). `zh` plain text is rejected, see
    /// [`read_story`].
    pub language: String,
    /// Story id. `None`: the file stem.
    pub story_id: Option<String>,
    /// Word tables holding several runs (fMRI sessions, sections): read only this one.
    pub run: Option<RunSelect>,
    /// Word tables: skip rows whose word cell is empty (and count them in the log) instead of
    /// failing, e.g. the second half of a split contraction (`hasnt` + an empty row whose stem
    /// is `not`, in the English Le Petit Prince table).
    pub skip_empty_words: bool,
}

/// One run of a word table with several (e.g. the nine sections of Le Petit Prince, whose onsets
/// restart at 0 in each).
#[derive(Debug, Clone, PartialEq)]
pub struct RunSelect {
    /// 1-based run number.
    pub run: usize,
    /// Column holding the run number of each row (compared as a number, so `1` and `1.0` match).
    /// `None`: runs are the segments of the table where the onsets restart (a row whose onset is
    /// below the previous row's starts the next run), which needs an onset column.
    pub column: Option<String>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            tier: None,
            skip_labels: DEFAULT_SKIP_LABELS.iter().map(|s| s.to_string()).collect(),
            word_column: None,
            onset_column: None,
            offset_column: None,
            language: "en".to_string(),
            story_id: None,
            run: None,
            skip_empty_words: false,
        }
    }
}

impl ReadOptions {
    /// True if `label` (trimmed) is not a word: empty, whitespace-only, or one of
    /// [`ReadOptions::skip_labels`].
    pub(crate) fn is_skipped(&self, label: &str) -> bool {
        let label = label.trim();
        label.is_empty() || self.skip_labels.iter().any(|s| s.trim() == label)
    }
}

/// Reads one story file into its words.
///
/// `format`: `None` guesses from the extension ([`StimulusFormat::from_path`]).
///
/// Chinese is written without spaces between words, so plain text whose
/// [`ReadOptions::language`] is Chinese (`zh`, `zh-…`, `zh_…`, `cmn`) is segmented by jieba
/// (jieba-rs) instead of split on whitespace; word tables and TextGrids keep their own words.
///
/// Errors: [`Error::Io`] if the file cannot be read; [`Error::Parse`] for malformed content
/// (with line or row/column); [`Error::Invalid`] if no words remain after skipping labels, the
/// TextGrid has no usable word tier.
pub fn read_story(path: impl AsRef<Path>, format: Option<StimulusFormat>, opts: &ReadOptions) -> Result<Story> {
    let path = path.as_ref();
    let format = match format {
        Some(f) => f,
        None => StimulusFormat::from_path(path)?,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = decode::decode_text(path, &bytes)?;
    parse_story(&text, path, format, opts)
}

/// Parses the already-decoded content of a story file. `path` is used for the default story
/// id, for guessing the table delimiter from the extension, and in error messages; it is not
/// opened. Same rules and errors as [`read_story`] otherwise.
pub fn parse_story(text: &str, path: impl AsRef<Path>, format: StimulusFormat, opts: &ReadOptions) -> Result<Story> {
    let path = path.as_ref();
    let words = match format {
        StimulusFormat::TextGrid => textgrid::read_words(path, text, opts)?,
        StimulusFormat::WordTable => table::read_words(path, text, opts)?,
        StimulusFormat::PlainText => plain::read_words_in(text, &opts.language),
    };
    if words.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the story has no words (format {format}{}); check the file and the \
             tier/column options",
            path.display(),
            match format {
                StimulusFormat::PlainText => String::new(),
                _ => format!(", after skipping empty labels and {:?}", opts.skip_labels),
            }
        )));
    }
    let id = opts.story_id.clone().unwrap_or_else(|| default_story_id(path));
    tracing::debug!(
        path = %path.display(),
        %format,
        story = %id,
        n_words = words.len(),
        "read story"
    );
    Ok(Story {
        id,
        language: opts.language.clone(),
        words,
    })
}

fn default_story_id(path: &Path) -> String {
    match path.file_stem() {
        Some(stem) => stem.to_string_lossy().into_owned(),
        None => PathBuf::from(path).display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_path_by_extension() {
        assert_eq!(
            StimulusFormat::from_path("a/b.TextGrid").unwrap(),
            StimulusFormat::TextGrid
        );
        assert_eq!(
            StimulusFormat::from_path("b.textgrid").unwrap(),
            StimulusFormat::TextGrid
        );
        assert_eq!(StimulusFormat::from_path("b.tsv").unwrap(), StimulusFormat::WordTable);
        assert_eq!(StimulusFormat::from_path("b.CSV").unwrap(), StimulusFormat::WordTable);
        assert_eq!(StimulusFormat::from_path("b.txt").unwrap(), StimulusFormat::PlainText);
        let err = StimulusFormat::from_path("b.docx").unwrap_err().to_string();
        assert!(err.contains("b.docx") && err.contains(".docx"), "{err}");
        assert!(StimulusFormat::from_path("noext").is_err());
    }

    #[test]
    fn format_from_str() {
        assert_eq!("textgrid".parse::<StimulusFormat>().unwrap(), StimulusFormat::TextGrid);
        assert_eq!("Table".parse::<StimulusFormat>().unwrap(), StimulusFormat::WordTable);
        assert_eq!("text".parse::<StimulusFormat>().unwrap(), StimulusFormat::PlainText);
        let err = "xml".parse::<StimulusFormat>().unwrap_err().to_string();
        assert!(err.contains("`xml`") && err.contains("textgrid"), "{err}");
        for f in [
            StimulusFormat::TextGrid,
            StimulusFormat::WordTable,
            StimulusFormat::PlainText,
        ] {
            assert_eq!(f.to_string().parse::<StimulusFormat>().unwrap(), f);
        }
    }

    #[test]
    fn default_options() {
        let o = ReadOptions::default();
        assert_eq!(o.language, "en");
        assert_eq!(o.skip_labels, vec!["sp", "sil", "<sil>", "{SL}", "sp1", ""]);
        assert!(o.tier.is_none() && o.story_id.is_none());
        assert!(o.is_skipped(" sp "));
        assert!(o.is_skipped("   "));
        assert!(!o.is_skipped("SP"));
        assert!(!o.is_skipped("Alice"));
    }

    #[test]
    fn empty_story_is_invalid_and_names_file() {
        let err = parse_story(" \n\t", "empty.txt", StimulusFormat::PlainText, &Default::default()).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
        assert!(err.to_string().contains("empty.txt"), "{err}");
    }

    #[test]
    fn story_id_defaults_to_stem_and_can_be_set() {
        let s = parse_story(
            "a b",
            "dir/my_story.txt",
            StimulusFormat::PlainText,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(s.id, "my_story");
        assert_eq!(s.language, "en");
        let opts = ReadOptions {
            story_id: Some("x".into()),
            language: "fr".into(),
            ..Default::default()
        };
        let s = parse_story("a b", "dir/my_story.txt", StimulusFormat::PlainText, &opts).unwrap();
        assert_eq!((s.id.as_str(), s.language.as_str()), ("x", "fr"));
    }

    #[test]
    fn serde_round_trip() {
        let s = Story {
            id: "s".into(),
            language: "en".into(),
            words: vec![
                Word {
                    text: "Alice".into(),
                    onset_s: Some(20.05891632653599),
                    offset_s: None,
                },
                Word {
                    text: "was".into(),
                    onset_s: None,
                    offset_s: None,
                },
            ],
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"onset_s\":20.05891632653599"), "{json}");
        let back: Story = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
