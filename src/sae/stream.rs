//! Training rows streamed from an activation spool ([`super::spool`]) through a shuffle buffer
//! of bounded size.
//!
//! Each epoch visits the spool's training chunks in a seeded random order, `buffer_chunks` at a
//! time (a "group"); the group's rows are shuffled together and handed out in batch-sized runs;
//! a batch that straddles two groups takes the end of one and the start of the next. So at most
//! one group is in memory (`buffer_chunks` × chunk rows × d × 4 bytes), whatever the corpus size,
//! and rows that were far apart in the text land in the same batch whenever their chunks share a
//! group.
//!
//! The order is a pure function of (seed, rows consumed): epoch e's chunk order comes from
//! `SplitMix64(mix(seed, e))`, group g's row order from `SplitMix64(mix(seed, e, g))`. So
//! [`SpoolStream::seek`] restores the exact position from a checkpoint's step count, without the
//! buffer's contents being saved.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use super::linalg::{for_each_in_row, par_rows_mut};
use super::spool::Spool;
use crate::stats::SplitMix64;
use crate::{Error, Result};

/// A deterministic, bounded-memory stream of training rows from a spool.
pub struct SpoolStream {
    spool: Spool,
    /// Training chunk ids in file order.
    train: Vec<usize>,
    n_rows: usize,
    buffer_chunks: usize,
    seed: u64,
    epoch: u64,
    group: usize,
    /// Chunk order of the current epoch (indices into `train`).
    order: Vec<usize>,
    /// Rows of the current group, in file order.
    buf: Array2<f32>,
    /// Row order of the current group.
    perm: Vec<usize>,
    pos: usize,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut r = SplitMix64::new(a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.next_u64()
}

fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

impl SpoolStream {
    /// A stream over `spool`'s training chunks, `buffer_chunks` (≥ 1) chunks in memory at a time.
    pub fn new(spool: Spool, buffer_chunks: usize, seed: u64) -> Result<Self> {
        let train = spool.manifest.chunk_ids(false);
        let n_rows = spool.manifest.n_rows(false);
        if n_rows == 0 {
            return Err(Error::Invalid(format!(
                "the spool {} has no training rows",
                spool.dir.display()
            )));
        }
        let d = spool.d();
        let mut s = SpoolStream {
            spool,
            train,
            n_rows,
            buffer_chunks: buffer_chunks.max(1),
            seed,
            epoch: 0,
            group: 0,
            order: vec![],
            buf: Array2::zeros((0, d)),
            perm: vec![],
            pos: 0,
        };
        s.load(0, 0)?;
        Ok(s)
    }

    /// Training rows in the spool (one epoch).
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub fn d(&self) -> usize {
        self.spool.d()
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// The rows now in the buffer (the current group, file order).
    pub fn buffer(&self) -> ArrayView2<'_, f32> {
        self.buf.view()
    }

    fn n_groups(&self) -> usize {
        self.train.len().div_ceil(self.buffer_chunks)
    }

    fn group_chunks(&self, g: usize) -> &[usize] {
        let lo = g * self.buffer_chunks;
        let hi = (lo + self.buffer_chunks).min(self.order.len());
        &self.order[lo..hi]
    }

    fn load(&mut self, epoch: u64, group: usize) -> Result<()> {
        if epoch != self.epoch || self.order.is_empty() {
            self.order = shuffled(self.train.len(), mix(self.seed, epoch));
        }
        self.epoch = epoch;
        self.group = group;
        let ids: Vec<usize> = self.group_chunks(group).iter().map(|&k| self.train[k]).collect();
        let mats = ids
            .iter()
            .map(|&i| self.spool.read_chunk(i))
            .collect::<Result<Vec<_>>>()?;
        let views: Vec<ArrayView2<f32>> = mats.iter().map(|m| m.view()).collect();
        self.buf = ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| Error::Invalid(e.to_string()))?;
        self.perm = shuffled(self.buf.nrows(), mix(mix(self.seed, epoch), group as u64 + 1));
        self.pos = 0;
        Ok(())
    }

    fn advance_group(&mut self) -> Result<()> {
        if self.group + 1 < self.n_groups() {
            self.load(self.epoch, self.group + 1)
        } else {
            self.load(self.epoch + 1, 0)
        }
    }

    /// Fills `dst (b, d)` with the next `b` rows, times `scale`, minus `b_dec`.
    pub fn next_batch(&mut self, mut dst: ArrayViewMut2<'_, f32>, scale: f32, b_dec: &[f32]) -> Result<()> {
        let b = dst.nrows();
        let mut r = 0;
        while r < b {
            if self.pos == self.perm.len() {
                self.advance_group()?;
            }
            let take = (b - r).min(self.perm.len() - self.pos);
            let idx = &self.perm[self.pos..self.pos + take];
            let buf = &self.buf;
            par_rows_mut(dst.slice_mut(ndarray::s![r..r + take, ..]), |i, d| {
                for_each_in_row(buf.row(idx[i]), |k, v| d[k] = v * scale - b_dec[k])
            });
            self.pos += take;
            r += take;
        }
        Ok(())
    }

    /// Moves to the position after `rows` rows have been consumed from the start.
    pub fn seek(&mut self, rows: u64) -> Result<()> {
        let epoch = rows / self.n_rows as u64;
        let mut rest = (rows % self.n_rows as u64) as usize;
        // that epoch's chunk order (kept: `load` reuses it), to find the group
        self.order = shuffled(self.train.len(), mix(self.seed, epoch));
        self.epoch = epoch;
        let mut g = 0;
        loop {
            let rows_g: usize = self
                .group_chunks(g)
                .iter()
                .map(|&k| self.spool.manifest.chunks[self.train[k]].rows)
                .sum();
            if rest < rows_g {
                break;
            }
            rest -= rows_g;
            g += 1;
        }
        self.load(epoch, g)?;
        self.pos = rest;
        Ok(())
    }

    /// Mean squared row norm of every training row (f64, chunk order) and the rows at the given
    /// sorted global indices (file order of training chunks); one pass over the spool. Also
    /// refuses non-finite values, naming the chunk, row and column.
    pub fn scan(&self, pick: &[usize]) -> Result<(f64, Array2<f32>)> {
        let d = self.d();
        let mut sum = 0.0f64;
        let mut out = Array2::<f32>::zeros((pick.len(), d));
        let mut base = 0;
        let mut p = 0;
        for &ci in &self.train {
            let x = self.spool.read_chunk(ci)?;
            for (i, row) in x.rows().into_iter().enumerate() {
                let mut s = 0.0f64;
                for (j, &v) in row.iter().enumerate() {
                    if !v.is_finite() {
                        return Err(Error::Invalid(format!(
                            "{}: non-finite value at row {i}, column {j}",
                            self.spool.dir.join(&self.spool.manifest.chunks[ci].file).display()
                        )));
                    }
                    s += (v as f64) * (v as f64);
                }
                sum += s;
                while p < pick.len() && pick[p] == base + i {
                    out.row_mut(p).assign(&row);
                    p += 1;
                }
            }
            base += x.nrows();
        }
        Ok((sum / self.n_rows as f64, out))
    }
}
