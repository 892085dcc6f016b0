#!/usr/bin/env python3
"""Independent float64 numpy forward pass of a llama- or GPT-2-architecture GGUF (test peer for
cortexflow).

Usage:
  reference_llama.py MODEL.gguf --ids 1,504,3575 --out DIR
      Runs the model on one sequence of token ids (given as-is: no BOS is added) and writes
        DIR/hidden_state_{i}.npy  float64 [seq, d_model], i = 0..n_layers (0 = token embeddings,
                                  i = residual stream after block i, before the final norm)
        DIR/logits.npy            float64 [seq, vocab]
        DIR/meta.json             the hyper-parameters that were used
  reference_llama.py MODEL.gguf --dump-tensors NAME[:ROWS],... --out DIR   (or --dump-tensors all)
      Writes each tensor dequantized by gguf.quants.dequantize as DIR/NAME.npy (float32, row-major,
      shape = GGUF dims reversed); NAME:ROWS keeps only the first ROWS rows (outermost dimension).
  Both may be given in one call.

This is written from llama.cpp's conventions, not from cortexflow's graph:
  - weights are used exactly as stored in the GGUF: the Q and K rows keep llama.cpp's permuted
    order, and RoPE is applied in llama.cpp's "normal" (LLAMA_ROPE_TYPE_NORM) form to adjacent
    pairs (x[2i], x[2i+1]) with theta_i = pos * base^(-2i / n_rot); cortexflow un-permutes the rows
    and uses the half-split (NeoX/HF) form, so agreement checks both;
  - RMSNorm: x / sqrt(mean(x^2) + eps) * w, eps from `llama.attention.layer_norm_rms_epsilon`;
  - grouped-query attention: query head h reads KV head h // (n_head / n_head_kv) (ggml's
    broadcasting in mul_mat), causal softmax with scale 1/sqrt(head_dim);
  - SwiGLU MLP: down(silu(gate(x)) * up(x)); pre-norm residual blocks;
  - final RMSNorm, LM head `output.weight` if present, else tied to `token_embd.weight`.
GPT-2 (general.architecture = gpt2), written from the GPT-2 paper / HF `modeling_gpt2.py` and
llama.cpp's converter, which stores the Conv1D weights transposed to [out, in]:
  - x = token_embd[ids] + position_embd[0..seq];
  - LayerNorm (x - mean) / sqrt(var + eps) * w + b, eps from `gpt2.attention.layer_norm_epsilon`;
  - attention: qkv = LN(x) @ attn_qkv.T + bias, split into q, k, v (in that order), heads of
    d/n_head, causal softmax with scale 1/sqrt(head_dim), @ attn_output.T + bias;
  - MLP: gelu_new(LN(x) @ ffn_up.T + bias) @ ffn_down.T + bias, with
    gelu_new(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3)));
  - final LayerNorm (output_norm weight and bias), LM head `output.weight` or the embeddings.
Everything is computed in float64 from the float32 dequantized weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

try:
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
except ImportError as e:  # pragma: no cover - message for users without the test venv
    sys.stderr.write(
        f"reference_llama.py: cannot import numpy/gguf ({e}); run `make setup` "
        "(it creates .venv with numpy and gguf) or set CORTEXFLOW_PYTHON to a python that has them\n"
    )
    sys.exit(3)


def field(reader: GGUFReader, key: str, default=None):
    f = reader.get_field(key)
    if f is None:
        return default
    return f.contents()


class Model:
    def __init__(self, path: str):
        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}

    def tensor(self, name: str, rows: int | None = None) -> np.ndarray:
        """Dequantized float32 tensor, row-major, shape = GGUF dims reversed."""
        if name not in self.tensors:
            raise KeyError(f"tensor `{name}` is not in the GGUF")
        t = self.tensors[name]
        shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
        data = np.asarray(t.data)
        if rows is not None:
            rows = min(rows, shape[0])
            data = data[:rows]
            shape = (rows,) + shape[1:]
        w = dequantize(np.ascontiguousarray(data), t.tensor_type)
        return np.asarray(w, dtype=np.float32).reshape(shape)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_adjacent(x: np.ndarray, pos: np.ndarray, base: float, n_rot: int) -> np.ndarray:
    """llama.cpp normal-mode RoPE on x [seq, heads, head_dim]: rotates pairs (2i, 2i+1), i < n_rot/2."""
    out = x.copy()
    i = np.arange(n_rot // 2, dtype=np.float64)
    theta = pos[:, None].astype(np.float64) * base ** (-2.0 * i / n_rot)  # [seq, n_rot/2]
    cos = np.cos(theta)[:, None, :]
    sin = np.sin(theta)[:, None, :]
    x0 = x[..., 0:n_rot:2]
    x1 = x[..., 1:n_rot:2]
    out[..., 0:n_rot:2] = x0 * cos - x1 * sin
    out[..., 1:n_rot:2] = x0 * sin + x1 * cos
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def forward_gpt2(m: Model, ids: list[int]):
    k = lambda s: f"gpt2.{s}"  # noqa: E731
    n_layers = int(field(m.reader, k("block_count")))
    d = int(field(m.reader, k("embedding_length")))
    n_head = int(field(m.reader, k("attention.head_count")))
    eps = float(field(m.reader, k("attention.layer_norm_epsilon"), 1e-5))
    hd = d // n_head
    f64 = lambda name: m.tensor(name).astype(np.float64)  # noqa: E731
    emb = f64("token_embd.weight")
    vocab = emb.shape[0]
    ids_a = np.asarray(ids, dtype=np.int64)
    seq = len(ids)
    causal = np.tril(np.ones((seq, seq), dtype=bool))
    x = emb[ids_a] + f64("position_embd.weight")[:seq]
    hidden = [x.copy()]
    for layer in range(n_layers):
        w = lambda s: f64(f"blk.{layer}.{s}")  # noqa: E731
        h = layer_norm(x, w("attn_norm.weight"), w("attn_norm.bias"), eps)
        qkv = h @ w("attn_qkv.weight").T + w("attn_qkv.bias")
        q, kk, v = (qkv[:, i * d:(i + 1) * d].reshape(seq, n_head, hd) for i in range(3))
        att = np.empty((seq, n_head, hd))
        for hh in range(n_head):
            scores = (q[:, hh, :] @ kk[:, hh, :].T) / np.sqrt(hd)
            scores = np.where(causal, scores, -np.inf)
            att[:, hh, :] = softmax(scores) @ v[:, hh, :]
        x = x + att.reshape(seq, d) @ w("attn_output.weight").T + w("attn_output.bias")
        h = layer_norm(x, w("ffn_norm.weight"), w("ffn_norm.bias"), eps)
        u = h @ w("ffn_up.weight").T + w("ffn_up.bias")
        g = 0.5 * u * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (u + 0.044715 * u ** 3)))
        x = x + g @ w("ffn_down.weight").T + w("ffn_down.bias")
        hidden.append(x.copy())
    h = layer_norm(x, f64("output_norm.weight"), f64("output_norm.bias"), eps)
    head = f64("output.weight") if "output.weight" in m.tensors else emb
    meta = dict(architecture="gpt2", n_layers=n_layers, d_model=d, n_head=n_head, head_dim=hd,
                layer_norm_eps=eps, vocab=vocab, tied_head="output.weight" not in m.tensors,
                ids=[int(i) for i in ids])
    return hidden, h @ head.T, meta


def forward(m: Model, ids: list[int]):
    arch = field(m.reader, "general.architecture")
    if arch == "gpt2":
        return forward_gpt2(m, ids)
    if arch != "llama":
        raise SystemExit(f"reference_llama.py: architecture `{arch}` is not llama")
    k = lambda s: f"{arch}.{s}"  # noqa: E731
    n_layers = int(field(m.reader, k("block_count")))
    d = int(field(m.reader, k("embedding_length")))
    n_head = int(field(m.reader, k("attention.head_count")))
    n_kv = int(field(m.reader, k("attention.head_count_kv"), n_head))
    hd = d // n_head
    n_rot = int(field(m.reader, k("rope.dimension_count"), hd))
    base = float(field(m.reader, k("rope.freq_base"), 10000.0))
    eps = float(field(m.reader, k("attention.layer_norm_rms_epsilon"), 1e-5))
    group = n_head // n_kv

    f64 = lambda name: m.tensor(name).astype(np.float64)  # noqa: E731
    emb = f64("token_embd.weight")  # [vocab, d]
    vocab = emb.shape[0]
    ids_a = np.asarray(ids, dtype=np.int64)
    if ids_a.min() < 0 or ids_a.max() >= vocab:
        raise SystemExit(f"reference_llama.py: token id out of range 0..{vocab}")
    seq = len(ids)
    pos = np.arange(seq)
    causal = np.tril(np.ones((seq, seq), dtype=bool))

    x = emb[ids_a]  # [seq, d]
    hidden = [x.copy()]
    for layer in range(n_layers):
        w = lambda s: f64(f"blk.{layer}.{s}.weight")  # noqa: E731
        h = rms_norm(x, w("attn_norm"), eps)
        q = (h @ w("attn_q").T).reshape(seq, n_head, hd)
        kk = (h @ w("attn_k").T).reshape(seq, n_kv, hd)
        v = (h @ w("attn_v").T).reshape(seq, n_kv, hd)
        q = rope_adjacent(q, pos, base, n_rot)
        kk = rope_adjacent(kk, pos, base, n_rot)
        att = np.empty((seq, n_head, hd))
        for hh in range(n_head):
            kv = hh // group
            scores = (q[:, hh, :] @ kk[:, kv, :].T) / np.sqrt(hd)
            scores = np.where(causal, scores, -np.inf)
            att[:, hh, :] = softmax(scores) @ v[:, kv, :]
        x = x + att.reshape(seq, n_head * hd) @ w("attn_output").T
        h = rms_norm(x, w("ffn_norm"), eps)
        gate = h @ w("ffn_gate").T
        up = h @ w("ffn_up").T
        silu = gate / (1.0 + np.exp(-gate))
        x = x + (silu * up) @ w("ffn_down").T
        hidden.append(x.copy())
    h = rms_norm(x, f64("output_norm.weight"), eps)
    head = f64("output.weight") if "output.weight" in m.tensors else emb
    logits = h @ head.T
    meta = dict(
        architecture=arch, n_layers=n_layers, d_model=d, n_head=n_head, n_head_kv=n_kv,
        head_dim=hd, n_rot=n_rot, rope_base=base, rms_eps=eps, vocab=vocab,
        tied_head="output.weight" not in m.tensors, ids=[int(i) for i in ids],
    )
    return hidden, logits, meta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--ids", help="comma-separated token ids (used as given; no BOS is added)")
    ap.add_argument("--dump-tensors", help="NAME[:ROWS],... or `all`: write dequantized tensors")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.ids is None and a.dump_tensors is None:
        ap.error("nothing to do: give --ids and/or --dump-tensors")
    os.makedirs(a.out, exist_ok=True)
    m = Model(a.gguf)

    if a.dump_tensors is not None:
        specs = [s for s in a.dump_tensors.split(",") if s]
        if specs == ["all"]:
            specs = list(m.tensors)
        index = []
        for spec in specs:
            name, _, rows = spec.partition(":")
            arr = m.tensor(name, int(rows) if rows else None)
            np.save(os.path.join(a.out, f"{name}.npy"), arr)
            index.append(dict(name=name, type=m.tensors[name].tensor_type.name, shape=list(arr.shape)))
        with open(os.path.join(a.out, "tensors.json"), "w") as f:
            json.dump(index, f, indent=1)

    if a.ids is not None:
        ids = [int(s) for s in a.ids.split(",") if s.strip()]
        if not ids:
            ap.error("--ids is empty")
        hidden, logits, meta = forward(m, ids)
        for i, h in enumerate(hidden):
            np.save(os.path.join(a.out, f"hidden_state_{i}.npy"), h)
        np.save(os.path.join(a.out, "logits.npy"), logits)
        with open(os.path.join(a.out, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
