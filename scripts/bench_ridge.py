#!/usr/bin/env python3
"""Data for benches/ridge_vs_himalaya.rs: one synthetic ridge problem written as .npy files that
both `cortexflow ridge` and scripts/himalaya_ridge.py read.

usage: bench_ridge.py N_TRAIN N_FEATURES N_TARGETS OUT_DIR [--seed 0] [--test-frac 0.2]
           [--n-alphas 10] [--log-alpha-min 0] [--log-alpha-max 6]

Model (fixed seed, so the same arguments always give the same bytes):
  * X (n_train + n_test, p): Gaussian features plus a shared rank-10 component (half the variance
    of every feature), so the spectrum decays as in real encoding-model designs.
  * W (p, t): sparse, each target reads max(1, p // 50) features chosen at random, Gaussian weights.
  * Y = sqrt(snr_j) * s_j / sd(s_j) + e_j, with s = X W, e ~ N(0, 1) and a per-target SNR
    spread log-uniformly over 10^-3 .. 10^1 (from voxels with nothing to predict to easy ones), so
    the chosen penalties span the grid.
  * n_test = round(test_frac * n_train) extra rows after the training rows are the test set.
  * Centred: X and Y columns minus the training rows' means (the test rows minus the same means),
    because neither tool fits an intercept here.

Writes OUT_DIR/{X,Y,X_test,Y_test}.npy (float64, C order), OUT_DIR/alphas.txt (one line, the
penalties np.logspace(min, max, n) as comma-separated repr floats, passed verbatim to both
tools) and, last, OUT_DIR/meta.json (shapes, seed, seconds): its presence marks a complete set.
Y is produced in blocks of targets into memory-mapped files, so peak memory stays near the size
of X plus one block.
"""
import argparse
import json
import os
import time

import numpy as np
import scipy.sparse as sp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n_train", type=int)
    ap.add_argument("n_features", type=int)
    ap.add_argument("n_targets", type=int)
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-frac", type=float, default=0.2)
    ap.add_argument("--n-alphas", type=int, default=10)
    ap.add_argument("--log-alpha-min", type=float, default=0.0)
    ap.add_argument("--log-alpha-max", type=float, default=6.0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    n, p, t = a.n_train, a.n_features, a.n_targets
    n_test = int(round(a.test_frac * n))
    m = n + n_test
    os.makedirs(a.out_dir, exist_ok=True)
    meta_path = os.path.join(a.out_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)
    rng = np.random.default_rng(a.seed)

    # X: independent part + shared low-rank part, equal variance, then centred on the training rows
    rank = min(10, p)
    x = rng.standard_normal((m, p))
    x *= np.sqrt(0.5)
    x += (rng.standard_normal((m, rank)) @ rng.standard_normal((rank, p))) * np.sqrt(0.5 / rank)
    x -= x[:n].mean(axis=0)
    np.save(os.path.join(a.out_dir, "X.npy"), np.ascontiguousarray(x[:n]))
    np.save(os.path.join(a.out_dir, "X_test.npy"), np.ascontiguousarray(x[n:]))

    # sparse planted weights and per-target SNR
    k = max(1, p // 50)
    rows = np.concatenate([rng.choice(p, size=k, replace=False) for _ in range(t)])
    cols = np.repeat(np.arange(t), k)
    w = sp.csc_matrix((rng.standard_normal(t * k), (rows, cols)), shape=(p, t))
    snr = 10.0 ** rng.uniform(-3.0, 1.0, size=t)

    y_tr = np.lib.format.open_memmap(os.path.join(a.out_dir, "Y.npy"), mode="w+", dtype=np.float64, shape=(n, t))
    y_te = np.lib.format.open_memmap(
        os.path.join(a.out_dir, "Y_test.npy"), mode="w+", dtype=np.float64, shape=(n_test, t)
    )
    block = max(1, min(t, (64 << 20) // (8 * m)))  # ~64 MiB of Y per block
    x_t = np.ascontiguousarray(x.T)  # (p, m), so each block is a sparse (b, p) @ dense (p, m) product
    del x
    w_t = w.T.tocsr()  # (t, p)
    for j0 in range(0, t, block):
        j1 = min(t, j0 + block)
        s = np.ascontiguousarray((w_t[j0:j1] @ x_t).T)  # (m, b)
        s /= s[:n].std(axis=0)
        y = s * np.sqrt(snr[j0:j1]) + rng.standard_normal((m, j1 - j0))
        y -= y[:n].mean(axis=0)
        y_tr[:, j0:j1] = y[:n]
        y_te[:, j0:j1] = y[n:]
    y_tr.flush()
    y_te.flush()
    del y_tr, y_te

    alphas = np.logspace(a.log_alpha_min, a.log_alpha_max, a.n_alphas)
    with open(os.path.join(a.out_dir, "alphas.txt"), "w") as f:
        f.write(",".join(repr(float(v)) for v in alphas) + "\n")
    meta = {
        "n_train": n,
        "n_test": n_test,
        "n_features": p,
        "n_targets": t,
        "nonzero_weights_per_target": k,
        "seed": a.seed,
        "snr_log10_range": [-3.0, 1.0],
        "alphas": [float(v) for v in alphas],
        "seconds": time.perf_counter() - t0,
    }
    with open(meta_path + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_path + ".tmp", meta_path)
    print(json.dumps({"out_dir": a.out_dir, "seconds": meta["seconds"]}))


if __name__ == "__main__":
    main()
