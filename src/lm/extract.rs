//! Words → tokens → the model (windows or the key/value cache) → per-word residual-stream vectors,
//! surprisal and entropy.
//!
//! Input: a [`Story`] (words in order, optional onsets) and a loaded [`LanguageModel`].
//! Output: [`Extraction`]: per word its token span, surprisal (bits, −log2 p summed over the
//! word's sub-tokens) and next-token entropy (bits, at its last sub-token); per requested layer a
//! (n_words, d_model) matrix pooled over the word's sub-tokens (last by default, mean or first).
//!
//! [`ContextPolicy`] says how a token gets its left context:
//! - `Sliding` (default) and `Full` stream the story once through the key/value cache
//!   ([`LanguageModel::run_cached_with`]) in calls of at most [`MAX_CHUNK`] tokens ([`plan_chunks`]);
//!   before a call the cache is cut to the attention sink (BOS) and the latest tokens so that cache
//!   and call fit `window` positions (`Full`: the model's context length). Each token is computed
//!   once; a context token keeps the vectors it got with its own left context. The last position's
//!   log-probabilities of one call score the next call's first token.
//! - `Windows` cuts a story longer than a window into overlapping windows of `window` positions
//!   (BOS included). Window k starts `stride = window − 1 − min_context` tokens after window k−1,
//!   and each token takes its vector and probability from the earliest window that holds it, where
//!   it has the most left context: every token of the first window sees its whole left context,
//!   every later one at least `min_context` tokens; each window recomputes its context.
//!
//! With `Sliding` and `Windows` alike every token sees at least `min_context` and fewer than
//! `window` tokens. The BOS position is never part of any output.

use std::ops::Range;

use ndarray::{Array2, ArrayView3};

use super::runtime::{layer_error, LanguageModel};
use crate::stimulus::Story;
use crate::{Error, Result};

/// `as_str` and `FromStr` (an error listing the choices) for an enum of named settings.
macro_rules! named_setting {
    ($ty:ident, $what:literal, { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$v => $s,)+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($ty::$v),)+
                    other => Err(Error::Invalid(format!(
                        "{} `{other}` is not one of {}",
                        $what,
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}

/// How a word's vector is made from its sub-tokens' vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    #[default]
    Last,
    Mean,
    First,
}

named_setting!(Pooling, "pooling", { Last => "last", Mean => "mean", First => "first" });

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
    /// How a token gets its left context: overlapping windows (each recomputing its context), or
    /// streamed once through the key/value cache.
    pub context: ContextPolicy,
    /// Compute surprisal and entropy (default true). Without them a graph cut after the deepest
    /// requested layer, with no LM head, does the same work for the vectors
    /// ([`crate::lm::ensure_model`]); a head-less graph gives no surprisal whatever this says.
    pub surprisal: bool,
}

/// How each token gets its left context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum ContextPolicy {
    /// Overlapping windows of `window` positions; every token sees at least `min_context` tokens
    /// (its context recomputed inside its window).
    Windows,
    /// Streamed once through the key/value cache, which keeps BOS and the most recent tokens:
    /// every token sees at least `min_context` and fewer than `window` tokens, each computed once.
    #[default]
    Sliding,
    /// Streamed once, every token seeing all earlier ones up to the model's context length (then
    /// sliding, with the context length as the window).
    Full,
}

named_setting!(ContextPolicy, "context", { Windows => "windows", Sliding => "sliding", Full => "full" });

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
            context: ContextPolicy::Sliding,
            surprisal: true,
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
    if lm.manifest.architecture == "gpt2" && opts.context != ContextPolicy::Windows {
        // learned absolute positions are added to the residual stream, so a cached key keeps the
        // position it was computed at: a cache that drops tokens cannot move the rest down as the
        // RoPE models' caches do
        return Err(Error::Invalid(format!(
            "context \"{}\" streams through a key/value cache that drops old tokens, which GPT-2's learned \
             absolute positions do not allow; use context = \"windows\" (--context windows)",
            opts.context.as_str()
        )));
    }
    let bos = if lm.manifest.prepend_bos {
        lm.manifest.bos_token_id
    } else {
        None
    };
    let tokens = tokenize_story(&lm.tokenizer, story, &opts.separator)?;
    let mut acc = TokenSink::new(&tokens, layers.len(), lm.manifest.d_model, opts.pooling);
    let n_windows = match opts.context {
        ContextPolicy::Windows => run_windows(lm, story, &tokens, bos, &layers, opts, &mut acc)?,
        ContextPolicy::Sliding | ContextPolicy::Full => run_streamed(lm, story, &tokens, bos, &layers, opts, &mut acc)?,
    };
    let (surprisal_bits, entropy_bits, activations) = acc.finish();
    Ok(Extraction {
        tokens,
        surprisal_bits,
        entropy_bits,
        layers,
        activations,
        pooling: opts.pooling,
        n_windows,
    })
}

/// Per-token results gathered into per-word ones.
struct TokenSink<'a> {
    tokens: &'a TokenizedStory,
    pooling: Pooling,
    /// ln p(token | left context)
    logprob: Vec<f32>,
    /// entropy after the token, nats
    entropy: Vec<f32>,
    acts: Vec<Array2<f32>>,
}

impl<'a> TokenSink<'a> {
    fn new(tokens: &'a TokenizedStory, n_layers: usize, d: usize, pooling: Pooling) -> Self {
        let (n_tok, n_words) = (tokens.ids.len(), tokens.word_tokens.len());
        TokenSink {
            tokens,
            pooling,
            logprob: vec![f32::NAN; n_tok],
            entropy: vec![f32::NAN; n_tok],
            acts: (0..n_layers).map(|_| Array2::zeros((n_words, d))).collect(),
        }
    }

    /// Token `t`'s outputs: its next-token entropy, its own log-probability (None when nothing
    /// precedes it), and its vector in each kept layer.
    fn take<'h>(
        &mut self,
        t: usize,
        entropy: f32,
        logprob: Option<f32>,
        hidden: impl Fn(usize) -> ndarray::ArrayView1<'h, f32>,
    ) {
        let tokens = self.tokens;
        self.entropy[t] = entropy;
        if let Some(lp) = logprob {
            self.logprob[t] = lp;
        }
        // the words this token overlaps: its anchor word and any later word it runs into
        let n_words = tokens.word_tokens.len();
        let w0 = tokens.token_word[t];
        for w in (w0..n_words).take_while(|&w| tokens.word_tokens[w].start <= t) {
            let r = &tokens.word_tokens[w];
            let wanted = match self.pooling {
                Pooling::Last => t + 1 == r.end,
                Pooling::First => t == r.start,
                Pooling::Mean => true,
            };
            if !r.contains(&t) || !wanted {
                continue;
            }
            for (li, a) in self.acts.iter_mut().enumerate() {
                let mut dst = a.row_mut(w);
                dst += &hidden(li);
            }
        }
    }

    /// Surprisal (bits) per word, entropy (bits) after each word's last token, pooled vectors.
    fn finish(mut self) -> (Vec<Option<f32>>, Vec<f32>, Vec<Array2<f32>>) {
        let tokens = self.tokens;
        if self.pooling == Pooling::Mean {
            for a in self.acts.iter_mut() {
                for (w, mut row) in a.rows_mut().into_iter().enumerate() {
                    row /= tokens.word_tokens[w].len() as f32;
                }
            }
        }
        let ln2 = std::f32::consts::LN_2;
        let mut surprisal = vec![None; tokens.word_tokens.len()];
        for (t, &w) in tokens.token_word.iter().enumerate() {
            let lp = self.logprob[t];
            if lp.is_finite() {
                *surprisal[w].get_or_insert(0.0) += -lp / ln2;
            }
        }
        let entropy = tokens
            .word_tokens
            .iter()
            .map(|r| self.entropy[r.end - 1] / ln2)
            .collect();
        (surprisal, entropy, self.acts)
    }
}

/// Overlapping windows, batched: each window recomputes its left context. Returns the number of
/// windows.
fn run_windows(
    lm: &mut LanguageModel,
    story: &Story,
    tokens: &TokenizedStory,
    bos: Option<u32>,
    layers: &[usize],
    opts: &ExtractOptions,
    acc: &mut TokenSink<'_>,
) -> Result<usize> {
    let window = opts.window.min(lm.manifest.context_length);
    let span = window - bos.is_some() as usize;
    let plans = plan_windows(tokens.ids.len(), span, opts.min_context)?;
    let bar = progress_bar(opts.progress, plans.len() as u64, &story.id, "windows");
    let off = bos.is_some() as usize;
    let scored = opts.surprisal && lm.has_head();
    // a window needs next-token scores only from the position before its first own token (the
    // first window: from its start, later windows: past their shared context), and a batch from
    // its earliest window's; so the first window runs alone and the later ones skip the LM head
    // over their context (a graph without `score_from` scores every position). The last window,
    // when shorter than the others, also runs alone: in a batch it would be padded to their length
    let score_from = |p: &WindowPlan| (off + p.own.start - p.start).saturating_sub(1);
    let n = plans.len();
    let short_last = n > 1 && plans[n - 1].end - plans[n - 1].start < plans[0].end - plans[0].start;
    let middle = 1.min(n)..n - short_last as usize;
    let batches = plans[..middle.start]
        .chunks(1)
        .chain(plans[middle.clone()].chunks(opts.batch_size.max(1)))
        .chain(plans[middle.end..].chunks(1));
    for batch in batches {
        let windows: Vec<Vec<u32>> = batch
            .iter()
            .map(|p| {
                bos.into_iter()
                    .chain(tokens.ids[p.start..p.end].iter().copied())
                    .collect()
            })
            .collect();
        // each window's own tokens: their vectors, and with `scores` (next-token log-probability
        // and entropy per position) their probability and entropy
        let mut take = |hidden: &[ArrayView3<'_, f32>], scores: Option<(&Array2<f32>, &Array2<f32>)>| {
            for (bi, p) in batch.iter().enumerate() {
                for t in p.own.clone() {
                    let pos = off + t - p.start;
                    let (lp, entropy) = match scores {
                        Some((lp, ent)) => ((pos >= 1).then(|| lp[[bi, pos - 1]]), ent[[bi, pos]]),
                        None => (None, f32::NAN),
                    };
                    acc.take(t, entropy, lp, |li| hidden[li].slice(ndarray::s![bi, pos, ..]));
                }
            }
        };
        match scored {
            true => {
                let from = batch.iter().map(score_from).min().unwrap_or(0);
                lm.run_scored_from(&windows, layers, from, |out| {
                    take(&out.hidden, Some((&out.next_logprob, &out.next_entropy)))
                })?
            }
            false => lm.run_hidden_with(&windows, layers, |hidden| take(hidden, None))?,
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    Ok(plans.len())
}

/// The chunks a story is streamed in: `chunk` tokens per call (the first call also holds BOS),
/// and before each call the cache is cut to the attention sink (BOS) and the most recent tokens
/// so that cache + call fit in `window` positions. Returns (start, end, keep) per call: the
/// story tokens of the call and how many recent tokens the cache keeps before it (None: all).
pub fn plan_chunks(
    n_tokens: usize,
    window: usize,
    chunk: usize,
    sink: usize,
) -> Result<Vec<(usize, usize, Option<usize>)>> {
    if chunk == 0 || sink + chunk > window {
        return Err(Error::Invalid(format!(
            "a chunk of {chunk} tokens after {sink} sink token(s) does not fit a window of {window}"
        )));
    }
    let mut out = Vec::new();
    let (mut start, mut cached) = (0, 0); // story tokens in the cache
    while start < n_tokens {
        let end = (start + chunk).min(n_tokens);
        let len = end - start;
        let keep = (sink + cached + len > window).then(|| window - sink - len);
        out.push((start, end, keep));
        cached = keep.unwrap_or(cached) + len;
        start = end;
    }
    Ok(out)
}

/// Each token computed once: the story streamed through the key/value cache in chunks. Sliding:
/// the cache holds BOS and at most `window` − 1 positions in all, and a chunk is `window` − 1 −
/// `min_context` tokens (at most 256), so every token sees at least `min_context` tokens of left
/// context, as with windows, but the context tokens are not recomputed (they keep the context
/// they had). Full: the same with the model's context length as the window. Returns the number
/// of calls.
fn run_streamed(
    lm: &mut LanguageModel,
    story: &Story,
    tokens: &TokenizedStory,
    bos: Option<u32>,
    layers: &[usize],
    opts: &ExtractOptions,
    acc: &mut TokenSink<'_>,
) -> Result<usize> {
    let ctx = lm.manifest.context_length;
    let window = match opts.context {
        ContextPolicy::Full => ctx,
        _ => opts.window.min(ctx),
    };
    let sink = bos.is_some() as usize;
    if opts.min_context + 1 + sink >= window {
        return Err(Error::Invalid(format!(
            "min_context ({}) must be smaller than the tokens a window holds ({})",
            opts.min_context,
            window - sink
        )));
    }
    let chunk = (window - sink - opts.min_context).min(MAX_CHUNK);
    let calls = plan_chunks(tokens.ids.len(), window, chunk, sink)?;
    let mut cache = lm.empty_cache()?;
    let bar = progress_bar(opts.progress, calls.len() as u64, &story.id, "chunks");
    let mut carry: Option<Vec<f32>> = None; // log-probabilities after the previous call
    let scored = opts.surprisal && lm.has_head();
    for (i, &(start, end, keep)) in calls.iter().enumerate() {
        if let Some(k) = keep {
            cache.retain(sink, k);
        }
        let lead = if i == 0 { sink } else { 0 };
        let ids: Vec<u32> = (if i == 0 { bos } else { None })
            .into_iter()
            .chain(tokens.ids[start..end].iter().copied())
            .collect();
        carry = lm.run_cached_with(&ids, &mut cache, layers, |out| {
            for t in start..end {
                let pos = lead + t - start;
                let lp = if !scored {
                    None
                } else if pos >= 1 {
                    Some(out.next_logprob[pos - 1])
                } else {
                    carry.as_ref().map(|row| row[tokens.ids[t] as usize])
                };
                let entropy = if scored { out.next_entropy[pos] } else { f32::NAN };
                acc.take(t, entropy, lp, |li| out.hidden[li].row(pos));
            }
            out.last_logprobs.clone()
        })?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(calls.len())
}

/// Most tokens per cached call: bounds the [heads, chunk, cache] attention scores alive at once.
pub const MAX_CHUNK: usize = 256;

fn progress_bar(show: bool, len: u64, what: &str, unit: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{elapsed}} (eta {{eta}})"
        ))
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
    fn chunks_cover_every_token_once_and_cache_plus_call_fit_the_window() {
        for n in [1usize, 5, 95, 96, 300, 1000] {
            for sink in [0, 1] {
                let (window, min_context) = (128, 32);
                let chunk = window - sink - min_context;
                let calls = plan_chunks(n, window, chunk, sink).unwrap();
                let (mut next, mut cached) = (0, 0);
                for &(start, end, keep) in &calls {
                    assert_eq!(start, next);
                    assert!(end > start && end - start <= chunk);
                    if let Some(k) = keep {
                        assert!(k < cached && k >= min_context, "n {n}: keep {k} of {cached}");
                        cached = k;
                    }
                    // every token of the call sees the cached tokens (≥ min_context once the
                    // cache is cut) and the call's earlier ones; cache + call fit the window
                    assert!(sink + cached + (end - start) <= window);
                    assert!(cached == start || cached >= min_context);
                    cached += end - start;
                    next = end;
                }
                assert_eq!(next, n);
            }
        }
        assert!(plan_chunks(10, 8, 8, 1).is_err());
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
