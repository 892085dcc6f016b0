#!/usr/bin/env python3
"""The peer of `cortexflow voxelwise fit` in benches/voxelwise.rs: himalaya's nested
leave-stories-out ridge for ONE subject of a ds003020-layout folder, done the way a lab would with
himalaya (numpy backend, float64).

usage: himalaya_stories.py DATA SUBJECT OUT_DIR [--outer 4] [--inner 4] [--trim-start 10]
           [--trim-end 5] [--alphas a,b,...]

The same analysis as cortexflow (src/encoding/stories.rs), so the two can be compared voxel by
voxel: stories in respdict.json's sorted order; each story's design (DATA/designs/<story>.npy, the
story's whole TR grid, trimmed by trim-start / trim-end) and responses
(DATA/preprocessed_data/<SUBJECT>/<story>.hf5, dataset `data`, read with h5py) z-scored within
the story (population sd); story s is in outer fold s % outer; inside an outer fold's training
stories, the i-th training story (in order) is in inner fold i % inner; `solve_ridge_cv_svd` with
those inner splits, scored by correlation, no intercept, then the held-out predictions; r per
voxel pooled over every held-out TR. Default penalties: 13 values 10^0 … 10^6 (cortexflow's).

Writes OUT_DIR/alphas.npy (outer folds × voxels), OUT_DIR/r.npy (voxels,) and
OUT_DIR/seconds.json ({"read": s, "solve": s}).
"""
import argparse
import json
import os
import time

import h5py
import numpy as np
from himalaya.backend import set_backend
from himalaya.ridge import solve_ridge_cv_svd
from himalaya.scoring import correlation_score


def zscore(a):
    a = a - a.mean(0)
    sd = a.std(0)
    sd[sd == 0] = 1.0
    return a / sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("subject")
    ap.add_argument("out")
    ap.add_argument("--outer", type=int, default=4)
    ap.add_argument("--inner", type=int, default=4)
    ap.add_argument("--trim-start", type=int, default=10)
    ap.add_argument("--trim-end", type=int, default=5)
    ap.add_argument("--alphas", default="")
    a = ap.parse_args()
    set_backend("numpy")
    alphas = (np.array([float(x) for x in a.alphas.split(",")]) if a.alphas else np.logspace(0, 6, 13))
    t0 = time.perf_counter()
    respdict = json.load(open(os.path.join(a.data, "respdict.json")))
    stories = sorted(respdict)
    xs, ys, story_of_row = [], [], []
    for s, name in enumerate(stories):
        n = respdict[name]
        d = np.load(os.path.join(a.data, "designs", f"{name}.npy"))
        if d.shape[0] == n + a.trim_start + a.trim_end:
            d = d[a.trim_start:a.trim_start + n]
        with h5py.File(os.path.join(a.data, "preprocessed_data", a.subject, f"{name}.hf5"), "r") as h:
            y = h["data"][:].astype(np.float64)
        assert y.shape[0] == n == d.shape[0], (name, y.shape, d.shape, n)
        xs.append(zscore(d))
        ys.append(zscore(y))
        story_of_row += [s] * n
    X, Y, story = np.vstack(xs), np.vstack(ys), np.array(story_of_row)
    del xs, ys
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    fold = story % a.outer
    pred = np.zeros_like(Y)
    chosen = []
    for k in range(a.outer):
        tr, te = np.where(fold != k)[0], np.where(fold == k)[0]
        st = story[tr]
        labels = np.unique(st)
        inner = [(np.where(np.isin(st, labels[i::a.inner], invert=True))[0], np.where(np.isin(st, labels[i::a.inner]))[0])
                 for i in range(a.inner)]
        best, coefs, _ = solve_ridge_cv_svd(X[tr], Y[tr], alphas=alphas, cv=inner, fit_intercept=False,
                                            score_func=correlation_score, warn=False)
        pred[te] = X[te] @ coefs
        chosen.append(best)
    pc, yc = pred - pred.mean(0), Y - Y.mean(0)
    r = (pc * yc).sum(0) / np.sqrt((pc ** 2).sum(0) * (yc ** 2).sum(0))
    t_solve = time.perf_counter() - t1
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "alphas.npy"), np.array(chosen, dtype=np.float64))
    np.save(os.path.join(a.out, "r.npy"), r)
    json.dump({"read": t_read, "solve": t_solve}, open(os.path.join(a.out, "seconds.json"), "w"))


if __name__ == "__main__":
    main()
