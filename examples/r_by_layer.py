#!/usr/bin/env python3
"""The report's main figure from a run's tables, in Python: held-out r by layer for each feature
set (mean over subjects, with its confidence interval), from summary.parquet read by polars, drawn
by matplotlib.

    cortexflow run pipelines/alice.toml
    python examples/r_by_layer.py runs/alice              # writes runs/alice/r_by_layer_py.png

Prints the plotted table (layer × feature set: mean r [CI]) too. Needs polars and matplotlib
(both in the test environment of `make setup`: .venv/bin/python).
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import polars as pl


def main() -> int:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/alice")
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else run / "r_by_layer_py.png"
    s = pl.read_parquet(run / "summary.parquet")
    # the all-ROI rows: one per (story, layer, feature set)
    s = s.filter(pl.col("roi") == "all").sort(["story", "feature_set", "layer"])
    stories = s["story"].unique().sort().to_list()
    fig, axes = plt.subplots(1, len(stories), figsize=(6 * len(stories), 4), squeeze=False)
    for ax, story in zip(axes[0], stories):
        part = s.filter(pl.col("story") == story)
        for fs in part["feature_set"].unique().sort().to_list():
            d = part.filter(pl.col("feature_set") == fs)
            ax.plot(d["layer"], d["mean_r"], marker="o", label=fs)
            ax.fill_between(d["layer"], d["ci_lower"], d["ci_upper"], alpha=0.2)
        n = part["n_subjects"].max()
        level = part["ci_level"].max()
        ax.set(title=f"{story}: held-out r by layer ({n} subjects, {level:.0%} CI)", xlabel="layer", ylabel="mean r")
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    table = s.select(
        "story",
        "layer",
        "feature_set",
        pl.format("{} [{}, {}]", *(pl.col(c).round(3) for c in ["mean_r", "ci_lower", "ci_upper"])).alias("r [CI]"),
    ).pivot(on="feature_set", index=["story", "layer"], values="r [CI]")
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200):
        print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
