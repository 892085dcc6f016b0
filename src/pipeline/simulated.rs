//! `[simulate]`: responses of simulated subjects to every story of a pipeline, for stimuli with
//! no recorded responses here (Le Petit Prince). They enter the dataflow as response records like
//! recorded ones, one per (story, subject), so the encoding, summaries and cross-language tables
//! run on them unchanged.
//!
//! The planted signal knows nothing about the language model: per story, two word-level
//! regressors (word rate, and word length in characters) are convolved with the HRF and
//! averaged per TR on the story's grid ([`words_to_trs`]), and mixed into `targets` columns with
//! random weights drawn from `seed` (the same "tuning" in every story and for every subject).
//! Each subject adds its own AR(1) noise (seed from `seed`, the subject and the story), so the
//! inter-subject correlation is ≈ snr / (snr + 1). What an LM layer predicts of it is how well
//! that layer carries word rate and length: a check of the machinery, not a brain result.

use ndarray::Array2;

use crate::config::{Plan, SimulateSection, StorySection};
use crate::encoding::simulate::{simulate_subjects, SimulationOptions};
use crate::features::align::{words_to_trs, TrGrid};
use crate::features::roi::RoiTable;
use crate::stages::HRF_DT_S;
use crate::stimulus::Story;
use crate::Result;

/// FNV-1a of `s`: a stable per-story seed component.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The simulated responses of every subject to one story, as ROI tables (one column per target).
pub fn story_responses(sim: &SimulateSection, cfg: &StorySection, story: &Story) -> Result<Vec<RoiTable>> {
    let onsets: Vec<f64> = story.words.iter().map(|w| w.onset_s.unwrap_or(f64::NAN)).collect();
    let mut x = Array2::<f64>::zeros((story.words.len(), 2));
    for (i, w) in story.words.iter().enumerate() {
        x[[i, 0]] = 1.0;
        x[[i, 1]] = w.text.chars().count() as f64;
    }
    let grid = TrGrid::new(cfg.n_trs, cfg.tr_s, cfg.t0_s)?;
    let mut design = words_to_trs(&onsets, x.view(), &grid, HRF_DT_S);
    crate::stats::zscore_columns(design.view_mut());
    let opts = SimulationOptions {
        n_targets: sim.targets,
        snr: sim.snr,
        density: 1.0,
        noise_ar1: sim.noise_ar1,
        seed: sim.seed,
        ..Default::default()
    };
    let ids = sim.subject_ids();
    let seeds: Vec<u64> = (0..ids.len())
        .map(|s| sim.seed ^ fnv1a(&cfg.id) ^ ((s as u64 + 1) << 40))
        .collect();
    let (_, ys) = simulate_subjects(design.view(), &opts, &seeds)?;
    Ok(ids
        .into_iter()
        .zip(ys)
        .map(|(subject, data)| RoiTable {
            subject,
            rois: sim.target_names(),
            data,
            constant: Vec::new(),
        })
        .collect())
}

/// Every (story, subject table) of the plan's `[simulate]` section (empty without one).
pub fn responses(plan: &Plan) -> Result<Vec<(String, RoiTable)>> {
    let Some(sim) = &plan.file.simulate else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (cfg, story) in &plan.stories {
        for t in story_responses(sim, cfg, story)? {
            out.push((cfg.id.clone(), t));
        }
    }
    Ok(out)
}
