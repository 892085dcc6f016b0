#!/usr/bin/env python3
"""Python peer for benches/extract_throughput.rs: onnxruntime on the same model.onnx, same intra-op
threads, same batches (read from a JSON file of windows) and the same requested outputs.

Prints one JSON line: {"tokens_per_s": ..., "seconds": ..., "peak_rss_mib": ...} per case.
"""
import argparse, json, time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("cases", help="JSON: {name: {batches: [[window ids...]...], outputs: [...], reps: n}}")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--pad-id", type=int, default=0)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    cases = json.load(open(a.cases))
    out = {}
    for name, case in cases.items():
        feeds = []
        n_tokens = 0
        for batch in case["batches"]:
            s = max(len(w) for w in batch)
            ids = np.full((len(batch), s), a.pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), s), dtype=np.int64)
            for i, w in enumerate(batch):
                ids[i, : len(w)] = w
                mask[i, : len(w)] = 1
            feeds.append({"input_ids": ids, "attention_mask": mask})
            n_tokens += sum(len(w) for w in batch)
        sess.run(case["outputs"], feeds[0])  # warm-up, as on the Rust side
        t0 = time.perf_counter()
        for _ in range(case["reps"]):
            for f in feeds:
                sess.run(case["outputs"], f)
        dt = time.perf_counter() - t0
        out[name] = {"tokens_per_s": n_tokens * case["reps"] / dt, "seconds": dt}
    # VmHWM belongs to this process's own address space (ru_maxrss would carry over the parent's
    # high-water mark across fork + exec)
    with open("/proc/self/status") as f:
        hwm_kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    out["peak_rss_mib"] = hwm_kb / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
