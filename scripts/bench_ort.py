#!/usr/bin/env python3
"""Python peer for benches/extract_throughput.rs: onnxruntime on the same model.onnx, same intra-op
threads, same batches (read from a JSON file of windows) and the same requested outputs.

Prints one JSON line: {"tokens_per_s": ..., "seconds": ..., "peak_rss_mib": ...} per case.

With --serve, the cases are run on request so the caller can interleave its own repetitions with
these: each line read from stdin names a case, which is run once (after one warm-up run the first
time); the answer is one JSON line {"case": ..., "seconds": ..., "tokens": ...}. At end of input it
prints {"peak_rss_mib": ...}.
"""
import argparse, json, sys, time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("cases", help="JSON: {name: {batches: [[window ids...]...], outputs: [...], reps: n}}")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--pad-id", type=int, default=0)
    ap.add_argument("--serve", action="store_true", help="run cases named on stdin, one per line")
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    cases = json.load(open(a.cases))
    if a.serve:
        serve(sess, cases, a.pad_id)
        return
    out = {}
    for name, case in cases.items():
        feeds, n_tokens = feeds_of(case, a.pad_id)
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


def feeds_of(case, pad_id):
    feeds, n_tokens = [], 0
    for batch in case["batches"]:
        s = max(len(w) for w in batch)
        ids = np.full((len(batch), s), pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), s), dtype=np.int64)
        for i, w in enumerate(batch):
            ids[i, : len(w)] = w
            mask[i, : len(w)] = 1
        feeds.append({"input_ids": ids, "attention_mask": mask})
        n_tokens += sum(len(w) for w in batch)
    return feeds, n_tokens


def serve(sess, cases, pad_id):
    warm = set()
    for line in sys.stdin:
        name = line.strip()
        case = cases[name]
        feeds, n_tokens = feeds_of(case, pad_id)
        if name not in warm:
            sess.run(case["outputs"], feeds[0])
            warm.add(name)
        t0 = time.perf_counter()
        for f in feeds:
            sess.run(case["outputs"], f)
        print(json.dumps({"case": name, "seconds": time.perf_counter() - t0, "tokens": n_tokens}), flush=True)
    with open("/proc/self/status") as f:
        hwm_kb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mib": hwm_kb / 1024}), flush=True)


if __name__ == "__main__":
    main()
