//! Labelling tasks answered by an OpenAI-compatible chat-completions endpoint (optional; METHOD.md
//! §4). Any server speaking that protocol works: OpenAI, vLLM, llama.cpp's server, Ollama's
//! `/v1`, a local test server.
//!
//! Each task ([`super::tasks::Task`]) becomes one `POST {url}/chat/completions` with a system
//! message (the category and subcategory definitions and the response format) and a user message
//! (the feature's top contexts, the token marked `[[…]]`), `temperature` 0 by default and the
//! configured `seed`. The reply's first JSON object is read as the answer; its category (and
//! subcategory, and optional confidences) are checked, and `layer` / `feature` are taken from the
//! task, never from the reply. Answers are written in the answers format
//! [`super::tasks::read_answers`] reads (JSONL), with `rater` = `llm:<model>`.
//!
//! Failures: HTTP 429 and 5xx and connection errors are retried with exponential backoff; other
//! HTTP errors stop the run with the server's message; a reply that cannot be read as an answer
//! is asked again up to `max_retries` times and then reported as failed. Progress: answers are
//! appended to `<out>.partial` as they arrive (one line each, flushed), so an interrupted run
//! resumes where it stopped; at the end all answers are written to `<out>` atomically and the
//! partial file is removed. Tasks already answered in `<out>` or `<out>.partial` are skipped.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::tasks::Task;
use super::{Category, Subcategory};
use crate::{Error, Result};

/// Where and how to ask.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LlmConfig {
    /// Base URL of the API (the part before `/chat/completions`), e.g.
    /// `https://api.openai.com/v1` or `http://localhost:8000/v1`.
    pub url: String,
    /// Model name sent with every request.
    pub model: String,
    /// Name of the environment variable holding the API key (sent as `Authorization: Bearer`);
    /// no header when the variable is unset or empty (local servers).
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    #[serde(default)]
    pub temperature: f64,
    /// Sent as `seed` (servers that support it sample reproducibly).
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    /// Retries per task (HTTP 429 / 5xx / connection errors / unreadable replies).
    #[serde(default = "default_retries")]
    pub max_retries: usize,
    /// First backoff; doubled on each retry.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
}

fn default_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_max_tokens() -> u32 {
    200
}
fn default_timeout() -> u64 {
    120
}
fn default_retries() -> usize {
    4
}
fn default_backoff() -> u64 {
    1000
}

impl LlmConfig {
    /// A configuration with the defaults for everything but the URL and the model.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        LlmConfig {
            url: url.into(),
            model: model.into(),
            api_key_env: default_key_env(),
            temperature: 0.0,
            seed: None,
            max_tokens: default_max_tokens(),
            timeout_s: default_timeout(),
            max_retries: default_retries(),
            backoff_ms: default_backoff(),
        }
    }

    fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.url.trim_end_matches('/'))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// The system message: the task's category definitions, subcategories and response format.
pub fn system_prompt(task: &Task) -> String {
    let mut s = String::from(
        "You label features of a sparse autoencoder trained on a language model's residual stream. \
         You see the contexts where a feature is most active; the most active token is marked [[like this]]. \
         Choose the one category that best describes what the feature responds to.\n\nCategories:\n",
    );
    for (name, def) in &task.categories {
        s.push_str(&format!("- {name}: {def}\n"));
    }
    s.push_str("\nSemantic subcategories (for SEMANTIC only):\n");
    for sc in &task.subcategories {
        s.push_str(&format!("- {sc}\n"));
    }
    s.push_str(&format!(
        "\nAnswer with one JSON object and nothing else, in this format: {}",
        task.response_format
    ));
    s
}

/// The user message: the feature's contexts.
pub fn user_prompt(task: &Task) -> String {
    let mut s = format!(
        "Layer {}, feature {}. Top {} contexts (activation in parentheses):\n",
        task.layer,
        task.feature,
        task.contexts.len()
    );
    for (i, c) in task.contexts.iter().enumerate() {
        s.push_str(&format!(
            "{}. {} [[{}]] {} ({:.3})\n",
            i + 1,
            c.left,
            c.token,
            c.right,
            c.activation
        ));
    }
    s
}

/// The request body of one task.
pub fn request_body(cfg: &LlmConfig, task: &Task) -> serde_json::Value {
    chat_body(cfg, system_prompt(task), user_prompt(task))
}

/// The first balanced `{…}` in `text` (replies often wrap the JSON in prose or a code fence).
pub(crate) fn first_json_object(text: &str) -> Option<&str> {
    let start = text.find('{')?;
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, ch) in text[start..].char_indices() {
        if in_str {
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i + 1]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Reads the answer to `task` from a reply's message content: a line of the answers format, with
/// the task's layer and feature and `rater` = `llm:<model>`.
pub fn parse_reply(task: &Task, content: &str, model: &str) -> Result<serde_json::Value> {
    let bad = |msg: String| Error::Invalid(format!("task {}: {msg}; the reply was: {content:?}", task.task_id));
    let obj = first_json_object(content).ok_or_else(|| bad("no JSON object in the reply".into()))?;
    let v: serde_json::Value = serde_json::from_str(obj).map_err(|e| bad(format!("not JSON: {e}")))?;
    let cat = v
        .get("category")
        .and_then(|c| c.as_str())
        .ok_or_else(|| bad("no `category`".into()))?;
    let category = Category::parse(cat).ok_or_else(|| bad(format!("unknown category `{cat}`")))?;
    let subcategory = match v.get("subcategory").and_then(|s| s.as_str()).map(str::trim) {
        None | Some("") | Some("null") | Some("none") => None,
        Some(s) => Some(Subcategory::parse(s).ok_or_else(|| bad(format!("unknown subcategory `{s}`")))?),
    };
    let mut out = serde_json::json!({
        "layer": task.layer,
        "feature": task.feature,
        "category": category.name().to_uppercase(),
        "subcategory": subcategory.filter(|_| category == Category::Semantic).map(|s| s.name()),
        "rater": format!("llm:{model}"),
    });
    if let Some(serde_json::Value::Object(m)) = v.get("confidence") {
        let mut conf = serde_json::Map::new();
        for (k, w) in m {
            let c = Category::parse(k).ok_or_else(|| bad(format!("unknown category `{k}` in `confidence`")))?;
            let w = w
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| bad(format!("confidence of `{k}` is not a weight ≥ 0")))?;
            conf.insert(c.name().to_uppercase(), w.into());
        }
        if conf.values().filter_map(|w| w.as_f64()).sum::<f64>() > 0.0 {
            out["confidence"] = serde_json::Value::Object(conf);
        }
    }
    Ok(out)
}

/// What [`label_tasks`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmRun {
    /// Tasks answered by this run.
    pub answered: usize,
    /// Tasks skipped because an earlier run had answered them.
    pub resumed: usize,
    /// Task ids that got no usable answer (with the last error).
    pub failed: Vec<(String, String)>,
    /// HTTP requests sent.
    pub requests: usize,
}

pub(crate) enum Attempt<T> {
    Done(T),
    Retry(String),
    Fatal(Error),
}

/// An HTTP client for `cfg` and the API key from its environment variable (if set).
pub(crate) fn client(cfg: &LlmConfig) -> (ureq::Agent, Option<String>) {
    let key = std::env::var(&cfg.api_key_env).ok().filter(|k| !k.is_empty());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(cfg.timeout_s)))
        .build()
        .into();
    (agent, key)
}

/// A chat-completions body with a system and a user message and `cfg`'s sampling settings.
pub(crate) fn chat_body(cfg: &LlmConfig, system: String, user: String) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": cfg.model,
        "messages": [
            Message { role: "system".into(), content: system },
            Message { role: "user".into(), content: user },
        ],
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
    });
    if let Some(seed) = cfg.seed {
        body["seed"] = seed.into();
    }
    body
}

/// Sends `body` until `parse` accepts the reply's message content: 429, 5xx, connection errors
/// and unreadable replies are retried with backoff up to `cfg.max_retries` times (then
/// `Ok(Err(last problem))`); other HTTP errors are returned as errors. Counts requests in
/// `requests`.
pub(crate) fn ask_with_retries<T>(
    agent: &ureq::Agent,
    cfg: &LlmConfig,
    key: Option<&str>,
    what: &str,
    body: &serde_json::Value,
    requests: &mut usize,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<std::result::Result<T, String>> {
    let mut last = String::new();
    for attempt in 0..=cfg.max_retries {
        if attempt > 0 {
            let wait = cfg.backoff_ms.saturating_mul(1 << (attempt - 1).min(10));
            tracing::warn!("{what}: {last}; retry {attempt} in {wait} ms");
            std::thread::sleep(Duration::from_millis(wait));
        }
        *requests += 1;
        match send_once(agent, cfg, key, body, &parse) {
            Attempt::Done(a) => return Ok(Ok(a)),
            Attempt::Retry(msg) => last = msg,
            Attempt::Fatal(e) => return Err(e),
        }
    }
    Ok(Err(last))
}

fn send_once<T>(
    agent: &ureq::Agent,
    cfg: &LlmConfig,
    key: Option<&str>,
    body: &serde_json::Value,
    parse: impl Fn(&str) -> Result<T>,
) -> Attempt<T> {
    let mut req = agent.post(cfg.endpoint()).header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let mut resp = match req.send_json(body) {
        Ok(r) => r,
        Err(e) => return Attempt::Retry(format!("request failed: {e}")),
    };
    let status = resp.status().as_u16();
    let text = match resp.body_mut().read_to_string() {
        Ok(t) => t,
        Err(e) => return Attempt::Retry(format!("reading the reply: {e}")),
    };
    if status == 429 || status >= 500 {
        return Attempt::Retry(format!("HTTP {status}: {}", text.chars().take(300).collect::<String>()));
    }
    if !(200..300).contains(&status) {
        return Attempt::Fatal(Error::Invalid(format!(
            "{} answered HTTP {status}: {}",
            cfg.endpoint(),
            text.chars().take(500).collect::<String>()
        )));
    }
    let v: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return Attempt::Retry(format!("the response is not JSON ({e})")),
    };
    let Some(content) = v.pointer("/choices/0/message/content").and_then(|c| c.as_str()) else {
        return Attempt::Retry("the response has no choices[0].message.content".into());
    };
    match parse(content) {
        Ok(a) => Attempt::Done(a),
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Complete lines of a file we wrote (a line cut by a crash is dropped); none when it is absent.
fn answer_lines(path: &Path) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(path, e)),
    };
    Ok(text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end().to_string())
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .collect())
}

fn key_of(line: &str) -> Option<(usize, u32)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some((v.get("layer")?.as_u64()? as usize, v.get("feature")?.as_u64()? as u32))
}

/// Asks the endpoint for every task not yet answered in `out` (see the module docs) and writes
/// all answers to `out`. `on_task` is called after each task (for a progress bar).
pub fn label_tasks(cfg: &LlmConfig, tasks: &[Task], out: &Path, mut on_task: impl FnMut()) -> Result<LlmRun> {
    let (agent, key) = client(cfg);
    let partial = partial_path(out);
    // answers so far: the finished file, then the partial one (later lines win on import)
    let mut lines = answer_lines(out)?;
    lines.extend(answer_lines(&partial)?);
    let mut done: BTreeSet<(usize, u32)> = lines.iter().filter_map(|l| key_of(l)).collect();
    // rewrite the partial file without a cut last line, then append to it
    if let Some(dir) = partial.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut text: String = answer_lines(&partial)?.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&partial, &text).map_err(|e| Error::io(&partial, e))?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .map_err(|e| Error::io(&partial, e))?;
    let mut run = LlmRun::default();
    for task in tasks {
        if done.contains(&(task.layer, task.feature)) {
            run.resumed += 1;
            on_task();
            continue;
        }
        let answer = ask_with_retries(
            &agent,
            cfg,
            key.as_deref(),
            &format!("task {}", task.task_id),
            &request_body(cfg, task),
            &mut run.requests,
            |content| parse_reply(task, content, &cfg.model),
        )?;
        match answer {
            Ok(a) => {
                let line = serde_json::to_string(&a).expect("answer serialises");
                writeln!(file, "{line}").map_err(|e| Error::io(&partial, e))?;
                file.flush().map_err(|e| Error::io(&partial, e))?;
                done.insert((task.layer, task.feature));
                lines.push(line);
                run.answered += 1;
            }
            Err(last) => run.failed.push((task.task_id.clone(), last)),
        }
        on_task();
    }
    drop(file);
    text.clear();
    for l in &lines {
        text.push_str(l);
        text.push('\n');
    }
    crate::paths::write_atomic(out, text.as_bytes())?;
    std::fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
    Ok(run)
}

/// Reads tasks written by a run (`labelling_tasks_L<layer>.jsonl`); errors name the line.
pub fn read_tasks(path: &Path) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::parse(path, "labelling tasks", format!("line {}: {e}", i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        super::super::tasks::Task {
            task_id: "L9-F4".into(),
            layer: 9,
            feature: 4,
            contexts: vec![],
            categories: Default::default(),
            subcategories: vec![],
            response_format: serde_json::Value::Null,
            heldout: vec![],
            non_activating: vec![],
            density: None,
        }
    }

    #[test]
    fn replies_in_prose_or_fences_parse_and_bad_ones_say_why() {
        let t = task();
        let a = parse_reply(
            &t,
            "Sure! ```json\n{\"layer\": 1, \"feature\": 99, \"category\": \"semantic\", \"subcategory\": \"affect\", \"note\": \"a } in a string\"}\n```",
            "m",
        )
        .unwrap();
        // layer and feature come from the task, not the reply
        assert_eq!(a["layer"], 9);
        assert_eq!(a["feature"], 4);
        assert_eq!(a["category"], "SEMANTIC");
        assert_eq!(a["subcategory"], "affect");
        assert_eq!(a["rater"], "llm:m");
        let a = parse_reply(&t, "{\"category\": \"LEXICAL\", \"subcategory\": \"affect\"}", "m").unwrap();
        assert!(a["subcategory"].is_null(), "subcategories only for SEMANTIC");
        let e = parse_reply(&t, "{\"category\": \"SEMANTICS\"}", "m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("L9-F4") && e.contains("SEMANTICS"), "{e}");
        assert!(parse_reply(&t, "no idea", "m").is_err());
    }
}
