//! Builds a Hugging Face `tokenizer.json` from a GGUF's vocabulary, merges and pre-tokenizer name.
//!
//! Byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) are supported. The pre-tokenizer is
//! chosen from `tokenizer.ggml.pre` so that text splits exactly as in the original model: for
//! SmolLM2 (`smollm`) that is *digits split one by one*, then the GPT-2 byte-level regex. A widely
//! used converter drops the digit step, after which "   1" and "2024" tokenize differently from the
//! original; the tests check it is kept. Control and user-defined tokens become special added
//! tokens, so `<|im_start|>` is never split.

use serde_json::{json, Value as Json};

use super::gguf::{Gguf, Value};
use crate::{Error, Result};

/// Special token ids read from GGUF metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

pub fn special_ids(g: &Gguf) -> SpecialIds {
    let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
    SpecialIds {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
    }
}

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer of a GGUF `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> Result<Json> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "gpt-2" | "gpt2" | "default" => byte_level(true),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        other => {
            return Err(Error::Model(format!(
                "tokenizer pre-tokenizer `{other}` is not supported (supported: smollm, gpt2, llama-bpe); \
                 a wrong pre-tokenizer silently changes tokenization, so cortexflow refuses to guess"
            )))
        }
    })
}

/// The GGUF's pieces with llama.cpp's token type of each (1 = normal, 3 = control,
/// 4 = user-defined, 6 = byte; 1 when the GGUF has no types).
fn pieces(g: &Gguf) -> Result<Vec<(&str, u64)>> {
    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Model("metadata `tokenizer.ggml.tokens` is missing".into()))?;
    let types = g.get("tokenizer.ggml.token_type").and_then(Value::as_array);
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let s = t
                .as_str()
                .ok_or_else(|| Error::Model(format!("token {i} is not a string")))?;
            let ty = types.and_then(|ts| ts.get(i)).and_then(Value::as_u64).unwrap_or(1);
            Ok((s, ty))
        })
        .collect()
}

/// The vocabulary (piece → id) and the added tokens: control and user-defined pieces, never
/// split; control pieces are special, and user-defined ones too when `user_defined_special`.
fn vocab_and_added(pieces: &[(&str, u64)], user_defined_special: bool) -> (serde_json::Map<String, Json>, Vec<Json>) {
    let mut vocab = serde_json::Map::with_capacity(pieces.len());
    let mut added = Vec::new();
    for (i, &(s, ty)) in pieces.iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
        if ty == 3 || ty == 4 {
            added.push(json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3 || user_defined_special}));
        }
    }
    (vocab, added)
}

/// Returns the text of a tokenizer.json equivalent to the GGUF's tokenizer.
pub fn from_gguf(g: &Gguf) -> Result<String> {
    let model = g.req_str("tokenizer.ggml.model")?;
    if model == "llama" {
        return sentencepiece_bpe(g);
    }
    if model != "gpt2" {
        return Err(Error::Model(format!(
            "tokenizer model `{model}` is not supported yet (supported: gpt2 byte-level BPE, llama SentencePiece BPE)"
        )));
    }
    let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    let pre_tok = pre_tokenizer(pre)?;
    let merges = g
        .get("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Model("metadata `tokenizer.ggml.merges` is missing".into()))?;

    let pieces = pieces(g)?;
    let (vocab, added) = vocab_and_added(&pieces, true);
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let s = m
            .as_str()
            .ok_or_else(|| Error::Model(format!("merge {i} is not a string")))?;
        let (a, b) = s
            .split_once(' ')
            .ok_or_else(|| Error::Model(format!("merge {i} `{s}` is not two tokens separated by a space")))?;
        pairs.push(json!([a, b]));
    }
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tok,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": pairs}
    });
    Ok(serde_json::to_string(&tok).expect("json"))
}

/// A SentencePiece BPE vocabulary (`tokenizer.ggml.model = "llama"`: pieces with scores, `▁` for
/// a space, `<0xXX>` byte pieces), as Hugging Face converts it: a BPE model with byte fallback
/// whose merges are every split `a + b` of a piece into two pieces, ranked by the merged piece's
/// score (highest first: SentencePiece merges the best-scoring adjacent pair first), spaces
/// replaced by `▁` before the model, no pre-tokenizer and no prefix space (Gemma 3 sets
/// `add_space_prefix = false`; a GGUF that asks for one is refused rather than guessed).
fn sentencepiece_bpe(g: &Gguf) -> Result<String> {
    if g.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool) == Some(true) {
        return Err(Error::Model(
            "SentencePiece tokenizer with add_space_prefix = true is not supported yet".into(),
        ));
    }
    let pieces = pieces(g)?;
    let scores = g
        .get("tokenizer.ggml.scores")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Model("metadata `tokenizer.ggml.scores` is missing".into()))?;
    if scores.len() != pieces.len() {
        return Err(Error::Model(format!(
            "{} tokens but {} scores",
            pieces.len(),
            scores.len()
        )));
    }
    let unk = g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(Value::as_u64)
        .and_then(|i| pieces.get(i as usize))
        .map_or("<unk>", |p| p.0);
    let (vocab, added) = vocab_and_added(&pieces, false);
    let mut ids: std::collections::HashMap<&str, usize> = std::collections::HashMap::with_capacity(pieces.len());
    let mut normal: Vec<(usize, &str, f64)> = Vec::new();
    for (i, &(s, ty)) in pieces.iter().enumerate() {
        if ty == 1 {
            ids.entry(s).or_insert(i);
            normal.push((i, s, scores[i].as_f64().unwrap_or(0.0)));
        }
    }
    // merges: every split of a normal piece into two normal pieces
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new(); // (score, merged id, left id, right id)
    for &(id, s, score) in &normal {
        for (k, _) in s.char_indices().skip(1) {
            if let (Some(&a), Some(&b)) = (ids.get(&s[..k]), ids.get(&s[k..])) {
                merges.push((score, id, a, b));
            }
        }
    }
    // best score first; ties by the merged piece's id, then by the left piece's
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let name = |i: usize| pieces[i].0;
    let pairs: Vec<Json> = merges.iter().map(|m| json!([name(m.2), name(m.3)])).collect();
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": pairs}
    });
    Ok(serde_json::to_string(&tok).expect("json"))
}
