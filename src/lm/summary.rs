//! A per-layer text summary of an extraction: norms and effective dimensionality of the word
//! vectors, and the story's mean surprisal and entropy. Printed by `cortexflow extract`.

use std::fmt::Write;

use ndarray::{Array2, Axis};

use super::extract::Extraction;
use crate::stimulus::Story;

/// Participation ratio (Σλ)²/Σλ² of the covariance of the rows of `x` (n, d), computed without an
/// eigendecomposition as trace(C)² / ‖C‖²_F.
pub fn participation_ratio(x: &Array2<f32>) -> f64 {
    let n = x.nrows();
    if n < 2 {
        return f64::NAN;
    }
    let x = x.mapv(|v| v as f64);
    let mean = x.mean_axis(Axis(0)).expect("rows");
    let xc = &x - &mean;
    let c = xc.t().dot(&xc) / (n as f64 - 1.0);
    let tr: f64 = c.diag().sum();
    let fro2: f64 = c.iter().map(|v| v * v).sum();
    tr * tr / fro2
}

pub fn layer_summary(story: &Story, ex: &Extraction) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "story {} ({}): {} words, {} tokens, pooling {}",
        story.id,
        story.language,
        story.words.len(),
        ex.tokens.ids.len(),
        ex.pooling.as_str()
    );
    let sur: Vec<f32> = ex.surprisal_bits.iter().flatten().copied().collect();
    let mean_sur = sur.iter().map(|&v| v as f64).sum::<f64>() / sur.len().max(1) as f64;
    let mean_ent = ex.entropy_bits.iter().map(|&v| v as f64).sum::<f64>() / ex.entropy_bits.len().max(1) as f64;
    match sur.is_empty() {
        // a head-less graph (or `--no-surprisal`): vectors only
        true => {
            let _ = writeln!(s, "surprisal and entropy not computed");
        }
        false => {
            let _ = writeln!(
                s,
                "mean word surprisal {mean_sur:.2} bits, mean next-token entropy {mean_ent:.2} bits"
            );
        }
    }
    let _ = writeln!(
        s,
        "{:>5}  {:>12}  {:>12}  {:>12}",
        "layer", "mean ‖h‖", "sd ‖h‖", "PR (dims)"
    );
    for (l, a) in ex.layers.iter().zip(&ex.activations) {
        let norms: Vec<f64> = a
            .rows()
            .into_iter()
            .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
            .collect();
        let n = norms.len() as f64;
        let mean = norms.iter().sum::<f64>() / n;
        let sd = (norms.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        let _ = writeln!(s, "{l:>5}  {mean:>12.3}  {sd:>12.3}  {:>12.1}", participation_ratio(a));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participation_ratio_of_isotropic_data_is_its_dimension_and_of_a_line_is_one() {
        // rows ±e_i: covariance is a multiple of the identity → PR = d
        let d = 4;
        let mut x = Array2::<f32>::zeros((2 * d, d));
        for i in 0..d {
            x[[2 * i, i]] = 1.0;
            x[[2 * i + 1, i]] = -1.0;
        }
        assert!((participation_ratio(&x) - d as f64).abs() < 1e-9);
        let line = Array2::from_shape_fn((10, 3), |(i, j)| (i as f32) * (j as f32 + 1.0));
        assert!((participation_ratio(&line) - 1.0).abs() < 1e-9);
    }
}
