//! LM-stage throughput: cortexflow against Python onnxruntime on the same `model.onnx`, the same
//! intra-op threads, the same batches and the same requested outputs (every hidden state plus the
//! next-token log-probability and entropy), measured in one run and printed as ratios.
//!
//! Cases: fixed shapes 1×512 and 8×128 (tokens from the Alice story), and the full
//! `extract_story` (tokenization, windows, pooling, surprisal included) against Python running the
//! overlapping windows, on Alice and on run 1 of Le Petit Prince in English, French and Chinese
//! (words, tokens per word and throughput per language), under each context policy: `windows`
//! (the very windows Python runs), `sliding` and `full` (each token computed once through the
//! key/value cache). The Python peer runs as a server so that repetitions interleave (each
//! repetition runs every case on both sides before the next); figures are medians over
//! repetitions. Peak RSS (VmHWM) of both processes is reported.
//!
//! Run: `make bench` (or `cargo bench --bench extract_throughput`); `CORTEXFLOW_BENCH_THREADS`
//! sets the threads (default 2), `CORTEXFLOW_BENCH_REPS` the repetitions (default 3), and
//! `CORTEXFLOW_BENCH_MODEL=gemma3-270m` runs the multilingual model instead of SmolLM2, and
//! `CORTEXFLOW_BENCH_BATCH` sets the windows per batch of the whole-story cases (default 4; use 1
//! for Gemma, whose 262,144-word vocabulary makes each window's logits 0.5 GB).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use cortexflow::lm::{self, extract, ContextPolicy, ExtractOptions, LanguageModel, RuntimeOptions};
use cortexflow::stimulus::{self, ReadOptions};
use serde_json::json;

#[path = "support/children.rs"]
mod children;
#[path = "support/figures.rs"]
mod figures;
use children::{python, self_peak_mib};
use figures::median;

fn main() -> anyhow::Result<()> {
    let threads: usize = std::env::var("CORTEXFLOW_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let reps: usize = std::env::var("CORTEXFLOW_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let batch_size: usize = std::env::var("CORTEXFLOW_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ExtractOptions::default().batch_size);
    let dir = match std::env::var("CORTEXFLOW_BENCH_MODEL") {
        Ok(m) if m == cortexflow::paths::GEMMA_MODEL => lm::ensure_gemma_model()?,
        _ => lm::ensure_default_model()?,
    };
    let mut model = LanguageModel::load(&dir, &RuntimeOptions::with_threads(threads))?;
    let m = model.manifest.clone();
    let bos = m.bos_token_id.expect("default model has a BOS");
    let data = cortexflow::paths::data_root().expect("../shared/data or CORTEXFLOW_DATA");
    let alice = data.join("alice_brennan2016/alice_stim_shared/DownTheRabbitHoleFinal_exp120_pad_1.TextGrid");
    let story = stimulus::read_story(&alice, None, &ReadOptions::default())?;
    let toks = extract::tokenize_story(&model.tokenizer, &story, " ")?;
    // (case name, story) for the whole-story cases
    let lpp = |path: &str, language: &str, column: Option<&str>| -> anyhow::Result<stimulus::Story> {
        Ok(stimulus::read_story(
            data.join(path),
            None,
            &ReadOptions {
                language: language.into(),
                skip_empty_words: true,
                run: Some(stimulus::RunSelect {
                    run: 1,
                    column: column.map(String::from),
                }),
                ..Default::default()
            },
        )?)
    };
    let stories = vec![
        ("alice_windows", story.clone()),
        ("lpp_en_run1", lpp("lpp_en_ivanova/lpp_en_regressors.csv", "en", None)?),
        (
            "lpp_fr_run1",
            lpp("lpp_fr_neurospin/lppFR_word_information.csv", "fr", Some("section"))?,
        ),
        (
            "lpp_zh_run1",
            lpp(
                "lpp_en_cn_dgd45125/lpp_CN_word_surprisal_gpt2.csv",
                "zh",
                Some("section"),
            )?,
        ),
    ];
    let layers: Vec<usize> = (0..=m.n_layers).collect();

    let window = |start: usize, len: usize| -> Vec<u32> {
        std::iter::once(bos)
            .chain(toks.ids[start..start + len - 1].iter().copied())
            .collect()
    };
    let mut cases: BTreeMap<&str, Vec<Vec<Vec<u32>>>> = BTreeMap::new();
    cases.insert("1x512", vec![vec![window(0, 512)]]);
    cases.insert("8x128", vec![(0..8).map(|i| window(i * 127, 128)).collect()]);
    // every story's extraction windows, exactly as extract_story runs them
    let mut n_tokens_of = BTreeMap::new();
    for (name, st) in &stories {
        let sep = extract::word_separator(&st.language);
        let ids = extract::tokenize_story(&model.tokenizer, st, sep)?.ids;
        let opts = ExtractOptions {
            separator: sep.into(),
            batch_size,
            context: ContextPolicy::Windows,
            ..Default::default()
        };
        let plans = extract::plan_windows(ids.len(), opts.window - 1, opts.min_context)?;
        let batches: Vec<Vec<Vec<u32>>> = plans
            .chunks(opts.batch_size)
            .map(|c| {
                c.iter()
                    .map(|p| {
                        std::iter::once(bos)
                            .chain(ids[p.start..p.end].iter().copied())
                            .collect()
                    })
                    .collect()
            })
            .collect();
        n_tokens_of.insert(*name, ids.len());
        cases.insert(name, batches);
    }

    // ---- the Python peer (onnxruntime: same model, threads, batches and outputs) as a server,
    // so the repetitions interleave: each repetition runs every case on cortexflow's side and then
    // the same case on Python's, and the figures are medians over repetitions
    let mut outputs: Vec<String> = m.hidden_states.clone();
    outputs.push(m.next_token_logprob.clone().unwrap());
    outputs.push(m.next_token_entropy.clone().unwrap());
    let spec: serde_json::Map<String, serde_json::Value> = cases
        .iter()
        .map(|(k, b)| (k.to_string(), json!({"batches": b, "outputs": outputs, "reps": 1})))
        .collect();
    let tmp = tempfile::tempdir()?;
    let spec_path = tmp.path().join("cases.json");
    std::fs::write(&spec_path, serde_json::to_string(&spec)?)?;
    let mut peer = std::process::Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_ort.py"))
        .arg(dir.join("model.onnx"))
        .arg(&spec_path)
        .args([
            "--threads",
            &threads.to_string(),
            "--pad-id",
            &bos.to_string(),
            "--serve",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut peer_in = peer.stdin.take().expect("piped");
    let mut peer_out = std::io::BufReader::new(peer.stdout.take().expect("piped"));
    let mut ask = |name: &str| -> anyhow::Result<f64> {
        use std::io::{BufRead, Write};
        writeln!(peer_in, "{name}")?;
        peer_in.flush()?;
        let mut line = String::new();
        peer_out.read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("python peer answered `{}` to {name}: {e}", line.trim()))?;
        Ok(v["seconds"].as_f64().expect("seconds"))
    };

    let policies = [ContextPolicy::Windows, ContextPolicy::Sliding, ContextPolicy::Full];
    let mut ours: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut py: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut extract_s: BTreeMap<(&str, ContextPolicy), Vec<f64>> = BTreeMap::new();
    for batches in cases.values() {
        model.run_with(&batches[0], &layers, |_| ())?; // warm-up, as on the Python side
    }
    for rep in 0..reps {
        eprintln!("extract_throughput: repetition {} of {reps}", rep + 1);
        for (name, batches) in &cases {
            let t0 = Instant::now();
            for b in batches {
                // outputs stay in ONNX Runtime's buffers, as numpy arrays do on the Python side
                model.run_with(b, &layers, |v| std::hint::black_box(v.hidden.len()))?;
            }
            ours.entry(name).or_default().push(t0.elapsed().as_secs_f64());
            py.entry(name).or_default().push(ask(name)?);
        }
        // whole stories under each context policy
        for (name, st) in &stories {
            for context in policies {
                let opts = ExtractOptions {
                    separator: extract::word_separator(&st.language).into(),
                    batch_size,
                    context,
                    ..Default::default()
                };
                let t0 = Instant::now();
                std::hint::black_box(lm::extract_story(&mut model, st, &opts)?);
                extract_s
                    .entry((*name, context))
                    .or_default()
                    .push(t0.elapsed().as_secs_f64());
            }
        }
    }
    drop(ask);
    drop(peer_in);
    let mut last = String::new();
    std::io::BufRead::read_line(&mut peer_out, &mut last)?;
    let peer_status = peer.wait()?;
    anyhow::ensure!(peer_status.success(), "python peer failed ({peer_status})");
    let py_rss = serde_json::from_str::<serde_json::Value>(&last)?["peak_rss_mib"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let our_rss = self_peak_mib();

    println!(
        "LM stage throughput, {threads} threads, medians of {reps} interleaved repetitions, model {}",
        dir.display()
    );
    println!(
        "{:<16} {:>14} {:>14} {:>8}",
        "case", "cortexflow t/s", "python t/s", "ratio"
    );
    for (name, batches) in &cases {
        let n_tokens: usize = batches.iter().flatten().map(Vec::len).sum();
        let (o, p) = (median(ours[name].iter().copied()), median(py[name].iter().copied()));
        println!(
            "{name:<16} {:>14.1} {:>14.1} {:>8.3}",
            n_tokens as f64 / o,
            n_tokens as f64 / p,
            p / o
        );
    }
    println!(
        "\nwhole extract_story per story: median seconds, and ratio = python running the overlapping windows \
         (the same windows as `windows`) / cortexflow; sliding and full compute each token once"
    );
    println!(
        "{:<14} {:>6} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "story",
        "words",
        "tokens",
        "tok/wd",
        "python s",
        "windows",
        "sliding",
        "full",
        "r_win",
        "r_slide",
        "r_full",
        "slide t/s"
    );
    for (name, st) in &stories {
        let (n_words, n_tok) = (st.words.len(), n_tokens_of[name]);
        let py_s = median(py[name].iter().copied());
        let t = policies.map(|c| median(extract_s[&(*name, c)].iter().copied()));
        println!(
            "{name:<14} {n_words:>6} {n_tok:>7} {:>7.3} {py_s:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.3} {:>8.3} {:>8.3} {:>10.1}",
            n_tok as f64 / n_words as f64,
            t[0],
            t[1],
            t[2],
            py_s / t[0],
            py_s / t[1],
            py_s / t[2],
            n_tok as f64 / t[1]
        );
    }
    println!("peak RSS (VmHWM): cortexflow {our_rss:.0} MiB, python {py_rss:.0} MiB");
    Ok(())
}
