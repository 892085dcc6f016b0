//! `cortexflow labels score` against a local OpenAI-compatible server whose "rater" reads only
//! the explanation (`fires on the word X`) and the excerpts: planted good explanations (X is the
//! word the feature fires on) must score near 1 and planted bad ones (X never occurs) near chance,
//! in both scorers; the scores table is read back with pyarrow; an unusable reply is asked again.

use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use cortexflow::taxonomy::tasks::{Context, Task};

/// The simulated rater: 1 where the explanation's word is in the excerpt (detection) or is the
/// marked word (fuzzing).
fn judge(system: &str, user: &str) -> String {
    let expl = user
        .lines()
        .find_map(|l| l.strip_prefix("Explanation: "))
        .expect("the prompt gives the explanation");
    let word = expl.split_whitespace().last().unwrap().to_string();
    let fuzzing = system.contains("marked [[");
    let answers: Vec<u8> = user
        .lines()
        .skip_while(|l| !l.starts_with("Excerpts:"))
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let text = l.split_once(". ").unwrap().1;
            let hit = if fuzzing {
                text.contains(&format!("[[{word}]]"))
            } else {
                text.split_whitespace()
                    .any(|w| w.trim_matches(|c| c == '[' || c == ']') == word)
            };
            hit as u8
        })
        .collect();
    format!("{{\"answers\": {answers:?}}}")
}

fn serve(listener: TcpListener, requests: Arc<Mutex<usize>>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let system = body["messages"][0]["content"].as_str().unwrap();
        let user = body["messages"][1]["content"].as_str().unwrap();
        let n = {
            let mut r = requests.lock().unwrap();
            *r += 1;
            *r
        };
        // the very first reply is prose without JSON: it must be asked again
        let content = if n == 1 {
            "I am not sure.".to_string()
        } else {
            judge(system, user)
        };
        let reply = serde_json::json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]
        })
        .to_string();
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
    }
}

const TRIGGERS: [&str; 8] = ["rabbit", "queen", "garden", "tea", "cat", "door", "key", "bottle"];
const FILLER: [&str; 12] = [
    "the", "a", "little", "she", "went", "very", "and", "then", "said", "of", "it", "was",
];

/// Feature f fires on TRIGGERS[f]: 10 held-out activating contexts hold it as the token, 10
/// non-activating ones do not hold it at all.
fn planted_tasks() -> Vec<Task> {
    let mut rng = cortexflow::stats::SplitMix64::new(3);
    let mut filler = |k: usize| -> String {
        (0..k)
            .map(|_| FILLER[rng.below(FILLER.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    };
    (0..8u32)
        .map(|f| {
            let t = TRIGGERS[f as usize];
            let heldout = (0..10)
                .map(|_| Context {
                    left: filler(4),
                    token: t.into(),
                    right: filler(3),
                    activation: 2.0,
                })
                .collect();
            let non_activating = (0..10)
                .map(|_| Context {
                    left: filler(4),
                    token: FILLER[(f as usize + 3) % FILLER.len()].into(),
                    right: filler(3),
                    activation: 0.0,
                })
                .collect();
            Task {
                task_id: format!("L6-F{f}"),
                layer: 6,
                feature: f,
                contexts: vec![],
                categories: Default::default(),
                subcategories: vec![],
                response_format: serde_json::Value::Null,
                heldout,
                non_activating,
                density: None,
            }
        })
        .collect()
}

#[test]
fn labels_score_separates_planted_good_from_bad_explanations() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(0usize));
    let r2 = requests.clone();
    std::thread::spawn(move || serve(listener, r2));

    let dir = tempfile::tempdir().unwrap();
    let tasks_path = dir.path().join("labelling_tasks_L6.jsonl");
    cortexflow::taxonomy::tasks::write_tasks(&tasks_path, &planted_tasks()).unwrap();
    // features 0-3: the right word (good); 4-7: a word none of their excerpts holds (bad); one
    // explanation for a feature without a task
    let mut expl = String::new();
    for (f, trigger) in TRIGGERS.iter().enumerate() {
        let (word, cat) = if f < 4 { (*trigger, "good") } else { ("umbrella", "bad") };
        expl.push_str(&format!(
            "{{\"layer\": 6, \"feature\": {f}, \"explanation\": \"fires on the word {word}\", \"category\": \"{cat}\"}}\n"
        ));
    }
    expl.push_str("{\"layer\": 6, \"feature\": 99, \"explanation\": \"fires on the word x\"}\n");
    let expl_path = dir.path().join("explanations.jsonl");
    std::fs::write(&expl_path, expl).unwrap();
    let out = dir.path().join("explanation_scores.parquet");

    let o = support::bin()
        .args(["labels", "score"])
        .arg(&tasks_path)
        .arg("--explanations")
        .arg(&expl_path)
        .arg("--out")
        .arg(&out)
        .args(["--url", &url, "--model", "rater", "--order-seed", "4"])
        .env("CORTEXFLOW_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    assert!(
        stdout.contains("16 (feature, scorer) score(s), 17 request(s)"),
        "{stdout}"
    );
    assert!(stderr.contains("skipped layer 6 feature 99"), "{stderr}");

    // the table, read back with pyarrow: good explanations score 1, bad ones chance
    let got = support::run_python(
        r#"
import sys, json, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
assert pq.read_metadata(sys.argv[1]).metadata[b"cortexflow.model"] == b"rater"
rows = t.to_pylist()
print(json.dumps(rows))
"#,
        &[out.to_str().unwrap()],
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(got.trim()).unwrap();
    assert_eq!(rows.len(), 16);
    for r in &rows {
        let good = r["category"] == "good";
        let acc = r["accuracy"].as_f64().unwrap();
        let n = r["n"].as_u64().unwrap();
        match r["scorer"].as_str().unwrap() {
            "detection" => assert_eq!(n, 20),
            "fuzzing" => assert_eq!(n, 10),
            s => panic!("scorer {s}"),
        }
        if good {
            assert_eq!((acc, r["f1"].as_f64().unwrap()), (1.0, 1.0), "{r}");
        } else {
            assert!((acc - 0.5).abs() < 1e-12 && r["f1"].as_f64().unwrap() == 0.0, "{r}");
            assert!(r["precision"].is_null(), "nothing judged positive: {r}");
        }
    }
    let summary = std::fs::read_to_string(dir.path().join("explanation_scores.parquet.summary.tsv")).unwrap();
    assert!(summary.contains("good\tdetection\t4\t1.0000\t1.0000"), "{summary}");
    assert!(summary.contains("bad\tdetection\t4\t0.5000\t0.0000"), "{summary}");
    assert!(summary.contains("good\tfuzzing\t4\t1.0000"), "{summary}");
    assert_eq!(*requests.lock().unwrap(), 17, "16 requests and one retry");

    // report.html of a folder holding the scores: a section of mean scores per category and
    // scorer, and each feature's card with its own scores (a minimal feature_labels table gives
    // the cards), rendered by headless chromium
    support::run_python(
        r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
n = 8
pq.write_table(pa.table({
    "language": ["en"] * n, "layer": pa.array([6] * n, pa.uint16()), "feature": pa.array(range(n), pa.uint32()),
    "source": ["answers.tsv"] * n, "category": ["semantic"] * n, "subcategory": [None] * n,
    "builtin_category": ["semantic"] * n, "n_active": pa.array([10] * n, pa.uint32()),
}), sys.argv[1])
"#,
        &[dir.path().join("feature_labels.parquet").to_str().unwrap()],
    );
    let o = support::bin().arg("report").arg(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = dir.path().join("report.html");
    let o = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--dump-dom",
        ])
        .arg(format!("file://{}#card=6:4", html.display()))
        .output()
        .expect("chromium runs (`make setup` installs Debian's chromium)");
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let section = &dom[dom
        .find("<section id=\"explanations\">")
        .expect("an explanation-scores section")..];
    for row in [
        "<td>6</td><td>bad</td><td>detection</td><td>4</td><td>0.500</td><td>0.000</td>",
        "<td>6</td><td>good</td><td>detection</td><td>4</td><td>1.000</td><td>1.000</td>",
        "<td>6</td><td>good</td><td>fuzzing</td><td>4</td><td>1.000</td><td>1.000</td>",
    ] {
        assert!(
            section.contains(row),
            "{row} in {}",
            &section[..1500.min(section.len())]
        );
    }
    let card = dom
        .split("<div id=\"card\" class=\"card\" data-feature=\"4\">")
        .nth(1)
        .expect("#card=6:4 opened feature 4's card");
    assert!(
        card.contains("detection: accuracy 0.50, F1 0.00 over 20 excerpts")
            && card.contains("fuzzing: accuracy 0.50, F1 0.00 over 10 excerpts"),
        "{}",
        &card[..1200.min(card.len())]
    );
}
