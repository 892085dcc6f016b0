#!/usr/bin/env python3
"""Held-out quality of SAELens folders on a cortexflow spool, computed independently in NumPy.

Usage: scripts/sae_quality_numpy.py SPOOL_DIR SAE_DIR [SAE_DIR ...] [--widths 128,512,2048]

For each SAE folder (cfg.json + sae_weights.safetensors, architectures "standard", "topk" and
"jumprelu", as `cortexflow sae train` writes them) it encodes the spool's held-out rows (the
chunks flagged `heldout` in spool.json) and prints, as one JSON object per folder:
- r2: 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the held-out rows (cortexflow's `quality.json` R²);
- mean_l0, dead_fraction (features active on no held-out row);
- prefix_r2: R² when only the codes of the first `w` features are decoded, for each width w
  (a Matryoshka SAE trains its prefixes to reconstruct on their own; other SAEs do not).

It is a second implementation of cortexflow's `Sae::quality` (TopK keeps the k largest ReLU
pre-activations, JumpReLU keeps ReLU(z)·1[z > θ]); the safetensors file is read with the
standard library (8-byte header length, JSON header, little-endian tensors).
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None}


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        if t["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {t['dtype']}; this script reads F32 only")
        out[name] = np.frombuffer(raw[base + a : base + b], dtype="<f4").reshape(t["shape"])
    return out


def heldout_rows(spool):
    m = json.loads((Path(spool) / "spool.json").read_text())
    parts = [np.load(Path(spool) / c["file"]) for c in m["chunks"] if c["heldout"]]
    return np.concatenate(parts).astype(np.float32)


def encode(cfg, w, x):
    sae_in = x - w["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x
    z = sae_in.astype(np.float64) @ w["W_enc"].astype(np.float64) + w["b_enc"]
    f = np.maximum(z, 0.0)
    arch = cfg["architecture"]
    if arch == "topk":
        k = int(cfg["k"])
        kth = np.partition(f, -k, axis=1)[:, -k][:, None]
        f = np.where(f >= kth, f, 0.0)
    elif arch == "jumprelu":
        f = np.where(z > w["threshold"], f, 0.0)
    elif arch != "standard":
        raise SystemExit(f"architecture {arch!r} not handled")
    return f


def r2(x, xhat):
    sst = ((x - x.mean(axis=0)) ** 2).sum()
    return float(1.0 - ((x - xhat) ** 2).sum() / sst)


def main(argv):
    widths = []
    if "--widths" in argv:
        i = argv.index("--widths")
        widths = [int(v) for v in argv[i + 1].split(",")]
        argv = argv[:i] + argv[i + 2 :]
    if len(argv) < 2:
        raise SystemExit(__doc__)
    x = heldout_rows(argv[0]).astype(np.float64)
    for folder in argv[1:]:
        cfg = json.loads((Path(folder) / "cfg.json").read_text())
        w = {k: v.astype(np.float64) for k, v in read_safetensors(Path(folder) / "sae_weights.safetensors").items()}
        f = encode(cfg, w, x)
        xhat = f @ w["W_dec"] + w["b_dec"]
        active = f > 0
        out = {
            "sae": str(folder),
            "architecture": cfg["architecture"],
            "n_rows": int(x.shape[0]),
            "r2": r2(x, xhat),
            "mean_l0": float(active.sum(axis=1).mean()),
            "dead_fraction": float((~active.any(axis=0)).mean()),
            "prefix_r2": {str(m): r2(x, f[:, :m] @ w["W_dec"][:m] + w["b_dec"]) for m in widths},
        }
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
