"""The himalaya peer of `cortexflow ridge`: solve_ridge_cv_svd (numpy backend, float64) on the same
.npy matrices, with the same contiguous KFold and penalties.

usage: himalaya_ridge.py X.npy Y.npy X_test.npy Y_test.npy ALPHAS(comma) N_FOLDS OUT_DIR
writes OUT_DIR/best_alphas.npy, OUT_DIR/cv_scores.npy (best), OUT_DIR/test_r.npy, OUT_DIR/seconds.txt
"""
import os
import sys
import time

import numpy as np
from himalaya.backend import set_backend
from himalaya.ridge import solve_ridge_cv_svd
from sklearn.model_selection import KFold


def main():
    xp, yp, xtp, ytp, alphas, n_folds, out = sys.argv[1:8]
    set_backend("numpy")
    X, Y, Xt, Yt = (np.load(p) for p in (xp, yp, xtp, ytp))
    alphas = np.array([float(a) for a in alphas.split(",")])
    t0 = time.perf_counter()
    best_alphas, coefs, cv_scores = solve_ridge_cv_svd(
        X, Y, alphas=alphas, cv=KFold(int(n_folds)), fit_intercept=False, warn=False
    )
    pred = Xt @ coefs
    seconds = time.perf_counter() - t0
    pz = (pred - pred.mean(0)) / pred.std(0)
    yz = (Yt - Yt.mean(0)) / Yt.std(0)
    r = (pz * yz).mean(0)
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "best_alphas.npy"), np.asarray(best_alphas, dtype=np.float64))
    np.save(os.path.join(out, "cv_scores.npy"), np.asarray(cv_scores, dtype=np.float64))
    np.save(os.path.join(out, "test_r.npy"), r)
    with open(os.path.join(out, "seconds.txt"), "w") as f:
        f.write(f"{seconds}\n")


if __name__ == "__main__":
    main()
