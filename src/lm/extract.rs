//! Words → tokens → sliding windows → per-word residual-stream vectors, surprisal and entropy.
//!
//! Input: a [`Story`] (words in order, optional onsets) and a loaded [`LanguageModel`].
//! Output: [`Extraction`]: per word its token span, surprisal (bits, −log2 p summed over the
//! word's sub-tokens) and next-token entropy (bits, at its last sub-token); per requested layer a
//! (n_words, d_model) matrix pooled over the word's sub-tokens (last by default, mean or first).
//!
//! Stories longer than a window are cut into overlapping windows of `window` positions (BOS
//! included). Window k starts `stride = window − 1 − min_context` tokens after window k−1, and each
//! token takes its vector and probability from the earliest window that holds it, where it has the
//! most left context: every token of the first window sees its whole left context, every later one
//! at least `min_context` tokens. The BOS position is never part of any output.

use std::ops::Range;

use ndarray::Array2;

use super::runtime::{layer_error, LanguageModel};
use crate::stimulus::Story;
use crate::{Error, Result};

/// How a word's vector is made from its sub-tokens' vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    #[default]
    Last,
    Mean,
    First,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Last => "last",
            Pooling::Mean => "mean",
            Pooling::First => "first",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Pooling::Last),
            "mean" => Ok(Pooling::Mean),
            "first" => Ok(Pooling::First),
            other => Err(Error::Invalid(format!(
                "pooling `{other}` is not one of last, mean, first"
            ))),
        }
    }
}

/// Extraction settings.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Layers to keep (0 = embeddings, ℓ = after block ℓ). Empty = all.
    pub layers: Vec<usize>,
    pub pooling: Pooling,
    /// Positions per window, BOS included (default 512, capped by the model's context).
    pub window: usize,
    /// Left context every token outside the first window is guaranteed (default 256).
    pub min_context: usize,
    /// Windows per batch (default 4).
    pub batch_size: usize,
    /// String placed between words when the story is turned into text (default " ").
    pub separator: String,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            layers: Vec::new(),
            pooling: Pooling::Last,
            window: 512,
            min_context: 256,
            batch_size: 4,
            separator: " ".into(),
            progress: false,
        }
    }
}

/// A story turned into tokens, with the token ↔ word maps.
#[derive(Debug, Clone)]
pub struct TokenizedStory {
    /// Token ids, BOS not included.
    pub ids: Vec<u32>,
    /// For every word, the tokens overlapping its characters (non-empty).
    pub word_tokens: Vec<Range<usize>>,
    /// For every token, the word its first non-space byte falls in (its probability counts there).
    pub token_word: Vec<usize>,
}

/// Whether a word is written against the next one without the separator: elisions ending in an
/// apostrophe in French, Italian and Catalan (`j'` + `étais` → `j'étais`, `l'` + `homme`).
pub fn glued_to_next(language: &str, word: &str) -> bool {
    matches!(language, "fr" | "it" | "ca") && (word.ends_with('\'') || word.ends_with('’'))
}

/// A model's tokenizer applied to whole stories, as the LM stage joins their words
/// ([`word_separator`] of the story's language): for counts of tokens outside the LM stage
/// without naming `tokenizers` there.
pub struct StoryTokenizer {
    tokenizer: tokenizers::Tokenizer,
}

impl StoryTokenizer {
    /// Loads `model_dir/tokenizer.json`.
    pub fn open(model_dir: &std::path::Path) -> Result<StoryTokenizer> {
        let path = model_dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::parse(&path, "tokenizer", e.to_string()))?;
        Ok(StoryTokenizer { tokenizer })
    }

    /// The story's tokens (BOS not included) and the tokens of each word.
    pub fn tokenize(&self, story: &Story) -> Result<TokenizedStory> {
        tokenize_story(&self.tokenizer, story, word_separator(&story.language))
    }
}

/// The separator between words of a language: none for Chinese and Japanese (words come from the
/// annotation, never from whitespace), a space otherwise.
pub fn word_separator(language: &str) -> &'static str {
    match language {
        "zh" | "ja" => "",
        _ => " ",
    }
}

/// Joins the words with `sep` (not after elisions, see [`glued_to_next`]), tokenizes the text
/// once, and maps tokens to words by byte offsets: a word gets every token overlapping its bytes
/// (a token that straddles two words, as a merged Chinese token can, belongs to both), and a
/// token's probability counts for the word of its first non-space byte.
pub fn tokenize_story(tokenizer: &tokenizers::Tokenizer, story: &Story, sep: &str) -> Result<TokenizedStory> {
    if story.words.is_empty() {
        return Err(Error::Invalid(format!("story `{}` has no words", story.id)));
    }
    let mut text = String::new();
    let mut spans = Vec::with_capacity(story.words.len());
    for (i, w) in story.words.iter().enumerate() {
        if i > 0 && !glued_to_next(&story.language, &story.words[i - 1].text) {
            text.push_str(sep);
        }
        let start = text.len();
        text.push_str(&w.text);
        spans.push(start..text.len());
    }
    let enc = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| Error::Invalid(format!("tokenizing story `{}`: {e}", story.id)))?;
    let ids = enc.get_ids().to_vec();
    let offsets = enc.get_offsets();
    let bytes = text.as_bytes();
    let word_at = |pos: usize| -> usize {
        // first word whose span ends after pos (pos inside a separator goes to the next word)
        spans.partition_point(|r| r.end <= pos).min(spans.len() - 1)
    };
    let mut token_word = Vec::with_capacity(ids.len());
    let mut word_tokens: Vec<Option<Range<usize>>> = vec![None; spans.len()];
    for (t, &(s, e)) in offsets.iter().enumerate() {
        let anchor = (s..e).find(|&p| !bytes[p].is_ascii_whitespace()).unwrap_or(s);
        token_word.push(word_at(anchor));
        // every word the token overlaps gets it for pooling
        let first = word_at(anchor);
        for (wi, span) in spans.iter().enumerate().skip(first) {
            if span.start >= e {
                break;
            }
            if span.end > s {
                let r = word_tokens[wi].get_or_insert(t..t);
                r.end = t + 1;
            }
        }
    }
    let word_tokens = word_tokens
        .into_iter()
        .enumerate()
        .map(|(wi, r)| {
            r.ok_or_else(|| {
                Error::Invalid(format!(
                    "story `{}`: word {wi} `{}` produced no token",
                    story.id, story.words[wi].text
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TokenizedStory {
        ids,
        word_tokens,
        token_word,
    })
}

/// One window: tokens `start..end` of the story (BOS is added in front); it provides the outputs
/// of tokens `own`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    pub start: usize,
    pub end: usize,
    pub own: Range<usize>,
}

/// Plans windows of `span` story tokens (window minus BOS) over `n_tokens` tokens.
pub fn plan_windows(n_tokens: usize, span: usize, min_context: usize) -> Result<Vec<WindowPlan>> {
    if span == 0 || min_context >= span {
        return Err(Error::Invalid(format!(
            "min_context ({min_context}) must be smaller than the tokens a window holds ({span})"
        )));
    }
    let stride = span - min_context;
    let mut plans = Vec::new();
    let mut start = 0;
    let mut owned_to = 0;
    while owned_to < n_tokens {
        let end = (start + span).min(n_tokens);
        plans.push(WindowPlan {
            start,
            end,
            own: owned_to..end,
        });
        owned_to = end;
        start += stride;
    }
    Ok(plans)
}

/// Per-word results of one story.
#[derive(Debug, Clone)]
pub struct Extraction {
    pub tokens: TokenizedStory,
    /// −log2 p(word | left context), summed over the tokens anchored in the word; None if none is.
    pub surprisal_bits: Vec<Option<f32>>,
    /// Entropy (bits) of the next-token distribution after the word's last sub-token.
    pub entropy_bits: Vec<f32>,
    /// Layers kept, in order.
    pub layers: Vec<usize>,
    /// One (n_words, d_model) matrix per kept layer.
    pub activations: Vec<Array2<f32>>,
    pub pooling: Pooling,
    pub n_windows: usize,
}

/// Validates the layer list against the model; empty means all layers.
pub fn resolve_layers(requested: &[usize], n_layers: usize) -> Result<Vec<usize>> {
    if requested.is_empty() {
        return Ok((0..=n_layers).collect());
    }
    let mut out = Vec::with_capacity(requested.len());
    for &l in requested {
        if l > n_layers {
            return Err(layer_error(l, n_layers));
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

/// Runs the model over a story and pools per word.
pub fn extract_story(lm: &mut LanguageModel, story: &Story, opts: &ExtractOptions) -> Result<Extraction> {
    let layers = resolve_layers(&opts.layers, lm.n_layers())?;
    let bos = if lm.manifest.prepend_bos {
        lm.manifest.bos_token_id
    } else {
        None
    };
    let window = opts.window.min(lm.manifest.context_length);
    let span = window - bos.is_some() as usize;
    let tokens = tokenize_story(&lm.tokenizer, story, &opts.separator)?;
    let n_tok = tokens.ids.len();
    let plans = plan_windows(n_tok, span, opts.min_context)?;
    let d = lm.manifest.d_model;
    let n_words = story.words.len();

    // Per-token results, filled window by window.
    let mut tok_logprob = vec![f32::NAN; n_tok]; // ln p(token | left context)
    let mut tok_entropy = vec![f32::NAN; n_tok]; // entropy after the token, nats
    let mut acts: Vec<Array2<f32>> = layers.iter().map(|_| Array2::zeros((n_words, d))).collect();
    // which token each word takes its vector from (last/first), or all (mean)
    let want = |w: usize, t: usize, pooling: Pooling, wt: &[Range<usize>]| -> bool {
        let r = &wt[w];
        match pooling {
            Pooling::Last => t + 1 == r.end,
            Pooling::First => t == r.start,
            Pooling::Mean => true,
        }
    };

    let bar = progress_bar(opts.progress, plans.len() as u64, &story.id);
    let off = bos.is_some() as usize;
    for batch in plans.chunks(opts.batch_size.max(1)) {
        let windows: Vec<Vec<u32>> = batch
            .iter()
            .map(|p| {
                bos.into_iter()
                    .chain(tokens.ids[p.start..p.end].iter().copied())
                    .collect()
            })
            .collect();
        lm.run_with(&windows, &layers, |out| {
            for (bi, p) in batch.iter().enumerate() {
                for t in p.own.clone() {
                    let pos = off + t - p.start;
                    tok_entropy[t] = out.next_entropy[[bi, pos]];
                    if pos >= 1 {
                        tok_logprob[t] = out.next_logprob[[bi, pos - 1]];
                    }
                    // the words this token overlaps: its anchor word and any later word it runs into
                    let w0 = tokens.token_word[t];
                    for w in (w0..n_words).take_while(|&w| tokens.word_tokens[w].start <= t) {
                        if !tokens.word_tokens[w].contains(&t) || !want(w, t, opts.pooling, &tokens.word_tokens) {
                            continue;
                        }
                        for (li, h) in out.hidden.iter().enumerate() {
                            let src = h.slice(ndarray::s![bi, pos, ..]);
                            let mut dst = acts[li].row_mut(w);
                            dst += &src;
                        }
                    }
                }
            }
        })?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    if opts.pooling == Pooling::Mean {
        for a in acts.iter_mut() {
            for (w, mut row) in a.rows_mut().into_iter().enumerate() {
                row /= tokens.word_tokens[w].len() as f32;
            }
        }
    }

    let ln2 = std::f32::consts::LN_2;
    let mut surprisal = vec![None; n_words];
    for (t, &w) in tokens.token_word.iter().enumerate() {
        let lp = tok_logprob[t];
        if lp.is_finite() {
            *surprisal[w].get_or_insert(0.0) += -lp / ln2;
        }
    }
    let entropy_bits = tokens
        .word_tokens
        .iter()
        .map(|r| tok_entropy[r.end - 1] / ln2)
        .collect();
    Ok(Extraction {
        tokens,
        surprisal_bits: surprisal,
        entropy_bits,
        layers,
        activations: acts,
        pooling: opts.pooling,
        n_windows: plans.len(),
    })
}

fn progress_bar(show: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} windows, {elapsed} (eta {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("extract {what}"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_token_once_with_enough_context() {
        for n in [1usize, 5, 63, 64, 65, 200, 1000] {
            let plans = plan_windows(n, 64, 16).unwrap();
            let mut next = 0;
            for (k, p) in plans.iter().enumerate() {
                assert_eq!(p.own.start, next, "n = {n}");
                assert!(p.end - p.start <= 64);
                assert!(p.own.start >= p.start && p.own.end == p.end);
                if k > 0 {
                    assert!(
                        p.own.start - p.start >= 16,
                        "token {} has too little context",
                        p.own.start
                    );
                }
                next = p.own.end;
            }
            assert_eq!(next, n);
            assert_eq!(plans[0].start, 0);
        }
    }

    #[test]
    fn min_context_must_leave_room_in_the_window() {
        assert!(plan_windows(100, 16, 16).is_err());
    }

    #[test]
    fn layers_default_to_all_and_out_of_range_is_an_error() {
        assert_eq!(resolve_layers(&[], 3).unwrap(), vec![0, 1, 2, 3]);
        let e = resolve_layers(&[4], 3).unwrap_err().to_string();
        assert!(e.contains("layer 4") && e.contains("0 (embeddings) ..= 3"), "{e}");
    }
}
