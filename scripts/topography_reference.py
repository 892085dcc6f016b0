#!/usr/bin/env python3
"""Reference values for cortexflow's topography and agreement statistics (tests/it/topography.rs,
tests/it/agreement.rs).

Reads one JSON object from stdin; every key is optional and holds a list of cases:

  spearman:  [[x, y], ...]                  -> scipy.stats.spearmanr(x, y).statistic
  hypergeom: [[N, K, n, k], ...]            -> scipy.stats.hypergeom.sf(k - 1, N, K, n)
  fisher:    [[[a, b], [c, d]], ...]        -> scipy.stats.fisher_exact, 'greater' and 'two-sided'
                                               (statistic and p), Woolf 95% CI in numpy
  f_sf:      [[F, df1, df2], ...]           -> scipy.stats.f.sf(F, df1, df2)
  fdr:       [[p, ...], ...]                -> scipy.stats.false_discovery_control(p, method='bh')
  rm_anova:  [data (s, a, b), ...]          -> two-way repeated-measures ANOVA interaction by the
                                               textbook sums of squares (numpy): F, df1, df2, p
  cohen:     [[a_labels, b_labels, K], ...] -> Cohen's kappa, p_o, p_e and one-vs-rest kappas (numpy)
  fleiss:    [table (n_items, K), ...]      -> Fleiss' kappa, P-bar, P-bar_e, per-category kappa (numpy)

Prints one JSON object with the same keys. Non-finite floats are written as the strings
"inf", "-inf", "nan" (JSON has no literal for them).
"""

import json
import math
import sys

import numpy as np
from scipy import stats


def num(v):
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def rm_anova(data):
    y = np.asarray(data, dtype=float)  # (s, a, b)
    s, a, b = y.shape
    g = y.mean()
    m_a = y.mean(axis=(0, 2))
    m_b = y.mean(axis=(0, 1))
    m_s = y.mean(axis=(1, 2))
    m_ab = y.mean(axis=0)
    m_as = y.mean(axis=2)  # (s, a)
    m_bs = y.mean(axis=1)  # (s, b)
    ss_total = ((y - g) ** 2).sum()
    ss_a = s * b * ((m_a - g) ** 2).sum()
    ss_b = s * a * ((m_b - g) ** 2).sum()
    ss_s = a * b * ((m_s - g) ** 2).sum()
    ss_ab = s * ((m_ab - m_a[:, None] - m_b[None, :] + g) ** 2).sum()
    ss_as = b * ((m_as - m_s[:, None] - m_a[None, :] + g) ** 2).sum()
    ss_bs = a * ((m_bs - m_s[:, None] - m_b[None, :] + g) ** 2).sum()
    ss_abs = ss_total - ss_a - ss_b - ss_s - ss_ab - ss_as - ss_bs
    df1 = (a - 1) * (b - 1)
    df2 = df1 * (s - 1)
    f = (ss_ab / df1) / (ss_abs / df2)
    return {"f": num(f), "df1": df1, "df2": df2, "p": num(stats.f.sf(f, df1, df2)),
            "ss_ab": num(ss_ab), "ss_abs": num(ss_abs)}


def cohen(a, b, k):
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    cm = np.zeros((k, k))
    np.add.at(cm, (a, b), 1)

    def kappa(t):
        n = t.sum()
        po = np.trace(t) / n
        pe = (t.sum(axis=1) * t.sum(axis=0)).sum() / n**2
        return (po - pe) / (1 - pe) if pe < 1 else float("nan"), po, pe

    kap, po, pe = kappa(cm)
    per = []
    for j in range(k):
        aj, bj = (a == j), (b == j)
        t = np.array([[np.sum(aj & bj), np.sum(aj & ~bj)], [np.sum(~aj & bj), np.sum(~aj & ~bj)]], float)
        per.append(num(kappa(t)[0]))
    return {"kappa": num(kap), "po": num(po), "pe": num(pe), "per_category": per, "n": n,
            "confusion": cm.astype(int).tolist()}


def fleiss(table):
    t = np.asarray(table, dtype=float)
    n_items, _ = t.shape
    m = t[0].sum()
    p = t.sum(axis=0) / (n_items * m)
    p_i = ((t * t).sum(axis=1) - m) / (m * (m - 1))
    p_bar = p_i.mean()
    p_e = (p * p).sum()
    kappa = (p_bar - p_e) / (1 - p_e)
    # Fleiss (1971), eq. for the per-category kappa, in the P-bar_j form
    p_bar_j = ((t * t).sum(axis=0) - n_items * m * p) / (n_items * m * (m - 1) * p)
    kappa_j = (p_bar_j - p) / (1 - p)
    return {"kappa": num(kappa), "p_bar": num(p_bar), "p_e": num(p_e),
            "per_category": [num(v) for v in kappa_j], "p": [num(v) for v in p]}


def fisher(table):
    t = np.asarray(table)
    g = stats.fisher_exact(t, alternative="greater")
    two = stats.fisher_exact(t, alternative="two-sided")
    a, b, c, d = (float(v) for v in t.ravel())
    if 0 in (a, b, c, d):
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    z = stats.norm.ppf(0.975)
    if 0 in t.sum(axis=0) or 0 in t.sum(axis=1):
        lo = hi = float("nan")
    else:
        lor, se = math.log(a * d / (b * c)), math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
        lo, hi = math.exp(lor - z * se), math.exp(lor + z * se)
    return {"odds_ratio": num(g.statistic), "p_greater": num(g.pvalue), "p_two_sided": num(two.pvalue),
            "ci_lower": num(lo), "ci_upper": num(hi)}


def main():
    req = json.load(sys.stdin)
    out = {}
    if "spearman" in req:
        out["spearman"] = [num(stats.spearmanr(x, y).statistic) for x, y in req["spearman"]]
    if "hypergeom" in req:
        out["hypergeom"] = [num(stats.hypergeom.sf(k - 1, N, K, n)) for N, K, n, k in req["hypergeom"]]
    if "fisher" in req:
        out["fisher"] = [fisher(t) for t in req["fisher"]]
    if "f_sf" in req:
        out["f_sf"] = [num(stats.f.sf(f, d1, d2)) for f, d1, d2 in req["f_sf"]]
    if "fdr" in req:
        out["fdr"] = [[num(q) for q in stats.false_discovery_control(p, method="bh")] for p in req["fdr"]]
    if "rm_anova" in req:
        out["rm_anova"] = [rm_anova(d) for d in req["rm_anova"]]
    if "cohen" in req:
        out["cohen"] = [cohen(a, b, k) for a, b, k in req["cohen"]]
    if "fleiss" in req:
        out["fleiss"] = [fleiss(t) for t in req["fleiss"]]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
