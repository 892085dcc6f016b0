//! Plain text → words: whitespace-separated tokens, punctuation kept attached, no timing.
//!
//! Chinese (and other scripts written without spaces) cannot be split this way; Chinese plain
//! text is rejected so that nobody silently gets one "word" per sentence. Supply a word table
//! with one segmented word per row instead (a segmenter comes later).

use std::path::Path;

use super::Word;
use crate::{Error, Result};

/// True for language codes meaning Chinese: `zh`, `zh-CN`, `zh_Hans`, `cmn` (case-insensitive).
fn is_chinese(language: &str) -> bool {
    let l = language.trim().to_ascii_lowercase();
    l == "zh" || l.starts_with("zh-") || l.starts_with("zh_") || l == "cmn" || l.starts_with("cmn-")
}

/// Rejects languages whose plain text has no spaces between words.
pub(crate) fn check_language(path: &Path, language: &str) -> Result<()> {
    if is_chinese(language) {
        return Err(Error::Invalid(format!(
            "{}: plain text in language `{language}` cannot be split into words (Chinese has no \
             spaces between words); supply a segmented word table (.tsv/.csv with a `word` \
             column, one word per row) instead",
            path.display()
        )));
    }
    Ok(())
}

/// Splits on Unicode whitespace; every token is a word (`Alice,` stays `Alice,`).
pub(crate) fn read_words(text: &str) -> Vec<Word> {
    text.split_whitespace()
        .map(|t| Word {
            text: t.to_string(),
            onset_s: None,
            offset_s: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_punctuation() {
        let w = read_words("  Alice was\tbeginning,\n\"very\" tired…\r\n");
        let t: Vec<_> = w.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(t, ["Alice", "was", "beginning,", "\"very\"", "tired…"]);
        assert!(w.iter().all(|w| w.onset_s.is_none() && w.offset_s.is_none()));
    }

    #[test]
    fn chinese_rejected() {
        for lang in ["zh", "ZH", "zh-CN", "zh_Hans", "cmn"] {
            let err = check_language(Path::new("s.txt"), lang).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)));
            let m = err.to_string();
            assert!(m.contains("s.txt") && m.contains("word table"), "{m}");
        }
        for lang in ["en", "fr", "zhx"] {
            assert!(check_language(Path::new("s.txt"), lang).is_ok(), "{lang}");
        }
    }
}
