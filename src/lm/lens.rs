//! The model's own read-out applied to any layer ("logit lens", nostalgebraist 2020) and its
//! static input embeddings, read from the GGUF the model was imported from. The taxonomy uses
//! them for the PREDICTION criterion (next-token entropy at the feature's own layer) and for
//! the meaning-coherence of a feature's top words (METHOD.md §4).
//!
//! Logit lens at layer ℓ: logits = W_U · RMSNorm(h_ℓ) with the final norm's weight and ε (GPT-2:
//! LayerNorm with the final norm's weight, bias and ε), W_U the LM head (tied to the embeddings
//! unless the GGUF has `output.weight`); entropy in bits of
//! softmax(logits). This is a first proxy for the paper's tuned-lens entropy (no learned
//! per-layer translator); outputs say which one was used.

use std::path::{Path, PathBuf};

use ndarray::{s, Array2, ArrayView2, Axis};
use rayon::prelude::*;

use super::gguf::Gguf;
use super::manifest::Manifest;
use crate::{Error, Result};

/// Rows per block of the logit-lens product (bounds the vocab-wide logit buffer).
const LENS_BLOCK_ROWS: usize = 128;

/// Read-out weights and tokenizer of one model.
pub struct Lens {
    /// Input embeddings (vocab × d_model).
    embeddings: Array2<f32>,
    /// LM head (vocab × d_model) when not tied to the embeddings.
    head: Option<Array2<f32>>,
    final_norm: Vec<f32>,
    /// GPT-2: the final LayerNorm's bias (the norm is then a LayerNorm, not an RMSNorm).
    final_norm_bias: Option<Vec<f32>>,
    rms_eps: f32,
    tokenizer: tokenizers::Tokenizer,
    /// The GGUF file the weights came from.
    pub source: PathBuf,
}

/// The GGUF a model folder was imported from: its manifest's `source`, looked up in the folder
/// and next to it (the cache keeps the GGUF beside the imported folders).
pub fn source_gguf(model_dir: &Path) -> Result<PathBuf> {
    let m = Manifest::load(model_dir)?;
    let name = m.source.ok_or_else(|| {
        Error::Model(format!(
            "{}: the manifest names no source GGUF, so the logit lens and embeddings are unavailable",
            model_dir.display()
        ))
    })?;
    let candidates = [
        model_dir.join(&name),
        model_dir.parent().map(|p| p.join(&name)).unwrap_or_default(),
    ];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        Error::Model(format!(
            "source GGUF `{name}` of {} not found (looked in the folder and beside it)",
            model_dir.display()
        ))
    })
}

impl Lens {
    /// Loads the embeddings, final norm and head from the model's source GGUF and the folder's
    /// tokenizer.
    pub fn load(model_dir: &Path) -> Result<Self> {
        let source = source_gguf(model_dir)?;
        let g = Gguf::open(&source)?;
        let arch = g.req_str("general.architecture")?.to_string();
        let matrix = |name: &str| -> Result<Array2<f32>> {
            let (shape, data) = g.tensor_f32(name)?;
            // row-major shape: [vocab, d_model]
            let (v, d) = (shape[0], shape.get(1).copied().unwrap_or(1));
            Array2::from_shape_vec((v, d), data).map_err(|e| Error::Model(format!("{name}: {e}")))
        };
        let embeddings = matrix("token_embd.weight")?;
        let head = if g.tensor("output.weight").is_some() {
            Some(matrix("output.weight")?)
        } else {
            None
        };
        let (_, final_norm) = g.tensor_f32("output_norm.weight")?;
        let gpt2 = arch == "gpt2";
        let eps_key = match gpt2 {
            true => "attention.layer_norm_epsilon",
            false => "attention.layer_norm_rms_epsilon",
        };
        let rms_eps = g
            .get(&format!("{arch}.{eps_key}"))
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5) as f32;
        let final_norm_bias = match gpt2 {
            true => Some(g.tensor_f32("output_norm.bias")?.1),
            false => None,
        };
        let tok_path = model_dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::parse(&tok_path, "tokenizer", e.to_string()))?;
        if final_norm.len() != embeddings.ncols() {
            return Err(Error::Model(format!(
                "{}: output_norm has {} entries for d_model {}",
                source.display(),
                final_norm.len(),
                embeddings.ncols()
            )));
        }
        Ok(Lens {
            embeddings,
            head,
            final_norm,
            final_norm_bias,
            rms_eps,
            tokenizer,
            source,
        })
    }

    pub fn d_model(&self) -> usize {
        self.embeddings.ncols()
    }

    /// Logit-lens next-token entropy (bits) of each row of `h` (n × d_model).
    pub fn entropy_bits(&self, h: ArrayView2<'_, f32>) -> Result<Vec<f64>> {
        if h.ncols() != self.d_model() {
            return Err(Error::Invalid(format!(
                "logit lens: rows have {} values, the model's d_model is {}",
                h.ncols(),
                self.d_model()
            )));
        }
        let w_u = self.head.as_ref().unwrap_or(&self.embeddings);
        let blocks: Vec<Vec<f64>> = h
            .axis_chunks_iter(Axis(0), LENS_BLOCK_ROWS)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|block| {
                let mut normed = block.to_owned();
                for mut row in normed.rows_mut() {
                    let n = row.len() as f32;
                    match &self.final_norm_bias {
                        None => {
                            let ms = row.iter().map(|v| v * v).sum::<f32>() / n;
                            let scale = 1.0 / (ms + self.rms_eps).sqrt();
                            for (v, w) in row.iter_mut().zip(&self.final_norm) {
                                *v *= scale * w;
                            }
                        }
                        Some(bias) => {
                            let mean = row.sum() / n;
                            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
                            let scale = 1.0 / (var + self.rms_eps).sqrt();
                            for ((v, w), c) in row.iter_mut().zip(&self.final_norm).zip(bias) {
                                *v = (*v - mean) * scale * w + c;
                            }
                        }
                    }
                }
                let logits = normed.dot(&w_u.t());
                logits
                    .rows()
                    .into_iter()
                    .map(|l| entropy_bits_of_logits(&l.to_vec()))
                    .collect()
            })
            .collect();
        Ok(blocks.concat())
    }

    /// Static embedding of each word: the mean input embedding of its tokens, the word tokenized
    /// with a leading space (as it appears mid-sentence). Words with no tokens get a zero row.
    pub fn word_embeddings(&self, words: &[String]) -> Result<Array2<f32>> {
        let d = self.d_model();
        let mut out = Array2::<f32>::zeros((words.len(), d));
        for (i, w) in words.iter().enumerate() {
            let enc = self
                .tokenizer
                .encode(format!(" {w}"), false)
                .map_err(|e| Error::Model(format!("tokenizing `{w}`: {e}")))?;
            let ids = enc.get_ids();
            if ids.is_empty() {
                continue;
            }
            let mut row = out.slice_mut(s![i, ..]);
            for &t in ids {
                let t = t as usize;
                if t < self.embeddings.nrows() {
                    row += &self.embeddings.row(t);
                }
            }
            row /= ids.len() as f32;
        }
        Ok(out)
    }
}

/// Entropy (bits) of softmax(logits), computed stably in f64.
pub fn entropy_bits_of_logits(logits: &[f32]) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let (mut z, mut s) = (0.0f64, 0.0f64);
    for &l in logits {
        let d = l as f64 - m;
        let e = d.exp();
        z += e;
        s += e * d;
    }
    // H = log Z − E[l − m], in nats → bits
    (z.ln() - s / z) / std::f64::consts::LN_2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_peaked_logits() {
        assert!((entropy_bits_of_logits(&[0.0; 8]) - 3.0).abs() < 1e-12);
        assert!(entropy_bits_of_logits(&[100.0, 0.0, 0.0]) < 1e-30_f64.max(1e-12));
        // two equal, one negligible: 1 bit
        assert!((entropy_bits_of_logits(&[5.0, 5.0, -200.0]) - 1.0).abs() < 1e-12);
    }
}
