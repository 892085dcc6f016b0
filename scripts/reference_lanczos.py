#!/usr/bin/env python3
"""numpy reference for cortexflow::features::lanczos (test peer): the Huth lab's functions.

Usage:
  reference_lanczos.py interp DATA.npy OLD.npy NEW.npy WINDOW CUTOFF_MULT OUT.npy
      OUT = lanczosinterp2D(DATA, OLD, NEW, window=WINDOW, cutoff_mult=CUTOFF_MULT)
      DATA float64 [n_old, n_features], OLD float64 [n_old] (s), NEW float64 [n_new] (s);
      OUT float64 [n_new, n_features].
  reference_lanczos.py delay STIM.npy DELAYS OUT.npy
      OUT = make_delayed(STIM, DELAYS), DELAYS comma-separated integers (e.g. 1,2,3,4);
      STIM float64 [n_trs, n_features], OUT float64 [n_trs, n_features * n_delays].

lanczosfun, lanczosinterp2D and make_delayed are written as in huthlab/deep-fMRI-dataset
(encoding/ridge_utils/interpdata.py and util.py), unused branches (rectify, circpad) included.
The sinc matrix is dense: O(n_new * n_old), as in the original,
which is the point (cortexflow uses a banded sum).
"""

import sys

import numpy as np


def lanczosfun(cutoff, t, window=3):
    """Compute the lanczos function with some cutoff frequency [B] at some time [t].
    [t] can be a scalar or any shaped numpy array.
    If given a [window], only the lowest-order [window] lobes of the sinc function
    will be non-zero.
    """
    t = t * cutoff
    val = window * np.sin(np.pi * t) * np.sin(np.pi * t / window) / (np.pi**2 * t**2)
    val[t == 0] = 1.0
    val[np.abs(t) > window] = 0.0
    return val  # / (val.sum() + 1e-10)


def lanczosinterp2D(data, oldtime, newtime, window=3, cutoff_mult=1.0, rectify=False):
    """Interpolates the columns of [data], assuming that the i'th row of data corresponds to
    oldtime(i). A new matrix with the same number of columns and a number of rows given
    by the length of [newtime] is returned.

    The time points in [newtime] are assumed to be evenly spaced, and their frequency will
    be used to calculate the low-pass cutoff of the interpolation filter.

    [window] lobes of the sinc function will be used. [window] should be an integer.
    """
    ## Find the cutoff frequency ##
    cutoff = 1 / np.mean(np.diff(newtime)) * cutoff_mult

    ## Build up sinc matrix ##
    sincmat = np.zeros((len(newtime), len(oldtime)))
    for ndi in range(len(newtime)):
        sincmat[ndi, :] = lanczosfun(cutoff, newtime[ndi] - oldtime, window)

    if rectify:
        newdata = np.hstack([np.dot(sincmat, np.clip(data, -np.inf, 0)), np.dot(sincmat, np.clip(data, 0, np.inf))])
    else:
        ## Construct new signal by multiplying the sinc matrix by the data ##
        newdata = np.dot(sincmat, data)

    return newdata


def make_delayed(stim, delays, circpad=False):
    """Creates non-interpolated concatenated delayed versions of [stim] with the given [delays]
    (in samples).

    If [circpad], instead of being padded with zeros, [stim] will be circularly shifted.
    """
    nt, ndim = stim.shape
    dstims = []
    for di, d in enumerate(delays):
        dstim = np.zeros((nt, ndim))
        if d < 0:  ## negative delay
            dstim[:d, :] = stim[-d:, :]
            if circpad:
                dstim[d:, :] = stim[:-d, :]
        elif d > 0:
            dstim[d:, :] = stim[:-d, :]
            if circpad:
                dstim[:d, :] = stim[-d:, :]
        else:  ## d==0
            dstim = stim.copy()
        dstims.append(dstim)
    return np.hstack(dstims)


def main(argv):
    if len(argv) == 8 and argv[1] == "interp":
        data = np.load(argv[2])
        oldtime = np.load(argv[3])
        newtime = np.load(argv[4])
        window, cutoff_mult = int(argv[5]), float(argv[6])
        assert data.ndim == 2 and oldtime.shape == (data.shape[0],) and newtime.ndim == 1
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 at t == 0, then set to 1
            out = lanczosinterp2D(data, oldtime, newtime, window=window, cutoff_mult=cutoff_mult)
        np.save(argv[7], np.ascontiguousarray(out, dtype=np.float64))
        return 0
    if len(argv) == 5 and argv[1] == "delay":
        stim = np.load(argv[2])
        delays = [int(d) for d in argv[3].split(",") if d != ""]
        out = make_delayed(stim, delays)
        np.save(argv[4], np.ascontiguousarray(out, dtype=np.float64))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
