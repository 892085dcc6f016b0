//! ONNX Runtime: loading the shared library once per process, and one decoder session.
//!
//! Input: a model folder (`model.onnx` + `tokenizer.json` + `manifest.json`). Output: for a batch
//! of token windows (BOS first, right-padded), the residual stream of the requested layers
//! ([batch, seq, d_model] each) and the next-token log-probability and entropy ([batch, seq], nats);
//! or, for graphs with a key/value cache, one sequence's next tokens after a [`KvState`]
//! ([`LanguageModel::run_cached`]). Models whose graph lacks the in-graph log-probability outputs get them computed here from
//! `logits` (a second implementation, also used to cross-check the imported graph in tests).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array2, Array3, ArrayView3, Axis};
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::{Tensor, TensorRef};

use super::manifest::Manifest;
use crate::{Error, Result};

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads the ONNX Runtime library (from `ORT_DYLIB_PATH` or the cache) and creates the process-wide
/// environment; later calls return the same one. Errors name the file and the command that fetches it.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    let env = ENV.get_or_init(|| {
        let lib = crate::paths::ort_library().map_err(|e| e.to_string())?;
        let builder = ort::init_from(&lib)
            .map_err(|e| format!("cannot load {}: {e}; {}", lib.display(), crate::paths::SETUP_HINT))?;
        builder
            .with_name("cortexflow")
            .build()
            .map_err(|e| format!("cannot create the environment: {e}"))
    });
    env.as_ref().map_err(|e| Error::Runtime(e.clone()))
}

fn rt<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Runtime(format!("{what}: {e}"))
}

/// Session options.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Intra-op threads (default: available cores).
    pub threads: usize,
    /// Let ONNX Runtime pre-pack the weight matrices at load (its default): faster matrix
    /// products, but a second copy of those weights in memory. Off, Gemma 3 270M extraction of
    /// Alice at batch 4 peaks at 2.51 GB instead of 3.18 GB and runs ~15% slower; the other
    /// kernels change values in the last bits (activations 2e-6 relative, surprisal 3e-5 bits).
    pub prepack: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            prepack: true,
        }
    }
}

impl RuntimeOptions {
    /// `threads` intra-op threads, the other settings at their defaults.
    pub fn with_threads(threads: usize) -> Self {
        RuntimeOptions {
            threads,
            ..Default::default()
        }
    }
}

/// The outputs of one batch.
pub struct BatchOutput {
    /// One entry per requested layer, in request order: (batch, seq, d_model).
    pub hidden: Vec<Array3<f32>>,
    /// ln p(token at t+1 | tokens ≤ t), (batch, seq), nats.
    pub next_logprob: Array2<f32>,
    /// Entropy of the next-token distribution at t, (batch, seq), nats.
    pub next_entropy: Array2<f32>,
}

/// The outputs of one batch as views into ONNX Runtime's buffers (valid inside
/// [`LanguageModel::run_with`]).
pub struct BatchView<'a> {
    /// One entry per requested layer, in request order: (batch, seq, d_model).
    pub hidden: Vec<ArrayView3<'a, f32>>,
    /// ln p(token at t+1 | tokens ≤ t), (batch, seq), nats.
    pub next_logprob: Array2<f32>,
    /// Entropy of the next-token distribution at t, (batch, seq), nats.
    pub next_entropy: Array2<f32>,
}

/// A decoder ready to run: session, tokenizer and manifest.
pub struct LanguageModel {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tokenizer: tokenizers::Tokenizer,
    session: Session,
    pad_id: i64,
}

impl LanguageModel {
    /// Loads `dir/model.onnx`, `dir/tokenizer.json` and `dir/manifest.json`, and checks that the
    /// graph has the inputs and outputs the manifest names.
    pub fn load(dir: &Path, opts: &RuntimeOptions) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(Error::io(
                &tok_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no tokenizer.json"),
            ));
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::parse(&tok_path, "tokenizer", e.to_string()))?;
        let onnx = dir.join("model.onnx");
        if !onnx.is_file() {
            return Err(Error::io(
                &onnx,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no model.onnx"),
            ));
        }
        if let Some(f) = &manifest.external_data {
            let data = dir.join(f);
            if !data.is_file() {
                return Err(Error::io(
                    &data,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the manifest's `external_data` (the weights of model.onnx) is missing",
                    ),
                ));
            }
        }
        let env = environment()?;
        let session = Session::builder(env)
            .map_err(rt("session options"))?
            .with_intra_threads(opts.threads.max(1))
            .map_err(rt("intra-op threads"))?
            .with_inter_threads(1)
            .map_err(rt("inter-op threads"))?
            .with_config_entry("session.disable_prepacking", if opts.prepack { "0" } else { "1" })
            .map_err(rt("pre-packing"))?
            .commit_from_file(&onnx)
            .map_err(|e| Error::Runtime(format!("cannot load {}: {e}", onnx.display())))?;
        let inputs: Vec<String> = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let outputs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        let mut need_in = vec![manifest.input_ids.clone()];
        need_in.extend(manifest.attention_mask.clone());
        for n in need_in {
            if !inputs.contains(&n) {
                return Err(Error::Model(format!(
                    "{}: the manifest names input `{n}` but the graph's inputs are {inputs:?}",
                    onnx.display()
                )));
            }
        }
        let mut need_out = manifest.hidden_states.clone();
        need_out.extend(manifest.logits.clone());
        need_out.extend(manifest.next_token_logprob.clone());
        need_out.extend(manifest.next_token_entropy.clone());
        for n in need_out {
            if !outputs.contains(&n) {
                return Err(Error::Model(format!(
                    "{}: the manifest names output `{n}` but the graph has no such output",
                    onnx.display()
                )));
            }
        }
        let pad_id = manifest.bos_token_id.unwrap_or(0) as i64;
        Ok(LanguageModel {
            dir: dir.to_path_buf(),
            manifest,
            tokenizer,
            session,
            pad_id,
        })
    }

    /// Whether the graph has its LM head (next-token log-probabilities); a graph cut after some
    /// block ([`crate::lm::ImportOptions::blocks`]) gives hidden states only.
    pub fn has_head(&self) -> bool {
        let m = &self.manifest;
        (m.next_token_logprob.is_some() && m.next_token_entropy.is_some()) || m.logits.is_some()
    }

    /// Number of blocks; valid layer indices are 0 (embeddings) ..= n_layers.
    pub fn n_layers(&self) -> usize {
        self.manifest.n_layers
    }

    /// Checks a batch and the requested layers; returns (batch, seq, ids, mask), right-padded.
    fn pack(&self, windows: &[Vec<u32>], layers: &[usize]) -> Result<(usize, usize, Vec<i64>, Vec<i64>)> {
        let b = windows.len();
        let s = windows.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || s == 0 {
            return Err(Error::Invalid("empty batch".into()));
        }
        if s > self.manifest.context_length {
            return Err(Error::Invalid(format!(
                "a window of {s} tokens exceeds the model's context length {}",
                self.manifest.context_length
            )));
        }
        for &l in layers {
            if l > self.manifest.n_layers {
                return Err(layer_error(l, self.manifest.n_layers));
            }
        }
        let mut ids = vec![self.pad_id; b * s];
        let mut mask = vec![0i64; b * s];
        for (i, w) in windows.iter().enumerate() {
            for (j, &t) in w.iter().enumerate() {
                ids[i * s + j] = t as i64;
                mask[i * s + j] = 1;
            }
        }
        Ok((b, s, ids, mask))
    }

    /// Runs a batch of token windows (each already holding BOS if the model wants it), right-padded
    /// to the longest. Returns the requested layers and next-token statistics (copied out of ONNX
    /// Runtime's buffers; [`LanguageModel::run_with`] avoids the copy).
    pub fn run(&mut self, windows: &[Vec<u32>], layers: &[usize]) -> Result<BatchOutput> {
        self.run_with(windows, layers, |v| BatchOutput {
            hidden: v.hidden.iter().map(|h| h.to_owned()).collect(),
            next_logprob: v.next_logprob.clone(),
            next_entropy: v.next_entropy.clone(),
        })
    }

    /// As [`LanguageModel::run`], but hands `f` views of the hidden states in ONNX Runtime's own
    /// output buffers (no copy of the (batch, seq, d_model) tensors).
    pub fn run_with<R>(
        &mut self,
        windows: &[Vec<u32>],
        layers: &[usize],
        f: impl FnOnce(&BatchView<'_>) -> R,
    ) -> Result<R> {
        self.run_scored_from(windows, layers, 0, f)
    }

    /// As [`LanguageModel::run_with`], with the next-token statistics needed only from position
    /// `score_from` on (in every window of the batch): a graph with a `score_from` input (the
    /// manifest's) skips the LM head before it and gives 0 there; any other graph scores every
    /// position. Positions from `score_from` on are the same either way.
    pub fn run_scored_from<R>(
        &mut self,
        windows: &[Vec<u32>],
        layers: &[usize],
        score_from: usize,
        f: impl FnOnce(&BatchView<'_>) -> R,
    ) -> Result<R> {
        let (b, s, ids, mask) = self.pack(windows, layers)?;
        let m = &self.manifest;
        let in_graph = m.next_token_logprob.is_some() && m.next_token_entropy.is_some();
        let mut sel = OutputSelector::no_default();
        for &l in layers {
            sel = sel.with(m.hidden_states[l].clone());
        }
        if in_graph {
            sel = sel
                .with(m.next_token_logprob.clone().unwrap())
                .with(m.next_token_entropy.clone().unwrap());
        } else {
            sel = sel.with(m.logits.clone().expect("checked by Manifest::check"));
        }
        let options = RunOptions::new().map_err(rt("run options"))?.with_outputs(sel);
        let mut inputs = model_inputs(m, [b, s], ids.clone(), mask.clone(), !in_graph)?;
        if let (true, Some(name)) = (in_graph && score_from > 0, &m.score_from) {
            let t = Tensor::from_array(((), vec![score_from as i64])).map_err(rt(name))?;
            inputs.push((name.clone().into(), t.into()));
        }
        let hidden_names: Vec<String> = layers.iter().map(|&l| m.hidden_states[l].clone()).collect();
        let (lp_name, ent_name, logits_name) = (
            m.next_token_logprob.clone(),
            m.next_token_entropy.clone(),
            m.logits.clone(),
        );
        let d_model = m.d_model;
        let outputs = self
            .session
            .run_with_options(inputs, &options)
            .map_err(rt("inference"))?;
        let hidden = hidden_views(&outputs, &hidden_names, [b, s, d_model])?;
        let (next_logprob, next_entropy) = if in_graph {
            let get = |n: &str| -> Result<Array2<f32>> {
                let v = outputs[n].try_extract_array::<f32>().map_err(rt(n))?;
                Ok(v.into_dimensionality::<ndarray::Ix2>().map_err(rt(n))?.to_owned())
            };
            (get(lp_name.as_deref().unwrap())?, get(ent_name.as_deref().unwrap())?)
        } else {
            let name = logits_name.as_deref().unwrap();
            let v = outputs[name].try_extract_array::<f32>().map_err(rt(name))?;
            let v = v.into_dimensionality::<ndarray::Ix3>().map_err(rt(name))?;
            next_token_stats(v, &ids, &mask, s)
        };
        Ok(f(&BatchView {
            hidden,
            next_logprob,
            next_entropy,
        }))
    }
}

/// The key/value cache of one sequence: per block, keys (before RoPE) and values, each
/// [kv_heads, len, head_dim] row-major. A token's position is its index here.
///
/// The buffers are handed to ONNX Runtime as borrowed inputs, and a call's `present_*` outputs
/// are copied into a second set that then takes their place, so a long story reuses the same
/// allocations call after call (no fresh pages to fault in, no per-element copies).
#[derive(Debug, Clone)]
pub struct KvState {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Where the next call's outputs go (swapped with `keys` / `values` after the call).
    spare_keys: Vec<Vec<f32>>,
    spare_values: Vec<Vec<f32>>,
    len: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl KvState {
    /// Cached tokens.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `sink` tokens and the last `recent` ones (their positions move down), in
    /// place.
    pub fn retain(&mut self, sink: usize, recent: usize) {
        if sink + recent >= self.len {
            return;
        }
        let (len, hd) = (self.len, self.head_dim);
        let new_len = sink + recent;
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            // head h moves from h·len to h·new_len; every source lies at or after its destination,
            // so copying the heads in order never overwrites rows still to be moved
            for h in 0..self.kv_heads {
                let (src, dst) = (h * len * hd, h * new_len * hd);
                buf.copy_within(src..src + sink * hd, dst);
                buf.copy_within(src + (len - recent) * hd..src + len * hd, dst + sink * hd);
            }
            buf.truncate(self.kv_heads * new_len * hd);
        }
        self.len = new_len;
    }
}

/// The outputs of one [`LanguageModel::run_cached`] call (one sequence).
pub struct CachedOutput {
    /// One (seq, d_model) matrix per requested layer, in request order.
    pub hidden: Vec<Array2<f32>>,
    /// ln p(token at t+1 | tokens ≤ t) within the call (0 at the last position), nats.
    pub next_logprob: Vec<f32>,
    /// Entropy of the next-token distribution at t, nats.
    pub next_entropy: Vec<f32>,
    /// ln p(· | every token so far) after the last position (vocab), when the graph has a head.
    pub last_logprobs: Option<Vec<f32>>,
}

/// The outputs of one cached call as views into ONNX Runtime's buffers (valid inside
/// [`LanguageModel::run_cached_with`]).
pub struct CachedView<'a> {
    /// One (seq, d_model) view per requested layer, in request order.
    pub hidden: Vec<ndarray::ArrayView2<'a, f32>>,
    /// ln p(token at t+1 | tokens ≤ t) within the call (0 at the last position), nats.
    pub next_logprob: Vec<f32>,
    /// Entropy of the next-token distribution at t, nats.
    pub next_entropy: Vec<f32>,
    /// ln p(· | every token so far) after the last position (vocab), when the graph has a head.
    pub last_logprobs: Option<Vec<f32>>,
}

impl LanguageModel {
    /// Whether the graph can stream through a key/value cache ([`LanguageModel::run_cached`]).
    pub fn has_kv_cache(&self) -> bool {
        self.manifest.kv_cache.is_some()
    }

    /// An empty cache for this model.
    pub fn empty_cache(&self) -> Result<KvState> {
        let kv = self.manifest.kv_cache.as_ref().ok_or_else(|| no_cache(&self.dir))?;
        let blocks = kv.past_key.len();
        Ok(KvState {
            keys: vec![Vec::new(); blocks],
            values: vec![Vec::new(); blocks],
            spare_keys: vec![Vec::new(); blocks],
            spare_values: vec![Vec::new(); blocks],
            len: 0,
            kv_heads: kv.kv_heads,
            head_dim: kv.head_dim,
        })
    }

    /// Runs `ids` (one sequence; BOS included when it starts the sequence) after the tokens in
    /// `cache`, and appends them to it. Every new token sees every cached one. The hidden states
    /// are copied out of ONNX Runtime's buffers; [`LanguageModel::run_cached_with`] avoids that.
    pub fn run_cached(&mut self, ids: &[u32], cache: &mut KvState, layers: &[usize]) -> Result<CachedOutput> {
        self.run_cached_with(ids, cache, layers, |v| CachedOutput {
            hidden: v.hidden.iter().map(|h| h.to_owned()).collect(),
            next_logprob: v.next_logprob.clone(),
            next_entropy: v.next_entropy.clone(),
            last_logprobs: v.last_logprobs.clone(),
        })
    }

    /// As [`LanguageModel::run_cached`], handing `f` views of the hidden states in ONNX Runtime's
    /// own output buffers.
    pub fn run_cached_with<R>(
        &mut self,
        ids: &[u32],
        cache: &mut KvState,
        layers: &[usize],
        f: impl FnOnce(&CachedView<'_>) -> R,
    ) -> Result<R> {
        let (_, s, ids, mask) = self.pack(&[ids.to_vec()], layers)?;
        let m = &self.manifest;
        let kv = m.kv_cache.as_ref().ok_or_else(|| no_cache(&self.dir))?;
        if cache.len + s > m.context_length {
            return Err(Error::Invalid(format!(
                "{} cached + {s} new tokens exceed the model's context length {}",
                cache.len, m.context_length
            )));
        }
        let in_graph = m.next_token_logprob.is_some() && m.next_token_entropy.is_some();
        let mut sel = OutputSelector::no_default();
        for &l in layers {
            sel = sel.with(m.hidden_states[l].clone());
        }
        for n in kv.present_key.iter().chain(&kv.present_value) {
            sel = sel.with(n.clone());
        }
        if in_graph {
            sel = sel
                .with(m.next_token_logprob.clone().unwrap())
                .with(m.next_token_entropy.clone().unwrap());
            if let Some(n) = &kv.last_logprobs {
                sel = sel.with(n.clone());
            }
        } else if let Some(n) = &m.logits {
            sel = sel.with(n.clone());
        }
        let options = RunOptions::new().map_err(rt("run options"))?.with_outputs(sel);
        let mut inputs = model_inputs(m, [1, s], ids.clone(), mask.clone(), !in_graph)?;
        let (kv_heads, head_dim, past) = (cache.kv_heads, cache.head_dim, cache.len);
        let shape = [1, kv_heads, past, head_dim];
        for (names, bufs) in [(&kv.past_key, &cache.keys), (&kv.past_value, &cache.values)] {
            for (n, buf) in names.iter().zip(bufs.iter()) {
                let t = TensorRef::from_array_view((shape, buf.as_slice())).map_err(rt(n))?;
                inputs.push((n.clone().into(), t.into()));
            }
        }
        let outputs = self
            .session
            .run_with_options(inputs, &options)
            .map_err(rt("inference"))?;
        let names: Vec<String> = layers.iter().map(|&l| m.hidden_states[l].clone()).collect();
        let hidden: Vec<_> = hidden_views(&outputs, &names, [1, s, m.d_model])?
            .into_iter()
            .map(|v| v.index_axis_move(Axis(0), 0))
            .collect();
        let total = past + s;
        for (names, bufs) in [
            (&kv.present_key, &mut cache.spare_keys),
            (&kv.present_value, &mut cache.spare_values),
        ] {
            for (n, buf) in names.iter().zip(bufs.iter_mut()) {
                let v = outputs[n.as_str()].try_extract_array::<f32>().map_err(rt(n))?;
                if v.shape() != [1, kv_heads, total, head_dim] {
                    return Err(Error::Model(format!("output `{n}` has shape {:?}", v.shape())));
                }
                buf.clear();
                match v.as_slice() {
                    Some(x) => buf.extend_from_slice(x),
                    None => buf.extend(v.iter().copied()),
                }
            }
        }
        let row = |n: &str| -> Result<Vec<f32>> {
            let v = outputs[n].try_extract_array::<f32>().map_err(rt(n))?;
            Ok(match v.as_slice() {
                Some(x) => x.to_vec(),
                None => v.iter().copied().collect(),
            })
        };
        let view = if in_graph {
            CachedView {
                hidden,
                next_logprob: row(m.next_token_logprob.as_deref().unwrap())?,
                next_entropy: row(m.next_token_entropy.as_deref().unwrap())?,
                last_logprobs: kv.last_logprobs.as_deref().map(row).transpose()?,
            }
        } else if let Some(name) = m.logits.as_deref() {
            // from the logits, as `run_with` does
            let v = outputs[name].try_extract_array::<f32>().map_err(rt(name))?;
            let v = v.into_dimensionality::<ndarray::Ix3>().map_err(rt(name))?;
            let (lp, ent) = next_token_stats(v.view(), &ids, &mask, s);
            let z = v.slice(ndarray::s![0, s - 1, ..]);
            let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_z = max + z.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            CachedView {
                hidden,
                next_logprob: lp.iter().copied().collect(),
                next_entropy: ent.iter().copied().collect(),
                last_logprobs: Some(z.iter().map(|&x| (x as f64 - log_z) as f32).collect()),
            }
        } else {
            // a head-less graph gives hidden states only
            CachedView {
                hidden,
                next_logprob: vec![f32::NAN; s],
                next_entropy: vec![f32::NAN; s],
                last_logprobs: None,
            }
        };
        let result = f(&view);
        drop(view);
        drop(outputs);
        std::mem::swap(&mut cache.keys, &mut cache.spare_keys);
        std::mem::swap(&mut cache.values, &mut cache.spare_values);
        cache.len = total;
        Ok(result)
    }
}

fn no_cache(dir: &Path) -> Error {
    Error::Model(format!(
        "{}: this graph has no key/value cache (re-import it with `cortexflow model import`, or use `context = \"windows\"`)",
        dir.display()
    ))
}

impl LanguageModel {
    /// Runs a batch of token windows (right-padded to the longest) and returns only the
    /// requested hidden states, each (batch, seq, d_model). Works on truncated graphs (no LM
    /// head); the graph computes whatever it holds, so a truncated import is what makes this
    /// cheaper than [`LanguageModel::run`].
    pub fn run_hidden(&mut self, windows: &[Vec<u32>], layers: &[usize]) -> Result<Vec<ndarray::Array3<f32>>> {
        self.run_hidden_with(windows, layers, |h| h.iter().map(|v| v.to_owned()).collect())
    }

    /// As [`LanguageModel::run_hidden`], handing `f` views into ONNX Runtime's output buffers.
    pub fn run_hidden_with<R>(
        &mut self,
        windows: &[Vec<u32>],
        layers: &[usize],
        f: impl FnOnce(&[ArrayView3<'_, f32>]) -> R,
    ) -> Result<R> {
        let (b, s, ids, mask) = self.pack(windows, layers)?;
        let m = &self.manifest;
        let mut sel = OutputSelector::no_default();
        for &l in layers {
            sel = sel.with(m.hidden_states[l].clone());
        }
        let options = RunOptions::new().map_err(rt("run options"))?.with_outputs(sel);
        let inputs = model_inputs(m, [b, s], ids, mask, false)?;
        let names: Vec<String> = layers.iter().map(|&l| m.hidden_states[l].clone()).collect();
        let d_model = m.d_model;
        let outputs = self
            .session
            .run_with_options(inputs, &options)
            .map_err(rt("inference"))?;
        let hidden = hidden_views(&outputs, &names, [b, s, d_model])?;
        Ok(f(&hidden))
    }
}

impl LanguageModel {
    /// Logits (vocab) of the next token after `ids` (BOS is added when the model wants it).
    pub fn next_token_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let m = &self.manifest;
        let logits_name = m
            .logits
            .clone()
            .ok_or_else(|| Error::Model("this model's manifest names no `logits` output".into()))?;
        let mut seq: Vec<i64> = Vec::with_capacity(ids.len() + 1);
        if m.prepend_bos {
            seq.extend(m.bos_token_id.map(|b| b as i64));
        }
        seq.extend(ids.iter().map(|&t| t as i64));
        let s = seq.len();
        if s == 0 || s > m.context_length {
            return Err(Error::Invalid(format!(
                "prompt of {s} tokens does not fit the context ({})",
                m.context_length
            )));
        }
        let options = RunOptions::new()
            .map_err(rt("run options"))?
            .with_outputs(OutputSelector::no_default().with(logits_name.clone()));
        let inputs = model_inputs(m, [1, s], seq, vec![1i64; s], true)?;
        let outputs = self
            .session
            .run_with_options(inputs, &options)
            .map_err(rt("inference"))?;
        let v = outputs[logits_name.as_str()]
            .try_extract_array::<f32>()
            .map_err(rt("logits"))?;
        let v = v.into_dimensionality::<ndarray::Ix3>().map_err(rt("logits"))?;
        Ok(v.slice(ndarray::s![0, s - 1, ..]).to_vec())
    }

    /// Greedy continuation: up to `max_new` tokens, stopping at EOS-like special tokens.
    pub fn greedy(&mut self, prompt: &str, max_new: usize) -> Result<String> {
        let enc = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| Error::Invalid(format!("tokenizing prompt: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        let n_prompt = ids.len();
        for _ in 0..max_new {
            let logits = self.next_token_logits(&ids)?;
            let best = logits
                .iter()
                .enumerate()
                .fold(
                    (0usize, f32::NEG_INFINITY),
                    |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                )
                .0 as u32;
            ids.push(best);
            if self
                .tokenizer
                .id_to_token(best)
                .is_some_and(|t| (t.starts_with("<|") && t.ends_with("|>")) || t == "<eos>" || t == "<end_of_turn>")
            {
                break;
            }
        }
        self.tokenizer
            .decode(&ids[n_prompt..], false)
            .map_err(|e| Error::Invalid(format!("decoding: {e}")))
    }
}

/// The session inputs: token ids and, when the graph takes one, the attention mask, both int64
/// `shape` = [batch, seq].
/// The ids and mask inputs, and the logits switch set when `want_logits` (graphs without a
/// switch compute logits on every call).
fn model_inputs(
    m: &Manifest,
    shape: [usize; 2],
    ids: Vec<i64>,
    mask: Vec<i64>,
    want_logits: bool,
) -> Result<Vec<(std::borrow::Cow<'static, str>, ort::session::SessionInputValue<'static>)>> {
    let ids_t = Tensor::from_array((shape, ids)).map_err(rt("input_ids"))?;
    let mut inputs = ort::inputs![m.input_ids.clone() => ids_t];
    if let Some(mask_name) = &m.attention_mask {
        let mask_t = Tensor::from_array((shape, mask)).map_err(rt("attention_mask"))?;
        inputs.push((mask_name.clone().into(), mask_t.into()));
    }
    if let (true, Some(name)) = (want_logits, &m.logits_switch) {
        let on = Tensor::from_array(((), vec![true])).map_err(rt(name))?;
        inputs.push((name.clone().into(), on.into()));
    }
    Ok(inputs)
}

/// The named hidden-state outputs as (batch, seq, d_model) views, their shapes checked.
fn hidden_views<'o>(
    outputs: &'o ort::session::SessionOutputs<'_>,
    names: &[String],
    shape: [usize; 3],
) -> Result<Vec<ArrayView3<'o, f32>>> {
    names
        .iter()
        .map(|name| {
            let v = outputs[name.as_str()].try_extract_array::<f32>().map_err(rt(name))?;
            let v = v.into_dimensionality::<ndarray::Ix3>().map_err(rt(name))?;
            if v.shape() != shape {
                return Err(Error::Model(format!(
                    "output `{name}` has shape {:?}, expected {shape:?}",
                    v.shape()
                )));
            }
            Ok(v)
        })
        .collect()
}

pub fn layer_error(layer: usize, n_layers: usize) -> Error {
    Error::Invalid(format!(
        "layer {layer} is out of range: the model has {n_layers} blocks, so layers are 0 (embeddings) ..= {n_layers}"
    ))
}

/// From logits (batch, seq, vocab) and the input ids: ln p(id[t+1] | ≤ t) and the entropy (nats) of
/// the next-token distribution at each t, by a numerically stable log-softmax in f64. The
/// log-probability is 0 where t+1 is not a real token (end of sequence or padding).
pub fn next_token_stats(logits: ArrayView3<f32>, ids: &[i64], mask: &[i64], seq: usize) -> (Array2<f32>, Array2<f32>) {
    let (b, s, _) = logits.dim();
    let mut lp = Array2::<f32>::zeros((b, s));
    let mut ent = Array2::<f32>::zeros((b, s));
    for (i, row) in logits.axis_iter(Axis(0)).enumerate() {
        for (t, z) in row.axis_iter(Axis(0)).enumerate() {
            let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = z.iter().map(|&v| ((v as f64) - max).exp()).sum();
            let log_z = max + sum.ln();
            let h: f64 = z
                .iter()
                .map(|&v| {
                    let l = v as f64 - log_z;
                    -l.exp() * l
                })
                .sum();
            ent[[i, t]] = h as f32;
            if t + 1 < s && mask[i * seq + t + 1] != 0 {
                let next = ids[i * seq + t + 1] as usize;
                lp[[i, t]] = (z[next] as f64 - log_z) as f32;
            }
        }
    }
    (lp, ent)
}
