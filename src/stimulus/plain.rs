//! Plain text → words, no timing.
//!
//! Languages written with spaces: whitespace-separated tokens, punctuation kept attached
//! (`Alice,`). Chinese (`zh`, `zh-…`, `zh_…`, `cmn`) has no spaces between words: its text is
//! segmented by jieba (jieba-rs, the default dictionary, HMM for unknown words); punctuation
//! segments are attached to the word before them (to the next word at the start of the text), as
//! English punctuation stays attached, and whitespace separates nothing more than jieba does.

use std::sync::OnceLock;

use super::Word;

/// True for language codes meaning Chinese: `zh`, `zh-CN`, `zh_Hans`, `cmn` (case-insensitive).
pub(crate) fn is_chinese(language: &str) -> bool {
    let l = language.trim().to_ascii_lowercase();
    l == "zh" || l.starts_with("zh-") || l.starts_with("zh_") || l == "cmn" || l.starts_with("cmn-")
}

fn word(text: String) -> Word {
    Word {
        text,
        onset_s: None,
        offset_s: None,
    }
}

/// Splits on Unicode whitespace; every token is a word (`Alice,` stays `Alice,`).
pub(crate) fn read_words(text: &str) -> Vec<Word> {
    text.split_whitespace().map(|t| word(t.to_string())).collect()
}

/// The words of `text` in `language`: jieba segmentation for Chinese, whitespace otherwise.
pub(crate) fn read_words_in(text: &str, language: &str) -> Vec<Word> {
    if is_chinese(language) {
        segment_chinese(text)
    } else {
        read_words(text)
    }
}

fn jieba() -> &'static jieba_rs::Jieba {
    static JIEBA: OnceLock<jieba_rs::Jieba> = OnceLock::new();
    JIEBA.get_or_init(jieba_rs::Jieba::new)
}

/// jieba's segments of `text` as words: whitespace dropped, punctuation attached to the word
/// before it (or, before the first word, to the next one).
pub(crate) fn segment_chinese(text: &str) -> Vec<Word> {
    let mut words: Vec<String> = Vec::new();
    let mut pending = String::new(); // punctuation before the first word
    for line in text.lines() {
        for seg in jieba().cut(line, true) {
            let seg = seg.word.trim();
            if seg.is_empty() {
                continue;
            }
            if seg.chars().all(|c| !c.is_alphanumeric()) {
                match words.last_mut() {
                    Some(w) => w.push_str(seg),
                    None => pending.push_str(seg),
                }
            } else {
                words.push(std::mem::take(&mut pending) + seg);
            }
        }
    }
    if !pending.is_empty() {
        words.push(pending);
    }
    words.into_iter().map(word).collect()
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
    fn chinese_codes_are_recognised() {
        for lang in ["zh", "ZH", "zh-CN", "zh_Hans", "cmn"] {
            assert!(is_chinese(lang), "{lang}");
        }
        for lang in ["en", "fr", "zhx", ""] {
            assert!(!is_chinese(lang), "{lang}");
        }
    }

    /// The opening of Le Petit Prince in Chinese: jieba's segmentation (its default dictionary)
    /// with punctuation attached, and the same characters in the same order.
    #[test]
    fn chinese_text_is_segmented_by_jieba() {
        let text = "当我还只有六岁的时候，在一本描写原始森林的名叫《真实的故事》的书中，看到了一副精彩的插画。";
        let w = read_words_in(text, "zh");
        let t: Vec<&str> = w.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(t.concat(), text, "no character lost or added");
        assert!(t.contains(&"六岁") && t.contains(&"时候，"), "{t:?}");
        assert!(t.iter().all(|s| s.chars().count() <= 6), "{t:?}");
        assert!(t.len() >= 20, "{t:?}");
        // whitespace and line breaks separate nothing jieba keeps
        let spaced = read_words_in("我 还只有\n六岁。", "zh");
        let t: Vec<&str> = spaced.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(t.concat(), "我还只有六岁。");
    }
}
