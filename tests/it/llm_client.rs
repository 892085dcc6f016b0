//! `cortexflow labels ask` against a local server speaking the OpenAI chat-completions protocol
//! (HTTP/1.1 on 127.0.0.1, written here with std only): requests carry the model, the key, the
//! seed and both prompts; rate limits and server errors are retried; an unreadable reply is asked
//! again; answers land in the answers format that `labels agree` and `[taxonomy] labels` read;
//! an interrupted run resumes without asking answered tasks again; a 401 stops the run with the
//! server's message.

use crate::support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use cortexflow::taxonomy::tasks::{read_answers, Context, Task};
use cortexflow::taxonomy::Category;

/// What the server saw.
#[derive(Default)]
struct Seen {
    requests: usize,
    bodies: Vec<serde_json::Value>,
    /// Requests per feature.
    per_feature: BTreeMap<u64, usize>,
    auth: Vec<Option<String>>,
}

/// The planted answer: the category is a function of the feature (visible to the server only
/// through the prompt).
fn planted(feature: u64) -> &'static str {
    ["SEMANTIC", "SYNTACTIC", "LEXICAL", "PREDICTION", "OTHER"][(feature % 5) as usize]
}

fn respond(stream: &mut TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        _ => "Internal Server Error",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn completion(content: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "test-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
    .to_string()
}

/// Serves until the process ends. Feature 3's first request gets a 429 and feature 4's a 500;
/// feature 6's first reply is prose without JSON; with `reject`, every request gets a 401.
fn serve(listener: TcpListener, seen: Arc<Mutex<Seen>>, reject: bool) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("POST /v1/chat/completions "), "request line: {line}");
        let (mut len, mut auth) = (0usize, None);
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let user = body["messages"][1]["content"].as_str().unwrap().to_string();
        let feature: u64 = user
            .split("feature ")
            .nth(1)
            .and_then(|s| s.split('.').next())
            .and_then(|s| s.parse().ok())
            .expect("the user prompt names the feature");
        let n = {
            let mut s = seen.lock().unwrap();
            s.requests += 1;
            s.bodies.push(body.clone());
            s.auth.push(auth);
            let e = s.per_feature.entry(feature).or_default();
            *e += 1;
            *e
        };
        if reject {
            respond(
                &mut stream,
                401,
                r#"{"error": {"message": "Incorrect API key provided"}}"#,
            );
            continue;
        }
        match (feature, n) {
            (3, 1) => respond(&mut stream, 429, r#"{"error": {"message": "rate limited"}}"#),
            (4, 1) => respond(&mut stream, 500, r#"{"error": {"message": "overloaded"}}"#),
            (6, 1) => respond(&mut stream, 200, &completion("I think this feature is about animals.")),
            _ => {
                let cat = planted(feature);
                let sub = if cat == "SEMANTIC" { "\"concrete\"" } else { "null" };
                let content = format!(
                    "```json\n{{\"layer\": 99, \"feature\": {feature}, \"category\": \"{cat}\", \"subcategory\": {sub}}}\n```"
                );
                respond(&mut stream, 200, &completion(&content));
            }
        }
    }
}

fn start(reject: bool) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    std::thread::spawn(move || serve(listener, s2, reject));
    (url, seen)
}

fn tasks(n: u32) -> Vec<Task> {
    (0..n)
        .map(|f| Task {
            task_id: format!("L9-F{f}"),
            layer: 9,
            feature: f,
            contexts: vec![Context {
                left: "the white".into(),
                token: "rabbit".into(),
                right: "ran past".into(),
                activation: 1.5,
            }],
            categories: Category::ALL
                .iter()
                .map(|c| (c.name().to_uppercase(), c.definition().to_string()))
                .collect(),
            subcategories: vec!["concrete: concreteness / animacy".into()],
            response_format: cortexflow::taxonomy::tasks::response_format(),
            heldout: vec![],
            non_activating: vec![],
            density: None,
        })
        .collect()
}

fn write_tasks(dir: &std::path::Path, t: &[Task]) -> std::path::PathBuf {
    let p = dir.join("labelling_tasks_L9.jsonl");
    cortexflow::taxonomy::tasks::write_tasks(&p, t).unwrap();
    p
}

#[test]
fn labels_ask_talks_to_a_chat_completions_server_retries_and_resumes() {
    let (url, seen) = start(false);
    let dir = tempfile::tempdir().unwrap();
    let all = tasks(12);
    let tasks_path = write_tasks(dir.path(), &all);
    let out = dir.path().join("answers.jsonl");

    // 1. a pilot on the first 8 tasks, through the command line
    let o = support::bin()
        .args(["labels", "ask"])
        .arg(&tasks_path)
        .arg("--out")
        .arg(&out)
        .args(["--url", &url, "--model", "test-model", "--seed", "7", "--limit", "8"])
        .env("OPENAI_API_KEY", "sk-test")
        .env("CORTEXFLOW_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("8 task(s) answered, 0 already answered, 11 request(s)"),
        "{stdout}"
    );
    {
        let s = seen.lock().unwrap();
        // 8 tasks + one retry each for features 3 (429), 4 (500) and 6 (no JSON)
        assert_eq!(s.requests, 11);
        assert_eq!(s.per_feature[&3], 2);
        assert_eq!(s.per_feature[&6], 2);
        assert!(s.auth.iter().all(|a| a.as_deref() == Some("Bearer sk-test")));
        let b = &s.bodies[0];
        assert_eq!(b["model"], "test-model");
        assert_eq!(b["seed"], 7);
        assert_eq!(b["temperature"], 0.0);
        assert_eq!(b["messages"][0]["role"], "system");
        let system = b["messages"][0]["content"].as_str().unwrap();
        assert!(system.contains("SEMANTIC") && system.contains("concrete"), "{system}");
        assert!(b["messages"][1]["content"].as_str().unwrap().contains("[[rabbit]]"));
    }
    let answers = read_answers(&out).unwrap();
    assert_eq!(answers.len(), 8);
    for a in &answers {
        assert_eq!(a.layer, 9, "the layer comes from the task, not the reply");
        assert_eq!(a.category, Category::parse(planted(a.feature as u64)).unwrap());
        assert_eq!(a.rater.as_deref(), Some("llm:test-model"));
    }
    assert!(!dir.path().join("answers.jsonl.partial").exists());

    // 2. an interrupted run: a partial file with two answers and a cut line
    let partial = dir.path().join("answers.jsonl.partial");
    std::fs::write(
        &partial,
        "{\"layer\": 9, \"feature\": 8, \"category\": \"PREDICTION\", \"rater\": \"llm:test-model\"}\n\
         {\"layer\": 9, \"feature\": 9, \"category\": \"OTHER\", \"rater\": \"llm:test-model\"}\n\
         {\"layer\": 9, \"feat",
    )
    .unwrap();
    let before = seen.lock().unwrap().requests;
    let mut cfg = cortexflow::taxonomy::llm::LlmConfig::new(&url, "test-model");
    cfg.api_key_env = "CORTEXFLOW_TEST_NO_KEY".into();
    cfg.backoff_ms = 10;
    let run = cortexflow::taxonomy::llm::label_tasks(&cfg, &all, &out, || {}).unwrap();
    assert_eq!((run.answered, run.resumed, run.failed.len()), (2, 10, 0));
    assert_eq!(
        seen.lock().unwrap().requests - before,
        2,
        "only features 10 and 11 are asked"
    );
    assert!(seen.lock().unwrap().auth.last().unwrap().is_none(), "no key, no header");
    let answers = read_answers(&out).unwrap();
    let features: Vec<u32> = answers.iter().map(|a| a.feature).collect();
    assert_eq!(features, (0..12).collect::<Vec<_>>());

    // 3. the answers agree perfectly with the planted labels (κ = 1 over 12 features)
    let truth = dir.path().join("truth.tsv");
    let mut tsv = String::from("layer\tfeature\tcategory\n");
    for f in 0..12u64 {
        tsv.push_str(&format!("9\t{f}\t{}\n", planted(f)));
    }
    std::fs::write(&truth, tsv).unwrap();
    let s = cortexflow::cli::run_labels_agree(&cortexflow::cli::LabelsAgreeArgs {
        sources: vec![truth, out.clone()],
        boot: 100,
        level: 0.95,
        seed: 0,
    })
    .unwrap();
    assert_eq!(s.n_items, 12);
    assert!((s.pairs[0].2 - 1.0).abs() < 1e-12, "{}", s.text);
}

#[test]
fn a_rejected_key_stops_the_run_with_the_servers_message() {
    let (url, seen) = start(true);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("answers.jsonl");
    let mut cfg = cortexflow::taxonomy::llm::LlmConfig::new(&url, "test-model");
    cfg.backoff_ms = 10;
    let e = cortexflow::taxonomy::llm::label_tasks(&cfg, &tasks(3), &out, || {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("401") && e.contains("Incorrect API key"), "{e}");
    assert_eq!(seen.lock().unwrap().requests, 1, "a 401 is not retried");
    assert!(!out.exists(), "nothing is written as final answers");

    // no model: a clear error before any request
    let args = cortexflow::cli::labels::EndpointArgs {
        url: Some(url),
        ..Default::default()
    };
    std::env::remove_var("CORTEXFLOW_LLM_MODEL");
    let e = cortexflow::cli::labels::llm_config(&args).unwrap_err().to_string();
    assert!(e.contains("--model"), "{e}");
}
