"""The himalaya peer of `cortexflow ridge --bands`: solve_group_ridge_random_search (numpy backend,
float64) with the same candidate band weights, penalties and contiguous KFold.

usage: himalaya_banded.py X.npy Y.npy X_test.npy Y_test.npy GAMMAS.npy BANDS(comma sizes) ALPHAS(comma) N_FOLDS OUT_DIR
writes OUT_DIR/deltas.npy (n_bands, n_targets), OUT_DIR/test_r.npy
"""
import os
import sys

import numpy as np
from himalaya.backend import set_backend
from himalaya.ridge import solve_group_ridge_random_search
from sklearn.model_selection import KFold


def main():
    xp, yp, xtp, ytp, gp, bands, alphas, n_folds, out = sys.argv[1:10]
    set_backend("numpy")
    X, Y, Xt, Yt, gammas = (np.load(p) for p in (xp, yp, xtp, ytp, gp))
    sizes = [int(b) for b in bands.split(",")]
    edges = np.concatenate([[0], np.cumsum(sizes)])
    Xs = [X[:, a:b] for a, b in zip(edges[:-1], edges[1:])]
    alphas = np.array([float(a) for a in alphas.split(",")])
    deltas, coefs, cv_scores = solve_group_ridge_random_search(
        Xs, Y, n_iter=gammas, alphas=alphas, cv=KFold(int(n_folds)), fit_intercept=False,
        progress_bar=False, return_weights=True, warn=False,
    )
    pred = Xt @ coefs
    pz = (pred - pred.mean(0)) / pred.std(0)
    yz = (Yt - Yt.mean(0)) / Yt.std(0)
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "deltas.npy"), np.asarray(deltas, dtype=np.float64))
    np.save(os.path.join(out, "test_r.npy"), (pz * yz).mean(0))


if __name__ == "__main__":
    main()
