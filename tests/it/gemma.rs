//! The multilingual model: Gemma 3 270M (Q4_K_M GGUF reassembled from its PyPI chunk wheels by
//! `make setup`), imported by cortexflow's own importer (Gemma 3 graph: sliding-window and global
//! layers with their RoPE bases, QK-norm, pre- and post-norms, GeGLU, √d embedding scale; the
//! SentencePiece vocabulary as a byte-fallback BPE). Greedy continuations of simple facts in
//! English, French and Chinese; the tokenizer round trip; Le Petit Prince run 1 in all three
//! languages through the word ↔ token mapping, every word keeping its tokens.

use crate::support;

use cortexflow::lm::{self, extract, LanguageModel, RuntimeOptions};

fn gemma() -> LanguageModel {
    let dir = lm::ensure_gemma_model().expect("Gemma 3 270M imports (run `make setup` first)");
    LanguageModel::load(&dir, &RuntimeOptions { threads: 2 }).expect("Gemma loads")
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
