//! `cortexflow model import`: GGUF (Llama, Gemma 3 or GPT-2 architecture) → `model.onnx` +
//! `tokenizer.json` +
//! `manifest.json`, in Rust, with no Python at run time.
//!
//! The ONNX graph (opset 17) computes, for inputs `input_ids` and `attention_mask` (int64
//! [batch, seq]; 1 = token, 0 = padding, left or right):
//! - `hidden_state_0` … `hidden_state_L` (f32 [batch, seq, d_model]): the embeddings, then the
//!   residual stream after each of the L blocks, before the final norm;
//! - `logits` (f32 [batch, seq, vocab]) when the optional bool input `want_logits` is true, else an
//!   empty [0, 0, vocab] (an `If`: ONNX Runtime runs every node whatever outputs a caller asks
//!   for, so the full logits are computed only on request);
//! - `next_token_logprob` (f32 [batch, seq]): ln p(input_ids[t+1] | ≤ t), nats; 0 where t+1 is
//!   not a real token (the last position, and positions followed by padding);
//! - `next_token_entropy` (f32 [batch, seq]): entropy of the next-token distribution, nats;
//!   both computed by a `Loop` over chunks of positions, so at most `logit_budget` logits (an
//!   optional int64 input, default 2^24 = 64 MB) are alive at once whatever the batch, length and
//!   vocabulary (Gemma's 262,144 tokens included), and only from position `score_from` on (an
//!   optional int64 input, default 0; both outputs are 0 before it);
//! - `last_token_logprobs` (f32 [batch, vocab]): log-probabilities after the last position.
//!
//! Key/value cache: optional inputs `past_key_ℓ` / `past_value_ℓ` (f32 [batch, kv_heads, past,
//! head_dim]; keys before RoPE), each defaulting to an empty cache through an initializer of the
//! same name, and outputs `present_key_ℓ` / `present_value_ℓ` (the same with this call's tokens
//! appended). A cached token's position is its index in the cache and a new token's the cache
//! length plus its mask position, so a caller may drop cached tokens (keeping BOS as the
//! attention sink) and the rest move down: positions stay inside the RoPE table however long the
//! story. Without a cache the graph computes exactly what it did before the cache existed.
//!
//! The block is the Llama one: RMSNorm → grouped-query attention with RoPE and a causal ∧ padding
//! mask → residual add → RMSNorm → SwiGLU MLP → residual add. Positions come from the mask
//! (cumulative sum − 1), so left padding gives the same activations as no padding. Q and K rows
//! are un-permuted from llama.cpp's interleaved RoPE layout back to the half-split layout, and the
//! 1/√head_dim attention scale is folded into W_q (exact for power-of-two head sizes).
//!
//! GPT-2 (the paper's GPT-2 XL is this architecture; [`gpt2_block`]): token plus learned position
//! embeddings (positions as above, so they must stay below the context length), LayerNorm with
//! biases, fused QKV with biases (the scale folded into the Q part), GELU (tanh) MLP with biases,
//! a final LayerNorm. Its cached keys carry their absolute positions, so its cache must not drop
//! tokens: extraction refuses the `sliding` and `full` policies for it and uses `windows`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::gguf::Gguf;
use super::manifest::Manifest;
use super::onnx_proto::{Attr, DType, Dim, ExternalData, Graph, Model, Node, Tensor, ValueInfo};
use super::tokenizer_json;
use crate::{Error, Result};

/// Weight precision written into the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPrecision {
    #[default]
    F32,
    /// Stored as f16 and cast to f32 when the session loads (half the file size).
    F16,
}

/// Where the weights go: inside `model.onnx`, or in `model.onnx.data` beside it (ONNX external
/// data), which a model must use past protobuf's 2 GiB limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightsFile {
    /// External when the weights would make the graph larger than [`INLINE_LIMIT`].
    #[default]
    Auto,
    Inline,
    External,
}

/// The largest total of inline weights `Auto` keeps inside `model.onnx`: protobuf refuses a
/// message of 2 GiB or more, and the graph's nodes and constants need some room beside the weights.
pub const INLINE_LIMIT: u64 = (1 << 31) - (64 << 20);

/// The external data file's name, beside `model.onnx`.
pub const EXTERNAL_DATA_FILE: &str = "model.onnx.data";

/// Tensors below this many bytes stay inline even with external data (constants, norm weights);
/// the threshold of onnx's own `convert_model_to_external_data`.
const EXTERNAL_MIN_BYTES: usize = 1024;

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub precision: WeightPrecision,
    /// Inline weights, external data, or whichever the size requires (the default).
    pub weights_file: WeightsFile,
    /// Cap on the RoPE table length (default: the model's context length).
    pub max_context: Option<usize>,
    /// Keep only the first `blocks` blocks and emit no LM head: outputs `hidden_state_0` …
    /// `hidden_state_{blocks}` only. A smaller, faster graph for extracting one early layer
    /// (e.g. SAE training data); its hidden states equal the full model's.
    pub blocks: Option<usize>,
}

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_base: f64,
    pub rms_eps: f32,
    /// "llama", "gemma3" or "gpt2" (GPT-2: learned absolute positions, LayerNorm with biases and
    /// `rms_eps` as its ε, fused QKV with biases, GELU MLP with biases; no RoPE).
    pub arch: String,
    /// Gemma 3: the RoPE base of the sliding-window (local) layers; every `global_every`-th layer
    /// (1-based) is global, with `rope_base`, and attends to the whole window.
    pub rope_base_local: f64,
    pub sliding_window: Option<usize>,
    pub global_every: usize,
}

impl LlamaConfig {
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.req_str("general.architecture")?.to_string();
        if arch != "llama" && arch != "gemma3" && arch != "gpt2" {
            return Err(Error::Model(format!(
                "{}: architecture `{arch}` is not supported by the importer (supported: llama, gemma3, gpt2)",
                g.path().display()
            )));
        }
        if arch == "gpt2" {
            return Self::gpt2_from_gguf(g);
        }
        let gemma = arch == "gemma3";
        let k = |s: &str| format!("{arch}.{s}");
        let n_heads = g.req_u64(&k("attention.head_count"))? as usize;
        let d_model = g.req_u64(&k("embedding_length"))? as usize;
        let n_kv_heads = g
            .get(&k("attention.head_count_kv"))
            .and_then(|v| v.as_u64())
            .unwrap_or(n_heads as u64) as usize;
        // Gemma's heads are wider than d_model / n_heads (256 × 4 heads on d = 640)
        let head_dim = match gemma {
            true => g.req_u64(&k("attention.key_length"))? as usize,
            false => d_model / n_heads.max(1),
        };
        let rope_dim = g
            .get(&k("rope.dimension_count"))
            .and_then(|v| v.as_u64())
            .unwrap_or(head_dim as u64) as usize;
        if n_heads == 0 || (!gemma && d_model % n_heads != 0) || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::Model(format!(
                "inconsistent attention shape: d_model {d_model}, {n_heads} heads, {n_kv_heads} KV heads"
            )));
        }
        if rope_dim != head_dim || head_dim % 2 != 0 {
            return Err(Error::Model(format!(
                "partial or odd RoPE (rope dim {rope_dim}, head dim {head_dim}) is not supported"
            )));
        }
        let emb = g
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::Model("tensor `token_embd.weight` is missing".into()))?;
        let vocab_size = emb.shape()[0];
        Ok(LlamaConfig {
            n_layers: g.req_u64(&k("block_count"))? as usize,
            d_model,
            d_ff: g.req_u64(&k("feed_forward_length"))? as usize,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length: g.req_u64(&k("context_length"))? as usize,
            rope_base: g.get(&k("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10_000.0),
            rms_eps: g
                .get(&k("attention.layer_norm_rms_epsilon"))
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5) as f32,
            // llama.cpp's Gemma 3 constants (not in the GGUF): local RoPE base 10,000, every
            // sixth layer global
            rope_base_local: if gemma { 10_000.0 } else { 0.0 },
            sliding_window: g
                .get(&k("attention.sliding_window"))
                .and_then(|v| v.as_u64())
                .map(|w| w as usize)
                .filter(|_| gemma),
            global_every: if gemma { 6 } else { 1 },
            arch,
        })
    }
}

impl LlamaConfig {
    /// GPT-2's hyper-parameters (`gpt2.*` keys, as llama.cpp's converter writes them).
    fn gpt2_from_gguf(g: &Gguf) -> Result<Self> {
        let k = |s: &str| format!("gpt2.{s}");
        let n_heads = g.req_u64(&k("attention.head_count"))? as usize;
        let d_model = g.req_u64(&k("embedding_length"))? as usize;
        if n_heads == 0 || !d_model.is_multiple_of(n_heads) {
            return Err(Error::Model(format!(
                "inconsistent attention shape: d_model {d_model}, {n_heads} heads"
            )));
        }
        let emb = g
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::Model("tensor `token_embd.weight` is missing".into()))?;
        let vocab_size = emb.shape()[0];
        Ok(LlamaConfig {
            n_layers: g.req_u64(&k("block_count"))? as usize,
            d_model,
            d_ff: g.req_u64(&k("feed_forward_length"))? as usize,
            n_heads,
            n_kv_heads: n_heads,
            head_dim: d_model / n_heads,
            vocab_size,
            context_length: g.req_u64(&k("context_length"))? as usize,
            rope_base: 0.0,
            rms_eps: g
                .get(&k("attention.layer_norm_epsilon"))
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5) as f32,
            rope_base_local: 0.0,
            sliding_window: None,
            global_every: 1,
            arch: "gpt2".into(),
        })
    }
}

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    pub manifest: Manifest,
    pub onnx_bytes: u64,
    /// Size of `model.onnx.data` when the weights were written there.
    pub external_data_bytes: Option<u64>,
}

/// Imports `gguf_path` into `out_dir` (created if needed). All checks (architecture, tensor types,
/// tokenizer) run before anything is written; the three files are written atomically.
pub fn import_gguf(gguf_path: &Path, out_dir: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let g = Gguf::open(gguf_path)?;
    let cfg = LlamaConfig::from_gguf(&g)?;
    let tokenizer = tokenizer_json::from_gguf(&g)?;
    let tok_info = tokenizer_json::special_ids(&g);
    if let Some(b) = opts.blocks {
        if b == 0 || b > cfg.n_layers {
            return Err(Error::Invalid(format!(
                "cannot keep {b} blocks of a model with {} (choose 1 ..= {})",
                cfg.n_layers, cfg.n_layers
            )));
        }
    }
    check_tensor_types(&g)?;
    let sha = sha256_file(gguf_path)?;
    let created = !out_dir.exists();
    let result = write_import(&g, &cfg, opts, out_dir, &tokenizer, &tok_info, sha);
    if result.is_err() && created {
        // a failed import leaves nothing behind (the folder is empty: each file is written
        // under a temporary name and removed on failure)
        let _ = std::fs::remove_dir(out_dir);
    }
    result
}

fn write_import(
    g: &Gguf,
    cfg: &LlamaConfig,
    opts: &ImportOptions,
    out_dir: &Path,
    tokenizer: &str,
    tok_info: &tokenizer_json::SpecialIds,
    sha: String,
) -> Result<ImportReport> {
    let gguf_path = g.path();
    let n_blocks = opts.blocks.unwrap_or(cfg.n_layers);
    let head = opts.blocks.is_none();
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let estimate = weight_bytes(g, cfg, opts);
    let external = match opts.weights_file {
        WeightsFile::Inline => false,
        WeightsFile::External => true,
        WeightsFile::Auto => estimate > INLINE_LIMIT,
    };
    if !external && estimate > INLINE_LIMIT {
        return Err(too_large_for_inline(gguf_path, estimate));
    }
    let data_path = out_dir.join(EXTERNAL_DATA_FILE);
    let data = match external {
        true => Some(
            ExternalData::create(out_dir, EXTERNAL_DATA_FILE, EXTERNAL_MIN_BYTES)
                .map_err(|e| Error::io(&data_path, e))?,
        ),
        false => None,
    };
    let (model, data) = build_graph(g, cfg, opts, data)?;
    if data.is_none() && model.inline_bytes() as u64 > INLINE_LIMIT {
        return Err(too_large_for_inline(gguf_path, model.inline_bytes() as u64));
    }
    // The data file first, then the graph that refers to it; an inline graph leaves no stale data
    // file behind.
    let data_bytes = match data {
        Some(d) => {
            let n = d.len();
            d.finish().map_err(|e| Error::io(&data_path, e))?;
            Some(n)
        }
        None => None,
    };
    let onnx = out_dir.join("model.onnx");
    crate::paths::write_atomic_with(&onnx, |w| model.write_to(w))?;
    if data_bytes.is_none() && data_path.exists() {
        std::fs::remove_file(&data_path).map_err(|e| Error::io(&data_path, e))?;
    }
    let tok_path = out_dir.join("tokenizer.json");
    crate::paths::write_atomic(&tok_path, tokenizer.as_bytes())?;
    let manifest = Manifest {
        architecture: cfg.arch.clone(),
        n_layers: n_blocks,
        d_model: cfg.d_model,
        vocab_size: cfg.vocab_size,
        context_length: opts.max_context.unwrap_or(cfg.context_length).min(cfg.context_length),
        bos_token_id: tok_info.bos,
        prepend_bos: tok_info.bos.is_some(),
        input_ids: "input_ids".into(),
        attention_mask: Some("attention_mask".into()),
        logits: head.then(|| "logits".into()),
        logits_switch: head.then(|| WANT_LOGITS.into()),
        hidden_states: (0..=n_blocks).map(hidden_name).collect(),
        next_token_logprob: head.then(|| "next_token_logprob".into()),
        next_token_entropy: head.then(|| "next_token_entropy".into()),
        score_from: head.then(|| SCORE_FROM_INPUT.into()),
        truncated_from: (!head).then_some(cfg.n_layers),
        kv_cache: Some(crate::lm::manifest::KvCache {
            past_key: (0..n_blocks).map(past_key_name).collect(),
            past_value: (0..n_blocks).map(past_value_name).collect(),
            present_key: (0..n_blocks).map(present_key_name).collect(),
            present_value: (0..n_blocks).map(present_value_name).collect(),
            kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            last_logprobs: head.then(|| LAST_LOGPROBS.into()),
        }),
        weights: Some(match opts.precision {
            WeightPrecision::F32 => "f32".into(),
            WeightPrecision::F16 => "f16".into(),
        }),
        source: gguf_path.file_name().map(|s| s.to_string_lossy().into_owned()),
        source_sha256: Some(sha),
        written_by: Some(importer_stamp()),
        external_data: data_bytes.map(|_| EXTERNAL_DATA_FILE.to_string()),
    };
    manifest.save(out_dir)?;
    let onnx_bytes = std::fs::metadata(&onnx).map_err(|e| Error::io(&onnx, e))?.len();
    Ok(ImportReport {
        onnx,
        tokenizer: tok_path,
        manifest,
        onnx_bytes,
        external_data_bytes: data_bytes,
    })
}

fn too_large_for_inline(gguf: &Path, bytes: u64) -> Error {
    Error::Model(format!(
        "{}: {:.2} GB of weights do not fit inside one ONNX protobuf (limit 2 GiB); import them as external data (the default, or `--external-data`)",
        gguf.display(),
        bytes as f64 / 1e9
    ))
}

/// The bytes the weights will take in the graph: every GGUF tensor at the chosen precision, plus
/// the RoPE tables. An estimate made before converting anything (it counts the tensors of dropped
/// blocks too, so it errs towards external data), used only to choose between inline weights and external data.
fn weight_bytes(g: &Gguf, cfg: &LlamaConfig, opts: &ImportOptions) -> u64 {
    let per = match opts.precision {
        WeightPrecision::F32 => 4,
        WeightPrecision::F16 => 2,
    };
    let elements: u64 = g
        .tensors
        .iter()
        .map(|t| t.shape().iter().product::<usize>() as u64)
        .sum();
    let ctx = opts.max_context.unwrap_or(cfg.context_length).min(cfg.context_length) as u64;
    let tables = if cfg.arch == "gemma3" { 4 } else { 2 };
    elements * per + tables * ctx * cfg.head_dim as u64 * 4
}

/// Bumped whenever the emitted graph changes, so cached imports are redone.
pub const IMPORTER_REVISION: u32 = 6;

/// The `written_by` stamp of manifests from this importer.
pub fn importer_stamp() -> String {
    format!(
        "cortexflow {} (importer r{IMPORTER_REVISION})",
        env!("CARGO_PKG_VERSION")
    )
}

pub fn hidden_name(i: usize) -> String {
    format!("hidden_state_{i}")
}

/// The KV-cache inputs and outputs of an imported graph (see the module doc).
pub const LAST_LOGPROBS: &str = "last_token_logprobs";

/// The bool input that turns the `logits` output on (default false: an empty [0, 0, vocab]).
pub const WANT_LOGITS: &str = "want_logits";

/// Most logits alive at once while the graph scores next tokens (2^24 f32 = 64 MB): the
/// default of the optional int64 scalar input [`LOGIT_BUDGET_INPUT`].
pub const LOGIT_BUDGET: i64 = 1 << 24;

/// The optional int64 scalar input (default 0) before which positions are not scored: the
/// next-token outputs are 0 there. Overlapping windows score only their own tokens' positions.
pub const SCORE_FROM_INPUT: &str = "score_from";

/// The optional input that bounds the logits alive at once (at most max(1, ⌊budget / (batch ·
/// vocab)⌋) positions per chunk; the positions are spread evenly over the chunks).
pub const LOGIT_BUDGET_INPUT: &str = "logit_budget";
pub fn past_key_name(l: usize) -> String {
    format!("past_key_{l}")
}
pub fn past_value_name(l: usize) -> String {
    format!("past_value_{l}")
}
pub fn present_key_name(l: usize) -> String {
    format!("present_key_{l}")
}
pub fn present_value_name(l: usize) -> String {
    format!("present_value_{l}")
}

pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Small graph-building helper: unique names, constants as initializers.
struct Builder {
    m: Model,
    n: usize,
    precision: WeightPrecision,
    /// With external data, each weight goes to the file as soon as it is converted.
    external: Option<ExternalData>,
    /// The first write error of a spill, reported when the graph is finished.
    spill_error: Option<std::io::Error>,
}

impl Builder {
    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = format!("{}_{}", op.to_lowercase(), self.n);
        self.op_named(op, inputs, attrs, &out);
        out
    }
    fn op_named(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, out: &str) {
        self.n += 1;
        self.m.nodes.push(Node {
            op: op.into(),
            name: format!("n{}_{op}", self.n),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.to_string()],
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
    }
    fn op_multi(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, n_out: usize) -> Vec<String> {
        self.n += 1;
        let outs: Vec<String> = (0..n_out)
            .map(|i| format!("{}_{}_{i}", op.to_lowercase(), self.n))
            .collect();
        self.m.nodes.push(Node {
            op: op.into(),
            name: format!("n{}_{op}", self.n),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outs.clone(),
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
        outs
    }
    fn const_i64(&mut self, name: &str, data: &[i64]) -> String {
        self.m.initializers.push(Tensor::i64(name, &[data.len() as i64], data));
        name.to_string()
    }
    fn const_i64_scalar(&mut self, name: &str, v: i64) -> String {
        self.m.initializers.push(Tensor::i64(name, &[], &[v]));
        name.to_string()
    }
    /// Starts collecting nodes for a subgraph (a `Loop` body, an `If` branch); returns the outer
    /// graph's nodes, to be handed to [`Builder::end_subgraph`].
    fn begin_subgraph(&mut self) -> Vec<Node> {
        std::mem::take(&mut self.m.nodes)
    }
    /// The subgraph's nodes; the outer graph's are back in place.
    fn end_subgraph(&mut self, outer: Vec<Node>) -> Vec<Node> {
        std::mem::replace(&mut self.m.nodes, outer)
    }
    fn const_f32_scalar(&mut self, name: &str, v: f32) -> String {
        self.m.initializers.push(Tensor::f32(name, &[], &[v]));
        name.to_string()
    }
    /// A weight in the chosen precision; f16 weights get a Cast back to f32. With external data,
    /// the values are encoded straight into the file (no in-memory copy of the tensor's bytes).
    fn weight(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        let (stored, dtype) = match self.precision {
            WeightPrecision::F32 => (name.to_string(), DType::F32),
            WeightPrecision::F16 => {
                let stored = format!("{name}.f16");
                self.op_named("Cast", &[&stored], vec![("to", Attr::Int(DType::F32 as i64))], name);
                (stored, DType::F16)
            }
        };
        let tensor = match self.external.as_mut() {
            Some(x) => x.append_f32(&stored, dtype, dims, data).unwrap_or_else(|e| {
                self.spill_error.get_or_insert(e);
                Tensor::f32(&stored, &[0], &[])
            }),
            None => Tensor::from_f32(&stored, dtype, dims, data),
        };
        self.m.initializers.push(tensor);
        name.to_string()
    }
    /// The finished graph: the remaining large initializers (RoPE tables) spilled too, and the
    /// external data file still to be finished by the caller.
    fn finish(mut self) -> Result<(Model, Option<ExternalData>)> {
        if let Some(x) = self.external.as_mut() {
            for t in &mut self.m.initializers {
                if let Err(e) = x.spill(t) {
                    self.spill_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = self.spill_error {
            let x = self.external.as_ref().expect("spills need a file");
            return Err(Error::io(x.path(), e));
        }
        Ok((self.m, self.external))
    }
    /// LayerNorm over the last axis with scale `w` and bias `bias` (GPT-2).
    fn layer_norm(&mut self, x: &str, w: &str, bias: &str, eps: f32) -> String {
        self.op(
            "LayerNormalization",
            &[x, w, bias],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        )
    }
    fn rms_norm(&mut self, x: &str, w: &str, eps: &str) -> String {
        let sq = self.op("Mul", &[x, x], vec![]);
        let ms = self.op(
            "ReduceMean",
            &[&sq],
            vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
        );
        let ms = self.op("Add", &[&ms, eps], vec![]);
        let r = self.op("Sqrt", &[&ms], vec![]);
        let n = self.op("Div", &[x, &r], vec![]);
        self.op("Mul", &[&n, w], vec![])
    }
}

/// One GPT-2 block on the residual stream `x` (returns the name of its output, `hidden_state_{l+1}`):
///
/// ```text
/// a   = LN(x) W_qkv + b_qkv → q, k, v (heads of d / n_heads; 1/√d_head folded into the q part)
/// x'  = x + softmax(q kᵀ + bias) v W_o + b_o        (keys and values after the cached ones)
/// out = x' + GELU_tanh(LN(x') W_up + b_up) W_down + b_down
/// ```
/// llama.cpp's converter stores GPT-2's Conv1D weights transposed, as [out, in] like every other
/// linear weight, so they are read the same way.
#[allow(clippy::too_many_arguments)]
fn gpt2_block(
    b: &mut Builder,
    g: &Gguf,
    cfg: &LlamaConfig,
    l: usize,
    x: &str,
    bias: &str,
    past_expand: &str,
    (gelu_c, gelu_a, f_half, f_one): &(String, String, String, String),
) -> Result<String> {
    let (d, h, hd, ff) = (cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff);
    let eps = cfg.rms_eps;
    let t = |s: &str| format!("blk.{l}.{s}");
    let vec1 = |b: &mut Builder, name: &str, n: usize| -> Result<String> {
        let v = load(g, &t(name), &[n])?;
        Ok(b.weight(&format!("l{l}.{name}"), &[n as i64], &v))
    };
    let ln1 = (vec1(b, "attn_norm.weight", d)?, vec1(b, "attn_norm.bias", d)?);
    let ln2 = (vec1(b, "ffn_norm.weight", d)?, vec1(b, "ffn_norm.bias", d)?);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut wqkv = load(g, &t("attn_qkv.weight"), &[3 * d, d])?;
    wqkv[..d * d].iter_mut().for_each(|w| *w *= scale);
    let wqkv = b.weight(
        &format!("l{l}.wqkv"),
        &[d as i64, (3 * d) as i64],
        &transpose(&wqkv, 3 * d, d),
    );
    let mut bqkv = load(g, &t("attn_qkv.bias"), &[3 * d])?;
    bqkv[..d].iter_mut().for_each(|w| *w *= scale);
    let bqkv = b.weight(&format!("l{l}.bqkv"), &[(3 * d) as i64], &bqkv);
    let wo = load(g, &t("attn_output.weight"), &[d, d])?;
    let wo = b.weight(&format!("l{l}.wo"), &[d as i64, d as i64], &transpose(&wo, d, d));
    let bo = vec1(b, "attn_output.bias", d)?;
    let wup = load(g, &t("ffn_up.weight"), &[ff, d])?;
    let wup = b.weight(&format!("l{l}.wup"), &[d as i64, ff as i64], &transpose(&wup, ff, d));
    let bup = vec1(b, "ffn_up.bias", ff)?;
    let wdown = load(g, &t("ffn_down.weight"), &[d, ff])?;
    let wdown = b.weight(
        &format!("l{l}.wdown"),
        &[ff as i64, d as i64],
        &transpose(&wdown, d, ff),
    );
    let bdown = vec1(b, "ffn_down.bias", d)?;

    // attention
    let hn = b.layer_norm(x, &ln1.0, &ln1.1, eps);
    let qkv = b.op("MatMul", &[&hn, &wqkv], vec![]);
    let qkv = b.op("Add", &[&qkv, &bqkv], vec![]);
    let parts = b.op_multi("Split", &[&qkv, "split_qkv"], vec![("axis", Attr::Int(-1))], 3);
    let q = b.op("Reshape", &[&parts[0], "shape_q"], vec![]); // [B, S, H, D]
    let k = b.op("Reshape", &[&parts[1], "shape_kv"], vec![]);
    let v = b.op("Reshape", &[&parts[2], "shape_kv"], vec![]);
    let perm = || vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))];
    let k_new = b.op("Transpose", &[&k], perm());
    let v_new = b.op("Transpose", &[&v], perm());
    let pk = b.op("Expand", &[&past_key_name(l), past_expand], vec![]);
    let pv = b.op("Expand", &[&past_value_name(l), past_expand], vec![]);
    let (k_all, v_all) = (present_key_name(l), present_value_name(l));
    b.op_named("Concat", &[&pk, &k_new], vec![("axis", Attr::Int(2))], &k_all);
    b.op_named("Concat", &[&pv, &v_new], vec![("axis", Attr::Int(2))], &v_all);
    let qt = b.op("Transpose", &[&q], perm()); // [B, H, S, D]
    let kt = b.op("Transpose", &[&k_all], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]); // [B, H, D, T]
    let scores = b.op("MatMul", &[&qt, &kt], vec![]);
    let scores = b.op("Add", &[&scores, bias], vec![]);
    let probs = b.op("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
    let ctxv = b.op("MatMul", &[&probs, &v_all], vec![]); // [B, H, S, D]
    let ctxv = b.op("Transpose", &[&ctxv], perm());
    let ctxv = b.op("Reshape", &[&ctxv, "shape_attn"], vec![]);
    let attn = b.op("MatMul", &[&ctxv, &wo], vec![]);
    let attn = b.op("Add", &[&attn, &bo], vec![]);
    let x_mid = b.op("Add", &[x, &attn], vec![]);
    debug_assert_eq!(h * hd, d);

    // MLP: GELU, tanh approximation (GPT-2's gelu_new)
    let hn2 = b.layer_norm(&x_mid, &ln2.0, &ln2.1, eps);
    let u = b.op("MatMul", &[&hn2, &wup], vec![]);
    let u = b.op("Add", &[&u, &bup], vec![]);
    let u2 = b.op("Mul", &[&u, &u], vec![]);
    let u3 = b.op("Mul", &[&u2, &u], vec![]);
    let t3 = b.op("Mul", &[&u3, gelu_a], vec![]);
    let t3 = b.op("Add", &[&u, &t3], vec![]);
    let t3 = b.op("Mul", &[&t3, gelu_c], vec![]);
    let t3 = b.op("Tanh", &[&t3], vec![]);
    let t3 = b.op("Add", &[&t3, f_one], vec![]);
    let t3 = b.op("Mul", &[&t3, f_half], vec![]);
    let act = b.op("Mul", &[&u, &t3], vec![]);
    let down = b.op("MatMul", &[&act, &wdown], vec![]);
    let down = b.op("Add", &[&down, &bdown], vec![]);
    let next = hidden_name(l + 1);
    b.op_named("Add", &[&x_mid, &down], vec![], &next);
    Ok(next)
}

/// Transposes a row-major [rows, cols] matrix into [cols, rows].
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Undoes llama.cpp's RoPE row permutation of Q/K weights ([n_heads * head_dim, d_in], row-major):
/// GGUF row h·D + 2b + a holds HF row h·D + a·D/2 + b.
fn unpermute_rope_rows(w: &[f32], n_heads: usize, head_dim: usize, d_in: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for a in 0..2 {
            for b in 0..half {
                let src = (h * head_dim + 2 * b + a) * d_in;
                let dst = (h * head_dim + a * half + b) * d_in;
                out[dst..dst + d_in].copy_from_slice(&w[src..src + d_in]);
            }
        }
    }
    out
}

fn load(g: &Gguf, name: &str, expect: &[usize]) -> Result<Vec<f32>> {
    let (shape, data) = g.tensor_f32(name)?;
    if shape != expect {
        return Err(Error::Model(format!(
            "tensor `{name}` has shape {shape:?}, expected {expect:?}"
        )));
    }
    Ok(data)
}

/// Refuses unsupported tensor types up front, naming the tensor.
fn check_tensor_types(g: &Gguf) -> Result<()> {
    for t in &g.tensors {
        if matches!(t.ggml_type, super::gguf::GgmlType::Other(_)) {
            return Err(Error::Model(format!(
                "tensor `{}` has type {}, which cortexflow cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K)",
                t.name,
                t.ggml_type.name()
            )));
        }
    }
    Ok(())
}

/// Builds the ONNX graph of a Llama-architecture GGUF, weights inline.
pub fn build_llama_graph(g: &Gguf, cfg: &LlamaConfig, opts: &ImportOptions) -> Result<Model> {
    check_tensor_types(g)?;
    Ok(build_graph(g, cfg, opts, None)?.0)
}

/// Builds the graph (tensor types checked by the caller); with `external`, every weight of at least its size threshold is written to
/// that file as it is converted (so the importer never holds the whole model), and the file is
/// handed back unfinished.
fn build_graph(
    g: &Gguf,
    cfg: &LlamaConfig,
    opts: &ImportOptions,
    external: Option<ExternalData>,
) -> Result<(Model, Option<ExternalData>)> {
    let (d, h, kv, hd, ff, v) = (
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.d_ff,
        cfg.vocab_size,
    );
    let ctx = opts.max_context.unwrap_or(cfg.context_length).min(cfg.context_length);
    let mut b = Builder {
        m: Model {
            opset: 17,
            graph_name: "llama".into(),
            ..Default::default()
        },
        n: 0,
        precision: opts.precision,
        external,
        spill_error: None,
    };
    let sym = |s: &str| Dim::Param(s.into());
    b.m.inputs = vec![
        ValueInfo {
            name: "input_ids".into(),
            dtype: DType::I64,
            dims: vec![sym("batch"), sym("seq")],
        },
        ValueInfo {
            name: "attention_mask".into(),
            dtype: DType::I64,
            dims: vec![sym("batch"), sym("seq")],
        },
    ];
    // KV cache: optional inputs `past_key_ℓ` / `past_value_ℓ` (f32 [batch, kv_heads, past,
    // head_dim]), each with a default initializer of the same name (past = 0), so a caller that runs
    // whole windows passes only the ids and the mask.
    let n_blocks = opts.blocks.unwrap_or(cfg.n_layers).min(cfg.n_layers);
    for l in 0..n_blocks {
        for name in [past_key_name(l), past_value_name(l)] {
            b.m.inputs.push(ValueInfo {
                name: name.clone(),
                dtype: DType::F32,
                dims: vec![sym("batch"), Dim::Fixed(kv as i64), sym("past"), Dim::Fixed(hd as i64)],
            });
            b.m.initializers
                .push(Tensor::f32(&name, &[1, kv as i64, 0, hd as i64], &[]));
        }
    }

    // ---- constants
    let eps = b.const_f32_scalar("rms_eps", cfg.rms_eps);
    let c0 = b.const_i64("c_0", &[0]);
    let c1 = b.const_i64("c_1", &[1]);
    let c2 = b.const_i64("c_2", &[2]);
    let c3 = b.const_i64("c_3", &[3]);
    let cneg1 = b.const_i64("c_neg1", &[-1]);
    let cbig = b.const_i64("c_big", &[i64::MAX]);
    b.m.initializers.push(Tensor::i64("c_0s", &[], &[0]));
    b.m.initializers.push(Tensor::i64("c_1s", &[], &[1]));
    b.m.initializers.push(Tensor::i64("c_2s", &[], &[2]));
    let neg_big = b.const_f32_scalar("mask_neg", -1e9);
    let f_zero = b.const_f32_scalar("f_zero", 0.0);
    let axes12 = b.const_i64("axes_12", &[1, 2]);
    let half_i = b.const_i64("c_half", &[(hd / 2) as i64]);
    let hd_i = b.const_i64("c_hd", &[hd as i64]);
    let shape_q = b.const_i64("shape_q", &[0, 0, h as i64, hd as i64]);
    let shape_kv = b.const_i64("shape_kv", &[0, 0, kv as i64, hd as i64]);
    let shape_kv_exp = b.const_i64("shape_kv_expand", &[1, 1, (h / kv) as i64, 1, 1]);
    let shape_heads = b.const_i64("shape_heads", &[0, h as i64, -1, hd as i64]);
    let shape_attn = b.const_i64("shape_attn", &[0, 0, (h * hd) as i64]);
    let split_qkv = b.const_i64("split_qkv", &[(h * hd) as i64, (kv * hd) as i64, (kv * hd) as i64]);
    let split_ff = b.const_i64("split_ff", &[ff as i64, ff as i64]);
    let shape_2d = b.const_i64("shape_2d", &[-1, d as i64]);
    let vocab_i = b.const_i64("c_vocab", &[v as i64]);
    let pads = b.const_i64("pads_next", &[0, 0, 0, 1]);

    // RoPE tables, half-split layout: cos[p, j] = cos(p · base^(−2(j mod D/2)/D)).
    let gemma = cfg.arch == "gemma3";
    let gpt2 = cfg.arch == "gpt2";
    let rope_table = |b: &mut Builder, suffix: &str, base: f64| {
        let mut cos = vec![0f32; ctx * hd];
        let mut sin = vec![0f32; ctx * hd];
        for p in 0..ctx {
            for j in 0..hd {
                let i = (j % (hd / 2)) as f64;
                let theta = p as f64 * base.powf(-2.0 * i / hd as f64);
                cos[p * hd + j] = theta.cos() as f32;
                sin[p * hd + j] = theta.sin() as f32;
            }
        }
        let (c, s) = (format!("rope_cos{suffix}"), format!("rope_sin{suffix}"));
        b.m.initializers.push(Tensor::f32(&c, &[ctx as i64, hd as i64], &cos));
        b.m.initializers.push(Tensor::f32(&s, &[ctx as i64, hd as i64], &sin));
        (c, s)
    };
    // GPT-2 has learned absolute positions instead: no tables (empty ones keep the code below
    // uniform; no node reads them)
    let global_tables = match gpt2 {
        false => rope_table(&mut b, "", cfg.rope_base),
        true => (String::new(), String::new()),
    };
    let local_tables = match gemma {
        true => Some(rope_table(&mut b, "_local", cfg.rope_base_local)),
        false => None,
    };

    // ---- embeddings (Gemma scales them by √d)
    let emb = load(g, "token_embd.weight", &[v, d])?;
    let emb_name = b.weight("token_embd", &[v as i64, d as i64], &emb);
    drop(emb);
    let mut x = hidden_name(0);
    // GPT-2: the token embeddings here, the position embeddings added once positions are known
    let mut gpt2_tokens = None;
    if gpt2 {
        gpt2_tokens = Some(b.op("Gather", &[&emb_name, "input_ids"], vec![("axis", Attr::Int(0))]));
    } else if gemma {
        let e = b.op("Gather", &[&emb_name, "input_ids"], vec![("axis", Attr::Int(0))]);
        let sqrt_d = b.const_f32_scalar("embed_scale", (d as f32).sqrt());
        b.op_named("Mul", &[&e, &sqrt_d], vec![], &x);
    } else {
        b.op_named("Gather", &[&emb_name, "input_ids"], vec![("axis", Attr::Int(0))], &x);
    }

    // ---- positions, and the additive attention bias [B, 1, S, past + S]. A cached key's position
    // is its index in the cache, a query's the past length plus its position in the mask
    // (cumulative sum − 1, so left padding gives the same activations as none): query i sees every
    // cached key and this call's keys up to itself, padding excluded. The cache holds keys before
    // RoPE, so a caller may drop cached tokens (keeping an attention sink) and the positions of the
    // rest simply move down.
    let shape_ids = b.op("Shape", &["input_ids"], vec![]);
    let seq = b.op("Gather", &[&shape_ids, "c_1s"], vec![("axis", Attr::Int(0))]);
    let batch1 = b.op("Slice", &[&shape_ids, &c0, &c1, &c0], vec![]); // [1]: B
    let past_len = if n_blocks > 0 {
        let sp = b.op("Shape", &[&past_key_name(0)], vec![]);
        b.op("Gather", &[&sp, "c_2s"], vec![("axis", Attr::Int(0))])
    } else {
        "c_0s".to_string()
    };
    let cum = b.op("CumSum", &["attention_mask", &c1], vec![]);
    let pos = b.op("Sub", &[&cum, &c1], vec![]);
    let pos = b.op("Max", &[&pos, "c_0s"], vec![]);
    let pos = b.op("Add", &[&pos, &past_len], vec![]); // [B, S]
    if let Some(tok) = &gpt2_tokens {
        let pe = load(g, "position_embd.weight", &[cfg.context_length, d])?;
        let pe = b.weight("position_embd", &[cfg.context_length as i64, d as i64], &pe);
        let pg = b.op("Gather", &[&pe, &pos], vec![("axis", Attr::Int(0))]);
        b.op_named("Add", &[tok, &pg], vec![], &x);
    }
    let ar_past = b.op("Range", &["c_0s", &past_len, "c_1s"], vec![]);
    let ar_past = b.op("Unsqueeze", &[&ar_past, &c0], vec![]);
    let past_1 = b.op("Unsqueeze", &[&past_len, &c0], vec![]);
    let shape_bp = b.op("Concat", &[&batch1, &past_1], vec![("axis", Attr::Int(0))]);
    let ar_past = b.op("Expand", &[&ar_past, &shape_bp], vec![]); // [B, P]
    let kpos = b.op("Concat", &[&ar_past, &pos], vec![("axis", Attr::Int(1))]); // [B, P + S]
                                                                                // per-position cos and sin: queries [B, S, 1, D], keys [B, 1, P + S, D]
    let gather_rope = |b: &mut Builder, (c, s): &(String, String), at: &str, axis: &str| {
        let cg = b.op("Gather", &[c, at], vec![("axis", Attr::Int(0))]);
        let sg = b.op("Gather", &[s, at], vec![("axis", Attr::Int(0))]);
        (
            b.op("Unsqueeze", &[&cg, axis], vec![]),
            b.op("Unsqueeze", &[&sg, axis], vec![]),
        )
    };
    // (in this order: node names number the nodes as they are made)
    let rope_global = match gpt2 {
        false => gather_rope(&mut b, &global_tables, &pos, &c2),
        true => Default::default(),
    };
    let rope_local = local_tables.as_ref().map(|t| gather_rope(&mut b, t, &pos, &c2));
    let rope_global_k = match gpt2 {
        false => gather_rope(&mut b, &global_tables, &kpos, &c1),
        true => Default::default(),
    };
    let rope_local_k = local_tables.as_ref().map(|t| gather_rope(&mut b, t, &kpos, &c1));
    let total = b.op("Add", &[&past_len, &seq], vec![]);
    let ar = b.op("Range", &["c_0s", &seq, "c_1s"], vec![]);
    let ar = b.op("Add", &[&ar, &past_len], vec![]);
    let ar_all = b.op("Range", &["c_0s", &total, "c_1s"], vec![]);
    let rows = b.op("Unsqueeze", &[&ar, &c1], vec![]); // [S, 1]: cache index of each query
    let cols = b.op("Unsqueeze", &[&ar_all, &c0], vec![]); // [1, P + S]
    let causal = b.op("LessOrEqual", &[&cols, &rows], vec![]); // [S, P + S]
    let mask_pads = b.op("Concat", &[&c0, &past_1, &c0, &c0], vec![("axis", Attr::Int(0))]);
    let mask_all = b.op("Pad", &["attention_mask", &mask_pads, "c_1s"], vec![]); // [B, P + S]
    let mask_b = b.op("Cast", &[&mask_all], vec![("to", Attr::Int(DType::Bool as i64))]);
    let key_ok = b.op("Unsqueeze", &[&mask_b, &axes12], vec![]); // [B, 1, 1, P + S]
    let allowed = b.op("And", &[&causal, &key_ok], vec![]); // [B, 1, S, P + S]
                                                            // the default (empty) cache broadcast to the batch: [B, 1, 1, 1]
    let ones3 = b.const_i64("c_ones3", &[1, 1, 1]);
    let past_expand = b.op("Concat", &[&batch1, &ones3], vec![("axis", Attr::Int(0))]);
    let bias = b.op("Where", &[&allowed, &f_zero, &neg_big], vec![]);
    // sliding-window layers: also key position > query position − window
    let bias_local = match cfg.sliding_window {
        Some(w) => {
            let dist = b.op("Sub", &[&rows, &cols], vec![]);
            let w = b.const_i64("c_window", &[w as i64]);
            let near = b.op("Less", &[&dist, &w], vec![]);
            let allowed_local = b.op("And", &[&allowed, &near], vec![]);
            b.op("Where", &[&allowed_local, &f_zero, &neg_big], vec![])
        }
        None => bias.clone(),
    };
    // GELU, tanh approximation (Gemma's gelu_pytorch_tanh), from opset-17 ops
    let gelu = (gemma || gpt2).then(|| {
        (
            b.const_f32_scalar("gelu_c", (2.0f64 / std::f64::consts::PI).sqrt() as f32),
            b.const_f32_scalar("gelu_a", 0.044715),
            b.const_f32_scalar("f_half", 0.5),
            b.const_f32_scalar("f_one", 1.0),
        )
    });

    let scale = 1.0 / (hd as f32).sqrt();
    for l in 0..n_blocks {
        if gpt2 {
            let gelu = gelu.as_ref().expect("GPT-2 uses GELU");
            x = gpt2_block(&mut b, g, cfg, l, &x, &bias, &past_expand, gelu)?;
            continue;
        }
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        // weights
        let attn_norm = load(g, &p("attn_norm"), &[d])?;
        let attn_norm = b.weight(&format!("l{l}.attn_norm"), &[d as i64], &attn_norm);
        // Llama: Q/K rows back from llama.cpp's interleaved RoPE layout, the attention scale
        // folded into W_q. Gemma: half-split layout already, the scale folded into the Q norm
        // (after which it applies).
        let (wq, wk) = if gemma {
            (
                load(g, &p("attn_q"), &[h * hd, d])?,
                load(g, &p("attn_k"), &[kv * hd, d])?,
            )
        } else {
            let mut wq = unpermute_rope_rows(&load(g, &p("attn_q"), &[h * hd, d])?, h, hd, d);
            wq.iter_mut().for_each(|w| *w *= scale);
            let wk = unpermute_rope_rows(&load(g, &p("attn_k"), &[kv * hd, d])?, kv, hd, d);
            (wq, wk)
        };
        let wv = load(g, &p("attn_v"), &[kv * hd, d])?;
        let mut wqkv = wq;
        wqkv.extend_from_slice(&wk);
        wqkv.extend_from_slice(&wv);
        let n_qkv = (h + 2 * kv) * hd;
        let wqkv = b.weight(
            &format!("l{l}.wqkv"),
            &[d as i64, n_qkv as i64],
            &transpose(&wqkv, n_qkv, d),
        );
        let wo = load(g, &p("attn_output"), &[d, h * hd])?;
        let wo = b.weight(
            &format!("l{l}.wo"),
            &[(h * hd) as i64, d as i64],
            &transpose(&wo, d, h * hd),
        );
        let ffn_norm = load(g, &p("ffn_norm"), &[d])?;
        let ffn_norm = b.weight(&format!("l{l}.ffn_norm"), &[d as i64], &ffn_norm);
        let mut wgu = load(g, &p("ffn_gate"), &[ff, d])?;
        wgu.reserve_exact(ff * d);
        wgu.extend_from_slice(&load(g, &p("ffn_up"), &[ff, d])?);
        let wgu_t = transpose(&wgu, 2 * ff, d);
        drop(wgu);
        let wgu = b.weight(&format!("l{l}.wgate_up"), &[d as i64, (2 * ff) as i64], &wgu_t);
        drop(wgu_t);
        let wd = load(g, &p("ffn_down"), &[d, ff])?;
        let wd = b.weight(&format!("l{l}.wdown"), &[ff as i64, d as i64], &transpose(&wd, d, ff));
        // Gemma: QK-norm, and norms after attention and after the MLP
        let gemma_norms = if gemma {
            let mut qn = load(g, &p("attn_q_norm"), &[hd])?;
            qn.iter_mut().for_each(|w| *w *= scale);
            let qn = b.weight(&format!("l{l}.q_norm"), &[hd as i64], &qn);
            let kn = load(g, &p("attn_k_norm"), &[hd])?;
            let kn = b.weight(&format!("l{l}.k_norm"), &[hd as i64], &kn);
            let pa = load(g, &p("post_attention_norm"), &[d])?;
            let pa = b.weight(&format!("l{l}.post_attn_norm"), &[d as i64], &pa);
            let pf = load(g, &p("post_ffw_norm"), &[d])?;
            let pf = b.weight(&format!("l{l}.post_ffw_norm"), &[d as i64], &pf);
            Some((qn, kn, pa, pf))
        } else {
            None
        };
        let global = (l + 1) % cfg.global_every == 0;
        let ((cos_g, sin_g), (cos_k, sin_k)) = match (&rope_local, &rope_local_k, global) {
            (Some(local), Some(local_k), false) => (local.clone(), local_k.clone()),
            _ => (rope_global.clone(), rope_global_k.clone()),
        };
        let layer_bias = if global { bias.clone() } else { bias_local.clone() };

        // attention
        let hn = b.rms_norm(&x, &attn_norm, &eps);
        let qkv = b.op("MatMul", &[&hn, &wqkv], vec![]);
        let parts = b.op_multi("Split", &[&qkv, &split_qkv], vec![("axis", Attr::Int(-1))], 3);
        let q = b.op("Reshape", &[&parts[0], &shape_q], vec![]); // [B, S, H, D]
        let k = b.op("Reshape", &[&parts[1], &shape_kv], vec![]); // [B, S, KV, D]
        let vv = b.op("Reshape", &[&parts[2], &shape_kv], vec![]);
        let (q, k) = match &gemma_norms {
            Some((qn, kn, _, _)) => (b.rms_norm(&q, qn, &eps), b.rms_norm(&k, kn, &eps)),
            None => (q, k),
        };
        let rope = |b: &mut Builder, t: &str, cos: &str, sin: &str| {
            let t1 = b.op("Slice", &[t, &c0, &half_i, &c3], vec![]);
            let t2 = b.op("Slice", &[t, &half_i, &hd_i, &c3], vec![]);
            let n2 = b.op("Neg", &[&t2], vec![]);
            let rot = b.op("Concat", &[&n2, &t1], vec![("axis", Attr::Int(3))]);
            let a = b.op("Mul", &[t, cos], vec![]);
            let c = b.op("Mul", &[&rot, sin], vec![]);
            b.op("Add", &[&a, &c], vec![])
        };
        let q = rope(&mut b, &q, &cos_g, &sin_g);
        // this call's keys (before RoPE) and values after the cached ones: [B, KV, P + S, D], also
        // outputs
        let perm_kv = vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))];
        let k_new = b.op("Transpose", &[&k], perm_kv.clone());
        let v_new = b.op("Transpose", &[&vv], perm_kv);
        let pk = b.op("Expand", &[&past_key_name(l), &past_expand], vec![]);
        let pv = b.op("Expand", &[&past_value_name(l), &past_expand], vec![]);
        let k_all = present_key_name(l);
        let v_all = present_value_name(l);
        b.op_named("Concat", &[&pk, &k_new], vec![("axis", Attr::Int(2))], &k_all);
        b.op_named("Concat", &[&pv, &v_new], vec![("axis", Attr::Int(2))], &v_all);
        let k_rot = rope(&mut b, &k_all, &cos_k, &sin_k);
        let (kh, vh) = if kv != h {
            // [B, KV, 1, T, D] → [B, KV, H/KV, T, D] → [B, H, T, D]
            let k5 = b.op("Unsqueeze", &[&k_rot, &c2], vec![]);
            let k5 = b.op("Expand", &[&k5, &shape_kv_exp], vec![]);
            let v5 = b.op("Unsqueeze", &[&v_all, &c2], vec![]);
            let v5 = b.op("Expand", &[&v5, &shape_kv_exp], vec![]);
            (
                b.op("Reshape", &[&k5, &shape_heads], vec![]),
                b.op("Reshape", &[&v5, &shape_heads], vec![]),
            )
        } else {
            (k_rot, v_all.clone())
        };
        let qt = b.op("Transpose", &[&q], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]); // [B, H, S, D]
        let kt = b.op("Transpose", &[&kh], vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))]); // [B, H, D, T]
        let vt = vh; // [B, H, T, D]
        let scores = b.op("MatMul", &[&qt, &kt], vec![]);
        let scores = b.op("Add", &[&scores, &layer_bias], vec![]);
        let probs = b.op("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
        let ctxv = b.op("MatMul", &[&probs, &vt], vec![]); // [B, H, S, D]
        let ctxv = b.op("Transpose", &[&ctxv], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
        let ctxv = b.op("Reshape", &[&ctxv, &shape_attn], vec![]);
        let attn = b.op("MatMul", &[&ctxv, &wo], vec![]);
        let attn = match &gemma_norms {
            Some((_, _, pa, _)) => b.rms_norm(&attn, pa, &eps),
            None => attn,
        };
        let x_mid = b.op("Add", &[&x, &attn], vec![]);

        // MLP
        let hn2 = b.rms_norm(&x_mid, &ffn_norm, &eps);
        let gu = b.op("MatMul", &[&hn2, &wgu], vec![]);
        let gu = b.op_multi("Split", &[&gu, &split_ff], vec![("axis", Attr::Int(-1))], 2);
        let act = if let Some((gelu_c, gelu_a, f_half, f_one)) = &gelu {
            // 0.5 g (1 + tanh(√(2/π) (g + 0.044715 g³)))
            let g2 = b.op("Mul", &[&gu[0], &gu[0]], vec![]);
            let g3 = b.op("Mul", &[&g2, &gu[0]], vec![]);
            let t = b.op("Mul", &[&g3, gelu_a], vec![]);
            let t = b.op("Add", &[&gu[0], &t], vec![]);
            let t = b.op("Mul", &[&t, gelu_c], vec![]);
            let t = b.op("Tanh", &[&t], vec![]);
            let t = b.op("Add", &[&t, f_one], vec![]);
            let t = b.op("Mul", &[&t, f_half], vec![]);
            b.op("Mul", &[&gu[0], &t], vec![])
        } else {
            let sig = b.op("Sigmoid", &[&gu[0]], vec![]);
            b.op("Mul", &[&gu[0], &sig], vec![])
        };
        let m = b.op("Mul", &[&act, &gu[1]], vec![]);
        let down = b.op("MatMul", &[&m, &wd], vec![]);
        let down = match &gemma_norms {
            Some((_, _, _, pf)) => b.rms_norm(&down, pf, &eps),
            None => down,
        };
        let next = hidden_name(l + 1);
        b.op_named("Add", &[&x_mid, &down], vec![], &next);
        x = next;
    }

    let f = DType::F32;
    for l in 0..n_blocks {
        for name in [present_key_name(l), present_value_name(l)] {
            b.m.outputs.push(ValueInfo {
                name,
                dtype: f,
                dims: vec![sym("batch"), Dim::Fixed(kv as i64), sym("total"), Dim::Fixed(hd as i64)],
            });
        }
    }
    if opts.blocks.is_some() {
        for i in 0..=n_blocks {
            b.m.outputs.push(ValueInfo {
                name: hidden_name(i),
                dtype: f,
                dims: vec![sym("batch"), sym("seq"), Dim::Fixed(d as i64)],
            });
        }
        b.m.doc = format!("The first {n_blocks} blocks of a Llama decoder, exported by cortexflow (no LM head)");
        return b.finish();
    }

    // ---- final norm and LM head (tied to the embeddings unless `output.weight` exists)
    let out_norm = load(g, "output_norm.weight", &[d])?;
    let out_norm = b.weight("output_norm", &[d as i64], &out_norm);
    let hn = if gpt2 {
        let nb = load(g, "output_norm.bias", &[d])?;
        let nb = b.weight("output_norm_bias", &[d as i64], &nb);
        b.layer_norm(&x, &out_norm, &nb, cfg.rms_eps)
    } else {
        b.rms_norm(&x, &out_norm, &eps)
    };
    let head = if g.tensor("output.weight").is_some() {
        let w = load(g, "output.weight", &[v, d])?;
        b.weight("lm_head", &[v as i64, d as i64], &w)
    } else {
        emb_name.clone()
    };
    let vocab_s = b.const_i64_scalar("c_vocab_s", v as i64);
    let c_true = "c_true".to_string();
    b.m.initializers.push(Tensor::bool(&c_true, &[], &[true]));

    // `logits` [B, S, V] only when the caller sets `want_logits` (an `If`: ONNX Runtime runs every
    // node of a graph whatever outputs are asked for, so a plain output would be computed on
    // every call); otherwise an empty [0, 0, V].
    b.m.inputs.push(ValueInfo {
        name: WANT_LOGITS.into(),
        dtype: DType::Bool,
        dims: vec![],
    });
    b.m.initializers.push(Tensor::bool(WANT_LOGITS, &[], &[false]));
    b.m.initializers
        .push(Tensor::f32("logits_none", &[0, 0, v as i64], &[]));
    let any3 = |p: &str| vec![sym(&format!("{p}_b")), sym(&format!("{p}_s")), Dim::Fixed(v as i64)];
    let saved = b.begin_subgraph();
    let flat = b.op("Reshape", &[&hn, &shape_2d], vec![]);
    let logits2 = b.op("Gemm", &[&flat, &head], vec![("transB", Attr::Int(1))]);
    let bs = b.op("Slice", &[&shape_ids, &c0, &c2, &c0], vec![]);
    let shape3 = b.op("Concat", &[&bs, &vocab_i], vec![("axis", Attr::Int(0))]);
    let full = b.op("Reshape", &[&logits2, &shape3], vec![]);
    let then_nodes = b.end_subgraph(saved);
    let saved = b.begin_subgraph();
    let none = b.op("Identity", &["logits_none"], vec![]);
    let else_nodes = b.end_subgraph(saved);
    let branch = |name: &str, nodes: Vec<Node>, out: &str| {
        Attr::Graph(Box::new(Graph {
            name: name.into(),
            nodes,
            inputs: vec![],
            outputs: vec![ValueInfo {
                name: out.into(),
                dtype: DType::F32,
                dims: any3(name),
            }],
        }))
    };
    b.op_named(
        "If",
        &[WANT_LOGITS],
        vec![
            ("then_branch", branch("logits_full", then_nodes, &full)),
            ("else_branch", branch("logits_none", else_nodes, &none)),
        ],
        "logits",
    );

    // ---- next-token log-probability and entropy (nats), by a `Loop` over n = ⌈S/C₀⌉ chunks of
    // C = ⌈S/n⌉ positions, C₀ = max(1, ⌊2^24 / (B·V)⌋): at most 2^24 logits (64 MB) are alive at
    // once, whatever the batch, sequence length and vocabulary. The positions are zero-padded to
    // n·C (fewer than n extra) so every iteration has the same shape, and the padding is cut off
    // afterwards.
    let nxt = b.op("Slice", &["input_ids", &c1, &cbig, &c1], vec![]);
    let nxt = b.op("Pad", &[&nxt, &pads], vec![]);
    // only positions from `score_from` on are scored (an optional scalar input, default 0, held
    // within [0, S − 1]): overlapping windows need the head only where a window's own tokens are
    // (importer r6); the positions before it are 0 in both outputs
    b.m.inputs.push(ValueInfo {
        name: SCORE_FROM_INPUT.into(),
        dtype: DType::I64,
        dims: vec![],
    });
    let from = b.const_i64_scalar(SCORE_FROM_INPUT, 0);
    let last_pos = b.op("Sub", &[&seq, "c_1s"], vec![]);
    let from = b.op("Min", &[&from, &last_pos], vec![]);
    let from = b.op("Max", &[&from, "c_0s"], vec![]);
    let from1 = b.op("Unsqueeze", &[&from, &c0], vec![]);
    let hn_scored = b.op("Slice", &[&hn, &from1, &cbig, &c1], vec![]);
    let nxt = b.op("Slice", &[&nxt, &from1, &cbig, &c1], vec![]);
    // the scored positions S − from (the Loop below runs over them; `seq` stays S)
    let seq_scored = b.op("Sub", &[&seq, &from], vec![]);
    let batch_s = b.op("Gather", &[&shape_ids, "c_0s"], vec![("axis", Attr::Int(0))]);
    let bv = b.op("Mul", &[&batch_s, &vocab_s], vec![]);
    // the budget is an optional input (default 2^24) so a caller or a test can change it
    b.m.inputs.push(ValueInfo {
        name: LOGIT_BUDGET_INPUT.into(),
        dtype: DType::I64,
        dims: vec![],
    });
    let budget = b.const_i64_scalar(LOGIT_BUDGET_INPUT, LOGIT_BUDGET);
    let cl = b.op("Div", &[&budget, &bv], vec![]);
    let cl = b.op("Max", &[&cl, "c_1s"], vec![]);
    let cl_m1 = b.op("Sub", &[&cl, "c_1s"], vec![]);
    let n_iter = b.op("Add", &[&seq_scored, &cl_m1], vec![]);
    let n_iter = b.op("Div", &[&n_iter, &cl], vec![]);
    // the positions spread evenly over the n chunks, C = ⌈S/n⌉ (no more than the budget allows),
    // so fewer than n padded positions are scored (with C from the budget alone, a 255-token call
    // under a 341-position budget scored 86 padding rows of the vocabulary, a third of its head)
    let n_m1 = b.op("Sub", &[&n_iter, "c_1s"], vec![]);
    let cl = b.op("Add", &[&seq_scored, &n_m1], vec![]);
    let cl = b.op("Div", &[&cl, &n_iter], vec![]);
    let padded = b.op("Mul", &[&n_iter, &cl], vec![]);
    let pad_len = b.op("Sub", &[&padded, &seq_scored], vec![]);
    let pad_len1 = b.op("Unsqueeze", &[&pad_len, &c0], vec![]);
    let cl1 = b.op("Unsqueeze", &[&cl, &c0], vec![]);
    let zeros3 = b.const_i64("c_zeros3", &[0, 0, 0]);
    let zeros4 = b.const_i64("c_zeros4", &[0, 0, 0, 0]);
    let pads_h = b.op("Concat", &[&zeros4, &pad_len1, &c0], vec![("axis", Attr::Int(0))]);
    let hn_pad = b.op("Pad", &[&hn_scored, &pads_h], vec![]);
    let pads_n = b.op("Concat", &[&zeros3, &pad_len1], vec![("axis", Attr::Int(0))]);
    let nxt_pad = b.op("Pad", &[&nxt, &pads_n], vec![]);
    let col = b.const_i64("shape_col", &[-1, 1]);
    let shape_bc = b.op("Concat", &[&cneg1, &cl1], vec![("axis", Attr::Int(0))]);
    // the body: iteration i scores positions [i·C, (i+1)·C)
    let saved = b.begin_subgraph();
    let (it, cond) = ("lp_iter", "lp_cond");
    let start = b.op("Mul", &[it, &cl], vec![]);
    let start1 = b.op("Unsqueeze", &[&start, &c0], vec![]);
    let end1 = b.op("Add", &[&start1, &cl1], vec![]);
    let h_c = b.op("Slice", &[&hn_pad, &start1, &end1, &c1], vec![]);
    let h2 = b.op("Reshape", &[&h_c, &shape_2d], vec![]);
    let lg = b.op("Gemm", &[&h2, &head], vec![("transB", Attr::Int(1))]);
    let lsm = b.op("LogSoftmax", &[&lg], vec![("axis", Attr::Int(-1))]);
    let p = b.op("Exp", &[&lsm], vec![]);
    let plogp = b.op("Mul", &[&p, &lsm], vec![]);
    let neg_h = b.op("ReduceSum", &[&plogp, &cneg1], vec![("keepdims", Attr::Int(0))]);
    let ent = b.op("Neg", &[&neg_h], vec![]);
    let n_c = b.op("Slice", &[&nxt_pad, &start1, &end1, &c1], vec![]);
    let n2 = b.op("Reshape", &[&n_c, &col], vec![]);
    let lp = b.op("GatherElements", &[&lsm, &n2], vec![("axis", Attr::Int(1))]);
    let lp = b.op("Reshape", &[&lp, &shape_bc], vec![]);
    let ent = b.op("Reshape", &[&ent, &shape_bc], vec![]);
    let cond_out = b.op("Identity", &[cond], vec![]);
    let body_nodes = b.end_subgraph(saved);
    let chunk_vi = |name: &str| ValueInfo {
        name: name.into(),
        dtype: DType::F32,
        dims: vec![sym("lp_b"), sym("lp_c")],
    };
    let scalar = |name: &str, dtype: DType| ValueInfo {
        name: name.into(),
        dtype,
        dims: vec![],
    };
    let body = Graph {
        name: "next_token_chunk".into(),
        nodes: body_nodes,
        inputs: vec![scalar(it, DType::I64), scalar(cond, DType::Bool)],
        outputs: vec![scalar(&cond_out, DType::Bool), chunk_vi(&lp), chunk_vi(&ent)],
    };
    let scans = b.op_multi(
        "Loop",
        &[&n_iter, &c_true],
        vec![("body", Attr::Graph(Box::new(body)))],
        2,
    );
    // [n, B, C] → [B, n·C] → [B, S]
    let seq1 = b.op("Unsqueeze", &[&seq_scored, &c0], vec![]);
    let keep_b = b.const_i64("shape_b_flat", &[0, -1]);
    let unchunk = |b: &mut Builder, t: &str| {
        let t = b.op("Transpose", &[t], vec![("perm", Attr::Ints(vec![1, 0, 2]))]);
        let t = b.op("Reshape", &[&t, &keep_b], vec![]);
        b.op("Slice", &[&t, &c0, &seq1, &c1], vec![])
    };
    // [B, S − from] → [B, S]: zeros before `score_from`
    let pads_from = b.op("Concat", &[&c0, &from1, &c0, &c0], vec![("axis", Attr::Int(0))]);
    let unchunk = |b: &mut Builder, t: &str| {
        let t = unchunk(b, t);
        b.op("Pad", &[&t, &pads_from], vec![])
    };
    let lp = unchunk(&mut b, &scans[0]);
    let ent = unchunk(&mut b, &scans[1]);
    b.op_named("Identity", &[&ent], vec![], "next_token_entropy");
    // zero where there is no real next token (the last position, and before right padding)
    let has_next = b.op("Slice", &["attention_mask", &c1, &cbig, &c1], vec![]);
    let has_next = b.op("Pad", &[&has_next, &pads], vec![]);
    let has_next = b.op("Cast", &[&has_next], vec![("to", Attr::Int(DType::F32 as i64))]);
    b.op_named("Mul", &[&lp, &has_next], vec![], "next_token_logprob");
    // the last position's log-probabilities [B, vocab]: a caller streaming a story in chunks
    // scores the next chunk's first token with them
    let last = b.op("Sub", &[&seq, "c_1s"], vec![]);
    let h_last = b.op("Gather", &[&hn, &last], vec![("axis", Attr::Int(1))]);
    let lg_last = b.op("Gemm", &[&h_last, &head], vec![("transB", Attr::Int(1))]);
    b.op_named("LogSoftmax", &[&lg_last], vec![("axis", Attr::Int(-1))], LAST_LOGPROBS);

    b.m.outputs.push(ValueInfo {
        name: "logits".into(),
        dtype: f,
        // [batch, seq, vocab] when `want_logits` is set, else [0, 0, vocab]
        dims: vec![sym("logits_batch"), sym("logits_seq"), Dim::Fixed(v as i64)],
    });
    for i in 0..=cfg.n_layers {
        b.m.outputs.push(ValueInfo {
            name: hidden_name(i),
            dtype: f,
            dims: vec![sym("batch"), sym("seq"), Dim::Fixed(d as i64)],
        });
    }
    for n in ["next_token_logprob", "next_token_entropy"] {
        b.m.outputs.push(ValueInfo {
            name: n.into(),
            dtype: f,
            dims: vec![sym("batch"), sym("seq")],
        });
    }
    b.m.outputs.push(ValueInfo {
        name: LAST_LOGPROBS.into(),
        dtype: f,
        dims: vec![sym("batch"), Dim::Fixed(v as i64)],
    });
    b.m.metadata.push((
        "source".into(),
        g.path()
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    ));
    b.m.doc = "Llama decoder exported by cortexflow with every residual-stream layer as an output".into();
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // llama.cpp: w.reshape(H, 2, D/2, d_in).swapaxes(1, 2).reshape(...)
        let (heads, hd, d_in) = (2, 4, 3);
        let hf: Vec<f32> = (0..heads * hd * d_in).map(|i| i as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for a in 0..2 {
                for bb in 0..hd / 2 {
                    for c in 0..d_in {
                        // permuted[h, bb, a] = hf[h, a, bb]
                        gguf[((h * hd) + bb * 2 + a) * d_in + c] = hf[((h * hd) + a * (hd / 2) + bb) * d_in + c];
                    }
                }
            }
        }
        assert_eq!(unpermute_rope_rows(&gguf, heads, hd, d_in), hf);
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        assert_eq!(transpose(&[1., 2., 3., 4., 5., 6.], 2, 3), vec![1., 4., 2., 5., 3., 6.]);
    }
}
