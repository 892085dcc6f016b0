//! Story files → words with onsets: TextGrid (long, short, UTF-16), word tables (TSV, CSV),
//! plain text, the error messages, and the real Alice TextGrid (Brennan et al. 2016).

use std::path::{Path, PathBuf};

use cortexflow::stimulus::{read_story, ReadOptions, StimulusFormat, Story, Word};
use cortexflow::Error;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stimulus")
        .join(name)
}

/// Root of the shared data: `$CORTEXFLOW_DATA`, else `../shared/data` next to the crate.
fn data_root() -> PathBuf {
    let root = match std::env::var_os("CORTEXFLOW_DATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"),
    };
    assert!(
        root.is_dir(),
        "data root {} does not exist: set CORTEXFLOW_DATA to the directory holding \
         alice_brennan2016/ (default: ../shared/data relative to the crate)",
        root.display()
    );
    root
}

fn read(name: &str) -> Story {
    read_story(fixture(name), None, &ReadOptions::default()).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn read_err(name: &str) -> Error {
    match read_story(fixture(name), None, &ReadOptions::default()) {
        Ok(s) => panic!("{name}: expected an error, got {} words", s.words.len()),
        Err(e) => e,
    }
}

fn texts(story: &Story) -> Vec<&str> {
    story.words.iter().map(|w| w.text.as_str()).collect()
}

fn onsets(story: &Story) -> Vec<Option<f64>> {
    story.words.iter().map(|w| w.onset_s).collect()
}

fn w(text: &str, onset_s: f64, offset_s: f64) -> Word {
    Word {
        text: text.to_string(),
        onset_s: Some(onset_s),
        offset_s: Some(offset_s),
    }
}

// ---------------------------------------------------------------- TextGrid

#[test]
fn long_textgrid_picks_word_tier_and_skips_silences() {
    let s = read("long.TextGrid");
    assert_eq!(s.id, "long");
    assert_eq!(s.language, "en");
    // "sp", "sil" and the empty label are skipped; `""very""` is unescaped; "tired " is trimmed.
    assert_eq!(
        s.words,
        vec![
            w("Alice", 0.25, 0.61),
            w("was", 0.61, 0.83),
            w("beginning", 0.83, 1.3),
            w("to", 1.41, 1.5),
            w("get", 1.5, 1.71),
            w("\"very\"", 2.0, 2.43),
            w("tired", 2.43, 2.9),
        ]
    );
}

#[test]
fn long_textgrid_explicit_tier_and_custom_skip_labels() {
    let opts = ReadOptions {
        tier: Some("phones".into()),
        ..Default::default()
    };
    let s = read_story(fixture("long.TextGrid"), None, &opts).unwrap();
    assert_eq!(texts(&s), ["AE1", "L IH1 S"]);

    let opts = ReadOptions {
        skip_labels: vec![],
        story_id: Some("alice".into()),
        ..Default::default()
    };
    let s = read_story(fixture("long.TextGrid"), Some(StimulusFormat::TextGrid), &opts).unwrap();
    assert_eq!(s.id, "alice");
    // Only the empty label is still skipped.
    assert_eq!(
        texts(&s),
        [
            "sp",
            "Alice",
            "was",
            "beginning",
            "to",
            "get",
            "sil",
            "\"very\"",
            "tired",
            "sp"
        ]
    );

    let opts = ReadOptions {
        tier: Some("events".into()),
        ..Default::default()
    };
    let err = read_story(fixture("long.TextGrid"), None, &opts).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    let m = err.to_string();
    assert!(
        m.contains("`events`") && m.contains("TextTier") && m.contains("long.TextGrid"),
        "{m}"
    );

    let opts = ReadOptions {
        tier: Some("syllable".into()),
        ..Default::default()
    };
    let m = read_story(fixture("long.TextGrid"), None, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("no tier named `syllable`")
            && m.contains("`phones` (IntervalTier), `word` (IntervalTier), `events` (TextTier)"),
        "{m}"
    );
}

#[test]
fn short_textgrid_crlf_with_point_tier() {
    let s = read("short.TextGrid");
    // The only IntervalTier ("lexical") is the word tier; the TextTier is ignored.
    assert_eq!(
        s.words,
        vec![
            w("Down", 0.5, 0.9),
            w("the", 0.9, 1.2),
            w("Rabbit-Hole", 1.2, 1.8),
            w("said \"hi\"", 2.2, 2.6)
        ]
    );
}

#[test]
fn utf16_textgrid() {
    let bytes = std::fs::read(fixture("utf16.TextGrid")).unwrap();
    assert_eq!(
        &bytes[..2],
        &[0xFF, 0xFE],
        "fixture should be UTF-16 LE with a byte-order mark"
    );
    let s = read("utf16.TextGrid");
    assert_eq!(texts(&s), ["Café", "naïve", "Straße", "爱丽丝"]);
    assert_eq!(onsets(&s), [Some(0.4), Some(0.9), Some(1.3), Some(1.9)]);
}

#[test]
fn utf16_big_endian_short_textgrid_from_tempfile() {
    let text = "File type = \"ooTextFile\"\nObject class = \"TextGrid\"\n\n0\n1\n<exists>\n1\n\
                \"IntervalTier\"\n\"words\"\n0\n1\n2\n0\n0.5\n\"Ça\"\n0.5\n1\n\"va\"\n";
    let mut bytes = vec![0xFE, 0xFF];
    for u in text.encode_utf16() {
        bytes.extend_from_slice(&u.to_be_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("be.TextGrid");
    std::fs::write(&path, bytes).unwrap();
    let s = read_story(&path, None, &ReadOptions::default()).unwrap();
    assert_eq!(s.words, vec![w("Ça", 0.0, 0.5), w("va", 0.5, 1.0)]);
}

#[test]
fn long_and_short_formats_agree() {
    // Convert the long fixture to the short format by keeping only the values.
    let long = std::fs::read_to_string(fixture("long.TextGrid")).unwrap();
    let mut short = String::new();
    for (i, line) in long.lines().enumerate() {
        let line = line.trim();
        if i < 2 {
            short.push_str(line);
        } else if let Some((_, v)) = line.split_once(" = ") {
            short.push_str(v.trim());
        } else if let Some(v) = line.strip_prefix("tiers? ") {
            short.push_str(v.trim());
        } else {
            continue; // `item [1]:` headers and blank lines
        }
        short.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.TextGrid");
    std::fs::write(&path, &short).unwrap();
    let from_short = read_story(&path, None, &ReadOptions::default()).unwrap();
    assert_eq!(from_short, read("long.TextGrid"));
}

#[test]
fn malformed_textgrid_names_line_and_expectation() {
    let err = read_err("malformed.TextGrid");
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    let m = err.to_string();
    assert!(m.contains("malformed.TextGrid"), "{m}");
    assert!(
        m.contains("line 43: expected `xmax = <number>`, found `xmax = 0.8x3`"),
        "{m}"
    );
    assert!(m.contains("interval 3 of tier 2 `word`"), "{m}");
}

#[test]
fn textgrid_with_only_silences_is_an_empty_story() {
    let err = read_err("silent.TextGrid");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    let m = err.to_string();
    assert!(m.contains("silent.TextGrid") && m.contains("no words"), "{m}");
}

// ---------------------------------------------------------------- word tables

#[test]
fn tsv_table_with_quoted_fields() {
    let s = read("words.tsv");
    assert_eq!(s.id, "words");
    assert_eq!(
        s.words,
        vec![
            w("Alice", 0.25, 0.61),
            w("was", 0.61, 0.83),
            w("\"very\"", 0.83, 1.3),
            // "sp" skipped; quoted "tired of" is one word
            w("tired of", 1.41, 1.7),
            w("sitting", 1.7, 1.9),
            // the empty row is skipped; equal onsets are allowed
            w("by", 1.9, 2.0),
            w("her", 1.9, 2.1),
        ]
    );
}

#[test]
fn csv_table_crlf_quotes_multiline_and_alternative_column_names() {
    let s = read("words.csv");
    // token/start/end columns; a delimiter inside quotes; doubled quotes; a quoted note spanning
    // two lines; a fully empty row; equal onsets.
    assert_eq!(
        s.words,
        vec![
            w("Alice", 0.25, 0.61),
            w("was, said she", 0.61, 0.83),
            w("\"very\"", 0.83, 1.3),
            w("tired", 1.3, 1.3),
            w("Hello", 1.3, 1.9),
        ]
    );
}

#[test]
fn csv_explicit_columns() {
    let opts = ReadOptions {
        word_column: Some("note".into()),
        onset_column: Some("end".into()),
        offset_column: Some("end".into()),
        ..Default::default()
    };
    // "note" has empty cells → error naming row and column.
    let m = read_story(fixture("words.csv"), None, &opts).unwrap_err().to_string();
    assert!(m.contains("row 2, column `note`") && m.contains("empty"), "{m}");

    let opts = ReadOptions {
        word_column: Some("story".into()),
        onset_column: Some("missing".into()),
        ..Default::default()
    };
    let m = read_story(fixture("words.csv"), None, &opts).unwrap_err().to_string();
    assert!(
        m.contains("`missing`") && m.contains("`story`, `token`, `start`, `end`, `note`"),
        "{m}"
    );
}

#[test]
fn table_without_onset_column_keeps_order_only() {
    let s = read("onsetless.tsv");
    assert_eq!(texts(&s), ["Alice", "was", "beginning,"]);
    assert!(s.words.iter().all(|w| w.onset_s.is_none() && w.offset_s.is_none()));
}

#[test]
fn table_with_unknown_extension_sniffs_delimiter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("story.words");
    std::fs::write(&path, "word,onset_s\n\"a,b\",1\nc,2\n").unwrap();
    // No format guess for `.words`:
    let m = read_story(&path, None, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(m.contains(".words"), "{m}");
    let format: StimulusFormat = "table".parse().unwrap();
    let s = read_story(&path, Some(format), &ReadOptions::default()).unwrap();
    assert_eq!(texts(&s), ["a,b", "c"]);
    assert_eq!(onsets(&s), [Some(1.0), Some(2.0)]);
}

#[test]
fn non_numeric_onset_names_row_and_column() {
    let err = read_err("bad_onset.tsv");
    assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    let m = err.to_string();
    assert!(m.contains("bad_onset.tsv"), "{m}");
    assert!(
        m.contains("row 12, column `onset_s`: expected a number, found `abc`"),
        "{m}"
    );
}

#[test]
fn decreasing_onsets_name_row() {
    let m = read_err("decreasing.csv").to_string();
    assert!(
        m.contains("row 4, column `onset`") && m.contains("nondecreasing"),
        "{m}"
    );
    assert!(m.contains("0.5") && m.contains("0.61") && m.contains("row 3"), "{m}");
}

#[test]
fn empty_word_cell_names_row_and_column() {
    let m = read_err("empty_word.csv").to_string();
    assert!(m.contains("row 3, column `word`") && m.contains("empty"), "{m}");
}

// ---------------------------------------------------------------- plain text

#[test]
fn plain_text_tokens_keep_punctuation() {
    let s = read("story.txt");
    assert_eq!(s.words.len(), 30);
    assert_eq!(&texts(&s)[..3], ["Alice", "was", "beginning"]);
    assert!(texts(&s).contains(&"bank,") && texts(&s).contains(&"do:"));
    assert!(s.words.iter().all(|w| w.onset_s.is_none() && w.offset_s.is_none()));
}

/// Chinese plain text is segmented by jieba, never split on whitespace: the Chinese LPP
/// annotation's words of run 1, joined into one text without separators, come back as words
/// that cover the same characters, most of them exactly the annotation's words.
#[test]
fn chinese_plain_text_is_segmented_not_split_on_whitespace() {
    let opts = ReadOptions {
        language: "zh".into(),
        ..Default::default()
    };
    // A segmented zh word table keeps its own words.
    let s = read_story(fixture("onsetless.tsv"), None, &opts).unwrap();
    assert_eq!(s.language, "zh");
    let table = read_story(
        data_root().join("lpp_en_cn_dgd45125/lpp_CN_word_surprisal_gpt2.csv"),
        None,
        &ReadOptions {
            language: "zh".into(),
            run: Some(cortexflow::stimulus::RunSelect {
                run: 1,
                column: Some("section".into()),
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let text: String = table.words.iter().map(|w| w.text.as_str()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("lpp-zh-run1.txt");
    std::fs::write(&p, &text).unwrap();
    let seg = read_story(&p, None, &opts).unwrap();
    let strip = |s: &str| s.chars().filter(|c| c.is_alphanumeric()).collect::<String>();
    assert_eq!(
        strip(&seg.words.iter().map(|w| w.text.as_str()).collect::<String>()),
        strip(&text),
        "the same characters in the same order"
    );
    let annotated: std::collections::HashSet<String> = table.words.iter().map(|w| strip(&w.text)).collect();
    let same = seg.words.iter().filter(|w| annotated.contains(&strip(&w.text))).count();
    let share = same as f64 / seg.words.len() as f64;
    println!(
        "jieba: {} words for the annotation's {}; {share:.3} of them are annotation words",
        seg.words.len(),
        table.words.len()
    );
    assert!(share > 0.85, "{share}");
    let ratio = seg.words.len() as f64 / table.words.len() as f64;
    assert!((0.7..1.3).contains(&ratio), "{ratio}");
}

#[test]
fn empty_plain_text_is_an_empty_story() {
    let err = read_err("empty.txt");
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("empty.txt"), "{err}");
}

// ---------------------------------------------------------------- files

#[test]
fn missing_file_is_io_error_with_path() {
    let path = fixture("does_not_exist.TextGrid");
    let err = read_story(&path, None, &ReadOptions::default()).unwrap_err();
    match &err {
        Error::Io { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
    assert!(err.to_string().contains("does_not_exist.TextGrid"), "{err}");
}

// ---------------------------------------------------------------- real data

/// One interval as scanned from the file text, independently of the library's parser.
struct ScannedInterval {
    xmin: f64,
    xmax: f64,
    label: String,
}

/// Line scan of a long-format single-tier TextGrid: after each `intervals [n]:` line, the next
/// `xmin = `, `xmax = ` and `text = "..."` lines belong to that interval.
fn scan_intervals(text: &str) -> Vec<ScannedInterval> {
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if !(line.starts_with("intervals [") && line.ends_with(':')) {
            continue;
        }
        let mut value = |key: &str| -> String {
            let l = lines.next().expect("interval cut short");
            l.strip_prefix(key)
                .unwrap_or_else(|| panic!("expected `{key}`, got `{l}`"))
                .trim()
                .to_string()
        };
        let xmin = value("xmin = ").parse().unwrap();
        let xmax = value("xmax = ").parse().unwrap();
        let raw = value("text = ");
        let label = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .unwrap()
            .replace("\"\"", "\"");
        out.push(ScannedInterval { xmin, xmax, label });
    }
    out
}

#[test]
fn alice_textgrid_real_data() {
    let path = data_root().join("alice_brennan2016/alice_stim_shared/DownTheRabbitHoleFinal_exp120_pad_1.TextGrid");
    assert!(path.is_file(), "missing {}", path.display());
    let story = read_story(&path, None, &ReadOptions::default()).unwrap();
    assert_eq!(story.id, "DownTheRabbitHoleFinal_exp120_pad_1");

    let text = std::fs::read_to_string(&path).unwrap();
    let intervals = scan_intervals(&text);
    assert_eq!(intervals.len(), 2423);
    assert!(intervals.iter().any(|iv| iv.label == "sp"));
    let expected: Vec<&ScannedInterval> = intervals
        .iter()
        .filter(|iv| !matches!(iv.label.trim(), "sp" | ""))
        .collect();
    assert_eq!(story.words.len(), expected.len());
    assert_eq!(expected.len(), 2423 - 290 - 6, "2423 intervals, 290 `sp`, 6 empty");

    assert_eq!(story.words[0].text, "Alice");
    assert_eq!(story.words[0].onset_s, Some(20.05891632653599));

    for (i, (word, iv)) in story.words.iter().zip(&expected).enumerate() {
        assert_eq!(word.text, iv.label.trim(), "word {i}");
        // Bit-exact: the onset is the file's xmin, parsed once, never recomputed.
        assert_eq!(
            word.onset_s.map(f64::to_bits),
            Some(iv.xmin.to_bits()),
            "onset of word {i} `{}`",
            word.text
        );
        assert_eq!(
            word.offset_s.map(f64::to_bits),
            Some(iv.xmax.to_bits()),
            "offset of word {i} `{}`",
            word.text
        );
    }
}

/// Le Petit Prince tables hold nine runs: by a run column (French, Chinese) or, in the English
/// table, only by the onsets restarting at each run. Every row lands in exactly one run, in
/// order, and a run that does not exist is an error that lists the runs.
#[test]
fn lpp_word_tables_split_into_their_nine_runs() {
    let read = |path: &str, lang: &str, run: usize, col: Option<&str>| {
        let opts = ReadOptions {
            language: lang.into(),
            skip_empty_words: true,
            run: Some(cortexflow::stimulus::RunSelect {
                run,
                column: col.map(String::from),
            }),
            ..Default::default()
        };
        read_story(data_root().join(path), None, &opts)
    };
    for (path, lang, col, rows) in [
        // the English table has 31 empty word cells (second halves of split contractions)
        ("lpp_en_ivanova/lpp_en_regressors.csv", "en", None, 15376 - 31),
        // and the French one 135 (du = de + [le], aux = à + [les])
        (
            "lpp_fr_neurospin/lppFR_word_information.csv",
            "fr",
            Some("section"),
            15391 - 135,
        ),
        (
            "lpp_en_cn_dgd45125/lpp_CN_word_surprisal_gpt2.csv",
            "zh",
            Some("section"),
            16009,
        ),
    ] {
        let runs: Vec<Story> = (1..=9).map(|r| read(path, lang, r, col).unwrap()).collect();
        let total: usize = runs.iter().map(|s| s.words.len()).sum();
        assert_eq!(total, rows, "{path}: every row in one run");
        for (k, s) in runs.iter().enumerate() {
            assert_eq!(s.language, lang);
            let on: Vec<f64> = s.words.iter().map(|w| w.onset_s.unwrap()).collect();
            assert!(
                on.windows(2).all(|p| p[0] <= p[1]),
                "{path} run {}: onsets in order",
                k + 1
            );
            assert!(on[0] < 10.0, "{path} run {} starts near 0 s, found {}", k + 1, on[0]);
        }
        let e = read(path, lang, 10, col).unwrap_err().to_string();
        assert!(e.contains("run 10") && e.contains("9}"), "{e}");
    }
    // English run 1 ends where the onsets first restart (row 1,518 of the table)
    let en1 = read("lpp_en_ivanova/lpp_en_regressors.csv", "en", 1, None).unwrap();
    let empty_in_run1 = std::fs::read_to_string(data_root().join("lpp_en_ivanova/lpp_en_regressors.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .take(1517)
        .filter(|l| l.starts_with(','))
        .count();
    assert_eq!(en1.words.len(), 1517 - empty_in_run1);
    assert_eq!(en1.words[0].text, "once");
    // a bad run cell names the row and column
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    std::fs::write(&p, "word,onset,section\na,0.1,1\nb,0.2,one\n").unwrap();
    let opts = ReadOptions {
        run: Some(cortexflow::stimulus::RunSelect {
            run: 1,
            column: Some("section".into()),
        }),
        ..Default::default()
    };
    let e = read_story(&p, None, &opts).unwrap_err().to_string();
    assert!(e.contains("row 3") && e.contains("section") && e.contains("one"), "{e}");
}

/// wordfreq's lists as shipped in its PyPI package (msgpack.gz), decoded here, against the TSV
/// exports of the same lists in ../shared/data/wordfreq (word, Zipf to 2 decimals): every word of
/// the export has our Zipf to ±0.005, in all three languages. Then the LPP words' coverage by the
/// large lists: most words of each language's tables have a frequency.
#[test]
fn wordfreq_lists_decode_to_their_tsv_exports_in_three_languages() {
    use cortexflow::stimulus::wordfreq::WordFrequencies;
    let dir = data_root().join("wordfreq");
    for lang in ["en", "fr", "zh"] {
        let f = WordFrequencies::load(&dir.join(format!("small_{lang}.msgpack.gz"))).unwrap();
        let tsv = std::fs::read_to_string(dir.join(format!("small_{lang}_zipf.tsv"))).unwrap();
        let mut n = 0;
        for (i, line) in tsv.lines().enumerate().skip(1) {
            let cols: Vec<&str> = line.split('\t').collect();
            let want: f64 = cols[1].parse().unwrap();
            let got = f
                .listed(cols[0])
                .unwrap_or_else(|| panic!("{lang} line {}: `{}` not found", i + 1, cols[0]));
            assert!(
                (got - want).abs() <= 0.005 + 1e-9,
                "{lang} `{}`: {got} vs {want}",
                cols[0]
            );
            n += 1;
        }
        assert!(n > 20_000, "{lang}: {n} words in the export");
        assert!(f.len() >= n, "{lang}: {} words decoded, {n} exported", f.len());
    }
    for (lang, path, run_column, at_least) in [
        ("en", "lpp_en_ivanova/lpp_en_regressors.csv", None, 0.97),
        (
            "fr",
            "lpp_fr_neurospin/lppFR_word_information.csv",
            Some("section"),
            0.97,
        ),
        (
            "zh",
            "lpp_en_cn_dgd45125/lpp_CN_word_surprisal_gpt2.csv",
            Some("section"),
            0.95,
        ),
    ] {
        let f = WordFrequencies::load(&dir.join(format!("large_{lang}.msgpack.gz"))).unwrap();
        let opts = ReadOptions {
            language: lang.into(),
            skip_empty_words: true,
            run: Some(cortexflow::stimulus::RunSelect {
                run: 1,
                column: run_column.map(String::from),
            }),
            ..Default::default()
        };
        let story = read_story(data_root().join(path), None, &opts).unwrap();
        let found = story.words.iter().filter(|w| f.zipf(&w.text).is_some()).count();
        let share = found as f64 / story.words.len() as f64;
        println!(
            "{lang}: {found} of {} run-1 words in large_{lang} ({share:.3})",
            story.words.len()
        );
        assert!(share >= at_least, "{lang}: coverage {share:.3}");
    }
}
