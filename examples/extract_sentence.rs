//! The LM stage on one sentence: per-word surprisal, entropy and the norm of a middle layer.
//!
//! Run: `cargo run --example extract_sentence -- "The cat sat on the mat."` (after `make setup`).

use cortexflow::lm::{self, ExtractOptions, LanguageModel, RuntimeOptions};
use cortexflow::stimulus::{Story, Word};

fn main() -> anyhow::Result<()> {
    let text = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Alice was beginning to get very tired.".into());
    let story = Story {
        id: "sentence".into(),
        language: "en".into(),
        words: text
            .split_whitespace()
            .map(|w| Word {
                text: w.into(),
                onset_s: None,
                offset_s: None,
            })
            .collect(),
    };
    let mut model = LanguageModel::load(&lm::ensure_default_model()?, &RuntimeOptions::default())?;
    let layer = model.n_layers() / 2;
    let ex = lm::extract_story(
        &mut model,
        &story,
        &ExtractOptions {
            layers: vec![layer],
            ..Default::default()
        },
    )?;
    println!(
        "{:<16} {:>10} {:>10} {:>12}",
        "word",
        "surprisal",
        "entropy",
        format!("‖h{layer}‖")
    );
    for (i, w) in story.words.iter().enumerate() {
        let norm = ex.activations[0].row(i).iter().map(|v| v * v).sum::<f32>().sqrt();
        let s = ex.surprisal_bits[i]
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into());
        println!("{:<16} {:>10} {:>10.2} {:>12.2}", w.text, s, ex.entropy_bits[i], norm);
    }
    Ok(())
}
