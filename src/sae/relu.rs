//! The ReLU sparse autoencoder: parameters, encode/decode (dense and CSR codes) and the training
//! loss with its hand-written gradient.
//!
//! Shapes: inputs `x (n_rows, d_in)` in the units they were extracted in (f32); codes
//! `f (n_rows, d_sae)`, non-negative; reconstructions `x̂ (n_rows, d_in)` in the input's units.
//!
//! ```text
//! x_norm = x · input_scale                                    (n, d_in)
//! f      = ReLU((x_norm − b_dec) W_enc + b_enc)               (n, d_sae)
//! x̂_norm = f W_dec + b_dec                                    (n, d_in)
//! x̂      = x̂_norm / input_scale
//! ```
//! Training works on `x_norm` (E‖x_norm‖² = d_in); the loss and the L1 coefficient λ refer to
//! normalised inputs:
//! `L = mean_rows( ‖x_norm − x̂_norm‖² + λ Σ_j f_j ‖W_dec_j‖ )` (squared error summed over
//! `d_in`, as SAELens does; with unit-norm decoder rows the penalty is λ‖f‖₁).

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::batchtopk::{batch_topk_in_place, matryoshka_backward};
use super::linalg::{col_sums_f64, for_each_in_row, gemm, gemm_then, par_rows_mut, par_rows_mut_map, zeros};
use crate::stats::SplitMix64;
use crate::{Error, Result};

/// Rows encoded per block by [`ReluSae::encode`] and friends (bounds temporary memory).
pub(crate) const ENCODE_ROWS: usize = 4096;
/// Code density (active fraction) below which the training step uses sparse kernels for
/// everything but the encoder product.
pub(crate) const SPARSE_MAX_DENSITY: f64 = 0.05;

/// A ReLU SAE with f32 weights. Decoder rows are kept unit-norm by training.
#[derive(Debug, Clone, PartialEq)]
pub struct ReluSae {
    /// Input width (the LM's residual-stream width).
    pub d_in: usize,
    /// Number of features (dictionary size).
    pub d_sae: usize,
    /// Scalar applied to raw inputs before encoding, chosen at training so that
    /// E‖x · input_scale‖² = d_in over the training rows (SAELens "expected_average_only_in").
    pub input_scale: f32,
    /// (d_in, d_sae)
    pub w_enc: Array2<f32>,
    /// (d_sae)
    pub b_enc: Array1<f32>,
    /// (d_sae, d_in); row j is feature j's direction in normalised input space.
    pub w_dec: Array2<f32>,
    /// (d_in), in normalised units.
    pub b_dec: Array1<f32>,
}

/// Codes in compressed-sparse-row form: row `i`'s active features are
/// `indices[indptr[i]..indptr[i + 1]]` (ascending) with values `values[..]` (all > 0).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseCodes {
    pub n_rows: usize,
    pub d_sae: usize,
    /// (n_rows + 1)
    pub indptr: Vec<u64>,
    /// (nnz) feature ids
    pub indices: Vec<u32>,
    /// (nnz) activations, > 0
    pub values: Vec<f32>,
}

impl SparseCodes {
    /// Number of stored (non-zero) activations.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Row `i`'s (feature ids, values).
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[i] as usize, self.indptr[i + 1] as usize);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// The dense (n_rows, d_sae) matrix.
    pub fn to_dense(&self) -> Array2<f32> {
        let mut out = Array2::zeros((self.n_rows, self.d_sae));
        for (i, mut row) in out.rows_mut().into_iter().enumerate() {
            let (idx, val) = self.row(i);
            for (&j, &v) in idx.iter().zip(val) {
                row[j as usize] = v;
            }
        }
        out
    }

    /// CSR of a dense code matrix (entries > 0 are kept).
    pub fn from_dense(codes: ArrayView2<'_, f32>) -> Self {
        let (n_rows, d_sae) = codes.dim();
        let mut out = SparseCodes {
            n_rows: 0,
            d_sae,
            indptr: Vec::with_capacity(n_rows + 1),
            indices: vec![],
            values: vec![],
        };
        out.indptr.push(0);
        out.append_dense(codes);
        out
    }

    pub(crate) fn append_dense(&mut self, codes: ArrayView2<'_, f32>) {
        let rows: Vec<(Vec<u32>, Vec<f32>)> = codes
            .axis_iter(Axis(0))
            .into_par_iter()
            .map(|row| {
                let mut idx = Vec::new();
                let mut val = Vec::new();
                for (j, &v) in row.iter().enumerate() {
                    if v > 0.0 {
                        idx.push(j as u32);
                        val.push(v);
                    }
                }
                (idx, val)
            })
            .collect();
        for (idx, val) in rows {
            self.indices.extend_from_slice(&idx);
            self.values.extend_from_slice(&val);
            self.indptr.push(self.indices.len() as u64);
            self.n_rows += 1;
        }
    }
}

/// Loss parts of one batch, means over its rows, in normalised units.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SaeLoss {
    /// `mse + λ · sparsity`
    pub loss: f64,
    /// Mean squared reconstruction error per row, summed over d_in: mean ‖x − x̂‖².
    pub mse: f64,
    /// Mean Σ_j f_j ‖W_dec_j‖ (= mean ‖f‖₁ with unit-norm decoder rows).
    pub sparsity: f64,
    /// Mean number of active features per row.
    pub l0: f64,
    /// TopK training only: mean ‖ê_aux − (x − x̂)‖² of the AuxK term (before its coefficient and
    /// dead-fraction scale); 0 otherwise.
    pub aux: f64,
    /// Matryoshka training only: Σ over the inner levels of mean ‖x − x̂_level‖² (part of `loss`;
    /// `mse` is the whole SAE's); 0 otherwise.
    pub inner_mse: f64,
    /// BatchTopK training only: the smallest code kept in the batch (the training threshold's
    /// update, [`super::batchtopk`]); 0 otherwise or when no code is positive.
    pub min_kept: f64,
}

/// Gradient of [`SaeLoss::loss`] with respect to every parameter (same shapes as [`ReluSae`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ReluSaeGrad {
    /// (d_in, d_sae)
    pub w_enc: Array2<f32>,
    /// (d_sae)
    pub b_enc: Array1<f32>,
    /// (d_sae, d_in)
    pub w_dec: Array2<f32>,
    /// (d_in)
    pub b_dec: Array1<f32>,
}

impl ReluSaeGrad {
    pub(crate) fn zeros(d_in: usize, d_sae: usize) -> Self {
        ReluSaeGrad {
            w_enc: zeros(d_in, d_sae),
            b_enc: Array1::zeros(d_sae),
            w_dec: zeros(d_sae, d_in),
            b_dec: Array1::zeros(d_in),
        }
    }
}

pub(crate) use super::simd::{axpy, dot};
use super::simd::{axpy2, dot4};

/// Which kernels a training step uses after the (always dense) encoder product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepKernels {
    /// Sparse when the batch's code density is below [`SPARSE_MAX_DENSITY`].
    Auto,
    #[cfg_attr(not(test), allow(dead_code))]
    Dense,
    #[cfg_attr(not(test), allow(dead_code))]
    Sparse,
}

/// Reusable buffers for one batch of `n` rows.
pub(crate) struct Workspace {
    /// (n, d_in) centred normalised inputs `x_norm − b_dec`; filled by the caller.
    pub xc: Array2<f32>,
    /// (n, d_sae) codes.
    pub f: Array2<f32>,
    /// (n, d_sae) dL/dpre (dense kernels only).
    p: Array2<f32>,
    /// (n, d_in) x̂ − x, then dL/dx̂.
    e: Array2<f32>,
    /// G and xc packed by column blocks (sparse kernels only).
    packed: Vec<f32>,
    /// Per row: the active (feature, value) pairs of the codes.
    row_active: Vec<Vec<(u32, f32)>>,
    row_nnz: Vec<u32>,
    row_sparsity: Vec<f64>,
    row_mse: Vec<f64>,
    // CSR of f (sparse kernels)
    indptr: Vec<usize>,
    indices: Vec<u32>,
    fvals: Vec<f32>,
    pvals: Vec<f32>,
    // CSC view: for feature j, entries colptr[j]..colptr[j+1] of (row, f, dL/dpre) in row order
    colptr: Vec<usize>,
    col_entries: Vec<(u32, f32, f32)>,
    /// Per feature: number of rows of the last batch on which it fired.
    pub fired: Vec<u32>,
}

impl Workspace {
    pub(crate) fn new(n: usize, d_in: usize, d_sae: usize) -> Self {
        Workspace {
            xc: zeros(n, d_in),
            f: zeros(n, d_sae),
            p: zeros(0, 0),
            e: zeros(n, d_in),
            packed: Vec::new(),
            row_active: Vec::new(),
            row_nnz: vec![0; n],
            row_sparsity: vec![0.0; n],
            row_mse: vec![0.0; n],
            indptr: vec![],
            indices: vec![],
            fvals: vec![],
            pvals: vec![],
            colptr: vec![],
            col_entries: vec![],
            fired: vec![0; d_sae],
        }
    }
}

impl ReluSae {
    /// Builds an SAE from its parts, checking shapes and finiteness.
    pub fn from_parts(
        w_enc: Array2<f32>,
        b_enc: Array1<f32>,
        w_dec: Array2<f32>,
        b_dec: Array1<f32>,
        input_scale: f32,
    ) -> Result<Self> {
        let (d_in, d_sae) = w_enc.dim();
        let shape_err = |name: &str, expected: String, found: String| {
            Error::Invalid(format!("SAE tensor {name}: expected shape {expected}, found {found}"))
        };
        if w_dec.dim() != (d_sae, d_in) {
            return Err(shape_err(
                "W_dec",
                format!("({d_sae}, {d_in})"),
                format!("{:?}", w_dec.dim()),
            ));
        }
        if b_enc.len() != d_sae {
            return Err(shape_err("b_enc", format!("({d_sae})"), format!("({})", b_enc.len())));
        }
        if b_dec.len() != d_in {
            return Err(shape_err("b_dec", format!("({d_in})"), format!("({})", b_dec.len())));
        }
        if !(input_scale.is_finite() && input_scale > 0.0) {
            return Err(Error::Invalid(format!(
                "SAE input_scale must be finite and > 0, found {input_scale}"
            )));
        }
        for (name, ok) in [
            ("W_enc", w_enc.iter().all(|v| v.is_finite())),
            ("b_enc", b_enc.iter().all(|v| v.is_finite())),
            ("W_dec", w_dec.iter().all(|v| v.is_finite())),
            ("b_dec", b_dec.iter().all(|v| v.is_finite())),
        ] {
            if !ok {
                return Err(Error::Invalid(format!("SAE tensor {name} holds non-finite values")));
            }
        }
        Ok(ReluSae {
            d_in,
            d_sae,
            input_scale,
            w_enc: w_enc.as_standard_layout().into_owned(),
            b_enc,
            w_dec: w_dec.as_standard_layout().into_owned(),
            b_dec,
        })
    }

    /// A freshly initialised SAE: decoder rows random unit vectors, `W_enc = W_decᵀ`, `b_enc = 0`,
    /// the given `b_dec` (normalised units) and `input_scale`.
    pub fn init(d_in: usize, d_sae: usize, b_dec: Array1<f32>, input_scale: f32, seed: u64) -> Self {
        assert_eq!(
            b_dec.len(),
            d_in,
            "ReluSae::init: b_dec has length {}, d_in is {d_in}",
            b_dec.len()
        );
        let mut rng = SplitMix64::new(seed);
        let mut w_dec = Array2::from_shape_simple_fn((d_sae, d_in), || rng.normal() as f32);
        for mut row in w_dec.rows_mut() {
            let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32;
            if norm > 0.0 {
                row.mapv_inplace(|v| v / norm);
            }
        }
        let w_enc = w_dec.t().as_standard_layout().into_owned();
        ReluSae {
            d_in,
            d_sae,
            input_scale,
            w_enc,
            b_enc: Array1::zeros(d_sae),
            w_dec,
            b_dec,
        }
    }

    /// [`ReluSae::init`] with `b_dec = 0` and `input_scale = 1`.
    pub fn random(d_in: usize, d_sae: usize, seed: u64) -> Self {
        Self::init(d_in, d_sae, Array1::zeros(d_in), 1.0, seed)
    }

    /// Euclidean norm of each decoder row, (d_sae).
    pub fn decoder_row_norms(&self) -> Array1<f32> {
        self.w_dec
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32)
            .collect()
    }

    /// Scales every non-zero decoder row to unit norm.
    pub fn normalize_decoder_rows(&mut self) {
        self.w_dec.axis_iter_mut(Axis(0)).into_par_iter().for_each(|mut row| {
            let norm = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32;
            if norm > 0.0 {
                row.mapv_inplace(|v| v / norm);
            }
        });
    }

    fn check_width(&self, what: &str, found: usize) {
        assert_eq!(
            found, self.d_in,
            "ReluSae::{what}: input has {found} columns, the SAE's d_in is {}",
            self.d_in
        );
    }

    /// `dst = x · input_scale − b_dec` for raw rows `x`.
    pub(crate) fn centre_into(&self, dst: ArrayViewMut2<'_, f32>, x: ArrayView2<'_, f32>) {
        let s = self.input_scale;
        let b_dec = self.b_dec.as_slice().expect("b_dec contiguous");
        par_rows_mut(dst, |i, d| for_each_in_row(x.row(i), |k, v| d[k] = v * s - b_dec[k]));
    }

    /// `dst = x · input_scale` for raw rows `x` (encoders that do not subtract `b_dec`).
    pub(crate) fn scale_into(&self, dst: ArrayViewMut2<'_, f32>, x: ArrayView2<'_, f32>) {
        let s = self.input_scale;
        par_rows_mut(dst, |i, d| for_each_in_row(x.row(i), |k, v| d[k] = v * s));
    }

    /// `codes = ReLU(xc W_enc + b_enc)` for centred normalised rows `xc (n, d_in)`.
    pub(crate) fn encode_centred_into(&self, mut codes: ArrayViewMut2<'_, f32>, xc: ArrayView2<'_, f32>) {
        let b_enc = self.b_enc.as_slice().expect("b_enc contiguous");
        gemm_then(codes.view_mut(), xc, self.w_enc.view(), false, |_, j0, mut tile| {
            let b = &b_enc[j0..j0 + tile.ncols()];
            for mut row in tile.rows_mut() {
                for (v, &b) in row.iter_mut().zip(b) {
                    *v = (*v + b).max(0.0);
                }
            }
        });
    }

    /// Dense codes `f (n_rows, d_sae)` of raw inputs `x (n_rows, d_in)`; all entries ≥ 0.
    ///
    /// # Panics
    /// If `x` does not have `d_in` columns.
    pub fn encode(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        self.check_width("encode", x.ncols());
        let mut out = zeros(x.nrows(), self.d_sae);
        let mut xc = zeros(ENCODE_ROWS.min(x.nrows()), self.d_in);
        for (xb, ob) in x
            .axis_chunks_iter(Axis(0), ENCODE_ROWS)
            .zip(out.axis_chunks_iter_mut(Axis(0), ENCODE_ROWS))
        {
            let r = xb.nrows();
            self.centre_into(xc.slice_mut(s![..r, ..]), xb);
            self.encode_centred_into(ob, xc.slice(s![..r, ..]));
        }
        out
    }

    /// Codes of raw inputs `x (n_rows, d_in)` in CSR form (only active features stored).
    ///
    /// # Panics
    /// If `x` does not have `d_in` columns.
    pub fn encode_sparse(&self, x: ArrayView2<'_, f32>) -> SparseCodes {
        self.check_width("encode_sparse", x.ncols());
        let mut out = SparseCodes {
            n_rows: 0,
            d_sae: self.d_sae,
            indptr: vec![0],
            indices: vec![],
            values: vec![],
        };
        let block = ENCODE_ROWS.min(x.nrows());
        let mut xc = zeros(block, self.d_in);
        let mut f = zeros(block, self.d_sae);
        for xb in x.axis_chunks_iter(Axis(0), ENCODE_ROWS) {
            let r = xb.nrows();
            self.centre_into(xc.slice_mut(s![..r, ..]), xb);
            self.encode_centred_into(f.slice_mut(s![..r, ..]), xc.slice(s![..r, ..]));
            out.append_dense(f.slice(s![..r, ..]));
        }
        out
    }

    /// Reconstruction `x̂ (n_rows, d_in)` in the input's units from dense codes `(n_rows, d_sae)`.
    ///
    /// # Panics
    /// If `codes` does not have `d_sae` columns.
    pub fn decode(&self, codes: ArrayView2<'_, f32>) -> Array2<f32> {
        assert_eq!(
            codes.ncols(),
            self.d_sae,
            "ReluSae::decode: codes have {} columns, d_sae is {}",
            codes.ncols(),
            self.d_sae
        );
        let mut out = zeros(codes.nrows(), self.d_in);
        gemm(out.view_mut(), codes, self.w_dec.view(), false);
        self.finish_decode(&mut out);
        out
    }

    /// Reconstruction `x̂ (n_rows, d_in)` in the input's units from CSR codes.
    pub fn decode_sparse(&self, codes: &SparseCodes) -> Array2<f32> {
        assert_eq!(
            codes.d_sae, self.d_sae,
            "ReluSae::decode_sparse: codes have d_sae {}, the SAE {}",
            codes.d_sae, self.d_sae
        );
        let mut out = zeros(codes.n_rows, self.d_in);
        par_rows_mut(out.view_mut(), |i, row| {
            let (idx, val) = codes.row(i);
            for (&j, &v) in idx.iter().zip(val) {
                axpy(v, self.w_dec.row(j as usize).as_slice().expect("standard layout"), row);
            }
        });
        self.finish_decode(&mut out);
        out
    }

    fn finish_decode(&self, out: &mut Array2<f32>) {
        let inv = 1.0 / self.input_scale;
        let b_dec = self.b_dec.as_slice().expect("b_dec contiguous");
        par_rows_mut(out.view_mut(), |_, row| {
            for (v, &b) in row.iter_mut().zip(b_dec) {
                *v = (*v + b) * inv;
            }
        });
    }

    /// `decode(encode(x))`, in the input's units.
    pub fn reconstruct(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        self.decode_sparse(&self.encode_sparse(x))
    }

    /// Loss and gradient of one batch of **normalised** inputs `x_norm (n, d_in)` (already
    /// multiplied by `input_scale`), with L1 coefficient `l1` (see the module docs).
    pub fn loss_and_grad(&self, x_norm: ArrayView2<'_, f32>, l1: f32) -> (SaeLoss, ReluSaeGrad) {
        self.loss_and_grad_with(x_norm, l1, StepKernels::Auto)
    }

    /// Loss and gradient of the TopK objective (Gao et al. 2024, "Scaling and evaluating sparse
    /// autoencoders") with these weights, on normalised inputs `x_norm (n, d_in)`:
    ///
    /// ```text
    /// f     = TopK_k(ReLU((x_norm − b_dec) W_enc + b_enc))    ties → lower feature index
    /// x̂     = f W_dec + b_dec
    /// a     = the k_aux largest entries of ReLU(pre) among dead features (others 0)
    /// ê     = a W_dec                                        (no b_dec, see below)
    /// L     = mean ‖x_norm − x̂‖² + coef · min(n_dead / k_aux, 1) · mean ‖ê − (x_norm − x̂)‖²
    /// ```
    /// with `x_norm − x̂` held constant in the second term (detached, as in the references) and
    /// `k_aux` reduced to `n_dead` when fewer features are dead. Without `auxk` (or with no dead
    /// feature) the second term is absent. `ê` omits `b_dec`: OpenAI's reference decodes the
    /// auxiliary latents with the bias and adds the bias back to the target
    /// (`x − recons.detach() + pre_bias`, openai/sparse_autoencoder `train.py`), which is the same
    /// loss; sparsify (`sparse_coder.py`) and SAELens (`topk_sae.py`) keep `b_dec` in the
    /// auxiliary reconstruction. The gradient of `L` is written by hand like [`Self::loss_and_grad`].
    ///
    /// # Panics
    /// If `x_norm` does not have `d_in` columns, `k` is 0, or `auxk.dead` does not have `d_sae`
    /// entries.
    pub fn topk_loss_and_grad(
        &self,
        x_norm: ArrayView2<'_, f32>,
        k: usize,
        auxk: Option<AuxK<'_>>,
    ) -> (SaeLoss, ReluSaeGrad) {
        assert!(k > 0, "ReluSae::topk_loss_and_grad: k must be at least 1");
        if let Some(a) = &auxk {
            assert_eq!(
                a.dead.len(),
                self.d_sae,
                "ReluSae::topk_loss_and_grad: dead mask has {} entries, d_sae is {}",
                a.dead.len(),
                self.d_sae
            );
        }
        self.objective_loss_and_grad(x_norm, &Objective::TopK { k, auxk }, StepKernels::Auto)
    }

    /// Loss and gradient of the BatchTopK objective (Bussmann et al. 2024) — and, with more than
    /// one entry in `levels`, the Matryoshka BatchTopK objective (Bussmann et al. 2025) — on
    /// normalised inputs `x_norm (n, d_in)`:
    ///
    /// ```text
    /// f     = the k·n largest entries of ReLU((x_norm − b_dec) W_enc + b_enc) over the whole
    ///         batch (ties → lower row, then lower feature), others 0
    /// x̂_m   = f[:, :m] W_dec[:m] + b_dec                    for each width m in `levels`
    /// L     = Σ_m mean ‖x_norm − x̂_m‖²  (+ the AuxK term of Self::topk_loss_and_grad on the
    ///         whole SAE's error x_norm − x̂_{d_sae})
    /// ```
    /// `levels` are strictly increasing widths ending at d_sae; `&[d_sae]` (or `&[]`) is plain
    /// BatchTopK. [`SaeLoss::min_kept`] is the smallest kept code (for the inference threshold).
    ///
    /// # Panics
    /// If `x_norm` does not have `d_in` columns, `k` is 0, `levels` is not strictly increasing
    /// and ending at d_sae, or `auxk.dead` does not have `d_sae` entries.
    pub fn batch_topk_loss_and_grad(
        &self,
        x_norm: ArrayView2<'_, f32>,
        k: usize,
        auxk: Option<AuxK<'_>>,
        levels: &[usize],
    ) -> (SaeLoss, ReluSaeGrad) {
        assert!(k > 0, "ReluSae::batch_topk_loss_and_grad: k must be at least 1");
        assert!(
            levels.is_empty()
                || (levels.windows(2).all(|w| w[0] < w[1]) && levels[0] > 0 && levels.last() == Some(&self.d_sae)),
            "ReluSae::batch_topk_loss_and_grad: levels {levels:?} must increase strictly and end at d_sae = {}",
            self.d_sae
        );
        if let Some(a) = &auxk {
            assert_eq!(
                a.dead.len(),
                self.d_sae,
                "ReluSae::batch_topk_loss_and_grad: dead mask length"
            );
        }
        self.objective_loss_and_grad(x_norm, &Objective::BatchTopK { k, auxk, levels }, StepKernels::Auto)
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn loss_and_grad_with(
        &self,
        x_norm: ArrayView2<'_, f32>,
        l1: f32,
        kernels: StepKernels,
    ) -> (SaeLoss, ReluSaeGrad) {
        self.objective_loss_and_grad(x_norm, &Objective::L1(l1), kernels)
    }

    pub(crate) fn objective_loss_and_grad(
        &self,
        x_norm: ArrayView2<'_, f32>,
        objective: &Objective<'_>,
        kernels: StepKernels,
    ) -> (SaeLoss, ReluSaeGrad) {
        self.check_width("loss_and_grad", x_norm.ncols());
        let mut ws = Workspace::new(x_norm.nrows(), self.d_in, self.d_sae);
        let b_dec = self.b_dec.as_slice().expect("b_dec contiguous");
        par_rows_mut(ws.xc.view_mut(), |i, d| {
            for_each_in_row(x_norm.row(i), |k, v| d[k] = v - b_dec[k])
        });
        let mut grad = ReluSaeGrad::zeros(self.d_in, self.d_sae);
        let loss = forward_backward(self, &mut ws, objective, &mut grad, kernels);
        (loss, grad)
    }
}

/// The auxiliary dead-latent loss of TopK training (see [`ReluSae::topk_loss_and_grad`]).
#[derive(Debug, Clone, Copy)]
pub struct AuxK<'a> {
    /// (d_sae) true for features counted as dead (not fired for a number of tokens).
    pub dead: &'a [bool],
    /// Number of dead latents used per row (Gao et al. B.1: d_in / 2); at least 1.
    pub k_aux: usize,
    /// Coefficient of the auxiliary term (Gao et al.: 1/32).
    pub coef: f32,
}

/// What a training step minimises.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Objective<'a> {
    /// `mse + λ Σ_j f_j ‖W_dec_j‖` with ReLU codes.
    L1(f32),
    /// `mse (+ AuxK)` with TopK codes.
    TopK { k: usize, auxk: Option<AuxK<'a>> },
    /// `mse (+ AuxK)` with BatchTopK codes (the `k · n_rows` largest of the batch), plus, with
    /// more than one level, the Matryoshka inner-level errors (`levels`: strictly increasing
    /// prefix widths ending at d_sae; see [`super::batchtopk`]).
    BatchTopK {
        k: usize,
        auxk: Option<AuxK<'a>>,
        levels: &'a [usize],
    },
}

/// Keeps, in every row of non-negative codes, the `k` largest entries (ties broken by lower
/// feature index) and zeroes the rest. Rows with at most `k` positive entries are unchanged.
pub(crate) fn topk_rows_in_place(codes: ArrayViewMut2<'_, f32>, k: usize) {
    par_rows_mut(codes, |_, row| {
        let positives = row.iter().filter(|&&v| v > 0.0).count();
        if positives <= k {
            return;
        }
        let mut cand: Vec<(f32, u32)> = row
            .iter()
            .enumerate()
            .filter(|&(_, &v)| v > 0.0)
            .map(|(j, &v)| (v, j as u32))
            .collect();
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let (_, &mut kth, _) = cand.select_nth_unstable_by(k - 1, order);
        for (j, v) in row.iter_mut().enumerate() {
            if *v > 0.0 && order(&(*v, j as u32), &kth) == std::cmp::Ordering::Greater {
                *v = 0.0;
            }
        }
    });
}

/// Per row, the `k_aux` largest positive entries of `f` among dead features (ties → lower index),
/// as CSR (indptr (n + 1), (feature, value) pairs in ascending feature order).
fn select_auxk(f: ArrayView2<'_, f32>, dead: &[bool], k_aux: usize) -> (Vec<usize>, Vec<(u32, f32)>) {
    let rows: Vec<Vec<(u32, f32)>> = f
        .axis_iter(Axis(0))
        .into_par_iter()
        .map(|row| {
            let mut cand: Vec<(u32, f32)> = row
                .iter()
                .enumerate()
                .filter(|&(j, &v)| dead[j] && v > 0.0)
                .map(|(j, &v)| (j as u32, v))
                .collect();
            if cand.len() > k_aux {
                cand.select_nth_unstable_by(k_aux - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                cand.truncate(k_aux);
                cand.sort_unstable_by_key(|e| e.0);
            }
            cand
        })
        .collect();
    let mut indptr = Vec::with_capacity(rows.len() + 1);
    indptr.push(0);
    let mut entries = Vec::new();
    for r in rows {
        entries.extend_from_slice(&r);
        indptr.push(entries.len());
    }
    (indptr, entries)
}

/// One forward and backward pass on the centred batch `ws.xc (n, d_in)`; writes the gradient of
/// the mean loss into `grad` and the firing counts into `ws.fired`.
pub(crate) fn forward_backward(
    sae: &ReluSae,
    ws: &mut Workspace,
    objective: &Objective<'_>,
    grad: &mut ReluSaeGrad,
    kernels: StepKernels,
) -> SaeLoss {
    let n = ws.xc.nrows();
    let (d_in, d_sae) = (sae.d_in, sae.d_sae);
    if n == 0 {
        grad.w_enc.fill(0.0);
        grad.b_enc.fill(0.0);
        grad.w_dec.fill(0.0);
        grad.b_dec.fill(0.0);
        ws.fired.iter_mut().for_each(|c| *c = 0);
        return SaeLoss::default();
    }
    let inv_n = 1.0 / n as f32;
    let dnorm = sae.decoder_row_norms(); // (d_sae)

    // forward: f = ReLU(xc W_enc + b_enc)                                         (n, d_sae)
    sae.encode_centred_into(ws.f.view_mut(), ws.xc.view());
    // TopK, BatchTopK: the auxiliary latents are chosen among all ReLU pre-activations, then f
    // is masked
    let select_aux = |f: ArrayView2<'_, f32>, auxk: Option<AuxK<'_>>| {
        auxk.and_then(|a| {
            let n_dead = a.dead.iter().filter(|&&d| d).count();
            let k_aux = a.k_aux.max(1);
            if n_dead == 0 || a.coef == 0.0 {
                return None;
            }
            let scale = (n_dead as f32 / k_aux as f32).min(1.0);
            let sel = select_auxk(f, a.dead, k_aux.min(n_dead));
            Some((sel, a.coef * scale))
        })
    };
    let mut min_kept = 0.0f64;
    let mut levels: &[usize] = &[];
    let (l1, aux) = match *objective {
        Objective::L1(l1) => (l1, None),
        Objective::TopK { k, auxk } => {
            let aux = select_aux(ws.f.view(), auxk);
            topk_rows_in_place(ws.f.view_mut(), k);
            (0.0, aux)
        }
        Objective::BatchTopK { k, auxk, levels: lv } => {
            let aux = select_aux(ws.f.view(), auxk);
            min_kept = batch_topk_in_place(ws.f.view_mut(), k.saturating_mul(n)).map_or(0.0, |v| v as f64);
            levels = lv;
            (0.0, aux)
        }
    };
    {
        // one pass over the codes: per row the active count, the sparsity term and the active
        // (feature, value) pairs that the sparse kernels start from — at most [`active_cap`] of them
        // per row, so a dense batch (which takes the dense kernels) does not fill large lists; a
        // row past the cap in a sparse batch is read again from the codes
        let dn = &*contiguous(&dnorm);
        let cap = active_cap(d_sae);
        ws.row_active.resize_with(n, Vec::new);
        let stats: Vec<(u32, f64)> =
            ws.f.axis_iter(Axis(0))
                .into_par_iter()
                .zip(ws.row_active.par_iter_mut())
                .map(|(row, active)| {
                    active.clear();
                    let (mut nnz, mut sp) = (0u32, 0.0f64);
                    for (j, (&v, &w)) in row.as_slice().expect("standard layout").iter().zip(dn).enumerate() {
                        if v > 0.0 {
                            if active.len() < cap {
                                active.push((j as u32, v));
                            }
                            nnz += 1;
                            sp += (v * w) as f64;
                        }
                    }
                    (nnz, sp)
                })
                .collect();
        for (i, (nnz, sp)) in stats.into_iter().enumerate() {
            ws.row_nnz[i] = nnz;
            ws.row_sparsity[i] = sp;
        }
    }
    let total_nnz: u64 = ws.row_nnz.iter().map(|&c| c as u64).sum();
    let density = total_nnz as f64 / (n as f64 * d_sae as f64);
    let sparse = match kernels {
        StepKernels::Auto => density < SPARSE_MAX_DENSITY,
        StepKernels::Dense => false,
        StepKernels::Sparse => true,
    };
    let g_scale = 2.0 * inv_n; // dL/dx̂ = 2 (x̂ − x) / n
    let l1_n = l1 * inv_n;

    // Matryoshka: its own backward pass (several levels of error per row); afterwards ws.e holds
    // the whole SAE's g_scale (x̂ − x), as the AuxK term needs, and `g_sum` the column sums of
    // dL/dx̂ summed over levels, for b_dec
    let mut matryoshka = None;
    if levels.len() > 1 {
        matryoshka = Some(matryoshka_backward(
            &sae.w_dec,
            ws.xc.view(),
            ws.f.view(),
            levels,
            g_scale,
            ws.e.view_mut(),
            &mut ws.row_mse,
            &mut ws.fired,
            (&mut grad.w_dec, &mut grad.w_enc, &mut grad.b_enc),
        ));
    } else if sparse {
        sparse_backward(sae, ws, &dnorm, g_scale, l1_n, grad);
    } else {
        dense_backward(sae, ws, &dnorm, g_scale, l1_n, grad);
    }

    let (aux_mse, aux_weight) = match aux {
        Some(((indptr, entries), weight)) => (
            auxk_backward(sae, ws, &indptr, &entries, weight, g_scale, grad),
            weight as f64,
        ),
        None => (0.0, 0.0),
    };

    // grad b_dec = Σ_rows dL/dx̂ − W_enc · grad b_enc   (b_dec enters x̂ and, with a minus, xc;
    // the auxiliary reconstruction has no b_dec, its target is held constant)
    let (inner_mse, g_sum) = match matryoshka {
        Some((inner, g_sum)) => (inner, g_sum),
        None => (0.0, col_sums_f64(ws.e.view())), // ws.e holds dL/dx̂ now
    };
    let gb = &*contiguous(&grad.b_enc);
    let wb: Vec<f64> = sae
        .w_enc
        .axis_iter(Axis(0))
        .into_par_iter()
        .map(|row| row.iter().zip(gb).map(|(&w, &g)| w as f64 * g as f64).sum::<f64>())
        .collect();
    for (k, v) in grad.b_dec.iter_mut().enumerate() {
        *v = (g_sum[k] - wb[k]) as f32;
    }
    debug_assert_eq!(grad.b_dec.len(), d_in);

    let mse = ws.row_mse.iter().sum::<f64>() / n as f64;
    let sparsity = ws.row_sparsity.iter().sum::<f64>() / n as f64;
    SaeLoss {
        loss: mse + inner_mse + l1 as f64 * sparsity + aux_weight * aux_mse,
        mse,
        sparsity,
        l0: total_nnz as f64 / n as f64,
        aux: aux_mse,
        inner_mse,
        min_kept,
    }
}

/// Adds the gradient of `weight · mean_rows ‖ê − (x − x̂)‖²` (ê = Σ_aux a_j W_dec_j, target held
/// constant) to `grad` (W_dec, W_enc, b_enc; b_dec follows from b_enc in the caller). `ws.e` holds
/// `g_scale (x̂ − x)` on entry. Returns the mean squared auxiliary error.
fn auxk_backward(
    sae: &ReluSae,
    ws: &Workspace,
    indptr: &[usize],
    entries: &[(u32, f32)],
    weight: f32,
    g_scale: f32,
    grad: &mut ReluSaeGrad,
) -> f64 {
    let (n, d_in, d_sae) = (ws.xc.nrows(), sae.d_in, sae.d_sae);
    let w_dec = &sae.w_dec;
    let inv_g = 1.0 / g_scale;
    // per row: G = weight · g_scale · (ê + x̂ − x) (n, d_in) and P at the auxiliary entries
    let mut g_aux = zeros(n, d_in);
    let e = &ws.e;
    let rows: Vec<(f64, Vec<f32>)> = par_rows_mut_map(g_aux.view_mut(), |i, g| {
        let (a, b) = (indptr[i], indptr[i + 1]);
        g.fill(0.0);
        for &(j, v) in &entries[a..b] {
            axpy(v, w_dec.row(j as usize).as_slice().expect("standard layout"), g);
        }
        let e_row = e.row(i);
        let e_row = e_row.as_slice().expect("standard layout");
        let mut s = 0.0f64;
        for (g, &ev) in g.iter_mut().zip(e_row) {
            *g += ev * inv_g; // ê − (x − x̂)
            s += (*g as f64) * (*g as f64);
            *g *= weight * g_scale;
        }
        let p: Vec<f32> = entries[a..b]
            .iter()
            .map(|&(j, _)| dot(g, w_dec.row(j as usize).as_slice().expect("standard layout")))
            .collect();
        (s, p)
    });
    let mut p_all = Vec::with_capacity(entries.len());
    let mut total = 0.0f64;
    for (s, p) in rows {
        total += s;
        p_all.extend(p);
    }

    // CSC over features: (row, entry position) in row order
    let mut colptr = vec![0usize; d_sae + 1];
    for &(j, _) in entries {
        colptr[j as usize + 1] += 1;
    }
    for j in 0..d_sae {
        colptr[j + 1] += colptr[j];
    }
    let mut col = vec![(0u32, 0u32); entries.len()];
    let mut next = colptr[..d_sae].to_vec();
    for i in 0..n {
        for (q, &(j, _)) in entries.iter().enumerate().take(indptr[i + 1]).skip(indptr[i]) {
            col[next[j as usize]] = (i as u32, q as u32);
            next[j as usize] += 1;
        }
    }

    // grad W_dec_j += Σ a_bj G_b ; grad W_enc[:, j] += Σ P_bj xc_b ; grad b_enc_j += Σ P_bj
    let xc = &ws.xc;
    let enc_parts: Vec<Option<(Vec<f32>, f64)>> = grad
        .w_dec
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .map(|(j, mut gd)| {
            let list = &col[colptr[j]..colptr[j + 1]];
            if list.is_empty() {
                return None;
            }
            let gd = gd.as_slice_mut().expect("standard layout");
            let mut ge = vec![0.0f32; d_in];
            let mut p_sum = 0.0f64;
            for &(b, q) in list {
                let (b, q) = (b as usize, q as usize);
                axpy2(
                    entries[q].1,
                    g_aux.row(b).to_slice().expect("standard layout"),
                    gd,
                    p_all[q],
                    xc.row(b).to_slice().expect("standard layout"),
                    &mut ge,
                );
                p_sum += p_all[q] as f64;
            }
            Some((ge, p_sum))
        })
        .collect();
    for (j, part) in enc_parts.into_iter().enumerate() {
        if let Some((ge, p_sum)) = part {
            for (k, v) in ge.into_iter().enumerate() {
                grad.w_enc[[k, j]] += v;
            }
            grad.b_enc[j] += p_sum as f32;
        }
    }
    total / n as f64
}

/// Dense kernels: every product is a faer GEMM.
fn dense_backward(
    sae: &ReluSae,
    ws: &mut Workspace,
    dnorm: &Array1<f32>,
    g_scale: f32,
    l1_n: f32,
    grad: &mut ReluSaeGrad,
) {
    let (n, d_sae) = ws.f.dim();
    // e = f W_dec − xc = x̂ − x                                                    (n, d_in)
    gemm(ws.e.view_mut(), ws.f.view(), sae.w_dec.view(), false);
    let xc = &ws.xc;
    let row_mse: Vec<f64> = par_rows_mut_map(ws.e.view_mut(), |i, e| {
        let xc = xc.row(i);
        let xc = xc.as_slice().expect("standard layout");
        let mut s = 0.0f64;
        for (e, &x) in e.iter_mut().zip(xc) {
            *e -= x;
            s += (*e as f64) * (*e as f64);
            *e *= g_scale; // now dL/dx̂
        }
        s
    });
    ws.row_mse.copy_from_slice(&row_mse);

    // grad W_dec = fᵀ G + (λ/n) (Σ_rows f_j) W_dec_j / ‖W_dec_j‖                  (d_sae, d_in)
    gemm(grad.w_dec.view_mut(), ws.f.t(), ws.e.view(), false);
    let f_sum = col_sums_f64(ws.f.view());
    par_rows_mut(grad.w_dec.view_mut(), |j, g| {
        if dnorm[j] > 0.0 && f_sum[j] != 0.0 {
            let c = l1_n * f_sum[j] as f32 / dnorm[j];
            axpy(c, sae.w_dec.row(j).as_slice().expect("standard layout"), g);
        }
    });

    // P = (G W_decᵀ + (λ/n) ‖W_dec_j‖) ⊙ [f > 0]                                  (n, d_sae)
    if ws.p.dim() != (n, d_sae) {
        ws.p = zeros(n, d_sae);
    }
    gemm(ws.p.view_mut(), ws.e.view(), sae.w_dec.t(), false);
    let dn = contiguous(&dnorm);
    let (f, dn) = (&ws.f, &*dn);
    par_rows_mut(ws.p.view_mut(), |i, p| {
        let f = f.row(i);
        let f = f.as_slice().expect("standard layout");
        for ((p, &f), &w) in p.iter_mut().zip(f).zip(dn) {
            *p = if f > 0.0 { *p + l1_n * w } else { 0.0 };
        }
    });

    // grad W_enc = xcᵀ P (d_in, d_sae); grad b_enc = Σ_rows P
    gemm(grad.w_enc.view_mut(), ws.xc.t(), ws.p.view(), false);
    let pb = col_sums_f64(ws.p.view());
    for (g, v) in grad.b_enc.iter_mut().zip(pb) {
        *g = v as f32;
    }

    // firing counts (integers: exact in any order)
    let counts: Vec<Vec<u32>> =
        ws.f.axis_chunks_iter(Axis(0), 256)
            .into_par_iter()
            .map(|blk| {
                let mut c = vec![0u32; d_sae];
                for row in blk.rows() {
                    for (c, &v) in c.iter_mut().zip(row.as_slice().expect("standard layout")) {
                        *c += (v > 0.0) as u32;
                    }
                }
                c
            })
            .collect();
    ws.fired.iter_mut().for_each(|c| *c = 0);
    for c in counts {
        for (t, v) in ws.fired.iter_mut().zip(c) {
            *t += v;
        }
    }
}

/// Sparse kernels: only the encoder product is dense; everything downstream of the codes walks
/// the active (row, feature) pairs.
fn sparse_backward(
    sae: &ReluSae,
    ws: &mut Workspace,
    dnorm: &Array1<f32>,
    g_scale: f32,
    l1_n: f32,
    grad: &mut ReluSaeGrad,
) {
    let (n, d_sae) = ws.f.dim();
    let d_in = sae.d_in;
    // CSR of f
    ws.indptr.clear();
    ws.indptr.push(0);
    for &c in &ws.row_nnz {
        let last = *ws.indptr.last().expect("non-empty");
        ws.indptr.push(last + c as usize);
    }
    let nnz = ws.indptr[n];
    ws.indices.resize(nnz, 0);
    ws.fvals.resize(nnz, 0.0);
    ws.pvals.resize(nnz, 0.0);
    {
        let mut idx_rest: &mut [u32] = &mut ws.indices;
        let mut val_rest: &mut [f32] = &mut ws.fvals;
        let mut jobs = Vec::with_capacity(n);
        for i in 0..n {
            let len = ws.row_nnz[i] as usize;
            let (a, b) = std::mem::take(&mut idx_rest).split_at_mut(len);
            let (c, d) = std::mem::take(&mut val_rest).split_at_mut(len);
            jobs.push((i, a, c));
            idx_rest = b;
            val_rest = d;
        }
        let (active, f) = (&ws.row_active, &ws.f);
        jobs.into_par_iter().for_each(|(i, idx, val)| {
            if active[i].len() == idx.len() {
                for ((d, v), &(j, f)) in idx.iter_mut().zip(val.iter_mut()).zip(&active[i]) {
                    *d = j;
                    *v = f;
                }
            } else {
                // past the cap: read the row again
                let mut k = 0;
                for (j, &v) in f.row(i).iter().enumerate() {
                    if v > 0.0 {
                        idx[k] = j as u32;
                        val[k] = v;
                        k += 1;
                    }
                }
            }
        });
    }

    // e = Σ_active f_j W_dec_j − xc, then G = g_scale e; P at active pairs
    let w_dec = &sae.w_dec;
    let (indptr, indices, fvals) = (&ws.indptr, &ws.indices, &ws.fvals);
    let dn = &*contiguous(&dnorm);
    // G and xc are also written packed by blocks of GRAD_COLS columns (zero-padded): block c holds
    // rows 0..n of columns c·GRAD_COLS.. contiguously, so that one block of both (n × 32 floats
    // each, 1 MiB at n = 4096) stays in a core's cache while the gradient pass below gathers every
    // feature's rows from it
    let blocks = d_in.div_ceil(GRAD_COLS);
    ws.packed.resize(2 * blocks * n * GRAD_COLS, 0.0);
    let packed = Disjoint(ws.packed.as_mut_ptr());
    let pack = |which: usize, i: usize, row: &[f32]| {
        for c in 0..blocks {
            let (c0, c1) = (c * GRAD_COLS, ((c + 1) * GRAD_COLS).min(d_in));
            let off = ((which * blocks + c) * n + i) * GRAD_COLS;
            // SAFETY: `off + GRAD_COLS ≤ 2·blocks·n·GRAD_COLS` (the buffer's length: which < 2,
            // c < blocks, i < n), and only row i's task writes the range of row i.
            let dst = unsafe { std::slice::from_raw_parts_mut(packed.ptr().add(off), GRAD_COLS) };
            dst[..c1 - c0].copy_from_slice(&row[c0..c1]);
            dst[c1 - c0..].fill(0.0);
        }
    };
    let mut pv_rest: &mut [f32] = &mut ws.pvals;
    let mut pjobs = Vec::with_capacity(n);
    for i in 0..n {
        let (a, b) = std::mem::take(&mut pv_rest).split_at_mut(indptr[i + 1] - indptr[i]);
        pjobs.push(a);
        pv_rest = b;
    }
    let row_mse: Vec<f64> =
        ws.e.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(ws.xc.axis_iter(Axis(0)))
            .zip(pjobs)
            .enumerate()
            .map(|(i, ((mut e, xc), pv))| {
                let e = e.as_slice_mut().expect("standard layout");
                let xc = xc.as_slice().expect("standard layout");
                for (e, &x) in e.iter_mut().zip(xc) {
                    *e = -x;
                }
                let (a, b) = (indptr[i], indptr[i + 1]);
                for k in a..b {
                    axpy(
                        fvals[k],
                        w_dec.row(indices[k] as usize).as_slice().expect("standard layout"),
                        e,
                    );
                }
                let mut s = 0.0f64;
                for v in e.iter_mut() {
                    s += (*v as f64) * (*v as f64);
                    *v *= g_scale;
                }
                pack(0, i, e);
                pack(1, i, xc);
                let row = |k: usize| w_dec.row(indices[k] as usize).to_slice().expect("standard layout");
                let mut k = a;
                for p4 in pv.chunks_mut(4) {
                    if let [p0, p1, p2, p3] = p4 {
                        let d = dot4(e, row(k), row(k + 1), row(k + 2), row(k + 3));
                        for (p, (d, kk)) in [p0, p1, p2, p3].into_iter().zip(d.into_iter().zip(k..)) {
                            *p = d + l1_n * dn[indices[kk] as usize];
                        }
                    } else {
                        for (p, kk) in p4.iter_mut().zip(k..) {
                            *p = dot(e, row(kk)) + l1_n * dn[indices[kk] as usize];
                        }
                    }
                    k += 4;
                }
                s
            })
            .collect();
    ws.row_mse.copy_from_slice(&row_mse);

    // CSC: entries of feature j in row order
    ws.colptr.clear();
    ws.colptr.resize(d_sae + 1, 0);
    for &j in ws.indices.iter() {
        ws.colptr[j as usize + 1] += 1;
    }
    for j in 0..d_sae {
        ws.colptr[j + 1] += ws.colptr[j];
    }
    ws.col_entries.resize(nnz, (0, 0.0, 0.0));
    {
        let mut next: Vec<usize> = ws.colptr[..d_sae].to_vec();
        for i in 0..n {
            for k in ws.indptr[i]..ws.indptr[i + 1] {
                let j = ws.indices[k] as usize;
                ws.col_entries[next[j]] = (i as u32, ws.fvals[k], ws.pvals[k]);
                next[j] += 1;
            }
        }
    }
    for j in 0..d_sae {
        ws.fired[j] = (ws.colptr[j + 1] - ws.colptr[j]) as u32;
    }

    // grad W_dec_j = Σ_rows f_bj G_b + (λ/n) (Σ f_bj) Ŵ_j ; grad W_encᵀ_j = Σ_rows P_bj xc_b
    let (colptr, col_entries) = (&ws.colptr, &ws.col_entries);
    // per feature, in row order: Σ f (for the L1 term) and Σ P (= grad b_enc)
    let sums: Vec<(f64, f64)> = (0..d_sae)
        .into_par_iter()
        .map(|j| {
            let (mut f_sum, mut p_sum) = (0.0f64, 0.0f64);
            for &(_, fv, pv) in &col_entries[colptr[j]..colptr[j + 1]] {
                f_sum += fv as f64;
                p_sum += pv as f64;
            }
            (f_sum, p_sum)
        })
        .collect();
    let (e_pack, x_pack) = (
        &ws.packed[..blocks * n * GRAD_COLS],
        &ws.packed[blocks * n * GRAD_COLS..],
    );
    grad.w_dec
        .axis_chunks_iter_mut(Axis(1), GRAD_COLS)
        .into_par_iter()
        .zip(grad.w_enc.axis_chunks_iter_mut(Axis(0), GRAD_COLS))
        .enumerate()
        .for_each(|(c, (mut gd, mut ge))| {
            let blk = c * n * GRAD_COLS..(c + 1) * n * GRAD_COLS;
            let (ep, xp) = (&e_pack[blk.clone()], &x_pack[blk]);
            let w = gd.ncols();
            for j in 0..d_sae {
                let (sd, se) = gather_block(&col_entries[colptr[j]..colptr[j + 1]], ep, xp);
                let f_sum = sums[j].0;
                let mut gd_j = gd.row_mut(j);
                if dn[j] > 0.0 && f_sum != 0.0 {
                    let coef = l1_n * f_sum as f32 / dn[j];
                    let wj = w_dec.row(j);
                    let wj = &wj.to_slice().expect("standard layout")[c * GRAD_COLS..c * GRAD_COLS + w];
                    for ((g, &s), &wv) in gd_j.iter_mut().zip(&sd).zip(wj) {
                        *g = s + coef * wv;
                    }
                } else {
                    for (g, &s) in gd_j.iter_mut().zip(&sd) {
                        *g = s;
                    }
                }
                for (t, &s) in se[..w].iter().enumerate() {
                    ge[[t, j]] = s;
                }
            }
        });
    let b_enc: Vec<f32> = sums.iter().map(|&(_, p)| p as f32).collect();
    grad.b_enc.assign(&ArrayView1::from(&b_enc));
}

/// Active (feature, value) pairs kept per row by the statistics pass: four times the mean a row
/// can have in a batch that takes the sparse kernels, and at least 64.
fn active_cap(d_sae: usize) -> usize {
    ((4.0 * SPARSE_MAX_DENSITY * d_sae as f64) as usize).max(64)
}

/// Columns per block of the packed (row, column-block) layout of [`gather_block`] (measured at
/// d_in 576, 4,608 features, batch 4,096, the gathers alone: 16 → 24 ms, 32 → 18 ms, 64 → 20 ms).
const GRAD_COLS: usize = 32;

super::simd::multiversion! {
    /// For one feature and one block of columns: `(Σ f_b G_b, Σ P_b xc_b)` over the feature's
    /// entries `(row b, f_b, P_b)` in row order, from rows packed `GRAD_COLS` wide.
    fn gather_block(entries: &[(u32, f32, f32)], ep: &[f32], xp: &[f32]) -> ([f32; GRAD_COLS], [f32; GRAD_COLS]) {
        let mut sd = [0.0f32; GRAD_COLS];
        let mut se = [0.0f32; GRAD_COLS];
        for &(b, fv, pv) in entries {
            let b = b as usize * GRAD_COLS;
            let er: &[f32; GRAD_COLS] = ep[b..b + GRAD_COLS].try_into().expect("packed block");
            let xr: &[f32; GRAD_COLS] = xp[b..b + GRAD_COLS].try_into().expect("packed block");
            for t in 0..GRAD_COLS {
                sd[t] += fv * er[t];
                se[t] += pv * xr[t];
            }
        }
        (sd, se)
    }
}

/// A buffer that parallel tasks write at disjoint positions (each task's range is stated where it
/// writes).
#[derive(Clone, Copy)]
struct Disjoint(*mut f32);
// SAFETY: only used for writes to disjoint ranges, one task per range (see each use).
unsafe impl Send for Disjoint {}
unsafe impl Sync for Disjoint {}

impl Disjoint {
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// The elements of a vector as one slice: borrowed when it is laid out contiguously in order (as
/// every vector this module allocates is), else copied, so public fields set by a caller to any
/// layout (a reversed or strided view made owned) are read correctly instead of panicking.
fn contiguous(a: &Array1<f32>) -> std::borrow::Cow<'_, [f32]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().copied().collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reversed_vector_is_read_in_order_not_a_panic() {
        let reversed = Array1::from(vec![1.0f32, 2.0, 3.0]).slice_move(s![..;-1]);
        assert!(reversed.as_slice().is_none());
        assert_eq!(&*contiguous(&reversed), &[3.0, 2.0, 1.0]);
        let plain = Array1::from(vec![1.0f32, 2.0]);
        assert!(matches!(contiguous(&plain), std::borrow::Cow::Borrowed(_)));
    }

    fn data(n: usize, d: usize, seed: u64) -> Array2<f32> {
        let mut rng = SplitMix64::new(seed);
        Array2::from_shape_simple_fn((n, d), || rng.normal() as f32)
    }

    fn max_rel(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        (a - b).iter().fold(0.0f32, |m, v| m.max(v.abs())) / scale
    }

    #[test]
    fn dense_and_sparse_kernels_give_the_same_loss_and_gradient() {
        // one column block, two with a narrower last one, three; codes sparse-ish, and dense
        // enough (b_enc = 0) that rows pass the cap on kept active pairs and are read again
        for (d_in, b_enc) in [(24, -0.5f32), (40, -0.5), (70, -0.3), (40, 0.0)] {
            let mut sae = ReluSae::random(d_in, 96, 5);
            sae.b_enc.fill(b_enc);
            sae.b_dec = Array1::from_shape_fn(d_in, |k| 0.1 * k as f32);
            let x = data(300, d_in, 6);
            let (ld, gd) = sae.loss_and_grad_with(x.view(), 0.3, StepKernels::Dense);
            let (ls, gs) = sae.loss_and_grad_with(x.view(), 0.3, StepKernels::Sparse);
            let at = format!("d_in {d_in}, b_enc {b_enc}, L0 {}", ld.l0);
            assert!((ld.loss - ls.loss).abs() < 1e-5 * ld.loss, "{at}: {ld:?} vs {ls:?}");
            assert_eq!(ld.l0, ls.l0, "{at}");
            assert!(max_rel(&gd.w_enc, &gs.w_enc) < 1e-4, "{at}");
            assert!(max_rel(&gd.w_dec, &gs.w_dec) < 1e-4, "{at}");
            let b = |v: &Array1<f32>| v.clone().insert_axis(Axis(0));
            assert!(max_rel(&b(&gd.b_enc), &b(&gs.b_enc)) < 1e-4, "{at}");
            assert!(max_rel(&b(&gd.b_dec), &b(&gs.b_dec)) < 1e-4, "{at}");
        }
    }

    #[test]
    fn sparse_codes_round_trip_through_dense() {
        let sae = ReluSae::random(8, 32, 1);
        let x = data(50, 8, 2);
        let dense = sae.encode(x.view());
        let sparse = sae.encode_sparse(x.view());
        assert_eq!(sparse.to_dense(), dense);
        assert_eq!(SparseCodes::from_dense(dense.view()), sparse);
        assert_eq!(sparse.indptr.len(), 51);
        let a = sae.decode(dense.view());
        let b = sae.decode_sparse(&sparse);
        assert!(max_rel(&a, &b) < 1e-5);
    }

    #[test]
    fn encode_applies_the_input_scale() {
        let mut sae = ReluSae::random(8, 16, 3);
        let x = data(10, 8, 4);
        let codes = sae.encode(x.view());
        sae.input_scale = 2.0;
        let half = x.mapv(|v| v / 2.0);
        assert!(max_rel(&codes, &sae.encode(half.view())) < 1e-6);
        // decode divides by the scale: a reconstruction lives in the input's units
        let r1 = sae.reconstruct(half.view());
        sae.input_scale = 1.0;
        let r2 = sae.reconstruct(x.view());
        assert!(max_rel(&(2.0 * r1), &r2) < 1e-5);
    }
}
