//! The model manifest: the small JSON file next to `model.onnx` that tells cortexflow how to run a
//! decoder (input and output names, layer count, width, BOS handling) without inspecting the graph.
//!
//! `cortexflow model import` writes one; for any other decoder exported to ONNX with hidden-state
//! outputs (a GPT-2 or Llama export from another tool), a user writes one by hand, e.g.
//! ```json
//! { "architecture": "gpt2", "n_layers": 48, "d_model": 1600, "vocab_size": 50257,
//!   "context_length": 1024, "bos_token_id": 50256, "prepend_bos": true,
//!   "input_ids": "input_ids", "attention_mask": "attention_mask",
//!   "logits": "logits",
//!   "hidden_states": ["hidden_state_0", "hidden_state_1", "...", "hidden_state_48"] }
//! ```
//! `hidden_states[0]` is the embedding output and `hidden_states[ℓ]` the residual stream after block
//! ℓ. `next_token_logprob` / `next_token_entropy` are optional in-graph outputs; without them
//! cortexflow computes both from `logits`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// e.g. "llama", "gpt2".
    pub architecture: String,
    /// Number of transformer blocks; `hidden_states` has `n_layers + 1` entries.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    pub vocab_size: usize,
    /// Longest sequence (tokens, BOS included) the model accepts.
    pub context_length: usize,
    /// Token prepended to every window (an attention sink that is excluded downstream).
    pub bos_token_id: Option<u32>,
    /// Whether to prepend `bos_token_id` to every window.
    #[serde(default = "yes")]
    pub prepend_bos: bool,
    /// Name of the int64 [batch, seq] token input.
    #[serde(default = "default_input_ids")]
    pub input_ids: String,
    /// Name of the int64 [batch, seq] mask input (1 = token, 0 = padding); None if the graph has none.
    #[serde(default = "default_attention_mask")]
    pub attention_mask: Option<String>,
    /// Name of the [batch, seq, vocab] logits output.
    pub logits: Option<String>,
    /// A bool scalar input that must be true for `logits` to be computed (graphs from `model
    /// import`, importer r4 on); None when the graph always computes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits_switch: Option<String>,
    /// Names of the [batch, seq, d_model] residual-stream outputs, embeddings first.
    pub hidden_states: Vec<String>,
    /// Optional [batch, seq] output: ln p(token t+1 | tokens ≤ t), in nats.
    #[serde(default)]
    pub next_token_logprob: Option<String>,
    /// Optional [batch, seq] output: entropy (nats) of the next-token distribution at t.
    #[serde(default)]
    pub next_token_entropy: Option<String>,
    /// An int64 scalar input (default 0) before which the graph does not score positions: its
    /// next-token outputs are 0 there (graphs from `model import`, importer r6 on); None when
    /// every position is always scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_from: Option<String>,
    /// Weight precision stored in the graph ("f32" or "f16").
    #[serde(default)]
    pub weights: Option<String>,
    /// File the model was imported from, and its sha256.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub source_sha256: Option<String>,
    /// cortexflow version that wrote this manifest.
    #[serde(default)]
    pub written_by: Option<String>,
    /// Set when only the first `n_layers` of this many blocks were kept and the LM head dropped
    /// (hidden states only; no logits or next-token statistics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_from: Option<usize>,
    /// Set when the graph can stream a story through a key/value cache (graphs from `model
    /// import`, importer r3 on): the cache's inputs and outputs, see [`KvCache`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<KvCache>,
    /// The ONNX external data file beside `model.onnx` holding the weights (a model past
    /// protobuf's 2 GiB limit, or an import with `--external-data`); None when they are inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_data: Option<String>,
}

/// The key/value-cache interface of a graph. Every input has a default (an empty cache, offset
/// 0), so callers that run whole windows need not pass them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCache {
    /// Per block: f32 [batch, kv_heads, past, head_dim] inputs (keys before RoPE, values; a cached
    /// token's position is its index in the cache, a new token's the cache length plus its
    /// index) …
    pub past_key: Vec<String>,
    pub past_value: Vec<String>,
    /// … and the same with this call's tokens appended, [batch, kv_heads, past + seq, head_dim].
    pub present_key: Vec<String>,
    pub present_value: Vec<String>,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// f32 [batch, vocab] log-probabilities after the call's last position (None without a head).
    pub last_logprobs: Option<String>,
}

fn yes() -> bool {
    true
}
fn default_input_ids() -> String {
    "input_ids".into()
}
fn default_attention_mask() -> Option<String> {
    Some("attention_mask".into())
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::parse(
                &path,
                format!("line {}, column {}", e.line(), e.column()),
                e.to_string(),
            )
        })?;
        m.check().map_err(|msg| Error::parse(&path, "manifest", msg))?;
        Ok(m)
    }

    /// Internal consistency: one hidden-state output per layer plus the embeddings, a BOS id when
    /// BOS is prepended, and some way to get next-token probabilities.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.hidden_states.len() != self.n_layers + 1 {
            return Err(format!(
                "`hidden_states` lists {} outputs but n_layers = {} needs {} (embeddings + one per block)",
                self.hidden_states.len(),
                self.n_layers,
                self.n_layers + 1
            ));
        }
        if self.prepend_bos && self.bos_token_id.is_none() {
            return Err("`prepend_bos` is true but `bos_token_id` is missing".into());
        }
        if self.truncated_from.is_none()
            && self.logits.is_none()
            && (self.next_token_logprob.is_none() || self.next_token_entropy.is_none())
        {
            return Err("needs `logits`, or both `next_token_logprob` and `next_token_entropy`".into());
        }
        if self.context_length < 2 {
            return Err(format!("context_length {} is too small", self.context_length));
        }
        Ok(())
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        crate::paths::write_atomic(&path, text.as_bytes())
    }
}
