//! Activation spools: one layer's per-token residual-stream vectors on disk, in chunks, so that
//! SAE training reads a corpus of any size with bounded memory (see [`super::stream`]).
//!
//! Layout of a spool folder:
//! - `spool.json` ([`SpoolManifest`]): the settings (model, layer, context, held-out fraction),
//!   the sources with their sha256 and token counts, the chunk list, and `complete`;
//! - `chunk-00000.npy`, …: `<f4` C-order `(rows, d)` NumPy arrays, readable by `numpy.load`.
//!
//! [`build_spool`] tokenizes each text file whole, cuts the ids into non-overlapping windows of
//! `context − 1` tokens, prefixes each with BOS (the attention sink, whose position is dropped),
//! runs the LM and keeps the chosen layer's vector at every position but BOS and the first
//! `skip_first` tokens (default 1: see [`SpoolOptions::skip_first`]). The last
//! `heldout_fraction` of each source's windows (its end, not a random sample, so held-out text
//! never shares a window with training text) go to held-out chunks. A chunk holds up to
//! `chunk_windows` windows of one source and one split, and is written atomically: an interrupted
//! build resumes at the first missing chunk; a spool made with other settings is refused, naming
//! the difference.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{s, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use crate::lm::LanguageModel;
use crate::store::{read_npy_f32, write_npy_f32};
use crate::{Error, Result};

pub const SPOOL_FILE: &str = "spool.json";

/// One text file that went into a spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolSource {
    pub path: String,
    pub sha256: String,
    /// Tokens kept (BOS not counted), training + held out.
    pub n_tokens: usize,
    pub n_windows: usize,
    pub n_heldout_windows: usize,
}

/// One chunk file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolChunk {
    pub file: String,
    /// Index into [`SpoolManifest::sources`].
    pub source: usize,
    /// Windows `windows.0 .. windows.1` of that source.
    pub windows: (usize, usize),
    pub rows: usize,
    pub heldout: bool,
}

/// `spool.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolManifest {
    /// Model identity (its manifest's source and sha256, blocks kept) or a caller's label.
    pub model: String,
    pub layer: usize,
    pub d: usize,
    /// Positions per window, BOS included.
    pub context: usize,
    /// Tokens dropped at the start of every window, after BOS.
    #[serde(default)]
    pub skip_first: usize,
    pub heldout_fraction: f64,
    pub sources: Vec<SpoolSource>,
    pub chunks: Vec<SpoolChunk>,
    /// False while chunks are still being written.
    pub complete: bool,
}

impl SpoolManifest {
    /// Rows in the training (false) or held-out (true) chunks.
    pub fn n_rows(&self, heldout: bool) -> usize {
        self.chunks
            .iter()
            .filter(|c| c.heldout == heldout)
            .map(|c| c.rows)
            .sum()
    }

    /// Indices of the training (false) or held-out (true) chunks, in file order.
    pub fn chunk_ids(&self, heldout: bool) -> Vec<usize> {
        (0..self.chunks.len())
            .filter(|&i| self.chunks[i].heldout == heldout)
            .collect()
    }

    /// The first setting in which `other` differs from `self` (chunk contents aside).
    fn difference(&self, other: &SpoolManifest) -> Option<String> {
        if self.model != other.model {
            return Some(format!("model `{}` vs `{}`", self.model, other.model));
        }
        if self.layer != other.layer {
            return Some(format!("layer {} vs {}", self.layer, other.layer));
        }
        if self.d != other.d {
            return Some(format!("d {} vs {}", self.d, other.d));
        }
        if self.context != other.context {
            return Some(format!("context {} vs {}", self.context, other.context));
        }
        if self.skip_first != other.skip_first {
            return Some(format!("skip-first {} vs {}", self.skip_first, other.skip_first));
        }
        if self.heldout_fraction != other.heldout_fraction {
            return Some(format!(
                "held-out fraction {} vs {}",
                self.heldout_fraction, other.heldout_fraction
            ));
        }
        if self.sources != other.sources {
            return Some("the source files or their contents".into());
        }
        if self.chunks != other.chunks {
            return Some("the chunk plan".into());
        }
        None
    }
}

/// A complete spool, opened for reading.
#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
    pub manifest: SpoolManifest,
}

impl Spool {
    /// Opens a complete spool (an incomplete one is refused: run [`build_spool`] again).
    pub fn open(dir: &Path) -> Result<Spool> {
        let path = dir.join(SPOOL_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest: SpoolManifest =
            serde_json::from_str(&text).map_err(|e| Error::parse(&path, "spool manifest", e.to_string()))?;
        if !manifest.complete {
            return Err(Error::Invalid(format!(
                "{} is an incomplete spool (its build was interrupted); run the build again to finish it",
                dir.display()
            )));
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn d(&self) -> usize {
        self.manifest.d
    }

    /// Chunk `i` as `(rows, d)`, its shape checked against the manifest.
    pub fn read_chunk(&self, i: usize) -> Result<Array2<f32>> {
        let c = &self.manifest.chunks[i];
        let path = self.dir.join(&c.file);
        let x = read_npy_f32(&path)?;
        if x.dim() != (c.rows, self.manifest.d) {
            return Err(Error::Invalid(format!(
                "{}: shape {:?}, but {SPOOL_FILE} says ({}, {})",
                path.display(),
                x.dim(),
                c.rows,
                self.manifest.d
            )));
        }
        Ok(x)
    }

    /// Up to `max_rows` rows of one split, from its chunks in order (for quality metrics).
    pub fn read_split(&self, heldout: bool, max_rows: usize) -> Result<Array2<f32>> {
        let mut parts = Vec::new();
        let mut n = 0;
        for i in self.manifest.chunk_ids(heldout) {
            if n >= max_rows {
                break;
            }
            let x = self.read_chunk(i)?;
            let take = x.nrows().min(max_rows - n);
            n += take;
            parts.push((x, take));
        }
        let views: Vec<ArrayView2<f32>> = parts.iter().map(|(p, take)| p.slice(s![..*take, ..])).collect();
        if views.is_empty() {
            return Ok(Array2::zeros((0, self.manifest.d)));
        }
        ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Writes an in-memory matrix as a spool of training chunks of `chunk_rows` rows (and
    /// optionally the given held-out rows): for tests and for activations computed elsewhere.
    pub fn from_matrix(
        dir: &Path,
        x: ArrayView2<'_, f32>,
        heldout: Option<ArrayView2<'_, f32>>,
        chunk_rows: usize,
        label: &str,
    ) -> Result<Spool> {
        let chunk_rows = chunk_rows.max(1);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let d = x.ncols();
        let mut chunks = Vec::new();
        let mut write = |m: ArrayView2<f32>, held: bool| -> Result<()> {
            for (k, blk) in m.axis_chunks_iter(Axis(0), chunk_rows).enumerate() {
                let file = format!("chunk-{:05}.npy", chunks.len());
                write_npy_f32(&dir.join(&file), blk)?;
                chunks.push(SpoolChunk {
                    file,
                    source: 0,
                    windows: (k, k + 1),
                    rows: blk.nrows(),
                    heldout: held,
                });
            }
            Ok(())
        };
        write(x, false)?;
        if let Some(h) = heldout {
            if h.ncols() != d {
                return Err(Error::Invalid(format!(
                    "held-out rows have {} columns, training rows {d}",
                    h.ncols()
                )));
            }
            write(h, true)?;
        }
        let manifest = SpoolManifest {
            model: label.into(),
            layer: 0,
            d,
            context: 0,
            skip_first: 0,
            heldout_fraction: 0.0,
            sources: vec![],
            chunks,
            complete: true,
        };
        write_manifest(dir, &manifest)?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            manifest,
        })
    }
}

fn write_manifest(dir: &Path, m: &SpoolManifest) -> Result<()> {
    let text = serde_json::to_string_pretty(m).expect("spool manifest serialises");
    crate::paths::write_atomic(&dir.join(SPOOL_FILE), text.as_bytes())
}

/// Settings of [`build_spool`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolOptions {
    /// Layer kept (0 = embeddings, ℓ = after block ℓ).
    pub layer: usize,
    /// Positions per window, BOS included. Default 256.
    pub context: usize,
    /// Tokens dropped at the start of every window, after BOS. Default 1: in SmolLM2 the first
    /// token after BOS often carries a massive activation (an attention-sink artefact of the window
    /// start, up to ~100× the median norm at layer 15) that would dominate the input scale and R².
    pub skip_first: usize,
    /// Windows per LM call. Default 8.
    pub batch_size: usize,
    /// Windows per chunk file. Default 32 (≈ 8K rows).
    pub chunk_windows: usize,
    /// Fraction of each source's windows (its end) held out. Default 0.1.
    pub heldout_fraction: f64,
    /// Tokens kept from the start of each source (None = all).
    pub max_tokens_per_source: Option<usize>,
    /// Progress bar on stderr.
    #[serde(skip)]
    pub progress: bool,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            layer: 0,
            context: 256,
            skip_first: 1,
            batch_size: 8,
            chunk_windows: 32,
            heldout_fraction: 0.1,
            max_tokens_per_source: None,
            progress: false,
        }
    }
}

/// A source tokenized and cut into windows (BOS not included).
struct Windows {
    windows: Vec<Vec<u32>>,
    n_heldout: usize,
}

fn tokenize_source(lm: &LanguageModel, path: &Path, opts: &SpoolOptions, per_window: usize) -> Result<Windows> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::parse(
            path,
            format!("byte {}", e.utf8_error().valid_up_to()),
            "the file is not UTF-8 text",
        )
    })?;
    let enc = lm
        .tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| Error::Invalid(format!("tokenizing {}: {e}", path.display())))?;
    let mut ids = enc.get_ids().to_vec();
    if let Some(m) = opts.max_tokens_per_source {
        ids.truncate(m);
    }
    if ids.is_empty() {
        return Err(Error::Invalid(format!("{} holds no tokens", path.display())));
    }
    let windows: Vec<Vec<u32>> = ids.chunks(per_window).map(|c| c.to_vec()).collect();
    let n_heldout = if opts.heldout_fraction > 0.0 {
        ((windows.len() as f64 * opts.heldout_fraction).ceil() as usize).min(windows.len().saturating_sub(1))
    } else {
        0
    };
    Ok(Windows { windows, n_heldout })
}

/// Runs `lm` over the text files `sources` and writes `opts.layer`'s per-token vectors to the
/// spool folder `dir` (see the module docs). `model_id` identifies the model in `spool.json`.
/// Resumes an interrupted build with the same settings; refuses a folder made with others.
pub fn build_spool(
    lm: &mut LanguageModel,
    model_id: &str,
    sources: &[PathBuf],
    dir: &Path,
    opts: &SpoolOptions,
) -> Result<Spool> {
    let mut v = build_spools(lm, model_id, sources, &[(opts.layer, dir.to_path_buf())], opts)?;
    Ok(v.pop().expect("one spool per layer"))
}

/// [`build_spool`] for several layers in one pass of the LM: `targets` pairs each layer with its
/// spool folder (`opts.layer` is not used). Each folder is the spool [`build_spool`] would write
/// for its layer alone, byte for byte (the LM's hidden states do not depend on which layers are
/// read out); each resumes and refuses other settings on its own.
pub fn build_spools(
    lm: &mut LanguageModel,
    model_id: &str,
    sources: &[PathBuf],
    targets: &[(usize, PathBuf)],
    opts: &SpoolOptions,
) -> Result<Vec<Spool>> {
    let m = &lm.manifest;
    if let Some(&(l, _)) = targets.iter().find(|(l, _)| *l > m.n_layers) {
        return Err(crate::lm::runtime::layer_error(l, m.n_layers));
    }
    if !(0.0..0.5).contains(&opts.heldout_fraction) {
        return Err(Error::Invalid(format!(
            "held-out fraction must be in [0, 0.5), found {}",
            opts.heldout_fraction
        )));
    }
    let bos = if m.prepend_bos { m.bos_token_id } else { None };
    let per_window = opts.context.saturating_sub(bos.is_some() as usize);
    if per_window == 0 || opts.context > m.context_length {
        return Err(Error::Invalid(format!(
            "context {} must hold BOS and at least one token, and at most the model's {}",
            opts.context, m.context_length
        )));
    }
    if sources.is_empty() {
        return Err(Error::Invalid("no source text files given".into()));
    }
    let chunk_windows = opts.chunk_windows.max(1);

    // plan: tokenize everything first (cheap), so the manifest is known before any LM work
    let mut planned = Vec::new();
    let mut src_meta = Vec::new();
    let mut chunks = Vec::new();
    for (si, path) in sources.iter().enumerate() {
        let w = tokenize_source(lm, path, opts, per_window)?;
        let n_train = w.windows.len() - w.n_heldout;
        for (lo, hi, held) in [(0, n_train, false), (n_train, w.windows.len(), true)] {
            let mut a = lo;
            while a < hi {
                let b = (a + chunk_windows).min(hi);
                chunks.push(SpoolChunk {
                    file: format!("chunk-{:05}.npy", chunks.len()),
                    source: si,
                    windows: (a, b),
                    rows: w.windows[a..b]
                        .iter()
                        .map(|w| w.len().saturating_sub(opts.skip_first))
                        .sum(),
                    heldout: held,
                });
                a = b;
            }
        }
        src_meta.push(SpoolSource {
            path: path.display().to_string(),
            sha256: crate::lm::import::sha256_file(path)?,
            n_tokens: w.windows.iter().map(|w| w.len().saturating_sub(opts.skip_first)).sum(),
            n_windows: w.windows.len(),
            n_heldout_windows: w.n_heldout,
        });
        planned.push(w.windows);
    }
    let d = m.d_model;
    let mut manifests = Vec::with_capacity(targets.len());
    // per target: whether it was complete already
    let mut done = Vec::with_capacity(targets.len());
    for (layer, dir) in targets {
        let manifest = SpoolManifest {
            model: model_id.into(),
            layer: *layer,
            d,
            context: opts.context,
            skip_first: opts.skip_first,
            heldout_fraction: opts.heldout_fraction,
            sources: src_meta.clone(),
            chunks: chunks.clone(),
            complete: false,
        };
        let mpath = dir.join(SPOOL_FILE);
        let mut complete = false;
        if mpath.is_file() {
            let text = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
            let old: SpoolManifest =
                serde_json::from_str(&text).map_err(|e| Error::parse(&mpath, "spool manifest", e.to_string()))?;
            if let Some(diff) = old.difference(&manifest) {
                return Err(Error::Invalid(format!(
                    "{} holds a spool made with other settings ({diff}); delete it or choose another folder",
                    dir.display()
                )));
            }
            complete = old.complete;
        }
        if !complete {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            write_manifest(dir, &manifest)?;
        }
        manifests.push(manifest);
        done.push(complete);
    }
    // the layers still to write, and where
    let todo: Vec<usize> = (0..targets.len()).filter(|&t| !done[t]).collect();
    let layers: Vec<usize> = todo.iter().map(|&t| targets[t].0).collect();

    let total: usize = chunks.iter().map(|c| c.rows).sum();
    let pb = if opts.progress && !todo.is_empty() {
        let pb = ProgressBar::new(total as u64);
        if let Ok(st) = ProgressStyle::with_template("spool {bar:40} {pos}/{len} tokens {per_sec} eta {eta}") {
            pb.set_style(st);
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let skip = bos.is_some() as usize + opts.skip_first;
    for c in chunks.iter().filter(|_| !todo.is_empty()) {
        let chunk_there = |t: usize| {
            let path = targets[t].1.join(&c.file);
            path.is_file() && read_npy_f32(&path).map(|x| x.dim() == (c.rows, d)).unwrap_or(false)
        };
        let missing: Vec<usize> = (0..todo.len()).filter(|&i| !chunk_there(todo[i])).collect();
        if missing.is_empty() {
            pb.inc(c.rows as u64);
            continue;
        }
        let mut outs: Vec<Array2<f32>> = missing.iter().map(|_| Array2::<f32>::zeros((c.rows, d))).collect();
        let read: Vec<usize> = missing.iter().map(|&i| layers[i]).collect();
        let mut row = 0;
        let wins = &planned[c.source][c.windows.0..c.windows.1];
        for batch in wins.chunks(opts.batch_size.max(1)) {
            let inputs: Vec<Vec<u32>> = batch
                .iter()
                .map(|w| bos.into_iter().chain(w.iter().copied()).collect())
                .collect();
            row = lm.run_hidden_with(&inputs, &read, |hs| {
                let mut next = row;
                for (h, out) in hs.iter().zip(outs.iter_mut()) {
                    next = row;
                    for (b, w) in batch.iter().enumerate() {
                        let keep = w.len().saturating_sub(opts.skip_first);
                        out.slice_mut(s![next..next + keep, ..])
                            .assign(&h.slice(s![b, skip..skip + keep, ..]));
                        next += keep;
                    }
                }
                next
            })?;
            pb.inc(batch.iter().map(Vec::len).sum::<usize>() as u64);
        }
        for (&i, out) in missing.iter().zip(&outs) {
            let (layer, dir) = &targets[todo[i]];
            if let Some((r, j)) = out.indexed_iter().find(|(_, v)| !v.is_finite()).map(|(ij, _)| ij) {
                return Err(Error::Model(format!(
                    "the LM produced a non-finite activation at layer {layer} for {} (chunk {}, row {r}, column {j})",
                    src_meta[c.source].path, c.file
                )));
            }
            write_npy_f32(&dir.join(&c.file), out.view())?;
        }
    }
    pb.finish_and_clear();
    targets
        .iter()
        .zip(manifests)
        .zip(done)
        .map(|(((_, dir), mut manifest), complete)| {
            if complete {
                return Spool::open(dir);
            }
            manifest.complete = true;
            write_manifest(dir, &manifest)?;
            Ok(Spool {
                dir: dir.clone(),
                manifest,
            })
        })
        .collect()
}
