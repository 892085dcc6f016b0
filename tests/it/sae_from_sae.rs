//! `ReluSaeTrainer::from_sae`: training from given weights, any number of features.

use cortexflow::sae::{ReluSae, ReluSaeTrainer, SaeTrainConfig};
use cortexflow::stats::SplitMix64;
use ndarray::Array2;

#[test]
fn a_trainer_started_from_given_weights_takes_its_first_step_from_them() {
    let mut rng = SplitMix64::new(7);
    let x = Array2::from_shape_simple_fn((64, 6), || rng.normal() as f32 + 0.5); // (n, d_in)
    let mut sae = ReluSae::random(6, 10, 3); // d_sae = 10: not a multiple of d_in
    sae.input_scale = 0.8;
    sae.b_enc.fill(-0.1);
    let cfg = SaeTrainConfig {
        batch_size: 64, // the whole data set: the first batch is every row
        steps: 3,
        warmup_steps: 0,
        l1: 0.5,
        ..Default::default()
    };
    let mut trainer = ReluSaeTrainer::from_sae(x.view(), &cfg, sae.clone()).unwrap();
    let first = trainer.step().unwrap();
    let (expected, _) = sae.loss_and_grad((&x * sae.input_scale).view(), cfg.l1);
    assert!(
        (first.loss - expected.loss).abs() <= 1e-5 * expected.loss,
        "{first:?} vs {expected:?}"
    );
    assert_eq!(first.l0, expected.l0);
    trainer.step().unwrap();
    let trained = trainer.sae();
    assert_eq!((trained.d_in, trained.d_sae, trained.input_scale), (6, 10, 0.8));
    assert_ne!(trained.w_enc, sae.w_enc);
    assert!(trained.decoder_row_norms().iter().all(|n| (n - 1.0).abs() < 1e-5));

    let wrong = ReluSae::random(5, 10, 3);
    assert!(ReluSaeTrainer::from_sae(x.view(), &cfg, wrong).is_err());
}
