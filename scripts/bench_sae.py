#!/usr/bin/env python3
"""NumPy peer of benches/sae_vs_numpy.rs: cortexflow's ReLU + L1 SAE training step
(src/sae/train.rs, src/sae/relu.rs) and SAE encoding (ReLU and TopK codes in CSR form), float32,
every matrix product a BLAS sgemm, on the data and initial weights that the bench wrote.

usage: bench_sae.py X_NPY WEIGHTS_DIR [--steps 10] [--agree-steps 5] [--encode-rows 16384]
                    [--k 32] [--seed 0] [--out JSON]
       bench_sae.py --peak [--out JSON]

Inputs (written by the bench): X_NPY (n, d_in) float32 raw activations; WEIGHTS_DIR/{W_enc
(d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in)}.npy float32 and
WEIGHTS_DIR/meta.json with input_scale, l1, lr, warmup_steps, batch_size.

One training step on a batch of raw rows xb (B, d_in), normalised units (as cortexflow):
  xc   = xb * input_scale - b_dec                              (B, d_in)
  f    = ReLU(xc W_enc + b_enc)                                (B, d_sae)
  e    = f W_dec - xc                    (= x_hat - x_norm)    (B, d_in)
  L    = mean_rows ||e||^2 + l1 * mean_rows sum_j f_j ||W_dec_j||   (also mse, sparsity, L0)
  G    = 2 e / B                                               dL/dx_hat
  gW_dec = f^T G + (l1/B) (sum_rows f_j) W_dec_j / ||W_dec_j||
  P    = (G W_dec^T + (l1/B) ||W_dec_j||) * [f > 0]            dL/dpre
  gW_enc = xc^T P ; gb_enc = sum_rows P ; gb_dec = sum_rows G - W_enc gb_enc
  gW_dec_j -= (gW_dec_j . W_dec_j / ||W_dec_j||^2) W_dec_j    (no radial component)
  Adam (beta1 0.9, beta2 0.999, eps 1e-8, bias-corrected; lr warmed up linearly over
  warmup_steps: lr * (t + 1) / warmup_steps for 0-based step t < warmup_steps), then every
  decoder row rescaled to unit norm.
The products are dense (5 sgemms of B x d_in x d_sae per step), as in the PyTorch references
(SAELens, sparsify); elementwise work is done in place on preallocated float32 buffers.

Runs, in order:
  1. agreement (--agree-steps K > 0): K full-batch steps on the first batch_size rows of X (the
     bench gives cortexflow the same rows, so every step sees the same batch on both sides);
     records the loss, mse, sparsity and L0 of each step (before its update).
  2. timing: fresh from the initial weights, one warm-up step, then --steps timed steps on batches
     drawn without replacement from a seeded permutation of all rows (reshuffled per epoch).
  3. encoding (--encode-rows R > 0): the first R rows, in blocks of 4096 rows: ReLU codes
     f = ReLU((x s - b_dec) W_enc + b_enc) and TopK codes (the k largest ReLU pre-activations per
     row, computed with b_enc = 0 like the bench's TopK SAE), each turned into CSR (indptr,
     ascending feature indices, values); one warm-up block first.
     Checksums (nnz, sum of values in float64) let the bench compare with cortexflow's codes.
With --peak, only the float32 GEMM rate of np.matmul (this NumPy's BLAS, its thread settings) on
2048 x 2048 x 2048 and on the SAE encoder's shape 4096 x 576 x 4608, best of 5 each, in GFLOP/s:
the bench takes the machine's FP32 GEMM peak from these and its own faer products.
Prints one JSON line (also written to --out): tokens/s of training and of both encodings, the
per-step losses, and the CPU share other processes took during each timed span (/proc/stat).
"""
import argparse
import json
import os
import time

import numpy as np

BETA1, BETA2, EPS = np.float32(0.9), np.float32(0.999), np.float32(1e-8)
ENCODE_ROWS = 4096


def cpu_sample():
    """(total, idle) jiffies over all CPUs and the CPU count, from /proc/stat (None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    v = [float(x) for x in lines[0].split()[1:9]]
    ncpu = sum(1 for l in lines if l.startswith("cpu") and not l.startswith("cpu "))
    return sum(v), v[3] + v[4], ncpu


class Window:
    """Wall time, own CPU time and the CPU share of other processes over a span."""

    def __enter__(self):
        self.s0, self.c0, self.t0 = cpu_sample(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        cpu = time.process_time() - self.c0
        s1 = cpu_sample()
        self.others = float("nan")
        if self.s0 and s1 and s1[0] > self.s0[0] and self.wall > 0:
            busy = 1.0 - (s1[1] - self.s0[1]) / (s1[0] - self.s0[0])
            self.others = max(0.0, busy - cpu / (self.wall * s1[2]))
        self.cpu = cpu


class Trainer:
    """cortexflow's ReLU + L1 training step (see the module docs), float32, preallocated buffers."""

    def __init__(self, w, meta, batch):
        self.s = np.float32(meta["input_scale"])
        self.l1 = np.float32(meta["l1"])
        self.lr = float(meta["lr"])
        self.warmup = int(meta["warmup_steps"])
        self.p = {k: w[k].copy() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.t = 0
        d_in, d_sae = self.p["W_enc"].shape
        f32 = np.float32
        self.xc = np.empty((batch, d_in), f32)
        self.f = np.empty((batch, d_sae), f32)
        self.pm = np.empty((batch, d_sae), f32)
        self.e = np.empty((batch, d_in), f32)
        self.g = {k: np.empty_like(v) for k, v in self.p.items()}
        self.tmp = {k: np.empty_like(v) for k, v in self.p.items()}

    def lr_at(self, step):
        if self.warmup == 0 or step >= self.warmup:
            return self.lr
        return self.lr * (step + 1) / self.warmup

    def step(self, xb):
        p, g = self.p, self.g
        W_enc, b_enc, W_dec, b_dec = p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"]
        n = xb.shape[0]
        xc, f, pm, e = self.xc[:n], self.f[:n], self.pm[:n], self.e[:n]
        np.multiply(xb, self.s, out=xc)
        xc -= b_dec
        # forward
        np.matmul(xc, W_enc, out=f)
        f += b_enc
        np.maximum(f, 0, out=f)
        dn = np.sqrt(np.einsum("ij,ij->i", W_dec, W_dec))  # (d_sae) decoder row norms
        np.matmul(f, W_dec, out=e)
        e -= xc  # x_hat - x_norm
        mse = float(np.einsum("ij,ij->i", e, e, dtype=np.float64).sum() / n)
        active = f > 0
        l0 = float(np.count_nonzero(active) / n)
        f_sum = f.sum(axis=0, dtype=np.float64)  # (d_sae)
        sparsity = float(f_sum @ dn / n)
        loss = mse + float(self.l1) * sparsity
        # backward
        e *= np.float32(2.0 / n)  # G = dL/dx_hat
        l1n = self.l1 / np.float32(n)
        np.matmul(f.T, e, out=g["W_dec"])
        g["W_dec"] += ((l1n * f_sum.astype(np.float32) / np.where(dn > 0, dn, 1))[:, None]) * W_dec
        np.matmul(e, W_dec.T, out=pm)
        pm += l1n * dn
        pm *= active
        np.matmul(xc.T, pm, out=g["W_enc"])
        g["b_enc"][...] = pm.sum(axis=0, dtype=np.float64)
        g["b_dec"][...] = e.sum(axis=0, dtype=np.float64) - W_enc @ g["b_enc"]
        # decoder rows stay on the unit sphere: drop the radial part of their gradient
        nn = np.einsum("ij,ij->i", W_dec, W_dec)
        c = np.einsum("ij,ij->i", g["W_dec"], W_dec) / np.where(nn > 0, nn, 1)
        g["W_dec"] -= c[:, None] * W_dec
        # Adam
        lr = self.lr_at(self.t)
        self.t += 1
        bc1 = 1.0 - 0.9**self.t
        bc2 = 1.0 - 0.999**self.t
        step = np.float32(lr / bc1)
        inv_bc2 = np.float32(1.0 / bc2)
        for k in p:
            m, v, gk, tmp = self.m[k], self.v[k], g[k], self.tmp[k]
            m *= BETA1
            np.multiply(gk, 1 - BETA1, out=tmp)
            m += tmp
            v *= BETA2
            np.multiply(gk, gk, out=tmp)
            tmp *= 1 - BETA2
            v += tmp
            np.multiply(v, inv_bc2, out=tmp)
            np.sqrt(tmp, out=tmp)
            tmp += EPS
            np.divide(m, tmp, out=tmp)
            tmp *= step
            p[k] -= tmp
        norms = np.sqrt(np.einsum("ij,ij->i", W_dec, W_dec))
        W_dec /= np.where(norms > 0, norms, 1)[:, None]
        return {"loss": loss, "mse": mse, "sparsity": sparsity, "l0": l0}


def encode_csr(x, w, s, k, topk):
    """CSR codes of raw rows x in blocks of ENCODE_ROWS; returns (indptr, indices, values). TopK
    uses b_enc = 0 (as the bench's TopK SAE: same weights, no negative encoder bias)."""
    W_enc, b_dec = w["W_enc"], w["b_dec"]
    b_enc = np.zeros_like(w["b_enc"]) if topk else w["b_enc"]
    d_sae = W_enc.shape[1]
    ind_parts, val_parts, counts = [], [], []
    pre = np.empty((min(ENCODE_ROWS, x.shape[0]), d_sae), np.float32)
    xc = np.empty((pre.shape[0], x.shape[1]), np.float32)
    for a in range(0, x.shape[0], ENCODE_ROWS):
        xb = x[a : a + ENCODE_ROWS]
        r = xb.shape[0]
        np.multiply(xb, s, out=xc[:r])
        xc[:r] -= b_dec
        z = pre[:r]
        np.matmul(xc[:r], W_enc, out=z)
        z += b_enc
        np.maximum(z, 0, out=z)
        if topk:
            idx = np.argpartition(z, d_sae - k, axis=1)[:, d_sae - k :]
            idx.sort(axis=1)
            val = np.take_along_axis(z, idx, axis=1)
            keep = val > 0
            counts.append(keep.sum(axis=1))
            ind_parts.append(idx[keep].astype(np.uint32))
            val_parts.append(val[keep])
        else:
            rows, cols = np.nonzero(z)
            counts.append(np.bincount(rows, minlength=r))
            ind_parts.append(cols.astype(np.uint32))
            val_parts.append(z[rows, cols])
    indptr = np.zeros(x.shape[0] + 1, np.int64)
    np.cumsum(np.concatenate(counts), out=indptr[1:])
    return indptr, np.concatenate(ind_parts), np.concatenate(val_parts)


def gemm_peak():
    """Best float32 matmul rate (GFLOP/s) of 5 runs on each shape, after a warm-up run."""
    rng = np.random.default_rng(0)
    out = {}
    for name, (m, k, n) in (("square_2048", (2048, 2048, 2048)), ("encoder_4096x576x4608", (4096, 576, 4608))):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        np.matmul(a, b, out=c)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
        out[name] = 2.0 * m * k * n / best / 1e9
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peak", action="store_true")
    ap.add_argument("--out")
    if "--peak" in os.sys.argv:
        a = ap.parse_args()
        line = json.dumps({"gemm_gflops": gemm_peak(), "numpy": np.__version__})
        if a.out:
            with open(a.out, "w") as f:
                f.write(line + "\n")
        print(line)
        return
    ap.add_argument("x_npy")
    ap.add_argument("weights_dir")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--agree-steps", type=int, default=5)
    ap.add_argument("--encode-rows", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    x = np.load(a.x_npy, mmap_mode="r")
    x = np.ascontiguousarray(x, dtype=np.float32)
    with open(os.path.join(a.weights_dir, "meta.json")) as f:
        meta = json.load(f)
    w = {k: np.load(os.path.join(a.weights_dir, f"{k}.npy")) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    for k, v in w.items():
        assert v.dtype == np.float32 and v.flags.c_contiguous, k
    batch = int(meta["batch_size"])
    n, d_in = x.shape
    d_sae = w["W_enc"].shape[1]
    out = {"n_rows": n, "d_in": d_in, "d_sae": d_sae, "batch_size": batch, "numpy": np.__version__}
    try:
        import threadpoolctl

        out["pools"] = [
            {k: d.get(k) for k in ("internal_api", "num_threads", "version")} for d in threadpoolctl.threadpool_info()
        ]
    except ImportError:
        out["pools"] = None

    # 1. agreement: full-batch steps on the first batch_size rows
    if a.agree_steps > 0:
        xb = np.ascontiguousarray(x[:batch])
        tr = Trainer(w, meta, xb.shape[0])
        out["agree"] = [tr.step(xb) for _ in range(a.agree_steps)]
        del tr

    # 2. timing
    if a.steps > 0:
        rng = np.random.default_rng(a.seed)
        perm, pos = rng.permutation(n), 0

        def next_batch():
            nonlocal perm, pos
            idx = []
            need = batch
            while need > 0:
                if pos == n:
                    perm, pos = rng.permutation(n), 0
                take = min(need, n - pos)
                idx.append(perm[pos : pos + take])
                pos += take
                need -= take
            return x[np.concatenate(idx)]

        tr = Trainer(w, meta, batch)
        tr.step(next_batch())  # warm-up
        losses = []
        with Window() as win:
            for _ in range(a.steps):
                losses.append(tr.step(next_batch()))
        out["train"] = {
            "steps": a.steps,
            "seconds": win.wall,
            "cpu_s": win.cpu,
            "tokens_per_s": a.steps * batch / win.wall,
            "others_cpu_share": win.others,
            "mean_l0": float(np.mean([s["l0"] for s in losses])),
            "losses": [s["loss"] for s in losses],
        }
        del tr

    # 3. encoding
    if a.encode_rows > 0:
        s = np.float32(meta["input_scale"])
        xe = x[: min(a.encode_rows, n)]
        out["encode"] = {}
        for name, topk in (("relu", False), ("topk", True)):
            encode_csr(xe[:ENCODE_ROWS], w, s, a.k, topk)  # warm-up block
            with Window() as win:
                indptr, ind, val = encode_csr(xe, w, s, a.k, topk)
            out["encode"][name] = {
                "rows": xe.shape[0],
                "seconds": win.wall,
                "cpu_s": win.cpu,
                "tokens_per_s": xe.shape[0] / win.wall,
                "others_cpu_share": win.others,
                "nnz": int(indptr[-1]),
                "sum": float(val.sum(dtype=np.float64)),
            }
        out["encode"]["k"] = a.k
    line = json.dumps(out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
