#!/usr/bin/env python3
"""Peer check of a reading-time run (tests/it/reading.rs).

Input:  OUT_DIR (a run's output folder with reading_words.parquet and reading_comparison.parquet),
        DESIGN_CSV (path to write), SPILLOVER (int).
Output: DESIGN_CSV, the baseline's rows rebuilt independently from reading_words.parquet (y = the
        word's RT, the controls, the previous words' length and log frequency within the story, the
        norm with a missing indicator, the story), for R/lme4 to refit; and on stdout one JSON line:
        {"rows": n, "p_check_max_rel": max relative |p - scipy.stats.chi2.sf(chi2, df)|,
         "chi2_check_max_abs": max |chi2 - 2 delta_loglik|}.
Only per-word-mean runs (one RT per word) are supported.
"""
import csv
import json
import sys

import pyarrow.parquet as pq
from scipy.stats import chi2 as chi2_dist

out, design, spill = sys.argv[1], sys.argv[2], int(sys.argv[3])
w = pq.read_table(f"{out}/reading_words.parquet").to_pylist()
rows = []
for i, r in enumerate(w):
    if r["n_in_model"] == 0:
        continue
    assert r["n_in_model"] == 1 and r["n_rts"] == 1, "per-word means only"
    row = {
        "y": r["mean_rt"],
        "length": r["length"],
        "log_freq": r["log_freq"],
        "sentence_position": r["sentence_position"],
        "lm_surprisal": r["lm_surprisal"],
        "ngram_surprisal": r["ngram_surprisal"],
    }
    for k in range(1, spill + 1):
        p = w[i - k]
        assert i - k >= 0 and p["story"] == r["story"], "spillover word missing for a model row"
        row[f"prev{k}_length"] = p["length"]
        row[f"prev{k}_log_freq"] = p["log_freq"]
    row["norm"] = r["norm"] if r["norm"] is not None else 0.0
    row["norm_missing"] = 0 if r["norm"] is not None else 1
    row["story"] = r["story"]
    rows.append(row)
with open(design, "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
    wr.writeheader()
    wr.writerows(rows)
c = pq.read_table(f"{out}/reading_comparison.parquet").to_pylist()
p_rel = max(abs(x["p_value"] - chi2_dist.sf(x["chi2"], x["df"])) / max(chi2_dist.sf(x["chi2"], x["df"]), 1e-300) for x in c)
chi_abs = max(abs(x["chi2"] - 2 * x["delta_loglik"]) for x in c)
print(json.dumps({"rows": len(rows), "p_check_max_rel": p_rel, "chi2_check_max_abs": chi_abs}))
