//! `cortexflow sae encode` against an independent NumPy encoder (scripts/sae_reference.py) on
//! SAELens folders of each architecture: the same non-zero codes (support identical, values to
//! f32 rounding) and the same reconstruction; a width mismatch is a clear error.

use crate::support;

use std::path::Path;

use cortexflow::sae::{save_saelens_sae, ReluSae, Sae, SaeKind, SaeMeta};
use cortexflow::stats::SplitMix64;
use ndarray::{Array1, Array2};

fn sae(kind: SaeKind, d_in: usize, d_sae: usize, seed: u64) -> Sae {
    let mut w = ReluSae::random(d_in, d_sae, seed);
    let mut rng = SplitMix64::new(seed + 100);
    w.b_enc = Array1::from_shape_fn(d_sae, |_| 0.1 * rng.normal() as f32);
    w.b_dec = Array1::from_shape_fn(d_in, |_| 0.5 * rng.normal() as f32);
    Sae::new(kind, w, true).unwrap()
}

fn encode(dir: &Path, x: &Path, out: &Path) -> std::process::Output {
    support::bin()
        .args(["sae", "encode", "--sae"])
        .arg(dir)
        .arg("--x")
        .arg(x)
        .arg("--out")
        .arg(out.join("codes.parquet"))
        .arg("--reconstruction")
        .arg(out.join("xhat.npy"))
        .output()
        .unwrap()
}

#[test]
fn codes_equal_an_independent_numpy_encoder_for_every_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let (d_in, d_sae, n) = (24, 96, 300);
    let mut rng = SplitMix64::new(7);
    let x = Array2::from_shape_simple_fn((n, d_in), || rng.normal());
    let xp = tmp.path().join("x.npy");
    cortexflow::store::matrix::write_npy(&xp, x.view()).unwrap();
    let mut trng = SplitMix64::new(9);
    let kinds = [
        ("standard", SaeKind::Relu),
        ("topk", SaeKind::TopK { k: 6 }),
        (
            "jumprelu",
            SaeKind::JumpRelu {
                threshold: Array1::from_shape_fn(d_sae, |_| 0.2 + 0.1 * trng.next_f64() as f32),
            },
        ),
    ];
    let meta = SaeMeta {
        model_name: Some("test".into()),
        hook_name: Some("blocks.0.hook_resid_post".into()),
        hook_layer: Some(0),
    };
    for (name, kind) in kinds {
        let dir = tmp.path().join(name);
        save_saelens_sae(&sae(kind, d_in, d_sae, 3), &meta, &dir).unwrap();
        let out = tmp.path().join(format!("out_{name}"));
        let o = encode(&dir, &xp, &out);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(stdout.contains(&format!("on {n} rows")), "{stdout}");
        let r = support::run_python(
            &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sae_reference.py")).unwrap(),
            &[
                dir.to_str().unwrap(),
                xp.to_str().unwrap(),
                out.join("codes.parquet").to_str().unwrap(),
                out.join("xhat.npy").to_str().unwrap(),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(r.trim()).unwrap();
        assert_eq!(v["same_support"], true, "{name}: {v}");
        assert_eq!(v["nnz"], v["nnz_ref"], "{name}: {v}");
        assert!(v["nnz"].as_u64().unwrap() > 0, "{name}: {v}");
        if name == "topk" {
            assert_eq!(v["nnz"].as_u64().unwrap(), 6 * n as u64, "{v}");
        }
        assert!(v["max_abs_code_diff"].as_f64().unwrap() < 1e-4, "{name}: {v}");
        assert!(v["max_abs_recon_diff"].as_f64().unwrap() < 1e-4, "{name}: {v}");
        let q: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("codes.quality.json")).unwrap()).unwrap();
        assert_eq!(q["n_rows"], n);
    }
    // a matrix of the wrong width: an error naming the SAE's cfg.json and d_in, nothing written
    let bad = tmp.path().join("bad.npy");
    cortexflow::store::matrix::write_npy(&bad, Array2::<f64>::zeros((5, d_in + 1)).view()).unwrap();
    let out = tmp.path().join("out_bad");
    let o = encode(&tmp.path().join("topk"), &bad, &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cfg.json") && err.contains("d_in"), "{err}");
    assert!(!out.join("codes.parquet").exists());
}
