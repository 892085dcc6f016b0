#!/usr/bin/env python3
"""Writes a tiny, seeded, random llama-architecture GGUF for cortexflow's tests.

Usage: make_tiny_gguf.py OUT.gguf [--arch llama|gpt2|falcon] [--bad-type] [--tied] [--seed N] [--ffn-pad N]

The model: 1 block, d_model 64, d_ff 128, 4 heads (head_dim 16), 2 KV heads, context 64,
rope base 10000, rms eps 1e-5, a 64-token byte-level BPE vocabulary with merges
(`tokenizer.ggml.model = gpt2`, `tokenizer.ggml.pre = smollm`, BOS = 1 = <|im_start|>).
Tensors are quantized with gguf.quants.quantize, one ggml type or another per weight:

  token_embd.weight        Q8_0      blk.0.attn_output.weight  Q5_1
  blk.0.attn_norm.weight   F32       blk.0.ffn_norm.weight     F32
  blk.0.attn_q.weight      Q4_0      blk.0.ffn_gate.weight     F16
  blk.0.attn_k.weight      Q4_1      blk.0.ffn_up.weight       BF16
  blk.0.attn_v.weight      Q5_0      blk.0.ffn_down.weight     Q8_0
  output_norm.weight       F32       output.weight             Q4_1 (omitted with --tied)

plus two tensors the model does not use, only there to test dequantization of the k-quants (which
gguf-py cannot quantize: they hold random blocks with sane scales): `cortexflow_test.q4_k`
[2, 256] Q4_K and `cortexflow_test.q6_k` [2, 256] Q6_K.

--bad-type   stores blk.0.ffn_up.weight as IQ4_NL (random blocks of the right size), a type
             cortexflow does not dequantize.
--arch gpt2  writes a GPT-2 instead, as llama.cpp's converter lays one out (Conv1D weights
             transposed to [out, in]): 2 blocks, d_model 64, d_ff 256, 4 heads, context 64,
             learned positions `position_embd.weight` [64, 64], LayerNorm weights and biases
             (eps 1e-5) before attention, before the MLP and at the end, fused
             `blk.N.attn_qkv.weight` [192, 64] + bias, `attn_output`, `ffn_up` + bias (GELU),
             `ffn_down` + bias; the same vocabulary; output.weight (omitted with --tied).
--arch falcon  the llama tensors under general.architecture = falcon (an architecture
             cortexflow does not import).
--ffn-pad N  widens the MLP to N hidden units with zeros: blk.0.ffn_{gate,up,down}.weight become F32
             [N, 64] / [64, N] holding the dequantized values of the tiny model's three tensors in
             their first 128 units and zeros after, written as holes (a sparse file: N = 2,800,000
             makes 2.15 GB of tensors that take under 1 MB of disk). SwiGLU of a zero unit is zero, so
             the model computes what the unpadded one does: a model past protobuf's 2 GB limit
             whose outputs are known.
"""

from __future__ import annotations

import argparse
import sys

try:
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter, TokenType
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import dequantize, quantize
except ImportError as e:  # pragma: no cover
    sys.stderr.write(f"make_tiny_gguf.py: cannot import numpy/gguf ({e}); run `make setup`\n")
    sys.exit(3)

D, FF, HEADS, KV_HEADS, CTX, VOCAB = 64, 128, 4, 2, 64, 64
HEAD_DIM = D // HEADS


def vocabulary():
    """64 byte-level BPE tokens (specials, single characters, then merge results) and the merges."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = ["\u0120"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [".", ","]
    chars += [str(i) for i in range(10)]
    merges = [
        ("t", "h"), ("th", "e"), ("\u0120", "t"), ("\u0120", "the"), ("\u0120", "a"), ("i", "n"),
        ("a", "n"), ("e", "r"), ("o", "n"), ("r", "e"), ("a", "t"), ("e", "n"), ("e", "d"),
        ("\u0120", "s"), ("\u0120", "c"), ("i", "s"), ("\u0120", "is"), ("\u0120", "in"), ("o", "f"),
        ("\u0120", "of"), ("a", "r"), ("o", "r"),
    ]
    tokens = specials + chars
    for a, b in merges:
        assert a in tokens and b in tokens, (a, b)
        tokens.append(a + b)
    assert len(tokens) == VOCAB and len(set(tokens)) == VOCAB, len(tokens)
    types = [TokenType.CONTROL] * len(specials) + [TokenType.NORMAL] * (VOCAB - len(specials))
    return tokens, types, [f"{a} {b}" for a, b in merges]


def random_blocks(rng, qtype, n_rows, n_cols, scale_offsets):
    """Random bytes of a quantized [n_rows, n_cols] tensor, with f16 scales set to sane values."""
    block, size = GGML_QUANT_SIZES[qtype]
    assert n_cols % block == 0
    n_blocks = n_rows * n_cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in scale_offsets:
        d = rng.uniform(0.002, 0.02, size=n_blocks).astype(np.float16)
        raw[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(n_rows, n_cols // block * size)


class SparseF32:
    """An f32 [rows, cols] matrix that is zero outside its top-left block `head`: GGUFWriter calls
    `tofile`, which writes the block's rows and leaves the zeros as holes (seek past them)."""

    def __init__(self, head, rows, cols):
        self.head = np.ascontiguousarray(head, dtype=np.float32)
        self.shape = (rows, cols)
        self.dtype = np.dtype(np.float32)
        self.nbytes = rows * cols * 4

    def tofile(self, f):
        start = f.tell()
        h_rows, h_cols = self.head.shape
        cols = self.shape[1]
        if h_cols == cols:  # whole rows: one contiguous block
            self.head.tofile(f)
        else:
            for r in range(h_rows):
                f.seek(start + r * cols * 4)
                self.head[r].tofile(f)
        # the last bytes are written so the file has its full length even if it ends in a hole
        f.seek(start + self.nbytes - 4)
        f.write(b"\0\0\0\0")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--arch", choices=["llama", "gpt2", "falcon"], default="llama")
    ap.add_argument("--bad-type", action="store_true", help="store blk.0.ffn_up.weight as IQ4_NL")
    ap.add_argument("--tied", action="store_true", help="no output.weight (LM head tied to the embeddings)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--ffn-pad", type=int, default=0, metavar="N",
                    help="widen the MLP to N zero-padded F32 units, written sparse")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)

    w = GGUFWriter(a.out, a.arch)
    w.add_name("cortexflow tiny test model")
    if a.arch == "gpt2":
        return write_gpt2(w, a, rng)
    w.add_block_count(1)
    w.add_context_length(CTX)
    w.add_embedding_length(D)
    if a.ffn_pad and a.bad_type:
        ap.error("--ffn-pad and --bad-type do not go together")
    if a.ffn_pad and a.ffn_pad <= FF:
        ap.error(f"--ffn-pad must exceed the model's {FF} hidden units")
    w.add_feed_forward_length(a.ffn_pad or FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(VOCAB)
    tokens, types, merges = vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    def normal(rows, cols, std):
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def norm_weight():
        return (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    def add(name, data, qtype):
        q = quantize(data, qtype)
        if a.ffn_pad and name.startswith("blk.0.ffn_") and name != "blk.0.ffn_norm.weight":
            # the values the unpadded model computes with, then zeros
            exact = dequantize(q, qtype).astype(np.float32).reshape(data.shape)
            rows, cols = data.shape
            shape = (a.ffn_pad, cols) if rows == FF else (rows, a.ffn_pad)
            w.add_tensor(name, SparseF32(exact, *shape))
        elif qtype in (Q.F32, Q.F16):
            w.add_tensor(name, q)
        else:
            w.add_tensor(name, q, raw_dtype=qtype)

    add("token_embd.weight", normal(VOCAB, D, 1.0), Q.Q8_0)
    add("blk.0.attn_norm.weight", norm_weight(), Q.F32)
    add("blk.0.attn_q.weight", normal(HEADS * HEAD_DIM, D, D ** -0.5), Q.Q4_0)
    add("blk.0.attn_k.weight", normal(KV_HEADS * HEAD_DIM, D, D ** -0.5), Q.Q4_1)
    add("blk.0.attn_v.weight", normal(KV_HEADS * HEAD_DIM, D, D ** -0.5), Q.Q5_0)
    add("blk.0.attn_output.weight", normal(D, HEADS * HEAD_DIM, D ** -0.5), Q.Q5_1)
    add("blk.0.ffn_norm.weight", norm_weight(), Q.F32)
    add("blk.0.ffn_gate.weight", normal(FF, D, D ** -0.5), Q.F16)
    if a.bad_type:
        w.add_tensor("blk.0.ffn_up.weight", random_blocks(rng, Q.IQ4_NL, FF, D, [0]), raw_dtype=Q.IQ4_NL)
    else:
        add("blk.0.ffn_up.weight", normal(FF, D, D ** -0.5), Q.BF16)
    add("blk.0.ffn_down.weight", normal(D, FF, FF ** -0.5), Q.Q8_0)
    add("output_norm.weight", norm_weight(), Q.F32)
    if not a.tied:
        add("output.weight", normal(VOCAB, D, D ** -0.5), Q.Q4_1)
    # k-quant blocks: Q4_K = d, dmin (f16 at bytes 0, 2) + scales + qs; Q6_K = ql, qh, scales + d (byte 208)
    w.add_tensor("cortexflow_test.q4_k", random_blocks(rng, Q.Q4_K, 2, 256, [0, 2]), raw_dtype=Q.Q4_K)
    w.add_tensor("cortexflow_test.q6_k", random_blocks(rng, Q.Q6_K, 2, 256, [208]), raw_dtype=Q.Q6_K)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


def write_gpt2(w, a, rng) -> int:
    """The GPT-2 variant (see --arch gpt2): weights in F32, F16 and Q8_0, biases in F32."""
    blocks, ff = 2, 4 * D
    w.add_block_count(blocks)
    w.add_context_length(CTX)
    w.add_embedding_length(D)
    w.add_feed_forward_length(ff)
    w.add_head_count(HEADS)
    w.add_layer_norm_eps(1e-5)
    w.add_vocab_size(VOCAB)
    tokens, types, merges = vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)

    def normal(*shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def add(name, data, qtype):
        q = quantize(data, qtype)
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, q)
        else:
            w.add_tensor(name, q, raw_dtype=qtype)

    add("token_embd.weight", normal(VOCAB, D, std=1.0), Q.Q8_0)
    add("position_embd.weight", normal(CTX, D, std=0.3), Q.F32)
    for b in range(blocks):
        p = f"blk.{b}."
        add(p + "attn_norm.weight", (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32), Q.F32)
        add(p + "attn_norm.bias", normal(D, std=0.1), Q.F32)
        add(p + "attn_qkv.weight", normal(3 * D, D, std=D ** -0.5), Q.Q8_0)
        add(p + "attn_qkv.bias", normal(3 * D, std=0.1), Q.F32)
        add(p + "attn_output.weight", normal(D, D, std=D ** -0.5), Q.F16)
        add(p + "attn_output.bias", normal(D, std=0.1), Q.F32)
        add(p + "ffn_norm.weight", (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32), Q.F32)
        add(p + "ffn_norm.bias", normal(D, std=0.1), Q.F32)
        add(p + "ffn_up.weight", normal(ff, D, std=D ** -0.5), Q.Q8_0)
        add(p + "ffn_up.bias", normal(ff, std=0.1), Q.F32)
        add(p + "ffn_down.weight", normal(D, ff, std=ff ** -0.5), Q.F16)
        add(p + "ffn_down.bias", normal(D, std=0.1), Q.F32)
    add("output_norm.weight", (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32), Q.F32)
    add("output_norm.bias", normal(D, std=0.1), Q.F32)
    if not a.tied:
        add("output.weight", normal(VOCAB, D, std=D ** -0.5), Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
