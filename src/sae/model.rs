//! One SAE type over the three architectures cortexflow reads, writes and encodes with: ReLU,
//! TopK and JumpReLU. Downstream code holds a [`Sae`] and does not care which one it has.
//!
//! Shapes: inputs `x (n_rows, d_in)` f32 in the units they were extracted in; codes
//! `f (n_rows, d_sae)`, all ≥ 0; reconstructions `x̂ (n_rows, d_in)` in the input's units.
//!
//! ```text
//! x_in = x · input_scale − [apply_b_dec_to_input] b_dec                        (n, d_in)
//! z    = x_in W_enc + b_enc                                                    (n, d_sae)
//! ReLU     f = ReLU(z)
//! TopK     f = the k largest entries of ReLU(z) per row, others 0 (ties → lower feature index)
//! JumpReLU f_j = ReLU(z_j) · 1[z_j > θ_j]
//! x̂    = (f W_dec + b_dec) / input_scale
//! ```
//! Conventions, from the reference implementations:
//! - ReLU: SAELens `standard_sae.py` (`ReLU(sae_in @ W_enc + b_enc)` with
//!   `sae_in = x − b_dec · apply_b_dec_to_input`).
//! - TopK: SAELens `topk_sae.py` takes the top k of `z` and applies ReLU to those values;
//!   EleutherAI sparsify `fused_encoder.py` takes the top k of `ReLU(z)`. Both give the same codes.
//!   With fewer than k positive entries a row has fewer than k non-zero codes. PyTorch leaves
//!   ties in `topk` unspecified; here the lower feature index wins, so codes are deterministic.
//! - JumpReLU: SAELens `jumprelu_sae.py`, `ReLU(z) · (z > threshold)` (Gemma Scope); for θ ≥ 0
//!   this is `z · 1[z > θ]`.
//!
//! Decoding is the same for all three (SAELens `decode`: `f @ W_dec + b_dec`).

use ndarray::{s, Array1, Array2, ArrayView2, ArrayViewMut2, Axis};

use super::linalg::{par_rows_mut, zeros};
use super::metrics::{quality_of, SaeQuality};
use super::relu::{topk_rows_in_place, ReluSae, SparseCodes, ENCODE_ROWS};
use crate::{Error, Result};

/// The activation that turns pre-activations into codes.
#[derive(Debug, Clone, PartialEq)]
pub enum SaeKind {
    /// `f = ReLU(z)` (SAELens "standard", cortexflow "relu").
    Relu,
    /// `f = TopK_k(ReLU(z))` (SAELens "topk", EleutherAI sparsify).
    TopK { k: usize },
    /// `f_j = ReLU(z_j) · 1[z_j > θ_j]`, `threshold` (d_sae) (SAELens "jumprelu", Gemma Scope).
    JumpRelu { threshold: Array1<f32> },
}

impl SaeKind {
    /// SAELens' name of the architecture: "standard", "topk" or "jumprelu".
    pub fn saelens_name(&self) -> &'static str {
        match self {
            SaeKind::Relu => "standard",
            SaeKind::TopK { .. } => "topk",
            SaeKind::JumpRelu { .. } => "jumprelu",
        }
    }
}

/// An SAE of any architecture: the activation ([`SaeKind`]) and the weights, which have the same
/// shapes and meaning for all three and live in a [`ReluSae`] (whose own `encode` is the ReLU
/// architecture's).
#[derive(Debug, Clone, PartialEq)]
pub struct Sae {
    pub kind: SaeKind,
    /// W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in), input_scale.
    pub weights: ReluSae,
    /// Whether `b_dec` is subtracted from the (scaled) input before encoding (SAELens
    /// `apply_b_dec_to_input`; false for some Gemma Scope SAEs). True for cortexflow-trained SAEs
    /// and sparsify SAEs.
    pub apply_b_dec_to_input: bool,
}

impl From<ReluSae> for Sae {
    fn from(weights: ReluSae) -> Self {
        Sae {
            kind: SaeKind::Relu,
            weights,
            apply_b_dec_to_input: true,
        }
    }
}

impl Sae {
    /// Builds an SAE, checking `k` (1 ≤ k ≤ d_sae) and the threshold's length and finiteness (the
    /// weights were checked when the [`ReluSae`] was built with [`ReluSae::from_parts`]).
    pub fn new(kind: SaeKind, weights: ReluSae, apply_b_dec_to_input: bool) -> Result<Self> {
        let d_sae = weights.d_sae;
        match &kind {
            SaeKind::Relu => {}
            SaeKind::TopK { k } => {
                if *k == 0 || *k > d_sae {
                    return Err(Error::Invalid(format!(
                        "TopK SAE: k must be between 1 and d_sae = {d_sae}, found {k}"
                    )));
                }
            }
            SaeKind::JumpRelu { threshold } => {
                if threshold.len() != d_sae {
                    return Err(Error::Invalid(format!(
                        "SAE tensor threshold: expected shape ({d_sae}), found ({})",
                        threshold.len()
                    )));
                }
                if !threshold.iter().all(|v| v.is_finite()) {
                    return Err(Error::Invalid("SAE tensor threshold holds non-finite values".into()));
                }
            }
        }
        Ok(Sae {
            kind,
            weights,
            apply_b_dec_to_input,
        })
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.weights.d_in
    }

    /// Number of features.
    pub fn d_sae(&self) -> usize {
        self.weights.d_sae
    }

    fn check_width(&self, what: &str, found: usize) {
        assert_eq!(
            found,
            self.d_in(),
            "Sae::{what}: input has {found} columns, the SAE's d_in is {}",
            self.d_in()
        );
    }

    /// Codes of one block of raw rows into `out (r, d_sae)`, using `xin (r, d_in)` as scratch.
    fn encode_block(&self, xin: ArrayViewMut2<'_, f32>, mut out: ArrayViewMut2<'_, f32>, x: ArrayView2<'_, f32>) {
        let w = &self.weights;
        let mut xin = xin;
        if self.apply_b_dec_to_input {
            w.centre_into(xin.view_mut(), x);
        } else {
            w.scale_into(xin.view_mut(), x);
        }
        w.encode_centred_into(out.view_mut(), xin.view()); // ReLU(z)
        match &self.kind {
            SaeKind::Relu => {}
            SaeKind::TopK { k } => topk_rows_in_place(out, *k),
            SaeKind::JumpRelu { threshold } => {
                // ReLU(z) ≤ θ ⇔ z ≤ θ for θ ≥ 0; for θ < 0, ReLU(z) > θ always and the code is ReLU(z)
                let th = threshold.as_slice().expect("threshold contiguous");
                par_rows_mut(out, |_, row| {
                    for (v, &t) in row.iter_mut().zip(th) {
                        if *v <= t {
                            *v = 0.0;
                        }
                    }
                });
            }
        }
    }

    /// Dense codes `f (n_rows, d_sae)` of raw inputs `x (n_rows, d_in)`; all entries ≥ 0.
    ///
    /// # Panics
    /// If `x` does not have `d_in` columns (check first with [`Sae::check_input`]).
    pub fn encode(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        self.check_width("encode", x.ncols());
        let mut out = zeros(x.nrows(), self.d_sae());
        let mut xin = zeros(ENCODE_ROWS.min(x.nrows()), self.d_in());
        for (xb, ob) in x
            .axis_chunks_iter(Axis(0), ENCODE_ROWS)
            .zip(out.axis_chunks_iter_mut(Axis(0), ENCODE_ROWS))
        {
            let r = xb.nrows();
            self.encode_block(xin.slice_mut(s![..r, ..]), ob, xb);
        }
        out
    }

    /// Codes of raw inputs `x (n_rows, d_in)` in CSR form (only non-zero codes stored).
    ///
    /// # Panics
    /// If `x` does not have `d_in` columns.
    pub fn encode_sparse(&self, x: ArrayView2<'_, f32>) -> SparseCodes {
        self.check_width("encode_sparse", x.ncols());
        let mut out = SparseCodes {
            n_rows: 0,
            d_sae: self.d_sae(),
            indptr: vec![0],
            indices: vec![],
            values: vec![],
        };
        let block = ENCODE_ROWS.min(x.nrows());
        let mut xin = zeros(block, self.d_in());
        let mut f = zeros(block, self.d_sae());
        for xb in x.axis_chunks_iter(Axis(0), ENCODE_ROWS) {
            let r = xb.nrows();
            self.encode_block(xin.slice_mut(s![..r, ..]), f.slice_mut(s![..r, ..]), xb);
            out.append_dense(f.slice(s![..r, ..]));
        }
        out
    }

    /// Reconstruction `x̂ (n_rows, d_in)` in the input's units from dense codes `(n_rows, d_sae)`.
    pub fn decode(&self, codes: ArrayView2<'_, f32>) -> Array2<f32> {
        self.weights.decode(codes)
    }

    /// Reconstruction `x̂ (n_rows, d_in)` in the input's units from CSR codes.
    pub fn decode_sparse(&self, codes: &SparseCodes) -> Array2<f32> {
        self.weights.decode_sparse(codes)
    }

    /// `decode(encode(x))`, in the input's units.
    pub fn reconstruct(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        self.decode_sparse(&self.encode_sparse(x))
    }

    /// Quality on held-out rows `x (n_rows, d_in)` (see [`super::sae_quality`]).
    pub fn quality(&self, x: ArrayView2<'_, f32>) -> SaeQuality {
        self.check_width("quality", x.ncols());
        quality_of(self.d_sae(), x, |xb| self.encode_sparse(xb), |c| self.decode_sparse(c))
    }

    /// An error (not a panic) when activations with `n_cols` columns cannot be encoded.
    pub fn check_input(&self, n_cols: usize) -> Result<()> {
        if n_cols != self.d_in() {
            return Err(Error::Invalid(format!(
                "the SAE expects d_in = {} columns, the activations have {n_cols}",
                self.d_in()
            )));
        }
        Ok(())
    }
}
