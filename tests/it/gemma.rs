//! The multilingual model: Gemma 3 270M (Q4_K_M GGUF reassembled from its PyPI chunk wheels by
//! `make setup`), imported by cortexflow's own importer (Gemma 3 graph: sliding-window and global
//! layers with their RoPE bases, QK-norm, pre- and post-norms, GeGLU, √d embedding scale; the
//! SentencePiece vocabulary as a byte-fallback BPE). Greedy continuations of simple facts in
//! English, French and Chinese; the tokenizer round trip; Le Petit Prince run 1 in all three
//! languages through the word ↔ token mapping, every word keeping its tokens; the key/value cache
//! past the local layers' window equal to one pass.

use crate::support;

use cortexflow::lm::{self, extract, LanguageModel, RuntimeOptions};

fn gemma() -> LanguageModel {
    let dir = lm::ensure_gemma_model().expect("Gemma 3 270M imports (run `make setup` first)");
    LanguageModel::load(&dir, &RuntimeOptions::with_threads(2)).expect("Gemma loads")
}

#[test]
fn gemma_continues_simple_facts_in_english_french_and_chinese() {
    let mut m = gemma();
    assert_eq!(m.manifest.architecture, "gemma3");
    assert_eq!((m.manifest.n_layers, m.manifest.d_model), (18, 640));
    assert_eq!(m.manifest.vocab_size, 262_144);
    for (prompt, want) in [
        ("The capital of Italy is Rome. The capital of France is", "Paris"),
        ("The Eiffel Tower is located in the city of", "Paris"),
        (
            "La capitale de l'Italie est Rome. La capitale de la France est",
            "Paris",
        ),
        ("La tour Eiffel se trouve à", "Paris"),
        ("中国的首都是北京。法国的首都是", "巴黎"),
        ("法国的首都是哪个城市？答：", "巴黎"),
    ] {
        let out = m.greedy(prompt, 5).unwrap();
        println!("{prompt} → {out:?}");
        assert!(out.contains(want), "{prompt:?} continued as {out:?}");
    }
}

#[test]
fn gemma_tokenizer_round_trips_and_maps_le_petit_prince_words_in_three_languages() {
    let m = gemma();
    let tok = &m.tokenizer;
    for text in [
        "Lorsque j'avais six ans j'ai vu, une fois, une magnifique image.",
        "当我还只有六岁的时候，在一本描写原始森林的名叫《真实的故事》的书中",
        "Once when I was six years old I saw a magnificent picture",
        "  double  spaces\tand tabs 🙂",
    ] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "round trip of {text:?}");
    }
    // common words are single pieces (the merges rebuild SentencePiece's vocabulary)
    for w in [" Paris", " the", " France", "巴黎"] {
        let ids = tok.encode(w, false).unwrap().get_ids().to_vec();
        assert_eq!(ids.len(), 1, "{w:?} → {ids:?}");
    }
    for lang in ["en", "fr", "zh"] {
        let story = support::lpp_run(lang, 1);
        let t = extract::tokenize_story(tok, &story, extract::word_separator(lang)).unwrap();
        assert_eq!(t.word_tokens.len(), story.words.len(), "{lang}");
        assert!(
            t.word_tokens.iter().all(|r| !r.is_empty()),
            "{lang}: a word without tokens"
        );
        let per_word = t.ids.len() as f64 / story.words.len() as f64;
        println!(
            "gemma3 {lang} run 1: {} words, {} tokens, {per_word:.3} tokens/word",
            story.words.len(),
            t.ids.len()
        );
        assert!((0.8..2.5).contains(&per_word), "{lang}: {per_word}");
    }
}

#[test]
fn gemma_streamed_through_its_cache_equals_one_pass_past_its_sliding_window() {
    // more tokens than the 512-position window of Gemma's local layers, so the cached calls after
    // the first must mask the keys that have left a local layer's window
    let mut m = gemma();
    let lpp = support::lpp_run("en", 1);
    let story = cortexflow::stimulus::Story {
        words: lpp.words[..760].to_vec(),
        ..lpp
    };
    let opts = |context, window| lm::ExtractOptions {
        context,
        window,
        batch_size: 1,
        ..Default::default()
    };
    let one_pass = lm::extract_story(&mut m, &story, &opts(extract::ContextPolicy::Windows, 1024)).unwrap();
    assert_eq!(one_pass.n_windows, 1);
    let n_tok = one_pass.tokens.ids.len();
    assert!(n_tok > 512 + extract::MAX_CHUNK, "{n_tok} tokens");
    let cached = lm::extract_story(&mut m, &story, &opts(extract::ContextPolicy::Full, 512)).unwrap();
    assert!(cached.n_windows >= 3);
    for (li, l) in cached.layers.iter().enumerate() {
        let (a, b) = (&cached.activations[li], &one_pass.activations[li]);
        let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(d <= 1e-4, "layer {l}: cached vs one pass {d:.2e}");
    }
    for w in 0..story.words.len() {
        let (a, b) = (cached.surprisal_bits[w].unwrap(), one_pass.surprisal_bits[w].unwrap());
        assert!(
            (a - b).abs() <= 1e-3 * b.abs().max(1.0),
            "word {w}: surprisal {a} vs {b}"
        );
    }
}
