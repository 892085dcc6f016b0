#!/usr/bin/env python3
"""Reference SAE encoder in NumPy for tests/it/sae_cli.rs (independent of cortexflow's code).

Input:  SAE_DIR (a SAELens folder: cfg.json + sae_weights.safetensors, architecture "standard",
        "topk" or "jumprelu"), X_NPY (activations, n × d_in), CODES_PARQUET (cortexflow's
        sparse codes: row, feature, value), XHAT_NPY (cortexflow's reconstruction).
Output: one JSON line: {"n_rows", "nnz_ref", "nnz", "same_support": bool,
        "max_abs_code_diff", "max_abs_recon_diff"} computed in float64:
        z = (x - b_dec·[apply_b_dec_to_input]) W_enc + b_enc; standard: ReLU(z); topk: the k
        largest ReLU(z) per row; jumprelu: z·1[z > threshold]; x̂ = f W_dec + b_dec.
The safetensors file is parsed directly (8-byte header length, JSON header, raw tensors).
"""
import json
import struct
import sys

import numpy as np
import pyarrow.parquet as pq

sae_dir, x_path, codes_path, xhat_path = sys.argv[1:5]
cfg = json.load(open(f"{sae_dir}/cfg.json"))
raw = open(f"{sae_dir}/sae_weights.safetensors", "rb").read()
(hlen,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8 : 8 + hlen])
DT = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
t = {}
for name, info in header.items():
    if name == "__metadata__":
        continue
    a, b = info["data_offsets"]
    t[name] = np.frombuffer(raw[8 + hlen + a : 8 + hlen + b], dtype=DT[info["dtype"]]).reshape(info["shape"]).astype(np.float64)
x = np.load(x_path).astype(np.float32).astype(np.float64)
xin = x - t["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x
z = xin @ t["W_enc"] + t["b_enc"]
arch = cfg.get("architecture", "standard")
if arch == "standard":
    f = np.maximum(z, 0)
elif arch == "topk":
    k = cfg["k"]
    r = np.maximum(z, 0)
    f = np.zeros_like(r)
    idx = np.argsort(-r, axis=1, kind="stable")[:, :k]
    rows = np.arange(r.shape[0])[:, None]
    f[rows, idx] = r[rows, idx]
elif arch == "jumprelu":
    f = np.where(z > t["threshold"], z, 0.0)
else:
    raise SystemExit(f"unknown architecture {arch}")
xhat_ref = f @ t["W_dec"] + t["b_dec"]
c = pq.read_table(codes_path).to_pydict()
mine = np.zeros_like(f)
mine[np.array(c["row"], dtype=int), np.array(c["feature"], dtype=int)] = c["value"]
xhat = np.load(xhat_path)
print(json.dumps({
    "n_rows": int(x.shape[0]),
    "nnz_ref": int((f > 0).sum()),
    "nnz": len(c["row"]),
    "same_support": bool(((f > 0) == (mine > 0)).all()),
    "max_abs_code_diff": float(np.abs(f - mine).max()),
    "max_abs_recon_diff": float(np.abs(xhat_ref - xhat).max()),
}))
