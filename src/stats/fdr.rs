//! False discovery rate: Benjamini–Hochberg q-values and decisions. Input: p-values (NaN allowed,
//! left out); output: one q-value (or decision) per input, in input order.
//!
//! May import: nothing of this crate (a leaf of `stats`).

/// Benjamini–Hochberg adjusted p-values (q-values), identical to
/// `scipy.stats.false_discovery_control(p, method='bh')` and statsmodels'
/// `multipletests(p, method='fdr_bh')[1]`.
///
/// With the m p-values sorted ascending, p_(1) ≤ … ≤ p_(m):
/// q_(i) = min_{k ≥ i} min(1, p_(k) · m / k), returned in the input order. Ties get equal q
/// whatever their order. Reject at FDR level α where q ≤ α ([`fdr_reject`]), which is the BH
/// step-up rule.
///
/// NaN p-values (e.g. targets with a constant column) are left out: they do not count in m and
/// their q is NaN (scipy rejects NaN input; compare on the non-NaN subset). Values are expected in
/// [0, 1]; others are not checked.
pub fn fdr_bh(p: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let m = order.len();
    let mut q = vec![f64::NAN; p.len()];
    let mut running = f64::INFINITY;
    for (rank0, &i) in order.iter().enumerate().rev() {
        // scipy: ps *= m / i with i = 1..m as floats
        let raw = p[i] * (m as f64 / (rank0 + 1) as f64);
        running = running.min(raw);
        q[i] = running.clamp(0.0, 1.0);
    }
    q
}

/// Benjamini–Hochberg decisions at false discovery rate `q_level`: `true` where
/// [`fdr_bh`]`(p)` ≤ `q_level`; NaN p-values are never rejected.
pub fn fdr_reject(p: &[f64], q_level: f64) -> Vec<bool> {
    fdr_bh(p).iter().map(|&q| q <= q_level).collect()
}
